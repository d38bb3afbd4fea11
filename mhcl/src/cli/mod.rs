//! The `mhcl` command line (feature `cli`, on by default): `mhcl pretrain`, `mhcl lincls`,
//! `mhcl split`, `mhcl synthetic`.
//!
//! A thin adapter over the library: the flags ([`args`]) become a [`PretrainConfig`] /
//! [`LinclsConfig`] (over the `--config` file when one is given, else the reference's
//! defaults), which [`Pretrainer`] / [`LinearProbe`] run with the console observers
//! ([`console`]: progress bar, the reference's lines, `metrics.json`). Only this module installs
//! the Ctrl-C handler. `pretrain` takes every flag of the original `main_mhcl.py` (MoCo's
//! `main_moco.py` plus `--mhcl`, `--a`, `--b`) with the same names and defaults, and `lincls`
//! every flag of `main_lincls.py`; both add a few of their own (`--image-size`, `--device`,
//! `--output-dir`, `--config`, `--print-config`, ...). See `docs/cli.md`.

pub mod args;
pub mod config_file;
pub mod console;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use args::{CommonArgs, DistArgs, LinclsArgs, PretrainArgs};

use crate::config::{LinclsConfig, PretrainConfig};
use crate::dist::Launch;
use crate::error::{MhclError, Result};
use crate::lincls::LinearProbe;
use crate::metrics::LinclsSummary;
use crate::runner::{RunConfig, Runner};
use crate::train::{PretrainOutcome, Pretrainer};

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

/// A config from flags: the `--config` file (or the defaults) with the flags applied by
/// `apply`, validated by `validate`; errors name the flag, or the file and key when the value
/// came from the file.
fn from_flags<C: serde::de::DeserializeOwned + Default>(
    common: &CommonArgs,
    apply: impl FnOnce(C) -> (C, args::Given),
    validate: impl FnOnce(&C) -> std::result::Result<(), crate::config::ConfigError>,
) -> Result<C> {
    let base = match &common.config {
        Some(path) => config_file::read::<C>(path)?,
        None => C::default(),
    };
    let (config, given) = apply(base);
    let file = common.config.as_deref();
    config_file::check(validate(&config), &given, file, common.print_config)?;
    Ok(config)
}

impl TryFrom<&PretrainArgs> for PretrainConfig {
    type Error = MhclError;

    /// The flags over the `--config` file (or the defaults), validated.
    fn try_from(a: &PretrainArgs) -> Result<Self> {
        from_flags(&a.common, |c| a.apply(c), PretrainConfig::validate)
    }
}

impl TryFrom<&LinclsArgs> for LinclsConfig {
    type Error = MhclError;

    /// The flags over the `--config` file (or the defaults), validated.
    fn try_from(a: &LinclsArgs) -> Result<Self> {
        from_flags(&a.common, |c| a.apply(c), LinclsConfig::validate)
    }
}

/// The stop token of this process: the Ctrl-C handler stops it.
pub fn stop_token() -> &'static crate::observe::StopToken {
    static TOKEN: std::sync::OnceLock<crate::observe::StopToken> = std::sync::OnceLock::new();
    TOKEN.get_or_init(crate::observe::StopToken::new)
}

/// The runner of `config` with this process's stop token; launch errors name the flags.
fn runner<C: RunConfig>(config: C) -> Result<Runner<C>> {
    Ok(Runner::new(config)
        .map_err(with_flag_names)?
        .with_stop_token(stop_token().clone()))
}

/// `result`, after resetting the stop token for a next run in this process.
fn reset_stop<R>(result: Result<R>) -> Result<R> {
    stop_token().reset();
    result
}

/// The pretraining of `config` and its console observers.
fn pretrainer(config: PretrainConfig, no_progress: bool) -> Result<(Pretrainer, Observers)> {
    let observers = console::pretrain_observers(&config, no_progress);
    Ok((runner(config)?, observers))
}

/// The probe of `config` and its console observers.
fn linear_probe(config: LinclsConfig, no_progress: bool) -> Result<(LinearProbe, Observers)> {
    Ok((runner(config)?, console::lincls_observers(no_progress)))
}

type Observers = Vec<Box<dyn crate::observe::Observer>>;

/// `mhcl pretrain` with parsed flags, in this process, with the console observers; the stop
/// token is reset afterwards.
pub fn pretrain(args: &PretrainArgs) -> Result<PretrainOutcome> {
    let (p, mut observers) = pretrainer(PretrainConfig::try_from(args)?, args.common.no_progress)?;
    reset_stop(p.run(&mut observers))
}

/// `mhcl lincls` with parsed flags, in this process, with the console observers.
pub fn lincls(args: &LinclsArgs) -> Result<LinclsSummary> {
    let (p, mut observers) = linear_probe(LinclsConfig::try_from(args)?, args.common.no_progress)?;
    reset_stop(p.run(&mut observers))
}

/// Runs `run` with the runner, or, for multiprocessing with a process backend, starts the ranks
/// as worker processes (copies of this one) and waits for them.
fn run_or_spawn<C: RunConfig, R>(
    runner: &Runner<C>,
    run: impl FnOnce() -> Result<R>,
) -> Result<()> {
    match runner.launch() {
        Launch::Spawn { nproc, .. } => crate::dist::spawn(*nproc, stop_token()),
        _ => reset_stop(run()).map(|_| ()),
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Pretrain(args) => {
            let config = PretrainConfig::try_from(&args)?;
            if args.common.print_config {
                return print_config(&config);
            }
            console::install_interrupt_handler(stop_token().clone());
            let (p, mut observers) = pretrainer(config, args.common.no_progress)?;
            run_or_spawn(&p, || p.run(&mut observers))
        }
        Command::Lincls(args) => {
            let config = LinclsConfig::try_from(&args)?;
            if args.common.print_config {
                return print_config(&config);
            }
            console::install_interrupt_handler(stop_token().clone());
            let (p, mut observers) = linear_probe(config, args.common.no_progress)?;
            run_or_spawn(&p, || p.run(&mut observers))
        }
        Command::Split(args) => run_split(&args),
        Command::Synthetic(args) => run_synthetic(&args),
    }
}

/// A launch error of the library (which names config keys) with the flags' names instead.
fn with_flag_names(e: MhclError) -> MhclError {
    match e {
        MhclError::InvalidArgument(_) | MhclError::Config(_) => {
            MhclError::arg(config_file::flag_names(&e.to_string()))
        }
        e => e,
    }
}

fn print_config<C: serde::Serialize>(config: &C) -> Result<()> {
    print!("{}", config_file::to_toml(config)?);
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
        Err(MhclError::Interrupted { checkpoint }) => {
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
    /// Bands per image: 3 writes RGB PNGs, any other count (1 to 32) 16-bit multispectral
    /// TIFFs (13: a Sentinel-2 stand-in).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub bands: usize,
    /// Destination folder (must not exist or be empty).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
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
        .with_bands(args.bands)
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
    use crate::config::Schedule;
    use ssl_models::Arch;

    fn pretrain(extra: &[&str]) -> PretrainArgs {
        let mut v = vec!["mhcl", "pretrain", "data"];
        v.extend_from_slice(extra);
        match parse_from(v).unwrap().command {
            Command::Pretrain(a) => a,
            _ => unreachable!(),
        }
    }

    fn config(extra: &[&str]) -> PretrainConfig {
        PretrainConfig::try_from(&pretrain(extra)).unwrap()
    }

    #[test]
    fn pretrain_defaults_are_the_references() {
        let mut want = PretrainConfig::default();
        want.data.root = "data".into();
        assert_eq!(config(&[]), want);
        let c = config(&[]);
        assert_eq!(c.model.arch, Arch::ResNet50);
        assert_eq!(
            (c.data.workers, c.training.epochs, c.training.batch_size),
            (32, 200, 256)
        );
        assert_eq!(c.training.lr, 0.03);
        assert_eq!(
            (c.training.sgd.momentum, c.training.sgd.weight_decay),
            (0.9, 1e-4)
        );
        assert_eq!(
            c.training.schedule,
            Schedule::Step {
                milestones: vec![120, 160]
            }
        );
        assert_eq!(
            (c.output.print_freq, c.dist.world_size, c.dist.rank),
            (10, -1, -1)
        );
        assert_eq!(
            (
                c.model.dim,
                c.model.queue_len,
                c.model.momentum,
                c.model.temperature
            ),
            (128, 65536, 0.99, 0.07)
        );
        assert!(!(c.model.mlp || c.model.mhcl || c.training.schedule == Schedule::Cosine));
        assert_eq!((c.model.beta_a, c.model.beta_b), (1.0, 1.0));
        assert_eq!(c.seed, None);
        assert_eq!(c.dist.url, "tcp://224.66.41.62:23456");
    }

    #[test]
    fn pretrain_flags_parse_with_reference_spellings() {
        let c = config(&[
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
            "--moco-t",
            "0.2",
            "--seed",
            "0",
            "--image-size",
            "64",
        ]);
        assert_eq!(c.model.arch, Arch::ResNet18);
        assert_eq!(
            (c.data.workers, c.training.batch_size, c.output.print_freq),
            (2, 64, 3)
        );
        assert_eq!((c.training.lr, c.training.sgd.weight_decay), (0.06, 5e-4));
        assert_eq!(
            c.training.schedule,
            Schedule::Step {
                milestones: vec![5, 7]
            }
        );
        assert_eq!(
            (c.model.beta_a, c.model.beta_b, c.model.temperature),
            (10.0, 0.1, 0.2)
        );
        assert!(c.model.mhcl && c.model.mlp);
        assert_eq!(c.augmentation, crate::config::Augmentation::MocoV2);
        assert_eq!(
            (c.seed, c.data.image_size, c.model.queue_len),
            (Some(0), 64, 4096)
        );
        let c = config(&["--lr", "0.5", "--wd", "0", "--schedule", "--cos"]);
        assert_eq!((c.training.lr, c.training.sgd.weight_decay), (0.5, 0.0));
        assert_eq!(c.training.schedule, Schedule::Cosine);
    }

    #[test]
    fn lincls_defaults() {
        let cli = parse_from(["mhcl", "lincls", "d", "--resume", "x.safetensors", "-e"]).unwrap();
        let Command::Lincls(a) = cli.command else {
            unreachable!()
        };
        let c = LinclsConfig::try_from(&a).unwrap();
        assert_eq!(
            (
                c.training.lr,
                c.training.sgd.weight_decay,
                c.training.epochs,
                c.training.batch_size
            ),
            (0.1, 0.0, 100, 256)
        );
        assert_eq!(
            c.training.schedule,
            Schedule::Step {
                milestones: vec![60, 80]
            }
        );
        assert!(c.evaluate);
    }

    #[test]
    fn a_bad_flag_value_names_the_flag() {
        let e = PretrainConfig::try_from(&pretrain(&["-b", "0"]))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "--batch-size: must be positive");
        let e = PretrainConfig::try_from(&pretrain(&["--moco-k", "100"]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--moco-k: 100 must be a multiple"), "{e}");
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
        let err = parse_from(["mhcl", "pretrain", "d", "-a", "resnet19"]).unwrap_err();
        assert!(!err.contains('\n') && err.contains("resnet19"), "{err}");
    }
}
