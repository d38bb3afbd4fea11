//! One case's comparisons, collected: [`Checker`] compares tensors of a run with the case's
//! vectors at their stored tolerances and keeps every failure and the worst error ratio, so
//! a test reports all mismatching tensors at once and the GPU check prints one line per case.
//! [`test_device`] is the device the conformance tests run on (`SSL_TEST_DEVICE`).

use burn::prelude::*;

use crate::{Case, compare};

/// Environment variable naming the device of the conformance tests: `cpu` (default), or
/// `cuda[:N]` / `vulkan[:N]` when ssl-conformance is built with the feature of that name.
pub const DEVICE_VAR: &str = "SSL_TEST_DEVICE";

/// The plain device named by [`DEVICE_VAR`] (the Flex CPU device when unset). Panics, naming
/// the variable, for a device this build lacks: a test never silently runs elsewhere.
pub fn test_device() -> Device {
    let spec = std::env::var(DEVICE_VAR).unwrap_or_else(|_| "cpu".into());
    let (kind, index) = match spec.split_once(':') {
        Some((k, i)) => (
            k.to_string(),
            i.parse::<usize>()
                .unwrap_or_else(|_| panic!("{DEVICE_VAR}={spec}: bad device index")),
        ),
        None => (spec.clone(), 0),
    };
    let _ = index;
    match kind.as_str() {
        "cpu" | "flex" => Device::flex(),
        #[cfg(feature = "cuda")]
        "cuda" => Device::cuda(index),
        #[cfg(feature = "vulkan")]
        "vulkan" => Device::vulkan(burn::tensor::DeviceKind::DiscreteGpu(index)),
        other => panic!(
            "{DEVICE_VAR}={spec}: `{other}` is not a device of this build (cpu; cuda and vulkan \
             with the ssl-conformance features of those names)"
        ),
    }
}

/// Worst `|got - want| / (atol + rtol |want|)` over tensor `name` of `case` (<= 1 passes;
/// integer tensors must match exactly).
pub fn error_ratio(case: &Case, name: &str, got: &[f32]) -> f64 {
    let want = case.f32(name);
    let (atol, rtol) = tolerance(case, name);
    let ratio = want
        .iter()
        .zip(got)
        .map(|(&w, &g)| {
            let err = (f64::from(g) - f64::from(w)).abs();
            let tol = atol + rtol * f64::from(w).abs();
            match (tol == 0.0, err == 0.0) {
                (true, true) => 0.0,
                (true, false) => f64::INFINITY,
                _ => err / tol,
            }
        })
        .fold(0.0, f64::max);
    if ratio.is_nan() { f64::INFINITY } else { ratio }
}

fn tolerance(case: &Case, name: &str) -> (f64, f64) {
    if case.tensor(name).dtype == "I64" {
        (0.0, 0.0)
    } else {
        case.tolerance(name)
    }
}

/// The comparisons of one case; see the module docs.
pub struct Checker<'a> {
    case: &'a Case,
    count: usize,
    worst: (f64, String),
    failures: Vec<String>,
}

impl<'a> Checker<'a> {
    /// No comparison yet.
    pub fn new(case: &'a Case) -> Self {
        Self {
            case,
            count: 0,
            worst: (0.0, String::new()),
            failures: Vec::new(),
        }
    }

    /// Compares `got` with tensor `name` of the case.
    pub fn check(&mut self, name: &str, got: &[f32]) {
        self.count += 1;
        let want = self.case.f32(name);
        if want.len() != got.len() {
            self.failures
                .push(format!("{name}: {} values, want {}", got.len(), want.len()));
            return;
        }
        let ratio = error_ratio(self.case, name, got);
        if ratio > self.worst.0 || self.worst.1.is_empty() {
            self.worst = (ratio, name.to_string());
        }
        let (atol, rtol) = tolerance(self.case, name);
        if let Some(msg) = compare(&want, got, atol, rtol) {
            self.failures
                .push(format!("{name}: {}", msg.replace('\n', " ")));
        }
    }

    /// Compares a tensor (shape, then values read back as f32) with tensor `name`.
    pub fn check_tensor<const D: usize>(&mut self, name: &str, t: Tensor<D>) {
        if t.dims().to_vec() != self.case.shape(name) {
            self.count += 1;
            self.failures.push(format!(
                "{name}: shape {:?}, want {:?}",
                t.dims(),
                self.case.shape(name)
            ));
            return;
        }
        let values = t
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default();
        self.check(name, &values);
    }

    /// The case.
    pub fn case(&self) -> &Case {
        self.case
    }

    /// Tensors compared.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The worst error ratio and its tensor.
    pub fn worst(&self) -> (f64, &str) {
        (self.worst.0, &self.worst.1)
    }

    /// Records a failure found outside [`Checker::check`] (a tensor the run lacks).
    pub fn fail(&mut self, message: impl Into<String>) {
        self.count += 1;
        self.failures.push(message.into());
    }

    /// One entry per tensor out of tolerance.
    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// Panics listing every failure; otherwise prints the case's worst ratio to stderr.
    pub fn assert_passed(&self) {
        assert!(
            self.failures.is_empty(),
            "{}: {} of {} tensors out of tolerance: {}",
            self.case.name,
            self.failures.len(),
            self.count,
            self.failures.join("; ")
        );
        eprintln!(
            "{}: {} tensors within tolerance; worst {} at {:.3} of its tolerance",
            self.case.name, self.count, self.worst.1, self.worst.0
        );
    }
}
