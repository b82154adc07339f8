//! Robust aggregation in real rounds over the in-process transport: every peer ends with
//! the same bits, equal to the single-threaded reference of the rule applied to the
//! decoded gradients in rank order, and one wild gradient does not move the median.

mod common;

use common::*;
use peerless_comm::aggregate::{self, Aggregation};
use peerless_comm::wire::RunId;
use peerless_comm::{CodecSpec, InProcessHub};

/// Each rank's gradient as the others decode it (first round, the peers' codec seeds).
fn decoded(codec: CodecSpec, grads: &[Vec<f32>]) -> Vec<Vec<f32>> {
    grads
        .iter()
        .enumerate()
        .map(|(rank, g)| {
            let mut c = codec.build(codec_seed(rank as u32));
            let mut payload = Vec::new();
            c.encode(g, &mut payload).unwrap();
            let mut out = vec![0.0; g.len()];
            c.decode(&payload, &mut out).unwrap();
            out
        })
        .collect()
}

async fn round_with(
    aggregation: Aggregation,
    clip_norm: Option<f32>,
    codec: CodecSpec,
    grads: &[Vec<f32>],
    max_chunk_bytes: usize,
) -> Vec<f32> {
    let n = grads[0].len();
    let world = grads.len() as u32;
    let peers = averagers(
        InProcessHub::new(world).into_endpoints(),
        RunId::random(),
        n,
        codec,
        |c| {
            c.aggregation = aggregation;
            c.clip_norm = clip_norm;
            c.max_chunk_bytes = max_chunk_bytes;
        },
    );
    let outcomes = run_round(peers, 0, grads).await;
    let decoded = decoded(codec, grads);
    let refs: Vec<&[f32]> = decoded.iter().map(Vec::as_slice).collect();
    let expected = aggregate::reference(aggregation, clip_norm, &refs);
    for (rank, (_, result)) in outcomes.iter().enumerate() {
        let (out, stats) = result
            .as_ref()
            .unwrap_or_else(|e| panic!("rank {rank}: {e}"));
        assert_eq!(stats.contributors, world);
        assert_bits_eq(out, &expected, &format!("{aggregation} rank {rank}"));
    }
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_peers_with_the_median_agree_on_the_reference_median() {
    let n = 200_003;
    let mut grads: Vec<Vec<f32>> = (0..4).map(|r| gradient(r + 300, n)).collect();
    // Rank 2 attacks: a huge, sign-flipped gradient.
    grads[2].iter_mut().for_each(|x| *x *= -1e6);
    let out = round_with(Aggregation::Median, None, CodecSpec::None, &grads, 64 << 10).await;
    // The median lies between the honest values of every coordinate.
    for (i, o) in out.iter().enumerate() {
        let honest = [grads[0][i], grads[1][i], grads[3][i]];
        let lo = honest.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = honest.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert!(
            *o >= lo && *o <= hi,
            "element {i}: {o} outside [{lo}, {hi}]"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_mean_and_clipping_agree_with_every_codec() {
    let n = 50_000;
    let grads: Vec<Vec<f32>> = (0..5).map(|r| gradient(r + 400, n)).collect();
    for codec in [
        CodecSpec::None,
        CodecSpec::Qsgd8,
        CodecSpec::top_k(0.05).unwrap(),
    ] {
        round_with(Aggregation::TrimmedMean(1), None, codec, &grads, 1 << 20).await;
        round_with(
            Aggregation::TrimmedMean(7),
            Some(0.5),
            codec,
            &grads,
            1 << 20,
        )
        .await;
        // Clipping alone runs the mean over clipped gradients.
        round_with(Aggregation::Mean, Some(0.5), codec, &grads, 1 << 20).await;
    }
}
