//! Starting the kernel data plane: load the XDP program, configure it, attach it.
//!
//! Every step must succeed or the relay does not start: an operator who asked for the kernel
//! path and silently ran without it would draw the wrong conclusions from every graph.

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use turnpike_xdp_user::{AttachMode, LoadOptions, XdpConfig, XdpRelay, discover};

use crate::config::{Settings, XdpMode, XdpSettings};

/// The XDP object `build.rs` built for this binary; empty when built with
/// `TURNPIKE_SKIP_XDP_BUILD=1`.
static BUILT_IN_OBJECT: &[u8] = include_bytes!(env!("TURNPIKE_XDP_OBJECT"));

pub(crate) fn start(settings: &Settings, xdp: &XdpSettings) -> Result<Arc<XdpRelay>> {
    let interface = &xdp.interface;
    let options = LoadOptions::default();
    let relay = match &xdp.program {
        Some(path) => XdpRelay::load(path, &options),
        None => {
            if BUILT_IN_OBJECT.is_empty() {
                bail!(
                    "xdp-interface: this binary was built without its XDP program \
                     (TURNPIKE_SKIP_XDP_BUILD=1); rebuild it with the eBPF toolchain (scripts/setup.sh) \
                     or give --xdp-program"
                );
            }
            XdpRelay::load_bytes(BUILT_IN_OBJECT, "the built-in XDP program", &options)
        }
    };
    let mut relay = relay
        .with_context(|| format!("xdp-interface: cannot load the XDP program for {interface}"))?;

    // Only one listening port is relayed in the kernel; datagrams to others take the
    // user-space path, which handles everything anyway.
    let listen_port = settings
        .listen
        .first()
        .map_or(3478, std::net::SocketAddr::port);
    let (ttl, hop_limit) = discover::default_hop_limits(interface);
    let config = XdpConfig::new(
        listen_port,
        *settings.relay_ports.start(),
        *settings.relay_ports.end(),
    )
    .with_hop_limits(ttl, hop_limit)
    .with_rfc5766_channel_numbers(settings.core.rfc5766_channel_numbers);
    relay
        .configure(config)
        .context("xdp-interface: cannot write the XDP configuration")?;

    // Translated (IPv4 <-> IPv6) datagrams leave from the relay's own address of the other
    // family: the listening address where it is a specific one, else the interface's.
    let preferred: Vec<IpAddr> = settings
        .listen
        .iter()
        .map(std::net::SocketAddr::ip)
        .filter(|ip| !ip.is_unspecified())
        .collect();
    let own = discover::own_addresses(interface, &preferred)
        .with_context(|| format!("xdp-interface: cannot read the addresses of {interface}"))?;
    relay
        .set_own_addresses(own)
        .context("xdp-interface: cannot write the relay's own addresses")?;

    let mode = match xdp.mode {
        XdpMode::Driver => AttachMode::Driver,
        XdpMode::Generic => AttachMode::Generic,
    };
    relay
        .attach(interface, mode)
        .with_context(|| format!("xdp-interface: cannot attach to {interface}"))?;
    tracing::info!(interface, mode = ?xdp.mode, ?own, "kernel data plane attached");
    Ok(Arc::new(relay))
}
