// activation_backward: the gradient through a fused activation, in place: a
// conv's output gradient times the activation's derivative, read off the
// conv's (post-activation) output — ReLU passes where y > 0, ReLU6 where
// 0 < y < 6, none everywhere.
//
//   grad[r, offset + c] *= f'(y[r, offset + c])   for rows r < rows, c < channels
//
// Bindings:
//   0 params (uniform)  struct Params
//   1 output (storage)  f32 [rows, stride]: the activation's output, channels offset..+channels
//   2 grad   (storage)  f32 [rows, stride]: its gradient, same layout, updated in place
//
// One invocation per element of the slice, spread over a 2-D grid of
// 256-wide workgroups.

struct Params { rows: u32, channels: u32, stride: u32, offset: u32, activation: u32, _pad0: u32, _pad1: u32, _pad2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> output: array<f32>;
@group(0) @binding(2) var<storage, read_write> grad: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = gid.x + gid.y * groups.x * 256u;
    if (index >= p.rows * p.channels) {
        return;
    }
    let at = (index / p.channels) * p.stride + p.offset + index % p.channels;
    let y = output[at];
    var pass_through = true;
    switch p.activation {
        case 1u: { pass_through = y > 0.0; }
        case 2u: { pass_through = y > 0.0 && y < 6.0; }
        default: {}
    }
    grad[at] = select(0.0, grad[at], pass_through);
}
