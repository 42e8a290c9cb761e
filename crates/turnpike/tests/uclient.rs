//! Every mode of coturn's `turnutils_uclient` against a real `turnpike` process on loopback
//! (issue 13): channels with and without the RTCP allocation (EVEN-PORT with the R bit, then
//! RESERVATION-TOKEN), Send and Data indications, dual allocations (`-Z`, which asks with the
//! drafts' ADDITIONAL-ADDRESS-FAMILY code point), IPv6 and mixed families, client to client,
//! extra requests and padding, over IPv4 and IPv6 loopback. Each run must lose nothing.
//!
//! uclient numbers channels anywhere in 0x4000-0x7FFF (RFC 5766), so the relays of the runs
//! with channels take `--rfc5766-channel-numbers`. Every wait is bounded: uclient runs under
//! `timeout`, the peer is waited for at most 5 s.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail by panicking"
)]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Relay, rest_credentials};

const RFC5766_CHANNELS: &str = "--rfc5766-channel-numbers";

/// Runs uclient against `relay` with `-v` and `args`; returns its output once it has reported
/// its totals, or panics with the output.
fn uclient(relay: &Relay, args: &[&str]) -> String {
    let (username, password) = rest_credentials(3600);
    let output = Command::new("timeout")
        .arg("30")
        .arg("turnutils_uclient")
        .args([
            "-v",
            "-u",
            &username,
            "-w",
            &password,
            "-p",
            &relay.listen_port.to_string(),
        ])
        .args(args)
        .output()
        .expect("turnutils_uclient runs (coturn is installed by scripts/setup.sh)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && text.contains("Total lost packets"),
        "uclient {args:?} failed ({}): {text}",
        output.status
    );
    text
}

/// Asserts the run lost nothing and every request it needed was answered with success.
fn assert_no_loss(output: &str) {
    let line = output
        .lines()
        .find(|line| line.contains("Total lost packets"))
        .unwrap_or_else(|| panic!("{output}"));
    assert!(
        line.contains("Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)"),
        "{line}\n{output}"
    );
}

/// The relayed addresses uclient received, in order, each with whether its answer carried a
/// RESERVATION-TOKEN (uclient prints `rtv=` with the token after each allocation; 0 for none).
fn allocations(output: &str) -> Vec<(SocketAddr, bool)> {
    let mut allocations = Vec::new();
    let mut relayed = None;
    for line in output.lines() {
        if let Some((_, address)) = line.split_once("Received relay addr: ") {
            // IPv6 addresses come without brackets: `::1:50000`.
            let (ip, port) = address.trim().rsplit_once(':').unwrap();
            relayed = Some(SocketAddr::new(ip.parse().unwrap(), port.parse().unwrap()));
        } else if let Some((_, token)) = line.split_once("rtv=") {
            let token: u64 = token.trim().parse().unwrap();
            allocations.push((relayed.take().expect("an address before rtv"), token != 0));
        }
    }
    allocations
}

/// Asserts that every allocation answered with a RESERVATION-TOKEN got an even port and that
/// the allocation after it (made with the token) got the next port; returns the pairs seen.
fn assert_even_port_pairs(output: &str) -> usize {
    let allocations = allocations(output);
    let mut pairs = 0;
    for (index, (address, reserved)) in allocations.iter().enumerate() {
        if !reserved {
            continue;
        }
        assert_eq!(address.port() % 2, 0, "{address} reserved the next port");
        if let Some((next, _)) = allocations.get(index + 1) {
            assert_eq!(
                *next,
                SocketAddr::new(address.ip(), address.port() + 1),
                "the token allocates the reserved port: {allocations:?}"
            );
            pairs += 1;
        }
    }
    pairs
}

/// Refusals counted for `reason` once the metrics have settled, 0 without any.
fn refusals(relay: &Relay, reason: &str) -> f64 {
    refusals_in(&relay.settled_samples(Duration::from_secs(10)), reason)
}

fn refusals_in(samples: &std::collections::BTreeMap<String, f64>, reason: &str) -> f64 {
    let label = format!("reason=\"{reason}\"");
    samples
        .iter()
        .filter(|(series, _)| {
            series.starts_with("turnpike_refusals_total") && series.contains(&label)
        })
        .map(|(_, value)| value)
        .sum()
}

/// Asserts the relay refused nothing a well-behaved client asked for: no bad channel number,
/// no bad reservation token, no unknown attribute, no lack of ports.
fn assert_nothing_refused_by_mistake(relay: &Relay) {
    let samples = relay.settled_samples(Duration::from_secs(10));
    for reason in [
        "bad_channel_number",
        "bad_reservation_token",
        "unknown_attribute",
        "no_relay_port",
        "malformed_attribute",
        "conflicting_attributes",
    ] {
        assert_eq!(refusals_in(&samples, reason), 0.0, "{reason}");
    }
}

/// coturn's echo peer on `ip`, bound to `port` and `port + 1` (the RTCP peer), once bound
/// (within 5 s).
fn coturn_peer(ip: &str, port: u16) -> Reaper {
    let mut child = Command::new("turnutils_peer")
        .args(["-L", ip, "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("turnutils_peer runs");
    let deadline = Instant::now() + Duration::from_secs(5);
    for port in [port, port + 1] {
        let address = SocketAddr::new(ip.parse().unwrap(), port);
        // Bound once this process can no longer bind the same address.
        while std::net::UdpSocket::bind(address).is_ok() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("turnutils_peer exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "turnutils_peer did not bind {address}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Reaper(child)
}

struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs uclient towards a coturn peer on `peer_ip`, through the relay at `server_ip`.
fn to_peer(relay_flags: &[&str], peer_ip: &str, server_ip: &str, args: &[&str]) -> (Relay, String) {
    let relay = Relay::start(relay_flags);
    let peer_port = relay.peer_port.to_string();
    let _peer = coturn_peer(peer_ip, relay.peer_port);
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-e", peer_ip, "-r", &peer_port, server_ip]);
    let output = uclient(&relay, &all);
    assert_no_loss(&output);
    (relay, output)
}

// Channels, with and without the RTCP allocation

#[test]
fn channels_and_even_port_pairs_over_ipv4() {
    let (relay, output) = to_peer(
        &[RFC5766_CHANNELS],
        "127.0.0.1",
        "127.0.0.1",
        &["-n", "30", "-m", "2"],
    );
    assert!(assert_even_port_pairs(&output) >= 1, "{output}");
    relay.metric_until(
        "turnpike_responses_total{method=\"channel_bind\",code=\"0\"}",
        |count| count >= 2,
    );
    relay.metric_until(
        "turnpike_relayed_packets_total{direction=\"client_to_peer\"}",
        |count| count >= 60,
    );
    assert_nothing_refused_by_mistake(&relay);
}

#[test]
fn channels_without_rtcp_over_ipv4() {
    let (relay, output) = to_peer(
        &[RFC5766_CHANNELS],
        "127.0.0.1",
        "127.0.0.1",
        &["-c", "-n", "30", "-m", "2"],
    );
    assert_eq!(assert_even_port_pairs(&output), 0, "-c reserves nothing");
    relay.metric_until(
        "turnpike_responses_total{method=\"channel_bind\",code=\"0\"}",
        |count| count >= 2,
    );
    assert_nothing_refused_by_mistake(&relay);
}

#[test]
fn channels_and_even_port_pairs_over_ipv6() {
    let (relay, output) = to_peer(&[RFC5766_CHANNELS], "::1", "::1", &["-n", "30", "-m", "2"]);
    assert!(assert_even_port_pairs(&output) >= 1, "{output}");
    assert!(
        allocations(&output)
            .iter()
            .all(|(address, _)| address.is_ipv6())
    );
    assert_nothing_refused_by_mistake(&relay);
}

// Send and Data indications

#[test]
fn indications_and_even_port_pairs_over_ipv4() {
    // No channels: RFC 8656's channel numbers are enough.
    let (relay, output) = to_peer(
        &[],
        "127.0.0.1",
        "127.0.0.1",
        &["-s", "-n", "30", "-m", "2"],
    );
    assert!(assert_even_port_pairs(&output) >= 1, "{output}");
    relay.metric_until(
        "turnpike_relayed_indication_packets_total{direction=\"peer_to_client\"}",
        |count| count >= 60,
    );
    assert_nothing_refused_by_mistake(&relay);
}

#[test]
fn indications_without_rtcp_over_ipv6() {
    let (relay, _) = to_peer(&[], "::1", "::1", &["-c", "-s", "-n", "30"]);
    relay.metric_until(
        "turnpike_relayed_indication_packets_total{direction=\"client_to_peer\"}",
        |count| count >= 30,
    );
    assert_nothing_refused_by_mistake(&relay);
}

// Dual allocations

#[test]
fn dual_allocations_with_indications() {
    // uclient asks with ADDITIONAL-ADDRESS-FAMILY at 0x8032 and refreshes one family or both
    // at random: each refresh must find the family there.
    let (relay, output) = to_peer(&[], "127.0.0.1", "127.0.0.1", &["-Z", "-s", "-n", "20"]);
    assert!(!output.contains("error 443"), "{output}");
    assert_nothing_refused_by_mistake(&relay);
    assert_eq!(refusals(&relay, "peer_address_family_mismatch"), 0.0);
}

#[test]
fn dual_allocations_with_channels_over_ipv6() {
    let (relay, _) = to_peer(
        &[RFC5766_CHANNELS],
        "::1",
        "::1",
        &["-Z", "-n", "20", "-m", "2"],
    );
    assert_nothing_refused_by_mistake(&relay);
    assert_eq!(refusals(&relay, "peer_address_family_mismatch"), 0.0);
}

// Mixed families: the client reaches the relay over one family, the peer is of the other

#[test]
fn an_ipv4_client_relays_to_an_ipv6_peer() {
    let (relay, output) = to_peer(&[RFC5766_CHANNELS], "::1", "127.0.0.1", &["-n", "20"]);
    assert!(
        allocations(&output)
            .iter()
            .all(|(address, _)| address.is_ipv6()),
        "{output}"
    );
    assert_nothing_refused_by_mistake(&relay);
}

#[test]
fn an_ipv6_client_relays_to_an_ipv4_peer() {
    let (relay, output) = to_peer(&[RFC5766_CHANNELS], "127.0.0.1", "::1", &["-n", "20"]);
    assert!(
        allocations(&output)
            .iter()
            .all(|(address, _)| address.is_ipv4()),
        "{output}"
    );
    assert_nothing_refused_by_mistake(&relay);
}

// Client to client

fn client_to_client(server_ip: &str, args: &[&str]) -> (Relay, String) {
    let relay = Relay::start(&[RFC5766_CHANNELS]);
    let mut all = vec!["-y"];
    all.extend_from_slice(args);
    all.push(server_ip);
    let output = uclient(&relay, &all);
    assert_no_loss(&output);
    assert_nothing_refused_by_mistake(&relay);
    (relay, output)
}

#[test]
fn clients_relay_to_each_other_with_channels_and_pairs() {
    let (_, output) = client_to_client("127.0.0.1", &["-n", "30", "-m", "2"]);
    assert!(assert_even_port_pairs(&output) >= 1, "{output}");
}

#[test]
fn clients_relay_to_each_other_without_rtcp() {
    client_to_client("127.0.0.1", &["-c", "-n", "30", "-m", "2"]);
}

#[test]
fn clients_relay_to_each_other_with_indications() {
    client_to_client("::1", &["-s", "-n", "30"]);
}

#[test]
fn clients_get_ipv6_relayed_addresses_over_ipv4() {
    let (_, output) = client_to_client("127.0.0.1", &["-x", "-n", "20"]);
    assert!(
        allocations(&output)
            .iter()
            .all(|(address, _)| address.is_ipv6()),
        "{output}"
    );
}

#[test]
fn clients_get_ipv4_relayed_addresses_over_ipv6() {
    let (_, output) = client_to_client("::1", &["-X", "-n", "20"]);
    assert!(
        allocations(&output)
            .iter()
            .all(|(address, _)| address.is_ipv4()),
        "{output}"
    );
}

// Extra requests and padding

#[test]
fn extra_requests_and_padded_channel_data() {
    // -G adds permissions and channels to random addresses, IPv6 ones among them; those of the
    // other family are refused (443), as RFC 8656 §9.1 says, and uclient goes on. -D pads
    // every ChannelData message to a multiple of 4.
    let (relay, _) = to_peer(
        &[RFC5766_CHANNELS],
        "127.0.0.1",
        "127.0.0.1",
        &["-G", "-D", "-n", "30", "-m", "2"],
    );
    assert_nothing_refused_by_mistake(&relay);
    relay.metric_until(
        "turnpike_relayed_packets_total{direction=\"peer_to_client\"}",
        |count| count >= 60,
    );
}

#[test]
fn extra_requests_and_padded_channel_data_between_clients_over_ipv6() {
    client_to_client("::1", &["-G", "-D", "-n", "20"]);
}

// Over TCP and TLS: each connection may land on any thread, which steering by source address
// (`steer.rs`) keeps on one, so an EVEN-PORT reservation made on one connection is found by the
// next; and the stream framing takes RFC 5766's channel numbers when the relay does.

#[test]
fn channels_and_even_port_pairs_over_tcp_with_several_threads() {
    let (relay, output) = to_peer(
        &[RFC5766_CHANNELS, "--threads=4"],
        "127.0.0.1",
        "127.0.0.1",
        &["-t", "-n", "30", "-m", "2"],
    );
    assert!(assert_even_port_pairs(&output) >= 1, "{output}");
    relay.metric_until(
        "turnpike_responses_total{method=\"channel_bind\",code=\"0\"}",
        |count| count >= 2,
    );
    assert_nothing_refused_by_mistake(&relay);
}
