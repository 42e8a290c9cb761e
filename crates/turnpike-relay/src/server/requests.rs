//! Request handlers: Binding, Allocate, Refresh, CreatePermission and ChannelBind.

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;
use std::time::Instant;

use rand::RngCore;
use turnpike_proto::{
    AddressFamily, Attribute, AttributeError, AttributeType, ChannelNumber, Class, ErrorCode,
    Message, Method, RawAttribute, TransactionId,
};

use super::respond::{self, Protection};
use super::{Drop, Server, later};
use crate::addr::FiveTuple;
use crate::allocation::{Allocation, AllocationId, Channel, Reservation};
use crate::auth::{AuthFailure, Authenticated, OFFERED_PASSWORD_ALGORITHMS};
use crate::command::Command;
use crate::occurrence::{first_occurrences, first_occurrences_and_every};
use crate::refusal::Refusal;
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
    Refused(Refused<'static>),
}

impl From<Refusal> for Reply {
    fn from(refusal: Refusal) -> Self {
        Self::Refused(Refused::new(refusal))
    }
}

/// A refusal and the attributes its error response carries after ERROR-CODE: UNKNOWN-ATTRIBUTES
/// for a 420, and whatever a later refusal needs (ALTERNATE-SERVER for a 300, say).
#[derive(Debug)]
struct Refused<'a> {
    refusal: Refusal,
    attributes: Vec<Attribute<'a>>,
}

impl<'a> Refused<'a> {
    const fn new(refusal: Refusal) -> Self {
        Self {
            refusal,
            attributes: Vec::new(),
        }
    }

    fn with(mut self, attribute: Attribute<'a>) -> Self {
        self.attributes.push(attribute);
        self
    }

    /// The 420 for `unknown`, a list of 16-bit attribute types, listing at most
    /// `MAX_UNKNOWN_LISTED` of them.
    fn unknown_attributes(unknown: &'a [u8]) -> Self {
        let listed = &unknown[..unknown.len().min(2 * MAX_UNKNOWN_LISTED)];
        let refused = Self::new(Refusal::UnknownAttribute);
        // `listed` is a whole number of 16-bit types, which always makes a valid value.
        match Attribute::unknown_attributes(listed) {
            Ok(attribute) => refused.with(attribute),
            Err(_) => refused,
        }
    }
}

impl<R: RngCore> Server<R> {
    pub(super) fn handle_binding(&mut self, now: Instant, from: FiveTuple, message: &Message<'_>) {
        if !self.may_answer_unauthenticated(&from, now) {
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
            let refused = Refused::unknown_attributes(&unknown);
            self.refusal_response(Method::Binding, transaction_id, &refused, protection)
        };
        self.send(from, encoded);
    }

    pub(super) fn handle_unknown_method(
        &mut self,
        now: Instant,
        from: FiveTuple,
        message: &Message<'_>,
    ) {
        if !self.may_answer_unauthenticated(&from, now) {
            self.stats.drop(Drop::RateLimited);
            return;
        }
        let protection = Protection {
            signer: None,
            fingerprint: message.has_fingerprint(),
        };
        let encoded = self.refusal_response(
            message.method(),
            message.transaction_id(),
            &Refused::new(Refusal::UnknownMethod),
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

        let mut unknown = Self::unknown_required_attributes(message);
        if message.method() == Method::Allocate {
            Self::refuse_dont_fragment(message, &mut unknown);
        }
        let protection = Protection {
            signer: Some(&authenticated),
            fingerprint: message.has_fingerprint(),
        };
        let method = message.method();
        let encoded = if unknown.is_empty() {
            let reply = match method {
                Method::Allocate => {
                    let reply = self.allocate(now, from, message, &authenticated);
                    self.redirect_when_full(reply)
                }
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
                Reply::Refused(refused) => {
                    self.refusal_response(method, transaction_id, &refused, protection)
                }
            }
        } else {
            let refused = Refused::unknown_attributes(&unknown);
            self.refusal_response(method, transaction_id, &refused, protection)
        };
        if let Ok(payload) = &encoded {
            let expires_at = later(now, self.config.lifetimes.transaction);
            self.transactions
                .insert(expires_at, from, transaction_id, payload.clone());
        }
        self.send(from, encoded);
    }

    /// Adds DONT-FRAGMENT to the unknown attributes of an Allocate that carries it.
    ///
    /// RFC 8656 §7.2 step 5 leaves a server two ways: relay with the DF bit set, or treat the
    /// attribute as an unknown comprehension-required one (420, listed in UNKNOWN-ATTRIBUTES).
    /// This relay takes the second: relayed datagrams leave from the user-space sockets and from
    /// the kernel fast path alike, and neither sets DF per allocation, so accepting the
    /// attribute would be a promise not kept. The core has no command to ask the driver for it
    /// either. A client told 420 retries without the attribute (RFC 8656 §7.1) and learns the
    /// path MTU some other way.
    fn refuse_dont_fragment(message: &Message<'_>, unknown: &mut Vec<u8>) {
        let bytes = AttributeType::DONT_FRAGMENT.0.to_be_bytes();
        if message
            .attributes()
            .any(|raw| raw.kind() == AttributeType::DONT_FRAGMENT)
            && !unknown.chunks_exact(2).any(|pair| pair == bytes)
        {
            unknown.extend_from_slice(&bytes);
        }
    }

    /// The error response for a refused request, counted by code and by reason.
    fn refusal_response(
        &mut self,
        method: Method,
        transaction_id: TransactionId,
        refused: &Refused<'_>,
        protection: Protection<'_>,
    ) -> Result<Vec<u8>, turnpike_proto::EncodeError> {
        let code = refused.refusal.error_code();
        self.stats.response(method, code.0);
        self.stats.refusal(refused.refusal);
        tracing::debug!(
            reason = refused.refusal.as_str(),
            code = code.0,
            "request refused"
        );
        // RFC 8489 §14.8 asks for a reason phrase; the suggested ones are short, and answers to
        // unauthenticated sources stay rate-limited whatever their size.
        let mut attributes = Vec::with_capacity(1 + refused.attributes.len());
        attributes.push(Attribute::ErrorCode {
            code,
            reason: refused.refusal.reason_phrase(),
        });
        attributes.extend(refused.attributes.iter().cloned());
        respond::response(
            method,
            Class::ErrorResponse,
            transaction_id,
            &attributes,
            protection,
        )
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
        if !self.may_answer_unauthenticated(&from, now) {
            self.stats.drop(Drop::RateLimited);
            return;
        }
        let now_unix = self.wall_clock.unix_seconds(now);
        let code = failure.error_code();
        self.stats.response(message.method(), code.0);
        let mut attributes = vec![Attribute::ErrorCode {
            code,
            reason: code.default_reason(),
        }];
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
    ) -> Result<AllocationId, Refusal> {
        let id = *self.by_five_tuple.get(&from).ok_or(Refusal::NoAllocation)?;
        let allocation = self.allocations.get(&id).ok_or(Refusal::NoAllocation)?;
        if *allocation.username != *authenticated.username {
            return Err(Refusal::WrongCredentials);
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

    /// An Allocate refused because this relay is draining or has no room (the allocation
    /// quota, no relayed port) goes to the next of the operator's alternate servers instead:
    /// clients that follow RFC 8489 §10 try there rather than give up.
    fn redirect_when_full(&mut self, reply: Reply) -> Reply {
        let Reply::Refused(refused) = &reply else {
            return reply;
        };
        let full = matches!(
            refused.refusal,
            Refusal::Draining | Refusal::AllocationQuota | Refusal::NoRelayPort
        );
        let count = self.config.alternate_servers.len();
        if !full || count == 0 {
            return reply;
        }
        let alternate = self.config.alternate_servers[self.next_alternate % count];
        self.next_alternate = self.next_alternate.wrapping_add(1);
        Reply::Refused(
            Refused::new(Refusal::TryAlternate).with(Attribute::AlternateServer(alternate)),
        )
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
                // Without the ADDRESS-ERROR-CODE or RESERVATION-TOKEN of the first answer: that
                // answer stays cached for 40 s, and a token is spent or gone after 30 s anyway.
                Some(allocation) if allocation.created_by == transaction_id => {
                    Reply::Success(self.allocation_success(now, allocation, None))
                }
                _ => Refusal::AllocationExists.into(),
            };
        }
        let request = match AllocateRequest::parse(message) {
            Ok(request) => request,
            Err(refusal) => return refusal.into(),
        };
        if let Some(token) = request.reservation_token {
            return self.allocate_reserved(
                now,
                from,
                transaction_id,
                &request,
                token,
                authenticated,
            );
        }
        let (families, address_error) = match self.allocation_families(&request) {
            Ok(families) => families,
            Err(refusal) => return refusal.into(),
        };
        // RFC 8656 §7.2 step 8: reserving the next port of a dual allocation is malformed.
        if request.reserve_next_port && request.additional_family.is_some() {
            return Refusal::ConflictingAttributes.into();
        }
        if self.draining {
            return Refusal::Draining.into();
        }
        // A reservation holds a place in the quotas as an allocation does.
        let places = 1 + usize::from(request.reserve_next_port);
        if let Err(refusal) = self.check_local_quotas(&authenticated.username, places) {
            return refusal.into();
        }
        let port = if request.reserve_next_port {
            self.ports.take_random_even_pair(&mut self.rng)
        } else if request.even_port {
            self.ports.take_random_even(&mut self.rng)
        } else {
            self.ports.take_random(&mut self.rng)
        };
        let Some(port) = port else {
            return Refusal::NoRelayPort.into();
        };
        let reserved_port = request.reserve_next_port.then(|| port + 1);
        if let Err(refusal) = self.take_shared_places(&authenticated.username, places) {
            self.ports.release(port);
            if let Some(reserved) = reserved_port {
                self.ports.release(reserved);
            }
            return refusal.into();
        }
        *self
            .allocations_per_user
            .entry(authenticated.username.clone())
            .or_default() += 1;
        let lifetime = self.granted_lifetime(request.lifetime);
        let mut attributes = self.install_allocation(
            now,
            from,
            transaction_id,
            authenticated,
            port,
            &families,
            lifetime,
            address_error.map(|family| (family, request.draft_code_points)),
        );
        if let Some(reserved) = reserved_port {
            let token = self.reserve(now, reserved, families[0], &authenticated.username);
            attributes.push(Attribute::ReservationToken(token));
        }
        Reply::Success(attributes)
    }

    /// Allocate with a RESERVATION-TOKEN (RFC 8656 §7.2 step 6): the reserved port, in the
    /// family of the allocation that reserved it; 508 when the token is unknown, used or expired.
    fn allocate_reserved(
        &mut self,
        now: Instant,
        from: FiveTuple,
        transaction_id: TransactionId,
        request: &AllocateRequest,
        token: [u8; 8],
        authenticated: &Authenticated,
    ) -> Reply {
        let Some(reservation) = self.reservations.get(&token) else {
            return Refusal::BadReservationToken.into();
        };
        if reservation.expires_at <= now {
            return Refusal::BadReservationToken.into();
        }
        if self.draining {
            return Refusal::Draining.into();
        }
        let (port, family) = (reservation.port, reservation.family);
        let reserved_by = reservation.username.clone();
        // The reservation's place in the quotas becomes the allocation's. A token is not bound
        // to a user (RFC 8656 §7.2), but the place must be counted against whoever allocates.
        if *reserved_by != *authenticated.username {
            let user = &authenticated.username;
            let held = self.allocations_per_user.get(user).copied().unwrap_or(0);
            if held >= self.config.quotas.allocations_per_user {
                return Refusal::UserAllocationQuota.into();
            }
            if let Some(users) = &self.config.shared_user_budget {
                if !users.try_take(user) {
                    return Refusal::UserAllocationQuota.into();
                }
                users.give_back(&reserved_by);
            }
            *self.allocations_per_user.entry(user.clone()).or_default() += 1;
            if let Some(count) = self.allocations_per_user.get_mut(&reserved_by) {
                *count -= 1;
                if *count == 0 {
                    self.allocations_per_user.remove(&reserved_by);
                }
            }
        }
        self.reservations.remove(&token);
        self.timers.cancel(Timer::Reservation { token });
        let lifetime = self.granted_lifetime(request.lifetime);
        Reply::Success(self.install_allocation(
            now,
            from,
            transaction_id,
            authenticated,
            port,
            &[family],
            lifetime,
            None,
        ))
    }

    /// Checks that `places` more allocations (or reservations) fit the quotas this server
    /// counts itself.
    fn check_local_quotas(&self, user: &str, places: usize) -> Result<(), Refusal> {
        let quotas = self.config.quotas;
        if self.allocations.len() + self.reservations.len() + places > quotas.allocations_total {
            return Err(Refusal::AllocationQuota);
        }
        let held = self.allocations_per_user.get(user).copied().unwrap_or(0);
        if held + places > quotas.allocations_per_user {
            return Err(Refusal::UserAllocationQuota);
        }
        Ok(())
    }

    /// Takes `places` places of `user` in the budgets shared with sibling servers: all of them,
    /// or none.
    fn take_shared_places(&self, user: &str, places: usize) -> Result<(), Refusal> {
        for taken in 0..places {
            let refusal = if let Some(users) = &self.config.shared_user_budget
                && !users.try_take(user)
            {
                Some(Refusal::UserAllocationQuota)
            } else if let Some(budget) = &self.config.shared_budget
                && !budget.try_take()
            {
                if let Some(users) = &self.config.shared_user_budget {
                    users.give_back(user);
                }
                Some(Refusal::AllocationQuota)
            } else {
                None
            };
            if let Some(refusal) = refusal {
                for _ in 0..taken {
                    if let Some(users) = &self.config.shared_user_budget {
                        users.give_back(user);
                    }
                    if let Some(budget) = &self.config.shared_budget {
                        budget.give_back();
                    }
                }
                return Err(refusal);
            }
        }
        Ok(())
    }

    /// Makes the allocation of `from` on `port`, whose place in the quotas the caller has
    /// counted, and returns the attributes of its success response.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call for the two ways an allocation is made"
    )]
    fn install_allocation(
        &mut self,
        now: Instant,
        from: FiveTuple,
        transaction_id: TransactionId,
        authenticated: &Authenticated,
        port: u16,
        families: &[AddressFamily],
        lifetime: Duration,
        address_error: Option<(AddressFamily, bool)>,
    ) -> Vec<Attribute<'static>> {
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
        for &family in families {
            *allocation.expiry_mut(family) = Some(expires_at);
            self.timers
                .schedule(expires_at, Timer::Allocation { id, family });
            self.commands
                .push_back(Command::OpenRelaySocket(allocation.relay_socket(family)));
        }
        let attributes = self.allocation_success(now, &allocation, address_error);
        self.by_five_tuple.insert(from, id);
        self.by_port.insert(port, id);
        self.allocations.insert(id, allocation);
        attributes
    }

    /// Reserves `port` (taken from the pool already) for `reservation` seconds and returns its
    /// token: 8 bytes from the server's RNG, never zero, never one in use.
    fn reserve(
        &mut self,
        now: Instant,
        port: u16,
        family: AddressFamily,
        username: &str,
    ) -> [u8; 8] {
        let mut token = [0; 8];
        while token == [0; 8] || self.reservations.contains_key(&token) {
            self.rng.fill_bytes(&mut token);
        }
        let expires_at = later(now, self.config.lifetimes.reservation);
        self.reservations.insert(
            token,
            Reservation {
                port,
                family,
                username: username.into(),
                expires_at,
            },
        );
        *self
            .allocations_per_user
            .entry(username.into())
            .or_default() += 1;
        self.timers
            .schedule(expires_at, Timer::Reservation { token });
        token
    }

    /// The families to allocate and, for a dual allocation that gets only one, the family that
    /// failed (RFC 8656 §7.2, RFC 6156 §4).
    fn allocation_families(
        &self,
        request: &AllocateRequest,
    ) -> Result<(Vec<AddressFamily>, Option<AddressFamily>), Refusal> {
        let offered = |family| match family {
            AddressFamily::V4 => self.config.relay_ipv4.is_some(),
            AddressFamily::V6 => self.config.relay_ipv6.is_some(),
        };
        match (request.requested_family, request.additional_family) {
            (Some(_), Some(_)) | (None, Some(AddressFamily::V4)) => {
                Err(Refusal::ConflictingAttributes)
            }
            (None, Some(AddressFamily::V6)) => {
                match (offered(AddressFamily::V4), offered(AddressFamily::V6)) {
                    (true, true) => Ok((vec![AddressFamily::V4, AddressFamily::V6], None)),
                    (true, false) => Ok((vec![AddressFamily::V4], Some(AddressFamily::V6))),
                    (false, true) => Ok((vec![AddressFamily::V6], Some(AddressFamily::V4))),
                    (false, false) => Err(Refusal::AddressFamilyNotSupported),
                }
            }
            (requested, None) => {
                let family = requested.unwrap_or(AddressFamily::V4);
                if offered(family) {
                    Ok((vec![family], None))
                } else {
                    Err(Refusal::AddressFamilyNotSupported)
                }
            }
        }
    }

    /// The success response's attributes. `address_error` is the family a dual allocation did
    /// not get, and whether the client asked with the draft code point (its ADDRESS-ERROR-CODE
    /// then goes at the draft's code point too).
    fn allocation_success(
        &self,
        now: Instant,
        allocation: &Allocation,
        address_error: Option<(AddressFamily, bool)>,
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
        match address_error {
            Some((family, false)) => attributes.push(Attribute::AddressErrorCode {
                family,
                code: ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED,
                reason: ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED.default_reason(),
            }),
            Some((family, true)) => {
                let value: &'static [u8] = match family {
                    AddressFamily::V4 => &DRAFT_ADDRESS_ERROR_V4,
                    AddressFamily::V6 => &DRAFT_ADDRESS_ERROR_V6,
                };
                attributes.push(Attribute::Unknown(RawAttribute::new(
                    ADDRESS_ERROR_CODE_DRAFT,
                    value,
                )));
            }
            None => {}
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
            Err(refusal) => return refusal.into(),
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
                    return Refusal::PeerAddressFamilyMismatch.into();
                }
                Err(_) => return Refusal::MalformedAttribute.into(),
            }
        }
        let Some(allocation) = self.allocations.get(&id) else {
            return Refusal::NoAllocation.into();
        };
        let families: Vec<AddressFamily> = match family {
            Some(family) if !allocation.has_family(family) => {
                return Refusal::PeerAddressFamilyMismatch.into();
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
            return Refusal::NoAllocation.into();
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
    fn check_peer(&self, id: AllocationId, peer: IpAddr) -> Result<(), Refusal> {
        let allocation = self.allocations.get(&id).ok_or(Refusal::NoAllocation)?;
        if !allocation.has_family(AddressFamily::of(peer)) {
            tracing::debug!(peer_family = ?AddressFamily::of(peer), "no relayed address of the peer's family");
            return Err(Refusal::PeerAddressFamilyMismatch);
        }
        // The relay's own relayed addresses are served as a hairpin inside the relay, whatever
        // range they are in; everything else goes through the operator's policy. The addresses
        // in the config count without the operator listing them in the policy again.
        if self.is_relay_ip(peer) || self.config.policy.is_relay_own_address(peer) {
            return Ok(());
        }
        if self.is_other_host_address(peer) && !self.config.policy.is_explicitly_allowed(peer) {
            tracing::debug!("peer refused: an address of this host");
            return Err(Refusal::PeerForbidden);
        }
        self.config.policy.check(peer).map_err(|denied| {
            tracing::debug!(reason = %denied, "peer refused by policy");
            Refusal::PeerForbidden
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
            Err(refusal) => return refusal.into(),
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
                Err(_) => return Refusal::MalformedAttribute.into(),
            }
        }
        if peers.is_empty() {
            return Refusal::MissingAttribute.into();
        }
        // All or nothing (RFC 8656 §10.2): check every peer before installing any.
        for peer in &peers {
            if let Err(refusal) = self.check_peer(id, *peer) {
                return refusal.into();
            }
        }
        let Some(allocation) = self.allocations.get(&id) else {
            return Refusal::NoAllocation.into();
        };
        let new = peers
            .iter()
            .filter(|peer| !allocation.permissions.contains_key(peer))
            .count();
        if allocation.permissions.len() + new > self.config.quotas.permissions_per_allocation {
            // A per-client quota, like the allocation quotas (see `Quotas`).
            return Refusal::PermissionQuota.into();
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
            Err(refusal) => return refusal.into(),
        };
        let transaction_id = message.transaction_id();
        let mut number = None;
        let mut peer = None;
        for raw in first_occurrences(message) {
            match Attribute::decode(raw, &transaction_id) {
                Ok(Attribute::ChannelNumber(value)) => number = Some(value),
                Ok(Attribute::XorPeerAddress(address)) => peer = Some(address),
                Ok(_) => {}
                Err(_) => return Refusal::MalformedAttribute.into(),
            }
        }
        let (Some(number), Some(peer)) = (number, peer) else {
            return Refusal::MissingAttribute.into();
        };
        let range = self.channel_range();
        let Some(number) = ChannelNumber::new_in(number, range) else {
            // RFC 5766 allowed up to 0x7FFF; RFC 8656 keeps 0x5000-0x7FFF for other protocols
            // sharing the port (RFC 7983), so older clients land here unless the operator
            // turned `rfc5766_channel_numbers` on.
            tracing::debug!(
                channel = number,
                max = range.max(),
                "channel number out of range"
            );
            return Refusal::BadChannelNumber.into();
        };
        if let Err(refusal) = self.check_peer(id, peer.ip()) {
            return refusal.into();
        }
        let Some(allocation) = self.allocations.get(&id) else {
            return Refusal::NoAllocation.into();
        };
        // A number stays tied to its peer, and a peer to its number, through the binding and
        // its cool-down (RFC 8656 §12).
        let bound_peer = allocation.channels.get(&number).map(|channel| channel.peer);
        let bound_number = allocation.channel_by_peer.get(&peer).copied();
        if bound_peer.is_some_and(|bound| bound != peer)
            || bound_number.is_some_and(|bound| bound != number)
        {
            return Refusal::ChannelInUse.into();
        }
        // RFC 8656 §12.2: a capacity limit on a valid request is 508, as for CreatePermission.
        let quotas = self.config.quotas;
        if bound_peer.is_none() && allocation.channels.len() >= quotas.channels_per_allocation {
            return Refusal::ChannelQuota.into();
        }
        if !allocation.permissions.contains_key(&peer.ip())
            && allocation.permissions.len() >= quotas.permissions_per_allocation
        {
            return Refusal::PermissionQuota.into();
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

/// ADDITIONAL-ADDRESS-FAMILY at the code point of the drafts before RFC 8656
/// (draft-ietf-tram-turnbis), which coturn's clients still send (`turnutils_uclient -Z`). Taken
/// as an alias of 0x8000, a compatibility choice: the code point is comprehension-optional and
/// was never assigned to anything else, so a client using it can only mean a dual allocation.
const ADDITIONAL_ADDRESS_FAMILY_DRAFT: AttributeType = AttributeType(0x8032);

/// ADDRESS-ERROR-CODE at the drafts' code point: the answer to a client that asked with
/// [`ADDITIONAL_ADDRESS_FAMILY_DRAFT`], which looks for it there.
const ADDRESS_ERROR_CODE_DRAFT: AttributeType = AttributeType(0x8033);

const ADDRESS_ERROR_REASON: &str = ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED.default_reason();

/// The value of ADDRESS-ERROR-CODE (RFC 8656 §18.13) for 440 and `family`, with its reason
/// phrase, as the encoder writes it at 0x8001.
const fn draft_address_error(family: AddressFamily) -> [u8; 4 + ADDRESS_ERROR_REASON.len()] {
    let mut value = [0; 4 + ADDRESS_ERROR_REASON.len()];
    value[0] = family.to_u8();
    value[2] = 4;
    value[3] = 40;
    let reason = ADDRESS_ERROR_REASON.as_bytes();
    let mut index = 0;
    while index < reason.len() {
        value[4 + index] = reason[index];
        index += 1;
    }
    value
}

static DRAFT_ADDRESS_ERROR_V4: [u8; 4 + ADDRESS_ERROR_REASON.len()] =
    draft_address_error(AddressFamily::V4);
static DRAFT_ADDRESS_ERROR_V6: [u8; 4 + ADDRESS_ERROR_REASON.len()] =
    draft_address_error(AddressFamily::V6);

/// What an Allocate request asks for.
#[derive(Debug, Default)]
struct AllocateRequest {
    lifetime: Option<u32>,
    requested_family: Option<AddressFamily>,
    additional_family: Option<AddressFamily>,
    /// ADDITIONAL-ADDRESS-FAMILY came at the drafts' code point.
    draft_code_points: bool,
    even_port: bool,
    reserve_next_port: bool,
    reservation_token: Option<[u8; 8]>,
}

impl AllocateRequest {
    fn parse(message: &Message<'_>) -> Result<Self, Refusal> {
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
                    request.additional_family = Some(family);
                    request.draft_code_points = false;
                }
                Ok(Attribute::EvenPort { reserve_next }) => {
                    request.even_port = true;
                    request.reserve_next_port = reserve_next;
                }
                Ok(Attribute::ReservationToken(token)) => request.reservation_token = Some(token),
                Ok(Attribute::Unknown(raw))
                    if raw.kind() == ADDITIONAL_ADDRESS_FAMILY_DRAFT
                        && request.additional_family.is_none() =>
                {
                    let standard =
                        RawAttribute::new(AttributeType::ADDITIONAL_ADDRESS_FAMILY, raw.value());
                    match Attribute::decode(standard, &transaction_id) {
                        Ok(Attribute::AdditionalAddressFamily(family)) => {
                            request.additional_family = Some(family);
                            request.draft_code_points = true;
                        }
                        Err(AttributeError::UnknownAddressFamily) => {
                            return Err(Refusal::AddressFamilyNotSupported);
                        }
                        _ => return Err(Refusal::MalformedAttribute),
                    }
                }
                Ok(_) => {}
                Err(AttributeError::UnknownAddressFamily)
                    if raw.kind() == AttributeType::REQUESTED_ADDRESS_FAMILY
                        || raw.kind() == AttributeType::ADDITIONAL_ADDRESS_FAMILY =>
                {
                    return Err(Refusal::AddressFamilyNotSupported);
                }
                Err(_) => return Err(Refusal::MalformedAttribute),
            }
        }
        match transport {
            None => return Err(Refusal::MissingTransport),
            Some(UDP) => {}
            Some(_) => return Err(Refusal::UnsupportedTransport),
        }
        // RFC 8656 §7.2: a reservation token excludes EVEN-PORT and both address family
        // attributes.
        if request.reservation_token.is_some()
            && (request.even_port
                || request.requested_family.is_some()
                || request.additional_family.is_some())
        {
            return Err(Refusal::ConflictingAttributes);
        }
        Ok(request)
    }
}

fn seconds(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}
