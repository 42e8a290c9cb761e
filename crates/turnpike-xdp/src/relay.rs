//! The relay's data plane: ChannelData from clients out as UDP to peers, UDP from peers out as
//! ChannelData to clients, for channels user space has bound in the maps.
//!
//! # What is relayed here and what goes up
//!
//! Only the common case is handled in the kernel: a well-formed UDP datagram, in an IPv4 header
//! without options and not fragmented or an IPv6 header followed directly by UDP, whose binding
//! is in the maps. Everything else goes up unchanged with `XDP_PASS`, never dropped: the kernel
//! stack and the user-space relay behind it handle every case correctly, just more slowly, so
//! the worst a gap here can cost is speed. Each reason has its own counter ([`Outcome`]).
//!
//! # Finding the binding, and what the cost is spent on
//!
//! Bindings are looked up in the direct-mapped caches first and in the hash maps only when the
//! cache slot holds another binding (`lookup.rs`). User space never caches a binding whose peer
//! is one of the relay's own addresses, so only hash-map hits are tested for hairpins, and a
//! cached datagram never reads `OWN_ADDRESSES` (the sources it sends from are in the binding).
//!
//! The rest is arranged for the instruction count, which is what a packet costs here:
//! everything after parsing is compiled once per incoming and once per outgoing IP version (see
//! `relay` and `client_to_peer`), so an IPv4 address is one word and the branches on the family
//! disappear; one bounds check covers each header stack; and the MTU helper is called only for
//! datagrams that grow beyond [`MIN_LINK_MTU`], the smallest MTU user space lets the program
//! attach to.
//!
//! # How a datagram is rewritten
//!
//! The relay is an endpoint of two UDP flows, not a router, so a relayed datagram is a new
//! datagram from the relay: addresses, ports, lengths and payload are exactly what the user-space
//! relay sends from its sockets for the same datagram. Field by field (RFC 8656 §14 lets a relay
//! choose between a "preferred" and an "alternate" behaviour for most):
//!
//! - source address and port: the relay's end of the outgoing flow, from the binding: the
//!   relayed address and port (to the peer; of the peer's family, and possibly another address
//!   than the client wrote to, `--relay-ip`) or the listening address and port the client
//!   writes to (to the client). Destination: the other side of the binding.
//! - TTL / hop limit: the system default user space also sends with (alternate behaviour, see
//!   [`XdpConfig`]); DSCP and ECN: copied (preferred behaviour, which a plain socket cannot
//!   do); IPv6 flow label: zero (two flows; RFC 8656 says not to copy it); IPv4 identification
//!   and DF: copied from IPv4, zero and DF set from IPv6.
//! - Ethernet: source and destination MAC swapped, assuming one next hop for both sides (true
//!   for a host behind one router; see the seed notes).
//! - UDP checksum: updated incrementally (RFC 1624) from the incoming one; an incoming IPv4
//!   datagram without checksum (zero) stays without one if it leaves as IPv4, and goes to user
//!   space if it would leave as IPv6, where a checksum is mandatory.
//!
//! The headers in front of the payload are rebuilt from the old ones in place, in one window at
//! the frame start (`build`), and the frame is resized by −24 to +24 bytes, whatever the
//! families and direction demand, in one of two ways the configuration chooses
//! ([`AdjustMode`]):
//!
//! - at the head (`emit`): the payload never moves; the new headers end where the old ones end
//!   and the frame start moves with `bpf_xdp_adjust_head`: after the headers are built when they
//!   shrink (such a move cannot fail), before when they grow (a failed move then leaves the
//!   frame intact, for `XDP_PASS` or, in `Auto`, for the tail);
//! - at the tail (`emit_at_tail`), for drivers that leave no headroom: the headers stay at the
//!   frame start, the frame grows or shrinks at its end with `bpf_xdp_adjust_tail`, and the
//!   payload moves by the difference (`move_payload`, in chunks through the stack).
//!
//! Either way trailing bytes (ChannelData padding, Ethernet padding of short frames) are cut
//! with `bpf_xdp_adjust_tail`.
//!
//! # Registers
//!
//! eBPF keeps four registers across a call, and the compiler treats every map lookup as one,
//! even those the verifier inlines. A value held across a call is stored on the stack and
//! loaded back, so the program does not copy header fields out when it parses: [`Datagram`]
//! keeps where the headers lie and loads each field where it is used, and the old headers are
//! read again after the frame moves rather than carried across the helper call. This saved about
//! 3 ns of the 47 a relayed packet cost (docs/benchmarks.md).

use core::mem::MaybeUninit;

use aya_ebpf::{
    helpers::{
        bpf_check_mtu, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_load_bytes,
        bpf_xdp_store_bytes,
    },
    programs::XdpContext,
};
use turnpike_xdp_common::{
    AdjustMode, FAMILY_V4, FAMILY_V6, MIN_LINK_MTU, Outcome, OwnAddresses, XdpConfig,
    checksum::{add_address, finish, udp_on_wire, update},
};

use crate::lookup::{self, End, Found};
use crate::packet::{
    Address, CHANNEL_HEADER, ETH_HEADER, ETHERTYPE_IPV4, ETHERTYPE_IPV6, IPV4_HEADER, IPV6_HEADER,
    PROTO_UDP, UDP_HEADER, address_at, address_of, check, frame_len, is_ipv6_extension, is_zero,
    load, same_address, store, store_address,
};
use crate::{CONFIG, COUNTERS, OWN_ADDRESSES};

/// An incoming UDP datagram that parsing accepted. Its header fields, but for the UDP length that
/// every step needs, stay in the frame and are loaded where they are used rather than copied out
/// once: a value held in a local across a map lookup or a helper call costs a store and a load on
/// the stack (eBPF keeps only four registers across calls), a field loaded again costs one load.
///
/// `ip` was checked to hold the IP header and the UDP header after it. It is valid until the frame
/// start moves; the verifier rejects any program that reads through it after that.
#[derive(Clone, Copy)]
struct Datagram {
    v6: bool,
    /// Address of the IP header in the frame.
    ip: usize,
    /// UDP length field (header included) in host order, equal to the IP payload length.
    udp_len: u16,
}

impl Datagram {
    #[inline(always)]
    const fn family(&self) -> u8 {
        if self.v6 { FAMILY_V6 } else { FAMILY_V4 }
    }

    #[inline(always)]
    const fn ip_header(&self) -> usize {
        ip_header(self.v6)
    }

    /// Offset of the UDP header in the frame.
    #[inline(always)]
    const fn udp_at(&self) -> usize {
        ETH_HEADER + self.ip_header()
    }

    /// Length of the IP packet (header included).
    #[inline(always)]
    const fn ip_len(&self) -> usize {
        self.ip_header() + self.udp_len as usize
    }

    #[inline(always)]
    fn udp(&self) -> usize {
        self.ip + self.ip_header()
    }

    // SAFETY (every `load` below): inside the window the type's invariant describes.

    #[inline(always)]
    fn src(&self) -> Address {
        self.address(12, 8)
    }

    #[inline(always)]
    fn dst(&self) -> Address {
        self.address(16, 24)
    }

    /// The address at `ipv4_at` or `ipv6_at` in the IP header, whichever version it is.
    #[inline(always)]
    fn address(&self, ipv4_at: usize, ipv6_at: usize) -> Address {
        if self.v6 {
            // SAFETY: the `Datagram` invariant: `self.ip` starts the IP and UDP headers that
            // parsing checked, and this field lies inside them.
            unsafe { address_at(self.ip + ipv6_at) }
        } else {
            // SAFETY: the `Datagram` invariant: `self.ip` starts the IP and UDP headers that
            // parsing checked, and this field lies inside them.
            [unsafe { load(self.ip + ipv4_at) }, 0, 0, 0]
        }
    }

    /// IPv4 TOS / IPv6 traffic class: DSCP and ECN.
    #[inline(always)]
    fn traffic_class(&self) -> u8 {
        if self.v6 {
            // SAFETY: the `Datagram` invariant: `self.ip` starts the IP and UDP headers that
            // parsing checked, and this field lies inside them.
            let first: u8 = unsafe { load(self.ip) };
            // SAFETY: the `Datagram` invariant: `self.ip` starts the IP and UDP headers that
            // parsing checked, and this field lies inside them.
            let second: u8 = unsafe { load(self.ip + 1) };
            (first << 4) | (second >> 4)
        } else {
            // SAFETY: the `Datagram` invariant: `self.ip` starts the IP and UDP headers that
            // parsing checked, and this field lies inside them.
            unsafe { load(self.ip + 1) }
        }
    }

    /// IPv4 identification, raw (zero for IPv6).
    #[inline(always)]
    fn ipv4_id(&self) -> u16 {
        if self.v6 {
            0
        } else {
            // SAFETY: the `Datagram` invariant: `self.ip` starts the IP and UDP headers that
            // parsing checked, and this field lies inside them.
            unsafe { load(self.ip + 4) }
        }
    }

    /// IPv4 DF flag (set for IPv6, which routers never fragment).
    #[inline(always)]
    fn dont_fragment(&self) -> bool {
        // SAFETY: the `Datagram` invariant: `self.ip` starts the IP and UDP headers that
        // parsing checked, and this field lies inside them.
        self.v6 || unsafe { load::<u8>(self.ip + 6) } & 0x40 != 0
    }

    /// Source port, raw.
    #[inline(always)]
    fn sport(&self) -> u16 {
        // SAFETY: the `Datagram` invariant: `self.ip` starts the IP and UDP headers that
        // parsing checked, and this field lies inside them.
        unsafe { load(self.udp()) }
    }

    /// Destination port, raw.
    #[inline(always)]
    fn dport(&self) -> u16 {
        // SAFETY: the `Datagram` invariant: `self.ip` starts the IP and UDP headers that
        // parsing checked, and this field lies inside them.
        unsafe { load(self.udp() + 2) }
    }

    /// UDP checksum, raw.
    #[inline(always)]
    fn checksum(&self) -> u16 {
        // SAFETY: the `Datagram` invariant: `self.ip` starts the IP and UDP headers that
        // parsing checked, and this field lies inside them.
        unsafe { load(self.udp() + 6) }
    }

    /// The same datagram's headers at `ip`, where they lie after the frame start moved.
    #[inline(always)]
    const fn moved_to(&self, ip: usize) -> Self {
        Self { ip, ..*self }
    }
}

#[inline(always)]
const fn ip_header(v6: bool) -> usize {
    if v6 { IPV6_HEADER } else { IPV4_HEADER }
}

/// What the new headers take from the binding and the relay; the rest (MAC addresses, traffic
/// class, IPv4 identification and DF) they copy from the old headers.
struct Rewrite {
    v6: bool,
    /// The source address: the relay's end of the outgoing flow.
    src: Address,
    dst: Address,
    hop_limit: u8,
    /// Ports, raw.
    sport: u16,
    dport: u16,
    /// UDP length in host order.
    udp_len: u16,
    /// UDP checksum, raw.
    checksum: u16,
    /// A ChannelData header (channel and length, raw) to write after the UDP header, peer to
    /// client.
    channel_header: Option<(u16, u16)>,
}

impl Rewrite {
    /// Length of the new headers, Ethernet to ChannelData.
    #[inline(always)]
    const fn headers_len(&self) -> usize {
        let channel = if self.channel_header.is_some() {
            CHANNEL_HEADER
        } else {
            0
        };
        ETH_HEADER + ip_header(self.v6) + UDP_HEADER + channel
    }

    /// Length of the rewritten frame.
    #[inline(always)]
    const fn frame_len(&self) -> usize {
        ETH_HEADER + ip_header(self.v6) + self.udp_len as usize
    }
}

/// Decides what to do with one frame and, for a relayed one, rewrites it.
#[inline(always)]
pub(crate) fn relay(ctx: &XdpContext) -> Outcome {
    let Some(config) = CONFIG.get(0) else {
        return Outcome::ConfigUnset;
    };
    if !config.is_set() {
        return Outcome::ConfigUnset;
    }
    let Some(eth) = check::<ETH_HEADER>(ctx, 0) else {
        return Outcome::Malformed;
    };
    // SAFETY: inside the window `check` returned.
    let ethertype: u16 = unsafe { load(eth + 12) };
    // Each IP version gets its own copy of everything after parsing: with the version known at
    // compile time, an IPv4 address is one word and three constant zeros, and the compiler
    // drops the work on the zeros (docs/benchmarks.md has what this saved).
    let result = if ethertype == ETHERTYPE_IPV4 {
        parse_ipv4(ctx).and_then(|datagram| dispatch(ctx, config, &datagram))
    } else if ethertype == ETHERTYPE_IPV6 {
        parse_ipv6(ctx).and_then(|datagram| dispatch(ctx, config, &datagram))
    } else {
        Err(Outcome::NotIp)
    };
    match result {
        Ok(outcome) | Err(outcome) => outcome,
    }
}

/// Sends a datagram to the direction its destination port says. The relayed range is tested
/// first: two compares, where the listening ports are up to eight (user space keeps the two
/// apart).
#[inline(always)]
fn dispatch(ctx: &XdpContext, config: &XdpConfig, datagram: &Datagram) -> Result<Outcome, Outcome> {
    let dport = datagram.dport();
    if config.is_relay_port(u16::from_be(dport)) {
        peer_to_client(ctx, config, datagram)
    } else if config.is_listen_port_wire(dport) {
        client_to_peer(ctx, config, datagram)
    } else {
        Err(Outcome::OtherPort)
    }
}

/// Parses an IPv4 header without options and the UDP header after it.
#[inline(always)]
fn parse_ipv4(ctx: &XdpContext) -> Result<Datagram, Outcome> {
    let frame = frame_len(ctx);
    // SAFETY (every `load` below): inside the window the preceding `check` returned.
    // One bounds check for both headers: a frame too short for a UDP header is malformed or
    // not worth classifying further (Ethernet pads every frame to 60 bytes anyway).
    let ip = check::<{ IPV4_HEADER + UDP_HEADER }>(ctx, ETH_HEADER).ok_or(Outcome::Malformed)?;
    // SAFETY: inside the IPv4 and UDP headers the `check` above returned.
    let version_ihl: u8 = unsafe { load(ip) };
    if version_ihl >> 4 != 4 {
        return Err(Outcome::Malformed);
    }
    let ihl = version_ihl & 0x0F;
    if ihl != 5 {
        return Err(if ihl > 5 {
            Outcome::Ipv4Options
        } else {
            Outcome::Malformed
        });
    }
    // SAFETY: inside the IPv4 and UDP headers the `check` above returned.
    let fragment = u16::from_be(unsafe { load(ip + 6) });
    // More-fragments flag or a fragment offset: a piece of a datagram, not a datagram.
    if fragment & 0x3FFF != 0 {
        return Err(Outcome::Ipv4Fragment);
    }
    // SAFETY: inside the IPv4 and UDP headers the `check` above returned.
    let protocol: u8 = unsafe { load(ip + 9) };
    if protocol != PROTO_UDP {
        return Err(Outcome::NotUdp);
    }
    // SAFETY: inside the IPv4 and UDP headers the `check` above returned.
    let total = u16::from_be(unsafe { load(ip + 2) }) as usize;
    if total < IPV4_HEADER + UDP_HEADER || ETH_HEADER + total > frame {
        return Err(Outcome::Malformed);
    }
    // SAFETY: inside the IPv4 and UDP headers the `check` above returned.
    let udp_len = u16::from_be(unsafe { load(ip + IPV4_HEADER + 4) });
    if udp_len as usize != total - IPV4_HEADER {
        return Err(Outcome::Malformed);
    }
    Ok(Datagram {
        v6: false,
        ip,
        udp_len,
    })
}

/// Parses an IPv6 header followed directly by a UDP header.
#[inline(always)]
fn parse_ipv6(ctx: &XdpContext) -> Result<Datagram, Outcome> {
    let frame = frame_len(ctx);
    // SAFETY (every `load` below): inside the window the preceding `check` returned.
    // One bounds check for both headers, as for IPv4.
    let ip = check::<{ IPV6_HEADER + UDP_HEADER }>(ctx, ETH_HEADER).ok_or(Outcome::Malformed)?;
    // SAFETY: inside the IPv6 and UDP headers the `check` above returned.
    let first: u8 = unsafe { load(ip) };
    if first >> 4 != 6 {
        return Err(Outcome::Malformed);
    }
    // SAFETY: inside the IPv6 and UDP headers the `check` above returned.
    let next_header: u8 = unsafe { load(ip + 6) };
    if next_header != PROTO_UDP {
        return Err(if is_ipv6_extension(next_header) {
            Outcome::Ipv6ExtensionHeader
        } else {
            Outcome::NotUdp
        });
    }
    // SAFETY: inside the IPv6 and UDP headers the `check` above returned.
    let payload = u16::from_be(unsafe { load(ip + 4) }) as usize;
    if payload < UDP_HEADER || ETH_HEADER + IPV6_HEADER + payload > frame {
        return Err(Outcome::Malformed);
    }
    // SAFETY: inside the IPv6 and UDP headers the `check` above returned.
    let udp_len = u16::from_be(unsafe { load(ip + IPV6_HEADER + 4) });
    if udp_len as usize != payload {
        return Err(Outcome::Malformed);
    }
    Ok(Datagram {
        v6: true,
        ip,
        udp_len,
    })
}

/// ChannelData from a client: strip the header (and padding), send the payload to the peer.
#[inline(always)]
fn client_to_peer(
    ctx: &XdpContext,
    config: &XdpConfig,
    datagram: &Datagram,
) -> Result<Outcome, Outcome> {
    let payload = datagram.udp_len as usize - UDP_HEADER;
    if payload < CHANNEL_HEADER {
        return Err(Outcome::NotChannelData);
    }
    let header =
        check::<CHANNEL_HEADER>(ctx, datagram.udp_at() + UDP_HEADER).ok_or(Outcome::Malformed)?;
    // SAFETY: inside the ChannelData header the `check` above returned.
    let first: u8 = unsafe { load(header) };
    // Channel numbers 0x4000–0x4FFF: the first byte is 0x40–0x4F; 0x40–0x7F where user space
    // took RFC 5766's range (0x4000–0x7FFF).
    if !config.is_channel_first_byte(first) {
        return Err(Outcome::NotChannelData);
    }
    // SAFETY: inside the ChannelData header the `check` above returned.
    let channel: u16 = unsafe { load(header) };
    // SAFETY: inside the ChannelData header the `check` above returned.
    let length_raw: u16 = unsafe { load(header + 2) };
    let length = u16::from_be(length_raw) as usize;
    if CHANNEL_HEADER + length > payload {
        return Err(Outcome::BadChannelData);
    }
    let padding = payload - CHANNEL_HEADER - length;
    if padding > 3 {
        return Err(Outcome::BadChannelData);
    }

    let client = End {
        address: datagram.src(),
        local: datagram.dst(),
        port: datagram.sport(),
        local_port: datagram.dport(),
        channel,
        family: datagram.family(),
    };
    let Found {
        end: binding,
        screened,
    } = lookup::peer_of(&client).ok_or(Outcome::NoChannel)?;
    let header = ChannelHeader {
        channel,
        length,
        length_raw,
        padding,
    };
    // Each outgoing family gets its own copy of the rest, as each incoming one does (see
    // `relay`): an IPv4 peer's address is then one word.
    if binding.family == FAMILY_V6 {
        send_to_peer(ctx, config, datagram, &header, &binding, screened, true)
    } else {
        send_to_peer(
            ctx,
            config,
            datagram,
            &header,
            &binding.ipv4(),
            screened,
            false,
        )
    }
}

/// The fields of a ChannelData header, raw where marked.
struct ChannelHeader {
    /// Raw.
    channel: u16,
    length: usize,
    /// Raw.
    length_raw: u16,
    /// Bytes after the data, up to the end of the UDP payload (0–3).
    padding: usize,
}

/// Rewrites a client's ChannelData datagram into UDP to the bound peer.
#[inline(always)]
fn send_to_peer(
    ctx: &XdpContext,
    config: &XdpConfig,
    datagram: &Datagram,
    header: &ChannelHeader,
    binding: &End,
    screened: bool,
    out_v6: bool,
) -> Result<Outcome, Outcome> {
    let ChannelHeader {
        channel,
        length,
        length_raw,
        padding,
    } = *header;
    let peer = binding.address;
    let peer_port = binding.port;
    let relayed = binding.local;
    let relay_port = binding.local_port;

    if !screened && is_own_address(own_addresses(), &peer, out_v6) {
        return Err(Outcome::Hairpin);
    }
    if same_address(&relayed, &peer) {
        return Err(Outcome::PacketLoop);
    }

    let udp_len = (UDP_HEADER + length) as u16;
    let old_checksum = datagram.checksum();
    let checksum = if old_checksum == 0 {
        keep_zero_checksum(datagram, out_v6)?
    } else {
        let removed = add_address(add_address(0, &datagram.dst()), &datagram.src())
            + 2 * datagram.udp_len.to_be() as u64
            + datagram.sport() as u64
            + datagram.dport() as u64
            + channel as u64
            + length_raw as u64
            + padding_sum(ctx, datagram, padding)?;
        let added = add_address(add_address(0, &relayed), &peer)
            + 2 * udp_len.to_be() as u64
            + relay_port as u64
            + peer_port as u64;
        udp_on_wire(update(old_checksum, removed, added))
    };

    let rewrite = Rewrite {
        v6: out_v6,
        src: relayed,
        dst: peer,
        hop_limit: if out_v6 {
            config.hop_limit()
        } else {
            config.ttl()
        },
        sport: relay_port,
        dport: peer_port,
        udp_len,
        checksum,
        channel_header: None,
    };
    emit(
        ctx,
        config,
        datagram,
        &rewrite,
        datagram.udp_at() + UDP_HEADER + CHANNEL_HEADER,
    )?;
    Ok(Outcome::client_to_peer(datagram.v6, out_v6))
}

/// UDP from a peer: prepend a ChannelData header, send it to the client.
#[inline(always)]
fn peer_to_client(
    ctx: &XdpContext,
    config: &XdpConfig,
    datagram: &Datagram,
) -> Result<Outcome, Outcome> {
    let peer = End {
        address: datagram.src(),
        local: datagram.dst(),
        port: datagram.sport(),
        local_port: datagram.dport(),
        channel: 0,
        family: datagram.family(),
    };
    let Found {
        end: client,
        screened,
    } = lookup::client_of(&peer).ok_or(Outcome::NoPeerBinding)?;
    // One copy of the rest per outgoing family (see `client_to_peer`).
    if client.family == FAMILY_V6 {
        send_to_client(ctx, config, datagram, &client, screened, true)
    } else {
        send_to_client(ctx, config, datagram, &client.ipv4(), screened, false)
    }
}

/// Rewrites a peer's UDP datagram into ChannelData to the bound client.
#[inline(always)]
fn send_to_client(
    ctx: &XdpContext,
    config: &XdpConfig,
    datagram: &Datagram,
    client: &End,
    screened: bool,
    out_v6: bool,
) -> Result<Outcome, Outcome> {
    let address = client.address;
    let client_port = client.port;
    let listen = client.local;
    let listen_port = client.local_port;
    let channel = client.channel;

    // The sender is the binding's peer (the key matched), so screening covers it.
    if !screened && is_own_address(own_addresses(), &datagram.src(), datagram.v6) {
        return Err(Outcome::Hairpin);
    }
    if same_address(&listen, &address) {
        return Err(Outcome::PacketLoop);
    }

    // The ChannelData length field and the UDP length must both still fit in 16 bits.
    if datagram.udp_len > u16::MAX - CHANNEL_HEADER as u16 {
        return Err(Outcome::TooBig);
    }
    let length_raw = (datagram.udp_len - UDP_HEADER as u16).to_be();
    let udp_len = datagram.udp_len + CHANNEL_HEADER as u16;
    let old_checksum = datagram.checksum();
    let checksum = if old_checksum == 0 {
        keep_zero_checksum(datagram, out_v6)?
    } else {
        let removed = add_address(add_address(0, &datagram.dst()), &datagram.src())
            + 2 * datagram.udp_len.to_be() as u64
            + datagram.sport() as u64
            + datagram.dport() as u64;
        // The header sits at an even offset and shifts the payload by 4 bytes, so the payload's
        // words stay words; only the header's two words are new.
        let added = add_address(add_address(0, &listen), &address)
            + 2 * udp_len.to_be() as u64
            + listen_port as u64
            + client_port as u64
            + channel as u64
            + length_raw as u64;
        udp_on_wire(update(old_checksum, removed, added))
    };

    let rewrite = Rewrite {
        v6: out_v6,
        src: listen,
        dst: address,
        hop_limit: if out_v6 {
            config.hop_limit()
        } else {
            config.ttl()
        },
        sport: listen_port,
        dport: client_port,
        udp_len,
        checksum,
        channel_header: Some((channel, length_raw)),
    };
    emit(
        ctx,
        config,
        datagram,
        &rewrite,
        datagram.udp_at() + UDP_HEADER,
    )?;
    Ok(Outcome::peer_to_client(datagram.v6, out_v6))
}

/// The relay's own addresses, or `None` if the map cannot be read (never for an array).
#[inline(always)]
fn own_addresses() -> Option<&'static OwnAddresses> {
    OWN_ADDRESSES.get(0)
}

/// The relay's own address of a family as a 16-byte field, all zeros if unset.
#[inline(always)]
fn own_address(own: Option<&OwnAddresses>, v6: bool) -> Address {
    match own {
        Some(own) if v6 => address_of(own.ipv6_octets()),
        // SAFETY: a valid reference to 4 bytes; any bit pattern is a valid `u32`.
        Some(own) => [
            unsafe { core::ptr::read_unaligned(own.ipv4_octets().as_ptr().cast()) },
            0,
            0,
            0,
        ],
        None => [0; 4],
    }
}

/// Whether `address` (of the given family) is the relay's own address of that family.
#[inline(always)]
fn is_own_address(own: Option<&OwnAddresses>, address: &Address, v6: bool) -> bool {
    let mine = own_address(own, v6);
    !is_zero(&mine) && same_address(&mine, address)
}

/// The checksum to send for an incoming datagram without one: IPv4 to IPv4 keeps "none"; a
/// datagram leaving as IPv6 must have one (user space computes it), and an incoming IPv6
/// datagram with a zero checksum is invalid (user space's stack discards it).
#[inline(always)]
fn keep_zero_checksum(datagram: &Datagram, out_v6: bool) -> Result<u16, Outcome> {
    if datagram.v6 || out_v6 {
        Err(Outcome::ZeroChecksum)
    } else {
        Ok(0)
    }
}

/// The raw checksum contribution of the `padding` (0–3) bytes that end the UDP datagram: a byte
/// at an even offset from the UDP header is the first byte of a word, at an odd one the second.
///
/// The bytes are copied out with `bpf_xdp_load_bytes`, which checks the variable offset itself:
/// direct access at `data + end - 3` gets folded by the compiler into negative offsets from
/// `data + end`, which the verifier refuses.
#[inline(always)]
fn padding_sum(ctx: &XdpContext, datagram: &Datagram, padding: usize) -> Result<u64, Outcome> {
    if padding == 0 {
        return Ok(0);
    }
    let end = datagram.udp_at() + datagram.udp_len as usize;
    // The payload is at least 4 + `padding` bytes, so the last 4 bytes are all after the UDP
    // header.
    let mut last = [0u8; 4];
    // SAFETY: `ctx.ctx` is the program's context and `last` a 4-byte stack buffer.
    let loaded =
        unsafe { bpf_xdp_load_bytes(ctx.ctx, (end - 4) as u32, last.as_mut_ptr().cast(), 4) };
    if loaded != 0 {
        return Err(Outcome::Malformed);
    }
    // Is `last[1]` (at UDP offset udp_len - 3) the first byte of a word?
    let first_even = (datagram.udp_len as usize - 3) & 1 == 0;
    let word = |byte: u8, even: bool| -> u64 {
        (if even {
            u16::from_ne_bytes([byte, 0])
        } else {
            u16::from_ne_bytes([0, byte])
        }) as u64
    };
    let (w0, w1, w2) = (
        word(last[1], first_even),
        word(last[2], !first_even),
        word(last[3], first_even),
    );
    Ok(match padding {
        1 => w2,
        2 => w1 + w2,
        _ => w0 + w1 + w2,
    })
}

/// Whether the rewritten IP packet of `ip_len` bytes fits the interface's MTU.
#[inline(always)]
fn fits_mtu(ctx: &XdpContext, ip_len: usize) -> bool {
    // With a non-zero `mtu_len` the helper compares it, as an L3 length, with the MTU of the
    // receiving device (ifindex 0), which is the device `XDP_TX` sends on.
    let mut mtu_len = ip_len as u32;
    // SAFETY: `ctx.ctx` is the program's context and `mtu_len` a valid stack slot.
    let result = unsafe { bpf_check_mtu(ctx.ctx.cast(), 0, &mut mtu_len, 0, 0) };
    result == 0
}

/// Replaces the `old_len` bytes of headers in front of the payload with the new ones and
/// resizes the frame as the configuration's [`AdjustMode`] says; trims trailing bytes.
///
/// At the head, the new headers end where the old ones end, so the two overlap in one window of
/// the frame, and the new ones are built from the old ones in place. When the headers shrink
/// (client to peer in one family), they are built before the frame start moves, so nothing has
/// to be held across the helper call: a move forwards that leaves the new headers in the frame
/// cannot fail (the helper refuses only a start beyond `data_end` minus an Ethernet header).
/// When they grow, the start moves first, which may fail (a driver that leaves no headroom)
/// and then leaves the frame intact: for `XDP_PASS`, or in `Auto` for the tail.
#[inline(always)]
fn emit(
    ctx: &XdpContext,
    config: &XdpConfig,
    datagram: &Datagram,
    rewrite: &Rewrite,
    old_len: usize,
) -> Result<(), Outcome> {
    let new_len = rewrite.headers_len();
    let ip_len = ip_header(rewrite.v6) + rewrite.udp_len as usize;
    // Only a datagram that grows can outgrow the link it came in on, and only one of more than
    // `MIN_LINK_MTU` bytes can outgrow any link the relay attaches to; the helper call costs
    // as much as the rest of the rewrite, so it is spared for everything smaller.
    if ip_len > datagram.ip_len() && ip_len > MIN_LINK_MTU as usize && !fits_mtu(ctx, ip_len) {
        return Err(Outcome::TooBig);
    }
    let mode = config.adjust_mode();
    // `Auto` shrinks at the tail: a driver without headroom may refuse even a move forwards
    // (see `AdjustMode`), and by then the headers are written.
    if mode == AdjustMode::Tail || (mode == AdjustMode::Auto && old_len >= new_len) {
        return emit_at_tail(ctx, datagram, rewrite, old_len, new_len);
    }
    if old_len >= new_len {
        let delta = old_len - new_len;
        // SAFETY: the old headers were checked when they were parsed (the ChannelData header
        // by `client_to_peer`), and the new ones end where they end.
        unsafe { build(datagram.ip - ETH_HEADER, datagram, 0, delta, rewrite) };
        // SAFETY: `ctx.ctx` is the program's context. Every packet address is re-derived after.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta as i32) } != 0 {
            // Only on a driver that leaves less headroom than the kernel's frame metadata takes,
            // which `Head` is documented not to support (it refuses every growth too, which is
            // what `Auto` detects); the frame goes up with its headers half rewritten, and the
            // kernel stack discards it.
            return Err(Outcome::AdjustFailed);
        }
    } else {
        let delta = new_len - old_len;
        // SAFETY: as above.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(delta as i32)) } != 0 {
            if mode == AdjustMode::Auto {
                count_probe(Outcome::HEAD_REFUSED_INDEX);
                return emit_at_tail(ctx, datagram, rewrite, old_len, new_len);
            }
            return Err(Outcome::AdjustFailed);
        }
        if mode == AdjustMode::Auto {
            count_probe(Outcome::HEAD_GREW_INDEX);
        }
        let Some(f) = window(ctx, new_len) else {
            // Cannot happen (the frame holds at least the new headers), but the verifier needs
            // the check; nothing was written, so moving the start back restores the frame.
            // SAFETY: as above.
            unsafe { bpf_xdp_adjust_head(ctx.ctx, delta as i32) };
            return Err(Outcome::AdjustFailed);
        };
        // SAFETY: `f` starts a checked window of `new_len` bytes, which hold the new headers at
        // 0 and the old ones, moved, at `delta`.
        unsafe { build(f, datagram, delta, 0, rewrite) };
    }
    trim(ctx, rewrite);
    Ok(())
}

/// Cuts what follows the rewritten IP packet (ChannelData padding, Ethernet padding).
#[inline(always)]
fn trim(ctx: &XdpContext, rewrite: &Rewrite) {
    let len = frame_len(ctx);
    let want = rewrite.frame_len();
    if len > want {
        // A failure leaves trailing bytes after the IP packet, which receivers ignore.
        // SAFETY: `ctx.ctx` is the program's context.
        unsafe { bpf_xdp_adjust_tail(ctx.ctx, want as i32 - len as i32) };
    }
}

/// Counts what the driver did with a frame that grows at the head in [`AdjustMode::Auto`]:
/// refused ([`Outcome::HEAD_REFUSED_INDEX`]) or moved ([`Outcome::HEAD_GREW_INDEX`]).
#[inline(always)]
fn count_probe(index: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU array slot of this CPU, which nothing else writes while the program
        // runs (XDP programs are not preempted on their CPU).
        unsafe { (*counter).packets += 1 };
    }
}

/// [`emit`] for drivers without headroom: the headers stay at the frame start, the frame is
/// resized at its end and the payload moved by the difference.
///
/// Growing, the frame is extended first (a failure leaves it intact for `XDP_PASS`), the
/// payload moved towards the end, and the headers built last, over the old ones and the gap.
/// Shrinking, the headers are built first (the old ones, which the payload move would overwrite,
/// are read before the first store), the payload moved towards the start over what is left of
/// the old headers, and the frame cut at the end.
#[inline(always)]
fn emit_at_tail(
    ctx: &XdpContext,
    datagram: &Datagram,
    rewrite: &Rewrite,
    old_len: usize,
    new_len: usize,
) -> Result<(), Outcome> {
    let want = rewrite.frame_len();
    let payload = want - new_len;
    if payload > MOVE_CHUNK * MAX_MOVE_CHUNKS {
        // Larger than any single-buffer XDP frame; never moved half.
        return Err(Outcome::TooBig);
    }
    if new_len > old_len {
        let len = frame_len(ctx);
        if want > len {
            // SAFETY: `ctx.ctx` is the program's context. Every packet address is re-derived
            // after.
            if unsafe { bpf_xdp_adjust_tail(ctx.ctx, (want - len) as i32) } != 0 {
                return Err(Outcome::AdjustFailed);
            }
        }
        move_payload(ctx, old_len, new_len, payload)?;
        let f = window(ctx, new_len).ok_or(Outcome::AdjustFailed)?;
        // SAFETY: `f` starts a checked window of `new_len` bytes, which hold the old headers at
        // 0 (the payload moved away from behind them) and get the new ones there.
        unsafe { build(f, datagram, 0, 0, rewrite) };
    } else {
        let f = window(ctx, old_len).ok_or(Outcome::AdjustFailed)?;
        // SAFETY: `f` starts a checked window of `old_len` bytes, which hold the old headers at
        // 0 and get the new, shorter ones there.
        unsafe { build(f, datagram, 0, 0, rewrite) };
        move_payload(ctx, old_len, new_len, payload)?;
    }
    trim(ctx, rewrite);
    Ok(())
}

/// Bytes moved per helper call pair: a stack buffer, which with the rest of the program stays
/// within the 512 bytes of stack eBPF allows.
const MOVE_CHUNK: usize = 256;
/// More chunks than the largest single-buffer XDP frame (a page, less headroom and the shared
/// info) holds, so the verifier sees a bounded loop.
const MAX_MOVE_CHUNKS: usize = 16;

/// Moves the `len` bytes at offset `from` of the frame to offset `to`, where the two ranges may
/// overlap: chunk by chunk from the start when moving towards the start, from the end when
/// moving towards the end, so no chunk is overwritten before it is read.
///
/// `bpf_xdp_load_bytes` and `bpf_xdp_store_bytes` check each offset against the frame
/// themselves; direct packet access at offsets the verifier cannot bound would be refused. The
/// caller checked that `len` is at most `MOVE_CHUNK * MAX_MOVE_CHUNKS`.
#[inline(always)]
fn move_payload(ctx: &XdpContext, from: usize, to: usize, len: usize) -> Result<(), Outcome> {
    let mut buffer = MaybeUninit::<[u8; MOVE_CHUNK]>::uninit();
    let full = len / MOVE_CHUNK;
    let rest = len % MOVE_CHUNK;
    if to < from {
        for i in 0..MAX_MOVE_CHUNKS {
            if i >= full {
                break;
            }
            copy_chunk(
                ctx,
                &mut buffer,
                from + i * MOVE_CHUNK,
                to + i * MOVE_CHUNK,
                MOVE_CHUNK,
            )?;
        }
        if rest > 0 {
            let at = full * MOVE_CHUNK;
            copy_chunk(ctx, &mut buffer, from + at, to + at, chunk_len(rest))?;
        }
    } else {
        if rest > 0 {
            let at = full * MOVE_CHUNK;
            copy_chunk(ctx, &mut buffer, from + at, to + at, chunk_len(rest))?;
        }
        for i in 0..MAX_MOVE_CHUNKS {
            if i >= full {
                break;
            }
            let at = (full - 1 - i) * MOVE_CHUNK;
            copy_chunk(ctx, &mut buffer, from + at, to + at, MOVE_CHUNK)?;
        }
    }
    Ok(())
}

/// `rest` (1 to `MOVE_CHUNK - 1`) in a form whose bounds the verifier can see: the helpers take
/// only a length it knows to be between 1 and the buffer's size.
#[inline(always)]
fn chunk_len(rest: usize) -> usize {
    ((rest - 1) & (MOVE_CHUNK - 1)) + 1
}

/// Copies `len` (1 to `MOVE_CHUNK`) bytes of the frame from offset `from` to `to` through
/// `buffer`.
#[inline(always)]
fn copy_chunk(
    ctx: &XdpContext,
    buffer: &mut MaybeUninit<[u8; MOVE_CHUNK]>,
    from: usize,
    to: usize,
    len: usize,
) -> Result<(), Outcome> {
    let bytes = buffer.as_mut_ptr().cast();
    // SAFETY: `ctx.ctx` is the program's context and `buffer` holds `MOVE_CHUNK` >= `len`
    // bytes; the helper checks the offset against the frame.
    if unsafe { bpf_xdp_load_bytes(ctx.ctx, from as u32, bytes, len as u32) } != 0 {
        return Err(Outcome::AdjustFailed);
    }
    // SAFETY: as above; the bytes were written by the load.
    if unsafe { bpf_xdp_store_bytes(ctx.ctx, to as u32, bytes, len as u32) } != 0 {
        return Err(Outcome::AdjustFailed);
    }
    Ok(())
}

/// The frame start, checked to hold `len` bytes: any header stack the relay reads or writes
/// (one bounds check; the length is a constant where this is inlined).
#[inline(always)]
fn window(ctx: &XdpContext, len: usize) -> Option<usize> {
    const V4: usize = ETH_HEADER + IPV4_HEADER + UDP_HEADER;
    const V6: usize = ETH_HEADER + IPV6_HEADER + UDP_HEADER;
    const V4_CHANNEL: usize = V4 + CHANNEL_HEADER;
    const V6_CHANNEL: usize = V6 + CHANNEL_HEADER;
    match len {
        V4 => check::<V4>(ctx, 0),
        V4_CHANNEL => check::<V4_CHANNEL>(ctx, 0),
        V6 => check::<V6>(ctx, 0),
        V6_CHANNEL => check::<V6_CHANNEL>(ctx, 0),
        _ => None,
    }
}

/// Writes the new headers at `f + new_at`, copying what they keep from the old headers at
/// `f + old_at`. Every old field is loaded before the first store, since the two overlap.
///
/// # Safety
///
/// `f` must start a checked window holding the old headers of `datagram` at `old_at` and the
/// new headers of `r` at `new_at`.
#[inline(always)]
unsafe fn build(f: usize, datagram: &Datagram, old_at: usize, new_at: usize, r: &Rewrite) {
    let old = datagram.moved_to(f + old_at + ETH_HEADER);
    // SAFETY: the loads lie inside the window the caller guarantees.
    let (dst_mac, src_mac): ((u32, u16), (u32, u16)) = unsafe {
        (
            (load(f + old_at), load(f + old_at + 4)),
            (load(f + old_at + 6), load(f + old_at + 10)),
        )
    };
    let traffic_class = old.traffic_class();
    let ipv4_id = old.ipv4_id();
    let dont_fragment = old.dont_fragment();
    let src = r.src;
    let n = f + new_at;
    // SAFETY: the new headers lie inside the window the caller guarantees.
    unsafe {
        store(n, src_mac.0);
        store(n + 4, src_mac.1);
        store(n + 6, dst_mac.0);
        store(n + 10, dst_mac.1);
        if r.v6 {
            write_ipv6(n, r, traffic_class, &src);
            write_udp(n + ETH_HEADER + IPV6_HEADER, r);
        } else {
            write_ipv4(n, r, traffic_class, ipv4_id, dont_fragment, src[0]);
            write_udp(n + ETH_HEADER + IPV4_HEADER, r);
        }
    }
}

/// Writes the EtherType and IPv4 header after the MAC addresses at `n`.
///
/// # Safety
///
/// `n` must start a checked window holding the new headers.
#[inline(always)]
unsafe fn write_ipv4(
    n: usize,
    r: &Rewrite,
    traffic_class: u8,
    ipv4_id: u16,
    dont_fragment: bool,
    src: u32,
) {
    let first = u16::from_ne_bytes([0x45, traffic_class]);
    let total = ((IPV4_HEADER + r.udp_len as usize) as u16).to_be();
    let flags = if dont_fragment { 0x4000u16.to_be() } else { 0 };
    let ttl_protocol = u16::from_ne_bytes([r.hop_limit, PROTO_UDP]);
    let sum = first as u64
        + total as u64
        + ipv4_id as u64
        + flags as u64
        + ttl_protocol as u64
        + src as u64
        + r.dst[0] as u64;
    // SAFETY: the caller guarantees the window.
    unsafe {
        store(n + 12, ETHERTYPE_IPV4);
        store(n + 14, first);
        store(n + 16, total);
        store(n + 18, ipv4_id);
        store(n + 20, flags);
        store(n + 22, ttl_protocol);
        store(n + 24, finish(sum));
        store(n + 26, src);
        store(n + 30, r.dst[0]);
    }
}

/// Writes the EtherType and IPv6 header after the MAC addresses at `n`.
///
/// # Safety
///
/// As for [`write_ipv4`].
#[inline(always)]
unsafe fn write_ipv6(n: usize, r: &Rewrite, traffic_class: u8, src: &Address) {
    // Version 6, traffic class, flow label 0.
    let first = u32::from_ne_bytes([0x60 | (traffic_class >> 4), traffic_class << 4, 0, 0]);
    // SAFETY: the caller guarantees the window.
    unsafe {
        store(n + 12, ETHERTYPE_IPV6);
        store(n + 14, first);
        store(n + 18, r.udp_len.to_be());
        store(n + 20, u16::from_ne_bytes([PROTO_UDP, r.hop_limit]));
        store_address(n + 22, src);
        store_address(n + 38, &r.dst);
    }
}

/// Writes the UDP header at `at` and, if any, the ChannelData header after it.
///
/// # Safety
///
/// `at` must lie in a checked window with room for both.
#[inline(always)]
unsafe fn write_udp(at: usize, r: &Rewrite) {
    // SAFETY: the caller guarantees the window.
    unsafe {
        store(at, r.sport);
        store(at + 2, r.dport);
        store(at + 4, r.udp_len.to_be());
        store(at + 6, r.checksum);
        if let Some((channel, length)) = r.channel_header {
            store(at + UDP_HEADER, channel);
            store(at + UDP_HEADER + 2, length);
        }
    }
}
