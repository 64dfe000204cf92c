// conv2d_backward_subgroup: conv2d_backward.wgsl's input_grad and weight_grad
// (same sums, same layouts, adding into their outputs), with every invocation
// of a subgroup sharing one operand through subgroupBroadcast, as
// conv2d_subgroup.wgsl does for the forward pass: invocation l of each
// subgroup reads row l of eight, and each row is handed to all eight. On CPU
// drivers (lavapipe) every invocation is a SIMD lane and each read a gather,
// so this cuts the gathers per multiply-add by 5–8×; and the operands are read
// from textures (src/gpu/texture_reads.rs: a texel fetch is a vector gather
// there, ~10× cheaper than a storage-buffer read), copied from their buffers
// by the host before each dispatch. The host uses it only on CPU adapters
// whose workgroups are made of whole subgroups of at least 8 invocations, and
// where every channel count, stride and offset is a multiple of 4 (all
// operands are read as vec4s).
//
//   input_grad:  grad_in[n, iy, ix, ci] += Σ_{ky,kx,co} grad_out[n, oy, ox, co] · w[ky, kx, ci, co]
//                over the taps with iy = oy·stride + ky − pad (and likewise x);
//                invocations take neighbouring input pixels (ROWS each) and
//                share 4·COLS input channels: the transposed weights are broadcast.
//   weight_grad: grad_w[ky, kx, ci, co] += Σ_{n,oy,ox} input[n, iy, ix, ci] · grad_out[n, oy, ox, co]
//                invocations take neighbouring quads of input channels and
//                share 4·COLS output channels of one tap: the output gradient
//                of eight pixels at a time is broadcast.
//
// broadcast8 and fma_rows come from shaders/common/subgroup_rows.wgsl,
// input_pixel and output_pixel from common/input_grad_taps.wgsl, texel from
// common/texels.wgsl, all prepended by the host.
//
// Bindings (struct Params of shaders/common/conv_params.wgsl, prepended by the
// host; residual and activation fields are not read; numbers as conv2d_backward.wgsl):
//   0 params       (uniform)
//   1 grad_out     (texture) NHWC vec4 [batch, out_h, out_w, out_stride/4], channels out_offset..+out_c
//   3 input        (texture) NHWC vec4 [batch, in_h, in_w, in_stride/4], channels in_offset..+in_c (weight_grad)
//   4 grad_in      (storage) NHWC vec4 like input                                       (input_grad)
//   5 grad_weights (storage) vec4 [kernel_h, kernel_w, in_c, out_c/4]                  (weight_grad)
//   7 weights_t    (texture) vec4 [kernel_h, kernel_w, out_c, in_c/4], written by
//                            conv2d_backward.wgsl's transpose_weights                   (input_grad)
// (a texture holds its buffer's vec4s row after row, see common/texels.wgsl)
//
// Grids (workgroups of GROUP invocations, a multiple of 8):
//   input_grad:  x over pixel groups (pixels / (ROWS·GROUP)), y over input channel blocks (in_c / (4·COLS));
//   weight_grad: x over input channel quads (in_c / (4·GROUP)), y over output
//                channel blocks (out_c / (4·COLS)), z over the taps.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var grad_out: texture_2d<f32>;
@group(0) @binding(3) var input: texture_2d<f32>;
@group(0) @binding(4) var<storage, read_write> grad_in: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> grad_weights: array<vec4<f32>>;
@group(0) @binding(7) var weights_t: texture_2d<f32>;

const ROWS: u32 = 4u;
const COLS: u32 = 16u;
// weight_grad's input channel quads per invocation.
const QUADS: u32 = 2u;
override GROUP: u32 = 8u;

@compute @workgroup_size(GROUP, 1, 1)
fn input_grad(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
) {
    let in_c4 = p.in_c / 4u;
    let out_c4 = p.out_c / 4u;
    let q0 = wg.y * COLS;
    let pixels = p.batch * p.in_h * p.in_w;
    let pixel0 = (wg.x * GROUP + lid) * ROWS;
    var pixel: array<InputPixel, ROWS>;
    for (var i = 0u; i < ROWS; i++) {
        pixel[i] = input_pixel(min(pixel0 + i, pixels - 1u));
    }
    var acc: array<array<vec4<f32>, COLS>, ROWS>;
    let k_lane = sg_lane % 8u;
    for (var ky = 0u; ky < p.kernel_h; ky++) {
        for (var kx = 0u; kx < p.kernel_w; kx++) {
            // Each pixel's output gradient (first channel, in vec4s) for this tap, if it has one.
            var g0: array<u32, ROWS>;
            var valid: array<bool, ROWS>;
            for (var i = 0u; i < ROWS; i++) {
                let o = output_pixel(pixel[i], ky, kx);
                valid[i] = o >= 0;
                g0[i] = select(0u, (u32(o) * p.out_stride + p.out_offset) / 4u, valid[i]);
            }
            let tap = ky * p.kernel_w + kx;
            for (var co4 = 0u; co4 < out_c4; co4 += 2u) {
                // Transposed weight row co4·4 + k_lane (zero past out_c), COLS quads.
                let co = co4 * 4u + k_lane;
                let w_row = (tap * p.out_c + min(co, p.out_c - 1u)) * in_c4;
                var w: array<vec4<f32>, COLS>;
                for (var j = 0u; j < COLS; j++) {
                    let q = texel(weights_t, w_row + min(q0 + j, in_c4 - 1u));
                    w[j] = select(vec4<f32>(0.0), q, co < p.out_c);
                }
                var lo: array<vec4<f32>, ROWS>;
                var hi: array<vec4<f32>, ROWS>;
                let co4_hi = min(co4 + 1u, out_c4 - 1u);
                for (var i = 0u; i < ROWS; i++) {
                    lo[i] = select(vec4<f32>(0.0), texel(grad_out, g0[i] + co4), valid[i]);
                    hi[i] = select(vec4<f32>(0.0), texel(grad_out, g0[i] + co4_hi), valid[i] && co4 + 1u < out_c4);
                }
                for (var j = 0u; j < COLS; j++) {
                    let b = broadcast8(w[j]);
                    for (var i = 0u; i < ROWS; i++) {
                        acc[i][j] = fma_rows(acc[i][j], lo[i], hi[i], b);
                    }
                }
            }
        }
    }
    for (var i = 0u; i < ROWS; i++) {
        if (pixel0 + i >= pixels) {
            break;
        }
        let at = ((pixel0 + i) * p.in_stride + p.in_offset) / 4u;
        for (var j = 0u; j < COLS; j++) {
            if (q0 + j < in_c4) {
                grad_in[at + q0 + j] += acc[i][j];
            }
        }
    }
}

@compute @workgroup_size(GROUP, 1, 1)
fn weight_grad(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
) {
    let in_c4 = p.in_c / 4u;
    let out_c4 = p.out_c / 4u;
    let ci4 = (wg.x * GROUP + lid) * QUADS;
    let q0 = wg.y * COLS;
    let tap = wg.z;
    let kx = tap % p.kernel_w;
    let ky = tap / p.kernel_w;
    // acc[4·t + a][j]: input channel 4·(ci4 + t) + a, output channels 4·(q0 + j) .. +3.
    var acc: array<array<vec4<f32>, COLS>, 4 * QUADS>;
    let k_lane = sg_lane % 8u;
    for (var row0 = 0u; row0 < p.m; row0 += 8u) {
        // This invocation's pixel of the eight: its input pixel (in vec4s, or
        // 0xffffffff outside the input) and its output gradient's COLS quads.
        let row = row0 + k_lane;
        let r = min(row, p.m - 1u);
        let ox = r % p.out_w;
        let oy = (r / p.out_w) % p.out_h;
        let n = r / (p.out_w * p.out_h);
        let iy = i32(oy * p.stride_h + ky) - i32(p.pad_top);
        let ix = i32(ox * p.stride_w + kx) - i32(p.pad_left);
        let inside = row < p.m && iy >= 0 && iy < i32(p.in_h) && ix >= 0 && ix < i32(p.in_w);
        let x_at = ((n * p.in_h + u32(iy)) * p.in_w + u32(ix)) * p.in_stride + p.in_offset;
        let x_mine = select(0xffffffffu, x_at / 4u, inside);
        let g_at = (r * p.out_stride + p.out_offset) / 4u;
        var g: array<vec4<f32>, COLS>;
        for (var j = 0u; j < COLS; j++) {
            let q = texel(grad_out, g_at + min(q0 + j, out_c4 - 1u));
            g[j] = select(vec4<f32>(0.0), q, inside);
        }
        // The eight pixels' input channel quads ci4 .. ci4 + QUADS − 1 (zero outside the input).
        let x_rows = array<u32, 8>(
            subgroupBroadcast(x_mine, 0u), subgroupBroadcast(x_mine, 1u),
            subgroupBroadcast(x_mine, 2u), subgroupBroadcast(x_mine, 3u),
            subgroupBroadcast(x_mine, 4u), subgroupBroadcast(x_mine, 5u),
            subgroupBroadcast(x_mine, 6u), subgroupBroadcast(x_mine, 7u),
        );
        var x: array<array<vec4<f32>, 8>, QUADS>;
        for (var t = 0u; t < QUADS; t++) {
            let quad = min(ci4 + t, in_c4 - 1u);
            for (var k = 0u; k < 8u; k++) {
                let outside = x_rows[k] == 0xffffffffu;
                x[t][k] = select(texel(input, select(x_rows[k], 0u, outside) + quad), vec4<f32>(0.0), outside);
            }
        }
        for (var j = 0u; j < COLS; j++) {
            let b = broadcast8(g[j]);
            for (var t = 0u; t < QUADS; t++) {
                for (var a = 0u; a < 4u; a++) {
                    let lo = vec4<f32>(x[t][0][a], x[t][1][a], x[t][2][a], x[t][3][a]);
                    let hi = vec4<f32>(x[t][4][a], x[t][5][a], x[t][6][a], x[t][7][a]);
                    acc[4u * t + a][j] = fma_rows(acc[4u * t + a][j], lo, hi, b);
                }
            }
        }
    }
    for (var t = 0u; t < QUADS; t++) {
        if (ci4 + t >= in_c4) {
            break;
        }
        for (var a = 0u; a < 4u; a++) {
            let at = ((tap * p.in_c + (ci4 + t) * 4u + a) * p.out_c) / 4u;
            for (var j = 0u; j < COLS; j++) {
                if (q0 + j < out_c4) {
                    grad_weights[at + q0 + j] += acc[4u * t + a][j];
                }
            }
        }
    }
}
