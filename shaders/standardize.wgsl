// standardize: per-dimension statistics of the training bottlenecks, and
// their standardisation x' = (x − mean) · inv_std, applied in place to every row.
//
// Bindings:
//   0 p         (uniform)  selected rows S, first row and count of rows to standardise, dim D
//   1 selected  (storage)  u32 [S]: the rows the statistics are taken over
//   2 features  (rw)       f32 [N, D]
//   3 stats     (rw)       f32 [2, D]: `moments` writes mean, variance;
//                          `standardize` reads mean, inv_std (set by the host in between)
//
// `moments`: one invocation per dimension, two passes (mean, then squared
// deviations) for accuracy. `standardize`: one invocation per element of rows
// [first_row, first_row + rows), 2-D grid.

struct Params { selected: u32, first_row: u32, rows: u32, dim: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> selected: array<u32>;
@group(0) @binding(2) var<storage, read_write> features: array<f32>;
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;

@compute @workgroup_size(64)
fn moments(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k = gid.x;
    if (k >= p.dim) { return; }
    var sum = 0.0;
    for (var s = 0u; s < p.selected; s++) {
        sum += features[selected[s] * p.dim + k];
    }
    let mean = sum / f32(p.selected);
    var squares = 0.0;
    for (var s = 0u; s < p.selected; s++) {
        let d = features[selected[s] * p.dim + k] - mean;
        squares = fma(d, d, squares);
    }
    stats[k] = mean;
    stats[p.dim + k] = squares / f32(p.selected);
}

@compute @workgroup_size(64)
fn standardize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 64u;
    if (i >= p.rows * p.dim) { return; }
    let k = i % p.dim;
    let at = p.first_row * p.dim + i;
    features[at] = (features[at] - stats[k]) * stats[p.dim + k];
}
