#include "health/sdc.h"

#include <xxhash.h>

#include <map>
#include <memory>

#include "absl/strings/str_cat.h"
#include "health/membership.h"

namespace trident::health {

absl::StatusOr<uint64_t> DigestTensors(const std::vector<Tensor>& tensors) {
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state(XXH3_createState(),
                                                                  &XXH3_freeState);
  if (state == nullptr || XXH3_64bits_reset(state.get()) != XXH_OK) {
    return absl::ResourceExhaustedError("DigestTensors: cannot allocate an XXH3 state");
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    if (!t.device().is_cpu()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "DigestTensors: tensor ", i, " is in device memory; give host copies (or gathered "
          "views) of the replicated state"));
    }
    const uint64_t n = t.nbytes();
    XXH3_64bits_update(state.get(), &n, sizeof(n));  // boundaries count
    if (n > 0) XXH3_64bits_update(state.get(), t.data(), n);
  }
  return XXH3_64bits_digest(state.get());
}

ReplicaVerdict JudgeReplicas(const std::vector<ReplicaDigest>& all) {
  std::map<int64_t, std::vector<int>> sets;
  for (size_t r = 0; r < all.size(); ++r) {
    if (all[r].set >= 0) sets[all[r].set].push_back(static_cast<int>(r));
  }
  ReplicaVerdict v;
  for (const auto& [set, ranks] : sets) {
    std::map<uint64_t, int> count;
    for (int r : ranks) ++count[all[r].digest];
    if (count.size() <= 1) continue;
    v.replicas = std::max(v.replicas, static_cast<int>(ranks.size()));
    uint64_t best = 0;
    int best_n = 0;
    for (const auto& [d, n] : count) {
      if (n > best_n) best = d, best_n = n;
    }
    if (2 * best_n > static_cast<int>(ranks.size())) {
      for (int r : ranks) {
        if (all[r].digest != best) v.odd.push_back(r);
      }
    } else {
      v.undecided.push_back(ranks);
    }
  }
  return v;
}

std::string SdcPrefix(int64_t epoch) { return absl::StrCat(EpochPrefix(epoch), "job/sdc/"); }
std::string SdcKey(int64_t epoch, int rank) { return absl::StrCat(SdcPrefix(epoch), rank); }

}  // namespace trident::health
