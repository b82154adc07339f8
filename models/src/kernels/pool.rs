//! 2-D max pooling forward (keeping each window's winner) and backward (routing each output
//! gradient to its winner), one image plane per task.

use rayon::prelude::*;

/// Everything that fixes the shapes of one NCHW max pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeometry {
    /// Images times channels: the planes pooled independently.
    pub planes: usize,
    /// Input height and width.
    pub in_size: [usize; 2],
    /// Window height and width.
    pub kernel: [usize; 2],
    /// Step between windows.
    pub stride: [usize; 2],
    /// Implicit `-inf` rows/columns before the input (top, left).
    pub padding: [usize; 2],
    /// Step between window taps.
    pub dilation: [usize; 2],
    /// Output height and width.
    pub out_size: [usize; 2],
}

impl PoolGeometry {
    /// The geometry of pooling `x` (`[batch, channels, h, w]`) with PyTorch's output sizes,
    /// `padding` as `[[top, bottom], [left, right]]`; with `ceil_mode` the last window may
    /// hang over the end but must start inside the input or its leading padding.
    pub fn new(
        x: [usize; 4],
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [[usize; 2]; 2],
        dilation: [usize; 2],
        ceil_mode: bool,
    ) -> Self {
        let [batch, channels, h, w] = x;
        let out = |i: usize, size: usize| {
            let span = (dilation[i] * (kernel[i] - 1) + 1) as isize;
            let padded = (size + padding[i][0] + padding[i][1]) as isize;
            let s = stride[i] as isize;
            // Ceil mode admits a window larger than the input (PyTorch: one output).
            let reach = padded - span;
            let mut n = if ceil_mode {
                -((-reach).div_euclid(s)) + 1
            } else {
                reach.div_euclid(s) + 1
            };
            if ceil_mode && n > 0 && (n - 1) * s >= (size + padding[i][0]) as isize {
                n -= 1;
            }
            assert!(
                n > 0,
                "pooling window {span} leaves no output of an input of {size}"
            );
            n as usize
        };
        PoolGeometry {
            planes: batch * channels,
            in_size: [h, w],
            kernel,
            stride,
            padding: [padding[0][0], padding[1][0]],
            dilation,
            out_size: [out(0, h), out(1, w)],
        }
    }

    fn plane_in(&self) -> usize {
        self.in_size[0] * self.in_size[1]
    }

    fn plane_out(&self) -> usize {
        self.out_size[0] * self.out_size[1]
    }

    /// For every output row (`axis` 0) or column (1), the first input row (column) its
    /// windows read and how many they read, `dilation` apart: the taps in the padding cut off,
    /// so the planes loop with no padding checks.
    fn spans(&self, axis: usize) -> Vec<(usize, usize)> {
        let (s, d, p, len) = (
            self.stride[axis],
            self.dilation[axis],
            self.padding[axis],
            self.in_size[axis],
        );
        (0..self.out_size[axis])
            .map(|o| {
                let mut inside = (0..self.kernel[axis])
                    .filter_map(|k| (o * s + k * d).checked_sub(p).filter(|&t| t < len));
                match inside.next() {
                    Some(first) => (first, 1 + inside.count()),
                    None => (0, 0),
                }
            })
            .collect()
    }
}

/// Marks an output whose window lies entirely in the padding (no winner).
const NONE: u32 = u32::MAX;

/// The pooled planes and, for every output, the index of its window's first maximum within
/// its input plane (NaN wins, as in PyTorch).
pub fn max_forward(g: &PoolGeometry, x: &[f32]) -> (Vec<f32>, Vec<u32>) {
    assert_eq!(x.len(), g.planes * g.plane_in(), "input size");
    assert!(g.plane_in() < NONE as usize, "input plane too large");
    let (pin, pout) = (g.plane_in(), g.plane_out());
    let mut y = vec![0.0; g.planes * pout];
    let mut idx = vec![NONE; g.planes * pout];
    let (rows, cols) = (g.spans(0), g.spans(1));
    let (w, [dh, dw]) = (g.in_size[1], g.dilation);
    y.par_chunks_mut(pout)
        .zip(idx.par_chunks_mut(pout))
        .enumerate()
        .for_each(|(plane, (y, idx))| {
            let src = &x[plane * pin..][..pin];
            let outs = y
                .chunks_mut(g.out_size[1])
                .zip(idx.chunks_mut(g.out_size[1]));
            for ((y, idx), &(r0, rn)) in outs.zip(&rows) {
                for ((y, idx), &(c0, cn)) in y.iter_mut().zip(idx.iter_mut()).zip(&cols) {
                    if rn == 0 || cn == 0 {
                        (*y, *idx) = (f32::NEG_INFINITY, NONE);
                        continue;
                    }
                    // Branch-free scan from the window's first pixel: a later pixel wins
                    // when greater, or when NaN against a number.
                    let (mut best, mut arg) = (src[r0 * w + c0], r0 * w + c0);
                    for r in 0..rn {
                        let base = (r0 + r * dh) * w + c0;
                        for c in 0..cn {
                            let i = base + c * dw;
                            let v = src[i];
                            let take = v > best || (v.is_nan() && !best.is_nan());
                            best = if take { v } else { best };
                            arg = if take { i } else { arg };
                        }
                    }
                    (*y, *idx) = (best, arg as u32);
                }
            }
        });
    (y, idx)
}

/// The input gradient: each output's gradient added to its window's winner.
pub fn max_backward(g: &PoolGeometry, idx: &[u32], dy: &[f32]) -> Vec<f32> {
    let (pin, pout) = (g.plane_in(), g.plane_out());
    assert_eq!(dy.len(), g.planes * pout, "output gradient size");
    assert_eq!(idx.len(), dy.len(), "one winner per output");
    let mut dx = vec![0.0; g.planes * pin];
    dx.par_chunks_mut(pin).enumerate().for_each(|(plane, dx)| {
        let grads = &dy[plane * pout..][..pout];
        for (&i, &d) in idx[plane * pout..][..pout].iter().zip(grads) {
            if let Some(slot) = dx.get_mut(i as usize) {
                *slot += d;
            }
        }
    });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pooling by its definition: every window scanned with `f32::max` semantics on
    /// non-NaN values, the first maximum taking the gradient.
    fn reference(g: &PoolGeometry, x: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let [h, w] = g.in_size;
        let mut y = Vec::new();
        let mut dx = vec![0.0; x.len()];
        for plane in 0..g.planes {
            for oh in 0..g.out_size[0] {
                for ow in 0..g.out_size[1] {
                    let mut best: Option<(f32, usize)> = None;
                    for ki in 0..g.kernel[0] {
                        for kj in 0..g.kernel[1] {
                            let ih = (oh * g.stride[0] + ki * g.dilation[0]) as isize
                                - g.padding[0] as isize;
                            let iw = (ow * g.stride[1] + kj * g.dilation[1]) as isize
                                - g.padding[1] as isize;
                            if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                                continue;
                            }
                            let i = plane * h * w + ih as usize * w + iw as usize;
                            if best.is_none_or(|(b, _)| x[i] > b) {
                                best = Some((x[i], i));
                            }
                        }
                    }
                    let (v, i) = best.expect("every window holds an input pixel");
                    y.push(v);
                    dx[i] += dy[y.len() - 1];
                }
            }
        }
        (y, dx)
    }

    #[test]
    fn matches_the_definition_and_pytorch_sizes() {
        // (input, kernel, stride, padding, dilation, ceil_mode, expected output size)
        let cases = [
            (
                [2, 3, 15, 15],
                [3, 3],
                [2, 2],
                [[0, 0], [0, 0]],
                [1, 1],
                true,
                [7, 7],
            ),
            (
                [1, 2, 8, 8],
                [3, 3],
                [2, 2],
                [[0, 0], [0, 0]],
                [1, 1],
                true,
                [4, 4],
            ),
            (
                [1, 2, 8, 8],
                [3, 3],
                [2, 2],
                [[0, 0], [0, 0]],
                [1, 1],
                false,
                [3, 3],
            ),
            (
                [2, 2, 7, 9],
                [2, 3],
                [2, 1],
                [[1, 1], [1, 1]],
                [1, 2],
                false,
                [4, 7],
            ),
            (
                [1, 1, 5, 5],
                [3, 3],
                [2, 2],
                [[1, 1], [1, 1]],
                [1, 1],
                true,
                [3, 3],
            ),
            (
                [3, 4, 32, 32],
                [2, 2],
                [2, 2],
                [[0, 0], [0, 0]],
                [1, 1],
                false,
                [16, 16],
            ),
            // A window larger than the input in ceil mode, as SqueezeNet meets on tiny images.
            (
                [1, 2, 2, 2],
                [3, 3],
                [2, 2],
                [[0, 0], [0, 0]],
                [1, 1],
                true,
                [1, 1],
            ),
        ];
        for (shape, k, s, p, d, ceil, out) in cases {
            let g = PoolGeometry::new(shape, k, s, p, d, ceil);
            assert_eq!(g.out_size, out, "{g:?}");
            let n = shape.iter().product::<usize>();
            // Repeated values make ties: the first maximum must win.
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
            let dy: Vec<f32> = (0..g.planes * g.plane_out())
                .map(|i| i as f32 * 0.5 + 1.0)
                .collect();
            let (y, idx) = max_forward(&g, &x);
            let (want_y, want_dx) = reference(&g, &x, &dy);
            assert_eq!(y, want_y, "{g:?}");
            assert_eq!(max_backward(&g, &idx, &dy), want_dx, "{g:?}");
        }
    }
}
