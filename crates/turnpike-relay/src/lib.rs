//! The sans-IO TURN server core of Turnpike.
