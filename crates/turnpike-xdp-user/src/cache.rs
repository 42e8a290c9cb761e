//! The writing side of the two direct-mapped caches (layout, indexing and the sequence protocol:
//! `turnpike_xdp_common::cache`).
//!
//! A [`Cache`] mirrors in memory what each slot it ever wrote holds, so it decides without
//! reading the map whether a binding may take a slot (the slot is free, or holds the same key),
//! and whether removing a binding must clear one. Callers keep the one invariant the kernel
//! relies on: a slot holds a binding only while the route map beside it holds the same binding,
//! so [`Cache::put`] comes after the route map is written and [`Cache::remove`] before the
//! route map entry goes. Which bindings may be cached at all (none whose peer is the relay
//! itself) is the caller's business too; [`Cache::evict`] clears the ones that stop qualifying.

use std::collections::HashMap;

use aya::Pod;
use aya::maps::{Array, MapData};
use turnpike_xdp_common::cache::CacheSlot;

use crate::XdpError;

/// One cache map and the mirror of its slots.
pub(crate) struct Cache<K, V>
where
    CacheSlot<K, V>: Pod,
{
    name: &'static str,
    array: Array<MapData, CacheSlot<K, V>>,
    index: fn(&K) -> u32,
    /// The sequence number last written to each slot: even when the slot's contents are
    /// complete, odd while (or if a failure left it) mid-write, when the kernel ignores it.
    /// Kept for every slot, so each slot's sequence only ever moves forward.
    sequences: Vec<u32>,
    /// The slots holding a complete binding, and which.
    held: HashMap<u32, (K, V)>,
}

impl<K, V> Cache<K, V>
where
    K: Copy + PartialEq + Default,
    V: Copy + PartialEq + Default,
    CacheSlot<K, V>: Pod,
{
    pub(crate) fn new(
        name: &'static str,
        array: Array<MapData, CacheSlot<K, V>>,
        index: fn(&K) -> u32,
    ) -> Self {
        let slots = array.len() as usize;
        Self {
            name,
            array,
            index,
            sequences: vec![0; slots],
            held: HashMap::new(),
        }
    }

    /// Caches `key` → `value` if its slot is free or already holds `key`; returns whether the
    /// slot now holds it. The route map must hold the binding already.
    ///
    /// # Errors
    ///
    /// [`XdpError::Map`] if a write fails. The slot is then left odd (ignored by the kernel),
    /// or unchanged if the first write failed: free, or holding another key, or (unless
    /// [`Cache::forget_other`] ran first) an older value of `key`.
    pub(crate) fn put(&mut self, key: K, value: V) -> Result<bool, XdpError> {
        let index = (self.index)(&key);
        if index as usize >= self.sequences.len() {
            // The index functions stay inside the arrays the program declares; an object with
            // smaller arrays simply caches less.
            return Ok(false);
        }
        match self.held.get(&index).copied() {
            Some((held, current)) if held == key && current == value => Ok(true),
            Some((held, _)) if held != key => Ok(false),
            _ => self.write(index, Some((key, value))).map(|()| true),
        }
    }

    /// Clears the slot of `key` if it holds `key` with a value other than `value`: call before
    /// the route map's entry for `key` changes to `value`, so the slot cannot keep the old value
    /// after the map has the new one.
    ///
    /// # Errors
    ///
    /// As [`Cache::remove`].
    pub(crate) fn forget_other(&mut self, key: &K, value: &V) -> Result<(), XdpError> {
        let index = (self.index)(key);
        match self.held.get(&index).copied() {
            Some((held, current)) if held == *key && current != *value => self.write(index, None),
            _ => Ok(()),
        }
    }

    /// Clears the slot of `key` if it holds exactly `key` → `value`; call before the route map
    /// entry is removed.
    ///
    /// # Errors
    ///
    /// [`XdpError::Map`]: if the first write failed the slot still holds the binding, so the
    /// caller must not remove the route map entry either.
    pub(crate) fn remove(&mut self, key: &K, value: &V) -> Result<(), XdpError> {
        let index = (self.index)(key);
        match self.held.get(&index).copied() {
            Some(held) if held == (*key, *value) => self.write(index, None),
            _ => Ok(()),
        }
    }

    /// Clears every slot whose binding `unwanted` picks.
    ///
    /// # Errors
    ///
    /// [`XdpError::Map`] from the first write that fails; slots cleared before it stay clear.
    pub(crate) fn evict(&mut self, unwanted: impl Fn(&K, &V) -> bool) -> Result<(), XdpError> {
        let doomed: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, (key, value))| unwanted(key, value))
            .map(|(index, _)| *index)
            .collect();
        doomed
            .into_iter()
            .try_for_each(|index| self.write(index, None))
    }

    /// The number of bindings the cache holds.
    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }

    /// Writes `contents` into slot `index` in the three steps of the sequence protocol, each a
    /// separate update (a syscall, so each is complete and visible before the next starts).
    /// `index` is inside the array (the callers found the slot held, or checked).
    fn write(&mut self, index: u32, contents: Option<(K, V)>) -> Result<(), XdpError> {
        let slot = |sequence: u32, contents: Option<(K, V)>| {
            let (key, value) = contents.unwrap_or_default();
            CacheSlot::new(sequence, key, value)
        };
        let mut sequence = self.sequences[index as usize];
        if sequence & 1 == 0 {
            // 1. Odd sequence, contents as they are: readers from now on skip the slot. Until
            // this write succeeds the slot still holds what the mirror says.
            let current = self.held.get(&index).copied();
            sequence = sequence.wrapping_add(1);
            self.set(index, slot(sequence, current))?;
            self.held.remove(&index);
            self.sequences[index as usize] = sequence;
        }
        // 2. New contents under the odd sequence.
        self.set(index, slot(sequence, contents))?;
        // 3. Even sequence: readers use the slot again.
        sequence = sequence.wrapping_add(1);
        self.set(index, slot(sequence, contents))?;
        self.sequences[index as usize] = sequence;
        if let Some(binding) = contents {
            self.held.insert(index, binding);
        }
        Ok(())
    }

    /// One update of slot `index`, outside the protocol and the mirror (the protocol's steps,
    /// and tests of the kernel's side of it).
    pub(crate) fn set(&mut self, index: u32, slot: CacheSlot<K, V>) -> Result<(), XdpError> {
        self.array
            .set(index, slot, 0)
            .map_err(|error| XdpError::map(self.name, error))
    }
}
