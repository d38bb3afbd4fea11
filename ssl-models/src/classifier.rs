//! The linear head of the linear probe (`main_lincls.py`).

use burn::module::{
    Content, Devices, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper, ModuleVisitor,
    Param,
};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;

use crate::error::{ModelsError, Result};

/// Configuration of a [`LinearClassifier`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinearClassifierConfig {
    /// Input features (the encoder's pooled dimension: 512 / 2048 at width 64).
    pub in_dim: usize,
    /// Number of classes.
    pub classes: usize,
}

impl LinearClassifierConfig {
    /// A head from `in_dim` features to `classes` logits.
    pub fn new(in_dim: usize, classes: usize) -> Self {
        Self { in_dim, classes }
    }

    /// Sets the input dimension.
    pub fn with_in_dim(mut self, in_dim: usize) -> Self {
        self.in_dim = in_dim;
        self
    }

    /// Sets the number of classes.
    pub fn with_classes(mut self, classes: usize) -> Self {
        self.classes = classes;
        self
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`ModelsError::InvalidConfig`] when a dimension is zero.
    pub fn validate(&self) -> Result<()> {
        if self.in_dim == 0 || self.classes == 0 {
            return Err(ModelsError::InvalidConfig(format!(
                "linear classifier needs in_dim >= 1 and classes >= 1, got {} and {}",
                self.in_dim, self.classes
            )));
        }
        Ok(())
    }

    /// Builds the head as `main_lincls.py` initializes it: `fc.weight.data.normal_(0, 0.01)`,
    /// `fc.bias.data.zero_()`.
    ///
    /// # Errors
    /// As [`LinearClassifierConfig::validate`].
    pub fn try_init(&self, device: &Device) -> Result<LinearClassifier> {
        self.validate()?;
        let mut linear = LinearConfig::new(self.in_dim, self.classes)
            .with_initializer(Initializer::Normal {
                mean: 0.0,
                std: 0.01,
            })
            .init(device);
        linear.bias = Some(Initializer::Zeros.init([self.classes], device));
        Ok(LinearClassifier { linear })
    }

    /// Builds the head (see [`LinearClassifierConfig::try_init`]).
    ///
    /// # Panics
    /// When a dimension is zero.
    pub fn init(&self, device: &Device) -> LinearClassifier {
        self.try_init(device)
            .unwrap_or_else(|e| panic!("LinearClassifierConfig::init: {e}"))
    }
}

/// A Linear(in_dim, classes) head. It adds no path segment: placed in a field `fc` of a
/// module, its tensors are `fc.weight` (PyTorch layout `(classes, in_dim)` when saved) and
/// `fc.bias`.
#[derive(Debug, Clone)]
pub struct LinearClassifier {
    /// The layer (burn layout: weight `[in_dim, classes]`).
    pub linear: Linear,
}

impl LinearClassifier {
    /// Logits `(N, classes)` of features `(N, in_dim)`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear.forward(x)
    }

    /// Input dimension.
    pub fn in_dim(&self) -> usize {
        self.linear.weight.shape().dims::<2>()[0]
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.linear.weight.shape().dims::<2>()[1]
    }

    /// The weight `[in_dim, classes]` and bias `[classes]` parameters.
    pub fn params(&self) -> (&Param<Tensor<2>>, Option<&Param<Tensor<1>>>) {
        (&self.linear.weight, self.linear.bias.as_ref())
    }

    /// The inner Linear (e.g. to put it into [`crate::ResNet::fc`]).
    pub fn into_linear(self) -> Linear {
        self.linear
    }
}

impl Module for LinearClassifier {
    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        self.linear.visit(visitor);
    }

    fn map<M: ModuleMapper>(self, mapper: &mut M) -> Self {
        Self {
            linear: self.linear.map(mapper),
        }
    }

    fn collect_devices(&self, devices: Devices) -> Devices {
        self.linear.collect_devices(devices)
    }

    fn fork(self, device: &Device) -> Self {
        Self {
            linear: self.linear.fork(device),
        }
    }

    fn to_device(self, device: &Device) -> Self {
        Self {
            linear: self.linear.to_device(device),
        }
    }

    fn valid(&self) -> Self {
        Self {
            linear: self.linear.valid(),
        }
    }

    fn train(self) -> Self {
        Self {
            linear: self.linear.train(),
        }
    }

    fn materialize(self) -> Self {
        Self {
            linear: self.linear.materialize(),
        }
    }
}

impl ModuleDisplayDefault for LinearClassifier {
    fn content(&self, content: Content) -> Option<Content> {
        content.add_single(&self.linear).optional()
    }

    fn num_params(&self) -> usize {
        Module::num_params(self)
    }
}

impl ModuleDisplay for LinearClassifier {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::module_tensors;

    #[test]
    fn init_as_main_lincls() {
        let dev = Device::flex();
        dev.seed(1);
        let head = LinearClassifierConfig::new(512, 100).init(&dev);
        let t = module_tensors(&head).unwrap();
        assert_eq!(t["weight"].shape, vec![100, 512]);
        assert!(t["bias"].to_f32().iter().all(|v| *v == 0.0));
        let w = t["weight"].to_f32();
        let std = (w.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
        assert!((std - 0.01).abs() < 5e-4, "{std}");
        let x = Tensor::<2>::ones([3, 512], &dev);
        assert_eq!(head.forward(x).dims(), [3, 100]);
        assert_eq!((head.in_dim(), head.classes()), (512, 100));
        assert!(LinearClassifierConfig::new(0, 3).try_init(&dev).is_err());
    }
}
