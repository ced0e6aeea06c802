// Burn-in: a bounded self-test a process passes before it joins its first world or waits in
// the spare pool (docs/fault-tolerance.md, "Burn-in"). Two checks on the host, each seeing a
// wrong value as a failure that names what was expected and what came:
//   memory   write-and-verify patterns (zeros, ones, 0x55.., 0xAA.., each word's own
//            address) over a buffer the size of a staging slab;
//   compute  a GEMM of integer-valued f32 matrices and a reduction, whose exact results are
//            known in closed form (every partial sum is an integer below 2^24: exact in f32);
//   device_memory (a build with CUDA, on the current device; skipped with the reason where
//            no device is visible) write-and-verify of the same five patterns over device
//            memory of the same size, through the CUDA runtime (cudaMemset, cudaMemcpy);
//   device_compute (the same builds and devices) the compute check's GEMM and reduction on
//            the device, through cuBLAS loaded at run time (skipped, saying so in `device`,
//            where libcublas cannot be loaded).
// The whole test stops at its budget (TRIDENT_BURN_IN_MS): a check that started finishes its
// current pass; the report says how much was tested. Levels: off, quick (one pass each over
// 16 MiB), full (passes until the budget over 256 MiB).
//
// Tests only: TRIDENT_TEST_BURN_IN_FAIL=memory|compute|device_memory|device_compute (or
// MEMBER:..., for one member) makes that check see one wrong value, so that the outcome of a
// failure is tested.
//
// Thread-compatible; RunBurnIn allocates and frees its own buffer.
#ifndef TRIDENT_HEALTH_BURN_IN_H_
#define TRIDENT_HEALTH_BURN_IN_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace trident::health {

enum class BurnInLevel { kOff, kQuick, kFull };
// "off", "quick", "full"; kInvalidArgument otherwise.
absl::StatusOr<BurnInLevel> ParseBurnInLevel(absl::string_view name);

struct BurnInOptions {
  BurnInLevel level = BurnInLevel::kQuick;
  absl::Duration budget = absl::Seconds(1);
  size_t memory_bytes = 0;  // 0: 16 MiB (quick), 256 MiB (full)
  // Test hook: "memory", "compute", "device_memory" or "device_compute": that check sees one
  // wrong value.
  std::string inject;
};

struct BurnInReport {
  bool ok = true;
  std::string failed;        // the check that failed ("memory", "compute", "device_memory", ...)
  std::string detail;        // what was expected and what came
  int64_t memory_bytes = 0;  // bytes written and verified (all passes)
  int gemms = 0;             // GEMMs checked
  // The device memory check (a build with CUDA): "" in a build without CUDA, "skipped: no
  // CUDA device" where none is visible, else "device N"; device_bytes written and verified.
  std::string device;
  int64_t device_bytes = 0;
  int device_gemms = 0;  // device GEMMs checked (cuBLAS)
  absl::Duration took;
  // "ok memory_mb=32 gemms=4 ms=12" or "failed check=memory ... ms=3": stored under
  // BurnInKey and logged.
  std::string ToString() const;
};

BurnInReport RunBurnIn(const BurnInOptions& options);

// The options of this process: TRIDENT_BURN_IN (off|quick|full), TRIDENT_BURN_IN_MS, and the
// test hook TRIDENT_TEST_BURN_IN_FAIL for `member`.
BurnInOptions BurnInOptionsFromEnv(absl::string_view member);

// job/burn_in/<member>: its report (set before it joins a world or the spare pool).
std::string BurnInKey(absl::string_view member);

}  // namespace trident::health

#endif  // TRIDENT_HEALTH_BURN_IN_H_
