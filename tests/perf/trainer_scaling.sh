#!/usr/bin/env bash
# Measures lm-trainer's throughput at 1, 2, 4 and 8 ranks for one fixed global batch, and the
# share of rank 0's step time spent waiting on communication, then prints a markdown table.
#
#   tests/perf/trainer_scaling.sh BUILD_DIR
#
# BUILD_DIR must hold bin/trident-run and bin/lm-trainer. Each layout trains STEPS steps
# (default 120) of the default model with BATCH samples per step (default 256); the first
# WARMUP steps (default 20) are left out of the means. Knobs: STEPS, BATCH, WARMUP,
# LAYOUTS ("tp,pp,dp ..."), PROVIDER (default shm), EXTRA (more lm-trainer flags).
# Columns: tokens/s = global batch / mean step time; step ms; comm share = mean over the
# measured steps of 1 - (rank 0's compute time / step time), which counts waiting for peers
# (and, with more ranks than cores, for a CPU) as communication.
set -u -o pipefail
if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
build=$1
steps=${STEPS:-120}
batch=${BATCH:-256}
warmup=${WARMUP:-20}
layouts=${LAYOUTS:-"1,1,1 1,1,2 2,1,1 1,2,1 1,1,4 2,1,2 2,2,1 2,2,2 1,2,4"}
export FI_TCP_IFACE=lo FI_SOCKETS_IFACE=lo TRIDENT_FABRIC_PROVIDER=${PROVIDER:-shm}
out=$(mktemp -d)
echo "| ranks | tp x pp x dp | tokens/s | step ms | comm share | vs 1 rank |"
echo "|---:|:---:|---:|---:|---:|---:|"
base=""
for layout in $layouts; do
  IFS=, read -r tp pp dp <<<"$layout"
  n=$((tp * pp * dp))
  log=$out/$tp-$pp-$dp.log
  "$build/bin/trident-run" --nproc "$n" -- "$build/bin/lm-trainer" --tp "$tp" --pp "$pp" \
    --dp "$dp" --steps "$steps" --batch "$batch" --eval-every 1000000 ${EXTRA:-} >"$log" 2>&1 ||
    { echo "| $n | ${tp}x${pp}x${dp} | failed: see $log | | | |"; continue; }
  python3 - "$log" "$warmup" "$n" "$tp" "$pp" "$dp" "$batch" "${base:-0}" >"$out/row" <<'PY'
import re, sys
log, warmup, n, tp, pp, dp, batch, base = sys.argv[1], int(sys.argv[2]), *sys.argv[3:7], int(sys.argv[7]), float(sys.argv[8])
rows = [(int(m[1]), float(m[2]), float(m[3])) for m in
        re.finditer(r"step=(\d+) .*?step_ms=([0-9.]+) comm_share=([0-9.]+)", open(log).read())]
rows = [r for r in rows if r[0] > warmup]
ms = sum(r[1] for r in rows) / len(rows)
share = sum(r[2] for r in rows) / len(rows)
tps = batch / (ms / 1e3)
ratio = f"{tps / base:.2f}x" if base > 0 else "1.00x"
print(f"| {n} | {tp}x{pp}x{dp} | {tps:.0f} | {ms:.1f} | {share:.2f} | {ratio} |")
open(log + ".tps", "w").write(f"{tps:.3f}")
PY
  [[ -z $base ]] && base=$(cat "$log.tps")
  cat "$out/row"
done
echo
echo "steps $steps (means over steps $((warmup + 1))-$steps), global batch $batch, provider $TRIDENT_FABRIC_PROVIDER, $(nproc) cores, $(date -u +%Y-%m-%d)"
rm -rf "$out"
