// Which model file Upscale's `model=` names: a path, a shipped model's name, an official EDVR
// model fetched by `vs-iedvr fetch`, or (without model=) the shipped default of the scale.
#pragma once

#include <cstdint>
#include <string>

namespace iedvr_vs {

// `model`/`model_size`: the argument's bytes, nullptr when it is not given; `scale`: the scale
// asked for (4 when none was). The file's path, or an empty string and `error` saying what is
// wrong and what to do.
std::string find_model_file(const char* model, int model_size, int64_t scale, std::string& error);

}  // namespace iedvr_vs
