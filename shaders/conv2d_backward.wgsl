// conv2d_backward: the gradients of conv2d.wgsl's convolution, in its layouts
// (NHWC activations with channel slices, HWIO weights), given the gradient
// with respect to its output *before* the activation (activation_backward.wgsl
// masks it first). Every entry point adds to what its output already holds,
// so a tensor read by several convs (a mixed block's input) sums their
// gradients, and micro-batches accumulate.
//
//   transpose_weights: weights_t[ky, kx, co, ci] = w[ky, kx, ci, co] (before input_grad)
//   transpose_weights_flipped: the same with the taps in reverse order
//   input_grad:  grad_in[n, iy, ix, ci]  += Σ_{ky,kx,co} grad_out[n, oy, ox, co] · w[ky, kx, ci, co]
//                over the taps with iy = oy·stride + ky − pad (and likewise x)
//   weight_grad: grad_w[ky, kx, ci, co]  += Σ_{n,oy,ox} input[n, iy, ix, ci] · grad_out[n, oy, ox, co]
//   bias_grad:   grad_b[co]              += Σ_{n,oy,ox} grad_out[n, oy, ox, co]
//
// input_pixel and output_pixel come from shaders/common/input_grad_taps.wgsl,
// prepended by the host.
//
// Bindings (struct Params of shaders/common/conv_params.wgsl, prepended by the
// host; residual and activation fields are not read here):
//   0 params       (uniform)
//   1 grad_out     (storage) NHWC f32 [batch, out_h, out_w, out_stride], channels out_offset..+out_c
//   2 weights      (storage) f32 [kernel_h, kernel_w, in_c, out_c]       (transpose_weights)
//   3 input        (storage) NHWC f32 [batch, in_h, in_w, in_stride], channels in_offset..+in_c (weight_grad)
//   4 grad_in      (storage) NHWC f32 like input                          (input_grad)
//   5 grad_weights (storage) f32 like weights                             (weight_grad)
//   6 grad_bias    (storage) f32 [out_c]                                  (bias_grad)
//   7 weights_t    (storage) f32 [kernel_h, kernel_w, out_c, in_c]       (written by
//                            transpose_weights, read by input_grad)
//
// transpose_weights: one invocation per weight (per 4×4 block of them with
// vec4 operands); input_grad: one per group of
// PIXELS input pixels and 2·TILE channels;
// weight_grad: one per tap and block of 2·TILE input × 2·TILE output channels;
// bias_grad: one per output channel. The 1-D index is spread over a 2-D grid
// of 256-wide workgroups (x + y·groups_x·256).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read_write> grad_in: array<f32>;
@group(0) @binding(5) var<storage, read_write> grad_weights: array<f32>;
@group(0) @binding(6) var<storage, read_write> grad_bias: array<f32>;
// The operands read four channels at a time, one f32 each; when every
// channel count, stride and offset is a multiple of 4 the host swaps in
// vec4 bindings (one load each) for this block.
// OPERANDS BEGIN
@group(0) @binding(1) var<storage, read> grad_out: array<f32>;
@group(0) @binding(2) var<storage, read> weights: array<f32>;
@group(0) @binding(3) var<storage, read> input: array<f32>;
@group(0) @binding(7) var<storage, read_write> weights_t: array<f32>;
fn grad_at(i: u32) -> f32 {
    return grad_out[i];
}
// Channels c0 .. c0+3 of the pixel starting at `base`; past `count`, the last again.
fn grad_quad(base: u32, c0: u32, count: u32) -> vec4<f32> {
    let last = count - 1u;
    return vec4<f32>(grad_out[base + min(c0, last)], grad_out[base + min(c0 + 1u, last)],
                     grad_out[base + min(c0 + 2u, last)], grad_out[base + min(c0 + 3u, last)]);
}
fn input_quad(base: u32, c0: u32, count: u32) -> vec4<f32> {
    let last = count - 1u;
    return vec4<f32>(input[base + min(c0, last)], input[base + min(c0 + 1u, last)],
                     input[base + min(c0 + 2u, last)], input[base + min(c0 + 3u, last)]);
}
fn weights_t_quad(base: u32, c0: u32, count: u32) -> vec4<f32> {
    let last = count - 1u;
    return vec4<f32>(weights_t[base + min(c0, last)], weights_t[base + min(c0 + 1u, last)],
                     weights_t[base + min(c0 + 2u, last)], weights_t[base + min(c0 + 3u, last)]);
}
// The transposes' work for invocation `index`: one weight, read from the
// mirrored tap when `flip`.
fn transpose_step(index: u32, flip: bool) {
    let taps = p.kernel_h * p.kernel_w;
    if (index >= taps * p.in_c * p.out_c) {
        return;
    }
    let ci = index % p.in_c;
    let co = (index / p.in_c) % p.out_c;
    let tap = index / (p.in_c * p.out_c);
    let source = select(tap, taps - 1u - tap, flip);
    weights_t[index] = weights[(source * p.in_c + ci) * p.out_c + co];
}
// OPERANDS END

// Channels per invocation along each tiled axis: the four lanes of a vec4.
const TILE: u32 = 4u;
// input_grad's pixels per invocation: each weight read serves all of them.
const PIXELS: u32 = 8u;

fn element_index(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return gid.x + gid.y * groups.x * 256u;
}

// transpose_weights: weights_t[ky, kx, co, ci] = weights[ky, kx, ci, co], so
// that input_grad's neighbouring invocations (neighbouring input channels)
// read neighbouring weights. One invocation per weight, or per 4×4 block
// with vec4 operands (transpose_step, in the operand block).
@compute @workgroup_size(256)
fn transpose_weights(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    transpose_step(element_index(gid, groups), false);
}

// transpose_weights_flipped: weights_t[ky, kx, co, ci] = weights[kh−1−ky, kw−1−kx, ci, co],
// the HWIO weights of the forward conv that is a stride-1 conv's input
// gradient (the host runs it with conv2d's kernels).
@compute @workgroup_size(256)
fn transpose_weights_flipped(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    transpose_step(element_index(gid, groups), true);
}

// input_grad: each invocation sums 2·TILE input channels of PIXELS consecutive
// input pixels (flattened NHW order), reading the transposed weights: per
// tap and output channel, TILE contiguous weights and one gradient per pixel.
@compute @workgroup_size(256)
fn input_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = element_index(gid, groups);
    let channel_groups = (p.in_c + 2u * TILE - 1u) / (2u * TILE);
    let pixels = p.batch * p.in_h * p.in_w;
    let pixel_groups = (pixels + PIXELS - 1u) / PIXELS;
    if (index >= pixel_groups * channel_groups) {
        return;
    }
    let ci0 = (index % channel_groups) * 2u * TILE;
    let pixel0 = (index / channel_groups) * PIXELS;
    var pixel: array<InputPixel, PIXELS>;
    for (var i = 0u; i < PIXELS; i++) {
        pixel[i] = input_pixel(min(pixel0 + i, pixels - 1u));
    }
    // acc[i][j] and high[i][j]: pixel i, channel ci0 + j and ci0 + TILE + j
    // (past in_c: computed, not written).
    var acc: array<vec4<f32>, PIXELS>;
    var high: array<vec4<f32>, PIXELS>;
    for (var ky = 0u; ky < p.kernel_h; ky++) {
        for (var kx = 0u; kx < p.kernel_w; kx++) {
            // Each pixel's output gradient row for this tap, if it has one.
            var g0: array<u32, PIXELS>;
            var valid: array<bool, PIXELS>;
            for (var i = 0u; i < PIXELS; i++) {
                let o = output_pixel(pixel[i], ky, kx);
                valid[i] = o >= 0;
                g0[i] = select(0u, u32(o) * p.out_stride + p.out_offset, valid[i]);
            }
            let w_tap = (ky * p.kernel_w + kx) * p.out_c;
            for (var co = 0u; co < p.out_c; co++) {
                let w = weights_t_quad((w_tap + co) * p.in_c, ci0, p.in_c);
                let w_high = weights_t_quad((w_tap + co) * p.in_c, ci0 + TILE, p.in_c);
                for (var i = 0u; i < PIXELS; i++) {
                    let g = vec4<f32>(select(0.0, grad_at(g0[i] + co), valid[i]));
                    acc[i] = fma(g, w, acc[i]);
                    high[i] = fma(g, w_high, high[i]);
                }
            }
        }
    }
    for (var i = 0u; i < PIXELS; i++) {
        if (pixel0 + i >= pixels) {
            break;
        }
        let at = (pixel0 + i) * p.in_stride + p.in_offset + ci0;
        for (var j = 0u; j < TILE; j++) {
            if (ci0 + j < p.in_c) {
                grad_in[at + j] += acc[i][j];
            }
            if (ci0 + TILE + j < p.in_c) {
                grad_in[at + TILE + j] += high[i][j];
            }
        }
    }
}

// weight_grad: each invocation sums a block of 2·TILE input channels × 2·TILE
// output channels of one tap over every output pixel, walking the pixels
// image by image and row by row (no division in the loop).
@compute @workgroup_size(256)
fn weight_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = element_index(gid, groups);
    let co_groups = (p.out_c + 2u * TILE - 1u) / (2u * TILE);
    let ci_groups = (p.in_c + 2u * TILE - 1u) / (2u * TILE);
    if (index >= p.kernel_h * p.kernel_w * ci_groups * co_groups) {
        return;
    }
    let co0 = (index % co_groups) * 2u * TILE;
    let ci0 = ((index / co_groups) % ci_groups) * 2u * TILE;
    let tap = index / (co_groups * ci_groups);
    let kx = tap % p.kernel_w;
    let ky = tap / p.kernel_w;
    // acc[a][b] and high[a][b]: input channel ci0 + a (a < 2·TILE), output
    // channel co0 + b and co0 + TILE + b (past in_c or out_c: computed from
    // repeated values, not written).
    var acc: array<vec4<f32>, 2 * TILE>;
    var high: array<vec4<f32>, 2 * TILE>;
    for (var img = 0u; img < p.batch; img++) {
        for (var oy = 0u; oy < p.out_h; oy++) {
            let iy = i32(oy * p.stride_h + ky) - i32(p.pad_top);
            if (iy < 0 || iy >= i32(p.in_h)) { continue; }
            for (var ox = 0u; ox < p.out_w; ox++) {
                let ix = i32(ox * p.stride_w + kx) - i32(p.pad_left);
                if (ix < 0 || ix >= i32(p.in_w)) { continue; }
                let x0 = ((img * p.in_h + u32(iy)) * p.in_w + u32(ix)) * p.in_stride + p.in_offset;
                let g0 = ((img * p.out_h + oy) * p.out_w + ox) * p.out_stride + p.out_offset;
                let x = input_quad(x0, ci0, p.in_c);
                let x_high = input_quad(x0, ci0 + TILE, p.in_c);
                let g = grad_quad(g0, co0, p.out_c);
                let g_high = grad_quad(g0, co0 + TILE, p.out_c);
                for (var a = 0u; a < TILE; a++) {
                    acc[a] = fma(vec4<f32>(x[a]), g, acc[a]);
                    high[a] = fma(vec4<f32>(x[a]), g_high, high[a]);
                    acc[TILE + a] = fma(vec4<f32>(x_high[a]), g, acc[TILE + a]);
                    high[TILE + a] = fma(vec4<f32>(x_high[a]), g_high, high[TILE + a]);
                }
            }
        }
    }
    for (var a = 0u; a < 2u * TILE; a++) {
        let row = (tap * p.in_c + ci0 + a) * p.out_c + co0;
        for (var b = 0u; b < TILE; b++) {
            if (ci0 + a < p.in_c && co0 + b < p.out_c) {
                grad_weights[row + b] += acc[a][b];
            }
            if (ci0 + a < p.in_c && co0 + TILE + b < p.out_c) {
                grad_weights[row + TILE + b] += high[a][b];
            }
        }
    }
}

@compute @workgroup_size(256)
fn bias_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let co = element_index(gid, groups);
    if (co >= p.out_c) {
        return;
    }
    var acc = 0.0;
    for (var row = 0u; row < p.m; row++) {
        acc += grad_at(row * p.out_stride + p.out_offset + co);
    }
    grad_bias[co] += acc;
}
