//! Plain-data types shared by the Turnpike XDP program (`crates/turnpike-xdp`, kernel side) and
//! the user-space relay that loads it and fills its maps.
//!
//! Both sides see these types only as raw bytes in BPF maps, so the memory layout *is* the
//! contract. Every type here is therefore `#[repr(C)]` and built only from byte arrays, and
//! multi-byte numbers are stored big-endian (network order) as `[u8; N]` rather than as
//! `u16`/`u32`:
//!
//! - byte arrays have alignment 1, so the compiler cannot insert padding that one side does not
//!   expect (and that would reach the kernel as uninitialised bytes, or make two equal keys hash
//!   differently);
//! - the byte order is fixed by the type, not by whoever writes the value: the only way in and out
//!   is `from_be_bytes`/`to_be_bytes` in the accessors, so neither side can forget to swap or swap
//!   twice, and the kernel can compare the raw bytes with header fields that are already in
//!   network order.
//!
//! The one exception is [`Counter`]: the kernel adds to it on every packet and user space on the
//! same machine reads it, nothing compares it with packet bytes, so it is a native `u64` (see its
//! documentation).
//!
//! The tests pin the size, alignment, field offsets and byte image of every type, so changing the
//! layout makes a test fail instead of silently desynchronising kernel and user space.
//!
//! # The maps
//!
//! | name ([`maps`]) | kind | key | value | written by |
//! | --- | --- | --- | --- | --- |
//! | `CONFIG` | array, 1 entry | `u32` 0 | [`XdpConfig`] | user space |
//! | `OWN_ADDRESSES` | array, 1 entry | `u32` 0 | [`OwnAddresses`] | user space |
//! | `CHANNEL_TO_PEER` | hash | [`ClientChannel`] | [`PeerBinding`] | user space |
//! | `PEER_TO_CHANNEL` | hash | [`PeerBinding`] | [`ClientChannel`] | user space |
//! | `CHANNEL_CACHE` | array | `u32` [`ClientChannel::cache_index`] | [`ChannelCacheSlot`] | user space |
//! | `PEER_CACHE` | array | `u32` [`PeerBinding::cache_index`] | [`PeerCacheSlot`] | user space |
//! | `COUNTERS` | per-CPU array | `u32` [`Outcome`], then [`Outcome::HEAD_REFUSED_INDEX`] | [`Counter`] | kernel |
//!
//! The two route maps are each other's inverse: the value of one direction is the key of the
//! other, which is why there are only two route types (see [`route`]). The two caches hold a
//! subset of the route maps where the program finds it without a hash-map lookup (see
//! [`cache`]).
#![no_std]

pub mod cache;
pub mod checksum;
pub mod config;
mod counters;
mod own;
pub mod route;

pub use cache::{CHANNEL_CACHE_SLOTS, ChannelCacheSlot, PEER_CACHE_SLOTS, PeerCacheSlot};
pub use config::{AdjustMode, XdpConfig};
pub use counters::{Counter, Outcome};
pub use own::OwnAddresses;
pub use route::{ClientChannel, FAMILY_V4, FAMILY_V6, PeerBinding, ROUTE_ENTRY_LEN};

/// The smallest MTU of an interface the relay program may be attached to: IPv6's minimum link
/// MTU (RFC 8200 §5), which every link that carries IPv6 has and IPv4 links in practice exceed.
/// The program checks the MTU (a helper call) only for rewritten datagrams larger than this;
/// user space refuses to attach to an interface whose MTU is smaller.
pub const MIN_LINK_MTU: u32 = 1280;

/// Names of the BPF maps in the ELF object, shared so that user space asks for exactly the maps
/// the kernel program declares.
pub mod maps {
    /// One [`crate::XdpConfig`] at index 0.
    pub const CONFIG: &str = "CONFIG";
    /// One [`crate::OwnAddresses`] at index 0.
    pub const OWN_ADDRESSES: &str = "OWN_ADDRESSES";
    /// [`crate::ClientChannel`] → [`crate::PeerBinding`]: ChannelData from clients.
    pub const CHANNEL_TO_PEER: &str = "CHANNEL_TO_PEER";
    /// [`crate::PeerBinding`] → [`crate::ClientChannel`]: UDP from peers.
    pub const PEER_TO_CHANNEL: &str = "PEER_TO_CHANNEL";
    /// [`crate::ChannelCacheSlot`]s: part of `CHANNEL_TO_PEER`, found without hashing.
    pub const CHANNEL_CACHE: &str = "CHANNEL_CACHE";
    /// [`crate::PeerCacheSlot`]s: part of `PEER_TO_CHANNEL`, found without hashing.
    pub const PEER_CACHE: &str = "PEER_CACHE";
    /// Per-CPU [`crate::Counter`]s indexed by [`crate::Outcome`], and one more
    /// ([`crate::Outcome::HEAD_REFUSED_INDEX`]).
    pub const COUNTERS: &str = "COUNTERS";
    /// Default capacity of each route map (entries, i.e. bound channels). User space may change
    /// it at load time.
    pub const DEFAULT_MAX_CHANNELS: u32 = 65_536;
}

/// Names of the XDP programs in the ELF object.
pub mod programs {
    /// The relay's data plane.
    pub const RELAY: &str = "turnpike_relay";
    /// Passes everything; for the peer end of a veth whose other end sends with `XDP_TX`.
    pub const PASS: &str = "turnpike_pass";
    /// Swaps addresses and ports and sends the frame back: the cost baseline for benchmarks.
    pub const BENCH_SWAP: &str = "turnpike_bench_swap";
}

#[cfg(test)]
extern crate std;

/// Byte-level helpers for the layout tests of every module.
#[cfg(test)]
pub(crate) mod layout {
    use core::mem::size_of;

    /// The bytes of `value` exactly as they would be copied into a BPF map.
    pub(crate) fn bytes_of<T: Copy>(value: &T) -> &[u8] {
        // SAFETY: `value` is a valid reference to `size_of::<T>()` initialised bytes for the
        // lifetime of the returned slice; the types tested here have no padding.
        unsafe { core::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
    }

    /// Reads a `T` back from bytes, as the other side of the map would.
    pub(crate) fn from_bytes<T: Copy>(bytes: &[u8]) -> T {
        assert_eq!(bytes.len(), size_of::<T>());
        // SAFETY: the length was checked; `read_unaligned` imposes no alignment requirement; the
        // types tested here accept every bit pattern.
        unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
    }
}
