//! Role newtypes for the addresses the relay juggles, so a client address can never be passed
//! where a peer address is expected.

use core::net::SocketAddr;

use turnpike_proto::AddressFamily;

/// The transport a client reached the relay over. Only UDP today; TCP and TLS (TURN on 443)
/// slot in here, because a 5-tuple includes its transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Udp,
}

/// The client side of an allocation: client address, the relay's listening address it talked
/// to, and the transport (RFC 8656 §2: the "5-tuple").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
}

impl FiveTuple {
    #[must_use]
    pub const fn udp(client: SocketAddr, server: SocketAddr) -> Self {
        Self {
            client,
            server,
            transport: Transport::Udp,
        }
    }
}

/// A relayed port of one address family: the socket peer data arrives on and leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelaySocket {
    pub port: u16,
    pub family: AddressFamily,
}
