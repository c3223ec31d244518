//! Message-level fault settings and the seeded random choices they drive.

use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::Rng;

/// Message-level faults applied by a [`MemNetwork`](crate::MemNetwork) to every message
/// it carries, on top of crashes, isolation, partitions and blocked links.
///
/// Every random choice is drawn from the network's seeded RNG, so the sequence of choices
/// is the same for the same seed and the same sequence of sends. (Which send comes first
/// may still depend on how tokio interleaves tasks.)
///
/// Out-of-range settings are not errors: rates are clamped to `0.0..=1.0` (NaN counts as
/// `0.0`) and a `max_delay` below `min_delay` counts as `min_delay`.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use paxos_transport_mem::Faults;
///
/// // Lose 10% of messages and deliver the rest after 1 to 5 ms, which reorders them.
/// let faults = Faults {
///     drop_rate: 0.1,
///     min_delay: Duration::from_millis(1),
///     max_delay: Duration::from_millis(5),
///     ..Faults::none()
/// };
/// assert!(!faults.is_none());
/// assert!(Faults::none().is_none());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Faults {
    /// Probability that a message is lost.
    pub drop_rate: f64,
    /// Probability that a message that is not lost is delivered twice. Each copy gets its
    /// own delay.
    pub duplicate_rate: f64,
    /// The shortest delay before a message is delivered.
    pub min_delay: Duration,
    /// The longest delay before a message is delivered. Each message's delay is drawn
    /// uniformly from `min_delay..=max_delay`; different delays reorder messages.
    pub max_delay: Duration,
}

impl Faults {
    /// No faults: every message is delivered at once, once, in the order it was sent.
    ///
    /// This is the default, and the fast path: a send is a plain channel send with no
    /// lock on the network and no task spawned.
    pub const fn none() -> Self {
        Faults {
            drop_rate: 0.0,
            duplicate_rate: 0.0,
            min_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        }
    }

    /// True when these settings never drop, duplicate or delay a message.
    pub fn is_none(&self) -> bool {
        rate(self.drop_rate) == 0.0
            && rate(self.duplicate_rate) == 0.0
            && self.min_delay.is_zero()
            && self.max_delay.is_zero()
    }

    /// Draws what happens to one message. Draws only the choices these settings need, so
    /// a setting that is off consumes no randomness.
    pub(crate) fn plan(&self, rng: &mut ChaCha8Rng) -> Plan {
        let drop_rate = rate(self.drop_rate);
        if drop_rate > 0.0 && unit(rng) < drop_rate {
            return Plan::Drop;
        }
        let dup_rate = rate(self.duplicate_rate);
        let duplicate = dup_rate > 0.0 && unit(rng) < dup_rate;
        let first = self.delay(rng);
        let second = if duplicate {
            Some(self.delay(rng))
        } else {
            None
        };
        Plan::Deliver { first, second }
    }

    fn delay(&self, rng: &mut ChaCha8Rng) -> Duration {
        let min = self.min_delay;
        let max = self.max_delay.max(min);
        let span = max.saturating_sub(min);
        if span.is_zero() {
            return min;
        }
        // Nanoseconds of span, capped so the arithmetic stays in u64; a span of more than
        // 584 years is not a meaningful test setting.
        let span_nanos = u64::try_from(span.as_nanos()).unwrap_or(u64::MAX - 1);
        // Uniform in 0..=span_nanos without modulo bias worth speaking of.
        let offset = ((u128::from(rng.next_u64()) * (u128::from(span_nanos) + 1)) >> 64) as u64;
        min.saturating_add(Duration::from_nanos(offset))
    }
}

impl Default for Faults {
    fn default() -> Self {
        Faults::none()
    }
}

/// What happens to one message under [`Faults`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The message is lost.
    Drop,
    /// The message is delivered after `first`, and a copy after `second` if set.
    Deliver {
        first: Duration,
        second: Option<Duration>,
    },
}

/// A probability clamped to `0.0..=1.0`, NaN as `0.0`.
fn rate(r: f64) -> f64 {
    if r.is_nan() {
        0.0
    } else {
        r.clamp(0.0, 1.0)
    }
}

/// A uniform draw from `0.0..1.0`.
fn unit(rng: &mut ChaCha8Rng) -> f64 {
    // 53 random bits: every value is exactly representable.
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn none_plans_immediate_single_delivery_without_randomness() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let before = rng.clone();
        let plan = Faults::none().plan(&mut rng);
        assert_eq!(
            plan,
            Plan::Deliver {
                first: Duration::ZERO,
                second: None
            }
        );
        assert_eq!(rng, before, "no randomness consumed");
    }

    #[test]
    fn rates_are_clamped() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let always = Faults {
            drop_rate: 7.0,
            ..Faults::none()
        };
        let never = Faults {
            drop_rate: f64::NAN,
            duplicate_rate: -1.0,
            ..Faults::none()
        };
        assert!(never.is_none());
        for _ in 0..100 {
            assert_eq!(always.plan(&mut rng), Plan::Drop);
            assert!(matches!(
                never.plan(&mut rng),
                Plan::Deliver { second: None, .. }
            ));
        }
    }

    #[test]
    fn delays_stay_in_bounds_and_vary() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let f = Faults {
            min_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(4),
            ..Faults::none()
        };
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let d = f.delay(&mut rng);
            assert!(d >= f.min_delay && d <= f.max_delay, "{d:?}");
            seen.insert(d);
        }
        assert!(seen.len() > 900, "delays should vary, got {}", seen.len());

        let inverted = Faults {
            min_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(1),
            ..Faults::none()
        };
        assert_eq!(inverted.delay(&mut rng), Duration::from_millis(5));
        let huge = Faults {
            max_delay: Duration::MAX,
            ..Faults::none()
        };
        let _ = huge.delay(&mut rng); // must not overflow
    }

    #[test]
    fn drop_rate_is_roughly_respected() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let f = Faults {
            drop_rate: 0.25,
            ..Faults::none()
        };
        let dropped = (0..10_000)
            .filter(|_| f.plan(&mut rng) == Plan::Drop)
            .count();
        assert!((2_000..3_000).contains(&dropped), "{dropped}");
    }
}
