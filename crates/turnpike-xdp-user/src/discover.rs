//! The relay's own addresses and default hop limits, read from the interface the program is
//! attached to rather than configured.
//!
//! # Why from the interface, and why `getifaddrs`
//!
//! The XDP program needs the relay's address of the *other* family as the source of translated
//! datagrams (see `turnpike_xdp_common::OwnAddresses`). The addresses the relay answers on are
//! the ones assigned to the interface the program runs on, so they are read from there.
//! `getifaddrs(3)` gives every address of every interface in one call with no new dependency
//! (netlink would need a netlink crate or a hand-written `RTM_GETADDR` dump for the same list).
//! What it does not give are IPv6 address flags (temporary, deprecated, tentative); a relay's
//! interface normally carries static addresses, and an operator who listens on one specific
//! address gets exactly that one (see [`own_addresses`]).
//!
//! Only addresses the relay can be reached at qualify: unicast, not loopback, not link-local,
//! not multicast or broadcast, not unspecified, not IPv4-mapped. Private and unique-local
//! addresses do qualify: a relay behind a 1:1 NAT (most clouds) only has private addresses on
//! its interface, and packets reach it addressed to those.
//!
//! Addresses change (DHCP, SLAAC, an operator adding one); call [`own_addresses`] again now and
//! then and write the result if it differs. A stale value costs at most the translated paths
//! (they go to user space if the address is gone, or leave with an address the far side does not
//! know until refreshed); same-family paths never use it.

use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use turnpike_xdp_common::OwnAddresses;

use crate::XdpError;

/// The usable addresses of one interface, per family, in the order the kernel lists them (for
/// IPv4 the primary address first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceAddresses {
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
}

/// Lists the usable unicast addresses of `interface` (see the module documentation for which).
///
/// # Errors
///
/// [`XdpError::Interface`] if `getifaddrs` fails or the interface does not exist.
pub fn interface_addresses(interface: &str) -> Result<InterfaceAddresses, XdpError> {
    let error = |source| XdpError::Interface {
        interface: interface.to_owned(),
        source,
    };
    let mut found = false;
    let mut addresses = InterfaceAddresses::default();
    let list = IfAddrs::new().map_err(error)?;
    for (name, ip) in list.iter() {
        if name.to_bytes() != interface.as_bytes() {
            continue;
        }
        found = true;
        match ip {
            Some(IpAddr::V4(ip)) if usable_v4(ip) => addresses.ipv4.push(ip),
            Some(IpAddr::V6(ip)) if usable_v6(ip) => addresses.ipv6.push(ip),
            _ => {}
        }
    }
    if found {
        Ok(addresses)
    } else {
        Err(error(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such interface",
        )))
    }
}

/// Every IP address of every interface of the host (in this network namespace), unspecified
/// addresses aside, sorted and without repeats: the addresses a datagram sent there would
/// deliver to this host, and so to whatever listens on them (the relay's own wildcard
/// listeners among it).
///
/// # Errors
///
/// When `getifaddrs` fails.
pub fn host_addresses() -> std::io::Result<Vec<IpAddr>> {
    let list = IfAddrs::new()?;
    let mut addresses: Vec<IpAddr> = list
        .iter()
        .filter_map(|(_, ip)| ip)
        .map(|ip| ip.to_canonical())
        .filter(|ip| !ip.is_unspecified())
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    Ok(addresses)
}

/// The relay's own address per family for the XDP program: for each family, the first of
/// `preferred` that is a usable address of `interface` (pass the `--relay-ip` addresses, then the
/// specific listening addresses: datagrams to peers leave from this address, as they leave the
/// relayed sockets bound there), else the interface's first usable address of that family, else
/// unset.
///
/// # Errors
///
/// As [`interface_addresses`].
pub fn own_addresses(interface: &str, preferred: &[IpAddr]) -> Result<OwnAddresses, XdpError> {
    Ok(choose(&interface_addresses(interface)?, preferred))
}

/// The choice [`own_addresses`] makes, from an address list.
pub fn choose(addresses: &InterfaceAddresses, preferred: &[IpAddr]) -> OwnAddresses {
    let pick_v4 = preferred
        .iter()
        .filter_map(|ip| match ip.to_canonical() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .find(|ip| addresses.ipv4.contains(ip))
        .or_else(|| addresses.ipv4.first().copied());
    let pick_v6 = preferred
        .iter()
        .filter_map(|ip| match ip.to_canonical() {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        })
        .find(|ip| addresses.ipv6.contains(ip))
        .or_else(|| addresses.ipv6.first().copied());
    OwnAddresses::new(pick_v4, pick_v6)
}

/// Whether an IPv4 address can be the relay's own: unicast and reachable beyond the link.
pub fn usable_v4(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        // 0.0.0.0/8 ("this network") and 240.0.0.0/4 (reserved) are never unicast sources.
        || ip.octets()[0] == 0
        || ip.octets()[0] >= 240)
}

/// Whether an IPv6 address can be the relay's own: unicast and reachable beyond the link.
pub fn usable_v6(ip: Ipv6Addr) -> bool {
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_unicast_link_local()
        || ip.to_ipv4_mapped().is_some())
}

/// The TTL and hop limit a datagram sent from a socket of the relay on `interface` would carry:
/// `net.ipv4.ip_default_ttl` and `net.ipv6.conf.<interface>.hop_limit`, 64 where unreadable.
pub fn default_hop_limits(interface: &str) -> (u8, u8) {
    let read =
        |path: String| -> Option<u8> { std::fs::read_to_string(path).ok()?.trim().parse().ok() };
    let ttl = read("/proc/sys/net/ipv4/ip_default_ttl".to_owned()).unwrap_or(64);
    let hop_limit = read(format!("/proc/sys/net/ipv6/conf/{interface}/hop_limit")).unwrap_or(64);
    (ttl, hop_limit)
}

/// The interface's MTU, as the calling thread's network namespace sees it (`SIOCGIFMTU`;
/// `/sys/class/net` would show the namespace sysfs was mounted in).
///
/// # Errors
///
/// [`XdpError::Interface`] if there is no such interface or the name could not be one.
pub fn mtu(interface: &str) -> Result<u32, XdpError> {
    let error = |source| XdpError::Interface {
        interface: interface.to_owned(),
        source,
    };
    // SAFETY: `ifreq` is plain data; all zeros is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = interface.as_bytes();
    if name.is_empty() || name.len() >= request.ifr_name.len() || name.contains(&0) {
        return Err(error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not an interface name",
        )));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: plain socket creation; the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(error(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `request` is a valid `ifreq` with a NUL-terminated name; the kernel writes the
    // MTU into its union.
    let result = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFMTU, &mut request) };
    if result < 0 {
        return Err(error(std::io::Error::last_os_error()));
    }
    // SAFETY: `SIOCGIFMTU` filled the union's `ifru_mtu` member.
    let mtu = unsafe { request.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).map_err(|_| {
        error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("negative MTU {mtu}"),
        ))
    })
}

/// The list `getifaddrs` returns, freed on drop.
struct IfAddrs(*mut libc::ifaddrs);

impl IfAddrs {
    fn new() -> std::io::Result<Self> {
        let mut head = std::ptr::null_mut();
        // SAFETY: `head` is a valid out-pointer; on success it owns a list freed in `drop`.
        if unsafe { libc::getifaddrs(&mut head) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self(head))
    }

    /// Every entry as (interface name, IP address if it is one).
    fn iter(&self) -> impl Iterator<Item = (&CStr, Option<IpAddr>)> + '_ {
        let mut next = self.0;
        std::iter::from_fn(move || {
            if next.is_null() {
                return None;
            }
            // SAFETY: `next` is a node of the list `getifaddrs` returned, alive while `self` is.
            let entry = unsafe { &*next };
            next = entry.ifa_next;
            // SAFETY: `ifa_name` is a NUL-terminated string owned by the list.
            let name = unsafe { CStr::from_ptr(entry.ifa_name) };
            // SAFETY: a non-null `ifa_addr` points to a sockaddr of the size its family implies.
            let ip = unsafe { ip_of(entry.ifa_addr) };
            Some((name, ip))
        })
    }
}

impl Drop for IfAddrs {
    fn drop(&mut self) {
        // SAFETY: the list came from `getifaddrs` and is freed once.
        unsafe { libc::freeifaddrs(self.0) };
    }
}

/// The IP address in a `sockaddr`, if it holds one.
///
/// # Safety
///
/// `address` is null or points to a valid `sockaddr` of the length its family implies.
unsafe fn ip_of(address: *const libc::sockaddr) -> Option<IpAddr> {
    if address.is_null() {
        return None;
    }
    // SAFETY: per the contract, the family field is readable and says how much more is.
    unsafe {
        match i32::from((*address).sa_family) {
            libc::AF_INET => {
                let v4 = &*address.cast::<libc::sockaddr_in>();
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))))
            }
            libc::AF_INET6 => {
                let v6 = &*address.cast::<libc::sockaddr_in6>();
                Some(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn v4(text: &str) -> Ipv4Addr {
        Ipv4Addr::from_str(text).unwrap()
    }

    fn v6(text: &str) -> Ipv6Addr {
        Ipv6Addr::from_str(text).unwrap()
    }

    #[test]
    fn loopback_mtu_is_read_and_bad_names_are_refused() {
        // Every Linux network namespace has `lo`, with a 64 KiB MTU by default.
        assert!(mtu("lo").unwrap() >= 1280);
        for name in [
            "",
            "lo\0",
            "an-interface-name-too-long",
            "no-such-interface0",
        ] {
            assert!(
                matches!(mtu(name), Err(XdpError::Interface { .. })),
                "{name:?}"
            );
        }
    }

    #[test]
    fn only_reachable_unicast_ipv4_addresses_are_usable() {
        for ok in [
            "192.0.2.1",
            "10.0.0.1",
            "172.16.5.4",
            "100.64.0.1",
            "203.0.113.200",
        ] {
            assert!(usable_v4(v4(ok)), "{ok}");
        }
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "169.254.10.20",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
        ] {
            assert!(!usable_v4(v4(bad)), "{bad}");
        }
    }

    #[test]
    fn only_reachable_unicast_ipv6_addresses_are_usable() {
        for ok in ["2001:db8::1", "fd00::1", "2a00:1450::5"] {
            assert!(usable_v6(v6(ok)), "{ok}");
        }
        for bad in ["::", "::1", "fe80::1", "ff02::1", "::ffff:192.0.2.1"] {
            assert!(!usable_v6(v6(bad)), "{bad}");
        }
    }

    #[test]
    fn preferred_address_wins_when_the_interface_has_it() {
        let addresses = InterfaceAddresses {
            ipv4: vec![v4("192.0.2.1"), v4("192.0.2.2")],
            ipv6: vec![v6("2001:db8::1"), v6("2001:db8::2")],
        };
        let own = choose(
            &addresses,
            &[IpAddr::V4(v4("192.0.2.2")), IpAddr::V6(v6("2001:db8::2"))],
        );
        assert_eq!(own.ipv4(), Some(v4("192.0.2.2")));
        assert_eq!(own.ipv6(), Some(v6("2001:db8::2")));
    }

    #[test]
    fn first_address_is_used_when_nothing_preferred_is_there() {
        let addresses = InterfaceAddresses {
            ipv4: vec![v4("192.0.2.1"), v4("192.0.2.2")],
            ipv6: vec![],
        };
        // A wildcard listen address or one on another interface is not a preference.
        let own = choose(
            &addresses,
            &[IpAddr::V4(v4("0.0.0.0")), IpAddr::V4(v4("198.51.100.1"))],
        );
        assert_eq!(own.ipv4(), Some(v4("192.0.2.1")));
        assert_eq!(own.ipv6(), None);
    }

    #[test]
    fn loopback_interface_has_no_usable_address() {
        let addresses = interface_addresses("lo").unwrap();
        assert!(addresses.ipv4.is_empty(), "{addresses:?}");
        assert!(addresses.ipv6.is_empty(), "{addresses:?}");
    }

    #[test]
    fn unknown_interface_is_an_error_naming_it() {
        let error = interface_addresses("no-such-if0").unwrap_err();
        assert!(error.to_string().contains("no-such-if0"), "{error}");
    }

    #[test]
    fn hop_limits_are_read_or_default_to_64() {
        let (ttl, hop_limit) = default_hop_limits("no-such-if0");
        assert!(ttl > 0);
        assert_eq!(hop_limit, 64);
    }
}
