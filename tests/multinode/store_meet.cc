// multinode_store_meet: a store client for the namespace tests (tests/multinode/*.sh), one
// process per "host".
//
//   store_meet ping URL SECONDS        connects (retrying until SECONDS) and exits 0
//   store_meet meet URL NAME N         takes an arrival number (Add "arrived"), sets
//                                      host/<number> = NAME, waits for host/1..N and prints
//                                      "meet: NAME1 NAME2 ..." in arrival order
//   store_meet live URL KEY TTL_S      sets KEY with an etcd lease of TTL_S seconds, prints
//                                      "live", and renews until killed (exits 3 if the lease is
//                                      lost, naming why); at most 120 s
//   store_meet get URL KEY SECONDS     waits for KEY and prints "KEY = VALUE"
//   store_meet gone URL KEY SECONDS    waits until KEY is absent; prints "gone after N ms"
// Exits 1 (printing the status) when a store call fails, 2 on a usage error.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "store/etcd_store.h"
#include "trident/store.h"

namespace {

int Fail(const absl::Status& status) {
  std::printf("store error: %s\n", status.ToString().c_str());
  std::fflush(stdout);
  return 1;
}

int Usage() {
  std::fprintf(stderr,
               "usage: store_meet ping URL S | meet URL NAME N | live URL KEY TTL_S | "
               "get URL KEY S | gone URL KEY S\n");
  return 2;
}

int Main(int argc, char** argv) {
  if (argc < 4) return Usage();
  const std::string op = argv[1];
  const std::string url = argv[2];
  int arg = 0;
  if (!absl::SimpleAtoi(argv[argc - 1], &arg) || arg <= 0) return Usage();
  const absl::Duration timeout = absl::Seconds(op == "meet" || op == "live" ? 30 : arg);
  const absl::Time deadline = trident::DeadlineIn(timeout);

  if (op == "live") {
    if (argc != 5) return Usage();
    absl::StatusOr<trident::EtcdStoreOptions> options = trident::ParseEtcdUrl(url);
    if (!options.ok()) return Fail(options.status());
    absl::StatusOr<std::unique_ptr<trident::EtcdStore>> store =
        trident::NewEtcdStore(*options, deadline);
    if (!store.ok()) return Fail(store.status());
    absl::StatusOr<std::unique_ptr<trident::EtcdLease>> lease =
        (*store)->SetWhileAlive(argv[3], "alive", absl::Seconds(arg), deadline);
    if (!lease.ok()) return Fail(lease.status());
    std::printf("live\n");
    std::fflush(stdout);
    absl::Time end = absl::Now() + absl::Seconds(120);
    while (absl::Now() < end) {
      if ((*lease)->lost()) {
        std::printf("lease lost: %s\n", (*lease)->status().ToString().c_str());
        return 3;
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
    return 0;
  }

  absl::StatusOr<std::unique_ptr<trident::Store>> store =
      trident::ConnectStore(url, "", deadline);
  if (!store.ok()) return Fail(store.status());
  if (op == "ping") return 0;
  if (op == "meet") {
    if (argc != 5) return Usage();
    absl::StatusOr<int64_t> me = (*store)->Add("arrived", 1, deadline);
    if (!me.ok()) return Fail(me.status());
    absl::Status set = (*store)->Set(absl::StrCat("host/", *me), argv[3], deadline);
    if (!set.ok()) return Fail(set);
    std::vector<std::string> keys;
    for (int i = 1; i <= arg; ++i) keys.push_back(absl::StrCat("host/", i));
    absl::Status waited = (*store)->Wait(keys, deadline);
    if (!waited.ok()) return Fail(waited);
    std::vector<std::string> names;
    for (const std::string& key : keys) {
      absl::StatusOr<std::string> name = (*store)->TryGet(key, deadline);
      if (!name.ok()) return Fail(name.status());
      names.push_back(*name);
    }
    std::printf("meet: %s\n", absl::StrJoin(names, " ").c_str());
    return 0;
  }
  if (op == "get") {
    absl::StatusOr<std::string> value = (*store)->Get(argv[3], deadline);
    if (!value.ok()) return Fail(value.status());
    std::printf("%s = %s\n", argv[3], value->c_str());
    return 0;
  }
  if (op == "gone") {
    absl::Time start = absl::Now();
    while (absl::Now() < deadline) {
      absl::StatusOr<std::string> value = (*store)->TryGet(argv[3], deadline);
      if (absl::IsNotFound(value.status())) {
        std::printf("gone after %lld ms\n",
                    static_cast<long long>(absl::ToInt64Milliseconds(absl::Now() - start)));
        return 0;
      }
      if (!value.ok()) return Fail(value.status());
      absl::SleepFor(absl::Milliseconds(50));
    }
    std::printf("still there after %d s\n", arg);
    return 1;
  }
  return Usage();
}

}  // namespace

int main(int argc, char** argv) { return Main(argc, argv); }
