// Large CPU blocks that the engine allocates are kept and handed out again instead of going back
// to the system. glibc serves big allocations with fresh mmap()s, so each of the hundreds of
// feature maps of a frame (up to 236 MB at 320x180 x4) would cost page faults and the kernel
// zeroing its pages anew, every frame: nearly half of the CPU time of a frame at 320x180
// (8.93 s per frame before, 4.79 s after).
// The network's shapes repeat from frame to frame, so blocks of the exact same size come back.
//
// Only allocations made on a thread inside a BlockReuse::Scope are reused, so that other users of
// libtorch in the same process (a Python filter in the same script) keep torch's usual behaviour.
//
// The same bookkeeping measures memory: inside a Measure scope every allocation of the thread,
// small ones included, is a block of ours, so the bytes held (blocks in use plus blocks kept for
// reuse: what the process's resident size sees) are known exactly. The memory plan runs the
// network at two small sizes under it.
#pragma once

#include <algorithm>

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

class BlockReuse final : public c10::Allocator {
 public:
  // Smaller blocks come from malloc's heap anyway, where reuse is already cheap.
  static constexpr size_t kMinBytes = size_t{1} << 20;

  // Allocations on this thread while a Scope lives are reused (installs the allocator once).
  class Scope {
   public:
    Scope() : previous_(active_) {
      instance();
      active_ = true;
    }
    ~Scope() { active_ = previous_; }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    bool previous_;
  };

  // Inside a Scope: every allocation of this thread is counted, small ones too.
  class Measure {
   public:
    Measure() : previous_(measuring_) {
      auto& self = instance();
      std::lock_guard<std::mutex> lock(self.mutex_);
      self.peak_held_bytes_ = self.held_bytes_;
      start_ = self.held_bytes_;
      measuring_ = true;
    }
    ~Measure() { measuring_ = previous_; }
    Measure(const Measure&) = delete;
    Measure& operator=(const Measure&) = delete;

    // The most bytes held at once since the scope began, above what was held then. Exact for
    // work on one thread; a second thread allocating at the same time is counted too.
    unsigned long long peak_above_start() const {
      auto& self = instance();
      std::lock_guard<std::mutex> lock(self.mutex_);
      return self.peak_held_bytes_ - std::min(start_, self.peak_held_bytes_);
    }

   private:
    bool previous_;
    unsigned long long start_ = 0;
  };

  // Gives the idle blocks back to the system.
  static void release_idle() { instance().free_idle(); }

  struct Counts {
    unsigned long long fresh, reused, idle_bytes;  // blocks allocated anew, blocks handed out again
  };
  static Counts counts() {
    auto& self = instance();
    std::lock_guard<std::mutex> lock(self.mutex_);
    return {self.fresh_, self.reused_, self.idle_bytes_};
  }

  c10::DataPtr allocate(size_t bytes) override {
    if (!active_ || (bytes < kMinBytes && !measuring_)) return fallback_->allocate(bytes);
    void* data = take_idle(bytes);
    if (data == nullptr) {
      data = c10::alloc_cpu(bytes);
      std::lock_guard<std::mutex> lock(mutex_);
      owned_[data] = bytes;
      ++fresh_;
      held_bytes_ += bytes;
      peak_held_bytes_ = std::max(peak_held_bytes_, held_bytes_);
    }
    // A plain pointer as its own context, as torch's raw_allocate()/raw_deallocate() require.
    return {data, data, &BlockReuse::give_back, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &BlockReuse::give_back; }

  void copy_data(void* dest, const void* src, size_t count) const override {
    std::memcpy(dest, src, count);
  }

 private:
  explicit BlockReuse(c10::Allocator* fallback) : fallback_(fallback) {}

  // Never destroyed: tensors that outlive static destruction may still hand blocks back.
  static BlockReuse& instance() {
    static BlockReuse* self = [] {
      auto* allocator = new BlockReuse(c10::GetCPUAllocator());
      c10::SetCPUAllocator(allocator);
      return allocator;
    }();
    return *self;
  }

  void* take_idle(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = idle_.find(bytes);
    if (found == idle_.end() || found->second.empty()) return nullptr;
    void* data = found->second.back();
    found->second.pop_back();
    idle_bytes_ -= bytes;
    ++reused_;
    return data;
  }

  // The deleter of every block handed out, ours or (through raw_deallocate) the fallback's; may
  // run on any thread.
  static void give_back(void* data) {
    auto& self = instance();
    {
      std::lock_guard<std::mutex> lock(self.mutex_);
      const auto owned = self.owned_.find(data);
      if (owned != self.owned_.end()) {
        self.idle_[owned->second].push_back(data);
        self.idle_bytes_ += owned->second;
        return;
      }
    }
    if (const auto fallback_deleter = self.fallback_->raw_deleter()) {
      fallback_deleter(data);
    } else {
      c10::free_cpu(data);
    }
  }

  void free_idle() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [bytes, blocks] : idle_) {
      for (void* data : blocks) {
        owned_.erase(data);
        c10::free_cpu(data);
        held_bytes_ -= bytes;
      }
    }
    idle_.clear();
    idle_bytes_ = 0;
  }

  c10::Allocator* fallback_;
  std::mutex mutex_;
  std::unordered_map<void*, size_t> owned_;             // every block of ours, in use or idle
  std::unordered_map<size_t, std::vector<void*>> idle_;  // by size
  unsigned long long idle_bytes_ = 0, fresh_ = 0, reused_ = 0;
  unsigned long long held_bytes_ = 0, peak_held_bytes_ = 0;  // blocks of ours, in use or idle
  static thread_local bool active_, measuring_;
};

inline thread_local bool BlockReuse::active_ = false;
inline thread_local bool BlockReuse::measuring_ = false;
