//! The flags of `mhcl pretrain` and `mhcl lincls` and their conversion into
//! [`PretrainConfig`] / [`LinclsConfig`].
//!
//! Every flag that takes a value is optional here: a flag that is not given leaves the value of
//! the config it is applied to, which is the config file of `--config` or the library's
//! defaults (the reference's). The flags both commands share are declared once
//! ([`CommonArgs`], [`DistArgs`]).

use std::path::PathBuf;

use clap::Args;
use ssl_distributed::DistBackend;
use ssl_models::Arch;

use crate::config::{Augmentation, LinclsConfig, PretrainConfig, Schedule, TrainingConfig};
use crate::device::DeviceSpec;
use crate::precision::Precision;

/// Flags shared by `pretrain` and `lincls`.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct CommonArgs {
    /// Dataset folder with train/<class>/* (and val/<class>/*); may come from --config.
    #[arg(value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Model architecture: resnet18, resnet34, resnet50 (default), resnet101 or resnet152.
    #[arg(short = 'a', long, value_name = "ARCH")]
    pub arch: Option<Arch>,
    /// Number of data loading threads (default 32, capped at the number of CPU cores).
    #[arg(short = 'j', long, value_name = "N")]
    pub workers: Option<usize>,
    /// Number of total epochs to run (default: pretrain 200, lincls 100).
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,
    /// Manual epoch number (useful on restarts; --resume overrides it).
    #[arg(long, value_name = "N")]
    pub start_epoch: Option<usize>,
    /// Mini-batch size: the total over all ranks, as in the reference (default 256).
    #[arg(short = 'b', long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Initial learning rate (default: pretrain 0.03, lincls 0.1).
    #[arg(long = "lr", visible_alias = "learning-rate", value_name = "LR")]
    pub lr: Option<f64>,
    /// Epochs at which the lr is multiplied by 0.1, ignored with --cos (default: pretrain
    /// 120 160, lincls 60 80).
    #[arg(long, value_name = "EPOCH", num_args = 0..)]
    pub schedule: Option<Vec<usize>>,
    /// Use the cosine lr schedule.
    #[arg(long)]
    pub cos: bool,
    /// SGD momentum (default 0.9).
    #[arg(long, value_name = "M")]
    pub momentum: Option<f64>,
    /// Weight decay (default: pretrain 1e-4, lincls 0).
    #[arg(long = "wd", visible_alias = "weight-decay", value_name = "W")]
    pub weight_decay: Option<f64>,
    /// Print frequency in iterations (default 10).
    #[arg(short = 'p', long, value_name = "N")]
    pub print_freq: Option<usize>,
    /// Path to a checkpoint to resume from.
    #[arg(long, value_name = "PATH")]
    pub resume: Option<PathBuf>,
    /// Seed for initializing training (default: drawn at start, printed and stored in the
    /// checkpoints).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Input image size, the crop side (default 224).
    #[arg(long, value_name = "PX")]
    pub image_size: Option<usize>,
    /// Bands of every image, 1 to 32 (default: those of the first training image). 8-bit RGB
    /// images are read as torchvision reads them; multispectral, 16-bit and float TIFFs as
    /// float bands.
    #[arg(long, value_name = "N")]
    pub bands: Option<usize>,
    /// Per-band normalization: a JSON file {"mean": [...], "std": [...]} (band_stats.json of
    /// an earlier run), or auto (default: ImageNet's for RGB images, computed over DATA/train
    /// for band images).
    #[arg(long, value_name = "FILE|auto")]
    pub band_stats: Option<BandStatsArg>,
    /// Backend: cpu (default), or cuda[:N] / vulkan[:N] in builds with those features.
    #[arg(long, value_name = "DEV")]
    pub device: Option<DeviceSpec>,
    /// GPU id to use (the index of --device when it names none).
    #[arg(long, value_name = "N")]
    pub gpu: Option<usize>,
    /// Folder for checkpoints and metrics (default .).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Skip images that cannot be read or decoded (counted, named in the log and in the
    /// metrics JSON) instead of stopping the run.
    #[arg(long)]
    pub skip_corrupt: bool,
    /// Decode every image before training starts: a bad file then stops the run (or, with
    /// --skip-corrupt, is dropped) before the first step.
    #[arg(long)]
    pub verify_images: bool,
    /// No progress bar (the print-freq lines are still printed).
    #[arg(long)]
    pub no_progress: bool,
    /// Read the run's config from this TOML file (as --print-config writes it); flags given
    /// as well override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective config (file and flags merged) as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Data-parallel flags.
    #[command(flatten)]
    pub dist: DistArgs,
}

/// The data-parallel flags of the reference (shared by `pretrain` and `lincls`).
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct DistArgs {
    /// Number of nodes for distributed training (-1: single process). Without
    /// --multiprocessing-distributed: the number of processes.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub world_size: Option<i64>,
    /// Node rank for distributed training. Without --multiprocessing-distributed: the rank of
    /// this process.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub rank: Option<i64>,
    /// URL used to set up distributed training (tcp://HOST:PORT or env://; default
    /// tcp://224.66.41.62:23456); not used by --dist-backend local.
    #[arg(long, value_name = "URL")]
    pub dist_url: Option<String>,
    /// Shared secret of the TCP rendezvous: every rank gives the same one, and a process
    /// without it cannot join (HMAC-SHA256 challenge-response; the secret never crosses the
    /// wire). Prefer the variable: command lines are visible to other users. Never stored in
    /// config files or checkpoints.
    #[arg(
        long,
        value_name = "SECRET",
        env = "MHCL_DIST_TOKEN",
        hide_env_values = true
    )]
    pub dist_token: Option<String>,
    /// Distributed backend: nccl (default; GPUs, builds with the `nccl` feature), tcp (alias
    /// gloo: processes over TCP, CPU) or local (ranks as threads of this process, CPU).
    #[arg(long, value_name = "NAME")]
    pub dist_backend: Option<DistBackend>,
    /// Start one rank per GPU of this node (or per --nproc-per-node): worker processes with
    /// --dist-backend nccl / tcp, threads with --dist-backend local. --batch-size and --workers
    /// are then totals over the node.
    #[arg(long)]
    pub multiprocessing_distributed: bool,
    /// Ranks per node with --multiprocessing-distributed (default: the number of visible GPUs,
    /// 1 without GPUs, as the reference's ngpus_per_node).
    #[arg(long, value_name = "N")]
    pub nproc_per_node: Option<usize>,
}

/// Flags of `mhcl pretrain` (`main_mhcl.py`).
#[derive(Args, Debug, Clone, Default, PartialEq)]
#[command(allow_negative_numbers = true)]
pub struct PretrainArgs {
    /// Flags shared with `lincls`.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Feature dimension (default 128).
    #[arg(long, value_name = "N")]
    pub moco_dim: Option<usize>,
    /// Queue size: number of negative keys (default 65536).
    #[arg(long, value_name = "K")]
    pub moco_k: Option<usize>,
    /// MoCo momentum of updating the key encoder (default 0.99).
    #[arg(long, value_name = "M")]
    pub moco_m: Option<f64>,
    /// Softmax temperature (default 0.07).
    #[arg(long, value_name = "T")]
    pub moco_t: Option<f64>,
    /// Use an MLP head (MoCo v2).
    #[arg(long)]
    pub mlp: bool,
    /// Use MoCo v2's data augmentation.
    #[arg(long)]
    pub aug_plus: bool,
    /// Use the MHCL multiscale hard-feature loss (without it: plain MoCo v2).
    #[arg(long)]
    pub mhcl: bool,
    /// Beta(a, b) parameter a of the hard-feature mixing (default 1).
    #[arg(long = "a", value_name = "A")]
    pub beta_a: Option<f64>,
    /// Beta(a, b) parameter b of the hard-feature mixing (default 1).
    #[arg(long = "b", value_name = "B")]
    pub beta_b: Option<f64>,
    /// Number format of the encoder forwards: f32 (default) or bf16 (mixed precision over f32
    /// master weights; refused on devices without bf16; docs/gpu.md).
    #[arg(long, value_name = "P")]
    pub precision: Option<Precision>,
    /// Per-epoch metrics JSON (loss, acc1, acc5, lr, images/s, wall time); default
    /// OUTPUT_DIR/metrics.json.
    #[arg(long, value_name = "PATH")]
    pub metrics_out: Option<PathBuf>,
    /// Weighted kNN accuracy (k=20, T=0.07) on DATA/val every N epochs (default 0: never).
    #[arg(long, value_name = "N")]
    pub knn_every: Option<usize>,
    /// ResNet base width (default 64 = torchvision).
    #[arg(long, value_name = "W")]
    pub width: Option<usize>,
    /// Single-device substitute for shuffle-BN: forward the keys in G sub-batches of a random
    /// partition, each with its own BatchNorm statistics (default 1: off).
    #[arg(long, value_name = "G")]
    pub shuffle_bn_splits: Option<usize>,
    /// Stop the gradient through the hard keys kh (the reference keeps it).
    #[arg(long)]
    pub detach_hard_keys: bool,
    /// Epochs (0-based) after which a checkpoint is saved, besides the last one (default 49
    /// 99 199 799).
    #[arg(long, value_name = "EPOCH", num_args = 0..)]
    pub save_epochs: Option<Vec<usize>>,
}

/// Flags of `mhcl lincls` (`main_lincls.py`).
#[derive(Args, Debug, Clone, Default, PartialEq)]
#[command(allow_negative_numbers = true)]
pub struct LinclsArgs {
    /// Flags shared with `pretrain`.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Evaluate the model (from --resume) on the validation set and exit.
    #[arg(short = 'e', long)]
    pub evaluate: bool,
    /// Path to the pretrained checkpoint: ours (checkpoint_XXXX.safetensors, or an encoder
    /// saved as safetensors) or an original PyTorch MHCL/MoCo checkpoint_XXXX.pth.tar.
    #[arg(long, value_name = "PATH")]
    pub pretrained: Option<PathBuf>,
    /// ResNet base width (default: from the pretrained checkpoint, else 64).
    #[arg(long, value_name = "W")]
    pub width: Option<usize>,
}

/// `--band-stats FILE|auto`.
#[derive(Clone, Debug, PartialEq)]
pub struct BandStatsArg(pub crate::config::BandStatsSource);

impl std::str::FromStr for BandStatsArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        use crate::config::BandStatsSource;
        match s {
            "" => Err("expected a file or auto".into()),
            "auto" => Ok(Self(BandStatsSource::Auto)),
            path => Ok(Self(BandStatsSource::File(path.into()))),
        }
    }
}

/// The config keys the flags set, for naming a flag in errors: `(key, flag)`.
pub(crate) const FLAGS: &[(&str, &str)] = &[
    ("data.root", "DIR"),
    ("data.workers", "--workers"),
    ("data.image_size", "--image-size"),
    ("data.bands", "--bands"),
    ("data.band_stats", "--band-stats"),
    ("training.epochs", "--epochs"),
    ("training.start_epoch", "--start-epoch"),
    ("training.batch_size", "--batch-size"),
    ("training.lr", "--lr"),
    ("training.schedule", "--schedule"),
    ("training.sgd.momentum", "--momentum"),
    ("training.sgd.weight_decay", "--wd"),
    ("training.sgd", "--momentum"),
    ("output.print_freq", "--print-freq"),
    ("print_freq", "--print-freq"),
    ("output.dir", "--output-dir"),
    ("output_dir", "--output-dir"),
    ("output.metrics_out", "--metrics-out"),
    ("output.save_epochs", "--save-epochs"),
    ("model.arch", "--arch"),
    ("arch", "--arch"),
    ("model.width", "--width"),
    ("width", "--width"),
    ("model.encoder", "--width"),
    ("model.dim", "--moco-dim"),
    ("model.queue_len", "--moco-k"),
    ("model.momentum", "--moco-m"),
    ("model.temperature", "--moco-t"),
    ("model.beta_a", "--a"),
    ("model.beta_b", "--b"),
    ("model.shuffle_bn_splits", "--shuffle-bn-splits"),
    ("model.precision", "--precision"),
    ("knn_every", "--knn-every"),
    ("evaluate", "--evaluate"),
    ("resume", "--resume"),
    ("pretrained", "--pretrained"),
    ("seed", "--seed"),
    ("device", "--device"),
    ("dist.world_size", "--world-size"),
    ("dist.rank", "--rank"),
    ("dist.url", "--dist-url"),
    ("dist.token", "--dist-token"),
    ("dist.backend", "--dist-backend"),
    ("dist.multiprocessing", "--multiprocessing-distributed"),
    ("dist.nproc_per_node", "--nproc-per-node"),
];

/// Records which config keys the flags set.
#[derive(Debug, Default)]
pub(crate) struct Given(pub Vec<&'static str>);

impl Given {
    fn set<T>(&mut self, key: &'static str, slot: &mut T, value: Option<T>) {
        if let Some(v) = value {
            *slot = v;
            self.0.push(key);
        }
    }

    fn flag(&mut self, key: &'static str, slot: &mut bool, on: bool) {
        if on {
            *slot = true;
            self.0.push(key);
        }
    }
}

impl CommonArgs {
    fn apply_training(&self, t: &mut TrainingConfig, g: &mut Given) {
        g.set("training.epochs", &mut t.epochs, self.epochs);
        g.set("training.start_epoch", &mut t.start_epoch, self.start_epoch);
        g.set("training.batch_size", &mut t.batch_size, self.batch_size);
        g.set("training.lr", &mut t.lr, self.lr);
        g.set("training.sgd.momentum", &mut t.sgd.momentum, self.momentum);
        g.set(
            "training.sgd.weight_decay",
            &mut t.sgd.weight_decay,
            self.weight_decay,
        );
        let milestones = self
            .schedule
            .clone()
            .map(|m| Schedule::Step { milestones: m });
        g.set("training.schedule", &mut t.schedule, milestones);
        if self.cos {
            g.set("training.schedule", &mut t.schedule, Some(Schedule::Cosine));
        }
    }

    fn apply_shared(
        &self,
        data: &mut crate::config::DataConfig,
        dist: &mut crate::config::DistConfig,
        device: &mut DeviceSpec,
        g: &mut Given,
    ) {
        g.set("data.root", &mut data.root, self.data.clone());
        g.set("data.workers", &mut data.workers, self.workers);
        g.set("data.image_size", &mut data.image_size, self.image_size);
        g.set("data.bands", &mut data.bands, self.bands.map(Some));
        g.set(
            "data.band_stats",
            &mut data.band_stats,
            self.band_stats.clone().map(|b| b.0),
        );
        g.flag(
            "data.skip_corrupt",
            &mut data.skip_corrupt,
            self.skip_corrupt,
        );
        g.flag(
            "data.verify_images",
            &mut data.verify_images,
            self.verify_images,
        );
        g.set("device", device, self.device);
        if let Some(gpu) = self.gpu.filter(|_| device.index.is_none()) {
            g.set("device", &mut device.index, Some(Some(gpu)));
        }
        let d = &self.dist;
        g.set("dist.world_size", &mut dist.world_size, d.world_size);
        g.set("dist.rank", &mut dist.rank, d.rank);
        g.set("dist.url", &mut dist.url, d.dist_url.clone());
        g.set("dist.backend", &mut dist.backend, d.dist_backend);
        g.set(
            "dist.nproc_per_node",
            &mut dist.nproc_per_node,
            d.nproc_per_node.map(Some),
        );
        g.flag(
            "dist.multiprocessing",
            &mut dist.multiprocessing,
            d.multiprocessing_distributed,
        );
        // the token is never in a file: always the flag's (or the variable's)
        dist.token = d.dist_token.clone();
    }
}

impl PretrainArgs {
    /// These flags applied over `base` (a config file's or the defaults); the keys they set.
    pub(crate) fn apply(&self, mut c: PretrainConfig) -> (PretrainConfig, Given) {
        let mut g = Given::default();
        let a = &self.common;
        a.apply_shared(&mut c.data, &mut c.dist, &mut c.device, &mut g);
        a.apply_training(&mut c.training, &mut g);
        g.set("seed", &mut c.seed, a.seed.map(Some));
        g.set("resume", &mut c.resume, a.resume.clone().map(Some));
        g.set("output.dir", &mut c.output.dir, a.output_dir.clone());
        g.set("output.print_freq", &mut c.output.print_freq, a.print_freq);
        let metrics = self.metrics_out.clone().map(Some);
        g.set("output.metrics_out", &mut c.output.metrics_out, metrics);
        g.set(
            "output.save_epochs",
            &mut c.output.save_epochs,
            self.save_epochs.clone(),
        );
        g.set("knn_every", &mut c.knn_every, self.knn_every);
        if self.aug_plus {
            g.set(
                "augmentation",
                &mut c.augmentation,
                Some(Augmentation::MocoV2),
            );
        }
        let m = &mut c.model;
        g.set("model.arch", &mut m.arch, a.arch);
        g.set("model.width", &mut m.width, self.width);
        g.set("model.dim", &mut m.dim, self.moco_dim);
        g.set("model.queue_len", &mut m.queue_len, self.moco_k);
        g.set("model.momentum", &mut m.momentum, self.moco_m);
        g.set("model.temperature", &mut m.temperature, self.moco_t);
        g.set("model.beta_a", &mut m.beta_a, self.beta_a);
        g.set("model.beta_b", &mut m.beta_b, self.beta_b);
        g.set(
            "model.shuffle_bn_splits",
            &mut m.shuffle_bn_splits,
            self.shuffle_bn_splits,
        );
        g.set("model.precision", &mut m.precision, self.precision);
        g.flag("model.mlp", &mut m.mlp, self.mlp);
        g.flag("model.mhcl", &mut m.mhcl, self.mhcl);
        g.flag(
            "model.detach_hard_keys",
            &mut m.detach_hard_keys,
            self.detach_hard_keys,
        );
        (c, g)
    }
}

impl LinclsArgs {
    /// These flags applied over `base`; the keys they set.
    pub(crate) fn apply(&self, mut c: LinclsConfig) -> (LinclsConfig, Given) {
        let mut g = Given::default();
        let a = &self.common;
        a.apply_shared(&mut c.data, &mut c.dist, &mut c.device, &mut g);
        a.apply_training(&mut c.training, &mut g);
        g.set("seed", &mut c.seed, a.seed.map(Some));
        g.set("resume", &mut c.resume, a.resume.clone().map(Some));
        g.set("output_dir", &mut c.output_dir, a.output_dir.clone());
        g.set("print_freq", &mut c.print_freq, a.print_freq);
        g.set("arch", &mut c.arch, a.arch);
        g.set("width", &mut c.width, self.width.map(Some));
        g.set(
            "pretrained",
            &mut c.pretrained,
            self.pretrained.clone().map(Some),
        );
        g.flag("evaluate", &mut c.evaluate, self.evaluate);
        (c, g)
    }
}
