// The state that crash_child saves and crash_test checks: per rank, half of the rows of two
// tensors (4 MiB in all), with values that depend on the step.
#ifndef TRIDENT_TESTS_CHECKPOINT_CKPT_CRASH_STATE_H_
#define TRIDENT_TESTS_CHECKPOINT_CKPT_CRASH_STATE_H_

#include "ckpt_test_util.h"

namespace trident::testing {

inline constexpr int64_t kCrashRows = 2048;

inline std::vector<OwnedTensor> CrashState(int64_t step, int rank) {
  const int64_t half = kCrashRows / 2;
  return {MakeTensor(step, "w", DType::kF32, {kCrashRows, 512},
                     ckpt::Box{{rank * half, 0}, {half, 512}}),
          MakeTensor(step, "opt", DType::kBF16, {kCrashRows, 3},
                     ckpt::Box{{rank * half, 0}, {half, 3}})};
}

}  // namespace trident::testing

#endif  // TRIDENT_TESTS_CHECKPOINT_CKPT_CRASH_STATE_H_
