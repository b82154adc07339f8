//! `--config FILE` for every command, through the `peerless` binary: keys land after the
//! full subcommand path, the command line wins, one file serves several commands (keys of
//! other commands are skipped), unknown keys and bad files are usage errors naming the
//! file, and `peerless study` keeps reading its own study file.

mod common;

use std::path::{Path, PathBuf};

use common::{json_lines, peerless};
use predicates::prelude::*;
use serde_json::Value;

/// Writes `text` to `dir/name` and returns the path.
fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `text` with `{NAME}` replaced by `path`, as a TOML string (paths go into the files).
fn with_path(text: &str, name: &str, path: &Path) -> String {
    text.replace(
        &format!("{{{name}}}"),
        &format!("{:?}", path.display().to_string()),
    )
}

/// `peerless ARGS --config FILE`.
fn with_config(args: &[&str], config: &Path) -> assert_cmd::Command {
    let mut cmd = peerless();
    cmd.args(args).arg("--config").arg(config);
    cmd
}

/// Runs `cmd`, a `data split` of `peers` shards into `store`, and returns its manifest.
fn split(mut cmd: assert_cmd::Command, store: &Path, peers: usize) -> Value {
    cmd.assert()
        .success()
        .stdout(predicate::str::contains(format!("{peers} shards")));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(store.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["peers"], peers);
    manifest
}

#[test]
fn one_file_serves_data_split_and_peer() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let metrics = dir.path().join("m.jsonl");
    // split takes dataset, size and to; peer takes dataset, size, rank, store and the
    // training keys; each skips the other's.
    let text = r#"
dataset = "synthetic"
size = 1
to = {STORE}
store = {STORE}
rank = 0
epochs = 1
rounds_per_epoch = 2
batch_size = 100
lr = 0.07
metrics_out = {METRICS}
"#;
    let text = with_path(&with_path(text, "STORE", &store), "METRICS", &metrics);
    let config = file(dir.path(), "shared.toml", &text);
    split(with_config(&["data", "split"], &config), &store, 1);
    with_config(&["peer"], &config).assert().success();
    let rounds = json_lines(&metrics);
    assert_eq!(rounds.len(), 2, "rounds_per_epoch from the file");
    assert!((rounds[0]["lr"].as_f64().unwrap() - 0.07).abs() < 1e-6);
}

#[test]
fn data_split_gets_keys_after_the_full_subcommand_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let text = with_path(
        "dataset = \"synthetic\"\nsize = 2\nto = {STORE}\nbatches = 2\n",
        "STORE",
        &store,
    );
    let config = file(dir.path(), "split.toml", &text);
    // The config before the subcommand path, the way a global flag is often written.
    let mut cmd = peerless();
    cmd.arg("--config")
        .arg(&config)
        .args(["data", "split", "--batches", "3"]);
    let manifest = split(cmd, &store, 2);
    assert_eq!(manifest["shards"].as_array().unwrap().len(), 2);
    assert!(
        store.join("peer-1/batch-0002.bin").exists(),
        "--batches 3 on the command line beats the file's 2"
    );
}

#[test]
fn models_skips_the_training_keys_of_a_shared_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = file(dir.path(), "shared.toml", "lr = 0.1\njson = true\n");
    let out = with_config(&["models"], &config)
        .env("PEERLESS_LOG", "debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(rows.iter().any(|r| r["name"] == "tiny_cnn"));
    assert!(
        stderr.contains("`lr`"),
        "the skipped key is logged: {stderr}"
    );
    // PEERLESS_CONFIG names the file when --config does not (an unknown key shows it is
    // read without listing every model again).
    let config = file(dir.path(), "env.toml", "lr = 0.1\nlrr = 0.1\n");
    peerless()
        .arg("models")
        .env("PEERLESS_CONFIG", &config)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("env.toml: unknown key `lrr`"));
}

#[test]
fn run_takes_training_keys_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let text = r#"
dataset = "synthetic"
model = "tiny_cnn"
limit = 800
epochs = 1
rounds_per_epoch = 2
batch_size = 100
lr = 0.07
threads = [1, 1]
store = {STORE}
"#;
    let config = file(dir.path(), "run.toml", &with_path(text, "STORE", &store));
    let first = dir.path().join("first");
    with_config(&["run", "--peers", "2"], &config)
        .arg("--metrics-dir")
        .arg(&first)
        .assert()
        .success();
    let rounds = json_lines(&first.join("peer-1.jsonl"));
    assert_eq!(rounds.len(), 2);
    assert!((rounds[0]["lr"].as_f64().unwrap() - 0.07).abs() < 1e-6);

    let second = dir.path().join("second");
    peerless()
        .args(["run", "--peers", "2", "--lr", "0.03", "--metrics-dir"])
        .arg(&second)
        .arg("--config")
        .arg(&config)
        .args(["--rounds-per-epoch", "1"])
        .assert()
        .success();
    let rounds = json_lines(&second.join("peer-0.jsonl"));
    assert_eq!(rounds.len(), 1, "--rounds-per-epoch 1 beats the file's 2");
    assert!((rounds[0]["lr"].as_f64().unwrap() - 0.03).abs() < 1e-6);
}

#[test]
fn peer_gets_the_file_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = file(
        dir.path(),
        "peer.toml",
        "size = 2\nrank = 5\nrun_id = \"x\"\nto = \"elsewhere\"\njson = true\n",
    );
    with_config(&["peer"], &config)
        .assert()
        .failure()
        .stderr(predicate::str::contains("--rank 5 must be below --size 2"));
}

#[test]
fn unknown_keys_and_bad_files_are_usage_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // Should a case not fail, the training it starts is short.
    let train = [
        "train",
        "--dataset",
        "synthetic",
        "--limit",
        "100",
        "--epochs",
        "1",
    ];
    let cases = [
        (
            "lrr = 0.1\n",
            &["unknown key `lrr`", "no command has --lrr", "`lr`"][..],
        ),
        (
            "bacth_size = 8\n",
            &["`bacth_size`", "did you mean `batch_size`"],
        ),
        ("lr = [0.1, 0.2]\n", &["`lr`", "--lr takes one value"]),
        ("quiet = \"yes\"\n", &["`quiet`", "--quiet is a switch"]),
        ("config = \"other.toml\"\n", &["`config`", "do not nest"]),
        ("batch = 8\nbatch_size = 16\n", &["`batch`", "`batch_size`"]),
        ("json = [[1]]\n", &["`json`", "string, number, boolean"]),
        ("lr = \n", &["parsing config file"]),
    ];
    for (text, needles) in cases {
        let config = file(dir.path(), "bad.toml", text);
        let out = with_config(&train, &config).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert!(stderr.contains("bad.toml"), "{text}: {stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{text}: no {needle} in {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let missing = dir.path().join("missing.toml");
    with_config(&["models"], &missing).assert().code(2).stderr(
        predicate::str::contains("reading config file")
            .and(predicate::str::contains("missing.toml")),
    );
    // A value of the wrong type is clap's error, which names the flag and the key.
    let config = file(dir.path(), "typed.toml", "epochs = \"many\"\n");
    with_config(&["train"], &config).assert().code(2).stderr(
        predicate::str::contains("--epochs")
            .and(predicate::str::contains("typed.toml, key `epochs`")),
    );
}

#[test]
fn study_reads_its_own_file() {
    let dir = tempfile::tempdir().unwrap();
    // Study keys are no flags (`batches_per_peer`, `[[peer]]`): read as flags this file
    // would be refused; the study itself refuses only the unknown `colour`.
    let text = r#"
name = "t"
model = "tiny_cnn"
dataset = "synthetic"
batches_per_peer = 2
colour = "blue"
[[peer]]
speed = 1.0
"#;
    let config = file(dir.path(), "study.toml", text);
    let out = dir.path().join("out");
    with_config(&["study"], &config)
        .arg("--out")
        .arg(&out)
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("colour")
                .and(predicate::str::contains("no command has").not()),
        );
    assert!(!out.exists());
}
