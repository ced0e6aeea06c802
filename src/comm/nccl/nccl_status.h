// Conversion of ncclResult_t into absl::Status, done once at the edge (DESIGN.md, "Errors").
// Compiled in every build (the mapping needs no NCCL header), so its unit test runs
// everywhere; the NCCL backend calls it through NcclCheck (nccl_api.h).
//
//   ncclSuccess                                   OK
//   ncclInvalidArgument                           kInvalidArgument: nothing happened, fix the call
//   ncclInvalidUsage                              kFailedPrecondition: wrong state or order of calls
//   ncclUnhandledCudaError, ncclSystemError,
//   ncclRemoteError                               kAborted: a peer, the network or the device
//                                                 failed; abort and rebuild the communicator
//   ncclInternalError                             kInternal
//   ncclInProgress                                kUnavailable (still in progress)
//   ncclTimeout (NCCL >= 2.30)                    kDeadlineExceeded
//   anything else                                 kUnknown
// The message: "<call>: NCCL error <n> <name> (<ncclGetErrorString>): <ncclGetLastError>".
#ifndef TRIDENT_COMM_NCCL_NCCL_STATUS_H_
#define TRIDENT_COMM_NCCL_NCCL_STATUS_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace trident::nccl {

// ncclResult_t values, as NCCL's header defines them.
enum NcclResultCode : int {
  kNcclSuccess = 0,
  kNcclUnhandledCudaError = 1,
  kNcclSystemError = 2,
  kNcclInternalError = 3,
  kNcclInvalidArgument = 4,
  kNcclInvalidUsage = 5,
  kNcclRemoteError = 6,
  kNcclInProgress = 7,
  kNcclTimeout = 8,  // NCCL 2.30
};

// `error_string` is ncclGetErrorString(result); `last_error` is ncclGetLastError(comm), which
// names the cause when NCCL knows it. Either may be empty.
absl::Status NcclResultToStatus(int result, absl::string_view call,
                                absl::string_view error_string, absl::string_view last_error);

// "ncclRemoteError", ...
absl::string_view NcclResultName(int result);

}  // namespace trident::nccl

#endif  // TRIDENT_COMM_NCCL_NCCL_STATUS_H_
