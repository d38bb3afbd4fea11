//! `Module` implementations that add no path segment.
//!
//! burn's derive puts every struct field and every enum variant name into a tensor's path. The
//! PyTorch names this crate reproduces need a few containers to be invisible instead: a block
//! that is either a `BasicBlock` or a `Bottleneck` (`layer1.0.conv1.weight`, no variant name),
//! a head that is one `Linear` (`fc.weight`) or an MLP (`fc.0.weight`, `fc.2.weight`).

/// Implements `Module` + `ModuleDisplay` for an enum whose variants each hold one module, so
/// that the enum itself adds nothing to tensor paths.
macro_rules! transparent_enum_module {
    ($name:ident { $($variant:ident),+ $(,)? }) => {
        impl burn::module::Module for $name {
            fn visit<V: burn::module::ModuleVisitor>(&self, visitor: &mut V) {
                match self {
                    $(Self::$variant(m) => burn::module::Module::visit(m, visitor),)+
                }
            }

            fn map<M: burn::module::ModuleMapper>(self, mapper: &mut M) -> Self {
                match self {
                    $(Self::$variant(m) => Self::$variant(burn::module::Module::map(m, mapper)),)+
                }
            }

            fn to_device(self, device: &burn::tensor::Device) -> Self {
                match self {
                    $(Self::$variant(m) => Self::$variant(burn::module::Module::to_device(m, device)),)+
                }
            }

            fn fork(self, device: &burn::tensor::Device) -> Self {
                match self {
                    $(Self::$variant(m) => Self::$variant(burn::module::Module::fork(m, device)),)+
                }
            }

            fn collect_devices(&self, devices: burn::module::Devices) -> burn::module::Devices {
                match self {
                    $(Self::$variant(m) => burn::module::Module::collect_devices(m, devices),)+
                }
            }

            fn valid(&self) -> Self {
                match self {
                    $(Self::$variant(m) => Self::$variant(burn::module::Module::valid(m)),)+
                }
            }

            fn train(self) -> Self {
                match self {
                    $(Self::$variant(m) => Self::$variant(burn::module::Module::train(m)),)+
                }
            }

            fn materialize(self) -> Self {
                match self {
                    $(Self::$variant(m) => Self::$variant(burn::module::Module::materialize(m)),)+
                }
            }
        }

        impl burn::module::ModuleDisplayDefault for $name {
            fn content(&self, content: burn::module::Content) -> Option<burn::module::Content> {
                match self {
                    $(Self::$variant(m) => content.add_single(m).optional(),)+
                }
            }

            fn num_params(&self) -> usize {
                burn::module::Module::num_params(self)
            }
        }

        impl burn::module::ModuleDisplay for $name {}
    };
}

pub(crate) use transparent_enum_module;
