// texels: reading a buffer of vec4s that the host copied into a 2-D rgba
// texture row after row, 4096 texels a row (TEXELS_PER_ROW in
// src/gpu/texture_reads.rs): on CPU drivers a texel fetch is a vector gather,
// several times cheaper than a storage-buffer read. No bindings of its own.

// Vec4 `i` of the buffer copied into `t`.
fn texel(t: texture_2d<f32>, i: u32) -> vec4<f32> {
    return textureLoad(t, vec2<u32>(i % 4096u, i / 4096u), 0);
}
