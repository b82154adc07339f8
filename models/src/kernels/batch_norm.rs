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

/// The gradients of [`forward`] with the statistics taken from the batch itself:
/// `(dx, dgamma, dbeta)`, the input's when `want_x`.
pub fn backward(
    s: NormShape,
    x: &[f32],
    gamma: &[f32],
    (mean, var): (&[f32], &[f32]),
    epsilon: f64,
    dy: &[f32],
    want_x: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    assert_eq!(dy.len(), s.len(), "output gradient size");
    // Per channel: sum(dy) (beta's gradient) and sum(dy * xhat) (gamma's).
    let (dbeta, dgamma): (Vec<f32>, Vec<f32>) = (0..s.channels)
        .into_par_iter()
        .map(|c| {
            let istd = inv_std(var[c], epsilon);
            s.planes(dy, c)
                .zip(s.planes(x, c))
                .map(|(g, x)| {
                    let dot = g.iter().zip(x).map(|(g, x)| g * (x - mean[c])).sum::<f32>();
                    (sum(g), dot * istd)
                })
                .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
        })
        .unzip();
    let dx = want_x.then(|| {
        let count = (s.batch * s.pixels) as f32;
        let mut dx = vec![0.0; x.len()];
        dx.par_chunks_mut(s.pixels)
            .zip(x.par_chunks(s.pixels).zip(dy.par_chunks(s.pixels)))
            .enumerate()
            .for_each(|(plane, (dx, (x, dy)))| {
                let c = plane % s.channels;
                let istd = inv_std(var[c], epsilon);
                let (mean_dy, mean_dy_xhat) = (dbeta[c] / count, dgamma[c] / count);
                let scale = gamma[c] * istd;
                for ((dx, x), dy) in dx.iter_mut().zip(x).zip(dy) {
                    let xhat = (x - mean[c]) * istd;
                    *dx = scale * (dy - mean_dy - xhat * mean_dy_xhat);
                }
            });
        dx
    });
    (dx, dgamma, dbeta)
}

fn inv_std(var: f32, epsilon: f64) -> f32 {
    1.0 / (var as f64 + epsilon).sqrt() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

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
