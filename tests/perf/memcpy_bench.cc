// The memory-bandwidth bound for intra-host allreduce: N threads (as N ranks) each memcpy
// S bytes from one buffer of their own to another, together, per size. Any allreduce must at
// least read S bytes of peers' data and write S bytes of output on every rank, so an
// allreduce of S bytes cannot take less time than this; reported as busbw with allreduce's
// factor 2(N-1)/N so that it sits in the same column as the collectives.
//
//   memcpy_bench [--nproc 2] [--min-bytes 4K] [--max-bytes 64M] [--heap]
//
// Rows: bytes count type redop root iters time(us) algbw busbw #wrong (as trident-bench).
#include <sys/mman.h>

#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

long long ParseBytes(const char* s) {
  char* end = nullptr;
  long long v = std::strtoll(s, &end, 10);
  if (*end == 'K') v <<= 10;
  if (*end == 'M') v <<= 20;
  if (*end == 'G') v <<= 30;
  return v;
}

char* Alloc(size_t bytes, bool heap) {
  char* p = nullptr;
  if (heap) {
    p = static_cast<char*>(std::malloc(bytes));
  } else {
    void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    p = m == MAP_FAILED ? nullptr : static_cast<char*>(m);
    if (p != nullptr) madvise(p, bytes, MADV_HUGEPAGE);
  }
  if (p == nullptr) {
    std::fprintf(stderr, "memcpy_bench: out of memory\n");
    std::exit(1);
  }
  std::memset(p, 1, bytes);
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  int n = 2;
  long long min_bytes = 4 << 10, max_bytes = 64 << 20;
  bool heap = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--nproc" && i + 1 < argc) n = std::atoi(argv[++i]);
    else if (a == "--min-bytes" && i + 1 < argc) min_bytes = ParseBytes(argv[++i]);
    else if (a == "--max-bytes" && i + 1 < argc) max_bytes = ParseBytes(argv[++i]);
    else if (a == "--heap") heap = true;
    else {
      std::fprintf(stderr, "usage: memcpy_bench [--nproc N] [--min-bytes B] [--max-bytes B] [--heap]\n");
      return 2;
    }
  }
  std::vector<char*> src(n), dst(n);
  for (int t = 0; t < n; ++t) {
    src[t] = Alloc(max_bytes, heap);
    dst[t] = Alloc(max_bytes, heap);
  }
  std::printf("# memcpy_bench: %d threads each copy the bytes once, together; %s buffers\n", n,
              heap ? "heap" : "huge-page");
  std::printf("#%13s %12s %5s %6s %5s %6s %12s %12s %12s %8s\n", "bytes", "count", "type",
              "redop", "root", "iters", "time(us)", "algbw(GB/s)", "busbw(GB/s)", "#wrong");
  for (long long bytes = min_bytes; bytes <= max_bytes; bytes *= 2) {
    const int iters = bytes <= (1 << 20) ? 200 : (bytes <= (16 << 20) ? 20 : 5);
    std::barrier sync(n);
    std::vector<double> seconds(n);
    std::vector<std::thread> threads;
    for (int t = 0; t < n; ++t) {
      threads.emplace_back([&, t] {
        std::memcpy(dst[t], src[t], bytes);  // warm up
        sync.arrive_and_wait();
        auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < iters; ++i) std::memcpy(dst[t], src[t], bytes);
        seconds[t] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        sync.arrive_and_wait();
      });
    }
    for (auto& th : threads) th.join();
    double worst = 0;
    for (double s : seconds) worst = std::max(worst, s);
    const double us = worst / iters * 1e6;
    const double algbw = bytes / (us * 1e3);
    std::printf("%14lld %12lld %5s %6s %5s %6d %12.2f %12.4f %12.4f %8s\n", bytes, bytes / 4,
                "f32", "sum", "-", iters, us, algbw, algbw * 2 * (n - 1) / n, "N/A");
  }
  return 0;
}
