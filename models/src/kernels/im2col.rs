//! The geometry of a 2-D convolution and the unfold (`im2col`) / fold (`col2im`) that turn it
//! into matrix products.
//!
//! Column matrices have one row per `(input channel, kernel row, kernel column)`, channel
//! major, so the rows of group `g` are one contiguous band, and one column per output pixel.
//! Several images sit side by side in one column matrix: image `i` of a block owns columns
//! `i * out_pixels .. (i + 1) * out_pixels`.

use std::ops::Range;

/// Everything that fixes the shapes of one NCHW convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels (all groups).
    pub in_channels: usize,
    /// Input height and width.
    pub in_size: [usize; 2],
    /// Output channels (all groups).
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Step between output pixels, in input pixels.
    pub stride: [usize; 2],
    /// Zero rows/columns before the input (top, left).
    pub padding: [usize; 2],
    /// Step between kernel taps, in input pixels.
    pub dilation: [usize; 2],
    /// Channel groups (`groups == in_channels == out_channels` is a depthwise convolution).
    pub groups: usize,
    /// Output height and width.
    pub out_size: [usize; 2],
}

impl ConvGeometry {
    /// The geometry of convolving `x` (`[batch, in_channels, h, w]`) with `weight`
    /// (`[out_channels, in_channels / groups, kh, kw]`), `padding` given as
    /// `[[top, bottom], [left, right]]`. Panics, naming the mismatch, on inconsistent shapes:
    /// callers hold shapes a Burn module already validated.
    pub fn new(
        x: [usize; 4],
        weight: [usize; 4],
        stride: [usize; 2],
        padding: [[usize; 2]; 2],
        dilation: [usize; 2],
        groups: usize,
    ) -> Self {
        let [batch, in_channels, h, w] = x;
        let [out_channels, per_group, kh, kw] = weight;
        assert!(
            groups > 0 && in_channels % groups == 0 && out_channels % groups == 0,
            "{groups} groups do not divide {in_channels} input and {out_channels} output channels"
        );
        assert_eq!(
            per_group,
            in_channels / groups,
            "weight has {per_group} input channels per group, the input {in_channels}/{groups}"
        );
        assert!(stride.iter().chain(&dilation).all(|&s| s > 0));
        let out = |size: usize, k: usize, s: usize, p: [usize; 2], d: usize| {
            let span = d * (k - 1) + 1;
            let padded = size + p[0] + p[1];
            assert!(
                padded >= span,
                "kernel span {span} exceeds the padded input {padded}"
            );
            (padded - span) / s + 1
        };
        ConvGeometry {
            batch,
            in_channels,
            in_size: [h, w],
            out_channels,
            kernel: [kh, kw],
            stride,
            padding: [padding[0][0], padding[1][0]],
            dilation,
            groups,
            out_size: [
                out(h, kh, stride[0], padding[0], dilation[0]),
                out(w, kw, stride[1], padding[1], dilation[1]),
            ],
        }
    }

    /// Values in one input image.
    pub fn in_image(&self) -> usize {
        self.in_channels * self.in_size[0] * self.in_size[1]
    }

    /// Output pixels per channel.
    pub fn out_pixels(&self) -> usize {
        self.out_size[0] * self.out_size[1]
    }

    /// Values in one output image.
    pub fn out_image(&self) -> usize {
        self.out_channels * self.out_pixels()
    }

    /// Rows of the column matrix (all groups).
    pub fn col_rows(&self) -> usize {
        self.in_channels * self.kernel[0] * self.kernel[1]
    }

    /// Rows of the column matrix per group: the inner dimension of each group's product.
    pub fn group_rows(&self) -> usize {
        self.col_rows() / self.groups
    }

    /// Output channels per group.
    pub fn group_out(&self) -> usize {
        self.out_channels / self.groups
    }

    /// Values in the weight tensor.
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.group_rows()
    }

    /// A 1x1, stride-1, unpadded convolution: its column matrix is the input itself.
    pub fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.padding == [0, 0]
    }

    /// One input channel and one output channel per group: better served by direct loops
    /// than by products with a single row.
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.in_channels && self.groups == self.out_channels
    }
}

/// The output positions `o` in `0..out_len` whose tap `o * stride + offset - pad` falls inside
/// `0..in_len`, as a half-open range.
pub(super) fn valid(
    out_len: usize,
    stride: usize,
    offset: usize,
    pad: usize,
    in_len: usize,
) -> (usize, usize) {
    let lo = pad.saturating_sub(offset).div_ceil(stride).min(out_len);
    let hi = if in_len + pad > offset {
        (in_len + pad - offset).div_ceil(stride).min(out_len)
    } else {
        0
    };
    (lo, hi.max(lo))
}

/// For every kernel tap and output pixel, the input pixel it reads within a channel plane, or
/// [`TapMap::PADDING`]: computed once per call and shared by every channel and image, so
/// unfolding and folding are flat gather/scatter loops even on 3x3 images.
pub struct TapMap {
    index: Vec<u32>,
    pixels: usize,
    pointwise: bool,
}

impl TapMap {
    /// Marks a tap that reads the zero padding.
    pub const PADDING: u32 = u32::MAX;

    /// The map of `g` (`kh * kw * out_pixels` entries).
    pub fn new(g: &ConvGeometry) -> Self {
        let [h, w] = g.in_size;
        let [kh, kw] = g.kernel;
        let [oh_n, ow_n] = g.out_size;
        assert!(h * w < Self::PADDING as usize, "input plane too large");
        let mut index = Vec::with_capacity(kh * kw * oh_n * ow_n);
        for ki in 0..kh {
            for kj in 0..kw {
                for oh in 0..oh_n {
                    let ih = (oh * g.stride[0] + ki * g.dilation[0]).checked_sub(g.padding[0]);
                    for ow in 0..ow_n {
                        let iw = (ow * g.stride[1] + kj * g.dilation[1]).checked_sub(g.padding[1]);
                        index.push(match (ih, iw) {
                            (Some(ih), Some(iw)) if ih < h && iw < w => (ih * w + iw) as u32,
                            _ => Self::PADDING,
                        });
                    }
                }
            }
        }
        TapMap {
            index,
            pixels: oh_n * ow_n,
            pointwise: g.is_pointwise(),
        }
    }

    fn taps(&self) -> impl Iterator<Item = &[u32]> {
        self.index.chunks(self.pixels)
    }
}

/// Unfolds input channels `channels` of one image `x` into columns
/// `col_offset..col_offset + out_pixels` of `band`: the rows of those channels of a column
/// matrix whose rows are `ld` values long.
pub fn im2col(
    g: &ConvGeometry,
    map: &TapMap,
    x: &[f32],
    channels: Range<usize>,
    band: &mut [f32],
    ld: usize,
    col_offset: usize,
) {
    let plane_len = g.in_size[0] * g.in_size[1];
    let mut rows = band.chunks_mut(ld);
    for c in channels {
        let plane = &x[c * plane_len..][..plane_len];
        for taps in map.taps() {
            let dst = &mut rows.next().expect("band holds every row")[col_offset..][..map.pixels];
            if map.pointwise {
                dst.copy_from_slice(plane);
            } else {
                for (d, &i) in dst.iter_mut().zip(taps) {
                    *d = plane.get(i as usize).copied().unwrap_or(0.0);
                }
            }
        }
    }
}

/// Folds columns `col_offset..col_offset + out_pixels` of `col` back onto one image,
/// adding every tap's value to the input pixel it read: the adjoint of [`im2col`].
pub fn col2im(
    g: &ConvGeometry,
    map: &TapMap,
    col: &[f32],
    ld: usize,
    col_offset: usize,
    x: &mut [f32],
) {
    let plane_len = g.in_size[0] * g.in_size[1];
    let mut rows = col.chunks(ld);
    for plane in x.chunks_mut(plane_len) {
        for taps in map.taps() {
            let src = &rows.next().expect("col holds every row")[col_offset..][..map.pixels];
            if map.pointwise {
                plane.iter_mut().zip(src).for_each(|(d, s)| *d += s);
            } else {
                for (s, &i) in src.iter().zip(taps) {
                    if let Some(d) = plane.get_mut(i as usize) {
                        *d += s;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_sizes_follow_the_pytorch_formula() {
        let g = ConvGeometry::new(
            [2, 3, 7, 6],
            [4, 3, 3, 2],
            [2, 1],
            [[1, 1], [0, 2]],
            [1, 2],
            1,
        );
        // floor((7 + 2 - 3) / 2) + 1 = 4; floor((6 + 2 - 3) / 1) + 1 = 6.
        assert_eq!(g.out_size, [4, 6]);
        assert_eq!(g.col_rows(), 18);
    }

    #[test]
    fn valid_ranges_cover_exactly_the_taps_inside_the_input() {
        for (out, s, off, pad, len) in [
            (5, 1, 0, 1, 5),
            (4, 2, 2, 1, 7),
            (3, 3, 0, 4, 2),
            (6, 1, 5, 0, 4),
        ] {
            let (lo, hi) = valid(out, s, off, pad, len);
            for o in 0..out {
                let tap = (o * s + off) as isize - pad as isize;
                let inside = tap >= 0 && tap < len as isize;
                assert_eq!(
                    inside,
                    o >= lo && o < hi,
                    "o={o} in {:?}",
                    (out, s, off, pad, len)
                );
            }
        }
    }

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        // <im2col(x), c> == <x, col2im(c)> for every x and c.
        let g = ConvGeometry::new(
            [1, 2, 5, 4],
            [3, 2, 3, 2],
            [2, 1],
            [[1, 0], [1, 1]],
            [1, 2],
            1,
        );
        let cols = g.out_pixels();
        let x: Vec<f32> = (0..g.in_image()).map(|i| (i as f32 * 0.7).sin()).collect();
        let c: Vec<f32> = (0..g.col_rows() * cols)
            .map(|i| (i as f32 * 0.3).cos())
            .collect();
        let mut col = vec![f32::NAN; c.len()];
        let map = TapMap::new(&g);
        im2col(&g, &map, &x, 0..g.in_channels, &mut col, cols, 0);
        let mut back = vec![0.0; x.len()];
        col2im(&g, &map, &c, cols, 0, &mut back);
        let lhs: f32 = col.iter().zip(&c).map(|(a, b)| a * b).sum();
        let rhs: f32 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs}");
    }
}
