// ckpt_crash_child DIR STAGE: two ranks (threads) commit step 1, then save step 2 with
// TRIDENT_CKPT_CRASH_AT=STAGE, which kills this process with SIGKILL at that stage. Exits 3 if
// it survives (the stage was never reached). Used by crash_test.
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "ckpt_crash_state.h"
#include "comm/host/inproc.h"
#include "trident/checkpoint.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: ckpt_crash_child DIR STAGE\n");
    return 2;
  }
  const std::string dir = argv[1], stage = argv[2];
  trident::InprocCommOptions options;
  options.size = 2;
  std::vector<std::shared_ptr<trident::Communicator>> comms;
  for (auto& c : trident::NewInprocCommunicators(options)) comms.push_back(std::move(c));
  std::vector<std::unique_ptr<trident::CheckpointEngine>> engines(2);
  auto each_rank = [&](auto fn) {
    std::vector<std::thread> threads;
    for (int r = 0; r < 2; ++r) threads.emplace_back([&, r] { fn(r); });
    for (auto& t : threads) t.join();
  };
  each_rank([&](int r) {
    trident::CheckpointOptions o;
    o.dir = dir;
    o.comm = comms[r];
    o.memory_budget_bytes = 64 << 20;
    auto e = trident::CheckpointEngine::Create(o);
    if (!e.ok()) {
      std::fprintf(stderr, "create: %s\n", e.status().ToString().c_str());
      std::exit(1);
    }
    engines[r] = std::move(e).value();
  });
  for (int64_t step : {1, 2}) {
    if (step == 2) setenv("TRIDENT_CKPT_CRASH_AT", stage.c_str(), 1);
    each_rank([&](int r) {
      std::vector<trident::testing::OwnedTensor> state = trident::testing::CrashState(step, r);
      auto save = engines[r]->Save(step, trident::testing::StateOf(state));
      absl::Status s = save.ok() ? (*save)->Wait() : save.status();
      if (!s.ok()) {
        std::fprintf(stderr, "step %lld: %s\n", static_cast<long long>(step), s.ToString().c_str());
        std::exit(1);
      }
    });
  }
  std::fprintf(stderr, "ckpt_crash_child: stage %s was never reached\n", stage.c_str());
  return 3;
}
