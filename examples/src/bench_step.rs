//! Times the full MHCL training step on fixed random inputs, as
//! `../shared/reference/bench_step.py` does, and prints one JSON line with the same keys.
//!
//! ```text
//! mhcl_bench_step [ARCH] [BATCH] [SIZE] [K] [ITERS] [--warmup N] [--profile]
//!     [--device SPEC] [--precision f32|bf16]
//! cargo run --release --example mhcl_bench_step -- resnet18 32 64 4096 15
//! ```
//!
//! `ARCH` (default `resnet18`), `BATCH` images per step (32), `SIZE` pixels (64), `K` the queue
//! length (4096), `ITERS` timed steps (15) after `--warmup` untimed ones (3; on a GPU the first
//! steps compile and autotune kernels). The settings are `bench_step.py`'s: width 64,
//! `--moco-dim 128`, `--mlp`, MHCL on, `--moco-m 0.99`, `--moco-t 0.2`, SGD lr 0.03, momentum
//! 0.9, weight decay 1e-4. A step is what `bench_step.py` times: query forward, EMA of the key
//! encoder, key forward, the 8-scale loss, backward, SGD, enqueue; the clock stops after a device
//! synchronization (the loss is not read back, as PyTorch's loop does not read it).
//! `ms_per_step` is the median step; `first_step_s` the first warm-up step (kernel compilation
//! and autotuning on a GPU).
//!
//! `--profile` then runs 5 more steps with a device synchronization after each phase and adds the
//! phase medians as `phases_ms` (the timed steps stay unsynchronized, so `ms_per_step` is the
//! same with and without it).
//!
//! `matmul_isa` names the CPU matrix kernels gemm picked at run time (`ssl_models::matmul_isa`).
//!
//! `--device SPEC` runs on another backend (`cpu` default; `vulkan[:N]` / `cuda[:N]` in builds
//! with those features, as `mhcl --device`), `--precision bf16` with mixed precision
//! (`mhcl::precision`); both are echoed in the JSON (`device`, `precision`).

use std::time::Instant;

use anyhow::{Result, bail};
use burn::prelude::*;
use mhcl::model::{Mhcl, MhclConfig};
use mhcl::optim::{Sgd, SgdConfig};
use mhcl::precision::Precision;
use mhcl::rng::step_rng;
use ssl_models::Arch;

/// Profiled steps after the timed ones with `--profile`.
const PROFILE_STEPS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The parsed command line.
struct Settings {
    arch: Arch,
    batch: usize,
    size: usize,
    k: usize,
    iters: usize,
    warmup: usize,
    profile: bool,
    device_spec: String,
    precision: Precision,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Settings> {
    let mut all: Vec<String> = args.into_iter().collect();
    let device_spec = take_option(&mut all, "--device")?.unwrap_or_else(|| "cpu".into());
    let precision: Precision = take_option(&mut all, "--precision")?
        .as_deref()
        .unwrap_or("f32")
        .parse()?;
    let warmup: usize = match take_option(&mut all, "--warmup")? {
        Some(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("--warmup must be a non-negative integer, got `{v}`"))?,
        None => 3,
    };
    let profile = all.iter().any(|a| a == "--profile");
    if let Some(flag) = all
        .iter()
        .find(|a| a.starts_with("--") && *a != "--profile")
    {
        bail!(
            "unknown option {flag}; usage: [ARCH] [BATCH] [SIZE] [K] [ITERS] [--warmup N] \
             [--profile] [--device SPEC] [--precision f32|bf16]"
        );
    }
    let a: Vec<&String> = all.iter().filter(|a| !a.starts_with("--")).collect();
    let arg = |i: usize, d: &str| a.get(i).map(|s| s.to_string()).unwrap_or(d.to_string());
    let number = |i: usize, d: &str, what: &str| -> Result<usize> {
        let v = arg(i, d);
        v.parse()
            .map_err(|_| anyhow::anyhow!("{what} must be a non-negative integer, got `{v}`"))
    };
    let settings = Settings {
        arch: Arch::from_name(&arg(0, "resnet18"))?,
        batch: number(1, "32", "BATCH")?,
        size: number(2, "64", "SIZE")?,
        k: number(3, "4096", "K")?,
        iters: number(4, "15", "ITERS")?,
        warmup,
        profile,
        device_spec,
        precision,
    };
    if settings.batch == 0 || settings.iters == 0 || !settings.k.is_multiple_of(settings.batch) {
        bail!("BATCH and ITERS must be positive and K a multiple of BATCH");
    }
    Ok(settings)
}

/// Runs the benchmark with `args` (the command line without the program name).
pub fn main(args: impl IntoIterator<Item = String>) -> Result<()> {
    let s = parse(args)?;
    let t_setup = Instant::now();
    let device = match mhcl::device::parse_device(&s.device_spec, None) {
        Ok(d) => d.autodiff(),
        Err(e) => bail!("{e}"),
    };
    device.seed(0);
    let config = MhclConfig::new(s.arch)
        .with_mlp(true)
        .with_queue_len(s.k)
        .with_momentum(0.99)
        .with_temperature(0.2)
        .with_precision(s.precision);
    let (width, dim) = (config.width, config.dim);
    let mut model = Mhcl::new(config, &device)?;
    let mut sgd = SgdConfig::new()
        .with_momentum(0.9)
        .with_weight_decay(1e-4)
        .init()?;
    let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
    let im_q = Tensor::<4>::random([s.batch, 3, s.size, s.size], normal, &device);
    let im_k = Tensor::<4>::random([s.batch, 3, s.size, s.size], normal, &device);
    device.sync()?;
    let setup_s = t_setup.elapsed().as_secs_f64();

    let mut step = 0u64;
    let mut run_step = |model: &mut Mhcl, sgd: &mut Sgd| -> Result<f64> {
        let t = Instant::now();
        let stats = model.train_step(
            im_q.clone(),
            im_k.clone(),
            0.03,
            sgd,
            &mut step_rng(0, step),
            None,
        )?;
        drop(stats);
        device.sync()?;
        step += 1;
        Ok(t.elapsed().as_secs_f64())
    };
    let mut first_step_s = None;
    for _ in 0..s.warmup {
        let secs = run_step(&mut model, &mut sgd)?;
        first_step_s.get_or_insert(secs);
    }
    let mut times = Vec::with_capacity(s.iters);
    for _ in 0..s.iters {
        times.push(run_step(&mut model, &mut sgd)? * 1000.0);
    }
    let mut phases = String::new();
    if s.profile {
        model.set_profiling(true);
        let mut per_phase: Vec<(String, Vec<f64>)> = Vec::new();
        for _ in 0..PROFILE_STEPS {
            run_step(&mut model, &mut sgd)?;
            if let Some(p) = model.last_profile() {
                let ms = p.phases().map(|(n, d)| (n, d.as_secs_f64() * 1000.0));
                per_phase.resize(ms.len(), (String::new(), Vec::new()));
                for ((name, v), (n, m)) in per_phase.iter_mut().zip(ms) {
                    *name = n.to_string();
                    v.push(m);
                }
            }
        }
        let parts: Vec<String> = per_phase
            .into_iter()
            .map(|(name, v)| format!("\"{name}\": {:.1}", median(v)))
            .collect();
        phases = format!(", \"phases_ms\": {{{}}}", parts.join(", "));
    }
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let med = median(times);
    println!(
        "{{\"ms_per_step\": {med:.2}, \"images_per_s\": {:.2}, \"ms_per_step_min\": {min:.2}, \
         \"arch\": \"{}\", \"width\": {width}, \"batch\": {}, \"size\": {}, \
         \"moco_k\": {}, \"moco_dim\": {dim}, \"mlp\": true, \"mhcl\": true, \"device\": \"{}\", \
         \"precision\": \"{}\", \"threads\": {}, \"matmul_isa\": \"{}\", \"iters\": {}, \"warmup\": {}, \
         \"setup_s\": {setup_s:.2}, \"first_step_s\": {:.2}, \"backend\": \"{}\"{phases}}}",
        s.batch as f64 * 1000.0 / med,
        s.arch,
        s.batch,
        s.size,
        s.k,
        s.device_spec,
        s.precision,
        rayon_threads(),
        ssl_models::matmul_isa(),
        s.iters,
        s.warmup,
        first_step_s.unwrap_or(0.0),
        backend_name(&s.device_spec),
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
