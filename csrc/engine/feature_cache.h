// The features of recently seen input frames. Every input frame is in the 2N+1 windows of the
// output frames around it; its features (the network's per-frame half) are computed once and
// reused by the other windows. Shared by the engines of one filter instance and thread-safe.
//
// Features are always computed for one frame at a time, so a frame's features are the same
// whichever window, thread or request order computed them first: the output never depends on
// the order in which VapourSynth asks for frames.
#pragma once

#include <torch/types.h>

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

class FeatureCache {
 public:
  using Features = std::vector<torch::Tensor>;  // what `features` returns for one frame (or tile)
  // The region of the frame the features are of: x, y, width, height in input pixels. Its
  // geometry, not its index, so that tiles of another size (after an out-of-memory retry) never
  // meet features of the old ones.
  using Tile = std::array<int64_t, 4>;

  explicit FeatureCache(size_t capacity_frames) : capacity_(capacity_frames) {}

  // Each engine that shares the cache can hold a window of its own in flight.
  void grow(size_t frames) {
    std::lock_guard<std::mutex> lock(mutex_);
    capacity_ += frames;
  }

  size_t capacity() {
    std::lock_guard<std::mutex> lock(mutex_);
    return capacity_;
  }

  // The memory plan may shrink the cache (to 0: nothing is kept, every window computes its
  // frames' features).
  void set_capacity(size_t frames) {
    std::lock_guard<std::mutex> lock(mutex_);
    capacity_ = frames;
    while (frames_.size() > capacity_) evict_least_recently_used();
  }

  std::optional<Features> find(int frame, const Tile& tile) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto entry = frames_.find(frame);
    if (entry == frames_.end()) return std::nullopt;
    const auto features = entry->second.tiles.find(tile);
    if (features == entry->second.tiles.end()) return std::nullopt;
    entry->second.last_use = ++clock_;
    ++hits_;
    return features->second;
  }

  void insert(int frame, const Tile& tile, Features features) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++insertions_;
    if (capacity_ == 0) return;
    if (!frames_.count(frame)) {
      while (!frames_.empty() && frames_.size() >= capacity_) evict_least_recently_used();
    }
    auto& entry = frames_[frame];
    entry.tiles[tile] = std::move(features);
    entry.last_use = ++clock_;
  }

  // (features computed and stored, features reused) since the cache was made.
  std::pair<uint64_t, uint64_t> counts() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {insertions_, hits_};
  }

 private:
  struct Entry {
    uint64_t last_use = 0;
    std::map<Tile, Features> tiles;  // the whole frame is one tile when frames are not tiled
  };

  // Tensors handed out earlier stay valid: they hold their own reference to the memory.
  void evict_least_recently_used() {
    auto oldest = frames_.begin();
    for (auto it = frames_.begin(); it != frames_.end(); ++it) {
      if (it->second.last_use < oldest->second.last_use) oldest = it;
    }
    frames_.erase(oldest);
  }

  std::mutex mutex_;
  size_t capacity_;
  uint64_t clock_ = 0, hits_ = 0, insertions_ = 0;
  std::map<int, Entry> frames_;
};
