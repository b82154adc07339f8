use std::path::PathBuf;

/// Everything that can go wrong when building, running or (de)serialising a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A name (model, optimizer, loss, device) that is not known; lists the valid ones.
    #[error("unknown {what} `{name}`; valid {what}s: {valid}")]
    UnknownName {
        what: &'static str,
        name: String,
        valid: String,
    },
    /// A flat vector whose length does not match the model.
    #[error("{what} has {got} values but the model needs {expected}")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// A batch that does not fit the model (shape, channels, labels, size).
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// An option value outside its valid range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A weights blob that is truncated, foreign or for another model.
    #[error("invalid weights: {0}")]
    InvalidWeights(String),
    /// A safetensors file that does not match the model, with every offending key named.
    #[error("safetensors file {path} does not match {model}: {problems}")]
    SafetensorsMismatch {
        path: PathBuf,
        model: String,
        problems: String,
    },
    /// A safetensors file that cannot be parsed at all.
    #[error("cannot parse safetensors file {path}: {reason}")]
    SafetensorsFormat { path: PathBuf, reason: String },
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The requested compute device is not available.
    #[error("device unavailable: {0}")]
    DeviceUnavailable(String),
    /// The tensor backend failed (for example reading a tensor back from the device).
    #[error("tensor backend error: {0}")]
    Backend(String),
    /// An exported optimizer state (for example from a checkpoint) that does not fit the
    /// optimizer it is restored into; restoring it would silently change the training.
    #[error("cannot restore {optimizer} state: {reason}")]
    OptimizerState {
        /// The optimizer restored into (`sgd`, `adam`, ...).
        optimizer: &'static str,
        /// What does not fit.
        reason: String,
    },
}

impl ModelError {
    pub(crate) fn unknown(what: &'static str, name: &str, valid: &[&str]) -> Self {
        ModelError::UnknownName {
            what,
            name: name.to_string(),
            valid: valid.join(", "),
        }
    }
}
