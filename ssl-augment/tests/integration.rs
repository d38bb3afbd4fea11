//! ImageFolder, decoding, bad input, random transforms and the loader.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use rand::SeedableRng;
use ssl_augment::{
    AugmentError, CenterCrop, ColorJitter, Dataset, GaussianBlur, ImageFolder, ImageFolderOptions,
    ImageTransform, Loader, LoaderConfig, Normalize, RandomResizedCrop, RgbImage, StdRng, Subset,
    TwoCrops, color, geometry, moco_v1_transform, moco_v2_transform, probe_eval_transform,
    probe_train_transform, resample,
};

// ------------------------------------------------------------------ helpers

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(tag: &str) -> TempDir {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "ssl-augment-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

fn pattern(w: u32, h: u32, seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 7 + seed * 31) as u8,
            (y * 5 + seed * 17) as u8,
            ((x ^ y) * 3 + seed) as u8,
        ])
    })
}

fn write_jpeg(path: &Path, w: u32, h: u32, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    pattern(w, h, seed).save(path).unwrap();
}

/// An 8-bit palette BMP (Pillow mode "P"), written by hand.
fn palette_bmp(
    w: usize,
    h: usize,
    palette: &[[u8; 3]],
    index: impl Fn(usize, usize) -> u8,
) -> Vec<u8> {
    let row = (w + 3) & !3;
    let pal = 256 * 4;
    let off = 14 + 40 + pal;
    let size = off + row * h;
    let mut b = Vec::with_capacity(size);
    b.extend_from_slice(b"BM");
    b.extend_from_slice(&(size as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&(off as u32).to_le_bytes());
    b.extend_from_slice(&40u32.to_le_bytes());
    b.extend_from_slice(&(w as i32).to_le_bytes());
    b.extend_from_slice(&(h as i32).to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&8u16.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // BI_RGB
    b.extend_from_slice(&((row * h) as u32).to_le_bytes());
    b.extend_from_slice(&2835u32.to_le_bytes());
    b.extend_from_slice(&2835u32.to_le_bytes());
    b.extend_from_slice(&256u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    for i in 0..256 {
        let c = palette.get(i).copied().unwrap_or([0, 0, 0]);
        b.extend_from_slice(&[c[2], c[1], c[0], 0]); // BGRA
    }
    for y in (0..h).rev() {
        for x in 0..row {
            b.push(if x < w { index(x, y) } else { 0 });
        }
    }
    b
}

fn decode_error_names(err: &AugmentError, file: &Path) -> bool {
    err.to_string().contains(&file.display().to_string())
}

// ------------------------------------------------------------------ ImageFolder

#[test]
fn image_folder_sorts_like_torchvision() {
    let root = temp_dir("sort");
    // Class names in Python's (code point) order: "B" < "a" < "a_b" < "ab".
    for (class, files) in [
        ("ab", vec!["z.jpg", "a.JPG"]),
        ("B", vec!["x.png"]),
        (
            "a",
            vec!["b.jpeg", "sub/c.bmp", "sub-x/d.tif", "a.webp", "notes.txt"],
        ),
        ("a_b", vec!["1.tiff"]),
    ] {
        for f in files {
            let p = root.join(class).join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            if f.ends_with(".txt") {
                std::fs::write(&p, "not an image").unwrap();
            } else if f.ends_with(".webp") {
                let img = pattern(9, 7, 1);
                let mut bytes = Vec::new();
                image::codecs::webp::WebPEncoder::new_lossless(&mut bytes)
                    .encode(img.as_raw(), 9, 7, image::ExtendedColorType::Rgb8)
                    .unwrap();
                std::fs::write(&p, bytes).unwrap();
            } else {
                let fmt = image::ImageFormat::from_path(&p).unwrap();
                pattern(9, 7, 1).save_with_format(&p, fmt).unwrap();
            }
        }
    }
    std::fs::write(root.join("stray.jpg"), b"files in the root are ignored").unwrap();
    let f = ImageFolder::new(&root, &ImageFolderOptions::default()).unwrap();
    assert_eq!(f.classes(), ["B", "a", "a_b", "ab"]);
    assert_eq!(f.class_index("a_b"), Some(2));
    let rel: Vec<(String, usize)> = f
        .samples()
        .iter()
        .map(|(p, l)| (p.strip_prefix(&root).unwrap().display().to_string(), *l))
        .collect();
    // sorted(os.walk()): "a" < "a/sub" < "a/sub-x"? No: "a/sub" < "a/sub-x" because the
    // shorter string is a prefix; files sorted by name inside each directory.
    let want = [
        ("B/x.png", 0),
        ("a/a.webp", 1),
        ("a/b.jpeg", 1),
        ("a/sub/c.bmp", 1),
        ("a/sub-x/d.tif", 1),
        ("a_b/1.tiff", 2),
        ("ab/a.JPG", 3),
        ("ab/z.jpg", 3),
    ];
    let want: Vec<(String, usize)> = want.iter().map(|(p, l)| (p.to_string(), *l)).collect();
    assert_eq!(rel, want);
    assert_eq!(f.targets(), vec![0, 1, 1, 1, 1, 2, 3, 3]);
    for i in 0..f.len() {
        let img = f.load(i).unwrap();
        assert_eq!((img.width(), img.height()), (9, 7), "{:?}", f.samples()[i]);
    }
    // Lossless formats give back the exact pixels.
    assert_eq!(f.load(0).unwrap().as_raw(), pattern(9, 7, 1).as_raw());
    assert!(matches!(
        f.load(99),
        Err(AugmentError::IndexOutOfRange { .. })
    ));
}

#[test]
fn gray_rgba_palette_and_16_bit_images_become_rgb() {
    let root = temp_dir("modes");
    let dir = root.join("c");
    std::fs::create_dir_all(&dir).unwrap();
    let gray = image::GrayImage::from_fn(4, 3, |x, y| image::Luma([(x * 60 + y) as u8]));
    gray.save(dir.join("1_gray.png")).unwrap();
    let rgba = image::RgbaImage::from_fn(4, 3, |x, y| {
        image::Rgba([x as u8, y as u8, 9, (x * 80) as u8])
    });
    rgba.save(dir.join("2_rgba.png")).unwrap();
    let g16 = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_fn(4, 3, |x, _| {
        image::Luma([x as u16 * 20000 + 255])
    });
    g16.save(dir.join("3_gray16.png")).unwrap();
    let c16 = image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_fn(4, 3, |x, y| {
        image::Rgb([x as u16 * 256 + 200, y as u16 * 512, 65535])
    });
    c16.save(dir.join("4_rgb16.tif")).unwrap();
    let pal = [[10, 20, 30], [200, 100, 0], [1, 2, 3]];
    std::fs::write(
        dir.join("5_palette.bmp"),
        palette_bmp(4, 3, &pal, |x, y| ((x + y) % 3) as u8),
    )
    .unwrap();
    gray.save(dir.join("6_gray.jpg")).unwrap();

    let f = ImageFolder::new(&root, &ImageFolderOptions::default().with_verify(true)).unwrap();
    assert_eq!(f.len(), 6);
    let px = |i: usize, x: usize, y: usize| f.load(i).unwrap().get(x, y).unwrap();
    assert_eq!(px(0, 2, 1), [121, 121, 121]);
    assert_eq!(px(1, 3, 2), [3, 2, 9]); // alpha dropped, not composited
    assert_eq!(px(2, 2, 0), [157, 157, 157]); // high byte of 40255
    assert_eq!(px(3, 1, 2), [1, 4, 255]);
    assert_eq!(px(4, 0, 0), [10, 20, 30]);
    assert_eq!(px(4, 1, 0), [200, 100, 0]);
    assert_eq!(px(4, 2, 2), [200, 100, 0]);
    let g = px(5, 0, 0);
    assert!(g[0] == g[1] && g[1] == g[2]);
}

#[test]
fn missing_and_empty_folders_are_clear_errors() {
    let root = temp_dir("empty");
    let missing = root.join("nope");
    let e = ImageFolder::new(&missing, &ImageFolderOptions::default()).unwrap_err();
    assert!(matches!(e, AugmentError::FolderNotFound(_)), "{e}");
    assert!(e.to_string().contains("nope"));

    let e = ImageFolder::new(&root, &ImageFolderOptions::default()).unwrap_err();
    assert!(matches!(e, AugmentError::NoClasses(_)), "{e}");

    std::fs::create_dir_all(root.join("full")).unwrap();
    std::fs::create_dir_all(root.join("hollow")).unwrap();
    std::fs::write(root.join("hollow/readme.txt"), "x").unwrap();
    write_jpeg(&root.join("full/a.jpg"), 8, 8, 0);
    let e = ImageFolder::new(&root, &ImageFolderOptions::default()).unwrap_err();
    match &e {
        AugmentError::EmptyClasses { classes, .. } => assert_eq!(classes, &["hollow"]),
        other => panic!("unexpected {other}"),
    }
    let f = ImageFolder::new(&root, &ImageFolderOptions::default().with_allow_empty(true)).unwrap();
    assert_eq!(f.classes(), ["full", "hollow"]);
    assert_eq!(f.len(), 1);
    let only_png = ImageFolderOptions::default()
        .with_extensions(&[".PNG"])
        .with_allow_empty(true);
    assert_eq!(ImageFolder::new(&root, &only_png).unwrap().len(), 0);
}

#[test]
fn corrupt_files_are_errors_naming_the_file() {
    let root = temp_dir("corrupt");
    write_jpeg(&root.join("c/good.jpg"), 40, 30, 3);
    let good = std::fs::read(root.join("c/good.jpg")).unwrap();
    std::fs::write(root.join("c/truncated.jpg"), &good[..good.len() / 2]).unwrap();
    std::fs::write(root.join("c/zero.jpg"), b"").unwrap();
    std::fs::write(root.join("c/text.png"), b"hello, I am not a PNG").unwrap();
    let mut bad_png = Vec::new();
    pattern(5, 5, 0)
        .write_to(
            &mut std::io::Cursor::new(&mut bad_png),
            image::ImageFormat::Png,
        )
        .unwrap();
    bad_png.truncate(bad_png.len() - 20);
    std::fs::write(root.join("c/truncated.png"), &bad_png).unwrap();

    let f = ImageFolder::new(&root, &ImageFolderOptions::default()).unwrap();
    assert_eq!(f.len(), 5);
    for (i, (path, _)) in f.samples().iter().enumerate() {
        let name = path.file_name().unwrap().to_str().unwrap();
        match f.load(i) {
            Ok(img) => assert_eq!(name, "good.jpg", "{name} should fail ({:?})", img.hw()),
            Err(e) => {
                assert!(matches!(e, AugmentError::Decode { .. }), "{name}: {e}");
                assert!(decode_error_names(&e, path), "{e}");
            }
        }
    }
    // Verification at scan time fails on the first corrupt file, naming it.
    let e = ImageFolder::new(&root, &ImageFolderOptions::default().with_verify(true)).unwrap_err();
    assert!(e.to_string().contains("text.png"), "{e}");
    // ... or drops and lists them.
    let opts = ImageFolderOptions::default()
        .with_verify(true)
        .with_skip_corrupt(true);
    let f = ImageFolder::new(&root, &opts).unwrap();
    assert_eq!(f.len(), 1);
    assert_eq!(f.skipped().len(), 4);

    // Without verification the loader skips and counts them.
    let f = ImageFolder::new(
        &root,
        &ImageFolderOptions::default().with_skip_corrupt(true),
    )
    .unwrap();
    let t = Arc::new(probe_eval_transform(16).unwrap());
    let cfg = LoaderConfig::default().with_batch_size(8).with_workers(2);
    let loader = Loader::new(Arc::new(f), t, cfg).unwrap();
    let batches: Vec<_> = loader.epoch(0).collect::<Result<_, _>>().unwrap();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].n, 1);
    assert_eq!(batches[0].views[0].len(), 3 * 16 * 16);
    assert_eq!(loader.skipped(), 4);
    let errors = loader.skipped_errors();
    assert_eq!(errors.len(), 4);
    assert!(errors.iter().any(|e| e.contains("text.png")), "{errors:?}");

    // Without skipping, the batch is an error naming a file.
    let f = ImageFolder::new(&root, &ImageFolderOptions::default()).unwrap();
    let t = Arc::new(probe_eval_transform(16).unwrap());
    let loader = Loader::new(Arc::new(f), t, LoaderConfig::default().with_batch_size(8)).unwrap();
    let e = loader.epoch(0).next().unwrap().unwrap_err();
    assert!(matches!(e, AugmentError::Decode { .. }), "{e}");
}

// ------------------------------------------------------------------ transforms and bad input

#[test]
fn images_smaller_than_the_crop_are_upsampled_or_padded() {
    let tiny = RgbImage::from_fn(2, 3, |x, y| [x as u8 * 100, y as u8 * 50, 7]);
    let mut rng = StdRng::seed_from_u64(0);
    for p in [
        moco_v2_transform(32).unwrap(),
        moco_v1_transform(32).unwrap(),
        probe_train_transform(32).unwrap(),
        probe_eval_transform(32).unwrap(),
    ] {
        let t = p.apply(&tiny, &mut rng).unwrap();
        assert_eq!(t.shape(), [3, 32, 32]);
        assert!(t.data.iter().all(|v| v.is_finite()));
    }
    let one = RgbImage::filled(1, 1, [9, 8, 7]);
    let rrc = RandomResizedCrop::new(5).unwrap();
    let out = rrc.apply_ref(&one, &mut rng).unwrap();
    assert!(out.as_raw().chunks(3).all(|p| p == [9, 8, 7]));
    // CenterCrop larger than the image pads with black, as torchvision.
    let c = CenterCrop::new(4)
        .unwrap()
        .apply_ref(&tiny, &mut rng)
        .unwrap();
    assert_eq!(c.hw(), (4, 4));
    assert_eq!(c.get(0, 0), Some([0, 0, 0]));
    // 2 columns padded to 4: one black column each side; 3 rows to 4: one black row below.
    assert_eq!(c.get(1, 1), tiny.get(0, 1));
    assert_eq!(c.get(2, 0), tiny.get(1, 0));
    assert_eq!(c.get(3, 1), Some([0, 0, 0]));
    assert_eq!(c.get(1, 3), Some([0, 0, 0]));
    // An empty image is an error, not a panic.
    assert!(rrc.apply_ref(&RgbImage::new(0, 4), &mut rng).is_err());
    assert!(
        probe_eval_transform(8)
            .unwrap()
            .apply(&RgbImage::new(3, 0), &mut rng)
            .is_err()
    );
}

#[test]
fn empty_and_inverted_ranges() {
    // Inverted ranges are errors (PyTorch's uniform_ raises on from > to).
    assert!(
        RandomResizedCrop::new(8)
            .unwrap()
            .with_scale(1.0, 0.2)
            .is_err()
    );
    assert!(
        RandomResizedCrop::new(8)
            .unwrap()
            .with_ratio(4.0 / 3.0, 0.75)
            .is_err()
    );
    assert!(
        RandomResizedCrop::new(8)
            .unwrap()
            .with_scale(0.0, 1.0)
            .is_err()
    );
    assert!(
        RandomResizedCrop::new(8)
            .unwrap()
            .with_scale(f64::NAN, 1.0)
            .is_err()
    );
    assert!(
        RandomResizedCrop::new(8)
            .unwrap()
            .with_ratio(-1.0, 1.0)
            .is_err()
    );
    assert!(RandomResizedCrop::new(0).is_err());
    assert!(GaussianBlur::new(2.0, 0.1).is_err());
    assert!(ColorJitter::default().with_hue_range(0.2, -0.2).is_err());
    assert!(
        ColorJitter::default()
            .with_contrast_range(-0.5, 1.0)
            .is_err()
    );
    assert!(Normalize::new([0.0; 3], [1.0, 0.0, 1.0]).is_err());
    // Empty ranges (lo == hi) are a fixed value, as uniform_(a, a).
    let rrc = RandomResizedCrop::new(8)
        .unwrap()
        .with_scale(0.25, 0.25)
        .unwrap()
        .with_ratio(1.0, 1.0)
        .unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    for _ in 0..20 {
        let (_, _, h, w) = rrc.get_params(40, 40, &mut rng).unwrap();
        assert_eq!((h, w), (20, 20));
    }
    let j = ColorJitter::default()
        .with_brightness_range(1.3, 1.3)
        .unwrap();
    let p = j.get_params(&mut rng);
    assert_eq!(p.brightness, Some(1.3));
    assert_eq!(p.contrast, None);
    // A zero or negative op argument where torchvision raises is an error.
    let img = RgbImage::filled(4, 4, [1, 2, 3]);
    assert!(color::adjust_saturation(&img, -1.0).is_err());
    assert!(color::adjust_brightness(&img, 1e300).is_err());
    assert!(ssl_augment::blur::gaussian_blur(&img, -1.0).is_err());
    assert!(resample::resized_crop(&img, 0, 0, 0, 2, 4, 4).is_err());
    assert!(resample::resize_shorter(&img, 0).is_err());
    assert!(geometry::crop(&img, 0, 0, 2, 0).is_err());
}

#[test]
fn presets_are_deterministic_per_seed_and_normalized() {
    let img = RgbImage::from(pattern(150, 120, 4));
    let p = moco_v2_transform(24).unwrap();
    let a = p.apply(&img, &mut StdRng::seed_from_u64(3)).unwrap();
    let b = p.apply(&img, &mut StdRng::seed_from_u64(3)).unwrap();
    let c = p.apply(&img, &mut StdRng::seed_from_u64(4)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    // probe eval is deterministic and equals resize + center crop + normalize.
    let e = probe_eval_transform(24)
        .unwrap()
        .apply(&img, &mut StdRng::seed_from_u64(0))
        .unwrap();
    let r = resample::resize_shorter(&img, ssl_augment::eval_resize_size(24)).unwrap();
    let cc = geometry::center_crop(&r, 24, 24).unwrap();
    assert_eq!(e, Normalize::imagenet().to_tensor(&cc));
}

// ------------------------------------------------------------------ loader

fn synthetic_folder(n_per_class: usize, classes: usize) -> (TempDir, ImageFolder) {
    let root = temp_dir("loader");
    for c in 0..classes {
        for i in 0..n_per_class {
            let (w, h) = (
                40 + (i as u32 * 7) % 30,
                30 + (c as u32 * 11 + i as u32) % 25,
            );
            write_jpeg(
                &root.join(format!("class{c}/{i:03}.jpg")),
                w,
                h,
                (c * 100 + i) as u32,
            );
        }
    }
    let f = ImageFolder::new(&root, &ImageFolderOptions::default()).unwrap();
    (root, f)
}

#[test]
fn one_and_four_workers_give_identical_batches() {
    let (_root, f) = synthetic_folder(7, 3);
    let f: Arc<dyn Dataset> = Arc::new(f);
    let t = Arc::new(TwoCrops::new(moco_v2_transform(20).unwrap()));
    let base = LoaderConfig::default().with_batch_size(4).with_seed(11);
    let run = |workers: usize, epoch: u64| -> Vec<ssl_augment::Batch> {
        let l = Loader::new(
            Arc::clone(&f),
            t.clone(),
            base.clone().with_workers(workers).with_prefetch(1),
        )
        .unwrap();
        l.epoch(epoch).collect::<Result<_, _>>().unwrap()
    };
    let one = run(1, 2);
    let four = run(4, 2);
    let zero = run(0, 2);
    assert_eq!(one, four);
    assert_eq!(one, zero);
    assert_eq!(one.len(), 6); // 21 samples, batches of 4, last one 1
    assert_eq!(one.last().unwrap().n, 1);
    let b = &one[0];
    assert_eq!(b.views.len(), 2);
    assert_eq!(b.shape(), [4, 3, 20, 20]);
    assert_eq!(b.views[0].len(), 4 * 3 * 20 * 20);
    assert_ne!(b.views[0], b.views[1], "query and key crops differ");
    for (i, l) in b.indices.iter().zip(&b.labels) {
        assert_eq!(*l, i / 7);
    }
    // Another epoch reshuffles and redraws.
    assert_ne!(run(2, 3)[0].indices, one[0].indices);
    // A sample's views depend on (seed, epoch, index) only, not on its batch.
    let l = Loader::new(Arc::clone(&f), t.clone(), base.clone().with_batch_size(7)).unwrap();
    let big: Vec<_> = l.epoch(2).collect::<Result<_, _>>().unwrap();
    let plane = 3 * 20 * 20;
    let pos_small = one
        .iter()
        .flat_map(|b| b.indices.clone())
        .position(|i| i == big[1].indices[2])
        .unwrap();
    let small = &one[pos_small / 4];
    let k = pos_small % 4;
    assert_eq!(
        &small.views[1][k * plane..(k + 1) * plane],
        &big[1].views[1][2 * plane..3 * plane]
    );
}

#[test]
fn ranks_partition_the_padded_epoch_and_drop_last_works() {
    let (_root, f) = synthetic_folder(5, 2); // 10 samples
    let f: Arc<dyn Dataset> = Arc::new(f);
    let t = Arc::new(probe_eval_transform(8).unwrap());
    let mut seen = Vec::new();
    for rank in 0..4 {
        let cfg = LoaderConfig::default()
            .with_batch_size(2)
            .with_rank(rank, 4)
            .with_workers(2);
        let l = Loader::new(Arc::clone(&f), t.clone(), cfg).unwrap();
        assert_eq!(l.num_samples(), 3);
        assert_eq!(l.len(), 2);
        let bs: Vec<_> = l.epoch(1).collect::<Result<_, _>>().unwrap();
        assert_eq!(bs.iter().map(|b| b.n).collect::<Vec<_>>(), vec![2, 1]);
        seen.extend(bs.iter().flat_map(|b| b.indices.clone()));
        let cfg = LoaderConfig::default()
            .with_batch_size(2)
            .with_rank(rank, 4)
            .with_drop_last(true);
        let l = Loader::new(Arc::clone(&f), t.clone(), cfg).unwrap();
        assert_eq!(l.epoch(1).count(), 1);
    }
    assert_eq!(seen.len(), 12);
    let mut uniq = seen.clone();
    uniq.sort_unstable();
    uniq.dedup();
    assert_eq!(
        uniq,
        (0..10).collect::<Vec<_>>(),
        "every sample, two repeated as padding"
    );
    // Bad configurations are errors.
    assert!(
        Loader::new(
            Arc::clone(&f),
            t.clone(),
            LoaderConfig::default().with_rank(4, 4)
        )
        .is_err()
    );
    assert!(
        Loader::new(
            Arc::clone(&f),
            t.clone(),
            LoaderConfig::default().with_batch_size(0)
        )
        .is_err()
    );
    let empty: Arc<dyn Dataset> = Arc::new(Subset::new(Arc::clone(&f), vec![]).unwrap());
    assert!(matches!(
        Loader::new(empty, t.clone(), LoaderConfig::default()),
        Err(AugmentError::EmptyDataset)
    ));
    assert!(Subset::new(Arc::clone(&f), vec![10]).is_err());
}

#[test]
fn dropping_an_epoch_early_stops_the_workers() {
    let (_root, f) = synthetic_folder(10, 2);
    let t = Arc::new(TwoCrops::new(moco_v2_transform(16).unwrap()));
    let cfg = LoaderConfig::default()
        .with_batch_size(2)
        .with_workers(3)
        .with_prefetch(1);
    let l = Loader::new(Arc::new(f), t, cfg).unwrap();
    let mut it = l.epoch(0);
    assert!(it.next().unwrap().is_ok());
    assert_eq!(it.len(), 9);
    drop(it); // must not hang
}

// ------------------------------------------------------------------ properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A resize keeps a constant image constant (the fixed-point weights of every output pixel
    /// sum to one) and has the requested shape, for any sizes.
    #[test]
    fn resize_keeps_constants(w in 1usize..40, h in 1usize..40, ow in 1usize..50, oh in 1usize..50, c in any::<[u8; 3]>()) {
        let img = RgbImage::filled(w, h, c);
        let out = resample::resize_bilinear(&img, oh, ow);
        prop_assert_eq!(out.hw(), (oh, ow));
        prop_assert!(out.as_raw().chunks(3).all(|p| p == c));
    }

    /// RandomResizedCrop's parameters always describe a non-empty crop inside the image.
    #[test]
    fn rrc_crop_is_inside(w in 1usize..300, h in 1usize..300, lo in 0.01f64..1.5, span in 0.0f64..1.0,
                          rlo in 0.2f64..3.0, rspan in 0.0f64..2.0, seed in any::<u64>()) {
        let rrc = RandomResizedCrop::new(4).unwrap()
            .with_scale(lo, lo + span).unwrap()
            .with_ratio(rlo, rlo + rspan).unwrap();
        let (t, l, ch, cw) = rrc.get_params(h, w, &mut StdRng::seed_from_u64(seed)).unwrap();
        prop_assert!(ch >= 1 && cw >= 1 && t + ch <= h && l + cw <= w);
    }

    /// Blending toward a gray image never leaves the range spanned by the two images
    /// (a contraction for factors in [0, 1]).
    #[test]
    fn contrast_below_one_contracts(px in proptest::collection::vec(any::<u8>(), 3..300), f in 0.0f64..=1.0) {
        let n = px.len() / 3;
        let img = RgbImage::from_raw(n, 1, px[..n * 3].to_vec()).unwrap();
        let mean = color::contrast_mean(&img);
        let out = color::adjust_contrast(&img, f).unwrap();
        for (&a, &b) in img.as_raw().iter().zip(out.as_raw()) {
            let (lo, hi) = (a.min(mean), a.max(mean));
            prop_assert!(lo <= b && b <= hi);
        }
    }

    /// Horizontal flips are involutions and Gaussian blur commutes with them (Pillow's box blur
    /// is symmetric).
    #[test]
    fn flip_and_blur(w in 1usize..30, h in 1usize..30, seed in any::<u32>(), r in 0.0f64..3.0) {
        let img = RgbImage::from(pattern(w as u32, h as u32, seed % 1000));
        prop_assert_eq!(geometry::hflip(&geometry::hflip(&img)), img.clone());
        let a = ssl_augment::blur::gaussian_blur(&geometry::hflip(&img), r).unwrap();
        let b = geometry::hflip(&ssl_augment::blur::gaussian_blur(&img, r).unwrap());
        prop_assert_eq!(a, b);
    }

    /// The vectorized hue adjustment equals the scalar HSV computation.
    #[test]
    fn vectorized_hue_equals_direct(px in proptest::collection::vec(any::<u8>(), 3..600), f in -0.5f64..=0.5) {
        let n = px.len() / 3;
        let img = RgbImage::from_raw(n, 1, px[..n * 3].to_vec()).unwrap();
        prop_assert_eq!(color::adjust_hue(&img, f).unwrap(), color::adjust_hue_reference(&img, f).unwrap());
    }
}
