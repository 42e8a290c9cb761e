#!/usr/bin/env bash
# Soak test (as root): the relay under allocation churn near its limit for a long time, in
# network namespaces (scripts/lib/netns.sh), with a steady load relaying through it all along.
#
#   bash scripts/soak.sh [SECONDS]        default 600 (the full soak; docs/soak.md has its figures)
#
# The relay (user space; SOAK_XDP=1 adds --xdp-interface) gets 1,024 relayed ports and
# --max-allocations 480. SOAK_CHURNERS (default 5) processes loop `turnpike-load run
# --allocations SOAK_CHURN_ALLOCATIONS (default 88) --duration 1`: each run allocates, creates a
# permission and binds a channel per allocation, relays round trips for a second and deletes its
# allocations, so the relay holds 400-444 allocations most of the time. A steady
# `turnpike-load run` (4 allocations, 200 round trips/s, one run that refreshes its allocations,
# permissions and channels as clients do) relays from before the churn until after it.
#
# Printed at start (steady load only), ten times during the churn (the fifth is its middle, the
# last its end), right after it, every 15 s while idle and once settled (SOAK_SETTLE seconds
# after the churn, default 60: the relay keeps responses 40 s for retransmissions): the relay's
# resident memory (VmRSS), open descriptors (/proc/PID/fd), allocations, permissions and
# channels, and with SOAK_XDP=1 the kernel's cached channels and map errors. It fails when:
#   - settled, VmRSS exceeds its start value by more than max(8 MiB, 25 %);
#   - (runs of 300 s or more) VmRSS grew over the second half of the churn by more than
#     max(4 MiB, 15 %): a leak, as opposed to the working set, which is reached in a minute;
#   - settled, open descriptors exceed their start value by more than 2;
#   - settled, allocations, permissions or channels are not back to the steady load's own;
#   - the steady load lost more than its window (16 datagrams) per run plus 0.1 % of what it
#     sent, got a malformed datagram or failed;
#   - more than 1 % of the churn runs failed, or the relay logged an error.
#
# SOAK_PROFILE=debug uses the debug build; scripts/test.sh runs `SOAK_SETTLE=42 soak.sh 10`
# (about a minute). SOAK_BUILD=0 skips the build. Every loop is bounded in time and count; the
# namespaces (prefix `soak`, TP_PREFIX to change it) are removed on any exit.
set -euo pipefail

seconds=${1:-600}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export TP_PREFIX=${TP_PREFIX:-soak}
# shellcheck source=lib/netns.sh
source "$root/scripts/lib/netns.sh"
[[ $EUID -eq 0 ]] || { echo "soak: needs root (network namespaces)" >&2; exit 1; }
[[ $seconds =~ ^[0-9]+$ && $seconds -ge 10 ]] || { echo "soak: SECONDS must be at least 10" >&2; exit 1; }

profile=${SOAK_PROFILE:-release}
churners=${SOAK_CHURNERS:-5}
churn_allocations=${SOAK_CHURN_ALLOCATIONS:-88}
steady_allocations=4
steady_window=4
steady_rate=200
max_allocations=480
# After the churn: the relay keeps responses 40 s to answer retransmissions (RFC 8489 §6.3.1),
# so the memory of the churn's last 40 s comes back only then.
settle=${SOAK_SETTLE:-60}
profile_flag=()
[[ $profile == release ]] && profile_flag=(--release)
# SOAK_BUILD=0 runs the binaries already in target/ (e.g. while the tree is mid-edit).
if [[ ${SOAK_BUILD:-1} != 0 ]]; then
    cargo build --quiet "${profile_flag[@]}" -p turnpike -p turnpike-load --manifest-path "$root/Cargo.toml"
fi
xdp=()
if [[ ${SOAK_XDP:-0} == 1 ]]; then
    [[ ${SOAK_BUILD:-1} == 0 ]] ||
        cargo build --quiet "${profile_flag[@]}" -p turnpike-xdp-user --example xdp_pass --manifest-path "$root/Cargo.toml"
    elf=$(bash "$root/scripts/build-xdp.sh")
    xdp=(--xdp-interface tp2-h --xdp-program "$elf")
fi
bin="$root/target/$profile"
secret=soak-$RANDOM$RANDOM
work=$(mktemp -d)
admin=127.0.0.1:9478
pids=()
relay_pid=
steady_pid=

cleanup() {
    local pid
    touch "$work/stop" 2>/dev/null || true
    # The churners and the steady load are subshells: their children (timeout, which passes the
    # signal on to turnpike-load) first, by parent PID.
    for pid in "${pids[@]}" $steady_pid; do pkill -TERM -P "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}" $steady_pid $relay_pid; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    tp_netns_down
    rm -rf "$work"
}
trap cleanup EXIT

metrics() {
    ip netns exec "$TP_RELAY" curl -s --max-time 2 "$admin/metrics"
}

# metric SERIES: the sum of the samples whose line starts with SERIES; fails when there is none.
metric() {
    metrics | awk -v key="$1" 'index($0, key) == 1 { sum += $NF; found = 1 }
        END { if (!found) { print "soak: no series " key > "/dev/stderr"; exit 1 } printf "%d\n", sum }'
}

rss_kib() {
    awk '$1 == "VmRSS:" { print $2 }' "/proc/$relay_pid/status"
}

fds() {
    ls "/proc/$relay_pid/fd" | wc -l
}

# sample LABEL: one line of figures, also kept in $work/samples.
sample() {
    local line kernel=""
    if [[ ${#xdp[@]} -gt 0 ]]; then
        kernel=" kernel_cached_channels=$(metric 'turnpike_xdp_cached_channels') kernel_map_errors=$(metric 'turnpike_xdp_map_errors_total')"
    fi
    line=$(printf '%-6s t=%4ds rss_kib=%d fds=%d allocations=%d permissions=%d channels=%d%s' "$1" \
        $((SECONDS - started)) "$(rss_kib)" "$(fds)" "$(metric 'turnpike_allocations ')" \
        "$(metric 'turnpike_permissions ')" "$(metric 'turnpike_channels ')" "$kernel")
    echo "$line" | tee -a "$work/samples" >&2
}

# field LABEL NAME: a figure from the samples.
field() {
    awk -v label="$1" -v name="$2" '$1 == label { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == name) print kv[2] } }' "$work/samples"
}

tp_netns_up
if [[ ${#xdp[@]} -gt 0 ]]; then
    ip netns exec "$TP_ROUTER" "$bin/examples/xdp_pass" "$elf" tp1-r tp2-r tp3-r >/dev/null &
    pids+=($!)
fi
ip netns exec "$TP_PEER" "$bin/turnpike-load" echo --listen "$TP_PEER_IP:9000" 2>/dev/null &
pids+=($!)
# A second client address: the relay steers each source address to one of its threads, so
# churn from two addresses keeps both threads (and both halves of the port range) busy.
churn_ip2=10.100.1.3
ip -n "$TP_CLIENT" addr add "$churn_ip2/24" dev tp1-h

# Every client comes from the client namespace's one address: no per-source challenge limit,
# and room for the same user name in several churn processes at once.
TURNPIKE_SECRETS=$secret ip netns exec "$TP_RELAY" "$bin/turnpike" \
    --listen "$TP_RELAY_IP:3478" --allow-peers 10.100.3.0/24 --relay-ports 49152-50175 \
    --max-allocations "$max_allocations" --max-allocations-per-user 64 --unauthenticated-rate 0 \
    --threads 2 --admin-listen "$admin" --log-level warn --drain-seconds 0 "${xdp[@]}" \
    >"$work/relay.log" 2>&1 &
relay_pid=$!
for _ in $(seq 1 100); do
    ip netns exec "$TP_RELAY" curl -s --max-time 1 "$admin/readyz" 2>/dev/null | grep -q ready && break
    kill -0 "$relay_pid" 2>/dev/null || break
    sleep 0.1
done
ip netns exec "$TP_RELAY" curl -s --max-time 1 "$admin/readyz" 2>/dev/null | grep -q ready ||
    { echo "soak: the relay did not start:" >&2; cat "$work/relay.log" >&2; exit 1; }

# The steady load: one run from before the churn until well after it. It refreshes its
# allocations, permissions and channels as clients do (permissions last 300 s, RFC 8656 §9;
# before the load generator refreshed, the soak ran it in pieces of 240 s: docs/soak.md).
steady_seconds=$((seconds + settle + 8))
steady() {
    local failed=0
    timeout $((steady_seconds + 60)) ip netns exec "$TP_CLIENT" "$bin/turnpike-load" run --server "$TP_RELAY_IP:3478" \
        --peer "$TP_PEER_IP:9000" --secret "$secret" --allocations "$steady_allocations" --window "$steady_window" \
        --rate "$steady_rate" --duration "$steady_seconds" --json "$work/steady1.json" \
        >/dev/null 2>"$work/steady1.log" || failed=1
    echo "1 $failed" >"$work/steady.done"
}
steady &
steady_pid=$!
started=$SECONDS
for _ in $(seq 1 100); do
    [[ $(metric 'turnpike_channels ') -ge $steady_allocations ]] && break
    sleep 0.1
done
sleep 2
sample start

# churner INDEX: runs churn rounds until the stop file appears (or the soak's time is up twice
# over); counts runs and failures.
churner() {
    local index=$1 runs=0 failures=0 deadline=$((SECONDS + 2 * seconds + 60)) bind=$TP_CLIENT_IP
    [[ $((index % 2)) -eq 0 ]] && bind=$churn_ip2
    while [[ ! -e $work/stop && $SECONDS -lt $deadline ]]; do
        runs=$((runs + 1))
        if ! timeout 60 ip netns exec "$TP_CLIENT" "$bin/turnpike-load" run --server "$TP_RELAY_IP:3478" \
            --bind "$bind" --peer "$TP_PEER_IP:9000" --secret "$secret" --allocations "$churn_allocations" --duration 1 \
            --window 2 --rate 400 >/dev/null 2>"$work/churn$index.last"; then
            failures=$((failures + 1))
            cp "$work/churn$index.last" "$work/churn$index.failed"
        fi
    done
    echo "$runs $failures" >"$work/churn$index.counts"
}

churn_start=$SECONDS
for index in $(seq 1 "$churners"); do
    churner "$index" &
    pids+=($!)
done
# Ten samples over the churn, the fifth one its middle; the last one just before it stops.
# sleep_until T: sleeps until T seconds after the churn started (at once if that has passed).
sleep_until() {
    local left=$(($1 - (SECONDS - churn_start)))
    [[ $left -le 0 ]] || sleep "$left"
}
for tick in $(seq 1 9); do
    sleep_until $((tick * seconds / 10))
    if [[ $tick -eq 5 ]]; then sample middle; else sample "t$tick"; fi
done
sleep_until $((seconds - 1))
sample end
touch "$work/stop"
for pid in "${pids[@]:${#pids[@]}-$churners}"; do wait "$pid" || true; done
churn_seconds=$((SECONDS - churn_start))

# After the churn: only the steady load's state may remain.
for _ in $(seq 1 50); do
    [[ $(metric 'turnpike_allocations ') -le $steady_allocations ]] && break
    sleep 0.2
done
sleep 2
sample after
# Samples every 15 s while the churn's state and cached responses expire; the last one is
# "settled", what the checks below compare with the start.
waited=0
while [[ $((waited + 15)) -lt $settle ]]; do
    sleep 15
    waited=$((waited + 15))
    sample "idle$waited"
done
sleep $((settle - waited))
sample settled
rss_start=$(field start rss_kib)
fds_start=$(field start fds)
rss_after=$(field settled rss_kib)
fds_after=$(field settled fds)
max_rss=$((rss_start + (rss_start / 4 > 8192 ? rss_start / 4 : 8192)))
# Under churn the resident set reaches its working set (the live allocations and the last
# 40 s of cached responses) within a minute or two and must stay there: no growth over the
# second half of the churn beyond max(4 MiB, 15 %) (runs of 300 s and more).
rss_middle=$(field middle rss_kib)
rss_end=$(field end rss_kib)
max_rss_end=$((rss_middle + (rss_middle * 15 / 100 > 4096 ? rss_middle * 15 / 100 : 4096)))

# The steady load ends by itself; bounded by its duration plus a margin.
for _ in $(seq 1 $((steady_seconds * 10 + 1200))); do
    kill -0 "$steady_pid" 2>/dev/null || break
    sleep 0.1
done
wait "$steady_pid" || true
steady_pid=
read -r segments steady_failed <"$work/steady.done" || { segments=0; steady_failed=1; }
steady_status=$steady_failed
sent=0
received=0
malformed=0
refresh_failures=0
for summary_file in "$work"/steady*.json; do
    summary=$(cat "$summary_file")
    sent=$((sent + $(sed -n 's/.*"sent":\([0-9]*\).*/\1/p' <<<"$summary")))
    received=$((received + $(sed -n 's/.*"received":\([0-9]*\).*/\1/p' <<<"$summary")))
    malformed=$((malformed + $(sed -n 's/.*"malformed":\([0-9]*\).*/\1/p' <<<"$summary")))
    refresh_failures=$((refresh_failures + $(sed -n 's/.*"refresh_failures":\([0-9]*\).*/\1/p' <<<"$summary")))
done
lost=$((sent - received))
max_lost=$((segments * steady_allocations * steady_window + sent / 1000))

runs=0
failures=0
for index in $(seq 1 "$churners"); do
    read -r r f <"$work/churn$index.counts"
    runs=$((runs + r))
    failures=$((failures + f))
done
errors=$(grep -c 'ERROR' "$work/relay.log" || true)
socket_errors=$(metric 'turnpike_socket_errors_total')
# Refusals other than the authentication challenge (401) and a stale nonce (438).
refused=$(metrics | awk '/^turnpike_responses_total\{method="allocate",code="[1-9]/ && !/code="(401|438)"/ { sum += $NF }
    END { printf "%d\n", sum }')
allocated=$(metric 'turnpike_responses_total{method="allocate",code="0"}')

echo
echo "churn: $churn_seconds s, $churners processes x $churn_allocations allocations per run, $runs runs ($failures failed)," \
    "$allocated allocations made, $refused refused"
echo "steady load: $steady_allocations allocations, $steady_rate round trips/s for $steady_seconds s in $segments runs:" \
    "sent ${sent:-?}, received ${received:-?}, lost $lost (bound $max_lost), malformed ${malformed:-?}," \
    "refreshes refused or unanswered $refresh_failures, failed runs $steady_status"
echo "relay: socket errors $socket_errors, errors logged $errors"
echo "VmRSS: start $rss_start KiB, middle $rss_middle KiB, end $rss_end KiB (bound $max_rss_end KiB from 300 s of churn)," \
    "settled $rss_after KiB (bound $max_rss KiB); descriptors: start $fds_start, settled $fds_after (bound $((fds_start + 2)))"

failed=0
fail() {
    echo "FAILED: $*" >&2
    failed=1
}
[[ $rss_after -le $max_rss ]] || fail "resident memory did not come back: $rss_after KiB > $max_rss KiB"
if [[ $seconds -ge 300 ]]; then
    [[ $rss_end -le $max_rss_end ]] || fail "resident memory grew under churn: $rss_end KiB at the end > $max_rss_end KiB"
fi
[[ $fds_after -le $((fds_start + 2)) ]] || fail "descriptors did not come back: $fds_after > $((fds_start + 2))"
for gauge in allocations permissions channels; do
    [[ $(field settled "$gauge") -le $(field start "$gauge") ]] ||
        fail "$gauge left after the churn: $(field settled "$gauge") > $(field start "$gauge")"
done
[[ $steady_status -eq 0 && $sent -gt 0 ]] || fail "the steady load failed: $(tail -n 3 "$work"/steady*.log)"
[[ $lost -le $max_lost ]] || fail "the steady load lost $lost round trips (bound $max_lost)"
[[ ${malformed:-1} -eq 0 ]] || fail "the steady load got $malformed malformed datagrams"
[[ $refresh_failures -eq 0 ]] || fail "the steady load could not refresh $refresh_failures times"
[[ $runs -gt 0 && $((failures * 100)) -le $runs ]] ||
    fail "$failures of $runs churn runs failed; last: $(cat "$work"/churn*.failed 2>/dev/null | tail -n 3)"
[[ $errors -eq 0 ]] || fail "the relay logged errors: $(grep ERROR "$work/relay.log" | head -n 3)"
if [[ $failed -ne 0 ]]; then
    echo "soak: FAILED" >&2
    exit 1
fi
echo "soak: passed"
