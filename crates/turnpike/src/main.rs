//! `turnpike`: the TURN relay daemon.
//!
//! Reads its configuration, binds every socket (failing with a message that names the setting
//! at fault), starts one relay thread per shard and the admin endpoint, and on SIGTERM or
//! SIGINT stops taking new allocations, keeps relaying for the drain period, then exits 0. SIGHUP
//! reads the TLS certificate and key again.

// The option docs are clap's help texts, which show defaults such as `[default: [::]:3478]`:
// brackets for people, not intra-doc links.
#![allow(
    rustdoc::broken_intra_doc_links,
    reason = "clap help texts in doc comments use brackets for defaults"
)]

mod admin;
mod config;
mod logging;
mod metrics;
mod shard;
mod status;
mod steer;
mod stream;
mod telemetry;
mod tls;
mod xdp;

use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::config::{DEV_SECRET, Options, Settings};
use crate::metrics::Shared;
use crate::shard::{ShardPlan, ShardSockets};

fn main() -> Result<()> {
    let settings = Settings::from_options(Options::load()?)?;
    // Before logging, so the tracing layer finds the client; parsing the DSN is all it does.
    let _telemetry = match &settings.sentry_dsn {
        Some(dsn) => Some(telemetry::init(dsn, &settings.relay_id)?),
        None => None,
    };
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

async fn run(mut settings: Settings, log: logging::LogControl) -> Result<()> {
    // Sockets per relayed port: one per offered family, or one for both (`dual_stack_relays`).
    let families = if shard::dual_stack_relays(&settings.relay_bind, &settings.core) {
        1
    } else {
        usize::from(settings.core.relay_ipv4.is_some())
            + usize::from(settings.core.relay_ipv6.is_some())
    };
    let stream_listeners = settings.streams.listen_tcp.len() + settings.streams.listen_tls.len();
    let needed = (settings.relay_ports.clone().count() * families
        + (settings.listen.len() + stream_listeners) * settings.threads
        + 256) as u64;
    // Connections are asked for too, but only the sockets bound at start are a hard need: a
    // connection that finds no descriptor is refused and counted, and the relay goes on.
    let connections = if stream_listeners > 0 {
        settings.streams.limits.max_connections as u64
    } else {
        0
    };
    match turnpike_io::raise_file_limit(needed + connections) {
        Ok(limit) if limit < needed => {
            bail!(
                "relay-ports: {needed} file descriptors needed, the hard limit allows {limit}; raise it or shrink the range"
            )
        }
        Ok(limit) if limit < needed + connections => {
            let left = usize::try_from(limit - needed).unwrap_or(usize::MAX).max(1);
            if settings.streams.max_connections_given {
                tracing::warn!(
                    max_connections = connections,
                    descriptors_left = left,
                    "max-connections: the open-file limit leaves room for fewer connections; \
                     accepts beyond it fail and are counted"
                );
            } else {
                // The default is a ceiling, not a promise: take what the limit leaves.
                let limits = &mut settings.streams.limits;
                limits.max_connections = left;
                limits.max_connections_per_source = limits.max_connections_per_source.min(left);
                tracing::info!(
                    max_connections = left,
                    "max-connections: lowered to what the open-file limit leaves (raise the \
                     limit or set --max-connections to change it)"
                );
            }
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
    let tls = match &settings.streams.tls_files {
        Some((cert, key)) => Some(Arc::new(tls::TlsCertificates::load(cert, key)?)),
        None => None,
    };
    let streams = Arc::new(stream::StreamShared {
        limits: settings.streams.limits,
        channel_range: settings.core.channel_range(),
        limiter: Arc::new(stream::ConnectionLimiter::new(&settings.streams.limits)),
        tls: tls.clone(),
    });
    let stream_listen: Vec<(std::net::SocketAddr, bool)> = settings
        .streams
        .listen_tcp
        .iter()
        .map(|address| (*address, false))
        .chain(
            settings
                .streams
                .listen_tls
                .iter()
                .map(|address| (*address, true)),
        )
        .collect();
    let shared = Arc::new(Shared::new(settings.threads));
    let budget = turnpike_relay::AllocationBudget::new(settings.core.quotas.allocations_total);
    let user_budget = turnpike_relay::UserBudget::new(settings.core.quotas.allocations_per_user);
    let mut bound = Vec::new();
    for (index, relay_ports) in port_blocks(&settings.relay_ports, settings.threads)
        .into_iter()
        .enumerate()
    {
        let mut core = settings.core.clone();
        // The total is enforced across threads through the shared budget.
        core.shared_budget = Some(Arc::clone(&budget));
        // So is the per-user quota.
        core.shared_user_budget = Some(Arc::clone(&user_budget));
        let plan = ShardPlan {
            kernel: kernel.clone(),
            index,
            listen: settings.listen.clone(),
            relay_bind: settings.relay_bind.clone(),
            relay_ports,
            socket_buffer: settings.socket_buffer,
            core,
            stream_listen: stream_listen.clone(),
            streams: Arc::clone(&streams),
        };
        bound.push(ShardSockets::bind(plan)?);
    }
    // One source address, one thread: per-source limits then hold for the whole relay.
    // TCP and TLS too: a connection's allocation, and a reservation it made, live in the thread
    // that accepted it, so a client's connections should meet the same thread.
    if let Some(first) = bound.first() {
        let udp = first
            .listeners()
            .map(|(address, socket)| (*address, socket.as_raw_fd()));
        let streams = first
            .stream_listeners()
            .map(|listener| listener.address_and_socket())
            .map(|(address, socket)| (address, socket.as_raw_fd()));
        for (address, socket) in udp.chain(streams) {
            let family = turnpike_proto::AddressFamily::of(address.ip());
            if let Err(error) = steer::by_source(socket, family, settings.threads) {
                tracing::warn!(
                    %address,
                    %error,
                    "cannot steer clients to threads by source address; per-source limits apply per thread"
                );
            }
        }
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
    let mut controls = Vec::new();
    for (index, sockets) in bound.into_iter().enumerate() {
        let (thread, control) = shard::spawn(index, sockets, Arc::clone(&shared))?;
        threads.push(thread);
        controls.push(control);
    }
    let tell_all = |control: shard::Control| {
        for shard in &controls {
            shard.send(control.clone());
        }
    };
    let reloader = Reloader {
        shared: Arc::clone(&shared),
        budget: Arc::clone(&budget),
        user_budget: Arc::clone(&user_budget),
        tls: tls.clone(),
        log: log.clone(),
    };
    tracing::info!(
        listen = ?settings.listen,
        listen_tcp = ?settings.streams.listen_tcp,
        listen_tls = ?settings.streams.listen_tls,
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
    // POST /reload asks the main task, which owns the settings, and waits for the outcome.
    let (reload_sender, mut reload_requests) = tokio::sync::mpsc::channel(4);
    let admin_task = tokio::spawn(admin::serve(
        admin,
        admin::Admin {
            shared: Arc::clone(&shared),
            log,
            kernel: kernel.clone(),
            tls: tls.clone(),
            info,
            token: settings.admin_token.clone(),
            reload: reload_sender,
        },
    ));
    tokio::spawn(return_freed_memory());
    if let (Some(kernel), Some(xdp_settings)) = (&kernel, &settings.xdp) {
        tokio::spawn(refresh_own_addresses(
            Arc::clone(kernel),
            xdp_settings.interface.clone(),
            xdp::preferred_own_addresses(&settings),
        ));
        tokio::spawn(xdp::settle_adjust_mode(Arc::clone(kernel)));
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    // SIGHUP, which operators and log rotation send out of habit, must not end the relay.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot watch SIGHUP")?;
    tokio::pin!(admin_task);
    loop {
        tokio::select! {
            _ = terminate.recv() => {
                tracing::info!("SIGTERM: draining");
                break;
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("SIGINT: draining");
                break;
            }
            _ = hangup.recv() => {
                let outcome = reloader.reload(&mut settings, &tell_all);
                log_reload("SIGHUP", &outcome);
            }
            Some(reply) = reload_requests.recv() => {
                let outcome = reloader.reload(&mut settings, &tell_all);
                log_reload("POST /reload", &outcome);
                let _ = reply.send(outcome.map_err(|error| format!("{error:#}")));
            }
            result = &mut admin_task => {
                tell_all(shard::Control::Stop);
                return result.context("admin endpoint panicked")?;
            }
        }
    }
    // `/readyz` fails from now on; the threads refuse new allocations as soon as woken.
    shared.draining.store(true, Ordering::Relaxed);
    tell_all(shard::Control::Drain);
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
    tell_all(shard::Control::Stop);
    for thread in threads {
        match thread.join() {
            Ok(result) => result?,
            Err(_) => bail!("a relay thread panicked"),
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Reads the XDP interface's addresses every 30 s and gives the kernel program the new ones
/// when they changed (DHCP, SLAAC, an operator adding one): datagrams to peers leave from
/// them. Bindings relayed from an address that is gone leave the kernel at once and come back
/// from the new one at their next refresh.
async fn refresh_own_addresses(
    kernel: Arc<turnpike_xdp_user::XdpRelay>,
    interface: String,
    preferred: Vec<std::net::IpAddr>,
) {
    let mut known = turnpike_xdp_user::discover::own_addresses(&interface, &preferred).ok();
    let mut period = tokio::time::interval(std::time::Duration::from_secs(30));
    period.tick().await;
    loop {
        period.tick().await;
        match turnpike_xdp_user::discover::own_addresses(&interface, &preferred) {
            Ok(own) if known.as_ref() != Some(&own) => match kernel.set_own_addresses(own) {
                Ok(()) => {
                    tracing::info!(
                        interface,
                        ?own,
                        "the kernel data plane's own addresses changed"
                    );
                    known = Some(own);
                }
                Err(error) => tracing::warn!(%error, "cannot write the relay's own addresses"),
            },
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, interface, "cannot read the interface's addresses")
            }
        }
    }
}

/// Gives memory that load left free back to the system every 10 s.
///
/// glibc's allocator keeps freed memory in each thread's arena for reuse, so after a burst of
/// allocations, connections or TLS sessions the relay's resident size would stay at its peak
/// although nothing holds it; `malloc_trim` returns the free pages. It walks the arenas under
/// their locks, which costs the relay threads at most a short wait once per period.
async fn return_freed_memory() {
    let mut period = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        period.tick().await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free memory of the allocator's own arenas; it reads
        // and writes no memory of ours.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// What a reload changes besides the relay threads' cores.
struct Reloader {
    shared: Arc<Shared>,
    budget: Arc<turnpike_relay::AllocationBudget>,
    user_budget: Arc<turnpike_relay::UserBudget>,
    tls: Option<Arc<tls::TlsCertificates>>,
    log: logging::LogControl,
}

impl Reloader {
    /// Reads the configuration again (flags and environment as at start, the file, secrets,
    /// users, certificates as they are now), checks all of it, and only then applies it: the
    /// relay threads get the new core settings through their control channels, the shared
    /// quotas and the log filter change, new TLS connections get the new certificate. On any
    /// error nothing changes. Settings that need a restart are named in the result.
    fn reload(
        &self,
        settings: &mut Settings,
        tell_all: &impl Fn(shard::Control),
    ) -> Result<String> {
        let result = self.prepare(settings).map(|(new, certificate)| {
            let restart = settings.needs_restart(&new);
            if let (Some(tls), Some(certificate)) = (&self.tls, certificate) {
                tls.install(certificate);
            }
            self.budget.set_limit(new.core.quotas.allocations_total);
            self.user_budget
                .set_limit(new.core.quotas.allocations_per_user);
            if new.log_level != settings.log_level
                && let Err(error) = self.log.set(&new.log_level)
            {
                tracing::warn!(%error, "log-level: kept the old filter");
            }
            tell_all(shard::Control::Reconfigure(Arc::new(new.core.clone())));
            // The reloadable part is now `new`'s; what needs a restart stays as started.
            settings.core = new.core;
            settings.log_level = new.log_level;
            settings.drain = new.drain;
            if restart.is_empty() {
                "reloaded\n".to_owned()
            } else {
                format!(
                    "reloaded; these changed but need a restart to take effect: {}\n",
                    restart.join(", ")
                )
            }
        });
        self.shared.count_reload(result.is_ok());
        result
    }

    fn prepare(&self, current: &Settings) -> Result<(Settings, Option<tls::Certificate>)> {
        let mut new = Settings::from_options(Options::load()?)?;
        // A default lowered at start to fit the open-file limit is not a change.
        if !new.streams.max_connections_given {
            new.streams.limits.max_connections = current.streams.limits.max_connections;
            new.streams.limits.max_connections_per_source =
                current.streams.limits.max_connections_per_source;
        }
        // The budgets the threads share are attached at start, not read from the file.
        new.core
            .shared_budget
            .clone_from(&current.core.shared_budget);
        new.core
            .shared_user_budget
            .clone_from(&current.core.shared_user_budget);
        let certificate = match &self.tls {
            Some(tls) => Some(tls.read()?),
            None => None,
        };
        Ok((new, certificate))
    }
}

fn log_reload(trigger: &str, outcome: &Result<String>) {
    match outcome {
        Ok(message) => tracing::info!(trigger, "{}", message.trim_end()),
        Err(error) => tracing::error!(
            trigger,
            error = format!("{error:#}"),
            "reload refused; the running configuration is unchanged"
        ),
    }
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
        "\nTurnpike development relay on {server} (realm {realm}); {tcp}.\n\
         Ready-made credentials, valid for 24 hours:\n  username: {username}\n  password: {password}\n\
         Relay some traffic through it with the load generator:\n  \
         cargo run --release -p turnpike-load -- run --server {server} --secret {DEV_SECRET} --allocations 4 --duration 5\n\
         Metrics: curl http://{admin}/metrics\n\
         Status page: http://{admin}/\n",
        realm = settings.core.credentials.realm(),
        admin = settings.admin_listen,
        tcp = if settings.streams.listen_tcp.is_empty() {
            "UDP only".to_owned()
        } else {
            format!("turn:{server}?transport=tcp works too")
        },
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
