//! `cargo bench --bench comm`: gradient codecs and averaging at VGG11's
//! gradient size (128.8 M `f32`, 515 MB), next to a plain copy of the same buffer, in GB/s of
//! `f32` gradient processed.
//!
//! `PEERLESS_BENCH_ELEMENTS=N` changes the size, `PEERLESS_BENCH_REPEAT=R` the repetitions.

use std::time::Instant;

use peerless_comm::CodecSpec;
use peerless_comm::average::mean_of_slices;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn median_s(repeat: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..repeat)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let n: usize = std::env::var("PEERLESS_BENCH_ELEMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128_807_306);
    let repeat: usize = std::env::var("PEERLESS_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let grads: Vec<Vec<f32>> = (0..4)
        .map(|_| (0..n).map(|_| rng.random_range(-1e-2f32..1e-2)).collect())
        .collect();
    let bytes = (4 * n) as f64;
    let gbps = |s: f64| bytes / s / 1e9;
    let mut rows: Vec<(String, f64, f64)> = Vec::new();

    let mut copy = vec![0.0f32; n];
    let s = median_s(repeat, || copy.copy_from_slice(&grads[0]));
    rows.push(("memcpy (reused buffer)".into(), s, gbps(s)));

    let mut out = vec![0.0f32; n];
    let inputs: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
    let s = median_s(repeat, || mean_of_slices(&mut out, &inputs));
    rows.push(("mean of 4 gradients".into(), s, gbps(s)));

    // Signing and verifying one peer's gradient as the round sends it: 8 MiB chunk
    // messages, each signed (Ed25519 over BLAKE3) and verified under the roster.
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
    let mut messages = Vec::new();
    let s = median_s(repeat, || {
        messages.clear();
        peerless_comm::wire::chunk_messages_signed(
            &header,
            payload,
            8 << 20,
            &mut messages,
            signer.signer(),
        );
    });
    rows.push(("frame + sign (8 MiB chunks)".into(), s, gbps(s)));
    let s = median_s(repeat, || {
        for m in &messages {
            let decoded = peerless_comm::wire::decode(m).expect("valid");
            verifier.verify(&decoded).expect("verifies");
        }
    });
    rows.push(("decode + verify (8 MiB chunks)".into(), s, gbps(s)));

    for spec in ["none", "qsgd8", "topk:0.01"] {
        let spec: CodecSpec = spec.parse().expect("valid codec");
        let mut codec = spec.build(1);
        let mut encoded = Vec::new();
        let s = median_s(repeat, || {
            codec.encode(&grads[0], &mut encoded).expect("encode")
        });
        rows.push((
            format!("{spec} encode ({:.1} MB)", encoded.len() as f64 / 1e6),
            s,
            gbps(s),
        ));
        let s = median_s(repeat, || codec.decode(&encoded, &mut out).expect("decode"));
        rows.push((format!("{spec} decode"), s, gbps(s)));
    }

    println!(
        "{n} f32 elements ({:.1} MB), median of {repeat}\n",
        bytes / 1e6
    );
    println!("| operation | ms | GB/s of f32 gradient |\n|---|---|---|");
    for (name, s, g) in rows {
        println!("| {name} | {:.1} | {:.2} |", s * 1e3, g);
    }
}
