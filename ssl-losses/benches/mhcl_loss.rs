//! MHCL loss forward + backward at the paper's sizes (N = 128, C = 128, K = 65536, 8 scales) and
//! plain MoCo InfoNCE at the same N, C, K, on the default CPU device (Flex + autodiff).
//!
//! `cargo bench -p ssl-losses --bench mhcl_loss`; compare with
//! `python3 ../shared/reference/bench_loss.py --threads 2` (see README.md).

use burn::prelude::*;
use burn::tensor::Distribution;
use criterion::{Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::StdRng;
use ssl_losses::{HardFeatureLossConfig, HardMixing, InfoNceLoss, normalize};
use std::time::Duration;

const N: usize = 128;
const C: usize = 128;
const K: usize = 65536;
const T: f64 = 0.2;

fn unit<const D: usize>(shape: [usize; D], dim: usize, device: &Device) -> Tensor<D> {
    normalize(
        Tensor::<D>::random(shape, Distribution::Normal(0.0, 1.0), device),
        dim,
    )
    .expect("valid dim")
}

fn bench(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    device.seed(0);
    let mut group = c.benchmark_group("loss_fwd_bwd");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(3))
        .measurement_time(Duration::from_secs(15));

    // MHCL: q, k (N, 4, C), queue (8, C, K).
    let q = unit([N, 4, C], 2, &device).detach().require_grad();
    let k = unit([N, 4, C], 2, &device).detach();
    let queue = unit([8, C, K], 1, &device).detach();
    let loss = HardFeatureLossConfig::new()
        .with_temperature(T)
        .init()
        .expect("valid config");
    let mixing = HardMixing::draw(&mut StdRng::seed_from_u64(0), 4, K, 1.0, 1.0).expect("draw");
    group.bench_function("mhcl_8_scales_n128_c128_k65536", |b| {
        b.iter(|| {
            let out = loss
                .forward(q.clone(), k.clone(), queue.clone(), Some(&mixing))
                .expect("forward");
            let grads = out.loss.backward();
            q.grad(&grads).expect("gradient").into_data()
        })
    });

    // Plain MoCo: q, k (N, C), queue (C, K).
    let q1 = unit([N, C], 1, &device).detach().require_grad();
    let k1 = unit([N, C], 1, &device).detach();
    let queue1 = unit([C, K], 0, &device).detach();
    let moco = InfoNceLoss::new(T);
    group.bench_function("moco_1_scale_n128_c128_k65536", |b| {
        b.iter(|| {
            let out = moco
                .forward(q1.clone(), k1.clone(), queue1.clone())
                .expect("forward");
            let grads = out.loss.backward();
            q1.grad(&grads).expect("gradient").into_data()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
