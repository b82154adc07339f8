//! `peerless bench`: the gradient-step benchmark for users, same numbers as `cargo bench`.

use anyhow::{Context, Result, bail};
use peerless_bench::gradstep::{GradStepBench, markdown_table, measure_with_gradient};
use peerless_bench::torch::measure_torch;
use peerless_models::{Architecture, DeviceChoice, select_device};

use crate::cli::BenchArgs;

pub fn run(args: BenchArgs, device: DeviceChoice) -> Result<()> {
    let device = select_device(device)?;
    let models = if args.models.is_empty() {
        vec![
            Architecture::SqueezeNet1_1,
            Architecture::MobileNetV3Small,
            Architecture::Vgg11,
        ]
    } else {
        args.models
    };
    let batches = if args.batches.is_empty() {
        vec![16, 64]
    } else {
        args.batches
    };
    if args.gradient_out.is_some() && (models.len() != 1 || batches.len() != 1) {
        bail!(
            "--gradient-out writes one gradient: name one --model and one --batch \
             (got {} models and {} batch sizes)",
            models.len(),
            batches.len()
        );
    }
    let mut rows = Vec::new();
    for &arch in &models {
        for &batch in &batches {
            let b = GradStepBench {
                arch,
                batch: batch as usize,
                size: args.size as usize,
                warmup: args.warmup as usize,
                steps: args.steps as usize,
                split: true,
            };
            tracing::info!(model = arch.name(), batch, "timing the gradient step");
            let (mut r, gradient) = measure_with_gradient(&b, &device)
                .with_context(|| format!("benchmarking {} at batch {batch}", arch.name()))?;
            if let Some(path) = &args.gradient_out {
                let bytes: Vec<u8> = gradient.iter().flat_map(|g| g.to_le_bytes()).collect();
                std::fs::write(path, bytes)
                    .with_context(|| format!("writing the gradient to {}", path.display()))?;
            }
            if let Some(python) = &args.torch {
                tracing::info!(model = arch.name(), batch, "timing PyTorch's step");
                r = r.with_torch(&measure_torch(python, &b)?);
            }
            rows.push(r);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", markdown_table(&rows));
    }
    Ok(())
}
