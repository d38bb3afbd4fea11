//! Weight I/O against real PyTorch files: the checkpoints under `tests/conformance/fixtures/`
//! (torchvision `state_dict`, its f16 copy, an original MHCL training checkpoint), round trips
//! through safetensors, strictness, allow-lists and damaged files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::prelude::*;
use burn::tensor::DType;
use serde_json::Value;
use ssl_conformance::ConformanceSet;
use ssl_models::weights::{
    LoadOptions, RawTensor, TensorMap, load_pytorch, load_safetensors, load_tensors,
    module_tensors, read_pytorch, read_safetensors, save_safetensors, write_safetensors,
};
use ssl_models::{Arch, MhclEncoder, MhclEncoderConfig, ModelsError, ResNet, ResNetConfig};

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ssl-models-test-{}-{name}", std::process::id()))
}

fn torchvision_resnet(info: &Value, device: &Device) -> ResNet {
    let arch = Arch::from_name(info["arch"].as_str().unwrap()).unwrap();
    ResNetConfig::new(arch)
        .with_width(info["width"].as_u64().unwrap() as usize)
        .with_num_classes(info["num_classes"].as_u64().unwrap() as usize)
        .init(device)
}

fn mhcl_encoder(info: &Value, device: &Device) -> MhclEncoder {
    let arch = Arch::from_name(info["arch"].as_str().unwrap()).unwrap();
    MhclEncoderConfig::new(arch)
        .with_width(info["width"].as_u64().unwrap() as usize)
        .with_dim(info["dim"].as_u64().unwrap() as usize)
        .with_mlp(info["mlp"].as_bool().unwrap())
        .init(device)
}

/// Checks every tensor of `state` against the manifest's checksums (`sum` in f64 of the stored
/// values, exact `first` values), with a relative tolerance on the sum.
fn check_checksums(state: &TensorMap, tensors: &serde_json::Map<String, Value>, prefix: &str) {
    let mut seen = 0;
    for (key, info) in tensors {
        let Some(name) = key.strip_prefix(prefix) else {
            continue;
        };
        seen += 1;
        let t = state
            .get(name)
            .unwrap_or_else(|| panic!("model has no `{name}`"));
        let shape: Vec<usize> = info["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape, shape, "{name}: shape");
        let values: Vec<f64> = t.to_f32().into_iter().map(f64::from).collect();
        let sum: f64 = values.iter().sum();
        let want = info["sum"].as_f64().unwrap();
        let abs_sum = info["abs_sum"].as_f64().unwrap();
        assert!(
            (sum - want).abs() <= 1e-6 * abs_sum.max(1.0),
            "{name}: sum {sum} != {want}"
        );
        for (i, f) in info["first"].as_array().unwrap().iter().enumerate() {
            // The manifest's decimal is the f32 value printed in f64; compare as f32.
            assert_eq!(
                values[i] as f32,
                f.as_f64().unwrap() as f32,
                "{name}: value {i}"
            );
        }
        let int = info["dtype"].as_str().unwrap() == "int64";
        assert_eq!(t.as_i64().is_some(), int, "{name}: integer tensor");
    }
    assert_eq!(seen, state.len(), "every model tensor is in the file");
}

#[test]
fn torchvision_state_dict_loads_with_checksums() {
    let set = ConformanceSet::open();
    let info = set.fixture_info("resnet18_w8.pth");
    let dev = Device::flex();
    let model = torchvision_resnet(info, &dev);
    let (model, report) =
        load_pytorch(model, set.fixture("resnet18_w8.pth"), &LoadOptions::new()).unwrap();
    let tensors = info["tensors"].as_object().unwrap();
    assert_eq!(report.applied.len(), tensors.len());
    assert!(report.missing.is_empty() && report.unused.is_empty());
    let state = module_tensors(&model).unwrap();
    assert_eq!(state.len(), tensors.len());
    check_checksums(&state, tensors, "");
    // The forward runs on the loaded weights.
    let x = Tensor::<4>::ones([1, 3, 32, 32], &dev);
    let y = model.forward(x);
    assert_eq!(
        y.dims(),
        [1, info["num_classes"].as_u64().unwrap() as usize]
    );
}

#[test]
fn f16_state_dict_is_converted_to_f32() {
    let set = ConformanceSet::open();
    let info16 = set.fixture_info("resnet18_w8_fp16.pth");
    let info = set.fixture_info("resnet18_w8.pth");
    let dev = Device::flex();
    let (m16, _) = load_pytorch(
        torchvision_resnet(info, &dev),
        set.fixture("resnet18_w8_fp16.pth"),
        &LoadOptions::new(),
    )
    .unwrap();
    let s16 = module_tensors(&m16).unwrap();
    check_checksums(&s16, info16["tensors"].as_object().unwrap(), "");
    let (m32, _) = load_pytorch(
        torchvision_resnet(info, &dev),
        set.fixture("resnet18_w8.pth"),
        &LoadOptions::new(),
    )
    .unwrap();
    let s32 = module_tensors(&m32).unwrap();
    for (name, t) in &s32 {
        for (a, b) in t.to_f32().iter().zip(s16[name].to_f32()) {
            // f16 keeps 11 significant bits.
            assert!(
                (a - b).abs() <= 1e-3 * a.abs().max(6e-5),
                "{name}: {a} vs {b}"
            );
        }
    }
    // Every parameter is f32 on the device: the forward runs.
    let y = m16.forward(Tensor::<4>::ones([1, 3, 32, 32], &dev));
    assert_eq!(y.dtype(), DType::F32);
}

#[test]
fn mhcl_checkpoint_encoder_q_matches_its_safetensors_copy() {
    let set = ConformanceSet::open();
    let info = set.fixture_info("checkpoint_0000.pth.tar");
    let dev = Device::flex();
    let (enc, report) = load_pytorch(
        mhcl_encoder(info, &dev),
        set.fixture("checkpoint_0000.pth.tar"),
        &LoadOptions::mhcl_encoder_q(),
    )
    .unwrap();
    assert!(report.missing.is_empty() && report.unused.is_empty());
    assert!(report.ignored.iter().any(|k| k == "module.queue"));
    assert!(
        report
            .ignored
            .iter()
            .any(|k| k.starts_with("module.encoder_k."))
    );

    let state = module_tensors(&enc).unwrap();
    let (want, _) = read_safetensors(set.fixture("mhcl_w8_encoder_q.safetensors")).unwrap();
    assert_eq!(state.len(), want.len());
    for (name, t) in &want {
        assert_eq!(&state[name], t, "{name} differs bit for bit");
    }
    check_checksums(
        &state,
        info["state_dict"].as_object().unwrap(),
        "module.encoder_q.",
    );

    // The same file loads through the safetensors path too.
    let (enc2, _) = load_safetensors(
        mhcl_encoder(info, &dev),
        set.fixture("mhcl_w8_encoder_q.safetensors"),
        &LoadOptions::new(),
    )
    .unwrap();
    assert_eq!(module_tensors(&enc2).unwrap(), state);
}

#[test]
fn raw_checkpoint_keys_keep_their_indices() {
    let set = ConformanceSet::open();
    let all = read_pytorch(set.fixture("checkpoint_0000.pth.tar"), Some("state_dict")).unwrap();
    assert!(all.contains_key("module.encoder_q.fc.2.weight"));
    assert!(all.contains_key("module.encoder_q.global_mlps.1.mlp.2.bias"));
    assert_eq!(all["module.queue_ptr"], RawTensor::i64([1], vec![8]));
    assert_eq!(all["module.queue"].shape, vec![8, 16, 64]);
}

#[test]
fn save_then_load_is_exact() {
    let set = ConformanceSet::open();
    let info = set.fixture_info("checkpoint_0000.pth.tar");
    let dev = Device::flex();
    let (enc, _) = load_pytorch(
        mhcl_encoder(info, &dev),
        set.fixture("checkpoint_0000.pth.tar"),
        &LoadOptions::mhcl_encoder_q(),
    )
    .unwrap();
    let path = tmp("roundtrip.safetensors");
    save_safetensors(&enc, &path).unwrap();
    let (back, report) =
        load_safetensors(mhcl_encoder(info, &dev), &path, &LoadOptions::new()).unwrap();
    assert_eq!(report.applied.len(), module_tensors(&enc).unwrap().len());
    assert_eq!(
        module_tensors(&back).unwrap(),
        module_tensors(&enc).unwrap()
    );
    let x = Tensor::<4>::random([2, 3, 32, 32], burn::tensor::Distribution::Default, &dev);
    let a = enc.forward(x.clone()).into_data();
    let b = back.forward(x).into_data();
    assert_eq!(a, b);
    // Saving again over the file works (atomic replace), and leaves no temporary behind.
    save_safetensors(&back, &path).unwrap();
    let dir = path.parent().unwrap();
    let stem = path.file_name().unwrap().to_string_lossy().to_string();
    assert!(!std::fs::read_dir(dir).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(&format!(".{stem}"))
    }));
    std::fs::remove_file(path).unwrap();
}

#[test]
fn mismatched_weights_list_missing_and_unexpected_keys() {
    let set = ConformanceSet::open();
    let dev = Device::flex();
    let info = set.fixture_info("checkpoint_0000.pth.tar");
    // A torchvision classifier into an MHCL encoder: heads missing, fc unexpected.
    let err = load_pytorch(
        mhcl_encoder(info, &dev),
        set.fixture("resnet18_w8.pth"),
        &LoadOptions::new(),
    )
    .unwrap_err();
    let ModelsError::Mismatch(m) = &err else {
        panic!("{err}")
    };
    assert!(
        m.missing
            .contains(&"global_mlps.0.mlp.0.weight".to_string())
    );
    assert!(m.missing.contains(&"fc.2.bias".to_string()));
    assert_eq!(
        m.unexpected,
        vec!["fc.bias".to_string(), "fc.weight".to_string()]
    );
    let text = err.to_string();
    assert!(text.contains("global_mlps.2.mlp.2.weight") && text.contains("fc.weight"));

    // Weights of another architecture.
    let r34 = ResNetConfig::new(Arch::ResNet34)
        .with_width(8)
        .with_num_classes(10)
        .init(&dev);
    let err = load_pytorch(r34, set.fixture("resnet18_w8.pth"), &LoadOptions::new()).unwrap_err();
    assert!(err.to_string().contains("layer1.2.conv1.weight"), "{err}");
    // Another width: every shape differs, named with both shapes.
    let wide = ResNetConfig::new(Arch::ResNet18)
        .with_width(16)
        .with_num_classes(10)
        .init(&dev);
    let err = load_pytorch(wide, set.fixture("resnet18_w8.pth"), &LoadOptions::new()).unwrap_err();
    let ModelsError::Mismatch(m) = &err else {
        panic!("{err}")
    };
    assert!(
        m.shape_mismatch
            .iter()
            .any(|(n, want, got)| n == "conv1.weight"
                && want == &[16, 3, 7, 7]
                && got == &[8, 3, 7, 7])
    );
}

#[test]
fn probe_allow_list_takes_the_backbone() {
    let set = ConformanceSet::open();
    let dev = Device::flex();
    let info = set.fixture_info("checkpoint_0000.pth.tar");
    let probe = ResNetConfig::new(Arch::ResNet18)
        .with_width(info["width"].as_u64().unwrap() as usize)
        .with_num_classes(5)
        .init(&dev);
    let fc_before = module_tensors(&probe).unwrap()["fc.weight"].clone();
    let path = set.fixture("checkpoint_0000.pth.tar");
    // Strict: the heads are unexpected, the new fc is missing.
    let err = load_pytorch(probe.clone(), &path, &LoadOptions::mhcl_encoder_q()).unwrap_err();
    assert!(matches!(err, ModelsError::Mismatch(_)), "{err}");
    let (probe, report) = load_pytorch(
        probe,
        &path,
        &LoadOptions::mhcl_encoder_q().probe_backbone(),
    )
    .unwrap();
    assert_eq!(
        report.missing,
        vec!["fc.bias".to_string(), "fc.weight".to_string()]
    );
    assert!(report.unused.contains(&"fc.0.weight".to_string()));
    assert!(
        report
            .unused
            .contains(&"global_mlps.1.mlp.0.bias".to_string())
    );
    let state = module_tensors(&probe).unwrap();
    assert_eq!(state["fc.weight"], fc_before, "fc keeps its initial values");
    let (want, _) = read_safetensors(set.fixture("mhcl_w8_encoder_q.safetensors")).unwrap();
    assert_eq!(
        state["layer3.1.bn2.running_var"],
        want["layer3.1.bn2.running_var"]
    );
}

#[test]
fn damaged_or_absent_files_are_errors() {
    let set = ConformanceSet::open();
    let dev = Device::flex();
    let info = set.fixture_info("resnet18_w8.pth");
    let good = std::fs::read(set.fixture("resnet18_w8.pth")).unwrap();

    let truncated = tmp("truncated.pth");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let garbage = tmp("garbage.pth");
    std::fs::write(&garbage, b"this is not a checkpoint").unwrap();
    for p in [&truncated, &garbage] {
        let r = load_pytorch(torchvision_resnet(info, &dev), p, &LoadOptions::new());
        assert!(
            matches!(r, Err(ModelsError::Format { .. })),
            "{}: {:?}",
            p.display(),
            r.map(|_| ())
        );
        let r = load_safetensors(torchvision_resnet(info, &dev), p, &LoadOptions::new());
        assert!(matches!(r, Err(ModelsError::Format { .. })));
        std::fs::remove_file(p).unwrap();
    }
    let r = load_pytorch(
        torchvision_resnet(info, &dev),
        tmp("does-not-exist.pth"),
        &LoadOptions::new(),
    );
    assert!(matches!(r, Err(ModelsError::Io { .. })));
    // A top-level key the file does not have.
    let r = load_pytorch(
        torchvision_resnet(info, &dev),
        set.fixture("resnet18_w8.pth"),
        &LoadOptions::new().with_top_level_key("state_dict"),
    );
    assert!(r.is_err());
}

#[test]
fn f16_and_bf16_safetensors_load_as_f32() {
    let set = ConformanceSet::open();
    let info = set.fixture_info("resnet18_w8.pth");
    let dev = Device::flex();
    let (model, _) = load_pytorch(
        torchvision_resnet(info, &dev),
        set.fixture("resnet18_w8.pth"),
        &LoadOptions::new(),
    )
    .unwrap();
    let state = module_tensors(&model).unwrap();
    for (dtype, st_dtype) in [
        (DType::F16, safetensors::Dtype::F16),
        (DType::BF16, safetensors::Dtype::BF16),
    ] {
        // Write a half-precision copy (integers stay i64), as `model.half()` + save would.
        let mut owned: BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> =
            BTreeMap::new();
        let mut rounded = TensorMap::new();
        for (name, t) in &state {
            let data = t.to_tensor_data();
            let (st, data) = if t.as_f32().is_some() {
                (st_dtype, data.convert_dtype(dtype))
            } else {
                (safetensors::Dtype::I64, data)
            };
            rounded.insert(
                name.clone(),
                RawTensor::from_tensor_data(data.clone()).unwrap(),
            );
            owned.insert(
                name.clone(),
                (st, t.shape.clone(), data.as_bytes().to_vec()),
            );
        }
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
            .iter()
            .map(|(n, (d, s, b))| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                )
            })
            .collect();
        let path = tmp(&format!("{dtype:?}.safetensors"));
        safetensors::serialize_to_file(views, None, &path).unwrap();
        let (m, _) =
            load_safetensors(torchvision_resnet(info, &dev), &path, &LoadOptions::new()).unwrap();
        assert_eq!(module_tensors(&m).unwrap(), rounded, "{dtype:?}");
        let y = m.forward(Tensor::<4>::ones([1, 3, 16, 16], &dev));
        assert_eq!(y.dtype(), DType::F32);
        std::fs::remove_file(path).unwrap();
    }
}

#[test]
fn raw_tensor_maps_round_trip_with_metadata() {
    let path = tmp("raw.safetensors");
    let mut t = TensorMap::new();
    t.insert(
        "queue".into(),
        RawTensor::f32([2, 3, 4], (0..24).map(|v| v as f32).collect()),
    );
    t.insert("queue_ptr".into(), RawTensor::i64([], vec![7]));
    t.insert(
        "optimizer.momentum.0".into(),
        RawTensor::f32([1], vec![-0.5]),
    );
    let meta = BTreeMap::from([("epoch".to_string(), "3".to_string())]);
    write_safetensors(&path, &t, &meta).unwrap();
    let (back, meta_back) = read_safetensors(&path).unwrap();
    assert_eq!(back, t);
    assert_eq!(meta_back, meta);
    std::fs::remove_file(path).unwrap();

    // A map in memory loads directly; the counter may come as [] or [1].
    let dev = Device::flex();
    let m = ResNetConfig::new(Arch::ResNet18).with_width(2).init(&dev);
    let mut state = module_tensors(&m).unwrap();
    state.insert(
        "bn1.num_batches_tracked".into(),
        RawTensor::i64([1], vec![42]),
    );
    let (m, _) = load_tensors(m, state, &LoadOptions::new()).unwrap();
    assert_eq!(m.bn1.num_batches_tracked.get(), 42);
    assert_eq!(
        module_tensors(&m).unwrap()["bn1.num_batches_tracked"],
        RawTensor::i64([], vec![42])
    );
}

/// The real torchvision checkpoint of the conformance set, read as a state dict.
fn torchvision_state() -> (Value, TensorMap) {
    let set = ConformanceSet::open();
    let info = set.fixture_info("resnet18_w8.pth").clone();
    (
        info,
        read_pytorch(set.fixture("resnet18_w8.pth"), None).unwrap(),
    )
}

/// The torchvision fixture's network with a 13-band stem.
fn thirteen_band_resnet(info: &Value, device: &Device) -> ResNet {
    let arch = Arch::from_name(info["arch"].as_str().unwrap()).unwrap();
    ResNetConfig::new(arch)
        .with_width(info["width"].as_u64().unwrap() as usize)
        .with_num_classes(info["num_classes"].as_u64().unwrap() as usize)
        .with_in_channels(13)
        .init(device)
}

#[test]
fn rgb_checkpoint_loads_into_a_13_band_stem_by_the_repeat_and_scale_rule() {
    let device = Device::flex();
    let (info, state) = torchvision_state();
    let net = thirteen_band_resnet(&info, &device);
    let options = LoadOptions::new().with_adapt_input_conv(true);
    let (net, report) = load_tensors(net, state.clone(), &options).unwrap();
    assert_eq!(report.adapted, ["conv1.weight"]);
    assert_eq!(net.in_channels(), 13);
    let rgb = &state["conv1.weight"];
    let [out, _, kh, kw] = rgb.shape[..] else {
        panic!("stem shape")
    };
    let loaded = module_tensors(&net).unwrap()["conv1.weight"].clone();
    assert_eq!(loaded.shape, [out, 13, kh, kw]);
    let (rgb, loaded) = (rgb.to_f32(), loaded.to_f32());
    let k = kh * kw;
    for o in 0..out {
        for b in 0..13 {
            for i in 0..k {
                let want = rgb[(o * 3 + b % 3) * k + i] * (3.0 / 13.0);
                assert_eq!(
                    loaded[(o * 13 + b) * k + i],
                    want,
                    "filter {o}, band {b}, tap {i}"
                );
            }
        }
    }
    // every other tensor is loaded as it is
    let bn = module_tensors(&net).unwrap()["bn1.weight"].to_f32();
    assert_eq!(bn, state["bn1.weight"].to_f32());
}

#[test]
fn one_band_stem_gets_the_sum_of_the_rgb_filters() {
    let rgb = RawTensor::f32([2, 3, 1, 2], (0..12).map(|v| v as f32).collect());
    let gray = ssl_models::weights::adapt_input_conv(&rgb, 1).unwrap();
    assert_eq!(gray.shape, [2, 1, 1, 2]);
    assert_eq!(
        gray.to_f32(),
        [
            0.0 + 2.0 + 4.0,
            1.0 + 3.0 + 5.0,
            6.0 + 8.0 + 10.0,
            7.0 + 9.0 + 11.0
        ]
    );
    let same = ssl_models::weights::adapt_input_conv(&rgb, 3).unwrap();
    assert_eq!(same, rgb);
}

#[test]
fn rgb_checkpoint_into_a_13_band_stem_is_a_mismatch_without_the_rule() {
    let device = Device::flex();
    let (info, state) = torchvision_state();
    let net = thirteen_band_resnet(&info, &device);
    let e = load_tensors(net, state, &LoadOptions::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("conv1.weight"), "{e}");
}

#[test]
fn a_13_band_network_takes_13_band_images_only() {
    let device = Device::flex();
    let net = ResNetConfig::new(Arch::ResNet18)
        .with_width(8)
        .with_in_channels(13)
        .init(&device);
    let x = Tensor::<4>::zeros([2, 13, 32, 32], &device);
    assert!(net.check_input(&x).is_ok());
    assert_eq!(net.pooled(x).dims(), [2, net.feature_dim()]);
    let rgb = Tensor::<4>::zeros([2, 3, 32, 32], &device);
    let e = net.check_input(&rgb).unwrap_err().to_string();
    assert!(
        e.contains("expected (N, 13, H, W)") && e.contains("3 channel"),
        "{e}"
    );
}
