//! Defects of issue 11, one test each that would have caught it: silently discarding a wrong
//! FINGERPRINT, the first of duplicate attributes counting, memory bounded by what is alive,
//! credential lifetimes, deterministic command streams and typed refusals.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code, and the harness it shares: a panic is how a test reports a failure"
)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use turnpike_proto::{Attribute, ChannelNumber, ErrorCode, Method};
use turnpike_relay::{ChannelRoute, Command, Config, Drop};

const ALICE: &str = "203.0.113.5:40000";
const PEER: &str = "192.0.2.10:5000";
const OTHER_PEER: &str = "192.0.2.11:5000";

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn udp() -> Attribute<'static> {
    Attribute::RequestedTransport(17)
}

/// `message` with the last byte of its FINGERPRINT flipped.
fn with_wrong_fingerprint(mut message: Vec<u8>) -> Vec<u8> {
    let last = message.len() - 1;
    message[last] ^= 0x01;
    message
}

// FINGERPRINT (RFC 8489 §7.3)

#[test]
fn a_binding_request_with_a_wrong_fingerprint_is_discarded_without_an_answer() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    let request = client.request(Method::Binding, &[]);
    let (forward, commands) =
        harness.from_client(client.five_tuple, &with_wrong_fingerprint(request.clone()));
    assert!(forward.is_none());
    assert_eq!(commands, vec![]);
    assert_eq!(
        harness.server.stats().dropped.get(&Drop::BadFingerprint),
        Some(&1)
    );
    // The same request intact is answered: the drop was the fingerprint's doing.
    let (_, commands) = harness.from_client(client.five_tuple, &request);
    assert_eq!(sent_to(&commands, client.five_tuple).len(), 1);
}

#[test]
fn an_authenticated_request_with_a_wrong_fingerprint_is_discarded_and_changes_nothing() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    client.handshake(&mut harness);
    let request = client.request(Method::Allocate, &[udp()]);
    let (_, commands) = harness.from_client(client.five_tuple, &with_wrong_fingerprint(request));
    assert_eq!(commands, vec![]);
    assert_eq!(harness.server.allocation_count(), 0);
    // Nor is its transaction remembered: the intact retransmission is handled afresh.
    client.allocate(&mut harness);
    assert_eq!(harness.server.allocation_count(), 1);
}

#[test]
fn a_send_indication_with_a_wrong_fingerprint_is_not_relayed() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    client.allocate(&mut harness);
    client.send(
        &mut harness,
        Method::CreatePermission,
        &[Attribute::XorPeerAddress(addr(PEER))],
    );
    let indication = send_indication(PEER, b"x");
    let (forward, _) = harness.from_client(client.five_tuple, &indication);
    assert!(forward.is_some(), "the intact Send indication is relayed");
    let (forward, commands) =
        harness.from_client(client.five_tuple, &with_wrong_fingerprint(indication));
    assert!(forward.is_none());
    assert_eq!(commands, vec![]);
}

/// A fingerprinted Send indication carrying `data` to `peer`.
fn send_indication(peer: &str, data: &[u8]) -> Vec<u8> {
    use turnpike_proto::{Class, MessageEncoder, MessageType, TransactionId};
    let mut buf = vec![0; 256];
    let mut encoder = MessageEncoder::new(
        &mut buf,
        MessageType::new(Method::Send, Class::Indication),
        TransactionId([7; 12]),
    )
    .unwrap();
    encoder
        .push(&Attribute::XorPeerAddress(addr(peer)))
        .unwrap();
    encoder.push(&Attribute::Data(data)).unwrap();
    encoder.push_fingerprint().unwrap();
    let len = encoder.finish();
    buf.truncate(len);
    buf
}

// Duplicate attributes (RFC 8489 §14: only the first occurrence counts)

#[test]
fn a_refresh_with_lifetime_600_then_0_refreshes_and_keeps_the_allocation() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    client.allocate(&mut harness);
    let (response, commands) = client.send(
        &mut harness,
        Method::Refresh,
        &[Attribute::Lifetime(600), Attribute::Lifetime(0)],
    );
    assert_eq!(error_code(&response), None);
    assert_eq!(lifetime(&response), Some(600));
    assert!(
        !commands
            .iter()
            .any(|command| matches!(command, Command::CloseRelaySocket(_)))
    );
    assert_eq!(harness.server.allocation_count(), 1);
}

#[test]
fn a_refresh_with_lifetime_0_then_600_deletes_the_allocation() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    client.allocate(&mut harness);
    let (response, _) = client.send(
        &mut harness,
        Method::Refresh,
        &[Attribute::Lifetime(0), Attribute::Lifetime(600)],
    );
    assert_eq!(error_code(&response), None);
    assert_eq!(harness.server.allocation_count(), 0);
}

#[test]
fn a_channel_bind_with_two_channel_numbers_binds_the_first() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    let relayed = client.allocate(&mut harness);
    let (response, commands) = client.send(
        &mut harness,
        Method::ChannelBind,
        &[
            Attribute::ChannelNumber(0x4001),
            Attribute::ChannelNumber(0x4002),
            Attribute::XorPeerAddress(addr(PEER)),
            Attribute::XorPeerAddress(addr(OTHER_PEER)),
        ],
    );
    assert_eq!(error_code(&response), None);
    let installed: Vec<ChannelRoute> = commands
        .iter()
        .filter_map(|command| match command {
            Command::InstallChannel(route) => Some(*route),
            _ => None,
        })
        .collect();
    assert_eq!(
        installed,
        vec![ChannelRoute {
            client: client.five_tuple,
            channel: ChannelNumber::new(0x4001).unwrap(),
            relay: relay_socket(relayed),
            peer: addr(PEER),
        }]
    );
    let (forward, _) = harness.from_client(client.five_tuple, &channel_data(0x4002, b"x"));
    assert!(forward.is_none(), "the second number was not bound");
}

#[test]
fn an_allocate_with_two_lifetimes_is_granted_the_first() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    let (response, _) = client.send(
        &mut harness,
        Method::Allocate,
        &[udp(), Attribute::Lifetime(1800), Attribute::Lifetime(3600)],
    );
    assert_eq!(error_code(&response), None);
    assert_eq!(lifetime(&response), Some(1800));
}

#[test]
fn a_create_permission_with_several_peer_addresses_installs_them_all() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    client.allocate(&mut harness);
    let (response, _) = client.send(
        &mut harness,
        Method::CreatePermission,
        &[
            Attribute::XorPeerAddress(addr(PEER)),
            Attribute::XorPeerAddress(addr(OTHER_PEER)),
        ],
    );
    assert_eq!(error_code(&response), None);
    assert_eq!(harness.server.permission_count(), 2);
}

// Determinism: every command stream is a function of the inputs and the seed

/// Everything a run produced, in order: forwards and commands after every input.
type Transcript = Vec<String>;

/// A busy life of a relay: 24 clients, half of them with dual allocations, each with
/// permissions and channels towards several peers of both families, peer data, refreshes,
/// permission expiry, one family's deletion, allocation expiry, and finally shutdown.
fn busy_life(seed: u64) -> Transcript {
    let mut harness = Harness::with_seed(config(), seed);
    let mut transcript = Transcript::new();
    let mut record =
        |label: &str, forward: Option<turnpike_relay::Forward>, commands: Vec<Command>| {
            transcript.push(format!("{label}: {forward:?} {commands:?}"));
        };
    let peers_v4: Vec<SocketAddr> = (10..16)
        .map(|i| addr(&format!("192.0.2.{i}:5000")))
        .collect();
    let peers_v6: Vec<SocketAddr> = (10..13)
        .map(|i| addr(&format!("[2001:db8:ffff::{i}]:5000")))
        .collect();
    let mut clients = Vec::new();
    for i in 0..24_u16 {
        let mut client = Client::new(&format!("203.0.113.{}:{}", 1 + i, 40_000 + i));
        let mut allocate = vec![udp()];
        if i % 2 == 0 {
            allocate.push(Attribute::AdditionalAddressFamily(
                turnpike_proto::AddressFamily::V6,
            ));
        }
        let (_, commands) = client.send(&mut harness, Method::Allocate, &allocate);
        record("allocate", None, commands);
        let mut peers: Vec<SocketAddr> = peers_v4.clone();
        if i % 2 == 0 {
            peers.extend(&peers_v6);
        }
        let permission: Vec<Attribute<'_>> = peers
            .iter()
            .map(|peer| Attribute::XorPeerAddress(*peer))
            .collect();
        let (_, commands) = client.send(&mut harness, Method::CreatePermission, &permission);
        record("permission", None, commands);
        for (n, peer) in peers.iter().enumerate() {
            let number = 0x4000 + u16::try_from(n).unwrap();
            let (_, commands) = client.send(
                &mut harness,
                Method::ChannelBind,
                &[
                    Attribute::ChannelNumber(number),
                    Attribute::XorPeerAddress(*peer),
                ],
            );
            record("bind", None, commands);
        }
        clients.push(client);
    }
    for client in &clients {
        let (forward, commands) =
            harness.from_client(client.five_tuple, &channel_data(0x4000, b"x"));
        record("data", forward, commands);
    }
    record("advance", None, harness.advance(Duration::from_secs(200)));
    for client in clients.iter_mut().step_by(3) {
        let (_, commands) =
            client.send(&mut harness, Method::Refresh, &[Attribute::Lifetime(1200)]);
        record("refresh", None, commands);
    }
    for client in clients.iter_mut().step_by(4) {
        let (_, commands) = client.send(
            &mut harness,
            Method::Refresh,
            &[
                Attribute::Lifetime(0),
                Attribute::RequestedAddressFamily(turnpike_proto::AddressFamily::V4),
            ],
        );
        record("delete v4", None, commands);
    }
    record(
        "permissions expire",
        None,
        harness.advance(Duration::from_secs(101)),
    );
    record(
        "allocations expire",
        None,
        harness.advance(Duration::from_secs(300)),
    );
    harness.server.shutdown();
    record("shutdown", None, harness.drain());
    transcript
}

#[test]
fn the_same_inputs_and_seed_give_the_same_commands_through_expiry_and_shutdown() {
    let first = busy_life(7);
    let second = busy_life(7);
    assert!(first.len() > 100);
    assert_eq!(first.len(), second.len());
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a, b);
    }
}

// Memory follows what is alive, not how many requests came

#[test]
fn a_hundred_thousand_refreshes_leave_one_timer_per_live_object() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    client.allocate(&mut harness);
    client.send(
        &mut harness,
        Method::ChannelBind,
        &[
            Attribute::ChannelNumber(0x4001),
            Attribute::XorPeerAddress(addr(PEER)),
        ],
    );
    // One allocation family, one permission, one channel.
    let live = 3;
    assert_eq!(harness.server.footprint().timers, live);
    for i in 0..100_000_u32 {
        let (response, _) = if i % 2 == 0 {
            client.send(&mut harness, Method::Refresh, &[Attribute::Lifetime(600)])
        } else {
            client.send(
                &mut harness,
                Method::CreatePermission,
                &[Attribute::XorPeerAddress(addr(PEER))],
            )
        };
        assert_eq!(error_code(&response), None);
        harness.now += Duration::from_millis(1);
        harness.server.handle_timeout(harness.now);
        harness.drain();
        assert!(harness.server.footprint().timers <= live);
    }
    assert_eq!(harness.server.footprint().timers, live);
    // The retransmission cache holds 40 s of responses, then nothing.
    harness.advance(Duration::from_secs(41));
    let footprint = harness.server.footprint();
    assert_eq!(footprint.cached_transactions, 0);
    assert!(footprint.table_capacity < 1_000, "{footprint:?}");
}

/// A config whose quotas let one user hold `allocations` allocations.
fn roomy(allocations: usize) -> Config {
    let mut config = config();
    config.quotas.allocations_per_user = allocations;
    config.quotas.allocations_total = allocations;
    config
}

#[test]
fn creating_and_deleting_ten_thousand_allocations_returns_the_tables_to_their_start() {
    const CLIENTS: u32 = 10_000;
    let mut harness = Harness::with_config(roomy(CLIENTS as usize));
    let baseline = harness.server.footprint();
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|i| Client::new(&format!("198.18.{}.{}:40000", i / 256, i % 256)))
        .collect();
    for client in &mut clients {
        client.allocate(&mut harness);
        let (response, _) = client.send(
            &mut harness,
            Method::ChannelBind,
            &[
                Attribute::ChannelNumber(0x4001),
                Attribute::XorPeerAddress(addr(PEER)),
            ],
        );
        assert_eq!(error_code(&response), None);
    }
    let peak = harness.server.footprint();
    assert_eq!(harness.server.allocation_count(), CLIENTS as usize);
    assert_eq!(peak.timers, 3 * CLIENTS as usize);
    for client in &mut clients {
        let (response, _) = client.send(&mut harness, Method::Refresh, &[Attribute::Lifetime(0)]);
        assert_eq!(error_code(&response), None);
    }
    assert_eq!(harness.server.allocation_count(), 0);
    // Past the retransmission window, nothing of the burst is left.
    harness.advance(Duration::from_secs(41));
    let after = harness.server.footprint();
    assert_eq!(after.timers, 0);
    assert_eq!(after.cached_transactions, 0);
    assert_eq!(after.table_entries, 0);
    assert!(
        after.table_capacity <= baseline.table_capacity + 1_000,
        "baseline {baseline:?}, peak {peak:?}, after {after:?}"
    );
    assert!(after.command_capacity <= 128, "{after:?}");
    assert!(
        peak.table_capacity > 10 * after.table_capacity,
        "{peak:?} {after:?}"
    );
}

#[test]
fn allocations_that_expire_take_their_timers_and_tables_with_them() {
    const CLIENTS: u32 = 2_000;
    let mut harness = Harness::with_config(roomy(CLIENTS as usize));
    let baseline = harness.server.footprint();
    for i in 0..CLIENTS {
        let mut client = Client::new(&format!("198.18.{}.{}:40000", i / 256, i % 256));
        client.allocate(&mut harness);
        client.send(
            &mut harness,
            Method::ChannelBind,
            &[
                Attribute::ChannelNumber(0x4001),
                Attribute::XorPeerAddress(addr(PEER)),
            ],
        );
    }
    harness.advance(Duration::from_secs(600));
    // Channel numbers stay reserved through their cool-down, within the allocation; the
    // allocation is gone, so that ends too.
    let after = harness.server.footprint();
    assert_eq!(harness.server.allocation_count(), 0);
    assert_eq!(after.timers, 0);
    assert_eq!(after.table_entries, 0);
    assert!(
        after.table_capacity <= baseline.table_capacity + 1_000,
        "{after:?}"
    );
}

// Credential lifetimes

/// The TURN REST API password of `username` with the harness's secret.
fn rest_password(username: &str) -> String {
    use turnpike_relay::auth::credentials::{CredentialStore, SharedSecret};
    let store =
        CredentialStore::new(REALM).with_rest_secret(SharedSecret::new(REST_SECRET.as_bytes()));
    let password = store
        .candidate_passwords(username, 0)
        .unwrap()
        .next()
        .unwrap();
    String::from_utf8(password.as_bytes().to_vec()).unwrap()
}

/// A client with REST credentials that expire at `expiry` (unix seconds).
fn rest_client(address: &str, expiry: u64) -> Client {
    let username = format!("{expiry}:alice");
    let password = rest_password(&username);
    Client::with_credentials(address, &username, &password)
}

fn auth_failures(harness: &Harness, reason: &str) -> u64 {
    harness
        .server
        .stats()
        .auth_failures
        .get(reason)
        .copied()
        .unwrap_or(0)
}

#[test]
fn a_rest_username_that_expires_in_the_year_2100_is_refused() {
    let mut harness = Harness::new();
    // 2100-01-01T00:00:00Z.
    let mut client = rest_client(ALICE, 4_102_444_800);
    let (response, _) = client.send(&mut harness, Method::Allocate, &[udp()]);
    assert_eq!(error_code(&response), Some(ErrorCode::UNAUTHORIZED));
    assert_eq!(auth_failures(&harness, "credential_lifetime_too_long"), 1);
    assert_eq!(harness.server.allocation_count(), 0);
}

#[test]
fn rest_usernames_are_accepted_up_to_48_hours_ahead_by_default() {
    let mut harness = Harness::new();
    let start = harness.unix_now();
    let mut within = rest_client(ALICE, start + 48 * 3600);
    let (response, _) = within.send(&mut harness, Method::Allocate, &[udp()]);
    assert_eq!(error_code(&response), None);
    let mut beyond = rest_client("203.0.113.6:40000", start + 48 * 3600 + 1);
    let (response, _) = beyond.send(&mut harness, Method::Allocate, &[udp()]);
    assert_eq!(error_code(&response), Some(ErrorCode::UNAUTHORIZED));
}

#[test]
fn a_username_too_far_ahead_is_accepted_once_its_expiry_is_within_the_maximum() {
    let mut config = config();
    config.lifetimes.credential_max = Duration::from_secs(3600);
    let mut harness = Harness::with_config(config);
    let mut client = rest_client(ALICE, harness.unix_now() + 2 * 3600);
    let (response, _) = client.send(&mut harness, Method::Allocate, &[udp()]);
    assert_eq!(error_code(&response), Some(ErrorCode::UNAUTHORIZED));
    harness.advance(Duration::from_secs(3599));
    let (response, _) = client.send(&mut harness, Method::Allocate, &[udp()]);
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::UNAUTHORIZED),
        "3601 s ahead"
    );
    harness.advance(Duration::from_secs(1));
    let (response, _) = client.send(&mut harness, Method::Allocate, &[udp()]);
    assert_eq!(error_code(&response), None, "3600 s ahead");
}

#[test]
fn static_users_are_not_bound_by_the_credential_lifetime() {
    let mut config = config();
    config.lifetimes.credential_max = Duration::from_secs(1);
    let mut harness = Harness::with_config(config);
    let mut client = Client::new(ALICE);
    client.allocate(&mut harness);
}

#[test]
fn after_its_rest_credentials_expire_a_client_can_still_delete_its_allocation_and_nothing_else() {
    let mut harness = Harness::new();
    let mut client = rest_client(ALICE, harness.unix_now() + 60);
    let relayed = client.allocate(&mut harness);
    harness.advance(Duration::from_secs(120));

    for (method, attributes) in [
        (Method::Refresh, vec![Attribute::Lifetime(600)]),
        (Method::Refresh, vec![]),
        (
            Method::CreatePermission,
            vec![Attribute::XorPeerAddress(addr(PEER))],
        ),
        (
            Method::ChannelBind,
            vec![
                Attribute::ChannelNumber(0x4001),
                Attribute::XorPeerAddress(addr(PEER)),
            ],
        ),
        (Method::Allocate, vec![udp()]),
    ] {
        let (response, commands) = client.send(&mut harness, method, &attributes);
        assert_eq!(
            error_code(&response),
            Some(ErrorCode::UNAUTHORIZED),
            "{method:?}"
        );
        assert_eq!(commands.len(), 1, "{method:?}: {commands:?}");
    }
    assert_eq!(auth_failures(&harness, "expired_credentials"), 5);

    let (response, commands) =
        client.send(&mut harness, Method::Refresh, &[Attribute::Lifetime(0)]);
    assert_eq!(error_code(&response), None);
    client.verify_response(&response);
    assert_eq!(
        commands[0],
        Command::CloseRelaySocket(relay_socket(relayed))
    );
    assert_eq!(harness.server.allocation_count(), 0);
}

#[test]
fn expired_credentials_cannot_delete_an_allocation_they_did_not_create() {
    let mut harness = Harness::new();
    // Alice's allocation, made with a static password, on the 5-tuple the REST client uses.
    let mut alice = Client::new(ALICE);
    alice.allocate(&mut harness);
    let mut expired = rest_client(ALICE, harness.unix_now() + 60);
    for _ in 0..128 {
        expired.transaction_id();
    }
    harness.advance(Duration::from_secs(61));
    let (response, _) = expired.send(&mut harness, Method::Refresh, &[Attribute::Lifetime(0)]);
    assert_eq!(error_code(&response), Some(ErrorCode::UNAUTHORIZED));
    assert_eq!(harness.server.allocation_count(), 1);

    // Nor one on another 5-tuple: there is none, so 401 rather than 437.
    let mut elsewhere = rest_client("203.0.113.6:40000", harness.unix_now() - 1);
    let (response, _) = elsewhere.send(&mut harness, Method::Refresh, &[Attribute::Lifetime(0)]);
    assert_eq!(error_code(&response), Some(ErrorCode::UNAUTHORIZED));
}

#[test]
fn expired_credentials_with_a_wrong_password_still_get_401_for_a_deletion() {
    let mut harness = Harness::new();
    let mut client = rest_client(ALICE, harness.unix_now() + 60);
    client.allocate(&mut harness);
    harness.advance(Duration::from_secs(61));
    client.password = "not the password".to_owned();
    let (response, _) = client.send(&mut harness, Method::Refresh, &[Attribute::Lifetime(0)]);
    assert_eq!(error_code(&response), Some(ErrorCode::UNAUTHORIZED));
    assert_eq!(harness.server.allocation_count(), 1);
}

// Arithmetic on configured values

#[test]
fn lifetimes_of_any_length_never_panic_and_are_clamped_to_the_ceiling() {
    let mut config = config();
    config.lifetimes.allocation_default = Duration::MAX;
    config.lifetimes.allocation_max = Duration::MAX;
    config.lifetimes.permission = Duration::MAX;
    config.lifetimes.channel = Duration::MAX;
    config.lifetimes.channel_cooldown = Duration::MAX;
    config.lifetimes.transaction = Duration::MAX;
    config.lifetimes.nonce = Duration::MAX;
    assert_eq!(
        config.validate().unwrap_err().setting,
        "lifetimes.allocation_default"
    );
    let mut harness = Harness::with_config(config);
    let mut client = Client::new(ALICE);
    let (response, _) = client.send(
        &mut harness,
        Method::Allocate,
        &[udp(), Attribute::Lifetime(u32::MAX)],
    );
    assert_eq!(error_code(&response), None);
    assert_eq!(
        lifetime(&response),
        Some(u32::try_from(turnpike_relay::Lifetimes::CEILING.as_secs()).unwrap())
    );
    let (response, _) = client.send(
        &mut harness,
        Method::ChannelBind,
        &[
            Attribute::ChannelNumber(0x4001),
            Attribute::XorPeerAddress(addr(PEER)),
        ],
    );
    assert_eq!(error_code(&response), None);
    harness.advance(turnpike_relay::Lifetimes::CEILING);
    assert_eq!(harness.server.allocation_count(), 0);
    assert_eq!(harness.server.footprint().timers, 0);
}

// Typed refusals

#[test]
fn refusals_sharing_a_wire_code_are_counted_apart_by_reason() {
    use turnpike_relay::Refusal;
    let mut config = config();
    config.quotas.permissions_per_allocation = 1;
    config.quotas.channels_per_allocation = 1;
    let mut harness = Harness::with_config(config);
    let mut client = Client::new(ALICE);
    client.allocate(&mut harness);
    let bind = |number: u16, peer: &str| {
        [
            Attribute::ChannelNumber(number),
            Attribute::XorPeerAddress(addr(peer)),
        ]
    };
    let (response, _) = client.send(&mut harness, Method::ChannelBind, &bind(0x4001, PEER));
    assert_eq!(error_code(&response), None);
    // A second channel: over the channel quota. A second peer: over the permission quota.
    let (response, _) = client.send(&mut harness, Method::ChannelBind, &bind(0x4002, PEER));
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::BAD_REQUEST),
        "in use"
    );
    let (channel_quota, _) =
        client.send(&mut harness, Method::ChannelBind, &bind(0x4003, OTHER_PEER));
    let (permission_quota, _) = client.send(
        &mut harness,
        Method::CreatePermission,
        &[Attribute::XorPeerAddress(addr(OTHER_PEER))],
    );
    for response in [&channel_quota, &permission_quota] {
        assert_eq!(
            error_code(response),
            Some(ErrorCode::ALLOCATION_QUOTA_REACHED)
        );
    }
    let refusals = &harness.server.stats().refusals;
    assert_eq!(refusals.get(&Refusal::ChannelInUse), Some(&1));
    assert_eq!(refusals.get(&Refusal::ChannelQuota), Some(&1));
    assert_eq!(refusals.get(&Refusal::PermissionQuota), Some(&1));
    assert_eq!(Refusal::ChannelQuota.as_str(), "channel_quota");
    assert_eq!(
        ErrorCode::from(Refusal::PermissionQuota),
        ErrorCode::ALLOCATION_QUOTA_REACHED
    );
}
