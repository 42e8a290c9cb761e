//! The status page in a real browser: headless Chromium opens `GET /` of a relay that carries
//! load, and the test reads what the page shows through the DevTools protocol (over the pipes
//! `--remote-debugging-pipe` gives, fd 3 and 4): the numbers must move while the load runs and
//! equal the `/metrics` samples once it stops. A screenshot of the page is left in
//! `target/tmp/status-page.png`.
//!
//! Without Chromium the test is skipped, except under CI (`CI` set), where it fails:
//! `scripts/setup.sh` installs the Debian package `chromium`.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail by panicking"
)]

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::Relay;
use serde_json::{Value, json};

const CHROMIUM: &str = "chromium";

/// A pipe as (read end, write end), both close-on-exec.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`, which we then own.
    let result = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(result, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A headless Chromium driven through the DevTools protocol; killed, with its whole process
/// group, and its profile removed when dropped.
struct Browser {
    child: Child,
    commands: File,
    events: Receiver<Value>,
    next_id: u64,
    session: String,
    profile: PathBuf,
    /// What the page logged (failed requests among it), for failure messages.
    log: Vec<String>,
}

impl Browser {
    fn open(url: &str) -> Self {
        let profile = std::env::temp_dir().join(format!(
            "turnpike-chromium-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&profile).unwrap();
        // Chromium reads commands from fd 3 and writes answers to fd 4.
        let (command_read, command_write) = pipe();
        let (answer_read, answer_write) = pipe();
        let (inherit_read, inherit_write): (RawFd, RawFd) =
            (command_read.as_raw_fd(), answer_write.as_raw_fd());
        let mut command = Command::new(CHROMIUM);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--hide-scrollbars",
                "--window-size=1400,1200",
                "--remote-debugging-pipe",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that the renderer and GPU processes die with it.
            .process_group(0);
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // Move both above 4 first, so that neither is overwritten by the other's dup2.
                let read = libc::fcntl(inherit_read, libc::F_DUPFD, 10);
                let write = libc::fcntl(inherit_write, libc::F_DUPFD, 10);
                if read < 0 || write < 0 || libc::dup2(read, 3) < 0 || libc::dup2(write, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("chromium starts");
        drop(command_read);
        drop(answer_write);
        let (sender, events) = std::sync::mpsc::channel();
        let reader = File::from(answer_read);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut message = Vec::new();
            while reader
                .read_until(0, &mut message)
                .is_ok_and(|read| read > 0)
            {
                message.pop();
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && sender.send(value).is_err()
                {
                    return;
                }
                message.clear();
            }
        });
        let mut browser = Self {
            child,
            commands: File::from(command_write),
            events,
            next_id: 0,
            session: String::new(),
            profile,
            log: Vec::new(),
        };
        let target = browser.call("Target.createTarget", json!({ "url": url }));
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = browser.call(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        browser.call("Log.enable", json!({}));
        browser.call("Runtime.enable", json!({}));
        browser
    }

    /// Sends one command (to the page once attached) and waits at most 10 s for its answer.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = Value::String(self.session.clone());
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(answer) if answer["id"] == id => {
                    assert!(answer["error"].is_null(), "{method}: {answer}");
                    return answer["result"].clone();
                }
                Ok(event) if event["method"] == "Log.entryAdded" => {
                    let entry = &event["params"]["entry"];
                    self.log.push(format!(
                        "{}: {} {}",
                        entry["level"], entry["text"], entry["url"]
                    ));
                }
                Ok(event) if event["method"] == "Runtime.exceptionThrown" => {
                    let details = &event["params"]["exceptionDetails"];
                    self.log.push(format!(
                        "\"exception\": {} {}",
                        details["text"], details["exception"]["description"]
                    ));
                }
                Ok(_) => {} // another event
                Err(RecvTimeoutError::Timeout) => panic!("chromium did not answer {method}"),
                Err(RecvTimeoutError::Disconnected) => panic!("chromium exited during {method}"),
            }
        }
    }

    /// Evaluates `expression` in the page and returns its value.
    fn evaluate(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        assert!(result["exceptionDetails"].is_null(), "{result}");
        result["result"]["value"].clone()
    }

    /// What the page shows now.
    fn shown(&mut self) -> Shown {
        // Null until the page has loaded.
        let value = self.evaluate(
            "document.getElementById('state') && JSON.stringify({
                updates: Number(document.body.dataset.updates),
                state: document.getElementById('state').textContent,
                version: document.getElementById('version').textContent,
                certificate: document.getElementById('certificate').hidden ? null
                    : document.getElementById('certificate-expiry').textContent,
                pps: document.getElementById('pps').textContent,
                loads: [...document.querySelectorAll('[data-thread-load]')].map(e => e.textContent),
                lines: document.querySelectorAll('svg.chart polyline').length,
                series: [...document.querySelectorAll('[data-series]')]
                    .map(e => [e.dataset.series, e.textContent]),
            })",
        );
        let Some(text) = value.as_str() else {
            return Shown::default();
        };
        let value: Value = serde_json::from_str(text).unwrap();
        Shown {
            updates: value["updates"].as_u64().unwrap(),
            state: value["state"].as_str().unwrap().to_owned(),
            version: value["version"].as_str().unwrap().to_owned(),
            certificate: value["certificate"].as_str().map(str::to_owned),
            packets_per_second: value["pps"].as_str().unwrap().to_owned(),
            thread_loads: value["loads"]
                .as_array()
                .unwrap()
                .iter()
                .map(|load| load.as_str().unwrap().to_owned())
                .collect(),
            chart_lines: value["lines"].as_u64().unwrap(),
            series: value["series"]
                .as_array()
                .unwrap()
                .iter()
                .map(|pair| {
                    let text = pair[1].as_str().unwrap().replace(',', "");
                    (
                        pair[0].as_str().unwrap().to_owned(),
                        text.parse::<f64>().unwrap_or(f64::NAN),
                    )
                })
                .collect(),
        }
    }

    fn screenshot(&mut self, path: &std::path::Path) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on the process group of the browser this test started.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

#[derive(Debug, Default)]
struct Shown {
    updates: u64,
    state: String,
    version: String,
    /// The TLS certificate's expiry as shown, `None` while hidden.
    certificate: Option<String>,
    packets_per_second: String,
    thread_loads: Vec<String>,
    chart_lines: u64,
    /// Every total on the page, by the `/metrics` series it shows.
    series: BTreeMap<String, f64>,
}

/// Polls the page every 200 ms until `check` holds, for at most `within`; returns what it
/// showed then.
fn until(
    browser: &mut Browser,
    relay: &Relay,
    within: Duration,
    what: &str,
    check: impl Fn(&Shown) -> bool,
) -> Shown {
    let deadline = Instant::now() + within;
    loop {
        let shown = browser.shown();
        if check(&shown) {
            return shown;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {what}: {shown:#?}\npage log: {:#?}\nrelay /healthz: {:?}",
            browser.log,
            relay.get("/healthz")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn chromium_present() -> bool {
    let found = Command::new(CHROMIUM)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing; scripts/setup.sh installs it"
        );
        eprintln!("skip: chromium is not installed (scripts/setup.sh installs it)");
    }
    found
}

const C2P: &str = "turnpike_relayed_packets_total{direction=\"client_to_peer\",path=\"userspace\"}";
const TCP_OPEN: &str = "turnpike_stream_connections{transport=\"tcp\"}";

#[test]
fn the_status_page_shows_live_numbers_that_match_metrics() {
    if !chromium_present() {
        return;
    }
    // A silent TCP connection stays open for the whole test; a TLS listener, for its
    // certificate's expiry (rcgen's default validity runs for centuries).
    let certificate_dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("browser-{}", std::process::id()));
    std::fs::create_dir_all(&certificate_dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let certificate = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (chain, key_file) = (
        certificate_dir.join("chain.pem"),
        certificate_dir.join("key.pem"),
    );
    std::fs::write(&chain, certificate.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let tls_args = [
        // `{tls}` is the test's spare port (see `Relay::start`).
        "--listen-tls=127.0.0.1:{tls}".to_owned(),
        format!("--tls-cert={}", chain.display()),
        format!("--tls-key={}", key_file.display()),
    ];
    let mut args = vec!["--threads=2", "--stream-idle-timeout=600"];
    args.extend(tls_args.iter().map(String::as_str));
    let relay = Relay::start(&args);
    std::fs::remove_dir_all(&certificate_dir).unwrap();
    let server: SocketAddr = relay.server("127.0.0.1").parse().unwrap();
    // A TURN-over-TCP client (the TCP listener shares the UDP listen address) that asks for its
    // address once and stays connected.
    let mut tcp = std::net::TcpStream::connect(server).unwrap();
    tcp.write_all(&[
        0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ])
    .unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut answer = [0; 20];
    std::io::Read::read_exact(&mut tcp, &mut answer).unwrap();
    let stop_peer = Arc::new(AtomicBool::new(false));
    let peer = common::echo_peer(&stop_peer);
    let allocations: Vec<(u32, _)> = (0..3)
        .map(|index| (index, common::allocate(server, peer, "browser").unwrap()))
        .collect();

    // Load: 600 round trips a second over three allocations, until stopped.
    let stop_load = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop_load);
        std::thread::spawn(move || {
            let load = turnpike_load::run::Load {
                payload: 200,
                window: 4,
                rate: 600,
                duration: Duration::from_secs(60),
                refresh: true,
            };
            let progress = turnpike_load::run::Progress::default();
            turnpike_load::run::drive(allocations, load, 600, Instant::now(), &progress, &stop)
                .map(|(measured, allocations)| (measured.received, allocations))
        })
    };

    let mut browser = Browser::open(&format!("http://{}/", relay.admin));
    let first = until(
        &mut browser,
        &relay,
        Duration::from_secs(20),
        "three allocations and relayed packets",
        |shown| {
            shown.updates >= 2
                && shown.series.get("turnpike_allocations") == Some(&3.0)
                && shown.series.get("turnpike_channels") == Some(&3.0)
                && shown.series.get(C2P).is_some_and(|packets| *packets > 0.0)
                && shown.series.get(TCP_OPEN) == Some(&1.0)
        },
    );
    assert_eq!(first.state, "ready");
    assert_eq!(first.version, env!("CARGO_PKG_VERSION"));
    assert!(
        first
            .certificate
            .as_deref()
            .is_some_and(|shown| shown.starts_with("expires in ")),
        "the TLS certificate's expiry: {first:#?}"
    );
    assert_eq!(first.thread_loads.len(), 2, "{first:#?}");
    // The numbers move: more relayed packets shown a few polls later, and a rate.
    let moved = until(
        &mut browser,
        &relay,
        Duration::from_secs(15),
        "the relayed packets growing and a packet rate",
        |shown| {
            shown.updates >= first.updates + 2
                && shown.series[C2P] > first.series[C2P]
                && !shown.packets_per_second.starts_with('–')
                && shown.packets_per_second != "0"
                && shown.chart_lines >= 2
                && shown.thread_loads.iter().all(|load| load.ends_with('%'))
        },
    );
    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    browser.screenshot(&screenshot);
    eprintln!("screenshot: {}", screenshot.display());

    // Stop the load; once /metrics settles the page must show exactly its numbers.
    stop_load.store(true, Ordering::Relaxed);
    let (received, allocations) = load.join().unwrap().unwrap();
    assert!(received > 0);
    let metrics = relay.settled_samples(Duration::from_secs(10));
    let matched = until(
        &mut browser,
        &relay,
        Duration::from_secs(10),
        "the numbers of /metrics",
        |shown| {
            shown
                .series
                .iter()
                .all(|(series, value)| metrics.get(series) == Some(value))
        },
    );
    assert!(matched.series[C2P] > moved.series[C2P] - 1.0);
    // What a glance at the page needs is there.
    for series in [
        "turnpike_allocations",
        "turnpike_permissions",
        "turnpike_channels",
        "turnpike_allocations_limit",
        C2P,
        "turnpike_relayed_bytes_total{direction=\"peer_to_client\",path=\"userspace\"}",
        "turnpike_responses_total{method=\"allocate\",code=\"0\"}",
        "turnpike_responses_total{method=\"allocate\",code=\"401\"}",
        "turnpike_responses_total{method=\"channel_bind\",code=\"0\"}",
        TCP_OPEN,
        "turnpike_stream_connections{transport=\"tls\"}",
        "turnpike_stream_connections_accepted_total{transport=\"tcp\"}",
        "turnpike_stream_messages_received_total{transport=\"tcp\"}",
        "turnpike_stream_sent_bytes_total{transport=\"tcp\"}",
        "turnpike_stream_buffered_bytes",
        "turnpike_stream_dropped_messages_total",
        "turnpike_stream_dropped_bytes_total",
    ] {
        assert!(
            matched.series.contains_key(series),
            "{series}: {matched:#?}"
        );
    }
    // The page threw nothing and logged no error (a failed request, a refused resource).
    browser.call("Runtime.evaluate", json!({ "expression": "1" }));
    let errors: Vec<&String> = browser
        .log
        .iter()
        .filter(|entry| entry.starts_with("\"error\"") || entry.starts_with("\"exception\""))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    drop(allocations);
    drop(tcp);
    stop_peer.store(true, Ordering::Relaxed);
}
