//! The trainable blocks' parameters on the GPU — each conv's weights and bias
//! (batch norm folded, in f32 whatever the base file stores) and the kept
//! classifier's, on standardised features as the sweep trained it — with
//! their accumulated gradients and optimiser state, and the update that
//! applies one step (shaders/optimizer.wgsl).

use super::blocks::TrainableBlocks;
use super::settings::{FineTuneSettings, Rule};
use crate::gpu::backward::{optimizer_uniform, padded, BackwardKernels, OptimizerBuffers};
use crate::gpu::kernels::{submit, Dispatch, Kernels};
use crate::gpu::params::OptimizerParams;
use crate::gpu::tuning::Tuning;
use crate::gpu::Gpu;
use crate::model::weights::{Tensor, WeightFile};
use crate::train::standardize::{Standardization, StandardizedHead};
use anyhow::Result;
use std::collections::HashMap;

/// The classifier's tensors among the parameters.
pub const HEAD_WEIGHTS: &str = "final_weights";
pub const HEAD_BIASES: &str = "final_biases";

/// One parameter tensor with its gradient and optimiser state.
pub struct Parameter {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: wgpu::Buffer,
    pub gradients: wgpu::Buffer,
    /// A conv weight's values as [kh, kw, out, in], remade by each backward pass.
    pub transposed: wgpu::Buffer,
    first: wgpu::Buffer,
    second: wgpu::Buffer,
    uniform: wgpu::Buffer,
    /// Weights decay; biases do not.
    decays: bool,
}

impl Parameter {
    fn new(gpu: &Gpu, name: &str, shape: &[usize], values: &[f32], decays: bool) -> Self {
        let mut values = values.to_vec();
        values.resize(padded(values.len()), 0.0);
        let bytes = values.len() as u64 * 4;
        Parameter {
            name: name.to_string(),
            shape: shape.to_vec(),
            values: gpu.storage_buffer_with(name, bytemuck::cast_slice(&values)),
            gradients: gpu.storage_buffer("gradients", bytes),
            transposed: gpu.storage_buffer("transposed", if shape.len() == 4 { bytes } else { 4 }),
            first: gpu.storage_buffer("first moment", bytes),
            second: gpu.storage_buffer("second moment", bytes),
            uniform: optimizer_uniform(gpu),
            decays,
        }
    }

    fn count(&self) -> usize {
        self.shape.iter().product()
    }
}

pub struct TrainableNetwork {
    pub blocks: TrainableBlocks,
    pub classes: u32,
    /// The classifier's input standardisation (fixed), and the same as
    /// f32 [2, dim] on the GPU: mean, then inv_std.
    standardization: Standardization,
    pub standardize: wgpu::Buffer,
    pub kernels: Kernels,
    pub backward: BackwardKernels,
    pub tuning: Tuning,
    parameters: Vec<Parameter>,
    by_name: HashMap<String, usize>,
    updates: Vec<Dispatch>,
    settings: FineTuneSettings,
    /// Optimiser steps taken.
    step: u32,
}

impl TrainableNetwork {
    /// The blocks' parameters from `file` and the classifier's, uploaded as f32.
    pub fn new(
        gpu: &Gpu,
        blocks: TrainableBlocks,
        file: &WeightFile,
        head: &StandardizedHead,
        settings: &FineTuneSettings,
    ) -> Result<Self> {
        let (weights, biases) = (&head.weights[..], &head.biases[..]);
        let mut parameters = Vec::new();
        for layer in blocks.layers() {
            let (w, b) = (layer.weight_name(), layer.bias_name());
            let values = file.tensor_f32(&w, &layer.weight_shape)?;
            parameters.push(Parameter::new(gpu, &w, &layer.weight_shape, &values, true));
            let values = file.tensor_f32(&b, &[layer.outputs])?;
            parameters.push(Parameter::new(gpu, &b, &[layer.outputs], &values, false));
        }
        let classes = biases.len();
        let dim = weights.len() / classes;
        parameters.push(Parameter::new(
            gpu,
            HEAD_WEIGHTS,
            &[dim, classes],
            weights,
            true,
        ));
        parameters.push(Parameter::new(gpu, HEAD_BIASES, &[classes], biases, false));
        let backward = BackwardKernels::new(gpu);
        let updates = parameters
            .iter()
            .map(|p| {
                let buffers = OptimizerBuffers {
                    parameters: &p.values,
                    gradients: &p.gradients,
                    first: &p.first,
                    second: &p.second,
                };
                backward.optimizer(gpu, &p.uniform, p.count() as u64, &buffers)
            })
            .collect();
        let by_name = (parameters.iter().enumerate())
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        let s = &head.standardization;
        let standardize = [&s.mean[..], &s.inv_std[..]].concat();
        Ok(TrainableNetwork {
            blocks,
            classes: classes as u32,
            standardization: head.standardization.clone(),
            standardize: gpu.storage_buffer_with("standardize", bytemuck::cast_slice(&standardize)),
            kernels: Kernels::new(gpu, false),
            backward,
            tuning: Tuning::load(gpu),
            parameters,
            by_name,
            updates,
            settings: settings.clone(),
            step: 0,
        })
    }

    /// The parameter called `name` (a conv's "NAME.weight" or "NAME.bias", or
    /// the classifier's HEAD_WEIGHTS and HEAD_BIASES).
    pub fn parameter(&self, name: &str) -> &Parameter {
        &self.parameters[self.by_name[name]]
    }

    /// Values in the trainable blocks and the classifier.
    pub fn parameter_count(&self) -> usize {
        self.parameters.iter().map(Parameter::count).sum()
    }

    /// Applies the accumulated gradients at learning rate `lr` and clears them.
    pub fn update(&mut self, gpu: &Gpu, lr: f32) {
        self.step += 1;
        let s = &self.settings;
        let (rule, step_size) = match s.rule {
            Rule::Sgd { .. } => (0, lr),
            Rule::Adam => {
                let t = self.step as i32;
                let correction = (1.0 - s.beta2().powi(t)).sqrt() / (1.0 - s.beta1().powi(t));
                (1, lr * correction)
            }
        };
        for p in &self.parameters {
            let params = OptimizerParams {
                count: p.count() as u32,
                rule,
                step_size,
                decay: if p.decays { lr * s.weight_decay } else { 0.0 },
                beta1: s.beta1(),
                beta2: s.beta2(),
                epsilon: 1e-7,
                _pad: 0,
            };
            gpu.queue
                .write_buffer(&p.uniform, 0, bytemuck::bytes_of(&params));
        }
        let updates: Vec<&Dispatch> = self.updates.iter().collect();
        submit(gpu, &updates);
    }

    /// Every parameter's current values (the blocks' under their weight-file
    /// names, the classifier's as HEAD_WEIGHTS and HEAD_BIASES, folded for
    /// raw features as classify applies it).
    pub fn download(&self, gpu: &Gpu) -> Result<Vec<Tensor>> {
        let mut tensors = (self.parameters.iter())
            .map(|p| {
                let bytes = gpu.read_buffer(&p.values, p.count() as u64 * 4)?;
                Ok(Tensor {
                    name: p.name.clone(),
                    shape: p.shape.clone(),
                    data: bytemuck::pod_collect_to_vec(&bytes),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let at = |name: &str| tensors.iter().position(|t| t.name == name);
        let (w, b) = (
            at(HEAD_WEIGHTS).expect("head"),
            at(HEAD_BIASES).expect("head"),
        );
        let (weights, biases) = (self.standardization).fold(&tensors[w].data, &tensors[b].data);
        (tensors[w].data, tensors[b].data) = (weights, biases);
        Ok(tensors)
    }
}
