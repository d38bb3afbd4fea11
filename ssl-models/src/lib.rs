//! ResNet family with PyTorch parameter names, MHCL multiscale heads and PyTorch / safetensors
//! weight I/O, on [burn](https://burn.dev).
//!
//! * [`ResNet`] ([`ResNetConfig`], [`Arch`]): torchvision's ResNet-18/34/50/101/152 (v1.5
//!   layout) at any base width, torchvision's initialization, `state_dict` names
//!   (`layer1.0.bn1.running_var`, `layer2.0.downsample.0.weight`, ...).
//! * [`BatchNorm2d`]: PyTorch's BatchNorm exactly (unbiased running variance, momentum 0.1,
//!   eps 1e-5, `num_batches_tracked`). It runs in train mode when its input is on an autodiff
//!   device and its training flag is on (`Device::flex().autodiff()`); in eval mode on a plain
//!   device or after `valid()`.
//! * [`MhclEncoder`] ([`MhclEncoderConfig`]): the MHCL query/key encoder, four heads on
//!   layer1..layer4 giving `(N, 4, dim)`, or the single-scale MoCo v2 encoder `(N, 1, dim)`.
//! * [`LinearClassifier`]: the linear-probe head (`main_lincls.py` init).
//! * [`weights`]: save / load by PyTorch name (safetensors, `.pth`, `.pth.tar`), strict with
//!   explicit allow-lists.
//!
//! * [`matmul_isa`]: which matrix kernels (AVX-512, AVX2, NEON) the CPU backend picked at run
//!   time.
//!
//! Library code never names a backend: modules are built on the [`Device`](burn::prelude::Device)
//! given to `init`, the CPU `flex` backend by default.
//!
//! ```
//! use burn::prelude::*;
//! use ssl_models::{Arch, MhclEncoderConfig, weights};
//!
//! let device = Device::flex().autodiff(); // train mode: BatchNorm uses batch statistics
//! let encoder = MhclEncoderConfig::new(Arch::ResNet18)
//!     .with_width(8)
//!     .with_dim(16)
//!     .with_mlp(true)
//!     .init(&device);
//! let images = Tensor::<4>::random([2, 3, 32, 32], burn::tensor::Distribution::Default, &device);
//! let out = encoder.try_forward(images)?; // (N, 4, dim)
//! assert_eq!(out.dims(), [2, 4, 16]);
//! println!("{} parameters", weights::parameter_count(&encoder));
//!
//! // Tensors by PyTorch name, PyTorch layout.
//! let state = weights::module_tensors(&encoder)?;
//! assert_eq!(state["global_mlps.0.mlp.0.weight"].shape, vec![8, 8]);
//! assert_eq!(state["fc.2.weight"].shape, vec![16, 64]);
//! # Ok::<(), ssl_models::ModelsError>(())
//! ```
//!
//! # Bad input
//! Configuration and input errors are [`ModelsError`]s: `Arch::from_name` lists the choices,
//! `try_init` checks the configuration, `check_input` / `try_forward` check rank-4 inputs for
//! 3 channels and a non-empty size, loaders report missing / unexpected / mis-shaped tensors by
//! name. The infallible `forward` methods panic on inputs `check_input` rejects.

pub mod batchnorm;
pub mod classifier;
pub mod cpu;
pub mod error;
pub mod kernels;
pub mod mhcl_encoder;
pub mod resnet;
mod transparent;
pub mod visit;
pub mod weights;

pub use batchnorm::{BatchCounter, BatchNorm2d, BatchNorm2dConfig, Buffer};
pub use classifier::{LinearClassifier, LinearClassifierConfig};
pub use cpu::{MatmulIsa, matmul_isa};
pub use error::{ModelsError, Result, WeightsMismatch};
pub use mhcl_encoder::{
    EncoderOutput, GlobalMlp, MULTISCALE_SCALES, MhclEncoder, MhclEncoderConfig, Mlp,
    ProjectionHead,
};
pub use resnet::{Arch, BasicBlock, Block, Bottleneck, ResNet, ResNetConfig, global_pool};
pub use weights::{LoadOptions, LoadReport, RawData, RawTensor, TensorMap};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
