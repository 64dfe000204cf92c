//! MobileNet V2 (Sandler et al., 2018), alpha 1.0, as Keras's
//! `mobilenet_v2.py` builds it, without the classifier: a 3×3 stride-2 stem,
//! 17 inverted residual blocks (1×1 expansion, 3×3 depthwise, linear 1×1
//! projection, the block's input added back when the shape allows), a 1×1
//! conv to 1280 channels, then global average pooling to the bottleneck.
//! Batch norms are folded; activations are ReLU6. Layers carry Keras's names
//! (`Conv1`, `block_13_depthwise`, …), which are their weights' names.
//!
//! Every 3×3 window follows TF's SAME rule: Keras's `ZeroPadding2D` before a
//! stride-2 layer pads (0, 1) on the even sizes it was built for, which is
//! SAME's split; on odd sizes SAME pads (1, 1), as Keras's `correct_pad` does.

use super::graph::{Activation, Conv, Graph, Padding, Slice, INPUT, OUTPUT};
use anyhow::{bail, Result};

use Activation::{None as Linear, Relu6};

/// Smallest input side accepted (the five stride-2 layers leave 1×1).
pub const MIN_INPUT: u32 = 32;
pub const BOTTLENECK: u32 = 1280;
pub const DEFAULT_INPUT: u32 = 224;

/// The inverted residual blocks after the first: (expansion, output
/// channels, repeats, stride of the first repeat), Table 2 of the paper.
const BLOCKS: [(u32, u32, u32, u32); 6] = [
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// A conv with folded batch norm named `name`, TF SAME padding, into a new tensor.
fn conv_bn(
    g: &mut Graph,
    name: &str,
    x: Slice,
    channels: u32,
    (kernel, stride): (u32, u32),
    activation: Activation,
) -> Result<Slice> {
    let (h, w) = g.out_hw(x, (kernel, kernel), stride, Padding::Same)?;
    let output = g.tensor(h, w, channels);
    g.add_conv(Conv {
        name: name.to_string(),
        input: x,
        output,
        kernel: (kernel, kernel),
        stride,
        padding: Padding::Same,
        activation,
        residual: None,
    })?;
    Ok(output)
}

/// One inverted residual block (`prefix` is `expanded_conv` or `block_N`):
/// expand ×`expansion` (none for 1), 3×3 depthwise at `stride`, linear
/// projection to `out_c`, plus the input when the shapes match. Names the
/// tensors Keras names (`{prefix}_expand_relu`, `…_depthwise_relu`,
/// `…_project_BN`, `…_add`).
fn inverted_residual(
    g: &mut Graph,
    prefix: &str,
    x: Slice,
    (expansion, out_c, stride): (u32, u32, u32),
) -> Result<Slice> {
    let mut t = x;
    if expansion != 1 {
        t = conv_bn(
            g,
            &format!("{prefix}_expand"),
            x,
            x.channels * expansion,
            (1, 1),
            Relu6,
        )?;
        g.name(&format!("{prefix}_expand_relu"), t);
    }
    t = g.depthwise(&format!("{prefix}_depthwise"), t, (3, 3), stride, Relu6)?;
    g.name(&format!("{prefix}_depthwise_relu"), t);
    let residual = (stride == 1 && x.channels == out_c).then_some(x);
    let s = g.shape(t.tensor);
    let output = g.tensor(s.height, s.width, out_c);
    g.add_conv(Conv {
        name: format!("{prefix}_project"),
        input: t,
        output,
        kernel: (1, 1),
        stride: 1,
        padding: Padding::Same,
        activation: Linear,
        residual,
    })?;
    let tap = if residual.is_some() {
        "add"
    } else {
        "project_BN"
    };
    g.name(&format!("{prefix}_{tap}"), output);
    Ok(output)
}

/// The whole network for an input of `height`×`width` RGB pixels. Names the
/// tensors `input`, `Conv1_relu`, the blocks' taps, `out_relu` and `bottleneck`.
pub fn mobilenet_v2(height: u32, width: u32) -> Result<Graph> {
    if height < MIN_INPUT || width < MIN_INPUT {
        bail!("input size {height}×{width} is too small: MobileNet V2 needs at least {MIN_INPUT}×{MIN_INPUT}");
    }
    let mut g = Graph::default();
    let x = g.tensor(height, width, 3);
    g.name(INPUT, x);
    let x = conv_bn(&mut g, "Conv1", x, 32, (3, 2), Relu6)?;
    g.name("Conv1_relu", x);
    let mut x = inverted_residual(&mut g, "expanded_conv", x, (1, 16, 1))?;
    let mut block = 1;
    for (expansion, out_c, repeats, first_stride) in BLOCKS {
        for r in 0..repeats {
            let stride = if r == 0 { first_stride } else { 1 };
            x = inverted_residual(
                &mut g,
                &format!("block_{block}"),
                x,
                (expansion, out_c, stride),
            )?;
            block += 1;
        }
    }
    let x = conv_bn(&mut g, "Conv_1", x, 1280, (1, 1), Relu6)?;
    g.name("out_relu", x);
    let bottleneck = g.global_avg_pool(x);
    g.name(OUTPUT, bottleneck);
    Ok(g)
}

/// The layers with weights in Keras's creation order (which is also
/// `model.layers` order here: a chain has one walk).
pub fn keras_order() -> Vec<String> {
    let g = mobilenet_v2(DEFAULT_INPUT, DEFAULT_INPUT).expect("the default size builds");
    g.weighted_layers().map(|l| l.name.to_string()).collect()
}

/// Keras's name for the batch norm that follows layer `name`.
pub fn batch_norm_of(name: &str) -> String {
    match name {
        "Conv1" => "bn_Conv1".into(),
        "Conv_1" => "Conv_1_bn".into(),
        _ => format!("{name}_BN"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(g: &Graph, name: &str) -> (u32, u32, u32) {
        let s = g.shape(g.named(name).unwrap());
        (s.height, s.width, s.channels)
    }

    #[test]
    fn shapes_match_keras_at_224() {
        let g = mobilenet_v2(224, 224).unwrap();
        assert_eq!(g.convs().count(), 35);
        assert_eq!(g.weighted_layers().count(), 35 + 17);
        assert_eq!(side(&g, "Conv1_relu"), (112, 112, 32));
        assert_eq!(side(&g, "block_2_add"), (56, 56, 24));
        assert_eq!(side(&g, "block_6_project_BN"), (14, 14, 64));
        assert_eq!(side(&g, "block_13_expand_relu"), (14, 14, 576));
        assert_eq!(side(&g, "block_13_depthwise_relu"), (7, 7, 576));
        assert_eq!(side(&g, "out_relu"), (7, 7, 1280));
        assert_eq!(side(&g, "bottleneck"), (1, 1, 1280));
        let adds = g.convs().filter(|c| c.residual.is_some()).count();
        assert_eq!(adds, 10);
    }

    #[test]
    fn odd_sizes_pad_as_tensorflow_does() {
        // 160×200: widths 25 and 13 reach stride-2 layers; out_relu is 5×7.
        let g = mobilenet_v2(160, 200).unwrap();
        assert_eq!(side(&g, "out_relu"), (5, 7, 1280));
        assert!(mobilenet_v2(31, 224).is_err());
    }

    #[test]
    fn every_layer_has_a_batch_norm_name() {
        let order = keras_order();
        assert_eq!(order.len(), 52);
        assert_eq!(order[0], "Conv1");
        assert_eq!(batch_norm_of(&order[1]), "expanded_conv_depthwise_BN");
        assert_eq!(order[51], "Conv_1");
    }
}
