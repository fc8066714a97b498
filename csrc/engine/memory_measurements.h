// The memory plan's measurements: what a window of the engine's model costs on its device, the
// budget the plan may use, and the plan for a frame size (the rule itself is memory_plan.h).
#pragma once

#include "engine_state.h"

// Arguments as iedvr_engine_plan takes them (engine.h); throws when nothing fits the budget.
IedvrPlan plan_memory(IedvrEngine* engine, int width, int height, int streams,
                      double host_bytes_per_pixel, const IedvrTiling* given);

// IEDVR_MAX_MEMORY_MB in bytes, 0 where it is not set; throws, naming the variable, for anything
// but a positive finite number of megabytes. Read by every plan, and checked when an engine is
// created, so that the filter refuses a bad value when it is created, not at its first frame.
double memory_limit_setting();
