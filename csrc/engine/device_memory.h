// What memory the engine's device has left, and how much a piece of work takes at its peak: the
// two measurements the memory plan (memory_plan.h) is made of. CUDA parts are compiled only when
// the engine is built with the CUDA toolkit (IEDVR_WITH_CUDA); without them a CUDA device is
// planned like the CPU's memory, and its out-of-memory errors still lead to smaller tiles.
#pragma once

#include "block_reuse.h"

#include <torch/types.h>

#include <fstream>
#include <optional>
#include <string>

#ifdef IEDVR_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#endif

namespace device_memory {

// A value of a "key value" file such as /proc/meminfo or cgroup v2's memory.stat, or nullopt.
inline std::optional<double> read_field(const std::string& path, const std::string& key) {
  std::ifstream file(path);
  std::string name;
  double value = 0;
  while (file >> name >> value) {
    if (name == key) return value;
    file.ignore(1 << 16, '\n');
  }
  return std::nullopt;
}

// Bytes the system can give this process without swapping: MemAvailable, or less where the
// process's cgroup (a container's memory limit) leaves less. Reclaimable page cache counts as
// free in both.
inline double host_available() {
  const auto kib = read_field("/proc/meminfo", "MemAvailable:");
  double available = kib ? *kib * 1024 : 8.0 * (1ull << 30);
  std::ifstream limit_file("/sys/fs/cgroup/memory.max");
  std::string limit;
  if (limit_file >> limit && limit != "max") {
    const auto used = read_field("/sys/fs/cgroup/memory.stat", "anon");
    try {
      const double left = std::stod(limit) - (used ? *used : 0.0);
      available = std::min(available, std::max(0.0, left));
    } catch (const std::exception&) {  // an unreadable limit leaves MemAvailable
    }
  }
  return available;
}

// Free bytes on the engine's device: the host's for the CPU, the GPU's own for CUDA (after torch's
// cache of freed blocks is given back, so that it counts as free).
inline double available(const torch::Device& device) {
#ifdef IEDVR_WITH_CUDA
  if (device.is_cuda()) {
    const c10::cuda::CUDAGuard guard(device.index());
    c10::cuda::CUDACachingAllocator::emptyCache();
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) == cudaSuccess) return static_cast<double>(free);
  }
#endif
  return host_available();
}

// The peak bytes taken by the work done on this thread while it lives, above what was taken when
// it began: blocks counted by BlockReuse on the CPU, torch's caching allocator's reserved
// segments on CUDA.
class PeakMeter {
 public:
  explicit PeakMeter(const torch::Device& device) : device_(device) {
#ifdef IEDVR_WITH_CUDA
    if (device_.is_cuda()) {
      c10::cuda::CUDACachingAllocator::emptyCache();
      c10::cuda::CUDACachingAllocator::resetPeakStats(device_.index());
      start_ = reserved().current;
    }
#endif
  }

  double peak() const {
#ifdef IEDVR_WITH_CUDA
    if (device_.is_cuda()) return static_cast<double>(reserved().peak - start_);
#endif
    return static_cast<double>(host_.peak_above_start());
  }

 private:
#ifdef IEDVR_WITH_CUDA
  c10::CachingAllocator::Stat reserved() const {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device_.index());
    return stats.reserved_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)];
  }
  int64_t start_ = 0;
#endif
  torch::Device device_;
  BlockReuse::Measure host_;
};

// Gives memory kept for reuse back, so that the next measurement starts from what is in use.
inline void release_cached(const torch::Device& device) {
#ifdef IEDVR_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
  BlockReuse::release_idle();
}

}  // namespace device_memory
