//! Turnpike's eBPF/XDP programs (kernel side).
//!
//! For now this holds only `turnpike_pass`, which lets every packet through. It exists because a
//! veth drops frames that an XDP program sends back out with `XDP_TX` unless the *peer* end of
//! that veth also has an XDP program attached (or GRO enabled, which is less reliable). Our
//! network-namespace tests run the relay's XDP program on one end of a veth pair, so they attach
//! `turnpike_pass` to the other (router-side) end to make `XDP_TX` deliver there as it would on a
//! real NIC. The relay's data-plane program will be `turnpike_relay`; keep the names distinct.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Passes every frame to the kernel stack unchanged (see the module documentation for why).
#[xdp]
pub fn turnpike_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

// eBPF has no unwinding and no way to report a panic; the verifier rejects programs that could
// reach this loop, so in practice it only has to exist for `no_std` to link.
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

/// The kernel refuses GPL-only helpers (used later for maps, logging and checksums) to programs
/// whose license string is not GPL-compatible; "Dual MIT/GPL" is, and matches Cargo.toml.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
