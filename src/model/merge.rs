//! Merging sibling 1×1 convs. In a mixed block several 1×1 convs read the
//! same input; computed as one GEMM, with their weights side by side, they
//! read that input once in one larger dispatch, which pays where small convs
//! leave a GPU idle. Their outputs become slices of one new tensor and their
//! readers are re-pointed at those slices. Whether a group is merged is the
//! tuner's call: it times both ways on the device.

use super::graph::{Conv, Graph, MergedConv, Op, Slice, TensorId};
use std::collections::{BTreeMap, HashSet};

/// Sibling convs that can be merged: their op indexes in execution order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiblingGroup {
    pub ops: Vec<usize>,
}

impl SiblingGroup {
    /// The group's convs, as the graph it was found in holds them.
    pub fn convs<'g>(&self, graph: &'g Graph) -> Vec<&'g Conv> {
        self.ops
            .iter()
            .map(|&i| match &graph.ops[i] {
                Op::Conv(c) => c,
                _ => unreachable!("sibling groups hold convs only"),
            })
            .collect()
    }
}

/// Every group of two or more mergeable 1×1 convs reading the same input slice.
pub fn sibling_groups(graph: &Graph) -> Vec<SiblingGroup> {
    let mut by_input: BTreeMap<(TensorId, u32, u32), Vec<usize>> = BTreeMap::new();
    for (i, op) in graph.ops.iter().enumerate() {
        if let Op::Conv(c) = op {
            if mergeable(graph, c) {
                let key = (c.input.tensor, c.input.offset, c.input.channels);
                by_input.entry(key).or_default().push(i);
            }
        }
    }
    let mut groups: Vec<SiblingGroup> = by_input
        .into_values()
        .filter(|ops| ops.len() > 1)
        .map(|ops| SiblingGroup { ops })
        .collect();
    groups.sort_by_key(|g| g.ops[0]);
    groups
}

/// A 1×1 stride-1 conv with channels aligned to 4 (so every kernel variant
/// can still run it) and no residual, writing a whole unnamed tensor of its
/// own that only convs and pools read as their input (they can read a slice instead).
fn mergeable(graph: &Graph, c: &Conv) -> bool {
    let out = c.output.tensor;
    let writers = graph.ops.iter().filter(|op| op.output() == out).count();
    let readers_take_slices = graph
        .ops
        .iter()
        .filter(|op| op.inputs().contains(&out))
        .all(|op| {
            matches!(op, Op::Conv(c) if c.residual.is_none_or(|r| r.tensor != out))
                || matches!(op, Op::Pool(_))
        });
    c.residual.is_none()
        && c.kernel == (1, 1)
        && c.stride == 1
        && c.output.offset == 0
        && c.output.channels == graph.shape(out).channels
        && c.output.channels.is_multiple_of(4)
        && !graph.names.values().any(|&t| t == out)
        && writers == 1
        && readers_take_slices
}

/// `graph` with each of `groups` (found by `sibling_groups` on it) computed
/// as one merged conv, placed where the group's first conv was.
pub fn merge(graph: &Graph, groups: &[SiblingGroup]) -> Graph {
    let mut g = graph.clone();
    let mut absorbed: HashSet<usize> = HashSet::new();
    for group in groups {
        let convs: Vec<Conv> = group.convs(&g).into_iter().cloned().collect();
        let shape = g.shape(convs[0].output.tensor);
        let total = convs.iter().map(|c| c.output.channels).sum();
        let merged = g.tensor(shape.height, shape.width, total);
        let mut offset = 0;
        let parts = convs
            .into_iter()
            .map(|c| {
                let slice = Slice {
                    offset,
                    channels: c.output.channels,
                    ..merged
                };
                offset += c.output.channels;
                repoint_readers(&mut g, c.output.tensor, slice);
                Conv { output: slice, ..c }
            })
            .collect();
        g.ops[group.ops[0]] = Op::MergedConv(MergedConv { parts });
        absorbed.extend(&group.ops[1..]);
    }
    g.ops = std::mem::take(&mut g.ops)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !absorbed.contains(i))
        .map(|(_, op)| op)
        .collect();
    g
}

/// Makes every op reading tensor `old` read the same channels of `new` instead.
fn repoint_readers(g: &mut Graph, old: TensorId, new: Slice) {
    let repoint = |input: &mut Slice| {
        if input.tensor == old {
            input.tensor = new.tensor;
            input.offset += new.offset;
        }
    };
    for op in &mut g.ops {
        match op {
            Op::Conv(c) => repoint(&mut c.input),
            Op::MergedConv(m) => m.parts.iter_mut().for_each(|c| repoint(&mut c.input)),
            Op::Depthwise(d) => repoint(&mut d.input),
            Op::Pool(p) => repoint(&mut p.input),
            Op::GlobalAvgPool { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::inception_v3::inception_v3;

    #[test]
    fn finds_the_reduce_convs_of_each_mixed_block() {
        let g = inception_v3(299, 299).unwrap();
        let groups = sibling_groups(&g);
        let channels: Vec<Vec<u32>> = groups
            .iter()
            .map(|grp| grp.convs(&g).iter().map(|c| c.output.channels).collect())
            .collect();
        // mixed0-2: 48 + 64; mixed4-7: c7 + c7; mixed8: 192 + 192; mixed9-10: 384 + 448.
        // (mixed3 has one reduce conv; the 1×1 branches write into the block's output.)
        let expected: Vec<Vec<u32>> = [48, 48, 48, 128, 160, 160, 192, 192, 384, 384]
            .iter()
            .enumerate()
            .map(|(i, &c)| match i {
                0..=2 => vec![c, 64],
                8 | 9 => vec![c, 448],
                _ => vec![c, c],
            })
            .collect();
        assert_eq!(channels, expected);
    }

    #[test]
    fn merged_graph_computes_every_conv_once_and_rewires_the_readers() {
        let g = inception_v3(299, 299).unwrap();
        let groups = sibling_groups(&g);
        let m = merge(&g, &groups);
        assert_eq!(m.ops.len(), g.ops.len() - groups.len());
        let mut units: Vec<&str> = m.convs().map(|c| c.name.as_str()).collect();
        let mut all: Vec<&str> = g.convs().map(|c| c.name.as_str()).collect();
        units.sort();
        all.sort();
        assert_eq!(units.len(), 94);
        assert_eq!(units, all, "every conv kept once");
        assert_eq!(m.names, g.names, "named tensors untouched");

        let merged: Vec<&MergedConv> = m
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::MergedConv(mc) => Some(mc),
                _ => None,
            })
            .collect();
        assert_eq!(merged.len(), groups.len());
        for mc in merged {
            let whole = mc.as_conv();
            assert_eq!(whole.output.channels, m.shape(whole.output.tensor).channels);
            for part in &mc.parts {
                // Each part's old output is no longer read; its slice is.
                let old = g
                    .convs()
                    .find(|c| c.name == part.name)
                    .unwrap()
                    .output
                    .tensor;
                assert!(m.ops.iter().all(|op| op.input() != old));
                assert!(m.convs().any(|c| c.input.tensor == part.output.tensor
                    && c.input.offset == part.output.offset
                    && c.input.channels == part.output.channels));
            }
        }
    }

    #[test]
    fn merging_no_group_changes_nothing() {
        let g = inception_v3(80, 80).unwrap();
        let m = merge(&g, &[]);
        assert_eq!(format!("{:?}", m.ops), format!("{:?}", g.ops));
    }
}
