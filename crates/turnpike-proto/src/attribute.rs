//! STUN and TURN attributes (RFC 8489 §14, RFC 8656 §18, RFC 6156 §4).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error_code::ErrorCode;
use crate::message::{MAGIC_COOKIE, TransactionId};

/// The 16-bit type of an attribute.
///
/// Kept as an open newtype rather than an enum: unknown types must survive parsing so the relay
/// can answer 420 (Unknown Attribute) for comprehension-required ones and skip the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttributeType(pub u16);

impl AttributeType {
    pub const MAPPED_ADDRESS: Self = Self(0x0001);
    pub const USERNAME: Self = Self(0x0006);
    pub const MESSAGE_INTEGRITY: Self = Self(0x0008);
    pub const ERROR_CODE: Self = Self(0x0009);
    pub const UNKNOWN_ATTRIBUTES: Self = Self(0x000A);
    pub const CHANNEL_NUMBER: Self = Self(0x000C);
    pub const LIFETIME: Self = Self(0x000D);
    pub const XOR_PEER_ADDRESS: Self = Self(0x0012);
    pub const DATA: Self = Self(0x0013);
    pub const REALM: Self = Self(0x0014);
    pub const NONCE: Self = Self(0x0015);
    pub const XOR_RELAYED_ADDRESS: Self = Self(0x0016);
    pub const REQUESTED_ADDRESS_FAMILY: Self = Self(0x0017);
    pub const EVEN_PORT: Self = Self(0x0018);
    pub const REQUESTED_TRANSPORT: Self = Self(0x0019);
    pub const DONT_FRAGMENT: Self = Self(0x001A);
    pub const MESSAGE_INTEGRITY_SHA256: Self = Self(0x001C);
    pub const PASSWORD_ALGORITHM: Self = Self(0x001D);
    pub const USERHASH: Self = Self(0x001E);
    pub const XOR_MAPPED_ADDRESS: Self = Self(0x0020);
    pub const RESERVATION_TOKEN: Self = Self(0x0022);
    pub const ADDITIONAL_ADDRESS_FAMILY: Self = Self(0x8000);
    pub const ADDRESS_ERROR_CODE: Self = Self(0x8001);
    pub const PASSWORD_ALGORITHMS: Self = Self(0x8002);
    pub const ALTERNATE_DOMAIN: Self = Self(0x8003);
    pub const ICMP: Self = Self(0x8004);
    pub const SOFTWARE: Self = Self(0x8022);
    pub const ALTERNATE_SERVER: Self = Self(0x8023);
    pub const FINGERPRINT: Self = Self(0x8028);

    /// Types below 0x8000 must be understood; a request carrying an unknown one is refused with
    /// 420 (RFC 8489 §14).
    #[must_use]
    pub const fn is_comprehension_required(self) -> bool {
        self.0 < 0x8000
    }

    /// Whether this codec decodes the type into a typed [`Attribute`].
    #[must_use]
    pub const fn is_known(self) -> bool {
        matches!(
            self,
            Self::MAPPED_ADDRESS
                | Self::USERNAME
                | Self::MESSAGE_INTEGRITY
                | Self::ERROR_CODE
                | Self::UNKNOWN_ATTRIBUTES
                | Self::CHANNEL_NUMBER
                | Self::LIFETIME
                | Self::XOR_PEER_ADDRESS
                | Self::DATA
                | Self::REALM
                | Self::NONCE
                | Self::XOR_RELAYED_ADDRESS
                | Self::REQUESTED_ADDRESS_FAMILY
                | Self::EVEN_PORT
                | Self::REQUESTED_TRANSPORT
                | Self::DONT_FRAGMENT
                | Self::MESSAGE_INTEGRITY_SHA256
                | Self::PASSWORD_ALGORITHM
                | Self::USERHASH
                | Self::XOR_MAPPED_ADDRESS
                | Self::RESERVATION_TOKEN
                | Self::ADDITIONAL_ADDRESS_FAMILY
                | Self::ADDRESS_ERROR_CODE
                | Self::PASSWORD_ALGORITHMS
                | Self::ALTERNATE_DOMAIN
                | Self::ICMP
                | Self::SOFTWARE
                | Self::ALTERNATE_SERVER
                | Self::FINGERPRINT
        )
    }
}

/// Why an attribute's value cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttributeError {
    /// The error class is outside 3–6 or the number above 99.
    #[error("error code out of range")]
    BadErrorCode,
    /// The value has a length this attribute never has.
    #[error("attribute value has the wrong length")]
    BadLength,
    /// A text attribute is not valid UTF-8.
    #[error("text attribute is not utf-8")]
    NotUtf8,
    /// A text attribute is longer than RFC 8489 allows.
    #[error("text attribute too long")]
    TooLong,
    /// The address family byte is neither 0x01 (IPv4) nor 0x02 (IPv6).
    #[error("unknown address family")]
    UnknownAddressFamily,
}

/// An IP address family as TURN encodes it (RFC 6156).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressFamily {
    V4,
    V6,
}

impl AddressFamily {
    #[must_use]
    pub const fn to_u8(self) -> u8 {
        match self {
            Self::V4 => 0x01,
            Self::V6 => 0x02,
        }
    }

    /// # Errors
    /// [`AttributeError::UnknownAddressFamily`] for anything but 0x01 and 0x02.
    pub const fn from_u8(value: u8) -> Result<Self, AttributeError> {
        match value {
            0x01 => Ok(Self::V4),
            0x02 => Ok(Self::V6),
            _ => Err(AttributeError::UnknownAddressFamily),
        }
    }

    #[must_use]
    pub const fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }
}

/// A password algorithm (RFC 8489 §18.5): 0x0001 MD5, 0x0002 SHA-256, with opaque parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordAlgorithm<'a> {
    pub algorithm: u16,
    pub parameters: &'a [u8],
}

impl PasswordAlgorithm<'_> {
    pub const MD5: u16 = 0x0001;
    pub const SHA256: u16 = 0x0002;
}

/// The list carried by PASSWORD-ALGORITHMS, validated at decode time and iterated lazily.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordAlgorithms<'a> {
    value: &'a [u8],
}

impl<'a> PasswordAlgorithms<'a> {
    /// Wraps an encoded list; see [`Attribute::decode`] for validation.
    fn validated(value: &'a [u8]) -> Result<Self, AttributeError> {
        let mut rest = value;
        while !rest.is_empty() {
            let (_, tail) = split_password_algorithm(rest)?;
            rest = tail;
        }
        Ok(Self { value })
    }

    /// The raw encoded list, as it appears on the wire.
    #[must_use]
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.value
    }

    #[must_use]
    pub fn iter(&self) -> PasswordAlgorithmsIter<'a> {
        PasswordAlgorithmsIter { rest: self.value }
    }
}

/// Iterator over a [`PasswordAlgorithms`] list.
#[derive(Debug, Clone)]
pub struct PasswordAlgorithmsIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for PasswordAlgorithmsIter<'a> {
    type Item = PasswordAlgorithm<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let (algorithm, tail) = split_password_algorithm(self.rest).ok()?;
        self.rest = tail;
        Some(algorithm)
    }
}

fn split_password_algorithm(
    bytes: &[u8],
) -> Result<(PasswordAlgorithm<'_>, &[u8]), AttributeError> {
    let (header, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or(AttributeError::BadLength)?;
    let algorithm = u16::from_be_bytes([header[0], header[1]]);
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let padded = (length + 3) & !3;
    if rest.len() < padded {
        return Err(AttributeError::BadLength);
    }
    let parameters = &rest[..length];
    Ok((
        PasswordAlgorithm {
            algorithm,
            parameters,
        },
        &rest[padded..],
    ))
}

/// The attribute types listed in UNKNOWN-ATTRIBUTES.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownAttributes<'a> {
    value: &'a [u8],
}

impl<'a> UnknownAttributes<'a> {
    /// The raw encoded list, as it appears on the wire.
    #[must_use]
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.value
    }

    pub fn iter(&self) -> impl Iterator<Item = AttributeType> + 'a {
        self.value
            .chunks_exact(2)
            .map(|pair| AttributeType(u16::from_be_bytes([pair[0], pair[1]])))
    }
}

/// One attribute as it appears on the wire: its type and its value without padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    kind: AttributeType,
    value: &'a [u8],
}

impl<'a> RawAttribute<'a> {
    #[must_use]
    pub const fn new(kind: AttributeType, value: &'a [u8]) -> Self {
        Self { kind, value }
    }

    #[must_use]
    pub const fn kind(&self) -> AttributeType {
        self.kind
    }

    #[must_use]
    pub const fn value(&self) -> &'a [u8] {
        self.value
    }
}

/// Longest USERNAME a sender may write: RFC 8489 §14.3 wants fewer than 509 bytes.
pub(crate) const MAX_USERNAME_LEN: usize = 508;
/// Longest REALM, NONCE, SOFTWARE, ALTERNATE-DOMAIN and reason phrase: 763 bytes (128
/// characters of up to 6 bytes each, as RFC 8489 counts them).
pub(crate) const MAX_TEXT_LEN: usize = 763;

/// A decoded attribute, borrowing from the message it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Attribute<'a> {
    /// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11): ask for a second relayed address.
    AdditionalAddressFamily(AddressFamily),
    /// ADDRESS-ERROR-CODE (RFC 8656 §18.13): why one family of a dual allocation failed.
    AddressErrorCode {
        family: AddressFamily,
        code: ErrorCode,
        reason: &'a str,
    },
    /// ALTERNATE-DOMAIN (RFC 8489 §14.16).
    AlternateDomain(&'a str),
    /// ALTERNATE-SERVER (RFC 8489 §14.15), encoded like MAPPED-ADDRESS.
    AlternateServer(SocketAddr),
    /// CHANNEL-NUMBER (RFC 8656 §18.1): the number as sent; range checks belong to the caller.
    ChannelNumber(u16),
    /// DATA (RFC 8656 §18.4).
    Data(&'a [u8]),
    /// DONT-FRAGMENT (RFC 8656 §18.8).
    DontFragment,
    /// ERROR-CODE (RFC 8489 §14.8); the reason phrase may be empty.
    ErrorCode { code: ErrorCode, reason: &'a str },
    /// EVEN-PORT (RFC 8656 §18.6), with its R (reserve next port) bit.
    EvenPort { reserve_next: bool },
    /// FINGERPRINT (RFC 8489 §14.7), the value as sent.
    Fingerprint(u32),
    /// ICMP (RFC 8656 §18.12).
    Icmp {
        icmp_type: u8,
        icmp_code: u8,
        error_data: u32,
    },
    /// LIFETIME (RFC 8656 §18.2), in seconds.
    Lifetime(u32),
    /// MAPPED-ADDRESS (RFC 8489 §14.1).
    MappedAddress(SocketAddr),
    /// MESSAGE-INTEGRITY (RFC 8489 §14.5): the HMAC-SHA1 as sent.
    MessageIntegrity(&'a [u8; 20]),
    /// MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6): 16 to 32 bytes.
    MessageIntegritySha256(&'a [u8]),
    /// NONCE (RFC 8489 §14.10).
    Nonce(&'a str),
    /// PASSWORD-ALGORITHM (RFC 8489 §14.12).
    PasswordAlgorithm(PasswordAlgorithm<'a>),
    /// PASSWORD-ALGORITHMS (RFC 8489 §14.11).
    PasswordAlgorithms(PasswordAlgorithms<'a>),
    /// REALM (RFC 8489 §14.9).
    Realm(&'a str),
    /// REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.10).
    RequestedAddressFamily(AddressFamily),
    /// REQUESTED-TRANSPORT (RFC 8656 §18.7): the IP protocol number (17 for UDP).
    RequestedTransport(u8),
    /// RESERVATION-TOKEN (RFC 8656 §18.9).
    ReservationToken([u8; 8]),
    /// SOFTWARE (RFC 8489 §14.14).
    Software(&'a str),
    /// UNKNOWN-ATTRIBUTES (RFC 8489 §14.13).
    UnknownAttributes(UnknownAttributes<'a>),
    /// An attribute this codec does not model, kept as it was sent.
    Unknown(RawAttribute<'a>),
    /// USERHASH (RFC 8489 §14.4).
    Userhash(&'a [u8; 32]),
    /// USERNAME (RFC 8489 §14.3).
    Username(&'a str),
    /// XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
    XorMappedAddress(SocketAddr),
    /// XOR-PEER-ADDRESS (RFC 8656 §18.3); may appear several times.
    XorPeerAddress(SocketAddr),
    /// XOR-RELAYED-ADDRESS (RFC 8656 §18.5); appears twice in a dual-stack allocation.
    XorRelayedAddress(SocketAddr),
}

impl<'a> Attribute<'a> {
    /// Decodes `raw`; the transaction ID unmasks the XOR-encoded IPv6 addresses.
    ///
    /// # Errors
    /// An [`AttributeError`] when the value does not fit the attribute's format.
    pub fn decode(
        raw: RawAttribute<'a>,
        transaction_id: &TransactionId,
    ) -> Result<Self, AttributeError> {
        let value = raw.value;
        let attribute = match raw.kind {
            AttributeType::MAPPED_ADDRESS => Self::MappedAddress(decode_address(value)?),
            AttributeType::ALTERNATE_SERVER => Self::AlternateServer(decode_address(value)?),
            AttributeType::XOR_MAPPED_ADDRESS => {
                Self::XorMappedAddress(decode_xor_address(value, transaction_id)?)
            }
            AttributeType::XOR_PEER_ADDRESS => {
                Self::XorPeerAddress(decode_xor_address(value, transaction_id)?)
            }
            AttributeType::XOR_RELAYED_ADDRESS => {
                Self::XorRelayedAddress(decode_xor_address(value, transaction_id)?)
            }
            // Receivers must take up to 763 bytes (RFC 8489 §14.3), more than senders may send.
            AttributeType::USERNAME => Self::Username(decode_text(value, MAX_TEXT_LEN)?),
            AttributeType::REALM => Self::Realm(decode_text(value, MAX_TEXT_LEN)?),
            AttributeType::NONCE => Self::Nonce(decode_text(value, MAX_TEXT_LEN)?),
            AttributeType::SOFTWARE => Self::Software(decode_text(value, MAX_TEXT_LEN)?),
            AttributeType::ALTERNATE_DOMAIN => {
                Self::AlternateDomain(decode_text(value, MAX_TEXT_LEN)?)
            }
            AttributeType::USERHASH => {
                Self::Userhash(value.try_into().map_err(|_| AttributeError::BadLength)?)
            }
            AttributeType::MESSAGE_INTEGRITY => {
                Self::MessageIntegrity(value.try_into().map_err(|_| AttributeError::BadLength)?)
            }
            AttributeType::MESSAGE_INTEGRITY_SHA256 => {
                if !(16..=32).contains(&value.len()) || !value.len().is_multiple_of(4) {
                    return Err(AttributeError::BadLength);
                }
                Self::MessageIntegritySha256(value)
            }
            AttributeType::FINGERPRINT => Self::Fingerprint(u32::from_be_bytes(fixed(value)?)),
            AttributeType::ERROR_CODE => {
                let (header, reason) = value
                    .split_first_chunk::<4>()
                    .ok_or(AttributeError::BadLength)?;
                let code = decode_error_code(header[2], header[3])?;
                Self::ErrorCode {
                    code,
                    reason: decode_text(reason, MAX_TEXT_LEN)?,
                }
            }
            AttributeType::ADDRESS_ERROR_CODE => {
                let (header, reason) = value
                    .split_first_chunk::<4>()
                    .ok_or(AttributeError::BadLength)?;
                let family = AddressFamily::from_u8(header[0])?;
                let code = decode_error_code(header[2], header[3])?;
                Self::AddressErrorCode {
                    family,
                    code,
                    reason: decode_text(reason, MAX_TEXT_LEN)?,
                }
            }
            AttributeType::PASSWORD_ALGORITHMS => {
                Self::PasswordAlgorithms(PasswordAlgorithms::validated(value)?)
            }
            AttributeType::PASSWORD_ALGORITHM => {
                let (algorithm, rest) = split_password_algorithm(value)?;
                if !rest.is_empty() {
                    return Err(AttributeError::BadLength);
                }
                Self::PasswordAlgorithm(algorithm)
            }
            AttributeType::UNKNOWN_ATTRIBUTES => {
                if !value.len().is_multiple_of(2) {
                    return Err(AttributeError::BadLength);
                }
                Self::UnknownAttributes(UnknownAttributes { value })
            }
            AttributeType::CHANNEL_NUMBER => {
                let [high, low, _, _] = fixed::<4>(value)?;
                Self::ChannelNumber(u16::from_be_bytes([high, low]))
            }
            AttributeType::LIFETIME => Self::Lifetime(u32::from_be_bytes(fixed(value)?)),
            AttributeType::DATA => Self::Data(value),
            AttributeType::REQUESTED_ADDRESS_FAMILY => {
                let [family, ..] = fixed::<4>(value)?;
                Self::RequestedAddressFamily(AddressFamily::from_u8(family)?)
            }
            AttributeType::ADDITIONAL_ADDRESS_FAMILY => {
                let [family, ..] = fixed::<4>(value)?;
                Self::AdditionalAddressFamily(AddressFamily::from_u8(family)?)
            }
            AttributeType::EVEN_PORT => {
                let [flags] = fixed::<1>(value)?;
                Self::EvenPort {
                    reserve_next: flags & 0x80 != 0,
                }
            }
            AttributeType::REQUESTED_TRANSPORT => {
                let [protocol, ..] = fixed::<4>(value)?;
                Self::RequestedTransport(protocol)
            }
            AttributeType::DONT_FRAGMENT => {
                if !value.is_empty() {
                    return Err(AttributeError::BadLength);
                }
                Self::DontFragment
            }
            AttributeType::RESERVATION_TOKEN => Self::ReservationToken(fixed(value)?),
            AttributeType::ICMP => {
                let [_, _, icmp_type, icmp_code, d0, d1, d2, d3] = fixed::<8>(value)?;
                Self::Icmp {
                    icmp_type,
                    icmp_code,
                    error_data: u32::from_be_bytes([d0, d1, d2, d3]),
                }
            }
            _ => Self::Unknown(raw),
        };
        Ok(attribute)
    }

    /// The attribute's type code.
    #[must_use]
    pub const fn kind(&self) -> AttributeType {
        match self {
            Self::AdditionalAddressFamily(_) => AttributeType::ADDITIONAL_ADDRESS_FAMILY,
            Self::AddressErrorCode { .. } => AttributeType::ADDRESS_ERROR_CODE,
            Self::AlternateDomain(_) => AttributeType::ALTERNATE_DOMAIN,
            Self::AlternateServer(_) => AttributeType::ALTERNATE_SERVER,
            Self::ChannelNumber(_) => AttributeType::CHANNEL_NUMBER,
            Self::Data(_) => AttributeType::DATA,
            Self::DontFragment => AttributeType::DONT_FRAGMENT,
            Self::ErrorCode { .. } => AttributeType::ERROR_CODE,
            Self::EvenPort { .. } => AttributeType::EVEN_PORT,
            Self::Fingerprint(_) => AttributeType::FINGERPRINT,
            Self::Icmp { .. } => AttributeType::ICMP,
            Self::Lifetime(_) => AttributeType::LIFETIME,
            Self::MappedAddress(_) => AttributeType::MAPPED_ADDRESS,
            Self::MessageIntegrity(_) => AttributeType::MESSAGE_INTEGRITY,
            Self::MessageIntegritySha256(_) => AttributeType::MESSAGE_INTEGRITY_SHA256,
            Self::Nonce(_) => AttributeType::NONCE,
            Self::PasswordAlgorithm(_) => AttributeType::PASSWORD_ALGORITHM,
            Self::PasswordAlgorithms(_) => AttributeType::PASSWORD_ALGORITHMS,
            Self::Realm(_) => AttributeType::REALM,
            Self::RequestedAddressFamily(_) => AttributeType::REQUESTED_ADDRESS_FAMILY,
            Self::RequestedTransport(_) => AttributeType::REQUESTED_TRANSPORT,
            Self::ReservationToken(_) => AttributeType::RESERVATION_TOKEN,
            Self::Software(_) => AttributeType::SOFTWARE,
            Self::UnknownAttributes(_) => AttributeType::UNKNOWN_ATTRIBUTES,
            Self::Unknown(raw) => raw.kind,
            Self::Userhash(_) => AttributeType::USERHASH,
            Self::Username(_) => AttributeType::USERNAME,
            Self::XorMappedAddress(_) => AttributeType::XOR_MAPPED_ADDRESS,
            Self::XorPeerAddress(_) => AttributeType::XOR_PEER_ADDRESS,
            Self::XorRelayedAddress(_) => AttributeType::XOR_RELAYED_ADDRESS,
        }
    }

    /// Length of the encoded value, without header and padding.
    #[must_use]
    pub fn value_len(&self) -> usize {
        match self {
            Self::MappedAddress(address)
            | Self::AlternateServer(address)
            | Self::XorMappedAddress(address)
            | Self::XorPeerAddress(address)
            | Self::XorRelayedAddress(address) => address_len(address.ip()),
            Self::Username(text)
            | Self::Realm(text)
            | Self::Nonce(text)
            | Self::Software(text)
            | Self::AlternateDomain(text) => text.len(),
            Self::Userhash(_) => 32,
            Self::MessageIntegrity(_) => 20,
            Self::MessageIntegritySha256(mac) => mac.len(),
            Self::Fingerprint(_)
            | Self::ChannelNumber(_)
            | Self::Lifetime(_)
            | Self::RequestedAddressFamily(_)
            | Self::AdditionalAddressFamily(_)
            | Self::RequestedTransport(_) => 4,
            Self::ErrorCode { reason, .. } | Self::AddressErrorCode { reason, .. } => {
                4 + reason.len()
            }
            Self::PasswordAlgorithms(list) => list.value.len(),
            Self::PasswordAlgorithm(algorithm) => 4 + ((algorithm.parameters.len() + 3) & !3),
            Self::UnknownAttributes(list) => list.value.len(),
            Self::Data(data) => data.len(),
            Self::EvenPort { .. } => 1,
            Self::DontFragment => 0,
            Self::ReservationToken(_) | Self::Icmp { .. } => 8,
            Self::Unknown(raw) => raw.value.len(),
        }
    }

    /// Writes the value into `out`, which is exactly [`Attribute::value_len`] bytes long.
    pub(crate) fn write_value(&self, out: &mut [u8], transaction_id: &TransactionId) {
        match self {
            Self::MappedAddress(address) | Self::AlternateServer(address) => {
                write_address(out, *address);
            }
            Self::XorMappedAddress(address)
            | Self::XorPeerAddress(address)
            | Self::XorRelayedAddress(address) => {
                write_address(out, xor_address(*address, transaction_id));
            }
            Self::Username(text)
            | Self::Realm(text)
            | Self::Nonce(text)
            | Self::Software(text)
            | Self::AlternateDomain(text) => out.copy_from_slice(text.as_bytes()),
            Self::Userhash(hash) => out.copy_from_slice(*hash),
            Self::MessageIntegrity(mac) => out.copy_from_slice(*mac),
            Self::MessageIntegritySha256(mac) => out.copy_from_slice(mac),
            Self::Fingerprint(value) | Self::Lifetime(value) => {
                out.copy_from_slice(&value.to_be_bytes());
            }
            Self::ChannelNumber(number) => {
                out[..2].copy_from_slice(&number.to_be_bytes());
                out[2..].fill(0);
            }
            Self::RequestedAddressFamily(family) | Self::AdditionalAddressFamily(family) => {
                out.copy_from_slice(&[family.to_u8(), 0, 0, 0]);
            }
            Self::RequestedTransport(protocol) => out.copy_from_slice(&[*protocol, 0, 0, 0]),
            Self::ErrorCode { code, reason } => {
                write_error_code(&mut out[..4], *code);
                out[4..].copy_from_slice(reason.as_bytes());
            }
            Self::AddressErrorCode {
                family,
                code,
                reason,
            } => {
                write_error_code(&mut out[..4], *code);
                out[0] = family.to_u8();
                out[4..].copy_from_slice(reason.as_bytes());
            }
            Self::PasswordAlgorithms(list) => out.copy_from_slice(list.value),
            Self::PasswordAlgorithm(algorithm) => {
                out[..2].copy_from_slice(&algorithm.algorithm.to_be_bytes());
                let length = u16::try_from(algorithm.parameters.len()).unwrap_or(u16::MAX);
                out[2..4].copy_from_slice(&length.to_be_bytes());
                let (parameters, padding) = out[4..].split_at_mut(algorithm.parameters.len());
                parameters.copy_from_slice(algorithm.parameters);
                padding.fill(0);
            }
            Self::UnknownAttributes(list) => out.copy_from_slice(list.value),
            Self::Data(data) => out.copy_from_slice(data),
            Self::EvenPort { reserve_next } => out[0] = if *reserve_next { 0x80 } else { 0 },
            Self::DontFragment => {}
            Self::ReservationToken(token) => out.copy_from_slice(token),
            Self::Icmp {
                icmp_type,
                icmp_code,
                error_data,
            } => {
                out[..4].copy_from_slice(&[0, 0, *icmp_type, *icmp_code]);
                out[4..].copy_from_slice(&error_data.to_be_bytes());
            }
            Self::Unknown(raw) => out.copy_from_slice(raw.value),
        }
    }

    /// Builds a PASSWORD-ALGORITHMS value from an already encoded list.
    ///
    /// # Errors
    /// [`AttributeError::BadLength`] when `encoded` is not a well-formed list.
    pub fn password_algorithms(encoded: &'a [u8]) -> Result<Self, AttributeError> {
        PasswordAlgorithms::validated(encoded).map(Self::PasswordAlgorithms)
    }

    /// Builds an UNKNOWN-ATTRIBUTES value from big-endian attribute types.
    ///
    /// # Errors
    /// [`AttributeError::BadLength`] when `encoded` has an odd length.
    pub fn unknown_attributes(encoded: &'a [u8]) -> Result<Self, AttributeError> {
        if !encoded.len().is_multiple_of(2) {
            return Err(AttributeError::BadLength);
        }
        Ok(Self::UnknownAttributes(UnknownAttributes {
            value: encoded,
        }))
    }
}

fn fixed<const N: usize>(value: &[u8]) -> Result<[u8; N], AttributeError> {
    value.try_into().map_err(|_| AttributeError::BadLength)
}

fn decode_text(value: &[u8], max_len: usize) -> Result<&str, AttributeError> {
    if value.len() > max_len {
        return Err(AttributeError::TooLong);
    }
    core::str::from_utf8(value).map_err(|_| AttributeError::NotUtf8)
}

fn decode_error_code(class: u8, number: u8) -> Result<ErrorCode, AttributeError> {
    let class = class & 0x07;
    if !(3..=6).contains(&class) || number > 99 {
        return Err(AttributeError::BadErrorCode);
    }
    Ok(ErrorCode(u16::from(class) * 100 + u16::from(number)))
}

fn write_error_code(out: &mut [u8], code: ErrorCode) {
    // `MessageEncoder` only accepts codes in 300..=699, so both parts fit in a byte.
    let class = u8::try_from(code.0 / 100).unwrap_or(0);
    let number = u8::try_from(code.0 % 100).unwrap_or(0);
    out.copy_from_slice(&[0, 0, class, number]);
}

const fn address_len(ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(_) => 8,
        IpAddr::V6(_) => 20,
    }
}

fn decode_address(value: &[u8]) -> Result<SocketAddr, AttributeError> {
    let (header, address) = value
        .split_first_chunk::<4>()
        .ok_or(AttributeError::BadLength)?;
    let port = u16::from_be_bytes([header[2], header[3]]);
    let ip = match AddressFamily::from_u8(header[1])? {
        AddressFamily::V4 => IpAddr::V4(Ipv4Addr::from(fixed::<4>(address)?)),
        AddressFamily::V6 => IpAddr::V6(Ipv6Addr::from(fixed::<16>(address)?)),
    };
    Ok(SocketAddr::new(ip, port))
}

fn decode_xor_address(
    value: &[u8],
    transaction_id: &TransactionId,
) -> Result<SocketAddr, AttributeError> {
    // XOR is its own inverse: unmasking is masking again.
    decode_address(value).map(|address| xor_address(address, transaction_id))
}

fn xor_address(address: SocketAddr, transaction_id: &TransactionId) -> SocketAddr {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = address.port() ^ u16::from_be_bytes([cookie[0], cookie[1]]);
    let ip = match address.ip() {
        IpAddr::V4(ip) => IpAddr::V4(Ipv4Addr::from(ip.to_bits() ^ MAGIC_COOKIE)),
        IpAddr::V6(ip) => {
            let mut mask = [0; 16];
            mask[..4].copy_from_slice(&cookie);
            mask[4..].copy_from_slice(transaction_id.as_bytes());
            IpAddr::V6(Ipv6Addr::from(ip.to_bits() ^ u128::from_be_bytes(mask)))
        }
    };
    SocketAddr::new(ip, port)
}

fn write_address(out: &mut [u8], address: SocketAddr) {
    out[0] = 0;
    out[1] = AddressFamily::of(address.ip()).to_u8();
    out[2..4].copy_from_slice(&address.port().to_be_bytes());
    match address.ip() {
        IpAddr::V4(ip) => out[4..].copy_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out[4..].copy_from_slice(&ip.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: TransactionId = TransactionId([
        0xB7, 0xE7, 0xA7, 0x01, 0xBC, 0x34, 0xD6, 0x86, 0xFA, 0x87, 0xDF, 0xAE,
    ]);

    fn decode(kind: AttributeType, value: &[u8]) -> Result<Attribute<'_>, AttributeError> {
        Attribute::decode(RawAttribute::new(kind, value), &TID)
    }

    #[test]
    fn xor_mapped_ipv4_matches_rfc_5769() {
        let value = [0x00, 0x01, 0xA1, 0x47, 0xE1, 0x12, 0xA6, 0x43];
        assert_eq!(
            decode(AttributeType::XOR_MAPPED_ADDRESS, &value),
            Ok(Attribute::XorMappedAddress(
                "192.0.2.1:32853".parse().unwrap()
            ))
        );
    }

    #[test]
    fn address_with_unknown_family_is_rejected() {
        let value = [0x00, 0x03, 0xA1, 0x47, 0xE1, 0x12, 0xA6, 0x43];
        assert_eq!(
            decode(AttributeType::XOR_PEER_ADDRESS, &value),
            Err(AttributeError::UnknownAddressFamily)
        );
    }

    #[test]
    fn address_with_wrong_length_for_its_family_is_rejected() {
        let value = [0x00, 0x02, 0xA1, 0x47, 0xE1, 0x12, 0xA6, 0x43];
        assert_eq!(
            decode(AttributeType::MAPPED_ADDRESS, &value),
            Err(AttributeError::BadLength)
        );
        assert_eq!(
            decode(AttributeType::MAPPED_ADDRESS, &[0, 1]),
            Err(AttributeError::BadLength)
        );
    }

    #[test]
    fn text_that_is_not_utf8_is_rejected() {
        assert_eq!(
            decode(AttributeType::USERNAME, &[0xFF, 0xFE]),
            Err(AttributeError::NotUtf8)
        );
    }

    #[test]
    fn text_longer_than_allowed_is_rejected() {
        assert_eq!(
            decode(AttributeType::USERNAME, &[b'a'; 764]),
            Err(AttributeError::TooLong)
        );
        assert!(decode(AttributeType::USERNAME, &[b'a'; 763]).is_ok());
        assert_eq!(
            decode(AttributeType::REALM, &[b'a'; 764]),
            Err(AttributeError::TooLong)
        );
    }

    #[test]
    fn error_code_outside_300_to_699_is_rejected() {
        assert_eq!(
            decode(AttributeType::ERROR_CODE, &[0, 0, 2, 0]),
            Err(AttributeError::BadErrorCode)
        );
        assert_eq!(
            decode(AttributeType::ERROR_CODE, &[0, 0, 4, 100]),
            Err(AttributeError::BadErrorCode)
        );
        assert_eq!(
            decode(AttributeType::ERROR_CODE, &[0, 0, 4, 1]),
            Ok(Attribute::ErrorCode {
                code: ErrorCode::UNAUTHORIZED,
                reason: ""
            })
        );
    }

    #[test]
    fn error_code_reason_phrase_is_optional() {
        let mut value = vec![0, 0, 4, 38];
        value.extend_from_slice(b"Stale Nonce");
        assert_eq!(
            decode(AttributeType::ERROR_CODE, &value),
            Ok(Attribute::ErrorCode {
                code: ErrorCode::STALE_NONCE,
                reason: "Stale Nonce"
            })
        );
    }

    #[test]
    fn fixed_size_attributes_reject_other_sizes() {
        for kind in [
            AttributeType::LIFETIME,
            AttributeType::CHANNEL_NUMBER,
            AttributeType::REQUESTED_TRANSPORT,
            AttributeType::REQUESTED_ADDRESS_FAMILY,
            AttributeType::ADDITIONAL_ADDRESS_FAMILY,
            AttributeType::FINGERPRINT,
            AttributeType::RESERVATION_TOKEN,
            AttributeType::ICMP,
            AttributeType::EVEN_PORT,
            AttributeType::USERHASH,
            AttributeType::MESSAGE_INTEGRITY,
        ] {
            assert_eq!(
                decode(kind, &[0; 3]),
                Err(AttributeError::BadLength),
                "{kind:?}"
            );
        }
        assert_eq!(
            decode(AttributeType::DONT_FRAGMENT, &[0]),
            Err(AttributeError::BadLength)
        );
        assert_eq!(
            decode(AttributeType::UNKNOWN_ATTRIBUTES, &[0; 3]),
            Err(AttributeError::BadLength)
        );
        assert_eq!(
            decode(AttributeType::MESSAGE_INTEGRITY_SHA256, &[0; 20 - 2]),
            Err(AttributeError::BadLength)
        );
    }

    #[test]
    fn password_algorithms_with_truncated_parameters_are_rejected() {
        assert_eq!(
            decode(AttributeType::PASSWORD_ALGORITHMS, &[0, 2, 0, 4, 1, 2]),
            Err(AttributeError::BadLength)
        );
        assert_eq!(
            decode(AttributeType::PASSWORD_ALGORITHM, &[0, 2]),
            Err(AttributeError::BadLength)
        );
        assert_eq!(
            decode(AttributeType::PASSWORD_ALGORITHM, &[0, 2, 0, 0, 0, 1, 0, 0]),
            Err(AttributeError::BadLength)
        );
    }

    #[test]
    fn password_algorithms_list_iterates_in_order() {
        let encoded = [0, 2, 0, 0, 0, 1, 0, 0];
        let Ok(Attribute::PasswordAlgorithms(list)) =
            decode(AttributeType::PASSWORD_ALGORITHMS, &encoded)
        else {
            panic!("not decoded");
        };
        let algorithms: Vec<u16> = list.iter().map(|a| a.algorithm).collect();
        assert_eq!(
            algorithms,
            [PasswordAlgorithm::SHA256, PasswordAlgorithm::MD5]
        );
    }

    #[test]
    fn unknown_types_are_kept_raw() {
        let raw = RawAttribute::new(AttributeType(0x0024), &[1, 2, 3, 4]);
        assert_eq!(Attribute::decode(raw, &TID), Ok(Attribute::Unknown(raw)));
        assert!(AttributeType(0x0024).is_comprehension_required());
        assert!(!AttributeType(0x8029).is_comprehension_required());
    }
}
