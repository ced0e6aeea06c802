#!/usr/bin/env bash
# The demo command: installs what is missing, builds, and runs an allreduce benchmark on 4
# ranks through trident-run, checking every element. (The example trainer with a hot spare
# replaces this once it exists.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
CMAKE_BUILD_TYPE=Release bash scripts/build.sh -DTRIDENT_BUILD_TESTS=OFF
build=${TRIDENT_BUILD_DIR:-build}
export FI_TCP_IFACE=lo FI_SOCKETS_IFACE=lo
for provider in shm tcp; do
  echo "== trident-bench allreduce, 4 ranks, provider $provider"
  TRIDENT_FABRIC_PROVIDER=$provider "$build/bin/trident-run" --nproc 4 -- \
    "$build/bin/trident-bench" allreduce --min-bytes 4K --max-bytes 64M --check
done
