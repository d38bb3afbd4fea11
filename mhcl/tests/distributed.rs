//! Data-parallel MHCL: DDP equivalence of the real model (2 ranks x batch B against one rank x
//! batch 2B), and `mhcl pretrain` / `mhcl lincls` with ranks as threads (`--dist-backend
//! local`) and as worker processes over TCP, end to end on a tiny generated dataset.

use std::path::Path;
use std::time::Duration;

use burn::optim::GradientsParams;
use burn::prelude::*;
use mhcl::checkpoint::Checkpoint;
use mhcl::model::{Mhcl, MhclConfig};
use mhcl::optim::{Sgd, SgdConfig};
use mhcl::rng::step_rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use ssl_losses::HardMixing;
use ssl_models::weights::{LoadOptions, RawTensor, TensorMap, load_tensors, module_tensors};

mod common;
use common::{mhcl_command, output_of, path};
use ssl_models::{Arch, MhclEncoder};
use ssl_queue::MomentumQueue;

const B: usize = 4;
const STEPS: u64 = 3;
const SEED: u64 = 11;
const LR: f64 = 0.05;

fn config() -> MhclConfig {
    MhclConfig::new(Arch::ResNet18)
        .with_width(4)
        .with_dim(8)
        .with_mlp(true)
        .with_mhcl(true)
        .with_queue_len(32)
        .with_temperature(0.2)
        .with_beta(1.0, 0.1)
}

fn sgd() -> Sgd {
    SgdConfig::new()
        .with_momentum(0.9)
        .with_weight_decay(1e-4)
        .init()
        .unwrap()
}

/// `(im_q, im_k)` of every step, `2B` images each, as host values.
fn batches() -> Vec<(Vec<f32>, Vec<f32>)> {
    let mut rng = StdRng::seed_from_u64(5);
    let n = 2 * B * 3 * 32 * 32;
    let mut draw = || (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    (0..STEPS).map(|_| (draw(), draw())).collect()
}

/// Rows `rows` of a `(2B, 3, 32, 32)` batch as a tensor.
fn rows(values: &[f32], rows: std::ops::Range<usize>, device: &Device) -> Tensor<4> {
    let per = 3 * 32 * 32;
    let v = values[rows.start * per..rows.end * per].to_vec();
    Tensor::from_data(TensorData::new(v, [rows.len(), 3, 32, 32]), device)
}

fn initial_state() -> TensorMap {
    let device = Device::flex().autodiff();
    device.seed(SEED);
    let model = Mhcl::new(config(), &device).unwrap();
    model.state(&sgd()).unwrap()
}

fn encoder(tensors: &TensorMap, prefix: &str, device: &Device) -> MhclEncoder {
    let t: TensorMap = tensors
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone())))
        .collect();
    let enc = config().encoder().init(device);
    load_tensors(enc, t, &LoadOptions::new()).unwrap().0
}

/// One rank x batch 2B, written out from the components with per-half BatchNorm (see the test).
fn reference_run(state: &TensorMap, data: &[(Vec<f32>, Vec<f32>)]) -> TensorMap {
    let cfg = config();
    let device = Device::flex().autodiff();
    let mut enc_q = encoder(state, "encoder_q.", &device);
    let mut enc_k = encoder(state, "encoder_k.", &device).no_grad();
    let q0 = &state["queue"];
    let mut queue = MomentumQueue::from_vec(
        &q0.shape,
        q0.to_f32(),
        state["queue_ptr"].as_i64().unwrap()[0] as usize,
        &device.clone().inner(),
    )
    .unwrap();
    let loss = cfg.loss().init().unwrap();
    let mut opt = sgd();
    let n = 2 * B;
    let halves = [0..B, B..n];
    for (step, (im_q, im_k)) in data.iter().enumerate() {
        // queries: each half forwarded on its own, as each rank forwards its own batch
        let q = Tensor::cat(
            halves
                .iter()
                .map(|h| enc_q.forward(rows(im_q, h.clone(), &device)))
                .collect(),
            0,
        );
        let q = ssl_losses::normalize(q, 2).unwrap();
        enc_k = ssl_queue::ema_update(enc_k, &enc_q, cfg.momentum).unwrap();
        // keys: shuffle-BN over the 2B keys, then the same two halves, then unshuffled
        let mut rng = step_rng(SEED, step as u64);
        let mut perm: Vec<usize> = (0..n).collect();
        perm.shuffle(&mut rng);
        let mut inv = vec![0usize; n];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        let index = |v: &[usize]| {
            let v: Vec<i64> = v.iter().map(|&i| i as i64).collect();
            Tensor::<1, Int>::from_data(TensorData::new(v, [n]), &device)
        };
        let shuffled = rows(im_k, 0..n, &device).select(0, index(&perm));
        let k = Tensor::cat(
            halves
                .iter()
                .map(|h| enc_k.forward(shuffled.clone().slice(s![h.start..h.end])))
                .collect(),
            0,
        )
        .select(0, index(&inv));
        let k = ssl_losses::normalize(k.detach(), 2).unwrap();
        let mixing = HardMixing::draw(
            &mut rng,
            cfg.scales(),
            cfg.queue_len,
            cfg.beta_a,
            cfg.beta_b,
        )
        .unwrap();
        let out = loss.forward(q, k, queue.tensor(), Some(&mixing)).unwrap();
        let grads = GradientsParams::from_grads(out.loss.backward(), &enc_q);
        enc_q = opt.step(LR, enc_q, grads);
        queue.enqueue(out.keys).unwrap();
    }
    let mut out = TensorMap::new();
    for (prefix, enc) in [("encoder_q.", &enc_q), ("encoder_k.", &enc_k)] {
        for (k, v) in module_tensors(enc).unwrap() {
            out.insert(format!("{prefix}{k}"), v);
        }
    }
    let (shape, values) = queue.to_vec().unwrap();
    out.insert("queue".into(), RawTensor::f32(shape, values));
    out.insert(
        "queue_ptr".into(),
        RawTensor::i64([1], vec![queue.ptr() as i64]),
    );
    for b in opt.buffers().unwrap() {
        out.insert(
            format!("optimizer.{}", b.name),
            RawTensor::f32(b.shape, b.values),
        );
    }
    out
}

/// BatchNorm running statistics are buffers, not parameters: each rank keeps its own (as with
/// PyTorch DDP, where rank 0's are the ones saved).
fn is_bn_buffer(name: &str) -> bool {
    name.ends_with("running_mean")
        || name.ends_with("running_var")
        || name.ends_with("num_batches_tracked")
}

fn max_abs_diff(a: &RawTensor, b: &RawTensor) -> f32 {
    assert_eq!(a.shape, b.shape);
    a.to_f32()
        .iter()
        .zip(b.to_f32())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// DDP equivalence with the real [`Mhcl`] model: 2 ranks (threads, `LocalGroup`) x batch B for 3
/// MHCL steps end with the same parameters, optimizer state and queue as 1 rank x batch 2B.
///
/// What makes this a true statement: ResNet BatchNorm normalizes with the statistics of the
/// batch it sees, and in data parallel each rank sees only its own B images (PyTorch DDP does
/// the same without SyncBatchNorm). A 1-rank forward of all 2B images at once would normalize
/// over 2B and give other numbers; so the 1-rank run here is written out from the components
/// and forwards the queries in the same two halves of B that the ranks hold, and the keys with
/// the same shuffle-BN (one permutation of the 2B keys from the step's generator, forwarded as
/// two halves, unshuffled). Everything else is over the whole batch of 2B: the loss is the mean
/// over 2B samples (= the average of the two ranks' means, which is what averaging gradients
/// computes), the mixing draws are one set for the step, and the queue receives all 2B keys
/// in rank order. Shuffle-BN stays on in the ranks: the 1-rank run reproduces it, which also
/// checks the permutation and the unshuffle.
///
/// Compared: every parameter of both encoders, the SGD momentum buffers, the queue and its
/// pointer; the ranks must agree exactly with each other (gradients are averaged in rank order
/// on every rank) and with the 1-rank run within float tolerance (sums taken in a different
/// order). BatchNorm running statistics are left out: they are per-rank buffers.
#[test]
fn ddp_two_ranks_equal_one_rank_with_twice_the_batch() {
    let state = initial_state();
    let data = batches();
    let per_rank = ssl_distributed::run_local(2, Duration::from_secs(300), |group| {
        let device = Device::flex().autodiff();
        let mut model = Mhcl::new(config(), &device).unwrap();
        let mut opt = sgd();
        model.load_state(&state, &mut opt).unwrap();
        let r = ssl_distributed::ProcessGroup::rank(&group);
        for (step, (im_q, im_k)) in data.iter().enumerate() {
            let mine = r * B..(r + 1) * B;
            let mut rng = step_rng(SEED, step as u64);
            model
                .train_step(
                    rows(im_q, mine.clone(), &device),
                    rows(im_k, mine, &device),
                    LR,
                    &mut opt,
                    &mut rng,
                    Some(&group),
                )
                .unwrap();
        }
        model.state(&opt).unwrap()
    })
    .unwrap();
    let reference = reference_run(&state, &data);

    let (r0, r1) = (&per_rank[0], &per_rank[1]);
    assert_eq!(
        r0.keys().collect::<Vec<_>>(),
        reference.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        r0["queue_ptr"].as_i64(),
        Some(&[(STEPS as i64 * 8) % 32][..])
    );
    let mut compared = 0;
    let mut worst = (0.0f32, String::new());
    for (name, t) in r0 {
        if is_bn_buffer(name) {
            continue;
        }
        assert_eq!(t, &r1[name], "ranks differ in {name}");
        let d = max_abs_diff(t, &reference[name]);
        if d > worst.0 {
            worst = (d, name.clone());
        }
        compared += 1;
    }
    assert!(compared > 100, "{compared}");
    assert!(
        worst.0 < 2e-5,
        "2 ranks x {B} and 1 rank x {} differ by {} in {}",
        2 * B,
        worst.0,
        worst.1
    );
    // the training moved the weights (the comparison is not of two untouched copies)
    let moved = max_abs_diff(
        &state["encoder_q.conv1.weight"],
        &r0["encoder_q.conv1.weight"],
    );
    assert!(moved > 1e-4, "{moved}");
}

// ---------------------------------------------------------------------------------------------
// The command line, end to end.

/// Tiny MHCL settings: 32 images, batch 8 per node (2 ranks x 4), K 32, 4 steps per epoch.
const TINY: &[&str] = &[
    "-a",
    "resnet18",
    "--width",
    "4",
    "--image-size",
    "32",
    "-b",
    "8",
    "--moco-k",
    "32",
    "--moco-dim",
    "8",
    "--mhcl",
    "--mlp",
    "--aug-plus",
    "--moco-t",
    "0.2",
    "-j",
    "2",
    "--seed",
    "3",
    "-p",
    "1",
    "--no-progress",
    "--epochs",
    "1",
];

/// Runs the binary without visible GPUs; returns (exit code, stdout, stderr).
fn mhcl_bin(args: &[&str]) -> (i32, String, String) {
    output_of(mhcl_command().args(args).env_remove("CUDA_VISIBLE_DEVICES"))
}

fn pretrain(out: &str, extra: &[&str]) -> (i32, String, String) {
    let data = path("data");
    let mut args = vec!["pretrain", data.as_str()];
    args.extend_from_slice(TINY);
    args.extend_from_slice(&["--output-dir", out]);
    args.extend_from_slice(extra);
    mhcl_bin(&args)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tensors(path: &str) -> TensorMap {
    Checkpoint::read(Path::new(path)).unwrap().tensors
}

/// `mhcl pretrain --dist-backend local --multiprocessing-distributed --nproc-per-node 2`: two
/// ranks as threads, one checkpoint from rank 0, progress printed once; `mhcl lincls` accepts
/// the checkpoint, single-process and with two ranks. The same run with two worker processes
/// over TCP (`--dist-backend tcp`) ends with exactly the same weights and queue.
#[test]
fn cli_local_ranks_pretrain_and_probe_end_to_end() {
    let out = path("local2");
    let (code, stdout, stderr) = pretrain(
        &out,
        &[
            "--dist-backend",
            "local",
            "--multiprocessing-distributed",
            "--nproc-per-node",
            "2",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("batch 8 = 2 ranks (local) x 4"), "{stdout}");
    // 32 images / (2 ranks x 4) = 4 iterations, each printed once (rank 0 only)
    assert_eq!(stdout.matches("Epoch: [0][").count(), 4, "{stdout}");
    assert_eq!(stdout.matches("pretrain epoch 0").count(), 1, "{stdout}");
    let ck = format!("{out}/checkpoint_0000.safetensors");
    let ckpt = Checkpoint::read(Path::new(&ck)).unwrap();
    assert_eq!(ckpt.meta.rng.step, 4);
    assert_eq!(ckpt.tensors["queue_ptr"].as_i64(), Some(&[0i64][..]));
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{out}/metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics.as_array().unwrap().len(), 1);

    // the linear probe accepts the checkpoint: one process, then two ranks
    let data = path("data");
    let probe = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "lincls",
            data.as_str(),
            "-a",
            "resnet18",
            "--image-size",
            "32",
            "-b",
            "8",
            "-j",
            "2",
            "--seed",
            "1",
            "--epochs",
            "1",
            "--no-progress",
            "--pretrained",
            ck.as_str(),
            "--output-dir",
            out,
        ];
        args.extend_from_slice(extra);
        let (code, stdout, stderr) = mhcl_bin(&args);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        let s: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{out}/lincls_summary.json")).unwrap())
                .unwrap();
        assert!(s["final_acc1"].as_f64().unwrap() >= 0.0);
        assert_eq!(s["val_images"].as_u64(), Some(16));
        stdout
    };
    probe(&path("probe1"), &[]);
    let stdout = probe(
        &path("probe2"),
        &[
            "--dist-backend",
            "local",
            "--multiprocessing-distributed",
            "--nproc-per-node",
            "2",
        ],
    );
    assert!(stdout.contains("2 ranks x batch 4"), "{stdout}");
    assert_eq!(stdout.matches("lincls epoch 0").count(), 1, "{stdout}");
    // evaluation: each rank extracts half of val/ (16 images), the gathered features give the
    // single-process result
    let evaluate = |out: &str, extra: &[&str]| {
        let probe_ck = path("probe1/lincls_checkpoint.safetensors");
        let mut args = vec![
            "lincls",
            data.as_str(),
            "-a",
            "resnet18",
            "--image-size",
            "32",
            "-b",
            "6",
            "-j",
            "2",
            "-e",
            "--resume",
            probe_ck.as_str(),
            "--output-dir",
            out,
        ];
        args.extend_from_slice(extra);
        let (code, stdout, stderr) = mhcl_bin(&args);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        let s: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{out}/lincls_summary.json")).unwrap())
                .unwrap();
        (s["final_acc1"].clone(), s["confusion_matrix"].clone())
    };
    assert_eq!(
        evaluate(&path("eval1"), &[]),
        evaluate(
            &path("eval2"),
            &[
                "--dist-backend",
                "local",
                "--multiprocessing-distributed",
                "--nproc-per-node",
                "2",
            ],
        )
    );

    // two worker processes over TCP: the same training, bit for bit
    let url = format!("tcp://127.0.0.1:{}", free_port());
    let out_tcp = path("tcp2");
    let (code, stdout, stderr) = pretrain(
        &out_tcp,
        &[
            "--dist-backend",
            "tcp",
            "--dist-url",
            &url,
            "--multiprocessing-distributed",
            "--nproc-per-node",
            "2",
            "--world-size",
            "1",
            "--rank",
            "0",
        ],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(stdout.matches("pretrain epoch 0").count(), 1, "{stdout}");
    let (a, b) = (
        tensors(&ck),
        tensors(&format!("{out_tcp}/checkpoint_0000.safetensors")),
    );
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, t) in &a {
        assert_eq!(t, &b[k], "threads and processes differ in {k}");
    }
}

fn expect_error(args: &[&str], needle: &str) {
    let (code, stdout, stderr) = mhcl_bin(args);
    assert_eq!(code, 1, "{args:?}: {stdout}\n{stderr}");
    let err = stderr.trim_end();
    assert!(!err.contains('\n'), "error must be one line: {err}");
    assert!(
        err.starts_with("error: ") && err.contains(needle),
        "{args:?}: {err} (wanted `{needle}`)"
    );
}

/// Bad distributed flags: one line each, before any rank starts and before any file is written;
/// a rank that fails makes the whole run fail with its error.
#[test]
fn cli_distributed_bad_input_is_one_line() {
    let data = path("data");
    let out = path("bad");
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["pretrain".into(), data.clone()];
        v.extend(TINY.iter().map(|s| s.to_string()));
        v.extend(["--output-dir".to_string(), out.clone()]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |extra: &[&str], needle: &str| {
        let v = base(extra);
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        expect_error(&refs, needle);
    };
    let local = ["--dist-backend", "local", "--multiprocessing-distributed"];
    // batch 8 over 3 ranks
    run(
        &[&local[..], &["--nproc-per-node", "3"]].concat(),
        "not divisible by the 3 ranks",
    );
    // K = 36 is a multiple of the node's batch 12 but not of the global batch 2 x 12 = 24
    run(
        &[
            "--moco-k",
            "36",
            "--dist-backend",
            "tcp",
            "--dist-url",
            "tcp://127.0.0.1:1",
            "--multiprocessing-distributed",
            "--nproc-per-node",
            "2",
            "--world-size",
            "2",
            "--rank",
            "0",
            "-b",
            "12",
        ],
        "multiple of the global batch size (24)",
    );
    run(
        &[
            "--dist-backend",
            "tcp",
            "--dist-url",
            "tcp://127.0.0.1:1",
            "--world-size",
            "2",
            "--rank",
            "2",
        ],
        "rank 2 is not below the world size 2",
    );
    run(
        &[
            "--dist-backend",
            "tcp",
            "--multiprocessing-distributed",
            "--world-size",
            "2",
            "--rank",
            "2",
        ],
        "--rank 2 (the rank of this node) is not below --world-size 2",
    );
    run(
        &[
            "--dist-backend",
            "tcp",
            "--dist-url",
            "udp://x:1",
            "--world-size",
            "2",
            "--rank",
            "0",
        ],
        "udp://x:1",
    );
    run(
        &["--nproc-per-node", "2"],
        "needs --multiprocessing-distributed",
    );
    run(
        &[
            "--dist-backend",
            "local",
            "--world-size",
            "2",
            "--rank",
            "0",
        ],
        "--multiprocessing-distributed --nproc-per-node N",
    );
    if !cfg!(feature = "nccl") {
        run(&["--multiprocessing-distributed"], "feature `nccl`");
    }
    assert!(!Path::new(&out).exists(), "a refused run wrote to {out}");
    // an error inside the ranks (a global batch of 64 for 32 images) ends the run with one
    // line naming a rank and the cause
    run(
        &[
            &local[..],
            &["--nproc-per-node", "2", "-b", "64", "--moco-k", "64"],
        ]
        .concat(),
        "larger than the dataset",
    );
    let (_, _, stderr) = mhcl_bin(
        &base(
            &[
                &local[..],
                &["--nproc-per-node", "2", "-b", "64", "--moco-k", "64"],
            ]
            .concat(),
        )
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    );
    assert!(stderr.starts_with("error: rank "), "{stderr}");
}
