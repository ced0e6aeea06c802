// Communicators whose ranks are threads of this process, over the in-process transport: the
// fast, deterministic way to test the algorithms and the failure handling.
#ifndef TRIDENT_COMM_HOST_INPROC_H_
#define TRIDENT_COMM_HOST_INPROC_H_

#include <memory>
#include <vector>

#include "comm/host/algorithms.h"
#include "comm/host/shm/shm_engine.h"
#include "trident/communicator.h"
#include "trident/store.h"

namespace trident {

struct InprocCommOptions {
  int size = 1;
  std::shared_ptr<Store> store;  // nullptr: a fresh MemoryStore
  absl::Duration timeout = absl::Seconds(30);
  AlgoParams algo{64 << 10, 1 << 20};
  // Collectives on the shared-memory engine (as processes on one host get by default).
  bool shm = false;
  ShmParams shm_params;
};

// Element r is rank r's communicator; hand each to its own thread.
std::vector<std::unique_ptr<Communicator>> NewInprocCommunicators(InprocCommOptions options);

}  // namespace trident

#endif  // TRIDENT_COMM_HOST_INPROC_H_
