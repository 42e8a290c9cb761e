//! Telling STUN from ChannelData by the first byte (RFC 8656 §12, RFC 7983).

use crate::channel_data::ChannelRange;

/// What a datagram on the TURN port claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// First byte 0x40–0x4F: a channel number in 0x4000–0x4FFF.
    ChannelData,
    /// First byte 0–3: the two top bits of a STUN message are zero.
    Stun,
}

/// Why a datagram is neither STUN nor ChannelData.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DemuxError {
    #[error("empty datagram")]
    Empty,
    /// First byte 0x50–0x7F: a channel number RFC 8656 reserves (0x5000–0x7FFF).
    #[error("reserved channel number range")]
    ReservedChannelRange,
    /// Any other first byte (DTLS, RTP, QUIC, garbage).
    #[error("first byte is neither stun nor channel data")]
    Unrecognised,
}

/// Classifies a datagram by its first byte without looking further.
///
/// # Errors
/// A [`DemuxError`] for empty datagrams and first bytes outside 0–3 and 0x40–0x4F.
pub const fn classify(datagram: &[u8]) -> Result<PacketKind, DemuxError> {
    classify_in(datagram, ChannelRange::Rfc8656)
}

/// [`classify`] with the channel numbers of `range`: with [`ChannelRange::Rfc5766`], first
/// bytes 0x50–0x7F are ChannelData too.
///
/// # Errors
/// A [`DemuxError`] for empty datagrams and first bytes that start neither.
pub const fn classify_in(datagram: &[u8], range: ChannelRange) -> Result<PacketKind, DemuxError> {
    match (datagram.first(), range) {
        (None, _) => Err(DemuxError::Empty),
        (Some(0x00..=0x03), _) => Ok(PacketKind::Stun),
        (Some(0x40..=0x4F), _) | (Some(0x50..=0x7F), ChannelRange::Rfc5766) => {
            Ok(PacketKind::ChannelData)
        }
        (Some(0x50..=0x7F), ChannelRange::Rfc8656) => Err(DemuxError::ReservedChannelRange),
        (Some(_), _) => Err(DemuxError::Unrecognised),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_first_byte_has_one_verdict() {
        for byte in 0..=u8::MAX {
            let expected = match byte {
                0..=3 => Ok(PacketKind::Stun),
                0x40..=0x4F => Ok(PacketKind::ChannelData),
                0x50..=0x7F => Err(DemuxError::ReservedChannelRange),
                _ => Err(DemuxError::Unrecognised),
            };
            assert_eq!(classify(&[byte, 0, 0, 0]), expected, "{byte:#04x}");
        }
    }

    #[test]
    fn the_rfc_5766_range_makes_0x50_to_0x7f_channel_data() {
        for byte in 0..=u8::MAX {
            let expected = match byte {
                0..=3 => Ok(PacketKind::Stun),
                0x40..=0x7F => Ok(PacketKind::ChannelData),
                _ => Err(DemuxError::Unrecognised),
            };
            assert_eq!(
                classify_in(&[byte, 0, 0, 0], ChannelRange::Rfc5766),
                expected,
                "{byte:#04x}"
            );
        }
    }

    #[test]
    fn empty_datagram_is_its_own_error() {
        assert_eq!(classify(&[]), Err(DemuxError::Empty));
    }
}
