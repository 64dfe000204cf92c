//! Every parameter block the host writes (gpu/params.rs) has the size and
//! field offsets of the `struct Params` its shader declares, as naga (wgpu's
//! WGSL front end) lays it out.

use retrain::gpu::params::*;
use retrain::gpu::shader;

/// (member name, offset) of `struct Params` in `source`, and its size.
fn wgsl_layout(source: &str) -> (Vec<(String, usize)>, usize) {
    let module = naga::front::wgsl::parse_str(source).expect("the shader parses");
    let (_, ty) = module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some("Params"))
        .expect("the shader declares struct Params");
    let naga::TypeInner::Struct { members, span } = &ty.inner else {
        panic!("Params is not a struct");
    };
    let fields = members
        .iter()
        .map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize))
        .collect();
    (fields, *span as usize)
}

fn rust_layout<T: WgslStruct>() -> (Vec<(String, usize)>, usize) {
    let fields = T::FIELDS.iter().map(|&(n, o)| (n.to_string(), o)).collect();
    (fields, std::mem::size_of::<T>())
}

fn check<T: WgslStruct>(source: &str) {
    let name = std::any::type_name::<T>();
    let (wgsl_fields, wgsl_size) = wgsl_layout(source);
    let (rust_fields, rust_size) = rust_layout::<T>();
    assert_eq!(rust_fields, wgsl_fields, "{name}: fields and offsets");
    assert_eq!(rust_size, wgsl_size, "{name}: size");
}

#[test]
fn parameter_blocks_match_their_shaders() {
    check::<ConvParams>(ConvParams::SHADER);
    check::<ConvParams>(shader::CONV2D_DIRECT);
    check::<ConvParams>(shader::CONV2D_SUBGROUP);
    check::<DepthwiseParams>(DepthwiseParams::SHADER);
    check::<PoolParams>(PoolParams::SHADER);
    check::<GlobalPoolParams>(GlobalPoolParams::SHADER);
    check::<PreprocessParams>(PreprocessParams::SHADER);
    check::<HeadParams>(HeadParams::SHADER);
    check::<StandardizeParams>(StandardizeParams::SHADER);
    check::<ConvParams>(shader::CONV2D_BACKWARD);
    check::<ConvParams>(shader::CONV2D_BACKWARD_SUBGROUP);
    check::<PoolParams>(shader::POOL_BACKWARD);
    check::<GlobalPoolParams>(shader::GLOBAL_AVG_POOL_BACKWARD);
    check::<ActivationGradParams>(ActivationGradParams::SHADER);
    check::<OptimizerParams>(OptimizerParams::SHADER);
    check::<ClassifierTrainParams>(ClassifierTrainParams::SHADER);
}

#[test]
fn a_drifted_declaration_is_caught() {
    // The conv block with two fields swapped: same size, other offsets.
    let drifted = shader::CONV2D.replacen("in_h: u32, in_w: u32", "in_w: u32, in_h: u32", 1);
    let (wgsl, _) = wgsl_layout(&drifted);
    assert_ne!(rust_layout::<ConvParams>().0, wgsl);
    // One field more: another size.
    let longer = shader::CONV2D.replacen(
        "_pad0: u32, _pad1: u32,",
        "_pad0: u32, _pad1: u32, extra: u32,",
        1,
    );
    assert_ne!(rust_layout::<ConvParams>().1, wgsl_layout(&longer).1);
}
