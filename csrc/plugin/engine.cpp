// The inference engine: runs a vs-iedvr model file (TorchScript + metadata) with libtorch on the
// CPU or a CUDA device. Loaded by the VapourSynth filter on first use, so that VapourSynth's
// start-up never pays for libtorch.
#include "engine.h"
#include "block_reuse.h"
#include "feature_cache.h"

#include <dlfcn.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <regex>
#include <string>
#include <vector>

namespace {

void write_error(char* error, size_t size, const std::string& message) {
  if (error == nullptr || size == 0) return;
  std::strncpy(error, message.c_str(), size - 1);
  error[size - 1] = '\0';
}

// The operator library sits next to this one (site-packages/vs_iedvr/). Loading that very file
// matters: a second copy would register the iedvr operators twice and abort the process.
void load_operator_library() {
  Dl_info self{};
  dladdr(reinterpret_cast<void*>(&load_operator_library), &self);
  const auto path = std::filesystem::path(self.dli_fname).parent_path() / "libiedvr_ops.so";
  if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    throw std::runtime_error("cannot load the operator library " + path.string() + ": " +
                             dlerror());
  }
}

// The format versions this engine reads (model_file.FORMAT_VERSION on the Python side).
constexpr int64_t kKnownFormatVersion = 1;

// The top level of a JSON object: nested objects and arrays (and the strings inside them)
// removed, so that a key is found where the engine reads it, not in the copy nested in "config".
std::string top_level(const std::string& json) {
  std::string kept;
  int depth = 0;
  bool in_string = false, escaped = false;
  for (const char c : json) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      ++depth;
      if (depth > 1) continue;
    } else if (c == '}' || c == ']') {
      --depth;
      if (depth >= 1) continue;
    }
    if (depth <= 1) kept += c;
  }
  return kept;
}

// An integer field of the metadata's top level. Model files come from other people: a value out
// of [low, high] is reported with the field's name and value.
int metadata_int(const std::string& metadata, const std::string& key, int64_t low, int64_t high) {
  const std::string json = top_level(metadata);
  const std::regex pattern("\"" + key + "\"\\s*:\\s*(-?[0-9]+)");
  std::smatch match;
  if (!std::regex_search(json, match, pattern)) {
    throw std::runtime_error("its metadata has no integer \"" + key + "\"");
  }
  const std::string digits = match[1];
  // More than 18 digits cannot be in any range we accept (and would overflow stoll).
  const int64_t value = digits.size() <= 18 ? std::stoll(digits) : high + 1;
  if (value < low || value > high) {
    throw std::runtime_error("its metadata field \"" + key + "\" is " + digits.substr(0, 24) +
                             (digits.size() > 24 ? "..." : "") + "; expected an integer from " +
                             std::to_string(low) + " to " + std::to_string(high));
  }
  return static_cast<int>(value);
}

}  // namespace

struct IedvrEngine {
  torch::jit::Module module;
  torch::Device device{torch::kCPU};
  torch::ScalarType dtype = torch::kFloat;
  IedvrModelInfo info{};
  // Model files with `features` and `upscale` methods run per frame + per window, with the
  // frames' features cached; older ones run `forward` on whole windows.
  bool split = false;
  std::shared_ptr<FeatureCache> cache;
  std::mutex mutex;  // one inference at a time per engine
};

extern "C" IedvrEngine* iedvr_engine_create(const char* model_path, int device, int precision,
                                            IedvrEngine* share_cache_with, char* error,
                                            size_t error_size) {
  try {
    static std::once_flag operators_loaded;
    std::call_once(operators_loaded, load_operator_library);
    auto engine = std::make_unique<IedvrEngine>();
    if (device == -2) {
      engine->device = torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::kCPU;
    } else if (device >= 0) {
      if (!torch::cuda::is_available() || device >= static_cast<int>(torch::cuda::device_count())) {
        write_error(error, error_size,
                    "device_index " + std::to_string(device) + " is not available: this machine has " +
                        std::to_string(torch::cuda::is_available() ? torch::cuda::device_count() : 0) +
                        " CUDA device(s); use device_index=-1 for the CPU");
        return nullptr;
      }
      engine->device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(device));
    }
    torch::jit::ExtraFilesMap extra{{"vs_iedvr.json", ""}};
    engine->module = torch::jit::load(model_path, engine->device, extra);
    const std::string& metadata = extra["vs_iedvr.json"];
    if (metadata.empty() || metadata.find("\"vs-iedvr-model\"") == std::string::npos) {
      write_error(error, error_size, std::string(model_path) +
                                         " is not a vs-iedvr model file (no vs-iedvr metadata); "
                                         "export one with `vs-iedvr export`");
      return nullptr;
    }
    const int64_t version = metadata_int(metadata, "format_version", 1, 1 << 30);
    if (version > kKnownFormatVersion) {
      throw std::runtime_error("it has format version " + std::to_string(version) +
                               "; this vs-iedvr reads up to " + std::to_string(kKnownFormatVersion) +
                               ": upgrade vs-iedvr");
    }
    engine->info.scale = metadata_int(metadata, "scale", 1, 8);
    engine->info.num_frames = metadata_int(metadata, "num_frames", 1, 15);
    if (engine->info.num_frames % 2 == 0) {
      throw std::runtime_error("its metadata field \"num_frames\" is " +
                               std::to_string(engine->info.num_frames) +
                               "; expected an odd number (the centre frame and as many on each side)");
    }
    engine->info.on_cuda = engine->device.is_cuda() ? 1 : 0;
    engine->module.eval();
    // 16-bit inference: float16 on CUDA; bfloat16 on the CPU, whose AVX512-BF16 and AMX units
    // run it (float16 would be emulated there). A model file may store its weights in float16
    // (the default model does, to stay small); they are converted either way.
    if (precision == 1 || (precision == -1 && engine->device.is_cuda())) {
      engine->dtype = engine->device.is_cuda() ? torch::kHalf : torch::kBFloat16;
    }
    engine->module.to(engine->dtype);
    // Channels-last 2D weights and frames: oneDNN and cuDNN then skip a layout conversion around
    // every convolution (about 10% of the CPU time), and the DCN kernel reads channels-last.
    for (auto parameter : engine->module.parameters()) {
      if (parameter.dim() == 4) parameter.set_data(parameter.contiguous(torch::MemoryFormat::ChannelsLast));
    }
    engine->split = engine->module.find_method("features").has_value() &&
                    engine->module.find_method("upscale").has_value();
    // Room for one window plus the frames the next windows add, per engine using the cache.
    const size_t frames_per_engine = engine->info.num_frames + 2;
    if (share_cache_with != nullptr && share_cache_with->cache) {
      engine->cache = share_cache_with->cache;
      engine->cache->grow(frames_per_engine);
    } else {
      engine->cache = std::make_shared<FeatureCache>(frames_per_engine);
    }
    return engine.release();
  } catch (const std::exception& e) {
    std::string message = e.what();
    message = message.substr(0, message.find('\n'));
    write_error(error, error_size,
                std::string("cannot load the model ") + model_path + ": " + message);
    return nullptr;
  }
}

extern "C" void iedvr_engine_info(const IedvrEngine* engine, IedvrModelInfo* info) {
  *info = engine->info;
}

namespace {

// Tile origins along one axis: tiles of `tile` pixels, `overlap` shared with the next one, the
// last aligned with the end.
std::vector<int64_t> tile_origins(int64_t length, int64_t tile, int64_t overlap) {
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
torch::Tensor ramp(int64_t length, int64_t fade_in, int64_t fade_out) {
  auto position = torch::arange(length, torch::kFloat) + 0.5;
  auto weight = torch::ones({length});
  if (fade_in > 0) weight = torch::minimum(weight, position / fade_in);
  if (fade_out > 0) weight = torch::minimum(weight, (length - position) / fade_out);
  return weight;
}

// The upscaled centre frame of a window [T, 3, h, w] of (a tile of) input frames, whose frame
// numbers are `frames`: per-frame features from the cache or computed now, then the per-window
// half of the network.
torch::Tensor upscale_window(IedvrEngine* engine, const torch::Tensor& window, const int* frames,
                             int tile) {
  const int count = engine->info.num_frames;
  if (!engine->split) return engine->module.forward({window.unsqueeze(0)}).toTensor();
  // Each frame's features (as many tensors as `features` returns), stacked along T per tensor.
  std::vector<std::vector<torch::Tensor>> per_frame;
  for (int k = 0; k < count; ++k) {
    auto features = engine->cache->find(frames[k], tile);
    if (!features) {
      const auto computed = engine->module.get_method("features")({window[k].unsqueeze(0)});
      features = FeatureCache::Features{};
      for (const auto& level : computed.toTupleRef().elements()) features->push_back(level.toTensor());
      engine->cache->insert(frames[k], tile, *features);
    }
    per_frame.push_back(std::move(*features));
  }
  std::vector<torch::jit::IValue> inputs;
  for (size_t i = 0; i < per_frame[0].size(); ++i) {
    std::vector<torch::Tensor> over_time;
    for (const auto& features : per_frame) over_time.push_back(features[i]);
    inputs.emplace_back(torch::stack(over_time, 1));
  }
  inputs.emplace_back(window[count / 2].unsqueeze(0));
  return engine->module.get_method("upscale")(std::move(inputs))
      .toTensor();
}

torch::Tensor run_tiled(IedvrEngine* engine, const torch::Tensor& input, const int* frames,
                        const IedvrTiling& tiling) {
  const int64_t height = input.size(2), width = input.size(3), scale = engine->info.scale;
  const int64_t tile_h = std::min<int64_t>(tiling.tile_height, height);
  const int64_t tile_w = std::min<int64_t>(tiling.tile_width, width);
  const auto ys = tile_origins(height, tile_h, tiling.overlap_y);
  const auto xs = tile_origins(width, tile_w, tiling.overlap_x);
  auto sum = torch::zeros({1, 3, height * scale, width * scale}, input.options().dtype(torch::kFloat));
  auto weights = torch::zeros({1, 1, height * scale, width * scale}, sum.options());
  for (size_t i = 0; i < ys.size(); ++i) {
    for (size_t j = 0; j < xs.size(); ++j) {
      const int64_t y = ys[i], x = xs[j];
      const auto tile = input.slice(2, y, y + tile_h).slice(3, x, x + tile_w);
      const int tile_index = static_cast<int>(i * xs.size() + j);
      const auto upscaled = upscale_window(engine, tile, frames, tile_index).to(torch::kFloat);
      // Fade only where a neighbouring tile overlaps, by the overlap actually shared.
      const int64_t top = i > 0 ? (ys[i - 1] + tile_h - y) * scale : 0;
      const int64_t bottom = i + 1 < ys.size() ? (y + tile_h - ys[i + 1]) * scale : 0;
      const int64_t left = j > 0 ? (xs[j - 1] + tile_w - x) * scale : 0;
      const int64_t right = j + 1 < xs.size() ? (x + tile_w - xs[j + 1]) * scale : 0;
      const auto weight = (ramp(tile_h * scale, top, bottom).unsqueeze(1) *
                           ramp(tile_w * scale, left, right).unsqueeze(0))
                              .to(sum.device())
                              .view({1, 1, tile_h * scale, tile_w * scale});
      sum.slice(2, y * scale, (y + tile_h) * scale).slice(3, x * scale, (x + tile_w) * scale) +=
          upscaled * weight;
      weights.slice(2, y * scale, (y + tile_h) * scale).slice(3, x * scale, (x + tile_w) * scale) +=
          weight;
    }
  }
  return sum / weights;
}

}  // namespace

extern "C" int iedvr_engine_run(IedvrEngine* engine, const void* frames, const int* frame_numbers,
                                int half, int width, int height, const IedvrTiling* tiling,
                                void* output, char* error, size_t error_size) {
  try {
    const c10::InferenceMode inference;
    const auto type = half ? torch::kHalf : torch::kFloat;
    const int scale = engine->info.scale;
    const auto input = torch::from_blob(const_cast<void*>(frames),
                                        {engine->info.num_frames, 3, height, width},
                                        torch::TensorOptions().dtype(type));
    const bool tiled = tiling != nullptr && tiling->tile_width > 0 &&
                       (tiling->tile_width < width || tiling->tile_height < height);
    torch::Tensor result;
    {
      std::lock_guard<std::mutex> lock(engine->mutex);
      const BlockReuse::Scope reuse_blocks;
      const auto on_device =
          input.to(engine->device, engine->dtype).contiguous(torch::MemoryFormat::ChannelsLast);
      result = tiled ? run_tiled(engine, on_device, frame_numbers, *tiling)
                     : upscale_window(engine, on_device, frame_numbers, 0);
      result = result.to(torch::kCPU, type).contiguous();
    }
    TORCH_CHECK(result.numel() == 3LL * height * scale * width * scale,
                "the model returned ", result.sizes(), " for a ", width, "x", height, " input");
    std::memcpy(output, result.data_ptr(), result.nbytes());
    return 0;
  } catch (const std::exception& e) {
    std::string message = e.what();
    write_error(error, error_size, "inference failed: " + message.substr(0, message.find('\n')));
    return -1;
  }
}

extern "C" void iedvr_engine_feature_counts(IedvrEngine* engine, unsigned long long* computed,
                                            unsigned long long* reused) {
  const auto [insertions, hits] = engine->cache->counts();
  *computed = insertions;
  *reused = hits;
}

extern "C" void iedvr_engine_destroy(IedvrEngine* engine) {
  delete engine;
  // A filter is being freed: its blocks go back to the system (engines still running allocate
  // theirs anew once).
  BlockReuse::release_idle();
}

extern "C" void iedvr_engine_block_counts(unsigned long long* fresh, unsigned long long* reused,
                                          unsigned long long* idle_bytes) {
  const auto counts = BlockReuse::counts();
  *fresh = counts.fresh;
  *reused = counts.reused;
  *idle_bytes = counts.idle_bytes;
}
