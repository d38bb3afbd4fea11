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

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use ssl_augment::{LoaderConfig, SampleTransform, probe_eval_transform, probe_train_transform};
use ssl_models::weights::{LoadOptions, RawTensor, TensorMap, load_tensors, module_tensors};
use ssl_models::{Arch, LinearClassifier, LinearClassifierConfig, ResNet, ResNetConfig};

use crate::checkpoint::{Checkpoint, CheckpointMeta, FORMAT};
use crate::cli::LinclsArgs;
use crate::data;
use crate::dist::{Launch, RankCtx};
use crate::error::{MhclError, Result};
use crate::optim::{MomentumBuffer, Sgd, SgdConfig};
use crate::schedule::LrSchedule;

/// File names written to the output folder.
pub const SUMMARY_FILE: &str = "lincls_summary.json";
/// Probe checkpoint (last epoch).
pub const CHECKPOINT_FILE: &str = "lincls_checkpoint.safetensors";
/// Probe checkpoint of the best epoch.
pub const BEST_FILE: &str = "lincls_best.safetensors";
/// Curves of the train loss and validation accuracy.
pub const CURVES_FILE: &str = "lincls_curves.png";

fn component<E: std::fmt::Display>(e: E) -> MhclError {
    MhclError::Component(e.to_string())
}

/// One epoch of the probe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinclsEpoch {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Learning rate.
    pub lr: f64,
    /// Mean training cross-entropy.
    pub train_loss: f64,
    /// Validation top-1 accuracy (percent).
    pub val_acc1: f64,
    /// Validation top-5 accuracy (percent).
    pub val_acc5: f64,
    /// Seconds of the epoch.
    pub seconds: f64,
}

/// `lincls_summary.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinclsSummary {
    /// Best validation top-1 over the epochs.
    pub best_acc1: f64,
    /// Best validation top-5 over the epochs (each on its own, as the reference).
    pub best_acc5: f64,
    /// Top-5 of the epoch with the best top-1.
    pub acc5_at_best_acc1: f64,
    /// Epoch of the best top-1.
    pub best_epoch: usize,
    /// Top-1 of the last epoch.
    pub final_acc1: f64,
    /// Top-5 of the last epoch.
    pub final_acc5: f64,
    /// Class names (sorted folder names).
    pub classes: Vec<String>,
    /// Final model's top-1 accuracy per class (percent).
    pub per_class_acc1: BTreeMap<String, f64>,
    /// Final model's confusion matrix: `confusion_matrix[true][predicted]` counts.
    pub confusion_matrix: Vec<Vec<usize>>,
    /// Per-epoch history.
    pub history: Vec<LinclsEpoch>,
    /// The pretrained weights used (none: random init).
    pub pretrained: Option<String>,
    /// Architecture and width of the backbone.
    pub arch: String,
    /// Base width.
    pub width: usize,
    /// Training / validation images.
    pub train_images: usize,
    /// Validation images.
    pub val_images: usize,
    /// Seconds of the whole run.
    pub seconds: f64,
    /// Images dropped with `--skip-corrupt` (by the pre-scan or when loaded), each
    /// `path: reason`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_images: Vec<String>,
}

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

fn build_backbone(
    arch: Arch,
    width_flag: Option<usize>,
    loaded: Option<(&Path, &Loaded)>,
    device: &Device,
) -> Result<ResNet> {
    let Some((path, loaded)) = loaded else {
        return ResNetConfig::new(arch)
            .with_width(width_flag.unwrap_or(64))
            .try_init(device)
            .map_err(component);
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
            format!("holds a {found_arch} encoder (width {width}), but -a is {arch}"),
        ));
    }
    if let Some(w) = width_flag
        && w != width
    {
        return Err(MhclError::checkpoint(
            path,
            format!("holds a {found_arch} of width {width}, but --width is {w}"),
        ));
    }
    let net = ResNetConfig::new(arch)
        .with_width(width)
        .try_init(device)
        .map_err(component)?;
    let options = LoadOptions::new().probe_backbone();
    let (net, report) = load_tensors(net, loaded.backbone.clone(), &options)
        .map_err(|e| MhclError::checkpoint(path, e.to_string()))?;
    if report.applied.is_empty() {
        return Err(MhclError::checkpoint(path, "no backbone tensor was loaded"));
    }
    Ok(net)
}

fn save_probe(
    path: &Path,
    backbone: &ResNet,
    fc: &LinearClassifier,
    sgd: &Sgd,
    args: &LinclsArgs,
    epoch: usize,
    extra: serde_json::Value,
) -> Result<()> {
    let mut meta = CheckpointMeta::new(&args.arch);
    meta.epoch = epoch;
    meta.kind = "lincls".into();
    meta.extra = extra;
    meta.args = serde_json::to_value(args).map_err(component)?;
    let mut c = Checkpoint::new(meta);
    c.tensors = module_tensors(backbone).map_err(component)?;
    c.insert_prefixed("fc.", module_tensors(fc).map_err(component)?);
    for b in sgd.buffers()? {
        c.insert(
            format!("optimizer.fc.{}", b.name),
            RawTensor::f32(b.shape, b.values),
        );
    }
    c.write_atomic(path)
}

/// The checks of `mhcl lincls` that need no file, and how it runs (see [`crate::dist`]).
pub fn prepare(args: &LinclsArgs) -> Result<Launch> {
    Arch::from_name(&args.arch).map_err(|e| MhclError::arg(e.to_string()))?;
    if args.batch_size == 0 {
        return Err(MhclError::arg("--batch-size must be positive"));
    }
    if args.image_size < 8 {
        return Err(MhclError::arg("--image-size must be at least 8"));
    }
    if !(args.lr.is_finite() && args.lr >= 0.0) {
        return Err(MhclError::arg(format!(
            "--lr must be >= 0, got {}",
            args.lr
        )));
    }
    if args.evaluate && args.resume.is_none() {
        return Err(MhclError::arg(
            "-e/--evaluate needs --resume with a linear-probe checkpoint (lincls_checkpoint.safetensors)",
        ));
    }
    crate::dist::plan(&args.into())
}

/// Runs `mhcl lincls`; see the module docs.
///
/// Data parallel as `mhcl pretrain` ([`crate::train::pretrain`]): every rank trains the same
/// `fc` on its share of DATA/train with gradients averaged, and extracts the validation
/// features of its share of DATA/val (gathered, so every rank evaluates all of them); rank 0
/// prints and writes the checkpoints and the summary. Returns rank 0's summary.
pub fn run(args: &LinclsArgs) -> Result<LinclsSummary> {
    prepare(args)?.run_ranks(args.batch_size, args.workers, "lincls", |ctx| {
        run_rank(args, ctx)
    })
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
    let feats =
        ssl_distributed::concat_all_gather(group, Tensor::cat(parts, 0)).map_err(component)?;
    let mut meta = Vec::with_capacity(16 * indices.len());
    for (&i, &l) in indices.iter().zip(&labels) {
        meta.extend_from_slice(&(i as u64).to_le_bytes());
        meta.extend_from_slice(&(l as u64).to_le_bytes());
    }
    let all_meta = group.all_gather_bytes(&meta).map_err(component)?;
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

/// One rank of `mhcl lincls` (the whole run for a single process).
fn run_rank(args: &LinclsArgs, ctx: &RankCtx) -> Result<LinclsSummary> {
    let t_run = Instant::now();
    let main = ctx.is_main();
    let arch = Arch::from_name(&args.arch).map_err(|e| MhclError::arg(e.to_string()))?;
    let checks = data::ImageChecks {
        verify: args.verify_images,
        skip_corrupt: args.skip_corrupt,
    };
    let train_set = Arc::new(data::open_split_checked(&args.data, "train", checks, main)?);
    let val_set = Arc::new(data::open_split_checked(&args.data, "val", checks, main)?);
    if train_set.classes() != val_set.classes() {
        return Err(MhclError::data(format!(
            "train/ and val/ of {} have different classes",
            args.data.display()
        )));
    }
    let classes = train_set.classes().to_vec();
    let device = crate::device::parse_device(&args.device, ctx.device_index().or(args.gpu))?;
    if main {
        data::ensure_writable_dir(&args.output_dir)?;
    }
    let seed = ctx.broadcast_seed(args.seed.unwrap_or_else(|| rand::random::<u64>() >> 11))?;

    let pretrained = match &args.pretrained {
        Some(p) => Some((p.clone(), read_weights(p)?)),
        None => None,
    };
    let resume = match &args.resume {
        Some(p) => {
            let l = read_weights(p)?;
            if l.fc.is_none() {
                return Err(MhclError::checkpoint(p, "is not a linear-probe checkpoint"));
            }
            Some((p.clone(), l))
        }
        None => None,
    };
    let source = resume.as_ref().or(pretrained.as_ref());
    let train_device = device.clone().autodiff();
    // the device's generator is shared by ranks that run as threads: initialise one at a time
    let (mut backbone, mut fc) = {
        let _init = crate::dist::init_lock();
        device.seed(seed);
        let backbone = build_backbone(
            arch,
            args.width,
            source.map(|(p, l)| (p.as_path(), l)),
            &device,
        )?;
        let fc = LinearClassifierConfig::new(backbone.feature_dim(), classes.len())
            .try_init(&train_device)
            .map_err(component)?;
        (backbone, fc)
    };
    if ctx.group().is_some() {
        // identical start on every rank: rank 0's fc (and backbone when not loaded)
        if source.is_none() {
            let t = ctx.broadcast_tensors(module_tensors(&backbone).map_err(component)?)?;
            backbone = load_tensors(backbone, t, &LoadOptions::new())
                .map_err(component)?
                .0;
        }
        let t = ctx.broadcast_tensors(module_tensors(&fc).map_err(component)?)?;
        fc = load_tensors(fc, t, &LoadOptions::new())
            .map_err(component)?
            .0;
    }
    let width = backbone.width;
    let eval_backbone = backbone.valid();
    let feat_dim = eval_backbone.feature_dim();
    let mut sgd = SgdConfig::new()
        .with_momentum(args.momentum)
        .with_weight_decay(args.weight_decay)
        .init()?;
    let mut start_epoch = args.start_epoch;
    let mut history: Vec<LinclsEpoch> = Vec::new();
    if let Some((path, l)) = &resume {
        let fc_tensors = l.fc.clone().unwrap_or_default();
        let (loaded, _) = load_tensors(fc, fc_tensors, &LoadOptions::new())
            .map_err(|e| MhclError::checkpoint(path, format!("fc: {e}")))?;
        fc = loaded;
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
        sgd.load_buffers(&fc, bufs)
            .map_err(|e| MhclError::checkpoint(path, e.to_string()))?;
        if let Some(meta) = &l.meta {
            start_epoch = meta.epoch;
            if let Some(h) = meta.extra.get("history") {
                history = serde_json::from_value(h.clone()).unwrap_or_default();
            }
        }
        if main {
            println!(
                "=> loaded probe checkpoint '{}' (epoch {start_epoch})",
                path.display()
            );
        }
    }
    if let Some((p, _)) = &pretrained
        && main
    {
        println!("=> loaded pretrained weights from '{}'", p.display());
    }

    let world = ctx.world_size();
    let workers = data::effective_workers(ctx.layout().workers);
    let eval_tf: Arc<dyn SampleTransform> =
        Arc::new(probe_eval_transform(args.image_size).map_err(|e| MhclError::arg(e.to_string()))?);
    let val_loader = data::loader(
        Arc::clone(&val_set),
        eval_tf,
        LoaderConfig::default()
            .with_batch_size(ctx.batch_size())
            .with_workers(workers)
            .with_shuffle(false)
            .with_rank(ctx.rank(), world),
    )?;
    // The backbone is frozen and in eval mode and the transform is deterministic: the
    // validation features are the same every epoch, so compute them once.
    let (val_feats, val_labels) =
        extract_all_features(&val_loader, val_set.len(), ctx, &device, |x| {
            eval_backbone.pooled(x)
        })?;
    let val_eval = |fc: &LinearClassifier| -> Result<Eval> {
        let logits = fc.valid().forward(val_feats.clone());
        let v = logits
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| MhclError::Component(format!("reading logits: {e:?}")))?;
        Ok(evaluate(&v, &val_labels, classes.len()))
    };

    if args.evaluate {
        let e = val_eval(&fc)?;
        let summary = summarize(
            args,
            &classes,
            &history,
            &e,
            width,
            train_set.len(),
            val_set.len(),
            t_run,
        );
        if main {
            println!(" * Acc@1 {:.3} Acc@5 {:.3}", e.acc1, e.acc5);
            write_summary(&args.output_dir, &summary)?;
        }
        return Ok(summary);
    }

    let train_tf: Arc<dyn SampleTransform> = Arc::new(
        probe_train_transform(args.image_size).map_err(|e| MhclError::arg(e.to_string()))?,
    );
    let train_loader = data::loader(
        Arc::clone(&train_set),
        train_tf,
        LoaderConfig::default()
            .with_batch_size(ctx.batch_size())
            .with_workers(workers)
            .with_seed(seed.wrapping_add(1))
            .with_shuffle(true)
            .with_rank(ctx.rank(), world),
    )?;
    let schedule = LrSchedule::from_flags(args.lr, args.cos, args.epochs, &args.schedule);
    let iters = train_loader.len();
    if main {
        let ranks = if world > 1 {
            format!(", {world} ranks x batch {}", ctx.batch_size())
        } else {
            String::new()
        };
        println!(
            "=> linear probe: {} (width {width}, {feat_dim}-d features), {} classes, {} train / {} val images, {} epochs{ranks}",
            args.arch,
            classes.len(),
            train_set.len(),
            val_set.len(),
            args.epochs
        );
    }
    let show_bar = main && !args.no_progress && std::io::stderr().is_terminal();
    let mut last_eval = None;
    crate::train::clear_interrupt();
    for epoch in start_epoch..args.epochs {
        let lr = schedule.lr(epoch);
        let t0 = Instant::now();
        let bar = show_bar.then(|| {
            let b = ProgressBar::with_draw_target(Some(iters as u64), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix(format!("lincls {epoch}"));
            b
        });
        let mut loss_sum: Option<Tensor<1>> = None;
        let mut seen = 0usize;
        for (it, batch) in train_loader.epoch(epoch as u64).enumerate() {
            let mut batch = batch.map_err(|e| MhclError::data(e.to_string()))?;
            let n = batch.n;
            let x = data::view_tensor(&mut batch, 0, &device);
            let feats = eval_backbone.pooled(x).detach();
            let logits = fc.forward(Tensor::from_inner(feats));
            let targets: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
            let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [n]), &train_device);
            let loss = ssl_losses::cross_entropy(logits, targets).map_err(component)?;
            let value = loss.clone().detach().inner().mul_scalar(n as f64);
            loss_sum = Some(match loss_sum.take() {
                Some(s) => s.add(value),
                None => value,
            });
            seen += n;
            let grads = GradientsParams::from_grads(loss.backward(), &fc);
            let grads = match ctx.group() {
                Some(g) => ssl_distributed::average_gradients(g, &fc, grads).map_err(component)?,
                None => grads,
            };
            fc = sgd.step(lr, fc, grads);
            if main && args.print_freq > 0 && it % args.print_freq == 0 {
                let avg = scalar(loss_sum.clone().expect("set above"))? / seen as f64;
                let line = format!(
                    "Epoch: [{epoch}][{it}/{iters}]\tLoss {}",
                    crate::train::py_exp(avg, 4)
                );
                match &bar {
                    Some(b) if !b.is_hidden() => b.println(line),
                    _ => println!("{line}"),
                }
            }
            if let Some(b) = &bar {
                b.inc(1);
            }
        }
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        let mut sums = [
            loss_sum.map(scalar).transpose()?.unwrap_or(f64::NAN),
            seen as f64,
        ];
        ctx.sum(&mut sums)?;
        let train_loss = sums[0] / sums[1].max(1.0);
        if !train_loss.is_finite() {
            return Err(MhclError::NonFinite {
                value: train_loss as f32,
                epoch,
                iter: iters,
            });
        }
        let e = val_eval(&fc)?;
        let rec = LinclsEpoch {
            epoch,
            lr,
            train_loss,
            val_acc1: e.acc1,
            val_acc5: e.acc5,
            seconds: t0.elapsed().as_secs_f64(),
        };
        let improved = history.iter().all(|h| rec.val_acc1 > h.val_acc1);
        history.push(rec.clone());
        if main {
            println!(
                "lincls epoch {epoch} lr {lr:.5} loss {train_loss:.4} val acc@1 {:.2} acc@5 {:.2} {:.1}s",
                rec.val_acc1, rec.val_acc5, rec.seconds
            );
            println!(" * Acc@1 {:.3} Acc@5 {:.3}", e.acc1, e.acc5);
            let (best1, best5) = best(&history);
            println!("best acc1: {best1:.3} best acc5: {best5:.3}");
            let extra = serde_json::json!({ "history": history });
            save_probe(
                &args.output_dir.join(CHECKPOINT_FILE),
                &backbone,
                &fc,
                &sgd,
                args,
                epoch + 1,
                extra.clone(),
            )?;
            if improved {
                save_probe(
                    &args.output_dir.join(BEST_FILE),
                    &backbone,
                    &fc,
                    &sgd,
                    args,
                    epoch + 1,
                    extra,
                )?;
            }
        }
        last_eval = Some(e);
        // every rank stops after the same epoch, whichever saw Ctrl-C
        if ctx.any(crate::train::interrupted())? {
            crate::train::clear_interrupt();
            return Err(MhclError::Interrupted {
                checkpoint: main.then(|| args.output_dir.join(CHECKPOINT_FILE)),
            });
        }
    }
    let e = match last_eval {
        Some(e) => e,
        None => val_eval(&fc)?,
    };
    let mut summary = summarize(
        args,
        &classes,
        &history,
        &e,
        width,
        train_set.len(),
        val_set.len(),
        t_run,
    );
    summary.skipped_images =
        data::skipped_images(&[(&*train_set, &train_loader), (&*val_set, &val_loader)]);
    if main {
        data::report_skipped("train/", &train_loader, &mut 0);
        data::report_skipped("val/", &val_loader, &mut 0);
        write_summary(&args.output_dir, &summary)?;
        if !history.is_empty() {
            crate::plot::lincls_curves(&args.output_dir.join(CURVES_FILE), &history)?;
        }
        println!(
            "{}",
            serde_json::json!({
                "best_acc1": summary.best_acc1, "best_acc5": summary.best_acc5,
                "final_acc1": summary.final_acc1, "final_acc5": summary.final_acc5,
            })
        );
    }
    Ok(summary)
}

fn scalar(t: Tensor<1>) -> Result<f64> {
    let v = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| MhclError::Component(format!("reading the loss: {e:?}")))?;
    Ok(f64::from(v.first().copied().unwrap_or(f32::NAN)))
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
    args: &LinclsArgs,
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
        pretrained: args.pretrained.as_ref().map(|p| p.display().to_string()),
        arch: args.arch.clone(),
        width,
        train_images,
        val_images,
        seconds: t_run.elapsed().as_secs_f64(),
        skipped_images: Vec::new(),
    }
}

fn write_summary(dir: &Path, summary: &LinclsSummary) -> Result<PathBuf> {
    let path = dir.join(SUMMARY_FILE);
    let json = serde_json::to_vec_pretty(summary).map_err(component)?;
    ssl_models::weights::write_file_atomic(&path, &json).map_err(component)?;
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
