//! Builders shared by the study tests.

use peerless_bench::study::{Prices, StudyConfig};
use peerless_runtime::metrics::{BillingSource, InvocationRecord, RoundMetrics};

/// A valid config with `peers` peers of the given speeds.
pub fn config_with_speeds(speeds: &[f64]) -> StudyConfig {
    let mut text = String::from(
        "name = \"t\"\nmodel = \"tiny_cnn\"\ndataset = \"synthetic\"\nbatch_size = 8\n\
         batches_per_peer = 8\nrounds_per_epoch = 2\nepochs = 2\nlr = 0.1\n",
    );
    for s in speeds {
        text.push_str(&format!("[[peer]]\nspeed = {s}\n"));
    }
    StudyConfig::from_toml_str(&text).expect("valid config")
}

/// Prices with round numbers, independent of the shipped file.
pub const TEST_PRICES: &str = r#"
region = "test-region"
currency = "USD"
[ec2."t3.medium"]
value = 0.0416
unit = "USD per instance-hour"
vcpus = 2
relative_speed = 1.0
date = "2024-06"
source = "https://aws.amazon.com/ec2/pricing/on-demand/"
[ec2."c5.large"]
value = 0.085
unit = "USD per instance-hour"
vcpus = 2
relative_speed = 2.0
date = "2024-06"
source = "https://aws.amazon.com/ec2/pricing/on-demand/"
[lambda.x86_gb_second]
value = 0.0000166667
unit = "USD per GB-second"
date = "2024-06"
source = "https://aws.amazon.com/lambda/pricing/"
[lambda.x86_request]
value = 0.0000002
unit = "USD per request"
date = "2024-06"
source = "https://aws.amazon.com/lambda/pricing/"
[lambda.arm64_gb_second]
value = 0.0000133334
unit = "USD per GB-second"
date = "2024-06"
source = "https://aws.amazon.com/lambda/pricing/"
[lambda.arm64_request]
value = 0.0000002
unit = "USD per request"
date = "2024-06"
source = "https://aws.amazon.com/lambda/pricing/"
[step_functions.standard_transition]
value = 0.000025
unit = "USD per state transition"
date = "2024-06"
source = "https://aws.amazon.com/step-functions/pricing/"
[s3.put_request]
value = 0.000005
unit = "USD per PUT"
date = "2024-06"
source = "https://aws.amazon.com/s3/pricing/"
[s3.get_request]
value = 0.0000004
unit = "USD per GET"
date = "2024-06"
source = "https://aws.amazon.com/s3/pricing/"
[s3.storage_gb_month]
value = 0.023
unit = "USD per GB-month"
date = "2024-06"
source = "https://aws.amazon.com/s3/pricing/"
[mq."mq.m5.large"]
value = 0.288
unit = "USD per broker-hour"
date = "2024-06"
source = "https://aws.amazon.com/amazon-mq/pricing/"
"#;

pub fn test_prices() -> Prices {
    Prices::from_toml_str(TEST_PRICES, "test-prices.toml").expect("valid prices")
}

/// An invocation with the fields the cost model and the simulator read.
pub fn invocation(batch: u32, billed_ms: u64, memory_mb: u32, cold: bool) -> InvocationRecord {
    InvocationRecord {
        batch,
        attempts: 1,
        wall_ms: billed_ms as f64 + 50.0,
        billed_ms,
        memory_mb,
        init_ms: None,
        billing: BillingSource::Estimate,
        cold,
        load_weights_ms: 20.0,
        load_batch_ms: 10.0,
        compute_ms: billed_ms as f64 - 40.0,
        upload_ms: 10.0,
        handler_ms: billed_ms as f64,
        gradient_bytes: 153_128,
    }
}

/// A plausible round for the report test.
pub fn round(rank: u32, round: u64, compute: f64, accuracy: Option<f64>) -> RoundMetrics {
    RoundMetrics {
        rank,
        round,
        epoch: (round / 2) as u32,
        lr: 0.05,
        samples: 256,
        serverless: "none".into(),
        local_batches: 4,
        compute_time_s: compute,
        local_time_s: compute,
        encode_time_s: 0.001,
        send_time_s: 0.004,
        receive_time_s: 0.05,
        decode_time_s: 0.002,
        update_time_s: 0.003,
        eval_time_s: 0.2,
        round_time_s: compute + 0.06 + 0.2,
        bytes_sent: 153_200,
        bytes_received: 153_200,
        messages_sent: 1,
        messages_received: 1,
        contributors: 2,
        train_loss: 2.0 / (1.0 + round as f64),
        train_accuracy: 0.5,
        val_loss: accuracy.map(|_| 1.0 / (1.0 + round as f64)),
        val_accuracy: accuracy,
        test_loss: accuracy.map(|_| 1.1 / (1.0 + round as f64)),
        test_accuracy: accuracy,
        weights_hash: format!("hash{round}"),
        peak_rss_bytes: Some(100 << 20),
        cpu_time_s: Some(1.0 + round as f64),
        ..RoundMetrics::default()
    }
}
