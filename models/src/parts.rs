//! A gradient step cut into parts of the batch, one per core, each part on a single-thread
//! pool of its own. SqueezeNet's many small operations spent more time handing work to the
//! other core and waking it than computing (`bench/README.md`, step 11); two halves that each
//! run every operation on one core keep both cores busy without a hand-over.
//!
//! Batch normalisation takes its statistics over the whole batch: the parts of a step meet at
//! each such layer ([`exchange`]) to pool them ([`batch_norm`]). Only small models split:
//! every part beyond the first needs a gradient buffer of its own.

mod batch_norm;
mod exchange;

use std::ops::Range;
use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

pub(crate) use batch_norm::{whole_batch_stats, whole_batch_sums};
pub(crate) use exchange::{Part, current};

use exchange::Exchange;

/// Fewest images in a part.
const MIN_IMAGES: usize = 4;

/// Parts per step: one per core of the 2-core machines peers and functions run on. A
/// constant, not the pool's size, so that a batch's gradient is the same bits wherever it
/// is computed (a peer, a function, a machine with more or fewer cores): the parts of a
/// step on one core take turns, and a machine with more cores leaves the rest to other work.
const PARTS: usize = 2;

/// Most parameters of a model whose steps split (64 MiB per extra gradient buffer).
pub(crate) const MAX_PARAMS: usize = 16 << 20;

/// Single-thread pools not in use by a step. A step takes pools of its own for its parts,
/// so that parts of steps running at once on other threads never queue behind each other
/// (they meet at each batch normalisation: a part queued behind another step's would never
/// arrive).
static IDLE: Mutex<Vec<Arc<ThreadPool>>> = Mutex::new(Vec::new());

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

/// `parts` single-thread pools for one step's use, or `None` when the system refuses a
/// thread.
fn take_pools(parts: usize) -> Option<Vec<Arc<ThreadPool>>> {
    let mut taken = {
        let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
        let keep = idle.len().saturating_sub(parts);
        idle.split_off(keep)
    };
    while taken.len() < parts {
        let pool = ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "peerless-part".into())
            .build();
        match pool {
            Ok(pool) => taken.push(Arc::new(pool)),
            Err(e) => {
                tracing::warn!("cannot start a thread for a batch part ({e}); not splitting");
                give_back(taken);
                return None;
            }
        }
    }
    Some(taken)
}

/// Returns a step's pools for later steps.
fn give_back(pools: Vec<Arc<ThreadPool>>) {
    IDLE.lock().unwrap_or_else(|e| e.into_inner()).extend(pools);
}

/// Runs `f(part, item)` for every item at once, item `i` as part `i` of `sizes[i]` images on
/// a single-thread pool of its own, and returns the results in order; `None` when the pools
/// cannot be started (the caller then runs unsplit). Called from a single-thread pool (a
/// peer given one core, a one-core machine), the parts take turns instead, one running at a
/// time: the same results, and no more cores than the caller was given.
pub(crate) fn run<T: Send, R: Send>(
    items: Vec<T>,
    sizes: Vec<usize>,
    f: impl Fn(&Part, T) -> R + Sync,
) -> Option<Vec<R>> {
    assert_eq!(items.len(), sizes.len(), "one size per part");
    let pools = take_pools(items.len())?;
    let exchange = Exchange::new(sizes, rayon::current_num_threads() == 1);
    let jobs: Vec<Mutex<(Option<T>, Option<R>)>> = items
        .into_iter()
        .map(|item| Mutex::new((Some(item), None)))
        .collect();
    let job = |i: usize| {
        let part = Part::new(exchange.clone(), i);
        let mut slot = jobs[i].lock().unwrap_or_else(|e| e.into_inner());
        if let Some(item) = slot.0.take() {
            slot.1 = Some(part.run(|| f(&part, item)));
        }
    };
    spawn_from(&pools, 0, &job);
    give_back(pools);
    Some(
        jobs.into_iter()
            .filter_map(|j| j.into_inner().unwrap_or_else(|e| e.into_inner()).1)
            .collect(),
    )
}

/// Starts `job(i)` on `pools[i]` for every `i` from `first` on, all at once, and returns when
/// all have finished (a panic in one is raised here after all have ended).
fn spawn_from(pools: &[Arc<ThreadPool>], first: usize, job: &(dyn Fn(usize) + Sync)) {
    if let Some(pool) = pools.get(first) {
        pool.in_place_scope(|scope| {
            scope.spawn(move |_| job(first));
            spawn_from(pools, first + 1, job);
        });
    }
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
        let seen = run(vec!['a', 'b', 'c'], vec![1; 3], |part, item| {
            (
                part.index(),
                item,
                rayon::current_num_threads(),
                std::thread::current().id(),
            )
        })
        .unwrap();
        let order: Vec<_> = seen.iter().map(|s| (s.0, s.1)).collect();
        assert_eq!(order, [(0, 'a'), (1, 'b'), (2, 'c')]);
        assert!(seen.iter().all(|s| s.2 == 1), "single-thread pools");
        // From a single-thread pool: on the parts' own threads, taking turns (`exchange`).
        let one = ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let (caller, threads) = one.install(|| {
            let me = std::thread::current().id();
            (
                me,
                run(vec![0, 1], vec![1; 2], |_, _| std::thread::current().id()).unwrap(),
            )
        });
        assert!(
            !threads.contains(&caller),
            "parts run on their own threads, in turns"
        );
        assert!(seen[0].3 != seen[1].3 && seen[1].3 != seen[2].3 && seen[0].3 != seen[2].3);
    }
}
