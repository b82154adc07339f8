//! Seeded synthetic images: one oriented sinusoidal grating per class with a random
//! phase jitter, random contrast and uniform pixel noise, so a small CNN can learn it
//! quickly while nothing has to be downloaded.
//!
//! Pixel value before quantisation:
//! `0.5 + 0.35 * contrast * sin(2*pi*f_c*(x*cos(t_c) + y*sin(t_c))/S + jitter + 0.7*k*(c+1)) + noise`
//! with orientation `t_c = pi*c/classes`, frequency `f_c = 2 + c mod 3` cycles per image,
//! `S = max(height, width)`, channel `k`, `contrast ~ U(0.7, 1)`, `jitter ~ U(-0.5, 0.5)` per
//! image and `noise ~ U(-noise, noise)` per pixel. The mean pixel is 0.5 and the standard
//! deviation about 0.24 with the default noise, which is what
//! [`crate::transform::Normalization::for_kind`] uses.

use std::f32::consts::PI;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::DatasetError;
use crate::dataset::{Dataset, DatasetKind, ImageShape, Split};

/// Parameters of a generated dataset; the same configuration always yields the same bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticConfig {
    /// Number of images.
    pub count: usize,
    /// Channels per image (1..=16).
    pub channels: usize,
    /// Rows per image.
    pub height: usize,
    /// Columns per image.
    pub width: usize,
    /// Number of classes (1..=256); labels are balanced.
    pub num_classes: usize,
    /// Seed of the per-image randomness (the class patterns do not depend on it).
    pub seed: u64,
    /// Half-width of the uniform per-pixel noise, in units of full scale.
    pub noise: f32,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self::for_split(Split::Train)
    }
}

impl SyntheticConfig {
    /// The configuration [`crate::formats::load`] uses: 1x28x28, 10 classes, 6,000 train
    /// images (seed 1) or 1,000 test images (seed 2), noise 0.2.
    pub fn for_split(split: Split) -> Self {
        let (count, seed) = match split {
            Split::Train => (6000, 1),
            Split::Test => (1000, 2),
        };
        Self {
            count,
            channels: 1,
            height: 28,
            width: 28,
            num_classes: 10,
            seed,
            noise: 0.2,
        }
    }

    /// Generate the images.
    pub fn generate(&self) -> Result<Dataset, DatasetError> {
        self.validate()?;
        let shape = ImageShape::new(self.channels, self.height, self.width);
        let plane = self.height * self.width;
        let (sin_table, cos_table) = self.phase_tables();

        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut labels: Vec<u8> = (0..self.count)
            .map(|i| (i % self.num_classes) as u8)
            .collect();
        labels.shuffle(&mut rng);

        let mut pixels = vec![0u8; self.count * shape.len()];
        for (image, &label) in pixels.chunks_exact_mut(shape.len()).zip(&labels) {
            let c = usize::from(label);
            let contrast = rng.random_range(0.7f32..1.0);
            let jitter = rng.random_range(-0.5f32..0.5);
            for (k, channel) in image.chunks_exact_mut(plane).enumerate() {
                let delta = jitter + 0.7 * k as f32 * (c + 1) as f32;
                let (sd, cd) = delta.sin_cos();
                let amp = 0.35 * contrast;
                let base = c * plane;
                let sins = &sin_table[base..base + plane];
                let coss = &cos_table[base..base + plane];
                for ((p, &s), &co) in channel.iter_mut().zip(sins).zip(coss) {
                    let noise = if self.noise > 0.0 {
                        rng.random_range(-self.noise..=self.noise)
                    } else {
                        0.0
                    };
                    let v = 0.5 + amp * (s * cd + co * sd) + noise;
                    *p = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                }
            }
        }
        Dataset::new(
            DatasetKind::Synthetic,
            shape,
            self.num_classes,
            pixels,
            labels,
        )
        .map_err(|source| DatasetError::Invalid {
            path: "<synthetic>".into(),
            source,
        })
    }

    /// `sin` and `cos` of each class's grating argument at every pixel, class after class.
    fn phase_tables(&self) -> (Vec<f32>, Vec<f32>) {
        let plane = self.height * self.width;
        let scale = self.height.max(self.width) as f32;
        let mut sins = Vec::with_capacity(self.num_classes * plane);
        let mut coss = Vec::with_capacity(self.num_classes * plane);
        for c in 0..self.num_classes {
            let theta = PI * c as f32 / self.num_classes as f32;
            let freq = 2.0 + (c % 3) as f32;
            let (st, ct) = theta.sin_cos();
            for y in 0..self.height {
                for x in 0..self.width {
                    let t = 2.0 * PI * freq * (x as f32 * ct + y as f32 * st) / scale;
                    let (s, co) = t.sin_cos();
                    sins.push(s);
                    coss.push(co);
                }
            }
        }
        (sins, coss)
    }

    fn validate(&self) -> Result<(), DatasetError> {
        let bad = |m: String| Err(DatasetError::SyntheticConfig(m));
        if !(1..=16).contains(&self.channels) {
            return bad(format!("channels must be 1..=16, got {}", self.channels));
        }
        if self.height == 0 || self.width == 0 {
            return bad(format!(
                "image size must be positive, got {}x{}",
                self.height, self.width
            ));
        }
        if !(1..=256).contains(&self.num_classes) {
            return bad(format!(
                "num_classes must be 1..=256, got {}",
                self.num_classes
            ));
        }
        if !self.noise.is_finite() || self.noise < 0.0 {
            return bad(format!("noise must be finite and >= 0, got {}", self.noise));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let cfg = SyntheticConfig {
            count: 50,
            ..SyntheticConfig::default()
        };
        let a = cfg.generate().unwrap();
        let b = cfg.generate().unwrap();
        assert_eq!(a, b);
        let c = SyntheticConfig { seed: 99, ..cfg }.generate().unwrap();
        assert_ne!(a.pixels(), c.pixels());
    }

    #[test]
    fn labels_balanced_and_statistics_match_documented_values() {
        let d = SyntheticConfig {
            count: 2000,
            channels: 3,
            height: 16,
            width: 16,
            ..SyntheticConfig::default()
        }
        .generate()
        .unwrap();
        assert_eq!(d.shape(), ImageShape::new(3, 16, 16));
        assert_eq!(d.class_counts(), vec![200; 10]);
        let n = d.pixels().len() as f64;
        let mean = d
            .pixels()
            .iter()
            .map(|&p| f64::from(p) / 255.0)
            .sum::<f64>()
            / n;
        let var = d
            .pixels()
            .iter()
            .map(|&p| (f64::from(p) / 255.0 - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        assert!((var.sqrt() - 0.24).abs() < 0.02, "std {}", var.sqrt());
    }

    #[test]
    fn classes_are_separable_by_nearest_class_mean() {
        let train = SyntheticConfig {
            count: 500,
            ..SyntheticConfig::default()
        }
        .generate()
        .unwrap();
        let test = SyntheticConfig::for_split(Split::Test).generate().unwrap();
        let len = train.shape().len();
        let mut means = vec![vec![0f64; len]; 10];
        for i in 0..train.len() {
            let m = &mut means[usize::from(train.labels()[i])];
            for (a, &p) in m.iter_mut().zip(train.image(i).unwrap()) {
                *a += f64::from(p) / 50.0;
            }
        }
        let correct = (0..test.len())
            .filter(|&i| {
                let img = test.image(i).unwrap();
                let best = (0..10)
                    .min_by(|&a, &b| {
                        let d = |c: usize| -> f64 {
                            means[c]
                                .iter()
                                .zip(img)
                                .map(|(m, &p)| (m - f64::from(p)).powi(2))
                                .sum()
                        };
                        d(a).total_cmp(&d(b))
                    })
                    .unwrap();
                best == usize::from(test.labels()[i])
            })
            .count();
        assert!(correct > 900, "nearest-mean accuracy {correct}/1000");
    }

    #[test]
    fn invalid_config_is_rejected() {
        let err = SyntheticConfig {
            channels: 0,
            ..SyntheticConfig::default()
        }
        .generate()
        .unwrap_err();
        assert!(err.to_string().contains("channels"), "{err}");
    }
}
