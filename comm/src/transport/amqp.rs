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
//! Durability: queues are not durable (they are declared again after a broker
//! restart, and every peer publishes its last batches again, broadcast and sent to
//! one rank alike) but also not exclusive or auto-deleted, so messages wait in the
//! queue while their peer starts or reconnects; an idle queue expires after
//! [`AmqpConfig::queue_expiry`]. Messages are transient, published with
//! `mandatory` set and with publisher confirms awaited; consumers acknowledge
//! manually, with a prefetch limit bounding what a peer buffers.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
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
use tokio::sync::{Mutex, watch};

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
    /// How long a lost connection is retried before the transport fails.
    pub reconnect_timeout: Duration,
    /// How many of the last broadcast batches are published again after a
    /// reconnect (a round publishes one; peers are at most a round apart, and
    /// membership messages take a batch each). The batches sent to one rank
    /// since (a sharded round's shards) are sent again too, up to this many per
    /// rank of the run.
    pub replay_batches: usize,
}

impl AmqpConfig {
    /// A configuration with defaults: 10 s connect timeout, prefetch 16,
    /// queues expiring after 1 h unused, 120 s to reconnect, 4 batches replayed.
    pub fn new(url: impl Into<String>, run_id: RunId, rank: u32, world_size: u32) -> Self {
        AmqpConfig {
            url: url.into(),
            run_id,
            rank,
            world_size,
            connect_timeout: Duration::from_secs(10),
            prefetch: 16,
            queue_expiry: Duration::from_secs(3600),
            reconnect_timeout: Duration::from_secs(120),
            replay_batches: 4,
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

/// The live connection: a confirming publisher channel, an admin channel and a
/// consumer on this peer's queue; replaced as a whole after a reconnect.
#[derive(Debug)]
struct Link {
    /// Counts reconnects: 0 for the first connection.
    generation: u64,
    connection: Connection,
    publisher: Channel,
    admin: Channel,
    consumer: Mutex<Consumer>,
}

/// Where the connection stands, shared by every caller waiting on a reconnect.
#[derive(Clone, Debug)]
enum LinkState {
    /// Connected; the link of this generation is current.
    Up(u64),
    /// The link of this generation was lost; a task is connecting again.
    Reconnecting,
    /// Reconnecting failed for good (the message says why).
    Failed(String),
}

/// Time spent without a broker, so rounds can extend their deadline by it.
#[derive(Debug, Default)]
struct Outage {
    total: Duration,
    since: Option<Instant>,
}

#[derive(Debug)]
struct Inner {
    config: AmqpConfig,
    masked_url: String,
    link: std::sync::RwLock<Arc<Link>>,
    state: watch::Sender<LinkState>,
    /// The last batches, broadcast (`None`) or sent to one rank, published again
    /// after a reconnect because the broker may have dropped them with its queues.
    replay: std::sync::Mutex<VecDeque<Remembered>>,
    outage: std::sync::Mutex<Outage>,
    closed: AtomicBool,
}

/// One peer's connection to the broker. A lost connection (broker restart,
/// network cut) is re-established in the background with exponential backoff
/// for up to [`AmqpConfig::reconnect_timeout`]: the topology is declared again,
/// the last published batches are published again (receivers drop the
/// duplicates), and callers of [`Transport::publish`] and [`Transport::recv`]
/// simply wait.
#[derive(Debug)]
pub struct AmqpTransport {
    inner: Arc<Inner>,
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
        let link = open_link(config, &masked_url, config.connect_timeout, 0).await?;
        tracing::debug!(url = %masked_url, run = %config.run_id, rank = config.rank, "AMQP transport ready");
        Ok(AmqpTransport {
            inner: Arc::new(Inner {
                config: config.clone(),
                masked_url,
                link: std::sync::RwLock::new(Arc::new(link)),
                state: watch::Sender::new(LinkState::Up(0)),
                replay: std::sync::Mutex::new(VecDeque::new()),
                outage: std::sync::Mutex::new(Outage::default()),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The broker URL with the password hidden.
    pub fn masked_url(&self) -> &str {
        &self.inner.masked_url
    }

    /// The configuration this transport was created with.
    pub fn config(&self) -> &AmqpConfig {
        &self.inner.config
    }

    /// How many times the connection was re-established.
    pub fn reconnects(&self) -> u64 {
        self.inner.link().generation
    }

    /// Deletes the run's queues and exchange (all ranks'); call once, from one
    /// peer, when the run is over and nobody publishes any more.
    pub async fn delete_run(&self) -> Result<(), TransportError> {
        let link = self.inner.link();
        let err = |what: String, e: lapin::Error| TransportError::Setup {
            url: self.inner.masked_url.clone(),
            what,
            cause: e.to_string(),
        };
        let config = &self.inner.config;
        for rank in 0..config.world_size {
            let queue = queue_name(config.run_id, rank);
            link.admin
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(|e| err(format!("deletion of queue {queue}"), e))?;
        }
        let exchange = exchange_name(config.run_id);
        link.admin
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .map_err(|e| err(format!("deletion of exchange {exchange}"), e))
    }

    /// Closes the connection; unacknowledged deliveries go back to the queue.
    pub async fn close(self) -> Result<(), TransportError> {
        self.inner.closed.store(true, Ordering::SeqCst);
        let link = self.inner.link();
        link.connection
            .close(200, "peer done".into())
            .await
            .map_err(|e| TransportError::Receive {
                cause: e.to_string(),
            })
    }
}

impl Inner {
    fn link(&self) -> Arc<Link> {
        self.link.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether an error on `link` means the connection is gone (reconnect) rather
    /// than a refusal on a live connection (report it).
    async fn lost(&self, link: &Link) -> bool {
        if self.closed.load(Ordering::SeqCst) {
            return false;
        }
        // The broker's connection.close can trail the channel error by a moment.
        for _ in 0..5 {
            if !link.connection.status().connected() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Waits until the connection of `generation` has been replaced, starting the
    /// reconnecting task if nobody has yet; fails once reconnecting gave up.
    async fn reconnect(self: &Arc<Self>, generation: u64) -> Result<(), TransportError> {
        let mut start = false;
        self.state.send_if_modified(|state| match state {
            LinkState::Up(current) if *current == generation => {
                *state = LinkState::Reconnecting;
                start = true;
                true
            }
            _ => false,
        });
        if start {
            tracing::warn!(url = %self.masked_url, rank = self.config.rank, "lost the broker connection; reconnecting");
            self.outage.lock().unwrap_or_else(|e| e.into_inner()).since = Some(Instant::now());
            tokio::spawn(reconnect_task(self.clone(), generation));
        }
        let mut watch = self.state.subscribe();
        let outcome = watch
            .wait_for(|state| match state {
                LinkState::Up(current) => *current > generation,
                LinkState::Reconnecting => false,
                LinkState::Failed(_) => true,
            })
            .await
            .map(|state| state.clone());
        match outcome {
            Ok(LinkState::Failed(cause)) => Err(TransportError::Disconnected {
                url: self.masked_url.clone(),
                cause,
            }),
            Ok(_) => Ok(()),
            Err(_) => Err(TransportError::Closed),
        }
    }

    /// Publishes `messages` on `link`: to every peer, or to rank `to` alone.
    async fn publish_on(
        &self,
        link: &Link,
        to: Option<u32>,
        messages: &[Bytes],
    ) -> Result<(), PublishFailure> {
        match to {
            None => {
                let exchange = exchange_name(self.config.run_id);
                let key = routing_key(self.config.rank);
                publish_batch(link, &exchange, &key, messages).await
            }
            Some(rank) => {
                let queue = queue_name(self.config.run_id, rank);
                publish_batch(link, "", &queue, messages).await
            }
        }
    }

    /// Keeps a batch for replay after a reconnect: the last `replay_batches`
    /// broadcasts, and what was sent to single ranks meanwhile, at most
    /// `replay_batches` batches per rank of the run in all; of the batches carrying a
    /// round's data, only those of the two newest rounds. A peer publishes round `r`
    /// only after it finished round `r - 1`, which every other peer had sent its part
    /// of, so every peer is past round `r - 2` and nobody needs older data again;
    /// keeping it would hold several gradient-sized copies per peer for nothing. Once
    /// this peer finished round `r` ([`Transport::finished_round`]), only data of `r` on
    /// is kept.
    fn remember(&self, to: Option<u32>, messages: &[Bytes]) {
        let keep = self.config.replay_batches;
        let most = keep
            .saturating_mul(self.config.world_size as usize)
            .max(keep);
        let batch = Remembered {
            to,
            round: messages.first().and_then(|m| crate::wire::data_round(m)),
            messages: messages.to_vec(),
        };
        let mut replay = self.replay.lock().unwrap_or_else(|e| e.into_inner());
        remember_in(&mut replay, batch, keep, most);
    }
}

/// Appends `batch` to `replay`, then drops data older than the two newest rounds and
/// the oldest batches beyond `keep` broadcasts or `most` batches in all.
fn remember_in(replay: &mut VecDeque<Remembered>, batch: Remembered, keep: usize, most: usize) {
    replay.push_back(batch);
    if let Some(newest) = replay.iter().filter_map(|b| b.round).max() {
        replay.retain(|b| b.round.is_none_or(|r| r + 1 >= newest));
    }
    while replay.len() > most || replay.iter().filter(|b| b.to.is_none()).count() > keep {
        replay.pop_front();
    }
}

/// Drops the kept data of rounds before `round` (control messages stay).
fn forget_before(replay: &mut VecDeque<Remembered>, round: u64) {
    replay.retain(|b| b.round.is_none_or(|r| r >= round));
}

/// A published batch kept for replay after a reconnect.
#[derive(Clone, Debug)]
struct Remembered {
    /// One rank, or every peer (`None`).
    to: Option<u32>,
    /// The round whose data the batch carries ([`crate::wire::data_round`]), if any.
    round: Option<u64>,
    messages: Vec<Bytes>,
}

/// Connects again until the reconnect timeout, declares the topology, publishes
/// the remembered batches again and installs the new link.
async fn reconnect_task(inner: Arc<Inner>, generation: u64) {
    let config = &inner.config;
    let started = Instant::now();
    let deadline = started + config.reconnect_timeout;
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build();
    let mut last_error = String::from("no attempt finished");
    let mut attempts = 0u32;
    loop {
        if inner.closed.load(Ordering::SeqCst) {
            inner
                .state
                .send_replace(LinkState::Failed("transport closed".into()));
            return;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        attempts += 1;
        match open_link(config, &inner.masked_url, remaining, generation + 1).await {
            Ok(link) => {
                let link = Arc::new(link);
                let batches: Vec<Remembered> = inner
                    .replay
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .cloned()
                    .collect();
                let mut replayed = Ok(());
                for batch in &batches {
                    replayed = inner.publish_on(&link, batch.to, &batch.messages).await;
                    if replayed.is_err() {
                        break;
                    }
                }
                match replayed {
                    Ok(()) => {
                        *inner.link.write().unwrap_or_else(|e| e.into_inner()) = link;
                        let down = {
                            let mut outage = inner.outage.lock().unwrap_or_else(|e| e.into_inner());
                            let down = outage.since.take().map_or(Duration::ZERO, |s| s.elapsed());
                            outage.total += down;
                            down
                        };
                        tracing::warn!(
                            url = %inner.masked_url,
                            rank = config.rank,
                            attempts,
                            replayed = batches.len(),
                            "reconnected to the broker after {down:.1?}"
                        );
                        inner.state.send_replace(LinkState::Up(generation + 1));
                        return;
                    }
                    Err(e) => last_error = e.to_string(),
                }
            }
            Err(e) => last_error = e.to_string(),
        }
        let delay = backoff.next().unwrap_or(Duration::from_secs(5));
        tracing::debug!(url = %inner.masked_url, error = %last_error, ?delay, "reconnect attempt failed");
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(delay.min(remaining)).await;
    }
    inner.state.send_replace(LinkState::Failed(format!(
        "no connection within the reconnect timeout of {:?} ({attempts} attempt(s)); last error: {}",
        config.reconnect_timeout,
        redact(&last_error, &config.url)
    )));
}

/// Why publishing a batch failed: the link may be gone, or the broker refused.
enum PublishFailure {
    /// The channel or connection failed (maybe lost: check and reconnect).
    Link(lapin::Error),
    /// The broker refused the messages on a live connection.
    Refused(TransportError),
}

impl fmt::Display for PublishFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishFailure::Link(e) => write!(f, "{e}"),
            PublishFailure::Refused(e) => write!(f, "{e}"),
        }
    }
}

/// Publishes `messages` through `link`'s confirming channel and waits for the
/// broker's confirms.
async fn publish_batch(
    link: &Link,
    exchange: &str,
    key: &str,
    messages: &[Bytes],
) -> Result<(), PublishFailure> {
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let largest = messages.iter().map(Bytes::len).max().unwrap_or(0);
    let failure = |error: lapin::Error| match too_large(&error) {
        Some(reason) => PublishFailure::Refused(TransportError::MessageTooLarge {
            bytes: largest,
            reason,
        }),
        None => PublishFailure::Link(error),
    };
    let mut confirms = Vec::with_capacity(messages.len());
    for message in messages {
        let properties = BasicProperties::default()
            .with_delivery_mode(1)
            .with_content_type("application/x-peerless".into());
        let published = link
            .publisher
            .basic_publish(exchange.into(), key.into(), options, message, properties)
            .await;
        match published {
            Ok(confirm) => confirms.push(confirm),
            Err(error) => {
                // A refusal closes the channel: the earlier confirms carry the broker's
                // reason, the later publishes only "channel closed".
                for confirm in confirms {
                    if let Err(first) = confirm.await {
                        return Err(failure(first));
                    }
                }
                return Err(failure(error));
            }
        }
    }
    let mut nacked = 0;
    for confirm in confirms {
        let confirmation = confirm.await.map_err(failure)?;
        if confirmation.is_nack() {
            nacked += 1;
        }
        if let Some(returned) = confirmation.take_message() {
            return Err(PublishFailure::Refused(TransportError::Unroutable {
                routing_key: key.to_owned(),
                reason: returned.reply_text.to_string(),
            }));
        }
    }
    if nacked > 0 {
        return Err(PublishFailure::Refused(TransportError::Nacked {
            count: nacked,
        }));
    }
    Ok(())
}

impl AmqpTransport {
    /// Publishes on the current link, reconnecting (and trying again) when the
    /// link is lost.
    async fn publish_to(
        &self,
        exchange: &str,
        key: &str,
        messages: &[Bytes],
    ) -> Result<(), TransportError> {
        let inner = &self.inner;
        loop {
            let link = inner.link();
            match publish_batch(&link, exchange, key, messages).await {
                Ok(()) => return Ok(()),
                Err(PublishFailure::Refused(e)) => return Err(e),
                Err(PublishFailure::Link(e)) => {
                    if !inner.lost(&link).await {
                        return Err(TransportError::Publish {
                            cause: e.to_string(),
                        });
                    }
                    inner.reconnect(link.generation).await?;
                }
            }
        }
    }
}

impl Transport for AmqpTransport {
    async fn publish(&self, messages: &[Bytes]) -> Result<(), TransportError> {
        let config = &self.inner.config;
        if config.world_size <= 1 {
            return Ok(());
        }
        self.inner.remember(None, messages);
        let exchange = exchange_name(config.run_id);
        let key = routing_key(config.rank);
        self.publish_to(&exchange, &key, messages).await
    }

    async fn send_to(&self, rank: u32, messages: &[Bytes]) -> Result<(), TransportError> {
        let config = &self.inner.config;
        if rank >= config.world_size || rank == config.rank {
            return Err(TransportError::Publish {
                cause: format!("no peer of rank {rank} to send to"),
            });
        }
        self.inner.remember(Some(rank), messages);
        // The default exchange routes by queue name.
        self.publish_to("", &queue_name(config.run_id, rank), messages)
            .await
    }

    fn finished_round(&self, round: u64) {
        let mut replay = self.inner.replay.lock().unwrap_or_else(|e| e.into_inner());
        forget_before(&mut replay, round);
    }

    async fn recv(&self) -> Result<Delivery, TransportError> {
        let inner = &self.inner;
        loop {
            let link = inner.link();
            let next = link.consumer.lock().await.next().await;
            match next {
                Some(Ok(delivery)) => {
                    return Ok(Delivery::new(
                        Bytes::from(delivery.data),
                        Acker::Amqp(delivery.acker),
                    ));
                }
                failed => {
                    if inner.closed.load(Ordering::SeqCst) {
                        return Err(TransportError::Closed);
                    }
                    if !inner.lost(&link).await {
                        // The consumer was cancelled on a live connection (its queue
                        // was deleted): declare everything again all the same.
                        tracing::warn!(url = %inner.masked_url, error = ?failed.map(|r| r.err()), "the broker cancelled this peer's consumer; setting up again");
                    }
                    inner.reconnect(link.generation).await?;
                }
            }
        }
    }

    fn outage(&self) -> Duration {
        let outage = self.inner.outage.lock().unwrap_or_else(|e| e.into_inner());
        outage.total + outage.since.map_or(Duration::ZERO, |s| s.elapsed())
    }
}

/// Connects within `timeout` and declares the run's topology.
async fn open_link(
    config: &AmqpConfig,
    masked_url: &str,
    timeout: Duration,
    generation: u64,
) -> Result<Link, TransportError> {
    let deadline = Instant::now() + timeout;
    let connection = connect_with_retry(config, masked_url, timeout).await?;
    let setup_error = |what: &str, cause: String| TransportError::Setup {
        url: masked_url.to_owned(),
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
                    format!("not done within the connect timeout of {timeout:?}"),
                )
            })?
            .map_err(|(what, e)| setup_error(&what, e.to_string()))?;
    Ok(Link {
        generation,
        connection,
        publisher,
        admin,
        consumer: Mutex::new(consumer),
    })
}

/// The broker's reason when it closed the channel because a message exceeded its
/// `max_message_size` (RabbitMQ: "PRECONDITION_FAILED - message size N is larger than
/// configured max size M").
fn too_large(error: &lapin::Error) -> Option<String> {
    let ErrorKind::ProtocolError(amqp) = error.kind() else {
        return None;
    };
    let text = amqp.to_string();
    (text.contains("larger than") && text.contains("max size")).then_some(text)
}

/// Retries only failures that may go away (network errors), not refusals.
fn is_transient(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::IOError(_))
}

async fn connect_with_retry(
    config: &AmqpConfig,
    masked_url: &str,
    timeout: Duration,
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
    let outcome = tokio::time::timeout(timeout, retrying).await;
    match outcome {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(connect_error(e.to_string())),
        Err(_) => Err(connect_error(format!(
            "no connection within {timeout:?} ({attempts} attempt(s)); last error: {}",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::CodecSpec;
    use crate::wire::{Header, MessageKind, encode_message};

    fn batch(kind: MessageKind, round: u64, to: Option<u32>) -> Remembered {
        let header = Header {
            kind,
            total_payload_len: 8,
            ..Header::gradient(
                RunId::from_name("replay"),
                round,
                0,
                4,
                1,
                CodecSpec::None,
                2,
            )
        };
        let messages = vec![encode_message(&header, &[0; 8])];
        Remembered {
            to,
            round: crate::wire::data_round(&messages[0]),
            messages,
        }
    }

    fn kept(replay: &VecDeque<Remembered>) -> Vec<(Option<u64>, Option<u32>)> {
        replay.iter().map(|b| (b.round, b.to)).collect()
    }

    #[test]
    fn replay_keeps_the_data_of_the_two_newest_rounds_and_control_messages() {
        let mut replay = VecDeque::new();
        let (keep, most) = (4, 16);
        remember_in(
            &mut replay,
            batch(MessageKind::Gradient, 0, None),
            keep,
            most,
        );
        remember_in(&mut replay, batch(MessageKind::Join, 2, None), keep, most);
        remember_in(
            &mut replay,
            batch(MessageKind::Shard, 1, Some(2)),
            keep,
            most,
        );
        remember_in(
            &mut replay,
            batch(MessageKind::Reduced, 1, None),
            keep,
            most,
        );
        assert_eq!(
            kept(&replay),
            [
                (Some(0), None),
                (None, None),
                (Some(1), Some(2)),
                (Some(1), None)
            ]
        );
        // Round 2's data: round 0's is no longer needed by anyone; the join stays.
        remember_in(
            &mut replay,
            batch(MessageKind::Gradient, 2, None),
            keep,
            most,
        );
        assert_eq!(
            kept(&replay),
            [
                (None, None),
                (Some(1), Some(2)),
                (Some(1), None),
                (Some(2), None)
            ]
        );
        // The broadcast cap still holds: a fifth broadcast pushes out the oldest.
        remember_in(&mut replay, batch(MessageKind::Evict, 4, None), keep, most);
        remember_in(&mut replay, batch(MessageKind::Evict, 4, None), keep, most);
        assert_eq!(
            kept(&replay),
            [
                (Some(1), Some(2)),
                (Some(1), None),
                (Some(2), None),
                (None, None),
                (None, None)
            ]
        );
        // This peer finished round 2: round 1's data goes, the evictions stay.
        forget_before(&mut replay, 2);
        assert_eq!(kept(&replay), [(Some(2), None), (None, None), (None, None)]);
    }
}
