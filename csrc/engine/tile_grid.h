// Where the tiles of a frame go and how they are blended: pure geometry, no network.
#pragma once

#include "engine.h"
#include "memory_plan.h"

#include <torch/script.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace tile_grid {

// Tile origins along one axis: tiles of `tile` pixels, `overlap` shared with the next one, the
// last aligned with the end.
inline std::vector<int64_t> tile_origins(int64_t length, int64_t tile, int64_t overlap) {
  std::vector<int64_t> origins;
  if (tile >= length) return {0};
  for (int64_t origin = 0;; origin += tile - overlap) {
    if (origin + tile >= length) {
      origins.push_back(length - tile);
      return origins;
    }
    origins.push_back(origin);
  }
}

// Blending weight along one axis of an output tile: ramps up over the overlap it shares with a
// previous tile and down over the one it shares with the next, so that overlapping tiles
// cross-fade instead of meeting at a seam.
inline torch::Tensor ramp(int64_t length, int64_t fade_in, int64_t fade_out) {
  auto position = torch::arange(length, torch::kFloat) + 0.5;
  auto weight = torch::ones({length});
  if (fade_in > 0) weight = torch::minimum(weight, position / fade_in);
  if (fade_out > 0) weight = torch::minimum(weight, (length - position) / fade_out);
  return weight;
}

// Blending weights along one axis for tiles at `origins`: each tile's ramp divided by the sum
// of all the ramps at that position, so that the weighted tiles add up to the frame and go
// straight into the output planes: no frame-sized sums. In two dimensions the weights are
// products of the axes' (the tiles form a grid), so they add up to one there too.
inline std::vector<torch::Tensor> axis_weights(int64_t length, int64_t tile,
                                        const std::vector<int64_t>& origins, int64_t scale) {
  std::vector<torch::Tensor> ramps;
  auto total = torch::zeros({length * scale});
  for (size_t i = 0; i < origins.size(); ++i) {
    // Fade only where a neighbouring tile overlaps, by the overlap actually shared.
    const int64_t fade_in = i > 0 ? (origins[i - 1] + tile - origins[i]) * scale : 0;
    const int64_t fade_out = i + 1 < origins.size() ? (origins[i] + tile - origins[i + 1]) * scale : 0;
    ramps.push_back(ramp(tile * scale, fade_in, fade_out));
    total.slice(0, origins[i] * scale, (origins[i] + tile) * scale) += ramps.back();
  }
  for (size_t i = 0; i < origins.size(); ++i) {
    ramps[i] /= total.slice(0, origins[i] * scale, (origins[i] + tile) * scale);
  }
  return ramps;
}

inline bool is_tiled(const IedvrTiling& tiling, int width, int height) {
  return tiling.tile_width > 0 && (tiling.tile_width < width || tiling.tile_height < height);
}

// Tiles half the size (in each direction) of `tiling`, or of the whole frame.
inline IedvrTiling smaller_tiles(const IedvrTiling& tiling, int width, int height) {
  const bool tiled = is_tiled(tiling, width, height);
  const int least = static_cast<int>(memory_plan::kMinTile);
  const int tile_w = std::max(least, ((tiled ? tiling.tile_width : width) + 1) / 2);
  const int tile_h = std::max(least, ((tiled ? tiling.tile_height : height) + 1) / 2);
  return {tile_w, tile_h, memory_plan::default_overlap(tile_w), memory_plan::default_overlap(tile_h)};
}

inline bool smaller_than(const IedvrTiling& a, const IedvrTiling& b, int width, int height) {
  if (!is_tiled(a, width, height)) return false;
  if (!is_tiled(b, width, height)) return true;
  return int64_t{a.tile_width} * a.tile_height < int64_t{b.tile_width} * b.tile_height;
}

}  // namespace tile_grid
