//! Relay core costs with the server loaded to its default allocation quota: 16,384 allocations
//! with 4 channels each (65,536 channels), made through real signed requests.
//!
//! - the forwarding decision for ChannelData from a client, and for a datagram from a bound
//!   peer, on one hot flow and rotating through all 65,536 channels;
//! - handling an authenticated Allocate on a fresh 5-tuple (the request is built and the
//!   allocation deleted again outside the measured time);
//! - refreshing one channel of an allocation that holds 4,096 (the channel range's whole
//!   width), the case where the cost of a ChannelBind must not grow with the channels bound;
//! - `poll_timeout`.
//!
//! Run with `cargo bench -p turnpike-relay --bench core`; results are in docs/benchmarks.md.

#![expect(
    clippy::expect_used,
    reason = "benchmark fixtures: a failure to build one is a bug in the benchmark"
)]

mod support;

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use turnpike_proto::{Attribute, Method};
use turnpike_relay::{Forward, Server};

use support::{ALLOCATIONS, CHANNELS_PER_ALLOCATION, Flow, Signer};

/// 5-tuples kept ready with a nonce for the Allocate benchmark, used in turn.
const SPARE_CLIENTS: usize = 1024;

struct Loaded {
    server: Server<rand_chacha::ChaCha8Rng>,
    now: Instant,
    flows: Vec<Flow>,
}

fn loaded() -> Loaded {
    let now = Instant::now();
    let mut server = support::new_server(now);
    let flows = support::load(&mut server, now);
    Loaded { server, now, flows }
}

fn data_path(c: &mut Criterion) {
    let Loaded {
        mut server,
        now,
        flows,
    } = loaded();

    let flow = flows[ALLOCATIONS / 2];
    let datagram = support::channel_data(support::channel_number(0));
    assert!(matches!(
        server.handle_client_datagram(now, flow.client, &datagram),
        Some(Forward::ToPeer { .. })
    ));
    c.bench_function("channel_data_forward", |b| {
        b.iter(|| server.handle_client_datagram(now, black_box(flow.client), black_box(&datagram)));
    });

    // Every flow sends the same few datagrams, so only the server's lookups miss the cache.
    let datagrams: [Vec<u8>; CHANNELS_PER_ALLOCATION] =
        std::array::from_fn(|channel| support::channel_data(support::channel_number(channel)));
    let every_channel: Vec<_> = flows
        .iter()
        .flat_map(|flow| (0..CHANNELS_PER_ALLOCATION).map(|channel| (flow.client, channel)))
        .collect();
    let mut next = 0;
    c.bench_function("channel_data_forward_all_channels", |b| {
        b.iter(|| {
            let (client, channel) = every_channel[next];
            next = (next + 1) % every_channel.len();
            server.handle_client_datagram(now, black_box(client), black_box(&datagrams[channel]))
        });
    });

    let payload = vec![0xAB; support::PAYLOAD_LEN];
    let peer = flow.peers[0];
    assert!(matches!(
        server.handle_peer_datagram(now, flow.relay, peer, &payload),
        Some(Forward::ToClient { .. })
    ));
    c.bench_function("peer_data_forward", |b| {
        b.iter(|| {
            server.handle_peer_datagram(
                now,
                black_box(flow.relay),
                black_box(peer),
                black_box(&payload),
            )
        });
    });

    let every_peer: Vec<_> = flows
        .iter()
        .flat_map(|flow| flow.peers.iter().map(|peer| (flow.relay, *peer)))
        .collect();
    let mut next = 0;
    c.bench_function("peer_data_forward_all_channels", |b| {
        b.iter(|| {
            let (relay, peer) = every_peer[next];
            next = (next + 1) % every_peer.len();
            server.handle_peer_datagram(now, black_box(relay), black_box(peer), &payload)
        });
    });

    c.bench_function("poll_timeout", |b| {
        b.iter(|| black_box(&server).poll_timeout());
    });
    assert!(
        server.next_command().is_none(),
        "the data path queues no commands"
    );
}

fn allocate(c: &mut Criterion) {
    let Loaded {
        mut server, now, ..
    } = loaded();
    let mut signer = Signer::default();
    let spare: Vec<_> = (ALLOCATIONS..ALLOCATIONS + SPARE_CLIENTS)
        .map(|index| {
            let client = support::client(index);
            let nonce = support::challenge(&mut server, now, &mut signer, client);
            (client, nonce)
        })
        .collect();
    let allocated_before = allocate_successes(&server);
    let mut iterations_run = 0;
    let mut next = 0;
    c.bench_function("allocate", |b| {
        b.iter_custom(|iterations| {
            let mut measured = Duration::ZERO;
            for _ in 0..iterations {
                let (client, nonce) = &spare[next];
                next = (next + 1) % spare.len();
                let allocate = signer.request(
                    Method::Allocate,
                    Some(nonce),
                    &[Attribute::RequestedTransport(17)],
                );
                let delete =
                    signer.request(Method::Refresh, Some(nonce), &[Attribute::Lifetime(0)]);

                let start = Instant::now();
                server.handle_client_datagram(now, *client, black_box(&allocate));
                while let Some(command) = server.next_command() {
                    black_box(command);
                }
                measured += start.elapsed();

                server.handle_client_datagram(now, *client, &delete);
                while server.next_command().is_some() {}
            }
            iterations_run += iterations;
            measured
        });
    });
    assert_eq!(
        allocate_successes(&server) - allocated_before,
        iterations_run,
        "every measured Allocate succeeded"
    );
    assert_eq!(
        server.allocation_count(),
        ALLOCATIONS,
        "every benchmark allocation was deleted again"
    );
}

/// Channels of the one allocation of [`channel_bind`]: every number from 0x4000 to 0x4FFF.
const BUSY_CHANNELS: u16 = 4_096;

fn channel_bind(c: &mut Criterion) {
    let now = Instant::now();
    let mut config = support::config();
    config.quotas.channels_per_allocation = usize::from(BUSY_CHANNELS);
    config.quotas.permissions_per_allocation = 256;
    let mut server = support::server_with(config, now);
    let mut signer = Signer::default();
    let client = support::client(0);
    let nonce = support::challenge(&mut server, now, &mut signer, client);
    support::allocate(&mut server, now, &mut signer, client, &nonce);
    // 4,096 peers: 16 ports on each of 256 addresses, so each address has 16 channels.
    let peer = |index: u16| {
        let [high, low] = index.to_be_bytes();
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, low)),
            5000 + u16::from(high),
        )
    };
    let bind = |signer: &mut Signer, index: u16| {
        signer.request(
            Method::ChannelBind,
            Some(&nonce),
            &[
                Attribute::ChannelNumber(0x4000 + index),
                Attribute::XorPeerAddress(peer(index)),
            ],
        )
    };
    for index in 0..BUSY_CHANNELS {
        server.handle_client_datagram(now, client, &bind(&mut signer, index));
        while server.next_command().is_some() {}
    }
    assert_eq!(server.active_channel_count(), usize::from(BUSY_CHANNELS));
    let bound_before = channel_bind_successes(&server);
    let mut iterations_run = 0;
    let mut next = 0;
    c.bench_function("channel_bind_refresh_4096_channels", |b| {
        b.iter_custom(|iterations| {
            let mut measured = Duration::ZERO;
            for _ in 0..iterations {
                let request = bind(&mut signer, next);
                next = (next + 1) % BUSY_CHANNELS;
                let start = Instant::now();
                server.handle_client_datagram(now, client, black_box(&request));
                while let Some(command) = server.next_command() {
                    black_box(command);
                }
                measured += start.elapsed();
            }
            iterations_run += iterations;
            measured
        });
    });
    assert_eq!(
        channel_bind_successes(&server) - bound_before,
        iterations_run,
        "every measured ChannelBind succeeded"
    );
}

fn channel_bind_successes(server: &Server<rand_chacha::ChaCha8Rng>) -> u64 {
    server
        .stats()
        .responses
        .get(&("channel_bind", 0))
        .copied()
        .unwrap_or(0)
}

fn allocate_successes(server: &Server<rand_chacha::ChaCha8Rng>) -> u64 {
    server
        .stats()
        .responses
        .get(&("allocate", 0))
        .copied()
        .unwrap_or(0)
}

criterion_group!(benches, data_path, allocate, channel_bind);
criterion_main!(benches);
