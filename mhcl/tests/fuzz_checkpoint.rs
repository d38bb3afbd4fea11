//! `Checkpoint::read` on damaged training checkpoints: a small checkpoint as `mhcl pretrain`
//! writes it (tensors, the JSON metadata of the run, the RNG state) is mutated and truncated,
//! and reading must give the checkpoint or one error — no panic, no input slower than 5 s, no
//! allocation above 64 MiB + 16 x the file's size (`ssl_conformance::fuzz`). `SSL_FUZZ_INPUTS`
//! (default 5000) and `SSL_FUZZ_SECONDS` (default 10) set how long it runs.

use std::time::Duration;

use mhcl::checkpoint::{Checkpoint, CheckpointMeta, RngState};
use ssl_conformance::fuzz::{CountingAlloc, FuzzConfig, fuzz};
use ssl_models::weights::RawTensor;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[test]
fn checkpoint_reader_refuses_damaged_files_without_panicking() {
    let dir = std::env::temp_dir().join(format!("mhcl-fuzz-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut meta = CheckpointMeta::new("resnet18");
    meta.epoch = 3;
    meta.rng = RngState { seed: 7, step: 99 };
    meta.args = serde_json::json!({"lr": 0.03, "mhcl": true, "moco_k": 16});
    let mut c = Checkpoint::new(meta);
    c.insert(
        "encoder_q.fc.weight",
        RawTensor::f32([4, 8], (0..32).map(|i| i as f32).collect()),
    );
    c.insert("queue", RawTensor::f32([2, 4, 16], vec![0.25; 128]));
    c.insert("queue_ptr", RawTensor::i64([1], vec![8]));
    let good = dir.join("good.safetensors");
    c.write_atomic(&good).unwrap();
    let corpus = vec![std::fs::read(&good).unwrap()];
    let scratch = dir.join("input.safetensors");
    let config = FuzzConfig {
        max_inputs: 5000,
        max_time: Duration::from_secs(10),
        ..FuzzConfig::default()
    }
    .with_env_overrides();
    let report = fuzz("mhcl checkpoint", &corpus, &config, |bytes| {
        std::fs::write(&scratch, bytes).map_err(|e| e.to_string())?;
        Checkpoint::read(&scratch)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    println!("{report}");
    assert!(report.refused > 0 && report.accepted > 0, "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}
