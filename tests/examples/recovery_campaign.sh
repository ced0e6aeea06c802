#!/usr/bin/env bash
# A randomized failure campaign: RUNS runs of lm-trainer on 8 ranks (tp 2 x pp 2 x dp 2)
# under `trident-run --spares 1` (every 4th run: no spare and --elastic-dp, so a failure
# shrinks dp instead), each with one random member (a worker or the spare) killed (SIGKILL)
# or stopped (SIGSTOP) at a random time within the length of a run without failure. Every
# run must either finish with the losses of a run without failure (relative 1e-4 at every
# step) or exit non-zero with a "job failed:" line; a run still going after its deadline is
# a hang. Prints one line per run and a summary; exits non-zero on any wrong loss, unclear
# failure or hang.
#
#   tests/examples/recovery_campaign.sh BUILD_DIR [RUNS=100] [SEED=$RANDOM]
#
# ctest runs the short form (lm_trainer_campaign_short: 4 runs, label slow).
set -u -o pipefail
if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
bin=$1/bin
runs=${2:-100}
seed=${3:-$RANDOM}
RANDOM=$seed
deadline=${RUN_DEADLINE:-120}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export FI_TCP_IFACE=lo FI_SOCKETS_IFACE=lo TRIDENT_HEARTBEAT_TIMEOUT_MS=${TRIDENT_HEARTBEAT_TIMEOUT_MS:-500} TRIDENT_BUILD_TIMEOUT_MS=${TRIDENT_BUILD_TIMEOUT_MS:-3000}
flags=(--tp 2 --pp 2 --dp 2 --steps 60 --context 8 --embed 8 --ffn 64 --batch 32
       --microbatches 4 --val-samples 64 --eval-every 20 --seed 11 --timeout 30s --ckpt-every 5)

losses() { grep -oE 'step=[0-9]+ loss=[0-9.]+' "$1" | sed -E 's/step=([0-9]+) loss=/\1 /'; }

ref_start=$(date +%s%N)
timeout "$deadline" "$bin/trident-run" --nproc 8 -- "$bin/lm-trainer" "${flags[@]}" \
  --ckpt-dir "$work/ref" >"$work/ref.log" 2>&1 || { echo "reference run failed"; cat "$work/ref.log"; exit 1; }
ref_ms=$((($(date +%s%N) - ref_start) / 1000000))
losses "$work/ref.log" >"$work/ref.losses"

ok=0 clean_fail=0 bad=0 recovered=0
echo "campaign: $runs runs, seed $seed; a run without failure takes ${ref_ms} ms"
for ((i = 1; i <= runs; i++)); do
  log=$work/run$i.log
  members=(w0 w1 w2 w3 w4 w5 w6 w7 s0)
  mode=(--spares 1)
  extra=()
  if ((i % 4 == 0)); then
    mode=(--spares 0)
    extra=(--elastic-dp)
    members=(w0 w1 w2 w3 w4 w5 w6 w7)
  fi
  timeout "$deadline" "$bin/trident-run" --nproc 8 "${mode[@]}" -- "$bin/lm-trainer" "${flags[@]}" \
    "${extra[@]}" --ckpt-dir "$work/ckpt$i" >"$log" 2>&1 &
  run=$!
  member=${members[RANDOM % ${#members[@]}]}
  sig=$([[ $((RANDOM % 3)) == 0 ]] && echo STOP || echo KILL)
  delay_ms=$(((RANDOM * 32768 + RANDOM) % (ref_ms > 0 ? ref_ms : 1000)))
  delay=$(printf "%d.%03d" $((delay_ms / 1000)) $((delay_ms % 1000)))
  sleep "$delay"
  hit=no
  for p in $(pgrep -f "$bin/lm-trainer"); do
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "TRIDENT_MEMBER=$member"; then
      kill "-$sig" "$p" 2>/dev/null && hit=yes
    fi
  done
  wait "$run"
  code=$?
  verdict=ok
  if [[ $code == 124 || $code == 137 ]]; then
    verdict="HANG (still running after ${deadline}s)"
  elif [[ $code == 0 ]]; then
    losses "$log" | sort -n -k1,1 -s | awk '{last[$1]=$2} END {for (s in last) print s, last[s]}' |
      sort -n >"$work/run.losses"
    if ! python3 - "$work/ref.losses" "$work/run.losses" <<'PY'
import sys
ref = dict(l.split() for l in open(sys.argv[1]))
got = dict(l.split() for l in open(sys.argv[2]))
bad = [s for s in ref if s not in got or abs(float(got[s]) - float(ref[s])) > 1e-4 * float(ref[s])]
sys.exit(1 if bad else 0)
PY
    then verdict="WRONG LOSSES"; fi
  elif grep -q "job failed:" "$log"; then
    verdict="failed cleanly: $(grep -o 'job failed:.*' "$log" | tail -1)"
  else
    verdict="UNCLEAR FAILURE (exit $code)"
  fi
  recoveries=$(grep -c "recovery epoch=" "$log")
  printf 'run %3d: %-4s %-3s after %ss (hit %s%s): exit %d, %d recovery(ies): %s\n' "$i" "$sig" \
    "$member" "$delay" "$hit" "${extra:+, elastic}" "$code" "$recoveries" "$verdict"
  [[ $hit == yes && $code == 0 && $recoveries -gt 0 ]] && recovered=$((recovered + 1))
  case $verdict in
    ok) ok=$((ok + 1)) ;;
    failed*) clean_fail=$((clean_fail + 1)); cp "$log" "/tmp/campaign-run$i.log" ;;
    *) bad=$((bad + 1)); cp "$log" "/tmp/campaign-run$i.log"; echo "  log kept: /tmp/campaign-run$i.log" ;;
  esac
done
echo "campaign: $runs runs: $ok completed with the right losses ($recovered of them after a recovery), $clean_fail stopped with a clear error, $bad bad (wrong losses, unclear failures or hangs)"
[[ $bad == 0 ]]
