//! Deliberately corrupted gradients (`--attack`), to test and study robust aggregation: a
//! peer with an attack sends a gradient it corrupted itself, the way a faulty or hostile
//! peer would. Noise is seeded from the run seed, the rank and the round, so an attacked
//! run is as reproducible as a clean one.

use std::fmt;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// The accepted spellings of an attack, quoted in parse errors.
pub const VALID_FORMS: &str =
    "`none`, `sign-flip`, `scale:F` (finite F), `noise:SIGMA` (finite SIGMA > 0), `nan`";

/// How a peer corrupts its own gradient before sending it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Attack {
    /// An honest peer.
    #[default]
    None,
    /// Sends the negated gradient (pushes the model uphill).
    SignFlip,
    /// Sends the gradient times a finite factor (e.g. `scale:-10`).
    Scale(f32),
    /// Adds Gaussian noise of this standard deviation to every element.
    Noise(f32),
    /// Sends a gradient of NaN, which the other peers must refuse. With a lossy codec it
    /// cannot even be encoded: the attacker's round fails.
    Nan,
}

/// Elements per independently seeded noise block: the noise does not depend on the
/// thread count.
const NOISE_BLOCK: usize = 1 << 16;

impl Attack {
    /// Whether this peer attacks at all.
    pub fn is_active(self) -> bool {
        self != Attack::None
    }

    /// Corrupts `grad` in place for `round` of the peer `rank` of a run seeded `seed`.
    ///
    /// The node calls this right after computing the gradient and turns off the round's
    /// check of its own gradient (`RoundConfig::check_own`) for an attacker: a `nan`
    /// attacker must get its NaN gradient onto the wire so the other peers' defences are
    /// tested.
    pub fn apply(self, grad: &mut [f32], seed: u64, rank: u32, round: u64) {
        match self {
            Attack::None => {}
            Attack::SignFlip => grad.par_iter_mut().for_each(|x| *x = -*x),
            Attack::Scale(f) => grad.par_iter_mut().for_each(|x| *x *= f),
            Attack::Nan => grad.par_iter_mut().for_each(|x| *x = f32::NAN),
            Attack::Noise(sigma) => {
                let base = seed
                    ^ u64::from(rank).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ round.wrapping_mul(0xD1B5_4A32_D192_ED03)
                    ^ 0xA77A_C4ED_0000_0000;
                grad.par_chunks_mut(NOISE_BLOCK)
                    .enumerate()
                    .for_each(|(b, block)| {
                        let mut rng = ChaCha8Rng::seed_from_u64(base.wrapping_add(b as u64));
                        for x in block {
                            *x += sigma * standard_normal(&mut rng);
                        }
                    });
            }
        }
    }
}

/// One standard normal sample (Box-Muller).
fn standard_normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: the log is finite
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

impl fmt::Display for Attack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attack::None => f.write_str("none"),
            Attack::SignFlip => f.write_str("sign-flip"),
            Attack::Scale(x) => write!(f, "scale:{x}"),
            Attack::Noise(s) => write!(f, "noise:{s}"),
            Attack::Nan => f.write_str("nan"),
        }
    }
}

/// Written as its configuration string (`sign-flip`, `scale:-10`), e.g. in study files.
impl serde::Serialize for Attack {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Attack {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why an attack string is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid attack `{input}` ({reason}); valid forms: {VALID_FORMS}")]
pub struct AttackError {
    /// The string given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for Attack {
    type Err = AttackError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = |reason: &str| AttackError {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        let number = |v: &str| v.trim().parse::<f32>().ok().filter(|x| x.is_finite());
        match s.trim() {
            "none" => Ok(Attack::None),
            "sign-flip" => Ok(Attack::SignFlip),
            "nan" => Ok(Attack::Nan),
            other => {
                if let Some(f) = other.strip_prefix("scale:") {
                    number(f)
                        .map(Attack::Scale)
                        .ok_or_else(|| error("the factor must be a finite number"))
                } else if let Some(sigma) = other.strip_prefix("noise:") {
                    number(sigma)
                        .filter(|s| *s > 0.0)
                        .map(Attack::Noise)
                        .ok_or_else(|| error("SIGMA must be a finite number > 0"))
                } else {
                    Err(error("unknown attack"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_every_form() {
        for (text, a) in [
            ("none", Attack::None),
            ("sign-flip", Attack::SignFlip),
            ("scale:-10", Attack::Scale(-10.0)),
            ("noise:0.5", Attack::Noise(0.5)),
            ("nan", Attack::Nan),
        ] {
            assert_eq!(text.parse::<Attack>(), Ok(a));
            assert_eq!(a.to_string(), text);
        }
        for bad in [
            "",
            "flip",
            "scale:",
            "scale:inf",
            "scale:x",
            "noise:0",
            "noise:-1",
            "noise:nan",
        ] {
            let e = bad.parse::<Attack>().unwrap_err();
            assert!(e.to_string().contains("sign-flip"), "{bad}: {e}");
        }
    }

    #[test]
    fn attacks_corrupt_as_named_and_noise_is_reproducible() {
        let grad: Vec<f32> = (0..(3 * NOISE_BLOCK + 5))
            .map(|i| i as f32 * 1e-3)
            .collect();
        let applied = |a: Attack, round| {
            let mut g = grad.clone();
            a.apply(&mut g, 7, 1, round);
            g
        };
        assert_eq!(applied(Attack::None, 0), grad);
        assert!(
            applied(Attack::SignFlip, 0)
                .iter()
                .zip(&grad)
                .all(|(a, g)| *a == -*g)
        );
        assert!(
            applied(Attack::Scale(-10.0), 0)
                .iter()
                .zip(&grad)
                .all(|(a, g)| *a == -10.0 * *g)
        );
        assert!(applied(Attack::Nan, 0).iter().all(|x| x.is_nan()));
        let noisy = applied(Attack::Noise(2.0), 3);
        assert_eq!(noisy, applied(Attack::Noise(2.0), 3));
        assert_ne!(noisy, applied(Attack::Noise(2.0), 4));
        let diffs: Vec<f64> = noisy
            .iter()
            .zip(&grad)
            .map(|(a, g)| f64::from(a - g))
            .collect();
        let n = diffs.len() as f64;
        let mean = diffs.iter().sum::<f64>() / n;
        let sd = (diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 0.05 && (sd - 2.0).abs() < 0.05, "{mean} {sd}");
        // The noise does not depend on the thread count.
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| applied(Attack::Noise(2.0), 3));
        assert_eq!(one, noisy);
    }
}
