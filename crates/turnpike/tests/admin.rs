//! The admin endpoint and the drain on SIGTERM, against a real `turnpike` process.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail by panicking"
)]

mod common;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::Relay;
use turnpike_load::run::CHANNEL;

#[test]
fn health_readiness_and_metrics_are_served() {
    let relay = Relay::start(&[]);
    assert!(relay.get("/healthz").unwrap().starts_with("HTTP/1.1 200"));
    assert!(relay.get("/readyz").unwrap().starts_with("HTTP/1.1 200"));
    let metrics = relay.get("/metrics").unwrap();
    assert!(
        metrics.contains("content-type: text/plain; version=0.0.4"),
        "{metrics}"
    );
    for family in [
        "turnpike_allocations",
        "turnpike_permissions",
        "turnpike_channels",
        "turnpike_responses_total",
        "turnpike_auth_failures_total",
        "turnpike_relayed_packets_total",
        "turnpike_relayed_bytes_total",
        "turnpike_dropped_packets_total",
        "turnpike_socket_errors_total",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {family} ")),
            "{family} missing"
        );
    }
    assert!(
        !metrics.contains("interop"),
        "no username may appear in a label"
    );
}

#[test]
fn the_log_level_changes_at_run_time_and_bad_filters_are_refused() {
    let relay = Relay::start(&[]);
    let response = relay.post("/log-level", "turnpike=debug,info").unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let response = relay.post("/log-level", "turnpike=loud").unwrap();
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
}

#[test]
fn sigterm_refuses_new_allocations_keeps_relaying_then_exits_cleanly() {
    let mut relay = Relay::start(&["--drain-seconds=3", "--unauthenticated-rate=0"]);
    let server: SocketAddr = relay.server("127.0.0.1").parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let peer = common::echo_peer(&stop);
    let allocate = |user: &str| common::allocate(server, peer, user);
    let existing = allocate("before").unwrap();

    let pid = i32::try_from(relay.pid()).unwrap();
    // SAFETY: kill(2) on the relay this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    // Draining starts when the signal is handled: not ready from then on.
    relay.until(
        Duration::from_secs(2),
        "not ready while draining",
        |relay| {
            relay
                .get("/readyz")
                .is_some_and(|response| response.starts_with("HTTP/1.1 503"))
        },
    );
    let refused = allocate("after").unwrap_err();
    assert!(format!("{refused:#}").contains("508"), "{refused:#}");
    // The existing allocation still relays.
    let mut message = CHANNEL.to_be_bytes().to_vec();
    message.extend_from_slice(&4_u16.to_be_bytes());
    message.extend_from_slice(b"ping");
    existing.socket.send_to(&message, server).unwrap();
    assert!(
        turnpike_io::wait_readable(existing.socket.as_raw_fd(), Duration::from_secs(2)).unwrap()
    );
    let mut buf = [0; 64];
    let (len, _) = existing.socket.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..len], &message[..]);

    let status = relay
        .wait_exit(Duration::from_secs(6))
        .expect("exits after the drain period");
    assert!(status.success(), "{status:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}

#[test]
#[should_panic(expected = "no series turnpike_allocations{no_such_label=\"x\"} on /metrics")]
fn a_series_that_does_not_exist_fails_the_test_instead_of_reading_0() {
    let relay = Relay::start(&[]);
    let _ = relay.metric("turnpike_allocations{no_such_label=\"x\"}");
}

#[test]
#[should_panic(expected = "stayed at 0")]
fn a_value_that_never_comes_fails_the_test_after_the_deadline() {
    let relay = Relay::start(&[]);
    let _ = relay.metric_until("turnpike_allocations", |count| count > 0);
}
