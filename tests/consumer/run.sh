#!/usr/bin/env bash
# Installs the build into a temporary prefix and builds and runs the consumer project
# against it: find_package(trident CONFIG REQUIRED) + trident::trident must just work.
set -euo pipefail
build=$1
src=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" > "$tmp/install.log"
cmake -S "$src" -B "$tmp/build" -G Ninja -DCMAKE_PREFIX_PATH="$tmp/prefix" > "$tmp/configure.log" \
  || { cat "$tmp/configure.log"; exit 1; }
cmake --build "$tmp/build" > "$tmp/build.log" || { cat "$tmp/build.log"; exit 1; }
"$tmp/build/consumer"
# The example trainer, as its own project against the installed package: public headers only.
cmake -S "$src/../../examples" -B "$tmp/examples" -G Ninja -DCMAKE_PREFIX_PATH="$tmp/prefix" \
  > "$tmp/examples-configure.log" || { cat "$tmp/examples-configure.log"; exit 1; }
cmake --build "$tmp/examples" > "$tmp/examples-build.log" || { cat "$tmp/examples-build.log"; exit 1; }
"$tmp/examples/lm-trainer" --steps 2 --eval-every 1 --layers 1 --ffn 32 --val-samples 64
