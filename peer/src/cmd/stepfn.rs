//! `peerless stepfn generate`: the Step Functions definition of a peer's round, to deploy
//! with the two functions (see lambda/README.md).

use std::io::Write;

use anyhow::{Context, Result};
use peerless_lambda::{RetryPolicy, StateMachineConfig, state_machine_definition};

use crate::cli::StepfnGenerateArgs;

pub fn generate(args: StepfnGenerateArgs) -> Result<()> {
    let mut config = StateMachineConfig::new(
        args.batches,
        args.process_input_arn,
        args.compute_gradient_arn,
    );
    config.max_concurrency = args.max_concurrency;
    config.retry = RetryPolicy {
        interval_seconds: args.retry_interval,
        max_attempts: args.retries,
        ..RetryPolicy::default()
    };
    config.task_timeout_seconds = args.task_timeout;
    config.on_failure = args.on_failure;
    let definition = state_machine_definition(&config)?;
    let text = serde_json::to_string_pretty(&definition)? + "\n";
    match &args.out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(())
}
