// Bilinear sampling math of modulated deformable convolution, shared by the CPU and CUDA kernels
// so that the CPU tests exercise the exact formulas the GPU runs.
//
// Conventions (torchvision / BasicSR / mmcv, so that published EDVR weights mean the same here):
// a sampling point (y, x) with y <= -1, y >= height, x <= -1 or x >= width contributes nothing;
// inside that band, corners that fall outside the image count as zero.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define IEDVR_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define IEDVR_HOST_DEVICE inline
#endif

namespace iedvr {

// Geometry of one modulated deformable convolution, in plain integers so that kernels on both
// devices can take it by value.
struct ConvGeometry {
  int64_t batch, in_channels, out_channels, height, width;
  int64_t out_height, out_width;
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t groups, deformable_groups;

  IEDVR_HOST_DEVICE int64_t taps() const { return kernel_h * kernel_w; }
  IEDVR_HOST_DEVICE int64_t out_pixels() const { return out_height * out_width; }
  IEDVR_HOST_DEVICE int64_t in_pixels() const { return height * width; }
  IEDVR_HOST_DEVICE int64_t channels_per_deformable_group() const {
    return in_channels / deformable_groups;
  }
};

// The four corners of a bilinear sample: flat indices into one image plane and their weights.
// Corners outside the image get weight 0 and index 0, so that gathering needs no branch.
template <typename acc_t>
struct BilinearCorners {
  int64_t index[4];
  acc_t weight[4];
  // d(weight)/dy and d(weight)/dx of each corner, for the offset gradient.
  acc_t dweight_dy[4];
  acc_t dweight_dx[4];
};

// floor(v) for -1 < v < 2^31, without a call to floor(): truncation, minus one below zero.
// (Truncating v + 1 instead would round: 3.99999976f + 1 is 5.0f, a corner past the image.)
template <typename acc_t>
IEDVR_HOST_DEVICE int32_t floor_above_minus_one(acc_t v) {
  return static_cast<int32_t>(v) - (v < 0 ? 1 : 0);
}

template <typename acc_t>
IEDVR_HOST_DEVICE BilinearCorners<acc_t> bilinear_corners(acc_t y, acc_t x, int64_t height,
                                                          int64_t width) {
  BilinearCorners<acc_t> c;
  for (int i = 0; i < 4; ++i) {
    c.index[i] = 0;
    c.weight[i] = 0;
    c.dweight_dy[i] = 0;
    c.dweight_dx[i] = 0;
  }
  if (!(y > -1 && x > -1 && y < height && x < width)) return c;  // also rejects NaN

  const int64_t y0 = floor_above_minus_one(y), x0 = floor_above_minus_one(x);
  const acc_t ly = y - static_cast<acc_t>(y0), lx = x - static_cast<acc_t>(x0);
  const acc_t hy = 1 - ly, hx = 1 - lx;

  // Corner order: (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1).
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1};
  const int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const acc_t w[4] = {hy * hx, hy * lx, ly * hx, ly * lx};
  const acc_t dy[4] = {-hx, -lx, hx, lx};
  const acc_t dx[4] = {-hy, hy, -ly, ly};
  for (int i = 0; i < 4; ++i) {
    if (ys[i] >= 0 && ys[i] < height && xs[i] >= 0 && xs[i] < width) {
      c.index[i] = ys[i] * width + xs[i];
      c.weight[i] = w[i];
      c.dweight_dy[i] = dy[i];
      c.dweight_dx[i] = dx[i];
    }
  }
  return c;
}

// Where tap (ki, kj) of output pixel (oy, ox) samples the input, before the learned offset.
IEDVR_HOST_DEVICE int64_t base_y(const ConvGeometry& g, int64_t oy, int64_t ki) {
  return oy * g.stride_h - g.pad_h + ki * g.dilation_h;
}
IEDVR_HOST_DEVICE int64_t base_x(const ConvGeometry& g, int64_t ox, int64_t kj) {
  return ox * g.stride_w - g.pad_w + kj * g.dilation_w;
}

// Channel layout of offset and mask (per deformable group dg and tap k):
// offset channel 2 * (dg * taps + k) holds dy, the next one dx; mask channel dg * taps + k.
IEDVR_HOST_DEVICE int64_t offset_y_channel(const ConvGeometry& g, int64_t dg, int64_t k) {
  return 2 * (dg * g.taps() + k);
}
IEDVR_HOST_DEVICE int64_t mask_channel(const ConvGeometry& g, int64_t dg, int64_t k) {
  return dg * g.taps() + k;
}

}  // namespace iedvr
