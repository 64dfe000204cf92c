//! The network as ONNX nodes (NCHW): each op of the graph becomes its ONNX
//! operator, weights become initializers (the engine's HWIO layout
//! transposed to OIHW), and the graph's channel slices — how concat is free
//! in the engine — become Concat and Slice nodes where a reader needs them.

use super::onnx_proto::*;
use crate::model::graph::{Activation, Conv, Depthwise, Graph, Op, Padding, Pool, PoolOp, Slice};
use crate::model::weights::WeightFile;
use anyhow::{bail, Result};
use std::collections::HashMap;

/// Nodes and initializers of a graph being written.
#[derive(Default)]
pub struct Nodes {
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    count: usize,
}

impl Nodes {
    /// Adds an `op` node reading `inputs`; returns its output's name.
    pub fn add(&mut self, op: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> String {
        self.count += 1;
        let output = format!("{}_{}", op.to_lowercase(), self.count);
        self.add_named(op, inputs, attributes, &output);
        output
    }

    /// Adds an `op` node whose output is called `output`.
    pub fn add_named(
        &mut self,
        op: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
        output: &str,
    ) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: output.to_string(),
            op_type: op.into(),
            attribute: attributes,
        });
    }

    /// A constant float tensor; returns its name.
    pub fn floats(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        self.initializer(name, dims, FLOAT, bytemuck::cast_slice(values).to_vec())
    }

    /// A constant int64 tensor; returns its name.
    pub fn int64s(&mut self, name: &str, values: &[i64]) -> String {
        self.initializer(
            name,
            &[values.len()],
            INT64,
            bytemuck::cast_slice(values).to_vec(),
        )
    }

    fn initializer(
        &mut self,
        name: &str,
        dims: &[usize],
        data_type: i32,
        raw_data: Vec<u8>,
    ) -> String {
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type,
            name: name.into(),
            raw_data,
        });
        name.into()
    }
}

pub fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: values.to_vec(),
        r#type: ATTRIBUTE_INTS,
        ..Default::default()
    }
}

pub fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i: value,
        r#type: ATTRIBUTE_INT,
        ..Default::default()
    }
}

/// The network of `graph` with `file`'s weights, reading `input` (the
/// normalised NCHW image); returns the name of the bottleneck's tensor
/// ([N, channels, 1, 1]).
pub fn write_network(
    nodes: &mut Nodes,
    graph: &Graph,
    file: &WeightFile,
    input: &str,
) -> Result<String> {
    let mut tensors = Tensors::default();
    let input_id = graph
        .named(crate::model::graph::INPUT)
        .expect("every graph names its input");
    tensors.write(
        Slice {
            tensor: input_id,
            offset: 0,
            channels: 3,
        },
        input.into(),
    );
    for op in &graph.ops {
        match op {
            Op::Conv(c) => conv(nodes, &mut tensors, graph, file, c)?,
            Op::Depthwise(d) => depthwise(nodes, &mut tensors, graph, file, d)?,
            Op::Pool(p) => pool(nodes, &mut tensors, graph, p),
            Op::GlobalAvgPool { input, output } => {
                let x = tensors.whole(nodes, graph, *input);
                let y = nodes.add("GlobalAveragePool", &[&x], vec![]);
                let channels = graph.shape(*output).channels;
                tensors.write(
                    Slice {
                        tensor: *output,
                        offset: 0,
                        channels,
                    },
                    y,
                );
            }
            Op::MergedConv(_) => {
                bail!("merged convs are an engine optimisation; export the plain network")
            }
        }
    }
    let output = graph
        .named(crate::model::graph::OUTPUT)
        .expect("every graph names its output");
    Ok(tensors.whole(nodes, graph, output))
}

/// Which ONNX value holds each channel range written so far, per tensor.
#[derive(Default)]
struct Tensors {
    parts: HashMap<usize, Vec<(u32, u32, String)>>,
    concatenated: HashMap<usize, String>,
}

impl Tensors {
    fn write(&mut self, slice: Slice, value: String) {
        let parts = self.parts.entry(slice.tensor.0).or_default();
        parts.push((slice.offset, slice.channels, value));
        parts.sort_by_key(|p| p.0);
    }

    /// The whole tensor: its one part, or its parts concatenated along channels.
    fn whole(
        &mut self,
        nodes: &mut Nodes,
        graph: &Graph,
        tensor: crate::model::graph::TensorId,
    ) -> String {
        let parts = &self.parts[&tensor.0];
        if parts.len() == 1 {
            return parts[0].2.clone();
        }
        if let Some(name) = self.concatenated.get(&tensor.0) {
            return name.clone();
        }
        debug_assert_eq!(
            parts.iter().map(|p| p.1).sum::<u32>(),
            graph.shape(tensor).channels
        );
        let inputs: Vec<&str> = parts.iter().map(|p| p.2.as_str()).collect();
        let name = nodes.add("Concat", &inputs, vec![int("axis", 1)]);
        self.concatenated.insert(tensor.0, name.clone());
        name
    }

    /// The value of `slice`: a part as written, the whole tensor, or a Slice of either.
    fn read(&mut self, nodes: &mut Nodes, graph: &Graph, slice: Slice) -> String {
        let parts = &self.parts[&slice.tensor.0];
        let end = slice.offset + slice.channels;
        if let Some(p) = parts
            .iter()
            .find(|p| p.0 == slice.offset && p.1 == slice.channels)
        {
            return p.2.clone();
        }
        if slice.offset == 0 && slice.channels == graph.shape(slice.tensor).channels {
            return self.whole(nodes, graph, slice.tensor);
        }
        let (source, start) = match parts
            .iter()
            .find(|p| p.0 <= slice.offset && end <= p.0 + p.1)
        {
            Some(p) => (p.2.clone(), slice.offset - p.0),
            None => (self.whole(nodes, graph, slice.tensor), slice.offset),
        };
        let n = nodes.count + 1;
        let starts = nodes.int64s(&format!("slice_{n}_starts"), &[start as i64]);
        let ends = nodes.int64s(
            &format!("slice_{n}_ends"),
            &[(start + slice.channels) as i64],
        );
        let axes = nodes.int64s(&format!("slice_{n}_axes"), &[1]);
        nodes.add("Slice", &[&source, &starts, &ends, &axes], vec![])
    }
}

/// ONNX pads ([top, left, bottom, right]) for a window over `(h, w)`.
fn pads(padding: Padding, (h, w): (u32, u32), (kh, kw): (u32, u32), stride: u32) -> Vec<i64> {
    let side = |input: u32, window: u32| -> (i64, i64) {
        match padding {
            Padding::Valid => (0, 0),
            Padding::Symmetric => {
                let p = ((window - 1) / 2) as i64;
                (p, p)
            }
            Padding::Same => {
                let out = input.div_ceil(stride);
                let total = ((out - 1) * stride + window).saturating_sub(input) as i64;
                (total / 2, total - total / 2)
            }
        }
    };
    let ((top, bottom), (left, right)) = (side(h, kh), side(w, kw));
    vec![top, left, bottom, right]
}

/// The kernel_shape, strides and pads attributes of a window op over `input`.
fn window(
    graph: &Graph,
    input: Slice,
    kernel: (u32, u32),
    stride: u32,
    padding: Padding,
) -> Vec<AttributeProto> {
    let s = graph.shape(input.tensor);
    vec![
        ints("kernel_shape", &[kernel.0 as i64, kernel.1 as i64]),
        ints("strides", &[stride as i64; 2]),
        ints("pads", &pads(padding, (s.height, s.width), kernel, stride)),
    ]
}

/// `layer`'s weights and biases as f32, whatever the file stores.
fn layer_tensors(
    file: &WeightFile,
    name: &str,
    weight_shape: &[usize],
    outputs: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    Ok((
        file.tensor_f32(&format!("{name}.weight"), weight_shape)?,
        file.tensor_f32(&format!("{name}.bias"), &[outputs])?,
    ))
}

/// The activation after a conv, if any.
fn activate(nodes: &mut Nodes, x: String, activation: Activation) -> String {
    match activation {
        Activation::None => x,
        Activation::Relu => nodes.add("Relu", &[&x], vec![]),
        Activation::Relu6 => {
            let n = nodes.count + 1;
            let low = nodes.floats(&format!("clip_{n}_min"), &[], &[0.0]);
            let high = nodes.floats(&format!("clip_{n}_max"), &[], &[6.0]);
            nodes.add("Clip", &[&x, &low, &high], vec![])
        }
    }
}

fn conv(
    nodes: &mut Nodes,
    tensors: &mut Tensors,
    graph: &Graph,
    file: &WeightFile,
    c: &Conv,
) -> Result<()> {
    let [kh, kw, cin, cout] = c.weight_shape();
    let (hwio, bias) = layer_tensors(file, &c.name, &[kh, kw, cin, cout], cout)?;
    let mut oihw = vec![0f32; hwio.len()];
    for (y, x, i, o) in kernel_indices(kh, kw, cin, cout) {
        oihw[((o * cin + i) * kh + y) * kw + x] = hwio[((y * kw + x) * cin + i) * cout + o];
    }
    let w = nodes.floats(&format!("{}.weight", c.name), &[cout, cin, kh, kw], &oihw);
    let b = nodes.floats(&format!("{}.bias", c.name), &[cout], &bias);
    let x = tensors.read(nodes, graph, c.input);
    let attributes = window(graph, c.input, c.kernel, c.stride, c.padding);
    let mut y = nodes.add("Conv", &[&x, &w, &b], attributes);
    if let Some(r) = c.residual {
        let r = tensors.read(nodes, graph, r);
        y = nodes.add("Add", &[&y, &r], vec![]);
    }
    tensors.write(c.output, activate(nodes, y, c.activation));
    Ok(())
}

/// Every (y, x, i, o) of a [kh, kw, in, out] kernel.
fn kernel_indices(
    kh: usize,
    kw: usize,
    cin: usize,
    cout: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    (0..kh).flat_map(move |y| {
        (0..kw).flat_map(move |x| (0..cin).flat_map(move |i| (0..cout).map(move |o| (y, x, i, o))))
    })
}

fn depthwise(
    nodes: &mut Nodes,
    tensors: &mut Tensors,
    graph: &Graph,
    file: &WeightFile,
    d: &Depthwise,
) -> Result<()> {
    let (kh, kw, channels) = (
        d.kernel.0 as usize,
        d.kernel.1 as usize,
        d.output.channels as usize,
    );
    let (hwc, bias) = layer_tensors(file, &d.name, &[kh, kw, channels], channels)?;
    let mut c1hw = vec![0f32; hwc.len()];
    for (y, x, c, _) in kernel_indices(kh, kw, channels, 1) {
        c1hw[(c * kh + y) * kw + x] = hwc[(y * kw + x) * channels + c];
    }
    let w = nodes.floats(&format!("{}.weight", d.name), &[channels, 1, kh, kw], &c1hw);
    let b = nodes.floats(&format!("{}.bias", d.name), &[channels], &bias);
    let x = tensors.read(nodes, graph, d.input);
    let mut attributes = window(graph, d.input, d.kernel, d.stride, d.padding);
    attributes.push(int("group", channels as i64));
    let y = nodes.add("Conv", &[&x, &w, &b], attributes);
    tensors.write(d.output, activate(nodes, y, d.activation));
    Ok(())
}

fn pool(nodes: &mut Nodes, tensors: &mut Tensors, graph: &Graph, p: &Pool) {
    let x = tensors.read(nodes, graph, p.input);
    let window_size = (p.window, p.window);
    let mut attributes = window(graph, p.input, window_size, p.stride, p.padding);
    let op = match p.kind {
        PoolOp::Max => "MaxPool",
        PoolOp::Average => {
            attributes.push(int("count_include_pad", 0));
            "AveragePool"
        }
        PoolOp::AverageCountingPadding => {
            attributes.push(int("count_include_pad", 1));
            "AveragePool"
        }
    };
    let y = nodes.add(op, &[&x], attributes);
    tensors.write(p.output, y);
}
