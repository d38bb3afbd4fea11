//! A small procedurally generated scene dataset for demos and tests: no download needed.
//!
//! Eight visually distinct texture / layout classes (stripes near horizontal, stripes near
//! vertical, checkerboards, blobs, smooth gradients, noise textures, concentric rings, dot
//! grids), each image rendered with its own random colours, scales, phases and noise, and
//! written as PNG files in ImageFolder layout (`ROOT/train/<class>/*.png`,
//! `ROOT/val/<class>/*.png`), so the ordinary data path reads it. Colours are random per image,
//! so the classes differ by spatial structure only, which is what the augmentations keep.
//!
//! ```no_run
//! use mhcl::synthetic::SyntheticConfig;
//! let ds = SyntheticConfig::new().with_classes(4).generate("/tmp/scenes".as_ref()).unwrap();
//! assert_eq!(ds.classes.len(), 4);
//! ```

use std::f32::consts::PI;
use std::fs;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use ssl_augment::{BandImage, TiffSample};

use crate::error::{MhclError, Result};

/// Names of the classes, in class-index order.
pub const CLASS_NAMES: [&str; 8] = [
    "stripes_horizontal",
    "stripes_vertical",
    "checkerboard",
    "blobs",
    "gradient",
    "noise",
    "rings",
    "dot_grid",
];

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticConfig {
    /// Number of classes, 2 to 8 (the first ones of [`CLASS_NAMES`]).
    pub classes: usize,
    /// Training images per class.
    pub train_per_class: usize,
    /// Validation images per class.
    pub val_per_class: usize,
    /// Side of the square images in pixels.
    pub size: u32,
    /// Seed of all random parameters.
    pub seed: u64,
    /// Bands per image: 3 writes 8-bit RGB PNGs; any other count (1 to 32) writes 16-bit
    /// planar TIFFs whose bands are random spectral mixes of the rendered scene (13 for a
    /// Sentinel-2 stand-in).
    pub bands: usize,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl SyntheticConfig {
    /// 8 classes, 48 train and 24 val images per class, 64x64 pixels, seed 0.
    pub fn new() -> Self {
        Self {
            classes: 8,
            train_per_class: 48,
            val_per_class: 24,
            size: 64,
            seed: 0,
            bands: 3,
        }
    }

    /// Sets the bands per image.
    pub fn with_bands(mut self, bands: usize) -> Self {
        self.bands = bands;
        self
    }

    /// Sets the number of classes.
    pub fn with_classes(mut self, classes: usize) -> Self {
        self.classes = classes;
        self
    }

    /// Sets the images per class.
    pub fn with_per_class(mut self, train: usize, val: usize) -> Self {
        self.train_per_class = train;
        self.val_per_class = val;
        self
    }

    /// Sets the image side.
    pub fn with_size(mut self, size: u32) -> Self {
        self.size = size;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Renders every image and writes the tree under `root` (created if needed).
    pub fn generate(&self, root: &Path) -> Result<SyntheticDataset> {
        if !(2..=CLASS_NAMES.len()).contains(&self.classes) {
            return Err(MhclError::arg(format!(
                "synthetic dataset: classes must be 2 to {}, got {}",
                CLASS_NAMES.len(),
                self.classes
            )));
        }
        if self.size < 8 || self.train_per_class == 0 || self.val_per_class == 0 {
            return Err(MhclError::arg(
                "synthetic dataset: size must be >= 8 and each split needs images",
            ));
        }
        if !(1..=ssl_augment::bands::MAX_BANDS).contains(&self.bands) {
            return Err(MhclError::arg(format!(
                "synthetic dataset: bands must be 1 to {}, got {}",
                ssl_augment::bands::MAX_BANDS,
                self.bands
            )));
        }
        for (split, n, offset) in [
            ("train", self.train_per_class, 0),
            ("val", self.val_per_class, self.train_per_class),
        ] {
            for (c, name) in CLASS_NAMES.iter().take(self.classes).enumerate() {
                let dir = root.join(split).join(name);
                fs::create_dir_all(&dir).map_err(|e| MhclError::io(&dir, e))?;
                for i in 0..n {
                    let seed = image_seed(self.seed, c, offset + i);
                    let img = render(c, self.size, seed);
                    if self.bands == 3 {
                        let path = dir.join(format!("{name}_{i:04}.png"));
                        img.save(&path).map_err(|e| MhclError::Image {
                            path: path.clone(),
                            msg: e.to_string(),
                        })?;
                    } else {
                        let path = dir.join(format!("{name}_{i:04}.tif"));
                        let bands = spectral_bands(&img, self.bands, seed);
                        let bytes = ssl_augment::encode_tiff(&bands, TiffSample::U16, true);
                        fs::write(&path, bytes).map_err(|e| MhclError::io(&path, e))?;
                    }
                }
            }
        }
        Ok(SyntheticDataset {
            root: root.to_path_buf(),
            classes: CLASS_NAMES[..self.classes]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            train: self.train_per_class * self.classes,
            val: self.val_per_class * self.classes,
        })
    }
}

/// A generated dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticDataset {
    /// Root holding `train/` and `val/`.
    pub root: PathBuf,
    /// Class names, in class-index order (also the sorted order of the folders).
    pub classes: Vec<String>,
    /// Number of training images.
    pub train: usize,
    /// Number of validation images.
    pub val: usize,
}

fn image_seed(seed: u64, class: usize, index: usize) -> u64 {
    // SplitMix64-style mixing keeps nearby (class, index) pairs unrelated
    let mut z = seed
        .wrapping_add((class as u64) << 32)
        .wrapping_add(index as u64)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn random_color(rng: &mut StdRng) -> [f32; 3] {
    [
        rng.random_range(0.0..1.0),
        rng.random_range(0.0..1.0),
        rng.random_range(0.0..1.0),
    ]
}

/// Two colours far enough apart to keep the pattern visible.
fn color_pair(rng: &mut StdRng) -> ([f32; 3], [f32; 3]) {
    loop {
        let a = random_color(rng);
        let b = random_color(rng);
        let d: f32 = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum();
        if d > 0.6 {
            return (a, b);
        }
    }
}

/// `bands` bands from a rendered RGB scene: band `b` is `w_b . (r, g, b) + o_b` with a random
/// spectral response `w_b` and offset `o_b` per image, so the spatial structure (the class) is
/// in every band and the band values differ as a sensor's would.
pub fn spectral_bands(img: &RgbImage, bands: usize, seed: u64) -> BandImage {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_ba4d);
    let response: Vec<([f32; 3], f32)> = (0..bands)
        .map(|_| {
            let w = random_color(&mut rng);
            let sum = w.iter().sum::<f32>().max(0.1);
            (w.map(|v| 0.7 * v / sum), rng.random_range(0.0..0.3f32))
        })
        .collect();
    let (w, h) = (img.width() as usize, img.height() as usize);
    BandImage::from_fn(bands, w, h, |b, x, y| {
        let p = img
            .get_pixel(x as u32, y as u32)
            .0
            .map(|v| f32::from(v) / 255.0);
        let (wb, ob) = response[b];
        wb[0] * p[0] + wb[1] * p[1] + wb[2] * p[2] + ob
    })
}

/// Renders one image of class `class` (index into [`CLASS_NAMES`]) from `seed`.
pub fn render(class: usize, size: u32, seed: u64) -> RgbImage {
    let mut rng = StdRng::seed_from_u64(seed);
    let s = size as f32;
    let (ca, cb) = color_pair(&mut rng);
    let noise_amp: f32 = rng.random_range(0.02..0.08);
    // pattern value in [0, 1] at pixel (x, y), coordinates in [0, 1)
    let pattern: Box<dyn Fn(f32, f32) -> f32> = match class % CLASS_NAMES.len() {
        0 | 1 => {
            let base = if class.is_multiple_of(8) { 0.0 } else { 90.0 };
            let angle = (base + rng.random_range(-20.0f32..20.0)).to_radians();
            let freq = rng.random_range(3.0f32..8.0);
            let phase = rng.random_range(0.0..1.0f32);
            let (sn, cs) = angle.sin_cos();
            // stripes run along `angle`: the value varies across it
            Box::new(move |x, y| {
                let t = (-x * sn + y * cs) * freq + phase;
                if t.rem_euclid(1.0) < 0.5 { 0.0 } else { 1.0 }
            })
        }
        2 => {
            let cells = rng.random_range(3.0f32..7.0);
            let angle = rng.random_range(-0.4f32..0.4);
            let (ox, oy) = (rng.random_range(0.0..1.0f32), rng.random_range(0.0..1.0f32));
            let (sn, cs) = angle.sin_cos();
            Box::new(move |x, y| {
                let u = (x * cs - y * sn) * cells + ox;
                let v = (x * sn + y * cs) * cells + oy;
                ((u.floor() + v.floor()).rem_euclid(2.0) >= 1.0) as u8 as f32
            })
        }
        3 => {
            let n = rng.random_range(3..8);
            let blobs: Vec<(f32, f32, f32)> = (0..n)
                .map(|_| {
                    (
                        rng.random_range(0.0..1.0f32),
                        rng.random_range(0.0..1.0f32),
                        rng.random_range(0.06f32..0.16),
                    )
                })
                .collect();
            Box::new(move |x, y| {
                let v: f32 = blobs
                    .iter()
                    .map(|&(bx, by, r)| {
                        (-((x - bx).powi(2) + (y - by).powi(2)) / (2.0 * r * r)).exp()
                    })
                    .sum();
                v.min(1.0)
            })
        }
        4 => {
            let angle = rng.random_range(0.0..2.0 * PI);
            let (sn, cs) = angle.sin_cos();
            Box::new(move |x, y| (((x - 0.5) * cs + (y - 0.5) * sn) / 1.42 + 0.5).clamp(0.0, 1.0))
        }
        5 => {
            // value noise on a coarse random lattice, bilinearly interpolated
            let g = rng.random_range(6usize..12);
            let lattice: Vec<f32> = (0..(g + 1) * (g + 1))
                .map(|_| rng.random_range(0.0..1.0))
                .collect();
            Box::new(move |x, y| {
                let (fx, fy) = (x * g as f32, y * g as f32);
                let (ix, iy) = (fx.floor() as usize, fy.floor() as usize);
                let (tx, ty) = (fx - ix as f32, fy - iy as f32);
                let at = |i: usize, j: usize| lattice[j.min(g) * (g + 1) + i.min(g)];
                let top = at(ix, iy) * (1.0 - tx) + at(ix + 1, iy) * tx;
                let bot = at(ix, iy + 1) * (1.0 - tx) + at(ix + 1, iy + 1) * tx;
                top * (1.0 - ty) + bot * ty
            })
        }
        6 => {
            let (cx, cy) = (
                rng.random_range(0.25..0.75f32),
                rng.random_range(0.25..0.75f32),
            );
            let freq = rng.random_range(4.0f32..9.0);
            Box::new(move |x, y| {
                let r = ((x - cx).powi(2) + (y - cy).powi(2)).sqrt();
                if (r * freq).rem_euclid(1.0) < 0.5 {
                    0.0
                } else {
                    1.0
                }
            })
        }
        _ => {
            let cells = rng.random_range(4.0f32..8.0);
            let radius = rng.random_range(0.18f32..0.32);
            let (ox, oy) = (rng.random_range(0.0..1.0f32), rng.random_range(0.0..1.0f32));
            Box::new(move |x, y| {
                let u = (x * cells + ox).rem_euclid(1.0) - 0.5;
                let v = (y * cells + oy).rem_euclid(1.0) - 0.5;
                ((u * u + v * v).sqrt() < radius) as u8 as f32
            })
        }
    };
    let mut img = RgbImage::new(size, size);
    for (px, py, out) in img.enumerate_pixels_mut() {
        let t = pattern((px as f32 + 0.5) / s, (py as f32 + 0.5) / s);
        let mut rgb = [0u8; 3];
        for c in 0..3 {
            let n = rng.random_range(-1.0f32..1.0) * noise_amp;
            let v = ca[c] * (1.0 - t) + cb[c] * t + n;
            rgb[c] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
        *out = Rgb(rgb);
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_is_deterministic_and_varies() {
        for c in 0..CLASS_NAMES.len() {
            let a = render(c, 24, 5);
            assert_eq!(a, render(c, 24, 5));
            assert_ne!(a, render(c, 24, 6));
            // not a flat image
            let px: Vec<u8> = a.pixels().map(|p| p.0[0]).collect();
            let (lo, hi) = (px.iter().min().unwrap(), px.iter().max().unwrap());
            assert!(hi - lo > 20, "class {c} too flat");
        }
    }

    #[test]
    fn generate_writes_image_folder_layout() {
        let root = std::env::temp_dir().join(format!("mhcl-synth-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let ds = SyntheticConfig::new()
            .with_classes(3)
            .with_per_class(2, 1)
            .with_size(16)
            .generate(&root)
            .unwrap();
        assert_eq!((ds.train, ds.val), (6, 3));
        let f = root.join("val/checkerboard/checkerboard_0000.png");
        assert_eq!(image::open(&f).unwrap().to_rgb8().dimensions(), (16, 16));
        assert!(
            SyntheticConfig::new()
                .with_classes(9)
                .generate(&root)
                .is_err()
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
