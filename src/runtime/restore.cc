#include "runtime/restore.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "health/sdc.h"

namespace trident::runtime_internal {
namespace {

// What each rank brings to the restore (all-gathered as int64s).
struct RankState {
  int64_t replica_owner = -1;  // whose replica this rank holds (-1: none)
  int64_t replica_step = -1;
  int64_t completed = -1;      // completed steps; -1: fresh (its state is not the job's)
  int64_t dirty = 0;
  int64_t verified = -1;       // its state passed the replica check at this step (-1: no)
  int64_t set = -1;            // Trainable::ReplicatedState: its replica set,
  int64_t complete = 0;        // whether those tensors are its whole state,
  int64_t bytes = 0;           // their size,
  int64_t digest = 0;          // and their digest (a verified rank only)
};
static_assert(sizeof(RankState) == 9 * sizeof(int64_t));

// Tag of the state copied from a healthy replica (below the peer replicas' 0xC4A0xx).
constexpr int kTagReplicaCopy = 0xC4B000;

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

std::string Hex(uint64_t digest) { return absl::StrFormat("%016x", digest); }

// A state loaded from checkpoint `step` against the digest its commit recorded for this
// rank's replica set (when the manifest has digests and this run's layout).
absl::Status VerifyDigest(const std::string& dir, int64_t step, Trainable& trainer) {
  ASSIGN_OR_RETURN(CheckpointManifest m, ReadManifest(dir, step));
  if (m.replica_sets.empty() || m.layout != trainer.Layout()) return absl::OkStatus();
  Trainable::Replicas rep = trainer.ReplicatedState();
  if (rep.set < 0) return absl::OkStatus();
  for (size_t r = 0; r < m.replica_sets.size(); ++r) {
    if (m.replica_sets[r] != rep.set) continue;
    ASSIGN_OR_RETURN(uint64_t mine, health::DigestTensors(rep.tensors));
    if (mine == m.replica_digests[r]) return absl::OkStatus();
    // Short: the restore all-gathers the first 251 bytes of each rank's error.
    return absl::DataLossError(absl::StrCat(
        "refusing checkpoint step ", step, ": replica set ", rep.set, " hashes to ", Hex(mine),
        " but the commit recorded ", Hex(m.replica_digests[r]), " (rank ", r,
        "): its files pass their checksums but are not the committed state"));
  }
  return absl::OkStatus();
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
  RETURN_IF_ERROR(VerifyDigest(dir, step, trainer));
  trainer.SetRestoredStep(step);
  return absl::OkStatus();
}

absl::Status StatusOf(const Outcome& o) {
  return absl::Status(static_cast<absl::StatusCode>(o.code), o.message);
}

// Step 2b of the header: the fresh ranks copy a verified replica's state. Returns the step
// when every rank is there; nullopt when the conditions do not hold or a copy failed on some
// rank (the checkpoints decide then); an error of the communicator.
absl::StatusOr<std::optional<int64_t>> FromHealthyReplica(Communicator& world,
                                                         Trainable& trainer,
                                                         const std::vector<RankState>& all) {
  const int n = static_cast<int>(all.size());
  const int me = world.rank();
  int64_t step = -1;
  for (const RankState& r : all) {
    if (r.completed < 0) continue;
    if (r.dirty != 0 || r.verified != r.completed || (step >= 0 && r.completed != step)) {
      return std::nullopt;
    }
    step = r.completed;
  }
  if (step < 0) return std::nullopt;
  std::vector<int> donor(n, -1);
  for (int r = 0; r < n; ++r) {
    if (all[r].completed >= 0) continue;
    if (all[r].complete == 0 || all[r].set < 0) return std::nullopt;
    for (int h = 0; h < n && donor[r] < 0; ++h) {
      if (all[h].completed >= 0 && all[h].set == all[r].set && all[h].bytes == all[r].bytes) {
        donor[r] = h;
      }
    }
    if (donor[r] < 0) return std::nullopt;
  }
  absl::Status local;
  for (int r = 0; r < n; ++r) {
    if (donor[r] < 0 || (me != r && me != donor[r])) continue;
    std::vector<Tensor> tensors = trainer.ReplicatedState().tensors;
    std::vector<std::shared_ptr<Work>> works;
    for (const Tensor& t : tensors) {
      if (t.nbytes() == 0) continue;
      Tensor bytes(t.data(), DType::kU8, {static_cast<int64_t>(t.nbytes())});
      works.push_back(me == r ? world.Recv(bytes, donor[r], kTagReplicaCopy)
                              : world.Send(bytes, r, kTagReplicaCopy));
    }
    for (const auto& w : works) {
      if (absl::Status s = w->Wait(); !s.ok() && local.ok()) local = s;
    }
    if (me == r && local.ok()) {
      absl::StatusOr<uint64_t> digest = health::DigestTensors(tensors);
      if (!digest.ok()) {
        local = digest.status();
      } else if (*digest != static_cast<uint64_t>(all[donor[r]].digest)) {
        local = absl::DataLossError(absl::StrCat(
            "the state copied from rank ", donor[r], " hashes to ", Hex(*digest),
            ", not to the digest its replicas agreed on at step ", step, " (",
            Hex(static_cast<uint64_t>(all[donor[r]].digest)), ")"));
      } else {
        trainer.SetRestoredStep(step);
      }
    }
  }
  if (IsRecoverable(local) && !absl::IsFailedPrecondition(local)) return local;  // a peer died
  Outcome out;
  out.code = static_cast<int32_t>(local.code());
  std::strncpy(out.message, std::string(local.message()).c_str(), sizeof(out.message) - 1);
  std::vector<Outcome> outcomes(n);
  RETURN_IF_ERROR(Wait(world.AllGather(BytesOf(&out, 1), BytesOf(outcomes.data(), n))));
  for (int r = 0; r < n; ++r) {
    if (outcomes[r].code == 0) continue;
    TLOG(warn, "restore: copying a healthy replica's state at step {} failed on rank {} ({}); "
               "restoring from the checkpoints instead",
         step, r, StatusOf(outcomes[r]).ToString());
    return std::nullopt;
  }
  return step;
}

}  // namespace

absl::StatusOr<RestoreResult> Restore(Communicator& world, Trainable& trainer,
                                      const std::string& dir, bool fresh,
                                      std::shared_ptr<const PeerReplica> held,
                                      bool reset_if_none, int64_t verified) {
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
  {
    Trainable::Replicas rep = trainer.ReplicatedState();
    mine.set = rep.set;
    mine.complete = rep.complete ? 1 : 0;
    for (const Tensor& t : rep.tensors) mine.bytes += static_cast<int64_t>(t.nbytes());
    if (!fresh && mine.dirty == 0 && rep.set >= 0 && verified >= 0 &&
        verified == trainer.step()) {
      ASSIGN_OR_RETURN(uint64_t digest, health::DigestTensors(rep.tensors));
      mine.verified = verified;
      mine.digest = static_cast<int64_t>(digest);
    }
  }
  std::vector<RankState> all(n);
  RETURN_IF_ERROR(Wait(world.AllGather(BytesOf(&mine, 1), BytesOf(all.data(), n))));

  RestoreResult result;
  result.source = "none";
  int64_t ahead = 0;
  for (const RankState& r : all) ahead = std::max(ahead, r.completed);

  ASSIGN_OR_RETURN(std::optional<int64_t> kept, FromHealthyReplica(world, trainer, all));
  if (kept.has_value()) {
    result.step = *kept;
    result.steps_redone = std::max<int64_t>(0, ahead - *kept);
    for (const RankState& r : all) {
      if (r.completed < 0) result.source = "replica";
    }
    candidates[0] = 0;  // nothing to load
  } else if (candidates[0] == 0) {
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
