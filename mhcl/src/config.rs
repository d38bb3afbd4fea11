//! Typed run configurations: [`PretrainConfig`] (`main_mhcl.py`) and [`LinclsConfig`]
//! (`main_lincls.py`).
//!
//! `Default` is the reference's defaults, field by field (the argparse defaults of the two
//! scripts, plus this crate's own settings: image size 224, the CPU device, output in `.`).
//! Both serialize with serde (the `mhcl` command reads and prints them as TOML:
//! `mhcl pretrain --print-config`, `--config run.toml`); unknown keys are refused. A missing key
//! takes its default, so a file only needs what differs:
//!
//! ```
//! use mhcl::config::{PretrainConfig, Schedule};
//! let mut config = PretrainConfig::default();
//! config.data.root = "scenes".into();
//! config.training.schedule = Schedule::Cosine;
//! config.model.mhcl = true;
//! config.validate()?;
//! let text = serde_json::to_string(&config).unwrap();
//! let back: PretrainConfig = serde_json::from_str(&text).unwrap();
//! assert_eq!(back, config);
//! # Ok::<(), mhcl::config::ConfigError>(())
//! ```
//!
//! [`PretrainConfig::validate`] / [`LinclsConfig::validate`] return a [`ConfigError`] that names
//! the field (`training.batch_size`); the command line maps the field back to its flag.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use ssl_distributed::DistBackend;
use ssl_models::Arch;

use crate::device::DeviceSpec;
pub use crate::error::ConfigError;
use crate::model::MhclConfig;
use crate::optim::SgdConfig;
use crate::schedule::LrSchedule;

type Checked = std::result::Result<(), ConfigError>;

fn positive(field: &str, v: usize) -> Checked {
    if v == 0 {
        return Err(ConfigError::new(field, "must be positive"));
    }
    Ok(())
}

fn non_negative(field: &str, v: f64) -> Checked {
    if !(v.is_finite() && v >= 0.0) {
        return Err(ConfigError::new(field, format!("must be >= 0, got {v}")));
    }
    Ok(())
}

/// The image dataset and its loader.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Dataset folder with `train/<class>/*` (and `val/<class>/*`).
    pub root: PathBuf,
    /// Loader threads (`-j`, default 32; capped at the number of CPU cores). With several
    /// ranks on a node: the total of the node.
    pub workers: usize,
    /// Crop side in pixels (`--image-size`, default 224).
    pub image_size: usize,
    /// Decode every image before the first step (`--verify-images`).
    pub verify_images: bool,
    /// Skip images that cannot be read or decoded instead of stopping (`--skip-corrupt`).
    pub skip_corrupt: bool,
    /// Bands of every image (`--bands`); `None`: those of the first training image. 8-bit RGB
    /// images with 3 bands are read as torchvision reads them (Pillow's pixels); anything else
    /// (more or fewer bands, 16-bit or float samples) as float bands
    /// ([`ssl_augment::bands`]). A run records the count it used here.
    pub bands: Option<usize>,
    /// Per-band normalization (`--band-stats`).
    pub band_stats: BandStatsSource,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::new(),
            workers: 32,
            image_size: 224,
            verify_images: false,
            skip_corrupt: false,
            bands: None,
            band_stats: BandStatsSource::Auto,
        }
    }
}

/// Where the per-band mean and std of the normalization come from.
///
/// In config files `band_stats = "auto"`, `band_stats = { file = "stats.json" }` or
/// `band_stats = { values = { mean = [...], std = [...] } }`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum BandStatsSource {
    /// 8-bit RGB images: ImageNet's mean and std, as MoCo normalizes. Band images: computed
    /// once over `DATA/train` (or taken from the checkpoint that is resumed or probed), written
    /// to `band_stats.json` in the output folder and recorded in the checkpoints' config.
    #[default]
    Auto,
    /// A JSON file `{"mean": [...], "std": [...]}` with one value per band (`band_stats.json` of
    /// an earlier run).
    File(PathBuf),
    /// The values, one per band.
    Values {
        /// Mean of every band.
        mean: Vec<f32>,
        /// Standard deviation of every band.
        std: Vec<f32>,
    },
}

impl DataConfig {
    /// What to do about unreadable images (`verify_images`, `skip_corrupt`).
    pub fn image_checks(&self) -> crate::data::ImageChecks {
        crate::data::ImageChecks {
            verify: self.verify_images,
            skip_corrupt: self.skip_corrupt,
        }
    }

    fn validate(&self, min_image_size: usize, why: &str) -> Checked {
        if self.root.as_os_str().is_empty() {
            return Err(ConfigError::new("data.root", "no dataset folder given"));
        }
        if let Some(n) = self.bands
            && !(1..=ssl_augment::bands::MAX_BANDS).contains(&n)
        {
            return Err(ConfigError::new(
                "data.bands",
                format!("must be 1 to {}, got {n}", ssl_augment::bands::MAX_BANDS),
            ));
        }
        if let BandStatsSource::Values { mean, std } = &self.band_stats {
            let stats = ssl_augment::BandStats {
                mean: mean.clone(),
                std: std.clone(),
            };
            ssl_augment::band_transforms::BandNormalize::new(&stats)
                .map_err(|e| ConfigError::new("data.band_stats", e.to_string()))?;
        }
        if self.image_size < min_image_size {
            return Err(ConfigError::new(
                "data.image_size",
                format!(
                    "must be at least {min_image_size}{why}, got {}",
                    self.image_size
                ),
            ));
        }
        Ok(())
    }
}

/// The augmentation of the two pretraining crops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Augmentation {
    /// MoCo v1's (`main_moco.py` without `--aug-plus`): crop, grayscale, color jitter, flip.
    #[default]
    MocoV1,
    /// MoCo v2's (`--aug-plus`): adds Gaussian blur and random (not always) jitter.
    MocoV2,
}

/// Learning-rate schedule over the epochs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// The lr multiplied by 0.1 at each milestone epoch (`--schedule`).
    Step {
        /// Epochs at which the lr drops.
        milestones: Vec<usize>,
    },
    /// Half-cosine from the base lr to 0 over the epochs (`--cos`).
    Cosine,
}

/// Epochs, batch, learning rate and optimizer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingConfig {
    /// Total epochs.
    pub epochs: usize,
    /// First epoch (a resumed checkpoint overrides it).
    pub start_epoch: usize,
    /// Images per step, the total over all ranks (`-b`).
    pub batch_size: usize,
    /// Initial learning rate (`--lr`).
    pub lr: f64,
    /// How the lr changes over the epochs.
    pub schedule: Schedule,
    /// SGD (`--momentum`, `--wd`).
    pub sgd: SgdConfig,
}

impl TrainingConfig {
    /// `main_mhcl.py`'s: 200 epochs, batch 256, lr 0.03 dropping at 120 and 160, SGD momentum
    /// 0.9, weight decay 1e-4.
    pub fn pretrain() -> Self {
        Self {
            epochs: 200,
            start_epoch: 0,
            batch_size: 256,
            lr: 0.03,
            schedule: Schedule::Step {
                milestones: vec![120, 160],
            },
            sgd: SgdConfig::new().with_momentum(0.9).with_weight_decay(1e-4),
        }
    }

    /// `main_lincls.py`'s: 100 epochs, batch 256, lr 0.1 dropping at 60 and 80 (its
    /// `--schedule` default), SGD momentum 0.9, no weight decay.
    pub fn lincls() -> Self {
        Self {
            epochs: 100,
            start_epoch: 0,
            batch_size: 256,
            lr: 0.1,
            schedule: Schedule::Step {
                milestones: vec![60, 80],
            },
            sgd: SgdConfig::new().with_momentum(0.9),
        }
    }

    /// The per-epoch learning rates.
    pub fn lr_schedule(&self) -> LrSchedule {
        match &self.schedule {
            Schedule::Cosine => LrSchedule::cosine(self.lr, self.epochs),
            Schedule::Step { milestones } => LrSchedule::step(self.lr, milestones.clone()),
        }
    }

    fn validate(&self) -> Checked {
        positive("training.batch_size", self.batch_size)?;
        non_negative("training.lr", self.lr)?;
        non_negative("training.sgd.momentum", self.sgd.momentum)?;
        non_negative("training.sgd.weight_decay", self.sgd.weight_decay)?;
        self.sgd
            .clone()
            .init()
            .map(|_| ())
            .map_err(|e| ConfigError::new("training.sgd", e.to_string()))
    }
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self::pretrain()
    }
}

/// Data-parallel settings (the reference's `--world-size`, `--rank`, `--dist-url`,
/// `--dist-backend`, `--multiprocessing-distributed`); the `dist` module plans the launch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistConfig {
    /// Nodes with `multiprocessing`, else processes; -1: a single process.
    pub world_size: i64,
    /// Node rank with `multiprocessing`, else process rank; -1: unset.
    pub rank: i64,
    /// Rendezvous (`tcp://HOST:PORT` or `env://`).
    pub url: String,
    /// `nccl` (the reference's default), `tcp` (alias `gloo`) or `local`.
    pub backend: DistBackend,
    /// Start one rank per GPU of this node (or per `nproc_per_node`).
    pub multiprocessing: bool,
    /// Ranks per node with `multiprocessing` (default: visible GPUs, at least 1).
    pub nproc_per_node: Option<usize>,
    /// Shared secret of the TCP rendezvous. Never serialized: it stays out of config files
    /// and checkpoints (give it with `MHCL_DIST_TOKEN`).
    #[serde(skip)]
    pub token: Option<String>,
}

impl Default for DistConfig {
    fn default() -> Self {
        Self {
            world_size: -1,
            rank: -1,
            url: "tcp://224.66.41.62:23456".into(),
            backend: DistBackend::Nccl,
            multiprocessing: false,
            nproc_per_node: None,
            token: None,
        }
    }
}

/// Where a pretraining run writes, and how often it reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// Folder for checkpoints and metrics (`--output-dir`, default `.`).
    pub dir: PathBuf,
    /// Per-epoch metrics JSON (default `dir/metrics.json`).
    pub metrics_out: Option<PathBuf>,
    /// Epochs (0-based) after which a checkpoint is saved, besides the last one.
    pub save_epochs: Vec<usize>,
    /// Every how many steps the loss is read back and reported (`-p`, 0: never).
    pub print_freq: usize,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("."),
            metrics_out: None,
            save_epochs: vec![49, 99, 199, 799],
            print_freq: 10,
        }
    }
}

impl OutputConfig {
    /// The metrics file: `metrics_out`, else `dir/metrics.json`.
    pub fn metrics_path(&self) -> PathBuf {
        self.metrics_out
            .clone()
            .unwrap_or_else(|| self.dir.join("metrics.json"))
    }
}

/// Everything of one pretraining run (`mhcl pretrain`); see the module docs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainConfig {
    /// Seed of weights, data order, augmentations and mixing draws (none: drawn at start and
    /// stored in the checkpoints).
    pub seed: Option<u64>,
    /// Checkpoint to resume from.
    pub resume: Option<PathBuf>,
    /// Weighted kNN accuracy on `data.root/val` every N epochs (0: never).
    pub knn_every: usize,
    /// Augmentation of the two crops.
    pub augmentation: Augmentation,
    /// Backend (`cpu`, `cuda:N`, `vulkan:N`).
    pub device: DeviceSpec,
    /// Dataset and loader.
    pub data: DataConfig,
    /// The MHCL / MoCo model.
    pub model: MhclConfig,
    /// Epochs, batch, lr and optimizer.
    pub training: TrainingConfig,
    /// Data parallel.
    pub dist: DistConfig,
    /// Outputs.
    pub output: OutputConfig,
}

impl Default for PretrainConfig {
    /// `main_mhcl.py`'s defaults: ResNet-50, K 65536, m 0.99, T 0.07, dim 128, no MLP, MoCo v1
    /// augmentation, step schedule, plain MoCo (`mhcl = false` until `--mhcl`).
    fn default() -> Self {
        Self {
            seed: None,
            resume: None,
            knn_every: 0,
            augmentation: Augmentation::MocoV1,
            device: DeviceSpec::default(),
            data: DataConfig::default(),
            model: MhclConfig::new(Arch::ResNet50).with_mhcl(false),
            training: TrainingConfig::pretrain(),
            dist: DistConfig::default(),
            output: OutputConfig::default(),
        }
    }
}

impl PretrainConfig {
    /// Every check that needs no file.
    pub fn validate(&self) -> Checked {
        self.data.validate(
            32,
            " (ResNet layer4 needs 2x2 values per channel in train mode)",
        )?;
        self.training.validate()?;
        self.model.validate().map_err(|e| e.within("model"))?;
        self.model
            .check_batch(self.training.batch_size, self.training.batch_size)
            .map_err(|e| e.within("model"))
    }
}

/// Everything of one linear-probe run (`mhcl lincls`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinclsConfig {
    /// Seed of the `fc` init and the data order (none: drawn at start).
    pub seed: Option<u64>,
    /// Probe checkpoint to resume from.
    pub resume: Option<PathBuf>,
    /// Evaluate the `resume` checkpoint on the validation set and stop.
    pub evaluate: bool,
    /// Backbone architecture.
    pub arch: Arch,
    /// Base width (none: from the pretrained checkpoint, else 64).
    pub width: Option<usize>,
    /// Pretrained weights: our checkpoints, an encoder as safetensors, or a PyTorch
    /// MHCL / MoCo `checkpoint_XXXX.pth.tar` (none: random init).
    pub pretrained: Option<PathBuf>,
    /// Backend.
    pub device: DeviceSpec,
    /// Dataset (`train/` and `val/`) and loader.
    pub data: DataConfig,
    /// Epochs, batch, lr and optimizer of the `fc` layer.
    pub training: TrainingConfig,
    /// Data parallel.
    pub dist: DistConfig,
    /// Folder for the probe checkpoints, the summary and the curves.
    pub output_dir: PathBuf,
    /// Every how many steps the loss is reported (0: never).
    pub print_freq: usize,
}

impl Default for LinclsConfig {
    /// `main_lincls.py`'s defaults (ResNet-50, 100 epochs, lr 0.1 at 60/80, momentum 0.9, no
    /// weight decay).
    fn default() -> Self {
        Self {
            seed: None,
            resume: None,
            evaluate: false,
            arch: Arch::ResNet50,
            width: None,
            pretrained: None,
            device: DeviceSpec::default(),
            data: DataConfig::default(),
            training: TrainingConfig::lincls(),
            dist: DistConfig::default(),
            output_dir: PathBuf::from("."),
            print_freq: 10,
        }
    }
}

impl LinclsConfig {
    /// Every check that needs no file.
    pub fn validate(&self) -> Checked {
        self.data.validate(8, "")?;
        self.training.validate()?;
        if self.width == Some(0) {
            return Err(ConfigError::new("width", "must be positive"));
        }
        if self.evaluate && self.resume.is_none() {
            return Err(ConfigError::new(
                "evaluate",
                "needs `resume` with a linear-probe checkpoint (lincls_checkpoint.safetensors)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_reference_scripts() {
        let p = PretrainConfig::default();
        assert_eq!(p.model.arch, Arch::ResNet50);
        assert_eq!((p.model.queue_len, p.model.dim), (65536, 128));
        assert_eq!((p.model.momentum, p.model.temperature), (0.99, 0.07));
        assert!(!p.model.mlp && !p.model.mhcl);
        assert_eq!((p.training.lr, p.training.batch_size), (0.03, 256));
        assert_eq!(p.training.sgd.weight_decay, 1e-4);
        let l = LinclsConfig::default();
        assert_eq!((l.training.lr, l.training.sgd.weight_decay), (0.1, 0.0));
        assert_eq!(
            l.training.schedule,
            Schedule::Step {
                milestones: vec![60, 80]
            }
        );
    }

    #[test]
    fn validation_names_the_field() {
        let mut p = PretrainConfig::default();
        p.data.root = "d".into();
        p.validate().unwrap();
        p.training.batch_size = 0;
        assert_eq!(p.validate().unwrap_err().field, "training.batch_size");
        p.training.batch_size = 256;
        p.model.queue_len = 100;
        assert_eq!(p.validate().unwrap_err().field, "model.queue_len");
        p.model.queue_len = 256;
        p.model.beta_a = 0.0;
        assert_eq!(p.validate().unwrap_err().field, "model.beta_a");
        let l = LinclsConfig {
            evaluate: true,
            ..LinclsConfig::default()
        };
        let e = l.validate().unwrap_err();
        assert_eq!(e.field, "data.root");
    }
}
