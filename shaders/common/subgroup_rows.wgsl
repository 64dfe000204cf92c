// subgroup_rows: eight rows shared through the subgroup, for
// conv2d_subgroup.wgsl and conv2d_backward_subgroup.wgsl. Invocation k (0..7)
// of each subgroup holds row k; broadcast8 gives every invocation all eight,
// and fma_rows adds eight scalars times their rows. No bindings.

// The eight rows: invocation k's `v` at index k (subgroupBroadcast wants a constant lane).
fn broadcast8(v: vec4<f32>) -> array<vec4<f32>, 8> {
    return array<vec4<f32>, 8>(
        subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u),
        subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u),
        subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u),
        subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u),
    );
}

// acc + Σ_k x_k · rows[k], where x_0 … x_3 are lo's lanes and x_4 … x_7 hi's.
fn fma_rows(acc: vec4<f32>, lo: vec4<f32>, hi: vec4<f32>, rows: array<vec4<f32>, 8>) -> vec4<f32> {
    var a = fma(vec4<f32>(lo.x), rows[0], acc);
    a = fma(vec4<f32>(lo.y), rows[1], a);
    a = fma(vec4<f32>(lo.z), rows[2], a);
    a = fma(vec4<f32>(lo.w), rows[3], a);
    a = fma(vec4<f32>(hi.x), rows[4], a);
    a = fma(vec4<f32>(hi.y), rows[5], a);
    a = fma(vec4<f32>(hi.z), rows[6], a);
    return fma(vec4<f32>(hi.w), rows[7], a);
}
