//! The TCP and TLS side of the load generator's TURN client: one connection per allocation,
//! messages framed as RFC 8656 §12.5 says (ChannelData padded to 4 bytes), and a blocking
//! round-trip loop per connection.
//!
//! The relayed leg stays UDP (REQUESTED-TRANSPORT 17): only the client's side is a stream.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use turnpike_proto::{
    Attribute, Message, Method, StreamDecoder, TransactionId, channel_data_padding,
};

use crate::turn_client::KeepAlive;

/// How the client reaches the server.
#[derive(Debug, Clone)]
pub enum StreamTransport {
    Tcp,
    /// TLS, verifying the server with `config` (see [`tls_config`]); `server_name` is what the
    /// certificate must name.
    Tls {
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
    },
}

/// A client TLS configuration that trusts the PEM certificates in `ca_file` or, without one,
/// any certificate at all (for load against a server with a throwaway certificate; never for
/// anything that matters).
///
/// # Errors
/// When `ca_file` cannot be read or holds no usable certificate.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(crypto_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let config = match ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("cannot read {}", path.display()))?
            {
                roots
                    .add(certificate.with_context(|| format!("{} is not PEM", path.display()))?)
                    .context("not a usable trust anchor")?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[expect(
    deprecated,
    reason = "ring lacks the post-quantum key exchange, which a load generator does not need"
)]
fn crypto_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Trusts every certificate (still checking the handshake signatures, so the session is real
/// TLS with the server's key).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A plain or TLS connection to the server.
enum Wire {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Wire {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Tcp(stream) => stream,
            Self::Tls(stream) => stream.get_ref(),
        }
    }
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(stream) => stream.read(buf),
            Self::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(stream) => stream.write(buf),
            Self::Tls(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Tcp(stream) => stream.flush(),
            Self::Tls(stream) => stream.flush(),
        }
    }
}

/// One connection with an allocation on the server and a channel bound to a peer.
pub struct StreamAllocation {
    wire: Wire,
    decoder: StreamDecoder,
    pub server: SocketAddr,
    pub relayed: SocketAddr,
    username: String,
    password: String,
    realm: String,
    nonce: Option<String>,
    /// What keeps the allocation alive, once there is one.
    keep_alive: Option<KeepAlive>,
}

impl std::fmt::Debug for StreamAllocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamAllocation")
            .field("server", &self.server)
            .field("relayed", &self.relayed)
            .finish_non_exhaustive()
    }
}

impl StreamAllocation {
    /// Connects to `server`, allocates with the long-term credentials and binds `channel` to
    /// `peer`.
    ///
    /// # Errors
    /// When the connection, the handshake or a request fails.
    pub fn open(
        server: SocketAddr,
        transport: &StreamTransport,
        username: &str,
        password: &str,
        peer: SocketAddr,
        channel: u16,
    ) -> Result<Self> {
        let mut allocation = Self::connect(server, transport, username, password)?;
        let mut allocate = vec![Attribute::RequestedTransport(17), Attribute::Lifetime(3600)];
        if peer.is_ipv6() {
            allocate.push(Attribute::RequestedAddressFamily(
                turnpike_proto::AddressFamily::V6,
            ));
        }
        let response = allocation.transact(Method::Allocate, &allocate)?;
        allocation.relayed = crate::turn_client::relayed_address(&response)?;
        allocation.keep_alive = Some(KeepAlive::granted(peer, channel, &response));
        allocation.transact(
            Method::ChannelBind,
            &[
                Attribute::ChannelNumber(channel),
                Attribute::XorPeerAddress(peer),
            ],
        )?;
        Ok(allocation)
    }

    /// A connection with no allocation yet (TLS handshake done).
    ///
    /// # Errors
    /// When the connection or the handshake fails.
    pub fn connect(
        server: SocketAddr,
        transport: &StreamTransport,
        username: &str,
        password: &str,
    ) -> Result<Self> {
        let tcp = TcpStream::connect_timeout(&server, Duration::from_secs(5))
            .with_context(|| format!("cannot connect to {server}"))?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let wire = match transport {
            StreamTransport::Tcp => Wire::Tcp(tcp),
            StreamTransport::Tls {
                config,
                server_name,
            } => {
                let mut connection = ClientConnection::new(Arc::clone(config), server_name.clone())
                    .context("TLS client")?;
                let mut tcp = tcp;
                while connection.is_handshaking() {
                    connection
                        .complete_io(&mut tcp)
                        .context("TLS handshake failed")?;
                }
                Wire::Tls(Box::new(StreamOwned::new(connection, tcp)))
            }
        };
        Ok(Self {
            wire,
            decoder: StreamDecoder::new(turnpike_proto::MAX_FRAME_LEN),
            server,
            relayed: server,
            username: username.to_owned(),
            password: password.to_owned(),
            realm: String::new(),
            nonce: None,
            keep_alive: None,
        })
    }

    /// Sends a `Refresh` or `ChannelBind` that keeps the allocation opened with
    /// [`StreamAllocation::open`] alive, without waiting for the answer; its transaction ID.
    ///
    /// # Errors
    /// When there is no such allocation or the connection fails.
    pub fn send_refresh(&mut self, method: Method) -> Result<TransactionId> {
        let keep_alive = self
            .keep_alive
            .context("no allocation with a channel to keep alive")?;
        let (id, request) = keep_alive.request(
            method,
            &self.username,
            &self.password,
            &self.realm,
            self.nonce.as_deref(),
        )?;
        self.send_raw(&request)?;
        Ok(id)
    }

    /// What the answer to a [`StreamAllocation::send_refresh`] says: `true` when it succeeded,
    /// `false` when it must be sent again (a new nonce was learnt).
    ///
    /// # Errors
    /// When the server refused it for good.
    pub fn refresh_answered(&mut self, method: Method, response: &[u8]) -> Result<bool> {
        Ok(crate::turn_client::interpret_response(
            method,
            response.to_vec(),
            &mut self.realm,
            &mut self.nonce,
        )?
        .is_some())
    }

    /// Deletes the allocation (Refresh with LIFETIME 0).
    ///
    /// # Errors
    /// When the request fails.
    pub fn release(mut self) -> Result<()> {
        self.transact(Method::Refresh, &[Attribute::Lifetime(0)])
            .map(drop)
    }

    /// Sends raw bytes as they are (for tests of malformed input).
    ///
    /// # Errors
    /// When the connection fails.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.wire.write_all(bytes)?;
        self.wire.flush()?;
        Ok(())
    }

    /// Sends `payload` on `channel` as one padded ChannelData frame.
    ///
    /// # Errors
    /// When the connection fails.
    pub fn send_channel_data(&mut self, channel: u16, payload: &[u8]) -> Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(
            &u16::try_from(payload.len())
                .context("payload over 65535 bytes")?
                .to_be_bytes(),
        );
        frame.extend_from_slice(payload);
        frame.resize(frame.len() + channel_data_padding(frame.len()), 0);
        self.send_raw(&frame)
    }

    /// The next whole message from the server, waiting at most `timeout`; `None` on timeout.
    ///
    /// # Errors
    /// When the server closed the connection or sent a frame that cannot be framed.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((_, message)) = self
                .decoder
                .next_message()
                .map_err(|error| anyhow::anyhow!("bad frame from the server: {error}"))?
            {
                return Ok(Some(message.to_vec()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.wire.tcp().set_read_timeout(Some(left))?;
            let spare = self.decoder.spare(16 * 1024);
            let result = self.wire.read(spare);
            match result {
                Ok(0) => {
                    self.decoder.filled(16 * 1024, 0);
                    bail!("the server closed the connection");
                }
                Ok(read) => self.decoder.filled(16 * 1024, read),
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    self.decoder.filled(16 * 1024, 0);
                    return Ok(None);
                }
                Err(error) => {
                    self.decoder.filled(16 * 1024, 0);
                    return Err(error).context("cannot read from the server");
                }
            }
        }
    }

    /// Sends a request and waits for its response, authenticating on 401 or 438 like the UDP
    /// client does.
    ///
    /// # Errors
    /// When the server refuses or does not answer.
    pub fn transact(&mut self, method: Method, attributes: &[Attribute<'_>]) -> Result<Vec<u8>> {
        for _ in 0..3 {
            let response = self.exchange(method, attributes)?;
            if let Some(success) = crate::turn_client::interpret_response(
                method,
                response,
                &mut self.realm,
                &mut self.nonce,
            )? {
                return Ok(success);
            }
        }
        bail!("{method:?}: the server keeps refusing the credentials")
    }

    fn exchange(&mut self, method: Method, attributes: &[Attribute<'_>]) -> Result<Vec<u8>> {
        let (transaction_id, request) = crate::turn_client::encode_request(
            method,
            attributes,
            &self.username,
            &self.password,
            &self.realm,
            self.nonce.as_deref(),
        )?;
        self.send_raw(&request)?;
        // A stream is reliable: no retransmissions, one wait; ChannelData that arrives first
        // (from an earlier binding) is skipped.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let Some(message) = self.recv(deadline.saturating_duration_since(Instant::now()))?
            else {
                break;
            };
            if let Ok(parsed) = Message::parse(&message)
                && parsed.transaction_id() == transaction_id
            {
                return Ok(message);
            }
        }
        bail!("no response from {} to {method:?}", self.server)
    }
}

/// What one connection's round-trip loop measured.
#[derive(Debug, Default)]
pub struct StreamMeasured {
    pub sent: u64,
    pub received: u64,
    pub malformed: u64,
    /// Refresh and ChannelBind requests answered with success, and those refused.
    pub refreshes: u64,
    pub refresh_failures: u64,
    /// Round-trip times in microseconds.
    pub rtt_micros: Vec<u64>,
}

/// Relays `payload`-byte ChannelData round trips through `allocation` to its peer until
/// `until`, keeping `window` in flight (a closed loop, like the UDP load), and with `refresh`
/// keeps the allocation alive as the UDP load does (the connection is reliable: an unanswered
/// request is not sent again).
///
/// # Errors
/// When the connection fails.
#[expect(
    clippy::too_many_arguments,
    reason = "the load's parameters, each used once; a struct would only rename them"
)]
pub fn round_trips(
    allocation: &mut StreamAllocation,
    channel: u16,
    payload: usize,
    window: usize,
    until: Instant,
    refresh: bool,
    stop: &std::sync::atomic::AtomicBool,
    progress: &crate::run::Progress,
) -> Result<StreamMeasured> {
    use std::sync::atomic::Ordering;
    let start = Instant::now();
    let mut measured = StreamMeasured::default();
    let mut body = vec![0u8; payload.max(16)];
    let mut in_flight = 0;
    let mut sequence: u64 = 0;
    let grace = until + Duration::from_millis(500);
    let interval = allocation
        .keep_alive
        .map(|keep_alive| keep_alive.interval());
    let mut next_refresh = interval.map(|interval| start + interval);
    // Requests sent and not answered yet, with how often each was signed anew.
    let mut refreshing: Vec<(TransactionId, Method, u32)> = Vec::new();
    while Instant::now() < grace && !stop.load(Ordering::Relaxed) {
        let sending = Instant::now() < until;
        if let (true, true, Some(due), Some(interval)) = (refresh, sending, next_refresh, interval)
            && Instant::now() >= due
        {
            next_refresh = Some(Instant::now() + interval);
            for method in [Method::Refresh, Method::ChannelBind] {
                refreshing.push((allocation.send_refresh(method)?, method, 1));
            }
        }
        while sending && in_flight < window {
            let sent_at = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            body[..8].copy_from_slice(&sequence.to_be_bytes());
            body[8..16].copy_from_slice(&sent_at.to_be_bytes());
            allocation.send_channel_data(channel, &body)?;
            sequence += 1;
            in_flight += 1;
            measured.sent += 1;
            progress.sent.fetch_add(1, Ordering::Relaxed);
        }
        if in_flight == 0 {
            break;
        }
        let Some(message) = allocation.recv(Duration::from_millis(200))? else {
            // Nothing for 200 ms: what is out is lost (a stream loses only what the relay
            // dropped for a full buffer); open the window again.
            in_flight = 0;
            continue;
        };
        // STUN (first two bits zero) rather than ChannelData: a refresh's answer.
        if message.first().is_some_and(|first| first & 0xC0 == 0) {
            let answered = Message::parse(&message).ok().and_then(|parsed| {
                let id = parsed.transaction_id();
                refreshing.iter().position(|(pending, ..)| *pending == id)
            });
            let Some(at) = answered else {
                measured.malformed += 1;
                continue;
            };
            let (_, method, tries) = refreshing.swap_remove(at);
            match allocation.refresh_answered(method, &message) {
                Ok(true) => measured.refreshes += 1,
                // A new nonce: the same request again, signed with it (a few times at most).
                Ok(false) if tries < 3 => {
                    refreshing.push((allocation.send_refresh(method)?, method, tries + 1));
                }
                Ok(false) | Err(_) => measured.refresh_failures += 1,
            }
            continue;
        }
        let stamp = message
            .get(4 + 8..4 + 16)
            .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
            .map(u64::from_be_bytes);
        match (message.get(..2), stamp) {
            (Some(number), Some(sent_at)) if number == channel.to_be_bytes() => {
                let now = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                measured
                    .rtt_micros
                    .push((now.saturating_sub(sent_at) / 1000).max(1));
                measured.received += 1;
                progress.received.fetch_add(1, Ordering::Relaxed);
                in_flight = in_flight.saturating_sub(1);
            }
            _ => measured.malformed += 1,
        }
    }
    Ok(measured)
}
