//! The pool of relayed ports, drawn at random (RFC 8656 §7.2 recommends it: predictable ports
//! help an attacker guess where to inject traffic).

use core::ops::RangeInclusive;

use rand::{Rng, RngCore};

/// Which ports of the range are taken, one bit each.
#[derive(Debug, Clone)]
pub(crate) struct PortPool {
    range: RangeInclusive<u16>,
    taken: Vec<u64>,
    free: usize,
}

/// Random draws before falling back to a scan: with the pool at most 90 % full, 16 draws all
/// miss with probability below 0.2 %.
const RANDOM_DRAWS: usize = 16;

impl PortPool {
    pub(crate) fn new(range: RangeInclusive<u16>) -> Self {
        let size = range.clone().count();
        Self {
            range,
            taken: vec![0; size.div_ceil(64)],
            free: size,
        }
    }

    fn index(&self, port: u16) -> Option<usize> {
        self.range
            .contains(&port)
            .then(|| usize::from(port - self.range.start()))
    }

    fn is_taken(&self, index: usize) -> bool {
        self.taken[index / 64] & (1 << (index % 64)) != 0
    }

    fn set(&mut self, index: usize, taken: bool) {
        let mask = 1 << (index % 64);
        if taken {
            self.taken[index / 64] |= mask;
        } else {
            self.taken[index / 64] &= !mask;
        }
    }

    pub(crate) fn contains(&self, port: u16) -> bool {
        self.range.contains(&port)
    }

    /// Takes a random free port, or `None` when every port is taken.
    pub(crate) fn take_random(&mut self, rng: &mut impl RngCore) -> Option<u16> {
        self.take_random_where(rng, |_, _| true)
    }

    /// Takes a random free even port (EVEN-PORT, RFC 8656 §14.6), or `None`.
    pub(crate) fn take_random_even(&mut self, rng: &mut impl RngCore) -> Option<u16> {
        let start = *self.range.start();
        self.take_random_where(rng, |_, index| (usize::from(start) + index) % 2 == 0)
    }

    /// Takes a random free even port whose successor is free and in the pool too, and that
    /// successor with it (EVEN-PORT with the R bit, RFC 8656 §7.2): returns the even port, or
    /// `None` when no such pair is left. The successor never leaves the pool's range, so a
    /// reservation stays inside the block of the thread that made it.
    pub(crate) fn take_random_even_pair(&mut self, rng: &mut impl RngCore) -> Option<u16> {
        let start = *self.range.start();
        let size = self.range.clone().count();
        let port = self.take_random_where(rng, |pool, index| {
            (usize::from(start) + index) % 2 == 0 && index + 1 < size && !pool.is_taken(index + 1)
        })?;
        let taken = self.take(port.checked_add(1)?);
        debug_assert!(taken, "the successor was checked free");
        Some(port)
    }

    fn take_random_where(
        &mut self,
        rng: &mut impl RngCore,
        eligible: impl Fn(&Self, usize) -> bool,
    ) -> Option<u16> {
        let size = self.range.clone().count();
        if self.free == 0 {
            return None;
        }
        let usable = |pool: &Self, index: usize| eligible(pool, index) && !pool.is_taken(index);
        let mut index = None;
        for _ in 0..RANDOM_DRAWS {
            let candidate = rng.random_range(0..size);
            if usable(self, candidate) {
                index = Some(candidate);
                break;
            }
        }
        let index = match index {
            Some(index) => index,
            None => {
                let start = rng.random_range(0..size);
                (0..size)
                    .map(|step| (start + step) % size)
                    .find(|&i| usable(self, i))?
            }
        };
        self.set(index, true);
        self.free -= 1;
        let offset = u16::try_from(index).ok()?;
        Some(self.range.start() + offset)
    }

    /// Marks `port` taken, e.g. because the I/O layer could not bind it. Returns whether it was
    /// free.
    pub(crate) fn take(&mut self, port: u16) -> bool {
        let Some(index) = self.index(port) else {
            return false;
        };
        if self.is_taken(index) {
            return false;
        }
        self.set(index, true);
        self.free -= 1;
        true
    }

    pub(crate) fn release(&mut self, port: u16) {
        let Some(index) = self.index(port) else {
            return;
        };
        if self.is_taken(index) {
            self.set(index, false);
            self.free += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn every_port_of_the_range_is_handed_out_once_then_none() {
        let mut pool = PortPool::new(50_000..=50_099);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut seen: Vec<u16> = (0..100)
            .map(|_| pool.take_random(&mut rng).unwrap())
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (50_000..=50_099).collect::<Vec<_>>());
        assert_eq!(pool.take_random(&mut rng), None);
        pool.release(50_042);
        assert_eq!(pool.take_random(&mut rng), Some(50_042));
    }

    #[test]
    fn ports_are_not_handed_out_in_order() {
        let mut pool = PortPool::new(49_152..=65_535);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let ports: Vec<u16> = (0..8)
            .map(|_| pool.take_random(&mut rng).unwrap())
            .collect();
        assert!(ports.windows(2).any(|pair| pair[1] != pair[0] + 1));
    }

    #[test]
    fn an_even_pair_is_taken_whole_and_never_crosses_the_end_of_the_range() {
        // 1000..=1004 holds the pairs (1000, 1001) and (1002, 1003); 1004 has no successor here.
        let mut pool = PortPool::new(1000..=1004);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        assert!(pool.take(1003));
        assert_eq!(pool.take_random_even_pair(&mut rng), Some(1000));
        assert!(!pool.take(1001), "the successor is taken with it");
        assert_eq!(pool.take_random_even_pair(&mut rng), None);
        pool.release(1003);
        assert_eq!(pool.take_random_even_pair(&mut rng), Some(1002));
        assert_eq!(pool.take_random_even_pair(&mut rng), None);
        assert_eq!(pool.take_random_even(&mut rng), Some(1004));
        assert_eq!(pool.take_random(&mut rng), None);
    }

    #[test]
    fn a_port_taken_by_hand_is_never_drawn() {
        let mut pool = PortPool::new(1000..=1001);
        assert!(pool.take(1000));
        assert!(!pool.take(1000));
        assert!(!pool.take(999));
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        assert_eq!(pool.take_random(&mut rng), Some(1001));
        assert_eq!(pool.take_random(&mut rng), None);
    }
}
