//! The load itself: ChannelData through every allocation to the echo peer and back, with each
//! round trip timed.
//!
//! Every allocation keeps at most `window` datagrams in flight (and, with `--rate`, sends no
//! faster than its share of the rate). A closed loop like this measures what the relay can
//! carry instead of how fast the kernel can drop what it cannot.
//!
//! Unless told not to, every allocation is kept alive as a real client keeps it: a Refresh and a
//! ChannelBind (which refreshes the permission too) every half lifetime, at most every 120 s,
//! sent between the data and answered on the same socket, so a run may last longer than any
//! lifetime.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use turnpike_io::{HEADROOM, RecvBatch, SendBatch, SendOutcome};
use turnpike_proto::{Message, Method, TransactionId};

use crate::turn_client::Allocation;

/// Channel number every allocation binds to its peer.
pub const CHANNEL: u16 = 0x4000;
/// Sequence number, send time in nanoseconds since the start, allocation index.
const STAMP_LEN: usize = 8 + 8 + 4;
/// How long a window may go without an answer before its datagrams count as lost.
const STALL: Duration = Duration::from_millis(200);
/// How long a refresh request waits for its answer before it is sent again, and how often.
const REFRESH_RETRY: Duration = Duration::from_secs(1);
const REFRESH_TRIES: u32 = 5;

#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub payload: usize,
    pub window: usize,
    /// Datagrams per second over all allocations; 0 sends as fast as the window allows.
    pub rate: u64,
    pub duration: Duration,
    /// Keep allocations, permissions and channels alive (off to watch them expire).
    pub refresh: bool,
}

#[derive(Debug, Default)]
pub struct Progress {
    pub sent: AtomicU64,
    pub received: AtomicU64,
}

struct Flow {
    allocation: Allocation,
    index: u32,
    completed: u64,
    in_flight: usize,
    last_answer: Instant,
    sequence: u64,
    next_refresh: Instant,
    /// Refresh requests sent and not yet answered.
    refreshing: Vec<Pending>,
}

/// A refresh request waiting for its answer.
struct Pending {
    method: Method,
    id: TransactionId,
    sent: Instant,
    tries: u32,
}

impl Flow {
    /// Sends a refresh request of `method` (a new transaction) and waits for it in `refreshing`.
    fn send_refresh(&mut self, method: Method, tries: u32, now: Instant) -> Result<()> {
        let (id, request) = self.allocation.refresh_request(method)?;
        // A full socket buffer loses this try like the network would; the retry covers it.
        let _ = self
            .allocation
            .socket
            .send_to(&request, self.allocation.server);
        self.refreshing.push(Pending {
            method,
            id,
            sent: now,
            tries,
        });
        Ok(())
    }

    /// Refreshes when due and sends again what went unanswered; counts what gave up.
    fn keep_alive(&mut self, now: Instant, measured: &mut Measured) -> Result<()> {
        if now >= self.next_refresh && self.refreshing.is_empty() {
            self.next_refresh = now + self.allocation.refresh_interval();
            self.send_refresh(Method::Refresh, 1, now)?;
            self.send_refresh(Method::ChannelBind, 1, now)?;
        }
        let overdue: Vec<Pending> = {
            let (overdue, waiting) = std::mem::take(&mut self.refreshing)
                .into_iter()
                .partition(|pending| now.duration_since(pending.sent) >= REFRESH_RETRY);
            self.refreshing = waiting;
            overdue
        };
        for pending in overdue {
            if pending.tries >= REFRESH_TRIES {
                measured.refresh_failures += 1;
            } else {
                self.send_refresh(pending.method, pending.tries + 1, now)?;
            }
        }
        Ok(())
    }

    /// Handles a STUN message that arrived on the allocation's socket: the answer to a
    /// refresh, or something unexpected (counted as malformed).
    fn refresh_answered(&mut self, datagram: &[u8], now: Instant, measured: &mut Measured) {
        let Some(at) = Message::parse(datagram).ok().and_then(|message| {
            let id = message.transaction_id();
            self.refreshing.iter().position(|pending| pending.id == id)
        }) else {
            measured.malformed += 1;
            return;
        };
        let pending = self.refreshing.swap_remove(at);
        match self.allocation.refresh_answered(pending.method, datagram) {
            Ok(true) => measured.refreshes += 1,
            // A new nonce: the same request again, signed with it.
            Ok(false) if pending.tries < REFRESH_TRIES => {
                if self
                    .send_refresh(pending.method, pending.tries + 1, now)
                    .is_err()
                {
                    measured.refresh_failures += 1;
                }
            }
            Ok(false) | Err(_) => measured.refresh_failures += 1,
        }
    }
}

/// What one worker measured.
#[derive(Debug)]
pub struct Measured {
    pub sent: u64,
    pub received: u64,
    pub malformed: u64,
    pub rtt_micros: Histogram<u64>,
    pub send_errors: u64,
    /// Round trips completed, per allocation index.
    pub per_allocation: Vec<(u32, u64)>,
    /// Refresh and ChannelBind requests answered with success while the load ran.
    pub refreshes: u64,
    /// Those the server refused, or that went unanswered after every try.
    pub refresh_failures: u64,
}

/// Runs the load on `allocations` until the duration has passed, plus a grace period for the
/// last answers.
pub fn drive(
    allocations: Vec<(u32, Allocation)>,
    load: Load,
    rate_share: u64,
    start: Instant,
    progress: &Progress,
    stop: &AtomicBool,
) -> Result<(Measured, Vec<Allocation>)> {
    let now = Instant::now();
    let mut flows: Vec<Flow> = allocations
        .into_iter()
        .map(|(index, allocation)| Flow {
            next_refresh: now + allocation.refresh_interval(),
            allocation,
            index,
            completed: 0,
            in_flight: 0,
            last_answer: now,
            sequence: 0,
            refreshing: Vec::new(),
        })
        .collect();
    let mut measured = Measured {
        sent: 0,
        received: 0,
        malformed: 0,
        rtt_micros: Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")?,
        send_errors: 0,
        per_allocation: Vec::new(),
        refreshes: 0,
        refresh_failures: 0,
    };
    let message_len = 4 + load.payload;
    // Every datagram of one round lives here until the flush; never reallocated mid-round.
    let mut out = vec![0_u8; flows.len() * load.window * message_len];
    let mut sends = SendBatch::default();
    let mut outcome = SendOutcome::default();
    let mut batch = RecvBatch::new();
    let deadline = start + load.duration;
    let grace = deadline + Duration::from_millis(500);
    let mut tokens = 0.0_f64;
    let mut last_refill = Instant::now();
    // Where each round starts sending: it moves on every round, so under --rate, where the
    // tokens of a round run out before every flow had its turn, no flow waits for ever.
    let mut first_flow = 0;
    loop {
        let now = Instant::now();
        if now >= grace || stop.load(Ordering::Relaxed) {
            break;
        }
        let sending = now < deadline;
        if load.refresh && sending {
            for flow in &mut flows {
                flow.keep_alive(now, &mut measured)?;
            }
        }
        if rate_share > 0 {
            tokens = (tokens + now.duration_since(last_refill).as_secs_f64() * rate_share as f64)
                .min(rate_share as f64 / 100.0 + 1.0);
            last_refill = now;
        }
        let mut used = 0;
        if sending {
            let count = flows.len();
            first_flow = (first_flow + 1) % count.max(1);
            for turn in 0..count {
                let flow = &mut flows[(first_flow + turn) % count];
                if flow.in_flight > 0 && now.duration_since(flow.last_answer) > STALL {
                    // Whatever is still out after this long is lost; open the window again.
                    flow.in_flight = 0;
                    flow.last_answer = now;
                }
                while flow.in_flight < load.window {
                    if rate_share > 0 {
                        if tokens < 1.0 {
                            break;
                        }
                        tokens -= 1.0;
                    }
                    let message = &mut out[used..used + message_len];
                    message[..2].copy_from_slice(&CHANNEL.to_be_bytes());
                    message[2..4].copy_from_slice(
                        &u16::try_from(load.payload)
                            .unwrap_or(u16::MAX)
                            .to_be_bytes(),
                    );
                    let sent_at =
                        u64::try_from(now.duration_since(start).as_nanos()).unwrap_or(u64::MAX);
                    message[4..12].copy_from_slice(&flow.sequence.to_be_bytes());
                    message[12..20].copy_from_slice(&sent_at.to_be_bytes());
                    message[20..24].copy_from_slice(&flow.index.to_be_bytes());
                    // SAFETY: `out` is allocated once for the run and each round writes a new
                    // part of it only after the previous round's flush; the allocations' sockets
                    // outlive the loop.
                    unsafe { sends.push(&flow.allocation.socket, server_of(flow), message) };
                    used += message_len;
                    flow.sequence += 1;
                    flow.in_flight += 1;
                    measured.sent += 1;
                }
            }
            sends.flush(&mut outcome);
            progress.sent.store(measured.sent, Ordering::Relaxed);
        }
        let mut any = false;
        for flow in &mut flows {
            let fd = flow.allocation.socket.as_raw_fd();
            batch.clear();
            let received = batch.recv(fd).unwrap_or(0..0);
            any |= !received.is_empty();
            let arrived = Instant::now();
            for index in received {
                let Some(received) = batch.get(index) else {
                    break;
                };
                let datagram = &received.slot[HEADROOM..HEADROOM + received.len];
                // STUN (first two bits zero) rather than ChannelData: a refresh's answer.
                if datagram.first().is_some_and(|first| first & 0xC0 == 0) {
                    flow.refresh_answered(datagram, arrived, &mut measured);
                    continue;
                }
                let Some(sent_at) = stamp(datagram) else {
                    measured.malformed += 1;
                    continue;
                };
                let rtt = arrived
                    .duration_since(start)
                    .saturating_sub(Duration::from_nanos(sent_at));
                let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
                let _ = measured.rtt_micros.record(micros.min(60_000_000));
                measured.received += 1;
                flow.completed += 1;
                flow.in_flight = flow.in_flight.saturating_sub(1);
                flow.last_answer = arrived;
            }
        }
        progress
            .received
            .store(measured.received, Ordering::Relaxed);
        if !any && !sending {
            std::thread::sleep(Duration::from_millis(1));
        }
        if !any && rate_share > 0 && tokens < 1.0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    measured.send_errors = outcome.buffer_full + outcome.unreachable + outcome.other;
    measured.per_allocation = flows
        .iter()
        .map(|flow| (flow.index, flow.completed))
        .collect();
    Ok((
        measured,
        flows.into_iter().map(|flow| flow.allocation).collect(),
    ))
}

fn server_of(flow: &Flow) -> SocketAddr {
    flow.allocation.server
}

/// The send time stamped into an echoed ChannelData datagram.
fn stamp(datagram: &[u8]) -> Option<u64> {
    let channel = u16::from_be_bytes([*datagram.first()?, *datagram.get(1)?]);
    if channel != CHANNEL || datagram.len() < 4 + STAMP_LEN {
        return None;
    }
    Some(u64::from_be_bytes(datagram.get(12..20)?.try_into().ok()?))
}

/// The result of a run, as printed in JSON.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub server: SocketAddr,
    pub allocations: usize,
    pub payload_bytes: usize,
    pub duration_seconds: f64,
    pub sent: u64,
    pub received: u64,
    pub loss_percent: f64,
    pub round_trips_per_second: f64,
    /// Two relayed datagrams per round trip: client to peer, peer to client.
    pub relayed_packets_per_second: f64,
    /// Payload bits of the answered round trips, one direction.
    pub mbit_per_second: f64,
    pub rtt_micros_p50: u64,
    pub rtt_micros_p90: u64,
    pub rtt_micros_p99: u64,
    pub rtt_micros_p999: u64,
    pub rtt_micros_max: u64,
    pub malformed: u64,
    pub send_errors: u64,
    /// Refresh and ChannelBind requests that kept allocations alive during the load, and
    /// those refused or unanswered.
    pub refreshes: u64,
    pub refresh_failures: u64,
    /// Round trips of the allocation that completed the fewest, and the most: how evenly the
    /// relay served them.
    pub min_allocation_round_trips: u64,
    pub max_allocation_round_trips: u64,
}

impl Summary {
    pub fn line(&self) -> String {
        format!(
            "{} allocations, {} B payload, {:.1} s: {:.0} round trips/s ({:.0} relayed packets/s, {:.1} Mbit/s), loss {:.2} %, rtt p50 {} us p99 {} us max {} us",
            self.allocations,
            self.payload_bytes,
            self.duration_seconds,
            self.round_trips_per_second,
            self.relayed_packets_per_second,
            self.mbit_per_second,
            self.loss_percent,
            self.rtt_micros_p50,
            self.rtt_micros_p99,
            self.rtt_micros_max,
        )
    }
}

pub fn stop_flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}
