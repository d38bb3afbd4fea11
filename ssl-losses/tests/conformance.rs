//! Conformance with the PyTorch reference vectors (`SSL_CONFORMANCE_DIR`, else the committed copy
//! in `tests/conformance`). Every shape comes from the manifest. A missing or empty vector
//! directory fails these tests.

use burn::prelude::*;
use ssl_conformance::{Case, ConformanceSet};
use ssl_losses::{
    HardFeatureLossConfig, HardMixing, InfoNceLoss, Kernel, cross_entropy, hard_features,
    mixed_queue, moco_logits, normalize, topk_accuracy,
};
use ssl_queue::MomentumQueue;

fn device() -> Device {
    ssl_conformance::test_device().autodiff()
}

fn tensor<const D: usize>(case: &Case, name: &str, dev: &Device) -> Tensor<D> {
    let shape: [usize; D] = case
        .shape(name)
        .try_into()
        .unwrap_or_else(|_| panic!("{}: `{name}` is not {D}-d", case.name));
    Tensor::from_data(TensorData::new(case.f32(name), shape), dev)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().unwrap()
}

fn scalar(t: Tensor<1>) -> Vec<f32> {
    values(t)
}

#[test]
fn moco_infonce() {
    let set = ConformanceSet::open();
    let case = set.case("moco_infonce");
    let dev = device();
    let t = case.param_f64("T");
    let n = case.param_usize("N");
    assert_eq!(case.shape("q"), vec![n, case.param_usize("C")]);
    let q_raw: Tensor<2> = tensor(&case, "q_raw", &dev);
    let q: Tensor<2> = tensor(&case, "q", &dev);
    let k: Tensor<2> = tensor(&case, "k", &dev);
    let queue: Tensor<2> = tensor(&case, "queue", &dev);

    // The normalization of q_raw gives the stored q.
    let (atol, rtol) = case.tolerance("logits");
    case.assert_close_with(
        "q",
        &values(normalize(q_raw.clone(), 1).unwrap()),
        atol,
        rtol,
    );

    let logits = moco_logits(q.clone(), k.clone(), queue.clone(), t).unwrap();
    case.assert_close("logits", &values(logits));

    let leaf = q.clone().require_grad();
    let out = InfoNceLoss::new(t)
        .forward(leaf.clone(), k.clone(), queue.clone())
        .unwrap();
    case.assert_close("loss", &scalar(out.loss.clone()));
    case.assert_close("acc1", &[out.acc1]);
    case.assert_close("acc5", &[out.acc5]);
    let grads = out.loss.backward();
    case.assert_close("dloss_dq", &values(leaf.grad(&grads).unwrap()));

    let raw = q_raw.require_grad();
    let out = InfoNceLoss::new(t)
        .forward(normalize(raw.clone(), 1).unwrap(), k, queue)
        .unwrap();
    let grads = out.loss.backward();
    case.assert_close("dloss_dq_raw", &values(raw.grad(&grads).unwrap()));
}

fn mixing_of(case: &Case) -> HardMixing {
    let perm = case.i64("perm").into_iter().map(|p| p as usize).collect();
    HardMixing::new(case.f32("lam"), case.f32("mu"), perm).unwrap()
}

fn check_hard_loss(name: &str, kernel: Kernel) {
    let set = ConformanceSet::open();
    let case = set.case(name);
    let dev = device();
    let t = case.param_f64("T");
    let weights = case.param_f64s("weights");
    let scales = case.param_usize("scales");
    assert_eq!(case.shape("queue")[0], scales);
    let q_raw: Tensor<3> = tensor(&case, "q_raw", &dev);
    let q: Tensor<3> = tensor(&case, "q", &dev);
    let k: Tensor<3> = tensor(&case, "k", &dev);
    let queue: Tensor<3> = tensor(&case, "queue", &dev);
    let mixing = mixing_of(&case);
    let stored_weights = case.f32("weights");
    assert_eq!(
        stored_weights,
        weights.iter().map(|&w| w as f32).collect::<Vec<_>>()
    );
    let loss = HardFeatureLossConfig::new()
        .with_temperature(t)
        .with_weights(weights)
        .with_beta(case.param_f64("beta_a"), case.param_f64("beta_b"))
        .with_kernel(kernel)
        .init()
        .unwrap();

    // Intermediate tensors of the reference formulation.
    let (qh, kh) = hard_features(q.clone(), k.clone(), &mixing.lam).unwrap();
    case.assert_close("qh", &values(qh));
    case.assert_close("kh", &values(kh));
    case.assert_close(
        "queue_mixed",
        &values(mixed_queue(queue.clone(), &mixing).unwrap()),
    );
    let logits = loss
        .logits(q.clone(), k.clone(), queue.clone(), Some(&mixing))
        .unwrap();
    assert_eq!(logits.dims().to_vec(), case.shape("logits"));
    case.assert_close("logits", &values(logits));

    // The fused loss: values, gradient w.r.t. q as a leaf, keys.
    let leaf = q.clone().require_grad();
    let out = loss
        .forward(leaf.clone(), k.clone(), queue.clone(), Some(&mixing))
        .unwrap();
    case.assert_close("losses", &values(out.per_scale.clone()));
    case.assert_close("total", &scalar(out.loss.clone()));
    case.assert_close("keys", &values(out.keys.clone()));
    let grads = out.loss.backward();
    case.assert_close("dloss_dq", &values(leaf.grad(&grads).unwrap()));

    // Gradient through the normalization.
    let raw = q_raw.require_grad();
    let out = loss
        .forward(
            normalize(raw.clone(), 2).unwrap(),
            k.clone(),
            queue.clone(),
            Some(&mixing),
        )
        .unwrap();
    let grads = out.loss.backward();
    case.assert_close("dloss_dq_raw", &values(raw.grad(&grads).unwrap()));

    // The keys go into the queue at the pointer.
    let ptr = case.i64("ptr")[0] as usize;
    let mut q_ring = MomentumQueue::from_parts(queue.inner(), ptr).unwrap();
    q_ring.enqueue(out.keys).unwrap();
    case.assert_close("queue_after", &values(q_ring.tensor()));
    case.assert_close("ptr_after", &[q_ring.ptr() as f32]);
    assert_eq!(q_ring.ptr(), case.param_usize("ptr_after"));
}

#[test]
fn mhcl_hard_loss() {
    check_hard_loss("mhcl_hard_loss", Kernel::Auto);
}

#[test]
fn mhcl_hard_loss_wrap() {
    check_hard_loss("mhcl_hard_loss_wrap", Kernel::Auto);
}

#[test]
fn mhcl_hard_loss_tensor_kernel() {
    check_hard_loss("mhcl_hard_loss", Kernel::Tensor);
    check_hard_loss("mhcl_hard_loss_wrap", Kernel::Tensor);
}

#[test]
fn mhcl_hard_loss_materialized_matches() {
    // The straightforward formulation (logits + log-softmax, autodiff) gives the same vectors.
    let set = ConformanceSet::open();
    let case = set.case("mhcl_hard_loss");
    let dev = device();
    let loss = HardFeatureLossConfig::new()
        .with_temperature(case.param_f64("T"))
        .with_weights(case.param_f64s("weights"))
        .init()
        .unwrap();
    let q = tensor::<3>(&case, "q", &dev).require_grad();
    let (total, losses) = loss
        .forward_materialized(
            q.clone(),
            tensor(&case, "k", &dev),
            tensor(&case, "queue", &dev),
            Some(&mixing_of(&case)),
        )
        .unwrap();
    case.assert_close("losses", &values(losses));
    case.assert_close("total", &scalar(total.clone()));
    let grads = total.backward();
    case.assert_close("dloss_dq", &values(q.grad(&grads).unwrap()));
}

#[test]
fn linear_probe_metrics() {
    let set = ConformanceSet::open();
    let case = set.case("linear_probe_metrics");
    let dev = device();
    let logits = tensor::<2>(&case, "logits", &dev).require_grad();
    let targets = Tensor::<1, Int>::from_data(
        TensorData::new(case.i64("targets"), [case.param_usize("N")]),
        &dev,
    );
    let loss = cross_entropy(logits.clone(), targets.clone()).unwrap();
    case.assert_close("loss", &scalar(loss.clone()));
    let acc = topk_accuracy(logits.clone(), targets, &[1, 5]).unwrap();
    case.assert_close("acc1", &[acc[0]]);
    case.assert_close("acc5", &[acc[1]]);
    let grads = loss.backward();
    case.assert_close("dloss_dlogits", &values(logits.grad(&grads).unwrap()));
}
