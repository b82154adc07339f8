//! The AMQP transport: peers exchange messages through a RabbitMQ broker.
//!
//! Topology, per run (`{run}` is the run id in hex):
//! - one **direct** exchange `peerless.{run}` (auto-deleted once no queue is bound);
//! - one queue per rank, `peerless.{run}.rank{r}`, bound with the routing keys
//!   `rank.{s}` of every *other* rank `s`.
//!
//! A peer publishes each message once, with routing key `rank.{own rank}`; the
//! broker copies it into every other peer's queue and never back into the
//! sender's. This is the original's one-queue-per-peer design, but the sender
//! uploads each gradient once instead of once per receiver. Every peer declares
//! the whole topology on connect (declarations are idempotent), so a message
//! published before a slower peer has started is already queued for it.
//!
//! Durability: queues are not durable (a gradient is useless after a broker
//! restart) but also not exclusive or auto-deleted, so messages wait in the
//! queue while their peer starts or reconnects; an idle queue expires after
//! [`AmqpConfig::queue_expiry`]. Messages are transient, published with
//! `mandatory` set and with publisher confirms awaited; consumers acknowledge
//! manually, with a prefetch limit bounding what a peer buffers.

use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ErrorKind, ExchangeKind,
};
use tokio::sync::Mutex;

use super::{Acker, Delivery, Transport, TransportError};
use crate::url::{mask_password, redact};
use crate::wire::RunId;

/// Where and how to reach the broker for one peer of one run.
#[derive(Clone, Debug)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:port/vhost` or `amqps://...` (TLS).
    pub url: String,
    /// The run; names the exchange and queues.
    pub run_id: RunId,
    /// This peer's rank, `0 .. world_size`.
    pub rank: u32,
    /// Number of peers in the run.
    pub world_size: u32,
    /// Upper bound on connecting and declaring the topology (retries included).
    pub connect_timeout: Duration,
    /// Most unacknowledged deliveries the broker sends this peer at once.
    pub prefetch: u16,
    /// An unused queue of the run is deleted by the broker after this long.
    pub queue_expiry: Duration,
}

impl AmqpConfig {
    /// A configuration with defaults: 10 s connect timeout, prefetch 16,
    /// queues expiring after 1 h unused.
    pub fn new(url: impl Into<String>, run_id: RunId, rank: u32, world_size: u32) -> Self {
        AmqpConfig {
            url: url.into(),
            run_id,
            rank,
            world_size,
            connect_timeout: Duration::from_secs(10),
            prefetch: 16,
            queue_expiry: Duration::from_secs(3600),
        }
    }
}

impl AmqpConfig {
    /// The transport configuration matching a round configuration (same run, rank and world size).
    pub fn for_round(url: impl Into<String>, round: &crate::round::RoundConfig) -> Self {
        AmqpConfig::new(url, round.run_id, round.rank, round.world_size)
    }
}

/// Name of the run's exchange.
pub fn exchange_name(run_id: RunId) -> String {
    format!("peerless.{run_id}")
}

/// Name of the queue of `rank` in the run.
pub fn queue_name(run_id: RunId, rank: u32) -> String {
    format!("peerless.{run_id}.rank{rank}")
}

/// Routing key of messages sent by `rank`.
pub fn routing_key(rank: u32) -> String {
    format!("rank.{rank}")
}

/// One peer's connection to the broker: a confirming publisher channel and a
/// consumer on its own queue.
#[derive(Debug)]
pub struct AmqpTransport {
    connection: Connection,
    publisher: Channel,
    admin: Channel,
    consumer: Mutex<Consumer>,
    config: AmqpConfig,
    masked_url: String,
}

impl AmqpTransport {
    /// Connects (retrying transient failures with exponential backoff),
    /// declares the run's topology and starts consuming; gives up after
    /// `config.connect_timeout` with an error naming the URL (password hidden)
    /// and the last cause.
    pub async fn connect(config: &AmqpConfig) -> Result<Self, TransportError> {
        let masked_url = mask_password(&config.url);
        if config.world_size == 0 || config.rank >= config.world_size {
            return Err(TransportError::Setup {
                url: masked_url,
                what: "peer".to_owned(),
                cause: format!(
                    "rank {} is not below world size {}",
                    config.rank, config.world_size
                ),
            });
        }
        let deadline = Instant::now() + config.connect_timeout;
        let connection = connect_with_retry(config, &masked_url).await?;
        let setup_error = |what: &str, cause: String| TransportError::Setup {
            url: masked_url.clone(),
            what: what.to_owned(),
            cause: redact(&cause, &config.url),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let (publisher, admin, consumer) =
            tokio::time::timeout(remaining, declare(&connection, config))
                .await
                .map_err(|_| {
                    setup_error(
                        "topology",
                        format!(
                            "not done within the connect timeout of {:?}",
                            config.connect_timeout
                        ),
                    )
                })?
                .map_err(|(what, e)| setup_error(&what, e.to_string()))?;
        tracing::debug!(url = %masked_url, run = %config.run_id, rank = config.rank, "AMQP transport ready");
        Ok(AmqpTransport {
            connection,
            publisher,
            admin,
            consumer: Mutex::new(consumer),
            config: config.clone(),
            masked_url,
        })
    }

    /// The broker URL with the password hidden.
    pub fn masked_url(&self) -> &str {
        &self.masked_url
    }

    /// The configuration this transport was created with.
    pub fn config(&self) -> &AmqpConfig {
        &self.config
    }

    /// Deletes the run's queues and exchange (all ranks'); call once, from one
    /// peer, when the run is over and nobody publishes any more.
    pub async fn delete_run(&self) -> Result<(), TransportError> {
        let err = |what: String, e: lapin::Error| TransportError::Setup {
            url: self.masked_url.clone(),
            what,
            cause: e.to_string(),
        };
        for rank in 0..self.config.world_size {
            let queue = queue_name(self.config.run_id, rank);
            self.admin
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(|e| err(format!("deletion of queue {queue}"), e))?;
        }
        let exchange = exchange_name(self.config.run_id);
        self.admin
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .map_err(|e| err(format!("deletion of exchange {exchange}"), e))
    }

    /// Closes the connection; unacknowledged deliveries go back to the queue.
    pub async fn close(self) -> Result<(), TransportError> {
        self.connection
            .close(200, "peer done".into())
            .await
            .map_err(|e| TransportError::Receive {
                cause: e.to_string(),
            })
    }
}

impl Transport for AmqpTransport {
    async fn publish(&self, messages: &[Bytes]) -> Result<(), TransportError> {
        if self.config.world_size <= 1 {
            return Ok(());
        }
        let exchange = exchange_name(self.config.run_id);
        let key = routing_key(self.config.rank);
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let mut confirms = Vec::with_capacity(messages.len());
        for message in messages {
            let properties = BasicProperties::default()
                .with_delivery_mode(1)
                .with_content_type("application/x-peerless".into());
            let confirm = self
                .publisher
                .basic_publish(
                    exchange.as_str().into(),
                    key.as_str().into(),
                    options,
                    message,
                    properties,
                )
                .await
                .map_err(|e| TransportError::Publish {
                    cause: e.to_string(),
                })?;
            confirms.push(confirm);
        }
        let mut nacked = 0;
        for confirm in confirms {
            let confirmation = confirm.await.map_err(|e| TransportError::Publish {
                cause: e.to_string(),
            })?;
            if confirmation.is_nack() {
                nacked += 1;
            }
            if let Some(returned) = confirmation.take_message() {
                return Err(TransportError::Unroutable {
                    routing_key: key,
                    reason: returned.reply_text.to_string(),
                });
            }
        }
        if nacked > 0 {
            return Err(TransportError::Nacked { count: nacked });
        }
        Ok(())
    }

    async fn recv(&self) -> Result<Delivery, TransportError> {
        let mut consumer = self.consumer.lock().await;
        match consumer.next().await {
            None => Err(TransportError::Closed),
            Some(Err(e)) => Err(TransportError::Receive {
                cause: e.to_string(),
            }),
            Some(Ok(delivery)) => Ok(Delivery::new(
                Bytes::from(delivery.data),
                Acker::Amqp(delivery.acker),
            )),
        }
    }
}

/// Retries only failures that may go away (network errors), not refusals.
fn is_transient(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::IOError(_))
}

async fn connect_with_retry(
    config: &AmqpConfig,
    masked_url: &str,
) -> Result<Connection, TransportError> {
    let connect_error = |cause: String| TransportError::Connect {
        url: masked_url.to_owned(),
        cause: redact(&cause, &config.url),
    };
    let uri: AMQPUri = config
        .url
        .parse()
        .map_err(|e: String| connect_error(format!("invalid AMQP URL: {e}")))?;
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("peerless {} rank {}", config.run_id, config.rank).into());
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times();
    let mut attempts = 0u32;
    let mut last_error: Option<String> = None;
    let attempt = || {
        attempts += 1;
        Connection::connect_uri(uri.clone(), properties.clone())
    };
    let retrying = attempt
        .retry(backoff)
        .when(is_transient)
        .notify(|e: &lapin::Error, delay| {
            tracing::debug!(url = masked_url, error = %e, ?delay, "AMQP connect failed, retrying");
            last_error = Some(e.to_string());
        });
    let outcome = tokio::time::timeout(config.connect_timeout, retrying).await;
    match outcome {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(connect_error(e.to_string())),
        Err(_) => Err(connect_error(format!(
            "no connection within {:?} ({attempts} attempt(s)); last error: {}",
            config.connect_timeout,
            last_error.as_deref().unwrap_or("attempt still in progress")
        ))),
    }
}

type DeclareError = (String, lapin::Error);

async fn declare(
    connection: &Connection,
    config: &AmqpConfig,
) -> Result<(Channel, Channel, Consumer), DeclareError> {
    let ctx = |what: String| move |e: lapin::Error| (what, e);
    let exchange = exchange_name(config.run_id);

    let admin = connection
        .create_channel()
        .await
        .map_err(ctx("a channel".into()))?;
    admin
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: false,
                auto_delete: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(ctx(format!("exchange {exchange}")))?;

    let mut queue_args = FieldTable::default();
    queue_args.insert(
        "x-expires".into(),
        AMQPValue::LongLongInt(config.queue_expiry.as_millis().clamp(1, i64::MAX as u128) as i64),
    );
    for rank in 0..config.world_size {
        let queue = queue_name(config.run_id, rank);
        admin
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: false,
                    exclusive: false,
                    auto_delete: false,
                    ..QueueDeclareOptions::default()
                },
                queue_args.clone(),
            )
            .await
            .map_err(ctx(format!("queue {queue}")))?;
        for sender in (0..config.world_size).filter(|s| *s != rank) {
            admin
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    routing_key(sender).as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(ctx(format!("binding of queue {queue}")))?;
        }
    }

    let publisher = connection
        .create_channel()
        .await
        .map_err(ctx("a channel".into()))?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(ctx("publisher confirms".into()))?;

    let receiver = connection
        .create_channel()
        .await
        .map_err(ctx("a channel".into()))?;
    receiver
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await
        .map_err(ctx("prefetch limit".into()))?;
    let queue = queue_name(config.run_id, config.rank);
    let consumer = receiver
        .basic_consume(
            queue.as_str().into(),
            format!("peerless-rank{}", config.rank).into(),
            BasicConsumeOptions {
                no_ack: false,
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(ctx(format!("consumer on queue {queue}")))?;
    Ok((publisher, admin, consumer))
}
