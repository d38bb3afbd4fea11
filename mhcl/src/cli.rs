//! The `mhcl` command line: `mhcl pretrain`, `mhcl lincls`, `mhcl split`.
//!
//! `pretrain` takes every flag of the original `main_mhcl.py` (MoCo's `main_moco.py` plus
//! `--mhcl`, `--a`, `--b`) with the same names and defaults, and `lincls` every flag of
//! `main_lincls.py`; both add a few of their own (`--image-size`, `--device`, `--output-dir`,
//! ...). See `docs/cli.md`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::dist::Launch;
use crate::error::Result;

/// MHCL: multiscale hard-feature contrastive pretraining and linear evaluation.
#[derive(Parser, Debug, Clone)]
#[command(name = "mhcl", version, about, long_about = None, args_override_self = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Self-supervised pretraining (MHCL, or MoCo v2 without --mhcl) on DATA/train.
    Pretrain(PretrainArgs),
    /// Linear classification on frozen features (main_lincls.py protocol).
    Lincls(LinclsArgs),
    /// Per-class train/val split of an ImageFolder tree.
    Split(SplitArgs),
    /// Writes the procedurally generated demo dataset (DIR/train, DIR/val).
    Synthetic(SyntheticArgs),
}

/// Flags of `mhcl pretrain` (`main_mhcl.py`).
#[derive(Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[command(allow_negative_numbers = true)]
pub struct PretrainArgs {
    /// Dataset folder with train/<class>/* (and val/<class>/* for --knn-every).
    #[arg(value_name = "DIR")]
    pub data: PathBuf,
    /// Model architecture: resnet18, resnet34, resnet50, resnet101 or resnet152.
    #[arg(short = 'a', long, value_name = "ARCH", default_value = "resnet50")]
    pub arch: String,
    /// Number of data loading threads (capped at the number of CPU cores).
    #[arg(short = 'j', long, value_name = "N", default_value_t = 32)]
    pub workers: usize,
    /// Number of total epochs to run.
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub epochs: usize,
    /// Manual epoch number (useful on restarts; --resume overrides it).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub start_epoch: usize,
    /// Mini-batch size: the total over all ranks, as in the reference.
    #[arg(short = 'b', long, value_name = "N", default_value_t = 256)]
    pub batch_size: usize,
    /// Initial learning rate.
    #[arg(
        long = "lr",
        visible_alias = "learning-rate",
        value_name = "LR",
        default_value_t = 0.03
    )]
    pub lr: f64,
    /// Learning-rate schedule: epochs at which the lr is multiplied by 0.1 (ignored with --cos).
    #[arg(long, value_name = "EPOCH", num_args = 0.., default_values_t = [120usize, 160])]
    pub schedule: Vec<usize>,
    /// SGD momentum.
    #[arg(long, value_name = "M", default_value_t = 0.9)]
    pub momentum: f64,
    /// Weight decay.
    #[arg(
        long = "wd",
        visible_alias = "weight-decay",
        value_name = "W",
        default_value_t = 1e-4
    )]
    pub weight_decay: f64,
    /// Print frequency (iterations).
    #[arg(short = 'p', long, value_name = "N", default_value_t = 10)]
    pub print_freq: usize,
    /// Path to a checkpoint to resume from.
    #[arg(long, value_name = "PATH")]
    pub resume: Option<PathBuf>,
    /// Number of nodes for distributed training (-1: single process). Without
    /// --multiprocessing-distributed: the number of processes.
    #[arg(long, value_name = "N", default_value_t = -1, allow_negative_numbers = true)]
    pub world_size: i64,
    /// Node rank for distributed training. Without --multiprocessing-distributed: the rank of
    /// this process.
    #[arg(long, value_name = "N", default_value_t = -1, allow_negative_numbers = true)]
    pub rank: i64,
    /// Skip images that cannot be read or decoded (counted, named in the log and in the
    /// metrics JSON) instead of stopping the run.
    #[arg(long)]
    #[serde(default)]
    pub skip_corrupt: bool,
    /// Decode every image before training starts: a bad file then stops the run (or, with
    /// --skip-corrupt, is dropped) before the first step.
    #[arg(long)]
    #[serde(default)]
    pub verify_images: bool,
    /// URL used to set up distributed training (tcp://HOST:PORT or env://); not used by
    /// --dist-backend local.
    #[arg(long, value_name = "URL", default_value = "tcp://224.66.41.62:23456")]
    pub dist_url: String,
    /// Shared secret of the TCP rendezvous: every rank gives the same one, and a process
    /// without it cannot join (HMAC-SHA256 challenge-response; the secret never crosses the
    /// wire). Prefer the variable: command lines are visible to other users. Never stored in
    /// checkpoints.
    #[arg(
        long,
        value_name = "SECRET",
        env = "MHCL_DIST_TOKEN",
        hide_env_values = true
    )]
    #[serde(skip)]
    pub dist_token: Option<String>,
    /// Distributed backend: nccl (GPUs, builds with the `nccl` feature), tcp (alias gloo:
    /// processes over TCP, CPU) or local (ranks as threads of this process, CPU).
    #[arg(long, value_name = "NAME", default_value = "nccl")]
    pub dist_backend: String,
    /// Seed for initializing training (default: drawn at start, printed and stored in the
    /// checkpoints).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// GPU id to use.
    #[arg(long, value_name = "N")]
    pub gpu: Option<usize>,
    /// Start one rank per GPU of this node (or per --nproc-per-node): worker processes with
    /// --dist-backend nccl / tcp, threads with --dist-backend local. --batch-size and --workers
    /// are then totals over the node.
    #[arg(long)]
    pub multiprocessing_distributed: bool,
    /// Feature dimension.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub moco_dim: usize,
    /// Queue size: number of negative keys.
    #[arg(long, value_name = "K", default_value_t = 65536)]
    pub moco_k: usize,
    /// MoCo momentum of updating the key encoder.
    #[arg(long, value_name = "M", default_value_t = 0.99)]
    pub moco_m: f64,
    /// Softmax temperature.
    #[arg(long, value_name = "T", default_value_t = 0.07)]
    pub moco_t: f64,
    /// Use an MLP head (MoCo v2).
    #[arg(long)]
    pub mlp: bool,
    /// Use MoCo v2's data augmentation.
    #[arg(long)]
    pub aug_plus: bool,
    /// Use the cosine lr schedule.
    #[arg(long)]
    pub cos: bool,
    /// Use the MHCL multiscale hard-feature loss (without it: plain MoCo v2).
    #[arg(long)]
    pub mhcl: bool,
    /// Beta(a, b) parameter a of the hard-feature mixing.
    #[arg(long = "a", value_name = "A", default_value_t = 1.0)]
    pub beta_a: f64,
    /// Beta(a, b) parameter b of the hard-feature mixing.
    #[arg(long = "b", value_name = "B", default_value_t = 1.0)]
    pub beta_b: f64,

    /// Input image size (crop side).
    #[arg(long, value_name = "PX", default_value_t = 224)]
    pub image_size: usize,
    /// Backend: cpu (default), or cuda[:N] / vulkan[:N] in builds with those features.
    #[arg(long, value_name = "DEV", default_value = "cpu")]
    pub device: String,
    /// Number format of the encoder forwards: f32 (default) or bf16 (mixed precision over f32
    /// master weights; refused on devices without bf16; docs/gpu.md).
    #[arg(long, value_name = "P", default_value = "f32")]
    pub precision: String,
    /// Folder for checkpoints and metrics.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub output_dir: PathBuf,
    /// Per-epoch metrics JSON (loss, acc1, acc5, lr, images/s, wall time);
    /// default OUTPUT_DIR/metrics.json.
    #[arg(long, value_name = "PATH")]
    pub metrics_out: Option<PathBuf>,
    /// Weighted kNN accuracy (k=20, T=0.07) on DATA/val every N epochs (0: never).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub knn_every: usize,
    /// Ranks per node with --multiprocessing-distributed (default: the number of visible GPUs,
    /// 1 without GPUs, as the reference's ngpus_per_node).
    #[arg(long, value_name = "N")]
    pub nproc_per_node: Option<usize>,
    /// ResNet base width (64 = torchvision).
    #[arg(long, value_name = "W", default_value_t = 64)]
    pub width: usize,
    /// Single-device substitute for shuffle-BN: forward the keys in G sub-batches of a random
    /// partition, each with its own BatchNorm statistics (1: off).
    #[arg(long, value_name = "G", default_value_t = 1)]
    pub shuffle_bn_splits: usize,
    /// Stop the gradient through the hard keys kh (the reference keeps it).
    #[arg(long)]
    pub detach_hard_keys: bool,
    /// Epochs (0-based) after which a checkpoint is saved, besides the last one.
    #[arg(long, value_name = "EPOCH", num_args = 0.., default_values_t = [49usize, 99, 199, 799])]
    pub save_epochs: Vec<usize>,
    /// No progress bar (the print-freq lines are still printed).
    #[arg(long)]
    pub no_progress: bool,
}

/// Flags of `mhcl lincls` (`main_lincls.py`).
#[derive(Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[command(allow_negative_numbers = true)]
pub struct LinclsArgs {
    /// Dataset folder with train/<class>/* and val/<class>/*.
    #[arg(value_name = "DIR")]
    pub data: PathBuf,
    /// Model architecture: resnet18, resnet34, resnet50, resnet101 or resnet152.
    #[arg(short = 'a', long, value_name = "ARCH", default_value = "resnet50")]
    pub arch: String,
    /// Number of data loading threads (capped at the number of CPU cores).
    #[arg(short = 'j', long, value_name = "N", default_value_t = 32)]
    pub workers: usize,
    /// Number of total epochs to run.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub epochs: usize,
    /// Manual epoch number (useful on restarts; --resume overrides it).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub start_epoch: usize,
    /// Mini-batch size.
    #[arg(short = 'b', long, value_name = "N", default_value_t = 256)]
    pub batch_size: usize,
    /// Initial learning rate.
    #[arg(
        long = "lr",
        visible_alias = "learning-rate",
        value_name = "LR",
        default_value_t = 0.1
    )]
    pub lr: f64,
    /// Epochs at which the lr is multiplied by 0.1 (ignored with --cos).
    #[arg(long, value_name = "EPOCH", num_args = 0.., default_values_t = [60usize, 80])]
    pub schedule: Vec<usize>,
    /// SGD momentum.
    #[arg(long, value_name = "M", default_value_t = 0.9)]
    pub momentum: f64,
    /// Weight decay.
    #[arg(
        long = "wd",
        visible_alias = "weight-decay",
        value_name = "W",
        default_value_t = 0.0
    )]
    pub weight_decay: f64,
    /// Print frequency (iterations).
    #[arg(short = 'p', long, value_name = "N", default_value_t = 10)]
    pub print_freq: usize,
    /// Path to a linear-probe checkpoint to resume from.
    #[arg(long, value_name = "PATH")]
    pub resume: Option<PathBuf>,
    /// Evaluate the model (from --resume or --pretrained) on the validation set and exit.
    #[arg(short = 'e', long)]
    pub evaluate: bool,
    /// Number of nodes for distributed training (-1: single process). Without
    /// --multiprocessing-distributed: the number of processes.
    #[arg(long, value_name = "N", default_value_t = -1, allow_negative_numbers = true)]
    pub world_size: i64,
    /// Node rank for distributed training. Without --multiprocessing-distributed: the rank of
    /// this process.
    #[arg(long, value_name = "N", default_value_t = -1, allow_negative_numbers = true)]
    pub rank: i64,
    /// Skip images that cannot be read or decoded (counted, named in the log and in the
    /// metrics JSON) instead of stopping the run.
    #[arg(long)]
    #[serde(default)]
    pub skip_corrupt: bool,
    /// Decode every image before training starts: a bad file then stops the run (or, with
    /// --skip-corrupt, is dropped) before the first step.
    #[arg(long)]
    #[serde(default)]
    pub verify_images: bool,
    /// URL used to set up distributed training (tcp://HOST:PORT or env://); not used by
    /// --dist-backend local.
    #[arg(long, value_name = "URL", default_value = "tcp://224.66.41.62:23456")]
    pub dist_url: String,
    /// Shared secret of the TCP rendezvous: every rank gives the same one, and a process
    /// without it cannot join (HMAC-SHA256 challenge-response; the secret never crosses the
    /// wire). Prefer the variable: command lines are visible to other users. Never stored in
    /// checkpoints.
    #[arg(
        long,
        value_name = "SECRET",
        env = "MHCL_DIST_TOKEN",
        hide_env_values = true
    )]
    #[serde(skip)]
    pub dist_token: Option<String>,
    /// Distributed backend: nccl (GPUs, builds with the `nccl` feature), tcp (alias gloo:
    /// processes over TCP, CPU) or local (ranks as threads of this process, CPU).
    #[arg(long, value_name = "NAME", default_value = "nccl")]
    pub dist_backend: String,
    /// Seed for initializing training (default: drawn at start and printed).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// GPU id to use.
    #[arg(long, value_name = "N")]
    pub gpu: Option<usize>,
    /// Start one rank per GPU of this node (or per --nproc-per-node): worker processes with
    /// --dist-backend nccl / tcp, threads with --dist-backend local. --batch-size and --workers
    /// are then totals over the node.
    #[arg(long)]
    pub multiprocessing_distributed: bool,
    /// Ranks per node with --multiprocessing-distributed (default: the number of visible GPUs,
    /// 1 without GPUs).
    #[arg(long, value_name = "N")]
    pub nproc_per_node: Option<usize>,
    /// Path to the pretrained checkpoint: ours (checkpoint_XXXX.safetensors, or an encoder
    /// saved as safetensors) or an original PyTorch MHCL/MoCo checkpoint_XXXX.pth.tar.
    #[arg(long, value_name = "PATH")]
    pub pretrained: Option<PathBuf>,

    /// Input image size (crop side); validation resizes to round(size*256/224) first.
    #[arg(long, value_name = "PX", default_value_t = 224)]
    pub image_size: usize,
    /// Backend: cpu (default), or cuda[:N] / vulkan[:N] in builds with those features.
    #[arg(long, value_name = "DEV", default_value = "cpu")]
    pub device: String,
    /// Folder for the probe checkpoint, lincls_summary.json and the curves PNG.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub output_dir: PathBuf,
    /// ResNet base width (default: from the pretrained checkpoint, else 64).
    #[arg(long, value_name = "W")]
    pub width: Option<usize>,
    /// Cosine lr schedule instead of --schedule.
    #[arg(long)]
    pub cos: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// Flags of `mhcl split`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct SplitArgs {
    /// Train:val ratio per class, e.g. 2:8.
    #[arg(long, value_name = "A:B")]
    pub ratio: String,
    /// Seed of the per-class shuffle (Python's random.Random(seed).shuffle).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Copy the files instead of hard-linking them.
    #[arg(long)]
    pub copy: bool,
    /// Source folder: SRC/<class>/<image>.
    #[arg(value_name = "SRC")]
    pub src: PathBuf,
    /// Destination (must not exist or be empty): DST/train/<class>, DST/val/<class>.
    #[arg(value_name = "DST")]
    pub dst: PathBuf,
}

/// Flags of `mhcl synthetic`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct SyntheticArgs {
    /// Number of classes (2 to 8).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub classes: usize,
    /// Training images per class.
    #[arg(long = "train", value_name = "N", default_value_t = 48)]
    pub train_per_class: usize,
    /// Validation images per class.
    #[arg(long = "val", value_name = "N", default_value_t = 24)]
    pub val_per_class: usize,
    /// Image side in pixels.
    #[arg(long, value_name = "PX", default_value_t = 64)]
    pub size: u32,
    /// Seed.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Destination folder (must not exist or be empty).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Pretrain(args) => match crate::train::prepare(&args)?.1 {
            // --multiprocessing-distributed with a process backend: this process starts the
            // ranks as worker processes (copies of itself) and waits for them
            Launch::Spawn { nproc, .. } => crate::dist::spawn(nproc),
            _ => crate::train::pretrain(&args).map(|_| ()),
        },
        Command::Lincls(args) => match crate::lincls::prepare(&args)? {
            Launch::Spawn { nproc, .. } => crate::dist::spawn(nproc),
            _ => crate::lincls::run(&args).map(|_| ()),
        },
        Command::Split(args) => run_split(&args),
        Command::Synthetic(args) => run_synthetic(&args),
    }
}

fn run_synthetic(args: &SyntheticArgs) -> Result<()> {
    if args.dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        return Err(crate::MhclError::arg(format!(
            "{} exists and is not empty; refusing to overwrite it",
            args.dir.display()
        )));
    }
    let ds = crate::synthetic::SyntheticConfig::new()
        .with_classes(args.classes)
        .with_per_class(args.train_per_class, args.val_per_class)
        .with_size(args.size)
        .with_seed(args.seed)
        .generate(&args.dir)?;
    println!(
        "wrote {} classes, {} train / {} val images to {}",
        ds.classes.len(),
        ds.train,
        ds.val,
        args.dir.display()
    );
    Ok(())
}

fn run_split(args: &SplitArgs) -> Result<()> {
    let (a, b) = crate::split::parse_ratio(&args.ratio)?;
    let opts = crate::split::SplitOptions::new(a, b, args.seed).with_copy(args.copy);
    let r = crate::split::split(&args.src, &args.dst, &opts)?;
    println!(
        "split {} -> {}: {} classes, {} train / {} val images ({} hard links, {} copies)",
        args.src.display(),
        args.dst.display(),
        r.classes.len(),
        r.train,
        r.val,
        r.linked,
        r.train + r.val - r.linked
    );
    Ok(())
}

/// The whole `mhcl` command: parses `args` (including the program name), runs it and returns the
/// exit status. Errors print as one line, `error: <message>`, with status 1 (2 for a command
/// line clap cannot parse); an interrupted run names its checkpoint and returns 130.
pub fn main_from<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match parse_from(args) {
        Ok(cli) => cli,
        Err(msg) => {
            eprintln!("error: {msg}");
            return 2;
        }
    };
    match run(cli) {
        Ok(()) => 0,
        Err(crate::MhclError::Interrupted { checkpoint }) => {
            match checkpoint {
                Some(p) => eprintln!(
                    "interrupted: checkpoint saved to {0}; continue with --resume {0}",
                    p.display()
                ),
                None => eprintln!("interrupted"),
            }
            130
        }
        Err(e) => {
            eprintln!("error: {}", e.to_string().replace('\n', " "));
            1
        }
    }
}

/// Parses `args` (including the program name) and renders clap's own errors as one line.
///
/// `--help` and `--version` print and exit 0 as usual.
pub fn parse_from<I, T>(args: I) -> std::result::Result<Cli, String>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => Ok(cli),
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            Err(first.trim_start_matches("error: ").to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pretrain(extra: &[&str]) -> PretrainArgs {
        let mut v = vec!["mhcl", "pretrain", "data"];
        v.extend_from_slice(extra);
        match parse_from(v).unwrap().command {
            Command::Pretrain(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn pretrain_defaults_are_the_references() {
        let a = pretrain(&[]);
        assert_eq!(a.arch, "resnet50");
        assert_eq!(
            (a.workers, a.epochs, a.start_epoch, a.batch_size),
            (32, 200, 0, 256)
        );
        assert_eq!((a.lr, a.momentum, a.weight_decay), (0.03, 0.9, 1e-4));
        assert_eq!(a.schedule, vec![120, 160]);
        assert_eq!((a.print_freq, a.world_size, a.rank), (10, -1, -1));
        assert_eq!(
            (a.moco_dim, a.moco_k, a.moco_m, a.moco_t),
            (128, 65536, 0.99, 0.07)
        );
        assert!(!(a.mlp || a.aug_plus || a.cos || a.mhcl));
        assert_eq!((a.beta_a, a.beta_b), (1.0, 1.0));
        assert_eq!(a.seed, None);
        assert_eq!(a.dist_url, "tcp://224.66.41.62:23456");
    }

    #[test]
    fn pretrain_flags_parse_with_reference_spellings() {
        let a = pretrain(&[
            "-a",
            "resnet18",
            "-j",
            "2",
            "-b",
            "64",
            "--learning-rate",
            "0.06",
            "--schedule",
            "5",
            "7",
            "--weight-decay",
            "5e-4",
            "-p",
            "3",
            "--mhcl",
            "--a",
            "10",
            "--b",
            "0.1",
            "--moco-k",
            "4096",
            "--mlp",
            "--aug-plus",
            "--cos",
            "--moco-t",
            "0.2",
            "--seed",
            "0",
            "--image-size",
            "64",
        ]);
        assert_eq!(a.arch, "resnet18");
        assert_eq!((a.workers, a.batch_size, a.print_freq), (2, 64, 3));
        assert_eq!((a.lr, a.weight_decay), (0.06, 5e-4));
        assert_eq!(a.schedule, vec![5, 7]);
        assert_eq!((a.beta_a, a.beta_b, a.moco_t), (10.0, 0.1, 0.2));
        assert!(a.mhcl && a.mlp && a.aug_plus && a.cos);
        assert_eq!((a.seed, a.image_size, a.moco_k), (Some(0), 64, 4096));
        let a = pretrain(&["--lr", "0.5", "--wd", "0", "--schedule"]);
        assert_eq!((a.lr, a.weight_decay), (0.5, 0.0));
        assert!(a.schedule.is_empty());
    }

    #[test]
    fn lincls_defaults() {
        let cli = parse_from(["mhcl", "lincls", "d", "--pretrained", "x.pth.tar", "-e"]).unwrap();
        let Command::Lincls(a) = cli.command else {
            unreachable!()
        };
        assert_eq!(
            (a.lr, a.weight_decay, a.epochs, a.batch_size),
            (0.1, 0.0, 100, 256)
        );
        assert_eq!(a.schedule, vec![60, 80]);
        assert!(a.evaluate);
        assert_eq!(
            a.pretrained.as_deref(),
            Some(std::path::Path::new("x.pth.tar"))
        );
    }

    #[test]
    fn split_and_errors_are_one_line() {
        let cli = parse_from(["mhcl", "split", "--ratio", "2:8", "--seed", "0", "A", "B"]).unwrap();
        let Command::Split(s) = cli.command else {
            unreachable!()
        };
        assert_eq!((s.ratio.as_str(), s.seed), ("2:8", 0));
        let err = parse_from(["mhcl", "pretrain", "d", "--epochs", "x"]).unwrap_err();
        assert!(!err.contains('\n') && err.contains("--epochs"), "{err}");
    }
}
