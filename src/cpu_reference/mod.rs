//! Plain-Rust references for every kernel, accumulating in f64.
//! The kernel tests compare the GPU against these; nothing in the engine calls them.

use crate::gpu::kernels::PoolKind;
use crate::gpu::params::{
    ConvParams, DepthwiseParams, GlobalPoolParams, PoolParams, PreprocessParams,
};
use crate::head::optimizer::{HeadSettings, Optimizer, TrainingRule};

pub mod backward;
pub mod network;

/// A value the references read and write: f32 (what the kernels hold) or
/// f64 (for finite differences); arithmetic is f64 either way.
pub trait Real: Copy {
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

impl Real for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Real for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// activation.wgsl's activation `code` (0 none, 1 ReLU, 2 ReLU6).
fn activate(v: f64, code: u32) -> f64 {
    match code {
        1 => v.max(0.0),
        2 => v.clamp(0.0, 6.0),
        _ => v,
    }
}

/// Conv2d (+ bias, + `residual` when p.residual, then the activation) into
/// `output`'s channel slice; NHWC / HWIO layouts as the kernel's.
pub fn conv2d<V: Real>(
    p: &ConvParams,
    input: &[V],
    (weights, bias): (&[V], &[V]),
    residual: &[V],
    output: &mut [V],
) {
    for img in 0..p.batch {
        for oy in 0..p.out_h {
            for ox in 0..p.out_w {
                let row = ((img * p.out_h + oy) * p.out_w + ox) as usize;
                for co in 0..p.out_c {
                    let mut sum = bias[co as usize].to_f64();
                    for ky in 0..p.kernel_h {
                        let iy = (oy * p.stride_h + ky) as i64 - p.pad_top as i64;
                        if iy < 0 || iy >= p.in_h as i64 {
                            continue;
                        }
                        for kx in 0..p.kernel_w {
                            let ix = (ox * p.stride_w + kx) as i64 - p.pad_left as i64;
                            if ix < 0 || ix >= p.in_w as i64 {
                                continue;
                            }
                            let pixel = ((img as i64 * p.in_h as i64 + iy) * p.in_w as i64 + ix)
                                as usize
                                * p.in_stride as usize
                                + p.in_offset as usize;
                            let tap = (ky * p.kernel_w + kx) * p.in_c;
                            for ci in 0..p.in_c {
                                let w = weights[((tap + ci) * p.out_c + co) as usize];
                                sum += input[pixel + ci as usize].to_f64() * w.to_f64();
                            }
                        }
                    }
                    let at = row * p.out_stride as usize + (p.out_offset + co) as usize;
                    match p.residual {
                        1 => {
                            sum += residual
                                [row * p.res_stride as usize + (p.res_offset + co) as usize]
                                .to_f64()
                        }
                        2 => sum += output[at].to_f64(),
                        _ => {}
                    }
                    output[at] = V::from_f64(activate(sum, p.activation));
                }
            }
        }
    }
}

/// Depthwise conv (+ bias, then the activation) into `output`'s channel
/// slice; weights [kh, kw, channels].
pub fn depthwise(
    p: &DepthwiseParams,
    input: &[f32],
    (weights, bias): (&[f32], &[f32]),
    output: &mut [f32],
) {
    for img in 0..p.batch {
        for oy in 0..p.out_h {
            for ox in 0..p.out_w {
                let row = ((img * p.out_h + oy) * p.out_w + ox) as usize;
                for c in 0..p.channels {
                    let mut sum = bias[c as usize] as f64;
                    for ky in 0..p.kernel_h {
                        let iy = (oy * p.stride_h + ky) as i64 - p.pad_top as i64;
                        for kx in 0..p.kernel_w {
                            let ix = (ox * p.stride_w + kx) as i64 - p.pad_left as i64;
                            if iy < 0 || iy >= p.in_h as i64 || ix < 0 || ix >= p.in_w as i64 {
                                continue;
                            }
                            let pixel = (img as i64 * p.in_h as i64 + iy) * p.in_w as i64 + ix;
                            let x = input[pixel as usize * p.in_stride as usize
                                + (p.in_offset + c) as usize];
                            let w = weights[((ky * p.kernel_w + kx) * p.channels + c) as usize];
                            sum += x as f64 * w as f64;
                        }
                    }
                    output[row * p.out_stride as usize + (p.out_offset + c) as usize] =
                        activate(sum, p.activation) as f32;
                }
            }
        }
    }
}

/// Max or average pooling (padding excluded from the average) into `output`'s channel slice.
pub fn pool<V: Real>(kind: PoolKind, p: &PoolParams, input: &[V], output: &mut [V]) {
    for img in 0..p.batch as i64 {
        for oy in 0..p.out_h as i64 {
            for ox in 0..p.out_w as i64 {
                let out_pixel = ((img * p.out_h as i64 + oy) * p.out_w as i64 + ox) as usize;
                for c in 0..p.channels as usize {
                    let (mut best, mut sum, mut count) = (f64::NEG_INFINITY, 0.0f64, 0u32);
                    for dy in 0..p.window_h as i64 {
                        let y = oy * p.stride_h as i64 + dy - p.pad_top as i64;
                        for dx in 0..p.window_w as i64 {
                            let x = ox * p.stride_w as i64 + dx - p.pad_left as i64;
                            if y < 0 || y >= p.in_h as i64 || x < 0 || x >= p.in_w as i64 {
                                continue;
                            }
                            let pixel = ((img * p.in_h as i64 + y) * p.in_w as i64 + x) as usize;
                            let v = input[pixel * p.in_stride as usize + p.in_offset as usize + c]
                                .to_f64();
                            best = best.max(v);
                            sum += v;
                            count += 1;
                        }
                    }
                    let value = match kind {
                        PoolKind::Max => best,
                        PoolKind::Average => sum / count as f64,
                        PoolKind::AverageCountingPadding => sum / (p.window_h * p.window_w) as f64,
                    };
                    output[out_pixel * p.out_stride as usize + p.out_offset as usize + c] =
                        V::from_f64(value);
                }
            }
        }
    }
}

/// Mean over each image's pixels: NHWC [batch, h, w, c] -> [batch, c].
pub fn global_avg_pool<V: Real>(p: &GlobalPoolParams, input: &[V]) -> Vec<V> {
    let pixels = (p.height * p.width) as usize;
    let channels = p.channels as usize;
    let mut out = vec![V::from_f64(0.0); p.batch as usize * channels];
    for img in 0..p.batch as usize {
        for c in 0..channels {
            let sum: f64 = (0..pixels)
                .map(|i| input[(img * pixels + i) * channels + c].to_f64())
                .sum();
            out[img * channels + c] = V::from_f64(sum / pixels as f64);
        }
    }
    out
}

/// tf.image.resize bilinear (half-pixel centres, no antialiasing) of a u8 RGB
/// image, then `x·scale + offset`; written into slot `p.slot` of `output`.
pub fn preprocess(p: &PreprocessParams, pixels: &[u8], output: &mut [f32]) {
    let axis = |i: u32, in_size: u32, out_size: u32| {
        let c = (i as f64 + 0.5) * (in_size as f64 / out_size as f64) - 0.5;
        let last = (in_size - 1) as f64;
        (
            c.floor().clamp(0.0, last) as usize,
            c.ceil().clamp(0.0, last) as usize,
            c - c.floor(),
        )
    };
    let texel = |y: usize, x: usize, c: usize| {
        pixels[p.src_offset as usize + (y * p.src_w as usize + x) * 3 + c] as f64
    };
    for y in 0..p.out_h {
        let (y0, y1, fy) = axis(p.crop_y + y, p.src_h, p.resize_h);
        for x in 0..p.out_w {
            let mirrored = if p.flip == 1 { p.out_w - 1 - x } else { x };
            let (x0, x1, fx) = axis(p.crop_x + mirrored, p.src_w, p.resize_w);
            let base = (((p.slot * p.out_h + y) * p.out_w + x) * 3) as usize;
            for c in 0..3 {
                let top = texel(y0, x0, c) + (texel(y0, x1, c) - texel(y0, x0, c)) * fx;
                let bottom = texel(y1, x0, c) + (texel(y1, x1, c) - texel(y1, x0, c)) * fx;
                let value = top + (bottom - top) * fy;
                output[base + c] = (value * p.scale[c] as f64 + p.offset[c] as f64) as f32;
            }
        }
    }
}

/// PCG hash, as shaders/head.wgsl's `pcg`.
pub fn pcg(v: u32) -> u32 {
    let state = v.wrapping_mul(747796405).wrapping_add(2891336453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277803737);
    (word >> 22) ^ word
}

/// Value `x` at (batch row b, dimension k) after head.wgsl's inverted dropout.
fn dropped(x: f32, b: usize, k: usize, dim: usize, dropout: f32, seed: u32) -> f64 {
    if dropout <= 0.0 {
        return x as f64;
    }
    let u = (pcg(seed ^ pcg((b * dim + k) as u32)) >> 8) as f32 / 16777216.0;
    if u >= dropout {
        x as f64 / (1.0 - dropout as f64)
    } else {
        0.0
    }
}

/// One head's state in f64: parameters (weights [dim, classes] then biases)
/// and the optimiser's first and second moments.
#[derive(Clone)]
pub struct HeadState {
    pub params: Vec<f64>,
    pub first: Vec<f64>,
    pub second: Vec<f64>,
}

impl HeadState {
    pub fn new(params: &[f32]) -> Self {
        let n = params.len();
        HeadState {
            params: params.iter().map(|&v| v as f64).collect(),
            first: vec![0.0; n],
            second: vec![0.0; n],
        }
    }
}

/// One training step (0-based `step`) of a head in f64, as shaders/head.wgsl
/// does it: forward with dropout (`seed`), softmax cross-entropy against
/// smoothed labels, L2 on the weights, then the rule's optimiser.
/// Returns (mean cross-entropy, accuracy) of the batch before the update.
#[allow(clippy::too_many_arguments)]
pub fn head_step(
    features: &[f32],
    (dim, classes): (usize, usize),
    labels: &[u32],
    rows: &[u32],
    head: &mut HeadState,
    settings: &HeadSettings,
    rule: &TrainingRule,
    step: u32,
    seed: u32,
) -> (f64, f64) {
    let x = |b: usize, k: usize| {
        let v = features[rows[b] as usize * dim + k];
        dropped(v, b, k, dim, rule.dropout, seed)
    };
    let (loss, accuracy, grads) = head_forward(
        &x,
        (dim, classes),
        labels,
        rows,
        &head.params,
        rule.label_smoothing as f64,
    );
    let rate = settings.learning_rate as f64 * rule.lr_scale(step) as f64;
    let (c1, c2) = rule.adam_corrections(step);
    for i in 0..head.params.len() {
        let mut g = 0.0;
        if i < dim * classes {
            let (k, c) = (i / classes, i % classes);
            for b in 0..rows.len() {
                g += x(b, k) * grads[b * classes + c];
            }
            g += settings.l2 as f64 * head.params[i];
        } else {
            let c = i - dim * classes;
            g = (0..rows.len()).map(|b| grads[b * classes + c]).sum();
        }
        head.params[i] -= rate
            * match rule.optimizer {
                Optimizer::Sgd => g,
                Optimizer::Momentum { momentum } => {
                    head.first[i] = momentum as f64 * head.first[i] + g;
                    head.first[i]
                }
                Optimizer::Adam {
                    beta1,
                    beta2,
                    epsilon,
                } => {
                    let (b1, b2) = (beta1 as f64, beta2 as f64);
                    head.first[i] = b1 * head.first[i] + (1.0 - b1) * g;
                    head.second[i] = b2 * head.second[i] + (1.0 - b2) * g * g;
                    head.first[i] * c1 as f64
                        / ((head.second[i] * c2 as f64).sqrt() + epsilon as f64)
                }
            };
    }
    (loss, accuracy)
}

/// (mean cross-entropy, accuracy) of a head on the given rows, without dropout or smoothing.
pub fn head_metrics(
    features: &[f32],
    (dim, classes): (usize, usize),
    labels: &[u32],
    rows: &[u32],
    params: &[f64],
) -> (f64, f64) {
    let x = |b: usize, k: usize| features[rows[b] as usize * dim + k] as f64;
    let (loss, accuracy, _) = head_forward(&x, (dim, classes), labels, rows, params, 0.0);
    (loss, accuracy)
}

/// Mean cross-entropy, accuracy and d(loss)/d(logits) [B, classes] of a batch.
fn head_forward(
    x: &dyn Fn(usize, usize) -> f64,
    (dim, classes): (usize, usize),
    labels: &[u32],
    rows: &[u32],
    params: &[f64],
    smoothing: f64,
) -> (f64, f64, Vec<f64>) {
    let batch = rows.len();
    let mut grads = vec![0.0f64; batch * classes];
    let (mut loss, mut correct) = (0.0, 0.0);
    for (b, &row) in rows.iter().enumerate() {
        let logits: Vec<f64> = (0..classes)
            .map(|c| {
                params[dim * classes + c]
                    + (0..dim)
                        .map(|k| x(b, k) * params[k * classes + c])
                        .sum::<f64>()
            })
            .collect();
        let top = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let log_total = logits.iter().map(|l| (l - top).exp()).sum::<f64>().ln();
        let label = labels[row as usize] as usize;
        let best = (0..classes).fold(0, |best, c| if logits[c] > logits[best] { c } else { best });
        correct += (best == label) as u8 as f64;
        for c in 0..classes {
            let log_prob = logits[c] - top - log_total;
            let target =
                if c == label { 1.0 - smoothing } else { 0.0 } + smoothing / classes as f64;
            loss -= target * log_prob;
            grads[b * classes + c] = (log_prob.exp() - target) / batch as f64;
        }
    }
    (loss / batch as f64, correct / batch as f64, grads)
}
