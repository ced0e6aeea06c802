#!/usr/bin/env bash
# The sanitizer lanes, by hand (each builds a tree of its own and runs the tests it covers):
#   bash scripts/sanitize.sh asan   # AddressSanitizer + UndefinedBehaviorSanitizer over the
#                                   # unit and multiproc tests, in build-asan/
#   bash scripts/sanitize.sh tsan   # ThreadSanitizer over the store, comm, health and
#                                   # checkpoint tests, in build-tsan/
# Extra arguments go to ctest (e.g. -R store). Suppressions, for third-party code only, with
# the reason of each entry: tests/sanitizers/. Uses ccache when it is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
lane=${1:?usage: scripts/sanitize.sh asan|tsan [ctest args...]}
shift
launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
fi
jobs=${TRIDENT_JOBS:-$(nproc)}
export FI_TCP_IFACE=lo FI_SOCKETS_IFACE=lo
supp=$PWD/tests/sanitizers
# -O1 -g1: sanitizer builds compile in about half the time of -O2 -g (measured on
# host_communicator.cc with ASan + UBSan: 22 s against 47 s), with line numbers in reports.
flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -g1"
       "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1" -DTRIDENT_TEST_TIMEOUT_SCALE=4)
case "$lane" in
  asan)
    build=build-asan
    cmake -S . -B "$build" -G Ninja "${flags[@]}" -DTRIDENT_SANITIZE=address,undefined \
      -DTRIDENT_BUILD_TESTS=ON -DTRIDENT_BUILD_EXAMPLES=ON "${launcher[@]}"
    # Only what the lane runs: the library, the programs, and every test folder but the
    # benchmarks, the GPU tests (no device) and the install and multi-node tests (their own
    # labels).
    dirs=(src examples tests/capi tests/checkpoint tests/comm tests/common tests/examples
          tests/health tests/observability tests/parallel tests/runtime tests/store
          tests/tools tests/transport)
    cmake --build "$build" -j "$jobs" --target $(for d in "${dirs[@]}"; do echo "$d/all"; done)
    # allocator_may_return_null: sizes that come from files must come back as errors
    # (TryAllocateHostMemory); ASan would otherwise report them itself.
    export ASAN_OPTIONS=allocator_may_return_null=1:detect_leaks=1:abort_on_error=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:suppressions=$supp/ubsan.supp
    export LSAN_OPTIONS=suppressions=$supp/lsan.supp
    ctest --test-dir "$build" --no-tests=error -L 'unit|multiproc' --output-on-failure \
      --timeout 1800 "$@"
    ;;
  tsan)
    build=build-tsan
    cmake -S . -B "$build" -G Ninja "${flags[@]}" -DTRIDENT_SANITIZE=thread \
      -DTRIDENT_BUILD_TESTS=ON -DTRIDENT_BUILD_EXAMPLES=OFF "${launcher[@]}"
    # Only what the lane runs: the tests of these layers and the programs they start.
    dirs=(tests/store tests/comm tests/health tests/checkpoint)
    cmake --build "$build" -j "$jobs" --target trident-run trident-ckpt \
      $(for d in "${dirs[@]}"; do echo "$d/all"; done)
    # Debian's Abseil is not built with TSan: the shim tells TSan what absl::Mutex, CondVar
    # and Notification synchronise (tests/sanitizers/absl_tsan_shim.cc), preloaded in every
    # process the tests start.
    c++ -std=c++20 -O1 -shared -fPIC -o "$build/libabsl_tsan_shim.so" \
      tests/sanitizers/absl_tsan_shim.cc -ldl
    export LD_PRELOAD=$PWD/$build/libabsl_tsan_shim.so
    # report_signal_unsafe=0: collectives_test reported a free "inside a signal" whose stack
    # runs through uninstrumented libspdlog and libstdc++ frames that cannot be in a handler.
    export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:report_signal_unsafe=0:suppressions=$supp/tsan.supp
    for d in "${dirs[@]}"; do
      ctest --test-dir "$build/$d" --no-tests=error -L 'unit|multiproc' --output-on-failure \
        --timeout 1800 "$@"
    done
    ;;
  *)
    echo "sanitize.sh: unknown lane '$lane' (asan or tsan)" >&2
    exit 2
    ;;
esac
