//! Launching data-parallel workers: the `--multiprocessing-distributed` arithmetic of the
//! PyTorch reference, worker processes of the current executable, and ranks as threads.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::error::{DistributedError, Result};
use crate::group::ProcessGroup;
use crate::local::LocalGroup;
use crate::rendezvous::{ENV_LOCAL_RANK, ENV_LOCAL_WORLD_SIZE, RendezvousConfig, check_rank};
use crate::tcp::TcpGroup;

/// Set (to `1`) in the environment of processes started by [`spawn_workers`]: a worker must not
/// spawn workers itself.
pub const ENV_WORKER: &str = "SSL_DIST_WORKER";

/// The `--dist-backend` of the CLI; in config files by name (`"tcp"`, `"gloo"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DistBackend {
    /// Ranks are threads of one process ([`LocalGroup`]); CPU data parallelism and tests.
    Local,
    /// Ranks are processes talking TCP through rank 0 ([`TcpGroup`]); CPU, several machines.
    /// `gloo` is accepted as a name for it, so reference command lines keep working.
    Tcp,
    /// Ranks are processes, one per GPU, talking NCCL (feature `nccl`).
    Nccl,
}

impl DistBackend {
    /// `local`, `tcp` (or `gloo`), `nccl`.
    pub fn from_name(name: &str) -> Result<DistBackend> {
        match name.to_ascii_lowercase().as_str() {
            "local" => Ok(DistBackend::Local),
            "tcp" | "gloo" => Ok(DistBackend::Tcp),
            "nccl" => Ok(DistBackend::Nccl),
            other => Err(DistributedError::InvalidConfig(format!(
                "unknown --dist-backend `{other}` (expected local, tcp, gloo or nccl)"
            ))),
        }
    }

    /// Whether this build can run the backend (`nccl` needs the `nccl` feature).
    pub fn is_available(self) -> bool {
        match self {
            DistBackend::Local | DistBackend::Tcp => true,
            DistBackend::Nccl => cfg!(feature = "nccl"),
        }
    }
}

impl TryFrom<String> for DistBackend {
    type Error = DistributedError;
    fn try_from(s: String) -> Result<Self> {
        DistBackend::from_name(&s)
    }
}

impl From<DistBackend> for String {
    fn from(b: DistBackend) -> String {
        b.to_string()
    }
}

impl FromStr for DistBackend {
    type Err = DistributedError;
    fn from_str(s: &str) -> Result<Self> {
        DistBackend::from_name(s)
    }
}

impl fmt::Display for DistBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DistBackend::Local => "local",
            DistBackend::Tcp => "tcp",
            DistBackend::Nccl => "nccl",
        })
    }
}

/// Joins a process group of one of the multi-process backends (`tcp`/`gloo`, `nccl`).
///
/// `local_device` is the GPU index of this process for `nccl` (its local rank) and ignored for
/// `tcp`. The `local` backend has no processes to join: start its ranks with [`run_local`].
pub fn init_process_group(
    backend: DistBackend,
    config: &RendezvousConfig,
    local_device: usize,
) -> Result<Box<dyn ProcessGroup>> {
    match backend {
        DistBackend::Tcp => Ok(Box::new(TcpGroup::connect(config)?)),
        DistBackend::Local => Err(DistributedError::InvalidConfig(
            "the local backend runs ranks as threads of one process: start them with \
             run_local (no --dist-url rendezvous)"
                .into(),
        )),
        #[cfg(feature = "nccl")]
        DistBackend::Nccl => Ok(Box::new(crate::nccl::NcclGroup::connect(
            config,
            local_device,
        )?)),
        #[cfg(not(feature = "nccl"))]
        DistBackend::Nccl => {
            let _ = local_device;
            Err(DistributedError::BackendUnavailable(
                "this build has no NCCL backend: rebuild with the cargo feature `nccl`".into(),
            ))
        }
    }
}

/// One worker's place in a `--multiprocessing-distributed` run, computed as the reference
/// (`main_moco.py` / `main_mhcl.py`, `main_worker`):
///
/// ```text
/// world_size = ngpus_per_node * world_size          # --world-size counts nodes
/// rank       = rank * ngpus_per_node + gpu          # --rank is the node rank
/// batch_size = int(batch_size / ngpus_per_node)     # --batch-size is the total over a node
/// workers    = int((workers + ngpus_per_node - 1) / ngpus_per_node)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLayout {
    /// Global rank: `node_rank * nproc_per_node + local_rank`.
    pub rank: usize,
    /// Number of processes: `nnodes * nproc_per_node`.
    pub world_size: usize,
    /// Index of this process on its node (its GPU).
    pub local_rank: usize,
    /// Processes per node.
    pub nproc_per_node: usize,
    /// Per-process batch size: `batch_size / nproc_per_node` (integer division).
    pub batch_size: usize,
    /// Per-process data-loading workers: `ceil(workers / nproc_per_node)`.
    pub workers: usize,
}

impl WorkerLayout {
    /// Computes the layout; errors when a number is out of range (no node, node rank >= nodes,
    /// local rank >= processes per node, a batch smaller than the number of processes).
    pub fn new(
        node_rank: usize,
        nnodes: usize,
        nproc_per_node: usize,
        local_rank: usize,
        batch_size: usize,
        workers: usize,
    ) -> Result<WorkerLayout> {
        if nproc_per_node == 0 {
            return Err(DistributedError::InvalidConfig(
                "--nproc-per-node must be at least 1 (no GPU visible? pass it explicitly)".into(),
            ));
        }
        if nnodes == 0 {
            return Err(DistributedError::InvalidConfig(
                "--world-size (number of nodes) must be at least 1".into(),
            ));
        }
        if node_rank >= nnodes {
            return Err(DistributedError::InvalidConfig(format!(
                "node rank {node_rank} (--rank) is not below the number of nodes {nnodes} \
                 (--world-size)"
            )));
        }
        if local_rank >= nproc_per_node {
            return Err(DistributedError::InvalidConfig(format!(
                "local rank {local_rank} is not below --nproc-per-node {nproc_per_node}"
            )));
        }
        if batch_size < nproc_per_node {
            return Err(DistributedError::InvalidConfig(format!(
                "batch size {batch_size} is smaller than the {nproc_per_node} processes per node \
                 it is split over"
            )));
        }
        let world_size = nnodes * nproc_per_node;
        let rank = node_rank * nproc_per_node + local_rank;
        check_rank(rank, world_size)?;
        Ok(WorkerLayout {
            rank,
            world_size,
            local_rank,
            nproc_per_node,
            batch_size: batch_size / nproc_per_node,
            workers: workers.div_ceil(nproc_per_node),
        })
    }

    /// The layout of a process started by an external launcher (torchrun, Slurm) with `env://`:
    /// `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`. `batch_size` and `workers` keep
    /// the meaning they have with `--multiprocessing-distributed` (totals over one node), so both
    /// launch styles train with the same per-process batch for the same flags.
    pub fn from_launcher(
        rank: usize,
        world_size: usize,
        local_rank: usize,
        local_world_size: usize,
        batch_size: usize,
        workers: usize,
    ) -> Result<WorkerLayout> {
        check_rank(rank, world_size)?;
        if local_world_size == 0 || !world_size.is_multiple_of(local_world_size) {
            return Err(DistributedError::InvalidConfig(format!(
                "WORLD_SIZE {world_size} is not a multiple of LOCAL_WORLD_SIZE {local_world_size}"
            )));
        }
        if rank % local_world_size != local_rank {
            return Err(DistributedError::InvalidConfig(format!(
                "RANK {rank} and LOCAL_RANK {local_rank} disagree with LOCAL_WORLD_SIZE \
                 {local_world_size} (expected RANK = node * LOCAL_WORLD_SIZE + LOCAL_RANK)"
            )));
        }
        WorkerLayout::new(
            rank / local_world_size,
            world_size / local_world_size,
            local_world_size,
            local_rank,
            batch_size,
            workers,
        )
    }

    /// Global rank 0: the process that prints and saves.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Local rank 0: the reference prints and saves checkpoints on the first process of every
    /// node (`args.rank % ngpus_per_node == 0`).
    pub fn is_node_main(&self) -> bool {
        self.local_rank == 0
    }
}

/// Number of GPUs this process can see, the default of `--nproc-per-node` (the reference's
/// `ngpus_per_node = torch.cuda.device_count()`).
///
/// With the `nccl` feature and a CUDA driver: the driver's device count. Otherwise, from
/// `CUDA_VISIBLE_DEVICES` when set, else the NVIDIA driver's entries in
/// `/proc/driver/nvidia/gpus`; 0 when there is none.
pub fn visible_gpu_count() -> usize {
    #[cfg(feature = "nccl")]
    if let Some(n) = crate::nccl::driver_device_count() {
        return n;
    }
    if let Some(v) = std::env::var_os("CUDA_VISIBLE_DEVICES") {
        let v = v.to_string_lossy();
        // CUDA stops at the first invalid entry ("-1" hides every device).
        return v
            .split(',')
            .map(str::trim)
            .take_while(|d| !d.is_empty() && !d.starts_with('-'))
            .count();
    }
    std::fs::read_dir("/proc/driver/nvidia/gpus")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The local rank of this process if it was started by [`spawn_workers`], else `None`.
///
/// Errors when the marker is set but `LOCAL_RANK` / `LOCAL_WORLD_SIZE` are missing or invalid.
pub fn spawned_worker() -> Result<Option<(usize, usize)>> {
    if std::env::var_os(ENV_WORKER).is_none() {
        return Ok(None);
    }
    let num = |name: &str| -> Result<usize> {
        let v = std::env::var(name).map_err(|_| DistributedError::Env {
            name: name.to_string(),
            reason: format!("not set in a worker process ({ENV_WORKER} is set)"),
        })?;
        v.trim().parse().map_err(|_| DistributedError::Env {
            name: name.to_string(),
            reason: format!("`{v}` is not a non-negative integer"),
        })
    };
    let local = num(ENV_LOCAL_RANK)?;
    let n = num(ENV_LOCAL_WORLD_SIZE)?;
    if local >= n {
        return Err(DistributedError::Env {
            name: ENV_LOCAL_RANK.into(),
            reason: format!("{local} is not below {ENV_LOCAL_WORLD_SIZE}={n}"),
        });
    }
    Ok(Some((local, n)))
}

/// What [`spawn_workers`] starts: `nproc` copies of `program args...`.
#[derive(Debug, Clone)]
pub struct SpawnConfig {
    /// Number of worker processes (one per GPU of this node).
    pub nproc: usize,
    /// Executable; default: the current executable.
    pub program: Option<PathBuf>,
    /// Arguments; default: this process's arguments (without `argv[0]`).
    pub args: Option<Vec<OsString>>,
    /// Extra environment for every worker (e.g. `MASTER_ADDR`).
    pub envs: Vec<(OsString, OsString)>,
    /// After the first worker fails, how long the others get to fail on their own (their
    /// collectives error out as soon as the dead rank's sockets close) before they are killed.
    pub failure_grace: Duration,
}

impl SpawnConfig {
    /// `nproc` workers of the current executable with the current arguments, grace 30 s.
    pub fn new(nproc: usize) -> Self {
        SpawnConfig {
            nproc,
            program: None,
            args: None,
            envs: Vec::new(),
            failure_grace: Duration::from_secs(30),
        }
    }

    /// Sets the executable.
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = Some(program.into());
        self
    }

    /// Sets the arguments.
    pub fn with_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Adds an environment variable for every worker.
    pub fn with_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Sets the grace period after a failure.
    pub fn with_failure_grace(mut self, grace: Duration) -> Self {
        self.failure_grace = grace;
        self
    }
}

/// Starts `config.nproc` worker processes, as `torch.multiprocessing.spawn`: each gets
/// `LOCAL_RANK=i`, `LOCAL_WORLD_SIZE=nproc` and [`ENV_WORKER`]`=1` in its environment and
/// computes its global rank with [`WorkerLayout`]. Wait for them with [`Workers::wait`].
pub fn spawn_workers(config: &SpawnConfig) -> Result<Workers> {
    if config.nproc == 0 {
        return Err(DistributedError::InvalidConfig(
            "cannot spawn 0 worker processes".into(),
        ));
    }
    let program = match &config.program {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|e| {
            DistributedError::Launch(format!("cannot find the current executable: {e}"))
        })?,
    };
    let args: Vec<OsString> = match &config.args {
        Some(a) => a.clone(),
        None => std::env::args_os().skip(1).collect(),
    };
    let mut workers = Workers {
        children: Vec::with_capacity(config.nproc),
        failure_grace: config.failure_grace,
    };
    for local in 0..config.nproc {
        let child = Command::new(&program)
            .args(&args)
            .envs(config.envs.iter().map(|(k, v)| (k, v)))
            .env(ENV_WORKER, "1")
            .env(ENV_LOCAL_RANK, local.to_string())
            .env(ENV_LOCAL_WORLD_SIZE, config.nproc.to_string())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| {
                DistributedError::Launch(format!(
                    "cannot start worker {local} ({}): {e}",
                    program.display()
                ))
            })?;
        workers.children.push(Some(child));
    }
    Ok(workers)
}

/// Worker processes started by [`spawn_workers`]. Dropping it kills the ones still running.
#[derive(Debug)]
pub struct Workers {
    children: Vec<Option<Child>>,
    failure_grace: Duration,
}

impl Workers {
    /// Process ids, by local rank.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().flatten().map(Child::id).collect()
    }

    /// Waits for every worker. Succeeds when all exit with status 0. When one fails, the others
    /// get the grace period to fail on their own, then are killed; the error names the first
    /// failed local rank and its exit status.
    pub fn wait(mut self) -> Result<()> {
        let n = self.children.len();
        let mut status: Vec<Option<ExitStatus>> = vec![None; n];
        let mut first_failure: Option<(usize, ExitStatus, Instant)> = None;
        loop {
            for (i, c) in self.children.iter_mut().enumerate() {
                if status[i].is_some() {
                    continue;
                }
                if let Some(child) = c {
                    match child.try_wait() {
                        Ok(Some(st)) => {
                            status[i] = Some(st);
                            *c = None;
                            if !st.success() && first_failure.is_none() {
                                first_failure = Some((i, st, Instant::now()));
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            return Err(DistributedError::Launch(format!(
                                "cannot wait for worker {i}: {e}"
                            )));
                        }
                    }
                }
            }
            if status.iter().all(Option::is_some) {
                break;
            }
            if let Some((_, _, t)) = first_failure
                && t.elapsed() >= self.failure_grace
            {
                self.kill_all();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match first_failure {
            None => Ok(()),
            Some((i, st, _)) => {
                let all: Vec<String> = status
                    .iter()
                    .enumerate()
                    .map(|(j, s)| match s {
                        Some(s) => format!("{j}: {s}"),
                        None => format!("{j}: killed"),
                    })
                    .collect();
                Err(DistributedError::Launch(format!(
                    "worker process with local rank {i} failed first ({st}); by local rank: [{}]",
                    all.join(", ")
                )))
            }
        }
    }

    fn kill_all(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.iter_mut().for_each(|c| *c = None);
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Runs `f` on `nproc` threads, each with its rank's [`LocalGroup`] (the `local` backend of
/// `--multiprocessing-distributed`), and returns the results by rank.
///
/// A rank that returns early or panics drops its group handle, so the other ranks' next
/// collective fails with [`DistributedError::PeerGone`] instead of hanging; a panic is reported
/// as a [`DistributedError::Launch`] error naming the rank.
pub fn run_local<R, F>(nproc: usize, timeout: Duration, f: F) -> Result<Vec<R>>
where
    R: Send,
    F: Fn(LocalGroup) -> R + Sync,
{
    let groups = LocalGroup::with_timeout(nproc, timeout)?;
    let f = &f;
    std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(nproc);
        for g in groups {
            let rank = g.rank();
            let h = std::thread::Builder::new()
                .name(format!("rank-{rank}"))
                .spawn_scoped(s, move || f(g))
                .map_err(|e| DistributedError::Launch(format!("cannot start rank {rank}: {e}")))?;
            handles.push(h);
        }
        let mut out = Vec::with_capacity(nproc);
        let mut panicked = None;
        for (rank, h) in handles.into_iter().enumerate() {
            match h.join() {
                Ok(r) => out.push(r),
                Err(p) => {
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic".into());
                    panicked.get_or_insert((rank, msg));
                }
            }
        }
        match panicked {
            Some((rank, msg)) => Err(DistributedError::Launch(format!(
                "rank {rank} panicked: {msg}"
            ))),
            None => Ok(out),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_reference_arithmetic() {
        // 2 nodes x 8 GPUs, node 1, GPU 3, batch 256 per node, 32 workers per node
        let l = WorkerLayout::new(1, 2, 8, 3, 256, 32).unwrap();
        assert_eq!(
            (l.rank, l.world_size, l.batch_size, l.workers),
            (11, 16, 32, 4)
        );
        assert!(!l.is_main() && !l.is_node_main());
        let l = WorkerLayout::new(0, 1, 3, 0, 256, 5).unwrap();
        assert_eq!(
            (l.rank, l.world_size, l.batch_size, l.workers),
            (0, 3, 85, 2)
        );
        assert!(l.is_main());
        assert!(WorkerLayout::new(2, 2, 8, 0, 256, 1).is_err());
        assert!(WorkerLayout::new(0, 1, 8, 8, 256, 1).is_err());
        assert!(WorkerLayout::new(0, 1, 0, 0, 256, 1).is_err());
        assert!(WorkerLayout::new(0, 0, 1, 0, 256, 1).is_err());
        assert!(WorkerLayout::new(0, 1, 8, 0, 4, 1).is_err());
    }

    #[test]
    fn launcher_layout_equals_spawned_layout() {
        let a = WorkerLayout::from_launcher(11, 16, 3, 8, 256, 32).unwrap();
        assert_eq!(a, WorkerLayout::new(1, 2, 8, 3, 256, 32).unwrap());
        assert!(WorkerLayout::from_launcher(11, 16, 2, 8, 256, 32).is_err());
        assert!(WorkerLayout::from_launcher(1, 6, 1, 4, 256, 32).is_err());
        assert!(WorkerLayout::from_launcher(6, 6, 0, 3, 256, 32).is_err());
    }

    #[test]
    fn backend_names() {
        assert_eq!(DistBackend::from_name("NCCL").unwrap(), DistBackend::Nccl);
        assert_eq!(DistBackend::from_name("gloo").unwrap(), DistBackend::Tcp);
        assert_eq!("local".parse::<DistBackend>().unwrap(), DistBackend::Local);
        assert!(DistBackend::from_name("mpi").is_err());
        assert!(
            init_process_group(DistBackend::Local, &RendezvousConfig::new("env://"), 0).is_err()
        );
    }

    #[test]
    fn run_local_reports_a_panicking_rank_and_the_others_fail() {
        let res = run_local(3, Duration::from_secs(20), |g| {
            if g.rank() == 1 {
                panic!("boom");
            }
            g.barrier()
        });
        let e = res.unwrap_err();
        assert!(e.to_string().contains("rank 1 panicked: boom"), "{e}");

        let res = run_local(2, Duration::from_secs(20), |g| {
            if g.rank() == 1 {
                return Ok(()); // leaves without the barrier
            }
            g.barrier()
        })
        .unwrap();
        assert!(
            matches!(res[0], Err(DistributedError::PeerGone(_))),
            "{res:?}"
        );
    }
}
