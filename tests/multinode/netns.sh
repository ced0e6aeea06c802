#!/usr/bin/env bash
# netns.sh: "hosts" for multi-node tests, as Linux network namespaces on one machine.
#
#   netns.sh check                 exit 0 if namespaces, veth pairs and bridges can be made here;
#                                  else print why and exit 77 (ctest's skip code)
#   netns.sh up PREFIX N [NET]     N hosts PREFIXh0..PREFIXh{N-1}, each with lo up and one
#                                  interface "tr0" holding 10.NET.0.(i+1)/24 (NET: 0-255,
#                                  default from the PREFIX), joined by a bridge that lives in its
#                                  own namespace PREFIXsw (nothing is added to the root namespace:
#                                  no interface, no address, no route)
#   netns.sh down PREFIX           deletes every namespace PREFIX made (idempotent)
#   netns.sh addr PREFIX I [NET]   prints host I's address
#   netns.sh exec PREFIX I CMD...  runs CMD in host I
#
# PREFIX must be unique per run (e.g. "tm$$"): down deletes only namespaces named PREFIXh<i> or
# PREFIXsw, so it never touches anything another run or the machine made. Interface names
# inside a namespace are private to it. Needs root (CI is root). `up` undoes what it made when a
# step fails. Namespace names are at most 15 characters: keep PREFIX to 10.
set -euo pipefail

die() { echo "netns.sh: $*" >&2; exit 1; }

net_of() {  # a stable number 1..250 from the prefix, so parallel runs use different subnets
  local sum
  sum=$(printf '%s' "$1" | cksum | cut -d' ' -f1)
  echo $((sum % 250 + 1))
}

cmd_check() {
  if [[ $(id -u) -ne 0 ]]; then echo "netns.sh: needs root to make network namespaces"; exit 77; fi
  command -v ip >/dev/null || { echo "netns.sh: no 'ip' (iproute2)"; exit 77; }
  local probe="trchk$$"
  if ! ip netns add "$probe" 2>/tmp/netns-check.$$; then
    echo "netns.sh: 'ip netns add' fails here: $(cat /tmp/netns-check.$$)"; rm -f /tmp/netns-check.$$
    exit 77
  fi
  rm -f /tmp/netns-check.$$
  local ok=1
  ip -n "$probe" link add tra type veth peer name trb 2>/dev/null || ok=0
  ip -n "$probe" link add trbr type bridge 2>/dev/null || ok=0
  ip netns del "$probe"
  if ((ok == 0)); then echo "netns.sh: cannot make veth pairs or bridges here"; exit 77; fi
  exit 0
}

cmd_down() {
  local prefix=$1
  [[ -n $prefix ]] || die "down needs a PREFIX"
  local ns
  for ns in $(ip netns list | awk '{print $1}'); do
    if [[ $ns == "${prefix}sw" || $ns =~ ^${prefix}h[0-9]+$ ]]; then
      # Processes left in it (a test that failed) go first, so the namespace really goes.
      local pids
      pids=$(ip netns pids "$ns" 2>/dev/null || true)
      [[ -z $pids ]] || kill -9 $pids 2>/dev/null || true
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
}

cmd_up() {
  local prefix=$1 n=$2 net=${3:-}
  [[ -n $prefix && $n =~ ^[0-9]+$ && $n -ge 1 && $n -le 200 ]] || die "up needs PREFIX and N (1..200)"
  ((${#prefix} <= 10)) || die "PREFIX '$prefix' is over 10 characters"
  [[ -n $net ]] || net=$(net_of "$prefix")
  # Undo on any failure: nothing half-made is left.
  trap 'cmd_down "$prefix"' ERR
  local sw="${prefix}sw"
  ip netns add "$sw"
  ip -n "$sw" link set lo up
  ip -n "$sw" link add trbr type bridge
  ip -n "$sw" link set trbr up
  local i
  for ((i = 0; i < n; i++)); do
    local h="${prefix}h$i"
    ip netns add "$h"
    ip -n "$h" link set lo up
    # The pair is made inside the switch namespace, then one end moves into the host.
    ip -n "$sw" link add "p$i" type veth peer name tr0 netns "$h"
    ip -n "$sw" link set "p$i" master trbr
    ip -n "$sw" link set "p$i" up
    ip -n "$h" addr add "10.$net.0.$((i + 1))/24" dev tr0
    ip -n "$h" link set tr0 up
  done
  trap - ERR
}

case ${1:-} in
  check) cmd_check ;;
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  addr) echo "10.${4:-$(net_of "$2")}.0.$(($3 + 1))" ;;
  exec) shift; prefix=$1 i=$2; shift 2; exec ip netns exec "${prefix}h$i" "$@" ;;
  *) die "usage: netns.sh check | up PREFIX N [NET] | down PREFIX | addr PREFIX I [NET] | exec PREFIX I CMD..." ;;
esac
