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
        *detail = absl::StrFormat("GEMM %dx%d round %d: C[%d][%d] is %g, the exact value is %d",
                                  kN, kN, round, i, j, c[i * kN + j], want);
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

}  // namespace

absl::StatusOr<BurnInLevel> ParseBurnInLevel(absl::string_view name) {
  if (name == "off") return BurnInLevel::kOff;
  if (name == "quick") return BurnInLevel::kQuick;
  if (name == "full") return BurnInLevel::kFull;
  return absl::InvalidArgumentError(
      absl::StrCat("burn-in level '", name, "' is not off, quick or full"));
}

std::string BurnInReport::ToString() const {
  const std::string tail =
      absl::StrFormat("memory_mb=%d gemms=%d ms=%d", memory_bytes >> 20, gemms,
                      absl::ToInt64Milliseconds(took));
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
      const size_t flip =
          o.inject == "memory" && round == 0 && pattern == 2 ? n / 2 : SIZE_MAX;
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
