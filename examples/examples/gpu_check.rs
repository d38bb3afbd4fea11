//! Everything the GPU check runs, in one binary, so that a GPU machine without a Rust toolchain
//! needs one file per build (docs/gpu.md, scripts/gpu-check.sh):
//!
//! ```text
//! gpu_check step [ARCH] [BATCH] [SIZE] [K] [ITERS] [--device SPEC] [--precision f32|bf16] [--profile]
//! gpu_check conformance [--device SPEC] [--dir DIR] [--curve-steps N] [--json PATH]
//! gpu_check nccl [GPU] [LEN]            (builds with the `nccl` or `cuda` feature)
//! gpu_check mhcl pretrain|lincls|split|synthetic ...   (the `mhcl` command)
//! gpu_check info                         (backends and the source hash it was built from)
//! ```
//!
//! `step` is `mhcl_bench_step`, `conformance` is `gpu_conformance` ([`ssl_examples`] holds
//! both); `info` prints `source <hash>`, the hash `scripts/source-hash.sh` computed over the
//! sources when the bundle was built (`GPU_CHECK_SOURCE_HASH`), so that the check can refuse a
//! binary built from another tree.

const USAGE: &str = "usage: gpu_check step|conformance|nccl|mhcl|info [ARGS...]";

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(command) = args.next() else {
        eprintln!("error: no command; {USAGE}");
        std::process::exit(2);
    };
    let status = match command.as_str() {
        "step" => match ssl_examples::bench_step::main(args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {}", mhcl::device::one_line(&e.to_string()));
                2
            }
        },
        "conformance" => ssl_examples::conformance::main(args),
        #[cfg(feature = "nccl")]
        "nccl" => ssl_examples::nccl::main(args),
        "mhcl" => mhcl::cli::main_from(std::iter::once("mhcl".to_string()).chain(args)),
        "info" => {
            info();
            0
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            0
        }
        other => {
            eprintln!("error: unknown command `{other}`; {USAGE}");
            2
        }
    };
    std::process::exit(status);
}

fn info() {
    let mut backends = vec!["cpu"];
    if cfg!(feature = "cuda") {
        backends.push("cuda");
    }
    if cfg!(feature = "vulkan") {
        backends.push("vulkan");
    }
    if cfg!(feature = "nccl") {
        backends.push("nccl");
    }
    println!("backends {}", backends.join(","));
    println!(
        "source {}",
        option_env!("GPU_CHECK_SOURCE_HASH").unwrap_or("unknown")
    );
}
