//! Contrastive losses for MoCo-style self-supervised learning on [burn]: MoCo's InfoNCE and the
//! MHCL multiscale hard-feature loss (Li et al., IEEE TGRS 61, 2023), plus the top-k accuracy
//! and cross-entropy of the linear probe.
//!
//! * [`moco_logits`], [`info_nce`], [`InfoNceLoss`]: MoCo v1/v2 InfoNCE with a queue of negatives.
//! * [`HardFeatureLoss`] ([`HardFeatureLossConfig`]): InfoNCE on `S` scales plus `S` hard scales
//!   built from the step's [`HardMixing`] values (λ ~ Beta(a, b) + 1, μ ~ Beta(a, b), one
//!   permutation of the queue columns), weighted. `S = 4` is MHCL, `S = 1` MoCo v2.
//! * [`normalize`], [`cross_entropy`], [`topk_accuracy`], [`check_finite`].
//!
//! All functions take burn tensors on any device (the backend lives in the `Device` value) and
//! return [`LossError`] for anything a caller can get wrong; they do not panic on user input.
//!
//! # Formulation
//!
//! The reference (PyTorch) builds, per step, a permuted copy of the queue for the hard scales and
//! an `(N, 8, 1+K)` logits tensor, then a log-softmax over it. This crate computes the same
//! values and the same gradient without either: the negatives of all scales come from one
//! batched matmul `(Q / T) @ queue`; a hard scale's mixed negatives
//! `Q·(mu*queue + (1-mu)*queue[:, perm])` are `mu*L + (1-mu)*L[:, perm]` with `L = Q·queue`, a
//! gather of `N × K` values; the positive logit is folded into each row's log-sum-exp; and the
//! gradient with respect to `q` (through `q`, the hard queries `qh` and, unless
//! [`HardFeatureLossConfig::detach_hard_keys`] is set, the hard keys `kh`) is written out and
//! attached to `q`, so every pass over the large tensors runs in place and none of them is kept
//! for an autodiff graph. [`HardFeatureLoss::logits`] and
//! [`HardFeatureLoss::forward_materialized`] build the reference's tensors for tests.
//!
//! # Example
//!
//! ```
//! use burn::prelude::*;
//! use burn::tensor::Distribution;
//! use ssl_losses::{HardFeatureLossConfig, HardMixing, normalize};
//! use rand::{SeedableRng, rngs::StdRng};
//!
//! # fn main() -> ssl_losses::Result<()> {
//! let device = Device::flex().autodiff();
//! let (n, s, c, k) = (4, 4, 8, 32);
//! let q_raw = Tensor::<3>::random([n, s, c], Distribution::Normal(0.0, 1.0), &device).require_grad();
//! let q = normalize(q_raw.clone(), 2)?;
//! let key = normalize(Tensor::<3>::random([n, s, c], Distribution::Normal(0.0, 1.0), &device), 2)?;
//! let queue = normalize(Tensor::<3>::random([2 * s, c, k], Distribution::Normal(0.0, 1.0), &device), 1)?;
//!
//! let loss = HardFeatureLossConfig::new().with_temperature(0.2).init()?;
//! let mut rng = StdRng::seed_from_u64(0);
//! let mixing = HardMixing::draw(&mut rng, s, k, 1.0, 1.0)?;
//! let out = loss.forward(q, key, queue, Some(&mixing))?;
//! let grads = out.loss.backward();
//! assert_eq!(q_raw.grad(&grads).unwrap().dims(), [n, s, c]);
//! assert_eq!(out.keys.dims(), [n, 2 * s, c]); // what to enqueue
//! assert!(out.loss.into_scalar::<f32>() > 0.0);
//! # Ok(())
//! # }
//! ```

mod core;
mod cpu;
mod error;
mod hard;
mod mixing;
mod moco;
mod ops;

pub use crate::core::{ContrastiveOutput, Kernel};
pub use crate::error::{LossError, Result};
pub use crate::hard::{
    HardFeatureLoss, HardFeatureLossConfig, MHCL_WEIGHTS, hard_features, mixed_queue,
};
pub use crate::mixing::HardMixing;
pub use crate::moco::{InfoNceLoss, info_nce, moco_logits};
pub use crate::ops::{NORMALIZE_EPS, check_finite, cross_entropy, normalize, topk_accuracy};

// The README's example runs as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
