// The memory plan's measurements (memory_measurements.h).
#include "memory_measurements.h"
#include "block_reuse.h"
#include "device_memory.h"
#include "error_text.h"
#include "inference.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace {

// The peak of a window of height x width frames on the engine's device (without the cache, the
// frames' features held as a window without cached frames holds them), every allocation counted,
// and what one frame's features take per pixel.
std::pair<double, double> measure_window(IedvrEngine* engine, int64_t height, int64_t width) {
  const int count = engine->info.num_frames;
  double cache_bytes = 0;
  device_memory::release_cached(engine->device);
  const device_memory::PeakMeter meter(engine->device);
  {
    const auto window = torch::rand({count, 3, height, width},
                                    torch::TensorOptions().device(engine->device).dtype(engine->dtype))
                            .contiguous(torch::MemoryFormat::ChannelsLast);
    if (engine->split) {
      std::vector<Features> per_frame{frame_features(engine, window.narrow(0, 0, 1))};
      for (int k = 1; k < count; ++k) {
        Features copy;
        for (const auto& tensor : per_frame[0]) copy.push_back(tensor.clone());
        per_frame.push_back(std::move(copy));
      }
      for (const auto& tensor : per_frame[0]) cache_bytes += static_cast<double>(tensor.nbytes());
      upscale_features(engine, per_frame, window.narrow(0, count / 2, 1));
    } else {
      engine->module.forward({window.unsqueeze(0)});
    }
  }
  const double peak = meter.peak();
  device_memory::release_cached(engine->device);
  return {peak, cache_bytes / static_cast<double>(height * width)};
}

// Costs from two windows of the same height: the difference gives the bytes per input pixel, the
// rest the fixed part.
memory_plan::Costs costs_between(IedvrEngine* engine, int64_t height, int64_t width,
                                 int64_t wider) {
  const auto [narrow_peak, cache_per_pixel] = measure_window(engine, height, width);
  const double wide_peak = measure_window(engine, height, wider).first;
  const double pixels = static_cast<double>(height * width), more = static_cast<double>(height * wider);
  memory_plan::Costs costs;
  costs.per_pixel = std::max(0.0, (wide_peak - narrow_peak) / (more - pixels));
  costs.fixed = std::max(0.0, narrow_peak - costs.per_pixel * pixels);
  costs.cache_per_pixel = cache_per_pixel;
  return costs;
}

// What a window costs on the engine's device. Windows of 48x48 and 48x96 give the steadier
// figures, but the larger one alone took 141 MiB with the default model in float32, more than a
// small IEDVR_MAX_MEMORY_MB allows: windows of 16x16 and 16x32 come first, and the larger pair
// only where those figures say that it fits the budget. Measuring never takes more than the
// plan may use.
memory_plan::Costs measure_costs(IedvrEngine* engine, double budget) {
  const c10::InferenceMode inference;
  const BlockReuse::Scope reuse_blocks;
  const memory_plan::Costs small = costs_between(engine, 16, 16, 32);
  if (small.fixed + small.per_pixel * 48 * 96 > budget) return small;
  return costs_between(engine, 48, 48, 96);
}

// "512.0 MiB", "5.43 GiB".
std::string memory_text(double bytes) {
  char text[32];
  if (bytes < double(1 << 30)) {
    std::snprintf(text, sizeof text, "%.1f MiB", bytes / (1 << 20));
  } else {
    std::snprintf(text, sizeof text, "%.2f GiB", bytes / (1 << 30));
  }
  return text;
}

// The budget: IEDVR_MAX_MEMORY_MB, else a share of what the device has free.
double memory_budget(const torch::Device& device) {
  const double limit = memory_limit_setting();
  return limit > 0 ? limit : device_memory::available(device) * (device.is_cuda() ? 0.75 : 0.25);
}

}  // namespace

double memory_limit_setting() {
  const char* limit = std::getenv("IEDVR_MAX_MEMORY_MB");
  if (limit == nullptr) return 0;
  char* end = nullptr;
  const double megabytes = std::strtod(limit, &end);
  // strtod also reads "inf" and "nan": neither is a budget.
  if (end == limit || *end != '\0' || !std::isfinite(megabytes) || !(megabytes > 0)) {
    throw std::runtime_error(std::string("IEDVR_MAX_MEMORY_MB must be a positive number of "
                                         "megabytes, got \"") + limit + "\"");
  }
  return megabytes * (1 << 20);
}

IedvrPlan plan_memory(IedvrEngine* engine, int width, int height, int streams,
                      double host_bytes_per_pixel, const IedvrTiling* given) {
  std::lock_guard<std::mutex> lock(engine->mutex);
  const double budget = memory_budget(engine->device);
  memory_plan::Costs costs;
  {
    std::lock_guard<std::mutex> measuring(engine->costs->mutex);
    if (!engine->costs->costs) {
      try {
        engine->costs->costs = measure_costs(engine, budget);
      } catch (const std::exception& e) {
        throw std::runtime_error("the model failed on the memory plan's trial windows: " +
                                 readable(e));
      }
    }
    costs = *engine->costs->costs;
  }
  const double value_bytes = engine->dtype == torch::kFloat ? 4 : 2;
  const double scale2 = static_cast<double>(engine->info.scale) * engine->info.scale;
  // What is never tiled: the window's frames on the device, the filter's own frames where they
  // share the host's memory (its input frames and the output frame, which tiles are blended
  // into).
  costs.frame_per_pixel = engine->info.num_frames * 3 * value_bytes +
                          (engine->device.is_cuda() ? 0 : host_bytes_per_pixel);
  // Each tile's output in float32, its blending weight and their product.
  costs.tile_per_pixel = (3 + 1 + 3) * 4 * scale2;
  const size_t full_cache = engine->split ? engine->cache->capacity() : 0;
  const size_t window = engine->split ? engine->info.num_frames : 0;
  const double whole = memory_plan::whole_frame_bytes(width, height, streams, full_cache, costs);
  memory_plan::Plan chosen;
  if (given != nullptr) {
    chosen = memory_plan::cache_for_tiles(width, height, given->tile_width, given->tile_height,
                                          streams, full_cache, window, costs, budget);
    chosen.overlap_x = given->overlap_x;
    chosen.overlap_y = given->overlap_y;
  } else if (!memory_plan::choose(width, height, streams, full_cache, window, costs, budget,
                                  chosen)) {
    const double least = memory_plan::least_bytes(width, height, streams, costs);
    const double untiled = costs.frame_per_pixel * width * height;
    const char* source = memory_limit_setting() > 0 ? "IEDVR_MAX_MEMORY_MB"
                         : engine->device.is_cuda() ? "three quarters of the GPU's free memory"
                                                    : "a quarter of the memory available";
    std::ostringstream message;
    message << "not enough memory on " << engine->device.str() << " for " << width << "x"
            << height << " frames: they need at least " << memory_text(least) << ", "
            << memory_text(untiled) << " of it for the " << engine->info.num_frames
            << " input frames and the x" << engine->info.scale
            << " output frame, which are never tiled; this filter may use "
            << memory_text(budget) << " (" << source << "): set IEDVR_MAX_MEMORY_MB="
            << static_cast<int64_t>(std::ceil(least / (1 << 20)))
            << " or more if the device has that much, or upscale smaller frames";
    throw std::runtime_error(message.str());
  }
  if (engine->split) engine->cache->set_capacity(chosen.cache_frames);
  return IedvrPlan{{static_cast<int>(chosen.tile_width), static_cast<int>(chosen.tile_height),
                    chosen.overlap_x, chosen.overlap_y},
                   static_cast<int>(chosen.cache_frames), budget, chosen.bytes, whole,
                   costs.per_pixel, costs.cache_per_pixel};
}
