//! `cargo bench --bench comm`: gradient codecs and averaging at VGG11's
//! gradient size (128.8 M `f32`, 515 MB), next to a plain copy of the same buffer, in GB/s of
//! `f32` gradient processed.
//!
//! Each codec's encode and decode run twice: inside a one-thread rayon pool (`1 core`) and
//! on the default pool (`all cores`). Each row is the median of the repetitions, with the
//! fastest and slowest repetition's GB/s as the spread.
//!
//! `PEERLESS_BENCH_ELEMENTS=N` changes the size, `PEERLESS_BENCH_REPEAT=R` the repetitions,
//! `PEERLESS_BENCH_FILTER=TEXT` runs only the rows whose name contains `TEXT` (e.g. `qsgd8`).

use std::time::Instant;

use peerless_comm::CodecSpec;
use peerless_comm::average::mean_of_slices;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Times of `repeat` runs of `f` after one warm-up run, sorted.
fn times_s(repeat: usize, mut f: impl FnMut()) -> Vec<f64> {
    f();
    let mut t: Vec<f64> = (0..repeat)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t
}

struct Rows {
    filter: Option<String>,
    repeat: usize,
    bytes: f64,
    /// Name, sorted times in seconds.
    rows: Vec<(String, Vec<f64>)>,
}

impl Rows {
    fn wanted(&self, name: &str) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|f| name.contains(f.as_str()))
    }

    /// Times `f` under `name` unless the filter excludes it.
    fn run(&mut self, name: impl Into<String>, f: impl FnMut()) {
        let name = name.into();
        if self.wanted(&name) {
            let t = times_s(self.repeat, f);
            self.rows.push((name, t));
        }
    }

    fn print(&self) {
        let gbps = |s: f64| self.bytes / s / 1e9;
        println!(
            "| operation | ms (median) | GB/s of f32 gradient (median) | GB/s min-max |\n|---|---|---|---|"
        );
        for (name, t) in &self.rows {
            let median = t[t.len() / 2];
            println!(
                "| {name} | {:.1} | {:.2} | {:.2}-{:.2} |",
                median * 1e3,
                gbps(median),
                gbps(t[t.len() - 1]),
                gbps(t[0]),
            );
        }
    }
}

fn main() {
    let n: usize = std::env::var("PEERLESS_BENCH_ELEMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128_807_306);
    let repeat: usize = std::env::var("PEERLESS_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let filter = std::env::var("PEERLESS_BENCH_FILTER")
        .ok()
        .filter(|f| !f.is_empty());
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let grads: Vec<Vec<f32>> = (0..4)
        .map(|_| (0..n).map(|_| rng.random_range(-1e-2f32..1e-2)).collect())
        .collect();
    let bytes = (4 * n) as f64;
    let mut rows = Rows {
        filter,
        repeat,
        bytes,
        rows: Vec::new(),
    };
    let one_core = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("one-thread pool");

    let mut copy = vec![0.0f32; n];
    rows.run("memcpy (reused buffer)", || copy.copy_from_slice(&grads[0]));

    let mut out = vec![0.0f32; n];
    let inputs: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
    rows.run("mean of 4 gradients", || mean_of_slices(&mut out, &inputs));

    // Signing and verifying one peer's gradient as the round sends it: 8 MiB chunk
    // messages, each signed (Ed25519 over BLAKE3) and verified under the roster.
    if rows.wanted("frame + sign") || rows.wanted("decode + verify") {
        let keys = tempfile::tempdir().expect("temp dir");
        peerless_comm::auth::generate(keys.path(), 2).expect("keys");
        let signer = peerless_comm::Keyring::load(keys.path(), 0, 2).expect("rank 0 key");
        let verifier = peerless_comm::Keyring::load(keys.path(), 1, 2).expect("rank 1 key");
        let payload: &[u8] = bytemuck::cast_slice(&grads[0]);
        let header = peerless_comm::wire::Header::gradient(
            peerless_comm::RunId::from_name("bench"),
            0,
            0,
            2,
            0,
            CodecSpec::None,
            n as u64,
        );
        let frame = |messages: &mut Vec<_>| {
            messages.clear();
            peerless_comm::wire::chunk_messages_signed(
                &header,
                payload,
                8 << 20,
                messages,
                signer.signer(),
            );
        };
        let mut messages = Vec::new();
        frame(&mut messages);
        rows.run("frame + sign (8 MiB chunks)", || frame(&mut messages));
        rows.run("decode + verify (8 MiB chunks)", || {
            for m in &messages {
                let decoded = peerless_comm::wire::decode(m).expect("valid");
                verifier.verify(&decoded).expect("verifies");
            }
        });
    }

    let mut sizes = Vec::new();
    for spec in ["none", "qsgd8", "topk:0.01"] {
        let spec: CodecSpec = spec.parse().expect("valid codec");
        let names = [
            format!("{spec} encode (1 core)"),
            format!("{spec} encode (all cores)"),
            format!("{spec} decode (1 core)"),
            format!("{spec} decode (all cores)"),
        ];
        if !names.iter().any(|name| rows.wanted(name)) {
            continue;
        }
        let mut codec = spec.build(1);
        let mut encoded = Vec::new();
        codec.encode(&grads[0], &mut encoded).expect("encode");
        sizes.push(format!("{spec} {:.1} MB", encoded.len() as f64 / 1e6));
        let [enc1, enc, dec1, dec] = names;
        rows.run(enc1, || {
            one_core.install(|| codec.encode(&grads[0], &mut encoded).expect("encode"))
        });
        rows.run(enc, || {
            codec.encode(&grads[0], &mut encoded).expect("encode")
        });
        rows.run(dec1, || {
            one_core.install(|| codec.decode(&encoded, &mut out).expect("decode"))
        });
        rows.run(dec, || codec.decode(&encoded, &mut out).expect("decode"));
    }

    println!(
        "{n} f32 elements ({:.1} MB), {} rayon threads, median of {repeat} after one warm-up\n",
        bytes / 1e6,
        rayon::current_num_threads(),
    );
    rows.print();
    if !sizes.is_empty() {
        println!("\npayloads: {}", sizes.join(", "));
    }
}
