// A rank of the multi-process checkpoint tests, started by trident-run (ckpt_multiproc_test):
// real processes over libfabric, the engine on a communicator split off the world, host names
// that put ranks 0-1 and 2-3 on two "hosts". Prints "RESULT rank=R ..." lines.
//
//   ckpt_worker DIR save       tp2 x dp2 state saved at steps 1 and 2; each rank checks its
//                              held peer replica; rank 0 loads everything back at tp1 x dp1
//   ckpt_worker DIR die RANK   step 1 as above; at step 2 RANK kills itself with SIGKILL while
//                              writing its shard: the others' saves fail naming it (the world
//                              comes from trident::Runtime, whose watcher aborts the engine's
//                              communicator when trident-run records the death)
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "ckpt_test_util.h"
#include "trident/checkpoint.h"
#include "trident/communicator.h"
#include "trident/runtime.h"
#include "trident/store.h"

namespace trident {
namespace {

using ckpt::Box;
using testing::MakeTensor;
using testing::OwnedTensor;

void Result(int rank, const std::string& what, const absl::Status& s) {
  std::printf("RESULT rank=%d %s code=%s msg=%s\n", rank, what.c_str(),
              absl::StatusCodeToString(s.code()).c_str(), std::string(s.message()).c_str());
  std::fflush(stdout);
}

// Rank r = tp + 2 * dp: "w" [64, 65536] f32 split by columns over tp, replicated over dp
// (8 MiB per rank); "n" [4096] replicated on all four.
std::vector<OwnedTensor> State(uint64_t seed, int rank) {
  const int tp = rank % 2, dp = rank / 2;
  OwnedTensor w = MakeTensor(seed, "w", DType::kF32, {64, 65536}, Box{{0, tp * 32768}, {64, 32768}});
  w.replica_index = dp;
  w.replica_count = 2;
  OwnedTensor n = MakeTensor(seed, "n", DType::kBF16, {4096});
  n.replica_index = rank;
  n.replica_count = 4;
  std::vector<OwnedTensor> out;
  out.push_back(std::move(w));
  out.push_back(std::move(n));
  return out;
}

int Main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: ckpt_worker DIR save | DIR die RANK\n");
    return 2;
  }
  const std::string dir = argv[1], mode = argv[2];
  int victim = -1;
  if (mode == "die" && (argc < 4 || !absl::SimpleAtoi(argv[3], &victim))) return 2;
  auto rt = Runtime::Init({.timeout = absl::Seconds(60)});
  if (!rt.ok()) {
    std::fprintf(stderr, "runtime: %s\n", rt.status().ToString().c_str());
    return 1;
  }
  Communicator& world = (*rt)->world();
  const int rank = world.rank();
  auto split = world.Split(0, rank);
  if (!split.ok()) {
    Result(rank, "split", split.status());
    return 1;
  }
  std::shared_ptr<Communicator> engine_comm = std::move(*split);
  (*rt)->SetGroups({engine_comm.get()});  // aborted with the world when a rank dies
  absl::Cleanup forget = [&] { (*rt)->SetGroups({}); };  // before engine_comm goes
  CheckpointOptions o;
  o.dir = dir;
  o.comm = engine_comm;
  o.memory_budget_bytes = 64 << 20;
  o.host_name = absl::StrCat("host-", rank / 2);
  o.layout = "tp2.dp2";
  auto engine = CheckpointEngine::Create(o);
  if (!engine.ok()) {
    Result(rank, "create", engine.status());
    return 1;
  }
  for (int64_t step : {1, 2}) {
    if (step == 2 && rank == victim) setenv("TRIDENT_CKPT_CRASH_AT", "during_shard_write", 1);
    std::vector<OwnedTensor> state = State(static_cast<uint64_t>(step), rank);
    auto save = (*engine)->Save(step, testing::StateOf(state, absl::StrCat("rank ", rank)));
    absl::Status s = save.ok() ? (*save)->Wait() : save.status();
    Result(rank, absl::StrCat("save step=", step), s);
    if (!s.ok()) {
      // The survivors leave together, so that none of them sees another survivor's exit
      // before its own error (which must name the rank that died).
      auto store = ConnectStoreFromEnv(DeadlineIn(absl::Seconds(30)));
      if (store.ok()) {
        (void)(*store)->Set(absl::StrCat("ckpt_worker/failed/", rank), "1",
                            DeadlineIn(absl::Seconds(30)));
        std::vector<std::string> keys;
        for (int r = 0; r < world.size(); ++r) {
          if (r != victim) keys.push_back(absl::StrCat("ckpt_worker/failed/", r));
        }
        (void)(*store)->Wait(keys, DeadlineIn(absl::Seconds(30)));
      }
      return 1;
    }
    // The replica this rank holds: its buddy's state, on the other "host".
    auto held = (*engine)->HeldReplica();
    const int owner = (rank + 2) % 4;
    absl::Status replica = (*save)->stats().replica_status;
    if (replica.ok() && (held == nullptr || held->owner_rank() != owner || held->step() != step)) {
      replica = absl::InternalError("the held replica is not the buddy's");
    }
    for (const OwnedTensor& t : State(static_cast<uint64_t>(step), owner)) {
      if (!replica.ok()) break;
      std::vector<char> got(t.bytes.size());
      TensorRequest req{t.name, Tensor(got.data(), t.dtype, t.box.shape), t.box.offset, t.global};
      replica = held->Restore({&req, 1});
      if (replica.ok() && got != t.bytes) replica = absl::DataLossError("replica bytes differ");
    }
    Result(rank, absl::StrCat("replica step=", step), replica);
  }
  // Every rank has committed step 2; rank 0 loads it whole (tp 2 -> 1, dp 2 -> 1).
  absl::Status s = world.Barrier()->Wait();
  if (rank == 0 && s.ok()) {
    for (const char* name : {"w", "n"}) {
      const Tensor::Shape global = name == std::string("w") ? Tensor::Shape{64, 65536}
                                                            : Tensor::Shape{4096};
      const DType dtype = name == std::string("w") ? DType::kF32 : DType::kBF16;
      std::string diff = testing::LoadAndCompare(dir, kLatestStep, 2, name, dtype, global,
                                                 Box{Tensor::Shape(global.size(), 0), global});
      if (!diff.empty() && s.ok()) s = absl::DataLossError(diff);
    }
  }
  Result(rank, "load", s);
  return s.ok() ? 0 : 1;
}

}  // namespace
}  // namespace trident

int main(int argc, char** argv) { return trident::Main(argc, argv); }
