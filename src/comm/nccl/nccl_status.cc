#include "comm/nccl/nccl_status.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/ascii.h"

#if TRIDENT_HAVE_NCCL
#include <nccl.h>
static_assert(trident::nccl::kNcclSuccess == int{ncclSuccess} &&
              trident::nccl::kNcclUnhandledCudaError == int{ncclUnhandledCudaError} &&
              trident::nccl::kNcclSystemError == int{ncclSystemError} &&
              trident::nccl::kNcclInternalError == int{ncclInternalError} &&
              trident::nccl::kNcclInvalidArgument == int{ncclInvalidArgument} &&
              trident::nccl::kNcclInvalidUsage == int{ncclInvalidUsage} &&
              trident::nccl::kNcclRemoteError == int{ncclRemoteError} &&
              trident::nccl::kNcclInProgress == int{ncclInProgress});
#endif

namespace trident::nccl {

absl::string_view NcclResultName(int result) {
  switch (result) {
    case kNcclSuccess: return "ncclSuccess";
    case kNcclUnhandledCudaError: return "ncclUnhandledCudaError";
    case kNcclSystemError: return "ncclSystemError";
    case kNcclInternalError: return "ncclInternalError";
    case kNcclInvalidArgument: return "ncclInvalidArgument";
    case kNcclInvalidUsage: return "ncclInvalidUsage";
    case kNcclRemoteError: return "ncclRemoteError";
    case kNcclInProgress: return "ncclInProgress";
    case kNcclTimeout: return "ncclTimeout";
  }
  return "unknown ncclResult_t";
}

absl::Status NcclResultToStatus(int result, absl::string_view call,
                                absl::string_view error_string, absl::string_view last_error) {
  if (result == kNcclSuccess) return absl::OkStatus();
  absl::StatusCode code;
  absl::string_view hint;
  switch (result) {
    case kNcclInvalidArgument:
      code = absl::StatusCode::kInvalidArgument;
      break;
    case kNcclInvalidUsage:
      code = absl::StatusCode::kFailedPrecondition;
      break;
    case kNcclUnhandledCudaError:
      code = absl::StatusCode::kAborted;
      hint = "; a CUDA call inside NCCL failed: abort and rebuild the communicator";
      break;
    case kNcclSystemError:
      code = absl::StatusCode::kAborted;
      hint = "; a system call or the network failed (often a peer that died): abort and rebuild "
             "the communicator";
      break;
    case kNcclRemoteError:
      code = absl::StatusCode::kAborted;
      hint = "; a peer reported an error: abort and rebuild the communicator";
      break;
    case kNcclInternalError:
      code = absl::StatusCode::kInternal;
      break;
    case kNcclInProgress:
      code = absl::StatusCode::kUnavailable;
      break;
    case kNcclTimeout:
      code = absl::StatusCode::kDeadlineExceeded;
      break;
    default:
      code = absl::StatusCode::kUnknown;
      break;
  }
  std::string message = absl::StrCat(call, ": NCCL error ", result, " ", NcclResultName(result));
  if (!error_string.empty()) absl::StrAppend(&message, " (", error_string, ")");
  absl::string_view last = absl::StripAsciiWhitespace(last_error);
  if (!last.empty()) absl::StrAppend(&message, ": ", last);
  absl::StrAppend(&message, hint);
  return absl::Status(code, message);
}

}  // namespace trident::nccl
