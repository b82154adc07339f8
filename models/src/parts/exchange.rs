//! What the parts of one step share while they run: the statistics of each batch
//! normalisation, so a step cut into parts normalises over the whole batch as an uncut one
//! does, and, when the caller was given a single thread, the turn to run.

use std::cell::RefCell;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The meeting point of the parts of one step. Part `i`'s `k`-th [`Part::share`] meets every
/// other part's `k`-th: the parts run the same network, so they reach the same layers in the
/// same order.
#[derive(Debug)]
pub(crate) struct Exchange {
    /// Images in each part.
    sizes: Vec<usize>,
    /// Whether only one part runs at a time (the caller had one thread).
    serial: bool,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug)]
struct State {
    /// Every meeting so far, in order.
    meetings: Vec<Meeting>,
    /// Each part's next meeting.
    next: Vec<usize>,
    /// The part that may run when serial.
    turn: usize,
    /// Parts that returned (or failed).
    ended: Vec<bool>,
}

#[derive(Debug)]
struct Meeting {
    /// What is shared, the same for every part (a check that they are in step).
    tag: u64,
    values: Vec<Option<Vec<f32>>>,
}

impl Meeting {
    fn complete(&self) -> bool {
        self.values.iter().all(Option::is_some)
    }
}

impl Exchange {
    /// An exchange between parts of `sizes` images; with `serial`, they take turns.
    pub(crate) fn new(sizes: Vec<usize>, serial: bool) -> Arc<Self> {
        let parts = sizes.len();
        Arc::new(Exchange {
            sizes,
            serial,
            state: Mutex::new(State {
                meetings: Vec::new(),
                next: vec![0; parts],
                turn: 0,
                ended: vec![false; parts],
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(state).unwrap_or_else(|e| e.into_inner())
    }

    /// Hands the turn from `part` to the next part still running, if any.
    fn pass_turn(&self, state: &mut State, part: usize) {
        let parts = self.sizes.len();
        if let Some(next) = (1..parts)
            .map(|d| (part + d) % parts)
            .find(|&p| !state.ended[p])
        {
            state.turn = next;
        }
    }
}

/// One part of a step: its place among the others, and the way to reach them.
#[derive(Clone, Debug)]
pub(crate) struct Part {
    exchange: Arc<Exchange>,
    index: usize,
}

thread_local! {
    /// The part the current thread is running, if any.
    static CURRENT: RefCell<Option<Part>> = const { RefCell::new(None) };
}

/// The part the current thread is running (`None` outside a split step).
pub(crate) fn current() -> Option<Part> {
    CURRENT.with(|c| c.borrow().clone())
}

impl Part {
    /// Part `index` of `exchange`.
    pub(crate) fn new(exchange: Arc<Exchange>, index: usize) -> Self {
        Part { exchange, index }
    }

    /// This part's place, from 0.
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// Images in every part, in order.
    pub(crate) fn sizes(&self) -> &[usize] {
        &self.exchange.sizes
    }

    /// Runs `f` as this part: waits for its turn when the parts take turns, makes the part
    /// [`current`] on this thread, and lets the others go on when `f` returns or panics.
    pub(crate) fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        struct End<'a>(&'a Part);
        impl Drop for End<'_> {
            fn drop(&mut self) {
                CURRENT.with(|c| c.borrow_mut().take());
                let ex = &self.0.exchange;
                let mut state = ex.lock();
                state.ended[self.0.index] = true;
                if state.turn == self.0.index {
                    ex.pass_turn(&mut state, self.0.index);
                }
                ex.changed.notify_all();
            }
        }
        {
            let ex = &self.exchange;
            let mut state = ex.lock();
            while ex.serial && state.turn != self.index {
                state = ex.wait(state);
            }
        }
        let _end = End(self);
        CURRENT.with(|c| *c.borrow_mut() = Some(self.clone()));
        f()
    }

    /// Gives this part's `values` and returns every part's, in part order, once all have
    /// given theirs. `tag` names what is shared: all parts must give the same.
    ///
    /// # Panics
    ///
    /// When the parts are out of step (different tags), or another part ended without
    /// sharing (it failed): the step cannot be completed.
    pub(crate) fn share(&self, tag: u64, values: Vec<f32>) -> Vec<Vec<f32>> {
        let ex = &self.exchange;
        let parts = ex.sizes.len();
        let mut state = ex.lock();
        let k = state.next[self.index];
        state.next[self.index] += 1;
        if state.meetings.len() == k {
            state.meetings.push(Meeting {
                tag,
                values: vec![None; parts],
            });
        }
        let meeting = &mut state.meetings[k];
        assert_eq!(
            meeting.tag, tag,
            "the parts of a step shared different statistics at meeting {k}"
        );
        meeting.values[self.index] = Some(values);
        if ex.serial && !meeting.complete() {
            ex.pass_turn(&mut state, self.index);
        }
        ex.changed.notify_all();
        loop {
            let meeting = &state.meetings[k];
            if meeting.complete() && (!ex.serial || state.turn == self.index) {
                return meeting.values.iter().flatten().cloned().collect();
            }
            if let Some(p) = (0..parts).find(|&p| meeting.values[p].is_none() && state.ended[p]) {
                panic!("part {p} of the batch ended without sharing its statistics");
            }
            state = ex.wait(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every part gets every part's values in order, whether the parts run at once or take
    /// turns on what amounts to one core.
    #[test]
    fn parts_meet_in_order_at_once_or_in_turns() {
        for serial in [false, true] {
            let exchange = Exchange::new(vec![3, 2], serial);
            let running = Arc::new(Mutex::new((0usize, 0usize)));
            let results: Vec<Vec<Vec<Vec<f32>>>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..2)
                    .map(|i| {
                        let part = Part::new(exchange.clone(), i);
                        let running = running.clone();
                        s.spawn(move || {
                            part.run(|| {
                                (0..3)
                                    .map(|k| {
                                        {
                                            let mut r = running.lock().unwrap();
                                            r.0 += 1;
                                            r.1 = r.1.max(r.0);
                                        }
                                        std::thread::sleep(std::time::Duration::from_millis(2));
                                        running.lock().unwrap().0 -= 1;
                                        assert_eq!(current().unwrap().index(), i);
                                        part.share(k, vec![(10 * i + k as usize) as f32])
                                    })
                                    .collect()
                            })
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for got in &results {
                for (k, meeting) in got.iter().enumerate() {
                    assert_eq!(meeting, &vec![vec![k as f32], vec![10.0 + k as f32]]);
                }
            }
            let most_at_once = running.lock().unwrap().1;
            if serial {
                assert_eq!(most_at_once, 1, "serial parts never run together");
            }
            assert!(current().is_none());
        }
    }

    /// A part that fails before sharing does not leave the others waiting for ever.
    #[test]
    fn a_failed_part_releases_the_others() {
        let exchange = Exchange::new(vec![1, 1], false);
        let outcome = std::thread::scope(|s| {
            let failing = Part::new(exchange.clone(), 0);
            let waiting = Part::new(exchange.clone(), 1);
            let a = s.spawn(move || failing.run(|| panic!("fails")));
            let b = s.spawn(move || waiting.run(|| waiting.share(0, vec![1.0])));
            (a.join().is_err(), b.join().is_err())
        });
        assert_eq!(outcome, (true, true));
    }
}
