//! The augmentations of [`crate::transforms`] that are defined for any number of bands, on
//! [`BandImage`]s, and the MoCo / probe presets built from them.
//!
//! Geometry keeps torchvision's semantics and random draws exactly: [`RandomResizedCrop`],
//! [`RandomHorizontalFlip`], [`Resize`] and [`CenterCrop`] draw the same numbers in the same
//! order as on RGB images, so a seeded sample crops the same region either way. The arithmetic
//! is `f32` (these images are float, not 8-bit): resampling is Pillow's bilinear filter as
//! Pillow runs it on a 32-bit float (`"F"`) image, band by band: the same weights and pass
//! order as the 8-bit path, sums in `f64`, each pass stored as `f32`, no rounding to integers.
//!
//! Colour operations need an RGB interpretation (saturation, hue, grayscale) and have no N-band
//! meaning; [`BandJitter`] keeps the two that do: brightness (`f * x`) and contrast
//! (`f * x + (1 - f) * mean`, the mean taken per band). [`BandGaussianBlur`] is torchvision's
//! tensor `gaussian_blur`. Neither clamps: multispectral samples are measurements (float TIFFs
//! hold values outside `[0, 1]`), where torchvision's float path clamps to `[0, 1]`.

use std::fmt;

use rand::RngExt;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::bands::{BandImage, BandStats};
use crate::error::{AugmentError, Result, invalid};
use crate::geometry;
use crate::resample::FloatCoeffs;
use crate::transforms::{
    CenterCrop, RandomHorizontalFlip, RandomResizedCrop, Resize, SampleTransform, ViewPipeline,
    eval_resize_size, single_view_into,
};

/// A band-image-to-band-image transform drawing from a seeded generator (the N-band
/// [`crate::ImageTransform`]).
pub trait BandTransform: Send + Sync + fmt::Debug {
    /// Transforms `img` (consumed, so in-place operations reuse its buffer).
    fn apply(&self, img: BandImage, rng: &mut StdRng) -> Result<BandImage>;

    /// Transforms a borrowed image. The default clones.
    fn apply_ref(&self, img: &BandImage, rng: &mut StdRng) -> Result<BandImage> {
        self.apply(img.clone(), rng)
    }

    /// The `(h, w)` of the output for an input of size `input`, when this transform fixes it.
    fn output_hw(&self, input: Option<(usize, usize)>) -> Option<(usize, usize)> {
        input
    }
}

// ------------------------------------------------------------------ resampling

/// One bilinear pass along rows (`horizontal`) or columns of one plane of `w` columns.
fn pass(src: &[f32], w: usize, h: usize, c: &FloatCoeffs, horizontal: bool) -> Vec<f32> {
    let out_n = c.bounds.len();
    if horizontal {
        let mut out = vec![0f32; h * out_n];
        for (row, dst) in src.chunks_exact(w).zip(out.chunks_exact_mut(out_n)) {
            for (xx, d) in dst.iter_mut().enumerate() {
                let (start, k) = c.taps(xx);
                let ss: f64 = k
                    .iter()
                    .zip(&row[start..])
                    .map(|(&kv, &p)| f64::from(p) * kv)
                    .sum();
                *d = ss as f32;
            }
        }
        out
    } else {
        let mut out = vec![0f32; out_n * w];
        let mut acc = vec![0f64; w];
        for (yy, dst) in out.chunks_exact_mut(w).enumerate() {
            let (start, k) = c.taps(yy);
            acc.fill(0.0);
            for (i, &kv) in k.iter().enumerate() {
                let row = &src[(start + i) * w..(start + i + 1) * w];
                for (a, &p) in acc.iter_mut().zip(row) {
                    *a += f64::from(p) * kv;
                }
            }
            for (d, &a) in dst.iter_mut().zip(&acc) {
                *d = a as f32;
            }
        }
        out
    }
}

/// The filter weights of a resize from `h x w` to `out_h x out_w`, computed once for all bands:
/// `(horizontal, vertical)`, `None` for an axis whose size does not change (Pillow skips that
/// pass).
struct ResizePlan {
    horizontal: Option<FloatCoeffs>,
    vertical: Option<FloatCoeffs>,
    /// Pillow 13: vertical first iff `(H - h) > 0` and `(H - h) > 2 (W - w)`.
    vertical_first: bool,
}

impl ResizePlan {
    fn new(h: usize, w: usize, out_h: usize, out_w: usize) -> Self {
        let dh = h as i64 - out_h as i64;
        let dw = w as i64 - out_w as i64;
        Self {
            horizontal: (out_w != w).then(|| FloatCoeffs::bilinear(w, out_w)),
            vertical: (out_h != h).then(|| FloatCoeffs::bilinear(h, out_h)),
            vertical_first: dh > 0 && dh > 2 * dw,
        }
    }

    /// Pillow's bilinear resize of one float plane of `h x w` (`Image.fromarray(plane,
    /// "F").resize((out_w, out_h), BILINEAR)`).
    fn resize_plane(&self, src: &[f32], h: usize, w: usize) -> Vec<f32> {
        let out_w = self.horizontal.as_ref().map_or(w, |c| c.bounds.len());
        match (&self.horizontal, &self.vertical) {
            (None, None) => src.to_vec(),
            (Some(ch), None) => pass(src, w, h, ch, true),
            (None, Some(cv)) => pass(src, w, h, cv, false),
            (Some(ch), Some(cv)) if self.vertical_first => {
                let out_h = cv.bounds.len();
                pass(&pass(src, w, h, cv, false), w, out_h, ch, true)
            }
            (Some(ch), Some(cv)) => pass(&pass(src, w, h, ch, true), out_w, h, cv, false),
        }
    }
}

/// Crops `height x width` at `(top, left)` (zeros outside the image, as PIL's `crop` pads with
/// black).
pub fn crop(
    img: &BandImage,
    top: i64,
    left: i64,
    height: usize,
    width: usize,
) -> Result<BandImage> {
    if height == 0 || width == 0 {
        return Err(invalid(format!(
            "crop: size {height}x{width} has a zero side"
        )));
    }
    let mut out = BandImage::new(img.bands(), width, height)?;
    let (ih, iw) = (img.height() as i64, img.width() as i64);
    let x0 = left.max(0);
    let x1 = (left + width as i64).min(iw);
    if x1 <= x0 {
        return Ok(out);
    }
    let (dst_x, n) = ((x0 - left) as usize, (x1 - x0) as usize);
    for (src, dst) in img.planes().zip(out.planes_mut()) {
        for r in 0..height {
            let y = top + r as i64;
            if y < 0 || y >= ih {
                continue;
            }
            let s = y as usize * img.width() + x0 as usize;
            dst[r * width + dst_x..r * width + dst_x + n].copy_from_slice(&src[s..s + n]);
        }
    }
    Ok(out)
}

/// torchvision `F.resized_crop(img, top, left, height, width, [out_h, out_w], BILINEAR)` for a
/// band image: the crop, then Pillow's float bilinear resize of every band.
pub fn resized_crop(
    img: &BandImage,
    top: i64,
    left: i64,
    height: usize,
    width: usize,
    out_h: usize,
    out_w: usize,
) -> Result<BandImage> {
    if out_h == 0 || out_w == 0 {
        return Err(invalid(format!(
            "resized_crop: output {out_h}x{out_w} has a zero size"
        )));
    }
    let c = crop(img, top, left, height, width)?;
    resize(&c, out_h, out_w)
}

/// Pillow's bilinear resize of every band to `out_h x out_w` (float, see the module docs).
pub fn resize(img: &BandImage, out_h: usize, out_w: usize) -> Result<BandImage> {
    if img.is_empty() || out_h == 0 || out_w == 0 {
        return Err(invalid(format!(
            "resize: {}x{} to {out_h}x{out_w} has a zero size",
            img.height(),
            img.width()
        )));
    }
    let (h, w) = img.hw();
    let plan = ResizePlan::new(h, w, out_h, out_w);
    let mut data = Vec::with_capacity(img.bands() * out_h * out_w);
    for plane in img.planes() {
        data.extend(plan.resize_plane(plane, h, w));
    }
    BandImage::from_planes(img.bands(), out_w, out_h, data)
}

/// Mirrors every band left-right, in place (torchvision `F.hflip`).
pub fn hflip_in_place(img: &mut BandImage) {
    let w = img.width();
    if w == 0 {
        return;
    }
    for plane in img.planes_mut() {
        for row in plane.chunks_exact_mut(w) {
            row.reverse();
        }
    }
}

impl BandTransform for RandomResizedCrop {
    fn apply(&self, img: BandImage, rng: &mut StdRng) -> Result<BandImage> {
        self.apply_ref(&img, rng)
    }

    fn apply_ref(&self, img: &BandImage, rng: &mut StdRng) -> Result<BandImage> {
        let (top, left, h, w) = self.get_params(img.height(), img.width(), rng)?;
        let (oh, ow) = self.size();
        resized_crop(img, top as i64, left as i64, h, w, oh, ow)
    }

    fn output_hw(&self, _input: Option<(usize, usize)>) -> Option<(usize, usize)> {
        Some(self.size())
    }
}

impl BandTransform for RandomHorizontalFlip {
    fn apply(&self, mut img: BandImage, rng: &mut StdRng) -> Result<BandImage> {
        if rng.random::<f64>() < self.p() {
            hflip_in_place(&mut img);
        }
        Ok(img)
    }
}

impl BandTransform for Resize {
    fn apply(&self, img: BandImage, rng: &mut StdRng) -> Result<BandImage> {
        self.apply_ref(&img, rng)
    }

    fn apply_ref(&self, img: &BandImage, _rng: &mut StdRng) -> Result<BandImage> {
        let (h, w) = crate::resample::shorter_side_size(img.height(), img.width(), self.size())?;
        resize(img, h, w)
    }

    fn output_hw(&self, input: Option<(usize, usize)>) -> Option<(usize, usize)> {
        <Resize as crate::transforms::ImageTransform>::output_hw(self, input)
    }
}

impl BandTransform for CenterCrop {
    fn apply(&self, img: BandImage, rng: &mut StdRng) -> Result<BandImage> {
        self.apply_ref(&img, rng)
    }

    fn apply_ref(&self, img: &BandImage, _rng: &mut StdRng) -> Result<BandImage> {
        let (h, w) = self.size();
        let (top, left) = geometry::center_crop_offsets(img.height(), img.width(), h, w);
        crop(img, top, left, h, w)
    }

    fn output_hw(&self, _input: Option<(usize, usize)>) -> Option<(usize, usize)> {
        Some(self.size())
    }
}

// ------------------------------------------------------------------ colour and blur

/// torchvision `ColorJitter(brightness, contrast)` for band images.
///
/// Each call draws a random order of the two operations (`randperm(2)`), then a factor for
/// each enabled one (`b ~ U(brightness)`, `c ~ U(contrast)`), and applies them in the drawn
/// order: brightness `f * x`, contrast `f * x + (1 - f) * mean(band)` (torchvision takes the
/// mean of the grayscale image, which N bands do not have). One factor per image, applied to
/// every band, unless [`BandJitter::with_independent_bands`]. No clamping (module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct BandJitter {
    brightness: (f64, f64),
    contrast: (f64, f64),
    independent: bool,
}

fn jitter_range(name: &str, v: f64) -> Result<(f64, f64)> {
    if !(v.is_finite() && v >= 0.0) {
        return Err(invalid(format!("BandJitter: {name} {v} must be >= 0")));
    }
    Ok(((1.0 - v).max(0.0), 1.0 + v))
}

fn uniform(rng: &mut StdRng, (lo, hi): (f64, f64)) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

impl BandJitter {
    /// Ranges `[max(0, 1 - v), 1 + v]` as torchvision's; errors on a negative value.
    pub fn new(brightness: f64, contrast: f64) -> Result<Self> {
        Ok(Self {
            brightness: jitter_range("brightness", brightness)?,
            contrast: jitter_range("contrast", contrast)?,
            independent: false,
        })
    }

    /// Draws the factors of each band separately (the bands then change relative to each
    /// other, as sensor gains would); default false.
    pub fn with_independent_bands(mut self, yes: bool) -> Self {
        self.independent = yes;
        self
    }

    fn draw(&self, rng: &mut StdRng, bands: usize, range: (f64, f64)) -> Vec<f32> {
        if range == (1.0, 1.0) {
            return Vec::new();
        }
        let draws = if self.independent { bands } else { 1 };
        let f: Vec<f32> = (0..draws).map(|_| uniform(rng, range) as f32).collect();
        if self.independent {
            f
        } else {
            vec![f[0]; bands]
        }
    }
}

impl BandTransform for BandJitter {
    fn apply(&self, mut img: BandImage, rng: &mut StdRng) -> Result<BandImage> {
        let mut order = [0usize, 1];
        order.shuffle(rng);
        let bands = img.bands();
        let brightness = self.draw(rng, bands, self.brightness);
        let contrast = self.draw(rng, bands, self.contrast);
        for op in order {
            match op {
                0 if !brightness.is_empty() => {
                    for (plane, &f) in img.planes_mut().zip(&brightness) {
                        plane.iter_mut().for_each(|v| *v *= f);
                    }
                }
                1 if !contrast.is_empty() => {
                    for (plane, &f) in img.planes_mut().zip(&contrast) {
                        let mean = (plane.iter().map(|&v| f64::from(v)).sum::<f64>()
                            / plane.len() as f64) as f32;
                        plane
                            .iter_mut()
                            .for_each(|v| *v = f * *v + (1.0 - f) * mean);
                    }
                }
                _ => {}
            }
        }
        Ok(img)
    }
}

/// torchvision `GaussianBlur(kernel_size, sigma)` on a float tensor, with MoCo's sigma range:
/// `sigma ~ U(lo, hi)`, kernel `2 * ceil(3 sigma) + 1` taps (at most the odd size that reflect
/// padding allows), weights `exp(-x^2 / (2 sigma^2))` normalized in `f32`, reflect padding, one
/// horizontal then one vertical pass, every band alike.
#[derive(Clone, Debug, PartialEq)]
pub struct BandGaussianBlur {
    sigma: (f64, f64),
}

impl BandGaussianBlur {
    /// Sigma drawn uniformly from `[lo, hi]`; errors unless `0 < lo <= hi` (finite).
    pub fn new(lo: f64, hi: f64) -> Result<Self> {
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
            return Err(invalid(format!(
                "BandGaussianBlur: sigma ({lo}, {hi}) must be finite, positive and (min, max)"
            )));
        }
        Ok(Self { sigma: (lo, hi) })
    }
}

impl Default for BandGaussianBlur {
    /// MoCo v2's `[0.1, 2.0]`.
    fn default() -> Self {
        Self { sigma: (0.1, 2.0) }
    }
}

/// torchvision's `_get_gaussian_kernel1d(kernel_size, sigma)`.
fn gaussian_kernel(size: usize, sigma: f32) -> Vec<f32> {
    let half = (size as f32 - 1.0) * 0.5;
    let step = if size > 1 {
        2.0 * half / (size - 1) as f32
    } else {
        0.0
    };
    let pdf: Vec<f32> = (0..size)
        .map(|i| {
            let x = -half + step * i as f32;
            (-0.5 * (x / sigma).powi(2)).exp()
        })
        .collect();
    let sum: f32 = pdf.iter().sum();
    pdf.into_iter().map(|v| v / sum).collect()
}

/// Reflect-padded index (PyTorch's `reflect`: the edge is not repeated).
fn reflect(i: i64, n: usize) -> usize {
    let n = n as i64;
    let mut i = i;
    if i < 0 {
        i = -i;
    }
    if i >= n {
        i = 2 * (n - 1) - i;
    }
    i as usize
}

/// Blurs every band with a `size`-tap Gaussian of `sigma` (torchvision `F.gaussian_blur`).
pub fn gaussian_blur(img: &mut BandImage, size: usize, sigma: f32) {
    let (h, w) = img.hw();
    let k = gaussian_kernel(size, sigma);
    let r = (size / 2) as i64;
    let mut tmp = vec![0f32; h * w];
    for plane in img.planes_mut() {
        for y in 0..h {
            let row = &plane[y * w..(y + 1) * w];
            for x in 0..w {
                tmp[y * w + x] = k
                    .iter()
                    .enumerate()
                    .map(|(i, &kv)| kv * row[reflect(x as i64 + i as i64 - r, w)])
                    .sum();
            }
        }
        for y in 0..h {
            for x in 0..w {
                plane[y * w + x] = k
                    .iter()
                    .enumerate()
                    .map(|(i, &kv)| kv * tmp[reflect(y as i64 + i as i64 - r, h) * w + x])
                    .sum();
            }
        }
    }
}

impl BandTransform for BandGaussianBlur {
    fn apply(&self, mut img: BandImage, rng: &mut StdRng) -> Result<BandImage> {
        let sigma = uniform(rng, self.sigma);
        // reflect padding needs a half width below the image side
        let limit = img.height().min(img.width()).saturating_sub(1);
        let half = ((3.0 * sigma).ceil() as usize).min(limit);
        gaussian_blur(&mut img, 2 * half + 1, sigma as f32);
        Ok(img)
    }
}

/// torchvision `RandomApply([t], p)` for band transforms.
#[derive(Debug)]
pub struct BandRandomApply {
    inner: Box<dyn BandTransform>,
    p: f64,
}

impl BandRandomApply {
    /// Wraps `inner`; errors unless `0 <= p <= 1`.
    pub fn new(inner: impl BandTransform + 'static, p: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&p) {
            return Err(invalid(format!(
                "BandRandomApply: probability {p} is not in [0, 1]"
            )));
        }
        Ok(Self {
            inner: Box::new(inner),
            p,
        })
    }
}

impl BandTransform for BandRandomApply {
    fn apply(&self, img: BandImage, rng: &mut StdRng) -> Result<BandImage> {
        if self.p < rng.random::<f64>() {
            return Ok(img);
        }
        self.inner.apply(img, rng)
    }

    fn output_hw(&self, input: Option<(usize, usize)>) -> Option<(usize, usize)> {
        let out = self.inner.output_hw(input);
        (out == input).then_some(out).flatten()
    }
}

/// torchvision `Compose` for band transforms.
#[derive(Debug, Default)]
pub struct BandCompose {
    steps: Vec<Box<dyn BandTransform>>,
}

impl BandCompose {
    /// No steps.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a step.
    pub fn then(mut self, step: impl BandTransform + 'static) -> Self {
        self.steps.push(Box::new(step));
        self
    }
}

impl BandTransform for BandCompose {
    fn apply(&self, img: BandImage, rng: &mut StdRng) -> Result<BandImage> {
        self.apply_ref(&img, rng)
    }

    fn apply_ref(&self, img: &BandImage, rng: &mut StdRng) -> Result<BandImage> {
        let mut steps = self.steps.iter();
        let Some(first) = steps.next() else {
            return Ok(img.clone());
        };
        let mut out = first.apply_ref(img, rng)?;
        for s in steps {
            out = s.apply(out, rng)?;
        }
        Ok(out)
    }

    fn output_hw(&self, input: Option<(usize, usize)>) -> Option<(usize, usize)> {
        self.steps.iter().fold(input, |hw, s| s.output_hw(hw))
    }
}

// ------------------------------------------------------------------ normalize and pipelines

/// torchvision `Normalize(mean, std)` with one mean and std per band: `(x - mean[b]) / std[b]`
/// in `f32`.
#[derive(Clone, Debug, PartialEq)]
pub struct BandNormalize {
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl BandNormalize {
    /// Errors when the lengths differ or are outside `1..=32`, a value is not finite or a std
    /// is not positive.
    pub fn new(stats: &BandStats) -> Result<Self> {
        let (mean, std) = (&stats.mean, &stats.std);
        if mean.len() != std.len() || mean.is_empty() || mean.len() > crate::bands::MAX_BANDS {
            return Err(invalid(format!(
                "band normalize: {} means and {} stds (one per band, 1 to {} bands)",
                mean.len(),
                std.len(),
                crate::bands::MAX_BANDS
            )));
        }
        if let Some(b) =
            (0..mean.len()).find(|&b| !(mean[b].is_finite() && std[b].is_finite() && std[b] > 0.0))
        {
            return Err(invalid(format!(
                "band normalize: band {b} has mean {} and std {} (finite, std > 0 needed)",
                mean[b], std[b]
            )));
        }
        Ok(Self {
            mean: mean.clone(),
            std: std.clone(),
        })
    }

    /// Number of bands.
    pub fn bands(&self) -> usize {
        self.mean.len()
    }

    /// The mean and std of every band.
    pub fn stats(&self) -> BandStats {
        BandStats {
            mean: self.mean.clone(),
            std: self.std.clone(),
        }
    }

    /// Writes the normalized CHW samples of `img` into `out` (length `bands * h * w`).
    pub fn write_chw(&self, img: &BandImage, out: &mut [f32]) -> Result<()> {
        if img.bands() != self.bands() {
            return Err(AugmentError::InvalidImage(format!(
                "{} bands, but the normalization has {}",
                img.bands(),
                self.bands()
            )));
        }
        if out.len() != img.as_raw().len() {
            return Err(invalid(format!(
                "band normalize: output of {} values for {} samples",
                out.len(),
                img.as_raw().len()
            )));
        }
        let plane = img.width() * img.height();
        for (b, (dst, src)) in out
            .chunks_exact_mut(plane.max(1))
            .zip(img.planes())
            .enumerate()
        {
            let (m, s) = (self.mean[b], self.std[b]);
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = (v - m) / s;
            }
        }
        Ok(())
    }
}

/// Band transforms then [`BandNormalize`]: the N-band [`crate::Pipeline`].
#[derive(Debug)]
pub struct BandPipeline {
    transform: BandCompose,
    normalize: BandNormalize,
}

impl BandPipeline {
    /// `transform` followed by `normalize`.
    pub fn new(transform: BandCompose, normalize: BandNormalize) -> Self {
        Self {
            transform,
            normalize,
        }
    }

    /// The image steps, without the normalization.
    pub fn apply_image(&self, img: &BandImage, rng: &mut StdRng) -> Result<BandImage> {
        self.transform.apply_ref(img, rng)
    }

    /// The normalization applied last.
    pub fn normalize(&self) -> &BandNormalize {
        &self.normalize
    }
}

impl ViewPipeline<BandImage> for BandPipeline {
    fn channels(&self) -> usize {
        self.normalize.bands()
    }

    fn output_hw(&self) -> Option<(usize, usize)> {
        self.transform.output_hw(None)
    }

    fn view_into(&self, img: &BandImage, rng: &mut StdRng, out: &mut [f32]) -> Result<()> {
        let v = self.apply_image(img, rng)?;
        self.normalize.write_chw(&v, out)
    }

    fn view(&self, img: &BandImage, rng: &mut StdRng) -> Result<crate::TensorImage> {
        let v = self.apply_image(img, rng)?;
        let mut data = vec![0f32; v.as_raw().len()];
        self.normalize.write_chw(&v, &mut data)?;
        Ok(crate::TensorImage {
            data,
            channels: v.bands(),
            height: v.height(),
            width: v.width(),
        })
    }
}

impl SampleTransform<BandImage> for BandPipeline {
    fn num_views(&self) -> usize {
        1
    }

    fn channels(&self) -> usize {
        ViewPipeline::channels(self)
    }

    fn output_hw(&self) -> Option<(usize, usize)> {
        ViewPipeline::output_hw(self)
    }

    fn apply_views(&self, img: &BandImage, rng: &mut StdRng) -> Result<Vec<crate::TensorImage>> {
        Ok(vec![self.view(img, rng)?])
    }

    fn apply_views_into(
        &self,
        img: &BandImage,
        rng: &mut StdRng,
        outs: &mut [&mut [f32]],
    ) -> Result<()> {
        single_view_into(self, img, rng, outs)
    }
}

/// MoCo v2's augmentation for band images: `RandomResizedCrop(size, scale=(0.2, 1))`,
/// `RandomApply([BandJitter(0.4, 0.4)], p=0.8)`, `RandomApply([BandGaussianBlur([0.1, 2.0])],
/// p=0.5)`, `RandomHorizontalFlip()`, then `normalize` (the RGB preset's saturation, hue and
/// grayscale steps have no N-band meaning and are left out).
pub fn moco_v2_band_transform(size: usize, normalize: BandNormalize) -> Result<BandPipeline> {
    let t = BandCompose::new()
        .then(RandomResizedCrop::new(size)?.with_scale(0.2, 1.0)?)
        .then(BandRandomApply::new(BandJitter::new(0.4, 0.4)?, 0.8)?)
        .then(BandRandomApply::new(BandGaussianBlur::default(), 0.5)?)
        .then(RandomHorizontalFlip::default());
    Ok(BandPipeline::new(t, normalize))
}

/// MoCo v1's augmentation for band images: `RandomResizedCrop(size, scale=(0.2, 1))`,
/// `BandJitter(0.4, 0.4)`, `RandomHorizontalFlip()`, then `normalize`.
pub fn moco_v1_band_transform(size: usize, normalize: BandNormalize) -> Result<BandPipeline> {
    let t = BandCompose::new()
        .then(RandomResizedCrop::new(size)?.with_scale(0.2, 1.0)?)
        .then(BandJitter::new(0.4, 0.4)?)
        .then(RandomHorizontalFlip::default());
    Ok(BandPipeline::new(t, normalize))
}

/// The linear probe's training augmentation (`main_lincls.py`): `RandomResizedCrop(size)`,
/// `RandomHorizontalFlip()`, then `normalize`.
pub fn probe_train_band_transform(size: usize, normalize: BandNormalize) -> Result<BandPipeline> {
    let t = BandCompose::new()
        .then(RandomResizedCrop::new(size)?)
        .then(RandomHorizontalFlip::default());
    Ok(BandPipeline::new(t, normalize))
}

/// The linear probe's evaluation transform: `Resize(size / 0.875)` ([`eval_resize_size`]),
/// `CenterCrop(size)`, then `normalize`.
pub fn probe_eval_band_transform(size: usize, normalize: BandNormalize) -> Result<BandPipeline> {
    let t = BandCompose::new()
        .then(Resize::new(eval_resize_size(size))?)
        .then(CenterCrop::new(size)?);
    Ok(BandPipeline::new(t, normalize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn gaussian_kernel_is_torchvisions() {
        // torchvision: _get_gaussian_kernel1d(5, 1.0)
        let k = gaussian_kernel(5, 1.0);
        let want = [
            0.054_488_685,
            0.244_201_34,
            0.402_619_95,
            0.244_201_34,
            0.054_488_685,
        ];
        for (a, b) in k.iter().zip(want) {
            assert!((a - b).abs() < 1e-7, "{k:?}");
        }
    }

    #[test]
    fn reflect_does_not_repeat_the_edge() {
        assert_eq!(reflect(-1, 5), 1);
        assert_eq!(reflect(-2, 5), 2);
        assert_eq!(reflect(5, 5), 3);
        assert_eq!(reflect(2, 5), 2);
    }

    #[test]
    fn jitter_with_unit_factors_is_identity() {
        let img = BandImage::from_fn(4, 5, 3, |b, x, y| (b + x * y) as f32 * 0.1);
        let j = BandJitter::new(0.0, 0.0).unwrap();
        let out = j.apply(img.clone(), &mut StdRng::seed_from_u64(1)).unwrap();
        assert_eq!(out, img);
    }

    #[test]
    fn contrast_keeps_each_band_mean() {
        let img = BandImage::from_fn(3, 6, 4, |b, x, y| (b * 10 + x + 2 * y) as f32);
        let j = BandJitter::new(0.0, 0.9)
            .unwrap()
            .with_independent_bands(true);
        let out = j.apply(img.clone(), &mut StdRng::seed_from_u64(7)).unwrap();
        for b in 0..3 {
            let mean = |p: &[f32]| p.iter().sum::<f32>() / p.len() as f32;
            assert!((mean(out.plane(b)) - mean(img.plane(b))).abs() < 1e-4);
            assert_ne!(out.plane(b), img.plane(b));
        }
    }

    #[test]
    fn normalize_refuses_the_wrong_band_count() {
        let n = BandNormalize::new(&BandStats {
            mean: vec![0.0; 4],
            std: vec![1.0; 4],
        })
        .unwrap();
        let img = BandImage::new(3, 2, 2).unwrap();
        let mut out = vec![0.0; 12];
        assert!(n.write_chw(&img, &mut out).is_err());
        assert!(
            BandNormalize::new(&BandStats {
                mean: vec![0.0; 2],
                std: vec![1.0, 0.0],
            })
            .is_err()
        );
    }
}
