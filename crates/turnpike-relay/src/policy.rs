//! Which peers the relay may send to.
//!
//! A TURN relay that sends wherever a client asks is an open proxy into the networks around it:
//! the relay host's loopback services, the cloud metadata endpoint, the operator's private
//! subnets. [`PeerPolicy::check`] is asked before a permission or channel is installed and
//! answers with the reason a peer is refused.
//!
//! # Precedence
//!
//! One peer address can name several destinations: `::ffff:10.0.0.1`, `64:ff9b::a00:1` and
//! `2002:a00:1::` all end up at `10.0.0.1`. The address as given and every IPv4 address embedded
//! in it are its *forms*, and the verdict is reached in this order:
//!
//! 1. An unspecified address in any form (`0.0.0.0`, `::`, `::ffff:0.0.0.0`, `64:ff9b::`,
//!    `2002::`, …) is always refused. It is not a destination: Linux delivers it to the relay host
//!    itself (CVE-2020-26262). No operator rule overrides this.
//! 2. An operator **deny** CIDR that matches any form refuses the peer ([`PeerDenied::OperatorDenied`]).
//! 3. Otherwise every form must be allowed, each on its own: a form matched by an operator
//!    **allow** CIDR is allowed; a form in a built-in denied range is refused with that range's
//!    reason; any other form is allowed.
//!
//! So operator deny > operator allow > built-in deny > default allow, applied per form. Because
//! each form needs its own allowance, an operator allow of `::/0` does not open `::ffff:127.0.0.1`
//! (its IPv4 form is still loopback), while an allow of `10.0.0.0/8` opens `10.0.0.1` in every
//! encoding. Write IPv4 ranges in dotted form: an operator CIDR is matched against each form in
//! its own family, and IPv6 CIDRs such as `::ffff:0:0/96` are not translated.
//!
//! # Embedded IPv4 forms
//!
//! | Form | Range | Embedded IPv4 |
//! |---|---|---|
//! | IPv4-mapped | `::ffff:0:0/96` | last 32 bits |
//! | IPv4-compatible (deprecated) | `::/96` except `::` and `::1` | last 32 bits |
//! | NAT64 well-known prefix | `64:ff9b::/96` | last 32 bits |
//! | NAT64 local-use prefix | `64:ff9b:1::/48` | last 32 bits (the `/96` layout) |
//! | 6to4 | `2002::/16` | bits 16..48 |
//! | Teredo | `2001::/32` | server: bits 32..64; client: last 32 bits XOR `0xffffffff` |
//!
//! Each embedded address is checked because on a relay host with the matching tunnel or
//! translator (a `sit` device, miredo, a NAT64 gateway) the packet really does go to it.
//!
//! # The relay's own addresses
//!
//! A peer can be another allocation on this same relay. That is not a policy question but a
//! routing one, so [`PeerPolicy::check`] does not look at it: the server asks
//! [`PeerPolicy::is_relay_own_address`] first and either delivers the data internally (hairpin)
//! or refuses it, and calls [`PeerPolicy::check`] for everything else. Only the plain and
//! IPv4-mapped forms of an own address count as own; every other form goes through the policy.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Why a peer address may not be relayed to.
///
/// Each variant's documentation lists the ranges it covers. The order of the variants is
/// alphabetical and means nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum PeerDenied {
    /// The IPv4 limited broadcast address `255.255.255.255`.
    #[error("broadcast address")]
    Broadcast,
    /// Documentation ranges: `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`,
    /// `2001:db8::/32`, `3fff::/20`.
    #[error("documentation address")]
    Documentation,
    /// Link-local addresses: `169.254.0.0/16` (which holds the cloud metadata endpoint
    /// `169.254.169.254`) and `fe80::/10`.
    #[error("link-local address")]
    LinkLocal,
    /// The local-use NAT64 prefix `64:ff9b:1::/48` (RFC 8215).
    ///
    /// Unlike the well-known prefix it is never globally routed: it names a translator inside
    /// the operator's own network, and the operator chooses where in the address the IPv4
    /// address sits, so the embedded address cannot always be found and checked. Its `/96`
    /// layout is decoded and checked as well, so an operator who allows the prefix still has the
    /// embedded address checked in that layout.
    #[error("local-use NAT64 address")]
    LocalUseNat64,
    /// Loopback: `127.0.0.0/8` and `::1`.
    #[error("loopback address")]
    Loopback,
    /// Multicast: `224.0.0.0/4` and `ff00::/8`.
    #[error("multicast address")]
    Multicast,
    /// An operator deny CIDR matched the address or one of its embedded IPv4 forms.
    #[error("denied by operator rule")]
    OperatorDenied,
    /// Private-use IPv4 (RFC 1918): `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`.
    #[error("private address")]
    Private,
    /// Reserved or special-purpose space that is no destination for media:
    ///
    /// - IPv4: `0.0.0.0/8` ("this network"), `192.0.0.0/24` (IETF protocol assignments),
    ///   `192.88.99.0/24` (deprecated 6to4 relay anycast), `198.18.0.0/15` (benchmarking),
    ///   `240.0.0.0/4` (reserved, except the broadcast address).
    /// - IPv6: all space outside the global unicast block `2000::/3` that no other variant
    ///   names (`::/8` apart from the embeddings above, the discard prefix `100::/64`, the SRv6
    ///   SID block `5f00::/16`, and unallocated space), and `2001::/23`, the IETF protocol
    ///   assignments, apart from Teredo, which is checked through its embedded addresses. The
    ///   blocks in `2001::/23` are benchmarking space, ORCHID identifiers and infrastructure
    ///   anycast (AS112, AMT, PCP and TURN anycast): none is a WebRTC peer, and an operator who
    ///   needs one can allow it.
    #[error("reserved address")]
    Reserved,
    /// Shared address space for carrier-grade NAT: `100.64.0.0/10` (RFC 6598).
    #[error("shared address space")]
    SharedAddressSpace,
    /// Deprecated IPv6 site-local addresses: `fec0::/10`.
    #[error("site-local address")]
    SiteLocal,
    /// IPv6 unique local addresses: `fc00::/7`.
    #[error("unique local address")]
    UniqueLocal,
    /// The unspecified address, `0.0.0.0` or `::`, in any encoding. Always refused.
    #[error("unspecified address")]
    Unspecified,
}

/// The set of built-in denials a [`PeerPolicy`] enforces.
///
/// All of them are enforced by default. Removing a category switches off the built-in denial of
/// all its ranges, as if the operator had allowed each of them; operator deny CIDRs still apply.
/// [`PeerDenied::Unspecified`] and [`PeerDenied::OperatorDenied`] are not built-in categories and
/// cannot be removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuiltinDenials {
    bits: u16,
}

impl BuiltinDenials {
    /// Every built-in denial: the default.
    pub const ALL: Self = Self { bits: u16::MAX };

    /// This set without `category`.
    #[must_use]
    pub const fn without(self, category: PeerDenied) -> Self {
        Self {
            bits: self.bits & !Self::bit(category),
        }
    }

    /// Whether addresses of `category` are refused.
    #[must_use]
    pub const fn enforces(self, category: PeerDenied) -> bool {
        match category {
            PeerDenied::OperatorDenied | PeerDenied::Unspecified => true,
            _ => self.bits & Self::bit(category) != 0,
        }
    }

    const fn bit(category: PeerDenied) -> u16 {
        match category {
            PeerDenied::Broadcast => 1 << 0,
            PeerDenied::Documentation => 1 << 1,
            PeerDenied::LinkLocal => 1 << 2,
            PeerDenied::LocalUseNat64 => 1 << 3,
            PeerDenied::Loopback => 1 << 4,
            PeerDenied::Multicast => 1 << 5,
            PeerDenied::Private => 1 << 6,
            PeerDenied::Reserved => 1 << 7,
            PeerDenied::SharedAddressSpace => 1 << 8,
            PeerDenied::SiteLocal => 1 << 9,
            PeerDenied::UniqueLocal => 1 << 10,
            // Not built-in categories: no bit, so `without` leaves them alone.
            PeerDenied::OperatorDenied | PeerDenied::Unspecified => 0,
        }
    }
}

impl Default for BuiltinDenials {
    fn default() -> Self {
        Self::ALL
    }
}

/// The peer policy: built-in denials, operator CIDR lists and the relay's own addresses.
///
/// See the [module documentation](self) for the precedence of the rules. Lookups scan the
/// operator lists linearly, which suits the handful of ranges operators configure.
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    allowed: Vec<Cidr>,
    denied: Vec<Cidr>,
    builtin: BuiltinDenials,
    relay_own_addresses: Vec<IpAddr>,
}

impl PeerPolicy {
    /// A policy with every built-in denial, no operator rules and no own addresses.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds operator allow CIDRs, which override built-in denials.
    #[must_use]
    pub fn with_allowed(mut self, cidrs: impl IntoIterator<Item = Cidr>) -> Self {
        self.allowed.extend(cidrs);
        self
    }

    /// Whether an operator allow CIDR names `ip` (as given or in its canonical IPv4 form) and no
    /// operator deny does: for choices beyond the built-in ranges, such as relaying to other
    /// services on the relay's own address, which only such an explicit allow opens.
    #[must_use]
    pub fn is_explicitly_allowed(&self, ip: IpAddr) -> bool {
        let forms = [ip, ip.to_canonical()];
        forms
            .iter()
            .any(|form| self.allowed.iter().any(|cidr| cidr.contains(*form)))
            && !forms
                .iter()
                .any(|form| self.denied.iter().any(|cidr| cidr.contains(*form)))
    }

    /// Adds operator deny CIDRs, which override everything but the unspecified address.
    #[must_use]
    pub fn with_denied(mut self, cidrs: impl IntoIterator<Item = Cidr>) -> Self {
        self.denied.extend(cidrs);
        self
    }

    /// Replaces the set of enforced built-in denials.
    #[must_use]
    pub fn with_builtin_denials(mut self, builtin: BuiltinDenials) -> Self {
        self.builtin = builtin;
        self
    }

    /// Adds addresses the relay itself relays from (its advertised relayed addresses).
    ///
    /// IPv4-mapped addresses are stored as the IPv4 address they map.
    #[must_use]
    pub fn with_relay_own_addresses(mut self, addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        self.relay_own_addresses
            .extend(addresses.into_iter().map(|address| address.to_canonical()));
        self
    }

    /// Whether the relay may send to `peer`.
    ///
    /// # Errors
    ///
    /// The reason the peer is refused. The caller answers a CreatePermission or ChannelBind
    /// for a refused peer with 403 (Forbidden).
    pub fn check(&self, peer: IpAddr) -> Result<(), PeerDenied> {
        let forms = Forms::of(peer);

        if forms.addresses().any(|form| form.is_unspecified()) {
            return Err(PeerDenied::Unspecified);
        }
        if forms
            .addresses()
            .any(|form| self.denied.iter().any(|cidr| cidr.contains(form)))
        {
            return Err(PeerDenied::OperatorDenied);
        }

        // The embedded IPv4 forms go first so the reason names the address a packet would reach.
        for embedded in forms.embedded_ipv4() {
            self.check_form(IpAddr::V4(embedded), ipv4_denial(embedded))?;
        }
        let as_given_denial = match peer {
            IpAddr::V4(v4) => ipv4_denial(v4),
            IpAddr::V6(v6) => match forms.embedding {
                Some(Embedding::Nat64LocalUse) => Some(PeerDenied::LocalUseNat64),
                Some(_) => None,
                None => ipv6_denial(v6),
            },
        };
        self.check_form(peer, as_given_denial)
    }

    /// Whether `ip` is one of the relay's own addresses, written plainly or IPv4-mapped.
    ///
    /// The other embeddings do not count: `64:ff9b::` or `2002:` forms of an own address reach
    /// the relay only through a translator or tunnel, and a Teredo address embeds the relay's
    /// address beside another one. Matching them here would let a caller that skips
    /// [`PeerPolicy::check`] for own addresses skip it for the other embedded address too.
    #[must_use]
    pub fn is_relay_own_address(&self, ip: IpAddr) -> bool {
        self.relay_own_addresses.contains(&ip.to_canonical())
    }

    /// Rule 3 for one form: an operator allow beats the form's built-in denial.
    fn check_form(&self, form: IpAddr, builtin: Option<PeerDenied>) -> Result<(), PeerDenied> {
        let Some(reason) = builtin else {
            return Ok(());
        };
        if !self.builtin.enforces(reason) || self.allowed.iter().any(|cidr| cidr.contains(form)) {
            return Ok(());
        }
        Err(reason)
    }
}

/// An IP network: an address and a prefix length, with no bits set past the prefix.
///
/// Parsed from `"10.0.0.0/8"`, `"2001:db8::/32"`, or a bare address meaning `/32` or `/128`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// The network `network/prefix_len`.
    ///
    /// # Errors
    ///
    /// [`CidrError::InvalidPrefixLength`] past 32 (IPv4) or 128 (IPv6);
    /// [`CidrError::HostBitsSet`] if `network` has bits set past the prefix.
    pub fn new(network: IpAddr, prefix_len: u8) -> Result<Self, CidrError> {
        let masked = match network {
            IpAddr::V4(v4) => {
                if prefix_len > 32 {
                    return Err(CidrError::InvalidPrefixLength);
                }
                IpAddr::V4(Ipv4Addr::from_bits(v4.to_bits() & ipv4_mask(prefix_len)))
            }
            IpAddr::V6(v6) => {
                if prefix_len > 128 {
                    return Err(CidrError::InvalidPrefixLength);
                }
                IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & ipv6_mask(prefix_len)))
            }
        };
        if masked != network {
            return Err(CidrError::HostBitsSet {
                network: masked,
                prefix_len,
            });
        }
        Ok(Self {
            network,
            prefix_len,
        })
    }

    /// The network address.
    #[must_use]
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length in bits.
    #[must_use]
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` lies in this network. An address of the other family never does.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                ip.to_bits() & ipv4_mask(self.prefix_len) == network.to_bits()
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                ip.to_bits() & ipv6_mask(self.prefix_len) == network.to_bits()
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| CidrError::InvalidAddress)?;
        let prefix_len = match prefix {
            None => match network {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            },
            // `u8::from_str` accepts a leading `+`, which no operator means to write.
            Some(prefix) if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(CidrError::InvalidPrefixLength);
            }
            Some(prefix) => prefix.parse().map_err(|_| CidrError::InvalidPrefixLength)?,
        };
        Self::new(network, prefix_len)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Why a CIDR string or network was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The address has bits set past the prefix length, as in `10.0.0.1/8`: usually a typo,
    /// so it is refused rather than silently widened or narrowed.
    #[error("host bits set past /{prefix_len}: the network is {network}/{prefix_len}")]
    HostBitsSet {
        /// The address with the bits past the prefix cleared.
        network: IpAddr,
        /// The prefix length as written.
        prefix_len: u8,
    },
    /// The part before `/` is not an IPv4 or IPv6 address.
    #[error("invalid IP address")]
    InvalidAddress,
    /// The prefix length is missing, not a decimal number, or too long for the address family.
    #[error("invalid prefix length")]
    InvalidPrefixLength,
}

fn ipv4_mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

fn ipv6_mask(prefix_len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix_len))
        .unwrap_or(0)
}

/// The ways an IPv6 address can carry IPv4 addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Embedding {
    Compatible,
    Mapped,
    Nat64LocalUse,
    Nat64WellKnown,
    SixToFour,
    Teredo,
}

/// A peer address and the IPv4 addresses embedded in it.
#[derive(Clone, Copy, Debug)]
struct Forms {
    as_given: IpAddr,
    embedding: Option<Embedding>,
    embedded: [Option<Ipv4Addr>; 2],
}

impl Forms {
    fn of(ip: IpAddr) -> Self {
        let IpAddr::V6(v6) = ip else {
            return Self {
                as_given: ip,
                embedding: None,
                embedded: [None, None],
            };
        };
        let segments = v6.segments();
        let ipv4_at = |index: usize| ipv4_from_segments(segments[index], segments[index + 1]);
        let (embedding, embedded) = match segments {
            // `::` and `::1` are IPv6's own unspecified and loopback addresses, not
            // IPv4-compatible forms of 0.0.0.0 and 0.0.0.1.
            [0, 0, 0, 0, 0, 0, 0, 0] | [0, 0, 0, 0, 0, 0, 0, 1] => (None, [None, None]),
            [0, 0, 0, 0, 0, 0xffff, _, _] => (Some(Embedding::Mapped), [Some(ipv4_at(6)), None]),
            [0, 0, 0, 0, 0, 0, _, _] => (Some(Embedding::Compatible), [Some(ipv4_at(6)), None]),
            [0x64, 0xff9b, 0, 0, 0, 0, _, _] => {
                (Some(Embedding::Nat64WellKnown), [Some(ipv4_at(6)), None])
            }
            [0x64, 0xff9b, 1, ..] => (Some(Embedding::Nat64LocalUse), [Some(ipv4_at(6)), None]),
            [0x2002, ..] => (Some(Embedding::SixToFour), [Some(ipv4_at(1)), None]),
            [0x2001, 0, ..] => {
                let server = ipv4_at(2);
                // RFC 4380 §4: the client's address is stored inverted so NATs that rewrite
                // addresses in payloads leave it alone.
                let client = Ipv4Addr::from_bits(!ipv4_at(6).to_bits());
                (Some(Embedding::Teredo), [Some(server), Some(client)])
            }
            _ => (None, [None, None]),
        };
        Self {
            as_given: ip,
            embedding,
            embedded,
        }
    }

    fn embedded_ipv4(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.embedded.iter().flatten().copied()
    }

    fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        std::iter::once(self.as_given).chain(self.embedded_ipv4().map(IpAddr::V4))
    }
}

fn ipv4_from_segments(high: u16, low: u16) -> Ipv4Addr {
    Ipv4Addr::from_bits(u32::from(high) << 16 | u32::from(low))
}

/// The built-in denial of a plain IPv4 address, if any.
fn ipv4_denial(ip: Ipv4Addr) -> Option<PeerDenied> {
    let [a, b, c, _] = ip.octets();
    let reason = match (a, b, c) {
        _ if ip.is_unspecified() => PeerDenied::Unspecified,
        _ if ip.is_broadcast() => PeerDenied::Broadcast,
        (127, _, _) => PeerDenied::Loopback,
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => PeerDenied::Private,
        (100, 64..=127, _) => PeerDenied::SharedAddressSpace,
        (169, 254, _) => PeerDenied::LinkLocal,
        (224..=239, _, _) => PeerDenied::Multicast,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => PeerDenied::Documentation,
        (0, _, _) | (192, 0, 0) | (192, 88, 99) | (198, 18..=19, _) | (240..=255, _, _) => {
            PeerDenied::Reserved
        }
        _ => return None,
    };
    Some(reason)
}

/// The built-in denial of an IPv6 address that embeds no IPv4 address, if any.
fn ipv6_denial(ip: Ipv6Addr) -> Option<PeerDenied> {
    let bits = ip.to_bits();
    let in_prefix = |prefix: u128, prefix_len: u8| bits & ipv6_mask(prefix_len) == prefix;
    let reason = if ip.is_unspecified() {
        PeerDenied::Unspecified
    } else if ip.is_loopback() {
        PeerDenied::Loopback
    } else if in_prefix(0xff00 << 112, 8) {
        PeerDenied::Multicast
    } else if in_prefix(0xfe80 << 112, 10) {
        PeerDenied::LinkLocal
    } else if in_prefix(0xfec0 << 112, 10) {
        PeerDenied::SiteLocal
    } else if in_prefix(0xfc00 << 112, 7) {
        PeerDenied::UniqueLocal
    } else if in_prefix(0x2001_0db8 << 96, 32) || in_prefix(0x3fff << 112, 20) {
        PeerDenied::Documentation
    } else if !in_prefix(0x2000 << 112, 3) || in_prefix(0x2001 << 112, 23) {
        PeerDenied::Reserved
    } else {
        return None;
    };
    Some(reason)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    /// A public IPv4 address (a Teredo server of Microsoft's) used where an encoding needs a
    /// second, harmless IPv4 address.
    const PUBLIC_TEREDO_SERVER: Ipv4Addr = Ipv4Addr::new(65, 54, 227, 120);

    fn ipv4(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    fn mapped(v4: Ipv4Addr) -> IpAddr {
        IpAddr::V6(v4.to_ipv6_mapped())
    }

    fn compatible(v4: Ipv4Addr) -> IpAddr {
        IpAddr::V6(v4.to_ipv6_compatible())
    }

    fn nat64(v4: Ipv4Addr) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from_bits(
            0x0064_ff9b << 96 | u128::from(v4.to_bits()),
        ))
    }

    fn nat64_local_use(v4: Ipv4Addr) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from_bits(
            0x0064_ff9b_0001 << 80 | u128::from(v4.to_bits()),
        ))
    }

    fn six_to_four(v4: Ipv4Addr) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from_bits(
            0x2002 << 112 | u128::from(v4.to_bits()) << 80 | 1,
        ))
    }

    fn teredo(server: Ipv4Addr, client: Ipv4Addr) -> IpAddr {
        let port = 0x1234 ^ 0xffff;
        IpAddr::V6(Ipv6Addr::from_bits(
            0x2001_0000 << 96
                | u128::from(server.to_bits()) << 64
                | port << 32
                | u128::from(!client.to_bits()),
        ))
    }

    /// Every way this module knows of writing `v4`, with its name for failure messages.
    fn encodings(v4: Ipv4Addr) -> [(&'static str, IpAddr); 7] {
        [
            ("plain", IpAddr::V4(v4)),
            ("mapped", mapped(v4)),
            ("compatible", compatible(v4)),
            ("nat64", nat64(v4)),
            ("6to4", six_to_four(v4)),
            ("teredo client", teredo(PUBLIC_TEREDO_SERVER, v4)),
            ("teredo server", teredo(v4, ipv4("8.8.8.8"))),
        ]
    }

    const DENIED_IPV4: &[(&str, PeerDenied)] = &[
        ("0.0.0.0", PeerDenied::Unspecified),
        ("0.1.2.3", PeerDenied::Reserved),
        ("0.255.255.255", PeerDenied::Reserved),
        ("10.1.2.3", PeerDenied::Private),
        ("100.64.0.1", PeerDenied::SharedAddressSpace),
        ("100.127.255.254", PeerDenied::SharedAddressSpace),
        ("127.0.0.1", PeerDenied::Loopback),
        ("127.255.255.254", PeerDenied::Loopback),
        ("169.254.169.254", PeerDenied::LinkLocal),
        ("172.16.0.1", PeerDenied::Private),
        ("172.31.255.254", PeerDenied::Private),
        ("192.0.0.9", PeerDenied::Reserved),
        ("192.0.2.1", PeerDenied::Documentation),
        ("192.88.99.1", PeerDenied::Reserved),
        ("192.168.1.1", PeerDenied::Private),
        ("198.18.0.1", PeerDenied::Reserved),
        ("198.19.255.254", PeerDenied::Reserved),
        ("198.51.100.7", PeerDenied::Documentation),
        ("203.0.113.9", PeerDenied::Documentation),
        ("224.0.0.1", PeerDenied::Multicast),
        ("239.255.255.250", PeerDenied::Multicast),
        ("240.0.0.1", PeerDenied::Reserved),
        ("255.255.255.254", PeerDenied::Reserved),
        ("255.255.255.255", PeerDenied::Broadcast),
    ];

    /// Public addresses, some of them one step outside a denied range.
    const PUBLIC_IPV4: &[&str] = &[
        "1.1.1.1",
        "8.8.8.8",
        "9.255.255.255",
        "11.0.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "126.255.255.255",
        "128.0.0.0",
        "169.253.255.255",
        "172.15.255.255",
        "172.32.0.0",
        "192.0.1.255",
        "192.0.3.0",
        "192.167.255.255",
        "192.169.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
    ];

    const DENIED_IPV6: &[(&str, PeerDenied)] = &[
        ("::", PeerDenied::Unspecified),
        ("::1", PeerDenied::Loopback),
        ("::1:0:0:1", PeerDenied::Reserved),
        ("::ffff:0:102:304", PeerDenied::Reserved),
        ("64:ff9b:0:0:1::1", PeerDenied::Reserved),
        ("100::1", PeerDenied::Reserved),
        ("2001:1::2", PeerDenied::Reserved),
        ("2001:2::1", PeerDenied::Reserved),
        ("2001:20::1", PeerDenied::Reserved),
        ("2001:1ff:ffff::1", PeerDenied::Reserved),
        ("2001:db8::1", PeerDenied::Documentation),
        ("3fff::1", PeerDenied::Documentation),
        ("3fff:fff:ffff::1", PeerDenied::Documentation),
        ("4000::1", PeerDenied::Reserved),
        ("5f00::1", PeerDenied::Reserved),
        ("fc00::1", PeerDenied::UniqueLocal),
        ("fd12:3456:789a::1", PeerDenied::UniqueLocal),
        ("fe80::1", PeerDenied::LinkLocal),
        ("febf:ffff::1", PeerDenied::LinkLocal),
        ("fec0::1", PeerDenied::SiteLocal),
        ("ff02::1", PeerDenied::Multicast),
        ("ff0e::1", PeerDenied::Multicast),
        ("64:ff9b:1::808:808", PeerDenied::LocalUseNat64),
        ("64:ff9b:1:fffe::808:808", PeerDenied::LocalUseNat64),
    ];

    const PUBLIC_IPV6: &[&str] = &[
        "2001:200::1",
        "2001:4860:4860::8888",
        "2606:4700:4700::1111",
        "2a00:1450:4001::1",
        "3ffe::1",
        "3fff:1000::1",
    ];

    #[test]
    fn every_denied_ipv4_range_is_denied_in_every_encoding() {
        let policy = PeerPolicy::new();
        for &(address, reason) in DENIED_IPV4 {
            for (encoding, peer) in encodings(ipv4(address)) {
                assert_eq!(
                    policy.check(peer),
                    Err(reason),
                    "{address} as {encoding} ({peer})"
                );
            }
        }
    }

    #[test]
    fn public_ipv4_is_allowed_in_every_encoding() {
        let policy = PeerPolicy::new();
        for &address in PUBLIC_IPV4 {
            for (encoding, peer) in encodings(ipv4(address)) {
                assert_eq!(
                    policy.check(peer),
                    Ok(()),
                    "{address} as {encoding} ({peer})"
                );
            }
        }
    }

    #[test]
    fn every_denied_ipv6_range_is_denied() {
        let policy = PeerPolicy::new();
        for &(address, reason) in DENIED_IPV6 {
            assert_eq!(policy.check(ip(address)), Err(reason), "{address}");
        }
    }

    #[test]
    fn public_ipv6_is_allowed() {
        let policy = PeerPolicy::new();
        for &address in PUBLIC_IPV6 {
            assert_eq!(policy.check(ip(address)), Ok(()), "{address}");
        }
    }

    #[test]
    fn unspecified_is_denied_in_every_encoding_even_when_everything_is_allowed() {
        let policy = PeerPolicy::new()
            .with_allowed([cidr("0.0.0.0/0"), cidr("::/0")])
            .with_builtin_denials(BuiltinDenials::ALL.without(PeerDenied::Unspecified));
        let unspecified_forms = [
            ip("0.0.0.0"),
            ip("::"),
            ip("::ffff:0.0.0.0"),
            ip("64:ff9b::"),
            ip("64:ff9b:1::"),
            ip("2002::"),
            ip("2002::1"),
            teredo(Ipv4Addr::UNSPECIFIED, ipv4("8.8.8.8")),
            teredo(ipv4("8.8.8.8"), Ipv4Addr::UNSPECIFIED),
        ];
        for peer in unspecified_forms {
            assert_eq!(policy.check(peer), Err(PeerDenied::Unspecified), "{peer}");
        }
        assert_eq!(policy.check(ip("127.0.0.1")), Ok(()));
    }

    #[test]
    fn teredo_is_denied_if_either_embedded_address_is_denied() {
        let policy = PeerPolicy::new();
        assert_eq!(
            policy.check(teredo(ipv4("10.0.0.1"), ipv4("8.8.8.8"))),
            Err(PeerDenied::Private)
        );
        assert_eq!(
            policy.check(teredo(ipv4("8.8.8.8"), ipv4("127.0.0.1"))),
            Err(PeerDenied::Loopback)
        );
        assert_eq!(
            policy.check(teredo(ipv4("8.8.8.8"), ipv4("1.1.1.1"))),
            Ok(())
        );
    }

    #[test]
    fn teredo_client_address_is_decoded_by_inverting_the_last_32_bits() {
        // RFC 4380 §4 example shape: client 192.0.2.45 is stored as 3fff:fdd2.
        let forms = Forms::of(ip("2001:0:4136:e378:8000:63bf:3fff:fdd2"));
        assert_eq!(forms.embedding, Some(Embedding::Teredo));
        assert_eq!(
            forms.embedded,
            [Some(ipv4("65.54.227.120")), Some(ipv4("192.0.2.45"))]
        );
    }

    #[test]
    fn local_use_nat64_checks_the_embedded_address_before_the_prefix() {
        let policy = PeerPolicy::new();
        assert_eq!(
            policy.check(nat64_local_use(ipv4("127.0.0.1"))),
            Err(PeerDenied::Loopback)
        );
        assert_eq!(
            policy.check(nat64_local_use(ipv4("8.8.8.8"))),
            Err(PeerDenied::LocalUseNat64)
        );
    }

    #[test]
    fn allowing_the_local_use_nat64_prefix_still_checks_the_embedded_address() {
        let policy = PeerPolicy::new().with_allowed([cidr("64:ff9b:1::/48")]);
        assert_eq!(policy.check(nat64_local_use(ipv4("8.8.8.8"))), Ok(()));
        assert_eq!(
            policy.check(nat64_local_use(ipv4("10.0.0.1"))),
            Err(PeerDenied::Private)
        );
    }

    #[test]
    fn operator_allow_overrides_the_builtin_denial_in_every_encoding() {
        let policy = PeerPolicy::new().with_allowed([cidr("10.0.0.0/8")]);
        for (encoding, peer) in encodings(ipv4("10.1.2.3")) {
            assert_eq!(policy.check(peer), Ok(()), "{encoding}");
        }
        assert_eq!(
            policy.check(ip("172.16.0.1")),
            Err(PeerDenied::Private),
            "only the allowed range opens"
        );
    }

    #[test]
    fn operator_deny_wins_over_operator_allow() {
        let policy = PeerPolicy::new()
            .with_allowed([cidr("10.0.0.0/8")])
            .with_denied([cidr("10.1.0.0/16")]);
        for (encoding, peer) in encodings(ipv4("10.1.2.3")) {
            assert_eq!(
                policy.check(peer),
                Err(PeerDenied::OperatorDenied),
                "{encoding}"
            );
        }
        assert_eq!(policy.check(ip("10.2.0.1")), Ok(()));
    }

    #[test]
    fn operator_deny_wins_over_an_allow_of_the_same_range() {
        let policy = PeerPolicy::new()
            .with_allowed([cidr("8.8.8.0/24")])
            .with_denied([cidr("8.8.8.0/24")]);
        assert_eq!(policy.check(ip("8.8.8.8")), Err(PeerDenied::OperatorDenied));
    }

    #[test]
    fn operator_deny_refuses_public_addresses_in_every_encoding() {
        let policy = PeerPolicy::new().with_denied([cidr("8.8.8.0/24")]);
        for (encoding, peer) in encodings(ipv4("8.8.8.8")) {
            assert_eq!(
                policy.check(peer),
                Err(PeerDenied::OperatorDenied),
                "{encoding}"
            );
        }
        assert_eq!(policy.check(ip("8.8.4.4")), Ok(()));
    }

    #[test]
    fn operator_deny_wins_over_a_builtin_denial() {
        let policy = PeerPolicy::new().with_denied([cidr("127.0.0.0/8")]);
        assert_eq!(
            policy.check(ip("127.0.0.1")),
            Err(PeerDenied::OperatorDenied)
        );
    }

    #[test]
    fn operator_deny_can_refuse_an_embedding_itself() {
        let policy = PeerPolicy::new().with_denied([cidr("2002::/16"), cidr("2001::/32")]);
        assert_eq!(
            policy.check(six_to_four(ipv4("8.8.8.8"))),
            Err(PeerDenied::OperatorDenied)
        );
        assert_eq!(
            policy.check(teredo(PUBLIC_TEREDO_SERVER, ipv4("8.8.8.8"))),
            Err(PeerDenied::OperatorDenied)
        );
        assert_eq!(policy.check(ip("8.8.8.8")), Ok(()));
        assert_eq!(policy.check(mapped(ipv4("8.8.8.8"))), Ok(()));
    }

    #[test]
    fn allowing_all_of_ipv6_does_not_open_embedded_ipv4_denials() {
        let policy = PeerPolicy::new().with_allowed([cidr("::/0")]);
        assert_eq!(
            policy.check(mapped(ipv4("127.0.0.1"))),
            Err(PeerDenied::Loopback)
        );
        assert_eq!(
            policy.check(six_to_four(ipv4("10.0.0.1"))),
            Err(PeerDenied::Private)
        );
        assert_eq!(policy.check(ip("fd00::1")), Ok(()));
        assert_eq!(policy.check(ip("::1")), Ok(()));
    }

    #[test]
    fn removing_a_builtin_category_allows_its_ranges_but_operator_deny_still_applies() {
        let policy = PeerPolicy::new()
            .with_builtin_denials(BuiltinDenials::ALL.without(PeerDenied::Private))
            .with_denied([cidr("192.168.0.0/16")]);
        assert_eq!(policy.check(ip("10.0.0.1")), Ok(()));
        assert_eq!(policy.check(mapped(ipv4("172.16.0.1"))), Ok(()));
        assert_eq!(
            policy.check(ip("192.168.1.1")),
            Err(PeerDenied::OperatorDenied)
        );
        assert_eq!(policy.check(ip("127.0.0.1")), Err(PeerDenied::Loopback));
    }

    #[test]
    fn builtin_denials_cannot_drop_the_unspecified_or_operator_rules() {
        let builtin = BuiltinDenials::ALL
            .without(PeerDenied::Unspecified)
            .without(PeerDenied::OperatorDenied);
        assert!(builtin.enforces(PeerDenied::Unspecified));
        assert!(builtin.enforces(PeerDenied::OperatorDenied));
        assert!(
            !BuiltinDenials::ALL
                .without(PeerDenied::Loopback)
                .enforces(PeerDenied::Loopback)
        );
        assert_eq!(BuiltinDenials::default(), BuiltinDenials::ALL);
    }

    #[test]
    fn relay_own_addresses_are_recognised_plain_or_ipv4_mapped_only() {
        let own = ipv4("52.1.2.3");
        let policy = PeerPolicy::new().with_relay_own_addresses([
            IpAddr::V4(own),
            ip("2600:1f18::5"),
            ip("::ffff:52.9.9.9"),
        ]);
        for (encoding, peer) in encodings(own) {
            let expected = matches!(encoding, "plain" | "mapped");
            assert_eq!(policy.is_relay_own_address(peer), expected, "{encoding}");
        }
        assert!(!policy.is_relay_own_address(teredo(own, ipv4("127.0.0.1"))));
        assert!(policy.is_relay_own_address(ip("2600:1f18::5")));
        assert!(policy.is_relay_own_address(ip("52.9.9.9")));
        assert!(!policy.is_relay_own_address(ip("52.1.2.4")));
        assert!(!policy.is_relay_own_address(ip("2600:1f18::6")));
    }

    #[test]
    fn relay_own_addresses_do_not_change_the_verdict_of_check() {
        let policy = PeerPolicy::new().with_relay_own_addresses([ip("52.1.2.3"), ip("10.0.0.5")]);
        assert_eq!(policy.check(ip("52.1.2.3")), Ok(()));
        assert_eq!(policy.check(ip("10.0.0.5")), Err(PeerDenied::Private));
    }

    #[test]
    fn cidr_parses_networks_and_bare_addresses() {
        let cases = [
            ("10.0.0.0/8", "10.0.0.0", 8),
            ("2001:db8::/32", "2001:db8::", 32),
            ("10.1.2.3", "10.1.2.3", 32),
            ("::1", "::1", 128),
            ("0.0.0.0/0", "0.0.0.0", 0),
            ("::/0", "::", 0),
            ("10.0.0.0/08", "10.0.0.0", 8),
        ];
        for (text, network, prefix_len) in cases {
            let parsed = cidr(text);
            assert_eq!(parsed.network(), ip(network), "{text}");
            assert_eq!(parsed.prefix_len(), prefix_len, "{text}");
        }
    }

    #[test]
    fn cidr_with_host_bits_set_is_rejected_with_the_intended_network() {
        assert_eq!(
            "10.0.0.1/8".parse::<Cidr>(),
            Err(CidrError::HostBitsSet {
                network: ip("10.0.0.0"),
                prefix_len: 8
            })
        );
        assert_eq!(
            "2001:db8::1/32".parse::<Cidr>(),
            Err(CidrError::HostBitsSet {
                network: ip("2001:db8::"),
                prefix_len: 32
            })
        );
        let message = "10.0.0.1/8".parse::<Cidr>().unwrap_err().to_string();
        assert_eq!(message, "host bits set past /8: the network is 10.0.0.0/8");
    }

    #[test]
    fn cidr_with_a_bad_prefix_length_is_rejected() {
        for text in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "10.0.0.0/abc",
            "10.0.0.0/999",
            "10.0.0.0/ 8",
        ] {
            assert_eq!(
                text.parse::<Cidr>(),
                Err(CidrError::InvalidPrefixLength),
                "{text}"
            );
        }
        assert_eq!(
            Cidr::new(ip("10.0.0.0"), 33),
            Err(CidrError::InvalidPrefixLength)
        );
    }

    #[test]
    fn cidr_with_a_bad_address_is_rejected() {
        for text in [
            "",
            "/8",
            "10.0.0/8",
            "10.0.0.256/32",
            "example.org/8",
            " 10.0.0.0/8",
            "[::1]/128",
            "::1%eth0/128",
        ] {
            assert_eq!(
                text.parse::<Cidr>(),
                Err(CidrError::InvalidAddress),
                "{text}"
            );
        }
    }

    #[test]
    fn cidr_contains_only_addresses_of_its_own_family() {
        let ten = cidr("10.0.0.0/8");
        assert!(ten.contains(ip("10.0.0.0")));
        assert!(ten.contains(ip("10.255.255.255")));
        assert!(!ten.contains(ip("11.0.0.0")));
        assert!(!ten.contains(ip("::ffff:10.0.0.1")));
        assert!(cidr("0.0.0.0/0").contains(ip("255.255.255.255")));
        assert!(!cidr("0.0.0.0/0").contains(ip("::")));
        assert!(cidr("::/0").contains(ip("ffff::")));
        assert!(cidr("2001:db8::1").contains(ip("2001:db8::1")));
        assert!(!cidr("2001:db8::1").contains(ip("2001:db8::2")));
    }

    #[test]
    fn cidr_displays_as_it_is_written() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(cidr("1.2.3.4").to_string(), "1.2.3.4/32");
    }

    fn any_ipv4_cidr() -> impl Strategy<Value = Cidr> {
        (any::<u32>(), 0u8..=32).prop_map(|(bits, prefix_len)| {
            let network = Ipv4Addr::from_bits(bits & ipv4_mask(prefix_len));
            Cidr::new(IpAddr::V4(network), prefix_len).unwrap()
        })
    }

    fn any_policy_with_ipv4_rules() -> impl Strategy<Value = PeerPolicy> {
        (
            proptest::collection::vec(any_ipv4_cidr(), 0..4),
            proptest::collection::vec(any_ipv4_cidr(), 0..4),
        )
            .prop_map(|(allowed, denied)| {
                PeerPolicy::new().with_allowed(allowed).with_denied(denied)
            })
    }

    proptest! {
        #[test]
        fn ipv4_verdict_is_the_same_mapped_through_nat64_and_6to4(
            bits in any::<u32>(),
            policy in any_policy_with_ipv4_rules(),
        ) {
            let v4 = Ipv4Addr::from_bits(bits);
            let plain = policy.check(IpAddr::V4(v4));
            prop_assert_eq!(policy.check(mapped(v4)), plain);
            prop_assert_eq!(policy.check(nat64(v4)), plain);
            prop_assert_eq!(policy.check(six_to_four(v4)), plain);
        }

        #[test]
        fn ipv4_verdict_is_the_same_in_ranges_near_the_denied_ones(
            base in proptest::sample::select(DENIED_IPV4),
            delta in -300i64..300,
        ) {
            let bits = i64::from(ipv4(base.0).to_bits()) + delta;
            let v4 = Ipv4Addr::from_bits(u32::try_from(bits.clamp(0, i64::from(u32::MAX))).unwrap());
            let policy = PeerPolicy::new();
            let plain = policy.check(IpAddr::V4(v4));
            prop_assert_eq!(policy.check(mapped(v4)), plain);
            prop_assert_eq!(policy.check(nat64(v4)), plain);
        }

        #[test]
        fn check_never_panics_on_any_address(bits in any::<u128>(), v4_bits in any::<u32>()) {
            let policy = PeerPolicy::new().with_allowed([cidr("::/0")]);
            let _ = policy.check(IpAddr::V6(Ipv6Addr::from_bits(bits)));
            let _ = policy.check(IpAddr::V4(Ipv4Addr::from_bits(v4_bits)));
            let _ = policy.is_relay_own_address(IpAddr::V6(Ipv6Addr::from_bits(bits)));
        }

        #[test]
        fn cidr_display_parses_back_to_the_same_network(network in any_ipv4_cidr()) {
            prop_assert_eq!(network.to_string().parse::<Cidr>(), Ok(network));
            prop_assert!(network.contains(network.network()));
        }

        #[test]
        fn cidr_parsing_never_panics(text in "\\PC{0,64}") {
            let _ = text.parse::<Cidr>();
        }
    }
}
