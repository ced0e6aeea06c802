// The registry of every TRIDENT_* setting: name, type, default and what it does.
//
// Settings are read from the environment when asked for; nothing is cached in mutable
// globals. DescribeParams() lists each value and where it came from (trident-run
// --print-params prints it). Adding a setting: add one row to the table in params.cc.
#ifndef TRIDENT_COMMON_PARAMS_H_
#define TRIDENT_COMMON_PARAMS_H_

#include <cstdint>
#include <string>
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace trident {

struct ParamDesc {
  absl::string_view name;
  absl::string_view type;  // "int", "string", "duration_ms"
  absl::string_view default_value;
  absl::string_view doc;
  int64_t min = 0;              // int and duration_ms: the smallest value allowed
  absl::string_view choices;    // string: the values allowed, comma-separated; empty: any
  bool secret = false;          // never printed or logged
  // Other launchers' names for the same setting, read in this order when the TRIDENT_*
  // variable is unset (comma-separated): TRIDENT_RANK falls back to RANK (torchrun), then
  // SLURM_PROCID (srun). Errors and DescribeParams name the variable actually read.
  absl::string_view fallbacks;
};

absl::Span<const ParamDesc> AllParams();

// Whether the environment's value of a registered parameter is valid: an int or duration that
// parses and is at least its minimum (an empty value means the default), a string among its
// choices. kInvalidArgument naming the variable, its value (unless secret) and what is
// allowed. CheckParams() checks every registered parameter and returns the first bad one; the
// public entry points (CreateHostCommunicator, CheckpointEngine::Create, Runtime::Init) and
// the tools call it first, and the tools exit 2 with its message.
absl::Status CheckParam(absl::string_view name);
absl::Status CheckParams();

// The value of a registered parameter: the environment's, else the default. A value that
// CheckParam rejects gives the default and an error in the log (never an abort: CheckParams
// is where a bad setting is reported). CHECK-fails on a name that is not registered (a bug).
std::string ParamString(absl::string_view name);
int64_t ParamInt(absl::string_view name);
absl::Duration ParamMillis(absl::string_view name);

// One line per parameter: name=value (default|env), INVALID when CheckParam rejects it, and
// its doc. Secrets show as <hidden>.
std::string DescribeParams();

}  // namespace trident

#endif  // TRIDENT_COMMON_PARAMS_H_
