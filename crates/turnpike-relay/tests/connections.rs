//! Allocations made over TCP or TLS (RFC 8656 §3.1): the core sees only the 5-tuple's
//! transport, keeps such allocations apart from a UDP client at the same address, and deletes
//! one at once when the driver reports its connection closed.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code, and the harness it shares: a panic is how a test reports a failure"
)]

mod common;

use common::*;
use turnpike_proto::{Attribute, Method};
use turnpike_relay::{Command, FiveTuple, Transport};

const PEER: &str = "192.0.2.10:5000";

fn over(transport: Transport, client: &mut Client) {
    client.five_tuple = FiveTuple::new(
        client.five_tuple.client,
        client.five_tuple.server,
        transport,
    );
}

#[test]
fn a_closed_connection_deletes_its_allocation_with_channels_and_permissions() {
    let mut harness = Harness::new();
    let mut client = Client::new("203.0.113.5:40000");
    over(Transport::Tcp, &mut client);
    let relayed = client.allocate(&mut harness);
    let (response, _) = client.send(
        &mut harness,
        Method::ChannelBind,
        &[
            Attribute::ChannelNumber(0x4001),
            Attribute::XorPeerAddress(PEER.parse().unwrap()),
        ],
    );
    assert_eq!(error_code(&response), None);
    assert!(harness.server.has_allocation(&client.five_tuple));

    harness
        .server
        .handle_connection_closed(harness.now, client.five_tuple);
    let commands = harness.drain();
    assert_eq!(harness.server.allocation_count(), 0);
    assert_eq!(harness.server.permission_count(), 0);
    assert!(!harness.server.has_allocation(&client.five_tuple));
    assert!(
        commands
            .iter()
            .any(|command| matches!(command, Command::RemoveChannel(route) if route.client == client.five_tuple)),
        "{commands:?}"
    );
    assert!(commands.contains(&Command::CloseRelaySocket(relay_socket(relayed))));
    // Nothing is left to expire later.
    assert!(
        harness
            .advance(std::time::Duration::from_secs(3600))
            .is_empty()
    );
}

#[test]
fn a_connection_closed_without_an_allocation_changes_nothing() {
    let mut harness = Harness::new();
    let mut udp_client = Client::new("203.0.113.5:40000");
    udp_client.allocate(&mut harness);
    // The same address and port over TCP is another 5-tuple.
    let tcp = FiveTuple::new(
        udp_client.five_tuple.client,
        udp_client.five_tuple.server,
        Transport::Tcp,
    );
    assert!(!harness.server.has_allocation(&tcp));
    harness.server.handle_connection_closed(harness.now, tcp);
    assert!(harness.drain().is_empty());
    assert_eq!(harness.server.allocation_count(), 1);
}

#[test]
fn responses_to_a_stream_client_name_its_transport() {
    let mut harness = Harness::new();
    let mut client = Client::new("203.0.113.5:40000");
    over(Transport::Tls, &mut client);
    client.allocate(&mut harness);
    let (response, commands) =
        client.send(&mut harness, Method::Refresh, &[Attribute::Lifetime(600)]);
    assert_eq!(error_code(&response), None);
    assert!(commands.iter().all(|command| match command {
        Command::SendToClient { to, .. } => to.transport == Transport::Tls,
        _ => true,
    }));
}

/// Binding requests from one address, over `transport`, all at one instant: how many answered.
fn answered_bindings(transport: Transport, count: usize) -> usize {
    let mut config = config();
    config.unauthenticated_rate = turnpike_relay::RateLimit::per_second(10);
    let mut harness = Harness::with_config(config);
    let mut client = Client::new("203.0.113.5:40000");
    over(transport, &mut client);
    (0..count)
        .filter(|_| {
            let request = client.request(Method::Binding, &[]);
            let (_, commands) = harness.from_client(client.five_tuple, &request);
            !sent_to(&commands, client.five_tuple).is_empty()
        })
        .count()
}

#[test]
fn unauthenticated_answers_are_rate_limited_over_udp_only() {
    // Over UDP a spoofed source could aim the answers at a victim: twice the rate per second
    // as a burst, then nothing until the bucket refills.
    assert_eq!(answered_bindings(Transport::Udp, 100), 20);
    // Over TCP and TLS the source is proven and nothing is retransmitted: every request is
    // answered, on the requester's own connection.
    assert_eq!(answered_bindings(Transport::Tcp, 100), 100);
    assert_eq!(answered_bindings(Transport::Tls, 100), 100);
}

#[test]
fn other_addresses_of_the_host_are_refused_as_peers_unless_allowed() {
    // Public addresses (the policy would let them through) that this host also holds.
    let second: std::net::IpAddr = "52.0.0.99".parse().unwrap();
    let mut harness = Harness::new();
    harness.server.set_host_addresses([
        RELAY_V4.parse().unwrap(),
        second,
        // IPv4-mapped forms count as the address they map.
        "::ffff:52.0.0.98".parse().unwrap(),
    ]);
    let mut client = Client::new("203.0.113.5:40000");
    client.allocate(&mut harness);
    for peer in ["52.0.0.99:3478", "52.0.0.98:53"] {
        let (response, _) = client.send(
            &mut harness,
            Method::CreatePermission,
            &[Attribute::XorPeerAddress(peer.parse().unwrap())],
        );
        assert_eq!(
            error_code(&response),
            Some(turnpike_proto::ErrorCode::FORBIDDEN),
            "{peer}"
        );
    }
    // The advertised relayed address stays a hairpin target; other public peers are fine.
    for peer in [format!("{RELAY_V4}:50000"), "52.0.0.97:3478".to_owned()] {
        let (response, _) = client.send(
            &mut harness,
            Method::CreatePermission,
            &[Attribute::XorPeerAddress(peer.parse().unwrap())],
        );
        assert_eq!(error_code(&response), None, "{peer}");
    }

    // An operator who allows the address explicitly gets it.
    let mut config = config();
    config.policy = config
        .policy
        .with_allowed(["52.0.0.99/32".parse().unwrap()]);
    let mut harness = Harness::with_config(config);
    harness.server.set_host_addresses([second]);
    let mut client = Client::new("203.0.113.5:40000");
    client.allocate(&mut harness);
    let (response, _) = client.send(
        &mut harness,
        Method::CreatePermission,
        &[Attribute::XorPeerAddress("52.0.0.99:3478".parse().unwrap())],
    );
    assert_eq!(error_code(&response), None);
}
