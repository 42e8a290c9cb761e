#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/, a cargo-fuzz crate outside the workspace: the wire codec's
# stun_message and channel_data, and server, which drives the core) one after the
# other, each for a fixed number of executions, and prints libFuzzer's final counts.
#
#   scripts/fuzz.sh [RUNS] [LIBFUZZER_ARGS...]    RUNS defaults to 10_000_000 per target
#
# One libFuzzer process at a time (no -jobs/-workers): the targets are cheap per input, and the
# machines this runs on are small. New inputs go to fuzz/corpus/<target> (not committed); the
# committed seeds in fuzz/seeds/<target> are only read. A crash stops the run and leaves the
# input in fuzz/artifacts/<target>/; minimise it with `cargo +nightly fuzz tmin --fuzz-dir fuzz`.
set -euo pipefail

readonly NIGHTLY=nightly
readonly TARGETS=(stun_message channel_data server stream)
# Per-target options. `server` drives the core, which is #![forbid(unsafe_code)]: AddressSanitizer
# finds nothing there that the bounds checks do not, and roughly halved its speed (debug
# assertions, which catch overflow, stay on). Its inputs are capped at 512 bytes, up to a
# hundred-odd steps of requests, data and time jumps: a run costs about as much as its steps, so
# 4 kB inputs would mean proportionally fewer executions (see docs/fuzzing.md).
declare -A SANITIZER=([server]=none)
declare -A TARGET_ARGS=([server]="-max_len=512")

die() {
    echo "fuzz: error: $*" >&2
    exit 1
}

runs=${1:-10_000_000}
runs=${runs//_/}
[[ "$runs" =~ ^[0-9]+$ ]] || die "RUNS must be a number, got '$1'"
shift || true

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cargo fuzz --version >/dev/null 2>&1 || die "cargo-fuzz not found; cargo install cargo-fuzz"

logs=()
for target in "${TARGETS[@]}"; do
    corpus="$root/fuzz/corpus/$target"
    log="$root/fuzz/artifacts/$target.log"
    mkdir -p "$corpus" "$(dirname "$log")"
    echo "fuzz: $target, $runs runs" >&2
    # libFuzzer writes new inputs to the first corpus directory only.
    # shellcheck disable=SC2086 # TARGET_ARGS holds separate words.
    (cd "$root" && cargo "+$NIGHTLY" fuzz run --fuzz-dir fuzz \
        --sanitizer "${SANITIZER[$target]:-address}" "$target" \
        "$corpus" "$root/fuzz/seeds/$target" \
        -- -runs="$runs" -print_final_stats=1 ${TARGET_ARGS[$target]:-} "$@") 2>&1 | tee "$log"
    logs+=("$log")
done

echo
for log in "${logs[@]}"; do
    target=$(basename "$log" .log)
    done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1)
    executed=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    echo "$target: $done_line (executed units: $executed, $speed exec/s)"
done
