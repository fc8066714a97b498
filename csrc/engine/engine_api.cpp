// The engine's C interface (engine.h): each function turns the C++ parts' exceptions into the
// message the filter shows. The parts: model_loading.cpp, inference.cpp, memory_measurements.cpp.
// Loaded by the VapourSynth filter on first use, so that VapourSynth's start-up never pays for
// libtorch.
#include "engine.h"
#include "block_reuse.h"
#include "error_text.h"
#include "inference.h"
#include "memory_measurements.h"
#include "model_loading.h"

#include <cstring>
#include <string>

namespace {

void write_error(char* error, size_t size, const std::string& message) {
  if (error == nullptr || size == 0) return;
  std::strncpy(error, message.c_str(), size - 1);
  error[size - 1] = '\0';
}

}  // namespace

extern "C" IedvrEngine* iedvr_engine_create(const char* model_path, int device, int precision,
                                            IedvrEngine* share_cache_with, char* error,
                                            size_t error_size) {
  try {
    memory_limit_setting();  // a bad IEDVR_MAX_MEMORY_MB: its own message, whatever the model
  } catch (const std::exception& e) {
    write_error(error, error_size, e.what());
    return nullptr;
  }
  try {
    return create_engine(model_path, device, precision, share_cache_with).release();
  } catch (const DeviceUnavailable& e) {
    write_error(error, error_size, e.what());
    return nullptr;
  } catch (const std::exception& e) {
    write_error(error, error_size,
                std::string("cannot load the model ") + model_path + ": " + readable(e));
    return nullptr;
  }
}

extern "C" void iedvr_engine_info(const IedvrEngine* engine, IedvrModelInfo* info) {
  *info = engine->info;
}

extern "C" int iedvr_engine_run(IedvrEngine* engine, const IedvrPlanes* frames,
                                const int* frame_numbers, int half, int width, int height,
                                const IedvrTiling* tiling, const IedvrOutputPlanes* output,
                                char* error, size_t error_size) {
  try {
    run_frame(engine, frames, frame_numbers, half != 0, width, height, tiling, output);
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

extern "C" int iedvr_engine_plan(IedvrEngine* engine, int width, int height, int streams,
                                 double host_bytes_per_pixel, const IedvrTiling* given,
                                 IedvrPlan* plan, char* error, size_t error_size) {
  try {
    *plan = plan_memory(engine, width, height, streams, host_bytes_per_pixel, given);
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
