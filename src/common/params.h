// The registry of every TRIDENT_* setting: name, type, default and what it does.
//
// Settings are read from the environment when asked for; nothing is cached in mutable
// globals. DescribeParams() lists each value and where it came from (trident-run
// --print-params prints it). Adding a setting: add one row to the table in params.cc.
#ifndef TRIDENT_COMMON_PARAMS_H_
#define TRIDENT_COMMON_PARAMS_H_

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/time/time.h"
#include "absl/types/span.h"

namespace trident {

struct ParamDesc {
  absl::string_view name;
  absl::string_view type;  // "int", "string", "duration_ms"
  absl::string_view default_value;
  absl::string_view doc;
};

absl::Span<const ParamDesc> AllParams();

// The value of a registered parameter: the environment's, else the default. CHECK-fails on a
// name that is not registered (a bug), and on an int value that does not parse (a
// misconfiguration must not be silently ignored).
std::string ParamString(absl::string_view name);
int64_t ParamInt(absl::string_view name);
absl::Duration ParamMillis(absl::string_view name);

// One line per parameter: name=value (default|env) and its doc.
std::string DescribeParams();

}  // namespace trident

#endif  // TRIDENT_COMMON_PARAMS_H_
