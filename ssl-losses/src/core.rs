//! The fused contrastive loss shared by InfoNCE and the MHCL hard-feature loss.
//!
//! For scale `s` with queries `Q_s` (N, C), positives `Kk_s` (N, C) and negatives
//! `queue_s` (C, K), the reference builds logits `cat([<Q_s, Kk_s>, Q_s @ queue_s]) / T`
//! (N, 1+K) and takes `CE(logits, 0)`. Here:
//!
//! * `1/T` is folded into the queries (`Qs = Q / T`), so one batched matmul over the scales
//!   gives the negative logits `L = Qs @ queue` (S, N, K) directly;
//! * a hard scale's mixed negatives `mu*L + (1-mu)*L[:, perm]` are a gather of the N x K logits
//!   (the reference builds a permuted copy of the C x K queue and then multiplies);
//! * the positive logit never joins the negatives in one (N, 1+K) tensor: each row's loss is
//!   `logsumexp([pos, neg]) - pos`, from the row max `m`, `sum exp(neg - m)` and `exp(pos - m)`;
//! * the gradient is written out (softmax minus one-hot, the transposed gather for the mixed
//!   negatives, one batched matmul back to the queries, the hard-positive terms through `qh` and
//!   `kh`) and attached to `q` through a surrogate `sum(q * dq)` whose value is subtracted again,
//!   so the returned loss has exactly the computed value and `d loss / d q = dq`. The big
//!   (S, N, K) tensors are never kept by an autodiff graph.
//!
//! Two implementations of the row-wise part (log-sum-exp, softmax, mixing and un-mixing):
//! burn tensor operations, in place where the backend allows (any device), and on the Flex CPU
//! device a fused kernel that handles one (scale, row) of K logits at a time while it sits in
//! cache, writing the gradient over the logits (see [`crate::cpu`]). Both give the same values.
//!
//! `k` and the queue are constants (no gradient), as in MoCo; `q` may come from any autodiff
//! graph and the gradient flows on into it.

use burn::prelude::*;
use burn::tensor::DType;

use crate::cpu;
use crate::error::{LossError, Result};
use crate::mixing::HardMixing;
use crate::ops::{accuracies_from_ranks, check_finite, read_error};

/// What every contrastive loss of this crate returns.
#[derive(Debug, Clone)]
pub struct ContrastiveOutput {
    /// The weighted total loss, shape `[1]`, differentiable with respect to `q` (on an autodiff
    /// device with a tracked `q`).
    pub loss: Tensor<1>,
    /// The loss of each scale, shape `[S_total]` (plain scales first, then hard scales), detached.
    pub per_scale: Tensor<1>,
    /// `(N, S_total, C)`, detached: the keys to enqueue (`k`, then the hard keys `kh`).
    pub keys: Tensor<3>,
    /// Top-1 accuracy in percent of the last plain scale (the one the reference prints).
    pub acc1: f32,
    /// Top-5 accuracy in percent of the last plain scale.
    pub acc5: f32,
}

/// Which implementation of the row-wise part runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernel {
    /// The fused CPU kernel when the tensors are on the Flex device, tensor operations elsewhere.
    #[default]
    Auto,
    /// burn tensor operations on every device (what GPU devices run).
    Tensor,
}

/// Inputs of the fused loss after validation.
pub(crate) struct CoreArgs<'a> {
    pub q: Tensor<3>,
    pub k: Tensor<3>,
    pub queue: Tensor<3>,
    pub mixing: Option<&'a HardMixing>,
    pub weights: &'a [f64],
    pub temperature: f64,
    pub detach_hard_keys: bool,
    pub check_finite: bool,
    pub kernel: Kernel,
}

/// Validated shapes: `(n, s, c, k)`; `s_total` is `s` or `2s` with hard scales.
pub(crate) fn validate_shapes(
    q: &Tensor<3>,
    k: &Tensor<3>,
    queue: &Tensor<3>,
    s_total: usize,
) -> Result<(usize, usize, usize, usize)> {
    let [n, s, c] = q.dims();
    if n == 0 || s == 0 || c == 0 {
        return Err(LossError::Shape(format!(
            "q must be (N > 0, S > 0, C > 0), got {:?}",
            q.dims()
        )));
    }
    if k.dims() != q.dims() {
        return Err(LossError::Shape(format!(
            "k {:?} must have the shape of q {:?}",
            k.dims(),
            q.dims()
        )));
    }
    let (dq, dk, dqueue) = (q.device(), k.device(), queue.device());
    if dq != dk || dq != dqueue {
        return Err(LossError::Config(format!(
            "q, k and queue must be on one device, got {dq:?}, {dk:?}, {dqueue:?}"
        )));
    }
    let [sq, cq, kq] = queue.dims();
    if sq != s_total || cq != c || kq == 0 {
        return Err(LossError::Shape(format!(
            "queue must be ({s_total}, {c}, K > 0) for q {:?}, got {:?}",
            q.dims(),
            queue.dims()
        )));
    }
    Ok((n, s, c, kq))
}

/// What the row-wise part hands back.
pub(crate) struct RowResult {
    /// Loss of each scale `[S_total]`.
    pub per_scale: Tensor<1>,
    /// For each row of the accuracy scale: how many negatives beat the positive.
    pub ranks: Vec<i64>,
    /// When gradients are requested: `d total / d L @ queue^T` `(S_total, N, C)` (the
    /// negatives' part of the gradient with respect to `Qs`) and `d total / d pos`
    /// `(S_total, N, 1)`.
    pub grads: Option<(Tensor<3>, Tensor<3>)>,
}

/// Per-step constants of the hard scales.
pub(crate) struct HardParams<'a> {
    pub mu: &'a [f32],
    pub perm: &'a [usize],
    pub inv: Vec<usize>,
}

/// Everything the row-wise implementations need.
pub(crate) struct RowArgs<'a> {
    /// Queries in logit units, scales first `(S_total, N, C)`.
    pub qs: Tensor<3>,
    /// `(S_total, C, K)`.
    pub queue: Tensor<3>,
    /// Positive logits `(S_total, N, 1)`.
    pub pos: Tensor<3>,
    /// `w_s / N` per scale.
    pub coef: Vec<f32>,
    /// Number of plain scales.
    pub s: usize,
    pub hard: Option<HardParams<'a>>,
    pub want_grad: bool,
}

fn floats_3d(values: &[f32], shape: [usize; 3], device: &Device) -> Tensor<3> {
    Tensor::<1>::from_floats(values, device).reshape(shape)
}

fn index_tensor(values: &[usize], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = values.iter().map(|&x| x as i64).collect();
    Tensor::<1, Int>::from_data(TensorData::new(v, [values.len()]), device)
}

/// Gathers columns of a `(G, N, K)` tensor: `out[.., .., j] = x[.., .., idx[j]]`.
fn gather_columns(x: Tensor<3>, idx: Tensor<1, Int>) -> Tensor<3> {
    let [g, n, k] = x.dims();
    // The 2-D form hits the backend's row-wise gather.
    x.reshape([g * n, k]).select(1, idx).reshape([g, n, k])
}

/// The hard scales' mixing values as tensors: `mu`, `1 - mu` `(S, 1, 1)`, the permutation and
/// its inverse.
struct MixTensors {
    mu: Tensor<3>,
    omm: Tensor<3>,
    perm: Tensor<1, Int>,
    inv: Tensor<1, Int>,
}

/// One group's per-scale loss, accuracy ranks (plain group) and gradient parts.
type GroupResult = (Tensor<1>, Option<Vec<i64>>, Option<(Tensor<3>, Tensor<3>)>);

/// Row-wise part with burn tensor operations: one group of scales `(G, N, K)` at a time.
pub(crate) fn rows_with_tensors(args: RowArgs<'_>) -> Result<RowResult> {
    let RowArgs {
        qs,
        queue,
        pos,
        coef,
        s,
        hard,
        want_grad,
    } = args;
    let dev = qs.device();
    let [_, n, _] = qs.dims();
    let kq = queue.dims()[2];

    let group = |start: usize, len: usize, mix: Option<&MixTensors>| -> Result<GroupResult> {
        let queue = queue.clone().narrow(0, start, len);
        let neg = qs.clone().narrow(0, start, len).matmul(queue.clone());
        let pos = pos.clone().narrow(0, start, len);
        let ranks = if mix.is_none() {
            let last = neg.clone().narrow(0, len - 1, 1);
            let p = pos.clone().narrow(0, len - 1, 1);
            let r = last.greater(p.expand([1, n, kq])).int().sum_dim(2);
            Some(
                r.try_to_vec_as::<i64>()
                    .map_err(|e| read_error("accuracy counts", e))?,
            )
        } else {
            None
        };
        let neg = match mix {
            Some(mx) => {
                let permuted = gather_columns(neg.clone(), mx.perm.clone());
                neg.mul(mx.mu.clone()).add(permuted.mul(mx.omm.clone()))
            }
            None => neg,
        };
        let coef = floats_3d(&coef[start..start + len], [len, 1, 1], &dev);
        // Row max over [pos, neg] for a stable log-sum-exp.
        let m = neg.clone().max_dim(2).max_pair(pos.clone());
        let e = neg.sub(m.clone()).exp();
        let e_pos = pos.clone().sub(m.clone()).exp();
        let sum = e.clone().sum_dim(2).add(e_pos.clone());
        // loss of a row = logsumexp - pos = m + ln(sum) - pos
        let per_scale = m.add(sum.clone().log()).sub(pos).mean_dim(1).reshape([len]);
        let grad = if want_grad {
            // d total / d logits = (w_s / N) * (softmax - onehot(0)).
            let dneg = e.mul(coef.clone().div(sum.clone()));
            let dpos = e_pos.div(sum).sub_scalar(1.0).mul(coef);
            let dl = match mix {
                // Un-mix: d/dL[:, j] = mu * dM[:, j] + (1 - mu) * dM[:, inv[j]].
                Some(mx) => {
                    let back = gather_columns(dneg.clone(), mx.inv.clone());
                    dneg.mul(mx.mu.clone()).add(back.mul(mx.omm.clone()))
                }
                None => dneg,
            };
            Some((dl.matmul(queue.swap_dims(1, 2)), dpos))
        } else {
            None
        };
        Ok((per_scale, ranks, grad))
    };

    let (plain_loss, ranks, plain_grad) = group(0, s, None)?;
    let mut grads: Vec<(Tensor<3>, Tensor<3>)> = plain_grad.into_iter().collect();
    let per_scale = match &hard {
        Some(h) => {
            let mu = floats_3d(h.mu, [s, 1, 1], &dev);
            let omm: Vec<f32> = h.mu.iter().map(|m| 1.0 - m).collect();
            let omm = floats_3d(&omm, [s, 1, 1], &dev);
            let mix = MixTensors {
                mu,
                omm,
                perm: index_tensor(h.perm, &dev),
                inv: index_tensor(&h.inv, &dev),
            };
            let (hard_loss, _, hard_grad) = group(s, s, Some(&mix))?;
            grads.extend(hard_grad);
            Tensor::cat(vec![plain_loss, hard_loss], 0)
        }
        None => plain_loss,
    };
    let grads = (!grads.is_empty()).then(|| {
        let (d_neg, d_pos): (Vec<_>, Vec<_>) = grads.into_iter().unzip();
        (Tensor::cat(d_neg, 0), Tensor::cat(d_pos, 0))
    });
    Ok(RowResult {
        per_scale,
        ranks: ranks.unwrap_or_default(),
        grads,
    })
}

/// The fused loss. Shapes must have been validated with [`validate_shapes`]; `mixing` is `Some`
/// exactly when there are hard scales, already validated against `(S, K)`.
pub(crate) fn contrastive(args: CoreArgs<'_>) -> Result<ContrastiveOutput> {
    let CoreArgs {
        q,
        k,
        queue,
        mixing,
        weights,
        temperature,
        detach_hard_keys,
        check_finite: check,
        kernel,
    } = args;
    if check {
        check_finite(&q, "q")?;
        check_finite(&k, "k")?;
    }
    let [n, s, _] = q.dims();
    let hard = mixing.is_some();
    let s_total = if hard { 2 * s } else { s };
    debug_assert_eq!(weights.len(), s_total);

    let want_grad = q.is_tracked();
    let autodiff = q.is_autodiff();
    let qi = q.clone().inner();
    let ki = k.inner();
    let queue = queue.inner();
    let dev = qi.device();
    let inv_t = 1.0 / temperature;

    // Hard positives (not re-normalized), built from the q that carries the gradient.
    let lam_terms = mixing.map(|mx| {
        let lam = floats_3d(&mx.lam, [1, s, 1], &dev);
        let one_minus: Vec<f32> = mx.lam.iter().map(|l| 1.0 - l).collect();
        (lam, floats_3d(&one_minus, [1, s, 1], &dev))
    });
    let (q_all, k_all) = match &lam_terms {
        Some((lam, oml)) => {
            let qh = qi.clone().mul(lam.clone()).add(ki.clone().mul(oml.clone()));
            let kh = ki.clone().mul(lam.clone()).add(qi.clone().mul(oml.clone()));
            (
                Tensor::cat(vec![qi.clone(), qh], 1),
                Tensor::cat(vec![ki.clone(), kh], 1),
            )
        }
        None => (qi.clone(), ki.clone()),
    };

    // Queries in logit units, scales first: (S_total, N, C).
    let qs = q_all.mul_scalar(inv_t).swap_dims(0, 1);
    let ks_t = k_all.clone().swap_dims(0, 1);
    let pos = qs.clone().mul(ks_t.clone()).sum_dim(2); // (S_total, N, 1)
    let coef: Vec<f32> = weights.iter().map(|w| (w / n as f64) as f32).collect();

    let row_args = RowArgs {
        qs: qs.clone(),
        queue: queue.clone(),
        pos,
        coef,
        s,
        hard: mixing.map(|mx| HardParams {
            mu: &mx.mu,
            perm: &mx.perm,
            inv: mx.inverse_perm(),
        }),
        want_grad,
    };
    let fused = kernel == Kernel::Auto
        && dev == Device::flex()
        && qs.dtype() == DType::F32
        && queue.dtype() == DType::F32;
    let rows = if fused {
        cpu::rows_fused(row_args)?
    } else {
        rows_with_tensors(row_args)?
    };
    let acc = accuracies_from_ranks(&rows.ranks, &[1, 5]);
    let per_scale = rows.per_scale;
    let w: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
    let total = per_scale
        .clone()
        .mul(Tensor::<1>::from_floats(w.as_slice(), &dev))
        .sum();
    if check {
        check_finite(&per_scale, "per-scale losses")?;
    }

    // Gradient with respect to q, attached through a zero-valued surrogate.
    let loss = if want_grad {
        // d total / d Qs = dL @ queue^T + dpos * Kk.
        let (d_neg, d_pos) = rows.grads.expect("gradients were requested");
        let d_qs = d_neg.add(d_pos.clone().mul(ks_t)); // (S_total, N, C)
        let d_q_all = d_qs.mul_scalar(inv_t).swap_dims(0, 1); // (N, S_total, C) w.r.t. [q, qh]
        let dq = match &lam_terms {
            Some((lam, oml)) => {
                let mut dq = d_q_all
                    .clone()
                    .narrow(1, 0, s)
                    .add(d_q_all.narrow(1, s, s).mul(lam.clone()));
                if !detach_hard_keys {
                    // pos = <Qs, Kh> for the hard scales: d/dKh = dpos * Qs; kh = lam*k + (1-lam)*q.
                    let d_pos = d_pos.narrow(0, s, s);
                    let d_kh = d_pos.mul(qs.narrow(0, s, s)).swap_dims(0, 1);
                    dq = dq.add(d_kh.mul(oml.clone()));
                }
                dq
            }
            None => d_q_all,
        };
        let surrogate = q.mul(dq).sum();
        let zero = surrogate.clone().sub(surrogate.detach());
        Tensor::from_inner(total).add(zero)
    } else if autodiff {
        Tensor::from_inner(total)
    } else {
        total
    };

    let (per_scale, keys) = if autodiff {
        (Tensor::from_inner(per_scale), Tensor::from_inner(k_all))
    } else {
        (per_scale, k_all)
    };
    Ok(ContrastiveOutput {
        loss,
        per_scale,
        keys,
        acc1: acc[0],
        acc5: acc[1],
    })
}
