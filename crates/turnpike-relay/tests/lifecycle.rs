//! Allocation, permission and channel lifecycles in virtual time, and the fast-path commands
//! that mirror them.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code, and the harness it shares: a panic is how a test reports a failure"
)]

mod common;

use std::time::Duration;

use common::*;
use turnpike_proto::{Attribute, ChannelNumber, ErrorCode, Method};
use turnpike_relay::{ChannelRoute, Command, Forward};

const PEER: &str = "192.0.2.10:5000";

fn peer() -> std::net::SocketAddr {
    PEER.parse().unwrap()
}

#[test]
fn unauthenticated_allocate_is_challenged_with_realm_and_nonce() {
    let mut harness = Harness::new();
    let mut client = Client::new("203.0.113.5:40000");
    let request = client.request(Method::Allocate, &[Attribute::RequestedTransport(17)]);
    let (_, commands) = harness.from_client(client.five_tuple, &request);
    let response = only_response(&commands);
    assert_eq!(error_code(&response), Some(ErrorCode::UNAUTHORIZED));
    let attributes = attributes(&response);
    assert!(attributes.contains(&Attribute::Realm(REALM)));
    assert!(
        attributes
            .iter()
            .any(|attribute| matches!(attribute, Attribute::Nonce(_)))
    );
    assert_eq!(
        harness.server.allocation_count(),
        0,
        "a challenge creates no state"
    );
}

#[test]
fn allocate_opens_a_relay_socket_and_answers_with_signed_addresses() {
    let mut harness = Harness::new();
    let mut client = Client::new("203.0.113.5:40000");
    let (response, commands) = client.send(
        &mut harness,
        Method::Allocate,
        &[Attribute::RequestedTransport(17)],
    );
    assert_eq!(error_code(&response), None);
    client.verify_response(&response);
    let relayed = relayed_addresses(&response);
    assert_eq!(relayed.len(), 1);
    assert_eq!(relayed[0].ip().to_string(), RELAY_V4);
    assert!((49152..=65535).contains(&relayed[0].port()));
    assert_eq!(lifetime(&response), Some(600));
    assert!(attributes(&response).contains(&Attribute::XorMappedAddress(client.five_tuple.client)));
    assert_eq!(
        commands[0],
        Command::OpenRelaySocket(relay_socket(relayed[0]))
    );
    assert!(
        matches!(commands[1], Command::SendToClient { .. }),
        "socket opens before the response"
    );
}

#[test]
fn channel_is_installed_before_its_success_response_and_relays_both_ways() {
    let mut harness = Harness::new();
    let mut client = Client::new("203.0.113.5:40000");
    let relayed = client.allocate(&mut harness);
    let (response, commands) = client.send(
        &mut harness,
        Method::ChannelBind,
        &[
            Attribute::ChannelNumber(0x4001),
            Attribute::XorPeerAddress(peer()),
        ],
    );
    assert_eq!(error_code(&response), None);
    let route = ChannelRoute {
        client: client.five_tuple,
        channel: ChannelNumber::new(0x4001).unwrap(),
        relay: relay_socket(relayed),
        peer: peer(),
    };
    let install = commands
        .iter()
        .position(|command| *command == Command::InstallChannel(route))
        .unwrap();
    let respond = commands
        .iter()
        .position(|command| matches!(command, Command::SendToClient { .. }))
        .unwrap();
    assert!(install < respond);

    let datagram = channel_data(0x4001, b"hello peer");
    let (forward, _) = harness.from_client(client.five_tuple, &datagram);
    assert_eq!(
        forward,
        Some(Forward::ToPeer {
            relay: relay_socket(relayed),
            peer: peer(),
            payload: 4..14
        })
    );

    let (forward, _) = harness.from_peer(relay_socket(relayed), peer(), b"hello client");
    assert_eq!(
        forward,
        Some(Forward::ToClient {
            client: client.five_tuple,
            channel_header: [0x40, 0x01, 0x00, 0x0C],
            payload: 0..12
        })
    );
}

#[test]
fn permission_expires_exactly_at_its_lifetime_and_removes_the_channel_route() {
    let mut harness = Harness::new();
    let mut client = Client::new("203.0.113.5:40000");
    let relayed = client.allocate(&mut harness);
    client.send(
        &mut harness,
        Method::ChannelBind,
        &[
            Attribute::ChannelNumber(0x4001),
            Attribute::XorPeerAddress(peer()),
        ],
    );

    let commands = harness.advance(Duration::from_secs(299));
    assert!(commands.is_empty());
    let (forward, _) = harness.from_client(client.five_tuple, &channel_data(0x4001, b"x"));
    assert!(forward.is_some(), "still relaying one second before expiry");

    let commands = harness.advance(Duration::from_secs(1));
    let route = ChannelRoute {
        client: client.five_tuple,
        channel: ChannelNumber::new(0x4001).unwrap(),
        relay: relay_socket(relayed),
        peer: peer(),
    };
    assert_eq!(
        commands,
        [
            Command::RemoveChannel(route),
            Command::RemovePermission {
                relay: relay_socket(relayed),
                peer: peer().ip()
            },
        ]
    );
    let (forward, _) = harness.from_client(client.five_tuple, &channel_data(0x4001, b"x"));
    assert!(forward.is_none());
    let (forward, _) = harness.from_peer(relay_socket(relayed), peer(), b"x");
    assert!(forward.is_none());
}

#[test]
fn a_route_past_its_expiry_does_not_relay_even_before_the_timer_runs() {
    let mut harness = Harness::new();
    let mut client = Client::new("203.0.113.5:40000");
    client.allocate(&mut harness);
    client.send(
        &mut harness,
        Method::ChannelBind,
        &[
            Attribute::ChannelNumber(0x4001),
            Attribute::XorPeerAddress(peer()),
        ],
    );
    // The driver has not called handle_timeout yet.
    harness.now += Duration::from_secs(300);
    let (forward, _) = harness.from_client(client.five_tuple, &channel_data(0x4001, b"x"));
    assert!(forward.is_none());
}

#[test]
fn refreshing_the_permission_keeps_the_channel_relaying_until_the_channel_expires() {
    let mut harness = Harness::new();
    let mut client = Client::new("203.0.113.5:40000");
    client.allocate(&mut harness);
    client.send(
        &mut harness,
        Method::ChannelBind,
        &[
            Attribute::ChannelNumber(0x4001),
            Attribute::XorPeerAddress(peer()),
        ],
    );
    harness.advance(Duration::from_secs(240));
    let (response, commands) = client.send(
        &mut harness,
        Method::CreatePermission,
        &[Attribute::XorPeerAddress(peer())],
    );
    assert_eq!(error_code(&response), None);
    assert!(
        commands
            .iter()
            .any(|command| matches!(command, Command::InstallChannel(_))),
        "route re-installed"
    );
    harness.advance(Duration::from_secs(120));
    let (forward, _) = harness.from_client(client.five_tuple, &channel_data(0x4001, b"x"));
    assert!(
        forward.is_some(),
        "permission refreshed at 240 s lives to 540 s"
    );
    let commands = harness.advance(Duration::from_secs(240));
    assert!(
        commands
            .iter()
            .any(|command| matches!(command, Command::RemoveChannel(_))),
        "channel ends at 600 s"
    );
}

#[test]
fn channel_number_and_peer_stay_reserved_during_the_cooldown() {
    let mut harness = Harness::new();
    let mut client = Client::new("203.0.113.5:40000");
    client.allocate(&mut harness);
    let other_peer = "192.0.2.11:5000".parse().unwrap();
    client.send(
        &mut harness,
        Method::ChannelBind,
        &[
            Attribute::ChannelNumber(0x4001),
            Attribute::XorPeerAddress(peer()),
        ],
    );
    // Keep the allocation alive past the channel and its cool-down.
    client.send(&mut harness, Method::Refresh, &[Attribute::Lifetime(3600)]);
    harness.advance(Duration::from_secs(600));
    let (response, _) = client.send(
        &mut harness,
        Method::ChannelBind,
        &[
            Attribute::ChannelNumber(0x4001),
            Attribute::XorPeerAddress(other_peer),
        ],
    );
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::BAD_REQUEST),
        "number reserved for 5 minutes"
    );
    harness.advance(Duration::from_secs(300));
    let (response, _) = client.send(
        &mut harness,
        Method::ChannelBind,
        &[
            Attribute::ChannelNumber(0x4001),
            Attribute::XorPeerAddress(other_peer),
        ],
    );
    assert_eq!(
        error_code(&response),
        None,
        "free again after the cool-down"
    );
}

#[test]
fn allocation_expires_exactly_at_its_lifetime_with_every_fast_path_entry_removed() {
    let mut harness = Harness::new();
    let mut client = Client::new("203.0.113.5:40000");
    let relayed = client.allocate(&mut harness);
    client.send(
        &mut harness,
        Method::ChannelBind,
        &[
            Attribute::ChannelNumber(0x4001),
            Attribute::XorPeerAddress(peer()),
        ],
    );
    // Keep the permission and channel alive to the end.
    for _ in 0..2 {
        harness.advance(Duration::from_secs(290));
        client.send(
            &mut harness,
            Method::ChannelBind,
            &[
                Attribute::ChannelNumber(0x4001),
                Attribute::XorPeerAddress(peer()),
            ],
        );
    }
    let commands = harness.advance(Duration::from_secs(19));
    assert!(
        commands
            .iter()
            .all(|command| !matches!(command, Command::CloseRelaySocket(_)))
    );
    let commands = harness.advance(Duration::from_secs(1));
    assert!(commands.contains(&Command::CloseRelaySocket(relay_socket(relayed))));
    assert!(
        commands
            .iter()
            .any(|command| matches!(command, Command::RemoveChannel(_)))
    );
    assert!(
        commands
            .iter()
            .any(|command| matches!(command, Command::RemovePermission { .. }))
    );
    assert_eq!(harness.server.allocation_count(), 0);
    assert_eq!(harness.server.active_channel_count(), 0);
}

#[test]
fn refresh_with_zero_lifetime_deletes_the_allocation() {
    let mut harness = Harness::new();
    let mut client = Client::new("203.0.113.5:40000");
    let relayed = client.allocate(&mut harness);
    let (response, commands) =
        client.send(&mut harness, Method::Refresh, &[Attribute::Lifetime(0)]);
    assert_eq!(error_code(&response), None);
    assert_eq!(lifetime(&response), Some(0));
    assert!(commands.contains(&Command::CloseRelaySocket(relay_socket(relayed))));
    assert_eq!(harness.server.allocation_count(), 0);
    let (response, _) = client.send(&mut harness, Method::Refresh, &[Attribute::Lifetime(600)]);
    assert_eq!(error_code(&response), Some(ErrorCode::ALLOCATION_MISMATCH));
}

#[test]
fn send_indication_relays_only_with_a_permission() {
    let mut harness = Harness::new();
    let mut client = Client::new("203.0.113.5:40000");
    let relayed = client.allocate(&mut harness);
    let send = |client: &mut Client| {
        // Without FINGERPRINT, which the class bits rewritten below would make wrong.
        client.fingerprint = false;
        let mut indication = client.request(
            Method::Send,
            &[
                Attribute::XorPeerAddress(peer()),
                Attribute::Data(b"payload"),
            ],
        );
        // Indications are requests' siblings: class bits 01.
        indication[1] |= 0x10;
        indication
    };
    let indication = send(&mut client);
    let (forward, commands) = harness.from_client(client.five_tuple, &indication);
    assert!(
        forward.is_none() && commands.is_empty(),
        "dropped silently without permission"
    );

    client.send(
        &mut harness,
        Method::CreatePermission,
        &[Attribute::XorPeerAddress(peer())],
    );
    let indication = send(&mut client);
    let (forward, _) = harness.from_client(client.five_tuple, &indication);
    let Some(Forward::ToPeer {
        relay,
        peer: to,
        payload,
    }) = forward
    else {
        panic!("not relayed")
    };
    assert_eq!((relay, to), (relay_socket(relayed), peer()));
    assert_eq!(&indication[payload], b"payload");
}

#[test]
fn peer_data_without_a_channel_becomes_a_data_indication() {
    let mut harness = Harness::new();
    let mut client = Client::new("203.0.113.5:40000");
    let relayed = client.allocate(&mut harness);
    let (forward, commands) = harness.from_peer(relay_socket(relayed), peer(), b"unsolicited");
    assert!(
        forward.is_none() && commands.is_empty(),
        "no permission, no delivery"
    );

    client.send(
        &mut harness,
        Method::CreatePermission,
        &[Attribute::XorPeerAddress(peer())],
    );
    let (forward, commands) = harness.from_peer(relay_socket(relayed), peer(), b"welcome");
    assert!(forward.is_none());
    let indications = sent_to(&commands, client.five_tuple);
    assert_eq!(indications.len(), 1);
    let attributes = attributes(&indications[0]);
    assert!(attributes.contains(&Attribute::XorPeerAddress(peer())));
    assert!(attributes.contains(&Attribute::Data(b"welcome")));
}

#[test]
fn stale_nonce_is_answered_with_438_and_a_fresh_nonce_that_works() {
    let mut harness = Harness::new();
    let mut client = Client::new("203.0.113.5:40000");
    client.handshake(&mut harness);
    harness.advance(Duration::from_secs(601));
    let request = client.request(Method::Allocate, &[Attribute::RequestedTransport(17)]);
    let (_, commands) = harness.from_client(client.five_tuple, &request);
    let response = only_response(&commands);
    assert_eq!(error_code(&response), Some(ErrorCode::STALE_NONCE));
    client.learn(&response);
    let (response, _) = client.send(
        &mut harness,
        Method::Allocate,
        &[Attribute::RequestedTransport(17)],
    );
    assert_eq!(error_code(&response), None);
}

#[test]
fn shutdown_removes_every_fast_path_entry_and_closes_every_socket() {
    let mut harness = Harness::new();
    let mut client = Client::new("203.0.113.5:40000");
    let relayed = client.allocate(&mut harness);
    client.send(
        &mut harness,
        Method::ChannelBind,
        &[
            Attribute::ChannelNumber(0x4001),
            Attribute::XorPeerAddress(peer()),
        ],
    );
    harness.server.shutdown();
    let commands = harness.drain();
    assert!(
        commands
            .iter()
            .any(|command| matches!(command, Command::RemoveChannel(_)))
    );
    assert!(commands.contains(&Command::CloseRelaySocket(relay_socket(relayed))));
    assert_eq!(harness.server.allocation_count(), 0);
}
