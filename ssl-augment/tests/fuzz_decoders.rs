//! The image decoder on damaged files: JPEG (libjpeg-turbo), PNG, TIFF, BMP and WebP encodings of
//! a small picture are mutated and truncated, and `decode_image` must return pixels or an error
//! naming the file — no panic, no input slower than 5 s, no allocation above the stated bound:
//! 64 MiB + 16 x the file's size, or, for a header announcing a large picture, the
//! decompression-bomb limit of `decode_image` (Pillow's `MAX_IMAGE_PIXELS` x 2 pixels; the
//! decoders allocate for the announced size before they find the data missing).
//!
//! `SSL_FUZZ_INPUTS` (default 5000 per format) and `SSL_FUZZ_SECONDS` (default 8 per format).

use std::io::Cursor;
use std::path::Path;
use std::time::Duration;

use ssl_augment::bands::{BandImage, MAX_BAND_SAMPLES, TiffSample, decode_bands, encode_tiff};
use ssl_augment::folder::{MAX_IMAGE_PIXELS, decode_image};
use ssl_conformance::fuzz::{CountingAlloc, FuzzConfig, fuzz};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn picture() -> image::RgbImage {
    image::RgbImage::from_fn(37, 23, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 11) as u8, ((x + y) * 5) as u8])
    })
}

fn encoded(format: image::ImageFormat) -> Vec<u8> {
    let img = picture();
    let mut bytes = Vec::new();
    if format == image::ImageFormat::WebP {
        image::codecs::webp::WebPEncoder::new_lossless(&mut bytes)
            .encode(img.as_raw(), 37, 23, image::ExtendedColorType::Rgb8)
            .unwrap();
    } else {
        img.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
    }
    bytes
}

#[test]
fn decode_image_refuses_damaged_files_without_panicking() {
    use image::ImageFormat::*;
    for (i, (format, ext)) in [
        (Jpeg, "jpg"),
        (Png, "png"),
        (Tiff, "tif"),
        (Bmp, "bmp"),
        (WebP, "webp"),
    ]
    .into_iter()
    .enumerate()
    {
        let path = format!("damaged.{ext}");
        let config = FuzzConfig {
            max_inputs: 5000,
            max_time: Duration::from_secs(8),
            // 16-bit RGBA at the bomb limit, the largest buffer a decoder may ask for
            alloc_fixed: MAX_IMAGE_PIXELS * 8 + (64 << 20),
            seed: i as u64 + 1,
            ..FuzzConfig::default()
        }
        .with_env_overrides();
        let report = fuzz(
            &format!("decode_image {ext}"),
            &[encoded(format)],
            &config,
            |bytes| match decode_image(bytes, Path::new(&path)) {
                Ok(img) => {
                    assert!(img.hw().0 > 0 && img.hw().1 > 0);
                    Ok(())
                }
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains(&path), "the error must name the file: {msg}");
                    Err(msg)
                }
            },
        );
        println!("{report}");
        assert!(report.accepted > 0 && report.refused > 0, "{report}");
    }
}

/// CRC-32 as PNG chunks use it (ISO 3309, reflected, polynomial 0xEDB88320).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn a_header_announcing_a_huge_picture_is_refused_before_decoding() {
    // a valid PNG whose header says 60000 x 60000 (with the header chunk's CRC redone)
    let mut png = encoded(image::ImageFormat::Png);
    png[16..20].copy_from_slice(&60000u32.to_be_bytes());
    png[20..24].copy_from_slice(&60000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    let e = decode_image(&png, Path::new("bomb.png"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bomb.png") && e.contains("pixels"), "{e}");
    // the same for a JPEG (SOF0 height and width at offsets after the marker)
    let mut jpg = encoded(image::ImageFormat::Jpeg);
    let sof = jpg.windows(2).position(|w| w == [0xff, 0xc0]).unwrap();
    jpg[sof + 5..sof + 7].copy_from_slice(&60000u16.to_be_bytes());
    jpg[sof + 7..sof + 9].copy_from_slice(&60000u16.to_be_bytes());
    let e = decode_image(&jpg, Path::new("bomb.jpg"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bomb.jpg") && e.contains("pixels"), "{e}");
}

#[test]
fn decode_bands_refuses_damaged_tiffs_without_panicking() {
    let img = BandImage::from_fn(13, 19, 11, |b, x, y| {
        ((b * 5 + x * 3 + y) % 17) as f32 / 16.0
    });
    let seeds = [
        encode_tiff(&img, TiffSample::U16, true),
        encode_tiff(&img, TiffSample::F32, false),
        encode_tiff(&img, TiffSample::U8, true),
    ];
    let path = "damaged_bands.tif";
    let config = FuzzConfig {
        max_inputs: 5000,
        max_time: Duration::from_secs(8),
        // the decode buffer at the sample limit plus its f32 copy
        alloc_fixed: MAX_BAND_SAMPLES * 4 * 2 + (64 << 20),
        seed: 11,
        ..FuzzConfig::default()
    }
    .with_env_overrides();
    let report = fuzz(
        "decode_bands tif",
        &seeds,
        &config,
        |bytes| match decode_bands(bytes, Path::new(path)) {
            Ok(img) => {
                assert!(img.hw().0 > 0 && img.hw().1 > 0);
                assert!(img.as_raw().iter().all(|v| v.is_finite()));
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(path), "the error must name the file: {msg}");
                Err(msg)
            }
        },
    );
    println!("{report}");
    assert!(report.accepted > 0 && report.refused > 0, "{report}");
}
