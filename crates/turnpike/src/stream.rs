//! TURN over TCP and TLS (RFC 8656 §3.1): the listeners and connections of one relay thread.
//!
//! The core knows nothing of connections: it is given whole messages with a 5-tuple whose
//! transport is TCP or TLS, exactly as it is given datagrams. This module is the edge that
//! turns a byte stream into those messages (`turnpike_proto::StreamDecoder`), sends what the core
//! answers back on the connection the 5-tuple names, and tells the core when a connection is
//! gone so that its allocation goes with it.
//!
//! Every thread binds every stream listener with `SO_REUSEPORT`, so the kernel spreads
//! connections over the threads like it spreads UDP clients; an allocation made on a
//! connection lives in the thread that accepted it, with its relayed port from that thread's
//! block, so peer data for it arrives at the same thread.
//!
//! # Defences
//!
//! A public TCP listener is attacked, so everything a stranger can hold is bounded:
//! connections in total and per source address (IPv4 address or IPv6 /64, counted for the
//! whole relay by [`ConnectionLimiter`]); the time to finish a TLS handshake; the time a
//! connection without an allocation may stay silent; the time to complete a message once its
//! first byte has arrived (slowloris); the size of a message; and the bytes queued for a client
//! that reads slower than its peers send (what does not fit is dropped and counted, so neither
//! the relay's memory nor any other client waits on it). A malformed or oversized frame closes
//! that connection with a counted reason. Timers are checked by a sweep every half second ([`SWEEP_INTERVAL`]), so a timeout fires up to that much late.
//!
//! # Fairness
//!
//! Readiness is edge-triggered. A connection reads at most [`READ_BUDGET`] bytes per round and
//! then goes to the back of a queue, like a busy UDP socket does in `shard.rs`.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use rand::rngs::StdRng;
use rustls::ServerConnection;
use slab::Slab;
use turnpike_io::SendBatch;
use turnpike_proto::{FrameError, StreamDecoder, channel_data_padding};
use turnpike_relay::{FiveTuple, Forward, Server, Transport};

use crate::config::StreamLimits;
use crate::metrics::{ShardMetrics, StreamMetrics};
use crate::shard::{Sockets, execute_commands};
use crate::tls::TlsCertificates;

/// Bytes a connection reads per round before others get their turn.
const READ_BUDGET: usize = 64 * 1024;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// Plaintext handed to rustls at a time, so its own buffer stays small.
const TLS_WRITE_CHUNK: usize = 16 * 1024;
/// Bytes of datagrams to peers queued before they are sent without waiting for the round's end.
const PEER_SEND_LIMIT: usize = 1 << 20;
/// Connections accepted from one listener per round.
const ACCEPT_BUDGET: usize = 256;
/// How often the connections' timers are checked.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);
/// Write-buffer capacity kept once it is empty.
const IDLE_WRITE_CAPACITY: usize = 4096;

/// Tokens of stream listeners start here; UDP sockets use the tokens below.
pub(crate) const LISTENER_TOKENS: usize = usize::MAX / 4;
/// Tokens of connections start here (a slab key above this).
const CONNECTION_TOKENS: usize = usize::MAX / 2;

/// Why a connection was refused at accept; each is a metric label.
pub(crate) const REFUSE_REASONS: &[&str] = &[
    "max_connections",
    "max_connections_per_source",
    "accept_failed",
];

/// Why a connection was closed; each is a metric label.
pub(crate) const CLOSE_REASONS: &[&str] = &[
    "client_closed",
    "read_error",
    "write_error",
    "tls_error",
    "handshake_timeout",
    "idle_timeout",
    "frame_timeout",
    "malformed_frame",
    "oversized_frame",
    "shutdown",
];

/// The relay-wide count of open connections, so the limits hold whatever the thread count.
/// Taken only on accept and close, never per message.
#[derive(Debug)]
pub(crate) struct ConnectionLimiter {
    max_total: usize,
    max_per_source: usize,
    open: Mutex<OpenConnections>,
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// One open connection's place in the [`ConnectionLimiter`]; gives it back when dropped.
#[derive(Debug)]
pub(crate) struct ConnectionPermit {
    limiter: Arc<ConnectionLimiter>,
    source: IpAddr,
}

impl ConnectionLimiter {
    pub(crate) fn new(limits: &StreamLimits) -> Self {
        Self {
            max_total: limits.max_connections,
            max_per_source: limits.max_connections_per_source,
            open: Mutex::new(OpenConnections::default()),
        }
    }

    /// A permit for one more connection from `client`, or the limit it would break.
    pub(crate) fn admit(
        self: &Arc<Self>,
        client: IpAddr,
    ) -> Result<ConnectionPermit, &'static str> {
        let source = source_key(client);
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.total >= self.max_total {
            return Err(REFUSE_REASONS[0]);
        }
        let from_source = open.per_source.entry(source).or_default();
        if *from_source >= self.max_per_source {
            return Err(REFUSE_REASONS[1]);
        }
        *from_source += 1;
        open.total += 1;
        Ok(ConnectionPermit {
            limiter: Arc::clone(self),
            source,
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self
            .limiter
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                open.per_source.remove(&self.source);
            }
        }
    }
}

/// The unit a per-source limit counts: an IPv4 address, or the /64 of an IPv6 address (one
/// host usually holds a whole /64).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// What every relay thread's streams share.
#[derive(Debug)]
pub(crate) struct StreamShared {
    pub(crate) limits: StreamLimits,
    /// The channel numbers a frame may carry (RFC 5766's wider range with
    /// `--rfc5766-channel-numbers`).
    pub(crate) channel_range: turnpike_proto::ChannelRange,
    pub(crate) limiter: Arc<ConnectionLimiter>,
    pub(crate) tls: Option<Arc<TlsCertificates>>,
}

/// A listening socket of one thread, bound before the thread starts.
#[derive(Debug)]
pub(crate) struct StreamListener {
    address: SocketAddr,
    socket: TcpListener,
    /// Whether TLS is spoken here (and plain TCP told apart by its first byte).
    tls: bool,
}

impl StreamListener {
    /// Binds `address` with `SO_REUSEPORT`, so every thread has its own accept queue.
    pub(crate) fn bind(address: SocketAddr, tls: bool) -> Result<Self> {
        let setting = if tls { "listen-tls" } else { "listen-tcp" };
        let domain = socket2::Domain::for_address(address);
        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)
            .with_context(|| format!("{setting}: cannot create a socket for {address}"))?;
        if address.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket
            .bind(&address.into())
            .with_context(|| format!("{setting}: cannot bind {address}"))?;
        socket
            .listen(1024)
            .with_context(|| format!("{setting}: cannot listen on {address}"))?;
        Ok(Self {
            address,
            socket: TcpListener::from_std(socket.into()),
            tls,
        })
    }
}

impl StreamListener {
    /// The address it listens on and its socket, for steering (`steer.rs`).
    pub(crate) fn address_and_socket(&self) -> (SocketAddr, &TcpListener) {
        (self.address, &self.socket)
    }
}

/// How far a connection is.
enum Phase {
    /// On a TLS listener, before the first byte says whether TLS or plain TCP follows.
    Detecting,
    Plain,
    Tls(Box<ServerConnection>),
}

struct Connection {
    socket: TcpStream,
    phase: Phase,
    /// The client and the relay's own address of this connection (as accepted: on a wildcard
    /// listener, the address the client actually connected to).
    client: SocketAddr,
    local: SocketAddr,
    decoder: StreamDecoder,
    /// Whole frames waiting to be written, from `out_start` on.
    out: Vec<u8>,
    out_start: usize,
    accepted_at: Instant,
    /// The last whole message from the client (or the accept).
    last_message: Instant,
    /// When the first byte of the partial frame now buffered arrived.
    partial_since: Option<Instant>,
    /// In the read queue (more may be waiting) / in the flush list.
    queued: bool,
    dirty: bool,
    _permit: ConnectionPermit,
}

impl Connection {
    fn transport(&self) -> Option<Transport> {
        match self.phase {
            Phase::Detecting => None,
            Phase::Plain => Some(Transport::Tcp),
            Phase::Tls(_) => Some(Transport::Tls),
        }
    }

    fn five_tuple(&self) -> Option<FiveTuple> {
        self.transport()
            .map(|transport| FiveTuple::new(self.client, self.local, transport))
    }

    fn pending_out(&self) -> usize {
        self.out.len() - self.out_start
    }

    fn buffered(&self) -> usize {
        self.decoder.buffered() + self.pending_out()
    }
}

fn transport_index(transport: Transport) -> usize {
    usize::from(transport == Transport::Tls)
}

/// How a read ended.
enum ReadEnd {
    /// Nothing more now.
    Drained,
    /// The budget is spent; more may be waiting.
    Budget,
    Close(&'static str),
}

/// The stream listeners and connections of one relay thread.
pub(crate) struct Streams {
    listeners: Vec<StreamListener>,
    listener_queued: Vec<bool>,
    connections: Slab<Connection>,
    by_five_tuple: HashMap<FiveTuple, usize>,
    /// Tokens to serve again next round.
    ready: VecDeque<usize>,
    dirty: Vec<usize>,
    shared: Arc<StreamShared>,
    /// Each message is copied here before the core sees it, so that what the core asks to
    /// send can go to any connection, this one included.
    scratch: Vec<u8>,
    /// Datagrams from stream clients to their peers, sent together at the end of the round
    /// (one `sendmmsg` per relayed socket, GSO for runs), like the UDP path's.
    peer_sends: SendBatch,
    last_sweep: Instant,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("listeners", &self.listeners.len())
            .field("connections", &self.connections.len())
            .finish_non_exhaustive()
    }
}

/// What handling a stream event needs from the rest of the thread.
pub(crate) struct StreamContext<'a, 'b> {
    pub(crate) now: Instant,
    pub(crate) server: &'a mut Server<StdRng>,
    pub(crate) sockets: &'a Sockets<'b>,
    pub(crate) metrics: &'a mut ShardMetrics,
}

impl Streams {
    pub(crate) fn new(listeners: Vec<StreamListener>, shared: Arc<StreamShared>) -> Self {
        Self {
            listener_queued: vec![false; listeners.len()],
            listeners,
            connections: Slab::new(),
            by_five_tuple: HashMap::new(),
            ready: VecDeque::new(),
            dirty: Vec::new(),
            shared,
            scratch: Vec::new(),
            peer_sends: SendBatch::default(),
            last_sweep: Instant::now(),
        }
    }

    pub(crate) fn register(&mut self, registry: &Registry) -> Result<()> {
        for (index, listener) in self.listeners.iter_mut().enumerate() {
            registry
                .register(
                    &mut listener.socket,
                    Token(LISTENER_TOKENS + index),
                    Interest::READABLE,
                )
                .context("cannot watch a stream listener")?;
        }
        Ok(())
    }

    pub(crate) const fn owns(token: usize) -> bool {
        token >= LISTENER_TOKENS
    }

    /// When the timers of the connections are next checked, if there are any.
    pub(crate) fn next_sweep(&self) -> Option<Instant> {
        (!self.connections.is_empty()).then(|| self.last_sweep + SWEEP_INTERVAL)
    }

    /// Whether some connection or listener has more to do before the next poll.
    pub(crate) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// An event for a token [`Streams::owns`].
    pub(crate) fn on_event(
        &mut self,
        token: usize,
        writable: bool,
        registry: &Registry,
        cx: &mut StreamContext<'_, '_>,
    ) {
        if token >= CONNECTION_TOKENS {
            let key = token - CONNECTION_TOKENS;
            if writable {
                self.mark_dirty(key);
            }
            self.serve_connection(key, registry, cx);
        } else {
            self.serve_listener(token - LISTENER_TOKENS, registry, cx);
        }
    }

    /// One more turn for everything that did not finish last round.
    pub(crate) fn serve_ready(&mut self, registry: &Registry, cx: &mut StreamContext<'_, '_>) {
        for _ in 0..self.ready.len() {
            let Some(token) = self.ready.pop_front() else {
                break;
            };
            if token >= CONNECTION_TOKENS {
                let key = token - CONNECTION_TOKENS;
                if let Some(connection) = self.connections.get_mut(key) {
                    connection.queued = false;
                    self.serve_connection(key, registry, cx);
                }
            } else {
                let index = token - LISTENER_TOKENS;
                if let Some(queued) = self.listener_queued.get_mut(index) {
                    *queued = false;
                }
                self.serve_listener(index, registry, cx);
            }
        }
    }

    fn serve_listener(
        &mut self,
        index: usize,
        registry: &Registry,
        cx: &mut StreamContext<'_, '_>,
    ) {
        let Some(listener) = self.listeners.get(index) else {
            return;
        };
        let tls = listener.tls;
        for _ in 0..ACCEPT_BUDGET {
            let (socket, client) = match self.listeners[index].socket.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    // Out of descriptors (EMFILE), or the client gave up in the queue: counted,
                    // and the next connection brings a new event.
                    tracing::debug!(%error, "accept failed");
                    *cx.metrics
                        .streams
                        .refused
                        .entry(REFUSE_REASONS[2])
                        .or_default() += 1;
                    return;
                }
            };
            self.accept(socket, client, tls, registry, cx);
        }
        if !self.listener_queued[index] {
            self.listener_queued[index] = true;
            self.ready.push_back(LISTENER_TOKENS + index);
        }
    }

    fn accept(
        &mut self,
        mut socket: TcpStream,
        client: SocketAddr,
        tls: bool,
        registry: &Registry,
        cx: &mut StreamContext<'_, '_>,
    ) {
        let metrics = &mut cx.metrics.streams;
        let permit = match self.shared.limiter.admit(client.ip()) {
            Ok(permit) => permit,
            Err(reason) => {
                *metrics.refused.entry(reason).or_default() += 1;
                tracing::debug!(%client, reason, "connection refused");
                return;
            }
        };
        let Ok(local) = socket.local_addr() else {
            return;
        };
        // Relayed media is latency-sensitive; coalescing small frames only delays them.
        let _ = socket.set_nodelay(true);
        let entry = self.connections.vacant_entry();
        let key = entry.key();
        if let Err(error) = registry.register(
            &mut socket,
            Token(CONNECTION_TOKENS + key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(%error, "cannot watch a connection");
            return;
        }
        entry.insert(Connection {
            socket,
            phase: if tls { Phase::Detecting } else { Phase::Plain },
            client,
            local,
            decoder: StreamDecoder::new(self.shared.limits.max_message)
                .with_channel_range(self.shared.channel_range),
            out: Vec::new(),
            out_start: 0,
            accepted_at: cx.now,
            last_message: cx.now,
            partial_since: None,
            queued: false,
            dirty: false,
            _permit: permit,
        });
        if !tls {
            self.connection_known(key, metrics);
        }
        // Data may have arrived with the handshake; edge-triggered readiness will not repeat it.
        self.serve_connection(key, registry, cx);
    }

    /// The transport of connection `key` is known: it can be found by its 5-tuple.
    fn connection_known(&mut self, key: usize, metrics: &mut StreamMetrics) {
        let Some(connection) = self.connections.get(key) else {
            return;
        };
        if let (Some(five_tuple), Some(transport)) =
            (connection.five_tuple(), connection.transport())
        {
            self.by_five_tuple.insert(five_tuple, key);
            metrics.accepted[transport_index(transport)] += 1;
            tracing::debug!(
                client = %five_tuple.client,
                local = %five_tuple.server,
                transport = transport.as_str(),
                "connection open"
            );
        }
    }

    /// Reads what is there (within the budget), relays it, and writes what is queued.
    fn serve_connection(
        &mut self,
        key: usize,
        registry: &Registry,
        cx: &mut StreamContext<'_, '_>,
    ) {
        match self.read(key, cx) {
            ReadEnd::Drained => {}
            ReadEnd::Budget => {
                if let Some(connection) = self.connections.get_mut(key)
                    && !connection.queued
                {
                    connection.queued = true;
                    self.ready.push_back(CONNECTION_TOKENS + key);
                }
            }
            ReadEnd::Close(reason) => {
                self.close(key, reason, registry, cx);
                return;
            }
        }
        if self
            .connections
            .get(key)
            .is_some_and(|connection| connection.pending_out() > 0 || wants_tls_write(connection))
        {
            self.mark_dirty(key);
        }
    }

    fn read(&mut self, key: usize, cx: &mut StreamContext<'_, '_>) -> ReadEnd {
        let mut budget = READ_BUDGET;
        loop {
            let Some(connection) = self.connections.get_mut(key) else {
                return ReadEnd::Drained;
            };
            if matches!(connection.phase, Phase::Detecting) {
                let mut first = [0u8; 1];
                match connection.socket.peek(&mut first) {
                    Ok(0) => return ReadEnd::Close("client_closed"),
                    Ok(_) => {}
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        return ReadEnd::Drained;
                    }
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return ReadEnd::Close("read_error"),
                }
                // Every TLS connection starts with a handshake record (content type 22); a
                // TURN message never does (0x16 would be a STUN method without the cookie).
                connection.phase = if first[0] == 0x16 {
                    match self.shared.tls.as_ref() {
                        Some(tls) => match ServerConnection::new(tls.current()) {
                            Ok(session) => Phase::Tls(Box::new(session)),
                            Err(_) => return ReadEnd::Close("tls_error"),
                        },
                        None => return ReadEnd::Close("tls_error"),
                    }
                } else {
                    Phase::Plain
                };
                self.connection_known(key, &mut cx.metrics.streams);
                continue;
            }
            let got = match read_some(connection) {
                Ok(Some(got)) => got,
                Ok(None) => return ReadEnd::Drained,
                Err(reason) => return ReadEnd::Close(reason),
            };
            if let Err(reason) = self.relay_messages(key, cx) {
                return ReadEnd::Close(reason);
            }
            budget = budget.saturating_sub(got.max(1));
            if budget == 0 {
                return ReadEnd::Budget;
            }
        }
    }

    /// Hands every whole message buffered on `key` to the core.
    fn relay_messages(
        &mut self,
        key: usize,
        cx: &mut StreamContext<'_, '_>,
    ) -> Result<(), &'static str> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let result = loop {
            let Some(connection) = self.connections.get_mut(key) else {
                break Ok(());
            };
            let Some(five_tuple) = connection.five_tuple() else {
                break Ok(());
            };
            let message = match connection.decoder.next_message() {
                Ok(Some((_, message))) => message,
                Ok(None) => {
                    connection.partial_since = match connection.decoder.buffered() {
                        0 => None,
                        _ => connection.partial_since.or(Some(cx.now)),
                    };
                    break Ok(());
                }
                Err(error) => {
                    tracing::debug!(client = %connection.client, %error, "bad frame");
                    break Err(match error {
                        FrameError::TooLong { .. } => "oversized_frame",
                        _ => "malformed_frame",
                    });
                }
            };
            scratch.clear();
            scratch.extend_from_slice(message);
            connection.last_message = cx.now;
            connection.partial_since = None;
            let index = transport_index(five_tuple.transport);
            cx.metrics.streams.messages_in[index] += 1;
            cx.metrics.streams.bytes_in[index] +=
                (scratch.len() + channel_data_padding_for(&scratch)) as u64;
            let forward = cx
                .server
                .handle_client_datagram(cx.now, five_tuple, &scratch);
            if let Some(forward) = forward {
                self.forward_from_stream(forward, &scratch, cx);
            }
            execute_commands(cx.sockets, self, cx.server, cx.metrics);
        };
        self.scratch = scratch;
        result
    }

    /// Relays what a stream client sent: to a peer over UDP, or (hairpin) to another client.
    fn forward_from_stream(
        &mut self,
        forward: Forward,
        message: &[u8],
        cx: &mut StreamContext<'_, '_>,
    ) {
        match forward {
            Forward::ToPeer {
                relay,
                peer,
                payload,
            } => match cx.sockets.relay(relay) {
                Some(socket) => {
                    // SAFETY: relayed sockets live as long as the thread, and the batch is
                    // flushed within the round (`Streams::flush`).
                    unsafe { self.peer_sends.push_copy(socket, peer, &message[payload]) };
                    if self.peer_sends.copied_bytes() >= PEER_SEND_LIMIT {
                        self.peer_sends.flush(&mut cx.metrics.sends);
                    }
                }
                None => cx.metrics.no_socket += 1,
            },
            Forward::ToClient {
                client,
                channel_header,
                payload,
            } => {
                let payload = &message[payload];
                if client.transport.is_stream() {
                    self.send_frame(&client, &channel_header, payload, &mut cx.metrics.streams);
                } else {
                    match cx.sockets.listener(client.server) {
                        Some((socket, source)) => {
                            let mut datagram = Vec::with_capacity(4 + payload.len());
                            datagram.extend_from_slice(&channel_header);
                            datagram.extend_from_slice(payload);
                            turnpike_io::send_now_from(
                                socket,
                                source,
                                client.client,
                                &datagram,
                                &mut cx.metrics.sends,
                            );
                        }
                        None => cx.metrics.no_socket += 1,
                    }
                }
            }
        }
    }

    /// Queues a STUN message to the client of `to`.
    pub(crate) fn send_message(
        &mut self,
        to: &FiveTuple,
        message: &[u8],
        metrics: &mut StreamMetrics,
    ) {
        self.send_frame(to, &[], message, metrics);
    }

    /// Queues `header` and `body` as one frame (padded to 4 bytes if it is ChannelData) to the
    /// client of `to`; dropped and counted when the connection's write buffer is full or the
    /// connection is gone.
    pub(crate) fn send_frame(
        &mut self,
        to: &FiveTuple,
        header: &[u8],
        body: &[u8],
        metrics: &mut StreamMetrics,
    ) {
        let Some(&key) = self.by_five_tuple.get(to) else {
            metrics.dropped_frames += 1;
            metrics.dropped_bytes += (header.len() + body.len()) as u64;
            return;
        };
        let Some(connection) = self.connections.get_mut(key) else {
            return;
        };
        let message_len = header.len() + body.len();
        let padding = if header.is_empty() {
            0
        } else {
            channel_data_padding(message_len)
        };
        let frame_len = message_len + padding;
        if connection.pending_out() + frame_len > self.shared.limits.write_buffer {
            metrics.dropped_frames += 1;
            metrics.dropped_bytes += frame_len as u64;
            return;
        }
        if connection.out_start > 0 && connection.out_start * 2 >= connection.out.len() {
            connection.out.drain(..connection.out_start);
            connection.out_start = 0;
        }
        connection.out.extend_from_slice(header);
        connection.out.extend_from_slice(body);
        connection.out.extend_from_slice(&[0; 3][..padding]);
        let index = transport_index(to.transport);
        metrics.messages_out[index] += 1;
        metrics.bytes_out[index] += frame_len as u64;
        self.mark_dirty(key);
    }

    fn mark_dirty(&mut self, key: usize) {
        if let Some(connection) = self.connections.get_mut(key)
            && !connection.dirty
        {
            connection.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Writes what every connection has queued, as far as its socket takes it; the rest waits
    /// for the socket's next writable event.
    pub(crate) fn flush(&mut self, registry: &Registry, cx: &mut StreamContext<'_, '_>) {
        self.peer_sends.flush(&mut cx.metrics.sends);
        // Closing can queue more (the core's answers to a deletion go nowhere, but a hairpin
        // could), so take the list in rounds, bounded by the connection count.
        for _ in 0..=self.connections.len() {
            if self.dirty.is_empty() {
                return;
            }
            let dirty = std::mem::take(&mut self.dirty);
            for key in dirty {
                let Some(connection) = self.connections.get_mut(key) else {
                    continue;
                };
                connection.dirty = false;
                if let Err(reason) = write_some(connection) {
                    self.close(key, reason, registry, cx);
                }
            }
        }
    }

    /// Closes the connections whose timers ran out; cheap enough to run every [`SWEEP_INTERVAL`].
    pub(crate) fn sweep(&mut self, registry: &Registry, cx: &mut StreamContext<'_, '_>) {
        if cx.now.saturating_duration_since(self.last_sweep) < SWEEP_INTERVAL {
            return;
        }
        self.last_sweep = cx.now;
        let limits = self.shared.limits;
        let mut expired = Vec::new();
        for (key, connection) in &self.connections {
            let handshaking = match &connection.phase {
                Phase::Detecting => true,
                Phase::Tls(session) => session.is_handshaking(),
                Phase::Plain => false,
            };
            let since = |at: Instant| cx.now.saturating_duration_since(at);
            let reason = if handshaking && since(connection.accepted_at) >= limits.handshake_timeout
            {
                Some("handshake_timeout")
            } else if connection
                .partial_since
                .is_some_and(|at| since(at) >= limits.frame_timeout)
            {
                Some("frame_timeout")
            } else if since(connection.last_message) >= limits.idle_timeout
                && !connection
                    .five_tuple()
                    .is_some_and(|five_tuple| cx.server.has_allocation(&five_tuple))
            {
                Some("idle_timeout")
            } else {
                None
            };
            if let Some(reason) = reason {
                expired.push((key, reason));
            }
        }
        for (key, reason) in expired {
            self.close(key, reason, registry, cx);
        }
        // Give back what a burst of connections left: tables sized for the peak.
        if self.connections.is_empty() && self.connections.capacity() > 64 {
            self.connections = Slab::new();
        }
        if self.by_five_tuple.capacity() > 64
            && self.by_five_tuple.len() * 4 < self.by_five_tuple.capacity()
        {
            self.by_five_tuple.shrink_to_fit();
        }
        if self.ready.capacity() > 64 && self.ready.is_empty() {
            self.ready.shrink_to_fit();
        }
        if self.dirty.capacity() > 64 && self.dirty.is_empty() {
            self.dirty.shrink_to_fit();
        }
    }

    /// Closes connection `key`; an allocation made on it is deleted at once.
    fn close(
        &mut self,
        key: usize,
        reason: &'static str,
        registry: &Registry,
        cx: &mut StreamContext<'_, '_>,
    ) {
        if !self.connections.contains(key) {
            return;
        }
        let mut connection = self.connections.remove(key);
        let _ = registry.deregister(&mut connection.socket);
        *cx.metrics.streams.closed.entry(reason).or_default() += 1;
        if let Some(five_tuple) = connection.five_tuple() {
            self.by_five_tuple.remove(&five_tuple);
            tracing::debug!(
                client = %five_tuple.client,
                transport = five_tuple.transport.as_str(),
                reason,
                "connection closed"
            );
            cx.server.handle_connection_closed(cx.now, five_tuple);
            execute_commands(cx.sockets, self, cx.server, cx.metrics);
        }
    }

    /// Closes everything, at shutdown.
    pub(crate) fn close_all(&mut self, registry: &Registry, cx: &mut StreamContext<'_, '_>) {
        self.peer_sends.flush(&mut cx.metrics.sends);
        let keys: Vec<usize> = self.connections.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.close(key, "shutdown", registry, cx);
        }
    }

    /// Open connections per transport and the bytes they buffer, for the metrics.
    pub(crate) fn publish(&self, metrics: &mut StreamMetrics) {
        metrics.open = [0; 2];
        metrics.buffered_bytes = 0;
        for (_, connection) in &self.connections {
            if let Some(transport) = connection.transport() {
                metrics.open[transport_index(transport)] += 1;
            }
            metrics.buffered_bytes += connection.buffered() as u64;
        }
    }
}

/// The padding a received frame had on the stream (ChannelData only).
fn channel_data_padding_for(message: &[u8]) -> usize {
    match message.first() {
        Some(first) if first >> 6 == 0b01 => channel_data_padding(message.len()),
        _ => 0,
    }
}

fn wants_tls_write(connection: &Connection) -> bool {
    matches!(&connection.phase, Phase::Tls(session) if session.wants_write())
}

/// One read from the socket into the decoder (through TLS if spoken). `Ok(None)`: nothing
/// there now; `Ok(Some(n))`: `n` bytes came off the socket.
fn read_some(connection: &mut Connection) -> Result<Option<usize>, &'static str> {
    match &mut connection.phase {
        Phase::Detecting => Ok(None),
        Phase::Plain => {
            let spare = connection.decoder.spare(READ_CHUNK);
            let result = connection.socket.read(spare);
            match result {
                Ok(0) => {
                    connection.decoder.filled(READ_CHUNK, 0);
                    Err("client_closed")
                }
                Ok(read) => {
                    connection.decoder.filled(READ_CHUNK, read);
                    Ok(Some(read))
                }
                Err(error) => {
                    connection.decoder.filled(READ_CHUNK, 0);
                    match error.kind() {
                        io::ErrorKind::WouldBlock => Ok(None),
                        io::ErrorKind::Interrupted => Ok(Some(0)),
                        _ => Err("read_error"),
                    }
                }
            }
        }
        Phase::Tls(session) => {
            let read = match session.read_tls(&mut connection.socket) {
                Ok(0) => return Err("client_closed"),
                Ok(read) => read,
                Err(error) => {
                    return match error.kind() {
                        io::ErrorKind::WouldBlock => Ok(None),
                        io::ErrorKind::Interrupted => Ok(Some(0)),
                        _ => Err("read_error"),
                    };
                }
            };
            let state = session.process_new_packets().map_err(|error| {
                tracing::debug!(client = %connection.client, %error, "TLS error");
                "tls_error"
            })?;
            let plaintext = state.plaintext_bytes_to_read();
            if plaintext > 0 {
                let spare = connection.decoder.spare(plaintext);
                let got = session.reader().read(spare).unwrap_or(0);
                connection.decoder.filled(plaintext, got);
            }
            if state.peer_has_closed() && connection.decoder.buffered() == 0 {
                return Err("client_closed");
            }
            Ok(Some(read))
        }
    }
}

/// Writes queued bytes until the socket would block or nothing is left.
fn write_some(connection: &mut Connection) -> Result<(), &'static str> {
    let write_error = |error: &io::Error| match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => None,
        _ => Some("write_error"),
    };
    // Bounded: each pass writes something or returns.
    for _ in 0..1024 {
        match &mut connection.phase {
            Phase::Detecting => return Ok(()),
            Phase::Plain => {
                if connection.out_start == connection.out.len() {
                    break;
                }
                match connection
                    .socket
                    .write(&connection.out[connection.out_start..])
                {
                    Ok(0) => return Err("write_error"),
                    Ok(written) => connection.out_start += written,
                    Err(error) => match write_error(&error) {
                        Some(reason) => return Err(reason),
                        None => return Ok(()),
                    },
                }
            }
            Phase::Tls(session) => {
                if session.wants_write() {
                    match session.write_tls(&mut connection.socket) {
                        Ok(_) => continue,
                        Err(error) => match write_error(&error) {
                            Some(reason) => return Err(reason),
                            None => return Ok(()),
                        },
                    }
                }
                if session.is_handshaking() || connection.out_start == connection.out.len() {
                    break;
                }
                let end = connection
                    .out
                    .len()
                    .min(connection.out_start + TLS_WRITE_CHUNK);
                match session
                    .writer()
                    .write(&connection.out[connection.out_start..end])
                {
                    Ok(written) => connection.out_start += written,
                    Err(_) => return Err("tls_error"),
                }
            }
        }
    }
    if connection.out_start == connection.out.len() {
        connection.out.clear();
        connection.out_start = 0;
        if connection.out.capacity() > IDLE_WRITE_CAPACITY {
            connection.out.shrink_to(IDLE_WRITE_CAPACITY);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(total: usize, per_source: usize) -> StreamLimits {
        StreamLimits {
            max_connections: total,
            max_connections_per_source: per_source,
            handshake_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            frame_timeout: Duration::from_secs(1),
            max_message: 2048,
            write_buffer: 4096,
        }
    }

    #[test]
    fn the_limiter_counts_per_source_and_in_total_and_gives_back_on_drop() {
        let limiter = Arc::new(ConnectionLimiter::new(&limits(3, 2)));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = limiter.admit(a).unwrap();
        let _second = limiter.admit(a).unwrap();
        assert_eq!(limiter.admit(a).unwrap_err(), "max_connections_per_source");
        let _third = limiter.admit(b).unwrap();
        assert_eq!(limiter.admit(b).unwrap_err(), "max_connections");
        drop(first);
        let _again = limiter.admit(a).unwrap();
    }

    #[test]
    fn ipv6_sources_are_counted_per_64() {
        let limiter = Arc::new(ConnectionLimiter::new(&limits(10, 1)));
        let _held = limiter.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(
            limiter
                .admit("2001:db8:1:2:ffff::9".parse().unwrap())
                .is_err()
        );
        let _other_64 = limiter.admit("2001:db8:1:3::1".parse().unwrap()).unwrap();
        // An IPv4-mapped address is its IPv4 address.
        let _mapped = limiter.admit("::ffff:192.0.2.1".parse().unwrap()).unwrap();
        assert!(limiter.admit("192.0.2.1".parse().unwrap()).is_err());
    }
}
