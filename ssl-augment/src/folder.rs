//! Decoding image files and torchvision's `ImageFolder`.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use crate::bands::{BandImage, open_bands};
use crate::error::{AugmentError, Result, invalid};
use crate::image::RgbImage;

/// The extensions [`ImageFolder`] looks for by default (compared case-insensitively):
/// torchvision's `IMG_EXTENSIONS` that the decoders here read.
pub const IMG_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "tif", "tiff", "bmp", "webp"];

fn decode_err(path: &Path, message: impl Into<String>) -> AugmentError {
    AugmentError::Decode {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// True when a JPEG stream ends with its end-of-image marker after the first scan.
///
/// libjpeg completes a truncated stream with gray (it inserts a fake end marker and only warns);
/// Pillow refuses such a file ("image file is truncated"). Inside entropy-coded data `0xFF` is always followed by `0x00` or a
/// restart marker, so an `FF D9` after the first start-of-scan is the end-of-image marker.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let Some(sos) = bytes.windows(2).position(|w| w == [0xFF, 0xDA]) else {
        return false;
    };
    bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Decodes an image file's bytes to RGB, as torchvision's loader (`Image.open(f).convert("RGB")`)
/// does, with the same pixels: JPEG through libjpeg-turbo's decoder with Pillow's settings
/// (bit-exact), PNG, TIFF, BMP and WebP through the `image` crate. The format is read from the
/// content, not the extension; gray images are replicated to
/// three channels; an alpha channel is dropped (Pillow drops it, it does not composite); palette
/// images are expanded; 16-bit samples keep their high byte (Pillow's unpacking of 16-bit RGB;
/// for 16-bit gray, where Pillow clips values above 255, the high byte is kept too so the image
/// is not saturated); float images are clamped to `[0, 1]` and scaled. EXIF orientation is not
/// applied (neither Pillow's `open` nor torchvision does).
///
/// `path` only names the file in errors. Empty, truncated (JPEG without its end marker) and
/// undecodable data are errors.
///
/// A header announcing more than [`MAX_IMAGE_PIXELS`] pixels is refused before anything is
/// decoded (Pillow's decompression-bomb error).
pub fn decode_image(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(decode_err(path, "empty file"));
    }
    let format = image::guess_format(bytes)
        .map_err(|_| decode_err(path, "not an image in a supported format"))?;
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(decode_err(path, "truncated JPEG (no end-of-image marker)"));
    }
    if format == image::ImageFormat::Jpeg {
        return decode_jpeg_libjpeg(bytes).map_err(|message| decode_err(path, message));
    }
    use image::ImageDecoder;
    let mut limits = image::Limits::default();
    // the largest buffer a picture within the pixel limit needs: 4 channels of 16 bits
    limits.max_alloc = Some(MAX_IMAGE_PIXELS as u64 * 8);
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    reader.limits(limits.clone());
    let err = |e: image::ImageError| decode_err(path, e.to_string());
    // one header parse: the size is checked on the decoder that then decodes
    let mut decoder = reader.into_decoder().map_err(err)?;
    let (w, h) = decoder.dimensions();
    check_pixels(w as usize, h as usize).map_err(|message| decode_err(path, message))?;
    // as `ImageReader::decode`: the pixels count against the limit, the decoder gets the rest
    limits.reserve(decoder.total_bytes()).map_err(err)?;
    decoder.set_limits(limits).map_err(err)?;
    let img = image::DynamicImage::from_decoder(decoder).map_err(err)?;
    if img.width() == 0 || img.height() == 0 {
        return Err(decode_err(path, "image has no pixel"));
    }
    Ok(to_rgb8(img))
}

/// The most pixels a decoded image may have: twice Pillow's `Image.MAX_IMAGE_PIXELS`
/// (89,478,485), the size above which Pillow's `open` raises `DecompressionBombError` (it only
/// warns between once and twice). About 537 MB of RGB.
pub const MAX_IMAGE_PIXELS: usize = 2 * 89_478_485;

fn check_pixels(w: usize, h: usize) -> std::result::Result<(), String> {
    let pixels = w.saturating_mul(h);
    if pixels > MAX_IMAGE_PIXELS {
        return Err(format!(
            "the header announces {w} x {h} = {pixels} pixels, more than the limit of \
             {MAX_IMAGE_PIXELS} (a decompression bomb, or a damaged header)"
        ));
    }
    Ok(())
}

/// Decodes a JPEG with libjpeg-turbo's decoder (as built by MozJPEG) and its defaults, the ones
/// Pillow uses: the accurate integer IDCT (`JDCT_ISLOW`), fancy (triangle) chroma upsampling and
/// libjpeg's YCbCr -> RGB tables. The pixels are those of `Image.open(f).convert("RGB")` bit for
/// bit. CMYK/YCCK images are read as CMYK and converted as Pillow converts them.
fn decode_jpeg_libjpeg(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    use mozjpeg::ColorSpace;
    let run = || -> std::io::Result<RgbImage> {
        let d = mozjpeg::Decompress::new_mem(bytes)?;
        check_pixels(d.width(), d.height()).map_err(std::io::Error::other)?;
        if matches!(d.color_space(), ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK) {
            let mut started = d.to_colorspace(ColorSpace::JCS_CMYK)?;
            let (w, h) = (started.width(), started.height());
            let cmyk: Vec<u8> = started.read_scanlines()?;
            let rgb = cmyk
                .chunks_exact(4)
                .flat_map(cmyk_inverted_to_rgb)
                .collect();
            return RgbImage::from_raw(w, h, rgb).map_err(|e| std::io::Error::other(e.to_string()));
        }
        let mut started = d.rgb()?;
        let (w, h) = (started.width(), started.height());
        if w == 0 || h == 0 {
            return Err(std::io::Error::other("image has no pixel"));
        }
        let data: Vec<u8> = started.read_scanlines()?;
        RgbImage::from_raw(w, h, data).map_err(|e| std::io::Error::other(e.to_string()))
    };
    // libjpeg reports fatal errors by unwinding (with a String payload) out of the C code.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(Ok(img)) => Ok(img),
        Ok(Err(e)) => Err(e.to_string()),
        Err(payload) => Err(payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "libjpeg error".into())),
    }
}

/// Pillow's reading of a CMYK JPEG (raw mode `CMYK;I`: Adobe's inverted values) followed by its
/// `cmyk2rgb`: `nk = 255 - k`, `out = nk - muldiv255(c, nk)`.
fn cmyk_inverted_to_rgb(p: &[u8]) -> [u8; 3] {
    let muldiv255 = |a: u32, b: u32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let [c, m, y, k] = [255 - p[0], 255 - p[1], 255 - p[2], 255 - p[3]].map(u32::from);
    let nk = 255 - k;
    [c, m, y].map(|v| (nk - muldiv255(v, nk)) as u8)
}

fn high_byte(v: u16) -> u8 {
    (v >> 8) as u8
}

fn to_rgb8(img: image::DynamicImage) -> RgbImage {
    use image::DynamicImage as D;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let from = |data: Vec<u8>| RgbImage::from_raw(w, h, data).expect("decoded size");
    match img {
        D::ImageRgb8(b) => RgbImage::from(b),
        D::ImageLuma16(b) => from(
            b.into_raw()
                .iter()
                .flat_map(|&v| [high_byte(v); 3])
                .collect(),
        ),
        D::ImageLumaA16(b) => from(
            b.into_raw()
                .chunks_exact(2)
                .flat_map(|p| [high_byte(p[0]); 3])
                .collect(),
        ),
        D::ImageRgb16(b) => from(b.into_raw().iter().map(|&v| high_byte(v)).collect()),
        D::ImageRgba16(b) => from(
            b.into_raw()
                .chunks_exact(4)
                .flat_map(|p| [high_byte(p[0]), high_byte(p[1]), high_byte(p[2])])
                .collect(),
        ),
        other => RgbImage::from(other.into_rgb8()),
    }
}

/// Reads and decodes an image file ([`decode_image`]); errors name the file.
pub fn open_image(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| AugmentError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_image(&bytes, path)
}

/// A labelled collection of images, what a [`crate::Loader`] draws from. `I` is the decoded
/// image type: [`RgbImage`] (the default) or [`BandImage`].
pub trait Dataset<I = RgbImage>: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;

    /// True without samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The decoded image and label of sample `index`.
    fn get(&self, index: usize) -> Result<(I, usize)>;

    /// When true, a loader drops samples whose [`Dataset::get`] fails (and counts them) instead
    /// of failing the batch.
    fn skip_corrupt(&self) -> bool {
        false
    }
}

/// Options of [`ImageFolder::new`]; the defaults are torchvision's.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageFolderOptions {
    extensions: Vec<String>,
    allow_empty: bool,
    skip_corrupt: bool,
    verify: bool,
    bands: Option<usize>,
}

impl Default for ImageFolderOptions {
    fn default() -> Self {
        Self {
            extensions: IMG_EXTENSIONS.iter().map(|s| s.to_string()).collect(),
            allow_empty: false,
            skip_corrupt: false,
            verify: false,
            bands: None,
        }
    }
}

impl ImageFolderOptions {
    /// The file extensions to collect (without the dot, case-insensitive). Default
    /// [`IMG_EXTENSIONS`].
    pub fn with_extensions<S: AsRef<str>>(mut self, exts: &[S]) -> Self {
        self.extensions = exts
            .iter()
            .map(|e| e.as_ref().trim_start_matches('.').to_ascii_lowercase())
            .collect();
        self
    }

    /// Accept class folders without any image (torchvision's `allow_empty`, default false:
    /// such a folder is an error).
    pub fn with_allow_empty(mut self, yes: bool) -> Self {
        self.allow_empty = yes;
        self
    }

    /// Skip corrupt or unreadable images instead of failing (default false: the error names the
    /// file). With [`ImageFolderOptions::with_verify`] they are dropped when the folder is
    /// scanned and listed by [`ImageFolder::skipped`]; otherwise a [`crate::Loader`] drops them
    /// from their batch when they fail to load and counts them ([`crate::Loader::skipped`]).
    pub fn with_skip_corrupt(mut self, yes: bool) -> Self {
        self.skip_corrupt = yes;
        self
    }

    /// Decode every image when the folder is scanned (in parallel), so that a corrupt file is
    /// found at once (default false: files are only read when loaded).
    pub fn with_verify(mut self, yes: bool) -> Self {
        self.verify = yes;
        self
    }

    /// Read the images as bands ([`open_bands`]), each with exactly `bands` of them: a file
    /// with another count is an error naming it (when loaded, or when scanned with
    /// [`ImageFolderOptions::with_verify`]). Default `None`: RGB images.
    pub fn with_bands(mut self, bands: Option<usize>) -> Self {
        self.bands = bands;
        self
    }

    /// The band count of [`ImageFolderOptions::with_bands`].
    pub fn bands(&self) -> Option<usize> {
        self.bands
    }

    /// The extensions collected.
    pub fn extensions(&self) -> &[String] {
        &self.extensions
    }
}

/// torchvision `datasets.ImageFolder`: `root/<class>/**/<image>`.
///
/// Classes are the sub-directories of `root` sorted by name (Python's string order, which is
/// byte order of UTF-8); label `i` is the `i`-th class. Each class directory is walked
/// recursively following links, directories in sorted path order and files sorted by name, as
/// `sorted(os.walk(...))` + `sorted(fnames)` do; files whose extension is not collected are
/// ignored. A missing root, a root without class folders, and (unless allowed) a class folder
/// without images are errors.
#[derive(Debug)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    samples: Vec<(PathBuf, usize)>,
    skip_corrupt: bool,
    skipped: Vec<(PathBuf, String)>,
    bands: Option<usize>,
}

fn has_extension(name: &OsString, exts: &[String]) -> bool {
    let name = name.to_string_lossy().to_lowercase();
    exts.iter().any(|e| name.ends_with(&format!(".{e}")))
}

/// Collects `(dir, sorted file names)` for `dir` and its sub-directories (following links,
/// skipping directories already seen).
fn walk(
    dir: &Path,
    out: &mut Vec<(PathBuf, Vec<OsString>)>,
    seen: &mut HashSet<PathBuf>,
) -> Result<()> {
    let canon = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    if !seen.insert(canon) {
        return Ok(());
    }
    let rd = std::fs::read_dir(dir).map_err(|source| AugmentError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| AugmentError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        // `is_dir` follows links, as os.walk(followlinks=True).
        if path.is_dir() {
            dirs.push(path);
        } else {
            files.push(entry.file_name());
        }
    }
    files.sort();
    out.push((dir.to_path_buf(), files));
    for d in dirs {
        walk(&d, out, seen)?;
    }
    Ok(())
}

impl ImageFolder {
    /// Scans `root`; see the type's documentation.
    pub fn new(root: impl AsRef<Path>, options: &ImageFolderOptions) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(AugmentError::FolderNotFound(root));
        }
        if options.extensions.is_empty() {
            return Err(invalid("ImageFolder: no extension to look for"));
        }
        let rd = std::fs::read_dir(&root).map_err(|source| AugmentError::Io {
            path: root.clone(),
            source,
        })?;
        let mut class_dirs: Vec<OsString> = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|source| AugmentError::Io {
                path: root.clone(),
                source,
            })?;
            if entry.path().is_dir() {
                class_dirs.push(entry.file_name());
            }
        }
        class_dirs.sort();
        if class_dirs.is_empty() {
            return Err(AugmentError::NoClasses(root));
        }
        let mut samples = Vec::new();
        let mut empty = Vec::new();
        for (label, class) in class_dirs.iter().enumerate() {
            let mut dirs = Vec::new();
            walk(&root.join(class), &mut dirs, &mut HashSet::new())?;
            // sorted(os.walk(...)) orders the directories by their path string.
            dirs.sort_by(|a, b| a.0.as_os_str().cmp(b.0.as_os_str()));
            let before = samples.len();
            for (dir, files) in dirs {
                for f in files {
                    if has_extension(&f, &options.extensions) {
                        samples.push((dir.join(f), label));
                    }
                }
            }
            if samples.len() == before {
                empty.push(class.to_string_lossy().into_owned());
            }
        }
        if !empty.is_empty() && !options.allow_empty {
            return Err(AugmentError::EmptyClasses {
                root,
                classes: empty,
                extensions: options.extensions.join(", "),
            });
        }
        Self {
            root,
            classes: class_dirs
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect(),
            samples,
            skip_corrupt: false,
            skipped: Vec::new(),
            bands: None,
        }
        .with_options(options)
    }

    /// This listing with `options`' band count, corrupt-file policy and verification (decoding
    /// every image when `verify` is set); the listing itself (extensions, empty classes) and
    /// the images an earlier verification dropped stay as they are. For a caller that learns
    /// the band count from the listing's first image: scanning the folder again would list
    /// every file twice.
    pub fn with_options(mut self, options: &ImageFolderOptions) -> Result<Self> {
        self.skip_corrupt = options.skip_corrupt;
        self.bands = options.bands;
        if options.verify {
            self.verify_all()?;
        }
        Ok(self)
    }

    fn verify_all(&mut self) -> Result<()> {
        let results: Vec<Option<AugmentError>> = self
            .samples
            .par_iter()
            .map(|(p, _)| match self.bands {
                None => open_image(p).err(),
                Some(_) => self.open_bands_checked(p).err(),
            })
            .collect();
        if !self.skip_corrupt {
            if let Some(e) = results.into_iter().flatten().next() {
                return Err(e);
            }
            return Ok(());
        }
        let mut kept = Vec::with_capacity(self.samples.len());
        for (s, r) in std::mem::take(&mut self.samples).into_iter().zip(results) {
            match r {
                None => kept.push(s),
                Some(e) => self.skipped.push((s.0, e.to_string())),
            }
        }
        self.samples = kept;
        Ok(())
    }

    /// The dataset root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Class names, sorted; label `i` is `classes()[i]`.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The label of a class name (torchvision's `class_to_idx`).
    pub fn class_index(&self, name: &str) -> Option<usize> {
        self.classes.iter().position(|c| c == name)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True without images.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// `(path, label)` of every image, in torchvision's order.
    pub fn samples(&self) -> &[(PathBuf, usize)] {
        &self.samples
    }

    /// The label of every image (torchvision's `targets`).
    pub fn targets(&self) -> Vec<usize> {
        self.samples.iter().map(|s| s.1).collect()
    }

    /// Files dropped while verifying (with [`ImageFolderOptions::with_verify`] and
    /// [`ImageFolderOptions::with_skip_corrupt`]), with the reason.
    pub fn skipped(&self) -> &[(PathBuf, String)] {
        &self.skipped
    }

    /// Decodes image `i` to RGB ([`open_image`]); errors name the file.
    pub fn load(&self, i: usize) -> Result<RgbImage> {
        let (path, _) = self.samples.get(i).ok_or(AugmentError::IndexOutOfRange {
            index: i,
            len: self.samples.len(),
        })?;
        open_image(path)
    }

    /// Decodes image `i` as bands ([`open_bands`]), checking the band count of
    /// [`ImageFolderOptions::with_bands`]; errors name the file.
    pub fn load_bands(&self, i: usize) -> Result<BandImage> {
        let (path, _) = self.samples.get(i).ok_or(AugmentError::IndexOutOfRange {
            index: i,
            len: self.samples.len(),
        })?;
        self.open_bands_checked(path)
    }

    /// The band count every image must have (`None`: RGB images).
    pub fn bands(&self) -> Option<usize> {
        self.bands
    }

    fn open_bands_checked(&self, path: &Path) -> Result<BandImage> {
        let img = open_bands(path)?;
        match self.bands {
            Some(n) if img.bands() != n => Err(AugmentError::Decode {
                path: path.to_path_buf(),
                message: format!("{} bands, but the dataset's images have {n}", img.bands()),
            }),
            _ => Ok(img),
        }
    }
}

impl Dataset<BandImage> for ImageFolder {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn get(&self, index: usize) -> Result<(BandImage, usize)> {
        let img = self.load_bands(index)?;
        Ok((img, self.samples[index].1))
    }

    fn skip_corrupt(&self) -> bool {
        self.skip_corrupt
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn get(&self, index: usize) -> Result<(RgbImage, usize)> {
        let img = self.load(index)?;
        Ok((img, self.samples[index].1))
    }

    fn skip_corrupt(&self) -> bool {
        self.skip_corrupt
    }
}

/// The samples `indices` of another dataset, in that order (torch's `Subset`); indices may
/// repeat.
pub struct Subset<I = RgbImage> {
    inner: Arc<dyn Dataset<I>>,
    indices: Vec<usize>,
}

impl<I> Subset<I> {
    /// Errors when an index is out of range.
    pub fn new(inner: Arc<dyn Dataset<I>>, indices: Vec<usize>) -> Result<Self> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= inner.len()) {
            return Err(AugmentError::IndexOutOfRange {
                index: bad,
                len: inner.len(),
            });
        }
        Ok(Self { inner, indices })
    }

    /// The indices into the inner dataset.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl<I> Dataset<I> for Subset<I> {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn get(&self, index: usize) -> Result<(I, usize)> {
        let i = *self
            .indices
            .get(index)
            .ok_or(AugmentError::IndexOutOfRange {
                index,
                len: self.indices.len(),
            })?;
        self.inner.get(i)
    }

    fn skip_corrupt(&self) -> bool {
        self.inner.skip_corrupt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_end_marker_check() {
        assert!(jpeg_is_complete(&[
            0xFF, 0xD8, 0xFF, 0xDA, 1, 2, 0xFF, 0xD9
        ]));
        assert!(!jpeg_is_complete(&[
            0xFF, 0xD8, 0xFF, 0xDA, 1, 2, 0xFF, 0x00
        ]));
        assert!(!jpeg_is_complete(&[0xFF, 0xD8, 0xFF, 0xD9]));
    }

    #[test]
    fn extension_match_is_case_insensitive() {
        let exts: Vec<String> = IMG_EXTENSIONS.iter().map(|s| s.to_string()).collect();
        assert!(has_extension(&OsString::from("a.JPG"), &exts));
        assert!(has_extension(&OsString::from("b.tiff"), &exts));
        assert!(!has_extension(&OsString::from("c.txt"), &exts));
        assert!(!has_extension(&OsString::from("jpg"), &exts));
    }
}
