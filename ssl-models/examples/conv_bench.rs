//! Times one convolution forward + backward (both gradients) on the Flex device through
//! `ssl_models::kernels::conv::conv2d` and through burn's `conv2d`, for comparing kernels.
//!
//! ```text
//! cargo run --release -p ssl-models --example conv_bench -- N C O H K STRIDE PAD [ITERS [BURN]]
//! cargo run --release -p ssl-models --example conv_bench -- 32 64 64 16 3 1 1 20
//! ```
//!
//! `BURN` 0 leaves burn's convolution out (for profiling ours alone).

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::Distribution;
use ssl_models::kernels::conv::{ConvGeometry, conv2d};

fn time(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_secs_f64() * 1e3 / iters as f64
}

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| {
            s.parse()
                .expect("numbers: N C O H K STRIDE PAD [ITERS [BURN]]")
        })
        .collect();
    let [n, c, o, h, k, stride, pad] = a[..7] else {
        panic!("usage: N C O H K STRIDE PAD [ITERS]")
    };
    let iters = a.get(7).copied().unwrap_or(10);
    let with_burn = a.get(8).copied().unwrap_or(1) != 0;
    let device = Device::flex().autodiff();
    let x = Tensor::<4>::random([n, c, h, h], Distribution::Normal(0.0, 1.0), &device);
    let w = Tensor::<4>::random([o, c, k, k], Distribution::Normal(0.0, 0.1), &device);
    let g = ConvGeometry {
        stride: [stride, stride],
        padding: [pad, pad],
    };
    let options = burn::tensor::ops::ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1);
    let run = |ours: bool| {
        let (x, w) = (x.clone().require_grad(), w.clone().require_grad());
        let y = if ours {
            conv2d(x.clone(), w.clone(), g)
        } else {
            burn::tensor::module::conv2d(x.clone(), w.clone(), None, options.clone())
        };
        let grads = y.sum().backward();
        let _ = (x.grad(&grads), w.grad(&grads));
    };
    let ho = (h + 2 * pad - k) / stride + 1;
    let gflop = 3.0 * 2.0 * (n * o * ho * ho * c * k * k) as f64 / 1e9;
    for (name, ours) in [("ours", true), ("burn", false)] {
        if !ours && !with_burn {
            continue;
        }
        let ms = time(iters, || run(ours));
        println!(
            "{name}: {ms:.2} ms forward + backward ({:.1} GFLOP/s)",
            gflop / ms * 1e3
        );
    }
    let forward = time(iters, || {
        let _ = conv2d(x.clone().inner(), w.clone().inner(), g);
    });
    println!(
        "ours: {forward:.2} ms forward alone ({:.1} GFLOP/s)",
        gflop / 3.0 / forward * 1e3
    );
}
