"""A slow, independent pure-PyTorch modulated deformable convolution: the oracle for the compiled
operator. Written from the definition (vectorised tensor ops, autograd for the gradients), sharing
no code with csrc/.

Definition: out[n, o, p] = bias[o] + sum over c, taps k of
weight[o, c, k] * mask[n, dg(c), k, p] * bilinear(input[n, c], p_k + offset[n, dg(c), k, p]),
where a sample outside (-1, H) x (-1, W) is 0 and corners outside the image are 0.
"""

import torch


def _bilinear(planes, y, x):
    """planes [N, G, C, H, W]; y, x [N, G, P] -> [N, G, C, P]."""
    n, g, c, h, w = planes.shape
    flat = planes.reshape(n, g, c, h * w)
    inside = (y > -1) & (y < h) & (x > -1) & (x < w)
    y0 = torch.floor(y)
    x0 = torch.floor(x)
    ly, lx = y - y0, x - x0
    result = 0
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            yc, xc = y0 + dy, x0 + dx
            valid = inside & (yc >= 0) & (yc < h) & (xc >= 0) & (xc < w)
            index = (yc.clamp(0, h - 1) * w + xc.clamp(0, w - 1)).long()
            values = torch.gather(flat, 3, index[:, :, None, :].expand(n, g, c, index.shape[-1]))
            result = result + values * (wy * wx * valid)[:, :, None, :]
    return result


def modulated_deform_conv2d_reference(
    input, offset, mask, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
    groups=1, deformable_groups=1,
):
    n, c_in, h, w = input.shape
    c_out, c_in_g, kh, kw = weight.shape
    out_h = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    taps, dg = kh * kw, deformable_groups
    dtype, device = input.dtype, input.device

    grid_y = (torch.arange(out_h, device=device, dtype=dtype) * stride[0] - padding[0])[:, None]
    grid_x = (torch.arange(out_w, device=device, dtype=dtype) * stride[1] - padding[1])[None, :]
    offsets = offset.reshape(n, dg, taps, 2, out_h, out_w)
    masks = mask.reshape(n, dg, taps, out_h, out_w)
    planes = input.reshape(n, dg, c_in // dg, h, w)

    samples = []
    for k in range(taps):
        ki, kj = divmod(k, kw)
        y = (grid_y + ki * dilation[0]) + offsets[:, :, k, 0]
        x = (grid_x + kj * dilation[1]) + offsets[:, :, k, 1]
        value = _bilinear(planes, y.reshape(n, dg, -1), x.reshape(n, dg, -1))
        samples.append(value * masks[:, :, k].reshape(n, dg, 1, -1))
    # [N, C_in, taps, P], channel-major like the weight's [C_in / groups, kh, kw] order.
    columns = torch.stack(samples, dim=3).reshape(n, groups, c_in_g * taps, out_h * out_w)
    weight_g = weight.reshape(groups, c_out // groups, c_in_g * taps)
    out = torch.einsum("gok,ngkp->ngop", weight_g, columns).reshape(n, c_out, out_h, out_w)
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    return out
