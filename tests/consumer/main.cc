// Uses only the installed public headers: a store and a one-rank world communicator.
#include <cstdio>
#include <vector>

#include "trident/communicator.h"
#include "trident/store.h"

int main() {
  std::shared_ptr<trident::Store> store = trident::NewMemoryStore();
  trident::HostCommOptions options;
  options.rank = 0;
  options.world_size = 1;
  options.store = store;
  options.provider = "shm";
  auto comm = trident::CreateHostCommunicator(options);
  if (!comm.ok()) {
    std::fprintf(stderr, "consumer: %s\n", comm.status().ToString().c_str());
    return 1;
  }
  std::vector<float> v = {1, 2, 3};
  auto t = trident::Tensor::Of(v.data(), 3);
  absl::Status s = (*comm)->AllReduce(t, t, trident::ReduceOp::kSum)->Wait();
  if (!s.ok() || v[2] != 3) {
    std::fprintf(stderr, "consumer: allreduce: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("consumer ok: %s\n", (*comm)->Describe().c_str());
  return 0;
}
