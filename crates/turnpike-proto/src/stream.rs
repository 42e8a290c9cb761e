//! Framing of TURN over a byte stream (TCP or TLS; RFC 8656 §3.1 and §12.5).
//!
//! Over a stream nothing marks where one message ends, so each frame is delimited by its own
//! length field: a STUN message is its 20-byte header plus the length the header states (always
//! a multiple of 4); a ChannelData message is its 4-byte header plus the payload length, padded
//! to a multiple of 4 (clients must pad over streams, RFC 8656 §12.5). Anything else at a frame
//! boundary means the stream is out of step and cannot be resynchronised, so the connection must
//! be closed.
//!
//! [`frame_header`] is the pure rule; [`StreamDecoder`] keeps the bytes of a partial frame
//! between reads and hands out whole messages without their padding. The decoder is sans-IO: it
//! is given bytes (or a buffer to read into) and never touches a socket.

use crate::channel_data::{ChannelRange, HEADER_LEN as CHANNEL_DATA_HEADER_LEN};
use crate::message::{HEADER_LEN as STUN_HEADER_LEN, MAGIC_COOKIE};

/// The longest frame the protocol can express: a STUN header and a 16-bit length. (ChannelData
/// is at most 4 + 65,535 + 1 bytes of padding, which is shorter.)
pub const MAX_FRAME_LEN: usize = STUN_HEADER_LEN + 0xFFFF;

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A STUN message (request, response or indication).
    Stun,
    /// A ChannelData message.
    ChannelData,
}

/// The extent of the frame at the start of a stream buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    /// Bytes of the message itself: what the relay core is given.
    pub message_len: usize,
    /// Bytes the frame takes on the stream: the message and its padding.
    pub frame_len: usize,
}

/// Why the bytes at a frame boundary cannot start a frame. Each one ends the connection: a
/// stream has no way to find the next frame after a bad one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The first two bits are 0b10 or 0b11, or the channel number is one RFC 8656 reserves
    /// (0x5000–0x7FFF in the first byte's range) and the decoder was not given RFC 5766's
    /// range.
    #[error("the first byte {0:#04x} starts neither a STUN message nor ChannelData")]
    UnknownFirstByte(u8),
    /// A STUN header without the magic cookie (RFC 8489 §5).
    #[error("STUN header without the magic cookie")]
    NoMagicCookie,
    /// A STUN length that is not a multiple of 4 (RFC 8489 §5).
    #[error("STUN length {0} is not a multiple of 4")]
    UnalignedStunLength(usize),
    /// Longer than the decoder's limit.
    #[error("a frame of {len} bytes is longer than the limit of {max}")]
    TooLong { len: usize, max: usize },
}

impl FrameError {
    /// A short fixed name, for metric labels and logs.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UnknownFirstByte(_) => "unknown_first_byte",
            Self::NoMagicCookie => "no_magic_cookie",
            Self::UnalignedStunLength(_) => "unaligned_stun_length",
            Self::TooLong { .. } => "too_long",
        }
    }
}

/// Reads the extent of the frame that starts at `bytes[0]`.
///
/// Returns `Ok(None)` when more bytes are needed to tell (at most 8: the STUN magic cookie is
/// checked as soon as it has arrived, so garbage is refused before its claimed length is waited
/// for).
///
/// # Errors
/// A [`FrameError`] when the bytes cannot start a frame.
pub fn frame_header(bytes: &[u8]) -> Result<Option<FrameHeader>, FrameError> {
    frame_header_in(bytes, ChannelRange::Rfc8656)
}

/// [`frame_header`] with the channel numbers of `range`: with [`ChannelRange::Rfc5766`], first
/// bytes 0x50–0x7F start ChannelData too.
///
/// # Errors
/// A [`FrameError`] when the bytes cannot start a frame.
pub fn frame_header_in(
    bytes: &[u8],
    range: ChannelRange,
) -> Result<Option<FrameHeader>, FrameError> {
    let Some(&first) = bytes.first() else {
        return Ok(None);
    };
    match first >> 6 {
        0b00 => {
            let Some(header) = bytes.first_chunk::<8>() else {
                return Ok(None);
            };
            if u32::from_be_bytes([header[4], header[5], header[6], header[7]]) != MAGIC_COOKIE {
                return Err(FrameError::NoMagicCookie);
            }
            let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
            if !length.is_multiple_of(4) {
                return Err(FrameError::UnalignedStunLength(length));
            }
            let frame_len = STUN_HEADER_LEN + length;
            Ok(Some(FrameHeader {
                kind: FrameKind::Stun,
                message_len: frame_len,
                frame_len,
            }))
        }
        // 0x4000–0x4FFF; 0x5000–0x7FFF are reserved and cannot be told from garbage, unless
        // RFC 5766's range was asked for.
        0b01 if first < 0x50 || matches!(range, ChannelRange::Rfc5766) => {
            let Some(header) = bytes.first_chunk::<CHANNEL_DATA_HEADER_LEN>() else {
                return Ok(None);
            };
            let message_len =
                CHANNEL_DATA_HEADER_LEN + usize::from(u16::from_be_bytes([header[2], header[3]]));
            Ok(Some(FrameHeader {
                kind: FrameKind::ChannelData,
                message_len,
                frame_len: message_len.next_multiple_of(4),
            }))
        }
        _ => Err(FrameError::UnknownFirstByte(first)),
    }
}

/// The padding a ChannelData message of `message_len` bytes needs on a stream.
#[must_use]
pub const fn channel_data_padding(message_len: usize) -> usize {
    message_len.next_multiple_of(4) - message_len
}

/// Turns the bytes of a stream, as they arrive in reads of any size, into whole messages.
///
/// The buffer grows only as far as the frame being assembled needs (never past the limit given
/// at construction) and gives memory back once it is drained, so an idle connection holds
/// [`StreamDecoder::IDLE_CAPACITY`] bytes at most.
#[derive(Debug)]
pub struct StreamDecoder {
    buffer: Vec<u8>,
    /// Start of the first byte not yet handed out.
    start: usize,
    max_frame_len: usize,
    channels: ChannelRange,
}

impl StreamDecoder {
    /// The capacity kept when nothing is buffered; more is returned to the allocator.
    pub const IDLE_CAPACITY: usize = 4096;

    /// A decoder that refuses frames longer than `max_frame_len` bytes (clamped to at least the
    /// longest possible STUN header, at most [`MAX_FRAME_LEN`]).
    #[must_use]
    pub fn new(max_frame_len: usize) -> Self {
        Self {
            buffer: Vec::new(),
            start: 0,
            max_frame_len: max_frame_len.clamp(STUN_HEADER_LEN, MAX_FRAME_LEN),
            channels: ChannelRange::Rfc8656,
        }
    }

    /// The same decoder taking ChannelData with the channel numbers of `range` (RFC 8656's by
    /// default); give it the range the relay core accepts.
    #[must_use]
    pub const fn with_channel_range(mut self, range: ChannelRange) -> Self {
        self.channels = range;
        self
    }

    /// Appends bytes that arrived on the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.compact();
        self.buffer.extend_from_slice(bytes);
    }

    /// Spare room at the end of the buffer, at least `want` bytes, to read into directly; call
    /// [`StreamDecoder::filled`] with how many bytes were written there.
    pub fn spare(&mut self, want: usize) -> &mut [u8] {
        self.compact();
        let len = self.buffer.len();
        self.buffer.resize(len + want, 0);
        &mut self.buffer[len..]
    }

    /// Keeps the first `written` bytes of the last [`StreamDecoder::spare`] and forgets the rest.
    pub fn filled(&mut self, spare_len: usize, written: usize) {
        let keep = self.buffer.len() - spare_len + written.min(spare_len);
        self.buffer.truncate(keep);
    }

    /// Bytes received but not yet handed out as a message: a partial frame.
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.buffer.len() - self.start
    }

    /// Memory the decoder holds now, for accounting.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.buffer.capacity()
    }

    /// The next whole message, without its padding.
    ///
    /// `Ok(None)` means the buffered bytes are a partial frame (or none). After an error the
    /// decoder is stuck on the same bytes: the stream cannot be resynchronised, so the caller
    /// closes it.
    ///
    /// # Errors
    /// A [`FrameError`] for bytes that cannot start a frame or a frame over the limit.
    pub fn next_message(&mut self) -> Result<Option<(FrameKind, &[u8])>, FrameError> {
        let pending = &self.buffer[self.start..];
        let Some(header) = frame_header_in(pending, self.channels)? else {
            self.release_if_drained();
            return Ok(None);
        };
        if header.frame_len > self.max_frame_len {
            return Err(FrameError::TooLong {
                len: header.frame_len,
                max: self.max_frame_len,
            });
        }
        if pending.len() < header.frame_len {
            return Ok(None);
        }
        let message = self.start..self.start + header.message_len;
        self.start += header.frame_len;
        Ok(Some((header.kind, &self.buffer[message])))
    }

    /// Moves a partial frame to the front of the buffer, so that handed-out messages stop
    /// taking room.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.release_if_drained();
    }

    fn release_if_drained(&mut self) {
        if self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
            if self.buffer.capacity() > Self::IDLE_CAPACITY {
                self.buffer.shrink_to(Self::IDLE_CAPACITY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request() -> Vec<u8> {
        let mut message = vec![0x00, 0x01, 0x00, 0x08];
        message.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        message.extend_from_slice(&[7; 12]);
        // SOFTWARE "abcd"
        message.extend_from_slice(&[0x80, 0x22, 0x00, 0x04, b'a', b'b', b'c', b'd']);
        message
    }

    #[test]
    fn a_stun_header_gives_the_stated_length_once_the_cookie_has_arrived() {
        let message = binding_request();
        for cut in 0..8 {
            assert_eq!(frame_header(&message[..cut]), Ok(None), "{cut} bytes");
        }
        assert_eq!(
            frame_header(&message[..8]),
            Ok(Some(FrameHeader {
                kind: FrameKind::Stun,
                message_len: 28,
                frame_len: 28
            }))
        );
    }

    #[test]
    fn channel_data_frames_are_padded_to_four_bytes() {
        for (len, frame) in [(0, 4), (1, 8), (3, 8), (4, 8), (5, 12), (0xFFFF, 0x10004)] {
            let [high, low] = u16::try_from(len).unwrap().to_be_bytes();
            let header = frame_header(&[0x40, 0x01, high, low]).unwrap().unwrap();
            assert_eq!(header.kind, FrameKind::ChannelData);
            assert_eq!(header.message_len, 4 + len);
            assert_eq!(header.frame_len, frame, "payload of {len}");
            assert_eq!(channel_data_padding(header.message_len), frame - 4 - len);
        }
    }

    #[test]
    fn bytes_that_start_no_frame_are_refused_at_once() {
        for first in [0x80, 0xC0, 0xFF, 0x50, 0x7F, 0x16] {
            let expected = if first == 0x16 {
                // A TLS record on a plain-TCP port looks like STUN without the cookie.
                Err(FrameError::NoMagicCookie)
            } else {
                Err(FrameError::UnknownFirstByte(first))
            };
            assert_eq!(
                frame_header(&[first, 3, 1, 0, 0x20, 0, 0, 0]),
                expected,
                "{first:#x}"
            );
        }
        let mut unaligned = binding_request();
        unaligned[3] = 6;
        assert_eq!(
            frame_header(&unaligned),
            Err(FrameError::UnalignedStunLength(6))
        );
    }

    #[test]
    fn rfc_5766_channel_numbers_frame_only_when_asked_for() {
        let frame = [0x7F, 0xFF, 0x00, 0x01, 9, 0, 0, 0];
        assert_eq!(
            frame_header(&frame),
            Err(FrameError::UnknownFirstByte(0x7F))
        );
        let mut decoder = StreamDecoder::new(1024);
        decoder.push(&frame);
        assert_eq!(
            decoder.next_message(),
            Err(FrameError::UnknownFirstByte(0x7F))
        );

        let mut decoder = StreamDecoder::new(1024).with_channel_range(ChannelRange::Rfc5766);
        decoder.push(&frame);
        decoder.push(&[0x50, 0x00, 0x00, 0x00]);
        assert_eq!(
            decoder.next_message(),
            Ok(Some((FrameKind::ChannelData, &frame[..5])))
        );
        assert_eq!(
            decoder.next_message(),
            Ok(Some((
                FrameKind::ChannelData,
                &[0x50, 0x00, 0x00, 0x00][..]
            )))
        );
        assert_eq!(
            frame_header_in(&[0x80, 0, 0, 0], ChannelRange::Rfc5766),
            Err(FrameError::UnknownFirstByte(0x80))
        );
    }

    #[test]
    fn the_decoder_refuses_a_frame_over_its_limit_before_it_arrives() {
        let mut decoder = StreamDecoder::new(1024);
        decoder.push(&[0x40, 0x00, 0x04, 0x00]);
        assert_eq!(
            decoder.next_message(),
            Err(FrameError::TooLong {
                len: 1028,
                max: 1024
            })
        );
    }

    #[test]
    fn the_decoder_returns_memory_once_drained() {
        let mut decoder = StreamDecoder::new(MAX_FRAME_LEN);
        let mut big = vec![0x40, 0x00, 0xFF, 0xFF];
        big.resize(4 + 0xFFFF + 1, 9);
        decoder.push(&big);
        assert!(decoder.capacity() > 0xFFFF);
        let (kind, message) = decoder.next_message().unwrap().unwrap();
        assert_eq!((kind, message.len()), (FrameKind::ChannelData, 4 + 0xFFFF));
        assert_eq!(decoder.next_message(), Ok(None));
        assert!(decoder.capacity() <= StreamDecoder::IDLE_CAPACITY);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn reading_into_spare_room_keeps_only_what_was_written() {
        let mut decoder = StreamDecoder::new(MAX_FRAME_LEN);
        let message = binding_request();
        let spare = decoder.spare(100);
        spare[..10].copy_from_slice(&message[..10]);
        decoder.filled(100, 10);
        assert_eq!(decoder.buffered(), 10);
        assert_eq!(decoder.next_message(), Ok(None));
        let spare = decoder.spare(64);
        spare[..18].copy_from_slice(&message[10..]);
        decoder.filled(64, 18);
        assert_eq!(
            decoder.next_message(),
            Ok(Some((FrameKind::Stun, &message[..])))
        );
    }
}
