//! Hostile messages into a running 3-peer run over the real RabbitMQ (127.0.0.1:5672):
//! random mutations of real messages (bit flips, truncations, every header field set to
//! extreme values with valid checksums, huge counts, far-future rounds, forged senders
//! signed with another rank's key, unsigned membership messages). The authenticated peers
//! must not panic, must keep their memory, and must end with the clean run's weights.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

mod common;

use bytes::Bytes;
use common::{
    RoundMetrics, SMALL_TRAINING, peer_process, peerless, round_metrics, split_synthetic, unique,
};
use lapin::options::{BasicPublishOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use peerless_comm::auth::Keyring;
use peerless_comm::wire::{self, HEADER_LEN, Header, MessageKind, RunId};
use peerless_comm::{CodecSpec, model_fingerprint};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const PARAMS: u64 = 38_282; // tiny_cnn
const HOSTILE: usize = 10_000;

fn spawn(store: &Path, keys: &Path, rank: u32, run_id: &str, metrics: &Path) -> Child {
    peer_process()
        .args([
            "peer",
            "--size",
            "3",
            "--rank",
            &rank.to_string(),
            "--run-id",
            run_id,
        ])
        .args(["--broker", BROKER, "--store", store.to_str().unwrap()])
        .args(["--keys", keys.to_str().unwrap()])
        .args(["--metrics-out", metrics.to_str().unwrap()])
        .args([
            "--epochs",
            "2",
            "--rounds-per-epoch",
            "24",
            "--speed",
            "0.4",
            "--round-timeout",
            "60",
        ])
        .args(SMALL_TRAINING)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs 3 peers to the end; returns their metrics.
fn run(
    dir: &Path,
    store: &Path,
    keys: &Path,
    run_id: &str,
    during: impl FnOnce(),
) -> Vec<Vec<RoundMetrics>> {
    let paths: Vec<_> = (0..3)
        .map(|r| dir.join(format!("{run_id}-{r}.jsonl")))
        .collect();
    let children: Vec<Child> = (0..3)
        .map(|r| spawn(store, keys, r, run_id, &paths[r as usize]))
        .collect();
    during();
    for (rank, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "peer {rank}: {err}");
        assert!(!err.contains("panicked"), "peer {rank}: {err}");
    }
    paths.iter().map(|p| round_metrics(p)).collect()
}

/// Rewrites the header CRC (and the payload CRC) so a mutated message passes the checksums
/// and meets the deeper checks.
fn reseal(bytes: &mut [u8]) {
    if bytes.len() < HEADER_LEN {
        return;
    }
    let payload_len = u32::from_le_bytes(bytes[84..88].try_into().unwrap()) as usize;
    if let Some(payload) = bytes.get(HEADER_LEN..HEADER_LEN + payload_len) {
        let crc = crc32fast::hash(payload);
        bytes[88..92].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32fast::hash(&bytes[..HEADER_LEN - 4]);
    bytes[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// One hostile message built from a real one.
fn hostile(rng: &mut ChaCha8Rng, run_id: RunId, keys: &[Keyring], round: u64) -> (u32, Bytes) {
    let sender = rng.random_range(0..3u32);
    let claimed = rng.random_range(0..3u32);
    let small = rng.random_bool(0.97);
    let n = if small { 64 } else { PARAMS as usize };
    let payload: Vec<u8> = (0..n * 4).map(|_| rng.random()).collect();
    let mut header = Header::gradient(
        run_id,
        round + rng.random_range(0..3),
        claimed,
        3,
        model_fingerprint("tiny_cnn", PARAMS),
        CodecSpec::None,
        PARAMS,
    );
    header.shard = rng.random_range(0..4);
    header.kind = match rng.random_range(0..12) {
        0 => MessageKind::Hello,
        1 => MessageKind::Join,
        2 => MessageKind::State,
        3 => MessageKind::Shard,
        4 => MessageKind::Reduced,
        _ => MessageKind::Gradient,
    };
    // A compromised peer signs with its own key while claiming another rank.
    let signer = rng
        .random_bool(0.5)
        .then(|| keys[sender as usize].signer())
        .flatten();
    let mut out = Vec::new();
    wire::chunk_messages_signed(&header, &payload, 1 << 20, &mut out, signer);
    let mut bytes = out.pop().unwrap().to_vec();
    match rng.random_range(0..6) {
        0 => {
            for _ in 0..rng.random_range(1..8) {
                let bit = rng.random_range(0..bytes.len() * 8);
                bytes[bit / 8] ^= 1 << (bit % 8);
            }
        }
        1 => bytes.truncate(rng.random_range(0..bytes.len())),
        2 => {
            // Every header field to an extreme value, checksums made valid.
            let fields: [(usize, usize); 17] = [
                (6, 1),
                (7, 1),
                (8, 4),
                (12, 4),
                (32, 8),
                (40, 4),
                (44, 4),
                (48, 8),
                (56, 8),
                (64, 8),
                (72, 8),
                (80, 4),
                (84, 4),
                (92, 8),
                (100, 8),
                (112, 4),
                (116, 8),
            ];
            let (at, len) = fields[rng.random_range(0..fields.len())];
            let value: u64 = match rng.random_range(0..3) {
                0 => u64::MAX,
                1 => 0,
                _ => 1 << rng.random_range(0..63),
            };
            bytes[at..at + len].copy_from_slice(&value.to_le_bytes()[..len]);
            reseal(&mut bytes);
        }
        3 => {
            // Huge counts.
            bytes[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
            bytes[64..72].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
            reseal(&mut bytes);
        }
        4 => {
            // Far-future rounds.
            bytes[32..40]
                .copy_from_slice(&(round + rng.random_range(3..u64::MAX / 2)).to_le_bytes());
            reseal(&mut bytes);
        }
        _ => {} // a well-formed forgery
    }
    (claimed, Bytes::from(bytes))
}

fn peak_rss(peers: &[Vec<RoundMetrics>]) -> u64 {
    peers
        .iter()
        .flatten()
        .filter_map(|m| m.peak_rss_bytes)
        .max()
        .expect("peers report their peak RSS")
}

#[test]
fn ten_thousand_hostile_messages_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let keys = dir.path().join("keys");
    split_synthetic(&store, 3);
    peerless()
        .args(["keys", "generate", "--size", "3", "--out"])
        .arg(&keys)
        .assert()
        .success();
    let clean = run(dir.path(), &store, &keys, &unique("clean"), || {});

    let name = unique("fuzzed");
    let run_id = RunId::from_name(&name);
    let watch = dir.path().join(format!("{name}-0.jsonl"));
    let keyrings: Vec<Keyring> = (0..3)
        .map(|r| Keyring::load(&keys, r, 3).unwrap())
        .collect();
    let mut published = 0;
    let fuzzed = run(dir.path(), &store, &keys, &name, || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let started = Instant::now();
            // The peers declare the run's queues when they connect.
            while std::fs::read_to_string(&watch).map_or(0, |t| t.lines().count()) < 1 {
                assert!(
                    started.elapsed() < Duration::from_secs(120),
                    "the run never started"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let connection = Connection::connect(BROKER, ConnectionProperties::default())
                .await
                .unwrap();
            let channel = connection.create_channel().await.unwrap();
            let exchange = format!("peerless.{run_id}");
            let mut rng = ChaCha8Rng::seed_from_u64(16);
            while published < HOSTILE {
                let round = std::fs::read_to_string(&watch).map_or(0, |t| t.lines().count() as u64);
                for _ in 0..200 {
                    let (claimed, bytes) = hostile(&mut rng, run_id, &keyrings, round);
                    channel
                        .basic_publish(
                            exchange.as_str().into(),
                            format!("rank.{claimed}").as_str().into(),
                            BasicPublishOptions::default(),
                            &bytes,
                            BasicProperties::default(),
                        )
                        .await
                        .unwrap();
                    published += 1;
                }
                tokio::task::yield_now().await;
            }
            connection.close(200, "done".into()).await.unwrap();
        });
    });
    assert!(published >= HOSTILE);
    let last = |peers: &[Vec<RoundMetrics>]| -> Vec<String> {
        peers
            .iter()
            .map(|p| p.last().unwrap().weights_hash.clone())
            .collect()
    };
    let expected = last(&clean);
    assert!(expected.iter().all(|h| *h == expected[0]));
    assert_eq!(
        last(&fuzzed),
        expected,
        "the hostile messages changed the weights"
    );
    let rejected: u64 = fuzzed.iter().flatten().map(|m| m.rejected_messages).sum();
    assert!(
        rejected > 1000,
        "only {rejected} messages were rejected: did the fuzzer reach the peers?"
    );
    // Every line's per-reason counts add up to its total, and the forgeries and corruptions
    // are told apart.
    for m in fuzzed.iter().flatten() {
        assert_eq!(
            m.rejections.total(),
            m.rejected_messages,
            "round {}",
            m.round
        );
    }
    let by_reason = |f: fn(&peerless_comm::Rejections) -> u64| -> u64 {
        fuzzed.iter().flatten().map(|m| f(&m.rejections)).sum()
    };
    let unauthenticated = by_reason(|r| r.unauthenticated);
    let corrupted = by_reason(|r| r.malformed + r.bad_checksum);
    assert!(
        unauthenticated > 0 && corrupted > 0,
        "unauthenticated {unauthenticated}, malformed or corrupted {corrupted}"
    );
    let (clean_rss, fuzzed_rss) = (peak_rss(&clean), peak_rss(&fuzzed));
    assert!(
        fuzzed_rss <= clean_rss + (64 << 20),
        "peak RSS {} MiB under attack vs {} MiB clean",
        fuzzed_rss >> 20,
        clean_rss >> 20
    );
    eprintln!(
        "fuzz: {published} hostile messages, {rejected} rejected by the peers during the run, \
         peak RSS {} MiB (clean {} MiB), final weights equal",
        fuzzed_rss >> 20,
        clean_rss >> 20
    );

    // What arrived after the run ended is still queued: delete the run's queues.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let connection = Connection::connect(BROKER, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        for rank in 0..3 {
            let queue = format!("peerless.{run_id}.rank{rank}");
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    });
}
