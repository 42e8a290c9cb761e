//! The load generator as a long-running client: it keeps its allocations, permissions and
//! channels alive past their lifetimes and nonces, as real clients do, so a run can last as long
//! as an operator wants (a soak, a capacity test); and without refreshes they expire, which is
//! how the expiry tests use it.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail by panicking"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use common::Relay;
use turnpike_load::run::{self, Load, Measured, Progress};

const ALLOCATIONS: u32 = 2;
/// Datagrams per second over all allocations: a few hundred are plenty to see a lapse.
const RATE: u64 = 400;

/// Lifetimes of 4 s and nonces of 2 s: a run of `seconds` outlives several of each.
fn run_load(refresh: bool, seconds: u64) -> (Relay, Measured) {
    let relay = Relay::start(&[
        "--default-lifetime=4",
        "--max-lifetime=4",
        "--nonce-lifetime=2",
    ]);
    let server = relay.server("127.0.0.1").parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let peer = common::echo_peer(&stop);
    let allocations = (0..ALLOCATIONS)
        .map(|index| {
            let allocation = common::allocate(server, peer, &format!("long{index}")).unwrap();
            (index, allocation)
        })
        .collect();
    let load = Load {
        payload: 100,
        window: 2,
        rate: RATE,
        duration: Duration::from_secs(seconds),
        refresh,
    };
    let (measured, _allocations) = run::drive(
        allocations,
        load,
        load.rate,
        Instant::now(),
        &Progress::default(),
        &stop,
    )
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    (relay, measured)
}

#[test]
fn a_run_outlives_lifetimes_and_nonces_by_refreshing() {
    let (relay, measured) = run_load(true, 9);
    // Every 2 s (half the granted 4 s) a Refresh and a ChannelBind per allocation, some of them
    // signed again after a 438 Stale Nonce: four rounds in 9 s.
    assert_eq!(measured.refresh_failures, 0);
    assert!(
        measured.refreshes >= 4 * 2 * u64::from(ALLOCATIONS),
        "{} refreshes",
        measured.refreshes
    );
    assert!(
        relay.metric("turnpike_responses_total{method=\"refresh\",code=\"438\"}") >= 1,
        "a nonce went stale during the run"
    );
    // All but the last half second's worth of the rate.
    assert!(measured.received >= RATE * 17 / 2, "{measured:?}");
    assert!(
        measured.sent - measured.received <= measured.sent / 100,
        "no lapse: {} of {} round trips completed",
        measured.received,
        measured.sent
    );
    assert_eq!(measured.malformed, 0);
    // Both allocations carried their share (the rate's tokens go round the allocations).
    for (index, completed) in &measured.per_allocation {
        assert!(
            completed * 5 >= measured.received * 2,
            "allocation {index}: {completed} of {} round trips",
            measured.received
        );
    }
    assert_eq!(relay.metric("turnpike_allocations"), u64::from(ALLOCATIONS));
}

#[test]
fn without_refreshes_the_allocations_expire_under_the_load() {
    let (relay, measured) = run_load(false, 7);
    assert_eq!(measured.refreshes, 0);
    // After 4 s the relay drops what arrives (and the load, seeing no answers, sends little):
    // no more than 5 of the 7 seconds' worth of round trips complete.
    assert!(
        measured.received <= RATE * 5,
        "{} of {} round trips completed",
        measured.received,
        measured.sent
    );
    relay.metric_until("turnpike_allocations", |count| count == 0);
}
