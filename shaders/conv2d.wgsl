// conv2d: 2-D convolution as an implicit GEMM, with bias, an optional residual
// add and an activation (none, ReLU, ReLU6) fused.
//
// GEMM view: M = batch·out_h·out_w rows (output pixels), N = out_c columns,
// K = kernel_h·kernel_w·in_c, walked one kernel tap at a time so that each
// tap reads one input pixel's channels contiguously (no im2col buffer).
//
// Bindings:
//   0 params  (uniform)  shapes, strides, padding, channel slices: struct Params
//                        of shaders/common/conv_params.wgsl, prepended by the host
//   1 input   (storage)  NHWC f32 [batch, in_h, in_w, in_stride]; reads channels
//                        in_offset .. in_offset+in_c of each pixel
//   2 weights (storage)  f32 [kernel_h, kernel_w, in_c, out_c] (HWIO, row-major);
//                        for f16 weight files the host swaps in the block marked
//                        WEIGHTS: u32 pairs of f16 read with unpack2x16float
//   3 bias    (storage)  f32 [out_c]
//   4 output  (storage)  NHWC f32 [batch, out_h, out_w, out_stride]; writes
//                        channels out_offset .. out_offset+out_c, so a mixed
//                        block's branches write straight into their concat slice
//   5 residual (storage) NHWC f32 [batch, out_h, out_w, res_stride], added when
//                        p.residual is 1 (an unread placeholder otherwise;
//                        p.residual 2 adds the output's own values instead)
//
// Tiling: a 16×16 workgroup computes a 64×64 output tile, 4×4 values per
// invocation, staging 16-deep K slices of A (input) and B (weights) in
// workgroup memory. Workgroup (x, y) covers rows x·64.. and columns y·64..

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> input: array<f32>;
// WEIGHTS BEGIN
@group(0) @binding(2) var<storage, read> weights: array<f32>;
fn weight_at(i: u32) -> f32 {
    return weights[i];
}
// WEIGHTS END
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> output: array<f32>;
@group(0) @binding(5) var<storage, read> residual: array<f32>;

const TILE_M: u32 = 64u;
const TILE_N: u32 = 64u;
const TILE_K: u32 = 16u;

var<workgroup> a_tile: array<f32, 1024>; // [TILE_K][TILE_M]
var<workgroup> b_tile: array<f32, 1024>; // [TILE_K][TILE_N]

@compute @workgroup_size(16, 16)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let m0 = group.x * TILE_M;
    let n0 = group.y * TILE_N;

    // This invocation loads A row `a_row` (k offsets a_k..a_k+3)
    // and B row `b_k` (columns b_col..b_col+3) of each K slice.
    let a_row = lid / 4u;
    let a_k = (lid % 4u) * 4u;
    let b_k = lid / 16u;
    let b_col = (lid % 16u) * 4u;

    let row = m0 + a_row;
    let row_ok = row < p.m;
    let ox = row % p.out_w;
    let oy = (row / p.out_w) % p.out_h;
    let img = row / (p.out_w * p.out_h);
    let iy0 = i32(oy * p.stride_h) - i32(p.pad_top);
    let ix0 = i32(ox * p.stride_w) - i32(p.pad_left);

    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            acc[i][j] = 0.0;
        }
    }

    for (var ky = 0u; ky < p.kernel_h; ky++) {
        for (var kx = 0u; kx < p.kernel_w; kx++) {
            let iy = iy0 + i32(ky);
            let ix = ix0 + i32(kx);
            let pixel_ok = row_ok && iy >= 0 && iy < i32(p.in_h) && ix >= 0 && ix < i32(p.in_w);
            let pixel = select(0u, ((img * p.in_h + u32(iy)) * p.in_w + u32(ix)) * p.in_stride + p.in_offset, pixel_ok);
            let tap = ky * p.kernel_w + kx;
            for (var c0 = 0u; c0 < p.in_c; c0 += TILE_K) {
                for (var j = 0u; j < 4u; j++) {
                    let c = c0 + a_k + j;
                    var v = 0.0;
                    if (pixel_ok && c < p.in_c) {
                        v = input[pixel + c];
                    }
                    a_tile[(a_k + j) * TILE_M + a_row] = v;
                }
                let kc = c0 + b_k;
                for (var j = 0u; j < 4u; j++) {
                    let co = n0 + b_col + j;
                    var w = 0.0;
                    if (kc < p.in_c && co < p.out_c) {
                        w = weight_at((tap * p.in_c + kc) * p.out_c + co);
                    }
                    b_tile[b_k * TILE_N + b_col + j] = w;
                }
                workgroupBarrier();
                for (var k = 0u; k < TILE_K; k++) {
                    var a: array<f32, 4>;
                    var b: array<f32, 4>;
                    for (var i = 0u; i < 4u; i++) {
                        a[i] = a_tile[k * TILE_M + local.y + 16u * i];
                        b[i] = b_tile[k * TILE_N + local.x + 16u * i];
                    }
                    for (var i = 0u; i < 4u; i++) {
                        for (var j = 0u; j < 4u; j++) {
                            acc[i][j] = fma(a[i], b[j], acc[i][j]);
                        }
                    }
                }
                workgroupBarrier();
            }
        }
    }

    for (var i = 0u; i < 4u; i++) {
        let r = m0 + local.y + 16u * i;
        if (r >= p.m) {
            continue;
        }
        for (var j = 0u; j < 4u; j++) {
            let co = n0 + local.x + 16u * j;
            if (co < p.out_c) {
                var v = acc[i][j] + bias[co];
                let at = r * p.out_stride + p.out_offset + co;
                if (p.residual == 1u) {
                    v += residual[r * p.res_stride + p.res_offset + co];
                } else if (p.residual == 2u) {
                    v += output[at];
                }
                output[at] = activate(v, p.activation);
            }
        }
    }
}
