//! The `compute_gradient` handler: the same code runs inside the Lambda binary and in the
//! peer's in-process function pool.

use std::sync::Arc;
use std::time::Instant;

use peerless_comm::wire::Header;
use peerless_comm::{CodecSpec, RunId};
use peerless_data::{
    DatasetKind, ImageShape, ObjectStore, StoreError, Transform, TransformSpec, open_store, shard,
};
use peerless_models::weights;
use peerless_models::{Batch, Device, Model, ModelSpec};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::allowed::AllowedStore;
use crate::error::ComputeGradientError;
use crate::event::{
    ComputeGradientEvent, ComputeGradientResponse, RuntimeInfo, StoreLocation, Timings,
};
use crate::faults::{Corruption, FaultPlan};
use crate::{gradient, process_input};

/// Seed of the throwaway initial weights of a freshly built model (always overwritten by
/// the round's weights before use).
const INIT_SEED: u64 = 0;

/// Which weights the cached model currently holds.
#[derive(Clone, Debug, PartialEq)]
struct WeightsId {
    store: StoreLocation,
    run_id: RunId,
    round: u64,
    key: String,
}

/// A prepared transform and the batch shape it was built for.
struct CachedTransform {
    spec: TransformSpec,
    input: ImageShape,
    kind: DatasetKind,
    transform: Transform,
}

/// The state of one `compute_gradient` worker, kept across warm invocations: the store
/// client, the model with the round's weights loaded, the transform and the gradient
/// buffers. Weights are re-read only when the run, round, weights key or store changes.
///
/// Concurrency: [`ComputeGradient::handle`] takes `&mut self`, so one state serves one
/// invocation at a time, like one Lambda execution environment. It is `Send`: a pool runs
/// one state per worker (thread or task) to compute batches in parallel. The gradient step
/// is CPU-bound and runs on the calling thread (Burn's CPU backend parallelises it itself),
/// so a pool on a Tokio runtime should call `handle` from `spawn_blocking` with
/// `Handle::block_on`, or from a dedicated runtime per worker.
pub struct ComputeGradient {
    device: Device,
    store: Option<(StoreLocation, Arc<dyn ObjectStore>)>,
    model: Option<Model>,
    weights: Option<WeightsId>,
    transform: Option<CachedTransform>,
    images: Vec<f32>,
    labels_u8: Vec<u8>,
    labels: Vec<i64>,
    grad: Vec<f32>,
    invocations: u64,
    faults: FaultPlan,
    allowed_store: Option<AllowedStore>,
}

impl Default for ComputeGradient {
    fn default() -> Self {
        Self::new()
    }
}

impl ComputeGradient {
    /// A cold state on Burn's `flex` CPU backend.
    pub fn new() -> Self {
        Self::with_device(Device::flex())
    }

    /// A cold state computing on `device`.
    pub fn with_device(device: Device) -> Self {
        Self {
            device,
            store: None,
            model: None,
            weights: None,
            transform: None,
            images: Vec::new(),
            labels_u8: Vec::new(),
            labels: Vec::new(),
            grad: Vec::new(),
            invocations: 0,
            faults: FaultPlan::default(),
            allowed_store: None,
        }
    }

    /// The same state, injecting the failures and delays of `faults` (see [`crate::faults`]).
    pub fn with_faults(mut self, faults: FaultPlan) -> Self {
        if faults.is_active() {
            tracing::warn!(?faults, "compute_gradient will inject failures");
        }
        self.faults = faults;
        self
    }

    /// The same state, refusing events that name a store outside `allowed` (`None`: any
    /// store). The Lambda binary passes [`AllowedStore::from_env`].
    pub fn with_allowed_store(mut self, allowed: Option<AllowedStore>) -> Self {
        self.allowed_store = allowed;
        self
    }

    /// Computes the gradient of the event's batch with the event's round weights, writes
    /// it to `event.gradient_key` as one wire message, and reports loss, sample count and
    /// timings. The response's `runtime` has only in-process facts; the Lambda binary adds
    /// the function's name, request id and memory.
    pub async fn handle(
        &mut self,
        event: &ComputeGradientEvent,
    ) -> Result<ComputeGradientResponse, ComputeGradientError> {
        let start = Instant::now();
        self.invocations += 1;
        if !self.faults.delay.is_zero() {
            tokio::time::sleep(self.faults.delay).await;
        }
        if self.invocations <= self.faults.fail_first {
            return Err(ComputeGradientError::Injected {
                invocation: self.invocations,
            });
        }
        let ctx = &event.context;
        let run_id = check_event(event)?;
        if let Some(allowed) = &self.allowed_store {
            allowed
                .check(&ctx.store)
                .map_err(ComputeGradientError::ForbiddenStore)?;
        }
        let store = self.store(&ctx.store).await?;

        let model_cached = self.prepare_model(ctx.model)?;
        let id = WeightsId {
            store: ctx.store.clone(),
            run_id,
            round: ctx.round,
            key: ctx.weights_key.clone(),
        };
        let weights_cached = self.weights.as_ref() == Some(&id);
        let load_weights_ms = if weights_cached {
            0.0
        } else {
            let t = Instant::now();
            self.load_weights(store.as_ref(), id, ctx.model).await?;
            ms(t)
        };

        let t = Instant::now();
        let shape = self.load_batch(store.as_ref(), event).await?;
        let load_batch_ms = ms(t);

        let t = Instant::now();
        let model = self.model.as_ref().expect("prepared above");
        let n = model.num_params();
        self.grad.resize(n, 0.0);
        let batch = Batch {
            images: &self.images,
            labels: &self.labels,
            shape,
        };
        // The masks a peer computing this batch itself draws (`dropout_seed`).
        let mask_seed = process_input::dropout_seed(event.augment_seed);
        let stats = model
            .grad_step_seeded(&batch, ctx.loss, &mut self.grad, mask_seed)
            .map_err(|source| ComputeGradientError::Compute {
                key: event.batch_key.clone(),
                source,
            })?;
        let compute_ms = ms(t);
        if self.faults.corruption == Some(Corruption::Nan)
            && let Some(first) = self.grad.first_mut()
        {
            *first = f32::NAN;
        }

        let t = Instant::now();
        let header = Header::gradient(
            run_id,
            ctx.round,
            ctx.rank,
            ctx.world_size,
            gradient::fingerprint(&ctx.model, n),
            CodecSpec::None,
            n as u64,
        );
        let message = gradient::encode(&header, &self.grad).map_err(|e| {
            ComputeGradientError::InvalidEvent(format!("encoding the gradient: {e}"))
        })?;
        let gradient_bytes = message.len() as u64;
        // The message is the only copy needed now: a big gradient buffer goes back to the
        // system, so a warm environment holds about its model between calls (vgg11: 0.5 GB,
        // not 1 GB).
        peerless_comm::buffer::release_if_big(&mut self.grad);
        store
            .put(&event.gradient_key, message)
            .await
            .map_err(ComputeGradientError::Store)?;
        let upload_ms = ms(t);

        let timings = Timings {
            load_weights_ms,
            load_batch_ms,
            compute_ms,
            upload_ms,
            total_ms: ms(start),
        };
        tracing::info!(
            run_id = %run_id,
            round = ctx.round,
            rank = ctx.rank,
            batch = event.batch,
            samples = stats.samples,
            loss = stats.loss,
            weights_cached,
            load_weights_ms,
            load_batch_ms,
            compute_ms,
            upload_ms,
            "batch gradient written"
        );
        let gradient_key = match self.faults.corruption {
            Some(Corruption::WrongKey) => format!("{}.elsewhere", event.gradient_key),
            _ => event.gradient_key.clone(),
        };
        Ok(ComputeGradientResponse {
            gradient_key,
            run_id: ctx.run_id.clone(),
            round: ctx.round,
            rank: ctx.rank,
            batch: event.batch,
            loss: stats.loss,
            samples: stats.samples as u64,
            correct: stats.correct as u64,
            element_count: n as u64,
            gradient_bytes,
            weights_cached,
            model_cached,
            timings,
            runtime: RuntimeInfo {
                max_rss_mb: max_rss_mb(),
                invocation: self.invocations,
                ..RuntimeInfo::default()
            },
        })
    }

    /// The store client for `location`, opened once and reused while the location is the
    /// same.
    async fn store(
        &mut self,
        location: &StoreLocation,
    ) -> Result<Arc<dyn ObjectStore>, ComputeGradientError> {
        if let Some((cached, store)) = &self.store
            && cached == location
        {
            return Ok(store.clone());
        }
        let store = open_store(&location.url, &location.store_options())
            .await
            .map_err(|e| match e {
                StoreError::InvalidUrl { .. } | StoreError::UnsupportedScheme { .. } => {
                    ComputeGradientError::InvalidEvent(e.to_string())
                }
                other => ComputeGradientError::Store(other),
            })?;
        self.store = Some((location.clone(), store.clone()));
        Ok(store)
    }

    /// Builds the model unless the cached one has the same spec; returns whether it was
    /// cached.
    fn prepare_model(&mut self, spec: ModelSpec) -> Result<bool, ComputeGradientError> {
        if self.model.as_ref().is_some_and(|m| *m.spec() == spec) {
            return Ok(true);
        }
        self.model = None;
        self.weights = None;
        let model = Model::new(spec, &self.device, INIT_SEED).map_err(|e| {
            ComputeGradientError::InvalidEvent(format!("cannot build model {}: {e}", spec.arch))
        })?;
        self.model = Some(model);
        Ok(false)
    }

    async fn load_weights(
        &mut self,
        store: &dyn ObjectStore,
        id: WeightsId,
        spec: ModelSpec,
    ) -> Result<(), ComputeGradientError> {
        let bytes = get(store, "weights", &id.key).await?;
        let decoded =
            weights::decode(&bytes).map_err(|source| ComputeGradientError::InvalidWeights {
                key: id.key.clone(),
                source,
            })?;
        drop(bytes);
        if decoded.spec != spec {
            return Err(ComputeGradientError::WrongModel {
                key: id.key,
                blob: decoded.spec,
                event: spec,
            });
        }
        // The model holds neither the old nor the new weights while they are replaced.
        self.weights = None;
        let model = self
            .model
            .as_mut()
            .expect("prepared before loading weights");
        let invalid = |source| ComputeGradientError::InvalidWeights {
            key: id.key.clone(),
            source,
        };
        model.set_params(&decoded.weights).map_err(invalid)?;
        model.set_buffers(&decoded.buffers).map_err(invalid)?;
        self.weights = Some(id);
        Ok(())
    }

    /// Reads the batch object and transforms it into `self.images` / `self.labels`;
    /// returns the NCHW shape.
    async fn load_batch(
        &mut self,
        store: &dyn ObjectStore,
        event: &ComputeGradientEvent,
    ) -> Result<[usize; 4], ComputeGradientError> {
        let key = &event.batch_key;
        let bytes = get(store, "batch", key).await?;
        let dataset =
            shard::decode(&bytes).map_err(|source| ComputeGradientError::InvalidBatch {
                key: key.clone(),
                source,
            })?;
        drop(bytes);
        let spec = &event.context.transform;
        let (input, kind) = (dataset.shape(), dataset.kind());
        let reuse = self
            .transform
            .as_ref()
            .is_some_and(|c| c.spec == *spec && c.input == input && c.kind == kind);
        if !reuse {
            let transform = Transform::new(spec, input, kind).map_err(|source| {
                ComputeGradientError::Transform {
                    key: key.clone(),
                    source,
                }
            })?;
            self.transform = Some(CachedTransform {
                spec: spec.clone(),
                input,
                kind,
                transform,
            });
        }
        let cached = self.transform.as_mut().expect("set above");
        let indices: Vec<usize> = (0..dataset.len()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(event.augment_seed);
        cached
            .transform
            .fill_batch(
                &dataset,
                &indices,
                &mut rng,
                &mut self.images,
                &mut self.labels_u8,
            )
            .map_err(|source| ComputeGradientError::Transform {
                key: key.clone(),
                source,
            })?;
        self.labels.clear();
        self.labels
            .extend(self.labels_u8.iter().map(|&l| i64::from(l)));
        let out = cached.transform.output_shape();
        Ok([dataset.len(), out.channels, out.height, out.width])
    }
}

/// Checks the event's fields that the store and model do not check themselves; returns
/// the parsed run id.
fn check_event(event: &ComputeGradientEvent) -> Result<RunId, ComputeGradientError> {
    let ctx = &event.context;
    let bad = |m: String| Err(ComputeGradientError::InvalidEvent(m));
    let Ok(run_id) = ctx.run_id.parse::<RunId>() else {
        return bad(format!("run_id {:?} is not 32 hex digits", ctx.run_id));
    };
    if ctx.world_size == 0 || ctx.rank >= ctx.world_size {
        return bad(format!(
            "rank {} is not below world_size {}",
            ctx.rank, ctx.world_size
        ));
    }
    for (field, key) in [
        ("weights_key", &ctx.weights_key),
        ("batch_key", &event.batch_key),
        ("gradient_key", &event.gradient_key),
    ] {
        if let Err(e) = peerless_data::store::validate_key(key) {
            return bad(format!("{field}: {e}"));
        }
    }
    Ok(run_id)
}

/// Reads an object, turning absence into an error that says which object was missing.
async fn get(
    store: &dyn ObjectStore,
    what: &'static str,
    key: &str,
) -> Result<bytes::Bytes, ComputeGradientError> {
    store.get(key).await.map_err(|e| match e {
        StoreError::NotFound { url, key } => ComputeGradientError::MissingObject { what, key, url },
        other => ComputeGradientError::Store(other),
    })
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Peak resident set size of this process (`VmHWM`), in MB.
fn max_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
