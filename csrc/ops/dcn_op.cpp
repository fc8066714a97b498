// Defines the iedvr operators once (TORCH_LIBRARY) and checks their arguments for every device.
#include "dcn.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <sstream>

namespace iedvr {
namespace {

constexpr const char* kOp = "iedvr::modulated_deform_conv2d: ";

std::string shape_string(at::IntArrayRef sizes) {
  std::ostringstream s;
  s << sizes;
  return s.str();
}

void check_4d(const at::Tensor& t, const char* name, const char* layout) {
  TORCH_CHECK(t.defined(), kOp, name, " is undefined; expected a 4-D tensor ", layout);
  TORCH_CHECK(t.dim() == 4, kOp, name, " must be a 4-D tensor ", layout, ", got ", t.dim(),
              "-D with shape ", shape_string(t.sizes()));
}

void check_same_device_and_dtype(const at::Tensor& reference, const at::Tensor& t,
                                 const char* name) {
  TORCH_CHECK(t.device() == reference.device(), kOp, name, " is on ", t.device(),
              " but input is on ", reference.device(), "; all tensors must be on one device");
  TORCH_CHECK(t.scalar_type() == reference.scalar_type(), kOp, name, " has dtype ",
              t.scalar_type(), " but input has ", reference.scalar_type(),
              "; all tensors must have one dtype (under autocast the op casts them itself)");
}

void check_pair(at::IntArrayRef values, const char* name, int64_t minimum) {
  TORCH_CHECK(values.size() == 2, kOp, name, " must have 2 values (height, width), got ",
              values.size());
  TORCH_CHECK(values[0] >= minimum && values[1] >= minimum, kOp, name, " must be >= ", minimum,
              ", got ", shape_string(values));
}

void check_shape(const at::Tensor& t, const char* name, std::initializer_list<int64_t> expected,
                 const char* layout) {
  TORCH_CHECK(t.sizes() == at::IntArrayRef(expected), kOp, name, " must have shape ", layout,
              " = ", shape_string(expected), ", got ", shape_string(t.sizes()));
}

}  // namespace

ConvGeometry check_modulated_deform_conv2d_args(
    const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    int64_t deformable_groups) {
  check_4d(input, "input", "[N, C_in, H, W]");
  check_4d(offset, "offset", "[N, 2 * deformable_groups * kh * kw, H_out, W_out]");
  check_4d(mask, "mask", "[N, deformable_groups * kh * kw, H_out, W_out]");
  check_4d(weight, "weight", "[C_out, C_in / groups, kh, kw]");
  const at::ScalarType dtype = input.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              kOp, "input must be float32, float64, float16 or bfloat16, got ", dtype);
  check_same_device_and_dtype(input, offset, "offset");
  check_same_device_and_dtype(input, mask, "mask");
  check_same_device_and_dtype(input, weight, "weight");
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  TORCH_CHECK(groups >= 1, kOp, "groups must be >= 1, got ", groups);
  TORCH_CHECK(deformable_groups >= 1, kOp, "deformable_groups must be >= 1, got ",
              deformable_groups);

  ConvGeometry g;
  g.batch = input.size(0);
  g.in_channels = input.size(1);
  g.height = input.size(2);
  g.width = input.size(3);
  g.out_channels = weight.size(0);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  g.groups = groups;
  g.deformable_groups = deformable_groups;

  TORCH_CHECK(g.in_channels >= 1 && g.height >= 1 && g.width >= 1, kOp,
              "input must have at least one channel, row and column, got shape ",
              shape_string(input.sizes()));
  TORCH_CHECK(g.out_channels >= 1, kOp, "weight must have at least one output channel, got shape ",
              shape_string(weight.sizes()));
  TORCH_CHECK(g.in_channels % groups == 0, kOp, "input channels (", g.in_channels,
              ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(g.out_channels % groups == 0, kOp, "weight.size(0) = output channels (",
              g.out_channels, ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(weight.size(1) * groups == g.in_channels, kOp,
              "weight must have shape [C_out, C_in / groups, kh, kw] with C_in / groups = ",
              g.in_channels / groups, ", got weight shape ", shape_string(weight.sizes()),
              " for input with ", g.in_channels, " channels and groups = ", groups);
  TORCH_CHECK(g.in_channels % deformable_groups == 0, kOp, "input channels (", g.in_channels,
              ") must be divisible by deformable_groups (", deformable_groups, ")");
  TORCH_CHECK(g.kernel_h >= 1 && g.kernel_w >= 1, kOp, "kernel size must be >= 1, got weight ",
              "shape ", shape_string(weight.sizes()));

  const int64_t span_h = g.dilation_h * (g.kernel_h - 1) + 1;
  const int64_t span_w = g.dilation_w * (g.kernel_w - 1) + 1;
  TORCH_CHECK(g.height + 2 * g.pad_h >= span_h && g.width + 2 * g.pad_w >= span_w, kOp,
              "input of ", g.height, "x", g.width, " with padding ", shape_string(padding),
              " is smaller than the dilated kernel (", span_h, "x", span_w, ")");
  g.out_height = (g.height + 2 * g.pad_h - span_h) / g.stride_h + 1;
  g.out_width = (g.width + 2 * g.pad_w - span_w) / g.stride_w + 1;

  const int64_t taps = g.taps();
  check_shape(offset, "offset",
              {g.batch, 2 * deformable_groups * taps, g.out_height, g.out_width},
              "[N, 2 * deformable_groups * kh * kw, H_out, W_out]");
  check_shape(mask, "mask", {g.batch, deformable_groups * taps, g.out_height, g.out_width},
              "[N, deformable_groups * kh * kw, H_out, W_out]");
  if (bias.has_value() && bias->defined()) {
    check_same_device_and_dtype(input, *bias, "bias");
    check_shape(*bias, "bias", {g.out_channels}, "[C_out]");
  }
  return g;
}

ConvGeometry check_modulated_deform_conv2d_backward_args(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
    const at::Tensor& mask, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    int64_t deformable_groups) {
  const ConvGeometry g = check_modulated_deform_conv2d_args(
      input, offset, mask, weight, bias, stride, padding, dilation, groups, deformable_groups);
  check_4d(grad_output, "grad_output", "[N, C_out, H_out, W_out]");
  check_same_device_and_dtype(input, grad_output, "grad_output");
  check_shape(grad_output, "grad_output", {g.batch, g.out_channels, g.out_height, g.out_width},
              "[N, C_out, H_out, W_out]");
  return g;
}

}  // namespace iedvr

TORCH_LIBRARY(iedvr, m) {
  m.def(
      "modulated_deform_conv2d(Tensor input, Tensor offset, Tensor mask, Tensor weight, "
      "Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, int groups, "
      "int deformable_groups) -> Tensor");
  m.def(
      "modulated_deform_conv2d_backward(Tensor grad_output, Tensor input, Tensor offset, "
      "Tensor mask, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, int deformable_groups, "
      "bool[5] output_mask=[True, True, True, True, True]) "
      "-> (Tensor grad_input, Tensor grad_offset, Tensor grad_mask, Tensor grad_weight, "
      "Tensor grad_bias)");
}
