//! Limits hold for the whole relay and strangers cannot push it over, against a real `turnpike`:
//! with four threads it answers one host's unauthenticated requests from many source ports no
//! more than the per-source rate allows (the kernel steers a source to one thread, `steer.rs`),
//! and the per-user quota holds across threads; 50,000 unauthenticated Allocates leave no state
//! and no memory behind; a flood of malformed datagrams costs a live allocation no round trip.

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

fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap()
}

#[test]
fn fifty_thousand_unauthenticated_allocates_leave_no_state_and_no_memory() {
    // Every one answered (no rate limit), so each reaches the point where state could be made.
    let relay = Relay::start(&["--unauthenticated-rate=0"]);
    let server = SocketAddr::from(([127, 0, 0, 1], relay.listen_port));
    let before = resident_kib(relay.pid());
    let clients: Vec<UdpSocket> = (0..50)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut buf = vec![0; 128];
    for round in 0..1000u32 {
        for (index, client) in clients.iter().enumerate() {
            let id = round * 50 + u32::try_from(index).unwrap();
            let mut encoder = MessageEncoder::new(
                &mut buf,
                MessageType::new(Method::Allocate, Class::Request),
                TransactionId({
                    let mut transaction = [7u8; 12];
                    transaction[..4].copy_from_slice(&id.to_be_bytes());
                    transaction
                }),
            )
            .unwrap();
            encoder
                .push(&turnpike_proto::Attribute::RequestedTransport(17))
                .unwrap();
            let len = encoder.finish();
            client.send_to(&buf[..len], server).unwrap();
        }
        // Paced by the answers, so that no request is lost to a full socket buffer and every
        // one reaches the relay's code.
        for client in &clients {
            client
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut answer = [0u8; 256];
            let _ = client.recv_from(&mut answer);
        }
    }
    assert_eq!(relay.metric_until("turnpike_allocations", |n| n == 0), 0);
    let challenged = relay.metric_until(
        "turnpike_responses_total{method=\"allocate\",code=\"401\"}",
        |n| n >= 45_000,
    );
    assert!(challenged >= 45_000, "{challenged} challenges");
    let after = resident_kib(relay.pid());
    assert!(
        after.saturating_sub(before) < 2048,
        "resident memory grew from {before} to {after} KiB"
    );
}

#[test]
fn a_flood_of_malformed_datagrams_costs_a_live_allocation_no_round_trip() {
    let relay = Relay::start(&[]);
    let server = SocketAddr::from(([127, 0, 0, 1], relay.listen_port));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peer = common::echo_peer(&stop);
    let allocation = common::allocate(server, peer, "live").unwrap();
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flood = {
        let flooding = std::sync::Arc::clone(&flooding);
        std::thread::spawn(move || {
            // Garbage of every kind the classifier meets: not STUN, bad STUN, bad ChannelData,
            // at about 30,000 a second for as long as the round trips run.
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            let shapes: [&[u8]; 4] = [
                &[0xFF; 40],
                &[0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42, 1, 2],
                &[0x40, 0x00, 0xFF, 0xFF, 1, 2, 3],
                &[0x50, 0x00, 0x00, 0x00],
            ];
            let mut sent = 0u64;
            let started = Instant::now();
            while flooding.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(30)
            {
                for shape in shapes {
                    let _ = socket.send_to(shape, server);
                    sent += 1;
                }
                if sent.is_multiple_of(1000) {
                    let due = Duration::from_micros(sent * 33);
                    if let Some(ahead) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(ahead);
                    }
                }
            }
            sent
        })
    };
    // ChannelData round trips, each waited for, for 3 s and at least 2,000 of them.
    let socket = &allocation.socket;
    socket.set_nonblocking(false).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut lost = 0;
    let mut buf = [0u8; 64];
    let started = Instant::now();
    let mut index = 0u32;
    while index < 2000 || started.elapsed() < Duration::from_secs(3) {
        index += 1;
        let mut message = vec![0x40, 0x00, 0x00, 0x04];
        message.extend_from_slice(&index.to_be_bytes());
        socket.send_to(&message, server).unwrap();
        match socket.recv_from(&mut buf) {
            Ok((8, _)) if buf[4..8] == index.to_be_bytes() => {}
            _ => lost += 1,
        }
    }
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.join().unwrap();
    assert!(sent > 10_000, "only {sent} malformed datagrams were sent");
    assert_eq!(
        lost, 0,
        "round trips lost during {sent} malformed datagrams"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}
