//! Conformance with the PyTorch/Pillow vectors: case `augment_functional`.
//!
//! Every op and its arguments come from `params.ops` of the manifest. Ops marked
//! `exact_if_pillow_port` must match bit for bit; the others (the float tensor) within the
//! stored tolerance.

use serde_json::Value;
use ssl_augment::{RgbImage, color, geometry, resample, tensor};
use ssl_conformance::ConformanceSet;

fn usize_of(v: &Value, key: &str) -> usize {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` missing in {v}")) as usize
}

fn f64_of(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` missing in {v}"))
}

fn f32x3(v: &Value, key: &str) -> [f32; 3] {
    let a: Vec<f32> = v[key]
        .as_array()
        .unwrap_or_else(|| panic!("`{key}` missing in {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    [a[0], a[1], a[2]]
}

enum Out {
    U8(RgbImage),
    F32(Vec<f32>),
}

fn apply(img: &RgbImage, p: &Value) -> Out {
    let op = p["op"].as_str().expect("op name");
    let img_out = match op {
        "resized_crop" => {
            let size = p["size"].as_array().expect("size");
            let (oh, ow) = (
                size[0].as_u64().unwrap() as usize,
                size[1].as_u64().unwrap() as usize,
            );
            resample::resized_crop(
                img,
                usize_of(p, "top") as i64,
                usize_of(p, "left") as i64,
                usize_of(p, "height"),
                usize_of(p, "width"),
                oh,
                ow,
            )
            .unwrap()
        }
        "hflip" => geometry::hflip(img),
        "adjust_brightness" => color::adjust_brightness(img, f64_of(p, "factor")).unwrap(),
        "adjust_contrast" => color::adjust_contrast(img, f64_of(p, "factor")).unwrap(),
        "adjust_saturation" => color::adjust_saturation(img, f64_of(p, "factor")).unwrap(),
        "adjust_hue" => color::adjust_hue(img, f64_of(p, "factor")).unwrap(),
        "rgb_to_grayscale" => {
            assert_eq!(usize_of(p, "num_output_channels"), 3);
            color::rgb_to_grayscale(img)
        }
        "pil_gaussian_blur" => ssl_augment::blur::gaussian_blur(img, f64_of(p, "radius")).unwrap(),
        "resize_shorter_then_center_crop" => {
            let r = resample::resize_shorter(img, usize_of(p, "resize")).unwrap();
            if let Some(hw) = p["resized_hw"].as_array() {
                let want: Vec<usize> = hw.iter().map(|v| v.as_u64().unwrap() as usize).collect();
                assert_eq!(vec![r.height(), r.width()], want, "resized size");
            }
            let c = usize_of(p, "crop");
            if p["crop_top"].is_number() {
                let (t, l) = geometry::center_crop_offsets(r.height(), r.width(), c, c);
                assert_eq!(
                    (t, l),
                    (
                        p["crop_top"].as_i64().unwrap(),
                        p["crop_left"].as_i64().unwrap()
                    )
                );
            }
            geometry::center_crop(&r, c, c).unwrap()
        }
        "to_tensor_normalize" => {
            let t = tensor::to_tensor_normalize(img, f32x3(p, "mean"), f32x3(p, "std")).unwrap();
            return Out::F32(t.data);
        }
        other => panic!("unknown op {other} in the manifest"),
    };
    Out::U8(img_out)
}

#[test]
fn augment_functional_matches_pillow() {
    let set = ConformanceSet::open();
    let case = set.case("augment_functional");
    let ops = case.params()["ops"]
        .as_object()
        .expect("params.ops")
        .clone();
    assert!(!ops.is_empty());
    let mut report = Vec::new();
    let mut failures = 0;
    for (name, p) in &ops {
        let input = name.split('.').next().unwrap();
        let shape = case.shape(input);
        assert_eq!(shape.len(), 3, "{input} is HWC");
        let img = RgbImage::from_raw(shape[1], shape[0], case.u8(input)).unwrap();
        let out_shape: Vec<usize> = p["out_shape"]
            .as_array()
            .expect("out_shape")
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(case.shape(name), out_shape, "{name}: manifest shape");
        let exact = p["exact_if_pillow_port"].as_bool().unwrap_or(false);
        match apply(&img, p) {
            Out::U8(got) => {
                assert_eq!(
                    vec![got.height(), got.width(), 3],
                    out_shape,
                    "{name}: shape"
                );
                let want = case.u8(name);
                let max = got
                    .as_raw()
                    .iter()
                    .zip(&want)
                    .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
                    .max()
                    .unwrap_or(0);
                let (atol, _) = case.tolerance(name);
                let ok = if exact {
                    max == 0
                } else {
                    f64::from(max) <= atol
                };
                report.push(format!(
                    "{name}: max |diff| {max} ({})",
                    if exact { "exact" } else { "tolerance" }
                ));
                if !ok {
                    failures += 1;
                    report.push(format!(
                        "  FAILED {name}: max diff {max}, exact {exact}, atol {atol}"
                    ));
                }
            }
            Out::F32(got) => {
                assert_eq!(
                    got.len(),
                    out_shape.iter().product::<usize>(),
                    "{name}: size"
                );
                if exact {
                    let want = case.f32(name);
                    let same = want
                        .iter()
                        .zip(&got)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    if !same {
                        failures += 1;
                        report.push(format!("  FAILED {name}: not bit-exact"));
                    }
                } else {
                    case.assert_close(name, &got);
                }
                let want = case.f32(name);
                let max = want
                    .iter()
                    .zip(&got)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                report.push(format!("{name}: max |diff| {max:e}"));
            }
        }
    }
    println!("{}", report.join("\n"));
    assert_eq!(failures, 0, "{}", report.join("\n"));
}
