//! Batch normalization with PyTorch's exact semantics, and the module buffers it keeps.
//!
//! burn's own `BatchNorm` updates `running_var` with the biased batch variance and has no
//! `num_batches_tracked`; PyTorch's `nn.BatchNorm2d` uses the unbiased variance for the running
//! estimate and counts the batches. [`BatchNorm2d`] reproduces PyTorch: parameter and buffer
//! names (`weight`, `bias`, `running_mean`, `running_var`, `num_batches_tracked`), values and
//! gradients.

use std::sync::{Arc, Mutex, MutexGuard};

use burn::module::{
    Content, Devices, Flag, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper,
    ModuleVisitor, Param, ParamId,
};
use burn::prelude::*;
use burn::tensor::module::batch_norm;

use crate::kernels::batchnorm::{batch_norm_relu_train, batch_norm_train};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked while holding it; the tensor inside
    // is still a complete value.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A float tensor that belongs to a module's state but is not trained (PyTorch's
/// `register_buffer`): BatchNorm's `running_mean` and `running_var`.
///
/// Module visitors and mappers see it as a float tensor under the field's name, so it is saved,
/// loaded, moved between devices and cast like a parameter; optimizers find no gradient for it
/// and leave it alone. It can be updated through `&self` during a forward pass.
///
/// Unlike burn's `RunningState`, `clone()` gives an independent copy: updating the clone does
/// not change the original.
#[derive(Debug)]
pub struct Buffer {
    id: ParamId,
    value: Arc<Mutex<Tensor<1>>>,
}

impl Buffer {
    /// A new buffer holding `value`.
    pub fn new(value: Tensor<1>) -> Self {
        Self::with_id(ParamId::new(), value)
    }

    fn with_id(id: ParamId, value: Tensor<1>) -> Self {
        Self {
            id,
            value: Arc::new(Mutex::new(value)),
        }
    }

    /// The current value (a cheap handle; the data is shared until written).
    pub fn value(&self) -> Tensor<1> {
        lock(&self.value).clone()
    }

    /// Replaces the value.
    pub fn set(&self, value: Tensor<1>) {
        *lock(&self.value) = value;
    }
}

impl Clone for Buffer {
    fn clone(&self) -> Self {
        Self::with_id(self.id, self.value())
    }
}

impl Module for Buffer {
    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        visitor.visit_float(&Param::initialized(self.id, self.value()));
    }

    fn map<M: ModuleMapper>(self, mapper: &mut M) -> Self {
        let out = mapper.map_float(Param::initialized(self.id, self.value()));
        // A buffer is never an optimizer target, whatever the mapper did to the tensor.
        let value = out.val().detach().set_require_grad(false);
        Self::with_id(out.id, value)
    }

    fn to_device(self, device: &Device) -> Self {
        let value = self.value().to_device(device);
        self.set(value);
        self
    }

    fn fork(self, device: &Device) -> Self {
        self.to_device(device)
    }

    fn collect_devices(&self, mut devices: Devices) -> Devices {
        let device = lock(&self.value).device();
        if !devices.contains(&device) {
            devices.push(device);
        }
        devices
    }

    fn valid(&self) -> Self {
        Self::with_id(self.id, self.value().without_autodiff())
    }

    fn train(self) -> Self {
        Self::with_id(self.id, self.value().autodiff())
    }

    fn materialize(self) -> Self {
        self
    }
}

impl ModuleDisplayDefault for Buffer {
    fn content(&self, content: Content) -> Option<Content> {
        let shape = lock(&self.value).dims();
        content
            .add_formatted(&format!("Buffer {{shape: {shape:?}}}"))
            .optional()
    }
}

impl ModuleDisplay for Buffer {}

/// PyTorch's `num_batches_tracked`: an integer buffer counting train-mode forward passes.
///
/// Stored as an integer tensor of shape `[1]` (burn has no 0-d tensors); the weight functions of
/// this crate read and write it as PyTorch's 0-d `int64` tensor. Visitors see it through
/// `visit_int`, so it is saved and loaded under `<bn>.num_batches_tracked`. Counting runs on
/// the device (one integer add per train-mode forward), without a host round trip.
#[derive(Debug)]
pub struct BatchCounter {
    id: ParamId,
    value: Arc<Mutex<Tensor<1, Int>>>,
}

impl BatchCounter {
    /// A counter at zero on `device`.
    pub fn new(device: &Device) -> Self {
        Self::with_id(ParamId::new(), Tensor::zeros([1], device))
    }

    fn with_id(id: ParamId, value: Tensor<1, Int>) -> Self {
        Self {
            id,
            value: Arc::new(Mutex::new(value)),
        }
    }

    /// The counter as a tensor of shape `[1]`.
    pub fn value(&self) -> Tensor<1, Int> {
        lock(&self.value).clone()
    }

    /// Reads the count (synchronizes with the device).
    pub fn get(&self) -> i64 {
        self.value().into_scalar::<i64>()
    }

    /// Sets the count.
    pub fn set(&self, count: i64) {
        let mut v = lock(&self.value);
        let device = v.device();
        *v = Tensor::from_data(TensorData::new(vec![count], [1]), (&device, v.dtype()));
    }

    fn increment(&self) {
        let mut v = lock(&self.value);
        *v = v.clone().add_scalar(1);
    }
}

impl Clone for BatchCounter {
    fn clone(&self) -> Self {
        Self::with_id(self.id, self.value())
    }
}

impl Module for BatchCounter {
    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        visitor.visit_int(&Param::initialized(self.id, self.value()));
    }

    fn map<M: ModuleMapper>(self, mapper: &mut M) -> Self {
        let before = self.value();
        let dtype = before.dtype();
        let out = mapper.map_int(Param::initialized(self.id, before));
        let mut value = out.val();
        // Loaders keep the file's integer width (PyTorch writes int64); keep the counter's own.
        if value.dtype() != dtype {
            value = value.cast(dtype);
        }
        Self::with_id(out.id, value)
    }

    fn to_device(self, device: &Device) -> Self {
        let value = self.value().to_device(device);
        *lock(&self.value) = value;
        self
    }

    fn fork(self, device: &Device) -> Self {
        self.to_device(device)
    }

    fn collect_devices(&self, mut devices: Devices) -> Devices {
        let device = lock(&self.value).device();
        if !devices.contains(&device) {
            devices.push(device);
        }
        devices
    }

    fn valid(&self) -> Self {
        Self::with_id(self.id, self.value().without_autodiff())
    }

    fn train(self) -> Self {
        Self::with_id(self.id, self.value().autodiff())
    }

    fn materialize(self) -> Self {
        self
    }
}

impl ModuleDisplayDefault for BatchCounter {
    fn content(&self, content: Content) -> Option<Content> {
        content.add_formatted(&"BatchCounter").optional()
    }
}

impl ModuleDisplay for BatchCounter {}

/// Configuration of [`BatchNorm2d`]; the defaults are PyTorch's (`eps=1e-5`, `momentum=0.1`).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm2dConfig {
    /// Number of channels `C` of the `(N, C, H, W)` input.
    pub num_features: usize,
    /// Added to the variance before the square root (PyTorch `eps`, default `1e-5`).
    pub eps: f64,
    /// Weight of the new batch statistic in the running estimates (PyTorch `momentum`,
    /// default `0.1`): `running = (1 - momentum) * running + momentum * batch`.
    pub momentum: f64,
}

impl BatchNorm2dConfig {
    /// PyTorch defaults for `num_features` channels.
    pub fn new(num_features: usize) -> Self {
        Self {
            num_features,
            eps: 1e-5,
            momentum: 0.1,
        }
    }

    /// Sets `eps`.
    pub fn with_eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }

    /// Sets `momentum`.
    pub fn with_momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }

    /// A layer initialized as torchvision does (`nn.init.constant_(weight, 1)`,
    /// `constant_(bias, 0)`), with `running_mean = 0`, `running_var = 1`,
    /// `num_batches_tracked = 0` (PyTorch's `reset_running_stats`).
    pub fn init(&self, device: &Device) -> BatchNorm2d {
        let c = self.num_features;
        BatchNorm2d {
            weight: Param::from_tensor(Tensor::ones([c], device)),
            bias: Param::from_tensor(Tensor::zeros([c], device)),
            running_mean: Buffer::new(Tensor::zeros([c], device)),
            running_var: Buffer::new(Tensor::ones([c], device)),
            num_batches_tracked: BatchCounter::new(device),
            training: Param::from_bool(true),
            momentum: self.momentum,
            eps: self.eps,
        }
    }
}

/// `torch.nn.BatchNorm2d` with `affine=True, track_running_stats=True`.
///
/// * Train mode (the input is on an autodiff device and the module's training flag is on, as
///   for burn's own `BatchNorm`): normalizes with the batch mean and the biased batch variance
///   (divide by `n = N*H*W`), gradients flow through the statistics; then updates
///   `running_mean = (1-m)*running_mean + m*mean`,
///   `running_var = (1-m)*running_var + m*var*n/(n-1)` (PyTorch uses the *unbiased* variance
///   for the running estimate) and `num_batches_tracked += 1`.
/// * Eval mode (plain device, or after `valid()` / `freeze()`): normalizes with the running
///   statistics.
#[derive(Module, Debug)]
pub struct BatchNorm2d {
    /// Scale `gamma` (PyTorch `weight`), shape `[C]`.
    pub weight: Param<Tensor<1>>,
    /// Shift `beta` (PyTorch `bias`), shape `[C]`.
    pub bias: Param<Tensor<1>>,
    /// Running mean, shape `[C]`.
    pub running_mean: Buffer,
    /// Running (unbiased) variance, shape `[C]`.
    pub running_var: Buffer,
    /// Number of train-mode forward passes.
    pub num_batches_tracked: BatchCounter,
    /// Train-mode switch (turned off by `valid()` and `freeze()`).
    pub training: Param<Flag>,
    /// Momentum of the running estimates.
    pub momentum: f64,
    /// Variance epsilon.
    pub eps: f64,
}

impl BatchNorm2d {
    /// Number of channels.
    pub fn num_features(&self) -> usize {
        self.weight.shape().dims::<1>()[0]
    }

    /// Whether a forward of an input on `device` takes the train path.
    pub fn is_training_on(&self, device: &Device) -> bool {
        device.is_autodiff() && self.training.is_enabled()
    }

    /// Normalizes an `(N, C, H, W)` input; see the type's docs for train and eval mode.
    ///
    /// # Panics
    /// When the input does not have `C` channels.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_with(x, false)
    }

    /// `relu(self.forward(x))`, the BatchNorm + ReLU of a ResNet, with the ReLU fused into the
    /// normalization in train mode on the Flex device
    /// ([`crate::kernels::batchnorm::batch_norm_relu_train`]).
    ///
    /// # Panics
    /// When the input does not have `C` channels.
    pub fn forward_relu(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_with(x, true)
    }

    fn forward_with(&self, x: Tensor<4>, relu: bool) -> Tensor<4> {
        if !self.is_training_on(&x.device()) {
            let y = batch_norm(
                x,
                self.weight.val(),
                self.bias.val(),
                self.running_mean.value(),
                self.running_var.value(),
                self.eps,
            );
            return if relu {
                burn::tensor::activation::relu(y)
            } else {
                y
            };
        }
        let [b, _, h, w] = x.dims();
        let n = (b * h * w) as f64;
        let train = if relu {
            batch_norm_relu_train
        } else {
            batch_norm_train
        };
        let (output, mean, variance) = train(x, self.weight.val(), self.bias.val(), self.eps);
        let m = self.momentum;
        // PyTorch: running_var uses the unbiased estimate var * n / (n - 1).
        let unbiased = n / (n - 1.0).max(1.0);
        let rm = self.running_mean.value();
        self.running_mean
            .set(rm.mul_scalar(1.0 - m).add(mean.mul_scalar(m)).detach());
        let rv = self.running_var.value();
        self.running_var.set(
            rv.mul_scalar(1.0 - m)
                .add(variance.mul_scalar(m * unbiased))
                .detach(),
        );
        self.num_batches_tracked.increment();
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: Tensor<1>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    #[test]
    fn train_forward_updates_running_stats_with_unbiased_variance() {
        let dev = Device::flex().autodiff();
        let bn = BatchNorm2dConfig::new(1).init(&dev);
        // 4 values 1, 2, 3, 4: mean 2.5, biased var 1.25, unbiased 5/3.
        let x = Tensor::<4>::from_data(TensorData::new(vec![1f32, 2., 3., 4.], [1, 1, 2, 2]), &dev);
        let y = bn.forward(x);
        let y = values(y.reshape([4]));
        let s = (1.25f32 + 1e-5).sqrt();
        for (got, want) in y.iter().zip([-1.5f32, -0.5, 0.5, 1.5]) {
            assert!((got - want / s).abs() < 1e-5, "{got} vs {}", want / s);
        }
        let rm = values(bn.running_mean.value())[0];
        let rv = values(bn.running_var.value())[0];
        assert!((rm - 0.25).abs() < 1e-6, "{rm}");
        assert!((rv - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-6, "{rv}");
        assert_eq!(bn.num_batches_tracked.get(), 1);
    }

    #[test]
    fn eval_forward_uses_running_stats_and_counts_nothing() {
        let dev = Device::flex();
        let bn = BatchNorm2dConfig::new(1).init(&dev);
        bn.running_mean.set(Tensor::from_data([1.0f32], &dev));
        bn.running_var.set(Tensor::from_data([4.0f32], &dev));
        let x = Tensor::<4>::from_data(TensorData::new(vec![3f32], [1, 1, 1, 1]), &dev);
        let y = values(bn.forward(x).reshape([1]))[0];
        assert!((y - 2.0 / (4.0f32 + 1e-5).sqrt()).abs() < 1e-6);
        assert_eq!(bn.num_batches_tracked.get(), 0);
    }

    #[test]
    fn clone_is_independent() {
        let dev = Device::flex().autodiff();
        let bn = BatchNorm2dConfig::new(2).init(&dev);
        let copy = bn.clone();
        let x = Tensor::<4>::ones([2, 2, 2, 2], &dev);
        let _ = copy.forward(x);
        assert_eq!(copy.num_batches_tracked.get(), 1);
        assert_eq!(bn.num_batches_tracked.get(), 0);
        assert_eq!(values(bn.running_var.value()), vec![1.0, 1.0]);
    }

    #[test]
    fn valid_switches_to_eval() {
        let dev = Device::flex().autodiff();
        let bn = BatchNorm2dConfig::new(2).init(&dev).valid();
        assert!(!bn.is_training_on(&dev));
        let x = Tensor::<4>::ones([2, 2, 2, 2], &Device::flex());
        let _ = bn.forward(x);
        assert_eq!(bn.num_batches_tracked.get(), 0);
    }
}
