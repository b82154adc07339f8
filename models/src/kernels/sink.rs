//! Gradient sinks: weight gradients written by the backward pass straight into the caller's
//! flat gradient buffer, instead of into a fresh tensor that is then copied there. For
//! VGG11's 411 MB classifier gradient, zeroing a buffer, writing the product into it and
//! copying it out become one product written in place.

use std::cell::RefCell;

/// Where the gradient of one weight goes.
struct Sink {
    /// Address of the weight's values (see [`super::burn_ext::storage::storage_key`]).
    key: usize,
    dst: *mut f32,
    len: usize,
    taken: bool,
}

thread_local! {
    /// One frame per [`with_sinks`] running on this thread, innermost last.
    static FRAMES: RefCell<Vec<Vec<Sink>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` (a backward pass) with `targets` open: each is a weight's storage key and the
/// slice its gradient belongs in. Returns `f`'s result and, per target, whether the backward
/// pass wrote the gradient there (the others must be read from Burn's gradients as usual).
pub fn with_sinks<R>(targets: Vec<(usize, &mut [f32])>, f: impl FnOnce() -> R) -> (R, Vec<bool>) {
    let frame = targets
        .into_iter()
        .map(|(key, dst)| Sink {
            key,
            dst: dst.as_mut_ptr(),
            len: dst.len(),
            taken: false,
        })
        .collect();
    FRAMES.with(|f| f.borrow_mut().push(frame));
    /// Closes the frame even if `f` unwinds, so no pointer outlives its borrow.
    struct Close;
    impl Drop for Close {
        fn drop(&mut self) {
            FRAMES.with(|f| f.borrow_mut().pop());
        }
    }
    let close = Close;
    let result = f();
    let taken = FRAMES.with(|f| {
        f.borrow()
            .last()
            .map(|frame| frame.iter().map(|s| s.taken).collect())
            .unwrap_or_default()
    });
    drop(close);
    (result, taken)
}

/// Calls `write` with the destination of the gradient of the weight whose values start at
/// `key` and number `len`, if a sink is open for it on this thread and not yet used; returns
/// whether it did. A weight used twice in one pass gets its sink once: its second gradient
/// goes through Burn and is added when the gradients are read.
pub(crate) fn write_with(key: usize, len: usize, write: impl FnOnce(&mut [f32])) -> bool {
    let dst = FRAMES.with(|f| {
        let mut frames = f.borrow_mut();
        let sink = frames
            .last_mut()?
            .iter_mut()
            .find(|s| s.key == key && s.len == len && !s.taken)?;
        sink.taken = true;
        Some(sink.dst)
    });
    let Some(dst) = dst else {
        return false;
    };
    // SAFETY: `dst` and `len` come from a `&mut [f32]` that `with_sinks` borrows for as long
    // as its frame is open, which includes this call (frames are only popped by the
    // `with_sinks` call that pushed them, after `f` returns, on this same thread). The sink
    // is marked taken above, so this is the only live reference made from it.
    write(unsafe { std::slice::from_raw_parts_mut(dst, len) });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sink_is_handed_out_once_and_only_inside_its_frame() {
        let (mut a, mut b) = (vec![0.0f32; 3], vec![0.0f32; 2]);
        assert!(!write_with(1, 3, |_| unreachable!()));
        let (_, taken) = with_sinks(vec![(1, &mut a[..]), (2, &mut b[..])], || {
            assert!(write_with(1, 3, |d| d.fill(7.0)));
            assert!(!write_with(1, 3, |_| unreachable!()), "taken twice");
            assert!(!write_with(2, 5, |_| unreachable!()), "wrong length");
            // A nested frame hides the outer one.
            let mut c = vec![0.0f32; 2];
            let (_, inner) = with_sinks(vec![(3, &mut c[..])], || {
                assert!(!write_with(2, 2, |_| unreachable!()));
                assert!(write_with(3, 2, |d| d.fill(1.0)));
            });
            assert_eq!((inner, c), (vec![true], vec![1.0, 1.0]));
        });
        assert_eq!(taken, vec![true, false]);
        assert_eq!((a, b), (vec![7.0; 3], vec![0.0; 2]));
        assert!(!write_with(1, 3, |_| unreachable!()), "frame closed");
    }
}
