//! Feeds an arbitrary byte stream to the stream decoder, cut into reads at positions the input
//! chooses, and checks that the messages come out the same as from one read of the whole stream,
//! and that each one has the length its header states.

#![no_main]

use libfuzzer_sys::fuzz_target;
use turnpike_proto::{FrameKind, MAX_FRAME_LEN, StreamDecoder, frame_header};

/// Every message the decoder gives, and whether it stopped on an error.
fn decode(reads: &[&[u8]], limit: usize) -> (Vec<(FrameKind, Vec<u8>)>, bool) {
    let mut decoder = StreamDecoder::new(limit);
    let mut messages = Vec::new();
    for read in reads {
        decoder.push(read);
        loop {
            match decoder.next_message() {
                Ok(Some((kind, message))) => {
                    let header = frame_header(message)
                        .expect("a message handed out has a valid header")
                        .expect("and a whole one");
                    assert_eq!(header.message_len, message.len());
                    assert!(header.frame_len <= limit.max(20));
                    messages.push((kind, message.to_vec()));
                }
                Ok(None) => break,
                Err(_) => return (messages, true),
            }
        }
    }
    (messages, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut_seed, stream)) = data.split_first() else {
        return;
    };
    let limit = if cut_seed & 1 == 0 { MAX_FRAME_LEN } else { 1500 };
    let whole = decode(&[stream], limit);
    // Reads of a size derived from the first byte, 1 to 64 bytes each.
    let step = usize::from(cut_seed >> 2) + 1;
    let reads: Vec<&[u8]> = stream.chunks(step).collect();
    assert_eq!(decode(&reads, limit), whole);
});
