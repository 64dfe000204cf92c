// input_grad_taps: which output pixel each tap of a conv reaches from an input
// pixel, for the input gradients of conv2d_backward.wgsl and
// conv2d_backward_subgroup.wgsl (both declare `p`, struct Params of
// conv_params.wgsl). No bindings.

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

// An input pixel by image, row and column.
struct InputPixel {
    image: u32,
    y: u32,
    x: u32,
}

// Input pixel `pixel` of the flattened NHW order.
fn input_pixel(pixel: u32) -> InputPixel {
    return InputPixel(pixel / (p.in_w * p.in_h), (pixel / p.in_w) % p.in_h, pixel % p.in_w);
}

// The output pixel (flattened NHW order) that tap (ky, kx) reaches from input
// pixel `q`, or −1 when it reaches none.
fn output_pixel(q: InputPixel, ky: u32, kx: u32) -> i32 {
    let oy = output_coord(q.y, ky, p.pad_top, p.stride_h, p.out_h);
    let ox = output_coord(q.x, kx, p.pad_left, p.stride_w, p.out_w);
    let o = (q.image * p.out_h + u32(oy)) * p.out_w + u32(ox);
    return select(-1, i32(o), oy >= 0 && ox >= 0);
}
