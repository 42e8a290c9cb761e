//! The sans-IO TURN server.

mod requests;
mod respond;

use core::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use core::time::Duration;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use rand::RngCore;
use turnpike_proto::{
    AddressFamily, Attribute, ChannelData, ChannelNumber, ChannelRange, Class, Message, Method,
    PacketKind, classify_in,
};

use crate::addr::{FiveTuple, RelaySocket};
use crate::allocation::{Allocation, AllocationId, Reservation};
use crate::auth::Authenticator;
use crate::command::{ChannelRoute, Command, Forward};
use crate::config::Config;
use crate::memory::{Footprint, shrink_map, shrink_queue};
use crate::occurrence::first_occurrences;
use crate::ports::PortPool;
use crate::ratelimit::UnauthenticatedLimiter;
use crate::stats::{Drop, Stats};
use crate::timer::{Timer, TimerQueue};
use crate::transactions::TransactionCache;

/// A hash map for lookups only, keyed from the server's seeded RNG: never iterated (that would
/// make command order depend on hash order), and no per-process randomness beyond the seed.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// A channel route in the client-to-peer direction.
#[derive(Debug, Clone, Copy)]
struct ToPeerRoute {
    relay: RelaySocket,
    peer: SocketAddr,
    expires_at: Instant,
}

/// A channel route in the peer-to-client direction.
#[derive(Debug, Clone, Copy)]
struct ToClientRoute {
    client: FiveTuple,
    channel: ChannelNumber,
    expires_at: Instant,
}

/// Unix time as an offset from an `Instant`, so the core never reads a clock: the driver
/// anchors it with [`Server::set_wall_clock`] and every later `now` implies a wall time.
#[derive(Debug, Clone, Copy)]
struct WallClock {
    anchor: Instant,
    unix_at_anchor: Duration,
}

impl WallClock {
    fn unix_seconds(&self, now: Instant) -> u64 {
        self.unix_at_anchor
            .saturating_add(now.saturating_duration_since(self.anchor))
            .as_secs()
    }
}

/// `now + duration` without a panic. Lifetimes are clamped to [`Lifetimes::CEILING`] when the
/// server is made, so this overflows only for an `Instant` at the very end of its range, which
/// no clock reaches; then whatever it was for expires at once rather than never.
///
/// [`Lifetimes::CEILING`]: crate::Lifetimes::CEILING
pub(crate) fn later(now: Instant, duration: Duration) -> Instant {
    now.checked_add(duration).unwrap_or(now)
}

/// A TURN server (RFC 8656 over RFC 8489, with RFC 6156 IPv6) as a state machine.
///
/// # Driving contract
///
/// The server opens no socket, reads no clock and draws randomness only from the `R` it was
/// given. The I/O layer (the driver) feeds it three kinds of input and executes what comes out:
///
/// - A datagram from a client on a listening address:
///   [`handle_client_datagram`](Self::handle_client_datagram). ChannelData and Send
///   indications are relayed by returning a [`Forward`] inline, which indexes the datagram that
///   was passed in, so the driver sends the payload without copying it.
/// - A datagram from a peer on a relayed socket:
///   [`handle_peer_datagram`](Self::handle_peer_datagram). If a channel is bound, the returned
///   [`Forward::ToClient`] carries the 4-byte ChannelData header; the driver writes it into
///   the headroom it kept in front of the payload.
/// - Time: when [`poll_timeout`](Self::poll_timeout) has passed, call
///   [`handle_timeout`](Self::handle_timeout).
///
/// After **every** call that takes `&mut self`, drain [`next_command`](Self::next_command)
/// until it returns `None` and execute the commands in order, then re-read
/// [`poll_timeout`](Self::poll_timeout). The order is what keeps a kernel fast path an exact
/// mirror of the live state: a channel is installed before the success response that announces
/// it is sent, and removed (on expiry, deletion or refresh failure) before anything later is
/// processed.
///
/// `now` must never go backwards. Wall-clock time (for credential and nonce expiry) is derived
/// from `now` and the anchor set with [`set_wall_clock`](Self::set_wall_clock); re-anchor it
/// now and then so that clock adjustments reach the server.
///
/// Protocol errors never escape: they become STUN error responses or are counted in
/// [`stats`](Self::stats) and dropped.
#[derive(Debug)]
pub struct Server<R> {
    config: Config,
    rng: R,
    auth: Authenticator,
    ports: PortPool,
    wall_clock: WallClock,
    next_allocation_id: u64,
    /// Ordered by id, that is by creation: shutdown walks it.
    allocations: BTreeMap<AllocationId, Allocation>,
    by_five_tuple: FastMap<FiveTuple, AllocationId>,
    by_port: FastMap<u16, AllocationId>,
    /// Allocations and reservations per username: the places each holds in its quota.
    allocations_per_user: FastMap<Box<str>, usize>,
    /// Ports reserved by EVEN-PORT with the R bit, by token; ordered, so shutdown frees them in
    /// a fixed order.
    reservations: BTreeMap<[u8; 8], Reservation>,
    to_peer: FastMap<(FiveTuple, ChannelNumber), ToPeerRoute>,
    to_client: FastMap<(u16, SocketAddr), ToClientRoute>,
    timers: TimerQueue,
    transactions: TransactionCache,
    limiter: UnauthenticatedLimiter,
    commands: VecDeque<Command>,
    draining: bool,
    /// The next of `config.alternate_servers` to send a client to.
    next_alternate: usize,
    /// Every address of the host, from the driver (see `set_host_addresses`).
    host_addresses: std::collections::BTreeSet<IpAddr>,
    stats: Stats,
}

impl<R: RngCore> Server<R> {
    /// Creates a server. `now` and `unix_time` (time since the Unix epoch) anchor the wall
    /// clock; `rng` chooses relayed ports and the nonce secret.
    #[must_use]
    ///
    /// Lifetimes longer than [`Lifetimes::CEILING`](crate::Lifetimes::CEILING) are clamped to
    /// it; check a configuration with [`Config::validate`] first to refuse them instead.
    pub fn new(mut config: Config, mut rng: R, now: Instant, unix_time: Duration) -> Self {
        config.lifetimes = config.lifetimes.clamped();
        let mut nonce_secret = [0; 32];
        rng.fill_bytes(&mut nonce_secret);
        let mut hash_seed = [0; 8];
        rng.fill_bytes(&mut hash_seed);
        let hash_seed = u64::from_le_bytes(hash_seed);
        let fast_map = || foldhash::fast::FixedState::with_seed(hash_seed);
        Self {
            auth: Authenticator::new(&config, nonce_secret),
            ports: PortPool::new(
                config
                    .shard_ports
                    .clone()
                    .unwrap_or_else(|| config.relay_ports.clone()),
            ),
            transactions: TransactionCache::new(config.quotas.cached_transactions),
            limiter: UnauthenticatedLimiter::new(config.unauthenticated_rate, hash_seed),
            config,
            rng,
            wall_clock: WallClock {
                anchor: now,
                unix_at_anchor: unix_time,
            },
            next_allocation_id: 0,
            allocations: BTreeMap::new(),
            by_five_tuple: HashMap::with_hasher(fast_map()),
            by_port: HashMap::with_hasher(fast_map()),
            allocations_per_user: HashMap::with_hasher(fast_map()),
            reservations: BTreeMap::new(),
            to_peer: HashMap::with_hasher(fast_map()),
            to_client: HashMap::with_hasher(fast_map()),
            timers: TimerQueue::default(),
            commands: VecDeque::new(),
            draining: false,
            host_addresses: std::collections::BTreeSet::new(),
            next_alternate: 0,
            stats: Stats::default(),
        }
    }

    /// Re-anchors wall-clock time: at `now` it is `unix_time` since the Unix epoch.
    pub fn set_wall_clock(&mut self, now: Instant, unix_time: Duration) {
        self.wall_clock = WallClock {
            anchor: now,
            unix_at_anchor: unix_time,
        };
    }

    /// Marks a relayed port as unusable (the driver could not bind it); it is never handed out.
    pub fn exclude_relay_port(&mut self, port: u16) {
        self.ports.take(port);
    }

    /// Stops accepting new allocations (answered with 486 would mislead; RFC 8656 has no
    /// "going away" code, so they get 508 Insufficient Capacity and retry elsewhere) while
    /// existing allocations keep relaying until they end or the process exits.
    pub fn begin_drain(&mut self) {
        self.draining = true;
    }

    /// Ends every allocation now, as at the end of a drain: the fast path gets a remove for
    /// every channel and permission, and every relayed socket is closed.
    pub fn shutdown(&mut self) {
        // In id order, that is in the order the allocations were made.
        let ids: Vec<AllocationId> = self.allocations.keys().copied().collect();
        for id in ids {
            self.free_allocation(id);
        }
        let tokens: Vec<[u8; 8]> = self.reservations.keys().copied().collect();
        for token in tokens {
            self.free_reservation(token);
        }
    }

    /// The next control-path action; call until `None` after every input.
    #[must_use]
    pub fn next_command(&mut self) -> Option<Command> {
        let command = self.commands.pop_front();
        if command.is_none() {
            // Drained: give back what a burst (a shutdown, say) made the queue grow to.
            shrink_queue(&mut self.commands);
        }
        command
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.timers.next_deadline(), self.transactions.next_expiry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Counters for metrics.
    #[must_use]
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Allocations alive now.
    #[must_use]
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// Ports reserved now (EVEN-PORT with the R bit) and not yet claimed by their token.
    #[must_use]
    pub fn reservation_count(&self) -> usize {
        self.reservations.len()
    }

    /// Sizes of internal collections, for tests that memory follows what is alive.
    #[doc(hidden)]
    #[must_use]
    pub fn footprint(&self) -> Footprint {
        Footprint {
            timers: self.timers.len(),
            cached_transactions: self.transactions.len(),
            table_entries: self.by_five_tuple.len()
                + self.by_port.len()
                + self.reservations.len()
                + self.allocations_per_user.len()
                + self.to_peer.len()
                + self.to_client.len(),
            table_capacity: self.by_five_tuple.capacity()
                + self.by_port.capacity()
                + self.allocations_per_user.capacity()
                + self.to_peer.capacity()
                + self.to_client.capacity()
                + self.transactions.capacity(),
            command_capacity: self.commands.capacity(),
        }
    }

    /// Permissions alive now, over all allocations.
    #[must_use]
    pub fn permission_count(&self) -> usize {
        self.allocations
            .values()
            .map(|allocation| allocation.permissions.len())
            .sum()
    }

    /// Channels bound and relaying now, over all allocations.
    #[must_use]
    pub fn active_channel_count(&self) -> usize {
        self.to_peer.len()
    }

    /// Handles a datagram a client sent to one of the relay's listening addresses.
    ///
    /// Returns where to relay (part of) `datagram` for ChannelData and Send indications.
    pub fn handle_client_datagram(
        &mut self,
        now: Instant,
        from: FiveTuple,
        datagram: &[u8],
    ) -> Option<Forward> {
        match classify_in(datagram, self.channel_range()) {
            Ok(PacketKind::ChannelData) => self.handle_channel_data(now, from, datagram),
            Ok(PacketKind::Stun) => match Message::parse(datagram) {
                // RFC 8489 §7.3: a message whose FINGERPRINT does not match is discarded
                // silently. It is not STUN, or not intact; an answer would only tell a prober
                // what it reached, and a damaged request must not be acted on.
                Ok(message)
                    if message.has_fingerprint() && message.verify_fingerprint().is_err() =>
                {
                    self.stats.drop(Drop::BadFingerprint);
                    None
                }
                Ok(message) => self.handle_stun(now, from, &message),
                Err(_) => {
                    self.stats.drop(Drop::MalformedStun);
                    None
                }
            },
            Err(_) => {
                self.stats.drop(Drop::NotTurn);
                None
            }
        }
    }

    fn handle_channel_data(
        &mut self,
        now: Instant,
        from: FiveTuple,
        datagram: &[u8],
    ) -> Option<Forward> {
        let Ok(message) = ChannelData::parse_in(datagram, self.channel_range()) else {
            self.stats.drop(Drop::MalformedChannelData);
            return None;
        };
        let Some(route) = self.to_peer.get(&(from, message.channel())) else {
            self.stats.drop(Drop::UnboundChannel);
            return None;
        };
        if route.expires_at <= now {
            // The timer that removes it has not run yet; it must not relay a packet more.
            self.stats.drop(Drop::UnboundChannel);
            return None;
        }
        let (relay, peer) = (route.relay, route.peer);
        let payload = turnpike_proto::CHANNEL_DATA_HEADER_LEN
            ..turnpike_proto::CHANNEL_DATA_HEADER_LEN + message.payload().len();
        self.relay_to_peer(now, relay, peer, payload, datagram)
    }

    /// Sends `datagram[payload]` to `peer` from `relay`, or hands it straight to the allocation
    /// that owns `peer` when it is one of this relay's own relayed addresses (a hairpin: the
    /// packet would otherwise leave and come back, or loop in the kernel fast path).
    fn relay_to_peer(
        &mut self,
        now: Instant,
        relay: RelaySocket,
        peer: SocketAddr,
        payload: core::ops::Range<usize>,
        datagram: &[u8],
    ) -> Option<Forward> {
        if self.is_relay_ip(peer.ip()) && self.ports.contains(peer.port()) {
            let source = SocketAddr::new(self.relay_ip(relay.family)?, relay.port);
            let target = RelaySocket {
                port: peer.port(),
                family: AddressFamily::of(peer.ip()),
            };
            self.stats.hairpinned += 1;
            return self.deliver_to_client(now, target, source, payload, datagram);
        }
        if self.is_relay_ip(peer.ip())
            && !self.config.relay_ports.contains(&peer.port())
            && !self.config.policy.is_explicitly_allowed(peer.ip())
        {
            // The relay's own address outside the relayed ports (its listening port, say):
            // sent there, the payload would come back in as a client datagram from the relay
            // itself, a way to launder requests through the relay's address, or reach a local
            // service. Only an operator who allowed that address in so many words gets it.
            self.stats.drop(Drop::NoPermission);
            return None;
        }
        self.stats.relayed_to_peer.add(payload.len());
        Some(Forward::ToPeer {
            relay,
            peer,
            payload,
        })
    }

    /// The channel numbers clients may bind and send on.
    pub(crate) const fn channel_range(&self) -> ChannelRange {
        self.config.channel_range()
    }

    fn relay_ip(&self, family: AddressFamily) -> Option<IpAddr> {
        match family {
            AddressFamily::V4 => self.config.relay_ipv4.map(IpAddr::V4),
            AddressFamily::V6 => self.config.relay_ipv6.map(IpAddr::V6),
        }
    }

    /// Whether `ip`, written plainly or IPv4-mapped, is an address relayed addresses are
    /// advertised with.
    fn is_relay_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.config.relay_ipv4.map(IpAddr::V4) == Some(ip)
            || self.config.relay_ipv6.map(IpAddr::V6) == Some(ip)
    }

    /// Handles a datagram a peer sent to relayed socket `relay`.
    pub fn handle_peer_datagram(
        &mut self,
        now: Instant,
        relay: RelaySocket,
        peer: SocketAddr,
        datagram: &[u8],
    ) -> Option<Forward> {
        self.deliver_to_client(now, relay, peer, 0..datagram.len(), datagram)
    }

    fn deliver_to_client(
        &mut self,
        now: Instant,
        relay: RelaySocket,
        peer: SocketAddr,
        payload: core::ops::Range<usize>,
        datagram: &[u8],
    ) -> Option<Forward> {
        if let Some(route) = self.to_client.get(&(relay.port, peer))
            && route.expires_at > now
        {
            let Ok(channel_header) = ChannelData::header(route.channel, payload.len()) else {
                self.stats.drop(Drop::OversizedPeerData);
                return None;
            };
            self.stats.relayed_to_client.add(payload.len());
            return Some(Forward::ToClient {
                client: route.client,
                channel_header,
                payload,
            });
        }
        // No channel: a Data indication, if a permission lets the peer in (RFC 8656 §11.4).
        let Some(&id) = self.by_port.get(&relay.port) else {
            self.stats.drop(Drop::NoAllocation);
            return None;
        };
        let Some(allocation) = self.allocations.get(&id) else {
            self.stats.drop(Drop::NoAllocation);
            return None;
        };
        if !allocation.permits(peer.ip(), relay.family, now) {
            self.stats.drop(Drop::NoPermission);
            return None;
        }
        let client = allocation.five_tuple;
        let data = datagram.get(payload)?;
        match respond::data_indication(&mut self.rng, peer, data) {
            Ok(indication) => {
                self.stats.relayed_to_client.add(data.len());
                self.stats.indications_to_client.add(data.len());
                self.commands.push_back(Command::SendToClient {
                    to: client,
                    payload: indication,
                });
            }
            Err(_) => self.stats.drop(Drop::OversizedPeerData),
        }
        None
    }

    /// Expires whatever is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.transactions.expire(now);
        while let Some((_, timer)) = self.timers.pop_due(now) {
            match timer {
                Timer::Allocation { id, family } => self.expire_family(now, id, family),
                Timer::Permission { id, peer } => self.expire_permission(now, id, peer),
                Timer::Channel { id, channel } => self.expire_channel(now, id, channel),
                Timer::Reservation { token } => self.expire_reservation(now, token),
            }
        }
    }

    fn expire_family(&mut self, now: Instant, id: AllocationId, family: AddressFamily) {
        let Some(allocation) = self.allocations.get(&id) else {
            return;
        };
        if allocation.expiry(family).is_none_or(|expiry| expiry > now) {
            return;
        }
        self.remove_family(id, family);
    }

    fn expire_reservation(&mut self, now: Instant, token: [u8; 8]) {
        if self
            .reservations
            .get(&token)
            .is_some_and(|reservation| reservation.expires_at <= now)
        {
            self.free_reservation(token);
        }
    }

    /// Gives a reserved port back, and the place in the quotas it held.
    fn free_reservation(&mut self, token: [u8; 8]) {
        let Some(reservation) = self.reservations.remove(&token) else {
            return;
        };
        self.timers.cancel(Timer::Reservation { token });
        self.ports.release(reservation.port);
        self.release_quota_place(&reservation.username);
    }

    /// Gives back one place of `user` in the quotas: in the shared budgets and in the count of
    /// this server.
    fn release_quota_place(&mut self, user: &str) {
        if let Some(budget) = &self.config.shared_budget {
            budget.give_back();
        }
        if let Some(users) = &self.config.shared_user_budget {
            users.give_back(user);
        }
        if let Some(count) = self.allocations_per_user.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                self.allocations_per_user.remove(user);
                shrink_map(&mut self.allocations_per_user);
            }
        }
    }

    fn expire_permission(&mut self, now: Instant, id: AllocationId, peer: IpAddr) {
        let Some(allocation) = self.allocations.get_mut(&id) else {
            return;
        };
        if allocation
            .permissions
            .get(&peer)
            .is_none_or(|expiry| *expiry > now)
        {
            return;
        }
        allocation.permissions.remove(&peer);
        let relay = allocation.relay_socket(AddressFamily::of(peer));
        self.sync_routes_to(now, id, peer);
        self.commands
            .push_back(Command::RemovePermission { relay, peer });
    }

    fn expire_channel(&mut self, now: Instant, id: AllocationId, number: ChannelNumber) {
        let Some(allocation) = self.allocations.get(&id) else {
            return;
        };
        let Some(channel) = allocation.channels.get(&number).copied() else {
            return;
        };
        if channel.expires_at > now {
            return;
        }
        self.sync_route(now, id, number);
        let cooldown_end = later(channel.expires_at, self.config.lifetimes.channel_cooldown);
        if cooldown_end <= now {
            if let Some(allocation) = self.allocations.get_mut(&id) {
                allocation.channels.remove(&number);
                allocation.channel_by_peer.remove(&channel.peer);
            }
        } else {
            self.timers.schedule(
                cooldown_end,
                Timer::Channel {
                    id,
                    channel: number,
                },
            );
        }
    }

    /// Brings the routes of every channel to a peer at `ip` in line with the allocation's state:
    /// they share its permission, so whatever changes the permission changes them all.
    fn sync_routes_to(&mut self, now: Instant, id: AllocationId, ip: IpAddr) {
        let Some(allocation) = self.allocations.get(&id) else {
            return;
        };
        // The channels to `ip` are one range of the peer index (ordered by address, then port),
        // so a ChannelBind or CreatePermission costs the channels of its peer, not a walk over
        // every channel of the allocation (which made binding n channels cost n² / 2 steps).
        let mut channels: Vec<ChannelNumber> = allocation
            .channel_by_peer
            .range(peers_at(ip))
            .map(|(_, number)| *number)
            .collect();
        // In number order, as the commands have always come.
        channels.sort_unstable();
        for channel in channels {
            self.sync_route(now, id, channel);
        }
    }

    /// Brings the fast-path routes of one channel in line with the allocation's state at
    /// `now`: installed (again, with the new expiry) while channel, permission and relayed
    /// address are all alive, removed otherwise.
    fn sync_route(&mut self, now: Instant, id: AllocationId, number: ChannelNumber) {
        let Some(allocation) = self.allocations.get(&id) else {
            return;
        };
        let client = allocation.five_tuple;
        let key = (client, number);
        let desired = allocation.channels.get(&number).and_then(|channel| {
            let expires_at = allocation.route_expiry(channel)?;
            (expires_at > now).then(|| {
                let relay = allocation.relay_socket(AddressFamily::of(channel.peer.ip()));
                (
                    ChannelRoute {
                        client,
                        channel: number,
                        relay,
                        peer: channel.peer,
                    },
                    expires_at,
                )
            })
        });
        match desired {
            Some((route, expires_at)) => {
                if let Some(old) = self.to_peer.get(&key)
                    && old.peer != route.peer
                {
                    self.to_client.remove(&(old.relay.port, old.peer));
                }
                self.to_peer.insert(
                    key,
                    ToPeerRoute {
                        relay: route.relay,
                        peer: route.peer,
                        expires_at,
                    },
                );
                self.to_client.insert(
                    (route.relay.port, route.peer),
                    ToClientRoute {
                        client,
                        channel: number,
                        expires_at,
                    },
                );
                self.commands.push_back(Command::InstallChannel(route));
            }
            None => self.remove_route(client, number),
        }
    }

    /// Removes a channel's fast-path routes, if installed, and tells the driver.
    fn remove_route(&mut self, client: FiveTuple, number: ChannelNumber) {
        if let Some(old) = self.to_peer.remove(&(client, number)) {
            self.to_client.remove(&(old.relay.port, old.peer));
            shrink_map(&mut self.to_peer);
            shrink_map(&mut self.to_client);
            self.commands
                .push_back(Command::RemoveChannel(ChannelRoute {
                    client,
                    channel: number,
                    relay: old.relay,
                    peer: old.peer,
                }));
        }
    }

    /// Removes one family's relayed address, and the allocation with it if it was the last.
    fn remove_family(&mut self, id: AllocationId, family: AddressFamily) {
        let Some(allocation) = self.allocations.get_mut(&id) else {
            return;
        };
        *allocation.expiry_mut(family) = None;
        let relay = allocation.relay_socket(family);
        let client = allocation.five_tuple;
        // Channels and permissions towards peers of this family can no longer be used.
        let channels: Vec<(ChannelNumber, SocketAddr)> = allocation
            .channels
            .iter()
            .filter(|(_, channel)| AddressFamily::of(channel.peer.ip()) == family)
            .map(|(number, channel)| (*number, channel.peer))
            .collect();
        let permissions: Vec<IpAddr> = allocation
            .permissions
            .keys()
            .copied()
            .filter(|peer| AddressFamily::of(*peer) == family)
            .collect();
        for (number, peer) in &channels {
            allocation.channels.remove(number);
            allocation.channel_by_peer.remove(peer);
            self.timers.cancel(Timer::Channel {
                id,
                channel: *number,
            });
        }
        for peer in &permissions {
            allocation.permissions.remove(peer);
            self.timers.cancel(Timer::Permission { id, peer: *peer });
        }
        self.timers.cancel(Timer::Allocation { id, family });
        let emptied = allocation.families().next().is_none();
        for (number, _) in channels {
            self.remove_route(client, number);
        }
        for peer in permissions {
            self.commands
                .push_back(Command::RemovePermission { relay, peer });
        }
        self.commands.push_back(Command::CloseRelaySocket(relay));
        if emptied {
            self.remove_allocation(id);
        }
    }

    /// The client's connection (TCP or TLS) is gone, and with it the 5-tuple of any allocation
    /// it made: that allocation is deleted at once, with its channels and permissions (RFC 8656
    /// §3.1 ties an allocation to its 5-tuple; coturn does the same). A no-op for a 5-tuple with
    /// no allocation.
    pub fn handle_connection_closed(&mut self, _now: Instant, client: FiveTuple) {
        if let Some(id) = self.by_five_tuple.get(&client).copied() {
            self.free_allocation(id);
        }
    }

    /// Tells the server every address of the host it runs on (the driver discovers them and
    /// calls this again when they change).
    ///
    /// A peer at one of them is refused unless an operator allowed it explicitly: behind a
    /// wildcard listener, a datagram relayed to another address of this host would reach the
    /// relay's own listening sockets, or any service bound there, from the relay itself. The
    /// advertised relayed addresses stay what they are, a hairpin to another allocation.
    /// Permissions and channels made before an address appeared are not revoked; they lapse at
    /// their lifetime, since refreshing them is refused.
    pub fn set_host_addresses(&mut self, addresses: impl IntoIterator<Item = IpAddr>) {
        self.host_addresses = addresses
            .into_iter()
            .map(|address| address.to_canonical())
            .collect();
    }

    /// Whether `ip` is an address of this host (plain or IPv4-mapped) that is not one of the
    /// advertised relayed addresses.
    pub(crate) fn is_other_host_address(&self, ip: IpAddr) -> bool {
        self.host_addresses.contains(&ip.to_canonical()) && !self.is_relay_ip(ip)
    }

    /// Applies what an operator may change while the relay runs (a reload): credentials, peer
    /// policy, quotas, lifetimes, SOFTWARE, the unauthenticated rate. Everything else in
    /// `config` (addresses, ports, shared budgets) is ignored: it cannot change without a
    /// restart, and the driver says so.
    ///
    /// What happens to what is alive:
    /// - Removed credentials stop authenticating at the next request; allocations made with
    ///   them are not cut but expire at their lifetime, as their Refresh now fails. A call in
    ///   progress survives a secret rotation, and an operator who must end one at once deletes
    ///   its user's allocations by restarting.
    /// - A peer the new policy refuses loses its permissions at once, and with them the routes
    ///   of every channel bound to it (in the kernel too: `RemoveChannel`).
    /// - Lowered quotas refuse new work only; nothing alive is cut.
    /// - Nonces stay valid (same secret).
    pub fn reconfigure(&mut self, now: Instant, config: &Config) {
        self.config.credentials = config.credentials.clone();
        self.config.policy = config.policy.clone();
        self.config.quotas = config.quotas;
        self.config.lifetimes = config.lifetimes.clamped();
        self.config.software.clone_from(&config.software);
        self.config.offer_sha256 = config.offer_sha256;
        self.config.unauthenticated_rate = config.unauthenticated_rate;
        self.config
            .alternate_servers
            .clone_from(&config.alternate_servers);
        self.limiter.set_limit(config.unauthenticated_rate);
        self.auth.reconfigure(&self.config);
        // Permissions the new policy refuses, in allocation and peer order (both maps are
        // ordered), so the commands are a function of the inputs.
        let refused: Vec<(AllocationId, IpAddr)> = self
            .allocations
            .iter()
            .flat_map(|(id, allocation)| {
                allocation.permissions.keys().map(move |peer| (*id, *peer))
            })
            .filter(|(_, peer)| {
                !(self.is_relay_ip(*peer) || self.config.policy.is_relay_own_address(*peer))
                    && (self.config.policy.check(*peer).is_err()
                        || (self.is_other_host_address(*peer)
                            && !self.config.policy.is_explicitly_allowed(*peer)))
            })
            .collect();
        for (id, peer) in refused {
            let Some(allocation) = self.allocations.get_mut(&id) else {
                continue;
            };
            allocation.permissions.remove(&peer);
            let relay = allocation.relay_socket(AddressFamily::of(peer));
            self.timers.cancel(Timer::Permission { id, peer });
            self.sync_routes_to(now, id, peer);
            self.commands
                .push_back(Command::RemovePermission { relay, peer });
        }
    }

    /// Whether an unauthenticated request from `from` may be answered now.
    ///
    /// Over UDP the answer is rate-limited per source address: a spoofed source would turn the
    /// relay into a reflector, and the limit bounds what it sends to any one victim. Over TCP
    /// and TLS the handshake has proven the source, the answer goes back on the requester's own
    /// connection, and the driver caps connections per source; a stream client also never
    /// retransmits (RFC 8489 §6.2.2), so a dropped answer would leave it waiting forever.
    fn may_answer_unauthenticated(&mut self, from: &FiveTuple, now: Instant) -> bool {
        from.transport.is_stream() || self.limiter.allow(from.client.ip(), now)
    }

    /// Whether `client` holds an allocation now; a driver closes connections that hold none
    /// after an idle timeout.
    #[must_use]
    pub fn has_allocation(&self, client: &FiveTuple) -> bool {
        self.by_five_tuple.contains_key(client)
    }

    /// Removes an allocation with all its families, channels and permissions.
    fn free_allocation(&mut self, id: AllocationId) {
        for family in [AddressFamily::V4, AddressFamily::V6] {
            if self
                .allocations
                .get(&id)
                .is_some_and(|allocation| allocation.has_family(family))
            {
                self.remove_family(id, family);
            }
        }
        self.remove_allocation(id);
    }

    /// Drops the bookkeeping of an allocation whose families are all gone.
    fn remove_allocation(&mut self, id: AllocationId) {
        let Some(allocation) = self.allocations.remove(&id) else {
            return;
        };
        self.by_five_tuple.remove(&allocation.five_tuple);
        self.by_port.remove(&allocation.port);
        shrink_map(&mut self.by_five_tuple);
        shrink_map(&mut self.by_port);
        self.ports.release(allocation.port);
        self.release_quota_place(&allocation.username);
    }

    fn handle_stun(
        &mut self,
        now: Instant,
        from: FiveTuple,
        message: &Message<'_>,
    ) -> Option<Forward> {
        match (message.class(), message.method()) {
            (Class::Request, Method::Binding) => self.handle_binding(now, from, message),
            (
                Class::Request,
                Method::Allocate | Method::Refresh | Method::CreatePermission | Method::ChannelBind,
            ) => {
                self.handle_authenticated_request(now, from, message);
            }
            (Class::Request, _) => self.handle_unknown_method(now, from, message),
            (Class::Indication, Method::Send) => {
                return self.handle_send_indication(now, from, message);
            }
            // Binding indications are keepalives; responses and other indications have no
            // business here (RFC 8489 §6.3.2: silently discard).
            _ => self.stats.drop(Drop::UnexpectedStun),
        }
        None
    }

    fn handle_send_indication(
        &mut self,
        now: Instant,
        from: FiveTuple,
        message: &Message<'_>,
    ) -> Option<Forward> {
        let transaction_id = message.transaction_id();
        let mut peer = None;
        let mut data = None;
        for raw in first_occurrences(message) {
            match Attribute::decode(raw, &transaction_id) {
                Ok(Attribute::XorPeerAddress(address)) => peer = Some(address),
                Ok(Attribute::Data(bytes)) => data = Some(bytes),
                Ok(_) => {}
                Err(_) => {
                    self.stats.drop(Drop::MalformedStun);
                    return None;
                }
            }
            if raw.kind().is_comprehension_required() && !raw.kind().is_known() {
                // RFC 8489 §6.3.2: an indication with unknown comprehension-required
                // attributes is discarded.
                self.stats.drop(Drop::UnknownAttribute);
                return None;
            }
        }
        let (Some(peer), Some(data)) = (peer, data) else {
            self.stats.drop(Drop::MalformedStun);
            return None;
        };
        let Some(&id) = self.by_five_tuple.get(&from) else {
            self.stats.drop(Drop::NoAllocation);
            return None;
        };
        let allocation = self.allocations.get(&id)?;
        let family = AddressFamily::of(peer.ip());
        if !allocation.permits(peer.ip(), family, now) {
            self.stats.drop(Drop::NoPermission);
            return None;
        }
        let relay = allocation.relay_socket(family);
        // DATA borrows from the datagram, so its offset is the payload's offset.
        let start = data.as_ptr() as usize - message.as_bytes().as_ptr() as usize;
        let forward = self.relay_to_peer(
            now,
            relay,
            peer,
            start..start + data.len(),
            message.as_bytes(),
        );
        if matches!(forward, Some(Forward::ToPeer { .. })) {
            self.stats.indications_to_peer.add(data.len());
        }
        forward
    }

    /// The attribute types of a request this server does not understand but must (420).
    fn unknown_required_attributes(message: &Message<'_>) -> Vec<u8> {
        let mut unknown = Vec::new();
        for raw in message.attributes() {
            let kind = raw.kind();
            if kind.is_comprehension_required() && !kind.is_known() {
                let bytes = kind.0.to_be_bytes();
                if !unknown.chunks_exact(2).any(|pair: &[u8]| pair == bytes) {
                    unknown.extend_from_slice(&bytes);
                }
            }
        }
        unknown
    }
}

/// Every transport address of `ip`, as a range of a map ordered by `SocketAddr` (address, then
/// port).
fn peers_at(ip: IpAddr) -> std::ops::RangeInclusive<SocketAddr> {
    match ip {
        IpAddr::V4(v4) => {
            SocketAddr::V4(SocketAddrV4::new(v4, 0))
                ..=SocketAddr::V4(SocketAddrV4::new(v4, u16::MAX))
        }
        IpAddr::V6(v6) => {
            SocketAddr::V6(SocketAddrV6::new(v6, 0, 0, 0))
                ..=SocketAddr::V6(SocketAddrV6::new(v6, u16::MAX, u32::MAX, u32::MAX))
        }
    }
}
