//! [`NcclGroup`]: one process per GPU, collectives through NCCL (feature `nccl`, cudarc).
//!
//! cudarc loads `libcuda` and `libnccl` when first used (`dynamic-loading`), so this module
//! builds without a CUDA toolkit; without the libraries, construction fails with
//! [`DistributedError::BackendUnavailable`] instead of crashing.
//!
//! Setup is PyTorch's: rank 0 creates the NCCL unique id and broadcasts its 128 bytes over the
//! TCP rendezvous ([`TcpGroup`], the "store"), every rank then calls `ncclCommInitRank`. The
//! store stays open for byte broadcasts, barriers and the cross-rank size checks.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use cudarc::nccl::{Comm, Id};

use crate::error::{DistributedError, Result};
use crate::group::{OpHeader, OpKind, ProcessGroup, ReduceOp, check_root, validate};
use crate::rendezvous::RendezvousConfig;
use crate::tcp::TcpGroup;

/// A communicator, movable between threads.
struct CommHandle(Comm);

// SAFETY: an NCCL communicator is not bound to the thread that created it; NCCL only forbids
// using one communicator from several threads at the same time, which the `Mutex` around every
// `CommHandle` rules out.
unsafe impl Send for CommHandle {}

/// A process group over NCCL, one process per GPU.
///
/// Device-buffer collectives ([`NcclGroup::all_reduce_device`], ...) work on cudarc
/// [`CudaSlice`]s on [`NcclGroup::stream`] without touching host memory; the
/// [`ProcessGroup`] methods on host slices copy to the device and back.
///
/// Timeouts: after enqueuing a collective the host polls its completion; past the timeout the
/// communicator is aborted (`ncclCommAbort`) and the group fails with
/// [`DistributedError::Timeout`]. With size checks on (the default), every collective first
/// compares the ranks' sizes over the TCP store, so a mismatch is an error on every rank and not
/// an NCCL hang; `with_size_checks(false)` saves that round trip.
pub struct NcclGroup {
    store: TcpGroup,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    comm: Mutex<Option<CommHandle>>,
    aborted: Mutex<Option<String>>,
    rank: usize,
    world: usize,
    timeout: Duration,
    size_checks: bool,
}

impl std::fmt::Debug for NcclGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclGroup")
            .field("rank", &self.rank)
            .field("world_size", &self.world)
            .field("device", &self.ctx.ordinal())
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> DistributedError {
    DistributedError::Nccl(format!("{what}: {e:?}"))
}

/// Whether the CUDA driver and NCCL libraries can be loaded.
fn check_libraries() -> Result<()> {
    // SAFETY: only tries to open the shared libraries by name.
    let (cuda, nccl) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::nccl::sys::is_culib_present(),
        )
    };
    if !cuda {
        return Err(DistributedError::BackendUnavailable(
            "the CUDA driver library (libcuda.so / libcuda.so.1) cannot be loaded: no NVIDIA \
             driver on this machine"
                .into(),
        ));
    }
    if !nccl {
        return Err(DistributedError::BackendUnavailable(
            "the NCCL library cannot be loaded: cudarc looks for libnccl.so (not only \
             libnccl.so.2); install libnccl-dev or put a directory with a libnccl.so link on \
             LD_LIBRARY_PATH"
                .into(),
        ));
    }
    Ok(())
}

/// The CUDA driver's device count, or `None` without a driver.
pub(crate) fn driver_device_count() -> Option<usize> {
    // SAFETY: only tries to open the shared library by name.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return None;
    }
    catch_unwind(CudaContext::device_count)
        .ok()?
        .ok()
        .map(|n| n.max(0) as usize)
}

impl NcclGroup {
    /// Joins the TCP rendezvous described by `config`, then builds the NCCL communicator on GPU
    /// `device` (the local rank).
    pub fn connect(config: &RendezvousConfig, device: usize) -> Result<NcclGroup> {
        let store = TcpGroup::connect(config)?;
        NcclGroup::from_store(store, device)
    }

    /// Builds the communicator over an existing TCP group: rank 0 creates the NCCL unique id and
    /// broadcasts it through `store`.
    pub fn from_store(store: TcpGroup, device: usize) -> Result<NcclGroup> {
        let (rank, world, timeout) = (store.rank(), store.world_size(), store.timeout());
        // Every rank checks its libraries, then all agree before any rank blocks in NCCL.
        let local = check_libraries().and_then(|_| {
            let ctx = catch_unwind(|| CudaContext::new(device))
                .map_err(|_| nccl_err("CUDA context", "panic while loading the driver"))?
                .map_err(|e| nccl_err(&format!("cannot open GPU {device}"), e))?;
            let stream = ctx
                .new_stream()
                .map_err(|e| nccl_err("cannot create a CUDA stream", e))?;
            Ok((ctx, stream))
        });
        let ok = [u8::from(local.is_ok())];
        let all_ok = store.all_gather_bytes(&ok)?;
        let (ctx, stream) = local?;
        if let Some(bad) = all_ok.iter().position(|b| b.first() != Some(&1)) {
            return Err(DistributedError::BackendUnavailable(format!(
                "rank {bad} could not open its GPU or load CUDA/NCCL (see its log)"
            )));
        }
        let mut id_bytes = Vec::new();
        if rank == 0 {
            let id = Id::new().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
            id_bytes = id.internal().iter().map(|&c| c as u8).collect();
        }
        store.broadcast_bytes(&mut id_bytes, 0)?;
        let raw: [u8; 128] = id_bytes.as_slice().try_into().map_err(|_| {
            DistributedError::Protocol(format!(
                "the NCCL unique id has {} bytes, expected 128",
                id_bytes.len()
            ))
        })?;
        let id = Id::uninit(raw.map(|b| b as std::ffi::c_char));
        let comm = Comm::from_rank(stream.clone(), rank, world, id)
            .map_err(|e| nccl_err("ncclCommInitRank", e))?;
        Ok(NcclGroup {
            store,
            ctx,
            stream,
            comm: Mutex::new(Some(CommHandle(comm))),
            aborted: Mutex::new(None),
            rank,
            world,
            timeout,
            size_checks: true,
        })
    }

    /// Turns the cross-rank size checks before each collective on or off (default on).
    pub fn with_size_checks(mut self, on: bool) -> Self {
        self.size_checks = on;
        self
    }

    /// The stream every collective runs on. Device buffers passed in must be ready on it.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The CUDA context of this rank's GPU.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The TCP store used for setup, byte collectives and barriers.
    pub fn store(&self) -> &TcpGroup {
        &self.store
    }

    fn lock_comm(&self) -> Result<MutexGuard<'_, Option<CommHandle>>> {
        if let Some(msg) = self
            .aborted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return Err(DistributedError::Aborted(msg.clone()));
        }
        let guard = self.comm.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Err(DistributedError::Aborted(
                "the NCCL communicator was aborted".into(),
            ));
        }
        Ok(guard)
    }

    fn check(&self, header: OpHeader) -> Result<()> {
        if !self.size_checks {
            return Ok(());
        }
        let (kind, param) = header.kind.encode();
        let mut mine = vec![kind];
        mine.extend_from_slice(&param.to_le_bytes());
        mine.extend_from_slice(&(header.len as u64).to_le_bytes());
        let all = self.store.all_gather_bytes(&mine)?;
        let headers = all
            .iter()
            .map(|b| {
                let bad = || DistributedError::Protocol("bad size-check record".into());
                if b.len() != 17 {
                    return Err(bad());
                }
                let param = u64::from_le_bytes(b[1..9].try_into().expect("8 bytes"));
                let len = u64::from_le_bytes(b[9..17].try_into().expect("8 bytes"));
                Ok(OpHeader {
                    kind: OpKind::decode(b[0], param).ok_or_else(bad)?,
                    len: len as usize,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        validate(&headers)
    }

    /// Waits for the work enqueued on the stream; aborts the communicator past the timeout.
    fn wait(
        &self,
        comm: &mut MutexGuard<'_, Option<CommHandle>>,
        what: &str,
        deadline: Instant,
    ) -> Result<()> {
        let event = self
            .stream
            .record_event(None)
            .map_err(|e| nccl_err("cuEventRecord", e))?;
        loop {
            match event.try_is_complete() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    let err = nccl_err(&format!("{what} failed on rank {}", self.rank), e);
                    self.abort(comm, err.to_string());
                    return Err(err);
                }
            }
            if Instant::now() >= deadline {
                let err = DistributedError::timeout(
                    format!(
                        "rank {} in NCCL {what} (a peer is missing, dead or stuck)",
                        self.rank
                    ),
                    self.timeout,
                );
                self.abort(comm, err.to_string());
                return Err(err);
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    fn abort(&self, comm: &mut MutexGuard<'_, Option<CommHandle>>, why: String) {
        *self.aborted.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        if let Some(c) = comm.take() {
            // cudarc's Drop calls ncclCommAbort, which frees kernels stuck waiting for peers.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(c)));
        }
    }

    /// In-place all-reduce of a device buffer.
    pub fn all_reduce_device(&self, buf: &mut CudaSlice<f32>, op: ReduceOp) -> Result<()> {
        self.check(OpHeader {
            kind: OpKind::AllReduce(op),
            len: buf.len(),
        })?;
        let deadline = Instant::now() + self.timeout;
        let mut comm = self.lock_comm()?;
        let c = &comm.as_ref().expect("checked by lock_comm").0;
        let nccl_op = match op {
            ReduceOp::Sum => cudarc::nccl::ReduceOp::Sum,
            ReduceOp::Mean => cudarc::nccl::ReduceOp::Avg,
            ReduceOp::Max => cudarc::nccl::ReduceOp::Max,
            ReduceOp::Min => cudarc::nccl::ReduceOp::Min,
        };
        c.all_reduce_in_place(buf, &nccl_op)
            .map_err(|e| nccl_err("ncclAllReduce", e))?;
        self.wait(&mut comm, "all_reduce", deadline)
    }

    /// All-gather of device buffers: `world_size * input.len()` values in rank order.
    pub fn all_gather_device(&self, input: &CudaSlice<f32>) -> Result<CudaSlice<f32>> {
        self.check(OpHeader {
            kind: OpKind::AllGather,
            len: input.len(),
        })?;
        let deadline = Instant::now() + self.timeout;
        let mut out = self
            .stream
            .alloc_zeros::<f32>(input.len() * self.world)
            .map_err(|e| nccl_err("cuMemAlloc", e))?;
        let mut comm = self.lock_comm()?;
        let c = &comm.as_ref().expect("checked by lock_comm").0;
        c.all_gather(input, &mut out)
            .map_err(|e| nccl_err("ncclAllGather", e))?;
        self.wait(&mut comm, "all_gather", deadline)?;
        Ok(out)
    }

    /// In-place broadcast of a device buffer from `root`.
    pub fn broadcast_device(&self, buf: &mut CudaSlice<f32>, root: usize) -> Result<()> {
        check_root(root, self.world, "broadcast")?;
        self.check(OpHeader {
            kind: OpKind::Broadcast { root },
            len: buf.len(),
        })?;
        let deadline = Instant::now() + self.timeout;
        let mut comm = self.lock_comm()?;
        let c = &comm.as_ref().expect("checked by lock_comm").0;
        c.broadcast_in_place(buf, root as i32)
            .map_err(|e| nccl_err("ncclBroadcast", e))?;
        self.wait(&mut comm, "broadcast", deadline)
    }

    fn to_device(&self, host: &[f32]) -> Result<CudaSlice<f32>> {
        if host.is_empty() {
            return self
                .stream
                .alloc_zeros::<f32>(0)
                .map_err(|e| nccl_err("cuMemAlloc", e));
        }
        self.stream
            .clone_htod(host)
            .map_err(|e| nccl_err("host-to-device copy", e))
    }

    fn to_host(&self, dev: &CudaSlice<f32>, out: &mut [f32]) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        self.stream
            .memcpy_dtoh(dev, out)
            .map_err(|e| nccl_err("device-to-host copy", e))?;
        self.stream
            .synchronize()
            .map_err(|e| nccl_err("cuStreamSynchronize", e))
    }
}

impl ProcessGroup for NcclGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn backend(&self) -> &'static str {
        "nccl"
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn all_reduce(&self, buf: &mut [f32], op: ReduceOp) -> Result<()> {
        let mut dev = self.to_device(buf)?;
        self.all_reduce_device(&mut dev, op)?;
        self.to_host(&dev, buf)
    }

    fn all_gather(&self, input: &[f32]) -> Result<Vec<f32>> {
        let dev = self.to_device(input)?;
        let out = self.all_gather_device(&dev)?;
        let mut host = vec![0.0f32; input.len() * self.world];
        self.to_host(&out, &mut host)?;
        Ok(host)
    }

    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        let mut dev = self.to_device(buf)?;
        self.broadcast_device(&mut dev, root)?;
        self.to_host(&dev, buf)
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        self.store.broadcast_bytes(bytes, root)
    }

    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.store.all_gather_bytes(bytes)
    }

    fn barrier(&self) -> Result<()> {
        // Local GPU work first, then every rank.
        {
            let deadline = Instant::now() + self.timeout;
            let mut comm = self.lock_comm()?;
            self.wait(&mut comm, "barrier", deadline)?;
        }
        self.store.barrier()
    }
}
