//! From the core's [`ChannelRoute`] to the two map entries that bind it.

use std::net::{IpAddr, SocketAddr};

use turnpike_proto::AddressFamily;
use turnpike_relay::ChannelRoute;
use turnpike_xdp_common::{ClientChannel, OwnAddresses, PeerBinding};

use crate::XdpError;

/// The two entries of one binding: `CHANNEL_TO_PEER[client] = peer` and
/// `PEER_TO_CHANNEL[peer] = client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entries {
    pub(crate) client: ClientChannel,
    pub(crate) peer: PeerBinding,
}

/// The map entries for `route`, whose peer side is relayed from `own`'s address of the peer's
/// family (the address the relay's relayed sockets send from, see
/// [`crate::discover::own_addresses`]).
///
/// Addresses are canonicalised first: a socket bound to `[::]` without `IPV6_V6ONLY` reports
/// IPv4 clients (and the IPv4 address they wrote to) as `::ffff:a.b.c.d`, but their packets
/// reach XDP as IPv4 and must find an IPv4 key.
///
/// # Errors
///
/// [`XdpError::Route`] when the relayed socket's family is not the peer's, the relay has no own
/// address of the peer's family, or the listening address is unspecified or of another family
/// than the client's; such a channel stays in user space.
pub(crate) fn entries(route: &ChannelRoute, own: &OwnAddresses) -> Result<Entries, XdpError> {
    let relayed = own
        .of_family(route.peer.ip().to_canonical().is_ipv6())
        .ok_or(XdpError::Route {
            reason: "the relay has no own address of the peer's family",
        })?;
    entries_relayed_from(route, relayed)
}

/// The map entries for `route` relayed from `relayed` (see [`entries`]).
pub(crate) fn entries_relayed_from(
    route: &ChannelRoute,
    relayed: IpAddr,
) -> Result<Entries, XdpError> {
    let client = canonical(route.client.client);
    let server = canonical(route.client.server);
    let peer = canonical(route.peer);
    if AddressFamily::of(peer.ip()) != route.relay.family {
        return Err(XdpError::Route {
            reason: "the relayed socket's family differs from the peer's",
        });
    }
    if server.ip().is_unspecified() {
        return Err(XdpError::Route {
            reason: "the listening address the client wrote to is not known",
        });
    }
    let client = ClientChannel::new(
        client.ip(),
        client.port(),
        server.ip(),
        server.port(),
        route.channel.get(),
    )
    .ok_or(XdpError::Route {
        reason: "the client and the listening address are of different families",
    })?;
    let peer = PeerBinding::new(peer.ip(), peer.port(), relayed, route.relay.port).ok_or(
        XdpError::Route {
            reason: "the relayed address is of another family than the peer",
        },
    )?;
    Ok(Entries { client, peer })
}

fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use turnpike_proto::ChannelNumber;
    use turnpike_relay::{FiveTuple, RelaySocket};

    fn address(text: &str) -> SocketAddr {
        SocketAddr::from_str(text).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        IpAddr::from_str(text).unwrap()
    }

    fn own() -> OwnAddresses {
        OwnAddresses::new(
            Some("192.0.2.1".parse().unwrap()),
            Some("2001:db8::1".parse().unwrap()),
        )
    }

    fn route(client: &str, server: &str, peer: &str, family: AddressFamily) -> ChannelRoute {
        ChannelRoute {
            client: FiveTuple::udp(address(client), address(server)),
            channel: ChannelNumber::new(0x4001).unwrap(),
            relay: RelaySocket {
                port: 50000,
                family,
            },
            peer: address(peer),
        }
    }

    #[test]
    fn route_becomes_two_mirrored_entries() {
        let entries = entries(
            &route(
                "198.51.100.1:40000",
                "192.0.2.7:3479",
                "[2001:db8::9]:5000",
                AddressFamily::V6,
            ),
            &own(),
        )
        .unwrap();
        assert_eq!(
            entries.client,
            ClientChannel::new(ip("198.51.100.1"), 40000, ip("192.0.2.7"), 3479, 0x4001).unwrap()
        );
        assert_eq!(
            entries.peer,
            PeerBinding::new(ip("2001:db8::9"), 5000, ip("2001:db8::1"), 50000).unwrap()
        );
    }

    #[test]
    fn mapped_ipv6_client_and_listening_address_become_an_ipv4_key() {
        let mapped = entries(
            &route(
                "[::ffff:198.51.100.1]:40000",
                "[::ffff:192.0.2.7]:3478",
                "203.0.113.9:5000",
                AddressFamily::V4,
            ),
            &own(),
        )
        .unwrap();
        let plain = entries(
            &route(
                "198.51.100.1:40000",
                "192.0.2.7:3478",
                "203.0.113.9:5000",
                AddressFamily::V4,
            ),
            &own(),
        )
        .unwrap();
        assert_eq!(mapped, plain);
        assert!(!mapped.client.is_v6());
    }

    #[test]
    fn routes_the_maps_cannot_hold_are_refused() {
        let refused = |route: ChannelRoute, own: OwnAddresses| {
            matches!(entries(&route, &own), Err(XdpError::Route { .. }))
        };
        // The relayed socket's family is not the peer's.
        assert!(refused(
            route(
                "198.51.100.1:40000",
                "192.0.2.7:3478",
                "203.0.113.9:5000",
                AddressFamily::V6
            ),
            own()
        ));
        // No own address of the peer's family to relay from.
        assert!(refused(
            route(
                "198.51.100.1:40000",
                "192.0.2.7:3478",
                "[2001:db8::9]:5000",
                AddressFamily::V6
            ),
            OwnAddresses::new(Some("192.0.2.1".parse().unwrap()), None)
        ));
        // A listening address nobody could have written to.
        assert!(refused(
            route(
                "198.51.100.1:40000",
                "0.0.0.0:3478",
                "203.0.113.9:5000",
                AddressFamily::V4
            ),
            own()
        ));
        // A client of one family on a listening address of the other.
        assert!(refused(
            route(
                "198.51.100.1:40000",
                "[2001:db8::7]:3478",
                "203.0.113.9:5000",
                AddressFamily::V4
            ),
            own()
        ));
    }
}
