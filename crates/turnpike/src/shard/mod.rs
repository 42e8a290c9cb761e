//! One relay thread: a `Server` and the sockets it owns, driven by a mio event loop.
//!
//! # Why shards
//!
//! The core is a single-threaded state machine, so the relay runs one per thread and splits the
//! work so that no state is shared: every thread binds the listening addresses with
//! `SO_REUSEPORT`, and the kernel steers each client's source address to one of those sockets
//! (`steer.rs`; TCP and TLS connections too, `stream.rs`), so a client always
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

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::os::fd::AsRawFd;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use rand::SeedableRng;
use rand::rngs::StdRng;
use turnpike_proto::AddressFamily;
use turnpike_relay::{Config, FiveTuple, RelaySocket, Server};
use turnpike_xdp_user::XdpRelay;

use crate::metrics::{ShardMetrics, Shared};
use crate::stream::{self, StreamShared, Streams};
use turnpike_io::{self as udp, HEADROOM, RecvBatch, SendBatch};

mod commands;
mod sockets;

pub(crate) use commands::execute_commands;
use commands::queue_forward;
use sockets::OwnedSockets;
pub(crate) use sockets::{ShardSockets, Sockets, dual_stack_relays};

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
    /// Where relayed sockets bind, in order of preference (`Settings::relay_bind`).
    pub(crate) relay_bind: Vec<IpAddr>,
    pub(crate) relay_ports: RangeInclusive<u16>,
    pub(crate) socket_buffer: usize,
    pub(crate) core: Config,
    /// Stream listeners: address, and whether TLS is spoken there.
    pub(crate) stream_listen: Vec<(SocketAddr, bool)>,
    pub(crate) streams: Arc<StreamShared>,
}

/// Tokens: listeners first, then relay slots.
struct Shard {
    index: usize,
    server: Server<StdRng>,
    poll: Poll,
    sockets: OwnedSockets,
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
    control: mpsc::Receiver<Control>,
}

fn unix_time() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// What the main thread tells a relay thread.
#[derive(Debug, Clone)]
pub(crate) enum Control {
    /// A reload: apply what may change while relaying (`Server::reconfigure`).
    Reconfigure(Arc<Config>),
    /// Take no new allocations; keep relaying for the ones there are.
    Drain,
    /// Close everything and return.
    Stop,
}

/// The main thread's end of a relay thread's control channel: a message queue and a waker
/// registered in the thread's event loop, so a message is acted on at once, not at the next
/// timer.
#[derive(Debug)]
pub(crate) struct ShardControl {
    sender: mpsc::Sender<Control>,
    waker: Arc<Waker>,
}

impl ShardControl {
    /// Queues `control` and wakes the thread; a thread that is gone needs no message.
    pub(crate) fn send(&self, control: Control) {
        if self.sender.send(control).is_ok()
            && let Err(error) = self.waker.wake()
        {
            tracing::warn!(%error, "cannot wake a relay thread");
        }
    }
}

/// The token of the control channel's waker; no socket token comes near it.
const WAKER: Token = Token(usize::MAX);

/// Starts relay thread `index` on its sockets; returns the thread and its control channel.
pub(crate) fn spawn(
    index: usize,
    sockets: ShardSockets,
    shared: Arc<Shared>,
) -> Result<(std::thread::JoinHandle<Result<()>>, ShardControl)> {
    let poll = Poll::new().context("cannot create the event loop")?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).context("cannot create a waker")?);
    let (sender, receiver) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("relay-{index}"))
        .spawn(move || run(sockets, shared, poll, receiver))
        .context("cannot start a relay thread")?;
    Ok((thread, ShardControl { sender, waker }))
}

fn run(
    sockets: ShardSockets,
    shared: Arc<Shared>,
    poll: Poll,
    control: mpsc::Receiver<Control>,
) -> Result<()> {
    let ShardSockets {
        plan,
        listeners,
        stream_listeners,
        relays,
        slots,
        excluded,
        ..
    } = sockets;
    let mut core = plan.core;
    // The core knows the relay's whole range (to tell its siblings' relayed addresses) and
    // hands out only this thread's block.
    core.shard_ports = Some(plan.relay_ports.clone());
    let now = Instant::now();
    let mut server = Server::new(core, StdRng::from_os_rng(), now, unix_time());
    let host_addresses = scan_host_addresses(&mut server, Vec::new());
    for port in &excluded {
        server.exclude_relay_port(*port);
    }
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
        server,
        poll,
        sockets: OwnedSockets {
            kernel: plan.kernel.clone(),
            listeners,
            by_address: listener_by_address,
            relays,
            slots,
        },
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
        control,
    };
    shard.event_loop()
}

impl Shard {
    fn event_loop(&mut self) -> Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut last_publish = Instant::now();
        let mut last_host_scan = last_publish;
        // Load: the time not spent waiting in `poll`.
        let started = last_publish;
        let mut idle = Duration::ZERO;
        self.shared.shard_started();
        loop {
            // Messages first: the waker only interrupts the wait below.
            loop {
                match self.control.try_recv() {
                    Ok(Control::Drain) => self.server.begin_drain(),
                    Ok(Control::Reconfigure(config)) => {
                        self.server.reconfigure(Instant::now(), &config);
                        // Routes to newly denied peers leave the kernel before anything else.
                        self.run_commands();
                    }
                    Ok(Control::Stop) | Err(mpsc::TryRecvError::Disconnected) => {
                        self.close_streams();
                        self.server.shutdown();
                        self.run_commands();
                        self.publish();
                        return Ok(());
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
            let now = Instant::now();
            // Sleep until the next thing due: the core's next timer, the next publication of
            // the counters, the next host-address scan or stream sweep; or until a socket or
            // the control channel wakes the loop.
            let timeout = if self.ready.is_empty() && !self.streams.has_ready() {
                let next = [
                    self.server.poll_timeout(),
                    Some(last_publish + PUBLISH_INTERVAL),
                    Some(last_host_scan + HOST_SCAN_INTERVAL),
                    self.streams.next_sweep(),
                ]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now);
                next.saturating_duration_since(now)
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
                if event.token() == WAKER {
                    // A control message: read at the top of the next turn.
                    continue;
                }
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
        let sockets = self.sockets.view();
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
        let sockets = self.sockets.view();
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
        let listener_count = self.sockets.listeners.len();
        let (fd, relay) = if token < listener_count {
            (self.sockets.listeners[token].1.as_raw_fd(), None)
        } else {
            let slot = token - listener_count;
            let Some(socket) = self.sockets.relays.get(slot).and_then(Option::as_ref) else {
                return false;
            };
            (socket.as_raw_fd(), Some(self.sockets.slots.socket(slot)))
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
        let sockets = self.sockets.view();
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
                Some(relay) if self.sockets.slots.dual_stack() => {
                    let from = SocketAddr::new(from.ip().to_canonical(), from.port());
                    let relay = RelaySocket {
                        port: relay.port,
                        family: AddressFamily::of(from.ip()),
                    };
                    self.server.handle_peer_datagram(now, relay, from, datagram)
                }
                None => {
                    // On a wildcard listener, the address the client wrote to.
                    let listening = sockets.listeners[token].0;
                    let server = received
                        .destination
                        .map_or(listening, |ip| SocketAddr::new(ip, listening.port()));
                    let five_tuple = FiveTuple::udp(from, server);
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
        let sockets = self.sockets.view();
        execute_commands(
            &sockets,
            &mut self.streams,
            &mut self.server,
            &mut self.metrics,
        );
    }
}
