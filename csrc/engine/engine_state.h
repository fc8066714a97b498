// What an engine holds: the model it runs, its device and precision, the feature cache it shares,
// and the measurements of its memory plan. Shared by the engine's files (model_loading.cpp fills
// it, inference.cpp and memory_measurements.cpp use it; engine_api.cpp hands it out as the
// opaque IedvrEngine of engine.h).
#pragma once

#include "engine.h"
#include "feature_cache.h"
#include "memory_plan.h"

#include <torch/script.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>

// What a window of a prepared model costs on its device (measure_costs): measured by its first
// memory plan, shared by every engine that runs the model.
struct MeasuredCosts {
  std::mutex mutex;
  std::optional<memory_plan::Costs> costs;
};

struct IedvrEngine {
  std::string path;  // the model file, named in errors
  torch::jit::Module module;
  torch::Device device{torch::kCPU};
  torch::ScalarType dtype = torch::kFloat;
  IedvrModelInfo info{};
  // Model files with `features` and `upscale` methods run per frame + per window, with the
  // frames' features cached; older ones run `forward` on whole windows.
  bool split = false;
  std::shared_ptr<MeasuredCosts> costs;
  std::shared_ptr<FeatureCache> cache;
  std::mutex mutex;  // one inference at a time per engine
  // Set after the device ran out of memory: the smaller tiles that worked, used from then on.
  std::optional<IedvrTiling> fallback_tiling;
};
