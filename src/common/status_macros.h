// Early-return helpers for absl::Status / absl::StatusOr, and the conversion of errno.
#ifndef TRIDENT_COMMON_STATUS_MACROS_H_
#define TRIDENT_COMMON_STATUS_MACROS_H_

#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define TRIDENT_CONCAT_INNER_(a, b) a##b
#define TRIDENT_CONCAT_(a, b) TRIDENT_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(expr)                   \
  do {                                          \
    absl::Status _trident_status = (expr);      \
    if (!_trident_status.ok()) return _trident_status; \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(TRIDENT_CONCAT_(_trident_statusor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                           \
  if (!tmp.ok()) return tmp.status();          \
  lhs = std::move(tmp).value()

namespace trident {

// Converts an errno value from `call` (e.g. "connect(127.0.0.1:29400)") into a Status whose
// code follows DESIGN.md: timeouts, refused connections and resets are kUnavailable.
absl::Status ErrnoToStatus(int err, absl::string_view call);

// Prepends context to a status message, keeping the code: "while X: <message>".
absl::Status Annotate(const absl::Status& status, absl::string_view context);

}  // namespace trident

#endif  // TRIDENT_COMMON_STATUS_MACROS_H_
