//! Colour operations of torchvision's PIL backend, ported from Pillow's integer/float C code
//! (`libImaging/Blend.c`, `Convert.c`) so that results match Pillow bit for bit.
//!
//! * `blend` (what `ImageEnhance` does): `out = im1 + f32(alpha) * (im2 - im1)` in `f32`,
//!   **truncated** toward zero, clamped to `[0, 255]` first when `alpha` is outside `[0, 1]`.
//! * luminance `L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16`.
//! * hue: Pillow's 8-bit HSV (its `float`/`double` mix and truncations), `H += uint8(int(f*255))`
//!   modulo 256, back to RGB with C's `round` (half away from zero).

use crate::error::{Result, invalid};
use crate::image::RgbImage;
use crate::simd::multiversion;

/// Pillow's `convert("L")` of one pixel.
#[inline(always)]
pub fn luminance(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

/// One blended value: `trunc(a + alpha * (b - a))` in f32, clamped when `clamp`.
#[inline(always)]
fn blend1(a: u8, b: u8, alpha: f32, clamp: bool) -> u8 {
    let v = f32::from(a) + alpha * (f32::from(b) - f32::from(a));
    // Truncation toward zero, like C's cast. Inside [0, 1] the blend stays inside [0, 255];
    // outside it is clamped first.
    let v = if clamp { v.clamp(0.0, 255.0) } else { v };
    // SAFETY: `alpha` is finite (checked by the callers) and `a`, `b` are bytes, so `v` is a
    // finite value in [0, 255], which `i32` represents. (The checked `as` cast does not
    // vectorize.)
    unsafe { v.to_int_unchecked::<i32>() as u8 }
}

/// Lookup table of `blend(constant, v, alpha)` for every `v`.
fn blend_lut(constant: u8, alpha: f64) -> [u8; 256] {
    let a = alpha as f32;
    let clamp = !(0.0..=1.0).contains(&alpha);
    let mut lut = [0u8; 256];
    for (v, o) in lut.iter_mut().enumerate() {
        *o = if alpha == 0.0 {
            constant
        } else if alpha == 1.0 {
            v as u8
        } else {
            blend1(constant, v as u8, a, clamp)
        };
    }
    lut
}

/// Factors must be non-negative and finite as the `f32` Pillow computes with.
fn check_factor(name: &str, f: f64) -> Result<()> {
    if !(f >= 0.0 && (f as f32).is_finite()) {
        return Err(invalid(format!(
            "{name} factor ({f}) is not a non-negative finite (f32) number"
        )));
    }
    Ok(())
}

fn apply_lut(img: &mut RgbImage, lut: &[u8; 256]) {
    for v in img.as_raw_mut() {
        *v = lut[usize::from(*v)];
    }
}

/// torchvision `F.adjust_brightness` (PIL `ImageEnhance.Brightness`: blend with black), in
/// place. Errors when `factor` is negative (torchvision raises too).
pub fn adjust_brightness_in_place(img: &mut RgbImage, factor: f64) -> Result<()> {
    check_factor("brightness", factor)?;
    apply_lut(img, &blend_lut(0, factor));
    Ok(())
}

multiversion! {
fn luminance_sum(data: &[u8]) -> u64 {
    let mut sum = 0u64;
    for row in data.chunks(3 * 4096) {
        let mut s = 0u32;
        for p in row.chunks_exact(3) {
            s += u32::from(luminance(p[0], p[1], p[2]));
        }
        sum += u64::from(s);
    }
    sum
}
}

/// The gray level `ImageEnhance.Contrast` blends with: `int(mean(L) + 0.5)`, the mean in `f64`.
pub fn contrast_mean(img: &RgbImage) -> u8 {
    if img.is_empty() {
        return 0;
    }
    let sum = luminance_sum(img.as_raw());
    let n = (img.width() * img.height()) as f64;
    (sum as f64 / n + 0.5) as u8
}

/// torchvision `F.adjust_contrast` (PIL `ImageEnhance.Contrast`: blend with a gray image of
/// level [`contrast_mean`]), in place. Errors when `factor` is negative.
pub fn adjust_contrast_in_place(img: &mut RgbImage, factor: f64) -> Result<()> {
    check_factor("contrast", factor)?;
    let mean = contrast_mean(img);
    apply_lut(img, &blend_lut(mean, factor));
    Ok(())
}

multiversion! {
/// `img[i] = blend(base[i], img[i], alpha)` for every byte.
fn blend_bytes(base: &[u8], img: &mut [u8], alpha: f32, clamp: bool) {
    if clamp {
        for (o, &b) in img.iter_mut().zip(base) {
            *o = blend1(b, *o, alpha, true);
        }
    } else {
        for (o, &b) in img.iter_mut().zip(base) {
            *o = blend1(b, *o, alpha, false);
        }
    }
}
}

/// torchvision `F.adjust_saturation` (PIL `ImageEnhance.Color`: blend with the L image), in
/// place. Errors when `factor` is negative.
pub fn adjust_saturation_in_place(img: &mut RgbImage, factor: f64) -> Result<()> {
    check_factor("saturation", factor)?;
    if factor == 1.0 {
        return Ok(());
    }
    if factor == 0.0 {
        grayscale_in_place(img);
        return Ok(());
    }
    let gray = rgb_to_grayscale(img);
    let clamp = !(0.0..=1.0).contains(&factor);
    blend_bytes(gray.as_raw(), img.as_raw_mut(), factor as f32, clamp);
    Ok(())
}

/// Pillow's `rgb2hsv` of one pixel: 8-bit `[h, s, v]`.
#[inline(always)]
pub fn rgb_to_hsv(r: u8, g: u8, b: u8) -> [u8; 3] {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if maxc == minc {
        return [0, 0, maxc];
    }
    let cr = f32::from(maxc - minc);
    let s = cr / f32::from(maxc);
    let rc = f32::from(maxc - r) / cr;
    let gc = f32::from(maxc - g) / cr;
    let bc = f32::from(maxc - b) / cr;
    let h: f32 = if r == maxc {
        bc - gc
    } else if g == maxc {
        (2.0 + f64::from(rc) - f64::from(bc)) as f32
    } else {
        (4.0 + f64::from(gc) - f64::from(rc)) as f32
    };
    // fmod(h / 6 + 1, 1): the argument lies in [0, 2), where fmod is one exact subtraction.
    let x = f64::from(h) / 6.0 + 1.0;
    let h = (if x >= 1.0 { x - 1.0 } else { x }) as f32;
    let uh = ((f64::from(h) * 255.0) as i32).clamp(0, 255) as u8;
    let us = ((f64::from(s) * 255.0) as i32).clamp(0, 255) as u8;
    [uh, us, maxc]
}

/// C `round` (half away from zero) clamped to a byte. `x - trunc(x)` is exact, so the halfway
/// test is exact too.
#[inline(always)]
fn cround8(x: f64) -> u8 {
    if x <= 0.0 {
        return 0;
    }
    let t = x as i64;
    let r = if x - t as f64 >= 0.5 { t + 1 } else { t };
    r.min(255) as u8
}

/// Pillow's `hsv2rgb` of one 8-bit HSV pixel.
#[inline(always)]
pub fn hsv_to_rgb(h: u8, s: u8, v: u8) -> [u8; 3] {
    if s == 0 {
        return [v, v, v];
    }
    let hf = f64::from(f32::from(h)) * 6.0 / 255.0;
    // hf >= 0: truncation is floor.
    let i = hf as i32;
    let f = (hf - f64::from(i as f32)) as f32;
    let fs = (f64::from(f32::from(s)) / 255.0) as f32;
    let vd = f64::from(f32::from(v));
    let p = cround8(vd * (1.0 - f64::from(fs)));
    let q = cround8(vd * (1.0 - f64::from(fs * f)));
    let t = cround8(vd * (1.0 - f64::from(fs) * (1.0 - f64::from(f))));
    match i % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// The 8-bit hue shift torchvision adds: `uint8(int(factor * 255))` (modulo 256).
pub fn hue_shift(factor: f64) -> u8 {
    ((factor * 255.0).trunc() as i32 & 0xFF) as u8
}

/// Pixels per block of the vectorized hue adjustment.
const HUE_LANES: usize = 64;

/// `x >= 0` to the nearest integer, halves away from zero (C `round`), as `i32`.
#[inline(always)]
fn cround_lane(x: f64) -> i32 {
    // SAFETY: callers pass finite values in [0, 255].
    let t = unsafe { x.to_int_unchecked::<i32>() };
    t + i32::from(x - f64::from(t) >= 0.5)
}

/// Pillow's `rgb2hsv` on `HUE_LANES` pixels, lane by lane without branches so that it
/// vectorizes. Equal to [`rgb_to_hsv`] for every input (checked over the whole RGB cube by a
/// test). Of the three `(max - c) / (max - min)` divisions only the middle channel's is
/// computed: the maximum's is exactly 0 and the minimum's exactly 1.
#[inline(always)]
fn rgb_to_hsv_lanes(
    r: &[i32; HUE_LANES],
    g: &[i32; HUE_LANES],
    b: &[i32; HUE_LANES],
) -> [[i32; HUE_LANES]; 3] {
    let mut out = [[0i32; HUE_LANES]; 3];
    for k in 0..HUE_LANES {
        let (rk, gk, bk) = (r[k], g[k], b[k]);
        let maxc = rk.max(gk).max(bk);
        let minc = rk.min(gk).min(bk);
        let gray = maxc == minc;
        let mid = rk + gk + bk - maxc - minc;
        // Gray lanes compute with stand-ins and are overridden below.
        let cr = if gray { 1 } else { maxc - minc } as f32;
        let s = cr / (if maxc == 0 { 1 } else { maxc }) as f32;
        let e = (maxc - mid) as f32 / cr;
        let c = |v: i32| {
            if v == maxc {
                0.0f32
            } else if v == minc {
                1.0
            } else {
                e
            }
        };
        let (rc, gc, bc) = (c(rk), c(gk), c(bk));
        let h_r = bc - gc;
        let h_g = (2.0 + f64::from(rc) - f64::from(bc)) as f32;
        let h_b = (4.0 + f64::from(gc) - f64::from(rc)) as f32;
        let h = if rk == maxc {
            h_r
        } else if gk == maxc {
            h_g
        } else {
            h_b
        };
        // fmod(h / 6 + 1, 1) on [0, 2). The division by 6 is a product with 1/6: for every
        // value h takes the final 8-bit hue is the same (the whole-cube test checks all of
        // them).
        let x = f64::from(h) * (1.0 / 6.0) + 1.0;
        let h = (if x >= 1.0 { x - 1.0 } else { x }) as f32;
        // SAFETY: h in [0, 1) and s in (0, 1]: the products are finite and in [0, 255].
        let uh = unsafe { (f64::from(h) * 255.0).to_int_unchecked::<i32>() }.min(255);
        let us = unsafe { (f64::from(s) * 255.0).to_int_unchecked::<i32>() }.min(255);
        out[0][k] = if gray { 0 } else { uh };
        out[1][k] = if gray { 0 } else { us };
        out[2][k] = maxc;
    }
    out
}

/// Pillow's `hsv2rgb` on `HUE_LANES` pixels (values 0..=255), branch-free; equal to
/// [`hsv_to_rgb`] for every input (checked over the whole HSV cube by a test).
#[inline(always)]
fn hsv_to_rgb_lanes(
    h: &[i32; HUE_LANES],
    s: &[i32; HUE_LANES],
    v: &[i32; HUE_LANES],
) -> [[i32; HUE_LANES]; 3] {
    let mut out = [[0i32; HUE_LANES]; 3];
    for k in 0..HUE_LANES {
        let (hk, sk, v) = (h[k], s[k], v[k]);
        // hsv2rgb's `h * 6.0 / 255.0` and `s / 255.0`, as products with the reciprocal: for
        // the 256 possible values the results (after the rounding to f32 and the floor) are
        // the same (checked for every value by a test); products vectorize, table lookups
        // do not.
        let hf = f64::from(hk) * (6.0 / 255.0);
        // SAFETY: hf in [0, 6].
        let i = unsafe { hf.to_int_unchecked::<i32>() };
        let f = (hf - f64::from(i)) as f32;
        let sel = if i >= 6 { i - 6 } else { i };
        let fs = (f64::from(sk) * (1.0 / 255.0)) as f32;
        let vd = f64::from(v);
        let p = cround_lane(vd * (1.0 - f64::from(fs)));
        let q = cround_lane(vd * (1.0 - f64::from(fs * f)));
        let t = cround_lane(vd * (1.0 - f64::from(fs) * (1.0 - f64::from(f))));
        // hsv2rgb's switch: (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q), as selects.
        let rr = if sel == 1 {
            q
        } else if sel == 2 || sel == 3 {
            p
        } else if sel == 4 {
            t
        } else {
            v
        };
        let gg = if sel == 0 {
            t
        } else if sel == 3 {
            q
        } else if sel >= 4 {
            p
        } else {
            v
        };
        let bb = if sel <= 1 {
            p
        } else if sel == 2 {
            t
        } else if sel == 5 {
            q
        } else {
            v
        };
        let zero = sk == 0;
        out[0][k] = if zero { v } else { rr };
        out[1][k] = if zero { v } else { gg };
        out[2][k] = if zero { v } else { bb };
    }
    out
}

/// The hue adjustment of `HUE_LANES` interleaved RGB pixels.
#[inline(always)]
fn hue_block(px: &mut [u8], shift: i32) {
    const L: usize = HUE_LANES;
    let (mut r, mut g, mut b) = ([0i32; L], [0i32; L], [0i32; L]);
    for k in 0..L {
        r[k] = i32::from(px[3 * k]);
        g[k] = i32::from(px[3 * k + 1]);
        b[k] = i32::from(px[3 * k + 2]);
    }
    let [mut h, s, v] = rgb_to_hsv_lanes(&r, &g, &b);
    for hk in &mut h {
        *hk = (*hk + shift) & 0xFF;
    }
    let [r, g, b] = hsv_to_rgb_lanes(&h, &s, &v);
    for k in 0..L {
        px[3 * k] = r[k] as u8;
        px[3 * k + 1] = g[k] as u8;
        px[3 * k + 2] = b[k] as u8;
    }
}

multiversion! {
fn hue_bytes(data: &mut [u8], shift: i32) {
    let mut blocks = data.chunks_exact_mut(3 * HUE_LANES);
    for blk in &mut blocks {
        hue_block(blk, shift);
    }
    let rest = blocks.into_remainder();
    if !rest.is_empty() {
        let mut tmp = [0u8; 3 * HUE_LANES];
        tmp[..rest.len()].copy_from_slice(rest);
        hue_block(&mut tmp, shift);
        let n = rest.len();
        rest.copy_from_slice(&tmp[..n]);
    }
}
}

/// torchvision `F.adjust_hue` on a PIL image, in place: RGB -> HSV (8-bit), `H += shift`
/// modulo 256, HSV -> RGB. Errors unless `-0.5 <= factor <= 0.5` (torchvision raises too).
pub fn adjust_hue_in_place(img: &mut RgbImage, factor: f64) -> Result<()> {
    if !(-0.5..=0.5).contains(&factor) {
        return Err(invalid(format!(
            "hue factor ({factor}) is not in [-0.5, 0.5]"
        )));
    }
    hue_bytes(img.as_raw_mut(), i32::from(hue_shift(factor)));
    Ok(())
}

/// [`adjust_hue_in_place`] computed one pixel at a time with the scalar [`rgb_to_hsv`] and
/// [`hsv_to_rgb`] (the definition the vectorized version reproduces; slower).
pub fn adjust_hue_reference(img: &RgbImage, factor: f64) -> Result<RgbImage> {
    if !(-0.5..=0.5).contains(&factor) {
        return Err(invalid(format!(
            "hue factor ({factor}) is not in [-0.5, 0.5]"
        )));
    }
    let shift = hue_shift(factor);
    let mut out = img.clone();
    for p in out.as_raw_mut().chunks_exact_mut(3) {
        let [h, s, v] = rgb_to_hsv(p[0], p[1], p[2]);
        p.copy_from_slice(&hsv_to_rgb(h.wrapping_add(shift), s, v));
    }
    Ok(out)
}

/// torchvision `F.rgb_to_grayscale(img, num_output_channels=3)` on a PIL image, in place:
/// every channel becomes Pillow's `L`.
pub fn grayscale_in_place(img: &mut RgbImage) {
    gray_bytes(img.as_raw_mut());
}

multiversion! {
fn gray_bytes(data: &mut [u8]) {
    for p in data.chunks_exact_mut(3) {
        p.fill(luminance(p[0], p[1], p[2]));
    }
}
}

/// [`adjust_brightness_in_place`] on a copy.
pub fn adjust_brightness(img: &RgbImage, factor: f64) -> Result<RgbImage> {
    let mut out = img.clone();
    adjust_brightness_in_place(&mut out, factor)?;
    Ok(out)
}

/// [`adjust_contrast_in_place`] on a copy.
pub fn adjust_contrast(img: &RgbImage, factor: f64) -> Result<RgbImage> {
    let mut out = img.clone();
    adjust_contrast_in_place(&mut out, factor)?;
    Ok(out)
}

/// [`adjust_saturation_in_place`] on a copy.
pub fn adjust_saturation(img: &RgbImage, factor: f64) -> Result<RgbImage> {
    let mut out = img.clone();
    adjust_saturation_in_place(&mut out, factor)?;
    Ok(out)
}

/// [`adjust_hue_in_place`] on a copy.
pub fn adjust_hue(img: &RgbImage, factor: f64) -> Result<RgbImage> {
    let mut out = img.clone();
    adjust_hue_in_place(&mut out, factor)?;
    Ok(out)
}

/// [`grayscale_in_place`] on a copy: a 3-channel gray image.
pub fn rgb_to_grayscale(img: &RgbImage) -> RgbImage {
    let mut out = img.clone();
    grayscale_in_place(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luminance_of_primaries() {
        assert_eq!(luminance(255, 255, 255), 255);
        assert_eq!(luminance(0, 0, 0), 0);
        assert_eq!(luminance(255, 0, 0), 76);
        assert_eq!(luminance(0, 255, 0), 150);
        assert_eq!(luminance(0, 0, 255), 29);
    }

    #[test]
    fn hsv_round_trip_of_grays_and_primaries() {
        for v in [0u8, 1, 128, 255] {
            assert_eq!(rgb_to_hsv(v, v, v), [0, 0, v]);
        }
        assert_eq!(rgb_to_hsv(255, 0, 0), [0, 255, 255]);
        let [h, s, v] = rgb_to_hsv(0, 255, 0);
        assert_eq!(hsv_to_rgb(h, s, v), [0, 255, 0]);
    }

    #[test]
    fn hue_shift_wraps() {
        assert_eq!(hue_shift(0.08), 20);
        assert_eq!(hue_shift(-0.3), (256 - 76) as u8);
        assert_eq!(hue_shift(0.0), 0);
    }

    #[test]
    fn lane_hsv_equals_pillow_hsv_on_the_whole_cube() {
        const L: usize = HUE_LANES;
        let (mut r, mut g, mut b) = ([0i32; L], [0i32; L], [0i32; L]);
        // Every value in release builds; a sample in (slow) debug builds.
        let step = if cfg!(debug_assertions) { 97 } else { 1 };
        for x in (0..256 * 256).step_by(step) {
            let (hi, mid) = (x / 256, x % 256);
            for lo0 in (0..256).step_by(L) {
                for k in 0..L {
                    r[k] = hi;
                    g[k] = mid;
                    b[k] = (lo0 + k) as i32;
                }
                // Forward: every RGB triple.
                let hsv = rgb_to_hsv_lanes(&r, &g, &b);
                // Inverse: every HSV triple (read as h = hi, s = mid, v = lo).
                let rgb = hsv_to_rgb_lanes(&r, &g, &b);
                for k in 0..L {
                    let (p, q, t) = (hi as u8, mid as u8, (lo0 + k) as u8);
                    let want = rgb_to_hsv(p, q, t);
                    let got = [hsv[0][k] as u8, hsv[1][k] as u8, hsv[2][k] as u8];
                    assert_eq!(got, want, "rgb2hsv {p} {q} {t}");
                    let want = hsv_to_rgb(p, q, t);
                    let got = [rgb[0][k] as u8, rgb[1][k] as u8, rgb[2][k] as u8];
                    assert_eq!(got, want, "hsv2rgb {p} {q} {t}");
                }
            }
        }
    }

    #[test]
    fn vectorized_hue_matches_the_direct_computation() {
        for shift_f in [0.0, 0.004, 0.08, -0.3, 0.5, -0.5, 0.27] {
            for r in (0..=255u8).step_by(17) {
                let mut img = RgbImage::from_fn(256, 256, |g, b| [r, g as u8, b as u8]);
                let want = adjust_hue_reference(&img, shift_f).unwrap();
                adjust_hue_in_place(&mut img, shift_f).unwrap();
                assert_eq!(img, want, "r = {r}, factor {shift_f}");
            }
        }
    }

    #[test]
    fn negative_factors_are_errors() {
        let mut img = RgbImage::new(2, 2);
        assert!(adjust_brightness_in_place(&mut img, -0.1).is_err());
        assert!(adjust_contrast_in_place(&mut img, f64::NAN).is_err());
        assert!(adjust_hue_in_place(&mut img, 0.6).is_err());
    }
}
