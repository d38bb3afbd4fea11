//! Times the full MHCL training step on fixed random inputs, as
//! `../shared/reference/bench_step.py` does, and prints one JSON line with the same keys.
//!
//! ```text
//! cargo run --release --example mhcl_bench_step -- [ARCH] [BATCH] [SIZE] [K] [ITERS] [--profile]
//! cargo run --release --example mhcl_bench_step -- resnet18 32 64 4096 15
//! ```
//!
//! `ARCH` (default `resnet18`), `BATCH` images per step (32), `SIZE` pixels (64), `K` the queue
//! length (4096), `ITERS` timed steps (15) after 3 warm-up steps. The settings are
//! `bench_step.py`'s: width 64, `--moco-dim 128`, `--mlp`, MHCL on, `--moco-m 0.99`,
//! `--moco-t 0.2`, SGD lr 0.03, momentum 0.9, weight decay 1e-4. A step is what
//! `bench_step.py` times: query forward, EMA of the key encoder, key forward, the 8-scale loss,
//! backward, SGD, enqueue; the clock stops after a device synchronization (the loss is not read
//! back, as PyTorch's loop does not read it). `ms_per_step` is the median step.
//!
//! `--profile` also times each phase of the step (with a device synchronization after each) and
//! adds their medians as `phases_ms`.
//!
//! `--device SPEC` runs on another backend (`cpu` default; `vulkan[:N]` / `cuda[:N]` in builds
//! with those features, as `mhcl --device`), `--precision bf16` with mixed precision
//! (`mhcl::precision`); both are echoed in the JSON (`device`, `precision`).

use std::time::Instant;

use anyhow::{Result, bail};
use burn::prelude::*;
use mhcl::model::{Mhcl, MhclConfig};
use mhcl::optim::SgdConfig;
use mhcl::train::step_rng;
use ssl_models::Arch;

const WARMUP: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let mut all: Vec<String> = std::env::args().skip(1).collect();
    let device_spec = take_option(&mut all, "--device")?.unwrap_or_else(|| "cpu".into());
    let precision: mhcl::precision::Precision = take_option(&mut all, "--precision")?
        .as_deref()
        .unwrap_or("f32")
        .parse()?;
    let profile = all.iter().any(|a| a == "--profile");
    let a: Vec<&String> = all.iter().filter(|a| !a.starts_with("--")).collect();
    if let Some(flag) = all
        .iter()
        .find(|a| a.starts_with("--") && *a != "--profile")
    {
        bail!(
            "unknown option {flag}; usage: [ARCH] [BATCH] [SIZE] [K] [ITERS] [--profile] \
             [--device SPEC] [--precision f32|bf16]"
        );
    }
    let arg = |i: usize, d: &str| a.get(i).map(|s| s.to_string()).unwrap_or(d.to_string());
    let arch = Arch::from_name(&arg(0, "resnet18"))?;
    let batch: usize = arg(1, "32").parse()?;
    let size: usize = arg(2, "64").parse()?;
    let k: usize = arg(3, "4096").parse()?;
    let iters: usize = arg(4, "15").parse()?;
    if batch == 0 || iters == 0 || !k.is_multiple_of(batch) {
        bail!("BATCH and ITERS must be positive and K a multiple of BATCH");
    }

    let device = match mhcl::device::parse_device(&device_spec, None) {
        Ok(d) => d.autodiff(),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    device.seed(0);
    let config = MhclConfig::new(arch)
        .with_mlp(true)
        .with_queue_len(k)
        .with_momentum(0.99)
        .with_temperature(0.2)
        .with_precision(precision);
    let (width, dim) = (config.width, config.dim);
    let mut model = Mhcl::new(config, &device)?;
    model.set_profiling(profile);
    let mut sgd = SgdConfig::new()
        .with_momentum(0.9)
        .with_weight_decay(1e-4)
        .init()?;
    let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
    let im_q = Tensor::<4>::random([batch, 3, size, size], normal, &device);
    let im_k = Tensor::<4>::random([batch, 3, size, size], normal, &device);
    let mut times = Vec::with_capacity(iters);
    let mut phases: Vec<Vec<f64>> = Vec::new();
    for step in 0..WARMUP + iters {
        let t = Instant::now();
        let stats = model.train_step(
            im_q.clone(),
            im_k.clone(),
            0.03,
            &mut sgd,
            &mut step_rng(0, step as u64),
            None,
        )?;
        drop(stats);
        device.sync()?;
        if step >= WARMUP {
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            if let Some(p) = model.last_profile() {
                let ms = p.phases().map(|(_, d)| d.as_secs_f64() * 1000.0);
                phases.resize(ms.len(), Vec::new());
                for (v, m) in phases.iter_mut().zip(ms) {
                    v.push(m);
                }
            }
        }
    }
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let med = median(times);
    let mut extra = String::new();
    if let Some(p) = model.last_profile() {
        let parts: Vec<String> = p
            .phases()
            .iter()
            .zip(phases)
            .map(|((name, _), v)| format!("\"{name}\": {:.1}", median(v)))
            .collect();
        extra = format!(", \"phases_ms\": {{{}}}", parts.join(", "));
    }
    println!(
        "{{\"ms_per_step\": {med:.2}, \"images_per_s\": {:.2}, \"ms_per_step_min\": {min:.2}, \
         \"arch\": \"{arch}\", \"width\": {width}, \"batch\": {batch}, \"size\": {size}, \
         \"moco_k\": {k}, \"moco_dim\": {dim}, \"mlp\": true, \"mhcl\": true, \"device\": \"{device_spec}\", \
         \"precision\": \"{precision}\", \
         \"threads\": {}, \"iters\": {iters}, \"warmup\": {WARMUP}, \"backend\": \"{}\"{extra}}}",
        batch as f64 * 1000.0 / med,
        rayon_threads(),
        backend_name(&device_spec),
    );
    Ok(())
}

/// Threads of the global rayon pool that the Flex backend runs on.
fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Removes `NAME VALUE` (or `NAME=VALUE`) from `args` and returns the value.
fn take_option(args: &mut Vec<String>, name: &str) -> Result<Option<String>> {
    let prefix = format!("{name}=");
    if let Some(i) = args.iter().position(|a| a.starts_with(&prefix)) {
        return Ok(Some(args.remove(i)[prefix.len()..].to_string()));
    }
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) if i + 1 < args.len() => {
            let v = args.remove(i + 1);
            args.remove(i);
            Ok(Some(v))
        }
        Some(_) => bail!("{name} needs a value"),
    }
}

/// The burn backend behind a `--device` spec.
fn backend_name(spec: &str) -> &'static str {
    match spec.split(':').next().unwrap_or(spec) {
        "vulkan" => "burn-wgpu-vulkan",
        "cuda" => "burn-cuda",
        _ => "burn-flex",
    }
}
