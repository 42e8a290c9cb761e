//! Every request type and every error code the core answers with, as tables: the request a
//! client sends, the error code or success that comes back, and, where it matters, the exact
//! commands the driver is asked to execute.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code, and the harness it shares: a panic is how a test reports a failure"
)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use turnpike_proto::{
    AddressFamily, Attribute, AttributeType, ChannelNumber, ErrorCode, Message, Method,
    RawAttribute,
};
use turnpike_relay::policy::{Cidr, PeerPolicy};
use turnpike_relay::{ChannelRoute, Command, Config, Forward, RelaySocket};

const ALICE: &str = "203.0.113.5:40000";
const PEER: &str = "192.0.2.10:5000";
const OTHER_PEER: &str = "192.0.2.11:5000";
const PEER_V6: &str = "[2001:db8:ffff::10]:5000";
const UDP: u8 = 17;
const TCP: u8 = 6;
/// A comprehension-required type this server does not know (RFC 8489 §14: below 0x8000).
const UNKNOWN_REQUIRED: AttributeType = AttributeType(0x7F00);
/// A comprehension-optional type this server does not know, which it must ignore.
const UNKNOWN_OPTIONAL: AttributeType = AttributeType(0x8F00);

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn xor_peer(text: &str) -> Attribute<'static> {
    Attribute::XorPeerAddress(addr(text))
}

fn unknown(kind: AttributeType) -> Attribute<'static> {
    Attribute::Unknown(RawAttribute::new(kind, b"x"))
}

fn udp() -> Attribute<'static> {
    Attribute::RequestedTransport(UDP)
}

/// The commands of a request that changed nothing: its response and nothing else.
fn only_the_response(client: &Client, response: &[u8]) -> Vec<Command> {
    vec![Command::SendToClient {
        to: client.five_tuple,
        payload: response.to_vec(),
    }]
}

/// The attribute types of a message, in wire order.
fn kinds(message: &[u8]) -> Vec<AttributeType> {
    attributes(message).iter().map(Attribute::kind).collect()
}

/// The types listed in UNKNOWN-ATTRIBUTES.
fn unknown_attributes(response: &[u8]) -> Vec<AttributeType> {
    attributes(response)
        .into_iter()
        .find_map(|attribute| match attribute {
            Attribute::UnknownAttributes(list) => Some(list.iter().collect()),
            _ => None,
        })
        .expect("UNKNOWN-ATTRIBUTES present")
}

fn v4_only() -> Config {
    let mut config = config();
    config.relay_ipv6 = None;
    config
}

fn with(change: impl FnOnce(&mut Config)) -> Config {
    let mut config = config();
    change(&mut config);
    config
}

/// A second user, bob, on the very 5-tuple `client` uses.
fn bob_on(client: &Client) -> Client {
    let mut bob = Client::with_credentials(&client.five_tuple.client.to_string(), "bob", "hunter2");
    // Transaction IDs are derived from the client port and a counter: move bob's counter away
    // from alice's, or his requests would be taken for retransmissions of hers.
    for _ in 0..128 {
        bob.transaction_id();
    }
    bob
}

/// A client at `address` with an allocation made with `attributes`.
fn allocated(harness: &mut Harness, address: &str, attributes: &[Attribute<'_>]) -> Client {
    let mut client = Client::new(address);
    let (response, _) = client.send(harness, Method::Allocate, attributes);
    assert_eq!(error_code(&response), None, "allocation failed");
    client
}

/// The relayed address of `family` in an Allocate success response.
fn relayed_of(response: &[u8], family: AddressFamily) -> SocketAddr {
    relayed_addresses(response)
        .into_iter()
        .find(|address| AddressFamily::of(address.ip()) == family)
        .expect("relayed address of that family")
}

// Binding

#[test]
fn binding_answers_with_the_mapped_address_alone_and_no_software() {
    let mut harness = Harness::with_config(with(|config| {
        config.software = Some("turnpike-test".to_owned());
    }));
    for fingerprint in [true, false] {
        let mut client = Client::new(ALICE);
        client.fingerprint = fingerprint;
        let request = client.request(Method::Binding, &[]);
        let (forward, commands) = harness.from_client(client.five_tuple, &request);
        assert!(forward.is_none());
        let response = only_response(&commands);
        assert_eq!(commands, only_the_response(&client, &response));
        assert_eq!(error_code(&response), None);
        assert!(attributes(&response).contains(&Attribute::XorMappedAddress(addr(ALICE))));
        let expected = if fingerprint {
            vec![
                AttributeType::XOR_MAPPED_ADDRESS,
                AttributeType::FINGERPRINT,
            ]
        } else {
            vec![AttributeType::XOR_MAPPED_ADDRESS]
        };
        assert_eq!(
            kinds(&response),
            expected,
            "fingerprint in request: {fingerprint}"
        );
        if fingerprint {
            Message::parse(&response)
                .unwrap()
                .verify_fingerprint()
                .unwrap();
        }
    }
}

#[test]
fn binding_with_an_unknown_comprehension_required_attribute_gets_420_listing_it() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    let request = client.request(Method::Binding, &[unknown(UNKNOWN_REQUIRED)]);
    let (_, commands) = harness.from_client(client.five_tuple, &request);
    let response = only_response(&commands);
    assert_eq!(error_code(&response), Some(ErrorCode::UNKNOWN_ATTRIBUTE));
    assert_eq!(unknown_attributes(&response), [UNKNOWN_REQUIRED]);
    assert_eq!(
        kinds(&response),
        [
            AttributeType::ERROR_CODE,
            AttributeType::UNKNOWN_ATTRIBUTES,
            AttributeType::FINGERPRINT
        ]
    );
}

#[test]
fn binding_ignores_an_unknown_comprehension_optional_attribute() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    let request = client.request(Method::Binding, &[unknown(UNKNOWN_OPTIONAL)]);
    let (_, commands) = harness.from_client(client.five_tuple, &request);
    assert_eq!(error_code(&only_response(&commands)), None);
}

// Methods that are no requests here

#[test]
fn unknown_methods_and_send_or_data_as_requests_get_an_unsigned_400() {
    let mut harness = Harness::new();
    for (port, method) in [Method::Other(0x0FF), Method::Send, Method::Data]
        .into_iter()
        .enumerate()
    {
        for signed in [false, true] {
            let mut client = Client::new(&format!("203.0.113.5:{}", 41000 + port));
            if signed {
                client.handshake(&mut harness);
            }
            let request = client.request(method, &[]);
            let (forward, commands) = harness.from_client(client.five_tuple, &request);
            assert!(forward.is_none());
            let response = only_response(&commands);
            assert_eq!(commands, only_the_response(&client, &response));
            assert_eq!(
                error_code(&response),
                Some(ErrorCode::BAD_REQUEST),
                "{method:?} signed: {signed}"
            );
            assert_eq!(
                Message::parse(&response).unwrap().method(),
                method,
                "the error response is of the request's method"
            );
            assert!(
                !kinds(&response).contains(&AttributeType::MESSAGE_INTEGRITY),
                "{method:?}: nothing was authenticated, so nothing is signed"
            );
        }
    }
}

// Allocate

#[test]
fn allocate_refuses_each_request_it_cannot_serve_with_its_error_code() {
    let token = Attribute::ReservationToken([7; 8]);
    let even = Attribute::EvenPort {
        reserve_next: false,
    };
    let reserve = Attribute::EvenPort { reserve_next: true };
    let v4 = AddressFamily::V4;
    let v6 = AddressFamily::V6;
    let table: Vec<(&str, Config, Vec<Attribute<'static>>, ErrorCode)> = vec![
        (
            "TCP is not relayed",
            config(),
            vec![Attribute::RequestedTransport(TCP)],
            ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL,
        ),
        (
            "REQUESTED-TRANSPORT is required",
            config(),
            vec![],
            ErrorCode::BAD_REQUEST,
        ),
        (
            "IPv6 relaying from an IPv4-only relay",
            v4_only(),
            vec![udp(), Attribute::RequestedAddressFamily(v6)],
            ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED,
        ),
        (
            "IPv4 relaying, by default, from an IPv6-only relay",
            with(|config| config.relay_ipv4 = None),
            vec![udp()],
            ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED,
        ),
        (
            "an additional family must be IPv6",
            config(),
            vec![udp(), Attribute::AdditionalAddressFamily(v4)],
            ErrorCode::BAD_REQUEST,
        ),
        (
            "a requested and an additional family exclude each other",
            config(),
            vec![
                udp(),
                Attribute::RequestedAddressFamily(v4),
                Attribute::AdditionalAddressFamily(v6),
            ],
            ErrorCode::BAD_REQUEST,
        ),
        (
            "reserving the next port of a dual allocation is malformed",
            config(),
            vec![udp(), reserve, Attribute::AdditionalAddressFamily(v6)],
            ErrorCode::BAD_REQUEST,
        ),
        (
            "an unsupported family is refused before a reservation",
            v4_only(),
            vec![udp(), Attribute::RequestedAddressFamily(v6), reserve],
            ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED,
        ),
        (
            "a token this relay never issued",
            config(),
            vec![udp(), token],
            ErrorCode::INSUFFICIENT_CAPACITY,
        ),
        (
            "a reservation token excludes EVEN-PORT",
            config(),
            vec![udp(), token, even],
            ErrorCode::BAD_REQUEST,
        ),
        (
            "a reservation token excludes REQUESTED-ADDRESS-FAMILY",
            config(),
            vec![udp(), token, Attribute::RequestedAddressFamily(v4)],
            ErrorCode::BAD_REQUEST,
        ),
        (
            "a reservation token excludes ADDITIONAL-ADDRESS-FAMILY",
            config(),
            vec![udp(), token, Attribute::AdditionalAddressFamily(v6)],
            ErrorCode::BAD_REQUEST,
        ),
        (
            "an unknown comprehension-required attribute",
            config(),
            vec![udp(), unknown(UNKNOWN_REQUIRED)],
            ErrorCode::UNKNOWN_ATTRIBUTE,
        ),
    ];
    for (name, config, request, expected) in table {
        let mut harness = Harness::with_config(config);
        let mut client = Client::new(ALICE);
        let (response, commands) = client.send(&mut harness, Method::Allocate, &request);
        assert_eq!(error_code(&response), Some(expected), "{name}");
        assert_eq!(
            commands,
            only_the_response(&client, &response),
            "{name}: no socket opened"
        );
        client.verify_response(&response);
        assert_eq!(harness.server.allocation_count(), 0, "{name}");
        if expected == ErrorCode::UNKNOWN_ATTRIBUTE {
            assert_eq!(unknown_attributes(&response), [UNKNOWN_REQUIRED]);
        }
    }
}

#[test]
fn allocate_ignores_an_unknown_comprehension_optional_attribute() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    let (response, _) = client.send(
        &mut harness,
        Method::Allocate,
        &[udp(), unknown(UNKNOWN_OPTIONAL)],
    );
    assert_eq!(error_code(&response), None);
}

#[test]
fn allocate_opens_one_socket_per_family_before_answering_with_the_relayed_addresses() {
    let v6 = AddressFamily::V6;
    // (name, configuration, request, families relayed, whether an ADDRESS-ERROR-CODE is due)
    type Row = (
        &'static str,
        Config,
        Vec<Attribute<'static>>,
        Vec<AddressFamily>,
        bool,
    );
    let table: Vec<Row> = vec![
        (
            "IPv4 by default",
            config(),
            vec![udp()],
            vec![AddressFamily::V4],
            false,
        ),
        (
            "IPv6 on request",
            config(),
            vec![udp(), Attribute::RequestedAddressFamily(v6)],
            vec![v6],
            false,
        ),
        (
            "both for a dual allocation",
            config(),
            vec![udp(), Attribute::AdditionalAddressFamily(v6)],
            vec![AddressFamily::V4, v6],
            false,
        ),
        (
            "IPv4 and an address error for a dual allocation on an IPv4-only relay",
            v4_only(),
            vec![udp(), Attribute::AdditionalAddressFamily(v6)],
            vec![AddressFamily::V4],
            true,
        ),
    ];
    for (name, config, request, families, address_error) in table {
        let mut harness = Harness::with_config(config);
        let mut client = Client::new(ALICE);
        let (response, commands) = client.send(&mut harness, Method::Allocate, &request);
        assert_eq!(error_code(&response), None, "{name}");
        client.verify_response(&response);
        let relayed = relayed_addresses(&response);
        let relayed_families: Vec<AddressFamily> = relayed
            .iter()
            .map(|address| AddressFamily::of(address.ip()))
            .collect();
        assert_eq!(relayed_families, families, "{name}");
        assert!(
            relayed
                .iter()
                .all(|address| address.port() == relayed[0].port()),
            "{name}: one port for both families"
        );
        let mut expected: Vec<Command> = relayed
            .iter()
            .map(|address| Command::OpenRelaySocket(relay_socket(*address)))
            .collect();
        expected.extend(only_the_response(&client, &response));
        assert_eq!(commands, expected, "{name}");
        let error = attributes(&response)
            .into_iter()
            .find(|attribute| matches!(attribute, Attribute::AddressErrorCode { .. }));
        let expected_error = address_error.then_some(Attribute::AddressErrorCode {
            family: v6,
            code: ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED,
            reason: "Address Family not Supported",
        });
        assert_eq!(error, expected_error, "{name}");
    }
}

#[test]
fn allocate_grants_the_default_lifetime_for_less_and_caps_it_at_the_maximum() {
    let table: [(Option<u32>, u32); 7] = [
        (None, 600),
        (Some(0), 600),
        (Some(60), 600),
        (Some(600), 600),
        (Some(1800), 1800),
        (Some(3600), 3600),
        (Some(7200), 3600),
    ];
    for (requested, granted) in table {
        let mut harness = Harness::new();
        let mut client = Client::new(ALICE);
        let mut request = vec![udp()];
        request.extend(requested.map(Attribute::Lifetime));
        let (response, _) = client.send(&mut harness, Method::Allocate, &request);
        assert_eq!(
            lifetime(&response),
            Some(granted),
            "asked for {requested:?}"
        );
        assert!(
            attributes(&response).contains(&Attribute::XorMappedAddress(addr(ALICE))),
            "success responses carry XOR-MAPPED-ADDRESS"
        );
        let commands = harness.advance(Duration::from_secs(u64::from(granted) - 1));
        assert!(commands.is_empty(), "alive a second before {granted} s");
        let commands = harness.advance(Duration::from_secs(1));
        assert!(
            commands
                .iter()
                .any(|command| matches!(command, Command::CloseRelaySocket(_))),
            "gone at {granted} s"
        );
    }
}

#[test]
fn allocate_with_even_port_always_gets_an_even_port() {
    let mut harness = Harness::new();
    for port in 0..24 {
        let mut client = Client::new(&format!("203.0.113.5:{}", 40000 + port));
        let (response, _) = client.send(
            &mut harness,
            Method::Allocate,
            &[
                udp(),
                Attribute::EvenPort {
                    reserve_next: false,
                },
            ],
        );
        let relayed = relayed_addresses(&response);
        assert_eq!(relayed.len(), 1);
        assert_eq!(relayed[0].port() % 2, 0, "{}", relayed[0]);
    }
}

#[test]
fn responses_to_authenticated_requests_carry_software_when_configured() {
    let mut harness = Harness::with_config(with(|config| {
        config.software = Some("turnpike-test".to_owned());
    }));
    let mut client = Client::new(ALICE);
    let (response, _) = client.send(&mut harness, Method::Allocate, &[udp()]);
    assert!(attributes(&response).contains(&Attribute::Software("turnpike-test")));
}

#[test]
fn a_second_allocate_on_the_same_five_tuple_gets_437() {
    let mut harness = Harness::new();
    let mut client = allocated(&mut harness, ALICE, &[udp()]);
    let (response, commands) = client.send(&mut harness, Method::Allocate, &[udp()]);
    assert_eq!(error_code(&response), Some(ErrorCode::ALLOCATION_MISMATCH));
    assert_eq!(commands, only_the_response(&client, &response));
    assert_eq!(harness.server.allocation_count(), 1);

    let mut bob = bob_on(&client);
    let (response, _) = bob.send(&mut harness, Method::Allocate, &[udp()]);
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::ALLOCATION_MISMATCH),
        "the 5-tuple is taken, whoever asks"
    );
}

#[test]
fn a_retransmitted_allocate_gets_the_same_response_and_opens_no_second_socket() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    client.handshake(&mut harness);
    let id = client.transaction_id();
    let request = client.request_with_id(Method::Allocate, id, &[udp()]);
    let (_, first) = harness.from_client(client.five_tuple, &request);
    let response = only_response(&first);
    assert_eq!(error_code(&response), None);
    assert!(matches!(first[0], Command::OpenRelaySocket(_)));

    harness.advance(Duration::from_secs(39));
    let (_, commands) = harness.from_client(client.five_tuple, &request);
    assert_eq!(
        commands,
        only_the_response(&client, &response),
        "byte-identical, from the transaction cache"
    );

    // The cached response is gone after 40 s; the allocation still recognises its request.
    harness.advance(Duration::from_secs(2));
    let request = client.request_with_id(Method::Allocate, id, &[udp()]);
    let (_, commands) = harness.from_client(client.five_tuple, &request);
    let regenerated = only_response(&commands);
    assert_eq!(commands, only_the_response(&client, &regenerated));
    assert_eq!(error_code(&regenerated), None, "a success, not 437");
    client.verify_response(&regenerated);
    assert_eq!(
        relayed_addresses(&regenerated),
        relayed_addresses(&response)
    );
    assert_eq!(lifetime(&regenerated), Some(600 - 41), "the time left");
    assert_eq!(harness.server.allocation_count(), 1);
}

#[test]
fn allocations_beyond_a_users_quota_or_the_total_get_486() {
    let mut harness = Harness::with_config(with(|config| {
        config.quotas.allocations_per_user = 1;
    }));
    allocated(&mut harness, "203.0.113.5:40000", &[udp()]);
    let mut again = Client::new("203.0.113.5:40001");
    let (response, commands) = again.send(&mut harness, Method::Allocate, &[udp()]);
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::ALLOCATION_QUOTA_REACHED)
    );
    assert_eq!(commands, only_the_response(&again, &response));
    let mut bob = Client::with_credentials("203.0.113.5:40002", "bob", "hunter2");
    let (response, _) = bob.send(&mut harness, Method::Allocate, &[udp()]);
    assert_eq!(
        error_code(&response),
        None,
        "another user has a quota of his own"
    );

    let mut harness = Harness::with_config(with(|config| {
        config.quotas.allocations_total = 1;
    }));
    allocated(&mut harness, "203.0.113.5:40000", &[udp()]);
    let mut bob = Client::with_credentials("203.0.113.5:40002", "bob", "hunter2");
    let (response, _) = bob.send(&mut harness, Method::Allocate, &[udp()]);
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::ALLOCATION_QUOTA_REACHED)
    );
}

#[test]
fn allocate_gets_508_when_every_relayed_port_is_taken_and_succeeds_once_one_is_free() {
    let mut harness = Harness::with_config(with(|config| {
        config.relay_ports = 50000..=50001;
    }));
    let mut first = allocated(&mut harness, "203.0.113.5:40000", &[udp()]);
    allocated(&mut harness, "203.0.113.5:40001", &[udp()]);
    let mut third = Client::new("203.0.113.5:40002");
    let (response, commands) = third.send(&mut harness, Method::Allocate, &[udp()]);
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::INSUFFICIENT_CAPACITY)
    );
    assert_eq!(commands, only_the_response(&third, &response));

    first.send(&mut harness, Method::Refresh, &[Attribute::Lifetime(0)]);
    let (response, _) = third.send(&mut harness, Method::Allocate, &[udp()]);
    assert_eq!(error_code(&response), None);
}

#[test]
fn a_draining_relay_refuses_new_allocations_with_508_and_keeps_the_old_ones() {
    let mut harness = Harness::new();
    let mut old = allocated(&mut harness, "203.0.113.5:40000", &[udp()]);
    harness.server.begin_drain();
    let mut new = Client::new("203.0.113.5:40001");
    let (response, _) = new.send(&mut harness, Method::Allocate, &[udp()]);
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::INSUFFICIENT_CAPACITY)
    );
    let (response, _) = old.send(&mut harness, Method::Refresh, &[Attribute::Lifetime(600)]);
    assert_eq!(error_code(&response), None);
}

// Requests on someone else's allocation, or none

#[test]
fn another_user_on_the_same_five_tuple_gets_441_for_every_request() {
    let table: [(Method, Vec<Attribute<'static>>); 3] = [
        (Method::Refresh, vec![Attribute::Lifetime(600)]),
        (Method::CreatePermission, vec![xor_peer(PEER)]),
        (
            Method::ChannelBind,
            vec![Attribute::ChannelNumber(0x4001), xor_peer(PEER)],
        ),
    ];
    for (method, request) in table {
        let mut harness = Harness::new();
        let alice = allocated(&mut harness, ALICE, &[udp()]);
        let mut bob = bob_on(&alice);
        let (response, commands) = bob.send(&mut harness, method, &request);
        assert_eq!(
            error_code(&response),
            Some(ErrorCode::WRONG_CREDENTIALS),
            "{method:?}"
        );
        assert_eq!(commands, only_the_response(&bob, &response), "{method:?}");
        bob.verify_response(&response);
        assert_eq!(harness.server.permission_count(), 0);
    }
}

#[test]
fn requests_without_an_allocation_get_437() {
    let table: [(Method, Vec<Attribute<'static>>); 4] = [
        (Method::Refresh, vec![Attribute::Lifetime(600)]),
        (Method::Refresh, vec![Attribute::Lifetime(0)]),
        (Method::CreatePermission, vec![xor_peer(PEER)]),
        (
            Method::ChannelBind,
            vec![Attribute::ChannelNumber(0x4001), xor_peer(PEER)],
        ),
    ];
    for (method, request) in table {
        let mut harness = Harness::new();
        let mut client = Client::new(ALICE);
        let (response, commands) = client.send(&mut harness, method, &request);
        assert_eq!(
            error_code(&response),
            Some(ErrorCode::ALLOCATION_MISMATCH),
            "{method:?} {request:?}"
        );
        assert_eq!(commands, only_the_response(&client, &response));
        client.verify_response(&response);
    }
}

// Refresh

#[test]
fn refresh_grants_lifetimes_like_allocate() {
    let table: [(Option<u32>, u32); 5] = [
        (None, 600),
        (Some(60), 600),
        (Some(1800), 1800),
        (Some(3600), 3600),
        (Some(7200), 3600),
    ];
    for (requested, granted) in table {
        let mut harness = Harness::new();
        let mut client = allocated(&mut harness, ALICE, &[udp()]);
        harness.advance(Duration::from_secs(100));
        let request: Vec<Attribute<'_>> = requested.map(Attribute::Lifetime).into_iter().collect();
        let (response, commands) = client.send(&mut harness, Method::Refresh, &request);
        assert_eq!(
            lifetime(&response),
            Some(granted),
            "asked for {requested:?}"
        );
        assert_eq!(commands, only_the_response(&client, &response));
        client.verify_response(&response);
        let commands = harness.advance(Duration::from_secs(u64::from(granted) - 1));
        assert!(commands.is_empty(), "refreshed from 100 s on");
        let commands = harness.advance(Duration::from_secs(1));
        assert_eq!(
            commands.len(),
            1,
            "the socket closes at the refreshed expiry"
        );
    }
}

#[test]
fn refresh_with_a_family_refreshes_only_that_family_of_a_dual_allocation() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    let (allocation, _) = client.send(
        &mut harness,
        Method::Allocate,
        &[udp(), Attribute::AdditionalAddressFamily(AddressFamily::V6)],
    );
    let v4 = relay_socket(relayed_of(&allocation, AddressFamily::V4));
    let v6 = relay_socket(relayed_of(&allocation, AddressFamily::V6));
    harness.advance(Duration::from_secs(500));
    let (response, commands) = client.send(
        &mut harness,
        Method::Refresh,
        &[
            Attribute::Lifetime(1200),
            Attribute::RequestedAddressFamily(AddressFamily::V6),
        ],
    );
    assert_eq!(lifetime(&response), Some(1200));
    assert_eq!(commands, only_the_response(&client, &response));

    let commands = harness.advance(Duration::from_secs(100));
    assert_eq!(
        commands,
        [Command::CloseRelaySocket(v4)],
        "IPv4 ends at 600 s"
    );
    assert_eq!(harness.server.allocation_count(), 1);
    let commands = harness.advance(Duration::from_secs(1099));
    assert!(commands.is_empty());
    let commands = harness.advance(Duration::from_secs(1));
    assert_eq!(
        commands,
        [Command::CloseRelaySocket(v6)],
        "IPv6 ends at 1700 s"
    );
    assert_eq!(harness.server.allocation_count(), 0);
}

#[test]
fn refresh_to_zero_with_a_family_deletes_only_that_family_and_its_permissions() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    let (allocation, _) = client.send(
        &mut harness,
        Method::Allocate,
        &[udp(), Attribute::AdditionalAddressFamily(AddressFamily::V6)],
    );
    let v4 = relay_socket(relayed_of(&allocation, AddressFamily::V4));
    let v6 = relay_socket(relayed_of(&allocation, AddressFamily::V6));
    client.send(
        &mut harness,
        Method::CreatePermission,
        &[xor_peer(PEER), xor_peer(PEER_V6)],
    );
    let (response, commands) = client.send(
        &mut harness,
        Method::Refresh,
        &[
            Attribute::Lifetime(0),
            Attribute::RequestedAddressFamily(AddressFamily::V4),
        ],
    );
    assert_eq!(error_code(&response), None);
    let mut expected = vec![
        Command::RemovePermission {
            relay: v4,
            peer: addr(PEER).ip(),
        },
        Command::CloseRelaySocket(v4),
    ];
    expected.extend(only_the_response(&client, &response));
    assert_eq!(commands, expected);
    assert_eq!(harness.server.allocation_count(), 1);

    let (forward, commands) = harness.from_peer(v6, addr(PEER_V6), b"still here");
    assert!(forward.is_none());
    assert_eq!(
        sent_to(&commands, client.five_tuple).len(),
        1,
        "IPv6 relays on"
    );
    let (_, commands) = harness.from_peer(v4, addr(PEER), b"gone");
    assert!(commands.is_empty());

    let (response, _) = client.send(
        &mut harness,
        Method::Refresh,
        &[Attribute::RequestedAddressFamily(AddressFamily::V4)],
    );
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH),
        "IPv4 is no longer allocated"
    );
}

#[test]
fn refresh_of_a_family_that_was_never_allocated_gets_443() {
    let mut harness = Harness::new();
    let mut client = allocated(&mut harness, ALICE, &[udp()]);
    for lifetime in [600, 0] {
        let (response, commands) = client.send(
            &mut harness,
            Method::Refresh,
            &[
                Attribute::Lifetime(lifetime),
                Attribute::RequestedAddressFamily(AddressFamily::V6),
            ],
        );
        assert_eq!(
            error_code(&response),
            Some(ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH),
            "lifetime {lifetime}"
        );
        assert_eq!(commands, only_the_response(&client, &response));
    }
    assert_eq!(harness.server.allocation_count(), 1);
}

// CreatePermission

#[test]
fn create_permission_installs_one_permission_per_peer_address() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    let (allocation, _) = client.send(&mut harness, Method::Allocate, &[udp()]);
    let relay = relay_socket(relayed_addresses(&allocation)[0]);
    let (response, commands) = client.send(
        &mut harness,
        Method::CreatePermission,
        &[
            xor_peer(PEER),
            xor_peer(OTHER_PEER),
            // Permissions ignore the port: the same IP again adds nothing.
            xor_peer("192.0.2.10:6000"),
        ],
    );
    assert_eq!(error_code(&response), None);
    client.verify_response(&response);
    let mut expected = vec![
        Command::InstallPermission {
            relay,
            peer: addr(PEER).ip(),
        },
        Command::InstallPermission {
            relay,
            peer: addr(OTHER_PEER).ip(),
        },
    ];
    expected.extend(only_the_response(&client, &response));
    assert_eq!(commands, expected);
    assert_eq!(harness.server.permission_count(), 2);
}

#[test]
fn create_permission_refuses_bad_requests_and_installs_nothing() {
    let table: Vec<(&str, Config, Vec<Attribute<'static>>, ErrorCode)> = vec![
        (
            "no XOR-PEER-ADDRESS",
            config(),
            vec![],
            ErrorCode::BAD_REQUEST,
        ),
        (
            "an IPv6 peer of an IPv4 allocation",
            config(),
            vec![xor_peer(PEER_V6)],
            ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH,
        ),
        (
            "a peer the policy denies",
            config(),
            vec![xor_peer("10.0.0.1:5000")],
            ErrorCode::FORBIDDEN,
        ),
        (
            "one denied peer among allowed ones",
            config(),
            vec![
                xor_peer(PEER),
                xor_peer("127.0.0.1:5000"),
                xor_peer(OTHER_PEER),
            ],
            ErrorCode::FORBIDDEN,
        ),
        (
            "one peer of the wrong family among good ones",
            config(),
            vec![xor_peer(PEER), xor_peer(PEER_V6)],
            ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH,
        ),
        (
            // A per-client quota: 486, like the allocation quotas (see `Quotas`).
            "more permissions than the allocation may hold",
            with(|config| config.quotas.permissions_per_allocation = 2),
            vec![
                xor_peer(PEER),
                xor_peer(OTHER_PEER),
                xor_peer("192.0.2.12:1"),
            ],
            ErrorCode::ALLOCATION_QUOTA_REACHED,
        ),
        (
            "an unknown comprehension-required attribute",
            config(),
            vec![xor_peer(PEER), unknown(UNKNOWN_REQUIRED)],
            ErrorCode::UNKNOWN_ATTRIBUTE,
        ),
    ];
    for (name, config, request, expected) in table {
        let mut harness = Harness::with_config(config);
        let mut client = allocated(&mut harness, ALICE, &[udp()]);
        let (response, commands) = client.send(&mut harness, Method::CreatePermission, &request);
        assert_eq!(error_code(&response), Some(expected), "{name}");
        assert_eq!(commands, only_the_response(&client, &response), "{name}");
        client.verify_response(&response);
        assert_eq!(
            harness.server.permission_count(),
            0,
            "{name}: all or nothing"
        );
    }
}

#[test]
fn create_permission_up_to_the_quota_succeeds_and_refreshing_counts_no_new_permission() {
    let mut harness = Harness::with_config(with(|config| {
        config.quotas.permissions_per_allocation = 2;
    }));
    let mut client = allocated(&mut harness, ALICE, &[udp()]);
    for _ in 0..2 {
        let (response, _) = client.send(
            &mut harness,
            Method::CreatePermission,
            &[xor_peer(PEER), xor_peer(OTHER_PEER)],
        );
        assert_eq!(error_code(&response), None);
    }
    let (response, _) = client.send(
        &mut harness,
        Method::CreatePermission,
        &[xor_peer("192.0.2.12:1")],
    );
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::ALLOCATION_QUOTA_REACHED)
    );
}

// ChannelBind

#[test]
fn channel_bind_refuses_bad_requests_and_binds_nothing() {
    let table: Vec<(&str, Vec<Attribute<'static>>, ErrorCode)> = vec![
        (
            "a number below the channel range",
            vec![Attribute::ChannelNumber(0x3FFF), xor_peer(PEER)],
            ErrorCode::BAD_REQUEST,
        ),
        (
            "a number above the channel range",
            vec![Attribute::ChannelNumber(0x5000), xor_peer(PEER)],
            ErrorCode::BAD_REQUEST,
        ),
        (
            "no CHANNEL-NUMBER",
            vec![xor_peer(PEER)],
            ErrorCode::BAD_REQUEST,
        ),
        (
            "no XOR-PEER-ADDRESS",
            vec![Attribute::ChannelNumber(0x4001)],
            ErrorCode::BAD_REQUEST,
        ),
        (
            "an IPv6 peer of an IPv4 allocation",
            vec![Attribute::ChannelNumber(0x4001), xor_peer(PEER_V6)],
            ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH,
        ),
        (
            "a peer the policy denies",
            vec![Attribute::ChannelNumber(0x4001), xor_peer("10.0.0.1:5000")],
            ErrorCode::FORBIDDEN,
        ),
        (
            "an unknown comprehension-required attribute",
            vec![
                Attribute::ChannelNumber(0x4001),
                xor_peer(PEER),
                unknown(UNKNOWN_REQUIRED),
            ],
            ErrorCode::UNKNOWN_ATTRIBUTE,
        ),
    ];
    for (name, request, expected) in table {
        let mut harness = Harness::new();
        let mut client = allocated(&mut harness, ALICE, &[udp()]);
        let (response, commands) = client.send(&mut harness, Method::ChannelBind, &request);
        assert_eq!(error_code(&response), Some(expected), "{name}");
        assert_eq!(commands, only_the_response(&client, &response), "{name}");
        client.verify_response(&response);
        assert_eq!(harness.server.active_channel_count(), 0, "{name}");
        assert_eq!(harness.server.permission_count(), 0, "{name}");
    }
}

#[test]
fn channel_bind_installs_the_permission_then_the_channel_then_answers() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    let (allocation, _) = client.send(&mut harness, Method::Allocate, &[udp()]);
    let relay = relay_socket(relayed_addresses(&allocation)[0]);
    let (response, commands) = client.send(
        &mut harness,
        Method::ChannelBind,
        &[Attribute::ChannelNumber(0x4001), xor_peer(PEER)],
    );
    assert_eq!(error_code(&response), None);
    client.verify_response(&response);
    let route = ChannelRoute {
        client: client.five_tuple,
        channel: ChannelNumber::new(0x4001).unwrap(),
        relay,
        peer: addr(PEER),
    };
    let mut expected = vec![
        Command::InstallPermission {
            relay,
            peer: addr(PEER).ip(),
        },
        Command::InstallChannel(route),
    ];
    expected.extend(only_the_response(&client, &response));
    assert_eq!(commands, expected);
}

#[test]
fn rebinding_the_same_channel_and_peer_refreshes_it_and_installs_it_again() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    let (allocation, _) = client.send(&mut harness, Method::Allocate, &[udp()]);
    let relay = relay_socket(relayed_addresses(&allocation)[0]);
    let bind = [Attribute::ChannelNumber(0x4001), xor_peer(PEER)];
    client.send(&mut harness, Method::ChannelBind, &bind);
    harness.advance(Duration::from_secs(250));
    let (response, commands) = client.send(&mut harness, Method::ChannelBind, &bind);
    assert_eq!(error_code(&response), None);
    let route = ChannelRoute {
        client: client.five_tuple,
        channel: ChannelNumber::new(0x4001).unwrap(),
        relay,
        peer: addr(PEER),
    };
    let mut expected = vec![
        Command::InstallPermission {
            relay,
            peer: addr(PEER).ip(),
        },
        Command::InstallChannel(route),
    ];
    expected.extend(only_the_response(&client, &response));
    assert_eq!(commands, expected);

    let commands = harness.advance(Duration::from_secs(50));
    assert!(
        commands.is_empty(),
        "the first permission's expiry passes unnoticed"
    );
    let (forward, _) = harness.from_client(client.five_tuple, &channel_data(0x4001, b"x"));
    assert!(forward.is_some());
}

#[test]
fn channel_bind_refuses_a_number_or_peer_bound_to_something_else() {
    let mut harness = Harness::new();
    let mut client = allocated(&mut harness, ALICE, &[udp()]);
    client.send(
        &mut harness,
        Method::ChannelBind,
        &[Attribute::ChannelNumber(0x4001), xor_peer(PEER)],
    );
    let table: [(&str, Vec<Attribute<'static>>); 3] = [
        (
            "the number to another peer",
            vec![Attribute::ChannelNumber(0x4001), xor_peer(OTHER_PEER)],
        ),
        (
            "the number to another port of the same peer",
            vec![
                Attribute::ChannelNumber(0x4001),
                xor_peer("192.0.2.10:5001"),
            ],
        ),
        (
            "the peer to another number",
            vec![Attribute::ChannelNumber(0x4002), xor_peer(PEER)],
        ),
    ];
    for (name, request) in table {
        let (response, commands) = client.send(&mut harness, Method::ChannelBind, &request);
        assert_eq!(
            error_code(&response),
            Some(ErrorCode::BAD_REQUEST),
            "{name}"
        );
        assert_eq!(commands, only_the_response(&client, &response), "{name}");
    }
    assert_eq!(harness.server.active_channel_count(), 1);
}

#[test]
fn channel_bind_beyond_the_channel_quota_gets_486_but_rebinding_does_not() {
    let mut harness = Harness::with_config(with(|config| {
        config.quotas.channels_per_allocation = 1;
    }));
    let mut client = allocated(&mut harness, ALICE, &[udp()]);
    let bind = [Attribute::ChannelNumber(0x4001), xor_peer(PEER)];
    let (response, _) = client.send(&mut harness, Method::ChannelBind, &bind);
    assert_eq!(error_code(&response), None);
    let (response, commands) = client.send(
        &mut harness,
        Method::ChannelBind,
        &[Attribute::ChannelNumber(0x4002), xor_peer(OTHER_PEER)],
    );
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::ALLOCATION_QUOTA_REACHED)
    );
    assert_eq!(commands, only_the_response(&client, &response));
    let (response, _) = client.send(&mut harness, Method::ChannelBind, &bind);
    assert_eq!(error_code(&response), None);
}

// Signing

#[test]
fn responses_to_authenticated_requests_are_signed_and_fingerprinted_like_the_request() {
    // (method, attributes, succeeds)
    let table: [(Method, Vec<Attribute<'static>>, bool); 3] = [
        (Method::Refresh, vec![Attribute::Lifetime(600)], true),
        (Method::CreatePermission, vec![xor_peer(PEER)], true),
        (Method::CreatePermission, vec![], false),
    ];
    for fingerprint in [true, false] {
        for (method, request, succeeds) in &table {
            let mut harness = Harness::new();
            let mut client = Client::new(ALICE);
            client.fingerprint = fingerprint;
            let (allocation, _) = client.send(&mut harness, Method::Allocate, &[udp()]);
            client.verify_response(&allocation);
            let (response, _) = client.send(&mut harness, *method, request);
            assert_eq!(error_code(&response).is_none(), *succeeds, "{method:?}");
            for response in [allocation, response] {
                client.verify_response(&response);
                let kinds = kinds(&response);
                let tail = if fingerprint {
                    vec![AttributeType::MESSAGE_INTEGRITY, AttributeType::FINGERPRINT]
                } else {
                    vec![AttributeType::MESSAGE_INTEGRITY]
                };
                assert!(
                    kinds.ends_with(&tail),
                    "{method:?}, fingerprint {fingerprint}: {kinds:?}"
                );
                if fingerprint {
                    Message::parse(&response)
                        .unwrap()
                        .verify_fingerprint()
                        .unwrap();
                }
            }
        }
    }
}

// Retransmissions

#[test]
fn retransmitted_requests_within_40_s_get_the_same_response_and_no_second_side_effect() {
    let table: [(&str, Method, Vec<Attribute<'static>>); 3] = [
        (
            "CreatePermission",
            Method::CreatePermission,
            vec![xor_peer(PEER)],
        ),
        (
            "ChannelBind",
            Method::ChannelBind,
            vec![Attribute::ChannelNumber(0x4001), xor_peer(PEER)],
        ),
        (
            "Refresh to zero",
            Method::Refresh,
            vec![Attribute::Lifetime(0)],
        ),
    ];
    for (name, method, request) in table {
        let mut harness = Harness::new();
        let mut client = allocated(&mut harness, ALICE, &[udp()]);
        let id = client.transaction_id();
        let request = client.request_with_id(method, id, &request);
        let (_, first) = harness.from_client(client.five_tuple, &request);
        let response = only_response(&first);
        assert_eq!(error_code(&response), None, "{name}");
        assert!(first.len() > 1, "{name}: the first one acts");

        harness.advance(Duration::from_secs(39));
        let (_, again) = harness.from_client(client.five_tuple, &request);
        assert_eq!(
            again,
            only_the_response(&client, &response),
            "{name}: the same bytes, nothing else"
        );
        assert_eq!(harness.server.stats().retransmissions, 1);
    }
}

// Hairpin

#[test]
fn data_between_two_allocations_of_the_relay_is_hairpinned_and_never_sent_to_the_relay() {
    let mut harness = Harness::new();
    let mut alice = Client::new("203.0.113.5:40000");
    let mut bob = Client::new("203.0.113.6:40000");
    let (response, _) = alice.send(&mut harness, Method::Allocate, &[udp()]);
    let alice_relayed = relayed_addresses(&response)[0];
    let (response, _) = bob.send(&mut harness, Method::Allocate, &[udp()]);
    let bob_relayed = relayed_addresses(&response)[0];

    // The relay's own relayed addresses are peers like any other, whatever the policy says
    // about the range they are in (a documentation range here, which it denies).
    let (response, _) = alice.send(
        &mut harness,
        Method::ChannelBind,
        &[
            Attribute::ChannelNumber(0x4001),
            Attribute::XorPeerAddress(bob_relayed),
        ],
    );
    assert_eq!(error_code(&response), None);

    let (forward, commands) = harness.from_client(alice.five_tuple, &channel_data(0x4001, b"hi"));
    assert_eq!(forward, None, "bob has not let alice in");
    assert!(commands.is_empty());

    let (response, _) = bob.send(
        &mut harness,
        Method::CreatePermission,
        &[Attribute::XorPeerAddress(alice_relayed)],
    );
    assert_eq!(error_code(&response), None);
    let (forward, commands) =
        harness.from_client(alice.five_tuple, &channel_data(0x4001, b"hairpin"));
    assert_eq!(forward, None, "no channel on bob's side: a Data indication");
    let indications = sent_to(&commands, bob.five_tuple);
    assert_eq!(indications.len(), 1);
    assert_eq!(commands.len(), 1);
    let indication = attributes(&indications[0]);
    assert!(indication.contains(&Attribute::XorPeerAddress(alice_relayed)));
    assert!(indication.contains(&Attribute::Data(b"hairpin")));

    let (response, _) = bob.send(
        &mut harness,
        Method::ChannelBind,
        &[
            Attribute::ChannelNumber(0x4002),
            Attribute::XorPeerAddress(alice_relayed),
        ],
    );
    assert_eq!(error_code(&response), None);
    let (forward, commands) =
        harness.from_client(alice.five_tuple, &channel_data(0x4001, b"hairpin"));
    assert_eq!(
        forward,
        Some(Forward::ToClient {
            client: bob.five_tuple,
            channel_header: [0x40, 0x02, 0x00, 0x07],
            payload: 4..11,
        }),
        "bob's channel number, alice's payload"
    );
    assert!(commands.is_empty());
    let (forward, _) = harness.from_client(bob.five_tuple, &channel_data(0x4002, b"back"));
    assert_eq!(
        forward,
        Some(Forward::ToClient {
            client: alice.five_tuple,
            channel_header: [0x40, 0x01, 0x00, 0x04],
            payload: 4..8,
        })
    );
    assert_eq!(harness.server.stats().relayed_to_peer.packets, 0);
}

#[test]
fn data_to_the_relays_own_address_outside_the_relayed_ports_is_dropped() {
    let mut harness = Harness::new();
    let mut client = allocated(&mut harness, ALICE, &[udp()]);
    // The listening port: relayed there, the payload would come back as a client datagram.
    let (response, _) = client.send(
        &mut harness,
        Method::ChannelBind,
        &[Attribute::ChannelNumber(0x4001), xor_peer(LISTEN_V4)],
    );
    assert_eq!(error_code(&response), None);
    let (forward, commands) = harness.from_client(client.five_tuple, &channel_data(0x4001, b"x"));
    assert_eq!(forward, None);
    assert!(commands.is_empty());
}

#[test]
fn data_to_the_relays_own_address_is_relayed_when_the_operator_allows_that_address() {
    let mut harness = Harness::with_config(with(|config| {
        let own: turnpike_relay::policy::Cidr = RELAY_V4.parse().unwrap();
        config.policy = config.policy.clone().with_allowed([own]);
    }));
    let mut client = allocated(&mut harness, ALICE, &[udp()]);
    let local_service: std::net::SocketAddr = format!("{RELAY_V4}:5000").parse().unwrap();
    let (response, _) = client.send(
        &mut harness,
        Method::ChannelBind,
        &[
            Attribute::ChannelNumber(0x4001),
            Attribute::XorPeerAddress(local_service),
        ],
    );
    assert_eq!(error_code(&response), None);
    let (forward, _) = harness.from_client(client.five_tuple, &channel_data(0x4001, b"x"));
    assert!(
        matches!(forward, Some(Forward::ToPeer { peer, .. }) if peer == local_service),
        "{forward:?}"
    );
}

#[test]
fn data_to_a_relayed_port_of_a_sibling_shard_leaves_through_the_kernel() {
    // This server hands out 50000-50099; its sibling owns 50100-50199 of the relay's range.
    let mut harness = Harness::with_config(with(|config| {
        config.relay_ports = 50_000..=50_199;
        config.shard_ports = Some(50_000..=50_099);
    }));
    let mut client = allocated(&mut harness, ALICE, &[udp()]);
    let sibling: std::net::SocketAddr = format!("{RELAY_V4}:50150").parse().unwrap();
    let (response, _) = client.send(
        &mut harness,
        Method::ChannelBind,
        &[
            Attribute::ChannelNumber(0x4001),
            Attribute::XorPeerAddress(sibling),
        ],
    );
    assert_eq!(error_code(&response), None);
    let (forward, _) = harness.from_client(client.five_tuple, &channel_data(0x4001, b"x"));
    assert!(
        matches!(forward, Some(Forward::ToPeer { peer, .. }) if peer == sibling),
        "{forward:?}"
    );
    assert_eq!(harness.server.stats().hairpinned, 0);
}

// Peer policy

/// Denied peers in each encoding that reaches them: plain, IPv4-mapped and NAT64 (RFC 6052)
/// forms of loopback, private, link-local (the cloud metadata address) and unspecified
/// addresses, and IPv6 ranges of their own.
const DENIED_PEERS: [&str; 16] = [
    "127.0.0.1",
    "10.0.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "64:ff9b::7f00:1",
    "64:ff9b::a00:1",
    "64:ff9b::a9fe:a9fe",
    "::1",
    "fe80::1",
    "fc00::1",
    "::",
];

fn dual_allocation(harness: &mut Harness) -> Client {
    allocated(
        harness,
        ALICE,
        &[udp(), Attribute::AdditionalAddressFamily(AddressFamily::V6)],
    )
}

#[test]
fn create_permission_and_channel_bind_to_a_denied_peer_get_403_in_every_encoding() {
    let mut harness = Harness::new();
    let mut client = dual_allocation(&mut harness);
    for (index, peer) in DENIED_PEERS.into_iter().enumerate() {
        let peer = SocketAddr::new(peer.parse().unwrap(), 5000);
        let number = 0x4000 + u16::try_from(index).unwrap();
        let requests = [
            (
                Method::CreatePermission,
                vec![Attribute::XorPeerAddress(peer)],
            ),
            (
                Method::ChannelBind,
                vec![
                    Attribute::ChannelNumber(number),
                    Attribute::XorPeerAddress(peer),
                ],
            ),
        ];
        for (method, request) in requests {
            let (response, commands) = client.send(&mut harness, method, &request);
            assert_eq!(
                error_code(&response),
                Some(ErrorCode::FORBIDDEN),
                "{method:?} {peer}"
            );
            assert_eq!(commands, only_the_response(&client, &response));
        }
    }
    assert_eq!(harness.server.permission_count(), 0);
}

#[test]
fn an_operator_allow_list_opens_a_denied_range_in_every_encoding_and_nothing_else() {
    let mut harness = Harness::with_config(with(|config| {
        config.policy = PeerPolicy::new().with_allowed(["10.0.0.0/8".parse::<Cidr>().unwrap()]);
    }));
    let mut client = dual_allocation(&mut harness);
    let opened = ["10.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1"];
    for (index, peer) in opened.into_iter().enumerate() {
        let peer = SocketAddr::new(peer.parse().unwrap(), 5000);
        let number = 0x4000 + u16::try_from(index).unwrap();
        for (method, request) in [
            (
                Method::CreatePermission,
                vec![Attribute::XorPeerAddress(peer)],
            ),
            (
                Method::ChannelBind,
                vec![
                    Attribute::ChannelNumber(number),
                    Attribute::XorPeerAddress(peer),
                ],
            ),
        ] {
            let (response, _) = client.send(&mut harness, method, &request);
            assert_eq!(error_code(&response), None, "{method:?} {peer}");
        }
    }
    for peer in [
        "127.0.0.1",
        "::ffff:127.0.0.1",
        "192.168.1.1",
        "64:ff9b::c0a8:101",
    ] {
        let peer = SocketAddr::new(peer.parse().unwrap(), 5000);
        let (response, _) = client.send(
            &mut harness,
            Method::CreatePermission,
            &[Attribute::XorPeerAddress(peer)],
        );
        assert_eq!(error_code(&response), Some(ErrorCode::FORBIDDEN), "{peer}");
    }
}

/// The command that installs `client`'s channel `number` to `peer` on `relay`.
fn install_channel(client: &Client, relay: RelaySocket, number: u16, peer: &str) -> Command {
    Command::InstallChannel(ChannelRoute {
        client: client.five_tuple,
        channel: ChannelNumber::new(number).unwrap(),
        relay,
        peer: addr(peer),
    })
}

#[test]
fn binding_a_channel_revives_the_other_channels_to_the_same_ip_with_the_permission() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    let (allocation, _) = client.send(&mut harness, Method::Allocate, &[udp()]);
    let relay = relay_socket(relayed_addresses(&allocation)[0]);
    let same_ip = "192.0.2.10:5001";
    client.send(
        &mut harness,
        Method::ChannelBind,
        &[Attribute::ChannelNumber(0x4000), xor_peer(same_ip)],
    );
    // The permission ends at 300 s and takes the route with it; the channel lives to 600 s.
    harness.advance(Duration::from_secs(300));
    let (forward, _) = harness.from_client(client.five_tuple, &channel_data(0x4000, b"x"));
    assert_eq!(forward, None);

    let (response, commands) = client.send(
        &mut harness,
        Method::ChannelBind,
        &[Attribute::ChannelNumber(0x4001), xor_peer(PEER)],
    );
    assert_eq!(error_code(&response), None);
    let route = |number, peer| install_channel(&client, relay, number, peer);
    let mut expected = vec![
        Command::InstallPermission {
            relay,
            peer: addr(PEER).ip(),
        },
        route(0x4000, same_ip),
        route(0x4001, PEER),
    ];
    expected.extend(only_the_response(&client, &response));
    assert_eq!(commands, expected);
    let (forward, _) = harness.from_client(client.five_tuple, &channel_data(0x4000, b"x"));
    assert!(forward.is_some(), "the first channel relays again");
}

#[test]
fn a_refreshed_permission_revives_the_channels_of_its_ip_only() {
    // Channels to one IP on three ports, and to the addresses on either side of it, bound in an
    // order that is not their number order; all lose their routes with their permissions.
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    let (allocation, _) = client.send(&mut harness, Method::Allocate, &[udp()]);
    let relay = relay_socket(relayed_addresses(&allocation)[0]);
    let bindings = [
        (0x4005, "192.0.2.10:6000"),
        (0x4001, "192.0.2.9:5000"),
        (0x4003, "192.0.2.10:1"),
        (0x4002, "192.0.2.11:5000"),
        (0x4004, "192.0.2.10:65535"),
    ];
    for (number, peer) in bindings {
        let (response, _) = client.send(
            &mut harness,
            Method::ChannelBind,
            &[Attribute::ChannelNumber(number), xor_peer(peer)],
        );
        assert_eq!(error_code(&response), None, "{peer}");
    }
    harness.advance(Duration::from_secs(300));
    for (number, _) in bindings {
        let (forward, _) = harness.from_client(client.five_tuple, &channel_data(number, b"x"));
        assert_eq!(
            forward, None,
            "{number:#x} lost its route with its permission"
        );
    }

    // A permission for 192.0.2.10 brings back exactly its three channels, in number order.
    let (response, commands) = client.send(
        &mut harness,
        Method::CreatePermission,
        &[xor_peer("192.0.2.10:0")],
    );
    assert_eq!(error_code(&response), None);
    let route = |number, peer| install_channel(&client, relay, number, peer);
    let mut expected = vec![
        Command::InstallPermission {
            relay,
            peer: addr(PEER).ip(),
        },
        route(0x4003, "192.0.2.10:1"),
        route(0x4004, "192.0.2.10:65535"),
        route(0x4005, "192.0.2.10:6000"),
    ];
    expected.extend(only_the_response(&client, &response));
    assert_eq!(commands, expected);
    for (number, peer) in bindings {
        let (forward, _) = harness.from_client(client.five_tuple, &channel_data(number, b"x"));
        assert_eq!(
            forward.is_some(),
            peer.starts_with("192.0.2.10:"),
            "{number:#x} to {peer}"
        );
    }
}

#[test]
fn servers_sharing_a_budget_hold_its_total_between_them() {
    let budget = turnpike_relay::AllocationBudget::new(1);
    let shared = || with(|config| config.shared_budget = Some(std::sync::Arc::clone(&budget)));
    let mut first = Harness::with_config(shared());
    let mut second = Harness::with_config(shared());
    let mut alice = allocated(&mut first, ALICE, &[udp()]);
    let mut other = Client::new("203.0.113.77:4000");
    let (response, _) = other.send(&mut second, Method::Allocate, &[udp()]);
    assert_eq!(
        error_code(&response),
        Some(ErrorCode::ALLOCATION_QUOTA_REACHED)
    );
    let (response, _) = alice.send(&mut first, Method::Refresh, &[Attribute::Lifetime(0)]);
    assert_eq!(error_code(&response), None);
    assert_eq!(budget.used(), 0);
    let (response, _) = other.send(&mut second, Method::Allocate, &[udp()]);
    assert_eq!(
        error_code(&response),
        None,
        "the freed allocation is available to the sibling"
    );
}
