//! Memory the relay core holds per allocation, loaded as the `core` benchmark loads it: 16,384
//! allocations with 4 channels (and so 4 permissions) each, made through real signed requests.
//!
//! A counting global allocator tracks the bytes requested and not yet freed (allocator
//! overhead is not included). Run with
//! `cargo run --release -p turnpike-relay --example memory`; results are in docs/benchmarks.md.

#![expect(
    clippy::expect_used,
    reason = "benchmark fixtures: a failure to build one is a bug in the example"
)]

#[path = "../benches/support/mod.rs"]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{ALLOCATIONS, CHANNELS_PER_ALLOCATION};

/// The system allocator, counting the bytes live at any moment.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counter has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`; `pointer` came from `System` with this layout.
        unsafe { System.dealloc(pointer, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `alloc`; `pointer` came from `System` with this layout.
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn per_allocation(bytes: usize) -> usize {
    bytes / ALLOCATIONS
}

/// Loads a server built from `config` and prints what it holds, empty, loaded, and once the
/// responses cached for retransmissions have expired.
fn measure(label: &str, config: turnpike_relay::Config) {
    let now = Instant::now();
    let baseline = live();
    let mut server = support::server_with(config, now);
    let empty = live() - baseline;
    let flows = support::load(&mut server, now);
    drop(flows);
    let loaded = live() - baseline - empty;
    server.handle_timeout(now + Duration::from_secs(41));
    drop(support::drain(&mut server));
    assert_eq!(
        server.allocation_count(),
        ALLOCATIONS,
        "allocations outlive the cache"
    );
    let settled = live() - baseline - empty;
    println!("{label}:");
    println!("  empty server:                      {empty:>11} bytes");
    println!(
        "  loaded, responses still cached:    {loaded:>11} bytes, {:>5} per allocation",
        per_allocation(loaded)
    );
    println!(
        "  loaded, cached responses expired:  {settled:>11} bytes, {:>5} per allocation",
        per_allocation(settled)
    );
    drop(server);
}

fn main() {
    println!(
        "{ALLOCATIONS} allocations, {CHANNELS_PER_ALLOCATION} channels and {CHANNELS_PER_ALLOCATION} \
         permissions each; bytes requested from the allocator\n"
    );
    measure("default configuration", support::config());
    let mut without_cache = support::config();
    without_cache.quotas.cached_transactions = 0;
    measure("no retransmission cache", without_cache);
}
