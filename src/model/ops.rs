//! The op graph's vocabulary: tensor shapes and channel slices, window
//! padding, activations, and the ops (convs, depthwise convs, pools, merged
//! sibling convs) with the weights each reads. Ops read and write channel
//! *slices*, which is how a mixed block's branches concatenate for free: each
//! writes into its slice of one shared output tensor.

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
    pub(super) fn of_conv(c: &'g Conv) -> Self {
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
