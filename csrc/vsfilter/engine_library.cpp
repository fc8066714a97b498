#include "engine_library.h"

#include <dlfcn.h>

#include <mutex>

namespace iedvr_vs {

namespace {

std::filesystem::path this_library_folder() {
  Dl_info self{};
  dladdr(reinterpret_cast<void*>(&this_library_folder), &self);
  return std::filesystem::path(self.dli_fname).parent_path();
}

}  // namespace

std::filesystem::path package_folder() {
  return this_library_folder() / ".." / ".." / ".." / "vs_iedvr";
}

const EngineLibrary* load_engine(std::string& error) {
  static std::mutex mutex;
  static EngineLibrary library;
  static std::string load_error;
  static bool tried = false;
  std::lock_guard<std::mutex> lock(mutex);
  if (!tried) {
    tried = true;
    const auto path = package_folder() / "libiedvr_engine.so";
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      load_error = std::string("cannot load the inference engine ") + path.string() + ": " +
                   dlerror() + " (reinstall vs-iedvr)";
    } else {
      library.create = reinterpret_cast<IedvrEngineCreate>(dlsym(handle, "iedvr_engine_create"));
      library.info = reinterpret_cast<IedvrEngineInfo>(dlsym(handle, "iedvr_engine_info"));
      library.run = reinterpret_cast<IedvrEngineRun>(dlsym(handle, "iedvr_engine_run"));
      library.destroy = reinterpret_cast<IedvrEngineDestroy>(dlsym(handle, "iedvr_engine_destroy"));
      library.plan = reinterpret_cast<IedvrEnginePlan>(dlsym(handle, "iedvr_engine_plan"));
      if (!library.create || !library.info || !library.run || !library.destroy || !library.plan) {
        load_error = "the inference engine " + path.string() + " lacks its functions (reinstall vs-iedvr)";
      }
    }
  }
  error = load_error;
  return load_error.empty() ? &library : nullptr;
}

}  // namespace iedvr_vs
