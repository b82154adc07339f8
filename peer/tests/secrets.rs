//! Secrets stay secret (issue 16, item 7): a password planted in broker URLs (from the
//! environment, flags and files; well-formed, malformed, unreachable, refused) never shows
//! in `--help`, errors, logs (at debug level), metrics, stores, a study's saved config or
//! its report. The real runs log in to the shared RabbitMQ as `peerless-planted` with the
//! password `PLANTEDpw` (created here when missing, with `rabbitmqctl`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{SMALL_TRAINING, peerless, unique};

/// What every planted password contains; nothing peerless writes may contain it.
const PLANTED: &str = "PLANTED";
/// A broker login that works, with a planted password.
const GOOD: &str = "amqp://peerless-planted:PLANTEDpw@127.0.0.1:5672/%2f";

/// Creates the broker user of [`GOOD`] (idempotent; an existing user is kept).
fn ensure_planted_user() {
    let run = |args: &[&str]| {
        std::process::Command::new("rabbitmqctl")
            .args(args)
            .output()
            .expect("rabbitmqctl (the tests need the local RabbitMQ)")
    };
    let users = run(&["list_users"]);
    if !String::from_utf8_lossy(&users.stdout).contains("peerless-planted") {
        run(&["add_user", "peerless-planted", "PLANTEDpw"]);
    }
    let set = run(&[
        "set_permissions",
        "-p",
        "/",
        "peerless-planted",
        ".*",
        ".*",
        ".*",
    ]);
    assert!(set.status.success(), "{set:?}");
}

/// Every file below `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Asserts that neither the output nor any file below `dirs` holds a planted password;
/// returns how many files were searched.
fn assert_clean(what: &str, output: &Output, dirs: &[&Path]) -> usize {
    for (stream, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        let text = String::from_utf8_lossy(bytes);
        assert!(
            !text.contains(PLANTED),
            "{what}: {stream} shows a password:\n{text}"
        );
    }
    let mut searched = 0;
    for dir in dirs {
        for file in files(dir) {
            let bytes = std::fs::read(&file).unwrap();
            let found = bytes
                .windows(PLANTED.len())
                .any(|w| w == PLANTED.as_bytes());
            assert!(!found, "{what}: {} holds a password", file.display());
            searched += 1;
        }
    }
    searched
}

#[test]
fn help_hides_secret_environment_values() {
    for args in [
        &["run", "--help"][..],
        &["peer", "--help"],
        &["data", "split", "--help"],
    ] {
        let output = peerless()
            .args(args)
            .env(
                "PEERLESS_BROKER",
                "amqp://guest:PLANTEDenv@10.0.0.1:5672/%2f",
            )
            .env("PEERLESS_STORE", "s3://bucket/PLANTEDstore")
            .env("AWS_ENDPOINT_URL_S3", "http://key:PLANTEDs3@127.0.0.1:5000")
            .env(
                "AWS_ENDPOINT_URL_LAMBDA",
                "http://key:PLANTEDl@127.0.0.1:9001",
            )
            .env(
                "AWS_ENDPOINT_URL_SFN",
                "http://key:PLANTEDsfn@127.0.0.1:8083",
            )
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        assert_clean(&format!("{args:?}"), &output, &[]);
        let help = String::from_utf8_lossy(&output.stdout);
        // The variables are still documented, only their values are hidden.
        assert!(
            help.contains("AWS_ENDPOINT_URL_S3") && help.contains("PEERLESS_STORE"),
            "{help}"
        );
    }
}

/// `peerless run` of 2 small peers with `broker`, in `dir`; debug logs.
fn run_with_broker(dir: &Path, broker: &str, extra: &[&str]) -> Output {
    peerless()
        .args(["run", "--peers", "2", "--limit", "300", "--epochs", "1"])
        .args(SMALL_TRAINING)
        .arg("--store")
        .arg(dir.join("store"))
        .arg("--metrics-dir")
        .arg(dir.join("metrics"))
        .args(["--run-id", &unique("secrets")])
        .args(extra)
        .env("PEERLESS_BROKER", broker)
        .env("PEERLESS_LOG", "debug")
        .output()
        .unwrap()
}

#[test]
fn failing_broker_urls_are_masked_in_every_error() {
    ensure_planted_user();
    for broker in [
        // Malformed: no `//`, no scheme, a bad port, a password holding `@` and `:`.
        "amqp:peerless-planted:PLANTEDpw@127.0.0.1:5672",
        "peerless-planted:PLANTEDpw@127.0.0.1:5672",
        "amqp://peerless-planted:PLANTED:p@w@127.0.0.1:56x72/%2f",
        // Well-formed but refused: a wrong password, percent-encoded or not.
        "amqp://peerless-planted:PLANTEDwrong@127.0.0.1:5672/%2f",
        "amqp://peerless-planted:PLANTED%40wrong@127.0.0.1:5672/%2f",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let output = run_with_broker(dir.path(), broker, &[]);
        assert!(!output.status.success(), "{broker}: the run succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("error:"), "{broker}: {stderr}");
        assert_clean(broker, &output, &[dir.path()]);
    }
}

#[test]
fn a_config_file_with_a_password_is_not_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("peer.toml");
    // A syntax error on the line holding the URL: the parser quotes that line.
    std::fs::write(
        &config,
        "broker = \"amqp://guest:PLANTEDcfg@127.0.0.1:5672/%2f\" oops\n",
    )
    .unwrap();
    let output = peerless()
        .arg("--config")
        .arg(&config)
        .args(["run", "--peers", "2"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("peer.toml"),
        "{output:?}"
    );
    assert_clean("config file", &output, &[]);
}

#[test]
fn a_real_run_over_the_broker_writes_no_password() {
    ensure_planted_user();
    let dir = tempfile::tempdir().unwrap();
    let output = run_with_broker(dir.path(), GOOD, &["--rounds-per-epoch", "2"]);
    assert!(output.status.success(), "{output:?}");
    let searched = assert_clean("run", &output, &[dir.path()]);
    assert!(searched >= 3, "only {searched} files written");
    let metrics = common::peer_metrics(&dir.path().join("metrics"), 2);
    assert!(metrics.iter().all(|m| m.len() == 2), "{metrics:?}");
}

#[test]
fn a_study_over_the_broker_saves_no_password_and_resumes() {
    ensure_planted_user();
    let dir = tempfile::tempdir().unwrap();
    let prices = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/prices/aws-us-east-1.toml");
    let config = dir.path().join("my-study.toml");
    std::fs::write(
        &config,
        format!(
            r#"
name = "secret"
model = "tiny_cnn"
dataset = "synthetic"
limit = 600
batch_size = 32
batches_per_peer = 2
rounds_per_epoch = 2
epochs = 1
lr = 0.05
eval_limit = 100
deployments = ["instance", "hybrid"]
function_concurrency = 1
broker = "{GOOD}"
prices = "{}"
[[peer]]
speed = 1.0
[[peer]]
speed = 1.0
[projection]
peers = [2, 8]
"#,
            prices.display()
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let study = || {
        peerless()
            .arg("study")
            .arg("--config")
            .arg(&config)
            .arg("--out")
            .arg(&out)
            .env("PEERLESS_LOG", "debug")
            .output()
            .unwrap()
    };
    let first = study();
    assert!(first.status.success(), "{first:?}");
    let saved = std::fs::read_to_string(out.join("study.toml")).unwrap();
    assert!(
        saved.contains("amqp://peerless-planted:***@127.0.0.1:5672/%2f"),
        "{saved}"
    );
    assert!(
        std::fs::read_to_string(out.join("report.md"))
            .unwrap()
            .contains("***@")
    );
    let searched = assert_clean("study", &first, &[&out]);
    assert!(searched >= 8, "only {searched} files written");

    // Resuming reads the broker from the config given, not the masked copy.
    std::fs::remove_file(out.join("hybrid/done.json")).unwrap();
    let again = study();
    assert!(again.status.success(), "{again:?}");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("instance already finished"), "{stderr}");
    assert!(stderr.contains("running hybrid"), "{stderr}");
    assert_clean("resumed study", &again, &[&out]);
}
