//! Responses kept to answer retransmitted requests without repeating their side effects
//! (RFC 8489 §6.3.1: a server should remember responses for 40 s).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use turnpike_proto::TransactionId;

use crate::addr::FiveTuple;
use crate::memory::{shrink_map, shrink_queue};

type Key = (FiveTuple, TransactionId);

/// Every entry lives equally long, so insertion order is expiry order and a queue suffices.
///
/// Bounded twice: by `capacity` entries, and by what arrived in the last `Lifetimes::transaction`
/// (40 s); both tables shrink when it empties, so a burst's memory comes back.
#[derive(Debug)]
pub(crate) struct TransactionCache {
    responses: HashMap<Key, Box<[u8]>>,
    order: VecDeque<(Instant, Key)>,
    capacity: usize,
}

impl TransactionCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            responses: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    pub(crate) fn get(&self, five_tuple: FiveTuple, id: TransactionId) -> Option<&[u8]> {
        self.responses
            .get(&(five_tuple, id))
            .map(|response| &**response)
    }

    pub(crate) fn insert(
        &mut self,
        expires_at: Instant,
        five_tuple: FiveTuple,
        id: TransactionId,
        response: Vec<u8>,
    ) {
        if self.capacity == 0 {
            return;
        }
        while self.responses.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_front() else {
                break;
            };
            self.responses.remove(&oldest);
        }
        if self
            .responses
            .insert((five_tuple, id), response.into_boxed_slice())
            .is_none()
        {
            self.order.push_back((expires_at, (five_tuple, id)));
        }
    }

    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some((expires_at, key)) = self.order.front() {
            if *expires_at > now {
                break;
            }
            self.responses.remove(key);
            self.order.pop_front();
        }
        shrink_map(&mut self.responses);
        shrink_queue(&mut self.order);
    }

    pub(crate) fn len(&self) -> usize {
        self.responses.len()
    }

    /// Entries the tables have room for.
    pub(crate) fn capacity(&self) -> usize {
        self.responses.capacity() + self.order.capacity()
    }

    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.order.front().map(|(at, _)| *at)
    }
}
