#!/usr/bin/env bash
# Side-by-side benchmark of Turnpike and coturn on a network-namespace topology (as root):
#
#   bash scripts/bench.sh [SECONDS]        default 5 seconds per run
#
# Both relays run in the relay namespace with the same load from the client namespace, relaying
# to echo peers in the peer namespace, alternately, in one sitting. Relayed packets are counted
# where they arrive (the kernel's UDP counters in the client and peer namespaces), not by the
# load generator; relay CPU is read from /proc/PID/stat. Prints a Markdown table with the
# Turnpike/coturn ratios; the caller copies it into docs/benchmarks.md.
#
# Three relays per case: Turnpike's user-space path, Turnpike with its XDP data plane on the relay's
# interface, and coturn. The router-side veth ends run the XDP_PASS program during the XDP runs only
# (XDP_TX on a veth needs it). It is not free for the others: an XDP program puts a veth into NAPI
# mode, which cost both user-space relays about 10 % of their packets per second (3-30 % over
# A/B runs here) and about 10 % more CPU per packet, and its polls run in whichever task next
# re-enables softirqs on that CPU, so the router's forwarding of one sender's datagrams can be
# charged to another process. Without it, each veth transmit is handled in the sender's own
# context (the sender pays for the router and the delivery to the receiving socket, for every
# relay alike). Softirq time is read system-wide from /proc/stat: XDP work is accounted there,
# not to the relay process.
#
# CPU per packet: utime + stime of the relay process (all its threads) from /proc/PID/stat, for
# every relay alike. Its absolute level depends on the machine more than on the relays: the
# relays spend most of their time in the kernel, and on 2026-11-24 this VM's kernel ran with the
# SRSO mitigation "Safe RET" (every return from a kernel function mispredicted); both relays then
# measured about three times their CPU per packet of 2026-12-05, when the VM reported "Vulnerable:
# Microcode, no safe RET" (coturn 8 µs against 2.4-2.8 µs). The run prints that mitigation state
# and the load average it started with; compare only runs made alike.
#
# Environment: BENCH_PAYLOADS (default "100 1200"), BENCH_ALLOCATIONS (default "1 16 64"),
# TP_PREFIX (default tp: the namespaces' names, see scripts/lib/netns.sh; another prefix keeps a
# run clear of other users of the machine), BENCH_SERVERS (default "turnpike turnpike-xdp
# coturn"; also turnpike-xdp-tail: the kernel path resizing frames at the tail, as on drivers
# without headroom; turnpike-xdp resizes at the head), BENCH_TRANSPORT (udp, tcp or tls; default udp): how clients reach the relay, the
# relayed leg being UDP in every case. Over TCP and
# TLS both relays get the same throwaway certificate, coturn its TCP and TLS listeners on (and
# nothing else changed from its fastest setup), and the kernel data plane is left out (it relays
# UDP clients only). There the client side is a byte stream, so relayed packets are counted as the
# peer's UDP datagrams received plus the round trips the load generator completed (each one a
# datagram relayed back to the client).
set -euo pipefail

seconds=${1:-5}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib/netns.sh
source "$root/scripts/lib/netns.sh"
[[ $EUID -eq 0 ]] || { echo "bench: needs root (network namespaces)" >&2; exit 1; }
command -v turnserver >/dev/null || { echo "bench: coturn missing; run scripts/setup.sh" >&2; exit 1; }

cargo build --release --quiet -p turnpike -p turnpike-load --manifest-path "$root/Cargo.toml"
cargo build --release --quiet -p turnpike-xdp-user --example xdp_pass --manifest-path "$root/Cargo.toml"
elf=$(bash "$root/scripts/build-xdp.sh")
turnpike="$root/target/release/turnpike"
load="$root/target/release/turnpike-load"
secret=bench-secret-$RANDOM$RANDOM
transport=${BENCH_TRANSPORT:-udp}
case $transport in
    udp | tcp | tls) ;;
    *) echo "bench: BENCH_TRANSPORT must be udp, tcp or tls" >&2; exit 1 ;;
esac
work=$(mktemp -d)
pids=()

cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    tp_netns_down
    rm -rf "$work"
}
trap cleanup EXIT

tp_netns_up
ip netns exec "$TP_PEER" "$load" echo --listen "$TP_PEER_IP:9000" --threads 1 2>/dev/null &
pids+=($!)

# The port clients connect to, and the relays' stream settings.
server_port=3478
turnpike_streams=(--listen-tcp "$TP_RELAY_IP:3478")
coturn_streams="no-tcp
no-tls"
if [[ $transport == tls ]]; then
    server_port=5349
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -keyout "$work/key.pem" -out "$work/cert.pem" -subj /CN=bench >/dev/null 2>&1
    turnpike_streams+=(--listen-tls "$TP_RELAY_IP:5349" --tls-cert "$work/cert.pem" --tls-key "$work/key.pem")
    coturn_streams="tls-listening-port=5349
cert=$work/cert.pem
pkey=$work/key.pem"
elif [[ $transport == tcp ]]; then
    coturn_streams="no-tls"
fi

start_turnpike() {
    TURNPIKE_SECRETS=$secret ip netns exec "$TP_RELAY" "$turnpike" "${turnpike_streams[@]}" \
        --listen "$TP_RELAY_IP:3478" --allow-peers 10.100.3.0/24 --relay-ports 49152-65535 \
        --admin-listen 127.0.0.1:9478 --log-level warn --drain-seconds 0 "$@" >"$work/relay.log" 2>&1 &
    echo $!
}

start_coturn() {
    # coturn's fastest setup (its manual, turnserver(1), and its performance notes): one relay
    # thread per CPU (its default, stated here so that it matches Turnpike's one thread per CPU
    # even where coturn would count configured rather than online CPUs), no DTLS, no CLI, no
    # database (REST API credentials from static-auth-secret, like Turnpike's; until 2026-12-05 an
    # SQLite userdb was configured as well, which changed nothing measurable), TCP and TLS only
    # when the run is about them, log lines (start-up and one per session, about 2 KB a run) to a
    # file and not to stdout. The Debian build, 4.6.1, has no batched I/O to turn on: it imports
    # recvmsg, recvfrom and sendto but no recvmmsg or sendmmsg (recvmmsg arrived in coturn 4.10),
    # so it reads up to 16 datagrams per readiness event one system call each and sends each with
    # its own sendto.
    cat >"$work/turnserver.conf" <<EOF
listening-ip=$TP_RELAY_IP
relay-ip=$TP_RELAY_IP
listening-port=3478
min-port=49152
max-port=65535
realm=bench
use-auth-secret
static-auth-secret=$secret
allowed-peer-ip=10.100.3.0-10.100.3.255
relay-threads=$(nproc)
$coturn_streams
no-dtls
no-tcp-relay
no-cli
no-software-attribute
no-stdout-log
log-file=$work/coturn.log
simple-log
pidfile=$work/coturn.pid
EOF
    ip netns exec "$TP_RELAY" turnserver -c "$work/turnserver.conf" >/dev/null 2>&1 &
    echo $!
}

wait_for_port() {
    local i
    for i in $(seq 1 200); do
        # Filtered by ss itself: piping 16,000 sockets into `grep -q` ends in SIGPIPE.
        if [[ -n $(ip netns exec "$TP_RELAY" ss -Hnlu "( sport = :3478 )") ]] &&
            { [[ $transport == udp ]] || [[ -n $(ip netns exec "$TP_RELAY" ss -Hnlt "( sport = :$server_port )") ]]; }; then
            return 0
        fi
        sleep 0.1
    done
    echo "bench: the relay did not start; log:" >&2
    cat "$work"/*.log >&2 || true
    return 1
}

# System-wide softirq time in clock ticks.
softirq_ticks() {
    awk '$1 == "cpu" { print $8 }' /proc/stat
}

# measure NAME PID ALLOCATIONS PAYLOAD: prints one result line.
measure() {
    local name=$1 pid=$2 allocations=$3 payload=$4
    local hz client0 peer0 cpu0 soft0 client1 peer1 cpu1 soft1 relayed cpu_seconds soft_seconds summary
    hz=$(getconf CLK_TCK)
    client0=$(tp_udp_in "$TP_CLIENT"); peer0=$(tp_udp_in "$TP_PEER"); cpu0=$(tp_cpu_ticks "$pid"); soft0=$(softirq_ticks)
    summary=$(ip netns exec "$TP_CLIENT" "$load" run --server "$TP_RELAY_IP:$server_port" --peer "$TP_PEER_IP:9000" \
        --secret "$secret" --allocations "$allocations" --payload "$payload" --duration "$seconds" \
        --window 32 --transport "$transport" 2>"$work/load.log" | tail -n 1) || { cat "$work/load.log" >&2; return 1; }
    client1=$(tp_udp_in "$TP_CLIENT"); peer1=$(tp_udp_in "$TP_PEER"); cpu1=$(tp_cpu_ticks "$pid"); soft1=$(softirq_ticks)
    if [[ $transport == udp ]]; then
        relayed=$(( (client1 - client0) + (peer1 - peer0) ))
    else
        relayed=$(( (peer1 - peer0) + $(sed -n 's/.*"received":\([0-9]*\).*/\1/p' <<<"$summary") ))
    fi
    cpu_seconds=$(awk -v t=$((cpu1 - cpu0)) -v hz="$hz" 'BEGIN { printf "%.3f", t / hz }')
    soft_seconds=$(awk -v t=$((soft1 - soft0)) -v hz="$hz" 'BEGIN { printf "%.3f", t / hz }')
    local p99
    p99=$(sed -n 's/.*"rtt_micros_p99":\([0-9]*\).*/\1/p' <<<"$summary")
    awk -v name="$name" -v a="$allocations" -v p="$payload" -v r="$relayed" -v s="$seconds" -v c="$cpu_seconds" -v q="$soft_seconds" -v p99="$p99" \
        'BEGIN { pps = r / s; us = (r > 0) ? c * 1e6 / r : 0; sq = (r > 0) ? q * 1e6 / r : 0; printf "%s %d %d %.0f %.3f %s %.3f\n", name, a, p, pps, us, p99, sq }'
}

results="$work/results"
: >"$results"
started_load=$(cut -d' ' -f1-3 /proc/loadavg)
srso=$(cat /sys/devices/system/cpu/vulnerabilities/spec_rstack_overflow 2>/dev/null || echo unknown)
for payload in ${BENCH_PAYLOADS:-100 1200}; do
    for allocations in ${BENCH_ALLOCATIONS:-1 16 64}; do
        default_servers="turnpike turnpike-xdp coturn"
        [[ $transport == udp ]] || default_servers="turnpike coturn"
        for server in ${BENCH_SERVERS:-$default_servers}; do
            pass_pid=
            if [[ $server == turnpike-xdp* ]]; then
                ip netns exec "$TP_ROUTER" "$root/target/release/examples/xdp_pass" "$elf" tp1-r tp2-r tp3-r >/dev/null &
                pass_pid=$!
                pids+=("$pass_pid")
                sleep 0.5
            fi
            case $server in
                turnpike) pid=$(start_turnpike) ;;
                turnpike-xdp) pid=$(start_turnpike --xdp-interface tp2-h --xdp-adjust head) ;;
                turnpike-xdp-tail) pid=$(start_turnpike --xdp-interface tp2-h --xdp-adjust tail) ;;
                coturn) pid=$(start_coturn) ;;
            esac
            pids+=("$pid")
            wait_for_port
            sleep 0.5
            measure "$server" "$pid" "$allocations" "$payload" | tee -a "$results" >&2
            kill "$pid"; wait "$pid" 2>/dev/null || true
            if [[ -n $pass_pid ]]; then kill "$pass_pid"; wait "$pass_pid" 2>/dev/null || true; fi
            sleep 0.5
        done
    done
done

echo
echo "Transport: $transport. Load average at the start: $started_load. SRSO: $srso."
echo "| payload (B) | allocations | relay | relayed pkt/s | × coturn | × Turnpike user space | relay CPU µs/pkt | × coturn | softirq µs/pkt (system) | rtt p99 µs |"
echo "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
awk '
    { key = $3 " " $2; pps[key, $1] = $4; cpu[key, $1] = $5; p99[key, $1] = $6; soft[key, $1] = $7
      if (!(key in seen)) { seen[key] = 1; order[++n] = key }
      if (!(($1) in named)) { named[$1] = 1; names[++m] = $1 } }
    END {
        for (i = 1; i <= n; i++) {
            key = order[i]; split(key, part, " ")
            for (j = 1; j <= m; j++) {
                name = names[j]
                if (!((key, name) in pps)) continue
                cp = pps[key, "coturn"]; tp = pps[key, "turnpike"]; cc = cpu[key, "coturn"]
                printf "| %s | %s | %s | %.0f | %s | %s | %.2f | %s | %.2f | %s |\n", part[1], part[2], name, pps[key, name],
                    (cp > 0 ? sprintf("%.2f", pps[key, name] / cp) : "-"),
                    (tp > 0 ? sprintf("%.2f", pps[key, name] / tp) : "-"),
                    cpu[key, name], (cc > 0 ? sprintf("%.2f", cpu[key, name] / cc) : "-"), soft[key, name], p99[key, name]
            }
        }
    }' "$results"
