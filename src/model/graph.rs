//! The op graph: tensors (per-image NHWC shapes) and the ops between them, in
//! execution order. Ops read and write channel *slices*, which is how a mixed
//! block's branches concatenate for free: each writes into its slice of one
//! shared output tensor.

use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// The tensor names every network exposes: its input and its bottleneck.
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "bottleneck";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TensorId(pub usize);

/// Shape of one image's activation, NHWC without the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub height: u32,
    pub width: u32,
    pub channels: u32,
}

impl Shape {
    pub fn elements(&self) -> u64 {
        self.height as u64 * self.width as u64 * self.channels as u64
    }
}

/// Channels `offset..offset + channels` of a tensor.
#[derive(Clone, Copy, Debug)]
pub struct Slice {
    pub tensor: TensorId,
    pub offset: u32,
    pub channels: u32,
}

impl Slice {
    /// Consecutive sub-slices of the given widths, which must add up to this slice.
    pub fn split<const N: usize>(&self, widths: [u32; N]) -> [Slice; N] {
        assert_eq!(widths.iter().sum::<u32>(), self.channels, "split widths");
        let mut offset = self.offset;
        widths.map(|channels| {
            let s = Slice {
                tensor: self.tensor,
                offset,
                channels,
            };
            offset += channels;
            s
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// TensorFlow's SAME: output = ceil(input / stride), zero padding split top/bottom.
    Same,
    /// No padding: output = (input − window) / stride + 1.
    Valid,
    /// PyTorch's (window − 1) / 2 on every side: the same output size as
    /// SAME for odd windows, but one more cell before where SAME pads after.
    Symmetric,
}

impl Padding {
    /// Output size and padding before the first element along one axis.
    pub fn resolve(self, input: u32, window: u32, stride: u32) -> Option<(u32, u32)> {
        match self {
            Padding::Valid => (input >= window).then(|| ((input - window) / stride + 1, 0)),
            Padding::Same => {
                let out = input.div_ceil(stride);
                let total = ((out - 1) * stride + window).saturating_sub(input);
                Some((out, total / 2))
            }
            Padding::Symmetric => {
                let pad = (window - 1) / 2;
                (input + 2 * pad >= window).then(|| ((input + 2 * pad - window) / stride + 1, pad))
            }
        }
    }
}

/// What follows a layer's bias (and residual add).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Linear (MobileNet V2's projections).
    None,
    Relu,
    /// min(max(x, 0), 6).
    Relu6,
}

/// A convolution with folded batch norm (a bias), optionally plus a residual
/// tensor, then its activation. Its weights are stored as `{name}.weight`
/// and `{name}.bias`.
#[derive(Clone, Debug)]
pub struct Conv {
    pub name: String,
    pub input: Slice,
    pub output: Slice,
    pub kernel: (u32, u32),
    pub stride: u32,
    pub padding: Padding,
    pub activation: Activation,
    /// Added to the output before the activation (same pixels, out channels).
    pub residual: Option<Slice>,
}

impl Conv {
    pub fn weight_name(&self) -> String {
        format!("{}.weight", self.name)
    }
    pub fn bias_name(&self) -> String {
        format!("{}.bias", self.name)
    }
    /// Weight shape in the engine's layout: [kernel_h, kernel_w, in_c, out_c].
    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.kernel.0 as usize,
            self.kernel.1 as usize,
            self.input.channels as usize,
            self.output.channels as usize,
        ]
    }
}

/// A depthwise convolution (one filter per channel) with folded batch norm
/// and its activation; weights `{name}.weight` [kh, kw, channels], `{name}.bias`.
#[derive(Clone, Debug)]
pub struct Depthwise {
    pub name: String,
    pub input: Slice,
    pub output: Slice,
    pub kernel: (u32, u32),
    pub stride: u32,
    pub padding: Padding,
    pub activation: Activation,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolOp {
    Max,
    /// Padding left out of the mean (Keras).
    Average,
    /// Padding counted in the mean (PyTorch's count_include_pad).
    AverageCountingPadding,
}

#[derive(Clone, Debug)]
pub struct Pool {
    pub kind: PoolOp,
    pub input: Slice,
    pub output: Slice,
    pub window: u32,
    pub stride: u32,
    pub padding: Padding,
}

/// Sibling 1×1 convs that read the same input, computed as one GEMM: their
/// weights side by side along the output channels, their outputs side by side
/// in one tensor (see merge.rs).
#[derive(Clone, Debug)]
pub struct MergedConv {
    /// The convs in output-channel order, each `output` its slice of the merged tensor.
    pub parts: Vec<Conv>,
}

impl MergedConv {
    /// The GEMM as one conv over all the parts' output channels (its `name`
    /// is the first part's).
    pub fn as_conv(&self) -> Conv {
        let first = &self.parts[0];
        Conv {
            output: Slice {
                channels: self.parts.iter().map(|c| c.output.channels).sum(),
                ..first.output
            },
            ..first.clone()
        }
    }
}

#[derive(Clone, Debug)]
pub enum Op {
    Conv(Conv),
    MergedConv(MergedConv),
    Depthwise(Depthwise),
    Pool(Pool),
    GlobalAvgPool { input: TensorId, output: TensorId },
}

impl Op {
    /// The tensor the op computes from (a conv's residual aside).
    pub fn input(&self) -> TensorId {
        match self {
            Op::Conv(c) => c.input.tensor,
            Op::MergedConv(m) => m.parts[0].input.tensor,
            Op::Depthwise(d) => d.input.tensor,
            Op::Pool(p) => p.input.tensor,
            Op::GlobalAvgPool { input, .. } => *input,
        }
    }
    /// Every tensor the op reads: its input and, for a conv, its residual.
    pub fn inputs(&self) -> Vec<TensorId> {
        let residual = match self {
            Op::Conv(c) => c.residual.map(|r| r.tensor),
            _ => None,
        };
        std::iter::once(self.input()).chain(residual).collect()
    }
    pub fn output(&self) -> TensorId {
        match self {
            Op::Conv(c) => c.output.tensor,
            Op::MergedConv(m) => m.parts[0].output.tensor,
            Op::Depthwise(d) => d.output.tensor,
            Op::Pool(p) => p.output.tensor,
            Op::GlobalAvgPool { output, .. } => *output,
        }
    }
    /// A conv op as the one conv its kernel runs (a merged conv as its GEMM).
    pub fn as_conv(&self) -> Option<Conv> {
        match self {
            Op::Conv(c) => Some(c.clone()),
            Op::MergedConv(m) => Some(m.as_conv()),
            _ => None,
        }
    }
    /// The names of the layers whose weights the op uses.
    pub fn weight_units(&self) -> Vec<String> {
        match self {
            Op::Conv(c) => vec![c.name.clone()],
            Op::MergedConv(m) => m.parts.iter().map(|c| c.name.clone()).collect(),
            Op::Depthwise(d) => vec![d.name.clone()],
            _ => vec![],
        }
    }
}

/// A layer's weights as the weight file holds them: `{name}.weight` of
/// `weight_shape` and `{name}.bias` of `outputs` values.
pub struct WeightedLayer<'g> {
    pub name: &'g str,
    pub weight_shape: Vec<usize>,
    pub outputs: usize,
}

impl<'g> WeightedLayer<'g> {
    fn of_conv(c: &'g Conv) -> Self {
        WeightedLayer {
            name: &c.name,
            weight_shape: c.weight_shape().to_vec(),
            outputs: c.output.channels as usize,
        }
    }
    pub fn weight_name(&self) -> String {
        format!("{}.weight", self.name)
    }
    pub fn bias_name(&self) -> String {
        format!("{}.bias", self.name)
    }
}

/// A network for one input size: its tensors, its ops in execution order,
/// and the tensors it names (the input, the intermediates tests check, the output).
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub shapes: Vec<Shape>,
    pub ops: Vec<Op>,
    pub names: BTreeMap<String, TensorId>,
}

impl Graph {
    /// A new tensor of the given shape, as one slice covering all its channels.
    pub fn tensor(&mut self, height: u32, width: u32, channels: u32) -> Slice {
        self.shapes.push(Shape {
            height,
            width,
            channels,
        });
        Slice {
            tensor: TensorId(self.shapes.len() - 1),
            offset: 0,
            channels,
        }
    }

    pub fn shape(&self, t: TensorId) -> Shape {
        self.shapes[t.0]
    }

    pub fn name(&mut self, name: &str, slice: Slice) {
        self.names.insert(name.to_string(), slice.tensor);
    }

    pub fn named(&self, name: &str) -> Option<TensorId> {
        self.names.get(name).copied()
    }

    /// Output height and width of a window op on `input`, or an error if it does not fit.
    pub fn out_hw(
        &self,
        input: Slice,
        window: (u32, u32),
        stride: u32,
        padding: Padding,
    ) -> Result<(u32, u32)> {
        let s = self.shape(input.tensor);
        match (
            padding.resolve(s.height, window.0, stride),
            padding.resolve(s.width, window.1, stride),
        ) {
            (Some((h, _)), Some((w, _))) => Ok((h, w)),
            _ => bail!(
                "a {}×{} window does not fit a {}×{} activation: the input image is too small",
                window.0,
                window.1,
                s.height,
                s.width
            ),
        }
    }

    /// Convolution + bias + ReLU named `name`, writing into an existing slice.
    pub fn conv_into(
        &mut self,
        name: &str,
        input: Slice,
        output: Slice,
        kernel: (u32, u32),
        stride: u32,
        padding: Padding,
    ) -> Result<()> {
        self.add_conv(Conv {
            name: name.to_string(),
            input,
            output,
            kernel,
            stride,
            padding,
            activation: Activation::Relu,
            residual: None,
        })
    }

    /// Adds `conv`, checking its output (and residual) size and its name.
    pub fn add_conv(&mut self, conv: Conv) -> Result<()> {
        let (h, w) = self.out_hw(conv.input, conv.kernel, conv.stride, conv.padding)?;
        for slice in std::iter::once(conv.output).chain(conv.residual) {
            let s = self.shape(slice.tensor);
            assert_eq!(
                (s.height, s.width),
                (h, w),
                "conv output or residual has the wrong size"
            );
        }
        if let Some(r) = conv.residual {
            assert_eq!(r.channels, conv.output.channels, "residual channels");
        }
        self.check_new_name(&conv.name)?;
        self.ops.push(Op::Conv(conv));
        Ok(())
    }

    /// Depthwise convolution + bias + `activation` named `name`, into a new tensor.
    pub fn depthwise(
        &mut self,
        name: &str,
        input: Slice,
        kernel: (u32, u32),
        stride: u32,
        activation: Activation,
    ) -> Result<Slice> {
        let padding = Padding::Same;
        let (h, w) = self.out_hw(input, kernel, stride, padding)?;
        let output = self.tensor(h, w, input.channels);
        self.check_new_name(name)?;
        self.ops.push(Op::Depthwise(Depthwise {
            name: name.to_string(),
            input,
            output,
            kernel,
            stride,
            padding,
            activation,
        }));
        Ok(output)
    }

    fn check_new_name(&self, name: &str) -> Result<()> {
        if self.weighted_layers().any(|l| l.name == name) {
            bail!("the network names two layers {name}");
        }
        Ok(())
    }

    /// Convolution + bias + ReLU named `name`, into a new tensor of `channels` channels.
    pub fn conv(
        &mut self,
        name: &str,
        input: Slice,
        channels: u32,
        kernel: (u32, u32),
        stride: u32,
        padding: Padding,
    ) -> Result<Slice> {
        let (h, w) = self.out_hw(input, kernel, stride, padding)?;
        let output = self.tensor(h, w, channels);
        self.conv_into(name, input, output, kernel, stride, padding)?;
        Ok(output)
    }

    pub fn pool_into(
        &mut self,
        kind: PoolOp,
        input: Slice,
        output: Slice,
        window: u32,
        stride: u32,
        padding: Padding,
    ) -> Result<()> {
        let (h, w) = self.out_hw(input, (window, window), stride, padding)?;
        let o = self.shape(output.tensor);
        assert_eq!(
            (o.height, o.width, output.channels),
            (h, w, input.channels),
            "pool output slice"
        );
        self.ops.push(Op::Pool(Pool {
            kind,
            input,
            output,
            window,
            stride,
            padding,
        }));
        Ok(())
    }

    pub fn pool(
        &mut self,
        kind: PoolOp,
        input: Slice,
        window: u32,
        stride: u32,
        padding: Padding,
    ) -> Result<Slice> {
        let (h, w) = self.out_hw(input, (window, window), stride, padding)?;
        let output = self.tensor(h, w, input.channels);
        self.pool_into(kind, input, output, window, stride, padding)?;
        Ok(output)
    }

    /// Mean over all pixels: [h, w, c] -> [1, 1, c].
    pub fn global_avg_pool(&mut self, input: Slice) -> Slice {
        let output = self.tensor(1, 1, input.channels);
        self.ops.push(Op::GlobalAvgPool {
            input: input.tensor,
            output: output.tensor,
        });
        output
    }

    /// Pads every window as PyTorch does, for weights trained that way:
    /// average pools count the padding, and SAME convs pad symmetrically.
    pub fn pad_as_pytorch(&mut self) {
        for op in &mut self.ops {
            match op {
                Op::Pool(p) if p.kind == PoolOp::Average => p.kind = PoolOp::AverageCountingPadding,
                Op::Conv(c) if c.padding == Padding::Same => c.padding = Padding::Symmetric,
                Op::Depthwise(d) if d.padding == Padding::Same => d.padding = Padding::Symmetric,
                _ => {}
            }
        }
    }

    /// Every layer with weights (convs, merged ones part by part, and
    /// depthwise convs), in execution order.
    pub fn weighted_layers(&self) -> impl Iterator<Item = WeightedLayer<'_>> {
        self.ops.iter().flat_map(|op| {
            let layers: Vec<WeightedLayer> = match op {
                Op::Conv(c) => vec![WeightedLayer::of_conv(c)],
                Op::MergedConv(m) => m.parts.iter().map(WeightedLayer::of_conv).collect(),
                Op::Depthwise(d) => vec![WeightedLayer {
                    name: &d.name,
                    weight_shape: vec![
                        d.kernel.0 as usize,
                        d.kernel.1 as usize,
                        d.output.channels as usize,
                    ],
                    outputs: d.output.channels as usize,
                }],
                _ => vec![],
            };
            layers
        })
    }

    /// Every conv of the network (merged ones part by part), in execution order.
    pub fn convs(&self) -> impl Iterator<Item = &Conv> {
        self.ops.iter().flat_map(|op| match op {
            Op::Conv(c) => std::slice::from_ref(c),
            Op::MergedConv(m) => m.parts.as_slice(),
            _ => &[],
        })
    }
}
