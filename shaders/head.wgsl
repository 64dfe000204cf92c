// head: H classifier heads trained side by side on the same batch — for each
// head a fully connected layer, softmax, mean cross-entropy (with optional
// label smoothing and dropout on the bottleneck) and one optimiser step
// (SGD, momentum or Adam, with L2 weight decay). Every head reads the same
// bottleneck rows, so a step reads the batch's features once for all heads.
//
// Bindings (one layout shared by every entry point):
//   0 p         (uniform)  batch B, classes C, dim D, heads H, optimiser, training flag, ...
//   1 features  (storage)  f32 [N, D]: every bottleneck, uploaded once
//   2 rows      (storage)  u32 [B]: which feature rows form this batch
//   3 labels    (storage)  u32 [N]: class of each feature row
//   4 hyper     (storage)  f32 [H, 4]: learning rate, L2 penalty, active (1/0), unused
//   5 head      (rw)       f32 [H, P], P = D·C + C: weights [D, C] row-major, then biases [C]
//   6 moments   (rw)       f32 [M, H, P]: first moments (momentum, Adam), then second
//                          (Adam); M = 0 (SGD: unused), 1 or 2
//   7 scores    (rw)       f32 [2, H, B, C]: logits, then d(loss)/d(logits)
//   8 stats     (rw)       f32 [H, B, 3] per row: cross-entropy, correct (0/1), predicted
//                          class; then f32 [H, 2] per head: mean cross-entropy, accuracy
//
// Entry points, in step order: logits -> softmax_xent -> update (training)
// or metrics_of_batch (evaluation). Large grids are 2-D: index = x + y·(groups.x·64).

struct Params {
    batch: u32, classes: u32, dim: u32, heads: u32,
    optimizer: u32,       // 0 SGD, 1 momentum, 2 Adam
    training: u32,        // 1: apply dropout and label smoothing
    dropout_seed: u32, _pad: u32,
    dropout: f32, label_smoothing: f32,
    beta1: f32,           // momentum coefficient, or Adam's β1
    beta2: f32,
    epsilon: f32,
    lr_scale: f32,        // the learning-rate schedule's factor for this step
    adam_c1: f32,         // 1 / (1 − β1^t)
    adam_c2: f32,         // 1 / (1 − β2^t)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> features: array<f32>;
@group(0) @binding(2) var<storage, read> rows: array<u32>;
@group(0) @binding(3) var<storage, read> labels: array<u32>;
@group(0) @binding(4) var<storage, read> hyper: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> head: array<f32>;
@group(0) @binding(6) var<storage, read_write> moments: array<f32>;
@group(0) @binding(7) var<storage, read_write> scores: array<f32>;
@group(0) @binding(8) var<storage, read_write> stats: array<f32>;

fn flat_index(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return gid.x + gid.y * groups.x * 64u;
}

// PCG hash (Jarzynski & Olano); src/cpu_reference.rs has the same function.
fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

fn dropping() -> bool {
    return p.training == 1u && p.dropout > 0.0;
}

// Inverted dropout's factor for value k of batch row b: 0, or 1 / (1 − rate).
fn kept(b: u32, k: u32) -> f32 {
    let u = f32(pcg(p.dropout_seed ^ pcg(b * p.dim + k)) >> 8u) / 16777216.0;
    return select(0.0, 1.0 / (1.0 - p.dropout), u >= p.dropout);
}

fn params_per_head() -> u32 {
    return p.dim * p.classes + p.classes;
}

// Register tiles: logits computes ROW_TILE rows × CLASS_TILE classes per
// invocation, update ROW_TILE inputs × CLASS_TILE classes of parameters, so
// each value loaded is used several times. The host substitutes CLASS_TILE
// for the number of classes (2 for two classes, where 8 would waste lanes).
const ROW_TILE: u32 = 8u;
const CLASS_TILE: u32 = 8u;

fn tiles(n: u32, tile: u32) -> u32 {
    return (n + tile - 1u) / tile;
}

// Bottleneck value k of batch row b, times its dropout factor when training with dropout.
fn input_value(b: u32, k: u32, drop: bool) -> f32 {
    let x = features[rows[b] * p.dim + k];
    return select(x, x * kept(b, k), drop);
}

// logits[h, b, c] = bias[c] + Σ_k x[b, k] · weights[k, c]; one invocation per
// head and tile of rows × classes (grid: heads · tiles(B) · tiles(C)).
@compute @workgroup_size(64)
fn logits(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    let row_tiles = tiles(p.batch, ROW_TILE);
    let class_tiles = tiles(p.classes, CLASS_TILE);
    if (i >= p.heads * row_tiles * class_tiles) { return; }
    let h = i / (row_tiles * class_tiles);
    let b0 = (i / class_tiles) % row_tiles * ROW_TILE;
    let c0 = i % class_tiles * CLASS_TILE;
    let w = h * params_per_head();
    // Rows and classes past the end repeat the last one (computed, not written).
    var b: array<u32, ROW_TILE>;
    for (var t = 0u; t < ROW_TILE; t++) {
        b[t] = min(b0 + t, p.batch - 1u);
    }
    var c: array<u32, CLASS_TILE>;
    for (var u = 0u; u < CLASS_TILE; u++) {
        c[u] = min(c0 + u, p.classes - 1u);
    }
    let drop = dropping();
    var acc: array<array<f32, CLASS_TILE>, ROW_TILE>;
    for (var k = 0u; k < p.dim; k++) {
        var x: array<f32, ROW_TILE>;
        for (var t = 0u; t < ROW_TILE; t++) {
            x[t] = input_value(b[t], k, drop);
        }
        for (var u = 0u; u < CLASS_TILE; u++) {
            let weight = head[w + k * p.classes + c[u]];
            for (var t = 0u; t < ROW_TILE; t++) {
                acc[t][u] = fma(x[t], weight, acc[t][u]);
            }
        }
    }
    for (var t = 0u; t < ROW_TILE && b0 + t < p.batch; t++) {
        for (var u = 0u; u < CLASS_TILE && c0 + u < p.classes; u++) {
            let bias = head[w + p.dim * p.classes + c[u]];
            scores[(h * p.batch + b[t]) * p.classes + c[u]] = acc[t][u] + bias;
        }
    }
}

// Softmax and cross-entropy of one (head, row) against the (smoothed) label;
// writes the gradient (softmax − target) / B.
@compute @workgroup_size(64)
fn softmax_xent(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let hb = flat_index(gid, groups);
    if (hb >= p.heads * p.batch) { return; }
    let b = hb % p.batch;
    let base = hb * p.classes;
    let grads = p.heads * p.batch * p.classes;
    var best = 0u;
    for (var c = 1u; c < p.classes; c++) {
        if (scores[base + c] > scores[base + best]) { best = c; }
    }
    let top = scores[base + best];
    var total = 0.0;
    for (var c = 0u; c < p.classes; c++) {
        total += exp(scores[base + c] - top);
    }
    let log_total = log(total);
    let label = labels[rows[b]];
    let smoothing = select(0.0, p.label_smoothing, p.training == 1u);
    var loss = 0.0;
    for (var c = 0u; c < p.classes; c++) {
        let log_prob = scores[base + c] - top - log_total;
        let wanted = select(0.0, 1.0 - smoothing, c == label) + smoothing / f32(p.classes);
        loss -= wanted * log_prob;
        scores[grads + base + c] = (exp(log_prob) - wanted) / f32(p.batch);
    }
    stats[3u * hb] = loss;
    stats[3u * hb + 1u] = select(0.0, 1.0, best == label);
    stats[3u * hb + 2u] = f32(best);
}

// The parameters of a head as a [D + 1, C] matrix: weights [D, C], then the
// biases as row D, whose "input" is 1 (no dropout, no L2 penalty).
fn update_input(b: u32, k: u32, drop: bool) -> f32 {
    return select(input_value(b, min(k, p.dim - 1u), drop), 1.0, k == p.dim);
}

// One optimiser step for a tile of inputs × classes of head h (grid: heads ·
// tiles(D + 1) · tiles(C)). The gradient of parameter [k, c] is
// Σ_b x[b, k] · d(loss)/d(logit[b, c]), plus the L2 penalty's λ·w on weights.
@compute @workgroup_size(64)
fn update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    let input_tiles = tiles(p.dim + 1u, ROW_TILE);
    let class_tiles = tiles(p.classes, CLASS_TILE);
    if (i >= p.heads * input_tiles * class_tiles) { return; }
    let h = i / (input_tiles * class_tiles);
    if (hyper[h].z == 0.0) { return; }
    let k0 = (i / class_tiles) % input_tiles * ROW_TILE;
    let c0 = i % class_tiles * CLASS_TILE;
    var k: array<u32, ROW_TILE>;
    for (var t = 0u; t < ROW_TILE; t++) {
        k[t] = min(k0 + t, p.dim);
    }
    var c: array<u32, CLASS_TILE>;
    for (var u = 0u; u < CLASS_TILE; u++) {
        c[u] = min(c0 + u, p.classes - 1u);
    }
    let grads = (p.heads + h) * p.batch * p.classes;
    let drop = dropping();
    var g: array<array<f32, CLASS_TILE>, ROW_TILE>;
    for (var b = 0u; b < p.batch; b++) {
        var x: array<f32, ROW_TILE>;
        for (var t = 0u; t < ROW_TILE; t++) {
            x[t] = update_input(b, k[t], drop);
        }
        for (var u = 0u; u < CLASS_TILE; u++) {
            let d = scores[grads + b * p.classes + c[u]];
            for (var t = 0u; t < ROW_TILE; t++) {
                g[t][u] = fma(x[t], d, g[t][u]);
            }
        }
    }
    for (var t = 0u; t < ROW_TILE && k0 + t <= p.dim; t++) {
        for (var u = 0u; u < CLASS_TILE && c0 + u < p.classes; u++) {
            step(h, k[t] * p.classes + c[u], g[t][u], k[t] < p.dim);
        }
    }
}

// Applies gradient g (without L2) to parameter i of head h.
fn step(h: u32, i: u32, gradient: f32, penalised: bool) {
    let hp = hyper[h];
    let hi = h * params_per_head() + i;
    let g = select(gradient, fma(hp.y, head[hi], gradient), penalised);
    let rate = hp.x * p.lr_scale;
    let second = p.heads * params_per_head() + hi;
    switch p.optimizer {
        case 1u: {
            let m = fma(p.beta1, moments[hi], g);
            moments[hi] = m;
            head[hi] -= rate * m;
        }
        case 2u: {
            let m = mix(g, moments[hi], p.beta1);
            let v = mix(g * g, moments[second], p.beta2);
            moments[hi] = m;
            moments[second] = v;
            head[hi] -= rate * (m * p.adam_c1) / (sqrt(v * p.adam_c2) + p.epsilon);
        }
        default: {
            head[hi] -= rate * g;
        }
    }
}

var<workgroup> partial: array<vec2<f32>, 256>;

// Mean cross-entropy and accuracy of the batch for head h = workgroup id.
@compute @workgroup_size(256)
fn metrics_of_batch(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.x;
    var acc = vec2<f32>(0.0, 0.0);
    for (var b = lid; b < p.batch; b += 256u) {
        let r = 3u * (h * p.batch + b);
        acc += vec2<f32>(stats[r], stats[r + 1u]);
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
        let out = 3u * p.heads * p.batch + 2u * h;
        stats[out] = partial[0].x / f32(p.batch);
        stats[out + 1u] = partial[0].y / f32(p.batch);
    }
}
