//! Plain-data types shared by the Turnpike XDP program (`crates/turnpike-xdp`, kernel side) and
//! the user-space relay that loads it and fills its maps.
//!
//! Both sides see these types only as raw bytes in BPF maps, so the memory layout *is* the
//! contract. Every type here is therefore `#[repr(C)]` and built only from byte arrays, and
//! multi-byte numbers are stored big-endian (network order) as `[u8; N]` rather than as
//! `u16`/`u32`:
//!
//! - byte arrays have alignment 1, so the compiler cannot insert padding that one side does not
//!   expect (and that would reach the kernel as uninitialised bytes);
//! - the byte order is fixed by the type, not by whoever writes the value: the only way in and out
//!   is `from_be_bytes`/`to_be_bytes` in the accessors, so neither side can forget to swap or swap
//!   twice, and the kernel can compare the raw bytes with header fields that are already in
//!   network order.
//!
//! The tests at the bottom pin the size, alignment and byte image of every type, so changing the
//! layout makes a test fail instead of silently desynchronising kernel and user space.
#![no_std]

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
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct XdpConfig {
    /// UDP port the relay listens on for TURN traffic from clients, big-endian.
    listen_port: [u8; 2],
    /// Lowest port of the relayed-address range (inclusive), big-endian.
    relay_port_low: [u8; 2],
    /// Highest port of the relayed-address range (inclusive), big-endian.
    relay_port_high: [u8; 2],
}

impl XdpConfig {
    /// The configuration the kernel sees before user space writes one: all zeros.
    pub const UNSET: Self = Self {
        listen_port: [0; 2],
        relay_port_low: [0; 2],
        relay_port_high: [0; 2],
    };

    /// Builds a configuration from host-order ports. The relayed range is
    /// `relay_port_low..=relay_port_high`. A `listen_port` of 0 yields an unset configuration.
    #[inline(always)]
    pub const fn new(listen_port: u16, relay_port_low: u16, relay_port_high: u16) -> Self {
        Self {
            listen_port: listen_port.to_be_bytes(),
            relay_port_low: relay_port_low.to_be_bytes(),
            relay_port_high: relay_port_high.to_be_bytes(),
        }
    }

    /// UDP port the relay listens on, in host order.
    #[inline(always)]
    pub const fn listen_port(&self) -> u16 {
        u16::from_be_bytes(self.listen_port)
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
            .finish()
    }
}

// SAFETY: `XdpConfig` is `#[repr(C)]`, `Copy`, made only of `u8` arrays (so it has no padding and
// every bit pattern is a valid value), and holds no pointers or references.
#[cfg(feature = "user")]
unsafe impl aya::Pod for XdpConfig {}

#[cfg(test)]
extern crate std;

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};
    use std::format;

    /// The bytes of `value` exactly as they would be copied into a BPF map.
    fn bytes_of<T: Copy>(value: &T) -> &[u8] {
        // SAFETY: `value` is a valid reference to `size_of::<T>()` initialised bytes for the
        // lifetime of the returned slice; the types tested here have no padding.
        unsafe { core::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
    }

    /// Reads a `T` back from bytes, as the other side of the map would.
    fn from_bytes<T: Copy>(bytes: &[u8]) -> T {
        assert_eq!(bytes.len(), size_of::<T>());
        // SAFETY: the length was checked; `read_unaligned` imposes no alignment requirement; the
        // types tested here accept every bit pattern.
        unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
    }

    #[test]
    fn xdp_config_layout_is_pinned() {
        assert_eq!(size_of::<XdpConfig>(), 6);
        assert_eq!(align_of::<XdpConfig>(), 1);
        assert_eq!(offset_of!(XdpConfig, listen_port), 0);
        assert_eq!(offset_of!(XdpConfig, relay_port_low), 2);
        assert_eq!(offset_of!(XdpConfig, relay_port_high), 4);
    }

    #[test]
    fn xdp_config_round_trips_through_its_bytes() {
        let config = XdpConfig::new(3478, 49152, 65535);
        let bytes = bytes_of(&config);
        // Big-endian on the wire and in the map, whatever the host byte order.
        assert_eq!(bytes, [0x0d, 0x96, 0xc0, 0x00, 0xff, 0xff]);

        let back: XdpConfig = from_bytes(bytes);
        assert_eq!(back, config);
        assert_eq!(back.listen_port(), 3478);
        assert_eq!(back.relay_port_low(), 49152);
        assert_eq!(back.relay_port_high(), 65535);
    }

    #[test]
    fn all_zero_config_is_unset() {
        let never_written: XdpConfig = from_bytes(&[0; 6]);
        assert!(!never_written.is_set());
        assert_eq!(never_written, XdpConfig::UNSET);
        assert_eq!(XdpConfig::default(), XdpConfig::UNSET);
        assert!(!XdpConfig::new(0, 49152, 65535).is_set());
        assert!(XdpConfig::new(3478, 0, 0).is_set());
    }

    #[test]
    fn debug_shows_host_order_ports() {
        assert_eq!(
            format!("{:?}", XdpConfig::new(3478, 49152, 65535)),
            "XdpConfig { listen_port: 3478, relay_port_low: 49152, relay_port_high: 65535 }"
        );
    }
}
