//! Errors of the loss functions.

/// Everything a caller can get wrong when calling the losses: shapes, hyper-parameters,
/// mixing values, non-finite inputs (when the check is enabled).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LossError {
    /// The temperature must be a finite number greater than zero.
    #[error("temperature must be finite and > 0, got {0}")]
    InvalidTemperature(f64),
    /// Both Beta parameters must be finite and greater than zero.
    #[error("Beta(a, b) parameters must be finite and > 0, got a = {a}, b = {b}")]
    InvalidBeta {
        /// First shape parameter.
        a: f64,
        /// Second shape parameter.
        b: f64,
    },
    /// Tensor shapes that do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A configuration value that is out of range (weights, scales, top-k list, dim).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Injected or drawn mixing values that do not fit the inputs.
    #[error("invalid hard mixing: {0}")]
    Mixing(String),
    /// A class index outside `0..classes`.
    #[error("target {target} at row {row} is outside 0..{classes}")]
    Target {
        /// Row of the offending target.
        row: usize,
        /// The target value.
        target: i64,
        /// Number of classes.
        classes: usize,
    },
    /// A tensor holds NaN or an infinity (reported by [`check_finite`](crate::check_finite)).
    #[error("{0} contains NaN or infinite values")]
    NonFinite(String),
    /// Reading a tensor back from the device failed.
    #[error("cannot read {what} from the device: {msg}")]
    Read {
        /// Which tensor was read.
        what: String,
        /// The backend's message.
        msg: String,
    },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, LossError>;
