//! Properties of the queue and the EMA on random inputs (few cases each), and the EMA on modules
//! with burn's own layers.

use burn::module::{Module, Param, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use proptest::prelude::*;
use ssl_queue::{MomentumQueue, QueueError, ema_update, ema_update_skipping, try_ema_update};

fn dev() -> Device {
    Device::flex()
}

fn ramp(n: usize, offset: f32) -> Vec<f32> {
    (0..n).map(|i| offset + i as f32 * 0.25).collect()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Each enqueued key lands in column `ptr + i` of every scale, the pointer wraps to 0 after
    /// K / N steps, and columns outside the written block are untouched.
    #[test]
    fn enqueue_writes_each_key_at_its_column(s in 1usize..4, d in 1usize..5,
                                             n in 1usize..5, steps in 1usize..5,
                                             extra in 0usize..9) {
        let k = n * steps;
        let mut q = MomentumQueue::new(s, d, k, &dev()).unwrap();
        let (_, before) = q.to_vec().unwrap();
        for step in 0..=extra {
            let p = q.ptr();
            prop_assert_eq!(p, (step * n) % k);
            let keys = ramp(n * s * d, 1000.0 * (step as f32 + 1.0));
            let (_, old) = q.to_vec().unwrap();
            q.enqueue(Tensor::from_data(TensorData::new(keys.clone(), [n, s, d]), &dev()))
                .unwrap();
            let (shape, now) = q.to_vec().unwrap();
            prop_assert_eq!(shape, vec![s, d, k]);
            for sc in 0..s {
                for c in 0..d {
                    for col in 0..k {
                        let at = (sc * d + c) * k + col;
                        if (p..p + n).contains(&col) {
                            let i = col - p;
                            prop_assert_eq!(now[at], keys[(i * s + sc) * d + c]);
                        } else {
                            prop_assert_eq!(now[at], old[at]);
                        }
                    }
                }
            }
        }
        prop_assert_eq!(q.ptr(), ((extra + 1) * n) % k);
        prop_assert_eq!(before.len(), s * d * k);
    }

    /// A fresh queue holds unit columns (normal draws normalized over `dim`).
    #[test]
    fn new_queue_has_unit_columns(s in 1usize..4, d in 1usize..9, k in 1usize..20) {
        let q = MomentumQueue::new(s, d, k, &dev()).unwrap();
        let norms = values(q.tensor().powf_scalar(2.0).sum_dim(1).sqrt());
        prop_assert!(norms.iter().all(|v| (v - 1.0).abs() < 1e-5), "{norms:?}");
        prop_assert_eq!((q.scales(), q.dim(), q.len(), q.ptr()), (s, d, k, 0));
    }

    /// Saving and restoring through plain values gives the same queue and pointer.
    #[test]
    fn to_vec_from_vec_round_trip(s in 1usize..4, d in 1usize..5, n in 1usize..4,
                                  steps in 1usize..4, fill in 0usize..4) {
        let mut q = MomentumQueue::new(s, d, n * steps, &dev()).unwrap();
        for _ in 0..fill {
            q.enqueue(Tensor::ones([n, s, d], &dev())).unwrap();
        }
        let (shape, v) = q.to_vec().unwrap();
        let r = MomentumQueue::from_vec(&shape, v.clone(), q.ptr(), &dev()).unwrap();
        prop_assert_eq!(r.ptr(), q.ptr());
        prop_assert_eq!(r.to_vec().unwrap(), (shape, v));
    }

    /// Keys that do not divide K, or of the wrong shape, are errors and leave the queue as it was.
    #[test]
    fn bad_keys_are_errors(s in 1usize..4, d in 1usize..5, k in 2usize..30, n in 1usize..40) {
        let mut q = MomentumQueue::new(s, d, k, &dev()).unwrap();
        let before = q.to_vec().unwrap();
        let r = q.enqueue(Tensor::zeros([n, s, d], &dev()));
        if k % n == 0 {
            prop_assert!(r.is_ok());
        } else {
            prop_assert_eq!(r.unwrap_err(), QueueError::NotMultiple { k, n });
            prop_assert_eq!(q.to_vec().unwrap(), before.clone());
        }
        let r = q.enqueue(Tensor::zeros([1, s + 1, d], &dev()));
        prop_assert!(matches!(r, Err(QueueError::Shape(_))), "{:?}", r);
        prop_assert!(MomentumQueue::from_parts(q.tensor(), k).is_err());
    }

    /// EMA: m = 0 copies the source, m = 1 keeps the target, any m gives k*m + q*(1-m); the
    /// BatchNorm buffers keep the target's values.
    #[test]
    fn ema_is_the_affine_average(seed in any::<u64>(), m in 0.0f64..=1.0) {
        let device = Device::flex().autodiff();
        device.seed(seed);
        let src = Net::new(&device);
        let tgt = Net::new(&device).no_grad();
        let (src_p, src_b) = src.snapshot();
        let (tgt_p, tgt_b) = tgt.snapshot();
        let out0 = ema_update(tgt.clone_deep(), &src, 0.0).unwrap();
        let out1 = ema_update(tgt.clone_deep(), &src, 1.0).unwrap();
        let outm = ema_update(tgt, &src, m).unwrap();
        prop_assert_eq!(&out0.snapshot().0, &src_p);
        prop_assert_eq!(&out1.snapshot().0, &tgt_p);
        let (got, buffers) = outm.snapshot();
        for ((g, s), t) in got.iter().zip(&src_p).zip(&tgt_p) {
            let want = t * m as f32 + s * (1.0 - m) as f32;
            prop_assert!((g - want).abs() <= 1e-6 * (1.0 + want.abs()), "{g} vs {want}");
        }
        prop_assert_eq!(buffers, tgt_b.clone());
        prop_assert_eq!(out0.snapshot().1, tgt_b);
        prop_assert_ne!(src_b, out1.snapshot().1);
    }
}

/// A small network: conv, burn's BatchNorm, a BatchNorm-like module with a float
/// `num_batches_tracked` running state, and a linear layer.
#[derive(Module, Debug)]
struct Net {
    conv: Conv2d,
    bn: BatchNorm,
    norm: PtNorm,
    fc: Linear,
}

#[derive(Module, Debug)]
struct PtNorm {
    weight: Param<Tensor<1>>,
    running_mean: RunningState<Tensor<1>>,
    running_var: RunningState<Tensor<1>>,
    num_batches_tracked: RunningState<Tensor<1>>,
}

impl Net {
    fn new(device: &Device) -> Self {
        let rand = |n: usize| Tensor::<1>::random([n], burn::tensor::Distribution::Default, device);
        Self {
            conv: Conv2dConfig::new([3, 4], [3, 3]).init(device),
            bn: {
                let bn = BatchNormConfig::new(4).init(device);
                bn.running_mean.update(rand(4));
                bn.running_var.update(rand(4));
                bn
            },
            norm: PtNorm {
                weight: Param::from_tensor(rand(4)),
                running_mean: RunningState::new(rand(4)),
                running_var: RunningState::new(rand(4)),
                num_batches_tracked: RunningState::new(rand(1)),
            },
            fc: LinearConfig::new(4, 5).init(device),
        }
    }

    /// Independent copy (fresh running-state cells).
    fn clone_deep(&self) -> Self {
        self.valid().train().no_grad()
    }

    /// (parameters, buffers) as flat vectors.
    fn snapshot(&self) -> (Vec<f32>, Vec<f32>) {
        let mut p = Vec::new();
        p.extend(values(self.conv.weight.val()));
        p.extend(values(self.conv.bias.as_ref().unwrap().val()));
        p.extend(values(self.bn.gamma.val()));
        p.extend(values(self.bn.beta.val()));
        p.extend(values(self.norm.weight.val()));
        p.extend(values(self.fc.weight.val()));
        p.extend(values(self.fc.bias.as_ref().unwrap().val()));
        let mut b = Vec::new();
        b.extend(values(self.bn.running_mean.value_sync()));
        b.extend(values(self.bn.running_var.value_sync()));
        b.extend(values(self.norm.running_mean.value_sync()));
        b.extend(values(self.norm.running_var.value_sync()));
        b.extend(values(self.norm.num_batches_tracked.value_sync()));
        (p, b)
    }
}

#[test]
fn ema_rejects_bad_momentum_and_mismatched_modules() {
    let device = Device::flex();
    let a = Net::new(&device);
    let b = Net::new(&device);
    for m in [-0.1, 1.5, f64::NAN] {
        assert!(matches!(
            ema_update(b.clone_deep(), &a, m),
            Err(QueueError::Momentum(_))
        ));
    }
    // Same type, other shapes.
    let mut c = Net::new(&device);
    c.fc = LinearConfig::new(4, 6).init(&device);
    let err = ema_update(c, &a, 0.5).unwrap_err();
    assert!(matches!(err, QueueError::ModuleMismatch(_)), "{err}");
    // Missing parameter (no bias).
    let mut d = Net::new(&device);
    d.fc = LinearConfig::new(4, 5).with_bias(false).init(&device);
    let err = ema_update(d, &a, 0.5).unwrap_err();
    assert!(err.to_string().contains("fc.bias"), "{err}");
}

#[test]
fn ema_can_skip_more_paths() {
    let device = Device::flex();
    let src = Net::new(&device);
    let tgt = Net::new(&device);
    let fc_before = values(tgt.fc.weight.val());
    let conv_src = values(src.conv.weight.val());
    let out = ema_update_skipping(
        tgt,
        &src,
        0.0,
        &[
            "running_mean",
            "running_var",
            "num_batches_tracked",
            "fc.weight",
        ],
    )
    .unwrap();
    assert_eq!(values(out.fc.weight.val()), fc_before);
    assert_eq!(values(out.conv.weight.val()), conv_src);
}

#[test]
fn try_ema_update_is_the_same_average_and_hands_the_target_back_on_error() {
    for device in [Device::flex(), Device::flex().autodiff()] {
        let src = Net::new(&device);
        let tgt = Net::new(&device).no_grad();
        let (p_src, _) = src.snapshot();
        let (p_tgt, b_tgt) = tgt.snapshot();
        let m = 0.99f64;
        let (mf, omm) = (m as f32, (1.0 - m) as f32);
        let want: Vec<f32> = p_tgt
            .iter()
            .zip(&p_src)
            .map(|(k, q)| k * mf + q * omm)
            .collect();
        let out = try_ema_update(tgt, &src, m).unwrap_or_else(|e| panic!("{}", e.1));
        let (p_out, b_out) = out.snapshot();
        assert_eq!(p_out, want, "the same f32 arithmetic as the tensor form");
        assert_eq!(b_out, b_tgt, "buffers untouched");
        assert!(!out.conv.weight.val().is_require_grad());
        assert_eq!(out.conv.weight.val().is_autodiff(), device.is_autodiff());

        let failed = try_ema_update(out, &src, 1.5).map(|_| ()).unwrap_err();
        let (back, err) = *failed;
        assert!(matches!(err, QueueError::Momentum(_)));
        assert_eq!(
            back.snapshot(),
            (p_out, b_out),
            "the target comes back unchanged"
        );
    }
}

#[test]
fn ema_keeps_a_trainable_target_trainable() {
    let device = Device::flex().autodiff();
    let src = Net::new(&device);
    let tgt = Net::new(&device);
    let out = ema_update(tgt, &src, 0.9).unwrap();
    assert!(out.conv.weight.val().is_require_grad());
    let out = ema_update(out.no_grad(), &src, 0.9).unwrap();
    assert!(!out.conv.weight.val().is_require_grad());
}
