//! The driver's persist-before-send order, checked from the outside.
//!
//! A spy [`Storage`] and a spy [`Transport`] share one event log with the endpoints the
//! clients use: the storage records when each persist call starts and completes (with its
//! operations), the transport records every message as it leaves, and every reply handed
//! to a client is recorded at the first log event after the driver delivered it (the log
//! polls the clients' answer channels under its lock before recording anything else, and
//! a poller task polls in between). Replaying the log, the checker keeps each node's
//! durable state (the operations of its completed persist calls) and demands that
//! - a PROMISE or RECOVER-GRANT for ballot `b` leaves only once the node durably promised
//!   `b` or higher;
//! - a PROMISE or ACCEPTED (a vote) leaves only from a node durably a voter, at an
//!   incarnation it durably holds;
//! - an ACCEPTED for ballot `b` leaves only once every listed slot is durably accepted at
//!   `b` (or durably known chosen: learned, or below the durable commit point);
//! - a successful reply for `(client, seq)` reaches the client only once that request is
//!   chosen durably: a majority of the nodes durably hold it in the same slot at the same
//!   ballot (or a node durably learned it chosen). (Not the
//!   replying node's own commit point: a reply may leave before the round that made its
//!   slot committed has persisted the new commit point, see `Ready`.)
//! - a commit point (in an ACCEPT, NEW-VIEW, HEARTBEAT, COMMIT, READ-INDEX or
//!   FETCH-REPLY) leaves only once every slot below it is chosen durably: a node durably
//!   learned its value, or a majority durably holds one value there.
//!
//! The same scenario runs on the real driver (no violation, every kind of message checked)
//! and on a driver broken on purpose to send and reply before persisting (every kind of
//! violation caught).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::client::{Client, ClientOptions, Endpoint, EndpointError};
use crate::node::{spawn_node_with_order, FlushOrder, NodeHandle, NodeOptions};
use crate::testing::linearizability::{check, AppendLog, History};
use crate::traits::AcceptorStatus;
use crate::{
    apply_op, Ballot, ClientId, Config, MemStorage, Message, NodeId, PersistOp, PersistentState,
    Reply, Request, Response, RestoreError, Slot, StateMachine, Storage, StorageError, Transport,
    TransportError, Value,
};

/// Everything the spies saw, in one order.
#[derive(Clone, Debug)]
enum Event {
    PersistStart {
        node: NodeId,
        ops: Vec<PersistOp>,
    },
    PersistDone {
        node: NodeId,
        ops: Vec<PersistOp>,
    },
    Send {
        from: NodeId,
        message: Message,
    },
    /// A reply the driver had delivered by this point (and not by the previous event).
    Reply {
        node: NodeId,
        client: ClientId,
        seq: u64,
        response: Response,
    },
}

/// A client's answer channel, watched until the driver answers on it.
struct Watched {
    node: NodeId,
    client: ClientId,
    seq: u64,
    answer: oneshot::Receiver<Reply>,
    forward: oneshot::Sender<Reply>,
}

#[derive(Default)]
struct Inner {
    events: Vec<Event>,
    watched: Vec<Watched>,
}

#[derive(Clone, Default)]
struct EventLog(Arc<Mutex<Inner>>);

impl EventLog {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `event`, after any reply delivered before it.
    fn record(&self, event: Event) {
        let mut inner = self.lock();
        Self::collect_replies(&mut inner);
        inner.events.push(event);
    }

    fn poll(&self) {
        Self::collect_replies(&mut self.lock());
    }

    fn watch(&self, w: Watched) {
        self.lock().watched.push(w);
    }

    fn events(&self) -> Vec<Event> {
        let mut inner = self.lock();
        Self::collect_replies(&mut inner);
        inner.events.clone()
    }

    fn collect_replies(inner: &mut Inner) {
        let mut i = 0;
        while i < inner.watched.len() {
            match inner.watched[i].answer.try_recv() {
                Ok(reply) => {
                    let w = inner.watched.swap_remove(i);
                    inner.events.push(Event::Reply {
                        node: w.node,
                        client: w.client,
                        seq: w.seq,
                        response: reply.response.clone(),
                    });
                    let _ = w.forward.send(reply);
                }
                Err(oneshot::error::TryRecvError::Empty) => i += 1,
                Err(oneshot::error::TryRecvError::Closed) => {
                    inner.watched.swap_remove(i);
                }
            }
        }
    }
}

/// A slow follower disk: accepting another node's proposal takes this long to become
/// durable. It opens a window in which a driver that sends before persisting is seen
/// doing so (an ACCEPTED, and the leader's reply that counts it, both land before the
/// follower's write), whatever the scheduling; a correct driver only runs slower.
const FOLLOWER_WRITE: Duration = Duration::from_millis(15);

/// How long each node's writes take to become durable.
#[derive(Clone, Copy, Debug)]
struct Disks {
    /// A write holding the node's own proposals (it leads).
    leading: Duration,
    /// A write holding another node's proposal, by node (ids 1 to 3).
    following: [Duration; 3],
}

/// Slow followers ([`FOLLOWER_WRITE`]), a leader that writes at once.
const SLOW_FOLLOWERS: Disks = Disks {
    leading: Duration::ZERO,
    following: [FOLLOWER_WRITE; 3],
};

/// A leader slower to make its own accept durable than either follower, and followers
/// of different speeds: the leader's ACCEPTs leave before its own write, so the
/// followers' ACCEPTEDs come back while it is still in progress, and a majority that
/// counts the leader's vote must not be acted on (a reply) before that write ends.
const SLOW_LEADER: Disks = Disks {
    leading: Duration::from_millis(40),
    following: [
        Duration::from_millis(5),
        Duration::from_millis(20),
        Duration::from_millis(32),
    ],
};

struct SpyStorage {
    node: NodeId,
    inner: MemStorage,
    log: EventLog,
    disks: Disks,
}

impl Storage for SpyStorage {
    fn load(&mut self) -> Result<PersistentState, StorageError> {
        self.inner.load()
    }

    fn persist(&mut self, ops: &[PersistOp]) -> Result<(), StorageError> {
        self.log.record(Event::PersistStart {
            node: self.node,
            ops: ops.to_vec(),
        });
        let accepts = |own: bool| {
            ops.iter().any(
                |op| matches!(op, PersistOp::Accept { ballot, .. } if (ballot.node == self.node) == own),
            )
        };
        // Blocks like a synchronous disk write (on the node's writer thread).
        if accepts(false) {
            std::thread::sleep(self.disks.following[(self.node - 1) as usize]);
        }
        if accepts(true) {
            std::thread::sleep(self.disks.leading);
        }
        self.inner.persist(ops)?;
        self.log.record(Event::PersistDone {
            node: self.node,
            ops: ops.to_vec(),
        });
        Ok(())
    }
}

type Inbox = mpsc::UnboundedSender<(NodeId, Message)>;

struct SpyTransport {
    node: NodeId,
    peers: Arc<HashMap<NodeId, Inbox>>,
    inbox: mpsc::UnboundedReceiver<(NodeId, Message)>,
    log: EventLog,
}

impl Transport for SpyTransport {
    fn send(&self, to: NodeId, message: Message) -> Result<(), TransportError> {
        self.log.record(Event::Send {
            from: self.node,
            message: message.clone(),
        });
        let peer = self.peers.get(&to).ok_or(TransportError::UnknownPeer(to))?;
        let _ = peer.send((self.node, message));
        Ok(())
    }

    async fn recv(&mut self) -> Option<(NodeId, Message)> {
        self.inbox.recv().await
    }

    fn try_recv(&mut self) -> Option<(NodeId, Message)> {
        self.inbox.try_recv().ok()
    }
}

/// A client's way into a node that lets the log watch the answer channel.
struct SpyEndpoint {
    handle: NodeHandle<Positions>,
    log: EventLog,
}

#[async_trait]
impl Endpoint for SpyEndpoint {
    fn node(&self) -> NodeId {
        self.handle.id()
    }

    async fn call(&self, request: Request) -> Result<Reply, EndpointError> {
        let (answer_tx, answer) = oneshot::channel();
        let (forward, forwarded) = oneshot::channel();
        self.log.watch(Watched {
            node: self.handle.id(),
            client: request.client,
            seq: request.seq,
            answer,
            forward,
        });
        self.handle
            .enqueue(request, answer_tx)
            .await
            .map_err(|_| EndpointError::stopped(self.handle.id()))?;
        forwarded
            .await
            .map_err(|_| EndpointError::stopped(self.handle.id()))
    }
}

/// Appends each command to a log and answers its position (the simulation's recorder).
#[derive(Default)]
struct Positions {
    len: u64,
}

impl StateMachine for Positions {
    type Command = (ClientId, u64);
    type Output = u64;

    fn apply(&mut self, _command: (ClientId, u64)) -> u64 {
        self.len += 1;
        self.len - 1
    }

    fn snapshot(&self) -> Vec<u8> {
        self.len.to_le_bytes().to_vec()
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), RestoreError> {
        let raw: [u8; 8] = bytes
            .try_into()
            .map_err(|_| RestoreError::new("want 8 bytes"))?;
        self.len = u64::from_le_bytes(raw);
        Ok(())
    }
}

/// A message or reply that left before the state it vouches for was durable.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Violation {
    /// A PROMISE or RECOVER-GRANT for a ballot not durably promised.
    Promise {
        node: NodeId,
        ballot: Ballot,
        durable: Ballot,
    },
    /// A vote from a node not durably a voter at the incarnation it claims.
    Vote {
        node: NodeId,
        kind: &'static str,
        incarnation: u64,
    },
    Accepted {
        node: NodeId,
        ballot: Ballot,
        slot: Slot,
    },
    Reply {
        node: NodeId,
        client: ClientId,
        seq: u64,
    },
    /// A commit point announced while a slot below it was not durably chosen.
    CommitPoint {
        node: NodeId,
        kind: &'static str,
        commit_point: Slot,
        slot: Slot,
    },
}

/// True when the value of `slot` is durably chosen: some node durably learned it, or a
/// majority durably holds one value there (at whatever ballots: a chosen value is
/// re-accepted at later ballots, never replaced).
fn durably_chosen(durable: &HashMap<NodeId, PersistentState>, slot: Slot) -> bool {
    let mut holders: Vec<(&Value, usize)> = Vec::new();
    for state in durable.values() {
        let Some(e) = state.log.get(slot) else {
            continue;
        };
        if e.chosen {
            return true;
        }
        match holders.iter_mut().find(|(v, _)| **v == e.value) {
            Some((_, n)) => *n += 1,
            None => holders.push((&e.value, 1)),
        }
    }
    holders.iter().any(|(_, n)| *n >= MAJORITY)
}

/// How many vouching messages and replies the checker examined.
#[derive(Debug, Default)]
struct Checked {
    promises: usize,
    accepted: usize,
    replies: usize,
    commit_points: usize,
}

/// Replays `events`, tracking each node's durable state, and reports every vouching
/// message or reply that left before what it vouches for was durable.
fn check_order(events: &[Event]) -> (Vec<Violation>, Checked) {
    let mut durable: HashMap<NodeId, PersistentState> = HashMap::new();
    let mut in_flight: HashMap<NodeId, &[PersistOp]> = HashMap::new();
    let mut violations = Vec::new();
    let mut checked = Checked::default();
    // Every slot below this one was durably chosen when last checked (durable states
    // only grow: it stays so).
    let mut verified: Slot = 0;
    for event in events {
        match event {
            Event::PersistStart { node, ops } => {
                // The driver persists one batch at a time.
                let earlier = in_flight.insert(*node, ops);
                assert!(earlier.is_none(), "node {node}: overlapping persist calls");
            }
            Event::PersistDone { node, ops } => {
                if let Some(started) = in_flight.remove(node) {
                    assert_eq!(started, &ops[..], "node {node}: persist changed its batch");
                }
                let state = durable.entry(*node).or_default();
                for op in ops {
                    apply_op(state, op);
                }
            }
            Event::Send { from, message } => {
                // A commit point says every slot below it is chosen.
                let announced = match message {
                    Message::Accept { commit_point, .. }
                    | Message::NewView { commit_point, .. }
                    | Message::Heartbeat { commit_point, .. }
                    | Message::Commit { commit_point, .. }
                    | Message::ReadIndex { commit_point, .. }
                    | Message::FetchReply { commit_point, .. } => Some(*commit_point),
                    _ => None,
                };
                if let Some(commit_point) = announced.filter(|c| *c > verified) {
                    checked.commit_points += 1;
                    match (verified..commit_point).find(|s| !durably_chosen(&durable, *s)) {
                        Some(slot) => violations.push(Violation::CommitPoint {
                            node: *from,
                            kind: message.kind(),
                            commit_point,
                            slot,
                        }),
                        None => verified = commit_point,
                    }
                }
                let state = durable.entry(*from).or_default();
                let vote = match message {
                    Message::Promise { incarnation, .. }
                    | Message::Accepted { incarnation, .. } => Some(*incarnation),
                    _ => None,
                };
                if let Some(incarnation) = vote {
                    if state.status != AcceptorStatus::Voter || state.incarnation < incarnation {
                        violations.push(Violation::Vote {
                            node: *from,
                            kind: message.kind(),
                            incarnation,
                        });
                    }
                }
                match message {
                    Message::Promise { ballot, .. } | Message::RecoverGrant { ballot, .. } => {
                        checked.promises += 1;
                        if state.promised < *ballot {
                            violations.push(Violation::Promise {
                                node: *from,
                                ballot: *ballot,
                                durable: state.promised,
                            });
                        }
                    }
                    Message::Accepted { ballot, slots, .. } => {
                        checked.accepted += 1;
                        for slot in slots {
                            let stored = state
                                .log
                                .get(*slot)
                                .is_some_and(|e| e.ballot == *ballot || e.chosen);
                            let compacted =
                                state.checkpoint.as_ref().is_some_and(|c| *slot < c.slot);
                            // Below its durable commit point the slot is known chosen:
                            // the acceptor acknowledges the chosen value's re-proposal
                            // without storing it again.
                            let committed = *slot < state.commit_point;
                            if !stored && !compacted && !committed {
                                violations.push(Violation::Accepted {
                                    node: *from,
                                    ballot: *ballot,
                                    slot: *slot,
                                });
                            }
                        }
                    }
                    _ => {}
                }
            }
            Event::Reply {
                node,
                client,
                seq,
                response: Response::Ok(_),
            } => {
                checked.replies += 1;
                // Chosen: a majority durably accepted the request in one slot at one
                // ballot, or some node durably learned it chosen there.
                let mut holders: HashMap<(Slot, Ballot), usize> = HashMap::new();
                let mut learned = false;
                for state in durable.values() {
                    for (slot, e) in &state.log {
                        if e.value
                            .requests()
                            .iter()
                            .any(|r| r.client == *client && r.seq == *seq)
                        {
                            *holders.entry((slot, e.ballot)).or_default() += 1;
                            learned |= e.chosen;
                        }
                    }
                }
                let chosen = learned || holders.values().any(|n| *n >= MAJORITY);
                if !chosen {
                    violations.push(Violation::Reply {
                        node: *node,
                        client: *client,
                        seq: *seq,
                    });
                }
            }
            // Redirects, Busy and the like vouch for nothing.
            Event::Reply { .. } => {}
        }
    }
    (violations, checked)
}

const CLIENTS: u64 = 3;
/// A majority of the three nodes of [`run_cluster`].
const MAJORITY: usize = 2;
const COMMANDS: u64 = 6;

/// What one run of the scenario produced.
struct Run {
    events: Vec<Event>,
    history: History<(ClientId, u64), u64>,
}

/// Three nodes on the spy network, three clients running a few commands each through
/// [`Client`] (sessions, redirects, retries), then an orderly shutdown.
async fn run_cluster(order: FlushOrder, disks: Disks) -> Run {
    let log = EventLog::default();
    let ids: Vec<NodeId> = vec![1, 2, 3];
    let mut inboxes = HashMap::new();
    let mut receivers = HashMap::new();
    for &id in &ids {
        let (tx, rx) = mpsc::unbounded_channel();
        inboxes.insert(id, tx);
        receivers.insert(id, rx);
    }
    let peers = Arc::new(inboxes);
    let options = NodeOptions {
        tick: Duration::from_millis(2),
        ..NodeOptions::default()
    };
    let mut nodes = Vec::new();
    for &id in &ids {
        let mut config = Config::new(id, ids.clone());
        config.checkpoint_interval = 0;
        if disks.leading > Duration::ZERO {
            // A leader's heartbeats leave between its slow writes: an election timeout
            // of a few of them, so that followers do not depose it under a busy machine.
            config.election_ticks = 100;
        }
        let transport = SpyTransport {
            node: id,
            peers: peers.clone(),
            inbox: receivers.remove(&id).expect("one inbox per node"),
            log: log.clone(),
        };
        let storage = SpyStorage {
            node: id,
            inner: MemStorage::new(),
            log: log.clone(),
            disks,
        };
        let node = spawn_node_with_order(
            config,
            Positions::default(),
            transport,
            storage,
            options.clone(),
            order,
        )
        .expect("node starts");
        nodes.push(node);
    }
    let poller = {
        let log = log.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                log.poll();
            }
        })
    };

    let clock = Arc::new(AtomicU64::new(0));
    let history = Arc::new(Mutex::new(History::new()));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let endpoints: Vec<Arc<dyn Endpoint>> = nodes
            .iter()
            .map(|n| {
                Arc::new(SpyEndpoint {
                    handle: n.clone(),
                    log: log.clone(),
                }) as Arc<dyn Endpoint>
            })
            .collect();
        let options = ClientOptions {
            attempt_timeout: Duration::from_millis(300),
            min_backoff: Duration::from_millis(2),
            max_backoff: Duration::from_millis(20),
            default_deadline: Duration::from_secs(3),
            session_idle_limit: None,
        };
        let mut client: Client<Positions> = Client::with_id(100 + c, endpoints, options);
        let (clock, history) = (clock.clone(), history.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..COMMANDS {
                let command = (client.id(), client.next_request_number());
                let call = clock.fetch_add(1, Ordering::SeqCst);
                let op = history.lock().expect("history").invoke(call, command);
                if let Ok(position) = client.execute(&command).await {
                    let ret = clock.fetch_add(1, Ordering::SeqCst);
                    history
                        .lock()
                        .expect("history")
                        .complete(op, ret, position)
                        .expect("completes once");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    for n in &nodes {
        n.shutdown().await;
    }
    poller.abort();
    let history = history.lock().expect("history").clone();
    Run {
        events: log.events(),
        history,
    }
}

async fn run_bounded(order: FlushOrder, disks: Disks) -> Run {
    tokio::time::timeout(Duration::from_secs(20), run_cluster(order, disks))
        .await
        .expect("the cluster run finishes in time")
}

// One worker per node and one for the clients: a node blocked in a slow write never
// holds up the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_driver_persists_before_anything_vouches_for_it() {
    for disks in [SLOW_FOLLOWERS, SLOW_LEADER] {
        let run = run_bounded(FlushOrder::PersistFirst, disks).await;
        check_correct_run(&run, disks);
    }
}

fn check_correct_run(run: &Run, disks: Disks) {
    let (violations, checked) = check_order(&run.events);
    assert!(violations.is_empty(), "{disks:?}: {violations:#?}");
    // The run exercised every kind of vouching output.
    assert!(checked.promises > 0, "{checked:?}");
    assert!(checked.accepted > 0, "{checked:?}");
    assert!(checked.commit_points > 0, "{checked:?}");
    // Every command and registration was answered.
    assert!(
        checked.replies >= (CLIENTS * (COMMANDS + 1)) as usize,
        "{checked:?}"
    );
    let ops = run.history.operations();
    assert!(
        ops.iter().all(|op| !op.is_pending()),
        "every command completed"
    );
    assert_eq!(check(&AppendLog, ops), Ok(()));
    assert_eq!(AppendLog::check_fast(ops), Ok(()));
}

/// Which kinds of early output `violations` show: PROMISE, ACCEPTED, reply, commit
/// point.
fn kinds_caught(violations: &[Violation]) -> [bool; 4] {
    let any = |kind: fn(&Violation) -> bool| violations.iter().any(kind);
    [
        any(|v| matches!(v, Violation::Promise { .. })),
        any(|v| matches!(v, Violation::Accepted { .. })),
        any(|v| matches!(v, Violation::Reply { .. })),
        any(|v| matches!(v, Violation::CommitPoint { .. })),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_driver_that_sends_before_persisting_is_caught() {
    let run = run_bounded(FlushOrder::SendFirst, SLOW_FOLLOWERS).await;
    let (violations, checked) = check_order(&run.events);
    assert!(checked.replies > 0, "{checked:?}");
    assert_eq!(
        kinds_caught(&violations),
        [true; 4],
        "each kind of early output is caught: {violations:#?}"
    );
}

/// The driver writes on the blocking pool and handles the next inputs meanwhile; their
/// outputs must wait for the write in flight too, not only for their own round's. A
/// driver that lets them go once their own round's writes (none yet) allow is caught
/// with a leader slower to write than its followers: their ACCEPTEDs complete a
/// majority with its vote while that vote is still being written, and the reply and
/// commit point that follow leave before a majority holds the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pipelining_driver_that_sends_ahead_of_the_write_in_flight_is_caught() {
    let run = run_bounded(FlushOrder::EagerPipeline, SLOW_LEADER).await;
    let (violations, checked) = check_order(&run.events);
    assert!(checked.replies > 0, "{checked:?}");
    let [_, _, reply, commit_point] = kinds_caught(&violations);
    assert!(
        reply && commit_point,
        "early replies and commit points are caught: {violations:#?}"
    );
}

#[test]
fn the_order_checker_flags_each_early_output_on_a_hand_made_log() {
    let b = Ballot::new(1, 1);
    let register = Value::Request(Request::register(7));
    let accept = PersistOp::Accept {
        slot: 0,
        ballot: b,
        value: register,
    };
    let voter = PersistOp::Status {
        status: AcceptorStatus::Voter,
        incarnation: 0,
    };
    let promise = Message::Promise {
        ballot: b,
        commit_point: 0,
        entries: Vec::new(),
        truncated: false,
        nonce: 0,
        incarnation: 0,
        incarnations: Vec::new(),
        from_slot: 0,
    };
    let accepted = Message::Accepted {
        ballot: b,
        slots: vec![0],
        incarnation: 0,
    };
    let send = |from: NodeId, message: &Message| Event::Send {
        from,
        message: message.clone(),
    };
    let done = |node: NodeId, ops: Vec<PersistOp>| Event::PersistDone { node, ops };
    let reply = Event::Reply {
        node: 1,
        client: 7,
        seq: 0,
        response: Response::Ok(Default::default()),
    };
    // In order: no violation.
    let good = vec![
        done(2, vec![voter.clone(), PersistOp::Promise(b)]),
        send(2, &promise),
        done(2, vec![accept.clone()]),
        send(2, &accepted),
        done(1, vec![accept.clone(), PersistOp::CommitPoint(1)]),
        reply.clone(),
    ];
    let (violations, checked) = check_order(&good);
    assert_eq!(violations, vec![]);
    assert_eq!(
        (checked.promises, checked.accepted, checked.replies),
        (1, 1, 1)
    );
    // Each output one step early: each caught. One node's durable accept does not
    // cover a reply (a majority must hold the request), and a durable promise does not
    // cover an ACCEPTED.
    let bad = vec![
        done(2, vec![voter.clone()]),
        send(2, &promise),
        done(2, vec![PersistOp::Promise(b)]),
        send(2, &accepted),
        done(1, vec![accept.clone(), PersistOp::CommitPoint(1)]),
        reply,
        done(2, vec![accept.clone()]),
    ];
    let (violations, _) = check_order(&bad);
    assert_eq!(
        violations,
        vec![
            Violation::Promise {
                node: 2,
                ballot: b,
                durable: Ballot::ZERO
            },
            Violation::Accepted {
                node: 2,
                ballot: b,
                slot: 0
            },
            Violation::Reply {
                node: 1,
                client: 7,
                seq: 0
            },
        ]
    );
    // A commit point covering slot 0 leaves once a majority durably holds its value,
    // not when only the leader does.
    let commit = Message::Commit {
        ballot: b,
        commit_point: 1,
    };
    let early = vec![done(1, vec![accept.clone()]), send(1, &commit)];
    assert_eq!(
        check_order(&early).0,
        vec![Violation::CommitPoint {
            node: 1,
            kind: commit.kind(),
            commit_point: 1,
            slot: 0
        }]
    );
    let in_time = vec![
        done(1, vec![accept.clone()]),
        done(2, vec![accept.clone()]),
        send(1, &commit),
    ];
    let (violations, checked) = check_order(&in_time);
    assert_eq!((violations, checked.commit_points), (vec![], 1));
    // A vote from a node that is not durably a voter (yet), or claims an incarnation it
    // has not stored.
    let recovering = vec![
        done(2, vec![PersistOp::Promise(b)]),
        send(2, &promise),
        done(
            2,
            vec![PersistOp::Status {
                status: AcceptorStatus::Voter,
                incarnation: 1,
            }],
        ),
        send(
            2,
            &Message::Accepted {
                ballot: b,
                slots: vec![],
                incarnation: 2,
            },
        ),
    ];
    let (violations, _) = check_order(&recovering);
    assert_eq!(
        violations,
        vec![
            Violation::Vote {
                node: 2,
                kind: "promise",
                incarnation: 0
            },
            Violation::Vote {
                node: 2,
                kind: "accepted",
                incarnation: 2
            },
        ]
    );
}
