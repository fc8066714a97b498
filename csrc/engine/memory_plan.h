// How to run frames of a given size within a memory budget: whole or in tiles, and how many
// frames' features the cache may keep. Pure arithmetic over costs measured on the device
// (memory_measurements.cpp measures them), so that it reads as the rule it is.
//
// A window costs `fixed + per_pixel * tile pixels` on each engine (num_streams run at once), the
// cache `cache_per_pixel * frame pixels` per kept frame, and the buffers that are never tiled
// (the input window, the output frame) `frame_per_pixel * frame pixels`. Keeping the
// cache matters more than big tiles: without it every window extracts its 5 frames' features
// again (about 1.4x the work), while tiles of 128x128 only add about 14% in their overlaps.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace memory_plan {

struct Costs {
  double fixed = 0;            // bytes per window that do not grow with its size
  double per_pixel = 0;        // bytes per input pixel of a window (or tile), features included
  double cache_per_pixel = 0;  // bytes of one frame's cached features, per input pixel
  double frame_per_pixel = 0;  // buffers that are never tiled (input, output), per input pixel
  double tile_per_pixel = 0;   // what tiling adds per input pixel of a tile (blending)
};

struct Plan {
  int64_t tile_width = 0, tile_height = 0;  // 0: whole frames
  int overlap_x = 0, overlap_y = 0;
  size_t cache_frames = 0;
  double bytes = 0;  // the estimate for this plan
};

// The overlap the filter uses for tiles the user sized without one: 8 pixels, less than half a
// small tile.
inline int default_overlap(int64_t tile) {
  return static_cast<int>(std::min<int64_t>(8, (tile - 1) / 2));
}

// The tile size along one axis for at most `tile` pixels: as many tiles as needed, then each made
// as small as that count allows (less work in the overlaps), in multiples of 4 (the network pads
// to them anyway).
inline int64_t balanced(int64_t length, int64_t tile) {
  if (tile >= length) return length;
  tile = std::max<int64_t>(4, tile / 4 * 4);
  const int overlap = default_overlap(tile);
  const int64_t count = (length - overlap + (tile - overlap) - 1) / (tile - overlap);
  const int64_t even = (length - overlap + count - 1) / count + overlap;
  return std::min({tile, length, (even + 3) / 4 * 4});
}

// Tiles of at most `pixels` input pixels: square, or strips as wide (tall) as a narrow frame.
inline void shape_tiles(int64_t width, int64_t height, double pixels, Plan& plan) {
  int64_t tile_w = static_cast<int64_t>(std::sqrt(pixels)), tile_h = tile_w;
  if (tile_w >= width) {
    tile_w = width;
    tile_h = std::min<int64_t>(height, static_cast<int64_t>(pixels / width));
  } else if (tile_h >= height) {
    tile_h = height;
    tile_w = std::min<int64_t>(width, static_cast<int64_t>(pixels / height));
  }
  plan.tile_width = balanced(width, tile_w);
  plan.tile_height = balanced(height, tile_h);
  plan.overlap_x = plan.tile_width < width ? default_overlap(plan.tile_width) : 0;
  plan.overlap_y = plan.tile_height < height ? default_overlap(plan.tile_height) : 0;
}

// What whole frames take with `cache` frames' features kept.
inline double whole_frame_bytes(int64_t width, int64_t height, int streams, size_t cache,
                                const Costs& costs) {
  const double pixels = static_cast<double>(width) * height;
  return streams * (costs.fixed + costs.per_pixel * pixels) +
         (cache * costs.cache_per_pixel + costs.frame_per_pixel) * pixels;
}

// What each input pixel of a tile costs, over the engines that run at once.
inline double per_tile_pixel(int streams, const Costs& costs) {
  return streams * (costs.per_pixel + costs.tile_per_pixel);
}

// What tiles of `tile_pixels` take with `cache` frames' features kept.
inline double tiled_bytes(int64_t width, int64_t height, int streams, size_t cache,
                          double tile_pixels, const Costs& costs) {
  const double pixels = static_cast<double>(width) * height;
  return (cache * costs.cache_per_pixel + costs.frame_per_pixel) * pixels +
         streams * costs.fixed + per_tile_pixel(streams, costs) * tile_pixels;
}

// The smallest tile side worth keeping the cache for, and the smallest tile at all.
constexpr int64_t kMinCachedTile = 128, kMinTile = 16;

// The plan for width x height frames: whole frames with the full cache if they fit, then whole
// frames with a cache of one window, then tiles with the full cache, one window's or none.
// `full_cache` is the capacity the engines asked for ((frames + 2) per engine), `window` the
// frames in a window. Returns false when not even the smallest tiles fit.
inline bool choose(int64_t width, int64_t height, int streams, size_t full_cache, size_t window,
                   const Costs& costs, double budget, Plan& plan) {
  const std::vector<size_t> caches = full_cache > window ? std::vector<size_t>{full_cache, window}
                                                         : std::vector<size_t>{full_cache};
  for (const size_t cache : caches) {
    const double bytes = whole_frame_bytes(width, height, streams, cache, costs);
    if (bytes <= budget) {
      plan = Plan{0, 0, 0, 0, cache, bytes};
      return true;
    }
  }
  std::vector<size_t> tiled_caches = caches;
  tiled_caches.push_back(0);
  for (const size_t cache : tiled_caches) {
    const double tile_pixels =
        (budget - tiled_bytes(width, height, streams, cache, 0, costs)) / per_tile_pixel(streams, costs);
    const int64_t min_side = cache > 0 ? kMinCachedTile : kMinTile;
    const double min_pixels = static_cast<double>(std::min(min_side, width)) *
                              static_cast<double>(std::min(min_side, height));
    if (tile_pixels < min_pixels) continue;
    plan = Plan{};
    plan.cache_frames = cache;
    shape_tiles(width, height, tile_pixels, plan);
    plan.bytes = tiled_bytes(width, height, streams, cache,
                             static_cast<double>(plan.tile_width * plan.tile_height), costs);
    return true;
  }
  return false;
}

// The memory that no plan can make smaller: the buffers that are never tiled and the smallest
// tiles, without a cache. Above the budget, the message says this, not the tiles, is too much.
inline double least_bytes(int64_t width, int64_t height, int streams, const Costs& costs) {
  const double least_tile = static_cast<double>(std::min(kMinTile, width) * std::min(kMinTile, height));
  return tiled_bytes(width, height, streams, 0, least_tile, costs);
}

// For tiles the user gave (`tile_width` 0: whole frames): the largest cache that fits the
// budget, of the full one, one window's and none; none where even that does not fit (the tiles
// are used as given).
inline Plan cache_for_tiles(int64_t width, int64_t height, int64_t tile_width, int64_t tile_height,
                            int streams, size_t full_cache, size_t window, const Costs& costs,
                            double budget) {
  const bool whole = tile_width == 0 || (tile_width >= width && tile_height >= height);
  const double tile_pixels = static_cast<double>(std::min(tile_width, width)) *
                             static_cast<double>(std::min(tile_height, height));
  Plan plan;
  plan.tile_width = tile_width;
  plan.tile_height = tile_height;
  for (const size_t cache : {full_cache, std::min(window, full_cache), size_t{0}}) {
    plan.cache_frames = cache;
    plan.bytes = whole ? whole_frame_bytes(width, height, streams, cache, costs)
                       : tiled_bytes(width, height, streams, cache, tile_pixels, costs);
    if (plan.bytes <= budget) break;
  }
  return plan;
}

}  // namespace memory_plan
