//! The status page, its JSON and the admin token, against a real `turnpike` process.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail by panicking"
)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use common::Relay;
use serde_json::Value;
use turnpike_load::run::CHANNEL;

/// Relays `count` ChannelData round trips through `allocation`.
fn round_trips(allocation: &turnpike_load::turn_client::Allocation, count: usize) {
    let mut message = CHANNEL.to_be_bytes().to_vec();
    message.extend_from_slice(&8_u16.to_be_bytes());
    message.extend_from_slice(b"statuses");
    let mut buf = [0; 64];
    for _ in 0..count {
        allocation
            .socket
            .send_to(&message, allocation.server)
            .unwrap();
        assert!(
            turnpike_io::wait_readable(allocation.socket.as_raw_fd(), Duration::from_secs(2))
                .unwrap()
        );
        let (len, _) = allocation.socket.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], &message[..]);
    }
}

fn status(relay: &Relay, query: &str) -> Value {
    serde_json::from_str(&relay.get_body(&format!("/status{query}")).expect("status")).unwrap()
}

/// Polls `check` every 100 ms until it holds, for at most `within`.
fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn label_series(name: &str, labels: &[(&str, String)]) -> String {
    let inner: Vec<String> = labels
        .iter()
        .map(|(key, value)| format!("{key}=\"{value}\""))
        .collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// Every number of a /status document, keyed by the /metrics series it stands for.
fn status_as_series(status: &Value) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let number = |value: &Value| value.as_f64().unwrap();
    let text = |value: &Value| value.as_str().unwrap().to_owned();
    for (field, name) in [
        ("allocations", "turnpike_allocations"),
        ("permissions", "turnpike_permissions"),
        ("channels", "turnpike_channels"),
        ("allocations_limit", "turnpike_allocations_limit"),
        ("hairpinned_packets", "turnpike_hairpinned_packets_total"),
        ("retransmissions", "turnpike_retransmissions_total"),
        ("excluded_ports", "turnpike_excluded_ports"),
    ] {
        out.insert(name.to_owned(), number(&status[field]));
    }
    out.insert(
        "turnpike_draining".to_owned(),
        f64::from(u8::from(status["draining"].as_bool().unwrap())),
    );
    out.insert(
        "turnpike_xdp_enabled".to_owned(),
        f64::from(u8::from(status["kernel_path"].as_bool().unwrap())),
    );
    for relayed in status["relayed"].as_array().unwrap() {
        let labels = [
            ("direction", text(&relayed["direction"])),
            ("path", text(&relayed["path"])),
        ];
        for (field, name) in [
            ("packets", "turnpike_relayed_packets_total"),
            ("bytes", "turnpike_relayed_bytes_total"),
        ] {
            out.insert(label_series(name, &labels), number(&relayed[field]));
        }
    }
    for indication in status["indications"].as_array().unwrap() {
        out.insert(
            label_series(
                "turnpike_relayed_indication_packets_total",
                &[("direction", text(&indication["direction"]))],
            ),
            number(&indication["packets"]),
        );
    }
    for response in status["responses"].as_array().unwrap() {
        out.insert(
            label_series(
                "turnpike_responses_total",
                &[
                    ("method", text(&response["method"])),
                    ("code", response["code"].to_string()),
                ],
            ),
            number(&response["count"]),
        );
    }
    for (field, name, label) in [
        ("auth_failures", "turnpike_auth_failures_total", "reason"),
        ("refusals", "turnpike_refusals_total", "reason"),
        ("dropped", "turnpike_dropped_packets_total", "reason"),
        ("socket_errors", "turnpike_socket_errors_total", "kind"),
    ] {
        for item in status[field].as_array().unwrap() {
            out.insert(
                label_series(name, &[(label, text(&item[label]))]),
                number(&item["count"]),
            );
        }
    }
    for result in ["success", "failure"] {
        out.insert(
            label_series(
                "turnpike_config_reload_total",
                &[("result", result.to_owned())],
            ),
            number(&status["reloads"][result]),
        );
    }
    let streams = &status["streams"];
    for transport in streams["transports"].as_array().unwrap() {
        let labels = [("transport", text(&transport["transport"]))];
        for (field, name) in [
            ("connections", "turnpike_stream_connections"),
            ("accepted", "turnpike_stream_connections_accepted_total"),
            (
                "messages_received",
                "turnpike_stream_messages_received_total",
            ),
            ("received_bytes", "turnpike_stream_received_bytes_total"),
            ("messages_sent", "turnpike_stream_messages_sent_total"),
            ("sent_bytes", "turnpike_stream_sent_bytes_total"),
        ] {
            out.insert(label_series(name, &labels), number(&transport[field]));
        }
    }
    for (field, name) in [
        ("refused", "turnpike_stream_connections_refused_total"),
        ("closed", "turnpike_stream_connections_closed_total"),
    ] {
        for item in streams[field].as_array().unwrap() {
            out.insert(
                label_series(name, &[("reason", text(&item["reason"]))]),
                number(&item["count"]),
            );
        }
    }
    for (field, name) in [
        ("dropped_messages", "turnpike_stream_dropped_messages_total"),
        ("dropped_bytes", "turnpike_stream_dropped_bytes_total"),
        ("buffered_bytes", "turnpike_stream_buffered_bytes"),
    ] {
        out.insert(name.to_owned(), number(&streams[field]));
    }
    if !status["tls_certificate_expiry_unix"].is_null() {
        out.insert(
            "turnpike_tls_certificate_expiry_seconds".to_owned(),
            number(&status["tls_certificate_expiry_unix"]),
        );
    }
    out
}

#[test]
fn status_reports_the_same_numbers_as_metrics_and_keeps_a_history() {
    let relay = Relay::start(&["--threads=2"]);
    let server: SocketAddr = relay.server("127.0.0.1").parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let peer = common::echo_peer(&stop);
    let allocation = common::allocate(server, peer, "status").unwrap();
    round_trips(&allocation, 25);
    // A TCP client (the TCP listener shares the UDP listen address by default) that sends one
    // Binding request and stays connected.
    let mut tcp = std::net::TcpStream::connect(server).unwrap();
    let binding = [
        0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];
    std::io::Write::write_all(&mut tcp, &binding).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut answer = [0; 20];
    std::io::Read::read_exact(&mut tcp, &mut answer).unwrap();
    assert_eq!(&answer[..2], &[0x01, 0x01], "a Binding success response");
    eventually(
        Duration::from_secs(5),
        "the TCP connection in /status",
        || self::status(&relay, "")["streams"]["transports"][0]["connections"] == 1,
    );

    let metrics = relay.settled_samples(Duration::from_secs(10));
    let status = status(&relay, "");
    let from_status = status_as_series(&status);
    for (series, value) in &from_status {
        assert_eq!(
            metrics.get(series),
            Some(value),
            "{series}: /status says {value}"
        );
    }
    // And the other way round: every series but the kernel's and the relay's identity is on
    // the status page.
    for series in metrics.keys() {
        let elsewhere = [
            "turnpike_build_info",
            "turnpike_start_time_seconds",
            "turnpike_thread_busy_seconds_total",
        ];
        if !elsewhere.iter().any(|name| series.starts_with(name)) {
            assert!(
                from_status.contains_key(series),
                "{series} is on /metrics but not in /status: add it to status.rs (and the page, \
                 status.html, and docs/operations.md), or to `elsewhere` here if the page has no \
                 use for it"
            );
        }
    }
    assert_eq!(status["allocations"], 1);
    assert_eq!(status["channels"], 1);
    let tcp_status = &status["streams"]["transports"][0];
    assert_eq!(tcp_status["transport"], "tcp", "{status}");
    assert_eq!(tcp_status["connections"], 1, "{status}");
    assert_eq!(tcp_status["accepted"], 1, "{status}");
    assert_eq!(tcp_status["messages_received"], 1, "{status}");
    assert_eq!(tcp_status["messages_sent"], 1, "{status}");
    assert!(
        status["relayed"][0]["packets"].as_u64().unwrap() >= 25,
        "{status}"
    );
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["ready"], true);
    assert_eq!(status["kernel_path"], false);
    assert!(status["kernel"].is_null());
    assert!(
        status["tls_certificate_expiry_unix"].is_null(),
        "no TLS listener"
    );
    let threads = status["threads"].as_array().unwrap();
    assert_eq!(threads.len(), 2);
    let per_thread: u64 = threads
        .iter()
        .map(|thread| thread["relayed_packets"].as_u64().unwrap())
        .sum();
    assert_eq!(
        per_thread,
        status["relayed"][0]["packets"].as_u64().unwrap()
            + status["relayed"][1]["packets"].as_u64().unwrap()
    );
    assert!(
        relay
            .samples()
            .contains_key("turnpike_thread_busy_seconds_total{thread=\"1\"}")
    );

    // The history: a sample a second, counters as cumulative values; `since` returns only what
    // is newer.
    eventually(
        Duration::from_secs(10),
        "three history samples, the last with the TCP connection",
        || {
            let status = self::status(&relay, "");
            let samples = status["history"]["samples"].as_array().unwrap();
            samples.len() >= 3 && samples.last().unwrap()["connections"]["tcp"] == 1
        },
    );
    let history = self::status(&relay, "")["history"].clone();
    assert_eq!(history["interval_seconds"], 1);
    let samples = history["samples"].as_array().unwrap();
    let last = samples.last().unwrap();
    assert_eq!(last["allocations"], 1);
    assert_eq!(last["connections"]["tcp"], 1);
    assert_eq!(last["connections"]["tls"], 0);
    assert!(
        last["packets"]["client_to_peer"]["userspace"]
            .as_u64()
            .unwrap()
            >= 25
    );
    assert_eq!(last["busy_seconds"].as_array().unwrap().len(), 2);
    let since = last["unix_ms"].as_u64().unwrap();
    let newer = self::status(&relay, &format!("?since={since}"));
    assert!(
        newer["history"]["samples"]
            .as_array()
            .unwrap()
            .iter()
            .all(|sample| sample["unix_ms"].as_u64().unwrap() > since)
    );
    drop(tcp);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}

#[test]
fn the_status_page_is_one_self_contained_document() {
    let relay = Relay::start(&[]);
    let response = relay.get("/").unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let lower = response.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/html"), "{response}");
    assert!(
        lower.contains("content-security-policy: default-src 'none'"),
        "{response}"
    );
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(body.contains("fetch(STATUS + \"?since=\""));
    for external in ["http://", "https://", "src=\"", "@import", "url("] {
        assert!(!body.contains(external), "the page refers to {external}");
    }
}

fn token_file(token: &str) -> (std::path::PathBuf, String) {
    let path = std::env::temp_dir().join(format!(
        "turnpike-admin-token-{}-{}",
        std::process::id(),
        token.len()
    ));
    std::fs::write(&path, format!("{token}\n")).unwrap();
    let argument = format!("--admin-token-file={}", path.display());
    (path, argument)
}

#[test]
fn the_admin_token_guards_everything_but_the_probes() {
    let token = "s3cret-admin-token-0123456789";
    let (path, argument) = token_file(token);
    let relay = Relay::start(&[&argument]);
    std::fs::remove_file(&path).unwrap();
    let bearer = format!("Authorization: Bearer {token}");
    let basic = {
        use base64::Engine as _;
        format!(
            "Authorization: Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("ops:{token}"))
        )
    };
    for path in ["/healthz", "/readyz"] {
        let response = relay.get(path).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
    }
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/status"),
        ("GET", "/metrics"),
        ("POST", "/log-level"),
    ] {
        for headers in [
            vec![],
            vec!["Authorization: Bearer wrong-token-0123456789"],
            vec!["Authorization: Bearer s3cret-admin-token-012345678"],
            vec![&format!("Authorization: Basic {token}")[..]],
        ] {
            let response = relay.request(method, path, &headers, "info").unwrap();
            assert!(
                response.starts_with("HTTP/1.1 401"),
                "{method} {path} {headers:?}: {response}"
            );
            let lower = response.to_ascii_lowercase();
            assert!(lower.contains("www-authenticate: bearer"), "{response}");
            assert!(lower.contains("www-authenticate: basic"), "{response}");
        }
        for header in [&bearer, &basic] {
            let response = relay.request(method, path, &[header], "warn").unwrap();
            assert!(
                response.starts_with("HTTP/1.1 200"),
                "{method} {path} {header}: {response}"
            );
        }
    }
}

#[test]
fn a_short_admin_token_is_refused_naming_the_setting() {
    let (path, argument) = token_file("short");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_turnpike"))
        .args(["--dev", &argument])
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("admin-token-file"), "{stderr}");
}
