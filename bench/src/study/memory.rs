//! How much memory a study's peers need: they all run in one process, so a model too big
//! for the machine fails the study before any training, with the numbers, instead of the
//! kernel killing it minutes in.

use super::{StudyConfig, StudyError};

/// Gradient-sized buffers one peer holds when its exchange goes through a broker: the
/// model, the flat weights, its gradient, the average, a batch's gradient and the step's
/// own, plus the exchange's encoded, framed, received and decoded copies. Measured with
/// vgg11 over RabbitMQ: 11.4 per peer at 2 peers (resident size once it settles; 4 peers
/// were killed at 10.5 and still growing).
pub const BUFFERS_PER_PEER_BROKER: f64 = 12.0;

/// The same in-process (no broker): 7.5 measured with one vgg11 peer.
pub const BUFFERS_PER_PEER_IN_PROCESS: f64 = 8.0;

/// The memory the peers of `config` need at least, in bytes, for a model whose gradient
/// is `gradient_bytes` long. Functions in the local pool need more on top; this is the
/// floor a study cannot run below.
pub fn peers_memory_bytes(config: &StudyConfig, gradient_bytes: u64) -> u64 {
    (config.peers.len() as f64 * buffers_per_peer(config) * gradient_bytes as f64) as u64
}

/// Gradient-sized buffers per peer for the config's transport.
fn buffers_per_peer(config: &StudyConfig) -> f64 {
    if config.broker.is_some() {
        BUFFERS_PER_PEER_BROKER
    } else {
        BUFFERS_PER_PEER_IN_PROCESS
    }
}

/// Refuses a study whose peers need more than `available_bytes` (the machine's available
/// memory), naming the model, both sizes and what to change.
pub fn check_memory(
    config: &StudyConfig,
    gradient_bytes: u64,
    available_bytes: u64,
) -> Result<(), StudyError> {
    let needed = peers_memory_bytes(config, gradient_bytes);
    if needed <= available_bytes {
        return Ok(());
    }
    let gb = |b: u64| b as f64 / 1e9;
    let model = config.model_names();
    Err(StudyError::NotEnoughMemory {
        message: format!(
            "{model}: {} peers need at least {:.1} GB of memory ({:.0} MB gradient, about {} \
             gradient-sized buffers per peer), and this machine has {:.1} GB available. Leave \
             it out (`peerless study --models` names the models to run), use fewer peers, \
             or a machine with more memory.",
            config.peers.len(),
            gb(needed),
            gradient_bytes as f64 / 1e6,
            buffers_per_peer(config),
            gb(available_bytes),
        ),
    })
}
