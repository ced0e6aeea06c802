#!/usr/bin/env bash
# Builds the fuzzers (tests/fuzz/CMakeLists.txt: clang, libFuzzer, ASan + UBSan) into
# build-fuzz/ (or $TRIDENT_FUZZ_BUILD_DIR) and runs each for a fixed time, starting from its
# seed corpus (tests/fuzz/corpus/<target>, never modified: new inputs go to a scratch copy).
#   bash tests/fuzz/run.sh [SECONDS_EACH]    (default 60; or $TRIDENT_FUZZ_SECONDS)
# Exit status 1 on the first crash, leak, sanitizer report or broken property; the input that
# caused it is kept in <build>/artifacts/ (rerun it: <build>/fuzz_<target> <file>).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-${TRIDENT_FUZZ_SECONDS:-60}}
build=${TRIDENT_FUZZ_BUILD_DIR:-build-fuzz}
launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
fi
cmake -S tests/fuzz -B "$build" -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  "${launcher[@]}" >/dev/null
cmake --build "$build" -j "${TRIDENT_JOBS:-$(nproc)}"
mkdir -p "$build/artifacts"
for target in checkpoint safetensors store_protocol; do
  work="$build/corpus/$target"
  mkdir -p "$work"
  cp -n tests/fuzz/corpus/$target/* "$work/" 2>/dev/null || true
  echo "== fuzz_$target for ${seconds}s"
  # allocator_may_return_null: an impossible size from an input must come back as an error
  # (TryAllocateHostMemory), which ASan otherwise reports as a crash of its own.
  ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$build/fuzz_$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -max_len=16384 -print_final_stats=1 -artifact_prefix="$build/artifacts/$target-" \
      "$work" 2>&1 | grep -E "^#|stat::number_of_executed_units|stat::new_units_added|ERROR|SUMMARY|Test unit written|==[0-9]+==" | tail -8
  status=${PIPESTATUS[0]}
  if [[ $status -ne 0 ]]; then
    echo "fuzz: fuzz_$target failed (exit $status); the input is in $build/artifacts/" >&2
    exit 1
  fi
done
echo "fuzz: all fuzzers ran ${seconds}s each without a finding"
