//! Hand-written CPU kernels for the operations where burn-flex's defaults cost the most, each
//! next to the operation it speeds up and checked against burn's tensor path by property tests
//! (`tests/kernels.rs`). Every kernel falls back to burn's operation on other devices and dtypes.
//!
//! * [`batchnorm`]: BatchNorm2d in training mode, forward and backward fused.
//! * [`conv`]: 2-D convolution with both gradients as matrix products over image patches.

pub mod batchnorm;
pub mod conv;
