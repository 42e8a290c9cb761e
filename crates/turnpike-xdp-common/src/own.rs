//! The relay's own address per family: the relayed address of its family, and what the program
//! tests for hairpins.
//!
//! Every datagram the kernel program sends to a peer leaves from the relayed address in the
//! binding it found (`route`), and user space writes there the relay's own address of the peer's
//! family: the `--relay-ip` of that family, else a specific listening address, else the
//! interface's (discovered, not configured). The same addresses go into this one-entry array,
//! where the program looks for bindings whose peer is the relay itself (hairpins, which user
//! space relays).
//!
//! Why user space and not the kernel learns it: learning it in the kernel from the destination of
//! incoming packets (a) happens per CPU if the map is per-CPU, leaving CPUs that have seen no
//! packet of a family without an address, and (b) learns whatever a packet was sent to,
//! including broadcast, multicast and link-local destinations. An ordinary (not per-CPU) array
//! written by user space from the interface's unicast addresses is the same on every CPU and
//! holds only addresses the relay can be reached at.
//!
//! A family whose field is all zeros is unset (neither `0.0.0.0` nor `::` is ever an address
//! the relay sends from). User space installs no binding whose peer is of an unset family, so
//! such channels stay in user space; it never causes a drop, and a single-stack relay relays its
//! own family at full speed.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::route::PeerBinding;

/// The relay's own IPv4 and IPv6 address, each all zeros when unknown.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct OwnAddresses {
    /// The relay's IPv4 address in network order, or zeros.
    ipv4: [u8; 4],
    /// The relay's IPv6 address in network order, or zeros.
    ipv6: [u8; 16],
}

impl OwnAddresses {
    /// No address known: what the kernel reads before user space writes the map.
    pub const UNSET: Self = Self {
        ipv4: [0; 4],
        ipv6: [0; 16],
    };

    /// Builds the value; `None` (or an unspecified address) leaves that family unset.
    pub fn new(ipv4: Option<Ipv4Addr>, ipv6: Option<Ipv6Addr>) -> Self {
        Self {
            ipv4: ipv4.map_or([0; 4], |ip| ip.octets()),
            ipv6: ipv6.map_or([0; 16], |ip| ip.octets()),
        }
    }

    /// The IPv4 address bytes (zeros when unset).
    #[inline(always)]
    pub const fn ipv4_octets(&self) -> &[u8; 4] {
        &self.ipv4
    }

    /// The IPv6 address bytes (zeros when unset).
    #[inline(always)]
    pub const fn ipv6_octets(&self) -> &[u8; 16] {
        &self.ipv6
    }

    /// The IPv4 address, if set.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        let ip = Ipv4Addr::from(self.ipv4);
        (!ip.is_unspecified()).then_some(ip)
    }

    /// The IPv6 address, if set.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        let ip = Ipv6Addr::from(self.ipv6);
        (!ip.is_unspecified()).then_some(ip)
    }

    /// The own address of a family (`true`: IPv6), if set.
    pub fn of_family(&self, v6: bool) -> Option<IpAddr> {
        if v6 {
            self.ipv6().map(IpAddr::V6)
        } else {
            self.ipv4().map(IpAddr::V4)
        }
    }

    /// Whether `peer`'s address is the relay's own address of its family, the case the program
    /// passes to user space as a hairpin. An unset address matches nothing.
    pub fn includes_peer(&self, peer: &PeerBinding) -> bool {
        match peer.peer() {
            Some(IpAddr::V4(ip)) => self.ipv4() == Some(ip),
            Some(IpAddr::V6(ip)) => self.ipv6() == Some(ip),
            None => false,
        }
    }
}

impl fmt::Debug for OwnAddresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnAddresses")
            .field("ipv4", &self.ipv4())
            .field("ipv6", &self.ipv6())
            .finish()
    }
}

// SAFETY: `#[repr(C)]`, `Copy`, made only of `u8` arrays (no padding, every bit pattern valid),
// no pointers.
#[cfg(feature = "user")]
unsafe impl aya::Pod for OwnAddresses {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{bytes_of, from_bytes};
    use core::mem::{align_of, offset_of, size_of};
    use core::str::FromStr;
    use std::format;

    #[test]
    fn own_addresses_layout_is_pinned() {
        assert_eq!(size_of::<OwnAddresses>(), 20);
        assert_eq!(align_of::<OwnAddresses>(), 1);
        assert_eq!(offset_of!(OwnAddresses, ipv4), 0);
        assert_eq!(offset_of!(OwnAddresses, ipv6), 4);
    }

    #[test]
    fn own_addresses_round_trip_through_their_bytes() {
        let own = OwnAddresses::new(
            Some(Ipv4Addr::new(192, 0, 2, 10)),
            Some(Ipv6Addr::from_str("2001:db8::10").unwrap()),
        );
        let bytes = bytes_of(&own);
        assert_eq!(
            bytes,
            [
                192, 0, 2, 10, // IPv4
                0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, // IPv6
            ]
        );
        let back: OwnAddresses = from_bytes(bytes);
        assert_eq!(back, own);
        assert_eq!(back.ipv4(), Some(Ipv4Addr::new(192, 0, 2, 10)));
        assert_eq!(
            back.ipv6(),
            Some(Ipv6Addr::from_str("2001:db8::10").unwrap())
        );
    }

    #[test]
    fn a_peer_is_included_only_at_the_own_address_of_its_family() {
        let v4 = Ipv4Addr::new(192, 0, 2, 10);
        let v6 = Ipv6Addr::from_str("2001:db8::10").unwrap();
        let own = OwnAddresses::new(Some(v4), Some(v6));
        let binding = |peer: IpAddr| {
            let relayed = if peer.is_ipv4() {
                IpAddr::V4(v4)
            } else {
                IpAddr::V6(v6)
            };
            PeerBinding::new(peer, 9, relayed, 50000).unwrap()
        };
        assert!(own.includes_peer(&binding(v4.into())));
        assert!(own.includes_peer(&binding(v6.into())));
        // Another address, and the IPv4 address in its IPv4-mapped IPv6 form (another key).
        assert!(!own.includes_peer(&binding(Ipv4Addr::new(192, 0, 2, 11).into())));
        assert!(!own.includes_peer(&binding(v4.to_ipv6_mapped().into())));
        // Unset families match nothing, not even the unspecified address.
        let v4_only = OwnAddresses::new(Some(v4), None);
        assert!(!v4_only.includes_peer(&binding(Ipv6Addr::UNSPECIFIED.into())));
        assert!(!OwnAddresses::UNSET.includes_peer(&binding(Ipv4Addr::UNSPECIFIED.into())));
        assert_eq!(own.of_family(false), Some(IpAddr::V4(v4)));
        assert_eq!(v4_only.of_family(true), None);
        // A never-written entry (family 0) has no address.
        assert!(!own.includes_peer(&PeerBinding::default()));
    }

    #[test]
    fn all_zero_own_addresses_are_unset_per_family() {
        let never_written: OwnAddresses = from_bytes(&[0; 20]);
        assert_eq!(never_written, OwnAddresses::UNSET);
        assert_eq!(never_written.ipv4(), None);
        assert_eq!(never_written.ipv6(), None);
        let v4_only = OwnAddresses::new(Some(Ipv4Addr::new(192, 0, 2, 10)), None);
        assert_eq!(v4_only.ipv6(), None);
        assert_eq!(v4_only.ipv4(), Some(Ipv4Addr::new(192, 0, 2, 10)));
    }

    #[test]
    fn debug_shows_addresses() {
        let own = OwnAddresses::new(Some(Ipv4Addr::new(192, 0, 2, 10)), None);
        assert_eq!(
            format!("{own:?}"),
            "OwnAddresses { ipv4: Some(192.0.2.10), ipv6: None }"
        );
    }
}
