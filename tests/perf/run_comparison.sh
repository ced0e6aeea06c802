#!/usr/bin/env bash
# Runs trident-bench, Gloo (gloo_bench) and Open MPI (mpi_bench) on the same collectives,
# world sizes and sizes in one sitting, then writes a markdown table of busbw per size with
# the ratios trident/gloo and trident/mpi (tests/perf/compare.py); for allreduce also the
# memory-bandwidth bound (memcpy_bench: N threads each copy the bytes once, together).
#
#   tests/perf/run_comparison.sh BUILD_DIR [OUT_DIR]
#
# BUILD_DIR must hold bin/trident-run, bin/trident-bench, and bin/gloo_bench and/or
# bin/mpi_bench (built when their libraries are installed); this script builds nothing.
# OUT_DIR (default: ./perf-comparison-<date>) receives one raw file per run, logs, and
# comparison.md. Knobs, from the environment:
#   NPROCS="2 4"  OPS="allreduce allgather broadcast"  MIN_BYTES=4K  MAX_BYTES=256M
#   PROVIDERS="engine shm tcp"   trident-bench's paths: engine = the intra-host
#                         shared-memory engine (TRIDENT_INTRAHOST=shm); shm, tcp = every
#                         collective over that libfabric provider (TRIDENT_INTRAHOST=fabric)
#   HEAP=0                1: every program's buffers from the plain heap (trident-bench
#                         --heap, mpi_bench --no-hugepages), as a framework's tensors; 0:
#                         AllocateHostMemory / huge pages. Run both for the two tables.
#   GLOO_ALGOS="hd ring"  gloo allreduce variants (gloo_bench --algo); the table shows the
#                         best per size and names it
#   CHECK=1               every program checks its result once per size (--check)
#   REPEAT=1              launches of every run (interleaved: the whole matrix, then again);
#                         the table takes the median per size
#   RUN_TIMEOUT=1200      seconds allowed to each run
#   QUIET_WAIT=300        before each run, wait up to this many seconds for the CPUs to be
#                         idle (>= 90 % idle over 2 s; other jobs on a shared host skew
#                         every number); 0 disables. A run that started on a busy host is
#                         marked in the log and in meta.txt.
# Host-wide noise matters (research/baselines.md: 20-50 % between passes): run on a quiet
# machine and compare only numbers from the same sitting.
set -u -o pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
BUILD=$(cd "$1" && pwd) || exit 2
OUT=${2:-$PWD/perf-comparison-$(date +%Y%m%d-%H%M%S)}
BIN=$BUILD/bin
HERE=$(cd "$(dirname "$0")" && pwd)
NPROCS=${NPROCS:-"2 4"}
OPS=${OPS:-"allreduce allgather broadcast"}
MIN_BYTES=${MIN_BYTES:-4K}
MAX_BYTES=${MAX_BYTES:-256M}
PROVIDERS=${PROVIDERS:-"engine shm tcp"}
HEAP=${HEAP:-0}
GLOO_ALGOS=${GLOO_ALGOS:-"hd ring"}
CHECK=${CHECK:-1}
REPEAT=${REPEAT:-1}
RUN_TIMEOUT=${RUN_TIMEOUT:-1200}
QUIET_WAIT=${QUIET_WAIT:-300}

mkdir -p "$OUT/logs" || exit 1
CHECK_FLAG=()
[[ "$CHECK" == 1 ]] && CHECK_FLAG=(--check)
SIZE_FLAGS=(--min-bytes "$MIN_BYTES" --max-bytes "$MAX_BYTES")
TRIDENT_HEAP_FLAG=()
MPI_HEAP_FLAG=()
[[ "$HEAP" == 1 ]] && TRIDENT_HEAP_FLAG=(--heap) && MPI_HEAP_FLAG=(--no-hugepages)
failures=()

{
  echo "date: $(date -Is)"
  echo "host: $(uname -srm), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  # The checkout's state now; BUILD_DIR may have been built from another one.
  echo "checkout: $(git -C "$HERE" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$HERE" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "build: $BUILD"
  echo "nprocs: $NPROCS; ops: $OPS; sizes: $MIN_BYTES..$MAX_BYTES; providers: $PROVIDERS; gloo algos: $GLOO_ALGOS; check: $CHECK; repeat: $REPEAT; heap buffers: $HEAP"
  echo "load before: $(cat /proc/loadavg)"
} > "$OUT/meta.txt"
cat "$OUT/meta.txt"

# Percentage of CPU time idle over the next 2 seconds.
idle_percent() {
  local a b
  read -r -a a < <(head -1 /proc/stat)
  sleep 2
  read -r -a b < <(head -1 /proc/stat)
  local total=0 i
  for ((i = 1; i < ${#a[@]}; i++)); do total=$((total + b[i] - a[i])); done
  local idle=$((b[4] - a[4] + b[5] - a[5]))
  echo $((total > 0 ? 100 * idle / total : 100))
}

# Waits up to QUIET_WAIT seconds for an idle host; says so when it gives up.
wait_quiet() {
  [[ "$QUIET_WAIT" -gt 0 ]] || return 0
  local start=$SECONDS idle
  while idle=$(idle_percent); [[ $idle -lt 90 ]]; do
    if ((SECONDS - start >= QUIET_WAIT)); then
      echo "   host still busy (${idle}% idle) after ${QUIET_WAIT}s: running anyway"
      echo "busy host at the start of $1 (${idle}% idle)" >> "$OUT/meta.txt"
      return 0
    fi
  done
}

# run NAME COMMAND... : stdout to OUT/NAME.txt, stderr to OUT/logs/NAME.err
run() {
  local name=$1; shift
  wait_quiet "$name"
  echo "== $name"
  local start=$SECONDS
  timeout "$RUN_TIMEOUT" "$@" > "$OUT/$name.txt" 2> "$OUT/logs/$name.err"
  local rc=$?
  echo "   rc=$rc, $((SECONDS - start)) s"
  if [[ $rc != 0 ]]; then
    failures+=("$name (rc $rc)")
    tail -3 "$OUT/logs/$name.err" | sed 's/^/   | /'
  fi
}

# gloo_bench needs one process per rank meeting in a fresh FileStore directory.
gloo_job() {
  local np=$1; shift
  local store
  store=$(mktemp -d /tmp/gloo-store.XXXXXX)
  local pids=() rc=0
  for ((r = 1; r < np; r++)); do
    "$BIN/gloo_bench" --rank $r --nproc "$np" --store "$store" "$@" > /dev/null &
    pids+=($!)
  done
  "$BIN/gloo_bench" --rank 0 --nproc "$np" --store "$store" "$@" || rc=$?
  for p in "${pids[@]}"; do wait "$p" || rc=$?; done
  rm -rf "$store"
  return $rc
}
export -f gloo_job
export BIN

for ((rep = 1; rep <= REPEAT; rep++)); do
sfx=""
[[ $REPEAT -gt 1 ]] && sfx=.r$rep
for np in $NPROCS; do
  for op in $OPS; do
    if [[ -x "$BIN/trident-bench" && -x "$BIN/trident-run" ]]; then
      inplace=()
      [[ $op == allreduce ]] && inplace=(--inplace)  # as MPI_IN_PLACE and gloo
      for p in $PROVIDERS; do
        intrahost=fabric provider=$p
        [[ $p == engine ]] && intrahost=shm provider=shm
        run "trident-$p"_"$op"_np"$np$sfx" env TRIDENT_INTRAHOST=$intrahost \
          "$BIN/trident-run" --nproc "$np" -- \
          "$BIN/trident-bench" "$op" "${SIZE_FLAGS[@]}" "${CHECK_FLAG[@]}" "${inplace[@]}" \
          "${TRIDENT_HEAP_FLAG[@]}" --provider "$provider" \
          --json "$OUT/trident-$p"_"$op"_np"$np$sfx.json"
      done
    else
      echo "no trident-bench/trident-run in $BIN: skipping trident"
    fi
    if [[ -x "$BIN/gloo_bench" ]]; then
      algos=default
      [[ $op == allreduce ]] && algos=$GLOO_ALGOS
      for a in $algos; do
        algo_flag=()
        [[ $a != default ]] && algo_flag=(--algo "$a")
        run "gloo-$a"_"$op"_np"$np$sfx" bash -c 'gloo_job "$@"' _ "$np" --op "$op" \
          "${algo_flag[@]}" "${SIZE_FLAGS[@]}" "${CHECK_FLAG[@]}"
      done
    fi
    if [[ -x "$BIN/memcpy_bench" && $op == allreduce ]]; then
      run "memcpy_$op"_np"$np$sfx" "$BIN/memcpy_bench" --nproc "$np" "${SIZE_FLAGS[@]}" \
        "${TRIDENT_HEAP_FLAG[@]}"
    fi
    if [[ -x "$BIN/mpi_bench" ]]; then
      run "mpi_$op"_np"$np$sfx" mpirun --allow-run-as-root --oversubscribe -np "$np" \
        --mca pml ob1 --mca btl vader,self "$BIN/mpi_bench" --op "$op" --label "btl vader" \
        "${SIZE_FLAGS[@]}" "${CHECK_FLAG[@]}" "${MPI_HEAP_FLAG[@]}"
    fi
  done
done
done

echo "load after: $(cat /proc/loadavg)" >> "$OUT/meta.txt"
python3 "$HERE/compare.py" "$OUT" > "$OUT/comparison.md"
echo "wrote $OUT/comparison.md"
if [[ ${#failures[@]} -gt 0 ]]; then
  echo "failed runs: ${failures[*]}"
  exit 1
fi
