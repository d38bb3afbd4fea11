//! End-to-end tests of the `mhcl` pipeline on a tiny generated dataset: pretrain -> checkpoint
//! -> resume -> linear probe, resume equivalence, and the one-line errors of bad input.

use std::path::Path;

use mhcl::checkpoint::Checkpoint;
use mhcl::cli::{Command, LinclsArgs, PretrainArgs, parse_from};

mod common;
use common::{mhcl_bin as mhcl_run, path as out, root, serial};

fn data() -> String {
    out("data")
}

/// Tiny but complete MHCL settings: 32 images, batch 8 (4 iterations per epoch), K 32.
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
    "--a",
    "1",
    "--b",
    "0.1",
    "--mlp",
    "--aug-plus",
    "--cos",
    "--moco-t",
    "0.2",
    "-j",
    "2",
    "--seed",
    "3",
    "-p",
    "2",
    "--no-progress",
];

fn pretrain_args(extra: &[&str]) -> PretrainArgs {
    let d = data();
    let mut argv = vec!["mhcl", "pretrain", d.as_str()];
    argv.extend_from_slice(TINY);
    argv.extend_from_slice(extra);
    match parse_from(argv).unwrap().command {
        Command::Pretrain(a) => a,
        _ => unreachable!(),
    }
}

fn lincls_args(extra: &[&str]) -> LinclsArgs {
    let d = data();
    let mut argv = vec![
        "mhcl",
        "lincls",
        d.as_str(),
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
        "2",
        "--no-progress",
    ];
    argv.extend_from_slice(extra);
    match parse_from(argv).unwrap().command {
        Command::Lincls(a) => a,
        _ => unreachable!(),
    }
}

fn assert_same_tensors(a: &Path, b: &Path) {
    let (a, b) = (Checkpoint::read(a).unwrap(), Checkpoint::read(b).unwrap());
    assert_eq!(a.meta.epoch, b.meta.epoch);
    assert_eq!(a.meta.rng, b.meta.rng);
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>()
    );
    for (k, t) in &a.tensors {
        assert_eq!(t, &b.tensors[k], "tensor {k} differs");
    }
}

#[test]
fn pretrain_checkpoint_resume_and_linear_probe() {
    let _g = serial();
    // 2 epochs in one go, with a checkpoint after each
    let full = out("full");
    let outcome = mhcl::cli::pretrain(&pretrain_args(&[
        "--epochs",
        "2",
        "--save-epochs",
        "0",
        "--output-dir",
        &full,
        "--knn-every",
        "1",
    ]))
    .unwrap();
    assert_eq!(outcome.metrics.len(), 2);
    assert!(
        outcome
            .metrics
            .iter()
            .all(|m| m.loss.is_finite() && m.knn.is_some())
    );
    let c0 = Path::new(&full).join("checkpoint_0000.safetensors");
    let c1 = Path::new(&full).join("checkpoint_0001.safetensors");
    let ck = Checkpoint::read(&c1).unwrap();
    assert_eq!(ck.meta.epoch, 2);
    for name in [
        "encoder_q.conv1.weight",
        "encoder_k.fc.2.weight",
        "queue",
        "queue_ptr",
    ] {
        assert!(ck.tensors.contains_key(name), "{name}");
    }
    assert_eq!(ck.tensors["queue"].shape, vec![8, 8, 32]);
    assert!(
        ck.tensors
            .keys()
            .any(|k| k == "optimizer.layer1.0.conv1.weight")
    );
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(&full).join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics.as_array().unwrap().len(), 2);

    // resume from epoch 1's start: same final weights, queue and optimizer state
    let resumed = out("resumed");
    let c0s = c0.to_string_lossy().into_owned();
    mhcl::cli::pretrain(&pretrain_args(&[
        "--epochs",
        "2",
        "--resume",
        &c0s,
        "--output-dir",
        &resumed,
    ]))
    .unwrap();
    assert_same_tensors(
        &c1,
        &Path::new(&resumed).join("checkpoint_0001.safetensors"),
    );

    // linear probe of our checkpoint: summary, curves, probe checkpoint, then -e
    let lin = out("lincls");
    let c1s = c1.to_string_lossy().into_owned();
    let s = mhcl::cli::lincls(&lincls_args(&["--pretrained", &c1s, "--output-dir", &lin])).unwrap();
    assert_eq!(s.history.len(), 2);
    assert_eq!(s.confusion_matrix.len(), 4);
    assert_eq!(s.confusion_matrix.iter().flatten().sum::<usize>(), 16);
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(Path::new(&lin).join("lincls_summary.json")).unwrap(),
    )
    .unwrap();
    for key in [
        "best_acc1",
        "best_acc5",
        "final_acc1",
        "final_acc5",
        "per_class_acc1",
        "confusion_matrix",
    ] {
        assert!(summary.get(key).is_some(), "{key}");
    }
    assert!(image::open(Path::new(&lin).join("lincls_curves.png")).is_ok());
    let probe = Path::new(&lin)
        .join("lincls_checkpoint.safetensors")
        .to_string_lossy()
        .into_owned();
    let ev = out("lincls_eval");
    let e = mhcl::cli::lincls(&lincls_args(&[
        "-e",
        "--resume",
        &probe,
        "--output-dir",
        &ev,
    ]))
    .unwrap();
    assert_eq!(
        e.final_acc1, s.final_acc1,
        "evaluating the saved probe repeats its accuracy"
    );

    // an original PyTorch MHCL checkpoint (width-8 resnet18, DDP names) as --pretrained
    let set = ssl_conformance::ConformanceSet::open();
    let pth = set
        .fixture("checkpoint_0000.pth.tar")
        .to_string_lossy()
        .into_owned();
    let pt = out("lincls_pth");
    let s = mhcl::cli::lincls(&lincls_args(&["--pretrained", &pth, "--output-dir", &pt])).unwrap();
    assert_eq!(s.width, 8);
}

#[test]
fn interrupted_and_resumed_run_equals_uninterrupted_run() {
    let _g = serial();
    let a = out("uninterrupted");
    mhcl::cli::pretrain(&pretrain_args(&["--epochs", "2", "--output-dir", &a])).unwrap();
    let b = out("interrupted");
    // stop before step 5 = epoch 1, iteration 1 (4 iterations per epoch)
    mhcl::cli::stop_token().stop_before_step(5);
    let err =
        mhcl::cli::pretrain(&pretrain_args(&["--epochs", "2", "--output-dir", &b])).unwrap_err();
    assert!(matches!(err, mhcl::MhclError::Interrupted { .. }), "{err}");
    let ck = Path::new(&b).join(mhcl::train::INTERRUPTED_CHECKPOINT);
    let meta = Checkpoint::read(&ck).unwrap().meta;
    assert_eq!((meta.epoch, meta.iteration, meta.rng.step), (1, 1, 5));
    let cks = ck.to_string_lossy().into_owned();
    mhcl::cli::pretrain(&pretrain_args(&[
        "--epochs",
        "2",
        "--resume",
        &cks,
        "--output-dir",
        &b,
    ]))
    .unwrap();
    assert_same_tensors(
        &Path::new(&a).join("checkpoint_0001.safetensors"),
        &Path::new(&b).join("checkpoint_0001.safetensors"),
    );
}

/// Runs the binary; returns (exit code, stderr).
fn mhcl_bin(args: &[&str]) -> (i32, String) {
    let (code, _, err) = mhcl_run(args);
    (code, err)
}

fn expect_error(args: &[&str], needle: &str) {
    let (code, err) = mhcl_bin(args);
    assert_eq!(code, 1, "{args:?}: {err}");
    let err = err.trim_end();
    assert!(!err.contains('\n'), "error must be one line: {err}");
    assert!(
        err.starts_with("error: ") && err.contains(needle),
        "{args:?}: {err} (wanted `{needle}`)"
    );
}

#[test]
fn bad_input_gives_one_line_errors_and_writes_nothing() {
    let _g = serial();
    let d = data();
    let o = out("bad");
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["pretrain", d.as_str()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(TINY.iter().map(|s| s.to_string()));
        v.extend(
            ["--epochs", "1", "--output-dir", o.as_str()]
                .iter()
                .map(|s| s.to_string()),
        );
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |extra: &[&str], needle: &str| {
        let v = base(extra);
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        expect_error(&refs, needle);
    };
    run(&["--moco-k", "30"], "multiple of the global batch size");
    run(&["--a", "0"], "--a: must be > 0");
    run(&["--b", "-1"], "--b: must be > 0");
    // an unknown architecture is refused by the flag parser (status 2), still in one line
    let (code, err) = mhcl_bin(&["pretrain", d.as_str(), "-a", "resnet99"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("unknown architecture"), "{err}");
    run(&["-b", "64", "--moco-k", "128"], "larger than the dataset");
    run(
        &["--resume", "/nonexistent/checkpoint_0001.safetensors"],
        "no such file",
    );
    let junk = root().join("junk.safetensors");
    std::fs::write(&junk, b"not a checkpoint at all").unwrap();
    run(&["--resume", junk.to_str().unwrap()], "corrupt");
    let file = root().join("a_file");
    std::fs::write(&file, b"x").unwrap();
    let under_file = file.join("out").to_string_lossy().into_owned();
    run(&["--output-dir", &under_file], "cannot be created");
    assert!(
        !Path::new(&o).exists() || std::fs::read_dir(&o).unwrap().next().is_none(),
        "a failed run left files in {o}"
    );

    let empty = root().join("empty_data");
    std::fs::create_dir_all(&empty).unwrap();
    expect_error(
        &[
            "pretrain",
            empty.to_str().unwrap(),
            "-a",
            "resnet18",
            "--output-dir",
            &o,
        ],
        "has no train/ folder",
    );

    // a checkpoint of another architecture: pretrain --resume and lincls --pretrained
    let other = out("other_arch");
    {
        mhcl::cli::pretrain(&pretrain_args(&["--epochs", "1", "--output-dir", &other])).unwrap();
    }
    let ck = Path::new(&other)
        .join("checkpoint_0000.safetensors")
        .to_string_lossy()
        .into_owned();
    run(
        &["--width", "8", "--resume", &ck],
        "model.width is 4 there, but 8 in this run",
    );
    expect_error(
        &[
            "lincls",
            d.as_str(),
            "-a",
            "resnet50",
            "--pretrained",
            &ck,
            "--output-dir",
            &o,
        ],
        "holds a resnet18 encoder",
    );
    expect_error(
        &[
            "lincls",
            d.as_str(),
            "-a",
            "resnet18",
            "--pretrained",
            junk.to_str().unwrap(),
            "--output-dir",
            &o,
        ],
        "corrupt",
    );
    let (code, err) = mhcl_bin(&["pretrain", d.as_str(), "--epochs", "x"]);
    assert_eq!(code, 2);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn a_checkpoint_that_cannot_be_written_stops_the_run_and_keeps_the_previous_one() {
    let _g = serial();
    let dir = out("disk-full");
    let _ = std::fs::remove_dir_all(&dir);
    // epoch 0's checkpoint is written; epoch 1's cannot be (a non-empty directory holds its
    // name, as a full disk would make the write fail)
    std::fs::create_dir_all(Path::new(&dir).join("checkpoint_0001.safetensors/x")).unwrap();
    let args = pretrain_args(&["--epochs", "2", "--save-epochs", "0", "--output-dir", &dir]);
    let e = mhcl::cli::pretrain(&args).unwrap_err().to_string();
    assert!(e.contains("checkpoint_0001.safetensors"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    let first = Path::new(&dir).join("checkpoint_0000.safetensors");
    assert_eq!(Checkpoint::read(&first).unwrap().meta.epoch, 1);
    let stray: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp."))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn metrics_that_cannot_be_written_stop_the_run_with_one_line() {
    let _g = serial();
    let dir = out("metrics-full");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(Path::new(&dir).join("metrics.json/x")).unwrap();
    let args = pretrain_args(&["--epochs", "1", "--output-dir", &dir]);
    let e = mhcl::cli::pretrain(&args).unwrap_err().to_string();
    assert!(e.contains("metrics.json"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

/// A copy of the tiny dataset with one corrupt JPEG in `train/` (and one in `val/`).
fn data_with_a_corrupt_image(name: &str) -> String {
    let dst = root().join(name);
    let _ = std::fs::remove_dir_all(&dst);
    for split in ["train", "val"] {
        let src = root().join("data").join(split);
        for class in std::fs::read_dir(&src).unwrap() {
            let class = class.unwrap().path();
            let to = dst.join(split).join(class.file_name().unwrap());
            std::fs::create_dir_all(&to).unwrap();
            for f in std::fs::read_dir(&class).unwrap() {
                let f = f.unwrap().path();
                std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
            }
        }
        let first_class = std::fs::read_dir(dst.join(split))
            .unwrap()
            .map(|e| e.unwrap().path())
            .min()
            .unwrap();
        std::fs::write(
            first_class.join("broken.jpg"),
            b"\xff\xd8 not really a jpeg",
        )
        .unwrap();
    }
    dst.to_string_lossy().into_owned()
}

#[test]
fn verify_images_stops_at_a_corrupt_file_before_training() {
    let _g = serial();
    let d = data_with_a_corrupt_image("corrupt-verify");
    let o = out("corrupt-verify-out");
    let mut args: Vec<&str> = vec!["pretrain", &d];
    args.extend_from_slice(TINY);
    args.extend_from_slice(&["--epochs", "1", "--verify-images", "--output-dir", &o]);
    expect_error(&args, "broken.jpg");
    assert!(!Path::new(&o).join("checkpoint_0000.safetensors").exists());
}

#[test]
fn skip_corrupt_drops_and_names_bad_files_in_the_metrics() {
    let _g = serial();
    let d = data_with_a_corrupt_image("corrupt-skip");
    for (name, extra) in [
        (
            "corrupt-skip-prescan",
            &["--skip-corrupt", "--verify-images"][..],
        ),
        ("corrupt-skip-load", &["--skip-corrupt"][..]),
    ] {
        let o = out(name);
        let mut argv = vec!["mhcl", "pretrain", d.as_str()];
        argv.extend_from_slice(TINY);
        argv.extend_from_slice(&["--epochs", "1", "--output-dir", &o]);
        argv.extend_from_slice(extra);
        let Command::Pretrain(args) = parse_from(argv).unwrap().command else {
            unreachable!()
        };
        let outcome = mhcl::cli::pretrain(&args).unwrap();
        let skipped = &outcome.metrics[0].skipped_images;
        assert_eq!(skipped.len(), 1, "{name}: {skipped:?}");
        assert!(skipped[0].contains("broken.jpg"), "{name}: {skipped:?}");
        let json = std::fs::read_to_string(Path::new(&o).join("metrics.json")).unwrap();
        assert!(json.contains("broken.jpg"), "{name}: {json}");
    }
}

#[test]
fn without_skip_corrupt_a_bad_file_stops_the_run_at_its_batch() {
    let _g = serial();
    let d = data_with_a_corrupt_image("corrupt-stop");
    let o = out("corrupt-stop-out");
    let mut args: Vec<&str> = vec!["pretrain", &d];
    args.extend_from_slice(TINY);
    args.extend_from_slice(&["--epochs", "1", "--output-dir", &o]);
    expect_error(&args, "broken.jpg");
}

#[test]
fn split_command_writes_train_and_val() {
    let src = out("data/train");
    let dst = out("split");
    let (code, err) = mhcl_bin(&["split", "--ratio", "1:1", "--seed", "0", &src, &dst]);
    assert_eq!(code, 0, "{err}");
    let count = |p: &str| {
        std::fs::read_dir(Path::new(&dst).join(p))
            .unwrap()
            .map(|c| std::fs::read_dir(c.unwrap().path()).unwrap().count())
            .sum::<usize>()
    };
    assert_eq!((count("train"), count("val")), (16, 16));
    expect_error(&["split", "--ratio", "1:1", &src, &dst], "not empty");
}

/// The embedded demo's settings end to end (about 2 minutes on two cores).
#[test]
#[ignore = "long: run with --ignored"]
fn demo_scale_pretraining_beats_chance() {
    let _g = serial();
    let r = std::env::temp_dir().join(format!("mhcl-demo-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&r);
    mhcl::synthetic::SyntheticConfig::new()
        .with_per_class(64, 32)
        .with_size(48)
        .generate(&r.join("data"))
        .unwrap();
    let d = r.join("data").to_string_lossy().into_owned();
    let o = r.join("pre").to_string_lossy().into_owned();
    let argv = [
        "mhcl",
        "pretrain",
        &d,
        "-a",
        "resnet18",
        "--width",
        "16",
        "--image-size",
        "32",
        "-j",
        "2",
        "--seed",
        "0",
        "--mhcl",
        "--a",
        "1",
        "--b",
        "0.1",
        "--mlp",
        "--cos",
        "--moco-t",
        "0.2",
        "--moco-dim",
        "64",
        "--moco-k",
        "256",
        "-b",
        "64",
        "--epochs",
        "60",
        "-p",
        "0",
        "--no-progress",
        "--output-dir",
        &o,
    ];
    let Command::Pretrain(a) = parse_from(argv).unwrap().command else {
        unreachable!()
    };
    let ck = mhcl::cli::pretrain(&a).unwrap().last_checkpoint.unwrap();
    let ck = ck.to_string_lossy().into_owned();
    let lo = r.join("lin").to_string_lossy().into_owned();
    let argv = [
        "mhcl",
        "lincls",
        &d,
        "-a",
        "resnet18",
        "--image-size",
        "32",
        "-j",
        "2",
        "--seed",
        "0",
        "--epochs",
        "30",
        "--schedule",
        "20",
        "25",
        "-b",
        "64",
        "-p",
        "0",
        "--no-progress",
        "--pretrained",
        &ck,
        "--output-dir",
        &lo,
    ];
    let Command::Lincls(a) = parse_from(argv).unwrap().command else {
        unreachable!()
    };
    let s = mhcl::cli::lincls(&a).unwrap();
    assert!(s.best_acc1 > 25.0, "best acc@1 {}", s.best_acc1);
    std::fs::remove_dir_all(&r).ok();
}
