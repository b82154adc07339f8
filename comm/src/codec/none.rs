//! The `none` codec: the gradient as raw little-endian `f32`.

use super::{Accumulate, Codec, CodecError, CodecSpec};

/// No compression: the payload is the gradient's `f32` values, little-endian,
/// 4 bytes each; the baseline every other codec is compared against.
#[derive(Clone, Copy, Debug, Default)]
pub struct Raw;

impl Codec for Raw {
    fn spec(&self) -> CodecSpec {
        CodecSpec::None
    }

    fn encode(&mut self, grad: &[f32], out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.clear();
        extend_le(out, grad);
        Ok(())
    }

    fn validate(&self, payload: &[u8], len: usize) -> Result<(), CodecError> {
        let expected = len.checked_mul(4);
        if expected != Some(payload.len()) {
            return Err(CodecError::Malformed {
                codec: "none",
                reason: format!(
                    "{} bytes for {len} elements (expected 4 per element)",
                    payload.len()
                ),
            });
        }
        // A NaN or infinity would poison every peer's weights.
        use rayon::prelude::*;
        let bad = payload
            .par_chunks(1 << 16)
            .enumerate()
            .find_map_first(|(c, bytes)| {
                bytes.chunks_exact(4).enumerate().find_map(|(i, b)| {
                    let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    (!v.is_finite()).then_some((c * (1 << 14) + i, v))
                })
            });
        if let Some((index, value)) = bad {
            return Err(CodecError::Malformed {
                codec: "none",
                reason: format!("value {value} at index {index} is not finite"),
            });
        }
        Ok(())
    }

    fn accumulate(
        &self,
        payload: &[u8],
        _len: usize,
        start: usize,
        out: &mut [f32],
        mode: Accumulate,
    ) {
        let bytes = &payload[start * 4..(start + out.len()) * 4];
        accumulate_le(bytes, out, mode);
    }

    fn state(&self) -> Vec<u8> {
        Vec::new()
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), CodecError> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(CodecError::InvalidState {
                codec: "none",
                reason: format!("{} bytes for a stateless codec", state.len()),
            })
        }
    }
}

/// Appends `values` to `out` as little-endian bytes (a plain copy on
/// little-endian machines).
pub(crate) fn extend_le(out: &mut Vec<u8>, values: &[f32]) {
    if cfg!(target_endian = "little") {
        out.extend_from_slice(bytemuck::cast_slice(values));
    } else {
        out.reserve(values.len() * 4);
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// Assigns or adds little-endian `f32` bytes into `out` (`bytes.len() == 4 * out.len()`).
pub(crate) fn accumulate_le(bytes: &[u8], out: &mut [f32], mode: Accumulate) {
    debug_assert_eq!(bytes.len(), out.len() * 4);
    if cfg!(target_endian = "little")
        && let Ok(values) = bytemuck::try_cast_slice::<u8, f32>(bytes)
    {
        match mode {
            Accumulate::Assign => out.copy_from_slice(values),
            Accumulate::Add => out.iter_mut().zip(values).for_each(|(o, v)| *o += v),
        }
        return;
    }
    let values = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    match mode {
        Accumulate::Assign => out.iter_mut().zip(values).for_each(|(o, v)| *o = v),
        Accumulate::Add => out.iter_mut().zip(values).for_each(|(o, v)| *o += v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_bit_exact() {
        let grad: Vec<f32> = (0..1001).map(|i| (i as f32 * 0.37).sin() * 1e-3).collect();
        let mut codec = Raw;
        let mut payload = Vec::new();
        codec.encode(&grad, &mut payload).unwrap();
        assert_eq!(payload.len(), grad.len() * 4);
        assert_eq!(&payload[..4], &grad[0].to_le_bytes());
        let mut out = vec![0.0; grad.len()];
        codec.decode(&payload, &mut out).unwrap();
        assert_eq!(out, grad);
    }

    #[test]
    fn unaligned_payload_decodes() {
        let grad = [1.5f32, -2.25, 3.0];
        let mut payload = vec![0u8];
        extend_le(&mut payload, &grad);
        let mut out = [10.0f32; 3];
        accumulate_le(&payload[1..], &mut out, Accumulate::Add);
        assert_eq!(out, [11.5, 7.75, 13.0]);
    }

    #[test]
    fn state_is_empty_and_only_empty_state_restores() {
        let mut codec = Raw;
        assert!(codec.state().is_empty());
        codec.restore(&[]).unwrap();
        assert!(matches!(
            codec.restore(&[1]),
            Err(CodecError::InvalidState { codec: "none", .. })
        ));
    }

    #[test]
    fn wrong_length_is_rejected() {
        assert!(Raw.validate(&[0u8; 7], 2).is_err());
        assert!(Raw.validate(&[0u8; 8], 2).is_ok());
    }
}
