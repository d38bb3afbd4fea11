//! Errors of this crate.

use std::path::PathBuf;

/// Everything a caller can cause: bad parameters, unreadable or corrupt files, empty folders,
/// batches whose samples disagree in shape, a worker thread that failed.
#[derive(Debug, thiserror::Error)]
pub enum AugmentError {
    /// A parameter is out of its domain (a zero size, an inverted range, a negative factor...).
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),

    /// An image buffer whose length does not match its dimensions, or a crop outside the image.
    #[error("invalid image: {0}")]
    InvalidImage(String),

    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A file is not a decodable image (corrupt, truncated, empty or another format).
    #[error("cannot decode image {path}: {message}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// What the decoder reported.
        message: String,
    },

    /// The dataset root does not exist or is not a directory.
    #[error("dataset folder {0} does not exist or is not a directory")]
    FolderNotFound(PathBuf),

    /// The dataset root holds no class folder (torchvision: "Couldn't find any class folder").
    #[error("found no class folder in {0}")]
    NoClasses(PathBuf),

    /// Some class folders hold no file with a supported extension (torchvision raises too).
    #[error(
        "found no valid image file for the classes {classes:?} in {root} (supported extensions: {extensions})"
    )]
    EmptyClasses {
        /// The dataset root.
        root: PathBuf,
        /// The classes without any image.
        classes: Vec<String>,
        /// The extensions that were searched for.
        extensions: String,
    },

    /// A dataset with no samples was given to a loader.
    #[error("the dataset is empty")]
    EmptyDataset,

    /// An index past the end of a dataset.
    #[error("sample index {index} out of range for a dataset of {len} samples")]
    IndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// The dataset length.
        len: usize,
    },

    /// The samples of one batch came out with different shapes.
    #[error("sample {index} has shape {got:?}, but the batch has shape {want:?}")]
    ShapeMismatch {
        /// The dataset index of the sample.
        index: usize,
        /// Its (views, channels, height, width).
        got: (usize, usize, usize, usize),
        /// The batch's (views, channels, height, width).
        want: (usize, usize, usize, usize),
    },

    /// A loader worker thread failed (panicked).
    #[error("loader worker failed: {0}")]
    Worker(String),
}

/// `Result` with [`AugmentError`].
pub type Result<T> = std::result::Result<T, AugmentError>;

pub(crate) fn invalid(msg: impl Into<String>) -> AugmentError {
    AugmentError::InvalidParameter(msg.into())
}
