//! Conformance with the PyTorch reference vectors (`SSL_CONFORMANCE_DIR`, else the committed copy
//! in `tests/conformance`). Every shape comes from the manifest. A missing or empty vector
//! directory fails these tests.

use burn::module::{Module, Param, ParamId, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use ssl_conformance::{Case, ConformanceSet};
use ssl_queue::{MomentumQueue, QueueError, ema_update};

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

/// Replays the enqueue of a loss case: the stored keys written into the stored queue at `ptr`.
fn check_enqueue(name: &str) {
    let set = ConformanceSet::open();
    let case = set.case(name);
    let dev = ssl_conformance::test_device();
    let queue: Tensor<3> = tensor(&case, "queue", &dev);
    let keys: Tensor<3> = tensor(&case, "keys", &dev);
    let ptr = case.i64("ptr")[0] as usize;
    let mut q = MomentumQueue::from_parts(queue, ptr).unwrap();
    assert_eq!(q.scales(), case.param_usize("scales"));
    assert_eq!(q.len(), case.param_usize("K"));
    q.enqueue(keys).unwrap();
    case.assert_close("queue_after", &values(q.tensor()));
    case.assert_close("ptr_after", &[q.ptr() as f32]);
    assert_eq!(q.ptr(), case.param_usize("ptr_after"));
}

#[test]
fn mhcl_hard_loss_enqueue() {
    check_enqueue("mhcl_hard_loss");
}

#[test]
fn mhcl_hard_loss_wrap_enqueue() {
    check_enqueue("mhcl_hard_loss_wrap");
}

#[test]
fn enqueue_needs_a_multiple_of_the_batch() {
    let set = ConformanceSet::open();
    let case = set.case("mhcl_hard_loss");
    let dev = ssl_conformance::test_device();
    let queue: Tensor<3> = tensor(&case, "queue", &dev);
    let [s, c, k] = queue.dims();
    let mut q = MomentumQueue::from_parts(queue, 0).unwrap();
    let err = q.enqueue(Tensor::zeros([k - 1, s, c], &dev)).unwrap_err();
    assert!(matches!(err, QueueError::NotMultiple { .. }), "{err}");
    assert_eq!(q.ptr(), 0);
}

/// BatchNorm-like module with PyTorch names: parameters `weight`, `bias`; buffers
/// `running_mean`, `running_var` (running states) and `num_batches_tracked` (integer).
#[derive(Module, Debug)]
struct Bn {
    weight: Param<Tensor<1>>,
    bias: Param<Tensor<1>>,
    running_mean: RunningState<Tensor<1>>,
    running_var: RunningState<Tensor<1>>,
    num_batches_tracked: Param<Tensor<1, Int>>,
}

/// The case's module: `conv` (no bias), `bn`, `fc`.
#[derive(Module, Debug)]
struct Tiny {
    conv: Conv2d,
    bn: Bn,
    fc: Linear,
}

fn tiny(case: &Case, prefix: &str, dev: &Device) -> Tiny {
    let name = |n: &str| format!("{prefix}.{n}");
    let conv_shape = case.shape(&name("conv.weight"));
    let fc_shape = case.shape(&name("fc.weight")); // PyTorch [out, in]
    let mut conv = Conv2dConfig::new(
        [conv_shape[1], conv_shape[0]],
        [conv_shape[2], conv_shape[3]],
    )
    .with_bias(false)
    .init(dev);
    conv.weight = Param::from_tensor(tensor(case, &name("conv.weight"), dev));
    let mut fc = LinearConfig::new(fc_shape[1], fc_shape[0]).init(dev);
    // burn stores Linear weights as [in, out].
    fc.weight = Param::from_tensor(tensor::<2>(case, &name("fc.weight"), dev).transpose());
    fc.bias = Some(Param::from_tensor(tensor(case, &name("fc.bias"), dev)));
    let nbt = case.i64(&name("bn.num_batches_tracked"));
    let bn = Bn {
        weight: Param::from_tensor(tensor(case, &name("bn.weight"), dev)),
        bias: Param::from_tensor(tensor(case, &name("bn.bias"), dev)),
        running_mean: RunningState::new(tensor(case, &name("bn.running_mean"), dev)),
        running_var: RunningState::new(tensor(case, &name("bn.running_var"), dev)),
        num_batches_tracked: Param::initialized(
            ParamId::new(),
            Tensor::from_data(TensorData::new(nbt.clone(), [nbt.len()]), dev),
        ),
    };
    Tiny { conv, bn, fc }
}

#[test]
fn momentum_update() {
    let set = ConformanceSet::open();
    let case = set.case("momentum_update");
    let dev = ssl_conformance::test_device().autodiff();
    let m = case.param_f64("m");
    let q = tiny(&case, "q", &dev);
    let k = tiny(&case, "k", &dev).no_grad();
    let k = ema_update(k, &q, m).unwrap();

    case.assert_close("k_after.conv.weight", &values(k.conv.weight.val()));
    case.assert_close("k_after.bn.weight", &values(k.bn.weight.val()));
    case.assert_close("k_after.bn.bias", &values(k.bn.bias.val()));
    case.assert_close("k_after.fc.weight", &values(k.fc.weight.val().transpose()));
    case.assert_close(
        "k_after.fc.bias",
        &values(k.fc.bias.as_ref().unwrap().val()),
    );
    // Buffers: exactly the key encoder's own, whatever the query encoder holds.
    case.assert_close(
        "k_after.bn.running_mean",
        &values(k.bn.running_mean.value()),
    );
    case.assert_close("k_after.bn.running_var", &values(k.bn.running_var.value()));
    let nbt: Vec<i64> =
        k.bn.num_batches_tracked
            .val()
            .try_into_vec_as::<i64>()
            .unwrap();
    assert_eq!(nbt, case.i64("k_after.bn.num_batches_tracked"));
    for p in case.param_strings("parameters") {
        assert!(case.names().contains(&format!("k_after.{p}")));
    }
    // The key encoder stays without gradients.
    assert!(!k.conv.weight.val().is_require_grad());
}
