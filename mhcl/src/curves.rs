//! Loss curves of a small MHCL model, for checking that a precision or a device trains as f32
//! on the CPU does: [`loss_curve`] trains one, [`compare_curves`] compares two.

use burn::prelude::*;

use crate::error::Result;
use crate::precision::Precision;

/// Settings of [`loss_curve`]: a small MHCL model on fixed synthetic pairs.
#[derive(Clone, Debug, PartialEq)]
pub struct CurveConfig {
    /// Training steps.
    pub steps: usize,
    /// Images per step.
    pub batch: usize,
    /// Crop side in pixels.
    pub size: usize,
    /// Distinct base images (the steps cycle through them).
    pub images: usize,
    /// ResNet-18 base width.
    pub width: usize,
    /// SGD learning rate (momentum 0.9, weight decay 1e-4).
    pub lr: f64,
    /// Seed of the init and the data.
    pub seed: u64,
}

impl Default for CurveConfig {
    /// 300 steps of batch 16 at 32x32, 64 images, width 4, lr 0.003, seed 0. (With batch 8
    /// or lr 0.01 the run is chaotic: f32 runs whose learning rates differ by one part in
    /// 10^4 already drift apart by up to the tolerance of [`compare_curves`].)
    fn default() -> Self {
        Self {
            steps: 300,
            batch: 16,
            size: 32,
            images: 64,
            width: 4,
            lr: 0.003,
            seed: 0,
        }
    }
}

/// The per-step training losses of a small MHCL model (ResNet-18, the given width, dim 16, MLP
/// head, K = 8 batches, t = 0.2) trained in `precision` on `device` from a fixed init. Both crops
/// of an image are the image plus independent Gaussian noise (std 0.1), so the task is
/// learnable and the loss falls. Runs with the same settings and seed draw the same init, data
/// and mixing in any precision: the check that bf16 training follows f32 compares two curves.
/// The images and noise come from a generator of the run's own (the same values on every
/// device), the init from the device's, seeded while no other thread of the process seeds it.
pub fn loss_curve(precision: Precision, device: &Device, cfg: &CurveConfig) -> Result<Vec<f32>> {
    use crate::model::{Mhcl, MhclConfig};
    use crate::optim::SgdConfig;
    use rand::SeedableRng;

    let device = device.clone().autodiff();
    let config = MhclConfig::new(ssl_models::Arch::ResNet18)
        .with_width(cfg.width)
        .with_dim(16)
        .with_mlp(true)
        .with_queue_len(8 * cfg.batch)
        .with_temperature(0.2)
        .with_precision(precision);
    let mut model = crate::dist::seeded_init(&device, cfg.seed, || Mhcl::new(config, &device))?;
    let mut sgd = SgdConfig::new()
        .with_momentum(0.9)
        .with_weight_decay(1e-4)
        .init()?;
    let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
    let shape = [cfg.batch, 3, cfg.size, cfg.size];
    let mut data_rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut normal_tensor = |shape: [usize; 4]| {
        Tensor::<4>::from_data(
            TensorData::random::<f32, _, _>(shape, normal, &mut data_rng),
            &device,
        )
    };
    let base = normal_tensor([cfg.images, 3, cfg.size, cfg.size]);
    let mut losses = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        let idx: Vec<i64> = (0..cfg.batch)
            .map(|i| ((step * cfg.batch + i) % cfg.images) as i64)
            .collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [cfg.batch]), &device);
        let x = base.clone().select(0, idx);
        let mut noise = || normal_tensor(shape).mul_scalar(0.1);
        let (im_q, im_k) = (x.clone() + noise(), x + noise());
        let mut rng = crate::rng::step_rng(cfg.seed, step as u64);
        let stats = model.train_step(im_q, im_k, cfg.lr, &mut sgd, &mut rng, None)?;
        losses.push(stats.loss.into_scalar::<f32>());
    }
    Ok(losses)
}

/// Means of consecutive windows of `window` values (the last, shorter window included).
pub fn window_means(values: &[f32], window: usize) -> Vec<f32> {
    values
        .chunks(window.max(1))
        .map(|c| c.iter().sum::<f32>() / c.len() as f32)
        .collect()
}

/// Window of [`compare_curves`], in steps.
pub const CURVE_WINDOW: usize = 25;
/// Relative tolerance of [`compare_curves`]. bf16 rounds every operand to 8 significant bits
/// (relative 2^-9); over hundreds of SGD steps the two trajectories drift apart, as any two f32
/// runs do after a tiny change. With the defaults of [`CurveConfig`] on the Flex backend the
/// largest window gap of bf16 against f32 is 0.27 of this tolerance (seeds 1 and 2: 0.40, 0.12),
/// while an f32 run with the learning rate changed by one part in 10^4 is 0.23-0.37 of it away.
pub const CURVE_RTOL: f32 = 0.08;
/// Absolute tolerance of [`compare_curves`].
pub const CURVE_ATOL: f32 = 0.02;

/// How a low-precision loss curve follows the f32 one.
#[derive(Clone, Debug, PartialEq)]
pub struct CurveComparison {
    /// [`CURVE_WINDOW`]-step window means of the f32 losses.
    pub reference: Vec<f32>,
    /// The same of the low-precision losses.
    pub other: Vec<f32>,
    /// Largest `|other - reference| / (CURVE_RTOL * |reference| + CURVE_ATOL)` over the windows
    /// (<= 1 passes).
    pub worst_ratio: f32,
    /// What failed: windows out of tolerance, a curve that does not fall by 10 %.
    pub failures: Vec<String>,
}

impl CurveComparison {
    /// Whether the curves agree and both fall.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Compares the window means of two loss curves: each window of `other` within
/// `CURVE_RTOL * |reference| + CURVE_ATOL` of `reference`, and the last window of each at most
/// 90 % of its first (training happened).
pub fn compare_curves(reference: &[f32], other: &[f32]) -> CurveComparison {
    let (a, b) = (
        window_means(reference, CURVE_WINDOW),
        window_means(other, CURVE_WINDOW),
    );
    let mut worst: f32 = 0.0;
    let mut failures = Vec::new();
    if a.len() != b.len() || a.is_empty() {
        failures.push(format!("{} vs {} windows", a.len(), b.len()));
    }
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let r = (x - y).abs() / (CURVE_RTOL * x.abs() + CURVE_ATOL);
        let r = if r.is_nan() { f32::INFINITY } else { r };
        worst = worst.max(r);
        if r > 1.0 {
            failures.push(format!("window {i}: f32 {x:.4} vs low precision {y:.4}"));
        }
    }
    for (name, w) in [("f32", &a), ("low-precision", &b)] {
        if let (Some(first), Some(last)) = (w.first(), w.last())
            && (*last >= 0.9 * first || last.is_nan())
        {
            failures.push(format!(
                "the {name} loss did not fall: {first:.4} -> {last:.4}"
            ));
        }
    }
    CurveComparison {
        reference: a,
        other: b,
        worst_ratio: worst,
        failures,
    }
}
