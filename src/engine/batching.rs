//! Decoded images into bottlenecks: packed into one pixel buffer, resized,
//! distorted and normalised on the GPU straight into the network's input, in
//! batches the device can hold.

use super::Engine;
use crate::data::distortion::Distortion;
use crate::gpu::kernels::Dispatch;
use crate::gpu::params::PreprocessParams;
use crate::model::graph::OUTPUT;
use crate::model::weights::Normalization;
use anyhow::{bail, Result};
use image::RgbImage;
use std::borrow::Borrow;

impl Engine {
    /// Whether the device can take this decoded image (its pixels must fit one binding).
    pub fn check_image(&self, img: &RgbImage) -> Result<()> {
        if img.as_raw().len() as u64 > self.gpu.max_binding_bytes() {
            bail!(
                "{}×{} pixels is too large for this device",
                img.width(),
                img.height()
            );
        }
        Ok(())
    }

    /// Bottlenecks ([images.len(), 2048] row-major) of decoded RGB images:
    /// resized and normalised on the GPU, run in batches the device can hold.
    pub fn bottlenecks<I: Borrow<RgbImage>>(&mut self, images: &[I]) -> Result<Vec<f32>> {
        let images: Vec<&RgbImage> = images.iter().map(Borrow::borrow).collect();
        let none = vec![Distortion::none(self.input_size()); images.len()];
        self.distorted_bottlenecks(&images, &none)
    }

    /// Bottlenecks of decoded RGB images, each distorted as given on its way
    /// into the network (see shaders/preprocess.wgsl).
    pub fn distorted_bottlenecks(
        &mut self,
        images: &[&RgbImage],
        distortions: &[Distortion],
    ) -> Result<Vec<f32>> {
        Ok(self.outputs(images, distortions, &[OUTPUT])?.remove(0))
    }

    /// The named tensors (e.g. "mixed8" and the bottleneck) of decoded RGB
    /// images, each distorted as given: per name, every image's values in turn.
    pub fn outputs(
        &mut self,
        images: &[&RgbImage],
        distortions: &[Distortion],
        names: &[&str],
    ) -> Result<Vec<Vec<f32>>> {
        assert_eq!(images.len(), distortions.len());
        let limit = self.gpu.max_binding_bytes();
        let mut out = vec![Vec::new(); names.len()];
        let mut start = 0;
        while start < images.len() {
            let mut end = start;
            let mut bytes = 0u64;
            while end < images.len() && end - start < self.max_batch as usize {
                let b = images[end].as_raw().len() as u64;
                if b > limit {
                    bail!(
                        "an image of {}×{} pixels is too large for this device",
                        images[end].width(),
                        images[end].height()
                    );
                }
                if bytes + b > limit {
                    break;
                }
                bytes += b;
                end += 1;
            }
            let batch = self.run_images(&images[start..end], &distortions[start..end], names)?;
            for (all, values) in out.iter_mut().zip(batch) {
                all.extend(values);
            }
            start = end;
        }
        Ok(out)
    }

    fn run_images(
        &mut self,
        images: &[&RgbImage],
        distortions: &[Distortion],
        names: &[&str],
    ) -> Result<Vec<Vec<f32>>> {
        let mut packed = Vec::new();
        let mut offsets = Vec::with_capacity(images.len());
        for img in images {
            offsets.push(packed.len() as u32);
            packed.extend_from_slice(img.as_raw());
        }
        let needed = (packed.len() as u64).next_multiple_of(4).max(4);
        if self.pixels.as_ref().is_none_or(|b| b.size() < needed) {
            self.pixels = Some(self.gpu.storage_buffer("decoded pixels", needed));
        }
        self.plan(images.len() as u32, names)?;
        let pixels = self.pixels.as_ref().expect("pixels");
        self.gpu.write_padded(pixels, 0, &packed);
        let input = self.input_size();
        let n = &self.info.normalization;
        let plan = self.current_plan();
        let preprocess: Vec<Dispatch> = images
            .iter()
            .zip(distortions)
            .zip(&offsets)
            .enumerate()
            .map(|(slot, ((img, d), &src_offset))| {
                let src = (img.height(), img.width());
                let p = preprocess_params(d, src, src_offset, slot as u32, input, n);
                self.kernels.preprocess(&self.gpu, &p, pixels, plan.input())
            })
            .collect();
        plan.run(&self.gpu, &preprocess)
    }
}

/// The preprocess kernel's parameters that apply `d` to an image of `src`
/// (height, width) at `src_offset` in the pixel buffer, into input slot `slot`.
pub fn preprocess_params(
    d: &Distortion,
    src: (u32, u32),
    src_offset: u32,
    slot: u32,
    input: (u32, u32),
    n: &Normalization,
) -> PreprocessParams {
    let b = d.brightness;
    PreprocessParams {
        src_offset,
        src_h: src.0,
        src_w: src.1,
        slot,
        out_h: input.0,
        out_w: input.1,
        resize_h: d.resize.0,
        resize_w: d.resize.1,
        crop_y: d.crop.0,
        crop_x: d.crop.1,
        flip: d.flip as u32,
        _unused: 0,
        scale: [n.scale[0] * b, n.scale[1] * b, n.scale[2] * b, 0.0],
        offset: [n.offset[0], n.offset[1], n.offset[2], 0.0],
    }
}
