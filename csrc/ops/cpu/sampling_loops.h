// The hot loops of the CPU kernels (sampling, blending, scattering), written once and compiled
// twice by dcn_cpu.cpp: for the x86-64 baseline and for AVX2+FMA, chosen at run time.
// Deliberately no include guard and no includes: it is included inside a namespace.
// A run of channels [begin, end) of one deformable group that lies in one convolution group,
// and where the run starts in a column-buffer row ([group, tap, channel in group]).
struct ChannelRun {
  int64_t begin, end;
  int64_t column_start(const ConvGeometry& g, int64_t k) const {
    const int64_t per_group = g.in_channels / g.groups, grp = begin / per_group;
    return (grp * g.taps() + k) * per_group + (begin - grp * per_group);
  }
};

std::vector<ChannelRun> channel_runs(const ConvGeometry& g, int64_t dg) {
  const int64_t cpg = g.channels_per_deformable_group(), per_group = g.in_channels / g.groups;
  std::vector<ChannelRun> runs;
  for (int64_t c = dg * cpg; c < (dg + 1) * cpg;) {
    const int64_t end = std::min((dg + 1) * cpg, (c / per_group + 1) * per_group);
    runs.push_back({c, end});
    c = end;
  }
  return runs;
}

// Bilinear corners of tap k of deformable group dg at output pixels [p_begin, p_begin + n), with
// indices scaled to channels-last element offsets.
template <typename scalar_t, typename acc_t>
void sample_points(const ConvGeometry& g, const scalar_t* offset, const scalar_t* mask, int64_t dg,
                   int64_t k, int64_t p_begin, int64_t n, BilinearCorners<acc_t>* corners,
                   acc_t* modulation) {
  const int64_t out_pixels = g.out_pixels();
  const int64_t ki = k / g.kernel_w, kj = k % g.kernel_w;
  const scalar_t* offset_y = offset + offset_y_channel(g, dg, k) * out_pixels;
  const scalar_t* offset_x = offset_y + out_pixels;
  const scalar_t* mask_k = mask + mask_channel(g, dg, k) * out_pixels;
  // Walk the output row by row instead of dividing every pixel index.
  int64_t oy = p_begin / g.out_width, ox = p_begin % g.out_width;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = p_begin + i;
    const acc_t y = static_cast<acc_t>(base_y(g, oy, ki)) + static_cast<acc_t>(offset_y[p]);
    const acc_t x = static_cast<acc_t>(base_x(g, ox, kj)) + static_cast<acc_t>(offset_x[p]);
    BilinearCorners<acc_t> s = bilinear_corners<acc_t>(y, x, g.height, g.width);
    for (int j = 0; j < 4; ++j) s.index[j] *= g.in_channels;
    corners[i] = s;
    modulation[i] = static_cast<acc_t>(mask_k[p]);
    if (++ox == g.out_width) {
      ox = 0;
      ++oy;
    }
  }
}

// The bilinear corners of `count` consecutive output pixels of one row (offsets, mask and outputs
// already advanced to the first): the channels-last element offset of each corner and its weight
// with the mask folded in. Same rules as bilinear_corners() in sampling.h, but branch-free with
// 32-bit arithmetic so that the loop vectorises (with -fno-trapping-math): the backward pass uses
// bilinear_corners(), and the tests compare both against the reference.
template <typename scalar_t, typename acc_t>
void plan_row(int32_t count, acc_t y_base, acc_t x_base, acc_t x_step, int32_t h, int32_t w,
              int32_t c, const scalar_t* __restrict__ offset_y,
              const scalar_t* __restrict__ offset_x, const scalar_t* __restrict__ mask,
              int32_t* __restrict__ index0, int32_t* __restrict__ index1,
              int32_t* __restrict__ index2, int32_t* __restrict__ index3,
              acc_t* __restrict__ weight0, acc_t* __restrict__ weight1,
              acc_t* __restrict__ weight2, acc_t* __restrict__ weight3) {
  const acc_t height = static_cast<acc_t>(h), width = static_cast<acc_t>(w);
  const int32_t row_stride = w * c;
  for (int32_t t = 0; t < count; ++t) {
    const acc_t y = y_base + static_cast<acc_t>(offset_y[t]);
    const acc_t x = x_base + x_step * static_cast<acc_t>(t) + static_cast<acc_t>(offset_x[t]);
    // Non-short-circuit & and unconditional loads keep the loop free of branches.
    const bool inside = (y > -1) & (y < height) & (x > -1) & (x < width);  // false for NaN
    const acc_t ys = inside ? y : acc_t(0), xs = inside ? x : acc_t(0);
    const int32_t y0 = floor_above_minus_one(ys), x0 = floor_above_minus_one(xs);
    const acc_t ly = ys - static_cast<acc_t>(y0), lx = xs - static_cast<acc_t>(x0);
    const acc_t mask_value = static_cast<acc_t>(mask[t]);
    const acc_t m = inside ? mask_value : acc_t(0);
    const acc_t wy0 = y0 >= 0 ? (1 - ly) * m : acc_t(0);
    const acc_t wy1 = y0 + 1 < h ? ly * m : acc_t(0);
    const acc_t wx0 = x0 >= 0 ? 1 - lx : acc_t(0);
    const acc_t wx1 = x0 + 1 < w ? lx : acc_t(0);
    const int32_t ry0 = std::max(y0, 0) * row_stride, ry1 = std::min(y0 + 1, h - 1) * row_stride;
    const int32_t cx0 = std::max(x0, 0) * c, cx1 = std::min(x0 + 1, w - 1) * c;
    index0[t] = ry0 + cx0;
    index1[t] = ry0 + cx1;
    index2[t] = ry1 + cx0;
    index3[t] = ry1 + cx1;
    weight0[t] = wy0 * wx0;
    weight1[t] = wy0 * wx1;
    weight2[t] = wy1 * wx0;
    weight3[t] = wy1 * wx1;
  }
}

// Where tap k of deformable group dg samples for output pixels [p_begin, p_begin + n): corner
// offsets and weights stored corner by corner (index[j * n + i]). `offset` and `mask` hold those
// pixels' values as planar rows of n (see gather_planar in dcn_cpu.cpp): channel c of pixel
// p_begin + i at [c * n + i].
template <typename scalar_t, typename acc_t>
void plan_samples(const ConvGeometry& g, const scalar_t* offset, const scalar_t* mask, int64_t dg,
                  int64_t k, int64_t p_begin, int64_t n, int32_t* index, acc_t* weight) {
  const int64_t ki = k / g.kernel_w, kj = k % g.kernel_w;
  const scalar_t* offset_y = offset + offset_y_channel(g, dg, k) * n;
  const scalar_t* offset_x = offset_y + n;
  const scalar_t* mask_k = mask + mask_channel(g, dg, k) * n;
  // One output row segment at a time, so that the pixel loop has no division.
  for (int64_t i = 0; i < n;) {
    const int64_t p = p_begin + i;
    const int64_t oy = p / g.out_width, ox = p % g.out_width;
    const int64_t count = std::min(n - i, g.out_width - ox);
    plan_row<scalar_t, acc_t>(
        static_cast<int32_t>(count), static_cast<acc_t>(base_y(g, oy, ki)),
        static_cast<acc_t>(base_x(g, ox, kj)), static_cast<acc_t>(g.stride_w),
        static_cast<int32_t>(g.height), static_cast<int32_t>(g.width),
        static_cast<int32_t>(g.in_channels), offset_y + i, offset_x + i, mask_k + i, index + i,
        index + n + i, index + 2 * n + i, index + 3 * n + i, weight + i, weight + n + i,
        weight + 2 * n + i, weight + 3 * n + i);
    i += count;
  }
}

// dst[c] = sum of the four weighted corners, for the `length` channels of a run. kLength > 0
// fixes the length at compile time (a deformable group of 8 or 16 channels is one or two vectors).
template <int kLength, typename scalar_t, typename acc_t>
inline void blend_corners(int64_t length, const scalar_t* __restrict__ x0,
                          const scalar_t* __restrict__ x1, const scalar_t* __restrict__ x2,
                          const scalar_t* __restrict__ x3, acc_t w0, acc_t w1, acc_t w2, acc_t w3,
                          scalar_t* __restrict__ dst) {
  const int64_t count = kLength > 0 ? kLength : length;
  for (int64_t c = 0; c < count; ++c) {
    dst[c] = static_cast<scalar_t>(
        w0 * static_cast<acc_t>(x0[c]) + w1 * static_cast<acc_t>(x1[c]) +
        w2 * static_cast<acc_t>(x2[c]) + w3 * static_cast<acc_t>(x3[c]));
  }
}

// columns[i][group][k][c] = mask * bilinear sample of channel c, tap k, pixel p_begin + i, for all
// channels of one channels-last image; offset and mask as plan_samples() takes them.
template <typename scalar_t>
void sample_columns(const ConvGeometry& g, const scalar_t* input, const scalar_t* offset,
                    const scalar_t* mask, int64_t p_begin, int64_t n, scalar_t* columns) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row = g.in_channels * g.taps();
  std::vector<int32_t> index(4 * n);
  std::vector<acc_t> weight(4 * n);
  for (int64_t dg = 0; dg < g.deformable_groups; ++dg) {
    const std::vector<ChannelRun> runs = channel_runs(g, dg);
    for (int64_t k = 0; k < g.taps(); ++k) {
      plan_samples(g, offset, mask, dg, k, p_begin, n, index.data(), weight.data());
      for (const ChannelRun& run : runs) {
        const int64_t length = run.end - run.begin, start = run.column_start(g, k);
        const scalar_t* base = input + run.begin;
        for (int64_t i = 0; i < n; ++i) {
          const scalar_t* x0 = base + index[i];
          const scalar_t* x1 = base + index[n + i];
          const scalar_t* x2 = base + index[2 * n + i];
          const scalar_t* x3 = base + index[3 * n + i];
          const acc_t w0 = weight[i], w1 = weight[n + i], w2 = weight[2 * n + i],
                      w3 = weight[3 * n + i];
          scalar_t* out = columns + i * row + start;
          if (length == 8) {
            blend_corners<8>(length, x0, x1, x2, x3, w0, w1, w2, w3, out);
          } else if (length == 16) {
            blend_corners<16>(length, x0, x1, x2, x3, w0, w1, w2, w3, out);
          } else {
            blend_corners<0>(length, x0, x1, x2, x3, w0, w1, w2, w3, out);
          }
        }
      }
    }
  }
}

// v rounded to scalar_t. For bfloat16, round-to-nearest-even without c10's branch for NaN (a
// select instead, to the same quiet NaN), so that loops storing bfloat16 vectorise.
template <typename scalar_t, typename acc_t>
inline scalar_t to_scalar(acc_t v) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<acc_t, float>) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    return c10::BFloat16(static_cast<uint16_t>(v != v ? 0x7FC0u : rounded), c10::BFloat16::from_bits());
  } else {
    return static_cast<scalar_t>(v);
  }
}

// The sums of one tap's samples over a run of kLength channels for the coordinate gradients
// (sum over c of grad_col * value, * d value/dy, * d value/dx), and the run's columns where col is
// not null. Per-channel products first, summed after: a loop of a fixed length without a
// reduction in it vectorises (a float reduction does not, without -ffast-math).
template <int kLength, typename scalar_t, typename acc_t>
inline void coordinate_sums(const BilinearCorners<acc_t>& s, acc_t m, const scalar_t* const* x,
                            const scalar_t* __restrict__ grad_col, scalar_t* __restrict__ col,
                            acc_t& sum_value, acc_t& sum_dy, acc_t& sum_dx) {
  acc_t by_value[kLength], by_dy[kLength], by_dx[kLength], value[kLength];
  for (int c = 0; c < kLength; ++c) {
    const acc_t v0 = static_cast<acc_t>(x[0][c]), v1 = static_cast<acc_t>(x[1][c]);
    const acc_t v2 = static_cast<acc_t>(x[2][c]), v3 = static_cast<acc_t>(x[3][c]);
    const acc_t gc = static_cast<acc_t>(grad_col[c]);
    value[c] = s.weight[0] * v0 + s.weight[1] * v1 + s.weight[2] * v2 + s.weight[3] * v3;
    by_value[c] = gc * value[c];
    by_dy[c] = gc * (s.dweight_dy[0] * v0 + s.dweight_dy[1] * v1 + s.dweight_dy[2] * v2 +
                     s.dweight_dy[3] * v3);
    by_dx[c] = gc * (s.dweight_dx[0] * v0 + s.dweight_dx[1] * v1 + s.dweight_dx[2] * v2 +
                     s.dweight_dx[3] * v3);
  }
  if (col != nullptr) {
    for (int c = 0; c < kLength; ++c) col[c] = to_scalar<scalar_t>(m * value[c]);
  }
  for (int c = 0; c < kLength; ++c) {
    sum_value += by_value[c];
    sum_dy += by_dy[c];
    sum_dx += by_dx[c];
  }
}

// One pass over the samples of deformable group dg for pixels [p_begin, p_begin + n) of one image:
// rebuilds the group's columns (for grad_weight), scatters grad_columns into grad_input
// (channels-last, float) and writes grad_offset and grad_mask of those pixels. Each output may be
// null when its gradient is not wanted (grad_columns is then read only for the others): grad_input
// alone skips reading the input, columns alone skips grad_columns.
template <typename scalar_t>
void backward_sampling_pass(const ConvGeometry& g, const scalar_t* input, const scalar_t* offset,
                            const scalar_t* mask, const scalar_t* grad_columns, int64_t p_begin,
                            int64_t n, int64_t dg, scalar_t* columns,
                            at::opmath_type<scalar_t>* grad_input, scalar_t* grad_offset,
                            scalar_t* grad_mask) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t taps = g.taps(), row = g.in_channels * taps, out_pixels = g.out_pixels();
  const bool coordinates = grad_offset != nullptr || grad_mask != nullptr;
  const std::vector<ChannelRun> runs = channel_runs(g, dg);
  std::vector<BilinearCorners<acc_t>> corners(n);
  std::vector<acc_t> modulation(n);
  std::vector<int64_t> run_starts(runs.size());
  for (int64_t k = 0; k < taps; ++k) {
    sample_points(g, offset, mask, dg, k, p_begin, n, corners.data(), modulation.data());
    for (size_t r = 0; r < runs.size(); ++r) run_starts[r] = runs[r].column_start(g, k);
    for (int64_t i = 0; i < n; ++i) {
      const BilinearCorners<acc_t>& s = corners[i];
      const acc_t m = modulation[i];
      acc_t sum_value = 0, sum_dy = 0, sum_dx = 0;
      for (size_t r = 0; r < runs.size(); ++r) {
        const ChannelRun& run = runs[r];
        const int64_t start = i * row + run_starts[r], length = run.end - run.begin;
        const scalar_t* grad_col = grad_columns + start;
        const scalar_t* x[4];
        for (int j = 0; j < 4; ++j) x[j] = input + s.index[j] + run.begin;
        if (coordinates && length == 8) {
          coordinate_sums<8>(s, m, x, grad_col, columns != nullptr ? columns + start : nullptr,
                             sum_value, sum_dy, sum_dx);
        } else if (coordinates && length == 16) {
          coordinate_sums<16>(s, m, x, grad_col, columns != nullptr ? columns + start : nullptr,
                              sum_value, sum_dy, sum_dx);
        } else if (coordinates) {
          scalar_t* col = columns != nullptr ? columns + start : nullptr;
          for (int64_t c = 0; c < length; ++c) {
            const acc_t v0 = static_cast<acc_t>(x[0][c]), v1 = static_cast<acc_t>(x[1][c]);
            const acc_t v2 = static_cast<acc_t>(x[2][c]), v3 = static_cast<acc_t>(x[3][c]);
            const acc_t gc = static_cast<acc_t>(grad_col[c]);
            const acc_t value = s.weight[0] * v0 + s.weight[1] * v1 + s.weight[2] * v2 +
                                s.weight[3] * v3;
            if (col != nullptr) col[c] = to_scalar<scalar_t>(m * value);
            sum_value += gc * value;
            sum_dy += gc * (s.dweight_dy[0] * v0 + s.dweight_dy[1] * v1 + s.dweight_dy[2] * v2 +
                            s.dweight_dy[3] * v3);
            sum_dx += gc * (s.dweight_dx[0] * v0 + s.dweight_dx[1] * v1 + s.dweight_dx[2] * v2 +
                            s.dweight_dx[3] * v3);
          }
        } else if (columns != nullptr) {
          // The same arithmetic as above, so that grad_weight does not depend on the mask.
          scalar_t* col = columns + start;
          for (int64_t c = 0; c < length; ++c) {
            const acc_t value = s.weight[0] * static_cast<acc_t>(x[0][c]) +
                                s.weight[1] * static_cast<acc_t>(x[1][c]) +
                                s.weight[2] * static_cast<acc_t>(x[2][c]) +
                                s.weight[3] * static_cast<acc_t>(x[3][c]);
            col[c] = to_scalar<scalar_t>(m * value);
          }
        }
        if (grad_input != nullptr) {
          // A separate loop per corner: corners may coincide in memory (index 0 of invalid ones).
          for (int j = 0; j < 4; ++j) {
            const acc_t w = m * s.weight[j];
            if (w == 0) continue;
            acc_t* grad_x = grad_input + s.index[j] + run.begin;
            for (int64_t c = 0; c < length; ++c) grad_x[c] += w * static_cast<acc_t>(grad_col[c]);
          }
        }
      }
      if (grad_offset != nullptr) {
        scalar_t* grad_offset_y = grad_offset + offset_y_channel(g, dg, k) * out_pixels;
        grad_offset_y[p_begin + i] = static_cast<scalar_t>(m * sum_dy);
        grad_offset_y[out_pixels + p_begin + i] = static_cast<scalar_t>(m * sum_dx);
      }
      if (grad_mask != nullptr) {
        grad_mask[mask_channel(g, dg, k) * out_pixels + p_begin + i] =
            static_cast<scalar_t>(sum_value);
      }
    }
  }
}
