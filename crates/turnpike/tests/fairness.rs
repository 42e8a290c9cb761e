//! Thousands of allocations relaying at once through one relay: every one of them is served.
//!
//! The relay reads its sockets round-robin, one batch each per round; a socket that starved
//! would show here as an allocation with (next to) no round trips while the others have many.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail by panicking"
)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use common::Relay;
use turnpike_load::run;
use turnpike_load::run::{Load, Progress};

const ALLOCATIONS: u32 = 2_000;

#[test]
fn two_thousand_allocations_relay_at_once_and_none_starves() {
    turnpike_io::raise_file_limit(u64::from(ALLOCATIONS) + 512).expect("enough file descriptors");
    // All the clients share one address: lift the per-source limit on challenges. The relay
    // steers each source address to one thread (steer.rs), so one thread serves them all, with
    // every relayed port: run that one thread only.
    let relay = Relay::start_with_ports(2_200, &["--threads=1", "--unauthenticated-rate=0"]);
    let server: SocketAddr = relay.server("127.0.0.1").parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let peer = common::echo_peer(&stop);
    let allocations: Vec<_> = (0..ALLOCATIONS)
        .map(|index| {
            let allocation = common::allocate(server, peer, &format!("fair{index}"))
                .unwrap_or_else(|error| panic!("allocation {index}: {error:#}"));
            (index, allocation)
        })
        .collect();
    relay.metric_until("turnpike_allocations", |count| {
        count == u64::from(ALLOCATIONS)
    });

    // Two datagrams in flight per allocation, for 3 seconds, as fast as the relay answers.
    let load = Load {
        payload: 100,
        window: 2,
        rate: 0,
        duration: Duration::from_secs(3),
        refresh: true,
    };
    let (measured, _allocations) = run::drive(
        allocations,
        load,
        0,
        Instant::now(),
        &Progress::default(),
        &stop,
    )
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let counts: Vec<u64> = measured
        .per_allocation
        .iter()
        .map(|(_, count)| *count)
        .collect();
    let total: u64 = counts.iter().sum();
    let mean = total / u64::from(ALLOCATIONS);
    let fewest = *counts.iter().min().unwrap();
    let most = *counts.iter().max().unwrap();
    eprintln!(
        "round trips per allocation: mean {mean}, fewest {fewest}, most {most}, total {total}"
    );
    assert!(mean >= 10, "the load ran: mean {mean}");
    assert!(
        fewest * 4 >= mean,
        "an allocation was starved: {fewest} round trips against a mean of {mean}"
    );
}
