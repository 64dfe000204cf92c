// depthwise: depthwise 2-D convolution (one kh×kw filter per channel, depth
// multiplier 1) over NHWC tensors, with bias and an activation (activation.wgsl)
// fused; TF's SAME or VALID padding given as pad_top/pad_left (cells outside
// the input count as zero).
//
// Bindings:
//   0 params  (uniform)  struct Params below
//   1 input   (storage)  NHWC f32 [batch, in_h, in_w, in_stride], channels in_offset..+channels
//   2 weights (storage)  f32 [kernel_h, kernel_w, channels] (the Keras kernel
//                        [kh, kw, C, 1]); for f16 weight files the host swaps
//                        in the block marked WEIGHTS (u32 pairs of f16)
//   3 bias    (storage)  f32 [channels]
//   4 output  (storage)  NHWC f32 [batch, out_h, out_w, out_stride], channels out_offset..+channels
//
// Values are read LANES channels at a time: one f32, or, when channels,
// strides and offsets are multiples of 4, the host swaps in the block marked
// VALUE to read vec4s. One invocation per output Value; the 1-D index is
// spread over a 2-D grid of GROUP-wide workgroups (x + y·groups_x·GROUP);
// GROUP, the override constant, is the variant the autotuner picks.

struct Params {
    batch: u32, in_h: u32, in_w: u32, channels: u32,
    out_h: u32, out_w: u32, kernel_h: u32, kernel_w: u32,
    stride_h: u32, stride_w: u32, pad_top: u32, pad_left: u32,
    in_stride: u32, in_offset: u32, out_stride: u32, out_offset: u32,
    activation: u32, _pad0: u32, _pad1: u32, _pad2: u32,
}

// VALUE BEGIN
alias Value = f32;
const LANES: u32 = 1u;
fn activate_value(v: Value, kind: u32) -> Value {
    return activate(v, kind);
}
fn select_lanes(w: array<f32, 4>) -> Value {
    return w[0];
}
// VALUE END

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> input: array<Value>;
// WEIGHTS BEGIN
@group(0) @binding(2) var<storage, read> weights: array<f32>;
fn weight_at(i: u32) -> f32 {
    return weights[i];
}
// WEIGHTS END
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> output: array<Value>;

// The LANES consecutive weights (or biases) of channel group c at `base`.
fn weight_value(base: u32, c: u32) -> Value {
    var w: array<f32, 4>;
    for (var l = 0u; l < LANES; l++) {
        w[l] = weight_at(base + c * LANES + l);
    }
    return select_lanes(w);
}

fn bias_value(c: u32) -> Value {
    var b: array<f32, 4>;
    for (var l = 0u; l < LANES; l++) {
        b[l] = bias[c * LANES + l];
    }
    return select_lanes(b);
}

override GROUP: u32 = 256u;

@compute @workgroup_size(GROUP)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let groups_c = p.channels / LANES;
    let index = gid.x + gid.y * groups.x * GROUP;
    if (index >= p.batch * p.out_h * p.out_w * groups_c) {
        return;
    }
    let c = index % groups_c;
    let out_pixel = index / groups_c;
    let ox = out_pixel % p.out_w;
    let oy = (out_pixel / p.out_w) % p.out_h;
    let img = out_pixel / (p.out_w * p.out_h);
    var acc = bias_value(c);
    for (var ky = 0u; ky < p.kernel_h; ky++) {
        let y = i32(oy * p.stride_h + ky) - i32(p.pad_top);
        if (y < 0 || y >= i32(p.in_h)) { continue; }
        for (var kx = 0u; kx < p.kernel_w; kx++) {
            let x = i32(ox * p.stride_w + kx) - i32(p.pad_left);
            if (x < 0 || x >= i32(p.in_w)) { continue; }
            let pixel = (img * p.in_h + u32(y)) * p.in_w + u32(x);
            let v = input[(pixel * p.in_stride + p.in_offset) / LANES + c];
            acc += v * weight_value((ky * p.kernel_w + kx) * p.channels, c);
        }
    }
    output[(out_pixel * p.out_stride + p.out_offset) / LANES + c] = activate_value(acc, p.activation);
}
