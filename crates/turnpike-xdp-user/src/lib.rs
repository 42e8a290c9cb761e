//! User space of Turnpike's kernel data plane: loads the XDP program, attaches it to an
//! interface, and keeps its maps in step with the relay core.
//!
//! # Why a kernel data plane
//!
//! Once a client has bound a channel, every datagram of that channel is a fixed rewrite: strip or
//! add a 4-byte header, swap addresses and ports, fix lengths and checksums. The XDP program
//! (`crates/turnpike-xdp`) does that in the driver, before the kernel allocates a socket buffer,
//! and sends the frame straight back out (`XDP_TX`), so relayed data never reaches a socket,
//! a system call or a relay thread. Everything else — STUN, Data indications, permissions,
//! hairpins, anything odd — goes up unchanged (`XDP_PASS`) to the user-space relay, which stays
//! the authority: the kernel only knows what user space has put in its maps.
//!
//! # Driving it from the daemon
//!
//! At start-up, when an XDP interface is configured (fail start-up if any step fails: an
//! operator who asked for the kernel path and silently did not get it would be misled):
//!
//! 1. [`XdpRelay::load`] with the ELF path (from `scripts/build-xdp.sh`) and [`LoadOptions`]
//!    (`max_channels` sized to the relay's quotas). This runs the verifier; the error carries
//!    its log.
//! 2. [`XdpRelay::configure`] with
//!    `XdpConfig::new(first_listen_port, relay_low, relay_high)`, further UDP listening ports
//!    added with `with_listen_port` (up to [`XdpConfig::MAX_LISTEN_PORTS`]), then
//!    `.with_hop_limits(ttl, hop_limit)` (from [`discover::default_hop_limits`]`(interface)`)
//!    and `.with_adjust_mode(mode)` ([`AdjustMode`]: head, tail, or auto).
//! 3. [`XdpRelay::set_own_addresses`] with [`discover::own_addresses`]`(interface, &preferred)`,
//!    `preferred` being the `--relay-ip` addresses, then the specific listening addresses: each
//!    binding's datagrams to its peer leave from the own address of the peer's family. A
//!    family without an address keeps its peers' channels in user space.
//! 4. [`XdpRelay::attach`]`(interface, AttachMode::Driver)` (or `Generic` for drivers without
//!    native XDP; an interface whose MTU is below 1280 is refused). From here on the program
//!    relays bound channels.
//! 5. Share it: `Arc<XdpRelay>` in every shard; every method used below takes `&self`.
//!
//! While running, in each shard's `execute_commands`, in command order (the order is the
//! guarantee: a binding is in the kernel before its ChannelBind success is sent, and gone before
//! anything after its expiry is processed):
//!
//! - `Command::InstallChannel(route)` → [`XdpRelay::install_channel`]`(&route)` (the route maps,
//!   then the caches in front of them where the binding's slots are free and its peer is none of
//!   the own addresses last set: the program tests for hairpins only outside the caches);
//! - `Command::RemoveChannel(route)` → [`XdpRelay::remove_channel`]`(&route)`.
//!
//! An error there is not fatal: log it and count it; the channel then simply stays on the
//! user-space path (a full map, typically). Nothing else needs mirroring: permissions,
//! allocations and relayed sockets stay in user space, which sees every datagram the kernel does
//! not relay.
//!
//! Periodically (the admin tick, once a second): [`XdpRelay::counters`] for metrics (relayed and
//! passed frames per outcome, [`turnpike_xdp_common::Outcome::as_str`] giving label values, and
//! how many bindings sit in the program's caches) and, with the same counters,
//! [`XdpRelay::settle_adjust_mode`] (auto becomes tail once the driver refused the head, head
//! once it moved it); and
//! now and then (say every 30 s) re-run [`discover::own_addresses`] and write it if it changed
//! ([`XdpRelay::set_own_addresses`] first removes the bindings relayed from an address that is
//! gone and evicts from the caches any binding whose peer the new addresses include).
//!
//! At shutdown, drop the `XdpRelay`: the program is detached and the maps freed (the kernel does
//! the same if the process dies). Datagrams in flight then take the user-space path, which
//! already has every binding.
//!
//! # Testing and measuring
//!
//! [`XdpRelay::test_run`] runs a program on a frame with `BPF_PROG_TEST_RUN` (no interface, no
//! traffic): `tests/relay_paths.rs` checks every direction and family pair byte for byte and
//! every pass reason. [`XdpRelay::time_repeated`] and [`XdpRelay::time_single_runs`] measure the
//! in-kernel cost; `examples/xdp_cost.rs` compares the relay with the trivial swap program.

mod cache;
mod error;
mod loader;
mod routes;

pub mod discover;

pub use error::XdpError;
pub use loader::{AttachMode, Counters, LoadOptions, Program, TestOutput, XdpAction, XdpRelay};
pub use turnpike_xdp_common::{AdjustMode, Counter, Outcome, OwnAddresses, XdpConfig};
