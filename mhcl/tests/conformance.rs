//! Conformance with the PyTorch reference vectors (`tests/conformance`, or the directory named by
//! `SSL_CONFORMANCE_DIR`; an empty or missing directory fails).

use burn::module::Param;
use burn::optim::GradientsParams;
use burn::prelude::*;
use mhcl::optim::SgdConfig;
use mhcl::schedule::{LrSchedule, cosine_lr, step_lr};
use ssl_conformance::ConformanceSet;

/// The parameters of the case as one flat vector each: SGD is element-wise, so the layout does
/// not matter, and any rank the vector set uses works.
#[derive(Module, Debug)]
struct Flat {
    params: Vec<Param<Tensor<1>>>,
}

#[test]
fn sgd_and_schedule() {
    let set = ConformanceSet::open();
    let case = set.case("sgd_and_schedule");
    let p = case.params();
    let cfg = SgdConfig::new()
        .with_momentum(case.param_f64("momentum"))
        .with_dampening(case.param_f64("dampening"))
        .with_weight_decay(case.param_f64("weight_decay"))
        .with_nesterov(p["nesterov"].as_bool().expect("nesterov is a bool"));
    let lr = case.param_f64("lr");
    let steps = case.param_usize("steps");
    let n_params = p["param_shapes"].as_array().expect("param_shapes").len();
    assert!(n_params > 0 && steps > 0);

    let device = ssl_conformance::test_device().autodiff();
    let mut model = Flat {
        params: (0..n_params)
            .map(|i| {
                let v = case.f32(&format!("p{i}"));
                let n = v.len();
                Param::from_tensor(Tensor::from_data(TensorData::new(v, [n]), &device))
            })
            .collect(),
    };
    let mut sgd = cfg.init().expect("valid config");
    for s in 1..=steps {
        let mut grads = GradientsParams::new();
        for (i, param) in model.params.iter().enumerate() {
            let g = case.f32(&format!("grad{s}.p{i}"));
            let n = g.len();
            // gradients live on the inner (non-autodiff) device, as after a backward pass
            grads.register(
                param.id,
                Tensor::<1>::from_data(TensorData::new(g, [n]), &device.clone().inner()),
            );
        }
        model = sgd.step(lr, model, grads);
        let buffers = sgd.buffers().expect("buffers");
        for (i, param) in model.params.iter().enumerate() {
            let got = param.val().into_data().try_to_vec::<f32>().unwrap();
            case.assert_close(&format!("step{s}.p{i}"), &got);
            let name = format!("params.{i}");
            let buf = buffers
                .iter()
                .find(|b| b.name == name)
                .unwrap_or_else(|| panic!("no momentum buffer for {name}"));
            case.assert_close(&format!("step{s}.buf{i}"), &buf.values);
        }
    }

    // learning-rate schedules: exact float64 lists in params, f32 tensors
    let cos = &p["cosine"];
    let base = cos["base_lr"].as_f64().unwrap();
    let epochs = cos["epochs"].as_u64().unwrap() as usize;
    let want: Vec<f64> = cos["lrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let sched = LrSchedule::from_flags(base, true, epochs, &[]);
    let got: Vec<f64> = (0..epochs).map(|e| sched.lr(e)).collect();
    for (e, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-15 * w.abs().max(1e-300),
            "cosine epoch {e}: {g} vs {w}"
        );
        assert_eq!(*g, cosine_lr(base, e, epochs));
    }
    case.assert_close(
        "lr_cosine",
        &got.iter().map(|&v| v as f32).collect::<Vec<_>>(),
    );

    let st = &p["step"];
    let base = st["base_lr"].as_f64().unwrap();
    let epochs = st["epochs"].as_u64().unwrap() as usize;
    let milestones: Vec<usize> = st["milestones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let want: Vec<f64> = st["lrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let sched = LrSchedule::from_flags(base, false, epochs, &milestones);
    let got: Vec<f64> = (0..epochs).map(|e| sched.lr(e)).collect();
    assert_eq!(
        got, want,
        "step schedule must round exactly like the reference"
    );
    assert_eq!(got[0], step_lr(base, 0, &milestones));
    case.assert_close(
        "lr_step",
        &got.iter().map(|&v| v as f32).collect::<Vec<_>>(),
    );
}
