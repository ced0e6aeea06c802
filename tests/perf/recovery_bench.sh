#!/usr/bin/env bash
# Recovery timings over many injected failures: lm-trainer on 8 ranks (tp 2 x pp 2 x dp 2,
# the default model) under `trident-run --spares 1`, one failure per run (a random worker,
# SIGKILL or SIGSTOP, at a random step after the first checkpoint). Prints p50/p99 of
#   kill->verdict     SIGKILL raised (the rank's clock) to the agent's verdict
#   stop->verdict     SIGSTOP raised to the verdict (goal: heartbeat timeout + 10%)
#   verdict->step     verdict to the first completed step of the new epoch (goal: < 2 s)
#   restore           verdict to the restored state (recover_ms)
# and the peer-replica transfer rate next to trident-bench's sendrecv bandwidth for the same
# size, measured in the same run.
#
#   tests/perf/recovery_bench.sh BUILD_DIR [RUNS=20]
set -u -o pipefail
if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
bin=$1/bin
runs=${2:-20}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export FI_TCP_IFACE=lo FI_SOCKETS_IFACE=lo
timeout_ms=${TRIDENT_HEARTBEAT_TIMEOUT_MS:-1000}
export TRIDENT_HEARTBEAT_TIMEOUT_MS=$timeout_ms
for ((i = 1; i <= runs; i++)); do
  member=w$((RANDOM % 8))
  sig=$([[ $((i % 2)) == 0 ]] && echo STOP || echo KILL)
  step=$((12 + RANDOM % 20))
  timeout 300 "$bin/trident-run" --nproc 8 --spares 1 -- "$bin/lm-trainer" --tp 2 --pp 2 --dp 2 \
    --steps 40 --eval-every 1000 --ckpt-dir "$work/ckpt$i" --ckpt-every 10 \
    --inject-fault "$member:$step:$sig" >"$work/run$i.log" 2>&1
  echo "run $i: $sig $member at step $step: exit $? $(grep -o 'recovery epoch=.*' "$work/run$i.log" | cut -c1-120)"
done
bytes=$(grep -ho 'peer_bytes=[0-9]*' "$work"/run*.log | head -1 | cut -d= -f2)
bench_bytes=${bytes:-3000000}
"$bin/trident-run" --nproc 2 -- "$bin/trident-bench" sendrecv --min-bytes "$bench_bytes" \
  --max-bytes "$bench_bytes" >"$work/sendrecv.txt" 2>&1
python3 - "$work" "$runs" "$timeout_ms" <<'PY'
import glob, re, statistics, sys
work, runs, timeout_ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
kill, stop, first, restore, rates = [], [], [], [], []
for path in glob.glob(f"{work}/run*.log"):
    text = open(path).read()
    inj = re.search(r"fault_injected member=\S+ signal=(\d+) unix_ms=(\d+)", text)
    rec = re.search(r"recovery epoch=\d+ .*?recover_ms=(\d+) .*?verdict_unix_ms=(\d+) peer_bytes=(\d+) peer_ms=([0-9.]+)", text)
    fs = re.search(r"first_step_after_recovery step=\d+ since_verdict_ms=(\d+)", text)
    if not (inj and rec and fs):
        continue
    (stop if inj[1] == "19" else kill).append(int(rec[2]) - int(inj[2]))
    restore.append(int(rec[1]))
    first.append(int(fs[1]))
    if float(rec[4]) > 0 and int(rec[3]) > 0:
        rates.append(int(rec[3]) / float(rec[4]) / 1e6)  # GB/s
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else float("nan")
print(f"\n{len(kill) + len(stop)} of {runs} runs recovered; heartbeat timeout {timeout_ms} ms\n")
print("| measure | n | p50 ms | p99 ms | goal |")
print("|---|---:|---:|---:|---|")
print(f"| SIGKILL -> verdict | {len(kill)} | {pct(kill,50)} | {pct(kill,99)} | < 100 ms |")
print(f"| SIGSTOP -> verdict | {len(stop)} | {pct(stop,50)} | {pct(stop,99)} | < {timeout_ms * 1.1:.0f} ms (timeout + 10%) |")
print(f"| verdict -> restored state | {len(restore)} | {pct(restore,50)} | {pct(restore,99)} | |")
print(f"| verdict -> first completed step | {len(first)} | {pct(first,50)} | {pct(first,99)} | < 2000 ms |")
sr = re.findall(r"^(?:\[rank \d+\])?\s*(\d+)\s+\d+\s+\S+\s+\S+\s+\S+\s+\d+\s+[0-9.]+\s+([0-9.]+)\s+([0-9.]+)", open(f"{work}/sendrecv.txt").read(), re.M)
if rates and sr:
    bw = float(sr[-1][2])
    print(f"\npeer-replica transfer: {statistics.median(rates):.2f} GB/s median over {len(rates)} "
          f"(state of {sr[-1][0]} bytes); trident-bench sendrecv of the same size: {bw:.2f} GB/s "
          f"(ratio {statistics.median(rates) / bw:.2f})")
PY
