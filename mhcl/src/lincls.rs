//! `mhcl lincls`: linear classification on frozen features (`main_lincls.py`'s protocol).
//!
//! The backbone (`-a`, weights from `--pretrained`: our pretraining checkpoints, an encoder
//! saved as safetensors, or an original PyTorch MHCL / MoCo `checkpoint_XXXX.pth.tar`; random
//! init without it) is frozen and kept in eval mode: BatchNorm uses its running statistics. A
//! new `fc` Linear(d, classes) with weight ~ N(0, 0.01) and bias 0 is trained with SGD
//! (`--lr` 0.1, momentum 0.9, `--wd` 0) and cross-entropy; the learning rate is multiplied by
//! 0.1 at each `--schedule` epoch (default 60 80) or follows `--cos`. Training crops:
//! RandomResizedCrop(size) + horizontal flip; validation: Resize(round(size * 256 / 224)) +
//! CenterCrop(size).
//!
//! With a frozen eval-mode backbone and a deterministic validation transform the validation
//! features never change, so they are computed once and cached: each epoch's evaluation is then
//! one matrix product, with exactly the values a full forward would give.
//!
//! Each epoch prints `best acc1: X best acc5: Y` (best of each over the epochs so far) and
//! writes `OUTPUT_DIR/lincls_checkpoint.safetensors` (`lincls_best.safetensors` when acc@1
//! improves); the end writes `OUTPUT_DIR/lincls_summary.json` (best and final accuracies,
//! per-class accuracy, confusion matrix, history) and `OUTPUT_DIR/lincls_curves.png`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use ssl_augment::{ImageFolder, Loader, LoaderConfig};
use ssl_models::weights::{
    LoadOptions, RawTensor, STEM_WEIGHT, TensorMap, load_tensors, module_tensors,
};
use ssl_models::{Arch, LinearClassifier, LinearClassifierConfig, ResNet, ResNetConfig};

use crate::checkpoint::{Checkpoint, CheckpointMeta, FORMAT};
use crate::config::LinclsConfig;
use crate::data;
use crate::dist::RankCtx;
use crate::error::{MhclError, Result};
use crate::images::{self, ImageMode};
use crate::metrics::{LinclsEpoch, LinclsSummary};
use crate::observe::{EpochStarted, Observer, Running, StepReport, StopToken};
use crate::optim::{MomentumBuffer, Sgd};
use crate::runner::Runner;
use crate::train::read_scalar;

/// File names written to the output folder.
pub const SUMMARY_FILE: &str = "lincls_summary.json";
/// Probe checkpoint (last epoch).
pub const CHECKPOINT_FILE: &str = "lincls_checkpoint.safetensors";
/// Probe checkpoint of the best epoch.
pub const BEST_FILE: &str = "lincls_best.safetensors";
/// Curves of the train loss and validation accuracy.
pub const CURVES_FILE: &str = "lincls_curves.png";

/// Accuracy of logits against labels: `(acc1, acc5, per-class correct, confusion)`.
struct Eval {
    acc1: f64,
    acc5: f64,
    confusion: Vec<Vec<usize>>,
}

fn evaluate(logits: &[f32], labels: &[usize], classes: usize) -> Eval {
    let n = labels.len();
    let mut confusion = vec![vec![0usize; classes]; classes];
    let (mut c1, mut c5) = (0usize, 0usize);
    for (i, &y) in labels.iter().enumerate() {
        let row = &logits[i * classes..(i + 1) * classes];
        let target = row[y];
        // ties go to the target, as ssl_losses::topk_accuracy
        let above = row.iter().filter(|&&v| v > target).count();
        c1 += usize::from(above < 1);
        c5 += usize::from(above < 5);
        let pred = row
            .iter()
            .enumerate()
            .fold(0, |best, (j, &v)| if v > row[best] { j } else { best });
        confusion[y][pred] += 1;
    }
    Eval {
        acc1: 100.0 * c1 as f64 / n.max(1) as f64,
        acc5: 100.0 * c5 as f64 / n.max(1) as f64,
        confusion,
    }
}

/// Architecture and width of a ResNet state dict, from its tensor names and `conv1.weight`.
pub fn infer_arch(tensors: &TensorMap) -> Option<(Arch, usize)> {
    let width = tensors.get("conv1.weight")?.shape.first().copied()?;
    let bottleneck = tensors.contains_key("layer1.0.conv3.weight");
    let blocks = |layer: usize| {
        (0..)
            .take_while(|i| tensors.contains_key(&format!("layer{layer}.{i}.conv1.weight")))
            .count()
    };
    let counts = [blocks(1), blocks(2), blocks(3), blocks(4)];
    Arch::NAMES
        .iter()
        .filter_map(|n| Arch::from_name(n).ok())
        .find_map(|a| {
            (a.blocks() == counts && a.is_bottleneck() == bottleneck).then_some((a, width))
        })
}

/// What `--pretrained` / `--resume` point at, read into backbone tensors (PyTorch names,
/// no prefix) and, for a probe checkpoint, the `fc` and optimizer tensors and metadata.
struct Loaded {
    backbone: TensorMap,
    fc: Option<TensorMap>,
    optimizer: Vec<MomentumBuffer>,
    meta: Option<CheckpointMeta>,
}

fn strip(tensors: TensorMap, prefix: &str) -> TensorMap {
    tensors
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v)))
        .collect()
}

fn read_weights(path: &Path) -> Result<Loaded> {
    let is_safetensors = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if !path.is_file() {
        return Err(MhclError::checkpoint(path, "no such file"));
    }
    if is_safetensors {
        let (tensors, info) = ssl_models::weights::read_safetensors(path).map_err(|e| {
            MhclError::checkpoint(path, format!("{e} (corrupt or truncated file?)"))
        })?;
        if info.get("format").map(String::as_str) == Some(FORMAT) {
            let meta =
                Checkpoint::parse_metadata(&info).map_err(|m| MhclError::checkpoint(path, m))?;
            if meta.kind == "lincls" {
                let fc = Some(strip(tensors.clone(), "fc."));
                let optimizer = strip(tensors.clone(), "optimizer.")
                    .into_iter()
                    .map(|(name, t)| MomentumBuffer {
                        name,
                        shape: t.shape.clone(),
                        values: t.to_f32(),
                    })
                    .collect();
                let backbone = tensors
                    .into_iter()
                    .filter(|(k, _)| !k.starts_with("fc.") && !k.starts_with("optimizer."))
                    .collect();
                return Ok(Loaded {
                    backbone,
                    fc,
                    optimizer,
                    meta: Some(meta),
                });
            }
            return Ok(Loaded {
                backbone: strip(tensors, "encoder_q."),
                fc: None,
                optimizer: Vec::new(),
                meta: Some(meta),
            });
        }
        return Ok(Loaded {
            backbone: unprefix(tensors),
            fc: None,
            optimizer: Vec::new(),
            meta: None,
        });
    }
    let tensors = match ssl_models::weights::read_pytorch(path, Some("state_dict")) {
        Ok(t) => t,
        Err(_) => ssl_models::weights::read_pytorch(path, None).map_err(|e| {
            MhclError::checkpoint(path, format!("{e} (corrupt or not a PyTorch file?)"))
        })?,
    };
    Ok(Loaded {
        backbone: unprefix(tensors),
        fc: None,
        optimizer: Vec::new(),
        meta: None,
    })
}

/// Removes the DDP / MoCo prefixes of an encoder's names.
fn unprefix(tensors: TensorMap) -> TensorMap {
    for prefix in ["module.encoder_q.", "encoder_q.", "module."] {
        if tensors.keys().any(|k| k.starts_with(prefix)) {
            return strip(tensors, prefix);
        }
    }
    tensors
}

/// The probe's backbone for `in_channels` bands: random, or loaded from a checkpoint. An RGB
/// checkpoint loads into a stem of other bands by [`ssl_models::weights::adapt_input_conv`]'s
/// rule; the line saying so is returned with the network.
fn build_backbone(
    arch: Arch,
    width_flag: Option<usize>,
    in_channels: usize,
    loaded: Option<(&Path, &Loaded)>,
    device: &Device,
) -> Result<(ResNet, Option<String>)> {
    let Some((path, loaded)) = loaded else {
        let net = ResNetConfig::new(arch)
            .with_width(width_flag.unwrap_or(64))
            .with_in_channels(in_channels)
            .try_init(device)?;
        return Ok((net, None));
    };
    let (found_arch, width) = infer_arch(&loaded.backbone).ok_or_else(|| {
        MhclError::checkpoint(
            path,
            "holds no ResNet encoder (no conv1.weight / layer tensors)",
        )
    })?;
    if found_arch != arch {
        return Err(MhclError::checkpoint(
            path,
            format!("holds a {found_arch} encoder (width {width}), but arch (-a) is {arch}"),
        ));
    }
    if let Some(w) = width_flag
        && w != width
    {
        return Err(MhclError::checkpoint(
            path,
            format!("holds a {found_arch} of width {width}, but width (--width) is {w}"),
        ));
    }
    let stem = loaded.backbone[STEM_WEIGHT]
        .shape
        .get(1)
        .copied()
        .unwrap_or(0);
    if stem != in_channels && stem != 3 {
        return Err(MhclError::checkpoint(
            path,
            format!("its stem takes {stem} bands, but the images have {in_channels}"),
        ));
    }
    let net = ResNetConfig::new(arch)
        .with_width(width)
        .with_in_channels(in_channels)
        .try_init(device)?;
    let options = LoadOptions::new()
        .probe_backbone()
        .with_adapt_input_conv(true);
    let (net, report) = load_tensors(net, loaded.backbone.clone(), &options)
        .map_err(|e| MhclError::checkpoint(path, e.to_string()))?;
    if report.applied.is_empty() {
        return Err(MhclError::checkpoint(path, "no backbone tensor was loaded"));
    }
    let adapted = (!report.adapted.is_empty()).then(|| {
        format!(
            "=> {}: RGB stem adapted to {in_channels} bands (filters repeated over the bands, \
             scaled by 3/{in_channels})",
            path.display()
        )
    });
    Ok((net, adapted))
}

fn save_probe(
    path: &Path,
    probe: &ProbeState,
    cfg: &LinclsConfig,
    epoch: usize,
    extra: serde_json::Value,
) -> Result<()> {
    let mut meta = CheckpointMeta::new(cfg.arch.name());
    meta.epoch = epoch;
    meta.kind = "lincls".into();
    meta.extra = extra;
    meta.config = serde_json::to_value(cfg).expect("a config is plain JSON");
    let mut c = Checkpoint::new(meta);
    c.tensors = module_tensors(&probe.backbone)?;
    c.insert_prefixed("fc.", module_tensors(&probe.fc)?);
    for b in probe.sgd.buffers()? {
        c.insert(
            format!("optimizer.fc.{}", b.name),
            RawTensor::f32(b.shape, b.values),
        );
    }
    c.write_atomic(path)
}

/// Runs one linear probe from a [`LinclsConfig`]: `LinearProbe::new(config)?.run(&mut
/// observer)`.
///
/// Data parallel as [`crate::train::Pretrainer`]: every rank trains the same `fc` on its share
/// of DATA/train with gradients averaged, and extracts the validation features of its share of
/// DATA/val (gathered, so every rank evaluates all of them); rank 0 calls the observer and
/// writes the checkpoints and the summary. A [`StopToken`] stops it after the current epoch.
pub type LinearProbe = Runner<LinclsConfig>;

impl Runner<LinclsConfig> {
    /// Trains (or, with `evaluate`, evaluates) every rank this process hosts and returns rank
    /// 0's summary.
    pub fn run(&self, observer: &mut dyn Observer) -> Result<LinclsSummary> {
        self.run_ranks("lincls", observer, |ctx, obs| {
            ProbeRank::setup(&self.config, ctx, &self.stop, obs)?.run()
        })
    }
}

/// The frozen backbone, the trained `fc` layer and its optimizer.
struct ProbeState {
    backbone: ResNet,
    fc: LinearClassifier,
    sgd: Sgd,
}

/// `pretrained` and `resume`, read.
struct Sources {
    pretrained: Option<(PathBuf, Loaded)>,
    resume: Option<(PathBuf, Loaded)>,
}

/// One rank's probe: set up by [`ProbeRank::setup`], run by [`ProbeRank::run`].
struct ProbeRank<'a> {
    cfg: &'a LinclsConfig,
    ctx: &'a RankCtx<'a>,
    stop: &'a StopToken,
    obs: &'a mut dyn Observer,
    probe: ProbeState,
    train_set: Arc<ImageFolder>,
    val_set: Arc<ImageFolder>,
    mode: ImageMode,
    val_loader: Loader,
    val_feats: Tensor<2>,
    val_labels: Vec<usize>,
    device: Device,
    seed: u64,
    start_epoch: usize,
    history: Vec<LinclsEpoch>,
    t_run: Instant,
}

impl<'a> ProbeRank<'a> {
    fn setup(
        cfg: &'a LinclsConfig,
        ctx: &'a RankCtx<'a>,
        stop: &'a StopToken,
        obs: &'a mut dyn Observer,
    ) -> Result<Self> {
        let t_run = Instant::now();
        let listing = data::open_split(&cfg.data.root, "train")?;
        let bands = images::detect_split_bands(&listing, cfg.data.bands)?;
        let (train_set, val_set) = open_probe_data(cfg, obs, (listing, bands))?;
        let sources = read_sources(cfg)?;
        let hint = [&sources.resume, &sources.pretrained]
            .into_iter()
            .flatten()
            .find_map(|(_, l)| l.meta.as_ref())
            .and_then(|m| images::recorded_band_stats(&m.config));
        let (mode, computed) = images::resolve(&cfg.data, bands, &train_set, hint.as_ref())?;
        let device = cfg.device.open(ctx.device_index())?;
        if ctx.is_main() {
            data::ensure_writable_dir(&cfg.output_dir)?;
            if computed {
                let path = cfg.output_dir.join(images::BAND_STATS_FILE);
                images::write_band_stats(&path, &mode.stats())?;
                obs.notice(&format!(
                    "=> band statistics of {} images written to {}",
                    train_set.len(),
                    path.display()
                ))?;
            }
        }
        let seed = ctx.broadcast_seed(cfg.seed.unwrap_or_else(|| rand::random::<u64>() >> 11))?;
        let classes = train_set.classes().len();
        let (mut probe, adapted) =
            build_probe(cfg, &sources, classes, mode.channels(), &device, seed, ctx)?;
        if let Some(notice) = &adapted {
            obs.notice(notice)?;
        }
        let (mut start_epoch, mut history) = (cfg.training.start_epoch, Vec::new());
        if let Some((path, loaded)) = &sources.resume {
            (start_epoch, history) = apply_probe_resume(&mut probe, path, loaded)?;
            obs.notice(&format!(
                "=> loaded probe checkpoint '{}' (epoch {start_epoch})",
                path.display()
            ))?;
        }
        if let Some((p, _)) = &sources.pretrained {
            obs.notice(&format!(
                "=> loaded pretrained weights from '{}'",
                p.display()
            ))?;
        }
        let val_loader = mode.eval_loader(
            &val_set,
            cfg.data.image_size,
            LoaderConfig::default()
                .with_batch_size(ctx.batch_size())
                .with_workers(data::effective_workers(ctx.layout().workers))
                .with_shuffle(false)
                .with_rank(ctx.rank(), ctx.world_size()),
        )?;
        // The backbone is frozen and in eval mode and the transform is deterministic: the
        // validation features are the same every epoch, so compute them once.
        let eval_backbone = probe.backbone.valid();
        let (val_feats, val_labels) =
            extract_all_features(&val_loader, val_set.len(), ctx, &device, |x| {
                eval_backbone.pooled(x)
            })?;
        Ok(Self {
            cfg,
            ctx,
            stop,
            obs,
            probe,
            train_set,
            val_set,
            mode,
            val_loader,
            val_feats,
            val_labels,
            device,
            seed,
            start_epoch,
            history,
            t_run,
        })
    }

    fn run(mut self) -> Result<LinclsSummary> {
        if self.cfg.evaluate {
            let e = self.val_eval()?;
            let summary = self.summary(&e, None);
            if self.ctx.is_main() {
                write_summary(&self.cfg.output_dir, &summary)?;
                self.obs.probe_finished(&summary)?;
            }
            return Ok(summary);
        }
        let train_loader = self.train_loader()?;
        self.obs.notice(&self.description())?;
        let schedule = self.cfg.training.lr_schedule();
        let mut last_eval = None;
        for epoch in self.start_epoch..self.cfg.training.epochs {
            let lr = schedule.lr(epoch);
            let t0 = Instant::now();
            let train_loss = self.train_epoch(&train_loader, epoch, lr)?;
            let e = self.val_eval()?;
            self.record_epoch(epoch, lr, train_loss, &e, t0)?;
            last_eval = Some(e);
            // every rank stops after the same epoch, whichever saw the request
            if self.ctx.any(self.stop.is_stopped())? {
                let checkpoint = self
                    .ctx
                    .is_main()
                    .then(|| self.cfg.output_dir.join(CHECKPOINT_FILE));
                self.obs.stopped(checkpoint.as_deref())?;
                return Err(MhclError::Interrupted { checkpoint });
            }
        }
        let e = match last_eval {
            Some(e) => e,
            None => self.val_eval()?,
        };
        self.finish(&e, &train_loader)
    }

    fn description(&self) -> String {
        let world = self.ctx.world_size();
        let ranks = if world > 1 {
            format!(", {world} ranks x batch {}", self.ctx.batch_size())
        } else {
            String::new()
        };
        format!(
            "=> linear probe: {} (width {}, {}-d features), {} classes, {} train / {} val images, {} epochs{ranks}",
            self.cfg.arch,
            self.probe.backbone.width,
            self.probe.backbone.feature_dim(),
            self.train_set.classes().len(),
            self.train_set.len(),
            self.val_set.len(),
            self.cfg.training.epochs
        )
    }

    /// The config with the band count and statistics this run resolved, for checkpoints.
    fn recorded_config(&self) -> LinclsConfig {
        let mut stored = self.cfg.clone();
        stored.data = self.mode.record(&self.cfg.data);
        stored
    }

    fn train_loader(&self) -> Result<Loader> {
        self.mode.probe_train_loader(
            &self.train_set,
            self.cfg.data.image_size,
            LoaderConfig::default()
                .with_batch_size(self.ctx.batch_size())
                .with_workers(data::effective_workers(self.ctx.layout().workers))
                .with_seed(self.seed.wrapping_add(1))
                .with_shuffle(true)
                .with_rank(self.ctx.rank(), self.ctx.world_size()),
        )
    }

    /// One epoch of `fc` training; the mean cross-entropy over every rank's images.
    fn train_epoch(&mut self, loader: &Loader, epoch: usize, lr: f64) -> Result<f64> {
        let iters = loader.len();
        self.obs.epoch_started(&EpochStarted {
            epoch,
            lr,
            iters,
            first_iter: 0,
            phase: "lincls",
        })?;
        let train_device = self.device.clone().autodiff();
        let backbone = self.probe.backbone.valid();
        let (mut loss_sum, mut seen): (Option<Tensor<1>>, usize) = (None, 0);
        for (it, batch) in loader.epoch(epoch as u64).enumerate() {
            let mut batch = batch?;
            let n = batch.n;
            let x = data::view_tensor(&mut batch, 0, &self.device);
            let feats = backbone.pooled(x).detach();
            let logits = self.probe.fc.forward(Tensor::from_inner(feats));
            let targets: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
            let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [n]), &train_device);
            let loss = ssl_losses::cross_entropy(logits, targets)?;
            let value = loss.clone().detach().inner().mul_scalar(n as f64);
            loss_sum = Some(match loss_sum.take() {
                Some(s) => s.add(value),
                None => value,
            });
            seen += n;
            self.sgd_step(loss, lr)?;
            self.report_step(epoch, it, iters, lr, &loss_sum, seen)?;
        }
        self.obs.epoch_steps_done(epoch)?;
        let mut sums = [
            loss_sum.map(read_scalar).transpose()?.unwrap_or(f64::NAN),
            seen as f64,
        ];
        self.ctx.sum(&mut sums)?;
        let train_loss = sums[0] / sums[1].max(1.0);
        if !train_loss.is_finite() {
            return Err(MhclError::NonFinite {
                value: train_loss as f32,
                epoch,
                iter: iters,
            });
        }
        Ok(train_loss)
    }

    fn sgd_step(&mut self, loss: Tensor<1>, lr: f64) -> Result<()> {
        let grads = GradientsParams::from_grads(loss.backward(), &self.probe.fc);
        let grads = match self.ctx.group() {
            Some(g) => ssl_distributed::average_gradients(g, &self.probe.fc, grads)?,
            None => grads,
        };
        let fc = self.probe.fc.clone();
        self.probe.fc = self.probe.sgd.step(lr, fc, grads);
        Ok(())
    }

    fn report_step(
        &mut self,
        epoch: usize,
        it: usize,
        iters: usize,
        lr: f64,
        loss_sum: &Option<Tensor<1>>,
        seen: usize,
    ) -> Result<()> {
        let freq = self.cfg.print_freq;
        let logged = self.ctx.is_main() && freq > 0 && it.is_multiple_of(freq);
        let loss = match (logged, loss_sum) {
            (true, Some(s)) => {
                let avg = read_scalar(s.clone())? / seen as f64;
                Some(Running { val: avg, avg })
            }
            _ => None,
        };
        self.obs.step(&StepReport {
            epoch,
            iter: it,
            iters,
            lr,
            logged,
            loss,
            ..StepReport::default()
        })
    }

    /// Records an epoch; rank 0 writes the probe checkpoint (and the best one).
    fn record_epoch(
        &mut self,
        epoch: usize,
        lr: f64,
        train_loss: f64,
        e: &Eval,
        t0: Instant,
    ) -> Result<()> {
        let rec = LinclsEpoch {
            epoch,
            lr,
            train_loss,
            val_acc1: e.acc1,
            val_acc5: e.acc5,
            seconds: t0.elapsed().as_secs_f64(),
        };
        let improved = self.history.iter().all(|h| rec.val_acc1 > h.val_acc1);
        self.history.push(rec.clone());
        if !self.ctx.is_main() {
            return Ok(());
        }
        self.obs.probe_epoch(&rec, best(&self.history))?;
        let extra = serde_json::json!({ "history": self.history });
        let path = self.cfg.output_dir.join(CHECKPOINT_FILE);
        let stored = self.recorded_config();
        save_probe(&path, &self.probe, &stored, epoch + 1, extra.clone())?;
        self.obs.checkpoint_saved(&path)?;
        if improved {
            let path = self.cfg.output_dir.join(BEST_FILE);
            save_probe(&path, &self.probe, &stored, epoch + 1, extra)?;
        }
        Ok(())
    }

    fn val_eval(&self) -> Result<Eval> {
        let logits = self.probe.fc.valid().forward(self.val_feats.clone());
        let v = logits
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| MhclError::readback("logits", e))?;
        Ok(evaluate(
            &v,
            &self.val_labels,
            self.train_set.classes().len(),
        ))
    }

    fn summary(&self, e: &Eval, train_loader: Option<&Loader>) -> LinclsSummary {
        let mut summary = summarize(
            self.cfg,
            self.train_set.classes(),
            &self.history,
            e,
            self.probe.backbone.width,
            self.train_set.len(),
            self.val_set.len(),
            self.t_run,
        );
        let mut sources = vec![(&*self.val_set, &self.val_loader)];
        if let Some(l) = train_loader {
            sources.insert(0, (&*self.train_set, l));
        }
        summary.skipped_images = data::skipped_images(&sources);
        summary
    }

    /// The summary, its file and the curves (rank 0).
    fn finish(&mut self, e: &Eval, train_loader: &Loader) -> Result<LinclsSummary> {
        let summary = self.summary(e, Some(train_loader));
        if !self.ctx.is_main() {
            return Ok(summary);
        }
        for (what, loader) in [("train/", train_loader), ("val/", &self.val_loader)] {
            if let Some(line) = data::skipped_notice(what, loader, &mut 0) {
                self.obs.notice(&line)?;
            }
        }
        write_summary(&self.cfg.output_dir, &summary)?;
        if !self.history.is_empty() {
            crate::plot::lincls_curves(&self.cfg.output_dir.join(CURVES_FILE), &self.history)?;
        }
        self.obs.probe_finished(&summary)?;
        Ok(summary)
    }
}

/// `DATA/train` (from its `listing`) and `DATA/val` with the same classes, read as `bands`
/// bands (`None`: RGB).
fn open_probe_data(
    cfg: &LinclsConfig,
    obs: &mut dyn Observer,
    (listing, bands): (ImageFolder, Option<usize>),
) -> Result<(Arc<ImageFolder>, Arc<ImageFolder>)> {
    let checks = cfg.data.image_checks();
    let train_set = Arc::new(data::checked(listing, checks, bands)?);
    let val_set = Arc::new(data::open_split_checked(
        &cfg.data.root,
        "val",
        checks,
        bands,
    )?);
    for folder in [&train_set, &val_set] {
        if let Some(line) = data::prescan_notice(folder) {
            obs.notice(&line)?;
        }
    }
    if train_set.classes() != val_set.classes() {
        return Err(MhclError::data(format!(
            "train/ and val/ of {} have different classes",
            cfg.data.root.display()
        )));
    }
    Ok((train_set, val_set))
}

fn read_sources(cfg: &LinclsConfig) -> Result<Sources> {
    let pretrained = match &cfg.pretrained {
        Some(p) => Some((p.clone(), read_weights(p)?)),
        None => None,
    };
    let resume = match &cfg.resume {
        Some(p) => {
            let l = read_weights(p)?;
            if l.fc.is_none() {
                return Err(MhclError::checkpoint(p, "is not a linear-probe checkpoint"));
            }
            Some((p.clone(), l))
        }
        None => None,
    };
    Ok(Sources { pretrained, resume })
}

/// Backbone (loaded from `resume` or `pretrained`, else random) and a new `fc`; with a group,
/// rank 0's on every rank.
fn build_probe(
    cfg: &LinclsConfig,
    sources: &Sources,
    classes: usize,
    in_channels: usize,
    device: &Device,
    seed: u64,
    ctx: &RankCtx,
) -> Result<(ProbeState, Option<String>)> {
    let source = sources.resume.as_ref().or(sources.pretrained.as_ref());
    let train_device = device.clone().autodiff();
    let ((mut backbone, adapted), mut fc) = crate::dist::seeded_init(device, seed, || {
        let source = source.map(|(p, l)| (p.as_path(), l));
        let backbone = build_backbone(cfg.arch, cfg.width, in_channels, source, device)?;
        let fc = LinearClassifierConfig::new(backbone.0.feature_dim(), classes)
            .try_init(&train_device)?;
        Ok::<_, MhclError>((backbone, fc))
    })?;
    if ctx.group().is_some() {
        // identical start on every rank: rank 0's fc (and backbone when not loaded)
        if source.is_none() {
            let t = ctx.broadcast_tensors(module_tensors(&backbone)?)?;
            backbone = load_tensors(backbone, t, &LoadOptions::new())?.0;
        }
        let t = ctx.broadcast_tensors(module_tensors(&fc)?)?;
        fc = load_tensors(fc, t, &LoadOptions::new())?.0;
    }
    let sgd = cfg.training.sgd.clone().init()?;
    Ok((ProbeState { backbone, fc, sgd }, adapted))
}

/// Loads a probe checkpoint's `fc` and momentum buffers; returns the epoch to continue at and
/// the history so far.
fn apply_probe_resume(
    probe: &mut ProbeState,
    path: &Path,
    l: &Loaded,
) -> Result<(usize, Vec<LinclsEpoch>)> {
    let fc_tensors = l.fc.clone().unwrap_or_default();
    let (loaded, _) = load_tensors(probe.fc.clone(), fc_tensors, &LoadOptions::new())
        .map_err(|e| MhclError::checkpoint(path, format!("fc: {e}")))?;
    probe.fc = loaded;
    let bufs = l
        .optimizer
        .iter()
        .filter_map(|b| {
            b.name.strip_prefix("fc.").map(|n| MomentumBuffer {
                name: n.to_string(),
                ..b.clone()
            })
        })
        .collect();
    probe
        .sgd
        .load_buffers(&probe.fc, bufs)
        .map_err(|e| MhclError::checkpoint(path, e.to_string()))?;
    let Some(meta) = &l.meta else {
        return Ok((0, Vec::new()));
    };
    let history = meta
        .extra
        .get("history")
        .and_then(|h| serde_json::from_value(h.clone()).ok())
        .unwrap_or_default();
    Ok((meta.epoch, history))
}

/// Pooled features of every sample of `loader`'s dataset in dataset order, and their labels.
/// With several ranks each extracts its share (the loader's rank / world size; shares are
/// padded to equal length as `DistributedSampler` does) and the shares are gathered.
fn extract_all_features(
    loader: &ssl_augment::Loader,
    dataset_len: usize,
    ctx: &RankCtx,
    device: &Device,
    features: impl Fn(Tensor<4>) -> Tensor<2>,
) -> Result<(Tensor<2>, Vec<usize>)> {
    let Some(group) = ctx.group() else {
        return data::extract_features(loader, device, features);
    };
    let mut parts = Vec::with_capacity(loader.len());
    let mut labels = Vec::with_capacity(loader.num_samples());
    let mut indices = Vec::with_capacity(loader.num_samples());
    for batch in loader.epoch(0) {
        let mut batch = batch.map_err(|e| MhclError::data(e.to_string()))?;
        let x = data::view_tensor(&mut batch, 0, device);
        parts.push(features(x).detach());
        labels.extend_from_slice(&batch.labels);
        indices.extend_from_slice(&batch.indices);
    }
    if parts.is_empty() {
        return Err(MhclError::data("no images to extract features from"));
    }
    let feats = ssl_distributed::concat_all_gather(group, Tensor::cat(parts, 0))?;
    let mut meta = Vec::with_capacity(16 * indices.len());
    for (&i, &l) in indices.iter().zip(&labels) {
        meta.extend_from_slice(&(i as u64).to_le_bytes());
        meta.extend_from_slice(&(l as u64).to_le_bytes());
    }
    let all_meta = group.all_gather_bytes(&meta)?;
    // first row of every dataset index, in dataset order (the padding repeats some)
    let mut row_of = vec![usize::MAX; dataset_len];
    let mut label_of = vec![0usize; dataset_len];
    let mut row = 0usize;
    for part in &all_meta {
        for c in part.chunks_exact(16) {
            let i = u64::from_le_bytes(c[..8].try_into().expect("8 bytes")) as usize;
            let l = u64::from_le_bytes(c[8..].try_into().expect("8 bytes")) as usize;
            if i < dataset_len && row_of[i] == usize::MAX {
                row_of[i] = row;
                label_of[i] = l;
            }
            row += 1;
        }
    }
    if row != feats.dims()[0] || row_of.contains(&usize::MAX) {
        return Err(MhclError::Distributed(format!(
            "gathered {} feature rows for {row} samples; some of the {dataset_len} images are missing",
            feats.dims()[0]
        )));
    }
    let idx: Vec<i64> = row_of.iter().map(|&r| r as i64).collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [dataset_len]), &feats.device());
    Ok((feats.select(0, idx), label_of))
}

fn best(history: &[LinclsEpoch]) -> (f64, f64) {
    let b1 = history
        .iter()
        .map(|h| h.val_acc1)
        .fold(f64::NEG_INFINITY, f64::max);
    let b5 = history
        .iter()
        .map(|h| h.val_acc5)
        .fold(f64::NEG_INFINITY, f64::max);
    (b1, b5)
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    cfg: &LinclsConfig,
    classes: &[String],
    history: &[LinclsEpoch],
    e: &Eval,
    width: usize,
    train_images: usize,
    val_images: usize,
    t_run: Instant,
) -> LinclsSummary {
    let (mut best1, mut best5) = best(history);
    let (mut acc5_at, mut best_epoch) = (e.acc5, history.last().map_or(0, |h| h.epoch));
    if let Some(h) = history.iter().fold(None::<&LinclsEpoch>, |b, h| match b {
        Some(b) if b.val_acc1 >= h.val_acc1 => Some(b),
        _ => Some(h),
    }) {
        acc5_at = h.val_acc5;
        best_epoch = h.epoch;
    }
    if history.is_empty() {
        best1 = e.acc1;
        best5 = e.acc5;
    }
    let per_class_acc1 = classes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let row = &e.confusion[i];
            let total: usize = row.iter().sum();
            let acc = if total > 0 {
                100.0 * row[i] as f64 / total as f64
            } else {
                0.0
            };
            (c.clone(), acc)
        })
        .collect();
    LinclsSummary {
        best_acc1: best1,
        best_acc5: best5,
        acc5_at_best_acc1: acc5_at,
        best_epoch,
        final_acc1: e.acc1,
        final_acc5: e.acc5,
        classes: classes.to_vec(),
        per_class_acc1,
        confusion_matrix: e.confusion.clone(),
        history: history.to_vec(),
        pretrained: cfg.pretrained.as_ref().map(|p| p.display().to_string()),
        arch: cfg.arch.name().to_string(),
        width,
        train_images,
        val_images,
        seconds: t_run.elapsed().as_secs_f64(),
        skipped_images: Vec::new(),
    }
}

fn write_summary(dir: &Path, summary: &LinclsSummary) -> Result<PathBuf> {
    let path = dir.join(SUMMARY_FILE);
    let json = serde_json::to_vec_pretty(summary).expect("a summary is plain JSON");
    ssl_models::weights::write_file_atomic(&path, &json)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluate_counts_topk_and_confusion() {
        // 3 samples, 2 classes
        let logits = [2.0, 1.0, 0.0, 3.0, 5.0, 4.0];
        let e = evaluate(&logits, &[0, 1, 1], 2);
        assert!((e.acc1 - 200.0 / 3.0).abs() < 1e-9);
        assert_eq!(e.acc5, 100.0);
        assert_eq!(e.confusion, vec![vec![1, 0], vec![1, 1]]);
    }

    #[test]
    fn arch_is_inferred_from_names() {
        let dev = Device::flex();
        for (arch, width) in [(Arch::ResNet18, 4), (Arch::ResNet50, 2)] {
            let net = ResNetConfig::new(arch).with_width(width).init(&dev);
            let t = module_tensors(&net).unwrap();
            assert_eq!(infer_arch(&t), Some((arch, width)));
        }
    }
}
