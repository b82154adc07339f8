//! `peerless run --peers N`: N peers on this machine, one thread each, over the in-process
//! transport or a real broker, with a per-round summary at the end.

use std::collections::BTreeSet;

use anyhow::Result;
use peerless_models::{DeviceChoice, select_device};
use peerless_runtime::{NodeSummary, RoundMetrics, run_local};

use crate::cli::RunArgs;

pub fn run(args: RunArgs, device: DeviceChoice) -> Result<()> {
    let config = args.to_config()?;
    let device = select_device(device)?;
    let summaries = run_local(&config, &device)?;
    print_summary(&summaries);
    Ok(())
}

fn print_summary(summaries: &[NodeSummary]) {
    let rounds = summaries.iter().map(|s| s.rounds.len()).min().unwrap_or(0);
    println!(
        "{:>5} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9}  weights",
        "round", "compute", "max comp", "wait", "round", "MB sent", "offloaded", "loss", "test acc"
    );
    for r in 0..rounds {
        let ms: Vec<_> = summaries.iter().map(|s| &s.rounds[r]).collect();
        let mean =
            |f: fn(&RoundMetrics) -> f64| ms.iter().map(|m| f(m)).sum::<f64>() / ms.len() as f64;
        let max_compute = ms.iter().map(|m| m.compute_time_s).fold(0.0, f64::max);
        let hashes: BTreeSet<_> = ms.iter().map(|m| m.weights_hash.as_str()).collect();
        let offloaded: usize = ms.iter().map(|m| m.offloaded_batches).sum();
        let batches: usize = ms
            .iter()
            .map(|m| m.offloaded_batches + m.local_batches)
            .sum();
        println!(
            "{:>5} {:>9.2}s {:>9.2}s {:>9.2}s {:>9.2}s {:>10.2} {:>9} {:>9.4} {:>9} {}",
            r,
            mean(|m| m.compute_time_s),
            max_compute,
            mean(|m| m.receive_time_s),
            mean(|m| m.round_time_s),
            ms.iter().map(|m| m.bytes_sent).sum::<u64>() as f64 / 1e6,
            format!("{offloaded}/{batches}"),
            mean(|m| m.train_loss),
            ms[0]
                .test_accuracy
                .map_or("-".to_string(), |a| format!("{:.2}%", 100.0 * a)),
            if hashes.len() == 1 {
                "identical".to_string()
            } else {
                format!("DIFFER ({} distinct)", hashes.len())
            }
        );
    }
}
