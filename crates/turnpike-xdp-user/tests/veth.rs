//! Real datagrams through the attached program: a veth pair between two network namespaces,
//! the relay program in native mode on one end, real UDP sockets for a client and its peers on
//! the other. No user-space relay runs: whatever arrives was relayed by the kernel program.
//!
//! ```text
//!  thread "outside" namespace                      test thread namespace
//!  client 198.51.100.10:40000  ─┐                ┌─ tp-relay: 192.0.2.1, 2001:db8:1::1
//!  peer   203.0.113.20:5000     ├── tp-outside ──┤   turnpike_relay (driver mode)
//!  peer   [2001:db8:2::20]:5000 ┘  turnpike_pass └─
//! ```
//!
//! Both ends have transmit checksum offload off, as on a real wire (see toolchain.md: a veth
//! otherwise carries partial checksums that an XDP rewrite cannot fix). Needs root, `ip`,
//! `ethtool` and `TURNPIKE_XDP_ELF`.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is how a test reports a failure"
)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::time::Duration;

use common::{channel_data, load_relay, private_namespace, run_command};
use turnpike_proto::{AddressFamily, ChannelNumber};
use turnpike_relay::{ChannelRoute, FiveTuple, RelaySocket};
use turnpike_xdp_user::{AttachMode, Outcome, Program, XdpConfig, discover};

fn route(client: &str, channel: u16, relay_port: u16, peer: &str) -> ChannelRoute {
    let peer: SocketAddr = peer.parse().unwrap();
    ChannelRoute {
        client: FiveTuple::udp(client.parse().unwrap(), "192.0.2.1:3478".parse().unwrap()),
        channel: ChannelNumber::new(channel).unwrap(),
        relay: RelaySocket {
            port: relay_port,
            family: AddressFamily::of(peer.ip()),
        },
        peer,
    }
}

/// What the outside thread saw.
#[derive(Debug)]
struct Seen {
    /// (payload, source) at the peer for each client datagram.
    at_peer: Vec<(Vec<u8>, SocketAddr)>,
    /// (datagram, source) at the client for each peer datagram.
    at_client: Vec<(Vec<u8>, SocketAddr)>,
}

fn receive(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buffer = [0u8; 2048];
    let (len, from) = socket
        .recv_from(&mut buffer)
        .expect("a relayed datagram arrives");
    (buffer[..len].to_vec(), from)
}

/// The outside namespace: sets up its end once the test thread has moved it in, then plays
/// client and peers.
fn outside(ready: mpsc::Receiver<()>, done: mpsc::Sender<Seen>) {
    ready.recv().unwrap();
    let Some(mut pass) = load_relay() else { return };
    run_command("ip", &["link", "set", "tp-outside", "up"]);
    run_command("ethtool", &["-K", "tp-outside", "tx", "off"]);
    run_command(
        "ip",
        &["address", "add", "198.51.100.10/24", "dev", "tp-outside"],
    );
    run_command(
        "ip",
        &["address", "add", "203.0.113.20/24", "dev", "tp-outside"],
    );
    run_command(
        "ip",
        &[
            "address",
            "add",
            "2001:db8:2::20/64",
            "dev",
            "tp-outside",
            "nodad",
        ],
    );
    run_command("ip", &["route", "add", "192.0.2.0/24", "dev", "tp-outside"]);
    run_command(
        "ip",
        &["route", "add", "2001:db8:1::/64", "dev", "tp-outside"],
    );
    // XDP_TX from the relay end is only delivered here if this end runs an XDP program.
    pass.attach_program(Program::Pass, "tp-outside", AttachMode::Driver)
        .unwrap();

    let timeout = Some(Duration::from_secs(3));
    let client = UdpSocket::bind("198.51.100.10:40000").unwrap();
    let peer4 = UdpSocket::bind("203.0.113.20:5000").unwrap();
    let peer6 = UdpSocket::bind("[2001:db8:2::20]:5000").unwrap();
    for socket in [&client, &peer4, &peer6] {
        socket.set_read_timeout(timeout).unwrap();
    }
    let listen: SocketAddr = "192.0.2.1:3478".parse().unwrap();
    let mut seen = Seen {
        at_peer: Vec::new(),
        at_client: Vec::new(),
    };
    // IPv4 client to IPv4 peer and back, then to the IPv6 peer and back (translated).
    for (channel, peer, relayed) in [
        (0x4001u16, &peer4, "192.0.2.1:50000"),
        (0x4002, &peer6, "[2001:db8:1::1]:50002"),
    ] {
        let request = format!("to peer on {channel:#06x}, odd length");
        client
            .send_to(&channel_data(channel, request.as_bytes(), 3), listen)
            .unwrap();
        seen.at_peer.push(receive(peer));
        let relayed: SocketAddr = relayed.parse().unwrap();
        peer.send_to(format!("reply on {channel:#06x}").as_bytes(), relayed)
            .unwrap();
        seen.at_client.push(receive(&client));
    }
    done.send(seen).unwrap();
}

#[test]
fn datagrams_cross_a_veth_through_the_kernel_program() {
    let Some(mut relay) = load_relay() else {
        return;
    };
    if !private_namespace() {
        return;
    }
    let (tid_tx, tid_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let other = std::thread::spawn(move || {
        if !private_namespace() {
            return;
        }
        // SAFETY: `gettid` has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        outside(ready_rx, done_tx);
    });
    let tid = tid_rx.recv().unwrap().to_string();

    run_command(
        "ip",
        &[
            "link",
            "add",
            "tp-relay",
            "type",
            "veth",
            "peer",
            "name",
            "tp-outside",
            "netns",
            &tid,
        ],
    );
    run_command("ip", &["link", "set", "tp-relay", "up"]);
    run_command("ethtool", &["-K", "tp-relay", "tx", "off"]);
    run_command("ip", &["address", "add", "192.0.2.1/24", "dev", "tp-relay"]);
    run_command(
        "ip",
        &[
            "address",
            "add",
            "2001:db8:1::1/64",
            "dev",
            "tp-relay",
            "nodad",
        ],
    );

    relay.configure(XdpConfig::new(3478, 49152, 65535)).unwrap();
    // Discovered, not configured: the interface's unicast addresses.
    let own = discover::own_addresses("tp-relay", &[]).unwrap();
    assert_eq!(own.ipv4(), Some("192.0.2.1".parse().unwrap()));
    assert_eq!(own.ipv6(), Some("2001:db8:1::1".parse().unwrap()));
    relay.set_own_addresses(own).unwrap();
    relay
        .install_channel(&route(
            "198.51.100.10:40000",
            0x4001,
            50000,
            "203.0.113.20:5000",
        ))
        .unwrap();
    relay
        .install_channel(&route(
            "198.51.100.10:40000",
            0x4002,
            50002,
            "[2001:db8:2::20]:5000",
        ))
        .unwrap();
    relay.attach("tp-relay", AttachMode::Driver).unwrap();
    ready_tx.send(()).unwrap();

    let seen = done_rx.recv_timeout(Duration::from_secs(20));
    other.join().unwrap();
    let seen = seen.expect("the outside thread reports what it saw");

    assert_eq!(
        seen.at_peer,
        vec![
            (
                b"to peer on 0x4001, odd length".to_vec(),
                "192.0.2.1:50000".parse().unwrap()
            ),
            (
                b"to peer on 0x4002, odd length".to_vec(),
                "[2001:db8:1::1]:50002".parse().unwrap()
            ),
        ]
    );
    let listen: SocketAddr = "192.0.2.1:3478".parse().unwrap();
    assert_eq!(
        seen.at_client,
        vec![
            (channel_data(0x4001, b"reply on 0x4001", 0), listen),
            (channel_data(0x4002, b"reply on 0x4002", 0), listen),
        ]
    );
    let counters = relay.counters().unwrap();
    for outcome in [
        Outcome::ClientToPeer4To4,
        Outcome::PeerToClient4To4,
        Outcome::ClientToPeer4To6,
        Outcome::PeerToClient6To4,
    ] {
        assert_eq!(counters.get(outcome).packets, 1, "{outcome}: {counters:?}");
    }
}
