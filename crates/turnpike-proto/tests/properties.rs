//! Property tests for the wire codec: what the encoder writes parses back to the same thing,
//! whatever the parser is fed it never panics, and a buffer that is too small never costs the
//! encoder its state.
//!
//! `Attribute<'a>` borrows its text and byte values, so the strategies generate an owned
//! description ([`Spec`]) and each test builds the borrowed attributes from it.
//!
//! Proptest records every failing case in `properties.proptest-regressions` next to this file
//! and replays it first on later runs; that file is committed.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a panic is a failed test, with the reason in its message"
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::collection::vec;
use proptest::prelude::*;
use turnpike_proto::{
    AddressFamily, Attribute, AttributeType, ChannelData, ChannelDataError, ChannelNumber, Class,
    EncodeError, ErrorCode, IntegrityError, Message, MessageEncoder, MessageType, Method,
    PasswordAlgorithm, RawAttribute, TransactionId, classify,
};

/// The longest USERNAME the codec accepts, in bytes.
const MAX_USERNAME_LEN: usize = 508;
/// The longest REALM, NONCE, SOFTWARE, ALTERNATE-DOMAIN and reason phrase, in bytes.
const MAX_TEXT_LEN: usize = 763;

/// An owned description of one attribute, from which a borrowed [`Attribute`] is built.
#[derive(Debug, Clone)]
enum Spec {
    AdditionalAddressFamily(AddressFamily),
    AddressErrorCode(AddressFamily, u16, String),
    AlternateDomain(String),
    AlternateServer(SocketAddr),
    ChannelNumber(u16),
    Data(Vec<u8>),
    DontFragment,
    ErrorCode(u16, String),
    EvenPort(bool),
    Fingerprint(u32),
    Icmp(u8, u8, u32),
    Lifetime(u32),
    MappedAddress(SocketAddr),
    MessageIntegrity([u8; 20]),
    MessageIntegritySha256(Vec<u8>),
    Nonce(String),
    PasswordAlgorithm(u16, Vec<u8>),
    /// The encoded list, built by [`encode_password_algorithms`].
    PasswordAlgorithms(Vec<u8>),
    Realm(String),
    RequestedAddressFamily(AddressFamily),
    RequestedTransport(u8),
    ReservationToken([u8; 8]),
    Software(String),
    /// Big-endian attribute types, two bytes each.
    UnknownAttributes(Vec<u8>),
    Unknown(u16, Vec<u8>),
    Userhash([u8; 32]),
    Username(String),
    XorMappedAddress(SocketAddr),
    XorPeerAddress(SocketAddr),
    XorRelayedAddress(SocketAddr),
}

impl Spec {
    fn attribute(&self) -> Attribute<'_> {
        match self {
            Self::AdditionalAddressFamily(family) => Attribute::AdditionalAddressFamily(*family),
            Self::AddressErrorCode(family, code, reason) => Attribute::AddressErrorCode {
                family: *family,
                code: ErrorCode(*code),
                reason,
            },
            Self::AlternateDomain(text) => Attribute::AlternateDomain(text),
            Self::AlternateServer(address) => Attribute::AlternateServer(*address),
            Self::ChannelNumber(number) => Attribute::ChannelNumber(*number),
            Self::Data(data) => Attribute::Data(data),
            Self::DontFragment => Attribute::DontFragment,
            Self::ErrorCode(code, reason) => Attribute::ErrorCode {
                code: ErrorCode(*code),
                reason,
            },
            Self::EvenPort(reserve_next) => Attribute::EvenPort {
                reserve_next: *reserve_next,
            },
            Self::Fingerprint(value) => Attribute::Fingerprint(*value),
            Self::Icmp(icmp_type, icmp_code, error_data) => Attribute::Icmp {
                icmp_type: *icmp_type,
                icmp_code: *icmp_code,
                error_data: *error_data,
            },
            Self::Lifetime(seconds) => Attribute::Lifetime(*seconds),
            Self::MappedAddress(address) => Attribute::MappedAddress(*address),
            Self::MessageIntegrity(mac) => Attribute::MessageIntegrity(mac),
            Self::MessageIntegritySha256(mac) => Attribute::MessageIntegritySha256(mac),
            Self::Nonce(text) => Attribute::Nonce(text),
            Self::PasswordAlgorithm(algorithm, parameters) => {
                Attribute::PasswordAlgorithm(PasswordAlgorithm {
                    algorithm: *algorithm,
                    parameters,
                })
            }
            Self::PasswordAlgorithms(encoded) => Attribute::password_algorithms(encoded)
                .expect("the strategy only builds well-formed lists"),
            Self::Realm(text) => Attribute::Realm(text),
            Self::RequestedAddressFamily(family) => Attribute::RequestedAddressFamily(*family),
            Self::RequestedTransport(protocol) => Attribute::RequestedTransport(*protocol),
            Self::ReservationToken(token) => Attribute::ReservationToken(*token),
            Self::Software(text) => Attribute::Software(text),
            Self::UnknownAttributes(encoded) => Attribute::unknown_attributes(encoded)
                .expect("the strategy only builds even-length lists"),
            Self::Unknown(kind, value) => {
                Attribute::Unknown(RawAttribute::new(AttributeType(*kind), value))
            }
            Self::Userhash(hash) => Attribute::Userhash(hash),
            Self::Username(text) => Attribute::Username(text),
            Self::XorMappedAddress(address) => Attribute::XorMappedAddress(*address),
            Self::XorPeerAddress(address) => Attribute::XorPeerAddress(*address),
            Self::XorRelayedAddress(address) => Attribute::XorRelayedAddress(*address),
        }
    }
}

fn encode_password_algorithms(list: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut encoded = Vec::new();
    for (algorithm, parameters) in list {
        encoded.extend_from_slice(&algorithm.to_be_bytes());
        encoded.extend_from_slice(&u16::try_from(parameters.len()).unwrap().to_be_bytes());
        encoded.extend_from_slice(parameters);
        encoded.resize((encoded.len() + 3) & !3, 0);
    }
    encoded
}

fn family() -> impl Strategy<Value = AddressFamily> {
    prop_oneof![Just(AddressFamily::V4), Just(AddressFamily::V6)]
}

/// Socket addresses as the wire carries them: `SocketAddr::new` leaves the IPv6 flow label and
/// scope ID at zero, which the STUN address formats have no room for.
fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    let ip = prop_oneof![
        any::<u32>().prop_map(|bits| IpAddr::V4(Ipv4Addr::from(bits))),
        any::<u128>().prop_map(|bits| IpAddr::V6(Ipv6Addr::from(bits))),
    ];
    (ip, any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

/// UTF-8 text of at most `max_len` bytes: any characters (up to 4 bytes each) or printable ASCII
/// right up to the limit.
fn text(max_len: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        vec(any::<char>(), 0..=max_len / 4).prop_map(String::from_iter),
        vec(0x20u8..0x7F, 0..=max_len).prop_map(|bytes| String::from_utf8(bytes).unwrap()),
    ]
}

fn error_code() -> impl Strategy<Value = u16> {
    300u16..=699
}

/// Attribute types this codec does not decode, so they stay [`Attribute::Unknown`].
fn unknown_kind() -> impl Strategy<Value = u16> {
    any::<u16>().prop_filter("a type the codec knows", |kind| {
        !AttributeType(*kind).is_known()
    })
}

/// Every attribute that may appear anywhere in a message: all but the integrity and fingerprint
/// trailers, which change how the attributes after them are read.
fn body_attribute() -> impl Strategy<Value = Spec> {
    prop_oneof![
        family().prop_map(Spec::AdditionalAddressFamily),
        (family(), error_code(), text(MAX_TEXT_LEN))
            .prop_map(|(family, code, reason)| Spec::AddressErrorCode(family, code, reason)),
        text(MAX_TEXT_LEN).prop_map(Spec::AlternateDomain),
        socket_addr().prop_map(Spec::AlternateServer),
        any::<u16>().prop_map(Spec::ChannelNumber),
        vec(any::<u8>(), 0..200).prop_map(Spec::Data),
        Just(Spec::DontFragment),
        (error_code(), text(MAX_TEXT_LEN)).prop_map(|(code, reason)| Spec::ErrorCode(code, reason)),
        any::<bool>().prop_map(Spec::EvenPort),
        (any::<u8>(), any::<u8>(), any::<u32>())
            .prop_map(|(icmp_type, code, data)| Spec::Icmp(icmp_type, code, data)),
        any::<u32>().prop_map(Spec::Lifetime),
        socket_addr().prop_map(Spec::MappedAddress),
        text(MAX_TEXT_LEN).prop_map(Spec::Nonce),
        (any::<u16>(), vec(any::<u8>(), 0..=16))
            .prop_map(|(algorithm, parameters)| Spec::PasswordAlgorithm(algorithm, parameters)),
        vec((any::<u16>(), vec(any::<u8>(), 0..=16)), 0..5)
            .prop_map(|list| Spec::PasswordAlgorithms(encode_password_algorithms(&list))),
        text(MAX_TEXT_LEN).prop_map(Spec::Realm),
        family().prop_map(Spec::RequestedAddressFamily),
        any::<u8>().prop_map(Spec::RequestedTransport),
        any::<[u8; 8]>().prop_map(Spec::ReservationToken),
        text(MAX_TEXT_LEN).prop_map(Spec::Software),
        vec(any::<u16>(), 0..8).prop_map(|kinds| Spec::UnknownAttributes(
            kinds.iter().flat_map(|kind| kind.to_be_bytes()).collect()
        )),
        (unknown_kind(), vec(any::<u8>(), 0..64))
            .prop_map(|(kind, value)| Spec::Unknown(kind, value)),
        any::<[u8; 32]>().prop_map(Spec::Userhash),
        text(MAX_USERNAME_LEN).prop_map(Spec::Username),
        socket_addr().prop_map(Spec::XorMappedAddress),
        socket_addr().prop_map(Spec::XorPeerAddress),
        socket_addr().prop_map(Spec::XorRelayedAddress),
    ]
}

/// The variants [`body_attribute`] leaves out, with arbitrary (not computed) values.
fn trailer_attribute() -> impl Strategy<Value = Spec> {
    prop_oneof![
        any::<u32>().prop_map(Spec::Fingerprint),
        any::<[u8; 20]>().prop_map(Spec::MessageIntegrity),
        (4usize..=8)
            .prop_flat_map(|words| vec(any::<u8>(), words * 4))
            .prop_map(Spec::MessageIntegritySha256),
    ]
}

fn any_attribute() -> impl Strategy<Value = Spec> {
    prop_oneof![body_attribute(), trailer_attribute()]
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::Allocate),
        Just(Method::Binding),
        Just(Method::ChannelBind),
        Just(Method::CreatePermission),
        Just(Method::Data),
        Just(Method::Refresh),
        Just(Method::Send),
        // `from_number` keeps the seven numbers above from turning into `Other`, which would
        // not survive a round trip.
        (0u16..0x1000).prop_map(Method::from_number),
    ]
}

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![
        Just(Class::Request),
        Just(Class::Indication),
        Just(Class::SuccessResponse),
        Just(Class::ErrorResponse),
    ]
}

fn transaction_id() -> impl Strategy<Value = TransactionId> {
    any::<[u8; 12]>().prop_map(TransactionId)
}

/// A key and a different one. Flipping a bit (rather than drawing a second key) matters: HMAC
/// pads short keys with zeros, so "k" and "k\0" are the same key and would pass each other.
fn key_pair() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (
        vec(any::<u8>(), 1..80),
        any::<prop::sample::Index>(),
        0u32..8,
    )
        .prop_map(|(key, index, bit)| {
            let mut wrong = key.clone();
            wrong[index.index(key.len())] ^= 1 << bit;
            (key, wrong)
        })
}

/// Everything needed to encode one message.
#[derive(Debug, Clone)]
struct MessageSpec {
    message_type: MessageType,
    transaction_id: TransactionId,
    attributes: Vec<Spec>,
    padding: u8,
    integrity: Option<(Vec<u8>, Vec<u8>)>,
    integrity_sha256: Option<(Vec<u8>, Vec<u8>, usize)>,
    fingerprint: bool,
}

fn message_spec() -> impl Strategy<Value = MessageSpec> {
    (
        method(),
        class(),
        transaction_id(),
        vec(body_attribute(), 0..12),
        any::<u8>(),
        prop::option::of(key_pair()),
        prop::option::of((key_pair(), (4usize..=8).prop_map(|words| words * 4))),
        any::<bool>(),
    )
        .prop_map(
            |(
                method,
                class,
                transaction_id,
                attributes,
                padding,
                integrity,
                sha256,
                fingerprint,
            )| {
                MessageSpec {
                    message_type: MessageType::new(method, class),
                    transaction_id,
                    attributes,
                    padding,
                    integrity,
                    integrity_sha256: sha256.map(|((key, wrong), length)| (key, wrong, length)),
                    fingerprint,
                }
            },
        )
}

impl MessageSpec {
    fn encode(&self) -> Vec<u8> {
        let mut buf = vec![0; 0x1_0000];
        let mut encoder = MessageEncoder::new(&mut buf, self.message_type, self.transaction_id)
            .unwrap()
            .with_padding_byte(self.padding);
        for spec in &self.attributes {
            encoder.push(&spec.attribute()).unwrap();
        }
        if let Some((key, _)) = &self.integrity {
            encoder.push_message_integrity(key).unwrap();
        }
        if let Some((key, _, length)) = &self.integrity_sha256 {
            encoder.push_message_integrity_sha256(key, *length).unwrap();
        }
        if self.fingerprint {
            encoder.push_fingerprint().unwrap();
        }
        let len = encoder.finish();
        buf.truncate(len);
        buf
    }
}

/// The type and value bytes `spec` encodes to.
fn encoded(spec: &Spec) -> (u16, Vec<u8>) {
    let attribute = spec.attribute();
    let mut buf = vec![0; 2048];
    let message_type = MessageType::new(Method::Binding, Class::Request);
    let mut encoder = MessageEncoder::new(&mut buf, message_type, TransactionId([0; 12])).unwrap();
    encoder.push(&attribute).unwrap();
    let value = &encoder.as_bytes()[24..24 + attribute.value_len()];
    (attribute.kind().0, value.to_vec())
}

/// A raw attribute that may not decode: a random type (mostly one the codec knows) with random
/// bytes, or a valid value cut short or run long. The second finds decoders that trust a length
/// they did not check, which random bytes of the right type seldom do.
fn raw_attribute() -> impl Strategy<Value = (u16, Vec<u8>)> {
    let known: Vec<u16> = (0..=u16::MAX)
        .filter(|kind| AttributeType(*kind).is_known())
        .collect();
    let kind = prop_oneof![1 => any::<u16>(), 4 => prop::sample::select(known)];
    prop_oneof![
        (kind, vec(any::<u8>(), 0..64)),
        (
            any_attribute(),
            any::<prop::sample::Index>(),
            vec(any::<u8>(), 1..5),
            any::<bool>(),
        )
            .prop_map(|(spec, cut, extra, lengthen)| {
                let (kind, mut value) = encoded(&spec);
                if lengthen {
                    value.extend_from_slice(&extra);
                } else if !value.is_empty() {
                    value.truncate(cut.index(value.len()));
                }
                (kind, value)
            }),
    ]
}

/// A STUN message around `attributes`, with correct lengths and zero padding.
fn frame(
    message_type: u16,
    transaction_id: &TransactionId,
    attributes: &[(u16, Vec<u8>)],
) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&message_type.to_be_bytes());
    bytes.extend_from_slice(&[0, 0]);
    bytes.extend_from_slice(&0x2112_A442u32.to_be_bytes());
    bytes.extend_from_slice(transaction_id.as_bytes());
    for (kind, value) in attributes {
        bytes.extend_from_slice(&kind.to_be_bytes());
        bytes.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(value);
        bytes.resize((bytes.len() + 3) & !3, 0);
    }
    let length = u16::try_from(bytes.len() - 20).unwrap();
    bytes[2..4].copy_from_slice(&length.to_be_bytes());
    bytes
}

/// Parses, walks and decodes everything, and runs every check; only a panic can fail this.
fn exercise_parser(bytes: &[u8]) {
    let _ = classify(bytes);
    let _ = ChannelData::parse(bytes);
    let Ok(message) = Message::parse(bytes) else {
        return;
    };
    let _ = message.message_type();
    let transaction_id = message.transaction_id();
    for raw in message.attributes() {
        match Attribute::decode(raw, &transaction_id) {
            Ok(Attribute::PasswordAlgorithms(list)) => list.iter().for_each(drop),
            Ok(Attribute::UnknownAttributes(list)) => list.iter().for_each(drop),
            _ => {}
        }
    }
    let _ = message.verify_message_integrity(b"key");
    let _ = message.verify_message_integrity_sha256(b"key");
    let _ = message.verify_fingerprint();
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Delete(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        (any::<prop::sample::Index>(), any::<u8>())
            .prop_map(|(at, byte)| Mutation::Insert(at, byte)),
        any::<prop::sample::Index>().prop_map(Mutation::Delete),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    match mutation {
        Mutation::Flip(at, mask) if !bytes.is_empty() => {
            let at = at.index(bytes.len());
            bytes[at] ^= mask;
        }
        Mutation::Insert(at, byte) => {
            let at = at.index(bytes.len() + 1);
            bytes.insert(at, *byte);
        }
        Mutation::Delete(at) if !bytes.is_empty() => {
            let at = at.index(bytes.len());
            bytes.remove(at);
        }
        Mutation::Flip(..) | Mutation::Delete(_) => {}
    }
}

/// Rewrites the header's length field to match the datagram, so mutations get past the first
/// framing check and reach the attribute walk.
fn fix_length(bytes: &mut [u8]) {
    if bytes.len() >= 20 {
        let length = u16::try_from(bytes.len() - 20).unwrap_or(u16::MAX);
        bytes[2..4].copy_from_slice(&length.to_be_bytes());
    }
}

/// Runs one encoder call that may only fail for lack of room, and checks a failure wrote nothing.
/// Returns whether the call succeeded.
fn attempt<'b>(
    encoder: &mut MessageEncoder<'b>,
    push: impl FnOnce(&mut MessageEncoder<'b>) -> Result<(), EncodeError>,
) -> Result<bool, TestCaseError> {
    let before = encoder.as_bytes().to_vec();
    match push(encoder) {
        Ok(()) => Ok(true),
        Err(error) => {
            prop_assert_eq!(error, EncodeError::BufferTooSmall);
            prop_assert_eq!(encoder.as_bytes(), &before[..]);
            Ok(false)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_attribute_alone_round_trips_through_a_message(
        spec in any_attribute(),
        transaction_id in transaction_id(),
        padding in any::<u8>(),
    ) {
        let attribute = spec.attribute();
        let mut buf = vec![0; 2048];
        let message_type = MessageType::new(Method::Binding, Class::Request);
        let mut encoder = MessageEncoder::new(&mut buf, message_type, transaction_id)
            .unwrap()
            .with_padding_byte(padding);
        encoder.push(&attribute).unwrap();
        let len = encoder.finish();

        let message = Message::parse(&buf[..len]).unwrap();
        let raws: Vec<RawAttribute<'_>> = message.attributes().collect();
        prop_assert_eq!(raws.len(), 1);
        prop_assert_eq!(raws[0].kind(), attribute.kind());
        prop_assert_eq!(raws[0].value().len(), attribute.value_len());
        prop_assert_eq!(Attribute::decode(raws[0], &transaction_id), Ok(attribute));
    }

    #[test]
    fn every_message_round_trips_with_its_integrity_and_fingerprint(spec in message_spec()) {
        let bytes = spec.encode();
        let message = Message::parse(&bytes).unwrap();
        prop_assert_eq!(message.message_type(), spec.message_type);
        prop_assert_eq!(message.transaction_id(), spec.transaction_id);

        let raws: Vec<RawAttribute<'_>> = message.attributes().collect();
        let body = spec.attributes.len();
        prop_assert!(raws.len() >= body);
        for (raw, expected) in raws.iter().zip(&spec.attributes) {
            prop_assert_eq!(
                Attribute::decode(*raw, &spec.transaction_id),
                Ok(expected.attribute())
            );
        }
        let trailers: Vec<AttributeType> = raws[body..].iter().map(RawAttribute::kind).collect();
        let mut expected_trailers = Vec::new();

        match &spec.integrity {
            Some((key, wrong)) => {
                expected_trailers.push(AttributeType::MESSAGE_INTEGRITY);
                prop_assert_eq!(message.verify_message_integrity(key), Ok(()));
                prop_assert_eq!(
                    message.verify_message_integrity(wrong),
                    Err(IntegrityError::Mismatch)
                );
            }
            None => prop_assert_eq!(
                message.verify_message_integrity(b"key"),
                Err(IntegrityError::Missing)
            ),
        }
        match &spec.integrity_sha256 {
            Some((key, wrong, _)) => {
                expected_trailers.push(AttributeType::MESSAGE_INTEGRITY_SHA256);
                prop_assert_eq!(message.verify_message_integrity_sha256(key), Ok(()));
                prop_assert_eq!(
                    message.verify_message_integrity_sha256(wrong),
                    Err(IntegrityError::Mismatch)
                );
            }
            None => prop_assert_eq!(
                message.verify_message_integrity_sha256(b"key"),
                Err(IntegrityError::Missing)
            ),
        }
        if spec.fingerprint {
            expected_trailers.push(AttributeType::FINGERPRINT);
            prop_assert_eq!(message.verify_fingerprint(), Ok(()));
        } else {
            prop_assert_eq!(message.verify_fingerprint(), Err(IntegrityError::Missing));
        }
        prop_assert_eq!(trailers, expected_trailers);
    }

    #[test]
    fn any_raw_attribute_that_decodes_reencodes_to_the_same_value(
        (kind, value) in raw_attribute(),
        transaction_id in transaction_id(),
    ) {
        let raw = RawAttribute::new(AttributeType(kind), &value);
        let Ok(decoded) = Attribute::decode(raw, &transaction_id) else {
            return Ok(());
        };
        prop_assert_eq!(decoded.kind(), raw.kind());
        let mut buf = vec![0; 2048];
        let mut encoder = MessageEncoder::new(
            &mut buf,
            MessageType::new(Method::Binding, Class::Indication),
            transaction_id,
        )
        .unwrap();
        // RFC 8489 §14.3: receivers take USERNAMEs up to 763 bytes, senders write fewer than 509.
        if matches!(decoded, Attribute::Username(name) if name.len() > MAX_USERNAME_LEN) {
            prop_assert_eq!(encoder.push(&decoded), Err(EncodeError::ValueTooLong));
            return Ok(());
        }
        encoder.push(&decoded).unwrap();
        let len = encoder.finish();
        let message = Message::parse(&buf[..len]).unwrap();
        let reparsed = message.attributes().next().unwrap();
        prop_assert_eq!(Attribute::decode(reparsed, &transaction_id), Ok(decoded));
    }

    #[test]
    fn parsing_arbitrary_bytes_never_panics(bytes in vec(any::<u8>(), 0..600)) {
        exercise_parser(&bytes);
    }

    #[test]
    fn parsing_arbitrary_attributes_behind_a_stun_header_never_panics(
        message_type in 0u16..0x4000,
        transaction_id in transaction_id(),
        attributes in vec(raw_attribute(), 0..8),
    ) {
        // Random bytes almost never carry the magic cookie and a matching length; this message
        // does, and frames its attributes correctly, so the decoders are what get fed garbage.
        exercise_parser(&frame(message_type, &transaction_id, &attributes));
    }

    #[test]
    fn mutated_valid_messages_never_panic_the_parser(
        spec in message_spec(),
        mutations in vec(mutation(), 1..8),
        repair_length in any::<bool>(),
    ) {
        let mut bytes = spec.encode();
        for mutation in &mutations {
            apply(&mut bytes, mutation);
        }
        if repair_length {
            fix_length(&mut bytes);
        }
        exercise_parser(&bytes);
    }

    #[test]
    fn channel_data_round_trips_for_every_channel_and_payload(
        number in 0x4000u16..=0x4FFF,
        payload in vec(any::<u8>(), 0..1500),
        trailing in vec(any::<u8>(), 0..=3),
    ) {
        let channel = ChannelNumber::new(number).unwrap();
        let mut buf = vec![0; 4 + payload.len() + 3];
        let written = ChannelData::new(channel, &payload).encode(&mut buf).unwrap();
        prop_assert_eq!(written, 4 + payload.len());
        prop_assert_eq!(
            &buf[..4],
            &ChannelData::header(channel, payload.len()).unwrap()[..]
        );
        buf.truncate(written);
        buf.extend_from_slice(&trailing);

        // Up to the next multiple of 4 the trailing bytes are padding; beyond it they are not.
        let padding_room = ((payload.len() + 3) & !3) - payload.len();
        let parsed = ChannelData::parse(&buf);
        if trailing.len() <= padding_room {
            let parsed = parsed.unwrap();
            prop_assert_eq!(parsed.channel(), channel);
            prop_assert_eq!(parsed.payload(), &payload[..]);
        } else {
            prop_assert_eq!(parsed, Err(ChannelDataError::ExcessTrailingBytes));
        }
        prop_assert_eq!(classify(&buf), Ok(turnpike_proto::PacketKind::ChannelData));
    }

    #[test]
    fn encoder_fails_cleanly_and_keeps_its_state_when_the_buffer_is_short(
        size in 0usize..200,
        transaction_id in transaction_id(),
        attributes in vec(body_attribute(), 0..12),
        key in vec(any::<u8>(), 1..40),
        sha256_length in (4usize..=8).prop_map(|words| words * 4),
    ) {
        const CANARY: u8 = 0xA5;
        let mut storage = vec![CANARY; size + 64];
        let (buf, beyond) = storage.split_at_mut(size);
        let message_type = MessageType::new(Method::Allocate, Class::SuccessResponse);
        let Ok(mut encoder) = MessageEncoder::new(buf, message_type, transaction_id) else {
            prop_assert!(size < 20);
            prop_assert!(beyond.iter().all(|&byte| byte == CANARY));
            return Ok(());
        };

        let mut pushed = Vec::new();
        for spec in &attributes {
            let attribute = spec.attribute();
            if attempt(&mut encoder, |encoder| encoder.push(&attribute))? {
                pushed.push(spec);
            }
        }
        let mut trailers = Vec::new();
        if attempt(&mut encoder, |encoder| encoder.push_message_integrity(&key))? {
            trailers.push(AttributeType::MESSAGE_INTEGRITY);
        }
        if attempt(&mut encoder, |encoder| {
            encoder.push_message_integrity_sha256(&key, sha256_length)
        })? {
            trailers.push(AttributeType::MESSAGE_INTEGRITY_SHA256);
        }
        if attempt(&mut encoder, MessageEncoder::push_fingerprint)? {
            trailers.push(AttributeType::FINGERPRINT);
        }
        let len = encoder.finish();
        prop_assert!(len <= size);
        prop_assert!(beyond.iter().all(|&byte| byte == CANARY));

        // What did fit is a valid message: the failed calls left nothing behind.
        let message = Message::parse(&storage[..len]).unwrap();
        let raws: Vec<RawAttribute<'_>> = message.attributes().collect();
        prop_assert_eq!(raws.len(), pushed.len() + trailers.len());
        for (raw, spec) in raws.iter().zip(&pushed) {
            prop_assert_eq!(Attribute::decode(*raw, &transaction_id), Ok(spec.attribute()));
        }
        let kinds: Vec<AttributeType> = raws[pushed.len()..].iter().map(RawAttribute::kind).collect();
        prop_assert_eq!(kinds, trailers.clone());
        if trailers.contains(&AttributeType::MESSAGE_INTEGRITY) {
            prop_assert_eq!(message.verify_message_integrity(&key), Ok(()));
        }
        if trailers.contains(&AttributeType::MESSAGE_INTEGRITY_SHA256) {
            prop_assert_eq!(message.verify_message_integrity_sha256(&key), Ok(()));
        }
        if trailers.contains(&AttributeType::FINGERPRINT) {
            prop_assert_eq!(message.verify_fingerprint(), Ok(()));
        }
    }
}

/// `MessageEncoder::push` refuses values that would not parse back, such as a
/// MESSAGE-INTEGRITY-SHA256 of a length the RFC does not allow, or an `Unknown` attribute under a
/// type code the codec decodes itself with a value that type cannot have.
#[test]
fn encoder_refuses_attributes_that_would_not_parse_back() {
    let transaction_id = TransactionId([3; 12]);
    for attribute in [
        Attribute::MessageIntegritySha256(&[0; 5]),
        Attribute::MessageIntegritySha256(&[0; 36]),
        Attribute::Unknown(RawAttribute::new(AttributeType::FINGERPRINT, &[1, 2, 3])),
        Attribute::Unknown(RawAttribute::new(AttributeType::MESSAGE_INTEGRITY, &[0; 4])),
    ] {
        let mut buf = [0; 128];
        let message_type = MessageType::new(Method::Binding, Class::Request);
        let mut encoder = MessageEncoder::new(&mut buf, message_type, transaction_id).unwrap();
        if encoder.push(&attribute).is_ok() {
            let len = encoder.finish();
            assert!(
                Message::parse(&buf[..len]).is_ok(),
                "{attribute:?} was encoded but does not parse"
            );
        }
    }
}
