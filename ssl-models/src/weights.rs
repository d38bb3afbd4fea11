//! Weights by PyTorch name: safetensors read/write, PyTorch `.pth` / `.pth.tar` reading, and
//! strict loading into any module of this crate.
//!
//! Every module of this crate names its tensors as the PyTorch model does
//! (`layer1.0.bn1.running_var`, `global_mlps.0.mlp.2.weight`, `fc.0.weight`, ...), and the
//! functions here move them in PyTorch's layout: Linear weights are `(out, in)` (burn keeps
//! `[in, out]`; the transpose is done here), `num_batches_tracked` is a 0-d `int64`.
//!
//! * [`save_safetensors`] / [`load_safetensors`]: our format. The file loads into the PyTorch
//!   model with `load_state_dict(strict=True)`.
//! * [`load_pytorch`]: a `torch.save` file (zip or legacy pickle), e.g. a torchvision
//!   `state_dict()` or an MHCL/MoCo training checkpoint (`LoadOptions::mhcl_encoder_q()`).
//!   f16 / bf16 / f64 tensors are converted to f32.
//! * [`module_tensors`] / [`load_tensors`]: the same through an in-memory [`TensorMap`], and
//!   [`read_safetensors`] / [`write_safetensors`] for checkpoints that hold more than a module
//!   (queue, optimizer state) plus JSON-able metadata.
//!
//! Loading is strict, as PyTorch's `load_state_dict(strict=True)`: a key the module has and the
//! file lacks, a key the file has and the module lacks, or a shape difference is an
//! [`ModelsError::Mismatch`] listing all of them. [`LoadOptions`] carries explicit allow-lists.
//! One exception follows PyTorch: a missing `*.num_batches_tracked` is accepted (PyTorch's
//! `_BatchNorm._load_from_state_dict` fills it in as well), and listed in
//! [`LoadReport::missing`].

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::visit::{NamedVisitor, TensorPath, visit_named};
use burn::module::{Module, Param};
use burn::prelude::*;
use burn::store::{
    BurnToPyTorchAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, PytorchStore, bridge,
};
use burn::tensor::DType;

use crate::error::{ModelsError, Result, WeightsMismatch};

/// Last name segment of BatchNorm's batch counter.
pub const NUM_BATCHES_TRACKED: &str = "num_batches_tracked";

/// Values of a [`RawTensor`].
#[derive(Clone, Debug, PartialEq)]
pub enum RawData {
    /// Floating point values (files in f16 / bf16 / f64 are converted).
    F32(Vec<f32>),
    /// Integer values (any integer width in a file).
    I64(Vec<i64>),
}

/// A named tensor outside any module: shape (row-major, PyTorch layout) and values.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensor {
    /// Dimensions; empty for a 0-d tensor.
    pub shape: Vec<usize>,
    /// Values, `shape.iter().product()` of them.
    pub data: RawData,
}

/// Tensors by name.
pub type TensorMap = BTreeMap<String, RawTensor>;

impl RawTensor {
    /// A float tensor.
    pub fn f32(shape: impl Into<Vec<usize>>, values: Vec<f32>) -> Self {
        Self {
            shape: shape.into(),
            data: RawData::F32(values),
        }
    }

    /// An integer tensor.
    pub fn i64(shape: impl Into<Vec<usize>>, values: Vec<i64>) -> Self {
        Self {
            shape: shape.into(),
            data: RawData::I64(values),
        }
    }

    /// Number of elements the shape describes.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of values stored.
    pub fn len(&self) -> usize {
        match &self.data {
            RawData::F32(v) => v.len(),
            RawData::I64(v) => v.len(),
        }
    }

    /// True when no value is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as f32 (integers converted).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            RawData::F32(v) => v.clone(),
            RawData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The float values, if this is a float tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            RawData::F32(v) => Some(v),
            RawData::I64(_) => None,
        }
    }

    /// The integer values, if this is an integer tensor.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            RawData::I64(v) => Some(v),
            RawData::F32(_) => None,
        }
    }

    fn check(&self, name: &str) -> Result<()> {
        if self.numel() != self.len() {
            return Err(ModelsError::Tensor(format!(
                "tensor `{name}`: shape {:?} needs {} values, {} given",
                self.shape,
                self.numel(),
                self.len()
            )));
        }
        Ok(())
    }

    /// The tensor as burn [`TensorData`] (F32 or I64).
    pub fn to_tensor_data(&self) -> TensorData {
        match &self.data {
            RawData::F32(v) => TensorData::new(v.clone(), self.shape.clone()),
            RawData::I64(v) => TensorData::new(v.clone(), self.shape.clone()),
        }
    }

    fn into_tensor_data(self) -> TensorData {
        match self.data {
            RawData::F32(v) => TensorData::new(v, self.shape),
            RawData::I64(v) => TensorData::new(v, self.shape),
        }
    }

    /// Converts burn [`TensorData`]: floats of any width to f32, integers to i64.
    ///
    /// # Errors
    /// For boolean or quantized data.
    pub fn from_tensor_data(data: TensorData) -> Result<Self> {
        let shape = data.shape().to_vec();
        let dtype = data.dtype();
        let bad =
            |e: burn::tensor::DataError| ModelsError::Tensor(format!("{dtype:?} data: {e:?}"));
        let data = if dtype.is_float() {
            RawData::F32(data.try_into_vec_as::<f32>().map_err(bad)?)
        } else if dtype.is_int() || dtype.is_uint() {
            RawData::I64(data.try_into_vec_as::<i64>().map_err(bad)?)
        } else {
            return Err(ModelsError::Tensor(format!(
                "unsupported tensor dtype {dtype:?}"
            )));
        };
        Ok(Self { shape, data })
    }
}

/// How [`load_tensors`], [`load_safetensors`] and [`load_pytorch`] match a file to a module.
///
/// The default is strict and reads the file's top level as the state dict.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Key of the dictionary holding the tensors in a pickle file (`"state_dict"` in MoCo /
    /// MHCL checkpoints); `None`: the top level. Ignored for safetensors, which are flat.
    pub top_level_key: Option<String>,
    /// Keep only the keys with this prefix, without it (`"module.encoder_q."` in MoCo / MHCL
    /// checkpoints); the other keys are ignored (listed in [`LoadReport::ignored`]).
    pub strip_prefix: Option<String>,
    /// Name prefixes of module tensors that may be absent from the file (they keep their
    /// current values), e.g. `"fc."` for a linear probe whose head is new.
    pub allow_missing: Vec<String>,
    /// Name prefixes of file tensors that are not loaded and not an error, e.g.
    /// `"global_mlps."` and `"fc."` to take the backbone of a pretrained encoder. These keys
    /// are left out even where the module has a tensor of that name (as `main_lincls.py`
    /// deletes `fc` from the checkpoint before `load_state_dict`).
    pub allow_unused: Vec<String>,
    /// Load an RGB stem (`conv1.weight` with 3 input channels) into a module whose stem takes
    /// another number of bands, by [`adapt_input_conv`]'s rule; default false (a mismatch).
    pub adapt_input_conv: bool,
}

impl LoadOptions {
    /// Strict loading of a top-level state dict.
    pub fn new() -> Self {
        Self::default()
    }

    /// The encoder_q of an original MHCL / MoCo training checkpoint
    /// (`checkpoint_XXXX.pth.tar`): `top_level_key = "state_dict"`,
    /// `strip_prefix = "module.encoder_q."`.
    pub fn mhcl_encoder_q() -> Self {
        Self::new()
            .with_top_level_key("state_dict")
            .with_strip_prefix("module.encoder_q.")
    }

    /// The backbone for a linear probe: `fc.*` may be missing (new classifier), the
    /// projection heads `global_mlps.*` and `fc.*` of the file are not loaded.
    pub fn probe_backbone(self) -> Self {
        self.with_allow_missing(["fc."])
            .with_allow_unused(["global_mlps.", "fc."])
    }

    /// Loads an RGB stem into a stem of another band count ([`adapt_input_conv`]).
    pub fn with_adapt_input_conv(mut self, yes: bool) -> Self {
        self.adapt_input_conv = yes;
        self
    }

    /// Sets the top-level key.
    pub fn with_top_level_key(mut self, key: impl Into<String>) -> Self {
        self.top_level_key = Some(key.into());
        self
    }

    /// Sets the prefix to strip.
    pub fn with_strip_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.strip_prefix = Some(prefix.into());
        self
    }

    /// Adds prefixes of module tensors allowed to be missing.
    pub fn with_allow_missing<I, S>(mut self, prefixes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allow_missing
            .extend(prefixes.into_iter().map(Into::into));
        self
    }

    /// Adds prefixes of file tensors allowed to stay unused (and not loaded).
    pub fn with_allow_unused<I, S>(mut self, prefixes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allow_unused
            .extend(prefixes.into_iter().map(Into::into));
        self
    }
}

/// What a successful load did. All lists are sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Module tensors set from the file.
    pub applied: Vec<String>,
    /// Module tensors absent from the file and allowed to be (they kept their values).
    pub missing: Vec<String>,
    /// File tensors not loaded because an `allow_unused` prefix covers them.
    pub unused: Vec<String>,
    /// File keys outside `strip_prefix` (e.g. `module.encoder_k.*`, `module.queue`).
    pub ignored: Vec<String>,
    /// RGB stems loaded into a stem of another band count ([`adapt_input_conv`]).
    pub adapted: Vec<String>,
}

/// The stem convolution's name in a torchvision ResNet.
pub const STEM_WEIGHT: &str = "conv1.weight";

/// An RGB stem's weight `(out, 3, kh, kw)` for `in_channels` input bands, by the rule of timm's
/// `adapt_input_conv` (which torchgeo uses for its multispectral ResNets):
///
/// * 1 band: the sum of the three RGB filters;
/// * N > 1 bands: the RGB filters repeated cyclically over the bands (band `b` gets filter
///   `b mod 3`) and scaled by `3 / N`, so that an input with every band equal to the mean of
///   R, G and B has the same response as the RGB stem;
/// * 3 bands: unchanged.
///
/// # Errors
/// [`ModelsError::Tensor`] when `weight` is not a 4-d f32 tensor with 3 input channels, or
/// `in_channels` is 0.
pub fn adapt_input_conv(weight: &RawTensor, in_channels: usize) -> Result<RawTensor> {
    let [out, 3, kh, kw] = weight.shape[..] else {
        return Err(ModelsError::Tensor(format!(
            "adapt_input_conv: weight of shape {:?} is not (out, 3, kh, kw)",
            weight.shape
        )));
    };
    let Some(w) = weight.as_f32() else {
        return Err(ModelsError::Tensor(
            "adapt_input_conv: weight is not f32".into(),
        ));
    };
    if in_channels == 0 {
        return Err(ModelsError::Tensor(
            "adapt_input_conv: 0 input channels".into(),
        ));
    }
    let k = kh * kw;
    let mut values = Vec::with_capacity(out * in_channels * k);
    for o in 0..out {
        let filters = &w[o * 3 * k..(o + 1) * 3 * k];
        if in_channels == 1 {
            values.extend((0..k).map(|i| filters[i] + filters[k + i] + filters[2 * k + i]));
            continue;
        }
        let scale = 3.0 / in_channels as f32;
        for b in 0..in_channels {
            let f = &filters[(b % 3) * k..(b % 3 + 1) * k];
            values.extend(f.iter().map(|&v| v * scale));
        }
    }
    Ok(RawTensor::f32([out, in_channels, kh, kw], values))
}

fn is_counter(name: &str) -> bool {
    name == NUM_BATCHES_TRACKED || name.ends_with(".num_batches_tracked")
}

fn has_prefix(name: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| name.starts_with(p.as_str()))
}

/// PyTorch's 0-d counter and burn's `[1]` one compare equal.
fn comparable_shape(name: &str, shape: &[usize]) -> Vec<usize> {
    if is_counter(name) && shape.iter().product::<usize>() == 1 {
        Vec::new()
    } else {
        shape.to_vec()
    }
}

/// Names and shapes (PyTorch layout) of every tensor of `module`: parameters and buffers,
/// `num_batches_tracked` as `[]`. Reads no tensor data back.
pub fn module_shapes<M: Module>(module: &M) -> BTreeMap<String, Vec<usize>> {
    module
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
        .into_iter()
        .map(|t| {
            let shape = comparable_shape(&t.name, t.shape.as_slice());
            (t.name, shape)
        })
        .collect()
}

/// Every tensor of `module` under its PyTorch name, in PyTorch layout (a `state_dict()`):
/// Linear weights `(out, in)`, `num_batches_tracked` as a 0-d i64.
///
/// # Errors
/// When a tensor cannot be read back from its device.
pub fn module_tensors<M: Module>(module: &M) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    for t in module.collect(None, Some(Box::new(BurnToPyTorchAdapter)), true) {
        let name = t.name.clone();
        let data = bridge::into_data(t)
            .map_err(|e| ModelsError::Tensor(format!("cannot read `{name}`: {e:?}")))?;
        let mut raw = RawTensor::from_tensor_data(data)?;
        if is_counter(&name) && raw.numel() == 1 {
            raw.shape.clear();
        }
        out.insert(name, raw);
    }
    Ok(out)
}

/// Loads named tensors (PyTorch names and layout) into `module`, strictly unless `options`
/// allows otherwise; see the module docs. The module is returned with the values set.
///
/// # Errors
/// [`ModelsError::Mismatch`] listing every missing, unexpected and shape-mismatched tensor;
/// [`ModelsError::Tensor`] for a tensor whose values do not fill its shape.
pub fn load_tensors<M: Module>(
    mut module: M,
    tensors: TensorMap,
    options: &LoadOptions,
) -> Result<(M, LoadReport)> {
    let mut report = LoadReport::default();

    let tensors: TensorMap = match options.strip_prefix.as_deref() {
        Some(prefix) if !prefix.is_empty() => tensors
            .into_iter()
            .filter_map(|(k, v)| match k.strip_prefix(prefix) {
                Some(rest) => Some((rest.to_string(), v)),
                None => {
                    report.ignored.push(k);
                    None
                }
            })
            .collect(),
        _ => tensors,
    };

    let expected = module_shapes(&module);
    let mut mismatch = WeightsMismatch::default();
    let mut to_apply = Vec::with_capacity(tensors.len());
    let mut applied_names = Vec::with_capacity(tensors.len());
    let mut present = std::collections::BTreeSet::new();
    for (name, mut raw) in tensors {
        if has_prefix(&name, &options.allow_unused) {
            report.unused.push(name);
            continue;
        }
        let Some(want) = expected.get(&name) else {
            mismatch.unexpected.push(name);
            continue;
        };
        raw.check(&name)?;
        if options.adapt_input_conv
            && name == STEM_WEIGHT
            && let [o, c, kh, kw] = want[..]
            && raw.shape == [o, 3, kh, kw]
            && c != 3
        {
            raw = adapt_input_conv(&raw, c)?;
            report.adapted.push(name.clone());
        }
        let got = comparable_shape(&name, &raw.shape);
        if &got != want {
            present.insert(name.clone());
            mismatch
                .shape_mismatch
                .push((name, want.clone(), raw.shape));
            continue;
        }
        if is_counter(&name) {
            // burn keeps the counter as an int tensor of shape [1].
            let count = raw.to_f32().first().copied().unwrap_or(0.0);
            raw = match raw.data {
                RawData::I64(v) => RawTensor::i64([1], v),
                RawData::F32(_) => RawTensor::i64([1], vec![count as i64]),
            };
        }
        applied_names.push(name.clone());
        to_apply.push(bridge::from_data(raw.into_tensor_data(), name, None));
    }
    for name in expected.keys() {
        if applied_names.binary_search(name).is_ok() || present.contains(name) {
            continue;
        }
        if is_counter(name) || has_prefix(name, &options.allow_missing) {
            report.missing.push(name.clone());
        } else {
            mismatch.missing.push(name.clone());
        }
    }
    if !mismatch.is_empty() {
        return Err(ModelsError::Mismatch(mismatch));
    }

    let result = module.apply(to_apply, None, Some(Box::new(PyTorchToBurnAdapter)), true);
    if !result.errors.is_empty() {
        mismatch.other = result.errors.iter().map(|e| e.to_string()).collect();
        return Err(ModelsError::Mismatch(mismatch));
    }
    let mut applied = result.applied;
    applied.sort();
    if applied != applied_names {
        return Err(ModelsError::Tensor(format!(
            "{} of {} tensors were applied",
            applied.len(),
            applied_names.len()
        )));
    }
    report.applied = applied;
    Ok((module, report))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelsError + '_ {
    move |source| ModelsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn format_err(path: &Path, message: impl Into<String>) -> ModelsError {
    ModelsError::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn safetensors_dtype(d: safetensors::Dtype) -> Option<DType> {
    use safetensors::Dtype as S;
    Some(match d {
        S::F64 => DType::F64,
        S::F32 => DType::F32,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::I64 => DType::I64,
        S::I32 => DType::I32,
        S::I16 => DType::I16,
        S::I8 => DType::I8,
        S::U64 => DType::U64,
        S::U32 => DType::U32,
        S::U16 => DType::U16,
        S::U8 | S::BOOL => DType::U8,
        _ => return None,
    })
}

/// Reads every tensor of a safetensors file (floats as f32, integers as i64) and its
/// `__metadata__` strings.
///
/// # Errors
/// [`ModelsError::Io`] when the file cannot be read, [`ModelsError::Format`] when it is not
/// valid safetensors or holds an unsupported dtype.
pub fn read_safetensors(path: impl AsRef<Path>) -> Result<(TensorMap, BTreeMap<String, String>)> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(io_err(path))?;
    parse_safetensors(&bytes, path)
}

/// Tensors and string metadata of safetensors `bytes` (a file's contents, or
/// [`safetensors_bytes`] sent over a process group); `origin` names them in errors.
///
/// # Errors
/// [`ModelsError::Format`] when the bytes are not valid safetensors or hold an unsupported
/// dtype.
pub fn parse_safetensors(
    bytes: &[u8],
    origin: &Path,
) -> Result<(TensorMap, BTreeMap<String, String>)> {
    let path = origin;
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| format_err(path, format!("not a safetensors file: {e}")))?;
    let metadata: BTreeMap<String, String> = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| format_err(path, format!("not a safetensors file: {e}")))?;
    let mut out = TensorMap::new();
    for (name, view) in st.iter() {
        let dtype = safetensors_dtype(view.dtype()).ok_or_else(|| {
            format_err(
                path,
                format!("tensor `{name}` has unsupported dtype {:?}", view.dtype()),
            )
        })?;
        let data =
            TensorData::try_from_bytes_vec(view.data().to_vec(), view.shape().to_vec(), dtype)
                .map_err(|e| format_err(path, format!("tensor `{name}`: {e:?}")))?;
        let raw = RawTensor::from_tensor_data(data)
            .map_err(|e| format_err(path, format!("tensor `{name}`: {e}")))?;
        out.insert(name.to_string(), raw);
    }
    Ok((out, metadata))
}

/// `tensors` as the bytes of a safetensors file without metadata (what [`parse_safetensors`]
/// reads back).
///
/// # Errors
/// [`ModelsError::Tensor`] for a tensor whose values do not fill its shape.
pub fn safetensors_bytes(tensors: &TensorMap) -> Result<Vec<u8>> {
    let views = checked_views(tensors)?;
    safetensors::serialize(views, None)
        .map_err(|e| format_err(Path::new("<memory>"), e.to_string()))
}

struct View<'a> {
    shape: &'a [usize],
    data: &'a RawData,
}

/// The safetensors views of `tensors`, each checked to fill its shape.
fn checked_views(tensors: &TensorMap) -> Result<Vec<(&str, View<'_>)>> {
    tensors
        .iter()
        .map(|(name, t)| {
            t.check(name)?;
            Ok((
                name.as_str(),
                View {
                    shape: &t.shape,
                    data: &t.data,
                },
            ))
        })
        .collect()
}

impl safetensors::View for View<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self.data {
            RawData::F32(_) => safetensors::Dtype::F32,
            RawData::I64(_) => safetensors::Dtype::I64,
        }
    }

    fn shape(&self) -> &[usize] {
        self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let bytes: Vec<u8> = match self.data {
            RawData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            RawData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        std::borrow::Cow::Owned(bytes)
    }

    fn data_len(&self) -> usize {
        match self.data {
            RawData::F32(v) => v.len() * 4,
            RawData::I64(v) => v.len() * 8,
        }
    }
}

/// Writes `path` through a temporary file in the same directory, synced and renamed over
/// `path`: readers see the old file or the new one, never a partial one.
fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| format_err(path, "not a file path"))?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let result = write(&tmp).and_then(|()| {
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes tensors and string metadata as a safetensors file, atomically (temporary file +
/// rename).
///
/// # Errors
/// [`ModelsError::Tensor`] for a tensor whose values do not fill its shape,
/// [`ModelsError::Io`] / [`ModelsError::Format`] when writing fails.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &TensorMap,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let views = checked_views(tensors)?;
    let meta: Option<HashMap<String, String>> = (!metadata.is_empty()).then(|| {
        metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    });
    write_atomic(path, |tmp| {
        safetensors::serialize_to_file(views, meta, tmp).map_err(|e| match e {
            safetensors::SafeTensorError::IoError(source) => ModelsError::Io {
                path: tmp.to_path_buf(),
                source,
            },
            other => format_err(path, other.to_string()),
        })
    })
}

/// Saves every tensor of `module` as a safetensors file with PyTorch names and layout
/// (a `state_dict()`), atomically. Metadata: `{"format": "pt"}`.
///
/// # Errors
/// As [`module_tensors`] and [`write_safetensors`].
pub fn save_safetensors<M: Module>(module: &M, path: impl AsRef<Path>) -> Result<()> {
    let tensors = module_tensors(module)?;
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(path, &tensors, &meta)
}

/// Loads a safetensors file with PyTorch names into `module` (see [`load_tensors`]).
///
/// # Errors
/// As [`read_safetensors`] and [`load_tensors`].
pub fn load_safetensors<M: Module>(
    module: M,
    path: impl AsRef<Path>,
    options: &LoadOptions,
) -> Result<(M, LoadReport)> {
    let (tensors, _) = read_safetensors(path)?;
    load_tensors(module, tensors, options)
}

/// Reads the tensors of a `torch.save` file (`.pth`, `.pth.tar`, zip or legacy format),
/// optionally from the dictionary under `top_level_key`. Keys are the file's, indices untouched
/// (`fc.0`, `fc.2` stay as they are); floats become f32, integers i64. Non-tensor entries
/// (epoch, arch, optimizer hyper-parameters) are skipped.
///
/// # Errors
/// [`ModelsError::Io`] when the file cannot be opened, [`ModelsError::Format`] when it is not
/// a readable PyTorch file or lacks `top_level_key`.
pub fn read_pytorch(path: impl AsRef<Path>, top_level_key: Option<&str>) -> Result<TensorMap> {
    let path = path.as_ref();
    fs::metadata(path).map_err(io_err(path))?;
    let mut store = PytorchStore::from_file(path).map_indices_contiguous(false);
    if let Some(key) = top_level_key {
        store = store.with_top_level_key(key);
    }
    let tensors = store
        .get_all_tensors()
        .map_err(|e| format_err(path, format!("cannot read PyTorch file: {e}")))?;
    let mut out = TensorMap::new();
    for (name, t) in tensors {
        let data =
            bridge::to_data(t).map_err(|e| format_err(path, format!("tensor `{name}`: {e:?}")))?;
        let raw = RawTensor::from_tensor_data(data)
            .map_err(|e| format_err(path, format!("tensor `{name}`: {e}")))?;
        out.insert(name.clone(), raw);
    }
    Ok(out)
}

/// Loads a `torch.save` file into `module`: [`read_pytorch`] with
/// `options.top_level_key`, then [`load_tensors`].
///
/// ```no_run
/// use burn::prelude::*;
/// use ssl_models::{Arch, MhclEncoderConfig, weights::{load_pytorch, LoadOptions}};
///
/// let dev = Device::flex();
/// let enc = MhclEncoderConfig::new(Arch::ResNet50).with_mlp(true).init(&dev);
/// let (enc, report) = load_pytorch(enc, "checkpoint_0199.pth.tar", &LoadOptions::mhcl_encoder_q())?;
/// println!("{} tensors loaded", report.applied.len());
/// # Ok::<(), ssl_models::ModelsError>(())
/// ```
///
/// # Errors
/// As [`read_pytorch`] and [`load_tensors`].
pub fn load_pytorch<M: Module>(
    module: M,
    path: impl AsRef<Path>,
    options: &LoadOptions,
) -> Result<(M, LoadReport)> {
    let tensors = read_pytorch(path, options.top_level_key.as_deref())?;
    load_tensors(module, tensors, options)
}

/// Number of trainable values (PyTorch's `sum(p.numel() for p in model.parameters())`):
/// every float tensor except the BatchNorm buffers `running_mean` / `running_var`.
pub fn parameter_count<M: Module>(module: &M) -> usize {
    struct Count(usize);
    impl NamedVisitor for Count {
        fn float<const D: usize>(&mut self, path: &TensorPath, p: &Param<Tensor<D>>) {
            if !matches!(path.last(), Some("running_mean" | "running_var")) {
                self.0 += p.lazy_shape().num_elements();
            }
        }
    }
    let mut c = Count(0);
    visit_named(module, &mut c);
    c.0
}

/// Writes `bytes` to `path` atomically (temporary file + rename); for small side files such as
/// JSON written next to a checkpoint.
///
/// # Errors
/// [`ModelsError::Io`] when writing fails.
pub fn write_file_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    write_atomic(path, |tmp| {
        let mut f = fs::File::create(tmp).map_err(io_err(tmp))?;
        f.write_all(bytes).map_err(io_err(tmp))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Arch, MhclEncoderConfig, ResNetConfig};

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("ssl-models-unit-{}-{name}", std::process::id()))
    }

    #[test]
    fn a_failed_write_leaves_the_previous_file_and_no_temporary() {
        let dir = tmp("disk-full");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("checkpoint.safetensors");
        fs::write(&path, b"previous checkpoint").unwrap();
        // the disk fills up half way through the new file
        let err = write_atomic(&path, |tmp| {
            fs::write(tmp, b"half of the new").map_err(io_err(tmp))?;
            Err(io_err(tmp)(std::io::Error::from_raw_os_error(28))) // ENOSPC
        })
        .unwrap_err();
        assert!(err.to_string().contains("No space left"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"previous checkpoint");
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("checkpoint.safetensors")]
        );
        // a rename that fails (the target is a non-empty directory) cleans up the same way
        let blocked = dir.join("blocked.json");
        fs::create_dir_all(blocked.join("x")).unwrap();
        assert!(write_file_atomic(&blocked, b"{}").is_err());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn safetensors_round_trip_is_exact() {
        let dev = Device::flex();
        let enc = MhclEncoderConfig::new(Arch::ResNet18)
            .with_width(2)
            .with_dim(4)
            .with_mlp(true)
            .init(&dev);
        let path = tmp("rt.safetensors");
        save_safetensors(&enc, &path).unwrap();
        let fresh = MhclEncoderConfig::new(Arch::ResNet18)
            .with_width(2)
            .with_dim(4)
            .with_mlp(true)
            .init(&dev);
        let (fresh, report) = load_safetensors(fresh, &path, &LoadOptions::new()).unwrap();
        assert!(report.missing.is_empty() && report.unused.is_empty());
        assert_eq!(
            module_tensors(&fresh).unwrap(),
            module_tensors(&enc).unwrap()
        );
        let (raw, meta) = read_safetensors(&path).unwrap();
        assert_eq!(meta["format"], "pt");
        assert_eq!(raw["bn1.num_batches_tracked"], RawTensor::i64([], vec![0]));
        fs::remove_file(path).unwrap();
    }

    #[test]
    fn strict_load_lists_missing_unexpected_and_shapes() {
        let dev = Device::flex();
        let m = ResNetConfig::new(Arch::ResNet18)
            .with_width(2)
            .with_num_classes(3)
            .init(&dev);
        let mut t = module_tensors(&m).unwrap();
        t.remove("fc.bias");
        t.insert("extra.weight".into(), RawTensor::f32([1], vec![0.0]));
        t.insert(
            "conv1.weight".into(),
            RawTensor::f32([1, 3, 7, 7], vec![0.0; 147]),
        );
        let err = load_tensors(m.clone(), t.clone(), &LoadOptions::new()).unwrap_err();
        let ModelsError::Mismatch(mm) = &err else {
            panic!("{err}")
        };
        assert_eq!(mm.missing, vec!["fc.bias".to_string()]);
        assert_eq!(mm.unexpected, vec!["extra.weight".to_string()]);
        assert_eq!(mm.shape_mismatch[0].0, "conv1.weight");
        let text = err.to_string();
        assert!(
            text.contains("fc.bias") && text.contains("extra.weight"),
            "{text}"
        );

        // Counters may be missing, as in PyTorch.
        let mut ok = module_tensors(&m).unwrap();
        ok.retain(|k, _| !k.ends_with("num_batches_tracked"));
        let (_, r) = load_tensors(m, ok, &LoadOptions::new()).unwrap();
        assert_eq!(r.missing.len(), 20);
    }

    #[test]
    fn wrong_value_count_is_an_error() {
        let dir = tmp("bad.safetensors");
        let mut t = TensorMap::new();
        t.insert("a".into(), RawTensor::f32([2, 2], vec![1.0; 3]));
        assert!(write_safetensors(&dir, &t, &BTreeMap::new()).is_err());
        assert!(!dir.exists());
    }
}
