// Model loading and its checks (model_loading.h).
#include "model_loading.h"
#include "cpu_features.h"
#include "cpu_fusion.h"
#include "error_text.h"
#include "model_metadata.h"

#include <ATen/CPUGeneratorImpl.h>
#include <caffe2/serialize/inline_container.h>
#include <dlfcn.h>
#include <sys/stat.h>
#include <torch/cuda.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <list>
#include <sstream>
#include <string>
#include <vector>

namespace {

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
  const auto reads = [&](int k) {
    auto changed = window.clone();
    changed.select(1, k).fill_(0.5);
    return !torch::equal(run(changed), output);
  };
  // A network made for fewer frames reads its first ones; one that reads the centre frame alone
  // has weights that ignore the neighbours, as all-zero ones do (as model_file.py says it).
  bool reads_a_neighbour = count == 1;
  for (int k = 0; k < count && !reads_a_neighbour; ++k) {
    reads_a_neighbour = k != count / 2 && reads(k);
  }
  if (!reads_a_neighbour) {
    throw std::runtime_error("its network's output depends on no frame but the centre one of its " +
                             std::to_string(count) + " input frames: its weights are all zero, "
                             "or untrained to use the neighbours; export trained weights");
  }
  for (const int k : {0, count - 1}) {
    if (!reads(k)) {
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
  // Always present and well-formed: model_metadata::parse refuses a file without it.
  const std::string& recorded = metadata.weights_crc32;
  char computed[16];
  std::snprintf(computed, sizeof computed, "%08x", weights_checksum(prepared.module));
  if (recorded != computed) {
    throw std::runtime_error("it is damaged: its weights' checksum is " + std::string(computed) +
                             ", its metadata says " + recorded +
                             "; download or export the model again");
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

torch::Device engine_device(int device) {
  if (device == -2) return torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::kCPU;
  if (device < 0) return torch::kCPU;
  if (!torch::cuda::is_available() || device >= static_cast<int>(torch::cuda::device_count())) {
    throw DeviceUnavailable(
        "device_index " + std::to_string(device) + " is not available: this machine has " +
        std::to_string(torch::cuda::is_available() ? torch::cuda::device_count() : 0) +
        " CUDA device(s); use device_index=-1 for the CPU");
  }
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(device));
}

}  // namespace

std::unique_ptr<IedvrEngine> create_engine(const char* model_path, int device, int precision,
                                           IedvrEngine* share_cache_with) {
  static std::once_flag operators_loaded;
  std::call_once(operators_loaded, load_operator_library);
  auto engine = std::make_unique<IedvrEngine>();
  engine->device = engine_device(device);
  // 16-bit inference: float16 on CUDA; bfloat16 on the CPU, whose AVX512-BF16 and AMX units
  // run it (float16 would be emulated there). By default wherever the device computes it
  // natively.
  if (precision == 1 ||
      (precision == -1 && (engine->device.is_cuda() || cpu_features::has_native_bfloat16()))) {
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
  return engine;
}
