// conv2d_subgroup: the same convolution as conv2d_direct.wgsl (implicit GEMM,
// bias, residual add and activation fused, channel slices in and out), with the
// roles of the invocations swapped and the weights shared through the subgroup.
// The host uses it only where its workgroups are made of whole subgroups of
// at least 8 invocations (wgpu's SUBGROUP feature; naga takes the subgroup
// builtins without an `enable subgroups;`, which it does not parse yet).
//
// Each invocation computes ROWS output pixels × 4·COLS output channels; all
// invocations of a workgroup share one block of output channels, so they need
// the same weights. Walking K eight input channels at a time, invocation l of
// each subgroup reads weight row l of the eight and subgroupBroadcast hands
// every row to every invocation: each weight is read once per subgroup instead
// of once per invocation. On CPU drivers (lavapipe), where each invocation is a
// SIMD lane and every storage-buffer read is a per-lane scalar load, this cuts
// the loads per multiply-add by 4–6× against conv2d_direct.wgsl (4×8 to 4×32 tiles against 8×2).
//
// Control flow stays uniform up to the stores (subgroup operations need every
// invocation): invocations past the last pixel compute a clamped copy and store nothing.
//
// Needs out_c, out_stride and out_offset (and res_stride, res_offset with a
// residual) to be multiples of 4, as conv2d_direct.wgsl; input channels are read
// as vec4s when in_c, in_stride and in_offset are multiples of 4, otherwise the
// host swaps in the scalar reader (block INPUT), and f16 weights swap the block WEIGHTS.
//
// broadcast8 and fma_rows come from shaders/common/subgroup_rows.wgsl.
//
// Bindings, readers and epilogue: shaders/common/conv_register_tiles.wgsl,
// prepended by the host, as for conv2d_direct.wgsl (params 0, input 1, weights 2
// in HWIO vec4 [kernel_h, kernel_w, in_c, out_c/4] or four f16 per vec2<u32>,
// bias 3, output 4 and residual 5 in NHWC vec4 with channel slices).
//
// Grid: x over pixel groups (m / (ROWS·GROUP)), y over channel blocks (out_c / (4·COLS));
// the pixel groups fold into z past the device's limit per dimension: group x + z·(grid's x).

const ROWS: u32 = 4u;
const COLS: u32 = 4u;
override GROUP: u32 = 64u;

@compute @workgroup_size(GROUP, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let groups_n = p.out_c / 4u;
    let g0 = wg.y * COLS;
    let r0 = ((wg.z * groups.x + wg.x) * GROUP + lid) * ROWS;

    // Each row's receptive field (rows past m: the last row's).
    var corners: array<Corner, ROWS>;
    for (var i = 0u; i < ROWS; i++) {
        corners[i] = corner(min(r0 + i, p.m - 1u));
    }

    var acc: array<array<vec4<f32>, COLS>, ROWS>;
    let in_c4 = (p.in_c + 3u) / 4u;
    let last_weight = weight_quads() - 1u;
    // This invocation's row among each eight input channels read together.
    let k_lane = sg_lane % 8u;
    for (var ky = 0u; ky < p.kernel_h; ky++) {
        for (var kx = 0u; kx < p.kernel_w; kx++) {
            var taps: array<Tap, ROWS>;
            for (var i = 0u; i < ROWS; i++) {
                taps[i] = tap_at(corners[i], ky, kx);
            }
            let tap = (ky * p.kernel_w + kx) * p.in_c;
            for (var c8 = 0u; c8 < in_c4; c8 += 2u) {
                // Weight row c8·4 + k_lane of this tap (zero past in_c), COLS quads.
                let k = c8 * 4u + k_lane;
                let w_row = (tap + min(k, p.in_c - 1u)) * groups_n;
                var w: array<vec4<f32>, COLS>;
                for (var j = 0u; j < COLS; j++) {
                    let q = weight4_at(min(w_row + min(g0 + j, groups_n - 1u), last_weight));
                    w[j] = select(vec4<f32>(0.0), q, k < p.in_c);
                }
                // The eight input channels of each row (zero past in_c).
                var lo: array<vec4<f32>, ROWS>;
                var hi: array<vec4<f32>, ROWS>;
                let c_hi = min(c8 + 1u, in_c4 - 1u);
                for (var i = 0u; i < ROWS; i++) {
                    lo[i] = select(vec4<f32>(0.0), input_quad(taps[i].pixel, c8), taps[i].inside);
                    hi[i] = select(vec4<f32>(0.0), input_quad(taps[i].pixel, c_hi), taps[i].inside && c8 + 1u < in_c4);
                }
                for (var j = 0u; j < COLS; j++) {
                    // Weight rows c8·4 … c8·4+7, each from the invocation that read it.
                    let b = broadcast8(w[j]);
                    for (var i = 0u; i < ROWS; i++) {
                        acc[i][j] = fma_rows(acc[i][j], lo[i], hi[i], b);
                    }
                }
            }
        }
    }

    store_tile(r0, g0, &acc);
}
