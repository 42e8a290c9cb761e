//! Feeds arbitrary datagrams to the ChannelData parser and, whenever one parses, checks that
//! encoding it again gives back the same channel and payload.

#![no_main]

use libfuzzer_sys::fuzz_target;
use turnpike_proto::{CHANNEL_DATA_HEADER_LEN, ChannelData, PacketKind, classify};

fuzz_target!(|data: &[u8]| {
    let kind = classify(data);
    let Ok(message) = ChannelData::parse(data) else {
        return;
    };
    assert_eq!(kind, Ok(PacketKind::ChannelData));

    // The encoder writes no padding, so the result is at most as long as the input.
    let mut buf = vec![0; data.len()];
    let written = message
        .encode(&mut buf)
        .expect("a parsed message fits the buffer it came in");
    assert_eq!(written, CHANNEL_DATA_HEADER_LEN + message.payload().len());
    assert_eq!(
        &buf[..CHANNEL_DATA_HEADER_LEN],
        &ChannelData::header(message.channel(), message.payload().len())
            .expect("a parsed payload fits the 16-bit length")[..]
    );
    let reparsed = ChannelData::parse(&buf[..written]).expect("re-encoded message parses");
    assert_eq!(reparsed.channel(), message.channel());
    assert_eq!(reparsed.payload(), message.payload());
});
