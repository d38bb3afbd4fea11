//! Plain MoCo InfoNCE: one positive key per query, negatives from a queue.

use burn::prelude::*;

use crate::core::{self, ContrastiveOutput, CoreArgs, Kernel};
use crate::error::{LossError, Result};
use crate::ops::check_temperature;

/// MoCo logits `cat([sum(q * k, 1), q @ queue], 1) / T`, shape `(N, 1 + K)`; the positive is
/// column 0. `q`, `k`: `(N, C)`; `queue`: `(C, K)`. Differentiable with respect to every input.
///
/// This materializes the `(N, 1 + K)` tensor, as MoCo's `einsum` + `cat` does; [`info_nce`]
/// computes the same loss without it.
///
/// # Errors
/// [`LossError::InvalidTemperature`] unless `t` is finite and > 0; [`LossError::Shape`] when the
/// shapes do not fit.
pub fn moco_logits(q: Tensor<2>, k: Tensor<2>, queue: Tensor<2>, t: f64) -> Result<Tensor<2>> {
    check_temperature(t)?;
    check_2d(&q, &k, &queue)?;
    let pos = q.clone().mul(k).sum_dim(1);
    let neg = q.matmul(queue);
    Ok(Tensor::cat(vec![pos, neg], 1).div_scalar(t))
}

fn check_2d(q: &Tensor<2>, k: &Tensor<2>, queue: &Tensor<2>) -> Result<()> {
    let [n, c] = q.dims();
    let [cq, kq] = queue.dims();
    if n == 0 || c == 0 || k.dims() != q.dims() || cq != c || kq == 0 {
        return Err(LossError::Shape(format!(
            "InfoNCE needs q (N, C), k (N, C), queue (C, K) with N, C, K > 0; got q {:?}, k {:?}, queue {:?}",
            q.dims(),
            k.dims(),
            queue.dims()
        )));
    }
    Ok(())
}

/// MoCo's InfoNCE loss: mean cross-entropy of [`moco_logits`] with label 0, computed without
/// materializing the logits (see the crate docs). `keys` in the output is `k` as `(N, 1, C)`,
/// ready for a one-scale queue.
///
/// # Errors
/// As [`moco_logits`].
pub fn info_nce(q: Tensor<2>, k: Tensor<2>, queue: Tensor<2>, t: f64) -> Result<ContrastiveOutput> {
    InfoNceLoss::new(t).forward(q, k, queue)
}

/// InfoNCE with its settings.
///
/// Defaults: temperature 0.07 (MoCo's `--moco-t` default; the MoCo v2 recipe uses 0.2),
/// no finiteness check.
#[derive(Debug, Clone, PartialEq)]
pub struct InfoNceLoss {
    /// Softmax temperature `T` (> 0).
    pub temperature: f64,
    /// Check `q`, `k` and the loss for NaN/inf and return [`LossError::NonFinite`]
    /// (costs a few device reads per call).
    pub check_finite: bool,
}

impl Default for InfoNceLoss {
    fn default() -> Self {
        Self {
            temperature: 0.07,
            check_finite: false,
        }
    }
}

impl InfoNceLoss {
    /// InfoNCE with temperature `t`.
    pub fn new(t: f64) -> Self {
        Self {
            temperature: t,
            ..Self::default()
        }
    }

    /// Sets the temperature.
    pub fn with_temperature(mut self, t: f64) -> Self {
        self.temperature = t;
        self
    }

    /// Turns the finiteness check on or off.
    pub fn with_check_finite(mut self, on: bool) -> Self {
        self.check_finite = on;
        self
    }

    /// The loss for `q`, `k` `(N, C)` (normalized; `q` may carry gradient, `k` is treated as a
    /// constant) and `queue` `(C, K)`.
    ///
    /// # Errors
    /// As [`moco_logits`]; [`LossError::NonFinite`] when the check is on and fails.
    pub fn forward(
        &self,
        q: Tensor<2>,
        k: Tensor<2>,
        queue: Tensor<2>,
    ) -> Result<ContrastiveOutput> {
        check_temperature(self.temperature)?;
        check_2d(&q, &k, &queue)?;
        core::contrastive(CoreArgs {
            q: q.unsqueeze_dim(1),
            k: k.unsqueeze_dim(1),
            queue: queue.unsqueeze_dim(0),
            mixing: None,
            weights: &[1.0],
            temperature: self.temperature,
            detach_hard_keys: false,
            check_finite: self.check_finite,
            kernel: Kernel::Auto,
        })
    }
}
