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
    /// UDP ports the relay listens on for TURN traffic from clients, big-endian; unused slots
    /// are zero, the first is never (see [`XdpConfig::is_set`]).
    listen_ports: [[u8; 2]; XdpConfig::MAX_LISTEN_PORTS],
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
    /// How the frame is resized: an [`AdjustMode`] as its byte.
    adjust: u8,
}

/// How the kernel program makes room for headers that grow, or closes the gap after headers that
/// shrink.
///
/// - `Head` moves the frame start with `bpf_xdp_adjust_head`: the payload stays where it is and
///   only the headers are rewritten. The fastest, but a driver must leave headroom in front of
///   the frame, which some do not in native mode (Google Cloud's gVNIC, `gve`).
/// - `Tail` keeps the frame start and grows or shrinks the frame at its end with
///   `bpf_xdp_adjust_tail`, moving the payload by the difference: a copy of the payload per
///   datagram, so it costs more the larger the datagram (docs/benchmarks.md), but it needs only
///   tailroom, which every driver with XDP support provides.
/// - `Auto` is the probe that settles on one of the two. Frames that shrink are resized at the
///   tail, which works everywhere (a driver without headroom refuses even to move the frame
///   start backwards by a few bytes, and a shrinking rewrite has written its headers before it
///   could learn that). Frames that grow try the head first: if the driver refuses, the frame is
///   resized at the tail instead and the refusal counted ([`crate::Outcome::HEAD_REFUSED_INDEX`]);
///   if it moves, that is counted too ([`crate::Outcome::HEAD_GREW_INDEX`]). User space reads
///   the counters and writes `Tail` after a refusal, `Head` after a move without refusal, so
///   the probe lasts until the first datagram that grows (in practice the first from a peer)
///   and a counter read.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum AdjustMode {
    /// `bpf_xdp_adjust_head` only.
    #[default]
    Head = 0,
    /// `bpf_xdp_adjust_tail` and a payload move only.
    Tail = 1,
    /// The head where the driver allows it, else the tail.
    Auto = 2,
}

impl AdjustMode {
    /// The mode a configuration byte holds; an unknown byte reads as `Head`, which every driver
    /// the program attaches to in generic mode supports.
    #[inline(always)]
    pub const fn from_byte(byte: u8) -> Self {
        match byte {
            1 => Self::Tail,
            2 => Self::Auto,
            _ => Self::Head,
        }
    }

    /// The name used by `--xdp-adjust` and in logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Head => "head",
            Self::Tail => "tail",
            Self::Auto => "auto",
        }
    }
}

impl XdpConfig {
    /// How many listening ports the program relays for; datagrams to any further port a relay
    /// listens on take the user-space path.
    pub const MAX_LISTEN_PORTS: usize = 8;

    /// The configuration the kernel sees before user space writes one: all zeros.
    pub const UNSET: Self = Self {
        listen_ports: [[0; 2]; Self::MAX_LISTEN_PORTS],
        relay_port_low: [0; 2],
        relay_port_high: [0; 2],
        ttl: 0,
        hop_limit: 0,
        flags: 0,
        adjust: 0,
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
        let mut listen_ports = [[0; 2]; Self::MAX_LISTEN_PORTS];
        listen_ports[0] = listen_port.to_be_bytes();
        Self {
            listen_ports,
            relay_port_low: relay_port_low.to_be_bytes(),
            relay_port_high: relay_port_high.to_be_bytes(),
            ttl: Self::DEFAULT_HOP_LIMIT,
            hop_limit: Self::DEFAULT_HOP_LIMIT,
            flags: 0,
            adjust: AdjustMode::Head as u8,
        }
    }

    /// The same configuration relaying for one more listening port (host order); unchanged if
    /// the port is there already, `None` if it is 0, the configuration is unset, or all
    /// [`XdpConfig::MAX_LISTEN_PORTS`] slots are taken.
    #[must_use]
    pub fn with_listen_port(mut self, port: u16) -> Option<Self> {
        if port == 0 || !self.is_set() {
            return None;
        }
        if self.listen_ports().any(|held| held == port) {
            return Some(self);
        }
        let free = self.listen_ports.iter_mut().find(|slot| **slot == [0; 2])?;
        *free = port.to_be_bytes();
        Some(self)
    }

    /// The listening ports, in host order.
    pub fn listen_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.listen_ports
            .iter()
            .map(|port| u16::from_be_bytes(*port))
            .filter(|port| *port != 0)
    }

    /// Whether `raw`, a destination port as loaded from a packet (big-endian bytes in a native
    /// `u16`), is one of the listening ports. Unrolled over the fixed slots: a few compares, no
    /// loop for the verifier to walk.
    #[inline(always)]
    pub const fn is_listen_port_wire(&self, raw: u16) -> bool {
        if raw == 0 {
            return false;
        }
        let mut i = 0;
        while i < Self::MAX_LISTEN_PORTS {
            if u16::from_ne_bytes(self.listen_ports[i]) == raw {
                return true;
            }
            i += 1;
        }
        false
    }

    /// The same configuration resizing frames as `mode` says.
    #[inline(always)]
    #[must_use]
    pub const fn with_adjust_mode(mut self, mode: AdjustMode) -> Self {
        if self.is_set() {
            self.adjust = mode as u8;
        }
        self
    }

    /// How frames are resized.
    #[inline(always)]
    pub const fn adjust_mode(&self) -> AdjustMode {
        AdjustMode::from_byte(self.adjust)
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

    /// The first UDP port the relay listens on, in host order (0 when unset).
    #[inline(always)]
    pub const fn listen_port(&self) -> u16 {
        u16::from_be_bytes(self.listen_ports[0])
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
            .field(
                "listen_ports",
                &format_args!("{:?}", ListenPorts(&self.listen_ports)),
            )
            .field("relay_port_low", &self.relay_port_low())
            .field("relay_port_high", &self.relay_port_high())
            .field("ttl", &self.ttl)
            .field("hop_limit", &self.hop_limit)
            .field("rfc5766_channel_numbers", &self.rfc5766_channel_numbers())
            .field("adjust", &self.adjust_mode())
            .finish()
    }
}

/// The used listening-port slots, in host order.
struct ListenPorts<'a>(&'a [[u8; 2]; XdpConfig::MAX_LISTEN_PORTS]);

impl fmt::Debug for ListenPorts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.0
                    .iter()
                    .map(|port| u16::from_be_bytes(*port))
                    .filter(|port| *port != 0),
            )
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
        assert_eq!(size_of::<XdpConfig>(), 24);
        assert_eq!(align_of::<XdpConfig>(), 1);
        assert_eq!(offset_of!(XdpConfig, listen_ports), 0);
        assert_eq!(offset_of!(XdpConfig, relay_port_low), 16);
        assert_eq!(offset_of!(XdpConfig, relay_port_high), 18);
        assert_eq!(offset_of!(XdpConfig, ttl), 20);
        assert_eq!(offset_of!(XdpConfig, hop_limit), 21);
        assert_eq!(offset_of!(XdpConfig, flags), 22);
        assert_eq!(offset_of!(XdpConfig, adjust), 23);
    }

    #[test]
    fn xdp_config_round_trips_through_its_bytes() {
        let config = XdpConfig::new(3478, 49152, 65535).with_hop_limits(63, 255);
        let bytes = bytes_of(&config);
        // Big-endian on the wire and in the map, whatever the host byte order.
        assert_eq!(
            bytes,
            [
                0x0d, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // listening ports
                0xc0, 0x00, 0xff, 0xff, // relayed range
                63, 255, 0, 0, // hop limits, flags, adjust mode
            ]
        );

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
        let never_written: XdpConfig = from_bytes(&[0; 24]);
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
            "XdpConfig { listen_ports: [3478], relay_port_low: 49152, relay_port_high: 65535, \
             ttl: 64, hop_limit: 64, rfc5766_channel_numbers: false, adjust: Head }"
        );
    }

    #[test]
    fn the_channel_range_follows_the_flag() {
        let rfc8656 = XdpConfig::new(3478, 49152, 65535);
        let rfc5766 = rfc8656.with_rfc5766_channel_numbers(true);
        assert_eq!(bytes_of(&rfc5766)[22], XdpConfig::RFC5766_CHANNEL_NUMBERS);
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

    #[test]
    fn up_to_eight_listening_ports_are_relayed() {
        let mut config = XdpConfig::new(3478, 49152, 65535);
        for port in [3479, 3478, 443, 80, 5000, 5001, 5002] {
            config = config.with_listen_port(port).unwrap();
        }
        assert_eq!(
            config.listen_ports().collect::<std::vec::Vec<_>>(),
            [3478, 3479, 443, 80, 5000, 5001, 5002]
        );
        let full = config.with_listen_port(5003).unwrap();
        assert_eq!(full.with_listen_port(5004), None);
        assert_eq!(
            full.with_listen_port(443),
            Some(full),
            "a port already held"
        );
        assert_eq!(config.with_listen_port(0), None);
        assert_eq!(XdpConfig::UNSET.with_listen_port(3478), None);
        for port in [3478u16, 3479, 443, 80, 5000, 5001, 5002, 5003] {
            assert!(
                full.is_listen_port_wire(u16::from_ne_bytes(port.to_be_bytes())),
                "{port}"
            );
        }
        for port in [0u16, 1, 3477, 5004, 49152] {
            assert!(
                !full.is_listen_port_wire(u16::from_ne_bytes(port.to_be_bytes())),
                "{port}"
            );
        }
        // An unused slot (zero) never matches a datagram to port 0.
        assert!(!XdpConfig::new(3478, 1, 2).is_listen_port_wire(0));
    }

    #[test]
    fn the_adjust_mode_is_one_byte() {
        let config = XdpConfig::new(3478, 49152, 65535);
        assert_eq!(config.adjust_mode(), AdjustMode::Head);
        for mode in [AdjustMode::Tail, AdjustMode::Auto, AdjustMode::Head] {
            let with = config.with_adjust_mode(mode);
            assert_eq!(with.adjust_mode(), mode);
            assert_eq!(bytes_of(&with)[23], mode as u8);
        }
        assert_eq!(AdjustMode::from_byte(200), AdjustMode::Head);
        assert!(!XdpConfig::UNSET.with_adjust_mode(AdjustMode::Tail).is_set());
        assert_eq!(
            [AdjustMode::Head, AdjustMode::Tail, AdjustMode::Auto].map(AdjustMode::as_str),
            ["head", "tail", "auto"]
        );
    }
}
