//! DDP equivalence of an MHCL-style training step: 2 ranks x batch B on identical data end with
//! the same parameters and queue as 1 rank x batch 2B (no shuffle-BN), after 3 steps.
//!
//! The step is the one of the design: query encoder with two scales, EMA key encoder, hard
//! mixing (lam, mu, perm drawn per step), multiscale InfoNCE with weights, backward, gradient
//! averaging, SGD (momentum, weight decay), all-gather of the keys and enqueue. The encoder is
//! a small conv net with BatchNorm, so the check also covers batch statistics: a rank's batch X
//! and the single-process batch [X; X] have the same mean and (biased) variance.

use std::collections::HashMap;
use std::time::Duration;

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, relu};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use ssl_distributed::{LocalGroup, ProcessGroup, average_gradients, concat_all_gather, run_local};
use ssl_models::visit::{NamedMapper, NamedVisitor, TensorPath, map_named, visit_named};

const S: usize = 2; // plain scales; 2S with the hard ones
const C: usize = 8; // feature dim
const K: usize = 16; // queue length
const B: usize = 4; // per-rank batch
const HW: usize = 8; // image size
const T: f64 = 0.2;
const WEIGHTS: [f32; 2 * S] = [0.4, 1.0, 0.04, 0.1];

#[derive(Module, Debug)]
struct Encoder {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    head1: Linear,
    head2: Linear,
}

/// Deterministic weights from a seeded generator (BN buffers untouched).
struct Init {
    rng: StdRng,
}

impl NamedMapper for Init {
    fn float<const D: usize>(
        &mut self,
        path: &TensorPath,
        p: Param<Tensor<D>>,
    ) -> Param<Tensor<D>> {
        let name = path.name();
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            return p;
        }
        let rng = &mut self.rng;
        p.map(|t| {
            let shape = t.shape();
            let n = shape.num_elements();
            let gamma = name.ends_with("gamma");
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    let u = rng.random_range(-0.4f32..0.4);
                    if gamma { 1.0 + u } else { u }
                })
                .collect();
            let rg = t.is_require_grad();
            Tensor::<D>::from_data(TensorData::new(v, shape), &t.device()).set_require_grad(rg)
        })
    }
}

impl Encoder {
    fn new(device: &Device) -> Encoder {
        let conv = |i, o, stride| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(device)
        };
        let enc = Encoder {
            conv1: conv(3, 6, 1),
            bn1: BatchNormConfig::new(6).init(device),
            conv2: conv(6, 10, 2),
            bn2: BatchNormConfig::new(10).init(device),
            head1: LinearConfig::new(6, C).init(device),
            head2: LinearConfig::new(10, C).init(device),
        };
        map_named(
            enc,
            &mut Init {
                rng: StdRng::seed_from_u64(42),
            },
        )
    }

    /// (N, S, C), L2-normalized over C.
    fn forward(&self, x: Tensor<4>) -> Tensor<3> {
        let a = relu(self.bn1.forward(self.conv1.forward(x)));
        let b = relu(self.bn2.forward(self.conv2.forward(a.clone())));
        let pool = |t: Tensor<4>| -> Tensor<2> {
            let [n, c, _, _] = t.dims();
            t.mean_dim(3).mean_dim(2).reshape([n, c])
        };
        let h1 = self.head1.forward(pool(a));
        let h2 = self.head2.forward(pool(b));
        normalize(Tensor::stack::<3>(vec![h1, h2], 1))
    }
}

fn normalize(x: Tensor<3>) -> Tensor<3> {
    let norm = x
        .clone()
        .powf_scalar(2.0)
        .sum_dim(2)
        .sqrt()
        .clamp_min(1e-12);
    x.div(norm)
}

/// Flat copies of the float parameters by path (optionally without BN buffers).
struct Collect {
    out: HashMap<String, Tensor<1>>,
    buffers: bool,
}

impl NamedVisitor for Collect {
    fn float<const D: usize>(&mut self, path: &TensorPath, p: &Param<Tensor<D>>) {
        let k = path.name();
        if !self.buffers && (k.ends_with("running_mean") || k.ends_with("running_var")) {
            return;
        }
        self.out.insert(k, p.val().detach().reshape([-1]));
    }
}

fn params(m: &Encoder, buffers: bool) -> HashMap<String, Tensor<1>> {
    let mut c = Collect {
        out: HashMap::new(),
        buffers,
    };
    visit_named(m, &mut c);
    c.out
}

/// MoCo's momentum update of the key encoder (parameters only).
struct Ema {
    src: HashMap<String, Tensor<1>>,
    m: f64,
}

impl NamedMapper for Ema {
    fn float<const D: usize>(
        &mut self,
        path: &TensorPath,
        p: Param<Tensor<D>>,
    ) -> Param<Tensor<D>> {
        match self.src.remove(&path.name()) {
            None => p,
            Some(q) => {
                let m = self.m;
                p.map(|k| {
                    let q = q.reshape(k.shape()).to_device(&k.device());
                    k.mul_scalar(m).add(q.mul_scalar(1.0 - m)).detach()
                })
            }
        }
    }
}

struct Mixing {
    lam: Vec<f32>,
    mu: Vec<f32>,
    perm: Vec<usize>,
}

fn draw(rng: &mut StdRng) -> Mixing {
    let lam = (0..S)
        .map(|_| 1.0 + rng.random_range(0.0f32..1.0))
        .collect();
    let mu = (0..S).map(|_| rng.random_range(0.0f32..1.0)).collect();
    let mut perm: Vec<usize> = (0..K).collect();
    perm.shuffle(rng);
    Mixing { lam, mu, perm }
}

/// Images of one step: rows `0..n` of a deterministic batch (repeated `repeat` times).
fn images(step: usize, which: usize, repeat: usize, device: &Device) -> Tensor<4> {
    let mut rng = StdRng::seed_from_u64((step * 10 + which) as u64);
    let one: Vec<f32> = (0..B * 3 * HW * HW)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let all: Vec<f32> = (0..repeat).flat_map(|_| one.clone()).collect();
    Tensor::from_data(TensorData::new(all, [B * repeat, 3, HW, HW]), device)
}

struct Outcome {
    params_q: HashMap<String, Vec<f32>>,
    params_k: HashMap<String, Vec<f32>>,
    queue: Vec<f32>,
    ptr: usize,
    losses: Vec<f32>,
}

/// Three training steps on one rank of `group`; each rank sees the same images, `repeat` copies.
fn train(group: &dyn ProcessGroup, repeat: usize) -> Outcome {
    let device = Device::flex().autodiff();
    let mut enc_q = Encoder::new(&device);
    let mut enc_k = Encoder::new(&device).no_grad();
    let mut queue = {
        let mut rng = StdRng::seed_from_u64(3);
        let v: Vec<f32> = (0..2 * S * C * K)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let q = Tensor::<3>::from_data(TensorData::new(v, [2 * S, C, K]), &device);
        let norm = q.clone().powf_scalar(2.0).sum_dim(1).sqrt();
        q.div(norm)
    };
    let mut ptr = 0;
    let mut optim = SgdConfig::new()
        .with_momentum(Some(MomentumConfig::new().with_dampening(0.0)))
        .with_weight_decay(Some(WeightDecayConfig::new(1e-4)))
        .init();
    let mut mix_rng = StdRng::seed_from_u64(11);
    let mut losses = vec![];
    for step in 0..3 {
        let im_q = images(step, 0, repeat, &device);
        let im_k = images(step, 1, repeat, &device);
        let mix = draw(&mut mix_rng);
        let q = enc_q.forward(im_q);
        enc_k = map_named(
            enc_k,
            &mut Ema {
                src: params(&enc_q, false),
                m: 0.99,
            },
        );
        let k = enc_k.forward(im_k).detach();
        let [n, _, _] = q.dims();
        let lam = Tensor::<3>::from_data(TensorData::new(mix.lam.clone(), [1, S, 1]), &device);
        let one_minus = lam.clone().neg().add_scalar(1.0);
        let qh = q.clone() * lam.clone() + k.clone() * one_minus.clone();
        let kh = k.clone() * lam + q.clone() * one_minus;
        let big_q = Tensor::cat(vec![q, qh], 1);
        let big_k = Tensor::cat(vec![k, kh], 1);
        let perm_idx = Tensor::<1, Int>::from_data(
            TensorData::new(mix.perm.iter().map(|&i| i as i64).collect::<Vec<_>>(), [K]),
            &device,
        );
        let mut loss: Option<Tensor<1>> = None;
        for (s, &weight) in WEIGHTS.iter().enumerate() {
            let qs = big_q.clone().narrow(1, s, 1).reshape([n, C]);
            let ks = big_k.clone().narrow(1, s, 1).reshape([n, C]);
            let l_pos = (qs.clone() * ks).sum_dim(1);
            let mut l_neg = qs.matmul(queue.clone().narrow(0, s, 1).reshape([C, K]));
            if s >= S {
                let mu = mix.mu[s - S] as f64;
                l_neg = l_neg.clone().mul_scalar(mu)
                    + l_neg.select(1, perm_idx.clone()).mul_scalar(1.0 - mu);
            }
            let logits = Tensor::cat(vec![l_pos, l_neg], 1).div_scalar(T);
            let ce = log_softmax(logits, 1).narrow(1, 0, 1).mean().neg();
            let term = ce.mul_scalar(weight);
            loss = Some(match loss {
                None => term,
                Some(l) => l + term,
            });
        }
        let loss = loss.unwrap();
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &enc_q);
        let grads = average_gradients(group, &enc_q, grads).unwrap();
        enc_q = optim.step(0.5, enc_q, grads);
        // enqueue the keys of every rank: (N_all, 2S, C) -> queue[:, :, ptr..ptr + N_all]
        let keys = concat_all_gather(group, big_k.detach()).unwrap();
        let n_all = keys.dims()[0];
        assert!(K.is_multiple_of(n_all));
        queue = queue.slice_assign(
            burn::tensor::s![.., .., ptr..ptr + n_all],
            keys.permute([1, 2, 0]),
        );
        ptr = (ptr + n_all) % K;
    }
    let flat = |m: HashMap<String, Tensor<1>>| -> HashMap<String, Vec<f32>> {
        m.into_iter()
            .map(|(k, v)| (k, v.into_data().try_into_vec::<f32>().unwrap()))
            .collect()
    };
    Outcome {
        params_q: flat(params(&enc_q, true)),
        params_k: flat(params(&enc_k, true)),
        queue: queue.into_data().try_into_vec::<f32>().unwrap(),
        ptr,
        losses,
    }
}

fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}");
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= tol, "{what}: max |diff| {worst} > {tol}");
}

#[test]
fn two_ranks_equal_one_rank_with_twice_the_batch() {
    let single = train(&LocalGroup::single(), 2);
    let ranks = run_local(2, Duration::from_secs(60), |g| train(&g, 1)).unwrap();
    // the parameters moved (the check is not vacuous)
    let init = Encoder::new(&Device::flex());
    let w0: Vec<f32> = params(&init, false)["conv1.weight"]
        .clone()
        .into_data()
        .try_into_vec()
        .unwrap();
    let moved = w0
        .iter()
        .zip(&single.params_q["conv1.weight"])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(moved > 1e-3, "parameters did not change ({moved})");
    for (r, out) in ranks.iter().enumerate() {
        assert_eq!(out.ptr, single.ptr);
        assert_close(
            &format!("rank {r} losses"),
            &out.losses,
            &single.losses,
            1e-4,
        );
        assert_close(&format!("rank {r} queue"), &out.queue, &single.queue, 1e-4);
        assert_eq!(out.params_q.len(), single.params_q.len());
        for (name, v) in &single.params_q {
            if name.ends_with("running_var") || name.ends_with("running_mean") {
                continue; // batch statistics updates may use an unbiased variance (n differs)
            }
            assert_close(
                &format!("rank {r} encoder_q {name}"),
                &out.params_q[name],
                v,
                1e-4,
            );
        }
        for (name, v) in &single.params_k {
            if name.ends_with("running_var") || name.ends_with("running_mean") {
                continue;
            }
            assert_close(
                &format!("rank {r} encoder_k {name}"),
                &out.params_k[name],
                v,
                1e-4,
            );
        }
    }
    // and the two ranks agree exactly on the averaged result
    for (name, v) in &ranks[0].params_q {
        assert_eq!(v, &ranks[1].params_q[name], "{name}");
    }
}
