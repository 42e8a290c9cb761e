//! Interoperability with TURN clients not written here: the webrtc-rs `turn` client (channels,
//! Send/Data indications, refresh, stale nonces, delete) and coturn's `turnutils_uclient`
//! (Send/Data indications, IPv6 and dual-stack allocations, client to client), each against a
//! real `turnpike` process on loopback. Every wait is bounded.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail by panicking"
)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Relay, rest_credentials};

use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

async fn client(
    relay: &Relay,
    local: &str,
    server_ip: &str,
    credentials: (String, String),
) -> Client {
    let socket = UdpSocket::bind(SocketAddr::new(local.parse().unwrap(), 0))
        .await
        .unwrap();
    let server = relay.server(server_ip);
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.clone(),
        turn_serv_addr: server,
        username: credentials.0,
        password: credentials.1,
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(socket),
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    client
}

/// An echo peer on `ip`; returns its address.
async fn echo_peer(ip: &str) -> SocketAddr {
    let socket = UdpSocket::bind(SocketAddr::new(ip.parse().unwrap(), 0))
        .await
        .unwrap();
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0; 2048];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..len], from).await;
        }
    });
    address
}

/// Sends `count` numbered messages through the allocation to the echo peer and checks each
/// comes back intact.
async fn round_trips(relay_conn: &impl Conn, peer: SocketAddr, count: usize) {
    let mut buf = vec![0; 2048];
    for index in 0..count {
        let message = format!("interop message {index}");
        relay_conn.send_to(message.as_bytes(), peer).await.unwrap();
        let (len, from) =
            tokio::time::timeout(Duration::from_secs(5), relay_conn.recv_from(&mut buf))
                .await
                .expect("the echo came back in time")
                .unwrap();
        assert_eq!(from, peer);
        assert_eq!(&buf[..len], message.as_bytes());
    }
}

/// Keeps relaying round trips until the relay has carried ChannelData both ways (the client
/// binds its channel in the background after its first Send indication), within 10 s.
async fn round_trips_until_channel_data(relay: &Relay, relay_conn: &impl Conn, peer: SocketAddr) {
    let channel_data = |direction: &str| {
        let all = relay.metric(&format!(
            "turnpike_relayed_packets_total{{direction=\"{direction}\"}}"
        ));
        let indications = relay.metric(&format!(
            "turnpike_relayed_indication_packets_total{{direction=\"{direction}\"}}"
        ));
        all.saturating_sub(indications)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while channel_data("client_to_peer") == 0 || channel_data("peer_to_client") == 0 {
        assert!(
            Instant::now() < deadline,
            "the client never sent ChannelData, or the relay never answered in kind"
        );
        round_trips(relay_conn, peer, 5).await;
        // The relay threads publish four times a second.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn relays_both_ways(client_ip: &str, server_ip: &str) {
    let relay = Relay::start(&[]);
    let peer = echo_peer("127.0.0.1").await;
    let client = client(&relay, client_ip, server_ip, rest_credentials(3600)).await;
    let relay_conn = client.allocate().await.unwrap();
    let relayed = relay_conn.local_addr().unwrap();
    assert_eq!(relayed.ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
    round_trips(&relay_conn, peer, 30).await;
    // Once its channel is bound the client sends ChannelData, and the relay answers in kind.
    round_trips_until_channel_data(&relay, &relay_conn, peer).await;
    relay.metric_until(
        "turnpike_responses_total{method=\"create_permission\",code=\"0\"}",
        |count| count >= 1,
    );
    relay.metric_until(
        "turnpike_responses_total{method=\"channel_bind\",code=\"0\"}",
        |count| count >= 1,
    );
    relay.metric_until(
        "turnpike_relayed_packets_total{direction=\"client_to_peer\"}",
        |count| count >= 30,
    );
    relay.metric_until(
        "turnpike_relayed_packets_total{direction=\"peer_to_client\"}",
        |count| count >= 30,
    );
    // Delete: Refresh with LIFETIME 0.
    relay_conn.close().await.unwrap();
    client.close().await.unwrap();
    relay.metric_until("turnpike_allocations", |count| count == 0);
}

// The admin endpoint is read with blocking waits; the client's timers run on other workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_client_relays_with_indications_and_channels_over_ipv4() {
    relays_both_ways("127.0.0.1", "127.0.0.1").await;
}

// The admin endpoint is read with blocking waits; the client's timers run on other workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_client_relays_with_indications_and_channels_over_ipv6() {
    relays_both_ways("::1", "::1").await;
}

// The admin endpoint is read with blocking waits; the client's timers run on other workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_client_refreshes_and_recovers_from_stale_nonces() {
    // Short lifetimes: the client refreshes every 2 s, with a nonce that went stale after 1 s.
    let relay = Relay::start(&[
        "--default-lifetime=4",
        "--max-lifetime=4",
        "--nonce-lifetime=1",
    ]);
    let peer = echo_peer("127.0.0.1").await;
    let client = client(&relay, "127.0.0.1", "127.0.0.1", rest_credentials(3600)).await;
    let relay_conn = client.allocate().await.unwrap();
    round_trips(&relay_conn, peer, 5).await;
    // The wait is what is tested: 5 s outlives the first lifetime (4 s) and several nonces
    // (1 s each), so the allocation lives on only if the client's refreshes, retried after
    // 438 Stale Nonce, succeeded.
    tokio::time::sleep(Duration::from_secs(5)).await;
    round_trips(&relay_conn, peer, 5).await;
    relay.metric_until(
        "turnpike_responses_total{method=\"refresh\",code=\"438\"}",
        |count| count >= 1,
    );
    relay.metric_until(
        "turnpike_responses_total{method=\"refresh\",code=\"0\"}",
        |count| count >= 1,
    );
    assert_eq!(
        relay.metric("turnpike_allocations"),
        1,
        "the allocation outlived its first lifetime"
    );
    relay_conn.close().await.unwrap();
    client.close().await.unwrap();
}

// The admin endpoint is read with blocking waits; the client's timers run on other workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_credentials_are_refused() {
    let relay = Relay::start(&[]);
    let client = client(&relay, "127.0.0.1", "127.0.0.1", rest_credentials(-60)).await;
    assert!(client.allocate().await.is_err());
    client.close().await.unwrap();
    relay.metric_until(
        "turnpike_auth_failures_total{reason=\"expired_credentials\"}",
        |count| count >= 1,
    );
    assert_eq!(relay.metric("turnpike_allocations"), 0);
}

// The admin endpoint is read with blocking waits; the client's timers run on other workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_peers_are_refused() {
    let relay = Relay::start(&[]);
    let client = client(&relay, "127.0.0.1", "127.0.0.1", rest_credentials(3600)).await;
    let relay_conn = client.allocate().await.unwrap();
    // 10.0.0.1 is private and not allowed: the relay refuses the permission, so nothing is
    // ever sent there.
    let _ = relay_conn
        .send_to(b"probe", "10.0.0.1:9".parse().unwrap())
        .await;
    relay.metric_until(
        "turnpike_responses_total{method=\"create_permission\",code=\"403\"}",
        |count| count >= 1,
    );
    // Published in the same snapshot as the refusal: nothing went out to the peer.
    assert_eq!(
        relay.metric("turnpike_relayed_packets_total{direction=\"client_to_peer\"}"),
        0
    );
    relay_conn.close().await.unwrap();
    client.close().await.unwrap();
}

/// Runs coturn's test client against the relay; returns whether it succeeded and its output.
fn try_uclient(relay: &Relay, args: &[&str]) -> (bool, String) {
    let (username, password) = rest_credentials(3600);
    let output = Command::new("timeout")
        .arg("20")
        .arg("turnutils_uclient")
        .args([
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
    (
        output.status.success() && text.contains("Total lost packets"),
        text,
    )
}

fn uclient(relay: &Relay, args: &[&str]) -> String {
    let (succeeded, text) = try_uclient(relay, args);
    assert!(succeeded, "uclient failed: {text}");
    text
}

fn assert_no_loss(output: &str) {
    let line = output
        .lines()
        .find(|line| line.contains("Total lost packets"))
        .unwrap_or_else(|| panic!("{output}"));
    assert!(line.contains("Total lost packets 0 (0.000000%)"), "{line}");
}

/// An echo peer from coturn's tools on `ip`:`port`, once it has bound its port (within 5 s).
fn coturn_peer(ip: &str, port: u16) -> Child {
    let mut child = Command::new("turnutils_peer")
        .args(["-L", ip, "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("turnutils_peer runs");
    let address = SocketAddr::new(ip.parse().unwrap(), port);
    let deadline = Instant::now() + Duration::from_secs(5);
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
    child
}

struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// These runs exercise Send and Data indications (-s) without the RTCP port reservation (-c);
// every other mode of coturn's client, RFC 5766 channel numbers and EVEN-PORT pairs included, is
// in tests/uclient.rs.

#[test]
fn coturn_client_relays_with_send_and_data_indications_over_ipv4() {
    let relay = Relay::start(&[]);
    let peer_port = relay.peer_port;
    let _peer = Reaper(coturn_peer("127.0.0.1", peer_port));
    let output = uclient(
        &relay,
        &[
            "-c",
            "-s",
            "-n",
            "30",
            "-m",
            "2",
            "-e",
            "127.0.0.1",
            "-r",
            &peer_port.to_string(),
            "127.0.0.1",
        ],
    );
    assert_no_loss(&output);
    // Without channels everything travels in Send and Data indications.
    relay.metric_until(
        "turnpike_relayed_indication_packets_total{direction=\"client_to_peer\"}",
        |count| count >= 60,
    );
    relay.metric_until(
        "turnpike_relayed_indication_packets_total{direction=\"peer_to_client\"}",
        |count| count >= 60,
    );
}

#[test]
fn coturn_client_gets_an_ipv6_relayed_address_over_ipv6() {
    let relay = Relay::start(&[]);
    let peer_port = relay.peer_port;
    let _peer = Reaper(coturn_peer("::1", peer_port));
    let output = uclient(
        &relay,
        &[
            "-c",
            "-s",
            "-x",
            "-n",
            "20",
            "-e",
            "::1",
            "-r",
            &peer_port.to_string(),
            "::1",
        ],
    );
    assert_no_loss(&output);
    relay.metric_until(
        "turnpike_relayed_packets_total{direction=\"client_to_peer\"}",
        |count| count >= 20,
    );
}

#[test]
fn coturn_client_gets_a_dual_stack_allocation() {
    // In dual mode uclient asks with the draft's ADDITIONAL-ADDRESS-FAMILY code point (0x8032),
    // which the relay takes as RFC 8656's; a run must get its dual allocation and relay without
    // loss (the loop only guards against a rare draw of no family at all).
    let relay = Relay::start(&[]);
    let peer_port = relay.peer_port;
    let _peer = Reaper(coturn_peer("127.0.0.1", peer_port));
    let succeeded = (0..30).find_map(|_| {
        let (succeeded, output) = try_uclient(
            &relay,
            &[
                "-Z",
                "-s",
                "-n",
                "10",
                "-e",
                "127.0.0.1",
                "-r",
                &peer_port.to_string(),
                "127.0.0.1",
            ],
        );
        succeeded.then_some(output)
    });
    let output =
        succeeded.expect("one of 30 runs drew a dual allocation (probability of none: 5e-6)");
    assert_no_loss(&output);
    relay.metric_until(
        "turnpike_responses_total{method=\"allocate\",code=\"0\"}",
        |count| count >= 1,
    );
}

#[test]
fn coturn_clients_relay_to_each_other_through_one_relay() {
    let relay = Relay::start(&[]);
    let output = uclient(
        &relay,
        &["-c", "-s", "-y", "-n", "20", "-m", "2", "127.0.0.1"],
    );
    assert_no_loss(&output);
}
