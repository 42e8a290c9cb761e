//! A real `turnpike` process on loopback for the daemon's tests, with bounded waits.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "a test-only module shared by test binaries, each using a part"
)]

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const SECRET: &str = "interop-secret";

/// Ports for one test: listen, admin, an echo peer, and the first of 100 relayed ports; distinct
/// per test (at most 15 per process) and, likely, per test process.
pub fn ports() -> (u16, u16, u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let index = NEXT.fetch_add(1, Ordering::Relaxed) % 15;
    let process = u16::try_from(std::process::id() % 20).unwrap();
    let base = 20_000 + process * 100 + index * 4;
    (
        base,
        base + 1,
        base + 2,
        30_000 + process * 1_500 + index * 100,
    )
}

pub struct Relay {
    child: Child,
    pub listen_port: u16,
    pub peer_port: u16,
    pub admin: SocketAddr,
    /// The ports this relay was given (see [`ports`]) and how many it relays on.
    pub ports: (u16, u16, u16, u16),
    pub relay_ports: u16,
}

impl Relay {
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with_ports(100, extra)
    }

    /// A relay with `relay_ports` relayed ports. A relay that exits at start (another process
    /// holding one of its ports, on a busy machine) is started again on the next set of ports,
    /// twice at most.
    pub fn start_with_ports(relay_ports: u16, extra: &[&str]) -> Self {
        for _ in 0..2 {
            match Self::try_start_on(ports(), relay_ports, extra) {
                Ok(relay) => return relay,
                Err(error) => eprintln!("{error}; trying other ports"),
            }
        }
        Self::start_on(ports(), relay_ports, extra)
    }

    /// A relay on the given ports (as [`ports`] returns them), e.g. those of one that died.
    pub fn start_on(ports: (u16, u16, u16, u16), relay_ports: u16, extra: &[&str]) -> Self {
        Self::try_start_on(ports, relay_ports, extra).unwrap_or_else(|error| panic!("{error}"))
    }

    fn try_start_on(
        ports: (u16, u16, u16, u16),
        relay_ports: u16,
        extra: &[&str],
    ) -> Result<Self, String> {
        let (listen_port, admin_port, peer_port, relay_low) = ports;
        let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let mut args = vec![
            format!("--listen=127.0.0.1:{listen_port},[::1]:{listen_port}"),
            "--public-ipv4=127.0.0.1".to_owned(),
            "--public-ipv6=::1".to_owned(),
            format!("--relay-ports={relay_low}-{}", relay_low + relay_ports - 1),
            format!("--admin-listen={admin}"),
            "--allow-peers=127.0.0.0/8,::1/128".to_owned(),
            "--drain-seconds=0".to_owned(),
            "--log-level=warn".to_owned(),
        ];
        // A setting given in `extra` replaces the default above.
        let name = |arg: &str| arg.split('=').next().unwrap_or(arg).to_owned();
        args.retain(|arg| !extra.iter().any(|given| name(given) == name(arg)));
        // `{tls}` in a setting is this test's spare port (for a TLS listener).
        let spare = (listen_port + 3).to_string();
        args.extend(extra.iter().map(|arg| arg.replace("{tls}", &spare)));
        let child = Command::new(env!("CARGO_BIN_EXE_turnpike"))
            .args(&args)
            .env("TURNPIKE_SECRETS", SECRET)
            .stdout(Stdio::null())
            .spawn()
            .expect("turnpike starts");
        let mut relay = Self {
            child,
            listen_port,
            peer_port,
            admin,
            ports,
            relay_ports,
        };
        relay.wait_ready()?;
        Ok(relay)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("turnpike exited at start: {status}"));
            }
            if self
                .get("/readyz")
                .is_some_and(|body| body.starts_with("HTTP/1.1 200"))
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("turnpike did not become ready");
    }

    /// POSTs `body` to the admin endpoint, returning the raw response.
    pub fn post(&self, path: &str, body: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect_timeout(&self.admin, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        Some(response)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The relayed port range.
    pub fn relay_port_range(&self) -> std::ops::RangeInclusive<u16> {
        self.ports.3..=self.ports.3 + self.relay_ports - 1
    }

    /// `kill -9`: no drain, no clean-up of its own; returns once the process is gone.
    pub fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL to the relay");
        let status = self.child.wait().expect("the killed relay is reaped");
        assert!(!status.success(), "killed, not exited: {status:?}");
    }

    /// Waits (at most `within`) for the process to exit, returning its status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn get(&self, path: &str) -> Option<String> {
        self.request("GET", path, &[], "")
    }

    /// Sends a request with extra header lines (`"Authorization: Bearer x"`), returning the raw
    /// response.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: &str,
    ) -> Option<String> {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect_timeout(&self.admin, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n");
        for header in headers {
            head.push_str(header);
            head.push_str("\r\n");
        }
        if method != "GET" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        head.push_str(body);
        stream.write_all(head.as_bytes()).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        Some(response)
    }

    /// The body of a successful GET, or `None`.
    pub fn get_body(&self, path: &str) -> Option<String> {
        let response = self.get(path)?;
        if !response.starts_with("HTTP/1.1 200") {
            return None;
        }
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
    }

    /// Every sample on /metrics, keyed by series (`name{labels}`), as published now.
    pub fn samples(&self) -> std::collections::BTreeMap<String, f64> {
        let body = self.get_body("/metrics").expect("metrics");
        body.lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    /// The samples once two reads a publish period apart agree (the relay threads publish
    /// four times a second), within `within`.
    pub fn settled_samples(&self, within: Duration) -> std::collections::BTreeMap<String, f64> {
        let deadline = Instant::now() + within;
        let volatile = |series: &str| series.starts_with("turnpike_thread_busy_seconds_total");
        let stable = |samples: std::collections::BTreeMap<String, f64>| {
            samples
                .into_iter()
                .filter(|(series, _)| !volatile(series))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let mut last = stable(self.samples());
        loop {
            std::thread::sleep(Duration::from_millis(400));
            let now = stable(self.samples());
            if now == last {
                return now;
            }
            assert!(Instant::now() < deadline, "/metrics did not settle");
            last = now;
        }
    }

    /// The value of `series` on /metrics now: `name` or `name{label="value",...}`, summed over
    /// every sample of that name whose labels include the given ones (so
    /// `turnpike_relayed_packets_total{direction="client_to_peer"}` adds up both paths).
    ///
    /// Panics when no sample matches: a misspelt or removed series must fail the test, not
    /// read as 0. The relay threads publish four times a second; to wait for a value, use
    /// [`Relay::metric_until`].
    pub fn metric(&self, series: &str) -> u64 {
        let samples = self.samples();
        sum_matching(&samples, series)
            .unwrap_or_else(|| panic!("no series {series} on /metrics: {}", names(&samples)))
    }

    /// Polls `series` (see [`Relay::metric`]) until `accept` holds, at most [`METRIC_WAIT`];
    /// returns the accepted value, or panics with the series and its last value. A series
    /// with labels appears on its first event (`turnpike_responses_total{code="438"}`, say):
    /// until then it is waited for like a value, and is still missing at the deadline.
    pub fn metric_until(&self, series: &str, accept: impl Fn(u64) -> bool) -> u64 {
        let deadline = Instant::now() + METRIC_WAIT;
        loop {
            let samples = self.samples();
            let value = sum_matching(&samples, series);
            if let Some(value) = value
                && accept(value)
            {
                return value;
            }
            if Instant::now() >= deadline {
                match value {
                    Some(value) => panic!(
                        "{series} stayed at {value} for {METRIC_WAIT:?}, never reaching the expected value"
                    ),
                    None => panic!(
                        "no series {series} on /metrics within {METRIC_WAIT:?}: {}",
                        names(&samples)
                    ),
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls until `ready` holds on the relay, at most `within`; panics naming `what` otherwise.
    pub fn until(&self, within: Duration, what: &str, mut ready: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + within;
        while !ready(self) {
            assert!(Instant::now() < deadline, "not within {within:?}: {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn server(&self, ip: &str) -> String {
        SocketAddr::new(ip.parse().unwrap(), self.listen_port).to_string()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long [`Relay::metric_until`] waits: forty publish periods, for a loaded machine.
pub const METRIC_WAIT: Duration = Duration::from_secs(10);

/// Splits `name{a="x",b="y"}` into its name and labels (values may not contain `,` or `}`,
/// which holds for every label the relay publishes).
fn parse_series(series: &str) -> (&str, Vec<&str>) {
    match series.split_once('{') {
        Some((name, labels)) => (
            name,
            labels
                .trim_end_matches('}')
                .split(',')
                .filter(|label| !label.is_empty())
                .collect(),
        ),
        None => (series.trim(), Vec::new()),
    }
}

/// The sum of the samples of `query`'s name carrying all of its labels; `None` when none does.
fn sum_matching(samples: &std::collections::BTreeMap<String, f64>, query: &str) -> Option<u64> {
    let (name, labels) = parse_series(query);
    let mut matched = false;
    let mut total = 0.0;
    for (series, value) in samples {
        let (sample_name, sample_labels) = parse_series(series);
        if sample_name == name && labels.iter().all(|label| sample_labels.contains(label)) {
            matched = true;
            total += value;
        }
    }
    #[expect(
        clippy::cast_possible_truncation,
        reason = "counters and gauges here are whole numbers well below 2^53"
    )]
    let total = total as u64;
    matched.then_some(total)
}

/// The distinct sample names, for a panic message.
fn names(samples: &std::collections::BTreeMap<String, f64>) -> String {
    let mut names: Vec<&str> = samples
        .keys()
        .map(|series| parse_series(series).0)
        .collect();
    names.dedup();
    names.join(" ")
}

pub fn rest_credentials(expiry_offset: i64) -> (String, String) {
    use base64::Engine as _;
    use hmac::Mac as _;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let username = format!("{}:interop", now.saturating_add_signed(expiry_offset));
    let mut mac = <hmac::Hmac<sha1::Sha1> as hmac::Mac>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    (
        username,
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()),
    )
}

/// An echo peer on 127.0.0.1, running until `stop` is set.
pub fn echo_peer(stop: &std::sync::Arc<std::sync::atomic::AtomicBool>) -> SocketAddr {
    turnpike_load::echo::spawn(
        "127.0.0.1:0".parse().unwrap(),
        1,
        std::sync::Arc::clone(stop),
        std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)),
    )
    .unwrap()
}

/// An allocation on `server` for `user` (REST credentials valid for an hour), from a new socket
/// on 127.0.0.1, with the load generator's channel bound to `peer`.
pub fn allocate(
    server: SocketAddr,
    peer: SocketAddr,
    user: &str,
) -> anyhow::Result<turnpike_load::turn_client::Allocation> {
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let (username, password) = turnpike_load::turn_client::rest_credentials(SECRET, user, expiry);
    turnpike_load::turn_client::allocate_and_bind(
        "127.0.0.1:0".parse().unwrap(),
        server,
        &username,
        &password,
        peer,
        turnpike_load::run::CHANNEL,
    )
}

/// A request an [`http_server`] received: its method, its path and its body.
#[derive(Debug)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// A minimal HTTP/1.1 server on loopback, for the test's own side of a conversation (a page a
/// browser loads, a collector a relay reports to): `respond` gives each request's content type
/// and body (status 200), and every request is handed to the returned receiver. Runs on its own
/// thread until the receiver is dropped.
pub fn http_server(
    respond: impl Fn(&HttpRequest) -> (&'static str, String) + Send + 'static,
) -> (SocketAddr, std::sync::mpsc::Receiver<HttpRequest>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut length = 0;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length.min(1 << 20)];
            let _ = reader.read_exact(&mut body);
            let mut words = request_line.split_whitespace();
            let request = HttpRequest {
                method: words.next().unwrap_or("").to_owned(),
                path: words.next().unwrap_or("").to_owned(),
                body,
            };
            let (content_type, answer) = respond(&request);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
            if sender.send(request).is_err() {
                return;
            }
        }
    });
    (address, receiver)
}
