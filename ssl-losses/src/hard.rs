//! The MHCL multiscale hard-feature loss.

use std::sync::Mutex;

use burn::prelude::*;
use burn::tensor::activation;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::core::{self, ContrastiveOutput, CoreArgs, Kernel, validate_shapes};
use crate::error::{LossError, Result};
use crate::mixing::{HardMixing, beta_distribution};
use crate::ops::check_temperature;

/// Weights of MHCL's 8 scales: layer1..layer4, then the four hard scales (the reference's
/// `MHCL_WEIGHTS`).
pub const MHCL_WEIGHTS: [f64; 8] = [0.1, 0.4, 0.7, 1.0, 0.01, 0.04, 0.07, 0.1];

/// Settings of [`HardFeatureLoss`].
///
/// Defaults are the reference's (`MHCL(...)` in `mhcl_ref.py`): temperature 0.07, Beta(1, 1),
/// hard scales on, gradient through the hard keys kept, weights [`MHCL_WEIGHTS`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HardFeatureLossConfig {
    /// Softmax temperature `T` (> 0). The reference's default is 0.07 (MoCo's); MoCo v2
    /// recipes use 0.2.
    pub temperature: f64,
    /// One weight per scale (plain scales first, then hard ones). `None` picks the default for
    /// the input: [`MHCL_WEIGHTS`] for 4 plain + 4 hard scales, `[1.0]` for a single plain scale
    /// (MoCo v2); any other number of scales needs explicit weights.
    pub weights: Option<Vec<f64>>,
    /// First Beta parameter of the λ and μ draws (> 0).
    pub beta_a: f64,
    /// Second Beta parameter of the λ and μ draws (> 0).
    pub beta_b: f64,
    /// Add the hard scales (MHCL). Off, or with a single plain scale, the loss is the plain
    /// multiscale InfoNCE and the queue holds `S` scales instead of `2S`.
    pub hard: bool,
    /// Stop the gradient through the hard keys `kh = lam*k + (1-lam)*q`. Off by default: the
    /// reference writes `kh` into `k` in place, so its gradient reaches `q` through `kh` as well.
    pub detach_hard_keys: bool,
    /// Check `q`, `k` and the per-scale losses for NaN/inf and return
    /// [`LossError::NonFinite`] (a few extra device reads per step).
    pub check_finite: bool,
    /// Seed of the loss's own RNG, used when [`HardFeatureLoss::forward`] gets no mixing values.
    pub seed: u64,
    /// Which implementation computes the row-wise part (same values either way):
    /// [`Kernel::Auto`] uses the fused CPU kernel on the Flex device.
    pub kernel: Kernel,
}

impl Default for HardFeatureLossConfig {
    fn default() -> Self {
        Self {
            temperature: 0.07,
            weights: None,
            beta_a: 1.0,
            beta_b: 1.0,
            hard: true,
            detach_hard_keys: false,
            check_finite: false,
            seed: 0,
            kernel: Kernel::Auto,
        }
    }
}

impl HardFeatureLossConfig {
    /// The MHCL defaults (same as `default()`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Plain MoCo v2: one scale, no hard scales, temperature 0.2 (MoCo v2's `--moco-t 0.2`).
    pub fn moco_v2() -> Self {
        Self {
            temperature: 0.2,
            hard: false,
            ..Self::default()
        }
    }

    /// Sets the temperature.
    pub fn with_temperature(mut self, t: f64) -> Self {
        self.temperature = t;
        self
    }

    /// Sets explicit per-scale weights.
    pub fn with_weights(mut self, weights: Vec<f64>) -> Self {
        self.weights = Some(weights);
        self
    }

    /// Sets the Beta parameters of the λ and μ draws.
    pub fn with_beta(mut self, a: f64, b: f64) -> Self {
        self.beta_a = a;
        self.beta_b = b;
        self
    }

    /// Turns the hard scales on or off.
    pub fn with_hard(mut self, hard: bool) -> Self {
        self.hard = hard;
        self
    }

    /// Stops (or keeps) the gradient through the hard keys.
    pub fn with_detach_hard_keys(mut self, detach: bool) -> Self {
        self.detach_hard_keys = detach;
        self
    }

    /// Turns the finiteness check on or off.
    pub fn with_check_finite(mut self, on: bool) -> Self {
        self.check_finite = on;
        self
    }

    /// Sets the seed of the loss's own RNG.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Chooses the implementation of the row-wise part.
    pub fn with_kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// Validates the settings and builds the loss.
    ///
    /// # Errors
    /// [`LossError::InvalidTemperature`], [`LossError::InvalidBeta`], or [`LossError::Config`] for
    /// empty or non-finite weights.
    pub fn init(&self) -> Result<HardFeatureLoss> {
        check_temperature(self.temperature)?;
        beta_distribution(self.beta_a, self.beta_b)?;
        if let Some(w) = &self.weights
            && (w.is_empty() || w.iter().any(|v| !v.is_finite()))
        {
            return Err(LossError::Config(format!(
                "weights must be non-empty and finite, got {w:?}"
            )));
        }
        Ok(HardFeatureLoss {
            config: self.clone(),
            rng: Mutex::new(StdRng::seed_from_u64(self.seed)),
        })
    }

    /// Number of scales in the loss (and in the queue) for `s` plain scales.
    pub fn total_scales(&self, s: usize) -> usize {
        if self.hard && s > 1 { 2 * s } else { s }
    }

    /// The weights used for `s_total` scales.
    ///
    /// # Errors
    /// [`LossError::Config`] when explicit weights have another length, or no default exists.
    pub fn weights_for(&self, s_total: usize) -> Result<Vec<f64>> {
        match &self.weights {
            Some(w) if w.len() == s_total => Ok(w.clone()),
            Some(w) => Err(LossError::Config(format!(
                "{} weights for {s_total} scales",
                w.len()
            ))),
            None if s_total == 8 && self.hard => Ok(MHCL_WEIGHTS.to_vec()),
            None if s_total == 1 => Ok(vec![1.0]),
            None => Err(LossError::Config(format!(
                "no default weights for {s_total} scales: set them with with_weights"
            ))),
        }
    }
}

/// The MHCL loss: InfoNCE on `S` plain scales plus, with `hard`, `S` hard scales built by mixing
/// queries with keys (`qh`, `kh`) and queue columns with each other; a weighted sum.
///
/// Generic in `S` (4 for MHCL, 1 for MoCo v2). See the crate docs for the formulation and
/// [`HardFeatureLoss::forward`] for the shapes.
pub struct HardFeatureLoss {
    config: HardFeatureLossConfig,
    rng: Mutex<StdRng>,
}

impl std::fmt::Debug for HardFeatureLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HardFeatureLoss")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl HardFeatureLoss {
    /// The settings.
    pub fn config(&self) -> &HardFeatureLossConfig {
        &self.config
    }

    /// Restarts the loss's own RNG from `seed`.
    pub fn reseed(&self, seed: u64) {
        *self.rng.lock().unwrap_or_else(|e| e.into_inner()) = StdRng::seed_from_u64(seed);
    }

    /// Draws one step's mixing values for `s` plain scales and a queue of length `k` from the
    /// loss's own RNG (see [`HardMixing::draw`]).
    ///
    /// # Errors
    /// As [`HardMixing::draw`].
    pub fn draw(&self, s: usize, k: usize) -> Result<HardMixing> {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        HardMixing::draw(&mut rng, s, k, self.config.beta_a, self.config.beta_b)
    }

    /// Validates inputs; returns `(s_total, weights, mixing-if-hard)`.
    fn prepare(
        &self,
        q: &Tensor<3>,
        k: &Tensor<3>,
        queue: &Tensor<3>,
        mixing: Option<&HardMixing>,
    ) -> Result<(Vec<f64>, Option<HardMixing>)> {
        check_temperature(self.config.temperature)?;
        let [_, s, _] = q.dims();
        let s_total = self.config.total_scales(s);
        let (_, s, _, kq) = validate_shapes(q, k, queue, s_total)?;
        let weights = self.config.weights_for(s_total)?;
        let mixing = if s_total == 2 * s {
            let mx = match mixing {
                Some(mx) => mx.clone(),
                None => self.draw(s, kq)?,
            };
            mx.validate(s, kq)?;
            Some(mx)
        } else {
            None
        };
        Ok((weights, mixing))
    }

    /// The loss of one step.
    ///
    /// * `q`: `(N, S, C)` normalized queries, may carry gradient (the loss's gradient flows into
    ///   whatever graph produced `q`);
    /// * `k`: `(N, S, C)` normalized keys, treated as constants;
    /// * `queue`: `(S_total, C, K)`, `S_total = 2S` with hard scales, else `S`; a constant;
    /// * `mixing`: the step's λ, μ and permutation; `None` draws them from the loss's RNG.
    ///   Ignored without hard scales.
    ///
    /// Returns the weighted total (shape `[1]`), the per-scale losses, the keys to enqueue
    /// (`(N, S_total, C)`: `k` then `kh`) and acc@1/acc@5 of plain scale `S - 1`.
    ///
    /// When `q` is tracked by autodiff, its gradient is computed during this call (see the crate
    /// docs) and `loss.backward()` only carries it on into the graph that produced `q`.
    ///
    /// # Errors
    /// [`LossError::Shape`] for shapes that do not fit, [`LossError::Mixing`] for mixing values
    /// that do not fit, [`LossError::Config`] for weights of the wrong length,
    /// [`LossError::NonFinite`] when `check_finite` is on and fails.
    pub fn forward(
        &self,
        q: Tensor<3>,
        k: Tensor<3>,
        queue: Tensor<3>,
        mixing: Option<&HardMixing>,
    ) -> Result<ContrastiveOutput> {
        let (weights, mixing) = self.prepare(&q, &k, &queue, mixing)?;
        core::contrastive(CoreArgs {
            q,
            k,
            queue,
            mixing: mixing.as_ref(),
            weights: &weights,
            temperature: self.config.temperature,
            detach_hard_keys: self.config.detach_hard_keys,
            check_finite: self.config.check_finite,
            kernel: self.config.kernel,
        })
    }

    /// The logits `(N, S_total, 1 + K)` exactly as the reference builds them: hard features,
    /// the mixed queue copy, `cat([<Q, Kk>, Q @ queue_mixed], -1) / T`. Differentiable through
    /// every input.
    ///
    /// This materializes what [`HardFeatureLoss::forward`] avoids (a mixed queue copy and the
    /// whole logits tensor); it is meant for tests and inspection.
    ///
    /// # Errors
    /// As [`HardFeatureLoss::forward`].
    pub fn logits(
        &self,
        q: Tensor<3>,
        k: Tensor<3>,
        queue: Tensor<3>,
        mixing: Option<&HardMixing>,
    ) -> Result<Tensor<3>> {
        let (_, mixing) = self.prepare(&q, &k, &queue, mixing)?;
        self.logits_prepared(q, k, queue, mixing.as_ref())
    }

    fn logits_prepared(
        &self,
        q: Tensor<3>,
        k: Tensor<3>,
        queue: Tensor<3>,
        mixing: Option<&HardMixing>,
    ) -> Result<Tensor<3>> {
        let (q_all, k_all, queue) = match mixing {
            Some(mx) => {
                let (qh, kh) = hard_features(q.clone(), k.clone(), &mx.lam)?;
                let queue = mixed_queue(queue, mx)?;
                (
                    Tensor::cat(vec![q, qh], 1),
                    Tensor::cat(vec![k, kh], 1),
                    queue,
                )
            }
            None => (q, k, queue),
        };
        let pos = q_all.clone().mul(k_all).sum_dim(2); // (N, S, 1)
        let neg = q_all.swap_dims(0, 1).matmul(queue).swap_dims(0, 1); // (N, S, K)
        Ok(Tensor::cat(vec![pos, neg], 2).div_scalar(self.config.temperature))
    }

    /// The loss computed the straightforward way: [`HardFeatureLoss::logits`], one log-softmax,
    /// label 0, weighted sum — what the reference does, gradient by autodiff. Returns
    /// `(total [1], per-scale losses [S_total])`. Slow and memory-hungry for a real queue; meant
    /// for tests that check [`HardFeatureLoss::forward`] against it.
    ///
    /// # Errors
    /// As [`HardFeatureLoss::forward`].
    pub fn forward_materialized(
        &self,
        q: Tensor<3>,
        k: Tensor<3>,
        queue: Tensor<3>,
        mixing: Option<&HardMixing>,
    ) -> Result<(Tensor<1>, Tensor<1>)> {
        let (weights, mixing) = self.prepare(&q, &k, &queue, mixing)?;
        let logits = self.logits_prepared(q, k, queue, mixing.as_ref())?;
        let [_, s_total, _] = logits.dims();
        let losses = activation::log_softmax(logits, 2)
            .narrow(2, 0, 1)
            .mean_dim(0)
            .reshape([s_total])
            .neg();
        let w: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
        let w = Tensor::<1>::from_floats(w.as_slice(), &losses.device());
        Ok((losses.clone().mul(w).sum(), losses))
    }
}

/// Hard positives of MHCL: `qh = lam*q + (1-lam)*k`, `kh = lam*k + (1-lam)*q`, with one `lam`
/// per scale broadcast over the batch and the channels; not re-normalized (as the reference).
/// `q`, `k`: `(N, S, C)`; `lam`: `S` values (already `Beta + 1`). Differentiable.
///
/// # Errors
/// [`LossError::Shape`] when `k` differs from `q` or `lam` has not `S` values.
pub fn hard_features(q: Tensor<3>, k: Tensor<3>, lam: &[f32]) -> Result<(Tensor<3>, Tensor<3>)> {
    let [_, s, _] = q.dims();
    if k.dims() != q.dims() || lam.len() != s {
        return Err(LossError::Shape(format!(
            "hard_features: q {:?}, k {:?}, {} lam values",
            q.dims(),
            k.dims(),
            lam.len()
        )));
    }
    let dev = q.device();
    let lam_t = Tensor::<1>::from_floats(lam, &dev).reshape([1, s, 1]);
    let oml: Vec<f32> = lam.iter().map(|l| 1.0 - l).collect();
    let oml_t = Tensor::<1>::from_floats(oml.as_slice(), &dev).reshape([1, s, 1]);
    let qh = q
        .clone()
        .mul(lam_t.clone())
        .add(k.clone().mul(oml_t.clone()));
    let kh = k.mul(lam_t).add(q.mul(oml_t));
    Ok((qh, kh))
}

/// The reference's per-step mixed queue copy `(2S, C, K)`: scales `0..S` unchanged, scale `S + i`
/// = `mu[i]*queue[S+i] + (1-mu[i])*queue[S+i][:, perm]`. For tests and inspection; the loss
/// never builds it.
///
/// # Errors
/// [`LossError::Shape`] for an odd number of scales, [`LossError::Mixing`] for mixing values
/// that do not fit.
pub fn mixed_queue(queue: Tensor<3>, mixing: &HardMixing) -> Result<Tensor<3>> {
    let [s_total, _, kq] = queue.dims();
    if s_total % 2 != 0 || s_total == 0 {
        return Err(LossError::Shape(format!(
            "mixed_queue needs 2S scales, got {s_total}"
        )));
    }
    let s = s_total / 2;
    mixing.validate(s, kq)?;
    let dev = queue.device();
    let perm: Vec<i64> = mixing.perm.iter().map(|&p| p as i64).collect();
    let perm = Tensor::<1, Int>::from_data(TensorData::new(perm, [kq]), &dev);
    let mu = Tensor::<1>::from_floats(mixing.mu.as_slice(), &dev).reshape([s, 1, 1]);
    let omm: Vec<f32> = mixing.mu.iter().map(|m| 1.0 - m).collect();
    let omm = Tensor::<1>::from_floats(omm.as_slice(), &dev).reshape([s, 1, 1]);
    let plain = queue.clone().narrow(0, 0, s);
    let hard = queue.narrow(0, s, s);
    let mixed = hard.clone().mul(mu).add(hard.select(2, perm).mul(omm));
    Ok(Tensor::cat(vec![plain, mixed], 0))
}
