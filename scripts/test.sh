#!/usr/bin/env bash
# The test command: installs what is missing, builds, and runs every test (ctest labels
# unit, multiproc, etcd, multinode (root: network namespaces), install, and gpu, which skip without a CUDA device: tests/gpu/prepare.sh
# here, then tests/gpu/check.sh on the GPU machine, is the device check), then each fuzzer for
# TRIDENT_FUZZ_SECONDS (default 60; 0 skips them; tests/fuzz/run.sh); between them, the
# Python tests (pytest tests/python in .venv/, which scripts/python-env.sh makes). Arguments go to ctest
# (e.g. -R store), and then the fuzzers are skipped. Works from a fresh clone on Debian 12, as
# root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# Tests and examples on, whatever configured build/ before (scripts/demo.sh turns tests off).
bash scripts/build.sh -DTRIDENT_BUILD_TESTS=ON -DTRIDENT_BUILD_EXAMPLES=ON
build=${TRIDENT_BUILD_DIR:-build}
# libfabric's tcp provider must never pick eth0: every test talks over loopback only.
export FI_TCP_IFACE=lo FI_SOCKETS_IFACE=lo
# --no-tests=error: a build without tests is a failure, not "No tests were found" and exit 0.
ctest --test-dir "$build" --no-tests=error --output-on-failure --timeout 900 \
  -j "${TRIDENT_TEST_JOBS:-1}" "$@"
# Python: trident.torch against torch's gloo (tests/python), in .venv/ (scripts/python-env.sh
# creates it and installs torch once). Skipped, like the fuzzers, when ctest got arguments.
if (($# == 0)); then
  export TRIDENT_BUILD_DIR; TRIDENT_BUILD_DIR=$(realpath "$build")
  bash scripts/python-env.sh
  .venv/bin/python -m pytest -q tests/python
fi
fuzz_seconds=${TRIDENT_FUZZ_SECONDS:-60}
if (($# == 0 && fuzz_seconds > 0)); then
  bash tests/fuzz/run.sh "$fuzz_seconds"
fi
