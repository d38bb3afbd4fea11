//! Pillow's `ImageFilter.GaussianBlur(radius)`, the blur of MoCo v2, ported from
//! `libImaging/BoxBlur.c`: three box blurs of an "extended" fractional radius approximating a
//! Gaussian of standard deviation `radius`, all horizontal passes first, then all vertical ones;
//! 24-bit fixed point; every pass rounded to `u8`; edge pixels repeated past the border.

use crate::error::{Result, invalid};
use crate::image::RgbImage;
use crate::simd::{multiversion, transpose_rgb};

/// Pillow's `_gaussian_blur_radius(radius, passes)`: the fractional box radius (in `f32`) whose
/// `passes` box blurs have the variance of a Gaussian of standard deviation `radius`.
pub fn box_radius(radius: f32, passes: u32) -> f32 {
    let sigma2 = radius * radius / passes as f32;
    let l_big = (12.0 * f64::from(sigma2) + 1.0).sqrt() as f32;
    let l = ((f64::from(l_big) - 1.0) / 2.0).floor() as f32;
    let a = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2);
    let a = a / (6.0 * (sigma2 - (l + 1.0) * (l + 1.0)));
    l + a
}

/// Fixed-point weights of one box pass: `(r, ww, fw)`: `r` whole pixels each side with weight
/// `ww`, the two pixels at distance `r + 1` with weight `fw` (sum `2^24`).
fn box_weights(fradius: f32) -> (usize, u32, u32) {
    let r = fradius as usize;
    let ww = ((1u32 << 24) as f32 / (fradius * 2.0 + 1.0)) as u32;
    let fw = ((1u32 << 24) - (2 * r as u32 + 1) * ww) / 2;
    (r, ww, fw)
}

multiversion! {
/// One vertical box pass over the interleaved `src` (`w` pixels, `h` rows) into `dst`:
/// Pillow's line box blur applied down every column (the running sum makes it O(1) per value,
/// and it runs on whole rows so it vectorizes).
fn box_cols(
    src: &[u8],
    dst: &mut [u8],
    size: (usize, usize),
    weights: (usize, u32, u32),
    acc: &mut Vec<u32>,
) {
    let (w, h) = size;
    let (r, ww, fw) = weights;
    let wb = w * 3;
    let row = |y: i64| -> &[u8] {
        let y = y.clamp(0, h as i64 - 1) as usize;
        &src[y * wb..(y + 1) * wb]
    };
    let r = r as i64;
    acc.clear();
    acc.resize(wb, 0);
    for d in -r..=r {
        for (a, &v) in acc.iter_mut().zip(row(d)) {
            *a += u32::from(v);
        }
    }
    for y in 0..h as i64 {
        let (lo, hi) = (row(y - r - 1), row(y + r + 1));
        let out = &mut dst[y as usize * wb..(y as usize + 1) * wb];
        for (((o, &a), &l), &hv) in out.iter_mut().zip(acc.iter()).zip(lo).zip(hi) {
            *o = ((a * ww + (u32::from(l) + u32::from(hv)) * fw + (1 << 23)) >> 24) as u8;
        }
        if y + 1 < h as i64 {
            let (add, sub) = (row(y + r + 1), row(y - r));
            for ((a, &p), &m) in acc.iter_mut().zip(add).zip(sub) {
                *a = *a + u32::from(p) - u32::from(m);
            }
        }
    }
}
}

/// Box radii up to this run the horizontal passes directly along the rows (a stencil of
/// `2r + 3` taps, vectorized over the row); larger ones transpose and use the running sum.
const DIRECT_MAX_RADIUS: usize = 4;

multiversion! {
/// One horizontal box pass over every row of the interleaved `src` (`w` pixels a row) into
/// `dst`, as the stencil `(sum(x-r..=x+r) * ww + (x-r-1 + x+r+1) * fw + 2^23) >> 24` with the
/// edge pixels repeated: the same integers Pillow's running sum gives.
fn box_rows_direct(
    src: &[u8],
    dst: &mut [u8],
    w: usize,
    weights: (usize, u32, u32),
    scratch: &mut (Vec<u8>, Vec<u32>),
) {
    let (r, ww, fw) = weights;
    let pad = r + 1;
    let wb = w * 3;
    let (line, acc) = scratch;
    for (srow, drow) in src.chunks_exact(wb).zip(dst.chunks_exact_mut(wb)) {
        line.clear();
        for _ in 0..pad {
            line.extend_from_slice(&srow[..3]);
        }
        line.extend_from_slice(srow);
        for _ in 0..pad {
            line.extend_from_slice(&srow[wb - 3..]);
        }
        acc.clear();
        acc.resize(wb, 0);
        // Byte j of the row is line[j + 3 pad]; pixel offset d is 3 d bytes.
        for d in 0..=2 * r {
            let s = &line[3 * (pad - r + d)..3 * (pad - r + d) + wb];
            for (a, &v) in acc.iter_mut().zip(s) {
                *a += u32::from(v);
            }
        }
        let lo = &line[..wb];
        let hi = &line[3 * (2 * pad)..3 * (2 * pad) + wb];
        for (((o, &a), &l), &hv) in drow.iter_mut().zip(acc.iter()).zip(lo).zip(hi) {
            *o = ((a * ww + (u32::from(l) + u32::from(hv)) * fw + (1 << 23)) >> 24) as u8;
        }
    }
}
}

/// `img.filter(ImageFilter.GaussianBlur(radius))`, in place, bit-exact with Pillow: `passes`
/// (3 in Pillow) box blurs of radius [`box_radius`]. Errors when `radius` is negative or not
/// finite.
pub fn gaussian_blur_in_place(img: &mut RgbImage, radius: f64) -> Result<()> {
    if !(radius.is_finite() && radius >= 0.0) {
        return Err(invalid(format!(
            "gaussian blur radius ({radius}) is not a non-negative finite number"
        )));
    }
    let passes = 3;
    let fr = box_radius(radius as f32, passes);
    if fr == 0.0 || img.is_empty() {
        return Ok(());
    }
    let (w, h) = (img.width(), img.height());
    let weights = box_weights(fr);
    let mut a = std::mem::take(img).into_raw();
    let mut b = vec![0u8; a.len()];
    let mut scratch = Vec::new();
    // Pillow: all horizontal passes, then all vertical ones.
    if weights.0 <= DIRECT_MAX_RADIUS {
        let mut rows = (Vec::new(), Vec::new());
        for _ in 0..passes {
            box_rows_direct(&a, &mut b, w, weights, &mut rows);
            std::mem::swap(&mut a, &mut b);
        }
    } else {
        // The horizontal passes run as vertical ones on the transposed image.
        transpose_rgb(&a, &mut b, w, h);
        for _ in 0..passes {
            box_cols(&b, &mut a, (h, w), weights, &mut scratch);
            std::mem::swap(&mut a, &mut b);
        }
        transpose_rgb(&b, &mut a, h, w);
    }
    for _ in 0..passes {
        box_cols(&a, &mut b, (w, h), weights, &mut scratch);
        std::mem::swap(&mut a, &mut b);
    }
    *img = RgbImage::from_raw(w, h, a).expect("same size");
    Ok(())
}

/// [`gaussian_blur_in_place`] on a copy.
pub fn gaussian_blur(img: &RgbImage, radius: f64) -> Result<RgbImage> {
    let mut out = img.clone();
    gaussian_blur_in_place(&mut out, radius)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_radius_matches_pillow_values() {
        assert_eq!(box_radius(0.0, 3), 0.0);
        // l = 1, a = 0.375 for radius 2.
        assert!((box_radius(2.0, 3) - 1.375).abs() < 1e-6);
    }

    #[test]
    fn constant_image_is_unchanged() {
        let mut img = RgbImage::filled(7, 5, [3, 100, 250]);
        gaussian_blur_in_place(&mut img, 1.9).unwrap();
        assert!(img.as_raw().chunks(3).all(|p| p == [3, 100, 250]));
    }

    #[test]
    fn one_pixel_image() {
        let mut img = RgbImage::filled(1, 1, [1, 2, 3]);
        gaussian_blur_in_place(&mut img, 5.0).unwrap();
        assert_eq!(img.get(0, 0), Some([1, 2, 3]));
    }
}
