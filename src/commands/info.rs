//! `retrain info`: the adapter, the limits and features the engine uses, and the model.

use super::open_engine;
use crate::cli::ModelArgs;
use anyhow::Result;

pub fn run(args: &ModelArgs) -> Result<()> {
    let engine = open_engine(args)?;
    let gpu = &engine.gpu;
    let i = &gpu.info;
    let l = &gpu.limits;
    println!("adapter:   {} ({:?})", i.name, i.device_type);
    println!("backend:   {:?}", i.backend);
    println!("driver:    {} {}", i.driver, i.driver_info);
    println!("limits:");
    println!(
        "  max storage binding:        {} MiB",
        l.max_storage_buffer_binding_size >> 20
    );
    println!(
        "  max buffer:                 {} MiB",
        l.max_buffer_size >> 20
    );
    println!(
        "  max workgroups / dimension: {}",
        l.max_compute_workgroups_per_dimension
    );
    println!(
        "  max invocations / group:    {}",
        l.max_compute_invocations_per_workgroup
    );
    println!(
        "  workgroup memory:           {} KiB",
        l.max_compute_workgroup_storage_size >> 10
    );
    println!("features:");
    println!(
        "  timestamp queries:          {}",
        gpu.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    );
    let m = &engine.info;
    let (h, w) = engine.input_size();
    println!("model:");
    println!("  architecture:  {}", m.architecture);
    println!("  source:        {}", m.source);
    println!(
        "  input size:    {}x{} (running at {h}x{w})",
        m.input_height, m.input_width
    );
    println!(
        "  normalisation: {} ({})",
        m.normalization.name,
        m.normalization.describe()
    );
    println!(
        "  bottleneck:    {} values ({})",
        m.bottleneck_size, m.bottleneck_layer
    );
    let padding = match m.pytorch_padding {
        true => "PyTorch's (average pools count it, convs pad symmetrically)",
        false => "TensorFlow's (left out of average pools, SAME convs pad after)",
    };
    println!("  padding:       {padding}");
    println!("  weights dtype: {}", m.dtype);
    println!("  fingerprint:   {}", m.fingerprint);
    println!("  max batch:     {} images at {h}x{w}", engine.max_batch());
    let tuned = match engine.is_tuned() {
        true => format!(
            "tuned for this device; {} of {} groups of sibling 1x1 convs merged",
            engine.merged_groups(),
            engine.sibling_groups()
        ),
        false => "not tuned yet (the first retrain, features or classify run tunes them)".into(),
    };
    println!("  conv kernels:  {tuned}");
    Ok(())
}
