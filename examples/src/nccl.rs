//! One-process NCCL check: `all_reduce` (sum, mean, max, min), `all_gather` and `broadcast`
//! through [`NcclGroup`] on one GPU (world size 1, TCP rendezvous on localhost), compared
//! element by element with the same collectives of a one-rank [`LocalGroup`] on the CPU. Also
//! times a 64 MiB all-reduce (a round trip host -> GPU -> NCCL -> host). Prints one line per
//! collective; exit status 1 on a mismatch, 2 when NCCL or the GPU cannot be opened.
//!
//! ```text
//! gpu_check nccl [GPU] [LEN]
//! ```
//!
//! cudarc loads `libcuda.so.1` and `libnccl.so` at run time: with NCCL from the
//! `nvidia-nccl-cu*` wheel (which ships only `libnccl.so.2`), put a folder holding a
//! `libnccl.so -> .../libnccl.so.2` link on `LD_LIBRARY_PATH` (scripts/gpu-check.sh does).

use std::net::TcpListener;
use std::time::{Duration, Instant};

use ssl_distributed::{LocalGroup, NcclGroup, ProcessGroup, ReduceOp, RendezvousConfig};

fn compare(what: &str, cpu: &[f32], gpu: &[f32]) -> bool {
    let worst = cpu
        .iter()
        .zip(gpu)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let ok = cpu.len() == gpu.len() && worst == 0.0;
    println!(
        "{} nccl {what:<18} {} values, max |nccl - cpu| = {worst:e}",
        if ok { "PASS" } else { "FAIL" },
        gpu.len()
    );
    ok
}

/// Formats a collective's error with what was being done.
fn err(what: &'static str) -> impl Fn(ssl_distributed::DistributedError) -> String {
    move |e| format!("{what}: {e}")
}

fn parse_index(arg: Option<String>, default: usize, what: &str) -> Result<usize, String> {
    match arg {
        None => Ok(default),
        Some(a) => a.parse().map_err(|_| {
            format!("{what} must be a non-negative integer, got `{a}` (usage: nccl [GPU] [LEN])")
        }),
    }
}

/// Runs the check with `args` (`[GPU] [LEN]`); returns the exit status.
pub fn main(args: impl IntoIterator<Item = String>) -> i32 {
    let mut args = args.into_iter();
    let parsed = parse_index(args.next(), 0, "GPU")
        .and_then(|gpu| Ok((gpu, parse_index(args.next(), 1 << 20, "LEN")?)));
    let (gpu, len) = match parsed {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let nccl = match connect(gpu) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: NCCL group on GPU {gpu}: {e}");
            return 2;
        }
    };
    match compare_collectives(&nccl, len) {
        Ok(true) => {
            println!("nccl check passed");
            0
        }
        Ok(false) => 1,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// A one-rank NCCL group on GPU `gpu`, through a TCP rendezvous on a free local port.
fn connect(gpu: usize) -> Result<NcclGroup, String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free local port: {e}"))?;
    let config = RendezvousConfig::new(format!("tcp://127.0.0.1:{port}"))
        .with_rank(0)
        .with_world_size(1)
        .with_timeout(Duration::from_secs(60));
    NcclGroup::connect(&config, gpu).map_err(|e| e.to_string())
}

/// Every collective on NCCL and on a one-rank [`LocalGroup`]; `Ok(false)` on a mismatch.
fn compare_collectives(nccl: &NcclGroup, len: usize) -> Result<bool, String> {
    let cpu = LocalGroup::new(1)
        .map_err(err("local group"))?
        .pop()
        .ok_or("local group without a rank")?;
    println!("{nccl:?} vs LocalGroup(world 1)");

    let input: Vec<f32> = (0..len)
        .map(|i| ((i * 7919) % 1000) as f32 / 7.0 - 50.0)
        .collect();
    let mut ok = true;
    for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min] {
        let (mut a, mut b) = (input.clone(), input.clone());
        cpu.all_reduce(&mut a, op).map_err(err("cpu all_reduce"))?;
        nccl.all_reduce(&mut b, op)
            .map_err(err("nccl all_reduce"))?;
        ok &= compare(&format!("all_reduce {op:?}"), &a, &b);
    }
    let a = cpu.all_gather(&input).map_err(err("cpu all_gather"))?;
    let b = nccl.all_gather(&input).map_err(err("nccl all_gather"))?;
    ok &= compare("all_gather", &a, &b);
    let (mut a, mut b) = (input.clone(), input);
    cpu.broadcast(&mut a, 0).map_err(err("cpu broadcast"))?;
    nccl.broadcast(&mut b, 0).map_err(err("nccl broadcast"))?;
    ok &= compare("broadcast", &a, &b);
    nccl.barrier().map_err(err("barrier"))?;

    let mut big = vec![1.0f32; 16 << 20];
    nccl.all_reduce(&mut big, ReduceOp::Sum)
        .map_err(err("warm-up all_reduce"))?;
    let t = Instant::now();
    let reps = 5;
    for _ in 0..reps {
        nccl.all_reduce(&mut big, ReduceOp::Sum)
            .map_err(err("timed all_reduce"))?;
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0 / reps as f64;
    println!("nccl all_reduce of 64 MiB (host round trip): {ms:.2} ms");
    Ok(ok)
}
