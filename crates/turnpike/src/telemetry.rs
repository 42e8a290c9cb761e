//! Optional error reporting to Sentry (`--sentry-dsn`, also `SENTRY_DSN`): panics and
//! ERROR-level events, with the relay's version and a stable relay id; WARN and INFO events ride
//! along as breadcrumbs.
//!
//! A relay must start and run with no Internet at all (the seed notes' lesson: a client that
//! resolved its Sentry host at start could not start offline). So nothing here touches the
//! network at start: the DSN is only parsed. The transport (`ureq`) resolves the host when an
//! event is sent, and again for the next one if that failed. Events go through a bounded queue
//! to the transport's own thread, and are dropped when it is full, so an unreachable or
//! unresolvable endpoint never blocks, slows or stops relaying; at exit the queue gets at most
//! [`SHUTDOWN_TIMEOUT`] to drain.

use std::borrow::Cow;
use std::time::Duration;

use anyhow::{Context, Result};

/// How long the exit waits for queued events.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// Starts reporting to `dsn`; the returned guard flushes (briefly) when dropped.
pub(crate) fn init(dsn: &str, relay_id: &str) -> Result<sentry::ClientInitGuard> {
    let dsn: sentry::types::Dsn = dsn
        .parse()
        .map_err(|error| anyhow::anyhow!("{error}"))
        .context("sentry-dsn: not a valid DSN")?;
    let mut options = sentry::ClientOptions::default();
    options.dsn = Some(dsn);
    options.release = Some(Cow::Borrowed(concat!(
        "turnpike@",
        env!("CARGO_PKG_VERSION")
    )));
    options.server_name = Some(Cow::Owned(relay_id.to_owned()));
    options.shutdown_timeout = SHUTDOWN_TIMEOUT;
    // Client addresses and usernames are personal data: none leaves the relay.
    options.send_default_pii = false;
    let guard = sentry::init(options);
    sentry::configure_scope(|scope| scope.set_tag("relay_id", relay_id));
    Ok(guard)
}

/// A stable name for this relay in reports: the host name, which a fleet's orchestration keeps
/// per node (overridable with `--relay-id`).
pub(crate) fn default_relay_id() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`, which outlives the call.
    let result = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if result != 0 {
        return "turnpike".to_owned();
    }
    let len = buf.iter().position(|byte| *byte == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// The `tracing` layers that turn ERROR events into Sentry events and WARN and INFO ones into
/// the breadcrumbs sent with them (without a Sentry client they do nothing).
pub(crate) fn layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use sentry::integrations::tracing::{BreadcrumbLayer, ErrorLayer};
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::{LevelFilter, filter_fn};
    let breadcrumbs = BreadcrumbLayer::new().with_filter(filter_fn(|metadata| {
        matches!(
            *metadata.level(),
            tracing::Level::WARN | tracing::Level::INFO
        )
    }));
    ErrorLayer::new()
        .with_filter(LevelFilter::ERROR)
        .and_then(breadcrumbs)
}
