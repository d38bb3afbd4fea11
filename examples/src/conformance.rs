//! Runs the PyTorch conformance cases of the model, loss, queue and optimizer crates on any
//! `--device` and prints one PASS/FAIL line per case, with the worst error as a fraction of the
//! case's tolerance. The vectors are the committed ones (`tests/conformance`, read with
//! `ssl-conformance`); the checks are those of the crates' `tests/conformance.rs`, with the
//! device as a parameter. Built with `--features vulkan` (or `cuda`) it checks a GPU backend.
//!
//! ```text
//! cargo run --release -p ssl-examples --example gpu_conformance -- [--device SPEC] [--dir DIR]
//!     [--curve-steps N] [--json PATH]
//! cargo run --release -p ssl-examples --features vulkan --example gpu_conformance -- --device vulkan
//! ```
//!
//! * `--device`: `cpu` (default), `vulkan[:N]`, `cuda[:N]` (as `mhcl --device`).
//! * `--dir`: the vector directory; default `$SSL_CONFORMANCE_DIR`, else `tests/conformance`
//!   under the current directory, else the workspace's committed copy.
//! * `--curve-steps N` (default 300; 0 skips): also trains the small model of
//!   `mhcl::curves::loss_curve` for N steps in f32 and in bf16 on the device and checks that
//!   the bf16 curve follows the f32 one (25-step window means within 8 % + 0.02,
//!   `mhcl::curves::compare_curves`). Devices
//!   without bf16 report `UNSUPPORTED` for that case.
//! * `--json PATH`: also writes the results as JSON.
//!
//! Exit status: 0 when every case passed (an unsupported bf16 case does not count as a
//! failure), 1 otherwise, 2 for bad arguments or a device that cannot be opened.
//!
//! Cases: `encoder_resnet18_mhcl`, `encoder_resnet50w16_mhcl`, `bottleneck_block_r50` (train
//! forward, stage maps, features, input and parameter gradients, BatchNorm buffers, eval
//! forward), `moco_infonce`, `mhcl_hard_loss`, `mhcl_hard_loss_wrap` (logits, losses, keys,
//! gradients, enqueue), `linear_probe_metrics`, `sgd_and_schedule` (SGD steps and momentum
//! buffers).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::Gradients;
use mhcl::curves::{CurveConfig, compare_curves, loss_curve};
use mhcl::device::{catch_silent, one_line, parse_device};
use mhcl::optim::SgdConfig;
use mhcl::precision::Precision;
use ssl_conformance::{Case, Checker, ConformanceSet};
use ssl_losses::{
    HardFeatureLossConfig, HardMixing, InfoNceLoss, cross_entropy, hard_features, mixed_queue,
    moco_logits, normalize, topk_accuracy,
};
use ssl_models::visit::named_grads;
use ssl_models::weights::{LoadOptions, RawTensor, TensorMap, load_tensors, module_tensors};
use ssl_models::{Arch, Bottleneck, MhclEncoderConfig};
use ssl_queue::MomentumQueue;

/// The GPU check's record of a case compared by [`Checker`].
fn outcome(c: &Checker) -> Outcome {
    let (worst_ratio, worst_tensor) = c.worst();
    Outcome {
        status: if c.failures().is_empty() {
            Status::Pass
        } else {
            Status::Fail
        },
        tensors: c.count(),
        worst_ratio,
        worst_tensor: worst_tensor.to_string(),
        detail: c.failures().join("; "),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Pass,
    Fail,
    Unsupported,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Unsupported => "UNSUPPORTED",
        }
    }
}

struct Outcome {
    status: Status,
    tensors: usize,
    worst_ratio: f64,
    worst_tensor: String,
    detail: String,
}

impl Outcome {
    fn failed(detail: String) -> Self {
        Self {
            status: Status::Fail,
            tensors: 0,
            worst_ratio: f64::INFINITY,
            worst_tensor: String::new(),
            detail,
        }
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .expect("float tensor")
}

fn tensor<const D: usize>(case: &Case, name: &str, device: &Device) -> Tensor<D> {
    let shape: [usize; D] = case
        .shape(name)
        .try_into()
        .unwrap_or_else(|s| panic!("`{name}` is not {D}-d: {s:?}"));
    Tensor::from_data(TensorData::new(case.f32(name), shape), device)
}

/// The case's tensors `<prefix><name>` as a map `name -> tensor`.
fn tensors_with_prefix(case: &Case, prefix: &str) -> TensorMap {
    case.names_with_prefix(prefix)
        .into_iter()
        .map(|name| {
            let stored = case.tensor(&format!("{prefix}{name}"));
            let raw = if stored.dtype == "I64" {
                RawTensor::i64(stored.shape.clone(), stored.to_i64())
            } else {
                RawTensor::f32(stored.shape.clone(), stored.to_f32())
            };
            (name, raw)
        })
        .collect()
}

fn check_grads<M: Module>(checker: &mut Checker<'_>, module: &M, grads: &Gradients) {
    let all = named_grads(module, grads);
    for p in checker.case().param_strings("grad_params") {
        match all.get(&p) {
            Some(g) => checker.check(&format!("grad.{p}"), &values(g.clone())),
            None => checker.fail(format!("no gradient for `{p}`")),
        }
    }
}

fn check_buffers<M: Module>(checker: &mut Checker<'_>, module: &M) {
    let state = module_tensors(module).expect("module tensors");
    for n in checker.case().names_with_prefix("w_after.") {
        match state.get(&n) {
            Some(got) => checker.check(&format!("w_after.{n}"), &got.to_f32()),
            None => checker.fail(format!("model has no `{n}`")),
        }
    }
}

fn encoder_case(set: &ConformanceSet, name: &str, device: &Device) -> Outcome {
    let case = set.case(name);
    let p = case.params();
    let arch = Arch::from_name(p["arch"].as_str().expect("arch")).expect("known arch");
    let out_shape = case.shape("out_train");
    let config = MhclEncoderConfig::new(arch)
        .with_width(case.param_usize("width"))
        .with_dim(case.param_usize("dim"))
        .with_mlp(p["mlp"].as_bool().expect("mlp"))
        .with_multiscale(out_shape[1] > 1);
    let train = device.clone().autodiff();
    let (encoder, _) = load_tensors(
        config.init(&train),
        tensors_with_prefix(&case, "w."),
        &LoadOptions::new(),
    )
    .expect("weights load");
    let mut c = Checker::new(&case);
    let x = tensor::<4>(&case, "x", &train).require_grad();
    let o = encoder.forward_with_features(x.clone());
    let r = tensor::<3>(&case, "r", &train);
    let grads = o.out.clone().mul(r).sum().backward();
    c.check_tensor("out_train", o.out);
    c.check_tensor("features_train", o.features);
    for (i, s) in o.stages.into_iter().enumerate() {
        c.check_tensor(&format!("layer{}", i + 1), s);
    }
    c.check_tensor("grad.x", x.grad(&grads).expect("gradient of x"));
    check_grads(&mut c, &encoder, &grads);
    check_buffers(&mut c, &encoder);
    let eval = encoder.valid();
    let o = eval.forward_with_features(tensor::<4>(&case, "x", device));
    c.check_tensor("out_eval", o.out);
    c.check_tensor("features_eval", o.features);
    outcome(&c)
}

fn bottleneck_case(set: &ConformanceSet, device: &Device) -> Outcome {
    let case = set.case("bottleneck_block_r50");
    let train = device.clone().autodiff();
    let block = Bottleneck::with_downsample(
        case.param_usize("inplanes"),
        case.param_usize("planes"),
        case.param_usize("stride"),
        case.params()["downsample"].as_bool().expect("downsample"),
        &train,
    );
    let (block, _) = load_tensors(block, tensors_with_prefix(&case, "w."), &LoadOptions::new())
        .expect("weights load");
    let mut c = Checker::new(&case);
    let x = tensor::<4>(&case, "x", &train).require_grad();
    let out = block.forward(x.clone());
    let grads = out.clone().mul(tensor(&case, "r", &train)).sum().backward();
    c.check_tensor("out_train", out);
    c.check_tensor("grad.x", x.grad(&grads).expect("gradient of x"));
    check_grads(&mut c, &block, &grads);
    check_buffers(&mut c, &block);
    let out = block.valid().forward(tensor(&case, "x", device));
    c.check_tensor("out_eval", out);
    outcome(&c)
}

fn infonce_case(set: &ConformanceSet, device: &Device) -> Outcome {
    let case = set.case("moco_infonce");
    let dev = device.clone().autodiff();
    let t = case.param_f64("T");
    let q_raw: Tensor<2> = tensor(&case, "q_raw", &dev);
    let q: Tensor<2> = tensor(&case, "q", &dev);
    let k: Tensor<2> = tensor(&case, "k", &dev);
    let queue: Tensor<2> = tensor(&case, "queue", &dev);
    let mut c = Checker::new(&case);
    let logits = moco_logits(q.clone(), k.clone(), queue.clone(), t).expect("logits");
    c.check_tensor("logits", logits);
    let leaf = q.require_grad();
    let out = InfoNceLoss::new(t)
        .forward(leaf.clone(), k.clone(), queue.clone())
        .expect("loss");
    c.check("loss", &values(out.loss.clone()));
    c.check("acc1", &[out.acc1]);
    c.check("acc5", &[out.acc5]);
    let grads = out.loss.backward();
    c.check("dloss_dq", &values(leaf.grad(&grads).expect("grad")));
    let raw = q_raw.require_grad();
    let out = InfoNceLoss::new(t)
        .forward(normalize(raw.clone(), 1).expect("normalize"), k, queue)
        .expect("loss");
    let grads = out.loss.backward();
    c.check("dloss_dq_raw", &values(raw.grad(&grads).expect("grad")));
    outcome(&c)
}

fn hard_loss_case(set: &ConformanceSet, name: &str, device: &Device) -> Outcome {
    let case = set.case(name);
    let dev = device.clone().autodiff();
    let perm = case.i64("perm").into_iter().map(|p| p as usize).collect();
    let mixing = HardMixing::new(case.f32("lam"), case.f32("mu"), perm).expect("mixing");
    let loss = HardFeatureLossConfig::new()
        .with_temperature(case.param_f64("T"))
        .with_weights(case.param_f64s("weights"))
        .with_beta(case.param_f64("beta_a"), case.param_f64("beta_b"))
        .init()
        .expect("loss config");
    let q_raw: Tensor<3> = tensor(&case, "q_raw", &dev);
    let q: Tensor<3> = tensor(&case, "q", &dev);
    let k: Tensor<3> = tensor(&case, "k", &dev);
    let queue: Tensor<3> = tensor(&case, "queue", &dev);
    let mut c = Checker::new(&case);
    let (qh, kh) = hard_features(q.clone(), k.clone(), &mixing.lam).expect("hard features");
    c.check_tensor("qh", qh);
    c.check_tensor("kh", kh);
    c.check_tensor(
        "queue_mixed",
        mixed_queue(queue.clone(), &mixing).expect("mixed queue"),
    );
    let logits = loss
        .logits(q.clone(), k.clone(), queue.clone(), Some(&mixing))
        .expect("logits");
    c.check_tensor("logits", logits);
    let leaf = q.require_grad();
    let out = loss
        .forward(leaf.clone(), k.clone(), queue.clone(), Some(&mixing))
        .expect("loss");
    c.check("losses", &values(out.per_scale.clone()));
    c.check("total", &values(out.loss.clone()));
    c.check("keys", &values(out.keys.clone()));
    let grads = out.loss.backward();
    c.check("dloss_dq", &values(leaf.grad(&grads).expect("grad")));
    let raw = q_raw.require_grad();
    let out = loss
        .forward(
            normalize(raw.clone(), 2).expect("normalize"),
            k,
            queue.clone(),
            Some(&mixing),
        )
        .expect("loss");
    let grads = out.loss.backward();
    c.check("dloss_dq_raw", &values(raw.grad(&grads).expect("grad")));
    let ptr = case.i64("ptr")[0] as usize;
    let mut ring = MomentumQueue::from_parts(queue.inner(), ptr).expect("queue");
    ring.enqueue(out.keys).expect("enqueue");
    c.check("queue_after", &values(ring.tensor()));
    c.check("ptr_after", &[ring.ptr() as f32]);
    outcome(&c)
}

fn probe_metrics_case(set: &ConformanceSet, device: &Device) -> Outcome {
    let case = set.case("linear_probe_metrics");
    let dev = device.clone().autodiff();
    let logits = tensor::<2>(&case, "logits", &dev).require_grad();
    let targets = Tensor::<1, Int>::from_data(
        TensorData::new(case.i64("targets"), [case.param_usize("N")]),
        &dev,
    );
    let mut c = Checker::new(&case);
    let loss = cross_entropy(logits.clone(), targets.clone()).expect("cross entropy");
    c.check("loss", &values(loss.clone()));
    let acc = topk_accuracy(logits.clone(), targets, &[1, 5]).expect("accuracy");
    c.check("acc1", &[acc[0]]);
    c.check("acc5", &[acc[1]]);
    let grads = loss.backward();
    c.check("dloss_dlogits", &values(logits.grad(&grads).expect("grad")));
    outcome(&c)
}

/// Parameters as flat vectors: SGD is element-wise.
#[derive(Module, Debug)]
struct Flat {
    params: Vec<Param<Tensor<1>>>,
}

fn sgd_case(set: &ConformanceSet, device: &Device) -> Outcome {
    let case = set.case("sgd_and_schedule");
    let p = case.params();
    let dev = device.clone().autodiff();
    let n_params = p["param_shapes"].as_array().expect("param_shapes").len();
    let mut model = Flat {
        params: (0..n_params)
            .map(|i| {
                let v = case.f32(&format!("p{i}"));
                let n = v.len();
                Param::from_tensor(Tensor::from_data(TensorData::new(v, [n]), &dev))
            })
            .collect(),
    };
    let mut sgd = SgdConfig::new()
        .with_momentum(case.param_f64("momentum"))
        .with_dampening(case.param_f64("dampening"))
        .with_weight_decay(case.param_f64("weight_decay"))
        .with_nesterov(p["nesterov"].as_bool().expect("nesterov"))
        .init()
        .expect("sgd config");
    let lr = case.param_f64("lr");
    let mut c = Checker::new(&case);
    for s in 1..=case.param_usize("steps") {
        let mut grads = GradientsParams::new();
        for (i, param) in model.params.iter().enumerate() {
            let g = case.f32(&format!("grad{s}.p{i}"));
            let n = g.len();
            grads.register(
                param.id,
                Tensor::<1>::from_data(TensorData::new(g, [n]), device),
            );
        }
        model = sgd.step(lr, model, grads);
        let buffers = sgd.buffers().expect("buffers");
        for (i, param) in model.params.iter().enumerate() {
            c.check(&format!("step{s}.p{i}"), &values(param.val()));
            match buffers.iter().find(|b| b.name == format!("params.{i}")) {
                Some(b) => c.check(&format!("step{s}.buf{i}"), &b.values),
                None => c.fail(format!("no momentum buffer for params.{i}")),
            }
        }
    }
    outcome(&c)
}

/// bf16 training follows f32 (see `mhcl::curves::loss_curve`).
fn bf16_curve_case(device: &Device, steps: usize) -> Outcome {
    if let Err(e) = Precision::Bf16.check_device(device) {
        return Outcome {
            status: Status::Unsupported,
            tensors: 0,
            worst_ratio: 0.0,
            worst_tensor: String::new(),
            detail: e.to_string(),
        };
    }
    let cfg = CurveConfig {
        steps,
        ..CurveConfig::default()
    };
    let curves = loss_curve(Precision::F32, device, &cfg)
        .and_then(|a| loss_curve(Precision::Bf16, device, &cfg).map(|b| (a, b)));
    let cmp = match curves {
        Ok((a, b)) => compare_curves(&a, &b),
        Err(e) => return Outcome::failed(e.to_string()),
    };
    Outcome {
        status: if cmp.passed() {
            Status::Pass
        } else {
            Status::Fail
        },
        tensors: cmp.reference.len(),
        worst_ratio: f64::from(cmp.worst_ratio),
        worst_tensor: "25-step window means".into(),
        detail: if cmp.passed() {
            format!("f32 {:.3?} bf16 {:.3?}", cmp.reference, cmp.other)
        } else {
            cmp.failures.join("; ")
        },
    }
}

fn vector_dir(arg: Option<PathBuf>) -> PathBuf {
    if let Some(d) = arg {
        return d;
    }
    if let Some(d) = std::env::var_os(ssl_conformance::ENV_VAR) {
        return PathBuf::from(d);
    }
    let local = Path::new("tests/conformance");
    if local.join("manifest.json").is_file() {
        return local.to_path_buf();
    }
    ssl_conformance::committed_dir()
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

type Row = (String, Outcome, f64);

/// Writes the results so far as JSON; exits with status 1 when the file cannot be written.
fn write_json(path: &Path, spec: &str, rows: &[Row]) {
    let count = |st: Status| rows.iter().filter(|(_, o, _)| o.status == st).count();
    let items: Vec<String> = rows
        .iter()
        .map(|(name, o, secs)| {
            format!(
                "{{\"case\": {}, \"status\": \"{}\", \"tensors\": {}, \"worst_ratio\": {}, \"worst_tensor\": {}, \"seconds\": {secs:.2}, \"detail\": {}}}",
                json_str(name),
                o.status.name(),
                o.tensors,
                if o.worst_ratio.is_finite() {
                    format!("{:.4}", o.worst_ratio)
                } else {
                    "null".into()
                },
                json_str(&o.worst_tensor),
                json_str(&one_line(&o.detail)),
            )
        })
        .collect();
    let text = format!(
        "{{\"device\": {}, \"passed\": {}, \"failed\": {}, \"cases\": [\n  {}\n]}}\n",
        json_str(spec),
        count(Status::Pass),
        count(Status::Fail),
        items.join(",\n  ")
    );
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("error: {}: {e}", path.display());
        std::process::exit(1);
    }
}

fn usage() -> ! {
    eprintln!("usage: gpu_conformance [--device SPEC] [--dir DIR] [--curve-steps N] [--json PATH]");
    std::process::exit(2);
}

/// Runs the check with `args` (the command line without the program name); returns the exit
/// status.
pub fn main(args: impl IntoIterator<Item = String>) -> i32 {
    let mut spec = "cpu".to_string();
    let mut dir = None;
    let mut curve_steps = 300usize;
    let mut json = None;
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--device" => spec = value(),
            "--dir" => dir = Some(PathBuf::from(value())),
            "--curve-steps" => curve_steps = value().parse().unwrap_or_else(|_| usage()),
            "--json" => json = Some(PathBuf::from(value())),
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    let device = match parse_device(&spec, None) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {}", one_line(&e.to_string()));
            std::process::exit(2);
        }
    };
    let dir = vector_dir(dir);
    let set = match catch_silent(|| ConformanceSet::open_dir(&dir)) {
        Ok(set) => set,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            std::process::exit(2);
        }
    };
    println!(
        "conformance vectors {} on --device {spec}",
        set.dir().display()
    );
    type CaseFn<'a> = Box<dyn Fn() -> Outcome + 'a>;
    let mut cases: Vec<(&str, CaseFn)> = vec![
        (
            "encoder_resnet18_mhcl",
            Box::new(|| encoder_case(&set, "encoder_resnet18_mhcl", &device)),
        ),
        (
            "encoder_resnet50w16_mhcl",
            Box::new(|| encoder_case(&set, "encoder_resnet50w16_mhcl", &device)),
        ),
        (
            "bottleneck_block_r50",
            Box::new(|| bottleneck_case(&set, &device)),
        ),
        ("moco_infonce", Box::new(|| infonce_case(&set, &device))),
        (
            "mhcl_hard_loss",
            Box::new(|| hard_loss_case(&set, "mhcl_hard_loss", &device)),
        ),
        (
            "mhcl_hard_loss_wrap",
            Box::new(|| hard_loss_case(&set, "mhcl_hard_loss_wrap", &device)),
        ),
        (
            "linear_probe_metrics",
            Box::new(|| probe_metrics_case(&set, &device)),
        ),
        ("sgd_and_schedule", Box::new(|| sgd_case(&set, &device))),
    ];
    if curve_steps > 0 {
        let device = &device;
        cases.push((
            "bf16_loss_curve",
            Box::new(move || bf16_curve_case(device, curve_steps)),
        ));
    }
    let mut rows: Vec<Row> = Vec::new();
    for (name, run) in &cases {
        let t = Instant::now();
        let outcome = catch_silent(run).unwrap_or_else(|e| Outcome::failed(format!("panic: {e}")));
        let secs = t.elapsed().as_secs_f64();
        let worst = if outcome.worst_tensor.is_empty() {
            String::new()
        } else {
            format!(
                "; worst {} at {:.3} of its tolerance",
                outcome.worst_tensor, outcome.worst_ratio
            )
        };
        println!(
            "{:<11} {name:<26} {} tensors{worst} ({secs:.1} s){}",
            outcome.status.name(),
            outcome.tensors,
            if outcome.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", one_line(&outcome.detail))
            }
        );
        rows.push((name.to_string(), outcome, secs));
        if let Some(path) = &json {
            // Rewritten after every case: a run stopped by a timeout keeps what it did.
            write_json(path, &spec, &rows);
        }
    }
    let failed = rows
        .iter()
        .filter(|(_, o, _)| o.status == Status::Fail)
        .count();
    let passed = rows
        .iter()
        .filter(|(_, o, _)| o.status == Status::Pass)
        .count();
    println!(
        "{passed} passed, {failed} failed, {} unsupported on --device {spec}",
        rows.len() - passed - failed
    );
    if let Some(path) = &json {
        write_json(path, &spec, &rows);
    }
    i32::from(failed > 0)
}
