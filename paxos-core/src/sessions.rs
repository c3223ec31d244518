//! The replicated session table behind exactly-once execution.

use std::collections::{HashMap, VecDeque};

use foldhash::fast::FixedState;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::types::{Ballot, ClientId, Slot};

/// A session's cached reply: the encoded output of its latest request.
///
/// Every replica keeps one per session, for every request it executes, while only
/// the replica that answers the client needs the reply as [`Bytes`]: outputs of up to
/// [`CachedReply::INLINE`] bytes (most) are kept inline, with no allocation of
/// their own, and larger ones share a [`Bytes`]. It serializes as a byte string,
/// exactly as [`Bytes`] does, so checkpoints are the same either way.
///
/// ```
/// use bytes::Bytes;
/// use paxos_core::CachedReply;
///
/// let small = CachedReply::from(&b"ok"[..]);
/// assert_eq!(small.as_bytes(), b"ok");
/// assert_eq!(small.to_bytes(), Bytes::from_static(b"ok"));
/// let large = CachedReply::from(Bytes::from(vec![7u8; 100]));
/// assert_eq!(large.len(), 100);
/// ```
#[derive(Clone)]
pub struct CachedReply(ReplyRepr);

#[derive(Clone)]
enum ReplyRepr {
    Inline {
        len: u8,
        buf: [u8; CachedReply::INLINE],
    },
    Shared(Bytes),
}

impl CachedReply {
    /// The longest reply kept inline.
    pub const INLINE: usize = 38;

    /// An empty reply (a session's before its first request).
    pub const fn new() -> Self {
        CachedReply(ReplyRepr::Inline {
            len: 0,
            buf: [0; Self::INLINE],
        })
    }

    /// The first `len` bytes of `buf` (`len` at most [`INLINE`](Self::INLINE)).
    pub(crate) fn inline(buf: [u8; Self::INLINE], len: usize) -> Self {
        debug_assert!(len <= Self::INLINE);
        CachedReply(ReplyRepr::Inline {
            len: len.min(Self::INLINE) as u8,
            buf,
        })
    }

    /// The reply's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            ReplyRepr::Inline { len, buf } => &buf[..*len as usize],
            ReplyRepr::Shared(b) => b,
        }
    }

    /// The reply as [`Bytes`]: a copy when it is inline, a shared handle otherwise.
    pub fn to_bytes(&self) -> Bytes {
        match &self.0 {
            ReplyRepr::Inline { .. } => Bytes::copy_from_slice(self.as_bytes()),
            ReplyRepr::Shared(b) => b.clone(),
        }
    }

    /// [`to_bytes`](Self::to_bytes), with an inline reply copied into `arena` and cut
    /// from it rather than into an allocation of its own: the replies a leader hands
    /// out share a buffer of [`REPLY_ARENA_BYTES`] (a fresh one when it is full), one
    /// allocation per few dozen replies. A reply kept pins at most that much memory.
    pub(crate) fn to_bytes_in(&self, arena: &mut BytesMut) -> Bytes {
        match &self.0 {
            ReplyRepr::Inline { .. } => {
                let data = self.as_bytes();
                if arena.capacity() - arena.len() < data.len() {
                    *arena = BytesMut::with_capacity(REPLY_ARENA_BYTES);
                }
                arena.extend_from_slice(data);
                arena.split().freeze()
            }
            ReplyRepr::Shared(b) => b.clone(),
        }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// True when the reply is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The size of the buffers [`CachedReply::to_bytes_in`] cuts replies from.
pub(crate) const REPLY_ARENA_BYTES: usize = 512;

impl Default for CachedReply {
    fn default() -> Self {
        Self::new()
    }
}

impl From<&[u8]> for CachedReply {
    /// Inline when it fits, else copied into a [`Bytes`] of its own.
    fn from(b: &[u8]) -> Self {
        if b.len() <= Self::INLINE {
            let mut buf = [0; Self::INLINE];
            buf[..b.len()].copy_from_slice(b);
            Self::inline(buf, b.len())
        } else {
            CachedReply(ReplyRepr::Shared(Bytes::copy_from_slice(b)))
        }
    }
}

impl From<Bytes> for CachedReply {
    /// Inline when it fits (the `Bytes` is let go), else shared.
    fn from(b: Bytes) -> Self {
        if b.len() <= Self::INLINE {
            CachedReply::from(&b[..])
        } else {
            CachedReply(ReplyRepr::Shared(b))
        }
    }
}

impl std::ops::Deref for CachedReply {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for CachedReply {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for CachedReply {}

impl PartialEq<[u8]> for CachedReply {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_bytes() == other
    }
}

impl std::fmt::Debug for CachedReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&Bytes::copy_from_slice(self.as_bytes()), f)
    }
}

impl Serialize for CachedReply {
    fn serialize<Ser: serde::Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        s.serialize_bytes(self.as_bytes())
    }
}

impl<'de> Deserialize<'de> for CachedReply {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = CachedReply;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<CachedReply, E> {
                Ok(CachedReply::from(v))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<CachedReply, E> {
                Ok(CachedReply::from(Bytes::from(v)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<CachedReply, A::Error> {
                // Bounded by what the input holds, as `Bytes`' own visitor is.
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(CachedReply::from(Bytes::from(v)))
            }
        }
        d.deserialize_bytes(Visitor)
    }
}

/// One client's session: its latest executed request, the reply it got, and when the
/// session was last used.
///
/// `#[non_exhaustive]`: sessions are made by the table ([`Sessions::register`]) and read
/// through [`Sessions::get`] or [`Sessions::to_sorted_vec`], not built by hand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Session {
    /// The highest request number executed (0 right after registration).
    pub last_seq: u64,
    /// The encoded output of request `last_seq`.
    pub reply: CachedReply,
    /// The slot that last touched the session (for least-recently-used eviction).
    pub last_slot: Slot,
    /// The [log time](Sessions::log_time) when the session was last touched (registered,
    /// or a new request executed): what expiry measures idleness from.
    pub last_active: u64,
}

/// What executing a request against the session table decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionCheck {
    /// A new request: apply it, then [`Sessions::record`] the output.
    Fresh,
    /// The request was executed before; here is its cached reply.
    Duplicate(Bytes),
    /// The request is older than the session's latest: a late duplicate.
    Stale,
    /// The session does not exist (never registered, evicted or expired).
    Unknown,
}

/// The replicated session table.
///
/// Every replica executes the same log, so every replica builds the same table; it is
/// part of the replicated state, not of the leader. A client registers once (a request
/// with number 0, itself a log entry); the session's id is the slot of that entry,
/// which the reply tells the client. It then numbers its requests 1, 2, 3, ...
/// (Assigning ids from the log, as the Raft dissertation's §6.3 does, is what keeps a
/// late duplicate of a registration from reviving an evicted session.) Executing
/// a request whose number is not above the session's latest applies nothing and answers
/// with the cached reply (same number) or [`SessionCheck::Stale`] (older number).
///
/// # How long sessions are kept
/// A session goes away in one of two ways, decided by the log alone so that every
/// replica drops the same sessions at the same slot:
/// - **Expiry** (idle sessions, e.g. of clients that died). The table keeps a *log
///   time* ([`Sessions::log_time`]) that only moves when a clock entry
///   ([`Value::ClockStep`](crate::Value::ClockStep)) executes, and stamps each session
///   with the log time of its registration and of each request it executes
///   ([`Session::last_active`]). The leader proposes a clock entry every
///   [`Config::session_clock_ticks`](crate::Config::session_clock_ticks) ticks while
///   sessions exist: a step of a chain, from where its previous step ended (the first
///   from the log time of its log when elected) to that plus the ticks it counted
///   since, so log time never runs faster than a leader's clock. A step counts only
///   where the log time is its start: a deposed leader's steps, re-proposed behind
///   requests it never saw, do nothing.
///   Executing one ([`Sessions::advance_time`]) drops every session idle for more than
///   the entry's `idle_limit`, which the leader sets to
///   [`Config::session_ttl_ticks`](crate::Config::session_ttl_ticks) plus one clock
///   period. The outcome: a session is never dropped before
///   `session_ttl_ticks` ticks (of the leading replicas' clocks) have passed since the
///   leader received the last request of it that executed, and is dropped within
///   about `session_ttl_ticks + 2 × session_clock_ticks` after that when the cluster
///   can commit. A retry answered from the cache does not count as use. Replicas never
///   consult their own clocks for this: a clock entry carries its time and limit.
///   `session_ttl_ticks = 0` turns expiry off (no clock entries are proposed).
/// - **Eviction** (too many sessions). At most `max_sessions` sessions live at once
///   (see [`Config::max_sessions`](crate::Config)); registering one more drops the
///   session least recently used, by slot order.
///
/// # What a client whose session went away sees, and how it recovers
/// Its next request gets
/// [`Response::SessionExpired`](crate::Response::SessionExpired) and is *not* executed
/// (nor will any later copy of it be: session ids are slots, never reused). Since
/// the client cannot know whether an earlier attempt of that request executed before
/// the session went away, [`Client`](crate::Client) reports
/// [`ClientError::SessionExpired`](crate::ClientError::SessionExpired) ("may or may
/// not have been executed") for it, and registers a fresh session for the requests
/// that follow; the caller decides whether to check and resubmit. A `Client` that has
/// been idle for longer than
/// [`ClientOptions::session_idle_limit`](crate::ClientOptions) registers a fresh
/// session before its next request instead of finding out this way.
///
/// # Cost
/// Registering, recording and checking are O(1) amortised: the table keeps a queue of
/// `(slot, client)` touches appended in slot order (execution is in slot order, so the
/// queue is sorted by slot by construction; the sessions one batch of requests touched
/// share a slot and stay in execution order, and eviction breaks their tie by session
/// id, as the sorted table of a checkpoint does).
/// An entry whose session was touched again later is stale and skipped when it reaches
/// the front; the queue is rebuilt without stale entries when it grows past twice the
/// table. Eviction and expiry pop from the front: least recently used first, which is
/// also least recently active first, since log time never goes back along the log.
#[derive(Clone, Debug, Default)]
pub struct Sessions {
    /// Keyed by session id, which is a slot number the cluster assigned (never a
    /// number a client chose): a fixed-seed fast hash serves, and keeps the table's
    /// behaviour the same in every process.
    map: HashMap<ClientId, Session, FixedState>,
    /// Every touch `(slot, client)`, sorted; an entry is live when it is the client's
    /// `last_slot`, stale otherwise.
    order: VecDeque<(Slot, ClientId)>,
    /// The latest time of the clock entries executed (0 before the first).
    log_time: u64,
    /// The ballot of the latest clock step that counted ([`Ballot::ZERO`] before the
    /// first): steps of lower ballots no longer count.
    clock_ballot: Ballot,
}

/// The rule of [`Sessions::step_counts`], for a table whose latest counted step was
/// of ballot `counting` and whose log time is `log_time` (a leader applies it ahead of
/// execution, over the entries it re-proposes).
pub(crate) fn step_counts(counting: Ballot, log_time: u64, ballot: Ballot, from: u64) -> bool {
    ballot >= counting && from == log_time
}

/// The queue may hold this many stale entries beyond the table's size before it is
/// rebuilt (so that a small table is not rebuilt at every touch).
const ORDER_SLACK: usize = 64;

impl PartialEq for Sessions {
    /// Two tables are equal when they hold the same sessions at the same log time (how
    /// many stale entries their queues still carry does not matter).
    fn eq(&self, other: &Self) -> bool {
        self.log_time == other.log_time
            && self.clock_ballot == other.clock_ballot
            && self.map == other.map
    }
}

impl Eq for Sessions {}

impl Sessions {
    /// An empty table at log time 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of live sessions.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no session exists.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The session of `client`, if any.
    pub fn get(&self, client: ClientId) -> Option<&Session> {
        self.map.get(&client)
    }

    /// The log time: the latest time of the clock entries executed, 0 before the first.
    /// It is replicated state (every replica has the same at the same slot) and part of
    /// every checkpoint. Counted in ticks of the leaders that proposed the entries.
    pub fn log_time(&self) -> u64 {
        self.log_time
    }

    /// The ballot of the latest [clock step](crate::Value::ClockStep) that counted
    /// ([`Ballot::ZERO`] before the first): only steps of this ballot or a higher one
    /// count. Replicated state, part of every checkpoint, like the log time.
    pub fn clock_ballot(&self) -> Ballot {
        self.clock_ballot
    }

    /// Whether a clock step of `ballot` starting at log time `from` counts here: it
    /// must start where the log time is, and come from the leader whose steps count
    /// now or a later one. See [`Value::ClockStep`](crate::Value::ClockStep).
    pub fn step_counts(&self, ballot: Ballot, from: u64) -> bool {
        step_counts(self.clock_ballot, self.log_time, ballot, from)
    }

    /// The first half of executing a clock step that [counts](Self::step_counts): the
    /// steps of `ballot` are the ones that count from now on. The second half is
    /// [`advance_time`](Self::advance_time) with the step's time and limit.
    pub fn raise_clock_ballot(&mut self, ballot: Ballot) {
        self.clock_ballot = self.clock_ballot.max(ballot);
    }

    /// Sets the ballot whose clock steps count (restoring a checkpoint).
    pub fn with_clock_ballot(mut self, ballot: Ballot) -> Self {
        self.clock_ballot = ballot;
        self
    }

    /// Decides what to do with request `seq` of `client`.
    pub fn check(&self, client: ClientId, seq: u64) -> SessionCheck {
        match self.map.get(&client) {
            None => SessionCheck::Unknown,
            Some(s) if seq == s.last_seq => SessionCheck::Duplicate(s.reply.to_bytes()),
            Some(s) if seq < s.last_seq => SessionCheck::Stale,
            Some(_) => SessionCheck::Fresh,
        }
    }

    /// Registers `client` at `slot`, evicting the least recently used session when the
    /// table holds `max` already. Registering an existing session only touches it.
    /// The session is stamped with the current [log time](Self::log_time).
    ///
    /// Slots are expected in increasing order across calls (as execution gives them);
    /// an older slot is still placed correctly, at O(n) cost.
    pub fn register(&mut self, client: ClientId, slot: Slot, max: usize) {
        let now = self.log_time;
        if let Some(s) = self.map.get_mut(&client) {
            let again = s.last_slot == slot;
            s.last_slot = slot;
            s.last_active = now;
            self.touch(slot, client, again);
            return;
        }
        while self.map.len() >= max.max(1) {
            if self.pop_oldest().is_none() {
                break;
            }
        }
        self.map.insert(
            client,
            Session {
                last_seq: 0,
                reply: CachedReply::new(),
                last_slot: slot,
                last_active: now,
            },
        );
        self.touch(slot, client, false);
    }

    /// Records that request `seq` of `client` was executed at `slot` with `reply`,
    /// stamping the session with the current [log time](Self::log_time). Does nothing
    /// for an unknown session. Slots are expected in increasing order, as for
    /// [`register`](Self::register).
    pub fn record(
        &mut self,
        client: ClientId,
        seq: u64,
        reply: impl Into<CachedReply>,
        slot: Slot,
    ) {
        let now = self.log_time;
        if let Some(s) = self.map.get_mut(&client) {
            let again = s.last_slot == slot;
            s.last_seq = seq;
            s.reply = reply.into();
            s.last_slot = slot;
            s.last_active = now;
            self.touch(slot, client, again);
        }
    }

    /// Executes a clock entry: the log time becomes `max(log time, time)`, then every
    /// session idle for more than `idle_limit` (log time minus its
    /// [`last_active`](Session::last_active)) is dropped. Returns how many were.
    ///
    /// Sessions are examined least recently used first and the scan stops at the first
    /// one still in use, so the work is proportional to the sessions dropped.
    pub fn advance_time(&mut self, time: u64, idle_limit: u64) -> usize {
        self.log_time = self.log_time.max(time);
        let mut expired = 0;
        while let Some(&(slot, client)) = self.order.front() {
            match self.map.get(&client) {
                Some(s) if s.last_slot == slot => {
                    if self.log_time.saturating_sub(s.last_active) <= idle_limit {
                        break;
                    }
                    self.map.remove(&client);
                    expired += 1;
                }
                _ => {} // stale: the session was touched again later, or is gone
            }
            self.order.pop_front();
        }
        expired
    }

    /// All sessions, sorted by client id (for snapshots and inspection).
    pub fn to_sorted_vec(&self) -> Vec<(ClientId, Session)> {
        let mut v: Vec<_> = self.map.iter().map(|(c, s)| (*c, s.clone())).collect();
        v.sort_by_key(|(c, _)| *c);
        v
    }

    /// Rebuilds a table from [`Sessions::to_sorted_vec`], at the log time of its most
    /// recently active session. Use [`Sessions::restore`] to give the log time.
    pub fn from_vec(v: Vec<(ClientId, Session)>) -> Self {
        let log_time = v.iter().map(|(_, s)| s.last_active).max().unwrap_or(0);
        Self::restore(log_time, v)
    }

    /// Rebuilds a table from [`Sessions::to_sorted_vec`] and [`Sessions::log_time`]
    /// (what a checkpoint holds).
    pub fn restore(log_time: u64, v: Vec<(ClientId, Session)>) -> Self {
        let mut order: Vec<(Slot, ClientId)> = v.iter().map(|(c, s)| (s.last_slot, *c)).collect();
        order.sort_unstable();
        Sessions {
            map: v.into_iter().collect(),
            order: order.into(),
            log_time,
            clock_ballot: Ballot::ZERO,
        }
    }

    /// Appends the touch of `client` at `slot` to the queue (`again`: the session was
    /// touched in this slot already, so its entry is there), keeping it sorted by slot,
    /// and rebuilds the queue when stale entries dominate it. Within a slot, entries
    /// are in execution order; [`pop_oldest`](Self::pop_oldest) breaks the tie.
    fn touch(&mut self, slot: Slot, client: ClientId, again: bool) {
        if again {
            return;
        }
        match self.order.back() {
            Some(&(last, _)) if last > slot => {
                // An older slot (by direct use of the API; execution goes in slot
                // order): insert in place, after the entries of its slot.
                let mut at = self.order.len();
                while at > 0 && self.order[at - 1].0 > slot {
                    at -= 1;
                }
                self.order.insert(at, (slot, client));
            }
            _ => self.order.push_back((slot, client)),
        }
        if self.order.len() > 2 * self.map.len() + ORDER_SLACK {
            let map = &self.map;
            self.order
                .retain(|(slot, client)| map.get(client).is_some_and(|s| s.last_slot == *slot));
        }
    }

    /// Whether the queue's entry `(slot, client)` is the session's latest touch.
    fn is_live(&self, slot: Slot, client: ClientId) -> bool {
        self.map.get(&client).is_some_and(|s| s.last_slot == slot)
    }

    /// Drops the least recently used session and returns its id: the one last touched
    /// in the oldest slot, and among the sessions a batch touched in that slot, the
    /// lowest id. (The queue holds those in execution order, a table restored from a
    /// checkpoint in id order; the tie-break makes both evict alike.)
    fn pop_oldest(&mut self) -> Option<ClientId> {
        loop {
            let &(slot, client) = self.order.front()?;
            if self.is_live(slot, client) {
                break;
            }
            self.order.pop_front();
        }
        let oldest = self.order.front()?.0;
        let mut evict: Option<(usize, ClientId)> = None;
        for (i, &(slot, client)) in self.order.iter().enumerate() {
            if slot != oldest {
                break;
            }
            let lower = match evict {
                None => true,
                Some((_, c)) => client < c,
            };
            if lower && self.is_live(slot, client) {
                evict = Some((i, client));
            }
        }
        let (at, client) = evict?;
        self.order.remove(at);
        self.map.remove(&client);
        Some(client)
    }

    /// The queue's length (stale entries included), for tests of its bound.
    #[cfg(test)]
    fn queue_len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn replies_cut_from_the_arena_are_their_own_bytes() {
        let mut arena = BytesMut::new();
        let mut out = Vec::new();
        // Enough replies to fill several buffers, of every inline length.
        for i in 0..4 * REPLY_ARENA_BYTES {
            let len = i % (CachedReply::INLINE + 1);
            let data: Vec<u8> = (0..len).map(|j| (i + j) as u8).collect();
            let reply = CachedReply::from(&data[..]);
            out.push((data, reply.to_bytes_in(&mut arena)));
        }
        for (data, bytes) in &out {
            assert_eq!(&bytes[..], &data[..]);
        }
        assert!(arena.capacity() <= REPLY_ARENA_BYTES);
        // A reply too long to be inline is shared, not copied.
        let large = Bytes::from(vec![7u8; 100]);
        let got = CachedReply::from(large.clone()).to_bytes_in(&mut arena);
        assert_eq!(got.as_ptr(), large.as_ptr());
    }

    #[test]
    fn duplicate_and_stale_requests_are_recognised() {
        let mut t = Sessions::new();
        assert_eq!(t.check(7, 1), SessionCheck::Unknown);
        t.register(7, 0, 10);
        assert_eq!(t.check(7, 1), SessionCheck::Fresh);
        t.record(7, 1, Bytes::from_static(b"r1"), 1);
        assert_eq!(
            t.check(7, 1),
            SessionCheck::Duplicate(Bytes::from_static(b"r1"))
        );
        assert_eq!(t.get(7).unwrap().reply.as_bytes(), b"r1");
        t.record(7, 2, Bytes::from_static(b"r2"), 2);
        assert_eq!(t.check(7, 1), SessionCheck::Stale);
        assert_eq!(t.check(7, 3), SessionCheck::Fresh);
    }

    #[test]
    fn a_cached_reply_encodes_as_bytes_do_inline_or_not() {
        for len in [
            0,
            1,
            CachedReply::INLINE - 1,
            CachedReply::INLINE,
            CachedReply::INLINE + 1,
            300,
        ] {
            let raw: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let bytes = Bytes::from(raw.clone());
            let reply = CachedReply::from(&raw[..]);
            assert_eq!(CachedReply::from(bytes.clone()), reply);
            assert_eq!(reply.to_bytes(), bytes);
            assert_eq!(reply.len(), len);
            // Checkpoints written with `Bytes` read back as `CachedReply`, and the
            // other way round, byte for byte.
            let encoded = postcard::to_allocvec(&reply).unwrap();
            assert_eq!(encoded, postcard::to_allocvec(&bytes).unwrap(), "len {len}");
            let back: CachedReply = postcard::from_bytes(&encoded).unwrap();
            assert_eq!(back, reply);
            let back: Bytes = postcard::from_bytes(&encoded).unwrap();
            assert_eq!(back, bytes);
        }
        // A length prefix longer than the input is refused, not allocated.
        assert!(postcard::from_bytes::<CachedReply>(&[0xff, 0xff, 0xff, 0x0f, 1]).is_err());
    }

    #[test]
    fn eviction_drops_the_least_recently_used() {
        let mut t = Sessions::new();
        t.register(1, 0, 2);
        t.register(2, 1, 2);
        t.record(1, 1, Bytes::new(), 2); // client 1 is now the most recent
        t.register(3, 3, 2);
        assert!(t.get(2).is_none());
        assert!(t.get(1).is_some() && t.get(3).is_some());
        assert_eq!(t.len(), 2);
        let rebuilt = Sessions::from_vec(t.to_sorted_vec());
        assert_eq!(rebuilt, t);
    }

    #[test]
    fn idle_sessions_expire_by_log_time_only() {
        let mut t = Sessions::new();
        t.register(1, 0, 10); // active at log time 0
        assert_eq!(t.advance_time(50, 100), 0);
        t.register(2, 1, 10); // active at 50
        t.record(1, 1, Bytes::new(), 2); // 1 active again at 50
        assert_eq!(t.advance_time(150, 100), 0, "idle for exactly the limit");
        // A clock with an older time changes nothing.
        assert_eq!(t.advance_time(10, 100), 0);
        assert_eq!(t.log_time(), 150);
        t.register(3, 3, 10); // active at 150
        assert_eq!(t.advance_time(151, 100), 2, "1 and 2 idle for 101");
        assert!(t.get(1).is_none() && t.get(2).is_none());
        assert_eq!(t.get(3).map(|s| s.last_active), Some(150));
        assert_eq!(t.check(1, 2), SessionCheck::Unknown);
        // Restored from a checkpoint, the table is the same, log time included.
        let rebuilt = Sessions::restore(t.log_time(), t.to_sorted_vec());
        assert_eq!(rebuilt, t);
        assert_eq!(Sessions::from_vec(t.to_sorted_vec()).log_time(), 150);
    }

    /// A small deterministic generator for the randomized tests.
    fn xorshift(seed: u64) -> impl FnMut() -> u64 {
        let mut rng = seed;
        move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        }
    }

    /// The reference the table must agree with: the former implementation, an ordered
    /// set of `(last slot, client)` with a remove and an insert per touch.
    #[derive(Default)]
    struct Reference {
        map: HashMap<ClientId, (Slot, u64)>,
        by_age: BTreeSet<(Slot, ClientId)>,
        time: u64,
    }

    impl Reference {
        fn touch(&mut self, client: ClientId, slot: Slot, max: usize, register: bool) {
            if let Some(&(old, _)) = self.map.get(&client) {
                self.by_age.remove(&(old, client));
            } else if register {
                while self.map.len() >= max {
                    let Some((_, c)) = self.by_age.pop_first() else {
                        break;
                    };
                    self.map.remove(&c);
                }
            } else {
                return;
            }
            self.map.insert(client, (slot, self.time));
            self.by_age.insert((slot, client));
        }

        fn advance(&mut self, time: u64, limit: u64) {
            self.time = self.time.max(time);
            let now = self.time;
            let map = &mut self.map;
            self.by_age.retain(|(_, c)| {
                let keep = now - map[c].1 <= limit;
                if !keep {
                    map.remove(c);
                }
                keep
            });
        }
    }

    #[test]
    fn the_queue_agrees_with_an_ordered_set_and_stays_bounded() {
        let mut next = xorshift(0x1234_5678_9abc_def1u64);
        let (mut t, mut r) = (Sessions::new(), Reference::default());
        let max = 20;
        let mut time = 0;
        for slot in 0..20_000u64 {
            let client = next() % 40;
            match next() % 10 {
                0..=2 => {
                    t.register(client, slot, max);
                    r.touch(client, slot, max, true);
                }
                3 => {
                    time += next() % 30;
                    t.advance_time(time, 60);
                    r.advance(time, 60);
                }
                _ => {
                    t.record(client, slot, Bytes::new(), slot);
                    r.touch(client, slot, max, false);
                }
            }
            let mine: BTreeSet<ClientId> = t.map.keys().copied().collect();
            let theirs: BTreeSet<ClientId> = r.map.keys().copied().collect();
            assert_eq!(mine, theirs, "after slot {slot}");
            for (c, (s, active)) in &r.map {
                let got = &t.map[c];
                assert_eq!((got.last_slot, got.last_active), (*s, *active));
            }
            assert!(t.queue_len() <= 2 * t.len() + ORDER_SLACK + 1);
        }
    }

    /// The queue still agrees with the ordered set when the table is rebuilt
    /// from a checkpoint (restore) at random points, with small tables (eviction on
    /// nearly every registration) and expiry interleaved.
    #[test]
    fn the_queue_agrees_with_an_ordered_set_across_restores() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15u64);
        for max in [1usize, 2, 3, 7] {
            let (mut t, mut r) = (Sessions::new(), Reference::default());
            let mut time = 0;
            for slot in 0..20_000u64 {
                let client = next() % 12;
                match next() % 12 {
                    0..=2 => {
                        t.register(client, slot, max);
                        r.touch(client, slot, max, true);
                    }
                    3 => {
                        time += next() % 30;
                        let limit = next() % 90;
                        t.advance_time(time, limit);
                        r.advance(time, limit);
                    }
                    4 => {
                        t = Sessions::restore(t.log_time(), t.to_sorted_vec());
                    }
                    _ => {
                        t.record(client, slot, Bytes::new(), slot);
                        r.touch(client, slot, max, false);
                    }
                }
                let mine: BTreeSet<ClientId> = t.map.keys().copied().collect();
                let theirs: BTreeSet<ClientId> = r.map.keys().copied().collect();
                assert_eq!(mine, theirs, "max {max} after slot {slot}");
                for (c, (s, active)) in &r.map {
                    let got = &t.map[c];
                    assert_eq!((got.last_slot, got.last_active), (*s, *active));
                }
            }
        }
    }

    /// Batches: many touches share a slot, in any session order, a session touched
    /// more than once in one; the queue keeps them in execution order, and eviction
    /// must still pick what the ordered set picks (its lowest `(slot, id)`), restores
    /// interleaved.
    #[test]
    fn touches_sharing_a_slot_evict_as_the_ordered_set_does() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
        for max in [1usize, 2, 5, 16] {
            let (mut t, mut r) = (Sessions::new(), Reference::default());
            let mut slot = 0u64;
            for step in 0..30_000u64 {
                if next().is_multiple_of(6) {
                    slot += 1 + next() % 3;
                }
                let client = next() % 24;
                match next() % 16 {
                    0..=3 => {
                        t.register(client, slot, max);
                        r.touch(client, slot, max, true);
                    }
                    4 if step % 7 == 0 => {
                        t = Sessions::restore(t.log_time(), t.to_sorted_vec());
                    }
                    _ => {
                        t.record(client, step, Bytes::new(), slot);
                        r.touch(client, slot, max, false);
                    }
                }
                let mine: BTreeSet<ClientId> = t.map.keys().copied().collect();
                let theirs: BTreeSet<ClientId> = r.map.keys().copied().collect();
                assert_eq!(mine, theirs, "max {max} at step {step}, slot {slot}");
                assert!(t.queue_len() <= 2 * t.len() + ORDER_SLACK + 1);
            }
        }
    }

    #[test]
    fn sessions_sharing_a_slot_are_evicted_alike_after_a_restore() {
        // A batch executes requests of sessions 9, 3, 7 in slot 20 (in that order);
        // a replica that restores the table from a checkpoint must evict as the one
        // that executed the batch does, or their tables diverge.
        let mut t = Sessions::new();
        for (id, slot) in [(9, 1), (3, 2), (7, 3), (5, 4)] {
            t.register(id, slot, 16);
        }
        for id in [9, 3, 7] {
            t.record(id, 1, Bytes::from_static(b"r"), 20);
        }
        let mut restored = Sessions::restore(t.log_time(), t.to_sorted_vec());
        for (fresh, slot) in [(100, 30), (101, 31), (102, 32), (103, 33)] {
            t.register(fresh, slot, 4);
            restored.register(fresh, slot, 4);
            assert_eq!(t, restored, "after registering {fresh}");
        }
    }

    #[test]
    fn touches_out_of_slot_order_keep_the_order_exact() {
        let mut t = Sessions::new();
        t.register(1, 10, 3);
        t.register(2, 5, 3); // older slot than 1's
        t.register(3, 7, 3);
        t.register(4, 11, 3); // evicts the least recently used by slot: 2
        assert!(t.get(2).is_none());
        t.register(5, 12, 3); // then 3
        assert!(t.get(3).is_none());
        assert!(t.get(1).is_some() && t.get(4).is_some() && t.get(5).is_some());
    }
}
