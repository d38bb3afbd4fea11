//! Errors of the queue and the EMA.

/// Everything a caller can get wrong with the queue or the EMA.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueueError {
    /// Tensor shapes or sizes that do not fit.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// The queue length must be a multiple of the number of keys enqueued per step.
    #[error("queue length K = {k} is not a multiple of the {n} keys enqueued per step")]
    NotMultiple {
        /// Queue length.
        k: usize,
        /// Keys per step (all ranks together).
        n: usize,
    },
    /// A pointer outside `0..K`.
    #[error("queue pointer {ptr} is outside 0..{k}")]
    Pointer {
        /// The pointer.
        ptr: usize,
        /// Queue length.
        k: usize,
    },
    /// The EMA momentum must be in `[0, 1]`.
    #[error("momentum must be in [0, 1], got {0}")]
    Momentum(f64),
    /// The two modules of an EMA do not have the same parameters.
    #[error("modules do not match: {0}")]
    ModuleMismatch(String),
    /// Reading the queue back from the device failed.
    #[error("cannot read the queue from the device: {0}")]
    Read(String),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, QueueError>;
