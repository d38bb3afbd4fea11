//! `ssl_models::weights::read_safetensors` on arbitrary bytes: an error or the tensors, no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("ssl-fuzz-st-{}", std::process::id()));
    if std::fs::write(&path, data).is_ok() {
        let _ = ssl_models::weights::read_safetensors(&path);
    }
});
