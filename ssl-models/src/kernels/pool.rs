//! 2-D max pooling on the Flex CPU device, forward and backward as one operation (the ResNet
//! stem's 3x3 / stride 2 / padding 1 pool).
//!
//! For each output position the forward keeps the largest input of its window and the index of
//! that input in its plane; the backward adds each output gradient to the input it came from:
//!
//! ```text
//! y[n, c, oh, ow] = max over the window of x,   dx[n, c, argmax] += dy[n, c, oh, ow]
//! ```
//!
//! This is PyTorch's `max_pool2d_with_indices` on CPU: padding never wins (it is `-inf`), the
//! first maximum in row-major window order wins a tie, and a NaN wins over any number (its
//! comparison `val > max || isnan(val)`, so of several NaNs the last one). burn-flex's pooling
//! measured 31 ms forward + backward at the stem of the ResNet-18 step (batch 32, 64 channels,
//! 32x32, 2 threads), this one 8-10 ms; with the window test as vector selects (`pool_plane`)
//! its share of the ResNet-18 step's profile fell from 5.4 % to 2.2 %.
//!
//! [`max_pool2d`] takes this path for f32 tensors on the Flex device without dilation or
//! `ceil_mode`, and burn's `max_pool2d` everywhere else.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;
use rayon::prelude::*;

use super::{contiguous, dims4, written};
use std::mem::MaybeUninit;

/// Kernel size, stride and symmetric padding of a [`max_pool2d`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeometry {
    /// `(kh, kw)`.
    pub kernel: [usize; 2],
    /// `(sh, sw)`.
    pub stride: [usize; 2],
    /// `(ph, pw)`: positions outside the image on each side, never the maximum.
    pub padding: [usize; 2],
}

impl PoolGeometry {
    /// `(ho, wo)` for an `h x w` input (floor mode, as PyTorch's default).
    fn output(&self, h: usize, w: usize) -> (usize, usize) {
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        let [ph, pw] = self.padding;
        ((h + 2 * ph - kh) / sh + 1, (w + 2 * pw - kw) / sw + 1)
    }

    /// `start..end` of the inputs along `axis` (0: rows, 1: columns) that output `o`'s window
    /// covers in an input of `len` (the padding cut off).
    fn span(&self, axis: usize, o: usize, len: usize) -> (usize, usize) {
        let (k, s, p) = (self.kernel[axis], self.stride[axis], self.padding[axis]);
        (
            (o * s).saturating_sub(p),
            (o * s + k).saturating_sub(p).min(len),
        )
    }
}

/// The pooling as a backend extension: Flex runs it, `Autodiff<Flex>` differentiates it as one
/// operation.
#[backend_extension(Flex, Autodiff)]
pub trait FlexMaxPool2d: Backend {
    /// `x (N, C, H, W)` max-pooled.
    fn flex_max_pool2d(x: FloatTensor<Self>, geometry: PoolGeometry) -> FloatTensor<Self>;
}

/// The maximum of output `(oh, ow)`'s window (clipped to the `h x w` plane) and its index in
/// the plane, by PyTorch's test (`val > max || isnan(val)` in row-major window order, starting
/// from `-inf` at the window's first input).
fn window_max(
    x: &[f32],
    (h, w): (usize, usize),
    g: &PoolGeometry,
    (oh, ow): (usize, usize),
) -> (f32, u32) {
    let (r0, r1) = g.span(0, oh, h);
    let (q0, q1) = g.span(1, ow, w);
    let (mut best, mut at) = (f32::NEG_INFINITY, r0 * w + q0);
    for r in r0..r1 {
        for (q, &v) in x[r * w + q0..r * w + q1].iter().enumerate() {
            // PyTorch's test, so a later NaN takes the index from an earlier one.
            if v > best || v.is_nan() {
                (best, at) = (v, r * w + q0 + q);
            }
        }
    }
    (best, at as u32)
}

/// Output columns of a block in [`pool_plane`]'s inner loop.
const LANES: usize = 16;

/// One plane: the window maxima into `y` and their indices in the plane into `argmax`.
///
/// The windows that lie inside the plane's columns are taken [`LANES`] outputs at a time, each
/// window offset as one pass over the block with the test as a select: [`window_max`]'s
/// branch, unpredictable on random data, ran the pooling at 5.4 % of the ResNet-18 step's
/// profile, the blocks at 2.2 %. The order of the tests per output, and so every tie and NaN,
/// is [`window_max`]'s.
fn pool_plane(
    x: &[f32],
    (h, w): (usize, usize),
    g: &PoolGeometry,
    y: &mut [MaybeUninit<f32>],
    argmax: &mut [u32],
) {
    let (ho, wo) = g.output(h, w);
    let (kw, sw, pw) = (g.kernel[1], g.stride[1], g.padding[1]);
    // `lo..hi`: the outputs whose window columns `ow * sw - pw ..+ kw` are all inside the plane
    let lo = pw.div_ceil(sw).min(wo);
    let hi = if w + pw >= kw {
        ((w + pw - kw) / sw + 1).min(wo)
    } else {
        0
    }
    .max(lo);
    for oh in 0..ho {
        let (y, argmax) = (&mut y[oh * wo..][..wo], &mut argmax[oh * wo..][..wo]);
        for ow in (0..lo).chain(hi..wo) {
            let (v, at) = window_max(x, (h, w), g, (oh, ow));
            y[ow].write(v);
            argmax[ow] = at;
        }
        let (r0, r1) = g.span(0, oh, h);
        for first in (lo..hi).step_by(LANES) {
            let n = LANES.min(hi - first);
            let mut best = [f32::NEG_INFINITY; LANES];
            let mut at = [0u32; LANES];
            for (l, at) in at[..n].iter_mut().enumerate() {
                *at = (r0 * w + (first + l) * sw - pw) as u32;
            }
            for r in r0..r1 {
                for j in 0..kw {
                    let from = r * w + first * sw + j - pw;
                    // the block's inputs at this offset side by side (`-inf` past `n`: never
                    // taken), then the test on whole blocks, which compiles to vector compares
                    // and blends
                    let mut v = [f32::NEG_INFINITY; LANES];
                    for (v, &x) in v[..n].iter_mut().zip(x[from..].iter().step_by(sw)) {
                        *v = x;
                    }
                    let from = from as u32;
                    for l in 0..LANES {
                        // `|`, not `||`: no branch, so the loop vectorizes
                        let take = (v[l] > best[l]) | v[l].is_nan();
                        best[l] = if take { v[l] } else { best[l] };
                        at[l] = if take { from + (l * sw) as u32 } else { at[l] };
                    }
                }
            }
            for l in 0..n {
                y[first + l].write(best[l]);
                argmax[first + l] = at[l];
            }
        }
    }
}

/// `(y, argmax)` of `x`.
fn forward(x: &FlexTensor, g: PoolGeometry) -> (FlexTensor, Arc<Vec<u32>>) {
    let x = contiguous(x);
    let [n, c, h, w] = dims4(&x);
    let (ho, wo) = g.output(h, w);
    let xs = x.as_slice::<f32>().expect("f32");
    let len = n * c * ho * wo;
    let mut argmax = vec![0u32; len];
    // SAFETY: the planes tile `y` and `pool_plane` writes every output of its plane.
    let y = unsafe {
        written(len, |y| {
            y.par_chunks_mut(ho * wo)
                .zip(argmax.par_chunks_mut(ho * wo))
                .enumerate()
                .for_each(|(plane, (y, idx))| {
                    pool_plane(&xs[plane * h * w..][..h * w], (h, w), &g, y, idx);
                })
        })
    };
    let y = FlexTensor::from_data(TensorData::new(y, [n, c, ho, wo]));
    (y, Arc::new(argmax))
}

/// `dx` of shape `x (N, C, H, W)` from `dy` and the forward's indices.
fn backward(dy: &FlexTensor, argmax: &[u32], x: [usize; 4]) -> FlexTensor {
    let dy = contiguous(dy);
    let [n, c, h, w] = x;
    let dys = dy.as_slice::<f32>().expect("f32");
    let out = dys.len() / (n * c).max(1);
    let mut dx = vec![0.0f32; n * c * h * w];
    dx.par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane, dx)| {
            let (g, idx) = (&dys[plane * out..][..out], &argmax[plane * out..][..out]);
            for (&v, &i) in g.iter().zip(idx) {
                dx[i as usize] += v;
            }
        });
    FlexTensor::from_data(TensorData::new(dx, x))
}

impl FlexMaxPool2d for Flex {
    fn flex_max_pool2d(x: FlexTensor, geometry: PoolGeometry) -> FlexTensor {
        forward(&x, geometry).0
    }
}

#[derive(Debug)]
struct MaxPoolBackward;

impl Backward<Flex, 1> for MaxPoolBackward {
    /// The forward's indices and the input's shape.
    type State = (Arc<Vec<u32>>, [usize; 4]);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (argmax, shape) = ops.state;
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, backward(&dy, &argmax, shape));
        }
    }
}

impl<C: CheckpointStrategy> FlexMaxPool2d for Autodiff<Flex, C> {
    fn flex_max_pool2d(x: FloatTensor<Self>, geometry: PoolGeometry) -> FloatTensor<Self> {
        let prep = MaxPoolBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful();
        let x = x.into_primitive();
        let shape = dims4(&x);
        match prep {
            OpsKind::Tracked(prep) => {
                let (y, argmax) = forward(&x, geometry);
                prep.finish((argmax, shape), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(&x, geometry).0),
        }
    }
}

/// `x (N, C, H, W)` max-pooled (floor mode, no dilation), through this module's kernel for f32
/// tensors on the Flex device (autodiff or not), through burn's `max_pool2d` elsewhere.
pub fn max_pool2d(x: Tensor<4>, geometry: PoolGeometry) -> Tensor<4> {
    let on_flex = x.device().inner() == Device::flex();
    let [_, _, h, w] = x.dims();
    let PoolGeometry {
        kernel,
        stride,
        padding,
    } = geometry;
    let fits = kernel.iter().all(|&k| k > 0)
        && stride.iter().all(|&s| s > 0)
        && padding[0] * 2 <= kernel[0]
        && padding[1] * 2 <= kernel[1]
        && h + 2 * padding[0] >= kernel[0]
        && w + 2 * padding[1] >= kernel[1]
        && h * w <= u32::MAX as usize
        && x.dims().iter().all(|&d| d > 0);
    if !on_flex || x.dtype() != DType::F32 || !fits {
        let options = burn::tensor::ops::MaxPoolOptions::new(kernel)
            .with_stride(stride)
            .with_padding(padding);
        return burn::tensor::module::max_pool2d(x, options);
    }
    Tensor::from_dispatch(<Dispatch as FlexMaxPool2d>::flex_max_pool2d(
        x.into_dispatch(),
        geometry,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values with many ties, NaNs and infinities, from a fixed generator.
    fn plane(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                match state % 11 {
                    0 => f32::NAN,
                    1 => f32::NEG_INFINITY,
                    2 => f32::INFINITY,
                    r => r as f32 % 3.0 - 1.0,
                }
            })
            .collect()
    }

    #[test]
    fn block_path_equals_the_window_by_window_test_for_every_output() {
        let mut checked = 0;
        for (h, w) in [(1, 1), (2, 5), (7, 7), (9, 40), (33, 70)] {
            for k in 1..=3 {
                for s in 1..=3 {
                    for p in 0..=k / 2 {
                        let g = PoolGeometry {
                            kernel: [k, k],
                            stride: [s, s],
                            padding: [p, p],
                        };
                        if h + 2 * p < k || w + 2 * p < k {
                            continue;
                        }
                        let x = plane(h * w, (h * 1000 + w * 10 + k + s + p) as u64);
                        let (ho, wo) = g.output(h, w);
                        let mut y = vec![MaybeUninit::uninit(); ho * wo];
                        let mut at = vec![u32::MAX; ho * wo];
                        pool_plane(&x, (h, w), &g, &mut y, &mut at);
                        for oh in 0..ho {
                            for ow in 0..wo {
                                let (v, i) = window_max(&x, (h, w), &g, (oh, ow));
                                // SAFETY: `pool_plane` writes every output of the plane.
                                let got = unsafe { y[oh * wo + ow].assume_init() };
                                assert_eq!(at[oh * wo + ow], i, "{g:?} {h}x{w} at ({oh}, {ow})");
                                assert_eq!(got.to_bits(), v.to_bits(), "{g:?} {h}x{w}");
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }
}
