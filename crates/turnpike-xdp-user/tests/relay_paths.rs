//! The relay program under `BPF_PROG_TEST_RUN`: every direction and family pair relayed byte for
//! byte as the user-space relay would send it, in each way of resizing the frame (`AdjustMode`:
//! at the head, at the tail, auto), and every reason to pass a frame up, with the frame
//! unchanged and its counter counted.
//!
//! Needs root and `TURNPIKE_XDP_ELF` (see `common::load_relay`).

#![expect(
    clippy::unwrap_used,
    reason = "test code: a panic is how a test reports a failure"
)]
#![expect(
    clippy::wrong_self_convention,
    reason = "`from_client` and `to_peer` say where a frame comes from and goes; no conversion"
)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use common::{
    CLIENT_MAC, IpFields, RELAY_MAC, assert_checksums_valid, channel_data, load_relay, payload,
    private_namespace, run_command, udp_frame,
};
use turnpike_proto::{AddressFamily, ChannelNumber, ChannelRange};
use turnpike_relay::{ChannelRoute, FiveTuple, RelaySocket};
use turnpike_xdp_common::ClientChannel;
use turnpike_xdp_user::{
    AdjustMode, Outcome, OwnAddresses, Program, TestOutput, XdpAction, XdpConfig, XdpRelay,
};

const LISTEN_PORT: u16 = 3478;
/// Every way of resizing a frame; each relayed path is checked in all of them.
const MODES: [AdjustMode; 3] = [AdjustMode::Head, AdjustMode::Tail, AdjustMode::Auto];
const CHANNEL: u16 = 0x4001;
const TTL: u8 = 61;
const HOP_LIMIT: u8 = 62;

fn addr(text: &str) -> SocketAddr {
    SocketAddr::from_str(text).unwrap()
}

fn ip(text: &str) -> IpAddr {
    IpAddr::from_str(text).unwrap()
}

/// The addresses of one binding between a client of one family and a peer of another (or the
/// same).
#[derive(Debug, Clone, Copy)]
struct Scenario {
    client: SocketAddr,
    /// The relay's listening address the client talks to.
    listen: SocketAddr,
    /// The relay's relayed address the peer talks to.
    relayed: SocketAddr,
    peer: SocketAddr,
    /// The channel number of the binding.
    channel: u16,
}

impl Scenario {
    fn new(client_v6: bool, peer_v6: bool) -> Self {
        let (client, listen) = if client_v6 {
            (addr("[2001:db8:c::10]:40000"), addr("[2001:db8:1::1]:3478"))
        } else {
            (addr("198.51.100.10:40000"), addr("192.0.2.1:3478"))
        };
        let (peer, relayed) = if peer_v6 {
            (addr("[2001:db8:2::20]:5000"), addr("[2001:db8:1::1]:50000"))
        } else {
            (addr("203.0.113.20:5000"), addr("192.0.2.1:50000"))
        };
        Self {
            client,
            listen,
            relayed,
            peer,
            channel: CHANNEL,
        }
    }

    fn route(&self) -> ChannelRoute {
        ChannelRoute {
            client: FiveTuple::udp(self.client, self.listen),
            channel: ChannelNumber::new_in(self.channel, ChannelRange::Rfc5766).unwrap(),
            relay: RelaySocket {
                port: self.relayed.port(),
                family: AddressFamily::of(self.peer.ip()),
            },
            peer: self.peer,
        }
    }

    /// ChannelData from the client, as it arrives.
    fn from_client(&self, data: &[u8], padding: usize, fields: IpFields) -> Vec<u8> {
        udp_frame(
            RELAY_MAC,
            CLIENT_MAC,
            self.client,
            self.listen,
            fields,
            &channel_data(self.channel, data, padding),
            true,
        )
    }

    /// The datagram to the peer the relay must send for it.
    fn to_peer(&self, data: &[u8], input: IpFields) -> Vec<u8> {
        udp_frame(
            CLIENT_MAC,
            RELAY_MAC,
            self.relayed,
            self.peer,
            expected_fields(self.client.is_ipv6(), self.peer.is_ipv6(), input),
            data,
            true,
        )
    }

    /// A datagram from the peer, as it arrives.
    fn from_peer(&self, data: &[u8], fields: IpFields) -> Vec<u8> {
        udp_frame(
            RELAY_MAC,
            CLIENT_MAC,
            self.peer,
            self.relayed,
            fields,
            data,
            true,
        )
    }

    /// The ChannelData datagram to the client the relay must send for it.
    fn to_client(&self, data: &[u8], input: IpFields) -> Vec<u8> {
        udp_frame(
            CLIENT_MAC,
            RELAY_MAC,
            self.listen,
            self.client,
            expected_fields(self.peer.is_ipv6(), self.client.is_ipv6(), input),
            &channel_data(self.channel, data, 0),
            true,
        )
    }
}

/// The IP fields of a relayed datagram, by the rules of `relay.rs`: traffic class copied, TTL or
/// hop limit from the configuration, flow label zero, IPv4 identification and DF copied from
/// IPv4 and zero / set from IPv6.
fn expected_fields(in_v6: bool, out_v6: bool, input: IpFields) -> IpFields {
    IpFields {
        traffic_class: input.traffic_class,
        hop_limit: if out_v6 { HOP_LIMIT } else { TTL },
        id: if in_v6 { 0 } else { input.id },
        dont_fragment: if in_v6 { true } else { input.dont_fragment },
        flow_label: 0,
    }
}

/// The test configuration, resizing frames as `mode` says.
fn config(mode: AdjustMode) -> XdpConfig {
    XdpConfig::new(LISTEN_PORT, 49152, 65535)
        .with_hop_limits(TTL, HOP_LIMIT)
        .with_adjust_mode(mode)
}

/// A relay with the test configuration, both own addresses, and the scenario's binding.
fn relay_with(scenario: &Scenario) -> Option<XdpRelay> {
    relay_in(scenario, AdjustMode::Head)
}

/// [`relay_with`], resizing frames as `mode` says.
fn relay_in(scenario: &Scenario, mode: AdjustMode) -> Option<XdpRelay> {
    let relay = load_relay()?;
    relay.configure(config(mode)).unwrap();
    relay
        .set_own_addresses(OwnAddresses::new(
            Some("192.0.2.1".parse().unwrap()),
            Some("2001:db8:1::1".parse().unwrap()),
        ))
        .unwrap();
    relay.install_channel(&scenario.route()).unwrap();
    Some(relay)
}

fn run(relay: &XdpRelay, frame: &[u8]) -> TestOutput {
    relay.test_run(Program::Relay, frame).unwrap()
}

/// Asserts the relay sent `expected` and counted it under `outcome`.
fn assert_relayed(relay: &XdpRelay, input: &[u8], expected: &[u8], outcome: Outcome) {
    let output = run(relay, input);
    assert_eq!(output.action, XdpAction::Tx, "{outcome}: action");
    assert_checksums_valid(&output.frame);
    assert_eq!(hex(&output.frame), hex(expected), "{outcome}: frame");
    let counters = relay.counters().unwrap();
    assert_eq!(counters.get(outcome).packets, 1, "{outcome}: counter");
    assert_eq!(
        counters.get(outcome).bytes,
        input.len() as u64,
        "{outcome}: bytes"
    );
    assert_eq!(
        counters.relayed().packets,
        1,
        "{outcome}: nothing else relayed"
    );
    assert_eq!(counters.passed().packets, 0, "{outcome}: nothing passed");
}

/// Asserts the relay passed `input` up unchanged and counted it under `outcome`.
fn assert_passed(relay: &XdpRelay, input: &[u8], outcome: Outcome) {
    let output = run(relay, input);
    assert_eq!(output.action, XdpAction::Pass, "{outcome}: action");
    assert_eq!(
        hex(&output.frame),
        hex(input),
        "{outcome}: frame must be unchanged"
    );
    let counters = relay.counters().unwrap();
    assert_eq!(
        counters.get(outcome).packets,
        1,
        "{outcome}: counter; all: {counters:?}"
    );
    assert_eq!(counters.passed().packets, 1, "{outcome}: counted once");
    assert_eq!(counters.relayed().packets, 0, "{outcome}: nothing relayed");
}

/// Frames as hex lines of 16 bytes, so a mismatch shows where.
fn hex(frame: &[u8]) -> String {
    frame
        .chunks(16)
        .map(|line| {
            line.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn client_to_peer(client_v6: bool, peer_v6: bool, outcome: Outcome) {
    let scenario = Scenario::new(client_v6, peer_v6);
    for mode in MODES {
        let Some(relay) = relay_in(&scenario, mode) else {
            return;
        };
        let data = payload(101);
        let input = scenario.from_client(&data, 0, IpFields::default());
        let expected = scenario.to_peer(&data, IpFields::default());
        assert_relayed(&relay, &input, &expected, outcome);
        // The head never refuses under BPF_PROG_TEST_RUN.
        assert_eq!(relay.counters().unwrap().head_refused(), 0, "{mode:?}");
    }
}

fn peer_to_client(client_v6: bool, peer_v6: bool, outcome: Outcome) {
    let scenario = Scenario::new(client_v6, peer_v6);
    for mode in MODES {
        let Some(relay) = relay_in(&scenario, mode) else {
            return;
        };
        let data = payload(101);
        let input = scenario.from_peer(&data, IpFields::default());
        let expected = scenario.to_client(&data, IpFields::default());
        assert_relayed(&relay, &input, &expected, outcome);
        assert_eq!(relay.counters().unwrap().head_refused(), 0, "{mode:?}");
    }
}

#[test]
fn channel_data_from_an_ipv4_client_goes_to_an_ipv4_peer() {
    client_to_peer(false, false, Outcome::ClientToPeer4To4);
}

#[test]
fn channel_data_from_an_ipv4_client_goes_to_an_ipv6_peer() {
    client_to_peer(false, true, Outcome::ClientToPeer4To6);
}

#[test]
fn channel_data_from_an_ipv6_client_goes_to_an_ipv4_peer() {
    client_to_peer(true, false, Outcome::ClientToPeer6To4);
}

#[test]
fn channel_data_from_an_ipv6_client_goes_to_an_ipv6_peer() {
    client_to_peer(true, true, Outcome::ClientToPeer6To6);
}

#[test]
fn data_from_an_ipv4_peer_goes_to_an_ipv4_client() {
    peer_to_client(false, false, Outcome::PeerToClient4To4);
}

#[test]
fn data_from_an_ipv6_peer_goes_to_an_ipv4_client() {
    peer_to_client(false, true, Outcome::PeerToClient6To4);
}

#[test]
fn data_from_an_ipv4_peer_goes_to_an_ipv6_client() {
    peer_to_client(true, false, Outcome::PeerToClient4To6);
}

#[test]
fn data_from_an_ipv6_peer_goes_to_an_ipv6_client() {
    peer_to_client(true, true, Outcome::PeerToClient6To6);
}

#[test]
fn padded_channel_data_is_relayed_without_its_padding() {
    // Every padding length, payload lengths of every parity, both output families, so that the
    // padding bytes land in both halves of a checksum word.
    for (peer_v6, mode) in [false, true]
        .into_iter()
        .flat_map(|v6| MODES.map(|mode| (v6, mode)))
    {
        for len in [1usize, 2, 3, 5, 6, 7, 100] {
            let padding = (4 - len % 4) % 4;
            let scenario = Scenario::new(false, peer_v6);
            let Some(relay) = relay_in(&scenario, mode) else {
                return;
            };
            let data = payload(len);
            let input = scenario.from_client(&data, padding, IpFields::default());
            let expected = scenario.to_peer(&data, IpFields::default());
            assert_relayed(
                &relay,
                &input,
                &expected,
                Outcome::client_to_peer(false, peer_v6),
            );
        }
    }
}

#[test]
fn short_frames_lose_their_ethernet_padding() {
    // A 2-byte payload makes frames under the 60-byte Ethernet minimum; the sender pads them
    // with zeros after the IP packet, and the relayed frame must end where its IP packet ends.
    let scenario = Scenario::new(false, false);
    for mode in MODES {
        let Some(relay) = relay_in(&scenario, mode) else {
            return;
        };
        let data = payload(2);
        let mut input = scenario.from_peer(&data, IpFields::default());
        input.resize(60, 0);
        let expected = scenario.to_client(&data, IpFields::default());
        assert_relayed(&relay, &input, &expected, Outcome::PeerToClient4To4);

        let Some(relay) = relay_in(&scenario, mode) else {
            return;
        };
        let mut input = scenario.from_client(&data, 2, IpFields::default());
        input.resize(60, 0);
        let expected = scenario.to_peer(&data, IpFields::default());
        assert_relayed(&relay, &input, &expected, Outcome::ClientToPeer4To4);
    }
}

#[test]
fn payloads_across_every_chunk_boundary_move_intact_at_the_tail() {
    // At the tail the payload is copied in 256-byte chunks: lengths around one and two chunks
    // and up to a full-size datagram, both directions, all four family pairs.
    for (client_v6, peer_v6) in [(false, false), (false, true), (true, false), (true, true)] {
        let scenario = Scenario::new(client_v6, peer_v6);
        for len in [1usize, 255, 256, 257, 511, 512, 513, 1000, 1200, 1400] {
            let data = payload(len);
            let padding = (4 - len % 4) % 4;
            let Some(relay) = relay_in(&scenario, AdjustMode::Tail) else {
                return;
            };
            assert_relayed(
                &relay,
                &scenario.from_client(&data, padding, IpFields::default()),
                &scenario.to_peer(&data, IpFields::default()),
                Outcome::client_to_peer(client_v6, peer_v6),
            );
            let Some(relay) = relay_in(&scenario, AdjustMode::Tail) else {
                return;
            };
            assert_relayed(
                &relay,
                &scenario.from_peer(&data, IpFields::default()),
                &scenario.to_client(&data, IpFields::default()),
                Outcome::peer_to_client(peer_v6, client_v6),
            );
        }
    }
}

#[test]
fn auto_settles_on_the_head_once_the_driver_moved_it() {
    // A shrinking frame (client to peer, one family) says nothing about the driver: it is
    // resized at the tail, and auto stays unsettled.
    let scenario = Scenario::new(false, false);
    let Some(relay) = relay_in(&scenario, AdjustMode::Auto) else {
        return;
    };
    let data = payload(64);
    assert_relayed(
        &relay,
        &scenario.from_client(&data, 0, IpFields::default()),
        &scenario.to_peer(&data, IpFields::default()),
        Outcome::ClientToPeer4To4,
    );
    let counters = relay.counters().unwrap();
    assert_eq!((counters.head_refused(), counters.head_grew()), (0, 0));
    assert_eq!(relay.settle_adjust_mode(&counters).unwrap(), None);
    assert_eq!(
        relay.configuration().unwrap().adjust_mode(),
        AdjustMode::Auto
    );

    // A growing one (peer to client) moves the head, which BPF_PROG_TEST_RUN always allows:
    // counted, and auto settles on the head.
    let output = run(&relay, &scenario.from_peer(&data, IpFields::default()));
    assert_eq!(output.action, XdpAction::Tx);
    assert_eq!(
        hex(&output.frame),
        hex(&scenario.to_client(&data, IpFields::default()))
    );
    let counters = relay.counters().unwrap();
    assert_eq!((counters.head_refused(), counters.head_grew()), (0, 1));
    assert_eq!(
        relay.settle_adjust_mode(&counters).unwrap(),
        Some(AdjustMode::Head)
    );
    assert_eq!(
        relay.configuration().unwrap().adjust_mode(),
        AdjustMode::Head
    );
    assert_eq!(relay.counters().unwrap().adjust_mode(), AdjustMode::Head);
    // Settled: never again, not even from other counters.
    assert_eq!(relay.settle_adjust_mode(&counters).unwrap(), None);
}

#[test]
fn empty_payloads_are_relayed_both_ways() {
    let pairs = [(false, false), (false, true), (true, false), (true, true)];
    for (client_v6, peer_v6, mode) in pairs
        .into_iter()
        .flat_map(|(c, p)| MODES.map(|mode| (c, p, mode)))
    {
        let scenario = Scenario::new(client_v6, peer_v6);
        let Some(relay) = relay_in(&scenario, mode) else {
            return;
        };
        let input = scenario.from_client(&[], 0, IpFields::default());
        let expected = scenario.to_peer(&[], IpFields::default());
        assert_relayed(
            &relay,
            &input,
            &expected,
            Outcome::client_to_peer(client_v6, peer_v6),
        );

        let Some(relay) = relay_in(&scenario, mode) else {
            return;
        };
        let input = scenario.from_peer(&[], IpFields::default());
        let expected = scenario.to_client(&[], IpFields::default());
        assert_relayed(
            &relay,
            &input,
            &expected,
            Outcome::peer_to_client(peer_v6, client_v6),
        );
    }
}

#[test]
fn ipv4_fields_are_carried_over_as_the_rules_say() {
    // DF clear and a different TOS and identification must survive IPv4 to IPv4.
    let fields = IpFields {
        traffic_class: 0x02,
        hop_limit: 1,
        id: 0xbeef,
        dont_fragment: false,
        flow_label: 0,
    };
    let scenario = Scenario::new(false, false);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let data = payload(33);
    let input = scenario.from_client(&data, 3, fields);
    let expected = scenario.to_peer(&data, fields);
    assert_relayed(&relay, &input, &expected, Outcome::ClientToPeer4To4);
}

#[test]
fn ipv4_without_checksum_stays_without_one_to_ipv4() {
    let scenario = Scenario::new(false, false);
    let data = payload(20);

    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let message = channel_data(CHANNEL, &data, 0);
    let input = udp_frame(
        RELAY_MAC,
        CLIENT_MAC,
        scenario.client,
        scenario.listen,
        IpFields::default(),
        &message,
        false,
    );
    let fields = expected_fields(false, false, IpFields::default());
    let expected = udp_frame(
        CLIENT_MAC,
        RELAY_MAC,
        scenario.relayed,
        scenario.peer,
        fields,
        &data,
        false,
    );
    assert_relayed(&relay, &input, &expected, Outcome::ClientToPeer4To4);

    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let input = udp_frame(
        RELAY_MAC,
        CLIENT_MAC,
        scenario.peer,
        scenario.relayed,
        IpFields::default(),
        &data,
        false,
    );
    let expected = udp_frame(
        CLIENT_MAC,
        RELAY_MAC,
        scenario.listen,
        scenario.client,
        fields,
        &message,
        false,
    );
    assert_relayed(&relay, &input, &expected, Outcome::PeerToClient4To4);
}

#[test]
fn a_corrupt_datagram_keeps_a_wrong_checksum() {
    // The update is incremental: a payload corrupted on the way in must not leave with a checksum
    // that vouches for it.
    let scenario = Scenario::new(false, true);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let data = payload(64);
    let mut input = scenario.from_peer(&data, IpFields::default());
    let last = input.len() - 1;
    input[last] ^= 0x55;
    let output = run(&relay, &input);
    assert_eq!(output.action, XdpAction::Tx);
    let result = std::panic::catch_unwind(|| assert_checksums_valid(&output.frame));
    assert!(
        result.is_err(),
        "the corrupted payload got a valid checksum"
    );
}

// ---- Bindings ------------------------------------------------------------------------------

#[test]
fn removed_channel_goes_to_user_space_in_both_directions() {
    let scenario = Scenario::new(false, false);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    relay.remove_channel(&scenario.route()).unwrap();
    assert_eq!(relay.channel_count().unwrap(), 0);
    // Removing twice is not an error.
    relay.remove_channel(&scenario.route()).unwrap();
    let input = scenario.from_client(&payload(10), 2, IpFields::default());
    assert_passed(&relay, &input, Outcome::NoChannel);
}

#[test]
fn rebinding_a_channel_to_another_peer_forgets_the_old_peer() {
    let scenario = Scenario::new(false, false);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let mut moved = scenario;
    moved.peer = addr("203.0.113.99:6000");
    relay.install_channel(&moved.route()).unwrap();
    assert_eq!(relay.channel_count().unwrap(), 1);
    // The old peer no longer reaches the client through the channel.
    let input = scenario.from_peer(&payload(10), IpFields::default());
    assert_passed(&relay, &input, Outcome::NoPeerBinding);
}

#[test]
fn reinstalling_the_same_channel_is_idempotent() {
    let scenario = Scenario::new(true, false);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    relay.install_channel(&scenario.route()).unwrap();
    relay.install_channel(&scenario.route()).unwrap();
    assert_eq!(relay.channel_count().unwrap(), 1);
    let data = payload(7);
    let input = scenario.from_peer(&data, IpFields::default());
    let expected = scenario.to_client(&data, IpFields::default());
    assert_relayed(&relay, &input, &expected, Outcome::PeerToClient4To6);
}

// ---- The caches in front of the route maps -------------------------------------------------

/// A second binding whose client shares `scenario`'s channel-cache slot, to another peer port
/// behind the same relayed port (so the two also share a peer-cache slot).
///
/// The client's address differs in its last two bytes: for one address and channel, no two
/// ports share a slot (the hash multiplies them into the top bits, which is a bijection).
fn colliding(scenario: &Scenario) -> Scenario {
    let slot = |s: &Scenario| {
        ClientChannel::new(
            s.client.ip(),
            s.client.port(),
            s.listen.ip(),
            s.listen.port(),
            CHANNEL,
        )
        .unwrap()
        .cache_index()
    };
    let mut other = *scenario;
    other.peer.set_port(scenario.peer.port() + 1);
    for (low, port) in (0..=u16::MAX).flat_map(|low| (0..4).map(move |step| (low, 40000 + step))) {
        let [a, b] = low.to_be_bytes();
        other.client.set_port(port);
        other.client.set_ip(match scenario.client.ip() {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                IpAddr::from([o[0], o[1], a, b])
            }
            IpAddr::V6(v6) => {
                let mut o = v6.octets();
                o[14] = a;
                o[15] = b;
                IpAddr::from(o)
            }
        });
        if other.client != scenario.client && slot(&other) == slot(scenario) {
            return other;
        }
    }
    panic!("no client near {} collides", scenario.client);
}

/// Asserts a datagram each way is relayed exactly as the scenario says.
fn assert_relays_both_ways(relay: &XdpRelay, scenario: &Scenario) {
    let data = payload(33);
    let output = run(relay, &scenario.from_client(&data, 0, IpFields::default()));
    assert_eq!(output.action, XdpAction::Tx, "{scenario:?}: client to peer");
    assert_eq!(
        hex(&output.frame),
        hex(&scenario.to_peer(&data, IpFields::default()))
    );
    let output = run(relay, &scenario.from_peer(&data, IpFields::default()));
    assert_eq!(output.action, XdpAction::Tx, "{scenario:?}: peer to client");
    assert_eq!(
        hex(&output.frame),
        hex(&scenario.to_client(&data, IpFields::default()))
    );
}

#[test]
fn bindings_the_caches_cannot_hold_are_relayed_from_the_route_maps() {
    for (client_v6, peer_v6) in [(false, false), (true, true), (false, true), (true, false)] {
        let scenario = Scenario::new(client_v6, peer_v6);
        let Some(relay) = relay_with(&scenario) else {
            return;
        };
        assert_eq!(relay.cached_channels(), (1, 1));
        let other = colliding(&scenario);
        relay.install_channel(&other.route()).unwrap();
        assert_eq!(relay.channel_count().unwrap(), 2);
        // Both of its slots are taken: it lives in the route maps only.
        assert_eq!(relay.cached_channels(), (1, 1));
        assert_relays_both_ways(&relay, &scenario);
        assert_relays_both_ways(&relay, &other);

        // When the holder goes, its slots empty and the other binding is still relayed.
        relay.remove_channel(&scenario.route()).unwrap();
        assert_eq!(relay.cached_channels(), (0, 0));
        assert_relays_both_ways(&relay, &other);
        let gone = run(
            &relay,
            &scenario.from_client(&payload(8), 0, IpFields::default()),
        );
        assert_eq!(gone.action, XdpAction::Pass);

        // Its next refresh moves it into the freed slots.
        relay.install_channel(&other.route()).unwrap();
        assert_eq!(relay.cached_channels(), (1, 1));
        assert_relays_both_ways(&relay, &other);
    }
}

#[test]
fn rebinding_a_channel_updates_its_cache_slots() {
    let scenario = Scenario::new(true, true);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let mut moved = scenario;
    moved.peer = addr("[2001:db8:2::99]:6000");
    relay.install_channel(&moved.route()).unwrap();
    assert_eq!(relay.cached_channels(), (1, 1));
    assert_relays_both_ways(&relay, &moved);
}

#[test]
fn a_cache_slot_is_used_only_while_its_sequence_is_even() {
    let scenario = Scenario::new(false, false);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let mut elsewhere = scenario;
    elsewhere.peer = addr("203.0.113.77:7000");
    let data = payload(20);
    let input = scenario.from_client(&data, 0, IpFields::default());
    // Odd: user space is writing the slot; the program must go to the route map instead, which
    // still has the real binding.
    relay
        .write_channel_cache_slot_for_test(&scenario.route(), &elsewhere.route(), 7)
        .unwrap();
    assert_eq!(
        hex(&run(&relay, &input).frame),
        hex(&scenario.to_peer(&data, IpFields::default()))
    );
    // Even: the slot is complete and is what the program goes by, even where the map
    // disagrees (which is why user space only ever writes the maps' own bindings into it).
    relay
        .write_channel_cache_slot_for_test(&scenario.route(), &elsewhere.route(), 8)
        .unwrap();
    assert_eq!(
        hex(&run(&relay, &input).frame),
        hex(&elsewhere.to_peer(&data, IpFields::default()))
    );
}

// ---- Reasons to pass -----------------------------------------------------------------------

#[test]
fn channel_data_without_a_binding_is_passed() {
    let scenario = Scenario::new(false, false);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let mut other = scenario;
    other.client = addr("198.51.100.11:40000");
    let input = other.from_client(&payload(10), 2, IpFields::default());
    assert_passed(&relay, &input, Outcome::NoChannel);
}

#[test]
fn peer_data_without_a_binding_is_passed() {
    let scenario = Scenario::new(false, true);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let mut other = scenario;
    other.peer = addr("[2001:db8:2::21]:5000");
    let input = other.from_peer(&payload(10), IpFields::default());
    assert_passed(&relay, &input, Outcome::NoPeerBinding);
}

#[test]
fn ipv4_with_options_is_passed() {
    let scenario = Scenario::new(false, false);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let plain = scenario.from_client(&payload(12), 0, IpFields::default());
    // Insert a 4-byte option (NOP NOP NOP EOL) after the 20-byte header: IHL 6.
    let mut input = plain[..34].to_vec();
    input.extend_from_slice(&[1, 1, 1, 0]);
    input.extend_from_slice(&plain[34..]);
    input[14] = 0x46;
    let total = u16::from_be_bytes([input[16], input[17]]) + 4;
    input[16..18].copy_from_slice(&total.to_be_bytes());
    input[24..26].copy_from_slice(&[0, 0]);
    let sum = common::internet_checksum(&[&input[14..38]]);
    input[24..26].copy_from_slice(&sum.to_be_bytes());
    assert_passed(&relay, &input, Outcome::Ipv4Options);
}

#[test]
fn ipv4_fragments_are_passed() {
    let scenario = Scenario::new(false, false);
    for (flags, offset) in [(0x20u8, 0u8), (0x00, 0x10), (0x20, 0x01)] {
        let Some(relay) = relay_with(&scenario) else {
            return;
        };
        let mut input = scenario.from_client(&payload(12), 0, IpFields::default());
        input[20] = flags;
        input[21] = offset;
        assert_passed(&relay, &input, Outcome::Ipv4Fragment);
    }
}

#[test]
fn ipv6_with_an_extension_header_is_passed() {
    let scenario = Scenario::new(true, true);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let plain = scenario.from_client(&payload(12), 0, IpFields::default());
    // A hop-by-hop options header (8 bytes: next header UDP, length 0, PadN) before UDP.
    let mut input = plain[..54].to_vec();
    input.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
    input.extend_from_slice(&plain[54..]);
    input[20] = 0;
    let payload_len = u16::from_be_bytes([input[18], input[19]]) + 8;
    input[18..20].copy_from_slice(&payload_len.to_be_bytes());
    assert_passed(&relay, &input, Outcome::Ipv6ExtensionHeader);
}

#[test]
fn ipv4_without_checksum_is_passed_when_it_would_become_ipv6() {
    let scenario = Scenario::new(false, true);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let input = udp_frame(
        RELAY_MAC,
        CLIENT_MAC,
        scenario.client,
        scenario.listen,
        IpFields::default(),
        &channel_data(CHANNEL, &payload(9), 3),
        false,
    );
    assert_passed(&relay, &input, Outcome::ZeroChecksum);

    let scenario = Scenario::new(true, false);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let input = udp_frame(
        RELAY_MAC,
        CLIENT_MAC,
        scenario.peer,
        scenario.relayed,
        IpFields::default(),
        &payload(9),
        false,
    );
    assert_passed(&relay, &input, Outcome::ZeroChecksum);
}

#[test]
fn ipv6_with_a_zero_checksum_is_passed() {
    let scenario = Scenario::new(true, true);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let input = udp_frame(
        RELAY_MAC,
        CLIENT_MAC,
        scenario.peer,
        scenario.relayed,
        IpFields::default(),
        &payload(9),
        false,
    );
    assert_passed(&relay, &input, Outcome::ZeroChecksum);
}

#[test]
fn a_peer_that_is_the_relay_itself_is_passed() {
    // Client to peer: the bound peer is one of the relay's own addresses.
    let mut scenario = Scenario::new(false, true);
    scenario.peer = addr("[2001:db8:1::1]:50001");
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    // Such a binding never enters the caches: the program checks for hairpins only outside them.
    assert_eq!(relay.cached_channels(), (0, 0));
    let input = scenario.from_client(&payload(10), 2, IpFields::default());
    assert_passed(&relay, &input, Outcome::Hairpin);

    // Peer to client: a datagram from the relay's own address.
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let input = scenario.from_peer(&payload(10), IpFields::default());
    assert_passed(&relay, &input, Outcome::Hairpin);
}

#[test]
fn a_cached_peer_that_becomes_an_own_address_leaves_the_caches() {
    for (client_v6, peer_v6) in [(false, false), (true, true), (false, true), (true, false)] {
        let scenario = Scenario::new(client_v6, peer_v6);
        let Some(relay) = relay_with(&scenario) else {
            return;
        };
        assert_eq!(relay.cached_channels(), (1, 1));
        assert_relays_both_ways(&relay, &scenario);

        // The relay learns that the peer's address is its own (of the peer's family).
        let (v4, v6) = match scenario.peer.ip() {
            IpAddr::V4(peer) => (peer, "2001:db8:1::1".parse().unwrap()),
            IpAddr::V6(peer) => ("192.0.2.1".parse().unwrap(), peer),
        };
        // The binding was relayed from the old address of the peer's family, which is no longer
        // the relay's: it leaves the maps and its caches, and its channel goes on in user space.
        relay
            .set_own_addresses(OwnAddresses::new(Some(v4), Some(v6)))
            .unwrap();
        assert_eq!(relay.cached_channels(), (0, 0), "{scenario:?}");
        assert_eq!(relay.channel_count().unwrap(), 0, "{scenario:?}");
        // Refreshed now, it is relayed from the new address, which is its own peer: a hairpin,
        // kept out of the caches and passed to user space.
        relay.install_channel(&scenario.route()).unwrap();
        assert_eq!(relay.cached_channels(), (0, 0), "{scenario:?}");
        assert_eq!(relay.channel_count().unwrap(), 1, "{scenario:?}");
        let hairpins = || relay.counters().unwrap().get(Outcome::Hairpin).packets;
        let input = scenario.from_client(&payload(10), 2, IpFields::default());
        let before = hairpins();
        let output = run(&relay, &input);
        assert_eq!(output.action, XdpAction::Pass, "{scenario:?}");
        assert_eq!(hex(&output.frame), hex(&input), "{scenario:?}");
        assert_eq!(hairpins(), before + 1, "{scenario:?}");

        // Back to the old addresses: that binding goes too, and a refresh caches it and relays
        // it from the old relayed address again.
        relay
            .set_own_addresses(OwnAddresses::new(
                Some("192.0.2.1".parse().unwrap()),
                Some("2001:db8:1::1".parse().unwrap()),
            ))
            .unwrap();
        assert_eq!(relay.channel_count().unwrap(), 0, "{scenario:?}");
        relay.install_channel(&scenario.route()).unwrap();
        assert_eq!(relay.cached_channels(), (1, 1), "{scenario:?}");
        assert_relays_both_ways(&relay, &scenario);
    }
}

#[test]
fn a_datagram_that_would_be_sent_to_its_own_source_is_passed() {
    // Client to peer: a cached binding whose peer is its relayed address (user space never
    // caches one; the slot is written past its screening), which the hairpin check skips: the
    // rewritten datagram would go from that address to itself.
    let scenario = Scenario::new(false, false);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let mut looped = scenario;
    looped.peer = addr("192.0.2.1:50001");
    relay
        .write_channel_cache_slot_for_test(&scenario.route(), &looped.route(), 8)
        .unwrap();
    let input = scenario.from_client(&payload(10), 2, IpFields::default());
    assert_passed(&relay, &input, Outcome::PacketLoop);

    // Peer to client: a client at the listening address it writes to (the hairpin check looks
    // at the peer only).
    let mut scenario = Scenario::new(true, true);
    scenario.client = addr("[2001:db8:1::1]:40000");
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let input = scenario.from_peer(&payload(10), IpFields::default());
    assert_passed(&relay, &input, Outcome::PacketLoop);
}

#[test]
fn nothing_is_relayed_before_the_configuration_is_written() {
    let scenario = Scenario::new(false, false);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    relay.configure(XdpConfig::UNSET).unwrap();
    let input = scenario.from_client(&payload(10), 2, IpFields::default());
    assert_passed(&relay, &input, Outcome::ConfigUnset);
}

#[test]
fn a_peer_of_a_family_without_own_address_stays_in_user_space() {
    // A datagram to the peer leaves from the own address of the peer's family; without one the
    // binding is not installed, and both directions pass.
    let only_v4 = OwnAddresses::new(Some("192.0.2.1".parse().unwrap()), None);
    let only_v6 = OwnAddresses::new(None, Some("2001:db8:1::1".parse().unwrap()));
    for (client_v6, peer_v6) in [(false, true), (true, false)] {
        let scenario = Scenario::new(client_v6, peer_v6);
        let client_family_only = if client_v6 { only_v6 } else { only_v4 };
        let Some(relay) = load_relay() else {
            return;
        };
        relay.configure(config(AdjustMode::Head)).unwrap();
        relay.set_own_addresses(client_family_only).unwrap();
        assert!(relay.install_channel(&scenario.route()).is_err());
        assert_eq!(relay.channel_count().unwrap(), 0);
        let input = scenario.from_client(&payload(10), 2, IpFields::default());
        assert_passed(&relay, &input, Outcome::NoChannel);
    }
}

// ---- Several listening addresses and ports ---------------------------------------------------

#[test]
fn one_client_on_two_listening_addresses_keeps_two_bindings() {
    // The same client address, port and channel number on two listening addresses of one
    // family are two allocations with two peers; each direction finds its own, and the reply
    // leaves from the listening address the client wrote to. The second's relayed address is
    // the first listening address (as with --relay-ip): its peer datagrams leave from there.
    for client_v6 in [false, true] {
        for peer_v6 in [false, true] {
            let first = Scenario::new(client_v6, peer_v6);
            let mut second = first;
            second.listen = if client_v6 {
                addr("[2001:db8:1::2]:3478")
            } else {
                addr("192.0.2.2:3478")
            };
            second.peer.set_port(first.peer.port() + 7);
            second.relayed.set_port(first.relayed.port() + 2);
            for mode in MODES {
                let Some(relay) = relay_in(&first, mode) else {
                    return;
                };
                relay.install_channel(&second.route()).unwrap();
                assert_eq!(relay.channel_count().unwrap(), 2);
                assert_relays_both_ways(&relay, &first);
                assert_relays_both_ways(&relay, &second);
                // Removing one leaves the other.
                relay.remove_channel(&first.route()).unwrap();
                assert_relays_both_ways(&relay, &second);
                let gone = run(
                    &relay,
                    &first.from_client(&payload(5), 3, IpFields::default()),
                );
                assert_eq!(gone.action, XdpAction::Pass);
            }
        }
    }
}

#[test]
fn every_configured_listening_port_is_relayed() {
    let mut on_3479 = Scenario::new(false, true);
    on_3479.listen.set_port(3479);
    let Some(relay) = relay_with(&on_3479) else {
        return;
    };
    // Only 3478 configured: the binding exists, but datagrams to 3479 are not the relay's.
    let input = on_3479.from_client(&payload(12), 0, IpFields::default());
    assert_passed(&relay, &input, Outcome::OtherPort);

    let Some(relay) = relay_with(&on_3479) else {
        return;
    };
    let mut several = config(AdjustMode::Head);
    for port in [443, 3479, 5349] {
        several = several.with_listen_port(port).unwrap();
    }
    relay.configure(several).unwrap();
    assert_relays_both_ways(&relay, &on_3479);
    // The first port still is, with a binding of its own.
    let on_3478 = Scenario::new(true, false);
    relay.install_channel(&on_3478.route()).unwrap();
    assert_relays_both_ways(&relay, &on_3478);
}

#[test]
fn a_single_stack_relay_relays_its_own_family() {
    // The Firezone flaw: an unset address of the other family must not stop same-family paths.
    let scenario = Scenario::new(false, false);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    relay
        .set_own_addresses(OwnAddresses::new(Some("192.0.2.1".parse().unwrap()), None))
        .unwrap();
    let data = payload(10);
    let input = scenario.from_client(&data, 2, IpFields::default());
    let expected = scenario.to_peer(&data, IpFields::default());
    assert_relayed(&relay, &input, &expected, Outcome::ClientToPeer4To4);
}

#[test]
fn tcp_is_passed() {
    let scenario = Scenario::new(false, false);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let mut input = scenario.from_client(&payload(10), 2, IpFields::default());
    input[23] = 6;
    assert_passed(&relay, &input, Outcome::NotUdp);

    let scenario = Scenario::new(true, true);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let mut input = scenario.from_client(&payload(10), 2, IpFields::default());
    input[20] = 6;
    assert_passed(&relay, &input, Outcome::NotUdp);
}

#[test]
fn arp_is_passed() {
    let scenario = Scenario::new(false, false);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let mut input = vec![0xff; 6];
    input.extend_from_slice(&CLIENT_MAC);
    input.extend_from_slice(&[0x08, 0x06]);
    input.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    input.resize(60, 0);
    assert_passed(&relay, &input, Outcome::NotIp);
}

#[test]
fn udp_to_other_ports_is_passed() {
    let mut scenario = Scenario::new(false, false);
    scenario.listen = addr("192.0.2.1:53");
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let input = scenario.from_client(&payload(10), 2, IpFields::default());
    assert_passed(&relay, &input, Outcome::OtherPort);
}

#[test]
fn stun_on_the_listening_port_is_passed() {
    let scenario = Scenario::new(false, false);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    // A Binding request header: type 0x0001, length 0, magic cookie, transaction ID.
    let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[7; 12]);
    let input = udp_frame(
        RELAY_MAC,
        CLIENT_MAC,
        scenario.client,
        scenario.listen,
        IpFields::default(),
        &stun,
        true,
    );
    assert_passed(&relay, &input, Outcome::NotChannelData);
}

#[test]
fn channel_data_whose_length_does_not_fit_is_passed() {
    let scenario = Scenario::new(false, false);
    // Length field larger than the payload.
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let mut message = channel_data(CHANNEL, &payload(8), 0);
    message[2..4].copy_from_slice(&9u16.to_be_bytes());
    let input = udp_frame(
        RELAY_MAC,
        CLIENT_MAC,
        scenario.client,
        scenario.listen,
        IpFields::default(),
        &message,
        true,
    );
    assert_passed(&relay, &input, Outcome::BadChannelData);

    // More than 3 bytes after the data.
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let input = scenario.from_client(&payload(8), 4, IpFields::default());
    assert_passed(&relay, &input, Outcome::BadChannelData);
}

#[test]
fn udp_length_disagreeing_with_ip_is_passed() {
    let scenario = Scenario::new(false, false);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let mut input = scenario.from_client(&payload(8), 0, IpFields::default());
    let udp_len = u16::from_be_bytes([input[38], input[39]]) - 1;
    input[38..40].copy_from_slice(&udp_len.to_be_bytes());
    assert_passed(&relay, &input, Outcome::Malformed);
}

#[test]
fn a_datagram_that_would_outgrow_the_mtu_is_passed() {
    // The MTU check looks at the receiving device, so the frame must "arrive" on one with a
    // small MTU: a veth in a network namespace private to this test's thread.
    let scenario = Scenario::new(false, false);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let Some(ifindex) = small_mtu_interface(1280) else {
        return;
    };
    // 20 + 8 + 1250 = 1278 bytes of IP; with the ChannelData header 1282, over 1280.
    let input = scenario.from_peer(&payload(1250), IpFields::default());
    let output = relay.test_run_on(Program::Relay, &input, ifindex).unwrap();
    assert_eq!(output.action, XdpAction::Pass);
    assert_eq!(output.frame, input);
    assert_eq!(relay.counters().unwrap().get(Outcome::TooBig).packets, 1);
    // Exactly 1280 still fits.
    let data = payload(1248);
    let input = scenario.from_peer(&data, IpFields::default());
    let output = relay.test_run_on(Program::Relay, &input, ifindex).unwrap();
    assert_eq!(output.action, XdpAction::Tx);
    assert_eq!(
        hex(&output.frame),
        hex(&scenario.to_client(&data, IpFields::default()))
    );
}

/// Moves this thread into a new network namespace and creates a veth pair there with the given
/// MTU; returns the index of one end. The namespace dies with the thread.
fn small_mtu_interface(mtu: u16) -> Option<u32> {
    if !private_namespace() {
        return None;
    }
    let mtu = mtu.to_string();
    run_command(
        "ip",
        &[
            "link", "add", "tp-mtu0", "mtu", &mtu, "type", "veth", "peer", "name", "tp-mtu1",
        ],
    );
    let name = std::ffi::CString::new("tp-mtu0").unwrap();
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(
        index, 0,
        "the veth was not created in this thread's namespace"
    );
    Some(index)
}

// ---- The other programs --------------------------------------------------------------------

#[test]
fn the_swap_program_mirrors_a_frame() {
    let Some(mut relay) = load_relay() else {
        return;
    };
    relay.load_program(Program::BenchSwap).unwrap();
    for (client_v6, peer_v6) in [(false, false), (true, true)] {
        let scenario = Scenario::new(client_v6, peer_v6);
        let data = payload(50);
        let input = scenario.from_peer(&data, IpFields::default());
        let output = relay.test_run(Program::BenchSwap, &input).unwrap();
        assert_eq!(output.action, XdpAction::Tx);
        let expected = udp_frame(
            CLIENT_MAC,
            RELAY_MAC,
            scenario.relayed,
            scenario.peer,
            IpFields::default(),
            &data,
            true,
        );
        assert_eq!(hex(&output.frame), hex(&expected));
    }
}

#[test]
fn the_pass_program_passes() {
    let Some(mut relay) = load_relay() else {
        return;
    };
    relay.load_program(Program::Pass).unwrap();
    let input = Scenario::new(false, false).from_peer(&payload(5), IpFields::default());
    let output = relay.test_run(Program::Pass, &input).unwrap();
    assert_eq!(output.action, XdpAction::Pass);
    assert_eq!(output.frame, input);
}

#[test]
fn counters_count_bytes_as_received() {
    let scenario = Scenario::new(false, false);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    let a = scenario.from_client(&payload(10), 2, IpFields::default());
    let b = scenario.from_peer(&payload(30), IpFields::default());
    run(&relay, &a);
    run(&relay, &b);
    run(&relay, &b);
    let counters = relay.counters().unwrap();
    assert_eq!(
        counters.get(Outcome::ClientToPeer4To4).bytes,
        a.len() as u64
    );
    assert_eq!(counters.get(Outcome::PeerToClient4To4).packets, 2);
    assert_eq!(
        counters.get(Outcome::PeerToClient4To4).bytes,
        2 * b.len() as u64
    );
    assert_eq!(counters.relayed().packets, 3);
}

#[test]
fn rfc_5766_channel_numbers_are_relayed_only_when_configured() {
    for channel in [0x5000, 0x6ABC, 0x7FFF] {
        let scenario = Scenario {
            channel,
            ..Scenario::new(false, true)
        };
        let data = payload(37);
        let from_client = scenario.from_client(&data, 3, IpFields::default());
        let from_peer = scenario.from_peer(&data, IpFields::default());

        // RFC 8656's range (the default): first bytes 0x50-0x7F are not ChannelData, even for
        // a binding in the maps (which the core would never have made).
        let Some(relay) = relay_with(&scenario) else {
            return;
        };
        assert_passed(&relay, &from_client, Outcome::NotChannelData);

        // RFC 5766's range: relayed both ways, the number written back to the client as bound.
        let Some(relay) = relay_with(&scenario) else {
            return;
        };
        relay
            .configure(config(AdjustMode::Head).with_rfc5766_channel_numbers(true))
            .unwrap();
        assert_relayed(
            &relay,
            &from_client,
            &scenario.to_peer(&data, IpFields::default()),
            Outcome::ClientToPeer4To6,
        );
        let Some(relay) = relay_with(&scenario) else {
            return;
        };
        relay
            .configure(config(AdjustMode::Head).with_rfc5766_channel_numbers(true))
            .unwrap();
        assert_relayed(
            &relay,
            &from_peer,
            &scenario.to_client(&data, IpFields::default()),
            Outcome::PeerToClient6To4,
        );
    }
    // With the wide range, a first byte of 0x80 or more is still not ChannelData.
    let scenario = Scenario::new(false, false);
    let Some(relay) = relay_with(&scenario) else {
        return;
    };
    relay
        .configure(config(AdjustMode::Head).with_rfc5766_channel_numbers(true))
        .unwrap();
    let input = udp_frame(
        RELAY_MAC,
        CLIENT_MAC,
        scenario.client,
        scenario.listen,
        IpFields::default(),
        &[0x80, 0x01, 0x00, 0x00],
        true,
    );
    assert_passed(&relay, &input, Outcome::NotChannelData);
}

#[test]
fn unknown_ip_address_text_is_rejected_by_the_test_helpers() {
    // Guards the helpers themselves: a typo in a test address must fail loudly, not relay.
    assert!(IpAddr::from_str("192.0.2.300").is_err());
    assert_eq!(ip("192.0.2.1"), IpAddr::from([192, 0, 2, 1]));
}
