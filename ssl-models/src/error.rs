//! Errors of the `ssl-models` crate.

use std::fmt;
use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ModelsError>;

/// Everything a caller can cause: bad configuration, bad input, bad or mismatched weight files.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    /// An architecture name that is not one of [`crate::Arch::NAMES`].
    #[error("unknown architecture `{name}` (choices: {})", choices.join(", "))]
    UnknownArch {
        /// The name given.
        name: String,
        /// The accepted names.
        choices: Vec<&'static str>,
    },

    /// A configuration value out of range (zero width, zero output dimension, ...).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// An input tensor of the wrong rank, channel count or size.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A weight file that is not valid safetensors / PyTorch pickle, or holds tensors this
    /// crate cannot use.
    #[error("{}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// A set of named tensors that does not fit the module: keys missing from the file,
    /// keys in the file the module does not have, tensors of the wrong shape.
    #[error("{0}")]
    Mismatch(WeightsMismatch),

    /// Any other failure while moving tensors in or out of a module.
    #[error("{0}")]
    Tensor(String),
}

/// The difference between the tensors of a module and a set of named tensors.
///
/// Each list is sorted; an empty list means no problem of that kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WeightsMismatch {
    /// Module tensors with no tensor of that name in the source (and not allowed to be missing).
    pub missing: Vec<String>,
    /// Source tensors the module has no place for (and not allowed to be unused).
    pub unexpected: Vec<String>,
    /// `(name, expected shape, found shape)` for tensors present on both sides with different
    /// shapes.
    pub shape_mismatch: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// Other per-tensor failures (`name: message`), e.g. an integer tensor where a float is
    /// expected.
    pub other: Vec<String>,
}

impl WeightsMismatch {
    /// True when nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.shape_mismatch.is_empty()
            && self.other.is_empty()
    }
}

impl fmt::Display for WeightsMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "weights do not match the model")?;
        if !self.missing.is_empty() {
            write!(
                f,
                "; {} missing key(s): {}",
                self.missing.len(),
                self.missing.join(", ")
            )?;
        }
        if !self.unexpected.is_empty() {
            write!(
                f,
                "; {} unexpected key(s): {}",
                self.unexpected.len(),
                self.unexpected.join(", ")
            )?;
        }
        if !self.shape_mismatch.is_empty() {
            let items: Vec<String> = self
                .shape_mismatch
                .iter()
                .map(|(n, want, got)| format!("{n} (model {want:?}, file {got:?})"))
                .collect();
            write!(
                f,
                "; {} shape mismatch(es): {}",
                items.len(),
                items.join(", ")
            )?;
        }
        if !self.other.is_empty() {
            write!(f, "; {}", self.other.join("; "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_lists_every_name() {
        let m = WeightsMismatch {
            missing: vec!["fc.weight".into(), "fc.bias".into()],
            unexpected: vec!["head.0.weight".into()],
            shape_mismatch: vec![("conv1.weight".into(), vec![8, 3, 7, 7], vec![16, 3, 7, 7])],
            other: vec![],
        };
        let text = ModelsError::Mismatch(m).to_string();
        for needle in [
            "fc.weight",
            "fc.bias",
            "head.0.weight",
            "conv1.weight",
            "[16, 3, 7, 7]",
        ] {
            assert!(text.contains(needle), "{text}");
        }
    }

    #[test]
    fn unknown_arch_lists_choices() {
        let e = ModelsError::UnknownArch {
            name: "resnet19".into(),
            choices: vec!["resnet18", "resnet34"],
        };
        assert_eq!(
            e.to_string(),
            "unknown architecture `resnet19` (choices: resnet18, resnet34)"
        );
    }
}
