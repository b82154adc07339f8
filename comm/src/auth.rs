//! Authenticated senders: every peer of a run holds its own Ed25519 private key
//! and the run's roster of public keys, signs every message it sends, and
//! accepts a message claiming rank `r` only if it verifies under rank `r`'s key
//! (so a compromised peer cannot speak for another rank, and anyone else who
//! can publish to the broker cannot speak at all).
//!
//! A signature covers the BLAKE3 digest of the header and payload: hashing
//! runs at several GB/s, so even VGG11's 515 MB gradients verify in a fraction
//! of a round, and the header's run id, round and sender incarnation make a
//! replayed message useless (it is stale, or a duplicate).
//!
//! Files (`peerless keys generate --size N --out DIR`): `DIR/rank-{r}.key`
//! (the private key of rank `r`, hex, readable by its owner only) and
//! `DIR/roster.txt` (one line per rank: `{rank} {public key hex}`). A peer needs
//! its own key file and the roster.

use std::fmt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use crate::wire::{Message, SIGNATURE_LEN, Signer};

/// Name of the roster file in a keys directory.
pub const ROSTER_FILE: &str = "roster.txt";

/// The private key file of `rank` in a keys directory.
pub fn key_file(dir: &Path, rank: u32) -> PathBuf {
    dir.join(format!("rank-{rank}.key"))
}

/// Why keys could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Reading or writing a key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key file's contents are not a key.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The keys do not fit the run.
    #[error("{0}")]
    Mismatch(String),
}

/// Why a message failed authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthReject {
    /// The run is authenticated and the message carries no signature.
    Unsigned,
    /// The claimed sender has no key in the roster.
    UnknownSender,
    /// The signature does not verify under the claimed sender's key.
    BadSignature,
}

impl fmt::Display for AuthReject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthReject::Unsigned => "unsigned message in an authenticated run",
            AuthReject::UnknownSender => "no key for the claimed sender",
            AuthReject::BadSignature => "signature does not verify",
        })
    }
}

/// This peer's signing key and the run's roster; empty for an unauthenticated run.
#[derive(Clone, Default)]
pub struct Keyring {
    own: Option<SigningKey>,
    roster: Option<Vec<VerifyingKey>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private key.
        f.debug_struct("Keyring")
            .field("signs", &self.own.is_some())
            .field("roster", &self.roster.as_ref().map(Vec::len))
            .finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.trim();
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn write_private(path: &Path, contents: &str) -> Result<(), AuthError> {
    use std::io::Write;
    let io = |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)
}

/// Writes fresh keys for a run of `size` peers into `dir` (created if needed);
/// refuses to overwrite existing key files.
pub fn generate(dir: &Path, size: u32) -> Result<(), AuthError> {
    std::fs::create_dir_all(dir).map_err(|source| AuthError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut roster = String::new();
    for rank in 0..size {
        let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        write_private(&key_file(dir, rank), &format!("{}\n", hex(&key.to_bytes())))?;
        roster.push_str(&format!("{rank} {}\n", hex(key.verifying_key().as_bytes())));
    }
    let path = dir.join(ROSTER_FILE);
    std::fs::write(&path, roster).map_err(|source| AuthError::Io { path, source })
}

impl Keyring {
    /// No keys: messages are neither signed nor checked.
    pub fn none() -> Self {
        Keyring::default()
    }

    /// Whether messages are signed and checked.
    pub fn is_authenticated(&self) -> bool {
        self.roster.is_some()
    }

    /// Loads the roster of a run of `world_size` peers and the key of `rank`
    /// from `dir`, checking that the key is the roster's for that rank.
    pub fn load(dir: &Path, rank: u32, world_size: u32) -> Result<Self, AuthError> {
        let read = |path: PathBuf| {
            std::fs::read_to_string(&path).map_err(|source| AuthError::Io { path, source })
        };
        let roster_path = dir.join(ROSTER_FILE);
        let text = read(roster_path.clone())?;
        let invalid = |reason: String| AuthError::Invalid {
            path: roster_path.clone(),
            reason,
        };
        let mut roster = Vec::new();
        for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            let mut fields = line.split_whitespace();
            let (Some(r), Some(key), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(invalid(format!(
                    "line {}: expected `RANK PUBLIC-KEY`",
                    i + 1
                )));
            };
            if r.parse::<usize>().ok() != Some(i) {
                return Err(invalid(format!(
                    "line {}: expected rank {i}, found {r:?}",
                    i + 1
                )));
            }
            let key = unhex::<32>(key)
                .and_then(|k| VerifyingKey::from_bytes(&k).ok())
                .ok_or_else(|| invalid(format!("line {}: not an Ed25519 public key", i + 1)))?;
            roster.push(key);
        }
        if roster.len() != world_size as usize {
            return Err(AuthError::Mismatch(format!(
                "{} holds keys for {} peers, this run has {world_size}",
                roster_path.display(),
                roster.len()
            )));
        }
        let key_path = key_file(dir, rank);
        let own = unhex::<32>(&read(key_path.clone())?)
            .map(|k| SigningKey::from_bytes(&k))
            .ok_or_else(|| AuthError::Invalid {
                path: key_path.clone(),
                reason: "not an Ed25519 private key".into(),
            })?;
        if own.verifying_key() != roster[rank as usize] {
            return Err(AuthError::Mismatch(format!(
                "{} is not the key of rank {rank} in {}",
                key_path.display(),
                roster_path.display()
            )));
        }
        Ok(Keyring {
            own: Some(own),
            roster: Some(roster),
        })
    }

    /// The signer for outgoing messages, if this peer signs.
    pub fn signer(&self) -> Option<&dyn Signer> {
        self.own.as_ref().map(|_| self as &dyn Signer)
    }

    /// Checks a decoded message's signature against its claimed sender's key;
    /// every message passes in an unauthenticated run.
    pub fn verify(&self, message: &Message<'_>) -> Result<(), AuthReject> {
        let Some(roster) = &self.roster else {
            return Ok(());
        };
        let Some(signature) = message.signature else {
            return Err(AuthReject::Unsigned);
        };
        let key = roster
            .get(message.header.sender as usize)
            .ok_or(AuthReject::UnknownSender)?;
        let signature: [u8; SIGNATURE_LEN] =
            signature.try_into().map_err(|_| AuthReject::BadSignature)?;
        let digest = digest(message.signed_bytes);
        key.verify_strict(digest.as_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| AuthReject::BadSignature)
    }
}

/// BLAKE3 of a message, on the calling thread: a message is at most a chunk (448 KiB
/// by default, a few GB/s on one core), and handing each one to the rayon pool made
/// verification wait behind gradient computation on a busy machine (many signed
/// messages are hashed in parallel by [`crate::wire::chunk_messages_signed`] instead).
fn digest(bytes: &[u8]) -> blake3::Hash {
    blake3::hash(bytes)
}

impl Signer for Keyring {
    fn sign(&self, signed_bytes: &[u8]) -> [u8; SIGNATURE_LEN] {
        let digest = digest(signed_bytes);
        match &self.own {
            Some(key) => key.sign(digest.as_bytes()).to_bytes(),
            None => [0; SIGNATURE_LEN],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::CodecSpec;
    use crate::wire::{self, Header, RunId};

    fn message(keyring: &Keyring, sender: u32) -> bytes::Bytes {
        let header = Header::gradient(
            RunId::from_name("auth"),
            3,
            sender,
            3,
            7,
            CodecSpec::None,
            2,
        );
        let mut out = Vec::new();
        wire::chunk_messages_signed(
            &header,
            &[1, 2, 3, 4, 5, 6, 7, 8],
            1 << 20,
            &mut out,
            keyring.signer(),
        );
        out.pop().unwrap()
    }

    #[test]
    fn signed_messages_verify_only_under_their_senders_key() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), 3).unwrap();
        let keys: Vec<Keyring> = (0..3)
            .map(|r| Keyring::load(dir.path(), r, 3).unwrap())
            .collect();
        let good = message(&keys[1], 1);
        let decoded = wire::decode(&good).unwrap();
        assert_eq!(keys[0].verify(&decoded), Ok(()));
        // Rank 2 claiming to be rank 1.
        let forged = message(&keys[2], 1);
        assert_eq!(
            keys[0].verify(&wire::decode(&forged).unwrap()),
            Err(AuthReject::BadSignature)
        );
        // Unsigned.
        let plain = message(&Keyring::none(), 1);
        assert_eq!(
            keys[0].verify(&wire::decode(&plain).unwrap()),
            Err(AuthReject::Unsigned)
        );
        assert_eq!(
            Keyring::none().verify(&wire::decode(&plain).unwrap()),
            Ok(())
        );
        // A flipped payload bit with a fixed-up CRC still fails the signature.
        let mut tampered = good.to_vec();
        tampered[wire::HEADER_LEN] ^= 1;
        let crc = crc32fast::hash(&tampered[wire::HEADER_LEN..wire::HEADER_LEN + 8]);
        tampered[88..92].copy_from_slice(&crc.to_le_bytes());
        let crc = crc32fast::hash(&tampered[..wire::HEADER_LEN - 4]);
        tampered[wire::HEADER_LEN - 4..wire::HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            keys[0].verify(&wire::decode(&tampered).unwrap()),
            Err(AuthReject::BadSignature)
        );
    }

    #[test]
    fn keys_that_do_not_fit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), 2).unwrap();
        assert!(matches!(
            Keyring::load(dir.path(), 0, 3),
            Err(AuthError::Mismatch(_))
        ));
        assert!(
            matches!(generate(dir.path(), 2), Err(AuthError::Io { .. })),
            "no overwrite"
        );
        std::fs::copy(
            key_file(dir.path(), 1),
            key_file(dir.path(), 0).with_extension("x"),
        )
        .unwrap();
        std::fs::remove_file(key_file(dir.path(), 0)).unwrap();
        std::fs::rename(
            key_file(dir.path(), 0).with_extension("x"),
            key_file(dir.path(), 0),
        )
        .unwrap();
        let err = Keyring::load(dir.path(), 0, 2).unwrap_err().to_string();
        assert!(err.contains("is not the key of rank 0"), "{err}");
        assert!(
            !format!("{:?}", Keyring::load(dir.path(), 1, 2).unwrap()).contains(
                &std::fs::read_to_string(key_file(dir.path(), 1))
                    .unwrap()
                    .trim()
                    .to_string()
            )
        );
    }
}
