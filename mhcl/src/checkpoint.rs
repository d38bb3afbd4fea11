//! Training checkpoints: one safetensors file with JSON metadata, written atomically.
//!
//! Tensors (PyTorch names and layouts, so the file opens with `safetensors.torch.load_file`):
//!
//! | name | content |
//! | --- | --- |
//! | `encoder_q.<param>` | query encoder, e.g. `encoder_q.layer1.0.bn1.running_var` |
//! | `encoder_k.<param>` | momentum (key) encoder |
//! | `queue` | F32 `(scales, dim, K)` |
//! | `queue_ptr` | I64 `(1,)` |
//! | `optimizer.<param>` | SGD momentum buffer of `encoder_q.<param>` |
//!
//! The safetensors header's `__metadata__` holds `format` (`mhcl-checkpoint`), `format_version`,
//! `epoch`, `arch` and `meta`: the JSON of [`CheckpointMeta`] (epoch, iteration, model
//! description, the run's configuration and the random-number state). See `docs/checkpoint-format.md`.
//!
//! ```
//! use mhcl::checkpoint::{Checkpoint, CheckpointMeta, RawTensor};
//! let dir = std::env::temp_dir().join(format!("mhcl-ckpt-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let mut ckpt = Checkpoint::new(CheckpointMeta::new("resnet18"));
//! ckpt.insert("queue", RawTensor::f32([1, 2, 2], vec![1.0, 0.0, 0.0, 1.0]));
//! ckpt.insert("queue_ptr", RawTensor::i64([1], vec![0]));
//! let path = dir.join("checkpoint_0000.safetensors");
//! ckpt.write_atomic(&path).unwrap();
//! let back = Checkpoint::read(&path).unwrap();
//! assert_eq!(back.tensor("queue").unwrap().to_f32(), vec![1.0, 0.0, 0.0, 1.0]);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use ssl_models::ModelsError;
pub use ssl_models::weights::{RawData, RawTensor, TensorMap};

use crate::error::{MhclError, Result};

/// Value of the `format` metadata key.
pub const FORMAT: &str = "mhcl-checkpoint";
/// Current format version (`format_version` metadata key).
pub const FORMAT_VERSION: u32 = 1;

/// The random-number state of a run. Every random draw of training step `t` comes from a
/// generator seeded by `(seed, t)`, and the data order of epoch `e` from `(seed, e)`, so the
/// state is the seed plus the position: a resumed run repeats the draws of an uninterrupted one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// Seed of the run (`--seed`, or drawn at start when not given).
    pub seed: u64,
    /// Training steps done so far (the next step is this one).
    pub step: u64,
}

/// The model a checkpoint holds, checked against the run that loads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// `resnet18`, `resnet50`, ...
    pub arch: String,
    /// Base width of the ResNet (64 = torchvision).
    pub width: usize,
    /// Output dimension of the heads (`--moco-dim`).
    pub dim: usize,
    /// Two-layer MLP `fc` head (`--mlp`).
    pub mlp: bool,
    /// Multiscale MHCL model (`--mhcl`) or plain MoCo v2.
    pub mhcl: bool,
    /// Queue length K (`--moco-k`).
    pub queue_len: usize,
    /// Scales stored in the queue (8 for MHCL, 1 for MoCo).
    pub queue_scales: usize,
    /// Input channels (bands) of the stem; 3 (RGB) in checkpoints written before the field.
    #[serde(default = "rgb_channels")]
    pub in_channels: usize,
}

fn rgb_channels() -> usize {
    3
}

/// Everything in the `meta` metadata entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Completed epochs: a resumed run starts at this epoch (PyTorch's `checkpoint["epoch"]`).
    pub epoch: usize,
    /// Iterations already done within `epoch` (non-zero only for an interrupted epoch).
    pub iteration: usize,
    /// Architecture name (also in the model description, kept here for quick inspection).
    pub arch: String,
    /// The model, when the checkpoint holds one.
    pub model: Option<ModelMeta>,
    /// Random-number state.
    pub rng: RngState,
    /// The run's configuration (`PretrainConfig` / `LinclsConfig` of the `config` module) as
    /// JSON. Null in checkpoints of format 1 before configs
    /// existed, which stored `args` instead.
    #[serde(default)]
    pub config: serde_json::Value,
    /// The command-line arguments (flag name -> value) of checkpoints written before `config`;
    /// kept so that they still load. Null in newer ones.
    #[serde(default)]
    pub args: serde_json::Value,
    /// Writer, e.g. `mhcl 0.1.0`.
    pub writer: String,
    /// What wrote it: `pretrain` or `lincls`.
    #[serde(default)]
    pub kind: String,
    /// Free-form extra state of the writer (e.g. the probe's best accuracies).
    #[serde(default)]
    pub extra: serde_json::Value,
}

impl CheckpointMeta {
    /// Metadata for `arch` at epoch 0.
    pub fn new(arch: &str) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            epoch: 0,
            iteration: 0,
            arch: arch.to_string(),
            model: None,
            rng: RngState { seed: 0, step: 0 },
            config: serde_json::Value::Null,
            args: serde_json::Value::Null,
            writer: format!("mhcl {}", env!("CARGO_PKG_VERSION")),
            kind: String::new(),
            extra: serde_json::Value::Null,
        }
    }
}

/// A checkpoint in memory: metadata and named tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Metadata.
    pub meta: CheckpointMeta,
    /// Tensors by name.
    pub tensors: TensorMap,
}

impl Checkpoint {
    /// An empty checkpoint.
    pub fn new(meta: CheckpointMeta) -> Self {
        Self {
            meta,
            tensors: TensorMap::new(),
        }
    }

    /// Adds (or replaces) a tensor.
    pub fn insert(&mut self, name: impl Into<String>, t: RawTensor) {
        self.tensors.insert(name.into(), t);
    }

    /// Adds every tensor of `map` under `prefix` + name.
    pub fn insert_prefixed(&mut self, prefix: &str, map: TensorMap) {
        for (k, v) in map {
            self.tensors.insert(format!("{prefix}{k}"), v);
        }
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&RawTensor> {
        self.tensors.get(name)
    }

    /// The tensors whose names start with `prefix`, with the prefix removed.
    pub fn with_prefix(&self, prefix: &str) -> TensorMap {
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone())))
            .collect()
    }

    /// The `__metadata__` entries written with the tensors.
    pub fn metadata(&self) -> Result<BTreeMap<String, String>> {
        let meta_json = serde_json::to_string(&self.meta)
            .expect("checkpoint metadata is plain JSON (strings, numbers, maps)");
        Ok(BTreeMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("format_version".to_string(), FORMAT_VERSION.to_string()),
            ("epoch".to_string(), self.meta.epoch.to_string()),
            ("arch".to_string(), self.meta.arch.clone()),
            ("meta".to_string(), meta_json),
        ]))
    }

    /// Writes the checkpoint to a temporary file next to `path`, syncs it and renames it over
    /// `path`: a reader never sees a partial file, and a failed write leaves none behind.
    pub fn write_atomic(&self, path: &Path) -> Result<()> {
        let meta = self.metadata()?;
        ssl_models::weights::write_safetensors(path, &self.tensors, &meta).map_err(|e| match e {
            ModelsError::Io { source, .. } => MhclError::io(path, source),
            other => MhclError::checkpoint(path, other.to_string()),
        })
    }

    /// Reads and checks a checkpoint written by [`Checkpoint::write_atomic`].
    pub fn read(path: &Path) -> Result<Self> {
        let (tensors, info) = ssl_models::weights::read_safetensors(path).map_err(|e| match e {
            ModelsError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                MhclError::checkpoint(path, "no such file")
            }
            ModelsError::Io { source, .. } => MhclError::checkpoint(path, source.to_string()),
            ModelsError::Format { message, .. } => {
                MhclError::checkpoint(path, format!("{message} (corrupt or truncated file?)"))
            }
            other => MhclError::checkpoint(path, other.to_string()),
        })?;
        let meta = Self::parse_metadata(&info).map_err(|m| MhclError::checkpoint(path, m))?;
        Ok(Self { meta, tensors })
    }

    /// Checks the `__metadata__` of a file and returns its [`CheckpointMeta`].
    pub fn parse_metadata(
        info: &BTreeMap<String, String>,
    ) -> std::result::Result<CheckpointMeta, String> {
        if info.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(format!(
                "not an mhcl training checkpoint (no `format: {FORMAT}` in its metadata)"
            ));
        }
        let version: u32 = info
            .get("format_version")
            .and_then(|v| v.parse().ok())
            .ok_or("missing format_version")?;
        if version > FORMAT_VERSION {
            return Err(format!(
                "format version {version} is newer than this program's ({FORMAT_VERSION})"
            ));
        }
        serde_json::from_str(info.get("meta").ok_or("missing `meta`")?)
            .map_err(|e| format!("invalid `meta` entry: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mhcl-ckpt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_keeps_tensors_and_meta() {
        let d = tmpdir("rt");
        let mut meta = CheckpointMeta::new("resnet18");
        meta.epoch = 3;
        meta.rng = RngState { seed: 7, step: 99 };
        meta.args = serde_json::json!({"lr": 0.03, "mhcl": true});
        let mut c = Checkpoint::new(meta);
        c.insert(
            "encoder_q.fc.weight",
            RawTensor::f32([2, 3], vec![1., 2., 3., 4., 5., 6.]),
        );
        c.insert("queue_ptr", RawTensor::i64([1], vec![42]));
        let p = d.join("checkpoint_0002.safetensors");
        c.write_atomic(&p).unwrap();
        let back = Checkpoint::read(&p).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.with_prefix("encoder_q.").len(), 1);
        assert_eq!(back.tensor("queue_ptr").unwrap().as_i64().unwrap(), [42]);
        // only the final file remains
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_missing_and_foreign_files_are_clear_errors() {
        let d = tmpdir("bad");
        let missing = Checkpoint::read(&d.join("nope.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("no such file"), "{missing}");
        std::fs::write(d.join("junk.safetensors"), b"garbage bytes").unwrap();
        let junk = Checkpoint::read(&d.join("junk.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(junk.contains("corrupt"), "{junk}");
        ssl_models::weights::write_safetensors(
            d.join("plain.safetensors"),
            &TensorMap::from([("w".to_string(), RawTensor::f32([1], vec![1.0]))]),
            &BTreeMap::new(),
        )
        .unwrap();
        let foreign = Checkpoint::read(&d.join("plain.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            foreign.contains("not an mhcl training checkpoint"),
            "{foreign}"
        );
        // truncated real checkpoint
        let mut c = Checkpoint::new(CheckpointMeta::new("resnet18"));
        c.insert("queue", RawTensor::f32([4, 4], vec![0.5; 16]));
        c.write_atomic(&d.join("full.safetensors")).unwrap();
        let mut bytes = std::fs::read(d.join("full.safetensors")).unwrap();
        bytes.truncate(bytes.len() - 8);
        std::fs::write(d.join("trunc.safetensors"), &bytes).unwrap();
        assert!(Checkpoint::read(&d.join("trunc.safetensors")).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unwritable_destination_leaves_nothing() {
        let d = tmpdir("unwritable");
        let target = d.join("no_such_dir").join("c.safetensors");
        let c = Checkpoint::new(CheckpointMeta::new("resnet18"));
        assert!(c.write_atomic(&target).is_err());
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
