// trident/status_macros.h: early-return helpers for absl::Status and absl::StatusOr, for
// code that calls Trident (the library's own code spells them RETURN_IF_ERROR and
// ASSIGN_OR_RETURN, common/status_macros.h).
//
//   absl::Status Train() {
//     TRIDENT_ASSIGN_OR_RETURN(std::unique_ptr<trident::Runtime> rt, trident::Runtime::Init());
//     TRIDENT_RETURN_IF_ERROR(rt->world().Barrier()->Wait());
//     return absl::OkStatus();
//   }
#ifndef TRIDENT_STATUS_MACROS_H_
#define TRIDENT_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define TRIDENT_CONCAT_INNER_(a, b) a##b
#define TRIDENT_CONCAT_(a, b) TRIDENT_CONCAT_INNER_(a, b)

#define TRIDENT_RETURN_IF_ERROR(expr)                    \
  do {                                                   \
    absl::Status _trident_status = (expr);               \
    if (!_trident_status.ok()) return _trident_status;   \
  } while (0)

#define TRIDENT_ASSIGN_OR_RETURN(lhs, expr) \
  TRIDENT_ASSIGN_OR_RETURN_IMPL_(TRIDENT_CONCAT_(_trident_statusor_, __LINE__), lhs, expr)
#define TRIDENT_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                   \
  if (!tmp.ok()) return tmp.status();                  \
  lhs = std::move(tmp).value()

#endif  // TRIDENT_STATUS_MACROS_H_
