// InterruptibleStore: a store whose blocking calls (Get, Wait) give up early when `interrupt`
// says so. The runtime builds an epoch's world over one, so that a build stops within a slice
// of the moment the job moves on (a rank of that epoch died, a newer epoch was published),
// instead of waiting out its deadline for a rank that will never come.
//
// `interrupt` is asked every `slice` while a Get or Wait blocks; a non-OK status ends the call
// with that status. The other calls return at once and pass straight through. Thread-safe when the base store is.
#ifndef TRIDENT_STORE_INTERRUPTIBLE_STORE_H_
#define TRIDENT_STORE_INTERRUPTIBLE_STORE_H_

#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "trident/store.h"

namespace trident {

std::unique_ptr<Store> NewInterruptibleStore(std::shared_ptr<Store> base,
                                             std::function<absl::Status()> interrupt,
                                             absl::Duration slice = absl::Milliseconds(100));

}  // namespace trident

#endif  // TRIDENT_STORE_INTERRUPTIBLE_STORE_H_
