//! Plain counters for metrics; the driver reads them and exports them (no label here has
//! unbounded cardinality: no usernames, no addresses).

use std::collections::BTreeMap;

use turnpike_proto::Method;

use crate::refusal::Refusal;

/// Packets and bytes relayed in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relayed {
    pub packets: u64,
    pub bytes: u64,
}

impl Relayed {
    pub(crate) fn add(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }
}

/// Why a datagram was dropped without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Drop {
    /// A STUN message whose FINGERPRINT does not match (RFC 8489 §7.3: silently discarded).
    BadFingerprint,
    /// A data message over the size a ChannelData or Data indication can carry.
    OversizedPeerData,
    /// ChannelData that does not parse.
    MalformedChannelData,
    /// A STUN message that does not parse, or an indication missing what it needs.
    MalformedStun,
    /// Data for a relayed port or 5-tuple with no allocation.
    NoAllocation,
    /// Data to or from a peer without a permission.
    NoPermission,
    /// A first byte that is neither STUN nor ChannelData.
    NotTurn,
    /// An unauthenticated response held back by the per-source rate limit.
    RateLimited,
    /// ChannelData on a channel that is not bound (or whose binding just expired).
    UnboundChannel,
    /// A response, or an indication the server does not act on.
    UnexpectedStun,
    /// An indication with an unknown comprehension-required attribute.
    UnknownAttribute,
}

impl Drop {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadFingerprint => "bad_fingerprint",
            Self::OversizedPeerData => "oversized_peer_data",
            Self::MalformedChannelData => "malformed_channel_data",
            Self::MalformedStun => "malformed_stun",
            Self::NoAllocation => "no_allocation",
            Self::NoPermission => "no_permission",
            Self::NotTurn => "not_turn",
            Self::RateLimited => "rate_limited",
            Self::UnboundChannel => "unbound_channel",
            Self::UnexpectedStun => "unexpected_stun",
            Self::UnknownAttribute => "unknown_attribute",
        }
    }
}

/// A bounded label for a request method.
#[must_use]
pub const fn method_label(method: Method) -> &'static str {
    match method {
        Method::Allocate => "allocate",
        Method::Binding => "binding",
        Method::ChannelBind => "channel_bind",
        Method::CreatePermission => "create_permission",
        Method::Data => "data",
        Method::Refresh => "refresh",
        Method::Send => "send",
        Method::Other(_) => "other",
    }
}

/// Counters since the server started.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Responses sent, by method label and result code (0 for success).
    pub responses: BTreeMap<(&'static str, u16), u64>,
    /// Failed authentications, by reason.
    pub auth_failures: BTreeMap<&'static str, u64>,
    /// Requests refused after authentication (and unauthenticated 400 and 420), by reason; a
    /// finer split of the error codes in `responses` (label: [`Refusal::as_str`]).
    pub refusals: BTreeMap<Refusal, u64>,
    /// Datagrams dropped, by reason.
    pub dropped: BTreeMap<Drop, u64>,
    pub relayed_to_peer: Relayed,
    pub relayed_to_client: Relayed,
    /// Of `relayed_to_peer`, what came in Send indications rather than ChannelData.
    pub indications_to_peer: Relayed,
    /// Of `relayed_to_client`, what went out in Data indications rather than ChannelData.
    pub indications_to_client: Relayed,
    /// Packets relayed between two allocations of this relay without leaving it.
    pub hairpinned: u64,
    /// Requests answered from the retransmission cache.
    pub retransmissions: u64,
}

impl Stats {
    pub(crate) fn drop(&mut self, reason: Drop) {
        *self.dropped.entry(reason).or_default() += 1;
    }

    pub(crate) fn response(&mut self, method: Method, code: u16) {
        *self
            .responses
            .entry((method_label(method), code))
            .or_default() += 1;
    }

    pub(crate) fn refusal(&mut self, refusal: Refusal) {
        *self.refusals.entry(refusal).or_default() += 1;
    }

    pub(crate) fn auth_failure(&mut self, reason: &'static str) {
        *self.auth_failures.entry(reason).or_default() += 1;
    }
}
