//! Random transforms with torchvision's semantics, and the MoCo / linear-probe presets.
//!
//! Every transform draws its random numbers from the `StdRng` it is given, in the order
//! torchvision draws them, so one seeded generator per sample makes a pipeline reproducible
//! (the values differ from PyTorch's, whose generator is another one).

use std::fmt;

use rand::RngExt;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::blur;
use crate::color;
use crate::error::{AugmentError, Result, invalid};
use crate::geometry;
use crate::image::RgbImage;
use crate::resample;
use crate::tensor::{Normalize, TensorImage};

/// An image-to-image transform drawing from a seeded generator.
pub trait ImageTransform: Send + Sync + fmt::Debug {
    /// Transforms `img` (consumed, so in-place operations reuse its buffer).
    fn apply(&self, img: RgbImage, rng: &mut StdRng) -> Result<RgbImage>;

    /// Transforms a borrowed image. The default clones; transforms that build a new image
    /// anyway (crops, resizes) read the borrowed one directly.
    fn apply_ref(&self, img: &RgbImage, rng: &mut StdRng) -> Result<RgbImage> {
        self.apply(img.clone(), rng)
    }

    /// The `(h, w)` of the output for an input of size `input` (`None`: unknown), when this
    /// transform fixes it. The default keeps the input size.
    fn output_hw(&self, input: Option<(usize, usize)>) -> Option<(usize, usize)> {
        input
    }
}

/// `torch.rand(1) < p` with a uniform draw in `[0, 1)`.
fn coin(rng: &mut StdRng, p: f64) -> bool {
    rng.random::<f64>() < p
}

/// `uniform_(lo, hi)`: `lo + (hi - lo) * u`, `u` in `[0, 1)`.
fn uniform(rng: &mut StdRng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

fn check_probability(name: &str, p: f64) -> Result<f64> {
    if !(0.0..=1.0).contains(&p) {
        return Err(invalid(format!("{name}: probability {p} is not in [0, 1]")));
    }
    Ok(p)
}

fn check_size(name: &str, h: usize, w: usize) -> Result<(usize, usize)> {
    if h == 0 || w == 0 {
        return Err(invalid(format!("{name}: size {h}x{w} has a zero side")));
    }
    Ok((h, w))
}

// ------------------------------------------------------------------ RandomResizedCrop

/// torchvision `RandomResizedCrop(size, scale, ratio)` with bilinear interpolation (Pillow's).
///
/// `get_params`, as torchvision: up to 10 attempts draw an area fraction `s ~ U(scale)` and a
/// log-uniform aspect ratio `r ~ exp(U(log ratio))`, `w = round(sqrt(s A r))`,
/// `h = round(sqrt(s A / r))` (Python's `round`, ties to even); the first attempt with
/// `0 < w <= W` and `0 < h <= H` gives the crop at a uniform `top in [0, H - h]`,
/// `left in [0, W - w]`. If all 10 fail, the fallback is a centred crop of the whole image
/// clamped to the ratio range. The crop is then resized to `size` (a fused crop + resize, see
/// [`resample::resized_crop`]); images smaller than `size` are upsampled.
///
/// Defaults are torchvision's: `scale = (0.08, 1.0)`, `ratio = (3/4, 4/3)`.
#[derive(Clone, Debug, PartialEq)]
pub struct RandomResizedCrop {
    size: (usize, usize),
    scale: (f64, f64),
    ratio: (f64, f64),
}

impl RandomResizedCrop {
    /// A square output of `size x size`; errors when `size` is zero.
    pub fn new(size: usize) -> Result<Self> {
        Self::with_hw(size, size)
    }

    /// An output of `h x w`; errors when a side is zero.
    pub fn with_hw(h: usize, w: usize) -> Result<Self> {
        Ok(Self {
            size: check_size("RandomResizedCrop", h, w)?,
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        })
    }

    /// The range of the crop's area as a fraction of the image's. `lo == hi` is allowed (a fixed
    /// fraction, as `uniform_(a, a)`); an inverted range or a non-positive or non-finite bound is
    /// an error (PyTorch's `uniform_` raises on `from > to`).
    pub fn with_scale(mut self, lo: f64, hi: f64) -> Result<Self> {
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
            return Err(invalid(format!(
                "RandomResizedCrop: scale ({lo}, {hi}) must be finite, positive and (min, max)"
            )));
        }
        self.scale = (lo, hi);
        Ok(self)
    }

    /// The range of the crop's aspect ratio (width / height), sampled log-uniformly. `lo == hi`
    /// is allowed; inverted, non-positive or non-finite bounds are an error.
    pub fn with_ratio(mut self, lo: f64, hi: f64) -> Result<Self> {
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi) {
            return Err(invalid(format!(
                "RandomResizedCrop: ratio ({lo}, {hi}) must be finite, positive and (min, max)"
            )));
        }
        self.ratio = (lo, hi);
        Ok(self)
    }

    /// Output `(h, w)`.
    pub fn size(&self) -> (usize, usize) {
        self.size
    }

    /// The area-fraction range.
    pub fn scale(&self) -> (f64, f64) {
        self.scale
    }

    /// The aspect-ratio range.
    pub fn ratio(&self) -> (f64, f64) {
        self.ratio
    }

    /// torchvision `RandomResizedCrop.get_params` for an image of `height x width`: returns
    /// `(top, left, h, w)` of the crop. Errors on an empty image.
    pub fn get_params(
        &self,
        height: usize,
        width: usize,
        rng: &mut StdRng,
    ) -> Result<(usize, usize, usize, usize)> {
        if height == 0 || width == 0 {
            return Err(AugmentError::InvalidImage(format!(
                "RandomResizedCrop: empty {height}x{width} image"
            )));
        }
        let area = (height * width) as f64;
        let (log_lo, log_hi) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target_area = area * uniform(rng, self.scale.0, self.scale.1);
            let aspect = uniform(rng, log_lo, log_hi).exp();
            let w = (target_area * aspect).sqrt().round_ties_even();
            let h = (target_area / aspect).sqrt().round_ties_even();
            if w > 0.0 && w <= width as f64 && h > 0.0 && h <= height as f64 {
                let (w, h) = (w as usize, h as usize);
                let top = rng.random_range(0..=height - h);
                let left = rng.random_range(0..=width - w);
                return Ok((top, left, h, w));
            }
        }
        // Fallback to a central crop.
        let in_ratio = width as f64 / height as f64;
        let (w, h) = if in_ratio < self.ratio.0 {
            let h = (width as f64 / self.ratio.0).round_ties_even() as usize;
            (width, h.clamp(1, height))
        } else if in_ratio > self.ratio.1 {
            let w = (height as f64 * self.ratio.1).round_ties_even() as usize;
            (w.clamp(1, width), height)
        } else {
            (width, height)
        };
        Ok(((height - h) / 2, (width - w) / 2, h, w))
    }
}

impl ImageTransform for RandomResizedCrop {
    fn apply(&self, img: RgbImage, rng: &mut StdRng) -> Result<RgbImage> {
        self.apply_ref(&img, rng)
    }

    fn apply_ref(&self, img: &RgbImage, rng: &mut StdRng) -> Result<RgbImage> {
        let (top, left, h, w) = self.get_params(img.height(), img.width(), rng)?;
        resample::resized_crop(img, top as i64, left as i64, h, w, self.size.0, self.size.1)
    }

    fn output_hw(&self, _input: Option<(usize, usize)>) -> Option<(usize, usize)> {
        Some(self.size)
    }
}

// ------------------------------------------------------------------ ColorJitter

/// torchvision `ColorJitter(brightness, contrast, saturation, hue)` on PIL images.
///
/// Each call draws a random order of the four operations (`randperm(4)`), then a factor for
/// each enabled one (`b ~ U(brightness)`, `c ~ U(contrast)`, `s ~ U(saturation)`,
/// `h ~ U(hue)`, in that order), and applies the enabled ones in the drawn order with Pillow's
/// algorithms ([`color`]). A number `v` means the range `[max(0, 1 - v), 1 + v]` (hue:
/// `[-v, v]`, `v <= 0.5`); a range equal to `[1, 1]` (hue `[0, 0]`) disables the operation.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ColorJitter {
    brightness: Option<(f64, f64)>,
    contrast: Option<(f64, f64)>,
    saturation: Option<(f64, f64)>,
    hue: Option<(f64, f64)>,
}

/// The factors one [`ColorJitter`] call drew: the order of the operations
/// (0 brightness, 1 contrast, 2 saturation, 3 hue) and each factor (`None`: disabled).
#[derive(Clone, Debug, PartialEq)]
pub struct JitterParams {
    /// Order of application.
    pub order: [usize; 4],
    /// Brightness factor.
    pub brightness: Option<f64>,
    /// Contrast factor.
    pub contrast: Option<f64>,
    /// Saturation factor.
    pub saturation: Option<f64>,
    /// Hue shift in `[-0.5, 0.5]`.
    pub hue: Option<f64>,
}

fn jitter_range(name: &str, value: f64, hue: bool) -> Result<Option<(f64, f64)>> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(invalid(format!(
            "ColorJitter: {name} ({value}) must be a non-negative number"
        )));
    }
    if hue {
        jitter_check_range(name, (-value, value), true)
    } else {
        jitter_check_range(name, ((1.0 - value).max(0.0), 1.0 + value), false)
    }
}

fn jitter_check_range(name: &str, (lo, hi): (f64, f64), hue: bool) -> Result<Option<(f64, f64)>> {
    let (blo, bhi, center) = if hue {
        (-0.5, 0.5, 0.0)
    } else {
        (0.0, f64::INFINITY, 1.0)
    };
    if !(lo.is_finite() && hi.is_finite() && blo <= lo && lo <= hi && hi <= bhi) {
        return Err(invalid(format!(
            "ColorJitter: {name} values should be between ({blo}, {bhi}) as (min, max), but got ({lo}, {hi})"
        )));
    }
    Ok(if lo == center && hi == center {
        None
    } else {
        Some((lo, hi))
    })
}

impl ColorJitter {
    /// `ColorJitter(brightness, contrast, saturation, hue)` with numbers; errors on negative
    /// values or `hue > 0.5`, as torchvision.
    pub fn new(brightness: f64, contrast: f64, saturation: f64, hue: f64) -> Result<Self> {
        Ok(Self {
            brightness: jitter_range("brightness", brightness, false)?,
            contrast: jitter_range("contrast", contrast, false)?,
            saturation: jitter_range("saturation", saturation, false)?,
            hue: jitter_range("hue", hue, true)?,
        })
    }

    /// Sets the brightness factor range `[lo, hi]` (`0 <= lo <= hi`).
    pub fn with_brightness_range(mut self, lo: f64, hi: f64) -> Result<Self> {
        self.brightness = jitter_check_range("brightness", (lo, hi), false)?;
        Ok(self)
    }

    /// Sets the contrast factor range `[lo, hi]` (`0 <= lo <= hi`).
    pub fn with_contrast_range(mut self, lo: f64, hi: f64) -> Result<Self> {
        self.contrast = jitter_check_range("contrast", (lo, hi), false)?;
        Ok(self)
    }

    /// Sets the saturation factor range `[lo, hi]` (`0 <= lo <= hi`).
    pub fn with_saturation_range(mut self, lo: f64, hi: f64) -> Result<Self> {
        self.saturation = jitter_check_range("saturation", (lo, hi), false)?;
        Ok(self)
    }

    /// Sets the hue shift range `[lo, hi]` (`-0.5 <= lo <= hi <= 0.5`).
    pub fn with_hue_range(mut self, lo: f64, hi: f64) -> Result<Self> {
        self.hue = jitter_check_range("hue", (lo, hi), true)?;
        Ok(self)
    }

    /// torchvision `ColorJitter.get_params`.
    pub fn get_params(&self, rng: &mut StdRng) -> JitterParams {
        let mut order = [0usize, 1, 2, 3];
        order.shuffle(rng);
        let mut draw = |r: Option<(f64, f64)>| r.map(|(lo, hi)| uniform(rng, lo, hi));
        let brightness = draw(self.brightness);
        let contrast = draw(self.contrast);
        let saturation = draw(self.saturation);
        let hue = draw(self.hue);
        JitterParams {
            order,
            brightness,
            contrast,
            saturation,
            hue,
        }
    }

    /// Applies drawn parameters to `img`, in place.
    pub fn apply_params(img: &mut RgbImage, p: &JitterParams) -> Result<()> {
        for &op in &p.order {
            match op {
                0 => {
                    if let Some(f) = p.brightness {
                        color::adjust_brightness_in_place(img, f)?;
                    }
                }
                1 => {
                    if let Some(f) = p.contrast {
                        color::adjust_contrast_in_place(img, f)?;
                    }
                }
                2 => {
                    if let Some(f) = p.saturation {
                        color::adjust_saturation_in_place(img, f)?;
                    }
                }
                _ => {
                    if let Some(f) = p.hue {
                        color::adjust_hue_in_place(img, f)?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl ImageTransform for ColorJitter {
    fn apply(&self, mut img: RgbImage, rng: &mut StdRng) -> Result<RgbImage> {
        let p = self.get_params(rng);
        Self::apply_params(&mut img, &p)?;
        Ok(img)
    }
}

// ------------------------------------------------------------------ simple random ops

/// torchvision `RandomApply([t], p)`: applies `t` with probability `p` (one uniform draw:
/// skipped when `p < u`).
#[derive(Debug)]
pub struct RandomApply {
    inner: Box<dyn ImageTransform>,
    p: f64,
}

impl RandomApply {
    /// Wraps `inner`; errors unless `0 <= p <= 1`.
    pub fn new(inner: impl ImageTransform + 'static, p: f64) -> Result<Self> {
        Ok(Self {
            inner: Box::new(inner),
            p: check_probability("RandomApply", p)?,
        })
    }
}

impl ImageTransform for RandomApply {
    fn apply(&self, img: RgbImage, rng: &mut StdRng) -> Result<RgbImage> {
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

/// torchvision `RandomGrayscale(p)` (default 0.1): with probability `p`, a 3-channel gray image
/// (Pillow's `L`).
#[derive(Clone, Debug, PartialEq)]
pub struct RandomGrayscale {
    p: f64,
}

impl RandomGrayscale {
    /// Errors unless `0 <= p <= 1`.
    pub fn new(p: f64) -> Result<Self> {
        Ok(Self {
            p: check_probability("RandomGrayscale", p)?,
        })
    }
}

impl Default for RandomGrayscale {
    fn default() -> Self {
        Self { p: 0.1 }
    }
}

impl ImageTransform for RandomGrayscale {
    fn apply(&self, mut img: RgbImage, rng: &mut StdRng) -> Result<RgbImage> {
        if coin(rng, self.p) {
            color::grayscale_in_place(&mut img);
        }
        Ok(img)
    }
}

/// torchvision `RandomHorizontalFlip(p)` (default 0.5).
#[derive(Clone, Debug, PartialEq)]
pub struct RandomHorizontalFlip {
    p: f64,
}

impl RandomHorizontalFlip {
    /// Errors unless `0 <= p <= 1`.
    pub fn new(p: f64) -> Result<Self> {
        Ok(Self {
            p: check_probability("RandomHorizontalFlip", p)?,
        })
    }
}

impl RandomHorizontalFlip {
    /// The flip probability.
    pub fn p(&self) -> f64 {
        self.p
    }
}

impl Default for RandomHorizontalFlip {
    fn default() -> Self {
        Self { p: 0.5 }
    }
}

impl ImageTransform for RandomHorizontalFlip {
    fn apply(&self, mut img: RgbImage, rng: &mut StdRng) -> Result<RgbImage> {
        if coin(rng, self.p) {
            geometry::hflip_in_place(&mut img);
        }
        Ok(img)
    }
}

/// MoCo v2's `GaussianBlur(sigma=[0.1, 2.0])`: `radius = random.uniform(lo, hi)`, then PIL's
/// `ImageFilter.GaussianBlur(radius)` ([`blur::gaussian_blur_in_place`], bit-exact).
#[derive(Clone, Debug, PartialEq)]
pub struct GaussianBlur {
    sigma: (f64, f64),
}

impl GaussianBlur {
    /// Radius drawn uniformly from `[lo, hi]`; errors unless `0 <= lo <= hi` (finite).
    pub fn new(lo: f64, hi: f64) -> Result<Self> {
        if !(lo.is_finite() && hi.is_finite() && lo >= 0.0 && lo <= hi) {
            return Err(invalid(format!(
                "GaussianBlur: sigma ({lo}, {hi}) must be finite, non-negative and (min, max)"
            )));
        }
        Ok(Self { sigma: (lo, hi) })
    }
}

impl Default for GaussianBlur {
    /// MoCo v2's `[0.1, 2.0]`.
    fn default() -> Self {
        Self { sigma: (0.1, 2.0) }
    }
}

impl ImageTransform for GaussianBlur {
    fn apply(&self, mut img: RgbImage, rng: &mut StdRng) -> Result<RgbImage> {
        let radius = uniform(rng, self.sigma.0, self.sigma.1);
        blur::gaussian_blur_in_place(&mut img, radius)?;
        Ok(img)
    }
}

/// torchvision `Resize(size)` with an int size and bilinear interpolation: the shorter side
/// becomes `size` ([`resample::resize_shorter`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Resize {
    size: usize,
}

impl Resize {
    /// Errors when `size` is zero.
    pub fn new(size: usize) -> Result<Self> {
        check_size("Resize", size, size)?;
        Ok(Self { size })
    }
}

impl Resize {
    /// The side the shorter side becomes.
    pub fn size(&self) -> usize {
        self.size
    }
}

impl ImageTransform for Resize {
    fn apply(&self, img: RgbImage, rng: &mut StdRng) -> Result<RgbImage> {
        self.apply_ref(&img, rng)
    }

    fn apply_ref(&self, img: &RgbImage, _rng: &mut StdRng) -> Result<RgbImage> {
        resample::resize_shorter(img, self.size)
    }

    fn output_hw(&self, input: Option<(usize, usize)>) -> Option<(usize, usize)> {
        input.and_then(|(h, w)| resample::shorter_side_size(h, w, self.size).ok())
    }
}

/// torchvision `CenterCrop(size)` (pads with black when the image is smaller).
#[derive(Clone, Debug, PartialEq)]
pub struct CenterCrop {
    size: (usize, usize),
}

impl CenterCrop {
    /// A square crop; errors when `size` is zero.
    pub fn new(size: usize) -> Result<Self> {
        Self::with_hw(size, size)
    }

    /// An `h x w` crop; errors when a side is zero.
    pub fn with_hw(h: usize, w: usize) -> Result<Self> {
        Ok(Self {
            size: check_size("CenterCrop", h, w)?,
        })
    }
}

impl CenterCrop {
    /// `(h, w)` of the crop.
    pub fn size(&self) -> (usize, usize) {
        self.size
    }
}

impl ImageTransform for CenterCrop {
    fn apply(&self, img: RgbImage, rng: &mut StdRng) -> Result<RgbImage> {
        self.apply_ref(&img, rng)
    }

    fn apply_ref(&self, img: &RgbImage, _rng: &mut StdRng) -> Result<RgbImage> {
        geometry::center_crop(img, self.size.0, self.size.1)
    }

    fn output_hw(&self, _input: Option<(usize, usize)>) -> Option<(usize, usize)> {
        Some(self.size)
    }
}

/// torchvision `Compose`: the steps in order.
#[derive(Debug, Default)]
pub struct Compose {
    steps: Vec<Box<dyn ImageTransform>>,
}

impl Compose {
    /// No step (the identity).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a step.
    #[allow(clippy::should_implement_trait)]
    pub fn then(mut self, step: impl ImageTransform + 'static) -> Self {
        self.steps.push(Box::new(step));
        self
    }

    /// Number of steps.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// True without steps.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

impl ImageTransform for Compose {
    fn apply(&self, mut img: RgbImage, rng: &mut StdRng) -> Result<RgbImage> {
        for s in &self.steps {
            img = s.apply(img, rng)?;
        }
        Ok(img)
    }

    fn apply_ref(&self, img: &RgbImage, rng: &mut StdRng) -> Result<RgbImage> {
        let Some((first, rest)) = self.steps.split_first() else {
            return Ok(img.clone());
        };
        let mut img = first.apply_ref(img, rng)?;
        for s in rest {
            img = s.apply(img, rng)?;
        }
        Ok(img)
    }

    fn output_hw(&self, input: Option<(usize, usize)>) -> Option<(usize, usize)> {
        self.steps.iter().fold(input, |hw, s| s.output_hw(hw))
    }
}

// ------------------------------------------------------------------ pipelines

/// What a [`crate::Loader`] applies to each decoded image: one or more views, each a CHW f32
/// tensor. `I` is the decoded image type: [`RgbImage`] (the default) or
/// [`crate::bands::BandImage`].
pub trait SampleTransform<I = RgbImage>: Send + Sync {
    /// Number of views per image (1, or 2 for [`TwoCrops`]).
    fn num_views(&self) -> usize;

    /// Channels of every view (3 for RGB pipelines, the band count for band pipelines).
    fn channels(&self) -> usize {
        3
    }

    /// The `(h, w)` of every view when it does not depend on the input (a crop to a fixed size).
    fn output_hw(&self) -> Option<(usize, usize)>;

    /// The views of one image.
    fn apply_views(&self, img: &I, rng: &mut StdRng) -> Result<Vec<TensorImage>>;

    /// Writes the views of one image into `outs` (one slice of `channels * h * w` values per
    /// view). The default calls [`SampleTransform::apply_views`] and copies.
    fn apply_views_into(&self, img: &I, rng: &mut StdRng, outs: &mut [&mut [f32]]) -> Result<()> {
        let views = self.apply_views(img, rng)?;
        for (v, out) in views.iter().zip(outs.iter_mut()) {
            if v.data.len() != out.len() {
                return Err(invalid(format!(
                    "view of {} values for an output slot of {}",
                    v.data.len(),
                    out.len()
                )));
            }
            out.copy_from_slice(&v.data);
        }
        Ok(())
    }
}

/// One augmented view of an image as a CHW tensor: what [`TwoCrops`] draws twice
/// ([`Pipeline`] for RGB images, [`crate::band_transforms::BandPipeline`] for band images).
pub trait ViewPipeline<I>: Send + Sync {
    /// Channels of the view.
    fn channels(&self) -> usize;

    /// The `(h, w)` of the view when it does not depend on the input.
    fn output_hw(&self) -> Option<(usize, usize)>;

    /// The view of `img`.
    fn view(&self, img: &I, rng: &mut StdRng) -> Result<TensorImage>;

    /// Writes the view of `img` into `out` (`channels * h * w` values).
    fn view_into(&self, img: &I, rng: &mut StdRng, out: &mut [f32]) -> Result<()>;
}

/// A torchvision-style pipeline: image transforms ([`Compose`]) then `ToTensor` + `Normalize`.
#[derive(Debug)]
pub struct Pipeline {
    transform: Compose,
    normalize: Normalize,
}

impl Pipeline {
    /// `transform` followed by `normalize`.
    pub fn new(transform: Compose, normalize: Normalize) -> Self {
        Self {
            transform,
            normalize,
        }
    }

    /// The image steps, without the tensor conversion (for previews).
    pub fn apply_image(&self, img: &RgbImage, rng: &mut StdRng) -> Result<RgbImage> {
        self.transform.apply_ref(img, rng)
    }

    /// The CHW f32 tensor of one augmented view.
    pub fn apply(&self, img: &RgbImage, rng: &mut StdRng) -> Result<TensorImage> {
        let out = self.apply_image(img, rng)?;
        Ok(self.normalize.to_tensor(&out))
    }

    /// The normalization applied last.
    pub fn normalize(&self) -> &Normalize {
        &self.normalize
    }

    /// Replaces the normalization (ImageNet's in the presets).
    pub fn with_normalize(mut self, normalize: Normalize) -> Self {
        self.normalize = normalize;
        self
    }
}

impl ViewPipeline<RgbImage> for Pipeline {
    fn channels(&self) -> usize {
        3
    }

    fn output_hw(&self) -> Option<(usize, usize)> {
        self.transform.output_hw(None)
    }

    fn view(&self, img: &RgbImage, rng: &mut StdRng) -> Result<TensorImage> {
        self.apply(img, rng)
    }

    fn view_into(&self, img: &RgbImage, rng: &mut StdRng, out: &mut [f32]) -> Result<()> {
        let v = self.apply_image(img, rng)?;
        self.normalize.write_chw(&v, out)
    }
}

impl SampleTransform for Pipeline {
    fn num_views(&self) -> usize {
        1
    }

    fn output_hw(&self) -> Option<(usize, usize)> {
        self.transform.output_hw(None)
    }

    fn apply_views(&self, img: &RgbImage, rng: &mut StdRng) -> Result<Vec<TensorImage>> {
        Ok(vec![self.apply(img, rng)?])
    }

    fn apply_views_into(
        &self,
        img: &RgbImage,
        rng: &mut StdRng,
        outs: &mut [&mut [f32]],
    ) -> Result<()> {
        single_view_into(self, img, rng, outs)
    }
}

/// The one view of a single pipeline into `outs` (which must hold one slot).
pub(crate) fn single_view_into<I, P: ViewPipeline<I>>(
    pipeline: &P,
    img: &I,
    rng: &mut StdRng,
    outs: &mut [&mut [f32]],
) -> Result<()> {
    match outs {
        [out] => pipeline.view_into(img, rng, out),
        _ => Err(invalid(format!(
            "a pipeline gives 1 view, {} asked",
            outs.len()
        ))),
    }
}

/// MoCo's `TwoCropsTransform`: two independent draws of the same pipeline on one image, the
/// query view then the key view (the second drawn after the first from the same generator).
/// `P` is a [`Pipeline`] (RGB) or a [`crate::band_transforms::BandPipeline`].
#[derive(Debug)]
pub struct TwoCrops<P = Pipeline> {
    base: P,
}

impl<P> TwoCrops<P> {
    /// Two views of `base`.
    pub fn new(base: P) -> Self {
        Self { base }
    }

    /// The underlying pipeline.
    pub fn base(&self) -> &P {
        &self.base
    }
}

impl<I, P: ViewPipeline<I>> SampleTransform<I> for TwoCrops<P> {
    fn num_views(&self) -> usize {
        2
    }

    fn channels(&self) -> usize {
        self.base.channels()
    }

    fn output_hw(&self) -> Option<(usize, usize)> {
        self.base.output_hw()
    }

    fn apply_views(&self, img: &I, rng: &mut StdRng) -> Result<Vec<TensorImage>> {
        Ok(vec![self.base.view(img, rng)?, self.base.view(img, rng)?])
    }

    fn apply_views_into(&self, img: &I, rng: &mut StdRng, outs: &mut [&mut [f32]]) -> Result<()> {
        match outs {
            [q, k] => {
                self.base.view_into(img, rng, q)?;
                self.base.view_into(img, rng, k)
            }
            _ => Err(invalid(format!(
                "TwoCrops gives 2 views, {} asked",
                outs.len()
            ))),
        }
    }
}

/// MoCo v2 "aug-plus" (`main_moco.py --aug-plus`): `RandomResizedCrop(size, scale=(0.2, 1))`,
/// `RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)`, `RandomGrayscale(p=0.2)`,
/// `RandomApply([GaussianBlur([0.1, 2.0])], p=0.5)`, `RandomHorizontalFlip()`, `ToTensor()`,
/// `Normalize(ImageNet)`.
pub fn moco_v2_transform(size: usize) -> Result<Pipeline> {
    let t = Compose::new()
        .then(RandomResizedCrop::new(size)?.with_scale(0.2, 1.0)?)
        .then(RandomApply::new(
            ColorJitter::new(0.4, 0.4, 0.4, 0.1)?,
            0.8,
        )?)
        .then(RandomGrayscale::new(0.2)?)
        .then(RandomApply::new(GaussianBlur::default(), 0.5)?)
        .then(RandomHorizontalFlip::default());
    Ok(Pipeline::new(t, Normalize::imagenet()))
}

/// MoCo v1 (`main_moco.py` without `--aug-plus`): `RandomResizedCrop(size, scale=(0.2, 1))`,
/// `RandomGrayscale(p=0.2)`, `ColorJitter(0.4, 0.4, 0.4, 0.4)`, `RandomHorizontalFlip()`,
/// `ToTensor()`, `Normalize(ImageNet)`.
pub fn moco_v1_transform(size: usize) -> Result<Pipeline> {
    let t = Compose::new()
        .then(RandomResizedCrop::new(size)?.with_scale(0.2, 1.0)?)
        .then(RandomGrayscale::new(0.2)?)
        .then(ColorJitter::new(0.4, 0.4, 0.4, 0.4)?)
        .then(RandomHorizontalFlip::default());
    Ok(Pipeline::new(t, Normalize::imagenet()))
}

/// The linear probe's training transform (`main_lincls.py`): `RandomResizedCrop(size)`
/// (default scale `(0.08, 1)`), `RandomHorizontalFlip()`, `ToTensor()`, `Normalize(ImageNet)`.
pub fn probe_train_transform(size: usize) -> Result<Pipeline> {
    let t = Compose::new()
        .then(RandomResizedCrop::new(size)?)
        .then(RandomHorizontalFlip::default());
    Ok(Pipeline::new(t, Normalize::imagenet()))
}

/// The shorter-side size of the probe's evaluation resize: `int(round(size * 256 / 224))`
/// (Python's `round`, ties to even): 256 for 224.
pub fn eval_resize_size(size: usize) -> usize {
    ((size * 256) as f64 / 224.0).round_ties_even() as usize
}

/// The linear probe's evaluation transform: `Resize(round(size * 256 / 224))`,
/// `CenterCrop(size)`, `ToTensor()`, `Normalize(ImageNet)` (deterministic).
pub fn probe_eval_transform(size: usize) -> Result<Pipeline> {
    let t = Compose::new()
        .then(Resize::new(eval_resize_size(size).max(1))?)
        .then(CenterCrop::new(size)?);
    Ok(Pipeline::new(t, Normalize::imagenet()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn rrc_params_stay_inside() {
        let rrc = RandomResizedCrop::new(8).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        for (h, w) in [(1, 1), (2, 9), (150, 150), (7, 300)] {
            for _ in 0..200 {
                let (t, l, ch, cw) = rrc.get_params(h, w, &mut rng).unwrap();
                assert!(ch >= 1 && cw >= 1 && t + ch <= h && l + cw <= w);
            }
        }
    }

    #[test]
    fn rrc_fallback_is_central_ratio_clamped() {
        // scale > 1: no attempt fits, the fallback is used.
        let rrc = RandomResizedCrop::new(4)
            .unwrap()
            .with_scale(2.0, 3.0)
            .unwrap();
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(rrc.get_params(10, 100, &mut rng).unwrap(), (0, 43, 10, 13));
        assert_eq!(rrc.get_params(100, 10, &mut rng).unwrap(), (43, 0, 13, 10));
        assert_eq!(rrc.get_params(10, 12, &mut rng).unwrap(), (0, 0, 10, 12));
    }

    #[test]
    fn jitter_ranges_follow_torchvision() {
        let j = ColorJitter::new(0.4, 1.5, 0.0, 0.1).unwrap();
        assert_eq!(j.brightness, Some((0.6, 1.4)));
        assert_eq!(j.contrast, Some((0.0, 2.5)));
        assert_eq!(j.saturation, None);
        assert_eq!(j.hue, Some((-0.1, 0.1)));
        assert!(ColorJitter::new(0.0, 0.0, 0.0, 0.6).is_err());
        assert!(ColorJitter::new(-0.1, 0.0, 0.0, 0.0).is_err());
        assert!(
            ColorJitter::default()
                .with_brightness_range(1.2, 0.8)
                .is_err()
        );
    }

    #[test]
    fn eval_resize_rounds_like_python() {
        assert_eq!(eval_resize_size(224), 256);
        assert_eq!(eval_resize_size(64), 73);
        assert_eq!(eval_resize_size(32), 37);
    }
}
