//! Role newtypes for the addresses the relay juggles, so a client address can never be passed
//! where a peer address is expected.

use core::net::SocketAddr;

use turnpike_proto::AddressFamily;

/// The transport a client reached the relay over (RFC 8656 §3.1). The relayed leg to peers is UDP
/// whatever this is; it decides only how messages to the client are framed and sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Udp,
    /// TURN over TCP: messages delimited by their length fields, ChannelData padded.
    Tcp,
    /// TURN over TLS over TCP (`turns:`), framed as over TCP.
    Tls,
}

impl Transport {
    /// A short fixed name, for metric labels and logs.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }

    /// Whether messages to the client travel over a byte stream (a connection) rather than as
    /// datagrams.
    #[must_use]
    pub const fn is_stream(self) -> bool {
        !matches!(self, Self::Udp)
    }
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
    pub const fn new(client: SocketAddr, server: SocketAddr, transport: Transport) -> Self {
        Self {
            client,
            server,
            transport,
        }
    }

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
