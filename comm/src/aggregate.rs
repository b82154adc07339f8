//! Robust aggregation: how a round combines the contributions it collected when a plain
//! mean is not trusted (`--aggregation`, `--clip-norm`).
//!
//! [`Aggregation`] is the closed set of rules (`mean`, `median`, `trimmed-mean:K`);
//! [`Aggregator`] applies one, optionally after scaling each contribution to an L2 norm
//! of at most `clip_norm`. Everything is deterministic: the same inputs in rank order give
//! the same bits on every peer, whatever the thread count, because
//! - every output element is computed from that element of the inputs alone, by a fixed
//!   sequence of operations (a sorting network over the total order of `f32`, then a sum
//!   in ascending order);
//! - norms are summed in `f64` per fixed block of [`CACHE_BLOCK`] elements, and the block
//!   sums are added in block order on one thread.
//!
//! The work streams: each cache-sized block of every contribution is decoded into a
//! per-thread scratch (kept across rounds), clipped, sorted across contributions and
//! reduced in place, so no gradient-sized buffer is allocated beyond the output.

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;

use crate::average::{self, CACHE_BLOCK, PAR_BLOCK};

/// The accepted spellings of an aggregation, quoted in parse errors.
pub const VALID_FORMS: &str =
    "`mean`, `median`, `trimmed-mean:K` with K >= 1 (e.g. `trimmed-mean:1`)";

/// How a round combines its contributions, coordinate by coordinate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Aggregation {
    /// The arithmetic mean (the fast streaming path without clipping); one bad
    /// contribution moves it arbitrarily.
    #[default]
    Mean,
    /// The median of each coordinate (mean of the two middle values for an even count):
    /// robust to fewer than half of the contributions being bad.
    Median,
    /// The mean of each coordinate after dropping the `K` lowest and `K` highest values:
    /// robust to up to `K` bad contributions. With `n` contributors, `K` is clamped to
    /// `(n - 1) / 2` (at least one value is kept; at the bound it is the median).
    TrimmedMean(u32),
}

impl Aggregation {
    /// Values dropped at each end of a coordinate with `contributors` values: 0 for the
    /// mean, `(n - 1) / 2` for the median, `min(K, (n - 1) / 2)` for a trimmed mean.
    pub fn trim(self, contributors: usize) -> usize {
        let max = contributors.saturating_sub(1) / 2;
        match self {
            Aggregation::Mean => 0,
            Aggregation::Median => max,
            Aggregation::TrimmedMean(k) => (k as usize).min(max),
        }
    }

    /// Whether this is the plain mean, which needs no sorting.
    pub fn is_mean(self) -> bool {
        self == Aggregation::Mean
    }
}

impl fmt::Display for Aggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Aggregation::Mean => f.write_str("mean"),
            Aggregation::Median => f.write_str("median"),
            Aggregation::TrimmedMean(k) => write!(f, "trimmed-mean:{k}"),
        }
    }
}

impl FromStr for Aggregation {
    type Err = AggregationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse_error = |reason: &str| AggregationError::Parse {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        match s.trim() {
            "mean" => Ok(Aggregation::Mean),
            "median" => Ok(Aggregation::Median),
            other => {
                let Some(k) = other.strip_prefix("trimmed-mean:") else {
                    return Err(parse_error("unknown aggregation"));
                };
                match k.trim().parse::<u32>() {
                    Ok(0) => Err(parse_error("K must be at least 1 (K = 0 is `mean`)")),
                    Ok(k) => Ok(Aggregation::TrimmedMean(k)),
                    Err(_) => Err(parse_error("K is not a whole number")),
                }
            }
        }
    }
}

/// Written as its configuration string (`median`, `trimmed-mean:2`), e.g. in study files.
impl serde::Serialize for Aggregation {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Aggregation {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why an aggregation setting is unusable; typed so the command line can name the flag.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AggregationError {
    /// A configuration string does not name an aggregation.
    #[error("invalid aggregation `{input}` ({reason}); valid forms: {VALID_FORMS}")]
    Parse {
        /// The string given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A clipping norm that is not a positive finite number.
    #[error("invalid clipping norm {0}: must be a finite number > 0")]
    ClipNorm(f32),
}

/// Checks a clipping norm (`--clip-norm`): finite and positive.
pub fn check_clip_norm(clip_norm: f32) -> Result<f32, AggregationError> {
    if clip_norm.is_finite() && clip_norm > 0.0 {
        Ok(clip_norm)
    } else {
        Err(AggregationError::ClipNorm(clip_norm))
    }
}

/// The factor that scales a vector of L2 norm `norm` to at most `clip_norm` (1 when it
/// is already within, or when the norm is not finite: such a gradient is for the
/// validation to reject, and scaling it would hide nothing).
pub fn clip_scale(norm: f64, clip_norm: f32) -> f32 {
    let c = f64::from(clip_norm);
    if norm.is_finite() && norm > c {
        (c / norm) as f32
    } else {
        1.0
    }
}

/// The L2 norm of `values`, summed in `f64` per [`CACHE_BLOCK`] elements and the block
/// sums in order: the definition the parallel pass matches bit for bit.
pub fn reference_norm(values: &[f32]) -> f64 {
    values
        .chunks(CACHE_BLOCK)
        .map(block_square_sum)
        .fold(0.0, |a, b| a + b)
        .sqrt()
}

fn block_square_sum(block: &[f32]) -> f64 {
    block.iter().map(|&x| f64::from(x) * f64::from(x)).sum()
}

/// The definition of every rule, element by element on one thread: each input is
/// clipped (when `clip_norm` is given), then each coordinate's values are sorted by
/// [`f32::total_cmp`], `trim` are dropped at each end and the rest summed in ascending
/// order and divided by their count (the mean sums in rank order instead). The reference
/// that [`Aggregator::aggregate`] must match bit for bit.
pub fn reference(aggregation: Aggregation, clip_norm: Option<f32>, inputs: &[&[f32]]) -> Vec<f32> {
    let clipped: Vec<Vec<f32>> = inputs
        .iter()
        .map(|input| match clip_norm {
            Some(c) => {
                let scale = clip_scale(reference_norm(input), c);
                input.iter().map(|x| x * scale).collect()
            }
            None => input.to_vec(),
        })
        .collect();
    let refs: Vec<&[f32]> = clipped.iter().map(Vec::as_slice).collect();
    if aggregation.is_mean() {
        return average::reference_mean(&refs);
    }
    let Some(first) = refs.first() else {
        return Vec::new();
    };
    let n = refs.len();
    let trim = aggregation.trim(n);
    let kept = n - 2 * trim;
    (0..first.len())
        .map(|i| {
            let mut column: Vec<f32> = refs.iter().map(|r| r[i]).collect();
            column.sort_by(f32::total_cmp);
            let sum = column[trim + 1..n - trim]
                .iter()
                .fold(column[trim], |acc, x| acc + x);
            if kept > 1 { sum / kept as f32 } else { sum }
        })
        .collect()
}

/// Applies an [`Aggregation`] (with optional clipping) to streamed contributions, keeping
/// its bookkeeping (the sorting network, the norm partial sums) across rounds so a round
/// allocates nothing after the first.
#[derive(Debug, Default)]
pub struct Aggregator {
    /// Compare-exchange pairs sorting `network_size` values.
    network: Vec<(usize, usize)>,
    network_size: usize,
    /// Per-block squared norms of each contribution, block-major.
    partials: Vec<f64>,
    /// Each contribution's clipping factor.
    scales: Vec<f32>,
}

/// Elements of each contribution sorted together: 4 KiB per contribution, so the blocks
/// of a few contributions stay in L1 while the network runs over them.
const LANE_BLOCK: usize = 1 << 10;

thread_local! {
    /// Each thread's decoded blocks (one [`LANE_BLOCK`] per contribution).
    static LANES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl Aggregator {
    /// An aggregator with nothing allocated yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes the aggregate of `sources` contributions into `out`. `fill(source, start,
    /// block)` must assign elements `start .. start + block.len()` of contribution
    /// `source` (in rank order) to `block`; it is called for every block, twice when
    /// clipping (once for the norms). With no sources `out` is zeroed.
    ///
    /// The result is [`reference`] bit for bit, whatever the number of threads.
    pub fn aggregate(
        &mut self,
        aggregation: Aggregation,
        clip_norm: Option<f32>,
        sources: usize,
        out: &mut [f32],
        fill: impl Fn(usize, usize, &mut [f32]) + Sync,
    ) {
        if sources == 0 {
            out.fill(0.0);
            return;
        }
        self.scales.clear();
        self.scales.resize(sources, 1.0);
        if let Some(c) = clip_norm {
            self.clip_scales(c, sources, out.len(), &fill);
        }
        if !aggregation.is_mean() && self.network_size != sources {
            self.network = sorting_network(sources);
            self.network_size = sources;
        }
        let trim = aggregation.trim(sources);
        let network: &[(usize, usize)] = if aggregation.is_mean() {
            &[]
        } else {
            &self.network
        };
        let scales = &self.scales;
        average::for_each_block(out, |start, block| {
            with_lanes(sources * LANE_BLOCK, |lanes| {
                for (i, block) in block.chunks_mut(LANE_BLOCK).enumerate() {
                    let start = start + i * LANE_BLOCK;
                    let len = block.len();
                    let lanes = &mut lanes[..sources * len];
                    for (source, lane) in lanes.chunks_exact_mut(len).enumerate() {
                        fill(source, start, lane);
                        let scale = scales[source];
                        if scale != 1.0 {
                            lane.iter_mut().for_each(|x| *x *= scale);
                        }
                    }
                    if aggregation.is_mean() {
                        reduce(lanes, len, 0, sources, block);
                    } else {
                        sort_lanes(lanes, len, network, trim..sources - trim);
                        reduce(lanes, len, trim, sources - trim, block);
                    }
                }
            })
        });
    }

    /// Computes every contribution's clipping factor from its norm.
    fn clip_scales(
        &mut self,
        clip_norm: f32,
        sources: usize,
        len: usize,
        fill: &(impl Fn(usize, usize, &mut [f32]) + Sync),
    ) {
        let blocks = len.div_ceil(CACHE_BLOCK);
        self.partials.clear();
        self.partials.resize(blocks * sources, 0.0);
        self.partials
            .par_chunks_mut(sources)
            .enumerate()
            .with_min_len(PAR_BLOCK / CACHE_BLOCK)
            .for_each(|(b, partial)| {
                let start = b * CACHE_BLOCK;
                let block_len = CACHE_BLOCK.min(len - start);
                with_lanes(CACHE_BLOCK, |lane| {
                    let lane = &mut lane[..block_len];
                    for (source, p) in partial.iter_mut().enumerate() {
                        fill(source, start, lane);
                        *p = block_square_sum(lane);
                    }
                })
            });
        for (source, scale) in self.scales.iter_mut().enumerate() {
            let sum = (0..blocks)
                .map(|b| self.partials[b * sources + source])
                .fold(0.0, |a, b| a + b);
            *scale = clip_scale(sum.sqrt(), clip_norm);
        }
    }
}

/// Aggregates dense inputs of `out.len()` elements each (tests, benchmarks).
///
/// # Panics
/// If an input's length differs from `out.len()`.
pub fn aggregate_slices(
    aggregator: &mut Aggregator,
    aggregation: Aggregation,
    clip_norm: Option<f32>,
    inputs: &[&[f32]],
    out: &mut [f32],
) {
    for (i, input) in inputs.iter().enumerate() {
        assert_eq!(input.len(), out.len(), "input {i} has the wrong length");
    }
    aggregator.aggregate(
        aggregation,
        clip_norm,
        inputs.len(),
        out,
        |s, start, block| block.copy_from_slice(&inputs[s][start..start + block.len()]),
    );
}

/// Runs `f` on this thread's scratch of at least `len` elements (a fresh buffer if the
/// scratch is somehow in use already).
fn with_lanes<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    LANES.with(|cell| match cell.try_borrow_mut() {
        Ok(mut lanes) => {
            if lanes.len() < len {
                lanes.resize(len, 0.0);
            }
            f(&mut lanes[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// `block[e] = (lane[from][e] + ... + lane[to - 1][e]) / (to - from)`, summed in lane order.
fn reduce(lanes: &[f32], len: usize, from: usize, to: usize, block: &mut [f32]) {
    block.copy_from_slice(&lanes[from * len..(from + 1) * len]);
    for lane in lanes[(from + 1) * len..to * len].chunks_exact(len) {
        block.iter_mut().zip(lane).for_each(|(o, x)| *o += x);
    }
    let count = to - from;
    if count > 1 {
        let n = count as f32;
        block.iter_mut().for_each(|x| *x /= n);
    }
}

/// Sorts each coordinate across the lanes (`lanes[s * len + e]` is contribution `s`,
/// element `e`) by [`f32::total_cmp`], applying the network's compare-exchanges to whole
/// lanes at once on integer keys (which the compiler vectorises). Only the lanes in
/// `keep` are turned back into `f32`s (the others are left as keys).
fn sort_lanes(
    lanes: &mut [f32],
    len: usize,
    network: &[(usize, usize)],
    keep: std::ops::Range<usize>,
) {
    let keys: &mut [i32] = bytemuck::cast_slice_mut(lanes);
    keys.iter_mut().for_each(|k| *k = total_order_key(*k));
    for &(i, j) in network {
        let (low, high) = keys.split_at_mut(j * len);
        let a = &mut low[i * len..(i + 1) * len];
        let b = &mut high[..len];
        for (x, y) in a.iter_mut().zip(b.iter_mut()) {
            let (p, q) = (*x, *y);
            *x = p.min(q);
            *y = p.max(q);
        }
    }
    keys[keep.start * len..keep.end * len]
        .iter_mut()
        .for_each(|k| *k = total_order_key(*k));
}

/// The bits of an `f32` as an `i32` ordered like [`f32::total_cmp`]; applying it twice
/// gives the bits back (the sign bit is unchanged, so the mask is the same).
#[inline]
fn total_order_key(bits: i32) -> i32 {
    bits ^ ((((bits >> 31) as u32) >> 1) as i32)
}

/// Batcher's odd-even merge sort for `n` values as compare-exchange pairs `(i, j)`, `i <
/// j`, each leaving the smaller value at `i`: the network for the next power of two with
/// the pairs that touch padding dropped (padding acts as +infinity, never moved).
pub fn sorting_network(n: usize) -> Vec<(usize, usize)> {
    let size = n.next_power_of_two();
    let mut pairs = Vec::new();
    let mut p = 1;
    while p < size {
        let mut k = p;
        while k >= 1 {
            let mut j = k % p;
            while j + k < size {
                for i in 0..k.min(size - j - k) {
                    let (a, b) = (i + j, i + j + k);
                    if a / (2 * p) == b / (2 * p) && b < n {
                        pairs.push((a, b));
                    }
                }
                j += 2 * k;
            }
            k /= 2;
        }
        p *= 2;
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn run(aggregation: Aggregation, clip: Option<f32>, inputs: &[Vec<f32>]) -> Vec<f32> {
        let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
        let mut out = vec![f32::NAN; inputs.first().map_or(0, Vec::len)];
        aggregate_slices(&mut Aggregator::new(), aggregation, clip, &refs, &mut out);
        out
    }

    fn check(aggregation: Aggregation, clip: Option<f32>, inputs: &[Vec<f32>]) -> Vec<f32> {
        let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
        let out = run(aggregation, clip, inputs);
        let expected = reference(aggregation, clip, &refs);
        assert_eq!(bits(&out), bits(&expected), "{aggregation} clip {clip:?}");
        out
    }

    fn random_inputs(seed: u64, n: usize, len: usize) -> Vec<Vec<f32>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect())
            .collect()
    }

    #[test]
    fn parses_and_displays_every_form() {
        for (text, a) in [
            ("mean", Aggregation::Mean),
            ("median", Aggregation::Median),
            ("trimmed-mean:1", Aggregation::TrimmedMean(1)),
            ("trimmed-mean:12", Aggregation::TrimmedMean(12)),
        ] {
            assert_eq!(text.parse::<Aggregation>(), Ok(a));
            assert_eq!(a.to_string(), text);
        }
        for bad in [
            "",
            "avg",
            "Median",
            "trimmed-mean",
            "trimmed-mean:",
            "trimmed-mean:0",
            "trimmed-mean:-1",
            "trimmed-mean:1.5",
            "trimmed-mean:99999999999",
        ] {
            let e = bad.parse::<Aggregation>().unwrap_err();
            assert!(e.to_string().contains("trimmed-mean:K"), "{bad}: {e}");
        }
        assert_eq!(check_clip_norm(2.5), Ok(2.5));
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert!(check_clip_norm(bad).is_err());
        }
    }

    #[test]
    fn trim_is_clamped_to_keep_at_least_one_value() {
        let t = |a: Aggregation, n| a.trim(n);
        assert_eq!(t(Aggregation::Median, 0), 0);
        assert_eq!(t(Aggregation::Median, 1), 0);
        assert_eq!(t(Aggregation::Median, 4), 1);
        assert_eq!(t(Aggregation::Median, 5), 2);
        assert_eq!(t(Aggregation::TrimmedMean(1), 4), 1);
        assert_eq!(t(Aggregation::TrimmedMean(2), 4), 1);
        assert_eq!(t(Aggregation::TrimmedMean(2), 5), 2);
        assert_eq!(t(Aggregation::TrimmedMean(9), 2), 0);
        assert_eq!(t(Aggregation::Mean, 9), 0);
    }

    #[test]
    fn sorting_networks_sort_every_binary_input() {
        // The 0-1 principle: a network that sorts every 0/1 input sorts everything.
        for n in 1..=14usize {
            let net = sorting_network(n);
            for mask in 0u32..(1 << n) {
                let mut v: Vec<u8> = (0..n).map(|i| ((mask >> i) & 1) as u8).collect();
                for &(i, j) in &net {
                    assert!(i < j && j < n);
                    if v[i] > v[j] {
                        v.swap(i, j);
                    }
                }
                assert!(v.windows(2).all(|w| w[0] <= w[1]), "n {n} mask {mask:b}");
            }
        }
        for n in [17, 31, 64, 100] {
            let net = sorting_network(n);
            let mut rng = ChaCha8Rng::seed_from_u64(n as u64);
            for _ in 0..200 {
                let mut v: Vec<u32> = (0..n).map(|_| rng.random_range(0..10)).collect();
                for &(i, j) in &net {
                    if v[i] > v[j] {
                        v.swap(i, j);
                    }
                }
                assert!(v.windows(2).all(|w| w[0] <= w[1]));
            }
        }
    }

    #[test]
    fn known_values_median_and_trimmed_mean() {
        let inputs = vec![
            vec![1.0, -5.0, 2.0],
            vec![100.0, 1.0, 2.0],
            vec![3.0, 0.0, -7.0],
            vec![2.0, 1.0, 2.0],
        ];
        // Even count: the mean of the two middle values; ties kept.
        assert_eq!(check(Aggregation::Median, None, &inputs), [2.5, 0.5, 2.0]);
        assert_eq!(
            check(Aggregation::TrimmedMean(1), None, &inputs),
            [2.5, 0.5, 2.0]
        );
        let odd = &inputs[..3];
        assert_eq!(check(Aggregation::Median, None, odd), [3.0, 0.0, 2.0]);
        assert_eq!(
            check(Aggregation::TrimmedMean(5), None, odd),
            [3.0, 0.0, 2.0]
        );
        // One contributor: every rule is the identity.
        for a in [Aggregation::Median, Aggregation::TrimmedMean(3)] {
            assert_eq!(check(a, None, &inputs[..1]), inputs[0]);
        }
        // No contributor: zeros.
        let mut out = [f32::NAN; 2];
        Aggregator::new().aggregate(Aggregation::Median, None, 0, &mut out, |_, _, _| {});
        assert_eq!(out, [0.0; 2]);
    }

    #[test]
    fn every_rule_matches_the_reference_bit_for_bit() {
        let len = 2 * PAR_BLOCK + 3 * CACHE_BLOCK + 17;
        for n in [1, 2, 3, 4, 5, 7, 8, 16] {
            let mut inputs = random_inputs(n as u64, n, len);
            // Ties and signed zeros: columns where contributions agree or differ only in sign.
            for i in (0..len).step_by(7) {
                let v = inputs[0][i];
                for input in inputs.iter_mut().step_by(2) {
                    input[i] = v;
                }
            }
            for i in (0..len).step_by(13) {
                for (s, input) in inputs.iter_mut().enumerate() {
                    input[i] = if s % 2 == 0 { 0.0 } else { -0.0 };
                }
            }
            for a in [
                Aggregation::Mean,
                Aggregation::Median,
                Aggregation::TrimmedMean(1),
                Aggregation::TrimmedMean(2),
                Aggregation::TrimmedMean(100),
            ] {
                for clip in [None, Some(1.0), Some(1e6)] {
                    check(a, clip, &inputs);
                }
            }
        }
    }

    #[test]
    fn clipping_bounds_each_norm_and_leaves_small_gradients_alone() {
        let len = 3 * CACHE_BLOCK + 5;
        let mut inputs = random_inputs(9, 3, len);
        inputs[1].iter_mut().for_each(|x| *x *= 1000.0);
        let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
        let norms: Vec<f64> = refs.iter().map(|r| reference_norm(r)).collect();
        let c = (norms[0] * 2.0) as f32;
        // With the mean, the clipped aggregate is the mean of inputs 0, 2 and input 1 scaled to c.
        let out = check(Aggregation::Mean, Some(c), &inputs);
        let scaled: Vec<f32> = inputs[1]
            .iter()
            .map(|x| x * clip_scale(norms[1], c))
            .collect();
        assert!((reference_norm(&scaled) - f64::from(c)).abs() < 1e-3 * f64::from(c));
        let expected = average::reference_mean(&[refs[0], &scaled, refs[2]]);
        assert_eq!(bits(&out), bits(&expected));
        // A bound above every norm changes nothing.
        let loose = (norms[1] * 2.0) as f32;
        assert_eq!(
            bits(&check(Aggregation::Median, Some(loose), &inputs)),
            bits(&check(Aggregation::Median, None, &inputs))
        );
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let len = 5 * PAR_BLOCK + 321;
        let inputs = random_inputs(4, 4, len);
        let outputs: Vec<Vec<u32>> = [1, 2, 5]
            .into_iter()
            .map(|threads| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    [Aggregation::Median, Aggregation::TrimmedMean(1)]
                        .into_iter()
                        .flat_map(|a| bits(&run(a, Some(50.0), &inputs)))
                        .collect()
                })
            })
            .collect();
        assert!(outputs.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn a_reused_aggregator_follows_changing_contributor_counts() {
        let len = CACHE_BLOCK + 9;
        let mut aggregator = Aggregator::new();
        for n in [4, 3, 4, 1, 5] {
            let inputs = random_inputs(n as u64 + 20, n, len);
            let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
            let mut out = vec![0.0; len];
            aggregate_slices(
                &mut aggregator,
                Aggregation::Median,
                Some(3.0),
                &refs,
                &mut out,
            );
            let expected = reference(Aggregation::Median, Some(3.0), &refs);
            assert_eq!(bits(&out), bits(&expected), "n {n}");
        }
    }

    #[test]
    fn the_median_ignores_a_minority_of_huge_values() {
        let honest = random_inputs(5, 3, 1000);
        let mut inputs = honest.clone();
        inputs.push(vec![1e30; 1000]);
        let out = check(Aggregation::Median, None, &inputs);
        for (i, o) in out.iter().enumerate() {
            let lo = honest.iter().map(|h| h[i]).fold(f32::INFINITY, f32::min);
            let hi = honest
                .iter()
                .map(|h| h[i])
                .fold(f32::NEG_INFINITY, f32::max);
            assert!(*o >= lo && *o <= hi);
        }
    }
}
