//! A real browser through the relay: headless Chromium runs two RTCPeerConnections in one page
//! (`tests/webrtc/relay.html`) with `iceTransportPolicy: 'relay'` and Turnpike as the only ICE
//! server, over `turn:…?transport=udp`, `turn:…?transport=tcp` and `turns:`; a data channel
//! echoes messages byte for byte, and `getStats()` must show a relay/relay candidate pair with
//! the expected relay protocol. The page reports to a small HTTP server of the test's own.
//!
//! Chromium trusts the TLS test certificate through `--ignore-certificate-errors-spki-list`
//! (that one key, nothing else), and a run without that flag must fail, which shows the browser
//! really checks the certificate.
//!
//! Without Chromium the test is skipped, except under CI (`CI` set), where it fails:
//! `scripts/setup.sh` installs the Debian package `chromium`.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail by panicking"
)]

mod common;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Relay, rest_credentials};
use sha2::Digest as _;

const PAGE: &str = include_str!("webrtc/relay.html");

/// Serves the page and hands every POSTed result to the returned receiver.
fn page_server() -> (SocketAddr, mpsc::Receiver<String>) {
    let (address, requests) = common::http_server(|request| {
        if request.method == "GET" && (request.path == "/" || request.path.starts_with("/?")) {
            ("text/html", PAGE.to_owned())
        } else {
            ("text/plain", String::new())
        }
    });
    let (results, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for request in requests {
            if request.method == "POST"
                && request.path == "/result"
                && results
                    .send(String::from_utf8_lossy(&request.body).into_owned())
                    .is_err()
            {
                return;
            }
        }
    });
    (address, receiver)
}

/// A headless Chromium on one URL; killed with its whole process group, its profile removed.
struct Chromium {
    child: Child,
    profile: PathBuf,
}

impl Chromium {
    fn open(url: &str, extra: &[String]) -> Self {
        let profile = std::env::temp_dir().join(format!(
            "turnpike-webrtc-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&profile).unwrap();
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromium starts");
        Self { child, profile }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the process group this test started; no memory is involved.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn chromium_present() -> bool {
    let present = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        present || std::env::var_os("CI").is_none(),
        "chromium is missing under CI; scripts/setup.sh installs it"
    );
    present
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// Opens the page with `ice_url` as the only ICE server and returns what it reported.
fn run_page(
    page: SocketAddr,
    results: &mpsc::Receiver<String>,
    ice_url: &str,
    extra: &[String],
) -> serde_json::Value {
    let (username, password) = rest_credentials(3600);
    let url = format!(
        "http://{page}/?url={}&username={}&credential={}",
        encode(ice_url),
        encode(&username),
        encode(&password)
    );
    let _browser = Chromium::open(&url, extra);
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = results
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .unwrap_or_else(|_| panic!("no report from the page for {ice_url}"));
    serde_json::from_str(&report).unwrap()
}

/// A self-signed certificate for localhost: (chain file, key file, base64 SHA-256 of its
/// public key for Chromium's SPKI list).
fn certificate(dir: &std::path::Path) -> (PathBuf, PathBuf, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let chain = dir.join("chain.pem");
    let key_file = dir.join("key.pem");
    std::fs::write(&chain, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let spki = base64::engine::general_purpose::STANDARD
        .encode(sha2::Sha256::digest(key.public_key_der()));
    (chain, key_file, spki)
}

fn assert_relayed(report: &serde_json::Value, protocol: &str) {
    assert!(report.get("error").is_none(), "{protocol}: {report}");
    assert_eq!(report["identical"], true, "{protocol}: {report}");
    assert_eq!(report["echoed"], 50, "{protocol}: {report}");
    for side in ["pair", "answerer_pair"] {
        let pair = &report[side];
        assert_eq!(pair["local_type"], "relay", "{protocol} {side}: {report}");
        assert_eq!(pair["remote_type"], "relay", "{protocol} {side}: {report}");
        assert_eq!(
            pair["local_relay_protocol"], protocol,
            "{protocol} {side}: {report}"
        );
    }
}

#[test]
fn chromium_relays_a_data_channel_over_udp_tcp_and_tls() {
    if !chromium_present() {
        eprintln!("skipped: chromium not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("turnpike-webrtc-certs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (chain, key, spki) = certificate(&dir);
    let relay = Relay::start(&[
        "--listen-tls=127.0.0.1:{tls}",
        &format!("--tls-cert={}", chain.display()),
        &format!("--tls-key={}", key.display()),
    ]);
    let (page, results) = page_server();
    let port = relay.listen_port;
    let tls_port = port + 3;
    let trust = vec![format!("--ignore-certificate-errors-spki-list={spki}")];

    let udp = run_page(
        page,
        &results,
        &format!("turn:127.0.0.1:{port}?transport=udp"),
        &[],
    );
    assert_relayed(&udp, "udp");
    let tcp = run_page(
        page,
        &results,
        &format!("turn:127.0.0.1:{port}?transport=tcp"),
        &[],
    );
    assert_relayed(&tcp, "tcp");
    let tls = run_page(
        page,
        &results,
        &format!("turns:localhost:{tls_port}?transport=tcp"),
        &trust,
    );
    assert_relayed(&tls, "tls");
    // Without being told to trust the key, the browser refuses the certificate.
    let untrusted = run_page(
        page,
        &results,
        &format!("turns:localhost:{tls_port}?transport=tcp"),
        &[],
    );
    assert!(untrusted.get("error").is_some(), "{untrusted}");

    let _ = std::fs::remove_dir_all(&dir);
}
