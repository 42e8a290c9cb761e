#!/usr/bin/env bash
# Runs the whole test suite: `bash scripts/test.sh` from the repository root (as root on a fresh
# Debian bookworm machine; scripts/setup.sh installs what is missing, TURNPIKE_SKIP_SETUP=1 skips
# that step).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() {
    echo "==> $*" >&2
}

# Later suites go here, each after the unit and integration tests have passed:
# fuzz smoke runs (cargo +nightly fuzz run <target> -- -max_total_time=...), network-namespace
# tests that attach the XDP program (need root), coturn interoperability tests.
run_extra_suites() {
    :
}

step "setup"
bash scripts/setup.sh

step "build the XDP program"
TURNPIKE_XDP_ELF=$(bash scripts/build-xdp.sh)
# Where tests that load the kernel program find it.
export TURNPIKE_XDP_ELF
echo "$TURNPIKE_XDP_ELF" >&2

step "cargo test --workspace"
cargo test --workspace --locked

run_extra_suites

step "all tests passed"
