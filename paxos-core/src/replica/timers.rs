//! Named timers. A replica's time is the number of ticks it was given; every wait it
//! makes is a [`Timeout`] with a name, instead of a "last time we did X" counter.
//!
//! Replica-wide timers live in [`Timers`]. Timers that only mean something in one role
//! live and die with that role's state, and are [`Timeout`]s too:
//! - a candidate's `give_up` (its randomized election timeout) and `resend` (PREPAREs
//!   to the peers that have not promised), in `view_change.rs`;
//! - a leader's `heartbeat`, its per-member `contact` (who it still hears from), and
//!   each proposal's `resend`, in `leader.rs`;
//! - a recovering replica's `resend` (RECOVERs), in `recovery.rs`.

use rand_chacha::ChaCha8Rng;
use rand_core::Rng;

use crate::config::Config;

/// A deadline in ticks: it has expired once the replica's clock reaches it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeout {
    deadline: u64,
}

impl Timeout {
    /// A timeout that expires `ticks` after `now`.
    pub(super) fn after(now: u64, ticks: u64) -> Self {
        Timeout {
            deadline: now.saturating_add(ticks),
        }
    }

    /// Starts the wait again: expires `ticks` after `now`.
    pub(super) fn reset(&mut self, now: u64, ticks: u64) {
        *self = Timeout::after(now, ticks);
    }

    /// True once `now` reached the deadline.
    pub(super) fn expired(&self, now: u64) -> bool {
        now >= self.deadline
    }
}

/// A randomized election timeout, between one and two
/// [`Config::election_ticks`], drawn from the replica's seeded generator (so that
/// replicas rarely time out together, and a seed replays identically).
pub(super) fn election_ticks(cfg: &Config, rng: &mut ChaCha8Rng) -> u64 {
    cfg.election_ticks + rng.next_u64() % cfg.election_ticks
}

/// The timers every replica runs, whatever its role.
#[derive(Debug)]
pub(super) struct Timers {
    /// A follower that reaches it without hearing from a leader runs a pre-vote.
    /// Randomized ([`election_ticks`]).
    pub(super) election: Timeout,
    /// Leader stickiness: until it expires ([`Config::election_ticks`] after the
    /// leader was last heard from), the leader counts as alive and this replica refuses
    /// to help depose it.
    pub(super) leader_contact: Timeout,
    /// Catch-up: the next FETCH may go out once it expires.
    pub(super) fetch: Timeout,
    /// Candidacies that gave up in a row since a leader was last known (capped at
    /// [`MAX_BACKOFF`]): each doubles the next candidate's patience, so that elections
    /// still complete when round trips are longer than the election timeout (they
    /// otherwise give up before the promises arrive, for ever).
    pub(super) backoff: u32,
}

/// The most doublings of a candidate's patience ([`Timers::backoff`]): at most 8
/// randomized election timeouts.
pub(super) const MAX_BACKOFF: u32 = 3;

impl Timers {
    /// The timers of a replica starting at tick 0, whose first election timeout is
    /// `first_election`.
    pub(super) fn new(cfg: &Config, first_election: u64) -> Self {
        Timers {
            election: Timeout::after(0, first_election),
            leader_contact: Timeout::after(0, cfg.election_ticks),
            fetch: Timeout::after(0, cfg.retransmit_ticks),
            backoff: 0,
        }
    }
}
