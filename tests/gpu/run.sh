#!/usr/bin/env bash
# tests/gpu/run.sh [BUILD_DIR]: everything that needs a GPU, in one go, inside 8 minutes on a
# machine with one CUDA device (what a session that is lent a GPU machine runs):
#
#   1. configure with CUDA and NCCL required, build the GPU tests, trident-run, trident-bench
#   2. ctest -L gpu (NCCL backend at world size 1; host backend on CUDA tensors, 1/2/4 ranks as
#      threads; checkpoints of CUDA tensors) and the GPU-aware unit tests (they take their
#      device branches there)
#   3. trident-bench --backend nccl --device cuda --check, world size 1, every collective
#   4. trident-bench --device cuda --check on the host backend, 2 and 4 processes sharing the GPU
#
# Then a summary: one line per step with PASS/FAIL, seconds and a note (tests run/skipped, the
# busbw of the largest size). Exit status: 0 when every step passed. Logs: BUILD_DIR/gpu-logs/.
# Knobs: JOBS (build parallelism), MAX_BYTES (largest benchmark size, default 64M),
# BUILD_TYPE (default Release).
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build-gpu}
jobs=${JOBS:-$(nproc)}
max_bytes=${MAX_BYTES:-64M}
build_type=${BUILD_TYPE:-Release}
logs=$build/gpu-logs
mkdir -p "$logs"
export TRIDENT_TIMEOUT_MS=${TRIDENT_TIMEOUT_MS:-60000}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}

summary=()
failures=0
t_all=$(date +%s)

# step NAME TIMEOUT_S NOTE_FN -- command...: runs the command with a time limit, logs it, and
# records PASS/FAIL with a note computed from the log by NOTE_FN.
step() {
  local name=$1 limit=$2 note_fn=$3
  shift 4
  local log=$logs/$name.log t0 rc status note
  t0=$(date +%s)
  echo ">>> $name: $*" | tee "$log"
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  if [[ $rc -eq 0 ]]; then status=PASS; else status="FAIL(rc=$rc)"; failures=$((failures + 1)); fi
  [[ $rc -eq 124 ]] && status="FAIL(timeout ${limit}s)"
  note=$($note_fn "$log" 2>/dev/null || true)
  summary+=("$(printf '%-34s %-18s %5ss  %s' "$name" "$status" "$(($(date +%s) - t0))" "$note")")
  if [[ $rc -ne 0 ]]; then tail -n 25 "$log" | sed 's/^/    | /'; fi
}

no_note() { :; }
configure_note() { grep -o 'trident: CUDA.*' "$1" | head -1; }
ctest_note() {
  local passed skipped
  passed=$(grep -Eo '[0-9]+% tests passed, [0-9]+ tests failed out of [0-9]+' "$1" | tail -1)
  skipped=$(grep -c '(Skipped)' "$1")
  echo "$passed; $skipped skipped"
}
# The last row of rank 0's table: bytes and busbw, and #wrong.
bench_note() {
  grep -E '^\[rank 0\] +[0-9]+' "$1" | tail -1 |
    awk '{printf "largest %s B: busbw %s GB/s, #wrong %s", $3, $11, $12}'
}

echo "== GPU: $(nvidia-smi -L 2>/dev/null | head -1 || echo 'nvidia-smi not found')"

step configure 240 configure_note -- \
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE="$build_type" \
  -DTRIDENT_WITH_CUDA=ON -DTRIDENT_WITH_NCCL=ON -DTRIDENT_BUILD_EXAMPLES=OFF
step build 300 no_note -- \
  cmake --build "$build" -j "$jobs" --target host_cuda_test nccl_test ckpt_cuda_test gpu_errors_test \
  nccl_watchdog_test trident-run trident-bench

step "ctest -L gpu" 240 ctest_note -- \
  ctest --test-dir "$build" -L gpu --output-on-failure
# On a GPU machine a GPU test that skips is a failure: it should have run.
if grep -q '(Skipped)' "$logs/ctest -L gpu.log" 2>/dev/null; then
  summary+=("$(printf '%-34s %-18s' 'gpu tests ran (not skipped)' 'FAIL')")
  failures=$((failures + 1))
fi
step "ctest gpu-aware unit tests" 120 ctest_note -- \
  ctest --test-dir "$build" -R '^(gpu_errors_test|nccl_watchdog_test)$' --output-on-failure

bin=$build/bin
for op in allreduce reducescatter allgather broadcast reduce alltoall barrier; do
  step "nccl np1 $op" 60 bench_note -- \
    "$bin/trident-run" --nproc 1 -- "$bin/trident-bench" "$op" --backend nccl --device cuda \
    --check --min-bytes 4K --max-bytes "$max_bytes" --iters 20
done
for np in 2 4; do
  ops="allreduce reducescatter allgather broadcast reduce alltoall sendrecv"
  for op in $ops; do
    step "host+cuda np$np $op" 90 bench_note -- \
      "$bin/trident-run" --nproc "$np" -- "$bin/trident-bench" "$op" --device cuda \
      --check --min-bytes 4K --max-bytes "$max_bytes" --iters 5
  done
done

echo
echo "== tests/gpu/run.sh summary ($(($(date +%s) - t_all)) s; logs in $logs)"
printf '%s\n' "${summary[@]}"
if [[ $failures -eq 0 ]]; then
  echo "== all passed"
else
  echo "== $failures step(s) failed"
fi
exit $((failures > 0))
