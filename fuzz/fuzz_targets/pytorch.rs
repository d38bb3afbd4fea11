//! `ssl_models::weights::read_pytorch` (`torch.save` zip/pickle files) on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("ssl-fuzz-pt-{}", std::process::id()));
    if std::fs::write(&path, data).is_ok() {
        let _ = ssl_models::weights::read_pytorch(&path, None);
        let _ = ssl_models::weights::read_pytorch(&path, Some("state_dict"));
    }
});
