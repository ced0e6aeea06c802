#!/usr/bin/env bash
# Installs what building and testing Trident needs on Debian 12, skipping what is present.
# Needs root (or sudo) only when something is missing.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libabsl-dev libspdlog-dev libfmt-dev nlohmann-json3-dev libisal-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libfabric-dev libfabric-bin
  libgloo-dev libopenmpi-dev openmpi-bin  # peers that tests/perf benchmarks against
  fio  # trident-bench ckpt: the disk's sequential write bandwidth
  libopenblas-dev  # lm-trainer's matrix products
  libxxhash-dev  # health: SDC digests of replicated parameters (XXH3)
  python3
  python3-venv python3-dev  # .venv/ for the Python package and its tests (scripts/python-env.sh)
  clang libfuzzer-14-dev  # tests/fuzz: the fuzzers (libFuzzer), which scripts/test.sh runs
  libcpp-httplib-dev  # the etcd store's HTTP client (src/store/etcd_store.cc)
  etcd-server etcd-client  # tests/store/etcd_store_test, tests/multinode: a real etcd 3.4
  iproute2  # tests/multinode: network namespaces (ip netns, veth, bridge)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
