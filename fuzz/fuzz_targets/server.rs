//! Drives the sans-IO core, `Server`, with a seeded RNG through whatever the input says: client
//! requests built by the encoder with valid credentials (Allocate, Refresh, CreatePermission,
//! ChannelBind, Binding), Send indications and ChannelData, peer datagrams, raw and mutated
//! datagrams, retransmissions, time jumps, drain and wall-clock steps. After every step it
//! executes the commands against a model of the fast path and checks:
//!
//! - no panic (libFuzzer reports one as a crash);
//! - every command makes sense for what was installed before it: no socket opened twice or
//!   closed unopened, no channel or permission installed on a closed socket, no removal of a
//!   route or permission that is not installed, exactly the route that was installed;
//! - counts agree: the server's allocations, permissions and active channels are the sockets,
//!   permissions and routes the commands left installed; timers are bounded by live objects;
//! - at the end, after expiry or shutdown, everything installed has been removed and every
//!   internal table is empty.
//!
//! Each step reads a few bytes of the input; a step that runs out of input reads zeros, so
//! every input is a complete, bounded run (at most one step per input byte).

#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use turnpike_proto::{
    AddressFamily, Attribute, AttributeType, Class, Message, MessageEncoder, MessageType, Method,
    RawAttribute, TransactionId,
};
use turnpike_relay::auth::credentials::{
    CredentialStore, LongTermKey, Password, PasswordAlgorithm, SharedSecret,
};
use turnpike_relay::policy::{Cidr, PeerPolicy};
use turnpike_relay::{ChannelRoute, Command, Config, FiveTuple, Forward, RelaySocket, Server};

const REALM: &str = "turnpike.fuzz";
const PASSWORD: &str = "correct horse";
const REST_SECRET: &[u8] = b"rest-secret";
const START_UNIX: u64 = 1_700_000_000;
const RELAY_V4: &str = "198.51.100.1";
const RELAY_V6: &str = "2001:db8::1";
const CLIENTS: [&str; 4] = [
    "203.0.113.5:40000",
    "203.0.113.6:40001",
    "[2001:db8:1::5]:40000",
    "203.0.113.5:40002",
];
const PEERS: [&str; 4] = [
    "192.0.2.10:5000",
    "192.0.2.11:6000",
    "[2001:db8:ffff::10]:5000",
    // Outside the policy: refused with 403.
    "10.0.0.1:5000",
];
const PORTS: core::ops::RangeInclusive<u16> = 49152..=49167;
const CHANNELS_PER_ALLOCATION: usize = 3;

fn addr(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|_| unreachable!("constant address"))
}

/// The input, read a byte at a time; zeros once it runs out.
struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((first, rest)) => {
                self.bytes = rest;
                *first
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |value, _| (value << 8) | u64::from(self.byte()))
    }

    fn take(&mut self, len: usize) -> &'a [u8] {
        let len = len.min(self.bytes.len());
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        taken
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[usize::from(self.byte()) % choices.len()]
    }
}

/// A client: its 5-tuple, credentials and the nonce it learned.
struct Client {
    five_tuple: FiveTuple,
    username: String,
    /// Derived once: the client's cost per request is then the server's to measure.
    key: LongTermKey,
    nonce: Option<String>,
    sha256: bool,
    fingerprint: bool,
    next_transaction: u32,
}

impl Client {
    fn derive_key(username: &str, password: &str, sha256: bool) -> LongTermKey {
        let algorithm = if sha256 {
            PasswordAlgorithm::Sha256
        } else {
            PasswordAlgorithm::Md5
        };
        LongTermKey::derive(algorithm, username, REALM, password.as_bytes())
    }

    fn transaction_id(&mut self) -> TransactionId {
        self.next_transaction = self.next_transaction.wrapping_add(1);
        let mut id = [0; 12];
        id[..2].copy_from_slice(&self.five_tuple.client.port().to_be_bytes());
        id[8..].copy_from_slice(&self.next_transaction.to_be_bytes());
        TransactionId(id)
    }

    /// A request (or indication) with `attributes`, signed when a nonce is known.
    fn message(&mut self, method: Method, class: Class, attributes: &[Attribute<'_>]) -> Vec<u8> {
        let transaction_id = self.transaction_id();
        let mut buf = vec![0; 2048];
        let Ok(mut encoder) =
            MessageEncoder::new(&mut buf, MessageType::new(method, class), transaction_id)
        else {
            return Vec::new();
        };
        for attribute in attributes {
            if encoder.push(attribute).is_err() {
                return Vec::new();
            }
        }
        if class == Class::Request
            && let Some(nonce) = &self.nonce
        {
            let _ = encoder.push(&Attribute::Username(&self.username));
            let _ = encoder.push(&Attribute::Realm(REALM));
            let _ = encoder.push(&Attribute::Nonce(nonce));
            let key = &self.key;
            if self.sha256 {
                let offered = [0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00];
                if let Ok(offered) = Attribute::password_algorithms(&offered) {
                    let _ = encoder.push(&offered);
                }
                let _ = encoder.push(&Attribute::PasswordAlgorithm(
                    turnpike_proto::PasswordAlgorithm {
                        algorithm: turnpike_proto::PasswordAlgorithm::SHA256,
                        parameters: &[],
                    },
                ));
                let _ = encoder.push_message_integrity_sha256(key.as_bytes(), 32);
            } else {
                let _ = encoder.push_message_integrity(key.as_bytes());
            }
        }
        if self.fingerprint {
            let _ = encoder.push_fingerprint();
        }
        let len = encoder.finish();
        buf.truncate(len);
        buf
    }

    /// Takes the nonce of a 401 or 438 response addressed to this client.
    fn learn(&mut self, response: &[u8]) {
        let Ok(message) = Message::parse(response) else {
            return;
        };
        let transaction_id = message.transaction_id();
        if let Some(raw) = message.attribute(AttributeType::NONCE)
            && let Ok(Attribute::Nonce(nonce)) = Attribute::decode(raw, &transaction_id)
        {
            self.nonce = Some(nonce.to_owned());
        }
    }
}

/// The fast path as the commands built it.
#[derive(Default)]
struct Model {
    sockets: BTreeSet<RelaySocket>,
    channels: BTreeMap<(FiveTuple, u16), ChannelRoute>,
    permissions: BTreeSet<(RelaySocket, IpAddr)>,
}

/// Whether to print every command and response code (`TURNPIKE_FUZZ_TRACE=1`), to see what an
/// input does when replaying it: `fuzz/target/.../server <input>`.
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("TURNPIKE_FUZZ_TRACE").is_some())
}

impl Model {
    fn execute(&mut self, command: &Command, clients: &mut [Client]) {
        if trace() {
            match command {
                Command::SendToClient { to, payload } => {
                    let code = Message::parse(payload).ok().and_then(|message| {
                        let raw = message.attribute(AttributeType::ERROR_CODE)?;
                        match Attribute::decode(raw, &message.transaction_id()) {
                            Ok(Attribute::ErrorCode { code, .. }) => Some(code.0),
                            _ => None,
                        }
                    });
                    eprintln!("send to {}: error {code:?}", to.client);
                }
                other => eprintln!("{other:?}"),
            }
        }
        match command {
            Command::OpenRelaySocket(socket) => {
                assert!(self.sockets.insert(*socket), "{socket:?} opened twice");
            }
            Command::CloseRelaySocket(socket) => {
                assert!(
                    self.sockets.remove(socket),
                    "{socket:?} closed, never opened"
                );
                assert!(
                    !self.channels.values().any(|route| route.relay == *socket),
                    "{socket:?} closed with a channel still installed"
                );
                assert!(
                    !self.permissions.iter().any(|(relay, _)| relay == socket),
                    "{socket:?} closed with a permission still installed"
                );
            }
            Command::InstallChannel(route) => {
                assert!(
                    self.sockets.contains(&route.relay),
                    "{route:?} on a closed socket"
                );
                assert!(
                    self.permissions.contains(&(route.relay, route.peer.ip())),
                    "{route:?} installed without its permission"
                );
                let key = (route.client, route.channel.get());
                if let Some(old) = self.channels.insert(key, *route) {
                    assert_eq!(old, *route, "a channel rebound to another peer in place");
                }
            }
            Command::RemoveChannel(route) => {
                let key = (route.client, route.channel.get());
                assert_eq!(
                    self.channels.remove(&key),
                    Some(*route),
                    "removed a route that was not installed"
                );
            }
            Command::InstallPermission { relay, peer } => {
                assert!(
                    self.sockets.contains(relay),
                    "permission on a closed socket"
                );
                assert_eq!(AddressFamily::of(*peer), relay.family);
                self.permissions.insert((*relay, *peer));
            }
            Command::RemovePermission { relay, peer } => {
                assert!(
                    self.permissions.remove(&(*relay, *peer)),
                    "removed a permission that was not installed"
                );
                assert!(
                    !self
                        .channels
                        .values()
                        .any(|route| route.relay == *relay && route.peer.ip() == *peer),
                    "permission removed under an installed channel"
                );
            }
            Command::SendToClient { to, payload } => {
                assert!(
                    Message::parse(payload).is_ok(),
                    "the server sent a malformed message"
                );
                if let Some(client) = clients.iter_mut().find(|client| client.five_tuple == *to) {
                    client.learn(payload);
                }
            }
            Command::SendToPeer { .. } => {}
        }
    }
}

struct Run {
    server: Server<ChaCha8Rng>,
    now: Instant,
    clients: Vec<Client>,
    model: Model,
    last_request: Option<(usize, Vec<u8>)>,
}

impl Run {
    fn drain(&mut self) {
        while let Some(command) = self.server.next_command() {
            self.model.execute(&command, &mut self.clients);
        }
    }

    fn check_forward(&self, forward: Option<Forward>, len: usize) {
        match forward {
            Some(Forward::ToPeer { relay, payload, .. }) => {
                assert!(
                    self.model.sockets.contains(&relay),
                    "relayed from a closed socket"
                );
                assert!(payload.end <= len && payload.start <= payload.end);
            }
            Some(Forward::ToClient { payload, .. }) => {
                assert!(payload.end <= len && payload.start <= payload.end);
            }
            None => {}
        }
    }

    fn from_client(&mut self, client: usize, datagram: &[u8]) {
        let five_tuple = self.clients[client].five_tuple;
        let forward = self
            .server
            .handle_client_datagram(self.now, five_tuple, datagram);
        self.check_forward(forward, datagram.len());
        self.drain();
    }

    fn request(&mut self, client: usize, method: Method, attributes: &[Attribute<'_>]) {
        let request = self.clients[client].message(method, Class::Request, attributes);
        self.from_client(client, &request);
        self.last_request = Some((client, request));
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        if self.server.poll_timeout().is_some_and(|at| at <= self.now) {
            self.server.handle_timeout(self.now);
        }
        self.drain();
    }

    /// Counts the server reports against what its commands installed.
    fn check_counts(&self) {
        let ports: BTreeSet<u16> = self
            .model
            .sockets
            .iter()
            .map(|socket| socket.port)
            .collect();
        assert_eq!(self.server.allocation_count(), ports.len());
        assert_eq!(self.server.permission_count(), self.model.permissions.len());
        assert_eq!(
            self.server.active_channel_count(),
            self.model.channels.len()
        );
        let allocations = self.server.allocation_count();
        let footprint = self.server.footprint();
        // A deadline per allocation family, permission, channel and EVEN-PORT reservation.
        assert!(
            footprint.timers
                <= 2 * allocations
                    + self.server.permission_count()
                    + CHANNELS_PER_ALLOCATION * allocations
                    + self.server.reservation_count(),
            "{footprint:?}"
        );
    }

    /// Everything installed is gone and every table is empty.
    fn check_empty(&self) {
        assert_eq!(self.server.allocation_count(), 0);
        assert!(self.model.sockets.is_empty(), "{:?}", self.model.sockets);
        assert!(self.model.channels.is_empty(), "{:?}", self.model.channels);
        assert!(
            self.model.permissions.is_empty(),
            "{:?}",
            self.model.permissions
        );
        let footprint = self.server.footprint();
        assert_eq!(footprint.timers, 0, "{footprint:?}");
        assert_eq!(footprint.table_entries, 0, "{footprint:?}");
    }
}

fn config(input: &mut Input<'_>) -> Config {
    let credentials = CredentialStore::new(REALM)
        .with_static_user("alice", Password::new(PASSWORD))
        .with_static_user("bob", Password::new(PASSWORD))
        .with_rest_secret(SharedSecret::new(REST_SECRET.to_vec()));
    let allowed = ["192.0.2.0/24", "2001:db8:ffff::/48"].map(|cidr| {
        cidr.parse::<Cidr>()
            .unwrap_or_else(|_| unreachable!("constant CIDR"))
    });
    let mut config = Config::new(credentials, PeerPolicy::new().with_allowed(allowed));
    let flags = input.byte();
    config.relay_ipv4 = Some(RELAY_V4.parse().unwrap_or_else(|_| unreachable!()));
    if flags & 1 == 0 {
        config.relay_ipv6 = Some(RELAY_V6.parse().unwrap_or_else(|_| unreachable!()));
    }
    config.offer_sha256 = flags & 2 == 0;
    if flags & 4 != 0 {
        config.software = Some("turnpike fuzz".to_owned());
    }
    config.relay_ports = PORTS;
    config.quotas.allocations_total = 6;
    config.quotas.allocations_per_user = 4;
    config.quotas.permissions_per_allocation = 3;
    config.quotas.channels_per_allocation = CHANNELS_PER_ALLOCATION;
    config.quotas.cached_transactions = 8;
    if flags & 8 != 0 {
        config.lifetimes.credential_max = Duration::from_secs(3600);
    }
    config
}

fn client(input: &mut Input<'_>, index: usize) -> Client {
    let five_tuple = {
        let client = addr(CLIENTS[index]);
        let server = if client.is_ipv4() {
            SocketAddr::new(RELAY_V4.parse().unwrap_or_else(|_| unreachable!()), 3478)
        } else {
            SocketAddr::new(RELAY_V6.parse().unwrap_or_else(|_| unreachable!()), 3478)
        };
        FiveTuple::udp(client, server)
    };
    let kind = input.byte();
    let (username, password) = match kind % 4 {
        0 | 1 => ("alice".to_owned(), PASSWORD.to_owned()),
        2 => ("bob".to_owned(), PASSWORD.to_owned()),
        _ => {
            let ahead = [30, 600, 7200, 3 * 24 * 3600][usize::from(kind >> 2) % 4];
            let username = format!("{}:alice", START_UNIX + ahead);
            let store = CredentialStore::new(REALM)
                .with_rest_secret(SharedSecret::new(REST_SECRET.to_vec()));
            let password = store
                .candidate_passwords(&username, START_UNIX)
                .ok()
                .and_then(|mut passwords| passwords.next())
                .map(|password| String::from_utf8_lossy(password.as_bytes()).into_owned())
                .unwrap_or_default();
            (username, password)
        }
    };
    let sha256 = kind & 0x40 != 0;
    Client {
        five_tuple,
        key: Client::derive_key(&username, &password, sha256),
        username,
        nonce: None,
        sha256,
        fingerprint: kind & 0x80 == 0,
        next_transaction: 0,
    }
}

fn peer(input: &mut Input<'_>, run: &Run) -> SocketAddr {
    let choice = input.byte();
    if choice & 0x80 != 0 {
        // One of the relay's own relayed addresses: a hairpin to another allocation.
        if let Some(socket) = run.model.sockets.iter().nth(usize::from(choice & 0x07)) {
            let ip: IpAddr = match socket.family {
                AddressFamily::V4 => RELAY_V4.parse().unwrap_or_else(|_| unreachable!()),
                AddressFamily::V6 => RELAY_V6.parse().unwrap_or_else(|_| unreachable!()),
            };
            return SocketAddr::new(ip, socket.port);
        }
    }
    addr(PEERS[usize::from(choice) % PEERS.len()])
}

fn lifetime(input: &mut Input<'_>) -> u32 {
    input.pick(&[0, 0, 1, 600, 3600, u32::MAX])
}

fn step(run: &mut Run, input: &mut Input<'_>) {
    let op = input.byte();
    let client = usize::from(input.byte()) % run.clients.len();
    match op % 16 {
        0 | 1 => {
            let mut attributes = vec![Attribute::RequestedTransport(input.pick(&[17, 17, 17, 6]))];
            let flags = input.byte();
            if flags & 1 != 0 {
                attributes.push(Attribute::AdditionalAddressFamily(AddressFamily::V6));
            }
            if flags & 2 != 0 {
                attributes.push(Attribute::RequestedAddressFamily(if flags & 4 != 0 {
                    AddressFamily::V6
                } else {
                    AddressFamily::V4
                }));
            }
            if flags & 8 != 0 {
                attributes.push(Attribute::EvenPort {
                    reserve_next: flags & 16 != 0,
                });
            }
            if flags & 32 != 0 {
                attributes.push(Attribute::Lifetime(lifetime(input)));
            }
            run.request(client, Method::Allocate, &attributes);
        }
        2 | 3 => {
            let mut attributes = Vec::new();
            let flags = input.byte();
            if flags & 1 != 0 {
                attributes.push(Attribute::Lifetime(lifetime(input)));
            }
            if flags & 2 != 0 {
                // A duplicate: only the first counts.
                attributes.push(Attribute::Lifetime(lifetime(input)));
            }
            if flags & 4 != 0 {
                attributes.push(Attribute::RequestedAddressFamily(if flags & 8 != 0 {
                    AddressFamily::V6
                } else {
                    AddressFamily::V4
                }));
            }
            run.request(client, Method::Refresh, &attributes);
        }
        4 | 5 => {
            let count = input.byte() % 4;
            let peers: Vec<Attribute<'_>> = (0..count)
                .map(|_| Attribute::XorPeerAddress(peer(input, run)))
                .collect();
            run.request(client, Method::CreatePermission, &peers);
        }
        6 | 7 => {
            let number = if input.byte() & 0x80 != 0 {
                input.u16()
            } else {
                0x4000 + u16::from(input.byte() % 5)
            };
            let peer = peer(input, run);
            let mut attributes = vec![
                Attribute::ChannelNumber(number),
                Attribute::XorPeerAddress(peer),
            ];
            if input.byte() & 1 != 0 {
                attributes.push(Attribute::ChannelNumber(
                    0x4000 + u16::from(input.byte() % 5),
                ));
            }
            run.request(client, Method::ChannelBind, &attributes);
        }
        8 => {
            let channel = 0x4000 + u16::from(input.byte() % 5);
            let len = input_len(input);
            let payload = input.take(usize::from(len));
            let mut datagram = channel.to_be_bytes().to_vec();
            datagram.extend_from_slice(&u16::try_from(payload.len()).unwrap_or(0).to_be_bytes());
            datagram.extend_from_slice(payload);
            run.from_client(client, &datagram);
        }
        9 => {
            let peer = peer(input, run);
            let len = input_len(input);
            let data = input.take(usize::from(len)).to_vec();
            let indication = run.clients[client].message(
                Method::Send,
                Class::Indication,
                &[Attribute::XorPeerAddress(peer), Attribute::Data(&data)],
            );
            run.from_client(client, &indication);
        }
        10 => {
            let socket = if input.byte() & 1 == 0 {
                run.model
                    .sockets
                    .iter()
                    .nth(usize::from(input.byte() % 8))
                    .copied()
            } else {
                None
            }
            .unwrap_or_else(|| RelaySocket {
                port: *PORTS.start() + u16::from(input.byte() % 20),
                family: input.pick(&[AddressFamily::V4, AddressFamily::V6]),
            });
            let peer = peer(input, run);
            let len = input_len(input);
            let datagram = input.take(usize::from(len)).to_vec();
            let forward = run
                .server
                .handle_peer_datagram(run.now, socket, peer, &datagram);
            run.check_forward(forward, datagram.len());
            run.drain();
        }
        11 => {
            let request = run.clients[client].message(Method::Binding, Class::Request, &[]);
            run.from_client(client, &request);
        }
        12 => {
            // Raw bytes, or a unknown comprehension-required attribute in a request.
            if input.byte() & 1 == 0 {
                let len = input_len(input);
                let datagram = input.take(usize::from(len)).to_vec();
                run.from_client(client, &datagram);
            } else {
                let unknown = Attribute::Unknown(RawAttribute::new(AttributeType(0x7F00), b"x"));
                run.request(client, Method::Refresh, &[unknown]);
            }
        }
        13 => {
            // A retransmission, or the last request with one byte changed.
            if let Some((owner, mut request)) = run.last_request.clone() {
                if input.byte() & 1 != 0 && !request.is_empty() {
                    let at = usize::from(input.u16()) % request.len();
                    request[at] ^= input.byte() | 1;
                }
                run.from_client(owner, &request);
            }
        }
        14 => {
            let by = match input.byte() % 8 {
                0..=2 => Duration::from_millis(u64::from(input.u16())),
                3..=5 => Duration::from_secs(u64::from(input.u16() % 700)),
                6 => Duration::from_secs(u64::from(input.u16()) * 10),
                _ => Duration::from_secs(300),
            };
            run.advance(by);
        }
        _ => match input.byte() % 8 {
            0 => run.server.begin_drain(),
            1 => {
                // The wall clock steps (NTP), forwards or back by up to a day.
                let offset = u64::from(input.u16()) * 2;
                let unix = if input.byte() & 1 == 0 {
                    START_UNIX + offset
                } else {
                    START_UNIX - offset
                };
                run.server
                    .set_wall_clock(run.now, Duration::from_secs(unix));
            }
            2 => {
                // A fresh client on a slot: new credentials, new nonce.
                run.clients[client] = self::client(input, client);
            }
            _ => run.advance(Duration::from_millis(u64::from(input.byte()))),
        },
    }
}

/// Payload lengths: mostly short, sometimes up to 1500 bytes (bounded by the input left).
fn input_len(input: &mut Input<'_>) -> u16 {
    match input.byte() {
        0..=239 => u16::from(input.byte() % 64),
        _ => input.u16() % 1500,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input { bytes: data };
    let seed = input.u64();
    let config = config(&mut input);
    let start = Instant::now();
    let server = Server::new(
        config,
        ChaCha8Rng::seed_from_u64(seed),
        start,
        Duration::from_secs(START_UNIX),
    );
    let clients = (0..CLIENTS.len())
        .map(|index| client(&mut input, index))
        .collect();
    let mut run = Run {
        server,
        now: start,
        clients,
        model: Model::default(),
        last_request: None,
    };
    let ending = input.byte();
    while !input.is_empty() {
        step(&mut run, &mut input);
        run.check_counts();
    }
    if ending & 1 == 0 {
        // Everything expires: allocation lifetimes are capped at 7 days.
        for _ in 0..8 {
            run.advance(Duration::from_secs(24 * 3600));
        }
        run.check_empty();
    }
    run.server.shutdown();
    run.drain();
    run.check_empty();
    if trace() {
        eprintln!("{:?}", run.server.stats());
    }
});
