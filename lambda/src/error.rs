//! Typed errors of the functions, and how they become Lambda error responses.

use lambda_runtime::Diagnostic;
use peerless_data::{ShardError, StoreError, TransformError};
use peerless_models::{ModelError, ModelSpec};

/// Why a `compute_gradient` invocation failed. Each variant names the object key or field
/// at fault; [`ComputeGradientError::error_type`] is what Step Functions' `Retry`/`Catch`
/// match on.
#[derive(Debug, thiserror::Error)]
pub enum ComputeGradientError {
    /// A field of the event is unusable (bad run id, key, rank).
    #[error("invalid compute_gradient event: {0}")]
    InvalidEvent(String),
    /// The event names a store outside the one the function is deployed for
    /// (`PEERLESS_ALLOWED_STORE`); never retried.
    #[error("forbidden store in compute_gradient event: {0}")]
    ForbiddenStore(String),
    /// A referenced object does not exist.
    #[error("{what} object {key:?} not found in {url}")]
    MissingObject {
        /// `weights` or `batch`.
        what: &'static str,
        /// The key looked up.
        key: String,
        /// The store URL.
        url: String,
    },
    /// Opening the store, reading or writing failed for another reason than absence.
    #[error(transparent)]
    Store(StoreError),
    /// The weights object is not a valid weights blob.
    #[error("weights object {key:?}: {source}")]
    InvalidWeights {
        /// The weights key.
        key: String,
        /// What is wrong with it.
        source: ModelError,
    },
    /// The weights blob holds a different model than the event names.
    #[error(
        "weights object {key:?} holds {blob} ({blob_classes} classes, {blob_channels} input channels) but the event asks for {event} ({event_classes} classes, {event_channels} input channels)",
        blob = blob.arch, blob_classes = blob.num_classes, blob_channels = blob.in_channels,
        event = event.arch, event_classes = event.num_classes, event_channels = event.in_channels
    )]
    WrongModel {
        /// The weights key.
        key: String,
        /// The model in the blob.
        blob: ModelSpec,
        /// The model in the event.
        event: ModelSpec,
    },
    /// The batch object is not a valid shard.
    #[error("batch object {key:?}: {source}")]
    InvalidBatch {
        /// The batch key.
        key: String,
        /// What is wrong with it.
        source: ShardError,
    },
    /// The batch's images cannot be turned into model inputs with the event's transform.
    #[error("batch object {key:?} cannot be transformed: {source}")]
    Transform {
        /// The batch key.
        key: String,
        /// Why.
        source: TransformError,
    },
    /// A failure [`crate::faults`] was asked to inject.
    #[error(
        "injected failure of invocation {invocation} ({} is set)",
        crate::faults::FAILURES_ENV
    )]
    Injected {
        /// The invocation number of this handler state.
        invocation: u64,
    },
    /// Building the model or running the gradient step failed (e.g. the batch does not
    /// fit the model).
    #[error("gradient of batch {key:?} failed: {source}")]
    Compute {
        /// The batch key.
        key: String,
        /// Why.
        source: ModelError,
    },
}

impl ComputeGradientError {
    /// A stable name of the error kind (the Lambda `errorType`), for Step Functions
    /// `Retry`/`Catch` rules and for the peer's retry decision.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::InvalidEvent(_) => "InvalidEvent",
            Self::ForbiddenStore(_) => "ForbiddenStore",
            Self::MissingObject { .. } => "MissingObject",
            Self::Store(_) => "StoreError",
            Self::InvalidWeights { .. } => "InvalidWeights",
            Self::WrongModel { .. } => "WrongModel",
            Self::InvalidBatch { .. } => "InvalidBatch",
            Self::Transform { .. } => "InvalidTransform",
            Self::Compute { .. } => "ComputeFailed",
            Self::Injected { .. } => "InjectedFailure",
        }
    }

    /// Whether trying again may succeed (only store failures can be transient).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Store(_) | Self::Injected { .. })
    }
}

impl From<ComputeGradientError> for Diagnostic {
    fn from(error: ComputeGradientError) -> Self {
        Diagnostic {
            error_type: error.error_type().to_owned(),
            error_message: error.to_string(),
        }
    }
}

/// Why a `process_input` request cannot be expanded.
#[derive(Debug, thiserror::Error)]
pub enum ProcessInputError {
    /// A field of the request is unusable.
    #[error("invalid process_input request: {0}")]
    InvalidRequest(String),
    /// The expanded events would not fit into one Step Functions state.
    #[error(
        "{batches} events take {bytes} bytes of JSON, over the {limit}-byte Step Functions state limit; offload fewer batches per execution"
    )]
    TooLarge {
        /// Number of events.
        batches: u32,
        /// Their serialised size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
}

impl ProcessInputError {
    /// A stable name of the error kind (the Lambda `errorType`).
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "InvalidRequest",
            Self::TooLarge { .. } => "TooLarge",
        }
    }
}

impl From<ProcessInputError> for Diagnostic {
    fn from(error: ProcessInputError) -> Self {
        Diagnostic {
            error_type: error.error_type().to_owned(),
            error_message: error.to_string(),
        }
    }
}
