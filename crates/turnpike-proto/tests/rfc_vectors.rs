//! RFC 5769 test vectors and RFC 8489 Appendix B.1 (as corrected by erratum 6268): each parses,
//! verifies, and re-encodes byte for byte from its decoded attributes.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use md5::{Digest, Md5};
use sha2::Sha256;
use turnpike_proto::{
    Attribute, AttributeType, Class, Message, MessageEncoder, Method, TransactionId,
};

fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// RFC 5769 §2.1: Binding request with short-term credentials, SOFTWARE padded with spaces.
const SAMPLE_REQUEST: &str = "
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf";
const SAMPLE_PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";

/// RFC 5769 §2.2: Binding success response, IPv4.
const SAMPLE_IPV4_RESPONSE: &str = "
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96";

/// RFC 5769 §2.3: Binding success response, IPv6.
const SAMPLE_IPV6_RESPONSE: &str = "
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c";

/// RFC 5769 §2.4: Binding request with long-term credentials.
const SAMPLE_LONG_TERM_REQUEST: &str = "
    00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
    00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
    00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
    00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
    00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66";

/// RFC 8489 Appendix B.1 with erratum 6268: the published vector lacked PASSWORD-ALGORITHM
/// and its MAC did not verify; the erratum adds the attribute and the correct MAC.
const SAMPLE_SHA256_REQUEST: &str = "
    00 01 00 90 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
    00 1e 00 20 4a 3c f3 8f ef 69 92 bd a9 52 c6 78 04 17 da 0f
                24 81 94 15 56 9e 60 b2 05 c4 6e 41 40 7f 17 04
    00 15 00 29 6f 62 4d 61 74 4a 6f 73 32 41 41 41 43 66 2f 2f 34 39 39 6b
                39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41 00 00 00
    00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
    00 1d 00 04 00 02 00 00
    00 1c 00 20 b5 c7 bf 00 5b 6c 52 a2 1c 51 c5 e8 92 f8 19 24
                13 62 96 cb 92 7c 43 14 93 09 27 8c c6 51 8e 65";

const LONG_TERM_USERNAME: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
/// "The<U+00AD>M<U+00AA>tr<U+2168>" after OpaqueString processing (RFC 8265).
const LONG_TERM_PASSWORD: &str = "TheMatrIX";
const REALM: &str = "example.org";

fn long_term_key_md5() -> [u8; 16] {
    Md5::digest(format!("{LONG_TERM_USERNAME}:{REALM}:{LONG_TERM_PASSWORD}")).into()
}

fn long_term_key_sha256() -> [u8; 32] {
    Sha256::digest(format!("{LONG_TERM_USERNAME}:{REALM}:{LONG_TERM_PASSWORD}")).into()
}

/// Re-encodes every attribute of `message` before the integrity trailers, then lets
/// `trailers` append them.
fn reencode(
    message: &Message<'_>,
    padding: u8,
    trailers: impl FnOnce(&mut MessageEncoder<'_>),
) -> Vec<u8> {
    let mut buf = vec![0; 1500];
    let transaction_id = message.transaction_id();
    let mut encoder = MessageEncoder::new(&mut buf, message.message_type(), transaction_id)
        .unwrap()
        .with_padding_byte(padding);
    for raw in message.attributes() {
        if [
            AttributeType::MESSAGE_INTEGRITY,
            AttributeType::MESSAGE_INTEGRITY_SHA256,
            AttributeType::FINGERPRINT,
        ]
        .contains(&raw.kind())
        {
            continue;
        }
        encoder
            .push(&Attribute::decode(raw, &transaction_id).unwrap())
            .unwrap();
    }
    trailers(&mut encoder);
    let len = encoder.finish();
    buf.truncate(len);
    buf
}

#[test]
fn rfc5769_request_verifies_and_reencodes() {
    let bytes = unhex(SAMPLE_REQUEST);
    let message = Message::parse(&bytes).unwrap();
    assert_eq!(message.method(), Method::Binding);
    assert_eq!(message.class(), Class::Request);
    message
        .verify_message_integrity(SAMPLE_PASSWORD.as_bytes())
        .unwrap();
    message.verify_fingerprint().unwrap();
    let tid = message.transaction_id();
    let username = message.attribute(AttributeType::USERNAME).unwrap();
    assert_eq!(
        Attribute::decode(username, &tid),
        Ok(Attribute::Username("evtj:h6vY"))
    );
    let software = message.attribute(AttributeType::SOFTWARE).unwrap();
    assert_eq!(
        Attribute::decode(software, &tid),
        Ok(Attribute::Software("STUN test client"))
    );

    let reencoded = reencode(&message, b' ', |encoder| {
        encoder
            .push_message_integrity(SAMPLE_PASSWORD.as_bytes())
            .unwrap();
        encoder.push_fingerprint().unwrap();
    });
    assert_eq!(reencoded, bytes);
}

#[test]
fn rfc5769_ipv4_response_verifies_and_reencodes() {
    let bytes = unhex(SAMPLE_IPV4_RESPONSE);
    let message = Message::parse(&bytes).unwrap();
    assert_eq!(message.class(), Class::SuccessResponse);
    message
        .verify_message_integrity(SAMPLE_PASSWORD.as_bytes())
        .unwrap();
    message.verify_fingerprint().unwrap();
    let mapped = message
        .attribute(AttributeType::XOR_MAPPED_ADDRESS)
        .unwrap();
    assert_eq!(
        Attribute::decode(mapped, &message.transaction_id()),
        Ok(Attribute::XorMappedAddress(
            "192.0.2.1:32853".parse().unwrap()
        ))
    );
    let reencoded = reencode(&message, b' ', |encoder| {
        encoder
            .push_message_integrity(SAMPLE_PASSWORD.as_bytes())
            .unwrap();
        encoder.push_fingerprint().unwrap();
    });
    assert_eq!(reencoded, bytes);
}

#[test]
fn rfc5769_ipv6_response_verifies_and_reencodes() {
    let bytes = unhex(SAMPLE_IPV6_RESPONSE);
    let message = Message::parse(&bytes).unwrap();
    message
        .verify_message_integrity(SAMPLE_PASSWORD.as_bytes())
        .unwrap();
    message.verify_fingerprint().unwrap();
    let mapped = message
        .attribute(AttributeType::XOR_MAPPED_ADDRESS)
        .unwrap();
    assert_eq!(
        Attribute::decode(mapped, &message.transaction_id()),
        Ok(Attribute::XorMappedAddress(
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap()
        ))
    );
    let reencoded = reencode(&message, b' ', |encoder| {
        encoder
            .push_message_integrity(SAMPLE_PASSWORD.as_bytes())
            .unwrap();
        encoder.push_fingerprint().unwrap();
    });
    assert_eq!(reencoded, bytes);
}

#[test]
fn rfc5769_long_term_request_verifies_and_reencodes() {
    let bytes = unhex(SAMPLE_LONG_TERM_REQUEST);
    let message = Message::parse(&bytes).unwrap();
    let key = long_term_key_md5();
    message.verify_message_integrity(&key).unwrap();
    assert!(message.verify_fingerprint().is_err());
    let tid = message.transaction_id();
    let decoded: Vec<Attribute<'_>> = message
        .attributes()
        .map(|raw| Attribute::decode(raw, &tid).unwrap())
        .collect();
    assert_eq!(decoded[0], Attribute::Username(LONG_TERM_USERNAME));
    assert_eq!(decoded[1], Attribute::Nonce("f//499k954d6OL34oL9FSTvy64sA"));
    assert_eq!(decoded[2], Attribute::Realm(REALM));

    let reencoded = reencode(&message, 0, |encoder| {
        encoder.push_message_integrity(&key).unwrap();
    });
    assert_eq!(reencoded, bytes);
}

#[test]
fn rfc8489_sha256_request_with_erratum_6268_verifies_and_reencodes() {
    let bytes = unhex(SAMPLE_SHA256_REQUEST);
    let message = Message::parse(&bytes).unwrap();
    let key = long_term_key_sha256();
    message.verify_message_integrity_sha256(&key).unwrap();
    assert!(!message.has_message_integrity());

    let tid = message.transaction_id();
    let userhash = message.attribute(AttributeType::USERHASH).unwrap();
    let expected_hash: [u8; 32] = Sha256::digest(format!("{LONG_TERM_USERNAME}:{REALM}")).into();
    assert_eq!(
        Attribute::decode(userhash, &tid),
        Ok(Attribute::Userhash(&expected_hash))
    );
    let Ok(Attribute::PasswordAlgorithm(algorithm)) = Attribute::decode(
        message
            .attribute(AttributeType::PASSWORD_ALGORITHM)
            .unwrap(),
        &tid,
    ) else {
        panic!("PASSWORD-ALGORITHM missing");
    };
    assert_eq!(
        algorithm.algorithm,
        turnpike_proto::PasswordAlgorithm::SHA256
    );

    let reencoded = reencode(&message, 0, |encoder| {
        encoder.push_message_integrity_sha256(&key, 32).unwrap();
    });
    assert_eq!(reencoded, bytes);
}

#[test]
fn tampering_with_any_covered_byte_fails_integrity() {
    let bytes = unhex(SAMPLE_REQUEST);
    // Every byte before MESSAGE-INTEGRITY's value, except the length field (which parse checks).
    let integrity_value = bytes.len() - 8 - 20;
    for index in (0..integrity_value).filter(|index| !(2..4).contains(index)) {
        let mut tampered = bytes.clone();
        tampered[index] ^= 0x01;
        let Ok(message) = Message::parse(&tampered) else {
            continue;
        };
        assert!(
            message
                .verify_message_integrity(SAMPLE_PASSWORD.as_bytes())
                .is_err(),
            "byte {index} is not covered"
        );
        assert!(
            message.verify_fingerprint().is_err(),
            "byte {index} not fingerprinted"
        );
    }
}

#[test]
fn wrong_key_fails_integrity() {
    let bytes = unhex(SAMPLE_REQUEST);
    let message = Message::parse(&bytes).unwrap();
    assert_eq!(
        message.verify_message_integrity(b"wrong"),
        Err(turnpike_proto::IntegrityError::Mismatch)
    );
    assert_eq!(
        message.verify_message_integrity_sha256(b"wrong"),
        Err(turnpike_proto::IntegrityError::Missing)
    );
}

#[test]
fn truncated_sha256_integrity_round_trips_at_every_allowed_length() {
    let key = long_term_key_sha256();
    for length in (16..=32).step_by(4) {
        let mut buf = [0; 128];
        let tid = TransactionId([9; 12]);
        let mut encoder = MessageEncoder::new(
            &mut buf,
            turnpike_proto::MessageType::new(Method::Allocate, Class::Request),
            tid,
        )
        .unwrap();
        encoder.push(&Attribute::Username("user")).unwrap();
        encoder.push_message_integrity_sha256(&key, length).unwrap();
        encoder.push_fingerprint().unwrap();
        let len = encoder.finish();
        let message = Message::parse(&buf[..len]).unwrap();
        message.verify_message_integrity_sha256(&key).unwrap();
        message.verify_fingerprint().unwrap();
        assert!(message.verify_message_integrity_sha256(b"other").is_err());
    }
}
