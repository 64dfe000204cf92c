//! Inception V3 (Szegedy et al., 2015) as Keras's `inception_v3.py` builds it,
//! without the classifier: the stem, mixed0..mixed10, then global average
//! pooling to the 2048-d bottleneck. Each conv is named by where it sits —
//! its block and torchvision's branch name, e.g. `mixed5/branch7x7dbl_2` —
//! and its weights are bound by that name, not by the order the convs are
//! built in. `KERAS_ORDER` lists the names in Keras's creation order
//! (`conv2d_1`, `conv2d_2`, …), which converters map Keras files by.

use super::graph::{Graph, Padding, PoolOp, Slice, INPUT, OUTPUT};
use anyhow::{bail, Result};

use Padding::{Same, Valid};

/// Smallest input side the network accepts (mixed8's stride-2 convs need 3×3).
pub const MIN_INPUT: u32 = 75;
pub const BOTTLENECK: u32 = 2048;
pub const DEFAULT_INPUT: u32 = 299;

/// Convolution with folded batch norm and ReLU (Keras's `conv2d_bn`), stride 1, SAME.
fn conv_bn(
    g: &mut Graph,
    name: &str,
    x: Slice,
    channels: u32,
    kernel: (u32, u32),
) -> Result<Slice> {
    g.conv(name, x, channels, kernel, 1, Same)
}

/// `block/branch`: the name a conv's weights are stored under.
fn at(block: &str, branch: &str) -> String {
    format!("{block}/{branch}")
}

fn avg_pool_3x3(g: &mut Graph, x: Slice) -> Result<Slice> {
    g.pool(PoolOp::Average, x, 3, 1, Same)
}

/// mixed0..2 (35×35): 1×1, 5×5, double 3×3 and pool branches.
fn mixed_35(g: &mut Graph, block: &str, x: Slice, pool_channels: u32) -> Result<Slice> {
    let s = g.shape(x.tensor);
    let out = g.tensor(s.height, s.width, 64 + 64 + 96 + pool_channels);
    let [b1x1, b5x5, b3x3dbl, bpool] = out.split([64, 64, 96, pool_channels]);
    g.conv_into(&at(block, "branch1x1"), x, b1x1, (1, 1), 1, Same)?;
    let t = conv_bn(g, &at(block, "branch5x5_1"), x, 48, (1, 1))?;
    g.conv_into(&at(block, "branch5x5_2"), t, b5x5, (5, 5), 1, Same)?;
    let t = conv_bn(g, &at(block, "branch3x3dbl_1"), x, 64, (1, 1))?;
    let t = conv_bn(g, &at(block, "branch3x3dbl_2"), t, 96, (3, 3))?;
    g.conv_into(&at(block, "branch3x3dbl_3"), t, b3x3dbl, (3, 3), 1, Same)?;
    let t = avg_pool_3x3(g, x)?;
    g.conv_into(&at(block, "branch_pool"), t, bpool, (1, 1), 1, Same)?;
    Ok(out)
}

/// mixed3: reduction 35×35 -> 17×17.
fn reduction_a(g: &mut Graph, x: Slice) -> Result<Slice> {
    let block = "mixed3";
    let (h, w) = g.out_hw(x, (3, 3), 2, Valid)?;
    let out = g.tensor(h, w, 384 + 96 + x.channels);
    let [b3x3, b3x3dbl, bpool] = out.split([384, 96, x.channels]);
    g.conv_into(&at(block, "branch3x3"), x, b3x3, (3, 3), 2, Valid)?;
    let t = conv_bn(g, &at(block, "branch3x3dbl_1"), x, 64, (1, 1))?;
    let t = conv_bn(g, &at(block, "branch3x3dbl_2"), t, 96, (3, 3))?;
    g.conv_into(&at(block, "branch3x3dbl_3"), t, b3x3dbl, (3, 3), 2, Valid)?;
    g.pool_into(PoolOp::Max, x, bpool, 3, 2, Valid)?;
    Ok(out)
}

/// mixed4..7 (17×17): 1×1, factorised 7×7, double factorised 7×7 and pool branches.
fn mixed_17(g: &mut Graph, block: &str, x: Slice, c7: u32) -> Result<Slice> {
    let s = g.shape(x.tensor);
    let out = g.tensor(s.height, s.width, 4 * 192);
    let [b1x1, b7x7, b7x7dbl, bpool] = out.split([192; 4]);
    g.conv_into(&at(block, "branch1x1"), x, b1x1, (1, 1), 1, Same)?;
    let t = conv_bn(g, &at(block, "branch7x7_1"), x, c7, (1, 1))?;
    let t = conv_bn(g, &at(block, "branch7x7_2"), t, c7, (1, 7))?;
    g.conv_into(&at(block, "branch7x7_3"), t, b7x7, (7, 1), 1, Same)?;
    let t = conv_bn(g, &at(block, "branch7x7dbl_1"), x, c7, (1, 1))?;
    let t = conv_bn(g, &at(block, "branch7x7dbl_2"), t, c7, (7, 1))?;
    let t = conv_bn(g, &at(block, "branch7x7dbl_3"), t, c7, (1, 7))?;
    let t = conv_bn(g, &at(block, "branch7x7dbl_4"), t, c7, (7, 1))?;
    g.conv_into(&at(block, "branch7x7dbl_5"), t, b7x7dbl, (1, 7), 1, Same)?;
    let t = avg_pool_3x3(g, x)?;
    g.conv_into(&at(block, "branch_pool"), t, bpool, (1, 1), 1, Same)?;
    Ok(out)
}

/// mixed8: reduction 17×17 -> 8×8.
fn reduction_b(g: &mut Graph, x: Slice) -> Result<Slice> {
    let block = "mixed8";
    let (h, w) = g.out_hw(x, (3, 3), 2, Valid)?;
    let out = g.tensor(h, w, 320 + 192 + x.channels);
    let [b3x3, b7x7x3, bpool] = out.split([320, 192, x.channels]);
    let t = conv_bn(g, &at(block, "branch3x3_1"), x, 192, (1, 1))?;
    g.conv_into(&at(block, "branch3x3_2"), t, b3x3, (3, 3), 2, Valid)?;
    let t = conv_bn(g, &at(block, "branch7x7x3_1"), x, 192, (1, 1))?;
    let t = conv_bn(g, &at(block, "branch7x7x3_2"), t, 192, (1, 7))?;
    let t = conv_bn(g, &at(block, "branch7x7x3_3"), t, 192, (7, 1))?;
    g.conv_into(&at(block, "branch7x7x3_4"), t, b7x7x3, (3, 3), 2, Valid)?;
    g.pool_into(PoolOp::Max, x, bpool, 3, 2, Valid)?;
    Ok(out)
}

/// mixed9, mixed10 (8×8): 1×1, split 3×3, double split 3×3 and pool branches.
fn mixed_8(g: &mut Graph, block: &str, x: Slice) -> Result<Slice> {
    let s = g.shape(x.tensor);
    let out = g.tensor(s.height, s.width, 320 + 768 + 768 + 192);
    let [b1x1, b3x3_2a, b3x3_2b, b3x3dbl_3a, b3x3dbl_3b, bpool] =
        out.split([320, 384, 384, 384, 384, 192]);
    g.conv_into(&at(block, "branch1x1"), x, b1x1, (1, 1), 1, Same)?;
    let t = conv_bn(g, &at(block, "branch3x3_1"), x, 384, (1, 1))?;
    g.conv_into(&at(block, "branch3x3_2a"), t, b3x3_2a, (1, 3), 1, Same)?;
    g.conv_into(&at(block, "branch3x3_2b"), t, b3x3_2b, (3, 1), 1, Same)?;
    let t = conv_bn(g, &at(block, "branch3x3dbl_1"), x, 448, (1, 1))?;
    let t = conv_bn(g, &at(block, "branch3x3dbl_2"), t, 384, (3, 3))?;
    g.conv_into(
        &at(block, "branch3x3dbl_3a"),
        t,
        b3x3dbl_3a,
        (1, 3),
        1,
        Same,
    )?;
    g.conv_into(
        &at(block, "branch3x3dbl_3b"),
        t,
        b3x3dbl_3b,
        (3, 1),
        1,
        Same,
    )?;
    let t = avg_pool_3x3(g, x)?;
    g.conv_into(&at(block, "branch_pool"), t, bpool, (1, 1), 1, Same)?;
    Ok(out)
}

/// The conv names in Keras's creation order: the n-th is Keras's `conv2d_n`
/// (Keras 2 names; Keras 3 counts from `conv2d`) with `batch_normalization_n`.
/// Kept apart from the definition above on purpose: reordering the
/// definition must not change which Keras layer feeds which conv.
pub fn keras_order() -> Vec<String> {
    const STEM: [&str; 5] = [
        "conv2d_1a_3x3",
        "conv2d_2a_3x3",
        "conv2d_2b_3x3",
        "conv2d_3b_1x1",
        "conv2d_4a_3x3",
    ];
    const MIXED_35: &[&str] = &[
        "branch1x1",
        "branch5x5_1",
        "branch5x5_2",
        "branch3x3dbl_1",
        "branch3x3dbl_2",
        "branch3x3dbl_3",
        "branch_pool",
    ];
    const REDUCTION_A: &[&str] = &[
        "branch3x3",
        "branch3x3dbl_1",
        "branch3x3dbl_2",
        "branch3x3dbl_3",
    ];
    const MIXED_17: &[&str] = &[
        "branch1x1",
        "branch7x7_1",
        "branch7x7_2",
        "branch7x7_3",
        "branch7x7dbl_1",
        "branch7x7dbl_2",
        "branch7x7dbl_3",
        "branch7x7dbl_4",
        "branch7x7dbl_5",
        "branch_pool",
    ];
    const REDUCTION_B: &[&str] = &[
        "branch3x3_1",
        "branch3x3_2",
        "branch7x7x3_1",
        "branch7x7x3_2",
        "branch7x7x3_3",
        "branch7x7x3_4",
    ];
    const MIXED_8: &[&str] = &[
        "branch1x1",
        "branch3x3_1",
        "branch3x3_2a",
        "branch3x3_2b",
        "branch3x3dbl_1",
        "branch3x3dbl_2",
        "branch3x3dbl_3a",
        "branch3x3dbl_3b",
        "branch_pool",
    ];
    let blocks: [&[&str]; 11] = [
        MIXED_35,
        MIXED_35,
        MIXED_35,
        REDUCTION_A,
        MIXED_17,
        MIXED_17,
        MIXED_17,
        MIXED_17,
        REDUCTION_B,
        MIXED_8,
        MIXED_8,
    ];
    let mut names: Vec<String> = STEM.iter().map(|c| at("stem", c)).collect();
    for (i, branches) in blocks.iter().enumerate() {
        names.extend(branches.iter().map(|b| at(&format!("mixed{i}"), b)));
    }
    names
}

/// Keras's walk of `keras.applications.InceptionV3`'s `model.layers` (the
/// functional model's topological order, not the creation order), as each
/// conv's 1-based place in `keras_order`. Keras 3 numbers the entries of a
/// `.weights.h5` file and of a `.keras` archive in this walk (`layers/conv2d`,
/// `layers/conv2d_1`, …, the batch norms likewise), so its n-th conv entry
/// is `keras_order()[KERAS_WALK[n] - 1]`. Read off a file Keras 3.15 wrote.
const KERAS_WALK: [usize; 94] = [
    1, 2, 3, 4, 5, 9, 7, 10, 6, 8, 11, 12, 16, 14, 17, 13, 15, 18, 19, 23, 21, 24, 20, 22, 25, 26,
    28, 29, 27, 30, 35, 36, 32, 37, 33, 38, 31, 34, 39, 40, 45, 46, 42, 47, 43, 48, 41, 44, 49, 50,
    55, 56, 52, 57, 53, 58, 51, 54, 59, 60, 65, 66, 62, 67, 63, 68, 61, 64, 69, 70, 73, 74, 71, 75,
    72, 76, 81, 78, 82, 79, 80, 83, 84, 77, 85, 90, 87, 91, 88, 89, 92, 93, 86, 94,
];

/// The conv names in Keras's `model.layers` walk (see KERAS_WALK).
pub fn keras_walk_order() -> Vec<String> {
    let creation = keras_order();
    KERAS_WALK
        .iter()
        .map(|&k| creation[k - 1].clone())
        .collect()
}

/// The whole network for an input of `height`×`width` RGB pixels. Names the
/// tensors `input`, `stem`, `mixed0`..`mixed10` and `bottleneck`.
pub fn inception_v3(height: u32, width: u32) -> Result<Graph> {
    if height < MIN_INPUT || width < MIN_INPUT {
        bail!("input size {height}×{width} is too small: Inception V3 needs at least {MIN_INPUT}×{MIN_INPUT}");
    }
    let mut g = Graph::default();
    let x = g.tensor(height, width, 3);
    g.name(INPUT, x);

    let x = g.conv("stem/conv2d_1a_3x3", x, 32, (3, 3), 2, Valid)?;
    let x = g.conv("stem/conv2d_2a_3x3", x, 32, (3, 3), 1, Valid)?;
    let x = conv_bn(&mut g, "stem/conv2d_2b_3x3", x, 64, (3, 3))?;
    let x = g.pool(PoolOp::Max, x, 3, 2, Valid)?;
    let x = g.conv("stem/conv2d_3b_1x1", x, 80, (1, 1), 1, Valid)?;
    let x = g.conv("stem/conv2d_4a_3x3", x, 192, (3, 3), 1, Valid)?;
    let mut x = g.pool(PoolOp::Max, x, 3, 2, Valid)?;
    g.name("stem", x);

    for (i, pool_channels) in [32, 64, 64].into_iter().enumerate() {
        let block = format!("mixed{i}");
        x = mixed_35(&mut g, &block, x, pool_channels)?;
        g.name(&block, x);
    }
    x = reduction_a(&mut g, x)?;
    g.name("mixed3", x);
    for (i, c7) in [128, 160, 160, 192].into_iter().enumerate() {
        let block = format!("mixed{}", i + 4);
        x = mixed_17(&mut g, &block, x, c7)?;
        g.name(&block, x);
    }
    x = reduction_b(&mut g, x)?;
    g.name("mixed8", x);
    for i in 9..=10 {
        let block = format!("mixed{i}");
        x = mixed_8(&mut g, &block, x)?;
        g.name(&block, x);
    }
    let bottleneck = g.global_avg_pool(x);
    g.name(OUTPUT, bottleneck);
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_keras_at_299() {
        let g = inception_v3(299, 299).unwrap();
        assert_eq!(g.convs().count(), 94);
        let shape = |n: &str| {
            let s = g.shape(g.named(n).unwrap());
            (s.height, s.width, s.channels)
        };
        assert_eq!(shape("stem"), (35, 35, 192));
        assert_eq!(shape("mixed0"), (35, 35, 256));
        assert_eq!(shape("mixed2"), (35, 35, 288));
        assert_eq!(shape("mixed3"), (17, 17, 768));
        assert_eq!(shape("mixed5"), (17, 17, 768));
        assert_eq!(shape("mixed8"), (8, 8, 1280));
        assert_eq!(shape("mixed10"), (8, 8, 2048));
        assert_eq!(shape("bottleneck"), (1, 1, 2048));
    }

    #[test]
    fn keras_order_lists_every_conv_once() {
        let g = inception_v3(299, 299).unwrap();
        let order = keras_order();
        let mut defined: Vec<&str> = g.convs().map(|c| c.name.as_str()).collect();
        let mut listed: Vec<&str> = order.iter().map(String::as_str).collect();
        defined.sort();
        listed.sort();
        assert_eq!(defined, listed);
        // Spot checks against Keras's inception_v3.py: conv2d_12 is mixed0's
        // pool branch, conv2d_94 mixed10's.
        assert_eq!(order[11], "mixed0/branch_pool");
        assert_eq!(order[93], "mixed10/branch_pool");
    }

    #[test]
    fn keras_walk_visits_every_conv_once() {
        let mut walk = KERAS_WALK.to_vec();
        walk.sort();
        assert_eq!(walk, (1..=94).collect::<Vec<_>>());
        // Keras 3's layers/conv2d_7 is the 3×3 64→96 conv, not mixed0's 5×5.
        assert_eq!(keras_walk_order()[7], "mixed0/branch3x3dbl_2");
    }

    #[test]
    fn small_and_non_square_inputs() {
        let g = inception_v3(147, 195).unwrap();
        let s = g.shape(g.named("mixed10").unwrap());
        assert_eq!((s.height, s.width), (3, 4));
        assert!(inception_v3(75, 75).is_ok());
        assert!(inception_v3(74, 300).is_err());
    }
}
