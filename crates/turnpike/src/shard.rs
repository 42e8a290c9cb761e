//! One relay thread: a `Server` and the sockets it owns, driven by a mio event loop.
//!
//! # Why shards
//!
//! The core is a single-threaded state machine, so the relay runs one per thread and splits the
//! work so that no state is shared: every thread binds the listening addresses with
//! `SO_REUSEPORT`, and the kernel steers each client's source address to one of those sockets
//! (`steer.rs`; TCP and TLS connections by the kernel's hash, `stream.rs`), so a client always
//! reaches the same thread; the relayed port range is split into one contiguous block per
//! thread, so a peer's datagram reaches the thread that owns the allocation. Nothing is locked
//! on the data path (the allocation quotas are budgets the threads share, taken only when an
//! allocation is made or freed). The cost: a hairpin between allocations of two threads goes
//! through the kernel's local delivery instead of staying inside one core.
//!
//! # Fair reading
//!
//! Readiness is edge-triggered, so a socket that was not drained stays "ready" only in our own
//! queue. Ready sockets are served round-robin, one batch of at most [`udp::BATCH`] datagrams
//! each, and a socket that filled its batch goes to the back of the queue. A busy allocation
//! therefore gets at most one batch per round while every other ready socket also gets one: no
//! allocation starves, whatever the load on its neighbours.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::ops::RangeInclusive;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use rand::SeedableRng;
use rand::rngs::StdRng;
use turnpike_proto::AddressFamily;
use turnpike_relay::{Command, Config, FiveTuple, Forward, RelaySocket, Server};
use turnpike_xdp_user::XdpRelay;

use crate::metrics::{ShardMetrics, Shared};
use crate::stream::{self, StreamListener, StreamShared, Streams};
use turnpike_io::{self as udp, HEADROOM, RecvBatch, SendBatch};

/// How often a thread reads the host's addresses again (they come and go: DHCP, SLAAC, an
/// operator adding one); a peer at one of them is refused (`Server::set_host_addresses`).
const HOST_SCAN_INTERVAL: Duration = Duration::from_secs(10);

/// Reads the host's addresses and gives them to `server` when they differ from `known`;
/// returns what is known now. A failed read keeps what was known.
fn scan_host_addresses(server: &mut Server<StdRng>, known: Vec<IpAddr>) -> Vec<IpAddr> {
    match turnpike_xdp_user::discover::host_addresses() {
        Ok(addresses) if addresses != known => {
            tracing::debug!(?addresses, "host addresses");
            server.set_host_addresses(addresses.iter().copied());
            addresses
        }
        Ok(_) => known,
        Err(error) => {
            tracing::warn!(%error, "cannot read the host's addresses");
            known
        }
    }
}

/// Datagrams received in one round before anything is sent: eight batches.
const RECEIVE_POOL: usize = 8 * udp::BATCH;

/// How often a thread copies its counters for the admin endpoint: often enough that the status
/// page's per-second rates do not jump between 0 and twice the rate.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(250);

/// What one shard is given to run.
#[derive(Debug)]
pub(crate) struct ShardPlan {
    pub(crate) index: usize,
    /// The kernel data plane, whose channel maps this shard keeps in step with its core.
    pub(crate) kernel: Option<Arc<XdpRelay>>,
    pub(crate) listen: Vec<SocketAddr>,
    pub(crate) relay_ports: RangeInclusive<u16>,
    pub(crate) socket_buffer: usize,
    pub(crate) core: Config,
    /// Stream listeners: address, and whether TLS is spoken there.
    pub(crate) stream_listen: Vec<(SocketAddr, bool)>,
    pub(crate) streams: Arc<StreamShared>,
}

/// The sockets of a shard, bound before its thread starts so that start-up errors are reported
/// before the relay claims to be ready.
pub(crate) struct ShardSockets {
    plan: ShardPlan,
    listeners: Vec<(SocketAddr, UdpSocket)>,
    stream_listeners: Vec<StreamListener>,
    /// Indexed by relay slot: (port - low) * 2 + family (0 IPv4, 1 IPv6); with `dual_stack`,
    /// only the IPv6 slot holds a socket, which serves both families.
    relays: Vec<Option<UdpSocket>>,
    dual_stack: bool,
    excluded: Vec<u16>,
    pub(crate) smallest_buffer: usize,
}

impl std::fmt::Debug for ShardSockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardSockets")
            .field("index", &self.plan.index)
            .finish_non_exhaustive()
    }
}

const fn family_index(family: AddressFamily) -> usize {
    match family {
        AddressFamily::V4 => 0,
        AddressFamily::V6 => 1,
    }
}

/// Whether one dual-stack socket per relayed port serves both families: when both are offered
/// and both would bind the unspecified address anyway. It halves the descriptors the relay needs
/// (16,384 ports fit a 20,000-descriptor limit); a specific address per family needs two.
pub(crate) fn dual_stack_relays(listen: &[SocketAddr], core: &Config) -> bool {
    core.relay_ipv4.is_some()
        && core.relay_ipv6.is_some()
        && relay_bind_ip(listen, AddressFamily::V4).is_unspecified()
        && relay_bind_ip(listen, AddressFamily::V6).is_unspecified()
}

/// The local address relayed sockets of `family` bind to: the listening address of that family
/// if it is a specific one, the unspecified address otherwise. (The advertised address may
/// belong to a NAT in front of the relay and not be local at all.)
fn relay_bind_ip(listen: &[SocketAddr], family: AddressFamily) -> IpAddr {
    let matching = listen
        .iter()
        .map(SocketAddr::ip)
        .find(|ip| AddressFamily::of(*ip) == family);
    match (matching, family) {
        (Some(ip), _) => ip,
        (None, AddressFamily::V4) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::V6) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

impl ShardSockets {
    /// Binds the listening sockets and one socket per relayed port and offered family.
    ///
    /// All relayed ports are bound up front: they overlap the kernel's ephemeral port range, so
    /// binding on demand could find a port taken by some outgoing connection after the relay
    /// has already promised it to a client. A port that cannot be bound now is left out.
    pub(crate) fn bind(plan: ShardPlan) -> Result<Self> {
        let mut smallest_buffer = usize::MAX;
        let mut listeners = Vec::new();
        for address in &plan.listen {
            let (socket, sizes) = udp::bind(*address, true, plan.socket_buffer)
                .with_context(|| format!("listen: cannot bind {address}"))?;
            smallest_buffer = smallest_buffer.min(sizes.receive).min(sizes.send);
            listeners.push((*address, socket));
        }
        let stream_listeners = plan
            .stream_listen
            .iter()
            .map(|(address, tls)| StreamListener::bind(*address, *tls))
            .collect::<Result<Vec<_>>>()?;
        let families: Vec<AddressFamily> = [
            plan.core.relay_ipv4.map(|_| AddressFamily::V4),
            plan.core.relay_ipv6.map(|_| AddressFamily::V6),
        ]
        .into_iter()
        .flatten()
        .collect();
        let size = plan.relay_ports.clone().count();
        let mut relays: Vec<Option<UdpSocket>> = (0..size * 2).map(|_| None).collect();
        let mut excluded = Vec::new();
        let dual_stack = dual_stack_relays(&plan.listen, &plan.core);
        let families = if dual_stack {
            vec![AddressFamily::V6]
        } else {
            families
        };
        for port in plan.relay_ports.clone() {
            for family in &families {
                let address = SocketAddr::new(relay_bind_ip(&plan.listen, *family), port);
                let bound = if dual_stack {
                    udp::bind_dual_stack(port, plan.socket_buffer)
                } else {
                    udp::bind(address, false, plan.socket_buffer)
                };
                match bound {
                    Ok((socket, sizes)) => {
                        smallest_buffer = smallest_buffer.min(sizes.receive).min(sizes.send);
                        let slot = usize::from(port - plan.relay_ports.start()) * 2
                            + family_index(*family);
                        relays[slot] = Some(socket);
                    }
                    Err(error) if error.raw_os_error() == Some(libc::EMFILE) => {
                        return Err(error).context(
                            "relay-ports: out of file descriptors; raise the open-file limit (ulimit -n) \
                             or shrink the range",
                        );
                    }
                    Err(error) => {
                        tracing::debug!(port, %error, "relayed port unavailable");
                        excluded.push(port);
                    }
                }
            }
        }
        excluded.dedup();
        Ok(Self {
            plan,
            listeners,
            stream_listeners,
            relays,
            dual_stack,
            excluded,
            smallest_buffer,
        })
    }

    pub(crate) fn excluded_ports(&self) -> usize {
        self.excluded.len()
    }

    /// The UDP listening sockets, in the order of `--listen`.
    pub(crate) fn listeners(&self) -> impl Iterator<Item = &(SocketAddr, UdpSocket)> {
        self.listeners.iter()
    }
}

/// Tokens: listeners first, then relay slots.
struct Shard {
    index: usize,
    kernel: Option<Arc<XdpRelay>>,
    server: Server<StdRng>,
    poll: Poll,
    listeners: Vec<(SocketAddr, UdpSocket)>,
    listener_by_address: HashMap<SocketAddr, usize>,
    relays: Vec<Option<UdpSocket>>,
    dual_stack: bool,
    relay_low: u16,
    ready: VecDeque<usize>,
    queued: Vec<bool>,
    recv: RecvBatch,
    sends: SendBatch,
    streams: Streams,
    /// Stream events of the last poll, served after the UDP round.
    stream_events: Vec<(usize, bool)>,
    /// The host's addresses as last read (`scan_host_addresses`).
    host_addresses: Vec<IpAddr>,
    metrics: ShardMetrics,
    shared: Arc<Shared>,
}

fn unix_time() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

pub(crate) fn run(sockets: ShardSockets, shared: Arc<Shared>) -> Result<()> {
    let ShardSockets {
        plan,
        listeners,
        stream_listeners,
        relays,
        dual_stack,
        excluded,
        ..
    } = sockets;
    let mut core = plan.core;
    // The core knows the relay's whole range (to tell its siblings' relayed addresses) and
    // hands out only this thread's block.
    core.shard_ports = Some(plan.relay_ports.clone());
    let now = Instant::now();
    let mut server = Server::new(core, StdRng::from_entropy(), now, unix_time());
    let host_addresses = scan_host_addresses(&mut server, Vec::new());
    for port in &excluded {
        server.exclude_relay_port(*port);
    }
    let poll = Poll::new().context("cannot create the event loop")?;
    let registry = poll.registry();
    for (token, (_, socket)) in listeners.iter().enumerate() {
        registry.register(
            &mut SourceFd(&socket.as_raw_fd()),
            Token(token),
            Interest::READABLE,
        )?;
    }
    for (slot, socket) in relays.iter().enumerate() {
        if let Some(socket) = socket {
            registry.register(
                &mut SourceFd(&socket.as_raw_fd()),
                Token(listeners.len() + slot),
                Interest::READABLE,
            )?;
        }
    }
    let mut streams = Streams::new(stream_listeners, Arc::clone(&plan.streams));
    streams.register(registry)?;
    let listener_by_address = listeners
        .iter()
        .enumerate()
        .map(|(index, (address, _))| (*address, index))
        .collect();
    let tokens = listeners.len() + relays.len();
    let mut shard = Shard {
        index: plan.index,
        kernel: plan.kernel.clone(),
        server,
        poll,
        listeners,
        listener_by_address,
        relays,
        dual_stack,
        relay_low: *plan.relay_ports.start(),
        ready: VecDeque::new(),
        queued: vec![false; tokens],
        recv: RecvBatch::with_capacity(RECEIVE_POOL),
        sends: SendBatch::default(),
        streams,
        stream_events: Vec::new(),
        host_addresses,
        metrics: ShardMetrics {
            excluded_ports: excluded.len(),
            ..ShardMetrics::default()
        },
        shared,
    };
    shard.event_loop()
}

impl Shard {
    fn event_loop(&mut self) -> Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut draining = false;
        let mut last_publish = Instant::now();
        let mut last_host_scan = last_publish;
        // Load: the time not spent waiting in `poll`.
        let started = last_publish;
        let mut idle = Duration::ZERO;
        self.shared.shard_started();
        loop {
            if self.shared.stopping.load(Ordering::Relaxed) {
                self.close_streams();
                self.server.shutdown();
                self.run_commands();
                self.publish();
                return Ok(());
            }
            if !draining && self.shared.draining.load(Ordering::Relaxed) {
                draining = true;
                self.server.begin_drain();
            }
            let now = Instant::now();
            let timeout = if self.ready.is_empty() && !self.streams.has_ready() {
                let wake = self
                    .server
                    .poll_timeout()
                    .map_or(Duration::from_millis(200), |at| {
                        at.saturating_duration_since(now)
                    });
                wake.min(Duration::from_millis(200))
            } else {
                Duration::ZERO
            };
            let waiting = Instant::now();
            let polled = self.poll.poll(&mut events, Some(timeout));
            idle += waiting.elapsed();
            match polled {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {
                    self.metrics.interrupted += 1
                }
                Err(error) => return Err(error).context("event loop failed"),
            }
            for event in &events {
                let token = event.token().0;
                if Streams::owns(token) {
                    self.stream_events.push((token, event.is_writable()));
                    continue;
                }
                if !self.queued[token] {
                    self.queued[token] = true;
                    self.ready.push_back(token);
                }
            }
            let now = Instant::now();
            if self.server.poll_timeout().is_some_and(|at| at <= now) {
                self.server.handle_timeout(now);
                self.run_commands();
            }
            // One round: every socket ready now gets one batch, and what they relay goes out
            // together at the end.
            for _ in 0..self.ready.len() {
                let Some(token) = self.ready.pop_front() else {
                    break;
                };
                let full = self.serve(token, now);
                if full {
                    self.ready.push_back(token);
                } else {
                    self.queued[token] = false;
                }
            }
            self.serve_streams(now);
            self.flush();
            if now.duration_since(last_publish) >= PUBLISH_INTERVAL {
                last_publish = now;
                self.server.set_wall_clock(now, unix_time());
                self.metrics.busy = now.duration_since(started).saturating_sub(idle);
                self.publish();
            }
            if now.duration_since(last_host_scan) >= HOST_SCAN_INTERVAL {
                last_host_scan = now;
                let known = std::mem::take(&mut self.host_addresses);
                self.host_addresses = scan_host_addresses(&mut self.server, known);
            }
        }
    }

    /// Serves the stream events of the last poll and what was left from earlier rounds, closes
    /// connections whose timers ran out, and writes what is queued for stream clients.
    fn serve_streams(&mut self, now: Instant) {
        let sockets = Sockets {
            kernel: self.kernel.as_deref(),
            listeners: &self.listeners,
            by_address: &self.listener_by_address,
            relays: &self.relays,
            dual_stack: self.dual_stack,
            relay_low: self.relay_low,
        };
        let registry = self.poll.registry();
        let mut cx = stream::StreamContext {
            now,
            server: &mut self.server,
            sockets: &sockets,
            metrics: &mut self.metrics,
        };
        for (token, writable) in self.stream_events.drain(..) {
            self.streams.on_event(token, writable, registry, &mut cx);
        }
        self.streams.serve_ready(registry, &mut cx);
        self.streams.sweep(registry, &mut cx);
        self.streams.flush(registry, &mut cx);
    }

    fn close_streams(&mut self) {
        let sockets = Sockets {
            kernel: self.kernel.as_deref(),
            listeners: &self.listeners,
            by_address: &self.listener_by_address,
            relays: &self.relays,
            dual_stack: self.dual_stack,
            relay_low: self.relay_low,
        };
        let mut cx = stream::StreamContext {
            now: Instant::now(),
            server: &mut self.server,
            sockets: &sockets,
            metrics: &mut self.metrics,
        };
        self.streams.close_all(self.poll.registry(), &mut cx);
    }

    fn publish(&mut self) {
        self.streams.publish(&mut self.metrics.streams);
        self.metrics.stats = self.server.stats().clone();
        self.metrics.allocations = self.server.allocation_count();
        self.metrics.permissions = self.server.permission_count();
        self.metrics.channels = self.server.active_channel_count();
        self.shared.publish(self.index, &self.metrics);
    }

    /// Receives one batch from the socket behind `token` and relays it. Returns whether the
    /// batch was full, i.e. more may be waiting.
    fn serve(&mut self, token: usize, now: Instant) -> bool {
        let listener_count = self.listeners.len();
        let (fd, relay) = if token < listener_count {
            (self.listeners[token].1.as_raw_fd(), None)
        } else {
            let slot = token - listener_count;
            let Some(socket) = self.relays.get(slot).and_then(Option::as_ref) else {
                return false;
            };
            let family = if slot.is_multiple_of(2) {
                AddressFamily::V4
            } else {
                AddressFamily::V6
            };
            let port = self.relay_low + u16::try_from(slot / 2).unwrap_or(0);
            (socket.as_raw_fd(), Some(RelaySocket { port, family }))
        };
        if self.recv.free() < udp::BATCH {
            self.flush();
        }
        let received = match self.recv.recv(fd) {
            Ok(received) => received,
            Err(error) => {
                // ICMP errors from earlier sends surface on receive too; none stops the relay.
                tracing::trace!(%error, "receive failed");
                self.metrics.receive_errors += 1;
                return false;
            }
        };
        let sockets = Sockets {
            kernel: self.kernel.as_deref(),
            listeners: &self.listeners,
            by_address: &self.listener_by_address,
            relays: &self.relays,
            dual_stack: self.dual_stack,
            relay_low: self.relay_low,
        };
        let count = received.len();
        for index in received {
            let Some(received) = self.recv.get(index) else {
                break;
            };
            let (Some(from), false) = (received.from, received.truncated) else {
                self.metrics.truncated += 1;
                continue;
            };
            let datagram = &received.slot[HEADROOM..HEADROOM + received.len];
            let forward = match relay {
                // A dual-stack relayed socket: the family is the peer's, which arrives
                // IPv4-mapped when it is IPv4.
                Some(relay) if self.dual_stack => {
                    let from = SocketAddr::new(from.ip().to_canonical(), from.port());
                    let relay = RelaySocket {
                        port: relay.port,
                        family: AddressFamily::of(from.ip()),
                    };
                    self.server.handle_peer_datagram(now, relay, from, datagram)
                }
                None => {
                    let five_tuple = FiveTuple::udp(from, sockets.listeners[token].0);
                    self.server
                        .handle_client_datagram(now, five_tuple, datagram)
                }
                Some(relay) => self.server.handle_peer_datagram(now, relay, from, datagram),
            };
            if let Some(forward) = forward {
                queue_forward(
                    &sockets,
                    &mut self.sends,
                    &mut self.streams,
                    &mut self.metrics,
                    forward,
                    received.slot,
                );
            }
            execute_commands(
                &sockets,
                &mut self.streams,
                &mut self.server,
                &mut self.metrics,
            );
        }
        count == udp::BATCH
    }

    /// Sends what the served batches queued; they point into `self.recv`, which may receive
    /// again only after this.
    fn flush(&mut self) {
        if !self.sends.is_empty() {
            self.sends.flush(&mut self.metrics.sends);
        }
        self.recv.clear();
    }

    fn run_commands(&mut self) {
        let sockets = Sockets {
            kernel: self.kernel.as_deref(),
            listeners: &self.listeners,
            by_address: &self.listener_by_address,
            relays: &self.relays,
            dual_stack: self.dual_stack,
            relay_low: self.relay_low,
        };
        execute_commands(
            &sockets,
            &mut self.streams,
            &mut self.server,
            &mut self.metrics,
        );
    }
}

/// The sockets of a shard, borrowed apart from the rest of it.
pub(crate) struct Sockets<'a> {
    kernel: Option<&'a XdpRelay>,
    listeners: &'a [(SocketAddr, UdpSocket)],
    by_address: &'a HashMap<SocketAddr, usize>,
    relays: &'a [Option<UdpSocket>],
    dual_stack: bool,
    relay_low: u16,
}

impl Sockets<'_> {
    pub(crate) fn relay(&self, relay: RelaySocket) -> Option<&UdpSocket> {
        let offset = relay.port.checked_sub(self.relay_low)?;
        let family = if self.dual_stack {
            AddressFamily::V6
        } else {
            relay.family
        };
        self.relays
            .get(usize::from(offset) * 2 + family_index(family))?
            .as_ref()
    }

    pub(crate) fn listener(&self, address: SocketAddr) -> Option<&UdpSocket> {
        self.by_address
            .get(&address)
            .map(|index| &self.listeners[*index].1)
    }
}

/// Queues a relayed datagram; `slot` is the receive slot (headroom, then the datagram).
fn queue_forward(
    sockets: &Sockets<'_>,
    sends: &mut SendBatch,
    streams: &mut Streams,
    metrics: &mut ShardMetrics,
    forward: Forward,
    slot: &mut [u8],
) {
    match forward {
        Forward::ToPeer {
            relay,
            peer,
            payload,
        } => {
            let Some(socket) = sockets.relay(relay) else {
                metrics.no_socket += 1;
                return;
            };
            let bytes = &slot[HEADROOM + payload.start..HEADROOM + payload.end];
            tracing::trace!(port = relay.port, len = bytes.len(), "to peer");
            // SAFETY: `bytes` lies in the receive pool, which receives again only after
            // `Shard::flush` has sent the batch; relayed sockets live as long as the thread.
            unsafe { sends.push(socket, peer, bytes) };
        }
        Forward::ToClient {
            client,
            channel_header,
            payload,
        } if client.transport.is_stream() => {
            // Framed and copied into the connection's write buffer (and through TLS).
            let bytes = &slot[HEADROOM + payload.start..HEADROOM + payload.end];
            streams.send_frame(&client, &channel_header, bytes, &mut metrics.streams);
        }
        Forward::ToClient {
            client,
            channel_header,
            payload,
        } => {
            let Some(socket) = sockets.listener(client.server) else {
                metrics.no_socket += 1;
                return;
            };
            // The header goes into the bytes just before the payload: the headroom for peer
            // data, the old header for hairpinned ChannelData.
            let start = HEADROOM + payload.start - channel_header.len();
            slot[start..HEADROOM + payload.start].copy_from_slice(&channel_header);
            let bytes = &slot[start..HEADROOM + payload.end];
            tracing::trace!(len = bytes.len(), "to client");
            // SAFETY: as above: the receive pool outlives the batch's next flush, and the
            // listening sockets live as long as the thread.
            unsafe { sends.push(socket, client.client, bytes) };
        }
    }
}

/// Executes the core's commands, in order, until there are none.
pub(crate) fn execute_commands(
    sockets: &Sockets<'_>,
    streams: &mut Streams,
    server: &mut Server<StdRng>,
    metrics: &mut ShardMetrics,
) {
    while let Some(command) = server.next_command() {
        match command {
            Command::SendToClient { to, payload } if to.transport.is_stream() => {
                streams.send_message(&to, &payload, &mut metrics.streams);
            }
            Command::SendToClient { to, payload } => match sockets.listener(to.server) {
                Some(socket) => udp::send_now(socket, to.client, &payload, &mut metrics.sends),
                None => metrics.no_socket += 1,
            },
            Command::SendToPeer {
                from,
                peer,
                payload,
            } => match sockets.relay(from) {
                Some(socket) => udp::send_now(socket, peer, &payload, &mut metrics.sends),
                None => metrics.no_socket += 1,
            },
            Command::OpenRelaySocket(relay) => {
                if sockets.relay(relay).is_none() {
                    // The core only hands out ports it was not told to exclude.
                    tracing::error!(
                        port = relay.port,
                        "allocated a relayed port without a socket"
                    );
                    metrics.no_socket += 1;
                }
            }
            // Relayed sockets stay bound for the life of the process (see `ShardSockets::bind`).
            Command::CloseRelaySocket(_) => {}
            // The kernel mirrors the core's channels; a failure (a full map, say) leaves that
            // channel on the user-space path, which relays it all the same.
            // The kernel program speaks UDP only: a stream client's channels stay here, and
            // their peers' data comes up to user space and out on the client's connection.
            Command::InstallChannel(route) | Command::RemoveChannel(route)
                if route.client.transport.is_stream() => {}
            Command::InstallChannel(route) => {
                if let Some(kernel) = sockets.kernel
                    && let Err(error) = kernel.install_channel(&route)
                {
                    tracing::debug!(%error, "channel stays in user space");
                    metrics.kernel_map_errors += 1;
                }
            }
            Command::RemoveChannel(route) => {
                if let Some(kernel) = sockets.kernel
                    && let Err(error) = kernel.remove_channel(&route)
                {
                    tracing::debug!(%error, "cannot remove a channel from the kernel");
                    metrics.kernel_map_errors += 1;
                }
            }
            // The kernel program relays channels only; permissions stay in user space.
            Command::InstallPermission { .. } | Command::RemovePermission { .. } => {}
        }
    }
}
