//! The conv kernel variants the autotuner chooses among: conv2d.wgsl's
//! workgroup-memory tiles and conv2d_direct.wgsl's register tiles of several
//! sizes, and which of them can run a given conv.

use super::kernels::vec4_aligned;
use super::params::ConvParams;

/// How a conv is computed: conv2d.wgsl's workgroup-memory tiles, or
/// conv2d_direct.wgsl's register tiles of `rows` pixels × 4·`cols` channels
/// in workgroups of `group` invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ConvVariant {
    Tiled,
    Direct { rows: u32, cols: u32, group: u32 },
}

impl ConvVariant {
    /// What the autotuner tries.
    pub const CANDIDATES: [ConvVariant; 6] = [
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
    ];

    /// Whether this variant can run the conv `p` (the direct one needs the
    /// output channel count and slices aligned to 4, and its grid within the limit).
    pub fn fits(&self, p: &ConvParams, max_groups: u32) -> bool {
        match *self {
            ConvVariant::Tiled => true,
            ConvVariant::Direct { rows, .. } => {
                let residual = match p.residual {
                    0 => [0, 0],
                    _ => [p.res_stride, p.res_offset],
                };
                vec4_aligned(&[p.out_c, p.out_stride, p.out_offset])
                    && vec4_aligned(&residual)
                    && p.m.div_ceil(rows) <= max_groups
            }
        }
    }
}

/// Whether a conv's input channels can be read as vec4s.
pub(super) fn input_aligned(p: &ConvParams) -> bool {
    vec4_aligned(&[p.in_c, p.in_stride, p.in_offset])
}
