//! A module's tensors by name: [`visit_named`] and [`map_named`] walk a module as burn's
//! `ModuleVisitor` / `ModuleMapper` do and tell each tensor its [`TensorPath`], the dotted
//! field path (`layer1.0.bn1.running_var`) that [`crate::weights`] maps to PyTorch names.
//!
//! ```
//! use burn::module::Param;
//! use burn::prelude::*;
//! use ssl_models::visit::{NamedVisitor, TensorPath, visit_named};
//! use ssl_models::{Arch, ResNetConfig};
//!
//! struct Names(Vec<String>);
//! impl NamedVisitor for Names {
//!     fn float<const D: usize>(&mut self, path: &TensorPath, _: &Param<Tensor<D>>) {
//!         self.0.push(path.name());
//!     }
//! }
//! let net = ResNetConfig::new(Arch::ResNet18).with_width(2).init(&Device::flex());
//! let mut names = Names(Vec::new());
//! visit_named(&net, &mut names);
//! assert!(names.0.contains(&"layer1.0.bn1.running_var".to_string()));
//! ```

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

/// Where a visit is: the field names from the root module to the tensor, and the type of the
/// module each name belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TensorPath {
    names: Vec<String>,
    containers: Vec<String>,
}

impl TensorPath {
    /// The dotted path, e.g. `layer1.0.conv1.weight`.
    pub fn name(&self) -> String {
        self.names.join(".")
    }

    /// The field names, root first.
    pub fn segments(&self) -> &[String] {
        &self.names
    }

    /// The last field name (`weight`, `running_mean`).
    pub fn last(&self) -> Option<&str> {
        self.names.last().map(String::as_str)
    }

    /// The container type of each segment (burn's `container_type`: `Struct:Conv2d`, ...).
    pub fn containers(&self) -> &[String] {
        &self.containers
    }

    fn enter(&mut self, name: &str, container: &str) {
        self.names.push(name.to_string());
        self.containers.push(container.to_string());
    }

    fn exit(&mut self) {
        self.names.pop();
        self.containers.pop();
    }
}

/// Sees each tensor of a module with its path ([`visit_named`]); every method defaults to
/// nothing.
pub trait NamedVisitor {
    /// A float tensor (parameters and float buffers).
    fn float<const D: usize>(&mut self, _path: &TensorPath, _param: &Param<Tensor<D>>) {}
    /// An integer tensor (e.g. BatchNorm's `num_batches_tracked`).
    fn int<const D: usize>(&mut self, _path: &TensorPath, _param: &Param<Tensor<D, Int>>) {}
}

/// Rewrites each tensor of a module knowing its path ([`map_named`]); every method defaults
/// to the identity.
pub trait NamedMapper {
    /// A float tensor.
    fn float<const D: usize>(
        &mut self,
        _path: &TensorPath,
        param: Param<Tensor<D>>,
    ) -> Param<Tensor<D>> {
        param
    }
    /// An integer tensor.
    fn int<const D: usize>(
        &mut self,
        _path: &TensorPath,
        param: Param<Tensor<D, Int>>,
    ) -> Param<Tensor<D, Int>> {
        param
    }
}

struct Walk<'a, V> {
    path: TensorPath,
    inner: &'a mut V,
}

impl<V: NamedVisitor> ModuleVisitor for Walk<'_, V> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.inner.float(&self.path, param);
    }
    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<D, Int>>) {
        self.inner.int(&self.path, param);
    }
}

impl<V: NamedMapper> ModuleMapper for Walk<'_, V> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        self.inner.float(&self.path, param)
    }
    fn map_int<const D: usize>(&mut self, param: Param<Tensor<D, Int>>) -> Param<Tensor<D, Int>> {
        self.inner.int(&self.path, param)
    }
}

/// Visits every tensor of `module` in declaration order, each with its path.
pub fn visit_named<M: Module, V: NamedVisitor>(module: &M, visitor: &mut V) {
    module.visit(&mut Walk {
        path: TensorPath::default(),
        inner: visitor,
    });
}

/// Maps every tensor of `module` in declaration order, each with its path.
pub fn map_named<M: Module, V: NamedMapper>(module: M, mapper: &mut V) -> M {
    module.map(&mut Walk {
        path: TensorPath::default(),
        inner: mapper,
    })
}

/// The gradient of every float tensor of `module` that has one, by path, flattened to two
/// dimensions (rows = the first dimension) in PyTorch's layout: burn stores a `Linear` weight
/// as `(in, out)`, so it is transposed back to PyTorch's `(out, in)`. What conformance checks
/// compare with `param.grad` of the reference.
pub fn named_grads<M: Module>(
    module: &M,
    grads: &burn::tensor::Gradients,
) -> std::collections::BTreeMap<String, Tensor<2>> {
    struct Collect<'a> {
        grads: &'a burn::tensor::Gradients,
        out: std::collections::BTreeMap<String, Tensor<2>>,
    }
    impl NamedVisitor for Collect<'_> {
        fn float<const D: usize>(&mut self, path: &TensorPath, p: &Param<Tensor<D>>) {
            let Some(g) = p.val().grad(self.grads) else {
                return;
            };
            let linear_weight = D == 2
                && path.containers().last().map(String::as_str) == Some("Struct:Linear")
                && path.last() == Some("weight");
            let rows = g.dims().first().copied().unwrap_or(1);
            let g2: Tensor<2> = g.reshape([rows as i64, -1]);
            let g2 = if linear_weight { g2.transpose() } else { g2 };
            self.out.insert(path.name(), g2);
        }
    }
    let mut c = Collect {
        grads,
        out: Default::default(),
    };
    visit_named(module, &mut c);
    c.out
}
