//! Reload (`Server::reconfigure`) in virtual time: what a changed configuration does to what
//! is alive. Removed credentials fail the next request but cut nothing; a newly denied peer
//! loses its permissions and channel routes at once; lowered quotas refuse new work only;
//! nonces survive.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code, and the harness it shares: a panic is how a test reports a failure"
)]

mod common;

use common::*;
use turnpike_proto::{Attribute, ErrorCode, Method};
use turnpike_relay::auth::credentials::{CredentialStore, Password};
use turnpike_relay::policy::Cidr;
use turnpike_relay::{Command, Config};

const PEER: &str = "192.0.2.10:5000";

/// The harness' configuration without the user `alice`.
fn without_alice() -> Config {
    let mut config = config();
    config.credentials =
        CredentialStore::new(REALM).with_static_user("bob", Password::new("hunter2"));
    config
}

#[test]
fn a_removed_user_fails_the_next_request_but_keeps_relaying_until_expiry() {
    let mut harness = Harness::new();
    let mut client = Client::new("203.0.113.5:40000");
    let relayed = client.allocate(&mut harness);
    client.send(
        &mut harness,
        Method::ChannelBind,
        &[
            Attribute::ChannelNumber(0x4001),
            Attribute::XorPeerAddress(PEER.parse().unwrap()),
        ],
    );
    let now = harness.now;
    harness.server.reconfigure(now, &without_alice());
    assert!(harness.drain().is_empty(), "nothing alive is cut");
    // Data still flows both ways.
    let (forward, _) = harness.from_client(client.five_tuple, &channel_data(0x4001, b"still"));
    assert!(forward.is_some());
    // The next request is refused, and the allocation ends at its lifetime.
    let (response, _) = client.send(&mut harness, Method::Refresh, &[Attribute::Lifetime(600)]);
    assert_eq!(error_code(&response), Some(ErrorCode::UNAUTHORIZED));
    let commands = harness.advance(std::time::Duration::from_secs(601));
    assert!(commands.contains(&Command::CloseRelaySocket(relay_socket(relayed))));
    assert_eq!(harness.server.allocation_count(), 0);
}

#[test]
fn a_newly_denied_peer_loses_its_permission_and_channel_routes_at_once() {
    let mut harness = Harness::new();
    let mut client = Client::new("203.0.113.5:40000");
    client.allocate(&mut harness);
    client.send(
        &mut harness,
        Method::ChannelBind,
        &[
            Attribute::ChannelNumber(0x4001),
            Attribute::XorPeerAddress(PEER.parse().unwrap()),
        ],
    );
    client.send(
        &mut harness,
        Method::CreatePermission,
        &[Attribute::XorPeerAddress("203.0.113.9:1".parse().unwrap())],
    );
    assert_eq!(harness.server.permission_count(), 2);
    let mut denying = config();
    denying.policy = denying
        .policy
        .with_denied(["192.0.2.0/24".parse::<Cidr>().unwrap()]);
    let now = harness.now;
    harness.server.reconfigure(now, &denying);
    let commands = harness.drain();
    assert!(
        commands
            .iter()
            .any(|command| matches!(command, Command::RemoveChannel(route) if route.peer == PEER.parse().unwrap())),
        "{commands:?}"
    );
    assert!(
        commands
            .iter()
            .any(|command| matches!(command, Command::RemovePermission { peer, .. } if *peer == "192.0.2.10".parse::<std::net::IpAddr>().unwrap())),
        "{commands:?}"
    );
    assert_eq!(
        harness.server.permission_count(),
        1,
        "the other peer keeps its permission"
    );
    let (forward, _) = harness.from_client(client.five_tuple, &channel_data(0x4001, b"no"));
    assert!(forward.is_none(), "nothing more reaches the denied peer");
    // And it cannot be asked for again.
    let (response, _) = client.send(
        &mut harness,
        Method::CreatePermission,
        &[Attribute::XorPeerAddress(PEER.parse().unwrap())],
    );
    assert_eq!(error_code(&response), Some(ErrorCode::FORBIDDEN));
}

#[test]
fn a_lowered_quota_refuses_new_work_and_cuts_nothing() {
    let mut harness = Harness::new();
    let mut first = Client::new("203.0.113.5:40000");
    let mut second = Client::new("203.0.113.6:40000");
    first.allocate(&mut harness);
    second.allocate(&mut harness);
    let mut lowered = config();
    lowered.quotas.allocations_total = 1;
    let now = harness.now;
    harness.server.reconfigure(now, &lowered);
    assert!(harness.drain().is_empty());
    assert_eq!(harness.server.allocation_count(), 2);
    let mut third = Client::new("203.0.113.7:40000");
    let (response, _) = third.send(
        &mut harness,
        Method::Allocate,
        &[Attribute::RequestedTransport(17)],
    );
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::ALLOCATION_QUOTA_REACHED)
    );
    // Existing ones refresh as before.
    let (response, _) = first.send(&mut harness, Method::Refresh, &[Attribute::Lifetime(600)]);
    assert_eq!(error_code(&response), None);
}

#[test]
fn nonces_survive_a_reload() {
    let mut harness = Harness::new();
    let mut client = Client::new("203.0.113.5:40000");
    client.allocate(&mut harness);
    let nonce = client.nonce.clone();
    let now = harness.now;
    harness.server.reconfigure(now, &config());
    let (response, _) = client.send(&mut harness, Method::Refresh, &[Attribute::Lifetime(600)]);
    assert_eq!(error_code(&response), None, "no 438 after a reload");
    assert_eq!(client.nonce, nonce);
}

#[test]
fn a_full_or_draining_relay_sends_allocations_to_its_alternates_in_turn() {
    let alternates: Vec<std::net::SocketAddr> = vec![
        "198.51.100.7:3478".parse().unwrap(),
        "[2001:db8::7]:3478".parse().unwrap(),
    ];
    let mut full = config();
    full.quotas.allocations_total = 1;
    full.alternate_servers.clone_from(&alternates);
    let mut harness = Harness::with_config(full);
    Client::new("203.0.113.5:40000").allocate(&mut harness);
    let mut seen = Vec::new();
    for port in 0..3u16 {
        let mut client = Client::new(&format!("203.0.113.6:{}", 41000 + port));
        let (response, _) = client.send(
            &mut harness,
            Method::Allocate,
            &[Attribute::RequestedTransport(17)],
        );
        assert_eq!(error_code(&response), Some(ErrorCode::TRY_ALTERNATE));
        let alternate = attributes(&response)
            .into_iter()
            .find_map(|attribute| match attribute {
                Attribute::AlternateServer(address) => Some(address),
                _ => None,
            });
        seen.push(alternate.unwrap());
    }
    assert_eq!(seen, [alternates[0], alternates[1], alternates[0]]);

    // Draining: the same, even with room left; without alternates, 508 as before.
    let mut draining = config();
    draining.alternate_servers.clone_from(&alternates);
    let mut harness = Harness::with_config(draining);
    harness.server.begin_drain();
    let mut client = Client::new("203.0.113.5:40000");
    let (response, _) = client.send(
        &mut harness,
        Method::Allocate,
        &[Attribute::RequestedTransport(17)],
    );
    assert_eq!(error_code(&response), Some(ErrorCode::TRY_ALTERNATE));
    let mut harness = Harness::new();
    harness.server.begin_drain();
    let (response, _) = client.send(
        &mut harness,
        Method::Allocate,
        &[Attribute::RequestedTransport(17)],
    );
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::INSUFFICIENT_CAPACITY)
    );
}

/// Whether a nonce `first` handed out is accepted by `second` straight away (no 401 or 438).
fn nonce_travels(first_keys: Vec<[u8; 32]>, second_keys: Vec<[u8; 32]>) -> bool {
    let with_keys = |keys: Vec<[u8; 32]>| {
        let mut config = config();
        config.nonce_keys = keys;
        config
    };
    // Different seeds: without shared keys the two would draw different nonce secrets.
    let mut first = Harness::with_seed(with_keys(first_keys), 1);
    let mut second = Harness::with_seed(with_keys(second_keys), 2);
    let mut client = Client::new("203.0.113.5:40000");
    client.handshake(&mut first);
    let request = client.request(Method::Allocate, &[Attribute::RequestedTransport(17)]);
    let (_, commands) = second.from_client(client.five_tuple, &request);
    error_code(&only_response(&commands)).is_none()
}

#[test]
fn a_fleet_sharing_nonce_keys_accepts_each_others_nonces_through_a_rotation() {
    let (old, new) = ([1u8; 32], [2u8; 32]);
    assert!(
        !nonce_travels(vec![], vec![]),
        "own random keys do not travel"
    );
    assert!(nonce_travels(vec![old], vec![old]));
    // Rotation in three steps, each rolled out to the whole fleet before the next: add the new
    // key second (verify only), move it first (sign), drop the old one. During each roll-out,
    // relays of both steps accept each other's nonces.
    assert!(nonce_travels(vec![old], vec![old, new]));
    assert!(nonce_travels(vec![old, new], vec![new, old]));
    assert!(nonce_travels(vec![new, old], vec![old, new]));
    assert!(nonce_travels(vec![new, old], vec![new]));
    // Skipping the first step is what the steps are for.
    assert!(
        !nonce_travels(vec![new], vec![old]),
        "a key left out no longer verifies"
    );
}
