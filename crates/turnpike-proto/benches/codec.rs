//! Wire codec costs on the relay's hot paths: the ChannelData header on every relayed packet,
//! and parsing, authenticating and answering the STUN requests that set channels up.
//!
//! Run with `cargo bench -p turnpike-proto --bench codec`; results are in docs/benchmarks.md.

#![expect(
    clippy::expect_used,
    reason = "benchmark fixtures: a failure to build one is a bug in the benchmark"
)]

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use turnpike_proto::{
    Attribute, ChannelData, ChannelNumber, Class, Message, MessageEncoder, MessageType, Method,
    TransactionId,
};

const TRANSACTION_ID: TransactionId = TransactionId([
    0x5A, 0x1C, 0x33, 0x07, 0x9E, 0x41, 0xD2, 0x68, 0x0B, 0xF4, 0x7A, 0x25,
]);
/// Long-term credential keys: MD5(username:realm:password) for MESSAGE-INTEGRITY, SHA-256 of
/// the same for MESSAGE-INTEGRITY-SHA256. The values only need the right length.
const KEY_MD5: [u8; 16] = [0x42; 16];
const KEY_SHA256: [u8; 32] = [0x24; 32];

/// Which integrity attribute a request carries.
#[derive(Clone, Copy)]
enum Integrity {
    Sha1,
    Sha256,
}

fn address(text: &str) -> SocketAddr {
    text.parse().expect("a valid socket address literal")
}

/// A ChannelBind request as a browser sends it once it holds a nonce: long-term credentials,
/// the peer, the channel, then integrity and FINGERPRINT.
fn channel_bind_request(integrity: Integrity) -> Vec<u8> {
    let mut buf = vec![0; 1500];
    let mut encoder = MessageEncoder::new(
        &mut buf,
        MessageType::new(Method::ChannelBind, Class::Request),
        TRANSACTION_ID,
    )
    .expect("1500 bytes hold a header");
    let nonce = "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA";
    for attribute in [
        Attribute::Username("1764028800:alice@example.com"),
        Attribute::Realm("turnpike.example"),
        Attribute::Nonce(nonce),
        Attribute::XorPeerAddress(address("198.51.100.23:49170")),
        Attribute::ChannelNumber(0x4001),
    ] {
        encoder
            .push(&attribute)
            .expect("1500 bytes hold the request");
    }
    match integrity {
        Integrity::Sha1 => encoder.push_message_integrity(&KEY_MD5),
        Integrity::Sha256 => encoder.push_message_integrity_sha256(&KEY_SHA256, 32),
    }
    .expect("1500 bytes hold the integrity attribute");
    encoder
        .push_fingerprint()
        .expect("1500 bytes hold FINGERPRINT");
    let len = encoder.finish();
    buf.truncate(len);
    buf
}

/// What the relay does with an authenticated request before acting on it: parse, decode every
/// attribute, check the MAC and the fingerprint.
fn parse_and_authenticate(datagram: &[u8], integrity: Integrity) -> bool {
    let Ok(message) = Message::parse(datagram) else {
        return false;
    };
    let transaction_id = message.transaction_id();
    for raw in message.attributes() {
        let _ = black_box(Attribute::decode(raw, &transaction_id));
    }
    let verified = match integrity {
        Integrity::Sha1 => message.verify_message_integrity(black_box(&KEY_MD5)),
        Integrity::Sha256 => message.verify_message_integrity_sha256(black_box(&KEY_SHA256)),
    };
    verified.is_ok() && message.verify_fingerprint().is_ok()
}

fn channel_data_header_decode(c: &mut Criterion) {
    let channel = ChannelNumber::new(0x4001).expect("0x4001 is a client channel");
    let payload = [0xAB; 100];
    let mut datagram = [0; 104];
    let written = ChannelData::new(channel, &payload)
        .encode(&mut datagram)
        .expect("104 bytes hold the message");
    assert_eq!(written, datagram.len());

    c.bench_function("channel_data_header_decode", |b| {
        b.iter(|| {
            ChannelData::parse(black_box(&datagram))
                .map(|message| (message.channel(), message.payload().len()))
        });
    });
}

fn stun_request_parse_and_integrity(c: &mut Criterion) {
    let request = channel_bind_request(Integrity::Sha1);
    assert!(parse_and_authenticate(&request, Integrity::Sha1));
    c.bench_function("stun_request_parse_and_integrity", |b| {
        b.iter(|| parse_and_authenticate(black_box(&request), Integrity::Sha1));
    });
}

fn stun_request_parse_and_integrity_sha256(c: &mut Criterion) {
    let request = channel_bind_request(Integrity::Sha256);
    assert!(parse_and_authenticate(&request, Integrity::Sha256));
    c.bench_function("stun_request_parse_and_integrity_sha256", |b| {
        b.iter(|| parse_and_authenticate(black_box(&request), Integrity::Sha256));
    });
}

fn success_response_encode(c: &mut Criterion) {
    // One buffer reused across iterations, as the event loop reuses its send buffer.
    let mut buf = [0; 1500];
    let relayed = address("203.0.113.5:50000");
    let mapped = address("192.0.2.77:61000");
    c.bench_function("success_response_encode", |b| {
        b.iter(|| {
            let mut encoder = MessageEncoder::new(
                &mut buf,
                MessageType::new(Method::Allocate, Class::SuccessResponse),
                black_box(TRANSACTION_ID),
            )
            .expect("1500 bytes hold a header");
            encoder
                .push(&Attribute::XorRelayedAddress(black_box(relayed)))
                .expect("room for XOR-RELAYED-ADDRESS");
            encoder
                .push(&Attribute::XorMappedAddress(black_box(mapped)))
                .expect("room for XOR-MAPPED-ADDRESS");
            encoder
                .push(&Attribute::Lifetime(black_box(600)))
                .expect("room for LIFETIME");
            encoder
                .push_message_integrity(black_box(&KEY_MD5))
                .expect("room for MESSAGE-INTEGRITY");
            encoder.push_fingerprint().expect("room for FINGERPRINT");
            encoder.finish()
        });
    });
}

fn binding_response_encode(c: &mut Criterion) {
    // Binding needs no credentials, so its response carries no MESSAGE-INTEGRITY.
    let mut buf = [0; 1500];
    let mapped = address("[2001:db8::77]:61000");
    c.bench_function("binding_response_encode", |b| {
        b.iter(|| {
            let mut encoder = MessageEncoder::new(
                &mut buf,
                MessageType::new(Method::Binding, Class::SuccessResponse),
                black_box(TRANSACTION_ID),
            )
            .expect("1500 bytes hold a header");
            encoder
                .push(&Attribute::XorMappedAddress(black_box(mapped)))
                .expect("room for XOR-MAPPED-ADDRESS");
            encoder.push_fingerprint().expect("room for FINGERPRINT");
            encoder.finish()
        });
    });
}

criterion_group!(
    benches,
    channel_data_header_decode,
    stun_request_parse_and_integrity,
    stun_request_parse_and_integrity_sha256,
    success_response_encode,
    binding_response_encode,
);
criterion_main!(benches);
