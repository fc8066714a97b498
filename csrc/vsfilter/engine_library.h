// The inference engine (libiedvr_engine.so), loaded with dlopen on the first Upscale call: this
// plugin is loaded at every VapourSynth start and must not pull libtorch in before then.
#pragma once

#include <filesystem>
#include <string>

#include "../engine/engine.h"

namespace iedvr_vs {

struct EngineLibrary {
  IedvrEngineCreate create = nullptr;
  IedvrEngineInfo info = nullptr;
  IedvrEngineRun run = nullptr;
  IedvrEngineDestroy destroy = nullptr;
  IedvrEnginePlan plan = nullptr;
};

// The installed layout: site-packages/vapoursynth/plugins/iedvr/ holds this library,
// site-packages/vs_iedvr/ the engine, the operator library and the shipped models.
std::filesystem::path package_folder();

// Loaded once per process and never unloaded (libtorch does not support unloading). nullptr and
// `error` set when the library or one of its functions is missing.
const EngineLibrary* load_engine(std::string& error);

}  // namespace iedvr_vs
