// Inference on a frame: the window's frames uploaded once, per-frame features from the cache or
// computed, the per-window half of the network, whole or in cross-faded tiles, and one retry with
// smaller tiles when the device runs out of memory.
#pragma once

#include "engine_state.h"

#include <stdexcept>
#include <vector>

using Features = FeatureCache::Features;

// The network's per-frame half on one frame (or tile) [1, 3, h, w], and its per-window half on
// the window's features (one Features per frame) and centre frame.
Features frame_features(IedvrEngine* engine, const torch::Tensor& frame);
torch::Tensor upscale_features(IedvrEngine* engine, const std::vector<Features>& per_frame,
                               const torch::Tensor& centre);

// The network returned NaN or infinity: its message is the whole error.
struct NonFiniteOutput : std::runtime_error {
  using std::runtime_error::runtime_error;
};

bool is_out_of_memory(const std::exception& e);

// Arguments as iedvr_engine_run takes them (engine.h); throws on failure.
void run_frame(IedvrEngine* engine, const IedvrPlanes* frames, const int* frame_numbers, bool half,
               int width, int height, const IedvrTiling* tiling, const IedvrOutputPlanes* output);
