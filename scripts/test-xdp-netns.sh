#!/usr/bin/env bash
# End-to-end test of the kernel data plane (as root): real traffic through `turnpike` with XDP on,
# in network namespaces joined by a router (scripts/lib/netns.sh), for all four address-family
# pairs; TURN over TCP (never relayed in the kernel); expiry (the kernel stops relaying a channel
# whose allocation expired); a multi-homed relay (two addresses, two listening ports, --relay-ip on
# the second address) resizing frames at the tail (--xdp-adjust tail); then detach
# (no program stays attached after the relay exits, by SIGTERM or SIGKILL under load), and a start
# after SIGKILL attaches and relays in the kernel again; last, a full kernel channel map, whose
# overflow is counted and relayed in user space.
#
#   bash scripts/test-xdp-netns.sh [target-dir profile: debug|release]    default: debug
#
# Every wait is bounded; the namespaces are removed on any exit.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
profile=${1:-debug}
# shellcheck source=lib/netns.sh
source "$root/scripts/lib/netns.sh"
[[ $EUID -eq 0 ]] || { echo "test-xdp-netns: needs root" >&2; exit 1; }

release_flag=()
[[ $profile == release ]] && release_flag=(--release)
cargo build --quiet "${release_flag[@]}" -p turnpike -p turnpike-load --manifest-path "$root/Cargo.toml"
cargo build --quiet "${release_flag[@]}" -p turnpike-xdp-user --example xdp_pass --manifest-path "$root/Cargo.toml"
bin="$root/target/$profile"
elf=$(bash "$root/scripts/build-xdp.sh")
secret=xdp-test-$RANDOM$RANDOM
work=$(mktemp -d)
relay_pid=
passed=0
failed=0

cleanup() {
    kill $(jobs -p) 2>/dev/null || true
    wait 2>/dev/null || true
    tp_netns_down
    rm -rf "$work"
}
trap cleanup EXIT

check() {
    local name=$1
    shift
    if "$@"; then
        echo "ok: $name"
        passed=$((passed + 1))
    else
        echo "FAILED: $name"
        failed=$((failed + 1))
    fi
}

# metric SERIES: the value of the sample whose line starts with SERIES. 0 while the relay does
# not answer (polls during a start); a series missing from an answer is recorded and fails the
# run at the end, so no check compares against a 0 that only stands for a misspelt name.
metric() {
    local exposition
    exposition=$(ip netns exec "$TP_RELAY" curl -s --max-time 2 127.0.0.1:9478/metrics) || true
    awk -v key="$1" -v missing="$work/missing" -v answered="${exposition:+1}" \
        'index($0, key) == 1 { print $2; found = 1 }
         END { if (!found) { print 0; if (answered) print key >>missing } }' <<<"$exposition"
}

start_relay() {
    TURNPIKE_SECRETS=$secret ip netns exec "$TP_RELAY" "$bin/turnpike" \
        --listen "${RELAY_LISTEN:-$TP_RELAY_IP:3478,[$TP_RELAY_IP6]:3478}" \
        --allow-peers "10.100.3.0/24,fd00:100:3::/64" --relay-ports 49152-53151 \
        --default-lifetime 4 --max-lifetime 4 --drain-seconds 0 --log-level warn \
        --xdp-interface tp2-h "$@" >"$work/relay.log" 2>&1 &
    relay_pid=$!
    local i
    for i in $(seq 1 100); do
        if ip netns exec "$TP_RELAY" curl -s --max-time 1 127.0.0.1:9478/readyz 2>/dev/null | grep -q ready; then
            return 0
        fi
        kill -0 "$relay_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "the relay did not start:" >&2
    cat "$work/relay.log" >&2
    return 1
}

# kernel_round_trips LABEL PAIR SERVER PEER ALLOCATIONS: a 2-second load from the client through
# SERVER to the echo PEER; every round trip must complete unharmed and be relayed in the kernel
# both ways (PAIR, such as 4to6, names the client's and the peer's family).
kernel_round_trips() {
    local label=$1 name=$2 server=$3 peer=$4 allocations=$5
    local up="turnpike_xdp_packets_total{outcome=\"client_to_peer_$name\"}"
    local down="turnpike_xdp_packets_total{outcome=\"peer_to_client_${name:3:1}to${name:0:1}\"}"
    local csum0 csum1 up0 up1 down0 down1 summary received sent malformed
    csum0=$(($(tp_udp_csum_errors "$TP_CLIENT") + $(tp_udp_csum_errors "$TP_PEER")))
    up0=$(metric "$up")
    down0=$(metric "$down")
    summary=$(timeout 30 ip netns exec "$TP_CLIENT" "$bin/turnpike-load" run --server "$server" --peer "$peer" \
        --secret "$secret" --allocations "$allocations" --duration 2 --window 8 2>/dev/null | tail -n 1) || summary='{}'
    up1=$(metric "$up")
    down1=$(metric "$down")
    csum1=$(($(tp_udp_csum_errors "$TP_CLIENT") + $(tp_udp_csum_errors "$TP_PEER")))
    received=$(sed -n 's/.*"received":\([0-9]*\).*/\1/p' <<<"$summary")
    sent=$(sed -n 's/.*"sent":\([0-9]*\).*/\1/p' <<<"$summary")
    malformed=$(sed -n 's/.*"malformed":\([0-9]*\).*/\1/p' <<<"$summary")
    check "$label: round trips completed ($received of $sent)" test "${received:-0}" -gt 1000
    check "$label: no datagram lost or mangled" test "$((${sent:-0} - ${received:-0}))" -le "$((${sent:-1} / 100))" -a "${malformed:-1}" -eq 0
    check "$label: relayed in the kernel ($((up1 - up0)) client-to-peer, $((down1 - down0)) peer-to-client frames)" \
        test "$((up1 - up0))" -ge "${received:-1}" -a "$((down1 - down0))" -ge "${received:-1}"
    check "$label: receivers saw no checksum errors" test "$csum1" -eq "$csum0"
}

xdp_attached() {
    ip -n "$TP_RELAY" -d link show tp2-h | grep -q "prog/xdp"
}

tp_netns_up
ip netns exec "$TP_ROUTER" "$bin/examples/xdp_pass" "$elf" tp1-r tp2-r tp3-r >/dev/null &
ip netns exec "$TP_PEER" "$bin/turnpike-load" echo --listen "$TP_PEER_IP:9000" 2>/dev/null &
ip netns exec "$TP_PEER" "$bin/turnpike-load" echo --listen "[$TP_PEER_IP6]:9000" 2>/dev/null &
start_relay

# One run per family pair: client family (server address), peer family (echo peer address).
pairs=(
    "4to4 $TP_RELAY_IP:3478 $TP_PEER_IP:9000"
    "4to6 $TP_RELAY_IP:3478 [$TP_PEER_IP6]:9000"
    "6to4 [$TP_RELAY_IP6]:3478 $TP_PEER_IP:9000"
    "6to6 [$TP_RELAY_IP6]:3478 [$TP_PEER_IP6]:9000"
)
for pair in "${pairs[@]}"; do
    read -r name server peer <<<"$pair"
    kernel_round_trips "$name" "$name" "$server" "$peer" 4
done
check "auto resizing settled on the head (the veth driver leaves headroom)" \
    test "$(metric 'turnpike_xdp_adjust_mode{mode="head"}')" -eq 1 -a "$(metric 'turnpike_xdp_head_refused_total ')" -eq 0
userspace=$(metric 'turnpike_relayed_packets_total{direction="client_to_peer",path="userspace"}')
check "bound channels never reached user space ($userspace datagrams did)" test "$userspace" -eq 0

# The status page's data and the exposition, with the kernel's series in them.
status=$(ip netns exec "$TP_RELAY" curl -s --max-time 2 127.0.0.1:9478/status)
check "/status: the kernel path is on" grep -q '"kernel_path":true' <<<"$status"
check "/status: the kernel path settled on resizing at the head" grep -q '"adjust_mode":"head"' <<<"$status"
check "/status: client-to-peer packets relayed in the kernel" \
    grep -Eq '"direction":"client_to_peer","path":"kernel","packets":[1-9]' <<<"$status"
check "/status: the kernel's outcomes" grep -q '"outcomes":\[{"outcome":' <<<"$status"
lint_metrics() {
    local findings
    findings=$(ip netns exec "$TP_RELAY" curl -s --max-time 2 127.0.0.1:9478/metrics | promtool check metrics 2>&1) &&
        [[ -z "$findings" ]] || { echo "$findings" >&2; return 1; }
}
if command -v promtool >/dev/null; then
    check "promtool check metrics: no finding with the kernel's series" lint_metrics
fi

# TURN over TCP with the kernel path on: the program speaks UDP only, so it must never relay for
# a stream client; its peer's datagrams go up to user space and out on the client's connection.
for pair in "4to4 $TP_RELAY_IP:3478 $TP_PEER_IP:9000" "6to6 [$TP_RELAY_IP6]:3478 [$TP_PEER_IP6]:9000"; do
    read -r name server peer <<<"$pair"
    kernel0=$(($(metric 'turnpike_relayed_packets_total{direction="client_to_peer",path="kernel"}') +
        $(metric 'turnpike_relayed_packets_total{direction="peer_to_client",path="kernel"}')))
    user0=$(metric 'turnpike_relayed_packets_total{direction="peer_to_client",path="userspace"}')
    summary=$(timeout 30 ip netns exec "$TP_CLIENT" "$bin/turnpike-load" run --transport tcp --server "$server" \
        --peer "$peer" --secret "$secret" --allocations 2 --duration 2 --window 8 2>/dev/null | tail -n 1) || summary='{}'
    sleep 1.2
    kernel1=$(($(metric 'turnpike_relayed_packets_total{direction="client_to_peer",path="kernel"}') +
        $(metric 'turnpike_relayed_packets_total{direction="peer_to_client",path="kernel"}')))
    user1=$(metric 'turnpike_relayed_packets_total{direction="peer_to_client",path="userspace"}')
    received=$(sed -n 's/.*"received":\([0-9]*\).*/\1/p' <<<"$summary")
    check "tcp $name: round trips completed over TCP (${received:-0})" test "${received:-0}" -gt 1000
    check "tcp $name: the kernel relayed nothing for the stream client ($((kernel1 - kernel0)) frames)" test "$kernel1" -eq "$kernel0"
    check "tcp $name: peer data went through user space ($((user1 - user0)) datagrams)" test "$((user1 - user0))" -ge "${received:-1}"
done

# Expiry: allocations live 4 s; a load of 7 s that does not refresh them outlives them, so the
# kernel must stop relaying and pass the rest to user space, which has no allocation for it
# either.
relayed0=$(metric 'turnpike_relayed_packets_total{direction="client_to_peer",path="kernel"}')
missing0=$(metric 'turnpike_xdp_packets_total{outcome="no_channel"}')
timeout 30 ip netns exec "$TP_CLIENT" "$bin/turnpike-load" run --server "$TP_RELAY_IP:3478" --peer "$TP_PEER_IP:9000" \
    --secret "$secret" --allocations 2 --duration 7 --window 4 --no-refresh >/dev/null 2>&1 &
load_pid=$!
sleep 2
cached=$(metric 'turnpike_xdp_cached_channels{direction="client_to_peer"}')
check "while bound, the kernel finds the channels in its cache ($cached)" test "$cached" -ge 2
wait "$load_pid" || true
sleep 1.5
relayed1=$(metric 'turnpike_relayed_packets_total{direction="client_to_peer",path="kernel"}')
missing1=$(metric 'turnpike_xdp_packets_total{outcome="no_channel"}')
check "expiry: relayed in the kernel while alive ($((relayed1 - relayed0)) frames)" test "$((relayed1 - relayed0))" -gt 0
check "expiry: the kernel passed later ChannelData up as unbound ($((missing1 - missing0)) frames)" test "$((missing1 - missing0))" -gt 0
check "expiry: no allocation is left" test "$(metric 'turnpike_allocations ')" -eq 0
check "expiry: the kernel's caches hold no binding" test \
    "$(($(metric 'turnpike_xdp_cached_channels{direction="client_to_peer"}') + $(metric 'turnpike_xdp_cached_channels{direction="peer_to_client"}')))" -eq 0

# A multi-homed relay: a second address of each family on the relay's interface, a listening
# port on each address (3478 on every address through the wildcard listeners, as by default,
# and 3479 on the second address only), datagrams to peers relayed from
# the second address (--relay-ip), and frames resized at the tail as on drivers without
# headroom. Each pair runs against both listening addresses; every round trip must be relayed in
# the kernel, which keys each binding by the listening address and port the client wrote to and
# sends from the address the peer knows (an echo to any other address would be lost).
kill -TERM "$relay_pid"
wait "$relay_pid" 2>/dev/null || true
ip -n "$TP_RELAY" addr add 10.100.2.3/24 dev tp2-h
ip -n "$TP_RELAY" -6 addr add fd00:100:2::3/64 dev tp2-h nodad
RELAY_LISTEN="0.0.0.0:3478,10.100.2.3:3479,[::]:3478,[fd00:100:2::3]:3479" \
    start_relay --relay-ip 10.100.2.3,fd00:100:2::3 --xdp-adjust tail
check "multi-homed: the kernel path resizes at the tail" test "$(metric 'turnpike_xdp_adjust_mode{mode="tail"}')" -eq 1
for pair in "4to4 $TP_RELAY_IP:3478 $TP_PEER_IP:9000" "4to4 10.100.2.3:3478 $TP_PEER_IP:9000" \
    "4to4 10.100.2.3:3479 $TP_PEER_IP:9000" \
    "6to6 [$TP_RELAY_IP6]:3478 [$TP_PEER_IP6]:9000" "6to6 [fd00:100:2::3]:3479 [$TP_PEER_IP6]:9000" \
    "4to6 10.100.2.3:3479 [$TP_PEER_IP6]:9000" "6to4 [$TP_RELAY_IP6]:3478 $TP_PEER_IP:9000"; do
    read -r name server peer <<<"$pair"
    kernel_round_trips "multi-homed $name via $server" "$name" "$server" "$peer" 2
done

# Detach: the program goes with the process, whether it exits or is killed.
check "attached while the relay runs" xdp_attached
kill -TERM "$relay_pid"
wait "$relay_pid" 2>/dev/null || true
check "detached after SIGTERM" bash -c "! ip -n $TP_RELAY -d link show tp2-h | grep -q prog/xdp"
start_relay
check "attached again after a restart" xdp_attached
# SIGKILL under load: the kernel relays the load's channels when the process dies.
timeout 30 ip netns exec "$TP_CLIENT" "$bin/turnpike-load" run --server "$TP_RELAY_IP:3478" --peer "$TP_PEER_IP:9000" \
    --secret "$secret" --allocations 2 --duration 3 --window 8 >/dev/null 2>&1 &
load_pid=$!
for _ in $(seq 1 50); do
    [[ $(metric 'turnpike_relayed_packets_total{direction="client_to_peer",path="kernel"}') -gt 0 ]] && break
    sleep 0.1
done
check "relaying in the kernel when killed" \
    test "$(metric 'turnpike_relayed_packets_total{direction="client_to_peer",path="kernel"}')" -gt 0
kill -KILL "$relay_pid"
wait "$relay_pid" 2>/dev/null || true
sleep 0.5
check "detached after SIGKILL" bash -c "! ip -n $TP_RELAY -d link show tp2-h | grep -q prog/xdp"
wait "$load_pid" 2>/dev/null || true

# The next start after SIGKILL attaches and relays in the kernel again: nothing the killed
# process left (a link, a map, a bound port) stands in its way.
start_relay
check "attached again after SIGKILL" xdp_attached
kernel0=$(metric 'turnpike_relayed_packets_total{direction="client_to_peer",path="kernel"}')
summary=$(timeout 30 ip netns exec "$TP_CLIENT" "$bin/turnpike-load" run --server "$TP_RELAY_IP:3478" --peer "$TP_PEER_IP:9000" \
    --secret "$secret" --allocations 2 --duration 2 --window 8 2>/dev/null | tail -n 1) || summary='{}'
received=$(sed -n 's/.*"received":\([0-9]*\).*/\1/p' <<<"$summary")
sent=$(sed -n 's/.*"sent":\([0-9]*\).*/\1/p' <<<"$summary")
for _ in $(seq 1 30); do
    [[ $(($(metric 'turnpike_relayed_packets_total{direction="client_to_peer",path="kernel"}') - kernel0)) -ge ${received:-1} ]] && break
    sleep 0.1
done
kernel1=$(metric 'turnpike_relayed_packets_total{direction="client_to_peer",path="kernel"}')
check "after SIGKILL and a new start: round trips completed (${received:-0} of ${sent:-0})" \
    test "${received:-0}" -gt 1000 -a "$((${sent:-0} - ${received:-0}))" -le "$((${sent:-1} / 100))"
check "after SIGKILL and a new start: relayed in the kernel ($((kernel1 - kernel0)) frames)" \
    test "$((kernel1 - kernel0))" -ge "${received:-1}"
kill -TERM "$relay_pid"
wait "$relay_pid" 2>/dev/null || true

# A full kernel channel map. The daemon's route maps hold 65,536 bindings: 64 allocations bind
# 1,024 channels each (to peer ports nobody answers on: a binding is state, traffic or not), then
# the load's two bindings do not fit. Each is counted in turnpike_xdp_map_errors_total, and the
# load's round trips all complete through user space. Lifetimes long enough for the filling.
TURNPIKE_SECRETS=$secret ip netns exec "$TP_RELAY" "$bin/turnpike" \
    --listen "$TP_RELAY_IP:3478" --allow-peers "10.100.3.0/24" --relay-ports 49152-53151 \
    --max-channels 1024 --unauthenticated-rate 0 --drain-seconds 0 --log-level warn --xdp-interface tp2-h >"$work/relay.log" 2>&1 &
relay_pid=$!
for _ in $(seq 1 100); do
    ip netns exec "$TP_RELAY" curl -s --max-time 1 127.0.0.1:9478/readyz 2>/dev/null | grep -q ready && break
    sleep 0.1
done
timeout 600 ip netns exec "$TP_CLIENT" "$bin/turnpike-load" channels --server "$TP_RELAY_IP:3478" --secret "$secret" \
    --allocations 64 --channels 1024 --peer-ip "$TP_PEER_IP" --peer-port 10000 --hold 300 \
    >"$work/fill.json" 2>"$work/fill.log" &
fill_pid=$!
for _ in $(seq 1 3000); do
    [[ -s $work/fill.json ]] && break
    kill -0 "$fill_pid" 2>/dev/null || break
    sleep 0.1
done
# The relay threads publish four times a second.
for _ in $(seq 1 30); do
    [[ $(metric 'turnpike_channels ') -ge 65536 ]] && break
    sleep 0.1
done
channels=$(metric 'turnpike_channels ')
check "full map: 65,536 channels bound ($channels; $(cat "$work/fill.json") $(grep -m1 Error "$work/fill.log"))" \
    test "$channels" -ge 65536
check "full map: every one of them fits the kernel's maps (map errors: $(metric turnpike_xdp_map_errors_total))" \
    test "$(metric turnpike_xdp_map_errors_total)" -eq 0
user0=$(metric 'turnpike_relayed_packets_total{direction="client_to_peer",path="userspace"}')
kernel0=$(metric 'turnpike_relayed_packets_total{direction="client_to_peer",path="kernel"}')
summary=$(timeout 30 ip netns exec "$TP_CLIENT" "$bin/turnpike-load" run --server "$TP_RELAY_IP:3478" --peer "$TP_PEER_IP:9000" \
    --secret "$secret" --allocations 2 --duration 2 --window 8 2>/dev/null | tail -n 1) || summary='{}'
received=$(sed -n 's/.*"received":\([0-9]*\).*/\1/p' <<<"$summary")
sent=$(sed -n 's/.*"sent":\([0-9]*\).*/\1/p' <<<"$summary")
for _ in $(seq 1 30); do
    [[ $(($(metric 'turnpike_relayed_packets_total{direction="client_to_peer",path="userspace"}') - user0)) -ge ${received:-1} ]] && break
    sleep 0.1
done
user1=$(metric 'turnpike_relayed_packets_total{direction="client_to_peer",path="userspace"}')
kernel1=$(metric 'turnpike_relayed_packets_total{direction="client_to_peer",path="kernel"}')
errors=$(metric turnpike_xdp_map_errors_total)
check "full map: the bindings that did not fit are counted ($errors map errors)" test "$errors" -ge 2
check "full map: their round trips all completed (${received:-0} of ${sent:-0})" \
    test "${received:-0}" -gt 1000 -a "${sent:-0}" -eq "${received:-1}"
check "full map: relayed in user space ($((user1 - user0)) datagrams), not in the kernel ($((kernel1 - kernel0)))" \
    test "$((user1 - user0))" -ge "${received:-1}" -a "$kernel1" -eq "$kernel0"
kill "$fill_pid" 2>/dev/null || true
wait "$fill_pid" 2>/dev/null || true
kill -TERM "$relay_pid"
wait "$relay_pid" 2>/dev/null || true

check "every series read from /metrics was there" test ! -s "$work/missing"
[[ -s $work/missing ]] && sort -u "$work/missing" >&2
echo "xdp netns: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
