#include "runtime/restore.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace trident::runtime_internal {
namespace {

// What each rank brings to the restore (all-gathered as int64s).
struct RankState {
  int64_t replica_owner = -1;  // whose replica this rank holds (-1: none)
  int64_t replica_step = -1;
  int64_t completed = -1;      // completed steps; -1: fresh (its state is not the job's)
  int64_t dirty = 0;
};
static_assert(sizeof(RankState) == 4 * sizeof(int64_t));

// One rank's outcome of loading a step, all-gathered as fixed-size bytes.
struct Outcome {
  int32_t code = 0;  // absl::StatusCode
  char message[252] = {};
};
static_assert(sizeof(Outcome) == 256);

constexpr int kMaxCandidates = 32;

absl::Status Wait(const std::shared_ptr<Work>& work) { return work->Wait(); }

template <typename T>
Tensor BytesOf(T* items, size_t n) {
  return Tensor::Of(reinterpret_cast<uint8_t*>(items), sizeof(T) * n);
}

// Loads checkpoint `step` into the trainer; says the checkpoint's layout when a tensor is
// missing (a checkpoint of another optimizer layout, e.g. ZeRO-1, has other tensors).
absl::Status LoadInto(const std::string& dir, int64_t step, Trainable& trainer) {
  absl::StatusOr<LoadResult> loaded = LoadCheckpoint(dir, step, trainer.RestoreRequests());
  if (!loaded.ok()) {
    absl::Status s = loaded.status();
    if (absl::IsNotFound(s)) {
      absl::StatusOr<CheckpointManifest> m = ReadManifest(dir, step);
      if (m.ok() && m->layout != trainer.Layout()) {
        return absl::FailedPreconditionError(absl::StrCat(
            s.message(), " (checkpoint step ", step, " was saved with layout '", m->layout,
            "' and this run's is '", trainer.Layout(),
            "': its tensors do not cover this layout's state)"));
      }
    }
    return s;
  }
  trainer.SetRestoredStep(step);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<RestoreResult> Restore(Communicator& world, Trainable& trainer,
                                      const std::string& dir, bool fresh,
                                      std::shared_ptr<const PeerReplica> held,
                                      bool reset_if_none) {
  const int n = world.size();
  const int me = world.rank();
  // 1. The candidates, newest first, as rank 0 sees them: [count, step...].
  std::array<int64_t, kMaxCandidates + 1> candidates{};
  if (me == 0 && !dir.empty()) {
    absl::StatusOr<std::vector<CheckpointInfo>> listed = ListCheckpoints(dir);
    if (!listed.ok() && !absl::IsNotFound(listed.status())) return listed.status();
    if (listed.ok()) {
      // From the step `latest` names (the newest committed one when it names none), back.
      int64_t first = listed->empty() ? -1 : listed->back().step;
      for (const CheckpointInfo& c : *listed) {
        if (c.latest) first = c.step;
      }
      for (auto it = listed->rbegin(); it != listed->rend() && candidates[0] < kMaxCandidates;
           ++it) {
        if (it->step <= first) candidates[1 + candidates[0]++] = it->step;
      }
    }
  }
  RETURN_IF_ERROR(Wait(world.Broadcast(Tensor::Of(candidates.data(), candidates.size()), 0)));

  // 2. Who holds what.
  RankState mine;
  mine.replica_owner = held ? held->owner_rank() : -1;
  mine.replica_step = held ? held->step() : -1;
  mine.completed = fresh ? -1 : trainer.step();
  mine.dirty = trainer.dirty() ? 1 : 0;
  std::vector<RankState> all(n);
  RETURN_IF_ERROR(Wait(world.AllGather(BytesOf(&mine, 1), BytesOf(all.data(), n))));

  RestoreResult result;
  result.source = "none";
  int64_t ahead = 0;
  for (const RankState& r : all) ahead = std::max(ahead, r.completed);

  if (candidates[0] == 0) {
    if (reset_if_none) {
      // No committed checkpoint yet: the initial state (a function of the seed) is step 0's.
      trainer.ResetToInitialState();
      result.source = "init";
    }
    result.step = trainer.step();
    result.steps_redone = std::max<int64_t>(0, ahead - result.step);
  }
  for (int k = 0; k < candidates[0]; ++k) {
    const int64_t s = candidates[1 + k];
    absl::Status local;
    std::string source = "none";
    for (int r = 0; r < n; ++r) {  // every rank walks every r: transfers pair up
      // After a skipped step every rank reads the older checkpoint.
      const bool needs = k > 0 || all[r].completed != s || all[r].dirty != 0;
      if (!needs) continue;
      const bool was_fresh = all[r].completed < 0;
      int holder = -1;
      for (int h = 0; h < n && was_fresh && k == 0; ++h) {
        if (h != r && all[h].replica_owner == r && all[h].replica_step == s) holder = h;
      }
      if (holder >= 0) {
        if (me == holder) RETURN_IF_ERROR(SendPeerReplica(world, r, *held));
        if (me == r) {
          const absl::Time t0 = absl::Now();
          ASSIGN_OR_RETURN(std::shared_ptr<PeerReplica> replica, FetchPeerReplica(world, holder));
          result.peer_ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
          local = replica->Restore(trainer.RestoreRequests());
          if (local.ok()) trainer.SetRestoredStep(replica->step());
          result.peer_bytes = static_cast<int64_t>(replica->bytes());
        }
        if (was_fresh) source = "peer";
      } else {
        if (me == r) local = LoadInto(dir, s, trainer);
        if (was_fresh && source != "peer") source = "checkpoint";
      }
    }
    // 4. Every rank's outcome.
    Outcome out;
    out.code = static_cast<int32_t>(local.code());
    std::strncpy(out.message, std::string(local.message()).c_str(), sizeof(out.message) - 1);
    std::vector<Outcome> outcomes(n);
    RETURN_IF_ERROR(Wait(world.AllGather(BytesOf(&out, 1), BytesOf(outcomes.data(), n))));
    std::vector<std::string> bad;
    bool only_data_loss = true;
    absl::StatusCode first_code = absl::StatusCode::kOk;
    for (int r = 0; r < n; ++r) {
      const auto code = static_cast<absl::StatusCode>(outcomes[r].code);
      if (code == absl::StatusCode::kOk) continue;
      if (first_code == absl::StatusCode::kOk || first_code == absl::StatusCode::kDataLoss) {
        first_code = code;
      }
      only_data_loss = only_data_loss && code == absl::StatusCode::kDataLoss;
      bad.push_back(absl::StrCat("rank ", r, ": ", absl::StatusCodeToString(code), ": ",
                                 outcomes[r].message));
    }
    if (bad.empty()) {
      result.step = s;
      result.source = source;
      result.steps_redone = std::max<int64_t>(0, ahead - s);
      break;
    }
    if (!only_data_loss) {
      return absl::Status(
          first_code,
          absl::StrCat("restoring checkpoint step ", s, " of ", dir,
                       " failed: ", absl::StrJoin(bad, "; ")));
    }
    result.skipped.push_back(absl::StrCat("step ", s, ": ", absl::StrJoin(bad, "; ")));
    if (k + 1 == candidates[0]) {
      return absl::DataLossError(absl::StrCat("no committed checkpoint of ", dir,
                                              " could be loaded: ",
                                              absl::StrJoin(result.skipped, " | ")));
    }
  }
  // The peer transfer happened on one rank; every rank learns its size and time.
  double transfer[2] = {static_cast<double>(result.peer_bytes), result.peer_ms};
  Tensor t = Tensor::Of(transfer, 2);
  RETURN_IF_ERROR(Wait(world.AllReduce(t, t, ReduceOp::kMax)));
  result.peer_bytes = static_cast<int64_t>(transfer[0]);
  result.peer_ms = transfer[1];
  // Every rank agrees on where it is now.
  int64_t lo = trainer.step(), hi = trainer.step();
  RETURN_IF_ERROR(Wait(world.AllReduce(Tensor::Of(&lo, 1), Tensor::Of(&lo, 1), ReduceOp::kMin)));
  RETURN_IF_ERROR(Wait(world.AllReduce(Tensor::Of(&hi, 1), Tensor::Of(&hi, 1), ReduceOp::kMax)));
  if (lo != result.step || hi != result.step) {
    return absl::InternalError(absl::StrCat("after the restore the ranks are at steps ", lo,
                                            " to ", hi, ", not all at ", result.step));
  }
  return result;
}

}  // namespace trident::runtime_internal
