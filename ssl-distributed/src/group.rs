//! The [`ProcessGroup`] trait and the pieces its backends share (reduce ops, validation).

use std::fmt;
use std::time::Duration;

use crate::error::{DistributedError, Result};

/// Default timeout of every collective and of rendezvous: 30 minutes, as
/// `torch.distributed.constants.default_pg_timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Element-wise reduction of [`ProcessGroup::all_reduce`].
///
/// `Mean` is `Sum` divided by the world size, as NCCL's `ncclAvg` and
/// `torch.distributed.ReduceOp.AVG`. Every backend adds the contributions in rank order
/// (`((x0 + x1) + x2) + ...`), so all ranks end with bit-identical values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise sum divided by the world size.
    Mean,
    /// Element-wise maximum.
    Max,
    /// Element-wise minimum.
    Min,
}

impl ReduceOp {
    pub(crate) fn code(self) -> u64 {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Mean => 1,
            ReduceOp::Max => 2,
            ReduceOp::Min => 3,
        }
    }

    pub(crate) fn from_code(code: u64) -> Option<Self> {
        Some(match code {
            0 => ReduceOp::Sum,
            1 => ReduceOp::Mean,
            2 => ReduceOp::Max,
            3 => ReduceOp::Min,
            _ => return None,
        })
    }
}

/// A group of `world_size` ranks that run the same collectives in the same order.
///
/// Semantics follow `torch.distributed`: every rank calls every collective, in the same order,
/// with buffers of the same length (broadcast: the length the root has). Unlike PyTorch, a
/// length or collective mismatch is reported as an error on every rank
/// ([`DistributedError::SizeMismatch`], [`DistributedError::CollectiveMismatch`]), and every
/// call gives up after [`ProcessGroup::timeout`] instead of hanging when a peer is missing or
/// dead. After a timeout or a lost peer the group is aborted: later calls fail at once.
///
/// Implementations: [`crate::LocalGroup`] (ranks = threads of one process),
/// [`crate::TcpGroup`] (ranks = processes, star topology through rank 0, for CPU training) and
/// `NcclGroup` (feature `nccl`, one process per GPU).
pub trait ProcessGroup: Send + Sync {
    /// This process's rank in `0..world_size`.
    fn rank(&self) -> usize;

    /// Number of ranks in the group.
    fn world_size(&self) -> usize;

    /// Short backend name: `"local"`, `"tcp"`, `"nccl"`.
    fn backend(&self) -> &'static str;

    /// How long one collective may wait for the slowest rank.
    fn timeout(&self) -> Duration;

    /// Reduces `buf` element-wise over all ranks, in place; every rank ends with the result.
    fn all_reduce(&self, buf: &mut [f32], op: ReduceOp) -> Result<()>;

    /// Concatenates every rank's `input` in rank order (`world_size * input.len()` values).
    /// All ranks must pass the same length.
    fn all_gather(&self, input: &[f32]) -> Result<Vec<f32>>;

    /// Copies `root`'s `buf` into every other rank's `buf` (same length on all ranks).
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()>;

    /// Copies `root`'s bytes to every rank; other ranks' vectors are replaced (any length).
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()>;

    /// Gathers every rank's bytes (lengths may differ) in rank order.
    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>>;

    /// Returns once every rank has entered the barrier.
    fn barrier(&self) -> Result<()>;

    /// `true` on rank 0: print, log and save checkpoints only there (as the reference's
    /// `not args.multiprocessing_distributed or args.rank % ngpus_per_node == 0`, for one node).
    fn is_main(&self) -> bool {
        self.rank() == 0
    }
}

/// What one rank asked for in one collective; compared across ranks before any data moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    AllReduce(ReduceOp),
    AllGather,
    Broadcast { root: usize },
    BroadcastBytes { root: usize },
    AllGatherBytes,
    Barrier,
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpKind::AllReduce(op) => write!(f, "all_reduce({op:?})"),
            OpKind::AllGather => write!(f, "all_gather"),
            OpKind::Broadcast { root } => write!(f, "broadcast(root={root})"),
            OpKind::BroadcastBytes { root } => write!(f, "broadcast_bytes(root={root})"),
            OpKind::AllGatherBytes => write!(f, "all_gather_bytes"),
            OpKind::Barrier => write!(f, "barrier"),
        }
    }
}

impl OpKind {
    /// (kind code, parameter) as sent over the wire.
    pub(crate) fn encode(self) -> (u8, u64) {
        match self {
            OpKind::AllReduce(op) => (1, op.code()),
            OpKind::AllGather => (2, 0),
            OpKind::Broadcast { root } => (3, root as u64),
            OpKind::BroadcastBytes { root } => (4, root as u64),
            OpKind::AllGatherBytes => (5, 0),
            OpKind::Barrier => (6, 0),
        }
    }

    pub(crate) fn decode(kind: u8, param: u64) -> Option<Self> {
        Some(match kind {
            1 => OpKind::AllReduce(ReduceOp::from_code(param)?),
            2 => OpKind::AllGather,
            3 => OpKind::Broadcast {
                root: usize::try_from(param).ok()?,
            },
            4 => OpKind::BroadcastBytes {
                root: usize::try_from(param).ok()?,
            },
            5 => OpKind::AllGatherBytes,
            6 => OpKind::Barrier,
            _ => return None,
        })
    }

    /// Whether all ranks must pass the same element count.
    pub(crate) fn same_len(self) -> bool {
        matches!(
            self,
            OpKind::AllReduce(_) | OpKind::AllGather | OpKind::Broadcast { .. }
        )
    }
}

/// One rank's request header: the collective and its element (or byte) count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpHeader {
    pub kind: OpKind,
    pub len: usize,
}

/// Checks a root argument before any communication.
pub(crate) fn check_root(root: usize, world: usize, what: &str) -> Result<()> {
    if root >= world {
        return Err(DistributedError::InvalidConfig(format!(
            "{what}: root {root} is not a rank of a group of {world}"
        )));
    }
    Ok(())
}

/// Compares every rank's header with rank 0's: same collective, same length where required.
/// Every rank (or the relay, rank 0) runs this on the same headers, so all report the same error.
pub(crate) fn validate(headers: &[OpHeader]) -> Result<()> {
    let first = headers[0];
    for (rank, h) in headers.iter().enumerate().skip(1) {
        if h.kind != first.kind {
            return Err(DistributedError::CollectiveMismatch(format!(
                "rank 0 called {} but rank {rank} called {}",
                first.kind, h.kind
            )));
        }
    }
    if first.kind.same_len()
        && let Some((rank, h)) = headers
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, h)| h.len != first.len)
    {
        let all: Vec<usize> = headers.iter().map(|h| h.len).collect();
        return Err(DistributedError::SizeMismatch(format!(
            "{}: rank 0 has {} elements, rank {rank} has {} (per rank: {all:?})",
            first.kind, first.len, h.len
        )));
    }
    Ok(())
}

/// Reduces the ranks' buffers (in rank order) into `out`.
pub(crate) fn reduce_into<'a>(
    out: &mut [f32],
    mut parts: impl Iterator<Item = &'a [f32]>,
    op: ReduceOp,
    world: usize,
) {
    if let Some(first) = parts.next() {
        out.copy_from_slice(first);
    }
    for part in parts {
        match op {
            ReduceOp::Sum | ReduceOp::Mean => out.iter_mut().zip(part).for_each(|(o, x)| *o += x),
            ReduceOp::Max => out.iter_mut().zip(part).for_each(|(o, x)| *o = o.max(*x)),
            ReduceOp::Min => out.iter_mut().zip(part).for_each(|(o, x)| *o = o.min(*x)),
        }
    }
    if op == ReduceOp::Mean {
        let w = world as f32;
        out.iter_mut().for_each(|o| *o /= w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_reports_mismatches() {
        let h = |kind, len| OpHeader { kind, len };
        assert!(validate(&[h(OpKind::AllGather, 3), h(OpKind::AllGather, 3)]).is_ok());
        assert!(matches!(
            validate(&[h(OpKind::AllGather, 3), h(OpKind::AllGather, 4)]),
            Err(DistributedError::SizeMismatch(_))
        ));
        assert!(matches!(
            validate(&[h(OpKind::AllGather, 3), h(OpKind::Barrier, 0)]),
            Err(DistributedError::CollectiveMismatch(_))
        ));
        // bytes ops may differ in length
        assert!(validate(&[h(OpKind::AllGatherBytes, 3), h(OpKind::AllGatherBytes, 9)]).is_ok());
    }

    #[test]
    fn op_kind_round_trips() {
        for k in [
            OpKind::AllReduce(ReduceOp::Sum),
            OpKind::AllReduce(ReduceOp::Mean),
            OpKind::AllReduce(ReduceOp::Max),
            OpKind::AllReduce(ReduceOp::Min),
            OpKind::AllGather,
            OpKind::Broadcast { root: 3 },
            OpKind::BroadcastBytes { root: 1 },
            OpKind::AllGatherBytes,
            OpKind::Barrier,
        ] {
            let (c, p) = k.encode();
            assert_eq!(OpKind::decode(c, p), Some(k));
        }
        assert_eq!(OpKind::decode(9, 0), None);
    }

    #[test]
    fn reduce_in_rank_order() {
        let a = [1.0f32, 5.0];
        let b = [3.0f32, -1.0];
        let mut out = [0.0; 2];
        reduce_into(&mut out, [&a[..], &b[..]].into_iter(), ReduceOp::Mean, 2);
        assert_eq!(out, [2.0, 2.0]);
        reduce_into(&mut out, [&a[..], &b[..]].into_iter(), ReduceOp::Max, 2);
        assert_eq!(out, [3.0, 5.0]);
        reduce_into(&mut out, [&a[..], &b[..]].into_iter(), ReduceOp::Min, 2);
        assert_eq!(out, [1.0, -1.0]);
    }
}
