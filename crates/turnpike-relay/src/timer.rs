//! Deadlines of allocations, permissions and channels, in a heap.
//!
//! Refreshing something does not search the heap: it pushes a new deadline and leaves the old
//! entry to be discarded when it surfaces (the owner's current deadline no longer matches).
//! `poll_timeout` is then a peek, and expiring n things costs O(n log n), however many
//! allocations exist.

use core::cmp::Reverse;
use core::net::IpAddr;
use std::collections::BinaryHeap;
use std::time::Instant;

use turnpike_proto::{AddressFamily, ChannelNumber};

use crate::allocation::AllocationId;

/// What a deadline belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// One family of an allocation's relayed addresses expires.
    Allocation {
        id: AllocationId,
        family: AddressFamily,
    },
    /// A permission expires.
    Permission { id: AllocationId, peer: IpAddr },
    /// A channel binding expires, or its cool-down ends.
    Channel {
        id: AllocationId,
        channel: ChannelNumber,
    },
}

#[derive(Debug, Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<(Instant, Timer)>>,
}

impl TimerQueue {
    pub(crate) fn schedule(&mut self, at: Instant, timer: Timer) {
        self.heap.push(Reverse((at, timer)));
    }

    /// The earliest deadline, possibly one that has since been superseded (waking up for it
    /// is harmless and keeps this O(1)).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns the earliest timer due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, Timer)> {
        let Reverse((at, _)) = self.heap.peek()?;
        if *at > now {
            return None;
        }
        self.heap.pop().map(|Reverse(entry)| entry)
    }
}
