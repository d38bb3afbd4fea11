//! What the runs report: the per-epoch records of pretraining ([`EpochMetrics`], the lines of
//! `metrics.json`) and of the linear probe ([`LinclsEpoch`], [`LinclsSummary`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::knn::KnnResult;

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
