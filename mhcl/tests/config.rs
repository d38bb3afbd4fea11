//! Run configs on the command line: `--print-config` / `--config FILE` train the same run as
//! the flags, config-file errors are one line naming the file and key, and checkpoints store
//! the config (older ones, which stored the flags, still resume).

use std::path::PathBuf;

use mhcl::checkpoint::Checkpoint;
use mhcl::cli::{Command, PretrainArgs, parse_from};
use mhcl::config::PretrainConfig;

mod common;
use common::{mhcl_bin, path, root, serial};

/// One epoch of a tiny MHCL run, without the dataset folder.
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
    "--cos",
    "--moco-t",
    "0.2",
    "-j",
    "2",
    "--seed",
    "3",
    "-p",
    "2",
    "--epochs",
    "1",
    "--no-progress",
    "--wd",
    "5e-4",
];

fn args(extra: &[&str]) -> PretrainArgs {
    let mut argv = vec!["mhcl", "pretrain"];
    argv.extend_from_slice(extra);
    match parse_from(argv).unwrap().command {
        Command::Pretrain(a) => a,
        _ => unreachable!(),
    }
}

fn write(name: &str, text: &str) -> String {
    let p = path(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The error line of `mhcl pretrain ARGS`, checked to be one line.
fn error_of(args: &[&str]) -> String {
    let mut argv = vec!["pretrain"];
    argv.extend_from_slice(args);
    let (code, _, err) = mhcl_bin(&argv);
    assert_eq!(code, 1, "{argv:?}: {err}");
    let err = err.trim_end().to_string();
    assert!(!err.contains('\n'), "one line: {err}");
    err
}

#[test]
fn print_config_then_config_file_trains_the_same_checkpoint_as_the_flags() {
    let _g = serial();
    let mut argv = vec!["pretrain", "--print-config"];
    argv.extend_from_slice(TINY);
    let (code, toml, err) = mhcl_bin(&argv);
    assert_eq!(code, 0, "{err}");
    assert!(
        toml.contains("[model]") && toml.contains("queue_len = 32"),
        "{toml}"
    );
    let file = write("run.toml", &toml);
    let data = path("data");

    let (by_flags, by_file) = (path("by-flags"), path("by-file"));
    let mut flags = vec![data.as_str(), "--output-dir", by_flags.as_str()];
    flags.extend_from_slice(TINY);
    let a = mhcl::cli::pretrain(&args(&flags)).unwrap();
    let b = mhcl::cli::pretrain(&args(&[
        "--config",
        &file,
        &data,
        "--output-dir",
        &by_file,
        "--no-progress",
    ]))
    .unwrap();
    let (a, b) = (
        Checkpoint::read(&a.last_checkpoint.unwrap()).unwrap(),
        Checkpoint::read(&b.last_checkpoint.unwrap()).unwrap(),
    );
    assert_eq!(
        a.tensors, b.tensors,
        "the same weights, queue and optimizer bits"
    );
    assert_eq!(a.meta.rng, b.meta.rng);
    let (mut ca, cb): (PretrainConfig, PretrainConfig) = (
        serde_json::from_value(a.meta.config.clone()).unwrap(),
        serde_json::from_value(b.meta.config.clone()).unwrap(),
    );
    ca.output.dir = cb.output.dir.clone();
    assert_eq!(
        ca, cb,
        "the stored configs differ only in the output folder"
    );
}

#[test]
fn a_flag_overrides_the_config_file() {
    let file = write("epochs.toml", "[training]\nepochs = 7\nbatch_size = 16\n");
    let a = args(&["--config", &file, "d", "--epochs", "3"]);
    let c = PretrainConfig::try_from(&a).unwrap();
    assert_eq!((c.training.epochs, c.training.batch_size), (3, 16));
    assert_eq!(
        c.training.lr, 0.03,
        "keys the file leaves out keep their defaults"
    );
}

#[test]
fn an_unknown_key_names_the_file_and_key() {
    let file = write("unknown.toml", "[model]\narch = \"resnet18\"\nwidht = 8\n");
    let e = error_of(&["--config", &file, "d"]);
    assert!(e.contains("unknown.toml") && e.contains("widht"), "{e}");
}

#[test]
fn a_value_of_the_wrong_type_names_the_file_line_and_key() {
    let file = write("wrong.toml", "seed = 1\n[training]\nlr = \"fast\"\n");
    let e = error_of(&["--config", &file, "d"]);
    assert!(e.contains("wrong.toml: line 3: training.lr:"), "{e}");
}

#[test]
fn a_bad_value_from_the_file_names_the_file_and_one_from_a_flag_names_the_flag() {
    let file = write("bad-batch.toml", "[training]\nbatch_size = 0\n");
    let e = error_of(&["--config", &file, "d"]);
    assert!(
        e.contains("bad-batch.toml: training.batch_size: must be positive"),
        "{e}"
    );
    let file = write("queue.toml", "[model]\nqueue_len = 64\n");
    // the file's queue conflicts with the flag's batch: named from the file, flags mentioned
    let e = error_of(&["--config", &file, "d", "-b", "48"]);
    assert!(
        e.contains("queue.toml: model.queue_len") && e.contains("with the flags given"),
        "{e}"
    );
    let e = error_of(&["d", "-b", "0"]);
    assert!(e.contains("--batch-size: must be positive"), "{e}");
}

#[test]
fn a_missing_config_file_is_one_line() {
    let e = error_of(&["--config", "/nonexistent/run.toml", "d"]);
    assert!(e.contains("/nonexistent/run.toml"), "{e}");
}

fn tiny_run(out: &str) -> PathBuf {
    let data = path("data");
    let mut flags = vec![data.as_str(), "--output-dir", out];
    flags.extend_from_slice(TINY);
    mhcl::cli::pretrain(&args(&flags))
        .unwrap()
        .last_checkpoint
        .unwrap()
}

#[test]
fn a_checkpoint_of_another_model_names_the_key_and_the_file() {
    let _g = serial();
    let ck = tiny_run(&path("mismatch"));
    let cks = ck.to_string_lossy().into_owned();
    let data = path("data");
    let mut flags = vec![data.as_str(), "--resume", cks.as_str()];
    flags.extend_from_slice(TINY);
    flags.extend_from_slice(&["--width", "8", "--epochs", "2", "--output-dir"]);
    let o = path("mismatch-2");
    flags.push(&o);
    let e = mhcl::cli::pretrain(&args(&flags)).unwrap_err().to_string();
    assert!(
        e.contains(&cks) && e.contains("model.width is 4 there, but 8 in this run"),
        "{e}"
    );
}

#[test]
fn a_checkpoint_that_stores_flags_instead_of_a_config_still_resumes() {
    let _g = serial();
    let ck = tiny_run(&path("old-format"));
    // the layout of checkpoints written before configs: `args` with the flags, no `config`
    let mut old = Checkpoint::read(&ck).unwrap();
    old.meta.config = serde_json::Value::Null;
    old.meta.args = serde_json::json!({"arch": "resnet18", "lr": 0.03, "mhcl": true});
    let old_path = root().join("old-format/checkpoint_old.safetensors");
    old.write_atomic(&old_path).unwrap();
    let back = Checkpoint::read(&old_path).unwrap();
    assert!(back.meta.config.is_null() && !back.meta.args.is_null());

    let data = path("data");
    let olds = old_path.to_string_lossy().into_owned();
    let o = path("old-format-resumed");
    let mut flags = vec![
        data.as_str(),
        "--resume",
        olds.as_str(),
        "--output-dir",
        o.as_str(),
    ];
    flags.extend_from_slice(TINY);
    flags.extend_from_slice(&["--epochs", "2"]);
    let outcome = mhcl::cli::pretrain(&args(&flags)).unwrap();
    assert_eq!(outcome.metrics.len(), 1, "resumed at epoch 1 of 2");
    let written = Checkpoint::read(&outcome.last_checkpoint.unwrap()).unwrap();
    assert!(
        written.meta.config.is_object(),
        "new checkpoints store the config"
    );
}
