//! The MHCL model: query encoder, momentum key encoder, queue of keys and the loss, and one
//! training step as in `DESIGN.md`.
//!
//! ```text
//! q  = normalize(encoder_q(im_q))                 (N, S, C), with gradient
//! encoder_k <- m * encoder_k + (1 - m) * encoder_q  parameters only (before the key forward)
//! k  = normalize(encoder_k(im_k))                 (N, S, C), no gradient [shuffle-BN]
//! lam, mu, perm drawn from the step's generator    (MHCL only)
//! loss = HardFeatureLoss(q, k, queue, mixing)      8 scales for MHCL, 1 for MoCo v2
//! backward; SGD step on encoder_q; enqueue the keys (all ranks)
//! ```
//!
//! Without `--mhcl` the encoder has the layer4 head only (S = 1), the queue one scale and the
//! loss is MoCo v2's InfoNCE (the reference crashes there; this trains).
//!
//! ```
//! use burn::prelude::*;
//! use mhcl::model::{Mhcl, MhclConfig};
//! use mhcl::optim::SgdConfig;
//! use rand::{SeedableRng, rngs::StdRng};
//! use ssl_models::Arch;
//!
//! let device = Device::flex().autodiff();
//! let config = MhclConfig::new(Arch::ResNet18).with_width(4).with_dim(8).with_queue_len(16);
//! let mut model = Mhcl::new(config, &device).unwrap();
//! let mut sgd = SgdConfig::new().with_momentum(0.9).init().unwrap();
//! let im = || Tensor::<4>::random([4, 3, 32, 32], burn::tensor::Distribution::Default, &device);
//! let stats = model.train_step(im(), im(), 0.03, &mut sgd, &mut StdRng::seed_from_u64(0), None).unwrap();
//! assert!(stats.loss.into_scalar::<f32>() > 0.0);
//! assert_eq!(model.queue().ptr(), 4);
//! ```

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use ssl_distributed::ProcessGroup;
use ssl_losses::{HardFeatureLoss, HardFeatureLossConfig, HardMixing};
use ssl_models::weights::{LoadOptions, RawTensor, TensorMap, load_tensors, module_tensors};
use ssl_models::{Arch, MhclEncoder, MhclEncoderConfig};
use ssl_queue::MomentumQueue;

use crate::checkpoint::ModelMeta;
use crate::error::{ConfigError, MhclError, Result};
use crate::optim::{MomentumBuffer, Sgd};
use crate::precision::{self, Precision};

/// Number of scales of the MHCL encoder (layer1..layer4).
pub const MHCL_SCALES: usize = 4;

/// Settings of [`Mhcl`]; defaults are `main_mhcl.py`'s (`--moco-dim 128`, `--moco-k 65536`,
/// `--moco-m 0.99`, `--moco-t 0.07`, Beta(1, 1), MHCL on, no MLP, width 64).
///
/// In config files the `[model]` table, one key per field (`arch = "resnet50"`,
/// `precision = "bf16"`); [`MhclConfig::encoder`] and [`MhclConfig::loss`] derive the
/// component configurations, so the MHCL switch exists once.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MhclConfig {
    /// Backbone.
    pub arch: Arch,
    /// Base width of the ResNet.
    pub width: usize,
    /// Output dimension of the heads (`--moco-dim`).
    pub dim: usize,
    /// Two-layer MLP `fc` head (`--mlp`).
    pub mlp: bool,
    /// Multiscale hard-feature loss (`--mhcl`); off: plain MoCo v2.
    pub mhcl: bool,
    /// Queue length K (`--moco-k`).
    pub queue_len: usize,
    /// Momentum of the key encoder (`--moco-m`).
    pub momentum: f64,
    /// Softmax temperature (`--moco-t`).
    pub temperature: f64,
    /// Beta(a, b) of the mixing draws (`--a`).
    pub beta_a: f64,
    /// Beta(a, b) of the mixing draws (`--b`).
    pub beta_b: f64,
    /// Stop the gradient through the hard keys.
    pub detach_hard_keys: bool,
    /// Single-device shuffle-BN substitute: key sub-batches with their own BN statistics
    /// (1 = off). Ignored when a process group with several ranks does real shuffle-BN.
    pub shuffle_bn_splits: usize,
    /// Number format of the encoder forwards (`--precision`; see [`crate::precision`]).
    pub precision: Precision,
    /// Channels (bands) of the input images, 3 for RGB. Not a config key: the runners set it
    /// from the data (`data.bands`, [`crate::images`]); checkpoints record it in their model
    /// description.
    #[serde(skip)]
    pub in_channels: usize,
}

impl Default for MhclConfig {
    /// [`MhclConfig::new`] for ResNet-50.
    fn default() -> Self {
        Self::new(Arch::ResNet50)
    }
}

impl MhclConfig {
    /// The reference defaults for `arch`.
    pub fn new(arch: Arch) -> Self {
        Self {
            arch,
            width: 64,
            dim: 128,
            mlp: false,
            mhcl: true,
            queue_len: 65536,
            momentum: 0.99,
            temperature: 0.07,
            beta_a: 1.0,
            beta_b: 1.0,
            detach_hard_keys: false,
            shuffle_bn_splits: 1,
            precision: Precision::F32,
            in_channels: 3,
        }
    }

    /// Sets the ResNet width.
    pub fn with_width(mut self, width: usize) -> Self {
        self.width = width;
        self
    }

    /// Sets the head dimension.
    pub fn with_dim(mut self, dim: usize) -> Self {
        self.dim = dim;
        self
    }

    /// Sets the MLP head.
    pub fn with_mlp(mut self, mlp: bool) -> Self {
        self.mlp = mlp;
        self
    }

    /// MHCL (true) or plain MoCo v2 (false).
    pub fn with_mhcl(mut self, mhcl: bool) -> Self {
        self.mhcl = mhcl;
        self
    }

    /// Sets K.
    pub fn with_queue_len(mut self, k: usize) -> Self {
        self.queue_len = k;
        self
    }

    /// Sets the key-encoder momentum.
    pub fn with_momentum(mut self, m: f64) -> Self {
        self.momentum = m;
        self
    }

    /// Sets the input channels (bands).
    pub fn with_in_channels(mut self, channels: usize) -> Self {
        self.in_channels = channels;
        self
    }

    /// Sets the temperature.
    pub fn with_temperature(mut self, t: f64) -> Self {
        self.temperature = t;
        self
    }

    /// Sets the Beta parameters.
    pub fn with_beta(mut self, a: f64, b: f64) -> Self {
        self.beta_a = a;
        self.beta_b = b;
        self
    }

    /// Stops the gradient through the hard keys.
    pub fn with_detach_hard_keys(mut self, on: bool) -> Self {
        self.detach_hard_keys = on;
        self
    }

    /// Sets the number of key sub-batches of the shuffle-BN substitute.
    pub fn with_shuffle_bn_splits(mut self, g: usize) -> Self {
        self.shuffle_bn_splits = g;
        self
    }

    /// Sets the number format of the encoder forwards (`--precision`).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// Scales of the encoder output: 4 (MHCL) or 1 (MoCo).
    pub fn scales(&self) -> usize {
        if self.mhcl { MHCL_SCALES } else { 1 }
    }

    /// Scales of the queue: 8 (MHCL: 4 plain + 4 hard) or 1.
    pub fn queue_scales(&self) -> usize {
        if self.mhcl { 2 * MHCL_SCALES } else { 1 }
    }

    /// The encoder configuration.
    pub fn encoder(&self) -> MhclEncoderConfig {
        MhclEncoderConfig::new(self.arch)
            .with_width(self.width)
            .with_dim(self.dim)
            .with_mlp(self.mlp)
            .with_multiscale(self.mhcl)
            .with_in_channels(self.in_channels)
    }

    /// The loss configuration.
    pub fn loss(&self) -> HardFeatureLossConfig {
        HardFeatureLossConfig::new()
            .with_temperature(self.temperature)
            .with_beta(self.beta_a, self.beta_b)
            .with_hard(self.mhcl)
            .with_detach_hard_keys(self.detach_hard_keys)
    }

    /// Checks every value; errors name the field (`beta_a`, `queue_len`).
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        let err = ConfigError::new;
        self.encoder()
            .validate()
            .map_err(|e| err("encoder", e.to_string()))?;
        for (field, v) in [("beta_a", self.beta_a), ("beta_b", self.beta_b)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(err(field, format!("must be > 0, got {v}")));
            }
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(err(
                "temperature",
                format!("must be > 0, got {}", self.temperature),
            ));
        }
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(err(
                "momentum",
                format!("must be in [0, 1], got {}", self.momentum),
            ));
        }
        if self.queue_len == 0 {
            return Err(ConfigError::new("queue_len", "must be positive"));
        }
        if self.shuffle_bn_splits == 0 {
            return Err(ConfigError::new("shuffle_bn_splits", "must be at least 1"));
        }
        self.loss()
            .init()
            .map(|_| ())
            .map_err(|e| err("loss", e.to_string()))
    }

    /// Checks that a step of `global_batch` keys (all ranks) fits the queue and the splits.
    pub fn check_batch(
        &self,
        global_batch: usize,
        local_batch: usize,
    ) -> std::result::Result<(), ConfigError> {
        if global_batch == 0 || !self.queue_len.is_multiple_of(global_batch) {
            return Err(ConfigError::new(
                "queue_len",
                format!(
                    "{} must be a multiple of the global batch size ({global_batch})",
                    self.queue_len
                ),
            ));
        }
        if self.shuffle_bn_splits > 1 && local_batch / self.shuffle_bn_splits < 2 {
            return Err(ConfigError::new(
                "shuffle_bn_splits",
                format!(
                    "{} leaves fewer than 2 images per sub-batch of {local_batch}",
                    self.shuffle_bn_splits
                ),
            ));
        }
        Ok(())
    }

    /// The description stored in checkpoints.
    pub fn meta(&self) -> ModelMeta {
        ModelMeta {
            arch: self.arch.name().to_string(),
            width: self.width,
            dim: self.dim,
            mlp: self.mlp,
            mhcl: self.mhcl,
            queue_len: self.queue_len,
            queue_scales: self.queue_scales(),
            in_channels: self.in_channels,
        }
    }
}

/// What one training step reports. The loss stays on the device (read it when printing).
#[derive(Clone, Debug)]
pub struct StepStats {
    /// Weighted total loss, shape `[1]`, detached, on the plain device.
    pub loss: Tensor<1>,
    /// Top-1 accuracy (percent) of the layer4 scale against the positive key.
    pub acc1: f32,
    /// Top-5 accuracy (percent) of the layer4 scale.
    pub acc5: f32,
}

/// Wall time of each phase of the last [`Mhcl::train_step`], recorded when profiling is on
/// ([`Mhcl::set_profiling`]). Each phase ends with a device synchronization, so the times are
/// those of the work itself on asynchronous devices too (the synchronizations make the step
/// itself a little slower there).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepProfile {
    /// Query encoder forward and normalization.
    pub query_forward: std::time::Duration,
    /// Momentum (EMA) update of the key encoder.
    pub ema: std::time::Duration,
    /// Key encoder forward (with shuffle-BN when on) and normalization.
    pub key_forward: std::time::Duration,
    /// Mixing draws and the loss forward (for the fused loss this includes the gradient with
    /// respect to the queries).
    pub loss: std::time::Duration,
    /// Backward through the query encoder and collecting the gradients.
    pub backward: std::time::Duration,
    /// Gradient averaging across ranks (data parallel only).
    pub all_reduce: std::time::Duration,
    /// SGD update.
    pub sgd: std::time::Duration,
    /// Gathering the keys (data parallel only) and writing them into the queue.
    pub enqueue: std::time::Duration,
}

impl StepProfile {
    /// The phases by name, in step order.
    pub fn phases(&self) -> [(&'static str, std::time::Duration); 8] {
        [
            ("query_forward", self.query_forward),
            ("ema", self.ema),
            ("key_forward", self.key_forward),
            ("loss", self.loss),
            ("backward", self.backward),
            ("all_reduce", self.all_reduce),
            ("sgd", self.sgd),
            ("enqueue", self.enqueue),
        ]
    }
}

/// Phase clock of a profiled step: synchronizes the device and returns the time since the
/// previous mark; inactive (no synchronization, zero times) when profiling is off.
struct PhaseClock {
    device: Option<Device>,
    last: std::time::Instant,
}

impl PhaseClock {
    fn new(device: Option<Device>) -> Self {
        Self {
            device,
            last: std::time::Instant::now(),
        }
    }

    fn mark(&mut self) -> std::time::Duration {
        let Some(device) = &self.device else {
            return std::time::Duration::ZERO;
        };
        let _ = device.sync();
        let now = std::time::Instant::now();
        let d = now - self.last;
        self.last = now;
        d
    }
}

/// The MHCL / MoCo v2 model: see the module docs.
pub struct Mhcl {
    config: MhclConfig,
    /// Always `Some` between calls; taken while the optimizer consumes it.
    encoder_q: Option<MhclEncoder>,
    /// Always `Some` between calls; taken while the EMA consumes it.
    encoder_k: Option<MhclEncoder>,
    queue: MomentumQueue,
    loss: HardFeatureLoss,
    device: Device,
    /// `Some` while profiling: the phases of the last step.
    profile: Option<StepProfile>,
    /// BatchNorm buffers of the last low-precision query forward, written back into the f32
    /// `encoder_q` before its SGD step.
    query_buffers: Option<precision::Buffers>,
}

impl std::fmt::Debug for Mhcl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mhcl")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Mhcl {
    /// Builds the model on `device` (its autodiff form is used for training): encoder_q with
    /// torchvision's init, encoder_k an independent copy without gradient, the queue random
    /// unit columns. Seed the device (`device.seed(..)`) first for a repeatable init.
    pub fn new(config: MhclConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let device = device.clone().autodiff();
        config.precision.check_device(&device)?;
        let encoder_q = config.encoder().try_init(&device)?;
        // A deep copy: `clone()` would share lazily initialised parameters and BN buffers.
        let encoder_k = encoder_q.valid().train().no_grad();
        let queue = MomentumQueue::new(
            config.queue_scales(),
            config.dim,
            config.queue_len,
            &device.clone().inner(),
        )?;
        let loss = config.loss().init()?;
        Ok(Self {
            config,
            encoder_q: Some(encoder_q),
            encoder_k: Some(encoder_k),
            queue,
            loss,
            device,
            profile: None,
            query_buffers: None,
        })
    }

    /// Turns the per-phase timing of [`Mhcl::train_step`] on or off (off by default; on, every
    /// phase ends with a device synchronization).
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(StepProfile::default);
    }

    /// The phase times of the last step, when profiling is on.
    pub fn last_profile(&self) -> Option<&StepProfile> {
        self.profile.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &MhclConfig {
        &self.config
    }

    /// The training (autodiff) device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The query encoder (the one trained by SGD and kept for the linear probe).
    pub fn encoder_q(&self) -> &MhclEncoder {
        self.encoder_q
            .as_ref()
            .expect("encoder_q is present between steps")
    }

    /// The momentum key encoder.
    pub fn encoder_k(&self) -> &MhclEncoder {
        self.encoder_k
            .as_ref()
            .expect("encoder_k is present between steps")
    }

    /// The queue of keys.
    pub fn queue(&self) -> &MomentumQueue {
        &self.queue
    }

    /// Key forward with the single-device shuffle-BN substitute: a random permutation of the
    /// batch is cut into `g` sub-batches, each forwarded on its own (own BN statistics, as one
    /// GPU of `g` would), and the keys are put back in the original order.
    fn keys_split(&self, im_k: Tensor<4>, g: usize, rng: &mut StdRng) -> Tensor<3> {
        let n = im_k.dims()[0];
        let mut perm: Vec<usize> = (0..n).collect();
        perm.shuffle(rng);
        let mut inv = vec![0usize; n];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        let device = im_k.device();
        let idx = |v: &[usize]| {
            let v: Vec<i64> = v.iter().map(|&i| i as i64).collect();
            Tensor::<1, Int>::from_data(TensorData::new(v, [n]), &device)
        };
        let shuffled = im_k.select(0, idx(&perm));
        let chunk = n.div_ceil(g);
        let parts: Vec<Tensor<3>> = (0..n)
            .step_by(chunk)
            .map(|start| {
                let end = (start + chunk).min(n);
                self.encoder_k()
                    .forward(shuffled.clone().slice(s![start..end]))
            })
            .collect();
        Tensor::cat(parts, 0).select(0, idx(&inv))
    }

    /// Normalized keys `(N, S, C)`, detached.
    fn keys(
        &self,
        im_k: Tensor<4>,
        rng: &mut StdRng,
        group: Option<&dyn ProcessGroup>,
    ) -> Result<Tensor<3>> {
        let k = match group {
            Some(g) if g.world_size() > 1 => {
                // Rank 0 draws the permutation of the global batch from the step's generator
                // (batch_shuffle broadcasts it); the other ranks make the same draw from theirs,
                // so every rank's generator stays in step and the mixing draws below are the
                // same on all ranks. (One device with `shuffle_bn_splits = world` draws the
                // same permutation.)
                let n_all = im_k.dims()[0] * g.world_size();
                let mut drawn: Vec<usize> = (0..n_all).collect();
                if g.rank() != 0 {
                    drawn.shuffle(rng);
                }
                let (x, perm) = ssl_distributed::batch_shuffle(g, im_k, rng)?;
                if g.rank() != 0 && perm.shuffle() != drawn.as_slice() {
                    return Err(MhclError::Distributed(format!(
                        "rank {} drew another shuffle-BN permutation than rank 0: the ranks' \
                         step generators differ (different seeds?)",
                        g.rank()
                    )));
                }
                let k = self.encoder_k().forward(x);
                ssl_distributed::batch_unshuffle(g, k, &perm)?
            }
            _ if self.config.shuffle_bn_splits > 1 => {
                self.keys_split(im_k, self.config.shuffle_bn_splits, rng)
            }
            _ => self.encoder_k().forward(im_k),
        };
        ssl_losses::normalize(k.detach(), 2).map_err(MhclError::from)
    }

    /// Query encoder forward in the configured precision, output in f32. Mixed precision
    /// forwards a low-precision view of `encoder_q` (gradients reach its f32 parameters) and
    /// keeps the view's BatchNorm buffers for [`Mhcl::train_step`] to write back.
    fn query_forward(&mut self, encoder_q: &MhclEncoder, im_q: Tensor<4>) -> Tensor<3> {
        let p = self.config.precision;
        if !p.is_mixed() {
            return encoder_q.forward(im_q);
        }
        let low = precision::cast_copy(encoder_q, p.dtype());
        let out = low.forward(im_q.cast(p.dtype()));
        self.query_buffers = Some(precision::buffers(&low));
        out.cast(burn::tensor::DType::F32)
    }

    /// [`Mhcl::keys`] in the configured precision, normalized in f32. Mixed precision runs a
    /// low-precision view of `encoder_k` and writes its BatchNorm buffers back into the f32
    /// key encoder.
    fn keys_in_precision(
        &mut self,
        im_k: Tensor<4>,
        rng: &mut StdRng,
        group: Option<&dyn ProcessGroup>,
    ) -> Result<Tensor<3>> {
        let p = self.config.precision;
        if !p.is_mixed() {
            return self.keys(im_k, rng, group);
        }
        let master = self
            .encoder_k
            .take()
            .expect("encoder_k is present between steps");
        self.encoder_k = Some(precision::cast_copy(&master, p.dtype()));
        let k = self.keys(im_k.cast(p.dtype()), rng, group);
        let low = self.encoder_k.take().expect("set above");
        self.encoder_k = Some(precision::write_back_buffers(
            master,
            precision::buffers(&low),
        ));
        ssl_losses::normalize(k?.cast(burn::tensor::DType::F32), 2).map_err(MhclError::from)
    }

    /// One training step (see the module docs). `im_q`, `im_k`: `(N, 3, H, W)` crops of the
    /// same images; `rng`: this step's generator (shuffle-BN permutation, then λ, μ, perm);
    /// `group`: the process group when training data-parallel (keys are gathered from all
    /// ranks, gradients averaged, shuffle-BN across ranks); every rank then passes a generator
    /// in the same state (e.g. `train::step_rng(seed, step)`), so all ranks draw the same
    /// permutation and mixing values.
    pub fn train_step(
        &mut self,
        im_q: Tensor<4>,
        im_k: Tensor<4>,
        lr: f64,
        optim: &mut Sgd,
        rng: &mut StdRng,
        group: Option<&dyn ProcessGroup>,
    ) -> Result<StepStats> {
        let encoder_q = self
            .encoder_q
            .take()
            .expect("encoder_q is present between steps");
        let mut clock = PhaseClock::new(self.profile.is_some().then(|| self.device.clone()));
        let mut prof = StepProfile::default();
        let result = self.step_inner(&encoder_q, im_q, im_k, rng, group, &mut clock, &mut prof);
        let (grads, stats, keys) = match result {
            Ok(v) => v,
            Err(e) => {
                self.encoder_q = Some(encoder_q);
                return Err(e);
            }
        };
        let encoder_q = match self.query_buffers.take() {
            Some(b) => precision::write_back_buffers(encoder_q, b),
            None => encoder_q,
        };
        let grads = match group {
            Some(g) if g.world_size() > 1 => {
                match ssl_distributed::average_gradients(g, &encoder_q, grads) {
                    Ok(grads) => grads,
                    Err(e) => {
                        self.encoder_q = Some(encoder_q);
                        return Err(e.into());
                    }
                }
            }
            _ => grads,
        };
        prof.all_reduce = clock.mark();
        self.encoder_q = Some(optim.step(lr, encoder_q, grads));
        prof.sgd = clock.mark();
        let keys = match group {
            Some(g) if g.world_size() > 1 => ssl_distributed::concat_all_gather(g, keys)?,
            _ => keys,
        };
        self.queue.enqueue(keys)?;
        prof.enqueue = clock.mark();
        if self.profile.is_some() {
            self.profile = Some(prof);
        }
        Ok(stats)
    }

    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn step_inner(
        &mut self,
        encoder_q: &MhclEncoder,
        im_q: Tensor<4>,
        im_k: Tensor<4>,
        rng: &mut StdRng,
        group: Option<&dyn ProcessGroup>,
        clock: &mut PhaseClock,
        prof: &mut StepProfile,
    ) -> Result<(GradientsParams, StepStats, Tensor<3>)> {
        encoder_q.check_input(&im_q)?;
        if im_q.dims() != im_k.dims() {
            return Err(MhclError::arg(format!(
                "query and key crops differ in shape: {:?} vs {:?}",
                im_q.dims(),
                im_k.dims()
            )));
        }
        let q = ssl_losses::normalize(self.query_forward(encoder_q, im_q), 2)?;
        prof.query_forward = clock.mark();
        // EMA before the key forward, as MoCo's forward does.
        let encoder_k = self
            .encoder_k
            .take()
            .expect("encoder_k is present between steps");
        // No copy of encoder_k is held meanwhile: the update then runs in place.
        match ssl_queue::try_ema_update(encoder_k, encoder_q, self.config.momentum) {
            Ok(k) => self.encoder_k = Some(k),
            Err(failed) => {
                let (k, e) = *failed;
                self.encoder_k = Some(k);
                return Err(e.into());
            }
        }
        prof.ema = clock.mark();
        let k = self.keys_in_precision(im_k, rng, group)?;
        prof.key_forward = clock.mark();
        let mixing = if self.config.mhcl {
            Some(HardMixing::draw(
                rng,
                self.config.scales(),
                self.config.queue_len,
                self.config.beta_a,
                self.config.beta_b,
            )?)
        } else {
            None
        };
        let queue = self.queue.tensor();
        let out = self.loss.forward(q, k, queue, mixing.as_ref())?;
        let loss = out.loss.clone().detach().inner();
        prof.loss = clock.mark();
        let grads = GradientsParams::from_grads(out.loss.backward(), encoder_q);
        prof.backward = clock.mark();
        Ok((
            grads,
            StepStats {
                loss,
                acc1: out.acc1,
                acc5: out.acc5,
            },
            out.keys,
        ))
    }

    /// Every tensor of the model under its checkpoint name (`encoder_q.*`, `encoder_k.*`,
    /// `queue`, `queue_ptr`) plus the optimizer's momentum buffers (`optimizer.*`).
    pub fn state(&self, optim: &Sgd) -> Result<TensorMap> {
        let mut out = TensorMap::new();
        for (prefix, enc) in [
            ("encoder_q.", self.encoder_q()),
            ("encoder_k.", self.encoder_k()),
        ] {
            for (k, v) in module_tensors(enc)? {
                out.insert(format!("{prefix}{k}"), v);
            }
        }
        let (shape, values) = self.queue.to_vec()?;
        out.insert("queue".into(), RawTensor::f32(shape, values));
        out.insert(
            "queue_ptr".into(),
            RawTensor::i64([1], vec![self.queue.ptr() as i64]),
        );
        for b in optim.buffers()? {
            out.insert(
                format!("optimizer.{}", b.name),
                RawTensor::f32(b.shape, b.values),
            );
        }
        Ok(out)
    }

    /// Restores [`Mhcl::state`] into this model and `optim`, strictly: every tensor must be
    /// there with the right shape, and nothing else may be.
    pub fn load_state(&mut self, tensors: &TensorMap, optim: &mut Sgd) -> Result<()> {
        let take = |prefix: &str| -> TensorMap {
            tensors
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone())))
                .collect()
        };
        let known = |k: &str| {
            k.starts_with("encoder_q.")
                || k.starts_with("encoder_k.")
                || k.starts_with("optimizer.")
                || k == "queue"
                || k == "queue_ptr"
        };
        if let Some(k) = tensors.keys().find(|k| !known(k)) {
            return Err(MhclError::arg(format!("unexpected tensor `{k}`")));
        }
        let strict = LoadOptions::new();
        let (q, _) = load_tensors(self.encoder_q().clone(), take("encoder_q."), &strict)
            .map_err(|e| MhclError::arg(format!("encoder_q: {e}")))?;
        let (k, _) = load_tensors(self.encoder_k().clone(), take("encoder_k."), &strict)
            .map_err(|e| MhclError::arg(format!("encoder_k: {e}")))?;
        let queue_t = tensors
            .get("queue")
            .ok_or_else(|| MhclError::arg("missing `queue`"))?;
        let want = [
            self.config.queue_scales(),
            self.config.dim,
            self.config.queue_len,
        ];
        if queue_t.shape != want {
            return Err(MhclError::arg(format!(
                "queue has shape {:?}, this model needs {want:?}",
                queue_t.shape
            )));
        }
        let ptr = tensors
            .get("queue_ptr")
            .and_then(|t| t.as_i64())
            .and_then(|v| v.first().copied())
            .ok_or_else(|| MhclError::arg("missing or non-integer `queue_ptr`"))?;
        if ptr < 0 || ptr as usize >= self.config.queue_len {
            return Err(MhclError::arg(format!("queue_ptr {ptr} is out of range")));
        }
        let queue = MomentumQueue::from_vec(
            &queue_t.shape,
            queue_t.to_f32(),
            ptr as usize,
            &self.device.clone().inner(),
        )?;
        let buffers = take("optimizer.")
            .into_iter()
            .map(|(name, t)| MomentumBuffer {
                name,
                shape: t.shape.clone(),
                values: t.to_f32(),
            })
            .collect();
        optim.load_buffers(&q, buffers)?;
        self.encoder_q = Some(q);
        self.encoder_k = Some(k.no_grad());
        self.queue = queue;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::SgdConfig;
    use burn::tensor::Distribution;
    use rand::SeedableRng;

    fn tiny(mhcl: bool) -> MhclConfig {
        MhclConfig::new(Arch::ResNet18)
            .with_width(4)
            .with_dim(8)
            .with_mlp(true)
            .with_mhcl(mhcl)
            .with_queue_len(16)
            .with_temperature(0.2)
    }

    /// Two crops of 4 images from a generator of their own: the device's generator is shared
    /// by the tests running beside this one, so two draws after the same `device.seed` need not
    /// agree.
    fn batch(device: &Device, seed: u64) -> (Tensor<4>, Tensor<4>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut crop = || {
            let normal = Distribution::Normal(0.0, 1.0);
            let data = TensorData::random::<f32, _, _>([4, 3, 32, 32], normal, &mut rng);
            Tensor::from_data(data, device)
        };
        (crop(), crop())
    }

    fn flat(model: &Mhcl, optim: &Sgd) -> Vec<f32> {
        model
            .state(optim)
            .unwrap()
            .values()
            .flat_map(|t| t.to_f32())
            .collect()
    }

    #[test]
    fn steps_train_and_fill_the_queue() {
        for mhcl in [true, false] {
            let device = Device::flex().autodiff();
            device.seed(1);
            let mut model = Mhcl::new(tiny(mhcl).with_shuffle_bn_splits(2), &device).unwrap();
            let mut sgd = SgdConfig::new().with_momentum(0.9).init().unwrap();
            let q0 = module_tensors(model.encoder_q()).unwrap();
            let k0 = module_tensors(model.encoder_k()).unwrap();
            assert_eq!(q0, k0, "encoder_k starts as a copy");
            for step in 0..2 {
                let (a, b) = batch(&device, 10 + step);
                let mut rng = StdRng::seed_from_u64(step);
                let s = model
                    .train_step(a, b, 0.05, &mut sgd, &mut rng, None)
                    .unwrap();
                assert!(s.loss.into_scalar::<f32>().is_finite());
            }
            assert_eq!(model.queue().ptr(), 8);
            assert_eq!(model.queue().scales(), if mhcl { 8 } else { 1 });
            let q1 = module_tensors(model.encoder_q()).unwrap();
            let k1 = module_tensors(model.encoder_k()).unwrap();
            assert_ne!(q1["conv1.weight"], q0["conv1.weight"]);
            assert_ne!(
                k1["conv1.weight"], k0["conv1.weight"],
                "EMA moved encoder_k"
            );
            assert_ne!(q1["conv1.weight"], k1["conv1.weight"]);
            // the key encoder keeps its own BN statistics
            assert_ne!(q1["bn1.running_mean"], k1["bn1.running_mean"]);
            assert!(sgd.num_buffers() > 0);
        }
    }

    #[test]
    fn state_round_trip_continues_identically() {
        let device = Device::flex().autodiff();
        device.seed(2);
        let mut a = Mhcl::new(tiny(true), &device).unwrap();
        let mut sa = SgdConfig::new()
            .with_momentum(0.9)
            .with_weight_decay(1e-4)
            .init()
            .unwrap();
        let (x, y) = batch(&device, 5);
        a.train_step(x, y, 0.05, &mut sa, &mut StdRng::seed_from_u64(0), None)
            .unwrap();
        let state = a.state(&sa).unwrap();
        device.seed(99);
        let mut b = Mhcl::new(tiny(true), &device).unwrap();
        let mut sb = SgdConfig::new()
            .with_momentum(0.9)
            .with_weight_decay(1e-4)
            .init()
            .unwrap();
        b.load_state(&state, &mut sb).unwrap();
        assert_eq!(flat(&a, &sa), flat(&b, &sb));
        for (m, s) in [(&mut a, &mut sa), (&mut b, &mut sb)] {
            let (x, y) = batch(&device, 6);
            m.train_step(x, y, 0.05, s, &mut StdRng::seed_from_u64(1), None)
                .unwrap();
        }
        assert_eq!(flat(&a, &sa), flat(&b, &sb));

        // a state of another architecture is refused with names
        let mut c = Mhcl::new(tiny(true).with_width(8), &device).unwrap();
        let mut sc = SgdConfig::new().init().unwrap();
        let err = c.load_state(&state, &mut sc).unwrap_err().to_string();
        assert!(err.contains("conv1.weight"), "{err}");
    }

    #[test]
    fn bad_configs_are_errors() {
        assert!(tiny(true).with_beta(0.0, 1.0).validate().is_err());
        assert!(tiny(true).with_beta(1.0, -1.0).validate().is_err());
        assert!(tiny(true).check_batch(3, 3).is_err());
        assert!(tiny(true).check_batch(4, 4).is_ok());
        assert!(
            tiny(true)
                .with_shuffle_bn_splits(4)
                .check_batch(4, 4)
                .is_err()
        );
    }
}
