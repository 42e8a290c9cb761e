//! The STUN message header and the checked view over a whole message (RFC 8489 §5, §14).

use crate::attribute::{AttributeType, RawAttribute};

/// The fixed value in bytes 4..8 of every RFC 5389+ STUN message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;

/// Length of the STUN header: type, length, magic cookie and transaction ID.
pub const HEADER_LEN: usize = 20;

const ATTRIBUTE_HEADER_LEN: usize = 4;

/// Why a datagram is not a well-formed STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// An attribute follows FINGERPRINT, which must be the last attribute.
    #[error("attribute after fingerprint")]
    AttributeAfterFingerprint,
    /// An attribute's declared length runs past the end of the message.
    #[error("attribute overruns message")]
    AttributeOverrun,
    /// The FINGERPRINT attribute is not exactly 4 bytes long.
    #[error("bad fingerprint length")]
    BadFingerprintLength,
    /// MESSAGE-INTEGRITY is not 20 bytes, or MESSAGE-INTEGRITY-SHA256 is not 16–32 bytes in
    /// steps of 4.
    #[error("bad message integrity length")]
    BadIntegrityLength,
    /// Bytes 4..8 are not the magic cookie (RFC 3489 messages are not supported).
    #[error("bad magic cookie")]
    BadMagicCookie,
    /// The header's length field disagrees with the datagram's size.
    #[error("length field does not match datagram size")]
    LengthMismatch,
    /// The header's length field is not a multiple of 4.
    #[error("length field not a multiple of 4")]
    LengthNotAligned,
    /// The two most significant bits of the message are not zero.
    #[error("not a stun message")]
    NotStun,
    /// Fewer than 20 bytes: not even a header.
    #[error("message shorter than the stun header")]
    TooShort,
}

/// The 12-bit method of a STUN message.
///
/// Methods this relay does not know are kept as [`Method::Other`] so the relay can still answer
/// them with 400 (Bad Request) using the right transaction ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Allocate,
    Binding,
    ChannelBind,
    CreatePermission,
    Data,
    /// A method not defined by RFC 8489 or RFC 8656; the value is below 0x1000.
    Other(u16),
    Refresh,
    Send,
}

impl Method {
    /// The method's number (12 bits).
    #[must_use]
    pub const fn number(self) -> u16 {
        match self {
            Self::Binding => 0x001,
            Self::Allocate => 0x003,
            Self::Refresh => 0x004,
            Self::Send => 0x006,
            Self::Data => 0x007,
            Self::CreatePermission => 0x008,
            Self::ChannelBind => 0x009,
            Self::Other(number) => number & 0x0FFF,
        }
    }

    /// The method with the given number; unknown numbers become [`Method::Other`].
    #[must_use]
    pub const fn from_number(number: u16) -> Self {
        match number & 0x0FFF {
            0x001 => Self::Binding,
            0x003 => Self::Allocate,
            0x004 => Self::Refresh,
            0x006 => Self::Send,
            0x007 => Self::Data,
            0x008 => Self::CreatePermission,
            0x009 => Self::ChannelBind,
            other => Self::Other(other),
        }
    }
}

/// The class of a STUN message (RFC 8489 §5): two bits, all four values defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    ErrorResponse,
    Indication,
    Request,
    SuccessResponse,
}

impl Class {
    const fn bits(self) -> u16 {
        match self {
            Self::Request => 0b00,
            Self::Indication => 0b01,
            Self::SuccessResponse => 0b10,
            Self::ErrorResponse => 0b11,
        }
    }

    const fn from_bits(bits: u16) -> Self {
        match bits & 0b11 {
            0b00 => Self::Request,
            0b01 => Self::Indication,
            0b10 => Self::SuccessResponse,
            _ => Self::ErrorResponse,
        }
    }
}

/// Method and class, interleaved into the 14-bit message type field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageType {
    pub method: Method,
    pub class: Class,
}

impl MessageType {
    #[must_use]
    pub const fn new(method: Method, class: Class) -> Self {
        Self { method, class }
    }

    /// The wire encoding: method bits M0–M11 with class bits C0 and C1 wedged in at bit 4 and 8.
    #[must_use]
    pub const fn to_u16(self) -> u16 {
        let m = self.method.number();
        let c = self.class.bits();
        (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
    }

    /// Decodes the 14 low bits of a message type; the two top bits are ignored (they are checked
    /// to be zero by [`Message::parse`]).
    #[must_use]
    pub const fn from_u16(value: u16) -> Self {
        let method = (value & 0x000F) | ((value >> 1) & 0x0070) | ((value >> 2) & 0x0F80);
        let class = ((value >> 4) & 1) | ((value >> 7) & 2);
        Self {
            method: Method::from_number(method),
            class: Class::from_bits(class),
        }
    }
}

/// The 96-bit transaction ID that pairs a response with its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionId(pub [u8; 12]);

impl TransactionId {
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }
}

/// Where the attributes that carry integrity sit inside a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Trailers {
    /// Offset of the MESSAGE-INTEGRITY attribute header that counts.
    integrity: Option<usize>,
    /// Offset of the MESSAGE-INTEGRITY-SHA256 attribute header that counts.
    integrity_sha256: Option<usize>,
    /// Offset of the FINGERPRINT attribute header.
    fingerprint: Option<usize>,
}

/// A checked view over one STUN message.
///
/// [`Message::parse`] validates the header and walks the attribute list once, so the accessors
/// never fail on framing and never panic. Attributes placed after MESSAGE-INTEGRITY (other than
/// MESSAGE-INTEGRITY-SHA256 and FINGERPRINT) or after MESSAGE-INTEGRITY-SHA256 (other than
/// FINGERPRINT) are skipped by [`Message::attributes`], as RFC 8489 §14.5 and §14.6 require:
/// they are not covered by the integrity check, so trusting them would let anyone on the path
/// append to an authenticated request.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    bytes: &'a [u8],
    trailers: Trailers,
}

impl<'a> Message<'a> {
    /// Validates `datagram` as exactly one STUN message.
    ///
    /// # Errors
    /// A [`DecodeError`] naming the first framing rule the datagram breaks.
    pub fn parse(datagram: &'a [u8]) -> Result<Self, DecodeError> {
        let header = datagram
            .first_chunk::<HEADER_LEN>()
            .ok_or(DecodeError::TooShort)?;
        if header[0] & 0xC0 != 0 {
            return Err(DecodeError::NotStun);
        }
        if u32::from_be_bytes([header[4], header[5], header[6], header[7]]) != MAGIC_COOKIE {
            return Err(DecodeError::BadMagicCookie);
        }
        let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if !length.is_multiple_of(4) {
            return Err(DecodeError::LengthNotAligned);
        }
        if HEADER_LEN + length != datagram.len() {
            return Err(DecodeError::LengthMismatch);
        }
        let trailers = scan_attributes(datagram)?;
        Ok(Self {
            bytes: datagram,
            trailers,
        })
    }

    /// The bytes of the whole message.
    #[must_use]
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    #[must_use]
    pub fn message_type(&self) -> MessageType {
        MessageType::from_u16(u16::from_be_bytes([self.bytes[0], self.bytes[1]]))
    }

    #[must_use]
    pub fn method(&self) -> Method {
        self.message_type().method
    }

    #[must_use]
    pub fn class(&self) -> Class {
        self.message_type().class
    }

    #[must_use]
    pub fn transaction_id(&self) -> TransactionId {
        let mut id = [0; 12];
        id.copy_from_slice(&self.bytes[8..HEADER_LEN]);
        TransactionId(id)
    }

    /// The attributes that count, in wire order (see the type's documentation).
    #[must_use]
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            bytes: self.bytes,
            offset: HEADER_LEN,
            phase: Phase::Open,
        }
    }

    /// The first attribute of type `kind` that counts.
    #[must_use]
    pub fn attribute(&self, kind: AttributeType) -> Option<RawAttribute<'a>> {
        self.attributes().find(|attribute| attribute.kind() == kind)
    }

    /// Whether FINGERPRINT is present (responses then carry one too).
    #[must_use]
    pub const fn has_fingerprint(&self) -> bool {
        self.trailers.fingerprint.is_some()
    }

    /// Whether a MESSAGE-INTEGRITY attribute that counts is present.
    #[must_use]
    pub const fn has_message_integrity(&self) -> bool {
        self.trailers.integrity.is_some()
    }

    /// Whether a MESSAGE-INTEGRITY-SHA256 attribute that counts is present.
    #[must_use]
    pub const fn has_message_integrity_sha256(&self) -> bool {
        self.trailers.integrity_sha256.is_some()
    }

    pub(crate) const fn integrity_offset(&self) -> Option<usize> {
        self.trailers.integrity
    }

    pub(crate) const fn integrity_sha256_offset(&self) -> Option<usize> {
        self.trailers.integrity_sha256
    }

    pub(crate) const fn fingerprint_offset(&self) -> Option<usize> {
        self.trailers.fingerprint
    }
}

/// Which attributes still count while walking a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before any integrity attribute: everything counts.
    Open,
    /// After MESSAGE-INTEGRITY: only MESSAGE-INTEGRITY-SHA256 and FINGERPRINT count.
    AfterIntegrity,
    /// After MESSAGE-INTEGRITY-SHA256: only FINGERPRINT counts.
    AfterIntegritySha256,
}

impl Phase {
    const fn counts(self, kind: AttributeType) -> bool {
        match self {
            Self::Open => true,
            Self::AfterIntegrity => {
                kind.0 == AttributeType::MESSAGE_INTEGRITY_SHA256.0
                    || kind.0 == AttributeType::FINGERPRINT.0
            }
            Self::AfterIntegritySha256 => kind.0 == AttributeType::FINGERPRINT.0,
        }
    }

    const fn after(self, kind: AttributeType) -> Self {
        match kind {
            AttributeType::MESSAGE_INTEGRITY => Self::AfterIntegrity,
            AttributeType::MESSAGE_INTEGRITY_SHA256 => Self::AfterIntegritySha256,
            _ => self,
        }
    }
}

/// Reads the attribute header at `offset`; the caller guarantees 4 bytes are there.
fn attribute_header(bytes: &[u8], offset: usize) -> Option<(AttributeType, usize)> {
    let header = bytes.get(offset..offset + ATTRIBUTE_HEADER_LEN)?;
    let kind = AttributeType(u16::from_be_bytes([header[0], header[1]]));
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    Some((kind, length))
}

const fn padded(length: usize) -> usize {
    (length + 3) & !3
}

fn scan_attributes(bytes: &[u8]) -> Result<Trailers, DecodeError> {
    let mut trailers = Trailers::default();
    let mut phase = Phase::Open;
    let mut offset = HEADER_LEN;
    while offset < bytes.len() {
        // The length field is a multiple of 4, so at least one attribute header fits here.
        let (kind, length) =
            attribute_header(bytes, offset).ok_or(DecodeError::AttributeOverrun)?;
        let next = offset + ATTRIBUTE_HEADER_LEN + padded(length);
        if next > bytes.len() {
            return Err(DecodeError::AttributeOverrun);
        }
        if trailers.fingerprint.is_some() {
            return Err(DecodeError::AttributeAfterFingerprint);
        }
        if phase.counts(kind) {
            match kind {
                AttributeType::MESSAGE_INTEGRITY => {
                    if length != 20 {
                        return Err(DecodeError::BadIntegrityLength);
                    }
                    trailers.integrity = Some(offset);
                }
                AttributeType::MESSAGE_INTEGRITY_SHA256 => {
                    if !(16..=32).contains(&length) || !length.is_multiple_of(4) {
                        return Err(DecodeError::BadIntegrityLength);
                    }
                    trailers.integrity_sha256 = Some(offset);
                }
                AttributeType::FINGERPRINT => {
                    if length != 4 {
                        return Err(DecodeError::BadFingerprintLength);
                    }
                    trailers.fingerprint = Some(offset);
                }
                _ => {}
            }
            phase = phase.after(kind);
        }
        offset = next;
    }
    Ok(trailers)
}

/// Iterator over the attributes of a [`Message`] that count.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    bytes: &'a [u8],
    offset: usize,
    phase: Phase,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = RawAttribute<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (kind, length) = attribute_header(self.bytes, self.offset)?;
            let value_start = self.offset + ATTRIBUTE_HEADER_LEN;
            let value = self.bytes.get(value_start..value_start + length)?;
            self.offset = value_start + padded(length);
            if self.phase.counts(kind) {
                self.phase = self.phase.after(kind);
                return Some(RawAttribute::new(kind, value));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(message_type: u16, length: u16) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&message_type.to_be_bytes());
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        bytes.extend_from_slice(&[7; 12]);
        bytes
    }

    fn with_attribute(mut bytes: Vec<u8>, kind: u16, value: &[u8]) -> Vec<u8> {
        bytes.extend_from_slice(&kind.to_be_bytes());
        bytes.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(value);
        bytes.resize(padded(bytes.len()), 0);
        let length = u16::try_from(bytes.len() - HEADER_LEN).unwrap();
        bytes[2..4].copy_from_slice(&length.to_be_bytes());
        bytes
    }

    #[test]
    fn message_type_round_trips_for_every_method_and_class() {
        for number in 0..0x1000 {
            for class in [
                Class::Request,
                Class::Indication,
                Class::SuccessResponse,
                Class::ErrorResponse,
            ] {
                let message_type = MessageType::new(Method::from_number(number), class);
                let wire = message_type.to_u16();
                assert_eq!(wire & 0xC000, 0);
                assert_eq!(MessageType::from_u16(wire), message_type);
            }
        }
    }

    #[test]
    fn well_known_message_types_have_their_rfc_values() {
        let cases = [
            (Method::Binding, Class::Request, 0x0001),
            (Method::Binding, Class::SuccessResponse, 0x0101),
            (Method::Binding, Class::ErrorResponse, 0x0111),
            (Method::Allocate, Class::Request, 0x0003),
            (Method::Allocate, Class::ErrorResponse, 0x0113),
            (Method::Send, Class::Indication, 0x0016),
            (Method::Data, Class::Indication, 0x0017),
            (Method::ChannelBind, Class::SuccessResponse, 0x0109),
        ];
        for (method, class, wire) in cases {
            assert_eq!(MessageType::new(method, class).to_u16(), wire);
        }
    }

    #[test]
    fn datagram_shorter_than_a_header_is_too_short() {
        assert_eq!(Message::parse(&[0; 19]).unwrap_err(), DecodeError::TooShort);
        assert_eq!(Message::parse(&[]).unwrap_err(), DecodeError::TooShort);
    }

    #[test]
    fn top_bits_set_is_not_stun() {
        let mut bytes = header(0x0001, 0);
        bytes[0] = 0x40;
        assert_eq!(Message::parse(&bytes).unwrap_err(), DecodeError::NotStun);
    }

    #[test]
    fn wrong_cookie_is_rejected() {
        let mut bytes = header(0x0001, 0);
        bytes[4] = 0;
        assert_eq!(
            Message::parse(&bytes).unwrap_err(),
            DecodeError::BadMagicCookie
        );
    }

    #[test]
    fn unaligned_length_is_rejected() {
        let mut bytes = header(0x0001, 2);
        bytes.extend_from_slice(&[0, 0]);
        assert_eq!(
            Message::parse(&bytes).unwrap_err(),
            DecodeError::LengthNotAligned
        );
    }

    #[test]
    fn length_disagreeing_with_datagram_is_rejected() {
        let bytes = header(0x0001, 4);
        assert_eq!(
            Message::parse(&bytes).unwrap_err(),
            DecodeError::LengthMismatch
        );
        let mut bytes = header(0x0001, 0);
        bytes.extend_from_slice(&[0; 4]);
        assert_eq!(
            Message::parse(&bytes).unwrap_err(),
            DecodeError::LengthMismatch
        );
    }

    #[test]
    fn attribute_running_past_the_end_is_rejected() {
        let mut bytes = header(0x0001, 8);
        bytes.extend_from_slice(&[0x00, 0x06, 0x00, 0x05, b'a', b'b', b'c', b'd']);
        assert_eq!(
            Message::parse(&bytes).unwrap_err(),
            DecodeError::AttributeOverrun
        );
    }

    #[test]
    fn integrity_of_the_wrong_length_is_rejected() {
        let bytes = with_attribute(header(0x0001, 0), 0x0008, &[0; 16]);
        assert_eq!(
            Message::parse(&bytes).unwrap_err(),
            DecodeError::BadIntegrityLength
        );
        let bytes = with_attribute(header(0x0001, 0), 0x001C, &[0; 12]);
        assert_eq!(
            Message::parse(&bytes).unwrap_err(),
            DecodeError::BadIntegrityLength
        );
        let bytes = with_attribute(header(0x0001, 0), 0x001C, &[0; 36]);
        assert_eq!(
            Message::parse(&bytes).unwrap_err(),
            DecodeError::BadIntegrityLength
        );
        let bytes = with_attribute(header(0x0001, 0), 0x001C, &[0; 18]);
        assert_eq!(
            Message::parse(&bytes).unwrap_err(),
            DecodeError::BadIntegrityLength
        );
    }

    #[test]
    fn fingerprint_of_the_wrong_length_is_rejected() {
        let bytes = with_attribute(header(0x0001, 0), 0x8028, &[0; 8]);
        assert_eq!(
            Message::parse(&bytes).unwrap_err(),
            DecodeError::BadFingerprintLength
        );
    }

    #[test]
    fn attribute_after_fingerprint_is_rejected() {
        let bytes = with_attribute(header(0x0001, 0), 0x8028, &[0; 4]);
        let bytes = with_attribute(bytes, 0x8022, b"late");
        assert_eq!(
            Message::parse(&bytes).unwrap_err(),
            DecodeError::AttributeAfterFingerprint
        );
    }

    #[test]
    fn attributes_after_message_integrity_are_ignored() {
        let bytes = with_attribute(header(0x0001, 0), 0x0006, b"user");
        let bytes = with_attribute(bytes, 0x0008, &[1; 20]);
        let bytes = with_attribute(bytes, 0x0014, b"appended realm");
        let bytes = with_attribute(bytes, 0x001C, &[2; 32]);
        let bytes = with_attribute(bytes, 0x0006, b"second user");
        let bytes = with_attribute(bytes, 0x8028, &[3; 4]);
        let message = Message::parse(&bytes).unwrap();
        let kinds: Vec<u16> = message.attributes().map(|a| a.kind().0).collect();
        assert_eq!(kinds, [0x0006, 0x0008, 0x001C, 0x8028]);
        assert!(message.attribute(AttributeType::REALM).is_none());
        assert_eq!(
            message.attribute(AttributeType::USERNAME).unwrap().value(),
            b"user"
        );
    }

    #[test]
    fn message_integrity_after_sha256_integrity_is_ignored() {
        let bytes = with_attribute(header(0x0001, 0), 0x001C, &[2; 32]);
        let bytes = with_attribute(bytes, 0x0008, &[1; 7]);
        let message = Message::parse(&bytes).unwrap();
        assert!(!message.has_message_integrity());
        assert!(message.has_message_integrity_sha256());
        assert_eq!(message.attributes().count(), 1);
    }

    #[test]
    fn padding_is_skipped_between_attributes() {
        let bytes = with_attribute(header(0x0001, 0), 0x0006, b"abcde");
        let bytes = with_attribute(bytes, 0x0014, b"realm");
        let message = Message::parse(&bytes).unwrap();
        let values: Vec<&[u8]> = message.attributes().map(|a| a.value()).collect();
        assert_eq!(values, [&b"abcde"[..], &b"realm"[..]]);
    }
}
