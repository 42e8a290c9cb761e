//! Telling STUN from ChannelData by the first byte (RFC 8656 §12, RFC 7983).

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
    match datagram.first() {
        None => Err(DemuxError::Empty),
        Some(0x00..=0x03) => Ok(PacketKind::Stun),
        Some(0x40..=0x4F) => Ok(PacketKind::ChannelData),
        Some(0x50..=0x7F) => Err(DemuxError::ReservedChannelRange),
        Some(_) => Err(DemuxError::Unrecognised),
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
    fn empty_datagram_is_its_own_error() {
        assert_eq!(classify(&[]), Err(DemuxError::Empty));
    }
}
