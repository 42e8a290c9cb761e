//! Everything an operator can tune in the core, with the RFC defaults.

use core::net::{Ipv4Addr, Ipv6Addr};
use core::ops::RangeInclusive;
use core::time::Duration;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::auth::credentials::CredentialStore;
use crate::policy::PeerPolicy;

/// Configuration of a [`crate::Server`].
#[derive(Debug, Clone)]
pub struct Config {
    /// The IPv4 address relayed addresses are advertised with; `None` offers no IPv4 relaying.
    pub relay_ipv4: Option<Ipv4Addr>,
    /// The IPv6 address relayed addresses are advertised with; `None` offers no IPv6 relaying.
    pub relay_ipv6: Option<Ipv6Addr>,
    /// Ports relayed addresses are drawn from, at random.
    pub relay_ports: RangeInclusive<u16>,
    /// The part of `relay_ports` this server hands out, when several servers (one per thread)
    /// share the relay's range; `None` hands out all of it. Relayed addresses outside this part
    /// but inside `relay_ports` belong to a sibling server: data to them is sent through the
    /// kernel instead of being hairpinned here.
    pub shard_ports: Option<RangeInclusive<u16>>,
    pub lifetimes: Lifetimes,
    pub quotas: Quotas,
    pub credentials: CredentialStore,
    pub policy: PeerPolicy,
    /// Offer SHA-256 password algorithms (RFC 8489 PASSWORD-ALGORITHMS) next to MD5.
    pub offer_sha256: bool,
    /// Put SOFTWARE in responses to authenticated requests (never in Binding responses or
    /// challenges: those reach unauthenticated senders, and every byte amplifies).
    pub software: Option<String>,
    /// Unauthenticated responses (Binding, 401, 438, 400) allowed per source, per second, with
    /// the burst allowed on top; these cap what a spoofed flood can reflect at one victim.
    pub unauthenticated_rate: RateLimit,
    /// A total of allocations shared with sibling servers (one per thread), checked on top of
    /// `quotas.allocations_total`, so that an operator's limit holds for the whole relay however
    /// unevenly clients spread over the threads.
    pub shared_budget: Option<Arc<AllocationBudget>>,
    /// Allocations per username shared with sibling servers, checked on top of
    /// `quotas.allocations_per_user`, so that the per-user quota holds for the whole relay and
    /// does not multiply with the thread count.
    pub shared_user_budget: Option<Arc<UserBudget>>,
    /// Other relays to send clients to, in turn, when this one is draining or full (300 with
    /// ALTERNATE-SERVER instead of 508 or 486); empty for none.
    pub alternate_servers: Vec<core::net::SocketAddr>,
    /// Nonce keys shared by a fleet: the first signs new nonces, all of them verify (rotation:
    /// put the new key first and keep the old one for a nonce lifetime). Empty: each server
    /// draws its own from its RNG, and a client moved to another relay gets one 438 there.
    pub nonce_keys: Vec<[u8; 32]>,
    /// Accept channel numbers 0x4000-0x7FFF, as RFC 5766 did, instead of RFC 8656's
    /// 0x4000-0x4FFF (coturn's `--rfc5766-channel-numbers`): for older clients, coturn's
    /// `turnutils_uclient` among them, that number channels anywhere in the old range. RFC 8656
    /// gave 0x5000-0x7FFF back to the protocols that share a port with TURN (RFC 7983), so turn
    /// this on only where nothing else is multiplexed on the relay's port.
    pub rfc5766_channel_numbers: bool,
}

/// Allocations per username, counted over several servers.
///
/// Taken and given back only when an allocation is made or freed, never per packet; a mutex
/// over a map is cheaper than it sounds at that rate, and exact.
#[derive(Debug)]
pub struct UserBudget {
    limit: AtomicUsize,
    per_user: std::sync::Mutex<std::collections::HashMap<Box<str>, usize>>,
}

impl UserBudget {
    #[must_use]
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: AtomicUsize::new(limit),
            per_user: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// A new per-user limit (a reload); as for [`AllocationBudget::set_limit`], nothing is cut.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Box<str>, usize>> {
        self.per_user
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes one allocation of `user`, unless the user holds the limit already.
    pub(crate) fn try_take(&self, user: &str) -> bool {
        let limit = self.limit.load(Ordering::Acquire);
        let mut per_user = self.lock();
        if let Some(count) = per_user.get_mut(user) {
            if *count >= limit {
                return false;
            }
            *count += 1;
        } else if limit > 0 {
            per_user.insert(user.into(), 1);
        } else {
            return false;
        }
        true
    }

    /// Returns one allocation of `user` taken with `try_take`.
    pub(crate) fn give_back(&self, user: &str) {
        let mut per_user = self.lock();
        if let Some(count) = per_user.get_mut(user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_user.remove(user);
                if per_user.capacity() > 64 && per_user.len() * 4 < per_user.capacity() {
                    per_user.shrink_to_fit();
                }
            }
        }
    }

    /// Allocations `user` holds now, over all servers.
    #[must_use]
    pub fn held_by(&self, user: &str) -> usize {
        self.lock().get(user).copied().unwrap_or(0)
    }
}

/// A number of allocations several servers draw from.
///
/// The one piece of state servers share; an atomic counter, so no server ever waits on another.
#[derive(Debug)]
pub struct AllocationBudget {
    limit: AtomicUsize,
    used: AtomicUsize,
}

impl AllocationBudget {
    #[must_use]
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
        })
    }

    /// A new limit (a reload): a lower one refuses new allocations until enough have ended,
    /// and cuts none.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Release);
    }

    /// Takes one allocation from the budget, unless it is spent.
    pub(crate) fn try_take(&self) -> bool {
        let limit = self.limit.load(Ordering::Acquire);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < limit).then_some(used + 1)
            })
            .is_ok()
    }

    /// Returns one allocation taken with `try_take`.
    pub(crate) fn give_back(&self) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_sub(1)
            });
    }

    /// Allocations taken now, over all servers.
    #[must_use]
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// How many unauthenticated responses a source (an IPv4 address or an IPv6 /64) may draw.
///
/// The default, 100 a second with bursts of 200, lets a NAT with hundreds of users start calls
/// at once while capping what a spoofed flood reflects at one victim to some 10 kB/s per relay
/// thread. `per_second` 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl RateLimit {
    pub const UNLIMITED: Self = Self {
        per_second: 0,
        burst: 0,
    };

    /// `per_second` with a burst of twice that.
    #[must_use]
    pub const fn per_second(per_second: u32) -> Self {
        Self {
            per_second,
            burst: per_second.saturating_mul(2),
        }
    }
}

/// Lifetimes of the things a client creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// Allocation lifetime when the client asks for none or for less (RFC 8656 §7.2: 600 s).
    pub allocation_default: Duration,
    /// Longest allocation lifetime granted (RFC 8656 recommends 3600 s).
    pub allocation_max: Duration,
    /// Permission lifetime (RFC 8656 §9: 300 s, not negotiable).
    pub permission: Duration,
    /// Channel binding lifetime (RFC 8656 §12: 600 s).
    pub channel: Duration,
    /// After a channel expires its number and peer stay reserved this long (RFC 8656 §12: 5 min).
    pub channel_cooldown: Duration,
    /// How long a nonce stays valid; long enough that busy clients are not churned.
    pub nonce: Duration,
    /// How long a response is kept to answer a retransmitted request (RFC 8489 §6.3.1: 40 s).
    pub transaction: Duration,
    /// How long the port after an EVEN-PORT allocation's stays reserved for the Allocate that
    /// presents its RESERVATION-TOKEN (RFC 8656 §7.2: about 30 s).
    pub reservation: Duration,
    /// The furthest ahead an ephemeral (REST API or Firezone) username's expiry may lie; a
    /// username that expires later is refused with 401, as if its password were wrong. 48 hours
    /// by default, Cloudflare's cap on TURN credentials: long enough for any call, short enough
    /// that a leaked username is not a standing key. Static users are not affected.
    pub credential_max: Duration,
}

impl Lifetimes {
    /// The longest any lifetime may be: 7 days. Far beyond what TURN uses (RFC 8656 recommends
    /// at most an hour for allocations), and far enough from the end of `Instant`'s range that
    /// `now + lifetime` cannot overflow. [`Config::validate`] refuses longer lifetimes;
    /// [`crate::Server::new`] clamps them to this, so a server never panics whatever it is given.
    pub const CEILING: Duration = Duration::from_secs(7 * 24 * 3600);

    /// Every lifetime at most [`Lifetimes::CEILING`].
    pub(crate) fn clamped(self) -> Self {
        let clamp = |duration: Duration| duration.min(Self::CEILING);
        Self {
            allocation_default: clamp(self.allocation_default),
            allocation_max: clamp(self.allocation_max),
            permission: clamp(self.permission),
            channel: clamp(self.channel),
            channel_cooldown: clamp(self.channel_cooldown),
            nonce: clamp(self.nonce),
            transaction: clamp(self.transaction),
            reservation: clamp(self.reservation),
            credential_max: clamp(self.credential_max),
        }
    }

    /// Each lifetime with the name of its setting, for validation messages.
    fn named(&self) -> [(&'static str, Duration); 9] {
        [
            ("lifetimes.allocation_default", self.allocation_default),
            ("lifetimes.allocation_max", self.allocation_max),
            ("lifetimes.permission", self.permission),
            ("lifetimes.channel", self.channel),
            ("lifetimes.channel_cooldown", self.channel_cooldown),
            ("lifetimes.nonce", self.nonce),
            ("lifetimes.transaction", self.transaction),
            ("lifetimes.reservation", self.reservation),
            ("lifetimes.credential_max", self.credential_max),
        ]
    }
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            allocation_default: Duration::from_secs(600),
            allocation_max: Duration::from_secs(3600),
            permission: Duration::from_secs(300),
            channel: Duration::from_secs(600),
            channel_cooldown: Duration::from_secs(300),
            nonce: Duration::from_secs(600),
            transaction: Duration::from_secs(40),
            reservation: Duration::from_secs(30),
            credential_max: Duration::from_secs(48 * 3600),
        }
    }
}

/// Limits that keep one user or one allocation from exhausting the relay. Exceeding an
/// limit is answered with 486 (Allocation Quota Reached): they are the operator's limits on what
/// one client may hold, which a client can act on by releasing something, unlike 508
/// (Insufficient Capacity), which RFC 8656 keeps for the relay running out of resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    pub allocations_total: usize,
    pub allocations_per_user: usize,
    pub permissions_per_allocation: usize,
    pub channels_per_allocation: usize,
    /// Responses kept for retransmissions at once; the oldest are dropped beyond this.
    pub cached_transactions: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            allocations_total: 16_384,
            allocations_per_user: 64,
            permissions_per_allocation: 64,
            channels_per_allocation: 64,
            cached_transactions: 65_536,
        }
    }
}

/// A setting [`Config::validate`] refuses, and why.
///
/// `setting` is the field's path in [`Config`] (`lifetimes.allocation_max`, say), so a driver
/// can name its own flag for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {problem}")]
#[non_exhaustive]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

impl ConfigError {
    fn new(setting: &'static str, problem: impl Into<String>) -> Self {
        Self {
            setting,
            problem: problem.into(),
        }
    }
}

/// The longest REALM and SOFTWARE values (RFC 8489 §14.9, §14.14: fewer than 128 characters,
/// at most 763 bytes); a longer one could not be encoded, and every response carrying it would
/// fail.
const MAX_TEXT_LEN: usize = 763;

impl Config {
    /// Checks the settings a server cannot work with, naming the first one refused.
    ///
    /// The bounds, for a driver that wants to check its flags itself:
    ///
    /// - every lifetime at most [`Lifetimes::CEILING`] (7 days);
    /// - `allocation_default`, `allocation_max`, `permission`, `channel`, `nonce` and
    ///   `credential_max` at least one second, and `allocation_default <= allocation_max`;
    /// - `relay_ports` not empty, `shard_ports` (if set) not empty and inside `relay_ports`;
    /// - the realm and `software` at most 763 bytes, the realm not empty.
    ///
    /// Rates and quotas take any value: the limiter's arithmetic saturates.
    ///
    /// A server built from a configuration that fails this check still works: lifetimes are
    /// clamped to the ceiling. The check is for refusing a mistake at start, with a message.
    ///
    /// # Errors
    ///
    /// The first setting out of bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let lifetimes = &self.lifetimes;
        for (setting, duration) in lifetimes.named() {
            if duration > Lifetimes::CEILING {
                return Err(ConfigError::new(
                    setting,
                    format!(
                        "{} s is longer than the maximum of {} s",
                        duration.as_secs(),
                        Lifetimes::CEILING.as_secs()
                    ),
                ));
            }
        }
        for (setting, duration) in [
            ("lifetimes.allocation_default", lifetimes.allocation_default),
            ("lifetimes.allocation_max", lifetimes.allocation_max),
            ("lifetimes.permission", lifetimes.permission),
            ("lifetimes.channel", lifetimes.channel),
            ("lifetimes.nonce", lifetimes.nonce),
            ("lifetimes.credential_max", lifetimes.credential_max),
        ] {
            if duration < Duration::from_secs(1) {
                return Err(ConfigError::new(setting, "must be at least 1 s"));
            }
        }
        if lifetimes.allocation_default > lifetimes.allocation_max {
            return Err(ConfigError::new(
                "lifetimes.allocation_default",
                "must be at most lifetimes.allocation_max",
            ));
        }
        if self.relay_ports.is_empty() {
            return Err(ConfigError::new("relay_ports", "the range is empty"));
        }
        if let Some(shard) = &self.shard_ports
            && (shard.is_empty()
                || !self.relay_ports.contains(shard.start())
                || !self.relay_ports.contains(shard.end()))
        {
            return Err(ConfigError::new(
                "shard_ports",
                "must be a non-empty part of relay_ports",
            ));
        }
        let realm = self.credentials.realm();
        if realm.is_empty() || realm.len() > MAX_TEXT_LEN {
            return Err(ConfigError::new(
                "credentials.realm",
                "must be 1 to 763 bytes long",
            ));
        }
        if self
            .software
            .as_ref()
            .is_some_and(|software| software.len() > MAX_TEXT_LEN)
        {
            return Err(ConfigError::new(
                "software",
                "must be at most 763 bytes long",
            ));
        }
        Ok(())
    }

    /// The channel numbers clients may use: RFC 5766's with `rfc5766_channel_numbers`, RFC
    /// 8656's otherwise. A driver that frames streams itself gives its decoders this range
    /// (`turnpike_proto::StreamDecoder::with_channel_range`), so that a ChannelData frame the
    /// core would take does not end the connection first.
    #[must_use]
    pub const fn channel_range(&self) -> turnpike_proto::ChannelRange {
        if self.rfc5766_channel_numbers {
            turnpike_proto::ChannelRange::Rfc5766
        } else {
            turnpike_proto::ChannelRange::Rfc8656
        }
    }

    /// A configuration with RFC defaults for the given credentials (which carry the realm) and
    /// peer policy; no relayed address family is offered until one is set.
    #[must_use]
    pub fn new(credentials: CredentialStore, policy: PeerPolicy) -> Self {
        Self {
            relay_ipv4: None,
            relay_ipv6: None,
            relay_ports: 49152..=65535,
            shard_ports: None,
            lifetimes: Lifetimes::default(),
            quotas: Quotas::default(),
            credentials,
            policy,
            offer_sha256: true,
            software: None,
            unauthenticated_rate: RateLimit::per_second(100),
            shared_budget: None,
            shared_user_budget: None,
            alternate_servers: Vec::new(),
            nonce_keys: Vec::new(),
            rfc5766_channel_numbers: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::new(CredentialStore::new("example.org"), PeerPolicy::new())
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(config().validate(), Ok(()));
    }

    /// A change that puts one setting out of bounds.
    type Breakage = fn(&mut Config);

    #[test]
    fn each_setting_out_of_bounds_is_refused_by_name() {
        let year = Duration::from_secs(365 * 24 * 3600);
        let table: [(&str, Breakage); 9] = [
            ("lifetimes.allocation_max", |c| {
                c.lifetimes.allocation_max = Duration::from_secs(u64::MAX)
            }),
            ("lifetimes.permission", |c| {
                c.lifetimes.permission = Duration::ZERO
            }),
            ("lifetimes.allocation_default", |c| {
                c.lifetimes.allocation_default = c.lifetimes.allocation_max + Duration::from_secs(1)
            }),
            ("lifetimes.channel_cooldown", |c| {
                c.lifetimes.channel_cooldown = Duration::MAX
            }),
            ("lifetimes.credential_max", |c| {
                c.lifetimes.credential_max = Duration::ZERO
            }),
            ("relay_ports", |c| c.relay_ports = RangeInclusive::new(2, 1)),
            ("shard_ports", |c| c.shard_ports = Some(1000..=2000)),
            ("credentials.realm", |c| {
                c.credentials = CredentialStore::new("")
            }),
            ("software", |c| c.software = Some("x".repeat(764))),
        ];
        for (setting, change) in table {
            let mut config = config();
            change(&mut config);
            let error = config.validate().unwrap_err();
            assert_eq!(error.setting, setting);
            assert!(error.to_string().starts_with(setting), "{error}");
        }
        let mut config = config();
        config.lifetimes.nonce = year;
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "lifetimes.nonce: 31536000 s is longer than the maximum of 604800 s"
        );
    }

    #[test]
    fn clamping_brings_every_lifetime_under_the_ceiling() {
        let huge = Lifetimes {
            allocation_default: Duration::MAX,
            allocation_max: Duration::MAX,
            permission: Duration::MAX,
            channel: Duration::MAX,
            channel_cooldown: Duration::MAX,
            nonce: Duration::MAX,
            transaction: Duration::MAX,
            reservation: Duration::MAX,
            credential_max: Duration::MAX,
        };
        let mut config = config();
        config.lifetimes = huge.clamped();
        assert_eq!(config.validate(), Ok(()));
    }
}
