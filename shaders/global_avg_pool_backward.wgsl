// global_avg_pool_backward: the gradient of global_avg_pool.wgsl's mean with
// respect to its input — each pixel gets its image's channel gradient divided
// by the pixel count — added to what grad_in holds.
//
//   grad_in[n, y, x, c] += grad_out[n, c] / (height · width)
//
// Bindings:
//   0 params   (uniform)  struct Params (global_avg_pool.wgsl's)
//   1 grad_out (storage)  f32 [batch, channels]
//   2 grad_in  (storage)  NHWC f32 [batch, height, width, channels]
//
// One invocation per input element, spread over a 2-D grid of 256-wide workgroups.

struct Params { batch: u32, height: u32, width: u32, channels: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad_out: array<f32>;
@group(0) @binding(2) var<storage, read_write> grad_in: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = gid.x + gid.y * groups.x * 256u;
    let pixels = p.height * p.width;
    if (index >= p.batch * pixels * p.channels) {
        return;
    }
    let c = index % p.channels;
    let img = index / (pixels * p.channels);
    grad_in[index] += grad_out[img * p.channels + c] / f32(pixels);
}
