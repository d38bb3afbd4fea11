//! What the `mhcl` integration tests share: one tiny generated dataset per test binary, runs one
//! at a time, and the `mhcl` binary.
#![allow(dead_code)] // each test binary uses its part

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Pretraining and the probe use process-wide state (the stop token of `mhcl::cli`); run them
/// one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// This test binary's folder, holding `data/`: 4 generated classes, 8 train and 4 val images
/// each, 40 px.
pub fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let name = format!("mhcl-{}-{}", env!("CARGO_CRATE_NAME"), std::process::id());
        let r = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&r);
        mhcl::synthetic::SyntheticConfig::new()
            .with_classes(4)
            .with_per_class(8, 4)
            .with_size(40)
            .generate(&r.join("data"))
            .unwrap();
        r
    })
}

/// `root()/name` as a string argument.
pub fn path(name: &str) -> String {
    root().join(name).to_string_lossy().into_owned()
}

/// The `mhcl` binary of this build.
pub fn mhcl_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mhcl"))
}

/// Runs `cmd`; returns (exit code, stdout, stderr).
pub fn output_of(cmd: &mut Command) -> (i32, String, String) {
    let o = cmd.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs `mhcl ARGS`; returns (exit code, stdout, stderr).
pub fn mhcl_bin(args: &[&str]) -> (i32, String, String) {
    output_of(mhcl_command().args(args))
}
