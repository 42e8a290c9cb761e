//! A virtual-time harness: one `Server`, a clock moved by hand, and clients that speak real
//! STUN through the codec. Nothing here sleeps.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "a test-only module shared by several test binaries, each using a part"
)]
#![expect(
    clippy::wrong_self_convention,
    reason = "`from_client` and `from_peer` say where a datagram comes from; no conversion"
)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use turnpike_proto::{
    Attribute, AttributeType, Class, ErrorCode, Message, MessageEncoder, MessageType, Method,
    TransactionId,
};
use turnpike_relay::auth::credentials::{
    CredentialStore, LongTermKey, Password, PasswordAlgorithm, SharedSecret,
};
use turnpike_relay::policy::{Cidr, PeerPolicy};
use turnpike_relay::{Command, Config, FiveTuple, Forward, RelaySocket, Server};

pub const REALM: &str = "turnpike.test";
pub const USER: &str = "alice";
pub const PASSWORD: &str = "correct horse";
pub const REST_SECRET: &str = "rest-secret";
/// 2023-11-14T22:13:20Z: the wall clock every harness starts at.
pub const START_UNIX: u64 = 1_700_000_000;
pub const RELAY_V4: &str = "198.51.100.1";
pub const RELAY_V6: &str = "2001:db8::1";
pub const LISTEN_V4: &str = "198.51.100.1:3478";
pub const LISTEN_V6: &str = "[2001:db8::1]:3478";

pub fn config() -> Config {
    let credentials = CredentialStore::new(REALM)
        .with_static_user(USER, Password::new(PASSWORD))
        .with_static_user("bob", Password::new("hunter2"))
        .with_rest_secret(SharedSecret::new(REST_SECRET.as_bytes().to_vec()));
    // Documentation ranges stand in for public peers in these tests.
    let policy = PeerPolicy::new().with_allowed(
        ["192.0.2.0/24", "203.0.113.0/24", "2001:db8:ffff::/48"]
            .map(|cidr| cidr.parse::<Cidr>().unwrap()),
    );
    let mut config = Config::new(credentials, policy);
    config.relay_ipv4 = Some(RELAY_V4.parse().unwrap());
    config.relay_ipv6 = Some(RELAY_V6.parse().unwrap());
    config
}

pub struct Harness {
    pub server: Server<ChaCha8Rng>,
    pub now: Instant,
    pub start: Instant,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_config(config())
    }

    pub fn with_config(config: Config) -> Self {
        Self::with_seed(config, 42)
    }

    /// A harness whose server draws its randomness from `seed`.
    pub fn with_seed(config: Config, seed: u64) -> Self {
        let start = Instant::now();
        let server = Server::new(
            config,
            ChaCha8Rng::seed_from_u64(seed),
            start,
            Duration::from_secs(START_UNIX),
        );
        Self {
            server,
            now: start,
            start,
        }
    }

    pub fn unix_now(&self) -> u64 {
        START_UNIX + (self.now - self.start).as_secs()
    }

    /// Moves the clock and fires whatever is due, returning the commands that produced.
    pub fn advance(&mut self, by: Duration) -> Vec<Command> {
        self.now += by;
        self.server.handle_timeout(self.now);
        self.drain()
    }

    pub fn drain(&mut self) -> Vec<Command> {
        std::iter::from_fn(|| self.server.next_command()).collect()
    }

    pub fn from_client(
        &mut self,
        from: FiveTuple,
        datagram: &[u8],
    ) -> (Option<Forward>, Vec<Command>) {
        let forward = self.server.handle_client_datagram(self.now, from, datagram);
        (forward, self.drain())
    }

    pub fn from_peer(
        &mut self,
        relay: RelaySocket,
        peer: SocketAddr,
        datagram: &[u8],
    ) -> (Option<Forward>, Vec<Command>) {
        let forward = self
            .server
            .handle_peer_datagram(self.now, relay, peer, datagram);
        (forward, self.drain())
    }
}

/// The messages in `commands` sent to the client of `to`.
pub fn sent_to(commands: &[Command], to: FiveTuple) -> Vec<Vec<u8>> {
    commands
        .iter()
        .filter_map(|command| match command {
            Command::SendToClient {
                to: recipient,
                payload,
            } if *recipient == to => Some(payload.clone()),
            _ => None,
        })
        .collect()
}

/// The one response in `commands`, parsed.
pub fn only_response(commands: &[Command]) -> Vec<u8> {
    let responses: Vec<&Vec<u8>> = commands
        .iter()
        .filter_map(|command| match command {
            Command::SendToClient { payload, .. } => Some(payload),
            _ => None,
        })
        .collect();
    assert_eq!(responses.len(), 1, "expected one response in {commands:?}");
    responses[0].clone()
}

/// The error code of an error response, or `None` for a success response.
pub fn error_code(response: &[u8]) -> Option<ErrorCode> {
    let message = Message::parse(response).expect("response parses");
    if message.class() == Class::SuccessResponse {
        return None;
    }
    assert_eq!(message.class(), Class::ErrorResponse);
    let raw = message
        .attribute(AttributeType::ERROR_CODE)
        .expect("error responses carry ERROR-CODE");
    match Attribute::decode(raw, &message.transaction_id()) {
        Ok(Attribute::ErrorCode { code, .. }) => Some(code),
        other => panic!("bad ERROR-CODE: {other:?}"),
    }
}

/// Every attribute of a message, decoded, with its transaction ID.
pub fn attributes(bytes: &[u8]) -> Vec<Attribute<'_>> {
    let message = Message::parse(bytes).expect("parses");
    let transaction_id = message.transaction_id();
    message
        .attributes()
        .map(|raw| Attribute::decode(raw, &transaction_id).expect("decodes"))
        .collect()
}

pub fn five_tuple(client: &str) -> FiveTuple {
    let client: SocketAddr = client.parse().unwrap();
    let server = if client.is_ipv4() {
        LISTEN_V4
    } else {
        LISTEN_V6
    };
    FiveTuple::udp(client, server.parse().unwrap())
}

/// A TURN client that builds real requests and learns realm and nonce from challenges.
pub struct Client {
    pub five_tuple: FiveTuple,
    pub username: String,
    pub password: String,
    pub realm: String,
    pub nonce: Option<String>,
    pub sha256: bool,
    pub fingerprint: bool,
    next_transaction: u8,
}

impl Client {
    pub fn new(address: &str) -> Self {
        Self::with_credentials(address, USER, PASSWORD)
    }

    pub fn with_credentials(address: &str, username: &str, password: &str) -> Self {
        Self {
            five_tuple: five_tuple(address),
            username: username.to_owned(),
            password: password.to_owned(),
            realm: REALM.to_owned(),
            nonce: None,
            sha256: false,
            fingerprint: true,
            next_transaction: 0,
        }
    }

    pub fn transaction_id(&mut self) -> TransactionId {
        self.next_transaction = self.next_transaction.wrapping_add(1);
        let mut id = [0xA5; 12];
        id[11] = self.next_transaction;
        id[0] = self.five_tuple.client.port().to_be_bytes()[0];
        id[1] = self.five_tuple.client.port().to_be_bytes()[1];
        TransactionId(id)
    }

    pub fn key(&self) -> LongTermKey {
        let algorithm = if self.sha256 {
            PasswordAlgorithm::Sha256
        } else {
            PasswordAlgorithm::Md5
        };
        LongTermKey::derive(
            algorithm,
            &self.username,
            &self.realm,
            self.password.as_bytes(),
        )
    }

    /// A request with `attributes`, signed when a nonce is known.
    pub fn request(&mut self, method: Method, attributes: &[Attribute<'_>]) -> Vec<u8> {
        let transaction_id = self.transaction_id();
        self.request_with_id(method, transaction_id, attributes)
    }

    pub fn request_with_id(
        &self,
        method: Method,
        transaction_id: TransactionId,
        attributes: &[Attribute<'_>],
    ) -> Vec<u8> {
        let mut buf = vec![0; 1500];
        let mut encoder = MessageEncoder::new(
            &mut buf,
            MessageType::new(method, Class::Request),
            transaction_id,
        )
        .unwrap();
        for attribute in attributes {
            encoder.push(attribute).unwrap();
        }
        if let Some(nonce) = &self.nonce {
            encoder.push(&Attribute::Username(&self.username)).unwrap();
            encoder.push(&Attribute::Realm(&self.realm)).unwrap();
            encoder.push(&Attribute::Nonce(nonce)).unwrap();
            if self.sha256 {
                let offered = [0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00];
                encoder
                    .push(&Attribute::password_algorithms(&offered).unwrap())
                    .unwrap();
                encoder
                    .push(&Attribute::PasswordAlgorithm(
                        turnpike_proto::PasswordAlgorithm {
                            algorithm: turnpike_proto::PasswordAlgorithm::SHA256,
                            parameters: &[],
                        },
                    ))
                    .unwrap();
                encoder
                    .push_message_integrity_sha256(self.key().as_bytes(), 32)
                    .unwrap();
            } else {
                encoder
                    .push_message_integrity(self.key().as_bytes())
                    .unwrap();
            }
        }
        if self.fingerprint {
            encoder.push_fingerprint().unwrap();
        }
        let len = encoder.finish();
        buf.truncate(len);
        buf
    }

    /// Learns realm and nonce from a 401 or 438 response.
    pub fn learn(&mut self, response: &[u8]) {
        for attribute in attributes(response) {
            match attribute {
                Attribute::Nonce(nonce) => self.nonce = Some(nonce.to_owned()),
                Attribute::Realm(realm) => self.realm = realm.to_owned(),
                _ => {}
            }
        }
    }

    /// Sends an unauthenticated Allocate to learn the nonce.
    pub fn handshake(&mut self, harness: &mut Harness) {
        let request = self.request(Method::Allocate, &[Attribute::RequestedTransport(17)]);
        let (_, commands) = harness.from_client(self.five_tuple, &request);
        let response = only_response(&commands);
        assert_eq!(error_code(&response), Some(ErrorCode::UNAUTHORIZED));
        self.learn(&response);
    }

    /// Sends a request (after the handshake if needed) and returns the response and all
    /// commands.
    pub fn send(
        &mut self,
        harness: &mut Harness,
        method: Method,
        attributes: &[Attribute<'_>],
    ) -> (Vec<u8>, Vec<Command>) {
        if self.nonce.is_none() {
            self.handshake(harness);
        }
        let request = self.request(method, attributes);
        let (forward, commands) = harness.from_client(self.five_tuple, &request);
        assert!(forward.is_none());
        let response = only_response(&commands);
        if error_code(&response) == Some(ErrorCode::STALE_NONCE) {
            // What every client does: take the fresh nonce and try once more.
            self.learn(&response);
            let request = self.request(method, attributes);
            let (_, commands) = harness.from_client(self.five_tuple, &request);
            return (only_response(&commands), commands);
        }
        (response, commands)
    }

    /// Allocates an IPv4 relayed address and returns it.
    pub fn allocate(&mut self, harness: &mut Harness) -> SocketAddr {
        let (response, _) = self.send(
            harness,
            Method::Allocate,
            &[Attribute::RequestedTransport(17)],
        );
        assert_eq!(error_code(&response), None, "allocate failed");
        relayed_addresses(&response)[0]
    }

    pub fn verify_response(&self, response: &[u8]) {
        let message = Message::parse(response).unwrap();
        let key = self.key();
        if self.sha256 {
            message
                .verify_message_integrity_sha256(key.as_bytes())
                .expect("signed with SHA-256");
        } else {
            message
                .verify_message_integrity(key.as_bytes())
                .expect("signed with SHA-1");
        }
    }
}

pub fn relayed_addresses(response: &[u8]) -> Vec<SocketAddr> {
    attributes(response)
        .into_iter()
        .filter_map(|attribute| match attribute {
            Attribute::XorRelayedAddress(address) => Some(address),
            _ => None,
        })
        .collect()
}

pub fn lifetime(response: &[u8]) -> Option<u32> {
    attributes(response)
        .into_iter()
        .find_map(|attribute| match attribute {
            Attribute::Lifetime(seconds) => Some(seconds),
            _ => None,
        })
}

pub fn relay_socket(address: SocketAddr) -> RelaySocket {
    RelaySocket {
        port: address.port(),
        family: turnpike_proto::AddressFamily::of(address.ip()),
    }
}

/// ChannelData framing, for test traffic.
pub fn channel_data(channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut bytes = channel.to_be_bytes().to_vec();
    bytes.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}
