//! Reading a kernel's operands through textures instead of storage buffers,
//! for CPU adapters. Mesa 22.3's lavapipe compiles every storage-buffer read
//! into a loop over the SIMD lanes (one bounds-checked scalar load per lane,
//! inserted through the stack: ~14 ns per vec4 per invocation on the CI-like
//! host), while a texel fetch is one vector gather (~1.5 ns). So there the conv
//! kernels (forward and gradients) and the pools read their operands from 2-D
//! rgba textures, each filled from its buffer by a copy recorded just before
//! the dispatch (a memcpy on a CPU driver, small beside the kernel).
//!
//! A buffer of vec4s maps onto a texture row by row: vec4 `i` is texel
//! (i % TEXELS_PER_ROW, i / TEXELS_PER_ROW). The textures are scratch space
//! shared by every dispatch of one set of kernels (the engine's, fine-tuning's
//! forward and backward kernels each have theirs), one per binding, since
//! each dispatch refills what it reads.

use super::context::Gpu;
use std::sync::Mutex;

/// Texels per texture row: 64 KiB of f32 texels, a multiple of the 256-byte
/// row alignment copies need (and 32 KiB of f16 ones).
pub const TEXELS_PER_ROW: u32 = 4096;

/// conv_register_tiles.wgsl's input binding and reader, from a texture
/// (`texel` is shaders/common/texels.wgsl's).
pub const TEXTURE_INPUT: &str = "
@group(0) @binding(1) var input: texture_2d<f32>;
fn input_quad(pixel: u32, c4: u32) -> vec4<f32> {
    return texel(input, pixel / 4u + c4);
}
";

/// conv_register_tiles.wgsl's weight binding and reader, from a texture
/// (rgba32float, or rgba16float for f16 weights: both read as vec4<f32>).
pub const TEXTURE_WEIGHTS: &str = "
@group(0) @binding(2) var weights: texture_2d<f32>;
fn weight4_at(i: u32) -> vec4<f32> {
    return texel(weights, i);
}
fn weight_quads() -> u32 {
    let size = textureDimensions(weights);
    return size.x * size.y;
}
";

/// pool.wgsl's input binding and reader (with vec4 values), from a texture.
pub const TEXTURE_POOL_INPUT: &str = "
@group(0) @binding(1) var input: texture_2d<f32>;
fn input_value(i: u32) -> Value {
    return texel(input, i);
}
";

/// A buffer's first `texels` vec4s (four f32, or four f16), copied into the
/// first texels of `texture` before a dispatch reads them.
pub struct TextureCopy {
    buffer: wgpu::Buffer,
    texels: u64,
    texture: wgpu::Texture,
}

impl TextureCopy {
    /// The texture, as the kernel binds it.
    pub fn view(&self) -> wgpu::TextureView {
        self.texture.create_view(&Default::default())
    }

    /// The whole rows, then the last partial row (copies are rectangles).
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        let row = TEXELS_PER_ROW as u64;
        let texel_bytes = self
            .texture
            .format()
            .block_copy_size(None)
            .expect("a colour format") as u64;
        let (rows, tail) = (self.texels / row, self.texels % row);
        let copy =
            |encoder: &mut wgpu::CommandEncoder, offset: u64, y: u64, width: u64, height: u64| {
                encoder.copy_buffer_to_texture(
                    wgpu::TexelCopyBufferInfo {
                        buffer: &self.buffer,
                        layout: wgpu::TexelCopyBufferLayout {
                            offset,
                            bytes_per_row: Some((row * texel_bytes) as u32),
                            rows_per_image: None,
                        },
                    },
                    wgpu::TexelCopyTextureInfo {
                        texture: &self.texture,
                        mip_level: 0,
                        origin: wgpu::Origin3d {
                            x: 0,
                            y: y as u32,
                            z: 0,
                        },
                        aspect: wgpu::TextureAspect::All,
                    },
                    wgpu::Extent3d {
                        width: width as u32,
                        height: height as u32,
                        depth_or_array_layers: 1,
                    },
                );
            };
        if rows > 0 {
            copy(encoder, 0, 0, row, rows);
        }
        if tail > 0 {
            copy(encoder, rows * row * texel_bytes, rows, tail, 1);
        }
    }
}

/// The scratch texture of one format for one binding, shared by every
/// dispatch that binds it: one texture, replaced by one twice as tall or more
/// when a buffer does not fit. Dispatches recorded earlier keep the texture
/// they copy into alive, so while a plan holds them all its textures' heights
/// are distinct powers of two: together at most twice the last, itself at
/// most twice the largest operand's whole rows (an operand smaller than a
/// row still takes one: 64 KiB of f32).
pub struct ScratchTextures {
    format: wgpu::TextureFormat,
    texture: Mutex<Option<wgpu::Texture>>,
}

/// Bytes of scratch texture one binding may hold per byte of its largest
/// operand, when that is a row or more.
pub const SCRATCH_BYTES_PER_OPERAND_BYTE: u64 = 4;

impl ScratchTextures {
    pub fn new(format: wgpu::TextureFormat) -> Self {
        ScratchTextures {
            format,
            texture: Mutex::default(),
        }
    }

    /// Lets the texture go once the copies that hold it are dropped; the next
    /// copy makes a new one.
    pub fn release(&self) {
        *self.texture.lock().expect("scratch texture") = None;
    }

    /// The copy of `buffer`'s first `texels` texels into the scratch texture;
    /// None when no texture of the device can hold them.
    pub fn copy_of(&self, gpu: &Gpu, buffer: &wgpu::Buffer, texels: u64) -> Option<TextureCopy> {
        let rows = texels.div_ceil(TEXELS_PER_ROW as u64).max(1);
        let max_rows = gpu.limits.max_texture_dimension_2d as u64;
        if rows > max_rows || TEXELS_PER_ROW > gpu.limits.max_texture_dimension_2d {
            return None;
        }
        let mut current = self.texture.lock().expect("scratch texture");
        let texture = match current.as_ref().filter(|t| t.height() as u64 >= rows) {
            Some(t) => t.clone(),
            None => {
                // Rounded up so that a handful of sizes serve a whole network.
                let height = rows.next_power_of_two().min(max_rows) as u32;
                let t = gpu.device.create_texture(&wgpu::TextureDescriptor {
                    label: Some("operand texture"),
                    size: wgpu::Extent3d {
                        width: TEXELS_PER_ROW,
                        height,
                        depth_or_array_layers: 1,
                    },
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format: self.format,
                    usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
                    view_formats: &[],
                });
                *current = Some(t.clone());
                t
            }
        };
        Some(TextureCopy {
            buffer: buffer.clone(),
            texels,
            texture,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn a_plans_scratch_textures_stay_within_their_bound() {
        let gpu = Gpu::new().unwrap();
        let scratch = ScratchTextures::new(wgpu::TextureFormat::Rgba32Float);
        let buffer = gpu.storage_buffer("operand", 16);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        // Operands of up to 40 rows in a random order, every copy kept (as a plan keeps them).
        let texels: Vec<u64> = (0..60)
            .map(|_| rng.random_range(1..40 * TEXELS_PER_ROW as u64))
            .collect();
        let copies: Vec<TextureCopy> = texels
            .iter()
            .map(|&t| scratch.copy_of(&gpu, &buffer, t).unwrap())
            .collect();
        let mut textures: Vec<&wgpu::Texture> = Vec::new();
        for copy in &copies {
            let rows = copy.texels.div_ceil(TEXELS_PER_ROW as u64);
            assert!(copy.texture.height() as u64 >= rows, "the operand fits");
            if !textures.contains(&&copy.texture) {
                textures.push(&copy.texture);
            }
        }
        assert!(textures.len() > 1, "the operands' sizes call for growing");
        let texel_bytes = 16;
        let held: u64 = textures
            .iter()
            .map(|t| (t.width() * t.height()) as u64 * texel_bytes)
            .sum();
        let largest = texels.iter().max().unwrap() * texel_bytes;
        assert!(
            held <= SCRATCH_BYTES_PER_OPERAND_BYTE * largest,
            "{held} bytes held for a largest operand of {largest}"
        );
    }

    #[test]
    fn the_shaders_lay_out_rows_as_the_host_copies_them() {
        let texels = include_str!("../../shaders/common/texels.wgsl");
        let layout = format!("vec2<u32>(i % {TEXELS_PER_ROW}u, i / {TEXELS_PER_ROW}u)");
        assert!(texels.contains(&layout));
    }
}
