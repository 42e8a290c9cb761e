//! Attaching to real interfaces and reading their addresses, each test in a network namespace
//! private to its thread (created with `unshare(CLONE_NEWNET)`, gone when the thread ends), so
//! nothing touches the host's interfaces.
//!
//! Needs root, `ip`, and `TURNPIKE_XDP_ELF` (see `common::load_relay`).

#![expect(
    clippy::expect_used,
    reason = "test code: a panic is how a test reports a failure"
)]

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use common::{load_relay, private_namespace, run_command};
use turnpike_xdp_user::{AttachMode, XdpError, discover};

fn ip_output(args: &[&str]) -> String {
    let output = Command::new("ip").args(args).output().expect("ip runs");
    assert!(output.status.success(), "ip {args:?} failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn veth_pair(a: &str, b: &str) {
    run_command("ip", &["link", "add", a, "type", "veth", "peer", "name", b]);
    run_command("ip", &["link", "set", a, "up"]);
    run_command("ip", &["link", "set", b, "up"]);
}

#[test]
fn an_interface_below_the_minimum_mtu_is_refused() {
    let Some(mut relay) = load_relay() else {
        return;
    };
    if !private_namespace() {
        return;
    }
    veth_pair("tp-mtu0", "tp-mtu1");
    run_command("ip", &["link", "set", "tp-mtu0", "mtu", "1279"]);
    let error = relay.attach("tp-mtu0", AttachMode::Generic).unwrap_err();
    assert!(
        matches!(
            error,
            XdpError::MtuTooSmall {
                mtu: 1279,
                minimum: 1280,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("tp-mtu0"), "{error}");
    assert_eq!(relay.attached(), None);
    // At the minimum it attaches.
    run_command("ip", &["link", "set", "tp-mtu0", "mtu", "1280"]);
    relay.attach("tp-mtu0", AttachMode::Generic).unwrap();
}

#[test]
fn attaching_to_a_missing_interface_names_it() {
    let Some(mut relay) = load_relay() else {
        return;
    };
    let error = relay.attach("tp-missing0", AttachMode::Driver).unwrap_err();
    assert!(matches!(error, XdpError::Attach { .. }), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("tp-missing0") && text.contains("driver"),
        "{text}"
    );
}

#[test]
fn loading_a_missing_object_names_the_file() {
    let error = turnpike_xdp_user::XdpRelay::load(
        "/nonexistent/turnpike-xdp",
        &turnpike_xdp_user::LoadOptions::default(),
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/turnpike-xdp"),
        "{error}"
    );
}

#[test]
fn relay_attaches_in_driver_mode_and_detaches_when_dropped() {
    let Some(mut relay) = load_relay() else {
        return;
    };
    if !private_namespace() {
        return;
    }
    veth_pair("tp-drv0", "tp-drv1");
    relay.attach("tp-drv0", AttachMode::Driver).unwrap();
    assert_eq!(relay.attached(), Some(("tp-drv0", AttachMode::Driver)));
    let shown = ip_output(&["-details", "link", "show", "tp-drv0"]);
    assert!(
        shown.contains("xdp") && shown.contains("prog/xdp"),
        "{shown}"
    );
    // A second program cannot take the interface while the link holds it.
    let Some(mut second) = load_relay() else {
        return;
    };
    assert!(second.attach("tp-drv0", AttachMode::Driver).is_err());
    drop(second);
    drop(relay);
    let shown = ip_output(&["-details", "link", "show", "tp-drv0"]);
    assert!(
        !shown.contains("prog/xdp"),
        "still attached after drop: {shown}"
    );
}

#[test]
fn relay_attaches_in_generic_mode() {
    let Some(mut relay) = load_relay() else {
        return;
    };
    if !private_namespace() {
        return;
    }
    veth_pair("tp-gen0", "tp-gen1");
    relay.attach("tp-gen0", AttachMode::Generic).unwrap();
    let shown = ip_output(&["-details", "link", "show", "tp-gen0"]);
    assert!(shown.contains("xdpgeneric"), "{shown}");
}

#[test]
fn own_addresses_are_the_interfaces_unicast_ones() {
    if load_relay().is_none() || !private_namespace() {
        return;
    }
    veth_pair("tp-own0", "tp-own1");
    // Link-local addresses (the kernel adds fe80:: itself) must never be chosen, nor may an
    // address of another interface.
    run_command(
        "ip",
        &["address", "add", "169.254.7.7/16", "dev", "tp-own0"],
    );
    run_command("ip", &["address", "add", "192.0.2.5/24", "dev", "tp-own0"]);
    run_command("ip", &["address", "add", "192.0.2.6/24", "dev", "tp-own0"]);
    run_command(
        "ip",
        &["address", "add", "198.51.100.5/24", "dev", "tp-own1"],
    );
    run_command(
        "ip",
        &[
            "address",
            "add",
            "2001:db8::5/64",
            "dev",
            "tp-own0",
            "nodad",
        ],
    );

    let listed = discover::interface_addresses("tp-own0").unwrap();
    assert_eq!(
        listed.ipv4,
        vec![Ipv4Addr::new(192, 0, 2, 5), Ipv4Addr::new(192, 0, 2, 6)]
    );
    assert_eq!(
        listed.ipv6,
        vec!["2001:db8::5".parse::<Ipv6Addr>().unwrap()]
    );

    let own = discover::own_addresses("tp-own0", &[]).unwrap();
    assert_eq!(own.ipv4(), Some(Ipv4Addr::new(192, 0, 2, 5)));
    assert_eq!(own.ipv6(), Some("2001:db8::5".parse().unwrap()));
    // A specific listening address on the interface is preferred.
    let own =
        discover::own_addresses("tp-own0", &[IpAddr::V4(Ipv4Addr::new(192, 0, 2, 6))]).unwrap();
    assert_eq!(own.ipv4(), Some(Ipv4Addr::new(192, 0, 2, 6)));
}
