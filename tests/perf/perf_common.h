// perf_common.h: what the peer benchmark programs (gloo_bench, mpi_bench) share with each
// other and, by convention, with trident-bench: size parsing, the nccl-tests bus-bandwidth
// factors, the test data, the adaptive iteration count and the row format.
//
// Conventions (the same as trident-bench and research/baselines.md):
//  - bytes: size of the full buffer (allgather: the whole output, each rank gives bytes/n);
//  - time: max over ranks of the mean time of one call in a back-to-back timed loop;
//  - algbw = bytes / time; busbw = algbw * 2(n-1)/n (allreduce), (n-1)/n (allgather), 1
//    (broadcast).
// Header-only and free of any Trident dependency: these programs must build without it.
#ifndef TRIDENT_TESTS_PERF_PERF_COMMON_H_
#define TRIDENT_TESTS_PERF_PERF_COMMON_H_

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <sys/mman.h>

namespace perf {

// "4K", "256M", "1G", "4096", "64KiB", "1MB": binary multiples (K = 1024). Returns -1 on junk.
inline int64_t ParseBytes(const std::string& text) {
  if (text.empty()) return -1;
  size_t pos = 0;
  while (pos < text.size() && std::isdigit(static_cast<unsigned char>(text[pos]))) ++pos;
  if (pos == 0 || pos > 15) return -1;
  int64_t value = std::stoll(text.substr(0, pos));
  std::string suffix = text.substr(pos);
  for (char& c : suffix) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (suffix == "IB" || suffix == "B") suffix.clear();
  if (suffix.size() > 1 && (suffix.substr(1) == "IB" || suffix.substr(1) == "B")) {
    suffix = suffix.substr(0, 1);
  }
  int shift = 0;
  if (suffix.empty()) shift = 0;
  else if (suffix == "K") shift = 10;
  else if (suffix == "M") shift = 20;
  else if (suffix == "G") shift = 30;
  else return -1;
  return value << shift;
}

inline std::vector<int64_t> Sizes(int64_t min_bytes, int64_t max_bytes) {
  std::vector<int64_t> sizes;
  for (int64_t s = std::max<int64_t>(min_bytes, 1); s <= max_bytes; s *= 2) sizes.push_back(s);
  return sizes;
}

inline double BusFactor(const std::string& op, int n) {
  if (op == "allreduce") return 2.0 * (n - 1) / n;
  if (op == "allgather" || op == "reducescatter" || op == "alltoall") return double(n - 1) / n;
  return 1.0;  // broadcast, reduce, sendrecv
}

// The element count of a size for `op` with float32 data: a multiple of n for allgather (each
// rank contributes count/n), at least one element per rank.
inline int64_t CountFor(const std::string& op, int64_t bytes, int n) {
  int64_t count = bytes / 4;
  if (op == "allgather") count = std::max<int64_t>(count / n, 1) * n;
  return std::max<int64_t>(count, 1);
}

// Test value of element i on rank r: small integers, exact in float32 under sums of many ranks.
inline float Value(int rank, int64_t i) {
  return static_cast<float>(static_cast<int>((i * 7 + rank * 13) % 9) - 4);
}

// Iterations for a timed loop: about `target_s` seconds given one call's time, in [3, 1000].
inline int AdaptiveIters(double seconds_per_call, double target_s = 0.3) {
  if (!(seconds_per_call > 0)) return 1000;
  double iters = target_s / seconds_per_call;
  return static_cast<int>(std::clamp(iters, 3.0, 1000.0));
}

inline double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The run's settings line, then the column header; shared so both peers print the same.
inline void PrintSettingsAndColumns(int iters, int warmup, bool check, bool huge_pages);

// The row format, the same columns as trident-bench (nccl-tests style).
inline void PrintColumns() {
  std::printf("#%13s %12s %5s %6s %5s %6s %12s %12s %12s %8s\n", "bytes", "count", "type",
              "redop", "root", "iters", "time(us)", "algbw(GB/s)", "busbw(GB/s)", "#wrong");
}

inline void PrintSettingsAndColumns(int iters, int warmup, bool check, bool huge_pages) {
  std::printf("# dtype f32, iters %s, warmup %d, check %s, %s\n",
              iters > 0 ? std::to_string(iters).c_str() : "adaptive (~0.3 s, 3..1000)", warmup,
              check ? "on" : "off", huge_pages ? "huge pages" : "malloc");
  PrintColumns();
}

inline void PrintRow(int64_t bytes, int64_t count, const char* redop, const char* root,
                     int iters, double seconds, double bus_factor, int64_t wrong) {
  double algbw = seconds > 0 ? bytes / seconds / 1e9 : 0;
  char wrong_text[32];
  if (wrong < 0) std::snprintf(wrong_text, sizeof(wrong_text), "N/A");
  else std::snprintf(wrong_text, sizeof(wrong_text), "%lld", static_cast<long long>(wrong));
  std::printf("%14lld %12lld %5s %6s %5s %6d %12.2f %12.4f %12.4f %8s\n",
              static_cast<long long>(bytes), static_cast<long long>(count), "f32", redop, root,
              iters, seconds * 1e6, algbw, algbw * bus_factor, wrong_text);
  std::fflush(stdout);
}

// A zeroed float buffer allocated as trident-bench allocates its buffers
// (src/common/host_memory.cc): from 1 MiB up, 2 MiB aligned and advised to use transparent
// huge pages, unless `huge_pages` is false (plain malloc, as research/baselines.md measured).
// Page size matters here: single-copy shared-memory paths (process_vm_readv, CMA) pin every
// page, and with 4 KiB pages that caps large copies on this VM near 1-2 GB/s.
class Buffer {
 public:
  Buffer(size_t count, bool huge_pages) {
    size_t bytes = std::max<size_t>(count * sizeof(float), 1);
    void* p = nullptr;
    if (huge_pages && bytes >= (size_t{1} << 20)) {
      const size_t huge = size_t{2} << 20;
      bytes = (bytes + huge - 1) / huge * huge;
      if (posix_memalign(&p, huge, bytes) != 0) p = nullptr;
      if (p != nullptr) (void)madvise(p, bytes, MADV_HUGEPAGE);
    } else {
      p = std::malloc(bytes);
    }
    if (p == nullptr) {
      std::fprintf(stderr, "error: out of memory allocating %zu bytes\n", bytes);
      std::exit(2);
    }
    std::memset(p, 0, bytes);  // first touch, outside every measurement
    data_.reset(static_cast<float*>(p));
  }
  float* data() const { return data_.get(); }
  float& operator[](int64_t i) const { return data_.get()[i]; }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float[], Free> data_;
};

// Minimal "--name value" argument parsing: these programs take few options.
struct Args {
  std::vector<std::string> argv;
  explicit Args(int argc, char** argv_in) : argv(argv_in + 1, argv_in + argc) {}
  bool Has(const std::string& name) const {
    return std::find(argv.begin(), argv.end(), name) != argv.end();
  }
  std::string Get(const std::string& name, const std::string& fallback) const {
    for (size_t i = 0; i + 1 < argv.size(); ++i) {
      if (argv[i] == name) return argv[i + 1];
    }
    return fallback;
  }
};

inline std::vector<std::string> SplitComma(const std::string& text) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    if (end > start) parts.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return parts;
}

[[noreturn]] inline void Die(const std::string& message) {
  std::fprintf(stderr, "error: %s\n", message.c_str());
  std::exit(2);
}

}  // namespace perf

#endif  // TRIDENT_TESTS_PERF_PERF_COMMON_H_
