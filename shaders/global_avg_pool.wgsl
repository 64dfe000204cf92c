// global_avg_pool: mean over all pixels of each image and channel (the bottleneck).
//
// Bindings:
//   0 params (uniform)  struct Params
//   1 input  (storage)  NHWC f32 [batch, height, width, channels]
//   2 output (storage)  f32 [batch, channels]
//
// One invocation per (image, channel); consecutive invocations read
// consecutive channels, so loads are contiguous.

struct Params { batch: u32, height: u32, width: u32, channels: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read_write> output: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let index = gid.x;
    if (index >= p.batch * p.channels) {
        return;
    }
    let c = index % p.channels;
    let img = index / p.channels;
    let pixels = p.height * p.width;
    var sum = 0.0;
    for (var i = 0u; i < pixels; i++) {
        sum += input[(img * pixels + i) * p.channels + c];
    }
    output[index] = sum / f32(pixels);
}
