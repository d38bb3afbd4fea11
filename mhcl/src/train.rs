//! Pretraining: the loop of `main_mhcl.py`, run by [`Pretrainer`] from a [`PretrainConfig`].
//!
//! Per epoch: the learning rate of the schedule, one pass over `DATA/train` in batches of two
//! augmented crops (MoCo v2's augmentation or v1's), a [`Mhcl::train_step`] per batch. The
//! [`Observer`] hears every step (the loss is read back every `output.print_freq` steps), every
//! epoch's [`EpochMetrics`], the kNN monitor and every checkpoint. Written:
//! `checkpoint_{epoch:04}.safetensors` after the epochs of `output.save_epochs` and the last one
//! (the metrics file is the [`crate::observe::MetricsFile`] observer's).
//!
//! Random numbers: the weights and the queue come from the device generator seeded with
//! `seed`; the data order and augmentations of epoch `e` from `(seed, e)` (the loader's
//! per-sample generators); the draws of step `t` (λ, μ, the permutation, shuffle-BN) from
//! [`step_rng`]`(seed, t)`. A checkpoint therefore holds the whole random state as
//! `(seed, t)`, and resuming continues exactly: an interrupted and resumed run ends with the
//! same weights as an uninterrupted one.
//!
//! Data parallel ([`crate::dist`]): every rank runs this loop on its share of the data with
//! `batch_size / nproc_per_node` images per step, from rank 0's seed and weights; the step
//! gathers the keys of all ranks, averages the gradients and shuffles the keys across ranks
//! ([`Mhcl::train_step`] with the group). Only rank 0 calls the observer and saves checkpoints.
//!
//! A [`StopToken`] stops the run before its next step: it writes
//! `checkpoint_interrupted.safetensors` (resumable, mid-epoch) and returns
//! [`MhclError::Interrupted`].
//!
//! ```no_run
//! use mhcl::config::PretrainConfig;
//! use mhcl::observe::{MetricsFile, Observer, PrintLog};
//! use mhcl::train::Pretrainer;
//!
//! let mut config = PretrainConfig::default();
//! config.data.root = "scenes".into();
//! let mut observers: Vec<Box<dyn Observer>> = vec![
//!     Box::new(PrintLog::to_stdout()),
//!     Box::new(MetricsFile::new(config.output.metrics_path())),
//! ];
//! let outcome = Pretrainer::new(config)?.run(&mut observers)?;
//! println!("last checkpoint: {:?}", outcome.last_checkpoint);
//! # Ok::<(), mhcl::MhclError>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::prelude::*;
use ssl_augment::{ImageFolder, Loader, LoaderConfig};

use crate::checkpoint::{Checkpoint, CheckpointMeta, ModelMeta, RngState};
use crate::config::PretrainConfig;
use crate::data;
use crate::dist::RankCtx;
use crate::error::{MhclError, Result};
use crate::images::{self, ImageMode};
use crate::knn::{KNN_K, KNN_T, KnnResult, weighted_knn};
use crate::metrics::EpochMetrics;
use crate::model::{Mhcl, MhclConfig};
use crate::observe::{EpochStarted, Observer, RunStarted, Running, StepReport, StopToken};
use crate::optim::Sgd;
use crate::runner::Runner;

pub use crate::rng::step_rng;

/// File name of the checkpoint written after epoch `epoch` (0-based), as the reference's
/// `checkpoint_{:04d}.pth.tar`.
pub fn checkpoint_name(epoch: usize) -> String {
    format!("checkpoint_{epoch:04}.safetensors")
}

/// File name of the checkpoint written when a run is stopped.
pub const INTERRUPTED_CHECKPOINT: &str = "checkpoint_interrupted.safetensors";

/// What [`Pretrainer::run`] returns.
#[derive(Debug)]
pub struct PretrainOutcome {
    /// The trained model.
    pub model: Mhcl,
    /// Metrics of the epochs this run trained.
    pub metrics: Vec<EpochMetrics>,
    /// The last checkpoint written, if any.
    pub last_checkpoint: Option<PathBuf>,
    /// The seed used.
    pub seed: u64,
}

/// Runs one pretraining from a [`PretrainConfig`] (see the module docs):
/// `Pretrainer::new(config)?.run(&mut observer)`.
pub type Pretrainer = Runner<PretrainConfig>;

impl Runner<PretrainConfig> {
    /// Trains every rank this process hosts and returns rank 0's outcome; `observer` hears
    /// rank 0's events.
    pub fn run(&self, observer: &mut dyn Observer) -> Result<PretrainOutcome> {
        self.run_ranks("pretrain", observer, |ctx, obs| {
            RankRun::setup(&self.config, ctx, &self.stop, obs)?.train()
        })
    }
}

/// Model, optimizer and position of a rank.
struct RunState {
    seed: u64,
    model: Mhcl,
    sgd: Sgd,
    step: u64,
    /// `(ranks, images per rank and step)`: a checkpoint in mid-epoch resumes with these only.
    layout: (usize, usize),
}

/// One rank's run: set up by [`RankRun::setup`], trained by [`RankRun::train`].
struct RankRun<'a> {
    cfg: &'a PretrainConfig,
    ctx: &'a RankCtx<'a>,
    stop: &'a StopToken,
    obs: &'a mut dyn Observer,
    state: RunState,
    train_set: Arc<ImageFolder>,
    knn_set: Option<Arc<ImageFolder>>,
    mode: ImageMode,
    loader: Loader,
    start_epoch: usize,
    skip_iters: usize,
    skipped_reported: usize,
    t_run: Instant,
}

/// The running totals of one epoch.
struct EpochTotals {
    batch_time: Meter,
    data_time: Meter,
    top1: Meter,
    top5: Meter,
    loss_sum: Option<Tensor<1>>,
    last_loss: Option<Tensor<1>>,
    loss_avg: f64,
    images: usize,
    started: Instant,
}

impl<'a> RankRun<'a> {
    fn setup(
        cfg: &'a PretrainConfig,
        ctx: &'a RankCtx<'a>,
        stop: &'a StopToken,
        obs: &'a mut dyn Observer,
    ) -> Result<Self> {
        let listing = data::open_split(&cfg.data.root, "train")?;
        let bands = images::detect_split_bands(&listing, cfg.data.bands)?;
        let model = cfg.model.clone().with_in_channels(bands.unwrap_or(3));
        // read everything of a resume before building anything expensive
        let resume = match &cfg.resume {
            Some(path) => Some((path.clone(), read_resume(path, &model)?)),
            None => None,
        };
        let (train_set, knn_set) = open_datasets(cfg, ctx, obs, (listing, bands))?;
        let hint = resume
            .as_ref()
            .and_then(|(_, c)| images::recorded_band_stats(&c.meta.config));
        let (mode, computed) = images::resolve(&cfg.data, bands, &train_set, hint.as_ref())?;
        // data parallel: rank i uses GPU i of its node, as the reference
        let device = cfg.device.open(ctx.device_index())?;
        if ctx.is_main() {
            data::ensure_writable_dir(&cfg.output.dir)?;
            if computed {
                let path = cfg.output.dir.join(images::BAND_STATS_FILE);
                images::write_band_stats(&path, &mode.stats())?;
                let shown = path.display();
                obs.notice(&format!(
                    "=> band statistics of {} images written to {shown} (--band-stats {shown} \
                     reuses them)",
                    train_set.len()
                ))?;
            }
        }
        let seed = match (&resume, cfg.seed) {
            (Some((_, c)), _) => c.meta.rng.seed,
            (None, Some(s)) => s,
            (None, None) => rand::random::<u64>() >> 11,
        };
        // every rank trains with rank 0's seed (the same data order, augmentations and draws)
        let seed = ctx.broadcast_seed(seed)?;
        let mut state = build_state(cfg, model, &device, seed, ctx)?;
        let (mut start_epoch, mut skip_iters) = (cfg.training.start_epoch, 0);
        if let Some((path, ckpt)) = &resume {
            (start_epoch, skip_iters) = apply_resume(&mut state, path, ckpt, cfg)?;
            if cfg.seed.is_some_and(|s| s != seed) {
                obs.notice(&format!(
                    "=> seed ignored: resuming with the checkpoint's seed {seed}"
                ))?;
            }
            obs.notice(&format!(
                "=> loaded checkpoint '{}' (epoch {start_epoch}, iteration {skip_iters})",
                path.display()
            ))?;
        }
        if ctx.group().is_some() {
            // identical start on every rank: rank 0's weights, queue and optimizer state
            let tensors = ctx.broadcast_tensors(state.model.state(&state.sgd)?)?;
            if !ctx.is_main() {
                state.model.load_state(&tensors, &mut state.sgd)?;
            }
        }
        let loader = train_loader(cfg, ctx, &mode, &train_set, seed)?;
        Ok(Self {
            cfg,
            ctx,
            stop,
            obs,
            state,
            train_set,
            knn_set,
            mode,
            loader,
            start_epoch,
            skip_iters,
            skipped_reported: 0,
            t_run: Instant::now(),
        })
    }

    fn train(mut self) -> Result<PretrainOutcome> {
        let schedule = self.cfg.training.lr_schedule();
        self.obs.run_started(&RunStarted {
            description: self.description(),
            start_epoch: self.start_epoch,
            epochs: self.cfg.training.epochs,
            iters_per_epoch: self.loader.len(),
            seed: self.state.seed,
        })?;
        let (mut metrics, mut last_checkpoint) = (Vec::new(), None);
        for epoch in self.start_epoch..self.cfg.training.epochs {
            let lr = schedule.lr(epoch);
            let totals = self.run_epoch(epoch, lr)?;
            if let Some((record, saved)) = self.finish_epoch(epoch, lr, totals)? {
                metrics.push(record);
                last_checkpoint = saved.or(last_checkpoint);
            }
        }
        Ok(PretrainOutcome {
            model: self.state.model,
            metrics,
            last_checkpoint,
            seed: self.state.seed,
        })
    }

    /// The first line of the run.
    fn description(&self) -> String {
        let (cfg, ctx) = (self.cfg, self.ctx);
        let world = ctx.world_size();
        let ranks = if world > 1 {
            format!(
                " = {world} ranks ({}) x {}",
                ctx.group().map_or("", |g| g.backend()),
                ctx.batch_size()
            )
        } else {
            String::new()
        };
        format!(
            "=> {} {} on {} ({} {} images, {} iterations/epoch, batch {}{ranks}, seed {}, {} loader threads{})",
            if cfg.model.mhcl { "MHCL" } else { "MoCo v2" },
            cfg.model.arch,
            cfg.device,
            self.train_set.len(),
            self.mode.describe(),
            self.loader.len(),
            ctx.global_batch_size(),
            self.state.seed,
            data::effective_workers(ctx.layout().workers),
            if world > 1 { " per rank" } else { "" }
        )
    }

    /// The steps of one epoch.
    fn run_epoch(&mut self, epoch: usize, lr: f64) -> Result<EpochTotals> {
        let iters = self.loader.len();
        let first = std::mem::take(&mut self.skip_iters);
        self.obs.epoch_started(&EpochStarted {
            epoch,
            lr,
            iters,
            first_iter: first,
            phase: "epoch",
        })?;
        let loader = &self.loader;
        let mut batches = loader.epoch(epoch as u64);
        // batches done before an interruption: their order and augmentations are fixed by
        // (seed, epoch), so skipping them resumes exactly
        for _ in 0..first {
            if batches.next().is_none() {
                break;
            }
        }
        let mut totals = EpochTotals::new();
        let mut t_last = Instant::now();
        for it in first..iters {
            // all ranks stop at the same step, whichever saw the request
            if self.ctx.any(self.stop.stops_before(self.state.step))? {
                drop(batches);
                return Err(self.interrupt(epoch, it)?);
            }
            let Some(batch) = batches.next() else {
                break;
            };
            let mut batch = batch?;
            // A batch that lost images to skip_corrupt is skipped whole, on every rank: the
            // queue takes the same number of keys every step (K is a multiple of the batch,
            // as MoCo's assert requires).
            if self.cfg.data.skip_corrupt && self.ctx.any(batch.n < self.ctx.batch_size())? {
                t_last = Instant::now();
                continue;
            }
            totals.data_time.update(t_last.elapsed().as_secs_f64(), 1.0);
            self.step(&mut batch, lr, &mut totals, t_last)?;
            t_last = Instant::now();
            self.report_step(epoch, it, iters, lr, &mut totals)?;
        }
        drop(batches);
        self.obs.epoch_steps_done(epoch)?;
        Ok(totals)
    }

    /// One training step on `batch`.
    fn step(
        &mut self,
        batch: &mut ssl_augment::Batch,
        lr: f64,
        totals: &mut EpochTotals,
        t_last: Instant,
    ) -> Result<()> {
        let device = self.state.model.device().clone();
        let n = batch.n;
        let im_q = data::view_tensor(batch, 0, &device);
        let im_k = data::view_tensor(batch, 1, &device);
        let mut rng = step_rng(self.state.seed, self.state.step);
        let (model, sgd) = (&mut self.state.model, &mut self.state.sgd);
        let stats = model.train_step(im_q, im_k, lr, sgd, &mut rng, self.ctx.group())?;
        self.state.step += 1;
        totals.images += n * self.ctx.world_size();
        totals.top1.update(f64::from(stats.acc1), n as f64);
        totals.top5.update(f64::from(stats.acc5), n as f64);
        let weighted = stats.loss.clone().mul_scalar(n as f64);
        totals.loss_sum = Some(match totals.loss_sum.take() {
            Some(s) => s.add(weighted),
            None => weighted,
        });
        totals.last_loss = Some(stats.loss);
        totals
            .batch_time
            .update(t_last.elapsed().as_secs_f64(), 1.0);
        Ok(())
    }

    /// The step's report; on `print_freq` steps the loss is read back and checked.
    fn report_step(
        &mut self,
        epoch: usize,
        it: usize,
        iters: usize,
        lr: f64,
        totals: &mut EpochTotals,
    ) -> Result<()> {
        let freq = self.cfg.output.print_freq;
        let logged = self.ctx.is_main() && freq > 0 && it.is_multiple_of(freq);
        let mut loss = None;
        if logged {
            let val = read_scalar(totals.last_loss.clone().expect("set by the step"))?;
            if !val.is_finite() {
                return Err(MhclError::NonFinite {
                    value: val as f32,
                    epoch,
                    iter: it,
                });
            }
            let done = (totals.top1.count as usize).max(1);
            totals.loss_avg =
                read_scalar(totals.loss_sum.clone().expect("set by the step"))? / done as f64;
            loss = Some(Running {
                val,
                avg: totals.loss_avg,
            });
        }
        self.obs.step(&StepReport {
            epoch,
            iter: it,
            iters,
            lr,
            logged,
            loss,
            acc1: Some(totals.top1.running()),
            acc5: Some(totals.top5.running()),
            batch_time: Some(totals.batch_time.running()),
            data_time: Some(totals.data_time.running()),
            images_per_s: totals.images as f64 / totals.started.elapsed().as_secs_f64().max(1e-9),
        })
    }

    /// Writes the mid-epoch checkpoint of a stop request and returns the error that ends the
    /// run.
    fn interrupt(&mut self, epoch: usize, it: usize) -> Result<MhclError> {
        let path = self.cfg.output.dir.join(INTERRUPTED_CHECKPOINT);
        let main = self.ctx.is_main();
        if main {
            self.save(&path, epoch, it)?;
        }
        let checkpoint = main.then_some(path);
        self.obs.stopped(checkpoint.as_deref())?;
        Ok(MhclError::Interrupted { checkpoint })
    }

    /// Epoch means over every rank's images, the kNN monitor and the checkpoint; rank 0's
    /// record and the checkpoint saved, if any.
    fn finish_epoch(
        &mut self,
        epoch: usize,
        lr: f64,
        totals: EpochTotals,
    ) -> Result<Option<(EpochMetrics, Option<PathBuf>)>> {
        let seconds = totals.started.elapsed().as_secs_f64();
        let mut sums = [
            match totals.loss_sum {
                Some(s) => read_scalar(s)?,
                None => f64::NAN,
            },
            totals.top1.sum,
            totals.top5.sum,
            totals.top1.count,
        ];
        self.ctx.sum(&mut sums)?;
        let count = sums[3].max(1.0);
        let loss = sums[0] / count;
        if totals.images > 0 && !loss.is_finite() {
            let iter = self.loader.len();
            return Err(MhclError::NonFinite {
                value: loss as f32,
                epoch,
                iter,
            });
        }
        if !self.ctx.is_main() {
            return Ok(None);
        }
        let mut record = EpochMetrics {
            epoch,
            lr,
            loss,
            acc1: sums[1] / count,
            acc5: sums[2] / count,
            images_per_s: totals.images as f64 / seconds.max(1e-9),
            seconds,
            wall_time: self.t_run.elapsed().as_secs_f64(),
            knn: None,
            skipped_images: data::skipped_images(&[(&*self.train_set, &self.loader)]),
        };
        let what = format!("epoch {epoch}");
        if let Some(line) = data::skipped_notice(&what, &self.loader, &mut self.skipped_reported) {
            self.obs.notice(&line)?;
        }
        let last = epoch + 1 == self.cfg.training.epochs;
        if let Some(val_set) = &self.knn_set
            && ((epoch + 1).is_multiple_of(self.cfg.knn_every) || last)
        {
            let device = self.state.model.device().clone().inner();
            let encoder = self.state.model.encoder_q();
            let r = knn_monitor(
                encoder,
                &self.mode,
                &self.train_set,
                val_set,
                self.cfg,
                &device,
            )?;
            self.obs.knn(epoch, &r)?;
            record.knn = Some(r);
        }
        self.obs.pretrain_epoch(&record)?;
        let mut saved = None;
        if last || self.cfg.output.save_epochs.contains(&epoch) {
            let path = self.cfg.output.dir.join(checkpoint_name(epoch));
            self.save(&path, epoch + 1, 0)?;
            self.obs.checkpoint_saved(&path)?;
            saved = Some(path);
        }
        Ok(Some((record, saved)))
    }

    fn save(&self, path: &Path, epoch: usize, iteration: usize) -> Result<()> {
        let state = &self.state;
        let mut meta = CheckpointMeta::new(self.cfg.model.arch.name());
        meta.epoch = epoch;
        meta.iteration = iteration;
        meta.model = Some(state.model.config().meta());
        meta.rng = RngState {
            seed: state.seed,
            step: state.step,
        };
        let mut stored = self.cfg.clone();
        stored.data = self.mode.record(&self.cfg.data);
        meta.config = serde_json::to_value(&stored).expect("a config is plain JSON");
        meta.kind = "pretrain".into();
        meta.extra = serde_json::json!({
            "world_size": state.layout.0,
            "batch_per_rank": state.layout.1,
        });
        let mut c = Checkpoint::new(meta);
        c.tensors = state.model.state(&state.sgd)?;
        c.write_atomic(path)
    }
}

/// `DATA/train` (from its `listing`) and, for the kNN monitor on rank 0, `DATA/val`, read as
/// `bands` bands (`None`: RGB).
fn open_datasets(
    cfg: &PretrainConfig,
    ctx: &RankCtx,
    obs: &mut dyn Observer,
    (listing, bands): (ImageFolder, Option<usize>),
) -> Result<(Arc<ImageFolder>, Option<Arc<ImageFolder>>)> {
    let train_set = Arc::new(data::checked(listing, cfg.data.image_checks(), bands)?);
    if let Some(line) = data::prescan_notice(&train_set) {
        obs.notice(&line)?;
    }
    if train_set.len() < ctx.global_batch_size() {
        return Err(MhclError::arg(format!(
            "batch size {} is larger than the dataset ({} images in {}); use a smaller batch",
            ctx.global_batch_size(),
            train_set.len(),
            cfg.data.root.join("train").display()
        )));
    }
    let knn_set = if cfg.knn_every > 0 && ctx.is_main() {
        Some(Arc::new(data::open_split_bands(
            &cfg.data.root,
            "val",
            bands,
        )?))
    } else {
        None
    };
    Ok((train_set, knn_set))
}

/// The checkpoint at `path`, checked against the model `model` builds: a mismatch names the
/// first config key that differs.
fn read_resume(path: &Path, model: &MhclConfig) -> Result<Checkpoint> {
    let ckpt = Checkpoint::read(path)?;
    let want = model.meta();
    let Some(found) = &ckpt.meta.model else {
        return Err(MhclError::checkpoint(path, "holds no pretraining model"));
    };
    if let Some((key, there, here)) = model_difference(found, &want) {
        let why = match key {
            "in_channels" => format!("its stem takes {there} bands, but the images have {here}"),
            _ => format!("model.{key} is {there} there, but {here} in this run"),
        };
        return Err(MhclError::checkpoint(path, why));
    }
    Ok(ckpt)
}

/// The first field in which two model descriptions differ: `(config key, a's, b's)`.
fn model_difference(a: &ModelMeta, b: &ModelMeta) -> Option<(&'static str, String, String)> {
    let fields: [(&str, String, String); 7] = [
        ("arch", a.arch.clone(), b.arch.clone()),
        (
            "in_channels",
            a.in_channels.to_string(),
            b.in_channels.to_string(),
        ),
        ("width", a.width.to_string(), b.width.to_string()),
        ("dim", a.dim.to_string(), b.dim.to_string()),
        ("mlp", a.mlp.to_string(), b.mlp.to_string()),
        ("mhcl", a.mhcl.to_string(), b.mhcl.to_string()),
        (
            "queue_len",
            a.queue_len.to_string(),
            b.queue_len.to_string(),
        ),
    ];
    fields.into_iter().find(|(_, x, y)| x != y)
}

/// Builds the model from `seed` and the optimizer (one rank at a time, see [`crate::dist`]:
/// ranks that are threads share the device's generator).
fn build_state(
    cfg: &PretrainConfig,
    model: MhclConfig,
    device: &Device,
    seed: u64,
    ctx: &RankCtx,
) -> Result<RunState> {
    Ok(RunState {
        seed,
        model: crate::dist::seeded_init(device, seed, || Mhcl::new(model, device))?,
        sgd: cfg.training.sgd.clone().init()?,
        step: 0,
        layout: (ctx.world_size(), ctx.batch_size()),
    })
}

/// Loads a checkpoint into `state`; returns `(epoch, iteration)` to continue at.
fn apply_resume(
    state: &mut RunState,
    path: &Path,
    ckpt: &Checkpoint,
    cfg: &PretrainConfig,
) -> Result<(usize, usize)> {
    state
        .model
        .load_state(&ckpt.tensors, &mut state.sgd)
        .map_err(|e| MhclError::checkpoint(path, e.to_string()))?;
    state.step = ckpt.meta.rng.step;
    let (epoch, iteration) = (ckpt.meta.epoch, ckpt.meta.iteration);
    let written = (
        ckpt.meta.extra["world_size"].as_u64().unwrap_or(1) as usize,
        ckpt.meta.extra["batch_per_rank"]
            .as_u64()
            .map_or(cfg.training.batch_size, |b| b as usize),
    );
    if iteration > 0 && written != state.layout {
        return Err(MhclError::checkpoint(
            path,
            format!(
                "was written in mid-epoch by {} rank(s) x batch {}; resume it with the same \
                 layout (this run: {} x {}), or resume from an epoch checkpoint",
                written.0, written.1, state.layout.0, state.layout.1
            ),
        ));
    }
    Ok((epoch, iteration))
}

fn train_loader(
    cfg: &PretrainConfig,
    ctx: &RankCtx,
    mode: &ImageMode,
    train_set: &Arc<ImageFolder>,
    seed: u64,
) -> Result<Loader> {
    mode.pretrain_loader(
        train_set,
        cfg.augmentation,
        cfg.data.image_size,
        LoaderConfig::default()
            .with_batch_size(ctx.batch_size())
            .with_workers(data::effective_workers(ctx.layout().workers))
            .with_seed(seed)
            .with_shuffle(true)
            .with_drop_last(true)
            .with_rank(ctx.rank(), ctx.world_size())
            .with_prefetch(2),
    )
}

/// MoCo's `AverageMeter`.
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
    fn running(&self) -> Running {
        Running {
            val: self.val,
            avg: self.avg(),
        }
    }
}

impl EpochTotals {
    fn new() -> Self {
        Self {
            batch_time: Meter::new(),
            data_time: Meter::new(),
            top1: Meter::new(),
            top5: Meter::new(),
            loss_sum: None,
            last_loss: None,
            loss_avg: 0.0,
            images: 0,
            started: Instant::now(),
        }
    }
}

pub(crate) fn read_scalar(t: Tensor<1>) -> Result<f64> {
    let v: f32 = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| MhclError::readback("the loss", e))?
        .first()
        .copied()
        .unwrap_or(f32::NAN);
    Ok(f64::from(v))
}

/// Weighted kNN accuracy of the query encoder's features of `val_set` against `train_set`.
fn knn_monitor(
    encoder: &ssl_models::MhclEncoder,
    mode: &ImageMode,
    train_set: &Arc<ImageFolder>,
    val_set: &Arc<ImageFolder>,
    cfg: &PretrainConfig,
    device: &Device,
) -> Result<KnnResult> {
    let eval = encoder.valid();
    let loader_cfg = LoaderConfig::default()
        .with_batch_size(cfg.training.batch_size.max(1))
        .with_workers(data::effective_workers(cfg.data.workers))
        .with_shuffle(false);
    let size = cfg.data.image_size;
    let train_loader = mode.eval_loader(train_set, size, loader_cfg.clone())?;
    let val_loader = mode.eval_loader(val_set, size, loader_cfg)?;
    let (tf_, tl) = data::extract_features(&train_loader, device, |x| eval.features(x))?;
    let (vf, vl) = data::extract_features(&val_loader, device, |x| eval.features(x))?;
    let classes = train_set.classes().len().max(val_set.classes().len());
    weighted_knn(tf_, &tl, vf, &vl, classes, KNN_K, KNN_T)
}
