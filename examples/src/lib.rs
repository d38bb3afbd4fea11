//! Support code of the runnable examples: the checks and benchmarks behind `mhcl_bench_step`,
//! `gpu_conformance` and `gpu_check`, as functions that take the command line, so that one
//! binary can carry all of them to a GPU machine (`gpu_check step|conformance|nccl|mhcl`,
//! docs/gpu.md).

pub mod bench_step;
pub mod conformance;
#[cfg(feature = "nccl")]
pub mod nccl;
