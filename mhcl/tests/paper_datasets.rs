//! The commands of docs/reproducing.md on small stand-ins of the paper's four datasets in their
//! real layouts and file formats: UC Merced (21 classes, 256 x 256 RGB TIFF), NWPU-RESISC45 (45,
//! 256 x 256 JPEG), MLRSNet (46, 256 x 256 JPEG), AID (30, 600 x 600 JPEG). Each is split with
//! its ratio, opened as the runs open it, and UC Merced and AID are pretrained for a step with
//! their Beta(a, b).

mod common;

use std::path::PathBuf;

use common::{mhcl_bin, serial};

/// One dataset of the paper and its split.
#[derive(Clone, Copy)]
struct PaperDataset {
    /// Split folder name in docs/reproducing.md.
    name: &'static str,
    /// Source folder as distributed.
    src: &'static str,
    classes: usize,
    side: u32,
    ext: &'static str,
    ratio: &'static str,
    /// Beta(a, b) of the paper.
    a: &'static str,
    b: &'static str,
}

const DATASETS: &[PaperDataset] = &[
    PaperDataset {
        name: "UCM64",
        src: "UCMerced_LandUse/Images",
        classes: 21,
        side: 256,
        ext: "tif",
        ratio: "6:4",
        a: "20",
        b: "0.1",
    },
    PaperDataset {
        name: "NWPU28",
        src: "NWPU-RESISC45",
        classes: 45,
        side: 256,
        ext: "jpg",
        ratio: "2:8",
        a: "10",
        b: "0.1",
    },
    PaperDataset {
        name: "NWPU82",
        src: "NWPU-RESISC45",
        classes: 45,
        side: 256,
        ext: "jpg",
        ratio: "8:2",
        a: "10",
        b: "1.0",
    },
    PaperDataset {
        name: "MLRSNet46",
        src: "MLRSNet",
        classes: 46,
        side: 256,
        ext: "jpg",
        ratio: "4:6",
        a: "1",
        b: "0.1",
    },
    PaperDataset {
        name: "AID28",
        src: "AID",
        classes: 30,
        side: 600,
        ext: "jpg",
        ratio: "2:8",
        a: "1",
        b: "0.1",
    },
];

/// Images per class in the stand-ins.
const PER_CLASS: usize = 5;

fn root() -> PathBuf {
    std::env::temp_dir().join(format!("mhcl-paper-datasets-{}", std::process::id()))
}

/// The stand-in of `d` (`SRC/<class>/<class><i>.<ext>`, `PER_CLASS` scenes per class, written
/// once) split with its ratio into `root()/dst`; returns `dst` and the output of `mhcl split`.
fn split_stand_in(d: &PaperDataset, dst: &str) -> (PathBuf, (i32, String, String)) {
    let src = root().join(d.src);
    if !src.is_dir() {
        for c in 0..d.classes {
            let class = format!("class_{c:02}");
            let dir = src.join(&class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..PER_CLASS {
                let img = mhcl::synthetic::render(c % 8, d.side, (c * 100 + i) as u64);
                img.save(dir.join(format!("{class}{i:02}.{}", d.ext)))
                    .unwrap();
            }
        }
    }
    let dst = root().join(dst);
    let (s, t) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let out = mhcl_bin(&["split", "--ratio", d.ratio, "--seed", "0", s, t]);
    (dst, out)
}

/// Train images per class of a `a:b` split of `PER_CLASS` images (Python's `round`).
fn train_per_class(ratio: &str) -> usize {
    let (a, b) = ratio.split_once(':').unwrap();
    let (a, b): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
    (PER_CLASS as f64 * a / (a + b)).round_ties_even() as usize
}

#[test]
fn every_paper_dataset_splits_with_its_ratio_and_opens_as_rgb() {
    // one test at a time: both write the stand-ins
    let _g = serial();
    for d in DATASETS {
        let PaperDataset {
            name,
            classes,
            side,
            ext,
            ratio,
            ..
        } = *d;
        let (dst, (code, stdout, stderr)) = split_stand_in(d, name);
        assert_eq!(code, 0, "{name}: {stderr}");
        let train = train_per_class(ratio) * classes;
        let val = PER_CLASS * classes - train;
        assert!(
            stdout.contains(&format!(
                "{classes} classes, {train} train / {val} val images"
            )),
            "{name}: {stdout}"
        );
        let listing = mhcl::data::open_split(&dst, "train").unwrap();
        let bands = mhcl::images::detect_split_bands(&listing, None).unwrap();
        assert_eq!(bands, None, "{name}: 8-bit RGB {ext} takes the RGB path");
        let folder = mhcl::data::open_split(&dst, "val").unwrap();
        assert_eq!(folder.classes().len(), classes);
        let img = folder.load(0).unwrap();
        assert_eq!((img.width(), img.height()), (side as usize, side as usize));
    }
}

#[test]
fn uc_merced_and_aid_stand_ins_pretrain_with_the_papers_beta() {
    let _g = serial();
    for d in DATASETS {
        let PaperDataset { name, a, b, .. } = *d;
        if !matches!(name, "UCM64" | "AID28") {
            continue;
        }
        let (dst, (code, _, stderr)) = split_stand_in(d, &format!("{name}-run"));
        assert_eq!(code, 0, "{name}: {stderr}");
        let out = root().join(format!("{name}-out"));
        let (code, stdout, stderr) = mhcl_bin(&[
            "pretrain",
            dst.to_str().unwrap(),
            "-a",
            "resnet18",
            "--width",
            "8",
            "--image-size",
            "32",
            "-b",
            "16",
            "--moco-k",
            "32",
            "--epochs",
            "1",
            "--mhcl",
            "--a",
            a,
            "--b",
            b,
            "--mlp",
            "--aug-plus",
            "--cos",
            "--moco-t",
            "0.2",
            "-j",
            "2",
            "--seed",
            "0",
            "--no-progress",
            "--output-dir",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{name}: {stderr}");
        assert!(stdout.contains("RGB images"), "{name}: {stdout}");
        assert!(out.join("checkpoint_0000.safetensors").is_file(), "{name}");
    }
}
