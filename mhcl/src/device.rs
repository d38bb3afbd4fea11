//! `--device`: which burn backend runs the model.
//!
//! `cpu` (alias `flex`) is burn's pure-Rust CPU backend and always available. GPU backends are
//! Cargo features of this crate: `cuda` (`--device cuda` or `cuda:N`) and `vulkan`
//! (`--device vulkan` or `vulkan:N`). The training device is the autodiff decorator of the
//! chosen backend (BatchNorm then runs in train mode); evaluation uses the plain backend.

use burn::prelude::*;

use crate::error::{MhclError, Result};

/// The backends this build accepts for `--device`.
pub fn available() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut v = vec!["cpu"];
    #[cfg(feature = "cuda")]
    v.push("cuda[:N]");
    #[cfg(feature = "vulkan")]
    v.push("vulkan[:N]");
    v
}

/// Parses `--device` (plus `--gpu N`, which picks the index when the spec names none) into the
/// plain (non-autodiff) device.
pub fn parse_device(spec: &str, gpu: Option<usize>) -> Result<Device> {
    let (kind, index) = match spec.split_once(':') {
        Some((k, i)) => {
            let i: usize = i
                .parse()
                .map_err(|_| MhclError::arg(format!("invalid device index in `{spec}`")))?;
            (k, Some(i))
        }
        None => (spec, gpu),
    };
    #[allow(unused_variables)]
    let index = index.unwrap_or(0);
    match kind {
        "cpu" | "flex" => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(index)),
        #[cfg(feature = "vulkan")]
        "vulkan" => Ok(Device::vulkan(burn::tensor::DeviceKind::DiscreteGpu(index))),
        "cuda" | "vulkan" => Err(MhclError::arg(format!(
            "this build has no `{kind}` backend; rebuild with `--features {kind}` (available: {})",
            available().join(", ")
        ))),
        other => Err(MhclError::arg(format!(
            "unknown device `{other}` (available: {})",
            available().join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_and_unknown_is_an_error() {
        assert!(parse_device("cpu", None).is_ok());
        assert!(parse_device("flex", Some(3)).is_ok());
        assert!(
            parse_device("tpu", None)
                .unwrap_err()
                .to_string()
                .contains("unknown device")
        );
        assert!(parse_device("cuda:x", None).is_err());
    }
}
