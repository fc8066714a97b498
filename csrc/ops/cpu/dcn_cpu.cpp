// CPU kernels of iedvr::modulated_deform_conv2d.
//
// The input is read channels-last ([H, W, C]), so the four bilinear corners of a sample are four
// contiguous runs of channels: a deformable group's channels are gathered with vector loads
// and multiply-adds, and the bilinear weights are computed once per (group, tap, pixel).
// Samples go into a cache-sized column buffer laid out [pixel, group, tap, channel], which one
// GEMM per convolution group turns into output, so no image-sized im2col buffer ever exists.
// Sampling accumulates in float (double for float64 inputs). Offsets and mask are read in any
// layout, and the output takes the input's memory format, as at::conv2d's does: in the network
// everything is channels-last, and transposing image-sized tensors cost as much as the sampling.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "../dcn.h"

namespace iedvr {

namespace cpu_baseline {
#include "sampling_loops.h"
}  // namespace cpu_baseline

// The same loops compiled for AVX2+FMA (8 floats an instruction) and for AVX-512 (16), chosen
// at run time from the CPU's features (sampling_loops), so that one library runs on every x86-64
// CPU.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define IEDVR_HAVE_X86_LOOPS 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace cpu_avx2 {
#include "sampling_loops.h"
}  // namespace cpu_avx2
#pragma GCC pop_options
#pragma GCC push_options
// GCC's generic tuning keeps vectors at 256 bits even where AVX-512 is allowed.
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,prefer-vector-width=512")
namespace cpu_avx512 {
#include "sampling_loops.h"
}  // namespace cpu_avx512
#pragma GCC pop_options
#endif

namespace {

enum class Loops { baseline = 0, avx2 = 1, avx512 = 2 };
constexpr const char* kLoopNames[] = {"baseline", "avx2", "avx512"};

Loops best_loops_for_this_cpu() {
#ifdef IEDVR_HAVE_X86_LOOPS
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return Loops::avx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Loops::avx2;
#endif
  return Loops::baseline;
}

// Which loops a pass takes: IEDVR_CPU_ISA (baseline, avx2 or avx512) names them where the CPU
// runs them (else the best it has below), so that the tests run every build this CPU can and CI's
// lesser-CPU leg runs AVX2's. Unset, each pass takes the build measured fastest for it on a CPU
// with AVX-512 (benchmarks/bench_dcn_loops.py, docs/operator.md): the backward pass AVX-512's,
// the forward pass AVX2's, which was as fast or faster. Read at every call, so that a process can
// compare the builds.
enum class Pass { forward, backward };
Loops sampling_loops(Pass pass) {
  static const Loops best = best_loops_for_this_cpu();
  const char* chosen = std::getenv("IEDVR_CPU_ISA");
  if (chosen == nullptr || *chosen == '\0') {
    return pass == Pass::forward ? std::min(best, Loops::avx2) : best;
  }
  for (const Loops loops : {Loops::baseline, Loops::avx2, Loops::avx512}) {
    if (std::string_view(chosen) == kLoopNames[static_cast<int>(loops)]) return std::min(best, loops);
  }
  TORCH_CHECK(false, "IEDVR_CPU_ISA must be baseline, avx2 or avx512 (the build of the deformable "
                     "convolution's CPU loops to use), got \"", chosen, "\"");
}

// The loops the forward and the backward pass take now (the operator iedvr::cpu_sampling_loops,
// for the tests, the benchmark and the test report's header).
std::vector<std::string> sampling_loops_names() {
  return {kLoopNames[static_cast<int>(sampling_loops(Pass::forward))],
          kLoopNames[static_cast<int>(sampling_loops(Pass::backward))]};
}

template <typename scalar_t>
void sample_columns(const ConvGeometry& g, const scalar_t* input, const scalar_t* offset,
                    const scalar_t* mask, int64_t p_begin, int64_t n, scalar_t* columns) {
  switch (sampling_loops(Pass::forward)) {
#ifdef IEDVR_HAVE_X86_LOOPS
    case Loops::avx512:
      return cpu_avx512::sample_columns(g, input, offset, mask, p_begin, n, columns);
    case Loops::avx2:
      return cpu_avx2::sample_columns(g, input, offset, mask, p_begin, n, columns);
#endif
    default:
      return cpu_baseline::sample_columns(g, input, offset, mask, p_begin, n, columns);
  }
}

template <typename scalar_t>
void backward_sampling_pass(const ConvGeometry& g, const scalar_t* input, const scalar_t* offset,
                            const scalar_t* mask, const scalar_t* grad_columns, int64_t p_begin,
                            int64_t n, int64_t dg, scalar_t* columns,
                            at::opmath_type<scalar_t>* grad_input, scalar_t* grad_offset,
                            scalar_t* grad_mask) {
  switch (sampling_loops(Pass::backward)) {
#ifdef IEDVR_HAVE_X86_LOOPS
    case Loops::avx512:
      return cpu_avx512::backward_sampling_pass(g, input, offset, mask, grad_columns, p_begin, n,
                                                dg, columns, grad_input, grad_offset, grad_mask);
    case Loops::avx2:
      return cpu_avx2::backward_sampling_pass(g, input, offset, mask, grad_columns, p_begin, n,
                                              dg, columns, grad_input, grad_offset, grad_mask);
#endif
    default:
      return cpu_baseline::backward_sampling_pass(g, input, offset, mask, grad_columns, p_begin,
                                                  n, dg, columns, grad_input, grad_offset,
                                                  grad_mask);
  }
}

// Output pixels per column buffer: about 384 KiB of columns, so that a chunk's columns, their
// 16-bit copy, its planar offsets and mask and the sampling plan stay in L2 together while the
// GEMM reads them. With 1 MiB they did not: a 64-channel L1 DCN at 180x320 took 32-35 ms in
// bfloat16 and 39 in float32, against 28-30 and 31 with 256 to 512 KiB (128 KiB: 37 ms, 2 MiB:
// 47; backward unchanged within noise).
// The chunks of an image are made equal (1024 pixels: four of 256, not three of 336 and one of 16).
int64_t pixels_per_chunk(const ConvGeometry& g, int64_t element_size) {
  const int64_t row = g.in_channels * g.taps() * element_size;
  const int64_t most = std::max<int64_t>(((int64_t{384} << 10) / row) / 16 * 16, 16);
  const int64_t chunks = std::max<int64_t>((g.out_pixels() + most - 1) / most, 1);
  const int64_t chunk = ((g.out_pixels() + chunks - 1) / chunks + 15) / 16 * 16;
  return std::min(chunk, g.out_pixels());
}

// The weight as [C_out, taps * C_in / groups], matching the column layout.
at::Tensor weight_tap_major(const at::Tensor& weight) {
  return weight.permute({0, 2, 3, 1}).contiguous().view({weight.size(0), -1});
}

// Offsets or mask with their pixels at one stride: planar and channels-last tensors are; other
// layouts are made contiguous.
at::Tensor with_strided_pixels(const at::Tensor& t) {
  return t.size(2) == 1 || t.stride(2) == t.size(3) * t.stride(3) ? t : t.contiguous();
}

// Channels [0, C) of output pixels [p_begin, p_begin + n) of one image (t as with_strided_pixels
// returns it, b its batch index) as planar rows of n in the sampling type: dst[c * n + i], the
// layout plan_samples reads. A chunk at a time, so that a transposition from channels-last, and
// the conversion from 16 bits, stay in cache.
template <typename dst_t>
void gather_planar(const at::Tensor& t, int64_t b, int64_t p_begin, int64_t n, dst_t* dst) {
  const int64_t channels = t.size(1), channel_stride = t.stride(1), pixel_stride = t.stride(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "gather_planar", [&] {
    const scalar_t* src = t.const_data_ptr<scalar_t>() + b * t.stride(0) + p_begin * pixel_stride;
    if (channel_stride < pixel_stride) {  // channels-last: each pixel's channels are one run
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t c = 0; c < channels; ++c) {
          dst[c * n + i] = static_cast<dst_t>(src[i * pixel_stride + c * channel_stride]);
        }
      }
    } else {
      for (int64_t c = 0; c < channels; ++c) {
        for (int64_t i = 0; i < n; ++i) {
          dst[c * n + i] = static_cast<dst_t>(src[c * channel_stride + i * pixel_stride]);
        }
      }
    }
  });
}

at::Tensor forward_cpu(const at::Tensor& input_, const at::Tensor& offset_, const at::Tensor& mask_,
                       const at::Tensor& weight_, const std::optional<at::Tensor>& bias,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                       int64_t groups, int64_t deformable_groups) {
  const ConvGeometry g = check_modulated_deform_conv2d_args(
      input_, offset_, mask_, weight_, bias, stride, padding, dilation, groups,
      deformable_groups);
  TORCH_CHECK(g.in_pixels() * g.in_channels <= std::numeric_limits<int32_t>::max(),
              "iedvr::modulated_deform_conv2d: an input image of ", g.height, "x", g.width, "x",
              g.in_channels, " elements is too large for the CPU kernel (at most 2^31 - 1); "
              "process it in tiles");
  // The kernel's own at:: calls (GEMMs, sums) are neither part of the autograd graph nor autocast.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  // float16 and bfloat16 are sampled in float32 (their conversions would keep the sampling loops
  // from vectorising) and multiplied in their own type (the fast GEMM on CPUs that have one).
  const at::ScalarType dtype = input_.scalar_type(), sampling_type = at::toOpMathType(dtype);
  const at::Tensor input = input_.permute({0, 2, 3, 1}).contiguous().to(sampling_type);
  const at::Tensor offset = with_strided_pixels(offset_), mask = with_strided_pixels(mask_);
  const at::Tensor weight = weight_tap_major(weight_);
  const int64_t cout_g = g.out_channels / groups, rows_g = g.in_channels / groups * g.taps();
  const bool has_bias = bias.has_value() && bias->defined();

  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_height, g.out_width},
                                input_.options().memory_format(input_.suggest_memory_format()));
  if (output.numel() == 0) return output;
  // Each image's output as [pixel, channel] rows, whatever its layout (for planar output a
  // transposed view): a chunk's GEMMs write rows of it.
  const at::Tensor output_rows =
      output.permute({0, 2, 3, 1}).view({g.batch, g.out_pixels(), g.out_channels});
  const int64_t chunk = pixels_per_chunk(g, input.element_size());
  const int64_t chunks_per_image = (g.out_pixels() + chunk - 1) / chunk;
  const int64_t row = g.in_channels * g.taps();

  AT_DISPATCH_FLOATING_TYPES(sampling_type, "iedvr_modulated_deform_conv2d_cpu", [&] {
    // Each task owns whole chunks (sampling, then its GEMMs single-threaded). OpenMP workers do
    // not inherit the caller's dispatch state (autograd exclusion, inference mode), which the
    // GEMMs' dispatch needs: hand it over explicitly.
    const at::ThreadLocalState caller_state;
    at::parallel_for(0, g.batch * chunks_per_image, 1, [&](int64_t begin, int64_t end) {
      const at::ThreadLocalStateGuard same_state(caller_state);
      at::Tensor samples = at::empty({chunk * row}, input.options());
      at::Tensor columns = dtype == sampling_type ? samples : at::empty({chunk * row}, output.options());
      std::vector<scalar_t> chunk_offset(offset.size(1) * chunk), chunk_mask(mask.size(1) * chunk);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / chunks_per_image;
        const int64_t p_begin = (task % chunks_per_image) * chunk;
        const int64_t n = std::min(chunk, g.out_pixels() - p_begin);
        gather_planar<scalar_t>(offset, b, p_begin, n, chunk_offset.data());
        gather_planar<scalar_t>(mask, b, p_begin, n, chunk_mask.data());
        const at::Tensor sampled = samples.narrow(0, 0, n * row).view({n, row});
        sample_columns<scalar_t>(g, input[b].const_data_ptr<scalar_t>(), chunk_offset.data(),
                                 chunk_mask.data(), p_begin, n, sampled.data_ptr<scalar_t>());
        at::Tensor cols = columns.narrow(0, 0, n * row).view({n, row});
        if (dtype != sampling_type) cols.copy_(sampled);
        const at::Tensor out = output_rows[b].narrow(0, p_begin, n);  // [n, C_out]
        for (int64_t grp = 0; grp < groups; ++grp) {
          at::Tensor out_g = out.narrow(1, grp * cout_g, cout_g);
          at::mm_out(out_g, cols.narrow(1, grp * rows_g, rows_g),
                     weight.narrow(0, grp * cout_g, cout_g).t());
        }
        if (has_bias) out.add_(*bias);
      }
    });
  });
  return output;
}

Gradients backward_cpu(const at::Tensor& grad_output_, const at::Tensor& input_,
                       const at::Tensor& offset_, const at::Tensor& mask_,
                       const at::Tensor& weight_, const std::optional<at::Tensor>& bias,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                       int64_t groups, int64_t deformable_groups,
                       std::array<bool, 5> output_mask) {
  const ConvGeometry g = check_modulated_deform_conv2d_backward_args(
      grad_output_, input_, offset_, mask_, weight_, bias, stride, padding, dilation, groups,
      deformable_groups);
  const GradientMask wanted(output_mask);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  // Each image's output gradient as [pixel, channel] rows, a view for channels-last and planar
  // tensors alike (the GEMMs take either as it is), so that neither is copied to the other.
  const at::Tensor grad_output =
      grad_output_.permute({0, 2, 3, 1}).reshape({g.batch, g.out_pixels(), g.out_channels});
  const at::ScalarType dtype = input_.scalar_type(), acc_type = at::toOpMathType(dtype);
  const at::Tensor grad_bias =
      wanted.bias ? grad_output.sum({0, 1}, false, acc_type).to(dtype) : at::Tensor();
  if (!wanted.sampling()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), grad_bias};

  const at::Tensor input = input_.permute({0, 2, 3, 1}).contiguous();
  const at::Tensor offset = offset_.contiguous(), mask = mask_.contiguous();
  const int64_t cout_g = g.out_channels / groups, rows_g = g.in_channels / groups * g.taps();
  const int64_t row = g.in_channels * g.taps();
  const at::Tensor weight = weight_tap_major(weight_);

  // Scattered sums into grad_input and the chunk sums of grad_weight stay in float32 (float64).
  at::Tensor grad_input, grad_weight, grad_offset, grad_mask;
  if (wanted.input) grad_input = at::zeros(input.sizes(), input.options().dtype(acc_type));
  if (wanted.weight) grad_weight = at::zeros({g.out_channels, rows_g}, input.options().dtype(acc_type));
  if (wanted.offset) grad_offset = at::zeros_like(offset);
  if (wanted.mask) grad_mask = at::zeros_like(mask);
  const int64_t chunk = pixels_per_chunk(g, input.element_size());

  if (g.batch > 0 && g.out_pixels() > 0 && g.in_channels > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, dtype, "iedvr_modulated_deform_conv2d_backward_cpu", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          // One chunk of image b: the column gradient (GEMM), the sampling pass (over the
          // deformable groups, in parallel when `groups_in_parallel`: each owns its channels of
          // grad_input), the weight gradient's share added to `weight_sum`.
          const auto backward_chunk = [&](int64_t b, int64_t p_begin, int64_t n, at::Tensor& columns,
                                          at::Tensor& grad_columns, at::Tensor& weight_sum,
                                          bool groups_in_parallel) {
            // Null where a gradient is not wanted: the sampling pass skips that part of its work.
            acc_t* grad_input_b = wanted.input ? grad_input[b].data_ptr<acc_t>() : nullptr;
            scalar_t* grad_offset_b = wanted.offset ? grad_offset[b].data_ptr<scalar_t>() : nullptr;
            scalar_t* grad_mask_b = wanted.mask ? grad_mask[b].data_ptr<scalar_t>() : nullptr;
            const at::Tensor cols = columns.narrow(0, 0, n * row).view({n, row});
            const at::Tensor grad_cols = grad_columns.narrow(0, 0, n * row).view({n, row});
            const at::Tensor grad_out = grad_output[b].narrow(0, p_begin, n);  // [n, C_out]
            for (int64_t grp = 0; wanted.column_gradient() && grp < groups; ++grp) {
              at::Tensor grad_cols_g = grad_cols.narrow(1, grp * rows_g, rows_g);
              at::mm_out(grad_cols_g, grad_out.narrow(1, grp * cout_g, cout_g),
                         weight.narrow(0, grp * cout_g, cout_g));
            }
            const auto sampling_pass = [&](int64_t dg_begin, int64_t dg_end) {
              for (int64_t dg = dg_begin; dg < dg_end; ++dg) {
                backward_sampling_pass<scalar_t>(
                    g, input[b].const_data_ptr<scalar_t>(), offset[b].const_data_ptr<scalar_t>(),
                    mask[b].const_data_ptr<scalar_t>(), grad_cols.const_data_ptr<scalar_t>(),
                    p_begin, n, dg, wanted.weight ? cols.data_ptr<scalar_t>() : nullptr,
                    grad_input_b, grad_offset_b, grad_mask_b);
              }
            };
            if (groups_in_parallel) {
              at::parallel_for(0, g.deformable_groups, 1, sampling_pass);
            } else {
              sampling_pass(0, g.deformable_groups);
            }
            for (int64_t grp = 0; wanted.weight && grp < groups; ++grp) {
              weight_sum.narrow(0, grp * cout_g, cout_g)
                  .add_(at::mm(grad_out.narrow(1, grp * cout_g, cout_g).t(),
                               cols.narrow(1, grp * rows_g, rows_g)));
            }
          };
          const auto buffer = [&] { return at::empty({chunk * row}, input.options()); };
          if (g.batch > 1 && g.batch >= at::get_num_threads()) {
            // Images in parallel: their samples scatter into their own grad_input, so each task
            // owns whole images (chunks, GEMMs and sampling single-threaded, as the forward's
            // tasks), with a weight gradient of its own, added in the images' order afterwards
            // (the same sum whatever the threads' timing). One parallel region per call instead
            // of three per chunk: at training sizes (a batch of 32x32 images) their start-up and
            // barriers cost more than the work.
            const at::ThreadLocalState caller_state;
            std::vector<at::Tensor> weight_sums(g.batch);  // at each task's first image
            at::parallel_for(0, g.batch, 1, [&](int64_t begin, int64_t end) {
              const at::ThreadLocalStateGuard same_state(caller_state);
              at::Tensor columns = buffer(), grad_columns = buffer();
              at::Tensor weight_sum = wanted.weight ? at::zeros_like(grad_weight) : at::Tensor();
              for (int64_t b = begin; b < end; ++b) {
                for (int64_t p_begin = 0; p_begin < g.out_pixels(); p_begin += chunk) {
                  const int64_t n = std::min(chunk, g.out_pixels() - p_begin);
                  backward_chunk(b, p_begin, n, columns, grad_columns, weight_sum, false);
                }
              }
              weight_sums[begin] = weight_sum;
            });
            for (const at::Tensor& weight_sum : weight_sums) {
              if (weight_sum.defined()) grad_weight.add_(weight_sum);
            }
          } else {
            // One image at a time, its chunks one after another (their samples scatter into
            // overlapping parts of grad_input); inside a chunk the GEMMs use all threads and the
            // sampling pass runs one deformable group per task.
            at::Tensor columns = buffer(), grad_columns = buffer();
            for (int64_t b = 0; b < g.batch; ++b) {
              for (int64_t p_begin = 0; p_begin < g.out_pixels(); p_begin += chunk) {
                const int64_t n = std::min(chunk, g.out_pixels() - p_begin);
                backward_chunk(b, p_begin, n, columns, grad_columns, grad_weight, true);
              }
            }
          }
        });
  }
  // The sums were made channels-last: for a channels-last input (the network's) no transposition.
  if (grad_input.defined()) grad_input = grad_input.permute({0, 3, 1, 2}).to(dtype);
  if (grad_weight.defined()) {
    grad_weight = grad_weight.view({g.out_channels, g.kernel_h, g.kernel_w, g.in_channels / groups})
                      .permute({0, 3, 1, 2})
                      .to(dtype);
  }
  return in_their_layouts(input_, offset_, mask_, weight_,
                          {grad_input, grad_offset, grad_mask, grad_weight, grad_bias});
}

}  // namespace

TORCH_LIBRARY_IMPL(iedvr, CPU, m) {
  m.impl("modulated_deform_conv2d", &forward_cpu);
  m.impl("modulated_deform_conv2d_backward", &backward_cpu);
}

TORCH_LIBRARY_FRAGMENT(iedvr, m) { m.def("cpu_sampling_loops() -> str[]", &sampling_loops_names); }

}  // namespace iedvr
