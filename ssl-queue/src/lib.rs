//! The momentum queue of MoCo-style contrastive learning and the EMA of module parameters, on
//! [burn].
//!
//! * [`MomentumQueue`]: `(scales, dim, K)` keys (unit columns) and a write pointer; each step
//!   enqueues the keys of all ranks `(N_all, scales, dim)` at the pointer, which wraps at `K`.
//!   Saved and restored as plain values ([`MomentumQueue::to_vec`], [`MomentumQueue::from_vec`])
//!   or as a tensor ([`MomentumQueue::from_parts`]).
//! * [`ema_update`]: `target = target * m + source * (1 - m)` over the parameters of any burn
//!   [`Module`](burn::module::Module), BatchNorm buffers untouched (MoCo's key-encoder update).
//!
//! Errors are [`QueueError`] values; nothing here panics on user input.
//!
//! # Example
//!
//! ```
//! use burn::prelude::*;
//! use ssl_queue::MomentumQueue;
//!
//! # fn main() -> ssl_queue::Result<()> {
//! let device = Device::flex();
//! let mut queue = MomentumQueue::new(8, 16, 64, &device)?; // 8 scales, dim 16, K = 64
//! let keys = Tensor::<3>::ones([8, 8, 16], &device);       // (N_all, scales, dim)
//! queue.enqueue(keys)?;
//! assert_eq!(queue.ptr(), 8);
//! let (shape, values) = queue.to_vec()?;                   // for a checkpoint
//! let restored = MomentumQueue::from_vec(&shape, values, queue.ptr(), &device)?;
//! assert_eq!(restored.len(), 64);
//! # Ok(())
//! # }
//! ```

mod ema;
mod error;
mod queue;

pub use crate::ema::{BUFFER_SUFFIXES, ema_update, ema_update_skipping, try_ema_update};
pub use crate::error::{QueueError, Result};
pub use crate::queue::MomentumQueue;

// The README's example runs as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
