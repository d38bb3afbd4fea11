//! Integration tests of ssl-distributed: one test binary (each binary links burn).
//!
//! Multi-process tests re-run this binary as child processes: the parent starts
//! `<this exe> child_entry --exact --nocapture` with `SSL_DIST_TEST_ROLE` (and the rendezvous
//! variables) in the environment; `child_entry` is a no-op in a normal run.

mod ddp;
mod local;
mod moco;
#[cfg(feature = "nccl")]
mod nccl;
mod tcp;

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use burn::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use ssl_distributed::{
    DistributedError, ProcessGroup, ReduceOp, RendezvousConfig, TcpGroup, WorkerLayout,
    batch_shuffle, batch_unshuffle, concat_all_gather, spawned_worker,
};

pub const ROLE: &str = "SSL_DIST_TEST_ROLE";
pub const URL: &str = "SSL_DIST_TEST_URL";
pub const TEST_RANK: &str = "SSL_DIST_TEST_RANK";
pub const TEST_WORLD: &str = "SSL_DIST_TEST_WORLD";
pub const TIMEOUT_MS: &str = "SSL_DIST_TEST_TIMEOUT_MS";
pub const SPECIAL_RANK: &str = "SSL_DIST_TEST_SPECIAL_RANK";

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Short name of an error variant, for the parent to check.
pub fn kind(e: &DistributedError) -> &'static str {
    match e {
        DistributedError::InvalidUrl { .. } => "InvalidUrl",
        DistributedError::InvalidConfig(_) => "InvalidConfig",
        DistributedError::Env { .. } => "Env",
        DistributedError::Bind { .. } => "Bind",
        DistributedError::Timeout { .. } => "Timeout",
        DistributedError::WorldSizeMismatch(_) => "WorldSizeMismatch",
        DistributedError::DuplicateRank(_) => "DuplicateRank",
        DistributedError::Rejected(_) => "Rejected",
        DistributedError::SizeMismatch(_) => "SizeMismatch",
        DistributedError::CollectiveMismatch(_) => "CollectiveMismatch",
        DistributedError::PeerGone(_) => "PeerGone",
        DistributedError::Aborted(_) => "Aborted",
        DistributedError::Io { .. } => "Io",
        DistributedError::Protocol(_) => "Protocol",
        DistributedError::Tensor(_) => "Tensor",
        DistributedError::Launch(_) => "Launch",
        DistributedError::BackendUnavailable(_) => "BackendUnavailable",
        DistributedError::Nccl(_) => "Nccl",
    }
}

/// Starts this test binary as a child running `role`.
pub fn spawn_child(role: &str, envs: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Waits (at most `limit`) for a child; returns its status and output.
pub fn finish(mut child: Child, limit: Duration) -> (ExitStatus, String) {
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let st = child.wait().unwrap();
            let mut out = String::new();
            let _ = child.stdout.take().unwrap().read_to_string(&mut out);
            panic!("child did not finish within {limit:?} ({st}); output:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    (status, out)
}

/// The `RESULT ...` line a child printed.
pub fn result_line(out: &str) -> &str {
    out.lines()
        .find_map(|l| l.find("RESULT ").map(|i| &l[i + 7..]))
        .unwrap_or_else(|| panic!("no RESULT line in child output:\n{out}"))
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().map(|v| v.parse().unwrap())
}

/// Config of a child from its environment: `SSL_DIST_TEST_URL`, explicit rank / world size when
/// `SSL_DIST_TEST_RANK` / `SSL_DIST_TEST_WORLD` are set (tcp://), timeout.
fn child_config() -> RendezvousConfig {
    let mut cfg = RendezvousConfig::new(std::env::var(URL).unwrap()).with_timeout(
        Duration::from_millis(env_usize(TIMEOUT_MS).unwrap_or(5000) as u64),
    );
    if let Some(r) = env_usize(TEST_RANK) {
        cfg = cfg.with_rank(r);
    }
    if let Some(w) = env_usize(TEST_WORLD) {
        cfg = cfg.with_world_size(w);
    }
    cfg
}

fn report(res: Result<(), String>, start: Instant) -> ! {
    let ms = start.elapsed().as_millis();
    match res {
        Ok(()) => {
            println!("RESULT ok {ms}");
            std::process::exit(0)
        }
        Err(e) => {
            println!("RESULT err {e} [after {ms} ms]");
            std::process::exit(3)
        }
    }
}

fn err_str(e: DistributedError) -> String {
    format!("{}: {e}", kind(&e))
}

/// The body of every child process.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let start = Instant::now();
    let special = env_usize(SPECIAL_RANK);
    let res: Result<(), String> = match role.as_str() {
        // join, then run every collective and check the results
        "collectives" => TcpGroup::connect(&child_config())
            .map_err(err_str)
            .and_then(|g| exercise(&g)),
        // join and pass one barrier
        "join" => TcpGroup::connect(&child_config())
            .and_then(|g| g.barrier())
            .map_err(err_str),
        // rank `special` exits right after the barrier; the others all-reduce
        "die" => (|| {
            let g = TcpGroup::connect(&child_config())?;
            g.barrier()?;
            if Some(g.rank()) == special {
                std::process::exit(7);
            }
            let t = Instant::now();
            let mut x = [1.0f32; 4];
            let r = g.all_reduce(&mut x, ReduceOp::Sum);
            println!("collective failed after {} ms", t.elapsed().as_millis());
            r
        })()
        .map_err(err_str),
        // rank `special` stays alive but never calls the collective
        "stall" => (|| {
            let g = TcpGroup::connect(&child_config())?;
            g.barrier()?;
            if Some(g.rank()) == special {
                std::thread::sleep(Duration::from_secs(4));
                std::process::exit(0);
            }
            let mut x = [1.0f32; 4];
            g.all_reduce(&mut x, ReduceOp::Sum)
        })()
        .map_err(err_str),
        // started by spawn_workers: layout from LOCAL_RANK, tcp:// rendezvous, collectives;
        // local rank `special` exits with status 5 after the first barrier
        "spawned" => (|| -> Result<(), String> {
            let (local, nproc) = spawned_worker().map_err(err_str)?.ok_or("not a worker")?;
            let layout = WorkerLayout::new(0, 1, nproc, local, 64, 4).map_err(err_str)?;
            let cfg = RendezvousConfig::new(std::env::var(URL).unwrap())
                .with_rank(layout.rank)
                .with_world_size(layout.world_size)
                .with_timeout(Duration::from_millis(
                    env_usize(TIMEOUT_MS).unwrap_or(5000) as u64
                ));
            let g = TcpGroup::connect(&cfg).map_err(err_str)?;
            g.barrier().map_err(err_str)?;
            if Some(local) == special {
                std::process::exit(5);
            }
            exercise(&g)
        })(),
        other => Err(format!("unknown role {other}")),
    };
    report(res, start)
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

/// Runs every collective once and checks the values; used by threads and processes alike.
pub fn exercise(g: &dyn ProcessGroup) -> Result<(), String> {
    let (r, w) = (g.rank(), g.world_size());
    let e = err_str;
    let base: Vec<f32> = (0..5).map(|i| (r * 10 + i) as f32).collect();
    let tri = (w * (w - 1) / 2) as f32;

    let mut x = base.clone();
    g.all_reduce(&mut x, ReduceOp::Sum).map_err(e)?;
    let want: Vec<f32> = (0..5).map(|i| 10.0 * tri + (w * i) as f32).collect();
    check(x == want, || format!("sum {x:?} != {want:?}"))?;

    let mut x = base.clone();
    g.all_reduce(&mut x, ReduceOp::Mean).map_err(e)?;
    let want_mean: Vec<f32> = want.iter().map(|v| v / w as f32).collect();
    check(x == want_mean, || format!("mean {x:?} != {want_mean:?}"))?;

    let mut x = base.clone();
    g.all_reduce(&mut x, ReduceOp::Max).map_err(e)?;
    check(x[0] == ((w - 1) * 10) as f32, || format!("max {x:?}"))?;
    let mut x = base.clone();
    g.all_reduce(&mut x, ReduceOp::Min).map_err(e)?;
    check(x[4] == 4.0, || format!("min {x:?}"))?;

    let all = g.all_gather(&[r as f32, r as f32 + 0.5]).map_err(e)?;
    let want: Vec<f32> = (0..w).flat_map(|q| [q as f32, q as f32 + 0.5]).collect();
    check(all == want, || format!("all_gather {all:?}"))?;

    let root = w - 1;
    let mut b = if r == root {
        vec![7.0, 8.0, 9.0]
    } else {
        vec![0.0; 3]
    };
    g.broadcast(&mut b, root).map_err(e)?;
    check(b == [7.0, 8.0, 9.0], || format!("broadcast {b:?}"))?;

    let mut bytes = if r == 0 {
        b"hello".to_vec()
    } else {
        vec![1, 2]
    };
    g.broadcast_bytes(&mut bytes, 0).map_err(e)?;
    check(bytes == b"hello", || format!("broadcast_bytes {bytes:?}"))?;

    let parts = g.all_gather_bytes(&vec![r as u8; r]).map_err(e)?;
    check(
        parts
            .iter()
            .enumerate()
            .all(|(q, p)| *p == vec![q as u8; q]),
        || format!("all_gather_bytes {parts:?}"),
    )?;

    g.barrier().map_err(e)?;

    let device = Device::flex();
    let t = Tensor::<2>::full([2, 3], r as f32, &device);
    let all = concat_all_gather(g, t).map_err(e)?;
    check(all.dims() == [2 * w, 3], || {
        format!("gathered dims {:?}", all.dims())
    })?;
    let v: Vec<f32> = all.into_data().try_into_vec().unwrap();
    let want: Vec<f32> = (0..w).flat_map(|q| [q as f32; 6]).collect();
    check(v == want, || format!("concat_all_gather {v:?}"))?;

    let rows: Vec<f32> = (0..8).map(|i| (r * 100 + i) as f32).collect();
    let x = Tensor::<2>::from_data(TensorData::new(rows.clone(), [4, 2]), &device);
    let mut rng = StdRng::seed_from_u64(5);
    let (shuffled, perm) = batch_shuffle(g, x, &mut rng).map_err(e)?;
    let back = batch_unshuffle(g, shuffled, &perm).map_err(e)?;
    let back: Vec<f32> = back.into_data().try_into_vec().unwrap();
    check(back == rows, || format!("unshuffle {back:?} != {rows:?}"))?;
    Ok(())
}
