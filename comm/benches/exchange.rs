//! `cargo bench --bench exchange`: one averaging round of N peers (tasks of one process)
//! over the real RabbitMQ and in-process, all-to-all against sharded, for gradients of
//! mobilenet_v3_small's size (6.1 MB) and 128 MB: the round's wall time (slowest peer),
//! bytes sent and received per peer, and bytes the broker delivered. A second table
//! compares chunk sizes at VGG11's gradient size (515 MB, 2 peers, all-to-all over
//! RabbitMQ): 448 KiB (fits Amazon MQ's 512 KiB limit) against 8 MiB.
//!
//! Environment: `PEERLESS_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`),
//! `PEERLESS_BENCH_PEERS` (`2,4,8,16`), `PEERLESS_BENCH_SIZES_MB` (`6.1,128`),
//! `PEERLESS_BENCH_TRANSPORTS` (`inprocess,rabbitmq`), `PEERLESS_BENCH_REPEAT` (3),
//! `PEERLESS_BENCH_MAX_GB` (10: configurations whose buffers would need more memory are
//! skipped and listed), `PEERLESS_BENCH_CHUNKS_KIB` (`448,8192`; empty skips the table),
//! `PEERLESS_BENCH_CHUNK_MB` (515).

use std::time::{Duration, Instant};

use peerless_comm::{
    AmqpConfig, AmqpTransport, AnyTransport, Averager, CodecSpec, Exchange, InProcessHub,
    RoundConfig, RunId, model_fingerprint,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn env_list<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: cannot parse {s:?}"))
        })
        .collect()
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one configuration measured: per round the slowest peer's time, and the
/// traffic of the last round.
struct Measured {
    round_s: Vec<f64>,
    sent_per_peer: f64,
    received_per_peer: f64,
    broker_delivered: f64,
}

async fn transports(kind: &str, url: &str, run: RunId, peers: u32) -> Vec<AnyTransport> {
    match kind {
        "inprocess" => InProcessHub::new(peers)
            .into_endpoints()
            .into_iter()
            .map(AnyTransport::InProcess)
            .collect(),
        "rabbitmq" => {
            let mut out = Vec::new();
            for rank in 0..peers {
                let config = AmqpConfig::new(url, run, rank, peers);
                let t = AmqpTransport::connect(&config)
                    .await
                    .unwrap_or_else(|e| panic!("RabbitMQ at {url}: {e}"));
                out.push(AnyTransport::Amqp(Box::new(t)));
            }
            out
        }
        other => panic!("unknown transport {other:?} (inprocess or rabbitmq)"),
    }
}

/// One peer of a benchmark round: its averager, gradient and output buffer.
type Peer = (Averager<AnyTransport>, Vec<f32>, Vec<f32>);

async fn measure(
    kind: &str,
    url: &str,
    peers: u32,
    elements: usize,
    exchange: Exchange,
    chunk_bytes: usize,
    repeat: usize,
) -> Measured {
    let run = RunId::random();
    let all = transports(kind, url, run, peers).await;
    let mut rng = ChaCha8Rng::seed_from_u64(u64::from(peers));
    let mut averagers: Vec<Option<Peer>> = all
        .into_iter()
        .enumerate()
        .map(|(rank, t)| {
            let mut c = RoundConfig::new(
                run,
                rank as u32,
                peers,
                model_fingerprint("bench", elements as u64),
                elements,
            );
            c.exchange = exchange;
            c.max_chunk_bytes = chunk_bytes;
            c.timeout = Duration::from_secs(900);
            let grad: Vec<f32> = (0..elements)
                .map(|_| rng.random_range(-1e-2f32..1e-2))
                .collect();
            let averager = Averager::new(c, CodecSpec::None.build(rank as u64), t).expect("config");
            Some((averager, grad, vec![0.0; elements]))
        })
        .collect();
    let mut round_s = Vec::new();
    let mut last = Vec::new();
    // Round 0 warms up (connections, buffers); rounds 1..=repeat are measured.
    for round in 0..=repeat as u64 {
        let started = Instant::now();
        let tasks: Vec<_> = averagers
            .iter_mut()
            .map(|slot| {
                let (mut averager, grad, mut out) = slot.take().expect("averager");
                tokio::spawn(async move {
                    let stats = averager.average(round, &grad, &mut out).await;
                    (averager, grad, out, stats)
                })
            })
            .collect();
        last.clear();
        for (slot, task) in averagers.iter_mut().zip(tasks) {
            let (averager, grad, out, stats) = task.await.expect("peer task");
            last.push(stats.expect("round"));
            *slot = Some((averager, grad, out));
        }
        if round > 0 {
            round_s.push(started.elapsed().as_secs_f64());
        }
    }
    for slot in averagers.iter_mut() {
        if let Some((averager, _, _)) = slot.take()
            && let AnyTransport::Amqp(t) = averager.into_transport()
        {
            let _ = t.delete_run().await;
            let _ = t.close().await;
        }
    }
    let n = f64::from(peers);
    Measured {
        round_s,
        sent_per_peer: last.iter().map(|s| s.bytes_sent as f64).sum::<f64>() / n,
        received_per_peer: last.iter().map(|s| s.bytes_received as f64).sum::<f64>() / n,
        broker_delivered: last.iter().map(|s| s.bytes_received as f64).sum(),
    }
}

fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

/// Bytes of buffers a configuration holds at once (gradients, averages, encoded and
/// received copies), to skip what would not fit.
fn footprint(peers: u32, bytes: f64, exchange: Exchange) -> f64 {
    let n = f64::from(peers);
    match exchange {
        Exchange::AllToAll => bytes * n * (3.0 + 2.0 * (n - 1.0)),
        Exchange::Sharded => bytes * n * 7.0,
    }
}

fn main() {
    let url = std::env::var("PEERLESS_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let peers: Vec<u32> = env_list("PEERLESS_BENCH_PEERS", "2,4,8,16");
    let sizes: Vec<f64> = env_list("PEERLESS_BENCH_SIZES_MB", "6.1,128");
    let kinds: Vec<String> = env_list("PEERLESS_BENCH_TRANSPORTS", "inprocess,rabbitmq");
    let repeat: usize = env_or("PEERLESS_BENCH_REPEAT", 3);
    let max_bytes = env_or("PEERLESS_BENCH_MAX_GB", 10.0) * 1e9;
    let chunks: Vec<usize> = env_list("PEERLESS_BENCH_CHUNKS_KIB", "448,8192");
    let chunk_mb: f64 = env_or("PEERLESS_BENCH_CHUNK_MB", 515.0);
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let default_chunk = peerless_comm::wire::DEFAULT_MAX_CHUNK_BYTES;

    println!(
        "| transport | gradient MB | peers | exchange | round s (median [min, max]) | sent MB/peer | received MB/peer | broker delivered MB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut skipped = Vec::new();
    for kind in &kinds {
        for &mb in &sizes {
            let elements = (mb * 1e6 / 4.0) as usize;
            for &n in &peers {
                for exchange in [Exchange::AllToAll, Exchange::Sharded] {
                    let need = footprint(n, mb * 1e6, exchange);
                    if need > max_bytes {
                        skipped.push(format!(
                            "{kind} {mb} MB {n} peers {exchange} (about {:.0} GB)",
                            need / 1e9
                        ));
                        continue;
                    }
                    let m = rt.block_on(measure(
                        kind,
                        &url,
                        n,
                        elements,
                        exchange,
                        default_chunk,
                        repeat,
                    ));
                    let (median, min, max) = spread(&m.round_s);
                    println!(
                        "| {kind} | {mb} | {n} | {exchange} | {median:.3} [{min:.3}, {max:.3}] | {:.1} | {:.1} | {:.1} |",
                        m.sent_per_peer / 1e6,
                        m.received_per_peer / 1e6,
                        m.broker_delivered / 1e6
                    );
                }
            }
        }
    }
    for s in &skipped {
        println!("skipped (PEERLESS_BENCH_MAX_GB): {s}");
    }

    if chunks.is_empty() {
        return;
    }
    println!();
    println!(
        "Chunk size, {chunk_mb} MB gradient, 2 peers, all-to-all over RabbitMQ, {repeat} rounds interleaved"
    );
    let elements = (chunk_mb * 1e6 / 4.0) as usize;
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); chunks.len()];
    // Interleaved repetitions, so machine noise hits every chunk size alike.
    for _ in 0..repeat {
        for (i, &kib) in chunks.iter().enumerate() {
            let m = rt.block_on(measure(
                "rabbitmq",
                &url,
                2,
                elements,
                Exchange::AllToAll,
                kib << 10,
                1,
            ));
            times[i].extend(m.round_s);
        }
    }
    println!(
        "| chunk KiB | round s (median [min, max]) | MB/s per peer | time vs {} KiB |",
        chunks[chunks.len() - 1]
    );
    println!("|---|---|---|---|");
    let base = spread(&times[chunks.len() - 1]).0;
    for (i, &kib) in chunks.iter().enumerate() {
        let (median, min, max) = spread(&times[i]);
        println!(
            "| {kib} | {median:.3} [{min:.3}, {max:.3}] | {:.0} | {:.2}x |",
            chunk_mb / median,
            median / base
        );
    }
}
