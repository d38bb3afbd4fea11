//! The MHCL encoder: a ResNet with one projection head per scale.
//!
//! As in the original MHCL code (`moco/builder.py`), the query/key encoder is a torchvision
//! ResNet whose `fc` is replaced by the projection head of layer4 and which carries three more
//! heads, `global_mlps.0..2`, on the outputs of layer1..3. Each head global-average-pools its
//! stage and maps it to `dim`; the encoder returns the four projections stacked on dimension 1,
//! `(N, 4, dim)`, not normalized. With `multiscale = false` it is plain MoCo v2: only the layer4
//! head, output `(N, 1, dim)`.

use burn::module::{
    Content, Devices, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper, ModuleVisitor,
};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;

use crate::error::{ModelsError, Result};
use crate::resnet::{Arch, ResNet, ResNetConfig, check_image_input, global_pool};
use crate::transparent::transparent_enum_module;

/// Number of scales of the multiscale encoder (layer1..layer4).
pub const MULTISCALE_SCALES: usize = 4;

/// Linear(a, b) -> ReLU -> Linear(b, c), named like PyTorch's `nn.Sequential` (`0`, `2`).
pub type Mlp = (Linear, Relu, Linear);

fn mlp(d_in: usize, d_hidden: usize, d_out: usize, device: &Device) -> Mlp {
    // PyTorch's default nn.Linear init (uniform +-1/sqrt(fan_in) for weight and bias), which
    // burn's LinearConfig default reproduces.
    (
        LinearConfig::new(d_in, d_hidden).init(device),
        Relu::new(),
        LinearConfig::new(d_hidden, d_out).init(device),
    )
}

fn mlp_forward(m: &Mlp, x: Tensor<2>) -> Tensor<2> {
    m.2.forward(m.1.forward(m.0.forward(x)))
}

/// Head of one intermediate stage: `global_mlps.i.mlp.{0,2}` =
/// avgpool -> Linear(c, c) -> ReLU -> Linear(c, dim).
#[derive(Module, Debug)]
pub struct GlobalMlp {
    /// `mlp.0`, ReLU, `mlp.2`.
    pub mlp: Mlp,
}

impl GlobalMlp {
    /// A head for a stage of `channels` channels projecting to `dim`.
    pub fn new(channels: usize, dim: usize, device: &Device) -> Self {
        Self {
            mlp: mlp(channels, channels, dim, device),
        }
    }

    /// Pools an `(N, C, H, W)` stage output and projects it to `(N, dim)`.
    pub fn forward(&self, stage: Tensor<4>) -> Tensor<2> {
        mlp_forward(&self.mlp, global_pool(stage))
    }
}

/// The layer4 head: `fc` = Linear(d, dim), or with `mlp` `fc.0` Linear(d, d) -> ReLU -> `fc.2`
/// Linear(d, dim) (MoCo v2's `--mlp`). Adds no path segment of its own.
#[derive(Debug, Clone)]
pub enum ProjectionHead {
    /// One Linear: `fc.weight`, `fc.bias`.
    Linear(Linear),
    /// Two Linears with a ReLU: `fc.0.*`, `fc.2.*`.
    Mlp(Mlp),
}

transparent_enum_module!(ProjectionHead { Linear, Mlp });

impl ProjectionHead {
    /// A head from `d` to `dim`, with or without the hidden layer.
    pub fn new(d: usize, dim: usize, with_mlp: bool, device: &Device) -> Self {
        if with_mlp {
            Self::Mlp(mlp(d, d, dim, device))
        } else {
            Self::Linear(LinearConfig::new(d, dim).init(device))
        }
    }

    /// `(N, d) -> (N, dim)`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Linear(l) => l.forward(x),
            Self::Mlp(m) => mlp_forward(m, x),
        }
    }
}

/// Configuration of an [`MhclEncoder`]; defaults are those of `main_mhcl.py`
/// (`--moco-dim 128`, `--mlp` off unless given, four scales).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MhclEncoderConfig {
    /// Backbone.
    pub arch: Arch,
    /// Base width of the backbone (64 in torchvision).
    pub width: usize,
    /// Output dimension of every head (`--moco-dim`, default 128).
    pub dim: usize,
    /// Two-layer MLP instead of one Linear for the layer4 head (`--mlp`, MoCo v2).
    pub mlp: bool,
    /// Heads on layer1..3 as well (MHCL); false: layer4 only (plain MoCo).
    pub multiscale: bool,
    /// Channels (bands) of the input images; 3 for RGB (the default, also for descriptions
    /// written before the field existed).
    #[serde(default = "rgb_channels")]
    pub in_channels: usize,
}

fn rgb_channels() -> usize {
    3
}

impl MhclEncoderConfig {
    /// `arch` at width 64, dim 128, no mlp, multiscale.
    pub fn new(arch: Arch) -> Self {
        Self {
            arch,
            width: 64,
            dim: 128,
            mlp: false,
            multiscale: true,
            in_channels: 3,
        }
    }

    /// Sets the input channels (bands).
    pub fn with_in_channels(mut self, channels: usize) -> Self {
        self.in_channels = channels;
        self
    }

    /// Sets the base width.
    pub fn with_width(mut self, width: usize) -> Self {
        self.width = width;
        self
    }

    /// Sets the output dimension.
    pub fn with_dim(mut self, dim: usize) -> Self {
        self.dim = dim;
        self
    }

    /// Sets the MLP layer4 head.
    pub fn with_mlp(mut self, mlp: bool) -> Self {
        self.mlp = mlp;
        self
    }

    /// Sets multiscale (MHCL) or single-scale (MoCo).
    pub fn with_multiscale(mut self, multiscale: bool) -> Self {
        self.multiscale = multiscale;
        self
    }

    /// Number of output scales: 4 (multiscale) or 1.
    pub fn scales(&self) -> usize {
        if self.multiscale {
            MULTISCALE_SCALES
        } else {
            1
        }
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`ModelsError::InvalidConfig`] for a zero width or dim.
    pub fn validate(&self) -> Result<()> {
        if self.width == 0 {
            return Err(ModelsError::InvalidConfig(
                "width must be at least 1".into(),
            ));
        }
        if self.dim == 0 {
            return Err(ModelsError::InvalidConfig("dim must be at least 1".into()));
        }
        Ok(())
    }

    /// Builds the encoder: torchvision init for the backbone, PyTorch's default Linear init for
    /// the heads.
    ///
    /// # Errors
    /// As [`MhclEncoderConfig::validate`].
    pub fn try_init(&self, device: &Device) -> Result<MhclEncoder> {
        self.validate()?;
        let backbone = ResNetConfig::new(self.arch)
            .with_width(self.width)
            .with_in_channels(self.in_channels)
            .try_init(device)?;
        let channels = backbone.stage_channels();
        let global_mlps = if self.multiscale {
            channels[..3]
                .iter()
                .map(|&c| GlobalMlp::new(c, self.dim, device))
                .collect()
        } else {
            Vec::new()
        };
        let fc = ProjectionHead::new(backbone.feature_dim(), self.dim, self.mlp, device);
        Ok(MhclEncoder {
            backbone,
            global_mlps,
            fc,
            dim: self.dim,
        })
    }

    /// Builds the encoder.
    ///
    /// # Panics
    /// When [`MhclEncoderConfig::validate`] fails; use [`MhclEncoderConfig::try_init`] for an
    /// error.
    pub fn init(&self, device: &Device) -> MhclEncoder {
        self.try_init(device)
            .unwrap_or_else(|e| panic!("MhclEncoderConfig::init: {e}"))
    }
}

/// What one forward pass of the encoder yields.
#[derive(Clone, Debug)]
pub struct EncoderOutput {
    /// Projections `(N, S, dim)`, S = 4 (layer1..4) or 1 (layer4 only); not normalized.
    pub out: Tensor<3>,
    /// Pooled layer4 vector `(N, feature_dim)`.
    pub features: Tensor<2>,
    /// Outputs of layer1..layer4.
    pub stages: [Tensor<4>; 4],
}

/// ResNet backbone + MHCL heads, with the tensor names of the original PyTorch model
/// (`conv1.weight`, `layer1.0.bn1.running_var`, `global_mlps.0.mlp.0.weight`, `fc.0.weight` or
/// `fc.weight`).
///
/// The backbone's tensors sit at the top level of the names (no `backbone.` prefix), as in
/// PyTorch, where the heads are attributes of the torchvision ResNet itself.
#[derive(Debug, Clone)]
pub struct MhclEncoder {
    /// The ResNet (without `fc`); its tensors are named as top-level ones.
    pub backbone: ResNet,
    /// Heads on layer1..3 (empty for the single-scale encoder).
    pub global_mlps: Vec<GlobalMlp>,
    /// Head on the pooled layer4 vector.
    pub fc: ProjectionHead,
    dim: usize,
}

const CONTAINER: &str = "Struct:MhclEncoder";

impl Module for MhclEncoder {
    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        self.backbone.visit(visitor);
        visitor.enter_module("global_mlps", CONTAINER);
        self.global_mlps.visit(visitor);
        visitor.exit_module("global_mlps", CONTAINER);
        visitor.enter_module("fc", CONTAINER);
        self.fc.visit(visitor);
        visitor.exit_module("fc", CONTAINER);
    }

    fn map<M: ModuleMapper>(self, mapper: &mut M) -> Self {
        let backbone = self.backbone.map(mapper);
        mapper.enter_module("global_mlps", CONTAINER);
        let global_mlps = self.global_mlps.map(mapper);
        mapper.exit_module("global_mlps", CONTAINER);
        mapper.enter_module("fc", CONTAINER);
        let fc = self.fc.map(mapper);
        mapper.exit_module("fc", CONTAINER);
        Self {
            backbone,
            global_mlps,
            fc,
            dim: self.dim,
        }
    }

    fn collect_devices(&self, devices: Devices) -> Devices {
        let devices = self.backbone.collect_devices(devices);
        let devices = self.global_mlps.collect_devices(devices);
        self.fc.collect_devices(devices)
    }

    fn fork(self, device: &Device) -> Self {
        Self {
            backbone: self.backbone.fork(device),
            global_mlps: self.global_mlps.fork(device),
            fc: self.fc.fork(device),
            dim: self.dim,
        }
    }

    fn to_device(self, device: &Device) -> Self {
        Self {
            backbone: self.backbone.to_device(device),
            global_mlps: self.global_mlps.to_device(device),
            fc: self.fc.to_device(device),
            dim: self.dim,
        }
    }

    fn valid(&self) -> Self {
        Self {
            backbone: self.backbone.valid(),
            global_mlps: self.global_mlps.valid(),
            fc: self.fc.valid(),
            dim: self.dim,
        }
    }

    fn train(self) -> Self {
        Self {
            backbone: self.backbone.train(),
            global_mlps: self.global_mlps.train(),
            fc: self.fc.train(),
            dim: self.dim,
        }
    }

    fn materialize(self) -> Self {
        Self {
            backbone: self.backbone.materialize(),
            global_mlps: self.global_mlps.materialize(),
            fc: self.fc.materialize(),
            dim: self.dim,
        }
    }
}

impl ModuleDisplayDefault for MhclEncoder {
    fn content(&self, content: Content) -> Option<Content> {
        content
            .add("backbone", &self.backbone)
            .add("global_mlps", &self.global_mlps)
            .add("fc", &self.fc)
            .optional()
    }

    fn num_params(&self) -> usize {
        Module::num_params(self)
    }
}

impl ModuleDisplay for MhclEncoder {}

impl MhclEncoder {
    /// Backbone architecture.
    pub fn arch(&self) -> Arch {
        self.backbone.arch
    }

    /// Base width of the backbone.
    pub fn width(&self) -> usize {
        self.backbone.width
    }

    /// Output dimension of the heads.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of output scales: 4 (MHCL) or 1 (MoCo).
    pub fn scales(&self) -> usize {
        self.global_mlps.len() + 1
    }

    /// Whether the layer4 head has a hidden layer.
    pub fn has_mlp(&self) -> bool {
        matches!(self.fc, ProjectionHead::Mlp(_))
    }

    /// Dimension of [`MhclEncoder::features`] (512 / 2048 at width 64).
    pub fn feature_dim(&self) -> usize {
        self.backbone.feature_dim()
    }

    /// The configuration this encoder has.
    pub fn config(&self) -> MhclEncoderConfig {
        MhclEncoderConfig {
            arch: self.arch(),
            width: self.width(),
            dim: self.dim,
            mlp: self.has_mlp(),
            multiscale: !self.global_mlps.is_empty(),
            in_channels: self.backbone.in_channels(),
        }
    }

    /// Checks that `x` is a batch of `(N, 3, H, W)` images the encoder can take.
    ///
    /// # Errors
    /// [`ModelsError::InvalidInput`] for a channel count other than 3, an empty dimension, or
    /// (train mode) a single value per channel at layer4.
    pub fn check_input(&self, x: &Tensor<4>) -> Result<()> {
        check_image_input(
            x.dims(),
            self.backbone.in_channels(),
            self.backbone.bn1.is_training_on(&x.device()),
        )
    }

    /// Projections `(N, S, dim)` of `(N, 3, H, W)` images.
    ///
    /// # Panics
    /// On a wrong channel count; [`MhclEncoder::try_forward`] returns an error instead.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<3> {
        if self.global_mlps.is_empty() {
            // Single scale: skip keeping the stage outputs.
            return self
                .fc
                .forward(self.backbone.pooled(x))
                .unsqueeze_dim::<3>(1);
        }
        self.forward_with_features(x).out
    }

    /// [`MhclEncoder::forward`] after [`MhclEncoder::check_input`].
    ///
    /// # Errors
    /// As [`MhclEncoder::check_input`].
    pub fn try_forward(&self, x: Tensor<4>) -> Result<Tensor<3>> {
        self.check_input(&x)?;
        Ok(self.forward(x))
    }

    /// Projections, pooled features and stage outputs of one forward pass.
    ///
    /// # Panics
    /// On a wrong channel count; [`MhclEncoder::try_forward_with_features`] returns an error.
    pub fn forward_with_features(&self, x: Tensor<4>) -> EncoderOutput {
        let stages = self.backbone.forward_stages(x);
        let features = global_pool(stages[3].clone());
        let mut heads: Vec<Tensor<2>> = self
            .global_mlps
            .iter()
            .zip(&stages)
            .map(|(head, s)| head.forward(s.clone()))
            .collect();
        heads.push(self.fc.forward(features.clone()));
        let out = Tensor::stack::<3>(heads, 1);
        EncoderOutput {
            out,
            features,
            stages,
        }
    }

    /// [`MhclEncoder::forward_with_features`] after [`MhclEncoder::check_input`].
    ///
    /// # Errors
    /// As [`MhclEncoder::check_input`].
    pub fn try_forward_with_features(&self, x: Tensor<4>) -> Result<EncoderOutput> {
        self.check_input(&x)?;
        Ok(self.forward_with_features(x))
    }

    /// Pooled layer4 vector `(N, feature_dim)` (the linear-probe input), heads skipped.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        self.backbone.pooled(x)
    }

    /// [`MhclEncoder::features`] after [`MhclEncoder::check_input`].
    ///
    /// # Errors
    /// As [`MhclEncoder::check_input`].
    pub fn try_features(&self, x: Tensor<4>) -> Result<Tensor<2>> {
        self.check_input(&x)?;
        Ok(self.features(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::{module_tensors, parameter_count};

    #[test]
    fn names_follow_the_pytorch_model() {
        let dev = Device::flex();
        let enc = MhclEncoderConfig::new(Arch::ResNet18)
            .with_width(4)
            .with_dim(8)
            .with_mlp(true)
            .init(&dev);
        let t = module_tensors(&enc).unwrap();
        for (n, shape) in [
            ("conv1.weight", vec![4, 3, 7, 7]),
            ("layer1.0.bn1.running_var", vec![4]),
            ("global_mlps.0.mlp.0.weight", vec![4, 4]),
            ("global_mlps.0.mlp.2.weight", vec![8, 4]),
            ("global_mlps.2.mlp.2.bias", vec![8]),
            ("fc.0.weight", vec![32, 32]),
            ("fc.2.weight", vec![8, 32]),
            ("fc.2.bias", vec![8]),
        ] {
            assert_eq!(t.get(n).map(|r| r.shape.clone()), Some(shape), "{n}");
        }
        // 122 torchvision keys - fc (2) + 3 heads * 4 + fc.0/fc.2 (4)
        assert_eq!(t.len(), 122 - 2 + 12 + 4);
        assert!(!t.keys().any(|k| k.contains("backbone")));

        let plain = MhclEncoderConfig::new(Arch::ResNet18)
            .with_width(4)
            .with_dim(8)
            .with_multiscale(false)
            .init(&dev);
        let t = module_tensors(&plain).unwrap();
        assert_eq!(t["fc.weight"].shape, vec![8, 32]);
        assert!(!t.keys().any(|k| k.starts_with("global_mlps")));
        assert_eq!(plain.scales(), 1);
        assert!(!plain.config().mlp);
    }

    #[test]
    fn forward_shapes() {
        let dev = Device::flex();
        let enc = MhclEncoderConfig::new(Arch::ResNet50)
            .with_width(2)
            .with_dim(8)
            .with_mlp(true)
            .init(&dev);
        let x = Tensor::<4>::zeros([2, 3, 32, 32], &dev);
        let o = enc.forward_with_features(x.clone());
        assert_eq!(o.out.dims(), [2, 4, 8]);
        assert_eq!(o.features.dims(), [2, 64]);
        assert_eq!(o.stages[1].dims(), [2, 16, 4, 4]);
        assert_eq!(enc.features(x.clone()).dims(), [2, 64]);
        assert_eq!(enc.forward(x.clone()).dims(), [2, 4, 8]);
        let plain = MhclEncoderConfig::new(Arch::ResNet18)
            .with_width(2)
            .with_dim(8)
            .with_multiscale(false)
            .init(&dev);
        assert_eq!(plain.forward(x).dims(), [2, 1, 8]);
        assert!(
            enc.try_forward(Tensor::<4>::zeros([2, 4, 32, 32], &dev))
                .is_err()
        );
    }

    #[test]
    fn parameter_count_adds_heads() {
        let dev = Device::flex();
        let enc = MhclEncoderConfig::new(Arch::ResNet18)
            .with_mlp(true)
            .init(&dev);
        let heads: usize = [64usize, 128, 256]
            .iter()
            .map(|&c| c * c + c + c * 128 + 128)
            .sum();
        let fc = 512 * 512 + 512 + 512 * 128 + 128;
        assert_eq!(
            parameter_count(&enc),
            11_689_512 - (512 * 1000 + 1000) + heads + fc
        );
    }
}
