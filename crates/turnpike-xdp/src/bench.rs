//! `turnpike_bench_swap`: the cheapest program that still relays, as a cost baseline.
//!
//! It parses Ethernet and IPv4/IPv6 far enough to find the addresses and ports, swaps source and
//! destination at each layer and returns `XDP_TX`. Swapping keeps every checksum valid, and
//! running it twice restores the frame, so it can be timed with `BPF_PROG_TEST_RUN`'s `repeat`
//! (which feeds the program its own output). It looks up no map and counts nothing: whatever the
//! relay program costs on top of this is the price of being a relay rather than a mirror.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};

use crate::packet::{
    ETH_HEADER, ETHERTYPE_IPV4, ETHERTYPE_IPV6, IPV4_HEADER, IPV6_HEADER, UDP_HEADER, check, load,
    store,
};

#[inline(always)]
pub(crate) fn swap(ctx: &XdpContext) -> u32 {
    const V4: usize = ETH_HEADER + IPV4_HEADER + UDP_HEADER;
    const V6: usize = ETH_HEADER + IPV6_HEADER + UDP_HEADER;
    let Some(eth) = check::<ETH_HEADER>(ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY (every load and store): inside the window the preceding `check` returned.
    // SAFETY: inside the Ethernet header `check` returned.
    let ethertype: u16 = unsafe { load(eth + 12) };
    if ethertype == ETHERTYPE_IPV4 {
        let Some(f) = check::<V4>(ctx, 0) else {
            return xdp_action::XDP_PASS;
        };
        // SAFETY: inside the IPv4 and UDP headers `check` returned.
        unsafe {
            swap_macs(f);
            swap_at::<u32>(f + 26, f + 30);
            swap_at::<u16>(f + 34, f + 36);
        }
        xdp_action::XDP_TX
    } else if ethertype == ETHERTYPE_IPV6 {
        let Some(f) = check::<V6>(ctx, 0) else {
            return xdp_action::XDP_PASS;
        };
        // SAFETY: inside the IPv6 and UDP headers `check` returned.
        unsafe {
            swap_macs(f);
            swap_at::<u64>(f + 22, f + 38);
            swap_at::<u64>(f + 30, f + 46);
            swap_at::<u16>(f + 54, f + 56);
        }
        xdp_action::XDP_TX
    } else {
        xdp_action::XDP_PASS
    }
}

/// # Safety
///
/// `f` must start a checked window of at least 12 bytes.
#[inline(always)]
unsafe fn swap_macs(f: usize) {
    // SAFETY: the caller guarantees the window.
    unsafe {
        swap_at::<u32>(f, f + 6);
        swap_at::<u16>(f + 4, f + 10);
    }
}

/// Swaps the `T`s at `a` and `b`.
///
/// # Safety
///
/// Both must lie in a checked window.
#[inline(always)]
unsafe fn swap_at<T: Copy>(a: usize, b: usize) {
    // SAFETY: the caller guarantees the window.
    unsafe {
        let (x, y): (T, T) = (load(a), load(b));
        store(a, y);
        store(b, x);
    }
}
