#include "model_files.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "engine_library.h"

namespace iedvr_vs {

namespace {

// Where `vs-iedvr fetch` installs the official models, as vs_iedvr/model_zoo.py's models_folder:
// $IEDVR_MODEL_DIR, else $XDG_DATA_HOME/vs-iedvr/models, else ~/.local/share/vs-iedvr/models.
std::filesystem::path fetched_models_folder() {
  const char* chosen = std::getenv("IEDVR_MODEL_DIR");
  if (chosen != nullptr && *chosen != '\0') return chosen;
  const char* data_home = std::getenv("XDG_DATA_HOME");
  if (data_home != nullptr && *data_home != '\0') {
    return std::filesystem::path(data_home) / "vs-iedvr" / "models";
  }
  const char* home = std::getenv("HOME");
  return std::filesystem::path(home != nullptr ? home : "") / ".local" / "share" / "vs-iedvr" /
         "models";
}

// The short names of vs_iedvr/model_zoo.py's MODELS (tests/test_fetch.py checks that every one
// is known here): a bare name among them is a fetched model file, or an error naming the command
// that fetches it. The filter never downloads.
bool is_official_model(const std::string& name) {
  static const char* const names[] = {
      "edvr-m", "edvr-m-notsa", "edvr-l", "edvr-l-vimeo", "edvr-l-blur", "edvr-l-deblur",
      "edvr-l-deblurcomp", "edvr-m-mmagic", "edvr-m-notsa-mmagic", "edvr-l-mmagic",
      "edvr-l-notsa-mmagic"};
  return std::any_of(std::begin(names), std::end(names),
                     [&](const char* official) { return name == official; });
}

std::string without_pt(const std::string& name) {
  return name.size() > 3 && name.compare(name.size() - 3, 3, ".pt") == 0
             ? name.substr(0, name.size() - 3)
             : name;
}

// The shipped models' names, for the message when a model file does not exist.
std::string shipped_names(const std::filesystem::path& shipped) {
  std::string names;
  std::error_code ignored;
  for (const auto& entry : std::filesystem::directory_iterator(shipped, ignored)) {
    if (entry.path().extension() != ".pt") continue;
    names += (names.empty() ? "" : ", ") + entry.path().stem().string();
  }
  return names;
}

}  // namespace

std::string find_model_file(const char* model, int model_size, int64_t scale, std::string& error) {
  const std::filesystem::path shipped = package_folder() / "models";
  if (model == nullptr) {
    // The shipped weights: default.pt upscales x4, default-x<s>.pt any other scale s.
    const std::string name = scale == 4 ? "default.pt" : "default-x" + std::to_string(scale) + ".pt";
    if (!std::filesystem::exists(shipped / name)) {
      error = "no default model for scale=" + std::to_string(scale) +
              " is installed with this vs-iedvr; pass model=\"path/to/model.pt\" (export one "
              "with `vs-iedvr export`)";
      return {};
    }
    return (shipped / name).string();
  }
  // A NUL inside the data would end the path there: 'default\0/etc/passwd' loaded "default".
  if (std::memchr(model, '\0', static_cast<size_t>(model_size)) != nullptr) {
    error = "model must not contain a NUL character (it would cut the path short there)";
    return {};
  }
  std::string path(model, static_cast<size_t>(model_size));
  std::error_code ignored;
  // A bare name that is no file here names a shipped model ("default-x2" or "default-x2.pt") or
  // an official EDVR model ("edvr-m" or "edvr-m.pt", installed by `vs-iedvr fetch edvr-m`).
  if (path.find('/') == std::string::npos && !std::filesystem::exists(path, ignored)) {
    bool found = false;
    for (const std::string& name : {path, path + ".pt"}) {
      if (std::filesystem::is_regular_file(shipped / name, ignored)) {
        path = (shipped / name).string();
        found = true;
        break;
      }
    }
    const std::string bare = without_pt(path);
    if (!found && is_official_model(bare)) {
      const std::filesystem::path fetched = fetched_models_folder() / (bare + ".pt");
      if (!std::filesystem::is_regular_file(fetched, ignored)) {
        error = "model \"" + bare + "\" is an official EDVR model that is not fetched yet: "
                "run `vs-iedvr fetch " + bare + "` first (it installs " + fetched.string() +
                "; the filter never downloads)";
        return {};
      }
      path = fetched.string();
    }
  }
  std::error_code status_error;
  const auto status = std::filesystem::status(path, status_error);
  if (!std::filesystem::exists(status)) {
    const std::string names = shipped_names(shipped);
    error = "model file \"" + path + "\" does not exist" +
            (names.empty() ? std::string() : "; the shipped models are " + names);
    return {};
  }
  if (!std::filesystem::is_regular_file(status)) {
    error = "model \"" + path + "\" is " +
            (std::filesystem::is_directory(status) ? "a directory" : "not a regular file") +
            "; expected a model file from `vs-iedvr export`";
    return {};
  }
  return path;
}

}  // namespace iedvr_vs
