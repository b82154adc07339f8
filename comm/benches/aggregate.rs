//! `cargo bench --bench aggregate`: robust aggregation of 4 gradients at VGG11's size (128.8 M
//! `f32` each) against the plain mean, as a round runs them: from codec payloads (codec
//! `none`), the mean streaming, the robust rules through [`Aggregator`]. Prints each
//! rule's median time and its time relative to the mean with the spread over repetitions
//! (the bar: median and trimmed mean within 3x of the mean).
//!
//! `PEERLESS_BENCH_ELEMENTS=N` changes the size, `PEERLESS_BENCH_REPEAT=R` the repetitions.

use std::time::Instant;

use peerless_comm::average::mean_into;
use peerless_comm::codec::Accumulate;
use peerless_comm::{Aggregation, Aggregator, CodecSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n = env("PEERLESS_BENCH_ELEMENTS", 128_807_306);
    let repeat = env("PEERLESS_BENCH_REPEAT", 5).max(1);
    let peers = 4;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let codec = CodecSpec::None.build(0);
    let payloads: Vec<Vec<u8>> = (0..peers)
        .map(|_| {
            let g: Vec<f32> = (0..n).map(|_| rng.random_range(-1e-2f32..1e-2)).collect();
            let mut p = Vec::new();
            CodecSpec::None.build(0).encode(&g, &mut p).expect("encode");
            p
        })
        .collect();
    let mut out = vec![0.0f32; n];
    let mut aggregator = Aggregator::new();

    type Rule = (&'static str, Option<(Aggregation, Option<f32>)>);
    let rules: [Rule; 5] = [
        ("mean (streaming)", None),
        ("median", Some((Aggregation::Median, None))),
        ("trimmed-mean:1", Some((Aggregation::TrimmedMean(1), None))),
        ("mean, clip-norm 1", Some((Aggregation::Mean, Some(1.0)))),
        (
            "median, clip-norm 1",
            Some((Aggregation::Median, Some(1.0))),
        ),
    ];
    let mut run = |rule: &Rule| {
        let start = Instant::now();
        match rule.1 {
            None => mean_into(&mut out, peers, |s, start, block, mode| {
                codec.accumulate(&payloads[s], n, start, block, mode)
            }),
            Some((aggregation, clip)) => {
                aggregator.aggregate(aggregation, clip, peers, &mut out, |s, start, block| {
                    codec.accumulate(&payloads[s], n, start, block, Accumulate::Assign)
                })
            }
        }
        start.elapsed().as_secs_f64()
    };
    // Interleaved repetitions (after one warm-up each), so drift in the shared machine's
    // load hits every rule alike; each rule's ratio is taken against the mean of the same
    // repetition.
    for rule in &rules {
        run(rule);
    }
    let mut times = vec![Vec::new(); rules.len()];
    for _ in 0..repeat {
        for (i, rule) in rules.iter().enumerate() {
            times[i].push(run(rule));
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "{peers} gradients of {n} f32 ({:.0} MB each), {repeat} repetitions, {} cores",
        (4 * n) as f64 / 1e6,
        std::thread::available_parallelism().map_or(1, |t| t.get())
    );
    println!(
        "{:<22} {:>10} {:>10} {:>22}",
        "rule", "median s", "GB/s in", "x mean: median [min, max]"
    );
    for (i, rule) in rules.iter().enumerate() {
        let ratios: Vec<f64> = times[i].iter().zip(&times[0]).map(|(t, m)| t / m).collect();
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(0.0, f64::max);
        let s = median(&times[i]);
        println!(
            "{:<22} {:>10.3} {:>10.2} {:>10.2} [{:.2}, {:.2}]",
            rule.0,
            s,
            (4 * n * peers) as f64 / s / 1e9,
            median(&ratios),
            lo,
            hi
        );
    }
}
