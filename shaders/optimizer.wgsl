// optimizer: one update of a parameter tensor from its accumulated gradient,
// which is then cleared for the next step's accumulation. Weight decay is
// decoupled (AdamW's, and the same for SGD): w ← w·(1 − decay) before the step.
//
//   rule 0, SGD with momentum:  v ← β1·v − step_size·g;                 w ← w·(1 − decay) + v
//   rule 1, Adam:               m ← β1·m + (1 − β1)·g; v ← β2·v + (1 − β2)·g²
//                               w ← w·(1 − decay) − step_size·m / (√v + ε)
//
// step_size is the learning rate, for Adam with the bias corrections folded
// in by the host (lr·√(1 − β2^t) / (1 − β1^t)); decay is lr·weight_decay.
//
// Bindings (each storage buffer holds count values rounded up to a multiple
// of 4, the padding updated like the rest: zeros stay zeros):
//   0 params     (uniform)  struct Params
//   1 parameters (storage)  vec4 [count/4], updated in place
//   2 gradients  (storage)  vec4 [count/4], read then zeroed
//   3 first      (storage)  vec4 [count/4]: SGD's velocity, Adam's first moment
//   4 second     (storage)  vec4 [count/4]: Adam's second moment (unused by SGD)
//
// One invocation per four parameters (vec4 loads and stores), spread over a
// 2-D grid of 256-wide workgroups.

struct Params { count: u32, rule: u32, step_size: f32, decay: f32, beta1: f32, beta2: f32, epsilon: f32, _pad: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> parameters: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> gradients: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> first: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> second: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= (p.count + 3u) / 4u) {
        return;
    }
    let g = gradients[i];
    gradients[i] = vec4<f32>(0.0);
    let w = parameters[i] * (1.0 - p.decay);
    if (p.rule == 0u) {
        let v = p.beta1 * first[i] - p.step_size * g;
        first[i] = v;
        parameters[i] = w + v;
    } else {
        let m = p.beta1 * first[i] + (1.0 - p.beta1) * g;
        let v = p.beta2 * second[i] + (1.0 - p.beta2) * g * g;
        first[i] = m;
        second[i] = v;
        parameters[i] = w - p.step_size * m / (sqrt(v) + p.epsilon);
    }
}
