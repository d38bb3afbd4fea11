//! Criterion benchmarks of the augmentation primitives and of one MoCo v2 two-crop sample
//! (decode + two augmented views), on a synthetic 150x150 image (the size of the AID copy used
//! by the throughput comparison in the README).

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use ssl_augment::{
    Normalize, RgbImage, SampleTransform, StdRng, TwoCrops, blur, color, decode_image, geometry,
    moco_v2_transform, resample,
};

fn synthetic(w: usize, h: usize) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let v = ((x * 13 + y * 7) ^ (x * y)) as u8;
        [v, (x * 255 / w) as u8, (y * 255 / h) as u8]
    })
}

fn jpeg_bytes(img: &RgbImage) -> Vec<u8> {
    let im: image::RgbImage = img.clone().try_into().unwrap();
    let mut out = Vec::new();
    im.write_to(
        &mut std::io::Cursor::new(&mut out),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    out
}

fn bench(c: &mut Criterion) {
    let src = synthetic(150, 150);
    let crop224 = resample::resized_crop(&src, 10, 20, 100, 110, 224, 224).unwrap();
    let jpeg = jpeg_bytes(&src);
    let mut g = c.benchmark_group("augment");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.bench_function("decode_jpeg_150", |b| {
        b.iter(|| decode_image(black_box(&jpeg), Path::new("bench.jpg")).unwrap())
    });
    g.bench_function("resized_crop_100x110_to_224", |b| {
        b.iter(|| resample::resized_crop(black_box(&src), 10, 20, 100, 110, 224, 224).unwrap())
    });
    g.bench_function("resize_600_to_224", |b| {
        let big = synthetic(600, 600);
        b.iter(|| resample::resize_bilinear(black_box(&big), 224, 224))
    });
    g.bench_function("brightness_224", |b| {
        b.iter(|| color::adjust_brightness(black_box(&crop224), 1.2).unwrap())
    });
    g.bench_function("contrast_224", |b| {
        b.iter(|| color::adjust_contrast(black_box(&crop224), 0.8).unwrap())
    });
    g.bench_function("saturation_224", |b| {
        b.iter(|| color::adjust_saturation(black_box(&crop224), 1.3).unwrap())
    });
    g.bench_function("hue_224", |b| {
        b.iter(|| color::adjust_hue(black_box(&crop224), 0.07).unwrap())
    });
    g.bench_function("grayscale_224", |b| {
        b.iter(|| color::rgb_to_grayscale(black_box(&crop224)))
    });
    g.bench_function("gaussian_blur_1.5_224", |b| {
        b.iter(|| blur::gaussian_blur(black_box(&crop224), 1.5).unwrap())
    });
    g.bench_function("hflip_224", |b| {
        b.iter(|| geometry::hflip(black_box(&crop224)))
    });
    g.bench_function("to_tensor_normalize_224", |b| {
        let n = Normalize::imagenet();
        let mut out = vec![0f32; 3 * 224 * 224];
        b.iter(|| n.write_chw(black_box(&crop224), &mut out).unwrap())
    });
    let two = TwoCrops::new(moco_v2_transform(224).unwrap());
    g.bench_function("moco_v2_two_crops_224_with_decode", |b| {
        let mut rng = StdRng::seed_from_u64(0);
        b.iter(|| {
            let img = decode_image(black_box(&jpeg), Path::new("bench.jpg")).unwrap();
            two.apply_views(&img, &mut rng).unwrap()
        })
    });
    let two64 = TwoCrops::new(moco_v2_transform(64).unwrap());
    g.bench_function("moco_v2_two_crops_64_with_decode", |b| {
        let mut rng = StdRng::seed_from_u64(0);
        b.iter(|| {
            let img = decode_image(black_box(&jpeg), Path::new("bench.jpg")).unwrap();
            two64.apply_views(&img, &mut rng).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
