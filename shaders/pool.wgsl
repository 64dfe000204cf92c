// pool: windowed max and average pooling over NHWC tensors, TensorFlow's rules.
//
// max_pool: padding cells count as −∞ (the network only uses VALID max pools).
// avg_pool: the divisor is the number of window cells inside the input, so
//           SAME padding is left out of the mean (TensorFlow's AvgPool).
// avg_pool_counting_padding: the divisor is the whole window (PyTorch's
//           count_include_pad=True, for windows that stay inside the padded input).
//
// Bindings:
//   0 params (uniform)  struct Params
//   1 input  (storage)  NHWC f32 [batch, in_h, in_w, in_stride], channels in_offset..+channels
//   2 output (storage)  NHWC f32 [batch, out_h, out_w, out_stride], channels out_offset..+channels
//
// Values are read LANES channels at a time: one f32, or, when channels,
// strides and offsets are multiples of 4, the host swaps in the block marked
// VALUE to read vec4s (a quarter of the invocations and index arithmetic);
// on CPU adapters it also swaps the block INPUT to read them from a texture
// (`texel`, shaders/common/texels.wgsl, prepended by the host; see
// src/gpu/texture_reads.rs).
// One invocation per output Value; the 1-D index is spread over a 2-D grid
// of 256-wide workgroups (x + y·groups_x) to stay under the per-dimension limit.

struct Params {
    batch: u32, in_h: u32, in_w: u32, channels: u32,
    out_h: u32, out_w: u32, window_h: u32, window_w: u32,
    stride_h: u32, stride_w: u32, pad_top: u32, pad_left: u32,
    in_stride: u32, in_offset: u32, out_stride: u32, out_offset: u32,
}

// VALUE BEGIN
alias Value = f32;
const LANES: u32 = 1u;
// VALUE END

@group(0) @binding(0) var<uniform> p: Params;
// INPUT BEGIN
@group(0) @binding(1) var<storage, read> input: array<Value>;
fn input_value(i: u32) -> Value {
    return input[i];
}
// INPUT END
@group(0) @binding(2) var<storage, read_write> output: array<Value>;

// A window's image and top-left corner, its channel group (in Values) and output pixel.
struct Window { img: u32, y0: i32, x0: i32, c: u32, out_pixel: u32 }

fn window_of(index: u32) -> Window {
    let c = index % (p.channels / LANES);
    let pixel = index / (p.channels / LANES);
    let ox = pixel % p.out_w;
    let oy = (pixel / p.out_w) % p.out_h;
    let img = pixel / (p.out_w * p.out_h);
    return Window(img, i32(oy * p.stride_h) - i32(p.pad_top), i32(ox * p.stride_w) - i32(p.pad_left), c, pixel);
}

fn input_at(w: Window, y: i32, x: i32) -> Value {
    let pixel = (w.img * p.in_h + u32(y)) * p.in_w + u32(x);
    return input_value((pixel * p.in_stride + p.in_offset) / LANES + w.c);
}

fn output_count() -> u32 {
    return p.batch * p.out_h * p.out_w * (p.channels / LANES);
}

fn element_index(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return gid.x + gid.y * groups.x * 256u;
}

// Max, sum and count of the window's cells that lie inside the input.
struct Stats { best: Value, sum: Value, count: f32 }

fn window_stats(w: Window) -> Stats {
    var best = Value(-3.0e38);
    var sum = Value(0.0);
    var count = 0.0;
    for (var dy = 0u; dy < p.window_h; dy++) {
        let y = w.y0 + i32(dy);
        if (y < 0 || y >= i32(p.in_h)) { continue; }
        for (var dx = 0u; dx < p.window_w; dx++) {
            let x = w.x0 + i32(dx);
            if (x < 0 || x >= i32(p.in_w)) { continue; }
            let v = input_at(w, y, x);
            best = max(best, v);
            sum += v;
            count += 1.0;
        }
    }
    return Stats(best, sum, count);
}

fn output_index(w: Window) -> u32 {
    return (w.out_pixel * p.out_stride + p.out_offset) / LANES + w.c;
}

@compute @workgroup_size(256)
fn max_pool(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = element_index(gid, groups);
    if (index >= output_count()) {
        return;
    }
    let w = window_of(index);
    output[output_index(w)] = window_stats(w).best;
}

@compute @workgroup_size(256)
fn avg_pool(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = element_index(gid, groups);
    if (index >= output_count()) {
        return;
    }
    let w = window_of(index);
    let stats = window_stats(w);
    output[output_index(w)] = stats.sum / stats.count;
}

@compute @workgroup_size(256)
fn avg_pool_counting_padding(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = element_index(gid, groups);
    if (index >= output_count()) {
        return;
    }
    let w = window_of(index);
    output[output_index(w)] = window_stats(w).sum / f32(p.window_h * p.window_w);
}
