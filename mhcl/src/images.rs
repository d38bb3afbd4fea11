//! How a run reads its images: 8-bit RGB as torchvision reads it, or float bands (multispectral
//! TIFFs), and the normalization of either.
//!
//! The mode is decided once per run from `data.bands` and the first training image
//! ([`detect_bands`]): JPEG, PNG, BMP, WebP and 8-bit gray/RGB TIFFs take the RGB path
//! (Pillow-exact pixels, ImageNet normalization as MoCo's); anything else, such as a 13-band
//! Sentinel-2 tile or a 16-bit RGB TIFF (all 16 bits kept, scaled by `1 / 65535`), takes the
//! band path with per-band statistics ([`ImageMode`]).

use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;
use ssl_augment::band_transforms::{
    BandNormalize, BandPipeline, moco_v1_band_transform, moco_v2_band_transform,
    probe_eval_band_transform, probe_train_band_transform,
};
use ssl_augment::bands::{BandAccumulator, BandStats, probe_image};
use ssl_augment::{
    ImageFolder, Loader, LoaderConfig, Normalize, Pipeline, TwoCrops, moco_v1_transform,
    moco_v2_transform, probe_eval_transform, probe_train_transform,
};

use crate::config::{Augmentation, BandStatsSource, DataConfig};
use crate::error::{MhclError, Result};

/// The file a run writes the band statistics it computed to (in its output folder).
pub const BAND_STATS_FILE: &str = "band_stats.json";

/// How images are read and normalized.
#[derive(Clone, Debug, PartialEq)]
pub enum ImageMode {
    /// 8-bit RGB, Pillow's pixels, `ToTensor` + `Normalize`.
    Rgb(Normalize),
    /// Float bands ([`ssl_augment::bands::BandImage`]), normalized per band.
    Bands(BandNormalize),
}

fn augment<E: std::fmt::Display>(e: E) -> MhclError {
    MhclError::data(e.to_string())
}

impl ImageMode {
    /// Channels of the network input: 3, or the band count.
    pub fn channels(&self) -> usize {
        match self {
            Self::Rgb(_) => 3,
            Self::Bands(n) => n.bands(),
        }
    }

    /// The band count for [`ssl_augment::ImageFolderOptions::with_bands`]: `None` for RGB.
    pub fn folder_bands(&self) -> Option<usize> {
        match self {
            Self::Rgb(_) => None,
            Self::Bands(n) => Some(n.bands()),
        }
    }

    /// The per-band mean and std used.
    pub fn stats(&self) -> BandStats {
        match self {
            Self::Rgb(n) => BandStats {
                mean: n.mean().to_vec(),
                std: n.std().to_vec(),
            },
            Self::Bands(n) => n.stats(),
        }
    }

    /// `data` with what this run resolved: the band count, and the statistics when they were
    /// computed or read (so a checkpoint's config repeats the run without recomputing them).
    pub fn record(&self, data: &DataConfig) -> DataConfig {
        let mut out = data.clone();
        out.bands = Some(self.channels());
        if let Self::Bands(_) = self {
            let BandStats { mean, std } = self.stats();
            out.band_stats = BandStatsSource::Values { mean, std };
        }
        out
    }

    /// `RGB` or `13-band`.
    pub fn describe(&self) -> String {
        match self {
            Self::Rgb(_) => "RGB".into(),
            Self::Bands(n) => format!("{}-band", n.bands()),
        }
    }

    /// The pretraining loader: two crops of `augmentation` per image.
    pub fn pretrain_loader(
        &self,
        set: &Arc<ImageFolder>,
        augmentation: Augmentation,
        size: usize,
        config: LoaderConfig,
    ) -> Result<Loader> {
        let set = Arc::clone(set);
        match self {
            Self::Rgb(norm) => {
                let base = match augmentation {
                    Augmentation::MocoV2 => moco_v2_transform(size),
                    Augmentation::MocoV1 => moco_v1_transform(size),
                }?
                .with_normalize(norm.clone());
                Loader::new(set, Arc::new(TwoCrops::new(base)), config)
            }
            Self::Bands(norm) => {
                let base = match augmentation {
                    Augmentation::MocoV2 => moco_v2_band_transform(size, norm.clone()),
                    Augmentation::MocoV1 => moco_v1_band_transform(size, norm.clone()),
                }?;
                Loader::new_bands(set, Arc::new(TwoCrops::new(base)), config)
            }
        }
        .map_err(augment)
    }

    /// The linear probe's training loader (crop and flip).
    pub fn probe_train_loader(
        &self,
        set: &Arc<ImageFolder>,
        size: usize,
        config: LoaderConfig,
    ) -> Result<Loader> {
        self.single_view_loader(
            set,
            config,
            || probe_train_transform(size),
            |n| probe_train_band_transform(size, n),
        )
    }

    /// The deterministic evaluation loader (resize and center crop).
    pub fn eval_loader(
        &self,
        set: &Arc<ImageFolder>,
        size: usize,
        config: LoaderConfig,
    ) -> Result<Loader> {
        self.single_view_loader(
            set,
            config,
            || probe_eval_transform(size),
            |n| probe_eval_band_transform(size, n),
        )
    }

    /// A loader of one view per image: `rgb`'s pipeline (with this mode's normalization) or
    /// `bands`' pipeline.
    fn single_view_loader(
        &self,
        set: &Arc<ImageFolder>,
        config: LoaderConfig,
        rgb: impl FnOnce() -> ssl_augment::Result<Pipeline>,
        bands: impl FnOnce(BandNormalize) -> ssl_augment::Result<BandPipeline>,
    ) -> Result<Loader> {
        let set = Arc::clone(set);
        match self {
            Self::Rgb(norm) => {
                let t = rgb()?.with_normalize(norm.clone());
                Loader::new(set, Arc::new(t), config)
            }
            Self::Bands(norm) => Loader::new_bands(set, Arc::new(bands(norm.clone())?), config),
        }
        .map_err(augment)
    }
}

/// The band count a run reads its images with, from `requested` (`data.bands`) and the first
/// image `first`: `None` for the RGB path. Errors name the file when it does not have the
/// requested count.
pub fn detect_bands(requested: Option<usize>, first: &Path) -> Result<Option<usize>> {
    let info = probe_image(first).map_err(augment)?;
    let rgb = info.is_8bit_rgb();
    match requested {
        None if rgb => Ok(None),
        None => Ok(Some(info.bands)),
        Some(3) if rgb => Ok(None),
        Some(n) if !rgb && info.bands == n => Ok(Some(n)),
        Some(n) => Err(MhclError::data(format!(
            "{}: {} bands{}, but --bands is {n}",
            first.display(),
            info.bands,
            if rgb { " (read as RGB)" } else { "" }
        ))),
    }
}

/// The band count of a run over `listing` (`DATA/train` from [`crate::data::open_split`];
/// [`detect_bands`] on its first image): `None` for the RGB path.
pub fn detect_split_bands(
    listing: &ImageFolder,
    requested: Option<usize>,
) -> Result<Option<usize>> {
    let first = listing
        .samples()
        .first()
        .ok_or_else(|| MhclError::data(format!("{} has no image", listing.root().display())))?;
    detect_bands(requested, &first.0)
}

/// The band statistics a checkpoint's config recorded (`data.band_stats` as values).
pub fn recorded_band_stats(config: &serde_json::Value) -> Option<BandStats> {
    let stats = config.get("data")?.get("band_stats")?;
    match serde_json::from_value::<BandStatsSource>(stats.clone()).ok()? {
        BandStatsSource::Values { mean, std } => Some(BandStats { mean, std }),
        _ => None,
    }
}

/// The mode of a run: `bands` from [`detect_bands`], the statistics from `data.band_stats`
/// (`hint`: those recorded in a checkpoint, taken by `auto` for band images). Returns the mode
/// and whether the statistics were computed over `train` (then worth writing down).
pub fn resolve(
    data: &DataConfig,
    bands: Option<usize>,
    train: &ImageFolder,
    hint: Option<&BandStats>,
) -> Result<(ImageMode, bool)> {
    let channels = bands.unwrap_or(3);
    let (stats, computed) = match (&data.band_stats, bands) {
        (BandStatsSource::Auto, None) => return Ok((ImageMode::Rgb(Normalize::imagenet()), false)),
        (BandStatsSource::Auto, Some(n)) => match hint.filter(|h| h.mean.len() == n) {
            Some(h) => (h.clone(), false),
            None => (compute_band_stats(train)?, true),
        },
        (BandStatsSource::File(path), _) => (read_band_stats(path)?, false),
        (BandStatsSource::Values { mean, std }, _) => (
            BandStats {
                mean: mean.clone(),
                std: std.clone(),
            },
            false,
        ),
    };
    if stats.mean.len() != channels || stats.std.len() != channels {
        let source = match &data.band_stats {
            BandStatsSource::File(p) => format!("band stats {}", p.display()),
            _ => "data.band_stats".into(),
        };
        return Err(MhclError::data(format!(
            "{source}: {} means and {} stds, but the images have {channels} bands",
            stats.mean.len(),
            stats.std.len()
        )));
    }
    let mode = match bands {
        None => {
            let three = |v: &[f32]| [v[0], v[1], v[2]];
            ImageMode::Rgb(Normalize::new(three(&stats.mean), three(&stats.std)).map_err(augment)?)
        }
        Some(_) => ImageMode::Bands(BandNormalize::new(&stats).map_err(augment)?),
    };
    Ok((mode, computed))
}

/// Per-band mean and (population) std over every image of `folder` as bands, before any
/// augmentation. Images are read in parallel and merged in dataset order, so the result does
/// not depend on the number of threads. Unreadable images are skipped when the folder skips
/// corrupt files, else the first one is the error.
pub fn compute_band_stats(folder: &ImageFolder) -> Result<BandStats> {
    let parts: Vec<Result<Option<BandAccumulator>>> = (0..folder.len())
        .into_par_iter()
        .map(|i| match folder.load_bands(i) {
            Ok(img) => {
                let mut acc = BandAccumulator::default();
                acc.add(&img).map_err(augment)?;
                Ok(Some(acc))
            }
            Err(_) if ssl_augment::Dataset::<ssl_augment::BandImage>::skip_corrupt(folder) => {
                Ok(None)
            }
            Err(e) => Err(augment(e)),
        })
        .collect();
    let mut total = BandAccumulator::default();
    for (i, part) in parts.into_iter().enumerate() {
        if let Some(acc) = part? {
            total.merge(&acc).map_err(|e| {
                MhclError::data(format!("{}: {e}", folder.samples()[i].0.display()))
            })?;
        }
    }
    total
        .stats()
        .ok_or_else(|| MhclError::data("no readable image to compute band statistics from"))
}

/// Reads a band statistics file: JSON `{"mean": [...], "std": [...]}`.
pub fn read_band_stats(path: &Path) -> Result<BandStats> {
    let fail = |why: String| MhclError::data(format!("band stats {}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        mean: Vec<f32>,
        std: Vec<f32>,
    }
    let f: File = serde_json::from_str(&text).map_err(|e| {
        fail(format!(
            "{e} (expected {{\"mean\": [...], \"std\": [...]}})"
        ))
    })?;
    BandNormalize::new(&BandStats {
        mean: f.mean.clone(),
        std: f.std.clone(),
    })
    .map_err(|e| fail(e.to_string()))?;
    Ok(BandStats {
        mean: f.mean,
        std: f.std,
    })
}

/// Writes `stats` as [`read_band_stats`] reads them (atomically).
pub fn write_band_stats(path: &Path, stats: &BandStats) -> Result<()> {
    let text = serde_json::to_string_pretty(&serde_json::json!({
        "mean": stats.mean,
        "std": stats.std,
    }))
    .expect("plain JSON");
    ssl_models::weights::write_file_atomic(path, text.as_bytes())
        .map_err(|e| MhclError::data(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssl_augment::{BandImage, TiffSample, encode_tiff};

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn tmp(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("mhcl-images-{tag}-{}", std::process::id()))
    }

    #[test]
    fn sixteen_bit_rgb_tiff_takes_the_band_path_with_all_16_bits() {
        let img = BandImage::from_fn(3, 4, 2, |b, x, y| (b * 8 + x + y) as f32 / 37.0);
        let p = write(
            &tmp("rgb16"),
            "a.tif",
            &encode_tiff(&img, TiffSample::U16, false),
        );
        assert_eq!(detect_bands(None, &p).unwrap(), Some(3));
        assert_eq!(detect_bands(Some(3), &p).unwrap(), Some(3));
        let back = ssl_augment::open_bands(&p).unwrap();
        let v = (back.as_raw()[1] * 65535.0).round() as u32;
        assert_eq!(
            v,
            ((1.0f32 / 37.0) * 65535.0).round() as u32,
            "no low byte dropped"
        );
    }

    #[test]
    fn eight_bit_rgb_and_gray_images_take_the_rgb_path() {
        let dir = tmp("rgb8");
        let png = dir.join("a.png");
        std::fs::create_dir_all(&dir).unwrap();
        image::RgbImage::new(3, 3).save(&png).unwrap();
        assert_eq!(detect_bands(None, &png).unwrap(), None);
        assert_eq!(detect_bands(Some(3), &png).unwrap(), None);
        let tif = dir.join("b.tif");
        image::RgbImage::new(3, 3).save(&tif).unwrap();
        assert_eq!(detect_bands(None, &tif).unwrap(), None);
        let gray = BandImage::new(1, 3, 3).unwrap();
        let g = write(&dir, "g.tif", &encode_tiff(&gray, TiffSample::U8, false));
        assert_eq!(detect_bands(None, &g).unwrap(), None);
    }

    #[test]
    fn an_8bit_four_band_tiff_keeps_its_fourth_band() {
        let img = BandImage::new(4, 3, 3).unwrap();
        let p = write(
            &tmp("rgbn"),
            "n.tif",
            &encode_tiff(&img, TiffSample::U8, true),
        );
        assert_eq!(detect_bands(None, &p).unwrap(), Some(4));
    }

    #[test]
    fn band_stats_file_round_trips_and_bad_files_name_themselves() {
        let dir = tmp("stats");
        std::fs::create_dir_all(&dir).unwrap();
        let stats = BandStats {
            mean: vec![0.25, 0.5],
            std: vec![0.125, 1.0],
        };
        let p = dir.join("s.json");
        write_band_stats(&p, &stats).unwrap();
        assert_eq!(read_band_stats(&p).unwrap(), stats);
        let bad = write(&dir, "bad.json", br#"{"mean": [1], "std": [0]}"#);
        let e = read_band_stats(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.json") && e.contains("std"), "{e}");
        let wrong = write(&dir, "wrong.json", br#"{"means": [1]}"#);
        let e = read_band_stats(&wrong).unwrap_err().to_string();
        assert!(e.contains("wrong.json") && !e.contains('\n'), "{e}");
    }
}
