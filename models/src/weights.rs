//! Weights as bytes (to ship to functions and between processes) and as safetensors with
//! torchvision's `state_dict` keys (to exchange weights with PyTorch).

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::params::{ParamKind, ParamTable};
use crate::{Architecture, Model, ModelError, ModelSpec, Result};

const MAGIC: &[u8; 4] = b"PLWT";
const VERSION: u16 = 1;

/// Encodes a model's flat weights and buffers as a self-describing blob: magic, format
/// version, model spec, lengths, a CRC-32 of the payload, then little-endian `f32`s.
pub fn encode(spec: &ModelSpec, weights: &[f32], buffers: &[f32]) -> Vec<u8> {
    let name = spec.arch.name().as_bytes();
    let payload_len = 4 * (weights.len() + buffers.len());
    let mut out = Vec::with_capacity(64 + payload_len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&(spec.num_classes as u32).to_le_bytes());
    out.extend_from_slice(&(spec.in_channels as u32).to_le_bytes());
    out.extend_from_slice(&(weights.len() as u64).to_le_bytes());
    out.extend_from_slice(&(buffers.len() as u64).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(bytemuck::cast_slice(weights));
    crc.update(bytemuck::cast_slice(buffers));
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(bytemuck::cast_slice(weights));
    out.extend_from_slice(bytemuck::cast_slice(buffers));
    out
}

/// A decoded weights blob.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedWeights {
    pub spec: ModelSpec,
    pub weights: Vec<f32>,
    pub buffers: Vec<f32>,
}

/// Decodes a blob made by [`encode`], rejecting truncated, foreign, newer or corrupted ones.
pub fn decode(bytes: &[u8]) -> Result<DecodedWeights> {
    let bad = |m: String| ModelError::InvalidWeights(m);
    let mut r = Reader { bytes, pos: 0 };
    if r.take(4)? != MAGIC {
        return Err(bad("not a peerless weights blob (bad magic bytes)".into()));
    }
    let version = u16::from_le_bytes(r.array()?);
    if version != VERSION {
        return Err(bad(format!(
            "weights format version {version}, this build reads version {VERSION}"
        )));
    }
    let name_len = r.take(1)?[0] as usize;
    let name = std::str::from_utf8(r.take(name_len)?)
        .map_err(|_| bad("model name is not UTF-8".into()))?;
    let arch: Architecture = name.parse()?;
    let num_classes = u32::from_le_bytes(r.array()?) as usize;
    let in_channels = u32::from_le_bytes(r.array()?) as usize;
    let n_weights = u64::from_le_bytes(r.array()?) as usize;
    let n_buffers = u64::from_le_bytes(r.array()?) as usize;
    let crc = u32::from_le_bytes(r.array()?);
    let payload = &bytes[r.pos..];
    let expected = n_weights
        .checked_add(n_buffers)
        .and_then(|n| n.checked_mul(4))
        .ok_or_else(|| bad("impossible lengths in header".into()))?;
    if payload.len() != expected {
        return Err(bad(format!(
            "payload is {} bytes, header announces {expected} (truncated or padded)",
            payload.len()
        )));
    }
    if crc32fast::hash(payload) != crc {
        return Err(bad("checksum mismatch: the blob is corrupted".into()));
    }
    let (w, b) = payload.split_at(4 * n_weights);
    Ok(DecodedWeights {
        spec: ModelSpec {
            arch,
            num_classes,
            in_channels,
        },
        weights: bytemuck::pod_collect_to_vec(w),
        buffers: bytemuck::pod_collect_to_vec(b),
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos + n;
        if end > self.bytes.len() {
            return Err(ModelError::InvalidWeights(format!(
                "truncated header ({} bytes)",
                self.bytes.len()
            )));
        }
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }
}

/// Serialises weights and buffers as safetensors with torchvision keys, plus an `int64`
/// `num_batches_tracked` per batch norm so PyTorch's `load_state_dict(strict=True)` accepts it.
pub fn to_safetensors(table: &ParamTable, weights: &[f32], buffers: &[f32]) -> Result<Vec<u8>> {
    let zero = 0i64.to_le_bytes();
    let mut views: BTreeMap<String, TensorView<'_>> = BTreeMap::new();
    let view_err = |e: safetensors::SafeTensorError| ModelError::Backend(e.to_string());
    for info in table.entries() {
        let source = match info.kind {
            ParamKind::Trainable => weights,
            ParamKind::Buffer => buffers,
        };
        let data = bytemuck::cast_slice(&source[info.range()]);
        views.insert(
            info.name.clone(),
            TensorView::new(Dtype::F32, info.shape.clone(), data).map_err(view_err)?,
        );
        if let Some(prefix) = info.name.strip_suffix("running_mean") {
            views.insert(
                format!("{prefix}num_batches_tracked"),
                TensorView::new(Dtype::I64, vec![], &zero).map_err(view_err)?,
            );
        }
    }
    safetensors::serialize(views, None).map_err(view_err)
}

/// Reads weights and buffers from a safetensors file with torchvision keys. Missing, extra
/// or mis-shaped tensors are all reported at once, by key.
pub fn from_safetensors(
    table: &ParamTable,
    model: &str,
    bytes: &[u8],
    path: &Path,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| ModelError::SafetensorsFormat {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut weights = vec![0.0f32; table.num_params()];
    let mut buffers = vec![0.0f32; table.num_buffers()];
    let mut problems = Vec::new();
    for info in table.entries() {
        let view = match file.tensor(&info.name) {
            Ok(v) => v,
            Err(_) => {
                problems.push(format!("missing `{}`", info.name));
                continue;
            }
        };
        if view.shape() != info.shape.as_slice() {
            problems.push(format!(
                "`{}` has shape {:?}, expected {:?}",
                info.name,
                view.shape(),
                info.shape
            ));
            continue;
        }
        if view.dtype() != Dtype::F32 {
            problems.push(format!(
                "`{}` is {:?}, expected F32",
                info.name,
                view.dtype()
            ));
            continue;
        }
        let out = match info.kind {
            ParamKind::Trainable => &mut weights[info.range()],
            ParamKind::Buffer => &mut buffers[info.range()],
        };
        bytemuck::cast_slice_mut::<f32, u8>(out).copy_from_slice(view.data());
    }
    let mut extra: Vec<&str> = file
        .names()
        .into_iter()
        .filter(|n| table.get(n).is_none() && !n.ends_with("num_batches_tracked"))
        .collect();
    extra.sort_unstable();
    problems.extend(extra.into_iter().map(|n| format!("unexpected `{n}`")));
    if problems.is_empty() {
        Ok((weights, buffers))
    } else {
        Err(ModelError::SafetensorsMismatch {
            path: path.to_path_buf(),
            model: model.to_string(),
            problems: problems.join("; "),
        })
    }
}

impl Model {
    /// The weights and buffers as a blob for [`decode`] / [`Model::load_bytes`].
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        Ok(encode(self.spec(), &self.params()?, &self.buffers()?))
    }

    /// Loads a blob made by [`Model::to_bytes`]; the blob's model must equal this one's.
    pub fn load_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let decoded = decode(bytes)?;
        if decoded.spec != *self.spec() {
            return Err(ModelError::InvalidWeights(format!(
                "blob holds {:?}, this model is {:?}",
                decoded.spec,
                self.spec()
            )));
        }
        self.set_params(&decoded.weights)?;
        self.set_buffers(&decoded.buffers)
    }

    /// Writes the weights as a safetensors file with torchvision keys.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let bytes = to_safetensors(self.table(), &self.params()?, &self.buffers()?)?;
        std::fs::write(path, bytes).map_err(|source| ModelError::Io {
            action: "writing",
            path: path.to_path_buf(),
            source,
        })
    }

    /// Loads a safetensors file with torchvision keys (e.g. exported from PyTorch).
    pub fn load_safetensors(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            action: "reading",
            path: path.to_path_buf(),
            source,
        })?;
        let (w, b) = from_safetensors(self.table(), self.spec().arch.name(), &bytes, path)?;
        self.set_params(&w)?;
        self.set_buffers(&b)
    }
}
