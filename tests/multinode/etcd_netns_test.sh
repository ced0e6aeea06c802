#!/usr/bin/env bash
# multinode_etcd_test: three "hosts" as network namespaces (tests/multinode/netns.sh), etcd in
# h0, and the store used from h1 and h2 across the bridge:
#   1. rendezvous: both hosts take an arrival number and meet (Add, Set, Wait by watch);
#   2. liveness: h1 holds a leased key; when its process is SIGKILLed (the host "dies") the key
#      goes after the lease's ttl, as h2 sees;
#   3. a 2-host allreduce --check (trident-bench, libfabric tcp bound to each namespace's veth,
#      FI_TCP_IFACE=tr0) with the communicator's store at the etcd URL.
# Nothing binds outside the namespaces. Exits 77 (skip) with the reason when namespaces or etcd
# are not available. Cleans up (processes, namespaces, etcd data) on every exit.
#
# usage: etcd_netns_test.sh BIN_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:?usage: etcd_netns_test.sh BIN_DIR}
netns=$here/netns.sh

if ! reason=$(bash "$netns" check); then echo "SKIP: $reason"; exit 77; fi
etcd=$(command -v etcd || true)
if [[ -z $etcd ]]; then echo "SKIP: no etcd binary (Debian's etcd-server: scripts/install-deps.sh)"; exit 77; fi
for tool in multinode_store_meet trident-bench; do
  [[ -x $bin/$tool ]] || { echo "FAIL: $bin/$tool is not built"; exit 1; }
done

prefix="tm$$"
data=$(mktemp -d "${TMPDIR:-/tmp}/trident-mn-XXXXXX")
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  bash "$netns" down "$prefix"
  rm -rf "$data"
}
trap cleanup EXIT
trap "exit 1" INT TERM  # so that EXIT runs cleanup on ctest's timeout too

bash "$netns" up "$prefix" 3
# In host i. netns.sh execs the command, so a background one's $! is the command itself.
in_host() { local i=$1; shift; bash "$netns" exec "$prefix" "$i" "$@"; }
etcd_ip=$(bash "$netns" addr "$prefix" 0)

# etcd in h0: clients on its veth address, peers on h0's own loopback (private to h0).
bash "$netns" exec "$prefix" 0 "$etcd" --name m0 --data-dir "$data/m0.etcd" \
  --listen-client-urls "http://$etcd_ip:2379" --advertise-client-urls "http://$etcd_ip:2379" \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster m0=http://127.0.0.1:2380 --log-level warn --logger zap \
  >"$data/etcd.log" 2>&1 &
pids+=($!)
url="etcd://$etcd_ip:2379/job$$"
if ! in_host 1 "$bin/multinode_store_meet" ping "$url" 20; then
  echo "FAIL: etcd in h0 not reachable from h1"; cat "$data/etcd.log"; exit 1
fi
echo "== 1. rendezvous of h1 and h2 through etcd in h0"
bash "$netns" exec "$prefix" 1 "$bin/multinode_store_meet" meet "$url" h1 2 >"$data/meet1" 2>&1 &
m1=$!
bash "$netns" exec "$prefix" 2 "$bin/multinode_store_meet" meet "$url" h2 2 >"$data/meet2" 2>&1 &
m2=$!
wait "$m1" || { echo "FAIL: h1's meet"; cat "$data/meet1"; exit 1; }
wait "$m2" || { echo "FAIL: h2's meet"; cat "$data/meet2"; exit 1; }
cat "$data/meet1" "$data/meet2"
for f in meet1 meet2; do
  grep -Eq '^meet: (h1 h2|h2 h1)$' "$data/$f" || { echo "FAIL: $f: $(cat "$data/$f")"; exit 1; }
done
cmp -s "$data/meet1" "$data/meet2" || { echo "FAIL: the hosts saw different arrival orders"; exit 1; }

echo "== 2. a leased key goes when its host dies"
bash "$netns" exec "$prefix" 1 "$bin/multinode_store_meet" live "$url" alive/h1 2 >"$data/live" 2>&1 &
live=$!
pids+=($live)
in_host 2 "$bin/multinode_store_meet" get "$url" alive/h1 20 || { cat "$data/live"; exit 1; }
start=$(date +%s%N)
# SIGKILL every process in h1 (the host's death), and check the key is gone within ttl + 3 s.
kill -9 $(ip netns pids "${prefix}h1")
wait "$live" 2>/dev/null || true
out=$(in_host 2 "$bin/multinode_store_meet" gone "$url" alive/h1 5) || { echo "FAIL: $out"; exit 1; }
echo "alive/h1 $out (lease ttl 2 s, measured from the kill: $((($(date +%s%N) - start) / 1000000)) ms)"

echo "== 3. allreduce --check across h1 and h2, store at $url"
bench_url="etcd://$etcd_ip:2379/bench$$"
for r in 0 1; do
  bash "$netns" exec "$prefix" $((r + 1)) env TRIDENT_RANK=$r TRIDENT_WORLD_SIZE=2 TRIDENT_STORE="$bench_url" \
    TRIDENT_FABRIC_PROVIDER=tcp TRIDENT_FABRIC_IFACE=tr0 FI_TCP_IFACE=tr0 FI_SOCKETS_IFACE=tr0 \
    "$bin/trident-bench" allreduce --check --min-bytes 4096 --max-bytes 4194304 --iters 5 \
    --warmup 1 --timeout 60s >"$data/bench$r" 2>&1 &
  eval "b$r=\$!"
  pids+=($!)
done
ok=1
wait "$b0" || ok=0
wait "$b1" || ok=0
cat "$data/bench0"
if ((ok == 0)); then echo "FAIL: allreduce across namespaces"; cat "$data/bench1"; exit 1; fi
# Every row has #wrong 0.
rows=$(grep -Ec '^ +[0-9]+ ' "$data/bench0" || true)
bad=$(grep -E '^ +[0-9]+ ' "$data/bench0" | awk '$NF != "0"' | wc -l)
if ((rows == 0 || bad != 0)); then echo "FAIL: $rows rows, $bad with wrong elements"; exit 1; fi
echo "PASS: rendezvous, lease expiry and a checked allreduce across namespaces ($rows sizes)"
