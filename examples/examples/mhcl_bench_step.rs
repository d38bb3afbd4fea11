//! Times the full MHCL training step on fixed random inputs, as
//! `../shared/reference/bench_step.py` does, and prints one JSON line with the same keys.
//!
//! ```text
//! cargo run --release --example mhcl_bench_step -- [ARCH] [BATCH] [SIZE] [K] [ITERS] [--profile]
//!     [--device SPEC] [--precision f32|bf16]
//! cargo run --release --example mhcl_bench_step -- resnet18 32 64 4096 15
//! ```
//!
//! The options and the JSON keys: [`ssl_examples::bench_step`].

fn main() {
    if let Err(e) = ssl_examples::bench_step::main(std::env::args().skip(1)) {
        eprintln!("error: {}", mhcl::device::one_line(&e.to_string()));
        std::process::exit(2);
    }
}
