// CUDA kernels of iedvr::modulated_deform_conv2d. Forward: deformable im2col into a column buffer
// (a chunk of output pixels at a time) and a cuBLAS GEMM per group, in the input's dtype, so that
// float16 runs on tensor cores. Backward: the same columns for grad_weight, a scatter kernel for
// grad_input (float atomics) and a gather kernel for grad_offset and grad_mask.
// The sampling math is sampling.h, shared with (and tested through) the CPU kernels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdlib>

#include "../dcn.h"

namespace iedvr {
namespace {

constexpr int kThreads = 256;

unsigned int blocks_for(int64_t work_items) {
  // Grid-stride loops cover the rest; the cap keeps the grid within limits on every GPU.
  return static_cast<unsigned int>(
      std::min<int64_t>((work_items + kThreads - 1) / kThreads, int64_t{1} << 16));
}

// Column buffers of up to 256 MiB: whole 1080p frames at 64 channels in one GEMM. A multiple of
// 8 pixels keeps every chunk's columns aligned for tensor-core GEMMs. IEDVR_CUDA_CHUNK_PIXELS
// overrides the size, so that the tests can run the chunked path on small inputs.
int64_t pixels_per_chunk(const ConvGeometry& g, int64_t element_size) {
  const int64_t rows = g.in_channels * g.taps();
  int64_t chunk = ((int64_t{256} << 20) / (rows * element_size)) / 8 * 8;
  if (const char* forced = std::getenv("IEDVR_CUDA_CHUNK_PIXELS")) chunk = std::atoll(forced);
  return std::min(std::max<int64_t>(chunk, 1), g.out_pixels());
}

template <typename acc_t, typename scalar_t>
__device__ __forceinline__ BilinearCorners<acc_t> sample_point(const ConvGeometry& g,
                                                               const scalar_t* offset,
                                                               int64_t dg, int64_t k, int64_t p) {
  const int64_t out_pixels = g.out_pixels();
  const int64_t oy = p / g.out_width, ox = p - oy * g.out_width;
  const int64_t ki = k / g.kernel_w, kj = k - ki * g.kernel_w;
  const scalar_t* offset_y = offset + offset_y_channel(g, dg, k) * out_pixels;
  const acc_t y = static_cast<acc_t>(base_y(g, oy, ki)) + static_cast<acc_t>(offset_y[p]);
  const acc_t x =
      static_cast<acc_t>(base_x(g, ox, kj)) + static_cast<acc_t>(offset_y[out_pixels + p]);
  return bilinear_corners<acc_t>(y, x, g.height, g.width);
}

// One thread per (channel, pixel of the chunk), looping over the taps.
template <typename scalar_t>
__global__ void deformable_im2col_kernel(ConvGeometry g, const scalar_t* __restrict__ input,
                                         const scalar_t* __restrict__ offset,
                                         const scalar_t* __restrict__ mask, int64_t p_begin,
                                         int64_t n, scalar_t* __restrict__ columns) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t taps = g.taps(), total = g.in_channels * n;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < total;
       idx += int64_t{blockDim.x} * gridDim.x) {
    const int64_t c = idx / n, i = idx - c * n, p = p_begin + i;
    const int64_t dg = c / g.channels_per_deformable_group();
    const scalar_t* plane = input + c * g.in_pixels();
    for (int64_t k = 0; k < taps; ++k) {
      const BilinearCorners<acc_t> s = sample_point<acc_t>(g, offset, dg, k, p);
      acc_t value = 0;
      for (int j = 0; j < 4; ++j) {
        if (s.weight[j] != 0) value += s.weight[j] * static_cast<acc_t>(plane[s.index[j]]);
      }
      const acc_t m = static_cast<acc_t>(mask[mask_channel(g, dg, k) * g.out_pixels() + p]);
      columns[(c * taps + k) * n + i] = static_cast<scalar_t>(m * value);
    }
  }
}

// One thread per (channel, tap, pixel): scatters its column gradient into the four corners.
template <typename scalar_t, typename acc_t>
__global__ void deformable_col2im_kernel(ConvGeometry g, const scalar_t* __restrict__ grad_columns,
                                         const scalar_t* __restrict__ offset,
                                         const scalar_t* __restrict__ mask, int64_t p_begin,
                                         int64_t n, acc_t* __restrict__ grad_input) {
  const int64_t taps = g.taps(), total = g.in_channels * taps * n;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < total;
       idx += int64_t{blockDim.x} * gridDim.x) {
    const int64_t row = idx / n, i = idx - row * n, p = p_begin + i;
    const int64_t c = row / taps, k = row - c * taps;
    const int64_t dg = c / g.channels_per_deformable_group();
    const BilinearCorners<acc_t> s = sample_point<acc_t>(g, offset, dg, k, p);
    const acc_t m = static_cast<acc_t>(mask[mask_channel(g, dg, k) * g.out_pixels() + p]);
    const acc_t gm = static_cast<acc_t>(grad_columns[idx]) * m;
    acc_t* grad_plane = grad_input + c * g.in_pixels();
    for (int j = 0; j < 4; ++j) {
      if (s.weight[j] != 0) atomicAdd(grad_plane + s.index[j], gm * s.weight[j]);
    }
  }
}

// One thread per (deformable group, tap, pixel): sums over the group's channels. grad_offset or
// grad_mask may be null when that gradient is not wanted.
template <typename scalar_t>
__global__ void deformable_coordinate_grad_kernel(
    ConvGeometry g, const scalar_t* __restrict__ grad_columns,
    const scalar_t* __restrict__ input, const scalar_t* __restrict__ offset,
    const scalar_t* __restrict__ mask, int64_t p_begin, int64_t n,
    scalar_t* __restrict__ grad_offset, scalar_t* __restrict__ grad_mask) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t taps = g.taps(), total = g.deformable_groups * taps * n;
  const int64_t cpg = g.channels_per_deformable_group(), out_pixels = g.out_pixels();
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < total;
       idx += int64_t{blockDim.x} * gridDim.x) {
    const int64_t row = idx / n, i = idx - row * n, p = p_begin + i;
    const int64_t dg = row / taps, k = row - dg * taps;
    const BilinearCorners<acc_t> s = sample_point<acc_t>(g, offset, dg, k, p);
    const acc_t m = static_cast<acc_t>(mask[mask_channel(g, dg, k) * out_pixels + p]);
    acc_t sum_dy = 0, sum_dx = 0, sum_value = 0;
    for (int64_t c = dg * cpg; c < (dg + 1) * cpg; ++c) {
      const scalar_t* plane = input + c * g.in_pixels();
      const acc_t gc = static_cast<acc_t>(grad_columns[(c * taps + k) * n + i]);
      for (int j = 0; j < 4; ++j) {
        if (s.weight[j] == 0 && s.dweight_dy[j] == 0 && s.dweight_dx[j] == 0) continue;
        const acc_t v = static_cast<acc_t>(plane[s.index[j]]);
        sum_value += gc * s.weight[j] * v;
        sum_dy += gc * m * s.dweight_dy[j] * v;
        sum_dx += gc * m * s.dweight_dx[j] * v;
      }
    }
    if (grad_offset != nullptr) {
      const int64_t oc = offset_y_channel(g, dg, k) * out_pixels + p;
      grad_offset[oc] = static_cast<scalar_t>(sum_dy);
      grad_offset[oc + out_pixels] = static_cast<scalar_t>(sum_dx);
    }
    if (grad_mask != nullptr) {
      grad_mask[mask_channel(g, dg, k) * out_pixels + p] = static_cast<scalar_t>(sum_value);
    }
  }
}

at::Tensor forward_cuda(const at::Tensor& input_, const at::Tensor& offset_,
                        const at::Tensor& mask_, const at::Tensor& weight_,
                        const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                        int64_t deformable_groups) {
  const ConvGeometry g = check_modulated_deform_conv2d_args(
      input_, offset_, mask_, weight_, bias, stride, padding, dilation, groups,
      deformable_groups);
  const c10::cuda::CUDAGuard device_guard(input_.device());
  // The kernel's own at:: calls (GEMMs) are neither part of the autograd graph nor autocast.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const at::Tensor input = input_.contiguous(), offset = offset_.contiguous(),
                   mask = mask_.contiguous();
  const int64_t cout_g = g.out_channels / groups, rows_g = g.in_channels / groups * g.taps();
  const at::Tensor weight = weight_.contiguous().view({g.out_channels, rows_g});

  at::Tensor output =
      at::empty({g.batch, g.out_channels, g.out_height, g.out_width}, input.options());
  if (output.numel() == 0) return output;
  const at::Tensor output_flat = output.view({g.batch, g.out_channels, g.out_pixels()});
  const int64_t chunk = pixels_per_chunk(g, input.element_size());
  at::Tensor columns = at::empty({g.in_channels * g.taps() * chunk}, input.options());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "iedvr_modulated_deform_conv2d_cuda", [&] {
        for (int64_t b = 0; b < g.batch; ++b) {
          for (int64_t p_begin = 0; p_begin < g.out_pixels(); p_begin += chunk) {
            const int64_t n = std::min(chunk, g.out_pixels() - p_begin);
            const at::Tensor cols =
                columns.narrow(0, 0, g.in_channels * g.taps() * n).view({-1, n});
            deformable_im2col_kernel<scalar_t>
                <<<blocks_for(g.in_channels * n), kThreads, 0, stream>>>(
                    g, input[b].const_data_ptr<scalar_t>(), offset[b].const_data_ptr<scalar_t>(),
                    mask[b].const_data_ptr<scalar_t>(), p_begin, n, cols.data_ptr<scalar_t>());
            C10_CUDA_KERNEL_LAUNCH_CHECK();
            const at::Tensor out = output_flat[b].narrow(1, p_begin, n);
            for (int64_t grp = 0; grp < groups; ++grp) {
              at::Tensor out_g = out.narrow(0, grp * cout_g, cout_g);
              at::mm_out(out_g, weight.narrow(0, grp * cout_g, cout_g),
                         cols.narrow(0, grp * rows_g, rows_g));
            }
          }
        }
      });
  if (bias.has_value() && bias->defined()) output.add_(bias->view({1, -1, 1, 1}));
  // The input's memory format, as at::conv2d's output and the CPU kernel's.
  return output.contiguous(input_.suggest_memory_format());
}

Gradients backward_cuda(const at::Tensor& grad_output_, const at::Tensor& input_,
                        const at::Tensor& offset_, const at::Tensor& mask_,
                        const at::Tensor& weight_, const std::optional<at::Tensor>& bias,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                        int64_t groups, int64_t deformable_groups,
                        std::array<bool, 5> output_mask) {
  const ConvGeometry g = check_modulated_deform_conv2d_backward_args(
      grad_output_, input_, offset_, mask_, weight_, bias, stride, padding, dilation, groups,
      deformable_groups);
  const GradientMask wanted(output_mask);
  const c10::cuda::CUDAGuard device_guard(input_.device());
  // The kernel's own at:: calls (GEMMs, sums) are neither part of the autograd graph nor subject
  // to autocast (a backward() inside an autocast region carries that state here).
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  at::globalContext().alertNotDeterministic("iedvr::modulated_deform_conv2d_backward (CUDA)");
  const at::Tensor grad_output =
      grad_output_.contiguous().view({g.batch, g.out_channels, g.out_pixels()});
  const at::ScalarType dtype = input_.scalar_type(), acc_type = at::toOpMathType(dtype);
  const at::Tensor grad_bias =
      wanted.bias ? grad_output.sum({0, 2}, false, acc_type).to(dtype) : at::Tensor();
  if (!wanted.sampling()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), grad_bias};

  const at::Tensor input = input_.contiguous(), offset = offset_.contiguous(),
                   mask = mask_.contiguous();
  const int64_t cout_g = g.out_channels / groups, rows_g = g.in_channels / groups * g.taps();
  const at::Tensor weight = weight_.contiguous().view({g.out_channels, rows_g});

  at::Tensor grad_input, grad_weight, grad_offset, grad_mask;
  if (wanted.input) grad_input = at::zeros(input.sizes(), input.options().dtype(acc_type));
  if (wanted.weight) grad_weight = at::zeros({g.out_channels, rows_g}, input.options().dtype(acc_type));
  if (wanted.offset) grad_offset = at::zeros_like(offset);
  if (wanted.mask) grad_mask = at::zeros_like(mask);
  const auto result = [&]() -> Gradients {
    return in_their_layouts(
        input_, offset_, mask_, weight_,
        {grad_input.defined() ? grad_input.to(dtype) : at::Tensor(), grad_offset, grad_mask,
         grad_weight.defined() ? grad_weight.to(dtype).view(weight_.sizes()) : at::Tensor(),
         grad_bias});
  };
  if (g.batch == 0 || g.out_pixels() == 0 || g.in_channels == 0) return result();
  const int64_t chunk = pixels_per_chunk(g, input.element_size());
  at::Tensor columns, grad_columns;
  if (wanted.weight) columns = at::empty({g.in_channels * g.taps() * chunk}, input.options());
  if (wanted.column_gradient()) {
    grad_columns = at::empty({g.in_channels * g.taps() * chunk}, input.options());
  }
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(),
      "iedvr_modulated_deform_conv2d_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        for (int64_t b = 0; b < g.batch; ++b) {
          const scalar_t* input_b = input[b].const_data_ptr<scalar_t>();
          const scalar_t* offset_b = offset[b].const_data_ptr<scalar_t>();
          const scalar_t* mask_b = mask[b].const_data_ptr<scalar_t>();
          for (int64_t p_begin = 0; p_begin < g.out_pixels(); p_begin += chunk) {
            const int64_t n = std::min(chunk, g.out_pixels() - p_begin);
            const at::Tensor grad_out = grad_output[b].narrow(1, p_begin, n);
            if (wanted.column_gradient()) {
              const at::Tensor grad_cols =
                  grad_columns.narrow(0, 0, g.in_channels * g.taps() * n).view({-1, n});
              for (int64_t grp = 0; grp < groups; ++grp) {
                at::Tensor grad_cols_g = grad_cols.narrow(0, grp * rows_g, rows_g);
                at::mm_out(grad_cols_g, weight.narrow(0, grp * cout_g, cout_g).t(),
                           grad_out.narrow(0, grp * cout_g, cout_g));
              }
              if (wanted.input) {
                deformable_col2im_kernel<scalar_t, acc_t>
                    <<<blocks_for(g.in_channels * g.taps() * n), kThreads, 0, stream>>>(
                        g, grad_cols.const_data_ptr<scalar_t>(), offset_b, mask_b, p_begin, n,
                        grad_input[b].data_ptr<acc_t>());
                C10_CUDA_KERNEL_LAUNCH_CHECK();
              }
              if (wanted.offset || wanted.mask) {
                deformable_coordinate_grad_kernel<scalar_t>
                    <<<blocks_for(g.deformable_groups * g.taps() * n), kThreads, 0, stream>>>(
                        g, grad_cols.const_data_ptr<scalar_t>(), input_b, offset_b, mask_b,
                        p_begin, n, wanted.offset ? grad_offset[b].data_ptr<scalar_t>() : nullptr,
                        wanted.mask ? grad_mask[b].data_ptr<scalar_t>() : nullptr);
                C10_CUDA_KERNEL_LAUNCH_CHECK();
              }
            }
            if (wanted.weight) {
              const at::Tensor cols =
                  columns.narrow(0, 0, g.in_channels * g.taps() * n).view({-1, n});
              deformable_im2col_kernel<scalar_t>
                  <<<blocks_for(g.in_channels * n), kThreads, 0, stream>>>(
                      g, input_b, offset_b, mask_b, p_begin, n, cols.data_ptr<scalar_t>());
              C10_CUDA_KERNEL_LAUNCH_CHECK();
              for (int64_t grp = 0; grp < groups; ++grp) {
                // A chunk can hold a whole frame: sum it in float, not in float16.
                const at::Tensor a = grad_out.narrow(0, grp * cout_g, cout_g);
                const at::Tensor b = cols.narrow(0, grp * rows_g, rows_g).t();
                grad_weight.narrow(0, grp * cout_g, cout_g)
                    .add_(dtype == acc_type ? at::mm(a, b) : at::mm(a, b, acc_type));
              }
            }
          }
        }
      });
  return result();
}

}  // namespace

TORCH_LIBRARY_IMPL(iedvr, CUDA, m) {
  m.impl("modulated_deform_conv2d", &forward_cuda);
  m.impl("modulated_deform_conv2d_backward", &backward_cuda);
}

}  // namespace iedvr
