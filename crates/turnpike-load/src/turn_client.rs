//! Just enough of a TURN client to set up load: Allocate with long-term credentials (learning
//! realm and nonce from the 401), then ChannelBind to a peer. Blocking, with retransmissions.
//! While the load runs, [`Allocation::refresh_request`] and [`Allocation::refresh_answered`]
//! keep the allocation, its permission and its channel alive without blocking.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// How often a load client refreshes at the most: permissions last 300 s (RFC 8656 §9),
/// channels 600 s, and a ChannelBind refreshes both.
const REFRESH_AT_MOST_EVERY: Duration = Duration::from_secs(120);

use anyhow::{Context, Result, bail};
use rand::RngCore;
use turnpike_proto::{
    Attribute, AttributeType, Class, ErrorCode, Message, MessageEncoder, MessageType, Method,
    TransactionId,
};
use turnpike_relay::auth::credentials::{LongTermKey, PasswordAlgorithm};

/// REST API credentials (draft-uberti-behave-turn-rest): `<expiry>:<user>` and
/// base64(HMAC-SHA1(secret, username)).
pub fn rest_credentials(secret: &str, user: &str, expiry_unix: u64) -> (String, String) {
    use base64::Engine as _;
    use hmac::Mac as _;
    let username = format!("{expiry_unix}:{user}");
    let mut mac = <hmac::Hmac<sha1::Sha1> as hmac::Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

/// One client socket with an allocation on the server.
#[derive(Debug)]
pub struct Allocation {
    pub socket: UdpSocket,
    pub server: SocketAddr,
    pub relayed: SocketAddr,
    username: String,
    password: String,
    /// Realm and nonce as last learnt from the server, for the refreshes.
    realm: String,
    nonce: Option<String>,
    keep_alive: KeepAlive,
}

/// What keeps an allocation, its permission and its channel alive while load runs over it: the
/// channel binding to renew and the lifetime the server granted.
#[derive(Debug, Clone, Copy)]
pub struct KeepAlive {
    pub peer: SocketAddr,
    pub channel: u16,
    pub lifetime: Duration,
}

impl KeepAlive {
    /// The binding of `channel` to `peer`, with the lifetime of an Allocate success response
    /// (600 s, the RFC's default, if it names none).
    pub fn granted(peer: SocketAddr, channel: u16, allocated: &[u8]) -> Self {
        Self {
            peer,
            channel,
            lifetime: granted_lifetime(allocated).unwrap_or(Duration::from_secs(600)),
        }
    }

    /// How often to refresh: half the granted lifetime, and often enough for the permission.
    pub fn interval(&self) -> Duration {
        (self.lifetime / 2)
            .min(REFRESH_AT_MOST_EVERY)
            .max(Duration::from_secs(1))
    }

    /// A request that keeps the allocation alive (`Refresh`) or its channel and permission
    /// (`ChannelBind` again), signed as [`encode_request`] signs.
    ///
    /// # Errors
    /// When the request cannot be encoded.
    pub fn request(
        &self,
        method: Method,
        username: &str,
        password: &str,
        realm: &str,
        nonce: Option<&str>,
    ) -> Result<(TransactionId, Vec<u8>)> {
        let lifetime = u32::try_from(self.lifetime.as_secs()).unwrap_or(u32::MAX);
        let bind = [
            Attribute::ChannelNumber(self.channel),
            Attribute::XorPeerAddress(self.peer),
        ];
        let refresh = [Attribute::Lifetime(lifetime)];
        let attributes: &[Attribute<'_>] = if method == Method::ChannelBind {
            &bind
        } else {
            &refresh
        };
        encode_request(method, attributes, username, password, realm, nonce)
    }
}

impl Allocation {
    /// How often to refresh (see [`KeepAlive::interval`]).
    pub fn refresh_interval(&self) -> Duration {
        self.keep_alive.interval()
    }

    /// A `Refresh` or `ChannelBind` request that keeps the allocation alive, signed with the
    /// nonce last learnt, to send without waiting.
    ///
    /// # Errors
    /// When the request cannot be encoded.
    pub fn refresh_request(&self, method: Method) -> Result<(TransactionId, Vec<u8>)> {
        self.keep_alive.request(
            method,
            &self.username,
            &self.password,
            &self.realm,
            self.nonce.as_deref(),
        )
    }

    /// What the answer to a [`Allocation::refresh_request`] says: `true` when it succeeded,
    /// `false` when it must be sent again (a 438 Stale Nonce or 401 taught a new nonce).
    ///
    /// # Errors
    /// When the server refused it for good.
    pub fn refresh_answered(&mut self, method: Method, response: &[u8]) -> Result<bool> {
        Ok(
            interpret_response(method, response.to_vec(), &mut self.realm, &mut self.nonce)?
                .is_some(),
        )
    }

    /// Deletes the allocation (Refresh with LIFETIME 0), so the server frees it now.
    pub fn release(self) -> Result<()> {
        self.socket.set_nonblocking(false)?;
        let mut session = Session {
            socket: &self.socket,
            server: self.server,
            username: &self.username,
            password: &self.password,
            realm: String::new(),
            nonce: None,
        };
        session
            .transact(Method::Refresh, &[Attribute::Lifetime(0)])
            .map(drop)
    }
}

struct Session<'a> {
    socket: &'a UdpSocket,
    server: SocketAddr,
    username: &'a str,
    password: &'a str,
    realm: String,
    nonce: Option<String>,
}

impl Session<'_> {
    /// Sends a request until a response with its transaction ID arrives (up to 7 tries, RFC 8489
    /// style doubling from 250 ms), re-authenticating once on 401 or 438.
    fn transact(&mut self, method: Method, attributes: &[Attribute<'_>]) -> Result<Vec<u8>> {
        for _ in 0..3 {
            let response = self.exchange(method, attributes)?;
            if let Some(success) =
                interpret_response(method, response, &mut self.realm, &mut self.nonce)?
            {
                return Ok(success);
            }
        }
        bail!("{method:?}: the server keeps refusing the credentials")
    }

    fn exchange(&self, method: Method, attributes: &[Attribute<'_>]) -> Result<Vec<u8>> {
        let (transaction_id, request) = encode_request(
            method,
            attributes,
            self.username,
            self.password,
            &self.realm,
            self.nonce.as_deref(),
        )?;
        udp_exchange(self.socket, self.server, method, transaction_id, &request)
    }
}

/// The (first) relayed address of an Allocate success response.
///
/// # Errors
/// When the response does not parse or carries no XOR-RELAYED-ADDRESS.
pub fn relayed_address(response: &[u8]) -> Result<SocketAddr> {
    let message = Message::parse(response)?;
    message
        .attributes()
        .filter(|raw| raw.kind() == AttributeType::XOR_RELAYED_ADDRESS)
        .find_map(
            |raw| match Attribute::decode(raw, &message.transaction_id()) {
                Ok(Attribute::XorRelayedAddress(address)) => Some(address),
                _ => None,
            },
        )
        .context("Allocate succeeded without XOR-RELAYED-ADDRESS")
}

/// A request with a fresh transaction ID, signed with the MD5 long-term key once the server's
/// nonce is known (before that, unsigned, to be challenged), with a FINGERPRINT.
///
/// # Errors
/// When the attributes do not fit a message.
pub fn encode_request(
    method: Method,
    attributes: &[Attribute<'_>],
    username: &str,
    password: &str,
    realm: &str,
    nonce: Option<&str>,
) -> Result<(TransactionId, Vec<u8>)> {
    let mut id = [0; 12];
    rand::rng().fill_bytes(&mut id);
    let transaction_id = TransactionId(id);
    let mut buf = vec![0; 1500];
    let mut encoder = MessageEncoder::new(
        &mut buf,
        MessageType::new(method, Class::Request),
        transaction_id,
    )?;
    for attribute in attributes {
        encoder.push(attribute)?;
    }
    if let Some(nonce) = nonce {
        let key = LongTermKey::derive(PasswordAlgorithm::Md5, username, realm, password.as_bytes());
        encoder.push(&Attribute::Username(username))?;
        encoder.push(&Attribute::Realm(realm))?;
        encoder.push(&Attribute::Nonce(nonce))?;
        encoder.push_message_integrity(key.as_bytes())?;
    }
    encoder.push_fingerprint()?;
    let len = encoder.finish();
    buf.truncate(len);
    Ok((transaction_id, buf))
}

/// Sends `request` over UDP until a response with its transaction ID arrives: up to 7 tries,
/// RFC 8489 style doubling from 250 ms.
///
/// # Errors
/// When sending fails or nothing answers.
pub fn udp_exchange(
    socket: &UdpSocket,
    server: SocketAddr,
    method: Method,
    transaction_id: TransactionId,
    request: &[u8],
) -> Result<Vec<u8>> {
    let mut timeout = Duration::from_millis(250);
    let mut response = vec![0; 2048];
    for _ in 0..7 {
        socket
            .send_to(request, server)
            .context("cannot send to the server")?;
        socket.set_read_timeout(Some(timeout))?;
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            match socket.recv_from(&mut response) {
                Ok((len, from)) if from == server => {
                    if let Ok(message) = Message::parse(&response[..len])
                        && message.transaction_id() == transaction_id
                    {
                        return Ok(response[..len].to_vec());
                    }
                }
                Ok(_) => {}
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(error) => return Err(error).context("cannot receive from the server"),
            }
        }
        timeout = (timeout * 2).min(Duration::from_secs(2));
    }
    bail!("no response from {server} to {method:?}")
}

/// What a long-term-credential client makes of a response (for UDP and stream clients alike):
/// the response on success; `None` to send the request again after a 401 or 438, having learnt
/// realm and nonce; an error otherwise ([`TryAlternate`] for a 300 that names another relay).
///
/// # Errors
/// When the response is malformed or names an error the client cannot recover from.
pub fn interpret_response(
    method: Method,
    response: Vec<u8>,
    realm: &mut String,
    nonce: &mut Option<String>,
) -> Result<Option<Vec<u8>>> {
    let message = Message::parse(&response).context("server sent a malformed response")?;
    if message.class() == Class::SuccessResponse {
        return Ok(Some(response));
    }
    let transaction_id = message.transaction_id();
    let mut code = None;
    let mut alternate = None;
    for raw in message.attributes() {
        match Attribute::decode(raw, &transaction_id) {
            Ok(Attribute::ErrorCode { code: value, .. }) => code = Some(value),
            Ok(Attribute::AlternateServer(address)) => alternate = Some(address),
            Ok(Attribute::Realm(value)) => *realm = value.to_owned(),
            Ok(Attribute::Nonce(value)) => *nonce = Some(value.to_owned()),
            _ => {}
        }
    }
    if let (Some(ErrorCode::TRY_ALTERNATE), Some(alternate)) = (code, alternate) {
        return Err(TryAlternate(alternate).into());
    }
    match code {
        Some(ErrorCode::UNAUTHORIZED | ErrorCode::STALE_NONCE) if nonce.is_some() => Ok(None),
        Some(code) => bail!(
            "{method:?} failed with {} {}",
            code.0,
            code.default_reason()
        ),
        None => bail!("{method:?} failed without an error code"),
    }
}

/// A 300 Try Alternate: the server sends the client to another relay (RFC 8489 §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TryAlternate(pub SocketAddr);

impl std::fmt::Display for TryAlternate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "300 Try Alternate: {}", self.0)
    }
}

impl std::error::Error for TryAlternate {}

/// Allocates on `server` from a new socket bound to `bind`, and binds `channel` to `peer`;
/// follows up to three 300 Try Alternate redirects (RFC 8489 §10), so the allocation may be on
/// another relay ([`Allocation::server`] says which).
pub fn allocate_and_bind(
    bind: SocketAddr,
    server: SocketAddr,
    username: &str,
    password: &str,
    peer: SocketAddr,
    channel: u16,
) -> Result<Allocation> {
    let mut server = server;
    for _ in 0..3 {
        match allocate_and_bind_once(bind, server, username, password, peer, channel) {
            Err(error) => match error.downcast_ref::<TryAlternate>() {
                Some(TryAlternate(alternate)) => server = *alternate,
                None => return Err(error),
            },
            done => return done,
        }
    }
    allocate_and_bind_once(bind, server, username, password, peer, channel)
}

fn allocate_and_bind_once(
    bind: SocketAddr,
    server: SocketAddr,
    username: &str,
    password: &str,
    peer: SocketAddr,
    channel: u16,
) -> Result<Allocation> {
    let socket =
        UdpSocket::bind(bind).with_context(|| format!("cannot bind a client socket on {bind}"))?;
    let mut session = Session {
        socket: &socket,
        server,
        username,
        password,
        realm: String::new(),
        nonce: None,
    };
    let family = if peer.is_ipv4() {
        turnpike_proto::AddressFamily::V4
    } else {
        turnpike_proto::AddressFamily::V6
    };
    let mut allocate = vec![Attribute::RequestedTransport(17), Attribute::Lifetime(3600)];
    if family == turnpike_proto::AddressFamily::V6 {
        allocate.push(Attribute::RequestedAddressFamily(family));
    }
    let allocated = session.transact(Method::Allocate, &allocate)?;
    let relayed = relayed_address(&allocated)?;
    let keep_alive = KeepAlive::granted(peer, channel, &allocated);
    session.transact(
        Method::ChannelBind,
        &[
            Attribute::ChannelNumber(channel),
            Attribute::XorPeerAddress(peer),
        ],
    )?;
    socket.set_read_timeout(None)?;
    socket.set_nonblocking(true)?;
    let (realm, nonce) = (session.realm, session.nonce);
    Ok(Allocation {
        socket,
        server,
        relayed,
        username: username.to_owned(),
        password: password.to_owned(),
        realm,
        nonce,
        keep_alive,
    })
}

/// The LIFETIME of an Allocate or Refresh success response.
fn granted_lifetime(response: &[u8]) -> Option<Duration> {
    let message = Message::parse(response).ok()?;
    message.attributes().find_map(
        |raw| match Attribute::decode(raw, &message.transaction_id()) {
            Ok(Attribute::Lifetime(seconds)) => Some(Duration::from_secs(u64::from(seconds))),
            _ => None,
        },
    )
}
