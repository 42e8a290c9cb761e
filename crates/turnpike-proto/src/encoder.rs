//! Writing STUN messages into a caller-provided buffer.

use hmac::Mac;

use crate::attribute::{Attribute, AttributeType, MAX_TEXT_LEN, MAX_USERNAME_LEN, RawAttribute};
use crate::integrity::{fingerprint, hmac_sha1, hmac_sha256};
use crate::message::{HEADER_LEN, MAGIC_COOKIE, MessageType, TransactionId};

/// Why a message or attribute could not be encoded. Nothing is written when an error is
/// returned: the encoder stays as it was before the failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer cannot hold what was asked for.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// An error code outside 300–699.
    #[error("error code out of range")]
    InvalidErrorCode,
    /// A MESSAGE-INTEGRITY-SHA256 length other than 16 to 32 in steps of 4.
    #[error("invalid truncation of message-integrity-sha256")]
    InvalidTruncation,
    /// A value its attribute type cannot carry (e.g. a 3-byte FINGERPRINT passed as
    /// [`Attribute::Unknown`]); a receiver would reject the message.
    #[error("value invalid for its attribute type")]
    InvalidValue,
    /// A value longer than its attribute or the 16-bit message length allows.
    #[error("value too long")]
    ValueTooLong,
}

/// Builds one STUN message in a caller-provided buffer.
///
/// Attributes are appended in call order; the header's length field is kept current after every
/// call, so [`MessageEncoder::push_message_integrity`] and
/// [`MessageEncoder::push_fingerprint`] can MAC the bytes as they stand. Call the integrity
/// methods last (FINGERPRINT after them): attributes pushed after them are ignored by receivers.
#[derive(Debug)]
pub struct MessageEncoder<'b> {
    buf: &'b mut [u8],
    len: usize,
    transaction_id: TransactionId,
    padding: u8,
}

impl<'b> MessageEncoder<'b> {
    /// Starts a message by writing its header.
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`] when `buf` is shorter than 20 bytes.
    pub fn new(
        buf: &'b mut [u8],
        message_type: MessageType,
        transaction_id: TransactionId,
    ) -> Result<Self, EncodeError> {
        let header = buf
            .get_mut(..HEADER_LEN)
            .ok_or(EncodeError::BufferTooSmall)?;
        header[..2].copy_from_slice(&message_type.to_u16().to_be_bytes());
        header[2..4].fill(0);
        header[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        header[8..].copy_from_slice(transaction_id.as_bytes());
        Ok(Self {
            buf,
            len: HEADER_LEN,
            transaction_id,
            padding: 0,
        })
    }

    /// Uses `byte` for attribute padding instead of zero. Receivers must ignore padding; this
    /// exists so test vectors that pad with spaces (RFC 5769) can be reproduced exactly.
    #[must_use]
    pub const fn with_padding_byte(mut self, byte: u8) -> Self {
        self.padding = byte;
        self
    }

    /// Appends `attribute`.
    ///
    /// # Errors
    /// See [`EncodeError`]; on error nothing is written.
    pub fn push(&mut self, attribute: &Attribute<'_>) -> Result<(), EncodeError> {
        validate(attribute)?;
        let transaction_id = self.transaction_id;
        let before = self.len;
        let value = self.reserve(attribute.kind(), attribute.value_len())?;
        attribute.write_value(value, &transaction_id);
        // Whatever this encoder writes must parse back: decoding the bytes just written is the
        // one check that covers every variant, including raw values under known types.
        let written = RawAttribute::new(
            attribute.kind(),
            &self.buf[before + 4..before + 4 + attribute.value_len()],
        );
        let framing_ok = match attribute.kind() {
            AttributeType::MESSAGE_INTEGRITY => attribute.value_len() == 20,
            AttributeType::FINGERPRINT => attribute.value_len() == 4,
            _ => true,
        };
        if !framing_ok || Attribute::decode(written, &transaction_id).is_err() {
            self.truncate(before);
            return Err(EncodeError::InvalidValue);
        }
        Ok(())
    }

    /// Drops everything after `len`, restoring the header's length field.
    fn truncate(&mut self, len: usize) {
        self.len = len;
        let message_len = u16::try_from(len - HEADER_LEN).unwrap_or(0);
        self.buf[2..4].copy_from_slice(&message_len.to_be_bytes());
    }

    /// Appends MESSAGE-INTEGRITY computed with `key` over everything written so far.
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`]; on error nothing is written.
    pub fn push_message_integrity(&mut self, key: &[u8]) -> Result<(), EncodeError> {
        let offset = self.len;
        self.reserve(AttributeType::MESSAGE_INTEGRITY, 20)?;
        let mac = hmac_sha1(key, self.covered(offset)).finalize().into_bytes();
        self.buf[offset + 4..offset + 24].copy_from_slice(&mac);
        Ok(())
    }

    /// Appends MESSAGE-INTEGRITY-SHA256 computed with `key`, truncated to `length` bytes (32 for
    /// the full MAC; RFC 8489 §14.6 allows 16 to 32 in steps of 4).
    ///
    /// # Errors
    /// [`EncodeError::InvalidTruncation`] or [`EncodeError::BufferTooSmall`]; on error nothing
    /// is written.
    pub fn push_message_integrity_sha256(
        &mut self,
        key: &[u8],
        length: usize,
    ) -> Result<(), EncodeError> {
        if !(16..=32).contains(&length) || !length.is_multiple_of(4) {
            return Err(EncodeError::InvalidTruncation);
        }
        let offset = self.len;
        self.reserve(AttributeType::MESSAGE_INTEGRITY_SHA256, length)?;
        let mac = hmac_sha256(key, self.covered(offset))
            .finalize()
            .into_bytes();
        self.buf[offset + 4..offset + 4 + length].copy_from_slice(&mac[..length]);
        Ok(())
    }

    /// Appends FINGERPRINT; it must be the last attribute.
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`]; on error nothing is written.
    pub fn push_fingerprint(&mut self) -> Result<(), EncodeError> {
        let offset = self.len;
        self.reserve(AttributeType::FINGERPRINT, 4)?;
        let crc = fingerprint(self.covered(offset));
        self.buf[offset + 4..offset + 8].copy_from_slice(&crc.to_be_bytes());
        Ok(())
    }

    /// The message written so far.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Ends the message, returning its length in bytes.
    #[must_use]
    pub const fn finish(self) -> usize {
        self.len
    }

    /// The bytes before `offset`, with the header length as it now stands.
    fn covered(&self, offset: usize) -> [&[u8]; 3] {
        [&self.buf[..2], &self.buf[2..4], &self.buf[4..offset]]
    }

    /// Writes an attribute header and padding, updates the message length and returns the
    /// value's bytes for the caller to fill.
    fn reserve(&mut self, kind: AttributeType, value_len: usize) -> Result<&mut [u8], EncodeError> {
        let value_len_field = u16::try_from(value_len).map_err(|_| EncodeError::ValueTooLong)?;
        let padded = (value_len + 3) & !3;
        let end = self.len + 4 + padded;
        let message_len = u16::try_from(end - HEADER_LEN).map_err(|_| EncodeError::ValueTooLong)?;
        let attribute = self
            .buf
            .get_mut(self.len..end)
            .ok_or(EncodeError::BufferTooSmall)?;
        attribute[..2].copy_from_slice(&kind.0.to_be_bytes());
        attribute[2..4].copy_from_slice(&value_len_field.to_be_bytes());
        attribute[4 + value_len..].fill(self.padding);
        self.buf[2..4].copy_from_slice(&message_len.to_be_bytes());
        let start = self.len + 4;
        self.len = end;
        Ok(&mut self.buf[start..start + value_len])
    }
}

/// Refuses values that would not parse back, so everything this encoder writes is valid.
fn validate(attribute: &Attribute<'_>) -> Result<(), EncodeError> {
    match attribute {
        Attribute::ErrorCode { code, reason }
        | Attribute::AddressErrorCode { code, reason, .. } => {
            if !code.is_valid() {
                return Err(EncodeError::InvalidErrorCode);
            }
            if reason.len() > MAX_TEXT_LEN {
                return Err(EncodeError::ValueTooLong);
            }
        }
        Attribute::Username(text) if text.len() > MAX_USERNAME_LEN => {
            return Err(EncodeError::ValueTooLong);
        }
        Attribute::Realm(text)
        | Attribute::Nonce(text)
        | Attribute::Software(text)
        | Attribute::AlternateDomain(text)
            if text.len() > MAX_TEXT_LEN =>
        {
            return Err(EncodeError::ValueTooLong);
        }
        Attribute::PasswordAlgorithm(algorithm)
            if algorithm.parameters.len() > usize::from(u16::MAX) =>
        {
            return Err(EncodeError::ValueTooLong);
        }
        _ => {}
    }
    Ok(())
}
