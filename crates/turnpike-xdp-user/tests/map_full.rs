//! A full channel map (the test program's maps hold 1,024 bindings, `common::load_relay`): the
//! binding that does not fit is refused whole, its datagrams go up to user space unchanged
//! (which still holds the binding and relays it), the bindings that fit keep being relayed in
//! the kernel, a refresh of one of them still succeeds, and the refused one fits once another
//! leaves. The daemon counts each refusal in `turnpike_xdp_map_errors_total`
//! (`crates/turnpike/src/shard.rs`).
//!
//! Needs root and `TURNPIKE_XDP_ELF` (see `common::load_relay`).

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is how a test reports a failure"
)]

mod common;

use std::net::SocketAddr;

use common::{CLIENT_MAC, IpFields, RELAY_MAC, channel_data, load_relay, payload, udp_frame};
use turnpike_proto::{AddressFamily, ChannelNumber};
use turnpike_relay::{ChannelRoute, FiveTuple, RelaySocket};
use turnpike_xdp_user::{OwnAddresses, Program, XdpAction, XdpConfig, XdpError};

/// `max_channels` of `common::load_relay`.
const CAPACITY: u16 = 1024;
const CHANNEL: u16 = 0x4001;
const RELAY_PORT: u16 = 50000;

fn listen() -> SocketAddr {
    "192.0.2.1:3478".parse().unwrap()
}

/// Binding `index`: its own client port, and its own peer port behind one relayed port.
fn route(index: u16) -> ChannelRoute {
    ChannelRoute {
        client: FiveTuple::udp(
            SocketAddr::new("198.51.100.10".parse().unwrap(), 20_000 + index),
            listen(),
        ),
        channel: ChannelNumber::new(CHANNEL).unwrap(),
        relay: RelaySocket {
            port: RELAY_PORT,
            family: AddressFamily::V4,
        },
        peer: SocketAddr::new("203.0.113.20".parse().unwrap(), 5_000 + index),
    }
}

/// ChannelData from binding `index`'s client, as it arrives.
fn from_client(index: u16) -> Vec<u8> {
    udp_frame(
        RELAY_MAC,
        CLIENT_MAC,
        route(index).client.client,
        listen(),
        IpFields::default(),
        &channel_data(CHANNEL, &payload(40), 0),
        true,
    )
}

/// A datagram from binding `index`'s peer to the relayed port, as it arrives.
fn from_peer(index: u16) -> Vec<u8> {
    udp_frame(
        RELAY_MAC,
        CLIENT_MAC,
        route(index).peer,
        SocketAddr::new(listen().ip(), RELAY_PORT),
        IpFields::default(),
        &payload(40),
        true,
    )
}

#[test]
fn a_binding_beyond_a_full_channel_map_is_refused_whole_and_left_to_user_space() {
    let Some(relay) = load_relay() else {
        return;
    };
    relay.configure(XdpConfig::new(3478, 49152, 65535)).unwrap();
    relay
        .set_own_addresses(OwnAddresses::new(Some("192.0.2.1".parse().unwrap()), None))
        .unwrap();
    for index in 0..CAPACITY {
        relay
            .install_channel(&route(index))
            .unwrap_or_else(|error| panic!("binding {index} of {CAPACITY}: {error}"));
    }
    assert_eq!(relay.channel_count().unwrap(), usize::from(CAPACITY));

    // One more does not fit: an error the daemon counts, and no half of it in either map.
    let error = relay.install_channel(&route(CAPACITY)).unwrap_err();
    assert!(matches!(error, XdpError::Map { .. }), "{error:?}");
    assert_eq!(relay.channel_count().unwrap(), usize::from(CAPACITY));
    for frame in [from_client(CAPACITY), from_peer(CAPACITY)] {
        let output = relay.test_run(Program::Relay, &frame).unwrap();
        assert_eq!(output.action, XdpAction::Pass, "up to user space");
        assert_eq!(output.frame, frame, "unchanged");
    }

    // Those that fit are still relayed in the kernel, first, middle and last.
    for index in [0, CAPACITY / 2, CAPACITY - 1] {
        for frame in [from_client(index), from_peer(index)] {
            let output = relay.test_run(Program::Relay, &frame).unwrap();
            assert_eq!(
                output.action,
                XdpAction::Tx,
                "binding {index} in the kernel"
            );
        }
    }

    // A refresh re-installs an existing binding: it must not fail (nor drop it) when full.
    relay.install_channel(&route(7)).unwrap();
    let output = relay.test_run(Program::Relay, &from_client(7)).unwrap();
    assert_eq!(
        output.action,
        XdpAction::Tx,
        "refreshed binding still relayed"
    );
    assert_eq!(relay.channel_count().unwrap(), usize::from(CAPACITY));

    // Once one leaves, the refused binding fits (its next refresh installs it).
    relay.remove_channel(&route(3)).unwrap();
    relay.install_channel(&route(CAPACITY)).unwrap();
    for frame in [from_client(CAPACITY), from_peer(CAPACITY)] {
        let output = relay.test_run(Program::Relay, &frame).unwrap();
        assert_eq!(output.action, XdpAction::Tx, "now in the kernel");
    }
    let output = relay.test_run(Program::Relay, &from_client(3)).unwrap();
    assert_eq!(output.action, XdpAction::Pass, "the removed one is gone");
}
