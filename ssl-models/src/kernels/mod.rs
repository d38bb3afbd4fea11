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
