//! A fully connected layer `y = x W^T + b` (PyTorch's `[out, in]` weight layout) forward and
//! backward as three matrix products whose results are fresh row-major buffers: the weight
//! gradient comes out in the weight's own layout, with no transposed copy.

use rayon::prelude::*;

use super::conv2d::{LayerGrads, Needed};
use super::gemm::{MatRef, Threads, matmul};
use super::reduce::sum;

/// The sizes of one fully connected layer applied to a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    /// Rows of the input.
    pub batch: usize,
    /// Input features.
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
}

/// `x` is `[batch, d_in]`, `weight` `[d_out, d_in]`, `bias` `[d_out]`; returns `[batch, d_out]`.
pub fn forward(s: LinearShape, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    check(s, x, weight);
    // As `y^T = W x^T`: the weight streams through the GEMM as its wide operand, twice as
    // fast on VGG11's classifier as `x W^T` (bench/README.md, step 5).
    let mut yt = vec![0.0; s.d_out * s.batch];
    matmul(
        &mut yt,
        s.batch,
        false,
        MatRef::row_major(weight, s.d_out, s.d_in, s.d_in),
        MatRef::row_major(x, s.batch, s.d_in, s.d_in).t(),
        Threads::Pool,
    );
    if let Some(bias) = bias {
        assert_eq!(bias.len(), s.d_out, "bias size");
    }
    transpose(&yt, s.d_out, s.batch, bias)
}

/// The gradients of [`forward`]'s inputs given `dy` (`[batch, d_out]`).
pub fn backward(
    s: LinearShape,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    needed: Needed,
) -> LayerGrads {
    backward_into(s, x, weight, dy, needed, None)
}

/// [`backward`], with the weight gradient written into `weight_grad` when given (it is then
/// absent from the result): see [`super::sink`].
pub fn backward_into(
    s: LinearShape,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    needed: Needed,
    weight_grad: Option<&mut [f32]>,
) -> LayerGrads {
    check(s, x, weight);
    assert_eq!(dy.len(), s.batch * s.d_out, "output gradient size");
    let dy_m = MatRef::row_major(dy, s.batch, s.d_out, s.d_out);
    let dx = needed.x.then(|| {
        // As `dx^T = W^T dy^T`, for the same reason as the forward pass.
        let mut dxt = vec![0.0; s.d_in * s.batch];
        let w = MatRef::row_major(weight, s.d_out, s.d_in, s.d_in);
        matmul(&mut dxt, s.batch, false, w.t(), dy_m.t(), Threads::Pool);
        transpose(&dxt, s.d_in, s.batch, None)
    });
    let x = MatRef::row_major(x, s.batch, s.d_in, s.d_in);
    let dw = match weight_grad {
        Some(dst) if needed.weight => {
            matmul(dst, s.d_in, false, dy_m.t(), x, Threads::Pool);
            None
        }
        _ => needed.weight.then(|| {
            let mut dw = vec![0.0; s.d_out * s.d_in];
            matmul(&mut dw, s.d_in, false, dy_m.t(), x, Threads::Pool);
            dw
        }),
    };
    let db = needed.bias.then(|| {
        (0..s.d_out)
            .into_par_iter()
            .map(|j| (0..s.batch).map(|i| dy[i * s.d_out + j]).sum())
            .collect()
    });
    LayerGrads {
        x: dx,
        weight: dw,
        bias: db,
    }
}

/// The weight of a layer whose input repeats each value `repeat` times in a row, with each run
/// of `repeat` columns summed: `[d_out, d_in / repeat]` from `[d_out, d_in]`. VGG's classifier
/// meets such an input at 32x32 images, where the adaptive pooling copies each value of a 1x1
/// feature map over 7x7: multiplying the sums by the values gives the same output as the full
/// layer with `repeat` times fewer products.
pub fn fold_repeats(weight: &[f32], d_out: usize, repeat: usize) -> Vec<f32> {
    assert!(
        repeat > 0 && weight.len().is_multiple_of(d_out * repeat),
        "weight rows split into runs"
    );
    let d_in = weight.len() / d_out;
    let mut folded = vec![0.0; weight.len() / repeat];
    folded
        .par_chunks_mut(d_in / repeat)
        .zip(weight.par_chunks(d_in))
        .for_each(|(dst, row)| {
            for (d, run) in dst.iter_mut().zip(row.chunks(repeat)) {
                *d = sum(run);
            }
        });
    folded
}

/// The adjoint of [`fold_repeats`]: the full weight gradient `dst` (`[d_out, d_in]`), each
/// value of the folded gradient copied over its run of `repeat` columns.
pub fn unfold_repeats(folded: &[f32], repeat: usize, dst: &mut [f32]) {
    assert_eq!(folded.len() * repeat, dst.len(), "unfolded gradient size");
    const ROWS: usize = 1 << 12;
    dst.par_chunks_mut(ROWS * repeat)
        .zip(folded.par_chunks(ROWS))
        .for_each(|(dst, src)| {
            for (run, &v) in dst.chunks_mut(repeat).zip(src) {
                run.fill(v);
            }
        });
}

/// The `cols x rows` transpose of the row-major `rows x cols` matrix `m`, plus `bias[r]` on
/// every value of row `r` of `m` when given.
fn transpose(m: &[f32], rows: usize, cols: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let mut out = vec![0.0; rows * cols];
    out.par_chunks_mut(rows).enumerate().for_each(|(c, dst)| {
        for (r, d) in dst.iter_mut().enumerate() {
            *d = m[r * cols + c] + bias.map_or(0.0, |b| b[r]);
        }
    });
    out
}

fn check(s: LinearShape, x: &[f32], weight: &[f32]) {
    assert_eq!(x.len(), s.batch * s.d_in, "input size");
    assert_eq!(weight.len(), s.d_out * s.d_in, "weight size");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_definition() {
        let s = LinearShape {
            batch: 3,
            d_in: 5,
            d_out: 4,
        };
        let f = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin()).collect::<Vec<f32>>();
        let (x, w, b, dy) = (f(15, 0.3), f(20, 0.7), f(4, 1.1), f(12, 0.5));
        let y = forward(s, &x, &w, Some(&b));
        let all = Needed {
            x: true,
            weight: true,
            bias: true,
        };
        let g = backward(s, &x, &w, &dy, all);
        let mut sink = vec![f32::NAN; 20];
        assert_eq!(
            backward_into(s, &x, &w, &dy, all, Some(&mut sink)).weight,
            None
        );
        assert_eq!(Some(sink), g.weight);
        let close = |a: f32, e: f32| assert!((a - e).abs() < 1e-5, "{a} vs {e}");
        for i in 0..3 {
            for o in 0..4 {
                let want = b[o] + (0..5).map(|k| x[i * 5 + k] * w[o * 5 + k]).sum::<f32>();
                close(y[i * 4 + o], want);
            }
            for k in 0..5 {
                let want = (0..4).map(|o| dy[i * 4 + o] * w[o * 5 + k]).sum::<f32>();
                close(g.x.as_ref().unwrap()[i * 5 + k], want);
            }
        }
        for o in 0..4 {
            for k in 0..5 {
                let want = (0..3).map(|i| dy[i * 4 + o] * x[i * 5 + k]).sum::<f32>();
                close(g.weight.as_ref().unwrap()[o * 5 + k], want);
            }
            close(
                g.bias.as_ref().unwrap()[o],
                (0..3).map(|i| dy[i * 4 + o]).sum(),
            );
        }
    }

    #[test]
    fn folding_sums_each_run_and_unfolding_is_its_adjoint() {
        // 2 rows of 6 inputs in runs of 3.
        let w: Vec<f32> = (0..12).map(|i| i as f32).collect();
        assert_eq!(fold_repeats(&w, 2, 3), [3.0, 12.0, 21.0, 30.0]);
        let mut full = vec![f32::NAN; 12];
        unfold_repeats(&[1.0, 2.0, 3.0, 4.0], 3, &mut full);
        assert_eq!(
            full,
            [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0, 4.0, 4.0]
        );
        // <fold(w), g> == <w, unfold(g)>.
        let g = [0.5, -1.0, 2.0, 0.25];
        let lhs: f32 = fold_repeats(&w, 2, 3)
            .iter()
            .zip(&g)
            .map(|(a, b)| a * b)
            .sum();
        let mut unfolded = vec![0.0; 12];
        unfold_repeats(&g, 3, &mut unfolded);
        let rhs: f32 = w.iter().zip(&unfolded).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs}");
    }
}
