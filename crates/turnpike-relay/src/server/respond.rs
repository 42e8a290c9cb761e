//! Encoding the messages the server sends.

use core::net::SocketAddr;

use rand::RngCore;
use turnpike_proto::{
    Attribute, Class, EncodeError, MessageEncoder, MessageType, Method, TransactionId,
};

use crate::auth::{Authenticated, IntegrityKind};

/// Room for any response this server builds: the largest is a 420 listing unknown attributes,
/// whose list is capped, or a challenge with a realm of at most 763 bytes.
const RESPONSE_CAPACITY: usize = 2048;

/// How a response is protected: signed with the key that authenticated its request, and
/// fingerprinted when the request was.
#[derive(Debug, Clone, Copy)]
pub(super) struct Protection<'a> {
    pub(super) signer: Option<&'a Authenticated>,
    pub(super) fingerprint: bool,
}

pub(super) fn response(
    method: Method,
    class: Class,
    transaction_id: TransactionId,
    attributes: &[Attribute<'_>],
    protection: Protection<'_>,
) -> Result<Vec<u8>, EncodeError> {
    let mut buf = vec![0; RESPONSE_CAPACITY];
    let mut encoder =
        MessageEncoder::new(&mut buf, MessageType::new(method, class), transaction_id)?;
    for attribute in attributes {
        encoder.push(attribute)?;
    }
    if let Some(signer) = protection.signer {
        match signer.integrity {
            IntegrityKind::Sha1 => encoder.push_message_integrity(signer.key.as_bytes())?,
            IntegrityKind::Sha256 => {
                encoder.push_message_integrity_sha256(signer.key.as_bytes(), 32)?
            }
        }
    }
    if protection.fingerprint {
        encoder.push_fingerprint()?;
    }
    let len = encoder.finish();
    buf.truncate(len);
    Ok(buf)
}

/// A Data indication carrying `data` from `peer` (RFC 8656 §11.4).
pub(super) fn data_indication(
    rng: &mut impl RngCore,
    peer: SocketAddr,
    data: &[u8],
) -> Result<Vec<u8>, EncodeError> {
    let mut transaction_id = [0; 12];
    rng.fill_bytes(&mut transaction_id);
    // Header, XOR-PEER-ADDRESS (at most 24 bytes) and DATA with its header and padding.
    let mut buf = vec![0; 20 + 24 + 4 + data.len() + 3];
    let message_type = MessageType::new(Method::Data, Class::Indication);
    let mut encoder = MessageEncoder::new(&mut buf, message_type, TransactionId(transaction_id))?;
    encoder.push(&Attribute::XorPeerAddress(peer))?;
    encoder.push(&Attribute::Data(data))?;
    let len = encoder.finish();
    buf.truncate(len);
    Ok(buf)
}
