//! Multi-band (multispectral) images: N planes of `f32` samples, read from (Geo)TIFF.
//!
//! An RGB photo has three 8-bit channels and Pillow's semantics ([`crate::RgbImage`]); a
//! Sentinel-2 tile has 13 bands of 16-bit reflectance, a SAR or index product float samples.
//! [`BandImage`] holds any of them as `bands` planes of `f32` (CHW, the layout of a tensor), in
//! the units torchvision's `ToTensor` / `convert_image_dtype` give: integer samples divided by
//! their type's maximum (`u8 / 255`, `u16 / 65535`, all 16 bits kept), float samples as stored.
//!
//! ```
//! use ssl_augment::bands::BandImage;
//! let img = BandImage::from_fn(13, 8, 6, |b, x, y| (b * 100 + y * 8 + x) as f32);
//! assert_eq!((img.bands(), img.height(), img.width()), (13, 6, 8));
//! assert_eq!(img.plane(2)[8 * 1 + 3], 211.0);
//! ```

use std::path::Path;

use crate::error::{AugmentError, Result};
use crate::folder::{MAX_IMAGE_PIXELS, decode_image};
use crate::image::RgbImage;

/// The most bands a [`BandImage`] may have.
pub const MAX_BANDS: usize = 32;

/// The most samples (pixels x bands) [`decode_bands`] decodes: twice Pillow's
/// `MAX_IMAGE_PIXELS`, 1.43 GB as `f32` (a 13-band image of up to 5 250 x 5 250 pixels). A
/// header announcing more is refused before anything is allocated.
pub const MAX_BAND_SAMPLES: usize = MAX_IMAGE_PIXELS * 2;

/// An image of `bands` planes of `f32` samples, stored plane after plane (CHW).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BandImage {
    bands: usize,
    width: usize,
    height: usize,
    data: Vec<f32>,
}

fn check_bands(bands: usize) -> Result<()> {
    if bands == 0 || bands > MAX_BANDS {
        return Err(AugmentError::InvalidImage(format!(
            "{bands} bands (1 to {MAX_BANDS} are supported)"
        )));
    }
    Ok(())
}

impl BandImage {
    /// An image of zeros; errors on a band count outside `1..=32`.
    pub fn new(bands: usize, width: usize, height: usize) -> Result<Self> {
        Self::from_planes(bands, width, height, vec![0.0; bands * width * height])
    }

    /// Wraps CHW samples: `data.len()` must be `bands * height * width`.
    pub fn from_planes(bands: usize, width: usize, height: usize, data: Vec<f32>) -> Result<Self> {
        check_bands(bands)?;
        let want = width
            .checked_mul(height)
            .and_then(|v| v.checked_mul(bands))
            .ok_or_else(|| AugmentError::InvalidImage(format!("{width}x{height} overflows")))?;
        if data.len() != want {
            return Err(AugmentError::InvalidImage(format!(
                "{} samples for a {bands}-band {width}x{height} image (needs {want})",
                data.len()
            )));
        }
        Ok(Self {
            bands,
            width,
            height,
            data,
        })
    }

    /// Builds an image from a function of `(band, x, y)`.
    ///
    /// # Panics
    /// On a band count outside `1..=32`.
    pub fn from_fn(
        bands: usize,
        width: usize,
        height: usize,
        mut f: impl FnMut(usize, usize, usize) -> f32,
    ) -> Self {
        let mut data = Vec::with_capacity(bands * width * height);
        for b in 0..bands {
            for y in 0..height {
                for x in 0..width {
                    data.push(f(b, x, y));
                }
            }
        }
        Self::from_planes(bands, width, height, data).expect("BandImage::from_fn: band count")
    }

    /// The three planes of an RGB image, `v / 255` (torchvision's `ToTensor`).
    pub fn from_rgb(img: &RgbImage) -> Self {
        let plane = img.width() * img.height();
        let mut data = vec![0f32; 3 * plane];
        for (i, p) in img.as_raw().chunks_exact(3).enumerate() {
            for (c, &v) in p.iter().enumerate() {
                data[c * plane + i] = f32::from(v) / 255.0;
            }
        }
        Self {
            bands: 3,
            width: img.width(),
            height: img.height(),
            data,
        }
    }

    /// Number of bands.
    pub fn bands(&self) -> usize {
        self.bands
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

    /// Band `b` (`height * width` samples, row-major).
    pub fn plane(&self, b: usize) -> &[f32] {
        let n = self.width * self.height;
        &self.data[b * n..(b + 1) * n]
    }

    /// Band `b`, mutable.
    pub fn plane_mut(&mut self, b: usize) -> &mut [f32] {
        let n = self.width * self.height;
        &mut self.data[b * n..(b + 1) * n]
    }

    /// Every band, in order.
    pub fn planes(&self) -> impl Iterator<Item = &[f32]> {
        self.data.chunks_exact((self.width * self.height).max(1))
    }

    /// Every band, mutable.
    pub fn planes_mut(&mut self) -> impl Iterator<Item = &mut [f32]> {
        self.data
            .chunks_exact_mut((self.width * self.height).max(1))
    }

    /// The CHW samples.
    pub fn as_raw(&self) -> &[f32] {
        &self.data
    }

    /// Consumes the image, returning its CHW samples.
    pub fn into_raw(self) -> Vec<f32> {
        self.data
    }

    /// The sample of band `b` at column `x`, row `y`, or `None` outside the image.
    pub fn get(&self, b: usize, x: usize, y: usize) -> Option<f32> {
        (b < self.bands && x < self.width && y < self.height)
            .then(|| self.data[(b * self.height + y) * self.width + x])
    }
}

fn decode_err(path: &Path, message: impl Into<String>) -> AugmentError {
    AugmentError::Decode {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// True for the TIFF and BigTIFF signatures (`II*\0`, `MM\0*`, `II+\0`, `MM\0+`).
fn is_tiff(bytes: &[u8]) -> bool {
    matches!(
        bytes.get(..4),
        Some([0x49, 0x49, 0x2A | 0x2B, 0x00] | [0x4D, 0x4D, 0x00, 0x2A | 0x2B])
    )
}

/// What a file holds, read from its header only ([`probe_image`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Samples per pixel as [`decode_bands`] reads them (every sample of a TIFF pixel; 3 for
    /// the other formats, which are decoded as RGB).
    pub bands: usize,
    /// Bits per sample (8 for JPEG, PNG, BMP and WebP as decoded here).
    pub bits: u16,
    /// True for floating-point samples.
    pub float: bool,
    /// True for a TIFF.
    pub tiff: bool,
}

impl ImageInfo {
    /// True when the 8-bit RGB path ([`crate::ImageFolder`] as torchvision reads it) keeps
    /// every band of the file: any JPEG, PNG, BMP or WebP, and 8-bit gray or RGB TIFFs. TIFFs
    /// with other band counts (an 8-bit RGB + near-infrared tile, say) or 16-bit / float
    /// samples are band images.
    pub fn is_8bit_rgb(&self) -> bool {
        !self.tiff || (self.bits == 8 && !self.float && matches!(self.bands, 1 | 3))
    }
}

/// The band count and sample type of an image file, from its header (no pixel is decoded).
/// TIFFs report their samples per pixel; other formats are read as RGB (3 bands, 8 bits).
pub fn probe_image(path: impl AsRef<Path>) -> Result<ImageInfo> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| AugmentError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !is_tiff(&bytes) {
        image::guess_format(&bytes)
            .map_err(|_| decode_err(path, "not an image in a supported format"))?;
        return Ok(ImageInfo {
            bands: 3,
            bits: 8,
            float: false,
            tiff: false,
        });
    }
    let mut decoder = tiff_decoder(&bytes, path)?;
    let info = tiff_layout(&mut decoder, path)?;
    if info.color_like {
        // palette, YCbCr, CMYK: decoded as RGB
        return Ok(ImageInfo {
            bands: 3,
            bits: 8,
            float: false,
            tiff: true,
        });
    }
    Ok(ImageInfo {
        bands: info.bands,
        bits: info.bits,
        float: info.format == tiff::tags::SampleFormat::IEEEFP,
        tiff: true,
    })
}

/// Decodes an image file's bytes as bands.
///
/// TIFF and GeoTIFF (strips or tiles, chunky or planar, uncompressed, LZW, Deflate or PackBits;
/// the GeoTIFF tags are ignored): every sample of a pixel is a band (extra samples, alpha
/// included, are bands too), 1 to 32 of them, stored as 8- or 16-bit unsigned integers or 32- or
/// 64-bit floats. Integers are divided by their maximum (255 or 65535, as torchvision's
/// `convert_image_dtype`: all 16 bits are kept); floats are kept as they are and must be finite
/// (a NaN or infinite sample is an error naming the band and pixel). Palette, YCbCr and CMYK
/// TIFFs are read as RGB. Other formats (JPEG, PNG, BMP, WebP) are decoded as
/// [`decode_image`] decodes them (Pillow's pixels), then divided by 255: 3 bands.
///
/// `path` only names the file in errors.
pub fn decode_bands(bytes: &[u8], path: &Path) -> Result<BandImage> {
    if !is_tiff(bytes) {
        return Ok(BandImage::from_rgb(&decode_image(bytes, path)?));
    }
    let mut decoder = tiff_decoder(bytes, path)?;
    let layout = tiff_layout(&mut decoder, path)?;
    if layout.color_like {
        return Ok(BandImage::from_rgb(&decode_image(bytes, path)?));
    }
    let err = |e: tiff::TiffError| decode_err(path, e.to_string());
    let mut result = tiff::decoder::DecodingResult::U8(Vec::new());
    let buffer = decoder.read_image_to_buffer(&mut result).map_err(err)?;
    let planar = buffer.planes > 1;
    let (w, h, n) = (layout.width, layout.height, layout.bands);
    let mut samples = to_f32(result, path)?;
    if samples.len() < w * h * n {
        return Err(decode_err(
            path,
            format!("{} samples decoded for {n} bands of {w}x{h}", samples.len()),
        ));
    }
    let data = if planar || n == 1 {
        samples.truncate(w * h * n);
        samples
    } else {
        deinterleave(&samples, n, w * h)
    };
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        let (b, p) = (i / (w * h), i % (w * h));
        return Err(decode_err(
            path,
            format!(
                "sample {} in band {b} at x {}, y {} (a NaN or infinite sample; fill or mask \
                 missing data before training)",
                data[i],
                p % w,
                p / w
            ),
        ));
    }
    BandImage::from_planes(n, w, h, data).map_err(|e| decode_err(path, e.to_string()))
}

/// Reads and decodes an image file as bands ([`decode_bands`]); errors name the file.
pub fn open_bands(path: impl AsRef<Path>) -> Result<BandImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| AugmentError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_bands(&bytes, path)
}

fn tiff_decoder<'a>(
    bytes: &'a [u8],
    path: &Path,
) -> Result<tiff::decoder::Decoder<std::io::Cursor<&'a [u8]>>> {
    let mut limits = tiff::decoder::Limits::default();
    // the largest image within the sample limit, as f32 (f64 files get half as many samples)
    limits.decoding_buffer_size = MAX_BAND_SAMPLES * 4;
    tiff::decoder::Decoder::new(std::io::Cursor::new(bytes))
        .map(|d| d.with_limits(limits))
        .map_err(|e| decode_err(path, e.to_string()))
}

struct TiffLayout {
    width: usize,
    height: usize,
    bands: usize,
    bits: u16,
    format: tiff::tags::SampleFormat,
    /// Palette, YCbCr, CMYK or Lab: decoded as RGB.
    color_like: bool,
}

fn tiff_layout<R: std::io::Read + std::io::Seek>(
    decoder: &mut tiff::decoder::Decoder<R>,
    path: &Path,
) -> Result<TiffLayout> {
    use tiff::ColorType as C;
    let err = |e: tiff::TiffError| decode_err(path, e.to_string());
    let (w, h) = decoder.dimensions().map_err(err)?;
    let (w, h) = (w as usize, h as usize);
    if w.saturating_mul(h) > MAX_IMAGE_PIXELS {
        return Err(decode_err(
            path,
            format!("the header announces {w} x {h} pixels, more than {MAX_IMAGE_PIXELS}"),
        ));
    }
    if w == 0 || h == 0 {
        return Err(decode_err(path, "image has no pixel"));
    }
    let color = decoder.colortype().map_err(err)?;
    let color_like = matches!(
        color,
        C::Palette(_) | C::YCbCr(_) | C::CMYK(_) | C::CMYKA(_) | C::Lab(_)
    );
    let format = decoder
        .find_tag_unsigned_vec::<u16>(tiff::tags::Tag::SampleFormat)
        .map_err(err)?
        .and_then(|v| v.first().copied())
        .map_or(
            tiff::tags::SampleFormat::Uint,
            tiff::tags::SampleFormat::from_u16_exhaustive,
        );
    let bands = usize::from(color.num_samples());
    if bands > MAX_BANDS {
        return Err(decode_err(
            path,
            format!("{bands} bands, more than the {MAX_BANDS} supported"),
        ));
    }
    let samples = w.saturating_mul(h).saturating_mul(bands);
    if samples > MAX_BAND_SAMPLES {
        return Err(decode_err(
            path,
            format!(
                "the header announces {bands} bands of {w} x {h} = {samples} samples, more than \
                 the limit of {MAX_BAND_SAMPLES} (a damaged header, or an image to tile first)"
            ),
        ));
    }
    Ok(TiffLayout {
        width: w,
        height: h,
        bands,
        bits: u16::from(color.bit_depth()),
        format,
        color_like,
    })
}

fn to_f32(result: tiff::decoder::DecodingResult, path: &Path) -> Result<Vec<f32>> {
    use tiff::decoder::DecodingResult as D;
    Ok(match result {
        D::U8(v) => v.into_iter().map(|s| f32::from(s) / 255.0).collect(),
        D::U16(v) => v.into_iter().map(|s| f32::from(s) / 65535.0).collect(),
        D::F32(v) => v,
        D::F64(v) => v.into_iter().map(|s| s as f32).collect(),
        other => {
            let kind = match other {
                D::U32(_) => "32-bit unsigned integer",
                D::U64(_) => "64-bit unsigned integer",
                D::I8(_) => "8-bit signed integer",
                D::I16(_) => "16-bit signed integer",
                D::I32(_) => "32-bit signed integer",
                D::I64(_) => "64-bit signed integer",
                _ => "16-bit float",
            };
            return Err(decode_err(
                path,
                format!(
                    "{kind} samples are not supported (8- or 16-bit unsigned integers and 32- or \
                     64-bit floats are)"
                ),
            ));
        }
    })
}

fn deinterleave(samples: &[f32], bands: usize, pixels: usize) -> Vec<f32> {
    let mut out = vec![0f32; bands * pixels];
    for (p, px) in samples.chunks_exact(bands).take(pixels).enumerate() {
        for (b, &v) in px.iter().enumerate() {
            out[b * pixels + p] = v;
        }
    }
    out
}

/// The sample type [`encode_tiff`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TiffSample {
    /// 8-bit unsigned: `round(clamp(v, 0, 1) * 255)`.
    U8,
    /// 16-bit unsigned: `round(clamp(v, 0, 1) * 65535)`.
    U16,
    /// 32-bit float, as stored.
    F32,
}

/// `img` as an uncompressed baseline TIFF (little-endian, one strip, or one strip per band
/// when `planar`), what [`decode_bands`] reads back: integer samples from values in `[0, 1]`,
/// float samples unchanged. Photometric `MinIsBlack` with the bands after the first as
/// unspecified extra samples, the layout GDAL writes for multispectral rasters.
pub fn encode_tiff(img: &BandImage, sample: TiffSample, planar: bool) -> Vec<u8> {
    let (w, h, n) = (img.width(), img.height(), img.bands());
    let bytes_per = match sample {
        TiffSample::U8 => 1,
        TiffSample::U16 => 2,
        TiffSample::F32 => 4,
    };
    let put = |out: &mut Vec<u8>, v: f32| match sample {
        TiffSample::U8 => out.push((v.clamp(0.0, 1.0) * 255.0).round() as u8),
        TiffSample::U16 => {
            out.extend_from_slice(&((v.clamp(0.0, 1.0) * 65535.0).round() as u16).to_le_bytes())
        }
        TiffSample::F32 => out.extend_from_slice(&v.to_le_bytes()),
    };
    let mut pixels = Vec::with_capacity(w * h * n * bytes_per);
    if planar {
        img.as_raw().iter().for_each(|&v| put(&mut pixels, v));
    } else {
        for p in 0..w * h {
            for plane in img.planes() {
                put(&mut pixels, plane[p]);
            }
        }
    }
    let strips: Vec<(usize, usize)> = if planar {
        let len = w * h * bytes_per;
        (0..n).map(|b| (8 + b * len, len)).collect()
    } else {
        vec![(8, pixels.len())]
    };
    // tag values that do not fit in 4 bytes follow the pixels; then the directory
    let mut extra: Vec<u8> = Vec::new();
    let extra_at = 8 + pixels.len();
    let mut entries: Vec<[u8; 12]> = Vec::new();
    let mut entry = |tag: u16, typ: u16, values: &[u32]| {
        let size = if typ == 3 { 2 } else { 4 };
        let mut packed = Vec::new();
        for &v in values {
            if typ == 3 {
                packed.extend_from_slice(&(v as u16).to_le_bytes());
            } else {
                packed.extend_from_slice(&v.to_le_bytes());
            }
        }
        let value = if values.len() * size <= 4 {
            packed.resize(4, 0);
            packed
        } else {
            let at = (extra_at + extra.len()) as u32;
            extra.extend_from_slice(&packed);
            if extra.len() % 2 == 1 {
                extra.push(0);
            }
            at.to_le_bytes().to_vec()
        };
        let mut e = [0u8; 12];
        e[0..2].copy_from_slice(&tag.to_le_bytes());
        e[2..4].copy_from_slice(&typ.to_le_bytes());
        e[4..8].copy_from_slice(&(values.len() as u32).to_le_bytes());
        e[8..12].copy_from_slice(&value);
        entries.push(e);
    };
    let (short, long) = (3u16, 4u16);
    let bits = (bytes_per * 8) as u32;
    let format = if sample == TiffSample::F32 { 3 } else { 1 };
    entry(256, long, &[w as u32]);
    entry(257, long, &[h as u32]);
    entry(258, short, &vec![bits; n]);
    entry(259, short, &[1]);
    entry(262, short, &[1]);
    entry(
        273,
        long,
        &strips.iter().map(|s| s.0 as u32).collect::<Vec<_>>(),
    );
    entry(277, short, &[n as u32]);
    entry(278, long, &[h as u32]);
    entry(
        279,
        long,
        &strips.iter().map(|s| s.1 as u32).collect::<Vec<_>>(),
    );
    entry(284, short, &[if planar { 2 } else { 1 }]);
    if n > 1 {
        entry(338, short, &vec![0; n - 1]);
    }
    entry(339, short, &vec![format; n]);
    let mut ifd_at = extra_at + extra.len();
    if ifd_at % 2 == 1 {
        extra.push(0);
        ifd_at += 1;
    }
    let mut out = Vec::with_capacity(ifd_at + 6 + entries.len() * 12);
    out.extend_from_slice(b"II*\0");
    out.extend_from_slice(&(ifd_at as u32).to_le_bytes());
    out.extend_from_slice(&pixels);
    out.extend_from_slice(&extra);
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for e in &entries {
        out.extend_from_slice(e);
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    out
}

/// Per-band mean and standard deviation, what [`crate::band_transforms::BandNormalize`] takes.
#[derive(Clone, Debug, PartialEq)]
pub struct BandStats {
    /// Mean of every band.
    pub mean: Vec<f32>,
    /// Standard deviation of every band (population: divided by the number of samples).
    pub std: Vec<f32>,
}

/// Running sums of [`BandStats`] over images of one band count, merged in any order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BandAccumulator {
    count: f64,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

impl BandAccumulator {
    /// Adds every pixel of `img`; errors when its band count differs from earlier images'.
    pub fn add(&mut self, img: &BandImage) -> Result<()> {
        let mut one = Self::default();
        let n = (img.width() * img.height()) as f64;
        for plane in img.planes() {
            let mean = plane.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let m2 = plane.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum();
            one.mean.push(mean);
            one.m2.push(m2);
        }
        one.count = n;
        self.merge(&one)
    }

    /// Merges the sums of another set of images (Chan et al.'s parallel variance update).
    pub fn merge(&mut self, other: &Self) -> Result<()> {
        if other.count == 0.0 {
            return Ok(());
        }
        if self.count == 0.0 {
            *self = other.clone();
            return Ok(());
        }
        if self.mean.len() != other.mean.len() {
            return Err(AugmentError::InvalidImage(format!(
                "{} bands, but the images before have {}",
                other.mean.len(),
                self.mean.len()
            )));
        }
        let total = self.count + other.count;
        for b in 0..self.mean.len() {
            let delta = other.mean[b] - self.mean[b];
            self.mean[b] += delta * other.count / total;
            self.m2[b] += other.m2[b] + delta * delta * self.count * other.count / total;
        }
        self.count = total;
        Ok(())
    }

    /// The statistics so far; `None` before any image.
    pub fn stats(&self) -> Option<BandStats> {
        (self.count > 0.0).then(|| BandStats {
            mean: self.mean.iter().map(|&m| m as f32).collect(),
            std: self
                .m2
                .iter()
                .map(|&m| (m / self.count).sqrt() as f32)
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_tiffs_decode_to_the_same_samples() {
        let img = BandImage::from_fn(13, 5, 3, |b, x, y| ((b * 7 + x * 3 + y) % 11) as f32 / 10.0);
        for planar in [false, true] {
            let f =
                decode_bands(&encode_tiff(&img, TiffSample::F32, planar), Path::new("t")).unwrap();
            assert_eq!(f, img, "f32, planar {planar}");
            let u =
                decode_bands(&encode_tiff(&img, TiffSample::U16, planar), Path::new("t")).unwrap();
            assert_eq!((u.bands(), u.height(), u.width()), (13, 3, 5));
            for (a, b) in u.as_raw().iter().zip(img.as_raw()) {
                assert!((a - b).abs() <= 0.5 / 65535.0 + 1e-7);
            }
        }
        let one = BandImage::from_fn(1, 2, 2, |_, x, y| (x + y) as f32 / 2.0);
        let back = decode_bands(&encode_tiff(&one, TiffSample::U8, false), Path::new("t")).unwrap();
        assert_eq!(back.as_raw(), &[0.0, 128.0 / 255.0, 128.0 / 255.0, 1.0]);
    }

    #[test]
    fn band_count_is_checked() {
        assert!(BandImage::new(0, 2, 2).is_err());
        assert!(BandImage::new(33, 2, 2).is_err());
        assert!(BandImage::from_planes(2, 2, 2, vec![0.0; 7]).is_err());
        assert!(BandImage::new(32, 2, 2).is_ok());
    }

    #[test]
    fn rgb_planes_are_divided_by_255() {
        let rgb = RgbImage::from_fn(2, 1, |x, _| [x as u8 * 255, 51, 0]);
        let img = BandImage::from_rgb(&rgb);
        assert_eq!(img.as_raw(), &[0.0, 1.0, 0.2, 0.2, 0.0, 0.0]);
    }

    #[test]
    fn accumulated_stats_equal_the_two_pass_ones() {
        let a = BandImage::from_fn(2, 3, 2, |b, x, y| (b * 7 + x * x + y) as f32);
        let b = BandImage::from_fn(2, 5, 1, |b, x, _| (b + 3 * x) as f32 * 0.5);
        let mut acc = BandAccumulator::default();
        acc.add(&a).unwrap();
        acc.add(&b).unwrap();
        let stats = acc.stats().unwrap();
        for band in 0..2 {
            let all: Vec<f64> = a
                .plane(band)
                .iter()
                .chain(b.plane(band))
                .map(|&v| f64::from(v))
                .collect();
            let mean = all.iter().sum::<f64>() / all.len() as f64;
            let var = all.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / all.len() as f64;
            assert!((f64::from(stats.mean[band]) - mean).abs() < 1e-6);
            assert!((f64::from(stats.std[band]) - var.sqrt()).abs() < 1e-6);
        }
        let three = BandImage::new(3, 1, 1).unwrap();
        assert!(acc.add(&three).is_err());
    }
}
