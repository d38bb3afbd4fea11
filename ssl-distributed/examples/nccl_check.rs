//! One-process NCCL check: `all_reduce` (sum, mean, max, min), `all_gather` and `broadcast`
//! through [`NcclGroup`] on one GPU (world size 1, TCP rendezvous on localhost), compared
//! element by element with the same collectives of a one-rank [`LocalGroup`] on the CPU. Also
//! times a 64 MiB all-reduce (a round trip host -> GPU -> NCCL -> host). Prints one line per
//! collective; exits 1 on a mismatch, 2 when NCCL or the GPU cannot be opened.
//!
//! ```text
//! cargo run --release -p ssl-distributed --features nccl --example nccl_check -- [GPU] [LEN]
//! ```
//!
//! cudarc loads `libcuda.so.1` and `libnccl.so` at run time: with NCCL from the
//! `nvidia-nccl-cu*` wheel (which ships only `libnccl.so.2`), put a folder holding a
//! `libnccl.so -> .../libnccl.so.2` link on `LD_LIBRARY_PATH`.

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

fn main() {
    let mut args = std::env::args().skip(1);
    let gpu: usize = args.next().map_or(0, |a| a.parse().expect("GPU index"));
    let len: usize = args.next().map_or(1 << 20, |a| a.parse().expect("LEN"));

    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port");
    let config = RendezvousConfig::new(format!("tcp://127.0.0.1:{port}"))
        .with_rank(0)
        .with_world_size(1)
        .with_timeout(Duration::from_secs(60));
    let nccl = match NcclGroup::connect(&config, gpu) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: NCCL group on GPU {gpu}: {e}");
            std::process::exit(2);
        }
    };
    let cpu = LocalGroup::new(1)
        .expect("local group")
        .pop()
        .expect("one rank");
    println!("{nccl:?} vs LocalGroup(world 1)");

    let input: Vec<f32> = (0..len)
        .map(|i| ((i * 7919) % 1000) as f32 / 7.0 - 50.0)
        .collect();
    let mut ok = true;
    for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min] {
        let (mut a, mut b) = (input.clone(), input.clone());
        cpu.all_reduce(&mut a, op).expect("cpu all_reduce");
        nccl.all_reduce(&mut b, op).expect("nccl all_reduce");
        ok &= compare(&format!("all_reduce {op:?}"), &a, &b);
    }
    let a = cpu.all_gather(&input).expect("cpu all_gather");
    let b = nccl.all_gather(&input).expect("nccl all_gather");
    ok &= compare("all_gather", &a, &b);
    let (mut a, mut b) = (input.clone(), input.clone());
    cpu.broadcast(&mut a, 0).expect("cpu broadcast");
    nccl.broadcast(&mut b, 0).expect("nccl broadcast");
    ok &= compare("broadcast", &a, &b);
    nccl.barrier().expect("barrier");

    let mut big = vec![1.0f32; 16 << 20];
    nccl.all_reduce(&mut big, ReduceOp::Sum).expect("warm-up");
    let t = Instant::now();
    let reps = 5;
    for _ in 0..reps {
        nccl.all_reduce(&mut big, ReduceOp::Sum)
            .expect("timed all_reduce");
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0 / reps as f64;
    println!("nccl all_reduce of 64 MiB (host round trip): {ms:.2} ms");
    if !ok {
        std::process::exit(1);
    }
    println!("nccl check passed");
}
