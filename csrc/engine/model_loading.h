// Model loading and its checks: a model file becomes an engine's module on its device, in its
// precision, checked (archive, metadata, checksum, finite weights, frames and scale against what
// the network computes) and fused where the CPU can. Prepared models are shared within a process.
#pragma once

#include "engine_state.h"

#include <memory>
#include <stdexcept>

// device_index names a CUDA device this machine lacks: its message is the whole error.
struct DeviceUnavailable : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// device and precision as iedvr_engine_create takes them (engine.h). Throws DeviceUnavailable,
// or another exception whose message says what is wrong with the file.
std::unique_ptr<IedvrEngine> create_engine(const char* model_path, int device, int precision,
                                           IedvrEngine* share_cache_with);
