//! Per-source limits hold for the whole relay, whatever the thread count: a real `turnpike`
//! with four threads answers one host's unauthenticated requests from many source ports no more
//! than the per-source rate allows (the kernel steers a source to one thread, `steer.rs`).

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail by panicking"
)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::Relay;
use turnpike_proto::{Class, MessageEncoder, MessageType, Method, TransactionId};

fn binding_request(id: u32) -> Vec<u8> {
    let mut transaction = [0u8; 12];
    transaction[..4].copy_from_slice(&id.to_be_bytes());
    let mut buf = vec![0; 64];
    let mut encoder = MessageEncoder::new(
        &mut buf,
        MessageType::new(Method::Binding, Class::Request),
        TransactionId(transaction),
    )
    .unwrap();
    encoder.push_fingerprint().unwrap();
    let len = encoder.finish();
    buf.truncate(len);
    buf
}

/// Sends `per_socket` Binding requests from each of `sockets` source ports at once and counts
/// the answers that arrive within a second.
fn answered(server: SocketAddr, sockets: usize, per_socket: u32) -> usize {
    let clients: Vec<UdpSocket> = (0..sockets)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut id = 0;
    for client in &clients {
        for _ in 0..per_socket {
            id += 1;
            client.send_to(&binding_request(id), server).unwrap();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut answers = 0;
    let mut buf = [0u8; 512];
    for client in &clients {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            client
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match client.recv_from(&mut buf) {
                Ok(_) => answers += 1,
                Err(_) => break,
            }
        }
    }
    answers
}

#[test]
fn one_hosts_unauthenticated_answers_are_limited_across_all_threads() {
    // 10 answers a second per source, bursts of 20; four threads that would each allow a burst
    // if the limit were per thread.
    let relay = Relay::start(&["--threads=4", "--unauthenticated-rate=10"]);
    let server = SocketAddr::from(([127, 0, 0, 1], relay.listen_port));
    let answers = answered(server, 64, 4);
    // The burst, plus what refills while the requests arrive.
    assert!(
        (20..=30).contains(&answers),
        "{answers} answers to 256 requests from 64 ports of one host"
    );
}

#[test]
fn the_per_user_quota_holds_across_threads() {
    // Four threads; the user may hold 3 allocations. Clients come from 16 loopback addresses,
    // which the kernel spreads over the threads.
    let relay = Relay::start(&["--threads=4", "--max-allocations-per-user=3"]);
    let server = SocketAddr::from(([127, 0, 0, 1], relay.listen_port));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peer = common::echo_peer(&stop);
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let (username, password) =
        turnpike_load::turn_client::rest_credentials(common::SECRET, "one-user", expiry);
    let mut held = Vec::new();
    let mut refused = 0;
    for host in 1..=16u8 {
        match turnpike_load::turn_client::allocate_and_bind(
            SocketAddr::from(([127, 0, 0, host], 0)),
            server,
            &username,
            &password,
            peer,
            0x4000,
        ) {
            Ok(allocation) => held.push(allocation),
            Err(error) => {
                assert!(format!("{error:#}").contains("486"), "{error:#}");
                refused += 1;
            }
        }
    }
    assert_eq!((held.len(), refused), (3, 13));
    // A freed place can be taken again, from any thread.
    held.pop().unwrap().release().unwrap();
    let again = turnpike_load::turn_client::allocate_and_bind(
        SocketAddr::from(([127, 0, 0, 17], 0)),
        server,
        &username,
        &password,
        peer,
        0x4000,
    );
    assert!(again.is_ok(), "{:?}", again.err());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}
