//! Plain-Rust f64 references for the training kernels: the gradients of
//! conv, activation, pools and global average pool (each adding into its
//! output, as the kernels do), the classifier's forward and backward pass,
//! and the optimiser update.

use crate::gpu::kernels::PoolKind;
use crate::gpu::params::{
    ActivationGradParams, ClassifierTrainParams, ConvParams, GlobalPoolParams, OptimizerParams,
    PoolParams,
};

/// Index of an input element of `p`'s conv: image, row, column, channel.
fn conv_input_index(p: &ConvParams, img: u32, y: i64, x: i64, c: u32) -> Option<usize> {
    if y < 0 || y >= p.in_h as i64 || x < 0 || x >= p.in_w as i64 {
        return None;
    }
    let pixel = (img as i64 * p.in_h as i64 + y) * p.in_w as i64 + x;
    Some(pixel as usize * p.in_stride as usize + (p.in_offset + c) as usize)
}

/// Calls `f(output row, input element index, weight tap)` for every (output
/// pixel, tap) pair of the conv whose input pixel lies inside the input, for
/// input channel `ci`.
fn for_each_tap(p: &ConvParams, ci: u32, mut f: impl FnMut(usize, usize, u32)) {
    for img in 0..p.batch {
        for oy in 0..p.out_h {
            for ox in 0..p.out_w {
                let row = ((img * p.out_h + oy) * p.out_w + ox) as usize;
                for ky in 0..p.kernel_h {
                    for kx in 0..p.kernel_w {
                        let iy = (oy * p.stride_h + ky) as i64 - p.pad_top as i64;
                        let ix = (ox * p.stride_w + kx) as i64 - p.pad_left as i64;
                        if let Some(at) = conv_input_index(p, img, iy, ix, ci) {
                            f(row, at, ky * p.kernel_w + kx);
                        }
                    }
                }
            }
        }
    }
}

fn out_at(p: &ConvParams, row: usize, co: u32) -> usize {
    row * p.out_stride as usize + (p.out_offset + co) as usize
}

/// grad_in += the conv's input gradient (grad_out already through the activation).
pub fn conv_input_grad(p: &ConvParams, grad_out: &[f64], weights: &[f64], grad_in: &mut [f64]) {
    for ci in 0..p.in_c {
        for_each_tap(p, ci, |row, at, tap| {
            for co in 0..p.out_c {
                let w = weights[((tap * p.in_c + ci) * p.out_c + co) as usize];
                grad_in[at] += grad_out[out_at(p, row, co)] * w;
            }
        });
    }
}

/// grad_weights and grad_bias += the conv's parameter gradients.
pub fn conv_parameter_grads(
    p: &ConvParams,
    input: &[f64],
    grad_out: &[f64],
    grad_weights: &mut [f64],
    grad_bias: &mut [f64],
) {
    for ci in 0..p.in_c {
        for_each_tap(p, ci, |row, at, tap| {
            for co in 0..p.out_c {
                grad_weights[((tap * p.in_c + ci) * p.out_c + co) as usize] +=
                    input[at] * grad_out[out_at(p, row, co)];
            }
        });
    }
    for row in 0..p.m as usize {
        for co in 0..p.out_c {
            grad_bias[co as usize] += grad_out[out_at(p, row, co)];
        }
    }
}

/// grad *= the activation's derivative at `output`.
pub fn activation_grad(p: &ActivationGradParams, output: &[f64], grad: &mut [f64]) {
    for r in 0..p.rows as usize {
        for c in 0..p.channels as usize {
            let at = r * p.stride as usize + p.offset as usize + c;
            let y = output[at];
            let pass = match p.activation {
                1 => y > 0.0,
                2 => y > 0.0 && y < 6.0,
                _ => true,
            };
            if !pass {
                grad[at] = 0.0;
            }
        }
    }
}

/// grad_in += the pool's input gradient; a max pool's window passes its
/// gradient to its first largest cell in row-major order.
pub fn pool_grad(
    kind: PoolKind,
    p: &PoolParams,
    input: &[f64],
    grad_out: &[f64],
    grad_in: &mut [f64],
) {
    let in_at = |img: i64, y: i64, x: i64, c: usize| {
        ((img * p.in_h as i64 + y) * p.in_w as i64 + x) as usize * p.in_stride as usize
            + p.in_offset as usize
            + c
    };
    for img in 0..p.batch as i64 {
        for oy in 0..p.out_h as i64 {
            for ox in 0..p.out_w as i64 {
                let out_pixel = ((img * p.out_h as i64 + oy) * p.out_w as i64 + ox) as usize;
                for c in 0..p.channels as usize {
                    let g = grad_out[out_pixel * p.out_stride as usize + p.out_offset as usize + c];
                    let mut cells = Vec::new();
                    for dy in 0..p.window_h as i64 {
                        for dx in 0..p.window_w as i64 {
                            let y = oy * p.stride_h as i64 + dy - p.pad_top as i64;
                            let x = ox * p.stride_w as i64 + dx - p.pad_left as i64;
                            if y >= 0 && y < p.in_h as i64 && x >= 0 && x < p.in_w as i64 {
                                cells.push(in_at(img, y, x, c));
                            }
                        }
                    }
                    match kind {
                        PoolKind::Max => {
                            let mut best = cells[0];
                            for &at in &cells {
                                if input[at] > input[best] {
                                    best = at;
                                }
                            }
                            grad_in[best] += g;
                        }
                        PoolKind::Average => {
                            for &at in &cells {
                                grad_in[at] += g / cells.len() as f64;
                            }
                        }
                        PoolKind::AverageCountingPadding => {
                            for &at in &cells {
                                grad_in[at] += g / (p.window_h * p.window_w) as f64;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// grad_in ([batch, h, w, c]) += grad_out ([batch, c]) / (h·w) at every pixel.
pub fn global_avg_pool_grad(p: &GlobalPoolParams, grad_out: &[f64], grad_in: &mut [f64]) {
    let pixels = (p.height * p.width) as usize;
    let channels = p.channels as usize;
    for (i, g) in grad_in.iter_mut().enumerate() {
        let img = i / (pixels * channels);
        *g += grad_out[img * channels + i % channels] / pixels as f64;
    }
}

/// shaders/classifier_train.wgsl's hash (PCG's output permutation of one LCG step).
fn hash(x: u32) -> u32 {
    let state = x.wrapping_mul(747796405).wrapping_add(2891336453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277803737);
    (word >> 22) ^ word
}

/// Dropout's factor for input value `d` of row `r`: 0 or keep_scale.
pub fn dropout_mask(p: &ClassifierTrainParams, r: u32, d: u32) -> f64 {
    let dropped = hash(p.seed ^ hash(r.wrapping_mul(p.dim).wrapping_add(d))) < p.drop_below;
    if dropped {
        0.0
    } else {
        p.keep_scale as f64
    }
}

/// The classifier's pass over a batch (its input dropped out as `p` says,
/// then standardised: (x − mean)·inv_std): probabilities, per-row
/// cross-entropy, and the gradients of Σ cross-entropy · scale.
pub struct ClassifierPass {
    pub probabilities: Vec<f64>,
    pub losses: Vec<f64>,
    pub grad_weights: Vec<f64>,
    pub grad_biases: Vec<f64>,
    pub grad_features: Vec<f64>,
}

pub fn classifier(
    p: &ClassifierTrainParams,
    features: &[f64],
    (weights, biases): (&[f64], &[f64]),
    (mean, inv_std): (&[f64], &[f64]),
    labels: &[u32],
) -> ClassifierPass {
    let (rows, dim, classes) = (p.rows as usize, p.dim as usize, p.classes as usize);
    let mut pass = ClassifierPass {
        probabilities: vec![0.0; rows * classes],
        losses: vec![0.0; rows],
        grad_weights: vec![0.0; dim * classes],
        grad_biases: vec![0.0; classes],
        grad_features: vec![0.0; rows * dim],
    };
    for r in 0..rows {
        let mask: Vec<f64> = (0..dim)
            .map(|d| dropout_mask(p, r as u32, d as u32))
            .collect();
        let x: Vec<f64> = (0..dim)
            .map(|d| (features[r * dim + d] * mask[d] - mean[d]) * inv_std[d])
            .collect();
        let logits: Vec<f64> = (0..classes)
            .map(|c| {
                biases[c]
                    + (0..dim)
                        .map(|d| x[d] * weights[d * classes + c])
                        .sum::<f64>()
            })
            .collect();
        let top = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = logits.iter().map(|l| (l - top).exp()).sum();
        let label = labels[r] as usize;
        for c in 0..classes {
            let prob = (logits[c] - top).exp() / sum;
            pass.probabilities[r * classes + c] = prob;
            let delta = (prob - (c == label) as u8 as f64) * p.scale as f64;
            pass.grad_biases[c] += delta;
            for d in 0..dim {
                pass.grad_weights[d * classes + c] += x[d] * delta;
                pass.grad_features[r * dim + d] +=
                    delta * weights[d * classes + c] * mask[d] * inv_std[d];
            }
        }
        pass.losses[r] = -pass.probabilities[r * classes + label].ln();
    }
    pass
}

/// One optimiser update (shaders/optimizer.wgsl) of `parameters` from
/// `gradients`, which are then zeroed.
pub fn optimizer_step(
    p: &OptimizerParams,
    parameters: &mut [f64],
    gradients: &mut [f64],
    first: &mut [f64],
    second: &mut [f64],
) {
    let (b1, b2) = (p.beta1 as f64, p.beta2 as f64);
    for i in 0..parameters.len() {
        let g = std::mem::take(&mut gradients[i]);
        let w = parameters[i] * (1.0 - p.decay as f64);
        if p.rule == 0 {
            first[i] = b1 * first[i] - p.step_size as f64 * g;
            parameters[i] = w + first[i];
        } else {
            first[i] = b1 * first[i] + (1.0 - b1) * g;
            second[i] = b2 * second[i] + (1.0 - b2) * g * g;
            parameters[i] =
                w - p.step_size as f64 * first[i] / (second[i].sqrt() + p.epsilon as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_drops_at_its_rate_and_scales_the_rest() {
        for (rate, seed) in [(0.0, 1), (0.1, 2), (0.3, 3), (0.5, 4)] {
            let p = ClassifierTrainParams::new(64, 2048, 2, 1.0).with_dropout(rate, seed);
            let masks: Vec<f64> = (0..64 * 2048)
                .map(|i| dropout_mask(&p, i / 2048, i % 2048))
                .collect();
            let dropped = masks.iter().filter(|&&m| m == 0.0).count() as f64 / masks.len() as f64;
            assert!((dropped - rate as f64).abs() < 0.01, "{rate}: {dropped}");
            let kept = 1.0 / (1.0 - rate as f64);
            assert!(masks.iter().all(|&m| m == 0.0 || (m - kept).abs() < 1e-6));
        }
        // Another seed draws another mask.
        let [a, b] = [5, 6].map(|seed| {
            let p = ClassifierTrainParams::new(1, 256, 2, 1.0).with_dropout(0.5, seed);
            (0..256).map(|d| dropout_mask(&p, 0, d)).collect::<Vec<_>>()
        });
        assert_ne!(a, b);
    }
}
