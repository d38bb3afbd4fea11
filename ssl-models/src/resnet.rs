//! The ResNet family in torchvision's layout (v1.5: the stride of a Bottleneck sits on its 3x3
//! convolution) and with torchvision's `state_dict` names.
//!
//! A network of base width `W` has a 7x7/2 stem convolution `conv1` (3 -> W, no bias), `bn1`,
//! ReLU, a 3x3/2 max-pool (padding 1), then `layer1..layer4` with `W, 2W, 4W, 8W` planes and
//! strides 1, 2, 2, 2 on their first block. Tensor names are torchvision's:
//! `conv1.weight`, `bn1.running_var`, `layer2.0.downsample.0.weight`, `layer2.0.downsample.1.bias`,
//! `fc.weight`, ...

use std::fmt;
use std::str::FromStr;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::relu;
use burn::tensor::module::adaptive_avg_pool2d;

use crate::batchnorm::{BatchNorm2d, BatchNorm2dConfig};
use crate::error::{ModelsError, Result};
use crate::transparent::transparent_enum_module;

/// The five torchvision ResNets; in config files by their torchvision names (`"resnet50"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// `resnet18`: BasicBlock, [2, 2, 2, 2].
    ResNet18,
    /// `resnet34`: BasicBlock, [3, 4, 6, 3].
    ResNet34,
    /// `resnet50`: Bottleneck, [3, 4, 6, 3].
    ResNet50,
    /// `resnet101`: Bottleneck, [3, 4, 23, 3].
    ResNet101,
    /// `resnet152`: Bottleneck, [3, 8, 36, 3].
    ResNet152,
}

impl Arch {
    /// Every architecture, in the order of [`Arch::NAMES`].
    pub const ALL: [Arch; 5] = [
        Arch::ResNet18,
        Arch::ResNet34,
        Arch::ResNet50,
        Arch::ResNet101,
        Arch::ResNet152,
    ];

    /// The torchvision names (`torchvision.models.resnet18`, ...).
    pub const NAMES: [&'static str; 5] =
        ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"];

    /// Parses a torchvision name (`"resnet50"`; case and surrounding blanks ignored).
    ///
    /// # Errors
    /// [`ModelsError::UnknownArch`] listing the accepted names.
    pub fn from_name(name: &str) -> Result<Self> {
        let wanted = name.trim().to_ascii_lowercase();
        Self::NAMES
            .iter()
            .position(|n| *n == wanted)
            .map(|i| Self::ALL[i])
            .ok_or_else(|| ModelsError::UnknownArch {
                name: name.to_string(),
                choices: Self::NAMES.to_vec(),
            })
    }

    /// The torchvision name.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// Blocks per stage (torchvision's `layers` argument).
    pub fn blocks(self) -> [usize; 4] {
        match self {
            Arch::ResNet18 => [2, 2, 2, 2],
            Arch::ResNet34 | Arch::ResNet50 => [3, 4, 6, 3],
            Arch::ResNet101 => [3, 4, 23, 3],
            Arch::ResNet152 => [3, 8, 36, 3],
        }
    }

    /// Whether the blocks are [`Bottleneck`]s (else [`BasicBlock`]s).
    pub fn is_bottleneck(self) -> bool {
        matches!(self, Arch::ResNet50 | Arch::ResNet101 | Arch::ResNet152)
    }

    /// Output channels of a block per plane: 1 (BasicBlock) or 4 (Bottleneck).
    pub fn expansion(self) -> usize {
        if self.is_bottleneck() { 4 } else { 1 }
    }

    /// Output channels of `layer1..layer4` at base width `width`: `width * 2^i * expansion`.
    pub fn stage_channels(self, width: usize) -> [usize; 4] {
        let e = self.expansion();
        [width * e, 2 * width * e, 4 * width * e, 8 * width * e]
    }

    /// Dimension of the pooled layer4 vector: `8 * width * expansion` (512 / 2048 at width 64).
    pub fn feature_dim(self, width: usize) -> usize {
        8 * width * self.expansion()
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = ModelsError;

    fn from_str(s: &str) -> Result<Self> {
        Self::from_name(s)
    }
}

/// Convolution as torchvision builds it: no bias, `kaiming_normal_(mode="fan_out",
/// nonlinearity="relu")`, i.e. N(0, 2 / (out_channels * k * k)).
fn conv(cin: usize, cout: usize, k: usize, stride: usize, pad: usize, d: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .with_initializer(Initializer::KaimingNormal {
            gain: 2f64.sqrt(),
            fan_out_only: true,
        })
        .init(d)
}

/// `conv.forward(x)`, through [`crate::kernels::conv::conv2d`] on the Flex CPU device (f32, no
/// bias, groups or dilation, symmetric padding: every convolution of a ResNet), through
/// `conv.forward` elsewhere. The kernel computes the convolution and both gradients as matrix
/// products over image patches, a few images per product where the outputs are small; a 1x1
/// convolution's patches are the image itself. The values are the convolution's up to float
/// rounding (sums in another order, about 1e-6 relative).
pub fn conv_forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    use crate::kernels::conv::{ConvGeometry, conv2d as gemm_conv2d};
    let [sh, sw] = conv.stride;
    let (top, left, bottom, right) = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => (top, left, bottom, right),
        PaddingConfig2d::Valid => (0, 0, 0, 0),
        PaddingConfig2d::Same => return conv.forward(x),
    };
    let plain = conv.groups == 1
        && conv.dilation == [1, 1]
        && conv.bias.is_none()
        && top == bottom
        && left == right;
    if !plain || x.dtype() != DType::F32 || x.device().inner() != Device::flex() {
        return conv.forward(x);
    }
    let geometry = ConvGeometry {
        stride: [sh, sw],
        padding: [top, left],
    };
    gemm_conv2d(x, conv.weight.val(), geometry)
}

fn bn(c: usize, d: &Device) -> BatchNorm2d {
    BatchNorm2dConfig::new(c).init(d)
}

fn zero_bn_weight(bn: &mut BatchNorm2d) {
    let c = bn.num_features();
    let device = bn.weight.lazy_device();
    bn.weight = Initializer::Zeros.init([c], &device);
}

/// torchvision's rule for a projection shortcut: stride != 1 or channel change.
pub fn needs_downsample(inplanes: usize, planes: usize, expansion: usize, stride: usize) -> bool {
    stride != 1 || inplanes != planes * expansion
}

fn downsample(cin: usize, cout: usize, stride: usize, d: &Device) -> (Conv2d, BatchNorm2d) {
    (conv(cin, cout, 1, stride, 0, d), bn(cout, d))
}

/// torchvision `BasicBlock`: conv3x3(stride)-bn-relu-conv3x3-bn, + shortcut, relu.
#[derive(Module, Debug)]
pub struct BasicBlock {
    /// 3x3 convolution carrying the stride.
    pub conv1: Conv2d,
    /// BN after `conv1`.
    pub bn1: BatchNorm2d,
    /// 3x3 convolution.
    pub conv2: Conv2d,
    /// BN after `conv2` (zeroed by `zero_init_residual`).
    pub bn2: BatchNorm2d,
    /// Projection shortcut `downsample.0` (1x1 conv with the stride) / `downsample.1` (BN).
    pub downsample: Option<(Conv2d, BatchNorm2d)>,
}

impl BasicBlock {
    /// Output channels per plane.
    pub const EXPANSION: usize = 1;

    /// A block from `inplanes` to `planes` channels, with the torchvision shortcut rule.
    pub fn new(inplanes: usize, planes: usize, stride: usize, device: &Device) -> Self {
        let ds = needs_downsample(inplanes, planes, Self::EXPANSION, stride);
        Self::with_downsample(inplanes, planes, stride, ds, device)
    }

    /// A block with an explicit choice of projection shortcut.
    pub fn with_downsample(
        inplanes: usize,
        planes: usize,
        stride: usize,
        downsample_shortcut: bool,
        device: &Device,
    ) -> Self {
        Self {
            conv1: conv(inplanes, planes, 3, stride, 1, device),
            bn1: bn(planes, device),
            conv2: conv(planes, planes, 3, 1, 1, device),
            bn2: bn(planes, device),
            downsample: downsample_shortcut.then(|| downsample(inplanes, planes, stride, device)),
        }
    }

    /// Forward pass.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = match &self.downsample {
            Some((c, b)) => b.forward(conv_forward(c, x.clone())),
            None => x.clone(),
        };
        let out = self.bn1.forward_relu(conv_forward(&self.conv1, x));
        let out = self.bn2.forward(conv_forward(&self.conv2, out));
        relu(out.add(identity))
    }
}

/// torchvision `Bottleneck` (v1.5): conv1x1-bn-relu-conv3x3(stride)-bn-relu-conv1x1(4x)-bn,
/// + shortcut, relu.
#[derive(Module, Debug)]
pub struct Bottleneck {
    /// 1x1 reduction.
    pub conv1: Conv2d,
    /// BN after `conv1`.
    pub bn1: BatchNorm2d,
    /// 3x3 convolution carrying the stride.
    pub conv2: Conv2d,
    /// BN after `conv2`.
    pub bn2: BatchNorm2d,
    /// 1x1 expansion to `4 * planes`.
    pub conv3: Conv2d,
    /// BN after `conv3` (zeroed by `zero_init_residual`).
    pub bn3: BatchNorm2d,
    /// Projection shortcut `downsample.0` (1x1 conv with the stride) / `downsample.1` (BN).
    pub downsample: Option<(Conv2d, BatchNorm2d)>,
}

impl Bottleneck {
    /// Output channels per plane.
    pub const EXPANSION: usize = 4;

    /// A block from `inplanes` to `4 * planes` channels, with the torchvision shortcut rule.
    pub fn new(inplanes: usize, planes: usize, stride: usize, device: &Device) -> Self {
        let ds = needs_downsample(inplanes, planes, Self::EXPANSION, stride);
        Self::with_downsample(inplanes, planes, stride, ds, device)
    }

    /// A block with an explicit choice of projection shortcut.
    pub fn with_downsample(
        inplanes: usize,
        planes: usize,
        stride: usize,
        downsample_shortcut: bool,
        device: &Device,
    ) -> Self {
        let out = planes * Self::EXPANSION;
        Self {
            conv1: conv(inplanes, planes, 1, 1, 0, device),
            bn1: bn(planes, device),
            conv2: conv(planes, planes, 3, stride, 1, device),
            bn2: bn(planes, device),
            conv3: conv(planes, out, 1, 1, 0, device),
            bn3: bn(out, device),
            downsample: downsample_shortcut.then(|| downsample(inplanes, out, stride, device)),
        }
    }

    /// Forward pass.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = match &self.downsample {
            Some((c, b)) => b.forward(conv_forward(c, x.clone())),
            None => x.clone(),
        };
        let out = self.bn1.forward_relu(conv_forward(&self.conv1, x));
        let out = self.bn2.forward_relu(conv_forward(&self.conv2, out));
        let out = self.bn3.forward(conv_forward(&self.conv3, out));
        relu(out.add(identity))
    }
}

/// One residual block of either kind; adds nothing to tensor paths (`layer1.0.conv1.weight`).
// Both variants are large (their convolutions' metadata); blocks live in a `Vec` and are never
// moved on the hot path, so boxing would only add an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Block {
    /// ResNet-18/34 block.
    Basic(BasicBlock),
    /// ResNet-50/101/152 block.
    Bottleneck(Bottleneck),
}

transparent_enum_module!(Block { Basic, Bottleneck });

impl Block {
    /// Forward pass.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Block::Basic(b) => b.forward(x),
            Block::Bottleneck(b) => b.forward(x),
        }
    }

    fn zero_init_last_bn(&mut self) {
        match self {
            Block::Basic(b) => zero_bn_weight(&mut b.bn2),
            Block::Bottleneck(b) => zero_bn_weight(&mut b.bn3),
        }
    }
}

/// Configuration of a [`ResNet`].
///
/// Defaults follow torchvision except `num_classes`: the network is mostly used as a backbone
/// here, so it has no `fc` unless asked (`with_num_classes(1000)` gives torchvision's
/// `resnetXX()`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    /// Depth / block type.
    pub arch: Arch,
    /// Base width `W` (channels of the stem and planes of `layer1`); torchvision: 64.
    pub width: usize,
    /// Zero the weight of the last BN of every residual branch, so each block starts as the
    /// identity (torchvision's `zero_init_residual`, default false).
    pub zero_init_residual: bool,
    /// Classes of the final `fc` Linear(feature_dim, classes) with PyTorch's default Linear
    /// init; `None`: no `fc`.
    pub num_classes: Option<usize>,
    /// Channels (bands) of the input images, the stem's input channels; torchvision: 3.
    /// Multispectral images have more (13 for Sentinel-2).
    pub in_channels: usize,
}

impl ResNetConfig {
    /// `arch` at width 64, no zero-init, no `fc`.
    pub fn new(arch: Arch) -> Self {
        Self {
            arch,
            width: 64,
            zero_init_residual: false,
            num_classes: None,
            in_channels: 3,
        }
    }

    /// Sets the input channels (bands) of the stem.
    pub fn with_in_channels(mut self, channels: usize) -> Self {
        self.in_channels = channels;
        self
    }

    /// Sets the base width.
    pub fn with_width(mut self, width: usize) -> Self {
        self.width = width;
        self
    }

    /// Sets `zero_init_residual`.
    pub fn with_zero_init_residual(mut self, zero: bool) -> Self {
        self.zero_init_residual = zero;
        self
    }

    /// Sets the classifier size (`None`: no `fc`).
    pub fn with_num_classes(mut self, classes: impl Into<Option<usize>>) -> Self {
        self.num_classes = classes.into();
        self
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`ModelsError::InvalidConfig`] for a zero width, zero classes or zero input channels.
    pub fn validate(&self) -> Result<()> {
        if self.width == 0 {
            return Err(ModelsError::InvalidConfig(
                "width must be at least 1".into(),
            ));
        }
        if self.in_channels == 0 {
            return Err(ModelsError::InvalidConfig(
                "in_channels must be at least 1".into(),
            ));
        }
        if self.num_classes == Some(0) {
            return Err(ModelsError::InvalidConfig(
                "num_classes must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Builds the network with torchvision's initialization.
    ///
    /// # Errors
    /// As [`ResNetConfig::validate`].
    pub fn try_init(&self, device: &Device) -> Result<ResNet> {
        self.validate()?;
        Ok(self.build(device))
    }

    /// Builds the network with torchvision's initialization.
    ///
    /// # Panics
    /// When [`ResNetConfig::validate`] fails; use [`ResNetConfig::try_init`] for an error.
    pub fn init(&self, device: &Device) -> ResNet {
        self.try_init(device)
            .unwrap_or_else(|e| panic!("ResNetConfig::init: {e}"))
    }

    fn build(&self, d: &Device) -> ResNet {
        let w = self.width;
        let arch = self.arch;
        let e = arch.expansion();
        let blocks = arch.blocks();
        let mut inplanes = w;
        let mut layers: Vec<Vec<Block>> = Vec::with_capacity(4);
        for (i, &n) in blocks.iter().enumerate() {
            let planes = w << i;
            let stride = if i == 0 { 1 } else { 2 };
            let mut layer = Vec::with_capacity(n);
            for j in 0..n {
                let s = if j == 0 { stride } else { 1 };
                let mut block = if arch.is_bottleneck() {
                    Block::Bottleneck(Bottleneck::new(inplanes, planes, s, d))
                } else {
                    Block::Basic(BasicBlock::new(inplanes, planes, s, d))
                };
                if self.zero_init_residual {
                    block.zero_init_last_bn();
                }
                layer.push(block);
                inplanes = planes * e;
            }
            layers.push(layer);
        }
        let mut layers = layers.into_iter();
        let mut next = || layers.next().unwrap_or_default();
        ResNet {
            conv1: conv(self.in_channels, w, 7, 2, 3, d),
            bn1: bn(w, d),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layer1: next(),
            layer2: next(),
            layer3: next(),
            layer4: next(),
            fc: self
                .num_classes
                .map(|c| LinearConfig::new(arch.feature_dim(w), c).init(d)),
            arch,
            width: w,
        }
    }
}

/// Spatial size after a 3x3 (or 7x7) stride-2 convolution / max-pool with "same" padding.
fn halve(x: usize) -> usize {
    (x.saturating_sub(1)) / 2 + 1
}

/// Spatial sizes `(h, w)` of the outputs of `layer1..layer4` for an `h x w` input.
pub fn stage_sizes(h: usize, w: usize) -> [(usize, usize); 4] {
    let (mut h, mut w) = (halve(halve(h)), halve(halve(w)));
    let mut out = [(h, w); 4];
    for o in out.iter_mut().skip(1) {
        h = halve(h);
        w = halve(w);
        *o = (h, w);
    }
    out
}

/// Checks an encoder input of dims `[n, c, h, w]`: `channels` channels, nothing empty, and (in
/// train mode) more than one value per channel at layer4 (PyTorch raises "Expected more than 1
/// value per channel when training" there).
pub(crate) fn check_image_input(dims: [usize; 4], channels: usize, training: bool) -> Result<()> {
    let [n, c, h, w] = dims;
    if c != channels {
        return Err(ModelsError::InvalidInput(format!(
            "expected (N, {channels}, H, W) images, got {c} channel(s) in input of shape {dims:?}"
        )));
    }
    if n == 0 || h == 0 || w == 0 {
        return Err(ModelsError::InvalidInput(format!(
            "empty input of shape {dims:?}"
        )));
    }
    let (h4, w4) = stage_sizes(h, w)[3];
    if training && n * h4 * w4 < 2 {
        return Err(ModelsError::InvalidInput(format!(
            "input of shape {dims:?} leaves 1 value per channel at layer4 ({h4}x{w4}, batch {n}); \
             train-mode BatchNorm needs more than one"
        )));
    }
    Ok(())
}

/// A torchvision ResNet: `conv1`, `bn1`, `layer1..layer4` of [`Block`]s and an optional `fc`.
#[derive(Module, Debug)]
pub struct ResNet {
    /// 7x7 stride-2 stem convolution, in_channels (3 for RGB) -> width.
    pub conv1: Conv2d,
    /// Stem BN.
    pub bn1: BatchNorm2d,
    /// 3x3 stride-2 max-pool, padding 1 (no tensors).
    pub maxpool: MaxPool2d,
    /// Stage 1 (stride 1).
    pub layer1: Vec<Block>,
    /// Stage 2 (stride 2).
    pub layer2: Vec<Block>,
    /// Stage 3 (stride 2).
    pub layer3: Vec<Block>,
    /// Stage 4 (stride 2).
    pub layer4: Vec<Block>,
    /// Classifier on the pooled features (torchvision's `fc`), if any.
    pub fc: Option<Linear>,
    /// Architecture.
    #[module(skip)]
    pub arch: Arch,
    /// Base width.
    pub width: usize,
}

impl ResNet {
    /// Dimension of [`ResNet::pooled`]: `8 * width * expansion`.
    pub fn feature_dim(&self) -> usize {
        self.arch.feature_dim(self.width)
    }

    /// Output channels of `layer1..layer4`.
    pub fn stage_channels(&self) -> [usize; 4] {
        self.arch.stage_channels(self.width)
    }

    /// Input channels (bands) of the stem: 3 for RGB.
    pub fn in_channels(&self) -> usize {
        self.conv1.weight.dims()[1]
    }

    /// Checks that `x` fits the network (see the crate docs on bad input).
    ///
    /// # Errors
    /// [`ModelsError::InvalidInput`] for a channel count other than [`ResNet::in_channels`], an
    /// empty dimension, or (train mode) a single value per channel at layer4.
    pub fn check_input(&self, x: &Tensor<4>) -> Result<()> {
        check_image_input(
            x.dims(),
            self.in_channels(),
            self.bn1.is_training_on(&x.device()),
        )
    }

    fn stem(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.bn1.forward_relu(conv_forward(&self.conv1, x));
        let pool = &self.maxpool;
        match pool.padding {
            PaddingConfig2d::Explicit(top, left, bottom, right)
                if top == bottom && left == right && pool.dilation == [1, 1] && !pool.ceil_mode =>
            {
                let geometry = crate::kernels::pool::PoolGeometry {
                    kernel: pool.kernel_size,
                    stride: pool.stride,
                    padding: [top, left],
                };
                crate::kernels::pool::max_pool2d(x, geometry)
            }
            _ => pool.forward(x),
        }
    }

    fn stage(layer: &[Block], mut x: Tensor<4>) -> Tensor<4> {
        for block in layer {
            x = block.forward(x);
        }
        x
    }

    /// The outputs of `layer1..layer4` for `(N, 3, H, W)` images.
    ///
    /// # Panics
    /// On a wrong channel count; [`ResNet::check_input`] reports it as an error.
    pub fn forward_stages(&self, x: Tensor<4>) -> [Tensor<4>; 4] {
        let l1 = Self::stage(&self.layer1, self.stem(x));
        let l2 = Self::stage(&self.layer2, l1.clone());
        let l3 = Self::stage(&self.layer3, l2.clone());
        let l4 = Self::stage(&self.layer4, l3.clone());
        [l1, l2, l3, l4]
    }

    /// Global-average-pooled layer4 output, `(N, feature_dim)` (torchvision's input to `fc`).
    pub fn pooled(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.stem(x);
        for layer in [&self.layer1, &self.layer2, &self.layer3, &self.layer4] {
            x = Self::stage(layer, x);
        }
        global_pool(x)
    }

    /// `fc(pooled(x))` when the network has an `fc`, else `pooled(x)`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let f = self.pooled(x);
        match &self.fc {
            Some(fc) => fc.forward(f),
            None => f,
        }
    }
}

/// `nn.AdaptiveAvgPool2d((1, 1))` + `flatten(1)`: `(N, C, H, W) -> (N, C)`.
pub fn global_pool(x: Tensor<4>) -> Tensor<2> {
    adaptive_avg_pool2d(x, [1, 1]).flatten::<2>(1, 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::{module_tensors, parameter_count};

    #[test]
    fn conv_forward_matches_the_convolution_in_values_and_gradients() {
        use burn::tensor::Distribution;
        let device = Device::flex().autodiff();
        device.seed(11);
        // (cin, cout, kernel, stride, pad, input size): layer4-like 3x3 convolutions, the
        // strided one, a projection shortcut, stride-1 1x1 convolutions (expanding, reducing,
        // one channel, few positions, padded), a 3x3 at 6x6.
        for (cin, cout, k, stride, pad, size) in [
            (6, 5, 3, 1, 1, 2),
            (4, 6, 3, 2, 1, 4),
            (4, 6, 1, 2, 0, 8),
            (3, 4, 3, 1, 1, 6),
            (4, 16, 1, 1, 0, 8),
            (16, 4, 1, 1, 0, 9),
            (1, 3, 1, 1, 0, 12),
            (5, 7, 1, 1, 0, 4),
            (5, 7, 1, 1, 1, 8),
        ] {
            let c = conv(cin, cout, k, stride, pad, &device);
            let x = Tensor::<4>::random(
                [3, cin, size, size],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
            .require_grad();
            let y_ref = c.forward(x.clone());
            let r = Tensor::<4>::random(y_ref.dims(), Distribution::Normal(0.0, 1.0), &device);
            let y = conv_forward(&c, x.clone());
            assert_eq!(y.dims(), y_ref.dims());
            let g_ref = y_ref.clone().mul(r.clone()).sum().backward();
            let g = y.clone().mul(r).sum().backward();
            let close = |a: Tensor<4>, b: Tensor<4>, what: &str| {
                let scale = b.clone().abs().max().into_scalar::<f32>().max(1.0);
                let d = a.sub(b).abs().max().into_scalar::<f32>();
                assert!(
                    d <= 1e-5 * scale,
                    "{what} ({cin},{cout},{k},{stride},{pad},{size}): {d}"
                );
            };
            close(y.inner(), y_ref.inner(), "output");
            close(
                x.grad(&g).expect("x grad"),
                x.grad(&g_ref).expect("x grad"),
                "input gradient",
            );
            close(
                c.weight.val().grad(&g).expect("w grad"),
                c.weight.val().grad(&g_ref).expect("w grad"),
                "weight gradient",
            );
        }
    }

    #[test]
    fn arch_names_round_trip_and_unknown_lists_choices() {
        for a in Arch::ALL {
            assert_eq!(Arch::from_name(a.name()).unwrap(), a);
            assert_eq!(a.to_string().parse::<Arch>().unwrap(), a);
        }
        assert_eq!(Arch::from_name(" ResNet50 ").unwrap(), Arch::ResNet50);
        let err = Arch::from_name("resnet19").unwrap_err().to_string();
        assert!(
            err.contains("resnet19") && err.contains("resnet152"),
            "{err}"
        );
    }

    #[test]
    fn feature_dims() {
        assert_eq!(Arch::ResNet18.feature_dim(64), 512);
        assert_eq!(Arch::ResNet50.feature_dim(64), 2048);
        assert_eq!(Arch::ResNet50.stage_channels(8), [32, 64, 128, 256]);
    }

    #[test]
    fn stage_sizes_match_torchvision() {
        // 224 -> 56, 28, 14, 7 ; 32 -> 8, 4, 2, 1 ; 40 -> 10, 5, 3, 2.
        assert_eq!(stage_sizes(224, 224).map(|s| s.0), [56, 28, 14, 7]);
        assert_eq!(stage_sizes(32, 32).map(|s| s.0), [8, 4, 2, 1]);
        assert_eq!(stage_sizes(40, 40).map(|s| s.0), [10, 5, 3, 2]);
    }

    #[test]
    fn torchvision_parameter_counts() {
        let dev = Device::flex();
        for (arch, want) in [(Arch::ResNet18, 11_689_512), (Arch::ResNet50, 25_557_032)] {
            let m = ResNetConfig::new(arch).with_num_classes(1000).init(&dev);
            assert_eq!(parameter_count(&m), want, "{arch}");
        }
    }

    #[test]
    fn state_dict_names_match_torchvision() {
        let dev = Device::flex();
        let m = ResNetConfig::new(Arch::ResNet18)
            .with_width(4)
            .with_num_classes(10)
            .init(&dev);
        let names: Vec<String> = module_tensors(&m).unwrap().into_keys().collect();
        // torchvision resnet18 state_dict: 122 entries.
        assert_eq!(names.len(), 122);
        for n in [
            "conv1.weight",
            "bn1.weight",
            "bn1.bias",
            "bn1.running_mean",
            "bn1.running_var",
            "bn1.num_batches_tracked",
            "layer1.0.conv1.weight",
            "layer1.1.bn2.running_var",
            "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.num_batches_tracked",
            "layer4.1.conv2.weight",
            "fc.weight",
            "fc.bias",
        ] {
            assert!(names.iter().any(|k| k == n), "missing {n}");
        }
        let m = ResNetConfig::new(Arch::ResNet50).with_width(2).init(&dev);
        let t = module_tensors(&m).unwrap();
        assert_eq!(t["layer1.0.conv3.weight"].shape, vec![8, 2, 1, 1]);
        assert_eq!(t["layer3.0.conv2.weight"].shape, vec![8, 8, 3, 3]);
        assert_eq!(t["layer4.0.downsample.0.weight"].shape, vec![64, 32, 1, 1]);
        assert!(!t.contains_key("fc.weight"));
        // torchvision resnet50 state_dict without fc: 320 - 2 entries.
        assert_eq!(t.len(), 318);
    }

    #[test]
    fn init_follows_torchvision() {
        let dev = Device::flex();
        let m = ResNetConfig::new(Arch::ResNet50)
            .with_width(8)
            .with_zero_init_residual(true)
            .init(&dev);
        let t = module_tensors(&m).unwrap();
        let conv = t["layer3.0.conv2.weight"].to_f32();
        // kaiming normal, fan_out = 32 * 3 * 3: std = sqrt(2 / 288) = 0.0833.
        let n = conv.len() as f64;
        let var = conv.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / n;
        assert!(
            (var.sqrt() - (2.0f64 / 288.0).sqrt()).abs() < 0.01,
            "{}",
            var.sqrt()
        );
        assert!(t["layer3.0.bn3.weight"].to_f32().iter().all(|v| *v == 0.0));
        assert!(t["layer3.0.bn2.weight"].to_f32().iter().all(|v| *v == 1.0));
        assert!(t["bn1.bias"].to_f32().iter().all(|v| *v == 0.0));
        assert!(t["bn1.running_var"].to_f32().iter().all(|v| *v == 1.0));
    }

    #[test]
    fn forward_shapes() {
        let dev = Device::flex();
        let m = ResNetConfig::new(Arch::ResNet18)
            .with_width(4)
            .with_num_classes(7)
            .init(&dev);
        let x = Tensor::<4>::zeros([2, 3, 32, 32], &dev);
        let s = m.forward_stages(x.clone());
        assert_eq!(s[0].dims(), [2, 4, 8, 8]);
        assert_eq!(s[3].dims(), [2, 32, 1, 1]);
        assert_eq!(m.pooled(x.clone()).dims(), [2, 32]);
        assert_eq!(m.forward(x).dims(), [2, 7]);
    }

    #[test]
    fn sgd_step_leaves_buffers_and_copies_are_independent() {
        use burn::optim::decay::WeightDecayConfig;
        use burn::optim::{GradientsParams, SgdConfig};
        let dev = Device::flex().autodiff();
        let m = ResNetConfig::new(Arch::ResNet18).with_width(2).init(&dev);
        let x = Tensor::<4>::random([2, 3, 32, 32], burn::tensor::Distribution::Default, &dev);
        let loss = m.pooled(x.clone()).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        let after_forward = module_tensors(&m).unwrap();
        let mut optim = SgdConfig::new()
            .with_weight_decay(Some(WeightDecayConfig::new(0.1)))
            .init();
        let m = optim.step(0.1, m, grads);
        let after_step = module_tensors(&m).unwrap();
        for (name, t) in &after_step {
            let buffer = name.ends_with("running_mean")
                || name.ends_with("running_var")
                || name.ends_with("num_batches_tracked");
            assert_eq!(buffer, t == &after_forward[name], "{name}");
        }
        // A key-encoder style copy keeps train-mode BN and its own buffers.
        let k = m.valid().train().no_grad();
        let _ = k.pooled(x);
        assert_eq!(k.bn1.num_batches_tracked.get(), 2);
        assert_eq!(m.bn1.num_batches_tracked.get(), 1);
    }

    #[test]
    fn bad_input_is_an_error() {
        let dev = Device::flex().autodiff();
        let m = ResNetConfig::new(Arch::ResNet18).with_width(2).init(&dev);
        let x = Tensor::<4>::zeros([2, 1, 32, 32], &dev);
        assert!(matches!(
            m.check_input(&x),
            Err(ModelsError::InvalidInput(_))
        ));
        let x = Tensor::<4>::zeros([1, 3, 32, 32], &dev);
        assert!(
            m.check_input(&x).is_err(),
            "single value per channel in train mode"
        );
        assert!(m.valid().check_input(&x.inner()).is_ok());
        assert!(
            ResNetConfig::new(Arch::ResNet18)
                .with_width(0)
                .try_init(&dev)
                .is_err()
        );
    }
}
