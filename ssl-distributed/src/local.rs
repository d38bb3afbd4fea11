//! [`LocalGroup`]: ranks as threads of one process, exchanging through shared memory.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{DistributedError, Result};
use crate::group::{
    DEFAULT_TIMEOUT, OpHeader, OpKind, ProcessGroup, ReduceOp, check_root, reduce_into, validate,
};

/// One rank's contribution to one collective.
struct Contribution {
    header: OpHeader,
    f32s: Vec<f32>,
    bytes: Vec<u8>,
}

struct State {
    /// The collective being collected (or read) now; every rank's n-th call is round n.
    round: u64,
    slots: Vec<Option<Contribution>>,
    arrived: usize,
    /// All contributions of `round`, once every rank has deposited.
    result: Option<Arc<Vec<Contribution>>>,
    readers_left: usize,
    aborted: Option<String>,
    departed: Vec<bool>,
}

struct Shared {
    world: usize,
    timeout: Duration,
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A rank that panicked while holding the lock left the state consistent (every update
        // below is completed before anything that can panic), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A process group whose ranks are threads of this process.
///
/// Used for tests and for data parallelism over CPU cores (`--dist-backend local`). Data moves
/// through shared memory: each rank deposits its buffer, the last one to arrive publishes the
/// round, and every rank reads what it needs from the shared contributions (a reduction adds the
/// contributions in rank order, so all ranks get bit-identical results).
///
/// Dropping a rank's handle (its thread returned or panicked) makes every later collective of
/// the other ranks fail at once with [`DistributedError::PeerGone`]; a rank that stops calling
/// collectives makes the others fail after the timeout.
///
/// ```
/// use ssl_distributed::{LocalGroup, ProcessGroup, ReduceOp};
/// let ranks = LocalGroup::new(3).unwrap();
/// let sums: Vec<f32> = std::thread::scope(|s| {
///     let handles: Vec<_> = ranks
///         .into_iter()
///         .map(|g| s.spawn(move || {
///             let mut x = [g.rank() as f32];
///             g.all_reduce(&mut x, ReduceOp::Sum).unwrap();
///             x[0]
///         }))
///         .collect();
///     handles.into_iter().map(|h| h.join().unwrap()).collect()
/// });
/// assert_eq!(sums, vec![3.0, 3.0, 3.0]);
/// ```
pub struct LocalGroup {
    rank: usize,
    shared: Arc<Shared>,
    /// Serializes this rank's calls and counts its rounds.
    next_round: Mutex<u64>,
}

impl std::fmt::Debug for LocalGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalGroup")
            .field("rank", &self.rank)
            .field("world_size", &self.shared.world)
            .field("timeout", &self.shared.timeout)
            .finish()
    }
}

impl LocalGroup {
    /// `world` handles, one per rank (index = rank), with the default timeout
    /// ([`DEFAULT_TIMEOUT`]). Move each into its own thread.
    pub fn new(world: usize) -> Result<Vec<LocalGroup>> {
        Self::with_timeout(world, DEFAULT_TIMEOUT)
    }

    /// As [`LocalGroup::new`], with the timeout of every collective.
    pub fn with_timeout(world: usize, timeout: Duration) -> Result<Vec<LocalGroup>> {
        if world == 0 {
            return Err(DistributedError::InvalidConfig(
                "a local group needs at least one rank".into(),
            ));
        }
        if timeout.is_zero() {
            return Err(DistributedError::InvalidConfig(
                "the collective timeout must be positive".into(),
            ));
        }
        let shared = Arc::new(Shared {
            world,
            timeout,
            state: Mutex::new(State {
                round: 0,
                slots: (0..world).map(|_| None).collect(),
                arrived: 0,
                result: None,
                readers_left: 0,
                aborted: None,
                departed: vec![false; world],
            }),
            cv: Condvar::new(),
        });
        Ok((0..world)
            .map(|rank| LocalGroup {
                rank,
                shared: shared.clone(),
                next_round: Mutex::new(0),
            })
            .collect())
    }

    /// A group of one rank: every collective is the identity. The non-distributed path.
    pub fn single() -> LocalGroup {
        Self::new(1)
            .ok()
            .and_then(|mut v| v.pop())
            .expect("a group of one rank is always valid")
    }

    /// Deposits this rank's contribution and returns all ranks' contributions for the round.
    fn exchange(
        &self,
        header: OpHeader,
        f32s: Vec<f32>,
        bytes: Vec<u8>,
    ) -> Result<Arc<Vec<Contribution>>> {
        let sh = &*self.shared;
        let mut round_guard = self.next_round.lock().unwrap_or_else(|e| e.into_inner());
        let my_round = *round_guard;
        let deadline = Instant::now() + sh.timeout;
        let mut st = sh.lock();

        // Phase 1: wait until the previous round is fully read, then deposit.
        loop {
            if let Some(msg) = &st.aborted {
                return Err(DistributedError::Aborted(msg.clone()));
            }
            if let Some(gone) = (0..sh.world).find(|&r| r != self.rank && st.departed[r]) {
                return Err(DistributedError::PeerGone(format!(
                    "rank {gone} dropped its group handle (its thread ended or panicked); rank {} \
                     cannot run {}",
                    self.rank, header.kind
                )));
            }
            if st.round == my_round && st.result.is_none() {
                break;
            }
            st = self.wait(st, deadline, header.kind)?;
        }
        st.slots[self.rank] = Some(Contribution {
            header,
            f32s,
            bytes,
        });
        st.arrived += 1;
        if st.arrived == sh.world {
            let all: Vec<Contribution> = st
                .slots
                .iter_mut()
                .map(|s| s.take().expect("every rank deposited"))
                .collect();
            st.arrived = 0;
            st.readers_left = sh.world;
            st.result = Some(Arc::new(all));
            sh.cv.notify_all();
        }

        // Phase 2: wait for the round's result.
        loop {
            if st.round == my_round
                && let Some(result) = st.result.clone()
            {
                st.readers_left -= 1;
                if st.readers_left == 0 {
                    st.result = None;
                    st.round += 1;
                    sh.cv.notify_all();
                }
                *round_guard += 1;
                return Ok(result);
            }
            if let Some(msg) = &st.aborted {
                return Err(DistributedError::Aborted(msg.clone()));
            }
            if let Some(gone) = (0..sh.world).find(|&r| st.slots[r].is_none() && st.departed[r]) {
                let msg = format!(
                    "rank {gone} dropped its group handle (its thread ended or panicked) while \
                     rank {} waited in {}",
                    self.rank, header.kind
                );
                st.aborted = Some(msg.clone());
                sh.cv.notify_all();
                return Err(DistributedError::PeerGone(msg));
            }
            st = self.wait(st, deadline, header.kind)?;
        }
    }

    /// One condvar wait; on timeout aborts the group and names the missing ranks.
    fn wait<'a>(
        &self,
        mut st: MutexGuard<'a, State>,
        deadline: Instant,
        kind: OpKind,
    ) -> Result<MutexGuard<'a, State>> {
        let sh = &*self.shared;
        let now = Instant::now();
        if now >= deadline {
            let missing: Vec<usize> = (0..sh.world).filter(|&r| st.slots[r].is_none()).collect();
            let what = format!(
                "rank {} in {} waiting for ranks {missing:?} of {}",
                self.rank, kind, sh.world
            );
            st.aborted = Some(format!("rank {} timed out: {what}", self.rank));
            sh.cv.notify_all();
            return Err(DistributedError::timeout(what, sh.timeout));
        }
        let (st, _) = sh
            .cv
            .wait_timeout(st, deadline - now)
            .unwrap_or_else(|e| e.into_inner());
        Ok(st)
    }
}

impl Drop for LocalGroup {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.departed[self.rank] = true;
        self.shared.cv.notify_all();
    }
}

impl ProcessGroup for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn backend(&self) -> &'static str {
        "local"
    }

    fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    fn all_reduce(&self, buf: &mut [f32], op: ReduceOp) -> Result<()> {
        let header = OpHeader {
            kind: OpKind::AllReduce(op),
            len: buf.len(),
        };
        let all = self.exchange(header, buf.to_vec(), Vec::new())?;
        validate(&all.iter().map(|c| c.header).collect::<Vec<_>>())?;
        reduce_into(buf, all.iter().map(|c| &c.f32s[..]), op, self.shared.world);
        Ok(())
    }

    fn all_gather(&self, input: &[f32]) -> Result<Vec<f32>> {
        let header = OpHeader {
            kind: OpKind::AllGather,
            len: input.len(),
        };
        let all = self.exchange(header, input.to_vec(), Vec::new())?;
        validate(&all.iter().map(|c| c.header).collect::<Vec<_>>())?;
        let mut out = Vec::with_capacity(input.len() * all.len());
        for c in all.iter() {
            out.extend_from_slice(&c.f32s);
        }
        Ok(out)
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        check_root(root, self.shared.world, "broadcast")?;
        let header = OpHeader {
            kind: OpKind::Broadcast { root },
            len: buf.len(),
        };
        let data = if self.rank == root {
            buf.to_vec()
        } else {
            Vec::new()
        };
        let all = self.exchange(header, data, Vec::new())?;
        validate(&all.iter().map(|c| c.header).collect::<Vec<_>>())?;
        if self.rank != root {
            buf.copy_from_slice(&all[root].f32s);
        }
        Ok(())
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        check_root(root, self.shared.world, "broadcast_bytes")?;
        let header = OpHeader {
            kind: OpKind::BroadcastBytes { root },
            len: bytes.len(),
        };
        let data = if self.rank == root {
            bytes.clone()
        } else {
            Vec::new()
        };
        let all = self.exchange(header, Vec::new(), data)?;
        validate(&all.iter().map(|c| c.header).collect::<Vec<_>>())?;
        if self.rank != root {
            bytes.clear();
            bytes.extend_from_slice(&all[root].bytes);
        }
        Ok(())
    }

    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        let header = OpHeader {
            kind: OpKind::AllGatherBytes,
            len: bytes.len(),
        };
        let all = self.exchange(header, Vec::new(), bytes.to_vec())?;
        validate(&all.iter().map(|c| c.header).collect::<Vec<_>>())?;
        Ok(all.iter().map(|c| c.bytes.clone()).collect())
    }

    fn barrier(&self) -> Result<()> {
        let header = OpHeader {
            kind: OpKind::Barrier,
            len: 0,
        };
        let all = self.exchange(header, Vec::new(), Vec::new())?;
        validate(&all.iter().map(|c| c.header).collect::<Vec<_>>())
    }
}
