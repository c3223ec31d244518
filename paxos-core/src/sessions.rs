//! The replicated session table behind exactly-once execution.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::types::{ClientId, Slot};

/// One client's session: its latest executed request and the reply it got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The highest request number executed (0 right after registration).
    pub last_seq: u64,
    /// The encoded output of request `last_seq`.
    pub reply: Bytes,
    /// The slot that last touched the session (for least-recently-used eviction).
    pub last_slot: Slot,
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
    /// The session does not exist (never registered, or evicted).
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
/// **How long sessions are kept.** At most `max_sessions` sessions live at once (see
/// [`Config::max_sessions`](crate::Config)); registering one more drops the session
/// least recently used, by slot order, so every replica drops the same one. A client
/// whose session was dropped gets
/// [`Response::SessionExpired`](crate::Response::SessionExpired) for its next request,
/// which is then *not* executed; since the client cannot know whether an earlier
/// attempt of that request was, [`Client`](crate::Client) reports
/// [`ClientError::SessionExpired`](crate::ClientError::SessionExpired) and registers a
/// fresh session for the requests that follow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sessions {
    map: HashMap<ClientId, Session>,
    by_age: BTreeSet<(Slot, ClientId)>,
}

impl Sessions {
    /// An empty table.
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

    /// Decides what to do with request `seq` of `client`.
    pub fn check(&self, client: ClientId, seq: u64) -> SessionCheck {
        match self.map.get(&client) {
            None => SessionCheck::Unknown,
            Some(s) if seq == s.last_seq => SessionCheck::Duplicate(s.reply.clone()),
            Some(s) if seq < s.last_seq => SessionCheck::Stale,
            Some(_) => SessionCheck::Fresh,
        }
    }

    /// Registers `client` at `slot`, evicting the least recently used session when the
    /// table holds `max` already. Registering an existing session only touches it.
    pub fn register(&mut self, client: ClientId, slot: Slot, max: usize) {
        if let Some(s) = self.map.get_mut(&client) {
            self.by_age.remove(&(s.last_slot, client));
            s.last_slot = slot;
            self.by_age.insert((slot, client));
            return;
        }
        while self.map.len() >= max.max(1) {
            let Some(oldest) = self.by_age.pop_first() else {
                break;
            };
            self.map.remove(&oldest.1);
        }
        self.map.insert(
            client,
            Session {
                last_seq: 0,
                reply: Bytes::new(),
                last_slot: slot,
            },
        );
        self.by_age.insert((slot, client));
    }

    /// Records that request `seq` of `client` was executed at `slot` with `reply`.
    /// Does nothing for an unknown session.
    pub fn record(&mut self, client: ClientId, seq: u64, reply: Bytes, slot: Slot) {
        if let Some(s) = self.map.get_mut(&client) {
            self.by_age.remove(&(s.last_slot, client));
            s.last_seq = seq;
            s.reply = reply;
            s.last_slot = slot;
            self.by_age.insert((slot, client));
        }
    }

    /// All sessions, sorted by client id (for snapshots and inspection).
    pub fn to_sorted_vec(&self) -> Vec<(ClientId, Session)> {
        let mut v: Vec<_> = self.map.iter().map(|(c, s)| (*c, s.clone())).collect();
        v.sort_by_key(|(c, _)| *c);
        v
    }

    /// Rebuilds a table from [`Sessions::to_sorted_vec`].
    pub fn from_vec(v: Vec<(ClientId, Session)>) -> Self {
        let mut t = Sessions::new();
        for (c, s) in v {
            t.by_age.insert((s.last_slot, c));
            t.map.insert(c, s);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        t.record(7, 2, Bytes::from_static(b"r2"), 2);
        assert_eq!(t.check(7, 1), SessionCheck::Stale);
        assert_eq!(t.check(7, 3), SessionCheck::Fresh);
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
}
