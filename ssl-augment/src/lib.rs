//! Image augmentations for self-supervised learning that reproduce torchvision + Pillow exactly,
//! torchvision's `ImageFolder`, and a parallel loader producing plain `f32` NCHW batches. No
//! tensor library is involved: batches are `Vec<f32>` that any framework can wrap.
//!
//! * [`resample`], [`color`], [`blur`], [`geometry`], [`tensor`]: the functional operations of
//!   torchvision's PIL backend, ported from Pillow's C code so that the `u8` results are the same
//!   bit for bit (Pillow 13's bilinear resize with its pass order and rounding between passes,
//!   `ImageEnhance`'s truncating blends, Pillow's 8-bit HSV, its three-pass box-blur Gaussian).
//! * [`transforms`]: `RandomResizedCrop`, `ColorJitter`, `RandomApply`, `RandomGrayscale`,
//!   MoCo's `GaussianBlur`, `RandomHorizontalFlip`, `Resize`, `CenterCrop` with torchvision's
//!   semantics, and the presets [`moco_v2_transform`], [`moco_v1_transform`],
//!   [`probe_train_transform`], [`probe_eval_transform`] and [`TwoCrops`].
//! * [`ImageFolder`]: torchvision's class-folder dataset (sorted classes, jpg/jpeg/png/tif/tiff/
//!   bmp/webp, everything converted to RGB, errors that name the file). JPEGs are decoded by
//!   libjpeg-turbo's decoder with Pillow's settings, so the pixels equal `Image.open(f)`'s.
//! * [`bands`], [`band_transforms`]: multispectral images (1 to 32 bands of `u8`, `u16` or float
//!   samples from (Geo)TIFF) as `f32` planes, and the augmentations defined for N bands with
//!   torchvision's semantics and random draws (float arithmetic: Pillow's `"F"`-mode resize,
//!   torchvision's tensor blur).
//! * [`Loader`]: worker threads, a bounded prefetch queue, `DistributedSampler` semantics, and a
//!   per-sample generator seeded by `(seed, epoch, index)` so results do not depend on the
//!   number of workers.
//!
//! ```no_run
//! use std::sync::Arc;
//! use ssl_augment::{ImageFolder, ImageFolderOptions, Loader, LoaderConfig, TwoCrops, moco_v2_transform};
//!
//! # fn main() -> ssl_augment::Result<()> {
//! let folder = ImageFolder::new("data/AID", &ImageFolderOptions::default())?;
//! let transform = TwoCrops::new(moco_v2_transform(224)?);
//! let config = LoaderConfig::default().with_batch_size(32).with_workers(4).with_drop_last(true);
//! let loader = Loader::new(Arc::new(folder), Arc::new(transform), config)?;
//! for batch in loader.epoch(0) {
//!     let batch = batch?;
//!     let (im_q, im_k) = (batch.view(0), batch.view(1)); // each N*3*224*224, NCHW
//!     assert_eq!(im_q.len(), batch.n * 3 * 224 * 224);
//!     # let _ = im_k;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Functional operations work on [`RgbImage`] directly:
//!
//! ```
//! use ssl_augment::{RgbImage, color, resample};
//!
//! let img = RgbImage::from_fn(61, 47, |x, y| [x as u8 * 4, y as u8 * 5, 128]);
//! let crop = resample::resized_crop(&img, 5, 8, 29, 45, 24, 24).unwrap();
//! let jittered = color::adjust_hue(&crop, 0.08).unwrap();
//! assert_eq!((jittered.height(), jittered.width()), (24, 24));
//! ```

#![warn(missing_docs)]

pub mod band_transforms;
pub mod bands;
pub mod blur;
pub mod color;
pub mod error;
pub mod folder;
pub mod geometry;
pub mod image;
pub mod loader;
pub mod resample;
mod simd;
pub mod tensor;
pub mod transforms;

pub use bands::{
    BandImage, BandStats, TiffSample, decode_bands, encode_tiff, open_bands, probe_image,
};
pub use error::{AugmentError, Result};
pub use folder::{
    Dataset, IMG_EXTENSIONS, ImageFolder, ImageFolderOptions, Subset, decode_image, open_image,
};
pub use image::RgbImage;
pub use loader::{Batch, EpochIter, Loader, LoaderConfig, distributed_indices, sample_rng};
pub use rand::rngs::StdRng;
pub use tensor::{IMAGENET_MEAN, IMAGENET_STD, Normalize, TensorImage, to_tensor_normalize};
pub use transforms::{
    CenterCrop, ColorJitter, Compose, GaussianBlur, ImageTransform, JitterParams, Pipeline,
    RandomApply, RandomGrayscale, RandomHorizontalFlip, RandomResizedCrop, Resize, SampleTransform,
    TwoCrops, ViewPipeline, eval_resize_size, moco_v1_transform, moco_v2_transform,
    probe_eval_transform, probe_train_transform,
};
