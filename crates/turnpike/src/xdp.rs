//! Starting the kernel data plane: load the XDP program, configure it, attach it.
//!
//! Every step must succeed or the relay does not start: an operator who asked for the kernel
//! path and silently ran without it would draw the wrong conclusions from every graph.

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use turnpike_xdp_user::{AdjustMode, AttachMode, LoadOptions, XdpConfig, XdpRelay, discover};

use crate::config::{Settings, XdpAdjust, XdpMode, XdpSettings};

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

    let config = configuration(settings, xdp)?;
    relay
        .configure(config)
        .context("xdp-interface: cannot write the XDP configuration")?;

    // Datagrams to peers leave from the relay's own address of the peer's family (see
    // `preferred_own_addresses`).
    let preferred = preferred_own_addresses(settings);
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
    tracing::info!(
        interface,
        mode = ?xdp.mode,
        adjust = config.adjust_mode().as_str(),
        listen_ports = ?config.listen_ports().collect::<Vec<_>>(),
        ?own,
        "kernel data plane attached"
    );
    Ok(Arc::new(relay))
}

/// What the kernel program is told: every UDP listening port (it relays for each, keyed by
/// the full listening address the client wrote to), the relayed range, hop limits, channel
/// range and how frames are resized.
fn configuration(settings: &Settings, xdp: &XdpSettings) -> Result<XdpConfig> {
    let mut ports = settings.listen.iter().map(std::net::SocketAddr::port);
    let first = ports.next().unwrap_or(3478);
    let (ttl, hop_limit) = discover::default_hop_limits(&xdp.interface);
    let mut config = XdpConfig::new(
        first,
        *settings.relay_ports.start(),
        *settings.relay_ports.end(),
    )
    .with_hop_limits(ttl, hop_limit)
    .with_rfc5766_channel_numbers(settings.core.rfc5766_channel_numbers)
    .with_adjust_mode(match xdp.adjust {
        XdpAdjust::Head => AdjustMode::Head,
        XdpAdjust::Tail => AdjustMode::Tail,
        XdpAdjust::Auto => AdjustMode::Auto,
    });
    for port in ports {
        config = config.with_listen_port(port).with_context(|| {
            format!(
                "listen: with --xdp-interface at most {} distinct UDP listening ports are \
                 relayed in the kernel; {port} is one too many",
                XdpConfig::MAX_LISTEN_PORTS
            )
        })?;
    }
    Ok(config)
}

/// The addresses the relay's own address of each family is chosen from, first match first:
/// the `--relay-ip` addresses (the relayed sockets are bound there, so datagrams to peers
/// leave from them in user space too), then the specific listening addresses; the interface's
/// first address of a family where none of these is of it.
pub(crate) fn preferred_own_addresses(settings: &Settings) -> Vec<IpAddr> {
    // `relay_bind` is the `--relay-ip` addresses followed by the listening ones.
    settings
        .relay_bind
        .iter()
        .copied()
        .filter(|ip| !ip.is_unspecified())
        .collect()
}

/// Settles `--xdp-adjust auto` (see `XdpRelay::settle_adjust_mode`): once a second, until the
/// first datagram that grows has shown whether the driver moves the frame start (head from
/// then on) or refuses (tail from then on).
pub(crate) async fn settle_adjust_mode(kernel: Arc<XdpRelay>) {
    if kernel
        .configuration()
        .is_ok_and(|config| config.adjust_mode() != AdjustMode::Auto)
    {
        return;
    }
    let mut period = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        period.tick().await;
        let counters = match kernel.counters() {
            Ok(counters) => counters,
            Err(error) => {
                tracing::warn!(%error, "cannot read the XDP counters");
                continue;
            }
        };
        match kernel.settle_adjust_mode(&counters) {
            Ok(Some(AdjustMode::Tail)) => {
                tracing::warn!(
                    refused = counters.head_refused(),
                    "the driver refuses to move the frame start (no headroom): the kernel \
                     data plane resizes frames at the tail from now on; set --xdp-adjust tail \
                     to start so"
                );
                return;
            }
            Ok(Some(mode)) => {
                tracing::info!(
                    adjust = mode.as_str(),
                    "the driver moves the frame start: the kernel data plane resizes frames \
                     at the head from now on"
                );
                return;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot settle how the XDP program resizes frames")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Options;
    use clap::Parser;

    fn settings(args: &[&str]) -> Result<Settings> {
        let argv = ["turnpike", "--dev", "--xdp-interface", "lo"]
            .into_iter()
            .chain(args.iter().copied());
        Settings::from_options(Options::try_parse_from(argv)?)
    }

    fn kernel_configuration(args: &[&str]) -> Result<XdpConfig> {
        let settings = settings(args)?;
        let xdp = settings.xdp.clone().expect("--xdp-interface is set");
        configuration(&settings, &xdp)
    }

    #[test]
    fn every_udp_listening_port_is_relayed_in_the_kernel() {
        let config = kernel_configuration(&[
            "--listen",
            "127.0.0.1:3478,127.0.0.2:3479,[::1]:3478,127.0.0.3:443",
        ])
        .unwrap();
        assert_eq!(config.listen_ports().collect::<Vec<_>>(), [3478, 3479, 443]);
        assert_eq!(config.adjust_mode(), AdjustMode::Auto, "the default");

        let nine: Vec<String> = (0..9).map(|i| format!("127.0.0.1:{}", 3478 + i)).collect();
        let error = kernel_configuration(&["--listen", &nine.join(",")])
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("listen:"), "{error}");
        assert!(error.contains("3486"), "{error}");
    }

    #[test]
    fn the_resizing_mode_is_the_operators_choice() {
        for (flag, mode) in [
            ("head", AdjustMode::Head),
            ("tail", AdjustMode::Tail),
            ("auto", AdjustMode::Auto),
        ] {
            let config = kernel_configuration(&["--xdp-adjust", flag]).unwrap();
            assert_eq!(config.adjust_mode(), mode, "{flag}");
        }
        assert!(kernel_configuration(&["--xdp-adjust", "sideways"]).is_err());
    }

    #[test]
    fn the_relay_ip_comes_first_among_the_own_addresses() {
        let settings = settings(&[
            "--listen",
            "127.0.0.1:3478,[::1]:3478",
            "--relay-ip",
            "127.0.0.2",
        ])
        .unwrap();
        let preferred = preferred_own_addresses(&settings);
        assert_eq!(
            preferred,
            [
                "127.0.0.2".parse::<IpAddr>().unwrap(),
                "127.0.0.1".parse().unwrap(),
                "::1".parse().unwrap()
            ]
        );
    }
}
