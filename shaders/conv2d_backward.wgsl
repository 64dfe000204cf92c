// conv2d_backward: the gradients of conv2d.wgsl's convolution, in its layouts
// (NHWC activations with channel slices, HWIO weights), given the gradient
// with respect to its output *before* the activation (activation_backward.wgsl
// masks it first). Every entry point adds to what its output already holds,
// so a tensor read by several convs (a mixed block's input) sums their
// gradients, and micro-batches accumulate.
//
//   transpose_weights: weights_t[ky, kx, co, ci] = w[ky, kx, ci, co] (before input_grad)
//   input_grad:  grad_in[n, iy, ix, ci]  += Σ_{ky,kx,co} grad_out[n, oy, ox, co] · w[ky, kx, ci, co]
//                over the taps with iy = oy·stride + ky − pad (and likewise x)
//   weight_grad: grad_w[ky, kx, ci, co]  += Σ_{n,oy,ox} input[n, iy, ix, ci] · grad_out[n, oy, ox, co]
//   bias_grad:   grad_b[co]              += Σ_{n,oy,ox} grad_out[n, oy, ox, co]
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
// transpose_weights: one invocation per weight; input_grad: one per group of
// TILE input pixels and TILE channels;
// weight_grad: one per tap and TILE×TILE block of (input, output) channels;
// bias_grad: one per output channel. The 1-D index is spread over a 2-D grid
// of 256-wide workgroups (x + y·groups_x·256).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad_out: array<f32>;
@group(0) @binding(2) var<storage, read> weights: array<f32>;
@group(0) @binding(3) var<storage, read> input: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad_in: array<f32>;
@group(0) @binding(5) var<storage, read_write> grad_weights: array<f32>;
@group(0) @binding(6) var<storage, read_write> grad_bias: array<f32>;
@group(0) @binding(7) var<storage, read_write> weights_t: array<f32>;

// Channels per invocation along each tiled axis.
const TILE: u32 = 4u;

fn element_index(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return gid.x + gid.y * groups.x * 256u;
}

// The output coordinate a tap reaches from input coordinate `i`, or −1 when
// the tap falls between strides or outside the output.
fn output_coord(i: u32, k: u32, pad: u32, stride: u32, size: u32) -> i32 {
    let t = i32(i + pad) - i32(k);
    if (t < 0 || t % i32(stride) != 0) {
        return -1;
    }
    let o = t / i32(stride);
    return select(-1, o, o < i32(size));
}

// transpose_weights: weights_t[ky, kx, co, ci] = weights[ky, kx, ci, co], so
// that input_grad's neighbouring invocations (neighbouring input channels)
// read neighbouring weights. One invocation per weight.
@compute @workgroup_size(256)
fn transpose_weights(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = element_index(gid, groups);
    if (index >= p.kernel_h * p.kernel_w * p.in_c * p.out_c) {
        return;
    }
    let ci = index % p.in_c;
    let co = (index / p.in_c) % p.out_c;
    let tap = index / (p.in_c * p.out_c);
    weights_t[index] = weights[(tap * p.in_c + ci) * p.out_c + co];
}

// input_grad: each invocation sums TILE input channels of TILE consecutive
// input pixels (flattened NHW order), reading the transposed weights: per
// tap and output channel, TILE contiguous weights and one gradient per pixel.
@compute @workgroup_size(256)
fn input_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = element_index(gid, groups);
    let channel_groups = (p.in_c + TILE - 1u) / TILE;
    let pixels = p.batch * p.in_h * p.in_w;
    let pixel_groups = (pixels + TILE - 1u) / TILE;
    if (index >= pixel_groups * channel_groups) {
        return;
    }
    let ci0 = (index % channel_groups) * TILE;
    let pixel0 = (index / channel_groups) * TILE;
    // Channels past in_c read the last one's weights and are not written.
    var ci: array<u32, TILE>;
    for (var j = 0u; j < TILE; j++) {
        ci[j] = min(ci0 + j, p.in_c - 1u);
    }
    var iy: array<u32, TILE>;
    var ix: array<u32, TILE>;
    var img: array<u32, TILE>;
    for (var i = 0u; i < TILE; i++) {
        let pixel = min(pixel0 + i, pixels - 1u);
        ix[i] = pixel % p.in_w;
        iy[i] = (pixel / p.in_w) % p.in_h;
        img[i] = pixel / (p.in_w * p.in_h);
    }
    var acc: array<array<f32, TILE>, TILE>;
    for (var ky = 0u; ky < p.kernel_h; ky++) {
        for (var kx = 0u; kx < p.kernel_w; kx++) {
            // Each pixel's output gradient row for this tap, if it has one.
            var g0: array<u32, TILE>;
            var valid: array<bool, TILE>;
            for (var i = 0u; i < TILE; i++) {
                let oy = output_coord(iy[i], ky, p.pad_top, p.stride_h, p.out_h);
                let ox = output_coord(ix[i], kx, p.pad_left, p.stride_w, p.out_w);
                let inside = oy >= 0 && ox >= 0;
                valid[i] = inside;
                g0[i] = select(0u, ((img[i] * p.out_h + u32(oy)) * p.out_w + u32(ox)) * p.out_stride + p.out_offset, inside);
            }
            let w_tap = (ky * p.kernel_w + kx) * p.out_c;
            for (var co = 0u; co < p.out_c; co++) {
                let w0 = (w_tap + co) * p.in_c;
                var w: array<f32, TILE>;
                for (var j = 0u; j < TILE; j++) {
                    w[j] = weights_t[w0 + ci[j]];
                }
                for (var i = 0u; i < TILE; i++) {
                    let g = select(0.0, grad_out[g0[i] + co], valid[i]);
                    for (var j = 0u; j < TILE; j++) {
                        acc[i][j] = fma(g, w[j], acc[i][j]);
                    }
                }
            }
        }
    }
    for (var i = 0u; i < TILE; i++) {
        if (pixel0 + i >= pixels) {
            break;
        }
        let at = (pixel0 + i) * p.in_stride + p.in_offset + ci0;
        for (var j = 0u; j < TILE; j++) {
            if (ci0 + j < p.in_c) {
                grad_in[at + j] += acc[i][j];
            }
        }
    }
}

// weight_grad: each invocation sums a TILE×TILE block (input channels ×
// output channels) of one tap over every output pixel, walking the pixels
// image by image and row by row (no division in the loop).
@compute @workgroup_size(256)
fn weight_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = element_index(gid, groups);
    let co_groups = (p.out_c + TILE - 1u) / TILE;
    let ci_groups = (p.in_c + TILE - 1u) / TILE;
    if (index >= p.kernel_h * p.kernel_w * ci_groups * co_groups) {
        return;
    }
    let co0 = (index % co_groups) * TILE;
    let ci0 = ((index / co_groups) % ci_groups) * TILE;
    let tap = index / (co_groups * ci_groups);
    let kx = tap % p.kernel_w;
    let ky = tap / p.kernel_w;
    // Channels past in_c or out_c read the last one and are not written.
    var ci: array<u32, TILE>;
    var co: array<u32, TILE>;
    for (var j = 0u; j < TILE; j++) {
        ci[j] = min(ci0 + j, p.in_c - 1u);
        co[j] = min(co0 + j, p.out_c - 1u);
    }
    var acc: array<array<f32, TILE>, TILE>;
    for (var img = 0u; img < p.batch; img++) {
        for (var oy = 0u; oy < p.out_h; oy++) {
            let iy = i32(oy * p.stride_h + ky) - i32(p.pad_top);
            if (iy < 0 || iy >= i32(p.in_h)) { continue; }
            for (var ox = 0u; ox < p.out_w; ox++) {
                let ix = i32(ox * p.stride_w + kx) - i32(p.pad_left);
                if (ix < 0 || ix >= i32(p.in_w)) { continue; }
                let x0 = ((img * p.in_h + u32(iy)) * p.in_w + u32(ix)) * p.in_stride + p.in_offset;
                let g0 = ((img * p.out_h + oy) * p.out_w + ox) * p.out_stride + p.out_offset;
                var x: array<f32, TILE>;
                var g: array<f32, TILE>;
                for (var j = 0u; j < TILE; j++) {
                    x[j] = input[x0 + ci[j]];
                    g[j] = grad_out[g0 + co[j]];
                }
                for (var a = 0u; a < TILE; a++) {
                    for (var b = 0u; b < TILE; b++) {
                        acc[a][b] = fma(x[a], g[b], acc[a][b]);
                    }
                }
            }
        }
    }
    for (var a = 0u; a < TILE; a++) {
        for (var b = 0u; b < TILE; b++) {
            if (ci0 + a < p.in_c && co0 + b < p.out_c) {
                grad_weights[((tap * p.in_c + ci0 + a) * p.out_c) + co0 + b] += acc[a][b];
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
        acc += grad_out[row * p.out_stride + p.out_offset + co];
    }
    grad_bias[co] += acc;
}
