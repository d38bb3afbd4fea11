//! Test support for the workspace: reads the PyTorch conformance vectors and compares results
//! with the tolerances stored next to them.
//!
//! The vectors live in a directory holding `manifest.json` plus one safetensors file per case
//! (see `tests/conformance/README.md`). [`ConformanceSet::open`] reads the directory named by the
//! environment variable `SSL_CONFORMANCE_DIR`, or else the copy committed at
//! `tests/conformance/` in the workspace. A directory that is set but empty or missing makes the
//! calling test fail: conformance tests never skip.
//!
//! ```no_run
//! let set = ssl_conformance::ConformanceSet::open();
//! let case = set.case("moco_infonce");
//! let n = case.param_usize("N");
//! let q = case.f32("q");
//! # let got = q.clone();
//! case.assert_close("q", &got);
//! # let _ = n;
//! ```
//!
//! Every shape must come from the manifest ([`Case::shape`], [`Case::params`]): the same tests
//! run against other vector sets with other shapes.

pub mod checker;
pub mod fuzz;

pub use checker::{Checker, DEVICE_VAR, error_ratio, test_device};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Environment variable naming the conformance directory.
pub const ENV_VAR: &str = "SSL_CONFORMANCE_DIR";

/// The committed copy of the vectors, used when [`ENV_VAR`] is unset.
pub fn committed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance")
}

/// A directory of conformance vectors: `manifest.json`, one safetensors file per case, fixtures.
pub struct ConformanceSet {
    dir: PathBuf,
    manifest: Value,
}

impl ConformanceSet {
    /// Opens `$SSL_CONFORMANCE_DIR`, else the committed copy.
    ///
    /// # Panics
    /// When the directory is missing, empty, or has no readable `manifest.json`: a conformance
    /// test must fail, not skip, without its vectors.
    pub fn open() -> Self {
        let dir = match std::env::var_os(ENV_VAR) {
            Some(d) => PathBuf::from(d),
            None => committed_dir(),
        };
        Self::open_dir(&dir)
    }

    /// Opens an explicit directory (same failure rules as [`ConformanceSet::open`]).
    pub fn open_dir(dir: &Path) -> Self {
        let manifest_path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&manifest_path).unwrap_or_else(|e| {
            panic!(
                "conformance vectors not found: cannot read {} ({e}); set {ENV_VAR} to a directory made by reference/gen_conformance.py",
                manifest_path.display()
            )
        });
        let manifest: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", manifest_path.display()));
        let cases = manifest["cases"].as_object().map_or(0, |c| c.len());
        assert!(
            cases > 0,
            "{}: manifest lists no cases",
            manifest_path.display()
        );
        Self {
            dir: dir.to_path_buf(),
            manifest,
        }
    }

    /// The directory the vectors were read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The whole manifest.
    pub fn manifest(&self) -> &Value {
        &self.manifest
    }

    /// Loads one case with all its tensors.
    ///
    /// # Panics
    /// When the manifest has no such case or its file cannot be read.
    pub fn case(&self, name: &str) -> Case {
        let entry = &self.manifest["cases"][name];
        assert!(
            entry.is_object(),
            "conformance case `{name}` missing from {}",
            self.dir.join("manifest.json").display()
        );
        let file = self
            .dir
            .join(entry["file"].as_str().expect("case without file"));
        let bytes = std::fs::read(&file)
            .unwrap_or_else(|e| panic!("cannot read conformance file {}: {e}", file.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("{}: invalid safetensors: {e}", file.display()));
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let t = StoredTensor {
                    dtype: format!("{:?}", view.dtype()),
                    shape: view.shape().to_vec(),
                    bytes: view.data().to_vec(),
                };
                (name, t)
            })
            .collect();
        Case {
            name: name.to_string(),
            entry: entry.clone(),
            tensors,
        }
    }

    /// Path of a file under `fixtures/`, checked to exist.
    pub fn fixture(&self, file: &str) -> PathBuf {
        let p = self.dir.join("fixtures").join(file);
        assert!(p.is_file(), "conformance fixture {} missing", p.display());
        p
    }

    /// The manifest entry describing a fixture (`manifest["fixtures"][file]`).
    pub fn fixture_info(&self, file: &str) -> &Value {
        let v = &self.manifest["fixtures"][file];
        assert!(v.is_object(), "fixture `{file}` missing from the manifest");
        v
    }
}

/// One tensor as stored: dtype name (`F32`, `I64`, `U8`, ...), shape, little-endian bytes.
#[derive(Clone, Debug)]
pub struct StoredTensor {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl StoredTensor {
    /// Values as f32 (F32 stored; I64 and U8 converted).
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype.as_str() {
            "F32" => self
                .bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            "I64" => self.to_i64().into_iter().map(|v| v as f32).collect(),
            "U8" => self.bytes.iter().map(|&v| f32::from(v)).collect(),
            other => panic!("cannot read dtype {other} as f32"),
        }
    }

    /// Values as i64 (I64 stored).
    pub fn to_i64(&self) -> Vec<i64> {
        assert_eq!(self.dtype, "I64", "tensor is {} not I64", self.dtype);
        self.bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// One case: its manifest entry and its tensors.
pub struct Case {
    pub name: String,
    entry: Value,
    tensors: BTreeMap<String, StoredTensor>,
}

impl Case {
    /// `manifest["cases"][name]["params"]`.
    pub fn params(&self) -> &Value {
        &self.entry["params"]
    }

    /// A numeric parameter as usize.
    pub fn param_usize(&self, key: &str) -> usize {
        self.params()[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: param `{key}` is not an integer", self.name))
            as usize
    }

    /// A numeric parameter as f64.
    pub fn param_f64(&self, key: &str) -> f64 {
        self.params()[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: param `{key}` is not a number", self.name))
    }

    /// A list parameter of numbers.
    pub fn param_f64s(&self, key: &str) -> Vec<f64> {
        self.params()[key]
            .as_array()
            .unwrap_or_else(|| panic!("{}: param `{key}` is not a list", self.name))
            .iter()
            .map(|v| v.as_f64().expect("number"))
            .collect()
    }

    /// A list parameter of strings.
    pub fn param_strings(&self, key: &str) -> Vec<String> {
        self.params()[key]
            .as_array()
            .unwrap_or_else(|| panic!("{}: param `{key}` is not a list", self.name))
            .iter()
            .map(|v| v.as_str().expect("string").to_string())
            .collect()
    }

    /// The stored tensor `name`.
    pub fn tensor(&self, name: &str) -> &StoredTensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("{}: tensor `{name}` missing", self.name))
    }

    /// Shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.tensor(name).shape.clone()
    }

    /// Values of tensor `name` as f32.
    pub fn f32(&self, name: &str) -> Vec<f32> {
        self.tensor(name).to_f32()
    }

    /// Values of tensor `name` as i64.
    pub fn i64(&self, name: &str) -> Vec<i64> {
        self.tensor(name).to_i64()
    }

    /// Raw u8 values of a U8 tensor.
    pub fn u8(&self, name: &str) -> Vec<u8> {
        let t = self.tensor(name);
        assert_eq!(
            t.dtype, "U8",
            "{}: `{name}` is {} not U8",
            self.name, t.dtype
        );
        t.bytes.clone()
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    /// Names starting with `prefix`, with the prefix removed, sorted.
    pub fn names_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.tensors
            .keys()
            .filter_map(|k| k.strip_prefix(prefix).map(str::to_string))
            .collect()
    }

    /// `(atol, rtol)` for an output tensor (`tolerances[name]`).
    pub fn tolerance(&self, name: &str) -> (f64, f64) {
        let t = &self.entry["tolerances"][name];
        let atol = t["atol"]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: no tolerance for `{name}`", self.name));
        (atol, t["rtol"].as_f64().unwrap_or(0.0))
    }

    /// Asserts `got` matches tensor `name` element-wise within its manifest tolerance
    /// (`|got - want| <= atol + rtol * |want|`); integer tensors must match exactly.
    pub fn assert_close(&self, name: &str, got: &[f32]) {
        let (atol, rtol) = if self.tensor(name).dtype == "I64" {
            (0.0, 0.0)
        } else {
            self.tolerance(name)
        };
        self.assert_close_with(name, got, atol, rtol);
    }

    /// Like [`Case::assert_close`] with explicit tolerances.
    pub fn assert_close_with(&self, name: &str, got: &[f32], atol: f64, rtol: f64) {
        let want = self.f32(name);
        if let Some(msg) = compare(&want, got, atol, rtol) {
            panic!("{}/{name}: {msg}", self.name);
        }
    }
}

/// Compares element-wise; `None` when every element is within `atol + rtol*|want|`, else a
/// message naming the count of failures and the worst element.
pub fn compare(want: &[f32], got: &[f32], atol: f64, rtol: f64) -> Option<String> {
    if want.len() != got.len() {
        return Some(format!("length {} != expected {}", got.len(), want.len()));
    }
    let mut bad = 0usize;
    let mut worst = (0usize, 0f64, 0f64);
    for (i, (&w, &g)) in want.iter().zip(got).enumerate() {
        let (w, g) = (f64::from(w), f64::from(g));
        let err = (g - w).abs();
        let excess = err - (atol + rtol * w.abs());
        if excess > 0.0 || !g.is_finite() {
            bad += 1;
            if excess > worst.1 || !g.is_finite() {
                worst = (i, excess, err);
            }
        }
    }
    (bad > 0).then(|| {
        let i = worst.0;
        format!(
            "{bad} of {} elements out of tolerance (atol {atol}, rtol {rtol}); worst at {i}: got {} want {} (|diff| {:e})",
            want.len(),
            got[i],
            want[i],
            worst.2
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_accepts_values_within_atol_plus_rtol() {
        assert!(compare(&[1.0, -2.0], &[1.0005, -2.001], 1e-3, 1e-3).is_none());
    }

    #[test]
    fn compare_rejects_value_outside_tolerance() {
        assert!(compare(&[1.0], &[1.1], 1e-3, 1e-3).is_some());
    }

    #[test]
    fn compare_rejects_nan() {
        assert!(compare(&[1.0], &[f32::NAN], 1.0, 1.0).is_some());
    }

    #[test]
    fn committed_set_opens_and_lists_cases() {
        let set = ConformanceSet::open();
        assert!(set.manifest()["cases"].as_object().unwrap().len() >= 9);
    }

    #[test]
    #[should_panic(expected = "conformance vectors not found")]
    fn empty_directory_fails() {
        let dir = std::env::temp_dir().join(format!("ssl-conf-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        ConformanceSet::open_dir(&dir);
    }
}
