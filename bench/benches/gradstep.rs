//! `cargo bench -p peerless-bench --bench gradstep`: the per-batch gradient step of each
//! study model at batch 16 and 64 on 3x32x32 inputs, on the CPU (Burn's flex backend).
//!
//! `PEERLESS_BENCH_MODELS=squeezenet1_1,vgg11` and `PEERLESS_BENCH_STEPS=N` narrow a run;
//! `PEERLESS_TORCH_PYTHON=/path/to/python` (with torch and torchvision) adds PyTorch's step
//! measured in the same run, and the throughput ratio; `PEERLESS_BENCH_BASELINE=burn` times
//! each step a second time with Burn's own operations instead of our kernels, `=whole` with
//! the batch whole instead of in parts (both: `burn,whole`).

use peerless_bench::gradstep::{GradStepBench, markdown_table, measure};
use peerless_bench::torch::{TORCH_PYTHON_ENV, measure_torch};
use peerless_models::kernels::burn_ext as kernels;
use peerless_models::{Architecture, Device};

fn main() {
    peerless_models::memory::retain_freed_memory();
    // `cargo bench` passes `--bench`; a filter argument would select models.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let models: Vec<Architecture> = match std::env::var("PEERLESS_BENCH_MODELS") {
        Ok(list) => list
            .split(',')
            .map(|m| {
                m.parse()
                    .unwrap_or_else(|e| panic!("PEERLESS_BENCH_MODELS: {e}"))
            })
            .collect(),
        Err(_) => vec![
            Architecture::SqueezeNet1_1,
            Architecture::MobileNetV3Small,
            Architecture::Vgg11,
        ],
    };
    let steps: usize = std::env::var("PEERLESS_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let device = Device::flex();
    let torch = std::env::var_os(TORCH_PYTHON_ENV).map(std::path::PathBuf::from);
    let baselines = std::env::var("PEERLESS_BENCH_BASELINE").unwrap_or_default();
    let baseline = |name: &str| baselines.split(',').any(|b| b.trim() == name);
    let (burn_baseline, whole_baseline) = (baseline("burn"), baseline("whole"));
    let mut rows = Vec::new();
    for arch in models {
        if !filter.is_empty() && !filter.iter().any(|f| arch.name().contains(f.as_str())) {
            continue;
        }
        for batch in [16, 64] {
            // Enough steps for a stable median without making VGG11 take minutes.
            let default_steps = if arch == Architecture::Vgg11 { 5 } else { 20 };
            let b = GradStepBench {
                arch,
                batch,
                size: 32,
                warmup: 2,
                steps: if steps > 0 { steps } else { default_steps },
                split: true,
            };
            let mut r = measure(&b, &device).unwrap_or_else(|e| panic!("{}: {e}", arch.name()));
            if burn_baseline {
                kernels::set_enabled(false);
                let burn = measure(&b, &device).unwrap_or_else(|e| panic!("{}: {e}", arch.name()));
                kernels::set_enabled(true);
                r.burn_conv_ms_per_step = Some(burn.ms_per_step);
            }
            if whole_baseline {
                let b = GradStepBench { split: false, ..b };
                let whole = measure(&b, &device).unwrap_or_else(|e| panic!("{}: {e}", arch.name()));
                r.whole_batch_ms_per_step = Some(whole.ms_per_step);
            }
            if let Some(python) = &torch {
                let t = measure_torch(python, &b).unwrap_or_else(|e| panic!("{e}"));
                r = r.with_torch(&t);
            }
            eprintln!(
                "{:>20} batch {:>3}: {:>8.1} ms/step  {:>8.1} images/s",
                r.model, r.batch, r.ms_per_step, r.images_per_s
            );
            rows.push(r);
        }
    }
    println!("{}", markdown_table(&rows));
}
