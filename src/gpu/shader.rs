//! WGSL sources as the pipelines compile them: each file with the shared
//! declarations it uses (shaders/common/) prepended at build time, and the
//! specialisations the host makes (a marked block swapped, a constant set),
//! which fail loudly when the text they expect has drifted.

macro_rules! shader {
    ($($file:literal),+) => {
        concat!($(include_str!(concat!("../../shaders/", $file))),+)
    };
}

pub const CONV2D: &str = shader!(
    "common/conv_params.wgsl",
    "common/activation.wgsl",
    "conv2d.wgsl"
);
pub const CONV2D_DIRECT: &str = shader!(
    "common/conv_params.wgsl",
    "common/activation.wgsl",
    "common/texels.wgsl",
    "common/conv_register_tiles.wgsl",
    "conv2d_direct.wgsl"
);
pub const CONV2D_SUBGROUP: &str = shader!(
    "common/conv_params.wgsl",
    "common/activation.wgsl",
    "common/texels.wgsl",
    "common/conv_register_tiles.wgsl",
    "common/subgroup_rows.wgsl",
    "conv2d_subgroup.wgsl"
);
pub const DEPTHWISE: &str = shader!("common/activation.wgsl", "depthwise.wgsl");
pub const POOL: &str = shader!("common/texels.wgsl", "pool.wgsl");
pub const GLOBAL_AVG_POOL: &str = shader!("global_avg_pool.wgsl");
pub const PREPROCESS: &str = shader!("preprocess.wgsl");
pub const HEAD: &str = shader!("head.wgsl");
pub const CONV2D_BACKWARD: &str = shader!(
    "common/conv_params.wgsl",
    "common/input_grad_taps.wgsl",
    "conv2d_backward.wgsl"
);
pub const CONV2D_BACKWARD_SUBGROUP: &str = shader!(
    "common/conv_params.wgsl",
    "common/input_grad_taps.wgsl",
    "common/subgroup_rows.wgsl",
    "common/texels.wgsl",
    "conv2d_backward_subgroup.wgsl"
);
pub const ACTIVATION_BACKWARD: &str = shader!("activation_backward.wgsl");
pub const POOL_BACKWARD: &str = shader!("pool_backward.wgsl");
pub const GLOBAL_AVG_POOL_BACKWARD: &str = shader!("global_avg_pool_backward.wgsl");
pub const OPTIMIZER: &str = shader!("optimizer.wgsl");
pub const CLASSIFIER_TRAIN: &str = shader!("classifier_train.wgsl");
pub const STANDARDIZE: &str = shader!("standardize.wgsl");

/// `source` with the block between the lines `// NAME BEGIN` and `// NAME END`
/// replaced. Panics when the markers are missing: the shader and the host
/// disagree, and running the unspecialised kernel would compute the wrong thing.
pub fn swap_block(source: &str, name: &str, replacement: &str) -> String {
    let begin = format!("// {name} BEGIN");
    let end = format!("// {name} END");
    let (Some(start), Some(stop)) = (source.find(&begin), source.find(&end)) else {
        panic!("shader specialisation: no block marked {name} BEGIN/END");
    };
    assert!(
        start < stop,
        "shader specialisation: {name} END before BEGIN"
    );
    let mut out = source.to_string();
    out.replace_range(start..stop, replacement);
    out
}

/// `source` with the declaration `const NAME: u32 = …u;` set to `value`.
/// Panics when there is no such declaration (see `swap_block`).
pub fn set_const(source: &str, name: &str, value: u32) -> String {
    let prefix = format!("const {name}: u32 = ");
    let start = source
        .find(&prefix)
        .unwrap_or_else(|| panic!("shader specialisation: no `{prefix}…u;` declaration"));
    let end = start
        + source[start..]
            .find(';')
            .unwrap_or_else(|| panic!("shader specialisation: `{prefix}` has no `;`"));
    let mut out = source.to_string();
    out.replace_range(start..end, &format!("{prefix}{value}u"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_are_set_and_blocks_swapped() {
        let src = "const ROWS: u32 = 4u;\n// X BEGIN\nold\n// X END\nrest";
        let out = set_const(src, "ROWS", 16);
        assert!(out.starts_with("const ROWS: u32 = 16u;\n"));
        let out = swap_block(&out, "X", "new\n");
        assert!(out.contains("new\n// X END") && !out.contains("old"));
    }

    #[test]
    #[should_panic(expected = "no block marked WEIGHTS")]
    fn a_missing_block_fails_loudly() {
        swap_block("fn main() {}", "WEIGHTS", "");
    }

    #[test]
    #[should_panic(expected = "no `const COLS: u32 = …u;` declaration")]
    fn a_missing_constant_fails_loudly() {
        set_const("const ROWS: u32 = 4u;", "COLS", 2);
    }
}
