//! Mathematical properties of the losses, checked on random inputs (few cases each, so the suite
//! stays fast in release mode).

use burn::prelude::*;
use burn::tensor::activation;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_distr::StandardNormal;
use ssl_losses::{
    HardFeatureLoss, HardFeatureLossConfig, HardMixing, InfoNceLoss, Kernel, LossError,
    cross_entropy, hard_features, mixed_queue, normalize, topk_accuracy,
};

fn device() -> Device {
    Device::flex().autodiff()
}

fn random<const D: usize>(rng: &mut StdRng, shape: [usize; D], dev: &Device) -> Tensor<D> {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    Tensor::from_data(TensorData::new(v, shape), dev)
}

fn unit<const D: usize>(
    rng: &mut StdRng,
    shape: [usize; D],
    dim: usize,
    dev: &Device,
) -> Tensor<D> {
    normalize(random(rng, shape, dev), dim).unwrap()
}

fn vec1(t: Tensor<1>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().unwrap()
}

fn vec3(t: Tensor<3>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn mhcl(t: f64, kernel: Kernel) -> HardFeatureLoss {
    HardFeatureLossConfig::new()
        .with_temperature(t)
        .with_weights(vec![0.1, 0.4, 0.7, 1.0, 0.01, 0.04, 0.07, 0.1])
        .with_kernel(kernel)
        .init()
        .unwrap()
}

/// Random MHCL inputs: q, k (N, 4, C), queue (8, C, K), mixing.
struct Inputs {
    q: Tensor<3>,
    k: Tensor<3>,
    queue: Tensor<3>,
    mixing: HardMixing,
}

fn inputs(seed: u64, n: usize, c: usize, k: usize) -> Inputs {
    let dev = device();
    let mut rng = StdRng::seed_from_u64(seed);
    let q = unit(&mut rng, [n, 4, c], 2, &dev);
    let key = unit(&mut rng, [n, 4, c], 2, &dev);
    let queue = unit(&mut rng, [8, c, k], 1, &dev);
    let mixing = HardMixing::draw(&mut rng, 4, k, 1.0, 1.0).unwrap();
    Inputs {
        q,
        k: key,
        queue,
        mixing,
    }
}

fn kernels() -> impl Strategy<Value = Kernel> {
    prop_oneof![Just(Kernel::Auto), Just(Kernel::Tensor)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Cross-entropy of a softmax is never negative, so neither is any scale's loss nor the total
    /// with non-negative weights.
    #[test]
    fn loss_is_non_negative(seed in any::<u64>(), n in 1usize..6, c in 2usize..9,
                            k in 1usize..40, t in 0.05f64..1.0, kernel in kernels()) {
        let x = inputs(seed, n, c, k);
        let out = mhcl(t, kernel).forward(x.q, x.k, x.queue, Some(&x.mixing)).unwrap();
        for l in vec1(out.per_scale) {
            prop_assert!(l >= -1e-6, "negative scale loss {l}");
        }
        prop_assert!(out.loss.into_scalar::<f32>() >= -1e-6);
    }

    /// When every logit of a row is equal, the softmax is uniform over the 1 + K classes and each
    /// scale's loss is ln(1 + K) (all-zero queries and keys make every logit zero).
    #[test]
    fn equal_logits_give_ln_one_plus_k(seed in any::<u64>(), n in 1usize..5, c in 2usize..7,
                                       k in 1usize..50, kernel in kernels()) {
        let dev = device();
        let x = inputs(seed, n, c, k);
        let zeros = Tensor::<3>::zeros([n, 4, c], &dev);
        let out = mhcl(0.2, kernel)
            .forward(zeros.clone(), zeros, x.queue, Some(&x.mixing))
            .unwrap();
        let want = ((1 + k) as f32).ln();
        for l in vec1(out.per_scale) {
            prop_assert!((l - want).abs() < 1e-5 * want.max(1.0), "{l} != ln(1+K) = {want}");
        }
        let total = out.loss.into_scalar::<f32>();
        prop_assert!((total - 2.42 * want).abs() < 1e-5 * want.max(1.0), "{total}");
    }

    /// The negatives are a set: permuting the queue columns (and conjugating the hard scales'
    /// permutation so that each mixed negative is the same pair of columns) changes nothing.
    #[test]
    fn invariant_to_permuting_queue_columns(seed in any::<u64>(), n in 1usize..5,
                                            c in 2usize..7, k in 2usize..40,
                                            kernel in kernels()) {
        let x = inputs(seed, n, c, k);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let mut sigma: Vec<usize> = (0..k).collect();
        sigma.shuffle(&mut rng);
        let mut sigma_inv = vec![0; k];
        for (j, &p) in sigma.iter().enumerate() {
            sigma_inv[p] = j;
        }
        // queue'[:, j] = queue[:, sigma[j]]; perm' = sigma^-1 . perm . sigma.
        let idx: Vec<i64> = sigma.iter().map(|&p| p as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [k]), &device());
        let queue2 = x.queue.clone().select(2, idx);
        let perm2: Vec<usize> = (0..k).map(|j| sigma_inv[x.mixing.perm[sigma[j]]]).collect();
        let mixing2 =
            HardMixing::new(x.mixing.lam.clone(), x.mixing.mu.clone(), perm2).unwrap();
        let loss = mhcl(0.3, kernel);
        let a = loss.forward(x.q.clone(), x.k.clone(), x.queue, Some(&x.mixing)).unwrap();
        let b = loss.forward(x.q, x.k, queue2, Some(&mixing2)).unwrap();
        prop_assert!(max_diff(&vec1(a.per_scale), &vec1(b.per_scale)) < 1e-5);
        prop_assert_eq!(a.acc1, b.acc1);
        prop_assert_eq!(a.acc5, b.acc5);
    }

    /// lam = 1 makes qh = q and kh = k; mu = 1 makes the mixed negatives the plain queue columns
    /// (whatever the permutation): each hard scale then equals its plain scale when the hard
    /// scales of the queue hold the same keys.
    #[test]
    fn unit_lam_and_mu_make_hard_scales_plain(seed in any::<u64>(), n in 1usize..5,
                                              c in 2usize..7, k in 1usize..40,
                                              kernel in kernels()) {
        let x = inputs(seed, n, c, k);
        let plain = x.queue.clone().narrow(0, 0, 4);
        let queue = Tensor::cat(vec![plain.clone(), plain], 0);
        let mixing = HardMixing::new(vec![1.0; 4], vec![1.0; 4], x.mixing.perm.clone()).unwrap();
        let out = mhcl(0.2, kernel).forward(x.q, x.k.clone(), queue, Some(&mixing)).unwrap();
        let l = vec1(out.per_scale);
        prop_assert!(max_diff(&l[..4], &l[4..]) < 1e-5, "{l:?}");
        let keys = vec3(out.keys.clone().narrow(1, 4, 4));
        prop_assert!(max_diff(&keys, &vec3(x.k)) < 1e-6);
    }

    /// The gradient of the fused loss with respect to the queries is the derivative: it matches
    /// central finite differences along a random direction.
    #[test]
    fn gradient_matches_finite_differences(seed in any::<u64>(), n in 1usize..4,
                                           c in 2usize..6, k in 1usize..20,
                                           kernel in kernels(), detach in any::<bool>()) {
        let dev = device();
        let x = inputs(seed, n, c, k);
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1));
        let q_raw = random::<3>(&mut rng, [n, 4, c], &dev);
        let dir = random::<3>(&mut rng, [n, 4, c], &dev);
        let loss = HardFeatureLossConfig::new()
            .with_temperature(0.5)
            .with_kernel(kernel)
            .with_detach_hard_keys(detach)
            .init()
            .unwrap();
        let value = |q: Tensor<3>| -> f64 {
            let out = loss.forward(q, x.k.clone(), x.queue.clone(), Some(&x.mixing)).unwrap();
            f64::from(out.loss.into_scalar::<f32>())
        };
        let leaf = q_raw.clone().require_grad();
        let out = loss.forward(leaf.clone(), x.k.clone(), x.queue.clone(), Some(&x.mixing))
            .unwrap();
        let grads = out.loss.backward();
        let g = leaf.grad(&grads).unwrap();
        let analytic = f64::from(g.mul(dir.clone().inner()).sum().into_scalar::<f32>());
        if detach {
            // With the hard keys detached the loss is no longer the function being
            // differentiated; only the kept-gradient case is a derivative check.
            prop_assert!(analytic.is_finite());
        } else {
            let h = 1e-2;
            let plus = value(q_raw.clone().add(dir.clone().mul_scalar(h)));
            let minus = value(q_raw.sub(dir.mul_scalar(h)));
            let numeric = (plus - minus) / (2.0 * h);
            prop_assert!((numeric - analytic).abs() <= 2e-3 + 2e-2 * analytic.abs(),
                         "finite differences {numeric} vs autodiff {analytic}");
        }
    }

    /// The fused loss equals the reference formulation (materialized mixed queue and logits,
    /// log-softmax, gradient by autodiff) in value and gradient, on both implementations.
    #[test]
    fn fused_equals_materialized(seed in any::<u64>(), n in 1usize..6, c in 2usize..9,
                                 k in 1usize..60, t in 0.05f64..1.0, kernel in kernels()) {
        let x = inputs(seed, n, c, k);
        let loss = mhcl(t, kernel);
        let q1 = x.q.clone().require_grad();
        let out = loss.forward(q1.clone(), x.k.clone(), x.queue.clone(), Some(&x.mixing)).unwrap();
        let q2 = x.q.require_grad();
        let (total, per_scale) =
            loss.forward_materialized(q2.clone(), x.k, x.queue, Some(&x.mixing)).unwrap();
        let scale = 1.0 / t as f32;
        prop_assert!(max_diff(&vec1(out.per_scale), &vec1(per_scale)) < 2e-5 * scale);
        let g1 = q1.grad(&out.loss.backward()).unwrap();
        let g2 = q2.grad(&total.backward()).unwrap();
        prop_assert!(max_diff(&vec3(g1), &vec3(g2)) < 2e-5 * scale);
    }

    /// `detach_hard_keys` stops exactly the gradient through `kh`: the fused gradient equals
    /// autodiff through the reference formulation with `kh` built from a detached `q`.
    #[test]
    fn detached_hard_keys_drop_only_the_kh_path(seed in any::<u64>(), n in 1usize..5,
                                                c in 2usize..7, k in 1usize..30,
                                                kernel in kernels()) {
        let x = inputs(seed, n, c, k);
        let t = 0.3;
        let loss = HardFeatureLossConfig::new()
            .with_temperature(t)
            .with_detach_hard_keys(true)
            .with_kernel(kernel)
            .init()
            .unwrap();
        let q1 = x.q.clone().require_grad();
        let out = loss.forward(q1.clone(), x.k.clone(), x.queue.clone(), Some(&x.mixing)).unwrap();
        let g1 = q1.grad(&out.loss.backward()).unwrap();

        let q2 = x.q.require_grad();
        let (qh, _) = hard_features(q2.clone(), x.k.clone(), &x.mixing.lam).unwrap();
        let (_, kh) = hard_features(q2.clone().detach(), x.k.clone(), &x.mixing.lam).unwrap();
        let big_q = Tensor::cat(vec![q2.clone(), qh], 1);
        let big_k = Tensor::cat(vec![x.k, kh], 1);
        let queue = mixed_queue(x.queue, &x.mixing).unwrap();
        let pos = big_q.clone().mul(big_k).sum_dim(2);
        let neg = big_q.swap_dims(0, 1).matmul(queue).swap_dims(0, 1);
        let logits = Tensor::cat(vec![pos, neg], 2).div_scalar(t);
        let losses = activation::log_softmax(logits, 2).narrow(2, 0, 1).mean_dim(0).reshape([8]).neg();
        let w = Tensor::<1>::from_floats([0.1, 0.4, 0.7, 1.0, 0.01, 0.04, 0.07, 0.1], &device());
        let total = losses.mul(w).sum();
        let g2 = q2.grad(&total.backward()).unwrap();
        prop_assert!(max_diff(&vec3(g1), &vec3(g2)) < 1e-4);
    }

    /// InfoNCE is the one-scale case of the MHCL loss without hard scales.
    #[test]
    fn info_nce_is_the_one_scale_case(seed in any::<u64>(), n in 1usize..6, c in 2usize..9,
                                      k in 1usize..60) {
        let dev = device();
        let mut rng = StdRng::seed_from_u64(seed);
        let q = unit(&mut rng, [n, c], 1, &dev);
        let key = unit(&mut rng, [n, c], 1, &dev);
        let queue = unit(&mut rng, [c, k], 0, &dev);
        let a = InfoNceLoss::new(0.2).forward(q.clone(), key.clone(), queue.clone()).unwrap();
        let b = HardFeatureLossConfig::moco_v2().init().unwrap()
            .forward(q.unsqueeze_dim(1), key.unsqueeze_dim(1), queue.unsqueeze_dim(0), None)
            .unwrap();
        prop_assert!(max_diff(&vec1(a.per_scale), &vec1(b.per_scale)) < 1e-6);
        prop_assert_eq!(a.acc1, b.acc1);
        prop_assert_eq!(a.acc5, b.acc5);
    }

    /// Accuracies are percentages, top-1 <= top-5, and top-k is 100 when k covers every class.
    #[test]
    fn topk_accuracy_is_ordered(seed in any::<u64>(), n in 1usize..20, classes in 1usize..12) {
        let dev = device();
        let mut rng = StdRng::seed_from_u64(seed);
        let logits = random::<2>(&mut rng, [n, classes], &dev);
        let t: Vec<i64> = (0..n).map(|_| rng.random_range(0..classes as i64)).collect();
        let targets = Tensor::<1, Int>::from_data(TensorData::new(t, [n]), &dev);
        let acc = topk_accuracy(logits.clone(), targets.clone(), &[1, 5, classes]).unwrap();
        prop_assert!((0.0..=100.0).contains(&acc[0]));
        prop_assert!(acc[0] <= acc[1]);
        prop_assert!((acc[2] - 100.0).abs() < 1e-4);
        let ce = cross_entropy(logits, targets).unwrap().into_scalar::<f32>();
        prop_assert!(ce >= 0.0);
    }

    /// Drawn mixing values lie where Beta(a, b) (+1) puts them, the permutation is one, and a
    /// seed repeats the draw.
    #[test]
    fn drawn_mixing_is_in_range_and_repeatable(seed in any::<u64>(), s in 1usize..6,
                                               k in 1usize..200, a in 0.1f64..5.0,
                                               b in 0.1f64..5.0) {
        let m = HardMixing::draw(&mut StdRng::seed_from_u64(seed), s, k, a, b).unwrap();
        prop_assert!(m.lam.iter().all(|l| (1.0..=2.0).contains(l)));
        prop_assert!(m.mu.iter().all(|u| (0.0..=1.0).contains(u)));
        prop_assert!(m.validate(s, k).is_ok());
        let again = HardMixing::draw(&mut StdRng::seed_from_u64(seed), s, k, a, b).unwrap();
        prop_assert_eq!(m, again);
    }

    /// Bad hyper-parameters are errors, never panics.
    #[test]
    fn bad_hyper_parameters_are_errors(t in -2.0f64..=0.0, a in -1.0f64..=0.0) {
        let dev = device();
        let q = Tensor::<2>::ones([2, 3], &dev);
        let queue = Tensor::<2>::ones([3, 4], &dev);
        let bad_t = InfoNceLoss::new(t).forward(q.clone(), q, queue);
        prop_assert!(matches!(bad_t, Err(LossError::InvalidTemperature(_))), "{:?}", bad_t.err());
        let bad_t = HardFeatureLossConfig::new().with_temperature(t).init();
        prop_assert!(matches!(bad_t, Err(LossError::InvalidTemperature(_))), "{:?}", bad_t.err());
        let bad_a = HardFeatureLossConfig::new().with_beta(a, 1.0).init();
        prop_assert!(matches!(bad_a, Err(LossError::InvalidBeta { .. })), "{:?}", bad_a.err());
        let bad_b = HardMixing::draw(&mut StdRng::seed_from_u64(0), 4, 8, 1.0, a);
        prop_assert!(matches!(bad_b, Err(LossError::InvalidBeta { .. })), "{:?}", bad_b.err());
    }
}
