//! The per-batch gradient step (forward, loss, backward, flatten into a reused buffer) of a
//! model, timed.

use std::time::Instant;

use peerless_models::{Architecture, Batch, Device, Loss, Model, ModelError, ModelSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// What to measure.
#[derive(Clone, Copy, Debug)]
pub struct GradStepBench {
    pub arch: Architecture,
    pub batch: usize,
    /// Square input size (the reference numbers use 32, i.e. 3x32x32).
    pub size: usize,
    /// Untimed steps first (allocator, caches, thread pools).
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    /// Whether steps may run in parts of the batch, one per core (`Model::step_parts`).
    pub split: bool,
}

/// One row of the benchmark table; `model`, `batch`, `ms_per_step` and `images_per_s` are
/// the keys of `peerless bench --json`.
#[derive(Clone, Debug, Serialize)]
pub struct GradStepResult {
    pub model: String,
    pub batch: usize,
    pub input: String,
    /// Median over the timed steps.
    pub ms_per_step: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub images_per_s: f64,
    pub steps: usize,
    /// Peak resident memory of the process after the measurement, in MiB.
    pub peak_rss_mib: Option<f64>,
    /// CPU seconds per wall second during the timed steps (2.0 = both cores busy).
    pub cores_busy: Option<f64>,
    /// Parts of the batch each step ran in, one per core (1: the batch whole).
    pub parts: usize,
    /// PyTorch's median for the same step in the same run (`--torch`), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pytorch_ms_per_step: Option<f64>,
    /// PyTorch's peak resident memory for the same step, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pytorch_peak_rss_mib: Option<f64>,
    /// Our throughput over PyTorch's (above 1: peerless is faster).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_pytorch: Option<f64>,
    /// The same step with Burn's own convolution instead of our kernels, measured in the
    /// same run (`PEERLESS_BENCH_BASELINE=burn`), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burn_conv_ms_per_step: Option<f64>,
    /// The same step with the batch whole (not in parts), measured in the same run
    /// (`PEERLESS_BENCH_BASELINE=whole`), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whole_batch_ms_per_step: Option<f64>,
}

impl GradStepResult {
    /// Adds PyTorch's timing of the same configuration.
    pub fn with_torch(mut self, torch: &crate::torch::TorchStep) -> Self {
        self.pytorch_ms_per_step = Some(torch.ms_per_step);
        self.pytorch_peak_rss_mib = Some(torch.peak_rss_mib);
        self.vs_pytorch = Some(torch.ms_per_step / self.ms_per_step);
        self
    }
}

/// Runs the measurement on `device`.
pub fn measure(b: &GradStepBench, device: &Device) -> Result<GradStepResult, ModelError> {
    measure_with_gradient(b, device).map(|(result, _)| result)
}

/// Runs the measurement on `device` and also returns the last step's flat gradient: the
/// model (seed 0) and the batch (seed 1) are fixed, so two builds of peerless (another
/// target, another linker) can be compared value by value (`peerless bench --gradient-out`).
pub fn measure_with_gradient(
    b: &GradStepBench,
    device: &Device,
) -> Result<(GradStepResult, Vec<f32>), ModelError> {
    let spec = ModelSpec::new(b.arch).with_in_channels(3);
    let mut model = Model::new(spec, device, 0)?;
    model.set_split(b.split);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let shape = [b.batch, 3, b.size, b.size];
    let images: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let labels: Vec<i64> = (0..b.batch).map(|_| rng.random_range(0..10)).collect();
    let batch = Batch {
        images: &images,
        labels: &labels,
        shape,
    };
    let mut grad = vec![0.0f32; model.num_params()];
    for _ in 0..b.warmup {
        model.grad_step(&batch, Loss::CrossEntropy, &mut grad)?;
    }
    let cpu_start = peerless_runtime::sys::cpu_time_s();
    let wall = Instant::now();
    let mut times = Vec::with_capacity(b.steps);
    for _ in 0..b.steps.max(1) {
        let t = Instant::now();
        model.grad_step(&batch, Loss::CrossEntropy, &mut grad)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let wall = wall.elapsed().as_secs_f64();
    let cores_busy = cpu_start
        .zip(peerless_runtime::sys::cpu_time_s())
        .map(|(a, z)| (z - a) / wall);
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let result = GradStepResult {
        model: b.arch.name().to_string(),
        batch: b.batch,
        input: format!("3x{0}x{0}", b.size),
        ms_per_step: median,
        min_ms: times[0],
        max_ms: times[times.len() - 1],
        images_per_s: b.batch as f64 / (median / 1e3),
        steps: times.len(),
        peak_rss_mib: peerless_runtime::sys::peak_rss_bytes().map(|b| b as f64 / (1 << 20) as f64),
        cores_busy,
        parts: model.step_parts(b.batch),
        pytorch_ms_per_step: None,
        pytorch_peak_rss_mib: None,
        vs_pytorch: None,
        burn_conv_ms_per_step: None,
        whole_batch_ms_per_step: None,
    };
    Ok((result, grad))
}

/// Formats results as the Markdown table that `bench/README.md` records, with PyTorch's
/// columns when any row has them.
pub fn markdown_table(rows: &[GradStepResult]) -> String {
    let opt = |v: Option<f64>, digits: usize| v.map_or("–".into(), |v| format!("{v:.digits$}"));
    let torch = rows.iter().any(|r| r.pytorch_ms_per_step.is_some());
    let burn = rows.iter().any(|r| r.burn_conv_ms_per_step.is_some());
    let whole = rows.iter().any(|r| r.whole_batch_ms_per_step.is_some());
    let mut header = vec![
        "model",
        "batch",
        "input",
        "parts",
        "median ms/step",
        "min–max ms",
        "images/s",
        "cores busy",
        "peak RSS MiB",
    ];
    if torch {
        header.extend([
            "PyTorch ms/step",
            "peerless/PyTorch throughput",
            "PyTorch peak RSS MiB",
        ]);
    }
    if burn {
        header.push("with Burn's own ops ms/step");
    }
    if whole {
        header.push("batch whole ms/step");
    }
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    let mut s = line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    s.push_str(&line(&vec!["---".to_string(); header.len()]));
    for r in rows {
        let mut cells = vec![
            r.model.clone(),
            r.batch.to_string(),
            r.input.clone(),
            r.parts.to_string(),
            format!("{:.1}", r.ms_per_step),
            format!("{:.1}–{:.1}", r.min_ms, r.max_ms),
            format!("{:.1}", r.images_per_s),
            opt(r.cores_busy, 2),
            opt(r.peak_rss_mib, 0),
        ];
        if torch {
            cells.extend([
                opt(r.pytorch_ms_per_step, 1),
                opt(r.vs_pytorch, 2),
                opt(r.pytorch_peak_rss_mib, 0),
            ]);
        }
        if burn {
            cells.push(opt(r.burn_conv_ms_per_step, 1));
        }
        if whole {
            cells.push(opt(r.whole_batch_ms_per_step, 1));
        }
        s.push_str(&line(&cells));
    }
    s
}
