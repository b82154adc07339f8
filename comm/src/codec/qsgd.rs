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
//! Decoding is `sign * level * scale`.
//!
//! # Stochastic rounding
//!
//! Each magnitude becomes a fixed-point number with 15 fractional bits,
//! `t = min(round(y), 255 * 2^15)` with `y = |g| * 255 * 2^15 / max|g|` computed in `f32`,
//! and its level is `(t + k) >> 15` with `k` uniform in `0..2^15`. That rounds `t / 2^15` up
//! with probability exactly its fractional part, so `E[level] = t / 2^15` and
//! `E[sign * level * scale] = g` up to the fixed point's rounding: a bias of at most
//! `2^-16 * scale` per element (plus the `f32` error of `y`, a few `2^-24` relative, as in any
//! `f32` computation of `|g| / scale`). That is 3e4 times smaller than the rounding noise
//! itself (standard deviation up to `scale / 2`), and of the order of the `f32` rounding of
//! `|g| / scale` for levels above 128, so more random bits would buy nothing. (15 bits
//! rather than 16: `y < 2^23` is what lets `y + 2^23` round `y` to an integer, without a
//! float-to-integer conversion.) `y` is `(|g| * pre) * mul`, with `mul` the `f32`
//! `255 * 2^15 / (pre * max|g|)` rounded up so that the largest magnitude is level 255, and
//! `pre = 2^64` when `max|g| < 2^-60` (else 1) so that `mul` stays finite.
//!
//! The 15-bit `k` come from a cheap generator built to vectorise (one ChaCha8 draw per
//! element used to cost more than everything else), a pure function of the seed, the number
//! of previous encodings (`calls`) and the element index, whatever the thread count or
//! instruction set:
//!
//! - the gradient is cut into blocks of [`BLOCK`] elements (the unit of parallel work);
//! - block `b` runs [`LANES`] independent xoshiro128++ generators (a small generator that
//!   passes the usual statistical test batteries), seeded with 64 words of ChaCha8 (`seed`,
//!   stream `calls`, words `64 b .. 64 b + 64`, 4 consecutive words per lane);
//! - element `o` of the block uses step `o / 32` of the lanes: the output `w` of lane
//!   `o % 16`, its low 15 bits (`w & 0x7fff`) when `o % 32 < 16`, its top 15 bits (`w >> 17`)
//!   otherwise.
//!
//! Encoding is two passes over the gradient: `max|g|` (which also finds non-finite values)
//! and the rounding. On x86-64 with AVX2 both loops are compiled a second time with AVX2
//! enabled (the same autovectorised code, plus prefetching) and chosen at run time; both
//! compilations give the same bytes.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::{Accumulate, Codec, CodecError, CodecSpec, first_non_finite};

/// Elements per parallel encoding task; a multiple of [`CHUNK`], so sign bytes are not
/// shared and only the last block has a partial chunk.
const BLOCK: usize = 1 << 16;
/// Independent generators per block.
const LANES: usize = 16;
/// Elements per step of the generators: two 15-bit fractions per 32-bit output.
const CHUNK: usize = 2 * LANES;
/// Largest fixed-point magnitude: level 255 with 15 fractional bits.
const TOP: u32 = 255 << 15;
/// Adding `2^23` to a float in `[0, 2^23)` leaves its nearest integer in the low mantissa bits.
const ROUND_MAGIC: f32 = 8_388_608.0;

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

    /// [`Codec::encode`] with the loops compiled for `kernel`.
    fn encode_with(
        &mut self,
        kernel: Kernel,
        grad: &[f32],
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let max_bits = grad
            .par_chunks(BLOCK)
            .map(|block| kernel.max_abs_bits(block))
            .reduce(|| 0, u32::max);
        if max_bits >= f32::INFINITY.to_bits() {
            let (index, value) = first_non_finite(grad).expect("a non-finite element");
            return Err(CodecError::NonFinite {
                codec: "qsgd8",
                index,
                value,
            });
        }
        let max = f32::from_bits(max_bits);
        let scaling = Scaling::new(max);
        let n = grad.len();
        // Every byte is written below: a reused buffer of the right size is not zeroed first.
        out.resize(Self::payload_len(n), 0);
        out[..4].copy_from_slice(&(max / 255.0).to_le_bytes());
        let (levels, signs) = out[4..].split_at_mut(n);

        let mut base = ChaCha8Rng::seed_from_u64(self.seed);
        base.set_stream(self.calls);
        self.calls += 1;

        grad.par_chunks(BLOCK)
            .zip(levels.par_chunks_mut(BLOCK))
            .zip(signs.par_chunks_mut(BLOCK / 8))
            .enumerate()
            .for_each(|(block, ((g, l), s))| {
                let lanes = Lanes::for_block(&base, block as u64);
                kernel.encode_block(g, l, s, scaling, lanes);
            });
        Ok(())
    }
}

impl Codec for Qsgd8 {
    fn spec(&self) -> CodecSpec {
        CodecSpec::Qsgd8
    }

    fn encode(&mut self, grad: &[f32], out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.encode_with(Kernel::detect(), grad, out)
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

/// `y = (|g| * pre) * mul` maps `max|g|` to `TOP` (the multiplication by a power of two
/// `pre` keeps `mul` finite when `max|g|` is tiny).
#[derive(Clone, Copy, Debug)]
struct Scaling {
    pre: f32,
    mul: f32,
}

impl Scaling {
    fn new(max: f32) -> Self {
        if max == 0.0 {
            return Scaling { pre: 1.0, mul: 0.0 };
        }
        // 2^64 when `max < 2^-60`: `TOP / max` would overflow for subnormal `max`.
        let pre = if max < f32::from_bits(0x2180_0000) {
            f32::from_bits(0x5f80_0000)
        } else {
            1.0
        };
        let top = TOP as f32;
        let mut mul = top / (max * pre);
        // Round up so the largest magnitude lands exactly on level 255 (clamped to `TOP`).
        while (max * pre) * mul < top {
            mul = mul.next_up();
        }
        Scaling { pre, mul }
    }
}

/// [`LANES`] xoshiro128++ generators, structure of arrays so the step vectorises.
#[derive(Clone, Debug)]
struct Lanes {
    s: [[u32; LANES]; 4],
}

impl Lanes {
    /// The generators of block `block` for the encoding whose ChaCha8 stream is `base`.
    fn for_block(base: &ChaCha8Rng, block: u64) -> Self {
        let mut rng = base.clone();
        rng.set_word_pos(u128::from(block) * (4 * LANES) as u128);
        let mut words = [0u32; 4 * LANES];
        rng.fill(&mut words[..]);
        let mut s = [[0u32; LANES]; 4];
        for (lane, w) in words.chunks_exact(4).enumerate() {
            for (word, &v) in s.iter_mut().zip(w) {
                word[lane] = v;
            }
            // xoshiro's one forbidden state (probability 2^-128).
            if w.iter().all(|&v| v == 0) {
                s[0][lane] = 1;
            }
        }
        Lanes { s }
    }

    /// One step of every lane: its 32-bit output.
    #[inline(always)]
    fn next(&mut self) -> [u32; LANES] {
        let [s0, s1, s2, s3] = &mut self.s;
        let mut out = [0u32; LANES];
        for i in 0..LANES {
            out[i] = s0[i].wrapping_add(s3[i]).rotate_left(7).wrapping_add(s0[i]);
            let t = s1[i] << 9;
            s2[i] ^= s0[i];
            s3[i] ^= s1[i];
            s1[i] ^= s2[i];
            s0[i] ^= s3[i];
            s2[i] ^= t;
            s3[i] = s3[i].rotate_left(11);
        }
        out
    }
}

/// Which compilation of the encoding loops runs; all give the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// Baseline instructions of the target (SSE2 on x86-64).
    Portable,
    /// The same code compiled with AVX2 (x86-64 only, when the CPU has it).
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Kernel::Avx2;
        }
        Kernel::Portable
    }

    /// Every kernel this CPU runs (for tests).
    #[cfg(test)]
    fn available() -> Vec<Self> {
        match Kernel::detect() {
            Kernel::Portable => vec![Kernel::Portable],
            other => vec![Kernel::Portable, other],
        }
    }

    /// The largest `|g|` as bits (`>= f32::INFINITY.to_bits()` when a value is not finite).
    fn max_abs_bits(self, grad: &[f32]) -> u32 {
        match self {
            Kernel::Portable => max_abs_bits(grad, |_| {}),
            // SAFETY: this module only makes an `Avx2` after `is_x86_feature_detected!("avx2")`.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::max_abs_bits(grad) },
        }
    }

    fn encode_block(
        self,
        grad: &[f32],
        levels: &mut [u8],
        signs: &mut [u8],
        scaling: Scaling,
        lanes: Lanes,
    ) {
        match self {
            Kernel::Portable => encode_block(grad, levels, signs, scaling, lanes, |_| {}),
            // SAFETY: this module only makes an `Avx2` after `is_x86_feature_detected!("avx2")`.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::encode_block(grad, levels, signs, scaling, lanes) },
        }
    }
}

/// The portable loops compiled with AVX2 enabled, plus software prefetching (a hint with no
/// effect on results).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};

    use super::{Lanes, Scaling};

    #[target_feature(enable = "avx2")]
    pub(super) fn max_abs_bits(grad: &[f32]) -> u32 {
        super::max_abs_bits(grad, |p| _mm_prefetch::<_MM_HINT_T0>(p.cast()))
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn encode_block(
        grad: &[f32],
        levels: &mut [u8],
        signs: &mut [u8],
        scaling: Scaling,
        lanes: Lanes,
    ) {
        super::encode_block(grad, levels, signs, scaling, lanes, |p| {
            _mm_prefetch::<_MM_HINT_T0>(p.cast())
        })
    }
}

/// How far ahead of the chunk being processed `prefetch` is asked for the gradient (2 KiB):
/// one core alone does not keep enough cache-line reads in flight to stream from memory at
/// full speed (measured: the encoding pass went from about 100 ms to 60 ms at VGG11 size).
const PREFETCH_AHEAD: usize = 512;

/// Calls `prefetch` on each cache line of the [`CHUNK`] elements starting
/// [`PREFETCH_AHEAD`] after `grad[index]` (an address that may be past the end: a prefetch
/// never faults).
#[inline(always)]
fn prefetch_ahead(grad: &[f32], index: usize, prefetch: &impl Fn(*const f32)) {
    let p = grad.as_ptr().wrapping_add(index + PREFETCH_AHEAD);
    prefetch(p);
    prefetch(p.wrapping_add(16));
}

/// The largest `|g|` as bits: finite magnitudes order like their bits, and infinities and
/// NaNs (with the sign cleared) have larger bits than any finite value.
#[inline(always)]
fn max_abs_bits(grad: &[f32], prefetch: impl Fn(*const f32)) -> u32 {
    // `i32` rather than `u32`: the values fit, and signed maxima are cheaper without SSE4.1.
    let max = |m: i32, g: &f32| m.max((g.to_bits() & 0x7fff_ffff) as i32);
    let (chunks, tail) = grad.as_chunks::<CHUNK>();
    let mut m = tail.iter().fold(0, max);
    for (i, chunk) in chunks.iter().enumerate() {
        prefetch_ahead(grad, i * CHUNK, &prefetch);
        m = chunk.iter().fold(m, max);
    }
    m as u32
}

/// Encodes one block (at most [`BLOCK`] elements); `signs` is its `ceil(len / 8)` sign bytes.
#[inline(always)]
fn encode_block(
    grad: &[f32],
    levels: &mut [u8],
    signs: &mut [u8],
    scaling: Scaling,
    mut lanes: Lanes,
    prefetch: impl Fn(*const f32),
) {
    let (g_chunks, g_tail) = grad.as_chunks::<CHUNK>();
    let whole = g_chunks.len();
    // Split the outputs where the input's whole chunks end: the last partial chunk may
    // still have `CHUNK / 8` sign bytes.
    let (l_whole, l_tail) = levels.split_at_mut(whole * CHUNK);
    let (s_whole, s_tail) = signs.split_at_mut(whole * (CHUNK / 8));
    let l_chunks = l_whole.as_chunks_mut::<CHUNK>().0;
    let s_chunks = s_whole.as_chunks_mut::<{ CHUNK / 8 }>().0;
    for (i, ((g, l), s)) in g_chunks.iter().zip(l_chunks).zip(s_chunks).enumerate() {
        prefetch_ahead(grad, i * CHUNK, &prefetch);
        encode_chunk(g, l, s, scaling, &mut lanes);
    }
    if !g_tail.is_empty() {
        let mut g = [0.0f32; CHUNK];
        g[..g_tail.len()].copy_from_slice(g_tail);
        let (mut l, mut s) = ([0u8; CHUNK], [0u8; CHUNK / 8]);
        encode_chunk(&g, &mut l, &mut s, scaling, &mut lanes);
        l_tail.copy_from_slice(&l[..l_tail.len()]);
        s_tail.copy_from_slice(&s[..s_tail.len()]);
    }
}

/// Encodes [`CHUNK`] elements with one step of the generators (see the module docs).
#[inline(always)]
fn encode_chunk(
    grad: &[f32; CHUNK],
    levels: &mut [u8; CHUNK],
    signs: &mut [u8; CHUNK / 8],
    scaling: Scaling,
    lanes: &mut Lanes,
) {
    let random = lanes.next();
    let mut negative = [0u8; CHUNK];
    let (low, high) = grad.split_at(LANES);
    let (low_levels, high_levels) = levels.split_at_mut(LANES);
    let (low_negative, high_negative) = negative.split_at_mut(LANES);
    for i in 0..LANES {
        (low_levels[i], low_negative[i]) = quantise(low[i], random[i] & 0x7fff, scaling);
    }
    for i in 0..LANES {
        (high_levels[i], high_negative[i]) = quantise(high[i], random[i] >> 17, scaling);
    }
    for (byte, flags) in signs.iter_mut().zip(negative.as_chunks::<8>().0) {
        *byte = pack_bits(u64::from_le_bytes(*flags));
    }
}

/// The level of `g` given its 15 random bits `k`, and 1 if `g` is negative.
#[inline(always)]
fn quantise(g: f32, k: u32, scaling: Scaling) -> (u8, u8) {
    let y = (g.abs() * scaling.pre) * scaling.mul;
    // y is in [0, 2^23), so the sum's low mantissa bits are round(y).
    let t = ((y + ROUND_MAGIC).to_bits() - ROUND_MAGIC.to_bits()).min(TOP);
    (((t + k) >> 15) as u8, u8::from(g < 0.0))
}

/// Bit `j` of the result is byte `j` of `flags`, whose bytes are each 0 or 1: the
/// multiplication puts byte `j` at bit `56 + j`, and no two partial products overlap.
#[inline(always)]
fn pack_bits(flags: u64) -> u8 {
    (flags.wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8
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

    /// Element `o` of block `b` rounded as the module docs say, one element at a time.
    fn reference_payload(seed: u64, calls: u64, grad: &[f32]) -> Vec<u8> {
        let max = grad.iter().fold(0.0f32, |m, g| m.max(g.abs()));
        let scaling = Scaling::new(max);
        let n = grad.len();
        let mut payload = vec![0u8; Qsgd8::payload_len(n)];
        payload[..4].copy_from_slice(&(max / 255.0).to_le_bytes());
        let mut base = ChaCha8Rng::seed_from_u64(seed);
        base.set_stream(calls);
        for (b, block) in grad.chunks(BLOCK).enumerate() {
            let mut lanes = Lanes::for_block(&base, b as u64);
            let mut words = [0u32; LANES];
            for (o, &g) in block.iter().enumerate() {
                if o % CHUNK == 0 {
                    words = lanes.next();
                }
                let w = words[o % LANES];
                let k = if o % CHUNK < LANES {
                    w & 0x7fff
                } else {
                    w >> 17
                };
                let y = (g.abs() * scaling.pre) * scaling.mul;
                let t = (y.round_ties_even() as u32).min(TOP);
                let i = b * BLOCK + o;
                payload[4 + i] = u8::try_from((t + k) >> 15).unwrap();
                if g < 0.0 {
                    payload[4 + n + i / 8] |= 1 << (i % 8);
                }
            }
        }
        payload
    }

    /// Values over many magnitudes, with zeros of both signs, in random order.
    fn awkward(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|i| match i % 7 {
                0 => 0.0,
                1 => -0.0,
                2 => rng.random_range(-1.0f32..1.0) * 1e-30,
                _ => rng.random_range(-1.0f32..1.0) * 3.0,
            })
            .collect()
    }

    #[test]
    fn every_kernel_gives_the_reference_bytes() {
        let kernels = Kernel::available();
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            assert!(kernels.contains(&Kernel::Avx2));
            assert_eq!(Kernel::detect(), Kernel::Avx2);
        }
        for n in [0, 1, 7, 8, 31, 32, 33, 1000, BLOCK, 2 * BLOCK + 45] {
            for grad in [sample(n, n as u64), awkward(n, 3)] {
                for &kernel in &kernels {
                    let mut codec = Qsgd8::new(9);
                    for calls in 0..2 {
                        let mut payload = vec![0xaa; 3];
                        codec.encode_with(kernel, &grad, &mut payload).unwrap();
                        assert!(
                            payload == reference_payload(9, calls, &grad),
                            "{kernel:?}, {n} elements, encoding {calls}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn same_bytes_on_any_number_of_threads() {
        let grad = sample(5 * BLOCK + 123, 8);
        let encode = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut codec = Qsgd8::new(17);
            let mut payloads = vec![Vec::new(), Vec::new()];
            pool.install(|| {
                for p in &mut payloads {
                    codec.encode(&grad, p).unwrap();
                }
            });
            payloads
        };
        let one = encode(1);
        assert_ne!(one[0], one[1]);
        for threads in [2, 3, 8] {
            assert!(encode(threads) == one, "{threads} threads");
        }
    }

    #[test]
    fn generator_lanes_are_xoshiro128_plus_plus() {
        fn scalar(s: &mut [u32; 4]) -> u32 {
            let out = s[0].wrapping_add(s[3]).rotate_left(7).wrapping_add(s[0]);
            let t = s[1] << 9;
            s[2] ^= s[0];
            s[3] ^= s[1];
            s[1] ^= s[2];
            s[0] ^= s[3];
            s[2] ^= t;
            s[3] = s[3].rotate_left(11);
            out
        }
        let base = ChaCha8Rng::seed_from_u64(5);
        let mut lanes = Lanes::for_block(&base, 3);
        let mut states: Vec<[u32; 4]> = (0..LANES)
            .map(|l| std::array::from_fn(|w| lanes.s[w][l]))
            .collect();
        // Seeded from ChaCha8 words 64 * 3 .. 64 * 4, four consecutive words per lane.
        let mut rng = base.clone();
        rng.set_word_pos(3 * 64);
        let words: Vec<u32> = (0..64).map(|_| rng.random::<u32>()).collect();
        assert_eq!(states.concat(), words);
        for _ in 0..100 {
            let out = lanes.next();
            for (l, state) in states.iter_mut().enumerate() {
                assert_eq!(out[l], scalar(state));
            }
        }
    }

    /// Elements exactly a quarter level above a level: each position in a chunk (lane and
    /// half-word) must round up a quarter of the time, and the two elements sharing a lane's
    /// word must round up together a sixteenth of the time (independent bits).
    #[test]
    fn every_position_rounds_up_with_the_right_frequency() {
        let n = 8 * BLOCK;
        let mut grad = vec![10.25f32; n];
        grad[0] = 255.0;
        let mut payload = Vec::new();
        Qsgd8::new(23).encode(&grad, &mut payload).unwrap();
        let levels = &payload[4..4 + n];
        let mut up = [0usize; CHUNK];
        let mut both = [0usize; LANES];
        for chunk in levels[CHUNK..].chunks_exact(CHUNK) {
            for (j, &l) in chunk.iter().enumerate() {
                assert!(l == 10 || l == 11, "{l}");
                up[j] += usize::from(l == 11);
            }
            for (j, b) in both.iter_mut().enumerate() {
                *b += usize::from(chunk[j] == 11 && chunk[j + LANES] == 11);
            }
        }
        let trials = (n / CHUNK - 1) as f64;
        let check = |count: usize, p: f64, what: &str| {
            let sd = (trials * p * (1.0 - p)).sqrt();
            let err = (count as f64 - trials * p).abs();
            assert!(
                err < 6.0 * sd,
                "{what}: {count} of {trials}, expected {}",
                trials * p
            );
        };
        for (j, &u) in up.iter().enumerate() {
            check(u, 0.25, &format!("position {j}"));
        }
        for (j, &b) in both.iter().enumerate() {
            check(b, 1.0 / 16.0, &format!("lane {j}"));
        }
    }

    /// Levels are the floor or ceiling of `|g| / scale` even for extreme scales, and the
    /// largest magnitude is level 255.
    #[test]
    fn extreme_scales_round_to_a_neighbouring_level() {
        for max in [
            f32::MAX,
            1e20,
            1.0,
            1e-30,
            2e-32,
            1e-37,
            1e-40,
            f32::from_bits(1),
        ] {
            let mut grad: Vec<f32> = sample(3000, 6).iter().map(|g| g / 0.05 * max).collect();
            grad[17] = -max;
            for kernel in Kernel::available() {
                let mut payload = Vec::new();
                Qsgd8::new(2)
                    .encode_with(kernel, &grad, &mut payload)
                    .unwrap();
                let levels = &payload[4..4 + grad.len()];
                assert_eq!(levels[17], 255, "max {max:e}");
                for (g, &l) in grad.iter().zip(levels) {
                    let x = f64::from(g.abs()) / f64::from(max) * 255.0;
                    // The fixed point and the `f32` arithmetic are off by far less than this.
                    let slack = 1e-4;
                    let l = f64::from(l);
                    assert!(
                        (x - slack).floor() <= l && l <= (x + slack).ceil(),
                        "max {max:e}, {kernel:?}: {g:e} -> level {l}, x = {x}"
                    );
                }
                let sign = payload[4 + grad.len() + 17 / 8] >> (17 % 8) & 1;
                assert_eq!(sign, 1);
            }
        }
    }

    #[test]
    fn negative_zero_is_not_negative() {
        let mut payload = Vec::new();
        Qsgd8::new(1)
            .encode(&[-0.0, 1.0, -0.0, -1.0], &mut payload)
            .unwrap();
        assert_eq!(payload[4..8], [0, 255, 0, 255]);
        assert_eq!(payload[8], 0b1000);
    }

    #[test]
    fn first_non_finite_element_is_reported() {
        let mut grad = sample(3 * BLOCK, 1);
        grad[BLOCK + 5] = f32::NEG_INFINITY;
        grad[2 * BLOCK] = f32::NAN;
        for kernel in Kernel::available() {
            let err = Qsgd8::new(1)
                .encode_with(kernel, &grad, &mut Vec::new())
                .unwrap_err();
            assert!(
                matches!(err, CodecError::NonFinite { index, .. } if index == BLOCK + 5),
                "{err:?}"
            );
        }
    }

    #[test]
    fn pack_bits_packs_every_byte() {
        for b in 0..=255u8 {
            let flags: [u8; 8] = std::array::from_fn(|j| (b >> j) & 1);
            assert_eq!(pack_bits(u64::from_le_bytes(flags)), b);
        }
    }
}
