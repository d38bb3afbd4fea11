//! The error type of the `ssl-distributed` crate.

use std::time::Duration;

/// Everything that can go wrong while setting up a process group or running a collective.
///
/// Every variant carries a one-line message that names the rank, the operation and, where there
/// is one, the address or environment variable at fault. No collective waits without end: a peer
/// that never arrives or dies mid-collective ends in [`DistributedError::Timeout`] or
/// [`DistributedError::PeerGone`].
#[derive(Debug, thiserror::Error)]
pub enum DistributedError {
    /// `--dist-url` is neither `tcp://HOST:PORT` nor `env://`, or its host/port do not parse.
    #[error("invalid dist-url `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// Inconsistent rank / world size / process count (rank >= world size, world size 0, ...).
    #[error("invalid distributed configuration: {0}")]
    InvalidConfig(String),
    /// An `env://` variable (as torchrun sets them) is missing or not a number.
    #[error("environment variable {name}: {reason}")]
    Env { name: String, reason: String },
    /// Rank 0 could not listen on the rendezvous address (typically: the port is in use).
    #[error("rank 0 cannot listen on {addr}: {source} (is the port already in use?)")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// A rendezvous or a collective did not complete within the group's timeout.
    #[error("timed out after {:.1} s: {what}", timeout.as_secs_f64())]
    Timeout { what: String, timeout: Duration },
    /// Two processes disagree on the world size.
    #[error("world size mismatch: {0}")]
    WorldSizeMismatch(String),
    /// Two processes claim the same rank.
    #[error("duplicate rank: {0}")]
    DuplicateRank(String),
    /// Rank 0 refused this process at rendezvous (the reason says why).
    #[error("rendezvous rejected by rank 0: {0}")]
    Rejected(String),
    /// Ranks called the same collective with buffers of different sizes.
    #[error("size mismatch across ranks: {0}")]
    SizeMismatch(String),
    /// Ranks called different collectives (or the same one with a different root / reduce op).
    #[error("collective mismatch across ranks: {0}")]
    CollectiveMismatch(String),
    /// A peer disconnected or dropped its group handle (process exit, crash, panic).
    #[error("peer left the process group: {0}")]
    PeerGone(String),
    /// The group is unusable after an earlier timeout or peer failure.
    #[error("process group aborted: {0}")]
    Aborted(String),
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A peer sent bytes that are not this crate's wire protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A tensor could not be moved to or from host memory, or has an unsupported layout.
    #[error("tensor: {0}")]
    Tensor(String),
    /// A worker process or thread could not be started, or failed.
    #[error("launcher: {0}")]
    Launch(String),
    /// The requested backend is not compiled in or its runtime libraries are missing.
    #[error("backend unavailable: {0}")]
    BackendUnavailable(String),
    /// An NCCL or CUDA call failed (feature `nccl`).
    #[error("nccl: {0}")]
    Nccl(String),
}

impl DistributedError {
    /// Whether this error means the group can no longer be used (timeouts, dead peers, I/O).
    ///
    /// Size and collective mismatches leave the group usable: every rank saw the same error and
    /// the ranks are still in step.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            DistributedError::SizeMismatch(_) | DistributedError::CollectiveMismatch(_)
        )
    }

    pub(crate) fn timeout(what: impl Into<String>, timeout: Duration) -> Self {
        DistributedError::Timeout {
            what: what.into(),
            timeout,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        DistributedError::Io {
            what: what.into(),
            source,
        }
    }
}

/// `Result` with [`DistributedError`].
pub type Result<T> = std::result::Result<T, DistributedError>;
