// CreateHostCommunicator: the world communicator of the host backend over libfabric; and
// OpenHostEndpoint, its endpoint opened in advance.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "comm/host/host_communicator.h"
#include "common/logging.h"
#include "common/params.h"
#include "common/status_macros.h"
#include "transport/fabric/fabric_transport.h"
#include "trident/communicator.h"

namespace trident {

// A FabricEndpoint until a communicator takes it.
class HostEndpoint {
 public:
  explicit HostEndpoint(std::unique_ptr<FabricEndpoint> endpoint)
      : description_(endpoint->Describe()), endpoint_(std::move(endpoint)) {}

  // The endpoint, when it fits `options` and no communicator took it before.
  absl::StatusOr<std::unique_ptr<FabricEndpoint>> Take(const FabricOptions& options) {
    absl::MutexLock lock(&mu_);
    if (endpoint_ == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("the HostEndpoint (", description_,
                       ") was consumed by an earlier CreateHostCommunicator; open another with "
                       "OpenHostEndpoint"));
    }
    RETURN_IF_ERROR(CheckFabricEndpoint(*endpoint_, options));
    return std::move(endpoint_);
  }

 private:
  const std::string description_;
  absl::Mutex mu_;
  std::unique_ptr<FabricEndpoint> endpoint_ ABSL_GUARDED_BY(mu_);
};

namespace {

std::string Hostname() {
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  return name;
}

// Every rank publishes its host name; shm works only when all ranks share one host.
absl::StatusOr<bool> AllOnOneHost(Store& setup, int rank, int size, absl::Time deadline) {
  const std::string mine = Hostname();
  RETURN_IF_ERROR(setup.Set(absl::StrCat("host/", rank), mine, deadline));
  for (int r = 0; r < size; ++r) {
    absl::StatusOr<std::string> host = setup.Get(absl::StrCat("host/", r), deadline);
    if (!host.ok()) {
      const bool late = host.status().code() == absl::StatusCode::kDeadlineExceeded;
      return Annotate(host.status(),
                      absl::StrCat("CreateHostCommunicator: rank ", rank, " of ", size,
                                   " waiting for rank ", r, " to join the setup",
                                   late ? " (is it running, with the same name, epoch and "
                                          "world size?)"
                                        : ""));
    }
    if (*host != mine) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::shared_ptr<HostEndpoint>> OpenHostEndpoint(std::string provider) {
  RETURN_IF_ERROR(Annotate(CheckParams(), "OpenHostEndpoint"));
  if (provider.empty()) provider = ParamString("TRIDENT_FABRIC_PROVIDER");
  if (provider.empty()) provider = "shm";
  absl::StatusOr<std::unique_ptr<FabricEndpoint>> endpoint =
      OpenFabricEndpoint(provider, ParamString("TRIDENT_FABRIC_IFACE"));
  if (!endpoint.ok()) return Annotate(endpoint.status(), "OpenHostEndpoint");
  TLOG(debug, "opened a host endpoint in advance: {}", (*endpoint)->Describe());
  return std::make_shared<HostEndpoint>(*std::move(endpoint));
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateHostCommunicator(HostCommOptions options) {
  RETURN_IF_ERROR(Annotate(CheckParams(), "CreateHostCommunicator"));
  if (options.rank < 0) options.rank = static_cast<int>(ParamInt("TRIDENT_RANK"));
  if (options.world_size < 0) options.world_size = static_cast<int>(ParamInt("TRIDENT_WORLD_SIZE"));
  const int rank = options.rank, size = options.world_size;
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CreateHostCommunicator: rank ", rank, " and world size ", size,
        " are not valid; run under trident-run or set TRIDENT_RANK and TRIDENT_WORLD_SIZE"));
  }
  InitLogging(absl::StrCat("rank ", rank));
  if (options.timeout == absl::ZeroDuration()) options.timeout = ParamMillis("TRIDENT_TIMEOUT_MS");
  const absl::Time deadline = std::min(DeadlineIn(options.timeout), options.setup_deadline);

  std::shared_ptr<Store> store = options.store;
  if (store == nullptr) {
    ASSIGN_OR_RETURN(std::unique_ptr<Store> connected, ConnectStoreFromEnv(deadline));
    store = std::move(connected);
  }
  // Keys of this communicator's setup; a process may build several worlds in turn, and every
  // rank builds them in the same order.
  static std::atomic<int> instances{0};
  const std::string instance =
      options.epoch > 0 ? absl::StrCat("e", options.epoch) : absl::StrCat(instances++);
  std::shared_ptr<Store> setup =
      NewPrefixStore(absl::StrCat("setup/", options.name, "/", instance, "/"), store);

  std::string provider = options.provider.empty() ? ParamString("TRIDENT_FABRIC_PROVIDER")
                                                  : options.provider;
  const bool want_shm = ParamString("TRIDENT_INTRAHOST") == "shm" && size > 1;
  bool one_host = false;
  if (provider.empty() || want_shm) {
    ASSIGN_OR_RETURN(one_host, AllOnOneHost(*setup, rank, size, deadline));
  }
  if (provider.empty()) provider = one_host ? "shm" : "tcp";
  FabricOptions fabric;
  fabric.rank = rank;
  fabric.size = size;
  fabric.store = setup.get();
  fabric.provider = provider;
  fabric.iface = ParamString("TRIDENT_FABRIC_IFACE");
  fabric.deadline = deadline;
  std::unique_ptr<FabricEndpoint> endpoint;
  if (options.endpoint != nullptr) {
    absl::StatusOr<std::unique_ptr<FabricEndpoint>> taken = options.endpoint->Take(fabric);
    if (!taken.ok()) return Annotate(taken.status(), "CreateHostCommunicator");
    endpoint = *std::move(taken);
  }
  absl::StatusOr<std::unique_ptr<Transport>> transport =
      NewFabricTransport(fabric, std::move(endpoint));
  if (!transport.ok()) return Annotate(transport.status(), "CreateHostCommunicator");

  // A job-wide unique context id keeps this communicator's tags and store keys apart.
  std::string context;
  if (rank == 0) {
    ASSIGN_OR_RETURN(int64_t next, store->Add("comm/next_context", 1, deadline));
    context = absl::StrCat(next);
    RETURN_IF_ERROR(setup->Set("context", context, deadline));
  } else {
    ASSIGN_OR_RETURN(context, setup->Get("context", deadline));
  }

  HostCommConfig config;
  config.transport = std::move(*transport);
  config.store = store;
  for (int r = 0; r < size; ++r) config.ranks.push_back(r);
  config.rank = rank;
  int context_id = 0;
  if (!absl::SimpleAtoi(context, &context_id) || context_id > 0xffff) {
    return absl::ResourceExhaustedError(
        absl::StrCat("CreateHostCommunicator: no communicator context id left (got ", context, ")"));
  }
  config.context = static_cast<uint16_t>(context_id);
  config.name = options.name;
  config.epoch = options.epoch;
  config.on_peer_error = std::move(options.on_peer_error);
  config.timeout = options.timeout;
  config.algo.small_bytes = static_cast<size_t>(ParamInt("TRIDENT_SMALL_MSG_BYTES"));
  config.algo.chunk_bytes = static_cast<size_t>(ParamInt("TRIDENT_CHUNK_BYTES"));
  // Every rank on this host: collectives on the shared-memory engine (send/recv stay on the
  // transport). Ranks on several hosts: everything over libfabric.
  config.shm_params.slot_bytes = static_cast<size_t>(ParamInt("TRIDENT_SHM_SLOT_BYTES"));
  config.shm_params.oneshot_bytes = static_cast<size_t>(ParamInt("TRIDENT_SHM_ONESHOT_BYTES"));
  if (want_shm && one_host) {
    absl::StatusOr<std::unique_ptr<ShmEngine>> engine =
        ShmEngine::Create(*setup, "shm", rank, config.ranks, config.shm_params, deadline);
    if (!engine.ok()) return Annotate(engine.status(), "CreateHostCommunicator");
    config.shm = *std::move(engine);
  }
  auto comm = std::make_unique<HostCommunicator>(std::move(config));
  TLOG(debug, "created {}", comm->Describe());
  return std::unique_ptr<Communicator>(std::move(comm));
}

}  // namespace trident
