//! NcclGroup (feature `nccl`): on a machine with a GPU, a one-rank group runs every collective;
//! without the CUDA driver or NCCL library, construction is a clear error, not a crash.

use std::time::Duration;

use ssl_distributed::{NcclGroup, RendezvousConfig, visible_gpu_count};

use crate::{exercise, free_port, kind};

#[test]
fn nccl_group_of_one_rank_or_a_clear_error() {
    let cfg = RendezvousConfig::new(format!("tcp://127.0.0.1:{}", free_port()))
        .with_rank(0)
        .with_world_size(1)
        .with_timeout(Duration::from_secs(20));
    match NcclGroup::connect(&cfg, 0) {
        Ok(g) => {
            assert!(visible_gpu_count() >= 1);
            exercise(&g).unwrap();
        }
        Err(e) => {
            assert!(
                matches!(kind(&e), "BackendUnavailable" | "Nccl"),
                "unexpected error: {e}"
            );
            eprintln!("NCCL not runnable here: {e}");
        }
    }
}
