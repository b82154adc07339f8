//! Gradient-sized buffers that are worth keeping from one round (or call) to the next only
//! while they are small. Reusing a buffer saves allocating and zeroing it every round,
//! which matters for gradients of a few MB; a buffer of a 515 MB gradient (vgg11) kept
//! between uses costs more than allocating it again, and with four peers in one process
//! a few of those per peer decide whether the run fits in memory.

/// Buffers holding up to this many bytes are kept for the next use; bigger ones are
/// freed ([`release_if_big`]). Allocations this big are mapped by the allocator on
/// their own, so freeing them gives the memory back to the system at once.
pub const KEEP_BYTES: usize = 64 << 20;

/// Frees `buffer` when its capacity is more than [`KEEP_BYTES`]; keeps it (and its
/// capacity) otherwise.
pub fn release_if_big<T>(buffer: &mut Vec<T>) {
    if buffer.capacity().saturating_mul(size_of::<T>()) > KEEP_BYTES {
        *buffer = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_big_buffers_are_freed() {
        let mut small = vec![0u8; KEEP_BYTES];
        release_if_big(&mut small);
        assert_eq!(small.len(), KEEP_BYTES);
        // The same size in f32 elements is four times as many bytes.
        let mut big = Vec::<f32>::with_capacity(KEEP_BYTES / 4 + 1);
        release_if_big(&mut big);
        assert_eq!(big.capacity(), 0);
    }
}
