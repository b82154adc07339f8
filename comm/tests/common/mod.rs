//! Scenarios run against every transport: each takes the connected
//! endpoints of one run and hands them back so the caller can clean up.

#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use peerless_comm::average::reference_mean;
use peerless_comm::wire::{self, Header, MessageKind, RunId};
use peerless_comm::{
    Averager, CodecSpec, OnTimeout, RoundConfig, RoundError, RoundStats, Transport,
    model_fingerprint,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const MODEL: &str = "test-model";

pub fn fingerprint(n: usize) -> u64 {
    model_fingerprint(MODEL, n as u64)
}

pub fn gradient(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| rng.random_range(-1.0f32..1.0) * 0.01)
        .collect()
}

pub fn codec_seed(rank: u32) -> u64 {
    1000 + u64::from(rank)
}

pub fn config(run_id: RunId, rank: u32, world: u32, n: usize) -> RoundConfig {
    let mut config = RoundConfig::new(run_id, rank, world, fingerprint(n), n);
    config.timeout = Duration::from_secs(30);
    config
}

/// Round 0's messages of `kind` for `shard` (codec `none`) as the peer of `sender` would
/// send them under membership view `view`, made by hand: for tests that play a peer racing
/// a membership change instead of running an `Averager`.
pub fn hand_made(
    sender: &RoundConfig,
    kind: MessageKind,
    shard: u32,
    view: u64,
    values: &[f32],
) -> Vec<Bytes> {
    let mut payload = Vec::new();
    CodecSpec::None
        .build(0)
        .encode(values, &mut payload)
        .unwrap();
    let header = Header {
        kind,
        shard,
        view,
        incarnation: sender.incarnation,
        ..Header::gradient(
            sender.run_id,
            0,
            sender.rank,
            sender.world_size,
            sender.model_fingerprint,
            CodecSpec::None,
            sender.element_count as u64,
        )
    };
    let mut out = Vec::new();
    wire::chunk_messages(&header, &payload, sender.max_chunk_bytes, &mut out);
    out
}

pub fn averagers<T: Transport>(
    transports: Vec<T>,
    run_id: RunId,
    n: usize,
    codec: CodecSpec,
    tweak: impl Fn(&mut RoundConfig),
) -> Vec<Averager<T>> {
    let world = transports.len() as u32;
    averagers_of_world(transports, world, run_id, n, codec, tweak)
}

/// Averagers for the first `transports.len()` ranks of a run of `world` peers.
pub fn averagers_of_world<T: Transport>(
    transports: Vec<T>,
    world: u32,
    run_id: RunId,
    n: usize,
    codec: CodecSpec,
    tweak: impl Fn(&mut RoundConfig),
) -> Vec<Averager<T>> {
    transports
        .into_iter()
        .enumerate()
        .map(|(rank, t)| {
            let mut c = config(run_id, rank as u32, world, n);
            tweak(&mut c);
            Averager::new(c, codec.build(codec_seed(rank as u32)), t).unwrap()
        })
        .collect()
}

pub type Outcome<T> = (Averager<T>, Result<(Vec<f32>, RoundStats), RoundError>);

/// Runs one round on every averager concurrently (one task each).
pub async fn run_round<T: Transport + 'static>(
    averagers: Vec<Averager<T>>,
    round: u64,
    grads: &[Vec<f32>],
) -> Vec<Outcome<T>> {
    let tasks: Vec<_> = averagers
        .into_iter()
        .zip(grads.iter().cloned())
        .map(|(mut averager, grad)| {
            tokio::spawn(async move {
                let mut out = vec![f32::NAN; grad.len()];
                let result = averager.average(round, &grad, &mut out).await;
                (averager, result.map(|stats| (out, stats)))
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("round task panicked"));
    }
    outcomes
}

/// What the peers must compute, round after round: each rank's gradient
/// encoded by its own codec (same seed as the peer's, same history), decoded,
/// and averaged in rank order.
pub struct Reference {
    codecs: Vec<Box<dyn peerless_comm::Codec>>,
}

impl Reference {
    pub fn new(codec: CodecSpec, world: usize) -> Self {
        Reference {
            codecs: (0..world)
                .map(|rank| codec.build(codec_seed(rank as u32)))
                .collect(),
        }
    }

    pub fn next(&mut self, grads: &[Vec<f32>]) -> Vec<f32> {
        let decoded: Vec<Vec<f32>> = grads
            .iter()
            .zip(&mut self.codecs)
            .map(|(g, c)| {
                let mut payload = Vec::new();
                c.encode(g, &mut payload).unwrap();
                let mut out = vec![0.0; g.len()];
                c.decode(&payload, &mut out).unwrap();
                out
            })
            .collect();
        let refs: Vec<&[f32]> = decoded.iter().map(Vec::as_slice).collect();
        reference_mean(&refs)
    }
}

pub fn expected_mean(codec: CodecSpec, grads: &[Vec<f32>]) -> Vec<f32> {
    Reference::new(codec, grads.len()).next(grads)
}

pub fn assert_bits_eq(actual: &[f32], expected: &[f32], who: &str) {
    assert_eq!(actual.len(), expected.len());
    let differing = actual
        .iter()
        .zip(expected)
        .filter(|(a, e)| a.to_bits() != e.to_bits())
        .count();
    assert_eq!(
        differing, 0,
        "{who}: {differing} elements differ from the reference"
    );
}

fn into_transports<T: Transport>(outcomes: Vec<Outcome<T>>) -> Vec<T> {
    outcomes
        .into_iter()
        .map(|(a, _)| a.into_transport())
        .collect()
}

/// Every peer gets exactly the rank-ordered mean, over `rounds` rounds.
pub async fn exact_mean<T: Transport + 'static>(
    transports: Vec<T>,
    run_id: RunId,
    n: usize,
    codec: CodecSpec,
    max_chunk_bytes: usize,
) -> Vec<T> {
    let world = transports.len();
    let mut peers = averagers(transports, run_id, n, codec, |c| {
        c.max_chunk_bytes = max_chunk_bytes
    });
    let grads: Vec<Vec<f32>> = (0..world).map(|r| gradient(r as u64 + 1, n)).collect();
    let mut reference = Reference::new(codec, world);
    let expected = reference.next(&grads);
    let outcomes = run_round(peers, 0, &grads).await;
    let mut first: Option<Vec<f32>> = None;
    for (rank, (_, result)) in outcomes.iter().enumerate() {
        let (out, stats) = result
            .as_ref()
            .unwrap_or_else(|e| panic!("rank {rank}: {e}"));
        assert_bits_eq(out, &expected, &format!("rank {rank}"));
        if let Some(first) = &first {
            assert_bits_eq(out, first, &format!("rank {rank} vs rank 0"));
        }
        first.get_or_insert_with(|| out.clone());
        assert_eq!(stats.contributors as usize, world);
        assert!(stats.missing.is_empty());
        assert_eq!(
            stats.peer_compute,
            vec![None; world],
            "no compute time was set"
        );
        assert_eq!(stats.rejected.total(), 0, "{:?}", stats.rejected);
        let chunks = wire::chunk_count(
            stats.bytes_sent as usize - stats.messages_sent as usize * wire::HEADER_LEN,
            max_chunk_bytes,
        );
        assert_eq!(stats.messages_sent as usize, chunks);
        assert!(stats.messages_received >= (world as u64 - 1) * stats.messages_sent);
    }
    // A lossless codec must reproduce the true mean exactly.
    if codec == CodecSpec::None {
        let refs: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
        assert_bits_eq(first.as_ref().unwrap(), &reference_mean(&refs), "true mean");
    }
    // A second round with fresh gradients (codec state carries over identically on all peers).
    peers = outcomes.into_iter().map(|(a, _)| a).collect();
    let grads2: Vec<Vec<f32>> = (0..world).map(|r| gradient(r as u64 + 100, n)).collect();
    let outcomes = run_round(peers, 1, &grads2).await;
    let outs: Vec<Vec<f32>> = outcomes
        .iter()
        .map(|(_, r)| r.as_ref().expect("second round").0.clone())
        .collect();
    for (rank, out) in outs.iter().enumerate() {
        assert_bits_eq(out, &outs[0], &format!("round 1 rank {rank}"));
    }
    assert_bits_eq(&outs[0], &reference.next(&grads2), "round 1");
    into_transports(outcomes)
}

/// The last rank never sends: `Fail` names it, `AverageArrived` averages the rest.
pub async fn silent_rank<T: Transport + 'static>(
    mut transports: Vec<T>,
    run_id: RunId,
    timeout: Duration,
) -> Vec<T> {
    let n = 5000;
    let silent = transports.pop().expect("at least 2 transports");
    let world = transports.len() as u32 + 1;
    let make = |transports: Vec<T>, on_timeout| {
        transports
            .into_iter()
            .enumerate()
            .map(|(rank, t)| {
                let mut c = config(run_id, rank as u32, world, n);
                c.timeout = timeout;
                c.on_timeout = on_timeout;
                Averager::new(c, CodecSpec::None.build(0), t).unwrap()
            })
            .collect::<Vec<_>>()
    };
    let grads: Vec<Vec<f32>> = (0..world - 1)
        .map(|r| gradient(u64::from(r) + 7, n))
        .collect();

    let started = std::time::Instant::now();
    let outcomes = run_round(make(transports, OnTimeout::Fail), 0, &grads).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout,
        "gave up after {elapsed:?}, before the timeout"
    );
    assert!(
        elapsed < timeout + Duration::from_secs(5),
        "took {elapsed:?}"
    );
    for (_, result) in &outcomes {
        match result {
            Err(RoundError::Timeout { missing, round, .. }) => {
                assert_eq!(missing, &vec![world - 1]);
                assert_eq!(*round, 0);
                let msg = result.as_ref().unwrap_err().to_string();
                assert!(msg.contains(&format!("rank(s) {}", world - 1)), "{msg}");
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    let transports = into_transports(outcomes);
    let outcomes = run_round(make(transports, OnTimeout::AverageArrived), 1, &grads).await;
    let refs: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
    let expected = reference_mean(&refs);
    for (rank, (_, result)) in outcomes.iter().enumerate() {
        let (out, stats) = result
            .as_ref()
            .unwrap_or_else(|e| panic!("rank {rank}: {e}"));
        assert_eq!(stats.missing, vec![world - 1]);
        assert_eq!(stats.contributors, world - 1);
        assert_bits_eq(out, &expected, &format!("partial rank {rank}"));
    }
    let mut transports = into_transports(outcomes);
    transports.push(silent);
    transports
}

/// The last rank is driven by hand and sends, before its real gradients:
/// a future-round gradient, a stale one, one of a foreign run, a corrupted
/// one and a duplicate. Only the genuine gradients count.
pub async fn hostile_messages<T: Transport + 'static>(
    mut transports: Vec<T>,
    run_id: RunId,
) -> Vec<T> {
    let n = 3000;
    let injector = transports.pop().expect("at least 2 transports");
    let world = transports.len() as u32 + 1;
    let me = world - 1;
    let grads: Vec<Vec<f32>> = (0..world).map(|r| gradient(u64::from(r) + 50, n)).collect();
    let grads2: Vec<Vec<f32>> = (0..world).map(|r| gradient(u64::from(r) + 60, n)).collect();

    let message = |run: RunId, round: u64, g: &[f32]| {
        let mut payload = Vec::new();
        CodecSpec::None.build(0).encode(g, &mut payload).unwrap();
        let header = Header::gradient(
            run,
            round,
            me,
            world,
            fingerprint(n),
            CodecSpec::None,
            n as u64,
        );
        let mut out = Vec::new();
        wire::chunk_messages(&header, &payload, wire::DEFAULT_MAX_CHUNK_BYTES, &mut out);
        assert_eq!(out.len(), 1);
        out.pop().unwrap()
    };
    let genuine = message(run_id, 1, &grads[me as usize]);
    let mut corrupted = genuine.to_vec();
    corrupted[wire::HEADER_LEN + 17] ^= 0x10;
    let sequence = [
        message(run_id, 2, &grads2[me as usize]),
        message(run_id, 0, &grads[me as usize]),
        message(RunId::random(), 1, &grads[me as usize]),
        Bytes::from(corrupted),
        Bytes::from_static(b"not a peerless message"),
        genuine.clone(),
        genuine,
    ];
    injector.publish(&sequence).await.unwrap();

    let peers = averagers_of_world(transports, world, run_id, n, CodecSpec::None, |_| {});
    let mut mine = grads.clone();
    mine.pop();
    let outcomes = run_round(peers, 1, &mine).await;
    let expected = expected_mean(CodecSpec::None, &grads);
    let mut peers = Vec::new();
    for (rank, (averager, result)) in outcomes.into_iter().enumerate() {
        let (out, stats) = result.unwrap_or_else(|e| panic!("rank {rank}: {e}"));
        assert_bits_eq(&out, &expected, &format!("rank {rank}"));
        let r = stats.rejected;
        assert_eq!(r.stale_round, 1, "rank {rank}: {r:?}");
        assert_eq!(r.foreign_run, 1, "rank {rank}: {r:?}");
        assert_eq!(r.bad_checksum, 1, "rank {rank}: {r:?}");
        assert_eq!(r.malformed, 1, "rank {rank}: {r:?}");
        assert!(stats.buffered_future >= 1, "rank {rank}: {stats:?}");
        // The duplicate may arrive after the round completed (then it counts next round).
        assert!(r.duplicate <= 1);
        peers.push(averager);
    }

    // Round 2 uses the gradient that arrived early.
    let mut mine2 = grads2.clone();
    mine2.pop();
    let outcomes = run_round(peers, 2, &mine2).await;
    let expected2 = expected_mean(CodecSpec::None, &grads2);
    for (rank, (_, result)) in outcomes.iter().enumerate() {
        let (out, _) = result
            .as_ref()
            .unwrap_or_else(|e| panic!("round 2 rank {rank}: {e}"));
        assert_bits_eq(out, &expected2, &format!("round 2 rank {rank}"));
    }
    let mut transports = into_transports(outcomes);
    transports.push(injector);
    transports
}

/// Messages of another model, world size, gradient length or codec are dropped and
/// counted, never fatal: the round goes on without their sender.
pub async fn mismatches<T: Transport + 'static>(mut transports: Vec<T>, run_id: RunId) -> Vec<T> {
    let n = 100;
    let world = transports.len() as u32;
    let sender = transports.pop().unwrap();
    let receiver = transports.pop().unwrap();
    let receiver_rank = world - 2;
    let mut c = config(run_id, receiver_rank, world, n);
    c.timeout = Duration::from_millis(300);
    c.on_timeout = OnTimeout::AverageArrived;
    c.evict_after = 0;
    let mut averager = Averager::new(c, CodecSpec::None.build(0), receiver).unwrap();
    let cases: [(Header, &str); 4] = [
        (
            Header::gradient(
                run_id,
                0,
                world - 1,
                world,
                0xdead_beef,
                CodecSpec::None,
                n as u64,
            ),
            "0x00000000deadbeef",
        ),
        (
            Header::gradient(
                run_id,
                0,
                world - 1,
                world + 5,
                fingerprint(n),
                CodecSpec::None,
                n as u64,
            ),
            "world size",
        ),
        (
            Header::gradient(
                run_id,
                0,
                world - 1,
                world,
                fingerprint(n),
                CodecSpec::None,
                99,
            ),
            "99 elements",
        ),
        (
            Header::gradient(
                run_id,
                0,
                world - 1,
                world,
                fingerprint(n),
                CodecSpec::Qsgd8,
                n as u64,
            ),
            "codec qsgd8",
        ),
    ];
    for (header, _what) in &cases {
        let payload = vec![0u8; 400];
        let mut header = header.clone();
        header.total_payload_len = 400;
        sender
            .publish(&[wire::encode_message(&header, &payload)])
            .await
            .unwrap();
    }
    let mut out = vec![0.0; n];
    let stats = averager
        .average(0, &vec![0.0; n], &mut out)
        .await
        .expect("mismatched messages are not fatal");
    assert_eq!(stats.rejected.mismatched, cases.len() as u64);
    let silent: Vec<u32> = (0..world).filter(|r| *r != receiver_rank).collect();
    assert_eq!(stats.missing, silent);
    transports.push(averager.into_transport());
    transports.push(sender);
    transports
}

/// Every peer learns every contributor's compute time from the headers (the
/// last value set, at microsecond precision, in every chunk); a rank that
/// sent 0 or was left out of a partial round (waiting `partial_timeout`) is
/// `None`. The last transport stays silent in the partial round.
pub async fn compute_times<T: Transport + 'static>(
    transports: Vec<T>,
    run_id: RunId,
    partial_timeout: Duration,
) -> Vec<T> {
    let n = 10_000;
    let world = transports.len();
    assert_eq!(world, 3, "the scenario is written for three peers");
    let ms = Duration::from_millis;
    // 40 kB per gradient in chunks of 4 KiB: the value comes from the first chunk.
    let mut peers = averagers(transports, run_id, n, CodecSpec::None, |c| {
        c.max_chunk_bytes = 4096
    });
    for (rank, peer) in peers.iter_mut().enumerate() {
        peer.set_compute_time(ms(10 * (rank as u64 + 1)));
    }
    let grads: Vec<Vec<f32>> = (0..world).map(|r| gradient(r as u64 + 200, n)).collect();
    let outcomes = run_round(peers, 0, &grads).await;
    for (rank, (_, result)) in outcomes.iter().enumerate() {
        let (_, stats) = result
            .as_ref()
            .unwrap_or_else(|e| panic!("rank {rank}: {e}"));
        assert!(stats.messages_sent > 1, "{stats:?}");
        assert_eq!(
            stats.peer_compute,
            vec![Some(ms(10)), Some(ms(20)), Some(ms(30))],
            "rank {rank}"
        );
    }

    // Rank 0 reports a time below the millisecond (truncated to microseconds),
    // rank 1 an unknown one; rank 2 keeps the value it set last.
    let mut peers: Vec<_> = outcomes.into_iter().map(|(a, _)| a).collect();
    peers[0].set_compute_time(Duration::from_nanos(12_345_678));
    peers[1].set_compute_time(Duration::ZERO);
    let expected = vec![Some(Duration::from_micros(12_345)), None, Some(ms(30))];
    let outcomes = run_round(peers, 1, &grads).await;
    for (rank, (_, result)) in outcomes.iter().enumerate() {
        let (_, stats) = result
            .as_ref()
            .unwrap_or_else(|e| panic!("round 1 rank {rank}: {e}"));
        assert_eq!(stats.contributors, 3);
        assert_eq!(stats.peer_compute, expected, "round 1 rank {rank}");
    }

    // The last rank stays silent: the others average without it.
    let mut transports = into_transports(outcomes);
    let silent = transports.pop().expect("three peers");
    let mut peers = averagers_of_world(transports, 3, run_id, n, CodecSpec::None, |c| {
        c.max_chunk_bytes = 4096;
        c.timeout = partial_timeout;
        c.on_timeout = OnTimeout::AverageArrived;
    });
    peers[0].set_compute_time(Duration::from_nanos(12_345_678));
    peers[1].set_compute_time(ms(20));
    let outcomes = run_round(peers, 2, &grads[..2]).await;
    for (rank, (_, result)) in outcomes.iter().enumerate() {
        let (_, stats) = result
            .as_ref()
            .unwrap_or_else(|e| panic!("partial round rank {rank}: {e}"));
        assert_eq!(stats.missing, vec![2]);
        assert_eq!(stats.contributors, 2);
        assert_eq!(
            stats.peer_compute,
            vec![Some(Duration::from_micros(12_345)), Some(ms(20)), None],
            "partial round rank {rank}"
        );
    }
    let mut transports = into_transports(outcomes);
    transports.push(silent);
    transports
}
