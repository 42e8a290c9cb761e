//! The server against a reference model: random sequences of requests, data and time jumps
//! from a few clients to a few peers, with every answer, every relayed packet and the fast-path
//! mirror checked against a plain model of allocations, permissions and channels after each
//! step.
//!
//! Failures are saved in `proptest-regressions/model.txt` and replayed first on every run.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code, and the harness it shares: a panic is how a test reports a failure"
)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use turnpike_proto::{AddressFamily, Attribute, ChannelNumber, ErrorCode, Method};
use turnpike_relay::{ChannelRoute, Command, FiveTuple, Forward, RelaySocket};

/// Two clients share an IP address (on different ports), so 5-tuples are told apart by port.
const CLIENTS: [&str; 3] = [
    "203.0.113.1:40000",
    "203.0.113.1:40001",
    "203.0.113.2:40000",
];
/// Two peers share an IP address, so they share a permission; the last is denied by policy.
const PEERS: [&str; 4] = [
    "192.0.2.10:5000",
    "192.0.2.10:5001",
    "192.0.2.11:5000",
    "10.0.0.1:5000",
];
const DENIED_PEER: usize = 3;
/// Valid channel numbers at both ends of the range, and one just outside each end.
const NUMBERS: [u16; 5] = [0x4000, 0x4001, 0x4FFF, 0x3FFF, 0x5000];
const PAYLOAD: &[u8] = b"payload";

const DEFAULT_LIFETIME: u64 = 600;
const MAX_LIFETIME: u64 = 3600;
const PERMISSION_LIFETIME: u64 = 300;
const CHANNEL_LIFETIME: u64 = 600;
const COOLDOWN: u64 = 300;

#[derive(Debug, Clone)]
enum Op {
    Allocate {
        client: usize,
        lifetime: Option<u32>,
    },
    Refresh {
        client: usize,
        lifetime: Option<u32>,
    },
    CreatePermission {
        client: usize,
        peer: usize,
    },
    ChannelBind {
        client: usize,
        number: u16,
        peer: usize,
    },
    ChannelData {
        client: usize,
        number: u16,
    },
    PeerData {
        peer: usize,
        client: usize,
    },
    Advance {
        seconds: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let client = 0..CLIENTS.len();
    let peer = 0..PEERS.len();
    let number = proptest::sample::select(NUMBERS.to_vec());
    let allocate_lifetime = proptest::sample::select(vec![None, Some(0), Some(1200), Some(4000)]);
    let refresh_lifetime = proptest::sample::select(vec![
        None,
        Some(0),
        Some(0),
        Some(1),
        Some(600),
        Some(1200),
        Some(4000),
    ]);
    let seconds = prop_oneof![
        3 => 0..700u64,
        1 => proptest::sample::select(vec![1, 299, 300, 600]),
    ];
    prop_oneof![
        2 => (client.clone(), allocate_lifetime)
            .prop_map(|(client, lifetime)| Op::Allocate { client, lifetime }),
        2 => (client.clone(), refresh_lifetime)
            .prop_map(|(client, lifetime)| Op::Refresh { client, lifetime }),
        3 => (client.clone(), peer.clone())
            .prop_map(|(client, peer)| Op::CreatePermission { client, peer }),
        3 => (client.clone(), number.clone(), peer.clone())
            .prop_map(|(client, number, peer)| Op::ChannelBind { client, number, peer }),
        3 => (client.clone(), number)
            .prop_map(|(client, number)| Op::ChannelData { client, number }),
        3 => (peer, client).prop_map(|(peer, client)| Op::PeerData { peer, client }),
        3 => seconds.prop_map(|seconds| Op::Advance { seconds }),
    ]
}

/// One allocation as the model sees it; times are seconds since the start.
#[derive(Debug, Clone)]
struct Allocation {
    port: u16,
    expires_at: u64,
    /// Expiry by peer IP.
    permissions: BTreeMap<IpAddr, u64>,
    /// Peer and expiry by channel number; kept through the cool-down after the expiry.
    channels: BTreeMap<u16, (SocketAddr, u64)>,
}

impl Allocation {
    fn permitted(&self, ip: IpAddr, now: u64) -> bool {
        self.permissions
            .get(&ip)
            .is_some_and(|expiry| *expiry > now)
    }

    /// The channel bound to `peer` and relaying now.
    fn live_channel_to(&self, peer: SocketAddr, now: u64) -> Option<u16> {
        self.channels
            .iter()
            .find(|(_, (bound, expiry))| *bound == peer && *expiry > now)
            .map(|(number, _)| *number)
            .filter(|_| self.permitted(peer.ip(), now))
    }
}

/// The reference model: one optional allocation per client.
#[derive(Debug, Default)]
struct Model {
    now: u64,
    allocations: [Option<Allocation>; 3],
    /// The last relayed port each client had, to aim peer data at after it is gone.
    last_port: [Option<u16>; 3],
}

fn granted(lifetime: Option<u32>) -> u64 {
    lifetime
        .map_or(DEFAULT_LIFETIME, u64::from)
        .clamp(DEFAULT_LIFETIME, MAX_LIFETIME)
}

fn peer(index: usize) -> SocketAddr {
    PEERS[index].parse().unwrap()
}

fn relay(port: u16) -> RelaySocket {
    RelaySocket {
        port,
        family: AddressFamily::V4,
    }
}

impl Model {
    /// Drops what has expired by `now`, as the server's timers do.
    fn expire(&mut self) {
        let now = self.now;
        for slot in &mut self.allocations {
            if slot
                .as_ref()
                .is_some_and(|allocation| allocation.expires_at <= now)
            {
                *slot = None;
            }
            if let Some(allocation) = slot {
                allocation.permissions.retain(|_, expiry| *expiry > now);
                allocation
                    .channels
                    .retain(|_, (_, expiry)| *expiry + COOLDOWN > now);
            }
        }
    }

    fn allocate(&mut self, client: usize, lifetime: Option<u32>) -> Option<ErrorCode> {
        if self.allocations[client].is_some() {
            return Some(ErrorCode::ALLOCATION_MISMATCH);
        }
        // The port comes from the server's response; see `record_port`.
        self.allocations[client] = Some(Allocation {
            port: 0,
            expires_at: self.now + granted(lifetime),
            permissions: BTreeMap::new(),
            channels: BTreeMap::new(),
        });
        None
    }

    fn refresh(&mut self, client: usize, lifetime: Option<u32>) -> Option<ErrorCode> {
        let now = self.now;
        let slot = &mut self.allocations[client];
        let Some(allocation) = slot else {
            return Some(ErrorCode::ALLOCATION_MISMATCH);
        };
        if lifetime == Some(0) {
            *slot = None;
        } else {
            allocation.expires_at = now + granted(lifetime);
        }
        None
    }

    fn create_permission(&mut self, client: usize, peer_index: usize) -> Option<ErrorCode> {
        let now = self.now;
        let Some(allocation) = &mut self.allocations[client] else {
            return Some(ErrorCode::ALLOCATION_MISMATCH);
        };
        if peer_index == DENIED_PEER {
            return Some(ErrorCode::FORBIDDEN);
        }
        allocation
            .permissions
            .insert(peer(peer_index).ip(), now + PERMISSION_LIFETIME);
        None
    }

    fn channel_bind(&mut self, client: usize, number: u16, peer_index: usize) -> Option<ErrorCode> {
        let now = self.now;
        let Some(allocation) = &mut self.allocations[client] else {
            return Some(ErrorCode::ALLOCATION_MISMATCH);
        };
        if !(0x4000..=0x4FFF).contains(&number) {
            return Some(ErrorCode::BAD_REQUEST);
        }
        if peer_index == DENIED_PEER {
            return Some(ErrorCode::FORBIDDEN);
        }
        let peer = peer(peer_index);
        let number_taken = allocation
            .channels
            .get(&number)
            .is_some_and(|(bound, _)| *bound != peer);
        let peer_taken = allocation
            .channels
            .iter()
            .any(|(bound_number, (bound, _))| *bound == peer && *bound_number != number);
        if number_taken || peer_taken {
            return Some(ErrorCode::BAD_REQUEST);
        }
        allocation
            .channels
            .insert(number, (peer, now + CHANNEL_LIFETIME));
        allocation
            .permissions
            .insert(peer.ip(), now + PERMISSION_LIFETIME);
        None
    }

    fn record_port(&mut self, client: usize, port: u16) {
        if let Some(allocation) = &mut self.allocations[client] {
            allocation.port = port;
        }
        self.last_port[client] = Some(port);
    }

    /// Where ChannelData from `client` on `number` goes: (relay port, peer).
    fn channel_data(&self, client: usize, number: u16) -> Option<(u16, SocketAddr)> {
        let allocation = self.allocations[client].as_ref()?;
        let (peer, expiry) = *allocation.channels.get(&number)?;
        (expiry > self.now && allocation.permitted(peer.ip(), self.now))
            .then_some((allocation.port, peer))
    }

    /// Which client owns relayed `port` now.
    fn owner_of(&self, port: u16) -> Option<usize> {
        (0..CLIENTS.len()).find(|client| {
            self.allocations[*client]
                .as_ref()
                .is_some_and(|allocation| allocation.port == port)
        })
    }

    /// The fast path as it must be now: every channel whose binding, permission and allocation
    /// are all alive.
    fn live_routes(&self, clients: &[FiveTuple]) -> HashSet<ChannelRoute> {
        let mut routes = HashSet::new();
        for (client, slot) in self.allocations.iter().enumerate() {
            let Some(allocation) = slot else { continue };
            for (number, (peer, _)) in &allocation.channels {
                if allocation.live_channel_to(*peer, self.now) == Some(*number) {
                    routes.insert(ChannelRoute {
                        client: clients[client],
                        channel: ChannelNumber::new(*number).unwrap(),
                        relay: relay(allocation.port),
                        peer: *peer,
                    });
                }
            }
        }
        routes
    }

    fn live_permissions(&self) -> HashSet<(RelaySocket, IpAddr)> {
        self.allocations
            .iter()
            .flatten()
            .flat_map(|allocation| {
                allocation
                    .permissions
                    .keys()
                    .map(|ip| (relay(allocation.port), *ip))
            })
            .collect()
    }
}

/// What a driver mirroring the fast path would hold, built from the commands alone.
#[derive(Debug, Default)]
struct Mirror {
    routes: HashMap<(FiveTuple, ChannelNumber), ChannelRoute>,
    permissions: HashSet<(RelaySocket, IpAddr)>,
}

impl Mirror {
    fn apply(&mut self, commands: &[Command]) {
        for command in commands {
            match command {
                Command::InstallChannel(route) => {
                    self.routes.insert((route.client, route.channel), *route);
                }
                Command::RemoveChannel(route) => {
                    let removed = self.routes.remove(&(route.client, route.channel));
                    assert_eq!(removed, Some(*route), "removes exactly what was installed");
                }
                Command::InstallPermission { relay, peer } => {
                    self.permissions.insert((*relay, *peer));
                }
                Command::RemovePermission { relay, peer } => {
                    assert!(
                        self.permissions.remove(&(*relay, *peer)),
                        "removes a permission that was installed: {relay:?} {peer}"
                    );
                }
                _ => {}
            }
        }
    }
}

fn run(ops: &[Op]) {
    let mut harness = Harness::new();
    let mut clients: Vec<Client> = CLIENTS.iter().map(|address| Client::new(address)).collect();
    let five_tuples: Vec<FiveTuple> = clients.iter().map(|client| client.five_tuple).collect();
    let mut model = Model::default();
    let mut mirror = Mirror::default();

    for (step, op) in ops.iter().enumerate() {
        let commands = match *op {
            Op::Allocate { client, lifetime } => {
                let expected = model.allocate(client, lifetime);
                let mut request = vec![Attribute::RequestedTransport(17)];
                request.extend(lifetime.map(Attribute::Lifetime));
                let (response, commands) =
                    clients[client].send(&mut harness, Method::Allocate, &request);
                check_answer(step, op, &response, &commands, expected);
                if expected.is_none() {
                    let relayed = relayed_addresses(&response);
                    model.record_port(client, relayed[0].port());
                    assert_eq!(lifetime_of(&response), granted(lifetime), "step {step}");
                }
                commands
            }
            Op::Refresh { client, lifetime } => {
                let expected = model.refresh(client, lifetime);
                let request: Vec<Attribute<'_>> =
                    lifetime.map(Attribute::Lifetime).into_iter().collect();
                let (response, commands) =
                    clients[client].send(&mut harness, Method::Refresh, &request);
                check_answer(step, op, &response, &commands, expected);
                commands
            }
            Op::CreatePermission {
                client,
                peer: index,
            } => {
                let expected = model.create_permission(client, index);
                let (response, commands) = clients[client].send(
                    &mut harness,
                    Method::CreatePermission,
                    &[Attribute::XorPeerAddress(peer(index))],
                );
                check_answer(step, op, &response, &commands, expected);
                commands
            }
            Op::ChannelBind {
                client,
                number,
                peer: index,
            } => {
                let expected = model.channel_bind(client, number, index);
                let (response, commands) = clients[client].send(
                    &mut harness,
                    Method::ChannelBind,
                    &[
                        Attribute::ChannelNumber(number),
                        Attribute::XorPeerAddress(peer(index)),
                    ],
                );
                check_answer(step, op, &response, &commands, expected);
                commands
            }
            Op::ChannelData { client, number } => {
                let (forward, commands) =
                    harness.from_client(five_tuples[client], &channel_data(number, PAYLOAD));
                let expected =
                    model
                        .channel_data(client, number)
                        .map(|(port, peer)| Forward::ToPeer {
                            relay: relay(port),
                            peer,
                            payload: 4..4 + PAYLOAD.len(),
                        });
                assert_eq!(forward, expected, "step {step}: {op:?}");
                assert_eq!(commands, [], "step {step}: {op:?}");
                commands
            }
            Op::PeerData {
                peer: index,
                client,
            } => {
                let port = model.allocations[client]
                    .as_ref()
                    .map(|allocation| allocation.port)
                    .or(model.last_port[client])
                    .unwrap_or(49152);
                let (forward, commands) = harness.from_peer(relay(port), peer(index), PAYLOAD);
                check_peer_data(
                    step,
                    op,
                    &model,
                    &five_tuples,
                    port,
                    index,
                    forward,
                    &commands,
                );
                commands
            }
            Op::Advance { seconds } => {
                let commands = harness.advance(Duration::from_secs(seconds));
                model.now += seconds;
                model.expire();
                assert!(
                    commands.iter().all(|command| matches!(
                        command,
                        Command::RemoveChannel(_)
                            | Command::RemovePermission { .. }
                            | Command::CloseRelaySocket(_)
                    )),
                    "step {step}: time only takes away: {commands:?}"
                );
                commands
            }
        };
        mirror.apply(&commands);
        #[expect(
            clippy::disallowed_methods,
            reason = "collected into a set, so the order it is walked in does not matter"
        )]
        let routes: HashSet<ChannelRoute> = mirror.routes.values().copied().collect();
        assert_eq!(
            routes,
            model.live_routes(&five_tuples),
            "step {step}: channel mirror"
        );
        assert_eq!(
            mirror.permissions,
            model.live_permissions(),
            "step {step}: permission mirror"
        );
        let live_allocations = model.allocations.iter().flatten().count();
        assert_eq!(
            harness.server.allocation_count(),
            live_allocations,
            "step {step}"
        );
        assert_eq!(
            harness.server.active_channel_count(),
            routes.len(),
            "step {step}"
        );
    }
}

fn lifetime_of(response: &[u8]) -> u64 {
    u64::from(lifetime(response).expect("LIFETIME in a success response"))
}

/// The response's code is the model's, and an error changes nothing.
fn check_answer(
    step: usize,
    op: &Op,
    response: &[u8],
    commands: &[Command],
    expected: Option<ErrorCode>,
) {
    assert_eq!(error_code(response), expected, "step {step}: {op:?}");
    if expected.is_some() {
        assert_eq!(
            commands.len(),
            1,
            "step {step}: an error has no side effect"
        );
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one check, all of whose inputs differ"
)]
fn check_peer_data(
    step: usize,
    op: &Op,
    model: &Model,
    five_tuples: &[FiveTuple],
    port: u16,
    index: usize,
    forward: Option<Forward>,
    commands: &[Command],
) {
    let peer = peer(index);
    let owner = model.owner_of(port);
    let channel = owner.and_then(|owner| {
        model.allocations[owner]
            .as_ref()
            .and_then(|allocation| allocation.live_channel_to(peer, model.now))
    });
    let permitted = owner.is_some_and(|owner| {
        model.allocations[owner]
            .as_ref()
            .is_some_and(|allocation| allocation.permitted(peer.ip(), model.now))
    });
    match (owner, channel) {
        (Some(owner), Some(number)) => {
            let length = u16::try_from(PAYLOAD.len()).unwrap();
            let [high, low] = number.to_be_bytes();
            let [length_high, length_low] = length.to_be_bytes();
            assert_eq!(
                forward,
                Some(Forward::ToClient {
                    client: five_tuples[owner],
                    channel_header: [high, low, length_high, length_low],
                    payload: 0..PAYLOAD.len(),
                }),
                "step {step}: {op:?}"
            );
            assert_eq!(commands, [], "step {step}: {op:?}");
        }
        (Some(owner), None) if permitted => {
            assert_eq!(forward, None, "step {step}: {op:?}");
            let indications = sent_to(commands, five_tuples[owner]);
            assert_eq!(
                indications.len(),
                1,
                "step {step}: a Data indication: {op:?}"
            );
            assert_eq!(commands.len(), 1, "step {step}: {op:?}");
            let indication = attributes(&indications[0]);
            assert!(indication.contains(&Attribute::XorPeerAddress(peer)));
            assert!(indication.contains(&Attribute::Data(PAYLOAD)));
        }
        _ => {
            assert_eq!(forward, None, "step {step}: {op:?}");
            assert_eq!(commands, [], "step {step}: dropped: {op:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2048,
        // Relative to the package root, where cargo runs tests; committed with the tests.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/model.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_server_agrees_with_a_reference_model(ops in vec(op(), 1..64)) {
        run(&ops);
    }
}

#[test]
fn the_model_agrees_with_the_server_on_a_channel_through_its_whole_life() {
    // A fixed walk through bind, refresh, expiry and cool-down, so the model itself is checked
    // on a known sequence and not only on random ones.
    run(&[
        Op::Allocate {
            client: 0,
            lifetime: Some(4000),
        },
        Op::ChannelBind {
            client: 0,
            number: 0x4001,
            peer: 0,
        },
        Op::ChannelData {
            client: 0,
            number: 0x4001,
        },
        Op::PeerData { peer: 0, client: 0 },
        Op::PeerData { peer: 1, client: 0 },
        Op::Advance { seconds: 300 },
        Op::PeerData { peer: 0, client: 0 },
        Op::CreatePermission { client: 0, peer: 1 },
        Op::ChannelData {
            client: 0,
            number: 0x4001,
        },
        Op::Advance { seconds: 300 },
        Op::ChannelBind {
            client: 0,
            number: 0x4001,
            peer: 2,
        },
        Op::ChannelBind {
            client: 0,
            number: 0x4000,
            peer: 0,
        },
        Op::Advance { seconds: 300 },
        Op::ChannelBind {
            client: 0,
            number: 0x4001,
            peer: 2,
        },
        Op::Refresh {
            client: 0,
            lifetime: Some(0),
        },
        Op::PeerData { peer: 2, client: 0 },
    ]);
}
