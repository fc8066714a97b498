// What the CPU computes natively, as the engine's defaults need it.
#pragma once

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

namespace cpu_features {

// CPUs that compute bfloat16 natively (AVX512-BF16, or AMX): there 16-bit inference is the
// default, as OpenVINO's is; elsewhere bfloat16 would be emulated and slower than float32.
// IEDVR_CPU_BFLOAT16=0 (or 1) overrides what /proc/cpuinfo says, so that a machine with the units
// can run as one without them does (the CI's lesser-CPU leg; vs_iedvr/precision.py reads it too).
inline bool has_native_bfloat16() {
  if (const char* forced = std::getenv("IEDVR_CPU_BFLOAT16")) {
    const std::string value = forced;
    if (value == "0" || value == "1") return value == "1";
    throw std::runtime_error("IEDVR_CPU_BFLOAT16 must be 0 or 1 (whether the CPU computes "
                             "bfloat16 natively), got \"" + value + "\"");
  }
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("flags", 0) == 0) {
      std::istringstream flags(line.substr(line.find(':') + 1));
      std::string flag;
      while (flags >> flag) {
        if (flag == "avx512_bf16" || flag == "amx_bf16") return true;
      }
      return false;
    }
  }
  return false;
}

}  // namespace cpu_features
