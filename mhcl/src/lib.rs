//! MHCL (multiscale hard-feature contrastive learning, Li et al., IEEE TGRS 61, 2023) and MoCo v2
//! pretraining plus the linear-probe evaluation, as a library and as the `mhcl` command.
//!
//! * [`model::Mhcl`]: query encoder, momentum key encoder, queue and loss; one training step as
//!   in `DESIGN.md` (EMA before the key forward, normalized keys, MHCL loss, backward, SGD,
//!   enqueue). Plain MoCo v2 without `--mhcl`.
//! * [`optim::Sgd`]: `torch.optim.SGD` exactly (dampening 0, weight decay in the gradient,
//!   buffer = first gradient), momentum buffers by PyTorch parameter name;
//!   [`schedule`]: the cosine and step schedules of `main_mhcl.py`.
//! * [`config`]: [`PretrainConfig`] / [`LinclsConfig`], typed run configurations whose defaults
//!   are `main_mhcl.py`'s / `main_lincls.py`'s; [`Pretrainer`] and [`LinearProbe`] run them
//!   and report to an [`Observer`] ([`observe`]); a [`StopToken`] stops them.
//!   [`checkpoint`]: one safetensors file per checkpoint, written atomically, exact resume;
//!   [`knn`]: the weighted kNN monitor.
//! * `cli` (feature `cli`, default): the `mhcl` command, flags -> configs.
//! * [`dist`]: data parallel, as the reference's `--multiprocessing-distributed` /
//!   `--dist-url` / `--world-size` / `--rank` (plus `--dist-backend local`: ranks as threads);
//!   built on `ssl-distributed`.
//! * [`split`]: per-class train/val splits (`mhcl split --ratio 2:8 --seed 0 SRC DST`, the same
//!   split as Python's `random.Random(seed).shuffle`); [`synthetic`]: a generated demo dataset.
//!
//! ```
//! use burn::prelude::*;
//! use mhcl::model::{Mhcl, MhclConfig};
//! use mhcl::optim::SgdConfig;
//! use mhcl::schedule::LrSchedule;
//! use mhcl::rng::step_rng;
//! use ssl_models::Arch;
//!
//! let device = Device::flex().autodiff();
//! device.seed(0);
//! let config = MhclConfig::new(Arch::ResNet18)
//!     .with_width(4)
//!     .with_dim(8)
//!     .with_mlp(true)
//!     .with_queue_len(32)
//!     .with_temperature(0.2);
//! let mut model = Mhcl::new(config, &device)?;
//! let mut sgd = SgdConfig::new().with_momentum(0.9).with_weight_decay(1e-4).init()?;
//! let schedule = LrSchedule::cosine(0.03, 2);
//! for step in 0..2u64 {
//!     let crop = || Tensor::<4>::random([8, 3, 32, 32], burn::tensor::Distribution::Default, &device);
//!     let lr = schedule.lr(step as usize);
//!     let stats = model.train_step(crop(), crop(), lr, &mut sgd, &mut step_rng(0, step), None)?;
//!     println!("loss {:.3} acc@1 {:.1}", stats.loss.into_scalar::<f32>(), stats.acc1);
//! }
//! let tensors = model.state(&sgd)?; // encoder_q.*, encoder_k.*, queue, queue_ptr, optimizer.*
//! assert!(tensors.contains_key("encoder_q.layer1.0.conv1.weight"));
//! # Ok::<(), mhcl::MhclError>(())
//! ```
pub mod checkpoint;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod curves;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod images;
pub mod knn;
pub mod lincls;
pub mod metrics;
pub mod model;
pub mod observe;
pub mod optim;
pub mod plot;
pub mod precision;
pub mod rng;
pub mod runner;
pub mod schedule;
pub mod split;
pub mod synthetic;
pub mod train;

pub use config::{ConfigError, LinclsConfig, PretrainConfig};
pub use error::{MhclError, Result};
pub use lincls::LinearProbe;
pub use observe::{Observer, StopToken};
pub use train::Pretrainer;
