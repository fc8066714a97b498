// num_streams engines, sharing the model's weights (the engine prepares a model file once per
// process) and on CUDA each with its own stream, handed out to VapourSynth's threads one at a time.
#pragma once

#include <condition_variable>
#include <mutex>
#include <vector>

#include "engine_library.h"

namespace iedvr_vs {

class EnginePool {
 public:
  explicit EnginePool(const EngineLibrary* library) : library_(library) {}
  ~EnginePool() {
    for (IedvrEngine* engine : engines_) library_->destroy(engine);
  }
  EnginePool(const EnginePool&) = delete;
  EnginePool& operator=(const EnginePool&) = delete;

  void add(IedvrEngine* engine) {
    engines_.push_back(engine);
    idle_.push_back(engine);
  }
  IedvrEngine* any() const { return engines_.front(); }
  int size() const { return static_cast<int>(engines_.size()); }

  int plan(int width, int height, double host_bytes_per_pixel, const IedvrTiling* given,
           IedvrPlan* plan, char* error, size_t error_size) {
    return library_->plan(any(), width, height, size(), host_bytes_per_pixel, given, plan, error,
                          error_size);
  }

  int run(const IedvrPlanes* frames, const int* frame_numbers, int half, int width, int height,
          const IedvrTiling* tiling, const IedvrOutputPlanes* output, char* error,
          size_t error_size) {
    IedvrEngine* engine = nullptr;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      available_.wait(lock, [&] { return !idle_.empty(); });
      engine = idle_.back();
      idle_.pop_back();
    }
    const int status =
        library_->run(engine, frames, frame_numbers, half, width, height, tiling, output, error,
                      error_size);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      idle_.push_back(engine);
    }
    available_.notify_one();
    return status;
  }

 private:
  const EngineLibrary* library_;
  std::vector<IedvrEngine*> engines_, idle_;
  std::mutex mutex_;
  std::condition_variable available_;
};

}  // namespace iedvr_vs
