//! The load generator's parts, for the `turnpike-load` binary and for tests that drive many
//! allocations through a relay: a minimal TURN client that allocates and binds a channel
//! ([`turn_client`]), UDP echo peers ([`echo`]) and the windowed round-trip load ([`run`]).

pub mod echo;
pub mod run;
pub mod turn_client;
