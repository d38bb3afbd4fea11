//! Multi-band images: TIFF decoding against an independent writer (and Pillow's), the float
//! resampler against Pillow's `"F"` mode, the blur against torchvision's tensor
//! `gaussian_blur`, the band pipelines and the band-image loader.
//!
//! Fixtures: `tests/fixtures/bands`, written by `scripts/make-band-fixtures.py`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::Value;
use ssl_augment::band_transforms::{
    self, BandNormalize, BandTransform, moco_v2_band_transform, probe_eval_band_transform,
};
use ssl_augment::bands::{BandAccumulator, BandImage, BandStats, open_bands, probe_image};
use ssl_augment::{
    AugmentError, ImageFolder, ImageFolderOptions, Loader, LoaderConfig, RandomResizedCrop,
    RgbImage, TwoCrops, resample,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bands")
}

fn cases() -> Value {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).expect("cases.json");
    serde_json::from_str(&text).expect("cases.json is JSON")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn dims(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("int") as usize)
        .collect()
}

#[test]
fn tiffs_decode_to_the_written_samples_scaled_to_their_type() {
    let cases = cases();
    let files = cases["files"].as_object().expect("files");
    assert!(files.len() >= 7, "fixture set is incomplete");
    for (name, want) in files {
        let img = open_bands(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let shape = dims(&want["shape"]);
        assert_eq!(
            vec![img.bands(), img.height(), img.width()],
            shape,
            "{name}"
        );
        let values = floats(&want["values"]);
        assert_eq!(img.as_raw(), &values[..], "{name}");
    }
}

#[test]
fn sixteen_bit_samples_keep_their_low_byte() {
    let img = open_bands(fixtures().join("rgb_u16.tif")).unwrap();
    let as_u16: Vec<u32> = img
        .as_raw()
        .iter()
        .map(|&v| (v * 65535.0).round() as u32)
        .collect();
    assert!(as_u16.iter().any(|v| v % 256 != 0));
    let info = probe_image(fixtures().join("rgb_u16.tif")).unwrap();
    assert_eq!((info.bands, info.bits, info.float), (3, 16, false));
    assert!(!info.is_8bit_rgb());
}

#[test]
fn probe_reads_band_count_and_sample_type_from_the_header() {
    let info = probe_image(fixtures().join("planar_u16_13.tif")).unwrap();
    assert_eq!((info.bands, info.bits, info.float), (13, 16, false));
    let info = probe_image(fixtures().join("chunky_f32_4.tif")).unwrap();
    assert_eq!((info.bands, info.bits, info.float), (4, 32, true));
}

#[test]
fn nan_sample_is_an_error_naming_file_band_and_pixel() {
    let e = open_bands(fixtures().join("nan_f32.tif")).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, AugmentError::Decode { .. }));
    assert!(
        msg.contains("nan_f32.tif") && msg.contains("band 1") && msg.contains("x 1, y 2"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
}

#[test]
fn more_than_32_bands_and_signed_samples_are_refused() {
    let msg = open_bands(fixtures().join("bands_40.tif"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("bands_40.tif") && msg.contains("40 bands"),
        "{msg}"
    );
    let msg = open_bands(fixtures().join("int16.tif"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("int16.tif") && msg.contains("16-bit signed"),
        "{msg}"
    );
}

#[test]
fn non_tiff_images_decode_as_three_bands_over_255() {
    let dir = tempdir("rgb");
    let path = dir.join("a.png");
    image::RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8 * 100, y as u8 * 51, 7]))
        .save(&path)
        .unwrap();
    let img = open_bands(&path).unwrap();
    assert_eq!((img.bands(), img.height(), img.width()), (3, 2, 3));
    assert_eq!(img.get(0, 2, 0), Some(200.0 / 255.0));
    assert_eq!(img.get(1, 0, 1), Some(51.0 / 255.0));
}

#[test]
fn float_resize_matches_pillow_mode_f() {
    for case in cases()["resize"].as_array().unwrap() {
        let (input, out) = (dims(&case["in"]), dims(&case["out"]));
        let x = BandImage::from_planes(1, input[1], input[0], floats(&case["x"])).unwrap();
        let y = band_transforms::resize(&x, out[0], out[1]).unwrap();
        let want = floats(&case["y"]);
        for (i, (a, b)) in y.as_raw().iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{input:?} -> {out:?} at {i}: {a} vs Pillow {b}"
            );
        }
    }
}

#[test]
fn float_resize_of_gray_rgb_planes_tracks_the_8bit_resize() {
    // The same weights as the 8-bit path: on 8-bit data the float result rounds to within one
    // level of Pillow's 8-bit result (which rounds between its two passes).
    let rgb = RgbImage::from_fn(37, 23, |x, y| [(x * 7 + y * 3) as u8, (x * y) as u8, 200]);
    let bands = BandImage::from_rgb(&rgb);
    let a = resample::resized_crop(&rgb, 2, 3, 19, 31, 12, 14).unwrap();
    let b = band_transforms::resized_crop(&bands, 2, 3, 19, 31, 12, 14).unwrap();
    let b8 = BandImage::from_rgb(&a);
    for (x, y) in b.as_raw().iter().zip(b8.as_raw()) {
        assert!((x - y).abs() <= 1.0 / 255.0 + 1e-6, "{x} vs {y}");
    }
}

#[test]
fn gaussian_blur_matches_torchvision() {
    for case in cases()["blur"].as_array().unwrap() {
        let input = dims(&case["in"]);
        let mut x =
            BandImage::from_planes(input[0], input[2], input[1], floats(&case["x"])).unwrap();
        let k = case["kernel"].as_u64().unwrap() as usize;
        let sigma = case["sigma"].as_f64().unwrap() as f32;
        band_transforms::gaussian_blur(&mut x, k, sigma);
        for (a, b) in x.as_raw().iter().zip(&floats(&case["y"])) {
            assert!(
                (a - b).abs() <= 1e-5,
                "{input:?} k {k}: {a} vs torchvision {b}"
            );
        }
    }
}

#[test]
fn band_crop_draws_the_same_region_as_the_rgb_crop() {
    let rgb = RgbImage::from_fn(40, 30, |x, y| [x as u8 * 6, y as u8 * 8, 0]);
    let bands = BandImage::from_rgb(&rgb);
    let rrc = RandomResizedCrop::new(16).unwrap();
    for seed in 0..20 {
        let a =
            ssl_augment::ImageTransform::apply_ref(&rrc, &rgb, &mut StdRng::seed_from_u64(seed))
                .unwrap();
        let b = BandTransform::apply_ref(&rrc, &bands, &mut StdRng::seed_from_u64(seed)).unwrap();
        let a = BandImage::from_rgb(&a);
        let worst = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1.0 / 255.0 + 1e-6, "seed {seed}: {worst}");
    }
}

fn normalize(bands: usize) -> BandNormalize {
    BandNormalize::new(&BandStats {
        mean: vec![0.5; bands],
        std: vec![0.25; bands],
    })
    .unwrap()
}

#[test]
fn moco_band_pipeline_gives_normalized_views_of_every_band() {
    let img = BandImage::from_fn(13, 50, 40, |b, x, y| {
        ((b * 31 + x * 7 + y * 3) % 97) as f32 / 97.0
    });
    let pipeline = moco_v2_band_transform(24, normalize(13)).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let view = ssl_augment::ViewPipeline::view(&pipeline, &img, &mut rng).unwrap();
    assert_eq!(view.shape(), [13, 24, 24]);
    assert!(view.data.iter().all(|v| v.is_finite()));
    let eval = probe_eval_band_transform(24, normalize(13)).unwrap();
    let a = ssl_augment::ViewPipeline::view(&eval, &img, &mut StdRng::seed_from_u64(1)).unwrap();
    let b = ssl_augment::ViewPipeline::view(&eval, &img, &mut StdRng::seed_from_u64(2)).unwrap();
    assert_eq!(a, b, "the eval transform is deterministic");
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ssl-augment-bands-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn folder_of(tag: &str, files: &[(&str, &str)]) -> PathBuf {
    let root = tempdir(tag);
    for (class, fixture) in files {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        let n = std::fs::read_dir(&dir).unwrap().count();
        std::fs::copy(fixtures().join(fixture), dir.join(format!("{n}_{fixture}"))).unwrap();
    }
    root
}

#[test]
fn band_loader_batches_nchw_views_of_n_bands() {
    let root = folder_of(
        "loader",
        &[
            ("a", "planar_u16_13.tif"),
            ("a", "chunky_u16_13.tif"),
            ("b", "planar_u16_13.tif"),
        ],
    );
    let options = ImageFolderOptions::default().with_bands(Some(13));
    let folder = Arc::new(ImageFolder::new(&root, &options).unwrap());
    let transform = TwoCrops::new(moco_v2_band_transform(8, normalize(13)).unwrap());
    let config = LoaderConfig::default().with_batch_size(3).with_workers(2);
    let loader = Loader::new_bands(folder, Arc::new(transform), config).unwrap();
    let batches: Vec<_> = loader.epoch(0).map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), 1);
    let b = &batches[0];
    assert_eq!(b.shape(), [3, 13, 8, 8]);
    assert_eq!(b.num_views(), 2);
    assert_eq!(b.view(1).len(), 3 * 13 * 64);
    assert_ne!(b.view(0), b.view(1));
}

#[test]
fn an_image_with_another_band_count_is_an_error_naming_it() {
    let root = folder_of(
        "mixed",
        &[("a", "planar_u16_13.tif"), ("b", "chunky_f32_4.tif")],
    );
    let options = ImageFolderOptions::default().with_bands(Some(13));
    let folder = ImageFolder::new(&root, &options).unwrap();
    let e = folder.load_bands(1).unwrap_err().to_string();
    assert!(
        e.contains("chunky_f32_4.tif") && e.contains("4 bands") && e.contains("13"),
        "{e}"
    );
    let verified = ImageFolder::new(&root, &options.clone().with_verify(true));
    let e = verified.unwrap_err().to_string();
    assert!(e.contains("chunky_f32_4.tif"), "{e}");
}

#[test]
fn band_stats_accumulate_over_a_folder() {
    let mut acc = BandAccumulator::default();
    let a = open_bands(fixtures().join("planar_u8_6.tif")).unwrap();
    acc.add(&a).unwrap();
    let stats = acc.stats().unwrap();
    assert_eq!(stats.mean.len(), 6);
    let mean0 = a.plane(0).iter().sum::<f32>() / a.plane(0).len() as f32;
    assert!((stats.mean[0] - mean0).abs() < 1e-6);
}
