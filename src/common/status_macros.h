// Early-return helpers for absl::Status / absl::StatusOr, and the conversion of errno.
#ifndef TRIDENT_COMMON_STATUS_MACROS_H_
#define TRIDENT_COMMON_STATUS_MACROS_H_

#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trident/status_macros.h"

// The library's own spelling of trident/status_macros.h's macros.
#define RETURN_IF_ERROR(expr) TRIDENT_RETURN_IF_ERROR(expr)
#define ASSIGN_OR_RETURN(lhs, expr) TRIDENT_ASSIGN_OR_RETURN(lhs, expr)

namespace trident {

// Converts an errno value from `call` (e.g. "connect(127.0.0.1:29400)") into a Status whose
// code follows DESIGN.md: timeouts, refused connections and resets are kUnavailable.
absl::Status ErrnoToStatus(int err, absl::string_view call);

// Prepends context to a status message, keeping the code: "while X: <message>".
absl::Status Annotate(const absl::Status& status, absl::string_view context);

}  // namespace trident

#endif  // TRIDENT_COMMON_STATUS_MACROS_H_
