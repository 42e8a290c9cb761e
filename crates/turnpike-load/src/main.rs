//! `turnpike-load`: measures any TURN server (Turnpike, coturn, ...) by relaying ChannelData
//! round trips through real allocations to UDP echo peers it runs itself.

mod churn;

use turnpike_load::stream_client::{self, StreamAllocation, StreamTransport};
use turnpike_load::{echo, run, turn_client};

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};

use turnpike_load::run::{CHANNEL, Load, Progress, Summary};

#[derive(Debug, Parser)]
#[command(name = "turnpike-load", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open allocations, bind channels to echo peers and relay round trips through them.
    Run(RunArgs),
    /// Bind many channels per allocation (to fill a relay's channel tables), hold, delete.
    Channels(churn::ChannelsArgs),
    /// Run UDP echo peers only (for a peer host of its own).
    Echo {
        /// Address to echo on.
        #[arg(long)]
        listen: SocketAddr,
        /// Echo threads sharing the address.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The TURN server.
    #[arg(long)]
    server: SocketAddr,
    /// REST API shared secret the server accepts (also TURNPIKE_LOAD_SECRET).
    #[arg(long, env = "TURNPIKE_LOAD_SECRET", hide_env_values = true)]
    secret: String,
    /// Allocations to open, each with one channel to the peer.
    #[arg(long, default_value_t = 1)]
    allocations: usize,
    /// Payload bytes per datagram (at least 20: sequence number and time stamp).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Datagrams per second over all allocations; 0 for as fast as the window allows.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Datagrams in flight per allocation.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Echo peer to bind channels to; without it an echo peer runs in this process.
    #[arg(long)]
    peer: Option<SocketAddr>,
    /// Local address for client sockets [default: the unspecified address of the server's family].
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Load threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Keep the allocations open this many seconds after the load (e.g. to read memory).
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// Do not refresh allocations, permissions and channels during the load (to watch them
    /// expire); by default they are refreshed as a client would, so runs may outlast them.
    #[arg(long)]
    no_refresh: bool,
    /// Also write the JSON summary to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// How clients reach the server: UDP, TCP, or TLS over TCP (one connection per
    /// allocation, one load thread per connection). The relayed leg is UDP in every case.
    #[arg(long, value_enum, default_value_t = Transport::Udp)]
    transport: Transport,
    /// PEM certificates to trust for --transport tls [default: trust any certificate].
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Name the server's certificate must carry [default: the server's IP address].
    #[arg(long)]
    tls_server_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Transport {
    Udp,
    Tcp,
    Tls,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Echo { listen, threads } => {
            let stop = run::stop_flag();
            let echoed = Arc::new(AtomicU64::new(0));
            let address = echo::spawn(
                listen,
                threads.max(1),
                Arc::clone(&stop),
                Arc::clone(&echoed),
            )?;
            eprintln!("echoing on {address}");
            loop {
                std::thread::sleep(Duration::from_secs(1));
                eprintln!("echoed {}", echoed.load(Ordering::Relaxed));
            }
        }
        Command::Run(args) => run_load(&args),
        Command::Channels(args) => churn::run(&args),
    }
}

fn run_load(args: &RunArgs) -> Result<()> {
    // One socket per allocation: thousands of them need more than the usual 1,024 descriptors.
    turnpike_io::raise_file_limit(args.allocations as u64 + 256)
        .context("cannot raise the open-file limit")?;
    ensure!(
        args.payload >= 20 && args.payload <= 1400,
        "--payload must be 20 to 1400 bytes"
    );
    ensure!(
        args.allocations >= 1 && args.window >= 1 && args.threads >= 1,
        "--allocations, --window and --threads must be at least 1"
    );
    let bind_ip = args.bind.unwrap_or(if args.server.is_ipv4() {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    });
    let stop = run::stop_flag();
    let peer = match args.peer {
        Some(peer) => peer,
        None => {
            // A local peer must be reachable from the relay: use the address the server is on
            // when the client binds to the unspecified address.
            let ip = if bind_ip.is_unspecified() {
                args.server.ip()
            } else {
                bind_ip
            };
            echo::spawn(
                SocketAddr::new(ip, 0),
                1,
                Arc::clone(&stop),
                Arc::new(AtomicU64::new(0)),
            )?
        }
    };
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("clock before 1970")?
        .as_secs()
        + 4 * 3600;

    if args.transport != Transport::Udp {
        return run_stream_load(args, peer, expiry, &stop);
    }
    let setup_started = Instant::now();
    let mut allocations = Vec::with_capacity(args.allocations);
    for index in 0..args.allocations {
        let (username, password) =
            turn_client::rest_credentials(&args.secret, &format!("load{index}"), expiry);
        let allocation = turn_client::allocate_and_bind(
            SocketAddr::new(bind_ip, 0),
            args.server,
            &username,
            &password,
            peer,
            CHANNEL,
        )
        .with_context(|| format!("allocation {index}"))?;
        allocations.push((u32::try_from(index).unwrap_or(u32::MAX), allocation));
    }
    eprintln!(
        "{} allocations (first relayed address {}) with a channel to {peer} ready in {:.1} s",
        allocations.len(),
        allocations
            .first()
            .map_or_else(String::new, |(_, allocation)| allocation
                .relayed
                .to_string()),
        setup_started.elapsed().as_secs_f64()
    );

    let load = Load {
        payload: args.payload,
        window: args.window,
        rate: args.rate,
        duration: Duration::from_secs(args.duration),
        refresh: !args.no_refresh,
    };
    let progress = Arc::new(Progress::default());
    let threads = args.threads.min(allocations.len());
    let mut shares: Vec<Vec<(u32, turn_client::Allocation)>> =
        (0..threads).map(|_| Vec::new()).collect();
    for (position, allocation) in allocations.into_iter().enumerate() {
        shares[position % threads].push(allocation);
    }
    let start = Instant::now();
    let rate_share = load.rate / threads as u64;
    let workers: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let progress = Arc::clone(&progress);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || run::drive(share, load, rate_share, start, &progress, &stop))
        })
        .collect();

    let mut last = (0, 0);
    while start.elapsed() < load.duration {
        std::thread::sleep(
            Duration::from_secs(1).min(load.duration.saturating_sub(start.elapsed())),
        );
        let sent = progress.sent.load(Ordering::Relaxed);
        let received = progress.received.load(Ordering::Relaxed);
        eprintln!(
            "t={:>4.1}s sent {:>10} received {:>10} round trips/s {:>9}",
            start.elapsed().as_secs_f64(),
            sent,
            received,
            received - last.1
        );
        last = (sent, received);
    }

    let mut totals = Totals::default();
    let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut finished = Vec::new();
    for worker in workers {
        let (measured, allocations) = worker
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        finished.extend(allocations);
        totals
            .per_allocation
            .extend(measured.per_allocation.iter().map(|(_, count)| *count));
        totals.sent += measured.sent;
        totals.received += measured.received;
        totals.malformed += measured.malformed;
        totals.send_errors += measured.send_errors;
        totals.refreshes += measured.refreshes;
        totals.refresh_failures += measured.refresh_failures;
        histogram.add(&measured.rtt_micros)?;
    }
    let received = totals.received;
    finish(args, &totals, &histogram)?;
    if args.hold > 0 {
        eprintln!("holding the allocations for {} s", args.hold);
        std::thread::sleep(Duration::from_secs(args.hold));
    }
    let released = finished
        .into_iter()
        .map(turn_client::Allocation::release)
        .filter(Result::is_ok)
        .count();
    eprintln!("released {released} allocations");
    stop.store(true, Ordering::Relaxed);
    if received == 0 {
        bail!("no round trip completed: is the peer {peer} allowed by the relay's peer policy?");
    }
    Ok(())
}

/// What every load thread counted, summed.
#[derive(Default)]
struct Totals {
    sent: u64,
    received: u64,
    malformed: u64,
    send_errors: u64,
    refreshes: u64,
    refresh_failures: u64,
    per_allocation: Vec<u64>,
}

/// Prints (and writes) the summary of a run.
fn finish(args: &RunArgs, totals: &Totals, histogram: &hdrhistogram::Histogram<u64>) -> Result<()> {
    let Totals {
        sent,
        received,
        malformed,
        send_errors,
        refreshes,
        refresh_failures,
        ref per_allocation,
    } = *totals;
    let seconds = Duration::from_secs(args.duration).as_secs_f64();
    let summary = Summary {
        server: args.server,
        allocations: args.allocations,
        payload_bytes: args.payload,
        duration_seconds: seconds,
        sent,
        received,
        loss_percent: if sent == 0 {
            0.0
        } else {
            100.0 * (sent.saturating_sub(received)) as f64 / sent as f64
        },
        round_trips_per_second: received as f64 / seconds,
        relayed_packets_per_second: 2.0 * received as f64 / seconds,
        mbit_per_second: received as f64 * args.payload as f64 * 8.0 / seconds / 1e6,
        rtt_micros_p50: histogram.value_at_quantile(0.5),
        rtt_micros_p90: histogram.value_at_quantile(0.9),
        rtt_micros_p99: histogram.value_at_quantile(0.99),
        rtt_micros_p999: histogram.value_at_quantile(0.999),
        rtt_micros_max: histogram.max(),
        malformed,
        send_errors,
        refreshes,
        refresh_failures,
        min_allocation_round_trips: per_allocation.iter().copied().min().unwrap_or(0),
        max_allocation_round_trips: per_allocation.iter().copied().max().unwrap_or(0),
    };
    println!("{}", summary.line());
    let json = serde_json::to_string(&summary)?;
    println!("{json}");
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The load over TCP or TLS: one connection and one blocking thread per allocation.
fn run_stream_load(
    args: &RunArgs,
    peer: SocketAddr,
    expiry: u64,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> Result<()> {
    let transport = match args.transport {
        Transport::Tls => StreamTransport::Tls {
            config: stream_client::tls_config(args.tls_ca.as_deref())?,
            server_name: match &args.tls_server_name {
                Some(name) => rustls::pki_types::ServerName::try_from(name.clone())
                    .context("--tls-server-name is not a DNS name or IP address")?,
                None => rustls::pki_types::ServerName::IpAddress(args.server.ip().into()),
            },
        },
        _ => StreamTransport::Tcp,
    };
    let setup_started = Instant::now();
    let mut allocations = Vec::with_capacity(args.allocations);
    for index in 0..args.allocations {
        let (username, password) =
            turn_client::rest_credentials(&args.secret, &format!("load{index}"), expiry);
        let allocation =
            StreamAllocation::open(args.server, &transport, &username, &password, peer, CHANNEL)
                .with_context(|| format!("allocation {index}"))?;
        allocations.push(allocation);
    }
    eprintln!(
        "{} {:?} allocations with a channel to {peer} ready in {:.1} s",
        allocations.len(),
        args.transport,
        setup_started.elapsed().as_secs_f64()
    );
    let progress = Arc::new(Progress::default());
    let start = Instant::now();
    let until = start + Duration::from_secs(args.duration);
    let workers: Vec<_> = allocations
        .into_iter()
        .map(|mut allocation| {
            let progress = Arc::clone(&progress);
            let stop = Arc::clone(stop);
            let (payload, window, refresh) = (args.payload, args.window, !args.no_refresh);
            std::thread::spawn(move || {
                stream_client::round_trips(
                    &mut allocation,
                    CHANNEL,
                    payload,
                    window,
                    until,
                    refresh,
                    &stop,
                    &progress,
                )
                .map(|measured| (measured, allocation))
            })
        })
        .collect();
    while Instant::now() < until {
        std::thread::sleep(
            Duration::from_secs(1).min(until.saturating_duration_since(Instant::now())),
        );
        eprintln!(
            "t={:>4.1}s sent {:>10} received {:>10}",
            start.elapsed().as_secs_f64(),
            progress.sent.load(Ordering::Relaxed),
            progress.received.load(Ordering::Relaxed),
        );
    }
    let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut totals = Totals::default();
    let mut finished = Vec::new();
    for worker in workers {
        let (measured, allocation) = worker
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        totals.sent += measured.sent;
        totals.received += measured.received;
        totals.malformed += measured.malformed;
        totals.refreshes += measured.refreshes;
        totals.refresh_failures += measured.refresh_failures;
        totals.per_allocation.push(measured.received);
        for rtt in measured.rtt_micros {
            let _ = histogram.record(rtt.min(60_000_000));
        }
        finished.push(allocation);
    }
    finish(args, &totals, &histogram)?;
    if args.hold > 0 {
        eprintln!("holding the allocations for {} s", args.hold);
        std::thread::sleep(Duration::from_secs(args.hold));
    }
    let released = finished
        .into_iter()
        .map(StreamAllocation::release)
        .filter(Result::is_ok)
        .count();
    eprintln!("released {released} allocations");
    stop.store(true, Ordering::Relaxed);
    if totals.received == 0 {
        bail!("no round trip completed: is the peer {peer} allowed by the relay's peer policy?");
    }
    Ok(())
}
