//! The sockets of one relay thread: bound before the thread starts (so that start-up errors are
//! reported before the relay claims to be ready), and the borrowed view the loop and the command
//! execution send through.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;

use anyhow::{Context, Result};
use turnpike_io as udp;
use turnpike_proto::AddressFamily;
use turnpike_relay::{Config, RelaySocket};
use turnpike_xdp_user::XdpRelay;

use super::ShardPlan;
use crate::stream::StreamListener;

/// The sockets of a shard, bound before its thread starts so that start-up errors are reported
/// before the relay claims to be ready.
pub(crate) struct ShardSockets {
    pub(super) plan: ShardPlan,
    pub(super) listeners: Vec<(SocketAddr, UdpSocket)>,
    pub(super) stream_listeners: Vec<StreamListener>,
    /// Indexed by [`RelaySlots`].
    pub(super) relays: Vec<Option<UdpSocket>>,
    pub(super) slots: RelaySlots,
    pub(super) excluded: Vec<u16>,
    pub(crate) smallest_buffer: usize,
}

/// Where the socket of a relayed port and family sits among a shard's relayed sockets: two
/// slots per port, IPv4 then IPv6, from the block's first port on. With one dual-stack socket
/// per port, only the IPv6 slot holds a socket and serves both families. The only place that
/// knows the layout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RelaySlots {
    low: u16,
    dual_stack: bool,
}

impl RelaySlots {
    /// Slots for a block starting at port `low`.
    pub(super) const fn new(low: u16, dual_stack: bool) -> Self {
        Self { low, dual_stack }
    }

    /// How many slots a block of `ports` ports takes.
    pub(super) const fn count(ports: usize) -> usize {
        ports * 2
    }

    /// The slot of the socket that serves `relay`, if the port is in the block.
    pub(crate) fn slot(self, relay: RelaySocket) -> Option<usize> {
        let offset = relay.port.checked_sub(self.low)?;
        let family = if self.dual_stack {
            AddressFamily::V6
        } else {
            relay.family
        };
        Some(usize::from(offset) * 2 + family_index(family))
    }

    /// The relayed port and family of `slot`; with a dual-stack socket the family is the
    /// peer's, which the caller takes from each datagram.
    pub(super) fn socket(self, slot: usize) -> RelaySocket {
        let family = if slot.is_multiple_of(2) {
            AddressFamily::V4
        } else {
            AddressFamily::V6
        };
        let port = self
            .low
            .saturating_add(u16::try_from(slot / 2).unwrap_or(u16::MAX));
        RelaySocket { port, family }
    }

    pub(super) const fn dual_stack(self) -> bool {
        self.dual_stack
    }
}

impl std::fmt::Debug for ShardSockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardSockets")
            .field("index", &self.plan.index)
            .finish_non_exhaustive()
    }
}

const fn family_index(family: AddressFamily) -> usize {
    match family {
        AddressFamily::V4 => 0,
        AddressFamily::V6 => 1,
    }
}

/// Whether one dual-stack socket per relayed port serves both families: when both are offered
/// and both would bind the unspecified address anyway. It halves the descriptors the relay needs
/// (16,384 ports fit a 20,000-descriptor limit); a specific address per family needs two.
pub(crate) fn dual_stack_relays(relay_bind: &[IpAddr], core: &Config) -> bool {
    core.relay_ipv4.is_some()
        && core.relay_ipv6.is_some()
        && relay_bind_ip(relay_bind, AddressFamily::V4).is_unspecified()
        && relay_bind_ip(relay_bind, AddressFamily::V6).is_unspecified()
}

/// The local address relayed sockets of `family` bind to: the first address of that family in
/// `relay_bind` (`--relay-ip`, then the listening addresses; see `Settings::relay_bind`), the
/// unspecified address if there is none. (The advertised address may belong to a NAT in front
/// of the relay and not be local at all.)
fn relay_bind_ip(relay_bind: &[IpAddr], family: AddressFamily) -> IpAddr {
    let matching = relay_bind
        .iter()
        .copied()
        .find(|ip| AddressFamily::of(*ip) == family);
    match (matching, family) {
        (Some(ip), _) => ip,
        (None, AddressFamily::V4) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::V6) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

impl ShardSockets {
    /// Binds the listening sockets and one socket per relayed port and offered family.
    ///
    /// All relayed ports are bound up front: they overlap the kernel's ephemeral port range, so
    /// binding on demand could find a port taken by some outgoing connection after the relay
    /// has already promised it to a client. A port that cannot be bound now is left out.
    pub(crate) fn bind(plan: ShardPlan) -> Result<Self> {
        let mut smallest_buffer = usize::MAX;
        let mut listeners = Vec::new();
        for address in &plan.listen {
            let (socket, sizes) = udp::bind(*address, true, plan.socket_buffer)
                .with_context(|| format!("listen: cannot bind {address}"))?;
            if address.ip().is_unspecified() {
                // So that answers leave from the address each client wrote to.
                udp::receive_destination(&socket, address.is_ipv6()).with_context(|| {
                    format!("listen: cannot learn destination addresses on {address}")
                })?;
            }
            smallest_buffer = smallest_buffer.min(sizes.receive).min(sizes.send);
            listeners.push((*address, socket));
        }
        let stream_listeners = plan
            .stream_listen
            .iter()
            .map(|(address, tls)| StreamListener::bind(*address, *tls))
            .collect::<Result<Vec<_>>>()?;
        let families: Vec<AddressFamily> = [
            plan.core.relay_ipv4.map(|_| AddressFamily::V4),
            plan.core.relay_ipv6.map(|_| AddressFamily::V6),
        ]
        .into_iter()
        .flatten()
        .collect();
        let size = plan.relay_ports.clone().count();
        let mut relays: Vec<Option<UdpSocket>> =
            (0..RelaySlots::count(size)).map(|_| None).collect();
        let mut excluded = Vec::new();
        let dual_stack = dual_stack_relays(&plan.relay_bind, &plan.core);
        let slots = RelaySlots::new(*plan.relay_ports.start(), dual_stack);
        let families = if dual_stack {
            vec![AddressFamily::V6]
        } else {
            families
        };
        for port in plan.relay_ports.clone() {
            for family in &families {
                let address = SocketAddr::new(relay_bind_ip(&plan.relay_bind, *family), port);
                let bound = if dual_stack {
                    udp::bind_dual_stack(port, plan.socket_buffer)
                } else {
                    udp::bind(address, false, plan.socket_buffer)
                };
                match bound {
                    Ok((socket, sizes)) => {
                        smallest_buffer = smallest_buffer.min(sizes.receive).min(sizes.send);
                        if let Some(slot) = slots.slot(RelaySocket {
                            port,
                            family: *family,
                        }) {
                            relays[slot] = Some(socket);
                        }
                    }
                    Err(error) if error.raw_os_error() == Some(libc::EMFILE) => {
                        return Err(error).context(
                            "relay-ports: out of file descriptors; raise the open-file limit (ulimit -n) \
                             or shrink the range",
                        );
                    }
                    Err(error) => {
                        tracing::debug!(port, %error, "relayed port unavailable");
                        excluded.push(port);
                    }
                }
            }
        }
        excluded.dedup();
        Ok(Self {
            plan,
            listeners,
            stream_listeners,
            relays,
            slots,
            excluded,
            smallest_buffer,
        })
    }

    pub(crate) fn excluded_ports(&self) -> usize {
        self.excluded.len()
    }

    /// The TCP and TLS listening sockets.
    pub(crate) fn stream_listeners(&self) -> impl Iterator<Item = &StreamListener> {
        self.stream_listeners.iter()
    }

    /// The UDP listening sockets, in the order of `--listen`.
    pub(crate) fn listeners(&self) -> impl Iterator<Item = &(SocketAddr, UdpSocket)> {
        self.listeners.iter()
    }
}

/// The sockets a relay thread owns for its whole life, and the kernel program it keeps in step.
pub(super) struct OwnedSockets {
    pub(super) kernel: Option<Arc<XdpRelay>>,
    pub(super) listeners: Vec<(SocketAddr, UdpSocket)>,
    pub(super) by_address: HashMap<SocketAddr, usize>,
    /// Indexed by [`RelaySlots`].
    pub(super) relays: Vec<Option<UdpSocket>>,
    pub(super) slots: RelaySlots,
}

impl OwnedSockets {
    /// The view the loop and the command execution send through; it borrows only these
    /// sockets, so the core and the counters stay free to change beside it.
    pub(super) fn view(&self) -> Sockets<'_> {
        Sockets {
            kernel: self.kernel.as_deref(),
            listeners: &self.listeners,
            by_address: &self.by_address,
            relays: &self.relays,
            slots: self.slots,
        }
    }
}

/// The sockets of a shard, borrowed apart from the rest of it.
pub(crate) struct Sockets<'a> {
    pub(super) kernel: Option<&'a XdpRelay>,
    pub(super) listeners: &'a [(SocketAddr, UdpSocket)],
    pub(super) by_address: &'a HashMap<SocketAddr, usize>,
    pub(super) relays: &'a [Option<UdpSocket>],
    pub(super) slots: RelaySlots,
}

impl Sockets<'_> {
    pub(crate) fn relay(&self, relay: RelaySocket) -> Option<&UdpSocket> {
        self.relays.get(self.slots.slot(relay)?)?.as_ref()
    }

    /// The listening socket that answers for local address `server`, and the source address
    /// to set on what it sends: none for a socket bound to `server` itself; `server`'s address
    /// for a wildcard socket on its port, which would otherwise send from whichever address
    /// the kernel's route picks (and the client would drop the answer).
    pub(crate) fn listener(&self, server: SocketAddr) -> Option<(&UdpSocket, Option<IpAddr>)> {
        if let Some(index) = self.by_address.get(&server) {
            return Some((&self.listeners[*index].1, None));
        }
        let unspecified = match server {
            SocketAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        self.by_address
            .get(&SocketAddr::new(unspecified, server.port()))
            .map(|index| (&self.listeners[*index].1, Some(server.ip())))
    }
}
