// head: the retrained classifier on bottleneck vectors — a fully connected
// layer, softmax, mean cross-entropy, and a plain SGD step — all on the GPU.
//
// Bindings (one layout shared by every entry point):
//   0 params    (uniform)  batch B, classes C, dim D, learning rate
//   1 features  (storage)  f32 [N, D]: every bottleneck, uploaded once
//   2 rows      (storage)  u32 [B]: which feature rows form this batch
//   3 labels    (storage)  u32 [N]: class of each feature row
//   4 head      (rw)       f32 [D·C + C]: weights [D, C] row-major, then biases [C]
//   5 scores    (rw)       f32 [2·B·C]: logits [B, C], then d(loss)/d(logits) [B, C]
//   6 row_stats (rw)       f32 [3·B]: per row cross-entropy, correct (0/1), predicted class
//   7 metrics   (rw)       f32 [2]: mean cross-entropy, accuracy
//
// Entry points, in step order: logits -> softmax_xent -> sgd (training) or
// metrics (evaluation).

struct Params { batch: u32, classes: u32, dim: u32, _unused: u32, learning_rate: f32, _pad0: f32, _pad1: f32, _pad2: f32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> features: array<f32>;
@group(0) @binding(2) var<storage, read> rows: array<u32>;
@group(0) @binding(3) var<storage, read> labels: array<u32>;
@group(0) @binding(4) var<storage, read_write> head: array<f32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
@group(0) @binding(6) var<storage, read_write> row_stats: array<f32>;
@group(0) @binding(7) var<storage, read_write> metrics: array<f32>;

// logits[b, c] = bias[c] + Σ_k features[rows[b], k] · weights[k, c]; one invocation per (b, c).
@compute @workgroup_size(64)
fn logits(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.batch * p.classes) { return; }
    let b = i / p.classes;
    let c = i % p.classes;
    let x = rows[b] * p.dim;
    var sum = 0.0;
    for (var k = 0u; k < p.dim; k++) {
        sum = fma(features[x + k], head[k * p.classes + c], sum);
    }
    scores[i] = sum + head[p.dim * p.classes + c];
}

// Softmax and cross-entropy of one row; writes the gradient (p − onehot) / B.
@compute @workgroup_size(64)
fn softmax_xent(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    if (b >= p.batch) { return; }
    let base = b * p.classes;
    var best = 0u;
    for (var c = 1u; c < p.classes; c++) {
        if (scores[base + c] > scores[base + best]) { best = c; }
    }
    let top = scores[base + best];
    var total = 0.0;
    for (var c = 0u; c < p.classes; c++) {
        total += exp(scores[base + c] - top);
    }
    let label = labels[rows[b]];
    let log_total = log(total);
    for (var c = 0u; c < p.classes; c++) {
        let prob = exp(scores[base + c] - top - log_total);
        let onehot = select(0.0, 1.0, c == label);
        scores[p.batch * p.classes + base + c] = (prob - onehot) / f32(p.batch);
    }
    row_stats[3u * b] = log_total - (scores[base + label] - top);
    row_stats[3u * b + 1u] = select(0.0, 1.0, best == label);
    row_stats[3u * b + 2u] = f32(best);
}

// One SGD step: weights[k, c] and biases[c] minus learning rate × gradient;
// one invocation per parameter.
@compute @workgroup_size(64)
fn sgd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 64u;
    let n_weights = p.dim * p.classes;
    if (i >= n_weights + p.classes) { return; }
    let grads = p.batch * p.classes;
    var g = 0.0;
    if (i < n_weights) {
        let k = i / p.classes;
        let c = i % p.classes;
        for (var b = 0u; b < p.batch; b++) {
            g = fma(features[rows[b] * p.dim + k], scores[grads + b * p.classes + c], g);
        }
    } else {
        let c = i - n_weights;
        for (var b = 0u; b < p.batch; b++) {
            g += scores[grads + b * p.classes + c];
        }
    }
    head[i] -= p.learning_rate * g;
}

var<workgroup> partial: array<vec2<f32>, 256>;

// Mean cross-entropy and accuracy of the batch, by one 256-wide workgroup.
@compute @workgroup_size(256)
fn metrics_of_batch(@builtin(local_invocation_index) lid: u32) {
    var acc = vec2<f32>(0.0, 0.0);
    for (var b = lid; b < p.batch; b += 256u) {
        acc += vec2<f32>(row_stats[3u * b], row_stats[3u * b + 1u]);
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            partial[lid] += partial[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        metrics[0] = partial[0].x / f32(p.batch);
        metrics[1] = partial[0].y / f32(p.batch);
    }
}
