//! Two real relays as a fleet: a full or draining Turnpike answers an Allocate with 300 Try
//! Alternate and ALTERNATE-SERVER, and a client that follows redirects (the load generator's,
//! RFC 8489 §10) lands on the other relay and relays there; `/readyz` fails as soon as the drain
//! begins while `/healthz` stays up. Every wait is bounded.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail by panicking"
)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Relay;

fn allocate(
    server: SocketAddr,
    user: &str,
    peer: SocketAddr,
) -> anyhow::Result<turnpike_load::turn_client::Allocation> {
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let (username, password) =
        turnpike_load::turn_client::rest_credentials(common::SECRET, user, expiry);
    turnpike_load::turn_client::allocate_and_bind(
        "127.0.0.1:0".parse().unwrap(),
        server,
        &username,
        &password,
        peer,
        0x4000,
    )
}

#[test]
fn a_full_then_draining_relay_sends_clients_to_its_alternate() {
    let second = Relay::start(&[]);
    let second_address = SocketAddr::from(([127, 0, 0, 1], second.listen_port));
    let first = Relay::start(&[
        "--max-allocations=1",
        "--drain-seconds=30",
        &format!("--alternate-servers={second_address}"),
    ]);
    let first_address = SocketAddr::from(([127, 0, 0, 1], first.listen_port));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peer = common::echo_peer(&stop);

    let held = allocate(first_address, "one", peer).unwrap();
    assert_eq!(held.server, first_address);
    // Full: the next client is sent on, and its allocation works there.
    let moved = allocate(first_address, "two", peer).unwrap();
    assert_eq!(moved.server, second_address);
    assert_eq!(
        first.metric_until("turnpike_refusals_total{reason=\"try_alternate\"}", |n| n
            >= 1),
        1
    );

    // Draining (SIGTERM with an allocation still up): not ready, still healthy, and new
    // clients go to the alternate even after room was freed.
    held.release().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &first.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The drain lasts while an allocation is up: keep one.
    let _kept = allocate(second_address, "three", peer).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while first
        .get("/readyz")
        .is_some_and(|response| response.starts_with("HTTP/1.1 200"))
    {
        assert!(std::time::Instant::now() < deadline, "/readyz never failed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        first
            .get("/healthz")
            .is_some_and(|response| response.starts_with("HTTP/1.1 200"))
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}
