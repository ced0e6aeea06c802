#!/usr/bin/env bash
# The test command: installs what is missing, builds, and runs every test (ctest labels
# unit, multiproc, install, and gpu, which skip without a CUDA device: tests/gpu/prepare.sh
# here, then tests/gpu/check.sh on the GPU machine, is the device check). Works from a fresh clone on Debian 12, as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
build=${TRIDENT_BUILD_DIR:-build}
# libfabric's tcp provider must never pick eth0: every test talks over loopback only.
export FI_TCP_IFACE=lo FI_SOCKETS_IFACE=lo
ctest --test-dir "$build" --output-on-failure --timeout 900 -j "${TRIDENT_TEST_JOBS:-1}" "$@"
