//! A relay loaded the way clients load one: 16,384 allocations with 4 channels each, made by
//! real, signed Allocate and ChannelBind requests through the public API. Shared by the
//! `core` benchmark and the `memory` example.

#![allow(
    dead_code,
    reason = "each of the two targets that include this module uses a different part of it"
)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use turnpike_proto::{
    AddressFamily, Attribute, AttributeType, Class, Message, MessageEncoder, MessageType, Method,
    TransactionId,
};
use turnpike_relay::auth::credentials::{
    CredentialStore, LongTermKey, Password, PasswordAlgorithm,
};
use turnpike_relay::policy::{Cidr, PeerPolicy};
use turnpike_relay::{Command, Config, FiveTuple, RelaySocket, Server};

pub(crate) const ALLOCATIONS: usize = 16_384;
pub(crate) const CHANNELS_PER_ALLOCATION: usize = 4;
/// Payload of every relayed test packet: a typical small media packet.
pub(crate) const PAYLOAD_LEN: usize = 100;

const REALM: &str = "turnpike.bench";
const USER: &str = "alice";
const PASSWORD: &str = "correct horse";
const LISTEN: &str = "198.51.100.1:3478";
/// 2023-11-14T22:13:20Z.
const START_UNIX: u64 = 1_700_000_000;
/// Client addresses are 100.64.0.0 onwards, one IP per client, so that no unauthenticated rate
/// limit bucket runs dry while thousands of clients are challenged at one instant.
const FIRST_CLIENT: u32 = 0x6440_0000;

/// One allocation and its four channels, as a client sees them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flow {
    pub(crate) client: FiveTuple,
    pub(crate) relay: RelaySocket,
    pub(crate) peers: [SocketAddr; CHANNELS_PER_ALLOCATION],
}

/// The channel number of a flow's `index`th channel.
pub(crate) fn channel_number(index: usize) -> u16 {
    0x4000 + u16::try_from(index).expect("a handful of channels per allocation")
}

/// ChannelData on `number` with a payload of [`PAYLOAD_LEN`] bytes.
pub(crate) fn channel_data(number: u16) -> Vec<u8> {
    let mut datagram = number.to_be_bytes().to_vec();
    let length = u16::try_from(PAYLOAD_LEN).expect("a small payload");
    datagram.extend_from_slice(&length.to_be_bytes());
    datagram.resize(4 + PAYLOAD_LEN, 0xAB);
    datagram
}

/// The relay's configuration: 32,768 relayed ports (half stay free, for allocations made while
/// it is loaded), quotas raised so one user may hold them all, and peers in 192.0.2.0/24.
pub(crate) fn config() -> Config {
    let credentials = CredentialStore::new(REALM).with_static_user(USER, Password::new(PASSWORD));
    let allowed: Cidr = "192.0.2.0/24".parse().expect("a valid CIDR");
    let mut config = Config::new(credentials, PeerPolicy::new().with_allowed([allowed]));
    config.relay_ipv4 = Some(Ipv4Addr::new(198, 51, 100, 1));
    config.relay_ports = 32768..=65535;
    config.quotas.allocations_total = 1 << 20;
    config.quotas.allocations_per_user = 1 << 20;
    config
}

pub(crate) fn new_server(now: Instant) -> Server<ChaCha8Rng> {
    server_with(config(), now)
}

pub(crate) fn server_with(config: Config, now: Instant) -> Server<ChaCha8Rng> {
    Server::new(
        config,
        ChaCha8Rng::seed_from_u64(7),
        now,
        Duration::from_secs(START_UNIX),
    )
}

/// The `index`th client's 5-tuple.
pub(crate) fn client(index: usize) -> FiveTuple {
    let offset = u32::try_from(index).expect("fewer than 2^32 clients");
    let ip = Ipv4Addr::from(FIRST_CLIENT + offset);
    FiveTuple::udp(
        SocketAddr::new(IpAddr::V4(ip), 40000),
        LISTEN.parse().expect("a valid address"),
    )
}

/// Builds signed requests with unique transaction IDs.
#[derive(Debug)]
pub(crate) struct Signer {
    key: LongTermKey,
    next_transaction: u64,
}

impl Default for Signer {
    fn default() -> Self {
        Self {
            key: LongTermKey::derive(PasswordAlgorithm::Md5, USER, REALM, PASSWORD),
            next_transaction: 0,
        }
    }
}

impl Signer {
    fn transaction_id(&mut self) -> TransactionId {
        self.next_transaction += 1;
        let mut id = [0x5A; 12];
        id[..8].copy_from_slice(&self.next_transaction.to_be_bytes());
        TransactionId(id)
    }

    /// A request of `method` with `attributes`, and long-term credentials if `nonce` is given.
    pub(crate) fn request(
        &mut self,
        method: Method,
        nonce: Option<&str>,
        attributes: &[Attribute<'_>],
    ) -> Vec<u8> {
        let mut buf = vec![0; 512];
        let mut encoder = MessageEncoder::new(
            &mut buf,
            MessageType::new(method, Class::Request),
            self.transaction_id(),
        )
        .expect("512 bytes hold a header");
        for attribute in attributes {
            encoder.push(attribute).expect("512 bytes hold the request");
        }
        if let Some(nonce) = nonce {
            for attribute in [
                Attribute::Username(USER),
                Attribute::Realm(REALM),
                Attribute::Nonce(nonce),
            ] {
                encoder
                    .push(&attribute)
                    .expect("512 bytes hold the request");
            }
            encoder
                .push_message_integrity(self.key.as_bytes())
                .expect("512 bytes hold the request");
        }
        encoder
            .push_fingerprint()
            .expect("512 bytes hold the request");
        let len = encoder.finish();
        buf.truncate(len);
        buf
    }
}

/// Every command the server has queued, which the caller then drops or inspects.
pub(crate) fn drain(server: &mut Server<ChaCha8Rng>) -> Vec<Command> {
    std::iter::from_fn(|| server.next_command()).collect()
}

/// Sends `request` from `client` and returns the one response.
fn exchange(
    server: &mut Server<ChaCha8Rng>,
    now: Instant,
    client: FiveTuple,
    request: &[u8],
) -> Vec<u8> {
    server.handle_client_datagram(now, client, request);
    drain(server)
        .into_iter()
        .find_map(|command| match command {
            Command::SendToClient { payload, .. } => Some(payload),
            _ => None,
        })
        .expect("every request is answered")
}

fn attribute<T>(response: &[u8], pick: impl Fn(Attribute<'_>) -> Option<T>) -> Option<T> {
    let message = Message::parse(response).expect("responses parse");
    let transaction_id = message.transaction_id();
    message
        .attributes()
        .filter_map(|raw| Attribute::decode(raw, &transaction_id).ok())
        .find_map(pick)
}

fn assert_success(response: &[u8]) {
    let message = Message::parse(response).expect("responses parse");
    assert_eq!(
        message.class(),
        Class::SuccessResponse,
        "error {:?}",
        message.attribute(AttributeType::ERROR_CODE)
    );
}

/// The nonce a challenge gives `client`.
pub(crate) fn challenge(
    server: &mut Server<ChaCha8Rng>,
    now: Instant,
    signer: &mut Signer,
    client: FiveTuple,
) -> String {
    let request = signer.request(Method::Allocate, None, &[Attribute::RequestedTransport(17)]);
    let response = exchange(server, now, client, &request);
    attribute(&response, |attribute| match attribute {
        Attribute::Nonce(nonce) => Some(nonce.to_owned()),
        _ => None,
    })
    .expect("a challenge carries a nonce")
}

/// Allocates for `client` with `nonce` and returns the relayed socket.
pub(crate) fn allocate(
    server: &mut Server<ChaCha8Rng>,
    now: Instant,
    signer: &mut Signer,
    client: FiveTuple,
    nonce: &str,
) -> RelaySocket {
    let request = signer.request(
        Method::Allocate,
        Some(nonce),
        &[Attribute::RequestedTransport(17)],
    );
    let response = exchange(server, now, client, &request);
    assert_success(&response);
    let relayed = attribute(&response, |attribute| match attribute {
        Attribute::XorRelayedAddress(address) => Some(address),
        _ => None,
    })
    .expect("a relayed address");
    RelaySocket {
        port: relayed.port(),
        family: AddressFamily::V4,
    }
}

/// Loads `server` with [`ALLOCATIONS`] allocations of [`CHANNELS_PER_ALLOCATION`] channels each,
/// every channel to a peer of its own IP (so one permission each).
pub(crate) fn load(server: &mut Server<ChaCha8Rng>, now: Instant) -> Vec<Flow> {
    let mut signer = Signer::default();
    let mut flows = Vec::with_capacity(ALLOCATIONS);
    for index in 0..ALLOCATIONS {
        let client = client(index);
        let nonce = challenge(server, now, &mut signer, client);
        let relay = allocate(server, now, &mut signer, client, &nonce);
        let peers: [SocketAddr; CHANNELS_PER_ALLOCATION] = std::array::from_fn(|channel| {
            let host = u8::try_from(channel + 1).expect("a handful of peers");
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, host)), 5000)
        });
        for (channel, peer) in peers.iter().enumerate() {
            let request = signer.request(
                Method::ChannelBind,
                Some(&nonce),
                &[
                    Attribute::ChannelNumber(channel_number(channel)),
                    Attribute::XorPeerAddress(*peer),
                ],
            );
            assert_success(&exchange(server, now, client, &request));
        }
        flows.push(Flow {
            client,
            relay,
            peers,
        });
    }
    assert_eq!(server.allocation_count(), ALLOCATIONS);
    assert_eq!(
        server.active_channel_count(),
        ALLOCATIONS * CHANNELS_PER_ALLOCATION
    );
    flows
}
