// The VapourSynth side of vs-iedvr: the `iedvr` namespace and its Upscale filter, its arguments
// and its frames. This library is loaded at every VapourSynth start, so it does not link libtorch:
// the inference engine (libiedvr_engine.so, csrc/engine/) is loaded with dlopen when Upscale is
// first called (engine_library.h), and shared between VapourSynth's threads (engine_pool.h).
//
// For output frame n, Upscale requests the frames n - N .. n + N of its clip (N from the model),
// fills neighbours beyond the clip's ends or beyond a scene change by reflection (or
// replication), runs the engine and returns the upscaled frame with frame n's properties.
#include <VSHelper4.h>
#include <VapourSynth4.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../engine/memory_plan.h"
#include "engine_library.h"
#include "engine_pool.h"
#include "frame_window.h"
#include "model_files.h"

namespace {

using iedvr_vs::Border;
using iedvr_vs::EngineLibrary;
using iedvr_vs::EnginePool;
using iedvr_vs::find_model_file;
using iedvr_vs::fold;
using iedvr_vs::load_engine;

constexpr const char* kName = "Upscale";

struct UpscaleData {
  VSNode* node = nullptr;
  VSVideoInfo in_vi{};
  VSVideoInfo out_vi{};
  std::unique_ptr<EnginePool> engines;
  IedvrModelInfo model{};
  IedvrTiling tiling{};  // zeros: whole frames
  // The memory plan, made before the first frame is computed (not when the script is evaluated:
  // `vspipe --info` need not pay for it), picks the tiles when tilesize is not given, and in any
  // case how many frames' features the cache keeps.
  bool tiles_given = false;
  std::once_flag planned;
  std::string plan_error;
  Border border = Border::reflect;
  bool scene_change = true;
};

std::string mebibytes(double bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f MiB", bytes / (1024.0 * 1024.0));
  return text;
}

// Runs the memory plan and says what it chose in VapourSynth's log (never on stdout).
void plan_memory(UpscaleData* d, VSCore* core, const VSAPI* vsapi) {
  const int width = d->in_vi.width, height = d->in_vi.height;
  const int bytes = d->in_vi.format.bitsPerSample / 8, scale2 = d->model.scale * d->model.scale;
  // The VapourSynth frames this filter holds per input pixel: the window's input frames and the
  // output frame (the engine reads and writes their planes in place).
  const double host_bytes_per_pixel = (1.0 * d->model.num_frames * 3 + 3.0 * scale2) * bytes;
  IedvrPlan plan{};
  char error[1024] = {0};
  if (d->engines->plan(width, height, host_bytes_per_pixel, d->tiles_given ? &d->tiling : nullptr,
                       &plan, error, sizeof error) != 0) {
    d->plan_error = error;
    return;
  }
  d->tiling = plan.tiling;
  std::string message = std::string(kName) + ": " + std::to_string(width) + "x" +
                        std::to_string(height) + " frames ";
  if (plan.tiling.tile_width > 0) {
    message += "in tiles of " + std::to_string(plan.tiling.tile_width) + "x" +
               std::to_string(plan.tiling.tile_height) + " overlapping by " +
               std::to_string(plan.tiling.overlap_x) + "x" + std::to_string(plan.tiling.overlap_y) +
               (d->tiles_given ? " (tilesize)" : "") + ", features of " +
               std::to_string(plan.cache_frames) + " frames cached: about " +
               mebibytes(plan.planned_bytes) + " (whole frames would take " +
               mebibytes(plan.whole_frame_bytes) + ")";
  } else {
    message += "whole, features of " + std::to_string(plan.cache_frames) +
               " frames cached: about " + mebibytes(plan.planned_bytes);
  }
  message += " of the " + mebibytes(plan.budget_bytes) + " it may use; measured " +
             std::to_string(static_cast<int>(plan.bytes_per_pixel)) +
             " bytes per input pixel of a window, " +
             std::to_string(static_cast<int>(plan.cache_bytes_per_pixel)) + " per cached frame";
  vsapi->logMessage(mtInformation, message.c_str(), core);
}

bool has_property(const VSAPI* vsapi, const VSFrame* frame, const char* key) {
  int error = 0;
  const int64_t value = vsapi->mapGetInt(vsapi->getFramePropertiesRO(frame), key, 0, &error);
  return error == 0 && value != 0;
}

// NaN or infinity anywhere in an input frame would spread over every output frame whose window
// holds it, silently: such frames are refused instead. float16: an all-ones exponent.
bool is_finite_plane(const uint8_t* data, ptrdiff_t stride, int width, int height, int bytes) {
  bool finite = true;
  for (int y = 0; y < height; ++y, data += stride) {
    if (bytes == 2) {
      const auto* half = reinterpret_cast<const uint16_t*>(data);
      for (int x = 0; x < width; ++x) finite &= (half[x] & 0x7c00) != 0x7c00;
    } else {
      const auto* values = reinterpret_cast<const float*>(data);
      for (int x = 0; x < width; ++x) finite &= std::isfinite(values[x]);
    }
  }
  return finite;
}

const VSFrame* VS_CC upscale_get_frame(int n, int reason, void* instance, void**,
                                       VSFrameContext* context, VSCore* core, const VSAPI* vsapi) {
  auto* d = static_cast<UpscaleData*>(instance);
  const int radius = d->model.num_frames / 2, last = d->in_vi.numFrames - 1;
  if (reason == arInitial) {
    for (int k = -radius; k <= radius; ++k) {
      vsapi->requestFrameFilter(fold(int64_t{n} + k, 0, last, d->border), d->node, context);
    }
    return nullptr;
  }
  if (reason != arAllFramesReady) return nullptr;
  std::call_once(d->planned, plan_memory, d, core, vsapi);
  if (!d->plan_error.empty()) {
    vsapi->setFilterError((std::string(kName) + ": " + d->plan_error).c_str(), context);
    return nullptr;
  }

  std::map<int, const VSFrame*> frames;
  for (int k = -radius; k <= radius; ++k) {
    const int index = fold(int64_t{n} + k, 0, last, d->border);
    if (!frames.count(index)) frames[index] = vsapi->getFrameFilter(index, d->node, context);
  }
  // The shot that frame n belongs to, within the window: neighbours past a cut are treated as
  // past the clip's end.
  int shot_start = static_cast<int>(std::max<int64_t>(0, int64_t{n} - radius));
  int shot_end = static_cast<int>(std::min<int64_t>(last, int64_t{n} + radius));
  if (d->scene_change) {
    for (int i = n; i > shot_start; --i) {
      if (has_property(vsapi, frames[i], "_SceneChangePrev") ||
          has_property(vsapi, frames[i - 1], "_SceneChangeNext")) {
        shot_start = i;
        break;
      }
    }
    for (int i = n; i < shot_end; ++i) {
      if (has_property(vsapi, frames[i], "_SceneChangeNext") ||
          has_property(vsapi, frames[i + 1], "_SceneChangePrev")) {
        shot_end = i;
        break;
      }
    }
  }
  const bool half = d->in_vi.format.bitsPerSample == 16;
  const int bytes = half ? 2 : 4, width = d->in_vi.width, height = d->in_vi.height;
  // The engine reads the window's planes where they are, and writes into the output frame's.
  std::vector<IedvrPlanes> window(d->model.num_frames);
  std::vector<int> window_frames(d->model.num_frames);
  for (int k = -radius; k <= radius; ++k) {
    // Folding into the shot applies the border rule at cuts and at the clip's ends alike.
    const int index = fold(int64_t{n} + k, shot_start, shot_end, d->border);
    window_frames[k + radius] = index;
    for (int plane = 0; plane < 3; ++plane) {
      window[k + radius].data[plane] = vsapi->getReadPtr(frames[index], plane);
      window[k + radius].stride[plane] = vsapi->getStride(frames[index], plane);
    }
  }
  // Each distinct input frame checked once.
  for (const auto& [index, frame] : frames) {
    if (index < shot_start || index > shot_end) continue;
    for (int plane = 0; plane < 3; ++plane) {
      if (!is_finite_plane(vsapi->getReadPtr(frame, plane), vsapi->getStride(frame, plane), width,
                           height, bytes)) {
        for (auto& entry : frames) vsapi->freeFrame(entry.second);
        vsapi->setFilterError((std::string(kName) + ": frame " + std::to_string(n) +
                               ": input frame " + std::to_string(index) + " holds NaN or " +
                               "infinite values (plane " + std::to_string(plane) +
                               "); they would spread over the whole upscaled frame: replace them "
                               "first").c_str(),
                              context);
        return nullptr;
      }
    }
  }
  const VSFrame* centre = frames[n];
  VSFrame* out = vsapi->newVideoFrame(&d->out_vi.format, d->out_vi.width, d->out_vi.height, centre, core);
  IedvrOutputPlanes output{};
  for (int plane = 0; plane < 3; ++plane) {
    output.data[plane] = vsapi->getWritePtr(out, plane);
    output.stride[plane] = vsapi->getStride(out, plane);
  }
  char error[1024] = {0};
  const int status = d->engines->run(window.data(), window_frames.data(), half ? 1 : 0, width,
                                     height, &d->tiling, &output, error, sizeof error);
  if (status != 0) {
    vsapi->freeFrame(out);
    for (auto& entry : frames) vsapi->freeFrame(entry.second);
    vsapi->setFilterError((std::string(kName) + ": frame " + std::to_string(n) + ": " + error).c_str(),
                          context);
    return nullptr;
  }
  for (auto& entry : frames) vsapi->freeFrame(entry.second);
  return out;
}

void VS_CC upscale_free(void* instance, VSCore*, const VSAPI* vsapi) {
  auto* d = static_cast<UpscaleData*>(instance);
  vsapi->freeNode(d->node);
  delete d;
}

void VS_CC upscale_create(const VSMap* in, VSMap* out, void*, VSCore* core, const VSAPI* vsapi) {
  auto d = std::make_unique<UpscaleData>();
  const auto fail = [&](const std::string& message) {
    vsapi->mapSetError(out, (std::string(kName) + ": " + message).c_str());
    if (d->node != nullptr) vsapi->freeNode(d->node);
    d->node = nullptr;
  };
  d->node = vsapi->mapGetNode(in, "clip", 0, nullptr);
  d->in_vi = *vsapi->getVideoInfo(d->node);
  const VSVideoFormat& format = d->in_vi.format;
  if (!vsh::isConstantVideoFormat(&d->in_vi)) {
    return fail("clip must have a constant format and size; convert it, e.g. with "
                "core.resize.Bicubic(clip, width=..., height=..., format=vs.RGBS)");
  }
  if (format.colorFamily != cfRGB || format.sampleType != stFloat ||
      (format.bitsPerSample != 32 && format.bitsPerSample != 16)) {
    char name[32] = {0};
    vsapi->getVideoFormatName(&format, name);
    return fail(std::string("clip must be RGBS or RGBH (float RGB), got ") + name +
                "; convert it first, e.g. core.resize.Bicubic(clip, format=vs.RGBS, "
                "matrix_in_s=\"709\") for YUV, or use vs_iedvr.upscale(clip), which converts "
                "any format");
  }
  int error = 0;
  const int64_t scale_arg = vsapi->mapGetInt(in, "scale", 0, &error);
  const bool scale_given = !error;
  if (scale_given && (scale_arg < 1 || scale_arg > 8)) {
    return fail("scale must be from 1 to 8, got " + std::to_string(scale_arg));
  }
  const char* model = vsapi->mapGetData(in, "model", 0, &error);
  const int model_size = model != nullptr ? vsapi->mapGetDataSize(in, "model", 0, nullptr) : 0;
  std::string model_error;
  const std::string model_path =
      find_model_file(model, model_size, scale_given ? scale_arg : 4, model_error);
  if (model_path.empty()) return fail(model_error);
  // Read as 64-bit and checked before narrowing, so that the message shows the value given.
  const int64_t device = vsapi->mapGetInt(in, "device_index", 0, &error);
  if (!error && (device < -1 || device > std::numeric_limits<int>::max())) {
    return fail("device_index must be -1 (CPU) or a CUDA device index >= 0, got " +
                std::to_string(device));
  }
  const int device_index = error ? -2 : static_cast<int>(device);
  // Flags are 0 or 1 (False or True): another number is a mistake, not a truth value.
  const auto not_a_flag = [](const char* name, int64_t value) {
    return std::string(name) + " must be 0 or 1 (False or True), got " + std::to_string(value);
  };
  const int64_t fp16_arg = vsapi->mapGetInt(in, "fp16", 0, &error);
  const bool fp16_given = !error;
  if (fp16_given && fp16_arg != 0 && fp16_arg != 1) return fail(not_a_flag("fp16", fp16_arg));
  const char* border = vsapi->mapGetData(in, "border", 0, &error);
  if (!error) {
    const std::string value = border;
    if (value == "reflect") {
      d->border = Border::reflect;
    } else if (value == "replicate") {
      d->border = Border::replicate;
    } else {
      return fail("border must be \"reflect\" or \"replicate\", got \"" + value + "\"");
    }
  }
  const int64_t scene_change = vsapi->mapGetInt(in, "scene_change", 0, &error);
  if (!error && scene_change != 0 && scene_change != 1) return fail(not_a_flag("scene_change", scene_change));
  d->scene_change = error ? true : scene_change != 0;

  // tilesize / overlap: one value for both axes or [width, height], as vs-mlrt.
  const int tile_values = vsapi->mapNumElements(in, "tilesize");
  if (tile_values > 2) return fail("tilesize must have 1 or 2 values (width, height)");
  if (tile_values > 0) {
    d->tiling.tile_width = vsapi->mapGetIntSaturated(in, "tilesize", 0, nullptr);
    d->tiling.tile_height = vsapi->mapGetIntSaturated(in, "tilesize", tile_values - 1, nullptr);
    const int overlap_values = vsapi->mapNumElements(in, "overlap");
    if (overlap_values > 2) return fail("overlap must have 1 or 2 values (x, y)");
    const bool whole_frames = d->tiling.tile_width == 0 && d->tiling.tile_height == 0;
    if (whole_frames && overlap_values > 0) return fail("overlap needs tiles; tilesize=0 means whole frames");
    if (!whole_frames && (d->tiling.tile_width < 8 || d->tiling.tile_height < 8)) {
      return fail("tilesize must be at least 8 input pixels (or 0 for whole frames), got " +
                  std::to_string(d->tiling.tile_width) + "x" + std::to_string(d->tiling.tile_height));
    }
    // Without overlap=: 8 pixels, or less for small tiles (under half the tile, as required).
    // Read as 64-bit and checked before narrowing: 2 * overlap must not overflow.
    const int64_t overlap_x = overlap_values > 0 ? vsapi->mapGetInt(in, "overlap", 0, nullptr)
                                                 : memory_plan::default_overlap(d->tiling.tile_width);
    const int64_t overlap_y = overlap_values > 0
                                  ? vsapi->mapGetInt(in, "overlap", overlap_values - 1, nullptr)
                                  : memory_plan::default_overlap(d->tiling.tile_height);
    if (!whole_frames && (overlap_x < 0 || overlap_y < 0 || overlap_x >= d->tiling.tile_width ||
                          overlap_y >= d->tiling.tile_height ||
                          2 * overlap_x >= d->tiling.tile_width ||
                          2 * overlap_y >= d->tiling.tile_height)) {
      return fail("overlap must be at least 0 and less than half the tile size, got " +
                  std::to_string(overlap_x) + "x" + std::to_string(overlap_y) + " for tiles of " +
                  std::to_string(d->tiling.tile_width) + "x" + std::to_string(d->tiling.tile_height));
    }
    d->tiling.overlap_x = static_cast<int>(overlap_x);
    d->tiling.overlap_y = static_cast<int>(overlap_y);
    d->tiles_given = true;
  } else if (vsapi->mapNumElements(in, "overlap") > 0) {
    return fail("overlap needs tilesize");
  }

  const int64_t num_streams = vsapi->mapGetInt(in, "num_streams", 0, &error);
  const int streams = error ? 1 : static_cast<int>(std::clamp<int64_t>(num_streams, -1, 65));
  if (streams < 1 || streams > 64) {
    return fail("num_streams must be between 1 and 64, got " + std::to_string(num_streams));
  }

  std::string load_error;
  const EngineLibrary* library = load_engine(load_error);
  if (library == nullptr) return fail(load_error);
  d->engines = std::make_unique<EnginePool>(library);
  // Without fp16=..., the engine picks: 16-bit where the device computes it natively.
  const int precision = fp16_given ? (fp16_arg != 0 ? 1 : 0) : -1;
  for (int i = 0; i < streams; ++i) {
    char message[1024] = {0};
    IedvrEngine* engine = library->create(model_path.c_str(), device_index, precision,
                                          i > 0 ? d->engines->any() : nullptr, message,
                                          sizeof message);
    if (engine == nullptr) return fail(message);
    d->engines->add(engine);
  }
  library->info(d->engines->any(), &d->model);
  if (scale_given && scale_arg != d->model.scale) {
    return fail("scale=" + std::to_string(scale_arg) + " contradicts the model file " + model_path +
                (d->model.scale == 1 ? std::string(", which restores frames at their own size (scale 1)")
                                     : ", which upscales x" + std::to_string(d->model.scale)) +
                ": leave scale out, or pass a model of that scale");
  }

  d->out_vi = d->in_vi;
  d->out_vi.width *= d->model.scale;
  d->out_vi.height *= d->model.scale;
  VSFilterDependency dependencies[] = {{d->node, rpGeneral}};
  UpscaleData* data = d.release();  // before the call: argument evaluation order is unspecified
  vsapi->createVideoFilter(out, kName, &data->out_vi, upscale_get_frame, upscale_free, fmParallel,
                           dependencies, 1, data, core);
  if (vsapi->mapGetError(out) != nullptr) {  // the core does not call upscale_free then
    vsapi->freeNode(data->node);
    delete data;
  }
}

}  // namespace

VS_EXTERNAL_API(void) VapourSynthPluginInit2(VSPlugin* plugin, const VSPLUGINAPI* vspapi) {
  vspapi->configPlugin("com.vs-iedvr.iedvr", "iedvr",
                       "Temporal video super-resolution with an improved EDVR",
                       VS_MAKE_VERSION(0, 1), VAPOURSYNTH_API_VERSION, 0, plugin);
  vspapi->registerFunction(kName,
                           "clip:vnode;model:data:opt;scale:int:opt;device_index:int:opt;fp16:int:opt;"
                           "num_streams:int:opt;tilesize:int[]:opt;overlap:int[]:opt;"
                           "border:data:opt;scene_change:int:opt;",
                           "clip:vnode;", upscale_create, nullptr, plugin);
}
