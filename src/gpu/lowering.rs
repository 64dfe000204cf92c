//! Lowering: each op of the graph as its kernel's parameter block at a batch
//! size — shapes, strides, TF's padding, channel slices, activation.

use super::kernels::PoolKind;
use super::params::{
    ActivationGradParams, ConvParams, DepthwiseParams, GlobalPoolParams, PoolParams,
};
use crate::model::graph::{Activation, Conv, Depthwise, Graph, Padding, Pool, PoolOp, TensorId};

fn pad_before(padding: Padding, input: u32, window: u32, stride: u32) -> u32 {
    padding
        .resolve(input, window, stride)
        .map_or(0, |(_, pad)| pad)
}

pub fn conv_params(graph: &Graph, c: &Conv, batch: u32) -> ConvParams {
    let i = graph.shape(c.input.tensor);
    let o = graph.shape(c.output.tensor);
    ConvParams {
        batch,
        in_h: i.height,
        in_w: i.width,
        in_c: c.input.channels,
        out_h: o.height,
        out_w: o.width,
        out_c: c.output.channels,
        m: batch * o.height * o.width,
        kernel_h: c.kernel.0,
        kernel_w: c.kernel.1,
        stride_h: c.stride,
        stride_w: c.stride,
        pad_top: pad_before(c.padding, i.height, c.kernel.0, c.stride),
        pad_left: pad_before(c.padding, i.width, c.kernel.1, c.stride),
        in_stride: i.channels,
        in_offset: c.input.offset,
        out_stride: o.channels,
        out_offset: c.output.offset,
        activation: activation_code(c.activation),
        residual: c.residual.is_some() as u32,
        res_stride: c.residual.map_or(0, |r| graph.shape(r.tensor).channels),
        res_offset: c.residual.map_or(0, |r| r.offset),
        _pad0: 0,
        _pad1: 0,
    }
}

/// depthwise.wgsl's parameters for `d` at `batch`.
pub fn depthwise_params(graph: &Graph, d: &Depthwise, batch: u32) -> DepthwiseParams {
    let i = graph.shape(d.input.tensor);
    let o = graph.shape(d.output.tensor);
    DepthwiseParams {
        batch,
        in_h: i.height,
        in_w: i.width,
        channels: d.input.channels,
        out_h: o.height,
        out_w: o.width,
        kernel_h: d.kernel.0,
        kernel_w: d.kernel.1,
        stride_h: d.stride,
        stride_w: d.stride,
        pad_top: pad_before(d.padding, i.height, d.kernel.0, d.stride),
        pad_left: pad_before(d.padding, i.width, d.kernel.1, d.stride),
        in_stride: i.channels,
        in_offset: d.input.offset,
        out_stride: o.channels,
        out_offset: d.output.offset,
        activation: activation_code(d.activation),
        _pad0: 0,
        _pad1: 0,
        _pad2: 0,
    }
}

/// shaders/common/activation.wgsl's code for `a`.
pub fn activation_code(a: Activation) -> u32 {
    match a {
        Activation::None => 0,
        Activation::Relu => 1,
        Activation::Relu6 => 2,
    }
}

pub fn pool_params(graph: &Graph, p: &Pool, batch: u32) -> PoolParams {
    let i = graph.shape(p.input.tensor);
    let o = graph.shape(p.output.tensor);
    PoolParams {
        batch,
        in_h: i.height,
        in_w: i.width,
        channels: p.input.channels,
        out_h: o.height,
        out_w: o.width,
        window_h: p.window,
        window_w: p.window,
        stride_h: p.stride,
        stride_w: p.stride,
        pad_top: pad_before(p.padding, i.height, p.window, p.stride),
        pad_left: pad_before(p.padding, i.width, p.window, p.stride),
        in_stride: i.channels,
        in_offset: p.input.offset,
        out_stride: o.channels,
        out_offset: p.output.offset,
    }
}

/// activation_backward.wgsl's parameters for the gradient through `c`'s
/// activation at `batch` (its output slice).
pub fn activation_grad_params(graph: &Graph, c: &Conv, batch: u32) -> ActivationGradParams {
    let p = conv_params(graph, c, batch);
    ActivationGradParams {
        rows: p.m,
        channels: p.out_c,
        stride: p.out_stride,
        offset: p.out_offset,
        activation: p.activation,
        ..Default::default()
    }
}

/// The pool kernel's entry point for `kind`.
pub fn pool_kind(kind: PoolOp) -> PoolKind {
    match kind {
        PoolOp::Max => PoolKind::Max,
        PoolOp::Average => PoolKind::Average,
        PoolOp::AverageCountingPadding => PoolKind::AverageCountingPadding,
    }
}

/// global_avg_pool.wgsl's parameters for pooling `input` at `batch`.
pub fn global_pool_params(graph: &Graph, input: TensorId, batch: u32) -> GlobalPoolParams {
    let s = graph.shape(input);
    GlobalPoolParams {
        batch,
        height: s.height,
        width: s.width,
        channels: s.channels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::graph::Op;
    use crate::model::mobilenet_v2::mobilenet_v2;

    /// (pad_top, pad_left) of every stride-2 conv and depthwise conv.
    fn stride_two_pads(g: &Graph) -> Vec<(u32, u32)> {
        g.ops
            .iter()
            .filter_map(|op| match op {
                Op::Conv(c) if c.stride == 2 => {
                    let p = conv_params(g, c, 1);
                    Some((p.pad_top, p.pad_left))
                }
                Op::Depthwise(d) if d.stride == 2 => {
                    let p = depthwise_params(g, d, 1);
                    Some((p.pad_top, p.pad_left))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn tensorflow_pads_even_sizes_after_pytorch_on_both_sides() {
        let mut g = mobilenet_v2(224, 224).unwrap();
        assert_eq!(stride_two_pads(&g), vec![(0, 0); 5]);
        g.pad_as_pytorch();
        assert_eq!(stride_two_pads(&g), vec![(1, 1); 5]);
        // Odd sizes (200 → 25 → 13 wide) pad (1, 1) with TensorFlow's rule too.
        let g = mobilenet_v2(160, 200).unwrap();
        assert_eq!(
            stride_two_pads(&g),
            vec![(0, 0), (0, 0), (0, 0), (0, 1), (0, 1)]
        );
    }
}
