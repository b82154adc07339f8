//! Averaging gradients into one reusable buffer at memory bandwidth.
//!
//! The summation order is fixed: `mean[i] = (((s0[i] + s1[i]) + s2[i]) + ...) / n`
//! with sources in rank order, so every peer computes a bit-identical average
//! whatever the arrival order. The work is split into cache-sized blocks that
//! run on the rayon pool; each block is written once and every source is read
//! once, with no temporary buffers.

use rayon::prelude::*;

use crate::codec::Accumulate;

/// Elements per parallel task (256 KiB of `f32`).
pub const PAR_BLOCK: usize = 1 << 16;
/// Elements per inner block (16 KiB of `f32`): stays in L1 while all sources are added.
pub const CACHE_BLOCK: usize = 1 << 12;

/// Calls `f(start, block)` for consecutive blocks of `out` covering it
/// exactly, in parallel; `start` is the index of `block[0]` in `out`.
pub fn for_each_block(out: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync) {
    out.par_chunks_mut(PAR_BLOCK)
        .enumerate()
        .for_each(|(p, chunk)| {
            for (c, block) in chunk.chunks_mut(CACHE_BLOCK).enumerate() {
                f(p * PAR_BLOCK + c * CACHE_BLOCK, block);
            }
        });
}

/// Writes the mean of `sources` inputs into `out`. `fill(source, start, block,
/// mode)` must assign or add elements `start .. start + block.len()` of input
/// `source`; it is called for source 0 with [`Accumulate::Assign`] and then for
/// sources 1, 2, ... in order with [`Accumulate::Add`]. With no sources `out`
/// is zeroed.
pub fn mean_into(
    out: &mut [f32],
    sources: usize,
    fill: impl Fn(usize, usize, &mut [f32], Accumulate) + Sync,
) {
    if sources == 0 {
        out.fill(0.0);
        return;
    }
    let n = sources as f32;
    for_each_block(out, |start, block| {
        fill(0, start, block, Accumulate::Assign);
        for source in 1..sources {
            fill(source, start, block, Accumulate::Add);
        }
        if sources > 1 {
            block.iter_mut().for_each(|x| *x /= n);
        }
    });
}

/// Mean of dense `f32` inputs (all of `out.len()` elements) into `out`.
///
/// # Panics
/// If an input's length differs from `out.len()`.
pub fn mean_of_slices(out: &mut [f32], inputs: &[&[f32]]) {
    for (i, input) in inputs.iter().enumerate() {
        assert_eq!(input.len(), out.len(), "input {i} has the wrong length");
    }
    mean_into(out, inputs.len(), |source, start, block, mode| {
        let src = &inputs[source][start..start + block.len()];
        match mode {
            Accumulate::Assign => block.copy_from_slice(src),
            Accumulate::Add => block.iter_mut().zip(src).for_each(|(o, s)| *o += s),
        }
    });
}

/// The definition of the mean, element by element on one thread: the
/// reference that [`mean_into`] must match bit for bit.
pub fn reference_mean(inputs: &[&[f32]]) -> Vec<f32> {
    let Some(first) = inputs.first() else {
        return Vec::new();
    };
    let n = inputs.len() as f32;
    (0..first.len())
        .map(|i| {
            let sum = inputs[1..]
                .iter()
                .fold(first[i], |acc, input| acc + input[i]);
            if inputs.len() > 1 { sum / n } else { sum }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn parallel_mean_is_bit_identical_to_reference() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let len = 3 * PAR_BLOCK + 1234;
        let inputs: Vec<Vec<f32>> = (0..3)
            .map(|_| {
                (0..len)
                    .map(|_| rng.random_range(-1.0f32..1.0) * 1e-2)
                    .collect()
            })
            .collect();
        let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
        let mut out = vec![f32::NAN; len];
        mean_of_slices(&mut out, &refs);
        let expected = reference_mean(&refs);
        assert!(
            out.iter()
                .zip(&expected)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        // Summation order matters in floating point: a different order must be able to differ.
        let reversed: Vec<&[f32]> = refs.iter().rev().copied().collect();
        let other = reference_mean(&reversed);
        assert!(
            other
                .iter()
                .zip(&expected)
                .any(|(a, b)| a.to_bits() != b.to_bits())
        );
    }

    #[test]
    fn single_source_is_copied_and_empty_is_zero() {
        let a = [1.0f32, 2.0, 3.0];
        let mut out = [0.0; 3];
        mean_of_slices(&mut out, &[&a]);
        assert_eq!(out, a);
        mean_of_slices(&mut out, &[]);
        assert_eq!(out, [0.0; 3]);
    }

    #[test]
    fn for_each_block_covers_every_index_once() {
        let mut out = vec![0.0f32; 2 * PAR_BLOCK + 5];
        for_each_block(&mut out, |start, block| {
            for (i, x) in block.iter_mut().enumerate() {
                *x += (start + i) as f32;
            }
        });
        assert!(out.iter().enumerate().all(|(i, x)| *x == i as f32));
    }
}
