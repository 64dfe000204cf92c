// preprocess: one decoded u8 RGB image -> one normalised slot of the network's
// input, optionally distorted as retrain.py's --random_scale/--random_crop/
// --flip_left_right/--random_brightness do, in one pass.
//
// The image is resized to resize_h × resize_w with tf.image.resize's bilinear
// rule (half-pixel centres, no antialiasing, no rounding); an out_h × out_w
// window at (crop_y, crop_x) of that is taken, mirrored left-right when
// flip = 1; then x·scale[c] + offset[c] (x in 0..255; the host folds the
// brightness factor into scale). The resized image is never stored: each
// output pixel samples the source directly. Without distortion resize = out
// size, crop = 0, flip = 0, and an image already at the output size passes
// through unchanged (every sample lands exactly on a source pixel).
//
// Bindings:
//   0 params (uniform)  struct Params
//   1 pixels (storage)  u8 RGB rows packed four bytes per u32 (little-endian);
//                       this image starts at byte src_offset, [src_h, src_w, 3]
//   2 output (storage)  NHWC f32 [batch, out_h, out_w, 3]; writes image `slot`
//
// One invocation per output pixel: x = column, y = row.

struct Params {
    src_offset: u32, src_h: u32, src_w: u32, slot: u32,
    out_h: u32, out_w: u32, resize_h: u32, resize_w: u32,
    crop_y: u32, crop_x: u32, flip: u32, _unused: u32,
    scale: vec4<f32>,
    offset: vec4<f32>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> pixels: array<u32>;
@group(0) @binding(2) var<storage, read_write> output: array<f32>;

fn byte_at(i: u32) -> f32 {
    return f32((pixels[i / 4u] >> ((i % 4u) * 8u)) & 0xffu);
}

fn texel(y: u32, x: u32, c: u32) -> f32 {
    return byte_at(p.src_offset + (y * p.src_w + x) * 3u + c);
}

// Source coordinate of output index i along one axis: (lo, hi, fraction).
struct Sample { lo: u32, hi: u32, f: f32 }

fn sample_axis(i: u32, in_size: u32, out_size: u32) -> Sample {
    let c = (f32(i) + 0.5) * (f32(in_size) / f32(out_size)) - 0.5;
    let fl = floor(c);
    let last = f32(in_size - 1u);
    return Sample(u32(clamp(fl, 0.0, last)), u32(clamp(ceil(c), 0.0, last)), c - fl);
}

@compute @workgroup_size(16, 16)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= p.out_w || gid.y >= p.out_h) {
        return;
    }
    let x = select(gid.x, p.out_w - 1u - gid.x, p.flip == 1u);
    let sy = sample_axis(p.crop_y + gid.y, p.src_h, p.resize_h);
    let sx = sample_axis(p.crop_x + x, p.src_w, p.resize_w);
    let base = ((p.slot * p.out_h + gid.y) * p.out_w + gid.x) * 3u;
    for (var c = 0u; c < 3u; c++) {
        let tl = texel(sy.lo, sx.lo, c);
        let tr = texel(sy.lo, sx.hi, c);
        let bl = texel(sy.hi, sx.lo, c);
        let br = texel(sy.hi, sx.hi, c);
        let top = tl + (tr - tl) * sx.f;
        let bottom = bl + (br - bl) * sx.f;
        let value = top + (bottom - top) * sy.f;
        output[base + c] = value * p.scale[c] + p.offset[c];
    }
}
