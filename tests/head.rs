//! The head's GPU training against the f64 CPU reference: same initial
//! weights, same sampled rows, K steps; weights within relative 1e-4.

mod common;

use common::{gpu, random_vec, rel_l2, rng};
use rand::Rng;
use retrain::cpu_reference::head_step;
use retrain::train::head::GpuHead;

#[test]
fn k_steps_match_the_cpu_reference() {
    let (gpu, _) = gpu();
    let mut rng = rng(42);
    for (dim, classes, batch) in [(37u32, 3u32, 10u32), (2048, 2, 100), (130, 7, 33)] {
        let n = 60usize;
        let features: Vec<f32> = random_vec(&mut rng, n * dim as usize)
            .iter()
            .map(|v| v.abs() * 2.0)
            .collect();
        let labels: Vec<u32> = (0..n).map(|_| rng.random_range(0..classes)).collect();
        let initial: Vec<f32> = random_vec(&mut rng, (dim * classes + classes) as usize)
            .iter()
            .map(|v| v * 0.01)
            .collect();
        let lr = 0.05;
        let head = GpuHead::new(gpu, &features, &labels, dim, classes, &initial, lr).unwrap();
        let slot = head.batch(gpu, batch);
        let mut reference: Vec<f64> = initial.iter().map(|&v| v as f64).collect();
        for step in 0..8 {
            let rows: Vec<u32> = (0..batch).map(|_| rng.random_range(0..n as u32)).collect();
            if step % 3 == 0 {
                let (loss, acc) = head.evaluate(gpu, &slot, &rows).unwrap();
                let (ref_loss, ref_acc) = head_step(
                    &features,
                    dim as usize,
                    classes as usize,
                    &labels,
                    &rows,
                    &mut reference.clone(),
                    0.0,
                );
                assert!(
                    ((loss as f64) - ref_loss).abs() <= 1e-4 * ref_loss.abs().max(1.0),
                    "loss {loss} vs {ref_loss}"
                );
                assert!(
                    ((acc as f64) - ref_acc).abs() < 1e-6,
                    "accuracy {acc} vs {ref_acc}"
                );
            }
            head.train_step(gpu, &slot, &rows);
            head_step(
                &features,
                dim as usize,
                classes as usize,
                &labels,
                &rows,
                &mut reference,
                lr as f64,
            );
        }
        let gpu_params = head.parameters(gpu).unwrap();
        let reference: Vec<f32> = reference.iter().map(|&v| v as f32).collect();
        let moved = rel_l2(&reference, &initial);
        assert!(moved > 1e-3, "training must change the weights ({moved})");
        let err = rel_l2(&gpu_params, &reference);
        assert!(
            err <= 1e-4,
            "dim {dim} classes {classes}: relative error {err:e}"
        );
    }
}

#[test]
fn predictions_and_logits_match_the_weights() {
    let (gpu, _) = gpu();
    let mut rng = rng(7);
    let (n, dim, classes) = (20usize, 16u32, 4u32);
    let features = random_vec(&mut rng, n * dim as usize);
    let labels: Vec<u32> = (0..n as u32).map(|i| i % classes).collect();
    let params = random_vec(&mut rng, (dim * classes + classes) as usize);
    let head = GpuHead::new(gpu, &features, &labels, dim, classes, &params, 0.1).unwrap();
    let rows: Vec<u32> = (0..n as u32).rev().collect();
    let slot = head.batch(gpu, n as u32);
    let logits = head.logits(gpu, &slot, &rows).unwrap();
    let predicted = head.predict(gpu, &slot, &rows).unwrap();
    for (b, &row) in rows.iter().enumerate() {
        let x = &features[row as usize * dim as usize..][..dim as usize];
        let expect: Vec<f32> = (0..classes as usize)
            .map(|c| {
                params[(dim * classes) as usize + c]
                    + (0..dim as usize)
                        .map(|k| x[k] * params[k * classes as usize + c])
                        .sum::<f32>()
            })
            .collect();
        for c in 0..classes as usize {
            assert!((logits[b * classes as usize + c] - expect[c]).abs() < 1e-4);
        }
        let best = (0..classes as usize).fold(0, |m, c| if expect[c] > expect[m] { c } else { m });
        assert_eq!(predicted[b] as usize, best);
    }
}
