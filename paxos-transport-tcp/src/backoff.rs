//! Capped exponential backoff with jitter.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

/// Delays that double from `min` up to `max`; each delay is drawn between half and all of
/// its nominal value, so nodes that restart together do not redial in lockstep.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    rng: u64,
}

impl Backoff {
    /// A backoff seeded from `seed` mixed with per-process randomness.
    pub(crate) fn new(min: Duration, max: Duration, seed: u64) -> Self {
        let rng = RandomState::new().hash_one(seed) | 1;
        Backoff {
            min,
            max,
            next: min,
            rng,
        }
    }

    /// Starts over from the minimum delay (after a success).
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }

    /// The delay to wait now; the following one will be twice as long, up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let nominal = self.next;
        self.next = nominal.saturating_mul(2).min(self.max);
        let half = nominal / 2;
        let span = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let jitter = match span.checked_add(1) {
            Some(n) => self.random() % n,
            None => self.random(),
        };
        half + Duration::from_nanos(jitter)
    }

    /// xorshift64*: plenty for jitter.
    fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let min = Duration::from_millis(10);
        let max = Duration::from_millis(80);
        let mut b = Backoff::new(min, max, 1);
        let mut nominal = min;
        for _ in 0..10 {
            let d = b.next_delay();
            assert!(d >= nominal / 2 && d <= nominal, "{d:?} vs {nominal:?}");
            nominal = (nominal * 2).min(max);
        }
        b.reset();
        assert!(b.next_delay() <= min);
    }
}
