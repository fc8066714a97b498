// CPU kernels of iedvr::modulated_deform_conv2d: deformable im2col into a cache-sized column buffer,
// then a GEMM per convolution group, so no image-sized im2col buffer is ever allocated.
// Bilinear weights and indices are computed once per (deformable group, tap, pixel) and reused for
// every channel of the group. Sampling accumulates in float (double for float64 inputs).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../dcn.h"

namespace iedvr {
namespace {

// Output pixels per column buffer: about 1 MiB of columns, so that the GEMM reads them from cache.
int64_t pixels_per_chunk(const ConvGeometry& g, int64_t element_size) {
  const int64_t rows = g.in_channels * g.taps();
  const int64_t chunk = ((int64_t{1} << 20) / (rows * element_size)) / 64 * 64;
  return std::min(std::max<int64_t>(chunk, 64), g.out_pixels());
}

// The bilinear corners of tap k of deformable group dg for output pixels [p_begin, p_begin + n),
// with the modulation mask folded into the weights.
template <typename scalar_t, typename acc_t>
void sample_points(const ConvGeometry& g, const scalar_t* offset, const scalar_t* mask, int64_t dg,
                   int64_t k, int64_t p_begin, int64_t n, BilinearCorners<acc_t>* corners,
                   acc_t* modulation) {
  const int64_t out_pixels = g.out_pixels();
  const int64_t ki = k / g.kernel_w, kj = k % g.kernel_w;
  const scalar_t* offset_y = offset + offset_y_channel(g, dg, k) * out_pixels;
  const scalar_t* offset_x = offset_y + out_pixels;
  const scalar_t* mask_k = mask + mask_channel(g, dg, k) * out_pixels;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = p_begin + i;
    const int64_t oy = p / g.out_width, ox = p - oy * g.out_width;
    const acc_t y = static_cast<acc_t>(base_y(g, oy, ki)) + static_cast<acc_t>(offset_y[p]);
    const acc_t x = static_cast<acc_t>(base_x(g, ox, kj)) + static_cast<acc_t>(offset_x[p]);
    corners[i] = bilinear_corners<acc_t>(y, x, g.height, g.width);
    modulation[i] = static_cast<acc_t>(mask_k[p]);
  }
}

template <typename scalar_t, typename acc_t>
inline acc_t gather(const scalar_t* plane, const BilinearCorners<acc_t>& s) {
  return s.weight[0] * static_cast<acc_t>(plane[s.index[0]]) +
         s.weight[1] * static_cast<acc_t>(plane[s.index[1]]) +
         s.weight[2] * static_cast<acc_t>(plane[s.index[2]]) +
         s.weight[3] * static_cast<acc_t>(plane[s.index[3]]);
}

// columns[c * taps + k][i] = mask * bilinear sample of channel c at tap k, output pixel p_begin + i,
// for the channels of deformable groups [dg_begin, dg_end) of one image.
template <typename scalar_t>
void deformable_im2col(const ConvGeometry& g, const scalar_t* input, const scalar_t* offset,
                       const scalar_t* mask, int64_t p_begin, int64_t n, int64_t dg_begin,
                       int64_t dg_end, scalar_t* columns) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t taps = g.taps(), plane = g.in_pixels();
  const int64_t cpg = g.channels_per_deformable_group();
  std::vector<BilinearCorners<acc_t>> corners(n);
  std::vector<acc_t> modulation(n);
  for (int64_t dg = dg_begin; dg < dg_end; ++dg) {
    for (int64_t k = 0; k < taps; ++k) {
      sample_points(g, offset, mask, dg, k, p_begin, n, corners.data(), modulation.data());
      for (int64_t c = dg * cpg; c < (dg + 1) * cpg; ++c) {
        const scalar_t* src = input + c * plane;
        scalar_t* dst = columns + (c * taps + k) * n;
        for (int64_t i = 0; i < n; ++i) {
          dst[i] = static_cast<scalar_t>(modulation[i] * gather(src, corners[i]));
        }
      }
    }
  }
}

at::Tensor forward_cpu(const at::Tensor& input_, const at::Tensor& offset_, const at::Tensor& mask_,
                       const at::Tensor& weight_, const std::optional<at::Tensor>& bias,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                       int64_t groups, int64_t deformable_groups) {
  const ConvGeometry g = check_modulated_deform_conv2d_args(
      input_, offset_, mask_, weight_, bias, stride, padding, dilation, groups,
      deformable_groups);
  // The kernel's own at:: calls (GEMMs, sums) are not part of the autograd graph.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::Tensor input = input_.contiguous(), offset = offset_.contiguous(),
                   mask = mask_.contiguous();
  const int64_t cout_g = g.out_channels / groups, cin_g = g.in_channels / groups;
  const at::Tensor weight = weight_.contiguous().view({g.out_channels, cin_g * g.taps()});
  const bool has_bias = bias.has_value() && bias->defined();

  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_height, g.out_width},
                                input.options());
  if (output.numel() == 0) return output;
  const at::Tensor output_flat = output.view({g.batch, g.out_channels, g.out_pixels()});
  const int64_t chunk = pixels_per_chunk(g, input.element_size());
  const int64_t chunks_per_image = (g.out_pixels() + chunk - 1) / chunk;

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "iedvr_modulated_deform_conv2d_cpu", [&] {
        // Each task owns whole chunks (im2col, then GEMM single-threaded inside the task).
        at::parallel_for(0, g.batch * chunks_per_image, 1, [&](int64_t begin, int64_t end) {
          at::Tensor columns = at::empty({g.in_channels * g.taps() * chunk}, input.options());
          for (int64_t task = begin; task < end; ++task) {
            const int64_t b = task / chunks_per_image;
            const int64_t p_begin = (task % chunks_per_image) * chunk;
            const int64_t n = std::min(chunk, g.out_pixels() - p_begin);
            const at::Tensor cols =
                columns.narrow(0, 0, g.in_channels * g.taps() * n).view({-1, n});
            deformable_im2col<scalar_t>(
                g, input[b].const_data_ptr<scalar_t>(), offset[b].const_data_ptr<scalar_t>(),
                mask[b].const_data_ptr<scalar_t>(), p_begin, n, 0, g.deformable_groups,
                cols.data_ptr<scalar_t>());
            const at::Tensor out = output_flat[b].narrow(1, p_begin, n);
            for (int64_t grp = 0; grp < groups; ++grp) {
              at::Tensor out_g = out.narrow(0, grp * cout_g, cout_g);
              at::mm_out(out_g, weight.narrow(0, grp * cout_g, cout_g),
                         cols.narrow(0, grp * cin_g * g.taps(), cin_g * g.taps()));
            }
            if (has_bias) out.add_(bias->view({-1, 1}));
          }
        });
      });
  return output;
}

// One pass over the samples of deformable group dg for pixels [p_begin, p_begin + n) of one image:
// rebuilds the column rows of the group (for grad_weight), scatters grad_columns into grad_input,
// and writes grad_offset and grad_mask of those pixels.
template <typename scalar_t>
void backward_sampling_pass(const ConvGeometry& g, const scalar_t* input, const scalar_t* offset,
                            const scalar_t* mask, const scalar_t* grad_columns, int64_t p_begin,
                            int64_t n, int64_t dg, scalar_t* columns,
                            at::opmath_type<scalar_t>* grad_input, scalar_t* grad_offset,
                            scalar_t* grad_mask) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t taps = g.taps(), plane = g.in_pixels(), out_pixels = g.out_pixels();
  const int64_t cpg = g.channels_per_deformable_group();
  std::vector<BilinearCorners<acc_t>> corners(n);
  std::vector<acc_t> modulation(n), sum_dy(n), sum_dx(n), sum_value(n);
  for (int64_t k = 0; k < taps; ++k) {
    sample_points(g, offset, mask, dg, k, p_begin, n, corners.data(), modulation.data());
    std::fill(sum_dy.begin(), sum_dy.end(), acc_t(0));
    std::fill(sum_dx.begin(), sum_dx.end(), acc_t(0));
    std::fill(sum_value.begin(), sum_value.end(), acc_t(0));
    for (int64_t c = dg * cpg; c < (dg + 1) * cpg; ++c) {
      const scalar_t* src = input + c * plane;
      const scalar_t* grad_col = grad_columns + (c * taps + k) * n;
      scalar_t* col = columns + (c * taps + k) * n;
      acc_t* grad_src = grad_input + c * plane;
      for (int64_t i = 0; i < n; ++i) {
        const BilinearCorners<acc_t>& s = corners[i];
        const acc_t gc = static_cast<acc_t>(grad_col[i]);
        const acc_t v[4] = {static_cast<acc_t>(src[s.index[0]]), static_cast<acc_t>(src[s.index[1]]),
                            static_cast<acc_t>(src[s.index[2]]), static_cast<acc_t>(src[s.index[3]])};
        const acc_t value = s.weight[0] * v[0] + s.weight[1] * v[1] + s.weight[2] * v[2] +
                            s.weight[3] * v[3];
        col[i] = static_cast<scalar_t>(modulation[i] * value);
        const acc_t gm = gc * modulation[i];
        for (int j = 0; j < 4; ++j) grad_src[s.index[j]] += gm * s.weight[j];
        sum_value[i] += gc * value;
        sum_dy[i] += gm * (s.dweight_dy[0] * v[0] + s.dweight_dy[1] * v[1] +
                           s.dweight_dy[2] * v[2] + s.dweight_dy[3] * v[3]);
        sum_dx[i] += gm * (s.dweight_dx[0] * v[0] + s.dweight_dx[1] * v[1] +
                           s.dweight_dx[2] * v[2] + s.dweight_dx[3] * v[3]);
      }
    }
    scalar_t* grad_offset_y = grad_offset + offset_y_channel(g, dg, k) * out_pixels + p_begin;
    scalar_t* grad_offset_x = grad_offset_y + out_pixels;
    scalar_t* grad_mask_k = grad_mask + mask_channel(g, dg, k) * out_pixels + p_begin;
    for (int64_t i = 0; i < n; ++i) {
      grad_offset_y[i] = static_cast<scalar_t>(sum_dy[i]);
      grad_offset_x[i] = static_cast<scalar_t>(sum_dx[i]);
      grad_mask_k[i] = static_cast<scalar_t>(sum_value[i]);
    }
  }
}

Gradients backward_cpu(const at::Tensor& grad_output_, const at::Tensor& input_,
                       const at::Tensor& offset_, const at::Tensor& mask_,
                       const at::Tensor& weight_, const std::optional<at::Tensor>& bias,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                       int64_t groups, int64_t deformable_groups) {
  const ConvGeometry g = check_modulated_deform_conv2d_backward_args(
      grad_output_, input_, offset_, mask_, weight_, bias, stride, padding, dilation, groups,
      deformable_groups);
  // The kernel's own at:: calls (GEMMs, sums) are not part of the autograd graph.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::Tensor input = input_.contiguous(), offset = offset_.contiguous(),
                   mask = mask_.contiguous();
  const at::Tensor grad_output =
      grad_output_.contiguous().view({g.batch, g.out_channels, g.out_pixels()});
  const int64_t cout_g = g.out_channels / groups, cin_g = g.in_channels / groups;
  const int64_t rows_g = cin_g * g.taps();
  const at::Tensor weight = weight_.contiguous().view({g.out_channels, rows_g});
  const at::ScalarType acc_type = at::toOpMathType(input.scalar_type());

  // Scattered sums into grad_input and the chunk sums of grad_weight stay in float32 (float64).
  at::Tensor grad_input = at::zeros(input.sizes(), input.options().dtype(acc_type));
  at::Tensor grad_weight = at::zeros({g.out_channels, rows_g}, input.options().dtype(acc_type));
  at::Tensor grad_offset = at::zeros_like(offset);
  at::Tensor grad_mask = at::zeros_like(mask);
  const at::Tensor grad_bias = grad_output.sum({0, 2}, false, acc_type).to(input.scalar_type());
  if (g.batch == 0 || g.out_pixels() == 0 || g.in_channels == 0) {
    return {grad_input.to(input.scalar_type()), grad_offset, grad_mask,
            grad_weight.to(input.scalar_type()).view(weight_.sizes()), grad_bias};
  }

  const int64_t chunk = pixels_per_chunk(g, input.element_size());
  at::Tensor columns = at::empty({g.in_channels * g.taps() * chunk}, input.options());
  at::Tensor grad_columns = at::empty({g.in_channels * g.taps() * chunk}, input.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "iedvr_modulated_deform_conv2d_backward_cpu",
      [&] {
        using acc_t = at::opmath_type<scalar_t>;
        // Chunks run one after another because their samples scatter into overlapping parts of
        // grad_input; inside a chunk the GEMMs use all threads and the sampling pass runs one
        // deformable group per task (each owns its channels of grad_input).
        for (int64_t b = 0; b < g.batch; ++b) {
          for (int64_t p_begin = 0; p_begin < g.out_pixels(); p_begin += chunk) {
            const int64_t n = std::min(chunk, g.out_pixels() - p_begin);
            const at::Tensor cols = columns.narrow(0, 0, g.in_channels * g.taps() * n).view({-1, n});
            const at::Tensor grad_cols =
                grad_columns.narrow(0, 0, g.in_channels * g.taps() * n).view({-1, n});
            const at::Tensor grad_out = grad_output[b].narrow(1, p_begin, n);
            for (int64_t grp = 0; grp < groups; ++grp) {
              at::Tensor grad_cols_g = grad_cols.narrow(0, grp * rows_g, rows_g);
              at::mm_out(grad_cols_g, weight.narrow(0, grp * cout_g, cout_g).t(),
                         grad_out.narrow(0, grp * cout_g, cout_g));
            }
            at::parallel_for(0, g.deformable_groups, 1, [&](int64_t dg_begin, int64_t dg_end) {
              for (int64_t dg = dg_begin; dg < dg_end; ++dg) {
                backward_sampling_pass<scalar_t>(
                    g, input[b].const_data_ptr<scalar_t>(), offset[b].const_data_ptr<scalar_t>(),
                    mask[b].const_data_ptr<scalar_t>(), grad_cols.const_data_ptr<scalar_t>(),
                    p_begin, n, dg, cols.data_ptr<scalar_t>(), grad_input[b].data_ptr<acc_t>(),
                    grad_offset[b].data_ptr<scalar_t>(), grad_mask[b].data_ptr<scalar_t>());
              }
            });
            for (int64_t grp = 0; grp < groups; ++grp) {
              const at::Tensor partial =
                  at::mm(grad_out.narrow(0, grp * cout_g, cout_g),
                         cols.narrow(0, grp * rows_g, rows_g).t());
              grad_weight.narrow(0, grp * cout_g, cout_g).add_(partial);
            }
          }
        }
      });
  return {grad_input.to(input.scalar_type()), grad_offset, grad_mask,
          grad_weight.to(input.scalar_type()).view(weight_.sizes()), grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(iedvr, CPU, m) {
  m.impl("modulated_deform_conv2d", &forward_cpu);
  m.impl("modulated_deform_conv2d_backward", &backward_cpu);
}

}  // namespace iedvr
