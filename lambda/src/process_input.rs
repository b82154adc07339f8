//! `process_input`: expands a peer's request into one `compute_gradient` event per batch,
//! as the original's `ProcessInputFunction` did for its Parallel state.

use peerless_comm::RunId;
use peerless_data::manifest::batch_key;
use peerless_data::store::validate_key;

use crate::error::ProcessInputError;
use crate::event::{ComputeGradientEvent, ProcessInputOutput, ProcessInputRequest};

/// Step Functions' limit on one state's input or output.
pub const STEP_FUNCTIONS_STATE_LIMIT: usize = 256 * 1024;

/// The most batches one request may expand to: batch keys are numbered with four digits
/// (`batch-0042.bin`), and far fewer events already fill a Step Functions state.
pub const MAX_BATCH_COUNT: u32 = 10_000;

/// Largest value that survives a round trip through a JSON number read as a double.
const JSON_SAFE_MASK: u64 = (1 << 53) - 1;

/// The augmentation seed of one batch, derived from the run's base seed, so a function
/// and a peer computing the same batch locally draw the same crops and flips. Values stay
/// below 2^53 so JSON tools that read numbers as doubles keep them exact.
pub fn batch_seed(seed: u64, round: u64, rank: u32, batch: u32) -> u64 {
    let mut x = seed;
    for word in [round, u64::from(rank), u64::from(batch)] {
        x = splitmix64(x ^ splitmix64(word));
    }
    x & JSON_SAFE_MASK
}

/// The dropout-mask seed of one batch ([`peerless_models::Model::grad_step_seeded`]),
/// derived from its [`batch_seed`] alone, so a function given the event's `augment_seed`
/// and a peer computing the batch itself (before or after a restart) draw the same masks,
/// yet masks and augmentation draw from unrelated streams.
pub fn dropout_seed(batch_seed: u64) -> u64 {
    splitmix64(batch_seed ^ DROPOUT_DOMAIN)
}

/// Separates the dropout seed from the augmentation seed it is derived from.
const DROPOUT_DOMAIN: u64 = 0x6d61_736b_2d64_726f; // "mask-dro"

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Key of the gradient of batch `batch` of peer `rank` in round `round`, under `prefix`
/// (which may be empty): `PREFIX/round-000042/rank-001/batch-0003.grad`.
pub fn gradient_key(prefix: &str, round: u64, rank: u32, batch: u32) -> String {
    join_key(
        prefix,
        &format!("round-{round:06}/rank-{rank:03}/batch-{batch:04}.grad"),
    )
}

/// `prefix/key`, or `key` when the prefix is empty (trailing slashes ignored).
fn join_key(prefix: &str, key: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}/{key}")
    }
}

/// Expands `request` into events for batches `first_batch .. first_batch + batch_count`,
/// with the split's batch keys, per-batch seeds and gradient keys; refuses requests whose
/// output would not fit into a Step Functions state.
pub fn expand(request: &ProcessInputRequest) -> Result<ProcessInputOutput, ProcessInputError> {
    let bad = |m: String| Err(ProcessInputError::InvalidRequest(m));
    let ctx = &request.context;
    if request.batch_count == 0 {
        return bad("batch_count is 0: there is nothing to compute".into());
    }
    if ctx.run_id.parse::<RunId>().is_err() {
        return bad(format!("run_id {:?} is not 32 hex digits", ctx.run_id));
    }
    if ctx.world_size == 0 || ctx.rank >= ctx.world_size {
        return bad(format!(
            "rank {} is not below world_size {}",
            ctx.rank, ctx.world_size
        ));
    }
    // Every limit is checked before anything is allocated for the events: a request is
    // a few bytes of JSON, its expansion could be gigabytes.
    let Some(end) = request.first_batch.checked_add(request.batch_count) else {
        return bad("first_batch + batch_count overflows".into());
    };
    if request.batch_count > MAX_BATCH_COUNT || end > MAX_BATCH_COUNT {
        return bad(format!(
            "batches {} .. {end} go beyond the limit of {MAX_BATCH_COUNT} batches per peer",
            request.first_batch
        ));
    }
    let first = event(request, request.first_batch)?;
    // Later events differ only in numbers whose digits may be fewer (the seed has at most
    // 16): a lower bound of the output, so a request that fits is never refused.
    let one = serde_json::to_vec(&first)
        .map_err(|e| ProcessInputError::InvalidRequest(e.to_string()))?
        .len();
    let at_least = one
        .saturating_sub(16)
        .saturating_mul(request.batch_count as usize);
    if at_least > STEP_FUNCTIONS_STATE_LIMIT {
        return Err(ProcessInputError::TooLarge {
            batches: request.batch_count,
            bytes: at_least,
            limit: STEP_FUNCTIONS_STATE_LIMIT,
        });
    }
    let mut events = Vec::with_capacity(request.batch_count as usize);
    events.push(first);
    for batch in request.first_batch + 1..end {
        events.push(event(request, batch)?);
    }
    let output = ProcessInputOutput { events };
    let bytes = serde_json::to_vec(&output)
        .map_err(|e| ProcessInputError::InvalidRequest(e.to_string()))?
        .len();
    if bytes > STEP_FUNCTIONS_STATE_LIMIT {
        return Err(ProcessInputError::TooLarge {
            batches: request.batch_count,
            bytes,
            limit: STEP_FUNCTIONS_STATE_LIMIT,
        });
    }
    Ok(output)
}

/// The event of batch `batch` of `request`, with its keys checked.
fn event(
    request: &ProcessInputRequest,
    batch: u32,
) -> Result<ComputeGradientEvent, ProcessInputError> {
    let ctx = &request.context;
    let event = ComputeGradientEvent {
        context: ctx.clone(),
        batch,
        augment_seed: batch_seed(request.seed, ctx.round, ctx.rank, batch),
        batch_key: join_key(
            &request.batch_prefix,
            &batch_key(ctx.rank as usize, batch as usize),
        ),
        gradient_key: gradient_key(&request.gradient_prefix, ctx.round, ctx.rank, batch),
    };
    for key in [&event.batch_key, &event.gradient_key] {
        validate_key(key).map_err(|e| ProcessInputError::InvalidRequest(e.to_string()))?;
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_seeds_are_per_batch_and_unlike_the_batch_seed() {
        let seed = batch_seed(1234, 7, 1, 2);
        assert_eq!(dropout_seed(seed), dropout_seed(seed));
        assert_ne!(dropout_seed(seed), seed);
        assert_ne!(dropout_seed(seed), dropout_seed(batch_seed(1234, 7, 1, 3)));
        // Pinned: peers and functions of one run may be different builds.
        assert_eq!(dropout_seed(0), splitmix64(DROPOUT_DOMAIN));
    }
}
