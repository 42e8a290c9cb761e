//! In-kernel cost of the relay program per direction and family pair, against the trivial
//! swap-and-send program, with `BPF_PROG_TEST_RUN` (nothing is sent anywhere).
//!
//! ```text
//! sudo TURNPIKE_XDP_ELF=$(bash scripts/build-xdp.sh) \
//!     cargo run --release -p turnpike-xdp-user --example xdp_cost \
//!     [-- RUNS] [--loop-only] [--adjust head|tail] [--payload BYTES]
//! ```
//!
//! `--adjust` chooses how the relay resizes frames (`AdjustMode`; head by default); the swap
//! baseline never resizes. `--payload` sets the UDP payload (100 bytes by default): resizing
//! at the tail moves the payload, so its cost grows with it.
//!
//! Two measurements, because `BPF_PROG_TEST_RUN` with `repeat = N` runs the program N times on
//! the *same* buffer without restoring it, so run 2 sees run 1's output:
//!
//! - **single runs**: RUNS separate calls with `repeat = 1`, each on a fresh copy of the frame,
//!   averaging the kernel's own timing of each run. Valid for every path. Each timing includes
//!   the kernel's clock reads around the run, so `turnpike_pass` (which does nothing) is timed
//!   the same way and its time is subtracted to give the net cost.
//! - **kernel loop**: one call with `repeat = RUNS`. Valid only where the output, fed back, takes
//!   the same path: the swap program (swapping twice restores the frame) and a same-family
//!   relay frame whose two bindings lead back to itself (client to peer, then peer to client,
//!   alternating; the time is the mean of the two directions). Such bindings relay from
//!   addresses that are not the relay's own, which only the benchmark-support call
//!   `install_channel_relayed_from` installs. Translated paths cannot loop like that.
//!
//! `--loop-only` skips the single runs. The kernel loop also reports whether the bindings it uses
//! sit in the program's caches (they should: the figure is for the cached path). Payloads are
//! 100 bytes, as in the netns throughput measurements in `docs/benchmarks.md`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use common::{CLIENT_MAC, IpFields, RELAY_MAC, channel_data, load_relay, payload, udp_frame};
use turnpike_proto::{AddressFamily, ChannelNumber};
use turnpike_relay::{ChannelRoute, FiveTuple, RelaySocket};
use turnpike_xdp_user::{
    AdjustMode, Outcome, OwnAddresses, Program, XdpAction, XdpConfig, XdpError, XdpRelay,
};

const CHANNEL: u16 = 0x4001;
/// Payload bytes unless `--payload` says otherwise.
const PAYLOAD: usize = 100;
/// Rounds of each measurement; the fastest counts.
const SINGLE_ROUNDS: u32 = 3;
const LOOP_ROUNDS: u32 = 5;

fn addr(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|_| panic!("bad address {text}"))
}

fn route(
    client: SocketAddr,
    listen: SocketAddr,
    relay_port: u16,
    peer: SocketAddr,
) -> ChannelRoute {
    ChannelRoute {
        client: FiveTuple::udp(client, listen),
        channel: ChannelNumber::new(CHANNEL).unwrap_or(ChannelNumber::MIN),
        relay: RelaySocket {
            port: relay_port,
            family: AddressFamily::of(peer.ip()),
        },
        peer,
    }
}

/// (client, relay listening address, relayed address, peer) for a family pair.
fn endpoints(client_v6: bool, peer_v6: bool) -> [SocketAddr; 4] {
    let (client, listen) = if client_v6 {
        (addr("[2001:db8:c::10]:40000"), addr("[2001:db8:1::1]:3478"))
    } else {
        (addr("198.51.100.10:40000"), addr("192.0.2.1:3478"))
    };
    let (relayed, peer) = if peer_v6 {
        (addr("[2001:db8:1::1]:50000"), addr("[2001:db8:2::20]:5000"))
    } else {
        (addr("192.0.2.1:50000"), addr("203.0.113.20:5000"))
    };
    [client, listen, relayed, peer]
}

fn fresh_relay(mode: AdjustMode) -> Option<XdpRelay> {
    let mut relay = load_relay()?;
    let setup = relay
        .configure(XdpConfig::new(3478, 49152, 65535).with_adjust_mode(mode))
        .and_then(|()| {
            relay.set_own_addresses(OwnAddresses::new(
                Some(Ipv4Addr::new(192, 0, 2, 1)),
                Some(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1)),
            ))
        })
        .and_then(|()| relay.load_program(Program::BenchSwap))
        .and_then(|()| relay.load_program(Program::Pass));
    if let Err(error) = setup {
        eprintln!("setup: {error}");
        return None;
    }
    Some(relay)
}

fn ns(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e9
}

/// The fastest of `rounds` rounds of a measurement, in nanoseconds; exits on error.
fn best(rounds: u32, measure: impl Fn() -> Result<Duration, XdpError>) -> f64 {
    (0..rounds)
        .map(|_| match measure() {
            Ok(duration) => ns(duration),
            Err(error) => {
                eprintln!("{error}");
                std::process::exit(1);
            }
        })
        .fold(f64::INFINITY, f64::min)
}

fn exit_on(result: Result<(), XdpError>) {
    if let Err(error) = result {
        eprintln!("{error}");
        std::process::exit(1);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let loop_only = args.iter().any(|arg| arg == "--loop-only");
    let value_of = |flag: &str| {
        args.iter()
            .position(|arg| arg == flag)
            .map(|at| args.get(at + 1).map(String::as_str))
    };
    let payload_len = match value_of("--payload") {
        None => PAYLOAD,
        Some(Some(text)) if text.parse::<usize>().is_ok_and(|len| len <= 1400) => {
            text.parse().unwrap_or(PAYLOAD)
        }
        Some(other) => {
            eprintln!("--payload takes a byte count up to 1400, not {other:?}");
            std::process::exit(2);
        }
    };
    // The run count is the one bare number (not the value of a flag).
    let runs: u32 = args
        .iter()
        .enumerate()
        .filter(|(at, _)| *at == 0 || !args[at - 1].starts_with("--"))
        .find_map(|(_, arg)| arg.parse().ok())
        .unwrap_or(1_000_000);
    let mode = match value_of("--adjust") {
        None | Some(Some("head")) => AdjustMode::Head,
        Some(Some("tail")) => AdjustMode::Tail,
        other => {
            eprintln!("--adjust takes head or tail, not {other:?}");
            std::process::exit(2);
        }
    };
    let Some(relay) = fresh_relay(mode) else {
        std::process::exit(2);
    };
    let fields = IpFields::default();
    let data = payload(payload_len);
    let v4 = endpoints(false, false);
    let v6 = endpoints(true, true);
    let swap_v4 = udp_frame(RELAY_MAC, CLIENT_MAC, v4[3], v4[2], fields, &data, true);
    let swap_v6 = udp_frame(RELAY_MAC, CLIENT_MAC, v6[3], v6[2], fields, &data, true);

    println!(
        "runs per measurement: {runs}; payload {payload_len} bytes; frames resized at the {}\n",
        mode.as_str()
    );
    if !loop_only {
        println!(
            "single runs (repeat = 1, fresh frame each time), ns per packet, fastest of \
             {SINGLE_ROUNDS} rounds:"
        );
        println!("  {:<34} {:>7} {:>7} {:>7}", "", "gross", "net", "x swap");
        let pass = best(SINGLE_ROUNDS, || {
            relay.time_single_runs(Program::Pass, &swap_v4, runs)
        });
        let swap4 = best(SINGLE_ROUNDS, || {
            relay.time_single_runs(Program::BenchSwap, &swap_v4, runs)
        });
        let swap6 = best(SINGLE_ROUNDS, || {
            relay.time_single_runs(Program::BenchSwap, &swap_v6, runs)
        });
        println!(
            "  {:<34} {pass:7.1}         (the harness alone)",
            "turnpike_pass"
        );
        println!(
            "  {:<34} {swap4:7.1} {:7.1}",
            "turnpike_bench_swap IPv4",
            swap4 - pass
        );
        println!(
            "  {:<34} {swap6:7.1} {:7.1}",
            "turnpike_bench_swap IPv6",
            swap6 - pass
        );

        for (client_v6, peer_v6) in [(false, false), (false, true), (true, false), (true, true)] {
            let [client, listen, relayed, peer] = endpoints(client_v6, peer_v6);
            exit_on(relay.install_channel(&route(client, listen, relayed.port(), peer)));
            let message = channel_data(CHANNEL, &data, 0);
            let from_client = udp_frame(
                RELAY_MAC, CLIENT_MAC, client, listen, fields, &message, true,
            );
            let from_peer = udp_frame(RELAY_MAC, CLIENT_MAC, peer, relayed, fields, &data, true);
            for (outcome, frame, in_v6) in [
                (
                    Outcome::client_to_peer(client_v6, peer_v6),
                    &from_client,
                    client_v6,
                ),
                (
                    Outcome::peer_to_client(peer_v6, client_v6),
                    &from_peer,
                    peer_v6,
                ),
            ] {
                match relay.test_run(Program::Relay, frame) {
                    Ok(output) if output.action == XdpAction::Tx => {}
                    other => {
                        eprintln!("{outcome}: not relayed: {other:?}");
                        std::process::exit(1);
                    }
                }
                let cost = best(SINGLE_ROUNDS, || {
                    relay.time_single_runs(Program::Relay, frame, runs)
                });
                // Against the swap program on a frame of the family this one arrives in.
                let swap = if in_v6 { swap6 } else { swap4 };
                println!(
                    "  {:<34} {cost:7.1} {:7.1} {:7.2}",
                    format!("turnpike_relay {outcome}"),
                    cost - pass,
                    cost / swap
                );
            }
        }
    }

    println!(
        "\nkernel loop (one call, repeat = {runs}), ns per packet, fastest of {LOOP_ROUNDS} rounds"
    );
    println!("(the kernel's own timing, in whole nanoseconds: it divides and rounds down):");
    println!("  {:<34} {:>7} {:>7}", "", "gross", "x swap");
    let pass = best(LOOP_ROUNDS, || {
        relay.time_repeated(Program::Pass, &swap_v4, runs)
    });
    let swap4 = best(LOOP_ROUNDS, || {
        relay.time_repeated(Program::BenchSwap, &swap_v4, runs)
    });
    let swap6 = best(LOOP_ROUNDS, || {
        relay.time_repeated(Program::BenchSwap, &swap_v6, runs)
    });
    println!(
        "  {:<34} {pass:7.1}         (the harness alone)",
        "turnpike_pass"
    );
    println!("  {:<34} {swap4:7.1}", "turnpike_bench_swap IPv4");
    println!("  {:<34} {swap6:7.1}", "turnpike_bench_swap IPv6");
    // Own addresses that are not the relay address below, or the second leg is a hairpin.
    exit_on(relay.set_own_addresses(OwnAddresses::new(
        Some(Ipv4Addr::new(192, 0, 2, 99)),
        Some(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x99)),
    )));
    for (family, client, relay_address) in [
        ("4to4", addr("198.51.100.10:3478"), addr("192.0.2.1:3478")),
        (
            "6to6",
            addr("[2001:db8:c::10]:3478"),
            addr("[2001:db8:1::1]:3478"),
        ),
    ] {
        // Client C:3478 → relay A:3478 on the channel goes to "peer" C:pp from A:rp; that
        // arrives on relayed port pp from "peer" A:rp, bound to "client" A:3478, and leaves as
        // the original frame from C:3478 to A:3478.
        let (rp, pp) = (50010, 50020);
        let cached_before = relay.cached_channels();
        exit_on(relay.install_channel_relayed_from(
            &route(client, relay_address, rp, SocketAddr::new(client.ip(), pp)),
            relay_address.ip(),
        ));
        exit_on(relay.install_channel_relayed_from(
            &route(
                relay_address,
                client,
                pp,
                SocketAddr::new(relay_address.ip(), rp),
            ),
            client.ip(),
        ));
        let cached_after = relay.cached_channels();
        let message = channel_data(CHANNEL, &data, 0);
        let frame = udp_frame(
            RELAY_MAC,
            CLIENT_MAC,
            client,
            relay_address,
            fields,
            &message,
            true,
        );
        let before = relay.counters().map(|c| c.relayed().packets).unwrap_or(0);
        let cost = best(LOOP_ROUNDS, || {
            relay.time_repeated(Program::Relay, &frame, runs)
        });
        let after = relay.counters().map(|c| c.relayed().packets).unwrap_or(0);
        let swap = if family == "6to6" { swap6 } else { swap4 };
        println!(
            "  {:<34} {cost:7.1} {:7.2}  ({} of {} runs relayed; bindings in the caches: {} of 2 \
             client to peer, {} of 2 peer to client)",
            format!("turnpike_relay {family} both ways"),
            cost / swap,
            after - before,
            u64::from(LOOP_ROUNDS) * u64::from(runs),
            cached_after.0 - cached_before.0,
            cached_after.1 - cached_before.1,
        );
    }
}
