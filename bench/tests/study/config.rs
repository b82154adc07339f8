//! The study config and prices files: parsing, validation and coverage, each failure
//! naming the key at fault.

use std::path::Path;

use peerless_bench::study::{
    Aggregation, Architecture, Attack, DatasetKind, Day, Deployment, Prices, ServerlessMode,
    StalePrice, StudyConfig, StudyError,
};

use peerless_runtime::OffloadPolicy;

use super::common::{TEST_PRICES, test_prices};

const MINIMAL: &str = r#"
name = "t"
model = "tiny_cnn"
dataset = "fashion-mnist"
batch_size = 32
batches_per_peer = 2
rounds_per_epoch = 3
epochs = 1
lr = 0.05
[[peer]]
speed = 1.0
[[peer]]
speed = 0.5
"#;

fn with(extra_top: &str) -> String {
    format!("{extra_top}\n{MINIMAL}")
}

fn err(text: &str) -> String {
    StudyConfig::from_toml_str(text)
        .expect_err("the config must be refused")
        .to_string()
}

fn invalid_key(text: &str) -> String {
    match StudyConfig::from_toml_str(text) {
        Err(StudyError::Invalid { key, .. }) => key,
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

#[test]
fn minimal_config_takes_the_documented_defaults() {
    let c = StudyConfig::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.model, Some(Architecture::TinyCnn));
    assert_eq!(c.dataset, DatasetKind::FashionMnist);
    assert_eq!(c.deployments, Deployment::ALL.to_vec());
    assert_eq!(c.serverless, ServerlessMode::Local);
    assert_eq!(c.function_concurrency, 2);
    assert_eq!(
        c.projected_function_concurrency(),
        2,
        "the local one, by default"
    );
    let cloud = format!("{MINIMAL}\n[projection]\nfunction_concurrency = 8\n");
    let cloud = StudyConfig::from_toml_str(&cloud).unwrap();
    assert_eq!(
        (
            cloud.function_concurrency,
            cloud.projected_function_concurrency()
        ),
        (2, 8)
    );
    assert_eq!(c.lambda_memory_mb, 2048);
    assert_eq!(c.instance_type, "t3.medium");
    assert_eq!(c.broker_type, "mq.m5.large");
    assert_eq!(c.seed, 1234);
    assert!(c.evaluation);
    assert_eq!(c.eval_every, None);
    assert_eq!(
        c.eval_interval(),
        2,
        "once per epoch: 3 rounds of 2 batches are 2"
    );
    let c = StudyConfig::from_toml_str(&with("eval_every = 5")).unwrap();
    assert_eq!((c.eval_every, c.eval_interval()), (Some(5), 5));
    assert_eq!(c.peers.len(), 2);
    assert_eq!(c.peer_speed(1), 0.5);
    assert_eq!(c.peer_instance_type(1), "t3.medium");
    assert_eq!(c.rounds(), 3);
    assert_eq!(c.projection.peers, vec![4, 8, 16, 32, 64, 128, 256, 512]);
    assert_eq!(c.projection_instance_types(), vec!["t3.medium".to_string()]);
    assert_eq!(c.per_model().len(), 1);
    assert_eq!(Deployment::Hybrid.offload(), Some(OffloadPolicy::Auto));
    assert_eq!(Deployment::Instance.offload(), None);
}

#[test]
fn unknown_keys_fail_naming_the_key() {
    let e = err(&with("colour = \"blue\""));
    assert!(e.contains("colour"), "{e}");
    let e = err(&MINIMAL.replace("speed = 0.5", "sped = 0.5"));
    assert!(e.contains("sped"), "{e}");
    let e = err(&format!("{MINIMAL}\n[projection]\npeer = [4]\n"));
    assert!(e.contains("unknown field `peer`"), "{e}");
}

#[test]
fn unknown_names_fail_naming_the_value() {
    let e = err(&with("deployments = [\"instance\", \"cloud\"]"));
    assert!(e.contains("cloud") && e.contains("deployments"), "{e}");
    let e = err(&MINIMAL.replace("tiny_cnn", "resnet50"));
    assert!(e.contains("resnet50") && e.contains("model"), "{e}");
    let e = err(&with("serverless = \"azure\""));
    assert!(e.contains("azure"), "{e}");
}

#[test]
fn out_of_range_values_fail_naming_the_key() {
    let no_peers = MINIMAL.split("[[peer]]").next().unwrap().to_string();
    assert_eq!(invalid_key(&no_peers), "peer");
    assert_eq!(
        invalid_key(&MINIMAL.replace("speed = 0.5", "speed = 0.0")),
        "peer[1].speed"
    );
    assert_eq!(
        invalid_key(&MINIMAL.replace("speed = 0.5", "speed = 1.5")),
        "peer[1].speed"
    );
    assert_eq!(
        invalid_key(&MINIMAL.replace("speed = 0.5", "speed = nan")),
        "peer[1].speed"
    );
    assert_eq!(
        invalid_key(&MINIMAL.replace("speed = 0.5", "speed = 0.5\nthreads = 0")),
        "peer[1].threads"
    );
    assert_eq!(
        invalid_key(&MINIMAL.replace("epochs = 1", "epochs = 0")),
        "epochs"
    );
    assert_eq!(
        invalid_key(&MINIMAL.replace("rounds_per_epoch = 3", "rounds_per_epoch = 0")),
        "rounds_per_epoch"
    );
    assert_eq!(
        invalid_key(&MINIMAL.replace("batch_size = 32", "batch_size = 0")),
        "batch_size"
    );
    assert_eq!(
        invalid_key(&MINIMAL.replace("batches_per_peer = 2", "batches_per_peer = 0")),
        "batches_per_peer"
    );
    assert_eq!(invalid_key(&MINIMAL.replace("lr = 0.05", "lr = 0.0")), "lr");
    assert_eq!(
        invalid_key(&MINIMAL.replace("lr = 0.05", "lr = -1.0")),
        "lr"
    );
    assert_eq!(
        invalid_key(&with("lambda_memory_mb = 64")),
        "lambda_memory_mb"
    );
    assert_eq!(
        invalid_key(&with("lambda_memory_mb = 10241")),
        "lambda_memory_mb"
    );
    assert_eq!(invalid_key(&with("deployments = []")), "deployments");
    assert_eq!(
        invalid_key(&with("serverless = \"none\"")),
        "serverless",
        "offloading deployments need functions"
    );
    assert_eq!(
        invalid_key(&with("deployments = [\"hybrid\", \"hybrid\"]")),
        "deployments[1]"
    );
    assert_eq!(
        invalid_key(&with("function_concurrency = 0")),
        "function_concurrency"
    );
    assert_eq!(invalid_key(&with("limit = 0")), "limit");
    assert_eq!(invalid_key(&with("eval_every = 0")), "eval_every");
    let e = err(&with("eval_every = 0"));
    assert!(e.contains("eval_every") && e.contains("at least 1"), "{e}");
    assert_eq!(
        invalid_key(&format!("{MINIMAL}\n[projection]\npeers = [4, 0]\n")),
        "projection.peers[1]"
    );
    assert_eq!(
        invalid_key(&format!(
            "{MINIMAL}\n[projection]\nlambda_memory_mb = [1769, 20000]\n"
        )),
        "projection.lambda_memory_mb[1]"
    );
    assert_eq!(
        invalid_key(&format!(
            "{MINIMAL}\n[projection]\nlambda_concurrency_limit = 0\n"
        )),
        "projection.lambda_concurrency_limit"
    );
    assert_eq!(
        invalid_key(&format!(
            "{MINIMAL}\n[projection]\nmax_useful_vcpus = 7.0\n"
        )),
        "projection.max_useful_vcpus"
    );
    assert_eq!(
        invalid_key(&format!(
            "{MINIMAL}\n[projection]\nfunction_concurrency = 0\n"
        )),
        "projection.function_concurrency"
    );
    assert_eq!(
        invalid_key(&with("serverless = \"stepfn\"\nstore = \"s3://b/p\"")),
        "state_machine_arn"
    );
    assert_eq!(invalid_key(&with("serverless = \"lambda\"")), "store");
    assert_eq!(
        invalid_key(&MINIMAL.replace("model = \"tiny_cnn\"", "")),
        "model"
    );
    assert_eq!(invalid_key(&with("models = [\"vgg11\"]")), "models");
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad-study.toml");
    std::fs::write(&path, MINIMAL.replace("epochs = 1", "epochs = 0")).unwrap();
    let e = StudyConfig::load(&path).unwrap_err().to_string();
    assert!(e.contains("bad-study.toml") && e.contains("epochs"), "{e}");
}

#[test]
fn a_models_list_expands_into_one_study_per_model() {
    let text = MINIMAL.replace(
        "model = \"tiny_cnn\"",
        "models = [\"squeezenet1_1\", \"vgg11\"]",
    );
    let c = StudyConfig::from_toml_str(&text).unwrap();
    let studies = c.per_model();
    assert_eq!(studies.len(), 2);
    assert_eq!(studies[1].0, Architecture::Vgg11);
    assert_eq!(studies[1].1.name, "t-vgg11");
    assert_eq!(studies[1].1.model, Some(Architecture::Vgg11));
    studies[1].1.validate().unwrap();
    assert_eq!(c.model_names(), "squeezenet1_1, vgg11");
}

#[test]
fn models_can_be_narrowed_to_some_of_the_config_s_models() {
    let text = MINIMAL.replace(
        "model = \"tiny_cnn\"",
        "models = [\"squeezenet1_1\", \"mobilenet_v3_small\", \"vgg11\"]",
    );
    let mut c = StudyConfig::from_toml_str(&text).unwrap();
    use Architecture::{MobileNetV3Small, SqueezeNet1_1, TinyCnn, Vgg11};
    c.select_models(&[Vgg11, SqueezeNet1_1, Vgg11]).unwrap();
    assert_eq!(c.models, vec![Vgg11, SqueezeNet1_1]);
    let names: Vec<String> = c.per_model().into_iter().map(|(_, s)| s.name).collect();
    assert_eq!(names, ["t-vgg11", "t-squeezenet1_1"]);
    // Only models the config names; the message says which ones it does.
    let e = c
        .select_models(&[MobileNetV3Small])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mobilenet_v3_small") && e.contains("vgg11, squeezenet1_1"),
        "{e}"
    );
    // A one-model config keeps its layout (no `<name>-<model>` folder).
    let mut one = StudyConfig::from_toml_str(MINIMAL).unwrap();
    one.select_models(&[TinyCnn]).unwrap();
    assert_eq!(one.per_model()[0].1.name, "t");
    assert!(one.select_models(&[Vgg11]).is_err());
}

fn shipped(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

#[test]
fn shipped_configs_parse_validate_and_are_covered_by_the_shipped_prices() {
    for file in [
        "study/default.toml",
        "study/models.toml",
        "study/attack.toml",
        "study/exchange.toml",
    ] {
        let config = StudyConfig::load(&shipped(file)).unwrap_or_else(|e| panic!("{e}"));
        config.validate().unwrap();
        let prices = Prices::load(&config.prices_path()).unwrap_or_else(|e| panic!("{file}: {e}"));
        prices
            .check_covers(&config)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(!config.per_model().is_empty());
    }
    let default = StudyConfig::load(&shipped("study/default.toml")).unwrap();
    assert_eq!(default.model, Some(Architecture::TinyCnn));
    assert_eq!(default.dataset, DatasetKind::FashionMnist);
    let speeds: Vec<f64> = default.peers.iter().map(|p| p.speed).collect();
    assert_eq!(speeds, vec![1.0, 1.0, 0.7, 0.4]);
    let models = StudyConfig::load(&shipped("study/models.toml")).unwrap();
    assert_eq!(
        models.models,
        vec![
            Architecture::SqueezeNet1_1,
            Architecture::MobileNetV3Small,
            Architecture::Vgg11
        ]
    );
}

#[test]
fn shipped_prices_have_provenance_for_every_entry() {
    let prices = Prices::load(&shipped("prices/aws-us-east-1.toml")).unwrap();
    assert_eq!(prices.region, "us-east-1");
    for t in [
        "t3.small",
        "t3.medium",
        "t3.large",
        "c5.large",
        "c5.xlarge",
        "m5.large",
        "g4dn.xlarge",
    ] {
        // `source` is the page the value was read from, which need not be AWS's own.
        let p = prices.instance(t).unwrap();
        assert!(
            p.value > 0.0 && (p.source.starts_with("https://") || p.source.starts_with("http://")),
            "{t}"
        );
        assert!(Day::earliest_of(&p.date).is_ok(), "{t}: {}", p.date);
    }
    assert_eq!(prices.lambda.x86_gb_second.value, 0.0000166667);
    assert_eq!(prices.lambda.x86_request.value, 0.0000002);
    assert_eq!(prices.step_functions.standard_transition.value, 0.000025);
    for broker in ["mq.t3.micro", "mq.m5.large"] {
        assert!(prices.broker_hour(broker).unwrap() > 0.0);
    }
    for (key, p) in prices.entries() {
        assert!(
            !p.date.is_empty() && p.source.starts_with("https://"),
            "{key}"
        );
    }
}

#[test]
fn price_dates_are_a_year_a_month_or_a_day() {
    let day = |y, m, d| Day::new(y, m, d).unwrap();
    assert_eq!(Day::earliest_of("2025"), Ok(day(2025, 1, 1)));
    assert_eq!(Day::earliest_of("2024-06"), Ok(day(2024, 6, 1)));
    assert_eq!(Day::earliest_of("2024-02-29"), Ok(day(2024, 2, 29)));
    for bad in [
        "",
        "25",
        "2025-6",
        "2025-13",
        "2025-02-29",
        "2025-06-31",
        "2025-06-01T00",
        "june 2025",
        "2025-06-01-02",
    ] {
        let e = Day::earliest_of(bad).unwrap_err();
        assert!(e.contains("YYYY, YYYY-MM or YYYY-MM-DD"), "{bad:?}: {e}");
    }
    assert_eq!(Day::new(2026, 2, 29), None);
    assert_eq!(day(2026, 12, 7).to_string(), "2026-12-07");
    // Days since 1970-01-01, as the system clock gives them.
    assert_eq!(Day::from_unix_days(0), day(1970, 1, 1));
    assert_eq!(Day::from_unix_days(-1), day(1969, 12, 31));
    assert_eq!(Day::from_unix_days(11_016), day(2000, 2, 29));
    assert_eq!(Day::from_unix_days(20_794), day(2026, 12, 7));
    assert_eq!(Day::from_unix_days(47_541), day(2100, 3, 1));
    // Exactly a year is not more than a year; a year after February 29 is March 1.
    let leap = day(2024, 2, 29);
    assert!(!day(2025, 12, 7).more_than_a_year_before(day(2026, 12, 7)));
    assert!(day(2025, 12, 6).more_than_a_year_before(day(2026, 12, 7)));
    assert!(!leap.more_than_a_year_before(day(2025, 2, 28)));
    assert!(leap.more_than_a_year_before(day(2025, 3, 1)));

    let undated = TEST_PRICES.replacen("date = \"2024-06\"", "date = \"mid 2024\"", 1);
    assert_eq!(price_key(&undated), "ec2.\"t3.medium\".date");
}

/// [`TEST_PRICES`] with each entry's `date`, in the file's order (t3.medium, c5.large,
/// the four Lambda prices, Step Functions, the three S3 prices, mq.m5.large).
fn prices_dated(dates: [&str; 11]) -> Prices {
    assert_eq!(
        TEST_PRICES.matches("date = \"2024-06\"").count(),
        dates.len()
    );
    let mut text = TEST_PRICES.to_string();
    for date in dates {
        text = text.replacen("date = \"2024-06\"", &format!("date = \"{date}\""), 1);
    }
    Prices::from_toml_str(&text, "dated.toml").unwrap()
}

#[test]
fn prices_dated_more_than_a_year_before_the_run_are_stale() {
    let prices = prices_dated([
        "2025-12-07", // t3.medium: exactly a year
        "2025-12-06", // c5.large: a year and a day
        "2025",       // lambda.x86_gb_second: from 2025-01-01
        "2026",       // lambda.x86_request
        "2025-12",    // lambda.arm64_gb_second: from 2025-12-01
        "2026-01",    // lambda.arm64_request
        "2024-02-29", // step_functions.standard_transition
        "2026-12-07", // s3.put_request: the run's day
        "2025-12-08", // s3.get_request
        "2024-05",    // s3.storage_gb_month
        "2026-11-30", // mq."mq.m5.large"
    ]);
    let stale = |key: &str, date: &str| StalePrice {
        key: key.into(),
        date: date.into(),
    };
    let run_date = Day::new(2026, 12, 7).unwrap();
    assert_eq!(
        prices.stale(run_date),
        vec![
            stale("ec2.\"c5.large\"", "2025-12-06"),
            stale("lambda.x86_gb_second", "2025"),
            stale("lambda.arm64_gb_second", "2025-12"),
            stale("step_functions.standard_transition", "2024-02-29"),
            stale("s3.storage_gb_month", "2024-05"),
        ]
    );
    // A month earlier three are over a year old (from 2025-01-01, 2024-02-29 and
    // 2024-05-01); at the end of 2024 none.
    let earlier = prices.stale(Day::new(2026, 11, 7).unwrap());
    let keys: Vec<&str> = earlier.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "lambda.x86_gb_second",
            "step_functions.standard_transition",
            "s3.storage_gb_month"
        ]
    );
    assert_eq!(prices.stale(Day::new(2024, 12, 31).unwrap()), vec![]);
}

fn price_key(text: &str) -> String {
    match Prices::from_toml_str(text, "p.toml") {
        Err(StudyError::Invalid { key, file, .. }) => {
            assert_eq!(file, "p.toml");
            key
        }
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

#[test]
fn bad_prices_fail_naming_the_key() {
    let negative = TEST_PRICES.replace("value = 0.0000004", "value = -0.0000004");
    assert_eq!(price_key(&negative), "s3.get_request.value");
    let infinite = TEST_PRICES.replace("value = 0.288", "value = inf");
    assert_eq!(price_key(&infinite), "mq.\"mq.m5.large\".value");
    let nan = TEST_PRICES.replace("value = 0.085", "value = nan");
    assert_eq!(price_key(&nan), "ec2.\"c5.large\".value");
    let slow = TEST_PRICES.replace("relative_speed = 2.0", "relative_speed = 0.0");
    assert_eq!(price_key(&slow), "ec2.\"c5.large\".relative_speed");
    let unsourced = TEST_PRICES.replace(
        "source = \"https://aws.amazon.com/step-functions/pricing/\"",
        "source = \"memory\"",
    );
    assert_eq!(
        price_key(&unsourced),
        "step_functions.standard_transition.source"
    );
    let unknown = TEST_PRICES.replace("currency = \"USD\"", "currency = \"USD\"\ntax = 0.2");
    let e = Prices::from_toml_str(&unknown, "p.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("tax") && e.contains("p.toml"), "{e}");
    let missing = TEST_PRICES.replace("[s3.storage_gb_month]", "[s3.storage_gb_day]");
    let e = Prices::from_toml_str(&missing, "p.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("storage_gb_day") || e.contains("storage_gb_month"),
        "{e}"
    );
}

fn missing_price(config: &StudyConfig) -> (String, String) {
    match test_prices().check_covers(config) {
        Err(StudyError::MissingPrice { key, needed_by, .. }) => (key, needed_by),
        other => panic!("expected a MissingPrice error, got {other:?}"),
    }
}

#[test]
fn a_resource_without_a_price_is_refused_before_training() {
    let ok = StudyConfig::from_toml_str(MINIMAL).unwrap();
    test_prices().check_covers(&ok).unwrap();

    let c = StudyConfig::from_toml_str(&with("instance_type = \"t3.huge\"")).unwrap();
    let (key, by) = missing_price(&c);
    assert_eq!(key, "ec2.\"t3.huge\"");
    assert!(by.ends_with("instance_type"), "{by}");

    let c = StudyConfig::from_toml_str(
        &MINIMAL.replace("speed = 0.5", "speed = 0.5\ninstance_type = \"m7.metal\""),
    )
    .unwrap();
    let (key, by) = missing_price(&c);
    assert_eq!(key, "ec2.\"m7.metal\"");
    assert!(by.ends_with("peer[1].instance_type"), "{by}");

    let c = StudyConfig::from_toml_str(&format!(
        "{MINIMAL}\n[projection]\ninstance_types = [\"t3.medium\", \"p5.48xlarge\"]\n"
    ))
    .unwrap();
    assert_eq!(
        missing_price(&c).1,
        "study config: projection.instance_types[1]"
    );

    let c = StudyConfig::from_toml_str(&with("broker_type = \"mq.m5.24xlarge\"")).unwrap();
    let (key, by) = missing_price(&c);
    assert_eq!(key, "mq.\"mq.m5.24xlarge\"");
    assert!(by.ends_with("broker_type"), "{by}");
}

#[test]
fn prices_path_resolves_against_the_config_folder_first() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("p")).unwrap();
    std::fs::write(dir.path().join("p/x.toml"), TEST_PRICES).unwrap();
    let path = dir.path().join("study.toml");
    std::fs::write(&path, with("prices = \"p/x.toml\"")).unwrap();
    let c = StudyConfig::load(&path).unwrap();
    assert_eq!(c.prices_path(), dir.path().join("p/x.toml"));
    Prices::load(&c.prices_path()).unwrap();
    let elsewhere = StudyConfig::from_toml_str(&with("prices = \"p/x.toml\"")).unwrap();
    assert_eq!(elsewhere.prices_path(), Path::new("p/x.toml"));
}

#[test]
fn the_deployments_key_is_also_read_under_its_earlier_name() {
    let c = StudyConfig::from_toml_str(&with("architectures = [\"hybrid\"]")).unwrap();
    assert_eq!(c.deployments, vec![Deployment::Hybrid]);
    let only_instance = with("deployments = [\"instance\"]\nserverless = \"none\"");
    assert_eq!(
        StudyConfig::from_toml_str(&only_instance)
            .unwrap()
            .deployments,
        vec![Deployment::Instance]
    );
}

#[test]
fn attacks_and_aggregations_are_typed_validated_and_planned_as_runs() {
    let attacked = format!("{MINIMAL}attack = \"scale:-10\"\n");
    let c = StudyConfig::from_toml_str(
        &(format!(
            "aggregation = \"median\"\ncompare_aggregations = [\"mean\", \"trimmed-mean:1\"]\n\
         clip_norm = 5.0\ndeployments = [\"instance\"]\n{attacked}"
        )),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.aggregation, Aggregation::Median);
    assert_eq!(c.peers[1].attack, Attack::Scale(-10.0));
    assert_eq!(c.clip_norm, Some(5.0));
    assert_eq!(c.attack_summary(), "peer 1: scale:-10");
    let runs: Vec<(String, Aggregation, bool)> = c
        .runs()
        .into_iter()
        .map(|r| (r.name, r.aggregation, r.attacked))
        .collect();
    assert_eq!(
        runs,
        vec![
            ("instance".into(), Aggregation::Median, true),
            ("instance-mean".into(), Aggregation::Mean, true),
            (
                "instance-trimmed-mean-1".into(),
                Aggregation::TrimmedMean(1),
                true
            ),
            ("instance-clean".into(), Aggregation::Mean, false),
        ]
    );
    // The written config reads back the same.
    let again = StudyConfig::from_toml_str(&c.to_toml_string()).unwrap();
    assert_eq!(again.runs(), c.runs());
    // Without attacks: no clean run.
    let plain = StudyConfig::from_toml_str(MINIMAL).unwrap();
    assert!(!plain.attacks());
    assert_eq!(plain.runs().len(), plain.deployments.len());

    for (text, says) in [
        (with("aggregation = \"avg\""), "trimmed-mean:K"),
        (
            with("compare_aggregations = [\"mean\"]"),
            "compare_aggregations[0]",
        ),
        (with("clip_norm = -1.0"), "clip_norm"),
        (format!("{MINIMAL}attack = \"scale:inf\"\n"), "sign-flip"),
    ] {
        let e = err(&text);
        assert!(e.contains(says), "{text}: {e}");
    }
}

#[test]
fn compared_exchanges_run_the_first_deployment_once_more_each() {
    use peerless_comm::Exchange;
    let c = StudyConfig::from_toml_str(&with(
        "deployments = [\"instance\", \"serverless\"]\ncompare_exchanges = [\"sharded\"]",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.exchange, Exchange::AllToAll);
    let runs: Vec<(String, Deployment, Exchange)> = c
        .runs()
        .into_iter()
        .map(|r| (r.name, r.deployment, r.exchange))
        .collect();
    assert_eq!(
        runs,
        vec![
            ("instance".into(), Deployment::Instance, Exchange::AllToAll),
            (
                "serverless".into(),
                Deployment::Serverless,
                Exchange::AllToAll
            ),
            (
                "instance-sharded".into(),
                Deployment::Instance,
                Exchange::Sharded
            ),
        ]
    );
    assert_eq!(c.exchange_of("instance-sharded"), Exchange::Sharded);
    assert_eq!(c.exchange_of("serverless"), Exchange::AllToAll);
    assert_eq!(c.exchange_of("anything else"), Exchange::AllToAll);
    let again = StudyConfig::from_toml_str(&c.to_toml_string()).unwrap();
    assert_eq!(again.runs(), c.runs());

    for (text, key) in [
        (
            with("compare_exchanges = [\"all-to-all\"]"),
            "compare_exchanges[0]",
        ),
        (
            with("exchange = \"sharded\"\ncompare_exchanges = [\"all-to-all\", \"all-to-all\"]"),
            "compare_exchanges[1]",
        ),
        (
            with("compare_exchanges = [\"sharded\"]\nclip_norm = 1.0"),
            "clip_norm",
        ),
    ] {
        assert_eq!(invalid_key(&text), key, "{text}");
    }
    assert!(err(&with("compare_exchanges = [\"ring\"]")).contains("sharded"));
}
