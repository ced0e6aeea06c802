// fr_bench: what the flight recorder costs per op. A benchmark, not a test (timings never
// decide pass/fail); docs/benchmarks.md has its results.
//
//   fr_bench [--rounds 7] [--ops 2000000]
//
// Rounds alternate between the cases so that noise from other processes on a shared machine
// hits all of them alike; each line is the median over rounds of CPU ns per op (the
// AllReduce line counts both the caller's and the communicator thread's CPU time).
#include <algorithm>
#include <time.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "comm/flight_recorder.h"
#include "comm/host/inproc.h"
#include "trident/communicator.h"

namespace {

// CPU time of the process, not wall time: on a shared, oversubscribed machine wall time
// counts the time other processes ran.
double CpuNs() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

double NsPerOp(int64_t ops, const std::function<void(int64_t)>& body) {
  const double t0 = CpuNs();
  body(ops);
  return (CpuNs() - t0) / ops;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 7;
  int64_t ops = 2000000;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--rounds")) rounds = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--ops")) ops = std::atoll(argv[i + 1]);
  }
  using trident::fr::FlightRecorder;
  FlightRecorder recorder({.name = "world", .size = 8}, 2048);
  auto comms = trident::NewInprocCommunicators({.size = 1});
  trident::Communicator& world = *comms[0];
  float x = 1;
  const int64_t comm_ops = std::max<int64_t>(1, ops / 200);

  struct Case {
    const char* name;
    int64_t n;
    std::function<void(int64_t)> body;
    std::vector<double> ns;
  };
  std::vector<Case> cases = {
      {"clock read (clock_gettime, for comparison)", ops,
       [](int64_t n) {
         int64_t sink = 0;
         for (int64_t i = 0; i < n; ++i) sink += trident::fr::NowNs();
         asm volatile("" : : "r"(sink));
       }},
      {"TSC read (the recorder's clock)", ops,
       [](int64_t n) {
         int64_t sink = 0;
         for (int64_t i = 0; i < n; ++i) sink += trident::fr::Stamp();
         asm volatile("" : : "r"(sink));
       }},
      {"Issue only", ops,
       [&](int64_t n) {
         for (int64_t i = 0; i < n; ++i) recorder.Issue("AllReduce", "f32", i, -1, i);
       }},
      {"Issue + Start + Finish (one op's record)", ops,
       [&](int64_t n) {
         for (int64_t i = 0; i < n; ++i) {
           const uint64_t id = recorder.Issue("AllReduce", "f32", i, -1, i);
           recorder.Start(id);
           recorder.Finish(id, true);
         }
       }},
      {"AllReduce of 1 float, 1-rank host communicator (recorded)", comm_ops,
       [&](int64_t n) {
         trident::Tensor t = trident::Tensor::Of(&x, 1);
         for (int64_t i = 0; i < n; ++i) {
           (void)world.AllReduce(t, t, trident::ReduceOp::kSum)->Wait();
         }
       }},
  };
  for (int r = 0; r < rounds; ++r) {
    for (Case& c : cases) c.ns.push_back(NsPerOp(c.n, c.body));
  }
  std::printf("fr_bench: %d rounds, median ns per op (ring of %zu entries)\n", rounds,
              recorder.capacity());
  for (const Case& c : cases) std::printf("  %-60s %9.1f ns\n", c.name, Median(c.ns));
  return 0;
}
