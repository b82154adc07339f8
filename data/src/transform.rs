//! Turning raw `u8` images into normalised `f32` NCHW batches: optional CIFAR-style
//! augmentation (zero-padded random crop + horizontal flip, in pixel space), bilinear
//! resize with PyTorch `F.interpolate(mode="bilinear", align_corners=False, antialias=False)`
//! semantics, grey-to-RGB repetition and per-channel normalisation.
//!
//! The order matches the torchvision pipelines of the original scripts:
//! `RandomCrop(pad) -> RandomHorizontalFlip -> ToTensor -> Resize -> Normalize`
//! (normalisation and channel repetition commute with bilinear resizing).

use rand::Rng;

use crate::dataset::{Dataset, DatasetKind, ImageShape, IndexOutOfRange};

/// Zero padding of the random crop, as `transforms.RandomCrop(32, padding=4)`.
pub const CROP_PADDING: usize = 4;

/// Per-channel mean and standard deviation (of pixel values scaled to `[0, 1]`)
/// subtracted and divided by, as `transforms.Normalize`.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    /// Mean per input channel.
    pub mean: Vec<f32>,
    /// Standard deviation per input channel.
    pub std: Vec<f32>,
}

impl Normalization {
    /// The customary statistics of a dataset: MNIST 0.1307/0.3081, Fashion-MNIST
    /// 0.2860/0.3530, CIFAR-10 (0.4914, 0.4822, 0.4465)/(0.2470, 0.2435, 0.2616),
    /// synthetic 0.5/0.24 on every channel (see [`crate::formats::synthetic`]).
    /// `channels` is the number of input channels; single-channel statistics are repeated.
    pub fn for_kind(kind: DatasetKind, channels: usize) -> Self {
        let (mean, std): (&[f32], &[f32]) = match kind {
            DatasetKind::Mnist => (&[0.1307], &[0.3081]),
            DatasetKind::FashionMnist => (&[0.2860], &[0.3530]),
            DatasetKind::Cifar10 => (&[0.4914, 0.4822, 0.4465], &[0.2470, 0.2435, 0.2616]),
            DatasetKind::Synthetic => (&[0.5], &[0.24]),
        };
        let pick = |v: &[f32], c: usize| if v.len() == 1 { v[0] } else { v[c % v.len()] };
        Self {
            mean: (0..channels).map(|c| pick(mean, c)).collect(),
            std: (0..channels).map(|c| pick(std, c)).collect(),
        }
    }
}

/// What a model wants from the raw images: channel count, spatial size, whether to
/// normalise and whether to apply training augmentation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TransformSpec {
    /// Output channels: the input's, or 3 for a 1-channel input (repeated).
    pub out_channels: usize,
    /// Output `(height, width)`; `None` keeps the input size.
    pub size: Option<(usize, usize)>,
    /// Normalise with [`Normalization::for_kind`] (otherwise values are just scaled to `[0, 1]`).
    pub normalize: bool,
    /// Random crop with zero padding [`CROP_PADDING`] and random horizontal flip (p = 0.5),
    /// the CIFAR-10 training augmentation.
    pub augment: bool,
}

impl TransformSpec {
    /// Normalised square images of `size` with `out_channels` channels, no augmentation.
    pub fn new(out_channels: usize, size: usize) -> Self {
        Self {
            out_channels,
            size: Some((size, size)),
            normalize: true,
            augment: false,
        }
    }

    /// The same spec with augmentation switched on or off.
    pub fn with_augment(mut self, augment: bool) -> Self {
        self.augment = augment;
        self
    }
}

/// Why a transform cannot be built or applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TransformError {
    /// The channel conversion is not supported.
    #[error("cannot turn {from}-channel images into {to} channels (only equal counts or 1 -> 3)")]
    Channels {
        /// Input channels.
        from: usize,
        /// Requested channels.
        to: usize,
    },
    /// A zero output dimension.
    #[error("output size {height}x{width} has a zero dimension")]
    ZeroSize {
        /// Requested height.
        height: usize,
        /// Requested width.
        width: usize,
    },
    /// The dataset's images do not have the shape the transform was built for.
    #[error("transform built for {expected} images applied to {found} images")]
    ShapeMismatch {
        /// Shape the transform expects.
        expected: ImageShape,
        /// Shape found.
        found: ImageShape,
    },
    /// An input image of the wrong length.
    #[error("input image holds {found} bytes, {expected} expected")]
    InputLength {
        /// Bytes expected.
        expected: usize,
        /// Bytes given.
        found: usize,
    },
    /// An output buffer of the wrong length.
    #[error("output buffer holds {found} values, {expected} needed")]
    OutputLength {
        /// Values needed.
        expected: usize,
        /// Values given.
        found: usize,
    },
    /// A sample index past the end of the dataset.
    #[error(transparent)]
    Index(#[from] IndexOutOfRange),
}

/// One output coordinate of a 1-D linear interpolation: two source indices and their weights.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tap {
    i0: usize,
    i1: usize,
    w0: f32,
    w1: f32,
}

/// PyTorch's `upsample_bilinear2d` source-index rule with `align_corners=False` and no
/// explicit scale factor: `src = max(0, (dst + 0.5) * in/out - 0.5)`,
/// `i0 = floor(src)`, `i1 = min(i0 + 1, in - 1)`, `w1 = src - i0`, `w0 = 1 - w1`.
fn linear_taps(input: usize, output: usize) -> Vec<Tap> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|dst| {
            let src = ((dst as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            let w1 = src - i0 as f32;
            Tap {
                i0,
                i1,
                w0: 1.0 - w1,
                w1,
            }
        })
        .collect()
}

/// A contiguous NCHW `f32` batch with its labels, ready to become a tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `shape[0] * shape[1] * shape[2] * shape[3]` values.
    pub images: Vec<f32>,
    /// One label per image.
    pub labels: Vec<u8>,
    /// `[batch, channels, height, width]`.
    pub shape: [usize; 4],
}

/// A prepared transform for images of one shape: precomputed interpolation taps,
/// normalisation coefficients and scratch buffers, so batches allocate nothing per image.
#[derive(Debug, Clone)]
pub struct Transform {
    input: ImageShape,
    output: ImageShape,
    augment: bool,
    rows: Vec<Tap>,
    cols: Vec<Tap>,
    identity_resize: bool,
    /// Output value = raw byte * scale[c] + bias[c].
    scale: Vec<f32>,
    bias: Vec<f32>,
    augmented: Vec<u8>,
    horizontal: Vec<f32>,
    plane: Vec<f32>,
}

impl Transform {
    /// Prepare `spec` for images of `input` shape coming from a `kind` dataset.
    pub fn new(
        spec: &TransformSpec,
        input: ImageShape,
        kind: DatasetKind,
    ) -> Result<Self, TransformError> {
        let to = spec.out_channels;
        if !(to == input.channels || (input.channels == 1 && to == 3)) {
            return Err(TransformError::Channels {
                from: input.channels,
                to,
            });
        }
        let (height, width) = spec.size.unwrap_or((input.height, input.width));
        if height == 0 || width == 0 {
            return Err(TransformError::ZeroSize { height, width });
        }
        if input.is_empty() {
            return Err(TransformError::ZeroSize {
                height: input.height,
                width: input.width,
            });
        }
        let output = ImageShape::new(to, height, width);
        let (scale, bias) = if spec.normalize {
            let n = Normalization::for_kind(kind, to);
            n.mean
                .iter()
                .zip(&n.std)
                .map(|(&m, &s)| (1.0 / (255.0 * s), -m / s))
                .unzip()
        } else {
            (vec![1.0 / 255.0; to], vec![0.0; to])
        };
        Ok(Self {
            input,
            output,
            augment: spec.augment,
            rows: linear_taps(input.height, height),
            cols: linear_taps(input.width, width),
            identity_resize: (height, width) == (input.height, input.width),
            scale,
            bias,
            augmented: vec![0; input.len()],
            horizontal: vec![0.0; input.height * width],
            plane: vec![0.0; height * width],
        })
    }

    /// Prepare `spec` for the images of `dataset`.
    pub fn for_dataset(spec: &TransformSpec, dataset: &Dataset) -> Result<Self, TransformError> {
        Self::new(spec, dataset.shape(), dataset.kind())
    }

    /// Shape of the images this transform takes.
    pub fn input_shape(&self) -> ImageShape {
        self.input
    }

    /// Shape of the images this transform produces.
    pub fn output_shape(&self) -> ImageShape {
        self.output
    }

    /// Transform one CHW image into `out` (length [`ImageShape::len`] of the output shape).
    pub fn apply<R: Rng + ?Sized>(
        &mut self,
        image: &[u8],
        rng: &mut R,
        out: &mut [f32],
    ) -> Result<(), TransformError> {
        if image.len() != self.input.len() {
            return Err(TransformError::InputLength {
                expected: self.input.len(),
                found: image.len(),
            });
        }
        if out.len() != self.output.len() {
            return Err(TransformError::OutputLength {
                expected: self.output.len(),
                found: out.len(),
            });
        }
        let mut augmented = std::mem::take(&mut self.augmented);
        let source: &[u8] = if self.augment {
            let dy = rng.random_range(0..=2 * CROP_PADDING);
            let dx = rng.random_range(0..=2 * CROP_PADDING);
            let flip = rng.random_bool(0.5);
            crop_flip(self.input, image, dy, dx, flip, &mut augmented);
            &augmented
        } else {
            image
        };
        let in_plane = self.input.height * self.input.width;
        let out_plane = self.output.height * self.output.width;
        let repeat = self.output.channels / self.input.channels;
        for (c, src) in source.chunks_exact(in_plane).enumerate() {
            self.resize_plane(src);
            for r in 0..repeat {
                let oc = c * repeat + r;
                let (s, b) = (self.scale[oc], self.bias[oc]);
                let dst = &mut out[oc * out_plane..(oc + 1) * out_plane];
                for (o, &v) in dst.iter_mut().zip(&self.plane) {
                    *o = v * s + b;
                }
            }
        }
        self.augmented = augmented;
        Ok(())
    }

    /// Bilinearly resize one `u8` plane into `self.plane` (raw 0..=255 scale).
    fn resize_plane(&mut self, src: &[u8]) {
        let (ih, iw) = (self.input.height, self.input.width);
        let ow = self.output.width;
        if self.identity_resize {
            for (p, &v) in self.plane.iter_mut().zip(src) {
                *p = f32::from(v);
            }
            return;
        }
        for y in 0..ih {
            let row = &src[y * iw..(y + 1) * iw];
            let dst = &mut self.horizontal[y * ow..(y + 1) * ow];
            for (d, t) in dst.iter_mut().zip(&self.cols) {
                *d = t.w0 * f32::from(row[t.i0]) + t.w1 * f32::from(row[t.i1]);
            }
        }
        for (oy, t) in self.rows.iter().enumerate() {
            let r0 = &self.horizontal[t.i0 * ow..(t.i0 + 1) * ow];
            let r1 = &self.horizontal[t.i1 * ow..(t.i1 + 1) * ow];
            let dst = &mut self.plane[oy * ow..(oy + 1) * ow];
            for ((d, &a), &b) in dst.iter_mut().zip(r0).zip(r1) {
                *d = t.w0 * a + t.w1 * b;
            }
        }
    }

    /// Transform the images at `indices` of `dataset` into `images` (resized to
    /// `indices.len() * output len`, reusing its capacity) and their labels into `labels`.
    pub fn fill_batch<R: Rng + ?Sized>(
        &mut self,
        dataset: &Dataset,
        indices: &[usize],
        rng: &mut R,
        images: &mut Vec<f32>,
        labels: &mut Vec<u8>,
    ) -> Result<(), TransformError> {
        if dataset.shape() != self.input {
            return Err(TransformError::ShapeMismatch {
                expected: self.input,
                found: dataset.shape(),
            });
        }
        let len = self.output.len();
        images.clear();
        images.resize(indices.len() * len, 0.0);
        labels.clear();
        labels.reserve(indices.len());
        for (&i, out) in indices.iter().zip(images.chunks_exact_mut(len)) {
            let (Some(image), Some(label)) = (dataset.image(i), dataset.label(i)) else {
                return Err(IndexOutOfRange {
                    index: i,
                    len: dataset.len(),
                }
                .into());
            };
            self.apply(image, rng, out)?;
            labels.push(label);
        }
        Ok(())
    }

    /// Like [`Transform::fill_batch`] into fresh buffers.
    pub fn batch<R: Rng + ?Sized>(
        &mut self,
        dataset: &Dataset,
        indices: &[usize],
        rng: &mut R,
    ) -> Result<Batch, TransformError> {
        let mut images = Vec::new();
        let mut labels = Vec::new();
        self.fill_batch(dataset, indices, rng, &mut images, &mut labels)?;
        Ok(Batch {
            images,
            labels,
            shape: [
                indices.len(),
                self.output.channels,
                self.output.height,
                self.output.width,
            ],
        })
    }
}

/// Zero-pad `image` by [`CROP_PADDING`], take the crop at offset `(dy, dx)` of the
/// original size, then mirror it horizontally if `flip`; writes into `out`.
fn crop_flip(shape: ImageShape, image: &[u8], dy: usize, dx: usize, flip: bool, out: &mut [u8]) {
    let (h, w) = (shape.height as isize, shape.width as isize);
    let pad = CROP_PADDING as isize;
    let plane = shape.height * shape.width;
    for (src, dst) in image.chunks_exact(plane).zip(out.chunks_exact_mut(plane)) {
        for y in 0..h {
            let sy = y + dy as isize - pad;
            let row = &mut dst[(y * w) as usize..((y + 1) * w) as usize];
            if !(0..h).contains(&sy) {
                row.fill(0);
                continue;
            }
            let srow = &src[(sy * w) as usize..((sy + 1) * w) as usize];
            for (x, o) in row.iter_mut().enumerate() {
                let ax = if flip { w - 1 - x as isize } else { x as isize };
                let sx = ax + dx as isize - pad;
                *o = if (0..w).contains(&sx) {
                    srow[sx as usize]
                } else {
                    0
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn dataset(shape: ImageShape, pixels: Vec<u8>, kind: DatasetKind) -> Dataset {
        let n = pixels.len() / shape.len();
        Dataset::new(kind, shape, 10, pixels, vec![0; n]).unwrap()
    }

    fn raw_spec(c: usize, h: usize, w: usize) -> TransformSpec {
        TransformSpec {
            out_channels: c,
            size: Some((h, w)),
            normalize: false,
            augment: false,
        }
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-6, "index {i}: got {g}, want {w}");
        }
    }

    #[test]
    fn upsample_2x2_to_4x4_matches_pytorch_formula() {
        // Taps for 2 -> 4 (scale 0.5): src = max(0, 0.5*(d+0.5) - 0.5) = 0, 0.25, 0.75, 1.25
        // -> weights of (in0, in1): (1,0), (0.75,0.25), (0.25,0.75), (0,1) (last clamps).
        let d = dataset(
            ImageShape::new(1, 2, 2),
            vec![0, 4, 8, 12],
            DatasetKind::Mnist,
        );
        let mut t = Transform::for_dataset(&raw_spec(1, 4, 4), &d).unwrap();
        let b = t
            .batch(&d, &[0], &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap();
        let want: Vec<f32> = [
            0., 1., 3., 4., //
            2., 3., 5., 6., //
            6., 7., 9., 10., //
            8., 9., 11., 12.,
        ]
        .iter()
        .map(|v| v / 255.0)
        .collect();
        assert_eq!(b.shape, [1, 1, 4, 4]);
        assert_close(&b.images, &want);
    }

    #[test]
    fn downsample_4x4_to_3x3_matches_pytorch_formula() {
        // Taps for 4 -> 3 (scale 4/3): src = 1/6, 1.5, 17/6 -> (i0, w1) = (0, 1/6), (1, 1/2), (2, 5/6).
        // A single 255 at (1, 1): out(y, x) = a(y) * a(x) with a = weight of index 1 = [1/6, 1/2, 0].
        let mut px = vec![0u8; 16];
        px[5] = 255;
        let d = dataset(ImageShape::new(1, 4, 4), px, DatasetKind::Mnist);
        let mut t = Transform::for_dataset(&raw_spec(1, 3, 3), &d).unwrap();
        let b = t
            .batch(&d, &[0], &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap();
        let a = [1.0 / 6.0, 0.5, 0.0f32];
        let want: Vec<f32> = (0..9).map(|i| a[i / 3] * a[i % 3]).collect();
        assert_close(&b.images, &want);

        // A linear ramp v = 16y + 4x is reproduced exactly at the source coordinates.
        let ramp: Vec<u8> = (0..16)
            .map(|i| (16 * (i / 4) + 4 * (i % 4)) as u8)
            .collect();
        let d = dataset(ImageShape::new(1, 4, 4), ramp, DatasetKind::Mnist);
        let b = t
            .batch(&d, &[0], &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap();
        let s = [1.0 / 6.0, 1.5, 17.0 / 6.0f32];
        let want: Vec<f32> = (0..9)
            .map(|i| (16.0 * s[i / 3] + 4.0 * s[i % 3]) / 255.0)
            .collect();
        for (g, w) in b.images.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "got {g}, want {w}");
        }
    }

    #[test]
    fn normalises_with_dataset_statistics_and_repeats_grey() {
        let d = dataset(ImageShape::new(1, 1, 2), vec![0, 255], DatasetKind::Mnist);
        let mut t = Transform::for_dataset(&TransformSpec::new(3, 2).with_augment(false), &d)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.output_shape(), ImageShape::new(3, 2, 2));
        let mut t1 = Transform::for_dataset(
            &TransformSpec {
                size: None,
                ..TransformSpec::new(3, 0)
            },
            &d,
        )
        .unwrap();
        let b = t1
            .batch(&d, &[0], &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap();
        let lo = -0.1307 / 0.3081;
        let hi = (1.0 - 0.1307) / 0.3081;
        assert_close(&b.images, &[lo, hi, lo, hi, lo, hi]);
        let b = t
            .batch(&d, &[0], &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap();
        assert_eq!(b.images.len(), 12);

        let c = dataset(
            ImageShape::new(3, 1, 1),
            vec![255, 0, 128],
            DatasetKind::Cifar10,
        );
        let mut t = Transform::for_dataset(
            &TransformSpec {
                size: None,
                ..TransformSpec::new(3, 0)
            },
            &c,
        )
        .unwrap();
        let b = t
            .batch(&c, &[0], &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap();
        let want = [
            (1.0 - 0.4914) / 0.2470,
            -0.4822 / 0.2435,
            (128.0 / 255.0 - 0.4465) / 0.2616,
        ];
        assert_close(&b.images, &want);
    }

    #[test]
    fn rejects_unsupported_channel_conversion_and_bad_index() {
        let d = dataset(ImageShape::new(3, 2, 2), vec![0; 12], DatasetKind::Cifar10);
        let err = Transform::for_dataset(&TransformSpec::new(1, 2), &d).unwrap_err();
        assert_eq!(err, TransformError::Channels { from: 3, to: 1 });
        let mut t = Transform::for_dataset(&TransformSpec::new(3, 2), &d).unwrap();
        let err = t
            .batch(&d, &[1], &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap_err();
        assert!(matches!(err, TransformError::Index(_)), "{err}");
    }

    fn augment_spec() -> TransformSpec {
        TransformSpec {
            out_channels: 3,
            size: None,
            normalize: false,
            augment: true,
        }
    }

    #[test]
    fn augmentation_is_deterministic_per_seed_and_keeps_pixel_values() {
        let shape = ImageShape::new(3, 8, 8);
        // Every pixel distinct and non-zero so crops and flips can be traced back.
        let px: Vec<u8> = (0..shape.len() as u32 * 4)
            .map(|i| (i % 250 + 1) as u8)
            .collect();
        let d = dataset(shape, px, DatasetKind::Cifar10);
        let mut t = Transform::for_dataset(&augment_spec(), &d).unwrap();
        let idx = [0, 1, 2, 3];
        let a = t
            .batch(&d, &idx, &mut ChaCha8Rng::seed_from_u64(7))
            .unwrap();
        let b = t
            .batch(&d, &idx, &mut ChaCha8Rng::seed_from_u64(7))
            .unwrap();
        assert_eq!(a, b);
        let c = t
            .batch(&d, &idx, &mut ChaCha8Rng::seed_from_u64(8))
            .unwrap();
        assert_ne!(a.images, c.images);
        // Each output value is 0 (padding) or one of the image's own pixels.
        for (n, img) in a.images.chunks_exact(shape.len()).enumerate() {
            let src = d.image(n).unwrap();
            for &v in img {
                let byte = (v * 255.0).round() as u8;
                assert!((v * 255.0 - f32::from(byte)).abs() < 1e-4);
                assert!(
                    byte == 0 || src.contains(&byte),
                    "value {byte} not in image {n}"
                );
            }
        }
    }

    #[test]
    fn crop_and_flip_move_pixels_as_torchvision() {
        let shape = ImageShape::new(1, 2, 12);
        let src: Vec<u8> = (1..=24).collect();
        let mut out = vec![0u8; 24];
        // Offset (4, 4) is the centre crop: identity.
        crop_flip(shape, &src, 4, 4, false, &mut out);
        assert_eq!(out, src);
        // Flip only: each row reversed.
        crop_flip(shape, &src, 4, 4, true, &mut out);
        let mut want: Vec<u8> = (1..=12).rev().collect();
        want.extend((13..=24).rev());
        assert_eq!(out, want);
        // Shift right by one (dx = 3): first column is padding.
        crop_flip(shape, &src, 4, 3, false, &mut out);
        assert_eq!(&out[..4], &[0, 1, 2, 3]);
        // Shift down by one (dy = 3): first row is padding, second is the original first.
        crop_flip(shape, &src, 3, 4, false, &mut out);
        assert_eq!(&out[..12], &[0; 12]);
        assert_eq!(&out[12..], &src[..12]);
    }

    #[test]
    fn augmentation_uses_every_offset_and_both_flips() {
        let shape = ImageShape::new(1, 1, 12);
        let d = dataset(shape, (1..=12).collect(), DatasetKind::Cifar10);
        let mut t = Transform::for_dataset(
            &TransformSpec {
                out_channels: 1,
                ..augment_spec()
            },
            &d,
        )
        .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut seen = std::collections::HashSet::new();
        let mut out = vec![0f32; 12];
        for _ in 0..2000 {
            t.apply(d.image(0).unwrap(), &mut rng, &mut out).unwrap();
            seen.insert(
                out.iter()
                    .map(|v| (v * 255.0).round() as u8)
                    .collect::<Vec<_>>(),
            );
        }
        // 1-row image: 8 of 9 vertical offsets give zeros, the centre gives 9 x-offsets x 2 flips.
        assert_eq!(seen.len(), 19);
    }
}
