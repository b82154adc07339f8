//! 2-D convolution forward and backward as matrix products: unfold a block of images into one
//! column matrix, multiply by the weights (one product per group), fold back.
//!
//! Images go through in blocks whose column matrix stays under [`COL_BUDGET`] values, and
//! every batch-wide sum (weight and bias gradients) adds the blocks in order, so results
//! depend on the shapes only, never on the number of threads.

use rayon::prelude::*;

use super::depthwise;
use super::gemm::{MatRef, Threads, matmul};
use super::im2col::{ConvGeometry, TapMap, col2im, im2col};

/// Most values one block's column matrix may hold (32 MiB of `f32`).
const COL_BUDGET: usize = 8 << 20;

/// Output pixels per image from which the forward pass multiplies each image on its own
/// (images in parallel) rather than side by side with others in one block. (The backward
/// pass measured slower per image at these sizes: it always works in blocks.)
const PER_IMAGE_MIN_PIXELS: usize = 128;

/// Which gradients a backward pass must produce: inputs that do not require a gradient
/// (the images of the first layer, frozen weights) cost nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needed {
    /// The gradient of the input.
    pub x: bool,
    /// The gradient of the weights.
    pub weight: bool,
    /// The gradient of the bias.
    pub bias: bool,
}

/// The gradients of one convolution, each present when it was [`Needed`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConvGrads {
    /// Same shape as the input.
    pub x: Option<Vec<f32>>,
    /// Same shape as the weights.
    pub weight: Option<Vec<f32>>,
    /// One value per output channel.
    pub bias: Option<Vec<f32>>,
}

/// Images per block.
fn block_images(g: &ConvGeometry) -> usize {
    let per_image = g.col_rows().max(g.out_channels) * g.out_pixels();
    (COL_BUDGET / per_image.max(1)).clamp(1, g.batch.max(1))
}

/// Fills the column matrix of images `xs` (one block), in parallel over input channels.
fn unfold(g: &ConvGeometry, map: &TapMap, xs: &[f32], col: &mut [f32], ld: usize) {
    let band = g.kernel[0] * g.kernel[1] * ld;
    col.par_chunks_mut(band).enumerate().for_each(|(c, band)| {
        for (i, x) in xs.chunks(g.in_image()).enumerate() {
            im2col(g, map, x, c..c + 1, band, ld, i * g.out_pixels());
        }
    });
}

/// The forward pass: `x` is `[batch, in_channels, h, w]`, `weight` is
/// `[out_channels, in_channels / groups, kh, kw]`, `bias` has one value per output channel;
/// returns `[batch, out_channels, out_h, out_w]`.
pub fn forward(g: &ConvGeometry, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    check(g, x, weight, bias);
    if g.is_depthwise() {
        depthwise::forward(g, x, weight, bias)
    } else if g.out_pixels() >= PER_IMAGE_MIN_PIXELS {
        forward_per_image(g, x, weight, bias)
    } else {
        forward_in_blocks(g, x, weight, bias, block_images(g))
    }
}

/// [`forward`] with one product per image, images in parallel: no gather or scatter between
/// layouts, for images wide enough to keep the GEMM efficient.
pub(super) fn forward_per_image(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut y = vec![0.0; g.batch * g.out_image()];
    let (p, mg, kg) = (g.out_pixels(), g.group_out(), g.group_rows());
    let map = TapMap::new(g);
    y.par_chunks_mut(g.out_image())
        .zip(x.par_chunks(g.in_image()))
        .for_each_init(Vec::new, |buffer, (y, x)| {
            let col = if g.is_pointwise() {
                x
            } else {
                buffer.resize(g.col_rows() * p, 0.0);
                im2col(g, &map, x, 0..g.in_channels, buffer, p, 0);
                &buffer[..]
            };
            for gi in 0..g.groups {
                matmul(
                    &mut y[gi * mg * p..],
                    p,
                    false,
                    MatRef::row_major(&weight[gi * mg * kg..], mg, kg, kg),
                    MatRef::row_major(&col[gi * kg * p..], kg, p, p),
                    Threads::Serial,
                );
            }
            if let Some(bias) = bias {
                for (row, b) in y.chunks_mut(p).zip(bias) {
                    row.iter_mut().for_each(|v| *v += b);
                }
            }
        });
    y
}

/// [`forward`] through the matrix products, `b` images per block.
pub(super) fn forward_in_blocks(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    b: usize,
) -> Vec<f32> {
    let mut y = vec![0.0; g.batch * g.out_image()];
    let (p, mg, kg) = (g.out_pixels(), g.group_out(), g.group_rows());
    let map = TapMap::new(g);
    let mut col = Vec::new();
    let mut tmp = Vec::new();
    for (xs, ys) in x
        .chunks(b * g.in_image())
        .zip(y.chunks_mut(b * g.out_image()))
    {
        let nb = ys.len() / g.out_image();
        let ld = nb * p;
        let col: &[f32] = if g.is_pointwise() && nb == 1 {
            xs
        } else {
            col.resize(g.col_rows() * ld, 0.0);
            unfold(g, &map, xs, &mut col, ld);
            &col
        };
        let direct = nb == 1;
        if !direct {
            tmp.resize(g.out_channels * ld, 0.0);
        }
        let dst: &mut [f32] = if direct { ys } else { &mut tmp };
        for gi in 0..g.groups {
            matmul(
                &mut dst[gi * mg * ld..],
                ld,
                false,
                MatRef::row_major(&weight[gi * mg * kg..], mg, kg, kg),
                MatRef::row_major(&col[gi * kg * ld..], kg, ld, ld),
                Threads::Pool,
            );
        }
        if direct {
            if let Some(bias) = bias {
                ys.par_chunks_mut(p)
                    .zip(bias)
                    .for_each(|(row, b)| row.iter_mut().for_each(|v| *v += b));
            }
        } else {
            ys.par_chunks_mut(g.out_image())
                .enumerate()
                .for_each(|(i, y)| {
                    for (m, row) in y.chunks_mut(p).enumerate() {
                        let src = &tmp[m * ld + i * p..][..p];
                        let b = bias.map_or(0.0, |b| b[m]);
                        row.iter_mut().zip(src).for_each(|(d, s)| *d = s + b);
                    }
                });
        }
    }
    y
}

/// The backward pass: the gradients of [`forward`]'s inputs given `dy`, the gradient of its
/// output.
pub fn backward(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    needed: Needed,
) -> ConvGrads {
    check(g, x, weight, None);
    assert_eq!(dy.len(), g.batch * g.out_image(), "output gradient size");
    if g.is_depthwise() {
        return depthwise::backward(g, x, weight, dy, needed);
    }
    backward_in_blocks(g, x, weight, dy, needed, block_images(g))
}

/// [`backward`] through the matrix products, `b` images per block.
pub(super) fn backward_in_blocks(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    needed: Needed,
    b: usize,
) -> ConvGrads {
    let (p, mg, kg) = (g.out_pixels(), g.group_out(), g.group_rows());
    let mut dx = needed.x.then(|| vec![0.0; g.batch * g.in_image()]);
    let mut dw = needed.weight.then(|| vec![0.0; g.weight_len()]);
    let mut db = needed.bias.then(|| vec![0.0; g.out_channels]);
    let map = TapMap::new(g);
    let mut col = Vec::new();
    let mut gathered = Vec::new();
    for (blk, (xs, dys)) in x
        .chunks(b * g.in_image())
        .zip(dy.chunks(b * g.out_image()))
        .enumerate()
    {
        let nb = dys.len() / g.out_image();
        let ld = nb * p;
        let dyb: &[f32] = if nb == 1 {
            dys
        } else {
            gathered.resize(g.out_channels * ld, 0.0);
            gathered
                .par_chunks_mut(ld)
                .enumerate()
                .for_each(|(m, row)| {
                    for (i, dst) in row.chunks_mut(p).enumerate() {
                        dst.copy_from_slice(&dys[i * g.out_image() + m * p..][..p]);
                    }
                });
            &gathered
        };
        if let Some(db) = db.as_mut() {
            let sums: Vec<f32> = dyb.par_chunks(ld).map(|row| row.iter().sum()).collect();
            db.iter_mut().zip(sums).for_each(|(d, s)| *d += s);
        }
        if let Some(dw) = dw.as_mut() {
            let col: &[f32] = if g.is_pointwise() && nb == 1 {
                xs
            } else {
                col.resize(g.col_rows() * ld, 0.0);
                unfold(g, &map, xs, &mut col, ld);
                &col
            };
            for gi in 0..g.groups {
                matmul(
                    &mut dw[gi * mg * kg..],
                    kg,
                    blk > 0,
                    MatRef::row_major(&dyb[gi * mg * ld..], mg, ld, ld),
                    MatRef::row_major(&col[gi * kg * ld..], kg, ld, ld).t(),
                    Threads::Pool,
                );
            }
        }
        if let Some(dx) = dx.as_mut() {
            let dxs = &mut dx[blk * b * g.in_image()..][..nb * g.in_image()];
            let direct = g.is_pointwise() && nb == 1;
            if !direct {
                col.resize(g.col_rows() * ld, 0.0);
            }
            let dcol: &mut [f32] = if direct { dxs } else { &mut col };
            for gi in 0..g.groups {
                matmul(
                    &mut dcol[gi * kg * ld..],
                    ld,
                    false,
                    MatRef::row_major(&weight[gi * mg * kg..], mg, kg, kg).t(),
                    MatRef::row_major(&dyb[gi * mg * ld..], mg, ld, ld),
                    Threads::Pool,
                );
            }
            if !direct {
                let col = &col;
                dxs.par_chunks_mut(g.in_image())
                    .enumerate()
                    .for_each(|(i, dx)| col2im(g, &map, col, ld, i * p, dx));
            }
        }
    }
    ConvGrads {
        x: dx,
        weight: dw,
        bias: db,
    }
}

fn check(g: &ConvGeometry, x: &[f32], weight: &[f32], bias: Option<&[f32]>) {
    assert_eq!(x.len(), g.batch * g.in_image(), "input size");
    assert_eq!(weight.len(), g.weight_len(), "weight size");
    if let Some(bias) = bias {
        assert_eq!(bias.len(), g.out_channels, "bias size");
    }
}
