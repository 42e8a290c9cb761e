//! A fixed-size token-bucket table limiting unauthenticated responses per source address.
//!
//! Binding responses and authentication challenges go to whoever the source address claims to
//! be, so a spoofed flood can aim them at a victim. The table has a fixed number of buckets,
//! indexed by a keyed hash of the source's address (/32 for IPv4, /64 for IPv6, since one IPv6
//! host controls a whole /64): a flood from any number of sources costs no memory, and two
//! sources that share a bucket merely share a budget.

use core::hash::{BuildHasher, Hash, Hasher};
use core::net::IpAddr;
use std::time::Instant;

use crate::config::RateLimit;

const BUCKETS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens times `per_second`, so refills stay in integers.
    tokens: u64,
    last_refill: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct UnauthenticatedLimiter {
    limit: RateLimit,
    hasher: foldhash::fast::FixedState,
    buckets: Box<[Bucket]>,
}

impl UnauthenticatedLimiter {
    /// `seed` keys the hash, so nobody can aim a flood of sources at one bucket.
    pub(crate) fn new(limit: RateLimit, seed: u64) -> Self {
        let full = Bucket {
            tokens: 0,
            last_refill: None,
        };
        let hasher = foldhash::fast::FixedState::with_seed(seed);
        Self {
            limit,
            hasher,
            buckets: vec![full; BUCKETS].into_boxed_slice(),
        }
    }

    /// Applies a new rate from now on; the buckets keep what they hold.
    pub(crate) fn set_limit(&mut self, limit: RateLimit) {
        self.limit = limit;
    }

    /// Whether a response to `source` may be sent now; takes a token if so.
    pub(crate) fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.limit.per_second == 0 {
            return true;
        }
        // Saturating throughout: both factors are the operator's, and an idle bucket's elapsed
        // time is unbounded; a bucket idle for days with a high rate overflowed a plain
        // product. Saturation only ever means "full", which is what a long idle earns anyway.
        let per_second = u64::from(self.limit.per_second.max(1));
        let capacity = u64::from(self.limit.burst.max(1)).saturating_mul(per_second);
        let mut hasher = self.hasher.build_hasher();
        match source {
            IpAddr::V4(ip) => ip.hash(&mut hasher),
            IpAddr::V6(ip) => ip.octets()[..8].hash(&mut hasher),
        }
        let index = usize::try_from(hasher.finish() % BUCKETS as u64).unwrap_or(0);
        let bucket = &mut self.buckets[index];
        bucket.tokens = match bucket.last_refill {
            None => capacity,
            Some(last) => {
                let elapsed = now.saturating_duration_since(last);
                let earned = u64::try_from(elapsed.as_micros())
                    .unwrap_or(u64::MAX)
                    .saturating_mul(per_second)
                    .saturating_mul(per_second)
                    / 1_000_000;
                bucket.tokens.saturating_add(earned).min(capacity)
            }
        };
        bucket.last_refill = Some(now);
        if bucket.tokens >= per_second {
            bucket.tokens -= per_second;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let mut limiter = UnauthenticatedLimiter::new(
            RateLimit {
                per_second: 10,
                burst: 5,
            },
            1,
        );
        let source: IpAddr = "203.0.113.9".parse().unwrap();
        let start = Instant::now();
        assert_eq!((0..20).filter(|_| limiter.allow(source, start)).count(), 5);
        let later = start + Duration::from_millis(500);
        assert_eq!((0..20).filter(|_| limiter.allow(source, later)).count(), 5);
    }

    #[test]
    fn a_bucket_idle_for_days_at_any_rate_refills_without_overflow() {
        let source: IpAddr = "203.0.113.9".parse().unwrap();
        let start = Instant::now();
        for per_second in [10_000, u32::MAX] {
            let mut limiter = UnauthenticatedLimiter::new(
                RateLimit {
                    per_second,
                    burst: u32::MAX,
                },
                1,
            );
            assert!(limiter.allow(source, start));
            let later = start + Duration::from_secs(3 * 24 * 3600);
            assert!(limiter.allow(source, later));
        }
    }

    #[test]
    fn a_zero_rate_means_no_limit() {
        let mut limiter = UnauthenticatedLimiter::new(RateLimit::UNLIMITED, 1);
        let now = Instant::now();
        assert!((0..10_000).all(|_| limiter.allow("203.0.113.9".parse().unwrap(), now)));
    }

    #[test]
    fn sources_in_one_ipv6_slash_64_share_a_budget() {
        let mut limiter = UnauthenticatedLimiter::new(
            RateLimit {
                per_second: 1,
                burst: 2,
            },
            1,
        );
        let now = Instant::now();
        assert!(limiter.allow("2001:db8::1".parse().unwrap(), now));
        assert!(limiter.allow("2001:db8::2".parse().unwrap(), now));
        assert!(!limiter.allow("2001:db8::3".parse().unwrap(), now));
    }
}
