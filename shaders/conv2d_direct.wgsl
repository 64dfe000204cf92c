// conv2d_direct: the same convolution as conv2d.wgsl (implicit GEMM, bias,
// residual add and activation fused, channel slices in and out), tiled in registers only:
// no workgroup memory and no barriers, which suits CPU drivers (lavapipe),
// where each invocation is a SIMD lane and the caches do the staging.
//
// Each invocation computes ROWS output pixels × 4·COLS output channels,
// walking K one kernel tap and four input channels at a time. Neighbouring
// invocations (x) take neighbouring channel groups, so their weight reads are
// contiguous and their input reads identical. ROWS and COLS are substituted
// per variant by the host (the autotuner picks one per conv shape and device);
// the workgroup size is the override constant GROUP.
//
// Needs out_c, out_stride and out_offset (and res_stride, res_offset with a
// residual) to be multiples of 4 (the host falls back to conv2d.wgsl
// otherwise). Input channels are read four at a
// time as one vec4 when in_c, in_stride and in_offset are multiples of 4;
// otherwise the host swaps in the scalar `input` binding and `input_quad`
// (block INPUT), which read them one by one (the RGB first layer).
//
// Bindings, readers and epilogue: shaders/common/conv_register_tiles.wgsl,
// prepended by the host (params 0, input 1, weights 2 in HWIO vec4
// [kernel_h, kernel_w, in_c, out_c/4] or four f16 per vec2<u32>, bias 3,
// output 4 and residual 5 in NHWC vec4 with channel slices).
//
// Grid: x over channel groups (out_c / (4·COLS)), y over row groups (m / ROWS),
// folded into z past the device's limit per dimension: row group y + z·(grid's y).

const ROWS: u32 = 4u;
const COLS: u32 = 2u;
override GROUP: u32 = 64u;

@compute @workgroup_size(GROUP, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let groups_n = p.out_c / 4u;
    let g0 = gid.x * COLS;
    let r0 = (gid.z * groups.y + gid.y) * ROWS;
    if (g0 >= groups_n || r0 >= p.m) {
        return;
    }

    // Each row's receptive field (rows past m: the last row's).
    var corners: array<Corner, ROWS>;
    for (var i = 0u; i < ROWS; i++) {
        corners[i] = corner(min(r0 + i, p.m - 1u));
    }

    var acc: array<array<vec4<f32>, COLS>, ROWS>;
    let in_c4 = (p.in_c + 3u) / 4u;
    let last_weight = weight_quads() - 1u;
    for (var ky = 0u; ky < p.kernel_h; ky++) {
        for (var kx = 0u; kx < p.kernel_w; kx++) {
            var taps: array<Tap, ROWS>;
            for (var i = 0u; i < ROWS; i++) {
                taps[i] = tap_at(corners[i], ky, kx);
            }
            let tap = (ky * p.kernel_w + kx) * p.in_c;
            for (var c4 = 0u; c4 < in_c4; c4++) {
                var a: array<vec4<f32>, ROWS>;
                for (var i = 0u; i < ROWS; i++) {
                    a[i] = select(vec4<f32>(0.0), input_quad(taps[i].pixel, c4), taps[i].inside);
                }
                for (var kk = 0u; kk < 4u; kk++) {
                    // Past in_c (unaligned input) a[i][kk] is 0; the clamp keeps the read in bounds.
                    let w_row = (tap + c4 * 4u + kk) * groups_n + g0;
                    for (var j = 0u; j < COLS; j++) {
                        let w = weight4_at(min(min(w_row + j, w_row - g0 + groups_n - 1u), last_weight));
                        for (var i = 0u; i < ROWS; i++) {
                            acc[i][j] = fma(vec4<f32>(a[i][kk]), w, acc[i][j]);
                        }
                    }
                }
            }
        }
    }

    store_tile(r0, g0, &acc);
}
