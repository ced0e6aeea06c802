#!/usr/bin/env bash
# tests/gpu/prepare.sh [BUILD_DIR [BUNDLE_DIR]]: on the development machine (no GPU needed),
# builds what the device check runs and packs it into one git-ignored folder that travels to
# the device machine (which has a GPU but not the -dev packages the build needs):
#
#   BUNDLE_DIR (default gpu-bundle/)
#     bin/<program>   wrapper scripts: run the program with the bundle's own loader and
#                     libraries, plus the device's NCCL and CUDA runtime (check.sh finds them)
#     .elf/<program>  the programs, debug info stripped
#     lib/            every library they load except NCCL, the CUDA driver and the CUDA
#                     runtime: glibc and its loader too, so that a device image with an older
#                     glibc or libstdc++ still runs them
#     lib/cudart/     the CUDA runtime they were built with, used only where the device has
#                     no libcudart of that major version
#     BUILD_INFO      commit, CUDA and NCCL versions of the build
#
# Programs: the gpu test binaries (nccl_test, host_cuda_test, ckpt_cuda_test), the GPU-aware
# unit tests (gpu_errors_test, nccl_watchdog_test), trident-run, trident-bench and
# gpu_check_worker. Knobs: JOBS (default 2), NICE (default 10), BUILD_TYPE for a fresh
# configure (default RelWithDebInfo), CMAKE_ARGS (extra configure flags, e.g. the ccache
# launchers). Then: tests/gpu/check.sh BUNDLE_DIR, here or on the device.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
bundle=${2:-$root/gpu-bundle}
jobs=${JOBS:-2}
nice_level=${NICE:-10}
programs=(nccl_test host_cuda_test ckpt_cuda_test gpu_errors_test nccl_watchdog_test
          trident-run trident-bench gpu_check_worker health_test)

if [[ ! -f $build/CMakeCache.txt ]]; then
  # shellcheck disable=SC2086
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" \
    -DTRIDENT_WITH_CUDA=ON -DTRIDENT_WITH_NCCL=ON ${CMAKE_ARGS:-}
fi
if ! grep -q 'TRIDENT_HAVE_NCCL=1' "$build/build.ninja"; then
  echo "prepare.sh: $build is configured without NCCL; reconfigure with -DTRIDENT_WITH_NCCL=ON" >&2
  exit 1
fi
nice -n "$nice_level" cmake --build "$build" -j "$jobs" --target "${programs[@]}"

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/.elf" "$bundle/lib/cudart"

# Libraries the device provides itself (NCCL, the driver) or that the bundle ships apart (the
# CUDA runtime, a fallback) are not copied into lib/.
skip_re='^(libnccl\.so|libcuda\.so|libnvidia-|libcudart\.so|linux-vdso\.so)'
loader=""
declare -A copied=()
for p in "${programs[@]}"; do
  objcopy --strip-debug "$build/bin/$p" "$bundle/.elf/$p"
  while read -r name _ path _; do
    # "libfoo.so.1 => /path (0x...)", or the loader: "/lib64/ld-linux-x86-64.so.2 (0x...)".
    if [[ $name == /* ]]; then
      loader=$name
      continue
    fi
    [[ $path == /* ]] || continue
    base=$(basename "$name")
    if [[ $base == libcudart.so* ]]; then
      cp -L "$path" "$bundle/lib/cudart/$base"
      continue
    fi
    [[ $base =~ $skip_re ]] && continue
    if [[ -z ${copied[$base]:-} ]]; then
      cp -L "$path" "$bundle/lib/$base"
      copied[$base]=1
    fi
  done < <(ldd "$build/bin/$p")
done
if [[ -z $loader ]]; then
  echo "prepare.sh: ldd named no dynamic loader" >&2
  exit 1
fi
cp -L "$loader" "$bundle/lib/$(basename "$loader")"
loader_name=$(basename "$loader")

for p in "${programs[@]}"; do
  cat >"$bundle/bin/$p" <<EOF
#!/usr/bin/env bash
# Runs $p with the bundle's loader and libraries; TRIDENT_GPU_LIBPATH (set by check.sh) puts
# the device's NCCL and CUDA runtime first.
here=\$(cd "\$(dirname "\${BASH_SOURCE[0]}")/.." && pwd)
path=\$here/lib
[[ -n \${TRIDENT_GPU_LIBPATH:-} ]] && path=\$TRIDENT_GPU_LIBPATH:\$path
exec "\$here/lib/$loader_name" --library-path "\$path" "\$here/.elf/$p" "\$@"
EOF
  chmod +x "$bundle/bin/$p"
done

{
  echo "commit $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- || echo ' (with uncommitted changes)')"
  grep -o 'trident: CUDA.*' "$build/CMakeFiles/CMakeConfigureLog.yaml" 2>/dev/null | head -1 || true
  grep -E '^(CUDAToolkit_VERSION|NCCL_VERSION)[^=]*=' "$build/CMakeCache.txt" || true
  echo "built on $(. /etc/os-release && echo "$PRETTY_NAME"), $(ldd --version | head -1)"
} >"$bundle/BUILD_INFO"

echo "prepare.sh: bundle $bundle: $(du -sh "$bundle" | cut -f1) ($(ls "$bundle/lib" | wc -l) libraries, ${#programs[@]} programs)"
echo "prepare.sh: on the device: tests/gpu/check.sh $(realpath --relative-to="$root" "$bundle" 2>/dev/null || echo "$bundle")"
