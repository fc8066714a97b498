// The modulated deformable convolution operator (DCNv2): argument checking shared by every device,
// and the per-device kernels' signatures.
#pragma once

#include <ATen/core/Tensor.h>

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

using Gradients = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

}  // namespace iedvr
