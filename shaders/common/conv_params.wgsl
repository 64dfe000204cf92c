// conv_params: the parameter block of every conv kernel (conv2d.wgsl,
// conv2d_direct.wgsl, conv2d_subgroup.wgsl, and the gradients in
// conv2d_backward.wgsl and conv2d_backward_subgroup.wgsl), prepended to each
// by the host at build time (src/gpu/shader.rs); Rust's twin is gpu::params::ConvParams.
//
// GEMM view: m = batch·out_h·out_w output pixels. Input channels
// in_offset..in_offset+in_c of pixels in_stride channels wide; output
// channels out_offset..out_offset+out_c of pixels out_stride wide.
// Epilogue: bias, then (residual = 1) plus the residual tensor's channels
// res_offset..res_offset+out_c of pixels res_stride wide (same pixels as the
// output), or (residual = 2) plus what the output already holds, then the
// activation (see activation.wgsl).

struct Params {
    batch: u32, in_h: u32, in_w: u32, in_c: u32,
    out_h: u32, out_w: u32, out_c: u32, m: u32,
    kernel_h: u32, kernel_w: u32, stride_h: u32, stride_w: u32,
    pad_top: u32, pad_left: u32, in_stride: u32, in_offset: u32,
    out_stride: u32, out_offset: u32, activation: u32, residual: u32,
    res_stride: u32, res_offset: u32, _pad0: u32, _pad1: u32,
}
