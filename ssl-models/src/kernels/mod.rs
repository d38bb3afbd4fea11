//! Hand-written CPU kernels for the operations where burn-flex's defaults cost the most, each
//! next to the operation it speeds up and checked against burn's tensor path by property tests
//! (`tests/kernels.rs`). Every kernel falls back to burn's operation on other devices and dtypes.
//!
//! * [`batchnorm`]: BatchNorm2d in training mode, forward and backward fused.
//! * [`conv`]: 2-D convolution with both gradients as matrix products over image patches.
//! * [`pool`]: 2-D max pooling, forward and backward.

pub mod batchnorm;
pub mod conv;
pub mod pool;

use std::mem::MaybeUninit;

use burn::backend::flex::FlexTensor;

/// `t` with its values contiguous, in order, from its first element (a copy only when it is
/// not already).
pub(crate) fn contiguous(t: &FlexTensor) -> FlexTensor {
    if t.is_contiguous() && t.layout().start_offset() == 0 {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

/// The dimensions of a rank-4 tensor.
pub(crate) fn dims4(t: &FlexTensor) -> [usize; 4] {
    let d = t.layout().shape().as_slice();
    [d[0], d[1], d[2], d[3]]
}

/// `len` values written by `fill` into uninitialized memory, then taken as initialized: the
/// kernels' outputs are written completely (by a product without `accumulate`, or by a loop
/// zipping every output with an input), so burn-flex's zero fill first (and its copy into an
/// aligned buffer) would be wasted passes over them.
///
/// # Safety
/// `fill` must write every one of the `len` values it is handed.
pub(crate) unsafe fn written(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the caller's `fill` wrote all `len` values.
    unsafe { v.set_len(len) };
    v
}
