#!/usr/bin/env bash
# Runs the whole test suite: `bash scripts/test.sh` from the repository root (as root on a fresh
# Debian bookworm machine; scripts/setup.sh installs what is missing, TURNPIKE_SKIP_SETUP=1 skips
# that step).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() {
    echo "==> $*" >&2
}

# Suites beyond `cargo test`, each after the unit and integration tests have passed. The fuzz
# smoke run replays the committed seeds and a few hundred thousand mutations per target; the
# 10-million-run campaigns are `bash scripts/fuzz.sh` (see docs/fuzzing.md for the last one).
run_extra_suites() {
    step "deployment files (Dockerfile, Kubernetes manifests)"
    bash scripts/check-deploy.sh
    step "fuzz smoke run"
    bash scripts/fuzz.sh 300000 >/dev/null
    step "kernel data plane in network namespaces"
    bash scripts/test-xdp-netns.sh debug
    step "soak, short: 10 s of allocation churn near the limit (the full 10 minutes: docs/soak.md)"
    SOAK_PROFILE=debug SOAK_SETTLE=42 bash scripts/soak.sh 10
    step "wildcard listeners: the host's other addresses, the defaults under 20,000 descriptors"
    bash scripts/test-wildcard-host.sh debug
}

step "setup"
bash scripts/setup.sh

step "build the XDP program"
TURNPIKE_XDP_ELF=$(bash scripts/build-xdp.sh)
# Where tests that load the kernel program find it.
export TURNPIKE_XDP_ELF
echo "$TURNPIKE_XDP_ELF" >&2

# The kernel crate is its own workspace (bpfel-unknown-none, nightly): linted here, once setup
# has installed its toolchain, with every unsafe block required to say why it is sound.
step "clippy on the XDP program"
(cd crates/turnpike-xdp && cargo +nightly clippy --release --locked --target bpfel-unknown-none \
    -Z build-std=core -- -W clippy::undocumented_unsafe_blocks -D warnings)

step "cargo test --workspace"
cargo test --workspace --locked

run_extra_suites

step "all tests passed"
