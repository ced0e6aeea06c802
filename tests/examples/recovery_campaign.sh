#!/usr/bin/env bash
# A randomized failure campaign: RUNS runs of lm-trainer on 8 ranks (tp 2 x pp 2 x dp 2)
# under trident-run, each with faults (SIGKILL or SIGSTOP, from outside, at random members)
# in one of five scenarios, taken in turn:
#   single    --spares 1: one random member (a worker or the spare) at a random time
#   double    --spares 2: two workers, the second 0-300 ms after the first
#   recovery  --spares 2: a worker; then, as soon as trident-run says a spare takes its
#             rank (the new world is being built), a second member (a worker or that spare)
#   commit    --spares 1: a worker, just after a checkpoint is staged (its write and commit
#             run in the background then)
#   elastic   --spares 0 --elastic-dp: one worker; dp shrinks instead
# Times are random within the length of a run without failure. Where spares suffice (every
# scenario but elastic), a run must finish with the losses of a run without failure
# (relative 1e-4 at every step); an elastic run may instead exit non-zero with a "job
# failed:" line. A run still going after its deadline is a hang. Prints one line per run and
# a summary per scenario; exits non-zero on any wrong loss, job failure while spares
# sufficed, unclear failure or hang.
#
#   tests/examples/recovery_campaign.sh BUILD_DIR [RUNS=100] [SEED=$RANDOM] [SCENARIOS]
#
# SCENARIOS: a comma-separated subset (default: all five, in the order above).
# ctest runs the short form (lm_trainer_campaign_short: 5 runs, one of each, label slow).
set -u -o pipefail
if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
bin=$1/bin
runs=${2:-100}
seed=${3:-$RANDOM}
IFS=, read -r -a scenarios <<<"${4:-single,double,recovery,commit,elastic}"
for s in "${scenarios[@]}"; do
  case $s in single | double | recovery | commit | elastic) ;;
    *) echo "unknown scenario '$s' (single, double, recovery, commit, elastic)"; exit 2 ;;
  esac
done
RANDOM=$seed
deadline=${RUN_DEADLINE:-180}
work=$(mktemp -d)
trap 'pkill -KILL -f "$bin/lm-trainer .*--ckpt-dir $work/" 2>/dev/null; rm -rf "$work"' EXIT
export FI_TCP_IFACE=lo FI_SOCKETS_IFACE=lo TRIDENT_HEARTBEAT_TIMEOUT_MS=${TRIDENT_HEARTBEAT_TIMEOUT_MS:-500} TRIDENT_BUILD_TIMEOUT_MS=${TRIDENT_BUILD_TIMEOUT_MS:-3000}
flags=(--tp 2 --pp 2 --dp 2 --steps 60 --context 8 --embed 8 --ffn 64 --batch 32
       --microbatches 4 --val-samples 64 --eval-every 20 --seed 11 --timeout 30s --ckpt-every 5)
workers=(w0 w1 w2 w3 w4 w5 w6 w7)

losses() { grep -oE 'step=[0-9]+ loss=[0-9.]+' "$1" | sed -E 's/step=([0-9]+) loss=/\1 /'; }
rand_ms() { echo $(((RANDOM * 32768 + RANDOM) % ($1 > 0 ? $1 : 1))); }
pause_ms() { sleep "$(printf "%d.%03d" $(($1 / 1000)) $(($1 % 1000)))"; }
rand_sig() { [[ $((RANDOM % 3)) == 0 ]] && echo STOP || echo KILL; }
# A random element of the arguments.
pick() { local a=("$@"); echo "${a[RANDOM % ${#a[@]}]}"; }
# fault MEMBER SIGNAL: signals every lm-trainer process of this run that is MEMBER; prints
# yes if one was hit (the member may have finished, or never started).
fault() {
  local p hit=no
  for p in $(pgrep -f "$bin/lm-trainer .*--ckpt-dir $ckpt\$"); do
    if tr '\0' '\n' 2>/dev/null <"/proc/$p/environ" | grep -qx "TRIDENT_MEMBER=$1"; then
      kill "-$2" "$p" 2>/dev/null && hit=yes
    fi
  done
  echo $hit
}
# await LOG REGEX [COUNT=1]: waits (while the run lives, at most its deadline) until LOG has
# COUNT lines matching REGEX; 0 if it came.
await() {
  local n=${3:-1} until=$((SECONDS + deadline))
  while ((SECONDS < until)) && kill -0 "$run" 2>/dev/null; do
    (($(grep -cE "$2" "$1") >= n)) && return 0
    sleep 0.01
  done
  return 1
}

ref_start=$(date +%s%N)
timeout "$deadline" "$bin/trident-run" --nproc 8 -- "$bin/lm-trainer" "${flags[@]}" \
  --ckpt-dir "$work/ref" >"$work/ref.log" 2>&1 || { echo "reference run failed"; cat "$work/ref.log"; exit 1; }
ref_ms=$((($(date +%s%N) - ref_start) / 1000000))
losses "$work/ref.log" >"$work/ref.losses"
checkpoints=$(grep -c "checkpoint step=" "$work/ref.log")

declare -A n_runs n_ok n_failed n_bad
bad=0
echo "campaign: $runs runs, seed $seed, scenarios ${scenarios[*]}; a run without failure takes ${ref_ms} ms"
for ((i = 1; i <= runs; i++)); do
  scenario=${scenarios[(i - 1) % ${#scenarios[@]}]}
  log=$work/run$i.log
  ckpt=$work/ckpt$i
  mode=(--spares 1)
  extra=()
  case $scenario in
    double | recovery) mode=(--spares 2) ;;
    elastic) mode=(--spares 0) extra=(--elastic-dp) ;;
  esac
  : >"$log"
  timeout "$deadline" "$bin/trident-run" --nproc 8 "${mode[@]}" -- "$bin/lm-trainer" "${flags[@]}" \
    "${extra[@]}" --ckpt-dir "$ckpt" >"$log" 2>&1 &
  run=$!
  what=()  # "SIG member (when): hit?"
  case $scenario in
    single)
      pause_ms "$(rand_ms "$ref_ms")"
      m=$(pick "${workers[@]}" s0) sig=$(rand_sig)
      what+=("$sig $m: $(fault "$m" "$sig")")
      ;;
    double)
      pause_ms "$(rand_ms "$ref_ms")"
      m1=$(pick "${workers[@]}") sig1=$(rand_sig)
      what+=("$sig1 $m1: $(fault "$m1" "$sig1")")
      gap=$(rand_ms 300)
      pause_ms "$gap"
      others=()
      for w in "${workers[@]}"; do [[ $w != "$m1" ]] && others+=("$w"); done
      m2=$(pick "${others[@]}") sig2=$(rand_sig)
      what+=("$sig2 $m2 +${gap}ms: $(fault "$m2" "$sig2")")
      ;;
    recovery)
      pause_ms "$(rand_ms "$ref_ms")"
      m1=$(pick "${workers[@]}") sig1=$(rand_sig)
      what+=("$sig1 $m1: $(fault "$m1" "$sig1")")
      if await "$log" "spare s[0-9]+ takes rank"; then
        holder=$(grep -oE "spare s[0-9]+ takes rank" "$log" | head -1 | awk '{print $2}')
        others=("$holder")
        for w in "${workers[@]}"; do [[ $w != "$m1" ]] && others+=("$w"); done
        m2=$(pick "${others[@]}") sig2=$(rand_sig)
        what+=("$sig2 $m2 in the rebuild: $(fault "$m2" "$sig2")")
      else
        what+=("(no rebuild began)")
      fi
      ;;
    commit)
      k=$((1 + RANDOM % (checkpoints > 1 ? checkpoints - 1 : 1)))
      m=$(pick "${workers[@]}") sig=$(rand_sig)
      if await "$log" "checkpoint step=" "$k"; then
        what+=("$sig $m after checkpoint $k was staged: $(fault "$m" "$sig")")
      else
        what+=("(no checkpoint $k)")
      fi
      ;;
    elastic)
      pause_ms "$(rand_ms "$ref_ms")"
      m=$(pick "${workers[@]}") sig=$(rand_sig)
      what+=("$sig $m: $(fault "$m" "$sig")")
      ;;
  esac
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
    why=$(grep -o 'job failed:.*' "$log" | tail -1)
    if [[ $scenario == elastic ]]; then
      verdict="failed cleanly: $why"
    else
      verdict="JOB FAILED WHILE SPARES SUFFICED: $why"
    fi
  else
    verdict="UNCLEAR FAILURE (exit $code)"
  fi
  recoveries=$(grep -c "recovery epoch=" "$log")
  printf 'run %3d %-8s %s: exit %d, %d recovery(ies): %s\n' "$i" "$scenario" \
    "$(IFS=';'; echo "${what[*]}")" "$code" "$recoveries" "$verdict"
  n_runs[$scenario]=$((${n_runs[$scenario]:-0} + 1))
  case $verdict in
    ok) n_ok[$scenario]=$((${n_ok[$scenario]:-0} + 1)) ;;
    failed*) n_failed[$scenario]=$((${n_failed[$scenario]:-0} + 1)); cp "$log" "/tmp/campaign-run$i.log" ;;
    *) n_bad[$scenario]=$((${n_bad[$scenario]:-0} + 1)); bad=$((bad + 1))
       cp "$log" "/tmp/campaign-run$i.log"; echo "  log kept: /tmp/campaign-run$i.log" ;;
  esac
done
for s in "${scenarios[@]}"; do
  [[ -z ${n_runs[$s]:-} ]] && continue
  printf 'campaign %-8s %3d runs: %3d right losses, %d stopped with a clear error, %d bad\n' "$s" \
    "${n_runs[$s]}" "${n_ok[$s]:-0}" "${n_failed[$s]:-0}" "${n_bad[$s]:-0}"
done
echo "campaign: $runs runs, seed $seed: $bad bad (wrong losses, job failures while spares sufficed, unclear failures or hangs)"
[[ $bad == 0 ]]
