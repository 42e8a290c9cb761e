//! Turnpike's eBPF/XDP programs (kernel side).
//!
//! - `turnpike_relay` is the relay's data plane: it relays ChannelData from clients to peers and
//!   UDP from peers to clients for channels bound in its maps, rewriting each frame in place and
//!   sending it back out with `XDP_TX`, and passes everything else up unchanged (`relay.rs` says
//!   what and why). It never drops.
//! - `turnpike_pass` lets every packet through. It exists because a veth drops frames that an XDP
//!   program sends back out with `XDP_TX` unless the *peer* end of that veth also has an XDP
//!   program attached (or GRO enabled, which is less reliable). Network-namespace tests attach it
//!   to the router-side end of the veth whose other end runs `turnpike_relay`.
//! - `turnpike_bench_swap` swaps addresses and ports and returns `XDP_TX`: the least work any
//!   relaying program must do, the baseline the relay's in-kernel cost is measured against.
//!
//! The map layouts are defined in `turnpike-xdp-common`, shared with user space.
#![no_std]
#![no_main]

mod bench;
mod lookup;
mod packet;
mod relay;

use core::mem::MaybeUninit;
use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, xdp_action},
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::XdpContext,
};
use turnpike_xdp_common::{
    CHANNEL_CACHE_SLOTS, ChannelCacheSlot, ClientChannel, Counter, Outcome, OwnAddresses,
    PEER_CACHE_SLOTS, PeerBinding, PeerCacheSlot, XdpConfig, maps::DEFAULT_MAX_CHANNELS,
};

/// The relay configuration (one entry; all zeros until user space writes it).
#[map]
static CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);

/// The relay's own address per family (one entry), written by user space.
#[map]
static OWN_ADDRESSES: Array<OwnAddresses> = Array::with_max_entries(1, 0);

/// Client to peer: (client address and port, listening address and port, channel) → (peer
/// address and port, relayed address and port).
///
/// Not preallocated: a preallocated hash map reuses a replaced or deleted element at once, so a
/// lookup racing with an update could read half of one binding and half of another; without
/// preallocation elements are freed only after every reader is done (RCU). Updates allocate,
/// which the control path can afford; lookups cost the same.
#[map]
static CHANNEL_TO_PEER: HashMap<ClientChannel, PeerBinding> =
    HashMap::with_max_entries(DEFAULT_MAX_CHANNELS, BPF_F_NO_PREALLOC);

/// Peer to client: the reverse of `CHANNEL_TO_PEER`. Not preallocated, as
/// `CHANNEL_TO_PEER`.
#[map]
static PEER_TO_CHANNEL: HashMap<PeerBinding, ClientChannel> =
    HashMap::with_max_entries(DEFAULT_MAX_CHANNELS, BPF_F_NO_PREALLOC);

/// Part of `CHANNEL_TO_PEER`, indexed by a hash of the key (see `lookup.rs`).
#[map]
static CHANNEL_CACHE: Array<ChannelCacheSlot> = Array::with_max_entries(CHANNEL_CACHE_SLOTS, 0);

/// Part of `PEER_TO_CHANNEL`, indexed by relayed port and family (see `lookup.rs`).
#[map]
static PEER_CACHE: Array<PeerCacheSlot> = Array::with_max_entries(PEER_CACHE_SLOTS, 0);

/// Packets and bytes per [`Outcome`], per CPU, and the two counts of `AdjustMode::Auto`'s probe
/// after them.
#[map]
static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(Outcome::COUNTER_SLOTS, 0);

/// The relay's data plane (see the module documentation).
#[xdp]
pub fn turnpike_relay(ctx: XdpContext) -> u32 {
    // The arriving length is parked on the stack with volatile accesses: held as a value, it
    // would take one of the four registers that survive calls for the whole program.
    let mut len = MaybeUninit::<u64>::uninit();
    // SAFETY: a stack slot of this function, written before it is read.
    unsafe { write_volatile(len.as_mut_ptr(), packet::frame_len(&ctx) as u64) };
    let outcome = relay::relay(&ctx);
    if let Some(counter) = COUNTERS.get_ptr_mut(outcome.index()) {
        // SAFETY: a per-CPU array slot of this CPU, which nothing else writes while the program
        // runs (XDP programs are not preempted on their CPU); `len` was written above.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += read_volatile(len.as_ptr());
        }
    }
    if outcome.is_relayed() {
        xdp_action::XDP_TX
    } else {
        xdp_action::XDP_PASS
    }
}

/// Passes every frame to the kernel stack unchanged (see the module documentation for why).
#[xdp]
pub fn turnpike_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Swaps MACs, IP addresses and UDP ports and sends the frame back: the benchmark baseline.
#[xdp]
pub fn turnpike_bench_swap(ctx: XdpContext) -> u32 {
    bench::swap(&ctx)
}

// eBPF has no unwinding and no way to report a panic; the verifier rejects programs that could
// reach this loop, so in practice it only has to exist for `no_std` to link.
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

/// The kernel refuses GPL-only helpers (`bpf_check_mtu`, among others) to programs whose license
/// string is not GPL-compatible; "Dual MIT/GPL" is, and matches Cargo.toml.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
