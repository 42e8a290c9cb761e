//! Long-term credentials end to end (RFC 8489 §9.2): static users, TURN REST API and Firezone
//! ephemeral credentials, nonces, SHA-256 negotiation and what a tampered or incomplete request
//! gets.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code, and the harness it shares: a panic is how a test reports a failure"
)]

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use common::*;
use hmac::{Hmac, Mac as _};
use sha1::Sha1;
use sha2::{Digest as _, Sha256};
use turnpike_proto::{
    Attribute, AttributeType, Class, ErrorCode, Message, MessageEncoder, MessageType, Method,
    PasswordAlgorithm, TransactionId,
};
use turnpike_relay::Config;
use turnpike_relay::auth::credentials::{
    CredentialStore, LongTermKey, Password, PasswordAlgorithm as KeyAlgorithm, SharedSecret,
    Userhash,
};

const ALICE: &str = "203.0.113.5:40000";
const FIREZONE_SECRET: &str = "firezone-secret";
const OLD_REST_SECRET: &str = "old-rest-secret";
/// PASSWORD-ALGORITHMS as the server offers it: SHA-256, then MD5, neither with parameters.
const OFFERED: [u8; 8] = [0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00];

/// `base64(HMAC-SHA1(secret, username))`: the TURN REST API password.
fn rest_password(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// `base64-no-pad(SHA-256("expiry:secret:salt"))`: the Firezone password.
fn firezone_password(expiry: u64, secret: &str, salt: &str) -> String {
    STANDARD_NO_PAD.encode(Sha256::digest(format!("{expiry}:{secret}:{salt}")))
}

/// The harness configuration with a Firezone secret and a retiring REST secret as well.
fn every_scheme() -> Config {
    let mut config = config();
    config.credentials = CredentialStore::new(REALM)
        .with_static_user(USER, Password::new(PASSWORD))
        .with_rest_secret(SharedSecret::new(REST_SECRET.as_bytes().to_vec()))
        .with_rest_secret(SharedSecret::new(OLD_REST_SECRET.as_bytes().to_vec()))
        .with_firezone_secret(SharedSecret::new(FIREZONE_SECRET.as_bytes().to_vec()));
    config
}

fn static_users_only() -> Config {
    let mut config = config();
    config.credentials = CredentialStore::new(REALM)
        .with_static_user(USER, Password::new(PASSWORD))
        .with_static_user("bob", Password::new("hunter2"));
    config
}

/// Every auth failure the server counted, by reason in alphabetical order.
fn failure_reasons(harness: &Harness) -> Vec<&'static str> {
    harness
        .server
        .stats()
        .auth_failures
        .iter()
        .flat_map(|(reason, count)| std::iter::repeat_n(*reason, usize::try_from(*count).unwrap()))
        .collect()
}

/// Auth failures other than the 401 every handshake provokes on purpose.
fn failures_after_handshake(harness: &Harness) -> Vec<&'static str> {
    failure_reasons(harness)
        .into_iter()
        .filter(|reason| *reason != "no_credentials")
        .collect()
}

fn nonce_of(response: &[u8]) -> String {
    attributes(response)
        .into_iter()
        .find_map(|attribute| match attribute {
            Attribute::Nonce(nonce) => Some(nonce.to_owned()),
            _ => None,
        })
        .expect("NONCE present")
}

fn has(message: &[u8], kind: AttributeType) -> bool {
    attributes(message)
        .iter()
        .any(|attribute| attribute.kind() == kind)
}

/// An Allocate request built by hand: `attributes`, then MESSAGE-INTEGRITY with `key` (if any),
/// then FINGERPRINT.
fn allocate_request(
    transaction_id: TransactionId,
    attributes: &[Attribute<'_>],
    key: Option<&LongTermKey>,
) -> Vec<u8> {
    let mut buf = vec![0; 1500];
    let mut encoder = MessageEncoder::new(
        &mut buf,
        MessageType::new(Method::Allocate, Class::Request),
        transaction_id,
    )
    .unwrap();
    encoder.push(&Attribute::RequestedTransport(17)).unwrap();
    for attribute in attributes {
        encoder.push(attribute).unwrap();
    }
    if let Some(key) = key {
        match key.algorithm() {
            KeyAlgorithm::Md5 => encoder.push_message_integrity(key.as_bytes()).unwrap(),
            KeyAlgorithm::Sha256 => encoder
                .push_message_integrity_sha256(key.as_bytes(), 32)
                .unwrap(),
        }
    }
    encoder.push_fingerprint().unwrap();
    let len = encoder.finish();
    buf.truncate(len);
    buf
}

/// Where the value of the first attribute of type `kind` starts in `message`.
fn value_offset(message: &[u8], kind: AttributeType) -> usize {
    let mut offset = 20;
    while offset + 4 <= message.len() {
        let found = u16::from_be_bytes([message[offset], message[offset + 1]]);
        let length = usize::from(u16::from_be_bytes([
            message[offset + 2],
            message[offset + 3],
        ]));
        if found == kind.0 {
            return offset + 4;
        }
        offset += 4 + ((length + 3) & !3);
    }
    panic!("no {kind:?} in the message");
}

// Credential schemes

#[test]
fn each_credential_scheme_authenticates_its_own_vectors_and_nothing_else() {
    let unix = START_UNIX;
    let valid = unix + 3600;
    let rest_user = format!("{valid}:alice");
    let bare_rest_user = format!("{valid}");
    let expired_rest_user = format!("{unix}:alice");
    let firezone_user = format!("{valid}:s4lt");
    let expired_firezone_user = format!("{}:s4lt", unix - 1);
    // (name, username, password, the reason it fails, if it does)
    let table: Vec<(&str, String, String, Option<&str>)> = vec![
        ("a static user", USER.to_owned(), PASSWORD.to_owned(), None),
        (
            "a static user with a wrong password",
            USER.to_owned(),
            "battery staple".to_owned(),
            Some("bad_integrity"),
        ),
        (
            "a REST username with a user part",
            rest_user.clone(),
            rest_password(REST_SECRET, &rest_user),
            None,
        ),
        (
            "a REST username that is only an expiry",
            bare_rest_user.clone(),
            rest_password(REST_SECRET, &bare_rest_user),
            None,
        ),
        (
            "a REST password made with the retiring secret",
            rest_user.clone(),
            rest_password(OLD_REST_SECRET, &rest_user),
            None,
        ),
        (
            "a REST password made with a secret the relay never had",
            rest_user.clone(),
            rest_password("guessed-secret", &rest_user),
            Some("bad_integrity"),
        ),
        (
            "a REST password for another username",
            rest_user.clone(),
            rest_password(REST_SECRET, &format!("{valid}:bob")),
            Some("bad_integrity"),
        ),
        (
            "a REST username whose expiry is now",
            expired_rest_user.clone(),
            rest_password(REST_SECRET, &expired_rest_user),
            Some("expired_credentials"),
        ),
        (
            "a Firezone username and password",
            firezone_user.clone(),
            firezone_password(valid, FIREZONE_SECRET, "s4lt"),
            None,
        ),
        (
            "a Firezone password made with another secret",
            firezone_user.clone(),
            firezone_password(valid, "guessed-secret", "s4lt"),
            Some("bad_integrity"),
        ),
        (
            "a Firezone password for another salt",
            firezone_user,
            firezone_password(valid, FIREZONE_SECRET, "salt"),
            Some("bad_integrity"),
        ),
        (
            "a Firezone username that has expired",
            expired_firezone_user,
            firezone_password(unix - 1, FIREZONE_SECRET, "s4lt"),
            Some("expired_credentials"),
        ),
        (
            "neither a static user nor an ephemeral username",
            "mallory".to_owned(),
            PASSWORD.to_owned(),
            Some("malformed_username"),
        ),
    ];
    for (name, username, password, failure) in table {
        let mut harness = Harness::with_config(every_scheme());
        let mut client = Client::with_credentials(ALICE, &username, &password);
        let (response, commands) = client.send(
            &mut harness,
            Method::Allocate,
            &[Attribute::RequestedTransport(17)],
        );
        match failure {
            None => {
                assert_eq!(error_code(&response), None, "{name}");
                client.verify_response(&response);
                assert_eq!(
                    failures_after_handshake(&harness),
                    [] as [&str; 0],
                    "{name}"
                );
            }
            Some(reason) => {
                assert_eq!(
                    error_code(&response),
                    Some(ErrorCode::UNAUTHORIZED),
                    "{name}"
                );
                assert_eq!(failures_after_handshake(&harness), [reason], "{name}");
                assert_eq!(commands.len(), 1, "{name}: a response and nothing else");
                assert!(
                    !has(&response, AttributeType::MESSAGE_INTEGRITY),
                    "{name}: no key to sign with"
                );
                assert!(
                    attributes(&response).contains(&Attribute::Realm(REALM)),
                    "{name}: challenged again"
                );
                assert_eq!(harness.server.allocation_count(), 0, "{name}");
            }
        }
    }
}

#[test]
fn a_rest_credential_stops_working_when_its_expiry_passes() {
    let mut harness = Harness::new();
    let username = format!("{}:alice", START_UNIX + 100);
    let password = rest_password(REST_SECRET, &username);
    let mut client = Client::with_credentials(ALICE, &username, &password);
    let (response, _) = client.send(
        &mut harness,
        Method::Allocate,
        &[Attribute::RequestedTransport(17)],
    );
    assert_eq!(error_code(&response), None);

    harness.advance(Duration::from_secs(99));
    let (response, _) = client.send(&mut harness, Method::Refresh, &[Attribute::Lifetime(600)]);
    assert_eq!(error_code(&response), None, "valid up to the second before");
    harness.advance(Duration::from_secs(1));
    let (response, _) = client.send(&mut harness, Method::Refresh, &[Attribute::Lifetime(600)]);
    assert_eq!(error_code(&response), Some(ErrorCode::UNAUTHORIZED));
    assert_eq!(failures_after_handshake(&harness), ["expired_credentials"]);
}

#[test]
fn a_realm_other_than_the_relays_gets_401_and_the_right_realm() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    client.handshake(&mut harness);
    client.realm = "elsewhere.test".to_owned();
    let request = client.request(Method::Allocate, &[Attribute::RequestedTransport(17)]);
    let (_, commands) = harness.from_client(client.five_tuple, &request);
    let response = only_response(&commands);
    assert_eq!(error_code(&response), Some(ErrorCode::UNAUTHORIZED));
    assert!(attributes(&response).contains(&Attribute::Realm(REALM)));
    assert_eq!(failures_after_handshake(&harness), ["wrong_realm"]);
}

#[test]
fn a_request_altered_after_signing_gets_401() {
    let valid = START_UNIX + 3600;
    let rest_user = format!("{valid}:alice");
    let rest_pass = rest_password(REST_SECRET, &rest_user);
    // (name, username, password, the attribute whose value is altered, the reason)
    let table: [(&str, &str, &str, AttributeType, &str); 4] = [
        (
            "a byte of a REST username",
            &rest_user,
            &rest_pass,
            AttributeType::USERNAME,
            "bad_integrity",
        ),
        (
            "a byte of a static username",
            USER,
            PASSWORD,
            AttributeType::USERNAME,
            "malformed_username",
        ),
        (
            "a byte of REQUESTED-TRANSPORT's reserved bytes",
            USER,
            PASSWORD,
            AttributeType::REQUESTED_TRANSPORT,
            "bad_integrity",
        ),
        (
            "a byte of MESSAGE-INTEGRITY itself",
            USER,
            PASSWORD,
            AttributeType::MESSAGE_INTEGRITY,
            "bad_integrity",
        ),
    ];
    for (name, username, password, kind, reason) in table {
        let mut harness = Harness::new();
        let mut client = Client::with_credentials(ALICE, username, password);
        // Without FINGERPRINT: with it, the altered request would be discarded before
        // authentication (RFC 8489 §7.3), and the integrity check is what is tested here.
        client.fingerprint = false;
        client.handshake(&mut harness);
        let mut request = client.request(Method::Allocate, &[Attribute::RequestedTransport(17)]);
        let offset = value_offset(&request, kind);
        // The last byte of a username, a reserved byte, or a MAC byte: the message still parses.
        let at = match kind {
            AttributeType::USERNAME => offset + username.len() - 1,
            AttributeType::REQUESTED_TRANSPORT => offset + 3,
            _ => offset,
        };
        request[at] ^= 0x01;
        let (_, commands) = harness.from_client(client.five_tuple, &request);
        let response = only_response(&commands);
        assert_eq!(
            error_code(&response),
            Some(ErrorCode::UNAUTHORIZED),
            "{name}"
        );
        assert_eq!(failures_after_handshake(&harness), [reason], "{name}");
        assert_eq!(harness.server.allocation_count(), 0, "{name}");
    }
}

// Nonces

#[test]
fn a_nonce_is_stale_from_its_expiry_on_and_the_fresh_one_from_the_438_works() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    client.handshake(&mut harness);
    harness.advance(Duration::from_secs(599));
    let request = client.request(Method::Allocate, &[Attribute::RequestedTransport(17)]);
    let (_, commands) = harness.from_client(client.five_tuple, &request);
    assert_eq!(
        error_code(&only_response(&commands)),
        None,
        "valid at 599 s"
    );
    client.send(&mut harness, Method::Refresh, &[Attribute::Lifetime(0)]);

    harness.advance(Duration::from_secs(1));
    let request = client.request(Method::Allocate, &[Attribute::RequestedTransport(17)]);
    let (_, commands) = harness.from_client(client.five_tuple, &request);
    let response = only_response(&commands);
    assert_eq!(error_code(&response), Some(ErrorCode::STALE_NONCE));
    assert!(attributes(&response).contains(&Attribute::Realm(REALM)));
    let fresh = nonce_of(&response);
    assert_ne!(Some(&fresh), client.nonce.as_ref());
    assert!(!has(&response, AttributeType::MESSAGE_INTEGRITY));
    assert_eq!(harness.server.allocation_count(), 0);

    client.learn(&response);
    let request = client.request(Method::Allocate, &[Attribute::RequestedTransport(17)]);
    let (_, commands) = harness.from_client(client.five_tuple, &request);
    assert_eq!(error_code(&only_response(&commands)), None);
}

#[test]
fn a_nonce_issued_to_another_transport_address_gets_438() {
    for other in ["203.0.113.5:40001", "203.0.113.6:40000", "garbage"] {
        let mut harness = Harness::new();
        let mut owner = Client::new(ALICE);
        owner.handshake(&mut harness);
        let nonce = if other == "garbage" {
            "not a nonce of this relay".to_owned()
        } else {
            owner.nonce.clone().unwrap()
        };
        let address = if other == "garbage" { ALICE } else { other };
        let mut thief = Client::new(address);
        thief.nonce = Some(nonce);
        let request = thief.request(Method::Allocate, &[Attribute::RequestedTransport(17)]);
        let (_, commands) = harness.from_client(thief.five_tuple, &request);
        let response = only_response(&commands);
        assert_eq!(
            error_code(&response),
            Some(ErrorCode::STALE_NONCE),
            "{other}"
        );
        assert_eq!(
            failures_after_handshake(&harness),
            ["stale_nonce"],
            "{other}"
        );
    }
}

#[test]
fn challenges_announce_password_algorithms_and_username_anonymity_only_when_offered() {
    // (config, the nonce cookie with its feature bits, PASSWORD-ALGORITHMS offered)
    let table: [(&str, Config, &str, bool); 3] = [
        ("ephemeral credentials", config(), "obMatJos2AAAB", true),
        (
            "static users only",
            static_users_only(),
            "obMatJos2AAAD",
            true,
        ),
        (
            "no SHA-256",
            {
                let mut config = config();
                config.offer_sha256 = false;
                config
            },
            "",
            false,
        ),
    ];
    for (name, config, cookie, algorithms) in table {
        let mut harness = Harness::with_config(config);
        let mut client = Client::new(ALICE);
        let request = client.request(Method::Allocate, &[Attribute::RequestedTransport(17)]);
        let (_, commands) = harness.from_client(client.five_tuple, &request);
        let response = only_response(&commands);
        let nonce = nonce_of(&response);
        if cookie.is_empty() {
            assert!(!nonce.starts_with("obMatJos2"), "{name}: {nonce}");
        } else {
            assert!(nonce.starts_with(cookie), "{name}: {nonce}");
        }
        let offered = attributes(&response)
            .into_iter()
            .find_map(|attribute| match attribute {
                Attribute::PasswordAlgorithms(list) => Some(list.as_bytes().to_vec()),
                _ => None,
            });
        assert_eq!(offered, algorithms.then(|| OFFERED.to_vec()), "{name}");
    }
}

// SHA-256 and the bid-down defence

#[test]
fn a_sha256_client_is_answered_with_message_integrity_sha256() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    client.sha256 = true;
    let (response, _) = client.send(
        &mut harness,
        Method::Allocate,
        &[Attribute::RequestedTransport(17)],
    );
    assert_eq!(error_code(&response), None);
    client.verify_response(&response);
    assert!(has(&response, AttributeType::MESSAGE_INTEGRITY_SHA256));
    assert!(!has(&response, AttributeType::MESSAGE_INTEGRITY));
    let message = Message::parse(&response).unwrap();
    let md5_key = LongTermKey::derive(KeyAlgorithm::Md5, USER, REALM, PASSWORD);
    assert!(
        message
            .verify_message_integrity_sha256(md5_key.as_bytes())
            .is_err(),
        "signed with the SHA-256 key, not the MD5 one"
    );

    let (response, _) = client.send(
        &mut harness,
        Method::ChannelBind,
        &[
            Attribute::ChannelNumber(0x4001),
            Attribute::XorPeerAddress("192.0.2.10:5000".parse().unwrap()),
        ],
    );
    assert_eq!(error_code(&response), None);
    client.verify_response(&response);
}

#[test]
fn password_algorithms_that_differ_from_the_offer_are_a_bid_down_and_get_400() {
    let md5 = PasswordAlgorithm {
        algorithm: PasswordAlgorithm::MD5,
        parameters: &[],
    };
    let sha256 = PasswordAlgorithm {
        algorithm: PasswordAlgorithm::SHA256,
        parameters: &[],
    };
    let md5_only: [u8; 4] = [0x00, 0x01, 0x00, 0x00];
    let unknown = PasswordAlgorithm {
        algorithm: 0x0003,
        parameters: &[],
    };
    // (name, PASSWORD-ALGORITHMS, PASSWORD-ALGORITHM, the algorithm the key is made with)
    type Row<'a> = (
        &'a str,
        Option<&'a [u8]>,
        Option<PasswordAlgorithm<'a>>,
        KeyAlgorithm,
    );
    let table: [Row<'_>; 4] = [
        (
            "a list that offers only MD5",
            Some(&md5_only),
            Some(md5),
            KeyAlgorithm::Md5,
        ),
        (
            "an algorithm without the list",
            None,
            Some(sha256),
            KeyAlgorithm::Sha256,
        ),
        (
            "the list without an algorithm",
            Some(&OFFERED),
            None,
            KeyAlgorithm::Md5,
        ),
        (
            "an algorithm that is not in the list",
            Some(&OFFERED),
            Some(unknown),
            KeyAlgorithm::Md5,
        ),
    ];
    for (name, list, chosen, key_algorithm) in table {
        let mut harness = Harness::new();
        let mut client = Client::new(ALICE);
        client.handshake(&mut harness);
        let nonce = client.nonce.clone().unwrap();
        let mut request_attributes = vec![
            Attribute::Username(USER),
            Attribute::Realm(REALM),
            Attribute::Nonce(&nonce),
        ];
        request_attributes.extend(list.map(|list| Attribute::password_algorithms(list).unwrap()));
        request_attributes.extend(chosen.map(Attribute::PasswordAlgorithm));
        let key = LongTermKey::derive(key_algorithm, USER, REALM, PASSWORD);
        let request = allocate_request(client.transaction_id(), &request_attributes, Some(&key));
        let (_, commands) = harness.from_client(client.five_tuple, &request);
        let response = only_response(&commands);
        assert_eq!(
            error_code(&response),
            Some(ErrorCode::BAD_REQUEST),
            "{name}"
        );
        assert_eq!(
            failures_after_handshake(&harness),
            ["algorithm_downgrade"],
            "{name}"
        );
        assert!(
            !has(&response, AttributeType::NONCE),
            "{name}: no new challenge for a tampered one"
        );
    }
}

#[test]
fn a_request_with_neither_password_algorithm_attribute_is_taken_as_md5() {
    let mut harness = Harness::new();
    let mut client = Client::new(ALICE);
    client.handshake(&mut harness);
    let request = client.request(Method::Allocate, &[Attribute::RequestedTransport(17)]);
    assert!(!has(&request, AttributeType::PASSWORD_ALGORITHMS));
    assert!(!has(&request, AttributeType::PASSWORD_ALGORITHM));
    let (_, commands) = harness.from_client(client.five_tuple, &request);
    let response = only_response(&commands);
    assert_eq!(error_code(&response), None);
    client.verify_response(&response);
}

// Incomplete credentials and USERHASH

#[test]
fn integrity_without_username_realm_or_nonce_gets_400_without_a_challenge() {
    let key = LongTermKey::derive(KeyAlgorithm::Md5, USER, REALM, PASSWORD);
    // (name, the attribute left out)
    let table = [
        ("no NONCE", AttributeType::NONCE),
        ("no REALM", AttributeType::REALM),
        ("no USERNAME or USERHASH", AttributeType::USERNAME),
    ];
    for (name, missing) in table {
        let mut harness = Harness::new();
        let mut client = Client::new(ALICE);
        client.handshake(&mut harness);
        let nonce = client.nonce.clone().unwrap();
        let request_attributes: Vec<Attribute<'_>> = [
            Attribute::Username(USER),
            Attribute::Realm(REALM),
            Attribute::Nonce(&nonce),
        ]
        .into_iter()
        .filter(|attribute| attribute.kind() != missing)
        .collect();
        let request = allocate_request(client.transaction_id(), &request_attributes, Some(&key));
        let (_, commands) = harness.from_client(client.five_tuple, &request);
        let response = only_response(&commands);
        assert_eq!(
            error_code(&response),
            Some(ErrorCode::BAD_REQUEST),
            "{name}"
        );
        assert_eq!(
            failures_after_handshake(&harness),
            ["incomplete_credentials"],
            "{name}"
        );
        assert!(!has(&response, AttributeType::NONCE), "{name}");
    }
}

#[test]
fn a_static_user_may_authenticate_with_userhash_instead_of_username() {
    // (name, the user hashed, the password the key is made with, succeeds)
    let table = [
        ("alice's hash and key", USER, PASSWORD, true),
        (
            "alice's hash with a wrong password",
            USER,
            "battery staple",
            false,
        ),
        ("the hash of nobody", "mallory", PASSWORD, false),
    ];
    for (name, user, password, succeeds) in table {
        let mut harness = Harness::with_config(static_users_only());
        let mut client = Client::new(ALICE);
        client.handshake(&mut harness);
        let nonce = client.nonce.clone().unwrap();
        let userhash = Userhash::compute(user, REALM);
        let key = LongTermKey::derive(KeyAlgorithm::Md5, user, REALM, password);
        let request = allocate_request(
            client.transaction_id(),
            &[
                Attribute::Userhash(userhash.as_bytes()),
                Attribute::Realm(REALM),
                Attribute::Nonce(&nonce),
            ],
            Some(&key),
        );
        assert!(!has(&request, AttributeType::USERNAME));
        let (_, commands) = harness.from_client(client.five_tuple, &request);
        let response = only_response(&commands);
        if succeeds {
            assert_eq!(error_code(&response), None, "{name}");
            client.verify_response(&response);
        } else {
            assert_eq!(
                error_code(&response),
                Some(ErrorCode::UNAUTHORIZED),
                "{name}"
            );
        }
    }
}
