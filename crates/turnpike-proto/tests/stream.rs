//! Property and malformed-input tests of the stream framing (TURN over TCP and TLS): however a
//! stream of valid frames is cut into reads, the decoder gives the same messages; every way a
//! frame boundary can be wrong is refused with its own error.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a panic is a failed test, with the reason in its message"
)]

use proptest::collection::vec;
use proptest::prelude::*;
use turnpike_proto::{
    Attribute, ChannelData, ChannelNumber, Class, FrameError, FrameKind, MAX_FRAME_LEN,
    MessageEncoder, MessageType, Method, StreamDecoder, TransactionId, channel_data_padding,
};

/// One message as a client could send it over a stream.
#[derive(Debug, Clone)]
enum Frame {
    Stun { software: String, id: [u8; 12] },
    ChannelData { channel: u16, payload: Vec<u8> },
}

impl Frame {
    /// The message itself and the bytes it takes on the stream (with padding).
    fn encode(&self) -> (Vec<u8>, Vec<u8>) {
        match self {
            Self::Stun { software, id } => {
                let mut buf = vec![0; 1024];
                let mut encoder = MessageEncoder::new(
                    &mut buf,
                    MessageType::new(Method::Binding, Class::Request),
                    TransactionId(*id),
                )
                .unwrap();
                encoder.push(&Attribute::Software(software)).unwrap();
                encoder.push_fingerprint().unwrap();
                let message = encoder.as_bytes().to_vec();
                (message.clone(), message)
            }
            Self::ChannelData { channel, payload } => {
                let number = ChannelNumber::new(*channel).unwrap();
                let mut message = ChannelData::header(number, payload.len()).unwrap().to_vec();
                message.extend_from_slice(payload);
                let mut on_stream = message.clone();
                on_stream.resize(message.len() + channel_data_padding(message.len()), 0);
                (message, on_stream)
            }
        }
    }
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        ("[a-z]{0,40}", any::<[u8; 12]>()).prop_map(|(software, id)| Frame::Stun { software, id }),
        (0x4000u16..=0x4FFF, vec(any::<u8>(), 0..300))
            .prop_map(|(channel, payload)| Frame::ChannelData { channel, payload }),
    ]
}

/// Feeds `stream` cut at `cuts` (sorted positions) and collects the messages.
fn decode_in_reads(stream: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut decoder = StreamDecoder::new(MAX_FRAME_LEN);
    let mut messages = Vec::new();
    let mut start = 0;
    for end in cuts.iter().copied().chain([stream.len()]) {
        let end = end.clamp(start, stream.len());
        // Half the reads go through the read-into-spare-room path.
        if end % 2 == 0 {
            decoder.push(&stream[start..end]);
        } else {
            let spare = decoder.spare(end - start + 7);
            spare[..end - start].copy_from_slice(&stream[start..end]);
            decoder.filled(end - start + 7, end - start);
        }
        start = end;
        while let Some((_, message)) = decoder.next_message().unwrap() {
            messages.push(message.to_vec());
        }
    }
    assert_eq!(decoder.buffered(), 0, "nothing left over");
    messages
}

proptest! {
    #[test]
    fn every_split_of_a_stream_gives_the_same_messages(
        frames in vec(frame(), 0..12),
        cuts in vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let encoded: Vec<(Vec<u8>, Vec<u8>)> = frames.iter().map(Frame::encode).collect();
        let stream: Vec<u8> = encoded.iter().flat_map(|(_, on_stream)| on_stream.clone()).collect();
        let expected: Vec<Vec<u8>> = encoded.into_iter().map(|(message, _)| message).collect();
        let mut cuts: Vec<usize> = cuts.iter().map(|index| index.index(stream.len() + 1)).collect();
        cuts.sort_unstable();
        prop_assert_eq!(&decode_in_reads(&stream, &[]), &expected);
        prop_assert_eq!(&decode_in_reads(&stream, &cuts), &expected);
        let every_byte: Vec<usize> = (0..stream.len()).collect();
        prop_assert_eq!(&decode_in_reads(&stream, &every_byte), &expected);
    }

    #[test]
    fn the_decoder_never_panics_and_hands_out_only_whole_frames(
        reads in vec(vec(any::<u8>(), 0..64), 0..16),
    ) {
        let mut decoder = StreamDecoder::new(2048);
        'reads: for read in &reads {
            decoder.push(read);
            loop {
                match decoder.next_message() {
                    Ok(Some((FrameKind::ChannelData, message))) => {
                        let parsed = ChannelData::parse(message).unwrap();
                        prop_assert_eq!(parsed.payload().len() + 4, message.len());
                    }
                    Ok(Some((FrameKind::Stun, message))) => {
                        prop_assert!(message.len() >= 20 && message.len() % 4 == 0);
                    }
                    Ok(None) => break,
                    Err(_) => break 'reads,
                }
            }
        }
    }
}

fn first_error(bytes: &[u8], limit: usize) -> FrameError {
    let mut decoder = StreamDecoder::new(limit);
    decoder.push(bytes);
    loop {
        match decoder.next_message() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("no error in {bytes:02x?}"),
            Err(error) => return error,
        }
    }
}

#[test]
fn a_tls_client_hello_on_a_plain_port_is_refused() {
    let client_hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC];
    assert_eq!(
        first_error(&client_hello, MAX_FRAME_LEN),
        FrameError::NoMagicCookie
    );
}

#[test]
fn an_http_post_is_refused() {
    // (A `GET` starts like ChannelData on channel 0x4745; it waits for its claimed length and
    // is ended by the driver's partial-frame timer instead.)
    assert_eq!(
        first_error(b"POST / HTTP/1.1\r\n", MAX_FRAME_LEN),
        FrameError::UnknownFirstByte(b'P')
    );
}

#[test]
fn a_reserved_channel_number_is_refused() {
    assert_eq!(
        first_error(&[0x50, 0x00, 0x00, 0x00], MAX_FRAME_LEN),
        FrameError::UnknownFirstByte(0x50)
    );
}

#[test]
fn an_unaligned_stun_length_is_refused() {
    let (mut message, _) = Frame::Stun {
        software: "x".to_owned(),
        id: [1; 12],
    }
    .encode();
    message[3] += 1;
    assert_eq!(
        first_error(&message, MAX_FRAME_LEN),
        FrameError::UnalignedStunLength(usize::from(message[3]))
    );
}

#[test]
fn a_frame_over_the_limit_is_refused_from_its_header() {
    assert_eq!(
        first_error(&[0x40, 0x00, 0x05, 0xDC], 1500),
        FrameError::TooLong {
            len: 1504,
            max: 1500
        }
    );
}

#[test]
fn garbage_after_a_good_frame_is_refused_after_the_frame() {
    let (good, on_stream) = Frame::ChannelData {
        channel: 0x4001,
        payload: b"abc".to_vec(),
    }
    .encode();
    let mut stream = on_stream;
    stream.extend_from_slice(&[0xFF; 8]);
    let mut decoder = StreamDecoder::new(MAX_FRAME_LEN);
    decoder.push(&stream);
    assert_eq!(
        decoder.next_message(),
        Ok(Some((FrameKind::ChannelData, &good[..])))
    );
    assert_eq!(
        decoder.next_message(),
        Err(FrameError::UnknownFirstByte(0xFF))
    );
}
