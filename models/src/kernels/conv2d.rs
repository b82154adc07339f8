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
use super::trim::Trimmed;

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

/// The gradients of one layer (convolution or fully connected), each present when it was
/// [`Needed`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerGrads {
    /// Same shape as the input.
    pub x: Option<Vec<f32>>,
    /// Same shape as the weights.
    pub weight: Option<Vec<f32>>,
    /// One value per output channel.
    pub bias: Option<Vec<f32>>,
}

/// Weights up to this many values make small products: their blocks run in parallel, each
/// multiplying on one thread, because waking the pool for every small product cost more
/// than the product (SqueezeNet, MobileNet's pointwise layers). Larger weights run their
/// blocks one after another, each product on the whole pool.
const PARALLEL_BLOCKS_MAX_WEIGHT: usize = 1 << 18;

/// How many blocks a batch is cut into, at least, when blocks run in parallel: one per core
/// of the 2-core machines peers and functions run on (measured: 2 blocks beat 4 and 8 on
/// SqueezeNet by 15-30%, bench/README.md). A constant, not the pool's size, so that results
/// stay the same whatever the number of threads.
const PARALLEL_BLOCKS: usize = 2;

/// How `g` uses the threads, and its images per block (a function of the shapes only).
fn plan(g: &ConvGeometry) -> (Threads, usize) {
    let per_image = g.col_rows().max(g.out_channels) * g.out_pixels();
    let budget = (COL_BUDGET / per_image.max(1)).clamp(1, g.batch.max(1));
    if g.weight_len() <= PARALLEL_BLOCKS_MAX_WEIGHT {
        (
            Threads::Serial,
            budget.min(g.batch.div_ceil(PARALLEL_BLOCKS)).max(1),
        )
    } else {
        (Threads::Pool, budget)
    }
}

/// Calls `f(index, chunk)` for the `size`-long chunks of `data`, on the pool or on this thread.
fn chunks<T: Send>(
    data: &mut [T],
    size: usize,
    threads: Threads,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    match threads {
        Threads::Pool => data
            .par_chunks_mut(size)
            .enumerate()
            .for_each(|(i, c)| f(i, c)),
        Threads::Serial => data.chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c)),
    }
}

/// Fills the column matrix of images `xs` (one block), by bands of input channels.
fn unfold(
    g: &ConvGeometry,
    map: &TapMap,
    xs: &[f32],
    col: &mut [f32],
    ld: usize,
    threads: Threads,
) {
    let band = g.kernel[0] * g.kernel[1] * ld;
    chunks(col, band, threads, |c, band| {
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
    if let Some(t) = Trimmed::new(g) {
        forward(&t.geometry, x, &t.weight(weight), bias)
    } else if g.is_depthwise() {
        depthwise::forward(g, x, weight, bias)
    } else if g.out_pixels() >= PER_IMAGE_MIN_PIXELS {
        forward_per_image(g, x, weight, bias)
    } else {
        let (threads, b) = plan(g);
        forward_in_blocks(g, x, weight, bias, b, threads)
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

/// [`forward`] through the matrix products, `b` images per block, blocks in parallel
/// (`Serial` products) or one after another (`Pool` products).
pub(super) fn forward_in_blocks(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    b: usize,
    threads: Threads,
) -> Vec<f32> {
    let mut y = vec![0.0; g.batch * g.out_image()];
    let map = TapMap::new(g);
    let block = |xs: &[f32], ys: &mut [f32]| forward_block(g, &map, xs, weight, bias, ys, threads);
    let (xb, yb) = (b * g.in_image(), b * g.out_image());
    match threads {
        Threads::Serial => x
            .par_chunks(xb)
            .zip(y.par_chunks_mut(yb))
            .for_each(|(xs, ys)| block(xs, ys)),
        Threads::Pool => x
            .chunks(xb)
            .zip(y.chunks_mut(yb))
            .for_each(|(xs, ys)| block(xs, ys)),
    }
    y
}

/// One block of [`forward_in_blocks`]: unfold, one product per group, scatter to NCHW with
/// the bias.
fn forward_block(
    g: &ConvGeometry,
    map: &TapMap,
    xs: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    ys: &mut [f32],
    threads: Threads,
) {
    let (p, mg, kg) = (g.out_pixels(), g.group_out(), g.group_rows());
    let nb = ys.len() / g.out_image();
    let ld = nb * p;
    let mut buffer = Vec::new();
    let col: &[f32] = if g.is_pointwise() && nb == 1 {
        xs
    } else {
        buffer.resize(g.col_rows() * ld, 0.0);
        unfold(g, map, xs, &mut buffer, ld, threads);
        &buffer
    };
    let direct = nb == 1;
    let mut tmp = Vec::new();
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
            threads,
        );
    }
    if direct {
        if let Some(bias) = bias {
            for (row, b) in ys.chunks_mut(p).zip(bias) {
                row.iter_mut().for_each(|v| *v += b);
            }
        }
    } else {
        chunks(ys, g.out_image(), threads, |i, y| {
            for (m, row) in y.chunks_mut(p).enumerate() {
                let src = &tmp[m * ld + i * p..][..p];
                let b = bias.map_or(0.0, |b| b[m]);
                row.iter_mut().zip(src).for_each(|(d, s)| *d = s + b);
            }
        });
    }
}

/// The backward pass: the gradients of [`forward`]'s inputs given `dy`, the gradient of its
/// output.
pub fn backward(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    needed: Needed,
) -> LayerGrads {
    backward_into(g, x, weight, dy, needed, None)
}

/// [`backward`], with the weight gradient written into `weight_grad` when given (it is then
/// absent from the result): see [`super::sink`].
pub fn backward_into(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    needed: Needed,
    weight_grad: Option<&mut [f32]>,
) -> LayerGrads {
    check(g, x, weight, None);
    assert_eq!(dy.len(), g.batch * g.out_image(), "output gradient size");
    if let Some(t) = Trimmed::new(g) {
        let mut grads = backward_into(&t.geometry, x, &t.weight(weight), dy, needed, None);
        if let Some(compact) = grads.weight.take() {
            match weight_grad {
                Some(dst) => t.expand(&compact, dst),
                None => {
                    let mut full = vec![0.0; g.weight_len()];
                    t.expand(&compact, &mut full);
                    grads.weight = Some(full);
                }
            }
        }
        return grads;
    }
    let grads = if g.is_depthwise() {
        depthwise::backward(g, x, weight, dy, needed)
    } else {
        let (threads, b) = plan(g);
        let direct = weight_grad.is_some() && threads == Threads::Pool;
        let (grads, dst) = if direct {
            (
                backward_in_blocks(g, x, weight, dy, needed, b, threads, weight_grad),
                None,
            )
        } else {
            (
                backward_in_blocks(g, x, weight, dy, needed, b, threads, None),
                weight_grad,
            )
        };
        return into_sink(grads, dst);
    };
    into_sink(grads, weight_grad)
}

/// Moves the weight gradient of `grads` into `dst` when given.
fn into_sink(mut grads: LayerGrads, dst: Option<&mut [f32]>) -> LayerGrads {
    if let Some(dst) = dst
        && let Some(dw) = grads.weight.take()
    {
        dst.copy_from_slice(&dw);
    }
    grads
}

/// [`backward`] through the matrix products, `b` images per block: blocks in parallel
/// (`Serial` products, each block's weight and bias gradients summed afterwards in block
/// order) or one after another (`Pool` products accumulating into one gradient).
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_in_blocks(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    needed: Needed,
    b: usize,
    threads: Threads,
    weight_grad: Option<&mut [f32]>,
) -> LayerGrads {
    let map = TapMap::new(g);
    let mut dx = needed.x.then(|| vec![0.0; g.batch * g.in_image()]);
    let (wl, bl) = (
        if needed.weight { g.weight_len() } else { 0 },
        if needed.bias { g.out_channels } else { 0 },
    );
    let blocks = g.batch.div_ceil(b.max(1));
    let (xb, yb) = (b * g.in_image(), b * g.out_image());
    let block =
        |i: usize, dxs: Option<&mut [f32]>, dw: &mut [f32], db: &mut [f32], accumulate: bool| {
            let (xs, dys) = (&x[i * xb..], &dy[i * yb..]);
            let nb = (g.batch - i * b).min(b);
            let (xs, dys) = (&xs[..nb * g.in_image()], &dys[..nb * g.out_image()]);
            backward_block(g, &map, xs, dys, weight, dxs, dw, db, accumulate, threads);
        };
    let sums = match threads {
        Threads::Serial => {
            let one = |i: usize, dxs: Option<&mut [f32]>| {
                let mut sums = Sums::zeros(wl, bl);
                block(i, dxs, &mut sums.weight, &mut sums.bias, false);
                sums
            };
            let partial: Vec<Sums> = match dx.as_mut() {
                Some(dx) => dx
                    .par_chunks_mut(xb)
                    .enumerate()
                    .map(|(i, dxs)| one(i, Some(dxs)))
                    .collect(),
                None => (0..blocks).into_par_iter().map(|i| one(i, None)).collect(),
            };
            partial
                .into_iter()
                .reduce(Sums::add)
                .unwrap_or(Sums::zeros(wl, bl))
        }
        Threads::Pool => {
            // The first block overwrites the weight gradient, so a sink needs no zeroing.
            let (mut sums, mut dst) = match weight_grad {
                Some(dst) if needed.weight => (Sums::zeros(0, bl), Some(dst)),
                _ => (Sums::zeros(wl, bl), None),
            };
            for i in 0..blocks {
                let dxs = dx.as_mut().map(|dx| {
                    let end = (i * xb + xb).min(dx.len());
                    &mut dx[i * xb..end]
                });
                let dw = match dst.as_deref_mut() {
                    Some(dst) => dst,
                    None => &mut sums.weight[..],
                };
                block(i, dxs, dw, &mut sums.bias, i > 0);
            }
            if dst.is_some() {
                return LayerGrads {
                    x: dx,
                    weight: None,
                    bias: needed.bias.then_some(sums.bias),
                };
            }
            sums
        }
    };
    LayerGrads {
        x: dx,
        weight: needed.weight.then_some(sums.weight),
        bias: needed.bias.then_some(sums.bias),
    }
}

/// Weight and bias gradients summed over some images.
struct Sums {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Sums {
    fn zeros(weight: usize, bias: usize) -> Self {
        Sums {
            weight: vec![0.0; weight],
            bias: vec![0.0; bias],
        }
    }

    fn add(mut self, other: Sums) -> Sums {
        self.weight
            .iter_mut()
            .zip(&other.weight)
            .for_each(|(a, b)| *a += b);
        self.bias
            .iter_mut()
            .zip(&other.bias)
            .for_each(|(a, b)| *a += b);
        self
    }
}

/// One block of [`backward_in_blocks`]: gather the output gradient into one matrix, add its
/// bias gradient to `db` and its weight gradient to `dw` (overwriting it unless
/// `accumulate`; either may be empty: not needed), and fold the input gradient into `dxs`
/// when asked for.
#[allow(clippy::too_many_arguments)]
fn backward_block(
    g: &ConvGeometry,
    map: &TapMap,
    xs: &[f32],
    dys: &[f32],
    weight: &[f32],
    dxs: Option<&mut [f32]>,
    dw: &mut [f32],
    db: &mut [f32],
    accumulate: bool,
    threads: Threads,
) {
    let (p, mg, kg) = (g.out_pixels(), g.group_out(), g.group_rows());
    let nb = dys.len() / g.out_image();
    let ld = nb * p;
    let mut gathered = Vec::new();
    let dyb: &[f32] = if nb == 1 {
        dys
    } else {
        gathered.resize(g.out_channels * ld, 0.0);
        chunks(&mut gathered, ld, threads, |m, row| {
            for (i, dst) in row.chunks_mut(p).enumerate() {
                dst.copy_from_slice(&dys[i * g.out_image() + m * p..][..p]);
            }
        });
        &gathered
    };
    for (d, row) in db.iter_mut().zip(dyb.chunks(ld)) {
        *d += row.iter().sum::<f32>();
    }
    let mut col = Vec::new();
    if !dw.is_empty() {
        let cols: &[f32] = if g.is_pointwise() && nb == 1 {
            xs
        } else {
            col.resize(g.col_rows() * ld, 0.0);
            unfold(g, map, xs, &mut col, ld, threads);
            &col
        };
        for gi in 0..g.groups {
            matmul(
                &mut dw[gi * mg * kg..],
                kg,
                accumulate,
                MatRef::row_major(&dyb[gi * mg * ld..], mg, ld, ld),
                MatRef::row_major(&cols[gi * kg * ld..], kg, ld, ld).t(),
                threads,
            );
        }
    }
    if let Some(dxs) = dxs {
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
                threads,
            );
        }
        if !direct {
            let col = &col;
            chunks(dxs, g.in_image(), threads, |i, dx| {
                col2im(g, map, col, ld, i * p, dx)
            });
        }
    }
}

fn check(g: &ConvGeometry, x: &[f32], weight: &[f32], bias: Option<&[f32]>) {
    assert_eq!(x.len(), g.batch * g.in_image(), "input size");
    assert_eq!(weight.len(), g.weight_len(), "weight size");
    if let Some(bias) = bias {
        assert_eq!(bias.len(), g.out_channels, "bias size");
    }
}
