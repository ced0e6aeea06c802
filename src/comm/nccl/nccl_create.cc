// CreateNcclCommunicator: the world communicator of the NCCL backend; in a build without NCCL,
// the answer that says so.
#include <algorithm>
#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/cuda.h"
#include "common/logging.h"
#include "common/params.h"
#include "common/status_macros.h"
#include "trident/nccl.h"

#if TRIDENT_HAVE_NCCL
#include <nccl.h>

#include "comm/nccl/nccl_communicator.h"
#endif

namespace trident {

bool NcclBuilt() {
#if TRIDENT_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(NcclCommOptions options) {
  RETURN_IF_ERROR(Annotate(CheckParams(), "CreateNcclCommunicator"));
#if !TRIDENT_HAVE_NCCL
  return absl::FailedPreconditionError(
      "CreateNcclCommunicator: this build of trident has no NCCL backend (built with "
      "TRIDENT_WITH_NCCL=OFF, or CUDA/NCCL were not found at build time); use "
      "CreateHostCommunicator, which also takes CUDA tensors when built with CUDA");
#else
  if (options.rank < 0) options.rank = static_cast<int>(ParamInt("TRIDENT_RANK"));
  if (options.world_size < 0) options.world_size = static_cast<int>(ParamInt("TRIDENT_WORLD_SIZE"));
  const int rank = options.rank, size = options.world_size;
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CreateNcclCommunicator: rank ", rank, " and world size ", size,
        " are not valid; run under trident-run or set TRIDENT_RANK and TRIDENT_WORLD_SIZE"));
  }
  if (!options.job_ranks.empty() && static_cast<int>(options.job_ranks.size()) != size) {
    return absl::InvalidArgumentError(absl::StrCat("CreateNcclCommunicator: job_ranks has ",
                                                   options.job_ranks.size(),
                                                   " entries for a world of ", size));
  }
  if (options.name.empty() || options.name.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CreateNcclCommunicator: name '", options.name, "' must be non-empty and without '/'"));
  }
  InitLogging(absl::StrCat("rank ", rank));
  const int devices = cuda::DeviceCount();
  if (devices == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CreateNcclCommunicator: no CUDA device: ", cuda::NoDeviceReason()));
  }
  int device = options.device;
  if (device < 0) device = static_cast<int>(ParamInt("TRIDENT_LOCAL_RANK") % devices);
  if (device >= devices) {
    return absl::InvalidArgumentError(absl::StrCat("CreateNcclCommunicator: device ", device,
                                                   " does not exist; this process sees ",
                                                   devices, " CUDA device(s)"));
  }
  if (options.timeout == absl::ZeroDuration()) options.timeout = ParamMillis("TRIDENT_TIMEOUT_MS");
  const absl::Time deadline = std::min(DeadlineIn(options.timeout), options.setup_deadline);
  std::shared_ptr<Store> store = options.store;
  if (store == nullptr) {
    ASSIGN_OR_RETURN(std::unique_ptr<Store> connected, ConnectStoreFromEnv(deadline));
    store = std::move(connected);
  }

  // The unique id and the context id live under the name and the epoch: a rebuild in a new
  // epoch (survivors and promoted spares) meets under fresh keys and never reads a stale id.
  const std::string prefix = absl::StrCat("nccl/", options.name, "/epoch/", options.epoch, "/");
  const std::string what =
      absl::StrCat("CreateNcclCommunicator(", options.name, ", epoch ", options.epoch, ")");
  ncclUniqueId id;
  std::string id_hex;
  if (rank == 0) {
    // Claim the name first: ncclGetUniqueId starts a bootstrap listener thread that only a
    // communicator init ends, so it must not run for a build that is refused.
    const std::string claim = absl::StrCat("rank 0 of ", size);
    ASSIGN_OR_RETURN(std::string previous,
                     store->CompareSet(absl::StrCat(prefix, "claimed"), "", claim, deadline));
    if (previous != claim) {
      return absl::FailedPreconditionError(absl::StrCat(
          what, ": a communicator with this name was already built in this epoch; use a new "
                "name or epoch"));
    }
    ASSIGN_OR_RETURN(int64_t next, store->Add("comm/next_context", 1, deadline));
    RETURN_IF_ERROR(store->Set(absl::StrCat(prefix, "context"), absl::StrCat(next), deadline));
    RETURN_IF_ERROR(nccl::NcclCheck(ncclGetUniqueId(&id), "ncclGetUniqueId"));
    id_hex = absl::BytesToHexString(absl::string_view(id.internal, sizeof(id.internal)));
    RETURN_IF_ERROR(store->Set(absl::StrCat(prefix, "unique_id"), id_hex, deadline));
  } else {
    absl::StatusOr<std::string> got = store->Get(absl::StrCat(prefix, "unique_id"), deadline);
    if (!got.ok()) return Annotate(got.status(), absl::StrCat(what, ": waiting for rank 0"));
    id_hex = *got;
  }
  std::string id_bytes = absl::HexStringToBytes(id_hex);
  if (id_bytes.size() != sizeof(id.internal)) {
    return absl::InternalError(absl::StrCat(what, ": malformed unique id in the store"));
  }
  std::memcpy(id.internal, id_bytes.data(), sizeof(id.internal));
  ASSIGN_OR_RETURN(std::string context, store->Get(absl::StrCat(prefix, "context"), deadline));

  nccl::NcclGroup group;
  group.name = options.name;
  group.epoch = options.epoch;
  group.rank = rank;
  group.size = size;
  group.device = device;
  if (!absl::SimpleAtoi(context, &group.context)) {
    return absl::InternalError(absl::StrCat(what, ": bad context id ", context));
  }
  group.job_ranks = options.job_ranks;
  if (group.job_ranks.empty()) {
    for (int r = 0; r < size; ++r) group.job_ranks.push_back(r);
  }
  group.timeout = options.timeout;
  group.store = store;

  cuda::DeviceGuard guard(device);
  RETURN_IF_ERROR(guard.status());
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // init, split and ops return ncclInProgress: all bounded and abortable
  config.commName = options.name.c_str();
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommInitRankConfig(&comm, size, id, rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    absl::Status s = Annotate(nccl::NcclCheck(r, "ncclCommInitRankConfig", comm), what);
    nccl::AbortBounded(comm, group, s);
    return s;
  }
  return nccl::FinishNcclInit(comm, std::move(group), deadline);
#endif
}

}  // namespace trident
