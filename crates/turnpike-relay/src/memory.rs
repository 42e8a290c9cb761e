//! Giving memory back after a burst.
//!
//! Hash maps and queues keep their capacity when entries go: after a burst of allocations, or a
//! 40-second window of busy retransmission caching, their tables would stay at the size of the
//! peak for the life of the process. Every collection that shrinks with the live state is
//! shrunk here once it is at most a quarter full; to twice its length, so a collection that
//! swings around one size is not reallocated on every change, and the cost of shrinking is paid
//! at most once per halving (amortised O(1) per removal).

use core::hash::{BuildHasher, Hash};
use std::collections::{HashMap, VecDeque};

/// Capacity below which nothing is shrunk: small tables cost little and would only churn.
const KEEP: usize = 64;

pub(crate) fn shrink_map<K: Eq + Hash, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) {
    if map.capacity() > KEEP && map.len() * 4 <= map.capacity() {
        map.shrink_to((map.len() * 2).max(KEEP / 2));
    }
}

pub(crate) fn shrink_queue<T>(queue: &mut VecDeque<T>) {
    if queue.capacity() > KEEP && queue.len() * 4 <= queue.capacity() {
        queue.shrink_to((queue.len() * 2).max(KEEP / 2));
    }
}

/// Sizes of the core's internal collections, to test that memory follows what is alive.
///
/// Not a stable interface: fields come and go with the implementation.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Footprint {
    /// Deadlines scheduled (allocation families, permissions, channels).
    pub timers: usize,
    /// Responses kept for retransmissions.
    pub cached_transactions: usize,
    /// Entries in the lookup tables (by 5-tuple, port, user, and both route directions).
    pub table_entries: usize,
    /// Capacity of those tables and of the transaction cache, in entries.
    pub table_capacity: usize,
    /// Capacity of the command queue, in commands.
    pub command_capacity: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_emptied_after_a_burst_gives_its_table_back() {
        let mut map: HashMap<u32, u32> = HashMap::new();
        for i in 0..100_000 {
            map.insert(i, i);
        }
        for i in 0..100_000 {
            map.remove(&i);
            shrink_map(&mut map);
        }
        assert!(map.capacity() <= KEEP * 2, "capacity {}", map.capacity());
    }

    #[test]
    fn a_queue_drained_after_a_burst_gives_its_buffer_back() {
        let mut queue: VecDeque<u32> = (0..100_000).collect();
        while queue.pop_front().is_some() {
            shrink_queue(&mut queue);
        }
        assert!(
            queue.capacity() <= KEEP * 2,
            "capacity {}",
            queue.capacity()
        );
    }
}
