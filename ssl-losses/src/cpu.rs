//! The fused row kernel for the Flex CPU device.
//!
//! Per scale, a block of query rows goes through the matmul `L = Qs @ queue` `(1, rows, K)`,
//! then each row of K logits (one scale, one query) is handled by one task while it sits in
//! cache (K = 65536 floats = 256 KiB), then (for the gradient) the block goes through the matmul
//! back to the queries `dL @ queue^T`:
//!
//! * plain scale: row max (with the positive), `sum exp(x - m)`, the loss `m + ln(sum) - pos`,
//!   the rank of the positive for the accuracy, and, for the gradient, `(w/N) * softmax`
//!   written over the logits;
//! * hard scale: the mixed row `mu*x + (1-mu)*x[perm]` into a per-thread buffer, the same
//!   log-sum-exp, and the un-mixed gradient `mu*g + (1-mu)*g[inv]` written over the logits.
//!
//! `exp` is a branch-free polynomial (Cephes' `expf`, about 2 ulp) so the loops vectorize; the
//! row functions are compiled a second time for AVX2 + FMA and picked at run time. Sums are
//! accumulated in f64. The tensor operations around it (both matmuls) stay in burn; the
//! logits buffer is borrowed from the Flex tensor and handed back without a copy.

use burn::prelude::*;
use rayon::prelude::*;

use crate::core::{RowArgs, RowResult};
use crate::error::Result;
use crate::ops::read_error;

/// Per-row results.
#[derive(Clone, Copy, Default)]
struct RowOut {
    loss: f64,
    dpos: f32,
    rank: i64,
}

/// Per-call constants shared by all rows.
struct Shared<'a> {
    n: usize,
    s: usize,
    coef: &'a [f32],
    pos: &'a [f32],
    mu: &'a [f32],
    perm: &'a [usize],
    inv: &'a [usize],
    rank_scale: usize,
    want_grad: bool,
    avx2: bool,
}

/// `exp(x)` for `x <= 0` to about 2 ulp (Cephes' `expf`: `2^n * p(r)`, `r = x - n ln 2`),
/// written without calls or branches so that loops over it vectorize. Inputs below -87.3
/// (where `exp` underflows) give about 1e-38 instead of 0 or a subnormal; NaN stays NaN.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    const LO: f32 = -87.336_55;
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = if x < LO { LO } else { x };
    let t = x * LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * (r * r) + r + 1.0;
    let k = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    y * f32::from_bits((k.wrapping_add(127) << 23) as u32)
}

const LANES: usize = 16;

/// Max of the row and `pos` (NaN entries are skipped here; they turn the sum into NaN later).
#[inline(always)]
fn row_max(x: &[f32], pos: f32) -> f32 {
    let mut acc = [pos; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    let mut m = pos;
    for &v in acc.iter().chain(chunks.remainder()) {
        m = if v > m { v } else { m };
    }
    m
}

/// Number of entries strictly greater than `pos`.
#[inline(always)]
fn count_above(x: &[f32], pos: f32) -> i64 {
    let mut acc = [0u32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += u32::from(v > pos);
        }
    }
    let tail = chunks.remainder().iter().filter(|&&v| v > pos).count();
    acc.iter().map(|&a| i64::from(a)).sum::<i64>() + tail as i64
}

/// `exp(x - m)` summed in f64; written over `x` when `write`.
#[inline(always)]
fn exp_sum(x: &mut [f32], m: f32, write: bool) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c.iter_mut()) {
            let e = exp_neg(*v - m);
            if write {
                *v = e;
            }
            *a += f64::from(e);
        }
    }
    let mut sum = acc.iter().sum::<f64>();
    for v in chunks.into_remainder() {
        let e = exp_neg(*v - m);
        if write {
            *v = e;
        }
        sum += f64::from(e);
    }
    sum
}

#[inline(always)]
fn plain_row_impl(x: &mut [f32], row: usize, sh: &Shared<'_>) -> RowOut {
    let scale = row / sh.n;
    let pos = sh.pos[row];
    let m = row_max(x, pos);
    let rank = if scale == sh.rank_scale {
        count_above(x, pos)
    } else {
        0
    };
    let e_pos = exp_neg(pos - m);
    let sum = exp_sum(x, m, sh.want_grad) + f64::from(e_pos);
    let loss = f64::from(m) + sum.ln() - f64::from(pos);
    let coef = f64::from(sh.coef[scale]);
    let mut dpos = 0.0;
    if sh.want_grad {
        let f = (coef / sum) as f32;
        for v in x.iter_mut() {
            *v *= f;
        }
        dpos = (coef * (f64::from(e_pos) / sum - 1.0)) as f32;
    }
    RowOut { loss, dpos, rank }
}

#[inline(always)]
fn hard_row_impl(x: &mut [f32], buf: &mut [f32], row: usize, sh: &Shared<'_>) -> RowOut {
    let scale = row / sh.n;
    let h = scale - sh.s;
    let (mu, omm) = (sh.mu[h], 1.0 - sh.mu[h]);
    let pos = sh.pos[row];
    // Mixed negatives mu*x + (1-mu)*x[perm] (the reference's mixed queue, times q).
    for ((b, &v), &p) in buf.iter_mut().zip(x.iter()).zip(sh.perm) {
        *b = mu * v + omm * x[p];
    }
    let m = row_max(buf, pos);
    let e_pos = exp_neg(pos - m);
    let sum = exp_sum(buf, m, true) + f64::from(e_pos);
    let loss = f64::from(m) + sum.ln() - f64::from(pos);
    let coef = f64::from(sh.coef[scale]);
    let mut dpos = 0.0;
    if sh.want_grad {
        // g = coef * softmax; d/dL[j] = mu*g[j] + (1-mu)*g[inv[j]].
        let f = (coef / sum) as f32;
        let (a, b) = (mu * f, omm * f);
        for ((v, &e), &i) in x.iter_mut().zip(buf.iter()).zip(sh.inv) {
            *v = a * e + b * buf[i];
        }
        dpos = (coef * (f64::from(e_pos) / sum - 1.0)) as f32;
    }
    RowOut {
        loss,
        dpos,
        rank: 0,
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn plain_row_avx2(x: &mut [f32], row: usize, sh: &Shared<'_>) -> RowOut {
    plain_row_impl(x, row, sh)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn hard_row_avx2(x: &mut [f32], buf: &mut [f32], row: usize, sh: &Shared<'_>) -> RowOut {
    hard_row_impl(x, buf, row, sh)
}

fn plain_row(x: &mut [f32], row: usize, sh: &Shared<'_>) -> RowOut {
    #[cfg(target_arch = "x86_64")]
    if sh.avx2 {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time when `avx2` was set).
        return unsafe { plain_row_avx2(x, row, sh) };
    }
    plain_row_impl(x, row, sh)
}

fn hard_row(x: &mut [f32], buf: &mut [f32], row: usize, sh: &Shared<'_>) -> RowOut {
    #[cfg(target_arch = "x86_64")]
    if sh.avx2 {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time when `avx2` was set).
        return unsafe { hard_row_avx2(x, buf, row, sh) };
    }
    hard_row_impl(x, buf, row, sh)
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Largest logits block computed at once. Blocks below glibc's largest mmap threshold (32 MiB)
/// are recycled by the allocator from one block to the next instead of being mapped and
/// page-faulted afresh, which on a 2-core machine costs as much as the row kernels.
const BLOCK_BYTES: usize = 16 << 20;

/// Rows of K logits per block: a multiple of 16 (the matmul kernels' row tile) where possible.
fn block_rows(n: usize, k: usize, block_bytes: usize) -> usize {
    let rows = (block_bytes / (4 * k.max(1))).max(1);
    let rows = if rows >= 16 { rows / 16 * 16 } else { rows };
    rows.min(n).max(1)
}

/// The row-wise part on the Flex device (see the module docs): per scale, blocks of query rows
/// go through matmul, the row kernel and (for the gradient) the matmul back to the queries.
pub(crate) fn rows_fused(args: RowArgs<'_>) -> Result<RowResult> {
    rows_fused_blocked(args, BLOCK_BYTES)
}

fn rows_fused_blocked(args: RowArgs<'_>, block_bytes: usize) -> Result<RowResult> {
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
    let [s_total, n, _] = qs.dims();
    let kq = queue.dims()[2];
    let pos: Vec<f32> = pos
        .try_to_vec_as::<f32>()
        .map_err(|e| read_error("positive logits", e))?;
    let (mu, perm, inv): (&[f32], &[usize], &[usize]) = match &hard {
        Some(h) => (h.mu, h.perm, &h.inv),
        None => (&[], &[], &[]),
    };
    let shared = Shared {
        n,
        s,
        coef: &coef,
        pos: &pos,
        mu,
        perm,
        inv,
        rank_scale: s - 1,
        want_grad,
        avx2: has_avx2(),
    };
    let rows = block_rows(n, kq, block_bytes);
    let mut mixed = if hard.is_some() {
        vec![0f32; rows * kq]
    } else {
        Vec::new()
    };
    let mut out = vec![RowOut::default(); s_total * n];
    let mut d_neg = Vec::with_capacity(s_total);
    for scale in 0..s_total {
        let queue_s = queue.clone().narrow(0, scale, 1); // (1, C, K)
        let qs_s = qs.clone().narrow(0, scale, 1); // (1, N, C)
        let mut d_blocks = Vec::new();
        for r0 in (0..n).step_by(rows) {
            let nr = rows.min(n - r0);
            let logits = qs_s.clone().narrow(1, r0, nr).matmul(queue_s.clone()); // (1, nr, K)
            let mut data = logits
                .try_into_data()
                .map_err(|e| read_error("logits", e))?;
            let values = data
                .as_mut_slice::<f32>()
                .map_err(|e| read_error("logits", e))?;
            let first = scale * n + r0;
            let block_out: Vec<RowOut> = if scale < s {
                values
                    .par_chunks_mut(kq)
                    .enumerate()
                    .map(|(i, x)| plain_row(x, first + i, &shared))
                    .collect()
            } else {
                values
                    .par_chunks_mut(kq)
                    .zip(mixed.par_chunks_mut(kq))
                    .enumerate()
                    .map(|(i, (x, buf))| hard_row(x, buf, first + i, &shared))
                    .collect()
            };
            out[first..first + nr].copy_from_slice(&block_out);
            if want_grad {
                let dl = Tensor::<3>::from_data(data, &dev);
                d_blocks.push(dl.matmul(queue_s.clone().swap_dims(1, 2))); // (1, nr, C)
            }
        }
        if want_grad {
            d_neg.push(Tensor::cat(d_blocks, 1));
        }
    }

    let per_scale: Vec<f32> = out
        .chunks(n)
        .map(|rows| (rows.iter().map(|r| r.loss).sum::<f64>() / n as f64) as f32)
        .collect();
    let ranks = out[(s - 1) * n..s * n].iter().map(|r| r.rank).collect();
    let grads = want_grad.then(|| {
        let dpos: Vec<f32> = out.iter().map(|r| r.dpos).collect();
        (
            Tensor::cat(d_neg, 0),
            Tensor::<1>::from_floats(dpos.as_slice(), &dev).reshape([s_total, n, 1]),
        )
    });
    Ok(RowResult {
        per_scale: Tensor::<1>::from_floats(per_scale.as_slice(), &dev),
        ranks,
        grads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_neg_is_within_a_few_ulp_of_exp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp_neg(x));
            worst = worst.max(((got - want) / want).abs());
            x += 0.000_731;
        }
        assert!(worst < 3.0e-7, "max relative error {worst:e}");
        assert_eq!(exp_neg(0.0), 1.0);
    }

    #[test]
    fn exp_neg_keeps_nan_and_underflows_to_tiny() {
        assert!(exp_neg(f32::NAN).is_nan());
        let tiny = exp_neg(-1000.0);
        assert!((0.0..1e-37).contains(&tiny));
        assert_eq!(exp_neg(f32::NEG_INFINITY), tiny);
    }

    #[test]
    fn blocks_give_the_tensor_results() {
        use crate::core::{HardParams, rows_with_tensors};
        use burn::tensor::Distribution;
        let dev = Device::flex();
        let (s, n, c, k) = (2, 21, 5, 48);
        let qs = Tensor::<3>::random([2 * s, n, c], Distribution::Normal(0.0, 2.0), &dev);
        let queue = Tensor::<3>::random([2 * s, c, k], Distribution::Normal(0.0, 1.0), &dev);
        let pos = Tensor::<3>::random([2 * s, n, 1], Distribution::Normal(0.0, 2.0), &dev);
        let mu = [0.3f32, 0.8];
        let perm: Vec<usize> = (0..k).map(|j| (j * 7 + 3) % k).collect();
        let mut inv = vec![0; k];
        for (j, &p) in perm.iter().enumerate() {
            inv[p] = j;
        }
        let args = || RowArgs {
            qs: qs.clone(),
            queue: queue.clone(),
            pos: pos.clone(),
            coef: vec![0.1, 0.7, 0.05, 0.2],
            s,
            hard: Some(HardParams {
                mu: &mu,
                perm: &perm,
                inv: inv.clone(),
            }),
            want_grad: true,
        };
        let want = rows_with_tensors(args()).unwrap();
        // 4 rows of K floats per block: 21 rows = 5 full blocks + 1.
        let got = rows_fused_blocked(args(), 4 * 4 * k).unwrap();
        let close = |a: Tensor<3>, b: Tensor<3>| {
            let d = a.sub(b).abs().max().into_scalar::<f32>();
            assert!(d < 1e-5, "max difference {d}");
        };
        close(
            got.per_scale.clone().reshape([2 * s, 1, 1]),
            want.per_scale.reshape([2 * s, 1, 1]),
        );
        assert_eq!(got.ranks, want.ranks);
        let (gd, gp) = got.grads.unwrap();
        let (wd, wp) = want.grads.unwrap();
        close(gd, wd);
        close(gp, wp);
    }

    #[test]
    fn block_rows_prefers_multiples_of_16() {
        assert_eq!(block_rows(128, 65536, BLOCK_BYTES), 64);
        assert_eq!(block_rows(8, 64, BLOCK_BYTES), 8);
        assert_eq!(block_rows(100, 1 << 30, BLOCK_BYTES), 1);
        assert_eq!(block_rows(100, 1000, 4 * 1000 * 40), 32);
    }

    #[test]
    fn row_helpers_match_plain_loops() {
        let x: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let pos = 1.5;
        let m = x.iter().copied().fold(pos, f32::max);
        assert_eq!(row_max(&x, pos), m);
        assert_eq!(
            count_above(&x, pos),
            x.iter().filter(|&&v| v > pos).count() as i64
        );
        let mut y = x.clone();
        let sum = exp_sum(&mut y, m, true);
        let want: f64 = x.iter().map(|&v| (f64::from(v) - f64::from(m)).exp()).sum();
        assert!((sum - want).abs() < 1e-6 * want);
        assert!((f64::from(y[3]) - (f64::from(x[3]) - f64::from(m)).exp()).abs() < 1e-7);
    }
}
