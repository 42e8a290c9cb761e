//! Feeds arbitrary datagrams to the STUN parser and, whenever one parses, checks that the
//! encoder writes its attributes back so that they decode to the same values.

#![no_main]

use libfuzzer_sys::fuzz_target;
use turnpike_proto::{Attribute, AttributeType, Message, MessageEncoder, classify};

/// Any fixed key will do: the MAC has to be computed over whatever the input holds, whether or
/// not it matches.
const KEY: &[u8] = b"turnpike-fuzz-key";

fuzz_target!(|data: &[u8]| {
    let _ = classify(data);
    let Ok(message) = Message::parse(data) else {
        return;
    };
    let transaction_id = message.transaction_id();
    let mut decoded = Vec::new();
    for raw in message.attributes() {
        let Ok(attribute) = Attribute::decode(raw, &transaction_id) else {
            continue;
        };
        match attribute {
            Attribute::PasswordAlgorithms(list) => list.iter().for_each(drop),
            Attribute::UnknownAttributes(list) => list.iter().for_each(drop),
            _ => {}
        }
        // The trailers are recomputed by the encoder, not copied, so they are left out of the
        // comparison.
        // RFC 8489 §14.3: receivers take USERNAMEs up to 763 bytes, senders write fewer than
        // 509, so a long one decodes but is rightly refused by the encoder.
        let sendable = !matches!(attribute, Attribute::Username(name) if name.len() > 508);
        if sendable
            && ![
                AttributeType::MESSAGE_INTEGRITY,
                AttributeType::MESSAGE_INTEGRITY_SHA256,
                AttributeType::FINGERPRINT,
            ]
            .contains(&raw.kind())
        {
            decoded.push(attribute);
        }
    }
    let _ = message.verify_message_integrity(KEY);
    let _ = message.verify_message_integrity_sha256(KEY);
    let _ = message.verify_fingerprint();

    // Differential oracle. Without skipped and undecodable attributes and trailers, the body is
    // never longer than the input's; MESSAGE-INTEGRITY adds 24 bytes.
    let mut buf = vec![0; data.len() + 24];
    let mut encoder = MessageEncoder::new(&mut buf, message.message_type(), transaction_id)
        .expect("a parsed message is at least a header long");
    for attribute in &decoded {
        if let Err(error) = encoder.push(attribute) {
            panic!("decoded {attribute:?} but cannot encode it: {error}");
        }
    }
    // Only a body within 24 bytes of the 16-bit length limit leaves no room for the MAC.
    let with_integrity = encoder.as_bytes().len() - 20 + 24 <= 0xFFFF;
    if with_integrity {
        encoder
            .push_message_integrity(KEY)
            .expect("the buffer has room for MESSAGE-INTEGRITY");
    }
    let len = encoder.finish();
    let reencoded = match Message::parse(&buf[..len]) {
        Ok(reencoded) => reencoded,
        Err(error) => panic!("re-encoded message does not parse: {error}"),
    };
    assert_eq!(reencoded.message_type(), message.message_type());
    assert_eq!(reencoded.transaction_id(), transaction_id);
    let mut again = reencoded.attributes();
    for attribute in &decoded {
        let raw = again.next().expect("re-encoded message lost an attribute");
        assert_eq!(
            Attribute::decode(raw, &transaction_id).as_ref(),
            Ok(attribute)
        );
    }
    if with_integrity {
        assert_eq!(
            again.next().map(|raw| raw.kind()),
            Some(AttributeType::MESSAGE_INTEGRITY)
        );
        assert_eq!(reencoded.verify_message_integrity(KEY), Ok(()));
    }
    assert!(again.next().is_none());
});
