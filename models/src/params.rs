//! The flat parameter layout: every float tensor of a model, in a fixed order, with
//! torchvision's `state_dict` key, shape and offset.
//!
//! Order: the order in which the model's `#[derive(Module)]` fields are declared, which the
//! models mirror from torchvision, so the trainable vector equals PyTorch's
//! `torch.cat([p.flatten() for p in model.parameters()])` and each tensor's layout is
//! PyTorch's (convolutions `[out, in/groups, kh, kw]`, linear `[out, in]`).
//! Batch-norm running statistics are *buffers*: they sit in a second flat vector and never
//! receive gradients.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Gradients, Tensor, TensorData};

use crate::ModelError;
use crate::arch::Net;

/// Whether a tensor is trained (and gets a gradient) or is a running statistic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// A learnable parameter: part of the flat weights and the flat gradient.
    Trainable,
    /// A batch-norm running statistic: part of the flat buffers only.
    Buffer,
}

/// One tensor of the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamInfo {
    /// torchvision `state_dict` key, e.g. `features.3.squeeze.weight`.
    pub name: String,
    /// PyTorch shape.
    pub shape: Vec<usize>,
    /// Trainable parameter or buffer.
    pub kind: ParamKind,
    /// Offset in the flat vector of its kind.
    pub offset: usize,
}

impl ParamInfo {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True for a tensor with no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The range of this tensor in its flat vector.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// The complete, ordered layout of a model's tensors; built once per model by walking it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamTable {
    entries: Vec<ParamInfo>,
    trainable_len: usize,
    buffer_len: usize,
}

impl ParamTable {
    /// Walks `net` and records every float tensor.
    pub fn of(net: &Net) -> Self {
        let mut v = TableBuilder::default();
        net.visit(&mut v);
        ParamTable {
            entries: v.entries,
            trainable_len: v.trainable_len,
            buffer_len: v.buffer_len,
        }
    }

    /// All tensors in order.
    pub fn entries(&self) -> &[ParamInfo] {
        &self.entries
    }

    /// Trainable tensors in order.
    pub fn trainable(&self) -> impl Iterator<Item = &ParamInfo> {
        self.entries
            .iter()
            .filter(|e| e.kind == ParamKind::Trainable)
    }

    /// Number of trainable scalars: the length of the flat weights and gradient.
    pub fn num_params(&self) -> usize {
        self.trainable_len
    }

    /// Number of buffer scalars (batch-norm running statistics).
    pub fn num_buffers(&self) -> usize {
        self.buffer_len
    }

    /// Looks a tensor up by its torchvision key.
    pub fn get(&self, name: &str) -> Option<&ParamInfo> {
        self.entries.iter().find(|e| e.name == name)
    }
}

/// Tracks the torchvision key of the tensor being visited. Burn reports struct fields,
/// `Vec` indices and enum variants; torchvision keys have no variant names, call batch-norm
/// affine parameters `weight`/`bias`, and number `Conv2dNormActivation`'s children.
#[derive(Default)]
struct PathTracker {
    parts: Vec<String>,
    pushed: Vec<bool>,
}

impl PathTracker {
    fn enter(&mut self, name: &str, container: &str) {
        let renamed = match (container, name) {
            (c, _) if c.starts_with("Enum:") => None,
            ("Struct:BatchNorm", "gamma") => Some("weight"),
            ("Struct:BatchNorm", "beta") => Some("bias"),
            ("Struct:ConvNormAct", "conv") => Some("0"),
            ("Struct:ConvNormAct", "bn") => Some("1"),
            (_, n) => Some(n),
        };
        self.pushed.push(renamed.is_some());
        if let Some(n) = renamed {
            self.parts.push(n.to_string());
        }
    }

    fn exit(&mut self) {
        if self.pushed.pop() == Some(true) {
            self.parts.pop();
        }
    }

    fn key(&self) -> String {
        self.parts.join(".")
    }

    fn kind(&self) -> ParamKind {
        match self.parts.last().map(String::as_str) {
            Some("running_mean" | "running_var") => ParamKind::Buffer,
            _ => ParamKind::Trainable,
        }
    }
}

#[derive(Default)]
struct TableBuilder {
    path: PathTracker,
    entries: Vec<ParamInfo>,
    trainable_len: usize,
    buffer_len: usize,
}

impl ModuleVisitor for TableBuilder {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let shape = param.lazy_shape().to_vec();
        let kind = self.path.kind();
        let counter = match kind {
            ParamKind::Trainable => &mut self.trainable_len,
            ParamKind::Buffer => &mut self.buffer_len,
        };
        let offset = *counter;
        *counter += shape.iter().product::<usize>();
        self.entries.push(ParamInfo {
            name: self.path.key(),
            shape,
            kind,
            offset,
        });
    }
}

fn copy_tensor<const D: usize>(tensor: Tensor<D>, out: &mut [f32]) -> Result<(), ModelError> {
    if crate::kernels::burn_ext::copy_to_slice(&tensor, out) {
        return Ok(());
    }
    let data = tensor.into_data().convert::<f32>();
    let values = data
        .as_slice::<f32>()
        .map_err(|e| ModelError::Backend(format!("reading a tensor: {e:?}")))?;
    out.copy_from_slice(values);
    Ok(())
}

/// Copies the current tensors of `net` into the flat trainable and buffer vectors.
pub(crate) fn read_flat(
    net: &Net,
    table: &ParamTable,
    params: &mut [f32],
    buffers: &mut [f32],
) -> Result<(), ModelError> {
    struct Reader<'a> {
        table: &'a ParamTable,
        index: usize,
        params: &'a mut [f32],
        buffers: &'a mut [f32],
        result: Result<(), ModelError>,
    }
    impl ModuleVisitor for Reader<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let info = &self.table.entries[self.index];
            self.index += 1;
            if self.result.is_err() {
                return;
            }
            let out = match info.kind {
                ParamKind::Trainable => &mut self.params[info.range()],
                ParamKind::Buffer => &mut self.buffers[info.range()],
            };
            self.result = copy_tensor(param.val(), out);
        }
    }
    let mut reader = Reader {
        table,
        index: 0,
        params,
        buffers,
        result: Ok(()),
    };
    net.visit(&mut reader);
    reader.result
}

/// The storage key ([`crate::kernels::burn_ext::param_storage_key`]) of every trainable
/// tensor on the CPU backend, with its table index, in table order: where the backward
/// pass may write gradients straight into the flat buffer.
pub(crate) fn sink_keys(net: &Net, table: &ParamTable) -> Vec<(usize, usize)> {
    struct Keys<'a> {
        table: &'a ParamTable,
        index: usize,
        keys: Vec<(usize, usize)>,
    }
    impl ModuleVisitor for Keys<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let index = self.index;
            self.index += 1;
            if self.table.entries[index].kind != ParamKind::Trainable {
                return;
            }
            if let Some(key) = crate::kernels::burn_ext::param_storage_key(&param.val()) {
                self.keys.push((index, key));
            }
        }
    }
    let mut keys = Keys {
        table,
        index: 0,
        keys: Vec::new(),
    };
    net.visit(&mut keys);
    keys.keys
}

/// Copies the gradient of every trainable tensor into `out` (zero for a tensor that took
/// no part in the loss). Tensors whose table index is in `sunk` already have their gradient
/// in `out`, written by the backward pass; any gradient Burn holds for them as well (a
/// tensor used twice) is added.
pub(crate) fn read_grads(
    net: &Net,
    table: &ParamTable,
    grads: &Gradients,
    out: &mut [f32],
    sunk: &[usize],
) -> Result<(), ModelError> {
    struct GradReader<'a> {
        table: &'a ParamTable,
        index: usize,
        grads: &'a Gradients,
        out: &'a mut [f32],
        sunk: &'a [usize],
        result: Result<(), ModelError>,
    }
    impl ModuleVisitor for GradReader<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let index = self.index;
            let info = &self.table.entries[index];
            self.index += 1;
            if info.kind != ParamKind::Trainable || self.result.is_err() {
                return;
            }
            let out = &mut self.out[info.range()];
            let sunk = self.sunk.contains(&index);
            self.result = match (param.val().grad(self.grads), sunk) {
                (Some(g), false) => copy_tensor(g, out),
                (Some(g), true) => {
                    let mut more = vec![0.0; out.len()];
                    copy_tensor(g, &mut more).map(|()| {
                        out.iter_mut().zip(more).for_each(|(o, m)| *o += m);
                    })
                }
                (None, true) => Ok(()),
                (None, false) => {
                    out.fill(0.0);
                    Ok(())
                }
            };
        }
    }
    let mut reader = GradReader {
        table,
        index: 0,
        grads,
        out,
        sunk,
        result: Ok(()),
    };
    net.visit(&mut reader);
    reader.result
}

/// A copy of `net` whose trainable tensors are new autodiff leaves over the same values (and
/// whose running statistics are shared). Burn merges the graphs of computations that share
/// a leaf and runs a merged graph's backward pass under one lock: parts of a step that run
/// at once and meet inside their backward passes ([`crate::parts`]) need graphs of their own.
pub(crate) fn own_leaves(net: &Net) -> Net {
    struct Leaves;
    impl ModuleMapper for Leaves {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, tensor, mapper) = param.consume();
            // `detach` keeps the tensor tracked, as a new leaf.
            let tensor = if tensor.is_require_grad() {
                tensor.detach()
            } else {
                tensor
            };
            Param::from_mapped_value(id, tensor, mapper)
        }
    }
    net.clone().map(&mut Leaves)
}

/// Replaces the tensors of `net` with values from the flat vectors; `None` leaves that kind
/// unchanged. Lengths must already have been checked against the table.
pub(crate) fn write_flat(
    net: Net,
    table: &ParamTable,
    device: &Device,
    params: Option<&[f32]>,
    buffers: Option<&[f32]>,
) -> Net {
    struct Writer<'a> {
        table: &'a ParamTable,
        index: usize,
        device: &'a Device,
        params: Option<&'a [f32]>,
        buffers: Option<&'a [f32]>,
    }
    impl ModuleMapper for Writer<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let info = &self.table.entries[self.index];
            self.index += 1;
            let source = match info.kind {
                ParamKind::Trainable => self.params,
                ParamKind::Buffer => self.buffers,
            };
            let Some(source) = source else {
                return param;
            };
            let (id, old, mapper) = param.consume();
            let data = TensorData::new(source[info.range()].to_vec(), info.shape.clone());
            let mut tensor = Tensor::<D>::from_data(data, self.device);
            if info.kind == ParamKind::Trainable && old.is_require_grad() {
                tensor = tensor.require_grad();
            }
            Param::from_mapped_value(id, tensor, mapper)
        }
    }
    let mut writer = Writer {
        table,
        index: 0,
        device,
        params,
        buffers,
    };
    net.map(&mut writer)
}
