// The C interface between the VapourSynth filter (vs_filter.cpp, loaded at every VapourSynth
// start, no libtorch) and the inference engine (engine_api.cpp and its parts, libtorch, loaded on first use).
#pragma once

#include <stddef.h>
#include <stdint.h>

extern "C" {

typedef struct IedvrEngine IedvrEngine;

typedef struct IedvrModelInfo {
  int scale;       // output size = input size * scale
  int num_frames;  // frames per window, centre frame in the middle
  int fused_convolutions;  // convolutions run with their LeakyReLU fused in (CPU; cpu_fusion.h)
} IedvrModelInfo;

// device: -2 picks the first CUDA device if there is one, else the CPU; -1 the CPU; n >= 0 CUDA
// device n. precision: 0 float32; 1 16-bit (float16 on CUDA, bfloat16 on the CPU); -1 16-bit on
// CUDA and on CPUs with native bfloat16 (AVX512-BF16, AMX), float32 on other CPUs.
// share_cache_with: null, or an engine of the same filter (same model, device, precision, frame
// size and tiling) whose cache of per-frame features this one shares. Returns null and writes a
// message on failure.
IedvrEngine* iedvr_engine_create(const char* model_path, int device, int precision,
                                 IedvrEngine* share_cache_with, char* error, size_t error_size);
void iedvr_engine_info(const IedvrEngine* engine, IedvrModelInfo* info);

// frames: num_frames frames, each three planes (R, G, B) of height x width float32 (half = 0)
// or IEEE float16 (half = 1) values, read through their pointers and strides in bytes (a
// VapourSynth frame's planes as they are); only frames whose features are not cached are read.
// frame_numbers: the clip's frame number of each (repeated where a border or a scene change
// repeats a frame), the key of the feature cache; output: the three planes of (height * scale) x
// (width * scale) to write, of the same type.
// tile: the frame is processed in tiles of tile_width x tile_height input pixels overlapping by
// overlap_x / overlap_y, cross-faded in the overlaps (0 = whole frame). Thread-safe. Returns 0,
// or -1 with a message.
typedef struct IedvrPlanes {
  const void* data[3];
  ptrdiff_t stride[3];
} IedvrPlanes;
typedef struct IedvrOutputPlanes {
  void* data[3];
  ptrdiff_t stride[3];
} IedvrOutputPlanes;
typedef struct IedvrTiling {
  int tile_width, tile_height, overlap_x, overlap_y;
} IedvrTiling;
int iedvr_engine_run(IedvrEngine* engine, const IedvrPlanes* frames, const int* frame_numbers,
                     int half, int width, int height, const IedvrTiling* tiling,
                     const IedvrOutputPlanes* output, char* error, size_t error_size);

// The memory plan for frames of width x height, made once per filter before its first frame when
// the user gave no tilesize: the engine measures what a window costs on its device at two small
// sizes, reads the memory free there and picks whole frames or tiles (cross-faded as above) and
// how many frames' features the shared cache keeps (set on the cache). The budget is a quarter of
// the host's available memory on the CPU (VapourSynth's frame cache, other filters and the
// encoder share it), three quarters of the GPU's free memory on CUDA, or IEDVR_MAX_MEMORY_MB.
// streams: the engines that run windows at once; host_bytes_per_pixel: the filter's own buffers
// per input pixel (counted when the engine runs on the CPU). given: the tiles the user chose
// (zeros: whole frames), for which only the cache is sized to the budget; null: the plan picks
// the tiles too. Returns 0, or -1 with a message.
typedef struct IedvrPlan {
  IedvrTiling tiling;           // zeros: whole frames
  int cache_frames;             // frames whose features the cache keeps
  double budget_bytes;          // what the plan may use
  double planned_bytes;         // the estimate for the plan
  double whole_frame_bytes;     // the estimate for whole frames with the full cache
  double bytes_per_pixel;       // measured: a window's bytes per input pixel
  double cache_bytes_per_pixel; // measured: one frame's features per input pixel
} IedvrPlan;
int iedvr_engine_plan(IedvrEngine* engine, int width, int height, int streams,
                      double host_bytes_per_pixel, const IedvrTiling* given, IedvrPlan* plan,
                      char* error, size_t error_size);

// How often per-frame features were computed and how often reused from the cache, summed over
// the engines that share it (for tests and benchmarks).
void iedvr_engine_feature_counts(IedvrEngine* engine, unsigned long long* computed,
                                 unsigned long long* reused);

// Process-wide: large CPU blocks the engines allocated anew, blocks reused, and the bytes held idle
// for reuse (given back to the system whenever an engine is destroyed).
void iedvr_engine_block_counts(unsigned long long* fresh, unsigned long long* reused,
                               unsigned long long* idle_bytes);

void iedvr_engine_destroy(IedvrEngine* engine);

typedef IedvrEngine* (*IedvrEngineCreate)(const char*, int, int, IedvrEngine*, char*, size_t);
typedef void (*IedvrEngineInfo)(const IedvrEngine*, IedvrModelInfo*);
typedef int (*IedvrEngineRun)(IedvrEngine*, const IedvrPlanes*, const int*, int, int, int,
                              const IedvrTiling*, const IedvrOutputPlanes*, char*, size_t);
typedef void (*IedvrEngineDestroy)(IedvrEngine*);
typedef int (*IedvrEnginePlan)(IedvrEngine*, int, int, int, double, const IedvrTiling*,
                               IedvrPlan*, char*, size_t);
}
