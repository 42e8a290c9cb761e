//! The state of one allocation: its relayed addresses, permissions and channels.

use core::net::{IpAddr, SocketAddr};
use std::collections::BTreeMap;
use std::time::Instant;

use turnpike_proto::{AddressFamily, ChannelNumber, TransactionId};

use crate::addr::{FiveTuple, RelaySocket};

/// Identifies an allocation for its whole life; never reused, so a timer that outlives its
/// allocation finds nothing instead of a stranger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct AllocationId(pub(crate) u64);

#[derive(Debug)]
pub(crate) struct Allocation {
    pub(crate) five_tuple: FiveTuple,
    pub(crate) username: Box<str>,
    /// The Allocate request that created it: its retransmission gets the success response
    /// again instead of 437.
    pub(crate) created_by: TransactionId,
    /// Relayed port, the same for both families of a dual allocation.
    pub(crate) port: u16,
    /// When each family's relayed address expires (RFC 8656 §7.2: a dual allocation refreshes
    /// or deletes its families separately).
    pub(crate) ipv4_expiry: Option<Instant>,
    pub(crate) ipv6_expiry: Option<Instant>,
    /// Permission expiry by peer IP (RFC 8656 §9: permissions ignore the port).
    ///
    /// Ordered maps (at most a quota's worth of entries each): whatever is emitted while walking
    /// them, on refresh, family removal or shutdown, comes out in key order, not hash order.
    pub(crate) permissions: BTreeMap<IpAddr, Instant>,
    pub(crate) channels: BTreeMap<ChannelNumber, Channel>,
    pub(crate) channel_by_peer: BTreeMap<SocketAddr, ChannelNumber>,
}

/// A channel binding. Bound while `now < expires_at`; after that its number and peer stay
/// reserved for the cool-down, then the entry goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Channel {
    pub(crate) peer: SocketAddr,
    pub(crate) expires_at: Instant,
}

impl Allocation {
    pub(crate) fn expiry(&self, family: AddressFamily) -> Option<Instant> {
        match family {
            AddressFamily::V4 => self.ipv4_expiry,
            AddressFamily::V6 => self.ipv6_expiry,
        }
    }

    pub(crate) fn expiry_mut(&mut self, family: AddressFamily) -> &mut Option<Instant> {
        match family {
            AddressFamily::V4 => &mut self.ipv4_expiry,
            AddressFamily::V6 => &mut self.ipv6_expiry,
        }
    }

    /// The families whose relayed address is still there.
    pub(crate) fn families(&self) -> impl Iterator<Item = AddressFamily> + '_ {
        [AddressFamily::V4, AddressFamily::V6]
            .into_iter()
            .filter(|family| self.expiry(*family).is_some())
    }

    pub(crate) fn has_family(&self, family: AddressFamily) -> bool {
        self.expiry(family).is_some()
    }

    pub(crate) const fn relay_socket(&self, family: AddressFamily) -> RelaySocket {
        RelaySocket {
            port: self.port,
            family,
        }
    }

    /// Whether data may pass between the allocation's `family` address and `peer` at `now`: a
    /// live permission for the peer and a live relayed address of that family.
    pub(crate) fn permits(&self, peer: IpAddr, family: AddressFamily, now: Instant) -> bool {
        self.permissions
            .get(&peer)
            .is_some_and(|expiry| *expiry > now)
            && self.expiry(family).is_some_and(|expiry| expiry > now)
    }

    /// Until when `peer` may be relayed to through a channel: the earliest of the channel's,
    /// the permission's and the relayed address's expiry. `None` if any of them is missing.
    pub(crate) fn route_expiry(&self, channel: &Channel) -> Option<Instant> {
        let permission = *self.permissions.get(&channel.peer.ip())?;
        let family = self.expiry(AddressFamily::of(channel.peer.ip()))?;
        Some(channel.expires_at.min(permission).min(family))
    }
}

/// The port after an EVEN-PORT allocation's, held for the Allocate that presents its token
/// (RFC 8656 §7.2). It holds an allocation's place in the quotas, total and per user, so that
/// reservations cannot take more ports than allocations could.
#[derive(Debug, Clone)]
pub(crate) struct Reservation {
    pub(crate) port: u16,
    /// The family of the allocation that made it, which the reserved address has too.
    pub(crate) family: AddressFamily,
    /// Whose quota it counts against.
    pub(crate) username: Box<str>,
    pub(crate) expires_at: Instant,
}
