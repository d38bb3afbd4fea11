//! `--device`: which burn backend runs the model.
//!
//! `cpu` (alias `flex`) is burn's pure-Rust CPU backend and always available. GPU backends are
//! Cargo features of this crate: `cuda` (`--device cuda` or `cuda:N`) and `vulkan`
//! (`--device vulkan` or `vulkan:N`). The training device is the autodiff decorator of the
//! chosen backend (BatchNorm then runs in train mode); evaluation uses the plain backend.
//!
//! A GPU device is opened and tried once when it is parsed ([`probe`]): burn's GPU runtimes panic
//! deep inside their initialization when there is no GPU or no driver library, so the probe
//! catches that and [`parse_device`] returns a one-line error instead (`no Vulkan GPU found
//! (...)`, `Vulkan loader library not found (...)`, `no CUDA GPU found (...)`, `CUDA driver
//! library not found (...)`).

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

/// Which backend runs the model: `cpu` (alias `flex`), `cuda[:N]` or `vulkan[:N]`; in config
/// files as that string.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceSpec {
    /// The backend.
    pub kind: DeviceKind,
    /// GPU index (none: 0, or the local rank of a data-parallel rank).
    pub index: Option<usize>,
}

/// The backends of [`DeviceSpec`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// burn's Flex CPU backend (always built).
    #[default]
    Cpu,
    /// CUDA (feature `cuda`).
    Cuda,
    /// Vulkan through wgpu (feature `vulkan`).
    Vulkan,
}

impl DeviceSpec {
    /// The CPU.
    pub const CPU: DeviceSpec = DeviceSpec {
        kind: DeviceKind::Cpu,
        index: None,
    };

    /// Opens the plain (non-autodiff) device. `rank_gpu` is the local rank of a data-parallel
    /// rank: each rank takes GPU `local rank`, as the reference's `mp.spawn` gives each worker
    /// its own GPU; a single process takes `index` (default 0).
    ///
    /// # Errors
    /// A one-line error when this build lacks the backend or the GPU cannot be opened
    /// ([`probe`]).
    pub fn open(&self, rank_gpu: Option<usize>) -> Result<Device> {
        #[allow(unused_variables)]
        let index = rank_gpu.or(self.index).unwrap_or(0);
        #[allow(unused_variables)]
        let spec = self.to_string();
        match self.kind {
            DeviceKind::Cpu => Ok(Device::flex()),
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => opened(Device::cuda(index), "cuda", &spec),
            #[cfg(feature = "vulkan")]
            DeviceKind::Vulkan => opened(
                Device::vulkan(burn::tensor::DeviceKind::DiscreteGpu(index)),
                "vulkan",
                &spec,
            ),
            #[allow(unreachable_patterns)] // reached for the backends this build lacks
            _ => {
                let kind = if self.kind == DeviceKind::Cuda {
                    "cuda"
                } else {
                    "vulkan"
                };
                Err(MhclError::arg(format!(
                    "this build has no `{kind}` backend; rebuild with `--features {kind}` (available: {})",
                    available().join(", ")
                )))
            }
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = MhclError;

    /// `cpu`, `flex`, `cuda`, `cuda:N`, `vulkan`, `vulkan:N`.
    fn from_str(spec: &str) -> Result<Self> {
        let (kind, index) = match spec.split_once(':') {
            Some((k, i)) => {
                let i: usize = i
                    .parse()
                    .map_err(|_| MhclError::arg(format!("invalid device index in `{spec}`")))?;
                (k, Some(i))
            }
            None => (spec, None),
        };
        let kind = match kind {
            "cpu" | "flex" => DeviceKind::Cpu,
            "cuda" => DeviceKind::Cuda,
            "vulkan" => DeviceKind::Vulkan,
            other => {
                return Err(MhclError::arg(format!(
                    "unknown device `{other}` (available: {})",
                    available().join(", ")
                )));
            }
        };
        Ok(DeviceSpec { kind, index })
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.kind {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Vulkan => "vulkan",
        })?;
        match self.index {
            Some(i) => write!(f, ":{i}"),
            None => Ok(()),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = MhclError;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

/// Parses `--device` (plus `--gpu N`, which picks the index when the spec names none) into the
/// plain (non-autodiff) device.
pub fn parse_device(spec: &str, gpu: Option<usize>) -> Result<Device> {
    let spec: DeviceSpec = spec.parse()?;
    DeviceSpec {
        index: spec.index.or(gpu),
        ..spec
    }
    .open(None)
}

/// `device` after a successful [`probe`], else the one-line error for `kind` (`cuda`, `vulkan`).
#[allow(dead_code)] // used by the GPU features only
fn opened(device: Device, kind: &str, spec: &str) -> Result<Device> {
    match probe(&device) {
        Ok(()) => Ok(device),
        Err(detail) => Err(gpu_error(kind, spec, &detail)),
    }
}

/// Runs `f`, returning `Err(message)` if it panics. The panic hook is replaced meanwhile (a
/// backend that panics while opening a device prints nothing) and restored afterwards. The
/// message is that of the first panic on any thread: GPU runtimes often fail in a worker
/// thread, and the caller only sees a closed channel.
pub fn catch_silent<R>(f: impl FnOnce() -> R) -> std::result::Result<R, String> {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let hook = std::panic::take_hook();
    let record = seen.clone();
    std::panic::set_hook(Box::new(move |info| {
        let msg = payload_message(info.payload());
        if let Ok(mut v) = record.lock() {
            v.push(msg);
        }
    }));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.map_err(|payload| {
        // The first panic is the cause; later ones are its echoes (closed channels, ...).
        seen.lock()
            .ok()
            .and_then(|v| v.first().cloned())
            .unwrap_or_else(|| payload_message(payload.as_ref()))
    })
}

fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic without a message".to_string())
}

/// Whitespace (newlines included) collapsed to single spaces, at most 300 characters.
pub fn one_line(text: &str) -> String {
    let mut s = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > 300 {
        s = s.chars().take(297).collect::<String>() + "...";
    }
    s
}

/// Opens `device` and runs a one-element computation on it: a tensor `[0.0]` is created, its
/// `exp` taken, `1` added and the result read back. `exp` is there because GPU compilers link a
/// math library for it (CUDA's `libdevice.10.bc` on burn's LLVM path): a missing one is then
/// reported here, not at the first loss of a run. `Err` holds what the backend reported (its
/// panic message or a wrong result).
pub fn probe(device: &Device) -> std::result::Result<(), String> {
    let device = device.clone().inner();
    let got = catch_silent(|| {
        Tensor::<1>::from_floats([0.0], &device)
            .exp()
            .add_scalar(1.0)
            .into_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| format!("{e:?}"))
    })??;
    if got != [2.0] {
        return Err(format!("1 + 1 gave {got:?}"));
    }
    Ok(())
}

/// Where the dynamic loader would find `name`: the folders of `LD_LIBRARY_PATH`, then the usual
/// system library folders (a heuristic for error messages: `/etc/ld.so.conf` is not read).
pub fn find_library(name: &str) -> Option<std::path::PathBuf> {
    let env = std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default();
    let system = [
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib/aarch64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/lib64",
        "/usr/lib64",
        "/lib",
        "/usr/lib",
        "/usr/local/lib",
    ];
    std::env::split_paths(&env)
        .chain(system.iter().map(std::path::PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.exists())
}

/// The user-facing error for a failed [`probe`] of a `kind` device: names the missing driver
/// library when the backend's message says it could not load one, else says no GPU was found.
pub fn gpu_error(kind: &str, spec: &str, detail: &str) -> MhclError {
    let detail = one_line(detail);
    let lower = detail.to_ascii_lowercase();
    let library = lower.contains("libcuda")
        || lower.contains("libvulkan")
        || lower.contains("shared library")
        || lower.contains("dynamically load")
        || lower.contains("loader")
        || (kind == "vulkan" && find_library("libvulkan.so.1").is_none());
    if lower.contains("libdevice") {
        return MhclError::arg(format!(
            "CUDA math library not found (libdevice.10.bc; set CUDA_PATH to a CUDA toolkit that \
             has nvvm/libdevice/libdevice.10.bc, default /usr/local/cuda): --device {spec}: {detail}"
        ));
    }
    let msg = match (kind, library) {
        ("cuda", true) => format!(
            "CUDA driver library not found (libcuda.so.1; install the NVIDIA driver or put its \
             folder on LD_LIBRARY_PATH): --device {spec}: {detail}"
        ),
        ("cuda", false) => format!("no CUDA GPU found for --device {spec} ({detail})"),
        ("vulkan", true) => format!(
            "Vulkan loader library not found (libvulkan.so.1; install libvulkan1 and the GPU's \
             Vulkan driver): --device {spec}: {detail}"
        ),
        ("vulkan", false) => format!(
            "no Vulkan GPU found for --device {spec} ({detail}; needs libvulkan.so.1 and a \
             Vulkan driver (ICD) for the GPU)"
        ),
        _ => format!("cannot open --device {spec} ({detail})"),
    };
    MhclError::arg(msg)
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

    #[test]
    fn probe_passes_on_the_cpu_and_errors_are_one_line() {
        probe(&Device::flex()).unwrap();
        probe(&Device::flex().autodiff()).unwrap();
        assert_eq!(catch_silent(|| 3).unwrap(), 3);
        let panicked: std::result::Result<(), String> = catch_silent(|| panic!("boom\nsecond"));
        assert_eq!(panicked.unwrap_err(), "boom\nsecond");
        // A worker thread's panic comes first, before the caller's own.
        let nested: std::result::Result<(), String> = catch_silent(|| {
            std::thread::spawn(|| panic!("root cause"))
                .join()
                .expect("worker finished")
        });
        let msg = nested.unwrap_err();
        assert_eq!(msg, "root cause");
        let e = gpu_error("vulkan", "vulkan", "No adapter\n  found").to_string();
        let want = match find_library("libvulkan.so.1") {
            Some(_) => "no Vulkan GPU found",
            None => "Vulkan loader library not found",
        };
        assert!(e.starts_with(want), "{e}");
        assert!(!e.contains('\n'));
        let e = gpu_error(
            "cuda",
            "cuda:1",
            "Unable to dynamically load the \"cuda\" shared library",
        );
        assert!(
            e.to_string().starts_with("CUDA driver library not found"),
            "{e}"
        );
        let e = gpu_error("vulkan", "vulkan", "Vulkan loader libvulkan.so.1 missing");
        assert!(
            e.to_string().starts_with("Vulkan loader library not found"),
            "{e}"
        );
        assert!(one_line(&"x ".repeat(400)).ends_with("..."));
    }

    #[test]
    fn missing_libdevice_is_named_with_the_variable_that_fixes_it() {
        let e = gpu_error(
            "cuda",
            "cuda",
            "libdevice.10.bc was not found: the kernel calls a math function NVPTX has no\n \
             instruction for. Set CUDA_PATH to a toolkit containing nvvm/libdevice/libdevice.10.bc.",
        )
        .to_string();
        assert!(e.starts_with("CUDA math library not found"), "{e}");
        assert!(e.contains("CUDA_PATH") && !e.contains('\n'), "{e}");
    }
}
