#!/usr/bin/env bash
# tests/gpu/check.sh [BUNDLE_DIR]: the device check, in one call of under 6 minutes, from a
# bundle made by tests/gpu/prepare.sh (default gpu-bundle/). Needs no build tools.
#
#  1. finds the device's NCCL (NCCL_LIB_DIR, a Python wheel's nvidia/nccl or torch/lib,
#     ldconfig, /usr/local/cuda*) and CUDA runtime of the bundle's major version (else the
#     bundle's own), and asks them for versions and devices (gpu_check_worker versions)
#  2. the GPU-aware unit tests, and trident-run with trident-bench on CPU tensors (no GPU
#     needed: they prove the bundle runs here)
#  3. the gpu test binaries: NCCL at 1 rank (every op, dtype, in-place all-to-all, graph
#     capture, stalled op, abort), host backend on CUDA tensors (ranks as threads),
#     checkpoint save and load of device tensors; on a GPU machine a skipped test fails
#     (without one they run and skip every test)
#  4. trident-bench --check, NCCL at 1 rank, every collective; and the per-op latency of a
#     small AllReduce through Trident's non-blocking path against a plain blocking
#     ncclAllReduce in the same process, alternating rounds (gpu_check_worker nccl-latency):
#     the ratio is reported, not judged
#  5. NCCL at 2 ranks on one GPU (each process its own NCCL_HOSTID, so NCCL takes them for
#     two hosts: a functional check, not a performance one): every op --check, bf16, avg,
#     and a SendRecv batch in which both ranks send and receive (lands by tag)
#  6. a SIGKILLed and a SIGSTOPped rank of an NCCL world: the survivor's op fails with
#     kAborted naming the rank, or kDeadlineExceeded; never the exit-70 abort-hang path
#  7. host backend on CUDA tensors, 2 and 4 processes sharing the GPU, --check; and three
#     AllReduces and a Send issued back to back on one tensor without a Wait, its input
#     produced on the caller's stream (gpu_check_worker host-order): each op must see the
#     previous one's result
#  8. the checkpoint engine's D2H staging bandwidth against cudaMemcpy to pinned memory
#     (goal: at least 80%)
#
# Each step runs under its own timeout, within a total budget (CHECK_BUDGET_S, default 330 s);
# a step that no longer fits is skipped and says so. Without a GPU the GPU steps are skipped,
# each with the reason. Logs stream into $OUT/logs/ (OUT defaults to gpu-check-out/), the
# summary into $OUT/summary.txt and stdout. Exit status: 0 every step passed on a GPU; 1 a
# step failed; 3 nothing failed but there was no GPU, so the GPU steps were skipped.
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
bundle=$(cd "${1:-$root/gpu-bundle}" 2>/dev/null && pwd) || {
  echo "check.sh: no bundle at ${1:-$root/gpu-bundle}; run tests/gpu/prepare.sh first" >&2
  exit 1
}
out=${OUT:-$root/gpu-check-out}
logs=$out/logs
mkdir -p "$logs"
summary=$out/summary.txt
: >"$summary"
budget=${CHECK_BUDGET_S:-330}
t_start=$(date +%s)
bin=$bundle/bin
export TRIDENT_TIMEOUT_MS=${TRIDENT_TIMEOUT_MS:-60000}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-lo}
export FI_TCP_IFACE=${FI_TCP_IFACE:-lo}
export TRIDENT_KILL_GRACE_MS=${TRIDENT_KILL_GRACE_MS:-15000}
passed=0 failed=0 skipped=0

say() { echo "$*" | tee -a "$summary"; }
row() {  # STATUS NAME SECONDS NOTE
  say "$(printf '%-5s %-36s %4ss  %s' "$1" "$2" "$3" "$4")"
}
left() { echo $((budget - ($(date +%s) - t_start))); }

# skip NAME REASON
skip() {
  skipped=$((skipped + 1))
  row SKIP "$1" 0 "$2"
}

# step NAME LIMIT_S NOTE_FN JUDGE_FN COMMAND...: runs COMMAND (a program, not a shell
# function) under min(LIMIT_S, what is left of the budget), its output streamed into
# $logs/NAME.log; PASS when JUDGE_FN LOG RC returns 0 (exit_ok: when COMMAND exited 0).
step() {
  local name=$1 limit=$2 note_fn=$3 judge_fn=$4
  shift 4
  local log=$logs/${name// /_}.log t0 rc status note remaining
  remaining=$(($(left) - 5))
  if ((remaining < 10)); then
    skip "$name" "no time left in the ${budget}s budget"
    return
  fi
  ((limit > remaining)) && limit=$remaining
  t0=$(date +%s)
  echo ">>> $name (limit ${limit}s): $*" >"$log"
  timeout --kill-after=5 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  note=$($note_fn "$log" "$rc" 2>/dev/null | head -c 300 || true)
  local verdict
  verdict=$($judge_fn "$log" "$rc" 2>&1)
  if [[ $? -eq 0 ]]; then
    status=PASS
    passed=$((passed + 1))
  else
    status=FAIL
    failed=$((failed + 1))
    [[ $rc -eq 124 || $rc -eq 137 ]] && note="timed out after ${limit}s; $note"
    [[ $rc -eq 70 ]] && note="exit 70: ncclCommAbort hung; $note"
    [[ $rc -eq 71 ]] && note="exit 71: CUDA context lost; $note"
    [[ $rc -eq 127 ]] && note="did not start (a library missing?): $(grep -m1 -i 'error' "$log")"
    [[ -n $verdict ]] && note="$verdict; $note"
  fi
  row "$status" "$name" "$(($(date +%s) - t0))" "$note"
}

gtest_note() {
  local ran skipped_n failed_n
  ran=$(grep -Eo '\[==========\] [0-9]+ tests? from [0-9]+ test suites? ran' "$1" | grep -Eo '^\[==========\] [0-9]+' | grep -Eo '[0-9]+$')
  skipped_n=$(grep -Eo '\[  SKIPPED \] [0-9]+ test' "$1" | grep -Eo '[0-9]+' | head -1)
  failed_n=$(grep -Eo '[0-9]+ FAILED TESTS?' "$1" | grep -Eo '^[0-9]+')
  echo "${ran:-0} ran, ${failed_n:-0} failed, ${skipped_n:-0} skipped$(grep -m1 -o 'no CUDA device.*' "$1" | sed 's/^/: /' | head -c 120)"
}
bench_note() {
  grep -E '^\[rank 0\] +[0-9]+' "$1" | tail -1 |
    awk '{printf "largest %s B: busbw %s GB/s, #wrong %s", $3, $11, $12}'
}
result_note() { grep -m2 -h '^RESULT\|\] RESULT' "$1" | sed 's/.*RESULT //' | tr '\n' ' '; }

exit_ok() { [[ $2 -eq 0 ]]; }
# A gtest binary: it passed, and on a GPU machine nothing was skipped (it should have run).
gtest_ok() {
  [[ $2 -eq 0 ]] || return 1
  if [[ $have_gpu -eq 1 ]] && grep -q '\[  SKIPPED \]' "$1"; then
    echo "tests were skipped on a machine with a GPU"
    return 1
  fi
}

# A killed or stopped rank (trident-run's own exit status does not count: a rank died): every
# RESULT of a rank other than the victim says ABORTED naming the victim, or DEADLINE_EXCEEDED,
# and nobody took the exit-70 abort-hang path.
fault_ok() {
  local log=$1 victim=1 results
  results=$(grep -h 'RESULT rank=' "$log" | grep -v "RESULT rank=$victim ")
  [[ -n $results ]] || { echo "no survivor reported"; return 1; }
  if grep -q 'has not returned after' "$log"; then
    echo "the abort-hang path (exit 70) was taken"
    return 1
  fi
  while read -r line; do
    if [[ $line == *code=ABORTED* && $line == *"rank $victim"* ]]; then continue; fi
    if [[ $line == *code=DEADLINE_EXCEEDED* ]]; then continue; fi
    echo "unexpected: $line"
    return 1
  done <<<"$results"
}

# Runs a program with NCCL_HOSTID distinct per rank (TRIDENT_RANK), through a small script.
own_hostid=$out/own-hostid.sh
cat >"$own_hostid" <<'EOF'
#!/usr/bin/env bash
export NCCL_HOSTID=trident-check-${TRIDENT_RANK:-0}
exec "$@"
EOF
chmod +x "$own_hostid"

say "== tests/gpu/check.sh on $(hostname), $(date -u '+%Y-%m-%d %H:%M UTC'), bundle $bundle"
sed 's/^/   build: /' "$bundle/BUILD_INFO" | tee -a "$summary"

# --- 1. the device's NCCL and CUDA runtime ------------------------------------------------
cudart_name=$(ls "$bundle/lib/cudart" 2>/dev/null | head -1)
candidates=()
[[ -n ${NCCL_LIB_DIR:-} ]] && candidates+=("$NCCL_LIB_DIR")
for py in python3 python; do
  command -v "$py" >/dev/null || continue
  while read -r d; do [[ -n $d ]] && candidates+=("$d"); done < <(
    timeout 20 "$py" - <<'EOF' 2>/dev/null
import importlib.util, os, site, sys
roots = []
for getter in (site.getsitepackages, lambda: [site.getusersitepackages()]):
    try:
        roots += list(getter())
    except Exception:
        pass
roots += [p for p in sys.path if p.endswith("-packages")]
for r in dict.fromkeys(roots):
    for sub in ("nvidia/nccl/lib", "nvidia/cuda_runtime/lib", "torch/lib"):
        d = os.path.join(r, sub)
        if os.path.isdir(d):
            print(d)
EOF
  )
done
while read -r lib; do candidates+=("$(dirname "$lib")"); done < <(
  ldconfig -p 2>/dev/null | grep -E 'libnccl\.so\.2|libcudart\.so' | awk '{print $NF}')
for d in /usr/local/cuda*/lib64 /usr/local/cuda*/lib /usr/local/cuda*/targets/*/lib \
         /usr/lib/x86_64-linux-gnu /usr/lib64 /opt/nccl*/lib; do
  [[ -d $d ]] && candidates+=("$d")
done
nccl_dir="" cudart_dir=""
for d in "${candidates[@]}"; do
  [[ -z $nccl_dir && -e $d/libnccl.so.2 ]] && nccl_dir=$d
  [[ -z $cudart_dir && -n $cudart_name && -e $d/$cudart_name ]] && cudart_dir=$d
done
libpath=""
if [[ -n $nccl_dir ]]; then
  libpath=$nccl_dir
  say "   NCCL: $nccl_dir/libnccl.so.2$(nm -D --defined-only "$nccl_dir/libnccl.so.2" 2>/dev/null | grep -q ncclAlltoAll || echo ' (no ncclAlltoAll: AllToAll uses grouped send/recv there)')"
else
  say "   NCCL: not found on this machine (set NCCL_LIB_DIR); every program links it"
fi
if [[ -n $cudart_dir ]]; then
  libpath=${libpath:+$libpath:}$cudart_dir
  say "   CUDA runtime: $cudart_dir/$cudart_name (the device's)"
else
  libpath=${libpath:+$libpath:}$bundle/lib/cudart
  say "   CUDA runtime: the bundle's $cudart_name (none of that major version on this machine)"
fi
export TRIDENT_GPU_LIBPATH=$libpath

have_gpu=0
versions=$(timeout 30 "$bin/gpu_check_worker" versions 2>&1)
versions_rc=$?
say "   versions: $(echo "$versions" | tail -1)"
if [[ $versions_rc -eq 0 ]]; then
  have_gpu=1
  say "   GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || echo "$versions")"
else
  no_gpu_reason=$(echo "$versions" | grep -o 'reason=.*' | sed 's/^reason=//' | head -c 200)
  [[ -z $no_gpu_reason ]] && no_gpu_reason="gpu_check_worker versions exited $versions_rc: $(echo "$versions" | tail -1 | head -c 200)"
  say "   no GPU: $no_gpu_reason"
fi
say ""
# A GPU the programs cannot use (a driver older than the CUDA runtime needs, NCCL missing) is
# a failure, not a machine without a GPU.
if [[ $have_gpu -eq 0 ]] && { ls /dev/nvidia[0-9]* >/dev/null 2>&1 || nvidia-smi -L >/dev/null 2>&1; }; then
  failed=$((failed + 1))
  row FAIL "GPU usable by the bundle" 0 "this machine has a GPU ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)) but: $no_gpu_reason"
fi

# --- 2. the GPU-aware unit tests: prove the bundle runs here -----------------------------
for t in gpu_errors_test nccl_watchdog_test; do
  step "$t" 60 gtest_note gtest_ok "$bin/$t" --gtest_color=no
done

# trident-run and trident-bench from the bundle, CPU tensors: the launcher, the store and
# libfabric's shm provider work here, before any GPU step depends on them.
step "host np2 allreduce (CPU)" 30 bench_note exit_ok \
  "$bin/trident-run" --nproc 2 -- "$bin/trident-bench" allreduce --check \
  --min-bytes 4K --max-bytes 1M --iters 3

# gpu_step NAME LIMIT NOTE_FN JUDGE_FN COMMAND...: a step that needs a GPU.
gpu_step() {
  if [[ $have_gpu -eq 1 ]]; then step "$@"; else skip "$1" "no GPU (see above)"; fi
}

# --- 3. the gpu test binaries -------------------------------------------------------------
# (Run without a GPU too: every test then skips, which shows that the bundle runs here.)
for t in nccl_test host_cuda_test ckpt_cuda_test; do
  step "$t" 120 gtest_note gtest_ok "$bin/$t" --gtest_color=no
done

# --- 4. NCCL, one rank, every collective -------------------------------------------------
for op in allreduce reducescatter allgather broadcast reduce alltoall barrier; do
  gpu_step "nccl np1 $op" 30 bench_note exit_ok \
    "$bin/trident-run" --nproc 1 -- "$bin/trident-bench" "$op" --backend nccl --device cuda \
    --check --min-bytes 4K --max-bytes 16M --iters 5
done

# The cost of the non-blocking path (NCCL may launch the op from a thread of its own; Trident
# polls ncclInProgress, then Work::Wait polls the op's event) against ncclAllReduce and
# cudaStreamSynchronize on a blocking communicator: 4 KiB, one rank.
gpu_step "nccl np1 latency vs plain NCCL" 60 result_note exit_ok \
  "$bin/gpu_check_worker" nccl-latency 4096

# --- 5. NCCL, two ranks on one GPU (functional, not performance) -------------------------
for op in allreduce reducescatter allgather broadcast reduce alltoall sendrecv; do
  gpu_step "nccl np2 $op" 45 bench_note exit_ok \
    "$bin/trident-run" --nproc 2 -- "$own_hostid" "$bin/trident-bench" "$op" --backend nccl \
    --device cuda --check --min-bytes 4K --max-bytes 4M --iters 3
done
gpu_step "nccl np2 allreduce bf16 avg" 45 bench_note exit_ok \
  "$bin/trident-run" --nproc 2 -- "$own_hostid" "$bin/trident-bench" allreduce --backend nccl \
  --device cuda --check --dtype bf16 --op avg --min-bytes 4K --max-bytes 4M --iters 3

gpu_step "nccl np2 SendRecv batch by tag" 45 result_note exit_ok \
  "$bin/trident-run" --nproc 2 -- "$bin/gpu_check_worker" nccl-exchange

# --- 6. a killed and a stopped rank ------------------------------------------------------
for how in kill stop; do
  gpu_step "nccl np2 SIG${how^^} rank 1" 60 result_note fault_ok \
    "$bin/trident-run" --nproc 2 -- "$bin/gpu_check_worker" nccl-fault "$how" 1
done

# --- 7. host backend on CUDA tensors, several processes sharing the GPU ------------------
for np in 2 4; do
  for op in allreduce reducescatter allgather broadcast alltoall sendrecv; do
    gpu_step "host+cuda np$np $op" 45 bench_note exit_ok \
      "$bin/trident-run" --nproc "$np" -- "$bin/trident-bench" "$op" --device cuda --check \
      --min-bytes 4K --max-bytes 4M --iters 3
  done
done

for np in 2 4; do
  gpu_step "host+cuda np$np back-to-back order" 45 result_note exit_ok \
    "$bin/trident-run" --nproc "$np" -- "$bin/gpu_check_worker" host-order
done

# --- 8. checkpoint staging bandwidth -----------------------------------------------------
gpu_step "ckpt D2H staging vs cudaMemcpy" 60 result_note exit_ok \
  "$bin/gpu_check_worker" staging-bw $((256 << 20))

# --- 9. burn-in on the device (health/burn_in.h: memory patterns over device memory, and the
# exact GEMM and sum through cuBLAS) -------------------------------------------------------
if [[ -x $bin/health_test ]]; then
  gpu_step "burn-in device memory and GEMM" 60 gtest_note gtest_ok \
    "$bin/health_test" --gtest_filter='BurnInTest.DeviceMemory*:BurnInTest.DeviceGemm*' \
    --gtest_color=no
else
  skip "burn-in device memory and GEMM" "health_test is not in the bundle (tests/gpu/prepare.sh)"
fi

say ""
verdict="PASS"
exit_code=0
if ((failed > 0)); then
  verdict="FAIL"
  exit_code=1
elif ((have_gpu == 0)); then
  verdict="NO GPU (nothing failed; the GPU steps were skipped)"
  exit_code=3
fi
say "== $verdict: $passed passed, $failed failed, $skipped skipped in $(($(date +%s) - t_start))s (budget ${budget}s); logs in $logs"
exit $exit_code
