#!/usr/bin/env bash
# Builds the XDP program (crates/turnpike-xdp, its own Cargo workspace) for bpfel-unknown-none and
# prints the absolute path of the ELF object on stdout; everything else goes to stderr, so callers
# can write `elf=$(bash scripts/build-xdp.sh)`.
set -euo pipefail

readonly NIGHTLY=nightly
readonly BPF_LINKER_VERSION=0.10.3
readonly LLVM_MAJOR=22

die() {
    echo "build-xdp: error: $*" >&2
    exit 1
}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
crate="$root/crates/turnpike-xdp"
target_dir="$crate/target"
elf="$target_dir/bpfel-unknown-none/release/turnpike-xdp"

# Preflight: say what is missing and where it comes from rather than letting cargo fail obscurely.
linker_version=$(bpf-linker --version 2>/dev/null | awk '{ print $2 }') || true
[[ -n "$linker_version" ]] || die "bpf-linker not found on PATH; run scripts/setup.sh"
[[ "$linker_version" == "$BPF_LINKER_VERSION" ]] ||
    die "bpf-linker is $linker_version, need $BPF_LINKER_VERSION; run scripts/setup.sh"
rustup component list --installed --toolchain "$NIGHTLY" 2>/dev/null | grep -qx 'rust-src' ||
    die "rust-src is not installed for the $NIGHTLY toolchain (needed by -Z build-std); run scripts/setup.sh"
llvm=$(rustc "+$NIGHTLY" -vV 2>/dev/null | sed -n 's/^LLVM version: //p') || true
[[ "${llvm%%.*}" == "$LLVM_MAJOR" ]] ||
    die "rustc +$NIGHTLY uses LLVM ${llvm:-unknown}, but bpf-linker $BPF_LINKER_VERSION loads rustc's own libLLVM and needs LLVM $LLVM_MAJOR; see scripts/setup.sh"

# RUSTFLAGS-style variables replace the target rustflags in crates/turnpike-xdp/.cargo/config.toml
# instead of adding to them, which would silently drop `--btf`. The target dir is pinned so the
# ELF is where we look for it whatever CARGO_TARGET_DIR says.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS
echo "build-xdp: building $crate" >&2
(
    cd "$crate"
    cargo "+$NIGHTLY" build --release --locked --target bpfel-unknown-none -Z build-std=core \
        --target-dir "$target_dir"
) >&2

[[ -f "$elf" ]] || die "cargo succeeded but $elf does not exist"
sections=$(readelf -S --wide "$elf" | sed -n 's/^ *\[ *[0-9]*\] \([^ ]*\) .*/\1/p')
grep -qx '\.BTF' <<<"$sections" ||
    die "$elf has no .BTF section: bpf-linker must get '-C debuginfo=2 -C link-arg=--btf' (crates/turnpike-xdp/.cargo/config.toml)"
grep -qx 'xdp' <<<"$sections" || die "$elf has no 'xdp' section: the #[xdp] program is missing"
# Every program user space and the tests ask for by name (turnpike-xdp-common's `programs`).
symbols=$(readelf -s --wide "$elf" | awk '$4 == "FUNC" { print $8 }')
for program in turnpike_relay turnpike_pass turnpike_bench_swap; do
    grep -qx "$program" <<<"$symbols" || die "$elf has no $program function symbol"
done

echo "$elf"
