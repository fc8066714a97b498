// The memory plan's measurements: what a window of the engine's model costs on its device, the
// budget the plan may use, and the plan for a frame size (the rule itself is memory_plan.h).
#pragma once

#include "engine_state.h"

// Arguments as iedvr_engine_plan takes them (engine.h); throws when nothing fits the budget.
IedvrPlan plan_memory(IedvrEngine* engine, int width, int height, int streams,
                      double host_bytes_per_pixel, const IedvrTiling* given);
