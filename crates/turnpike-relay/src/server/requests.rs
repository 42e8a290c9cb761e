//! Request handlers: Binding, Allocate, Refresh, CreatePermission and ChannelBind.

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::time::Instant;

use rand::RngCore;
use turnpike_proto::{
    AddressFamily, Attribute, AttributeError, AttributeType, ChannelNumber, Class, ErrorCode,
    Message, Method, TransactionId,
};

use super::respond::{self, Protection};
use super::{Drop, Server, later};
use crate::addr::FiveTuple;
use crate::allocation::{Allocation, AllocationId, Channel};
use crate::auth::{AuthFailure, Authenticated, OFFERED_PASSWORD_ALGORITHMS};
use crate::command::Command;
use crate::occurrence::{first_occurrences, first_occurrences_and_every};
use crate::timer::Timer;

/// REQUESTED-TRANSPORT's value for UDP, the only transport relayed.
const UDP: u8 = 17;

/// Unknown attribute types listed in one 420 response, at most: enough for any real client, and
/// it keeps the response from growing with an attacker's request.
const MAX_UNKNOWN_LISTED: usize = 16;

/// What a request handler decided.
#[derive(Debug)]
enum Reply {
    Success(Vec<Attribute<'static>>),
    Error(ErrorCode),
}

impl<R: RngCore> Server<R> {
    pub(super) fn handle_binding(&mut self, now: Instant, from: FiveTuple, message: &Message<'_>) {
        if !self.limiter.allow(from.client.ip(), now) {
            self.stats.drop(Drop::RateLimited);
            return;
        }
        let unknown = Self::unknown_required_attributes(message);
        let protection = Protection {
            signer: None,
            fingerprint: message.has_fingerprint(),
        };
        let transaction_id = message.transaction_id();
        let encoded = if unknown.is_empty() {
            self.stats.response(Method::Binding, 0);
            respond::response(
                Method::Binding,
                Class::SuccessResponse,
                transaction_id,
                &[Attribute::XorMappedAddress(from.client)],
                protection,
            )
        } else {
            self.stats
                .response(Method::Binding, ErrorCode::UNKNOWN_ATTRIBUTE.0);
            let attributes = unknown_attributes_error(&unknown);
            respond::response(
                Method::Binding,
                Class::ErrorResponse,
                transaction_id,
                &attributes,
                protection,
            )
        };
        self.send(from, encoded);
    }

    pub(super) fn handle_unknown_method(
        &mut self,
        now: Instant,
        from: FiveTuple,
        message: &Message<'_>,
    ) {
        if !self.limiter.allow(from.client.ip(), now) {
            self.stats.drop(Drop::RateLimited);
            return;
        }
        self.stats
            .response(message.method(), ErrorCode::BAD_REQUEST.0);
        let protection = Protection {
            signer: None,
            fingerprint: message.has_fingerprint(),
        };
        let encoded = respond::response(
            message.method(),
            Class::ErrorResponse,
            message.transaction_id(),
            &[Attribute::ErrorCode {
                code: ErrorCode::BAD_REQUEST,
                reason: "",
            }],
            protection,
        );
        self.send(from, encoded);
    }

    pub(super) fn handle_authenticated_request(
        &mut self,
        now: Instant,
        from: FiveTuple,
        message: &Message<'_>,
    ) {
        let transaction_id = message.transaction_id();
        if let Some(cached) = self.transactions.get(from, transaction_id) {
            let payload = cached.to_vec();
            self.stats.retransmissions += 1;
            self.commands
                .push_back(Command::SendToClient { to: from, payload });
            return;
        }
        let now_unix = self.wall_clock.unix_seconds(now);
        let authenticated = match self.auth.authenticate(message, from.client, now_unix) {
            Ok(authenticated)
                if authenticated.expired
                    && !self.deletes_own_allocation(from, message, &authenticated) =>
            {
                self.refuse_authentication(now, from, message, AuthFailure::ExpiredCredentials);
                return;
            }
            Ok(authenticated) => authenticated,
            Err(failure) => {
                self.refuse_authentication(now, from, message, failure);
                return;
            }
        };

        let unknown = Self::unknown_required_attributes(message);
        let protection = Protection {
            signer: Some(&authenticated),
            fingerprint: message.has_fingerprint(),
        };
        let method = message.method();
        let encoded = if unknown.is_empty() {
            let reply = match method {
                Method::Allocate => self.allocate(now, from, message, &authenticated),
                Method::Refresh => self.refresh(now, from, message, &authenticated),
                Method::CreatePermission => {
                    self.create_permission(now, from, message, &authenticated)
                }
                _ => self.channel_bind(now, from, message, &authenticated),
            };
            match reply {
                Reply::Success(attributes) => {
                    self.stats.response(method, 0);
                    let mut attributes: Vec<Attribute<'_>> = attributes;
                    if let Some(software) = &self.config.software {
                        attributes.push(Attribute::Software(software));
                    }
                    respond::response(
                        method,
                        Class::SuccessResponse,
                        transaction_id,
                        &attributes,
                        protection,
                    )
                }
                Reply::Error(code) => {
                    self.stats.response(method, code.0);
                    let attributes = [Attribute::ErrorCode { code, reason: "" }];
                    respond::response(
                        method,
                        Class::ErrorResponse,
                        transaction_id,
                        &attributes,
                        protection,
                    )
                }
            }
        } else {
            self.stats.response(method, ErrorCode::UNKNOWN_ATTRIBUTE.0);
            let attributes = unknown_attributes_error(&unknown);
            respond::response(
                method,
                Class::ErrorResponse,
                transaction_id,
                &attributes,
                protection,
            )
        };
        if let Ok(payload) = &encoded {
            let expires_at = later(now, self.config.lifetimes.transaction);
            self.transactions
                .insert(expires_at, from, transaction_id, payload.clone());
        }
        self.send(from, encoded);
    }

    /// Answers a request that failed authentication: 401 or 438 with a challenge, or 400.
    fn refuse_authentication(
        &mut self,
        now: Instant,
        from: FiveTuple,
        message: &Message<'_>,
        failure: AuthFailure,
    ) {
        self.stats.auth_failure(failure.label());
        if !self.limiter.allow(from.client.ip(), now) {
            self.stats.drop(Drop::RateLimited);
            return;
        }
        let now_unix = self.wall_clock.unix_seconds(now);
        let code = failure.error_code();
        self.stats.response(message.method(), code.0);
        let mut attributes = vec![Attribute::ErrorCode { code, reason: "" }];
        let nonce;
        if failure.challenges() {
            nonce = self.auth.issue_nonce(from.client, now_unix);
            attributes.push(Attribute::Realm(self.auth.realm()));
            attributes.push(Attribute::Nonce(nonce.as_str()));
            if self.auth.offers_sha256() {
                attributes
                    .extend(Attribute::password_algorithms(&OFFERED_PASSWORD_ALGORITHMS).ok());
            }
        }
        let protection = Protection {
            signer: None,
            fingerprint: message.has_fingerprint(),
        };
        let encoded = respond::response(
            message.method(),
            Class::ErrorResponse,
            message.transaction_id(),
            &attributes,
            protection,
        );
        self.send(from, encoded);
    }

    /// Whether `message` deletes the allocation of `from` (Refresh with LIFETIME 0, RFC 8656
    /// §7.3) and that allocation was created by the user who signed it.
    ///
    /// The one request credentials past their expiry are good for. A client whose REST
    /// credentials expired could otherwise not release its allocation, which would then hold a
    /// port and a quota slot until its lifetime ran out. Accepting the deletion gives an
    /// attacker nothing: it needs the key the allocation was created with (the same username,
    /// so the same secret-derived password), a nonce issued to this client address, and the
    /// allocation's own 5-tuple, and all it can do is end that allocation early, which the
    /// allocation's owner asked for. Anything else (refreshing, permissions, channels, a new
    /// allocation) still gets 401, so expiry keeps meaning what the credential issuer meant.
    fn deletes_own_allocation(
        &self,
        from: FiveTuple,
        message: &Message<'_>,
        authenticated: &Authenticated,
    ) -> bool {
        if message.method() != Method::Refresh {
            return false;
        }
        let transaction_id = message.transaction_id();
        let lifetime = first_occurrences(message)
            .find(|raw| raw.kind() == AttributeType::LIFETIME)
            .map(|raw| Attribute::decode(raw, &transaction_id));
        if !matches!(lifetime, Some(Ok(Attribute::Lifetime(0)))) {
            return false;
        }
        self.by_five_tuple
            .get(&from)
            .and_then(|id| self.allocations.get(id))
            .is_some_and(|allocation| *allocation.username == *authenticated.username)
    }

    fn send(&mut self, to: FiveTuple, encoded: Result<Vec<u8>, turnpike_proto::EncodeError>) {
        match encoded {
            Ok(payload) => self
                .commands
                .push_back(Command::SendToClient { to, payload }),
            // Responses are built from bounded parts; this is a bug, not an attack.
            Err(error) => tracing::error!(%error, "response did not encode"),
        }
    }

    /// The allocation of `from`, provided the request comes from the user that created it.
    fn own_allocation(
        &self,
        from: FiveTuple,
        authenticated: &Authenticated,
    ) -> Result<AllocationId, ErrorCode> {
        let id = *self
            .by_five_tuple
            .get(&from)
            .ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        let allocation = self
            .allocations
            .get(&id)
            .ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        if *allocation.username != *authenticated.username {
            return Err(ErrorCode::WRONG_CREDENTIALS);
        }
        Ok(id)
    }

    /// The lifetime granted for a requested one (RFC 8656 §7.2 and §7.3): the default when
    /// none or less was asked for, the maximum when more was.
    fn granted_lifetime(&self, requested: Option<u32>) -> Duration {
        let lifetimes = &self.config.lifetimes;
        let requested = requested.map_or(lifetimes.allocation_default, |seconds| {
            Duration::from_secs(seconds.into())
        });
        requested
            .min(lifetimes.allocation_max)
            .max(lifetimes.allocation_default)
    }

    fn allocate(
        &mut self,
        now: Instant,
        from: FiveTuple,
        message: &Message<'_>,
        authenticated: &Authenticated,
    ) -> Reply {
        let transaction_id = message.transaction_id();
        if let Some(&id) = self.by_five_tuple.get(&from) {
            // A retransmission of the request that created the allocation, arriving after its
            // cached response expired, still gets a success response.
            return match self.allocations.get(&id) {
                Some(allocation) if allocation.created_by == transaction_id => {
                    Reply::Success(self.allocation_success(now, allocation, None))
                }
                _ => Reply::Error(ErrorCode::ALLOCATION_MISMATCH),
            };
        }
        let request = match AllocateRequest::parse(message) {
            Ok(request) => request,
            Err(code) => return Reply::Error(code),
        };
        // Port reservations are not offered, so no token is valid and no reservation can be
        // made: RFC 8656 §7.2 answers both with 508, each at its own step of the checks.
        if request.reservation_token {
            return Reply::Error(ErrorCode::INSUFFICIENT_CAPACITY);
        }
        let (families, address_error) = match self.allocation_families(&request) {
            Ok(families) => families,
            Err(code) => return Reply::Error(code),
        };
        if request.reserve_next_port {
            // Step 8: reserving the next port of a dual allocation is malformed.
            return Reply::Error(if request.additional_family.is_some() {
                ErrorCode::BAD_REQUEST
            } else {
                ErrorCode::INSUFFICIENT_CAPACITY
            });
        }
        if self.draining {
            return Reply::Error(ErrorCode::INSUFFICIENT_CAPACITY);
        }
        let quotas = self.config.quotas;
        let user_allocations = self
            .allocations_per_user
            .get(&authenticated.username)
            .copied()
            .unwrap_or(0);
        if self.allocations.len() >= quotas.allocations_total
            || user_allocations >= quotas.allocations_per_user
        {
            return Reply::Error(ErrorCode::ALLOCATION_QUOTA_REACHED);
        }
        let port = if request.even_port {
            self.ports.take_random_even(&mut self.rng)
        } else {
            self.ports.take_random(&mut self.rng)
        };
        let Some(port) = port else {
            return Reply::Error(ErrorCode::INSUFFICIENT_CAPACITY);
        };
        if let Some(budget) = &self.config.shared_budget
            && !budget.try_take()
        {
            self.ports.release(port);
            return Reply::Error(ErrorCode::ALLOCATION_QUOTA_REACHED);
        }

        let lifetime = self.granted_lifetime(request.lifetime);
        let expires_at = later(now, lifetime);
        let id = AllocationId(self.next_allocation_id);
        self.next_allocation_id += 1;
        let mut allocation = Allocation {
            five_tuple: from,
            username: authenticated.username.clone(),
            created_by: transaction_id,
            port,
            ipv4_expiry: None,
            ipv6_expiry: None,
            permissions: Default::default(),
            channels: Default::default(),
            channel_by_peer: Default::default(),
        };
        for family in families {
            *allocation.expiry_mut(family) = Some(expires_at);
            self.timers
                .schedule(expires_at, Timer::Allocation { id, family });
            self.commands
                .push_back(Command::OpenRelaySocket(allocation.relay_socket(family)));
        }
        let attributes = self.allocation_success(now, &allocation, address_error);
        self.by_five_tuple.insert(from, id);
        self.by_port.insert(port, id);
        *self
            .allocations_per_user
            .entry(authenticated.username.clone())
            .or_default() += 1;
        self.allocations.insert(id, allocation);
        Reply::Success(attributes)
    }

    /// The families to allocate and, for a dual allocation that gets only one, the family that
    /// failed (RFC 8656 §7.2, RFC 6156 §4).
    fn allocation_families(
        &self,
        request: &AllocateRequest,
    ) -> Result<(Vec<AddressFamily>, Option<AddressFamily>), ErrorCode> {
        let offered = |family| match family {
            AddressFamily::V4 => self.config.relay_ipv4.is_some(),
            AddressFamily::V6 => self.config.relay_ipv6.is_some(),
        };
        match (request.requested_family, request.additional_family) {
            (Some(_), Some(_)) | (None, Some(AddressFamily::V4)) => Err(ErrorCode::BAD_REQUEST),
            (None, Some(AddressFamily::V6)) => {
                match (offered(AddressFamily::V4), offered(AddressFamily::V6)) {
                    (true, true) => Ok((vec![AddressFamily::V4, AddressFamily::V6], None)),
                    (true, false) => Ok((vec![AddressFamily::V4], Some(AddressFamily::V6))),
                    (false, true) => Ok((vec![AddressFamily::V6], Some(AddressFamily::V4))),
                    (false, false) => Err(ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED),
                }
            }
            (requested, None) => {
                let family = requested.unwrap_or(AddressFamily::V4);
                if offered(family) {
                    Ok((vec![family], None))
                } else {
                    Err(ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED)
                }
            }
        }
    }

    fn allocation_success(
        &self,
        now: Instant,
        allocation: &Allocation,
        address_error: Option<AddressFamily>,
    ) -> Vec<Attribute<'static>> {
        let mut attributes = Vec::with_capacity(5);
        let mut remaining = Duration::ZERO;
        for family in allocation.families() {
            let Some(ip) = self.relay_ip(family) else {
                continue;
            };
            attributes.push(Attribute::XorRelayedAddress(SocketAddr::new(
                ip,
                allocation.port,
            )));
            if let Some(expiry) = allocation.expiry(family) {
                remaining = remaining.max(expiry.saturating_duration_since(now));
            }
        }
        if let Some(family) = address_error {
            attributes.push(Attribute::AddressErrorCode {
                family,
                code: ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED,
                reason: "",
            });
        }
        attributes.push(Attribute::Lifetime(seconds(remaining)));
        attributes.push(Attribute::XorMappedAddress(allocation.five_tuple.client));
        attributes
    }

    fn refresh(
        &mut self,
        now: Instant,
        from: FiveTuple,
        message: &Message<'_>,
        authenticated: &Authenticated,
    ) -> Reply {
        let id = match self.own_allocation(from, authenticated) {
            Ok(id) => id,
            Err(code) => return Reply::Error(code),
        };
        let transaction_id = message.transaction_id();
        let mut lifetime = None;
        let mut family = None;
        for raw in first_occurrences(message) {
            match Attribute::decode(raw, &transaction_id) {
                Ok(Attribute::Lifetime(seconds)) => lifetime = Some(seconds),
                Ok(Attribute::RequestedAddressFamily(requested)) => family = Some(requested),
                Ok(_) => {}
                Err(AttributeError::UnknownAddressFamily)
                    if raw.kind() == AttributeType::REQUESTED_ADDRESS_FAMILY =>
                {
                    return Reply::Error(ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH);
                }
                Err(_) => return Reply::Error(ErrorCode::BAD_REQUEST),
            }
        }
        let Some(allocation) = self.allocations.get(&id) else {
            return Reply::Error(ErrorCode::ALLOCATION_MISMATCH);
        };
        let families: Vec<AddressFamily> = match family {
            Some(family) if !allocation.has_family(family) => {
                return Reply::Error(ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH);
            }
            Some(family) => vec![family],
            None => allocation.families().collect(),
        };
        if lifetime == Some(0) {
            for family in families {
                self.remove_family(id, family);
            }
            return Reply::Success(vec![Attribute::Lifetime(0)]);
        }
        let granted = self.granted_lifetime(lifetime);
        let expires_at = later(now, granted);
        let Some(allocation) = self.allocations.get_mut(&id) else {
            return Reply::Error(ErrorCode::ALLOCATION_MISMATCH);
        };
        for family in families {
            *allocation.expiry_mut(family) = Some(expires_at);
            self.timers
                .schedule(expires_at, Timer::Allocation { id, family });
        }
        self.sync_all_routes(now, id);
        Reply::Success(vec![Attribute::Lifetime(seconds(granted))])
    }

    fn sync_all_routes(&mut self, now: Instant, id: AllocationId) {
        let Some(allocation) = self.allocations.get(&id) else {
            return;
        };
        let channels: Vec<ChannelNumber> = allocation.channels.keys().copied().collect();
        for channel in channels {
            self.sync_route(now, id, channel);
        }
    }

    /// Checks a peer address for a permission or channel of allocation `id`.
    fn check_peer(&self, id: AllocationId, peer: IpAddr) -> Result<(), ErrorCode> {
        let allocation = self
            .allocations
            .get(&id)
            .ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        if !allocation.has_family(AddressFamily::of(peer)) {
            tracing::debug!(peer_family = ?AddressFamily::of(peer), "no relayed address of the peer's family");
            return Err(ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH);
        }
        // The relay's own relayed addresses are served as a hairpin inside the relay, whatever
        // range they are in; everything else goes through the operator's policy. The addresses
        // in the config count without the operator listing them in the policy again.
        if self.is_relay_ip(peer) || self.config.policy.is_relay_own_address(peer) {
            return Ok(());
        }
        self.config.policy.check(peer).map_err(|denied| {
            tracing::debug!(reason = %denied, "peer refused by policy");
            ErrorCode::FORBIDDEN
        })
    }

    /// Installs or refreshes the permission for `peer`; the caller has checked quota and policy.
    fn install_permission(&mut self, now: Instant, id: AllocationId, peer: IpAddr) {
        let expires_at = later(now, self.config.lifetimes.permission);
        let Some(allocation) = self.allocations.get_mut(&id) else {
            return;
        };
        allocation.permissions.insert(peer, expires_at);
        let relay = allocation.relay_socket(AddressFamily::of(peer));
        self.timers
            .schedule(expires_at, Timer::Permission { id, peer });
        self.commands
            .push_back(Command::InstallPermission { relay, peer });
    }

    fn create_permission(
        &mut self,
        now: Instant,
        from: FiveTuple,
        message: &Message<'_>,
        authenticated: &Authenticated,
    ) -> Reply {
        let id = match self.own_allocation(from, authenticated) {
            Ok(id) => id,
            Err(code) => return Reply::Error(code),
        };
        let transaction_id = message.transaction_id();
        let mut peers: Vec<IpAddr> = Vec::new();
        for raw in first_occurrences_and_every(message, AttributeType::XOR_PEER_ADDRESS) {
            match Attribute::decode(raw, &transaction_id) {
                Ok(Attribute::XorPeerAddress(peer)) => {
                    if !peers.contains(&peer.ip()) {
                        peers.push(peer.ip());
                    }
                }
                Ok(_) => {}
                Err(_) => return Reply::Error(ErrorCode::BAD_REQUEST),
            }
        }
        if peers.is_empty() {
            return Reply::Error(ErrorCode::BAD_REQUEST);
        }
        // All or nothing (RFC 8656 §10.2): check every peer before installing any.
        for peer in &peers {
            if let Err(code) = self.check_peer(id, *peer) {
                return Reply::Error(code);
            }
        }
        let Some(allocation) = self.allocations.get(&id) else {
            return Reply::Error(ErrorCode::ALLOCATION_MISMATCH);
        };
        let new = peers
            .iter()
            .filter(|peer| !allocation.permissions.contains_key(peer))
            .count();
        if allocation.permissions.len() + new > self.config.quotas.permissions_per_allocation {
            // A per-client quota, like the allocation quotas (see `Quotas`).
            return Reply::Error(ErrorCode::ALLOCATION_QUOTA_REACHED);
        }
        for peer in peers {
            self.install_permission(now, id, peer);
        }
        self.sync_all_routes(now, id);
        Reply::Success(Vec::new())
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        from: FiveTuple,
        message: &Message<'_>,
        authenticated: &Authenticated,
    ) -> Reply {
        let id = match self.own_allocation(from, authenticated) {
            Ok(id) => id,
            Err(code) => return Reply::Error(code),
        };
        let transaction_id = message.transaction_id();
        let mut number = None;
        let mut peer = None;
        for raw in first_occurrences(message) {
            match Attribute::decode(raw, &transaction_id) {
                Ok(Attribute::ChannelNumber(value)) => number = Some(value),
                Ok(Attribute::XorPeerAddress(address)) => peer = Some(address),
                Ok(_) => {}
                Err(_) => return Reply::Error(ErrorCode::BAD_REQUEST),
            }
        }
        let (Some(number), Some(peer)) = (number, peer) else {
            return Reply::Error(ErrorCode::BAD_REQUEST);
        };
        let Some(number) = ChannelNumber::new(number) else {
            // RFC 5766 allowed up to 0x7FFF; RFC 8656 keeps 0x5000-0x7FFF for other protocols
            // sharing the port (RFC 7983), so older clients land here.
            tracing::debug!(channel = number, "channel number outside 0x4000-0x4FFF");
            return Reply::Error(ErrorCode::BAD_REQUEST);
        };
        if let Err(code) = self.check_peer(id, peer.ip()) {
            return Reply::Error(code);
        }
        let Some(allocation) = self.allocations.get(&id) else {
            return Reply::Error(ErrorCode::ALLOCATION_MISMATCH);
        };
        // A number stays tied to its peer, and a peer to its number, through the binding and
        // its cool-down (RFC 8656 §12).
        let bound_peer = allocation.channels.get(&number).map(|channel| channel.peer);
        let bound_number = allocation.channel_by_peer.get(&peer).copied();
        if bound_peer.is_some_and(|bound| bound != peer)
            || bound_number.is_some_and(|bound| bound != number)
        {
            return Reply::Error(ErrorCode::BAD_REQUEST);
        }
        // RFC 8656 §12.2: a capacity limit on a valid request is 508, as for CreatePermission.
        let quotas = self.config.quotas;
        if bound_peer.is_none() && allocation.channels.len() >= quotas.channels_per_allocation {
            return Reply::Error(ErrorCode::ALLOCATION_QUOTA_REACHED);
        }
        if !allocation.permissions.contains_key(&peer.ip())
            && allocation.permissions.len() >= quotas.permissions_per_allocation
        {
            return Reply::Error(ErrorCode::ALLOCATION_QUOTA_REACHED);
        }
        let expires_at = later(now, self.config.lifetimes.channel);
        if let Some(allocation) = self.allocations.get_mut(&id) {
            allocation
                .channels
                .insert(number, Channel { peer, expires_at });
            allocation.channel_by_peer.insert(peer, number);
        }
        self.timers.schedule(
            expires_at,
            Timer::Channel {
                id,
                channel: number,
            },
        );
        self.install_permission(now, id, peer.ip());
        // Installs the fast path before the success response is queued behind it: this channel
        // and any other to the same IP, which the refreshed permission may have revived.
        self.sync_routes_to(now, id, peer.ip());
        Reply::Success(Vec::new())
    }
}

/// What an Allocate request asks for.
#[derive(Debug, Default)]
struct AllocateRequest {
    lifetime: Option<u32>,
    requested_family: Option<AddressFamily>,
    additional_family: Option<AddressFamily>,
    even_port: bool,
    reserve_next_port: bool,
    reservation_token: bool,
}

impl AllocateRequest {
    fn parse(message: &Message<'_>) -> Result<Self, ErrorCode> {
        let transaction_id: TransactionId = message.transaction_id();
        let mut request = Self::default();
        let mut transport = None;
        for raw in first_occurrences(message) {
            match Attribute::decode(raw, &transaction_id) {
                Ok(Attribute::RequestedTransport(protocol)) => transport = Some(protocol),
                Ok(Attribute::Lifetime(seconds)) => request.lifetime = Some(seconds),
                Ok(Attribute::RequestedAddressFamily(family)) => {
                    request.requested_family = Some(family)
                }
                Ok(Attribute::AdditionalAddressFamily(family)) => {
                    request.additional_family = Some(family)
                }
                Ok(Attribute::EvenPort { reserve_next }) => {
                    request.even_port = true;
                    request.reserve_next_port = reserve_next;
                }
                Ok(Attribute::ReservationToken(_)) => request.reservation_token = true,
                Ok(_) => {}
                Err(AttributeError::UnknownAddressFamily)
                    if raw.kind() == AttributeType::REQUESTED_ADDRESS_FAMILY
                        || raw.kind() == AttributeType::ADDITIONAL_ADDRESS_FAMILY =>
                {
                    return Err(ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED);
                }
                Err(_) => return Err(ErrorCode::BAD_REQUEST),
            }
        }
        match transport {
            None => return Err(ErrorCode::BAD_REQUEST),
            Some(UDP) => {}
            Some(_) => return Err(ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL),
        }
        // RFC 8656 §7.2: a reservation token excludes EVEN-PORT and both address family
        // attributes.
        if request.reservation_token
            && (request.even_port
                || request.requested_family.is_some()
                || request.additional_family.is_some())
        {
            return Err(ErrorCode::BAD_REQUEST);
        }
        Ok(request)
    }
}

fn unknown_attributes_error(unknown: &[u8]) -> Vec<Attribute<'_>> {
    let listed = &unknown[..unknown.len().min(2 * MAX_UNKNOWN_LISTED)];
    let mut attributes = vec![Attribute::ErrorCode {
        code: ErrorCode::UNKNOWN_ATTRIBUTE,
        reason: "",
    }];
    // `listed` is a whole number of 16-bit types, which always makes a valid value.
    attributes.extend(Attribute::unknown_attributes(listed).ok());
    attributes
}

fn seconds(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}
