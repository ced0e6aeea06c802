#!/usr/bin/env bash
# Now `trident-bench recovery` (see its --help): tests/perf/recovery_bench.sh BUILD_DIR [RUNS=20] [FLAGS...]
exec "${1:?usage: $0 BUILD_DIR [RUNS=20] [trident-bench recovery flags]}/bin/trident-bench" recovery --runs "${2:-20}" "${@:3}"
