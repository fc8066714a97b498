// The modulated deformable convolution operator (DCNv2): argument checking shared by every device,
// and the per-device kernels' signatures.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

#include "sampling.h"

namespace iedvr {

// Validates the operator's arguments (ranks, shapes, dtypes, devices) with errors that say what
// was expected, and returns the convolution's geometry.
ConvGeometry check_modulated_deform_conv2d_args(
    const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    int64_t deformable_groups);

// Also checks grad_output against the forward's geometry.
ConvGeometry check_modulated_deform_conv2d_backward_args(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
    const at::Tensor& mask, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    int64_t deformable_groups);

// The backward's gradients in schema order: input, offset, mask, weight, bias. Those that the
// output mask does not ask for are undefined tensors (None in Python), as aten's
// convolution_backward returns them.
using Gradients = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Each gradient in the memory format of the tensor it is the gradient of (channels-last for the
// network's), as aten's convolution_backward returns them and as the fake kernel (vs_iedvr/ops.py)
// says: torch.compile's graphs are built on that promise, and the next convolution's backward
// would otherwise copy the gradient to its layout.
inline Gradients in_their_layouts(const at::Tensor& input, const at::Tensor& offset,
                                  const at::Tensor& mask, const at::Tensor& weight,
                                  Gradients grads) {
  const auto like = [](const at::Tensor& grad, const at::Tensor& of) {
    return grad.defined() ? grad.contiguous(of.suggest_memory_format()) : grad;
  };
  auto& [grad_input, grad_offset, grad_mask, grad_weight, grad_bias] = grads;
  return {like(grad_input, input), like(grad_offset, offset), like(grad_mask, mask),
          like(grad_weight, weight), grad_bias};
}

// The backward's output_mask, named. Autograd asks only for the gradients of inputs that require
// them (a frozen weight, an offset computed without gradient), and each one skipped saves work.
struct GradientMask {
  bool input, offset, mask, weight, bias;
  explicit GradientMask(std::array<bool, 5> output_mask)
      : input(output_mask[0]), offset(output_mask[1]), mask(output_mask[2]),
        weight(output_mask[3]), bias(output_mask[4]) {}
  // grad_output through the weight, the columns' gradient, feeds these three.
  bool column_gradient() const { return input || offset || mask; }
  // The sampling pass serves these four (the samples themselves are grad_weight's input).
  bool sampling() const { return column_gradient() || weight; }
};

}  // namespace iedvr
