//! What the kernel program did with each frame, counted per CPU.
//!
//! Every frame the program sees ends in exactly one [`Outcome`], and the program adds the frame
//! to that outcome's [`Counter`] in a per-CPU array (no per-packet events: a per-CPU add is a few
//! instructions, an event per packet is a ring-buffer write and a user-space wake-up). User space
//! sums the CPUs when it reads. Relayed frames are counted per direction and family pair; frames
//! handed to user space (`XDP_PASS`) per reason, so an operator can see why traffic is not taking
//! the fast path. There is no drop outcome: the program never drops a frame; whatever it does
//! not relay itself, the kernel stack and the user-space relay see unchanged.

use core::fmt;

/// Packets and bytes of one outcome on one CPU.
///
/// The one type in this crate with native-endian integers: the kernel increments it on every
/// packet and user space on the same machine reads it, nothing compares it with packet bytes,
/// and big-endian storage would cost two byte swaps per packet for nothing. `bytes` counts whole
/// frames as they arrived (Ethernet header included), before any rewrite.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct Counter {
    /// Frames.
    pub packets: u64,
    /// Bytes of those frames as received.
    pub bytes: u64,
}

// SAFETY: `#[repr(C)]`, `Copy`, two `u64`s (no padding, every bit pattern valid), no pointers.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Counter {}

/// How the kernel program disposed of a frame; the index of its counter.
///
/// The first eight are relayed with `XDP_TX`: `ClientToPeer` is ChannelData from a client sent
/// on as plain UDP to the peer, `PeerToClient` the reverse; the digits are the family the frame
/// arrived in, then the family it leaves in. All others are passed to the kernel stack unchanged
/// (`XDP_PASS`), for the user-space relay (or the host) to handle.
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Outcome {
    ClientToPeer4To4 = 0,
    ClientToPeer4To6 = 1,
    ClientToPeer6To4 = 2,
    ClientToPeer6To6 = 3,
    PeerToClient4To4 = 4,
    PeerToClient4To6 = 5,
    PeerToClient6To4 = 6,
    PeerToClient6To6 = 7,
    /// No configuration written yet (listen port 0).
    ConfigUnset = 8,
    /// Not IPv4 or IPv6 (ARP, VLAN-tagged frames, ...).
    NotIp = 9,
    /// Shorter than its headers, or IP and UDP lengths disagree with each other or the frame.
    Malformed = 10,
    /// IPv4 with options (header longer than 20 bytes).
    Ipv4Options = 11,
    /// An IPv4 fragment.
    Ipv4Fragment = 12,
    /// IPv6 whose next header is an extension header.
    Ipv6ExtensionHeader = 13,
    /// IP but not UDP.
    NotUdp = 14,
    /// UDP to a port that is neither the listening port nor in the relayed range.
    OtherPort = 15,
    /// To the listening port but not ChannelData (STUN requests and the like).
    NotChannelData = 16,
    /// ChannelData whose length field does not fit the datagram (longer than the payload, or
    /// followed by more than 3 bytes).
    BadChannelData = 17,
    /// ChannelData for a (client, channel) with no binding in the map.
    NoChannel = 18,
    /// UDP from a (peer, relayed port) with no binding in the map (permissions and Data
    /// indications are user space's).
    NoPeerBinding = 19,
    /// The peer is the relay itself (one of its own addresses): hairpins are user space's.
    Hairpin = 20,
    /// The rewritten datagram would have the same source and destination address.
    PacketLoop = 21,
    /// A UDP checksum of zero that cannot be kept: the datagram would leave as IPv6, where zero
    /// is not allowed, or arrived as IPv6, where it is invalid.
    ZeroChecksum = 22,
    /// The rewritten frame would exceed the interface's MTU.
    TooBig = 23,
    /// `bpf_xdp_adjust_head`/`_tail` failed (no headroom or tailroom); the frame was left
    /// unchanged.
    AdjustFailed = 24,
}

impl Outcome {
    /// Number of outcomes.
    pub const COUNT: u32 = 25;

    /// Index of a counter that is not an outcome: datagrams the program relayed by resizing at
    /// the tail because the driver refused to move the frame start forwards
    /// ([`crate::config::AdjustMode::Auto`]). Each is counted here *and* under its outcome.
    pub const HEAD_REFUSED_INDEX: u32 = Self::COUNT;

    /// Index of the other counter that is not an outcome: datagrams whose frame start the driver
    /// let the program move forwards in [`crate::config::AdjustMode::Auto`], the evidence that
    /// it leaves headroom. Also counted under their outcome.
    pub const HEAD_GREW_INDEX: u32 = Self::COUNT + 1;

    /// Size of the counters array: the outcomes, [`Outcome::HEAD_REFUSED_INDEX`] and
    /// [`Outcome::HEAD_GREW_INDEX`].
    pub const COUNTER_SLOTS: u32 = Self::COUNT + 2;

    /// Every outcome, in index order.
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::ClientToPeer4To4,
        Self::ClientToPeer4To6,
        Self::ClientToPeer6To4,
        Self::ClientToPeer6To6,
        Self::PeerToClient4To4,
        Self::PeerToClient4To6,
        Self::PeerToClient6To4,
        Self::PeerToClient6To6,
        Self::ConfigUnset,
        Self::NotIp,
        Self::Malformed,
        Self::Ipv4Options,
        Self::Ipv4Fragment,
        Self::Ipv6ExtensionHeader,
        Self::NotUdp,
        Self::OtherPort,
        Self::NotChannelData,
        Self::BadChannelData,
        Self::NoChannel,
        Self::NoPeerBinding,
        Self::Hairpin,
        Self::PacketLoop,
        Self::ZeroChecksum,
        Self::TooBig,
        Self::AdjustFailed,
    ];

    /// The relayed outcome for a client-to-peer datagram between these families.
    #[inline(always)]
    pub const fn client_to_peer(from_v6: bool, to_v6: bool) -> Self {
        match (from_v6, to_v6) {
            (false, false) => Self::ClientToPeer4To4,
            (false, true) => Self::ClientToPeer4To6,
            (true, false) => Self::ClientToPeer6To4,
            (true, true) => Self::ClientToPeer6To6,
        }
    }

    /// The relayed outcome for a peer-to-client datagram between these families.
    #[inline(always)]
    pub const fn peer_to_client(from_v6: bool, to_v6: bool) -> Self {
        match (from_v6, to_v6) {
            (false, false) => Self::PeerToClient4To4,
            (false, true) => Self::PeerToClient4To6,
            (true, false) => Self::PeerToClient6To4,
            (true, true) => Self::PeerToClient6To6,
        }
    }

    /// Index into the counters array.
    #[inline(always)]
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// Whether the frame was relayed (`XDP_TX`) rather than passed (`XDP_PASS`).
    #[inline(always)]
    pub const fn is_relayed(self) -> bool {
        (self as u32) < Self::ConfigUnset as u32
    }

    /// A stable snake-case name, for metric labels and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ClientToPeer4To4 => "client_to_peer_4to4",
            Self::ClientToPeer4To6 => "client_to_peer_4to6",
            Self::ClientToPeer6To4 => "client_to_peer_6to4",
            Self::ClientToPeer6To6 => "client_to_peer_6to6",
            Self::PeerToClient4To4 => "peer_to_client_4to4",
            Self::PeerToClient4To6 => "peer_to_client_4to6",
            Self::PeerToClient6To4 => "peer_to_client_6to4",
            Self::PeerToClient6To6 => "peer_to_client_6to6",
            Self::ConfigUnset => "config_unset",
            Self::NotIp => "not_ip",
            Self::Malformed => "malformed",
            Self::Ipv4Options => "ipv4_options",
            Self::Ipv4Fragment => "ipv4_fragment",
            Self::Ipv6ExtensionHeader => "ipv6_extension_header",
            Self::NotUdp => "not_udp",
            Self::OtherPort => "other_port",
            Self::NotChannelData => "not_channel_data",
            Self::BadChannelData => "bad_channel_data",
            Self::NoChannel => "no_channel",
            Self::NoPeerBinding => "no_peer_binding",
            Self::Hairpin => "hairpin",
            Self::PacketLoop => "packet_loop",
            Self::ZeroChecksum => "zero_checksum",
            Self::TooBig => "too_big",
            Self::AdjustFailed => "adjust_failed",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{bytes_of, from_bytes};
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn counter_layout_is_pinned() {
        assert_eq!(size_of::<Counter>(), 16);
        assert_eq!(align_of::<Counter>(), 8);
        assert_eq!(offset_of!(Counter, packets), 0);
        assert_eq!(offset_of!(Counter, bytes), 8);
        let counter = Counter {
            packets: 1,
            bytes: 0x0102,
        };
        let mut expected = [0u8; 16];
        expected[..8].copy_from_slice(&1u64.to_ne_bytes());
        expected[8..].copy_from_slice(&0x0102u64.to_ne_bytes());
        assert_eq!(bytes_of(&counter), expected);
        assert_eq!(from_bytes::<Counter>(&expected), counter);
    }

    #[test]
    fn outcomes_are_listed_in_index_order_without_gaps() {
        for (index, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(outcome.index() as usize, index, "{outcome}");
        }
        assert_eq!(size_of::<Outcome>(), 4);
    }

    #[test]
    fn exactly_the_first_eight_outcomes_are_relayed() {
        let relayed: std::vec::Vec<_> = Outcome::ALL.iter().filter(|o| o.is_relayed()).collect();
        assert_eq!(relayed.len(), 8);
        for from_v6 in [false, true] {
            for to_v6 in [false, true] {
                assert!(Outcome::client_to_peer(from_v6, to_v6).is_relayed());
                assert!(Outcome::peer_to_client(from_v6, to_v6).is_relayed());
            }
        }
        assert_eq!(
            Outcome::client_to_peer(false, true),
            Outcome::ClientToPeer4To6
        );
        assert_eq!(
            Outcome::peer_to_client(true, false),
            Outcome::PeerToClient6To4
        );
    }

    #[test]
    fn outcome_names_are_unique() {
        for (i, a) in Outcome::ALL.iter().enumerate() {
            for b in &Outcome::ALL[i + 1..] {
                assert_ne!(a.as_str(), b.as_str());
            }
        }
    }
}
