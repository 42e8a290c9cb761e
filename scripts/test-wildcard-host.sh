#!/usr/bin/env bash
# A relay on wildcard listeners, as root, in a network namespace of its own whose interface holds
# two public-looking addresses per family:
# - it must not relay to the host's other addresses: the relay advertises the first; a peer on
#   the second (a UDP service of the same host) is refused with 403, unless the operator allows
#   that address explicitly, after which traffic flows;
# - answers leave from the address each client wrote to, and --relay-ip moves the relayed
#   sockets to another address;
# - with the default port range and both families on wildcard listeners, it starts under an
#   open-file hard limit of 20,000 (one dual-stack socket per relayed port) with every port
#   bound, and relays in all four family pairs through those sockets.
#
#   bash scripts/test-wildcard-host.sh [target-dir profile: debug|release]    default: debug
#
# Every wait is bounded; the namespace is removed on any exit.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
profile=${1:-debug}
[[ $EUID -eq 0 ]] || { echo "test-wildcard-host: needs root" >&2; exit 1; }
release_flag=()
[[ $profile == release ]] && release_flag=(--release)
cargo build --quiet "${release_flag[@]}" -p turnpike -p turnpike-load --manifest-path "$root/Cargo.toml"
bin="$root/target/$profile"
ns=tp-hosts-$$
secret=hosts-$RANDOM$RANDOM
work=$(mktemp -d)
pids=()
failed=0

cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Addresses of 11.0.0.0/8: public, so no built-in denial hides the effect; isolated in the
# namespace, so nothing leaves the machine.
ip netns add "$ns"
ip -n "$ns" link set lo up
# A veth pair inside the namespace stands in for its network interface (the kernel has no
# dummy device here).
ip -n "$ns" link add h0 type veth peer name h1
ip -n "$ns" addr add 11.0.0.1/32 dev h0
ip -n "$ns" addr add 11.0.0.2/32 dev h0
ip -n "$ns" -6 addr add 2a00:1::1/128 dev h0 nodad
ip -n "$ns" -6 addr add 2a00:1::2/128 dev h0 nodad
ip -n "$ns" link set h1 up
ip -n "$ns" link set h0 up
ip netns exec "$ns" "$bin/turnpike-load" echo --listen 11.0.0.2:9000 2>/dev/null &
pids+=($!)
ip netns exec "$ns" "$bin/turnpike-load" echo --listen "[2a00:1::2]:9000" 2>/dev/null &
pids+=($!)

start_relay() {
    TURNPIKE_SECRETS=$secret ip netns exec "$ns" "${limit[@]}" "$bin/turnpike" --listen 0.0.0.0:3478 \
        --drain-seconds 0 --log-level warn "$@" >"$work/relay.log" 2>&1 &
    relay=$!
    pids+=("$relay")
    local i
    for i in $(seq 1 100); do
        ip netns exec "$ns" curl -s --max-time 1 127.0.0.1:9478/readyz 2>/dev/null | grep -q ready && return 0
        kill -0 "$relay" 2>/dev/null || break
        sleep 0.1
    done
    cat "$work/relay.log" >&2
    return 1
}

limit=()

# load [SERVER BIND PEER]: one allocation relaying for a second.
load() {
    local server=${1:-11.0.0.1:3478} bind=${2:-11.0.0.1} peer=${3:-11.0.0.2:9000}
    timeout 30 ip netns exec "$ns" "$bin/turnpike-load" run --server "$server" --bind "$bind" \
        --peer "$peer" --secret "$secret" --allocations 1 --duration 1 >"$work/load.log" 2>&1
}

metric() {
    ip netns exec "$ns" curl -s --max-time 2 127.0.0.1:9478/metrics |
        awk -v key="$1" 'index($0, key) == 1 { print $2; found = 1 } END { if (!found) print "missing" }'
}

check() {
    local name=$1
    shift
    if "$@"; then echo "ok: $name"; else echo "FAILED: $name"; cat "$work/load.log" >&2; failed=1; fi
}

start_relay --public-ipv4 11.0.0.1 --relay-ports 50000-50099
if load; then
    echo "FAILED: the relay bound a channel to another address of its host"
    failed=1
else
    check "a peer on the host's second address is refused with 403" grep -q "403" "$work/load.log"
fi
kill "$relay"; wait "$relay" 2>/dev/null || true

start_relay --public-ipv4 11.0.0.1 --relay-ports 50000-50099 --allow-peers 11.0.0.2/32
check "allowed explicitly, the same peer relays" load
# A client that writes to the host's second address gets its answers from that address (the
# load client ignores datagrams from any other source).
check "answers leave from the address the client wrote to" load 11.0.0.2:3478 11.0.0.1 11.0.0.2:9000
kill "$relay"; wait "$relay" 2>/dev/null || true

# --relay-ip: relayed sockets on the second address, which is then what is advertised.
start_relay --relay-ip 11.0.0.2 --relay-ports 50000-50099 --allow-peers 11.0.0.2/32
check "relay-ip: relays through the second address" load 11.0.0.1:3478 11.0.0.1 11.0.0.2:9000
check "relay-ip: the relayed address is the second address" grep -q "first relayed address 11.0.0.2:" "$work/load.log"
check "relay-ip: relayed ports are bound there only" \
    bash -c "ip netns exec $ns ss -Hnlu 'sport = :50000' | grep -q '11.0.0.2:50000'"
kill "$relay"; wait "$relay" 2>/dev/null || true

# The defaults (ports 49152-65535 on both families' wildcard addresses) under 20,000 descriptors.
limit=(prlimit --nofile=20000:20000)
if start_relay --listen "0.0.0.0:3478,[::]:3478" --public-ipv4 11.0.0.1 --public-ipv6 2a00:1::1 \
    --allow-peers 11.0.0.2/32,2a00:1::2/128; then
    check "the default port range starts under a 20,000-descriptor limit with every port bound" \
        test "$(metric 'turnpike_excluded_ports ')" = 0
    for pair in "4to4 11.0.0.1:3478 11.0.0.1 11.0.0.2:9000" "4to6 11.0.0.1:3478 11.0.0.1 [2a00:1::2]:9000" \
        "6to4 [2a00:1::1]:3478 2a00:1::1 11.0.0.2:9000" "6to6 [2a00:1::1]:3478 2a00:1::1 [2a00:1::2]:9000"; do
        read -r name server bind peer <<<"$pair"
        check "$name through one dual-stack socket per port" load "$server" "$bind" "$peer"
    done
    check "IPv6: answers leave from the address the client wrote to" \
        load "[2a00:1::2]:3478" 2a00:1::1 "[2a00:1::2]:9000"
    kill "$relay"; wait "$relay" 2>/dev/null || true
else
    echo "FAILED: the defaults did not start under a 20,000-descriptor limit"
    failed=1
fi

[[ $failed -eq 0 ]] && echo "wildcard host: passed"
exit "$failed"
