//! How much memory peers on one machine need: [`run_local`](crate::run_local) runs them all
//! in one process, so a model too big for the machine is refused before training, with the
//! numbers, instead of the kernel killing the run minutes in.

use peerless_models::{Architecture, Device, Model, ModelSpec};

/// Gradient-sized buffers one peer holds at its peak when its exchange goes through a
/// broker: the model, the flat weights, the round's gradient and average, a batch's
/// gradient and the step's own, the exchange's encoded, framed and received copies and
/// the previous round's frames kept for replay. Measured with vgg11 over RabbitMQ, four
/// peers in one process, sharded: 7.6 per peer at the peak, 3.1 between rounds.
pub const BUFFERS_PER_PEER_BROKER: f64 = 8.0;

/// The same in-process (no broker): 7.5 measured with one vgg11 peer, before the
/// exchange and the round freed their big buffers after use.
pub const BUFFERS_PER_PEER_IN_PROCESS: f64 = 8.0;

/// Gradient-sized buffers a function of the local pool adds: the warm model it keeps
/// between calls and about one more for a call's transients (which peers that offload do
/// not spend on computing). Measured with vgg11 in the models study, one call at a time
/// per peer: 19.3 GB at the peak with serverless against 18.3 GB instance; with two at a
/// time per peer 21.9 GB, 1.6 GB short of running out.
pub const BUFFERS_PER_LOCAL_FUNCTION: f64 = 2.0;

/// Peers (and their local functions) that would not fit in the machine's available memory.
#[derive(Debug)]
pub struct NotEnoughMemory {
    pub model: String,
    pub peers: usize,
    /// Functions of the local pool running in the same process, all peers together.
    pub functions: usize,
    pub gradient_bytes: u64,
    pub buffers: f64,
    pub needed: u64,
    pub available: u64,
}

impl std::fmt::Display for NotEnoughMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = match self.functions {
            0 => format!("{} peers", self.peers),
            n => format!("{} peers and {n} local functions", self.peers),
        };
        let per_function = match self.functions {
            0 => String::new(),
            _ => format!(" and {BUFFERS_PER_LOCAL_FUNCTION} per function"),
        };
        write!(
            f,
            "{}: {who} need at least {:.1} GB of memory ({:.0} MB gradient, about {} \
             gradient-sized buffers per peer{per_function}), and this machine has {:.1} GB \
             available",
            self.model,
            self.needed as f64 / 1e9,
            self.gradient_bytes as f64 / 1e6,
            self.buffers,
            self.available as f64 / 1e9
        )
    }
}

impl std::error::Error for NotEnoughMemory {}

/// The memory `peers` peers of a model with a `gradient_bytes` gradient need at least, with
/// `functions` functions of the local pool in the same process, in bytes.
pub fn peers_memory_bytes(
    peers: usize,
    functions: usize,
    over_broker: bool,
    gradient_bytes: u64,
) -> u64 {
    let buffers = peers as f64 * buffers_per_peer(over_broker)
        + functions as f64 * BUFFERS_PER_LOCAL_FUNCTION;
    (buffers * gradient_bytes as f64) as u64
}

fn buffers_per_peer(over_broker: bool) -> f64 {
    if over_broker {
        BUFFERS_PER_PEER_BROKER
    } else {
        BUFFERS_PER_PEER_IN_PROCESS
    }
}

/// Refuses `peers` peers of `model` (with `functions` local functions) when they need
/// more than `available` bytes.
pub fn check_peers_memory(
    model: &str,
    peers: usize,
    functions: usize,
    over_broker: bool,
    gradient_bytes: u64,
    available: u64,
) -> Result<(), NotEnoughMemory> {
    let needed = peers_memory_bytes(peers, functions, over_broker, gradient_bytes);
    if needed <= available {
        return Ok(());
    }
    Err(NotEnoughMemory {
        model: model.to_string(),
        peers,
        functions,
        gradient_bytes,
        buffers: buffers_per_peer(over_broker),
        needed,
        available,
    })
}

/// Why [`check_machine`] refused to start the peers.
#[derive(Debug, thiserror::Error)]
pub enum MemoryCheckError {
    #[error(transparent)]
    NotEnough(#[from] NotEnoughMemory),
    /// The model could not be built to measure its gradient.
    #[error("sizing the gradient: {0}")]
    Model(#[from] peerless_models::ModelError),
}

/// Refuses `peers` peers of `model` and `functions` functions of the local pool (all
/// peers' together) on this machine when they need more than its
/// available memory; passes where that is not known. `run_local` calls it before its
/// peers start and `peerless study` for every model before the first one trains.
pub fn check_machine(
    model: Architecture,
    peers: usize,
    functions: usize,
    over_broker: bool,
) -> Result<(), MemoryCheckError> {
    let Some(available) = available_memory_bytes() else {
        return Ok(());
    };
    let gradient = gradient_bytes(model)?;
    check_peers_memory(
        model.name(),
        peers,
        functions,
        over_broker,
        gradient,
        available,
    )?;
    Ok(())
}

/// A model's gradient size in bytes (its parameters as f32), from a model built on the CPU.
pub fn gradient_bytes(model: Architecture) -> Result<u64, peerless_models::ModelError> {
    let params = Model::new(ModelSpec::new(model), &Device::flex(), 0)?.num_params();
    Ok(params as u64 * 4)
}

/// The memory the kernel says can be allocated without swapping (`MemAvailable` in
/// /proc/meminfo), or `None` where that is not known.
pub fn available_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Hands memory the allocator holds but no longer uses back to the system, after a round
/// of a gradient bigger than [`peerless_comm::buffer::KEEP_BYTES`]. glibc's allocator
/// keeps freed blocks of up to 32 MB in its heaps, and a vgg11 round frees GBs of them (the
/// step's tensors, the exchange's chunks); kept, they stay in the resident size of the one
/// process running all the peers. A no-op for small gradients and other allocators.
pub fn release_freed_memory(gradient_bytes: usize) {
    if gradient_bytes <= peerless_comm::buffer::KEEP_BYTES {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only returns the allocator's free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_that_do_not_fit_are_refused_with_the_numbers() {
        let vgg11 = 515_445_032;
        let broker = BUFFERS_PER_PEER_BROKER;
        assert_eq!(
            peers_memory_bytes(2, 0, true, vgg11),
            (2.0 * broker) as u64 * vgg11
        );
        assert_eq!(peers_memory_bytes(2, 0, false, vgg11), 16 * vgg11);
        check_peers_memory("vgg11", 2, 0, true, vgg11, 9_000_000_000).unwrap();
        let e = check_peers_memory("vgg11", 2, 0, true, vgg11, 8_000_000_000)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "vgg11: 2 peers need at least 8.2 GB of memory (515 MB gradient, about 8 \
             gradient-sized buffers per peer), and this machine has 8.0 GB available"
        );
        // The models study's vgg11 on this 23.5 GB machine (about 22 GB available): one
        // local function per peer fits, two do not (they nearly ran out, measured).
        check_peers_memory("vgg11", 4, 4, true, vgg11, 22_000_000_000).unwrap();
        let e = check_peers_memory("vgg11", 4, 8, true, vgg11, 22_000_000_000)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "vgg11: 4 peers and 8 local functions need at least 24.7 GB of memory (515 MB \
             gradient, about 8 gradient-sized buffers per peer and 2 per function), and this \
             machine has 22.0 GB available"
        );
        assert!(available_memory_bytes().is_some_and(|b| b > 0));
    }
}
