//! Crops and flips (exact: they only move pixels).

use crate::error::{Result, invalid};
use crate::image::RgbImage;

/// PIL's `img.crop((left, top, left + width, top + height))` (torchvision `F.crop`): the part
/// of the crop outside the image is black. Errors on a zero size.
pub fn crop(img: &RgbImage, top: i64, left: i64, height: usize, width: usize) -> Result<RgbImage> {
    if height == 0 || width == 0 {
        return Err(invalid(format!(
            "crop: size {height}x{width} has a zero side"
        )));
    }
    let mut out = RgbImage::new(width, height);
    let (ih, iw) = (img.height() as i64, img.width() as i64);
    // Columns of the crop that fall inside the image.
    let x0 = left.max(0);
    let x1 = (left + width as i64).min(iw);
    if x1 <= x0 {
        return Ok(out);
    }
    let dst_x = (x0 - left) as usize;
    let n = (x1 - x0) as usize * 3;
    let ow = width * 3;
    let dst = out.as_raw_mut();
    for r in 0..height {
        let y = top + r as i64;
        if y < 0 || y >= ih {
            continue;
        }
        let src = img.row(y as usize);
        dst[r * ow + dst_x * 3..r * ow + dst_x * 3 + n]
            .copy_from_slice(&src[x0 as usize * 3..x0 as usize * 3 + n]);
    }
    Ok(out)
}

/// torchvision `F.hflip` (PIL `FLIP_LEFT_RIGHT`), in place.
pub fn hflip_in_place(img: &mut RgbImage) {
    let stride = img.width() * 3;
    if stride == 0 {
        return;
    }
    let mut scratch = vec![0u8; stride];
    for row in img.as_raw_mut().chunks_exact_mut(stride) {
        scratch.copy_from_slice(row);
        for (d, s) in row.chunks_exact_mut(3).zip(scratch.chunks_exact(3).rev()) {
            d.copy_from_slice(s);
        }
    }
}

/// torchvision `F.hflip`: mirror left-right.
pub fn hflip(img: &RgbImage) -> RgbImage {
    let mut out = img.clone();
    hflip_in_place(&mut out);
    out
}

/// torchvision `F.vflip` (PIL `FLIP_TOP_BOTTOM`).
pub fn vflip(img: &RgbImage) -> RgbImage {
    let mut data = Vec::with_capacity(img.as_raw().len());
    for y in (0..img.height()).rev() {
        data.extend_from_slice(img.row(y));
    }
    RgbImage::from_raw(img.width(), img.height(), data).expect("same size")
}

/// The `(top, left)` offsets of torchvision's `F.center_crop`:
/// `int(round((H - h) / 2.0))` with Python's `round` (ties to even: 8.5 -> 8). Offsets are
/// negative when the crop is larger than the image.
pub fn center_crop_offsets(img_h: usize, img_w: usize, h: usize, w: usize) -> (i64, i64) {
    // torchvision pads a too-small image symmetrically (left/top get the floor half), then
    // takes the centred crop of the padded image.
    let axis = |size: usize, crop: usize| -> i64 {
        if crop > size {
            -(((crop - size) / 2) as i64)
        } else {
            ((size - crop) as f64 / 2.0).round_ties_even() as i64
        }
    };
    (axis(img_h, h), axis(img_w, w))
}

/// torchvision `F.center_crop(img, [h, w])` on a PIL image. A crop larger than the image is
/// padded with black (torchvision pads with `fill=0`, then crops). Errors on a zero size.
pub fn center_crop(img: &RgbImage, h: usize, w: usize) -> Result<RgbImage> {
    let (top, left) = center_crop_offsets(img.height(), img.width(), h, w);
    crop(img, top, left, h, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn center_offsets_round_half_to_even() {
        assert_eq!(center_crop_offsets(49, 40, 32, 32), (8, 4));
        assert_eq!(center_crop_offsets(51, 40, 32, 32), (10, 4));
        assert_eq!(center_crop_offsets(3, 3, 6, 7), (-1, -2));
    }

    #[test]
    fn crop_outside_is_black() {
        let img = RgbImage::filled(2, 2, [9, 9, 9]);
        let c = crop(&img, -1, 1, 3, 3).unwrap();
        assert_eq!(c.get(0, 0), Some([0, 0, 0]));
        assert_eq!(c.get(0, 1), Some([9, 9, 9]));
        assert_eq!(c.get(1, 1), Some([0, 0, 0]));
        assert_eq!(c.get(0, 2), Some([9, 9, 9]));
    }

    #[test]
    fn hflip_twice_is_identity() {
        let img = RgbImage::from_fn(5, 3, |x, y| [x as u8, y as u8, (x * y) as u8]);
        let f = hflip(&img);
        assert_eq!(f.get(0, 1), img.get(4, 1));
        assert_eq!(hflip(&f), img);
    }
}
