//! The in-memory dataset: raw `u8` pixels in NCHW order plus `u8` labels.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which dataset a set of images comes from; it selects the file format, the
/// default directory and the normalisation statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// MNIST handwritten digits (IDX files, 1x28x28, 10 classes).
    Mnist,
    /// Zalando's Fashion-MNIST (IDX files, 1x28x28, 10 classes).
    FashionMnist,
    /// CIFAR-10 binary version (3x32x32, 10 classes).
    #[serde(rename = "cifar10")]
    Cifar10,
    /// Seeded, generated images: no files needed.
    Synthetic,
}

impl DatasetKind {
    /// Every kind, in the order used by help texts and error messages.
    pub const ALL: [DatasetKind; 4] = [
        DatasetKind::Mnist,
        DatasetKind::FashionMnist,
        DatasetKind::Cifar10,
        DatasetKind::Synthetic,
    ];

    /// The canonical name, as accepted by [`FromStr`] and written to manifests.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Synthetic => "synthetic",
        }
    }

    /// The one-byte code stored in shard headers.
    pub fn code(self) -> u8 {
        match self {
            DatasetKind::Mnist => 0,
            DatasetKind::FashionMnist => 1,
            DatasetKind::Cifar10 => 2,
            DatasetKind::Synthetic => 3,
        }
    }

    /// Inverse of [`DatasetKind::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Returned when a dataset name is not one of [`DatasetKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dataset {given:?}: valid names are mnist, fashion-mnist, cifar10, synthetic")]
pub struct UnknownDataset {
    /// The rejected input.
    pub given: String,
}

impl FromStr for DatasetKind {
    type Err = UnknownDataset;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mnist" => Ok(DatasetKind::Mnist),
            "fashion-mnist" | "fashion_mnist" | "fashionmnist" => Ok(DatasetKind::FashionMnist),
            "cifar10" | "cifar-10" => Ok(DatasetKind::Cifar10),
            "synthetic" => Ok(DatasetKind::Synthetic),
            _ => Err(UnknownDataset {
                given: s.to_owned(),
            }),
        }
    }
}

/// Which half of a dataset to load: the training images or the held-out test images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The training split (MNIST: 60,000 images; CIFAR-10: 50,000).
    Train,
    /// The test split (10,000 images for MNIST-like and CIFAR-10).
    Test,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

/// Channels, height and width of one image; every image of a [`Dataset`] has the same shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageShape {
    /// Number of channels (1 for grey, 3 for RGB).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl ImageShape {
    /// Build a shape from channels, height and width.
    pub const fn new(channels: usize, height: usize, width: usize) -> Self {
        Self {
            channels,
            height,
            width,
        }
    }

    /// Number of values in one image (`channels * height * width`).
    pub const fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// True when the shape holds no values.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Display for ImageShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

/// Why raw pixels and labels could not be assembled into a [`Dataset`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDataset {
    /// The pixel buffer length is not `count * c * h * w`.
    #[error("pixel buffer holds {found} bytes but {count} images of {shape} need {expected}")]
    PixelCount {
        /// Number of labels, i.e. images.
        count: usize,
        /// Image shape.
        shape: ImageShape,
        /// Bytes needed.
        expected: usize,
        /// Bytes given.
        found: usize,
    },
    /// A label is not below `num_classes`.
    #[error("label {label} of sample {index} is not below the number of classes {num_classes}")]
    LabelOutOfRange {
        /// Sample index.
        index: usize,
        /// Offending label.
        label: u8,
        /// Declared number of classes.
        num_classes: usize,
    },
    /// The number of classes is 0 or does not fit a `u8` label.
    #[error("number of classes must be between 1 and 256, got {0}")]
    NumClasses(usize),
    /// An image dimension is zero.
    #[error("image shape {0} has a zero dimension")]
    EmptyShape(ImageShape),
}

/// A labelled image set held as raw bytes, exactly as stored on disk and in shards;
/// conversion to floats happens per batch in [`crate::transform`].
#[derive(Clone, PartialEq, Eq)]
pub struct Dataset {
    kind: DatasetKind,
    shape: ImageShape,
    num_classes: usize,
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("kind", &self.kind)
            .field("shape", &self.shape)
            .field("num_classes", &self.num_classes)
            .field("len", &self.labels.len())
            .finish()
    }
}

impl Dataset {
    /// Assemble a dataset, checking that the buffers agree with the shape and
    /// that every label is below `num_classes`.
    pub fn new(
        kind: DatasetKind,
        shape: ImageShape,
        num_classes: usize,
        pixels: Vec<u8>,
        labels: Vec<u8>,
    ) -> Result<Self, InvalidDataset> {
        if shape.is_empty() {
            return Err(InvalidDataset::EmptyShape(shape));
        }
        if num_classes == 0 || num_classes > 256 {
            return Err(InvalidDataset::NumClasses(num_classes));
        }
        let expected = labels.len() * shape.len();
        if pixels.len() != expected {
            return Err(InvalidDataset::PixelCount {
                count: labels.len(),
                shape,
                expected,
                found: pixels.len(),
            });
        }
        if let Some((index, &label)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| usize::from(l) >= num_classes)
        {
            return Err(InvalidDataset::LabelOutOfRange {
                index,
                label,
                num_classes,
            });
        }
        Ok(Self {
            kind,
            shape,
            num_classes,
            pixels,
            labels,
        })
    }

    /// Where the images come from.
    pub fn kind(&self) -> DatasetKind {
        self.kind
    }

    /// Shape of one image.
    pub fn shape(&self) -> ImageShape {
        self.shape
    }

    /// Number of classes (labels are `0..num_classes`).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the dataset holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// All pixels, image after image, each in CHW order.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// All labels, one per image.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// Pixels of image `index` in CHW order, or `None` past the end.
    pub fn image(&self, index: usize) -> Option<&[u8]> {
        let len = self.shape.len();
        let start = index.checked_mul(len)?;
        self.pixels.get(start..start.checked_add(len)?)
    }

    /// Label of image `index`, or `None` past the end.
    pub fn label(&self, index: usize) -> Option<u8> {
        self.labels.get(index).copied()
    }

    /// Number of images per class.
    pub fn class_counts(&self) -> Vec<u64> {
        let mut counts = vec![0u64; self.num_classes];
        for &l in &self.labels {
            counts[usize::from(l)] += 1;
        }
        counts
    }

    /// Copy the images at `indices` (in that order) into a new dataset.
    pub fn subset(&self, indices: &[usize]) -> Result<Self, IndexOutOfRange> {
        let len = self.shape.len();
        let mut pixels = Vec::with_capacity(indices.len() * len);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let (Some(image), Some(label)) = (self.image(i), self.label(i)) else {
                return Err(IndexOutOfRange {
                    index: i,
                    len: self.len(),
                });
            };
            pixels.extend_from_slice(image);
            labels.push(label);
        }
        Ok(Self {
            kind: self.kind,
            shape: self.shape,
            num_classes: self.num_classes,
            pixels,
            labels,
        })
    }

    /// Copy the contiguous images `range` into a new dataset.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Result<Self, IndexOutOfRange> {
        if range.start > range.end || range.end > self.len() {
            return Err(IndexOutOfRange {
                index: range.end,
                len: self.len(),
            });
        }
        let len = self.shape.len();
        Ok(Self {
            kind: self.kind,
            shape: self.shape,
            num_classes: self.num_classes,
            pixels: self.pixels[range.start * len..range.end * len].to_vec(),
            labels: self.labels[range].to_vec(),
        })
    }

    /// Take the buffers back (pixels, labels).
    pub fn into_parts(self) -> (Vec<u8>, Vec<u8>) {
        (self.pixels, self.labels)
    }
}

/// A sample index past the end of a [`Dataset`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sample index {index} out of range for a dataset of {len} images")]
pub struct IndexOutOfRange {
    /// The offending index.
    pub index: usize,
    /// Number of images in the dataset.
    pub len: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_parses_and_lists_valid_names() {
        assert_eq!("fashion-mnist".parse(), Ok(DatasetKind::FashionMnist));
        assert_eq!("CIFAR10".parse(), Ok(DatasetKind::Cifar10));
        for k in DatasetKind::ALL {
            assert_eq!(k.name().parse(), Ok(k));
            assert_eq!(DatasetKind::from_code(k.code()), Some(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
        }
        let err = "imagenet".parse::<DatasetKind>().unwrap_err().to_string();
        assert!(err.contains("imagenet"), "{err}");
        for name in ["mnist", "fashion-mnist", "cifar10", "synthetic"] {
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn new_validates_buffers() {
        let shape = ImageShape::new(1, 2, 2);
        let ok = Dataset::new(DatasetKind::Mnist, shape, 3, vec![0; 8], vec![0, 2]).unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok.image(1), Some(&[0u8; 4][..]));
        assert_eq!(ok.image(2), None);
        assert!(matches!(
            Dataset::new(DatasetKind::Mnist, shape, 3, vec![0; 7], vec![0, 2]),
            Err(InvalidDataset::PixelCount {
                expected: 8,
                found: 7,
                ..
            })
        ));
        assert!(matches!(
            Dataset::new(DatasetKind::Mnist, shape, 3, vec![0; 8], vec![0, 3]),
            Err(InvalidDataset::LabelOutOfRange {
                index: 1,
                label: 3,
                ..
            })
        ));
    }

    #[test]
    fn subset_copies_selected_images() {
        let shape = ImageShape::new(1, 1, 2);
        let d = Dataset::new(
            DatasetKind::Synthetic,
            shape,
            3,
            vec![1, 2, 3, 4, 5, 6],
            vec![0, 1, 2],
        )
        .unwrap();
        let s = d.subset(&[2, 0]).unwrap();
        assert_eq!(s.pixels(), &[5, 6, 1, 2]);
        assert_eq!(s.labels(), &[2, 0]);
        assert_eq!(d.subset(&[3]).unwrap_err().index, 3);
        assert_eq!(d.slice(1..3).unwrap().pixels(), &[3, 4, 5, 6]);
        assert_eq!(d.class_counts(), vec![1, 1, 1]);
    }
}
