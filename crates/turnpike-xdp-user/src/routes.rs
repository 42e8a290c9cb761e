//! From the core's [`ChannelRoute`] to the two map entries that bind it.

use std::net::SocketAddr;

use turnpike_proto::AddressFamily;
use turnpike_relay::ChannelRoute;
use turnpike_xdp_common::{ClientChannel, PeerBinding};

use crate::XdpError;

/// The two entries of one binding: `CHANNEL_TO_PEER[client] = peer` and
/// `PEER_TO_CHANNEL[peer] = client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entries {
    pub(crate) client: ClientChannel,
    pub(crate) peer: PeerBinding,
}

/// The map entries for `route`.
///
/// Addresses are canonicalised first: a socket bound to `[::]` without `IPV6_V6ONLY` reports
/// IPv4 clients as `::ffff:a.b.c.d`, but their packets reach XDP as IPv4 and must find an IPv4
/// key. Only the peer's family and the relayed socket's family have to agree: the relayed socket
/// of a family only ever talks to peers of that family.
///
/// # Errors
///
/// [`XdpError::Route`] when the relayed socket's family is not the peer's.
pub(crate) fn entries(route: &ChannelRoute) -> Result<Entries, XdpError> {
    let client = canonical(route.client.client);
    let peer = canonical(route.peer);
    if AddressFamily::of(peer.ip()) != route.relay.family {
        return Err(XdpError::Route {
            reason: "the relayed socket's family differs from the peer's",
        });
    }
    Ok(Entries {
        client: ClientChannel::new(client.ip(), client.port(), route.channel.get()),
        peer: PeerBinding::new(peer.ip(), peer.port(), route.relay.port),
    })
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

    fn route(client: &str, peer: &str, family: AddressFamily) -> ChannelRoute {
        ChannelRoute {
            client: FiveTuple::udp(address(client), address("0.0.0.0:3478")),
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
        let entries = entries(&route(
            "198.51.100.1:40000",
            "[2001:db8::9]:5000",
            AddressFamily::V6,
        ))
        .unwrap();
        assert_eq!(
            entries.client,
            ClientChannel::new(address("198.51.100.1:40000").ip(), 40000, 0x4001)
        );
        assert_eq!(
            entries.peer,
            PeerBinding::new(address("[2001:db8::9]:5000").ip(), 5000, 50000)
        );
    }

    #[test]
    fn mapped_ipv6_client_becomes_an_ipv4_key() {
        let mapped = entries(&route(
            "[::ffff:198.51.100.1]:40000",
            "203.0.113.9:5000",
            AddressFamily::V4,
        ))
        .unwrap();
        let plain = entries(&route(
            "198.51.100.1:40000",
            "203.0.113.9:5000",
            AddressFamily::V4,
        ))
        .unwrap();
        assert_eq!(mapped, plain);
        assert!(!mapped.client.is_v6());
    }

    #[test]
    fn relayed_family_must_match_the_peer() {
        let error = entries(&route(
            "198.51.100.1:40000",
            "203.0.113.9:5000",
            AddressFamily::V6,
        ))
        .unwrap_err();
        assert!(matches!(error, XdpError::Route { .. }));
    }
}
