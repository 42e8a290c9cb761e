//! Deadlines of allocations, permissions, channels and port reservations.
//!
//! Each thing that can expire has at most one deadline here: scheduling it again moves its
//! deadline, and removing the thing cancels it. So the queue holds one entry per live
//! allocation family, permission and channel, however many Refresh, CreatePermission and
//! ChannelBind requests came (a heap that kept the superseded entries until they surfaced grew
//! by some 48 bytes per request, for up to an allocation's lifetime). Both maps are ordered, so
//! the order timers fire in is a function of the deadlines and the timers alone.

use core::net::IpAddr;
use std::collections::{BTreeMap, BTreeSet};
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
    /// A port reserved by EVEN-PORT with the R bit is freed, unless its token was used.
    Reservation { token: [u8; 8] },
}

#[derive(Debug, Default)]
pub(crate) struct TimerQueue {
    /// Every deadline, earliest first.
    by_deadline: BTreeSet<(Instant, Timer)>,
    /// The deadline of each timer, to find its entry in `by_deadline` when it moves.
    deadlines: BTreeMap<Timer, Instant>,
}

impl TimerQueue {
    /// Sets `timer` to fire at `at`, replacing its earlier deadline if it had one.
    pub(crate) fn schedule(&mut self, at: Instant, timer: Timer) {
        if let Some(old) = self.deadlines.insert(timer, at) {
            self.by_deadline.remove(&(old, timer));
        }
        self.by_deadline.insert((at, timer));
    }

    /// Removes `timer`, if it is scheduled: what it was for is gone.
    pub(crate) fn cancel(&mut self, timer: Timer) {
        if let Some(at) = self.deadlines.remove(&timer) {
            self.by_deadline.remove(&(at, timer));
        }
    }

    /// The earliest deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(at, _)| *at)
    }

    /// Removes and returns the earliest timer due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, Timer)> {
        let (at, _) = self.by_deadline.first()?;
        if *at > now {
            return None;
        }
        let (at, timer) = self.by_deadline.pop_first()?;
        self.deadlines.remove(&timer);
        Some((at, timer))
    }

    /// Timers scheduled now.
    pub(crate) fn len(&self) -> usize {
        self.deadlines.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn allocation(id: u64) -> Timer {
        Timer::Allocation {
            id: AllocationId(id),
            family: AddressFamily::V4,
        }
    }

    #[test]
    fn rescheduling_moves_the_one_deadline_a_timer_has() {
        let mut queue = TimerQueue::default();
        let start = Instant::now();
        for seconds in 1..=1000 {
            queue.schedule(start + Duration::from_secs(seconds), allocation(1));
        }
        assert_eq!(queue.len(), 1);
        assert_eq!(
            queue.next_deadline(),
            Some(start + Duration::from_secs(1000))
        );
        assert_eq!(queue.pop_due(start + Duration::from_secs(999)), None);
        assert_eq!(
            queue.pop_due(start + Duration::from_secs(1000)),
            Some((start + Duration::from_secs(1000), allocation(1)))
        );
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn a_cancelled_timer_never_fires() {
        let mut queue = TimerQueue::default();
        let start = Instant::now();
        queue.schedule(start, allocation(1));
        queue.schedule(start, allocation(2));
        queue.cancel(allocation(1));
        queue.cancel(allocation(3));
        assert_eq!(queue.pop_due(start), Some((start, allocation(2))));
        assert_eq!(queue.pop_due(start), None);
        assert_eq!(queue.next_deadline(), None);
    }

    #[test]
    fn timers_due_together_fire_in_timer_order() {
        let mut queue = TimerQueue::default();
        let start = Instant::now();
        for id in [5, 3, 9, 1] {
            queue.schedule(start, allocation(id));
        }
        let fired: Vec<Timer> = std::iter::from_fn(|| queue.pop_due(start))
            .map(|(_, timer)| timer)
            .collect();
        assert_eq!(fired, [1, 3, 5, 9].map(allocation));
    }
}
