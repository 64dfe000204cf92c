//! The activation allocator: which buffer slot each tensor of a graph lives
//! in. A tensor takes a slot when first written and gives it back after its
//! last reader, so tensors whose lifetimes do not overlap share memory.

use crate::model::graph::{Graph, Op, TensorId};

/// Which slot each tensor lives in, and each slot's size in bytes. A tensor
/// takes a slot when first written and gives it back after its last reader;
/// tensors in `keep` are never given back (they are read after the run).
pub fn assign_slots(graph: &Graph, batch: u32, keep: &[TensorId]) -> (Vec<usize>, Vec<u64>) {
    let bytes = |t: TensorId| graph.shape(t).elements() * batch as u64 * 4;
    let mut last_use = vec![0usize; graph.shapes.len()];
    for (i, op) in graph.ops.iter().enumerate() {
        for t in op.inputs() {
            last_use[t.0] = i;
        }
    }
    for t in keep {
        last_use[t.0] = usize::MAX;
    }
    let mut slot_of = vec![usize::MAX; graph.shapes.len()];
    let mut sizes: Vec<u64> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut take = |t: TensorId, slot_of: &mut Vec<usize>, free: &mut Vec<usize>| {
        let need = bytes(t);
        // Best fit among free slots; else grow the largest free one; else a new slot.
        let fit = free
            .iter()
            .enumerate()
            .filter(|(_, &s)| sizes[s] >= need)
            .min_by_key(|(_, &s)| sizes[s]);
        let pick = fit
            .or_else(|| free.iter().enumerate().max_by_key(|(_, &s)| sizes[s]))
            .map(|(i, _)| i);
        let slot = match pick {
            Some(i) => free.swap_remove(i),
            None => {
                sizes.push(0);
                sizes.len() - 1
            }
        };
        sizes[slot] = sizes[slot].max(need);
        slot_of[t.0] = slot;
    };
    if let Some(input) = graph.ops.first().map(Op::input) {
        take(input, &mut slot_of, &mut free);
    }
    for (i, op) in graph.ops.iter().enumerate() {
        if slot_of[op.output().0] == usize::MAX {
            take(op.output(), &mut slot_of, &mut free);
        }
        let mut inputs = op.inputs();
        inputs.dedup();
        for t in inputs.into_iter().filter(|t| last_use[t.0] == i) {
            free.push(slot_of[t.0]);
        }
    }
    (slot_of, sizes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::graph::{Padding, PoolOp};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// A random network: convs and pools reading earlier tensors, some into
    /// new tensors, some into slices of a shared (concatenated) one.
    fn random_graph(rng: &mut StdRng) -> Graph {
        let mut g = Graph::default();
        let side = rng.random_range(4..12);
        let mut tensors = vec![g.tensor(side, side, rng.random_range(1..9))];
        for op in 0..rng.random_range(1..30) {
            let x = tensors[rng.random_range(0..tensors.len())];
            let name = format!("conv{op}");
            let out = match rng.random_range(0..4) {
                0 => g.conv(&name, x, rng.random_range(1..17), (1, 1), 1, Padding::Same),
                1 => g.conv(&name, x, rng.random_range(1..17), (3, 3), 1, Padding::Same),
                2 => g.pool(PoolOp::Max, x, 3, 1, Padding::Same),
                _ => {
                    let s = g.shape(x.tensor);
                    let (a, b) = (rng.random_range(1..9), rng.random_range(1..9));
                    let out = g.tensor(s.height, s.width, a + b);
                    let [left, right] = out.split([a, b]);
                    g.conv_into(&name, x, left, (1, 1), 1, Padding::Same)
                        .unwrap();
                    let right_name = format!("{name}_right");
                    g.conv_into(&right_name, x, right, (3, 3), 1, Padding::Same)
                        .map(|_| out)
                }
            };
            tensors.push(out.unwrap());
        }
        g
    }

    /// Op index of each tensor's first write (the input: before op 0) and
    /// last read (never read: its first write; kept: after every op).
    fn lifetimes(g: &Graph, keep: &[TensorId]) -> Vec<(i64, i64)> {
        let mut life = vec![(i64::MAX, i64::MIN); g.shapes.len()];
        life[g.ops[0].input().0] = (-1, -1);
        for (i, op) in g.ops.iter().enumerate() {
            let i = i as i64;
            let out = &mut life[op.output().0];
            *out = (out.0.min(i), out.1.max(i));
            for t in op.inputs() {
                life[t.0].1 = life[t.0].1.max(i);
            }
        }
        for t in keep {
            life[t.0].1 = i64::MAX;
        }
        life
    }

    #[test]
    fn no_two_live_tensors_share_a_slot_and_every_slot_is_large_enough() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..300 {
            let g = random_graph(&mut rng);
            let batch = rng.random_range(1..5);
            let keep: Vec<TensorId> = (0..g.shapes.len())
                .filter(|_| rng.random_bool(0.2))
                .map(TensorId)
                .filter(|t| g.ops.iter().any(|op| op.output() == *t))
                .collect();
            let (slot_of, sizes) = assign_slots(&g, batch, &keep);
            let life = lifetimes(&g, &keep);
            let used: Vec<usize> = (0..g.shapes.len())
                .filter(|&t| life[t].0 != i64::MAX)
                .collect();
            for &t in &used {
                let bytes = g.shapes[t].elements() * batch as u64 * 4;
                assert!(
                    sizes[slot_of[t]] >= bytes,
                    "tensor {t} does not fit its slot"
                );
                for &u in used.iter().filter(|&&u| u > t && slot_of[u] == slot_of[t]) {
                    let (a, b) = (life[t], life[u]);
                    assert!(
                        a.1 < b.0 || b.1 < a.0,
                        "tensors {t} {a:?} and {u} {b:?} share slot {} while both alive",
                        slot_of[t]
                    );
                }
            }
        }
    }
}
