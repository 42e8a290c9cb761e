//! `GET /status`: the relay's state as JSON, which the status page (`GET /`, `status.html`) reads
//! every second. It is built from the same snapshot of the same counters as `/metrics`, so every
//! number in it is a `/metrics` sample (`docs/operations.md` maps the fields to the series), plus
//! a history of the last minutes that the admin thread samples once a second.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use turnpike_xdp_user::{Counter, Counters, XdpRelay};

use crate::metrics::{
    RelayInfo, STREAM_TRANSPORTS, ShardMetrics, Shared, StreamMetrics, kernel_relayed, sum,
};
use crate::stream::{CLOSE_REASONS, REFUSE_REASONS};

/// Samples kept: one a second for five minutes.
pub(crate) const HISTORY_SAMPLES: usize = 300;
/// Time between two samples.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Every thread's counters, their sum and the kernel's counters, read at one moment.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) shards: Vec<ShardMetrics>,
    pub(crate) total: ShardMetrics,
    pub(crate) kernel: Option<Counters>,
    pub(crate) draining: bool,
    pub(crate) ready: bool,
    /// Configuration reloads so far: (applied, refused).
    pub(crate) reloads: (u64, u64),
}

impl Snapshot {
    pub(crate) fn take(shared: &Shared, kernel: Option<&XdpRelay>) -> Self {
        let shards = shared.shards();
        let total = sum(&shards);
        let kernel = kernel.and_then(|kernel| {
            kernel
                .counters()
                .inspect_err(|error| tracing::warn!(%error, "cannot read the XDP counters"))
                .ok()
        });
        Self {
            shards,
            total,
            kernel,
            draining: shared.draining.load(std::sync::atomic::Ordering::Relaxed),
            ready: shared.is_ready(),
            reloads: shared.reloads(),
        }
    }

    /// User-space and kernel counts of one direction (`client_to_peer` or `peer_to_client`).
    fn relayed(&self, direction: &str) -> (Counter, Counter) {
        let stats = &self.total.stats;
        let user = if direction == CLIENT_TO_PEER {
            stats.relayed_to_peer
        } else {
            stats.relayed_to_client
        };
        let kernel = self
            .kernel
            .as_ref()
            .map(|kernel| kernel_relayed(kernel, direction))
            .unwrap_or_default();
        (
            Counter {
                packets: user.packets,
                bytes: user.bytes,
            },
            kernel,
        )
    }
}

const CLIENT_TO_PEER: &str = "client_to_peer";
const PEER_TO_CLIENT: &str = "peer_to_client";

/// Cumulative counts of one direction, per data path.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct ByPath {
    userspace: u64,
    kernel: u64,
}

/// Cumulative counts per direction and data path.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct ByDirection {
    client_to_peer: ByPath,
    peer_to_client: ByPath,
}

/// TCP and TLS connections open, per transport.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct ByTransport {
    tcp: u64,
    tls: u64,
}

impl ByTransport {
    fn of(values: [u64; 2]) -> Self {
        let [tcp, tls] = values;
        Self { tcp, tls }
    }
}

/// One point of the history: gauges and cumulative counters, as `/metrics` had them.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sample {
    /// When, in milliseconds since the Unix epoch.
    unix_ms: u64,
    allocations: usize,
    permissions: usize,
    channels: usize,
    packets: ByDirection,
    bytes: ByDirection,
    /// `turnpike_stream_connections`, by transport.
    connections: ByTransport,
    /// Per thread, `turnpike_thread_busy_seconds_total`.
    busy_seconds: Vec<f64>,
}

impl Sample {
    fn of(snapshot: &Snapshot, unix_ms: u64) -> Self {
        let (c2p_user, c2p_kernel) = snapshot.relayed(CLIENT_TO_PEER);
        let (p2c_user, p2c_kernel) = snapshot.relayed(PEER_TO_CLIENT);
        let by = |value: fn(Counter) -> u64| ByDirection {
            client_to_peer: ByPath {
                userspace: value(c2p_user),
                kernel: value(c2p_kernel),
            },
            peer_to_client: ByPath {
                userspace: value(p2c_user),
                kernel: value(p2c_kernel),
            },
        };
        Self {
            unix_ms,
            allocations: snapshot.total.allocations,
            permissions: snapshot.total.permissions,
            channels: snapshot.total.channels,
            packets: by(|counter| counter.packets),
            bytes: by(|counter| counter.bytes),
            connections: ByTransport::of(snapshot.total.streams.open),
            busy_seconds: snapshot
                .shards
                .iter()
                .map(|shard| shard.busy.as_secs_f64())
                .collect(),
        }
    }
}

/// The samples of the last [`HISTORY_SAMPLES`] seconds, oldest first.
#[derive(Debug, Default)]
pub(crate) struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    pub(crate) fn record(&self, snapshot: &Snapshot) {
        let sample = Sample::of(snapshot, unix_ms());
        let mut samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if samples.len() == HISTORY_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The samples taken after `since` (milliseconds since the Unix epoch).
    fn after(&self, since: u64) -> Vec<Sample> {
        let samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        samples
            .iter()
            .filter(|sample| sample.unix_ms > since)
            .cloned()
            .collect()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |now| u64::try_from(now.as_millis()).unwrap_or(u64::MAX))
}

/// Samples the counters every [`SAMPLE_INTERVAL`] into `history`, forever.
pub(crate) async fn sample(
    history: std::sync::Arc<History>,
    shared: std::sync::Arc<Shared>,
    kernel: Option<std::sync::Arc<XdpRelay>>,
) {
    let mut interval = tokio::time::interval(SAMPLE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        history.record(&Snapshot::take(&shared, kernel.as_deref()));
    }
}

#[derive(Debug, Serialize)]
struct Relayed {
    direction: &'static str,
    path: &'static str,
    packets: u64,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct Indications {
    direction: &'static str,
    packets: u64,
}

#[derive(Debug, Serialize)]
struct Response {
    method: &'static str,
    code: u16,
    count: u64,
}

#[derive(Debug, Serialize)]
struct Reason {
    reason: &'static str,
    count: u64,
}

#[derive(Debug, Serialize)]
struct Kind {
    kind: &'static str,
    count: u64,
}

/// One stream transport's connections and messages.
#[derive(Debug, Serialize)]
struct Transport {
    transport: &'static str,
    connections: u64,
    accepted: u64,
    messages_received: u64,
    received_bytes: u64,
    messages_sent: u64,
    sent_bytes: u64,
}

/// TURN over TCP and TLS.
#[derive(Debug, Serialize)]
struct Streams {
    transports: Vec<Transport>,
    refused: Vec<Reason>,
    closed: Vec<Reason>,
    dropped_messages: u64,
    dropped_bytes: u64,
    buffered_bytes: u64,
}

impl Streams {
    /// Every transport and every reason, zeros included, as `/metrics` has them.
    fn of(streams: &StreamMetrics) -> Self {
        fn reasons(names: &[&'static str], counts: &BTreeMap<&'static str, u64>) -> Vec<Reason> {
            names
                .iter()
                .map(|&reason| Reason {
                    reason,
                    count: counts.get(reason).copied().unwrap_or(0),
                })
                .collect()
        }
        Self {
            transports: STREAM_TRANSPORTS
                .iter()
                .enumerate()
                .map(|(index, transport)| Transport {
                    transport,
                    connections: streams.open[index],
                    accepted: streams.accepted[index],
                    messages_received: streams.messages_in[index],
                    received_bytes: streams.bytes_in[index],
                    messages_sent: streams.messages_out[index],
                    sent_bytes: streams.bytes_out[index],
                })
                .collect(),
            refused: reasons(REFUSE_REASONS, &streams.refused),
            closed: reasons(CLOSE_REASONS, &streams.closed),
            dropped_messages: streams.dropped_frames,
            dropped_bytes: streams.dropped_bytes,
            buffered_bytes: streams.buffered_bytes,
        }
    }
}

#[derive(Debug, Serialize)]
struct Thread {
    thread: usize,
    busy_seconds: f64,
    allocations: usize,
    permissions: usize,
    channels: usize,
    relayed_packets: u64,
}

#[derive(Debug, Serialize)]
struct Outcome {
    outcome: &'static str,
    packets: u64,
}

#[derive(Debug, Serialize)]
struct CachedChannels {
    client_to_peer: usize,
    peer_to_client: usize,
}

#[derive(Debug, Serialize)]
struct Kernel {
    outcomes: Vec<Outcome>,
    cached_channels: CachedChannels,
    map_errors: u64,
    /// How frames are resized: `head`, `tail`, or `auto` until it settles.
    adjust_mode: &'static str,
    head_refused: u64,
}

/// Configuration reloads (SIGHUP, `POST /reload`) by result.
#[derive(Debug, Serialize)]
struct Reloads {
    success: u64,
    failure: u64,
}

#[derive(Debug, Serialize)]
struct HistoryJson {
    interval_seconds: u64,
    samples: Vec<Sample>,
}

/// The document `GET /status` returns; `docs/operations.md` describes every field.
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    version: &'static str,
    started_unix: f64,
    uptime_seconds: f64,
    ready: bool,
    draining: bool,
    kernel_path: bool,
    allocations: usize,
    allocations_limit: usize,
    permissions: usize,
    channels: usize,
    relayed: Vec<Relayed>,
    indications: Vec<Indications>,
    responses: Vec<Response>,
    auth_failures: Vec<Reason>,
    refusals: Vec<Reason>,
    dropped: Vec<Reason>,
    socket_errors: Vec<Kind>,
    hairpinned_packets: u64,
    retransmissions: u64,
    excluded_ports: usize,
    reloads: Reloads,
    streams: Streams,
    threads: Vec<Thread>,
    kernel: Option<Kernel>,
    /// When the certificate served on `--listen-tls` expires (none without TLS).
    tls_certificate_expiry_unix: Option<i64>,
    history: HistoryJson,
}

impl Status {
    /// The same status with the TLS certificate's expiry, which lives outside the counters.
    pub(crate) fn with_tls_certificate_expiry(mut self, not_after_unix: Option<i64>) -> Self {
        self.tls_certificate_expiry_unix = not_after_unix;
        self
    }

    /// The status now, with the history samples taken after `since` (all of them for 0).
    pub(crate) fn new(
        info: &RelayInfo,
        snapshot: &Snapshot,
        history: &History,
        since: u64,
    ) -> Self {
        let total = &snapshot.total;
        let stats = &total.stats;
        let mut relayed = Vec::new();
        for direction in [CLIENT_TO_PEER, PEER_TO_CLIENT] {
            let (user, kernel) = snapshot.relayed(direction);
            relayed.push(Relayed {
                direction,
                path: "userspace",
                packets: user.packets,
                bytes: user.bytes,
            });
            if snapshot.kernel.is_some() {
                relayed.push(Relayed {
                    direction,
                    path: "kernel",
                    packets: kernel.packets,
                    bytes: kernel.bytes,
                });
            }
        }
        let mut dropped: Vec<Reason> = stats
            .dropped
            .iter()
            .map(|(reason, count)| Reason {
                reason: reason.as_str(),
                count: *count,
            })
            .collect();
        dropped.push(Reason {
            reason: "truncated",
            count: total.truncated,
        });
        let socket_errors = [
            ("send_buffer_full", total.sends.buffer_full),
            ("send_unreachable", total.sends.unreachable),
            ("send_other", total.sends.other),
            ("receive", total.receive_errors),
            ("interrupted", total.interrupted),
            ("no_socket", total.no_socket),
        ]
        .into_iter()
        .map(|(kind, count)| Kind { kind, count })
        .collect();
        Self {
            version: info.version,
            started_unix: info.started_unix,
            uptime_seconds: info.started.elapsed().as_secs_f64(),
            ready: snapshot.ready,
            draining: snapshot.draining,
            kernel_path: info.kernel_path,
            allocations: total.allocations,
            allocations_limit: info.allocations_limit,
            permissions: total.permissions,
            channels: total.channels,
            relayed,
            indications: vec![
                Indications {
                    direction: CLIENT_TO_PEER,
                    packets: stats.indications_to_peer.packets,
                },
                Indications {
                    direction: PEER_TO_CLIENT,
                    packets: stats.indications_to_client.packets,
                },
            ],
            responses: stats
                .responses
                .iter()
                .map(|((method, code), count)| Response {
                    method,
                    code: *code,
                    count: *count,
                })
                .collect(),
            auth_failures: stats
                .auth_failures
                .iter()
                .map(|(reason, count)| Reason {
                    reason,
                    count: *count,
                })
                .collect(),
            refusals: stats
                .refusals
                .iter()
                .map(|(refusal, count)| Reason {
                    reason: refusal.as_str(),
                    count: *count,
                })
                .collect(),
            dropped,
            socket_errors,
            hairpinned_packets: stats.hairpinned,
            retransmissions: stats.retransmissions,
            excluded_ports: total.excluded_ports,
            reloads: Reloads {
                success: snapshot.reloads.0,
                failure: snapshot.reloads.1,
            },
            streams: Streams::of(&total.streams),
            threads: snapshot
                .shards
                .iter()
                .enumerate()
                .map(|(thread, shard)| Thread {
                    thread,
                    busy_seconds: shard.busy.as_secs_f64(),
                    allocations: shard.allocations,
                    permissions: shard.permissions,
                    channels: shard.channels,
                    relayed_packets: shard.stats.relayed_to_peer.packets
                        + shard.stats.relayed_to_client.packets,
                })
                .collect(),
            kernel: snapshot.kernel.as_ref().map(|kernel| {
                let (to_peer, to_client) = kernel.cached_channels();
                Kernel {
                    outcomes: kernel
                        .iter()
                        .map(|(outcome, counter)| Outcome {
                            outcome: outcome.as_str(),
                            packets: counter.packets,
                        })
                        .collect(),
                    cached_channels: CachedChannels {
                        client_to_peer: to_peer,
                        peer_to_client: to_client,
                    },
                    map_errors: total.kernel_map_errors,
                    adjust_mode: kernel.adjust_mode().as_str(),
                    head_refused: kernel.head_refused(),
                }
            }),
            tls_certificate_expiry_unix: None,
            history: HistoryJson {
                interval_seconds: SAMPLE_INTERVAL.as_secs(),
                samples: history.after(since),
            },
        }
    }
}

/// The `since` parameter of a query string such as `since=1733350000000`; 0 when absent or
/// malformed (the whole history).
pub(crate) fn since(query: Option<&str>) -> u64 {
    query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("since="))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_read_from_the_query_and_defaults_to_the_whole_history() {
        assert_eq!(since(None), 0);
        assert_eq!(since(Some("since=1733350000000")), 1_733_350_000_000);
        assert_eq!(since(Some("a=b&since=5")), 5);
        assert_eq!(since(Some("since=soon")), 0);
    }

    #[test]
    fn history_keeps_the_last_samples_and_returns_those_after_a_time() {
        let history = History::default();
        let shared = Shared::new(1);
        for _ in 0..HISTORY_SAMPLES + 5 {
            history.record(&Snapshot::take(&shared, None));
        }
        let all = history.after(0);
        assert_eq!(all.len(), HISTORY_SAMPLES);
        let last = all.last().map_or(0, |sample| sample.unix_ms);
        assert!(history.after(last).is_empty());
        assert_eq!(
            history.after(last - 1).len(),
            all.iter().filter(|s| s.unix_ms == last).count()
        );
    }
}
