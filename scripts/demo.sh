#!/usr/bin/env bash
# The demo command: installs what is missing, builds, and trains the example language model
# (examples/lm_trainer) on 8 ranks through trident-run with tensor, pipeline and data
# parallelism (tp 2 x pp 2 x dp 2, 1F1B schedule), checkpoints every 10 steps and a hot spare.
# Rank 3 is killed (SIGKILL) at step 150: the spare takes its place, every rank goes back to
# the last checkpoint (the spare's state comes from its buddy's memory) and the run finishes.
# Then the same model runs in one process: the losses match up to float rounding (checked
# over the first 20 steps).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
CMAKE_BUILD_TYPE=Release bash scripts/build.sh -DTRIDENT_BUILD_TESTS=OFF
build=${TRIDENT_BUILD_DIR:-build}
export FI_TCP_IFACE=lo FI_SOCKETS_IFACE=lo
steps=${DEMO_STEPS:-300}
flags=(--steps "$steps" --eval-every 50 --schedule 1f1b --microbatches 4)

ckpt=$(mktemp -d /tmp/trident-demo-ckpt.XXXXXX)
kill_at=$((steps / 2))
echo "== lm-trainer, 8 ranks (tp 2 x pp 2 x dp 2) + 1 spare through trident-run (libfabric shm);"
echo "   checkpoints every 10 steps in $ckpt; rank 3 (member w3) is killed at step $kill_at"
"$build/bin/trident-run" --nproc 8 --spares 1 -- "$build/bin/lm-trainer" --tp 2 --pp 2 --dp 2 \
  "${flags[@]}" --ckpt-dir "$ckpt" --ckpt-every 10 --inject-fault "w3:$kill_at:KILL" 2>&1 |
  tee /tmp/trident-demo-8.log |
  grep -E 'start|val_loss|done|recovery epoch|first_step_after|trident-run:|spare .* ready' |
  grep -v ' warning\] '
grep -q "recovery epoch=2 dead_rank=3" /tmp/trident-demo-8.log || { echo "demo: no recovery?"; exit 1; }
echo
echo "== the same model and batches in one process"
"$build/bin/lm-trainer" "${flags[@]}" | tee /tmp/trident-demo-1.log | grep -E 'val_loss|done'
echo
python3 - /tmp/trident-demo-8.log /tmp/trident-demo-1.log <<'PY'
import re, sys
def losses(path):
    return {int(m[1]): float(m[2]) for m in re.finditer(r"step=(\d+) loss=([0-9.]+)", open(path).read())}
def final_val(path):
    return float(re.search(r"final_val_loss=([0-9.]+)", open(path).read())[1])
a, b = losses(sys.argv[1]), losses(sys.argv[2])
early = max(abs(a[s] - b[s]) / b[s] for s in b if s <= 20)
print(f"== steps 1-20: largest relative difference between the two runs' losses {early:.1e} "
      f"(bound 1e-4)")
print(f"== after {len(b)} steps, validation loss: 8 ranks {final_val(sys.argv[1]):.4f}, "
      f"one process {final_val(sys.argv[2]):.4f} (float rounding differences grow over a long "
      f"run, as in any training)")
sys.exit(0 if len(a) == len(b) and early < 1e-4 else 1)
PY
