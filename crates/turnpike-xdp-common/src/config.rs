//! The relay configuration the kernel program needs: which ports are TURN and how to fill the IP
//! header fields it cannot copy.

use core::fmt;

/// Relay configuration that the XDP program reads from a one-entry BPF array map.
///
/// A lookup in a BPF array at an index inside the array always yields an entry: one that user
/// space never wrote reads as all zeros. The kernel program therefore cannot learn from the lookup
/// whether a configuration exists, only from its contents, so the all-zero value is reserved to
/// mean *unset* ([`XdpConfig::is_set`]; UDP port 0 is never a real listen port). While the
/// configuration is unset the program must pass every packet to user space (`XDP_PASS`). That is
/// also the state between attaching the program and writing the map, so the order in which user
/// space does the two cannot lose or misroute traffic.
///
/// # Why the hop limits are here
///
/// A relayed datagram leaves with the TTL (IPv4) or hop limit (IPv6) that a datagram sent from a
/// socket of the relay would carry: the system default, which user space reads from
/// `net.ipv4.ip_default_ttl` and the interface's `hop_limit` sysctl. This is RFC 8656 §14's
/// "alternate behavior" for the TTL field. It keeps the kernel fast path and the user-space path
/// interchangeable for a flow (a flow moves between them when a channel is bound or expires): the
/// far side sees the same TTL whichever path a datagram took.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct XdpConfig {
    /// UDP port the relay listens on for TURN traffic from clients, big-endian.
    listen_port: [u8; 2],
    /// Lowest port of the relayed-address range (inclusive), big-endian.
    relay_port_low: [u8; 2],
    /// Highest port of the relayed-address range (inclusive), big-endian.
    relay_port_high: [u8; 2],
    /// TTL of relayed IPv4 datagrams.
    ttl: u8,
    /// Hop limit of relayed IPv6 datagrams.
    hop_limit: u8,
    /// Option bits: [`XdpConfig::RFC5766_CHANNEL_NUMBERS`].
    flags: u8,
}

impl XdpConfig {
    /// The configuration the kernel sees before user space writes one: all zeros.
    pub const UNSET: Self = Self {
        listen_port: [0; 2],
        relay_port_low: [0; 2],
        relay_port_high: [0; 2],
        ttl: 0,
        hop_limit: 0,
        flags: 0,
    };

    /// Channel numbers 0x4000–0x7FFF (RFC 5766) are ChannelData, not only 0x4000–0x4FFF (RFC
    /// 8656). Either way only channels user space bound are relayed; the bit only decides which
    /// first bytes are worth a map lookup, and must agree with the core's range.
    pub const RFC5766_CHANNEL_NUMBERS: u8 = 0x01;

    /// Linux's default TTL and hop limit, used until [`XdpConfig::with_hop_limits`] says
    /// otherwise.
    pub const DEFAULT_HOP_LIMIT: u8 = 64;

    /// Builds a configuration from host-order ports. The relayed range is
    /// `relay_port_low..=relay_port_high`. A `listen_port` of 0 yields an unset configuration.
    #[inline(always)]
    pub const fn new(listen_port: u16, relay_port_low: u16, relay_port_high: u16) -> Self {
        if listen_port == 0 {
            return Self::UNSET;
        }
        Self {
            listen_port: listen_port.to_be_bytes(),
            relay_port_low: relay_port_low.to_be_bytes(),
            relay_port_high: relay_port_high.to_be_bytes(),
            ttl: Self::DEFAULT_HOP_LIMIT,
            hop_limit: Self::DEFAULT_HOP_LIMIT,
            flags: 0,
        }
    }

    /// The same configuration taking channel numbers up to 0x7FFF (RFC 5766) when `on`, up to
    /// 0x4FFF (RFC 8656) otherwise.
    #[inline(always)]
    #[must_use]
    pub const fn with_rfc5766_channel_numbers(mut self, on: bool) -> Self {
        if !self.is_set() {
            return self;
        }
        self.flags = if on {
            self.flags | Self::RFC5766_CHANNEL_NUMBERS
        } else {
            self.flags & !Self::RFC5766_CHANNEL_NUMBERS
        };
        self
    }

    /// Whether channel numbers go up to 0x7FFF (RFC 5766) rather than 0x4FFF.
    #[inline(always)]
    pub const fn rfc5766_channel_numbers(&self) -> bool {
        self.flags & Self::RFC5766_CHANNEL_NUMBERS != 0
    }

    /// Whether `first`, the first byte of a UDP payload, can start ChannelData: 0x40–0x4F, or
    /// 0x40–0x7F with [`XdpConfig::RFC5766_CHANNEL_NUMBERS`].
    #[inline(always)]
    pub const fn is_channel_first_byte(&self, first: u8) -> bool {
        if self.rfc5766_channel_numbers() {
            first & 0xC0 == 0x40
        } else {
            first & 0xF0 == 0x40
        }
    }

    /// The same configuration with the given IPv4 TTL and IPv6 hop limit for relayed datagrams.
    /// A zero is replaced by [`XdpConfig::DEFAULT_HOP_LIMIT`]: a datagram sent with TTL 0 would
    /// die at the first router.
    #[inline(always)]
    #[must_use]
    pub const fn with_hop_limits(mut self, ttl: u8, hop_limit: u8) -> Self {
        if !self.is_set() {
            return self;
        }
        self.ttl = if ttl == 0 {
            Self::DEFAULT_HOP_LIMIT
        } else {
            ttl
        };
        self.hop_limit = if hop_limit == 0 {
            Self::DEFAULT_HOP_LIMIT
        } else {
            hop_limit
        };
        self
    }

    /// UDP port the relay listens on, in host order.
    #[inline(always)]
    pub const fn listen_port(&self) -> u16 {
        u16::from_be_bytes(self.listen_port)
    }

    /// UDP port the relay listens on, as it appears in a packet.
    #[inline(always)]
    pub const fn listen_port_wire(&self) -> [u8; 2] {
        self.listen_port
    }

    /// Lowest relayed port (inclusive), in host order.
    #[inline(always)]
    pub const fn relay_port_low(&self) -> u16 {
        u16::from_be_bytes(self.relay_port_low)
    }

    /// Highest relayed port (inclusive), in host order.
    #[inline(always)]
    pub const fn relay_port_high(&self) -> u16 {
        u16::from_be_bytes(self.relay_port_high)
    }

    /// Whether `port` (host order) is in the relayed range.
    #[inline(always)]
    pub const fn is_relay_port(&self, port: u16) -> bool {
        port >= self.relay_port_low() && port <= self.relay_port_high()
    }

    /// TTL of relayed IPv4 datagrams.
    #[inline(always)]
    pub const fn ttl(&self) -> u8 {
        self.ttl
    }

    /// Hop limit of relayed IPv6 datagrams.
    #[inline(always)]
    pub const fn hop_limit(&self) -> u8 {
        self.hop_limit
    }

    /// Whether user space has written a configuration. When this is false the kernel program must
    /// return `XDP_PASS` for everything (see the type's documentation).
    #[inline(always)]
    pub const fn is_set(&self) -> bool {
        self.listen_port() != 0
    }
}

// Shows host-order port numbers rather than the raw big-endian bytes.
impl fmt::Debug for XdpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdpConfig")
            .field("listen_port", &self.listen_port())
            .field("relay_port_low", &self.relay_port_low())
            .field("relay_port_high", &self.relay_port_high())
            .field("ttl", &self.ttl)
            .field("hop_limit", &self.hop_limit)
            .field("rfc5766_channel_numbers", &self.rfc5766_channel_numbers())
            .finish()
    }
}

// SAFETY: `XdpConfig` is `#[repr(C)]`, `Copy`, made only of `u8`s and `u8` arrays (so it has no
// padding and every bit pattern is a valid value), and holds no pointers or references.
#[cfg(feature = "user")]
unsafe impl aya::Pod for XdpConfig {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{bytes_of, from_bytes};
    use core::mem::{align_of, offset_of, size_of};
    use std::format;

    #[test]
    fn xdp_config_layout_is_pinned() {
        assert_eq!(size_of::<XdpConfig>(), 9);
        assert_eq!(align_of::<XdpConfig>(), 1);
        assert_eq!(offset_of!(XdpConfig, listen_port), 0);
        assert_eq!(offset_of!(XdpConfig, relay_port_low), 2);
        assert_eq!(offset_of!(XdpConfig, relay_port_high), 4);
        assert_eq!(offset_of!(XdpConfig, ttl), 6);
        assert_eq!(offset_of!(XdpConfig, hop_limit), 7);
        assert_eq!(offset_of!(XdpConfig, flags), 8);
    }

    #[test]
    fn xdp_config_round_trips_through_its_bytes() {
        let config = XdpConfig::new(3478, 49152, 65535).with_hop_limits(63, 255);
        let bytes = bytes_of(&config);
        // Big-endian on the wire and in the map, whatever the host byte order.
        assert_eq!(bytes, [0x0d, 0x96, 0xc0, 0x00, 0xff, 0xff, 63, 255, 0]);

        let back: XdpConfig = from_bytes(bytes);
        assert_eq!(back, config);
        assert_eq!(back.listen_port(), 3478);
        assert_eq!(back.relay_port_low(), 49152);
        assert_eq!(back.relay_port_high(), 65535);
        assert_eq!(back.ttl(), 63);
        assert_eq!(back.hop_limit(), 255);
    }

    #[test]
    fn all_zero_config_is_unset() {
        let never_written: XdpConfig = from_bytes(&[0; 9]);
        assert!(!never_written.is_set());
        assert_eq!(never_written, XdpConfig::UNSET);
        assert_eq!(XdpConfig::default(), XdpConfig::UNSET);
        assert_eq!(XdpConfig::new(0, 49152, 65535), XdpConfig::UNSET);
        assert_eq!(
            XdpConfig::new(0, 49152, 65535).with_hop_limits(5, 5),
            XdpConfig::UNSET
        );
        assert!(XdpConfig::new(3478, 0, 0).is_set());
    }

    #[test]
    fn hop_limits_default_to_64_and_never_to_zero() {
        let config = XdpConfig::new(3478, 49152, 65535);
        assert_eq!((config.ttl(), config.hop_limit()), (64, 64));
        let zero = config.with_hop_limits(0, 0);
        assert_eq!((zero.ttl(), zero.hop_limit()), (64, 64));
    }

    #[test]
    fn relay_range_is_inclusive() {
        let config = XdpConfig::new(3478, 50000, 50010);
        assert!(!config.is_relay_port(49999));
        assert!(config.is_relay_port(50000));
        assert!(config.is_relay_port(50010));
        assert!(!config.is_relay_port(50011));
    }

    #[test]
    fn debug_shows_host_order_ports() {
        assert_eq!(
            format!("{:?}", XdpConfig::new(3478, 49152, 65535)),
            "XdpConfig { listen_port: 3478, relay_port_low: 49152, relay_port_high: 65535, \
             ttl: 64, hop_limit: 64, rfc5766_channel_numbers: false }"
        );
    }

    #[test]
    fn the_channel_range_follows_the_flag() {
        let rfc8656 = XdpConfig::new(3478, 49152, 65535);
        let rfc5766 = rfc8656.with_rfc5766_channel_numbers(true);
        assert_eq!(bytes_of(&rfc5766)[8], XdpConfig::RFC5766_CHANNEL_NUMBERS);
        assert_eq!(rfc5766.with_rfc5766_channel_numbers(false), rfc8656);
        assert!(!XdpConfig::UNSET.with_rfc5766_channel_numbers(true).is_set());
        for first in 0..=u8::MAX {
            assert_eq!(
                rfc8656.is_channel_first_byte(first),
                (0x40..=0x4F).contains(&first),
                "{first:#04x}"
            );
            assert_eq!(
                rfc5766.is_channel_first_byte(first),
                (0x40..=0x7F).contains(&first),
                "{first:#04x}"
            );
        }
    }
}
