//! The `peerless` binary end to end: tables, JSON, training, splitting, config files and
//! the error paths a user meets first.

mod common;

use common::{json_lines, peerless};
use predicates::prelude::*;
use serde_json::Value;

#[test]
fn models_json_gives_exact_parameter_counts() {
    let out = peerless().args(["models", "--json"]).output().unwrap();
    assert!(out.status.success());
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let count = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing"))["parameters"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(count("squeezenet1_1"), 727_626);
    assert_eq!(count("mobilenet_v3_small"), 1_528_106);
    assert_eq!(count("vgg11"), 128_807_306);
    assert!(count("tiny_cnn") < 100_000);
}

#[test]
fn models_table_is_human_readable() {
    peerless()
        .arg("models")
        .assert()
        .success()
        .stdout(predicate::str::contains("128,807,306").and(predicate::str::contains("515.2")));
}

#[cfg(not(feature = "wgpu"))]
#[test]
fn gpu_device_without_gpu_support_is_a_clear_error() {
    peerless()
        .args([
            "--device", "wgpu", "bench", "--model", "tiny_cnn", "--steps", "1",
        ])
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("no GPU support")
                .and(predicate::str::contains("panicked").not()),
        );
}

#[test]
fn unknown_names_list_the_valid_ones() {
    peerless()
        .args(["train", "--model", "resnet50"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("squeezenet1_1").and(predicate::str::contains("vgg11")));
    peerless()
        .args(["train", "--optimizer", "lbfgs"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("adamw"));
    peerless()
        .args(["train", "--dataset", "imagenet"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("fashion-mnist"));
    peerless()
        .args(["train", "--lr=-1"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("positive"));
}

#[test]
fn a_missing_dataset_names_the_expected_files() {
    let dir = tempfile::tempdir().unwrap();
    peerless()
        .args(["train", "--dataset", "mnist", "--data-dir"])
        .arg(dir.path())
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("train-images-idx3-ubyte")
                .and(predicate::str::contains(dir.path().to_str().unwrap())),
        );
}

#[test]
fn training_on_synthetic_data_lowers_the_loss_and_writes_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("m.jsonl");
    let weights = dir.path().join("w.safetensors");
    peerless()
        .args([
            "train",
            "--dataset",
            "synthetic",
            "--limit",
            "2000",
            "--epochs",
            "3",
            "--lr",
            "0.05",
            "--momentum",
            "0.9",
            "--batch-size",
            "32",
            "--metrics-out",
        ])
        .arg(&metrics)
        .arg("--save")
        .arg(&weights)
        .assert()
        .success();
    let lines = json_lines(&metrics);
    assert_eq!(lines.len(), 3);
    let loss = |i: usize| lines[i]["train_loss"].as_f64().unwrap();
    assert!(loss(2) < loss(0), "train loss {} -> {}", loss(0), loss(2));
    assert!(
        lines[2]["test_accuracy"].as_f64().unwrap() > 0.3,
        "{}",
        lines[2]
    );
    for key in [
        "val_loss",
        "peak_rss_bytes",
        "images_per_s",
        "train_time_s",
        "lr",
    ] {
        assert!(!lines[0][key].is_null(), "{key} missing");
    }
    assert!(std::fs::metadata(&weights).unwrap().len() > 4 * 30_000);
}

#[test]
fn the_fashion_mnist_demo_reaches_85_percent() {
    if !std::path::Path::new("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
        .exists()
    {
        panic!(
            "Fashion-MNIST is not installed: run scripts/setup.sh (apt-get install dataset-fashion-mnist)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("m.jsonl");
    peerless()
        .args([
            "train",
            "--dataset",
            "fashion-mnist",
            "--model",
            "tiny_cnn",
            "--epochs",
            "2",
            "--lr",
            "0.05",
            "--momentum",
            "0.9",
            "--metrics-out",
        ])
        .arg(&metrics)
        .assert()
        .success();
    let lines = json_lines(&metrics);
    let accuracy = lines.last().unwrap()["test_accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.85, "test accuracy {accuracy}");
}

#[test]
fn config_file_sets_flags_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("peerless.toml");
    std::fs::write(
        &config,
        "dataset = \"synthetic\"\nlimit = 400\nepochs = 1\nbatch_size = 50\n",
    )
    .unwrap();
    let metrics = dir.path().join("a.jsonl");
    peerless()
        .arg("--config")
        .arg(&config)
        .args(["train", "--metrics-out"])
        .arg(&metrics)
        .assert()
        .success();
    assert_eq!(json_lines(&metrics).len(), 1);
    let metrics = dir.path().join("b.jsonl");
    peerless()
        .arg("--config")
        .arg(&config)
        .args(["train", "--epochs", "2", "--metrics-out"])
        .arg(&metrics)
        .assert()
        .success();
    assert_eq!(json_lines(&metrics).len(), 2);

    std::fs::write(&config, "epochs = [[1]]\n").unwrap();
    peerless()
        .arg("--config")
        .arg(&config)
        .arg("models")
        .assert()
        .failure()
        .stderr(predicate::str::contains("epochs"));
}

#[test]
fn data_split_writes_shards_batches_and_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    peerless()
        .args([
            "data",
            "split",
            "--dataset",
            "synthetic",
            "--size",
            "3",
            "--batches",
            "4",
            "--to",
        ])
        .arg(&store)
        .assert()
        .success()
        .stdout(predicate::str::contains("3 shards"));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(store.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["peers"], 3);
    assert_eq!(manifest["shards"].as_array().unwrap().len(), 3);
    assert!(store.join("peer-2/batch-0003.bin").exists());

    let empty = dir.path().join("empty");
    peerless()
        .args([
            "data",
            "split",
            "--dataset",
            "synthetic",
            "--size",
            "0",
            "--to",
        ])
        .arg(&empty)
        .assert()
        .failure();
    assert!(!empty.join("manifest.json").exists());
}

#[test]
fn hostile_dataset_files_are_refused_and_nothing_is_written() {
    use std::io::Write;
    let gz = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let idx = |magic: u8, dims: &[u32], body: &[u8]| {
        let mut out = vec![0, 0, 8, magic];
        dims.iter()
            .for_each(|d| out.extend_from_slice(&d.to_be_bytes()));
        out.extend_from_slice(body);
        out
    };
    let mut bomb = idx(3, &[2, 2, 2], &[0; 8]);
    bomb.resize(16 << 20, 0);
    for (name, images, says) in [
        (
            "overflow",
            idx(3, &[u32::MAX, u32::MAX, 2], &[]),
            "over the limit",
        ),
        ("truncated", idx(3, &[2, 28, 28], &[7; 100]), "truncated"),
        ("bomb", gz(&bomb), "once decompressed"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("train-images-idx3-ubyte.gz"), gz(&images)).unwrap();
        if name == "bomb" {
            // Gzipped once: the bomb itself.
            std::fs::write(data.join("train-images-idx3-ubyte.gz"), &images).unwrap();
        }
        std::fs::write(data.join("train-labels-idx1-ubyte"), idx(1, &[2], &[1, 2])).unwrap();
        let to = dir.path().join("store");
        peerless()
            .args(["data", "split", "--dataset", "mnist", "--size", "2"])
            .arg("--data-dir")
            .arg(&data)
            .arg("--to")
            .arg(&to)
            .assert()
            .failure()
            .stderr(predicate::str::contains(says).and(predicate::str::contains("train-images")));
        assert!(!to.exists(), "{name}: the split wrote {}", to.display());
    }
}

#[test]
fn bench_json_has_the_documented_keys() {
    let out = peerless()
        .args([
            "bench", "--model", "tiny_cnn", "--batch", "4", "--size", "16", "--steps", "3",
            "--warmup", "1", "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r["model"], "tiny_cnn");
    assert_eq!(r["batch"], 4);
    let ms = r["ms_per_step"].as_f64().unwrap();
    let ips = r["images_per_s"].as_f64().unwrap();
    assert!(ms > 0.0 && (ips - 4.0 * 1000.0 / ms).abs() < 1e-6 * ips);
}

#[test]
fn bench_gradient_out_is_the_fixed_batchs_gradient_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str| {
        let path = dir.path().join(name);
        peerless()
            .args([
                "bench",
                "--model",
                "tiny_cnn",
                "--batch",
                "4",
                "--size",
                "28",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--json",
                "--gradient-out",
            ])
            .arg(&path)
            .assert()
            .success();
        std::fs::read(path).unwrap()
    };
    let (a, b) = (write("a.f32"), write("b.f32"));
    // `peerless bench` feeds 3-channel images, so tiny_cnn's first layer is 3-channel here.
    let device = peerless_models::select_device(peerless_models::DeviceChoice::Cpu).unwrap();
    let spec =
        peerless_models::ModelSpec::new(peerless_models::Architecture::TinyCnn).with_in_channels(3);
    let count = peerless_models::Model::new(spec, &device, 0)
        .unwrap()
        .num_params() as u64;
    assert_eq!(
        a.len() as u64,
        4 * count,
        "one little-endian f32 per parameter"
    );
    assert_eq!(a, b, "the same model and batch give the same gradient");
    let values: Vec<f32> = a
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert!(values.iter().all(|v| v.is_finite()));
    assert!(
        values.iter().any(|v| *v != 0.0),
        "a real gradient, not zeros"
    );

    peerless()
        .args(["bench", "--model", "tiny_cnn,vgg11", "--gradient-out"])
        .arg(dir.path().join("c.f32"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("one --model and one --batch"));
}

#[test]
fn logs_into_a_pipe_are_plain_text() {
    let out = peerless()
        .env("PEERLESS_LOG", "info")
        .args([
            "bench", "--model", "tiny_cnn", "--batch", "2", "--steps", "1", "--warmup", "0",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("timing the gradient step"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "terminal colours in a redirected log: {log:?}"
    );
}
