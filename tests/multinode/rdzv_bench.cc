// multinode_rdzv_bench: rendezvous time of N simulated agents against one etcd (threads, each
// with its own EtcdStore client and connections, as separate agents would have).
//
//   multinode_rdzv_bench URL N [ROUNDS] [add|coord]
//
// Each agent registers a leased liveness key (agent/<i>, ttl 10 s), then
//   add   (default) takes an arrival number (Add "arrived": a compare-and-set loop on one key,
//         which every agent contends for), and the last to arrive publishes "ready";
//   coord agent 0 acts as the coordinator: it waits for every agent/<i> (one Wait: reads, then
//         a watch) and publishes "ready";
// and every agent waits for "ready" (a watch). One row per round: agents, the time from the start until every agent saw "ready"
// (max), the median agent's time, and the store calls made. Exits 1 if any call failed.
// A measurement tool (docs/benchmarks.md), not a test.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/barrier.h"
#include "absl/time/clock.h"
#include "store/etcd_store.h"

namespace {

int Main(int argc, char** argv) {
  int n = 0, rounds = 1;
  const std::string mode = argc > 4 ? argv[4] : "add";
  if (argc < 3 || !absl::SimpleAtoi(argv[2], &n) || n < 1 ||
      (argc > 3 && !absl::SimpleAtoi(argv[3], &rounds)) || (mode != "add" && mode != "coord")) {
    std::fprintf(stderr, "usage: multinode_rdzv_bench etcd://h:p/JOB AGENTS [ROUNDS] [add|coord]\n");
    return 2;
  }
  absl::StatusOr<trident::EtcdStoreOptions> base = trident::ParseEtcdUrl(argv[1]);
  if (!base.ok()) {
    std::fprintf(stderr, "%s\n", base.status().ToString().c_str());
    return 2;
  }
  std::printf("# mode %s\n# agents  rendezvous_max_ms  rendezvous_median_ms\n", mode.c_str());
  int failures = 0;
  for (int round = 0; round < rounds; ++round) {
    trident::EtcdStoreOptions options = *base;
    options.job = absl::StrCat(base->job, "-", n, "-", round, "-", absl::ToUnixMicros(absl::Now()));
    // Connect every agent first (not timed: agents start at different times anyway).
    std::vector<std::unique_ptr<trident::EtcdStore>> stores(n);
    for (int i = 0; i < n; ++i) {
      auto store = trident::NewEtcdStore(options, trident::DeadlineIn(absl::Seconds(30)));
      if (!store.ok()) {
        std::fprintf(stderr, "%s\n", store.status().ToString().c_str());
        return 1;
      }
      stores[i] = *std::move(store);
    }
    std::vector<absl::Duration> took(n);
    std::atomic<int> failed{0};
    absl::Barrier* start = new absl::Barrier(n + 1);
    absl::Time t0;
    std::vector<std::thread> agents;
    for (int i = 0; i < n; ++i) {
      agents.emplace_back([&, i] {
        if (start->Block()) delete start;
        absl::Time deadline = trident::DeadlineIn(absl::Seconds(120));
        trident::EtcdStore& store = *stores[i];
        auto lease = store.SetWhileAlive(absl::StrCat("agent/", i), "alive", absl::Seconds(10),
                                         deadline);
        absl::Status ok = lease.ok() ? absl::OkStatus() : lease.status();
        if (ok.ok() && mode == "add") {
          absl::StatusOr<int64_t> me = store.Add("arrived", 1, deadline);
          if (!me.ok()) ok = me.status();
          if (ok.ok() && *me == n) ok = store.Set("ready", "1", deadline);
        } else if (ok.ok() && i == 0) {
          std::vector<std::string> keys;
          for (int k = 0; k < n; ++k) keys.push_back(absl::StrCat("agent/", k));
          ok = store.Wait(keys, deadline);
          if (ok.ok()) ok = store.Set("ready", "1", deadline);
        }
        if (ok.ok()) ok = store.Get("ready", deadline).status();
        took[i] = absl::Now() - t0;
        if (!ok.ok()) {
          failed.fetch_add(1);
          std::fprintf(stderr, "agent %d: %s\n", i, ok.ToString().c_str());
        }
      });
    }
    t0 = absl::Now();
    if (start->Block()) delete start;
    for (std::thread& t : agents) t.join();
    std::sort(took.begin(), took.end());
    std::printf("%8d %18.1f %21.1f\n", n, absl::ToDoubleMilliseconds(took.back()),
                absl::ToDoubleMilliseconds(took[n / 2]));
    std::fflush(stdout);
    failures += failed.load();
    stores.clear();  // revokes the leases
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) { return Main(argc, argv); }
