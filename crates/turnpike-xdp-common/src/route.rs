//! Keys and values of the two channel maps.
//!
//! # One map per direction, not one per family pair
//!
//! A channel binding joins a client of one address family to a peer of the same or the other
//! family, so there are four family pairs. One could keep a map per pair and direction (eight
//! maps, each with addresses of exactly 4 or 16 bytes). Turnpike keeps one map per direction
//! instead and stores every address as a 16-byte field plus a family byte:
//!
//! - installing or removing a binding writes exactly two entries in two fixed maps, whatever the
//!   families, so user space cannot pick the wrong map or forget one of eight, and a binding whose
//!   peer changes family cannot leave an entry behind in a map nobody looks at any more;
//! - the kernel program does one lookup per packet either way: it knows the family of the packet
//!   it holds; the family of the other side is in the value it finds;
//! - the cost is 24 wasted bytes per IPv4 entry in keys and values, a few megabytes at the
//!   default capacity, and hashing 40 bytes per lookup.
//!
//! The family is part of every key, so an IPv4 address and an IPv6 address never compare equal
//! (not even `::ffff:a.b.c.d` and `a.b.c.d`), and an IPv4 address is always its four bytes
//! followed by twelve zeros, so every address has exactly one byte image and equal keys hash
//! equally.
//!
//! # Both ends of each flow, the relay's too
//!
//! Each entry holds a whole flow of the relay: the far end (client or peer) *and* the relay's
//! own end of it (the listening address and port the client sends to, or the relayed address
//! and port the peer sends to). So a relay with several listening addresses or ports keeps one
//! client's allocations on each of them apart (the same client address, port and channel number
//! on two listening addresses are two keys), and the program takes the source of every datagram
//! it sends from the entry it found: a datagram to a peer leaves from the relayed address, which
//! may differ from the listening address (`--relay-ip`) and be of the other family, and one to a
//! client leaves from the address and port the client wrote to. Both ends of a flow are of one
//! family, so one family byte serves both addresses.
//!
//! # Field order
//!
//! The two addresses come first, then the three 16-bit fields, then the family byte and a zero
//! byte: every field sits at an offset that is a multiple of its natural width (0, 16, 32, 34,
//! 36, 38), and the entry is ten 4-byte words. The kernel program builds keys on its stack in an
//! 8-byte-aligned slot and copies the addresses with word-sized stores; the verifier rejects
//! misaligned stack accesses, so the layout keeps all of them aligned.
//!
//! # Why two types serve as both keys and values
//!
//! Client to peer, the key is (client address and port, listening address and port, channel) and
//! the value (peer address and port, relayed address and port); peer to client, it is exactly the
//! other way round. So [`ClientChannel`] is the key of one map and the value of the other, and
//! [`PeerBinding`] the reverse: a binding is the pair, written once in each orientation. The two
//! share one layout (a [`PeerBinding`] has zeros where a [`ClientChannel`] has its channel
//! number), so the program reads and writes both with the same code.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Family byte of an IPv4 address (the IP version number).
pub const FAMILY_V4: u8 = 4;
/// Family byte of an IPv6 address (the IP version number).
pub const FAMILY_V6: u8 = 6;

/// Size in bytes of both route entry types.
pub const ROUTE_ENTRY_LEN: usize = 40;

/// An address in the 16-byte field layout: IPv4 in the first four bytes, zeros after.
#[inline(always)]
pub const fn address_octets(ip: IpAddr) -> (u8, [u8; 16]) {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (
                FAMILY_V4,
                [o[0], o[1], o[2], o[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            )
        }
        IpAddr::V6(v6) => (FAMILY_V6, v6.octets()),
    }
}

/// The standard-library address for a family byte and 16-byte field, or `None` for a family
/// byte that is neither 4 nor 6 (a never-written entry).
#[inline(always)]
pub const fn address_from_octets(family: u8, o: &[u8; 16]) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], o[3]))),
        FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from_octets(*o))),
        _ => None,
    }
}

/// The family byte and address fields of two addresses of one family, or `None` if their
/// families differ.
#[inline(always)]
const fn same_family(remote: IpAddr, local: IpAddr) -> Option<(u8, [u8; 16], [u8; 16])> {
    let (family, remote) = address_octets(remote);
    let (local_family, local) = address_octets(local);
    if family == local_family {
        Some((family, remote, local))
    } else {
        None
    }
}

/// A client's end of a channel: its transport address, the relay's listening address and port
/// it talks to, and the channel number it uses.
///
/// Key of `CHANNEL_TO_PEER` (built from the source, destination and channel number of a
/// ChannelData datagram) and value of `PEER_TO_CHANNEL` (where, from where and with which
/// channel number to send a peer's datagram).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ClientChannel {
    /// The client's address as the relay sees it (its server-reflexive address).
    client: [u8; 16],
    /// The relay's listening address the client sends to.
    server: [u8; 16],
    /// The client's UDP port, big-endian.
    client_port: [u8; 2],
    /// The relay's listening port, big-endian.
    server_port: [u8; 2],
    /// The channel number (0x4000–0x4FFF, or to 0x7FFF with RFC 5766's range), big-endian, as
    /// in the ChannelData header.
    channel: [u8; 2],
    /// [`FAMILY_V4`] or [`FAMILY_V6`], of both addresses.
    family: u8,
    /// Always zero (the entry is ten whole words).
    reserved: u8,
}

impl ClientChannel {
    /// Builds the entry from the client's and the listening transport addresses and a channel
    /// number (host order), or `None` if the two addresses are of different families (a client
    /// only ever reaches a listening address of its own family).
    #[inline(always)]
    pub const fn new(
        client: IpAddr,
        client_port: u16,
        server: IpAddr,
        server_port: u16,
        channel: u16,
    ) -> Option<Self> {
        let Some((family, client, server)) = same_family(client, server) else {
            return None;
        };
        Some(Self::from_wire(
            family,
            client,
            server,
            client_port.to_be_bytes(),
            server_port.to_be_bytes(),
            channel.to_be_bytes(),
        ))
    }

    /// Builds the entry from fields as they appear in a packet (network order). The caller keeps
    /// the invariant that an IPv4 address is followed by twelve zero bytes.
    #[inline(always)]
    pub const fn from_wire(
        family: u8,
        client: [u8; 16],
        server: [u8; 16],
        client_port: [u8; 2],
        server_port: [u8; 2],
        channel: [u8; 2],
    ) -> Self {
        Self {
            client,
            server,
            client_port,
            server_port,
            channel,
            family,
            reserved: 0,
        }
    }

    /// The client's address, or `None` in a never-written entry.
    #[inline(always)]
    pub const fn client(&self) -> Option<IpAddr> {
        address_from_octets(self.family, &self.client)
    }

    /// The listening address, or `None` in a never-written entry.
    #[inline(always)]
    pub const fn server(&self) -> Option<IpAddr> {
        address_from_octets(self.family, &self.server)
    }

    /// The client's address field (IPv4 in the first four bytes).
    #[inline(always)]
    pub const fn client_octets(&self) -> &[u8; 16] {
        &self.client
    }

    /// The family byte.
    #[inline(always)]
    pub const fn family(&self) -> u8 {
        self.family
    }

    /// Whether the client is reached over IPv6.
    #[inline(always)]
    pub const fn is_v6(&self) -> bool {
        self.family == FAMILY_V6
    }

    /// The client's port, in host order.
    #[inline(always)]
    pub const fn client_port(&self) -> u16 {
        u16::from_be_bytes(self.client_port)
    }

    /// The client's port as it appears in a packet.
    #[inline(always)]
    pub const fn client_port_wire(&self) -> [u8; 2] {
        self.client_port
    }

    /// The listening port, in host order.
    #[inline(always)]
    pub const fn server_port(&self) -> u16 {
        u16::from_be_bytes(self.server_port)
    }

    /// The channel number, in host order.
    #[inline(always)]
    pub const fn channel(&self) -> u16 {
        u16::from_be_bytes(self.channel)
    }

    /// The channel number as it appears in a ChannelData header.
    #[inline(always)]
    pub const fn channel_wire(&self) -> [u8; 2] {
        self.channel
    }
}

impl fmt::Debug for ClientChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientChannel")
            .field("client", &Address(self.family, &self.client))
            .field("client_port", &self.client_port())
            .field("server", &Address(self.family, &self.server))
            .field("server_port", &self.server_port())
            .field("channel", &format_args!("{:#06x}", self.channel()))
            .finish()
    }
}

/// A peer's end of a channel: the peer's transport address and the relayed address and port it
/// talks to.
///
/// Value of `CHANNEL_TO_PEER` (where to send a client's ChannelData payload, and from which
/// relayed address and port) and key of `PEER_TO_CHANNEL` (built from the source and
/// destination of a peer's datagram). The relayed address is of the peer's family.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PeerBinding {
    /// The peer's address.
    peer: [u8; 16],
    /// The relayed address (the relay's address the peer sends to and receives from).
    relayed: [u8; 16],
    /// The peer's UDP port, big-endian.
    peer_port: [u8; 2],
    /// The relayed port of the allocation, big-endian.
    relay_port: [u8; 2],
    /// Always zero: where a [`ClientChannel`] has its channel number.
    reserved: [u8; 2],
    /// [`FAMILY_V4`] or [`FAMILY_V6`], of both addresses.
    family: u8,
    /// Always zero.
    reserved_last: u8,
}

impl PeerBinding {
    /// Builds the entry from the peer's and the relayed transport addresses (host-order ports),
    /// or `None` if the two addresses are of different families.
    #[inline(always)]
    pub const fn new(
        peer: IpAddr,
        peer_port: u16,
        relayed: IpAddr,
        relay_port: u16,
    ) -> Option<Self> {
        let Some((family, peer, relayed)) = same_family(peer, relayed) else {
            return None;
        };
        Some(Self::from_wire(
            family,
            peer,
            relayed,
            peer_port.to_be_bytes(),
            relay_port.to_be_bytes(),
        ))
    }

    /// Builds the entry from fields as they appear in a packet (network order). The caller keeps
    /// the invariant that an IPv4 address is followed by twelve zero bytes.
    #[inline(always)]
    pub const fn from_wire(
        family: u8,
        peer: [u8; 16],
        relayed: [u8; 16],
        peer_port: [u8; 2],
        relay_port: [u8; 2],
    ) -> Self {
        Self {
            peer,
            relayed,
            peer_port,
            relay_port,
            reserved: [0; 2],
            family,
            reserved_last: 0,
        }
    }

    /// The peer's address, or `None` in a never-written entry.
    #[inline(always)]
    pub const fn peer(&self) -> Option<IpAddr> {
        address_from_octets(self.family, &self.peer)
    }

    /// The relayed address, or `None` in a never-written entry.
    #[inline(always)]
    pub const fn relayed(&self) -> Option<IpAddr> {
        address_from_octets(self.family, &self.relayed)
    }

    /// The peer's address field (IPv4 in the first four bytes).
    #[inline(always)]
    pub const fn peer_octets(&self) -> &[u8; 16] {
        &self.peer
    }

    /// The family byte.
    #[inline(always)]
    pub const fn family(&self) -> u8 {
        self.family
    }

    /// Whether the peer is reached over IPv6.
    #[inline(always)]
    pub const fn is_v6(&self) -> bool {
        self.family == FAMILY_V6
    }

    /// The peer's port, in host order.
    #[inline(always)]
    pub const fn peer_port(&self) -> u16 {
        u16::from_be_bytes(self.peer_port)
    }

    /// The peer's port as it appears in a packet.
    #[inline(always)]
    pub const fn peer_port_wire(&self) -> [u8; 2] {
        self.peer_port
    }

    /// The relayed port, in host order.
    #[inline(always)]
    pub const fn relay_port(&self) -> u16 {
        u16::from_be_bytes(self.relay_port)
    }

    /// The relayed port as it appears in a packet.
    #[inline(always)]
    pub const fn relay_port_wire(&self) -> [u8; 2] {
        self.relay_port
    }
}

impl fmt::Debug for PeerBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerBinding")
            .field("peer", &Address(self.family, &self.peer))
            .field("peer_port", &self.peer_port())
            .field("relayed", &Address(self.family, &self.relayed))
            .field("relay_port", &self.relay_port())
            .finish()
    }
}

/// Shows an address field as an address, or as raw bytes if its family byte is invalid.
struct Address<'a>(u8, &'a [u8; 16]);

impl fmt::Debug for Address<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match address_from_octets(self.0, self.1) {
            Some(ip) => write!(f, "{ip}"),
            None => write!(f, "family {} {:?}", self.0, self.1),
        }
    }
}

// SAFETY: both are `#[repr(C)]`, `Copy`, made only of `u8`s and `u8` arrays (so they have no
// padding and every bit pattern is a valid value), and hold no pointers.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ClientChannel {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for PeerBinding {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{bytes_of, from_bytes};
    use core::mem::{align_of, offset_of, size_of};
    use core::str::FromStr;
    use std::format;

    fn ip(text: &str) -> IpAddr {
        IpAddr::from_str(text).unwrap()
    }

    fn client(client: &str, server: &str, channel: u16) -> ClientChannel {
        ClientChannel::new(ip(client), 40000, ip(server), 3478, channel).unwrap()
    }

    fn peer(peer: &str, relayed: &str) -> PeerBinding {
        PeerBinding::new(ip(peer), 5000, ip(relayed), 49152).unwrap()
    }

    #[test]
    fn client_channel_layout_is_pinned() {
        assert_eq!(size_of::<ClientChannel>(), ROUTE_ENTRY_LEN);
        assert_eq!(align_of::<ClientChannel>(), 1);
        assert_eq!(offset_of!(ClientChannel, client), 0);
        assert_eq!(offset_of!(ClientChannel, server), 16);
        assert_eq!(offset_of!(ClientChannel, client_port), 32);
        assert_eq!(offset_of!(ClientChannel, server_port), 34);
        assert_eq!(offset_of!(ClientChannel, channel), 36);
        assert_eq!(offset_of!(ClientChannel, family), 38);
        assert_eq!(offset_of!(ClientChannel, reserved), 39);
    }

    #[test]
    fn peer_binding_layout_is_pinned() {
        // The same offsets as `ClientChannel`: the kernel program reads both with one function.
        assert_eq!(size_of::<PeerBinding>(), ROUTE_ENTRY_LEN);
        assert_eq!(align_of::<PeerBinding>(), 1);
        assert_eq!(offset_of!(PeerBinding, peer), 0);
        assert_eq!(offset_of!(PeerBinding, relayed), 16);
        assert_eq!(offset_of!(PeerBinding, peer_port), 32);
        assert_eq!(offset_of!(PeerBinding, relay_port), 34);
        assert_eq!(offset_of!(PeerBinding, reserved), 36);
        assert_eq!(offset_of!(PeerBinding, family), 38);
        assert_eq!(offset_of!(PeerBinding, reserved_last), 39);
    }

    #[test]
    fn client_channel_round_trips_through_its_bytes() {
        let key = client("198.51.100.7", "192.0.2.1", 0x4001);
        let bytes = bytes_of(&key);
        assert_eq!(
            bytes,
            [
                198, 51, 100, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0, // client, IPv4 then zeros
                192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // listening address
                0x9c, 0x40, // port 40000
                0x0d, 0x96, // listening port 3478
                0x40, 0x01, // channel
                4,    // family
                0,    // reserved
            ]
        );
        let back: ClientChannel = from_bytes(bytes);
        assert_eq!(back, key);
        assert_eq!(back.client(), Some(ip("198.51.100.7")));
        assert_eq!(back.server(), Some(ip("192.0.2.1")));
        assert_eq!(back.client_port(), 40000);
        assert_eq!(back.server_port(), 3478);
        assert_eq!(back.channel(), 0x4001);
        assert_eq!(back.client_port_wire(), [0x9c, 0x40]);
        assert_eq!(back.channel_wire(), [0x40, 0x01]);
        assert!(!back.is_v6());
    }

    #[test]
    fn peer_binding_round_trips_through_its_bytes() {
        let binding = peer("2001:db8::9", "2001:db8::1");
        let bytes = bytes_of(&binding);
        assert_eq!(
            bytes,
            [
                0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, // peer
                0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, // relayed address
                0x13, 0x88, // port 5000
                0xc0, 0x00, // relayed port 49152
                0, 0, // reserved
                6, // family
                0, // reserved
            ]
        );
        let back: PeerBinding = from_bytes(bytes);
        assert_eq!(back, binding);
        assert_eq!(back.peer(), Some(ip("2001:db8::9")));
        assert_eq!(back.relayed(), Some(ip("2001:db8::1")));
        assert_eq!(back.peer_port(), 5000);
        assert_eq!(back.relay_port(), 49152);
        assert!(back.is_v6());
    }

    #[test]
    fn the_two_ends_of_a_flow_must_share_a_family() {
        assert_eq!(
            ClientChannel::new(ip("198.51.100.7"), 1, ip("2001:db8::1"), 3478, 0x4000),
            None
        );
        assert_eq!(
            PeerBinding::new(ip("2001:db8::9"), 1, ip("192.0.2.1"), 49152),
            None
        );
    }

    #[test]
    fn one_client_on_two_listening_addresses_has_two_keys() {
        let first = client("198.51.100.7", "192.0.2.1", 0x4001);
        let second = client("198.51.100.7", "192.0.2.2", 0x4001);
        assert_ne!(first, second);
        let other_port =
            ClientChannel::new(ip("198.51.100.7"), 40000, ip("192.0.2.1"), 3479, 0x4001);
        assert_ne!(Some(first), other_port);
    }

    #[test]
    fn mapped_ipv6_never_equals_the_ipv4_address() {
        let v4 = peer("192.0.2.1", "192.0.2.9");
        let mapped = peer("::ffff:192.0.2.1", "::ffff:192.0.2.9");
        assert_ne!(v4, mapped);
        assert_ne!(bytes_of(&v4), bytes_of(&mapped));
    }

    #[test]
    fn never_written_entry_has_no_address() {
        let zero: ClientChannel = from_bytes(&[0; ROUTE_ENTRY_LEN]);
        assert_eq!(zero.family(), 0);
        assert_eq!(zero.client(), None);
        assert_eq!(zero.server(), None);
        let zero: PeerBinding = from_bytes(&[0; ROUTE_ENTRY_LEN]);
        assert_eq!(zero.peer(), None);
        assert_eq!(zero.relayed(), None);
    }

    #[test]
    fn wire_constructor_matches_the_typed_one() {
        let typed = client("192.0.2.1", "192.0.2.200", 0x4abc);
        let (family, octets) = address_octets(ip("192.0.2.1"));
        let (_, server) = address_octets(ip("192.0.2.200"));
        let wire = ClientChannel::from_wire(
            family,
            octets,
            server,
            [0x9c, 0x40],
            [0x0d, 0x96],
            [0x4a, 0xbc],
        );
        assert_eq!(typed, wire);
    }

    #[test]
    fn debug_shows_addresses_and_host_order_numbers() {
        let key = client("198.51.100.7", "192.0.2.1", 0x4001);
        assert_eq!(
            format!("{key:?}"),
            "ClientChannel { client: 198.51.100.7, client_port: 40000, server: 192.0.2.1, \
             server_port: 3478, channel: 0x4001 }"
        );
        let binding = peer("203.0.113.5", "192.0.2.1");
        assert_eq!(
            format!("{binding:?}"),
            "PeerBinding { peer: 203.0.113.5, peer_port: 5000, relayed: 192.0.2.1, \
             relay_port: 49152 }"
        );
    }
}
