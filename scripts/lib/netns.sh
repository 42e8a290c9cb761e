# Network-namespace topology shared by the benchmark and the end-to-end tests (source it).
#
#   client (10.100.1.2, fd00:100:1::2) ─┐
#   relay  (10.100.2.2, fd00:100:2::2) ─┼─ router (.1 on each link, forwards, no NAT)
#   peer   (10.100.3.2, fd00:100:3::2) ─┘
#
# Every host reaches the others through the router, so each has exactly one next hop: what an
# XDP program that swaps MAC addresses needs. Transmit checksum offload is off on every end,
# so frames carry full checksums as they would on a real wire (see shared/toolchain.md).
# Only addresses inside these namespaces are used.

TP_PREFIX=${TP_PREFIX:-tp}
TP_CLIENT=$TP_PREFIX-client
TP_RELAY=$TP_PREFIX-relay
TP_PEER=$TP_PREFIX-peer
TP_ROUTER=$TP_PREFIX-router
TP_CLIENT_IP=10.100.1.2
TP_RELAY_IP=10.100.2.2
TP_PEER_IP=10.100.3.2
TP_CLIENT_IP6=fd00:100:1::2
TP_RELAY_IP6=fd00:100:2::2
TP_PEER_IP6=fd00:100:3::2

tp_netns_down() {
    local ns
    for ns in "$TP_CLIENT" "$TP_RELAY" "$TP_PEER" "$TP_ROUTER"; do
        ip netns del "$ns" 2>/dev/null || true
    done
}

# tp_link HOST_NS INDEX: a veth pair between HOST_NS and the router, on 10.100.INDEX.0/24.
tp_link() {
    local ns=$1 index=$2
    ip link add "tp$index-h" netns "$ns" type veth peer name "tp$index-r" netns "$TP_ROUTER"
    ip -n "$ns" addr add "10.100.$index.2/24" dev "tp$index-h"
    ip -n "$ns" -6 addr add "fd00:100:$index::2/64" dev "tp$index-h" nodad
    ip -n "$TP_ROUTER" addr add "10.100.$index.1/24" dev "tp$index-r"
    ip -n "$TP_ROUTER" -6 addr add "fd00:100:$index::1/64" dev "tp$index-r" nodad
    ip -n "$ns" link set "tp$index-h" up
    ip -n "$TP_ROUTER" link set "tp$index-r" up
    ip -n "$ns" route add default via "10.100.$index.1"
    ip -n "$ns" -6 route add default via "fd00:100:$index::1"
    ip netns exec "$ns" ethtool -K "tp$index-h" tx off >/dev/null
    ip netns exec "$TP_ROUTER" ethtool -K "tp$index-r" tx off >/dev/null
}

tp_netns_up() {
    tp_netns_down
    local ns
    for ns in "$TP_CLIENT" "$TP_RELAY" "$TP_PEER" "$TP_ROUTER"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    ip netns exec "$TP_ROUTER" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
    tp_link "$TP_CLIENT" 1
    tp_link "$TP_RELAY" 2
    tp_link "$TP_PEER" 3
    # Large socket buffers for the relays under test.
    ip netns exec "$TP_RELAY" sysctl -qw net.core.rmem_max=8388608 net.core.wmem_max=8388608 2>/dev/null || true
}

# Datagrams received by UDP sockets in namespace NS (both families), from the kernel's counters.
tp_udp_in() {
    local ns=$1 v4 v6
    v4=$(ip netns exec "$ns" awk '/^Udp: [0-9]/ { print $2 }' /proc/net/snmp)
    v6=$(ip netns exec "$ns" awk '$1 == "Udp6InDatagrams" { print $2 }' /proc/net/snmp6)
    echo $((v4 + v6))
}

# UDP checksum errors seen in namespace NS.
tp_udp_csum_errors() {
    local ns=$1 v4 v6
    v4=$(ip netns exec "$ns" awk '/^Udp: [0-9]/ { print $8 }' /proc/net/snmp)
    v6=$(ip netns exec "$ns" awk '$1 == "Udp6InCsumErrors" { print $2 }' /proc/net/snmp6)
    echo $((v4 + v6))
}

# User plus system CPU time of process PID, in clock ticks.
tp_cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}
