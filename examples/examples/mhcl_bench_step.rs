//! Times the full MHCL training step (both encoders, EMA, loss, backward, SGD, enqueue) on fixed
//! random inputs, like `../shared/reference/bench_step.py`, and prints one JSON line.
//!
//! ```text
//! cargo run --release --example mhcl_bench_step -- [ARCH] [BATCH] [SIZE] [K] [ITERS]
//! cargo run --release --example mhcl_bench_step -- resnet18 32 64 4096 15
//! ```

use std::time::Instant;

use anyhow::Result;
use burn::prelude::*;
use mhcl::model::{Mhcl, MhclConfig};
use mhcl::optim::SgdConfig;
use mhcl::train::step_rng;
use ssl_models::Arch;

fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| a.get(i).cloned().unwrap_or_else(|| d.to_string());
    let arch = Arch::from_name(&arg(0, "resnet18"))?;
    let batch: usize = arg(1, "32").parse()?;
    let size: usize = arg(2, "64").parse()?;
    let k: usize = arg(3, "4096").parse()?;
    let iters: usize = arg(4, "15").parse()?;
    let warmup = 3;

    let device = Device::flex().autodiff();
    device.seed(0);
    let config = MhclConfig::new(arch)
        .with_mlp(true)
        .with_queue_len(k)
        .with_temperature(0.2);
    let mut model = Mhcl::new(config, &device)?;
    let mut sgd = SgdConfig::new()
        .with_momentum(0.9)
        .with_weight_decay(1e-4)
        .init()?;
    let im_q = Tensor::<4>::random(
        [batch, 3, size, size],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let im_k = Tensor::<4>::random(
        [batch, 3, size, size],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let mut times = Vec::new();
    for step in 0..warmup + iters {
        let t = Instant::now();
        let stats = model.train_step(
            im_q.clone(),
            im_k.clone(),
            0.03,
            &mut sgd,
            &mut step_rng(0, step as u64),
            None,
        )?;
        let _ = stats.loss.into_scalar::<f32>();
        if step >= warmup {
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{{\"arch\": \"{arch}\", \"batch\": {batch}, \"size\": {size}, \"moco_k\": {k}, \"iters\": {iters}, \"ms_per_step\": {median:.1}, \"min_ms\": {:.1}, \"images_per_s\": {:.1}}}",
        times[0],
        batch as f64 * 1000.0 / median
    );
    Ok(())
}
