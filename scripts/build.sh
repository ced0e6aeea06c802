#!/usr/bin/env bash
# Configures and builds Trident into build/ (or $TRIDENT_BUILD_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${TRIDENT_BUILD_DIR:-build}
jobs=${TRIDENT_JOBS:-$(nproc)}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE:-RelWithDebInfo} "$@"
cmake --build "$build" -j "$jobs"
