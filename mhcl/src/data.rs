//! Dataset and batch helpers shared by pretraining, the kNN monitor and the linear probe.

use burn::prelude::*;
use ssl_augment::{Batch, ImageFolder, ImageFolderOptions, Loader};
use std::path::{Path, PathBuf};

use crate::error::{MhclError, Result};

fn augment<E: std::fmt::Display>(e: E) -> MhclError {
    MhclError::data(e.to_string())
}

/// What to do about images that cannot be read: `--verify-images`, `--skip-corrupt`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageChecks {
    /// Decode every image when the folder is opened, before training starts.
    pub verify: bool,
    /// Drop unreadable images (counted and named) instead of stopping the run.
    pub skip_corrupt: bool,
}

/// Opens `DATA/<split>` with `checks`, its images read as `bands` bands (`None`: RGB; see
/// [`crate::images`]).
pub fn open_split_checked(
    data: &Path,
    split: &str,
    checks: ImageChecks,
    bands: Option<usize>,
) -> Result<ImageFolder> {
    checked(open_split(data, split)?, checks, bands)
}

/// A listing from [`open_split`] with `checks` applied, its images read as `bands` bands.
pub fn checked(
    listing: ImageFolder,
    checks: ImageChecks,
    bands: Option<usize>,
) -> Result<ImageFolder> {
    let options = ImageFolderOptions::default()
        .with_verify(checks.verify)
        .with_skip_corrupt(checks.skip_corrupt)
        .with_bands(bands);
    listing.with_options(&options).map_err(augment)
}

/// The line naming the images a pre-scan of `folder` dropped (`--skip-corrupt
/// --verify-images`), if any.
pub fn prescan_notice(folder: &ImageFolder) -> Option<String> {
    (!folder.skipped().is_empty()).then(|| {
        format!(
            "=> skipped {} unreadable images in {} (--skip-corrupt): {}",
            folder.skipped().len(),
            folder.root().display(),
            folder
                .skipped()
                .iter()
                .map(|(p, why)| format!("{} ({why})", p.display()))
                .collect::<Vec<_>>()
                .join("; ")
        )
    })
}

/// The images the pre-scans dropped and the loaders skipped, over `(folder, its loader)`
/// pairs, each `path: reason` once.
pub fn skipped_images(sources: &[(&ImageFolder, &Loader)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (folder, loader) in sources {
        let prescan = folder
            .skipped()
            .iter()
            .map(|(p, why)| format!("{}: {why}", p.display()));
        for e in prescan.chain(loader.skipped_errors()) {
            if !out.contains(&e) {
                out.push(e);
            }
        }
    }
    out
}

/// The line naming the images `loader` dropped when loading since the last report
/// (`--skip-corrupt`; those of a pre-scan are in [`prescan_notice`]); `reported` counts them.
pub fn skipped_notice(what: &str, loader: &Loader, reported: &mut usize) -> Option<String> {
    let total = loader.skipped();
    if total <= *reported {
        return None;
    }
    let errors = loader.skipped_errors();
    let new = errors.get(*reported..).unwrap_or_default();
    let line = format!(
        "=> {what}: skipped {} unreadable images (--skip-corrupt, {total} so far): {}",
        total - *reported,
        new.join("; ")
    );
    *reported = total;
    Some(line)
}

/// Opens `DATA/<split>` as an ImageFolder, with a message naming the expected layout.
pub fn open_split(data: &Path, split: &str) -> Result<ImageFolder> {
    open_split_with(data, split, &ImageFolderOptions::default())
}

/// Opens `DATA/<split>` with its images read as `bands` bands (`None`: RGB).
pub fn open_split_bands(data: &Path, split: &str, bands: Option<usize>) -> Result<ImageFolder> {
    open_split_with(
        data,
        split,
        &ImageFolderOptions::default().with_bands(bands),
    )
}

fn open_split_with(data: &Path, split: &str, options: &ImageFolderOptions) -> Result<ImageFolder> {
    let root = data.join(split);
    if !root.is_dir() {
        return Err(MhclError::data(format!(
            "{} has no {split}/ folder (expected {}/<class>/<image>)",
            data.display(),
            root.display()
        )));
    }
    ImageFolder::new(&root, options).map_err(augment)
}

/// The loader threads actually used: `-j`, at most the number of CPU cores (threads, unlike
/// PyTorch's worker processes, gain nothing beyond that).
pub fn effective_workers(requested: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    requested.min(cores)
}

/// View `v` of a batch as an `(N, C, H, W)` tensor on `device` (moves the buffer).
pub fn view_tensor(batch: &mut Batch, v: usize, device: &Device) -> Tensor<4> {
    let data = std::mem::take(&mut batch.views[v]);
    let shape = [batch.n, batch.c, batch.h, batch.w];
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// Checks that `dir` exists or can be created and that a file can be written in it.
pub fn ensure_writable_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        MhclError::arg(format!(
            "output dir {} cannot be created: {e}",
            dir.display()
        ))
    })?;
    let probe: PathBuf = dir.join(format!(".mhcl-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| MhclError::arg(format!("output dir {} is not writable: {e}", dir.display())))
}

/// Pooled features `(N, d)` and labels of every sample of `loader`'s epoch 0, from
/// `features` run on `device` (no gradient).
pub fn extract_features(
    loader: &Loader,
    device: &Device,
    features: impl Fn(Tensor<4>) -> Tensor<2>,
) -> Result<(Tensor<2>, Vec<usize>)> {
    let mut parts = Vec::with_capacity(loader.len());
    let mut labels = Vec::with_capacity(loader.num_samples());
    for batch in loader.epoch(0) {
        let mut batch = batch.map_err(augment)?;
        let x = view_tensor(&mut batch, 0, device);
        parts.push(features(x).detach());
        labels.extend_from_slice(&batch.labels);
    }
    if parts.is_empty() {
        return Err(MhclError::data("no images to extract features from"));
    }
    Ok((Tensor::cat(parts, 0), labels))
}
