//! ChannelData messages (RFC 8656 §12.4): a 4-byte header in front of application data.

use crate::encoder::EncodeError;

/// Length of the ChannelData header: channel number and length.
pub const HEADER_LEN: usize = 4;

/// Which channel numbers clients may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ChannelRange {
    /// 0x4000–0x4FFF (RFC 8656 §12): 0x5000–0x7FFF are left to the protocols that share a port
    /// with TURN (RFC 7983).
    #[default]
    Rfc8656,
    /// 0x4000–0x7FFF, as RFC 5766 allowed; some older clients (coturn's among them) still pick
    /// numbers from all of it.
    Rfc5766,
}

impl ChannelRange {
    /// The highest channel number of the range.
    #[must_use]
    pub const fn max(self) -> u16 {
        match self {
            Self::Rfc8656 => 0x4FFF,
            Self::Rfc5766 => 0x7FFF,
        }
    }

    /// Whether `number` is a channel number of this range.
    #[must_use]
    pub const fn contains(self, number: u16) -> bool {
        number >= ChannelNumber::MIN.0 && number <= self.max()
    }
}

/// A channel number in the range RFC 8656 §12 assigns to clients, 0x4000–0x4FFF, or in RFC
/// 5766's 0x4000–0x7FFF where that was asked for ([`ChannelNumber::new_in`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    pub const MIN: Self = Self(0x4000);
    pub const MAX: Self = Self(0x4FFF);

    /// The channel number, or `None` outside 0x4000–0x4FFF.
    #[must_use]
    pub const fn new(number: u16) -> Option<Self> {
        Self::new_in(number, ChannelRange::Rfc8656)
    }

    /// The channel number, or `None` outside `range`.
    #[must_use]
    pub const fn new_in(number: u16, range: ChannelRange) -> Option<Self> {
        if range.contains(number) {
            Some(Self(number))
        } else {
            None
        }
    }

    #[must_use]
    pub const fn get(self) -> u16 {
        self.0
    }
}

/// Why a datagram is not a valid ChannelData message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelDataError {
    /// More bytes follow the payload than padding to a multiple of 4 explains.
    #[error("bytes after channel data padding")]
    ExcessTrailingBytes,
    /// The first two bits are not 0b01, so this is no channel number at all.
    #[error("not a channel data message")]
    NotChannelData,
    /// A channel number in 0x5000–0x7FFF, which RFC 8656 reserves (and RFC 5766 allowed:
    /// see [`ChannelData::parse_in`]).
    #[error("reserved channel number")]
    ReservedChannel,
    /// Fewer than 4 bytes: not even a header.
    #[error("shorter than the channel data header")]
    TooShort,
    /// The length field claims more bytes than the datagram holds.
    #[error("channel data length exceeds datagram")]
    Truncated,
}

/// A checked view over one ChannelData message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    number: ChannelNumber,
    payload: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Validates a datagram as one ChannelData message.
    ///
    /// Padding up to a multiple of 4 after the payload is accepted (it is required over
    /// streams and optional over UDP); anything longer is refused, as it would be ambiguous.
    ///
    /// # Errors
    /// A [`ChannelDataError`] naming the rule the datagram breaks.
    pub fn parse(datagram: &'a [u8]) -> Result<Self, ChannelDataError> {
        Self::parse_in(datagram, ChannelRange::Rfc8656)
    }

    /// [`ChannelData::parse`] with the channel numbers of `range`.
    ///
    /// # Errors
    /// A [`ChannelDataError`] naming the rule the datagram breaks.
    pub fn parse_in(datagram: &'a [u8], range: ChannelRange) -> Result<Self, ChannelDataError> {
        let (header, rest) = datagram
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(ChannelDataError::TooShort)?;
        let number = u16::from_be_bytes([header[0], header[1]]);
        if number & 0xC000 != 0x4000 {
            return Err(ChannelDataError::NotChannelData);
        }
        let number =
            ChannelNumber::new_in(number, range).ok_or(ChannelDataError::ReservedChannel)?;
        let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let payload = rest.get(..length).ok_or(ChannelDataError::Truncated)?;
        if rest.len() > (length + 3) & !3 {
            return Err(ChannelDataError::ExcessTrailingBytes);
        }
        Ok(Self { number, payload })
    }

    #[must_use]
    pub const fn new(number: ChannelNumber, payload: &'a [u8]) -> Self {
        Self { number, payload }
    }

    #[must_use]
    pub const fn channel(&self) -> ChannelNumber {
        self.number
    }

    #[must_use]
    pub const fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The 4-byte header for a payload of `payload_len` bytes, for writing into headroom in
    /// front of data that is already in place.
    ///
    /// # Errors
    /// [`EncodeError::ValueTooLong`] when the payload does not fit the 16-bit length.
    pub fn header(
        number: ChannelNumber,
        payload_len: usize,
    ) -> Result<[u8; HEADER_LEN], EncodeError> {
        let length = u16::try_from(payload_len).map_err(|_| EncodeError::ValueTooLong)?;
        let [n0, n1] = number.0.to_be_bytes();
        let [l0, l1] = length.to_be_bytes();
        Ok([n0, n1, l0, l1])
    }

    /// Writes header and payload into `out` without padding (as UDP allows), returning the
    /// number of bytes written.
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`] or [`EncodeError::ValueTooLong`].
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let header = Self::header(self.number, self.payload.len())?;
        let total = HEADER_LEN + self.payload.len();
        let out = out.get_mut(..total).ok_or(EncodeError::BufferTooSmall)?;
        out[..HEADER_LEN].copy_from_slice(&header);
        out[HEADER_LEN..].copy_from_slice(self.payload);
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_and_payload() {
        let message = ChannelData::parse(&[0x40, 0x01, 0x00, 0x03, 1, 2, 3]).unwrap();
        assert_eq!(message.channel().get(), 0x4001);
        assert_eq!(message.payload(), &[1, 2, 3]);
    }

    #[test]
    fn padding_to_four_bytes_is_accepted() {
        let message = ChannelData::parse(&[0x4F, 0xFF, 0x00, 0x03, 1, 2, 3, 0]).unwrap();
        assert_eq!(message.payload(), &[1, 2, 3]);
        let empty = ChannelData::parse(&[0x40, 0x00, 0x00, 0x00]).unwrap();
        assert!(empty.payload().is_empty());
    }

    #[test]
    fn more_than_padding_after_the_payload_is_rejected() {
        assert_eq!(
            ChannelData::parse(&[0x40, 0x00, 0x00, 0x03, 1, 2, 3, 0, 0]),
            Err(ChannelDataError::ExcessTrailingBytes)
        );
        assert_eq!(
            ChannelData::parse(&[0x40, 0x00, 0x00, 0x00, 0]),
            Err(ChannelDataError::ExcessTrailingBytes)
        );
    }

    #[test]
    fn short_datagram_is_too_short() {
        assert_eq!(
            ChannelData::parse(&[0x40, 0x00, 0x00]),
            Err(ChannelDataError::TooShort)
        );
    }

    #[test]
    fn length_beyond_the_datagram_is_truncated() {
        assert_eq!(
            ChannelData::parse(&[0x40, 0x00, 0x00, 0x05, 1]),
            Err(ChannelDataError::Truncated)
        );
    }

    #[test]
    fn reserved_channels_are_rejected() {
        for first in [0x50, 0x5F, 0x7F] {
            assert_eq!(
                ChannelData::parse(&[first, 0x00, 0x00, 0x00]),
                Err(ChannelDataError::ReservedChannel)
            );
        }
    }

    #[test]
    fn the_rfc_5766_range_takes_0x5000_to_0x7fff_too() {
        for first in [0x40, 0x4F, 0x50, 0x5F, 0x7F] {
            let datagram = [first, 0x01, 0x00, 0x01, 9];
            let message = ChannelData::parse_in(&datagram, ChannelRange::Rfc5766).unwrap();
            assert_eq!(message.channel().get(), u16::from_be_bytes([first, 0x01]));
            assert_eq!(message.payload(), &[9]);
        }
        assert_eq!(
            ChannelData::parse_in(&[0x80, 0x00, 0x00, 0x00], ChannelRange::Rfc5766),
            Err(ChannelDataError::NotChannelData)
        );
        assert_eq!(
            ChannelNumber::new_in(0x7FFF, ChannelRange::Rfc5766)
                .unwrap()
                .get(),
            0x7FFF
        );
        assert!(ChannelNumber::new_in(0x8000, ChannelRange::Rfc5766).is_none());
        assert!(ChannelNumber::new_in(0x3FFF, ChannelRange::Rfc5766).is_none());
        assert!(ChannelNumber::new_in(0x5000, ChannelRange::Rfc8656).is_none());
    }

    #[test]
    fn stun_and_other_first_bytes_are_not_channel_data() {
        for first in [0x00, 0x3F, 0x80, 0xFF] {
            assert_eq!(
                ChannelData::parse(&[first, 0x00, 0x00, 0x00]),
                Err(ChannelDataError::NotChannelData)
            );
        }
    }

    #[test]
    fn channel_numbers_outside_the_client_range_are_refused() {
        assert!(ChannelNumber::new(0x3FFF).is_none());
        assert!(ChannelNumber::new(0x5000).is_none());
        assert_eq!(ChannelNumber::new(0x4FFF), Some(ChannelNumber::MAX));
    }

    #[test]
    fn encode_writes_header_and_payload() {
        let mut out = [0; 16];
        let number = ChannelNumber::new(0x4123).unwrap();
        let written = ChannelData::new(number, b"hello").encode(&mut out).unwrap();
        assert_eq!(
            &out[..written],
            &[0x41, 0x23, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o']
        );
        assert_eq!(
            ChannelData::new(number, b"hello").encode(&mut out[..8]),
            Err(EncodeError::BufferTooSmall)
        );
        assert_eq!(
            ChannelData::header(number, 70_000),
            Err(EncodeError::ValueTooLong)
        );
    }
}
