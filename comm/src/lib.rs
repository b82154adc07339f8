//! Gradient exchange between peers of a data-parallel training run.
//!
//! Each round a peer encodes its gradient with a [`codec`], splits it into
//! [`wire`] messages, sends them over a [`transport`] as the run's [`exchange`]
//! says (whole gradients to everyone, or shards to their owners), and aggregates
//! what arrives ([`round`], [`average`], [`aggregate`]), so every peer ends the
//! round with bit-identical weights.

#![warn(missing_docs)]

pub mod aggregate;
pub mod auth;
pub mod average;
pub mod buffer;
pub mod claim;
pub mod codec;
pub mod exchange;
pub mod membership;
pub mod round;
pub mod transport;
pub mod url;
pub mod wire;

pub use aggregate::{Aggregation, AggregationError, Aggregator};
pub use auth::Keyring;
pub use codec::{Codec, CodecError, CodecSpec};
pub use exchange::Exchange;
pub use membership::{Identity, JoinRequest, Start};
pub use round::{Averager, OnTimeout, Rejections, RoundConfig, RoundError, RoundStats};
#[cfg(feature = "amqp")]
pub use transport::{AmqpConfig, AmqpTransport};
pub use transport::{
    AnyTransport, Delivery, InProcessHub, InProcessTransport, Transport, TransportError,
};
pub use url::{mask_password, mask_passwords_in, redact};
pub use wire::{Header, MessageKind, RunId, WireError, model_fingerprint};
