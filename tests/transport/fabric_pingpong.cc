// fabric_pingpong: bandwidth and latency of FabricTransport between two processes (run by
// hand; not a ctest). Measured like scripts/fi_bench.cpp in the research notes, so the
// numbers compare with docs' baselines: `bw` keeps a window of 64 sends in flight and the
// receiver acks each window; `lat` is a ping-pong round trip.
//
//   fabric_pingpong [shm|tcp] [bw|lat|all] [--tags same|distinct] [--trials N] [--mib M]
//                   [--part BYTES] [--size BYTES]...
//
// --tags same sends every message of a window with one tag (receives of one (peer, tag) are
// posted in turn, see fabric_transport.cc); distinct gives each window slot its own tag.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/host_memory.h"
#include "transport/fabric/fabric_transport.h"
#include "trident/store.h"

namespace trident {
namespace {

constexpr int kWindow = 64;
constexpr uint64_t kAckTag = 1u << 20;

struct Args {
  std::string provider = "shm";
  std::string mode = "all";
  bool distinct_tags = false;
  int trials = 3;
  size_t mib_per_trial = 512;
  size_t part_bytes = 0;      // FabricOptions::max_part_bytes
  std::vector<size_t> sizes;  // empty: the defaults of each mode
};

void Check(const absl::Status& status, const char* what) {
  if (!status.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, status.ToString().c_str());
    std::exit(1);
  }
}

void Wait(Transport* t, std::vector<TransportRequest>& requests) {
  for (;;) {
    bool all = true;
    for (TransportRequest& r : requests) all = all && r.IsDone();
    if (all) break;
    Check(t->Progress().status(), "Progress");
  }
  for (TransportRequest& r : requests) Check(r.status, "request");
}

// Returns GB/s measured on rank 0 (the sender).
double Bandwidth(Transport* t, size_t size, const Args& args, char* buf) {
  const size_t total = std::max<size_t>(args.mib_per_trial << 20, 256 * size);
  const int windows = static_cast<int>(std::max<size_t>(1, total / (size * kWindow)));
  std::vector<TransportRequest> requests(kWindow), ack(1);
  char dummy = 0;
  const absl::Time start = absl::Now();
  for (int w = 0; w < windows; ++w) {
    requests = std::vector<TransportRequest>(kWindow);
    for (int i = 0; i < kWindow; ++i) {
      uint64_t tag = args.distinct_tags ? i : 0;
      if (t->rank() == 0) {
        Check(t->PostSend(1, tag, buf, size, &requests[i]), "PostSend");
      } else {
        Check(t->PostRecv(0, tag, buf, size, &requests[i]), "PostRecv");
      }
    }
    Wait(t, requests);
    ack = std::vector<TransportRequest>(1);
    if (t->rank() == 0) {
      Check(t->PostRecv(1, kAckTag, &dummy, 0, &ack[0]), "PostRecv(ack)");
    } else {
      Check(t->PostSend(0, kAckTag, &dummy, 0, &ack[0]), "PostSend(ack)");
    }
    Wait(t, ack);
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return static_cast<double>(size) * kWindow * windows / seconds / 1e9;
}

// Returns the round-trip time in microseconds.
double Latency(Transport* t, size_t size, char* buf) {
  auto round = [&] {
    std::vector<TransportRequest> r(1);
    if (t->rank() == 0) {
      Check(t->PostSend(1, 7, buf, size, &r[0]), "PostSend");
      Wait(t, r);
      r = std::vector<TransportRequest>(1);
      Check(t->PostRecv(1, 8, buf, size, &r[0]), "PostRecv");
      Wait(t, r);
    } else {
      Check(t->PostRecv(0, 7, buf, size, &r[0]), "PostRecv");
      Wait(t, r);
      r = std::vector<TransportRequest>(1);
      Check(t->PostSend(0, 8, buf, size, &r[0]), "PostSend");
      Wait(t, r);
    }
  };
  for (int i = 0; i < 100; ++i) round();
  // Both ranks must run the same number of rounds: rank 0 times 100 and tells rank 1 how many
  // rounds fill about 0.3 s.
  absl::Time start = absl::Now();
  for (int i = 0; i < 100; ++i) round();
  double per = absl::ToDoubleSeconds(absl::Now() - start) / 100;
  int64_t n = 0;
  std::vector<TransportRequest> r(1);
  if (t->rank() == 0) {
    n = std::clamp<int64_t>(static_cast<int64_t>(0.3 / per), 100, 10000);
    Check(t->PostSend(1, 9, &n, sizeof(n), &r[0]), "PostSend(n)");
  } else {
    Check(t->PostRecv(0, 9, &n, sizeof(n), &r[0]), "PostRecv(n)");
  }
  Wait(t, r);
  start = absl::Now();
  for (int64_t i = 0; i < n; ++i) round();
  return absl::ToDoubleSeconds(absl::Now() - start) / static_cast<double>(n) * 1e6;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int RunRank(int rank, const std::string& dir, const Args& args) {
  auto store = NewFileStore(dir);
  Check(store.status(), "NewFileStore");
  FabricOptions options;
  options.rank = rank;
  options.size = 2;
  options.store = store->get();
  options.provider = args.provider;
  options.deadline = absl::Now() + absl::Seconds(30);
  options.max_part_bytes = args.part_bytes;
  auto transport = NewFabricTransport(options);
  Check(transport.status(), "NewFabricTransport");
  Transport* t = transport->get();
  size_t largest = 16 << 20;
  for (size_t size : args.sizes) largest = std::max(largest, size);
  // Huge pages, as the communicator uses: shm's process_vm_readv pins every page it copies.
  HostMemory memory = AllocateHostMemory(largest);
  std::memset(memory.get(), 1, largest);
  char* buf = memory.get();
  if (rank == 0)
    std::printf("# %s, tags %s\n", t->Describe().c_str(), args.distinct_tags ? "distinct" : "same");
  if (args.mode == "bw" || args.mode == "all") {
    std::vector<size_t> sizes = {size_t{4} << 10, size_t{64} << 10, size_t{1} << 20,
                                 size_t{16} << 20};
    if (!args.sizes.empty()) sizes = args.sizes;
    for (size_t size : sizes) {
      std::vector<double> trials;
      for (int i = 0; i < args.trials; ++i) trials.push_back(Bandwidth(t, size, args, buf));
      if (rank == 0) {
        std::printf("bw  %8zu B  %7.3f GB/s  [%.3f .. %.3f]\n", size, Median(trials),
                    *std::min_element(trials.begin(), trials.end()),
                    *std::max_element(trials.begin(), trials.end()));
        std::fflush(stdout);
      }
    }
  }
  if (args.mode == "lat" || args.mode == "all") {
    std::vector<size_t> sizes = {size_t{8}, size_t{64}, size_t{1} << 10, size_t{4} << 10};
    if (!args.sizes.empty()) sizes = args.sizes;
    for (size_t size : sizes) {
      std::vector<double> trials;
      for (int i = 0; i < args.trials; ++i) trials.push_back(Latency(t, size, buf));
      if (rank == 0) {
        std::printf("lat %8zu B  %7.2f us RTT  [%.2f .. %.2f]\n", size, Median(trials),
                    *std::min_element(trials.begin(), trials.end()),
                    *std::max_element(trials.begin(), trials.end()));
        std::fflush(stdout);
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace trident

int main(int argc, char** argv) {
  trident::Args args;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "shm" || arg == "tcp" || arg == "efa") {
      args.provider = arg;
    } else if (arg == "bw" || arg == "lat" || arg == "all") {
      args.mode = arg;
    } else if (arg == "--tags" && i + 1 < argc) {
      args.distinct_tags = std::string(argv[++i]) == "distinct";
    } else if (arg == "--trials" && i + 1 < argc) {
      args.trials = std::atoi(argv[++i]);
    } else if (arg == "--size" && i + 1 < argc) {
      args.sizes.push_back(std::strtoul(argv[++i], nullptr, 10));
    } else if (arg == "--part" && i + 1 < argc) {
      args.part_bytes = std::strtoul(argv[++i], nullptr, 10);
    } else if (arg == "--mib" && i + 1 < argc) {
      args.mib_per_trial = std::strtoul(argv[++i], nullptr, 10);
    } else {
      std::fprintf(stderr,
                   "usage: %s [shm|tcp] [bw|lat|all] [--tags same|distinct] [--trials N] "
                   "[--mib M] [--part BYTES] [--size BYTES]...\n",
                   argv[0]);
      return 2;
    }
  }
  if (args.provider == "tcp") setenv("FI_TCP_IFACE", "lo", 0);
  char dir_template[] = "/tmp/trident-fabric-pingpong-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) return 1;
  const std::string dir = dir_template;
  pid_t child = fork();
  if (child == 0) _exit(trident::RunRank(1, dir, args));
  int rc = trident::RunRank(0, dir, args);
  int status = 0;
  waitpid(child, &status, 0);
  std::filesystem::remove_all(dir);
  return rc != 0 ? rc : (WIFEXITED(status) ? WEXITSTATUS(status) : 1);
}
