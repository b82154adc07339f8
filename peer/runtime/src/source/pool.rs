//! `--serverless local`: a pool of worker threads on this machine, each running the same
//! `compute_gradient` handler code as the Lambda function, with its own warm state (model,
//! round weights, buffers), as one Lambda execution environment would. It is the embedded
//! default: the serverless architecture without any cloud service.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow};
use peerless_lambda::faults::FaultPlan;
use peerless_lambda::{ComputeGradient, ComputeGradientEvent, ProcessInputRequest};
use peerless_models::Device;
use tokio::sync::oneshot;

use super::functions::{Attempt, CallPolicy, Functions, FunctionsRound, call_each};

type Reply = oneshot::Sender<Result<peerless_lambda::ComputeGradientResponse, String>>;

/// Worker threads serving `compute_gradient` events from a shared queue.
pub struct PoolFunctions {
    jobs: Mutex<Option<mpsc::Sender<(ComputeGradientEvent, Reply)>>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    policy: CallPolicy,
    memory_mb: u32,
}

impl PoolFunctions {
    /// Starts `policy.concurrency` workers computing on `device`; `memory_mb` is the
    /// memory size the cost model bills them at.
    pub fn start(device: &Device, policy: CallPolicy, memory_mb: u32) -> Result<Self> {
        // The same fault injection as the Lambda binary, for rehearsals without AWS.
        let faults = FaultPlan::from_env().map_err(|e| anyhow!(e))?;
        let (tx, rx) = mpsc::channel::<(ComputeGradientEvent, Reply)>();
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::new();
        for id in 0..policy.concurrency.max(1) {
            let rx = rx.clone();
            let device = device.clone();
            let worker = std::thread::Builder::new()
                .name(format!("function-{id}"))
                .spawn(move || serve(rx, device, faults))
                .context("starting a function pool worker")?;
            workers.push(worker);
        }
        Ok(PoolFunctions {
            jobs: Mutex::new(Some(tx)),
            workers,
            policy,
            memory_mb,
        })
    }

    async fn call(&self, event: ComputeGradientEvent) -> Result<Attempt> {
        let (reply, response) = oneshot::channel();
        self.jobs
            .lock()
            .map_err(|_| anyhow!("the function pool is poisoned"))?
            .as_ref()
            .ok_or_else(|| anyhow!("the function pool is shut down"))?
            .send((event, reply))
            .map_err(|_| anyhow!("every function pool worker has stopped"))?;
        let response = response
            .await
            .map_err(|_| anyhow!("a function pool worker stopped during the invocation"))?
            .map_err(|e| anyhow!(e))?;
        Ok(Attempt {
            response,
            report: None,
        })
    }
}

impl Functions for PoolFunctions {
    async fn run(
        &self,
        _request: &ProcessInputRequest,
        events: &[ComputeGradientEvent],
    ) -> FunctionsRound {
        let outcomes = call_each(events, self.policy, self.memory_mb, |event| {
            self.call(event)
        })
        .await;
        FunctionsRound {
            outcomes,
            ..FunctionsRound::default()
        }
    }

    fn concurrency(&self) -> usize {
        self.policy.concurrency.max(1)
    }
}

impl Drop for PoolFunctions {
    fn drop(&mut self) {
        // Closing the queue ends every worker after its current job.
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// One worker: a warm handler state and a small runtime for its store I/O.
fn serve(
    rx: Arc<Mutex<mpsc::Receiver<(ComputeGradientEvent, Reply)>>>,
    device: Device,
    faults: FaultPlan,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("function pool worker cannot start a runtime: {e}");
            return;
        }
    };
    let mut handler = ComputeGradient::with_device(device).with_faults(faults);
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((event, reply)) = job else { return };
        let result = runtime
            .block_on(handler.handle(&event))
            .map_err(|e| format!("{}: {e}", e.error_type()));
        let _ = reply.send(result);
    }
}
