// The inference engine: runs a vs-iedvr model file (TorchScript + metadata) with libtorch on the
// CPU or a CUDA device. Loaded by the VapourSynth filter on first use, so that VapourSynth's
// start-up never pays for libtorch.
#include "engine.h"
#include "block_reuse.h"
#include "cpu_fusion.h"
#include "device_memory.h"
#include "feature_cache.h"
#include "memory_plan.h"
#include "model_metadata.h"

#include <ATen/CPUGeneratorImpl.h>
#include <caffe2/serialize/inline_container.h>
#include <dlfcn.h>
#include <sys/stat.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

namespace {

void write_error(char* error, size_t size, const std::string& message) {
  if (error == nullptr || size == 0) return;
  std::strncpy(error, message.c_str(), size - 1);
  error[size - 1] = '\0';
}

// The line of an exception that says what went wrong. libtorch's own errors carry a C++ backtrace,
// and an exception raised inside a TorchScript model comes wrapped as "The following operation
// failed in the TorchScript interpreter" with a traceback of the serialized code: the model's own
// message is the last "...Error: text" line of it.
std::string readable(const std::exception& e) {
  const auto* torch_error = dynamic_cast<const c10::Error*>(&e);
  const std::string message = torch_error ? torch_error->what_without_backtrace() : e.what();
  if (message.find("failed in the TorchScript interpreter") != std::string::npos) {
    static const std::regex raised(R"(^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.*\S))");
    std::istringstream lines(message);
    std::string line, found;
    std::smatch match;
    while (std::getline(lines, line)) {
      if (std::regex_search(line, match, raised)) found = std::string(match[1]) + ": " + std::string(match[2]);
    }
    if (!found.empty()) return found;
  }
  return message.substr(0, message.find('\n'));
}

// CRC-32 (the zlib polynomial, as Python's zlib.crc32) of the model's weights as stored: every
// parameter and buffer, sorted by name, its raw bytes. The exporter writes it into the metadata
// (model_file.weights_checksum computes the same), so that a damaged file is named as damaged
// instead of producing garbage frames.
uint32_t crc32_update(uint32_t crc, const uint8_t* data, size_t size) {
  static const auto table = [] {
    std::vector<uint32_t> entries(256);
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t value = i;
      for (int bit = 0; bit < 8; ++bit) value = (value & 1) ? 0xEDB88320u ^ (value >> 1) : value >> 1;
      entries[i] = value;
    }
    return entries;
  }();
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

uint32_t weights_checksum(const torch::jit::Module& module) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& parameter : module.named_parameters()) tensors.emplace_back(parameter.name, parameter.value);
  for (const auto& buffer : module.named_buffers()) tensors.emplace_back(buffer.name, buffer.value);
  std::sort(tensors.begin(), tensors.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  uint32_t crc = 0;
  for (const auto& [name, tensor] : tensors) {
    const auto bytes = tensor.detach().to(torch::kCPU).contiguous();
    crc = crc32_update(crc, static_cast<const uint8_t*>(bytes.data_ptr()), bytes.nbytes());
  }
  return crc;
}

// A model file is a TorchScript archive (it has code and constants); a torch.save checkpoint is a
// zip archive too, with only data: that mistake gets its own message.
void check_is_torchscript_archive(const std::string& path) {
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader;
  try {
    reader = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
  } catch (const std::exception& e) {
    // miniz's message goes on about checkpoints; its first sentence says what failed.
    const std::string reason = readable(e);
    throw std::runtime_error("it is not a vs-iedvr model file (not a TorchScript archive: " +
                             reason.substr(0, reason.find(". ")) +
                             "); export one with `vs-iedvr export`");
  }
  if (reader->hasRecord("data.pkl") && !reader->hasRecord("constants.pkl")) {
    throw std::runtime_error(
        "it is a PyTorch checkpoint (torch.save), not a model file: export it with "
        "`vs-iedvr export --arch ARCH --weights CHECKPOINT --output model.pt`");
  }
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

// CPUs that compute bfloat16 natively (AVX512-BF16, or AMX): there 16-bit inference is the
// default, as OpenVINO's is; elsewhere bfloat16 would be emulated and slower than float32.
bool cpu_has_native_bfloat16() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("flags", 0) == 0) {
      std::istringstream flags(line.substr(line.find(':') + 1));
      std::string flag;
      while (flags >> flag) {
        if (flag == "avx512_bf16" || flag == "amx_bf16") return true;
      }
      return false;
    }
  }
  return false;
}

}  // namespace

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

namespace {

// A diverged training run exports weights holding NaN or infinity with a correct checksum; every
// frame would come out NaN. Refused when the file loads, naming the first such tensor.
void check_weights_are_finite(const torch::jit::Module& module) {
  const auto refuse = [](const std::string& name) {
    throw std::runtime_error("its weights hold NaN or infinite values (in " + name +
                             "): the training run that wrote them probably diverged; export the "
                             "weights of an earlier checkpoint");
  };
  for (const auto& parameter : module.named_parameters()) {
    if (!torch::isfinite(parameter.value).all().item<bool>()) refuse(parameter.name);
  }
  for (const auto& buffer : module.named_buffers()) {
    if (buffer.value.is_floating_point() && !torch::isfinite(buffer.value).all().item<bool>()) {
      refuse(buffer.name);
    }
  }
}

// A model as the engines run it: loaded, checked, in its dtype and layout, fused where the CPU
// can. TorchScript runs one module from several threads at once, so the engines that share it
// (a filter's num_streams, the filters of a script) share its weights too.
struct PreparedModel {
  torch::jit::Module module;
  IedvrModelInfo info{};
  bool split = false;
  std::shared_ptr<MeasuredCosts> costs = std::make_shared<MeasuredCosts>();
};

// The metadata's frame count and scale against what the network computes, on a tiny window: a
// traced network indexes the frames it was traced for, so one given more frames than it reads
// ignores the rest and returns a plausible, wrong frame. The window's first and last frames must
// both change the output, and 16x16 input must come out 16 * scale.
void check_network_matches_metadata(const PreparedModel& model, const torch::Device& device,
                                    torch::ScalarType dtype) {
  const c10::InferenceMode inference;
  const int count = model.info.num_frames, scale = model.info.scale, side = 16;
  const std::string claims = "its metadata says " + std::to_string(count) +
                             " input frames and scale " + std::to_string(scale) + ", but ";
  const auto options = torch::TensorOptions().device(device).dtype(dtype);
  const auto generator = at::make_generator<at::CPUGeneratorImpl>(20241205);
  const auto window = torch::rand({1, count, 3, side, side}, generator).to(options);
  // Through the methods the engine runs: features + upscale where the file has them.
  const auto run = [&](const torch::Tensor& frames) {
    torch::jit::Module module = model.module;  // its methods are not const
    if (!model.split) return module.forward({frames}).toTensor();
    std::vector<torch::jit::IValue> inputs;
    const auto levels = module.get_method("features")({frames[0]});
    for (const auto& level : levels.toTupleRef().elements()) {
      inputs.emplace_back(level.toTensor().unsqueeze(0));
    }
    inputs.emplace_back(frames.select(1, count / 2));
    return module.get_method("upscale")(std::move(inputs)).toTensor();
  };
  torch::Tensor output;
  try {
    output = run(window);
  } catch (const std::exception& e) {
    throw std::runtime_error(claims + "its network fails on such a window: " + readable(e));
  }
  if (output.dim() != 4 || output.size(0) != 1 || output.size(1) != 3) {
    throw std::runtime_error(claims + "its network returns " + c10::str(output.sizes()) +
                             " for a window of " + std::to_string(count) +
                             " frames (expected one RGB frame): it takes another frame count");
  }
  if (output.size(2) != side * scale || output.size(3) != side * scale) {
    throw std::runtime_error(claims + "its network upscales " + std::to_string(side) + "x" +
                             std::to_string(side) + " input to " + std::to_string(output.size(3)) +
                             "x" + std::to_string(output.size(2)));
  }
  // Output that is not finite cannot show what the network reads; each frame's check names it.
  if (!torch::isfinite(output).all().item<bool>()) return;
  for (const int k : {0, count - 1}) {
    auto changed = window.clone();
    changed.select(1, k).fill_(0.5);
    if (torch::equal(run(changed), output)) {
      throw std::runtime_error(claims + "its network does not read frame " + std::to_string(k + 1) +
                               " of the " + std::to_string(count) +
                               ": it was made for fewer frames");
    }
  }
}

// The file as it is now, with what it is prepared for: a file rewritten in place is another key.
std::optional<std::string> prepared_key(const std::string& path, const torch::Device& device,
                                        torch::ScalarType dtype, bool fusion) {
  struct stat status {};
  if (stat(path.c_str(), &status) != 0) return std::nullopt;
  std::ostringstream key;
  key << status.st_dev << ':' << status.st_ino << ':' << status.st_size << ':'
      << status.st_mtim.tv_sec << '.' << status.st_mtim.tv_nsec << ':' << status.st_ctim.tv_sec
      << '.' << status.st_ctim.tv_nsec << ':' << device << ':' << dtype << ':' << fusion;
  return key.str();
}

// The last few models prepared in this process. Preparing one takes about a second on two
// cores (load, checksum, the checks below, freezing and fusing), paid once per model instead of
// once per Upscale call and stream; the few kept beyond their filters' lifetime cost their weights.
class PreparedModels {
 public:
  std::optional<PreparedModel> find(const std::string& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto entry = entries_.begin(); entry != entries_.end(); ++entry) {
      if (entry->first != key) continue;
      entries_.splice(entries_.begin(), entries_, entry);  // most recently used first
      return entries_.front().second;
    }
    return std::nullopt;
  }
  void add(const std::string& key, const PreparedModel& model) {
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.emplace_front(key, model);
    if (entries_.size() > kKept) entries_.pop_back();
  }

 private:
  static constexpr size_t kKept = 4;
  std::mutex mutex_;
  std::list<std::pair<std::string, PreparedModel>> entries_;
};

// Never destroyed: freeing CUDA tensors after the CUDA runtime has shut down at exit can fail.
PreparedModels& prepared_models() {
  static auto* models = new PreparedModels;
  return *models;
}

// Loads and checks the model file for engine's device and dtype, then fuses it where the CPU can
// (fusion == true). The fused module is kept if it passes the same check on a tiny window as the
// plain one must: a libtorch whose oneDNN cannot run the fused convolution on this CPU keeps the
// plain model instead of failing on every frame, and so do model files that libtorch cannot
// freeze (those from before the `forward` method: freezing always keeps `forward`).
PreparedModel prepare_model(IedvrEngine* engine, bool fusion) {
  const std::string& path = engine->path;
  check_is_torchscript_archive(path);
  torch::jit::ExtraFilesMap extra{{model_metadata::kEntry, ""}};
  PreparedModel prepared;
  prepared.module = torch::jit::load(path, engine->device, extra);
  const std::string& json = extra[model_metadata::kEntry];
  if (json.empty()) {
    throw std::runtime_error(
        "it is not a vs-iedvr model file (no vs-iedvr metadata); export one with `vs-iedvr export`");
  }
  const model_metadata::Metadata metadata = model_metadata::parse(json);
  prepared.info.scale = metadata.scale;
  prepared.info.num_frames = metadata.num_frames;
  // Files exported before the checksum existed have none and are taken as they are.
  const std::string& recorded = metadata.weights_crc32;
  if (!recorded.empty()) {
    char computed[16];
    std::snprintf(computed, sizeof computed, "%08x", weights_checksum(prepared.module));
    if (recorded != computed) {
      throw std::runtime_error("it is damaged: its weights' checksum is " + std::string(computed) +
                               ", its metadata says " + recorded +
                               "; download or export the model again");
    }
  }
  prepared.module.eval();
  // A model file may store its weights in float16 (the default model does, to stay small);
  // they are converted to the engine's dtype either way.
  prepared.module.to(engine->dtype);
  // Channels-last weights and frames (channels-last 3D for the 3D convolutions, as
  // network.channels_last_format says): oneDNN and cuDNN then skip a layout conversion around
  // every convolution, and the DCN kernel reads channels-last.
  for (auto parameter : prepared.module.parameters()) {
    if (parameter.dim() == 4) parameter.set_data(parameter.contiguous(torch::MemoryFormat::ChannelsLast));
    if (parameter.dim() == 5) parameter.set_data(parameter.contiguous(torch::MemoryFormat::ChannelsLast3d));
  }
  prepared.split = prepared.module.find_method("features").has_value() &&
                   prepared.module.find_method("upscale").has_value();
  check_weights_are_finite(prepared.module);
  if (fusion) {
    const std::vector<std::string> methods =
        prepared.split ? std::vector<std::string>{"features", "upscale"}
                       : std::vector<std::string>{"forward"};
    try {
      PreparedModel fused = prepared;
      fused.module = cpu_fusion::fuse_conv_leaky_relu(prepared.module, methods,
                                                      &fused.info.fused_convolutions);
      check_network_matches_metadata(fused, engine->device, engine->dtype);
      return fused;
    } catch (const std::exception&) {
      // The plain model's check below says whether the model or the fusion failed.
    }
  }
  check_network_matches_metadata(prepared, engine->device, engine->dtype);
  return prepared;
}
}  // namespace

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
    // 16-bit inference: float16 on CUDA; bfloat16 on the CPU, whose AVX512-BF16 and AMX units
    // run it (float16 would be emulated there). By default wherever the device computes it
    // natively.
    if (precision == 1 ||
        (precision == -1 && (engine->device.is_cuda() || cpu_has_native_bfloat16()))) {
      engine->dtype = engine->device.is_cuda() ? torch::kHalf : torch::kBFloat16;
    }
    engine->path = model_path;
    const char* fusion_setting = std::getenv("IEDVR_CPU_FUSION");
    const bool fusion = engine->device.is_cpu() && cpu_fusion::available() &&
                        !(fusion_setting != nullptr && std::string(fusion_setting) == "0");
    const auto key = prepared_key(engine->path, engine->device, engine->dtype, fusion);
    std::optional<PreparedModel> prepared = key ? prepared_models().find(*key) : std::nullopt;
    if (!prepared) {
      prepared = prepare_model(engine.get(), fusion);
      if (key) prepared_models().add(*key, *prepared);
    }
    engine->module = prepared->module;
    engine->info = prepared->info;
    engine->split = prepared->split;
    engine->costs = prepared->costs;
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
    write_error(error, error_size,
                std::string("cannot load the model ") + model_path + ": " + readable(e));
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

// The network's per-frame half on one frame (or tile) [1, 3, h, w]: what the cache keeps.
// Frames are passed as slices of a batch, never as x[0].unsqueeze(0): that gives the batch
// dimension stride 3, and PyTorch then no longer takes the frame for channels-last: every
// convolution converted it and the whole network ran in the slower layout (measured: 3x the time
// of `features`, a quarter of a window's).
using Features = FeatureCache::Features;
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

// Blending weights along one axis for tiles at `origins`: each tile's ramp divided by the sum
// of all the ramps at that position, so that the weighted tiles add up to the frame and go
// straight into the output planes: no frame-sized sums. In two dimensions the weights are
// products of the axes' (the tiles form a grid), so they add up to one there too.
std::vector<torch::Tensor> axis_weights(int64_t length, int64_t tile,
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
struct NonFiniteOutput : std::runtime_error {
  using std::runtime_error::runtime_error;
};
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
  const auto ys = tile_origins(height, tile_h, tiling.overlap_y);
  const auto xs = tile_origins(width, tile_w, tiling.overlap_x);
  const auto weights_y = axis_weights(height, tile_h, ys, scale);
  const auto weights_x = axis_weights(width, tile_w, xs, scale);
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

bool is_tiled(const IedvrTiling& tiling, int width, int height) {
  return tiling.tile_width > 0 && (tiling.tile_width < width || tiling.tile_height < height);
}

// Tiles half the size (in each direction) of `tiling`, or of the whole frame.
IedvrTiling smaller_tiles(const IedvrTiling& tiling, int width, int height) {
  const bool tiled = is_tiled(tiling, width, height);
  const int least = static_cast<int>(memory_plan::kMinTile);
  const int tile_w = std::max(least, ((tiled ? tiling.tile_width : width) + 1) / 2);
  const int tile_h = std::max(least, ((tiled ? tiling.tile_height : height) + 1) / 2);
  return {tile_w, tile_h, memory_plan::default_overlap(tile_w), memory_plan::default_overlap(tile_h)};
}

bool smaller_than(const IedvrTiling& a, const IedvrTiling& b, int width, int height) {
  if (!is_tiled(a, width, height)) return false;
  if (!is_tiled(b, width, height)) return true;
  return int64_t{a.tile_width} * a.tile_height < int64_t{b.tile_width} * b.tile_height;
}

void upscale_frame(IedvrEngine* engine, Window& window, const IedvrTiling& tiling,
                   const OutputPlanes& planes) {
  const int height = static_cast<int>(window.height()), width = static_cast<int>(window.width());
  if (is_tiled(tiling, width, height)) return run_tiled(engine, window, tiling, planes);
  const auto result = upscale_window(engine, window, {0, 0, width, height});
  check_output(engine, result, width, height);
  for (int c = 0; c < 3; ++c) planes[c].copy_(result[0][c]);  // converted to the planes' type
}

}  // namespace

extern "C" int iedvr_engine_run(IedvrEngine* engine, const IedvrPlanes* frames,
                                const int* frame_numbers, int half, int width, int height,
                                const IedvrTiling* tiling, const IedvrOutputPlanes* output,
                                char* error, size_t error_size) {
  try {
    const c10::InferenceMode inference;
    std::lock_guard<std::mutex> lock(engine->mutex);
    const BlockReuse::Scope reuse_blocks;
    IedvrTiling planned = tiling != nullptr ? *tiling : IedvrTiling{0, 0, 0, 0};
    if (engine->fallback_tiling && smaller_than(*engine->fallback_tiling, planned, width, height)) {
      planned = *engine->fallback_tiling;
    }
    Window window(engine, frames, frame_numbers, half != 0, width, height);
    const auto planes = output_planes(*output, half != 0, int64_t{height} * engine->info.scale,
                                      int64_t{width} * engine->info.scale);
    try {
      upscale_frame(engine, window, planned, planes);
    } catch (const std::exception& e) {
      if (!is_out_of_memory(e)) throw;
      // The device's free memory changed since the plan (another process, another filter):
      // retry once with tiles half the size; they are kept for the frames that follow.
      const IedvrTiling smaller = smaller_tiles(planned, width, height);
      device_memory::release_cached(engine->device);
      upscale_frame(engine, window, smaller, planes);
      engine->fallback_tiling = smaller;
    }
    return 0;
  } catch (const NonFiniteOutput& e) {
    write_error(error, error_size, e.what());
    return -1;
  } catch (const std::exception& e) {
    write_error(error, error_size,
                is_out_of_memory(e)
                    ? "out of memory on " + engine->device.str() +
                          ", also with tiles half the size: " + readable(e) +
                          " (give a smaller tilesize, or use fewer num_streams)"
                    : "inference failed: " + readable(e));
    return -1;
  }
}

namespace {

// What a window costs on the engine's device: run at two small sizes (without the cache, five
// frames' features held as a window without cached frames holds them) with every allocation
// counted; the difference gives the bytes per input pixel, the rest the fixed part.
memory_plan::Costs measure_costs(IedvrEngine* engine) {
  const c10::InferenceMode inference;
  const BlockReuse::Scope reuse_blocks;
  const int count = engine->info.num_frames;
  const int64_t sizes[2][2] = {{48, 48}, {48, 96}};  // height, width
  double peaks[2] = {0, 0}, cache_bytes = 0;
  for (int i = 0; i < 2; ++i) {
    const auto [height, width] = std::pair{sizes[i][0], sizes[i][1]};
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
        cache_bytes = 0;
        for (const auto& tensor : per_frame[0]) cache_bytes += static_cast<double>(tensor.nbytes());
        cache_bytes /= static_cast<double>(height * width);
        upscale_features(engine, per_frame, window.narrow(0, count / 2, 1));
      } else {
        engine->module.forward({window.unsqueeze(0)});
      }
    }
    peaks[i] = meter.peak();
  }
  device_memory::release_cached(engine->device);
  const double pixels[2] = {48.0 * 48.0, 48.0 * 96.0};
  memory_plan::Costs costs;
  costs.per_pixel = std::max(0.0, (peaks[1] - peaks[0]) / (pixels[1] - pixels[0]));
  costs.fixed = std::max(0.0, peaks[0] - costs.per_pixel * pixels[0]);
  costs.cache_per_pixel = cache_bytes;
  return costs;
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
  if (const char* limit = std::getenv("IEDVR_MAX_MEMORY_MB")) {
    char* end = nullptr;
    const double megabytes = std::strtod(limit, &end);
    if (end == limit || *end != '\0' || !(megabytes > 0)) {
      throw std::runtime_error(std::string("IEDVR_MAX_MEMORY_MB must be a positive number of "
                                           "megabytes, got \"") + limit + "\"");
    }
    return megabytes * (1 << 20);
  }
  return device_memory::available(device) * (device.is_cuda() ? 0.75 : 0.25);
}

}  // namespace

extern "C" int iedvr_engine_plan(IedvrEngine* engine, int width, int height, int streams,
                                 double host_bytes_per_pixel, const IedvrTiling* given,
                                 IedvrPlan* plan, char* error, size_t error_size) {
  try {
    std::lock_guard<std::mutex> lock(engine->mutex);
    memory_plan::Costs costs;
    {
      std::lock_guard<std::mutex> measuring(engine->costs->mutex);
      if (!engine->costs->costs) {
        try {
          engine->costs->costs = measure_costs(engine);
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
    const double budget = memory_budget(engine->device);
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
      const char* source = std::getenv("IEDVR_MAX_MEMORY_MB") ? "IEDVR_MAX_MEMORY_MB"
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
    *plan = IedvrPlan{{static_cast<int>(chosen.tile_width), static_cast<int>(chosen.tile_height),
                       chosen.overlap_x, chosen.overlap_y},
                      static_cast<int>(chosen.cache_frames), budget, chosen.bytes, whole,
                      costs.per_pixel, costs.cache_per_pixel};
    return 0;
  } catch (const std::exception& e) {
    write_error(error, error_size, readable(e));
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
