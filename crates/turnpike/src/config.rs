//! Configuration from flags, environment variables and a TOML file, with one name per setting:
//! `--relay-ports` is `TURNPIKE_RELAY_PORTS` and `relay-ports = "…"` in the file. Flags win over
//! the environment (clap), which wins over the file, which wins over the defaults.
//!
//! Secrets are never taken from the command line, where every local user can read them in the
//! process list: they come from files or from the environment.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, ValueEnum};
use serde::Deserialize;
use sha2::Digest as _;
use turnpike_relay::auth::credentials::{CredentialStore, Password, SharedSecret};
use turnpike_relay::policy::{BuiltinDenials, Cidr, PeerDenied, PeerPolicy};
use turnpike_relay::{Config, Lifetimes, Quotas, RateLimit};

/// The secret `--dev` uses; printed at start, so it protects nothing.
pub(crate) const DEV_SECRET: &str = "turnpike-development-secret";

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum XdpMode {
    /// In the driver, before the kernel allocates a socket buffer (the fast one).
    Driver,
    /// In the kernel's generic hook, for drivers without native XDP.
    Generic,
}

/// How the XDP program resizes a frame whose headers grow or shrink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum XdpAdjust {
    /// Move the frame start (`bpf_xdp_adjust_head`): the fastest; needs headroom.
    Head,
    /// Resize at the end and move the payload: for drivers without headroom (gVNIC).
    Tail,
    /// Probe with the first datagram that grows, then head or tail.
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum LogFormat {
    Human,
    Json,
}

/// Every setting, all optional so the three sources can be layered.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(
    name = "turnpike",
    version,
    about = "A TURN relay (RFC 8656) with an XDP fast path"
)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct Options {
    /// TOML file with any of these settings, keyed by their long flag names.
    #[arg(long, env = "TURNPIKE_CONFIG")]
    #[serde(skip)]
    pub(crate) config: Option<PathBuf>,
    /// Run on loopback with a development secret and print how to connect.
    #[arg(long, env = "TURNPIKE_DEV")]
    #[serde(default)]
    pub(crate) dev: bool,
    /// Addresses to receive TURN traffic on [default: 0.0.0.0:3478,[::]:3478].
    #[arg(long, env = "TURNPIKE_LISTEN", value_delimiter = ',')]
    pub(crate) listen: Option<Vec<SocketAddr>>,
    /// IPv4 address advertised in relayed addresses (the public address behind a 1:1 NAT).
    /// Defaults to the IPv4 listen address when that is not 0.0.0.0.
    #[arg(long, env = "TURNPIKE_PUBLIC_IPV4")]
    pub(crate) public_ipv4: Option<Ipv4Addr>,
    /// IPv6 address advertised in relayed addresses. Defaults to the IPv6 listen address when
    /// that is not [::].
    #[arg(long, env = "TURNPIKE_PUBLIC_IPV6")]
    pub(crate) public_ipv6: Option<Ipv6Addr>,
    /// Local addresses relayed sockets bind to, at most one per family (coturn's `relay-ip`):
    /// to relay from an address other than the one clients reach, on a host with several. Also
    /// what is advertised for that family unless --public-ipv4/--public-ipv6 say otherwise
    /// [default: the listening address of the family if it is a specific one, else all].
    #[arg(long, env = "TURNPIKE_RELAY_IP", value_delimiter = ',')]
    pub(crate) relay_ip: Option<Vec<IpAddr>>,
    /// Relayed ports, as LOW-HIGH [default: 49152-65535].
    #[arg(long, env = "TURNPIKE_RELAY_PORTS")]
    pub(crate) relay_ports: Option<String>,
    /// Realm of the long-term credentials [default: turnpike].
    #[arg(long, env = "TURNPIKE_REALM")]
    pub(crate) realm: Option<String>,
    /// File with REST API shared secrets, one per line; the first signs nothing, all verify
    /// (rotation). Also TURNPIKE_SECRETS, comma-separated.
    #[arg(long, env = "TURNPIKE_SECRETS_FILE")]
    pub(crate) secrets_file: Option<PathBuf>,
    /// File with static users, one `username:password` per line.
    #[arg(long, env = "TURNPIKE_USERS_FILE")]
    pub(crate) users_file: Option<PathBuf>,
    /// File with nonce keys shared by a fleet behind one name, one per line (at least 16
    /// characters each): the first signs nonces, every line verifies them, so a client moved
    /// between relays keeps its nonce. Rotate in three reloads: add the new key as the second
    /// line everywhere, then make it the first, then drop the old one [default: a random key
    /// per relay thread].
    #[arg(long, env = "TURNPIKE_NONCE_KEY_FILE")]
    pub(crate) nonce_key_file: Option<PathBuf>,
    /// File with the Firezone-scheme secret. Also TURNPIKE_FIREZONE_SECRET.
    #[arg(long, env = "TURNPIKE_FIREZONE_SECRET_FILE")]
    pub(crate) firezone_secret_file: Option<PathBuf>,
    /// Peer CIDRs allowed although denied by default (e.g. 10.0.0.0/8 for a private network).
    #[arg(long, env = "TURNPIKE_ALLOW_PEERS", value_delimiter = ',')]
    pub(crate) allow_peers: Option<Vec<String>>,
    /// Peer CIDRs denied on top of the defaults; a deny beats an allow.
    #[arg(long, env = "TURNPIKE_DENY_PEERS", value_delimiter = ',')]
    pub(crate) deny_peers: Option<Vec<String>>,
    /// Allocations at once, over all users [default: the number of relayed ports].
    #[arg(long, env = "TURNPIKE_MAX_ALLOCATIONS")]
    pub(crate) max_allocations: Option<usize>,
    /// Allocations at once per username [default: 64].
    #[arg(long, env = "TURNPIKE_MAX_ALLOCATIONS_PER_USER")]
    pub(crate) max_allocations_per_user: Option<usize>,
    /// Permissions per allocation [default: 64].
    #[arg(long, env = "TURNPIKE_MAX_PERMISSIONS")]
    pub(crate) max_permissions: Option<usize>,
    /// Channels per allocation [default: 64].
    #[arg(long, env = "TURNPIKE_MAX_CHANNELS")]
    pub(crate) max_channels: Option<usize>,
    /// Allocation lifetime granted by default, in seconds [default: 600].
    #[arg(long, env = "TURNPIKE_DEFAULT_LIFETIME")]
    pub(crate) default_lifetime: Option<u64>,
    /// Longest allocation lifetime granted, in seconds [default: 3600].
    #[arg(long, env = "TURNPIKE_MAX_LIFETIME")]
    pub(crate) max_lifetime: Option<u64>,
    /// How long a nonce stays valid, in seconds [default: 600].
    #[arg(long, env = "TURNPIKE_NONCE_LIFETIME")]
    pub(crate) nonce_lifetime: Option<u64>,
    /// Longest validity a REST or Firezone username may claim, in seconds from now; a username
    /// that expires later is refused (one valid until 2100 is as good as a static password)
    /// [default: 172800, 48 hours].
    #[arg(long, env = "TURNPIKE_MAX_CREDENTIAL_LIFETIME")]
    pub(crate) max_credential_lifetime: Option<u64>,
    /// Admin endpoint (health, metrics, log level) [default: 127.0.0.1:9478].
    #[arg(long, env = "TURNPIKE_ADMIN_LISTEN")]
    pub(crate) admin_listen: Option<SocketAddr>,
    /// File with a bearer token (16 characters or more) that the admin endpoint then asks for,
    /// except on /healthz and /readyz; set it whenever --admin-listen is not loopback.
    #[arg(long, env = "TURNPIKE_ADMIN_TOKEN_FILE")]
    pub(crate) admin_token_file: Option<PathBuf>,
    /// Log filter, e.g. `info` or `turnpike=debug` [default: info].
    #[arg(long, env = "TURNPIKE_LOG_LEVEL")]
    pub(crate) log_level: Option<String>,
    /// Log format [default: human].
    #[arg(long, env = "TURNPIKE_LOG_FORMAT")]
    pub(crate) log_format: Option<LogFormat>,
    /// Seconds to keep relaying after SIGTERM or SIGINT before exiting [default: 30].
    #[arg(long, env = "TURNPIKE_DRAIN_SECONDS")]
    pub(crate) drain_seconds: Option<u64>,
    /// Relay threads, each with its own share of clients and relayed ports [default: one per
    /// CPU].
    #[arg(long, env = "TURNPIKE_THREADS")]
    pub(crate) threads: Option<usize>,
    /// Receive and send buffer of every socket, in bytes [default: 4194304].
    #[arg(long, env = "TURNPIKE_SOCKET_BUFFER")]
    pub(crate) socket_buffer: Option<usize>,
    /// Unauthenticated responses (Binding, challenges) per second to one source address (an
    /// IPv4 address or IPv6 /64), bursts of twice that; 0 for no limit [default: 100].
    #[arg(long, env = "TURNPIKE_UNAUTHENTICATED_RATE")]
    pub(crate) unauthenticated_rate: Option<u32>,
    /// Relay bound channels in the kernel with XDP on this interface (the one clients and peers
    /// reach the relay through; its MTU must be 1280 or more). Off by default; if set and the
    /// program cannot be loaded or attached, the relay does not start.
    #[arg(long, env = "TURNPIKE_XDP_INTERFACE")]
    pub(crate) xdp_interface: Option<String>,
    /// Where the XDP program runs [default: driver].
    #[arg(long, env = "TURNPIKE_XDP_MODE")]
    pub(crate) xdp_mode: Option<XdpMode>,
    /// An XDP object to load instead of the one built into the binary.
    #[arg(long, env = "TURNPIKE_XDP_PROGRAM")]
    pub(crate) xdp_program: Option<PathBuf>,
    /// How the XDP program resizes frames: head (moves the frame start, the fastest), tail
    /// (resizes at the end and moves the payload, for drivers that leave no headroom, such as
    /// Google Cloud's gVNIC), auto (probes with the first datagram that grows, then head if
    /// the driver moved the frame start, tail if it refused) [default: auto].
    #[arg(long, env = "TURNPIKE_XDP_ADJUST")]
    pub(crate) xdp_adjust: Option<XdpAdjust>,
    /// Other relays (address:port) an Allocate is sent to, in turn, with 300 Try Alternate
    /// when this relay is draining or full, instead of 508 or 486 [default: none].
    #[arg(long, env = "TURNPIKE_ALTERNATE_SERVERS", value_delimiter = ',')]
    pub(crate) alternate_servers: Option<Vec<SocketAddr>>,
    /// Report panics and errors to Sentry at this DSN (also SENTRY_DSN); nothing is sent
    /// otherwise. Starting never needs the network: the host is resolved when an event is sent
    /// [default: off].
    #[arg(long, env = "SENTRY_DSN")]
    pub(crate) sentry_dsn: Option<String>,
    /// The name this relay reports under [default: the host name].
    #[arg(long, env = "TURNPIKE_RELAY_ID")]
    pub(crate) relay_id: Option<String>,
    /// SOFTWARE attribute for responses to authenticated requests [default: none].
    #[arg(long, env = "TURNPIKE_SOFTWARE")]
    pub(crate) software: Option<String>,
    /// Accept channel numbers 0x4000-0x7FFF as RFC 5766 did (coturn's flag of the same name),
    /// not only RFC 8656's 0x4000-0x4FFF; in the kernel path too. For older clients; leave it off
    /// where other protocols share the relay's port (RFC 7983).
    #[arg(long, env = "TURNPIKE_RFC5766_CHANNEL_NUMBERS")]
    #[serde(default)]
    pub(crate) rfc5766_channel_numbers: bool,
    /// Addresses for TURN over TCP (`turn:HOST?transport=tcp`), comma-separated; "" turns TCP
    /// off [default: the --listen addresses].
    #[arg(long, env = "TURNPIKE_LISTEN_TCP")]
    pub(crate) listen_tcp: Option<String>,
    /// Addresses for TURN over TLS (`turns:`, typically port 443), comma-separated; plain TCP
    /// is accepted there too, told apart by its first byte. Needs --tls-cert and --tls-key
    /// [default: none].
    #[arg(long, env = "TURNPIKE_LISTEN_TLS")]
    pub(crate) listen_tls: Option<String>,
    /// PEM certificate chain for --listen-tls (end-entity certificate first); read again on
    /// SIGHUP.
    #[arg(long, env = "TURNPIKE_TLS_CERT")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert; read again on SIGHUP.
    #[arg(long, env = "TURNPIKE_TLS_KEY")]
    pub(crate) tls_key: Option<PathBuf>,
    /// TCP and TLS connections open at once, over all listeners [default: 10000, or what the
    /// open-file limit leaves if that is less].
    #[arg(long, env = "TURNPIKE_MAX_CONNECTIONS")]
    pub(crate) max_connections: Option<usize>,
    /// TCP and TLS connections open at once from one source (an IPv4 address or IPv6 /64)
    /// [default: 256].
    #[arg(long, env = "TURNPIKE_MAX_CONNECTIONS_PER_SOURCE")]
    pub(crate) max_connections_per_source: Option<usize>,
    /// Seconds a connection on a TLS listener may take to finish its handshake [default: 10].
    #[arg(long, env = "TURNPIKE_TLS_HANDSHAKE_TIMEOUT")]
    pub(crate) tls_handshake_timeout: Option<u64>,
    /// Seconds a TCP or TLS connection without an allocation may stay silent before it is
    /// closed [default: 30].
    #[arg(long, env = "TURNPIKE_STREAM_IDLE_TIMEOUT")]
    pub(crate) stream_idle_timeout: Option<u64>,
    /// Seconds a TCP or TLS connection may take to complete a message it has started
    /// (slowloris defence) [default: 10].
    #[arg(long, env = "TURNPIKE_STREAM_FRAME_TIMEOUT")]
    pub(crate) stream_frame_timeout: Option<u64>,
    /// Longest message accepted over TCP or TLS, in bytes; a longer one closes the connection
    /// [default: 16384].
    #[arg(long, env = "TURNPIKE_STREAM_MAX_MESSAGE")]
    pub(crate) stream_max_message: Option<usize>,
    /// Bytes queued per TCP or TLS connection for a client that reads slower than it is sent
    /// to; what does not fit is dropped and counted [default: 262144].
    #[arg(long, env = "TURNPIKE_STREAM_WRITE_BUFFER")]
    pub(crate) stream_write_buffer: Option<usize>,
}

macro_rules! layer {
    ($high:expr, $low:expr, $($field:ident),* $(,)?) => {
        Options {
            config: $high.config,
            dev: $high.dev || $low.dev,
            rfc5766_channel_numbers: $high.rfc5766_channel_numbers
                || $low.rfc5766_channel_numbers,
            $($field: $high.$field.or($low.$field),)*
        }
    };
}

impl Options {
    /// Flags and environment, then the file they name.
    pub(crate) fn load() -> Result<Self> {
        let cli = Self::parse();
        let Some(path) = cli.config.clone() else {
            return Ok(cli);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("config: cannot read {}", path.display()))?;
        let file: Self = toml::from_str(&text)
            .with_context(|| format!("config: {} is not valid", path.display()))?;
        Ok(Self::layered(cli, file))
    }

    /// `high` where it has a value, `low` where it has not.
    fn layered(high: Self, low: Self) -> Self {
        layer!(
            high,
            low,
            listen,
            public_ipv4,
            public_ipv6,
            relay_ip,
            relay_ports,
            realm,
            secrets_file,
            users_file,
            firezone_secret_file,
            nonce_key_file,
            allow_peers,
            deny_peers,
            max_allocations,
            max_allocations_per_user,
            max_permissions,
            max_channels,
            default_lifetime,
            max_lifetime,
            nonce_lifetime,
            max_credential_lifetime,
            admin_listen,
            admin_token_file,
            log_level,
            log_format,
            drain_seconds,
            threads,
            socket_buffer,
            unauthenticated_rate,
            xdp_interface,
            xdp_mode,
            xdp_program,
            xdp_adjust,
            alternate_servers,
            sentry_dsn,
            relay_id,
            software,
            listen_tcp,
            listen_tls,
            tls_cert,
            tls_key,
            max_connections,
            max_connections_per_source,
            tls_handshake_timeout,
            stream_idle_timeout,
            stream_frame_timeout,
            stream_max_message,
            stream_write_buffer,
        )
    }
}

/// The validated settings of the daemon.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) dev: bool,
    pub(crate) listen: Vec<SocketAddr>,
    /// Where relayed sockets bind, in order of preference: `--relay-ip`, then the listening
    /// addresses (the first of a family wins; an unspecified one means every address).
    pub(crate) relay_bind: Vec<IpAddr>,
    pub(crate) relay_ports: RangeInclusive<u16>,
    pub(crate) admin_listen: SocketAddr,
    /// The token the admin endpoint asks for, if any.
    pub(crate) admin_token: Option<crate::admin::AdminToken>,
    pub(crate) log_level: String,
    pub(crate) log_format: LogFormat,
    pub(crate) drain: Duration,
    pub(crate) threads: usize,
    pub(crate) socket_buffer: usize,
    /// The kernel data plane, when asked for.
    pub(crate) xdp: Option<XdpSettings>,
    /// TURN over TCP and TLS.
    pub(crate) streams: StreamSettings,
    /// Error reporting, when on.
    pub(crate) sentry_dsn: Option<String>,
    pub(crate) relay_id: String,
    /// The core's configuration; each relay thread gets a copy with its share of the ports.
    pub(crate) core: Config,
}

/// The stream listeners and the limits every connection on them lives under.
#[derive(Debug, Clone)]
pub(crate) struct StreamSettings {
    pub(crate) listen_tcp: Vec<SocketAddr>,
    pub(crate) listen_tls: Vec<SocketAddr>,
    /// Certificate and key files, when `listen_tls` is not empty.
    pub(crate) tls_files: Option<(PathBuf, PathBuf)>,
    pub(crate) limits: StreamLimits,
    /// Whether `--max-connections` was given; if not, the relay may lower the default to what
    /// the open-file limit leaves.
    pub(crate) max_connections_given: bool,
}

/// What a stranger's connection may hold, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamLimits {
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_source: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) frame_timeout: Duration,
    pub(crate) max_message: usize,
    pub(crate) write_buffer: usize,
}

/// A comma-separated address list where "" means none.
fn parse_address_list(text: &str, setting: &str) -> Result<Vec<SocketAddr>> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse::<SocketAddr>()
                .with_context(|| format!("{setting}: {item:?} is not an address:port"))
        })
        .collect()
}

/// Seconds from 1 up to a day: a zero timeout would close every connection at once, a longer
/// one is a typo.
fn timeout_seconds(value: Option<u64>, default: u64, setting: &str) -> Result<Duration> {
    let seconds = value.unwrap_or(default);
    ensure!(
        (1..=86_400).contains(&seconds),
        "{setting}: must be 1 to 86400 seconds, got {seconds}"
    );
    Ok(Duration::from_secs(seconds))
}

impl StreamSettings {
    fn from_options(options: &Options, listen: &[SocketAddr]) -> Result<Self> {
        let listen_tcp = match &options.listen_tcp {
            Some(text) => parse_address_list(text, "listen-tcp")?,
            None => listen.to_vec(),
        };
        let listen_tls = match &options.listen_tls {
            Some(text) => parse_address_list(text, "listen-tls")?,
            None => Vec::new(),
        };
        if let Some(both) = listen_tcp
            .iter()
            .find(|address| listen_tls.contains(address))
        {
            bail!("listen-tls: {both} is also in listen-tcp; a TLS listener takes plain TCP too");
        }
        let tls_files = match (&options.tls_cert, &options.tls_key, listen_tls.is_empty()) {
            (Some(cert), Some(key), false) => Some((cert.clone(), key.clone())),
            (None, _, false) => bail!("tls-cert: --listen-tls needs a certificate"),
            (_, None, false) => bail!("tls-key: --listen-tls needs a private key"),
            (Some(_), _, true) | (_, Some(_), true) => {
                bail!("listen-tls: --tls-cert and --tls-key are set but no TLS listener")
            }
            (None, None, true) => None,
        };
        let max_connections = options.max_connections.unwrap_or(10_000);
        ensure!(max_connections >= 1, "max-connections: must be at least 1");
        let max_connections_per_source = options.max_connections_per_source.unwrap_or(256);
        ensure!(
            (1..=max_connections).contains(&max_connections_per_source),
            "max-connections-per-source: must be 1 to max-connections ({max_connections})"
        );
        let max_message = options.stream_max_message.unwrap_or(16_384);
        ensure!(
            (548..=turnpike_proto::MAX_FRAME_LEN).contains(&max_message),
            "stream-max-message: must be 548 to {} bytes",
            turnpike_proto::MAX_FRAME_LEN
        );
        let write_buffer = options.stream_write_buffer.unwrap_or(256 * 1024);
        ensure!(
            (max_message..=64 << 20).contains(&write_buffer),
            "stream-write-buffer: must be stream-max-message ({max_message}) to 67108864 bytes"
        );
        Ok(Self {
            listen_tcp,
            listen_tls,
            tls_files,
            limits: StreamLimits {
                max_connections,
                max_connections_per_source,
                handshake_timeout: timeout_seconds(
                    options.tls_handshake_timeout,
                    10,
                    "tls-handshake-timeout",
                )?,
                idle_timeout: timeout_seconds(
                    options.stream_idle_timeout,
                    30,
                    "stream-idle-timeout",
                )?,
                frame_timeout: timeout_seconds(
                    options.stream_frame_timeout,
                    10,
                    "stream-frame-timeout",
                )?,
                max_message,
                write_buffer,
            },
            max_connections_given: options.max_connections.is_some(),
        })
    }
}

/// Where and how to run the kernel data plane.
#[derive(Debug, Clone)]
pub(crate) struct XdpSettings {
    pub(crate) interface: String,
    pub(crate) mode: XdpMode,
    pub(crate) program: Option<PathBuf>,
    pub(crate) adjust: XdpAdjust,
}

/// Reads secrets from the environment; `None` when unset.
fn env_secret(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

fn read_lines(path: &Path, setting: &str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{setting}: cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

fn parse_port_range(text: &str) -> Result<RangeInclusive<u16>> {
    let (low, high) = text
        .split_once('-')
        .context("relay-ports: expected LOW-HIGH, e.g. 49152-65535")?;
    let low: u16 = low
        .trim()
        .parse()
        .context("relay-ports: LOW is not a port number")?;
    let high: u16 = high
        .trim()
        .parse()
        .context("relay-ports: HIGH is not a port number")?;
    ensure!(
        low > 0 && low <= high,
        "relay-ports: need 0 < LOW <= HIGH, got {low}-{high}"
    );
    Ok(low..=high)
}

fn parse_cidrs(list: Option<Vec<String>>, setting: &str) -> Result<Vec<Cidr>> {
    list.unwrap_or_default()
        .iter()
        .map(|text| {
            text.trim()
                .parse::<Cidr>()
                .with_context(|| format!("{setting}: {text:?} is not a CIDR"))
        })
        .collect()
}

impl Settings {
    /// The settings of `new` that differ from these and that the running relay cannot take:
    /// its sockets, threads and kernel program were set up from them. A reload applies the rest
    /// and reports these as needing a restart.
    pub(crate) fn needs_restart(&self, new: &Self) -> Vec<&'static str> {
        // Debug output stands in for equality: some of these types have no PartialEq, and a
        // reload runs rarely.
        let differs =
            |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
        // Each XDP setting by its own name; turning the kernel path on or off is `xdp-interface`.
        let xdp_differs = |field: fn(&XdpSettings) -> String| matches!((&self.xdp, &new.xdp), (Some(old), Some(new)) if field(old) != field(new));
        let core = (&self.core, &new.core);
        let streams = (&self.streams, &new.streams);
        [
            ("dev", differs(&self.dev, &new.dev)),
            ("listen", differs(&self.listen, &new.listen)),
            ("relay-ip", differs(&self.relay_bind, &new.relay_bind)),
            ("relay-ports", differs(&self.relay_ports, &new.relay_ports)),
            (
                "admin-listen",
                differs(&self.admin_listen, &new.admin_listen),
            ),
            (
                "admin-token-file",
                self.admin_token.is_some() != new.admin_token.is_some(),
            ),
            ("log-format", differs(&self.log_format, &new.log_format)),
            ("threads", differs(&self.threads, &new.threads)),
            (
                "socket-buffer",
                differs(&self.socket_buffer, &new.socket_buffer),
            ),
            (
                "xdp-interface",
                self.xdp.as_ref().map(|xdp| &xdp.interface)
                    != new.xdp.as_ref().map(|xdp| &xdp.interface),
            ),
            ("xdp-mode", xdp_differs(|xdp| format!("{:?}", xdp.mode))),
            (
                "xdp-program",
                xdp_differs(|xdp| format!("{:?}", xdp.program)),
            ),
            ("xdp-adjust", xdp_differs(|xdp| format!("{:?}", xdp.adjust))),
            (
                "public-ipv4",
                differs(&core.0.relay_ipv4, &core.1.relay_ipv4),
            ),
            (
                "public-ipv6",
                differs(&core.0.relay_ipv6, &core.1.relay_ipv6),
            ),
            (
                "realm",
                core.0.credentials.realm() != core.1.credentials.realm(),
            ),
            (
                "rfc5766-channel-numbers",
                core.0.rfc5766_channel_numbers != core.1.rfc5766_channel_numbers,
            ),
            (
                "listen-tcp",
                differs(&streams.0.listen_tcp, &streams.1.listen_tcp),
            ),
            (
                "listen-tls",
                differs(&streams.0.listen_tls, &streams.1.listen_tls),
            ),
            (
                "tls-cert/tls-key",
                differs(&streams.0.tls_files, &streams.1.tls_files),
            ),
            (
                "stream limits",
                differs(&streams.0.limits, &streams.1.limits),
            ),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
    }

    pub(crate) fn from_options(options: Options) -> Result<Self> {
        let dev = options.dev;
        let loopback_v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, 3478));
        let listen = match (&options.listen, dev) {
            (Some(listen), _) => listen.clone(),
            (None, true) => vec![loopback_v4],
            (None, false) => vec![
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, 3478)),
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, 3478)),
            ],
        };
        ensure!(!listen.is_empty(), "listen: at least one address is needed");
        if dev {
            ensure!(
                listen.iter().all(|address| address.ip().is_loopback()),
                "dev: --dev only runs on loopback addresses; drop --dev to listen on {listen:?}"
            );
        }
        let relay_ip = options.relay_ip.clone().unwrap_or_default();
        for v4 in [true, false] {
            let of_family: Vec<&IpAddr> = relay_ip.iter().filter(|ip| ip.is_ipv4() == v4).collect();
            ensure!(
                of_family.len() <= 1,
                "relay-ip: at most one address per family, got {of_family:?}"
            );
            ensure!(
                of_family.iter().all(|ip| !ip.is_unspecified()),
                "relay-ip: give a specific address (leave it out to relay from every address)"
            );
        }
        let relay_bind: Vec<IpAddr> = relay_ip
            .iter()
            .copied()
            .chain(listen.iter().map(SocketAddr::ip))
            .collect();
        // What is advertised by default: the relay address of the family, else a specific
        // listening address.
        let specific = |v4: bool| {
            relay_bind
                .iter()
                .copied()
                .find(|ip| ip.is_ipv4() == v4 && !ip.is_unspecified())
        };
        let public_ipv4 = options.public_ipv4.or_else(|| match specific(true) {
            Some(IpAddr::V4(ip)) => Some(ip),
            _ => None,
        });
        let public_ipv6 = options.public_ipv6.or_else(|| match specific(false) {
            Some(IpAddr::V6(ip)) => Some(ip),
            _ => None,
        });
        ensure!(
            public_ipv4.is_some() || public_ipv6.is_some(),
            "public-ipv4/public-ipv6: the relay listens on unspecified addresses only, so it does not \
             know which address to advertise to clients; set --public-ipv4 and/or --public-ipv6"
        );

        let streams = StreamSettings::from_options(&options, &listen)?;
        let relay_ports =
            parse_port_range(options.relay_ports.as_deref().unwrap_or("49152-65535"))?;
        if let Some(listen_port) = listen
            .iter()
            .map(SocketAddr::port)
            .find(|port| relay_ports.contains(port))
        {
            bail!("relay-ports: the range contains the listen port {listen_port}");
        }
        let realm = options.realm.unwrap_or_else(|| "turnpike".to_owned());
        ensure!(
            !realm.is_empty() && realm.len() <= 763,
            "realm: must be 1 to 763 bytes"
        );

        let mut credentials = CredentialStore::new(realm.clone());
        let mut sources = 0;
        let mut secrets = Vec::new();
        if let Some(path) = &options.secrets_file {
            secrets.extend(read_lines(path, "secrets-file")?);
            ensure!(
                !secrets.is_empty(),
                "secrets-file: {} holds no secret",
                path.display()
            );
        }
        if let Some(list) = env_secret("TURNPIKE_SECRETS") {
            secrets.extend(
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
        }
        if dev {
            secrets.push(DEV_SECRET.to_owned());
        }
        for secret in secrets {
            credentials = credentials.with_rest_secret(SharedSecret::new(secret.into_bytes()));
            sources += 1;
        }
        if let Some(path) = &options.users_file {
            for (number, line) in read_lines(path, "users-file")?.into_iter().enumerate() {
                let (user, password) = line.split_once(':').with_context(|| {
                    format!("users-file: line {} is not `username:password`", number + 1)
                })?;
                credentials = credentials.with_static_user(user, Password::new(password));
                sources += 1;
            }
        }
        let firezone = match &options.firezone_secret_file {
            Some(path) => read_lines(path, "firezone-secret-file")?.into_iter().next(),
            None => env_secret("TURNPIKE_FIREZONE_SECRET"),
        };
        if let Some(secret) = firezone {
            credentials = credentials.with_firezone_secret(SharedSecret::new(secret.into_bytes()));
            sources += 1;
        }
        ensure!(
            sources > 0,
            "secrets-file/users-file/firezone-secret-file: no credentials configured, so nobody could \
             allocate; set TURNPIKE_SECRETS or one of these files (or run with --dev)"
        );

        let mut allowed = parse_cidrs(options.allow_peers, "allow-peers")?;
        let denied = parse_cidrs(options.deny_peers, "deny-peers")?;
        let mut builtin = BuiltinDenials::ALL;
        if dev {
            // A development relay is tried against peers on the same machine.
            builtin = builtin.without(PeerDenied::Loopback);
            allowed.push("127.0.0.0/8".parse().context("dev: loopback range")?);
        }
        let own: Vec<IpAddr> = public_ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(public_ipv6.map(IpAddr::V6))
            .collect();
        let policy = PeerPolicy::new()
            .with_allowed(allowed)
            .with_denied(denied)
            .with_builtin_denials(builtin)
            .with_relay_own_addresses(own);

        let defaults = Lifetimes::default();
        let seconds =
            |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_secs);
        let lifetimes = Lifetimes {
            allocation_default: seconds(options.default_lifetime, defaults.allocation_default),
            allocation_max: seconds(options.max_lifetime, defaults.allocation_max),
            nonce: seconds(options.nonce_lifetime, defaults.nonce),
            credential_max: seconds(options.max_credential_lifetime, defaults.credential_max),
            ..defaults
        };
        ensure!(
            lifetimes.allocation_default <= lifetimes.allocation_max
                && !lifetimes.allocation_default.is_zero(),
            "default-lifetime: must be positive and at most max-lifetime"
        );
        ensure!(
            !lifetimes.nonce.is_zero(),
            "nonce-lifetime: must be positive"
        );
        let port_count = relay_ports.clone().count();
        let default_quotas = Quotas::default();
        let quotas = Quotas {
            allocations_total: options.max_allocations.unwrap_or(port_count),
            allocations_per_user: options
                .max_allocations_per_user
                .unwrap_or(default_quotas.allocations_per_user),
            permissions_per_allocation: options
                .max_permissions
                .unwrap_or(default_quotas.permissions_per_allocation),
            channels_per_allocation: options
                .max_channels
                .unwrap_or(default_quotas.channels_per_allocation),
            ..default_quotas
        };

        let mut core = Config::new(credentials, policy);
        core.relay_ipv4 = public_ipv4;
        core.relay_ipv6 = public_ipv6;
        core.relay_ports = relay_ports.clone();
        core.lifetimes = lifetimes;
        core.quotas = quotas;
        core.software = options.software;
        if let Some(path) = &options.nonce_key_file {
            let lines = read_lines(path, "nonce-key-file")?;
            ensure!(
                !lines.is_empty(),
                "nonce-key-file: {} holds no key",
                path.display()
            );
            for (number, line) in lines.iter().enumerate() {
                ensure!(
                    line.len() >= 16,
                    "nonce-key-file: line {} is shorter than 16 characters",
                    number + 1
                );
                // Any text of the operator's becomes a 32-byte key.
                core.nonce_keys
                    .push(sha2::Sha256::digest(line.as_bytes()).into());
            }
        }
        core.alternate_servers = options.alternate_servers.clone().unwrap_or_default();
        core.rfc5766_channel_numbers = options.rfc5766_channel_numbers;
        if let Some(rate) = options.unauthenticated_rate {
            core.unauthenticated_rate = if rate == 0 {
                RateLimit::UNLIMITED
            } else {
                RateLimit::per_second(rate)
            };
        }

        // The core's own bounds (every lifetime at most 7 days, ...), named as flags.
        core.validate().map_err(|error| {
            let flag = match error.setting {
                "lifetimes.allocation_default" => "default-lifetime",
                "lifetimes.allocation_max" => "max-lifetime",
                "lifetimes.nonce" => "nonce-lifetime",
                "lifetimes.credential_max" => "max-credential-lifetime",
                other => other,
            };
            anyhow::anyhow!("{flag}: {}", error.problem)
        })?;

        let threads = options.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        });
        ensure!((1..=256).contains(&threads), "threads: must be 1 to 256");
        ensure!(
            port_count >= threads,
            "relay-ports: fewer ports than threads"
        );

        let admin_token = match &options.admin_token_file {
            Some(path) => {
                let token = read_lines(path, "admin-token-file")?
                    .into_iter()
                    .next()
                    .unwrap_or_default();
                ensure!(
                    token.len() >= crate::admin::AdminToken::MIN_LEN,
                    "admin-token-file: {} must hold a token of {} characters or more",
                    path.display(),
                    crate::admin::AdminToken::MIN_LEN
                );
                Some(crate::admin::AdminToken::new(&token))
            }
            None => None,
        };

        Ok(Self {
            dev,
            relay_bind,
            listen,
            relay_ports,
            admin_token,
            admin_listen: options
                .admin_listen
                .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 9478))),
            log_level: options.log_level.unwrap_or_else(|| "info".to_owned()),
            log_format: options.log_format.unwrap_or(LogFormat::Human),
            drain: Duration::from_secs(options.drain_seconds.unwrap_or(30)),
            threads,
            socket_buffer: options.socket_buffer.unwrap_or(4 << 20),
            xdp: options.xdp_interface.map(|interface| XdpSettings {
                interface,
                mode: options.xdp_mode.unwrap_or(XdpMode::Driver),
                program: options.xdp_program,
                adjust: options.xdp_adjust.unwrap_or(XdpAdjust::Auto),
            }),
            streams,
            sentry_dsn: options
                .sentry_dsn
                .clone()
                .filter(|dsn| !dsn.trim().is_empty()),
            relay_id: options
                .relay_id
                .clone()
                .unwrap_or_else(crate::telemetry::default_relay_id),
            core,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Result<Settings> {
        let mut argv = vec!["turnpike"];
        argv.extend_from_slice(args);
        Settings::from_options(Options::try_parse_from(argv)?)
    }

    #[test]
    fn dev_mode_listens_on_loopback_and_advertises_it() {
        let settings = settings(&["--dev"]).unwrap();
        assert_eq!(settings.listen, ["127.0.0.1:3478".parse().unwrap()]);
        assert_eq!(settings.core.relay_ipv4, Some(Ipv4Addr::LOCALHOST));
        assert!(
            settings
                .core
                .policy
                .check("127.0.0.1".parse().unwrap())
                .is_ok()
        );
    }

    #[test]
    fn unspecified_listen_without_public_address_names_the_setting() {
        let error = settings(&["--listen", "0.0.0.0:3478"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("public-ipv4"), "{error}");
    }

    #[test]
    fn missing_credentials_name_the_settings() {
        let error = settings(&["--listen", "192.0.2.1:3478"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("secrets-file"), "{error}");
    }

    #[test]
    fn bad_port_range_names_the_setting() {
        for range in ["100", "200-100", "0-10", "a-b", "3000-4000"] {
            let error = settings(&[
                "--dev",
                "--listen",
                "127.0.0.1:3478",
                "--relay-ports",
                range,
            ])
            .map(|_| ())
            .unwrap_err()
            .to_string();
            assert!(error.contains("relay-ports"), "{range}: {error}");
        }
        let error = settings(&["--dev", "--relay-ports", "3000-4000"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("listen port"), "{error}");
    }

    #[test]
    fn bad_cidr_names_the_setting() {
        let error = settings(&["--dev", "--allow-peers", "10.0.0.1/8"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("allow-peers"), "{error}");
    }

    #[test]
    fn dev_refuses_a_public_listen_address() {
        let error = settings(&["--dev", "--listen", "192.0.2.1:3478"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("dev"), "{error}");
    }

    #[test]
    fn tcp_listens_where_udp_does_unless_turned_off() {
        let settings = settings(&["--dev"]).unwrap();
        assert_eq!(settings.streams.listen_tcp, settings.listen);
        assert!(settings.streams.listen_tls.is_empty());
        let settings = settings_without_tcp();
        assert!(settings.streams.listen_tcp.is_empty());
    }

    fn settings_without_tcp() -> Settings {
        settings(&["--dev", "--listen-tcp", ""]).unwrap()
    }

    #[test]
    fn stream_settings_name_the_setting_at_fault() {
        for (args, setting) in [
            (&["--listen-tcp", "127.0.0.1"][..], "listen-tcp"),
            (&["--listen-tls", "127.0.0.1:443"][..], "tls-cert"),
            (
                &["--listen-tls", "127.0.0.1:443", "--tls-cert", "/c"][..],
                "tls-key",
            ),
            (&["--tls-cert", "/c", "--tls-key", "/k"][..], "listen-tls"),
            (
                &[
                    "--listen-tls",
                    "127.0.0.1:3478",
                    "--tls-cert",
                    "/c",
                    "--tls-key",
                    "/k",
                ][..],
                "listen-tls",
            ),
            (&["--max-connections", "0"][..], "max-connections"),
            (
                &[
                    "--max-connections",
                    "5",
                    "--max-connections-per-source",
                    "6",
                ][..],
                "max-connections-per-source",
            ),
            (
                &["--tls-handshake-timeout", "0"][..],
                "tls-handshake-timeout",
            ),
            (&["--stream-idle-timeout", "0"][..], "stream-idle-timeout"),
            (
                &["--stream-frame-timeout", "99999999"][..],
                "stream-frame-timeout",
            ),
            (&["--stream-max-message", "100"][..], "stream-max-message"),
            (&["--stream-max-message", "70000"][..], "stream-max-message"),
            (
                &["--stream-write-buffer", "1000"][..],
                "stream-write-buffer",
            ),
        ] {
            let mut argv = vec!["--dev"];
            argv.extend_from_slice(args);
            let error = settings(&argv).map(|_| ()).unwrap_err().to_string();
            assert!(error.contains(setting), "{args:?}: {error}");
        }
    }

    #[test]
    fn lifetimes_beyond_the_core_bounds_name_the_flag() {
        for (args, setting) in [
            (
                &["--max-lifetime", "99999999", "--default-lifetime", "600"][..],
                "max-lifetime",
            ),
            (&["--nonce-lifetime", "99999999"][..], "nonce-lifetime"),
            (
                &["--max-credential-lifetime", "99999999"][..],
                "max-credential-lifetime",
            ),
            (
                &["--max-credential-lifetime", "0"][..],
                "max-credential-lifetime",
            ),
        ] {
            let mut argv = vec!["--dev"];
            argv.extend_from_slice(args);
            let error = settings(&argv).map(|_| ()).unwrap_err().to_string();
            assert!(error.contains(setting), "{args:?}: {error}");
        }
        let settings = settings(&["--dev", "--max-credential-lifetime", "3600"]).unwrap();
        assert_eq!(
            settings.core.lifetimes.credential_max,
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn a_reload_names_each_xdp_setting_that_needs_a_restart() {
        let started = settings(&["--dev", "--xdp-interface", "eth0"]).unwrap();
        for (args, named) in [
            (&["--xdp-interface", "eth1"][..], "xdp-interface"),
            (
                &["--xdp-interface", "eth0", "--xdp-adjust", "tail"][..],
                "xdp-adjust",
            ),
            (
                &["--xdp-interface", "eth0", "--xdp-mode", "generic"][..],
                "xdp-mode",
            ),
            (&[][..], "xdp-interface"),
        ] {
            let mut argv = vec!["--dev"];
            argv.extend_from_slice(args);
            let reloaded = settings(&argv).unwrap();
            assert_eq!(started.needs_restart(&reloaded), [named], "{args:?}");
        }
        let same = settings(&["--dev", "--xdp-interface", "eth0", "--xdp-adjust", "auto"]).unwrap();
        assert!(started.needs_restart(&same).is_empty());
    }

    #[test]
    fn relay_ip_binds_relayed_sockets_and_is_advertised() {
        let relaying = settings(&[
            "--dev",
            "--listen",
            "127.0.0.1:3478",
            "--relay-ip",
            "127.0.0.2",
        ])
        .unwrap();
        assert_eq!(
            relaying.relay_bind[0],
            "127.0.0.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(relaying.core.relay_ipv4, Some("127.0.0.2".parse().unwrap()));
        for bad in ["127.0.0.2,127.0.0.3", "0.0.0.0"] {
            let error = settings(&["--dev", "--relay-ip", bad])
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(error.contains("relay-ip"), "{bad}: {error}");
        }
    }

    #[test]
    fn nonce_keys_come_from_their_file_and_short_ones_are_refused() {
        let dir = std::env::temp_dir().join(format!("turnpike-nonce-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keys");
        std::fs::write(&file, "a shared fleet key\nthe previous fleet key\n").unwrap();
        let path = file.display().to_string();
        let loaded = settings(&["--dev", "--nonce-key-file", &path]).unwrap();
        assert_eq!(loaded.core.nonce_keys.len(), 2);
        assert_ne!(loaded.core.nonce_keys[0], loaded.core.nonce_keys[1]);
        std::fs::write(&file, "short\n").unwrap();
        let error = settings(&["--dev", "--nonce-key-file", &path])
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(error.contains("nonce-key-file"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn flags_and_environment_win_over_the_file() {
        let cli = Options::try_parse_from(["turnpike", "--relay-ports", "50000-50100"]).unwrap();
        let file: Options =
            toml::from_str("relay-ports = \"40000-40100\"\nrealm = \"from-file\"\n").unwrap();
        let layered = Options::layered(cli, file);
        assert_eq!(layered.relay_ports.as_deref(), Some("50000-50100"));
        assert_eq!(layered.realm.as_deref(), Some("from-file"));
    }

    #[test]
    fn toml_keys_are_the_flag_names() {
        let file: Options = toml::from_str(
            "listen = [\"127.0.0.1:3478\"]\nrelay-ports = \"50000-50100\"\nmax-allocations = 10\nlog-format = \"json\"\n",
        )
        .unwrap();
        assert_eq!(file.relay_ports.as_deref(), Some("50000-50100"));
        assert_eq!(file.max_allocations, Some(10));
        assert_eq!(file.log_format, Some(LogFormat::Json));
        assert!(toml::from_str::<Options>("no-such-setting = 1").is_err());
    }

    #[test]
    fn rfc5766_channel_numbers_come_from_the_flag_or_the_file() {
        assert!(!settings(&["--dev"]).unwrap().core.rfc5766_channel_numbers);
        let flag = settings(&["--dev", "--rfc5766-channel-numbers"]).unwrap();
        assert!(flag.core.rfc5766_channel_numbers);
        let file: Options = toml::from_str(
            "rfc5766-channel-numbers = true
",
        )
        .unwrap();
        let cli = Options::try_parse_from(["turnpike"]).unwrap();
        assert!(Options::layered(cli, file).rfc5766_channel_numbers);
    }
}
