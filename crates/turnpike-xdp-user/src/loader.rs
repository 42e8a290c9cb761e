//! Loading the ELF object, attaching the relay program, and keeping its maps.
//!
//! # Why one object owns everything
//!
//! [`XdpRelay`] holds the loaded object (programs and the link that attaches one of them) and the
//! maps, so dropping it — or the process exiting — detaches the program and frees the maps:
//! nothing outlives the relay that filled it. The attachment is a BPF link (`bpf_link_create`),
//! which the kernel removes when its last file descriptor closes, even on a crash. (On kernels
//! without XDP links aya falls back to a netlink attachment, which only `Drop` removes; every
//! kernel this project supports has links.)
//!
//! All methods take `&self` except loading and attaching, so one `Arc<XdpRelay>` serves every
//! shard: the route maps sit behind one mutex, taken only on the control path (a channel bind,
//! refresh or expiry), never per packet.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray};
use aya::programs::{TestRun, TestRunOptions, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use turnpike_relay::ChannelRoute;
use turnpike_xdp_common::{
    AdjustMode, ChannelCacheSlot, ClientChannel, Counter, MIN_LINK_MTU, Outcome, OwnAddresses,
    PeerBinding, XdpConfig, maps, programs,
};

use crate::XdpError;
use crate::cache::Cache;
use crate::routes::{Entries, entries, entries_relayed_from};

/// How to attach the relay program to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// Native XDP, run by the driver before any socket buffer exists: the fast path. Fails on
    /// drivers without XDP support.
    #[default]
    Driver,
    /// Generic XDP, run by the kernel stack after the socket buffer is built: works on every
    /// interface, slower, for drivers without native XDP (drivers that only lack headroom for
    /// `bpf_xdp_adjust_head` keep native XDP with `AdjustMode::Tail`).
    Generic,
}

impl AttachMode {
    const fn xdp_mode(self) -> XdpMode {
        match self {
            Self::Driver => XdpMode::Driver,
            Self::Generic => XdpMode::Skb,
        }
    }

    /// The mode's name, for messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Driver => "driver",
            Self::Generic => "generic",
        }
    }
}

/// The programs in the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Program {
    /// `turnpike_relay`, the data plane.
    Relay,
    /// `turnpike_pass`, for the peer end of a veth (see the kernel crate's documentation).
    Pass,
    /// `turnpike_bench_swap`, the benchmark baseline.
    BenchSwap,
}

impl Program {
    /// The program's name in the object.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Relay => programs::RELAY,
            Self::Pass => programs::PASS,
            Self::BenchSwap => programs::BENCH_SWAP,
        }
    }
}

/// An XDP return code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpAction {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
    Other(u32),
}

impl XdpAction {
    const fn from_code(code: u32) -> Self {
        match code {
            0 => Self::Aborted,
            1 => Self::Drop,
            2 => Self::Pass,
            3 => Self::Tx,
            4 => Self::Redirect,
            other => Self::Other(other),
        }
    }
}

/// What a program did with one frame under `BPF_PROG_TEST_RUN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutput {
    pub action: XdpAction,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
}

/// Options for [`XdpRelay::load`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Capacity of each route map: the number of channels the kernel can relay at once. Bindings
    /// beyond it fail to install and are relayed by user space.
    pub max_channels: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_channels: maps::DEFAULT_MAX_CHANNELS,
        }
    }
}

/// The packet and byte counters of every [`Outcome`], summed over CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    values: [Counter; Outcome::COUNT as usize],
    head_refused: u64,
    head_grew: u64,
    adjust: AdjustMode,
    cached: (usize, usize),
}

impl Counters {
    /// The counter of one outcome.
    pub fn get(&self, outcome: Outcome) -> Counter {
        self.values[outcome.index() as usize]
    }

    /// Every outcome with its counter, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Outcome, Counter)> + '_ {
        Outcome::ALL
            .iter()
            .map(|outcome| (*outcome, self.get(*outcome)))
    }

    /// Datagrams the driver refused to grow at the head, which the program then relayed by
    /// resizing at the tail ([`AdjustMode::Auto`]; also counted under their outcome).
    pub fn head_refused(&self) -> u64 {
        self.head_refused
    }

    /// Datagrams the driver let the program grow at the head in [`AdjustMode::Auto`] (also
    /// counted under their outcome).
    pub fn head_grew(&self) -> u64 {
        self.head_grew
    }

    /// What [`AdjustMode::Auto`] settles on, given these counters: `Tail` once the driver refused
    /// to move the frame start (even if it moved it for other datagrams: a refusal on one queue
    /// or CPU is enough to make the head unreliable), else `Head` once it moved it, else nothing
    /// yet.
    pub fn settled_adjust_mode(&self) -> Option<AdjustMode> {
        if self.head_refused > 0 {
            Some(AdjustMode::Tail)
        } else if self.head_grew > 0 {
            Some(AdjustMode::Head)
        } else {
            None
        }
    }

    /// How the program resized frames when the counters were read.
    pub fn adjust_mode(&self) -> AdjustMode {
        self.adjust
    }

    /// Bindings the program finds in its caches when the counters were read, client to peer
    /// and peer to client (the others cost it a hash-map lookup per packet).
    pub fn cached_channels(&self) -> (usize, usize) {
        self.cached
    }

    /// Frames relayed by the kernel (all directions and families).
    pub fn relayed(&self) -> Counter {
        self.sum(true)
    }

    /// Frames passed to the kernel stack (all reasons).
    pub fn passed(&self) -> Counter {
        self.sum(false)
    }

    fn sum(&self, relayed: bool) -> Counter {
        self.iter()
            .filter(|(outcome, _)| outcome.is_relayed() == relayed)
            .fold(Counter::default(), |total, (_, counter)| Counter {
                packets: total.packets + counter.packets,
                bytes: total.bytes + counter.bytes,
            })
    }
}

/// The maps user space writes.
struct Maps {
    config: Array<MapData, XdpConfig>,
    own: Array<MapData, OwnAddresses>,
    /// What `own` holds (written only through [`XdpRelay::set_own_addresses`]): the caches
    /// must not hold a binding whose peer it includes.
    own_now: OwnAddresses,
    to_peer: HashMap<MapData, ClientChannel, PeerBinding>,
    to_client: HashMap<MapData, PeerBinding, ClientChannel>,
    channel_cache: Cache<ClientChannel, PeerBinding>,
    peer_cache: Cache<PeerBinding, ClientChannel>,
}

/// The loaded XDP data plane (see the crate documentation for how to drive it).
pub struct XdpRelay {
    path: PathBuf,
    ebpf: Ebpf,
    maps: Mutex<Maps>,
    counters: PerCpuArray<MapData, Counter>,
    attached: Option<(String, AttachMode)>,
}

impl std::fmt::Debug for XdpRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpRelay")
            .field("path", &self.path)
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

impl XdpRelay {
    /// Loads the object at `path`, creates its maps and loads `turnpike_relay` into the kernel
    /// (running the verifier). Nothing is attached yet and the configuration is unset, so the
    /// program would pass everything.
    ///
    /// # Errors
    ///
    /// [`XdpError::Object`] if the file cannot be read or parsed or a map cannot be created
    /// (not root, or no `CAP_BPF`), [`XdpError::MissingProgram`]/[`XdpError::MissingMap`] for an
    /// object built from other sources, [`XdpError::Verifier`] if the kernel refuses the program.
    pub fn load(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Self, XdpError> {
        let path = path.as_ref().to_path_buf();
        let ebpf = EbpfLoader::new()
            .map_max_entries(maps::CHANNEL_TO_PEER, options.max_channels)
            .map_max_entries(maps::PEER_TO_CHANNEL, options.max_channels)
            .load_file(&path)
            .map_err(|source| XdpError::Object {
                path: path.clone(),
                source: Box::new(source),
            })?;
        Self::from_ebpf(ebpf, path)
    }

    /// As [`XdpRelay::load`], from the object's bytes (an object embedded in the binary);
    /// `name` stands for the file in error messages.
    ///
    /// # Errors
    ///
    /// As [`XdpRelay::load`].
    pub fn load_bytes(object: &[u8], name: &str, options: &LoadOptions) -> Result<Self, XdpError> {
        let path = std::path::PathBuf::from(name);
        // The ELF parser wants the object aligned; a heap copy is, wherever the bytes came from.
        let object = object.to_vec();
        let ebpf = EbpfLoader::new()
            .map_max_entries(maps::CHANNEL_TO_PEER, options.max_channels)
            .map_max_entries(maps::PEER_TO_CHANNEL, options.max_channels)
            .load(&object)
            .map_err(|source| XdpError::Object {
                path: path.clone(),
                source: Box::new(source),
            })?;
        Self::from_ebpf(ebpf, path)
    }

    fn from_ebpf(mut ebpf: aya::Ebpf, path: std::path::PathBuf) -> Result<Self, XdpError> {
        let mut take = |name: &'static str| {
            ebpf.take_map(name).ok_or_else(|| XdpError::MissingMap {
                path: path.clone(),
                map: name,
            })
        };
        let config = take(maps::CONFIG)?;
        let own = take(maps::OWN_ADDRESSES)?;
        let to_peer = take(maps::CHANNEL_TO_PEER)?;
        let to_client = take(maps::PEER_TO_CHANNEL)?;
        let channel_cache = take(maps::CHANNEL_CACHE)?;
        let peer_cache = take(maps::PEER_CACHE)?;
        let counters = take(maps::COUNTERS)?;
        let maps = Maps {
            config: Array::try_from(config).map_err(|e| XdpError::map(maps::CONFIG, e))?,
            own: Array::try_from(own).map_err(|e| XdpError::map(maps::OWN_ADDRESSES, e))?,
            own_now: OwnAddresses::UNSET,
            to_peer: HashMap::try_from(to_peer)
                .map_err(|e| XdpError::map(maps::CHANNEL_TO_PEER, e))?,
            to_client: HashMap::try_from(to_client)
                .map_err(|e| XdpError::map(maps::PEER_TO_CHANNEL, e))?,
            channel_cache: Cache::new(
                maps::CHANNEL_CACHE,
                Array::try_from(channel_cache)
                    .map_err(|e| XdpError::map(maps::CHANNEL_CACHE, e))?,
                ClientChannel::cache_index,
            ),
            peer_cache: Cache::new(
                maps::PEER_CACHE,
                Array::try_from(peer_cache).map_err(|e| XdpError::map(maps::PEER_CACHE, e))?,
                PeerBinding::cache_index,
            ),
        };
        let counters =
            PerCpuArray::try_from(counters).map_err(|e| XdpError::map(maps::COUNTERS, e))?;
        let mut relay = Self {
            path,
            ebpf,
            maps: Mutex::new(maps),
            counters,
            attached: None,
        };
        relay.load_program(Program::Relay)?;
        Ok(relay)
    }

    /// Loads another program of the object into the kernel (the relay program is loaded by
    /// [`XdpRelay::load`]); needed before [`XdpRelay::test_run`] of that program. Loading a
    /// loaded program again does nothing.
    ///
    /// # Errors
    ///
    /// [`XdpError::MissingProgram`], [`XdpError::Verifier`].
    pub fn load_program(&mut self, program: Program) -> Result<(), XdpError> {
        if self.program(program).is_ok() {
            return Ok(());
        }
        let xdp = self.program_mut(program)?;
        xdp.load().map_err(|source| XdpError::Verifier {
            program: program.name(),
            source: Box::new(source),
        })
    }

    /// Attaches `turnpike_relay` to `interface`. Write the configuration and own addresses first
    /// (or right after: until then the program passes everything).
    ///
    /// # Errors
    ///
    /// [`XdpError::Attach`] naming the interface and mode: no such interface, no native XDP in
    /// its driver (use [`AttachMode::Generic`]), or an XDP program attached already;
    /// [`XdpError::MtuTooSmall`] for an interface whose MTU is below
    /// [`turnpike_xdp_common::MIN_LINK_MTU`].
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<(), XdpError> {
        // An interface whose MTU cannot be read is one that attaching fails for, with the
        // error that names the interface and mode.
        if let Ok(mtu) = crate::discover::mtu(interface)
            && mtu < MIN_LINK_MTU
        {
            return Err(XdpError::MtuTooSmall {
                interface: interface.to_owned(),
                mtu,
                minimum: MIN_LINK_MTU,
            });
        }
        self.attach_program(Program::Relay, interface, mode)
    }

    /// Attaches any program of the object to `interface`, loading it first if needed; for test
    /// topologies that need `turnpike_pass` on the peer end of a veth. Detached on drop, like
    /// the relay program.
    ///
    /// # Errors
    ///
    /// As [`XdpRelay::attach`], and as [`XdpRelay::load_program`].
    pub fn attach_program(
        &mut self,
        program: Program,
        interface: &str,
        mode: AttachMode,
    ) -> Result<(), XdpError> {
        self.load_program(program)?;
        let xdp = self.program_mut(program)?;
        xdp.attach(interface, mode.xdp_mode())
            .map_err(|source| XdpError::Attach {
                program: program.name(),
                interface: interface.to_owned(),
                mode: mode.as_str(),
                source: Box::new(source),
            })?;
        if program == Program::Relay {
            self.attached = Some((interface.to_owned(), mode));
        }
        Ok(())
    }

    /// The interface and mode `turnpike_relay` is attached with, if it is.
    pub fn attached(&self) -> Option<(&str, AttachMode)> {
        self.attached
            .as_ref()
            .map(|(interface, mode)| (interface.as_str(), *mode))
    }

    /// Writes the configuration (ports, hop limits). [`XdpConfig::UNSET`] turns relaying off:
    /// everything passes to user space.
    ///
    /// # Errors
    ///
    /// [`XdpError::Map`].
    pub fn configure(&self, config: XdpConfig) -> Result<(), XdpError> {
        self.lock()
            .config
            .set(0, config, 0)
            .map_err(|e| XdpError::map(maps::CONFIG, e))
    }

    /// The configuration the program reads.
    ///
    /// # Errors
    ///
    /// [`XdpError::Map`].
    pub fn configuration(&self) -> Result<XdpConfig, XdpError> {
        self.lock()
            .config
            .get(&0, 0)
            .map_err(|e| XdpError::map(maps::CONFIG, e))
    }

    /// Settles [`AdjustMode::Auto`] from what the driver did with the first datagrams that grew:
    /// [`AdjustMode::Tail`] once it refused to move the frame start (every later datagram would
    /// cost the same failed call before the tail), else [`AdjustMode::Head`] once it moved it
    /// (shrinking frames then stop paying for the tail). Returns the mode it switched to, if
    /// it did (at most once; never from another mode). Call it with fresh counters, as the
    /// daemon does once a second until it settles.
    ///
    /// # Errors
    ///
    /// [`XdpError::Map`].
    pub fn settle_adjust_mode(&self, counters: &Counters) -> Result<Option<AdjustMode>, XdpError> {
        let Some(settled) = counters.settled_adjust_mode() else {
            return Ok(None);
        };
        let mut maps = self.lock();
        let config = maps
            .config
            .get(&0, 0)
            .map_err(|e| XdpError::map(maps::CONFIG, e))?;
        if config.adjust_mode() != AdjustMode::Auto {
            return Ok(None);
        }
        maps.config
            .set(0, config.with_adjust_mode(settled), 0)
            .map_err(|e| XdpError::map(maps::CONFIG, e))?;
        Ok(Some(settled))
    }

    /// Writes the relay's own addresses (see [`crate::discover::own_addresses`]): the
    /// relayed address of each family for bindings installed from now on, and what the program
    /// tests peers against for hairpins. Bindings relayed from an address that is no longer one
    /// of them leave the maps (their channels go on in user space, and come back to the kernel
    /// from the new address at their next refresh); cached bindings whose peer the new
    /// addresses include are evicted from the caches (they stay in the route maps, where the
    /// program tests for hairpins).
    ///
    /// # Errors
    ///
    /// [`XdpError::Map`]. If a removal or eviction fails the addresses are not written; the
    /// bindings removed so far stay out until their next refresh.
    pub fn set_own_addresses(&self, own: OwnAddresses) -> Result<(), XdpError> {
        let mut maps = self.lock();
        if own != maps.own_now {
            let mut stale = Vec::new();
            for entry in maps.to_client.iter() {
                let (peer, client) = entry.map_err(|e| XdpError::map(maps::PEER_TO_CHANNEL, e))?;
                let relayed_elsewhere = peer
                    .relayed()
                    .is_some_and(|ip| own.of_family(ip.is_ipv6()) != Some(ip));
                if relayed_elsewhere {
                    stale.push((peer, client));
                }
            }
            for (peer, client) in stale {
                // Caches first: they must never hold a binding the route maps no longer have.
                maps.channel_cache.remove(&client, &peer)?;
                maps.peer_cache.remove(&peer, &client)?;
                remove_if(&mut maps.to_peer, maps::CHANNEL_TO_PEER, &client, &peer)?;
                remove_if(&mut maps.to_client, maps::PEER_TO_CHANNEL, &peer, &client)?;
            }
        }
        // The program skips the hairpin check for cached bindings, so any whose peer the new
        // addresses include leaves the caches before the addresses change; the hash maps keep
        // them, and there the program checks.
        maps.channel_cache
            .evict(|_, peer| own.includes_peer(peer))?;
        maps.peer_cache.evict(|peer, _| own.includes_peer(peer))?;
        maps.own
            .set(0, own, 0)
            .map_err(|e| XdpError::map(maps::OWN_ADDRESSES, e))?;
        maps.own_now = own;
        Ok(())
    }

    /// The own addresses the program currently uses.
    ///
    /// # Errors
    ///
    /// [`XdpError::Map`].
    pub fn own_addresses(&self) -> Result<OwnAddresses, XdpError> {
        self.lock()
            .own
            .get(&0, 0)
            .map_err(|e| XdpError::map(maps::OWN_ADDRESSES, e))
    }

    /// Binds a channel in both directions (an upsert: the core issues it again on every
    /// refresh). If the channel was bound to another peer before, that peer's entry is removed,
    /// so it cannot keep reaching the client through a channel that now means someone else.
    ///
    /// # Errors
    ///
    /// [`XdpError::Route`] for a route the maps cannot hold, [`XdpError::Map`] if a map is full
    /// (the binding is then absent in both directions and user space relays the channel).
    pub fn install_channel(&self, route: &ChannelRoute) -> Result<(), XdpError> {
        let mut maps = self.lock();
        let entries = entries(route, &maps.own_now)?;
        Self::install_entries(&mut maps, entries)
    }

    /// Benchmark support: [`XdpRelay::install_channel`] with the peer side relayed from
    /// `relayed` instead of the own address of its family, so that two bindings can lead a
    /// frame back to itself under `BPF_PROG_TEST_RUN` (`examples/xdp_cost.rs`). The daemon
    /// never calls it.
    ///
    /// # Errors
    ///
    /// As [`XdpRelay::install_channel`].
    #[doc(hidden)]
    pub fn install_channel_relayed_from(
        &self,
        route: &ChannelRoute,
        relayed: IpAddr,
    ) -> Result<(), XdpError> {
        let mut maps = self.lock();
        let entries = entries_relayed_from(route, relayed)?;
        Self::install_entries(&mut maps, entries)
    }

    fn install_entries(maps: &mut Maps, Entries { client, peer }: Entries) -> Result<(), XdpError> {
        // A cache slot must never hold a value its map no longer has, not even between the map
        // update and the slot update below.
        maps.channel_cache.forget_other(&client, &peer)?;
        maps.peer_cache.forget_other(&peer, &client)?;
        if let Ok(old) = maps.to_peer.get(&client, 0)
            && old != peer
        {
            maps.peer_cache.remove(&old, &client)?;
            remove_if(&mut maps.to_client, maps::PEER_TO_CHANNEL, &old, &client)?;
        }
        maps.to_client
            .insert(peer, client, 0)
            .map_err(|e| XdpError::map(maps::PEER_TO_CHANNEL, e))?;
        if let Err(error) = maps.to_peer.insert(client, peer, 0) {
            // Keep the two maps each other's inverse: no half-installed binding. The cache slot
            // goes first; if even that fails, the map entry stays with it, because a slot must
            // never outlive its map entry. Either way the caller learns of the failure below.
            if maps.peer_cache.remove(&peer, &client).is_ok() {
                let _ = maps.to_client.remove(&peer);
            }
            return Err(XdpError::map(maps::CHANNEL_TO_PEER, error));
        }
        // The caches only ever hold what the route maps hold, so they come last; and never a
        // hairpin, which the program checks for only outside them.
        if !maps.own_now.includes_peer(&peer) {
            maps.channel_cache.put(client, peer)?;
            maps.peer_cache.put(peer, client)?;
        }
        Ok(())
    }

    /// Unbinds a channel in both directions. Entries that now belong to another binding (the
    /// key was reused meanwhile) are left alone; removing a binding twice is not an error.
    ///
    /// # Errors
    ///
    /// [`XdpError::Route`], [`XdpError::Map`].
    pub fn remove_channel(&self, route: &ChannelRoute) -> Result<(), XdpError> {
        let mut maps = self.lock();
        let Entries { client, peer } = entries(route, &maps.own_now)?;
        // Caches first: they must never hold a binding the route maps no longer have.
        maps.channel_cache.remove(&client, &peer)?;
        maps.peer_cache.remove(&peer, &client)?;
        remove_if(&mut maps.to_peer, maps::CHANNEL_TO_PEER, &client, &peer)?;
        remove_if(&mut maps.to_client, maps::PEER_TO_CHANNEL, &peer, &client)
    }

    /// Test support: writes the client-to-peer cache slot of `key`'s binding directly, holding
    /// `value`'s peer end under `sequence`, outside the write protocol and the mirror, so the
    /// cache no longer agrees with the route maps. Only for tests of how the program reads a
    /// slot; drop the relay afterwards.
    ///
    /// # Errors
    ///
    /// [`XdpError::Route`], [`XdpError::Map`].
    #[doc(hidden)]
    pub fn write_channel_cache_slot_for_test(
        &self,
        key: &ChannelRoute,
        value: &ChannelRoute,
        sequence: u32,
    ) -> Result<(), XdpError> {
        let mut maps = self.lock();
        let client = entries(key, &maps.own_now)?.client;
        let peer = entries(value, &maps.own_now)?.peer;
        maps.channel_cache.set(
            client.cache_index(),
            ChannelCacheSlot::new(sequence, client, peer),
        )
    }

    /// The number of bindings the kernel finds in its caches, client to peer and peer to client
    /// (the others cost it a hash-map lookup).
    pub fn cached_channels(&self) -> (usize, usize) {
        let maps = self.lock();
        (maps.channel_cache.len(), maps.peer_cache.len())
    }

    /// The number of channels bound in the kernel.
    ///
    /// # Errors
    ///
    /// [`XdpError::Map`].
    pub fn channel_count(&self) -> Result<usize, XdpError> {
        let maps = self.lock();
        let mut count = 0;
        for key in maps.to_peer.keys() {
            key.map_err(|e| XdpError::map(maps::CHANNEL_TO_PEER, e))?;
            count += 1;
        }
        Ok(count)
    }

    /// The counters, summed over CPUs.
    ///
    /// # Errors
    ///
    /// [`XdpError::Map`].
    pub fn counters(&self) -> Result<Counters, XdpError> {
        let mut values = [Counter::default(); Outcome::COUNT as usize];
        for outcome in Outcome::ALL {
            let per_cpu = self
                .counters
                .get(&outcome.index(), 0)
                .map_err(|e| XdpError::map(maps::COUNTERS, e))?;
            let total = &mut values[outcome.index() as usize];
            for counter in per_cpu.iter() {
                total.packets += counter.packets;
                total.bytes += counter.bytes;
            }
        }
        let packets_at = |index: u32| -> Result<u64, XdpError> {
            Ok(self
                .counters
                .get(&index, 0)
                .map_err(|e| XdpError::map(maps::COUNTERS, e))?
                .iter()
                .map(|counter| counter.packets)
                .sum())
        };
        Ok(Counters {
            values,
            head_refused: packets_at(Outcome::HEAD_REFUSED_INDEX)?,
            head_grew: packets_at(Outcome::HEAD_GREW_INDEX)?,
            adjust: self.configuration()?.adjust_mode(),
            cached: self.cached_channels(),
        })
    }

    /// Runs a loaded program once on `frame` with `BPF_PROG_TEST_RUN` (nothing is sent; the maps
    /// and counters are the live ones) and returns its action and the frame it left.
    ///
    /// # Errors
    ///
    /// [`XdpError::MissingProgram`], [`XdpError::TestRun`] (the program is not loaded, or the
    /// frame is shorter than an Ethernet header or longer than a page).
    pub fn test_run(&self, program: Program, frame: &[u8]) -> Result<TestOutput, XdpError> {
        self.execute(program, frame, None, 1)
            .map(|(output, _)| output)
    }

    /// As [`XdpRelay::test_run`], but as if the frame had arrived on the interface with index
    /// `ingress_ifindex` (in the calling thread's network namespace), so that helpers that look
    /// at the receiving device, such as the MTU check, see that device.
    ///
    /// # Errors
    ///
    /// As [`XdpRelay::test_run`]; also if no such interface exists.
    pub fn test_run_on(
        &self,
        program: Program,
        frame: &[u8],
        ingress_ifindex: u32,
    ) -> Result<TestOutput, XdpError> {
        // `struct xdp_md`: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. The kernel requires data = 0 and data_end = the frame length.
        let end = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        let mut context = [0u8; 24];
        context[4..8].copy_from_slice(&end.to_ne_bytes());
        context[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        self.execute(program, frame, Some(&context), 1)
            .map(|(output, _)| output)
    }

    /// The kernel's average time per run over `repeat` runs in one `BPF_PROG_TEST_RUN` call.
    ///
    /// The kernel does not restore the frame between runs: run *n + 1* sees what run *n* left.
    /// That is the right measure for a program whose output, fed back, takes the same path (the
    /// swap program; a relay frame whose two bindings lead back to itself), and the wrong one
    /// otherwise: use [`XdpRelay::time_single_runs`] then.
    ///
    /// # Errors
    ///
    /// As [`XdpRelay::test_run`].
    pub fn time_repeated(
        &self,
        program: Program,
        frame: &[u8],
        repeat: u32,
    ) -> Result<Duration, XdpError> {
        self.execute(program, frame, None, repeat)
            .map(|(_, duration)| duration)
    }

    /// The mean of the kernel's timings of `runs` separate single runs, each on a fresh copy of
    /// `frame`. Each timing includes the kernel's clock reads around the run (tens of
    /// nanoseconds); time [`Program::Pass`] the same way to know how much.
    ///
    /// # Errors
    ///
    /// As [`XdpRelay::test_run`].
    pub fn time_single_runs(
        &self,
        program: Program,
        frame: &[u8],
        runs: u32,
    ) -> Result<Duration, XdpError> {
        let mut total = Duration::ZERO;
        for _ in 0..runs {
            total += self.execute(program, frame, None, 1)?.1;
        }
        Ok(total / runs.max(1))
    }

    /// One `BPF_PROG_TEST_RUN` call: what the last run left, and the mean time per run.
    fn execute(
        &self,
        program: Program,
        frame: &[u8],
        context: Option<&[u8]>,
        repeat: u32,
    ) -> Result<(TestOutput, Duration), XdpError> {
        let xdp = self.program(program)?;
        // The relay program grows a frame by at most 24 bytes; leave room for more.
        let mut out = vec![0u8; frame.len() + 256];
        let result = xdp
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: context,
                repeat,
                ..TestRunOptions::default()
            })
            .map_err(|source| XdpError::TestRun {
                program: program.name(),
                source: Box::new(source),
            })?;
        out.truncate(result.data_size_out as usize);
        let output = TestOutput {
            action: XdpAction::from_code(result.return_value),
            frame: out,
        };
        Ok((output, result.duration))
    }

    fn program(&self, program: Program) -> Result<&Xdp, XdpError> {
        let missing = || XdpError::MissingProgram {
            path: self.path.clone(),
            program: program.name(),
        };
        let xdp: &Xdp = self
            .ebpf
            .program(program.name())
            .ok_or_else(missing)?
            .try_into()
            .map_err(|_| missing())?;
        // A program that was never loaded has no file descriptor.
        xdp.fd().map_err(|source| XdpError::TestRun {
            program: program.name(),
            source: Box::new(source),
        })?;
        Ok(xdp)
    }

    fn program_mut(&mut self, program: Program) -> Result<&mut Xdp, XdpError> {
        let path = self.path.clone();
        let missing = move || XdpError::MissingProgram {
            path,
            program: program.name(),
        };
        let found = self
            .ebpf
            .program_mut(program.name())
            .ok_or_else(missing.clone())?;
        found.try_into().map_err(|_| missing())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        // A panic while holding the lock cannot leave a map half-written (each write is one
        // syscall, and a cache slot left mid-write is odd, which the kernel skips), so a
        // poisoned lock is still usable.
        self.maps.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Removes `key` from `map` if it maps to `expected`; a missing key is fine.
fn remove_if<K, V>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    key: &K,
    expected: &V,
) -> Result<(), XdpError>
where
    K: aya::Pod,
    V: aya::Pod + PartialEq,
{
    match map.get(key, 0) {
        Ok(value) if value == *expected => match map.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(error) => Err(XdpError::map(name, error)),
        },
        Ok(_) | Err(MapError::KeyNotFound) => Ok(()),
        Err(error) => Err(XdpError::map(name, error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_relay_can_be_shared_by_every_shard() {
        fn shareable<T: Send + Sync>() {}
        shareable::<XdpRelay>();
    }

    #[test]
    fn counters_sum_by_disposition() {
        let mut values = [Counter::default(); Outcome::COUNT as usize];
        values[Outcome::ClientToPeer4To6.index() as usize] = Counter {
            packets: 2,
            bytes: 300,
        };
        values[Outcome::PeerToClient6To6.index() as usize] = Counter {
            packets: 1,
            bytes: 100,
        };
        values[Outcome::NoChannel.index() as usize] = Counter {
            packets: 5,
            bytes: 500,
        };
        let counters = Counters {
            values,
            head_refused: 2,
            head_grew: 1,
            adjust: AdjustMode::Tail,
            cached: (0, 0),
        };
        assert_eq!(
            counters.relayed(),
            Counter {
                packets: 3,
                bytes: 400
            }
        );
        assert_eq!(counters.passed().packets, 5);
        // Not an outcome: in neither sum.
        assert_eq!(counters.head_refused(), 2);
        assert_eq!(counters.head_grew(), 1);
        assert_eq!(counters.get(Outcome::NoChannel).bytes, 500);
        assert_eq!(counters.iter().count(), Outcome::COUNT as usize);
    }

    #[test]
    fn auto_settles_on_the_tail_after_any_refusal_and_on_the_head_after_a_move() {
        let counters = |head_refused, head_grew| Counters {
            values: [Counter::default(); Outcome::COUNT as usize],
            head_refused,
            head_grew,
            adjust: AdjustMode::Auto,
            cached: (0, 0),
        };
        assert_eq!(counters(0, 0).settled_adjust_mode(), None);
        assert_eq!(counters(0, 3).settled_adjust_mode(), Some(AdjustMode::Head));
        assert_eq!(counters(1, 0).settled_adjust_mode(), Some(AdjustMode::Tail));
        // One CPU's queue refused while another's moved: the head cannot be relied on.
        assert_eq!(
            counters(1, 500).settled_adjust_mode(),
            Some(AdjustMode::Tail)
        );
    }

    #[test]
    fn unknown_action_codes_are_kept() {
        assert_eq!(XdpAction::from_code(3), XdpAction::Tx);
        assert_eq!(XdpAction::from_code(2), XdpAction::Pass);
        assert_eq!(XdpAction::from_code(9), XdpAction::Other(9));
    }
}
