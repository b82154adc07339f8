//! The claim-check exchange (`--exchange s3`) end to end: 3 peers over the real RabbitMQ
//! with their gradients in S3 on moto's server, against the same run exchanging through
//! the broker.

mod common;

use common::{peer_metrics, training_run};
use peerless_data::{S3Options, StoreOptions};
use peerless_testkit::moto::MotoServer;
use predicates::prelude::*;

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const BUCKET: &str = "peerless";

fn broker() -> String {
    std::env::var("PEERLESS_AMQP_URL").unwrap_or_else(|_| BROKER.to_string())
}

#[test]
fn s3_exchange_on_moto_trains_to_the_brokers_weights_and_cleans_up() {
    let moto = MotoServer::start().unwrap_or_else(|e| panic!("{e}"));
    moto.create_bucket(BUCKET).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = format!("s3://{BUCKET}/claims-test");
    let run = |exchange: &str, metrics: &str| {
        let mdir = dir.path().join(metrics);
        training_run(3, &store, &mdir)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .args(["--s3-endpoint", moto.endpoint()])
            .args(["--broker", &broker(), "--exchange", exchange])
            .args(["--epochs", "1", "--rounds-per-epoch", "6"])
            .assert()
            .success()
            .stdout(predicate::str::contains("identical"));
        peer_metrics(&mdir, 3)
    };
    let through_broker = run("all-to-all", "broker");
    let through_s3 = run("s3", "s3");
    let gradient = 4 * 38_282u64;
    for (rank, peer) in through_s3.iter().enumerate() {
        for (round, m) in peer.iter().enumerate() {
            // The same mean in the same order: the same bits as through the broker.
            assert_eq!(
                m.weights_hash, through_broker[rank][round].weights_hash,
                "rank {rank} round {round}"
            );
            // One claim message of a few hundred bytes; the gradient goes to S3 once and
            // the two others' come from it.
            assert_eq!(m.messages_sent, 1);
            let claim_bytes = m.bytes_sent - gradient;
            assert!(claim_bytes < 1024, "claim of {claim_bytes} bytes");
            // (Membership messages of the start may arrive during the first round.)
            let expected = 2 * gradient + 2 * claim_bytes;
            assert!(
                (expected..expected + 4096).contains(&m.bytes_received),
                "received {} bytes, expected {expected}",
                m.bytes_received
            );
            assert_eq!(m.rejected_messages, 0);
        }
    }

    // Every peer deleted its gradient objects.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let left = rt.block_on(async {
        let options = StoreOptions {
            s3: S3Options {
                endpoint_url: Some(moto.endpoint().to_owned()),
                region: Some("us-east-1".into()),
                ..S3Options::default()
            },
        };
        // SAFETY (of the environment): set before any thread of this test reads it.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        }
        let store = peerless_data::open_store(&store, &options).await.unwrap();
        store.list("claims/").await.unwrap()
    });
    assert!(left.is_empty(), "objects left: {left:?}");
}
