// output_coord: which output pixel a conv tap reaches from an input pixel,
// for the input gradients of conv2d_backward.wgsl and
// conv2d_backward_subgroup.wgsl. No bindings.

// The output coordinate a tap reaches from input coordinate `i`, or −1 when
// the tap falls between strides or outside the output.
fn output_coord(i: u32, k: u32, pad: u32, stride: u32, size: u32) -> i32 {
    let t = i32(i + pad) - i32(k);
    if (t < 0 || t % i32(stride) != 0) {
        return -1;
    }
    let o = t / i32(stride);
    return select(-1, o, o < i32(size));
}
