//! Reload without restart against a real `turnpike`: `POST /reload` and SIGHUP re-read the
//! configuration file and the secrets; a rotated secret authenticates from then on while the
//! allocation made with the old one keeps relaying; a newly denied peer stops at once; a broken
//! file changes nothing and says why; settings that need a restart are named; nothing is
//! dropped. Every wait is bounded.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail by panicking"
)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Relay;

struct Files {
    dir: PathBuf,
    config: PathBuf,
    secrets: PathBuf,
}

impl Files {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("turnpike-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = Self {
            config: dir.join("turnpike.toml"),
            secrets: dir.join("secrets"),
            dir,
        };
        std::fs::write(&files.secrets, "first-secret\n").unwrap();
        files.write_config("");
        files
    }

    fn write_config(&self, extra: &str) {
        std::fs::write(
            &self.config,
            format!(
                "secrets-file = {:?}\n{extra}",
                self.secrets.display().to_string()
            ),
        )
        .unwrap();
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn allocate(
    relay: &Relay,
    secret: &str,
    user: &str,
    peer: SocketAddr,
) -> anyhow::Result<turnpike_load::turn_client::Allocation> {
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let (username, password) = turnpike_load::turn_client::rest_credentials(secret, user, expiry);
    turnpike_load::turn_client::allocate_and_bind(
        "127.0.0.1:0".parse().unwrap(),
        SocketAddr::from(([127, 0, 0, 1], relay.listen_port)),
        &username,
        &password,
        peer,
        0x4000,
    )
}

/// One ChannelData round trip through `allocation`; whether the echo came back within a second.
fn round_trip(allocation: &turnpike_load::turn_client::Allocation) -> bool {
    let socket = &allocation.socket;
    socket.set_nonblocking(false).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut message = vec![0x40, 0x00, 0x00, 0x04];
    message.extend_from_slice(b"ping");
    socket.send_to(&message, allocation.server).unwrap();
    let mut buf = [0u8; 64];
    matches!(socket.recv_from(&mut buf), Ok((8, _)) if &buf[4..8] == b"ping")
}

fn reload(relay: &Relay) -> String {
    relay
        .post("/reload", "")
        .expect("the admin endpoint answers")
}

#[test]
fn a_reload_rotates_secrets_and_peer_policy_and_keeps_calls_up() {
    let files = Files::new();
    let relay = Relay::start(&[&format!("--config={}", files.config.display())]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peer = common::echo_peer(&stop);

    let call = allocate(&relay, "first-secret", "before", peer).unwrap();
    assert!(round_trip(&call));

    // Rotation: the new secret only.
    std::fs::write(&files.secrets, "second-secret\n").unwrap();
    let response = reload(&relay);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(allocate(&relay, "second-secret", "after", peer).is_ok());
    let refused = allocate(&relay, "first-secret", "late", peer).unwrap_err();
    assert!(
        format!("{refused:#}").contains("refusing the credentials"),
        "{refused:#}"
    );
    assert!(
        round_trip(&call),
        "the call made with the old secret is not cut"
    );

    // A broken file changes nothing and says why.
    std::fs::write(&files.config, "this is = not toml [").unwrap();
    let response = reload(&relay);
    assert!(response.starts_with("HTTP/1.1 422"), "{response}");
    assert!(response.contains("config"), "{response}");
    assert!(round_trip(&call));
    assert!(allocate(&relay, "second-secret", "still", peer).is_ok());

    // A restart-only setting is named; the rest applies.
    files.write_config("threads = 1\n");
    let response = reload(&relay);
    assert!(
        response.starts_with("HTTP/1.1 200") && response.contains("threads"),
        "{response}"
    );

    // A newly denied peer stops at once (a deny beats the allow given as a flag).
    files.write_config("deny-peers = [\"127.0.0.1/32\"]\n");
    let hangup = std::process::Command::new("kill")
        .args(["-HUP", &relay.pid().to_string()])
        .status()
        .unwrap();
    assert!(hangup.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while round_trip(&call) {
        assert!(
            std::time::Instant::now() < deadline,
            "the denied peer still receives"
        );
    }
    assert!(
        relay.get("/healthz").is_some(),
        "SIGHUP did not end the relay"
    );
    assert_eq!(
        relay.metric_until("turnpike_config_reload_total{result=\"success\"}", |n| n
            >= 3),
        3
    );
    assert_eq!(
        relay.metric_until("turnpike_config_reload_total{result=\"failure\"}", |n| n
            >= 1),
        1
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}
