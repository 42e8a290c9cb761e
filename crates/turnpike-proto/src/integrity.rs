//! MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT (RFC 8489 §14.5–§14.7).
//!
//! The MAC covers the message up to (not including) the integrity attribute, with the header's
//! length field rewritten as if the integrity attribute were the last one. Verification feeds
//! the HMAC the header type, the adjusted length and the rest of the prefix in three updates,
//! so it needs no copy of the message.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

use crate::message::{HEADER_LEN, Message};

/// The value FINGERPRINT's CRC-32 is XORed with, "STUN" in ASCII.
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Why an integrity or fingerprint check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntegrityError {
    /// The message does not carry the attribute being checked.
    #[error("attribute missing")]
    Missing,
    /// The attribute is there but its value is wrong.
    #[error("integrity check failed")]
    Mismatch,
}

/// The header length field as the MAC or CRC must see it: as if the message ended at `end`.
fn adjusted_length(end: usize) -> [u8; 2] {
    // `end` lies inside a message `Message::parse` accepted, so it fits the 16-bit field.
    u16::try_from(end - HEADER_LEN)
        .unwrap_or(u16::MAX)
        .to_be_bytes()
}

/// The first `covered` bytes of a message with the length field replaced by `length`.
fn covered_parts<'a>(bytes: &'a [u8], covered: usize, length: &'a [u8; 2]) -> [&'a [u8]; 3] {
    [&bytes[..2], length, &bytes[4..covered]]
}

pub(crate) fn hmac_sha1(key: &[u8], parts: [&[u8]; 3]) -> Hmac<Sha1> {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable_key());
    for part in parts {
        mac.update(part);
    }
    mac
}

pub(crate) fn hmac_sha256(key: &[u8], parts: [&[u8]; 3]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable_key());
    for part in parts {
        mac.update(part);
    }
    mac
}

#[cold]
fn unreachable_key() -> ! {
    unreachable!("HMAC takes keys of any length")
}

pub(crate) fn fingerprint(parts: [&[u8]; 3]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    for part in parts {
        crc.update(part);
    }
    crc.finalize() ^ FINGERPRINT_XOR
}

impl Message<'_> {
    /// Checks MESSAGE-INTEGRITY (HMAC-SHA1) with `key` in constant time.
    ///
    /// For long-term credentials `key` is MD5(username ":" realm ":" password).
    ///
    /// # Errors
    /// [`IntegrityError::Missing`] without the attribute, [`IntegrityError::Mismatch`] when the
    /// MAC differs.
    pub fn verify_message_integrity(&self, key: &[u8]) -> Result<(), IntegrityError> {
        let offset = self.integrity_offset().ok_or(IntegrityError::Missing)?;
        let bytes = self.as_bytes();
        let end = offset + 4 + 20;
        let length = adjusted_length(end);
        let mac = hmac_sha1(key, covered_parts(bytes, offset, &length));
        mac.verify_slice(&bytes[offset + 4..end])
            .map_err(|_| IntegrityError::Mismatch)
    }

    /// Checks MESSAGE-INTEGRITY-SHA256 with `key` in constant time, including the truncated
    /// forms (16 to 28 bytes) RFC 8489 §14.6 allows.
    ///
    /// # Errors
    /// [`IntegrityError::Missing`] without the attribute, [`IntegrityError::Mismatch`] when the
    /// MAC differs.
    pub fn verify_message_integrity_sha256(&self, key: &[u8]) -> Result<(), IntegrityError> {
        let offset = self
            .integrity_sha256_offset()
            .ok_or(IntegrityError::Missing)?;
        let bytes = self.as_bytes();
        let length = usize::from(u16::from_be_bytes([bytes[offset + 2], bytes[offset + 3]]));
        let end = offset + 4 + length;
        let length = adjusted_length(end);
        let mac = hmac_sha256(key, covered_parts(bytes, offset, &length));
        mac.verify_truncated_left(&bytes[offset + 4..end])
            .map_err(|_| IntegrityError::Mismatch)
    }

    /// Checks FINGERPRINT (CRC-32 of the message before it, XOR 0x5354554E).
    ///
    /// # Errors
    /// [`IntegrityError::Missing`] without the attribute, [`IntegrityError::Mismatch`] when the
    /// CRC differs.
    pub fn verify_fingerprint(&self) -> Result<(), IntegrityError> {
        let offset = self.fingerprint_offset().ok_or(IntegrityError::Missing)?;
        let bytes = self.as_bytes();
        let end = offset + 8;
        let length = adjusted_length(end);
        let expected = fingerprint(covered_parts(bytes, offset, &length));
        let sent = u32::from_be_bytes([
            bytes[offset + 4],
            bytes[offset + 5],
            bytes[offset + 6],
            bytes[offset + 7],
        ]);
        if expected == sent {
            Ok(())
        } else {
            Err(IntegrityError::Mismatch)
        }
    }
}
