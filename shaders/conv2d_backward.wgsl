// conv2d_backward: the gradients of conv2d.wgsl's convolution, in its layouts
// (NHWC activations with channel slices, HWIO weights), given the gradient
// with respect to its output *before* the activation (activation_backward.wgsl
// masks it first). Every entry point adds to what its output already holds,
// so a tensor read by several convs (a mixed block's input) sums their
// gradients, and micro-batches accumulate.
//
//   input_grad:  grad_in[n, iy, ix, ci]  += Σ_{ky,kx,co} grad_out[n, oy, ox, co] · w[ky, kx, ci, co]
//                over the taps with iy = oy·stride + ky − pad (and likewise x)
//   weight_grad: grad_w[ky, kx, ci, co]  += Σ_{n,oy,ox} input[n, iy, ix, ci] · grad_out[n, oy, ox, co]
//   bias_grad:   grad_b[co]              += Σ_{n,oy,ox} grad_out[n, oy, ox, co]
//
// Bindings (struct Params of shaders/common/conv_params.wgsl, prepended by the
// host; residual and activation fields are not read here):
//   0 params       (uniform)
//   1 grad_out     (storage) NHWC f32 [batch, out_h, out_w, out_stride], channels out_offset..+out_c
//   2 weights      (storage) f32 [kernel_h, kernel_w, in_c, out_c]       (input_grad)
//   3 input        (storage) NHWC f32 [batch, in_h, in_w, in_stride], channels in_offset..+in_c (weight_grad)
//   4 grad_in      (storage) NHWC f32 like input                          (input_grad)
//   5 grad_weights (storage) f32 like weights                             (weight_grad)
//   6 grad_bias    (storage) f32 [out_c]                                  (bias_grad)
//
// One invocation per output element, its 1-D index spread over a 2-D grid of
// 256-wide workgroups (x + y·groups_x·256). Neighbouring invocations take
// neighbouring channels, so their reads of the shared operand coincide and
// their reads of the other are contiguous.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad_out: array<f32>;
@group(0) @binding(2) var<storage, read> weights: array<f32>;
@group(0) @binding(3) var<storage, read> input: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad_in: array<f32>;
@group(0) @binding(5) var<storage, read_write> grad_weights: array<f32>;
@group(0) @binding(6) var<storage, read_write> grad_bias: array<f32>;

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

@compute @workgroup_size(256)
fn input_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = element_index(gid, groups);
    if (index >= p.batch * p.in_h * p.in_w * p.in_c) {
        return;
    }
    let ci = index % p.in_c;
    let pixel = index / p.in_c;
    let ix = pixel % p.in_w;
    let iy = (pixel / p.in_w) % p.in_h;
    let img = pixel / (p.in_w * p.in_h);
    var acc = 0.0;
    for (var ky = 0u; ky < p.kernel_h; ky++) {
        let oy = output_coord(iy, ky, p.pad_top, p.stride_h, p.out_h);
        if (oy < 0) { continue; }
        for (var kx = 0u; kx < p.kernel_w; kx++) {
            let ox = output_coord(ix, kx, p.pad_left, p.stride_w, p.out_w);
            if (ox < 0) { continue; }
            let g0 = ((img * p.out_h + u32(oy)) * p.out_w + u32(ox)) * p.out_stride + p.out_offset;
            let w0 = ((ky * p.kernel_w + kx) * p.in_c + ci) * p.out_c;
            for (var co = 0u; co < p.out_c; co++) {
                acc = fma(grad_out[g0 + co], weights[w0 + co], acc);
            }
        }
    }
    let at = pixel * p.in_stride + p.in_offset + ci;
    grad_in[at] += acc;
}

@compute @workgroup_size(256)
fn weight_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = element_index(gid, groups);
    if (index >= p.kernel_h * p.kernel_w * p.in_c * p.out_c) {
        return;
    }
    let co = index % p.out_c;
    let ci = (index / p.out_c) % p.in_c;
    let tap = index / (p.out_c * p.in_c);
    let kx = tap % p.kernel_w;
    let ky = tap / p.kernel_w;
    var acc = 0.0;
    for (var row = 0u; row < p.m; row++) {
        let ox = row % p.out_w;
        let oy = (row / p.out_w) % p.out_h;
        let img = row / (p.out_w * p.out_h);
        let iy = i32(oy * p.stride_h + ky) - i32(p.pad_top);
        let ix = i32(ox * p.stride_w + kx) - i32(p.pad_left);
        if (iy < 0 || iy >= i32(p.in_h) || ix < 0 || ix >= i32(p.in_w)) {
            continue;
        }
        let x = input[((img * p.in_h + u32(iy)) * p.in_w + u32(ix)) * p.in_stride + p.in_offset + ci];
        acc = fma(x, grad_out[row * p.out_stride + p.out_offset + co], acc);
    }
    grad_weights[index] += acc;
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
