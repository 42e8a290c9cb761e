//! The sans-IO TURN server core of Turnpike.
//!
//! [`Server`] is a state machine: it is fed datagrams with their addresses and the current
//! [`std::time::Instant`], and answers with what to relay ([`Forward`], inline, for data) and
//! what to do ([`Command`], queued, for everything else). It owns allocations, permissions and
//! channels (RFC 8656, RFC 6156), authenticates with long-term credentials (RFC 8489 §9.2, with
//! SHA-256 and stateless nonces), and refuses peers the operator's [`policy::PeerPolicy`] does
//! not allow. Read the driving contract on [`Server`] before writing a driver.

// Nothing here needs unsafe code; the only unsafe code outside the kernel program lives in
// turnpike-io, where the system calls are.
#![forbid(unsafe_code)]

mod addr;
mod allocation;
pub mod auth;
mod command;
mod config;
mod memory;
mod occurrence;
pub mod policy;
mod ports;
mod ratelimit;
mod refusal;
mod server;
mod stats;
mod timer;
mod transactions;

pub use addr::{FiveTuple, RelaySocket, Transport};
pub use command::{ChannelRoute, Command, Forward};
pub use config::{AllocationBudget, Config, ConfigError, Lifetimes, Quotas, RateLimit, UserBudget};
#[doc(hidden)]
pub use memory::Footprint;
pub use refusal::Refusal;
pub use server::Server;
pub use stats::{Drop, Relayed, Stats, method_label};
