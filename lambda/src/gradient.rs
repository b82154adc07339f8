//! The gradient object a function writes: one `peerless_comm` wire message (codec `none`,
//! a single chunk), so the peer checks run, round, size and checksum before using it.

use bytes::Bytes;
use peerless_comm::wire::{self, Header};
use peerless_comm::{CodecError, RunId, WireError, model_fingerprint};
use peerless_models::ModelSpec;

/// Encodes `grad` as one wire message with `header` (whose codec must be `none` and whose
/// element count must equal `grad.len()`), framed in the payload's own allocation.
pub fn encode(header: &Header, grad: &[f32]) -> Result<Bytes, CodecError> {
    let mut codec = header.codec.build(0);
    let mut payload = Vec::new();
    // Room for the header, so framing moves the payload instead of reallocating.
    payload.reserve_exact(grad.len() * 4 + wire::HEADER_LEN);
    codec.encode(grad, &mut payload)?;
    let mut header = header.clone();
    header.total_payload_len = payload.len() as u64;
    Ok(wire::into_message(&header, payload))
}

/// The fingerprint a gradient of `model` with `num_params` elements carries.
pub fn fingerprint(model: &ModelSpec, num_params: usize) -> u64 {
    model_fingerprint(model.arch.name(), num_params as u64)
}

/// What a peer expects of a batch gradient it asked for; anything else is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectedGradient {
    /// The run the peer belongs to.
    pub run_id: RunId,
    /// The round it asked for.
    pub round: u64,
    /// Its model's fingerprint ([`fingerprint`]).
    pub model_fingerprint: u64,
    /// Its model's parameter count.
    pub element_count: u64,
}

/// Why a gradient object was refused.
#[derive(Debug, thiserror::Error)]
pub enum GradientError {
    /// Not a valid message (truncated, corrupted, foreign).
    #[error("invalid gradient message: {0}")]
    Wire(#[from] WireError),
    /// A valid message for another run, round or model.
    #[error("gradient message does not match the request: {0}")]
    Mismatch(String),
    /// The payload does not decode.
    #[error("gradient payload: {0}")]
    Codec(#[from] CodecError),
    /// The gradient holds NaN or infinity: averaging it would poison the weights.
    #[error("gradient value {index} is {value}: not finite")]
    NotFinite {
        /// Index of the first bad value.
        index: usize,
        /// The value.
        value: f32,
    },
}

/// Validates one gradient message against `expected`: run, round, model and size, in a
/// single chunk.
fn check<'a>(
    bytes: &'a [u8],
    expected: &ExpectedGradient,
) -> Result<wire::Message<'a>, GradientError> {
    let message = wire::decode(bytes)?;
    let h = &message.header;
    let mismatch = |what: &str, got: String, want: String| {
        Err(GradientError::Mismatch(format!(
            "{what} is {got}, expected {want}"
        )))
    };
    if h.run_id != expected.run_id {
        return mismatch("run id", h.run_id.to_string(), expected.run_id.to_string());
    }
    if h.round != expected.round {
        return mismatch("round", h.round.to_string(), expected.round.to_string());
    }
    if h.model_fingerprint != expected.model_fingerprint {
        return mismatch(
            "model fingerprint",
            format!("{:#018x}", h.model_fingerprint),
            format!("{:#018x}", expected.model_fingerprint),
        );
    }
    if h.element_count != expected.element_count {
        return mismatch(
            "element count",
            h.element_count.to_string(),
            expected.element_count.to_string(),
        );
    }
    if h.chunk_count != 1 || h.total_payload_len != u64::from(h.payload_len) {
        return mismatch(
            "chunk count",
            h.chunk_count.to_string(),
            "1 (a single message)".into(),
        );
    }
    Ok(message)
}

/// Validates one gradient message against `expected` and decodes it (any codec); refuses
/// gradients that are not finite.
pub fn decode(bytes: &[u8], expected: &ExpectedGradient) -> Result<Vec<f32>, GradientError> {
    let message = check(bytes, expected)?;
    let h = &message.header;
    let mut out = vec![0.0f32; h.element_count as usize];
    h.codec.build(0).decode(message.payload, &mut out)?;
    if let Some(index) = out.iter().position(|v| !v.is_finite()) {
        return Err(GradientError::NotFinite {
            index,
            value: out[index],
        });
    }
    Ok(out)
}

/// Elements decoded at a time by [`accumulate`].
const BLOCK: usize = 1 << 16;

/// Validates one gradient message like [`decode`] and adds `weight` times its gradient
/// into `acc` (`acc[i] += weight * g[i]`) without a gradient-sized buffer of its own:
/// blocks are decoded and checked to be finite in a first pass and added in a second, so
/// a refused gradient leaves `acc` untouched.
pub fn accumulate(
    bytes: &[u8],
    expected: &ExpectedGradient,
    acc: &mut [f32],
    weight: f32,
) -> Result<(), GradientError> {
    let message = check(bytes, expected)?;
    let h = &message.header;
    let len = h.element_count as usize;
    if acc.len() != len {
        return Err(GradientError::Mismatch(format!(
            "element count is {len}, the accumulator has {}",
            acc.len()
        )));
    }
    let codec = h.codec.build(0);
    codec.validate(message.payload, len)?;
    let mut block = vec![0.0f32; BLOCK.min(len)];
    let mode = peerless_comm::codec::Accumulate::Assign;
    for start in (0..len).step_by(BLOCK) {
        let block = &mut block[..BLOCK.min(len - start)];
        codec.accumulate(message.payload, len, start, block, mode);
        if let Some(i) = block.iter().position(|v| !v.is_finite()) {
            return Err(GradientError::NotFinite {
                index: start + i,
                value: block[i],
            });
        }
    }
    for (start, acc) in (0..len).step_by(BLOCK).zip(acc.chunks_mut(BLOCK)) {
        let block = &mut block[..acc.len()];
        codec.accumulate(message.payload, len, start, block, mode);
        for (a, g) in acc.iter_mut().zip(block.iter()) {
            *a += weight * g;
        }
    }
    Ok(())
}
