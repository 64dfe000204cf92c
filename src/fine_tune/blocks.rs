//! Which part of the network trains: the blocks from a named boundary to the
//! bottleneck, as a graph of their ops alone, and the cut below them whose
//! activations are computed once and cached.

use crate::gpu::backward::input_grad_conv;
use crate::gpu::lowering::conv_params;
use crate::gpu::params::ConvParams;
use crate::gpu::tuning::shape_key;
use crate::model::graph::{Graph, Op};
use anyhow::{bail, Result};
use std::collections::HashSet;

/// The block `--fine-tune` trains from (with every block above it).
pub const DEFAULT_FROM: &str = "mixed9";

/// The trainable top of a network: its ops after the cut, which read only the
/// cut and each other's outputs.
pub struct TrainableBlocks {
    /// The first block that trains.
    pub from: String,
    /// The named tensor below it, the trainable part's input.
    pub cut: String,
    /// The network's tensors with only the trainable ops; the last is the
    /// global pool that gives the bottleneck.
    pub graph: Graph,
}

/// The network's block boundaries in order: each names the block's output
/// and, with `--fine-tune-from`, the block that trains from there on.
fn boundaries(graph: &Graph) -> Vec<String> {
    (0..)
        .map(|i| format!("mixed{i}"))
        .take_while(|name| graph.named(name).is_some())
        .collect()
}

impl TrainableBlocks {
    /// The blocks from `from` (a boundary name, e.g. "mixed9") up; an error
    /// listing the valid names otherwise.
    pub fn new(network: &Graph, from: &str) -> Result<Self> {
        let names = boundaries(network);
        let Some(index) = names.iter().position(|n| n == from) else {
            bail!(
                "cannot fine-tune from \"{from}\": the network's blocks are {}",
                if names.is_empty() {
                    "none (fine-tuning needs Inception V3)".to_string()
                } else {
                    names.join(", ")
                }
            );
        };
        let cut = match index {
            0 => "stem".to_string(),
            i => names[i - 1].clone(),
        };
        let cut_tensor = network.named(&cut).expect("a boundary below another");
        let first = network
            .ops
            .iter()
            .rposition(|op| op.output() == cut_tensor)
            .map_or(0, |i| i + 1);
        let ops = network.ops[first..].to_vec();
        let mut available = vec![cut_tensor];
        for op in &ops {
            if let Some(t) = op.inputs().into_iter().find(|t| !available.contains(t)) {
                bail!("the blocks above {cut} read tensor {t:?} from below the cut");
            }
            if !matches!(op, Op::Conv(c) if c.residual.is_none())
                && !matches!(op, Op::Pool(_) | Op::GlobalAvgPool { .. })
            {
                bail!("the blocks above {cut} hold an op fine-tuning cannot train: {op:?}");
            }
            available.push(op.output());
        }
        if !matches!(ops.last(), Some(Op::GlobalAvgPool { .. })) {
            bail!("the network does not end in a global pool");
        }
        let graph = Graph {
            shapes: network.shapes.clone(),
            ops,
            names: network.names.clone(),
        };
        Ok(TrainableBlocks {
            from: from.to_string(),
            cut,
            graph,
        })
    }

    /// Every trainable layer's name, weight shape and output channels.
    pub fn layers(&self) -> impl Iterator<Item = crate::model::graph::WeightedLayer<'_>> {
        self.graph.weighted_layers()
    }

    /// Values per image at the cut.
    pub fn cut_size(&self) -> usize {
        self.graph.shape(self.graph.ops[0].input()).elements() as usize
    }

    /// The forward convs that compute the blocks' stride-1 input gradients
    /// (gpu::backward::input_grad_conv) at batch 1, one per tuning shape;
    /// none for convs whose input needs no gradient.
    pub fn input_gradient_convs(&self) -> Vec<ConvParams> {
        let graph = &self.graph;
        let needed = needs_gradient(graph);
        let mut seen = HashSet::new();
        (graph.ops.iter())
            .filter_map(|op| op.as_conv())
            .filter(|c| needed[c.input.tensor.0])
            .filter_map(|c| input_grad_conv(&conv_params(graph, &c, 1)))
            .filter(|p| seen.insert(shape_key(p)))
            .collect()
    }
}

/// Per tensor of a graph of trainable ops: whether the backward pass needs
/// its gradient, i.e. whether a trained conv lies below it. The cut does not,
/// nor does what the ops compute from the cut alone (mixed9's pool branch
/// pools mixed8), so no input gradient is computed for the ops reading them.
pub fn needs_gradient(graph: &Graph) -> Vec<bool> {
    let mut needed = vec![false; graph.shapes.len()];
    for op in &graph.ops {
        let trained = op.as_conv().is_some();
        if trained || op.inputs().iter().any(|t| needed[t.0]) {
            needed[op.output().0] = true;
        }
    }
    needed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::inception_v3::inception_v3;

    #[test]
    fn the_top_blocks_read_only_the_cut() {
        let network = inception_v3(299, 299).unwrap();
        let top = TrainableBlocks::new(&network, DEFAULT_FROM).unwrap();
        assert_eq!(top.cut, "mixed8");
        assert_eq!(top.cut_size(), 8 * 8 * 1280);
        assert!(top
            .layers()
            .all(|l| l.name.starts_with("mixed9") || l.name.starts_with("mixed10")));
        assert_eq!(top.layers().count(), 18);
        let all = TrainableBlocks::new(&network, "mixed0").unwrap();
        assert_eq!(all.cut, "stem");
        let err = TrainableBlocks::new(&network, "mixed11")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("mixed0, mixed1") && err.contains("mixed10"),
            "{err}"
        );
    }

    #[test]
    fn input_gradients_are_tuned_for_the_convs_above_the_cut() {
        let network = inception_v3(299, 299).unwrap();
        let top = TrainableBlocks::new(&network, DEFAULT_FROM).unwrap();
        let keys: Vec<String> = top.input_gradient_convs().iter().map(shape_key).collect();
        let distinct: HashSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:?}");
        // mixed10's 3×3 448 → 384 conv, read backwards; mixed10's 1×1 2048 → 320.
        assert!(
            keys.contains(&"3x3s1_384to448_map64".to_string()),
            "{keys:?}"
        );
        assert!(
            keys.contains(&"1x1s1_320to2048_map64".to_string()),
            "{keys:?}"
        );
        // mixed9's 1×1 1280 → 320 reads the cut, its 1×1 1280 → 192 the cut's
        // average pool: their input gradients are never computed.
        for key in ["1x1s1_320to1280_map64", "1x1s1_192to1280_map64"] {
            assert!(!keys.contains(&key.to_string()), "{keys:?}");
        }
    }

    #[test]
    fn only_tensors_above_a_trained_conv_need_gradients() {
        let network = inception_v3(299, 299).unwrap();
        let top = TrainableBlocks::new(&network, DEFAULT_FROM).unwrap();
        let graph = &top.graph;
        let needed = needs_gradient(graph);
        let cut = graph.ops[0].input();
        assert!(!needed[cut.0]);
        // mixed9's pool branch: the average pool of mixed8 needs none, its conv's output does.
        let pools: Vec<&Op> = (graph.ops.iter())
            .filter(|op| matches!(op, Op::Pool(_)) && op.input() == cut)
            .collect();
        assert_eq!(pools.len(), 1);
        assert!(!needed[pools[0].output().0]);
        for conv in graph.convs() {
            assert!(needed[conv.output.tensor.0]);
        }
        let features = graph.ops.last().unwrap().output();
        assert!(needed[features.0]);
        let no_gradient = (0..graph.shapes.len())
            .filter(|&t| graph.ops.iter().any(|op| op.output().0 == t) && !needed[t])
            .count();
        assert_eq!(no_gradient, 1);
    }
}
