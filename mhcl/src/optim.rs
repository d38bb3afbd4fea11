//! Stochastic gradient descent with exactly `torch.optim.SGD`'s update rule.
//!
//! burn's own `SgdConfig` defaults to a momentum dampening of 0.1 and keeps its state by
//! parameter id; this optimizer follows PyTorch (dampening 0 unless asked) and keeps its momentum
//! buffers by parameter *name*, so a checkpoint stores them under the PyTorch parameter names
//! (`optimizer.layer1.0.conv1.weight`) and a resumed run finds them again in a freshly built
//! model.
//!
//! The update for a parameter `p` with gradient `g` (PyTorch `torch/optim/sgd.py`,
//! `_single_tensor_sgd`):
//!
//! ```text
//! d = g + weight_decay * p
//! buf = d                                   (first step: a copy of d)
//! buf = momentum * buf + (1 - dampening) * d (later steps)
//! d = d + momentum * buf  if nesterov, else d = buf
//! p = p - lr * d
//! ```
//!
//! Parameters without a gradient (the momentum encoder, unused heads, BatchNorm running
//! statistics) are left alone and get no buffer, as in PyTorch.
//!
//! ```
//! use burn::prelude::*;
//! use burn::module::Param;
//! use burn::optim::GradientsParams;
//! use mhcl::optim::SgdConfig;
//!
//! #[derive(Module, Debug)]
//! struct Model { w: Param<Tensor<1>> }
//!
//! let device = Device::flex().autodiff();
//! let model = Model { w: Param::from_tensor(Tensor::from_floats([1.0, 2.0], &device)) };
//! let loss = model.w.val().powf_scalar(2.0).sum();
//! let grads = GradientsParams::from_grads(loss.backward(), &model);
//! let mut sgd = SgdConfig::new().with_momentum(0.9).init().unwrap();
//! let model = sgd.step(0.1, model, grads);
//! let w = model.w.val().into_data().try_to_vec::<f32>().unwrap();
//! assert!((w[0] - 0.8).abs() < 1e-6 && (w[1] - 1.6).abs() < 1e-6);
//! assert_eq!(sgd.buffers().unwrap()[0].name, "w");
//! ```

use std::collections::{BTreeMap, HashMap};

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::DType;
use ssl_models::visit::{NamedMapper, NamedVisitor, TensorPath, map_named, visit_named};

use crate::error::{MhclError, Result};

/// Hyper-parameters of [`Sgd`]; the defaults are `torch.optim.SGD`'s (momentum 0, dampening 0,
/// weight decay 0, nesterov off). The learning rate is given to every [`Sgd::step`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SgdConfig {
    /// Momentum factor (PyTorch `momentum`, default 0).
    pub momentum: f64,
    /// Dampening of the gradient added to the buffer after the first step (default 0).
    pub dampening: f64,
    /// L2 penalty added to the gradient, `g + weight_decay * p` (default 0).
    pub weight_decay: f64,
    /// Nesterov momentum (default off; needs momentum > 0 and dampening 0, as in PyTorch).
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl SgdConfig {
    /// PyTorch's defaults.
    pub fn new() -> Self {
        Self {
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }

    /// Sets the momentum factor.
    pub fn with_momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }

    /// Sets the dampening.
    pub fn with_dampening(mut self, dampening: f64) -> Self {
        self.dampening = dampening;
        self
    }

    /// Sets the weight decay.
    pub fn with_weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// Enables or disables Nesterov momentum.
    pub fn with_nesterov(mut self, nesterov: bool) -> Self {
        self.nesterov = nesterov;
        self
    }

    /// Checks the values as PyTorch's constructor does and builds the optimizer.
    pub fn init(&self) -> Result<Sgd> {
        let finite = [self.momentum, self.dampening, self.weight_decay]
            .iter()
            .all(|v| v.is_finite());
        if !finite {
            return Err(MhclError::arg(
                "SGD: momentum, dampening and weight decay must be finite",
            ));
        }
        if self.momentum < 0.0 {
            return Err(MhclError::arg(format!(
                "invalid momentum value: {}",
                self.momentum
            )));
        }
        if self.weight_decay < 0.0 {
            return Err(MhclError::arg(format!(
                "invalid weight_decay value: {}",
                self.weight_decay
            )));
        }
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(MhclError::arg(
                "nesterov momentum requires a momentum and zero dampening",
            ));
        }
        Ok(Sgd {
            config: self.clone(),
            buffers: BTreeMap::new(),
        })
    }
}

/// One momentum buffer on the host, by PyTorch parameter name and in PyTorch layout (a `Linear`
/// weight is `[out, in]` here although burn stores it `[in, out]`).
#[derive(Clone, Debug, PartialEq)]
pub struct MomentumBuffer {
    /// PyTorch parameter name, e.g. `layer1.0.conv1.weight` or `fc.0.weight`.
    pub name: String,
    /// Shape in PyTorch layout.
    pub shape: Vec<usize>,
    /// Values, row-major in PyTorch layout.
    pub values: Vec<f32>,
}

#[derive(Clone, Debug)]
struct Buffer {
    /// Flattened buffer in burn layout, on the parameter's (non-autodiff) device.
    value: Tensor<1>,
    /// burn shape of the parameter.
    shape: Vec<usize>,
    /// PyTorch name.
    pt_name: String,
    /// burn `Linear` weight: PyTorch's layout is the transpose.
    transposed: bool,
}

/// SGD with PyTorch semantics and name-keyed momentum buffers; see the module docs.
#[derive(Clone, Debug)]
pub struct Sgd {
    config: SgdConfig,
    /// Keyed by burn module path.
    buffers: BTreeMap<String, Buffer>,
}

impl Sgd {
    /// The configuration.
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    /// Number of parameters that have a momentum buffer.
    pub fn num_buffers(&self) -> usize {
        self.buffers.len()
    }

    /// Forgets all momentum buffers (the next step starts them anew).
    pub fn reset(&mut self) {
        self.buffers.clear();
    }

    /// One optimizer step over every parameter of `module` that has a gradient in `grads`.
    ///
    /// The update runs on the parameters' non-autodiff device; the returned module keeps each
    /// parameter's id, autodiff device and require-grad setting.
    pub fn step<M: Module>(&mut self, lr: f64, module: M, mut grads: GradientsParams) -> M {
        let mut mapper = StepMapper {
            config: &self.config,
            lr,
            buffers: &mut self.buffers,
            grads: &mut grads,
        };
        map_named(module, &mut mapper)
    }

    /// The momentum buffers, copied to the host, by PyTorch name (sorted by name).
    pub fn buffers(&self) -> Result<Vec<MomentumBuffer>> {
        let mut out = Vec::with_capacity(self.buffers.len());
        for b in self.buffers.values() {
            let t = b.value.clone();
            let (shape, t) = if b.transposed && b.shape.len() == 2 {
                let t = t
                    .reshape([b.shape[0], b.shape[1]])
                    .transpose()
                    .reshape([-1]);
                (vec![b.shape[1], b.shape[0]], t)
            } else {
                (b.shape.clone(), t)
            };
            let values = t
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| MhclError::readback("a momentum buffer", e))?;
            out.push(MomentumBuffer {
                name: b.pt_name.clone(),
                shape,
                values,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Replaces the momentum buffers by `buffers` (PyTorch names and layout), placing each on the
    /// device of the matching parameter of `module`.
    ///
    /// A buffer whose name is not a float parameter of `module`, or whose shape differs from the
    /// parameter's, is an error naming it; parameters without a buffer start a new one at their
    /// next step, as in PyTorch.
    pub fn load_buffers<M: Module>(
        &mut self,
        module: &M,
        buffers: Vec<MomentumBuffer>,
    ) -> Result<()> {
        let mut params = ParamInfoCollector::default();
        visit_named(module, &mut params);
        let by_name: HashMap<String, ParamInfo> = params
            .out
            .into_iter()
            .map(|p| (p.pt_name.clone(), p))
            .collect();
        let mut loaded = BTreeMap::new();
        for b in buffers {
            let info = by_name.get(&b.name).ok_or_else(|| {
                MhclError::arg(format!(
                    "optimizer state for `{}`, which is not a parameter of the model",
                    b.name
                ))
            })?;
            let pt_shape = info.pt_shape();
            if b.shape != pt_shape {
                return Err(MhclError::arg(format!(
                    "optimizer state for `{}` has shape {:?}, the parameter has {:?}",
                    b.name, b.shape, pt_shape
                )));
            }
            if b.values.len() != pt_shape.iter().product::<usize>() {
                return Err(MhclError::arg(format!(
                    "optimizer state for `{}` has {} values for shape {:?}",
                    b.name,
                    b.values.len(),
                    pt_shape
                )));
            }
            let n = b.values.len();
            let mut value = Tensor::<1>::from_data(TensorData::new(b.values, [n]), &info.device);
            if info.transposed && info.shape.len() == 2 {
                value = value
                    .reshape([info.shape[1], info.shape[0]])
                    .transpose()
                    .reshape([-1]);
            }
            loaded.insert(
                info.path.clone(),
                Buffer {
                    value,
                    shape: info.shape.clone(),
                    pt_name: info.pt_name.clone(),
                    transposed: info.transposed,
                },
            );
        }
        self.buffers = loaded;
        Ok(())
    }
}

/// PyTorch name and layout of a burn parameter path, following burn-store's
/// `BurnToPyTorchAdapter`: `Linear` weights are transposed, normalization layers' `gamma`/`beta`
/// are PyTorch's `weight`/`bias`.
fn pytorch_name(path: &[String], container: Option<&str>, rank: usize) -> (String, bool) {
    let mut parts: Vec<String> = path.to_vec();
    let is_norm = container.is_some_and(|c| {
        matches!(
            c,
            "Struct:BatchNorm"
                | "Struct:LayerNorm"
                | "Struct:GroupNorm"
                | "Struct:InstanceNorm"
                | "Struct:RmsNorm"
        )
    });
    if let Some(last) = parts.last_mut()
        && is_norm
    {
        if last == "gamma" {
            *last = "weight".into();
        } else if last == "beta" {
            *last = "bias".into();
        }
    }
    let transposed = container == Some("Struct:Linear")
        && parts.last().is_some_and(|l| l == "weight")
        && rank == 2;
    (parts.join("."), transposed)
}

fn innermost_struct(containers: &[String]) -> Option<&str> {
    containers
        .iter()
        .rev()
        .find(|c| c.starts_with("Struct:"))
        .map(String::as_str)
}

struct StepMapper<'a> {
    config: &'a SgdConfig,
    lr: f64,
    buffers: &'a mut BTreeMap<String, Buffer>,
    grads: &'a mut GradientsParams,
}

impl NamedMapper for StepMapper<'_> {
    fn float<const D: usize>(
        &mut self,
        path: &TensorPath,
        param: Param<Tensor<D>>,
    ) -> Param<Tensor<D>> {
        let Some(grad) = self.grads.remove::<D>(param.id) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let was_autodiff = tensor.is_autodiff();
        let strategy = tensor.gradient_checkpointing_strategy();
        let p = tensor.inner();
        let device = p.device();
        let grad = grad.inner().to_device(&device);
        let cfg = self.config;
        let shape = p.shape();
        let key = path.name();
        let old: Option<Tensor<D>> = if cfg.momentum != 0.0 {
            self.buffers
                .remove(&key)
                .map(|b| b.value.reshape(shape.clone()))
        } else {
            None
        };
        let f32_on_flex = device == Device::flex()
            && p.dtype() == DType::F32
            && grad.dtype() == DType::F32
            && old.as_ref().is_none_or(|b| b.dtype() == DType::F32);
        let (p, buf) = if f32_on_flex {
            update_host(cfg, self.lr, p, grad, old)
        } else {
            update_tensors(cfg, self.lr, p, grad, old)
        };
        if let Some(buf) = buf {
            let (pt_name, transposed) =
                pytorch_name(path.segments(), innermost_struct(path.containers()), D);
            self.buffers.insert(
                key,
                Buffer {
                    value: buf.reshape([-1]),
                    shape: shape.dims::<D>().to_vec(),
                    pt_name,
                    transposed,
                },
            );
        }

        let mut out = if was_autodiff {
            Tensor::from_inner(p)
        } else {
            p
        };
        if let Some(s) = strategy {
            out = out.with_gradient_checkpointing_strategy(s);
        }
        if require_grad {
            out = out.require_grad();
        }
        Param::from_mapped_value(id, out, mapper)
    }
}

/// One parameter's update with tensor operations (any device and float type): returns the new
/// parameter and, with momentum, the new buffer (`old` is the previous one, `None` on the first
/// step).
fn update_tensors<const D: usize>(
    cfg: &SgdConfig,
    lr: f64,
    p: Tensor<D>,
    grad: Tensor<D>,
    old: Option<Tensor<D>>,
) -> (Tensor<D>, Option<Tensor<D>>) {
    let mut d = if cfg.weight_decay != 0.0 {
        grad.add(p.clone().mul_scalar(cfg.weight_decay))
    } else {
        grad
    };
    let mut buffer = None;
    if cfg.momentum != 0.0 {
        let buf = match old {
            Some(old) => {
                let dd = if cfg.dampening != 0.0 {
                    d.clone().mul_scalar(1.0 - cfg.dampening)
                } else {
                    d.clone()
                };
                old.mul_scalar(cfg.momentum).add(dd)
            }
            None => d.clone(),
        };
        d = if cfg.nesterov {
            d.add(buf.clone().mul_scalar(cfg.momentum))
        } else {
            buf.clone()
        };
        buffer = Some(buf);
    }
    (p.sub(d.mul_scalar(lr)), buffer)
}

/// Elements per task of the host update (below it, one task does the whole tensor).
const HOST_CHUNK: usize = 1 << 15;

/// [`update_tensors`] for f32 tensors on the Flex CPU device, as one pass over the values: the
/// parameter, gradient and buffer are taken out of their tensors without a copy (they are not
/// shared after the backward pass; a shared one is copied first) and updated in place, so a step
/// reads each value once and allocates nothing, where the tensor form makes six passes and two
/// temporaries per parameter. The arithmetic is the tensor form's, element by element.
fn update_host<const D: usize>(
    cfg: &SgdConfig,
    lr: f64,
    p: Tensor<D>,
    grad: Tensor<D>,
    old: Option<Tensor<D>>,
) -> (Tensor<D>, Option<Tensor<D>>) {
    use rayon::prelude::*;

    let device = p.device();
    let mut p_data = p.into_data();
    let mut g_data = grad.into_data();
    let mut b_data = old.map(Tensor::into_data);
    let wd = cfg.weight_decay as f32;
    let momentum = cfg.momentum as f32;
    let damp1 = (1.0 - cfg.dampening) as f32;
    let lr = lr as f32;
    let (use_wd, use_momentum, damped, nesterov) = (
        cfg.weight_decay != 0.0,
        cfg.momentum != 0.0,
        cfg.dampening != 0.0,
        cfg.nesterov,
    );
    let first = use_momentum && b_data.is_none();
    {
        let ps = p_data
            .as_mut_slice::<f32>()
            .expect("an f32 parameter has f32 values");
        let gs = g_data
            .as_mut_slice::<f32>()
            .expect("an f32 gradient has f32 values");
        let kernel = |ps: &mut [f32], gs: &mut [f32], bs: Option<&mut [f32]>| match bs {
            // Later steps: buf = m * buf + (1 - dampening) * d.
            Some(bs) => {
                for ((p, &g), b) in ps.iter_mut().zip(gs.iter()).zip(bs.iter_mut()) {
                    let d = if use_wd { g + *p * wd } else { g };
                    let dd = if damped { d * damp1 } else { d };
                    *b = *b * momentum + dd;
                    let step = if nesterov { d + *b * momentum } else { *b };
                    *p -= step * lr;
                }
            }
            // First step with momentum: buf = d, kept in the gradient's storage.
            None if first => {
                for (p, g) in ps.iter_mut().zip(gs.iter_mut()) {
                    let d = if use_wd { *g + *p * wd } else { *g };
                    *g = d;
                    let step = if nesterov { d + d * momentum } else { d };
                    *p -= step * lr;
                }
            }
            // No momentum: p -= lr * d.
            None => {
                for (p, &g) in ps.iter_mut().zip(gs.iter()) {
                    let d = if use_wd { g + *p * wd } else { g };
                    *p -= d * lr;
                }
            }
        };
        let mut bs = b_data.as_mut().map(|b| {
            b.as_mut_slice::<f32>()
                .expect("an f32 momentum buffer has f32 values")
        });
        if ps.len() <= HOST_CHUNK {
            kernel(ps, gs, bs);
        } else {
            match bs.as_mut() {
                Some(bs) => ps
                    .par_chunks_mut(HOST_CHUNK)
                    .zip(gs.par_chunks_mut(HOST_CHUNK))
                    .zip(bs.par_chunks_mut(HOST_CHUNK))
                    .for_each(|((p, g), b)| kernel(p, g, Some(b))),
                None => ps
                    .par_chunks_mut(HOST_CHUNK)
                    .zip(gs.par_chunks_mut(HOST_CHUNK))
                    .for_each(|(p, g)| kernel(p, g, None)),
            }
        }
    }
    let p = Tensor::from_data(p_data, &device);
    let buf = match b_data {
        Some(b) => Some(Tensor::from_data(b, &device)),
        None if first => Some(Tensor::from_data(g_data, &device)),
        None => None,
    };
    (p, buf)
}

struct ParamInfo {
    path: String,
    pt_name: String,
    shape: Vec<usize>,
    transposed: bool,
    device: Device,
}

impl ParamInfo {
    fn pt_shape(&self) -> Vec<usize> {
        if self.transposed && self.shape.len() == 2 {
            vec![self.shape[1], self.shape[0]]
        } else {
            self.shape.clone()
        }
    }
}

#[derive(Default)]
struct ParamInfoCollector {
    out: Vec<ParamInfo>,
}

impl NamedVisitor for ParamInfoCollector {
    fn float<const D: usize>(&mut self, path: &TensorPath, param: &Param<Tensor<D>>) {
        let (pt_name, transposed) =
            pytorch_name(path.segments(), innermost_struct(path.containers()), D);
        let device = param.lazy_device().inner();
        self.out.push(ParamInfo {
            path: path.name(),
            pt_name,
            shape: param.lazy_shape().dims::<D>().to_vec(),
            transposed,
            device,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    #[derive(Module, Debug)]
    struct Net {
        fc: Linear,
        scale: Param<Tensor<1>>,
    }

    fn net(device: &Device) -> Net {
        Net {
            fc: LinearConfig::new(3, 2).init(device),
            scale: Param::from_tensor(Tensor::from_floats([0.5, -1.0], device)),
        }
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    fn loss(model: &Net, device: &Device) -> Tensor<1> {
        let x = Tensor::<2>::from_floats([[1.0, 2.0, -1.0], [0.5, -0.3, 2.0]], device);
        (model.fc.forward(x) * model.scale.val().unsqueeze_dim(0))
            .powf_scalar(2.0)
            .sum()
    }

    /// Scalar restatement of torch.optim.SGD for one parameter.
    fn reference(p: &mut [f32], buf: &mut Option<Vec<f32>>, g: &[f32], lr: f32, c: &SgdConfig) {
        let (m, damp, wd) = (c.momentum as f32, c.dampening as f32, c.weight_decay as f32);
        let mut d: Vec<f32> = g.iter().zip(p.iter()).map(|(g, p)| g + wd * p).collect();
        if m != 0.0 {
            let b = match buf.take() {
                None => d.clone(),
                Some(b) => b
                    .iter()
                    .zip(&d)
                    .map(|(b, d)| m * b + (1.0 - damp) * d)
                    .collect(),
            };
            if c.nesterov {
                d = d.iter().zip(&b).map(|(d, b)| d + m * b).collect();
            } else {
                d = b.clone();
            }
            *buf = Some(b);
        }
        for (p, d) in p.iter_mut().zip(&d) {
            *p -= lr * d;
        }
    }

    fn check_against_reference(cfg: SgdConfig) {
        let device = Device::flex().autodiff();
        device.seed(3);
        let mut model = net(&device);
        let mut sgd = cfg.init().unwrap();
        let mut p_ref = values(model.scale.val());
        let mut buf_ref = None;
        for step in 0..3 {
            let grads = GradientsParams::from_grads(loss(&model, &device).backward(), &model);
            let g: Vec<f32> = values(grads.get::<1>(model.scale.id).unwrap());
            let lr = 0.1 / (step as f32 + 1.0);
            reference(&mut p_ref, &mut buf_ref, &g, lr, &cfg);
            model = sgd.step(f64::from(lr), model, grads);
            let got = values(model.scale.val());
            for (a, b) in got.iter().zip(&p_ref) {
                assert!(
                    (a - b).abs() < 1e-6,
                    "{cfg:?} step {step}: {got:?} vs {p_ref:?}"
                );
            }
        }
        assert!(model.scale.val().is_require_grad());
    }

    #[test]
    fn matches_reference_plain_momentum_nesterov_dampening() {
        check_against_reference(SgdConfig::new());
        check_against_reference(SgdConfig::new().with_momentum(0.9).with_weight_decay(1e-2));
        check_against_reference(
            SgdConfig::new()
                .with_momentum(0.9)
                .with_weight_decay(1e-2)
                .with_nesterov(true),
        );
        check_against_reference(SgdConfig::new().with_momentum(0.5).with_dampening(0.3));
    }

    #[test]
    fn host_update_equals_tensor_update_on_large_tensors() {
        use burn::tensor::Distribution;
        let device = Device::flex();
        let n = 3 * HOST_CHUNK + 17; // several parallel chunks and a ragged tail
        for cfg in [
            SgdConfig::new(),
            SgdConfig::new().with_weight_decay(1e-4),
            SgdConfig::new().with_momentum(0.9).with_weight_decay(1e-4),
            SgdConfig::new()
                .with_momentum(0.9)
                .with_weight_decay(1e-2)
                .with_nesterov(true),
            SgdConfig::new().with_momentum(0.5).with_dampening(0.3),
        ] {
            device.seed(7);
            let p0 = Tensor::<2>::random([n, 1], Distribution::Normal(0.0, 1.0), &device);
            let (mut pa, mut pb) = (p0.clone(), p0);
            let (mut ba, mut bb) = (None, None);
            for step in 0..3 {
                let g = Tensor::<2>::random([n, 1], Distribution::Normal(0.0, 1.0), &device);
                let lr = 0.1 / (step as f64 + 1.0);
                (pa, ba) = update_host(&cfg, lr, pa, g.clone(), ba);
                (pb, bb) = update_tensors(&cfg, lr, pb, g, bb);
                assert_eq!(
                    values(pa.clone()),
                    values(pb.clone()),
                    "{cfg:?} step {step}"
                );
                assert_eq!(ba.is_some(), bb.is_some());
                if let (Some(a), Some(b)) = (&ba, &bb) {
                    assert_eq!(values(a.clone()), values(b.clone()), "{cfg:?} buffer");
                }
            }
        }
    }

    #[test]
    fn buffers_use_pytorch_names_and_layout_and_round_trip() {
        let device = Device::flex().autodiff();
        let model = net(&device);
        let mut sgd = SgdConfig::new().with_momentum(0.9).init().unwrap();
        let grads = GradientsParams::from_grads(loss(&model, &device).backward(), &model);
        let w_grad = values(grads.get::<2>(model.fc.weight.id).unwrap()); // burn [in, out]
        let model = sgd.step(0.1, model, grads);
        let bufs = sgd.buffers().unwrap();
        let names: Vec<_> = bufs.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["fc.bias", "fc.weight", "scale"]);
        let w = &bufs[1];
        assert_eq!(w.shape, vec![2, 3]);
        // PyTorch [out, in] = transpose of burn [in, out]
        for o in 0..2 {
            for i in 0..3 {
                assert_eq!(w.values[o * 3 + i], w_grad[i * 2 + o]);
            }
        }
        let mut other = SgdConfig::new().with_momentum(0.9).init().unwrap();
        other.load_buffers(&model, bufs.clone()).unwrap();
        assert_eq!(other.buffers().unwrap(), bufs);
    }

    #[test]
    fn load_rejects_unknown_names_and_bad_shapes() {
        let device = Device::flex().autodiff();
        let model = net(&device);
        let mut sgd = SgdConfig::new().with_momentum(0.9).init().unwrap();
        let bad_name = MomentumBuffer {
            name: "conv9.weight".into(),
            shape: vec![1],
            values: vec![0.0],
        };
        assert!(sgd.load_buffers(&model, vec![bad_name]).is_err());
        let bad_shape = MomentumBuffer {
            name: "fc.weight".into(),
            shape: vec![3, 2],
            values: vec![0.0; 6],
        };
        let err = sgd
            .load_buffers(&model, vec![bad_shape])
            .unwrap_err()
            .to_string();
        assert!(err.contains("fc.weight"), "{err}");
    }

    #[test]
    fn invalid_configs_are_rejected() {
        assert!(SgdConfig::new().with_nesterov(true).init().is_err());
        assert!(SgdConfig::new().with_momentum(-0.1).init().is_err());
        assert!(SgdConfig::new().with_weight_decay(f64::NAN).init().is_err());
    }
}
