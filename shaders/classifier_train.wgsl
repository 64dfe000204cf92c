// classifier_train: one linear softmax classifier (the kept head) on a batch
// of standardised bottlenecks, forward and backward, for fine-tuning (the
// head trains on standardised features, as the sweep trained it, which
// conditions its updates far better than the same head folded onto raw
// features): its probabilities
// and cross-entropy, and the gradients of the batch's mean cross-entropy with
// respect to its weights, its biases and its input rows. `scale` is 1 / the
// rows of the whole step (a step split into micro-batches sums their
// gradients). While training, dropout zeroes each input value with
// probability drop_below / 2^32 and scales the kept ones by keep_scale; the
// mask m[r, d] is a hash of (seed, r·dim + d), so every entry point (and the
// CPU reference) draws the same one. drop_below = 0, keep_scale = 1: none.
//
//   forward:         probabilities[r, c] = softmax_c(Σ_d x[r, d]·weights[d, c] + biases[c])
//                    with x[r, d] = (m[r, d]·features[r, d] − mean[d])·inv_std[d]
//                    losses[r] = −ln probabilities[r, labels[r]]
//   weight_grads:    grad_weights[d, c] += Σ_r x[r, d]·δ[r, c];  grad_biases[c] += Σ_r δ[r, c]
//   feature_grads:   grad_features[r, d] = m[r, d]·inv_std[d]·Σ_c δ[r, c]·weights[d, c]
//   with δ[r, c] = (probabilities[r, c] − [c = labels[r]])·scale
//
// Bindings:
//   0 params         (uniform)  struct Params
//   1 features       (storage)  f32 [rows, dim]
//   2 weights        (storage)  f32 [dim, classes]
//   3 biases         (storage)  f32 [classes]
//   4 labels         (storage)  u32 [rows]
//   5 probabilities  (storage)  f32 [rows, classes]   (written by forward)
//   6 losses         (storage)  f32 [rows]            (written by forward)
//   7 grad_weights   (storage)  f32 [dim, classes]    (weight_grads)
//   8 grad_biases    (storage)  f32 [classes]         (weight_grads)
//   9 grad_features  (storage)  f32 [rows, dim]       (feature_grads)
//  10 standardize    (storage)  f32 [2, dim]: mean, then inv_std
//
// forward: one invocation per row; weight_grads: one per weight and bias
// (dim·classes + classes); feature_grads: one per input value (rows·dim).
// 256-wide workgroups on a 2-D grid.

struct Params {
    rows: u32,
    dim: u32,
    classes: u32,
    scale: f32,
    drop_below: u32,
    keep_scale: f32,
    seed: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> features: array<f32>;
@group(0) @binding(2) var<storage, read> weights: array<f32>;
@group(0) @binding(3) var<storage, read> biases: array<f32>;
@group(0) @binding(4) var<storage, read> labels: array<u32>;
@group(0) @binding(5) var<storage, read_write> probabilities: array<f32>;
@group(0) @binding(6) var<storage, read_write> losses: array<f32>;
@group(0) @binding(7) var<storage, read_write> grad_weights: array<f32>;
@group(0) @binding(8) var<storage, read_write> grad_biases: array<f32>;
@group(0) @binding(9) var<storage, read_write> grad_features: array<f32>;
@group(0) @binding(10) var<storage, read> standardize: array<f32>;

fn element_index(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return gid.x + gid.y * groups.x * 256u;
}

// A 32-bit integer hash (PCG's output permutation of one LCG step).
fn hash(x: u32) -> u32 {
    let state = x * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// Dropout's factor for input value d of row r: 0 or keep_scale.
fn mask(r: u32, d: u32) -> f32 {
    let dropped = hash(p.seed ^ hash(r * p.dim + d)) < p.drop_below;
    return select(p.keep_scale, 0.0, dropped);
}

// The classifier's input d of row r: dropped out, then standardised.
fn input(r: u32, d: u32) -> f32 {
    return (features[r * p.dim + d] * mask(r, d) - standardize[d]) * standardize[p.dim + d];
}

@compute @workgroup_size(256)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let r = element_index(gid, groups);
    if (r >= p.rows) {
        return;
    }
    // The logits go into the row's probabilities, which then become them.
    let out = r * p.classes;
    var top = -3.0e38;
    for (var c = 0u; c < p.classes; c++) {
        var logit = biases[c];
        for (var d = 0u; d < p.dim; d++) {
            logit = fma(input(r, d), weights[d * p.classes + c], logit);
        }
        probabilities[out + c] = logit;
        top = max(top, logit);
    }
    var sum = 0.0;
    for (var c = 0u; c < p.classes; c++) {
        let e = exp(probabilities[out + c] - top);
        probabilities[out + c] = e;
        sum += e;
    }
    for (var c = 0u; c < p.classes; c++) {
        probabilities[out + c] /= sum;
    }
    losses[r] = -log(max(probabilities[out + labels[r]], 1.0e-30));
}

fn delta(r: u32, c: u32) -> f32 {
    return (probabilities[r * p.classes + c] - select(0.0, 1.0, labels[r] == c)) * p.scale;
}

@compute @workgroup_size(256)
fn weight_grads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = element_index(gid, groups);
    let weight_count = p.dim * p.classes;
    if (index >= weight_count + p.classes) {
        return;
    }
    if (index < weight_count) {
        let d = index / p.classes;
        let c = index % p.classes;
        var acc = 0.0;
        for (var r = 0u; r < p.rows; r++) {
            acc = fma(input(r, d), delta(r, c), acc);
        }
        grad_weights[index] += acc;
    } else {
        let c = index - weight_count;
        var acc = 0.0;
        for (var r = 0u; r < p.rows; r++) {
            acc += delta(r, c);
        }
        grad_biases[c] += acc;
    }
}

@compute @workgroup_size(256)
fn feature_grads(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = element_index(gid, groups);
    if (index >= p.rows * p.dim) {
        return;
    }
    let r = index / p.dim;
    let d = index % p.dim;
    var acc = 0.0;
    for (var c = 0u; c < p.classes; c++) {
        acc = fma(delta(r, c), weights[d * p.classes + c], acc);
    }
    grad_features[index] = acc * mask(r, d) * standardize[p.dim + d];
}
