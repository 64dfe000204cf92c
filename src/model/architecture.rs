//! The networks retrain runs, and what the rest of the crate needs to know
//! about each without naming it: how to build it, its default input size,
//! its bottleneck, and the order Keras created its layers in.

use super::graph::Graph;
use super::{inception_v3, mobilenet_v2};
use anyhow::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    InceptionV3,
    MobileNetV2,
}

impl Architecture {
    pub const ALL: [Architecture; 2] = [Architecture::InceptionV3, Architecture::MobileNetV2];

    /// The name weight files, flags and metadata use.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::InceptionV3 => "inception_v3",
            Architecture::MobileNetV2 => "mobilenet_v2",
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        match Self::ALL.into_iter().find(|a| a.name() == name) {
            Some(a) => Ok(a),
            None => bail!(
                "unknown architecture \"{name}\" (retrain runs inception_v3 and mobilenet_v2)"
            ),
        }
    }

    /// The network for an input of `height`×`width` pixels.
    pub fn build(self, height: u32, width: u32) -> Result<Graph> {
        match self {
            Architecture::InceptionV3 => inception_v3::inception_v3(height, width),
            Architecture::MobileNetV2 => mobilenet_v2::mobilenet_v2(height, width),
        }
    }

    /// The smallest input side the network accepts.
    pub fn min_input(self) -> u32 {
        match self {
            Architecture::InceptionV3 => inception_v3::MIN_INPUT,
            Architecture::MobileNetV2 => mobilenet_v2::MIN_INPUT,
        }
    }

    /// The input side the published weights were trained at.
    pub fn default_input(self) -> u32 {
        match self {
            Architecture::InceptionV3 => inception_v3::DEFAULT_INPUT,
            Architecture::MobileNetV2 => mobilenet_v2::DEFAULT_INPUT,
        }
    }

    pub fn bottleneck_size(self) -> u32 {
        match self {
            Architecture::InceptionV3 => inception_v3::BOTTLENECK,
            Architecture::MobileNetV2 => mobilenet_v2::BOTTLENECK,
        }
    }

    /// The layer the bottleneck is the global average of.
    pub fn bottleneck_layer(self) -> &'static str {
        match self {
            Architecture::InceptionV3 => "mixed10 global average pool",
            Architecture::MobileNetV2 => "out_relu global average pool",
        }
    }

    /// The layers with weights in Keras's creation order: the n-th is the
    /// one a Keras file numbers n (converters map by it).
    pub fn keras_order(self) -> Vec<String> {
        match self {
            Architecture::InceptionV3 => inception_v3::keras_order(),
            Architecture::MobileNetV2 => mobilenet_v2::keras_order(),
        }
    }
}
