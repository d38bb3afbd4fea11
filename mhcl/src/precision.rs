//! `--precision f32|bf16`: the number format of the encoder forwards in training.
//!
//! `f32` (the default) computes everything in float32, as the reference does.
//!
//! `bf16` is mixed precision in the spirit of `torch.autocast(dtype=torch.bfloat16)`:
//!
//! * **f32 master copy.** Parameters, BatchNorm buffers, the key encoder, the queue, the SGD
//!   momentum buffers and checkpoints stay float32. The EMA and the SGD update run in f32, so
//!   small updates are not lost to bf16's 8-bit mantissa.
//! * **bf16 encoder forwards.** Each step makes a bf16 view of the query encoder (its parameters
//!   go through a differentiable cast, so the backward runs in bf16 through the network and the
//!   gradients arrive in f32 at the master parameters) and runs it on the bf16 crop; the key
//!   encoder likewise, without gradients. Their outputs are cast to f32.
//! * **f32 loss.** Normalization, the logits against the queue, log-softmax and the weighting of
//!   the scales run in f32 (autocast runs softmax-type ops in f32 too; it would run the logits
//!   matmul in bf16).
//! * **BatchNorm** runs inside the bf16 forward, statistics included (autocast keeps it in f32);
//!   the running statistics are updated there and written back to the f32 master after each
//!   forward, so they carry bf16 rounding (relative 2^-9) of each update.
//!
//! Backends: the Flex CPU backend computes bf16 matmuls and convolutions by converting to f32
//! (bf16 rounding of inputs and outputs, no speed-up); GPU backends compute natively where the
//! device supports it. [`Precision::check_device`] runs a small bf16 convolution and matmul on
//! the device and turns a failure into an error, so an unsupported combination is refused at
//! start rather than panicking mid-run.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::DType;

use ssl_models::visit::{NamedMapper, NamedVisitor, TensorPath, map_named, visit_named};

use crate::error::{MhclError, Result};

/// Number format of the training forwards; see the module docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in float32 (the reference).
    #[default]
    F32,
    /// Encoder forwards (and their backward) in bfloat16 over an f32 master copy.
    Bf16,
}

impl Precision {
    /// The dtype the encoder forwards run in.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// Whether the forwards run in a format other than f32.
    pub fn is_mixed(self) -> bool {
        self != Precision::F32
    }

    /// Checks that `device` computes in this precision: a bf16 convolution and matmul whose
    /// results are read back and compared with f32. Always `Ok` for [`Precision::F32`].
    pub fn check_device(self, device: &Device) -> Result<()> {
        if !self.is_mixed() {
            return Ok(());
        }
        let dtype = self.dtype();
        let device = device.clone().inner();
        let probe = crate::device::catch_silent(|| -> std::result::Result<f32, String> {
            let x = Tensor::<4>::from_data(
                TensorData::new((0..32).map(|i| i as f32 / 8.0).collect(), [1, 2, 4, 4]),
                &device,
            );
            let w = Tensor::<4>::ones([3, 2, 3, 3], &device).mul_scalar(0.5);
            let opts = burn::tensor::ops::ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
            let conv =
                |x: Tensor<4>, w: Tensor<4>| burn::tensor::module::conv2d(x, w, None, opts.clone());
            let want = conv(x.clone(), w.clone());
            let got = conv(x.clone().cast(dtype), w.cast(dtype));
            let m = x.clone().reshape([4, 8]);
            let want_mm = m.clone().matmul(m.clone().transpose());
            let low = m.cast(dtype);
            let got_mm = low.clone().matmul(low.transpose());
            if got.dtype() != dtype || got_mm.dtype() != dtype {
                return Err(format!("the result came back as {:?}", got.dtype()));
            }
            let err = |a: Tensor<4>, b: Tensor<4>| -> std::result::Result<f32, String> {
                let d = (a - b.cast(DType::F32)).abs().max();
                d.into_data()
                    .try_into_vec_as::<f32>()
                    .map_err(|e| format!("{e:?}"))
                    .map(|v| v[0])
            };
            let e1 = err(want, got)?;
            let e2 = err(want_mm.unsqueeze(), got_mm.unsqueeze())?;
            Ok(e1.max(e2))
        });
        let why = match probe {
            Ok(Ok(e)) if e.is_finite() && e < 0.5 => return Ok(()),
            Ok(Ok(e)) => format!("a test convolution was off by {e}"),
            Ok(Err(e)) | Err(e) => e,
        };
        Err(MhclError::arg(format!(
            "--precision {self} is not supported on this device ({})",
            crate::device::one_line(&why)
        )))
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = MhclError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(MhclError::arg(format!(
                "unknown precision `{other}` (expected f32 or bf16)"
            ))),
        }
    }
}

/// Paths (dot-joined) of the BatchNorm buffers, which the forward updates in place.
fn is_buffer(path: &str) -> bool {
    ssl_queue::BUFFER_SUFFIXES
        .iter()
        .any(|s| path == *s || path.ends_with(&format!(".{s}")))
}

/// Casts every float tensor of a module (parameters and buffers). On an autodiff device the
/// cast is part of the graph: gradients of the copy's parameters flow back, cast to f32, to the
/// tensors of the module it was made from.
struct CastFloats(DType);

impl ModuleMapper for CastFloats {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        param.map(|t| if t.dtype() == dtype { t } else { t.cast(dtype) })
    }
}

/// A copy of `module` whose float tensors are `dtype` (see [`CastFloats`]). The copy has its own
/// BatchNorm buffers: after a forward, [`write_back_buffers`] puts them into the original.
pub(crate) fn cast_copy<M: Module>(module: &M, dtype: DType) -> M {
    module.clone().map(&mut CastFloats(dtype))
}

/// The BatchNorm buffers of a module by path: float buffers flattened, counters as they are.
#[derive(Default)]
pub(crate) struct Buffers {
    float: HashMap<String, Tensor<1>>,
    int: HashMap<String, Tensor<1, Int>>,
}

struct CollectBuffers(Buffers);

impl NamedVisitor for CollectBuffers {
    fn float<const D: usize>(&mut self, path: &TensorPath, param: &Param<Tensor<D>>) {
        let path = path.name();
        if is_buffer(&path) {
            self.0.float.insert(path, param.val().reshape([-1]));
        }
    }

    fn int<const D: usize>(&mut self, path: &TensorPath, param: &Param<Tensor<D, Int>>) {
        let path = path.name();
        if is_buffer(&path) {
            self.0.int.insert(path, param.val().reshape([-1]));
        }
    }
}

struct RestoreBuffers(Buffers);

impl NamedMapper for RestoreBuffers {
    fn float<const D: usize>(
        &mut self,
        path: &TensorPath,
        param: Param<Tensor<D>>,
    ) -> Param<Tensor<D>> {
        let Some(new) = self.0.float.remove(&path.name()) else {
            return param;
        };
        param.map(|old| {
            let (shape, dtype) = (old.shape(), old.dtype());
            new.reshape(shape).cast(dtype).detach()
        })
    }

    fn int<const D: usize>(
        &mut self,
        path: &TensorPath,
        param: Param<Tensor<D, Int>>,
    ) -> Param<Tensor<D, Int>> {
        let Some(new) = self.0.int.remove(&path.name()) else {
            return param;
        };
        param.map(|old| new.reshape(old.shape()))
    }
}

/// The BatchNorm buffers of `module` (the low-precision copy after its forward).
pub(crate) fn buffers<M: Module>(module: &M) -> Buffers {
    let mut c = CollectBuffers(Buffers::default());
    visit_named(module, &mut c);
    c.0
}

/// Writes `buffers` into the BatchNorm buffers of `module` at the same paths, cast to the
/// module's dtype; parameters are untouched.
pub(crate) fn write_back_buffers<M: Module>(module: M, buffers: Buffers) -> M {
    map_named(module, &mut RestoreBuffers(buffers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::GradientsParams;
    use ssl_models::{Arch, MhclEncoderConfig};

    #[test]
    fn parses_and_prints() {
        assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert_eq!("F32".parse::<Precision>().unwrap(), Precision::F32);
        assert_eq!(Precision::Bf16.to_string(), "bf16");
        assert!("fp16".parse::<Precision>().is_err());
        assert_eq!(Precision::default(), Precision::F32);
    }

    #[test]
    fn flex_supports_bf16() {
        Precision::Bf16.check_device(&Device::flex()).unwrap();
        Precision::F32.check_device(&Device::flex()).unwrap();
    }

    #[test]
    fn bf16_copy_gives_f32_gradients_and_writes_back_bn_buffers() {
        let device = Device::flex().autodiff();
        device.seed(1);
        let enc = MhclEncoderConfig::new(Arch::ResNet18)
            .with_width(4)
            .with_dim(8)
            .init(&device);
        let x = Tensor::<4>::random([4, 3, 32, 32], burn::tensor::Distribution::Default, &device);

        let low = cast_copy(&enc, DType::BF16);
        let out = low.forward(x.clone().cast(DType::BF16));
        assert_eq!(out.dtype(), DType::BF16);
        let loss = out.cast(DType::F32).powf_scalar(2.0).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &enc);
        assert!(grads.len() > 10, "{} gradients", grads.len());

        let before = buffers(&enc);
        let after = buffers(&low);
        assert_eq!(before.float.len(), after.float.len());
        let enc = write_back_buffers(enc, after);
        let restored = buffers(&enc);
        let key = "backbone.bn1.running_mean";
        let key = restored
            .float
            .keys()
            .find(|k| k.ends_with("bn1.running_mean"))
            .cloned()
            .unwrap_or_else(|| key.to_string());
        let old = before.float[&key].clone().sum().into_scalar::<f32>();
        let new = restored.float[&key].clone();
        assert_eq!(new.dtype(), DType::F32);
        assert_ne!(
            new.sum().into_scalar::<f32>(),
            old,
            "running mean was updated"
        );
        let count: Vec<i64> = restored
            .int
            .values()
            .next()
            .expect("a batch counter")
            .clone()
            .into_data()
            .try_into_vec_as::<i64>()
            .unwrap();
        assert_eq!(count, vec![1]);
    }
}
