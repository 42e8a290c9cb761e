//! The load generator's parts, for the `turnpike-load` binary and for tests that drive many
//! allocations through a relay: a minimal TURN client that allocates and binds a channel
//! ([`turn_client`]), UDP echo peers ([`echo`]), the windowed round-trip load ([`run`]), and the same over TCP and
//! TLS ([`stream_client`]).

pub mod echo;
pub mod run;
pub mod stream_client;
pub mod turn_client;
