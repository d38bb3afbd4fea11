//! `mhcl pretrain`: the pretraining loop of `main_mhcl.py`.
//!
//! Per epoch: the learning rate of the schedule (`--cos` or `--schedule`), one pass over
//! `DATA/train` in batches of two augmented crops (MoCo v2's augmentation with `--aug-plus`,
//! v1's without), a [`Mhcl::train_step`] per batch. Printed: the reference's progress lines
//! every `--print-freq` iterations, a summary line per epoch, and (on a terminal) a progress
//! bar. Written: `OUTPUT_DIR/metrics.json` after every epoch, checkpoints
//! `checkpoint_{epoch:04}.safetensors` after the epochs of `--save-epochs` and the last one.
//!
//! Random numbers: the weights and the queue come from the device generator seeded with
//! `--seed`; the data order and augmentations of epoch `e` from `(seed, e)` (the loader's
//! per-sample generators); the draws of step `t` (λ, μ, the permutation, shuffle-BN) from a
//! generator seeded by `(seed, t)`. A checkpoint therefore holds the whole random state as
//! `(seed, t)`, and `--resume` continues exactly: an interrupted and resumed run ends with the
//! same weights as an uninterrupted one.
//!
//! Data parallel ([`crate::dist`]): every rank runs this loop on its share of the data with
//! `--batch-size / --nproc-per-node` images per step, from rank 0's seed and weights; the step
//! gathers the keys of all ranks, averages the gradients and shuffles the keys across ranks
//! ([`Mhcl::train_step`] with the group). The step generators are the same on every rank.
//! Only rank 0 prints, writes the metrics (means over all ranks; images/s of all ranks) and
//! saves checkpoints.
//!
//! Ctrl-C stops after the current step, writes `checkpoint_interrupted.safetensors` (resumable,
//! mid-epoch) and returns [`MhclError::Interrupted`]; a second Ctrl-C exits at once.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use burn::prelude::*;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use ssl_augment::{
    LoaderConfig, SampleTransform, TwoCrops, moco_v1_transform, moco_v2_transform,
    probe_eval_transform,
};
use ssl_models::Arch;

use crate::checkpoint::{Checkpoint, CheckpointMeta, RngState};
use crate::cli::PretrainArgs;
use crate::data;
use crate::dist::{Launch, RankCtx};
use crate::error::{MhclError, Result};
use crate::knn::{KNN_K, KNN_T, KnnResult, weighted_knn};
use crate::model::{Mhcl, MhclConfig};
use crate::optim::{Sgd, SgdConfig};
use crate::schedule::LrSchedule;

/// File name of the checkpoint written after epoch `epoch` (0-based), as the reference's
/// `checkpoint_{:04d}.pth.tar`.
pub fn checkpoint_name(epoch: usize) -> String {
    format!("checkpoint_{epoch:04}.safetensors")
}

/// File name of the checkpoint written on Ctrl-C.
pub const INTERRUPTED_CHECKPOINT: &str = "checkpoint_interrupted.safetensors";

/// One line of `metrics.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Learning rate of the epoch.
    pub lr: f64,
    /// Mean training loss.
    pub loss: f64,
    /// Mean top-1 accuracy (percent) of the layer4 scale against its positive.
    pub acc1: f64,
    /// Mean top-5 accuracy (percent).
    pub acc5: f64,
    /// Training images per second over the epoch (both crops of an image count once).
    pub images_per_s: f64,
    /// Seconds of the epoch.
    pub seconds: f64,
    /// Seconds since the start of the run (this process).
    pub wall_time: f64,
    /// Weighted kNN accuracy on DATA/val, when measured this epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn: Option<KnnResult>,
    /// Images dropped so far with `--skip-corrupt` (by the pre-scan or when loaded), each
    /// `path: reason`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_images: Vec<String>,
}

/// What [`pretrain`] returns.
#[derive(Debug)]
pub struct PretrainOutcome {
    /// The trained model.
    pub model: Mhcl,
    /// Metrics of every epoch (those of a resumed run's earlier epochs included when the
    /// metrics file was there).
    pub metrics: Vec<EpochMetrics>,
    /// The last checkpoint written, if any.
    pub last_checkpoint: Option<PathBuf>,
    /// The seed used.
    pub seed: u64,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static INTERRUPT_AT_STEP: AtomicU64 = AtomicU64::new(u64::MAX);
static HANDLER: OnceLock<bool> = OnceLock::new();

/// Installs the Ctrl-C handler once per process (a second Ctrl-C exits with status 130).
pub(crate) fn install_interrupt_handler() {
    HANDLER.get_or_init(|| {
        ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupt: finishing the current step and saving a checkpoint");
        })
        .is_ok()
    });
}

/// Asks a running [`pretrain`] (or [`crate::lincls::run`]) to stop as Ctrl-C does.
pub fn request_interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes the next [`pretrain`] stop as on Ctrl-C just before global training step `step`
/// (for tests of the resume path; `u64::MAX` turns it off).
#[doc(hidden)]
pub fn interrupt_at_step(step: u64) {
    INTERRUPT_AT_STEP.store(step, Ordering::SeqCst);
}

/// Clears a pending interrupt request.
pub fn clear_interrupt() {
    INTERRUPTED.store(false, Ordering::SeqCst);
}

pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The generator of training step `step` of a run seeded with `seed`.
pub fn step_rng(seed: u64, step: u64) -> StdRng {
    StdRng::seed_from_u64(mix(seed ^ mix(step.wrapping_add(0x5851_f42d_4c95_7f2d))))
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `main_mhcl.py`'s arguments turned into the model configuration, with every check that
/// needs no file.
pub fn model_config(args: &PretrainArgs) -> Result<MhclConfig> {
    let arch = Arch::from_name(&args.arch).map_err(|e| MhclError::arg(e.to_string()))?;
    let config = MhclConfig::new(arch)
        .with_width(args.width)
        .with_dim(args.moco_dim)
        .with_mlp(args.mlp)
        .with_mhcl(args.mhcl)
        .with_queue_len(args.moco_k)
        .with_momentum(args.moco_m)
        .with_temperature(args.moco_t)
        .with_beta(args.beta_a, args.beta_b)
        .with_detach_hard_keys(args.detach_hard_keys)
        .with_shuffle_bn_splits(args.shuffle_bn_splits)
        .with_precision(args.precision.parse()?);
    config.validate()?;
    config.check_batch(args.batch_size, args.batch_size)?;
    Ok(config)
}

fn check_args(args: &PretrainArgs) -> Result<()> {
    if args.batch_size == 0 {
        return Err(MhclError::arg("--batch-size must be positive"));
    }
    if args.image_size < 32 {
        return Err(MhclError::arg(format!(
            "--image-size must be at least 32 (ResNet layer4 needs 2x2 values per channel in \
             train mode), got {}",
            args.image_size
        )));
    }
    if !(args.lr.is_finite() && args.lr >= 0.0) {
        return Err(MhclError::arg(format!(
            "--lr must be >= 0, got {}",
            args.lr
        )));
    }
    Ok(())
}

fn transform(args: &PretrainArgs) -> Result<Arc<dyn SampleTransform>> {
    let base = if args.aug_plus {
        moco_v2_transform(args.image_size)
    } else {
        moco_v1_transform(args.image_size)
    }
    .map_err(|e| MhclError::arg(e.to_string()))?;
    Ok(Arc::new(TwoCrops::new(base)))
}

/// Python's `'{:.4e}'` (two-digit signed exponent), as MoCo's `AverageMeter` prints the loss.
pub(crate) fn py_exp(x: f64, digits: usize) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let s = format!("{x:.digits$e}");
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let e: i32 = exp.parse().unwrap_or(0);
    format!("{mant}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
}

struct Meter {
    sum: f64,
    count: f64,
    val: f64,
}

impl Meter {
    fn new() -> Self {
        Self {
            sum: 0.0,
            count: 0.0,
            val: 0.0,
        }
    }
    fn update(&mut self, v: f64, n: f64) {
        self.val = v;
        self.sum += v * n;
        self.count += n;
    }
    fn avg(&self) -> f64 {
        if self.count > 0.0 {
            self.sum / self.count
        } else {
            0.0
        }
    }
}

/// Output sink: the progress bar when one is drawn, stdout otherwise.
struct Out {
    bar: Option<ProgressBar>,
}

impl Out {
    fn line(&self, s: &str) {
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(s),
            _ => println!("{s}"),
        }
    }
}

fn read_scalar(t: Tensor<1>) -> Result<f64> {
    let v: f32 = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| MhclError::Component(format!("reading the loss: {e:?}")))?
        .first()
        .copied()
        .unwrap_or(f32::NAN);
    Ok(f64::from(v))
}

fn load_metrics(path: &Path, start_epoch: usize) -> Vec<EpochMetrics> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<EpochMetrics>>(&b).ok())
        .map(|v| v.into_iter().filter(|m| m.epoch < start_epoch).collect())
        .unwrap_or_default()
}

fn write_metrics(path: &Path, metrics: &[EpochMetrics]) -> Result<()> {
    let json = serde_json::to_vec_pretty(metrics)
        .map_err(|e| MhclError::Component(format!("metrics JSON: {e}")))?;
    ssl_models::weights::write_file_atomic(path, &json)
        .map_err(|e| MhclError::Component(e.to_string()))
}

struct RunState<'a> {
    args: &'a PretrainArgs,
    seed: u64,
    model: Mhcl,
    sgd: Sgd,
    step: u64,
    /// `(ranks, images per rank and step)`: a checkpoint in mid-epoch resumes with these only.
    layout: (usize, usize),
}

impl RunState<'_> {
    fn checkpoint(&self, epoch: usize, iteration: usize) -> Result<Checkpoint> {
        let mut meta = CheckpointMeta::new(&self.args.arch);
        meta.epoch = epoch;
        meta.iteration = iteration;
        meta.model = Some(self.model.config().meta());
        meta.rng = RngState {
            seed: self.seed,
            step: self.step,
        };
        meta.args = serde_json::to_value(self.args)
            .map_err(|e| MhclError::Component(format!("arguments JSON: {e}")))?;
        meta.kind = "pretrain".into();
        meta.extra = serde_json::json!({
            "world_size": self.layout.0,
            "batch_per_rank": self.layout.1,
        });
        let mut c = Checkpoint::new(meta);
        c.tensors = self.model.state(&self.sgd)?;
        Ok(c)
    }

    fn save(&self, path: &Path, epoch: usize, iteration: usize) -> Result<()> {
        self.checkpoint(epoch, iteration)?.write_atomic(path)
    }
}

fn describe(m: &crate::checkpoint::ModelMeta) -> String {
    format!(
        "{} (width {}, dim {}, {}, {}, K {})",
        m.arch,
        m.width,
        m.dim,
        if m.mlp { "mlp" } else { "linear fc" },
        if m.mhcl { "mhcl" } else { "moco" },
        m.queue_len
    )
}

/// The checks of `mhcl pretrain` that need no file, and how it runs (single process, ranks as
/// threads, worker processes to spawn, or a rank of a process group).
pub fn prepare(args: &PretrainArgs) -> Result<(MhclConfig, Launch)> {
    check_args(args)?;
    let config = model_config(args)?;
    let launch = crate::dist::plan(&args.into())?;
    let layout = launch.layout(args.batch_size, args.workers);
    if layout.world_size > 1 {
        config.check_batch(layout.batch_size * layout.world_size, layout.batch_size)?;
    }
    Ok((config, launch))
}

/// Runs `mhcl pretrain`; see the module docs.
///
/// Data parallel (see [`crate::dist`]): with `--dist-backend local
/// --multiprocessing-distributed` the ranks run as threads of this call, which returns rank
/// 0's outcome; with `--dist-backend tcp`/`nccl` and `--world-size`/`--rank` (or `env://`)
/// this process is one rank. `--multiprocessing-distributed` with a process backend starts
/// worker processes of the `mhcl` command and is done by [`crate::cli::run`].
pub fn pretrain(args: &PretrainArgs) -> Result<PretrainOutcome> {
    let (_, launch) = prepare(args)?;
    launch.run_ranks(args.batch_size, args.workers, "pretrain", |ctx| {
        pretrain_rank(args, ctx)
    })
}

/// Builds the model from `seed` and the optimizer (one rank at a time, see
/// [`crate::dist`]: ranks that are threads share the device's generator).
fn build_state<'a>(
    args: &'a PretrainArgs,
    config: &MhclConfig,
    device: &Device,
    seed: u64,
    ctx: &RankCtx,
) -> Result<RunState<'a>> {
    let _init = crate::dist::init_lock();
    device.seed(seed);
    Ok(RunState {
        args,
        seed,
        model: Mhcl::new(config.clone(), device)?,
        sgd: SgdConfig::new()
            .with_momentum(args.momentum)
            .with_weight_decay(args.weight_decay)
            .init()?,
        step: 0,
        layout: (ctx.world_size(), ctx.batch_size()),
    })
}

/// One rank of `mhcl pretrain` (the whole run for a single process).
fn pretrain_rank(args: &PretrainArgs, ctx: &RankCtx) -> Result<PretrainOutcome> {
    let main = ctx.is_main();
    let world = ctx.world_size();
    let config = model_config(args)?;
    let checks = data::ImageChecks {
        verify: args.verify_images,
        skip_corrupt: args.skip_corrupt,
    };
    let train_set = Arc::new(data::open_split_checked(&args.data, "train", checks, main)?);
    if train_set.len() < ctx.global_batch_size() {
        return Err(MhclError::arg(format!(
            "batch size {} is larger than the dataset ({} images in {}); use a smaller -b",
            ctx.global_batch_size(),
            train_set.len(),
            args.data.join("train").display()
        )));
    }
    let knn_sets = if args.knn_every > 0 && main {
        Some(Arc::new(data::open_split(&args.data, "val")?))
    } else {
        None
    };
    // data parallel: rank i uses GPU i of its node, as the reference
    let device = crate::device::parse_device(&args.device, ctx.device_index().or(args.gpu))?;
    let metrics_path = args
        .metrics_out
        .clone()
        .unwrap_or_else(|| args.output_dir.join("metrics.json"));
    if main {
        data::ensure_writable_dir(&args.output_dir)?;
        if let Some(parent) = metrics_path.parent().filter(|p| !p.as_os_str().is_empty()) {
            data::ensure_writable_dir(parent)?;
        }
    }

    // Resume: read everything before building anything expensive.
    let resume = match &args.resume {
        Some(path) => {
            let ckpt = Checkpoint::read(path)?;
            let want = config.meta();
            match &ckpt.meta.model {
                Some(m) if *m == want => {}
                Some(m) => {
                    return Err(MhclError::checkpoint(
                        path,
                        format!(
                            "holds {}, but this run builds {}",
                            describe(m),
                            describe(&want)
                        ),
                    ));
                }
                None => {
                    return Err(MhclError::checkpoint(path, "holds no pretraining model"));
                }
            }
            Some((path.clone(), ckpt))
        }
        None => None,
    };
    let seed = match (&resume, args.seed) {
        (Some((_, c)), _) => c.meta.rng.seed,
        (None, Some(s)) => s,
        (None, None) => rand::random::<u64>() >> 11,
    };
    // every rank trains with rank 0's seed (the same data order, augmentations and draws)
    let seed = ctx.broadcast_seed(seed)?;

    let mut state = build_state(args, &config, &device, seed, ctx)?;
    let (mut start_epoch, mut skip_iters) = (args.start_epoch, 0usize);
    if let Some((path, ckpt)) = &resume {
        state
            .model
            .load_state(&ckpt.tensors, &mut state.sgd)
            .map_err(|e| MhclError::checkpoint(path, e.to_string()))?;
        start_epoch = ckpt.meta.epoch;
        skip_iters = ckpt.meta.iteration;
        state.step = ckpt.meta.rng.step;
        let written = (
            ckpt.meta.extra["world_size"].as_u64().unwrap_or(1) as usize,
            ckpt.meta.extra["batch_per_rank"]
                .as_u64()
                .map_or(args.batch_size, |b| b as usize),
        );
        if skip_iters > 0 && written != state.layout {
            return Err(MhclError::checkpoint(
                path,
                format!(
                    "was written in mid-epoch by {} rank(s) x batch {}; resume it with the same \
                     layout (this run: {} x {}), or resume from an epoch checkpoint",
                    written.0, written.1, state.layout.0, state.layout.1
                ),
            ));
        }
        if main && args.seed.is_some_and(|s| s != seed) {
            println!("=> --seed ignored: resuming with the checkpoint's seed {seed}");
        }
        if main {
            println!(
                "=> loaded checkpoint '{}' (epoch {}, iteration {})",
                path.display(),
                start_epoch,
                skip_iters
            );
        }
    }
    if ctx.group().is_some() {
        // identical start on every rank: rank 0's weights, queue and optimizer state
        let tensors = ctx.broadcast_tensors(state.model.state(&state.sgd)?)?;
        if !main {
            state.model.load_state(&tensors, &mut state.sgd)?;
        }
    }

    let workers = data::effective_workers(ctx.layout().workers);
    let loader = data::loader(
        Arc::clone(&train_set),
        transform(args)?,
        LoaderConfig::default()
            .with_batch_size(ctx.batch_size())
            .with_workers(workers)
            .with_seed(seed)
            .with_shuffle(true)
            .with_drop_last(true)
            .with_rank(ctx.rank(), world)
            .with_prefetch(2),
    )?;
    let iters = loader.len();
    let schedule = LrSchedule::from_flags(args.lr, args.cos, args.epochs, &args.schedule);
    if main {
        let ranks = if world > 1 {
            format!(
                " = {world} ranks ({}) x {}",
                ctx.group().map_or("", |g| g.backend()),
                ctx.batch_size()
            )
        } else {
            String::new()
        };
        println!(
            "=> {} {} on {} ({} images, {} iterations/epoch, batch {}{ranks}, seed {seed}, {workers} loader threads{})",
            if args.mhcl { "MHCL" } else { "MoCo v2" },
            args.arch,
            args.device,
            train_set.len(),
            iters,
            ctx.global_batch_size(),
            if world > 1 { " per rank" } else { "" }
        );
    }

    install_interrupt_handler();
    let mut metrics = if main {
        load_metrics(&metrics_path, start_epoch)
    } else {
        Vec::new()
    };
    let mut last_checkpoint = None;
    let mut skipped_reported = 0usize;
    let t_run = Instant::now();
    let train_device = state.model.device().clone();
    let plain_device = train_device.clone().inner();
    let show_bar = main && !args.no_progress && std::io::stderr().is_terminal();

    for epoch in start_epoch..args.epochs {
        let lr = schedule.lr(epoch);
        let bar = show_bar.then(|| {
            let b = ProgressBar::with_draw_target(Some(iters as u64), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix(format!("epoch {epoch}"));
            b
        });
        let out = Out { bar };
        let width = iters.to_string().len();
        let (mut batch_time, mut data_time) = (Meter::new(), Meter::new());
        let (mut top1, mut top5) = (Meter::new(), Meter::new());
        let mut loss_sum: Option<Tensor<1>> = None;
        let (mut loss_avg_printed, mut n_images) = (0.0f64, 0usize);
        let t_epoch = Instant::now();
        let mut t_last = Instant::now();
        let mut epoch_iter = loader.epoch(epoch as u64);
        let start_it = std::mem::take(&mut skip_iters);
        for _ in 0..start_it {
            // batches done before an interruption: their order and augmentations are fixed by
            // (seed, epoch), so skipping them resumes exactly
            if epoch_iter.next().is_none() {
                break;
            }
        }
        if let Some(b) = &out.bar {
            b.set_position(start_it as u64);
        }
        for it in start_it..iters {
            let stop_here = interrupted() || INTERRUPT_AT_STEP.load(Ordering::SeqCst) == state.step;
            // all ranks stop at the same step, whichever saw the request
            if ctx.any(stop_here)? {
                INTERRUPT_AT_STEP.store(u64::MAX, Ordering::SeqCst);
                drop(epoch_iter);
                let path = args.output_dir.join(INTERRUPTED_CHECKPOINT);
                if main {
                    state.save(&path, epoch, it)?;
                }
                if let Some(b) = &out.bar {
                    b.abandon();
                }
                clear_interrupt();
                return Err(MhclError::Interrupted {
                    checkpoint: main.then_some(path),
                });
            }
            let Some(batch) = epoch_iter.next() else {
                break;
            };
            let mut batch = batch.map_err(|e| MhclError::data(e.to_string()))?;
            // A batch that lost images to --skip-corrupt is skipped whole, on every rank: the
            // queue takes the same number of keys every step (K is a multiple of the batch, as
            // MoCo's assert requires).
            if args.skip_corrupt && ctx.any(batch.n < ctx.batch_size())? {
                t_last = Instant::now();
                continue;
            }
            data_time.update(t_last.elapsed().as_secs_f64(), 1.0);
            let n = batch.n;
            let im_q = data::view_tensor(&mut batch, 0, &train_device);
            let im_k = data::view_tensor(&mut batch, 1, &train_device);
            let mut rng = step_rng(seed, state.step);
            let stats =
                state
                    .model
                    .train_step(im_q, im_k, lr, &mut state.sgd, &mut rng, ctx.group())?;
            state.step += 1;
            n_images += n * world;
            top1.update(f64::from(stats.acc1), n as f64);
            top5.update(f64::from(stats.acc5), n as f64);
            let weighted = stats.loss.clone().mul_scalar(n as f64);
            loss_sum = Some(match loss_sum.take() {
                Some(s) => s.add(weighted),
                None => weighted,
            });
            batch_time.update(t_last.elapsed().as_secs_f64(), 1.0);
            t_last = Instant::now();
            let print = main && args.print_freq > 0 && it % args.print_freq == 0;
            if print {
                let loss = read_scalar(stats.loss)?;
                if !loss.is_finite() {
                    return Err(MhclError::NonFinite {
                        value: loss as f32,
                        epoch,
                        iter: it,
                    });
                }
                let done = (top1.count as usize).max(1);
                loss_avg_printed = read_scalar(loss_sum.clone().expect("set above"))? / done as f64;
                out.line(&format!(
                    "Epoch: [{epoch}][{it:>width$}/{iters}]\tTime {:6.3} ({:6.3})\tData {:6.3} ({:6.3})\tLoss {} ({})\tAcc@1 {:6.2} ({:6.2})\tAcc@5 {:6.2} ({:6.2})",
                    batch_time.val,
                    batch_time.avg(),
                    data_time.val,
                    data_time.avg(),
                    py_exp(loss, 4),
                    py_exp(loss_avg_printed, 4),
                    top1.val,
                    top1.avg(),
                    top5.val,
                    top5.avg()
                ));
            }
            if let Some(b) = &out.bar {
                let ips = n_images as f64 / t_epoch.elapsed().as_secs_f64().max(1e-9);
                b.set_message(format!(
                    "loss {loss_avg_printed:.4} acc@1 {:.2} lr {lr:.5} {ips:.1} img/s",
                    top1.avg()
                ));
                b.inc(1);
            }
        }
        drop(epoch_iter);
        if let Some(b) = &out.bar {
            b.finish_and_clear();
        }
        let seconds = t_epoch.elapsed().as_secs_f64();
        // epoch means over every rank's images (the progress lines are rank 0's, as the
        // reference prints them)
        let mut sums = [
            match loss_sum {
                Some(s) => read_scalar(s)?,
                None => f64::NAN,
            },
            top1.sum,
            top5.sum,
            top1.count,
        ];
        ctx.sum(&mut sums)?;
        let count = sums[3].max(1.0);
        let loss = sums[0] / count;
        if n_images > 0 && !loss.is_finite() {
            return Err(MhclError::NonFinite {
                value: loss as f32,
                epoch,
                iter: iters,
            });
        }
        if !main {
            continue;
        }
        let mut record = EpochMetrics {
            epoch,
            lr,
            loss,
            acc1: sums[1] / count,
            acc5: sums[2] / count,
            images_per_s: n_images as f64 / seconds.max(1e-9),
            seconds,
            wall_time: t_run.elapsed().as_secs_f64(),
            knn: None,
            skipped_images: data::skipped_images(&[(&*train_set, &loader)]),
        };
        data::report_skipped(&format!("epoch {epoch}"), &loader, &mut skipped_reported);
        let last = epoch + 1 == args.epochs;
        if let Some(val_set) = &knn_sets
            && ((epoch + 1) % args.knn_every == 0 || last)
        {
            let r = knn_monitor(
                state.model.encoder_q(),
                &train_set,
                val_set,
                args,
                &plain_device,
            )?;
            println!(
                "kNN (k={KNN_K}, T={KNN_T}) epoch {epoch}: acc@1 {:.2} acc@5 {:.2}",
                r.acc1, r.acc5
            );
            record.knn = Some(r);
        }
        println!(
            "pretrain epoch {epoch} lr {lr:.5} loss {:.4} acc@1 {:.2} acc@5 {:.2} {seconds:.1}s {:.1} img/s",
            record.loss, record.acc1, record.acc5, record.images_per_s
        );
        metrics.push(record);
        write_metrics(&metrics_path, &metrics)?;
        if last || args.save_epochs.contains(&epoch) {
            let path = args.output_dir.join(checkpoint_name(epoch));
            state.save(&path, epoch + 1, 0)?;
            println!("=> saved checkpoint '{}'", path.display());
            last_checkpoint = Some(path);
        }
    }
    Ok(PretrainOutcome {
        model: state.model,
        metrics,
        last_checkpoint,
        seed,
    })
}

fn knn_monitor(
    encoder: &ssl_models::MhclEncoder,
    train_set: &Arc<ssl_augment::ImageFolder>,
    val_set: &Arc<ssl_augment::ImageFolder>,
    args: &PretrainArgs,
    device: &Device,
) -> Result<KnnResult> {
    let eval = encoder.valid();
    let tf: Arc<dyn SampleTransform> =
        Arc::new(probe_eval_transform(args.image_size).map_err(|e| MhclError::arg(e.to_string()))?);
    let cfg = LoaderConfig::default()
        .with_batch_size(args.batch_size.max(1))
        .with_workers(data::effective_workers(args.workers))
        .with_shuffle(false);
    let train_loader = data::loader(Arc::clone(train_set), Arc::clone(&tf), cfg.clone())?;
    let val_loader = data::loader(Arc::clone(val_set), tf, cfg)?;
    let (tf_, tl) = data::extract_features(&train_loader, device, |x| eval.features(x))?;
    let (vf, vl) = data::extract_features(&val_loader, device, |x| eval.features(x))?;
    let classes = train_set.classes().len().max(val_set.classes().len());
    weighted_knn(tf_, &tl, vf, &vl, classes, KNN_K, KNN_T)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_exponent_format() {
        assert_eq!(py_exp(8.12345, 4), "8.1235e+00");
        assert_eq!(py_exp(0.000123, 4), "1.2300e-04");
        assert_eq!(py_exp(12345.0, 4), "1.2345e+04");
    }

    #[test]
    fn step_generators_differ_and_repeat() {
        use rand::RngExt;
        let a: u64 = step_rng(1, 5).random();
        assert_eq!(a, step_rng(1, 5).random::<u64>());
        assert_ne!(a, step_rng(1, 6).random::<u64>());
        assert_ne!(a, step_rng(2, 5).random::<u64>());
    }
}
