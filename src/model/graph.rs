//! The op graph: tensors (per-image NHWC shapes) and the ops between them
//! (ops.rs), in execution order, with the builder the network definitions
//! use and the tensor names they expose.

pub use super::ops::{
    Activation, Conv, Depthwise, MergedConv, Op, Padding, Pool, PoolOp, Shape, Slice, TensorId,
    WeightedLayer,
};
use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// The tensor names every network exposes: its input and its bottleneck.
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "bottleneck";

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
