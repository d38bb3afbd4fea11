//! Conformance with the PyTorch reference: `encoder_resnet18_mhcl`, `encoder_resnet50w16_mhcl`
//! and `bottleneck_block_r50` (see `tests/conformance/README.md`).
//!
//! Each case: load the `w.*` tensors by their PyTorch names, run one train-mode forward on the
//! autodiff device, compare outputs, stage maps and pooled features; backpropagate
//! `L = sum(out_train * r)` and compare `grad.x` and `grad.<p>`; compare the BatchNorm buffers
//! after the forward (`w_after.*`); then compare an eval-mode forward. Every shape and setting
//! comes from the manifest.

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::Gradients;
use ssl_conformance::{Case, Checker, ConformanceSet, test_device};
use ssl_models::visit::named_grads;
use ssl_models::weights::{LoadOptions, RawTensor, TensorMap, load_tensors, module_tensors};
use ssl_models::{Arch, Bottleneck, MhclEncoderConfig};

/// The case's tensors `<prefix><name>` as a map `name -> tensor`.
fn tensors_with_prefix(case: &Case, prefix: &str) -> TensorMap {
    case.names_with_prefix(prefix)
        .into_iter()
        .map(|name| {
            let full = format!("{prefix}{name}");
            let stored = case.tensor(&full);
            let raw = if stored.dtype == "I64" {
                RawTensor::i64(stored.shape.clone(), stored.to_i64())
            } else {
                RawTensor::f32(stored.shape.clone(), stored.to_f32())
            };
            (name, raw)
        })
        .collect()
}

fn input(case: &Case, name: &str, device: &Device) -> Tensor<4> {
    let shape: [usize; 4] = case
        .shape(name)
        .try_into()
        .unwrap_or_else(|s| panic!("`{name}` is not 4-d: {s:?}"));
    Tensor::from_data(TensorData::new(case.f32(name), shape), device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

fn check_grads<M: Module>(
    checker: &mut Checker<'_>,
    module: &M,
    grads: &Gradients,
    names: &[String],
) {
    let all = named_grads(module, grads);
    assert!(!names.is_empty());
    for p in names {
        let g = all
            .get(p)
            .unwrap_or_else(|| panic!("{}: no gradient for `{p}`", checker.case().name));
        checker.check(&format!("grad.{p}"), &values(g.clone()));
    }
}

fn check_buffers<M: Module>(checker: &mut Checker<'_>, module: &M) {
    let state = module_tensors(module).unwrap();
    let names = checker.case().names_with_prefix("w_after.");
    assert!(!names.is_empty());
    for n in names {
        let got = state
            .get(&n)
            .unwrap_or_else(|| panic!("{}: model has no `{n}`", checker.case().name));
        assert_eq!(
            got.shape,
            checker.case().shape(&format!("w_after.{n}")),
            "{n}"
        );
        checker.check(&format!("w_after.{n}"), &got.to_f32());
    }
}

fn encoder_case(name: &str) {
    let set = ConformanceSet::open();
    let case = set.case(name);
    let p = case.params();
    let arch = Arch::from_name(p["arch"].as_str().expect("arch")).unwrap();
    let width = case.param_usize("width");
    let dim = case.param_usize("dim");
    let mlp = p["mlp"].as_bool().expect("mlp");
    let out_shape = case.shape("out_train");
    assert_eq!(
        case.param_f64("bn_eps"),
        1e-5,
        "model BN eps is PyTorch's 1e-5"
    );
    assert_eq!(
        case.param_f64("bn_momentum"),
        0.1,
        "model BN momentum is 0.1"
    );
    let config = MhclEncoderConfig::new(arch)
        .with_width(width)
        .with_dim(dim)
        .with_mlp(mlp)
        .with_multiscale(out_shape[1] > 1);
    assert_eq!(config.scales(), out_shape[1]);

    let device = test_device().autodiff();
    let encoder = config.init(&device);
    assert_eq!(encoder.feature_dim(), case.param_usize("feat_dim"));
    let (encoder, report) = load_tensors(
        encoder,
        tensors_with_prefix(&case, "w."),
        &LoadOptions::new(),
    )
    .unwrap();
    assert!(report.missing.is_empty() && report.unused.is_empty());

    let mut checker = Checker::new(&case);

    // Train-mode forward and backward.
    let x = input(&case, "x", &device).require_grad();
    encoder.check_input(&x).unwrap();
    let o = encoder.forward_with_features(x.clone());
    let r = Tensor::<3>::from_data(
        TensorData::new(
            case.f32("r"),
            <[usize; 3]>::try_from(case.shape("r")).unwrap(),
        ),
        &device,
    );
    let loss = o.out.clone().mul(r).sum();
    let grads = loss.backward();
    checker.check_tensor("out_train", o.out);
    checker.check_tensor("features_train", o.features);
    for (i, s) in o.stages.into_iter().enumerate() {
        checker.check_tensor(&format!("layer{}", i + 1), s);
    }
    let gx = x.grad(&grads).expect("gradient of x");
    checker.check_tensor("grad.x", gx);
    check_grads(
        &mut checker,
        &encoder,
        &grads,
        &case.param_strings("grad_params"),
    );
    check_buffers(&mut checker, &encoder);

    // Eval-mode forward with the updated running statistics.
    let eval = encoder.valid();
    let plain = device.clone().inner();
    let x = input(&case, "x", &plain);
    let o = eval.forward_with_features(x);
    checker.check_tensor("out_eval", o.out);
    checker.check_tensor("features_eval", o.features);
    checker.assert_passed();
}

#[test]
fn encoder_resnet18_mhcl() {
    encoder_case("encoder_resnet18_mhcl");
}

#[test]
fn encoder_resnet50w16_mhcl() {
    encoder_case("encoder_resnet50w16_mhcl");
}

#[test]
fn bottleneck_block_r50() {
    let set = ConformanceSet::open();
    let case = set.case("bottleneck_block_r50");
    let inplanes = case.param_usize("inplanes");
    let planes = case.param_usize("planes");
    let stride = case.param_usize("stride");
    assert_eq!(case.param_usize("expansion"), Bottleneck::EXPANSION);
    let downsample = case.params()["downsample"].as_bool().expect("downsample");

    let device = test_device().autodiff();
    let block = Bottleneck::with_downsample(inplanes, planes, stride, downsample, &device);
    let (block, _) =
        load_tensors(block, tensors_with_prefix(&case, "w."), &LoadOptions::new()).unwrap();

    let mut checker = Checker::new(&case);
    let x = input(&case, "x", &device).require_grad();
    let out = block.forward(x.clone());
    let r = input(&case, "r", &device);
    let grads = out.clone().mul(r).sum().backward();
    checker.check_tensor("out_train", out);
    checker.check_tensor("grad.x", x.grad(&grads).expect("gradient of x"));
    check_grads(
        &mut checker,
        &block,
        &grads,
        &case.param_strings("grad_params"),
    );
    check_buffers(&mut checker, &block);

    let eval = block.valid();
    let out = eval.forward(input(&case, "x", &device.clone().inner()));
    checker.check_tensor("out_eval", out);
    checker.assert_passed();
}
