//! TURN over TCP and TLS against a real `turnpike` process on loopback: coturn's
//! `turnutils_uclient` and the load generator's client over both transports and both address
//! families, the allocation going with its connection, and every defence of the public stream
//! listeners (connection caps, handshake, idle and partial-message timers, malformed and
//! oversized frames, a client that does not read, certificate checks and reload). Every wait
//! is bounded.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail by panicking"
)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use common::{Relay, SECRET, rest_credentials};
use turnpike_load::run::Progress;
use turnpike_load::stream_client::{self, StreamAllocation, StreamTransport};
use turnpike_proto::{Class, Message, MessageEncoder, MessageType, Method, TransactionId};

/// A CA, a server certificate it signed for localhost, 127.0.0.1 and ::1, and their files.
struct Certificates {
    dir: PathBuf,
    ca: PathBuf,
    chain: PathBuf,
    key: PathBuf,
}

impl Certificates {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("turnpike-streams-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let certificates = Self {
            ca: dir.join("ca.pem"),
            chain: dir.join("chain.pem"),
            key: dir.join("key.pem"),
            dir,
        };
        certificates.issue("turnpike test server", false);
        certificates
    }

    /// Writes a new CA and server certificate (expired ones if `expired`), named `name`.
    fn issue(&self, name: &str, expired: bool) {
        self.issue_valid(name, expired.then_some(((2020, 1, 1), (2021, 1, 1))));
    }

    /// Writes a new CA and server certificate named `name`, valid from and until the given
    /// days (year, month, day; rcgen's default period when `None`).
    fn issue_valid(&self, name: &str, validity: Option<(Day, Day)>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])
        .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        if let Some(((from_y, from_m, from_d), (until_y, until_m, until_d))) = validity {
            params.not_before = rcgen::date_time_ymd(from_y, from_m, from_d);
            params.not_after = rcgen::date_time_ymd(until_y, until_m, until_d);
        }
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(&self.ca, ca.pem()).unwrap();
        std::fs::write(&self.chain, format!("{}{}", cert.pem(), ca.pem())).unwrap();
        std::fs::write(&self.key, key.serialize_pem()).unwrap();
    }

    fn transport(&self, ip: &str) -> StreamTransport {
        StreamTransport::Tls {
            config: stream_client::tls_config(Some(&self.ca)).unwrap(),
            server_name: rustls::pki_types::ServerName::IpAddress(
                ip.parse::<std::net::IpAddr>().unwrap().into(),
            ),
        }
    }
}

/// A calendar day: year, month, day of the month.
type Day = (i32, u8, u8);

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The TLS port of a relay started with [`tls_relay`]: the spare fourth port of the test's set.
fn tls_port(relay: &Relay) -> u16 {
    relay.listen_port + 3
}

fn tls_relay(certificates: &Certificates, extra: &[&str]) -> Relay {
    let mut args = vec![
        // `{tls}` is the test's spare port (see `Relay::start`).
        "--listen-tls=127.0.0.1:{tls},[::1]:{tls}".to_owned(),
        format!("--tls-cert={}", certificates.chain.display()),
        format!("--tls-key={}", certificates.key.display()),
    ];
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Relay::start(&args)
}

/// An echo peer on `ip`, running until `stop` is set.
fn echo_peer(ip: &str, stop: &Arc<AtomicBool>) -> SocketAddr {
    turnpike_load::echo::spawn(
        SocketAddr::new(ip.parse().unwrap(), 0),
        1,
        Arc::clone(stop),
        Arc::new(AtomicU64::new(0)),
    )
    .unwrap()
}

fn open(
    server: SocketAddr,
    transport: &StreamTransport,
    user: &str,
    peer: SocketAddr,
) -> StreamAllocation {
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let (username, password) = turnpike_load::turn_client::rest_credentials(SECRET, user, expiry);
    StreamAllocation::open(server, transport, &username, &password, peer, 0x4000)
        .unwrap_or_else(|error| panic!("allocation over {server}: {error:#}"))
}

/// `count` ChannelData round trips through `allocation`, each checked byte for byte.
fn round_trips(allocation: &mut StreamAllocation, count: usize, size: usize) {
    for index in 0..count {
        let payload: Vec<u8> = (0..size)
            .map(|byte| u8::try_from((byte + index) % 256).unwrap())
            .collect();
        allocation.send_channel_data(0x4000, &payload).unwrap();
        let echoed = allocation
            .recv(Duration::from_secs(5))
            .unwrap()
            .expect("the echo came back in time");
        assert_eq!(&echoed[..2], &[0x40, 0x00]);
        assert_eq!(&echoed[4..], &payload[..], "round trip {index}");
    }
}

/// A series from /metrics that must exist (a renamed series fails the test instead of reading
/// as zero), polled until `accept` holds or 10 s have passed.
fn metric_until(relay: &Relay, series: &str, accept: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = relay.get("/metrics").expect("metrics");
        let value = body
            .lines()
            .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
            .and_then(|line| line.rsplit(' ').next())
            .unwrap_or_else(|| panic!("no series {series} on /metrics"))
            .parse()
            .unwrap();
        if accept(value) || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_load_client_relays_over_tcp_and_tls_on_both_families_and_connections_end_allocations() {
    let certificates = Certificates::new("load");
    let relay = tls_relay(&certificates, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    for ip in ["127.0.0.1", "::1"] {
        let peer = echo_peer(ip, &stop);
        let tcp_server = SocketAddr::new(ip.parse().unwrap(), relay.listen_port);
        let tls_server = SocketAddr::new(ip.parse().unwrap(), tls_port(&relay));
        let mut over_tcp = open(tcp_server, &StreamTransport::Tcp, "tcp", peer);
        let mut over_tls = open(tls_server, &certificates.transport(ip), "tls", peer);
        // Plain TCP on the TLS port, told apart by its first byte.
        let mut tcp_on_tls_port = open(tls_server, &StreamTransport::Tcp, "mixed", peer);
        assert_eq!(over_tls.relayed.ip(), peer.ip());
        // Sizes that need every amount of padding, up to a full-size media packet.
        for size in [1, 2, 3, 4, 97, 1200] {
            round_trips(&mut over_tcp, 5, size);
            round_trips(&mut over_tls, 5, size);
            round_trips(&mut tcp_on_tls_port, 5, size);
        }
        assert_eq!(metric_until(&relay, "turnpike_allocations", |n| n == 3), 3);
        // Closing a connection deletes its allocation at once; Refresh is not needed.
        drop(over_tcp);
        drop(over_tls);
        assert_eq!(metric_until(&relay, "turnpike_allocations", |n| n == 1), 1);
        tcp_on_tls_port.release().unwrap();
        assert_eq!(metric_until(&relay, "turnpike_allocations", |n| n == 0), 0);
    }
    let tcp = metric_until(
        &relay,
        "turnpike_stream_messages_received_total{transport=\"tcp\"}",
        |n| n >= 4 * 30,
    );
    let tls = metric_until(
        &relay,
        "turnpike_stream_messages_received_total{transport=\"tls\"}",
        |n| n >= 2 * 30,
    );
    assert!(tcp >= 4 * 30 && tls >= 2 * 30, "tcp {tcp} tls {tls}");
    assert_eq!(
        metric_until(
            &relay,
            "turnpike_stream_connections{transport=\"tcp\"}",
            |n| n == 0
        ),
        0
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Runs coturn's test client; returns its output, asserting it finished without loss.
fn uclient(args: &[&str]) -> String {
    let (username, password) = rest_credentials(3600);
    let output = Command::new("timeout")
        .arg("30")
        .arg("turnutils_uclient")
        .args(["-u", &username, "-w", &password])
        .args(args)
        .output()
        .expect("turnutils_uclient runs (coturn is installed by scripts/setup.sh)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let line = text
        .lines()
        .find(|line| line.contains("Total lost packets"))
        .unwrap_or_else(|| panic!("uclient did not finish: {text}"));
    assert!(line.contains("Total lost packets 0 (0.000000%)"), "{line}");
    text
}

struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn coturn_peer(ip: &str, port: u16) -> Reaper {
    let child = Command::new("turnutils_peer")
        .args(["-L", ip, "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("turnutils_peer runs");
    // Ready when its port answers: a datagram to it comes back.
    let probe = UdpSocket::bind(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let target = SocketAddr::new(ip.parse().unwrap(), port);
    for _ in 0..50 {
        let _ = probe.send_to(b"ping", target);
        if probe.recv_from(&mut [0; 16]).is_ok() {
            break;
        }
    }
    Reaper(child)
}

// coturn's client numbers channels anywhere in 0x4000-0x7FFF (RFC 5766), of which this relay
// takes 0x4000-0x4FFF, so these runs use Send and Data indications (-s); -c asks for no RTCP
// port pair.

#[test]
fn coturn_client_relays_over_tcp_on_ipv4_and_ipv6() {
    let relay = Relay::start(&[]);
    for ip in ["127.0.0.1", "::1"] {
        let _peer = coturn_peer(ip, relay.peer_port);
        uclient(&[
            "-t",
            "-c",
            "-s",
            "-n",
            "30",
            "-m",
            "2",
            "-l",
            "500",
            "-e",
            ip,
            "-r",
            &relay.peer_port.to_string(),
            "-p",
            &relay.listen_port.to_string(),
            ip,
        ]);
    }
    assert!(
        metric_until(
            &relay,
            "turnpike_stream_connections_accepted_total{transport=\"tcp\"}",
            |n| n >= 4
        ) >= 4
    );
    assert_eq!(metric_until(&relay, "turnpike_allocations", |n| n == 0), 0);
}

#[test]
fn coturn_client_relays_over_tls_on_ipv4_and_ipv6() {
    let certificates = Certificates::new("uclient");
    let relay = tls_relay(&certificates, &[]);
    for ip in ["127.0.0.1", "::1"] {
        let _peer = coturn_peer(ip, relay.peer_port);
        uclient(&[
            "-t",
            "-S",
            "-c",
            "-s",
            "-n",
            "30",
            "-m",
            "2",
            "-l",
            "500",
            "-e",
            ip,
            "-r",
            &relay.peer_port.to_string(),
            "-p",
            &tls_port(&relay).to_string(),
            ip,
        ]);
    }
    assert!(
        metric_until(
            &relay,
            "turnpike_stream_connections_accepted_total{transport=\"tls\"}",
            |n| n >= 4
        ) >= 4
    );
}

/// Connects and sends a Binding request, returning the stream once it is answered (so the relay
/// has accepted and counted the connection).
fn bound_connection(server: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(2)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(&binding_request()).unwrap();
    let mut header = [0u8; 20];
    stream.read_exact(&mut header).unwrap();
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let mut body = vec![0; length];
    stream.read_exact(&mut body).unwrap();
    let mut whole = header.to_vec();
    whole.extend_from_slice(&body);
    let response = Message::parse(&whole).unwrap();
    assert_eq!(response.class(), Class::SuccessResponse);
    stream
}

fn binding_request() -> Vec<u8> {
    let mut buf = vec![0; 64];
    let mut encoder = MessageEncoder::new(
        &mut buf,
        MessageType::new(Method::Binding, Class::Request),
        TransactionId([9; 12]),
    )
    .unwrap();
    encoder.push_fingerprint().unwrap();
    let len = encoder.finish();
    buf.truncate(len);
    buf
}

/// Waits (at most `within`) for the relay to close `stream`: a read returns end of file or a
/// reset.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        stream
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(10)),
            ))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn connections_over_the_caps_are_closed_at_once() {
    let relay = Relay::start(&["--max-connections=3", "--max-connections-per-source=2"]);
    let v4 = SocketAddr::from(([127, 0, 0, 1], relay.listen_port));
    let v6: SocketAddr = format!("[::1]:{}", relay.listen_port).parse().unwrap();
    let _first = bound_connection(v4);
    let _second = bound_connection(v4);
    let mut third = TcpStream::connect(v4).unwrap();
    assert!(closed_within(&mut third, Duration::from_secs(5)));
    let _other_source = bound_connection(v6);
    let mut over_total = TcpStream::connect(v6).unwrap();
    assert!(closed_within(&mut over_total, Duration::from_secs(5)));
    assert!(
        metric_until(
            &relay,
            "turnpike_stream_connections_refused_total{reason=\"max_connections_per_source\"}",
            |n| n >= 1
        ) >= 1
    );
    assert!(
        metric_until(
            &relay,
            "turnpike_stream_connections_refused_total{reason=\"max_connections\"}",
            |n| n >= 1
        ) >= 1
    );
    // A place freed is a place to take again.
    drop(_first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut stream = TcpStream::connect(v4).unwrap();
        stream.write_all(&binding_request()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        if stream.read(&mut [0; 64]).is_ok_and(|read| read > 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was never given back"
        );
    }
}

#[test]
fn silent_handshakes_idle_connections_and_partial_messages_time_out() {
    let certificates = Certificates::new("timers");
    let relay = tls_relay(
        &certificates,
        &[
            "--tls-handshake-timeout=1",
            "--stream-idle-timeout=1",
            "--stream-frame-timeout=1",
        ],
    );
    let tls = SocketAddr::from(([127, 0, 0, 1], tls_port(&relay)));
    let tcp = SocketAddr::from(([127, 0, 0, 1], relay.listen_port));
    // A TLS client that never finishes its handshake (one byte of a record).
    let mut silent = TcpStream::connect(tls).unwrap();
    silent.write_all(&[0x16]).unwrap();
    // A connection that asked one question and then sat there without an allocation.
    let mut idle = bound_connection(tcp);
    // Slowloris: a message trickled in one byte at a time, never finished.
    let mut slow = TcpStream::connect(tcp).unwrap();
    let request = binding_request();
    let started = Instant::now();
    let mut slow_closed = false;
    for byte in &request[..10] {
        if slow.write_all(&[*byte]).is_err() {
            slow_closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(slow_closed || closed_within(&mut slow, Duration::from_secs(5)));
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(closed_within(&mut silent, Duration::from_secs(5)));
    assert!(closed_within(&mut idle, Duration::from_secs(5)));
    for reason in ["handshake_timeout", "idle_timeout", "frame_timeout"] {
        let series = format!("turnpike_stream_connections_closed_total{{reason=\"{reason}\"}}");
        assert!(metric_until(&relay, &series, |n| n >= 1) >= 1, "{reason}");
    }
}

#[test]
fn a_connection_with_an_allocation_outlives_the_idle_timeout() {
    let relay = Relay::start(&["--stream-idle-timeout=1"]);
    let stop = Arc::new(AtomicBool::new(false));
    let peer = echo_peer("127.0.0.1", &stop);
    let server = SocketAddr::from(([127, 0, 0, 1], relay.listen_port));
    let mut allocation = open(server, &StreamTransport::Tcp, "quiet", peer);
    std::thread::sleep(Duration::from_secs(3));
    round_trips(&mut allocation, 3, 100);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}

#[test]
fn malformed_and_oversized_frames_close_only_their_connection() {
    let relay = Relay::start(&["--stream-max-message=2048"]);
    let stop = Arc::new(AtomicBool::new(false));
    let peer = echo_peer("127.0.0.1", &stop);
    let server = SocketAddr::from(([127, 0, 0, 1], relay.listen_port));
    let mut bystander = open(server, &StreamTransport::Tcp, "bystander", peer);
    let cases: [(&str, Vec<u8>); 4] = [
        ("malformed_frame", vec![0xFF; 8]),
        ("malformed_frame", b"POST / HTTP/1.1\r\n\r\n".to_vec()),
        // A STUN header without the magic cookie.
        ("malformed_frame", vec![0, 1, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0]),
        // ChannelData claiming 60,000 bytes.
        ("oversized_frame", vec![0x40, 0x00, 0xEA, 0x60]),
    ];
    for (reason, bytes) in &cases {
        let mut stream = bound_connection(server);
        stream.write_all(bytes).unwrap();
        assert!(
            closed_within(&mut stream, Duration::from_secs(5)),
            "{reason}: {bytes:02x?}"
        );
    }
    assert!(
        metric_until(
            &relay,
            "turnpike_stream_connections_closed_total{reason=\"malformed_frame\"}",
            |n| n >= 3
        ) >= 3
    );
    assert!(
        metric_until(
            &relay,
            "turnpike_stream_connections_closed_total{reason=\"oversized_frame\"}",
            |n| n >= 1
        ) >= 1
    );
    round_trips(&mut bystander, 5, 100);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}

#[test]
fn a_client_that_does_not_read_loses_its_data_and_nobody_else_waits() {
    let relay = Relay::start(&["--stream-write-buffer=65536"]);
    let stop = Arc::new(AtomicBool::new(false));
    let server = SocketAddr::from(([127, 0, 0, 1], relay.listen_port));
    // The stalled client's peer: a socket that floods the relayed address once bound.
    let flooder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let stalled = open(
        server,
        &StreamTransport::Tcp,
        "stalled",
        flooder.local_addr().unwrap(),
    );
    let relayed = stalled.relayed;
    let peer = echo_peer("127.0.0.1", &stop);
    let mut reader = open(server, &StreamTransport::Tcp, "reader", peer);
    let flood = std::thread::spawn(move || {
        let datagram = [7u8; 1000];
        for _ in 0..40_000 {
            let _ = flooder.send_to(&datagram, relayed);
        }
    });
    // While the flood fills the stalled connection, the other client relays as usual.
    let progress = Progress::default();
    let measured = stream_client::round_trips(
        &mut reader,
        0x4000,
        200,
        4,
        Instant::now() + Duration::from_secs(2),
        true,
        &AtomicBool::new(false),
        &progress,
    )
    .unwrap();
    flood.join().unwrap();
    assert!(measured.received > 100, "{measured:?}");
    assert_eq!(
        measured.sent, measured.received,
        "the reading client lost nothing"
    );
    assert!(
        metric_until(&relay, "turnpike_stream_dropped_messages_total", |n| n > 0) > 0,
        "the stalled client's buffer overflowed"
    );
    // What the relay holds for the stalled client stays within its write buffer (plus one
    // partial frame at most).
    let buffered = metric_until(&relay, "turnpike_stream_buffered_bytes", |_| true);
    assert!(buffered <= 65536 + 4096, "{buffered} bytes buffered");
    drop(stalled);
    assert_eq!(
        metric_until(&relay, "turnpike_stream_buffered_bytes", |n| n == 0),
        0
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Starts the relay binary with `args`, expecting it to refuse; returns what it printed.
fn refused_start(args: &[String]) -> String {
    let (listen, admin, _, relay_low) = common::ports();
    let args: Vec<String> = args
        .iter()
        .map(|arg| arg.replace("{tls}", &(listen + 3).to_string()))
        .collect();
    let output = Command::new("timeout")
        .arg("20")
        .arg(env!("CARGO_BIN_EXE_turnpike"))
        .args([
            format!("--listen=127.0.0.1:{listen}"),
            format!("--relay-ports={relay_low}-{}", relay_low + 9),
            format!("--admin-listen=127.0.0.1:{admin}"),
        ])
        .args(&args)
        .env("TURNPIKE_SECRETS", SECRET)
        .output()
        .unwrap();
    assert!(!output.status.success(), "started with {args:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn unusable_certificates_stop_the_start_and_name_the_setting() {
    let good = Certificates::new("start-good");
    let other = Certificates::new("start-other");
    let expired = Certificates::new("start-expired");
    expired.issue("expired", true);
    let tls = |chain: &Path, key: &Path| {
        vec![
            "--listen-tls=127.0.0.1:{tls}".to_owned(),
            format!("--tls-cert={}", chain.display()),
            format!("--tls-key={}", key.display()),
        ]
    };
    let missing = good.dir.join("missing.pem");
    for (args, expected) in [
        (tls(&missing, &good.key), "tls-cert"),
        (tls(&good.chain, &missing), "tls-key"),
        (tls(&good.key, &good.key), "tls-cert"),
        (tls(&good.chain, &other.key), "tls-key"),
        (tls(&expired.chain, &expired.key), "expired"),
    ] {
        let stderr = refused_start(&args);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// The common name of the certificate `server` presents on a new TLS connection.
fn presented_name(server: SocketAddr) -> Option<String> {
    let config = stream_client::tls_config(None).unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(server.ip().into());
    let mut connection = rustls::ClientConnection::new(config, name).unwrap();
    let mut tcp = TcpStream::connect_timeout(&server, Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while connection.is_handshaking() {
        connection.complete_io(&mut tcp).ok()?;
    }
    let leaf = connection.peer_certificates()?.first()?.clone();
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let common_name = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(common_name)
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections_and_keeps_the_old_on_error() {
    let certificates = Certificates::new("reload");
    let valid_until = |year, month| Some(((2024, 1, 1), (year, month, 1)));
    certificates.issue_valid("first", valid_until(2040, 1));
    let relay = tls_relay(&certificates, &[]);
    // 2040-01-01 and 2041-06-01, 00:00 UTC.
    let (first_expiry, second_expiry) = (2_208_988_800, 2_253_657_600);
    assert_eq!(
        relay.metric("turnpike_tls_certificate_expiry_seconds "),
        first_expiry
    );
    let stop = Arc::new(AtomicBool::new(false));
    let peer = echo_peer("127.0.0.1", &stop);
    let server = SocketAddr::from(([127, 0, 0, 1], tls_port(&relay)));
    assert_eq!(presented_name(server).as_deref(), Some("first"));
    let mut established = open(server, &certificates.transport("127.0.0.1"), "old", peer);

    certificates.issue_valid("second", valid_until(2041, 6));
    let hangup = || {
        let status = Command::new("kill")
            .args(["-HUP", &relay.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    hangup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while presented_name(server).as_deref() != Some("second") {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The connection made before the reload goes on undisturbed.
    round_trips(&mut established, 5, 100);
    assert_eq!(
        relay.metric("turnpike_tls_certificate_expiry_seconds "),
        second_expiry
    );
    let status: serde_json::Value =
        serde_json::from_str(&relay.get_body("/status").unwrap()).unwrap();
    assert_eq!(
        status["tls_certificate_expiry_unix"], second_expiry,
        "/status"
    );

    // A broken pair is refused and the good one keeps serving.
    std::fs::write(&certificates.key, "not a key").unwrap();
    hangup();
    std::thread::sleep(Duration::from_millis(500));
    assert!(relay.get("/healthz").is_some(), "the relay survived SIGHUP");
    assert_eq!(presented_name(server).as_deref(), Some("second"));
    round_trips(&mut established, 5, 100);
    assert_eq!(
        relay.metric("turnpike_tls_certificate_expiry_seconds "),
        second_expiry,
        "the expiry of the certificate still served"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}
