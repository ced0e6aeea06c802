#!/usr/bin/env bash
# One sitting of the torch-level comparison (docs/benchmarks.md, "PyTorch: dist.all_reduce"):
# for each world size, trident-bench allreduce (C++), then tests/perf/torch_allreduce.py
# (trident and gloo process groups in the same processes, alternating rounds).
#   bash tests/perf/torch_allreduce.sh OUT_DIR [WORLD...]   (default worlds: 2 4)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: torch_allreduce.sh OUT_DIR [WORLD...]}; shift
worlds=("${@:-2 4}")
mkdir -p "$out"
export FI_TCP_IFACE=lo FI_SOCKETS_IFACE=lo OMP_NUM_THREADS=1
py=${PYTHON:-.venv/bin/python}
for w in ${worlds[@]}; do
  build/bin/trident-run --nproc "$w" -- build/bin/trident-bench allreduce --min-bytes 4K \
    --max-bytes 64M --json "$out/cpp_w$w.json" | tee "$out/cpp_w$w.txt"
  port=$("$py" -c "import trident.torch as t; print(t.free_port())")
  pids=()
  for ((r = 0; r < w; r++)); do
    RANK=$r WORLD_SIZE=$w LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      "$py" tests/perf/torch_allreduce.py --json "$out/torch_w$w.json" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
done
