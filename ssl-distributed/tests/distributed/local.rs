//! LocalGroup: collectives between threads, proptests of gather order and reductions, errors.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use ssl_distributed::{LocalGroup, ProcessGroup, ReduceOp, run_local};

use crate::{exercise, kind};

/// Runs `f` on every rank of a fresh LocalGroup and returns the results by rank.
pub fn on_ranks<R: Send>(
    world: usize,
    timeout: Duration,
    f: impl Fn(LocalGroup) -> R + Sync,
) -> Vec<R> {
    run_local(world, timeout, f).unwrap()
}

#[test]
fn every_collective_on_threads() {
    for world in 1..=4 {
        for r in on_ranks(world, Duration::from_secs(20), |g| exercise(&g)) {
            r.unwrap();
        }
    }
}

#[test]
fn single_rank_group_is_the_identity() {
    let g = LocalGroup::single();
    let mut x = [1.0f32, 2.0];
    g.all_reduce(&mut x, ReduceOp::Mean).unwrap();
    assert_eq!(x, [1.0, 2.0]);
    assert_eq!(g.all_gather(&x).unwrap(), vec![1.0, 2.0]);
    assert!(g.is_main());
    assert!(LocalGroup::new(0).is_err());
}

#[test]
fn size_mismatch_is_an_error_on_every_rank_and_the_group_survives() {
    let res = on_ranks(3, Duration::from_secs(10), |g| {
        let n = 2 + g.rank();
        let e = g.all_gather(&vec![0.0; n]).unwrap_err();
        let e2 = g
            .broadcast(&mut vec![0.0; if g.rank() == 1 { 5 } else { 3 }], 0)
            .unwrap_err();
        let mut y = [1.0f32];
        g.all_reduce(&mut y, ReduceOp::Sum).unwrap();
        (kind(&e), kind(&e2), y[0])
    });
    assert!(
        res.iter()
            .all(|r| *r == ("SizeMismatch", "SizeMismatch", 3.0)),
        "{res:?}"
    );
}

#[test]
fn collective_mismatch_is_an_error() {
    let res = on_ranks(2, Duration::from_secs(10), |g| {
        let e = if g.rank() == 0 {
            g.barrier().unwrap_err()
        } else {
            g.all_reduce(&mut [1.0], ReduceOp::Max).unwrap_err()
        };
        kind(&e)
    });
    assert_eq!(res, vec!["CollectiveMismatch"; 2]);
}

#[test]
fn bad_root_is_an_error() {
    let g = LocalGroup::single();
    assert_eq!(
        kind(&g.broadcast(&mut [0.0], 1).unwrap_err()),
        "InvalidConfig"
    );
}

#[test]
fn a_rank_that_never_calls_times_out_the_others() {
    let timeout = Duration::from_millis(400);
    let res = on_ranks(3, timeout, |g| {
        if g.rank() == 2 {
            // alive, but busy elsewhere for longer than the timeout
            std::thread::sleep(Duration::from_millis(1200));
            return (String::new(), String::new(), Duration::ZERO);
        }
        let t = Instant::now();
        let e = g.barrier().unwrap_err();
        let took = t.elapsed();
        let e2 = g.barrier().unwrap_err();
        (format!("{}: {e}", kind(&e)), kind(&e2).to_string(), took)
    });
    for (e, e2, took) in &res[..2] {
        // the first rank to time out aborts the group; the other sees that
        assert!(e.starts_with("Timeout") || e.starts_with("Aborted"), "{e}");
        assert!(e.contains("[2]") || e.starts_with("Aborted"), "{e}");
        assert_eq!(e2, "Aborted");
        assert!(*took < Duration::from_millis(1100), "{took:?}");
    }
}

#[test]
fn a_rank_that_leaves_fails_the_others_at_once() {
    let res = on_ranks(3, Duration::from_secs(30), |g| {
        if g.rank() == 1 {
            return (String::new(), Duration::ZERO); // drops its handle
        }
        let t = Instant::now();
        let e = g.all_reduce(&mut [1.0], ReduceOp::Sum).unwrap_err();
        (kind(&e).to_string(), t.elapsed())
    });
    for (rank, (k, took)) in res.iter().enumerate() {
        if rank != 1 {
            assert!(k == "PeerGone" || k == "Aborted", "{k}");
            assert!(*took < Duration::from_secs(5), "{took:?}");
        }
    }
}

fn world_and_data() -> impl Strategy<Value = Vec<Vec<f32>>> {
    (1usize..=5, 0usize..=12).prop_flat_map(|(world, len)| {
        proptest::collection::vec(proptest::collection::vec(-1e3f32..1e3, len), world)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// all_gather is the concatenation of the inputs in rank order, on every rank.
    #[test]
    fn all_gather_concatenates_in_rank_order(data in world_and_data()) {
        let world = data.len();
        let want: Vec<f32> = data.concat();
        let res = on_ranks(world, Duration::from_secs(20), |g| {
            g.all_gather(&data[g.rank()]).unwrap()
        });
        for got in res {
            prop_assert_eq!(&got, &want);
        }
    }

    /// all_reduce(Sum) equals the sum in rank order bit for bit on every rank; Mean is Sum / world.
    #[test]
    fn all_reduce_matches_the_sequential_reduction(data in world_and_data()) {
        let world = data.len();
        let len = data[0].len();
        let mut sum = data[0].clone();
        for d in &data[1..] {
            sum.iter_mut().zip(d).for_each(|(s, x)| *s += x);
        }
        let mean: Vec<f32> = sum.iter().map(|s| s / world as f32).collect();
        let max: Vec<f32> = (0..len)
            .map(|i| data.iter().map(|d| d[i]).fold(f32::NEG_INFINITY, f32::max))
            .collect();
        let res = on_ranks(world, Duration::from_secs(20), |g| {
            let mut s = data[g.rank()].clone();
            g.all_reduce(&mut s, ReduceOp::Sum).unwrap();
            let mut m = data[g.rank()].clone();
            g.all_reduce(&mut m, ReduceOp::Mean).unwrap();
            let mut x = data[g.rank()].clone();
            g.all_reduce(&mut x, ReduceOp::Max).unwrap();
            (s, m, x)
        });
        for (s, m, x) in res {
            prop_assert_eq!(&s, &sum);
            prop_assert_eq!(&m, &mean);
            prop_assert_eq!(&x, &max);
        }
    }

    /// broadcast copies the root's buffer to every rank.
    #[test]
    fn broadcast_copies_the_root(data in world_and_data(), root_pick in 0usize..5) {
        let world = data.len();
        let root = root_pick % world;
        let res = on_ranks(world, Duration::from_secs(20), |g| {
            let mut b = data[g.rank()].clone();
            g.broadcast(&mut b, root).unwrap();
            let mut bytes = vec![g.rank() as u8; g.rank() + 1];
            g.broadcast_bytes(&mut bytes, root).unwrap();
            (b, bytes)
        });
        for (b, bytes) in res {
            prop_assert_eq!(&b, &data[root]);
            prop_assert_eq!(bytes, vec![root as u8; root + 1]);
        }
    }
}
