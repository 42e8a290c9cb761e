//! Batched I/O over real loopback sockets: what goes into a `SendBatch`, GSO runs included,
//! comes out of a `RecvBatch` intact, complete and in order per destination.

#![expect(clippy::unwrap_used, reason = "tests fail by panicking")]

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use turnpike_io::{HEADROOM, RecvBatch, SendBatch, SendOutcome};

fn socket() -> UdpSocket {
    turnpike_io::bind("127.0.0.1:0".parse().unwrap(), false, 1 << 20)
        .unwrap()
        .0
}

/// Receives until `count` datagrams arrived (bounded: 2 s), returning (source, bytes).
fn receive(socket: &UdpSocket, count: usize) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut pool = RecvBatch::with_capacity(256);
    let mut received = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while received.len() < count && std::time::Instant::now() < deadline {
        if !turnpike_io::wait_readable(socket.as_raw_fd(), Duration::from_millis(100)).unwrap() {
            continue;
        }
        pool.clear();
        for index in pool.recv(socket.as_raw_fd()).unwrap() {
            let datagram = pool.get(index).unwrap();
            assert!(!datagram.truncated);
            received.push((
                datagram.from.unwrap(),
                datagram.slot[HEADROOM..HEADROOM + datagram.len].to_vec(),
            ));
        }
    }
    received
}

#[test]
fn mixed_runs_to_two_destinations_arrive_whole_and_in_order() {
    let sender = socket();
    let (first, second) = (socket(), socket());
    // Equal sizes (one GSO run), a shorter tail, then a longer one (a new run), interleaved
    // between two destinations.
    let sizes = [100, 100, 100, 60, 100, 300, 300, 1, 0, 100];
    let messages: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(index, size)| vec![u8::try_from(index).unwrap(); *size])
        .collect();
    let mut batch = SendBatch::default();
    for (index, message) in messages.iter().enumerate() {
        let to = if index % 3 == 0 {
            second.local_addr().unwrap()
        } else {
            first.local_addr().unwrap()
        };
        // SAFETY: `messages` and `sender` outlive the flush below.
        unsafe { batch.push(&sender, to, message) };
    }
    let mut outcome = SendOutcome::default();
    batch.flush(&mut outcome);
    assert_eq!(outcome.sent, 10, "{outcome:?}");
    assert!(
        outcome.segmented >= 1,
        "a run of equal sizes used GSO: {outcome:?}"
    );

    let expect = |keep: fn(usize) -> bool| -> Vec<Vec<u8>> {
        messages
            .iter()
            .enumerate()
            .filter(|(index, _)| keep(*index))
            .map(|(_, m)| m.clone())
            .collect()
    };
    let got_first: Vec<Vec<u8>> = receive(&first, 6)
        .into_iter()
        .map(|(_, bytes)| bytes)
        .collect();
    let got_second: Vec<Vec<u8>> = receive(&second, 4)
        .into_iter()
        .map(|(_, bytes)| bytes)
        .collect();
    assert_eq!(got_first, expect(|index| index % 3 != 0));
    assert_eq!(got_second, expect(|index| index % 3 == 0));
}

#[test]
fn sixty_four_plus_datagrams_to_one_destination_split_into_several_runs() {
    let sender = socket();
    let receiver = socket();
    let messages: Vec<Vec<u8>> = (0..150_u32)
        .map(|index| index.to_be_bytes().repeat(50))
        .collect();
    let mut batch = SendBatch::default();
    for message in &messages {
        // SAFETY: the messages and `sender` outlive the flush below.
        unsafe { batch.push(&sender, receiver.local_addr().unwrap(), message) };
    }
    let mut outcome = SendOutcome::default();
    batch.flush(&mut outcome);
    assert_eq!(outcome.sent, 150);
    let got: Vec<Vec<u8>> = receive(&receiver, 150)
        .into_iter()
        .map(|(_, bytes)| bytes)
        .collect();
    assert_eq!(got, messages);
}

#[test]
fn without_gso_the_same_datagrams_arrive_the_same_way() {
    let sender = socket();
    let receiver = socket();
    let messages: Vec<Vec<u8>> = (0..40_u8).map(|index| vec![index; 200]).collect();
    let mut batch = SendBatch::default();
    batch.disable_gso();
    for message in &messages {
        // SAFETY: the messages and `sender` outlive the flush below.
        unsafe { batch.push(&sender, receiver.local_addr().unwrap(), message) };
    }
    let mut outcome = SendOutcome::default();
    batch.flush(&mut outcome);
    assert_eq!((outcome.sent, outcome.segmented), (40, 0));
    let got: Vec<Vec<u8>> = receive(&receiver, 40)
        .into_iter()
        .map(|(_, bytes)| bytes)
        .collect();
    assert_eq!(got, messages);
}

#[test]
fn copies_outlive_their_source_and_span_chunks_in_order() {
    let sender = socket();
    let receiver = socket();
    let to = receiver.local_addr().unwrap();
    let mut batch = SendBatch::default();
    // 150 datagrams of 1,000 bytes: more than two 64 KiB chunks, each queued from a buffer that
    // is overwritten at once, as a stream's message buffer is.
    let mut scratch = vec![0u8; 1000];
    for index in 0..150u8 {
        scratch.fill(index);
        // SAFETY: `sender` outlives the flush below.
        unsafe { batch.push_copy(&sender, to, &scratch) };
    }
    assert_eq!(batch.copied_bytes(), 150_000);
    scratch.fill(0xEE);
    let mut outcome = SendOutcome::default();
    batch.flush(&mut outcome);
    assert_eq!(outcome.sent, 150, "{outcome:?}");
    assert_eq!(batch.copied_bytes(), 0);
    let got = receive(&receiver, 150);
    assert_eq!(got.len(), 150);
    for (index, (_, bytes)) in got.iter().enumerate() {
        assert_eq!(
            bytes,
            &vec![u8::try_from(index).unwrap(); 1000],
            "datagram {index}"
        );
    }
    // The chunks are reused for the next round.
    // SAFETY: `sender` outlives the flush below.
    unsafe { batch.push_copy(&sender, to, b"again") };
    batch.flush(&mut outcome);
    assert_eq!(receive(&receiver, 1)[0].1, b"again");
}
