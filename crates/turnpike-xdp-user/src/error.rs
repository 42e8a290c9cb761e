//! Errors of the loader, each naming what the operator has to look at: the object file, the
//! interface, the map or the route.

use std::path::PathBuf;

use aya::EbpfError;
use aya::maps::MapError;
use aya::programs::ProgramError;

/// What went wrong while loading, attaching or driving the XDP data plane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XdpError {
    /// The ELF object could not be read or parsed, or its maps could not be created.
    #[error("cannot load the XDP object {path}: {source}")]
    Object {
        path: PathBuf,
        #[source]
        source: Box<EbpfError>,
    },
    /// The object lacks a program this crate needs (built from another source tree?).
    #[error(
        "the XDP object {path} has no program `{program}` (rebuild it with scripts/build-xdp.sh)"
    )]
    MissingProgram {
        path: PathBuf,
        program: &'static str,
    },
    /// The object lacks a map this crate needs.
    #[error("the XDP object {path} has no map `{map}` (rebuild it with scripts/build-xdp.sh)")]
    MissingMap { path: PathBuf, map: &'static str },
    /// The kernel refused the program; the source usually carries the verifier's log.
    #[error("the kernel refused XDP program `{program}`: {source}")]
    Verifier {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    /// Attaching to the interface failed: it does not exist, its driver has no native XDP (try
    /// generic mode), or another XDP program is attached already.
    #[error(
        "cannot attach XDP program `{program}` to interface {interface} in {mode} mode: {source}"
    )]
    Attach {
        program: &'static str,
        interface: String,
        mode: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    /// Reading or writing a map failed.
    #[error("XDP map `{map}`: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    /// A route the maps cannot represent.
    #[error("cannot install channel route: {reason}")]
    Route { reason: &'static str },
    /// The interface's MTU is below the smallest the program is built for
    /// ([`turnpike_xdp_common::MIN_LINK_MTU`]): it skips the MTU check for datagrams up to that
    /// size.
    #[error(
        "interface {interface} has an MTU of {mtu} bytes; kernel relaying needs at least {minimum} \
         (run without --xdp-interface, or raise the MTU)"
    )]
    MtuTooSmall {
        interface: String,
        mtu: u32,
        minimum: u32,
    },
    /// Reading the interface's addresses or settings failed.
    #[error("interface {interface}: {source}")]
    Interface {
        interface: String,
        #[source]
        source: std::io::Error,
    },
    /// `BPF_PROG_TEST_RUN` failed.
    #[error("test run of XDP program `{program}`: {source}")]
    TestRun {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
}

impl XdpError {
    pub(crate) fn map(map: &'static str, source: MapError) -> Self {
        Self::Map {
            map,
            source: Box::new(source),
        }
    }
}
