// pool_backward: the gradients of pool.wgsl's pools with respect to their
// input, added to what grad_in holds (a tensor read by several ops sums them).
//
// max_pool_backward: each window's gradient goes to its maximum — the first
//   cell in row-major order holding the window's largest value (TensorFlow's
//   MaxPoolGrad); padding never wins.
// avg_pool_backward: each window's gradient shared equally by its cells
//   inside the input (padding left out of the mean, TensorFlow's AvgPool).
// avg_pool_counting_padding_backward: shared by the whole window (PyTorch's
//   count_include_pad).
//
// Bindings:
//   0 params   (uniform)  struct Params (pool.wgsl's)
//   1 input    (storage)  NHWC f32 [batch, in_h, in_w, in_stride], channels in_offset..+channels:
//                         the pool's input (read by max_pool_backward; bound for all)
//   2 grad_out (storage)  NHWC f32 [batch, out_h, out_w, out_stride], channels out_offset..+channels
//   3 grad_in  (storage)  NHWC f32 like input
//
// One invocation per input element (gathering from every window that covers
// it), spread over a 2-D grid of 256-wide workgroups.

struct Params {
    batch: u32, in_h: u32, in_w: u32, channels: u32,
    out_h: u32, out_w: u32, window_h: u32, window_w: u32,
    stride_h: u32, stride_w: u32, pad_top: u32, pad_left: u32,
    in_stride: u32, in_offset: u32, out_stride: u32, out_offset: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read> grad_out: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad_in: array<f32>;

// One input element: its image, coordinates and channel.
struct Cell { img: u32, y: u32, x: u32, c: u32 }

fn cell_of(gid: vec3<u32>, groups: vec3<u32>) -> Cell {
    let index = gid.x + gid.y * groups.x * 256u;
    if (index >= p.batch * p.in_h * p.in_w * p.channels) {
        return Cell(p.batch, 0u, 0u, 0u);
    }
    let c = index % p.channels;
    let pixel = index / p.channels;
    return Cell(pixel / (p.in_w * p.in_h), (pixel / p.in_w) % p.in_h, pixel % p.in_w, c);
}

fn input_index(img: u32, y: u32, x: u32, c: u32) -> u32 {
    return ((img * p.in_h + y) * p.in_w + x) * p.in_stride + p.in_offset + c;
}

fn grad_out_at(cell: Cell, oy: u32, ox: u32) -> f32 {
    return grad_out[((cell.img * p.out_h + oy) * p.out_w + ox) * p.out_stride + p.out_offset + cell.c];
}

// The first and one-past-last output index whose window covers input `i`.
fn covering(i: u32, window: u32, stride: u32, pad: u32, size: u32) -> vec2<u32> {
    let t = i32(i + pad);
    let first = max(t - i32(window) + i32(stride), 0) / i32(stride);
    let last = min(t / i32(stride) + 1, i32(size));
    return vec2<u32>(u32(first), u32(max(last, first)));
}

// The window's top-left corner and its cells inside the input.
struct Window { y0: i32, x0: i32, y1: i32, x1: i32 }

fn window_at(oy: u32, ox: u32) -> Window {
    let y0 = i32(oy * p.stride_h) - i32(p.pad_top);
    let x0 = i32(ox * p.stride_w) - i32(p.pad_left);
    return Window(y0, x0, min(y0 + i32(p.window_h), i32(p.in_h)), min(x0 + i32(p.window_w), i32(p.in_w)));
}

fn is_window_max(cell: Cell, w: Window) -> bool {
    var best = -3.0e38;
    var best_y = -1;
    var best_x = -1;
    for (var y = max(w.y0, 0); y < w.y1; y++) {
        for (var x = max(w.x0, 0); x < w.x1; x++) {
            let v = input[input_index(cell.img, u32(y), u32(x), cell.c)];
            if (v > best) {
                best = v;
                best_y = y;
                best_x = x;
            }
        }
    }
    return best_y == i32(cell.y) && best_x == i32(cell.x);
}

// kind: 0 max, 1 average over cells inside, 2 average over the whole window.
fn backward(cell: Cell, kind: u32) {
    if (cell.img >= p.batch) {
        return;
    }
    let ys = covering(cell.y, p.window_h, p.stride_h, p.pad_top, p.out_h);
    let xs = covering(cell.x, p.window_w, p.stride_w, p.pad_left, p.out_w);
    var acc = 0.0;
    for (var oy = ys.x; oy < ys.y; oy++) {
        for (var ox = xs.x; ox < xs.y; ox++) {
            let w = window_at(oy, ox);
            let g = grad_out_at(cell, oy, ox);
            switch kind {
                case 0u: {
                    if (is_window_max(cell, w)) { acc += g; }
                }
                case 1u: {
                    acc += g / f32((w.y1 - max(w.y0, 0)) * (w.x1 - max(w.x0, 0)));
                }
                default: {
                    acc += g / f32(p.window_h * p.window_w);
                }
            }
        }
    }
    grad_in[input_index(cell.img, cell.y, cell.x, cell.c)] += acc;
}

@compute @workgroup_size(256)
fn max_pool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    backward(cell_of(gid, groups), 0u);
}

@compute @workgroup_size(256)
fn avg_pool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    backward(cell_of(gid, groups), 1u);
}

@compute @workgroup_size(256)
fn avg_pool_counting_padding_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    backward(cell_of(gid, groups), 2u);
}
