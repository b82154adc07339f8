//! Sums of `f32` slices in interleaved partial sums: a single running sum is one chain of
//! dependent additions, four to eight times slower than the loads it waits for.

/// The sum of `values` in eight interleaved partial sums.
pub(crate) fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = values.chunks_exact(8);
    for chunk in &mut chunks {
        lanes.iter_mut().zip(chunk).for_each(|(l, v)| *l += v);
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_every_value() {
        for n in [0usize, 1, 7, 8, 9, 49, 100] {
            let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
            assert_eq!(super::sum(&v), (n * n.saturating_sub(1) / 2) as f32, "{n}");
        }
    }
}
