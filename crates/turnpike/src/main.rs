//! `turnpike`: the TURN relay daemon.
//!
//! Reads its configuration, binds every socket (failing with a message that names the setting
//! at fault), starts one relay thread per shard and the admin endpoint, and on SIGTERM or
//! SIGINT stops taking new allocations, keeps relaying for the drain period, then exits 0.

mod admin;
mod config;
mod logging;
mod metrics;
mod shard;
mod status;
mod xdp;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::config::{DEV_SECRET, Options, Settings};
use crate::metrics::Shared;
use crate::shard::{ShardPlan, ShardSockets};

fn main() -> Result<()> {
    let settings = Settings::from_options(Options::load()?)?;
    let log = logging::init(&settings.log_level, settings.log_format)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the admin runtime")?;
    runtime.block_on(run(settings, log))
}

/// Splits the relayed ports into one contiguous block per thread.
fn port_blocks(
    range: &std::ops::RangeInclusive<u16>,
    threads: usize,
) -> Vec<std::ops::RangeInclusive<u16>> {
    let low = usize::from(*range.start());
    let size = range.clone().count();
    (0..threads)
        .map(|index| {
            let start = low + size * index / threads;
            let end = low + size * (index + 1) / threads - 1;
            u16::try_from(start).unwrap_or(u16::MAX)..=u16::try_from(end).unwrap_or(u16::MAX)
        })
        .collect()
}

async fn run(settings: Settings, log: logging::LogControl) -> Result<()> {
    let families = usize::from(settings.core.relay_ipv4.is_some())
        + usize::from(settings.core.relay_ipv6.is_some());
    let needed = (settings.relay_ports.clone().count() * families
        + settings.listen.len() * settings.threads
        + 256) as u64;
    match turnpike_io::raise_file_limit(needed) {
        Ok(limit) if limit < needed => {
            bail!(
                "relay-ports: {needed} file descriptors needed, the hard limit allows {limit}; raise it or shrink the range"
            )
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read or raise the open-file limit"),
    }

    let started = (std::time::Instant::now(), SystemTime::now());
    let admin = admin::bind(settings.admin_listen).await?;
    if !settings.admin_listen.ip().is_loopback() && settings.admin_token.is_none() {
        tracing::warn!(
            admin = %settings.admin_listen,
            "the admin endpoint is reachable beyond loopback without a token; set --admin-token-file"
        );
    }
    let kernel = match &settings.xdp {
        Some(xdp_settings) => Some(xdp::start(&settings, xdp_settings)?),
        None => None,
    };
    let shared = Arc::new(Shared::new(settings.threads));
    let budget = turnpike_relay::AllocationBudget::new(settings.core.quotas.allocations_total);
    let mut bound = Vec::new();
    for (index, relay_ports) in port_blocks(&settings.relay_ports, settings.threads)
        .into_iter()
        .enumerate()
    {
        let mut core = settings.core.clone();
        // The total is enforced across threads through the shared budget.
        core.shared_budget = Some(Arc::clone(&budget));
        let plan = ShardPlan {
            kernel: kernel.clone(),
            index,
            listen: settings.listen.clone(),
            relay_ports,
            socket_buffer: settings.socket_buffer,
            core,
        };
        bound.push(ShardSockets::bind(plan)?);
    }
    let smallest = bound
        .iter()
        .map(|sockets| sockets.smallest_buffer)
        .min()
        .unwrap_or(0);
    if smallest < settings.socket_buffer {
        tracing::warn!(
            requested = settings.socket_buffer,
            granted = smallest,
            "the kernel capped socket buffers; raise net.core.rmem_max and net.core.wmem_max"
        );
    }
    let excluded: usize = bound.iter().map(ShardSockets::excluded_ports).sum();
    if excluded > 0 {
        tracing::warn!(
            excluded,
            "relayed ports already in use elsewhere are left out"
        );
    }

    let mut threads = Vec::new();
    for (index, sockets) in bound.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("relay-{index}"))
            .spawn(move || shard::run(sockets, shared))
            .context("cannot start a relay thread")?;
        threads.push(thread);
    }
    tracing::info!(
        listen = ?settings.listen,
        relay_ipv4 = ?settings.core.relay_ipv4,
        relay_ipv6 = ?settings.core.relay_ipv6,
        relay_ports = ?settings.relay_ports,
        threads = settings.threads,
        admin = %settings.admin_listen,
        "turnpike relaying"
    );
    if settings.dev {
        print_dev_instructions(&settings);
    }

    let info = metrics::RelayInfo {
        version: env!("CARGO_PKG_VERSION"),
        started: started.0,
        started_unix: started
            .1
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64()),
        allocations_limit: settings.core.quotas.allocations_total,
        kernel_path: kernel.is_some(),
    };
    let admin_task = tokio::spawn(admin::serve(
        admin,
        admin::Admin {
            shared: Arc::clone(&shared),
            log,
            kernel: kernel.clone(),
            info,
            token: settings.admin_token.clone(),
        },
    ));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
        result = admin_task => {
            shared.stopping.store(true, Ordering::Relaxed);
            return result.context("admin endpoint panicked")?;
        }
    }
    shared.draining.store(true, Ordering::Relaxed);
    let drain = tokio::time::sleep(settings.drain);
    tokio::pin!(drain);
    loop {
        tokio::select! {
            () = &mut drain => break,
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                // The budget's count is exact; the published metrics may be a second old.
                if budget.used() == 0 {
                    tracing::info!("no allocations left");
                    break;
                }
            }
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    shared.stopping.store(true, Ordering::Relaxed);
    for thread in threads {
        match thread.join() {
            Ok(result) => result?,
            Err(_) => bail!("a relay thread panicked"),
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// What a developer needs to talk to the relay started with `--dev`.
fn print_dev_instructions(settings: &Settings) {
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |now| now.as_secs())
        + 24 * 3600;
    let username = format!("{expiry}:dev");
    let password = rest_password(DEV_SECRET.as_bytes(), &username);
    let server = settings.listen[0];
    println!(
        "\nTurnpike development relay on {server} (realm {realm}).\n\
         Ready-made credentials, valid for 24 hours:\n  username: {username}\n  password: {password}\n\
         Relay some traffic through it with the load generator:\n  \
         cargo run --release -p turnpike-load -- run --server {server} --secret {DEV_SECRET} --allocations 4 --duration 5\n\
         Metrics: curl http://{admin}/metrics\n\
         Status page: http://{admin}/\n",
        realm = settings.core.credentials.realm(),
        admin = settings.admin_listen,
    );
}

/// The TURN REST API password: base64(HMAC-SHA1(secret, username)).
fn rest_password(secret: &[u8], username: &str) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let mut mac = <hmac::Hmac<sha1::Sha1> as hmac::Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}
