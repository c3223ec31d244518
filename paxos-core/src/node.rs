//! The async node driver: a tokio task that owns a replica and does its IO.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, debug_span, error, info};

use crate::client::{Endpoint, EndpointError, EndpointErrorKind};
use crate::config::Config;
use crate::counters::Counters;
use crate::error::{NodeError, TransferError};
use crate::node_metrics::NodeMetrics;
use crate::replica::{Replica, ReplicaStatus, SlotInfo, ViewChange};
use crate::traits::{StateMachine, Storage, Transport};
use crate::types::{ClientId, NodeId, Reply, Request, Slot};

/// How the driver runs a replica.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeOptions {
    /// The length of one replica tick. Heartbeat and election timeouts are counted in
    /// ticks ([`Config::heartbeat_ticks`], [`Config::election_ticks`]).
    pub tick: Duration,
    /// The most inputs (messages, requests) folded into one persist-send-reply round.
    pub max_inputs_per_round: usize,
    /// Capacity of the handle's command queue; submitters wait when it is full.
    pub queue_capacity: usize,
}

impl NodeOptions {
    /// Sets [`NodeOptions::tick`].
    pub fn with_tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// Sets [`NodeOptions::max_inputs_per_round`].
    pub fn with_max_inputs_per_round(mut self, n: usize) -> Self {
        self.max_inputs_per_round = n;
        self
    }

    /// Sets [`NodeOptions::queue_capacity`].
    pub fn with_queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n;
        self
    }
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            tick: Duration::from_millis(10),
            max_inputs_per_round: 512,
            queue_capacity: 8192,
        }
    }
}

/// The order in which [`Driver::flush`] handles a round's outputs. Only the correct order
/// exists outside tests; the broken one lets the tests prove that their persist-before-send
/// checker catches a driver that vouches for state it has not stored yet.
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum FlushOrder {
    /// Persist, then send, then reply (the real driver).
    #[default]
    PersistFirst,
    /// Broken on purpose: send and reply, then persist.
    SendFirst,
    /// Broken on purpose: while a write is in flight, the outputs that wait for no
    /// write of *their* round (`messages_now`, `replies_now`) leave at once, although
    /// they may rest on the write still in flight.
    EagerPipeline,
}

type InspectFn<S> = Box<dyn FnOnce(&Replica<S>) + Send>;

enum Command<S> {
    Request(Request, oneshot::Sender<Reply>),
    Inspect(InspectFn<S>),
    TransferLeadership(NodeId, oneshot::Sender<Result<(), TransferError>>),
    Reconfigure(
        Vec<crate::Member>,
        oneshot::Sender<Result<crate::Slot, crate::ReconfigureError>>,
    ),
    Shutdown,
}

/// A cloneable handle to a running node: submit requests, inspect the replica, shut it
/// down. Dropping every handle also stops the node.
pub struct NodeHandle<S> {
    id: NodeId,
    tx: mpsc::Sender<Command<S>>,
    done: watch::Receiver<bool>,
}

impl<S> Clone for NodeHandle<S> {
    fn clone(&self) -> Self {
        NodeHandle {
            id: self.id,
            tx: self.tx.clone(),
            done: self.done.clone(),
        }
    }
}

impl<S> fmt::Debug for NodeHandle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeHandle").field("id", &self.id).finish()
    }
}

/// Starts a node on the current tokio runtime.
///
/// Loads the replica's state from `storage`, then spawns a task that turns a timer
/// into ticks, feeds inbound messages and submitted requests to the [`Replica`], and
/// handles its outputs in the required order: persist (one [`Storage::persist`] call
/// for every input folded into the round: group commit), then send, then reply.
/// A storage error stops the node (it will not vouch for writes it could not make).
///
/// A store that [blocks](Storage::blocks) writes on tokio's blocking pool while the
/// node goes on handling inputs; everything those inputs produce, even what waits for
/// no write of its own, leaves only once that write is durable, with the writes it
/// brings starting right after (persistence pipelined with the next round's
/// processing). [`NodeHandle::shutdown`] lets the write in flight finish and hands over
/// what waited for it.
///
/// ```
/// # use paxos_core::*;
/// # #[derive(Default)] struct Echo;
/// # impl StateMachine for Echo {
/// #     type Command = String; type Output = String;
/// #     fn apply(&mut self, c: String) -> String { c }
/// #     fn snapshot(&self) -> Vec<u8> { vec![] }
/// #     fn restore(&mut self, _: &[u8]) -> Result<(), RestoreError> { Ok(()) }
/// # }
/// # struct Alone;
/// # impl Transport for Alone {
/// #     fn send(&self, _: NodeId, _: Message) -> Result<(), TransportError> { Ok(()) }
/// #     async fn recv(&mut self) -> Option<(NodeId, Message)> { std::future::pending().await }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = Config::new(1, vec![1]);
/// let node = spawn_node(config, Echo, Alone, MemStorage::new(), NodeOptions::default())?;
/// let mut client: Client<Echo> = Client::new(vec![std::sync::Arc::new(node.clone())]);
/// assert_eq!(client.execute(&"hello".to_string()).await?, "hello");
/// node.shutdown().await;
/// # Ok(()) }
/// ```
pub fn spawn_node<S, T, St>(
    config: Config,
    state_machine: S,
    transport: T,
    storage: St,
    options: NodeOptions,
) -> Result<NodeHandle<S>, NodeError>
where
    S: StateMachine + Send + 'static,
    T: Transport,
    St: Storage,
{
    // Fresh randomness for every start: a replica that lost its storage must not
    // repeat the nonces and timeouts of its previous life (see `Config::seed`).
    let mut config = config;
    config.seed ^= getrandom::u64().expect("the operating system's random number generator failed");
    spawn_driver(
        config,
        state_machine,
        transport,
        storage,
        options,
        #[cfg(test)]
        FlushOrder::PersistFirst,
    )
}

/// [`spawn_node`] with a chosen [`FlushOrder`], for the driver's ordering tests.
#[cfg(test)]
pub(crate) fn spawn_node_with_order<S, T, St>(
    config: Config,
    state_machine: S,
    transport: T,
    storage: St,
    options: NodeOptions,
    order: FlushOrder,
) -> Result<NodeHandle<S>, NodeError>
where
    S: StateMachine + Send + 'static,
    T: Transport,
    St: Storage,
{
    spawn_driver(config, state_machine, transport, storage, options, order)
}

fn spawn_driver<S, T, St>(
    config: Config,
    state_machine: S,
    transport: T,
    mut storage: St,
    options: NodeOptions,
    #[cfg(test)] order: FlushOrder,
) -> Result<NodeHandle<S>, NodeError>
where
    S: StateMachine + Send + 'static,
    T: Transport,
    St: Storage,
{
    let id = config.id;
    let state = storage.load().map_err(NodeError::Load)?;
    let replica = Replica::new(config, state_machine, state).map_err(NodeError::Start)?;
    let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
    let (done_tx, done_rx) = watch::channel(false);
    let (checkpoints_tx, checkpoints) = mpsc::channel(4);
    let driver = Driver {
        replica,
        transport,
        storage: Some(storage),
        inflight: None,
        round_inputs: 0,
        rx,
        checkpoints,
        checkpoints_tx,
        options,
        waiters: HashMap::new(),
        inspections: Vec::new(),
        metrics: NodeMetrics::new(id),
        epoch: 0,
        #[cfg(test)]
        order,
        #[cfg(test)]
        early: None,
    };
    tokio::spawn(async move {
        driver.run().await;
        let _ = done_tx.send(true);
    });
    Ok(NodeHandle {
        id,
        tx,
        done: done_rx,
    })
}

struct Driver<S, T, St> {
    replica: Replica<S>,
    transport: T,
    /// `None` while a write is in flight (the blocking pool has it).
    storage: Option<St>,
    /// The write in flight, on the blocking pool, and what waits for it: the rest of
    /// its round (see [`Driver::flush`]).
    inflight: Option<Inflight<S, St>>,
    /// Inputs handled since the last flush: while a write is in flight, the driver
    /// takes no more than [`NodeOptions::max_inputs_per_round`] of them.
    round_inputs: usize,
    rx: mpsc::Receiver<Command<S>>,
    /// Checkpoints finished on the blocking pool ([`Ready::checkpoint_jobs`]).
    checkpoints: mpsc::Receiver<crate::FinishedCheckpoint>,
    checkpoints_tx: mpsc::Sender<crate::FinishedCheckpoint>,
    options: NodeOptions,
    waiters: HashMap<(ClientId, u64), Vec<oneshot::Sender<Reply>>>,
    /// Inspections received during the round: they run once its writes are durable, so
    /// that none sees a slot chosen thanks to a vote not yet stored (in a cluster of
    /// one, a request is chosen by the replica's own vote as soon as it is fed). While
    /// one waits, with a write in flight, the driver takes no input.
    inspections: Vec<InspectFn<S>>,
    /// What the driver publishes through the `metrics` facade.
    metrics: NodeMetrics,
    /// The epoch of the configuration the transport was last told of.
    epoch: u64,
    #[cfg(test)]
    order: FlushOrder,
    /// [`FlushOrder::EagerPipeline`]'s outputs taken while a write was in flight.
    #[cfg(test)]
    early: Option<crate::Ready>,
}

enum Input<S, St> {
    Command(Option<Command<S>>),
    Message(Option<(NodeId, crate::Message)>),
    Checkpoint(crate::FinishedCheckpoint),
    Tick,
    Persisted(Result<Persisted<St>, tokio::task::JoinError>),
}

/// A round whose write is in flight on the blocking pool: the write's task, and the
/// outputs that wait for it.
struct Inflight<S, St> {
    write: tokio::task::JoinHandle<Persisted<St>>,
    /// The round's `messages` and `replies` (what vouches for the write); the rest of
    /// it left when the write started.
    rest: crate::Ready,
    /// The round's inspections.
    inspections: Vec<InspectFn<S>>,
}

/// A finished write, and the storage back from the blocking pool.
struct Persisted<St> {
    storage: St,
    /// The write's vector, emptied, for its capacity.
    ops: Vec<crate::PersistOp>,
    result: Result<(), crate::StorageError>,
    count: usize,
    took: Duration,
}

/// Waits for the write in flight, if any (never ready when there is none).
async fn write_done<S, St>(
    inflight: &mut Option<Inflight<S, St>>,
) -> Result<Persisted<St>, tokio::task::JoinError> {
    match inflight {
        Some(i) => (&mut i.write).await,
        None => std::future::pending().await,
    }
}

impl<S: StateMachine, T: Transport, St: Storage> Driver<S, T, St> {
    async fn run(mut self) {
        let id = self.replica.id();
        info!(node = id, "node started");
        self.sync_membership();
        self.metrics.publish(&self.replica, self.rx.len());
        let mut ticker = tokio::time::interval(self.options.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failed = false;
        loop {
            // While a write is in flight the driver goes on taking inputs (what they
            // produce waits for that write, see `flush`), up to a round's worth.
            let open = self.accepts_inputs();
            let input = tokio::select! {
                p = write_done(&mut self.inflight) => Input::Persisted(p),
                c = self.rx.recv(), if open => Input::Command(c),
                m = self.transport.recv(), if open => Input::Message(m),
                Some(f) = self.checkpoints.recv(), if open => Input::Checkpoint(f),
                _ = ticker.tick(), if open => Input::Tick,
            };
            let input = match input {
                Input::Persisted(p) => {
                    // What waited for the write leaves before anything else happens.
                    if let Err(e) = self.write_finished(p) {
                        error!(node = id, error = %e, "storage failed; stopping the node");
                        failed = true;
                        break;
                    }
                    None
                }
                input => Some(input),
            };
            if self.inflight.is_none() {
                // Let the tasks that are ready run first (clients, peers on this
                // runtime): under load what they send joins this round instead of
                // starting a round of its own. With nothing else ready this returns
                // at once.
                tokio::task::yield_now().await;
            }
            // One round: the input, whatever else is queued, then persist, send, reply.
            // Nothing in it awaits, so the span is entered for the round's length.
            let _round = debug_span!("round", node = id).entered();
            let ticked = matches!(input, Some(Input::Tick));
            if input.is_some() {
                self.round_inputs += 1;
            }
            match input {
                None | Some(Input::Persisted(_)) => {}
                Some(Input::Command(None)) | Some(Input::Command(Some(Command::Shutdown))) => break,
                Some(Input::Command(Some(c))) => self.command(c),
                Some(Input::Message(None)) => {
                    info!(node = id, "transport closed; stopping");
                    break;
                }
                Some(Input::Message(Some((from, m)))) => self.message(from, m),
                Some(Input::Checkpoint(f)) => self.replica.checkpoint_finished(f),
                Some(Input::Tick) => self.replica.tick(),
            }
            let stop = self.fold_queued();
            #[cfg(test)]
            if self.order == FlushOrder::EagerPipeline && self.inflight.is_some() {
                self.send_early();
            }
            if self.inflight.is_none() {
                if let Err(e) = self.flush() {
                    error!(node = id, error = %e, "storage failed; stopping the node");
                    failed = true;
                    break;
                }
                self.metrics.round_done(&self.replica);
            }
            if ticked {
                // Gauges and totals once a tick: fresh enough for any scrape.
                self.metrics.publish(&self.replica, self.rx.len());
            }
            if stop {
                break;
            }
        }
        if !failed {
            if let Err(e) = self.finish().await {
                error!(node = id, error = %e, "storage failed while stopping");
            }
        }
        info!(node = id, "node stopped");
    }

    /// Whether the driver takes another input now: always between writes; while a
    /// write is in flight, up to a round's worth ([`NodeOptions::max_inputs_per_round`]),
    /// and none while an inspection waits, for the write in flight or the next: it must
    /// see the state of exactly the inputs handled before it, once their writes are
    /// durable (an input handled after it could make a slot chosen with a vote not
    /// yet written).
    fn accepts_inputs(&self) -> bool {
        match &self.inflight {
            None => true,
            Some(i) => {
                self.round_inputs < self.options.max_inputs_per_round
                    && self.inspections.is_empty()
                    && i.inspections.is_empty()
            }
        }
    }

    /// Folds whatever else is already queued into this round (group commit), taking
    /// peer messages and client commands in turn: preferring messages let a busy
    /// leader's rounds fill with ACCEPTEDs while requests waited, so each round proposed
    /// a batch of one or two. True when a shutdown was asked for.
    fn fold_queued(&mut self) -> bool {
        loop {
            let before = self.round_inputs;
            if !self.accepts_inputs() || self.round_inputs >= self.options.max_inputs_per_round {
                return false;
            }
            if let Some((from, m)) = self.transport.try_recv() {
                self.message(from, m);
                self.round_inputs += 1;
                if !self.accepts_inputs() || self.round_inputs >= self.options.max_inputs_per_round
                {
                    return false;
                }
            }
            match self.rx.try_recv() {
                Ok(Command::Shutdown) => return true,
                Ok(c) => {
                    self.command(c);
                    self.round_inputs += 1;
                }
                Err(_) => {}
            }
            if self.round_inputs == before {
                return false;
            }
        }
    }

    /// Stopping: waits for the write in flight and hands over what waited for it, then
    /// flushes what the last inputs produced, so that nothing handled is left half done.
    async fn finish(&mut self) -> Result<(), crate::StorageError> {
        loop {
            if self.inflight.is_some() {
                let p = write_done(&mut self.inflight).await;
                self.write_finished(p)?;
            }
            self.flush()?;
            if self.inflight.is_none() {
                return Ok(());
            }
        }
    }

    fn message(&mut self, from: NodeId, m: crate::Message) {
        self.metrics.received(&m);
        self.replica.handle_message(from, m);
    }

    fn command(&mut self, c: Command<S>) {
        match c {
            Command::Request(req, tx) => {
                self.waiters
                    .entry((req.client, req.seq))
                    .or_default()
                    .push(tx);
                self.replica.handle_request(req);
            }
            Command::Inspect(f) => self.inspections.push(f),
            // Its messages (TIMEOUT-NOW, once the target is up to date) leave with this
            // round's flush, like any other output.
            Command::TransferLeadership(to, tx) => {
                let _ = tx.send(self.replica.transfer_leadership(to));
            }
            // The stop-sign's ACCEPTs leave with this round's flush.
            Command::Reconfigure(members, tx) => {
                let _ = tx.send(self.replica.reconfigure(members));
            }
            Command::Shutdown => {}
        }
    }

    /// Persist, then send, then reply ([`Ready::deliver`](crate::Ready::deliver)):
    /// every PROMISE, ACCEPTED and client reply of the round vouches for state in its
    /// writes, so none leaves before [`Storage::persist`] has returned. A storage error
    /// drops the round's messages and replies and stops the node.
    /// Tells the transport of a configuration it has not seen yet.
    fn sync_membership(&mut self) {
        let membership = self.replica.membership();
        if membership.epoch != self.epoch {
            self.epoch = membership.epoch;
            info!(
                node = self.replica.id(),
                epoch = membership.epoch,
                members = ?membership.ids(),
                "new configuration"
            );
            self.transport.update_membership(membership);
        }
    }

    /// Hands over the outputs of everything handled since the last flush
    /// ([`Ready::deliver`](crate::Ready::deliver)): what waits for nothing leaves at
    /// once; the writes are made durable; then the PROMISEs, ACCEPTEDs and client replies
    /// that vouch for them leave. Called only with no write in flight.
    ///
    /// A storage that blocks ([`Storage::blocks`]) writes on the blocking pool, and the
    /// driver goes on taking inputs meanwhile (persistence pipelined with the next
    /// round's processing). What those inputs produce waits: the next flush happens
    /// once the write is durable ([`write_finished`](Self::write_finished)). So every
    /// output leaves after the writes of its own round *and of every earlier one*, as
    /// it would had the inputs arrived just after the write ended: the replica decides
    /// what waits for its writes within a round, counting its own vote at once (see
    /// [`Ready`](crate::Ready)), and an ACCEPTED that completes a quorum with a vote
    /// still being written is acted on (a reply, a commit point) only after that write.
    /// Storage that does not block writes here, at once.
    fn flush(&mut self) -> Result<(), crate::StorageError> {
        debug_assert!(self.inflight.is_none());
        self.round_inputs = 0;
        #[cfg(test)]
        if let Some(early) = self.early.take() {
            // Ahead of the new outputs (`take_ready_into` keeps an undelivered `Ready`).
            self.replica.return_spare_ready(early);
        }
        // The replica's spare `Ready`: its vectors serve every round.
        let mut ready = self.replica.take_spare_ready();
        self.sync_membership();
        if ready.is_empty() {
            self.replica.return_spare_ready(ready);
            let inspections = std::mem::take(&mut self.inspections);
            self.run_inspections(inspections);
            return Ok(());
        }
        // A checkpoint the state machine serializes off this task: on the blocking
        // pool, back through `checkpoints` (the replica waits for it before taking
        // another, so the channel never holds more than one).
        for job in std::mem::take(&mut ready.checkpoint_jobs) {
            let tx = self.checkpoints_tx.clone();
            tokio::task::spawn_blocking(move || {
                let _ = tx.blocking_send(job.run());
            });
        }
        let Some(storage) = self.storage.as_mut() else {
            unreachable!("flush runs with no write in flight");
        };
        let transport = &self.transport;
        let waiters = &mut self.waiters;
        let metrics = &self.metrics;
        let send = |to: NodeId, m: crate::Message| send(transport, to, m);
        let reply = |reply: Reply| answer(waiters, reply);
        #[cfg(test)]
        if self.order == FlushOrder::SendFirst {
            // The broken variant: messages and replies leave before the writes.
            let mut writes = std::mem::take(&mut ready.persist);
            let _ = ready.deliver_mut(|_| Ok::<(), crate::StorageError>(()), send, reply);
            let (count, started) = (writes.len(), Instant::now());
            storage.persist_owned(&mut writes)?;
            metrics.persisted(count, started.elapsed());
            let inspections = std::mem::take(&mut self.inspections);
            self.run_inspections(inspections);
            self.prune_waiters();
            return Ok(());
        }
        if ready.persist.is_empty() || !storage.blocks() {
            ready.deliver_mut(
                |ops| {
                    let (count, started) = (ops.len(), Instant::now());
                    let result = storage.persist_owned(ops);
                    metrics.persisted(count, started.elapsed());
                    result
                },
                send,
                reply,
            )?;
            self.replica.return_spare_ready(ready);
            let inspections = std::mem::take(&mut self.inspections);
            self.run_inspections(inspections);
            self.prune_waiters();
            return Ok(());
        }
        ready.deliver_now(send, reply);
        let mut ops = std::mem::take(&mut ready.persist);
        let Some(mut storage) = self.storage.take() else {
            unreachable!("flush runs with no write in flight");
        };
        let write = tokio::task::spawn_blocking(move || {
            let (count, started) = (ops.len(), Instant::now());
            let result = storage.persist_owned(&mut ops);
            ops.clear();
            Persisted {
                storage,
                ops,
                result,
                count,
                took: started.elapsed(),
            }
        });
        self.inflight = Some(Inflight {
            write,
            rest: ready,
            inspections: std::mem::take(&mut self.inspections),
        });
        Ok(())
    }

    /// A write finished: the storage is back; what waited for the write leaves (or, if
    /// it failed, is dropped and the error returned: the node stops), and the round's
    /// inspections run.
    fn write_finished(
        &mut self,
        done: Result<Persisted<St>, tokio::task::JoinError>,
    ) -> Result<(), crate::StorageError> {
        let Some(Inflight {
            mut rest,
            inspections,
            ..
        }) = self.inflight.take()
        else {
            return Ok(());
        };
        let done = done.map_err(|e| crate::StorageError::io_because("the write task failed", e))?;
        self.storage = Some(done.storage);
        self.metrics.persisted(done.count, done.took);
        done.result?;
        rest.persist = done.ops;
        let transport = &self.transport;
        let waiters = &mut self.waiters;
        rest.deliver_mut(
            |_| Ok::<(), crate::StorageError>(()),
            |to, m| send(transport, to, m),
            |reply| answer(waiters, reply),
        )?;
        self.replica.return_spare_ready(rest);
        self.run_inspections(inspections);
        self.prune_waiters();
        Ok(())
    }

    /// Runs `inspections`: those of a round whose writes are durable, and whose
    /// outputs have left.
    fn run_inspections(&self, inspections: Vec<InspectFn<S>>) {
        for f in inspections {
            f(&self.replica);
        }
    }

    /// [`FlushOrder::EagerPipeline`]: with a write in flight, sends what this round's
    /// outputs say waits for nothing, and keeps the rest for the next flush.
    #[cfg(test)]
    fn send_early(&mut self) {
        if let Some(early) = self.early.take() {
            self.replica.return_spare_ready(early);
        }
        let mut ready = self.replica.take_spare_ready();
        let transport = &self.transport;
        let waiters = &mut self.waiters;
        ready.deliver_now(
            |to, m| send(transport, to, m),
            |reply| answer(waiters, reply),
        );
        self.early = Some(ready);
    }

    /// Drops waiters whose callers gave up, so the map cannot grow without bound.
    fn prune_waiters(&mut self) {
        if self.waiters.len() > 2 * self.replica.config().max_pending {
            self.waiters.retain(|_, ws| {
                ws.retain(|w| !w.is_closed());
                !ws.is_empty()
            });
        }
    }
}

/// Sends `m` to `to`; a transport that refuses it is logged, not fatal (the protocol
/// retransmits what matters).
fn send<T: Transport>(transport: &T, to: NodeId, m: crate::Message) {
    if let Err(e) = transport.send(to, m) {
        debug!(to, error = %e, "send failed");
    }
}

/// Hands `reply` to the callers waiting for it.
fn answer(waiters: &mut HashMap<(ClientId, u64), Vec<oneshot::Sender<Reply>>>, reply: Reply) {
    if let Some(ws) = waiters.remove(&(reply.client, reply.seq)) {
        for w in ws {
            let _ = w.send(reply.clone());
        }
    }
}

impl<S: StateMachine + Send + 'static> NodeHandle<S> {
    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Submits a raw request to this node and waits for its answer: the result, or a
    /// redirect when this node is not the leader, in a [`Reply`] that names the
    /// request it answers. Most callers want [`Client`](crate::Client), which registers
    /// a session, numbers requests, follows redirects and checks that every reply names
    /// its request.
    pub async fn submit(&self, request: Request) -> Result<Reply, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(request, tx).await?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Queues `request` for the node; its answer will be sent on `answer`.
    pub(crate) async fn enqueue(
        &self,
        request: Request,
        answer: oneshot::Sender<Reply>,
    ) -> Result<(), NodeError> {
        self.tx
            .send(Command::Request(request, answer))
            .await
            .map_err(|_| NodeError::Stopped)
    }

    /// Runs `f` on the replica inside the node's task and returns its result. It runs
    /// at the end of a round, once the round's writes are durable: what it sees
    /// committed is chosen, even in a cluster of one (whose own vote chooses a request
    /// as soon as it is fed).
    pub async fn inspect<R, F>(&self, f: F) -> Result<R, NodeError>
    where
        R: Send + 'static,
        F: FnOnce(&Replica<S>) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let f: InspectFn<S> = Box::new(move |r| {
            let _ = tx.send(f(r));
        });
        self.tx
            .send(Command::Inspect(f))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Asks this node, which must lead, to hand leadership over to member `to`
    /// ([`Replica::transfer_leadership`]): it stops proposing, waits until `to` has
    /// accepted every proposal in flight, then tells `to` to run for leader at once.
    ///
    /// `Ok` means the transfer started, not that it completed: watch `to`'s status (or
    /// this node's [`ReplicaStatus::leader`]) for the outcome. A transfer that has not
    /// completed within an election timeout is abandoned and this node leads on.
    /// Refusals come back as [`NodeError::Transfer`]: this node does not lead (the
    /// error names the leader it believes in), `to` is not a member, or `to` is this
    /// node.
    pub async fn transfer_leadership(&self, to: NodeId) -> Result<(), NodeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::TransferLeadership(to, tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await
            .map_err(|_| NodeError::Stopped)?
            .map_err(NodeError::Transfer)
    }

    /// Asks this node, which must lead, to change the cluster's membership to
    /// `members` ([`Replica::reconfigure`]): it proposes the stop-sign and returns its
    /// slot. `Ok` means the change was proposed, not that it took effect: watch
    /// [`membership`](Self::membership) (on any member) for the new epoch. A leader
    /// deposed before the stop-sign is chosen may lose it; ask again.
    ///
    /// Start new members first, as [learners](crate::Config::learner) that know the
    /// current members, and let them catch up. Refusals come back as
    /// [`NodeError::Reconfigure`].
    pub async fn reconfigure(&self, members: Vec<crate::Member>) -> Result<crate::Slot, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Reconfigure(members, tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await
            .map_err(|_| NodeError::Stopped)?
            .map_err(NodeError::Reconfigure)
    }

    /// The configuration this node is in ([`Replica::membership`]).
    pub async fn membership(&self) -> Result<crate::Membership, NodeError> {
        self.inspect(|r| r.membership().clone()).await
    }

    /// The replica's status (role, ballot, leader, commit point...).
    pub async fn status(&self) -> Result<ReplicaStatus, NodeError> {
        self.inspect(|r| r.status()).await
    }

    /// The replica's running totals (proposals, batches, elections, leader changes,
    /// snapshots): see [`Counters`].
    pub async fn counters(&self) -> Result<Counters, NodeError> {
        self.inspect(|r| r.counters()).await
    }

    /// The slots the replica knows in `range`, with status and value.
    pub async fn log(&self, range: Range<Slot>) -> Result<Vec<SlotInfo>, NodeError> {
        self.inspect(move |r| r.log(range)).await
    }

    /// One slot's status and value.
    pub async fn slot(&self, slot: Slot) -> Result<SlotInfo, NodeError> {
        self.inspect(move |r| r.slot(slot)).await
    }

    /// The view changes the replica sent or received.
    pub async fn view_changes(&self) -> Result<Vec<ViewChange>, NodeError> {
        self.inspect(|r| r.view_changes().cloned().collect()).await
    }

    /// Reads the state machine through `f`.
    pub async fn with_state<R, F>(&self, f: F) -> Result<R, NodeError>
    where
        R: Send + 'static,
        F: FnOnce(&S) -> R + Send + 'static,
    {
        self.inspect(move |r| f(r.state_machine())).await
    }

    /// Stops the node and waits until its task has finished.
    pub async fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown).await;
        self.stopped().await;
    }

    /// Waits until the node has stopped (shut down, transport closed, storage failed).
    pub async fn stopped(&self) {
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }

    /// True once the node has stopped.
    pub fn is_stopped(&self) -> bool {
        *self.done.borrow()
    }
}

#[async_trait]
impl<S: StateMachine + Send + 'static> Endpoint for NodeHandle<S> {
    fn node(&self) -> NodeId {
        self.id
    }

    async fn call(&self, request: Request) -> Result<Reply, EndpointError> {
        self.submit(request).await.map_err(|e| match e {
            NodeError::Stopped => EndpointError::stopped(self.id),
            other => EndpointError::with_cause(self.id, EndpointErrorKind::Stopped, other),
        })
    }
}

/// Shared-ownership convenience: a handle behind an `Arc` is an endpoint too.
#[async_trait]
impl<E: Endpoint + ?Sized> Endpoint for Arc<E> {
    fn node(&self) -> NodeId {
        (**self).node()
    }

    async fn call(&self, request: Request) -> Result<Reply, EndpointError> {
        (**self).call(request).await
    }
}
