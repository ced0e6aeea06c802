#include "health/burn_in.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/params.h"

#ifdef TRIDENT_HAVE_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#endif

namespace trident::health {
namespace {

constexpr size_t kQuickBytes = size_t{16} << 20;
constexpr size_t kFullBytes = size_t{256} << 20;
constexpr int kN = 64;  // GEMM size

constexpr size_t kChunkWords = size_t{1} << 19;  // 4 MiB: the budget is checked between chunks

// One write-and-verify pass of `pattern` (4: a value derived from each word's index) over
// words [begin, end) of the buffer; false with `detail` on the first wrong word. `flip`:
// the test hook's word (or SIZE_MAX).
bool MemoryPass(uint64_t* words, size_t begin, size_t end, int pattern, size_t flip,
                std::string* detail) {
  static constexpr uint64_t kPatterns[] = {0, ~uint64_t{0}, 0x5555555555555555ull,
                                           0xAAAAAAAAAAAAAAAAull};
  auto value = [&](size_t i) {
    return pattern < 4 ? kPatterns[pattern] : (i * 0x9E3779B97F4A7C15ull) ^ i;
  };
  for (size_t i = begin; i < end; ++i) words[i] = value(i);
  if (flip >= begin && flip < end) words[flip] ^= uint64_t{1} << 13;  // test hook
  // The compiler must read the words back, not reuse what it wrote.
  asm volatile("" : : "r"(words) : "memory");
  for (size_t i = begin; i < end; ++i) {
    if (words[i] != value(i)) {
      *detail = absl::StrFormat("pattern %d: word %d (byte offset %d) is %#018x, wrote %#018x",
                                pattern, i, i * 8, words[i], value(i));
      return false;
    }
  }
  return true;
}

// A GEMM and a reduction whose results are known exactly; false with `detail` on the first
// wrong element.
bool ComputePass(int round, bool inject, std::string* detail) {
  std::vector<float> a(kN * kN), b(kN * kN), c(kN * kN, 0.0f);
  auto av = [&](int i, int k) { return static_cast<float>((i * 7 + k * 3 + round) % 11 - 5); };
  auto bv = [&](int k, int j) { return static_cast<float>((k * 5 + j * 2 + round) % 13 - 6); };
  for (int i = 0; i < kN; ++i) {
    for (int k = 0; k < kN; ++k) a[i * kN + k] = av(i, k), b[i * kN + k] = bv(i, k);
  }
  for (int i = 0; i < kN; ++i) {
    for (int k = 0; k < kN; ++k) {
      const float x = a[i * kN + k];
      for (int j = 0; j < kN; ++j) c[i * kN + j] += x * b[k * kN + j];
    }
  }
  if (inject) c[kN + 1] += 1.0f;  // test hook: one wrong product
  asm volatile("" : : "r"(c.data()) : "memory");
  double sum = 0;
  for (int i = 0; i < kN; ++i) {
    for (int j = 0; j < kN; ++j) {
      int64_t want = 0;
      for (int k = 0; k < kN; ++k) {
        want += static_cast<int64_t>(av(i, k)) * static_cast<int64_t>(bv(k, j));
      }
      if (c[i * kN + j] != static_cast<float>(want)) {
        *detail = absl::StrFormat("GEMM %dx%d round %d: C[%d][%d] is %g, the exact value is %d", kN,
                                  kN, round, i, j, c[i * kN + j], want);
        return false;
      }
      sum += c[i * kN + j];
    }
  }
  // The reduction: the sum of C is sum_k (column sums of A)(row sums of B), exactly.
  int64_t want_sum = 0;
  for (int k = 0; k < kN; ++k) {
    int64_t col = 0, row = 0;
    for (int i = 0; i < kN; ++i) col += static_cast<int64_t>(av(i, k));
    for (int j = 0; j < kN; ++j) row += static_cast<int64_t>(bv(k, j));
    want_sum += col * row;
  }
  if (sum != static_cast<double>(want_sum)) {
    *detail = absl::StrFormat("reduction round %d: the sum of C is %g, the exact value is %d",
                              round, sum, want_sum);
    return false;
  }
  return true;
}

#ifdef TRIDENT_HAVE_CUDA
// The device memory check (burn_in.h). Fails the report on a wrong word or a CUDA error.
void DeviceMemoryCheck(size_t bytes, bool inject, BurnInReport* r) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    (void)cudaGetLastError();  // no driver or no device: not an error of this process
    r->device = "skipped: no CUDA device";
    return;
  }
  int dev = 0;
  (void)cudaGetDevice(&dev);
  r->device = absl::StrCat("device ", dev);
  auto fail = [&](const std::string& what) {
    r->ok = false;
    r->failed = "device_memory";
    r->detail = absl::StrCat("device ", dev, ": ", what);
  };
  auto cuda = [&](cudaError_t e, const char* call) {
    if (e == cudaSuccess) return true;
    fail(absl::StrCat(call, ": ", cudaGetErrorString(e), " (cudaError ", static_cast<int>(e), ")"));
    return false;
  };
  void* d = nullptr;
  if (!cuda(cudaMalloc(&d, bytes), "cudaMalloc")) return;
  const size_t n = bytes / 8;
  std::vector<uint64_t> host(n);
  constexpr uint8_t kBytes[4] = {0x00, 0xFF, 0x55, 0xAA};
  for (int pattern = 0; pattern < 5 && r->ok; ++pattern) {
    auto want = [&](size_t i) -> uint64_t {
      if (pattern < 4) return 0x0101010101010101ull * kBytes[pattern];
      return (i * 0x9E3779B97F4A7C15ull) ^ ~i;
    };
    if (pattern < 4) {
      if (!cuda(cudaMemset(d, kBytes[pattern], bytes), "cudaMemset")) break;
    } else {
      for (size_t i = 0; i < n; ++i) host[i] = want(i);
      if (!cuda(cudaMemcpy(d, host.data(), bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D")) {
        break;
      }
    }
    std::fill(host.begin(), host.end(), ~want(0));  // a copy that does nothing shows
    if (!cuda(cudaMemcpy(host.data(), d, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H")) {
      break;
    }
    if (inject && pattern == 2) host[n / 2] ^= uint64_t{1} << 9;  // test hook
    for (size_t i = 0; i < n; ++i) {
      if (host[i] != want(i)) {
        fail(absl::StrFormat("pattern %d: word %d of %d bytes is %016x, wrote %016x", pattern, i,
                             bytes, host[i], want(i)));
        break;
      }
    }
    if (r->ok) r->device_bytes += static_cast<int64_t>(bytes);
  }
  (void)cudaFree(d);
}

// cuBLAS, loaded when the device GEMM first runs (not linked: a host program without it
// still loads Trident, and the check says it was skipped and why).
struct Cublas {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSgemm_v2) sgemm = nullptr;
  decltype(&cublasSdot_v2) sdot = nullptr;
  std::string error;  // why it is unavailable; empty when loaded
};

const Cublas& LoadCublas() {
  static const Cublas* cublas = [] {
    auto* c = new Cublas;
    void* lib = dlopen("libcublas.so.13", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) lib = dlopen("libcublas.so", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      const char* why = dlerror();
      c->error = absl::StrCat("cuBLAS not found (", why != nullptr ? why : "dlopen failed", ")");
      return c;
    }
    c->create = reinterpret_cast<decltype(c->create)>(dlsym(lib, "cublasCreate_v2"));
    c->destroy = reinterpret_cast<decltype(c->destroy)>(dlsym(lib, "cublasDestroy_v2"));
    c->sgemm = reinterpret_cast<decltype(c->sgemm)>(dlsym(lib, "cublasSgemm_v2"));
    c->sdot = reinterpret_cast<decltype(c->sdot)>(dlsym(lib, "cublasSdot_v2"));
    if (!c->create || !c->destroy || !c->sgemm || !c->sdot)
      c->error = "cuBLAS lacks cublasSgemm_v2";
    return c;
  }();
  return *cublas;
}

// The device compute check (burn_in.h): the host check's GEMM on the device through cuBLAS
// (row-major C = A B is column-major C^T = B^T A^T), and the reduction as a dot product of C
// with ones; the results are compared with the exact values. Skipped (r->device says why)
// without cuBLAS; a wrong value or a CUDA/cuBLAS error fails the report.
void DeviceComputeCheck(bool inject, BurnInReport* r) {
  const Cublas& blas = LoadCublas();
  if (!blas.error.empty()) {
    absl::StrAppend(&r->device, " (GEMM skipped: ", blas.error, ")");
    return;
  }
  auto fail = [&](const std::string& what) {
    r->ok = false;
    r->failed = "device_compute";
    r->detail = absl::StrCat(r->device, ": ", what);
  };
  constexpr int n = kN;
  std::vector<float> a(n * n), b(n * n), c(n * n), ones(n * n, 1.0f);
  auto av = [](int i, int k) { return static_cast<float>((i * 7 + k * 3) % 11 - 5); };
  auto bv = [](int k, int j) { return static_cast<float>((k * 5 + j * 2) % 13 - 6); };
  for (int i = 0; i < n; ++i) {
    for (int k = 0; k < n; ++k) a[i * n + k] = av(i, k), b[i * n + k] = bv(i, k);
  }
  float *da = nullptr, *db = nullptr, *dc = nullptr, *d1 = nullptr;
  cublasHandle_t h = nullptr;
  const size_t bytes = sizeof(float) * n * n;
  std::string error;
  auto cuda = [&](cudaError_t e, const char* call) {
    if (e != cudaSuccess && error.empty()) {
      error =
          absl::StrCat(call, ": ", cudaGetErrorString(e), " (cudaError ", static_cast<int>(e), ")");
    }
    return e == cudaSuccess;
  };
  auto blas_ok = [&](cublasStatus_t s, const char* call) {
    if (s != CUBLAS_STATUS_SUCCESS && error.empty()) {
      error = absl::StrCat(call, ": cublasStatus ", static_cast<int>(s));
    }
    return s == CUBLAS_STATUS_SUCCESS;
  };
  const float one = 1.0f, zero = 0.0f;
  float sum = 0;
  if (cuda(cudaMalloc(&da, bytes), "cudaMalloc") && cuda(cudaMalloc(&db, bytes), "cudaMalloc") &&
      cuda(cudaMalloc(&dc, bytes), "cudaMalloc") && cuda(cudaMalloc(&d1, bytes), "cudaMalloc") &&
      cuda(cudaMemcpy(da, a.data(), bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D") &&
      cuda(cudaMemcpy(db, b.data(), bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D") &&
      cuda(cudaMemcpy(d1, ones.data(), bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D") &&
      blas_ok(blas.create(&h), "cublasCreate") &&
      blas_ok(blas.sgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, db, n, da, n, &zero, dc, n),
              "cublasSgemm") &&
      blas_ok(blas.sdot(h, n * n, dc, 1, d1, 1, &sum), "cublasSdot")) {
    (void)cuda(cudaMemcpy(c.data(), dc, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
  }
  if (h != nullptr) (void)blas.destroy(h);
  for (float* p : {da, db, dc, d1}) (void)cudaFree(p);
  if (!error.empty()) return fail(error);
  if (inject) c[n + 1] += 1.0f;  // test hook: one wrong product
  int64_t want_sum = 0;
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) {
      int64_t want = 0;
      for (int k = 0; k < n; ++k)
        want += static_cast<int64_t>(av(i, k)) * static_cast<int64_t>(bv(k, j));
      if (c[i * n + j] != static_cast<float>(want)) {
        return fail(
            absl::StrFormat("GEMM %dx%d on the device: C[%d][%d] is %g, the exact value is %d", n,
                            n, i, j, c[i * n + j], want));
      }
      want_sum += want;
    }
  }
  if (sum != static_cast<float>(want_sum)) {
    return fail(absl::StrFormat(
        "reduction on the device: the sum of C is %g, the exact value is %d", sum, want_sum));
  }
  ++r->device_gemms;
}
#endif

}  // namespace

absl::StatusOr<BurnInLevel> ParseBurnInLevel(absl::string_view name) {
  if (name == "off") return BurnInLevel::kOff;
  if (name == "quick") return BurnInLevel::kQuick;
  if (name == "full") return BurnInLevel::kFull;
  return absl::InvalidArgumentError(
      absl::StrCat("burn-in level '", name, "' is not off, quick or full"));
}

std::string BurnInReport::ToString() const {
  std::string tail = absl::StrFormat("memory_mb=%d gemms=%d ms=%d", memory_bytes >> 20, gemms,
                                     absl::ToInt64Milliseconds(took));
  if (device_bytes > 0) absl::StrAppend(&tail, " device_memory_mb=", device_bytes >> 20);
  if (device_gemms > 0) absl::StrAppend(&tail, " device_gemms=", device_gemms);
  if (ok) return absl::StrCat("ok ", tail);
  return absl::StrCat("failed check=", failed, " ", tail, ": ", detail);
}

BurnInReport RunBurnIn(const BurnInOptions& o) {
  BurnInReport r;
  if (o.level == BurnInLevel::kOff) return r;
  const absl::Time start = absl::Now();
  const absl::Time end_time = start + o.budget;
  const bool full = o.level == BurnInLevel::kFull;
  size_t bytes = o.memory_bytes > 0 ? o.memory_bytes : (full ? kFullBytes : kQuickBytes);
  bytes = std::max<size_t>(bytes / 8 * 8, 64);
  std::unique_ptr<uint64_t[]> words(new (std::nothrow) uint64_t[bytes / 8]);
  if (words == nullptr) {
    r.ok = false;
    r.failed = "memory";
    r.detail = absl::StrCat("cannot allocate ", bytes, " bytes to test");
    r.took = absl::Now() - start;
    return r;
  }
  // Alternate the checks until the budget is spent (quick: one round of each). The budget
  // is checked after every 4 MiB, so a slow machine ends the memory test early, not late.
  const size_t n = bytes / 8;
  bool out_of_time = false;
  for (int round = 0; !out_of_time; ++round) {
    for (int pattern = 0; pattern < 5 && r.ok && !out_of_time; ++pattern) {
      const size_t flip = o.inject == "memory" && round == 0 && pattern == 2 ? n / 2 : SIZE_MAX;
      for (size_t begin = 0; begin < n; begin += kChunkWords) {
        const size_t end = std::min(n, begin + kChunkWords);
        if (!MemoryPass(words.get(), begin, end, pattern, flip, &r.detail)) {
          r.ok = false;
          r.failed = "memory";
          break;
        }
        r.memory_bytes += static_cast<int64_t>((end - begin) * 8);
        if (absl::Now() >= end_time) {
          out_of_time = true;
          break;
        }
      }
    }
    if (!r.ok) break;
    if (!ComputePass(round, o.inject == "compute" && round == 0, &r.detail)) {
      r.ok = false;
      r.failed = "compute";
      break;
    }
    ++r.gemms;
    if (!full || absl::Now() >= end_time) break;
  }
#ifdef TRIDENT_HAVE_CUDA
  if (r.ok) DeviceMemoryCheck(bytes, o.inject == "device_memory", &r);
  if (r.ok && r.device.rfind("device ", 0) == 0) {
    DeviceComputeCheck(o.inject == "device_compute", &r);
  }
#endif
  r.took = absl::Now() - start;
  return r;
}

BurnInOptions BurnInOptionsFromEnv(absl::string_view member) {
  BurnInOptions o;
  absl::StatusOr<BurnInLevel> level = ParseBurnInLevel(ParamString("TRIDENT_BURN_IN"));
  o.level = level.ok() ? *level : BurnInLevel::kQuick;
  o.budget = ParamMillis("TRIDENT_BURN_IN_MS");
  // Tests only: "memory", or "w1:memory" for one member.
  const std::string fail = ParamString("TRIDENT_TEST_BURN_IN_FAIL");
  std::vector<std::string> parts = absl::StrSplit(fail, ':');
  if (parts.size() == 1) {
    o.inject = parts[0];
  } else if (parts.size() == 2 && parts[0] == member) {
    o.inject = parts[1];
  }
  return o;
}

std::string BurnInKey(absl::string_view member) { return absl::StrCat("job/burn_in/", member); }

}  // namespace trident::health
