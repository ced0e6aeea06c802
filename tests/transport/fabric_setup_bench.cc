// fabric_setup_bench: what opening a fabric endpoint costs against joining a group with it,
// i.e. what a hot spare saves at promotion by opening its endpoint in advance (run by hand;
// not a ctest). Ranks are threads of this process, each with its own endpoint and store
// client; every phase starts on all ranks at once.
//
//   fabric_setup_bench [shm|tcp] [--ranks N] [--trials T] [--store memory|tcp]
//
// Phases, per trial:
//   open       OpenFabricEndpoint (fi_getinfo .. fi_getname); the process's first one, which
//              also initialises libfabric's providers, is reported on its own
//   join       NewFabricTransport over that endpoint: publish, read every peer, fi_av_insert
//   open+join  NewFabricTransport without an endpoint (what a build does today)
//   first/second exchange  one byte to and from every peer, twice: tcp connects on first use
//   comm       CreateHostCommunicator without and with an endpoint opened in advance
// Per-rank times are summarised as median and max over all ranks and trials.
#include <stdlib.h>

#include <algorithm>
#include <barrier>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "transport/fabric/fabric_transport.h"
#include "trident/communicator.h"
#include "trident/store.h"

namespace trident {
namespace {

struct Args {
  std::string provider = "shm";
  int ranks = 4;
  int trials = 20;
  std::string store = "memory";
};

void Check(const absl::Status& status, const std::string& what) {
  if (!status.ok()) {
    std::fprintf(stderr, "%s: %s\n", what.c_str(), status.ToString().c_str());
    std::exit(1);
  }
}

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

struct Samples {
  std::vector<double> ms;
  void Add(absl::Duration d) { ms.push_back(Ms(d)); }
  std::string Summary() {
    if (ms.empty()) return "-";
    std::sort(ms.begin(), ms.end());
    return absl::StrCat(absl::SixDigits(ms[ms.size() / 2]), " ms median, ",
                        absl::SixDigits(ms.back()), " ms max");
  }
};

// Runs fn(rank) on one thread per rank, all released together; returns each rank's time.
std::vector<absl::Duration> OnAllRanks(int n, const std::function<void(int)>& fn) {
  std::vector<absl::Duration> took(n);
  std::barrier start(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      start.arrive_and_wait();
      const absl::Time t0 = absl::Now();
      fn(r);
      took[r] = absl::Now() - t0;
    });
  }
  for (std::thread& t : threads) t.join();
  return took;
}

// Stores for the ranks of one trial, all seeing the same keys under a fresh prefix.
class Stores {
 public:
  explicit Stores(const Args& args) {
    if (args.store == "tcp") {
      auto server = StartTcpStoreServer({});
      Check(server.status(), "StartTcpStoreServer");
      server_ = *std::move(server);
      for (int r = 0; r < args.ranks; ++r) {
        auto client =
            NewTcpStore(server_->host(), server_->port(), "", absl::Now() + absl::Seconds(10));
        Check(client.status(), "NewTcpStore");
        clients_.push_back(*std::move(client));
      }
    } else {
      std::shared_ptr<Store> memory = NewMemoryStore();
      for (int r = 0; r < args.ranks; ++r) clients_.push_back(memory);
    }
  }
  // Rank r's store for `phase`.
  std::shared_ptr<Store> For(int r, const std::string& phase) {
    return NewPrefixStore(absl::StrCat(phase, "/"), clients_[r]);
  }

 private:
  std::unique_ptr<TcpStoreServer> server_;
  std::vector<std::shared_ptr<Store>> clients_;
};

FabricOptions Options(const Args& args, int rank, Store* store) {
  FabricOptions o;
  o.rank = rank;
  o.size = args.ranks;
  o.store = store;
  o.provider = args.provider;
  o.deadline = absl::Now() + absl::Seconds(60);
  return o;
}

// One byte to and from every peer.
void Exchange(Transport* t, int n) {
  const int me = t->rank();
  std::vector<char> in(n), out(n, 1);
  std::vector<TransportRequest> requests(2 * n);
  for (int p = 0; p < n; ++p) {
    if (p == me) continue;
    Check(t->PostRecv(p, 1, &in[p], 1, &requests[2 * p]), "PostRecv");
    Check(t->PostSend(p, 1, &out[p], 1, &requests[2 * p + 1]), "PostSend");
  }
  for (int p = 0; p < n; ++p) {
    if (p == me) continue;
    for (TransportRequest* r : {&requests[2 * p], &requests[2 * p + 1]}) {
      while (!r->IsDone()) Check(t->Progress().status(), "Progress");
      Check(r->status, "exchange");
    }
  }
}

int Main(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--ranks") {
      if (!absl::SimpleAtoi(next(), &args.ranks) || args.ranks < 1) return 2;
    } else if (a == "--trials") {
      if (!absl::SimpleAtoi(next(), &args.trials) || args.trials < 1) return 2;
    } else if (a == "--store") {
      args.store = next();
    } else {
      args.provider = a;
    }
  }
  setenv("FI_TCP_IFACE", "lo", /*overwrite=*/0);  // never anything but loopback
  const int n = args.ranks;

  const absl::Time t0 = absl::Now();
  auto first = OpenFabricEndpoint(args.provider, "");
  const absl::Duration first_open = absl::Now() - t0;
  Check(first.status(), "first OpenFabricEndpoint");
  first->reset();

  Stores stores(args);
  Samples open, join, open_join, exchange1, exchange2, comm_plain, comm_preopened;
  Samples group_join, group_open_join;
  for (int trial = 0; trial < args.trials; ++trial) {
    std::vector<std::unique_ptr<FabricEndpoint>> endpoints(n);
    for (absl::Duration d : OnAllRanks(n, [&](int r) {
           auto e = OpenFabricEndpoint(args.provider, "");
           Check(e.status(), "OpenFabricEndpoint");
           endpoints[r] = *std::move(e);
         })) {
      open.Add(d);
    }
    std::vector<std::unique_ptr<Transport>> ts(n);
    absl::Duration slowest;
    for (absl::Duration d : OnAllRanks(n, [&](int r) {
           std::shared_ptr<Store> s = stores.For(r, absl::StrCat("join", trial));
           auto t = NewFabricTransport(Options(args, r, s.get()), std::move(endpoints[r]));
           Check(t.status(), "NewFabricTransport(endpoint)");
           ts[r] = *std::move(t);
         })) {
      join.Add(d);
      slowest = std::max(slowest, d);
    }
    group_join.Add(slowest);
    for (absl::Duration d : OnAllRanks(n, [&](int r) { Exchange(ts[r].get(), n); })) {
      exchange1.Add(d);
    }
    for (absl::Duration d : OnAllRanks(n, [&](int r) { Exchange(ts[r].get(), n); })) {
      exchange2.Add(d);
    }
    ts = std::vector<std::unique_ptr<Transport>>(n);  // closes them

    slowest = absl::ZeroDuration();
    for (absl::Duration d : OnAllRanks(n, [&](int r) {
           std::shared_ptr<Store> s = stores.For(r, absl::StrCat("full", trial));
           auto t = NewFabricTransport(Options(args, r, s.get()));
           Check(t.status(), "NewFabricTransport");
           ts[r] = *std::move(t);
         })) {
      open_join.Add(d);
      slowest = std::max(slowest, d);
    }
    group_open_join.Add(slowest);
    ts.clear();

    for (bool preopened : {false, true}) {
      std::vector<std::shared_ptr<HostEndpoint>> handles(n);
      if (preopened) {
        for (int r = 0; r < n; ++r) {
          auto h = OpenHostEndpoint(args.provider);
          Check(h.status(), "OpenHostEndpoint");
          handles[r] = *h;
        }
      }
      std::vector<std::unique_ptr<Communicator>> comms(n);
      for (absl::Duration d : OnAllRanks(n, [&](int r) {
             HostCommOptions o;
             o.rank = r;
             o.world_size = n;
             o.store = stores.For(r, absl::StrCat("comm", trial, preopened));
             o.provider = args.provider;
             o.timeout = absl::Seconds(60);
             o.epoch = 1;
             o.endpoint = handles[r];
             auto c = CreateHostCommunicator(o);
             Check(c.status(), "CreateHostCommunicator");
             comms[r] = *std::move(c);
           })) {
        (preopened ? comm_preopened : comm_plain).Add(d);
      }
    }
  }

  std::printf("provider %s, %d ranks (threads), store %s, %d trials\n", args.provider.c_str(), n,
              args.store.c_str(), args.trials);
  std::printf("  first open in the process (libfabric init): %.3f ms\n", Ms(first_open));
  std::printf("  open                          per rank: %s\n", open.Summary().c_str());
  std::printf("  join                          per rank: %s; slowest rank: %s\n",
              join.Summary().c_str(), group_join.Summary().c_str());
  std::printf("  open+join (no endpoint given) per rank: %s; slowest rank: %s\n",
              open_join.Summary().c_str(), group_open_join.Summary().c_str());
  std::printf("  first exchange after join     per rank: %s\n", exchange1.Summary().c_str());
  std::printf("  second exchange               per rank: %s\n", exchange2.Summary().c_str());
  std::printf("  CreateHostCommunicator        per rank: %s\n", comm_plain.Summary().c_str());
  std::printf("    with a pre-opened endpoint  per rank: %s\n", comm_preopened.Summary().c_str());
  return 0;
}

}  // namespace
}  // namespace trident

int main(int argc, char** argv) { return trident::Main(argc, argv); }
