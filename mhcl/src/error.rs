//! The error type of the `mhcl` crate.

use std::path::{Path, PathBuf};

/// Everything a user can cause: bad configs, bad data, bad checkpoints, unwritable outputs.
///
/// Each message is one line and names the file or config field at fault, so the `mhcl` binary
/// prints it as `error: <message>` and exits non-zero. The errors of the component crates keep
/// their type ([`MhclError::Models`], [`MhclError::Loss`], ...): match on them or walk
/// [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
pub enum MhclError {
    /// A file system operation failed on `path`.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A field of a run config (`PretrainConfig`, `LinclsConfig`) is out of range or
    /// inconsistent with another; names the field (`training.batch_size`).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A value found while running is out of range or inconsistent with another (a launch
    /// layout, a device index).
    #[error("{0}")]
    InvalidArgument(String),
    /// The dataset folder is missing, empty or inconsistent.
    #[error("dataset: {0}")]
    Data(String),
    /// A checkpoint could not be read, does not match the model, or could not be written.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    /// An image could not be encoded or decoded.
    #[error("image {path}: {msg}")]
    Image { path: PathBuf, msg: String },
    /// The models crate: building a network, reading or writing weights.
    #[error(transparent)]
    Models(#[from] ssl_models::ModelsError),
    /// The losses crate: shapes or values given to a loss.
    #[error(transparent)]
    Loss(#[from] ssl_losses::LossError),
    /// The queue / momentum-encoder crate.
    #[error(transparent)]
    Queue(#[from] ssl_queue::QueueError),
    /// The augmentation / data loading crate.
    #[error(transparent)]
    Augment(#[from] ssl_augment::AugmentError),
    /// A collective of the process group failed, or bad distributed settings.
    #[error(transparent)]
    Collective(#[from] ssl_distributed::DistributedError),
    /// Reading a tensor's values back from the device failed.
    #[error("reading {what} from the device: {msg}")]
    Readback { what: &'static str, msg: String },
    /// The loss became NaN or infinite.
    #[error("non-finite loss ({value}) at epoch {epoch}, iteration {iter}")]
    NonFinite {
        value: f32,
        epoch: usize,
        iter: usize,
    },
    /// A data-parallel run failed: the first error of a rank (named by its global rank), a
    /// failed worker process, or bad distributed settings found while joining the group.
    #[error("{0}")]
    Distributed(String),
    /// The run was stopped by its `StopToken` (Ctrl-C in the `mhcl`
    /// command); a checkpoint was written when possible.
    #[error("interrupted{}", .checkpoint.as_ref().map(|p| format!("; checkpoint saved to {}", p.display())).unwrap_or_default())]
    Interrupted { checkpoint: Option<PathBuf> },
}

/// A config value out of range or inconsistent with another: `field: message`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Dotted path of the field, e.g. `training.batch_size`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// An error of `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error with `prefix.` in front of the field (for nested configs).
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = format!("{prefix}.{}", self.field);
        self
    }
}

/// `Result` with [`MhclError`].
pub type Result<T> = std::result::Result<T, MhclError>;

impl MhclError {
    /// An [`MhclError::Io`] for `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// An [`MhclError::Checkpoint`] for `path`.
    pub fn checkpoint(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    /// An [`MhclError::InvalidArgument`].
    pub fn arg(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }

    /// An [`MhclError::Data`].
    pub fn data(msg: impl Into<String>) -> Self {
        Self::Data(msg.into())
    }

    /// An [`MhclError::Readback`] of `what` (`"the loss"`, `"logits"`).
    pub fn readback(what: &'static str, err: impl std::fmt::Debug) -> Self {
        Self::Readback {
            what,
            msg: format!("{err:?}"),
        }
    }
}
