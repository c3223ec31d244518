//! Identifiers and values shared by every layer.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Identifies a replica in the cluster. Any `u64` works; ids need only be unique.
pub type NodeId = u64;

/// A position in the replicated log. Slots start at 0.
pub type Slot = u64;

/// Identifies a client session, or a registration in flight.
///
/// A session's id is assigned by the cluster: it is the slot of the log entry that
/// registered it, returned (postcard-encoded `u64`) in the reply to the registration.
/// The `client` of a registration request is a nonce the client picks to recognise
/// the reply (the [`Client`](crate::Client) handle draws a random one).
pub type ClientId = u64;

/// A Paxos ballot: `(round, node_id)`, totally ordered by round first, then node id.
///
/// A replica that wants to lead picks a round higher than any it has seen; the node id
/// breaks ties so that two replicas never use the same ballot.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    /// The round number; higher rounds win.
    pub round: u64,
    /// The replica that owns this ballot.
    pub node: NodeId,
}

impl Ballot {
    /// The lowest ballot: nobody has promised anything yet.
    pub const ZERO: Ballot = Ballot { round: 0, node: 0 };

    /// Creates a ballot.
    pub const fn new(round: u64, node: NodeId) -> Self {
        Ballot { round, node }
    }

    /// The configuration epoch this ballot belongs to: the high 32 bits of its round.
    ///
    /// Each configuration of the cluster ([`Membership`]) runs its own rounds, from
    /// [`Ballot::epoch_base`] up, so every ballot of epoch `k + 1` is above every
    /// ballot of epoch `k`. Clusters that never changed their membership are in epoch
    /// 0, whose rounds are the ones ballots always had.
    ///
    /// ```
    /// use paxos_core::Ballot;
    /// assert_eq!(Ballot::new(7, 3).epoch(), 0);
    /// assert_eq!(Ballot::epoch_base(2).epoch(), 2);
    /// assert!(Ballot::epoch_base(1) > Ballot::new(u32::MAX as u64, 9));
    /// ```
    pub const fn epoch(&self) -> u64 {
        self.round >> EPOCH_SHIFT
    }

    /// The lowest ballot of epoch `epoch` (owned by no replica): a replica that moves to
    /// the epoch promises it, so that no ballot of an earlier epoch counts there.
    pub const fn epoch_base(epoch: u64) -> Self {
        Ballot {
            round: epoch << EPOCH_SHIFT,
            node: 0,
        }
    }
}

/// A ballot's round holds its epoch in the bits from here up.
const EPOCH_SHIFT: u32 = 32;

/// A voting member of a [`Membership`]: its id and its address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The member's node id.
    pub id: NodeId,
    /// Where to reach it, for transports that need to be told (the TCP transport reads
    /// `host:port`); opaque to the protocol, and may be empty.
    pub address: String,
}

/// A configuration of the cluster: which replicas vote, from which slot on.
///
/// The first configuration (epoch 0) is [`Config::members`](crate::Config::members).
/// Each change is a log value, [`Value::Reconfigure`], proposed with
/// [`Replica::reconfigure`](crate::Replica::reconfigure): chosen in slot `s`, it ends
/// epoch `k` at `s` (a *stop-sign*: nothing of epoch `k` is chosen above it) and the
/// members it names decide every slot from `s + 1`, with ballots of epoch `k + 1`.
/// See the README's "Membership changes" for the rules that make this safe.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Membership {
    /// The epoch this configuration starts: the previous one's plus one.
    pub epoch: u64,
    /// The voting members, in the order their acknowledgements are counted.
    pub members: Vec<Member>,
}

impl Membership {
    /// The members' ids, in order.
    pub fn ids(&self) -> Vec<NodeId> {
        self.members.iter().map(|m| m.id).collect()
    }

    /// Whether `id` is a voting member.
    pub fn contains(&self, id: NodeId) -> bool {
        self.members.iter().any(|m| m.id == id)
    }

    /// The address given for member `id`, if it is one and has one.
    pub fn address(&self, id: NodeId) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.address.as_str())
            .filter(|a| !a.is_empty())
    }

    /// Checks what a configuration must be: between 1 and
    /// [`MAX_MEMBERS`](crate::MAX_MEMBERS) members, no id twice, addresses of at most
    /// 1 KiB.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        use crate::ConfigError;
        if self.members.is_empty() {
            return Err(ConfigError::NoMembers);
        }
        if self.members.len() > crate::config::MAX_MEMBERS {
            return Err(ConfigError::TooManyMembers {
                max: crate::config::MAX_MEMBERS,
                got: self.members.len(),
            });
        }
        for (i, m) in self.members.iter().enumerate() {
            if self.members[..i].iter().any(|o| o.id == m.id) {
                return Err(ConfigError::DuplicateMember(m.id));
            }
            if m.address.len() > MAX_ADDRESS_BYTES {
                return Err(ConfigError::OutOfRange {
                    name: "member address",
                    requirement: "at most 1024 bytes",
                });
            }
        }
        Ok(())
    }
}

/// The longest member address a [`Membership`] accepts.
const MAX_ADDRESS_BYTES: usize = 1024;

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, n{})", self.round, self.node)
    }
}

/// A client command as it travels through the protocol.
///
/// `(client, seq)` identifies the request for exactly-once execution: a client numbers
/// its requests 1, 2, 3, ... within its session and reuses the number when it retries.
/// `seq == 0` is the session registration a client sends before its first command;
/// its reply carries the session id the later requests use (see
/// [`Sessions`](crate::Sessions)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The session id; for a registration (`seq == 0`), the client's nonce.
    pub client: ClientId,
    /// The request number within the session (0 = register a session).
    pub seq: u64,
    /// The state machine command, encoded with postcard.
    pub payload: Bytes,
}

impl Request {
    /// A session registration, recognised by `nonce`. The reply's payload is the new
    /// session's id (a postcard-encoded `u64`).
    pub fn register(nonce: ClientId) -> Self {
        let client = nonce;
        Request {
            client,
            seq: 0,
            payload: Bytes::new(),
        }
    }

    /// True when this request registers a session rather than carrying a command.
    pub fn is_register(&self) -> bool {
        self.seq == 0
    }

    /// A linearizable read: `payload` is a command the state machine answers with
    /// [`StateMachine::query`](crate::StateMachine::query), without entering the log or
    /// the session table. `nonce` names the read (its reply carries it back); give each
    /// read a fresh one.
    ///
    /// The leader answers once it has confirmed, with a round of messages to a majority
    /// begun after the read arrived, that it still leads, and has executed everything
    /// that may have been chosen before (a read index, as in Raft's §6.4).
    pub fn read(nonce: ClientId, payload: Bytes) -> Self {
        Request {
            client: nonce,
            seq: READ_SEQ,
            payload,
        }
    }

    /// True when this request is a [read](Request::read).
    pub fn is_read(&self) -> bool {
        self.seq == READ_SEQ
    }

    /// A **stale read**, the explicit, named alternative to [`read`](Request::read):
    /// whichever replica receives it (a follower too) answers from its own state, with
    /// no message to any other replica. The answer is the state after some prefix of
    /// the chosen log, never one with a value that was not chosen, but possibly older
    /// than writes that already completed: it is not linearizable.
    ///
    /// `floor` is the least executed slot the answer may reflect: a replica that has
    /// executed less keeps the read until it has (or, after an election timeout,
    /// redirects it). A client that passes the executed slot of its previous stale
    /// answer ([`StaleAnswer::executed`]) never sees the state go back, whichever
    /// replicas answer (monotonic reads). [`Client::read_stale`](crate::Client::read_stale)
    /// does this for you.
    ///
    /// The reply's payload is a postcard-encoded [`StaleAnswer`]. The floor travels in
    /// the request number (`STALE_READ_BASE + floor`, capped below [`READ_SEQ`]), so
    /// the wire format of [`Request`] is unchanged.
    pub fn stale_read(nonce: ClientId, payload: Bytes, floor: Slot) -> Self {
        Request {
            client: nonce,
            seq: STALE_READ_BASE.saturating_add(floor).min(READ_SEQ - 1),
            payload,
        }
    }

    /// True when this request is a [stale read](Request::stale_read).
    pub fn is_stale_read(&self) -> bool {
        (STALE_READ_BASE..READ_SEQ).contains(&self.seq)
    }

    /// The floor of a [stale read](Request::stale_read): the least executed slot its
    /// answer may reflect (0 for any other request).
    pub fn stale_read_floor(&self) -> Slot {
        if self.is_stale_read() {
            self.seq - STALE_READ_BASE
        } else {
            0
        }
    }
}

/// The request number that marks a [read](Request::read): no session ever reaches it.
pub const READ_SEQ: u64 = u64::MAX;

/// Request numbers from here up to (not including) [`READ_SEQ`] mark
/// [stale reads](Request::stale_read) and carry their floor; no session reaches them
/// (a client would have to send 2^63 commands).
pub const STALE_READ_BASE: u64 = 1 << 63;

/// The payload of the reply to a [stale read](Request::stale_read): the answer and
/// the executed slot it reflects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleAnswer<O> {
    /// The replica had executed every slot below this one, and nothing above, when it
    /// answered. Pass it as the floor of the next stale read for monotonic reads.
    pub executed: Slot,
    /// [`StateMachine::query`](crate::StateMachine::query)'s answer.
    pub output: O,
}

/// The value of a log slot.
///
/// Encoded with postcard by variant index, so variants are only ever appended: storage
/// and checkpoints written before a variant was added still decode. A new variant
/// changes the peer wire format (the TCP transport's protocol version says so). The
/// enum is deliberately not `#[non_exhaustive]`: code that inspects the log should be
/// told by the compiler when a kind of entry appears.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    /// Fills a gap left by a failed leader; executing it changes nothing.
    Noop,
    /// A client request.
    Request(Request),
    /// A clock entry for session expiry as versions before
    /// [`ClockStep`](Value::ClockStep) wrote it: executing it advances the replicated
    /// log time to `time` (if later) and drops the sessions idle for more than
    /// `idle_limit` of log time. Leaders no longer propose it; logs and checkpoints
    /// written by older versions still hold it, and it still executes as it did.
    Clock {
        /// The log time this entry sets: the log time the leader had executed when it
        /// started counting, plus the ticks it counted since.
        time: u64,
        /// Sessions idle for more than this many ticks of log time are dropped:
        /// the leader's [`Config::session_ttl_ticks`](crate::Config::session_ttl_ticks)
        /// plus its clock period.
        idle_limit: u64,
    },
    /// Several client requests chosen together in one slot, executed in order as if
    /// each had a slot of its own. A leader packs the requests waiting in its queue
    /// into one value, up to [`Config::max_requests_per_slot`](crate::Config::max_requests_per_slot):
    /// under load every per-slot cost (the log entry, the write to storage, the
    /// entry in each ACCEPT) is paid once per batch rather than once per command.
    /// Session registrations are never batched (a session's id is the slot of its
    /// registration); a registration found in a batch is skipped by every replica
    /// alike. Shared, so that the copies a batch makes on its way (the log, the
    /// write to storage, one ACCEPT per peer) cost one reference count each, not one
    /// per request.
    Batch(std::sync::Arc<[Request]>),
    /// The leader's clock, for session expiry (see [`Sessions`](crate::Sessions)):
    /// one step of the log time, from `from` to `time`, by the leader of `ballot`.
    /// It counts only where the log time is `from` and no step of a higher ballot
    /// counted before it ([`Sessions::step_counts`](crate::Sessions::step_counts));
    /// then it advances the log time to `time` and drops the sessions idle for more
    /// than `idle_limit` of log time. Elsewhere it does nothing.
    ///
    /// A leader opens its reign with a step (from the log time after the entries it
    /// re-proposes, to the same time) in the slot after them, before any request,
    /// then proposes one every
    /// [`Config::session_clock_ticks`](crate::Config::session_clock_ticks) ticks while
    /// sessions exist, each from where its previous one ended. So a deposed leader's
    /// steps, which a later leader may have to re-propose in slots behind the
    /// requests of newer leaders, do not count there: a newer leader's step came
    /// first, and they would otherwise add ticks that passed before those requests
    /// were sent. It carries all its numbers so that executing it reads nothing
    /// replica-local (not even the configuration).
    ClockStep {
        /// The ballot of the leader that proposed it.
        ballot: Ballot,
        /// The log time this step starts from: where the leader's previous step
        /// ended, or the log time of its log when it was elected.
        from: u64,
        /// The log time this step sets: `from` plus the ticks the leader counted
        /// since its previous step.
        time: u64,
        /// Sessions idle for more than this many ticks of log time are dropped:
        /// the leader's [`Config::session_ttl_ticks`](crate::Config::session_ttl_ticks)
        /// plus its clock period.
        idle_limit: u64,
    },
    /// A membership change: the *stop-sign* of the current epoch. Chosen in slot `s`,
    /// it ends epoch `membership.epoch - 1` at `s`; the members it names decide the
    /// slots from `s + 1` on (see [`Membership`]). Executing it changes nothing in the
    /// state machine. A stop-sign whose epoch is not the next one executes as a no-op.
    Reconfigure(std::sync::Arc<Membership>),
}

impl Value {
    /// The bytes this value counts for in a batch's
    /// [`Config::max_message_bytes`](crate::Config::max_message_bytes): its payload plus
    /// [`VALUE_OVERHEAD_BYTES`](crate::VALUE_OVERHEAD_BYTES).
    pub fn size_hint(&self) -> usize {
        let payload = match self {
            Value::Request(r) => r.payload.len(),
            Value::Noop | Value::Clock { .. } | Value::ClockStep { .. } => 0,
            Value::Reconfigure(m) => m.members.iter().fold(0usize, |n, m| {
                n.saturating_add(m.address.len()).saturating_add(16)
            }),
            Value::Batch(requests) => {
                // Each request counts as a value of its own: payload plus overhead.
                return requests.iter().fold(0usize, |n, r| {
                    n.saturating_add(r.payload.len())
                        .saturating_add(crate::config::VALUE_OVERHEAD_BYTES)
                });
            }
        };
        payload.saturating_add(crate::config::VALUE_OVERHEAD_BYTES)
    }

    /// The client requests this value carries, in execution order: a batch's, a
    /// request alone, or none.
    ///
    /// ```
    /// use paxos_core::{Request, Value};
    /// let batch = Value::Batch(vec![Request::register(7), Request::register(8)].into());
    /// assert_eq!(batch.requests().len(), 2);
    /// assert!(Value::Noop.requests().is_empty());
    /// ```
    pub fn requests(&self) -> &[Request] {
        match self {
            Value::Request(r) => std::slice::from_ref(r),
            Value::Batch(requests) => requests,
            Value::Noop | Value::Clock { .. } | Value::ClockStep { .. } | Value::Reconfigure(_) => {
                &[]
            }
        }
    }

    /// A short human-readable summary, for logs and introspection.
    pub fn summary(&self) -> String {
        match self {
            Value::Noop => "no-op".to_string(),
            Value::Request(r) if r.is_register() => format!("register c{}", r.client),
            Value::Request(r) => format!("c{}#{} ({} bytes)", r.client, r.seq, r.payload.len()),
            Value::Clock { time, idle_limit } => {
                format!("clock t={time} (expire idle > {idle_limit})")
            }
            Value::ClockStep {
                ballot,
                from,
                time,
                idle_limit,
            } => format!("clock t={from}->{time} by {ballot} (expire idle > {idle_limit})"),
            Value::Reconfigure(m) => {
                let ids: Vec<String> = m.members.iter().map(|m| format!("n{}", m.id)).collect();
                format!("members of epoch {}: {}", m.epoch, ids.join(", "))
            }
            Value::Batch(requests) => {
                let each: Vec<String> = requests
                    .iter()
                    .map(|r| format!("c{}#{}", r.client, r.seq))
                    .collect();
                format!("batch of {}: {}", requests.len(), each.join(", "))
            }
        }
    }
}

/// What a replica tells a client about its request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// The request was executed (now or earlier); the payload is the state machine's
    /// output encoded with postcard. A session registration answers with the new
    /// session's id (a postcard-encoded `u64`).
    Ok(Bytes),
    /// This replica is not the leader. `leader` is the leader it believes in, if any.
    Redirect {
        /// The believed leader, or `None` when an election is under way.
        leader: Option<NodeId>,
    },
    /// The client's session is unknown (never registered, or dropped to make room).
    /// The outcome of the request is unknown; the client must register a new session.
    SessionExpired,
    /// The request number is older than the session's latest: a late duplicate.
    Stale,
    /// The leader's queue is full; retry later.
    Busy,
    /// The command could not be decoded by the state machine; it was not applied.
    Invalid {
        /// Why decoding failed.
        reason: String,
    },
}

/// A reply to a client request, produced by a replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The session the reply belongs to.
    pub client: ClientId,
    /// The request number the reply answers.
    pub seq: u64,
    /// The outcome.
    pub response: Response,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Storage and checkpoints hold values encoded with postcard: the encodings of the
    /// variants that existed before `Clock` (and before `ClockStep`) must not change, or data written by an
    /// older version would no longer load.
    #[test]
    fn older_values_keep_their_encoding() {
        let request = Value::Request(Request {
            client: 300,
            seq: 2,
            payload: Bytes::from_static(b"ab"),
        });
        assert_eq!(postcard::to_allocvec(&Value::Noop).unwrap(), [0]);
        assert_eq!(
            postcard::to_allocvec(&request).unwrap(),
            [1, 0xac, 0x02, 2, 2, b'a', b'b']
        );
        let clock = Value::Clock {
            time: 5,
            idle_limit: 128,
        };
        let bytes = postcard::to_allocvec(&clock).unwrap();
        assert_eq!(bytes, [2, 5, 0x80, 0x01]);
        assert_eq!(postcard::from_bytes::<Value>(&bytes).unwrap(), clock);
        assert_eq!(clock.summary(), "clock t=5 (expire idle > 128)");
        let step = Value::ClockStep {
            ballot: Ballot::new(7, 2),
            from: 3,
            time: 5,
            idle_limit: 128,
        };
        let bytes = postcard::to_allocvec(&step).unwrap();
        assert_eq!(bytes, [4, 7, 2, 3, 5, 0x80, 0x01]);
        assert_eq!(postcard::from_bytes::<Value>(&bytes).unwrap(), step);
        assert_eq!(
            step.summary(),
            format!("clock t=3->5 by {} (expire idle > 128)", Ballot::new(7, 2))
        );
    }
}
