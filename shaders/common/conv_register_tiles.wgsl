// conv_register_tiles: what conv2d_direct.wgsl and conv2d_subgroup.wgsl share —
// their bindings, the readers the host may swap (block INPUT: scalar reads for
// input channels not aligned to 4; block WEIGHTS: four f16 in a vec2<u32>; on
// CPU adapters both from textures, see src/gpu/texture_reads.rs),
// the receptive field of an output pixel and the input pixel each tap reads,
// and the epilogue that writes a tile of output channel quads. Prepended after
// conv_params.wgsl and activation.wgsl by the host (src/gpu/shader.rs).
//
// Bindings (viewed as vec4):
//   0 params  (uniform)  struct Params of conv_params.wgsl
//   1 input   (storage)  NHWC vec4 [batch, in_h, in_w, in_stride/4] (or f32)
//   2 weights (storage)  HWIO vec4 [kernel_h, kernel_w, in_c, out_c/4] (or vec2<u32>: four f16)
//   3 bias    (storage)  vec4 [out_c/4]
//   4 output  (storage)  NHWC vec4 [batch, out_h, out_w, out_stride/4]
//   5 residual (storage) NHWC vec4 [batch, out_h, out_w, res_stride/4], added when
//                        p.residual is 1 (res_stride, res_offset multiples of 4);
//                        p.residual 2 adds the output's own values instead

@group(0) @binding(0) var<uniform> p: Params;
// INPUT BEGIN
@group(0) @binding(1) var<storage, read> input: array<vec4<f32>>;
// Channels 4·c4 .. 4·c4+3 of the input pixel whose channel 0 is at `pixel`.
fn input_quad(pixel: u32, c4: u32) -> vec4<f32> {
    return input[pixel / 4u + c4];
}
// INPUT END
// WEIGHTS BEGIN
@group(0) @binding(2) var<storage, read> weights: array<vec4<f32>>;
fn weight4_at(i: u32) -> vec4<f32> {
    return weights[i];
}
// How many weight quads the binding holds (reads are clamped to it).
fn weight_quads() -> u32 {
    return arrayLength(&weights);
}
// WEIGHTS END
@group(0) @binding(3) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> output: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> residual: array<vec4<f32>>;

// Where output pixel `row`'s receptive field starts: its top-left input
// coordinates (negative in the padding) and the first input row of its image.
struct Corner {
    y: i32,
    x: i32,
    image_row: u32,
}

fn corner(row: u32) -> Corner {
    let ox = row % p.out_w;
    let oy = (row / p.out_w) % p.out_h;
    let image = row / (p.out_w * p.out_h);
    return Corner(i32(oy * p.stride_h) - i32(p.pad_top), i32(ox * p.stride_w) - i32(p.pad_left), image * p.in_h);
}

// The input pixel that tap (ky, kx) of a receptive field reads: the index of
// its first channel in the input slice, and whether it is inside the input
// (outside, in the padding, the index is 0 and the value is taken as 0).
struct Tap {
    pixel: u32,
    inside: bool,
}

fn tap_at(c: Corner, ky: u32, kx: u32) -> Tap {
    let iy = c.y + i32(ky);
    let ix = c.x + i32(kx);
    let inside = iy >= 0 && iy < i32(p.in_h) && ix >= 0 && ix < i32(p.in_w);
    let pixel = ((c.image_row + u32(iy)) * p.in_w + u32(ix)) * p.in_stride + p.in_offset;
    return Tap(select(0u, pixel, inside), inside);
}

// Writes a tile: output pixels r0 … r0+ROWS−1 × channel quads g0 … g0+COLS−1
// (ROWS and COLS are the kernel's), those inside the output.
fn store_tile(r0: u32, g0: u32, acc: ptr<function, array<array<vec4<f32>, COLS>, ROWS>>) {
    for (var i = 0u; i < ROWS; i++) {
        let r = r0 + i;
        if (r >= p.m) {
            break;
        }
        for (var j = 0u; j < COLS; j++) {
            let g = g0 + j;
            if (g >= p.out_c / 4u) {
                break;
            }
            store_quad(r, g, (*acc)[i][j]);
        }
    }
}

// Output pixel r, channels 4·g .. 4·g+3: the sum plus bias (and residual, or
// what the output holds), activated.
fn store_quad(r: u32, g: u32, sum: vec4<f32>) {
    var v = sum + bias[g];
    let at = (r * p.out_stride + p.out_offset) / 4u + g;
    if (p.residual == 1u) {
        v += residual[(r * p.res_stride + p.res_offset) / 4u + g];
    } else if (p.residual == 2u) {
        v += output[at];
    }
    output[at] = activate4(v, p.activation);
}
