//! Gradient codecs: how a dense `f32` gradient becomes a payload and back.
//!
//! Every codec implements [`Codec`]; [`CodecSpec`] names a codec (and its
//! parameters) in configuration strings and in the wire header.

mod none;
mod qsgd;
mod topk;

use std::fmt;
use std::str::FromStr;

pub use none::Raw;
pub use qsgd::Qsgd8;
pub use topk::TopK;

/// The accepted spellings of a codec, quoted in parse errors.
pub const VALID_FORMS: &str =
    "`none`, `qsgd8`, `topk:RATIO` with 0 < RATIO <= 1 (e.g. `topk:0.01`)";

/// Whether decoded values overwrite the output or are added to it; lets the
/// averaging pass decode straight into its accumulator without a temporary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accumulate {
    /// `out[i] = decoded[i]`.
    Assign,
    /// `out[i] += decoded[i]`.
    Add,
}

/// Turns a dense gradient into a payload and back; one implementation per
/// compression scheme so the averaging round does not care which one runs.
///
/// Encoding may keep state (random generator, error-feedback residual);
/// decoding never does, so one codec instance decodes every peer's payload.
pub trait Codec: Send + Sync {
    /// Which codec this is, with its parameters (written into the header).
    fn spec(&self) -> CodecSpec;

    /// Encodes `grad` into `out` (cleared first; its capacity is reused).
    fn encode(&mut self, grad: &[f32], out: &mut Vec<u8>) -> Result<(), CodecError>;

    /// Checks that `payload` is a well-formed encoding of `len` elements.
    /// [`Codec::accumulate`] may only be called on payloads that passed.
    fn validate(&self, payload: &[u8], len: usize) -> Result<(), CodecError>;

    /// Decodes elements `start .. start + out.len()` of a validated payload of
    /// `len` elements into `out`, assigning or adding per `mode`.
    fn accumulate(
        &self,
        payload: &[u8],
        len: usize,
        start: usize,
        out: &mut [f32],
        mode: Accumulate,
    );

    /// The encoder's state (random-stream position, error-feedback residual) as bytes, so
    /// a checkpoint can restore a codec that encodes the next gradients bit-identically.
    /// Stateless codecs return nothing.
    fn state(&self) -> Vec<u8>;

    /// Replaces the encoder's state with bytes from [`Codec::state`] of a codec with the
    /// same spec (and seed); malformed or foreign state is refused with
    /// [`CodecError::InvalidState`] and leaves the codec unchanged.
    fn restore(&mut self, state: &[u8]) -> Result<(), CodecError>;

    /// Validates and decodes a whole payload into `out` (multithreaded).
    fn decode(&self, payload: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
        let len = out.len();
        self.validate(payload, len)?;
        crate::average::for_each_block(out, |start, block| {
            self.accumulate(payload, len, start, block, Accumulate::Assign)
        });
        Ok(())
    }
}

/// Names a codec and its parameters: parsed from configuration
/// (`none`, `qsgd8`, `topk:0.01`) and carried in every message header.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CodecSpec {
    /// Raw little-endian `f32`, no compression.
    None,
    /// QSGD with 255 levels, one byte per level plus a sign bitmap.
    Qsgd8,
    /// Largest-magnitude `ratio` fraction of the entries, with error feedback.
    TopK {
        /// Fraction of entries sent, in `(0, 1]`.
        ratio: f32,
    },
}

/// Identifier of a codec in the wire header.
pub type CodecId = u8;

impl CodecSpec {
    /// The codec's identifier in the wire header.
    pub fn id(&self) -> CodecId {
        match self {
            CodecSpec::None => 0,
            CodecSpec::Qsgd8 => 1,
            CodecSpec::TopK { .. } => 2,
        }
    }

    /// The codec's parameter in the wire header (top-k: ratio as `f32` bits).
    pub fn wire_param(&self) -> u32 {
        match self {
            CodecSpec::None | CodecSpec::Qsgd8 => 0,
            CodecSpec::TopK { ratio } => ratio.to_bits(),
        }
    }

    /// Rebuilds a spec from the header's codec id and parameter.
    pub fn from_wire(id: CodecId, param: u32) -> Result<Self, CodecError> {
        match id {
            0 => Ok(CodecSpec::None),
            1 => Ok(CodecSpec::Qsgd8),
            2 => CodecSpec::top_k(f32::from_bits(param)),
            other => Err(CodecError::UnknownId(other)),
        }
    }

    /// A top-k spec, checking the ratio.
    pub fn top_k(ratio: f32) -> Result<Self, CodecError> {
        if ratio.is_finite() && ratio > 0.0 && ratio <= 1.0 {
            Ok(CodecSpec::TopK { ratio })
        } else {
            Err(CodecError::InvalidRatio(ratio))
        }
    }

    /// Short name (`none`, `qsgd8`, `topk`), for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            CodecSpec::None => "none",
            CodecSpec::Qsgd8 => "qsgd8",
            CodecSpec::TopK { .. } => "topk",
        }
    }

    /// Creates the codec. `seed` drives stochastic rounding (QSGD): give every
    /// rank a different seed, e.g. derived from a run seed and the rank.
    pub fn build(&self, seed: u64) -> Box<dyn Codec> {
        match *self {
            CodecSpec::None => Box::new(Raw),
            CodecSpec::Qsgd8 => Box::new(Qsgd8::new(seed)),
            CodecSpec::TopK { ratio } => {
                Box::new(TopK::new(ratio).expect("spec ratio was validated"))
            }
        }
    }
}

impl fmt::Display for CodecSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecSpec::TopK { ratio } => write!(f, "topk:{ratio}"),
            other => f.write_str(other.name()),
        }
    }
}

impl FromStr for CodecSpec {
    type Err = CodecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse_error = |reason: &str| CodecError::Parse {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        let trimmed = s.trim();
        match trimmed.to_ascii_lowercase().as_str() {
            "none" | "raw" => Ok(CodecSpec::None),
            "qsgd8" | "qsgd" => Ok(CodecSpec::Qsgd8),
            lower => {
                let Some(ratio) = lower.strip_prefix("topk:") else {
                    return Err(parse_error("unknown codec name"));
                };
                let ratio: f32 = ratio
                    .trim()
                    .parse()
                    .map_err(|_| parse_error("top-k ratio is not a number"))?;
                CodecSpec::top_k(ratio).map_err(|_| parse_error("top-k ratio must be > 0 and <= 1"))
            }
        }
    }
}

/// Why a codec could not be parsed, encode, or decode; typed so callers can
/// tell configuration mistakes from corrupted payloads.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CodecError {
    /// A configuration string does not name a codec.
    #[error("invalid codec `{input}` ({reason}); valid forms: {VALID_FORMS}")]
    Parse {
        /// The string given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The header names a codec this build does not know.
    #[error("unknown codec id {0} in message header")]
    UnknownId(CodecId),
    /// A top-k ratio outside `(0, 1]`.
    #[error("invalid top-k ratio {0}: must be > 0 and <= 1")]
    InvalidRatio(f32),
    /// A payload does not decode to the announced number of elements.
    #[error("malformed {codec} payload: {reason}")]
    Malformed {
        /// Codec name.
        codec: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The gradient contains NaN or infinity, which a lossy codec cannot encode.
    #[error("cannot encode with {codec}: element {index} is not finite ({value})")]
    NonFinite {
        /// Codec name.
        codec: &'static str,
        /// Index of the first offending element.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// The gradient is longer than the codec's index space.
    #[error("cannot encode {len} elements with {codec}: at most {max}")]
    TooLong {
        /// Codec name.
        codec: &'static str,
        /// Elements given.
        len: usize,
        /// Largest supported length.
        max: usize,
    },
    /// Saved encoder state ([`Codec::restore`]) that is truncated, corrupt, or from a
    /// codec with other parameters.
    #[error("cannot restore {codec} state: {reason}")]
    InvalidState {
        /// Codec name.
        codec: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A stateful codec saw a gradient of a different length than before.
    #[error("{codec} was used with {expected} elements and now gets {got}")]
    LengthChanged {
        /// Codec name.
        codec: &'static str,
        /// Length seen so far.
        expected: usize,
        /// Length now.
        got: usize,
    },
}

/// Returns the index and value of the first non-finite element. The common
/// all-finite case is checked in parallel blocks (rayon's element-wise
/// `position_first` is about 30 times slower); only a failure is located serially.
pub(crate) fn first_non_finite(values: &[f32]) -> Option<(usize, f32)> {
    use rayon::prelude::*;
    let all_finite = values
        .par_chunks(1 << 16)
        .all(|block| block.iter().all(|v| v.is_finite()));
    if all_finite {
        return None;
    }
    values
        .iter()
        .position(|v| !v.is_finite())
        .map(|i| (i, values[i]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_forms() {
        assert_eq!("none".parse::<CodecSpec>().unwrap(), CodecSpec::None);
        assert_eq!("QSGD8".parse::<CodecSpec>().unwrap(), CodecSpec::Qsgd8);
        assert_eq!(
            " topk:0.01 ".parse::<CodecSpec>().unwrap(),
            CodecSpec::TopK { ratio: 0.01 }
        );
        assert_eq!(
            "topk:1".parse::<CodecSpec>().unwrap(),
            CodecSpec::TopK { ratio: 1.0 }
        );
    }

    #[test]
    fn bad_strings_list_valid_forms() {
        for bad in [
            "",
            "zip",
            "topk",
            "topk:",
            "topk:abc",
            "topk:0",
            "topk:1.5",
            "topk:-0.1",
            "topk:nan",
        ] {
            let err = bad.parse::<CodecSpec>().unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, CodecError::Parse { .. }), "{bad}: {err:?}");
            assert!(
                msg.contains("`none`") && msg.contains("`qsgd8`") && msg.contains("topk:RATIO"),
                "{msg}"
            );
        }
    }

    #[test]
    fn display_round_trips_through_parse() {
        for spec in [
            CodecSpec::None,
            CodecSpec::Qsgd8,
            CodecSpec::TopK { ratio: 0.25 },
        ] {
            assert_eq!(spec.to_string().parse::<CodecSpec>().unwrap(), spec);
            assert_eq!(
                CodecSpec::from_wire(spec.id(), spec.wire_param()).unwrap(),
                spec
            );
            assert_eq!(spec.build(1).spec(), spec);
        }
        assert_eq!(CodecSpec::from_wire(9, 0), Err(CodecError::UnknownId(9)));
        assert!(CodecSpec::from_wire(2, f32::NAN.to_bits()).is_err());
    }
}
