//! The `qsgd8` codec: the original system's modified QSGD (no Elias coding).
//!
//! Payload layout (all little-endian), for a gradient of `n` elements:
//!
//! | bytes | content |
//! |---|---|
//! | 4 | `scale = max|g| / 255` as `f32` |
//! | `n` | level of each element, `u8` in `0..=255` |
//! | `ceil(n / 8)` | sign bitmap: bit `i % 8` of byte `i / 8` set when element `i` is negative |
//!
//! 255 levels plus a sign need 9 bits; a separate sign bitmap costs 1.125
//! bytes per element (3.56x smaller than `f32`), against 2 bytes for `i16`.
//! Encoding: `x = |g| / scale`, `level = floor(x) + Bernoulli(x - floor(x))`,
//! so `E[sign * level * scale] = g` (unbiased); decoding is `sign * level * scale`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::{Accumulate, Codec, CodecError, CodecSpec, first_non_finite};

/// Elements per parallel encoding task; a multiple of 8 so sign bytes are not shared.
const BLOCK: usize = 1 << 16;
/// Random words drawn at once inside a block.
const RAND_BATCH: usize = 256;

/// QSGD with 255 levels and seeded stochastic rounding: about 3.5x fewer
/// bytes than raw `f32`, unbiased, reproducible for a given seed.
#[derive(Clone, Debug)]
pub struct Qsgd8 {
    seed: u64,
    calls: u64,
}

impl Qsgd8 {
    /// A codec whose random rounding is a pure function of `seed` and the
    /// number of previous `encode` calls (independent of thread count).
    pub fn new(seed: u64) -> Self {
        Qsgd8 { seed, calls: 0 }
    }

    /// Payload size in bytes for `len` elements.
    pub fn payload_len(len: usize) -> usize {
        4 + len + len.div_ceil(8)
    }
}

impl Codec for Qsgd8 {
    fn spec(&self) -> CodecSpec {
        CodecSpec::Qsgd8
    }

    fn encode(&mut self, grad: &[f32], out: &mut Vec<u8>) -> Result<(), CodecError> {
        if let Some((index, value)) = first_non_finite(grad) {
            return Err(CodecError::NonFinite {
                codec: "qsgd8",
                index,
                value,
            });
        }
        let max = grad.par_iter().map(|g| g.abs()).reduce(|| 0.0, f32::max);
        let scale = max / 255.0;
        let inv = if max > 0.0 { 255.0 / max } else { 0.0 };
        let n = grad.len();
        out.clear();
        out.resize(Self::payload_len(n), 0);
        out[..4].copy_from_slice(&scale.to_le_bytes());
        let (levels, signs) = out[4..].split_at_mut(n);

        let mut base = ChaCha8Rng::seed_from_u64(self.seed);
        base.set_stream(self.calls);
        self.calls += 1;

        grad.par_chunks(BLOCK)
            .zip(levels.par_chunks_mut(BLOCK))
            .zip(signs.par_chunks_mut(BLOCK / 8))
            .enumerate()
            .for_each(|(block, ((g, l), s))| {
                let mut rng = base.clone();
                rng.set_word_pos(block as u128 * BLOCK as u128);
                encode_block(g, l, s, inv, &mut rng);
            });
        Ok(())
    }

    fn validate(&self, payload: &[u8], len: usize) -> Result<(), CodecError> {
        let malformed = |reason: String| CodecError::Malformed {
            codec: "qsgd8",
            reason,
        };
        let expected = len
            .checked_add(len.div_ceil(8))
            .and_then(|v| v.checked_add(4));
        if expected != Some(payload.len()) {
            return Err(malformed(format!(
                "{} bytes for {len} elements (expected {})",
                payload.len(),
                expected.map_or_else(|| "overflow".to_owned(), |v| v.to_string())
            )));
        }
        let scale = read_scale(payload);
        // Levels go up to 255: the largest decoded value must be finite too.
        if !(scale * 255.0).is_finite() || scale < 0.0 {
            return Err(malformed(format!(
                "scale {scale} is not a finite non-negative number"
            )));
        }
        Ok(())
    }

    fn accumulate(
        &self,
        payload: &[u8],
        len: usize,
        start: usize,
        out: &mut [f32],
        mode: Accumulate,
    ) {
        let scale = read_scale(payload);
        let levels = &payload[4 + start..4 + start + out.len()];
        let signs = &payload[4 + len..];
        match mode {
            Accumulate::Assign => decode_block(levels, signs, start, scale, out, |o, v| *o = v),
            Accumulate::Add => decode_block(levels, signs, start, scale, out, |o, v| *o += v),
        }
    }

    /// The seed and the number of encodings so far (`u64` each, little-endian): the next
    /// encoding draws from stream `calls` of the seeded generator.
    fn state(&self) -> Vec<u8> {
        [self.seed.to_le_bytes(), self.calls.to_le_bytes()].concat()
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), CodecError> {
        let invalid = |reason: String| CodecError::InvalidState {
            codec: "qsgd8",
            reason,
        };
        let words: [u8; 16] = state
            .try_into()
            .map_err(|_| invalid(format!("{} bytes, expected 16", state.len())))?;
        let seed = u64::from_le_bytes(words[..8].try_into().expect("8 bytes"));
        let calls = u64::from_le_bytes(words[8..].try_into().expect("8 bytes"));
        if seed != self.seed {
            return Err(invalid(format!(
                "saved with seed {seed}, this codec has seed {}",
                self.seed
            )));
        }
        self.calls = calls;
        Ok(())
    }
}

fn read_scale(payload: &[u8]) -> f32 {
    f32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]])
}

fn encode_block(grad: &[f32], levels: &mut [u8], signs: &mut [u8], inv: f32, rng: &mut ChaCha8Rng) {
    let mut random = [0u32; RAND_BATCH];
    for ((g, l), s) in grad
        .chunks(RAND_BATCH)
        .zip(levels.chunks_mut(RAND_BATCH))
        .zip(signs.chunks_mut(RAND_BATCH / 8))
    {
        rng.fill(&mut random[..]);
        for (((g8, l8), r8), sign_byte) in g
            .chunks(8)
            .zip(l.chunks_mut(8))
            .zip(random.chunks(8))
            .zip(s)
        {
            let mut sign = 0u8;
            for (j, ((&value, level), r)) in g8.iter().zip(l8).zip(r8).enumerate() {
                let x = value.abs() * inv;
                // x >= 0, so truncation is floor (and needs no libm call).
                let floor = (x as i32) as f32;
                // 24 random bits give an exact f32 uniform in [0, 1).
                let u = (r >> 8) as f32 * (1.0 / 16_777_216.0);
                let rounded = floor + if u < x - floor { 1.0 } else { 0.0 };
                *level = rounded.min(255.0) as u8;
                sign |= u8::from(value < 0.0) << j;
            }
            *sign_byte = sign;
        }
    }
}

/// `SIGN_MASKS[b][j]` is the `f32` sign bit if bit `j` of sign byte `b` is set.
const SIGN_MASKS: [[u32; 8]; 256] = {
    let mut table = [[0u32; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let mut j = 0;
        while j < 8 {
            table[b][j] = (((b >> j) & 1) as u32) << 31;
            j += 1;
        }
        b += 1;
    }
    table
};

#[inline(always)]
fn decode_one(level: u8, sign_byte: u8, bit: usize, scale: f32) -> f32 {
    f32::from_bits((f32::from(level) * scale).to_bits() | SIGN_MASKS[sign_byte as usize][bit])
}

/// Decodes `out.len()` elements starting at element `start`; `levels` starts
/// at `start`, `signs` is the whole sign bitmap.
#[inline(always)]
fn decode_block(
    levels: &[u8],
    signs: &[u8],
    start: usize,
    scale: f32,
    out: &mut [f32],
    op: impl Fn(&mut f32, f32),
) {
    let len = out.len();
    // Scalar head up to a multiple of 8, whole sign bytes (vectorisable), scalar tail.
    let head = ((8 - start % 8) % 8).min(len);
    let body_end = head + (len - head) / 8 * 8;
    let scalar = |i: usize, o: &mut f32| {
        let idx = start + i;
        op(o, decode_one(levels[i], signs[idx >> 3], idx & 7, scale));
    };
    for i in (0..head).chain(body_end..len) {
        scalar(i, &mut out[i]);
    }
    let first_byte = (start + head) >> 3;
    let sign_bytes = &signs[first_byte..first_byte + (body_end - head) / 8];
    for ((o8, l8), &sign_byte) in out[head..body_end]
        .chunks_exact_mut(8)
        .zip(levels[head..body_end].chunks_exact(8))
        .zip(sign_bytes)
    {
        let masks = &SIGN_MASKS[sign_byte as usize];
        for j in 0..8 {
            op(
                &mut o8[j],
                f32::from_bits((f32::from(l8[j]) * scale).to_bits() | masks[j]),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn sample(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| rng.random_range(-1.0f32..1.0) * 0.05)
            .collect()
    }

    #[test]
    fn layout_and_round_trip_error_is_below_one_level() {
        let grad = sample(10_001, 1);
        let mut codec = Qsgd8::new(7);
        let mut payload = Vec::new();
        codec.encode(&grad, &mut payload).unwrap();
        assert_eq!(payload.len(), 4 + 10_001 + 1251);
        let max = grad.iter().fold(0.0f32, |m, g| m.max(g.abs()));
        let scale = f32::from_le_bytes(payload[..4].try_into().unwrap());
        assert_eq!(scale, max / 255.0);
        let mut out = vec![0.0; grad.len()];
        codec.decode(&payload, &mut out).unwrap();
        for (g, d) in grad.iter().zip(&out) {
            assert!((g - d).abs() <= scale * 1.0001, "{g} vs {d}");
            assert!(*d == 0.0 || d.signum() == g.signum(), "{g} vs {d}");
        }
        // The largest magnitude is represented exactly by level 255.
        let imax = grad.iter().position(|g| g.abs() == max).unwrap();
        assert!((out[imax] - grad[imax]).abs() <= max * 1e-6);
    }

    #[test]
    fn same_seed_same_bytes_different_seed_different_bytes() {
        let grad = sample(200_000, 2);
        let encode = |seed| {
            let mut payload = Vec::new();
            Qsgd8::new(seed).encode(&grad, &mut payload).unwrap();
            payload
        };
        assert_eq!(encode(5), encode(5));
        assert_ne!(encode(5), encode(6));
        let mut codec = Qsgd8::new(5);
        let (mut first, mut second) = (Vec::new(), Vec::new());
        codec.encode(&grad, &mut first).unwrap();
        codec.encode(&grad, &mut second).unwrap();
        assert_ne!(
            first, second,
            "successive encodings must use fresh randomness"
        );
    }

    #[test]
    fn restored_codec_encodes_the_next_gradients_bit_identically() {
        let mut original = Qsgd8::new(21);
        let mut payload = Vec::new();
        for s in 0..3 {
            original.encode(&sample(5000, s), &mut payload).unwrap();
        }
        let state = original.state();
        let mut restored = Qsgd8::new(21);
        restored.restore(&state).unwrap();
        assert_eq!(restored.state(), state);
        let mut fresh = Qsgd8::new(21);
        for s in 3..6 {
            let grad = sample(5000, s);
            let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
            original.encode(&grad, &mut a).unwrap();
            restored.encode(&grad, &mut b).unwrap();
            fresh.encode(&grad, &mut c).unwrap();
            assert_eq!(a, b, "encoding {s}");
            assert_ne!(a, c, "encoding {s}: the call counter matters");
        }
    }

    #[test]
    fn foreign_or_truncated_state_is_refused() {
        let mut codec = Qsgd8::new(1);
        codec.encode(&sample(100, 0), &mut Vec::new()).unwrap();
        let before = codec.state();
        let other_seed = Qsgd8::new(2).state();
        let err = codec.restore(&other_seed).unwrap_err().to_string();
        assert!(err.contains("seed 2") && err.contains("seed 1"), "{err}");
        assert!(matches!(
            codec.restore(&before[..15]),
            Err(CodecError::InvalidState { codec: "qsgd8", .. })
        ));
        assert_eq!(codec.state(), before, "refused restores change nothing");
    }

    /// Each decoded element is `scale * (floor(x) + B)` with `B ~ Bernoulli(frac)`,
    /// so its standard deviation is at most `scale / 2`; the mean of `K` encodings
    /// has standard deviation at most `scale / (2 sqrt K)`. We require every element
    /// to be within 6 of those (a false failure has probability below 1e-5 here).
    #[test]
    fn qsgd_is_unbiased() {
        const K: usize = 2000;
        let grad = sample(1000, 3);
        let scale = grad.iter().fold(0.0f32, |m, g| m.max(g.abs())) / 255.0;
        let mut codec = Qsgd8::new(11);
        let mut payload = Vec::new();
        let mut decoded = vec![0.0f32; grad.len()];
        let mut sum = vec![0.0f64; grad.len()];
        for _ in 0..K {
            codec.encode(&grad, &mut payload).unwrap();
            codec.decode(&payload, &mut decoded).unwrap();
            sum.iter_mut()
                .zip(&decoded)
                .for_each(|(s, d)| *s += f64::from(*d));
        }
        let tolerance = 6.0 * f64::from(scale) / (2.0 * (K as f64).sqrt());
        let mut worst = 0.0f64;
        for (g, s) in grad.iter().zip(&sum) {
            let err = (s / K as f64 - f64::from(*g)).abs();
            worst = worst.max(err);
            assert!(
                err <= tolerance,
                "mean {} vs {g}: error {err} > {tolerance}",
                s / K as f64
            );
        }
        // The rounding is really stochastic: a deterministic rounding would be off by up to scale/2.
        assert!(worst < f64::from(scale) / 4.0);
    }

    #[test]
    fn zero_gradient_and_empty_gradient() {
        let mut codec = Qsgd8::new(1);
        let mut payload = Vec::new();
        codec.encode(&[0.0; 9], &mut payload).unwrap();
        let mut out = [1.0f32; 9];
        codec.decode(&payload, &mut out).unwrap();
        assert_eq!(out, [0.0; 9]);
        codec.encode(&[], &mut payload).unwrap();
        assert_eq!(payload.len(), 4);
        codec.decode(&payload, &mut []).unwrap();
    }

    #[test]
    fn rejects_non_finite_and_malformed() {
        let mut codec = Qsgd8::new(1);
        let mut payload = Vec::new();
        let err = codec.encode(&[1.0, f32::NAN], &mut payload).unwrap_err();
        assert!(
            matches!(err, CodecError::NonFinite { index: 1, .. }),
            "{err:?}"
        );
        codec.encode(&[1.0, -2.0], &mut payload).unwrap();
        assert!(codec.validate(&payload[..payload.len() - 1], 2).is_err());
        assert!(codec.validate(&payload, 3).is_err());
        payload[..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
        assert!(codec.validate(&payload, 2).is_err());
    }

    #[test]
    fn every_offset_and_length_decodes_like_the_formula() {
        let grad = sample(64, 5);
        let mut codec = Qsgd8::new(4);
        let mut payload = Vec::new();
        codec.encode(&grad, &mut payload).unwrap();
        let scale = read_scale(&payload);
        let naive = |i: usize| {
            let level = f32::from(payload[4 + i]);
            let negative = (payload[4 + 64 + i / 8] >> (i % 8)) & 1 == 1;
            if negative {
                -(level * scale)
            } else {
                level * scale
            }
        };
        for start in 0..64 {
            for len in 0..=64 - start {
                let mut out = vec![f32::NAN; len];
                codec.accumulate(&payload, 64, start, &mut out, Accumulate::Assign);
                for (i, o) in out.iter().enumerate() {
                    assert_eq!(
                        o.to_bits(),
                        naive(start + i).to_bits(),
                        "start {start} len {len} i {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn accumulate_adds_at_unaligned_offsets() {
        let grad = sample(100, 4);
        let mut codec = Qsgd8::new(3);
        let mut payload = Vec::new();
        codec.encode(&grad, &mut payload).unwrap();
        let mut full = vec![0.0; 100];
        codec.decode(&payload, &mut full).unwrap();
        let mut part = vec![1.0f32; 37];
        codec.accumulate(&payload, 100, 13, &mut part, Accumulate::Add);
        for (i, p) in part.iter().enumerate() {
            assert_eq!(*p, 1.0 + full[13 + i]);
        }
    }
}
