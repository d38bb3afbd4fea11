//! Small tensor helpers shared by the losses and the linear probe: L2 normalization,
//! cross-entropy, top-k accuracy and the finiteness check.

use burn::prelude::*;
use burn::tensor::activation;

use crate::error::{LossError, Result};

/// The `eps` of `torch.nn.functional.normalize`: norms below it are clamped to it.
pub const NORMALIZE_EPS: f64 = 1e-12;

/// L2-normalizes `x` along `dim`: `x / max(||x||_2, 1e-12)`.
///
/// Same formula and clamp as PyTorch's `F.normalize(x, dim=dim)` (p = 2, eps = 1e-12), so a zero
/// vector stays zero instead of becoming NaN. Differentiable; the gradient is PyTorch's.
///
/// # Errors
/// [`LossError::Config`] when `dim >= D`.
pub fn normalize<const D: usize>(x: Tensor<D>, dim: usize) -> Result<Tensor<D>> {
    if dim >= D {
        return Err(LossError::Config(format!(
            "normalize: dim {dim} out of range for a tensor of rank {D}"
        )));
    }
    let norm = x
        .clone()
        .mul(x.clone())
        .sum_dim(dim)
        .sqrt()
        .clamp_min(NORMALIZE_EPS);
    Ok(x.div(norm))
}

/// Returns an error when `tensor` holds a NaN or an infinity.
///
/// This reads one boolean back from the device (a synchronization point), which is why the losses
/// only call it when their `check_finite` option is on. `what` names the tensor in the error.
///
/// # Errors
/// [`LossError::NonFinite`] naming `what`; [`LossError::Read`] if the device read fails.
pub fn check_finite<const D: usize>(tensor: &Tensor<D>, what: &str) -> Result<()> {
    let finite = tensor
        .clone()
        .inner()
        .is_finite()
        .all()
        .try_into_scalar::<bool>()
        .map_err(|e| read_error(what, e))?;
    if finite {
        Ok(())
    } else {
        Err(LossError::NonFinite(what.to_string()))
    }
}

/// Mean cross-entropy of `logits` (N, classes) against class indices `targets` (N), as
/// `torch.nn.functional.cross_entropy(logits, targets)` with its defaults (mean reduction, no
/// label smoothing, no class weights). Returns shape `[1]`; differentiable with respect to the
/// logits (gradient `(softmax - onehot) / N`).
///
/// The targets are read back to validate them (one small synchronization).
///
/// # Errors
/// [`LossError::Shape`] when N differs or is zero, or there are no classes;
/// [`LossError::Target`] for a target outside `0..classes`.
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Result<Tensor<1>> {
    let [n, classes] = logits.dims();
    validate_targets(n, classes, &targets)?;
    let log_p = activation::log_softmax(logits, 1);
    let picked = log_p.gather(1, targets.reshape([n, 1]));
    Ok(picked.mean().neg())
}

/// Top-k accuracies in percent, one per entry of `ks`: the share of rows whose target's logit is
/// among the row's `k` largest, times 100 (MoCo's `accuracy()` helper).
///
/// A row counts as a hit for `k` when fewer than `k` logits are strictly greater than the target's
/// logit (ties go to the target; `torch.topk` leaves tie order unspecified). A `k` larger than
/// the number of classes counts every row, as MoCo's `min(maxk, classes)` does.
///
/// # Errors
/// [`LossError::Config`] for an empty `ks` or a zero `k`; shape and target errors as in
/// [`cross_entropy`].
pub fn topk_accuracy(logits: Tensor<2>, targets: Tensor<1, Int>, ks: &[usize]) -> Result<Vec<f32>> {
    if ks.is_empty() || ks.contains(&0) {
        return Err(LossError::Config(format!(
            "topk_accuracy: ks must be non-empty and every k >= 1, got {ks:?}"
        )));
    }
    let [n, classes] = logits.dims();
    validate_targets(n, classes, &targets)?;
    let logits = logits.inner();
    let targets = targets.inner();
    let target_logit = logits.clone().gather(1, targets.reshape([n, 1]));
    let above = logits
        .greater(target_logit.expand([n, classes]))
        .int()
        .sum_dim(1);
    let above: Vec<i64> = above
        .try_to_vec_as::<i64>()
        .map_err(|e| read_error("accuracy counts", e))?;
    Ok(accuracies_from_ranks(&above, ks))
}

/// Percentages of rows whose rank (number of strictly larger logits) is below each k.
pub(crate) fn accuracies_from_ranks(ranks: &[i64], ks: &[usize]) -> Vec<f32> {
    let n = ranks.len().max(1);
    let scale = (100.0 / n as f64) as f32;
    ks.iter()
        .map(|&k| {
            let hits = ranks.iter().filter(|&&r| r < k as i64).count();
            hits as f32 * scale
        })
        .collect()
}

fn validate_targets(n: usize, classes: usize, targets: &Tensor<1, Int>) -> Result<()> {
    let [nt] = targets.dims();
    if n == 0 || classes == 0 {
        return Err(LossError::Shape(format!(
            "logits must be (N > 0, classes > 0), got ({n}, {classes})"
        )));
    }
    if nt != n {
        return Err(LossError::Shape(format!(
            "{nt} targets for {n} rows of logits"
        )));
    }
    let values: Vec<i64> = targets
        .clone()
        .inner()
        .try_to_vec_as::<i64>()
        .map_err(|e| read_error("targets", e))?;
    for (row, &t) in values.iter().enumerate() {
        if t < 0 || t as u64 >= classes as u64 {
            return Err(LossError::Target {
                row,
                target: t,
                classes,
            });
        }
    }
    Ok(())
}

pub(crate) fn read_error(what: &str, e: impl std::fmt::Debug) -> LossError {
    LossError::Read {
        what: what.to_string(),
        msg: format!("{e:?}"),
    }
}

/// Checks a temperature: finite and > 0.
pub(crate) fn check_temperature(t: f64) -> Result<()> {
    if t.is_finite() && t > 0.0 {
        Ok(())
    } else {
        Err(LossError::InvalidTemperature(t))
    }
}
