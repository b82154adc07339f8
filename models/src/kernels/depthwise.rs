//! Depthwise convolution (one input and one output channel per group, as in MobileNet) by
//! direct loops over each image plane: as matrix products it would be one single-row product
//! per channel.

use rayon::prelude::*;

use super::conv2d::{LayerGrads, Needed};
use super::im2col::{ConvGeometry, valid};

/// Calls `f(tap, out_row, out_cols, in_row, first_in_col)` for every kernel tap and every
/// output row whose taps hit the input; the output columns `out_cols` read input columns
/// `first_in_col, first_in_col + stride_w, ...` of input row `in_row`.
fn taps(g: &ConvGeometry, mut f: impl FnMut(usize, usize, (usize, usize), usize, usize)) {
    let [h, w] = g.in_size;
    let [kh, kw] = g.kernel;
    let [oh_n, ow_n] = g.out_size;
    for ki in 0..kh {
        let (oh_lo, oh_hi) = valid(oh_n, g.stride[0], ki * g.dilation[0], g.padding[0], h);
        for kj in 0..kw {
            let off = kj * g.dilation[1];
            let (lo, hi) = valid(ow_n, g.stride[1], off, g.padding[1], w);
            if lo == hi {
                continue;
            }
            for oh in oh_lo..oh_hi {
                let ih = oh * g.stride[0] + ki * g.dilation[0] - g.padding[0];
                let iw = lo * g.stride[1] + off - g.padding[1];
                f(ki * kw + kj, oh, (lo, hi), ih, iw);
            }
        }
    }
}

/// See [`super::conv2d::forward`]; `g` must be depthwise.
pub fn forward(g: &ConvGeometry, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (plane_in, p, taps_n) = (plane_in(g), g.out_pixels(), g.kernel[0] * g.kernel[1]);
    let (ow_n, sw, w_in) = (g.out_size[1], g.stride[1], g.in_size[1]);
    let mut y = vec![0.0; g.batch * g.out_image()];
    y.par_chunks_mut(p).enumerate().for_each(|(plane, out)| {
        let c = plane % g.in_channels;
        let src = &x[plane * plane_in..][..plane_in];
        let k = &weight[c * taps_n..][..taps_n];
        out.fill(bias.map_or(0.0, |b| b[c]));
        taps(g, |t, oh, (lo, hi), ih, iw| {
            let dst = &mut out[oh * ow_n + lo..oh * ow_n + hi];
            let row = &src[ih * w_in..];
            if sw == 1 {
                for (d, s) in dst.iter_mut().zip(&row[iw..]) {
                    *d += k[t] * s;
                }
            } else {
                for (i, d) in dst.iter_mut().enumerate() {
                    *d += k[t] * row[iw + i * sw];
                }
            }
        });
    });
    y
}

/// See [`super::conv2d::backward`]; `g` must be depthwise.
pub fn backward(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    needed: Needed,
) -> LayerGrads {
    let (plane_in, p, taps_n) = (plane_in(g), g.out_pixels(), g.kernel[0] * g.kernel[1]);
    let (ow_n, sw, w_in) = (g.out_size[1], g.stride[1], g.in_size[1]);
    let channels = g.in_channels;
    let dx = needed.x.then(|| {
        let mut dx = vec![0.0; g.batch * g.in_image()];
        dx.par_chunks_mut(plane_in)
            .enumerate()
            .for_each(|(plane, dst)| {
                let c = plane % channels;
                let grad = &dy[plane * p..][..p];
                let k = &weight[c * taps_n..][..taps_n];
                taps(g, |t, oh, (lo, hi), ih, iw| {
                    let src = &grad[oh * ow_n + lo..oh * ow_n + hi];
                    let row = &mut dst[ih * w_in..];
                    if sw == 1 {
                        for (d, s) in row[iw..].iter_mut().zip(src) {
                            *d += k[t] * s;
                        }
                    } else {
                        for (i, s) in src.iter().enumerate() {
                            row[iw + i * sw] += k[t] * s;
                        }
                    }
                });
            });
        dx
    });
    let weight_grad = needed.weight.then(|| {
        let mut dw = vec![0.0; g.weight_len()];
        dw.par_chunks_mut(taps_n).enumerate().for_each(|(c, dk)| {
            for n in 0..g.batch {
                let plane = n * channels + c;
                let src = &x[plane * plane_in..][..plane_in];
                let grad = &dy[plane * p..][..p];
                taps(g, |t, oh, (lo, hi), ih, iw| {
                    let gr = &grad[oh * ow_n + lo..oh * ow_n + hi];
                    let row = &src[ih * w_in..];
                    dk[t] += if sw == 1 {
                        gr.iter().zip(&row[iw..]).map(|(a, b)| a * b).sum::<f32>()
                    } else {
                        gr.iter()
                            .enumerate()
                            .map(|(i, a)| a * row[iw + i * sw])
                            .sum::<f32>()
                    };
                });
            }
        });
        dw
    });
    let bias = needed.bias.then(|| {
        (0..channels)
            .into_par_iter()
            .map(|c| {
                (0..g.batch)
                    .map(|n| dy[(n * channels + c) * p..][..p].iter().sum::<f32>())
                    .sum()
            })
            .collect()
    });
    LayerGrads {
        x: dx,
        weight: weight_grad,
        bias,
    }
}

fn plane_in(g: &ConvGeometry) -> usize {
    g.in_size[0] * g.in_size[1]
}
