//! The STUN/TURN wire codec of Turnpike.
//!
//! Every byte a client or peer sends passes through this crate first, so it is built around two
//! promises:
//!
//! - **Parsing never panics and never allocates**, whatever the input. [`Message::parse`] and
//!   [`ChannelData::parse`] validate the framing once and hand out a checked view that borrows
//!   the datagram; typed attribute values are decoded lazily from that view with
//!   [`Attribute::decode`]. All errors are small `Copy` enums with no formatted text, so an
//!   attacker who floods the relay with garbage makes it do no more than compare a few bytes.
//! - **Encoding writes into a buffer the caller owns.** [`MessageEncoder`] appends attributes and
//!   the integrity and fingerprint trailers into a `&mut [u8]`; the relay reuses one buffer per
//!   event-loop iteration.
//!
//! Over TCP and TLS, [`StreamDecoder`] cuts the byte stream into messages by their length fields
//! (RFC 8656 §12.5) before they reach the same parsers.
//!
//! Demultiplexing a datagram starts with [`classify`]: STUN messages begin with 0b00, ChannelData
//! with a channel number in 0x4000–0x4FFF.
//!
//! Integrity ([`Message::verify_message_integrity`], [`Message::verify_message_integrity_sha256`])
//! is computed over the exact byte range RFC 8489 §14.5/§14.6 prescribes, with the header length
//! adjusted, and compared in constant time.

// Nothing here needs unsafe code; the only unsafe code outside the kernel program lives in
// turnpike-io, where the system calls are.
#![forbid(unsafe_code)]

mod attribute;
mod channel_data;
mod demux;
mod encoder;
mod error_code;
mod integrity;
mod message;
mod stream;

pub use attribute::{
    AddressFamily, Attribute, AttributeError, AttributeType, PasswordAlgorithm, PasswordAlgorithms,
    PasswordAlgorithmsIter, RawAttribute, UnknownAttributes,
};
pub use channel_data::{
    ChannelData, ChannelDataError, ChannelNumber, ChannelRange,
    HEADER_LEN as CHANNEL_DATA_HEADER_LEN,
};
pub use demux::{DemuxError, PacketKind, classify, classify_in};
pub use encoder::{EncodeError, MessageEncoder};
pub use error_code::ErrorCode;
pub use integrity::{FINGERPRINT_XOR, IntegrityError};
pub use message::{
    Attributes, Class, DecodeError, HEADER_LEN, MAGIC_COOKIE, Message, MessageType, Method,
    TransactionId,
};
pub use stream::{
    FrameError, FrameHeader, FrameKind, MAX_FRAME_LEN, StreamDecoder, channel_data_padding,
    frame_header, frame_header_in,
};
