//! Data-parallel training for MoCo-style self-supervised learning on burn: process groups,
//! rendezvous, launchers, and MoCo's distributed primitives.
//!
//! - [`ProcessGroup`]: rank, world size, `all_reduce` (sum / mean / max / min on f32),
//!   `all_gather` (rank order), `broadcast`, byte broadcast / gather, `barrier`. Every call has a
//!   timeout, and ranks that disagree on sizes or on the collective get an error, never a hang.
//! - Backends: [`LocalGroup`] (ranks = threads of one process), [`TcpGroup`] (ranks = processes,
//!   star through rank 0; CPU), `NcclGroup` (feature `nccl`: one process per GPU, cudarc's
//!   NCCL bindings, loaded at run time).
//! - Rendezvous as `torch.distributed`: `tcp://HOST:PORT` (rank 0 listens) and `env://`
//!   (`MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, as torchrun sets them):
//!   [`RendezvousConfig`], [`init_process_group`].
//! - `--multiprocessing-distributed`: [`WorkerLayout`] (rank = node_rank * ngpus + local_rank,
//!   world = nodes * ngpus, batch = batch / ngpus), [`spawn_workers`] (processes of the current
//!   executable), [`run_local`] (threads).
//! - MoCo on burn tensors: [`concat_all_gather`], [`batch_shuffle`] / [`batch_unshuffle`]
//!   (shuffle-BN; permutation drawn on rank 0 and broadcast), [`average_gradients`] (DDP-style
//!   bucketed all-reduce of a module's gradients).
//!
//! ```
//! use burn::prelude::*;
//! use ssl_distributed::{LocalGroup, ProcessGroup, concat_all_gather, run_local};
//! use std::time::Duration;
//!
//! // Two ranks as threads; each holds 2 keys of dimension 3 and gathers all 4.
//! let shapes = run_local(2, Duration::from_secs(30), |group: LocalGroup| {
//!     let device = Device::flex();
//!     let keys = Tensor::<2>::full([2, 3], group.rank() as f32, &device);
//!     let all = concat_all_gather(&group, keys).unwrap();
//!     let rows: Vec<f32> = all.into_data().try_into_vec::<f32>().unwrap();
//!     assert_eq!(rows, [0., 0., 0., 0., 0., 0., 1., 1., 1., 1., 1., 1.]);
//!     group.rank()
//! })
//! .unwrap();
//! assert_eq!(shapes, vec![0, 1]);
//! ```

mod error;
mod group;
mod launch;
mod local;
mod moco;
#[cfg(feature = "nccl")]
mod nccl;
mod rendezvous;
mod tcp;

pub use error::{DistributedError, Result};
pub use group::{DEFAULT_TIMEOUT, ProcessGroup, ReduceOp};
pub use launch::{
    DistBackend, ENV_WORKER, SpawnConfig, WorkerLayout, Workers, init_process_group, run_local,
    spawn_workers, spawned_worker, visible_gpu_count,
};
pub use local::LocalGroup;
pub use moco::{
    GradientAverager, ShufflePermutation, all_reduce_tensor, average_gradients, batch_shuffle,
    batch_unshuffle, broadcast_tensor, concat_all_gather, host_to_tensor, tensor_to_host,
};
#[cfg(feature = "nccl")]
pub use nccl::NcclGroup;
pub use rendezvous::{
    DistToken, DistUrl, ENV_LOCAL_RANK, ENV_LOCAL_WORLD_SIZE, ENV_MASTER_ADDR, ENV_MASTER_PORT,
    ENV_RANK, ENV_WORLD_SIZE, Rendezvous, RendezvousConfig, check_rank,
};
pub use tcp::TcpGroup;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
