//! Builds the XDP program (crates/turnpike-xdp) with the nightly toolchain and bpf-linker, so the
//! `turnpike` binary carries its own kernel data plane.
//!
//! `TURNPIKE_SKIP_XDP_BUILD=1` skips it (for `cargo check` or clippy where the eBPF toolchain is
//! missing); the binary then refuses `--xdp-interface` with a message saying so. Without the
//! switch, a missing toolchain fails the build with the step that installs it.

#![expect(
    clippy::expect_used,
    reason = "a build script reports failure by panicking"
)]

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=TURNPIKE_SKIP_XDP_BUILD");
    let manifest = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let root = manifest.join("../..");
    for watched in [
        "crates/turnpike-xdp/src",
        "crates/turnpike-xdp/Cargo.toml",
        "crates/turnpike-xdp/.cargo/config.toml",
        "crates/turnpike-xdp-common/src",
        "crates/turnpike-xdp-common/Cargo.toml",
        "scripts/build-xdp.sh",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("turnpike-xdp.o");
    if std::env::var("TURNPIKE_SKIP_XDP_BUILD").is_ok_and(|value| value == "1") {
        std::fs::write(&out, []).expect("OUT_DIR is writable");
        println!("cargo:rustc-env=TURNPIKE_XDP_OBJECT={}", out.display());
        return;
    }
    // The outer cargo's settings must not leak into the nested nightly build: RUSTC would point
    // it at the stable compiler, the flags and jobserver belong to the host build.
    let output = Command::new("bash")
        .arg(root.join("scripts/build-xdp.sh"))
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTDOC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .output()
        .expect("bash runs scripts/build-xdp.sh");
    if !output.status.success() {
        panic!(
            "building the XDP program failed:\n{}\nInstall the eBPF toolchain with `bash scripts/setup.sh`, or build \
             without the kernel data plane with TURNPIKE_SKIP_XDP_BUILD=1.",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let elf = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    std::fs::copy(&elf, &out).unwrap_or_else(|error| panic!("cannot copy {elf}: {error}"));
    println!("cargo:rustc-env=TURNPIKE_XDP_OBJECT={}", out.display());
}
