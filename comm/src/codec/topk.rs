//! The `topk:RATIO` codec: sparsification with error feedback.
//!
//! Payload layout (little-endian) for `k` kept entries:
//!
//! | bytes | content |
//! |---|---|
//! | 4 | `k` as `u32` |
//! | `4 k` | indices, `u32`, strictly ascending |
//! | `4 k` | values, `f32`, in index order |
//!
//! The sender adds the residual of earlier rounds to the gradient, sends the
//! `k = ceil(RATIO * n)` entries of largest magnitude and keeps the rest as
//! the new residual, so nothing is lost, only delayed.

use rayon::prelude::*;

use super::{Accumulate, Codec, CodecError, CodecSpec, first_non_finite};

/// Top-k sparsification with error feedback: sends the largest-magnitude
/// fraction of (gradient + residual) and carries the remainder to the next round.
#[derive(Clone, Debug)]
pub struct TopK {
    ratio: f32,
    residual: Vec<f32>,
    magnitudes: Vec<f32>,
}

impl TopK {
    /// A codec keeping `ratio` (in `(0, 1]`) of the entries each round.
    pub fn new(ratio: f32) -> Result<Self, CodecError> {
        CodecSpec::top_k(ratio)?;
        Ok(TopK {
            ratio,
            residual: Vec::new(),
            magnitudes: Vec::new(),
        })
    }

    /// Number of entries sent for a gradient of `len` elements: `ceil(ratio * len)`,
    /// at least 1.
    pub fn k_for(&self, len: usize) -> usize {
        if len == 0 {
            return 0;
        }
        // The relative slack absorbs the f32 representation error of the ratio
        // (0.05f32 is 0.0500000007..., which must still give 50 of 1000).
        let exact = f64::from(self.ratio) * len as f64;
        ((exact * (1.0 - 1e-6)).ceil() as usize).clamp(1, len)
    }

    /// What has not been sent yet (empty before the first `encode`).
    pub fn residual(&self) -> &[f32] {
        &self.residual
    }

    /// Payload size in bytes for `k` kept entries.
    pub fn payload_len(k: usize) -> usize {
        4 + 8 * k
    }
}

impl Codec for TopK {
    fn spec(&self) -> CodecSpec {
        CodecSpec::TopK { ratio: self.ratio }
    }

    fn encode(&mut self, grad: &[f32], out: &mut Vec<u8>) -> Result<(), CodecError> {
        let n = grad.len();
        if n > u32::MAX as usize {
            return Err(CodecError::TooLong {
                codec: "topk",
                len: n,
                max: u32::MAX as usize,
            });
        }
        if let Some((index, value)) = first_non_finite(grad) {
            return Err(CodecError::NonFinite {
                codec: "topk",
                index,
                value,
            });
        }
        if self.residual.is_empty() {
            self.residual.resize(n, 0.0);
        } else if self.residual.len() != n {
            return Err(CodecError::LengthChanged {
                codec: "topk",
                expected: self.residual.len(),
                got: n,
            });
        }
        // The residual becomes the error-corrected gradient.
        self.residual
            .par_iter_mut()
            .zip(grad)
            .for_each(|(r, g)| *r += g);

        let k = self.k_for(n);
        out.clear();
        out.resize(Self::payload_len(k), 0);
        out[..4].copy_from_slice(&(k as u32).to_le_bytes());
        if k == 0 {
            return Ok(());
        }

        let threshold = kth_largest_magnitude(&self.residual, k, &mut self.magnitudes);
        let (indices, values) = out[4..].split_at_mut(4 * k);
        take_selected(&mut self.residual, threshold, k, indices, values);
        Ok(())
    }

    fn validate(&self, payload: &[u8], len: usize) -> Result<(), CodecError> {
        let malformed = |reason: String| CodecError::Malformed {
            codec: "topk",
            reason,
        };
        if payload.len() < 4 {
            return Err(malformed(format!(
                "{} bytes, need at least 4",
                payload.len()
            )));
        }
        let k = read_u32(payload, 0) as usize;
        if k > len {
            return Err(malformed(format!("{k} entries for {len} elements")));
        }
        if Self::payload_len(k) != payload.len() {
            return Err(malformed(format!(
                "{} bytes for {k} entries (expected {})",
                payload.len(),
                Self::payload_len(k)
            )));
        }
        let mut previous: Option<u32> = None;
        for j in 0..k {
            let index = read_u32(payload, 4 + 4 * j);
            if index as usize >= len || previous.is_some_and(|p| p >= index) {
                return Err(malformed(format!(
                    "index {index} at position {j} is out of range or not ascending"
                )));
            }
            previous = Some(index);
            let value = read_f32(payload, 4 + 4 * k + 4 * j);
            if !value.is_finite() {
                return Err(malformed(format!(
                    "value {value} at position {j} is not finite"
                )));
            }
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
        let k = read_u32(payload, 0) as usize;
        let index_at = |j: usize| read_u32(payload, 4 + 4 * j) as usize;
        let lo = lower_bound(k, |j| index_at(j) < start);
        let hi = lower_bound(k, |j| index_at(j) < start + out.len());
        if mode == Accumulate::Assign {
            out.fill(0.0);
        }
        for j in lo..hi {
            out[index_at(j) - start] += read_f32(payload, 4 + 4 * k + 4 * j);
        }
    }

    /// The ratio (`f32` bits), the residual's length (`u64`) and its values (`f32`), all
    /// little-endian; the length is 0 before the first encoding.
    fn state(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + 4 * self.residual.len());
        out.extend_from_slice(&self.ratio.to_bits().to_le_bytes());
        out.extend_from_slice(&(self.residual.len() as u64).to_le_bytes());
        super::none::extend_le(&mut out, &self.residual);
        out
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), CodecError> {
        let invalid = |reason: String| CodecError::InvalidState {
            codec: "topk",
            reason,
        };
        if state.len() < 12 {
            return Err(invalid(format!("{} bytes, need at least 12", state.len())));
        }
        let ratio = read_f32(state, 0);
        if ratio.to_bits() != self.ratio.to_bits() {
            return Err(invalid(format!(
                "saved with ratio {ratio}, this codec has ratio {}",
                self.ratio
            )));
        }
        let len = u64::from_le_bytes(state[4..12].try_into().expect("8 bytes"));
        let values = &state[12..];
        if !values.len().is_multiple_of(4) || (values.len() / 4) as u64 != len {
            return Err(invalid(format!(
                "{} bytes of residual for {len} values",
                values.len()
            )));
        }
        let mut residual = vec![0.0; values.len() / 4];
        super::none::accumulate_le(values, &mut residual, Accumulate::Assign);
        self.residual = residual;
        Ok(())
    }
}

/// Elements per parallel task when scanning the gradient.
const SCAN_BLOCK: usize = 1 << 16;
/// Below this length the threshold is selected among all magnitudes directly.
const SAMPLE_FROM: usize = 1 << 20;
/// Magnitudes sampled to estimate the threshold.
const SAMPLES: usize = 1 << 16;

/// The `k`-th largest magnitude of `values` (exact), using `scratch` as buffer.
///
/// Large inputs first estimate a slightly lower threshold from an evenly
/// spaced sample, keep only the magnitudes at or above it (about `k` of
/// them) and select among those; if the estimate keeps fewer than `k`, it
/// falls back to selecting among all magnitudes.
fn kth_largest_magnitude(values: &[f32], k: usize, scratch: &mut Vec<f32>) -> f32 {
    let descending = |a: &f32, b: &f32| b.total_cmp(a);
    let n = values.len();
    scratch.clear();
    if n >= SAMPLE_FROM {
        let stride = n / SAMPLES;
        scratch.extend((0..SAMPLES).map(|i| values[i * stride].abs()));
        scratch.sort_unstable_by(descending);
        // Expected number of sampled values above the k-th largest, plus a
        // safety margin of a few standard deviations.
        let expected = k as f64 / n as f64 * SAMPLES as f64;
        let position = (expected * 1.1 + 4.0 * expected.sqrt() + 16.0) as usize;
        if position < SAMPLES {
            let estimate = scratch[position];
            scratch.clear();
            scratch.par_extend(
                values
                    .par_iter()
                    .map(|v| v.abs())
                    .filter(|m| *m >= estimate),
            );
            if scratch.len() >= k {
                return *scratch.select_nth_unstable_by(k - 1, descending).1;
            }
        }
        scratch.clear();
    }
    scratch.par_extend(values.par_iter().map(|v| v.abs()));
    *scratch.select_nth_unstable_by(k - 1, descending).1
}

/// Moves the `k` entries to send out of `residual` into the index and value
/// sections of the payload: every entry above `threshold`, then entries equal
/// to it, lowest index first, until there are `k`. Runs in parallel blocks,
/// each writing its own stretch of the payload.
fn take_selected(
    residual: &mut [f32],
    threshold: f32,
    k: usize,
    indices: &mut [u8],
    values: &mut [u8],
) {
    let counts: Vec<(usize, usize)> = residual
        .par_chunks(SCAN_BLOCK)
        .map(|block| {
            block.iter().fold((0, 0), |(above, equal), v| {
                let m = v.abs();
                (
                    above + usize::from(m > threshold),
                    equal + usize::from(m == threshold),
                )
            })
        })
        .collect();
    let mut ties_left = k - counts.iter().map(|c| c.0).sum::<usize>();
    let mut plan = Vec::with_capacity(counts.len());
    let (mut index_rest, mut value_rest) = (indices, values);
    for (above, equal) in counts {
        let ties = equal.min(ties_left);
        ties_left -= ties;
        let bytes = 4 * (above + ties);
        let (index_out, index_tail) = index_rest.split_at_mut(bytes);
        let (value_out, value_tail) = value_rest.split_at_mut(bytes);
        index_rest = index_tail;
        value_rest = value_tail;
        plan.push((ties, index_out, value_out));
    }
    debug_assert!(index_rest.is_empty(), "top-k selected fewer than k entries");
    residual
        .par_chunks_mut(SCAN_BLOCK)
        .zip(plan)
        .enumerate()
        .for_each(|(b, (block, (mut ties, index_out, value_out)))| {
            let mut slots = index_out
                .chunks_exact_mut(4)
                .zip(value_out.chunks_exact_mut(4));
            for (i, r) in block.iter_mut().enumerate() {
                let m = r.abs();
                let keep = m > threshold || (m == threshold && ties > 0);
                if !keep {
                    continue;
                }
                if m == threshold {
                    ties -= 1;
                }
                let Some((index_slot, value_slot)) = slots.next() else {
                    break;
                };
                index_slot.copy_from_slice(&((b * SCAN_BLOCK + i) as u32).to_le_bytes());
                value_slot.copy_from_slice(&r.to_le_bytes());
                *r = 0.0;
            }
        });
}

/// First `j` in `0..n` for which `pred(j)` is false (`pred` is monotone: true then false).
fn lower_bound(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn read_f32(bytes: &[u8], at: usize) -> f32 {
    f32::from_bits(read_u32(bytes, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, seq::SliceRandom};
    use rand_chacha::ChaCha8Rng;

    fn decode(codec: &TopK, payload: &[u8], n: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; n];
        codec.decode(payload, &mut out).unwrap();
        out
    }

    #[test]
    fn keeps_exactly_the_largest_magnitudes() {
        let n = 1000;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        // Distinct magnitudes 1..=n with random signs, shuffled.
        let mut grad: Vec<f32> = (1..=n)
            .map(|m| {
                if rng.random_bool(0.5) {
                    m as f32
                } else {
                    -(m as f32)
                }
            })
            .collect();
        grad.shuffle(&mut rng);
        let mut codec = TopK::new(0.05).unwrap();
        let mut payload = Vec::new();
        codec.encode(&grad, &mut payload).unwrap();
        assert_eq!(codec.k_for(n), 50);
        assert_eq!(payload.len(), 4 + 8 * 50);
        let out = decode(&codec, &payload, n);
        for (g, o) in grad.iter().zip(&out) {
            if g.abs() > (n - 50) as f32 {
                assert_eq!(o, g, "a top-50 entry must be sent exactly");
            } else {
                assert_eq!(*o, 0.0, "entry {g} is not among the 50 largest");
            }
        }
        // The residual holds exactly what was not sent.
        for ((g, o), r) in grad.iter().zip(&out).zip(codec.residual()) {
            assert_eq!(g - o, *r);
        }
    }

    #[test]
    fn sampled_threshold_is_exact_even_when_the_sample_misleads() {
        let n = SAMPLE_FROM + 12_345;
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let random: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        // Sampled positions hold the largest values: the estimate is far too high.
        let stride = n / SAMPLES;
        let mut adversarial = random.clone();
        for i in 0..SAMPLES {
            adversarial[i * stride] = 10.0 + i as f32;
        }
        for values in [random, adversarial] {
            let mut sorted: Vec<f32> = values.iter().map(|v| v.abs()).collect();
            sorted.sort_unstable_by(|a, b| b.total_cmp(a));
            for k in [1, 1000, 70_000, n / 2] {
                let mut scratch = Vec::new();
                assert_eq!(
                    kth_largest_magnitude(&values, k, &mut scratch),
                    sorted[k - 1],
                    "k = {k}"
                );
            }
        }
    }

    #[test]
    fn parallel_selection_matches_a_sequential_one() {
        let n = 3 * SCAN_BLOCK + 77;
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        // Few distinct magnitudes: many ties spread over several blocks.
        let grad: Vec<f32> = (0..n).map(|_| rng.random_range(-3i32..=3) as f32).collect();
        let mut codec = TopK::new(0.3).unwrap();
        let k = codec.k_for(n);
        let mut payload = Vec::new();
        codec.encode(&grad, &mut payload).unwrap();
        let mut order: Vec<usize> = (0..n).collect();
        // Stable sort: equal magnitudes keep index order.
        order.sort_by(|a, b| grad[*b].abs().total_cmp(&grad[*a].abs()));
        let mut expected: Vec<usize> = order[..k].to_vec();
        expected.sort_unstable();
        let got: Vec<usize> = (0..k)
            .map(|j| read_u32(&payload, 4 + 4 * j) as usize)
            .collect();
        assert_eq!(got, expected);
        for (j, index) in got.iter().enumerate() {
            assert_eq!(read_f32(&payload, 4 + 4 * k + 4 * j), grad[*index]);
            assert_eq!(codec.residual()[*index], 0.0);
        }
    }

    #[test]
    fn ties_still_send_exactly_k_lowest_index_first() {
        let grad = [1.0f32, -1.0, 1.0, 1.0, 0.5];
        let mut codec = TopK::new(0.4).unwrap();
        let mut payload = Vec::new();
        codec.encode(&grad, &mut payload).unwrap();
        assert_eq!(decode(&codec, &payload, 5), vec![1.0, -1.0, 0.0, 0.0, 0.0]);
    }

    /// Integer-valued inputs keep every sum exact, so the invariant holds bit for bit:
    /// the sum of everything sent plus the final residual equals the sum of the inputs.
    #[test]
    fn error_feedback_conserves_the_gradient_sum() {
        let n = 500;
        let rounds = 40;
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut codec = TopK::new(0.03).unwrap();
        let mut payload = Vec::new();
        let mut sent = vec![0.0f32; n];
        let mut inputs = vec![0.0f32; n];
        let mut decoded = vec![0.0f32; n];
        for _ in 0..rounds {
            let grad: Vec<f32> = (0..n)
                .map(|_| rng.random_range(-1000i32..=1000) as f32)
                .collect();
            inputs.iter_mut().zip(&grad).for_each(|(s, g)| *s += g);
            codec.encode(&grad, &mut payload).unwrap();
            codec.decode(&payload, &mut decoded).unwrap();
            assert_eq!(decoded.iter().filter(|v| **v != 0.0).count(), 15);
            sent.iter_mut().zip(&decoded).for_each(|(s, d)| *s += d);
        }
        for i in 0..n {
            assert_eq!(sent[i] + codec.residual()[i], inputs[i], "element {i}");
        }
        assert!(codec.residual().iter().any(|r| *r != 0.0));
    }

    #[test]
    fn error_feedback_with_real_values_within_rounding() {
        let n = 2000;
        let mut rng = ChaCha8Rng::seed_from_u64(10);
        let mut codec = TopK::new(0.01).unwrap();
        let mut payload = Vec::new();
        let (mut sent, mut inputs) = (vec![0.0f64; n], vec![0.0f64; n]);
        let mut decoded = vec![0.0f32; n];
        for _ in 0..25 {
            let grad: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            inputs
                .iter_mut()
                .zip(&grad)
                .for_each(|(s, g)| *s += f64::from(*g));
            codec.encode(&grad, &mut payload).unwrap();
            codec.decode(&payload, &mut decoded).unwrap();
            sent.iter_mut()
                .zip(&decoded)
                .for_each(|(s, d)| *s += f64::from(*d));
        }
        for i in 0..n {
            let total = sent[i] + f64::from(codec.residual()[i]);
            assert!(
                (total - inputs[i]).abs() < 1e-4,
                "element {i}: {total} vs {}",
                inputs[i]
            );
        }
    }

    #[test]
    fn accumulate_over_ranges_matches_full_decode() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let grad: Vec<f32> = (0..300).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut codec = TopK::new(0.1).unwrap();
        let mut payload = Vec::new();
        codec.encode(&grad, &mut payload).unwrap();
        let full = decode(&codec, &payload, 300);
        let mut pieces = vec![2.0f32; 300];
        for (b, block) in pieces.chunks_mut(7).enumerate() {
            codec.accumulate(&payload, 300, b * 7, block, Accumulate::Add);
        }
        for (p, f) in pieces.iter().zip(&full) {
            assert_eq!(*p, 2.0 + f);
        }
    }

    #[test]
    fn rejects_malformed_payloads_and_length_changes() {
        let mut codec = TopK::new(0.5).unwrap();
        let mut payload = Vec::new();
        codec.encode(&[3.0, -4.0, 1.0, 0.5], &mut payload).unwrap();
        assert!(codec.validate(&payload, 4).is_ok());
        assert!(codec.validate(&payload[..3], 4).is_err());
        assert!(codec.validate(&payload, 1).is_err());
        let mut unsorted = payload.clone();
        unsorted[4..12].copy_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        assert!(codec.validate(&unsorted, 4).is_err());
        let mut out_of_range = payload.clone();
        out_of_range[8..12].copy_from_slice(&9u32.to_le_bytes());
        assert!(codec.validate(&out_of_range, 4).is_err());
        let err = codec.encode(&[1.0; 5], &mut payload).unwrap_err();
        assert!(matches!(
            err,
            CodecError::LengthChanged {
                expected: 4,
                got: 5,
                ..
            }
        ));
    }

    #[test]
    fn restored_codec_encodes_the_next_gradients_bit_identically() {
        let n = 3000;
        let grad = |s: u64| -> Vec<f32> {
            let mut rng = ChaCha8Rng::seed_from_u64(s);
            (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
        };
        let mut original = TopK::new(0.01).unwrap();
        let fresh_state = original.state();
        let mut payload = Vec::new();
        for s in 0..3 {
            original.encode(&grad(s), &mut payload).unwrap();
        }
        let state = original.state();
        assert_eq!(state.len(), 12 + 4 * n);
        let mut restored = TopK::new(0.01).unwrap();
        restored.restore(&state).unwrap();
        assert_eq!(
            restored
                .residual()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            original
                .residual()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        );
        let mut fresh = TopK::new(0.01).unwrap();
        for s in 3..6 {
            let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
            original.encode(&grad(s), &mut a).unwrap();
            restored.encode(&grad(s), &mut b).unwrap();
            fresh.encode(&grad(s), &mut c).unwrap();
            assert_eq!(a, b, "encoding {s}");
            assert_ne!(a, c, "encoding {s}: the residual matters");
        }
        // The state before any encoding restores to an empty residual.
        let mut empty = TopK::new(0.01).unwrap();
        empty.restore(&fresh_state).unwrap();
        assert!(empty.residual().is_empty());
    }

    #[test]
    fn foreign_or_truncated_state_is_refused() {
        let mut codec = TopK::new(0.5).unwrap();
        codec
            .encode(&[3.0, -4.0, 1.0, 0.5], &mut Vec::new())
            .unwrap();
        let state = codec.state();
        let other = TopK::new(0.25).unwrap().state();
        let err = codec.restore(&other).unwrap_err().to_string();
        assert!(err.contains("0.25") && err.contains("0.5"), "{err}");
        for bad in [
            &state[..5],
            &state[..state.len() - 1],
            &state[..state.len() - 4],
        ] {
            assert!(
                matches!(
                    codec.restore(bad),
                    Err(CodecError::InvalidState { codec: "topk", .. })
                ),
                "{} bytes accepted",
                bad.len()
            );
        }
        assert_eq!(codec.state(), state, "refused restores change nothing");
    }
}
