//! Error telemetry against a real `turnpike`: with `--sentry-dsn` pointing at an HTTP server of
//! the test's own on loopback, an ERROR event (a refused reload) arrives there as a Sentry
//! envelope with the relay's version and id; with a DSN whose host cannot be resolved, the relay
//! starts and relays as without one, and errors cost it nothing. Every wait is bounded.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail by panicking"
)]

mod common;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Relay;

/// An HTTP server on loopback that answers every request with 200 and hands over its path and
/// body.
fn collector() -> (SocketAddr, mpsc::Receiver<common::HttpRequest>) {
    common::http_server(|_| ("application/json", "{}".to_owned()))
}

/// A configuration file that does not parse, so a reload logs an ERROR event.
fn broken_config(tag: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "turnpike-telemetry-{}-{tag}.toml",
        std::process::id()
    ));
    std::fs::write(&path, "").unwrap();
    path
}

fn break_config(path: &std::path::Path) {
    std::fs::write(path, "not = valid = toml").unwrap();
}

fn round_trip_works(relay: &Relay, user: &str) -> bool {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peer = common::echo_peer(&stop);
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let (username, password) =
        turnpike_load::turn_client::rest_credentials(common::SECRET, user, expiry);
    let Ok(allocation) = turnpike_load::turn_client::allocate_and_bind(
        "127.0.0.1:0".parse().unwrap(),
        SocketAddr::from(([127, 0, 0, 1], relay.listen_port)),
        &username,
        &password,
        peer,
        0x4000,
    ) else {
        return false;
    };
    let socket = &allocation.socket;
    socket.set_nonblocking(false).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    socket
        .send_to(
            &[0x40, 0x00, 0x00, 0x02, b'h', b'i', 0, 0],
            allocation.server,
        )
        .unwrap();
    let mut buf = [0u8; 32];
    let echoed = matches!(socket.recv_from(&mut buf), Ok((6.., _)) if &buf[4..6] == b"hi");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    echoed
}

#[test]
fn errors_arrive_at_the_collector_as_envelopes_with_version_and_relay_id() {
    let (collector, envelopes) = collector();
    let config = broken_config("collector");
    let relay = Relay::start(&[
        &format!("--sentry-dsn=http://publickey@{collector}/42"),
        "--relay-id=test-relay-7",
        &format!("--config={}", config.display()),
    ]);
    break_config(&config);
    let response = relay.post("/reload", "").unwrap();
    assert!(response.starts_with("HTTP/1.1 422"), "{response}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (path, body) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let common::HttpRequest { path, body, .. } = envelopes
            .recv_timeout(left)
            .expect("an envelope reached the collector");
        if String::from_utf8_lossy(&body).contains("reload refused") {
            break (path, body);
        }
    };
    assert_eq!(path, "/api/42/envelope/");
    let text = String::from_utf8_lossy(&body);
    // An envelope: a header line, then an item header and its payload per item.
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert!(header.get("event_id").is_some(), "{header}");
    let item: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(item["type"], "event", "{item}");
    let event: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    // Sentry's protocol leaves `level` out when it is the default, error.
    assert!(
        event["level"].is_null() || event["level"] == "error",
        "{event}"
    );
    assert_eq!(
        event["message"], "reload refused; the running configuration is unchanged",
        "{event}"
    );
    assert_eq!(
        event["release"],
        format!("turnpike@{}", env!("CARGO_PKG_VERSION")),
        "{event}"
    );
    assert_eq!(event["server_name"], "test-relay-7", "{event}");
    assert_eq!(event["tags"]["relay_id"], "test-relay-7", "{event}");
    // The relay goes on relaying.
    assert!(round_trip_works(&relay, "after-error"));
    let _ = std::fs::remove_file(config);
}

#[test]
fn an_unresolvable_collector_changes_neither_start_up_nor_relaying() {
    let config = broken_config("offline");
    let started = Instant::now();
    let relay = Relay::start(&[
        "--sentry-dsn=http://publickey@collector.turnpike.invalid/1",
        &format!("--config={}", config.display()),
    ]);
    let start_up = started.elapsed();
    assert!(
        start_up < Duration::from_secs(5),
        "start-up took {start_up:?}: it must not wait for the network"
    );
    assert!(round_trip_works(&relay, "offline-before"));
    // A burst of errors, each an event for a host nobody can resolve: the queue is bounded and
    // drops what does not fit; neither the admin endpoint nor relaying waits for it.
    break_config(&config);
    let burst = Instant::now();
    for _ in 0..50 {
        let response = relay.post("/reload", "").unwrap();
        assert!(response.starts_with("HTTP/1.1 422"), "{response}");
    }
    assert!(
        burst.elapsed() < Duration::from_secs(10),
        "50 refused reloads took {:?}",
        burst.elapsed()
    );
    assert!(round_trip_works(&relay, "offline-after"));
    let _ = std::fs::remove_file(config);
}
