//! TcpGroup: rendezvous across OS processes on loopback, and the error paths.

use std::time::{Duration, Instant};

use ssl_distributed::{
    DistToken, DistributedError, ProcessGroup, ReduceOp, RendezvousConfig, SpawnConfig, TcpGroup,
    spawn_workers,
};

use crate::{
    SPECIAL_RANK, TEST_RANK, TEST_WORLD, TIMEOUT_MS, URL, exercise, finish, free_port, kind,
    result_line, spawn_child,
};

const LIMIT: Duration = Duration::from_secs(60);

fn tcp_url(port: u16) -> String {
    format!("tcp://127.0.0.1:{port}")
}

/// `world` TcpGroups as threads of this process (same sockets as processes, quicker to start).
fn tcp_threads<R: Send>(
    world: usize,
    timeout: Duration,
    f: impl Fn(TcpGroup) -> R + Sync,
) -> Vec<Result<R, DistributedError>> {
    let port = free_port();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let f = &f;
                s.spawn(move || {
                    let cfg = RendezvousConfig::new(tcp_url(port))
                        .with_rank(rank)
                        .with_world_size(world)
                        .with_timeout(timeout);
                    TcpGroup::connect(&cfg).map(f)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn rendezvous_across_three_processes_tcp_url() {
    let port = free_port();
    let children: Vec<_> = (0..3)
        .map(|rank| {
            spawn_child(
                "collectives",
                &[
                    (URL, tcp_url(port)),
                    (TEST_RANK, rank.to_string()),
                    (TEST_WORLD, "3".into()),
                    (TIMEOUT_MS, "20000".into()),
                ],
            )
        })
        .collect();
    for (rank, c) in children.into_iter().enumerate() {
        let (st, out) = finish(c, LIMIT);
        assert!(result_line(&out).starts_with("ok"), "rank {rank}: {out}");
        assert!(st.success(), "rank {rank}: {out}");
    }
}

#[test]
fn rendezvous_across_three_processes_env_url() {
    // torchrun-style: everything from MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK
    let port = free_port();
    let children: Vec<_> = (0..3)
        .map(|rank| {
            spawn_child(
                "collectives",
                &[
                    (URL, "env://".into()),
                    ("MASTER_ADDR", "127.0.0.1".into()),
                    ("MASTER_PORT", port.to_string()),
                    ("RANK", rank.to_string()),
                    ("WORLD_SIZE", "3".into()),
                    ("LOCAL_RANK", rank.to_string()),
                    (TIMEOUT_MS, "20000".into()),
                ],
            )
        })
        .collect();
    for (rank, c) in children.into_iter().enumerate() {
        let (st, out) = finish(c, LIMIT);
        assert!(result_line(&out).starts_with("ok"), "rank {rank}: {out}");
        assert!(st.success(), "rank {rank}: {out}");
    }
}

#[test]
fn collectives_over_tcp_threads() {
    for world in [1, 2, 4] {
        for r in tcp_threads(world, Duration::from_secs(20), |g| exercise(&g)) {
            r.unwrap().unwrap();
        }
    }
}

#[test]
fn rank_not_below_world_is_an_error_before_any_network() {
    let cfg = RendezvousConfig::new(tcp_url(free_port()))
        .with_rank(3)
        .with_world_size(3)
        .with_timeout(Duration::from_secs(30));
    let t = Instant::now();
    let e = TcpGroup::connect(&cfg).unwrap_err();
    assert_eq!(kind(&e), "InvalidConfig", "{e}");
    assert!(e.to_string().contains("rank 3"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(1));
    // and through env://
    let e = RendezvousConfig::new("env://")
        .resolve_with(|k| {
            match k {
                "MASTER_ADDR" => Some("127.0.0.1"),
                "MASTER_PORT" => Some("29500"),
                "RANK" => Some("4"),
                "WORLD_SIZE" => Some("4"),
                _ => None,
            }
            .map(String::from)
        })
        .unwrap_err();
    assert_eq!(kind(&e), "InvalidConfig", "{e}");
}

#[test]
fn invalid_dist_urls_are_errors() {
    for url in [
        "tcp://127.0.0.1",
        "udp://h:1",
        "tcp://h:0",
        "tcp://h:99999",
        "env",
    ] {
        let e = TcpGroup::connect(&RendezvousConfig::new(url).with_rank(0).with_world_size(2))
            .unwrap_err();
        assert_eq!(kind(&e), "InvalidUrl", "{url}: {e}");
    }
}

#[test]
fn world_size_mismatch_between_processes() {
    // rank 0 here (world 2), rank 1 in a child process that believes in world 3
    let port = free_port();
    let child = spawn_child(
        "join",
        &[
            (URL, tcp_url(port)),
            (TEST_RANK, "1".into()),
            (TEST_WORLD, "3".into()),
            (TIMEOUT_MS, "10000".into()),
        ],
    );
    let cfg = RendezvousConfig::new(tcp_url(port))
        .with_rank(0)
        .with_world_size(2)
        .with_timeout(Duration::from_secs(10));
    let t = Instant::now();
    let e = TcpGroup::connect(&cfg).unwrap_err();
    assert_eq!(kind(&e), "WorldSizeMismatch", "{e}");
    assert!(e.to_string().contains("world size 3"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    let (st, out) = finish(child, LIMIT);
    assert!(!st.success());
    assert!(result_line(&out).contains("WorldSizeMismatch"), "{out}");
}

#[test]
fn duplicate_rank_is_an_error() {
    let port = free_port();
    let children: Vec<_> = (0..2)
        .map(|_| {
            spawn_child(
                "join",
                &[
                    (URL, tcp_url(port)),
                    (TEST_RANK, "1".into()),
                    (TEST_WORLD, "3".into()),
                    (TIMEOUT_MS, "10000".into()),
                ],
            )
        })
        .collect();
    let cfg = RendezvousConfig::new(tcp_url(port))
        .with_rank(0)
        .with_world_size(3)
        .with_timeout(Duration::from_secs(10));
    let e = TcpGroup::connect(&cfg).unwrap_err();
    assert_eq!(kind(&e), "DuplicateRank", "{e}");
    for c in children {
        let (st, out) = finish(c, LIMIT);
        assert!(!st.success(), "{out}");
    }
}

#[test]
fn port_in_use_is_an_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let cfg = RendezvousConfig::new(tcp_url(port))
        .with_rank(0)
        .with_world_size(2)
        .with_timeout(Duration::from_secs(5));
    let t = Instant::now();
    let e = TcpGroup::connect(&cfg).unwrap_err();
    assert_eq!(kind(&e), "Bind", "{e}");
    assert!(e.to_string().contains(&port.to_string()), "{e}");
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn a_peer_that_never_arrives_times_out() {
    let timeout = Duration::from_millis(1500);
    // rank 0 waits for rank 2, which never comes; rank 1 is told why
    let port = free_port();
    let child = spawn_child(
        "join",
        &[
            (URL, tcp_url(port)),
            (TEST_RANK, "1".into()),
            (TEST_WORLD, "3".into()),
            (TIMEOUT_MS, "1500".into()),
        ],
    );
    let cfg = RendezvousConfig::new(tcp_url(port))
        .with_rank(0)
        .with_world_size(3)
        .with_timeout(timeout);
    let t = Instant::now();
    let e = TcpGroup::connect(&cfg).unwrap_err();
    let took = t.elapsed();
    assert_eq!(kind(&e), "Timeout", "{e}");
    assert!(e.to_string().contains("[2]"), "{e}");
    assert!(took >= timeout && took < timeout * 3, "{took:?}");
    let (st, out) = finish(child, LIMIT);
    assert!(!st.success(), "{out}");

    // a non-zero rank whose rank 0 never listens
    let cfg = RendezvousConfig::new(tcp_url(free_port()))
        .with_rank(1)
        .with_world_size(2)
        .with_timeout(timeout);
    let t = Instant::now();
    let e = TcpGroup::connect(&cfg).unwrap_err();
    assert_eq!(kind(&e), "Timeout", "{e}");
    assert!(e.to_string().contains("could not reach rank 0"), "{e}");
    assert!(t.elapsed() < timeout * 3);
}

#[test]
fn a_peer_dying_mid_collective_fails_the_others_quickly() {
    // timeout 20 s, but the death is noticed as soon as the sockets close
    for dead in [2usize, 0] {
        let port = free_port();
        let children: Vec<_> = (0..3)
            .map(|rank| {
                spawn_child(
                    "die",
                    &[
                        (URL, tcp_url(port)),
                        (TEST_RANK, rank.to_string()),
                        (TEST_WORLD, "3".into()),
                        (TIMEOUT_MS, "20000".into()),
                        (SPECIAL_RANK, dead.to_string()),
                    ],
                )
            })
            .collect();
        for (rank, c) in children.into_iter().enumerate() {
            let (st, out) = finish(c, LIMIT);
            if rank == dead {
                assert_eq!(st.code(), Some(7), "{out}");
                continue;
            }
            let line = result_line(&out);
            assert!(line.contains("PeerGone"), "dead {dead}, rank {rank}: {out}");
            let ms: u64 = out
                .lines()
                .find_map(|l| {
                    let key = "collective failed after ";
                    l.find(key).map(|i| &l[i + key.len()..])
                })
                .and_then(|l| l.strip_suffix(" ms"))
                .unwrap()
                .parse()
                .unwrap();
            assert!(ms < 5000, "dead {dead}, rank {rank} took {ms} ms: {out}");
        }
    }
}

#[test]
fn a_stalled_peer_times_out_the_collective() {
    let port = free_port();
    let children: Vec<_> = (0..3)
        .map(|rank| {
            spawn_child(
                "stall",
                &[
                    (URL, tcp_url(port)),
                    (TEST_RANK, rank.to_string()),
                    (TEST_WORLD, "3".into()),
                    (TIMEOUT_MS, "1500".into()),
                    (SPECIAL_RANK, "1".into()),
                ],
            )
        })
        .collect();
    for (rank, c) in children.into_iter().enumerate() {
        let (st, out) = finish(c, LIMIT);
        if rank == 1 {
            assert!(st.success(), "{out}");
            continue;
        }
        let line = result_line(&out);
        assert!(line.contains("Timeout"), "rank {rank}: {out}");
        assert!(line.contains("rank 1"), "rank {rank}: {out}");
    }
}

#[test]
fn mismatched_sizes_and_collectives_are_errors_on_every_rank() {
    let res = tcp_threads(3, Duration::from_secs(10), |g| {
        let n = if g.rank() == 2 { 4 } else { 3 };
        let mut x = vec![1.0f32; n];
        let e1 = g.all_reduce(&mut x, ReduceOp::Sum).unwrap_err();
        let e2 = g.all_gather(&x).unwrap_err();
        let e3 = if g.rank() == 1 {
            g.barrier().unwrap_err()
        } else {
            g.all_reduce(&mut [0.0], ReduceOp::Sum).unwrap_err()
        };
        // the group is still usable afterwards
        let mut y = [g.rank() as f32];
        g.all_reduce(&mut y, ReduceOp::Sum).unwrap();
        (kind(&e1), kind(&e2), kind(&e3), y[0], e1.to_string())
    });
    for r in res {
        let (a, b, c, y, msg) = r.unwrap();
        assert_eq!(
            (a, b, c, y),
            ("SizeMismatch", "SizeMismatch", "CollectiveMismatch", 3.0)
        );
        assert!(msg.contains("rank 2 has 4"), "{msg}");
    }
}

#[test]
fn after_a_failure_the_group_is_aborted() {
    let res = tcp_threads(2, Duration::from_millis(800), |g| {
        if g.rank() == 1 {
            std::thread::sleep(Duration::from_millis(2500));
            return (String::new(), String::new());
        }
        let e1 = g.barrier().unwrap_err();
        let e2 = g.barrier().unwrap_err();
        (kind(&e1).to_string(), kind(&e2).to_string())
    });
    let (a, b) = res.into_iter().next().unwrap().unwrap();
    assert_eq!((a.as_str(), b.as_str()), ("Timeout", "Aborted"));
}

#[test]
fn spawn_workers_runs_ranks_and_reports_a_failed_one() {
    let exe = std::env::current_exe().unwrap();
    let args = ["child_entry", "--exact", "--nocapture", "--test-threads=1"];
    // all good
    let port = free_port();
    let workers = spawn_workers(
        &SpawnConfig::new(3)
            .with_program(&exe)
            .with_args(args)
            .with_env(crate::ROLE, "spawned")
            .with_env(URL, tcp_url(port))
            .with_env(TIMEOUT_MS, "20000"),
    )
    .unwrap();
    assert_eq!(workers.pids().len(), 3);
    workers.wait().unwrap();

    // local rank 1 dies after the first barrier: the others fail fast, wait() names rank 1
    let port = free_port();
    let t = Instant::now();
    let workers = spawn_workers(
        &SpawnConfig::new(3)
            .with_program(&exe)
            .with_args(args)
            .with_env(crate::ROLE, "spawned")
            .with_env(URL, tcp_url(port))
            .with_env(TIMEOUT_MS, "20000")
            .with_env(SPECIAL_RANK, "1")
            .with_failure_grace(Duration::from_secs(10)),
    )
    .unwrap();
    let e = workers.wait().unwrap_err();
    assert_eq!(kind(&e), "Launch", "{e}");
    assert!(e.to_string().contains("1: exit status: 5"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(9), "{:?}", t.elapsed());
}

/// `world` TcpGroups as threads, rank r with `tokens[r]` as its rendezvous token.
fn tcp_threads_with_tokens(
    tokens: &[Option<&str>],
    timeout: Duration,
) -> Vec<Result<f32, DistributedError>> {
    let port = free_port();
    let world = tokens.len();
    std::thread::scope(|s| {
        let handles: Vec<_> = tokens
            .iter()
            .enumerate()
            .map(|(rank, token)| {
                s.spawn(move || {
                    let cfg = RendezvousConfig::new(tcp_url(port))
                        .with_rank(rank)
                        .with_world_size(world)
                        .with_timeout(timeout)
                        .with_token(token.map(|t| DistToken::new(t).unwrap()));
                    let g = TcpGroup::connect(&cfg)?;
                    let mut x = [rank as f32 + 1.0];
                    g.all_reduce(&mut x, ReduceOp::Sum)?;
                    Ok(x[0])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn ranks_with_the_same_token_join_and_reduce() {
    let res = tcp_threads_with_tokens(&[Some("s3cret"); 3], Duration::from_secs(20));
    for r in res {
        assert_eq!(r.unwrap(), 6.0);
    }
}

#[test]
fn a_rank_with_another_token_is_refused_and_named_by_rank_0() {
    let res = tcp_threads_with_tokens(
        &[Some("s3cret"), Some("s3cret"), Some("guess")],
        Duration::from_secs(3),
    );
    let e2 = res[2].as_ref().unwrap_err();
    assert_eq!(kind(e2), "Rejected", "{e2}");
    assert!(e2.to_string().contains("token"), "{e2}");
    // rank 0 goes on waiting for the real rank 2, then says who was refused
    let e0 = res[0].as_ref().unwrap_err();
    assert_eq!(kind(e0), "Timeout", "{e0}");
    assert!(e0.to_string().contains("refused"), "{e0}");
    assert!(e0.to_string().contains("rank 2"), "{e0}");
}

#[test]
fn a_token_on_one_side_only_is_an_error_on_that_rank() {
    // rank 0 requires one, rank 1 has none
    let res = tcp_threads_with_tokens(&[Some("s3cret"), None], Duration::from_secs(3));
    let e1 = res[1].as_ref().unwrap_err();
    assert!(e1.to_string().contains("no rendezvous token"), "{e1}");
    // rank 0 has none, rank 1 has one: a configuration error on both
    let res = tcp_threads_with_tokens(&[None, Some("s3cret")], Duration::from_secs(3));
    for r in &res {
        let e = r.as_ref().unwrap_err();
        assert!(e.to_string().contains("rank 0 has none"), "{e}");
    }
}

#[test]
fn a_token_never_crosses_the_wire_and_is_not_printed() {
    let token = DistToken::new("do-not-print-me").unwrap();
    assert!(!format!("{token:?}").contains("do-not-print-me"));
    let cfg = RendezvousConfig::new("tcp://127.0.0.1:1").with_token(Some(token));
    assert!(!format!("{cfg:?}").contains("do-not-print-me"));
    assert!(DistToken::new("").is_err());
}

#[test]
fn without_a_token_a_stranger_cannot_pass_for_a_rank_with_one() {
    // a process that knows the protocol but not the token, claiming rank 1, while the real
    // rank 1 joins too: the stranger is refused, the group forms
    let port = free_port();
    let cfg = |rank| {
        RendezvousConfig::new(tcp_url(port))
            .with_rank(rank)
            .with_world_size(2)
            .with_timeout(Duration::from_secs(10))
    };
    std::thread::scope(|s| {
        let root = s.spawn(|| {
            let g = TcpGroup::connect(&cfg(0).with_token(Some(DistToken::new("k").unwrap())))?;
            g.barrier()
        });
        let stranger = s.spawn(|| {
            let g = TcpGroup::connect(&cfg(1).with_token(Some(DistToken::new("not-k").unwrap())));
            g.map(|_| ())
        });
        assert!(stranger.join().unwrap().is_err());
        let real = s.spawn(|| {
            let g = TcpGroup::connect(&cfg(1).with_token(Some(DistToken::new("k").unwrap())))?;
            g.barrier()
        });
        real.join().unwrap().unwrap();
        root.join().unwrap().unwrap();
    });
}
