#include "comm/host/inproc.h"

#include "comm/host/host_communicator.h"
#include "common/check.h"
#include "transport/inproc/inproc_transport.h"

namespace trident {

std::vector<std::unique_ptr<Communicator>> NewInprocCommunicators(InprocCommOptions options) {
  std::shared_ptr<Store> store = options.store ? options.store : NewMemoryStore();
  std::vector<std::shared_ptr<Transport>> transports = NewInprocTransports(options.size);
  std::vector<int> ranks(options.size);
  for (int r = 0; r < options.size; ++r) ranks[r] = r;
  std::vector<std::unique_ptr<Communicator>> out;
  for (int r = 0; r < options.size; ++r) {
    HostCommConfig config;
    config.transport = transports[r];
    config.store = store;
    config.ranks = ranks;
    config.rank = r;
    config.name = "inproc";
    config.timeout = options.timeout;
    config.algo = options.algo;
    config.shm_params = options.shm_params;
    if (options.shm) {
      // Rank 0 creates the segment first, so the others find it at once.
      auto engine = ShmEngine::Create(*store, "inproc/shm", r, ranks, options.shm_params,
                                      DeadlineIn(absl::Seconds(10)));
      TRIDENT_CHECK(engine.ok()) << "in-process shm engine: " << engine.status();
      config.shm = *std::move(engine);
    }
    out.push_back(std::make_unique<HostCommunicator>(std::move(config)));
  }
  return out;
}

}  // namespace trident
