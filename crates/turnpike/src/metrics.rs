//! What the relay threads publish for the admin endpoint, and its Prometheus rendering.
//!
//! Each thread owns its counters and copies them here four times a second; the admin endpoint
//! sums the copies. The data path never takes a lock and never touches an atomic per packet.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use turnpike_relay::Stats;

use turnpike_io::SendOutcome;
use turnpike_xdp_user::{Counter, Counters};

/// The counters of one relay thread.
#[derive(Debug, Clone, Default)]
pub(crate) struct ShardMetrics {
    pub(crate) stats: Stats,
    pub(crate) allocations: usize,
    pub(crate) permissions: usize,
    pub(crate) channels: usize,
    pub(crate) sends: SendOutcome,
    pub(crate) receive_errors: u64,
    pub(crate) truncated: u64,
    pub(crate) interrupted: u64,
    pub(crate) no_socket: u64,
    pub(crate) excluded_ports: usize,
    /// Channels the kernel map refused (full) or could not drop.
    pub(crate) kernel_map_errors: u64,
    /// TURN over TCP and TLS.
    pub(crate) streams: StreamMetrics,
    /// Time the thread spent working rather than waiting for its sockets, since it started.
    pub(crate) busy: Duration,
}

/// Index of a stream transport in [`StreamMetrics`]' arrays.
pub(crate) const STREAM_TRANSPORTS: [&str; 2] = ["tcp", "tls"];

/// The counters of one relay thread's TCP and TLS connections. Arrays are indexed like
/// [`STREAM_TRANSPORTS`]; reasons are fixed names from the stream module.
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamMetrics {
    pub(crate) open: [u64; 2],
    pub(crate) accepted: [u64; 2],
    pub(crate) messages_in: [u64; 2],
    pub(crate) bytes_in: [u64; 2],
    pub(crate) messages_out: [u64; 2],
    pub(crate) bytes_out: [u64; 2],
    pub(crate) refused: BTreeMap<&'static str, u64>,
    pub(crate) closed: BTreeMap<&'static str, u64>,
    /// Frames to a client whose write buffer was full.
    pub(crate) dropped_frames: u64,
    pub(crate) dropped_bytes: u64,
    /// Bytes held in connection buffers now (partial frames read, data not yet written).
    pub(crate) buffered_bytes: u64,
}

impl StreamMetrics {
    fn add(&mut self, other: &Self) {
        let add = |into: &mut [u64; 2], from: &[u64; 2]| {
            for (into, from) in into.iter_mut().zip(from) {
                *into += from;
            }
        };
        add(&mut self.open, &other.open);
        add(&mut self.accepted, &other.accepted);
        add(&mut self.messages_in, &other.messages_in);
        add(&mut self.bytes_in, &other.bytes_in);
        add(&mut self.messages_out, &other.messages_out);
        add(&mut self.bytes_out, &other.bytes_out);
        add_map(&mut self.refused, &other.refused);
        add_map(&mut self.closed, &other.closed);
        self.dropped_frames += other.dropped_frames;
        self.dropped_bytes += other.dropped_bytes;
        self.buffered_bytes += other.buffered_bytes;
    }
}

/// State shared between the relay threads, the admin endpoint and the signal handler.
#[derive(Debug)]
pub(crate) struct Shared {
    /// A drain has begun (for `/readyz` and the metrics; the threads learn it by message).
    pub(crate) draining: AtomicBool,
    /// Reloads applied and refused.
    reloads: [std::sync::atomic::AtomicU64; 2],
    started: AtomicUsize,
    threads: usize,
    shards: Mutex<Vec<ShardMetrics>>,
}

impl Shared {
    pub(crate) fn new(threads: usize) -> Self {
        Self {
            draining: AtomicBool::new(false),
            reloads: [
                std::sync::atomic::AtomicU64::new(0),
                std::sync::atomic::AtomicU64::new(0),
            ],
            started: AtomicUsize::new(0),
            threads,
            shards: Mutex::new(vec![ShardMetrics::default(); threads]),
        }
    }

    pub(crate) fn count_reload(&self, applied: bool) {
        self.reloads[usize::from(!applied)].fetch_add(1, Ordering::Relaxed);
    }

    /// Reloads (applied, refused) so far.
    pub(crate) fn reloads(&self) -> (u64, u64) {
        (
            self.reloads[0].load(Ordering::Relaxed),
            self.reloads[1].load(Ordering::Relaxed),
        )
    }

    pub(crate) fn shard_started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// Ready for traffic: every thread runs and no drain has begun.
    pub(crate) fn is_ready(&self) -> bool {
        self.started.load(Ordering::Relaxed) == self.threads
            && !self.draining.load(Ordering::Relaxed)
    }

    pub(crate) fn publish(&self, index: usize, metrics: &ShardMetrics) {
        let mut shards = self
            .shards
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slot) = shards.get_mut(index) {
            slot.clone_from(metrics);
        }
    }

    /// A copy of every thread's counters, in thread order.
    pub(crate) fn shards(&self) -> Vec<ShardMetrics> {
        self.shards
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The sum of some threads' counters.
pub(crate) fn sum(shards: &[ShardMetrics]) -> ShardMetrics {
    let mut total = ShardMetrics::default();
    for shard in shards.iter() {
        add_stats(&mut total.stats, &shard.stats);
        total.allocations += shard.allocations;
        total.permissions += shard.permissions;
        total.channels += shard.channels;
        total.sends.sent += shard.sends.sent;
        total.sends.buffer_full += shard.sends.buffer_full;
        total.sends.unreachable += shard.sends.unreachable;
        total.sends.other += shard.sends.other;
        total.sends.segmented += shard.sends.segmented;
        total.receive_errors += shard.receive_errors;
        total.truncated += shard.truncated;
        total.interrupted += shard.interrupted;
        total.no_socket += shard.no_socket;
        total.excluded_ports += shard.excluded_ports;
        total.kernel_map_errors += shard.kernel_map_errors;
        total.busy += shard.busy;
        total.streams.add(&shard.streams);
    }
    total
}

fn add_map<K: Ord + Copy>(into: &mut BTreeMap<K, u64>, from: &BTreeMap<K, u64>) {
    for (key, value) in from {
        *into.entry(*key).or_default() += value;
    }
}

fn add_stats(into: &mut Stats, from: &Stats) {
    add_map(&mut into.responses, &from.responses);
    add_map(&mut into.auth_failures, &from.auth_failures);
    add_map(&mut into.dropped, &from.dropped);
    add_map(&mut into.refusals, &from.refusals);
    into.relayed_to_peer.packets += from.relayed_to_peer.packets;
    into.relayed_to_peer.bytes += from.relayed_to_peer.bytes;
    into.relayed_to_client.packets += from.relayed_to_client.packets;
    into.relayed_to_client.bytes += from.relayed_to_client.bytes;
    into.indications_to_peer.packets += from.indications_to_peer.packets;
    into.indications_to_peer.bytes += from.indications_to_peer.bytes;
    into.indications_to_client.packets += from.indications_to_client.packets;
    into.indications_to_client.bytes += from.indications_to_client.bytes;
    into.hairpinned += from.hairpinned;
    into.retransmissions += from.retransmissions;
}

/// Renders the Prometheus text exposition format. Every label has a small fixed set of values.
/// `kernel` holds the XDP program's counters when the kernel data plane runs.
pub(crate) fn render(total: &ShardMetrics, kernel: Option<&Counters>) -> String {
    let mut out = String::new();
    let mut section = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let gauge = |value: usize| vec![(String::new(), value as u64)];
    section(
        "turnpike_allocations",
        "gauge",
        "Allocations alive now.",
        gauge(total.allocations),
    );
    section(
        "turnpike_permissions",
        "gauge",
        "Permissions alive now.",
        gauge(total.permissions),
    );
    section(
        "turnpike_channels",
        "gauge",
        "Channels bound and relaying now.",
        gauge(total.channels),
    );
    section(
        "turnpike_responses_total",
        "counter",
        "Responses sent, by request method and result code (0 for success).",
        total
            .stats
            .responses
            .iter()
            .map(|((method, code), value)| {
                (format!("{{method=\"{method}\",code=\"{code}\"}}"), *value)
            })
            .collect(),
    );
    section(
        "turnpike_auth_failures_total",
        "counter",
        "Requests that failed authentication, by reason.",
        total
            .stats
            .auth_failures
            .iter()
            .map(|(reason, value)| (format!("{{reason=\"{reason}\"}}"), *value))
            .collect(),
    );
    section(
        "turnpike_refusals_total",
        "counter",
        "Requests refused with an error response, by reason (each reason maps to one error code).",
        total
            .stats
            .refusals
            .iter()
            .map(|(refusal, value)| (format!("{{reason=\"{}\"}}", refusal.as_str()), *value))
            .collect(),
    );
    let relayed = &total.stats;
    section(
        "turnpike_relayed_packets_total",
        "counter",
        "Datagrams relayed, by direction and data path.",
        with_kernel(
            vec![
                (
                    "{direction=\"client_to_peer\",path=\"userspace\"}".to_owned(),
                    relayed.relayed_to_peer.packets,
                ),
                (
                    "{direction=\"peer_to_client\",path=\"userspace\"}".to_owned(),
                    relayed.relayed_to_client.packets,
                ),
            ],
            kernel,
            |counter| counter.packets,
        ),
    );
    section(
        "turnpike_relayed_bytes_total",
        "counter",
        "Payload bytes relayed, by direction and data path.",
        with_kernel(
            vec![
                (
                    "{direction=\"client_to_peer\",path=\"userspace\"}".to_owned(),
                    relayed.relayed_to_peer.bytes,
                ),
                (
                    "{direction=\"peer_to_client\",path=\"userspace\"}".to_owned(),
                    relayed.relayed_to_client.bytes,
                ),
            ],
            kernel,
            |counter| counter.bytes,
        ),
    );
    section(
        "turnpike_relayed_indication_packets_total",
        "counter",
        "Of the relayed datagrams, those carried in Send or Data indications instead of ChannelData.",
        vec![
            (
                "{direction=\"client_to_peer\"}".to_owned(),
                relayed.indications_to_peer.packets,
            ),
            (
                "{direction=\"peer_to_client\"}".to_owned(),
                relayed.indications_to_client.packets,
            ),
        ],
    );
    let mut dropped: Vec<(String, u64)> = total
        .stats
        .dropped
        .iter()
        .map(|(reason, value)| (format!("{{reason=\"{}\"}}", reason.as_str()), *value))
        .collect();
    dropped.push(("{reason=\"truncated\"}".to_owned(), total.truncated));
    section(
        "turnpike_dropped_packets_total",
        "counter",
        "Datagrams dropped, by reason.",
        dropped,
    );
    section(
        "turnpike_socket_errors_total",
        "counter",
        "Socket errors, by kind; none of them stops the relay.",
        vec![
            (
                "{kind=\"send_buffer_full\"}".to_owned(),
                total.sends.buffer_full,
            ),
            (
                "{kind=\"send_unreachable\"}".to_owned(),
                total.sends.unreachable,
            ),
            ("{kind=\"send_other\"}".to_owned(), total.sends.other),
            ("{kind=\"receive\"}".to_owned(), total.receive_errors),
            ("{kind=\"interrupted\"}".to_owned(), total.interrupted),
            ("{kind=\"no_socket\"}".to_owned(), total.no_socket),
        ],
    );
    section(
        "turnpike_hairpinned_packets_total",
        "counter",
        "Datagrams relayed between two allocations of this relay.",
        vec![(String::new(), total.stats.hairpinned)],
    );
    section(
        "turnpike_retransmissions_total",
        "counter",
        "Requests answered from the retransmission cache.",
        vec![(String::new(), total.stats.retransmissions)],
    );
    // Without the kernel data plane its families are declared with no samples, so that
    // dashboards and rules name the same families whatever the relay's mode.
    section(
        "turnpike_xdp_packets_total",
        "counter",
        "Frames the XDP program saw, by outcome: relayed per direction and family pair, or \
         passed to user space and why.",
        kernel.map_or_else(Vec::new, |kernel| {
            kernel
                .iter()
                .map(|(outcome, counter)| {
                    (
                        format!("{{outcome=\"{}\"}}", outcome.as_str()),
                        counter.packets,
                    )
                })
                .collect()
        }),
    );
    section(
        "turnpike_xdp_cached_channels",
        "gauge",
        "Bound channels the XDP program finds in its direct-mapped caches, per direction; the \
         others cost it a hash-map lookup per packet.",
        kernel.map_or_else(Vec::new, |kernel| {
            let (to_peer, to_client) = kernel.cached_channels();
            vec![
                (
                    format!("{{direction=\"{CLIENT_TO_PEER}\"}}"),
                    to_peer as u64,
                ),
                (
                    format!("{{direction=\"{PEER_TO_CLIENT}\"}}"),
                    to_client as u64,
                ),
            ]
        }),
    );
    section(
        "turnpike_xdp_adjust_mode",
        "gauge",
        "How the XDP program resizes frames: 1 for the mode in use (head, tail; auto until the \
         first datagram that grows settles it).",
        kernel.map_or_else(Vec::new, |kernel| {
            vec![(format!("{{mode=\"{}\"}}", kernel.adjust_mode().as_str()), 1)]
        }),
    );
    section(
        "turnpike_xdp_head_refused_total",
        "counter",
        "Datagrams the driver would not grow at the frame start, relayed by resizing at the tail \
         (--xdp-adjust auto, which then settles on tail).",
        kernel.map_or_else(Vec::new, |kernel| {
            vec![(String::new(), kernel.head_refused())]
        }),
    );
    section(
        "turnpike_xdp_map_errors_total",
        "counter",
        "Channels the kernel map could not take or drop (they are relayed in user space).",
        kernel.map_or_else(Vec::new, |_| vec![(String::new(), total.kernel_map_errors)]),
    );
    render_streams(&mut section, &total.streams);
    section(
        "turnpike_excluded_ports",
        "gauge",
        "Relayed ports that could not be bound at start.",
        vec![(String::new(), total.excluded_ports as u64)],
    );
    out
}

/// The TCP and TLS series; every transport appears even at zero, so a dashboard never sees a
/// series vanish.
fn render_streams(
    section: &mut impl FnMut(&str, &str, &str, Vec<(String, u64)>),
    streams: &StreamMetrics,
) {
    let by_transport = |values: &[u64; 2]| -> Vec<(String, u64)> {
        STREAM_TRANSPORTS
            .iter()
            .zip(values)
            .map(|(transport, value)| (format!("{{transport=\"{transport}\"}}"), *value))
            .collect()
    };
    let by_reason = |reasons: &[&str], values: &BTreeMap<&'static str, u64>| {
        reasons
            .iter()
            .map(|reason| {
                (
                    format!("{{reason=\"{reason}\"}}"),
                    values.get(reason).copied().unwrap_or(0),
                )
            })
            .collect()
    };
    section(
        "turnpike_stream_connections",
        "gauge",
        "TCP and TLS client connections open now, by transport.",
        by_transport(&streams.open),
    );
    section(
        "turnpike_stream_connections_accepted_total",
        "counter",
        "TCP and TLS client connections accepted, by transport.",
        by_transport(&streams.accepted),
    );
    section(
        "turnpike_stream_connections_refused_total",
        "counter",
        "Connections closed at once on accept, by the limit they hit.",
        by_reason(crate::stream::REFUSE_REASONS, &streams.refused),
    );
    section(
        "turnpike_stream_connections_closed_total",
        "counter",
        "TCP and TLS connections closed, by reason.",
        by_reason(crate::stream::CLOSE_REASONS, &streams.closed),
    );
    section(
        "turnpike_stream_messages_received_total",
        "counter",
        "STUN and ChannelData messages received over TCP and TLS, by transport.",
        by_transport(&streams.messages_in),
    );
    section(
        "turnpike_stream_received_bytes_total",
        "counter",
        "Bytes of those messages (padding included), by transport.",
        by_transport(&streams.bytes_in),
    );
    section(
        "turnpike_stream_messages_sent_total",
        "counter",
        "STUN and ChannelData messages queued to TCP and TLS clients, by transport.",
        by_transport(&streams.messages_out),
    );
    section(
        "turnpike_stream_sent_bytes_total",
        "counter",
        "Bytes of those messages (padding included), by transport.",
        by_transport(&streams.bytes_out),
    );
    section(
        "turnpike_stream_dropped_messages_total",
        "counter",
        "Messages to a TCP or TLS client dropped because its write buffer was full.",
        vec![(String::new(), streams.dropped_frames)],
    );
    section(
        "turnpike_stream_dropped_bytes_total",
        "counter",
        "Bytes of those messages.",
        vec![(String::new(), streams.dropped_bytes)],
    );
    section(
        "turnpike_stream_buffered_bytes",
        "gauge",
        "Bytes held in TCP and TLS connection buffers now (partial messages, unsent data).",
        vec![(String::new(), streams.buffered_bytes)],
    );
}

const CLIENT_TO_PEER: &str = "client_to_peer";
const PEER_TO_CLIENT: &str = "peer_to_client";

/// Adds the kernel's relayed counts, per direction, to user-space samples.
fn with_kernel(
    mut samples: Vec<(String, u64)>,
    kernel: Option<&Counters>,
    value: impl Fn(Counter) -> u64,
) -> Vec<(String, u64)> {
    if let Some(kernel) = kernel {
        samples.push((
            "{direction=\"client_to_peer\",path=\"kernel\"}".to_owned(),
            value(kernel_relayed(kernel, CLIENT_TO_PEER)),
        ));
        samples.push((
            "{direction=\"peer_to_client\",path=\"kernel\"}".to_owned(),
            value(kernel_relayed(kernel, PEER_TO_CLIENT)),
        ));
    }
    samples
}

/// What the kernel relayed in one direction (`client_to_peer` or `peer_to_client`), over all
/// family pairs. Its bytes are whole frames as received, headers included.
pub(crate) fn kernel_relayed(kernel: &Counters, direction: &str) -> Counter {
    kernel
        .iter()
        .filter(|(outcome, _)| outcome.is_relayed() && outcome.as_str().starts_with(direction))
        .fold(Counter::default(), |sum, (_, counter)| Counter {
            packets: sum.packets + counter.packets,
            bytes: sum.bytes + counter.bytes,
        })
}

/// What the relay is, fixed at start, for `/metrics` and `/status`.
#[derive(Debug, Clone)]
pub(crate) struct RelayInfo {
    pub(crate) version: &'static str,
    pub(crate) started: Instant,
    /// The start in seconds since the Unix epoch.
    pub(crate) started_unix: f64,
    /// The total allocation quota (`--max-allocations`).
    pub(crate) allocations_limit: usize,
    /// Whether the XDP program relays bound channels.
    pub(crate) kernel_path: bool,
}

/// The reload counter: configuration reloads (SIGHUP, `POST /reload`) by result.
pub(crate) fn render_reloads((applied, refused): (u64, u64)) -> String {
    format!(
        "# HELP turnpike_config_reload_total Configuration reloads (SIGHUP, POST /reload), by \
         result; a failure leaves the running configuration unchanged.\n\
         # TYPE turnpike_config_reload_total counter\n\
         turnpike_config_reload_total{{result=\"success\"}} {applied}\n\
         turnpike_config_reload_total{{result=\"failure\"}} {refused}\n"
    )
}

/// When the TLS certificate served to new connections expires; declared without a sample when
/// the relay has no TLS listener, like the kernel's families without XDP.
pub(crate) fn render_tls(not_after_unix: Option<i64>) -> String {
    let mut out = "# HELP turnpike_tls_certificate_expiry_seconds When the certificate served on \
                   --listen-tls expires, in seconds since the Unix epoch (re-read on reload).\n\
                   # TYPE turnpike_tls_certificate_expiry_seconds gauge\n"
        .to_owned();
    if let Some(not_after) = not_after_unix {
        let _ = writeln!(out, "turnpike_tls_certificate_expiry_seconds {not_after}");
    }
    out
}

/// Renders the relay's identity and state, and each thread's load.
pub(crate) fn render_relay(info: &RelayInfo, shards: &[ShardMetrics], draining: bool) -> String {
    let mut out = String::new();
    let mut section = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |value: String| vec![(String::new(), value)];
    section(
        "turnpike_build_info",
        "gauge",
        "Always 1; the version is a label.",
        vec![(format!("{{version=\"{}\"}}", info.version), "1".to_owned())],
    );
    section(
        "turnpike_start_time_seconds",
        "gauge",
        "When the relay started, in seconds since the Unix epoch.",
        one(format!("{:.3}", info.started_unix)),
    );
    section(
        "turnpike_draining",
        "gauge",
        "1 once SIGTERM or SIGINT began the drain: no new allocations, existing ones still relay.",
        one(u8::from(draining).to_string()),
    );
    section(
        "turnpike_allocations_limit",
        "gauge",
        "The total allocation quota (--max-allocations).",
        one(info.allocations_limit.to_string()),
    );
    section(
        "turnpike_xdp_enabled",
        "gauge",
        "1 when the XDP program relays bound channels in the kernel (--xdp-interface).",
        one(u8::from(info.kernel_path).to_string()),
    );
    section(
        "turnpike_thread_busy_seconds_total",
        "counter",
        "Time each relay thread spent working rather than waiting for its sockets; its rate is \
         the thread's load, from 0 to 1.",
        shards
            .iter()
            .enumerate()
            .map(|(index, shard)| {
                (
                    format!("{{thread=\"{index}\"}}"),
                    format!("{:.6}", shard.busy.as_secs_f64()),
                )
            })
            .collect(),
    );
    out
}
