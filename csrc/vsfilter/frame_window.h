// Which input frames make output frame n's window: n - N .. n + N, folded back into the clip (or
// into frame n's shot, at a scene change) at its ends.
#pragma once

#include <algorithm>
#include <cstdint>

namespace iedvr_vs {

enum class Border { reflect, replicate };

// Index `i` folded into [first, last] by reflection about the ends (or clamping to them). 64-bit:
// clips can be up to INT_MAX frames long (std.Loop), so n + radius and 2 * (last - first)
// overflow an int.
inline int fold(int64_t i, int64_t first, int64_t last, Border border) {
  if (first == last) return static_cast<int>(first);
  if (border == Border::replicate) return static_cast<int>(std::clamp(i, first, last));
  const int64_t period = 2 * (last - first);
  int64_t offset = (i - first) % period;
  if (offset < 0) offset += period;
  return static_cast<int>(first + (offset <= last - first ? offset : period - offset));
}

}  // namespace iedvr_vs
