//! Decode + MoCo two-crop augmentation throughput of the parallel loader, the counterpart of
//! `reference/bench_augment.py` (same protocol: batch 32, the first batch is a warmup, the next
//! `--images` images are timed, the folder is cycled in a seeded random order when it has
//! fewer).
//!
//! ```text
//! cargo run --release -p ssl-augment --example throughput -- --data DIR --size 224 --workers 2 --images 2000
//! ```
//! Prints one JSON line with `images_per_s` (source images per second; each gives 2 crops).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use ssl_augment::{
    Dataset, ImageFolder, ImageFolderOptions, Loader, LoaderConfig, Subset, TwoCrops,
    moco_v1_transform, moco_v2_transform,
};

struct Args {
    data: String,
    size: usize,
    workers: usize,
    images: usize,
    batch_size: usize,
    moco_v1: bool,
    seed: u64,
}

const USAGE: &str = "usage: throughput --data DIR [--size 224] [--workers 2] [--images 2000] [--batch-size 32] [--moco-v1] [--seed 0]";

fn parse() -> Result<Args, String> {
    let mut a = Args {
        data: String::new(),
        size: 224,
        workers: 2,
        images: 2000,
        batch_size: 32,
        moco_v1: false,
        seed: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--moco-v1" {
            a.moco_v1 = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--data" => a.data = value,
            "--size" => a.size = num(&value)?,
            "--workers" => a.workers = num(&value)?,
            "--images" => a.images = num(&value)?,
            "--batch-size" => a.batch_size = num(&value)?,
            "--seed" => a.seed = num(&value)? as u64,
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if a.data.is_empty() {
        return Err(format!("--data is required\n{USAGE}"));
    }
    Ok(a)
}

fn run(a: &Args) -> Result<String, Box<dyn std::error::Error>> {
    let folder = Arc::new(ImageFolder::new(&a.data, &ImageFolderOptions::default())?);
    let n_dataset = folder.len();
    let total = a.images + a.batch_size; // the first batch is a warmup
    let mut order: Vec<usize> = (0..n_dataset).collect();
    order.shuffle(&mut StdRng::seed_from_u64(a.seed));
    let idx: Vec<usize> = (0..total).map(|i| order[i % n_dataset]).collect();
    let subset: Arc<dyn Dataset> = Arc::new(Subset::new(folder, idx)?);
    let base = if a.moco_v1 {
        moco_v1_transform(a.size)?
    } else {
        moco_v2_transform(a.size)?
    };
    let config = LoaderConfig::default()
        .with_batch_size(a.batch_size)
        .with_workers(a.workers)
        .with_shuffle(false)
        .with_seed(a.seed);
    let loader = Loader::new(subset, Arc::new(TwoCrops::new(base)), config)?;
    let mut batches = loader.epoch(0);
    let first = batches.next().ok_or("no batch")??;
    let mut checksum = f64::from(first.views[0][0]);
    let t0 = Instant::now();
    let mut n = 0usize;
    for b in batches {
        let b = b?;
        n += b.n;
        checksum += f64::from(b.views[1][b.views[1].len() - 1]);
    }
    let dt = t0.elapsed().as_secs_f64();
    Ok(format!(
        "{{\"images_per_s\": {:.2}, \"crops_per_s\": {:.2}, \"images\": {n}, \"seconds\": {dt:.3}, \"size\": {}, \"workers\": {}, \"batch_size\": {}, \"augmentation\": \"{}\", \"dataset_images\": {n_dataset}, \"checksum\": {checksum:.4}}}",
        n as f64 / dt,
        2.0 * n as f64 / dt,
        a.size,
        a.workers,
        a.batch_size,
        if a.moco_v1 {
            "moco_v1"
        } else {
            "moco_v2_aug_plus"
        },
    ))
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
