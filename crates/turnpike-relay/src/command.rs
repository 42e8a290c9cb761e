//! What the core asks the I/O layer to do.

use core::net::{IpAddr, SocketAddr};
use core::ops::Range;

use turnpike_proto::{AddressFamily, ChannelNumber};

use crate::addr::{FiveTuple, RelaySocket};

/// A control-path action, drained with [`crate::Server::next_command`] in order.
///
/// Order matters and is part of the contract: a channel is installed before the success
/// response that announces it, and removed before anything that could be relayed after its
/// expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send `payload` to the client of `to`, from the relay's listening address in it.
    SendToClient { to: FiveTuple, payload: Vec<u8> },
    /// Send `payload` (a whole UDP datagram) to `peer` from a relayed socket.
    SendToPeer {
        from: RelaySocket,
        peer: SocketAddr,
        payload: Vec<u8>,
    },
    /// Start delivering peer datagrams arriving on this relayed socket to the core.
    OpenRelaySocket(RelaySocket),
    /// Stop delivering them: the allocation (or this family of it) is gone.
    CloseRelaySocket(RelaySocket),
    /// Bind `channel` of `client` to `peer` through `relay` in the fast path, in both
    /// directions. Issued again on every refresh, so it is an idempotent upsert.
    InstallChannel(ChannelRoute),
    /// Remove a binding installed with [`Command::InstallChannel`].
    RemoveChannel(ChannelRoute),
    /// Allow peer data from `peer` on `relay` (for a fast path that relays without channels).
    InstallPermission { relay: RelaySocket, peer: IpAddr },
    /// Remove a permission installed with [`Command::InstallPermission`].
    RemovePermission { relay: RelaySocket, peer: IpAddr },
}

/// Both ends of a channel binding, as the fast path needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelRoute {
    pub client: FiveTuple,
    pub channel: ChannelNumber,
    pub relay: RelaySocket,
    pub peer: SocketAddr,
}

/// A data-path decision, returned inline so the datagram is relayed without a copy.
///
/// `payload` indexes the datagram that was handed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    /// Send `datagram[payload]` from `relay` to `peer` as a plain UDP datagram.
    ToPeer {
        relay: RelaySocket,
        peer: SocketAddr,
        payload: Range<usize>,
    },
    /// Send `channel_header` followed by `datagram[payload]` to the client. The header is meant
    /// to be written into the 4 bytes in front of the payload (headroom the I/O layer keeps).
    ToClient {
        client: FiveTuple,
        channel_header: [u8; 4],
        payload: Range<usize>,
    },
}

impl Forward {
    /// The family of the socket the datagram leaves from.
    #[must_use]
    pub const fn outgoing_family(&self) -> AddressFamily {
        match self {
            Self::ToPeer { relay, .. } => relay.family,
            Self::ToClient { client, .. } => AddressFamily::of(client.server.ip()),
        }
    }
}
