//! The image buffer: 8-bit RGB, rows of interleaved pixels (HWC).

use crate::error::{AugmentError, Result};

/// An 8-bit RGB image stored row-major as `height` rows of `width` interleaved `[r, g, b]`
/// pixels (the layout of a PIL `RGB` image and of `numpy.asarray(img)`, shape `(H, W, 3)`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RgbImage {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl RgbImage {
    /// A black image. Either dimension may be zero (an empty image).
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            data: vec![0; width * height * 3],
        }
    }

    /// An image filled with one colour.
    pub fn filled(width: usize, height: usize, rgb: [u8; 3]) -> Self {
        let mut data = Vec::with_capacity(width * height * 3);
        for _ in 0..width * height {
            data.extend_from_slice(&rgb);
        }
        Self {
            width,
            height,
            data,
        }
    }

    /// Wraps an HWC buffer; its length must be `width * height * 3`.
    pub fn from_raw(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        let want = width
            .checked_mul(height)
            .and_then(|v| v.checked_mul(3))
            .ok_or_else(|| AugmentError::InvalidImage(format!("{width}x{height} overflows")))?;
        if data.len() != want {
            return Err(AugmentError::InvalidImage(format!(
                "buffer of {} bytes for a {width}x{height} RGB image (needs {want})",
                data.len()
            )));
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// Builds an image from a function of `(x, y)`.
    pub fn from_fn(
        width: usize,
        height: usize,
        mut f: impl FnMut(usize, usize) -> [u8; 3],
    ) -> Self {
        let mut data = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                data.extend_from_slice(&f(x, y));
            }
        }
        Self {
            width,
            height,
            data,
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// `(height, width)`.
    pub fn hw(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    /// True when the image has no pixel.
    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// The HWC bytes.
    pub fn as_raw(&self) -> &[u8] {
        &self.data
    }

    /// The HWC bytes, mutable.
    pub fn as_raw_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// Consumes the image, returning its HWC bytes.
    pub fn into_raw(self) -> Vec<u8> {
        self.data
    }

    /// One row (`width * 3` bytes).
    pub fn row(&self, y: usize) -> &[u8] {
        let s = self.width * 3;
        &self.data[y * s..(y + 1) * s]
    }

    /// The pixel at column `x`, row `y`, or `None` outside the image.
    pub fn get(&self, x: usize, y: usize) -> Option<[u8; 3]> {
        (x < self.width && y < self.height).then(|| {
            let i = (y * self.width + x) * 3;
            [self.data[i], self.data[i + 1], self.data[i + 2]]
        })
    }

    /// Sets the pixel at `(x, y)`; does nothing outside the image.
    pub fn put(&mut self, x: usize, y: usize, rgb: [u8; 3]) {
        if x < self.width && y < self.height {
            let i = (y * self.width + x) * 3;
            self.data[i..i + 3].copy_from_slice(&rgb);
        }
    }
}

impl From<image::RgbImage> for RgbImage {
    fn from(img: image::RgbImage) -> Self {
        let (w, h) = img.dimensions();
        Self {
            width: w as usize,
            height: h as usize,
            data: img.into_raw(),
        }
    }
}

impl TryFrom<RgbImage> for image::RgbImage {
    type Error = AugmentError;

    fn try_from(img: RgbImage) -> Result<Self> {
        let (w, h) = (img.width, img.height);
        let too_big = || AugmentError::InvalidImage(format!("{w}x{h} is too large"));
        let w32 = u32::try_from(w).map_err(|_| too_big())?;
        let h32 = u32::try_from(h).map_err(|_| too_big())?;
        image::RgbImage::from_raw(w32, h32, img.data).ok_or_else(too_big)
    }
}
