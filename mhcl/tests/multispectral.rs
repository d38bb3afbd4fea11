//! Multispectral data end to end: a generated 13-band TIFF scene set pretrained, resumed and
//! probed; an RGB checkpoint probed on 13-band images; and the bad inputs of band data, each one
//! line naming the file.

mod common;

use std::path::{Path, PathBuf};

use common::{mhcl_bin, serial};
use mhcl::checkpoint::Checkpoint;
use mhcl::synthetic::SyntheticConfig;
use ssl_augment::{BandImage, TiffSample, encode_tiff};

/// This binary's folder with `ms13/` (13-band TIFFs) and `rgb/` (PNGs), generated once.
fn root() -> &'static Path {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let r = std::env::temp_dir().join(format!("mhcl-multispectral-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&r);
        let scenes = SyntheticConfig::new()
            .with_classes(3)
            .with_per_class(8, 4)
            .with_size(40);
        scenes
            .clone()
            .with_bands(13)
            .generate(&r.join("ms13"))
            .unwrap();
        scenes.generate(&r.join("rgb")).unwrap();
        r
    })
}

fn p(rel: &str) -> String {
    root().join(rel).to_string_lossy().into_owned()
}

const PRETRAIN: &[&str] = &[
    "pretrain",
    "-a",
    "resnet18",
    "--width",
    "8",
    "--image-size",
    "32",
    "-b",
    "8",
    "--moco-k",
    "16",
    "--mhcl",
    "--mlp",
    "--aug-plus",
    "-j",
    "2",
    "--seed",
    "0",
    "--no-progress",
];

fn pretrain(data: &str, out: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args: Vec<&str> = PRETRAIN.to_vec();
    args.extend_from_slice(&[data, "--output-dir", out]);
    args.extend_from_slice(extra);
    mhcl_bin(&args)
}

fn lincls(data: &str, out: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "lincls",
        "-a",
        "resnet18",
        "--image-size",
        "32",
        "-b",
        "8",
        "-j",
        "2",
        "--seed",
        "0",
        "--no-progress",
        data,
        "--output-dir",
        out,
    ];
    args.extend_from_slice(extra);
    mhcl_bin(&args)
}

fn one_error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0]
}

#[test]
fn thirteen_band_set_pretrains_resumes_and_probes() {
    let _g = serial();
    let (data, out) = (p("ms13"), p("run13"));
    let (code, stdout, stderr) = pretrain(&data, &out, &["--epochs", "1"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("13-band images"), "{stdout}");
    let stats_file = root().join("run13/band_stats.json");
    assert!(stats_file.is_file(), "band statistics written");

    let first = root().join("run13/checkpoint_0000.safetensors");
    let ckpt = Checkpoint::read(&first).unwrap();
    assert_eq!(ckpt.meta.model.as_ref().unwrap().in_channels, 13);
    assert_eq!(ckpt.tensors["encoder_q.conv1.weight"].shape[1], 13);
    let data_cfg = &ckpt.meta.config["data"];
    assert_eq!(data_cfg["bands"], 13);
    assert_eq!(
        data_cfg["band_stats"]["values"]["mean"]
            .as_array()
            .unwrap()
            .len(),
        13
    );

    // resume: the recorded statistics are reused, nothing is recomputed
    let resume = first.to_string_lossy().into_owned();
    let (code, stdout, stderr) = pretrain(&data, &out, &["--epochs", "2", "--resume", &resume]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains("band statistics"), "{stdout}");
    let last = root().join("run13/checkpoint_0001.safetensors");
    assert_eq!(Checkpoint::read(&last).unwrap().meta.epoch, 2);

    let pretrained = last.to_string_lossy().into_owned();
    let probe = p("probe13");
    let (code, stdout, stderr) = lincls(
        &data,
        &probe,
        &["--epochs", "2", "--pretrained", &pretrained],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("best acc1"), "{stdout}");
    let summary = std::fs::read_to_string(root().join("probe13/lincls_summary.json")).unwrap();
    assert!(summary.contains("best_acc1"));
}

#[test]
fn rgb_checkpoint_probes_13_band_images_through_an_adapted_stem() {
    let _g = serial();
    let (code, _, stderr) = pretrain(&p("rgb"), &p("rgbrun"), &["--epochs", "1"]);
    assert_eq!(code, 0, "{stderr}");
    let rgb = root().join("rgbrun/checkpoint_0000.safetensors");
    let pretrained = rgb.to_string_lossy().into_owned();
    let (code, stdout, stderr) = lincls(
        &p("ms13"),
        &p("adapted"),
        &["--epochs", "1", "--pretrained", &pretrained],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("RGB stem adapted to 13 bands"), "{stdout}");

    // the probe's stem is the RGB stem by the rule: filter b mod 3, scaled by 3/13
    let probe = Checkpoint::read(&root().join("adapted/lincls_checkpoint.safetensors")).unwrap();
    let stem = &probe.tensors["conv1.weight"];
    let source = Checkpoint::read(&rgb).unwrap();
    let rgb_stem = &source.tensors["encoder_q.conv1.weight"];
    let (out, k) = (stem.shape[0], stem.shape[2] * stem.shape[3]);
    assert_eq!(stem.shape[1], 13);
    let (a, b) = (stem.to_f32(), rgb_stem.to_f32());
    for o in 0..out {
        for band in 0..13 {
            for i in 0..k {
                let want = b[(o * 3 + band % 3) * k + i] * (3.0 / 13.0);
                assert_eq!(a[(o * 13 + band) * k + i], want);
            }
        }
    }
}

#[test]
fn a_checkpoint_of_another_band_count_is_one_line() {
    let _g = serial();
    let (code, _, stderr) = pretrain(&p("rgb"), &p("rgb_for_resume"), &["--epochs", "1"]);
    assert_eq!(code, 0, "{stderr}");
    let ckpt = p("rgb_for_resume/checkpoint_0000.safetensors");
    let (code, _, stderr) = pretrain(&p("ms13"), &p("x1"), &["--epochs", "2", "--resume", &ckpt]);
    assert_ne!(code, 0);
    let line = one_error_line(&stderr);
    assert!(
        line.contains("checkpoint_0000.safetensors")
            && line.contains("stem takes 3 bands, but the images have 13"),
        "{line}"
    );
}

#[test]
fn bands_flag_that_does_not_match_the_images_names_the_file() {
    let (code, _, stderr) = pretrain(&p("ms13"), &p("x2"), &["--epochs", "1", "--bands", "4"]);
    assert_ne!(code, 0);
    let line = one_error_line(&stderr);
    assert!(line.contains(".tif: 13 bands, but --bands is 4"), "{line}");
    let (code, _, stderr) = pretrain(&p("rgb"), &p("x3"), &["--epochs", "1", "--bands", "13"]);
    assert_ne!(code, 0);
    let line = one_error_line(&stderr);
    assert!(
        line.contains(".png: 3 bands (read as RGB), but --bands is 13"),
        "{line}"
    );
}

#[test]
fn band_stats_of_the_wrong_length_are_one_line() {
    let file = root().join("two.json");
    std::fs::create_dir_all(root()).unwrap();
    std::fs::write(&file, r#"{"mean": [0.1, 0.2], "std": [1, 1]}"#).unwrap();
    let f = file.to_string_lossy().into_owned();
    let (code, _, stderr) = pretrain(&p("ms13"), &p("x4"), &["--epochs", "1", "--band-stats", &f]);
    assert_ne!(code, 0);
    let line = one_error_line(&stderr);
    assert!(
        line.contains("two.json: 2 means and 2 stds, but the images have 13 bands"),
        "{line}"
    );
}

/// A copy of `ms13` with one image replaced by `bytes` (at `train/<first class>/<name>`).
fn damaged_copy(tag: &str, name: &str, bytes: Vec<u8>) -> String {
    let dst = root().join(tag);
    let _ = std::fs::remove_dir_all(&dst);
    for split in ["train", "val"] {
        for class in std::fs::read_dir(root().join("ms13").join(split)).unwrap() {
            let class = class.unwrap().path();
            let to = dst.join(split).join(class.file_name().unwrap());
            std::fs::create_dir_all(&to).unwrap();
            for f in std::fs::read_dir(&class).unwrap() {
                let f = f.unwrap().path();
                std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
            }
        }
    }
    let class = std::fs::read_dir(dst.join("train"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(class.join(name), bytes).unwrap();
    dst.to_string_lossy().into_owned()
}

#[test]
fn an_image_with_another_band_count_in_the_folder_names_the_file() {
    let four = BandImage::from_fn(4, 40, 40, |b, x, y| ((b + x + y) % 7) as f32 / 7.0);
    let data = damaged_copy(
        "mixed",
        "zz_four_bands.tif",
        encode_tiff(&four, TiffSample::U16, true),
    );
    let (code, _, stderr) = pretrain(&data, &p("x5"), &["--epochs", "1", "--verify-images"]);
    assert_ne!(code, 0);
    let line = one_error_line(&stderr);
    assert!(
        line.contains("zz_four_bands.tif")
            && line.contains("4 bands, but the dataset's images have 13"),
        "{line}"
    );
}

#[test]
fn a_nan_sample_in_a_float_tiff_names_the_file() {
    let mut img = BandImage::from_fn(13, 40, 40, |b, x, y| ((b + x * y) % 5) as f32 / 5.0);
    let plane = img.plane_mut(7);
    plane[3 * 40 + 2] = f32::NAN;
    let data = damaged_copy(
        "nan",
        "zz_nan.tif",
        encode_tiff(&img, TiffSample::F32, false),
    );
    let (code, _, stderr) = pretrain(&data, &p("x6"), &["--epochs", "1", "--verify-images"]);
    assert_ne!(code, 0);
    let line = one_error_line(&stderr);
    assert!(
        line.contains("zz_nan.tif") && line.contains("band 7 at x 2, y 3"),
        "{line}"
    );
}
