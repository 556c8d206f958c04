//! Replay protection for transport counters: the same sliding window as the Python reference
//! (`tunplug.wireguard.replay.ReplayWindow`), so both data paths accept exactly the same
//! counters: any counter up to `size` behind the highest accepted one, each at most once, none
//! at or beyond `limit`. Checked only after the AEAD tag verified.
//!
//! The window is a ring of 64-bit words (bit `c % bits` for counter `c`); moving forward clears
//! the words the window leaves, so the work per packet is constant (wireguard-go's layout).

/// wireguard-go's window: (128 - 1) x 64 counters behind the newest.
pub const WINDOW_SIZE: u64 = (128 - 1) * 64;
const WORDS: usize = 128;
const BITS: u64 = (WORDS as u64) * 64;

#[derive(Debug, Clone)]
pub struct ReplayWindow {
    size: u64,
    limit: u64,
    /// The highest accepted counter plus one (0: none yet), so "none" needs no sign.
    next: u64,
    ring: [u64; WORDS],
}

impl ReplayWindow {
    /// `size` must be below the ring's 8192 bits.
    pub fn new(size: u64, limit: u64) -> Self {
        assert!(size < BITS, "replay window size {size} is too large");
        Self {
            size,
            limit,
            next: 0,
            ring: [0; WORDS],
        }
    }

    /// Record `counter`; `true` if it is fresh, `false` for a replay or one too old or too high.
    pub fn check(&mut self, counter: u64) -> bool {
        if counter >= self.limit {
            return false;
        }
        if counter >= self.next {
            // Forward: clear every slot between the old newest and `counter`, then set it.
            let gap = counter - self.next;
            if gap >= BITS {
                self.ring = [0; WORDS];
            } else {
                let mut slot = self.next;
                while slot < counter {
                    // Whole words at once where possible.
                    if slot % 64 == 0 && counter - slot >= 64 {
                        self.ring[((slot / 64) % WORDS as u64) as usize] = 0;
                        slot += 64;
                    } else {
                        self.clear(slot);
                        slot += 1;
                    }
                }
            }
            self.set(counter);
            self.next = counter + 1;
            return true;
        }
        let behind = self.next - 1 - counter;
        if behind > self.size {
            return false;
        }
        if self.get(counter) {
            return false;
        }
        self.set(counter);
        true
    }

    /// The highest counter accepted so far, or `None`.
    pub fn last(&self) -> Option<u64> {
        self.next.checked_sub(1)
    }

    fn position(counter: u64) -> (usize, u64) {
        let bit = counter % BITS;
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }

    fn get(&self, counter: u64) -> bool {
        let (word, mask) = Self::position(counter);
        self.ring[word] & mask != 0
    }

    fn set(&mut self, counter: u64) {
        let (word, mask) = Self::position(counter);
        self.ring[word] |= mask;
    }

    fn clear(&mut self, counter: u64) {
        let (word, mask) = Self::position(counter);
        self.ring[word] &= !mask;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The Python reference, transcribed with a big-integer bitmap (u128 chunks in a Vec).
    struct Reference {
        size: u64,
        limit: u64,
        last: i128,
        seen: std::collections::BTreeSet<u64>,
    }

    impl Reference {
        fn check(&mut self, counter: u64) -> bool {
            if counter >= self.limit {
                return false;
            }
            if i128::from(counter) > self.last {
                self.last = i128::from(counter);
                self.seen
                    .retain(|&c| i128::from(c) >= self.last - i128::from(self.size));
                self.seen.insert(counter);
                return true;
            }
            let behind = self.last - i128::from(counter);
            if behind > i128::from(self.size) {
                return false;
            }
            self.seen.insert(counter)
        }
    }

    #[test]
    fn fresh_replayed_too_old_and_over_the_limit() {
        let mut window = ReplayWindow::new(WINDOW_SIZE, 1 << 20);
        assert_eq!(window.last(), None);
        assert!(window.check(0));
        assert!(!window.check(0));
        assert!(window.check(5));
        assert!(window.check(3));
        assert!(!window.check(3));
        assert!(window.check(WINDOW_SIZE + 7));
        assert!(window.check(7)); // exactly `size` behind: still inside
        assert!(!window.check(7));
        assert!(!window.check(6)); // one further: too old
        assert!(!window.check(1 << 20));
        assert_eq!(window.last(), Some(WINDOW_SIZE + 7));
    }

    proptest! {
        #[test]
        fn agrees_with_the_reference(
            steps in proptest::collection::vec((0u64..20_000, any::<bool>()), 1..400),
            size in prop_oneof![Just(WINDOW_SIZE), 1u64..200],
        ) {
            let limit = 15_000;
            let mut window = ReplayWindow::new(size, limit);
            let mut reference = Reference { size, limit, last: -1, seen: Default::default() };
            let mut previous = 0u64;
            for (value, near) in steps {
                // Mostly near the previous counter (as traffic is), sometimes anywhere.
                let counter = if near { previous.saturating_sub(value % 64) + value % 7 } else { value };
                prop_assert_eq!(window.check(counter), reference.check(counter), "counter {}", counter);
                previous = counter;
            }
        }
    }
}
