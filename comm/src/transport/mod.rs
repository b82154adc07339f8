//! Moving opaque messages between the peers of one run.
//!
//! [`Transport`] is the one interface; [`inprocess`] (tokio channels, the
//! embedded default) and [`amqp`] (RabbitMQ through lapin, feature `amqp`) implement it,
//! and [`AnyTransport`] picks one at run time.

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod inprocess;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;

#[cfg(feature = "amqp")]
pub use amqp::{AmqpConfig, AmqpTransport};
pub use inprocess::{InProcessHub, InProcessTransport};

/// Broadcasts messages to the other peers of a run and yields theirs, so the
/// averaging round is written once for every transport.
///
/// Both methods take `&self` so a round can publish and receive concurrently.
pub trait Transport: Send + Sync {
    /// Sends each message, in order, to every other peer of the run (never
    /// back to the sender). Returns once the transport has accepted all of
    /// them (for AMQP: the broker confirmed them).
    fn publish(
        &self,
        messages: &[Bytes],
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Sends each message, in order, to the peer of `rank` only (state for a
    /// restarted peer is too big to broadcast).
    fn send_to(
        &self,
        rank: u32,
        messages: &[Bytes],
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Waits for the next message from another peer. Cancel-safe: dropping
    /// the future loses no message. The delivery must be acknowledged with
    /// [`Delivery::ack`] once fully processed.
    fn recv(&self) -> impl Future<Output = Result<Delivery, TransportError>> + Send;

    /// Tells the transport that this peer finished `round`: every other peer has sent its
    /// part of it, so none is before `round` any more and this peer's data of earlier
    /// rounds will never be needed again (the AMQP transport stops keeping it for replay).
    fn finished_round(&self, round: u64) {
        let _ = round;
    }

    /// Total time this transport has spent without a connection (reconnecting
    /// included), so a round can extend its deadline by the time the broker was
    /// away instead of blaming the other peers.
    fn outage(&self) -> Duration {
        Duration::ZERO
    }
}

/// One received message plus the handle to acknowledge it, so a message is
/// only settled after the receiver has processed it.
#[derive(Debug)]
pub struct Delivery {
    data: Bytes,
    acker: Acker,
}

#[derive(Debug)]
pub(crate) enum Acker {
    /// Decrements the endpoint's count of unacknowledged deliveries.
    InProcess(Arc<AtomicUsize>),
    #[cfg(feature = "amqp")]
    Amqp(lapin::Acker),
}

impl Delivery {
    pub(crate) fn new(data: Bytes, acker: Acker) -> Self {
        Delivery { data, acker }
    }

    /// The message bytes (cheap to clone).
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Tells the transport the message is processed and may be forgotten.
    pub async fn ack(self) -> Result<(), TransportError> {
        match self.acker {
            Acker::InProcess(unacked) => {
                unacked.fetch_sub(1, Ordering::Relaxed);
                Ok(())
            }
            #[cfg(feature = "amqp")]
            Acker::Amqp(acker) => acker
                .ack(lapin::options::BasicAckOptions::default())
                .await
                .map(|_| ())
                .map_err(|e| TransportError::Ack {
                    cause: e.to_string(),
                }),
        }
    }
}

/// Why a transport operation failed; causes from the underlying library are
/// kept as text, with any password removed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The broker could not be reached or refused the connection.
    #[error("cannot connect to {url}: {cause}")]
    Connect {
        /// Broker URL with the password hidden.
        url: String,
        /// What went wrong.
        cause: String,
    },
    /// Declaring the run's exchange, queues or consumer failed.
    #[error("cannot set up {what} on {url}: {cause}")]
    Setup {
        /// Broker URL with the password hidden.
        url: String,
        /// The object being set up.
        what: String,
        /// What went wrong.
        cause: String,
    },
    /// Sending a message failed.
    #[error("publish failed: {cause}")]
    Publish {
        /// What went wrong.
        cause: String,
    },
    /// The broker refused to take responsibility for a message.
    #[error("broker rejected (nacked) {count} published message(s)")]
    Nacked {
        /// How many.
        count: usize,
    },
    /// The broker refused a message above its size limit (RabbitMQ's
    /// `max_message_size`; 512 KiB on Amazon MQ's current brokers).
    #[error(
        "the broker refused a message of {bytes} bytes as too large ({reason}); \
         send smaller chunks with --chunk-kib (the default, 448, fits a 512 KiB limit)"
    )]
    MessageTooLarge {
        /// Size of the largest message of the refused batch, header included.
        bytes: usize,
        /// The broker's reply text.
        reason: String,
    },
    /// The broker had no queue for a message (the run's queues were deleted?).
    #[error("message with routing key {routing_key} was unroutable: {reason}")]
    Unroutable {
        /// The routing key used.
        routing_key: String,
        /// The broker's reply text.
        reason: String,
    },
    /// Receiving failed.
    #[error("receive failed: {cause}")]
    Receive {
        /// What went wrong.
        cause: String,
    },
    /// Acknowledging a delivery failed.
    #[error("acknowledgement failed: {cause}")]
    Ack {
        /// What went wrong.
        cause: String,
    },
    /// The connection was lost and could not be re-established in time.
    #[error("lost the connection to {url}: {cause}")]
    Disconnected {
        /// Broker URL with the password hidden.
        url: String,
        /// Why reconnecting failed.
        cause: String,
    },
    /// The transport was closed; no more messages will arrive.
    #[error("transport closed")]
    Closed,
}

/// Either transport, chosen at run time (e.g. from a command-line URL).
#[derive(Debug)]
pub enum AnyTransport {
    /// Peers inside this process.
    InProcess(InProcessTransport),
    /// Peers connected through RabbitMQ (boxed: the connection state is large).
    #[cfg(feature = "amqp")]
    Amqp(Box<AmqpTransport>),
}

impl Transport for AnyTransport {
    async fn publish(&self, messages: &[Bytes]) -> Result<(), TransportError> {
        match self {
            AnyTransport::InProcess(t) => t.publish(messages).await,
            #[cfg(feature = "amqp")]
            AnyTransport::Amqp(t) => t.publish(messages).await,
        }
    }

    async fn send_to(&self, rank: u32, messages: &[Bytes]) -> Result<(), TransportError> {
        match self {
            AnyTransport::InProcess(t) => t.send_to(rank, messages).await,
            #[cfg(feature = "amqp")]
            AnyTransport::Amqp(t) => t.send_to(rank, messages).await,
        }
    }

    async fn recv(&self) -> Result<Delivery, TransportError> {
        match self {
            AnyTransport::InProcess(t) => t.recv().await,
            #[cfg(feature = "amqp")]
            AnyTransport::Amqp(t) => t.recv().await,
        }
    }

    fn finished_round(&self, round: u64) {
        match self {
            AnyTransport::InProcess(t) => t.finished_round(round),
            #[cfg(feature = "amqp")]
            AnyTransport::Amqp(t) => t.finished_round(round),
        }
    }

    fn outage(&self) -> Duration {
        match self {
            AnyTransport::InProcess(t) => t.outage(),
            #[cfg(feature = "amqp")]
            AnyTransport::Amqp(t) => t.outage(),
        }
    }
}

impl From<InProcessTransport> for AnyTransport {
    fn from(t: InProcessTransport) -> Self {
        AnyTransport::InProcess(t)
    }
}

#[cfg(feature = "amqp")]
impl From<AmqpTransport> for AnyTransport {
    fn from(t: AmqpTransport) -> Self {
        AnyTransport::Amqp(Box::new(t))
    }
}
