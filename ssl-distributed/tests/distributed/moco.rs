//! MoCo primitives on burn tensors over LocalGroup: gather, shuffle-BN permutation, gradients.

use std::time::Duration;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::prelude::*;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use ssl_distributed::{
    GradientAverager, LocalGroup, ProcessGroup, ReduceOp, all_reduce_tensor, average_gradients,
    batch_shuffle, batch_unshuffle, broadcast_tensor, concat_all_gather,
};

use crate::kind;
use crate::local::on_ranks;

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn concat_all_gather_has_no_gradient_and_keeps_rank_order() {
    let res = on_ranks(3, Duration::from_secs(20), |g| {
        let device = Device::flex().autodiff();
        let x = Tensor::<3>::full([2, 2, 2], g.rank() as f32, &device).require_grad();
        let all = concat_all_gather(&g, x).unwrap();
        (all.dims(), all.is_require_grad(), values(all))
    });
    for (dims, grad, v) in res {
        assert_eq!(dims, [6, 2, 2]);
        assert!(!grad);
        let want: Vec<f32> = (0..3).flat_map(|r| [r as f32; 8]).collect();
        assert_eq!(v, want);
    }
}

#[test]
fn concat_all_gather_rejects_different_shapes_with_equal_sizes() {
    // [2, 6] vs [3, 4]: same number of values, different shapes
    let res = on_ranks(2, Duration::from_secs(20), |g| {
        let device = Device::flex();
        let shape = if g.rank() == 0 { [2, 6] } else { [3, 4] };
        let e = concat_all_gather(&g, Tensor::<2>::zeros(shape, &device)).unwrap_err();
        let e2 = concat_all_gather(&g, Tensor::<2>::zeros([g.rank() + 1, 3], &device)).unwrap_err();
        let e3 = broadcast_tensor(&g, Tensor::<2>::zeros(shape, &device), 0).unwrap_err();
        (kind(&e), kind(&e2), kind(&e3), e.to_string())
    });
    for (a, b, c, msg) in res {
        assert_eq!((a, b, c), ("SizeMismatch", "SizeMismatch", "SizeMismatch"));
        assert!(msg.contains("[3, 4]") && msg.contains("[2, 6]"), "{msg}");
    }
}

#[test]
fn tensor_reduce_and_broadcast() {
    let res = on_ranks(2, Duration::from_secs(20), |g| {
        let device = Device::flex();
        let x = Tensor::<2>::full([2, 2], g.rank() as f32 + 1.0, &device);
        let m = all_reduce_tensor(&g, x.clone(), ReduceOp::Mean).unwrap();
        let b = broadcast_tensor(&g, x, 1).unwrap();
        (values(m), values(b))
    });
    for (m, b) in res {
        assert_eq!(m, vec![1.5; 4]);
        assert_eq!(b, vec![2.0; 4]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// batch_unshuffle(batch_shuffle(x)) == x on every rank, the shuffled pieces of all ranks
    /// together are the gathered batch permuted by idx_shuffle, and all ranks agree on it.
    #[test]
    fn shuffle_unshuffle_round_trip(world in 1usize..=4, batch in 1usize..=5, dim in 1usize..=3,
                                    seed in any::<u64>()) {
        let res = on_ranks(world, Duration::from_secs(20), |g| {
            let device = Device::flex();
            let rows: Vec<f32> = (0..batch * dim)
                .map(|i| (g.rank() * 1000 + i) as f32)
                .collect();
            let x = Tensor::<2>::from_data(TensorData::new(rows.clone(), [batch, dim]), &device);
            // only rank 0's generator is used
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(g.rank() as u64));
            let (shuffled, perm) = batch_shuffle(&g, x, &mut rng).unwrap();
            let local = values(shuffled.clone());
            let back = values(batch_unshuffle(&g, shuffled, &perm).unwrap());
            (rows, local, back, perm.shuffle().to_vec())
        });
        let gathered: Vec<f32> = res.iter().flat_map(|r| r.0.clone()).collect();
        let idx = &res[0].3;
        let mut sorted = idx.clone();
        sorted.sort_unstable();
        prop_assert_eq!(sorted, (0..world * batch).collect::<Vec<_>>());
        let shuffled_all: Vec<f32> = res.iter().flat_map(|r| r.1.clone()).collect();
        let want: Vec<f32> = idx
            .iter()
            .flat_map(|&i| gathered[i * dim..(i + 1) * dim].to_vec())
            .collect();
        prop_assert_eq!(shuffled_all, want);
        for (rows, _, back, p) in &res {
            prop_assert_eq!(back, rows);
            prop_assert_eq!(p, idx);
        }
    }
}

#[test]
fn batch_unshuffle_checks_the_batch_size() {
    let g = LocalGroup::single();
    let device = Device::flex();
    let mut rng = StdRng::seed_from_u64(0);
    let (_, perm) = batch_shuffle(&g, Tensor::<2>::zeros([4, 2], &device), &mut rng).unwrap();
    let e = batch_unshuffle(&g, Tensor::<2>::zeros([3, 2], &device), &perm).unwrap_err();
    assert_eq!(kind(&e), "SizeMismatch");
}

fn linear(device: &Device) -> Linear {
    let mut l = LinearConfig::new(4, 3).init(device);
    let w: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).sin()).collect();
    l.weight =
        burn::module::Param::from_tensor(Tensor::from_data(TensorData::new(w, [4, 3]), device));
    l.bias = Some(burn::module::Param::from_tensor(Tensor::from_data(
        TensorData::new(vec![0.1f32, -0.2, 0.3], [3]),
        device,
    )));
    l
}

fn batch(rows: std::ops::Range<usize>, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let n = rows.len();
    let x: Vec<f32> = rows
        .clone()
        .flat_map(|r| (0..4).map(move |j| ((r * 4 + j) as f32 * 0.91).cos()))
        .collect();
    let y: Vec<f32> = rows
        .flat_map(|r| (0..3).map(move |j| ((r * 3 + j) as f32 * 0.53).sin()))
        .collect();
    (
        Tensor::from_data(TensorData::new(x, [n, 4]), device),
        Tensor::from_data(TensorData::new(y, [n, 3]), device),
    )
}

/// Mean squared error gradients of a Linear model on rows `rows`, averaged over the group.
fn grads_on(
    group: &dyn ProcessGroup,
    rows: std::ops::Range<usize>,
    averager: GradientAverager,
) -> Vec<f32> {
    let device = Device::flex().autodiff();
    let model = linear(&device);
    let (x, y) = batch(rows, &device);
    let loss = (model.forward(x) - y).powf_scalar(2.0).mean();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let grads = averager.average(group, &model, grads).unwrap();
    let gw: Tensor<2> = grads.get(model.weight.id).unwrap();
    let gb: Tensor<1> = grads.get(model.bias.as_ref().unwrap().id).unwrap();
    let mut v = values(gw);
    v.extend(values(gb));
    v
}

#[test]
fn averaged_gradients_equal_the_full_batch_gradients() {
    // 2 ranks x 3 different rows == 1 rank x 6 rows (the loss is a mean over the batch)
    let single = grads_on(&LocalGroup::single(), 0..6, GradientAverager::new());
    for cap in [25 * 1024 * 1024, 4, 16] {
        let averager = GradientAverager::new().with_bucket_cap_bytes(cap);
        let res = on_ranks(2, Duration::from_secs(20), |g| {
            grads_on(&g, 3 * g.rank()..3 * g.rank() + 3, averager)
        });
        assert_eq!(res[0], res[1], "ranks disagree (cap {cap})");
        for (a, b) in res[0].iter().zip(&single) {
            assert!((a - b).abs() < 1e-5, "cap {cap}: {a} vs {b}");
        }
    }
}

#[test]
fn average_gradients_rejects_different_parameter_sets() {
    let res = on_ranks(2, Duration::from_secs(20), |g| {
        let device = Device::flex().autodiff();
        let model = linear(&device);
        let (x, y) = batch(0..2, &device);
        let loss = (model.forward(x) - y).powf_scalar(2.0).mean();
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        if g.rank() == 1 {
            let _: Option<Tensor<1>> = grads.remove(model.bias.as_ref().unwrap().id);
        }
        kind(&average_gradients(&g, &model, grads).unwrap_err())
    });
    assert_eq!(res, vec!["SizeMismatch"; 2]);
}

#[test]
fn module_visit_order_is_what_average_gradients_relies_on() {
    // two visits of the same module list the same parameters in the same order
    struct Ids(Vec<burn::module::ParamId>);
    impl burn::module::ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            self.0.push(p.id);
        }
    }
    let model = linear(&Device::flex());
    let (mut a, mut b) = (Ids(vec![]), Ids(vec![]));
    model.visit(&mut a);
    model.visit(&mut b);
    assert_eq!(a.0, b.0);
    assert_eq!(a.0.len(), 2);
}
