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
"$tmp/build/consumer_shared"
# libtrident.so exports Trident's own symbols only (src/libtrident.map): no instantiation of
# std, Abseil, json or fmt templates that a host's own copies could be mixed up with.
so=$(ls "$tmp"/prefix/lib*/libtrident.so)
foreign=$(nm -D --defined-only -C "$so" | cut -d' ' -f3- | grep -vE \
  '^(trident|(typeinfo|typeinfo name|vtable|VTT) for trident::|(non-)?virtual thunk to trident::)' \
  || true)
[[ -z $foreign ]] || { echo "libtrident.so exports what is not Trident's:"; head -20 <<<"$foreign"; exit 1; }
# pkg-config: the C API example of docs/c_api.md, compiled as C99 against libtrident.so.
export PKG_CONFIG_PATH="$tmp/prefix/$(cd "$tmp/prefix" && ls -d lib*/pkgconfig | head -1 | xargs dirname)/pkgconfig"
awk '/^```c$/ {n++; on = (n == 1); next} /^```$/ {on = 0} on' "$src/../../docs/c_api.md" > "$tmp/capi_example.c"
# shellcheck disable=SC2046
cc -std=c99 -Wall -Wextra -Werror "$tmp/capi_example.c" -o "$tmp/capi_example" \
  $(pkg-config --cflags --libs trident) || { echo "pkg-config trident: $(pkg-config --cflags --libs trident)"; exit 1; }
LD_LIBRARY_PATH="$(pkg-config --variable=libdir trident)" "$tmp/capi_example"
# The example trainer, as its own project against the installed package: public headers only.
cmake -S "$src/../../examples" -B "$tmp/examples" -G Ninja -DCMAKE_PREFIX_PATH="$tmp/prefix" \
  > "$tmp/examples-configure.log" || { cat "$tmp/examples-configure.log"; exit 1; }
cmake --build "$tmp/examples" > "$tmp/examples-build.log" || { cat "$tmp/examples-build.log"; exit 1; }
"$tmp/examples/lm-trainer" --steps 2 --eval-every 1 --layers 1 --ffn 32 --val-samples 64
# The README's resilient-loop example compiles and links against the installed package as
# written (its Gradient() is the reader's model: a stub here).
readme="$src/../../README.md"
{ echo '#include <vector>'
  echo 'static std::vector<float> Gradient(long, int) { return std::vector<float>(16, 1.0f); }'
  awk '/^```cpp$/ {n++; on = (n == 2); next} /^```$/ {on = 0} on' "$readme"; } > "$tmp/readme_sgd.cc"
mkdir -p "$tmp/readme"
cat > "$tmp/readme/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.25)
project(readme_sgd LANGUAGES CXX)
find_package(trident CONFIG REQUIRED)
add_executable(readme_sgd $tmp/readme_sgd.cc)
target_link_libraries(readme_sgd PRIVATE trident::trident)
CMAKE
cmake -S "$tmp/readme" -B "$tmp/readme/build" -G Ninja -DCMAKE_PREFIX_PATH="$tmp/prefix" \
  > "$tmp/readme-configure.log" || { cat "$tmp/readme-configure.log"; exit 1; }
cmake --build "$tmp/readme/build" > "$tmp/readme-build.log" || { cat "$tmp/readme-build.log"; exit 1; }
echo "install test: the example trainer and the README's example build against the package"
