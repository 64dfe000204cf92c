//! Plain-Rust references for every kernel, accumulating in f64.
//! The kernel tests compare the GPU against these; nothing in the engine calls them.

use crate::gpu::kernels::{ConvParams, GlobalPoolParams, PoolKind, PoolParams, PreprocessParams};

/// Conv2d (+ bias, optional ReLU) into `output`'s channel slice; NHWC / HWIO layouts as the kernel's.
pub fn conv2d(p: &ConvParams, input: &[f32], weights: &[f32], bias: &[f32], output: &mut [f32]) {
    for img in 0..p.batch {
        for oy in 0..p.out_h {
            for ox in 0..p.out_w {
                let row = ((img * p.out_h + oy) * p.out_w + ox) as usize;
                for co in 0..p.out_c {
                    let mut sum = bias[co as usize] as f64;
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
                                sum += input[pixel + ci as usize] as f64 * w as f64;
                            }
                        }
                    }
                    if p.relu != 0 {
                        sum = sum.max(0.0);
                    }
                    output[row * p.out_stride as usize + (p.out_offset + co) as usize] = sum as f32;
                }
            }
        }
    }
}

/// Max or average pooling (padding excluded from the average) into `output`'s channel slice.
pub fn pool(kind: PoolKind, p: &PoolParams, input: &[f32], output: &mut [f32]) {
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
                                as f64;
                            best = best.max(v);
                            sum += v;
                            count += 1;
                        }
                    }
                    let value = match kind {
                        PoolKind::Max => best,
                        PoolKind::Average => sum / count as f64,
                    };
                    output[out_pixel * p.out_stride as usize + p.out_offset as usize + c] =
                        value as f32;
                }
            }
        }
    }
}

/// Mean over each image's pixels: NHWC [batch, h, w, c] -> [batch, c].
pub fn global_avg_pool(p: &GlobalPoolParams, input: &[f32]) -> Vec<f32> {
    let pixels = (p.height * p.width) as usize;
    let channels = p.channels as usize;
    let mut out = vec![0.0; p.batch as usize * channels];
    for img in 0..p.batch as usize {
        for c in 0..channels {
            let sum: f64 = (0..pixels)
                .map(|i| input[(img * pixels + i) * channels + c] as f64)
                .sum();
            out[img * channels + c] = (sum / pixels as f64) as f32;
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
        let (y0, y1, fy) = axis(y, p.src_h, p.out_h);
        for x in 0..p.out_w {
            let (x0, x1, fx) = axis(x, p.src_w, p.out_w);
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

/// One SGD step of the softmax head in f64, as shaders/head.wgsl does it.
/// `head` holds weights [dim, classes] then biases; returns (mean cross-entropy, accuracy)
/// of the batch before the update.
pub fn head_step(
    features: &[f32],
    dim: usize,
    classes: usize,
    labels: &[u32],
    rows: &[u32],
    head: &mut [f64],
    lr: f64,
) -> (f64, f64) {
    let batch = rows.len();
    let mut grads = vec![0.0f64; batch * classes];
    let (mut loss, mut correct) = (0.0, 0.0);
    for (b, &row) in rows.iter().enumerate() {
        let x = &features[row as usize * dim..(row as usize + 1) * dim];
        let logits: Vec<f64> = (0..classes)
            .map(|c| {
                head[dim * classes + c]
                    + (0..dim)
                        .map(|k| x[k] as f64 * head[k * classes + c])
                        .sum::<f64>()
            })
            .collect();
        let top = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = logits.iter().map(|l| (l - top).exp()).sum();
        let label = labels[row as usize] as usize;
        loss += total.ln() - (logits[label] - top);
        let best = (0..classes).fold(0, |best, c| if logits[c] > logits[best] { c } else { best });
        correct += (best == label) as u8 as f64;
        for c in 0..classes {
            let p = (logits[c] - top).exp() / total;
            grads[b * classes + c] = (p - (c == label) as u8 as f64) / batch as f64;
        }
    }
    for k in 0..dim {
        for c in 0..classes {
            let g: f64 = rows
                .iter()
                .enumerate()
                .map(|(b, &r)| features[r as usize * dim + k] as f64 * grads[b * classes + c])
                .sum();
            head[k * classes + c] -= lr * g;
        }
    }
    for c in 0..classes {
        let g: f64 = (0..batch).map(|b| grads[b * classes + c]).sum();
        head[dim * classes + c] -= lr * g;
    }
    (loss / batch as f64, correct / batch as f64)
}
