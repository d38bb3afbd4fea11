//! `ssl_augment::folder::decode_image` (JPEG, PNG, TIFF, BMP, WebP) on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ssl_augment::folder::decode_image(data, std::path::Path::new("fuzz-input"));
});
