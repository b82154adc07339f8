//! [`RabbitNode`]'s contract: a private broker that speaks AMQP, survives an application
//! restart, applies its options, and is gone once dropped.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use peerless_testkit::rabbit::{RabbitNode, RabbitOptions};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// A channel in confirm mode with queue `queue` declared.
async fn open_channel(url: &str, queue: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    (connection, channel)
}

/// Publishes `payload` to `queue` through the default exchange and waits for the
/// broker's confirm.
async fn publish(channel: &Channel, queue: &str, payload: &[u8]) -> Result<(), lapin::Error> {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            payload,
            BasicProperties::default(),
        )
        .await?
        .await?;
    assert!(confirm.is_ack(), "{confirm:?}");
    Ok(())
}

/// The next message of `queue`, acknowledged on receipt.
async fn get(channel: &Channel, queue: &str) -> Option<Vec<u8>> {
    let options = BasicGetOptions { no_ack: true };
    channel
        .basic_get(queue.into(), options)
        .await
        .unwrap()
        .map(|m| m.delivery.data)
}

#[test]
fn a_private_node_serves_amqp_restarts_and_is_gone_after_drop() {
    let started = Instant::now();
    let mut node = RabbitNode::start().unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "node {} started in {:?}",
        node.node_name(),
        started.elapsed()
    );
    assert_ne!(node.port(), 5672, "never the shared broker");
    assert!(node.node_name().starts_with("peerless-test-"));
    assert!(node.node_name().ends_with("@localhost"));
    let url = node.url();
    assert_eq!(
        url,
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", node.port())
    );

    let rt = runtime();
    rt.block_on(async {
        let (connection, channel) = open_channel(&url, "hello").await;
        publish(&channel, "hello", b"one message").await.unwrap();
        assert_eq!(
            get(&channel, "hello").await.as_deref(),
            Some(&b"one message"[..])
        );
        assert_eq!(get(&channel, "hello").await, None);

        // A restart closes every connection...
        let restart = Instant::now();
        node.restart_app(Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("restart_app(1 s) took {:?}", restart.elapsed());
        let err = publish(&channel, "hello", b"lost").await.unwrap_err();
        assert!(!connection.status().connected(), "{err}");

        // ...and a new one works as before (the queue was not durable: declared again).
        let (_connection, channel) = open_channel(&url, "hello").await;
        publish(&channel, "hello", b"after restart").await.unwrap();
        assert_eq!(
            get(&channel, "hello").await.as_deref(),
            Some(&b"after restart"[..])
        );
    });

    // stop_app closes the port until start_app.
    let addr = SocketAddr::from(([127, 0, 0, 1], node.port()));
    node.stop_app().unwrap_or_else(|e| panic!("{e}"));
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
    node.start_app().unwrap_or_else(|e| panic!("{e}"));
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok());

    let name = node.node_name().to_owned();
    let stopping = Instant::now();
    drop(node);
    eprintln!("shutdown took {:?}", stopping.elapsed());
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
    // No process of the node is left (its name is on the VM's command line).
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        !ps.lines().any(|l| l.contains(&name)),
        "processes of {name} left:\n{ps}"
    );
}

#[test]
fn max_message_size_makes_the_broker_refuse_bigger_publishes() {
    let node = RabbitNode::start_with(RabbitOptions {
        max_message_size: Some(1024),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    runtime().block_on(async {
        let (_connection, channel) = open_channel(&node.url(), "small").await;
        publish(&channel, "small", &[7; 512]).await.unwrap();
        let err = publish(&channel, "small", &[7; 2048])
            .await
            .expect_err("a 2 KiB message over a 1 KiB limit was accepted");
        let message = err.to_string();
        assert!(
            message.contains("PRECONDITION") && message.contains("larger than"),
            "{message}"
        );
        assert!(!channel.status().connected(), "the channel is still open");
    });
}
