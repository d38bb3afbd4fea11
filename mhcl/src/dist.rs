//! Data parallelism for `mhcl pretrain` and `mhcl lincls`: how the distributed flags of
//! `main_mhcl.py` / `main_lincls.py` become ranks ([`plan`], [`Launch`]), how the ranks are
//! started ([`run_threads`], [`join`], [`spawn`]), and what a rank needs besides the MoCo
//! primitives of `ssl-distributed` ([`RankCtx`]: seed and state broadcast from rank 0, the
//! shared stop flag, summed metrics).
//!
//! | flags | ranks |
//! | --- | --- |
//! | none (or a world of 1) | this process alone, no process group |
//! | `--dist-backend local --multiprocessing-distributed [--nproc-per-node N]` | N threads of this process ([`ssl_distributed::LocalGroup`]) |
//! | `--dist-backend tcp\|nccl --multiprocessing-distributed --dist-url URL [--world-size NODES --rank NODE]` | N worker processes, copies of this one ([`ssl_distributed::spawn_workers`]); this process waits |
//! | `--dist-backend tcp\|nccl --dist-url URL --world-size W --rank R` (or `env://` with torchrun's variables) | this process is rank R of W |
//!
//! With `--multiprocessing-distributed`, as in the reference: rank = node rank * N + local rank,
//! world = nodes * N, per-rank batch = `--batch-size` / N (which must divide evenly), per-rank
//! loader threads = ceil(`--workers` / N) ([`WorkerLayout`]). N (`--nproc-per-node`) defaults to
//! the number of visible GPUs, 1 when there is none (the reference's `ngpus_per_node`).
//!
//! Every rank builds the model from the same seed, and rank 0's seed and weights are broadcast
//! before training, so all ranks start identical; the data are split as `DistributedSampler`
//! does (the loader's rank / world size). Only rank 0 prints, writes metrics and saves
//! checkpoints. A rank that fails makes the whole run fail with that rank's error: the other
//! ranks' next collective reports the lost peer, and the launcher reports the first error.

use std::sync::Mutex;

use ssl_distributed::{
    DEFAULT_TIMEOUT, DistBackend, DistToken, DistUrl, ENV_LOCAL_WORLD_SIZE, ENV_WORLD_SIZE,
    ProcessGroup, ReduceOp, RendezvousConfig, SpawnConfig, WorkerLayout,
};
#[cfg(test)]
use ssl_models::weights::RawTensor;
use ssl_models::weights::TensorMap;

use crate::config::DistConfig;
use crate::error::{MhclError, Result};

/// Environment variable of the reference's `env://` launch style naming this node's rank when
/// `--multiprocessing-distributed` is on (torchrun's `RANK` otherwise).
const ENV_RANK: &str = "RANK";

fn arg<E: std::fmt::Display>(e: E) -> MhclError {
    MhclError::arg(e.to_string())
}

/// What [`plan`] decides from: the data-parallel settings and the node's batch and loader
/// threads.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchRequest {
    /// `dist` of the run's config.
    pub dist: DistConfig,
    /// `training.batch_size`: the total of one node.
    pub batch_size: usize,
    /// `data.workers`: the total of one node.
    pub workers: usize,
}

/// How a command runs, decided by [`plan`].
#[derive(Clone, Debug, PartialEq)]
pub enum Launch {
    /// One process, no process group.
    Single,
    /// `--dist-backend local`: one thread per layout, in this process.
    Threads {
        /// The layout of each rank, by rank.
        layouts: Vec<WorkerLayout>,
    },
    /// `--multiprocessing-distributed` with a process backend: start `nproc` worker processes
    /// (copies of this one) and wait for them.
    Spawn {
        /// Worker processes to start.
        nproc: usize,
        /// The layout of local rank 0 (global batch, world size) for the checks done first.
        layout: WorkerLayout,
    },
    /// This process is one rank of a process group: join it and train.
    Join {
        /// `tcp` or `nccl`.
        backend: DistBackend,
        /// Rendezvous with this process's rank and the world size.
        config: RendezvousConfig,
        /// This process's layout.
        layout: WorkerLayout,
    },
}

impl Launch {
    /// A layout with the per-rank batch and world size of the run (for `Single`: the flags').
    pub fn layout(&self, batch_size: usize, workers: usize) -> WorkerLayout {
        match self {
            Launch::Single => single_layout(batch_size, workers),
            Launch::Threads { layouts } => layouts[0],
            Launch::Spawn { layout, .. } | Launch::Join { layout, .. } => *layout,
        }
    }
}

fn single_layout(batch_size: usize, workers: usize) -> WorkerLayout {
    WorkerLayout {
        rank: 0,
        world_size: 1,
        local_rank: 0,
        nproc_per_node: 1,
        batch_size,
        workers,
    }
}

/// Decides how the flags run, from this process's environment: whether it is a worker started
/// by [`spawn`], the torchrun-style variables for `env://`, and the visible GPUs. Every error is
/// found here, before any thread, process or socket is started.
pub fn plan(flags: &LaunchRequest) -> Result<Launch> {
    let worker = ssl_distributed::spawned_worker().map_err(arg)?;
    plan_with(
        flags,
        worker,
        &|name| std::env::var(name).ok(),
        ssl_distributed::visible_gpu_count(),
    )
}

/// [`plan`] with the environment given: `worker` = `(local rank, processes on the node)` of a
/// spawned worker, `env` reads variables, `gpus` = visible GPUs.
pub fn plan_with(
    flags: &LaunchRequest,
    worker: Option<(usize, usize)>,
    env: &dyn Fn(&str) -> Option<String>,
    gpus: usize,
) -> Result<Launch> {
    let backend = flags.dist.backend;
    if flags.batch_size == 0 {
        return Err(MhclError::arg("training.batch_size must be positive"));
    }
    if flags.dist.nproc_per_node == Some(0) {
        return Err(MhclError::arg("dist.nproc_per_node must be at least 1"));
    }
    let is_env = DistUrl::parse(&flags.dist.url).is_ok_and(|u| u == DistUrl::Env);
    if let Some((local, nproc)) = worker {
        // a process started by `spawn`: its parent checked the flags already
        let (node, nodes) = node_rank(flags, is_env, env)?;
        let layout = worker_layout(flags, node, nodes, nproc, local)?;
        let config = RendezvousConfig::new(flags.dist.url.clone())
            .with_rank(layout.rank)
            .with_world_size(layout.world_size)
            .with_token(token(flags)?);
        return Ok(Launch::Join {
            backend,
            config,
            layout,
        });
    }
    if flags.dist.multiprocessing {
        let nproc = flags.dist.nproc_per_node.unwrap_or(gpus.max(1));
        let (node, nodes) = node_rank(flags, is_env, env)?;
        let layouts = (0..nproc)
            .map(|local| worker_layout(flags, node, nodes, nproc, local))
            .collect::<Result<Vec<_>>>()?;
        return match backend {
            DistBackend::Local if nodes > 1 => Err(MhclError::arg(format!(
                "dist.backend local runs its ranks as threads of one process on one node: \
                 dist.world_size must be 1 or left out, got {nodes}"
            ))),
            DistBackend::Local => Ok(Launch::Threads { layouts }),
            _ => {
                check_available(backend)?;
                DistUrl::parse(&flags.dist.url).map_err(arg)?;
                Ok(Launch::Spawn {
                    nproc,
                    layout: layouts[0],
                })
            }
        };
    }
    if let Some(n) = flags.dist.nproc_per_node.filter(|&n| n > 1) {
        return Err(MhclError::arg(format!(
            "dist.nproc_per_node {n} needs dist.multiprocessing (it is the number of \
             ranks that flag starts on this node)"
        )));
    }
    let world = match flags.dist.world_size {
        -1 if is_env => match env(ENV_WORLD_SIZE) {
            Some(v) => v.trim().parse::<usize>().map_err(|_| {
                MhclError::arg(format!(
                    "{ENV_WORLD_SIZE}=`{v}` is not a non-negative integer"
                ))
            })?,
            None => 1,
        },
        -1 => 1,
        w if w >= 1 => w as usize,
        w => {
            return Err(MhclError::arg(format!(
                "dist.world_size must be -1 (one process) or at least 1, got {w}"
            )));
        }
    };
    let rank = match flags.dist.rank {
        -1 => None,
        r if r >= 0 => Some(r as usize),
        r => {
            return Err(MhclError::arg(format!(
                "dist.rank must be -1 (unset) or at least 0, got {r}"
            )));
        }
    };
    if world <= 1 {
        if let Some(r) = rank.filter(|&r| r >= world) {
            return Err(MhclError::arg(format!(
                "dist.rank {r} is not below the world size {world}"
            )));
        }
        return Ok(Launch::Single);
    }
    if backend == DistBackend::Local {
        return Err(MhclError::arg(format!(
            "dist.backend local starts its ranks as threads of this process: use \
             dist.multiprocessing dist.nproc_per_node N instead of dist.world_size {world}"
        )));
    }
    check_available(backend)?;
    let mut config = RendezvousConfig::new(flags.dist.url.clone())
        .with_world_size(world)
        .with_token(token(flags)?);
    if let Some(r) = rank {
        config = config.with_rank(r);
    }
    let rdv = config.resolve_with(env).map_err(arg)?;
    let local_world = match env(ENV_LOCAL_WORLD_SIZE) {
        Some(v) => v.trim().parse::<usize>().map_err(|_| {
            MhclError::arg(format!(
                "{ENV_LOCAL_WORLD_SIZE}=`{v}` is not a non-negative integer"
            ))
        })?,
        None => 1,
    };
    if local_world > 0 && !flags.batch_size.is_multiple_of(local_world) {
        return Err(MhclError::arg(format!(
            "training.batch_size {} is not divisible by the {local_world} processes of this node \
             ({ENV_LOCAL_WORLD_SIZE}); each process takes batch / {local_world}",
            flags.batch_size
        )));
    }
    let layout = WorkerLayout::from_launcher(
        rdv.rank,
        rdv.world_size,
        rdv.local_rank.unwrap_or(rdv.rank % local_world.max(1)),
        local_world,
        flags.batch_size,
        flags.workers,
    )
    .map_err(arg)?;
    Ok(Launch::Join {
        backend,
        config: config.with_rank(rdv.rank),
        layout,
    })
}

/// `(node rank, nodes)` of a `dist.multiprocessing` run.
fn node_rank(
    flags: &LaunchRequest,
    is_env: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(usize, usize)> {
    let from_env =
        |name: &str| -> Result<Option<i64>> {
            match env(name) {
                Some(v) if is_env => v.trim().parse::<i64>().map(Some).map_err(|_| {
                    MhclError::arg(format!("{name}=`{v}` is not a non-negative integer"))
                }),
                _ => Ok(None),
            }
        };
    let world = match flags.dist.world_size {
        -1 => from_env(ENV_WORLD_SIZE)?.unwrap_or(1),
        w => w,
    };
    if world < 1 {
        return Err(MhclError::arg(format!(
            "dist.world_size (the number of nodes) must be at least 1, got {world}"
        )));
    }
    let nodes = world as usize;
    let rank = match flags.dist.rank {
        -1 => match from_env(ENV_RANK)? {
            Some(r) => r,
            None if nodes == 1 => 0,
            None => {
                return Err(MhclError::arg(format!(
                    "dist.rank (the rank of this node) is needed with dist.world_size {nodes}"
                )));
            }
        },
        r => r,
    };
    if rank < 0 || rank as usize >= nodes {
        return Err(MhclError::arg(format!(
            "dist.rank {rank} (the rank of this node) is not below dist.world_size {nodes} (the \
             number of nodes)"
        )));
    }
    Ok((rank as usize, nodes))
}

fn worker_layout(
    flags: &LaunchRequest,
    node: usize,
    nodes: usize,
    nproc: usize,
    local: usize,
) -> Result<WorkerLayout> {
    if !flags.batch_size.is_multiple_of(nproc) {
        return Err(MhclError::arg(format!(
            "training.batch_size {} is not divisible by the {nproc} ranks per node (dist.nproc_per_node); \
             each rank takes batch / {nproc}",
            flags.batch_size
        )));
    }
    WorkerLayout::new(node, nodes, nproc, local, flags.batch_size, flags.workers).map_err(arg)
}

fn check_available(backend: DistBackend) -> Result<()> {
    if backend.is_available() {
        return Ok(());
    }
    Err(MhclError::arg(format!(
        "dist.backend {backend} needs a build with the cargo feature `nccl` (this build has \
         the CPU backends `local` and `tcp`)"
    )))
}

/// `init()` run right after seeding `device` with `seed`, while no other thread of the process
/// seeds it: the device's generator is shared by every thread, so ranks that run as threads
/// (and runs side by side in one process) initialise one at a time and each gets exactly the
/// weights its seed gives.
pub(crate) fn seeded_init<T>(
    device: &burn::prelude::Device,
    seed: u64,
    init: impl FnOnce() -> T,
) -> T {
    static LOCK: Mutex<()> = Mutex::new(());
    let _held = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    device.seed(seed);
    init()
}

/// What one rank knows about the run: its process group (none for a single process) and its
/// place ([`WorkerLayout`]: rank, world size, local rank, per-rank batch and loader threads).
#[derive(Clone, Copy)]
pub struct RankCtx<'a> {
    group: Option<&'a dyn ProcessGroup>,
    layout: WorkerLayout,
}

impl std::fmt::Debug for RankCtx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RankCtx")
            .field("backend", &self.group.map(|g| g.backend()))
            .field("layout", &self.layout)
            .finish()
    }
}

impl<'a> RankCtx<'a> {
    /// The only rank of a single-process run.
    pub fn single(batch_size: usize, workers: usize) -> Self {
        RankCtx {
            group: None,
            layout: single_layout(batch_size, workers),
        }
    }

    /// A rank of `group` with `layout` (rank and world size must agree with the group's).
    pub fn new(group: &'a dyn ProcessGroup, layout: WorkerLayout) -> Result<Self> {
        if group.rank() != layout.rank || group.world_size() != layout.world_size {
            return Err(MhclError::Distributed(format!(
                "the process group has rank {} of {}, the layout rank {} of {}",
                group.rank(),
                group.world_size(),
                layout.rank,
                layout.world_size
            )));
        }
        Ok(RankCtx {
            group: Some(group),
            layout,
        })
    }

    /// The layout.
    pub fn layout(&self) -> &WorkerLayout {
        &self.layout
    }

    /// Global rank.
    pub fn rank(&self) -> usize {
        self.layout.rank
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.layout.world_size
    }

    /// Images per step on this rank.
    pub fn batch_size(&self) -> usize {
        self.layout.batch_size
    }

    /// Images per step over all ranks.
    pub fn global_batch_size(&self) -> usize {
        self.layout.batch_size * self.layout.world_size
    }

    /// Rank 0: the rank that prints, writes metrics and saves checkpoints.
    pub fn is_main(&self) -> bool {
        self.layout.rank == 0
    }

    /// The process group when there are several ranks (what `Mhcl::train_step`
    /// takes), else `None`.
    pub fn group(&self) -> Option<&'a dyn ProcessGroup> {
        self.group.filter(|g| g.world_size() > 1)
    }

    /// The GPU index of this rank when it is one of several (its local rank), else `None`.
    pub fn device_index(&self) -> Option<usize> {
        self.group().map(|_| self.layout.local_rank)
    }

    /// Rank 0's `seed` on every rank.
    pub fn broadcast_seed(&self, seed: u64) -> Result<u64> {
        let Some(g) = self.group() else {
            return Ok(seed);
        };
        let mut bytes = seed.to_le_bytes().to_vec();
        g.broadcast_bytes(&mut bytes, 0).map_err(arg)?;
        let b: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
            MhclError::Distributed(format!("received a seed of {} bytes", bytes.len()))
        })?;
        Ok(u64::from_le_bytes(b))
    }

    /// Rank 0's tensors on every rank (the same names and shapes are expected everywhere).
    pub fn broadcast_tensors(&self, tensors: TensorMap) -> Result<TensorMap> {
        let Some(g) = self.group() else {
            return Ok(tensors);
        };
        let mut bytes = if g.rank() == 0 {
            encode_tensors(&tensors)?
        } else {
            Vec::new()
        };
        g.broadcast_bytes(&mut bytes, 0).map_err(arg)?;
        if g.rank() == 0 {
            return Ok(tensors);
        }
        decode_tensors(&bytes)
    }

    /// True on every rank when `flag` is true on any rank (all ranks must call it).
    pub fn any(&self, flag: bool) -> Result<bool> {
        let Some(g) = self.group() else {
            return Ok(flag);
        };
        let mut v = [f32::from(u8::from(flag))];
        g.all_reduce(&mut v, ReduceOp::Max).map_err(arg)?;
        Ok(v[0] > 0.0)
    }

    /// Sums `values` over the ranks, in place (all ranks must call it).
    pub fn sum(&self, values: &mut [f64]) -> Result<()> {
        let Some(g) = self.group() else {
            return Ok(());
        };
        let mut v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
        g.all_reduce(&mut v, ReduceOp::Sum).map_err(arg)?;
        for (d, s) in values.iter_mut().zip(v) {
            *d = f64::from(s);
        }
        Ok(())
    }
}

/// Tensors as safetensors bytes for a broadcast.
fn encode_tensors(tensors: &TensorMap) -> Result<Vec<u8>> {
    Ok(ssl_models::weights::safetensors_bytes(tensors)?)
}

fn decode_tensors(bytes: &[u8]) -> Result<TensorMap> {
    ssl_models::weights::parse_safetensors(bytes, std::path::Path::new("<broadcast>"))
        .map(|(t, _)| t)
        .map_err(|e| MhclError::Distributed(format!("received a corrupt tensor broadcast: {e}")))
}

impl Launch {
    /// Runs `f` as every rank this process hosts, as the launch says: once without a group,
    /// once per thread, or once as this process's rank of a process group. `Spawn` is done by
    /// [`spawn`] in the `mhcl` command, which starts copies of itself; `command` names the
    /// subcommand in that error.
    pub fn run_ranks<R: Send>(
        self,
        batch_size: usize,
        workers: usize,
        command: &str,
        f: impl Fn(&RankCtx) -> Result<R> + Sync,
    ) -> Result<R> {
        match self {
            Launch::Single => f(&RankCtx::single(batch_size, workers)),
            Launch::Threads { layouts } => run_threads(&layouts, f),
            Launch::Join {
                backend,
                config,
                layout,
            } => join(backend, &config, layout, f),
            Launch::Spawn { .. } => Err(MhclError::arg(format!(
                "dist.multiprocessing with dist.backend tcp or nccl starts worker \
                 processes of the `mhcl` command: run it as `mhcl {command}`"
            ))),
        }
    }
}

impl Launch {
    /// Plans the launch of a run ([`plan`]) for `dist` with the node's `batch_size` and
    /// `workers`.
    pub fn for_run(dist: &DistConfig, batch_size: usize, workers: usize) -> Result<Launch> {
        plan(&LaunchRequest {
            dist: dist.clone(),
            batch_size,
            workers,
        })
    }

    /// [`Launch::run_ranks`] for a run with an observer: the rendezvous warning goes to it
    /// first, and `f` gets it on rank 0 (the other ranks get one that observes nothing).
    pub fn run_observed<R: Send>(
        &self,
        batch_size: usize,
        workers: usize,
        command: &str,
        observer: &mut dyn crate::observe::Observer,
        f: impl Fn(&RankCtx, &mut dyn crate::observe::Observer) -> Result<R> + Sync,
    ) -> Result<R> {
        if let Some(w) = self.open_rendezvous_warning() {
            observer.notice(&w)?;
        }
        let shared = Mutex::new(observer);
        self.clone().run_ranks(batch_size, workers, command, |ctx| {
            let mut quiet = ();
            let mut guard = ctx
                .is_main()
                .then(|| shared.lock().unwrap_or_else(|p| p.into_inner()));
            match guard.as_mut() {
                Some(g) => f(ctx, &mut ***g),
                None => f(ctx, &mut quiet),
            }
        })
    }
}

/// Runs `f` on one thread per layout, each with its rank's [`RankCtx`] over a
/// [`ssl_distributed::LocalGroup`], and returns rank 0's result.
///
/// When a rank fails, the others fail at their next collective (the lost peer); the error
/// returned is the first one that happened, as `rank R: <message>`. An interruption (Ctrl-C)
/// stops every rank at the same step and is returned as rank 0's.
pub fn run_threads<R: Send>(
    layouts: &[WorkerLayout],
    f: impl Fn(&RankCtx) -> Result<R> + Sync,
) -> Result<R> {
    let first: Mutex<Option<(usize, String)>> = Mutex::new(None);
    let results = ssl_distributed::run_local(layouts.len(), DEFAULT_TIMEOUT, |group| {
        let rank = group.rank();
        let r = RankCtx::new(&group, layouts[rank]).and_then(|ctx| f(&ctx));
        if let Err(e) = &r
            && !matches!(e, MhclError::Interrupted { .. })
        {
            // recorded before this rank's group handle is dropped, so before the others
            // notice the lost peer: the first entry is the cause
            first
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert((rank, e.to_string()));
        }
        r
    })
    .map_err(|e| MhclError::Distributed(e.to_string()))?;
    let first = first.into_inner().unwrap_or_else(|p| p.into_inner());
    let rank0 = results
        .into_iter()
        .next()
        .ok_or_else(|| MhclError::Distributed("no rank ran".into()))?;
    match (rank0, first) {
        (Err(e @ MhclError::Interrupted { .. }), _) => Err(e),
        (_, Some((rank, msg))) => Err(MhclError::Distributed(format!("rank {rank}: {msg}"))),
        (r, None) => r,
    }
}

/// The rendezvous token of the flags, checked.
fn token(flags: &LaunchRequest) -> Result<Option<DistToken>> {
    flags
        .dist
        .token
        .clone()
        .map(DistToken::new)
        .transpose()
        .map_err(|e| MhclError::arg(format!("dist.token: {e}")))
}

impl Launch {
    /// The warning for a rank 0 that will listen on every interface without a token (anyone
    /// who reaches the port could join, as with PyTorch's TCPStore); the runners pass it to
    /// their observer.
    pub fn open_rendezvous_warning(&self) -> Option<String> {
        let Launch::Join { config, layout, .. } = self else {
            return None;
        };
        if layout.rank != 0 || config.token.is_some() {
            return None;
        }
        let rdv = config.resolve().ok()?;
        (rdv.world_size > 1 && rdv.listens_publicly()).then(|| {
            format!(
                "warning: rank 0 listens on every interface at port {} without a rendezvous \
                 token; any process that reaches it can join. Set MHCL_DIST_TOKEN (or \
                 --dist-token) on every rank to require a shared secret.",
                rdv.port
            )
        })
    }
}

/// Joins the process group of a [`Launch::Join`] and runs `f` as this process's rank; errors
/// are returned as `rank R: <message>`.
pub fn join<R>(
    backend: DistBackend,
    config: &RendezvousConfig,
    layout: WorkerLayout,
    f: impl FnOnce(&RankCtx) -> Result<R>,
) -> Result<R> {
    let rank = layout.rank;
    let group =
        ssl_distributed::init_process_group(backend, config, layout.local_rank).map_err(|e| {
            MhclError::Distributed(format!(
                "rank {rank}: joining the process group ({backend}, {}): {e}",
                config.url
            ))
        })?;
    let ctx = RankCtx::new(group.as_ref(), layout)?;
    f(&ctx).map_err(|e| match e {
        MhclError::Interrupted { .. } => e,
        e => MhclError::Distributed(format!("rank {rank}: {e}")),
    })
}

/// Starts `nproc` worker processes (this executable with the same arguments, as
/// `torch.multiprocessing.spawn`) and waits for them. A worker that fails makes the others
/// fail or be stopped, and the error names it; each worker prints its own error line first.
/// Ctrl-C reaches the workers through the terminal: when `stop` was requested meanwhile (the
/// command's handler), a failed wait is reported as an interruption.
pub fn spawn(nproc: usize, stop: &crate::observe::StopToken) -> Result<()> {
    let workers = ssl_distributed::spawn_workers(&SpawnConfig::new(nproc))
        .map_err(|e| MhclError::Distributed(format!("cannot start the worker processes: {e}")))?;
    match workers.wait() {
        Ok(()) => Ok(()),
        Err(_) if stop.is_stopped() => Err(MhclError::Interrupted { checkpoint: None }),
        Err(e) => Err(MhclError::Distributed(format!(
            "data-parallel run failed: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(extra: impl FnOnce(&mut LaunchRequest)) -> LaunchRequest {
        let mut f = LaunchRequest {
            dist: DistConfig::default(),
            batch_size: 64,
            workers: 4,
        };
        extra(&mut f);
        f
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn single_process_by_default() {
        assert_eq!(
            plan_with(&flags(|_| {}), None, &no_env, 0).unwrap(),
            Launch::Single
        );
        assert_eq!(
            plan_with(&flags(|f| f.dist.world_size = 1), None, &no_env, 8).unwrap(),
            Launch::Single
        );
    }

    #[test]
    fn local_threads_split_the_batch() {
        let f = flags(|f| {
            f.dist.backend = DistBackend::Local;
            f.dist.multiprocessing = true;
            f.dist.nproc_per_node = Some(2);
        });
        let Launch::Threads { layouts } = plan_with(&f, None, &no_env, 0).unwrap() else {
            panic!("threads expected");
        };
        assert_eq!(layouts.len(), 2);
        assert_eq!(
            (
                layouts[1].rank,
                layouts[1].world_size,
                layouts[1].batch_size
            ),
            (1, 2, 32)
        );
        assert_eq!(layouts[1].workers, 2);
        // default: one rank per visible GPU, at least one
        let f = flags(|f| {
            f.dist.backend = DistBackend::Local;
            f.dist.multiprocessing = true;
        });
        let Launch::Threads { layouts } = plan_with(&f, None, &no_env, 0).unwrap() else {
            panic!()
        };
        assert_eq!(layouts.len(), 1);
        let Launch::Threads { layouts } = plan_with(&f, None, &no_env, 4).unwrap() else {
            panic!()
        };
        assert_eq!(layouts.len(), 4);
    }

    #[test]
    fn spawn_and_worker_layouts_follow_the_reference() {
        let f = flags(|f| {
            f.dist.backend = DistBackend::Tcp;
            f.dist.url = "tcp://127.0.0.1:29500".into();
            f.dist.multiprocessing = true;
            f.dist.nproc_per_node = Some(4);
            f.dist.world_size = 2;
            f.dist.rank = 1;
        });
        let Launch::Spawn { nproc, layout } = plan_with(&f, None, &no_env, 0).unwrap() else {
            panic!()
        };
        assert_eq!((nproc, layout.rank, layout.world_size), (4, 4, 8));
        let Launch::Join {
            backend,
            config,
            layout,
        } = plan_with(&f, Some((3, 4)), &no_env, 0).unwrap()
        else {
            panic!()
        };
        assert_eq!(backend, DistBackend::Tcp);
        assert_eq!((config.rank, config.world_size), (Some(7), Some(8)));
        assert_eq!((layout.rank, layout.batch_size, layout.workers), (7, 16, 1));
    }

    #[test]
    fn explicit_ranks_and_env() {
        let f = flags(|f| {
            f.dist.backend = DistBackend::Tcp;
            f.dist.url = "tcp://127.0.0.1:29500".into();
            f.dist.world_size = 3;
            f.dist.rank = 2;
        });
        let Launch::Join { layout, .. } = plan_with(&f, None, &no_env, 0).unwrap() else {
            panic!()
        };
        assert_eq!(
            (layout.rank, layout.world_size, layout.batch_size),
            (2, 3, 64)
        );
        // torchrun: 2 nodes x 4 processes
        let env = |n: &str| {
            Some(
                match n {
                    "MASTER_ADDR" => "10.0.0.1",
                    "MASTER_PORT" => "23456",
                    "RANK" => "5",
                    "WORLD_SIZE" => "8",
                    "LOCAL_RANK" => "1",
                    "LOCAL_WORLD_SIZE" => "4",
                    _ => return None,
                }
                .to_string(),
            )
        };
        let f = flags(|f| {
            f.dist.backend = DistBackend::Tcp;
            f.dist.url = "env://".into();
        });
        let Launch::Join { layout, .. } = plan_with(&f, None, &env, 0).unwrap() else {
            panic!()
        };
        assert_eq!(
            (
                layout.rank,
                layout.world_size,
                layout.local_rank,
                layout.batch_size
            ),
            (5, 8, 1, 16)
        );
    }

    #[test]
    fn bad_flags_are_one_line_errors() {
        let err = |f: LaunchRequest| {
            let e = plan_with(&f, None, &no_env, 0).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
            e
        };
        let local = |f: &mut LaunchRequest| {
            f.dist.backend = DistBackend::Local;
            f.dist.multiprocessing = true;
        };
        let e = err(flags(|f| {
            local(f);
            f.dist.nproc_per_node = Some(3);
        }));
        assert!(e.contains("not divisible by the 3 ranks"), "{e}");
        let e = err(flags(|f| {
            local(f);
            f.dist.world_size = 2;
            f.dist.rank = 0;
        }));
        assert!(e.contains("one node"), "{e}");
        let e = err(flags(|f| {
            f.dist.backend = DistBackend::Tcp;
            f.dist.url = "tcp://127.0.0.1:29500".into();
            f.dist.world_size = 2;
            f.dist.rank = 2;
        }));
        assert!(e.contains("rank 2 is not below the world size 2"), "{e}");
        let e = err(flags(|f| {
            f.dist.backend = DistBackend::Tcp;
            f.dist.multiprocessing = true;
            f.dist.world_size = 2;
            f.dist.rank = 5;
        }));
        assert!(e.contains("dist.rank 5"), "{e}");
        let e = err(flags(|f| {
            f.dist.backend = DistBackend::Tcp;
            f.dist.url = "http://x".into();
            f.dist.world_size = 2;
            f.dist.rank = 0;
        }));
        assert!(e.contains("dist-url") || e.contains("http://x"), "{e}");
        let e = err(flags(|f| f.dist.nproc_per_node = Some(2)));
        assert!(e.contains("needs dist.multiprocessing"), "{e}");
        if !cfg!(feature = "nccl") {
            let e = err(flags(|f| f.dist.multiprocessing = true));
            assert!(e.contains("feature `nccl`"), "{e}");
        }
    }

    #[test]
    fn a_failing_rank_fails_the_run_with_its_error() {
        let layouts: Vec<WorkerLayout> = (0..2)
            .map(|l| WorkerLayout::new(0, 1, 2, l, 8, 2).unwrap())
            .collect();
        let e = run_threads(&layouts, |ctx| {
            if ctx.rank() == 1 {
                return Err(MhclError::data("image 7 is corrupt"));
            }
            // rank 0 waits in a collective until it learns that rank 1 is gone
            ctx.any(false)?;
            Ok(ctx.rank())
        })
        .unwrap_err()
        .to_string();
        assert_eq!(e, "rank 1: dataset: image 7 is corrupt");

        // rank 0's seed and tensors reach every rank; rank 0's result is returned
        let mut m = TensorMap::new();
        m.insert("w".into(), RawTensor::f32([2], vec![1.0, 2.0]));
        let got = run_threads(&layouts, |ctx| {
            let seed = ctx.broadcast_seed(40 + ctx.rank() as u64)?;
            let mut mine = TensorMap::new();
            mine.insert("w".into(), RawTensor::f32([2], vec![ctx.rank() as f32; 2]));
            let t = if ctx.is_main() { m.clone() } else { mine };
            let t = ctx.broadcast_tensors(t)?;
            assert_eq!(t, m);
            assert!(ctx.any(ctx.rank() == 1)?);
            let mut v = [ctx.rank() as f64 + 1.0];
            ctx.sum(&mut v)?;
            Ok((seed, v[0], ctx.rank()))
        })
        .unwrap();
        assert_eq!(got, (40, 3.0, 0));
    }

    #[test]
    fn tensors_survive_the_broadcast_encoding() {
        let mut m = TensorMap::new();
        m.insert(
            "a.weight".into(),
            RawTensor::f32([2, 2], vec![1.0, -2.5, 0.0, 3.0]),
        );
        m.insert("queue_ptr".into(), RawTensor::i64([1], vec![7]));
        m.insert("empty".into(), RawTensor::f32([0], vec![]));
        let b = encode_tensors(&m).unwrap();
        assert_eq!(decode_tensors(&b).unwrap(), m);
        assert!(decode_tensors(&b[..b.len() - 1]).is_err());
    }
}
