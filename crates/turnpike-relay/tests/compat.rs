//! What older and other clients send besides RFC 8656 (issue 13, "every client, every host"):
//! ADDITIONAL-ADDRESS-FAMILY at the drafts' code point 0x8032, channel numbers from RFC 5766's
//! 0x4000-0x7FFF when the operator allows them, DONT-FRAGMENT in an Allocate (refused as an
//! unknown attribute), and the reason phrase every error response carries.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code, and the harness it shares: a panic is how a test reports a failure"
)]

mod common;

use std::net::SocketAddr;

use common::*;
use turnpike_proto::{
    AddressFamily, Attribute, AttributeType, ErrorCode, Message, Method, RawAttribute,
};
use turnpike_relay::{Config, Drop, Forward};

const ALICE: &str = "203.0.113.5:40000";
const PEER: &str = "192.0.2.10:5000";
const UDP: u8 = 17;
const ADDITIONAL_ADDRESS_FAMILY_DRAFT: AttributeType = AttributeType(0x8032);
const ADDRESS_ERROR_CODE_DRAFT: AttributeType = AttributeType(0x8033);

fn udp() -> Attribute<'static> {
    Attribute::RequestedTransport(UDP)
}

fn with(change: impl FnOnce(&mut Config)) -> Config {
    let mut config = config();
    change(&mut config);
    config
}

fn draft_additional_family(value: &'static [u8]) -> Attribute<'static> {
    Attribute::Unknown(RawAttribute::new(ADDITIONAL_ADDRESS_FAMILY_DRAFT, value))
}

/// The raw attributes of a message: (type, value).
fn raw_attributes(bytes: &[u8]) -> Vec<(AttributeType, Vec<u8>)> {
    Message::parse(bytes)
        .unwrap()
        .attributes()
        .map(|raw| (raw.kind(), raw.value().to_vec()))
        .collect()
}

fn reason(response: &[u8]) -> String {
    attributes(response)
        .into_iter()
        .find_map(|attribute| match attribute {
            Attribute::ErrorCode { reason, .. } => Some(reason.to_owned()),
            _ => None,
        })
        .expect("ERROR-CODE")
}

// ADDITIONAL-ADDRESS-FAMILY at 0x8032

#[test]
fn the_drafts_additional_address_family_makes_a_dual_allocation() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    let (response, _) = client.send(
        &mut harness,
        Method::Allocate,
        &[udp(), draft_additional_family(&[0x02, 0, 0, 0])],
    );
    assert_eq!(error_code(&response), None);
    let families: Vec<AddressFamily> = relayed_addresses(&response)
        .iter()
        .map(|address| AddressFamily::of(address.ip()))
        .collect();
    assert_eq!(families, [AddressFamily::V4, AddressFamily::V6]);
    // Both families refresh, as for 0x8000.
    let (response, _) = client.send(
        &mut harness,
        Method::Refresh,
        &[Attribute::RequestedAddressFamily(AddressFamily::V6)],
    );
    assert_eq!(error_code(&response), None);
}

#[test]
fn a_dual_allocation_asked_at_0x8032_is_told_of_the_missing_family_at_0x8033() {
    let mut harness = Harness::with_config(with(|config| config.relay_ipv6 = None));
    let mut client = Client::new(ALICE);
    let (response, _) = client.send(
        &mut harness,
        Method::Allocate,
        &[udp(), draft_additional_family(&[0x02, 0, 0, 0])],
    );
    assert_eq!(error_code(&response), None);
    assert_eq!(relayed_addresses(&response).len(), 1);
    let raw = raw_attributes(&response);
    let mut expected = vec![0x02, 0, 4, 40];
    expected.extend_from_slice(b"Address Family not Supported");
    assert!(
        raw.contains(&(ADDRESS_ERROR_CODE_DRAFT, expected)),
        "{raw:?}"
    );
    assert!(
        !raw.iter()
            .any(|(kind, _)| *kind == AttributeType::ADDRESS_ERROR_CODE),
        "one ADDRESS-ERROR-CODE, at the code point the client asked with"
    );

    // Asked at 0x8000, answered at 0x8001.
    let mut client = Client::new("203.0.113.5:40001");
    let (response, _) = client.send(
        &mut harness,
        Method::Allocate,
        &[udp(), Attribute::AdditionalAddressFamily(AddressFamily::V6)],
    );
    let kinds: Vec<AttributeType> = raw_attributes(&response)
        .into_iter()
        .map(|(kind, _)| kind)
        .collect();
    assert!(kinds.contains(&AttributeType::ADDRESS_ERROR_CODE));
    assert!(!kinds.contains(&ADDRESS_ERROR_CODE_DRAFT));
}

#[test]
fn the_drafts_code_point_is_checked_as_the_standard_one_is() {
    let table: [(&str, &'static [u8], Vec<Attribute<'static>>, ErrorCode); 4] = [
        (
            "IPv4 is no additional family",
            &[0x01, 0, 0, 0],
            vec![],
            ErrorCode::BAD_REQUEST,
        ),
        (
            "an unknown family",
            &[0x03, 0, 0, 0],
            vec![],
            ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED,
        ),
        (
            "a malformed value",
            &[0x02, 0, 0],
            vec![],
            ErrorCode::BAD_REQUEST,
        ),
        (
            "with REQUESTED-ADDRESS-FAMILY",
            &[0x02, 0, 0, 0],
            vec![Attribute::RequestedAddressFamily(AddressFamily::V4)],
            ErrorCode::BAD_REQUEST,
        ),
    ];
    for (name, value, extra, expected) in table {
        let mut harness = Harness::new();
        let mut client = Client::new(ALICE);
        let mut request = vec![udp(), draft_additional_family(value)];
        request.extend(extra);
        let (response, _) = client.send(&mut harness, Method::Allocate, &request);
        assert_eq!(error_code(&response), Some(expected), "{name}");
        assert_eq!(harness.server.allocation_count(), 0, "{name}");
    }
}

// Channel numbers

fn bound(harness: &mut Harness, number: u16) -> (Client, Vec<u8>) {
    let mut client = Client::new(ALICE);
    client.allocate(harness);
    let peer: SocketAddr = PEER.parse().unwrap();
    let (response, _) = client.send(
        harness,
        Method::ChannelBind,
        &[
            Attribute::ChannelNumber(number),
            Attribute::XorPeerAddress(peer),
        ],
    );
    (client, response)
}

#[test]
fn rfc_8656_channel_numbers_by_default() {
    for number in [0x5000, 0x7FFF, 0x8000, 0x3FFF] {
        let mut harness = Harness::new();
        let (_, response) = bound(&mut harness, number);
        assert_eq!(
            error_code(&response),
            Some(ErrorCode::BAD_REQUEST),
            "{number:#06x}"
        );
    }
    let mut harness = Harness::new();
    let (client, response) = bound(&mut harness, 0x4FFF);
    assert_eq!(error_code(&response), None);
    // ChannelData in 0x5000-0x7FFF is not TURN here.
    let (forward, _) = harness.from_client(client.five_tuple, &channel_data(0x5001, b"x"));
    assert_eq!(forward, None);
    assert_eq!(harness.server.stats().dropped.get(&Drop::NotTurn), Some(&1));
}

#[test]
fn rfc_5766_channel_numbers_when_configured_relay_both_ways() {
    let config = || with(|config| config.rfc5766_channel_numbers = true);
    for number in [0x4000, 0x4FFF, 0x5000, 0x6ABC, 0x7FFF] {
        let mut harness = Harness::with_config(config());
        let mut client = Client::new(ALICE);
        let relayed = client.allocate(&mut harness);
        let peer: SocketAddr = PEER.parse().unwrap();
        let (response, _) = client.send(
            &mut harness,
            Method::ChannelBind,
            &[
                Attribute::ChannelNumber(number),
                Attribute::XorPeerAddress(peer),
            ],
        );
        assert_eq!(error_code(&response), None, "{number:#06x}");
        let (forward, _) =
            harness.from_client(client.five_tuple, &channel_data(number, b"to peer"));
        assert!(
            matches!(forward, Some(Forward::ToPeer { peer: to, .. }) if to == peer),
            "{number:#06x}: {forward:?}"
        );
        let (forward, _) = harness.from_peer(relay_socket(relayed), peer, b"to client");
        let [high, low] = number.to_be_bytes();
        assert_eq!(
            forward,
            Some(Forward::ToClient {
                client: client.five_tuple,
                channel_header: [high, low, 0, 9],
                payload: 0..9,
            }),
            "{number:#06x}"
        );
    }
    for number in [0x3FFF, 0x8000, 0xFFFF] {
        let mut harness = Harness::with_config(config());
        let (_, response) = bound(&mut harness, number);
        assert_eq!(
            error_code(&response),
            Some(ErrorCode::BAD_REQUEST),
            "{number:#06x}"
        );
    }
}

// DONT-FRAGMENT

#[test]
fn dont_fragment_in_an_allocate_is_an_unknown_attribute() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    let unknown_required = Attribute::Unknown(RawAttribute::new(AttributeType(0x7F00), b"x"));
    for (request, listed) in [
        (
            vec![udp(), Attribute::DontFragment],
            vec![AttributeType::DONT_FRAGMENT],
        ),
        (
            vec![udp(), unknown_required, Attribute::DontFragment],
            vec![AttributeType(0x7F00), AttributeType::DONT_FRAGMENT],
        ),
    ] {
        let (response, commands) = client.send(&mut harness, Method::Allocate, &request);
        assert_eq!(error_code(&response), Some(ErrorCode::UNKNOWN_ATTRIBUTE));
        assert_eq!(commands.len(), 1, "nothing opened");
        client.verify_response(&response);
        let listed_in_response: Vec<AttributeType> = attributes(&response)
            .into_iter()
            .find_map(|attribute| match attribute {
                Attribute::UnknownAttributes(list) => Some(list.iter().collect()),
                _ => None,
            })
            .unwrap();
        assert_eq!(listed_in_response, listed);
    }
    assert_eq!(harness.server.allocation_count(), 0);
    // Without it, the same client allocates (RFC 8656 §7.1: it retries without).
    let (response, _) = client.send(&mut harness, Method::Allocate, &[udp()]);
    assert_eq!(error_code(&response), None);
}

// Reason phrases

#[test]
fn every_error_response_carries_its_reason_phrase() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    let request = client.request(Method::Allocate, &[udp()]);
    let (_, commands) = harness.from_client(client.five_tuple, &request);
    let challenge = only_response(&commands);
    assert_eq!(error_code(&challenge), Some(ErrorCode::UNAUTHORIZED));
    assert_eq!(reason(&challenge), "Unauthorized");
    client.learn(&challenge);

    let table: [(Method, Vec<Attribute<'static>>, ErrorCode, &str); 4] = [
        (
            Method::Allocate,
            vec![],
            ErrorCode::BAD_REQUEST,
            "Bad Request",
        ),
        (
            Method::Allocate,
            vec![Attribute::RequestedTransport(6)],
            ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL,
            "Unsupported Transport Protocol",
        ),
        (
            Method::Refresh,
            vec![],
            ErrorCode::ALLOCATION_MISMATCH,
            "Allocation Mismatch",
        ),
        (
            Method::Allocate,
            vec![udp(), Attribute::ReservationToken([9; 8])],
            ErrorCode::INSUFFICIENT_CAPACITY,
            "Insufficient Capacity",
        ),
    ];
    for (method, request, code, phrase) in table {
        let (response, _) = client.send(&mut harness, method, &request);
        assert_eq!(error_code(&response), Some(code));
        assert_eq!(reason(&response), phrase, "{code:?}");
        client.verify_response(&response);
    }
}
