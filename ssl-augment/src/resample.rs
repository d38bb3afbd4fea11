//! Pillow's bilinear resampling (`Image.resize(size, Image.BILINEAR)`), ported from
//! `libImaging/Resample.c` so that results match Pillow 13 bit for bit.
//!
//! What decides the last bit, all reproduced here:
//! * the triangle filter is widened by the scale factor when shrinking (antialias), so a
//!   downscale averages every source pixel it covers;
//! * the weights of one output pixel are normalized in `f64` and converted to 22-bit fixed
//!   point (`(int)(0.5 + w * 2^22)`);
//! * the image is resampled in two separable passes, **each rounded to `u8`**;
//! * the pass order (new in Pillow 13): the vertical pass runs first when the height shrinks by
//!   more than twice as many pixels as the width, `(H - h) > 0 && (H - h) > 2 (W - w)`, else the
//!   horizontal pass runs first (over only the rows the vertical pass reads). A pass whose size
//!   does not change is skipped.
//!
//! [`resized_crop`] fuses torchvision's `F.resized_crop` (a crop, then a resize of the crop):
//! the resampling reads the crop region of the source in place, with the coefficients Pillow
//! computes for the cropped image, so no crop is copied and the result is the same.

use crate::error::{AugmentError, Result, invalid};
use crate::geometry;
use crate::image::RgbImage;
use crate::simd::{multiversion, transpose_strided};

/// Fixed-point precision of the 8-bit resampler (`PRECISION_BITS = 32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Fixed-point filter weights of one axis: for output pixel `i`, the taps
/// `k[i * ksize .. i * ksize + n]` apply to input pixels `start .. start + n`.
#[derive(Clone, Debug)]
pub(crate) struct Coeffs {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    k: Vec<i32>,
}

/// Normalized `f64` filter weights of one axis, as Pillow's `precompute_coeffs` leaves them
/// (what its 32-bit float resampler uses directly): for output pixel `i`, the taps
/// `k[i * ksize .. i * ksize + n]` apply to input pixels `start .. start + n`.
#[derive(Clone, Debug)]
pub(crate) struct FloatCoeffs {
    pub(crate) bounds: Vec<(usize, usize)>,
    pub(crate) ksize: usize,
    pub(crate) k: Vec<f64>,
}

impl FloatCoeffs {
    /// Pillow's `precompute_coeffs` (bilinear, support 1) for `in_size -> out_size`, box
    /// `[0, in_size)`.
    pub(crate) fn bilinear(in_size: usize, out_size: usize) -> Self {
        let support = 1.0f64;
        // (in1 - in0) is computed in C `float` (box coordinates are floats), then divided in
        // double.
        let in0 = 0.0f32;
        let in1 = in_size as f32;
        let scale = f64::from(in1 - in0) / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = support * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let ss = 1.0 / filterscale;
        let mut bounds = Vec::with_capacity(out_size);
        let mut k = vec![0f64; out_size * ksize];
        for xx in 0..out_size {
            let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
            // C `(int)` truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
            let xmin = xmin as usize;
            let n = xmax.max(0) as usize;
            let w = &mut k[xx * ksize..xx * ksize + n];
            let mut ww = 0.0f64;
            for (x, wx) in w.iter_mut().enumerate() {
                let t = ((x + xmin) as f64 - center + 0.5) * ss;
                let t = t.abs();
                *wx = if t < 1.0 { 1.0 - t } else { 0.0 };
                ww += *wx;
            }
            if ww != 0.0 {
                for wx in w.iter_mut() {
                    *wx /= ww;
                }
            }
            bounds.push((xmin, n));
        }
        Self { bounds, ksize, k }
    }

    pub(crate) fn taps(&self, i: usize) -> (usize, &[f64]) {
        let (start, n) = self.bounds[i];
        (start, &self.k[i * self.ksize..i * self.ksize + n])
    }
}

impl Coeffs {
    /// Pillow's `precompute_coeffs` (bilinear, support 1) for `in_size -> out_size`, box
    /// `[0, in_size)`, followed by `normalize_coeffs_8bpc`.
    pub(crate) fn bilinear(in_size: usize, out_size: usize) -> Self {
        let f = FloatCoeffs::bilinear(in_size, out_size);
        let k =
            f.k.iter()
                .map(|&wx| {
                    let scaled = wx * f64::from(1u32 << PRECISION_BITS);
                    if wx < 0.0 {
                        (-0.5 + scaled) as i32
                    } else {
                        (0.5 + scaled) as i32
                    }
                })
                .collect();
        Self {
            bounds: f.bounds,
            ksize: f.ksize,
            k,
        }
    }

    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (start, n) = self.bounds[i];
        (start, &self.k[i * self.ksize..i * self.ksize + n])
    }

    /// First and one-past-last input index read by any output pixel.
    fn span(&self) -> (usize, usize) {
        let first = self.bounds.first().map_or(0, |b| b.0);
        let last = self.bounds.last().map_or(0, |b| b.0 + b.1);
        (first, last.max(first))
    }
}

#[inline(always)]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A read-only window of an HWC u8 buffer.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [u8],
    /// Bytes per row of the buffer.
    stride: usize,
    /// First row and column (pixels) of the window.
    top: usize,
    left: usize,
    h: usize,
    w: usize,
}

impl View<'_> {
    #[inline(always)]
    fn row(&self, y: usize) -> &[u8] {
        debug_assert!(y < self.h);
        let s = (self.top + y) * self.stride + self.left * 3;
        &self.data[s..s + self.w * 3]
    }
}

/// Horizontal pass over rows `rows` of `src`: writes `rows.len()` rows of `c.bounds.len()`
/// pixels into `dst`. Runs as the vertical pass on the transposed rows (vectorized), which
/// computes the same sums.
fn horizontal(src: View<'_>, rows: (usize, usize), c: &Coeffs, dst: &mut [u8]) {
    let n = rows.1 - rows.0;
    let out_w = c.bounds.len();
    if n == 0 {
        return;
    }
    let start = (src.top + rows.0) * src.stride + src.left * 3;
    let mut t = vec![0u8; src.w * n * 3];
    transpose_strided(&src.data[start..], src.stride, &mut t, src.w, n);
    let tv = View {
        data: &t,
        stride: n * 3,
        top: 0,
        left: 0,
        h: src.w,
        w: n,
    };
    let mut t2 = vec![0u8; out_w * n * 3];
    vertical(tv, 0, c, &mut t2);
    transpose_strided(&t2, n * 3, dst, n, out_w);
}

multiversion! {
/// Vertical pass: output row `yy` mixes rows `bounds[yy]` of `src` (row indices relative to
/// `src`, minus `row_offset`).
fn vertical(src: View<'_>, row_offset: usize, c: &Coeffs, dst: &mut [u8]) {
    let wb = src.w * 3;
    let mut acc = vec![0i32; wb];
    for yy in 0..c.bounds.len() {
        let (start, k) = c.taps(yy);
        acc.fill(HALF);
        for (i, &kv) in k.iter().enumerate() {
            let row = src.row(start + i - row_offset);
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += i32::from(p) * kv;
            }
        }
        for (d, &a) in dst[yy * wb..(yy + 1) * wb].iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
}
}

/// Resamples the window `(top, left, h, w)` (inside `img`) to `out_h x out_w`.
fn resample_window(
    img: &RgbImage,
    top: usize,
    left: usize,
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
) -> RgbImage {
    let src = View {
        data: img.as_raw(),
        stride: img.width() * 3,
        top,
        left,
        h,
        w,
    };
    if out_h == 0 || out_w == 0 || h == 0 || w == 0 {
        return RgbImage::new(out_w, out_h);
    }
    let need_h = out_w != w;
    let need_v = out_h != h;
    if !need_h && !need_v {
        let mut out = Vec::with_capacity(h * w * 3);
        for y in 0..h {
            out.extend_from_slice(src.row(y));
        }
        return RgbImage::from_raw(w, h, out).expect("window size");
    }
    // Pillow 13: vertical first iff (H - h) > 0 and (H - h) > 2 (W - w), in signed ints.
    let dh = h as i64 - out_h as i64;
    let dw = w as i64 - out_w as i64;
    let vertical_first = dh > 0 && dh > 2 * dw;
    let mut out = vec![0u8; out_h * out_w * 3];
    if vertical_first {
        let cv = Coeffs::bilinear(h, out_h);
        if need_h {
            let mut tmp = vec![0u8; out_h * w * 3];
            vertical(src, 0, &cv, &mut tmp);
            let ch = Coeffs::bilinear(w, out_w);
            let tv = View {
                data: &tmp,
                stride: w * 3,
                top: 0,
                left: 0,
                h: out_h,
                w,
            };
            horizontal(tv, (0, out_h), &ch, &mut out);
        } else {
            vertical(src, 0, &cv, &mut out);
        }
    } else {
        let ch = Coeffs::bilinear(w, out_w);
        if need_v {
            let cv = Coeffs::bilinear(h, out_h);
            let (first, last) = cv.span();
            let mut tmp = vec![0u8; (last - first) * out_w * 3];
            horizontal(src, (first, last), &ch, &mut tmp);
            let tv = View {
                data: &tmp,
                stride: out_w * 3,
                top: 0,
                left: 0,
                h: last - first,
                w: out_w,
            };
            vertical(tv, first, &cv, &mut out);
        } else {
            horizontal(src, (0, h), &ch, &mut out);
        }
    }
    RgbImage::from_raw(out_w, out_h, out).expect("output size")
}

/// `img.resize((out_w, out_h), Image.BILINEAR)` exactly as Pillow 13 computes it.
///
/// A zero output size gives an empty image (Pillow raises; torchvision never asks for it).
pub fn resize_bilinear(img: &RgbImage, out_h: usize, out_w: usize) -> RgbImage {
    resample_window(img, 0, 0, img.height(), img.width(), out_h, out_w)
}

/// torchvision `F.resized_crop(img, top, left, height, width, [out_h, out_w], BILINEAR)` on a
/// PIL image: crops `height x width` at `(top, left)`, then resizes to `out_h x out_w`.
///
/// A crop inside the image is resampled in place (no copy); a crop reaching outside the image is
/// padded with black first, as PIL's `crop` does. Errors when a size is zero.
pub fn resized_crop(
    img: &RgbImage,
    top: i64,
    left: i64,
    height: usize,
    width: usize,
    out_h: usize,
    out_w: usize,
) -> Result<RgbImage> {
    if height == 0 || width == 0 || out_h == 0 || out_w == 0 {
        return Err(invalid(format!(
            "resized_crop: crop {height}x{width} to {out_h}x{out_w} has a zero size"
        )));
    }
    let inside = top >= 0
        && left >= 0
        && (top as u64).saturating_add(height as u64) <= img.height() as u64
        && (left as u64).saturating_add(width as u64) <= img.width() as u64;
    if inside {
        Ok(resample_window(
            img,
            top as usize,
            left as usize,
            height,
            width,
            out_h,
            out_w,
        ))
    } else {
        let c = geometry::crop(img, top, left, height, width)?;
        Ok(resize_bilinear(&c, out_h, out_w))
    }
}

/// The output size of torchvision's `F.resize(img, size)` with an int `size`: the shorter side
/// becomes `size`, the longer `int(size * long / short)` (truncated). Returns `(h, w)`.
pub fn shorter_side_size(h: usize, w: usize, size: usize) -> Result<(usize, usize)> {
    if size == 0 {
        return Err(invalid("resize: size must be positive"));
    }
    if h == 0 || w == 0 {
        return Err(AugmentError::InvalidImage(format!(
            "resize: cannot resize an empty {h}x{w} image"
        )));
    }
    let long = |long: usize, short: usize| ((size * long) as f64 / short as f64) as usize;
    Ok(if w <= h {
        (long(h, w), size)
    } else {
        (size, long(w, h))
    })
}

/// torchvision `F.resize(img, size, BILINEAR)` with an int `size` on a PIL image: the shorter
/// side becomes `size` (see [`shorter_side_size`]), resampled with Pillow's bilinear filter.
pub fn resize_shorter(img: &RgbImage, size: usize) -> Result<RgbImage> {
    let (h, w) = shorter_side_size(img.height(), img.width(), size)?;
    Ok(resize_bilinear(img, h, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(10, 3), (3, 10), (7, 7), (150, 224), (600, 64)] {
            let c = Coeffs::bilinear(i, o);
            for xx in 0..o {
                let s: i64 = c.taps(xx).1.iter().map(|&v| i64::from(v)).sum();
                assert!((s - (1 << 22)).abs() <= 4, "{i}->{o} at {xx}: {s}");
            }
        }
    }

    #[test]
    fn same_size_is_a_copy() {
        let img = RgbImage::from_fn(5, 4, |x, y| [x as u8, y as u8, 7]);
        assert_eq!(resize_bilinear(&img, 4, 5), img);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::filled(13, 9, [10, 200, 255]);
        let out = resize_bilinear(&img, 20, 4);
        assert!(out.as_raw().chunks(3).all(|p| p == [10, 200, 255]));
    }
}
