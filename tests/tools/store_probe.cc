// trident_run_store_probe: a rank program for trident_run_test that talks to the store
// trident-run hands it (TRIDENT_STORE, TRIDENT_JOB_TOKEN).
//
//   store_probe wait-failed K   waits for job/failed/K and prints "job/failed/K = <value>"
//   store_probe meet            every rank sets meet/<rank>, then waits for all of them
//   store_probe bad-token       connects with a wrong token; prints the status it gets and
//                               exits 0 only if it is kPermissionDenied
//   store_probe rebuild         rank 0 asks for a rebuild of epoch 1 (job/rebuild/1); every
//                               rank waits for job/membership/2 and prints it
//   store_probe report-rank0    every rank beats (job/heartbeat/<member>, every 20 ms); ranks
//                               other than 0 report rank 0 as a transport error would
//                               (job/suspect_rank/0/<rank>) and wait for job/failed/0, which
//                               they print; rank 0 beats until it is killed
// Exits 1 (printing the status) when a store call fails, 2 on a usage error.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "trident/store.h"

namespace {

constexpr absl::Duration kTimeout = absl::Seconds(30);

int Fail(const absl::Status& status) {
  std::printf("store error: %s\n", status.ToString().c_str());
  return 1;
}

int WaitFailed(const std::string& rank) {
  absl::StatusOr<std::unique_ptr<trident::Store>> store =
      trident::ConnectStoreFromEnv(trident::DeadlineIn(kTimeout));
  if (!store.ok()) return Fail(store.status());
  const std::string key = absl::StrCat("job/failed/", rank);
  absl::StatusOr<std::string> value = (*store)->Get(key, trident::DeadlineIn(kTimeout));
  if (!value.ok()) return Fail(value.status());
  std::printf("%s = %s\n", key.c_str(), value->c_str());
  return 0;
}

int Meet() {
  const char* rank = std::getenv("TRIDENT_RANK");
  const char* world = std::getenv("TRIDENT_WORLD_SIZE");
  int world_size = 0;
  if (rank == nullptr || world == nullptr || !absl::SimpleAtoi(world, &world_size)) return 2;
  absl::StatusOr<std::unique_ptr<trident::Store>> store =
      trident::ConnectStoreFromEnv(trident::DeadlineIn(kTimeout));
  if (!store.ok()) return Fail(store.status());
  absl::Status status =
      (*store)->Set(absl::StrCat("meet/", rank), rank, trident::DeadlineIn(kTimeout));
  if (!status.ok()) return Fail(status);
  std::vector<std::string> keys;
  for (int r = 0; r < world_size; ++r) keys.push_back(absl::StrCat("meet/", r));
  status = (*store)->Wait(keys, trident::DeadlineIn(kTimeout));
  if (!status.ok()) return Fail(status);
  std::printf("met %d ranks\n", world_size);
  return 0;
}

int BadToken() {
  const char* url = std::getenv("TRIDENT_STORE");
  if (url == nullptr) return 2;
  const absl::Time deadline = trident::DeadlineIn(absl::Seconds(10));
  absl::Status status;
  absl::StatusOr<std::unique_ptr<trident::Store>> store =
      trident::ConnectStore(url, "not-the-job-token", deadline);
  if (!store.ok()) {
    status = store.status();
  } else {
    status = (*store)->Set("intruder", "x", deadline);  // the refusal may come on first use
  }
  std::printf("bad token: %s\n", status.ToString().c_str());
  return status.code() == absl::StatusCode::kPermissionDenied ? 0 : 1;
}

int Rebuild() {
  const char* rank = std::getenv("TRIDENT_RANK");
  if (rank == nullptr) return 2;
  absl::StatusOr<std::unique_ptr<trident::Store>> store =
      trident::ConnectStoreFromEnv(trident::DeadlineIn(kTimeout));
  if (!store.ok()) return Fail(store.status());
  if (std::string(rank) == "0") {
    absl::Status status = (*store)->Set("job/rebuild/1", "w0: the build timed out",
                                        trident::DeadlineIn(kTimeout));
    if (!status.ok()) return Fail(status);
  }
  absl::StatusOr<std::string> m = (*store)->Get("job/membership/2", trident::DeadlineIn(kTimeout));
  if (!m.ok()) return Fail(m.status());
  std::printf("job/membership/2 = %s\n", m->c_str());
  return 0;
}

int ReportRank0() {
  const char* rank = std::getenv("TRIDENT_RANK");
  const char* member = std::getenv("TRIDENT_MEMBER");
  if (rank == nullptr || member == nullptr) return 2;
  absl::StatusOr<std::unique_ptr<trident::Store>> store =
      trident::ConnectStoreFromEnv(trident::DeadlineIn(kTimeout));
  if (!store.ok()) return Fail(store.status());
  const absl::Time give_up = trident::DeadlineIn(kTimeout);
  bool reported = std::string(rank) == "0";
  while (absl::Now() < give_up) {
    absl::StatusOr<int64_t> beat = (*store)->Add(absl::StrCat("job/heartbeat/", member), 1,
                                                 trident::DeadlineIn(kTimeout));
    if (!beat.ok()) return Fail(beat.status());
    if (!reported && *beat >= 3) {  // after a few beats: the agent watches this member
      absl::Status status = (*store)->Set(absl::StrCat("job/suspect_rank/0/", rank),
                                          "connection reset by peer", trident::DeadlineIn(kTimeout));
      if (!status.ok()) return Fail(status);
      reported = true;
    }
    if (std::string(rank) != "0") {
      absl::StatusOr<std::string> failed =
          (*store)->TryGet("job/failed/0", trident::DeadlineIn(kTimeout));
      if (failed.ok()) {
        std::printf("job/failed/0 = %s\n", failed->c_str());
        return 0;
      }
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  std::printf("gave up after %s\n", absl::FormatDuration(kTimeout).c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "wait-failed" && argc == 3) return WaitFailed(argv[2]);
  if (mode == "meet" && argc == 2) return Meet();
  if (mode == "bad-token" && argc == 2) return BadToken();
  if (mode == "report-rank0" && argc == 2) return ReportRank0();
  if (mode == "rebuild" && argc == 2) return Rebuild();
  std::fprintf(stderr, "usage: %s wait-failed K | meet | bad-token | report-rank0 | rebuild\n",
               argv[0]);
  return 2;
}
