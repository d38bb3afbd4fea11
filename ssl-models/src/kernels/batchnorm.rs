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
    /// Training-mode BatchNorm of `x (N, C, ...)` with `gamma`, `beta` of shape `(C)`.
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> BatchNormTrainOutput<Self>;
}

/// `(N, C, planes)` of a rank >= 2 shape.
fn split_shape(t: &FlexTensor) -> (usize, usize, usize) {
    let dims = t.layout().shape().as_slice();
    let (n, c) = (dims[0], dims[1]);
    let plane = dims[2..].iter().product::<usize>();
    (n, c, plane)
}

/// `t` with its values contiguous, in order, from its first element.
fn contiguous(t: &FlexTensor) -> FlexTensor {
    if t.is_contiguous() && t.layout().start_offset() == 0 {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("f32 values, made contiguous first")
}

/// A new f32 tensor of `like`'s shape, written plane by plane in parallel: `fill(block, channel,
/// out)` gets the `block`-th `(n, c)` plane (`plane` values, channel `block % c`).
fn map_planes(
    like: &FlexTensor,
    c: usize,
    plane: usize,
    fill: impl Fn(usize, usize, &mut [f32]) + Sync + Send,
) -> FlexTensor {
    let mut out = FlexTensor::empty(like.layout().shape().clone(), DType::F32);
    out.storage_mut::<f32>()
        .par_chunks_mut(plane.max(1))
        .enumerate()
        .for_each(|(block, values)| fill(block, block % c, values));
    out
}

/// Per channel `(mean, biased variance)` of `x (N, C, plane)`, in f64.
fn statistics(x: &[f32], n: usize, c: usize, plane: usize) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let x0 = f64::from(x[ch * plane]);
            let (mut s, mut s2) = (0.0f64, 0.0f64);
            for b in 0..n {
                let block = &x[(b * c + ch) * plane..][..plane];
                let (mut bs, mut bs2) = (0.0f64, 0.0f64);
                for &v in block {
                    let d = f64::from(v) - x0;
                    bs += d;
                    bs2 += d * d;
                }
                s += bs;
                s2 += bs2;
            }
            let m = (n * plane) as f64;
            let mean_shift = s / m;
            let var = (s2 / m - mean_shift * mean_shift).max(0.0);
            (x0 + mean_shift, var)
        })
        .collect()
}

struct Forward {
    output: FlexTensor,
    mean: Vec<f32>,
    variance: Vec<f32>,
    invstd: Vec<f32>,
}

fn forward(x: &FlexTensor, gamma: &FlexTensor, beta: &FlexTensor, epsilon: f64) -> Forward {
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
    let output = map_planes(&x, c, plane, |block, ch, ys| {
        let (m, scale) = (mean[ch], invstd[ch] * gs[ch]);
        let shift = bs[ch] - m * scale;
        let xb = &xs[block * plane..][..plane];
        for (y, &v) in ys.iter_mut().zip(xb) {
            *y = v * scale + shift;
        }
    });
    Forward {
        output,
        variance: stats.iter().map(|&(_, v)| v as f32).collect(),
        mean,
        invstd,
    }
}

/// `(dx, dgamma, dbeta)` from `dy`.
fn backward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    mean: &[f32],
    invstd: &[f32],
    dy: &FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (x, gamma, dy) = (contiguous(x), contiguous(gamma), contiguous(dy));
    let (n, c, plane) = split_shape(&x);
    let (xs, gs, dys) = (values(&x), values(&gamma), values(&dy));
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let m = f64::from(mean[ch]);
            let (mut sdy, mut sdyx) = (0.0f64, 0.0f64);
            for b in 0..n {
                let off = (b * c + ch) * plane;
                for (&v, &g) in xs[off..][..plane].iter().zip(&dys[off..][..plane]) {
                    let g = f64::from(g);
                    sdy += g;
                    sdyx += g * (f64::from(v) - m);
                }
            }
            (sdy, sdyx)
        })
        .collect();
    let count = (n * plane) as f64;
    let dx = map_planes(&x, c, plane, |block, ch, out| {
        let is = f64::from(invstd[ch]);
        let (sdy, sdyx) = sums[ch];
        let k = (is * f64::from(gs[ch])) as f32;
        let mean_dy = (sdy / count) as f32;
        let proj = (is * is * sdyx / count) as f32;
        let m = mean[ch];
        let off = block * plane;
        for ((o, &v), &g) in out
            .iter_mut()
            .zip(&xs[off..][..plane])
            .zip(&dys[off..][..plane])
        {
            *o = k * (g - mean_dy - (v - m) * proj);
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
    ) -> BatchNormTrainOutput<Self> {
        let f = forward(&x, &gamma, &beta, epsilon);
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
    /// `x`, `gamma`, the batch mean and `1 / sqrt(var + eps)`.
    type State = (FlexTensor, FlexTensor, Vec<f32>, Vec<f32>);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, gamma, mean, invstd) = ops.state;
        let (dx, dgamma, dbeta) = backward(&x, &gamma, &mean, &invstd, &dy);
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

impl<C: CheckpointStrategy> FusedBatchNorm for Autodiff<Flex, C> {
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
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
        let f = forward(&x, &gamma, &beta, epsilon);
        let (mean, variance) = (vector(f.mean.clone()), vector(f.variance));
        let output = match prep {
            OpsKind::Tracked(prep) => prep.finish((x, gamma, f.mean, f.invstd), f.output),
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
    let on_flex = x.device().inner() == Device::flex();
    let f32s = x.dtype() == DType::F32 && gamma.dtype() == DType::F32 && beta.dtype() == DType::F32;
    let [n, c, h, w] = x.dims();
    if !on_flex || !f32s || n * h * w == 0 || c == 0 {
        let out = burn::tensor::module::batch_norm_train(x, gamma, beta, epsilon);
        return (out.output, out.mean, out.variance);
    }
    let out = <Dispatch as FusedBatchNorm>::fused_batch_norm_train(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    );
    (
        Tensor::from_dispatch(out.output),
        Tensor::from_dispatch(out.mean),
        Tensor::from_dispatch(out.variance),
    )
}
