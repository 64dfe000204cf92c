//! The parameter blocks the host writes into each kernel's uniform binding:
//! the Rust twins of the `struct Params` declarations in shaders/. Each is
//! declared through `wgsl_struct!`, which records its fields' offsets, so that
//! tests/wgsl_layout.rs can check size and offsets against the WGSL struct as
//! naga lays it out.

use bytemuck::Pod;

/// A `#[repr(C)]` struct shared with a shader, with its fields' byte offsets.
pub trait WgslStruct: Pod {
    /// The shader file (under shaders/, as compiled) declaring the struct `Params`.
    const SHADER: &'static str;
    /// (field name, byte offset), in declaration order.
    const FIELDS: &'static [(&'static str, usize)];
}

macro_rules! wgsl_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident in $shader:expr => {
            $($(#[$field_meta:meta])* pub $field:ident: $ty:ty,)*
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name {
            $($(#[$field_meta])* pub $field: $ty,)*
        }
        impl WgslStruct for $name {
            const SHADER: &'static str = $shader;
            const FIELDS: &'static [(&'static str, usize)] =
                &[$((stringify!($field), std::mem::offset_of!($name, $field)),)*];
        }
    };
}

wgsl_struct! {
    /// A conv as an implicit GEMM (shaders/common/conv_params.wgsl, used by
    /// conv2d.wgsl and conv2d_direct.wgsl).
    pub struct ConvParams in super::shader::CONV2D => {
        pub batch: u32,
        pub in_h: u32,
        pub in_w: u32,
        pub in_c: u32,
        pub out_h: u32,
        pub out_w: u32,
        pub out_c: u32,
        pub m: u32,
        pub kernel_h: u32,
        pub kernel_w: u32,
        pub stride_h: u32,
        pub stride_w: u32,
        pub pad_top: u32,
        pub pad_left: u32,
        pub in_stride: u32,
        pub in_offset: u32,
        pub out_stride: u32,
        pub out_offset: u32,
        /// 0 none, 1 ReLU, 2 ReLU6 (shaders/common/activation.wgsl).
        pub activation: u32,
        /// 1: add the residual tensor before the activation; 2: add what
        /// the output holds instead (accumulate, as gradients do).
        pub residual: u32,
        pub res_stride: u32,
        pub res_offset: u32,
        pub _pad0: u32,
        pub _pad1: u32,
    }
}

wgsl_struct! {
    /// A depthwise conv (shaders/depthwise.wgsl).
    pub struct DepthwiseParams in super::shader::DEPTHWISE => {
        pub batch: u32,
        pub in_h: u32,
        pub in_w: u32,
        pub channels: u32,
        pub out_h: u32,
        pub out_w: u32,
        pub kernel_h: u32,
        pub kernel_w: u32,
        pub stride_h: u32,
        pub stride_w: u32,
        pub pad_top: u32,
        pub pad_left: u32,
        pub in_stride: u32,
        pub in_offset: u32,
        pub out_stride: u32,
        pub out_offset: u32,
        pub activation: u32,
        pub _pad0: u32,
        pub _pad1: u32,
        pub _pad2: u32,
    }
}

wgsl_struct! {
    /// A max or average pool (shaders/pool.wgsl).
    pub struct PoolParams in super::shader::POOL => {
        pub batch: u32,
        pub in_h: u32,
        pub in_w: u32,
        pub channels: u32,
        pub out_h: u32,
        pub out_w: u32,
        pub window_h: u32,
        pub window_w: u32,
        pub stride_h: u32,
        pub stride_w: u32,
        pub pad_top: u32,
        pub pad_left: u32,
        pub in_stride: u32,
        pub in_offset: u32,
        pub out_stride: u32,
        pub out_offset: u32,
    }
}

wgsl_struct! {
    /// The mean over every pixel (shaders/global_avg_pool.wgsl).
    pub struct GlobalPoolParams in super::shader::GLOBAL_AVG_POOL => {
        pub batch: u32,
        pub height: u32,
        pub width: u32,
        pub channels: u32,
    }
}

wgsl_struct! {
    /// One image's resize, crop, flip and normalisation into an input slot
    /// (shaders/preprocess.wgsl).
    pub struct PreprocessParams in super::shader::PREPROCESS => {
        pub src_offset: u32,
        pub src_h: u32,
        pub src_w: u32,
        pub slot: u32,
        pub out_h: u32,
        pub out_w: u32,
        pub resize_h: u32,
        pub resize_w: u32,
        pub crop_y: u32,
        pub crop_x: u32,
        pub flip: u32,
        pub _unused: u32,
        pub scale: [f32; 4],
        pub offset: [f32; 4],
    }
}

wgsl_struct! {
    /// One step, evaluation or forward pass of H heads (shaders/head.wgsl).
    pub struct HeadParams in super::shader::HEAD => {
        pub batch: u32,
        pub classes: u32,
        pub dim: u32,
        pub heads: u32,
        pub optimizer: u32,
        pub training: u32,
        pub dropout_seed: u32,
        pub _pad: u32,
        pub dropout: f32,
        pub label_smoothing: f32,
        pub beta1: f32,
        pub beta2: f32,
        pub epsilon: f32,
        pub lr_scale: f32,
        pub adam_c1: f32,
        pub adam_c2: f32,
    }
}

wgsl_struct! {
    /// Statistics over selected rows, or standardisation of a row range
    /// (shaders/standardize.wgsl).
    pub struct StandardizeParams in super::shader::STANDARDIZE => {
        pub selected: u32,
        pub first_row: u32,
        pub rows: u32,
        pub dim: u32,
    }
}

wgsl_struct! {
    /// The gradient through an activation, over a channel slice of `rows`
    /// pixels (shaders/activation_backward.wgsl).
    pub struct ActivationGradParams in super::shader::ACTIVATION_BACKWARD => {
        pub rows: u32,
        pub channels: u32,
        pub stride: u32,
        pub offset: u32,
        /// 0 none, 1 ReLU, 2 ReLU6 (shaders/common/activation.wgsl).
        pub activation: u32,
        pub _pad0: u32,
        pub _pad1: u32,
        pub _pad2: u32,
    }
}

wgsl_struct! {
    /// One optimiser update of a parameter tensor (shaders/optimizer.wgsl).
    pub struct OptimizerParams in super::shader::OPTIMIZER => {
        pub count: u32,
        /// 0 SGD with momentum, 1 Adam.
        pub rule: u32,
        pub step_size: f32,
        pub decay: f32,
        pub beta1: f32,
        pub beta2: f32,
        pub epsilon: f32,
        pub _pad: u32,
    }
}

wgsl_struct! {
    /// One classifier's forward and backward pass over a batch of rows, with
    /// dropout on its input while training (shaders/classifier_train.wgsl).
    pub struct ClassifierTrainParams in super::shader::CLASSIFIER_TRAIN => {
        pub rows: u32,
        pub dim: u32,
        pub classes: u32,
        /// 1 / the rows of the whole step.
        pub scale: f32,
        /// Dropout: an input value is dropped when its hash is below this
        /// (probability drop_below / 2^32; 0 while evaluating).
        pub drop_below: u32,
        /// Dropout: the kept values' factor, 1 / (1 − probability).
        pub keep_scale: f32,
        /// Dropout: the mask's seed, new for every pass.
        pub seed: u32,
        pub _pad: u32,
    }
}

impl ClassifierTrainParams {
    /// A pass over `rows` rows of `dim` values into `classes` classes, its
    /// gradients scaled by `scale`, without dropout.
    pub fn new(rows: u32, dim: u32, classes: u32, scale: f32) -> Self {
        ClassifierTrainParams {
            rows,
            dim,
            classes,
            scale,
            keep_scale: 1.0,
            ..Default::default()
        }
    }

    /// The same pass dropping each input value with probability `rate`
    /// (0 ≤ rate < 1), with the mask drawn from `seed`.
    pub fn with_dropout(self, rate: f32, seed: u32) -> Self {
        ClassifierTrainParams {
            drop_below: (rate as f64 * 4294967296.0).min(u32::MAX as f64) as u32,
            keep_scale: 1.0 / (1.0 - rate),
            seed,
            ..self
        }
    }
}
