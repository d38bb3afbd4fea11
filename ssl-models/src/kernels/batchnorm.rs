//! BatchNorm2d in training mode on the Flex CPU device: forward and backward as two passes each
//! over NCHW data, as one autodiff operation.
//!
//! For each channel `c` over the `M = N * H * W` values `x` of the batch:
//!
//! ```text
//! mean = sum(x) / M,  var = sum((x - mean)^2) / M   (biased, what normalizes; PyTorch's
//!                                                     running_var takes var * M / (M - 1))
//! y = (x - mean) * invstd * gamma + beta,  invstd = 1 / sqrt(var + eps)
//! dbeta = sum(dy),  dgamma = sum(dy * (x - mean)) * invstd
//! dx = gamma * invstd * (dy - dbeta / M - (x - mean) * invstd^2 * sum(dy * (x - mean)) / M)
//! ```
//!
//! These are the formulas of PyTorch's `batch_norm_cpu` / `batch_norm_backward_cpu` (and of
//! burn's default `batch_norm_train`, which computes them with transposing copies and a dozen
//! tensor operations). Sums are accumulated in f64 per channel, in parallel over channels; the
//! element-wise passes run in parallel over the `(n, c)` planes. The statistics pass reads `x`
//! once (sum and sum of squares of `x - x0`, `x0` the channel's first value, which keeps the
//! subtraction exact enough in f64), the normalization writes `y` once; the backward reads `x`
//! and `dy` once for the two sums and once more to write `dx`.
//!
//! [`batch_norm_train`] takes this path for f32 tensors on the Flex device and burn's
//! `batch_norm_train` everywhere else.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, ExtensionType, Flex, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;
use rayon::prelude::*;

use super::{contiguous, written};
use std::mem::MaybeUninit;

/// Output of the training-mode BatchNorm: the normalized tensor and the batch statistics
/// (mean and biased variance per channel).
#[derive(ExtensionType)]
pub struct BatchNormTrainOutput<B: Backend> {
    /// `(N, C, H, W)`.
    pub output: FloatTensor<B>,
    /// `(C)`.
    pub mean: FloatTensor<B>,
    /// `(C)`, biased.
    pub variance: FloatTensor<B>,
}

/// The fused kernel as a backend extension: Flex runs it, `Autodiff<Flex>` differentiates it as
/// one operation.
#[backend_extension(Flex, Autodiff)]
pub trait FusedBatchNorm: Backend {
    /// Training-mode BatchNorm of `x (N, C, ...)` with `gamma`, `beta` of shape `(C)`, with a
    /// ReLU on its output when `relu`.
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> BatchNormTrainOutput<Self>;
}

/// `(N, C, planes)` of a rank >= 2 shape.
fn split_shape(t: &FlexTensor) -> (usize, usize, usize) {
    let dims = t.layout().shape().as_slice();
    let (n, c) = (dims[0], dims[1]);
    let plane = dims[2..].iter().product::<usize>();
    (n, c, plane)
}

fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("f32 values, made contiguous first")
}

/// A new `(N, C, ...)` f32 tensor of `shape`, written plane by plane in parallel: `fill(block,
/// out)` gets the `block`-th `(n, c)` plane (`plane` values, channel `block % c`) and writes
/// every value of it (no zero fill first: burn-flex's `empty` zero-fills and then copies into
/// an aligned buffer, two passes more than the one that writes the values).
fn map_planes(
    shape: &[usize],
    plane: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> FlexTensor {
    let len = shape.iter().product::<usize>();
    // SAFETY: the chunks tile the buffer and each `fill` writes its whole chunk (both callers
    // zip their chunk with an input plane of the same length).
    let out = unsafe {
        written(len, |out| {
            out.par_chunks_mut(plane.max(1))
                .enumerate()
                .for_each(|(block, values)| fill(block, values))
        })
    };
    FlexTensor::from_data(TensorData::new(out, shape.to_vec()))
}

/// `(sum(x - x0), sum((x - x0)^2))` of one plane in f64, eight lanes at a time (independent
/// sums, so the loop is not one chain of dependent additions).
#[inline(always)]
fn plane_sums(block: &[f32], x0: f64) -> (f64, f64) {
    let (mut s, mut s2) = ([0.0f64; 8], [0.0f64; 8]);
    let (lanes, rest) = block.as_chunks::<8>();
    for chunk in lanes {
        let d = chunk.map(|v| f64::from(v) - x0);
        for l in 0..8 {
            s[l] += d[l];
            s2[l] += d[l] * d[l];
        }
    }
    let (mut a, mut b) = (s.iter().sum::<f64>(), s2.iter().sum::<f64>());
    for &v in rest {
        let d = f64::from(v) - x0;
        a += d;
        b += d * d;
    }
    (a, b)
}

/// Per channel `(mean, biased variance)` of `x (N, C, plane)`, in f64.
fn statistics(x: &[f32], n: usize, c: usize, plane: usize) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let x0 = f64::from(x[ch * plane]);
            let (s, s2) = (0..n).fold((0.0f64, 0.0f64), |(s, s2), b| {
                let (bs, bs2) = plane_sums(&x[(b * c + ch) * plane..][..plane], x0);
                (s + bs, s2 + bs2)
            });
            let m = (n * plane) as f64;
            let mean_shift = s / m;
            let var = (s2 / m - mean_shift * mean_shift).max(0.0);
            (x0 + mean_shift, var)
        })
        .collect()
}

/// `max(z, 0)` as PyTorch's `relu` (a NaN stays NaN).
#[inline(always)]
fn relu(z: f32) -> f32 {
    if z <= 0.0 { 0.0 } else { z }
}

/// The output gradient where a ReLU after the BatchNorm let it through: PyTorch's
/// `threshold_backward(dy, output, 0)` zeroes it where `output <= 0`, i.e. where the
/// pre-activation `z <= 0` (recomputed here with the forward's own f32 operations).
#[inline(always)]
fn through_relu(dy: f32, z: f32) -> f32 {
    if z <= 0.0 { 0.0 } else { dy }
}

struct Forward {
    output: FlexTensor,
    mean: Vec<f32>,
    variance: Vec<f32>,
    invstd: Vec<f32>,
    /// Per channel `(scale, shift)` of `y = x * scale + shift`.
    affine: Vec<(f32, f32)>,
}

fn forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    epsilon: f64,
    with_relu: bool,
) -> Forward {
    let x = contiguous(x);
    let (gamma, beta) = (contiguous(gamma), contiguous(beta));
    let (n, c, plane) = split_shape(&x);
    let xs = values(&x);
    let (gs, bs) = (values(&gamma), values(&beta));
    let stats = statistics(xs, n, c, plane);
    let invstd: Vec<f32> = stats
        .iter()
        .map(|&(_, v)| (1.0 / (v + epsilon).sqrt()) as f32)
        .collect();
    let mean: Vec<f32> = stats.iter().map(|&(m, _)| m as f32).collect();
    let affine: Vec<(f32, f32)> = (0..c)
        .map(|ch| {
            let scale = invstd[ch] * gs[ch];
            (scale, bs[ch] - mean[ch] * scale)
        })
        .collect();
    let output = map_planes(x.layout().shape().as_slice(), plane, |block, ys| {
        let (scale, shift) = affine[block % c];
        let xb = &xs[block * plane..][..plane];
        for (y, &v) in ys.iter_mut().zip(xb) {
            let z = v * scale + shift;
            y.write(if with_relu { relu(z) } else { z });
        }
    });
    Forward {
        output,
        variance: stats.iter().map(|&(_, v)| v as f32).collect(),
        mean,
        invstd,
        affine,
    }
}

/// What the backward keeps of a forward: the batch mean, `1 / sqrt(var + eps)`, and with a
/// fused ReLU the forward's `(scale, shift)` to recompute its mask.
#[derive(Clone)]
struct Saved {
    mean: Vec<f32>,
    invstd: Vec<f32>,
    relu: Option<Vec<(f32, f32)>>,
}

/// The BatchNorm's output gradient `g(x, dy)`: `dy`, masked by the fused ReLU when `affine`
/// (the forward's `(scale, shift)`) is given.
#[inline(always)]
fn output_gradient(affine: Option<(f32, f32)>) -> impl Fn(f32, f32) -> f32 {
    move |v, dy| match affine {
        Some((scale, shift)) => through_relu(dy, v * scale + shift),
        None => dy,
    }
}

/// `(sum(g), sum(g * (x - m)))` of one plane in f64, eight lanes at a time, with `g` the
/// [`output_gradient`].
#[inline(always)]
fn gradient_sums(xs: &[f32], dys: &[f32], m: f64, affine: Option<(f32, f32)>) -> (f64, f64) {
    let (mut s, mut sx) = ([0.0f64; 8], [0.0f64; 8]);
    let g = output_gradient(affine);
    let (mut xl, mut dl) = (xs.chunks_exact(8), dys.chunks_exact(8));
    for (xc, dc) in (&mut xl).zip(&mut dl) {
        for l in 0..8 {
            let gv = f64::from(g(xc[l], dc[l]));
            s[l] += gv;
            sx[l] += gv * (f64::from(xc[l]) - m);
        }
    }
    let (mut a, mut b) = (s.iter().sum::<f64>(), sx.iter().sum::<f64>());
    for (&v, &dy) in xl.remainder().iter().zip(dl.remainder()) {
        let gv = f64::from(g(v, dy));
        a += gv;
        b += gv * (f64::from(v) - m);
    }
    (a, b)
}

/// `(dx, dgamma, dbeta)` from `dy`.
fn backward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    saved: &Saved,
    dy: &FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (x, gamma, dy) = (contiguous(x), contiguous(gamma), contiguous(dy));
    let (n, c, plane) = split_shape(&x);
    let (xs, gs, dys) = (values(&x), values(&gamma), values(&dy));
    let Saved { mean, invstd, relu } = saved;
    let affine = |ch: usize| relu.as_ref().map(|a| a[ch]);
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let m = f64::from(mean[ch]);
            (0..n).fold((0.0f64, 0.0f64), |(s, sx), b| {
                let off = (b * c + ch) * plane;
                let (bs, bsx) =
                    gradient_sums(&xs[off..][..plane], &dys[off..][..plane], m, affine(ch));
                (s + bs, sx + bsx)
            })
        })
        .collect();
    let count = (n * plane) as f64;
    let dx = map_planes(x.layout().shape().as_slice(), plane, |block, out| {
        let ch = block % c;
        let is = f64::from(invstd[ch]);
        let (sdy, sdyx) = sums[ch];
        let k = (is * f64::from(gs[ch])) as f32;
        let mean_dy = (sdy / count) as f32;
        let proj = (is * is * sdyx / count) as f32;
        let m = mean[ch];
        let off = block * plane;
        let (xb, db) = (&xs[off..][..plane], &dys[off..][..plane]);
        let g = output_gradient(affine(ch));
        for ((o, &v), &dy) in out.iter_mut().zip(xb).zip(db) {
            o.write(k * (g(v, dy) - mean_dy - (v - m) * proj));
        }
    });
    let dgamma: Vec<f32> = sums
        .iter()
        .zip(invstd)
        .map(|(&(_, sdyx), &is)| (sdyx * f64::from(is)) as f32)
        .collect();
    let dbeta: Vec<f32> = sums.iter().map(|&(sdy, _)| sdy as f32).collect();
    (dx, vector(dgamma), vector(dbeta))
}

fn vector(v: Vec<f32>) -> FlexTensor {
    let len = v.len();
    FlexTensor::from_data(TensorData::new(v, [len]))
}

impl FusedBatchNorm for Flex {
    fn fused_batch_norm_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
        relu: bool,
    ) -> BatchNormTrainOutput<Self> {
        let f = forward(&x, &gamma, &beta, epsilon, relu);
        BatchNormTrainOutput {
            output: f.output,
            mean: vector(f.mean),
            variance: vector(f.variance),
        }
    }
}

#[derive(Debug)]
struct FusedBatchNormBackward;

impl Backward<Flex, 3> for FusedBatchNormBackward {
    /// `x`, `gamma` and what the backward keeps of the forward.
    type State = (FlexTensor, FlexTensor, Saved);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, gamma, saved) = ops.state;
        let (dx, dgamma, dbeta) = backward(&x, &gamma, &saved, &dy);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, dx);
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, dgamma);
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, dbeta);
        }
    }
}

impl std::fmt::Debug for Saved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saved")
            .field("channels", &self.mean.len())
            .field("relu", &self.relu.is_some())
            .finish()
    }
}

impl<C: CheckpointStrategy> FusedBatchNorm for Autodiff<Flex, C> {
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> BatchNormTrainOutput<Self> {
        use burn::backend::AutodiffBackend;
        let prep = FusedBatchNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        let (x, gamma, beta) = (
            x.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
        );
        let f = forward(&x, &gamma, &beta, epsilon, relu);
        let (mean, variance) = (vector(f.mean.clone()), vector(f.variance));
        let saved = Saved {
            mean: f.mean,
            invstd: f.invstd,
            relu: relu.then_some(f.affine),
        };
        let output = match prep {
            OpsKind::Tracked(prep) => prep.finish((x, gamma, saved), f.output),
            OpsKind::UnTracked(prep) => prep.finish(f.output),
        };
        BatchNormTrainOutput {
            output,
            mean: Self::from_inner(mean),
            variance: Self::from_inner(variance),
        }
    }
}

/// Training-mode BatchNorm: `(output, batch mean, biased batch variance)`, through the fused
/// kernel of this module for f32 tensors on the Flex device (autodiff or not), through burn's
/// `batch_norm_train` elsewhere.
pub fn batch_norm_train(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    train(x, gamma, beta, epsilon, false)
}

/// [`batch_norm_train`] with a ReLU on its output, `(relu(output), mean, variance)`: on the Flex
/// device the ReLU is applied as the output is written and its mask is recomputed in the
/// backward (`threshold_backward` semantics: no gradient where the output is 0), saving the
/// ReLU's own pass over the activation forward and backward; burn's `batch_norm_train` followed
/// by `relu` elsewhere.
pub fn batch_norm_relu_train(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    train(x, gamma, beta, epsilon, true)
}

fn train(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    relu: bool,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    let on_flex = x.device().inner() == Device::flex();
    let f32s = x.dtype() == DType::F32 && gamma.dtype() == DType::F32 && beta.dtype() == DType::F32;
    let [n, c, h, w] = x.dims();
    if !on_flex || !f32s || n * h * w == 0 || c == 0 {
        let out = burn::tensor::module::batch_norm_train(x, gamma, beta, epsilon);
        let output = if relu {
            burn::tensor::activation::relu(out.output)
        } else {
            out.output
        };
        return (output, out.mean, out.variance);
    }
    let out = <Dispatch as FusedBatchNorm>::fused_batch_norm_train(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
        relu,
    );
    (
        Tensor::from_dispatch(out.output),
        Tensor::from_dispatch(out.mean),
        Tensor::from_dispatch(out.variance),
    )
}
