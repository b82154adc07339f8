//! The study's one error type: every variant names the file and the key (or the run) at
//! fault, so a bad config or prices file is fixed without reading code.

use std::path::PathBuf;

/// Why loading, checking, costing or reporting a study failed.
#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A TOML file is not valid TOML or does not match the schema (unknown key, wrong type,
    /// missing key); the message quotes the offending line and key.
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    /// A config or prices value is out of range.
    #[error("{file}: `{key}` {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
    /// The prices file has no price for a resource the study uses.
    #[error("{file}: no price `{key}`, needed by `{needed_by}`")]
    MissingPrice {
        file: String,
        key: String,
        needed_by: String,
    },
    /// A metrics line could not be read.
    #[error("{}:{line}: {message}", path.display())]
    Metrics {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// The runs lack what a computation needs (no rounds, no reference peer, ...).
    #[error("{what}")]
    MissingData { what: String },
    /// A plot could not be drawn or encoded.
    #[error("plot {plot}: {message}")]
    Plot { plot: String, message: String },
}

impl StudyError {
    /// An [`StudyError::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StudyError::Io {
            path: path.into(),
            source,
        }
    }

    /// An [`StudyError::Invalid`] for `key` in `file`.
    pub(crate) fn invalid(file: &str, key: impl Into<String>, message: impl Into<String>) -> Self {
        StudyError::Invalid {
            file: file.to_string(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// A [`StudyError::MissingData`].
    pub(crate) fn missing(what: impl Into<String>) -> Self {
        StudyError::MissingData { what: what.into() }
    }
}
