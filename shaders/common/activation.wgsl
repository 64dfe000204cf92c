// activation: the activations the conv and depthwise kernels fuse into their
// epilogue, by code: 0 none (linear), 1 ReLU max(x, 0), 2 ReLU6 min(max(x, 0), 6).
// Prepended by the host at build time (src/gpu/shader.rs).

fn activate(v: f32, kind: u32) -> f32 {
    switch kind {
        case 1u: { return max(v, 0.0); }
        case 2u: { return clamp(v, 0.0, 6.0); }
        default: { return v; }
    }
}

fn activate4(v: vec4<f32>, kind: u32) -> vec4<f32> {
    switch kind {
        case 1u: { return max(v, vec4<f32>(0.0)); }
        case 2u: { return clamp(v, vec4<f32>(0.0), vec4<f32>(6.0)); }
        default: { return v; }
    }
}
