//! Direct-mapped caches in front of the two route maps.
//!
//! # Why a cache in front of a hash map
//!
//! A BPF hash-map lookup is a call into the kernel that hashes the key (jhash over 40 bytes),
//! walks a bucket and compares keys: measured at about 31 ns per packet on the machines this
//! project runs on, more than the whole rest of the program. A lookup in a BPF *array* at an
//! index the program computes is inlined by the verifier into a bounds check and an addition.
//! So each route map has an array beside it: a binding the array holds is found with one index
//! computation and a key comparison; a binding it does not hold is found in the hash map as
//! before. The hash maps stay the complete truth; the arrays hold a subset of it, chosen by user
//! space, and never anything the hash map does not hold.
//!
//! - [`ChannelCacheSlot`] (`CHANNEL_CACHE`, client to peer) is indexed by a hash of (client
//!   address, client port, channel) computed here, identically on both sides
//!   ([`channel_cache_index`]). Two bindings can hash to the same slot (one client's channels on
//!   two listening addresses always do); the first one keeps it and the other is served by the
//!   hash map alone. The slot holds the whole key, listening address and port included, and
//!   the program compares all of it.
//! - [`PeerCacheSlot`] (`PEER_CACHE`, peer to client) is indexed by the relayed port and family
//!   ([`peer_cache_index`]), which identify one allocation, so allocations never compete for a
//!   slot; the first channel of an allocation (usually its only one) is cached, further channels
//!   of the same allocation are served by the hash map.
//!
//! A collision costs speed (the hash-map lookup of before), never correctness. The channel hash
//! is not keyed: a client that picks its port and channel to collide with another client's slot
//! can only take a free slot first, which moves that other binding to the hash map.
//!
//! # Reading a slot while user space writes it
//!
//! A BPF array update from user space is a plain `memcpy` into the element that the program may
//! be reading at the same moment, so a slot could be seen half old and half new: the old key
//! with the new peer, say, which would relay one client's data to another client's peer. Each
//! slot therefore carries a sequence number, written as in a sequence lock: user space makes
//! three separate updates, each of which changes only the sequence or only the contents:
//!
//! 1. the sequence becomes odd (contents unchanged);
//! 2. the contents change (sequence unchanged and odd);
//! 3. the sequence becomes the next even number (contents unchanged).
//!
//! The program reads the sequence, then key and value, then the sequence again, all with
//! volatile loads in that order, and uses the slot only if both sequence reads are equal and
//! even; otherwise it goes to the hash map. Whatever bytes a concurrent `memcpy` mixes, a read
//! that overlaps step 2 sees an odd sequence, and a read that starts before step 1 and ends after
//! it sees two different sequences. This relies on loads not being reordered with each other,
//! which x86-64 guarantees (the architecture this project builds its program for).
//!
//! An empty slot has family byte 0 in its key, which no packet's key has.
//!
//! # What a slot may hold
//!
//! Besides being in the route map, a cached binding has passed a check the program then skips:
//! its peer is none of the relay's own addresses ([`crate::OwnAddresses::includes_peer`]). A
//! binding to the relay itself is a hairpin, which user space relays; the program checks for it
//! only on bindings it found in a hash map. User space therefore leaves such bindings out of
//! the caches, and before it writes new own addresses it evicts every cached binding whose peer
//! the new addresses include. The check costs every cached packet nothing, and an own address
//! changes rarely (it is learned once per family).
//!
//! # Layout
//!
//! Sequence (native `u32`, like [`crate::Counter`]: only ever compared with itself) at 0, key at
//! 4, value at 44: both 40-byte entries start on a 4-byte boundary, so their addresses read as
//! aligned words. 84 bytes per slot.

use crate::route::{ClientChannel, FAMILY_V6, PeerBinding};

/// One slot of a cache: a sequence number and one binding, key and value.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct CacheSlot<K, V> {
    sequence: u32,
    key: K,
    value: V,
}

/// A slot of `CHANNEL_CACHE`: client to peer.
pub type ChannelCacheSlot = CacheSlot<ClientChannel, PeerBinding>;
/// A slot of `PEER_CACHE`: peer to client.
pub type PeerCacheSlot = CacheSlot<PeerBinding, ClientChannel>;

impl<K: Copy, V: Copy> CacheSlot<K, V> {
    /// Offset of the sequence number in a slot.
    pub const SEQUENCE_OFFSET: usize = 0;
    /// Offset of the key in a slot.
    pub const KEY_OFFSET: usize = 4;
    /// Offset of the value in a slot.
    pub const VALUE_OFFSET: usize = 44;

    /// A slot holding `key` → `value` under `sequence`.
    #[inline(always)]
    pub const fn new(sequence: u32, key: K, value: V) -> Self {
        Self {
            sequence,
            key,
            value,
        }
    }

    /// The sequence number.
    #[inline(always)]
    pub const fn sequence(&self) -> u32 {
        self.sequence
    }

    /// The key (family 0 in an empty slot).
    #[inline(always)]
    pub const fn key(&self) -> &K {
        &self.key
    }

    /// The value.
    #[inline(always)]
    pub const fn value(&self) -> &V {
        &self.value
    }
}

/// Number of slots of `CHANNEL_CACHE` (a power of two).
pub const CHANNEL_CACHE_SLOTS: u32 = 1 << CHANNEL_CACHE_BITS;
const CHANNEL_CACHE_BITS: u32 = 16;

/// Number of slots of `PEER_CACHE`: one per port and family.
pub const PEER_CACHE_SLOTS: u32 = 2 * 65_536;

/// The `CHANNEL_CACHE` slot of a client's channel, from its fields as they are in the packet:
/// the address as four words loaded in native byte order (IPv4: one word, then zeros), the port
/// and channel number as native loads of their big-endian bytes. The kernel program loads
/// exactly these from the packet; user space derives them from a [`ClientChannel`] with
/// [`ClientChannel::cache_index`].
///
/// Multiply-shift hashing: the address words are folded into one, the port and channel put
/// above it in a 64-bit word, the word multiplied by 2⁶⁴/φ and the top bits taken. A bit of the
/// word changes every product bit above it, and the top bits are above all of them: clients
/// behind one NAT, which differ only in the last address byte and the port, spread over the
/// whole table, and the ports of one address and channel never share a slot (multiplying the
/// top 16 bits by an odd number permutes them). A few instructions: eBPF multiplies 64-bit words natively (it has no rotate;
/// each rotation becomes two shifts and an or).
#[inline(always)]
pub const fn channel_cache_index(address: [u32; 4], port_wire: u16, channel_wire: u16) -> u32 {
    let folded = address[0]
        ^ address[1].rotate_left(7)
        ^ address[2].rotate_left(14)
        ^ address[3].rotate_left(21);
    let word = ((port_wire as u64) << 48) | ((channel_wire as u64) << 32) | folded as u64;
    (word.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - CHANNEL_CACHE_BITS)) as u32
}

/// The `PEER_CACHE` slot of an allocation: its relayed port (host order) and its family.
#[inline(always)]
pub const fn peer_cache_index(family: u8, relay_port: u16) -> u32 {
    (relay_port as u32) << 1 | (family == FAMILY_V6) as u32
}

const fn words_of(octets: &[u8; 16]) -> [u32; 4] {
    let o = octets;
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

impl ClientChannel {
    /// This binding's slot in `CHANNEL_CACHE` (see [`channel_cache_index`]).
    #[inline(always)]
    pub const fn cache_index(&self) -> u32 {
        channel_cache_index(
            words_of(self.client_octets()),
            u16::from_ne_bytes(self.client_port_wire()),
            u16::from_ne_bytes(self.channel_wire()),
        )
    }
}

impl PeerBinding {
    /// This binding's slot in `PEER_CACHE` (see [`peer_cache_index`]).
    #[inline(always)]
    pub const fn cache_index(&self) -> u32 {
        peer_cache_index(self.family(), self.relay_port())
    }
}

// SAFETY: `#[repr(C)]`, `Copy`, a `u32` at offset 0 followed by two `Pod` types of alignment 1
// and 40 bytes each, which end at 84, a multiple of 4, so there are no implicit padding bytes
// and every bit pattern is valid; no pointers.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ChannelCacheSlot {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for PeerCacheSlot {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{bytes_of, from_bytes};
    use core::mem::{align_of, offset_of, size_of};
    use core::net::IpAddr;
    use core::str::FromStr;
    use std::collections::HashSet;

    fn ip(text: &str) -> IpAddr {
        IpAddr::from_str(text).unwrap()
    }

    /// A client's channel on a listening address of its family.
    fn client_channel(client: &str, port: u16, channel: u16) -> ClientChannel {
        let client = ip(client);
        let server = if client.is_ipv4() {
            ip("192.0.2.1")
        } else {
            ip("2001:db8::1")
        };
        ClientChannel::new(client, port, server, 3478, channel).unwrap()
    }

    /// A peer on a relayed address of its family.
    fn peer_binding(peer: &str, relay_port: u16) -> PeerBinding {
        let peer = ip(peer);
        let relayed = if peer.is_ipv4() {
            ip("192.0.2.1")
        } else {
            ip("2001:db8::1")
        };
        PeerBinding::new(peer, 5000, relayed, relay_port).unwrap()
    }

    #[test]
    fn slot_layout_is_pinned() {
        for (size, align, sequence, key, value) in [
            (
                size_of::<ChannelCacheSlot>(),
                align_of::<ChannelCacheSlot>(),
                offset_of!(ChannelCacheSlot, sequence),
                offset_of!(ChannelCacheSlot, key),
                offset_of!(ChannelCacheSlot, value),
            ),
            (
                size_of::<PeerCacheSlot>(),
                align_of::<PeerCacheSlot>(),
                offset_of!(PeerCacheSlot, sequence),
                offset_of!(PeerCacheSlot, key),
                offset_of!(PeerCacheSlot, value),
            ),
        ] {
            assert_eq!((size, align), (84, 4));
            assert_eq!(sequence, ChannelCacheSlot::SEQUENCE_OFFSET);
            assert_eq!(key, ChannelCacheSlot::KEY_OFFSET);
            assert_eq!(value, ChannelCacheSlot::VALUE_OFFSET);
        }
    }

    #[test]
    fn slot_round_trips_through_its_bytes() {
        let key = client_channel("198.51.100.7", 40000, 0x4001);
        let value = peer_binding("2001:db8::9", 49152);
        let slot = ChannelCacheSlot::new(6, key, value);
        let bytes = bytes_of(&slot);
        assert_eq!(&bytes[0..4], 6u32.to_ne_bytes());
        assert_eq!(&bytes[4..44], bytes_of(&key));
        assert_eq!(&bytes[44..84], bytes_of(&value));
        let back: ChannelCacheSlot = from_bytes(bytes);
        assert_eq!(back, slot);
        assert_eq!(
            (back.sequence(), *back.key(), *back.value()),
            (6, key, value)
        );
    }

    #[test]
    fn never_written_slot_is_empty() {
        let zero: PeerCacheSlot = from_bytes(&[0; 84]);
        assert_eq!(zero.sequence(), 0);
        assert_eq!(zero.key().family(), 0);
        assert_eq!(zero, PeerCacheSlot::default());
    }

    #[test]
    fn channel_index_is_the_packet_field_hash() {
        let key = client_channel("198.51.100.7", 40000, 0x4001);
        // What the kernel program loads from the packet: the address word and the raw fields.
        let address = [u32::from_ne_bytes([198, 51, 100, 7]), 0, 0, 0];
        let port = u16::from_ne_bytes(40000u16.to_be_bytes());
        let channel = u16::from_ne_bytes(0x4001u16.to_be_bytes());
        assert_eq!(
            key.cache_index(),
            channel_cache_index(address, port, channel)
        );
        assert!(key.cache_index() < CHANNEL_CACHE_SLOTS);
    }

    #[test]
    fn channel_index_spreads_similar_clients() {
        // 4,096 clients that differ only in the last address byte and the port, as behind one
        // NAT: they should land in nearly as many slots.
        let mut slots = HashSet::new();
        for host in 0..16u8 {
            for port in 0..256u16 {
                let key = client_channel(&std::format!("198.51.100.{host}"), 40000 + port, 0x4000);
                slots.insert(key.cache_index());
            }
        }
        // A uniform hash would leave about 3.1 % of 4,096 keys sharing a slot in 65,536.
        assert!(slots.len() > 3_900, "{} slots", slots.len());
        let v6 = client_channel("2001:db8::1", 40000, 0x4000);
        let other = client_channel("2001:db8::2", 40000, 0x4000);
        assert_ne!(v6.cache_index(), other.cache_index());
    }

    #[test]
    fn every_port_of_one_client_address_has_its_own_slot() {
        // The port sits in the top bits of the multiplied word, where multiplying by an odd
        // constant permutes it: a NAT's 65,536 ports on one address never share a slot.
        let mut slots = HashSet::new();
        for port in 0..=u16::MAX {
            slots.insert(client_channel("198.51.100.7", port, 0x4000).cache_index());
        }
        assert_eq!(slots.len(), 65_536);
    }

    #[test]
    fn peer_index_is_port_and_family() {
        let v4 = peer_binding("203.0.113.5", 49152);
        let v6 = peer_binding("2001:db8::5", 49152);
        assert_eq!(v4.cache_index(), 98_304);
        assert_eq!(v6.cache_index(), 98_305);
        assert_eq!(
            peer_binding("2001:db8::5", 65535).cache_index(),
            PEER_CACHE_SLOTS - 1
        );
    }
}
