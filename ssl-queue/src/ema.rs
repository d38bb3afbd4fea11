//! Exponential moving average of module parameters (MoCo's momentum update of the key encoder).

use std::collections::HashMap;

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::DType;
use ssl_models::visit::{NamedMapper, NamedVisitor, TensorPath, map_named, visit_named};

use crate::error::{QueueError, Result};

/// Path suffixes of the buffers that the EMA leaves alone by default: BatchNorm's running
/// statistics and batch counter.
///
/// burn's module visitor reports `RunningState` buffers as float parameters, so they are told
/// apart by name. MoCo's `_momentum_update_key_encoder` zips `encoder_q.parameters()` with
/// `encoder_k.parameters()`: PyTorch buffers (`running_mean`, `running_var`,
/// `num_batches_tracked`) are not parameters, so the key encoder keeps its own.
pub const BUFFER_SUFFIXES: [&str; 3] = ["running_mean", "running_var", "num_batches_tracked"];

/// `target = target * m + source * (1 - m)` for every float parameter of two modules of the same
/// type; buffers (see [`BUFFER_SUFFIXES`]) and integer/bool tensors are left untouched.
///
/// Parameters are matched by their module path (`layer1.0.conv1.weight`). The update runs as
/// tensor operations on the target's device (no copy to the host); the result is detached and
/// keeps the target's require-grad setting (a key encoder made with `.no_grad()` stays so).
/// `m = 0` copies the source, `m = 1` keeps the target. The arithmetic is PyTorch's:
/// `k * m + q * (1 - m)` in f32 with `1 - m` computed in f64.
///
/// # Errors
/// [`QueueError::Momentum`] unless `0 <= m <= 1`; [`QueueError::ModuleMismatch`] when the two
/// modules do not have the same parameter paths and shapes.
pub fn ema_update<M: Module>(target: M, source: &M, m: f64) -> Result<M> {
    ema_update_skipping(target, source, m, &BUFFER_SUFFIXES)
}

/// [`ema_update`] with an explicit list of path suffixes to leave untouched (e.g. add `"fc"` to
/// keep a head out of the average).
///
/// # Errors
/// As [`ema_update`].
pub fn ema_update_skipping<M: Module>(
    target: M,
    source: &M,
    m: f64,
    skip_suffixes: &[&str],
) -> Result<M> {
    let src = prepare(&target, source, m, skip_suffixes)?;
    Ok(apply(target, src, m, skip_suffixes))
}

/// [`ema_update`] that hands `target` back unchanged, together with the error, when the update
/// cannot be done: a caller that owns the target keeps it without holding a copy of it during
/// the update (a copy would share every tensor and make the in-place update copy them all).
///
/// # Errors
/// As [`ema_update`], boxed with the untouched target.
pub fn try_ema_update<M: Module>(
    target: M,
    source: &M,
    m: f64,
) -> std::result::Result<M, Box<(M, QueueError)>> {
    match prepare(&target, source, m, &BUFFER_SUFFIXES) {
        Ok(src) => Ok(apply(target, src, m, &BUFFER_SUFFIXES)),
        Err(e) => Err(Box::new((target, e))),
    }
}

/// Source tensors by path, after checking `m` and that the two modules match.
fn prepare<M: Module>(
    target: &M,
    source: &M,
    m: f64,
    skip_suffixes: &[&str],
) -> Result<HashMap<String, (Vec<usize>, Tensor<1>)>> {
    if !(0.0..=1.0).contains(&m) {
        return Err(QueueError::Momentum(m));
    }
    let mut src = Collect {
        skip: skip_suffixes,
        tensors: HashMap::new(),
        order: Vec::new(),
    };
    visit_named(source, &mut src);
    let mut tgt = Shapes {
        skip: skip_suffixes,
        shapes: Vec::new(),
    };
    visit_named(target, &mut tgt);

    let mut problems = Vec::new();
    for (path, shape) in &tgt.shapes {
        match src.tensors.get(path) {
            None => problems.push(format!("`{path}` missing in the source")),
            Some((s, _)) if s != shape => {
                problems.push(format!("`{path}`: source {s:?}, target {shape:?}"))
            }
            Some(_) => {}
        }
    }
    if src.order.len() != tgt.shapes.len() {
        let known: std::collections::HashSet<&String> = tgt.shapes.iter().map(|(p, _)| p).collect();
        for p in src.order.iter().filter(|p| !known.contains(p)) {
            problems.push(format!("`{p}` missing in the target"));
        }
    }
    if !problems.is_empty() {
        return Err(QueueError::ModuleMismatch(problems.join("; ")));
    }
    Ok(src.tensors)
}

fn apply<M: Module>(
    target: M,
    source: HashMap<String, (Vec<usize>, Tensor<1>)>,
    m: f64,
    skip_suffixes: &[&str],
) -> M {
    let mut mapper = Ema {
        skip: skip_suffixes,
        source,
        m: m as f32,
        one_minus_m: (1.0 - m) as f32,
    };
    map_named(target, &mut mapper)
}

/// `k * m + q * (1 - m)` for f32 tensors on the Flex CPU device (`k`, `q` on the plain device)
/// with two passes instead of three: `q * (1 - m)` is one tensor operation (its result, unlike
/// `q`, which belongs to the other module, can be read without a copy), then one pass updates
/// the target's values in place (taken out of their tensor without a copy when nothing else
/// holds them). The arithmetic is the tensor form's, element by element.
fn ema_host(k: Tensor<1>, q: Tensor<1>, m: f32, one_minus_m: f32) -> Tensor<1> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 15;

    let device = k.device();
    let mut k_data = k.into_data();
    let q_data = q.mul_scalar(one_minus_m).into_data();
    let (Ok(ks), Ok(qs)) = (k_data.as_mut_slice::<f32>(), q_data.as_slice::<f32>()) else {
        unreachable!("both tensors were checked to hold f32 values");
    };
    let kernel = |ks: &mut [f32], qs: &[f32]| {
        for (k, &q) in ks.iter_mut().zip(qs) {
            *k = *k * m + q;
        }
    };
    if ks.len() <= CHUNK {
        kernel(ks, qs);
    } else {
        ks.par_chunks_mut(CHUNK)
            .zip(qs.par_chunks(CHUNK))
            .for_each(|(k, q)| kernel(k, q));
    }
    Tensor::from_data(k_data, &device)
}

fn is_skipped(path: &str, skip: &[&str]) -> bool {
    skip.iter().any(|s| {
        path.strip_suffix(s)
            .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
    })
}

/// Source parameters, flattened, by path.
struct Collect<'a> {
    skip: &'a [&'a str],
    tensors: HashMap<String, (Vec<usize>, Tensor<1>)>,
    order: Vec<String>,
}

impl NamedVisitor for Collect<'_> {
    fn float<const D: usize>(&mut self, path: &TensorPath, param: &Param<Tensor<D>>) {
        let path = path.name();
        if is_skipped(&path, self.skip) {
            return;
        }
        let value = param.val().detach();
        let shape = value.dims().to_vec();
        self.order.push(path.clone());
        self.tensors.insert(path, (shape, value.reshape([-1])));
    }
}

/// Target parameter shapes, in visiting order.
struct Shapes<'a> {
    skip: &'a [&'a str],
    shapes: Vec<(String, Vec<usize>)>,
}

impl NamedVisitor for Shapes<'_> {
    fn float<const D: usize>(&mut self, path: &TensorPath, param: &Param<Tensor<D>>) {
        let path = path.name();
        if !is_skipped(&path, self.skip) {
            self.shapes.push((path, param.lazy_shape().to_vec()));
        }
    }
}

struct Ema<'a> {
    skip: &'a [&'a str],
    source: HashMap<String, (Vec<usize>, Tensor<1>)>,
    m: f32,
    one_minus_m: f32,
}

impl NamedMapper for Ema<'_> {
    fn float<const D: usize>(
        &mut self,
        path: &TensorPath,
        param: Param<Tensor<D>>,
    ) -> Param<Tensor<D>> {
        let path = path.name();
        if is_skipped(&path, self.skip) {
            return param;
        }
        let Some((_, src)) = self.source.remove(&path) else {
            return param;
        };
        let (m, one_minus_m) = (self.m, self.one_minus_m);
        param.map(|k| {
            let device = k.device();
            let src = if src.device() == device {
                src
            } else {
                src.to_device(&device)
            };
            let require_grad = k.is_require_grad();
            let host = src.dtype() == DType::F32
                && k.dtype() == DType::F32
                && src.device().inner() == Device::flex()
                && k.device().inner() == Device::flex();
            if host {
                let shape = k.shape();
                let autodiff = k.is_autodiff();
                let flat = ema_host(k.inner().reshape([-1]), src.inner(), m, one_minus_m);
                let out: Tensor<D> = flat.reshape(shape);
                let out = if autodiff {
                    Tensor::from_inner(out)
                } else {
                    out
                };
                return out.set_require_grad(require_grad);
            }
            let src: Tensor<D> = src.reshape(k.shape());
            k.detach()
                .mul_scalar(m)
                .add(src.mul_scalar(one_minus_m))
                .detach()
                .set_require_grad(require_grad)
        })
    }
}
