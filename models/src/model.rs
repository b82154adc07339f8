use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use std::sync::Mutex;

use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::arch::{Init, Net};
use crate::kernels::{burn_ext, sink};
use crate::layers::dropout;
use crate::params::{self, ParamTable};
use crate::parts;
use crate::{Loss, ModelError, ModelSpec, Result};

/// One batch of images as the models consume them: NCHW `f32` pixels (already normalised)
/// and integer class labels.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// `shape[0] * shape[1] * shape[2] * shape[3]` values, NCHW.
    pub images: &'a [f32],
    /// One class index per image.
    pub labels: &'a [i64],
    /// `[batch, channels, height, width]`.
    pub shape: [usize; 4],
}

/// What one forward pass measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepStats {
    /// Mean loss over the batch.
    pub loss: f32,
    /// Number of correctly classified images.
    pub correct: usize,
    /// Number of images.
    pub samples: usize,
}

/// A network on a device together with its flat parameter layout: the unit every peer and
/// every function holds. Training-mode passes run on the device's autodiff flavour.
pub struct Model {
    spec: ModelSpec,
    net: Net,
    device: Device,
    table: ParamTable,
    /// Whether gradient steps may run in parts of the batch ([`crate::parts`]).
    split: bool,
    /// The gradient buffers of the parts beyond the first, kept from step to step.
    part_grads: Mutex<Vec<Vec<f32>>>,
}

impl Model {
    /// Builds the network and initialises every tensor as torchvision does, from a seeded
    /// generator in flat space, so the same `(spec, seed)` gives bit-identical weights on
    /// every peer and every function.
    pub fn new(spec: ModelSpec, device: &Device, seed: u64) -> Result<Self> {
        spec.validate()?;
        let device = device.clone().autodiff();
        let net = Net::new(&spec, &device);
        let table = ParamTable::of(&net);
        let (weights, buffers) = initial_values(&spec, &table, seed);
        let net = params::write_flat(net, &table, &device, Some(&weights), Some(&buffers));
        Ok(Model {
            spec,
            net,
            device,
            table,
            split: true,
            part_grads: Mutex::new(Vec::new()),
        })
    }

    /// The architecture and its options.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The flat layout.
    pub fn table(&self) -> &ParamTable {
        &self.table
    }

    /// Number of trainable scalars (the flat weights and gradient length).
    pub fn num_params(&self) -> usize {
        self.table.num_params()
    }

    /// The device the model runs on (its autodiff flavour).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The current trainable weights as one flat vector.
    pub fn params(&self) -> Result<Vec<f32>> {
        Ok(self.read()?.0)
    }

    /// The current batch-norm running statistics as one flat vector.
    pub fn buffers(&self) -> Result<Vec<f32>> {
        Ok(self.read()?.1)
    }

    fn read(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut p = vec![0.0; self.table.num_params()];
        let mut b = vec![0.0; self.table.num_buffers()];
        self.sync_running_stats();
        params::read_flat(&self.net, &self.table, &mut p, &mut b)?;
        Ok((p, b))
    }

    /// Burn keeps batch-norm running-statistic updates pending per thread until the module
    /// is switched to validation; switching folds them in (the state is shared with `net`).
    fn sync_running_stats(&self) {
        if self.table.num_buffers() > 0 {
            drop(self.net.valid());
        }
    }

    /// Replaces the trainable weights.
    pub fn set_params(&mut self, weights: &[f32]) -> Result<()> {
        check_len("weight vector", self.table.num_params(), weights.len())?;
        self.replace(Some(weights), None);
        Ok(())
    }

    /// Replaces the batch-norm running statistics.
    pub fn set_buffers(&mut self, buffers: &[f32]) -> Result<()> {
        check_len("buffer vector", self.table.num_buffers(), buffers.len())?;
        self.replace(None, Some(buffers));
        Ok(())
    }

    fn replace(&mut self, weights: Option<&[f32]>, buffers: Option<&[f32]>) {
        // A tiny stand-in while the real network is consumed by the mapper, so the old
        // tensors are freed one by one as their replacements are made.
        let placeholder = Net::TinyCnn(crate::arch::TinyCnn::new(1, 1, &self.device));
        self.sync_running_stats();
        let net = std::mem::replace(&mut self.net, placeholder);
        self.net = params::write_flat(net, &self.table, &self.device, weights, buffers);
    }

    /// The per-batch gradient step: forward (training mode: batch statistics, dropout),
    /// loss, backward, and the flat gradient written into `grad` (length
    /// [`Model::num_params`], in [`ParamTable`] order).
    ///
    /// On the CPU, the step runs in parts of the batch, one per core of a 2-core machine
    /// ([`crate::parts`]; batch normalisation still takes the whole batch's statistics), and
    /// adds their gradients weighted by their share of the batch: the whole-batch gradient
    /// up to rounding, and the same bits whatever the number of threads. Dropout masks come
    /// from one draw of the device's generator per step (a part draws the rows the uncut
    /// batch would), so seeding the device makes steps reproducible within one process;
    /// across processes (resumed runs, functions) use [`Model::grad_step_seeded`].
    pub fn grad_step(&self, batch: &Batch<'_>, loss: Loss, grad: &mut [f32]) -> Result<StepStats> {
        check_len("gradient buffer", self.table.num_params(), grad.len())?;
        self.check_batch(batch)?;
        let seed = self.mask_seed()?;
        self.checked_grad_step(batch, loss, grad, seed)
    }

    /// [`Model::grad_step`] with this step's dropout masks drawn from `mask_seed` instead
    /// of the device's generator: the gradient is then a pure function of the weights, the
    /// batch and the seed, so a peer, a resumed peer and a function computing the same
    /// batch with the same seed get the same bits.
    pub fn grad_step_seeded(
        &self,
        batch: &Batch<'_>,
        loss: Loss,
        grad: &mut [f32],
        mask_seed: u64,
    ) -> Result<StepStats> {
        check_len("gradient buffer", self.table.num_params(), grad.len())?;
        self.check_batch(batch)?;
        self.checked_grad_step(batch, loss, grad, mask_seed)
    }

    /// The gradient step on a checked batch and buffer, dropout masks from `seed`.
    fn checked_grad_step(
        &self,
        batch: &Batch<'_>,
        loss: Loss,
        grad: &mut [f32],
        seed: u64,
    ) -> Result<StepStats> {
        let n = batch.shape[0];
        let parts = self.step_parts(n);
        if parts > 1
            && let Some(stats) = self.grad_step_in_parts(batch, loss, grad, parts, seed)
        {
            return stats;
        }
        dropout::with_masks(seed, 0, || self.part_step(&self.net, batch, loss, grad))
    }

    /// Lets gradient steps run in parts of the batch (the default) or not: for tests and
    /// benchmarks that compare the two.
    pub fn set_split(&mut self, split: bool) {
        self.split = split;
    }

    /// How many parts a step on `n` images runs in: two (of at least 4 images each) for a
    /// model on the CPU whose gradient buffers are small enough to have one per part, else
    /// one. Never the number of threads, so the gradient is the same wherever the step
    /// runs. With our kernels switched off ([`burn_ext::set_enabled`]), models with batch
    /// normalisation run whole: Burn's own layer cannot pool statistics across parts.
    pub fn step_parts(&self, n: usize) -> usize {
        let splits = self.split
            && (self.table.num_buffers() == 0 || burn_ext::enabled())
            && self.table.num_params() <= parts::MAX_PARAMS
            && burn_ext::is_cpu(&self.device);
        if splits { parts::count(n) } else { 1 }
    }

    /// One draw of the device's generator, seeding this step's dropout masks.
    fn mask_seed(&self) -> Result<u64> {
        let draw = Tensor::<1>::random(
            [3],
            burn::tensor::Distribution::Uniform(0.0, 1.0),
            &self.device,
        );
        let words = to_vec(draw)?;
        Ok(words
            .iter()
            .fold(0u64, |acc, w| acc.rotate_left(22) ^ u64::from(w.to_bits())))
    }

    /// [`Model::grad_step`] on `parts` parts at once; `None` when the parts' threads cannot
    /// be started.
    fn grad_step_in_parts(
        &self,
        batch: &Batch<'_>,
        loss: Loss,
        grad: &mut [f32],
        parts: usize,
        seed: u64,
    ) -> Option<Result<StepStats>> {
        let [n, c, h, w] = batch.shape;
        let ranges = parts::ranges(n, parts);
        let mut buffers =
            std::mem::take(&mut *self.part_grads.lock().unwrap_or_else(|e| e.into_inner()));
        buffers.resize_with(parts - 1, Vec::new);
        buffers.iter_mut().for_each(|b| b.resize(grad.len(), 0.0));
        // Each part with leaves of its own, so that its graph is not merged with the others'.
        let outputs: Vec<(&mut [f32], Net)> = std::iter::once(&mut grad[..])
            .chain(buffers.iter_mut().map(|b| &mut b[..]))
            .map(|target| (target, params::own_leaves(&self.net)))
            .collect();
        let image = c * h * w;
        let sizes = ranges.iter().map(|r| r.len()).collect();
        // The first part updates the running statistics, on a thread of its own: fold in
        // updates other threads left pending before, and its own after.
        self.sync_running_stats();
        let results = parts::run(outputs, sizes, |part, (target, net)| {
            let i = part.index();
            let r = ranges[i].clone();
            let piece = Batch {
                images: &batch.images[r.start * image..r.end * image],
                labels: &batch.labels[r.clone()],
                shape: [r.len(), c, h, w],
            };
            dropout::with_masks(seed, r.start, || self.part_step(&net, &piece, loss, target))
        })?;
        self.sync_running_stats();
        let weights: Vec<f32> = ranges.iter().map(|r| r.len() as f32 / n as f32).collect();
        let stats = results
            .into_iter()
            .collect::<Result<Vec<StepStats>>>()
            .map(|stats| {
                add_weighted(grad, &buffers, &weights);
                StepStats {
                    loss: stats.iter().zip(&weights).map(|(s, w)| s.loss * w).sum(),
                    correct: stats.iter().map(|s| s.correct).sum(),
                    samples: n,
                }
            });
        *self.part_grads.lock().unwrap_or_else(|e| e.into_inner()) = buffers;
        Some(stats)
    }

    /// The step of `net` (this model's network, or a copy of it) on one whole batch (or one
    /// part of it): forward, loss, backward, gradients into `grad`.
    fn part_step(
        &self,
        net: &Net,
        batch: &Batch<'_>,
        loss: Loss,
        grad: &mut [f32],
    ) -> Result<StepStats> {
        // `grad_step` checked the whole batch; its parts are slices of it.
        let (images, labels) = self.tensors(batch);
        let output = loss.head(net.forward(images));
        let stats_output = output.clone().detach();
        let value = loss.forward(output, labels.clone());
        // Weight gradients computed by our kernels land in `grad` directly (kernels::sink).
        let keys = params::sink_keys(net, &self.table);
        let mut targets = Vec::with_capacity(keys.len());
        let mut rest = &mut grad[..];
        let mut at = 0;
        for &(index, key) in &keys {
            let range = self.table.entries()[index].range();
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(range.start - at);
            let (mine, tail) = tail.split_at_mut(range.len());
            targets.push((key, mine));
            rest = tail;
            at = range.end;
        }
        let (grads, written) = sink::with_sinks(targets, || value.backward());
        let sunk: Vec<usize> = keys
            .iter()
            .zip(written)
            .filter_map(|(&(index, _), w)| w.then_some(index))
            .collect();
        params::read_grads(net, &self.table, &grads, grad, &sunk)?;
        stats(stats_output, labels, value.detach(), batch.shape[0])
    }

    /// Loss and accuracy in evaluation mode (running statistics, no dropout, no autodiff).
    pub fn evaluate(&self, batch: &Batch<'_>, loss: Loss) -> Result<StepStats> {
        self.check_batch(batch)?;
        let net = self.net.valid();
        let (images, labels) = self.tensors(batch);
        let images = images.without_autodiff();
        let labels = labels.without_autodiff();
        let output = loss.head(net.forward(images));
        let value = loss.forward(output.clone(), labels.clone());
        stats(output, labels, value, batch.shape[0])
    }

    /// Evaluation-mode outputs (logits, or log-probabilities for NLL) as `[batch * classes]`.
    pub fn predict(&self, batch: &Batch<'_>) -> Result<Vec<f32>> {
        self.check_batch(batch)?;
        let net = self.net.valid();
        let (images, _) = self.tensors(batch);
        let output = net.forward(images.without_autodiff());
        to_vec(output)
    }

    /// Why `batch` does not fit this model, if it does not.
    fn check_batch(&self, batch: &Batch<'_>) -> Result<()> {
        let [n, c, h, w] = batch.shape;
        let min = self.spec.arch.min_input_size();
        let problem = if n == 0 {
            Some("the batch is empty".to_string())
        } else if c != self.spec.in_channels {
            Some(format!(
                "{} expects {} input channels, the batch has {c}",
                self.spec.arch, self.spec.in_channels
            ))
        } else if h < min || w < min {
            Some(format!(
                "{} needs inputs of at least {min}x{min} pixels, the batch is {h}x{w}",
                self.spec.arch
            ))
        } else if batch.images.len() != n * c * h * w {
            Some(format!(
                "{} pixel values for shape {n}x{c}x{h}x{w} ({} expected)",
                batch.images.len(),
                n * c * h * w
            ))
        } else if batch.labels.len() != n {
            Some(format!("{} labels for {n} images", batch.labels.len()))
        } else {
            let k = self.spec.num_classes as i64;
            batch
                .labels
                .iter()
                .find(|&&l| l < 0 || l >= k)
                .map(|l| format!("label {l} is outside 0..{k}"))
        };
        match problem {
            Some(p) => Err(ModelError::InvalidBatch(p)),
            None => Ok(()),
        }
    }

    /// The batch as tensors on the model's device; the caller has checked it
    /// ([`Model::check_batch`]).
    fn tensors(&self, batch: &Batch<'_>) -> (Tensor<4>, Tensor<1, Int>) {
        let n = batch.shape[0];
        let images = Tensor::<4>::from_data(
            TensorData::new(batch.images.to_vec(), batch.shape),
            &self.device,
        );
        let labels =
            Tensor::<1, Int>::from_data(TensorData::new(batch.labels.to_vec(), [n]), &self.device);
        (images, labels)
    }
}

/// `grad = weights[0] * grad + sum(weights[i] * others[i - 1])`, in part order, chunks of
/// the flat vector on all threads.
fn add_weighted(grad: &mut [f32], others: &[Vec<f32>], weights: &[f32]) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 14;
    grad.par_chunks_mut(CHUNK).enumerate().for_each(|(k, g)| {
        g.iter_mut().for_each(|v| *v *= weights[0]);
        for (other, &w) in others.iter().zip(&weights[1..]) {
            g.iter_mut()
                .zip(&other[k * CHUNK..])
                .for_each(|(v, o)| *v += w * o);
        }
    });
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(ModelError::LengthMismatch {
            what,
            expected,
            got,
        })
    }
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| ModelError::Backend(format!("reading a tensor: {e:?}")))
}

fn stats(
    output: Tensor<2>,
    labels: Tensor<1, Int>,
    value: Tensor<1>,
    n: usize,
) -> Result<StepStats> {
    let predicted = output.argmax(1).reshape([n]);
    let correct = predicted.equal(labels).int().sum().into_scalar::<i64>() as usize;
    let loss = to_vec(value)?[0];
    Ok(StepStats {
        loss,
        correct,
        samples: n,
    })
}

/// torchvision's initialisation of every tensor, drawn in table order from one seeded
/// generator.
fn initial_values(spec: &ModelSpec, table: &ParamTable, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut weights = vec![0.0f32; table.num_params()];
    let mut buffers = vec![0.0f32; table.num_buffers()];
    let mut last_fan_in = 1usize;
    for info in table.entries() {
        let shape = &info.shape;
        let receptive: usize = shape.iter().skip(2).product();
        let (fan_in, fan_out) = match shape.len() {
            0 | 1 => (last_fan_in, last_fan_in),
            _ => (shape[1] * receptive, shape[0] * receptive),
        };
        if shape.len() >= 2 {
            last_fan_in = fan_in;
        }
        let out = match info.kind {
            crate::params::ParamKind::Trainable => &mut weights[info.range()],
            crate::params::ParamKind::Buffer => &mut buffers[info.range()],
        };
        let uniform = |bound: f32, rng: &mut ChaCha8Rng, out: &mut [f32]| {
            let d = Uniform::new_inclusive(-bound, bound).expect("finite positive bound");
            out.iter_mut().for_each(|v| *v = d.sample(rng));
        };
        let normal = |std: f32, rng: &mut ChaCha8Rng, out: &mut [f32]| {
            let d = Normal::new(0.0, std).expect("finite positive std");
            out.iter_mut().for_each(|v| *v = d.sample(rng));
        };
        match spec.init_rule(&info.name, shape) {
            Init::Zeros => out.fill(0.0),
            Init::Ones => out.fill(1.0),
            Init::Normal { std } => normal(std, &mut rng, out),
            Init::KaimingNormalFanOut => normal((2.0 / fan_out as f32).sqrt(), &mut rng, out),
            Init::KaimingUniformFanIn => uniform((6.0 / fan_in as f32).sqrt(), &mut rng, out),
            Init::KaimingUniformDefault | Init::BiasUniformDefault => {
                uniform(1.0 / (fan_in as f32).sqrt(), &mut rng, out)
            }
        }
    }
    (weights, buffers)
}
