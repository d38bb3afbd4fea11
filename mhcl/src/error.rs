//! The error type of the `mhcl` crate.

use std::path::{Path, PathBuf};

/// Everything a user can cause: bad flags, bad data, bad checkpoints, unwritable outputs.
///
/// Each message is one line and names the file or flag at fault, so the `mhcl` binary prints it
/// as `error: <message>` and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum MhclError {
    /// A file system operation failed on `path`.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A flag or configuration value is out of range or inconsistent with another.
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
    /// An error reported by one of the component crates (models, losses, queue, augment).
    #[error("{0}")]
    Component(String),
    /// The loss became NaN or infinite.
    #[error("non-finite loss ({value}) at epoch {epoch}, iteration {iter}")]
    NonFinite {
        value: f32,
        epoch: usize,
        iter: usize,
    },
    /// A data-parallel run failed: the first error of a rank (named by its global rank), a
    /// failed worker process, or bad distributed flags found while joining the group.
    #[error("{0}")]
    Distributed(String),
    /// The run was interrupted (Ctrl-C); a checkpoint was written when possible.
    #[error("interrupted{}", .checkpoint.as_ref().map(|p| format!("; checkpoint saved to {}", p.display())).unwrap_or_default())]
    Interrupted { checkpoint: Option<PathBuf> },
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
}
