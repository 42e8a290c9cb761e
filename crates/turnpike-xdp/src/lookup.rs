//! Finding a packet's binding: first in the direct-mapped cache, then in the hash map.
//!
//! The cache layout, its indexing and the sequence protocol user space writes it with are
//! described in `turnpike_xdp_common::cache`; this is the reading side. An array lookup is
//! inlined by the verifier, a hash-map lookup is a call that hashes the key: the cache saves
//! that call for every binding it holds, and a miss costs a few loads before the lookup of old.
//!
//! A binding found in a cache is also known not to be a hairpin: user space caches a binding
//! only if its peer is none of the relay's own addresses, and evicts the ones that become so
//! before it writes new own addresses (`turnpike_xdp_common::cache`, "What a slot may hold").
//! [`Found::screened`] says which lookup found it, so the program checks only the others.

use core::mem::MaybeUninit;
use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::maps::Array;
use turnpike_xdp_common::{
    ChannelCacheSlot, ClientChannel, FAMILY_V4, PeerBinding,
    cache::{CacheSlot, channel_cache_index, peer_cache_index},
};

use crate::packet::{Address, Aligned};
use crate::{CHANNEL_CACHE, CHANNEL_TO_PEER, PEER_CACHE, PEER_TO_CHANNEL};

/// One end of a binding, as the program works with it: a [`ClientChannel`] (client address and
/// port, listening address and port, channel) or a [`PeerBinding`] (peer address and port,
/// relayed address and port; channel zero), with the addresses as four words each and the
/// 16-bit fields raw (as loaded, big-endian bytes).
#[derive(Clone, Copy)]
pub(crate) struct End {
    /// The far end: the client or the peer.
    pub(crate) address: Address,
    /// The relay's end of the same flow: the listening or the relayed address.
    pub(crate) local: Address,
    pub(crate) port: u16,
    pub(crate) local_port: u16,
    /// The channel number (zero in a [`PeerBinding`]).
    pub(crate) channel: u16,
    pub(crate) family: u8,
}

impl End {
    /// The same end with the addresses' last three words as the constant zeros they are in an
    /// IPv4 address (user space writes them so), which lets the compiler drop the work on them.
    #[inline(always)]
    pub(crate) fn ipv4(&self) -> End {
        End {
            address: [self.address[0], 0, 0, 0],
            local: [self.local[0], 0, 0, 0],
            ..*self
        }
    }

    /// Writes the route-map key image of this end (both route types share the layout) into
    /// `key`: ten aligned words.
    ///
    /// Every word is written, with volatile stores: the compiler would otherwise merge the
    /// stores of an IPv4 address's zero words into one 8-byte store at a 4-byte-aligned stack
    /// offset, which the verifier rejects.
    #[inline(always)]
    fn write_key(&self, key: &mut MaybeUninit<Aligned<[u32; 10]>>) {
        let words = key.as_mut_ptr().cast::<u32>();
        let [channel_0, channel_1] = self.channel.to_ne_bytes();
        // SAFETY: ten words of the caller's stack slot.
        unsafe {
            write_volatile(words, self.address[0]);
            write_volatile(words.add(1), self.address[1]);
            write_volatile(words.add(2), self.address[2]);
            write_volatile(words.add(3), self.address[3]);
            write_volatile(words.add(4), self.local[0]);
            write_volatile(words.add(5), self.local[1]);
            write_volatile(words.add(6), self.local[2]);
            write_volatile(words.add(7), self.local[3]);
            write_volatile(
                words.add(8),
                u32::from_ne_bytes(pair(self.port, self.local_port)),
            );
            write_volatile(
                words.add(9),
                u32::from_ne_bytes([channel_0, channel_1, self.family, 0]),
            );
        }
    }

    /// Reads an entry (both route types share the layout: two addresses, three 16-bit fields,
    /// family) with volatile loads, as the sequence protocol requires. The family comes first,
    /// so an IPv4 entry reads one word per address: user space writes the other three as zeros.
    ///
    /// # Safety
    ///
    /// `at` must point to a 40-byte route entry, 4-byte aligned.
    #[inline(always)]
    unsafe fn read(at: *const u8) -> End {
        // SAFETY: the caller guarantees 40 readable, aligned bytes.
        unsafe {
            let family = read_volatile(at.add(38));
            let word = |offset: usize| read_volatile(at.add(offset).cast::<u32>());
            let (address, local) = if family == FAMILY_V4 {
                ([word(0), 0, 0, 0], [word(16), 0, 0, 0])
            } else {
                (
                    [word(0), word(4), word(8), word(12)],
                    [word(16), word(20), word(24), word(28)],
                )
            };
            End {
                address,
                local,
                port: read_volatile(at.add(32).cast::<u16>()),
                local_port: read_volatile(at.add(34).cast::<u16>()),
                channel: read_volatile(at.add(36).cast::<u16>()),
                family,
            }
        }
    }

    /// The fields of a route entry found in a hash map.
    ///
    /// # Safety
    ///
    /// `at` must point to a 40-byte route entry (any alignment).
    #[inline(always)]
    unsafe fn copy(at: *const u8) -> End {
        // SAFETY: the caller guarantees 40 readable bytes.
        unsafe {
            let word = |offset: usize| at.add(offset).cast::<u32>().read_unaligned();
            End {
                address: [word(0), word(4), word(8), word(12)],
                local: [word(16), word(20), word(24), word(28)],
                port: at.add(32).cast::<u16>().read_unaligned(),
                local_port: at.add(34).cast::<u16>().read_unaligned(),
                channel: at.add(36).cast::<u16>().read_unaligned(),
                family: *at.add(38),
            }
        }
    }
}

/// The other end of a binding, and whether user space screened it.
#[derive(Clone, Copy)]
pub(crate) struct Found {
    pub(crate) end: End,
    /// Found in a cache, so its peer is none of the relay's own addresses (see the module
    /// documentation); `false` for a hash-map entry, which the program has to check itself.
    pub(crate) screened: bool,
}

impl Found {
    #[inline(always)]
    const fn cached(end: End) -> Self {
        Self {
            end,
            screened: true,
        }
    }

    #[inline(always)]
    const fn mapped(end: End) -> Self {
        Self {
            end,
            screened: false,
        }
    }
}

/// The peer end bound to a client's channel (`client` is its [`ClientChannel`] key).
#[inline(always)]
pub(crate) fn peer_of(client: &End) -> Option<Found> {
    let index = channel_cache_index(client.address, client.port, client.channel);
    if let Some(found) = cached(&CHANNEL_CACHE, index, client) {
        return Some(Found::cached(found));
    }
    let mut key = MaybeUninit::uninit();
    client.write_key(&mut key);
    // SAFETY: `key` holds a `ClientChannel` image (see `End::write_key`). The value lives in the
    // map, which is not preallocated: an element user space replaces or deletes meanwhile stays
    // intact until this program is done (RCU), so the worst a race can do is send one datagram
    // by the binding that is being replaced.
    let value = unsafe { CHANNEL_TO_PEER.get(&*key.as_ptr().cast::<ClientChannel>()) }?;
    // SAFETY: a valid reference to a 40-byte entry.
    Some(Found::mapped(unsafe {
        End::copy((value as *const PeerBinding).cast())
    }))
}

/// The client end bound to a peer and relayed port (`peer` is its [`PeerBinding`] key).
#[inline(always)]
pub(crate) fn client_of(peer: &End) -> Option<Found> {
    let index = peer_cache_index(peer.family, u16::from_be(peer.local_port));
    if let Some(found) = cached(&PEER_CACHE, index, peer) {
        return Some(Found::cached(found));
    }
    let mut key = MaybeUninit::uninit();
    peer.write_key(&mut key);
    // SAFETY: as in `peer_of`.
    let value = unsafe { PEER_TO_CHANNEL.get(&*key.as_ptr().cast::<PeerBinding>()) }?;
    // SAFETY: a valid reference to a 40-byte entry.
    Some(Found::mapped(unsafe {
        End::copy((value as *const ClientChannel).cast())
    }))
}

/// The value of the cache slot at `index` if the slot holds `key` and was not being written
/// while it was read (see the sequence protocol in `turnpike_xdp_common::cache`).
///
/// The key is compared field by field as it is read, so a miss stops early and nothing but the
/// value has to be kept in registers. An IPv4 key is compared on the first word of each address
/// only: user space writes every IPv4 address with three zero words after it, and the family
/// byte (compared first) says the slot holds one. The program is compiled once per IP version,
/// so the family test is settled at compile time.
#[inline(always)]
fn cached<K, V>(cache: &Array<CacheSlot<K, V>>, index: u32, key: &End) -> Option<End> {
    let slot = cache.get_ptr(index)?.cast::<u8>();
    // SAFETY: `slot` points to a whole slot in the map (84 bytes, 4-byte aligned), which stays
    // allocated while the program runs; the offsets and sizes are inside it.
    unsafe {
        let sequence_at = slot.add(ChannelCacheSlot::SEQUENCE_OFFSET).cast::<u32>();
        let sequence = read_volatile(sequence_at);
        if sequence & 1 != 0 {
            return None;
        }
        let held = slot.add(ChannelCacheSlot::KEY_OFFSET);
        let word = |offset: usize| read_volatile(held.add(offset).cast::<u32>());
        if read_volatile(held.add(38)) != key.family
            || word(32) != u32::from_ne_bytes(pair(key.port, key.local_port))
            || read_volatile(held.add(36).cast::<u16>()) != key.channel
            || word(0) != key.address[0]
            || word(16) != key.local[0]
        {
            return None;
        }
        if key.family != FAMILY_V4
            && (word(4) != key.address[1]
                || word(8) != key.address[2]
                || word(12) != key.address[3]
                || word(20) != key.local[1]
                || word(24) != key.local[2]
                || word(28) != key.local[3])
        {
            return None;
        }
        let value = End::read(slot.add(ChannelCacheSlot::VALUE_OFFSET));
        if read_volatile(sequence_at) != sequence {
            return None;
        }
        Some(value)
    }
}

/// Two raw 16-bit fields as the four bytes they occupy in memory, in order.
#[inline(always)]
fn pair(first: u16, second: u16) -> [u8; 4] {
    let [a, b] = first.to_ne_bytes();
    let [c, d] = second.to_ne_bytes();
    [a, b, c, d]
}
