// Inference on a frame (inference.h).
#include "inference.h"
#include "block_reuse.h"
#include "device_memory.h"
#include "tile_grid.h"

#include <algorithm>
#include <array>
#include <map>
#include <string>

// The network's per-frame half on one frame (or tile) [1, 3, h, w]: what the cache keeps.
// Frames are passed as slices of a batch, never as x[0].unsqueeze(0): that gives the batch
// dimension stride 3, and PyTorch then no longer takes the frame for channels-last: every
// convolution converted it and the whole network ran in the slower layout (measured: 3x the time
// of `features`, a quarter of a window's).
Features frame_features(IedvrEngine* engine, const torch::Tensor& frame) {
  Features features;
  const auto computed = engine->module.get_method("features")({frame});
  for (const auto& level : computed.toTupleRef().elements()) features.push_back(level.toTensor());
  return features;
}

// The per-window half of the network on the frames' features, each tensor stacked along T.
// Stacked as [B, T, H, W, C] in memory, so that each frame's slice [:, t] stays dense
// channels-last: torch::stack(over_time, 1) would interleave the frames ([B, H, W, T, C]), and
// every convolution and deformable convolution on a slice would copy it first (6% of a window).
torch::Tensor upscale_features(IedvrEngine* engine, const std::vector<Features>& per_frame,
                               const torch::Tensor& centre) {
  std::vector<torch::jit::IValue> inputs;
  for (size_t i = 0; i < per_frame[0].size(); ++i) {
    std::vector<torch::Tensor> over_time;
    for (const auto& features : per_frame) over_time.push_back(features[i].permute({0, 2, 3, 1}));
    inputs.emplace_back(torch::stack(over_time, 1).permute({0, 1, 4, 2, 3}));
  }
  inputs.emplace_back(centre);
  return engine->module.get_method("upscale")(std::move(inputs)).toTensor();
}

namespace {

// The range input values are clamped to (Window::frame says why).
constexpr double kInputLow = -1.0, kInputHigh = 2.0;

// The input frames of one window, read from the caller's planes (pointer and stride each) and
// uploaded to the device in the engine's precision, channels-last, when first needed: frames
// whose features are all cached are never converted. A frame repeated in the window (at the
// clip's ends, at cuts) is uploaded once.
class Window {
 public:
  Window(IedvrEngine* engine, const IedvrPlanes* planes, const int* numbers, bool half,
         int64_t width, int64_t height)
      : engine_(engine), planes_(planes), numbers_(numbers), width_(width), height_(height),
        type_(half ? torch::kHalf : torch::kFloat) {}

  int64_t width() const { return width_; }
  int64_t height() const { return height_; }
  int number(int k) const { return numbers_[k]; }

  // Frame k of the window, [1, 3, height, width] on the device.
  const torch::Tensor& frame(int k) {
    auto found = uploaded_.find(numbers_[k]);
    if (found != uploaded_.end()) return found->second;
    auto frame = torch::empty({1, 3, height_, width_},
                              torch::TensorOptions().device(engine_->device).dtype(engine_->dtype))
                     .contiguous(torch::MemoryFormat::ChannelsLast);
    const int64_t bytes = type_ == torch::kHalf ? 2 : 4;
    for (int c = 0; c < 3; ++c) {
      const auto plane = torch::from_blob(const_cast<void*>(planes_[k].data[c]), {height_, width_},
                                          {planes_[k].stride[c] / bytes, 1},
                                          torch::TensorOptions().dtype(type_));
      frame[0][c].copy_(plane);
    }
    // The network was trained on [0, 1]. Values a little outside it (YUV-to-RGB conversions give
    // them) pass unchanged; far outside, a finite pixel (65504 in RGBH, 3.4e38 in RGBS) would
    // overflow 16-bit inference into NaN: it is clamped to [-1, 2] first.
    frame.clamp_(kInputLow, kInputHigh);
    return uploaded_.emplace(numbers_[k], std::move(frame)).first->second;
  }

  std::vector<torch::Tensor> all_frames() {
    std::vector<torch::Tensor> frames;
    for (int k = 0; k < engine_->info.num_frames; ++k) frames.push_back(frame(k));
    return frames;
  }

 private:
  IedvrEngine* engine_;
  const IedvrPlanes* planes_;
  const int* numbers_;
  int64_t width_, height_;
  torch::ScalarType type_;
  std::map<int, torch::Tensor> uploaded_;
};

torch::Tensor crop(const torch::Tensor& frame, const FeatureCache::Tile& tile) {
  const auto [x, y, width, height] = tile;
  return frame.slice(2, y, y + height).slice(3, x, x + width);
}

// The upscaled centre frame of (a tile of) a window: per-frame features from the cache or
// computed now, then the per-window half of the network.
torch::Tensor upscale_window(IedvrEngine* engine, Window& window, const FeatureCache::Tile& tile) {
  const int count = engine->info.num_frames;
  if (!engine->split) {
    std::vector<torch::Tensor> frames;
    for (const auto& frame : window.all_frames()) frames.push_back(crop(frame, tile));
    return engine->module.forward({torch::cat(frames).unsqueeze(0)}).toTensor();
  }
  std::vector<Features> per_frame;
  for (int k = 0; k < count; ++k) {
    auto features = engine->cache->find(window.number(k), tile);
    if (!features) {
      features = frame_features(engine, crop(window.frame(k), tile));
      engine->cache->insert(window.number(k), tile, *features);
    }
    per_frame.push_back(std::move(*features));
  }
  return upscale_features(engine, per_frame, crop(window.frame(count / 2), tile));
}

// The caller's output planes as tensors, [height, width] each, float32 or float16.
using OutputPlanes = std::array<torch::Tensor, 3>;
OutputPlanes output_planes(const IedvrOutputPlanes& output, bool half, int64_t height,
                           int64_t width) {
  const auto type = half ? torch::kHalf : torch::kFloat;
  const int64_t bytes = half ? 2 : 4;
  OutputPlanes planes;
  for (int c = 0; c < 3; ++c) {
    planes[c] = torch::from_blob(output.data[c], {height, width}, {output.stride[c] / bytes, 1},
                                 torch::TensorOptions().dtype(type));
  }
  return planes;
}

// A frame (or tile) the network returned: the size the metadata promises, and finite. NaN or
// infinity cannot come from the input (it is refused, or clamped when finite), so the weights are
// at fault, or on 16-bit inference the network's values outgrow 16-bit floats.
void check_output(const IedvrEngine* engine, const torch::Tensor& result, int64_t width,
                  int64_t height) {
  const int64_t scale = engine->info.scale;
  TORCH_CHECK(result.dim() == 4 && result.size(0) == 1 && result.size(1) == 3 &&
                  result.size(2) == height * scale && result.size(3) == width * scale,
              "the model returned ", result.sizes(), " for a ", width, "x", height, " input");
  if (!torch::isfinite(result).all().item<bool>()) {
    throw NonFiniteOutput(
        "the model " + engine->path +
        " returned NaN or infinite values: its weights are probably damaged or from a training "
        "run that diverged (input values are clamped to [" + std::to_string(int(kInputLow)) +
        ", " + std::to_string(int(kInputHigh)) + "], so they are not the cause)" +
        (engine->dtype == torch::kFloat
             ? std::string()
             : "; if fp16=0 gives finite frames, its values outgrow 16-bit floats"));
  }
}

// The frame in tiles, each cross-faded into the output planes where it overlaps its neighbours.
void run_tiled(IedvrEngine* engine, Window& window, const IedvrTiling& tiling,
               const OutputPlanes& planes) {
  const int64_t height = window.height(), width = window.width(), scale = engine->info.scale;
  const int64_t tile_h = std::min<int64_t>(tiling.tile_height, height);
  const int64_t tile_w = std::min<int64_t>(tiling.tile_width, width);
  const auto ys = tile_grid::tile_origins(height, tile_h, tiling.overlap_y);
  const auto xs = tile_grid::tile_origins(width, tile_w, tiling.overlap_x);
  const auto weights_y = tile_grid::axis_weights(height, tile_h, ys, scale);
  const auto weights_x = tile_grid::axis_weights(width, tile_w, xs, scale);
  for (const auto& plane : planes) plane.zero_();
  for (size_t i = 0; i < ys.size(); ++i) {
    for (size_t j = 0; j < xs.size(); ++j) {
      const int64_t y = ys[i], x = xs[j];
      const auto upscaled = upscale_window(engine, window, {x, y, tile_w, tile_h});
      check_output(engine, upscaled, tile_w, tile_h);
      const auto weight = (weights_y[i].unsqueeze(1) * weights_x[j].unsqueeze(0)).to(upscaled.device());
      const auto weighted = (upscaled[0].to(torch::kFloat) * weight).to(torch::kCPU);
      for (int c = 0; c < 3; ++c) {
        planes[c].slice(0, y * scale, (y + tile_h) * scale).slice(1, x * scale, (x + tile_w) * scale) +=
            weighted[c];
      }
    }
  }
}

void upscale_frame(IedvrEngine* engine, Window& window, const IedvrTiling& tiling,
                   const OutputPlanes& planes) {
  const int height = static_cast<int>(window.height()), width = static_cast<int>(window.width());
  if (tile_grid::is_tiled(tiling, width, height)) return run_tiled(engine, window, tiling, planes);
  const auto result = upscale_window(engine, window, {0, 0, width, height});
  check_output(engine, result, width, height);
  for (int c = 0; c < 3; ++c) planes[c].copy_(result[0][c]);  // converted to the planes' type
}

}  // namespace

// Out of memory, on any device: CUDA throws c10::OutOfMemoryError, the CPU allocator a plain
// c10::Error, and an error inside the TorchScript interpreter reaches us rewrapped.
bool is_out_of_memory(const std::exception& e) {
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr) return true;
  const std::string message = e.what();
  for (const char* sign : {"out of memory", "can't allocate memory", "not enough memory"}) {
    if (message.find(sign) != std::string::npos) return true;
  }
  return false;
}

void run_frame(IedvrEngine* engine, const IedvrPlanes* frames, const int* frame_numbers, bool half,
               int width, int height, const IedvrTiling* tiling, const IedvrOutputPlanes* output) {
  const c10::InferenceMode inference;
  std::lock_guard<std::mutex> lock(engine->mutex);
  const BlockReuse::Scope reuse_blocks;
  IedvrTiling planned = tiling != nullptr ? *tiling : IedvrTiling{0, 0, 0, 0};
  if (engine->fallback_tiling &&
      tile_grid::smaller_than(*engine->fallback_tiling, planned, width, height)) {
    planned = *engine->fallback_tiling;
  }
  Window window(engine, frames, frame_numbers, half, width, height);
  const auto planes = output_planes(*output, half, int64_t{height} * engine->info.scale,
                                    int64_t{width} * engine->info.scale);
  try {
    upscale_frame(engine, window, planned, planes);
  } catch (const std::exception& e) {
    if (!is_out_of_memory(e)) throw;
    // The device's free memory changed since the plan (another process, another filter):
    // retry once with tiles half the size; they are kept for the frames that follow.
    const IedvrTiling smaller = tile_grid::smaller_tiles(planned, width, height);
    device_memory::release_cached(engine->device);
    upscale_frame(engine, window, smaller, planes);
    engine->fallback_tiling = smaller;
  }
}
