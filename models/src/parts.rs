//! A gradient step cut into parts of the batch, one per core, each part on a single-thread
//! pool of its own. SqueezeNet's many small operations spent more time handing work to the
//! other core and waking it than computing (`bench/README.md`, step 11); two halves that each
//! run every operation on one core keep both cores busy without a hand-over.
//!
//! Only models without batch normalisation split (its statistics are per batch), and only
//! small ones: every part beyond the first needs a gradient buffer of its own.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;
use rayon::{ThreadPool, ThreadPoolBuilder};

/// Fewest images in a part.
const MIN_IMAGES: usize = 4;

/// Parts per step: one per core of the 2-core machines peers and functions run on. A
/// constant, not the pool's size, so that a batch's gradient is the same bits wherever it
/// is computed (a peer, a function, a machine with more or fewer cores): the parts of a
/// step on one core take turns, and a machine with more cores leaves the rest to other work.
const PARTS: usize = 2;

/// Most parameters of a model whose steps split (64 MiB per extra gradient buffer).
pub(crate) const MAX_PARAMS: usize = 16 << 20;

/// The single-thread pools, one per part, created on first use.
static POOLS: Mutex<Vec<Arc<ThreadPool>>> = Mutex::new(Vec::new());

/// How many parts a batch of `n` images is cut into (1: not split): a function of `n` only.
pub(crate) fn count(n: usize) -> usize {
    PARTS.min(n / MIN_IMAGES).max(1)
}

/// The images of each of `parts` parts of a batch of `n`: contiguous, in order, sizes
/// differing by at most one.
pub(crate) fn ranges(n: usize, parts: usize) -> Vec<Range<usize>> {
    let (size, extra) = (n / parts, n % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let len = size + usize::from(i < extra);
            start += len;
            start - len..start
        })
        .collect()
}

/// `parts` single-thread pools, or `None` when the system refuses a thread.
fn pools(parts: usize) -> Option<Vec<Arc<ThreadPool>>> {
    let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    while pools.len() < parts {
        let pool = ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "peerless-part".into())
            .build();
        match pool {
            Ok(pool) => pools.push(Arc::new(pool)),
            Err(e) => {
                tracing::warn!("cannot start a thread for a batch part ({e}); not splitting");
                return None;
            }
        }
    }
    Some(pools[..parts].to_vec())
}

/// Runs `f(i, item)` for every item at once, item `i` on pool `i`, and returns the results in
/// order; `None` when the pools cannot be started (the caller then runs unsplit). Called
/// from a single-thread pool (a peer given one core, a one-core machine), the items run one
/// after another on the calling thread instead: the same results, and no more cores than
/// the caller was given.
pub(crate) fn run<T: Send, R: Send>(
    items: Vec<T>,
    f: impl Fn(usize, T) -> R + Sync,
) -> Option<Vec<R>> {
    if rayon::current_num_threads() == 1 {
        return Some(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| f(i, item))
                .collect(),
        );
    }
    let pools = pools(items.len())?;
    Some(
        pools
            .into_par_iter()
            .zip(items)
            .enumerate()
            .map(|(i, (pool, item))| pool.install(|| f(i, item)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_batch_in_order() {
        assert_eq!(ranges(10, 3), vec![0..4, 4..7, 7..10]);
        assert_eq!(ranges(64, 2), vec![0..32, 32..64]);
        assert_eq!(ranges(5, 1), vec![0..5]);
    }

    #[test]
    fn small_batches_stay_whole_and_the_threads_change_nothing() {
        let pool = |threads| {
            ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
        };
        assert_eq!(count(7), 1);
        assert_eq!(count(8), 2);
        for threads in [1, 2, 3] {
            assert_eq!(pool(threads).install(|| count(64)), 2);
        }
    }

    #[test]
    fn every_part_runs_on_its_own_single_thread_pool() {
        let seen = run(vec!['a', 'b', 'c'], |i, item| {
            (
                i,
                item,
                rayon::current_num_threads(),
                std::thread::current().id(),
            )
        })
        .unwrap();
        let order: Vec<_> = seen.iter().map(|s| (s.0, s.1)).collect();
        assert_eq!(order, [(0, 'a'), (1, 'b'), (2, 'c')]);
        assert!(seen.iter().all(|s| s.2 == 1), "single-thread pools");
        // From a single-thread pool: in order on the calling thread.
        let one = ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let (caller, threads) = one.install(|| {
            let me = std::thread::current().id();
            (
                me,
                run(vec![0, 1], |_, _| std::thread::current().id()).unwrap(),
            )
        });
        assert_eq!(threads, [caller, caller]);
        assert!(seen[0].3 != seen[1].3 && seen[1].3 != seen[2].3 && seen[0].3 != seen[2].3);
    }
}
