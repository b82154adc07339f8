//! Batch normalisation in training mode (the batch's own statistics) forward and backward on
//! NCHW values, channel by channel on all threads: Burn's own version swaps the batch and
//! channel axes into fresh copies on one thread for each of its reductions.

use rayon::prelude::*;

use super::reduce::sum;

/// The sizes of one normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormShape {
    /// Images in the batch.
    pub batch: usize,
    /// Channels, each normalised on its own.
    pub channels: usize,
    /// Values per channel and image (height times width).
    pub pixels: usize,
}

impl NormShape {
    fn len(&self) -> usize {
        self.batch * self.channels * self.pixels
    }

    /// The values of channel `c` over the batch, one slice per image.
    fn planes<'a>(&self, x: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> {
        let (p, cp) = (self.pixels, self.channels * self.pixels);
        (0..self.batch).map(move |n| &x[n * cp + c * p..][..p])
    }
}

/// Each channel's mean and biased variance over the batch (what Burn's running statistics
/// take), as `(mean, variance)`.
pub fn stats(s: NormShape, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), s.len(), "input size");
    let count = (s.batch * s.pixels) as f32;
    (0..s.channels)
        .into_par_iter()
        .map(|c| {
            let mean = s.planes(x, c).map(sum).sum::<f32>() / count;
            let var = s
                .planes(x, c)
                .map(|p| p.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>())
                .sum::<f32>()
                / count;
            (mean, var)
        })
        .unzip()
}

/// `(x - mean) / sqrt(var + epsilon) * gamma + beta`, channel by channel.
pub fn forward(
    s: NormShape,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    (mean, var): (&[f32], &[f32]),
    epsilon: f64,
) -> Vec<f32> {
    assert_eq!(x.len(), s.len(), "input size");
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(s.pixels)
        .zip(x.par_chunks(s.pixels))
        .enumerate()
        .for_each(|(plane, (y, x))| {
            let c = plane % s.channels;
            let scale = gamma[c] * inv_std(var[c], epsilon);
            let shift = beta[c] - mean[c] * scale;
            y.iter_mut()
                .zip(x)
                .for_each(|(y, x)| *y = x * scale + shift);
        });
    y
}

/// Gamma's and beta's gradients, `(sum(dy * xhat), sum(dy))` per channel: also the two sums
/// the input's gradient needs.
pub fn param_grads(
    s: NormShape,
    x: &[f32],
    (mean, var): (&[f32], &[f32]),
    epsilon: f64,
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(dy.len(), s.len(), "output gradient size");
    (0..s.channels)
        .into_par_iter()
        .map(|c| {
            let istd = inv_std(var[c], epsilon);
            let (dot, total) = s
                .planes(dy, c)
                .zip(s.planes(x, c))
                .map(|(g, x)| {
                    let dot = g.iter().zip(x).map(|(g, x)| g * (x - mean[c])).sum::<f32>();
                    (dot, sum(g))
                })
                .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
            (dot * istd, total)
        })
        .unzip()
}

/// The input's gradient, given per channel the sums of `dy` and `dy * xhat` over the
/// `count` values the statistics were taken from (this batch's, or a whole batch's of which
/// this is a part, [`crate::parts`]).
#[allow(clippy::too_many_arguments)]
pub fn input_grad(
    s: NormShape,
    x: &[f32],
    gamma: &[f32],
    (mean, var): (&[f32], &[f32]),
    epsilon: f64,
    dy: &[f32],
    (sum_dy, sum_dy_xhat): (&[f32], &[f32]),
    count: usize,
) -> Vec<f32> {
    let count = count as f32;
    let mut dx = vec![0.0; x.len()];
    dx.par_chunks_mut(s.pixels)
        .zip(x.par_chunks(s.pixels).zip(dy.par_chunks(s.pixels)))
        .enumerate()
        .for_each(|(plane, (dx, (x, dy)))| {
            let c = plane % s.channels;
            let istd = inv_std(var[c], epsilon);
            let (mean_dy, mean_dy_xhat) = (sum_dy[c] / count, sum_dy_xhat[c] / count);
            let scale = gamma[c] * istd;
            for ((dx, x), dy) in dx.iter_mut().zip(x).zip(dy) {
                let xhat = (x - mean[c]) * istd;
                *dx = scale * (dy - mean_dy - xhat * mean_dy_xhat);
            }
        });
    dx
}

/// The mean and biased variance of a whole batch from its parts': `parts[i]` is part `i`'s
/// image count, means and variances (per channel, each over the same values per image).
pub fn pooled_stats(parts: &[(usize, &[f32], &[f32])]) -> (Vec<f32>, Vec<f32>) {
    let total = parts.iter().map(|p| p.0).sum::<usize>() as f32;
    let channels = parts.first().map_or(0, |p| p.1.len());
    (0..channels)
        .map(|c| {
            let mean = parts.iter().map(|p| p.0 as f32 * p.1[c]).sum::<f32>() / total;
            let var = parts
                .iter()
                .map(|p| p.0 as f32 * (p.2[c] + (p.1[c] - mean) * (p.1[c] - mean)))
                .sum::<f32>()
                / total;
            (mean, var)
        })
        .unzip()
}

fn inv_std(var: f32, epsilon: f64) -> f32 {
    1.0 / (var as f64 + epsilon).sqrt() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gradients of [`forward`] with the statistics taken from the batch itself:
    /// `(dx, dgamma, dbeta)`, the input's when `want_x`.
    fn backward(
        s: NormShape,
        x: &[f32],
        gamma: &[f32],
        stats: (&[f32], &[f32]),
        epsilon: f64,
        dy: &[f32],
        want_x: bool,
    ) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
        let (dgamma, dbeta) = param_grads(s, x, stats, epsilon, dy);
        let count = s.batch * s.pixels;
        let dx =
            want_x.then(|| input_grad(s, x, gamma, stats, epsilon, dy, (&dbeta, &dgamma), count));
        (dx, dgamma, dbeta)
    }

    /// The statistics pooled from parts are those of the whole batch.
    #[test]
    fn pooled_statistics_are_the_whole_batch_statistics() {
        let shape = |batch| NormShape {
            batch,
            channels: 3,
            pixels: 4,
        };
        let x: Vec<f32> = (0..5 * 12)
            .map(|i| (i as f32 * 0.61).cos() * 3.0 + 1.0)
            .collect();
        let (head, tail) = x.split_at(3 * 12);
        let (m1, v1) = stats(shape(3), head);
        let (m2, v2) = stats(shape(2), tail);
        let (mean, var) = pooled_stats(&[(3, &m1, &v1), (2, &m2, &v2)]);
        let (want_mean, want_var) = stats(shape(5), &x);
        for c in 0..3 {
            assert!(
                (mean[c] - want_mean[c]).abs() < 1e-5,
                "{mean:?} vs {want_mean:?}"
            );
            assert!(
                (var[c] - want_var[c]).abs() < 1e-5,
                "{var:?} vs {want_var:?}"
            );
        }
        assert!(
            m1 != want_mean && v2 != want_var,
            "the parts differ from the whole"
        );
    }

    /// Forward and backward against the definition, with the gradient checked by central
    /// differences of `sum(y * w)`.
    #[test]
    fn matches_the_definition_and_finite_differences() {
        let s = NormShape {
            batch: 3,
            channels: 2,
            pixels: 5,
        };
        let f = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<f32>>();
        let (x, w) = (f(30, 0.37), f(30, 0.91));
        let (gamma, beta) = ([1.5, -0.5], [0.25, 2.0]);
        let eps = 1e-5;
        let (mean, var) = stats(s, &x);
        let y = forward(s, &x, &gamma, &beta, (&mean, &var), eps);
        for c in 0..2 {
            let vals: Vec<f32> = s.planes(&x, c).flatten().copied().collect();
            let m = vals.iter().sum::<f32>() / 15.0;
            let v = vals.iter().map(|a| (a - m) * (a - m)).sum::<f32>() / 15.0;
            assert!((mean[c] - m).abs() < 1e-6 && (var[c] - v).abs() < 1e-6);
            for (n, plane) in s.planes(&y, c).enumerate() {
                for (i, &got) in plane.iter().enumerate() {
                    let xv = x[n * 10 + c * 5 + i];
                    let want = (xv - m) / (v + 1e-5).sqrt() * gamma[c] + beta[c];
                    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
                }
            }
        }
        let loss = |x: &[f32], gamma: &[f32], beta: &[f32]| -> f64 {
            let (m, v) = stats(s, x);
            let y = forward(s, x, gamma, beta, (&m, &v), eps);
            y.iter().zip(&w).map(|(a, b)| (a * b) as f64).sum()
        };
        let (dx, dgamma, dbeta) = backward(s, &x, &gamma, (&mean, &var), eps, &w, true);
        let dx = dx.unwrap();
        let h = 1e-2f32;
        let numeric = |at: &dyn Fn(f32) -> f64| ((at(h) - at(-h)) / (2.0 * h as f64)) as f32;
        for i in [0, 7, 13, 29] {
            let d = numeric(&|e| {
                let mut x = x.clone();
                x[i] += e;
                loss(&x, &gamma, &beta)
            });
            assert!((dx[i] - d).abs() < 2e-2, "dx[{i}] {} vs {d}", dx[i]);
        }
        for c in 0..2 {
            let dg = numeric(&|e| {
                let mut g = gamma;
                g[c] += e;
                loss(&x, &g, &beta)
            });
            let db = numeric(&|e| {
                let mut b = beta;
                b[c] += e;
                loss(&x, &gamma, &b)
            });
            assert!(
                (dgamma[c] - dg).abs() < 2e-2,
                "dgamma {} vs {dg}",
                dgamma[c]
            );
            assert!((dbeta[c] - db).abs() < 2e-2, "dbeta {} vs {db}", dbeta[c]);
        }
    }
}
