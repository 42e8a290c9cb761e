//! Faults a relay must survive, against a real `turnpike` process on loopback: `kill -9` under
//! load (the next start binds every relayed port again and relays), and peers it cannot send
//! to (nothing listening: ICMP port unreachable; a socket whose receive buffer is full because
//! nobody reads it), which must cost everyone else nothing.
//!
//! The kernel data plane's faults (detach after SIGKILL, a full channel map) are in
//! scripts/test-xdp-netns.sh and crates/turnpike-xdp-user/tests/map_full.rs. Every wait is
//! bounded.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail by panicking"
)]

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Relay;
use turnpike_load::run::{self, CHANNEL, Load, Progress};
use turnpike_load::turn_client::Allocation;

/// Socket inodes of process `pid` (from its /proc/PID/fd links).
fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| {
            let target = std::fs::read_link(entry.ok()?.path()).ok()?;
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// A counter from /proc/net/snmp, e.g. `("Icmp", "OutDestUnreachs")`.
fn snmp(protocol: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap();
    let prefix = format!("{protocol}:");
    let mut rows = text.lines().filter(|line| line.starts_with(&prefix));
    let names = rows.next().unwrap().split_whitespace();
    let values = rows.next().unwrap().split_whitespace();
    names
        .zip(values)
        .find(|(name, _)| *name == field)
        .map(|(_, value)| value.parse().unwrap())
        .unwrap_or_else(|| panic!("no {protocol} {field} in /proc/net/snmp"))
}

/// One row of /proc/net/udp or udp6: local port, inode and drops.
struct UdpRow {
    port: u16,
    inode: u64,
    drops: u64,
}

fn udp_rows(table: &str) -> Vec<UdpRow> {
    std::fs::read_to_string(table)
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = fields.get(1)?.rsplit(':').next()?;
            Some(UdpRow {
                port: u16::from_str_radix(port, 16).ok()?,
                inode: fields.get(9)?.parse().ok()?,
                drops: fields.last()?.parse().ok()?,
            })
        })
        .collect()
}

/// The UDP ports process `pid` has bound, per family (IPv4, IPv6).
fn bound_udp_ports(pid: u32) -> (BTreeSet<u16>, BTreeSet<u16>) {
    let inodes = socket_inodes(pid);
    let ports = |table: &str| {
        udp_rows(table)
            .into_iter()
            .filter(|row| inodes.contains(&row.inode))
            .map(|row| row.port)
            .collect()
    };
    (ports("/proc/net/udp"), ports("/proc/net/udp6"))
}

fn allocations(
    server: SocketAddr,
    peer: SocketAddr,
    user: &str,
    count: u32,
) -> Vec<(u32, Allocation)> {
    (0..count)
        .map(|index| {
            let allocation = common::allocate(server, peer, &format!("{user}{index}"))
                .unwrap_or_else(|error| panic!("allocation {user}{index}: {error:#}"));
            (index, allocation)
        })
        .collect()
}

/// Round trips through `allocations` for `seconds`, a window of 4 each; every one of them must
/// complete and every allocation must have some.
fn assert_relays_without_loss(allocations: Vec<(u32, Allocation)>, seconds: u64) -> u64 {
    let count = allocations.len();
    let load = Load {
        payload: 100,
        window: 4,
        rate: 0,
        duration: Duration::from_secs(seconds),
        refresh: true,
    };
    let stop = AtomicBool::new(false);
    let (measured, _allocations) = run::drive(
        allocations,
        load,
        0,
        Instant::now(),
        &Progress::default(),
        &stop,
    )
    .unwrap();
    eprintln!(
        "sent {}, received {}, per allocation {:?}",
        measured.sent, measured.received, measured.per_allocation
    );
    assert!(
        measured.received > 100,
        "the load ran: {}",
        measured.received
    );
    assert_eq!(
        measured.sent, measured.received,
        "every round trip completes"
    );
    assert_eq!(measured.malformed, 0);
    assert_eq!(measured.per_allocation.len(), count);
    assert!(
        measured.per_allocation.iter().all(|(_, trips)| *trips > 0),
        "every allocation relayed: {:?}",
        measured.per_allocation
    );
    measured.received
}

#[test]
fn after_kill_9_under_load_a_new_relay_binds_every_relayed_port_and_relays() {
    let mut relay = Relay::start_with_ports(64, &[]);
    let server: SocketAddr = relay.server("127.0.0.1").parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let peer = common::echo_peer(&stop);
    let (v4, v6) = bound_udp_ports(relay.pid());
    let range: BTreeSet<u16> = relay.relay_port_range().collect();
    assert!(
        range.is_subset(&v4) && range.is_subset(&v6),
        "the first relay binds every relayed port on both families"
    );

    // Load through 8 allocations, killed mid-way.
    let progress = Arc::new(Progress::default());
    let load_stop = Arc::new(AtomicBool::new(false));
    let load = {
        let allocations = allocations(server, peer, "before", 8);
        let progress = Arc::clone(&progress);
        let load_stop = Arc::clone(&load_stop);
        std::thread::spawn(move || {
            let load = Load {
                payload: 100,
                window: 4,
                rate: 0,
                duration: Duration::from_secs(20),
                refresh: true,
            };
            run::drive(allocations, load, 0, Instant::now(), &progress, &load_stop)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while progress.received.load(Ordering::Relaxed) < 1_000 {
        assert!(Instant::now() < deadline, "the load did not get going");
        std::thread::sleep(Duration::from_millis(20));
    }
    relay.kill_9();
    let before = progress.received.load(Ordering::Relaxed);
    load_stop.store(true, Ordering::Relaxed);
    let _ = load.join().unwrap();
    eprintln!("{before} round trips before kill -9");

    // The same ports, at once: every relayed port bound again, on both families.
    let again = Relay::start_on(relay.ports, relay.relay_ports, &[]);
    let (v4, v6) = bound_udp_ports(again.pid());
    let missing: Vec<u16> = range
        .iter()
        .filter(|port| !v4.contains(port) || !v6.contains(port))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "relayed ports not bound again: {missing:?}"
    );
    assert!(v4.contains(&again.listen_port) && v6.contains(&again.listen_port));
    again.metric_until("turnpike_allocations", |count| count == 0);

    // And it relays, for new allocations on as many ports as the first had.
    let fresh = allocations(server, peer, "after", 8);
    assert!(
        fresh
            .iter()
            .all(|(_, allocation)| range.contains(&allocation.relayed.port()))
    );
    assert_relays_without_loss(fresh, 2);
    stop.store(true, Ordering::Relaxed);
}

/// Floods ChannelData from `victim` (whose channel leads to a peer the relay cannot deliver to)
/// until `stop`: 16 datagrams a millisecond at most. Returns the number sent.
fn flood(victim: Allocation, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut message = CHANNEL.to_be_bytes().to_vec();
        message.extend_from_slice(&100_u16.to_be_bytes());
        message.extend_from_slice(&[0x5a; 100]);
        let mut sent = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            for _ in 0..16 {
                if victim.socket.send_to(&message, victim.server).is_ok() {
                    sent += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        sent
    })
}

/// Relays through two allocations to a working echo peer while a third floods a peer the
/// relay cannot deliver to; returns what the flood sent and the datagrams relayed to peers.
fn others_relay_without_loss(relay: &Relay, bad_peer: SocketAddr) -> (u64, u64) {
    let server: SocketAddr = relay.server("127.0.0.1").parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let peer = common::echo_peer(&stop);
    // All from 127.0.0.1: one relay thread serves the victim and the others.
    let victim = common::allocate(server, bad_peer, "victim").unwrap();
    let healthy = allocations(server, peer, "healthy", 2);
    let flooding = flood(victim, Arc::clone(&stop));
    // Let the fault build up (ICMP errors, a full buffer) before measuring.
    std::thread::sleep(Duration::from_millis(300));
    let relayed = assert_relays_without_loss(healthy, 3);
    stop.store(true, Ordering::Relaxed);
    let flooded = flooding.join().unwrap();
    let to_peers = relay.metric_until(
        "turnpike_relayed_packets_total{direction=\"client_to_peer\"}",
        |count| count >= relayed,
    );
    eprintln!("flooded {flooded}; the relay sent {to_peers} datagrams to peers");
    assert!(flooded > 1_000, "the flood ran: {flooded}");
    (flooded, to_peers)
}

#[test]
fn a_peer_that_answers_port_unreachable_costs_the_others_nothing() {
    let relay = Relay::start(&[]);
    // A port nobody listens on: the kernel answers each datagram with ICMP port unreachable.
    let dead = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let unreachable_before = snmp("Icmp", "OutDestUnreachs");
    let (flooded, to_peers) = others_relay_without_loss(&relay, dead);
    // The fault happened: the kernel answered (some, it rate-limits ICMP) with unreachables.
    let unreachable = snmp("Icmp", "OutDestUnreachs") - unreachable_before;
    eprintln!("ICMP destination unreachable sent: {unreachable}");
    assert!(unreachable > 0, "no ICMP port unreachable was sent");
    // The relay kept sending to the dead peer (it did not give up on the allocation either).
    assert!(to_peers >= flooded / 2, "{to_peers} of {flooded}");
    // The relay's relayed sockets are unconnected: ICMP errors do not reach them, and so
    // cannot disturb them either (whatever it counts, it must keep relaying, as above).
    eprintln!(
        "socket errors: {}",
        relay.metric("turnpike_socket_errors_total")
    );
    assert_eq!(relay.metric("turnpike_allocations"), 3);
}

#[test]
fn a_peer_that_does_not_read_costs_the_others_nothing() {
    let relay = Relay::start(&[]);
    // A peer with the smallest receive buffer the kernel allows, never read: it fills at once
    // and the kernel drops the rest at its end.
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let size: libc::c_int = 1;
    // SAFETY: setsockopt(2) on a socket this test owns, with a c_int option value.
    let result = unsafe {
        libc::setsockopt(
            sink.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::from_ref(&size).cast(),
            libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap(),
        )
    };
    assert_eq!(result, 0, "SO_RCVBUF");
    let sink_port = sink.local_addr().unwrap().port();
    let drops = || {
        udp_rows("/proc/net/udp")
            .into_iter()
            .find(|row| row.port == sink_port)
            .map_or(0, |row| row.drops)
    };
    let (flooded, to_peers) = others_relay_without_loss(&relay, sink.local_addr().unwrap());
    let dropped = drops();
    eprintln!("the sink dropped {dropped} datagrams");
    assert!(dropped > 0, "the sink's buffer filled (the fault happened)");
    assert!(to_peers >= flooded / 2, "{to_peers} of {flooded}");
    assert_eq!(relay.metric("turnpike_allocations"), 3);
    drop(sink);
}
