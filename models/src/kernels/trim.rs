//! Kernel taps that only ever read the zero padding add nothing to the output and get a zero
//! gradient. A 3x3 kernel with padding 1 on a 1x1 image has eight of them (SqueezeNet's last
//! four fire modules at 32x32 inputs): the same convolution without them is a 1x1
//! convolution, whose products are nine times smaller.

use std::ops::Range;

use super::im2col::{ConvGeometry, valid};

/// A convolution with its dead kernel rows and columns cut off: [`Trimmed::geometry`] has
/// the same input, output and channels, a smaller kernel and the padding moved with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trimmed {
    /// The convolution without the dead taps.
    pub geometry: ConvGeometry,
    full: ConvGeometry,
    rows: Range<usize>,
    cols: Range<usize>,
}

/// The kernel positions along one axis that read the input for at least one output position,
/// from the first to the last (every position outside is dead); `None` when none does.
fn live(
    out_len: usize,
    in_len: usize,
    k_len: usize,
    stride: usize,
    d: usize,
    pad: usize,
) -> Option<Range<usize>> {
    let is_live = |k: &usize| {
        let (lo, hi) = valid(out_len, stride, k * d, pad, in_len);
        lo < hi
    };
    let first = (0..k_len).find(is_live)?;
    let last = (0..k_len).rev().find(is_live)?;
    Some(first..last + 1)
}

impl Trimmed {
    /// The trimmed form of `g`, or `None` when every kernel row and column is live (or none
    /// is: such a convolution outputs its bias only, and stays as it is).
    pub fn new(g: &ConvGeometry) -> Option<Self> {
        let axis = |a: usize| {
            live(
                g.out_size[a],
                g.in_size[a],
                g.kernel[a],
                g.stride[a],
                g.dilation[a],
                g.padding[a],
            )
        };
        let (rows, cols) = (axis(0)?, axis(1)?);
        if rows.len() == g.kernel[0] && cols.len() == g.kernel[1] {
            return None;
        }
        // Tap `k` of the trimmed kernel reads offset `(k + start) * d - pad`: the new padding
        // is `pad - start * d`, which only dilation can make negative.
        let padding = [
            g.padding[0].checked_sub(rows.start * g.dilation[0])?,
            g.padding[1].checked_sub(cols.start * g.dilation[1])?,
        ];
        Some(Trimmed {
            geometry: ConvGeometry {
                kernel: [rows.len(), cols.len()],
                padding,
                ..*g
            },
            full: *g,
            rows,
            cols,
        })
    }

    /// The weights of the live taps, in the trimmed geometry's layout.
    pub fn weight(&self, weight: &[f32]) -> Vec<f32> {
        let [kh, kw] = self.full.kernel;
        let mut out = Vec::with_capacity(self.geometry.weight_len());
        for kernel in weight.chunks(kh * kw) {
            for row in self.rows.clone() {
                out.extend(kernel[row * kw..][self.cols.clone()].iter().copied());
            }
        }
        out
    }

    /// Writes the trimmed geometry's weight gradient `compact` into `full` (the full
    /// kernel's layout), with zeros at the dead taps.
    pub fn expand(&self, compact: &[f32], full: &mut [f32]) {
        let [kh, kw] = self.full.kernel;
        let (rows, cols) = (self.rows.len(), self.cols.len());
        assert_eq!(
            compact.len(),
            self.geometry.weight_len(),
            "trimmed gradient size"
        );
        assert_eq!(full.len(), self.full.weight_len(), "weight gradient size");
        full.fill(0.0);
        for (kernel, src) in full.chunks_mut(kh * kw).zip(compact.chunks(rows * cols)) {
            for (r, src) in self.rows.clone().zip(src.chunks(cols)) {
                kernel[r * kw..][self.cols.clone()].copy_from_slice(src);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(size: [usize; 2], kernel: usize, stride: usize, pad: usize) -> ConvGeometry {
        ConvGeometry::new(
            [2, 3, size[0], size[1]],
            [4, 3, kernel, kernel],
            [stride, stride],
            [[pad, pad], [pad, pad]],
            [1, 1],
            1,
        )
    }

    #[test]
    fn a_padded_3x3_kernel_on_a_1x1_image_is_a_pointwise_convolution() {
        let t = Trimmed::new(&geometry([1, 1], 3, 1, 1)).expect("eight dead taps");
        assert_eq!(t.geometry.kernel, [1, 1]);
        assert_eq!(t.geometry.padding, [0, 0]);
        assert_eq!(t.geometry.out_size, [1, 1]);
        assert!(t.geometry.is_pointwise());
    }

    #[test]
    fn only_rows_and_columns_that_never_read_the_input_go() {
        // 2x1 images: every kernel row reads a pixel somewhere, only the middle column does.
        let t = Trimmed::new(&geometry([2, 1], 3, 1, 1)).expect("dead columns");
        assert_eq!((t.rows.clone(), t.cols.clone()), (0..3, 1..2));
        assert_eq!(t.geometry.padding, [1, 0]);
        // 2x2 and larger images read every tap (VGG's last layers at 32x32 inputs).
        assert_eq!(Trimmed::new(&geometry([2, 2], 3, 1, 1)), None);
        assert_eq!(Trimmed::new(&geometry([7, 5], 3, 2, 1)), None);
    }

    #[test]
    fn expand_undoes_weight_at_the_live_taps_and_zeroes_the_rest() {
        let g = geometry([2, 1], 3, 1, 1);
        let t = Trimmed::new(&g).unwrap();
        let w: Vec<f32> = (0..g.weight_len()).map(|i| i as f32 + 1.0).collect();
        let compact = t.weight(&w);
        assert_eq!(compact.len(), t.geometry.weight_len());
        // Kernel 0's middle column: taps (0,1), (1,1), (2,1).
        assert_eq!(&compact[..3], &[2.0, 5.0, 8.0]);
        let mut full = vec![f32::NAN; g.weight_len()];
        t.expand(&compact, &mut full);
        for (i, (&f, &w)) in full.iter().zip(&w).enumerate() {
            let live = i % 3 == 1;
            assert_eq!(f, if live { w } else { 0.0 }, "tap {i}");
        }
    }
}
