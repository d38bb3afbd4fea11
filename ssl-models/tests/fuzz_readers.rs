//! The weight readers on mutated and truncated files: the committed fixtures (a safetensors
//! encoder as our checkpoints write them, torchvision `.pth` in f32 and f16, an original MHCL
//! `.pth.tar` training checkpoint) are damaged in many ways, and each reader must return the
//! tensors or an error — no panic, no input slower than 5 s, no allocation above
//! 64 MiB + 16 x the file's size (`ssl_conformance::fuzz`).
//!
//! `SSL_FUZZ_INPUTS` (default 3000 per reader) and `SSL_FUZZ_SECONDS` (default 12 per reader)
//! set how long it runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ssl_conformance::ConformanceSet;
use ssl_conformance::fuzz::{CountingAlloc, FuzzConfig, fuzz};
use ssl_models::weights::{read_pytorch, read_safetensors};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn config(seed: u64) -> FuzzConfig {
    FuzzConfig {
        max_inputs: 3000,
        max_time: Duration::from_secs(12),
        seed,
        ..FuzzConfig::default()
    }
    .with_env_overrides()
}

fn fixture(name: &str) -> PathBuf {
    ConformanceSet::open().dir().join("fixtures").join(name)
}

/// Runs `read` on `bytes` written to a scratch file (the readers take paths).
fn through_file(
    scratch: &Path,
    bytes: &[u8],
    read: impl Fn(&Path) -> Result<(), String>,
) -> Result<(), String> {
    std::fs::write(scratch, bytes).map_err(|e| e.to_string())?;
    read(scratch)
}

#[test]
fn weight_readers_refuse_damaged_files_without_panicking() {
    let dir = std::env::temp_dir().join(format!("ssl-models-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    type Reader = fn(&Path) -> Result<(), String>;
    let readers: [(&str, &str, Reader); 4] = [
        (
            "safetensors checkpoint",
            "mhcl_w8_encoder_q.safetensors",
            |p| read_safetensors(p).map(|_| ()).map_err(|e| e.to_string()),
        ),
        ("torchvision .pth", "resnet18_w8.pth", |p| {
            read_pytorch(p, None).map(|_| ()).map_err(|e| e.to_string())
        }),
        ("torchvision .pth f16", "resnet18_w8_fp16.pth", |p| {
            read_pytorch(p, None).map(|_| ()).map_err(|e| e.to_string())
        }),
        ("MHCL .pth.tar", "checkpoint_0000.pth.tar", |p| {
            read_pytorch(p, Some("state_dict"))
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
    ];
    for (i, (name, file, read)) in readers.into_iter().enumerate() {
        let corpus = vec![std::fs::read(fixture(file)).unwrap()];
        let scratch = dir.join(format!("input-{i}"));
        let report = fuzz(name, &corpus, &config(i as u64 + 1), |bytes| {
            through_file(&scratch, bytes, read)
        });
        println!("{report}");
        assert!(report.refused > 0, "{report}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
