//! The buffer allocator: which slot each value of a pass lives in. A value
//! takes a slot at the step it is first written and gives it back after the
//! step it is last used, so values whose lifetimes do not overlap share
//! memory. The forward pass's activations are planned with it, and so are
//! the gradients of the fine-tuning backward pass.

use crate::model::graph::{Graph, Op, TensorId};

/// A value needing `bytes` from step `first` to step `last`, both included.
#[derive(Clone, Copy, Debug)]
pub struct Life {
    pub first: usize,
    pub last: usize,
    pub bytes: u64,
}

/// The slot of each life and each slot's size in bytes. At every step, the
/// lives that ended before it give their slots back, then the lives that
/// begin at it take one (in the order given): the best-fitting free slot,
/// else the largest free one grown, else a new slot.
pub fn share_slots(lives: &[Life]) -> (Vec<usize>, Vec<u64>) {
    let mut starts: Vec<usize> = (0..lives.len()).collect();
    starts.sort_by_key(|&i| lives[i].first);
    let mut ends: Vec<usize> = (0..lives.len()).collect();
    ends.sort_by_key(|&i| lives[i].last);
    let (mut slot_of, mut sizes) = (vec![usize::MAX; lives.len()], Vec::<u64>::new());
    let mut free: Vec<usize> = Vec::new();
    let mut ended = 0;
    for i in starts {
        let life = lives[i];
        while ended < ends.len() && lives[ends[ended]].last < life.first {
            let slot = slot_of[ends[ended]];
            if slot != usize::MAX {
                free.push(slot);
            }
            ended += 1;
        }
        let fit = (free.iter().enumerate())
            .filter(|(_, &s)| sizes[s] >= life.bytes)
            .min_by_key(|(_, &s)| sizes[s]);
        let pick = fit
            .or_else(|| free.iter().enumerate().max_by_key(|(_, &s)| sizes[s]))
            .map(|(k, _)| k);
        let slot = match pick {
            Some(k) => free.swap_remove(k),
            None => {
                sizes.push(0);
                sizes.len() - 1
            }
        };
        sizes[slot] = sizes[slot].max(life.bytes);
        slot_of[i] = slot;
    }
    (slot_of, sizes)
}

/// Which slot each tensor of `graph` lives in during the forward pass, and
/// each slot's size in bytes. Step i is op i; the network's input is written
/// before op 0. A tensor lives from its first write to its last read (or
/// write); tensors in `keep` live to the end (they are read after the run).
pub fn assign_slots(graph: &Graph, batch: u32, keep: &[TensorId]) -> (Vec<usize>, Vec<u64>) {
    let bytes = |t: TensorId| graph.shape(t).elements() * batch as u64 * 4;
    let mut order: Vec<TensorId> = graph.ops.first().map(Op::input).into_iter().collect();
    let mut span = vec![None::<(usize, usize)>; graph.shapes.len()];
    if let Some(input) = order.first() {
        span[input.0] = Some((0, 0));
    }
    for (i, op) in graph.ops.iter().enumerate() {
        let out = op.output();
        match &mut span[out.0] {
            Some(s) => s.1 = s.1.max(i),
            None => {
                span[out.0] = Some((i, i));
                order.push(out);
            }
        }
        for t in op.inputs() {
            if let Some(s) = &mut span[t.0] {
                s.1 = s.1.max(i);
            }
        }
    }
    for t in keep {
        if let Some(s) = &mut span[t.0] {
            s.1 = usize::MAX;
        }
    }
    let lives: Vec<Life> = (order.iter())
        .map(|&t| {
            let (first, last) = span[t.0].expect("a tensor of the order");
            Life {
                first,
                last,
                bytes: bytes(t),
            }
        })
        .collect();
    let (slots, sizes) = share_slots(&lives);
    let mut slot_of = vec![usize::MAX; graph.shapes.len()];
    for (t, slot) in order.into_iter().zip(slots) {
        slot_of[t.0] = slot;
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
