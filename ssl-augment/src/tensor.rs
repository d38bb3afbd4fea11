//! `ToTensor` + `Normalize`: u8 HWC images to normalized f32 CHW.

use crate::error::{Result, invalid};
use crate::image::RgbImage;
use crate::simd::multiversion;

/// ImageNet channel means used by MoCo and torchvision's pretrained models.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// torchvision `Normalize(mean, std)` after `ToTensor()`: `(f32(v) / 255 - mean[c]) / std[c]`,
/// every step in `f32` as PyTorch computes it (a division by 255, not a multiplication), so the
/// values equal PyTorch's bit for bit.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalize {
    mean: [f32; 3],
    std: [f32; 3],
}

impl Default for Normalize {
    /// ImageNet mean and std ([`IMAGENET_MEAN`], [`IMAGENET_STD`]).
    fn default() -> Self {
        Self::imagenet()
    }
}

impl Normalize {
    /// Normalization with the given per-channel mean and std; errors when a std is zero or a
    /// value is not finite.
    pub fn new(mean: [f32; 3], std: [f32; 3]) -> Result<Self> {
        if mean.iter().chain(&std).any(|v| !v.is_finite()) || std.contains(&0.0) {
            return Err(invalid(format!(
                "normalize: mean {mean:?} / std {std:?} must be finite with non-zero std"
            )));
        }
        Ok(Self { mean, std })
    }

    /// ImageNet mean and std.
    pub fn imagenet() -> Self {
        Self::new(IMAGENET_MEAN, IMAGENET_STD).expect("valid constants")
    }

    /// `ToTensor()` only: values `v / 255` (mean 0, std 1).
    pub fn identity() -> Self {
        Self::new([0.0; 3], [1.0; 3]).expect("valid constants")
    }

    /// The channel means.
    pub fn mean(&self) -> [f32; 3] {
        self.mean
    }

    /// The channel standard deviations.
    pub fn std(&self) -> [f32; 3] {
        self.std
    }

    /// Writes `img` as CHW f32 into `out` (length `3 * h * w`); errors on another length.
    pub fn write_chw(&self, img: &RgbImage, out: &mut [f32]) -> Result<()> {
        let plane = img.width() * img.height();
        if out.len() != 3 * plane {
            return Err(invalid(format!(
                "to_tensor: output of {} values for a {}x{} image (needs {})",
                out.len(),
                img.height(),
                img.width(),
                3 * plane
            )));
        }
        chw_planes(img.as_raw(), out, plane, self.mean, self.std);
        Ok(())
    }

    /// `img` as a CHW f32 tensor.
    pub fn to_tensor(&self, img: &RgbImage) -> TensorImage {
        let mut data = vec![0f32; 3 * img.width() * img.height()];
        self.write_chw(img, &mut data).expect("sized buffer");
        TensorImage {
            data,
            channels: 3,
            height: img.height(),
            width: img.width(),
        }
    }
}

multiversion! {
/// `(f32(v) / 255 - mean[c]) / std[c]` for every byte, split into three planes.
fn chw_planes(src: &[u8], out: &mut [f32], plane: usize, mean: [f32; 3], std: [f32; 3]) {
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (((p, r), g), b) in src.chunks_exact(3).zip(r).zip(g).zip(b) {
        *r = (f32::from(p[0]) / 255.0 - mean[0]) / std[0];
        *g = (f32::from(p[1]) / 255.0 - mean[1]) / std[1];
        *b = (f32::from(p[2]) / 255.0 - mean[2]) / std[2];
    }
}
}

/// A float image in CHW layout, what `ToTensor` + `Normalize` give.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorImage {
    /// `channels * height * width` values, channel planes one after the other.
    pub data: Vec<f32>,
    /// Channels (3 for RGB, the band count for band images).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl TensorImage {
    /// `[channels, height, width]`.
    pub fn shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }
}

/// torchvision `F.normalize(F.to_tensor(img), mean, std)`: CHW f32.
pub fn to_tensor_normalize(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Result<TensorImage> {
    Ok(Normalize::new(mean, std)?.to_tensor(img))
}
