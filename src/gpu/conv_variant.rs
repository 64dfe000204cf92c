//! The conv kernel variants the autotuner chooses among: conv2d.wgsl's
//! workgroup-memory tiles, conv2d_direct.wgsl's register tiles of several
//! sizes, conv2d_subgroup.wgsl's register tiles with weights shared through
//! the subgroup, and which of them can run a given conv on a given device.

use super::kernels::{fold, vec4_aligned, CONV_TILE};
use super::params::ConvParams;
use super::Gpu;

/// How a conv is computed: conv2d.wgsl's workgroup-memory tiles, or register
/// tiles of `rows` pixels × 4·`cols` channels in workgroups of `group`
/// invocations — conv2d_direct.wgsl's (neighbouring invocations take
/// neighbouring channels) or conv2d_subgroup.wgsl's (neighbouring invocations
/// take neighbouring pixels and share the weights).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ConvVariant {
    Tiled,
    Direct { rows: u32, cols: u32, group: u32 },
    Subgroup { rows: u32, cols: u32, group: u32 },
}

impl ConvVariant {
    /// What the autotuner tries.
    pub const CANDIDATES: [ConvVariant; 9] = [
        ConvVariant::Tiled,
        ConvVariant::Direct {
            rows: 4,
            cols: 1,
            group: 64,
        },
        ConvVariant::Direct {
            rows: 4,
            cols: 2,
            group: 64,
        },
        ConvVariant::Direct {
            rows: 8,
            cols: 2,
            group: 16,
        },
        ConvVariant::Direct {
            rows: 8,
            cols: 4,
            group: 16,
        },
        ConvVariant::Direct {
            rows: 16,
            cols: 2,
            group: 16,
        },
        ConvVariant::Subgroup {
            rows: 4,
            cols: 8,
            group: 8,
        },
        ConvVariant::Subgroup {
            rows: 4,
            cols: 16,
            group: 8,
        },
        ConvVariant::Subgroup {
            rows: 4,
            cols: 32,
            group: 8,
        },
    ];

    /// Whether this variant can run the conv `p` on `gpu` (the register
    /// tiles need the output channel count and slices aligned to 4 and their
    /// grid, pixel groups folded, within the limit; the subgroup tiles also
    /// workgroups made of whole subgroups of 8, which for their 8 invocations
    /// means subgroups exactly 8 wide).
    pub fn fits(&self, p: &ConvParams, gpu: &Gpu) -> bool {
        let residual = match p.residual {
            1 => [p.res_stride, p.res_offset],
            _ => [0, 0],
        };
        let aligned =
            vec4_aligned(&[p.out_c, p.out_stride, p.out_offset]) && vec4_aligned(&residual);
        let max_groups = gpu.limits.max_compute_workgroups_per_dimension;
        let grid_fits = self.grid(p, max_groups).iter().all(|&g| g <= max_groups);
        match *self {
            ConvVariant::Tiled => true,
            ConvVariant::Direct { .. } => aligned && grid_fits,
            ConvVariant::Subgroup { group, .. } => {
                aligned && grid_fits && gpu.whole_subgroups_of_8(group)
            }
        }
    }

    /// The workgroups this variant dispatches for conv `p`. The register
    /// tiles' pixel groups fold into z past `max_groups` workgroups (a large
    /// batch), as the shaders expect, so that they never fall back to the
    /// workgroup-memory tiles for want of grid.
    pub fn grid(&self, p: &ConvParams, max_groups: u32) -> [u32; 3] {
        let quads = p.out_c / 4;
        match *self {
            ConvVariant::Tiled => [p.m.div_ceil(CONV_TILE), p.out_c.div_ceil(CONV_TILE), 1],
            ConvVariant::Direct { rows, cols, group } => {
                let [pixels, folds] = fold(p.m.div_ceil(rows) as u64, max_groups);
                [quads.div_ceil(cols).div_ceil(group), pixels, folds]
            }
            ConvVariant::Subgroup { rows, cols, group } => {
                let [pixels, folds] = fold(p.m.div_ceil(rows * group) as u64, max_groups);
                [pixels, quads.div_ceil(cols), folds]
            }
        }
    }
}

/// Whether a conv's input channels can be read as vec4s.
pub(super) fn input_aligned(p: &ConvParams) -> bool {
    vec4_aligned(&[p.in_c, p.in_stride, p.in_offset])
}
