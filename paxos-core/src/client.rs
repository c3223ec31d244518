//! The client handle: sessions, request numbers, redirects, retries.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use thiserror::Error;
use tokio::time::Instant;
use tracing::debug;

use crate::error::{ClientError, ErrorCause};
use crate::traits::StateMachine;
use crate::types::{ClientId, NodeId, Reply, Request, Response, Slot, StaleAnswer};

/// A replica reachable by a client: a local [`NodeHandle`](crate::NodeHandle), or a
/// remote node behind a network connection (the TCP transport provides one).
#[async_trait]
pub trait Endpoint: Send + Sync {
    /// The id of the node behind this endpoint (redirects name nodes by id).
    fn node(&self) -> NodeId;

    /// Sends one request and waits for the node's answer. The [`Reply`] names the
    /// request it answers; [`Client`] refuses one that names another request, so an
    /// endpoint must pass on the identity the replica gave, never make one up.
    async fn call(&self, request: Request) -> Result<Reply, EndpointError>;
}

/// What kind of failure an [`EndpointError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndpointErrorKind {
    /// The node could not be reached (connection refused or lost, address unknown).
    Unreachable,
    /// The node did not answer within the endpoint's own time limit.
    Timeout,
    /// The node has stopped, or the endpoint was closed.
    Stopped,
    /// The node answered something that is not an answer to this call (undecodable,
    /// another call's answer, a refusal of the call's form).
    Protocol,
}

/// An [`Endpoint`] could not deliver a request or get its answer. It names the node,
/// says what kind of failure it was, and keeps the underlying error as its
/// [`source`](std::error::Error::source).
#[derive(Clone, Debug)]
pub struct EndpointError {
    node: NodeId,
    kind: EndpointErrorKind,
    cause: Option<ErrorCause>,
}

impl std::fmt::Display for EndpointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

// By hand rather than derived: thiserror would hand out the `Arc` as the source, which
// hides the cause's own type from `downcast_ref`.
impl std::error::Error for EndpointError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_ref().map(|cause| &**cause as _)
    }
}

impl EndpointError {
    /// An error of `kind` talking to `node`, without an underlying cause.
    pub fn new(node: NodeId, kind: EndpointErrorKind) -> Self {
        EndpointError {
            node,
            kind,
            cause: None,
        }
    }

    /// An error of `kind` talking to `node`, caused by `cause`.
    pub fn with_cause(
        node: NodeId,
        kind: EndpointErrorKind,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        EndpointError {
            node,
            kind,
            cause: Some(Arc::new(cause)),
        }
    }

    /// `node` could not be reached because of `cause`.
    pub fn unreachable(
        node: NodeId,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::with_cause(node, EndpointErrorKind::Unreachable, cause)
    }

    /// `node` did not answer in time.
    pub fn timeout(node: NodeId) -> Self {
        Self::new(node, EndpointErrorKind::Timeout)
    }

    /// `node` has stopped.
    pub fn stopped(node: NodeId) -> Self {
        Self::new(node, EndpointErrorKind::Stopped)
    }

    /// `node` answered something that is not an answer to the call.
    pub fn protocol(node: NodeId, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::with_cause(node, EndpointErrorKind::Protocol, cause)
    }

    /// The node the call was for.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> EndpointErrorKind {
        self.kind
    }

    fn describe(&self) -> String {
        let what = match self.kind {
            EndpointErrorKind::Unreachable => "unreachable",
            EndpointErrorKind::Timeout => "did not answer in time",
            EndpointErrorKind::Stopped => "stopped",
            EndpointErrorKind::Protocol => "answered out of protocol",
        };
        match &self.cause {
            Some(c) => format!("node {} {what}: {c}", self.node),
            None => format!("node {} {what}", self.node),
        }
    }
}

/// An answer that names another request than the one it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("answer for c{got_client}#{got_seq} to request c{client}#{seq}")]
pub struct MismatchedReply {
    /// The request's client.
    pub client: ClientId,
    /// The request's number.
    pub seq: u64,
    /// The client the answer names.
    pub got_client: ClientId,
    /// The request number the answer names.
    pub got_seq: u64,
}

/// Timing of a [`Client`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientOptions {
    /// How long one attempt at one node may take before the client tries another.
    pub attempt_timeout: Duration,
    /// The first backoff after a failed attempt; it doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
    /// The deadline [`Client::execute`] uses.
    pub default_deadline: Duration,
    /// A client that has not completed a command for this long registers a fresh
    /// session before its next one, rather than risk finding its session expired
    /// (which fails that command with [`ClientError::SessionExpired`], its outcome
    /// unknown). `None`: keep the session however long the client idles.
    ///
    /// Keep it below the cluster's session time-to-live in real time
    /// ([`Config::session_ttl_ticks`](crate::Config::session_ttl_ticks) times
    /// [`NodeOptions::tick`](crate::NodeOptions::tick)). Default 30 minutes, half of
    /// the default time-to-live at the default tick. A fresh session costs one more
    /// log entry, once per idle stretch.
    pub session_idle_limit: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            attempt_timeout: Duration::from_millis(500),
            min_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(500),
            default_deadline: Duration::from_secs(30),
            session_idle_limit: Some(Duration::from_secs(30 * 60)),
        }
    }
}

impl ClientOptions {
    /// Sets [`ClientOptions::attempt_timeout`].
    pub fn with_attempt_timeout(mut self, d: Duration) -> Self {
        self.attempt_timeout = d;
        self
    }

    /// Sets [`ClientOptions::min_backoff`].
    pub fn with_min_backoff(mut self, d: Duration) -> Self {
        self.min_backoff = d;
        self
    }

    /// Sets [`ClientOptions::max_backoff`].
    pub fn with_max_backoff(mut self, d: Duration) -> Self {
        self.max_backoff = d;
        self
    }

    /// Sets [`ClientOptions::default_deadline`].
    pub fn with_default_deadline(mut self, d: Duration) -> Self {
        self.default_deadline = d;
        self
    }

    /// Sets [`ClientOptions::session_idle_limit`].
    pub fn with_session_idle_limit(mut self, limit: Option<Duration>) -> Self {
        self.session_idle_limit = limit;
        self
    }
}

/// Submits commands to a cluster with exactly-once semantics.
///
/// A client owns a session, registered with the cluster before its first command (the
/// cluster assigns its id), and a request number that grows by one per command. A command
/// keeps its number across every retry — after a timeout, a redirect, a leader change —
/// so the replicated session table executes it at most once and answers retries from
/// its cache. The client never submits the same command under two numbers.
///
/// One command is in flight per client (`execute` takes `&mut self`); run several
/// clients for concurrency. A command whose deadline passes may still execute later,
/// but never after a later command of the same client.
///
/// # When the session expires
/// The cluster drops sessions that stay idle past its time-to-live
/// ([`Config::session_ttl_ticks`](crate::Config::session_ttl_ticks)), and the least
/// recently used ones when it holds too many (see [`Sessions`](crate::Sessions)). A
/// command sent under a dropped session is not executed, and `execute` returns
/// [`ClientError::SessionExpired`]: its outcome is unknown, since an earlier attempt
/// of it may have executed before the session was dropped. The client then registers
/// a new session by itself with its next command; whether to check the state and
/// resubmit the failed command is the caller's decision. To keep idle stretches from
/// ending this way, a client idle for [`ClientOptions::session_idle_limit`] registers
/// afresh before its next command, unless its previous command did not complete (its
/// deadline passed, or the call was cancelled): then the next command goes under the
/// old session, whose higher request number keeps a late copy of the previous one from
/// ever executing after it.
pub struct Client<S> {
    /// Recognises the reply to this client's registration.
    id: ClientId,
    /// The session the cluster assigned, once registered.
    session: Option<ClientId>,
    /// When the latest command (or registration) that completed under `session` was
    /// first sent: the session's last use the cluster could have seen, at the earliest.
    last_used: Option<Instant>,
    /// A command was sent under `session` and did not complete (deadline passed, or the
    /// call was cancelled): a copy may still execute. The next command must go under
    /// the same session, with a higher number, so that it fences that copy off; a new
    /// session would let the copy execute after it.
    unsettled: bool,
    next_seq: u64,
    endpoints: Vec<Arc<dyn Endpoint>>,
    leader: Option<usize>,
    rotation: usize,
    options: ClientOptions,
    rng: ChaCha8Rng,
    /// The executed slot of the newest stale read answer: the floor of the next.
    stale_floor: Slot,
    _sm: PhantomData<fn() -> S>,
}

impl<S> std::fmt::Debug for Client<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("session", &self.session)
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

impl<S: StateMachine> Client<S> {
    /// A client with a random registration nonce and default options.
    pub fn new(endpoints: Vec<Arc<dyn Endpoint>>) -> Self {
        Self::with_options(endpoints, ClientOptions::default())
    }

    /// A client with a random registration nonce.
    pub fn with_options(endpoints: Vec<Arc<dyn Endpoint>>, options: ClientOptions) -> Self {
        let id = os_nonce();
        Self::with_id(id, endpoints, options)
    }

    /// A client with a chosen registration nonce, which recognises the reply to its
    /// registration (the session id itself comes from the cluster). Nonces should be
    /// unique among clients registering at the same time.
    pub fn with_id(
        id: ClientId,
        endpoints: Vec<Arc<dyn Endpoint>>,
        options: ClientOptions,
    ) -> Self {
        Client {
            id,
            session: None,
            last_used: None,
            unsettled: false,
            next_seq: 1,
            endpoints,
            leader: None,
            rotation: (id % 7) as usize,
            options,
            rng: ChaCha8Rng::seed_from_u64(id),
            stale_floor: 0,
            _sm: PhantomData,
        }
    }

    /// The registration nonce this client was created with.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// The session the cluster assigned, once this client has registered.
    pub fn session(&self) -> Option<ClientId> {
        self.session
    }

    /// The node this client currently believes leads.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader.map(|i| self.endpoints[i].node())
    }

    /// The number the next command will carry.
    pub fn next_request_number(&self) -> u64 {
        self.next_seq
    }

    /// Executes `command` with the default deadline.
    pub async fn execute(&mut self, command: &S::Command) -> Result<S::Output, ClientError> {
        let deadline = self.options.default_deadline;
        self.execute_within(command, deadline).await
    }

    /// Executes `command`, retrying until it completes or `timeout` passes.
    pub async fn execute_within(
        &mut self,
        command: &S::Command,
        timeout: Duration,
    ) -> Result<S::Output, ClientError> {
        let start = Instant::now();
        let deadline = start + timeout;
        let payload = encode_command::<S>(command)?;
        if let (Some(limit), Some(used)) = (self.options.session_idle_limit, self.last_used) {
            // Not while an earlier command is unsettled: only the old session can fence
            // it off (see `unsettled`).
            if start.saturating_duration_since(used) >= limit && !self.unsettled {
                // The cluster may have expired the session meanwhile: start a new one
                // rather than have this command fail with an unknown outcome.
                debug!(client = self.id, session = ?self.session, "idle past the limit: registering a new session");
                self.drop_session();
            }
        }
        let session = match self.session {
            Some(s) => s,
            None => {
                let sent = Instant::now();
                let reply = self
                    .call_until(Request::register(self.id), deadline)
                    .await?;
                let s: ClientId = postcard::from_bytes(&reply)
                    .map_err(|e| ClientError::Codec(format!("session id: {e}")))?;
                self.session = Some(s);
                self.last_used = Some(sent);
                self.next_seq = 1;
                s
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let sent = Instant::now();
        // Set before the call, cleared once it completes: a timeout or a cancelled
        // future leaves it set.
        self.unsettled = true;
        let bytes = self
            .call_until(
                Request {
                    client: session,
                    seq,
                    payload,
                },
                deadline,
            )
            .await?;
        self.unsettled = false;
        self.last_used = Some(sent);
        decode_output::<S>(&bytes)
    }

    /// Forgets the session: the next command registers a new one, under a new nonce.
    fn drop_session(&mut self) {
        self.session = None;
        self.last_used = None;
        // Nothing sent under the dropped session can execute any more: the cluster
        // dropped it (SessionExpired), or this client stopped using it while nothing of
        // it was unsettled.
        self.unsettled = false;
        self.id = os_nonce();
        self.next_seq = 1;
    }

    /// Reads with `command`, a read-only command (one [`StateMachine::query`] answers),
    /// with the default deadline: linearizable, without a log round, a session or a
    /// write to storage (see [`Request::read`]).
    pub async fn read(&mut self, command: &S::Command) -> Result<S::Output, ClientError> {
        let deadline = self.options.default_deadline;
        self.read_within(command, deadline).await
    }

    /// Like [`read`](Self::read), retrying until it is answered or `timeout` passes.
    /// Reads change nothing, so a retry is always safe. A command the state machine
    /// does not answer as a read fails with [`ClientError::Invalid`].
    pub async fn read_within(
        &mut self,
        command: &S::Command,
        timeout: Duration,
    ) -> Result<S::Output, ClientError> {
        let deadline = Instant::now() + timeout;
        let payload = encode_command::<S>(command)?;
        // A fresh nonce per read from the operating system (replies are matched by it,
        // and two clients created with the same id must not share nonces).
        let nonce = os_nonce();
        let bytes = self
            .call_until(Request::read(nonce, payload), deadline)
            .await?;
        decode_output::<S>(&bytes)
    }

    /// A **stale read**, by explicit choice: `command` (a read-only command, one
    /// [`StateMachine::query`] answers) is answered by the first of this client's
    /// endpoints that can, a follower as well as the leader, from its own state and
    /// without any message to other replicas (see [`Request::stale_read`]). Put the
    /// nearest replica first when creating the client; [`read_stale_at`](Self::read_stale_at)
    /// names one.
    ///
    /// The answer reflects a prefix of the chosen log, possibly missing writes that
    /// already completed (this client's own included): use [`read`](Self::read) when
    /// that matters. This client's stale reads never go back in time, whichever
    /// replicas answer them: each asks for at least the state the previous one saw
    /// ([`stale_floor`](Self::stale_floor)), and a replica that has not executed that
    /// far waits, or after an election timeout sends the read on.
    pub async fn read_stale(&mut self, command: &S::Command) -> Result<S::Output, ClientError> {
        self.read_stale_from(0, command).await
    }

    /// Like [`read_stale`](Self::read_stale), asking replica `node` first (then the
    /// others, when it cannot answer). A node this client has no endpoint for fails
    /// with [`ClientError::Invalid`].
    pub async fn read_stale_at(
        &mut self,
        node: NodeId,
        command: &S::Command,
    ) -> Result<S::Output, ClientError> {
        let Some(first) = self.endpoints.iter().position(|e| e.node() == node) else {
            return Err(ClientError::Invalid(format!(
                "no endpoint for node {node} in this client"
            )));
        };
        self.read_stale_from(first, command).await
    }

    /// The least executed slot this client's next stale read may reflect: the slot the
    /// newest stale answer reflected.
    pub fn stale_floor(&self) -> Slot {
        self.stale_floor
    }

    /// Sets the floor of the next stale read: to carry monotonic reads over from
    /// another client or process (pass the [`stale_floor`](Self::stale_floor) it
    /// reached), or to start afresh with 0.
    pub fn set_stale_floor(&mut self, floor: Slot) {
        self.stale_floor = floor;
    }

    async fn read_stale_from(
        &mut self,
        first: usize,
        command: &S::Command,
    ) -> Result<S::Output, ClientError> {
        if self.endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let deadline = Instant::now() + self.options.default_deadline;
        let payload = encode_command::<S>(command)?;
        let request = Request::stale_read(os_nonce(), payload, self.stale_floor);
        let mut target = first;
        let mut backoff = self.options.min_backoff;
        let mut tried = 0usize;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
            let attempt = self.options.attempt_timeout.min(deadline - now);
            let endpoint = &self.endpoints[target];
            let outcome = tokio::time::timeout(attempt, endpoint.call(request.clone())).await;
            let next = match outcome {
                Ok(Ok(reply)) if (reply.client, reply.seq) == (request.client, request.seq) => {
                    match reply.response {
                        Response::Ok(bytes) => {
                            let answer: StaleAnswer<S::Output> = postcard::from_bytes(&bytes)
                                .map_err(|e| ClientError::Codec(e.to_string()))?;
                            // A replica below the floor broke its promise: ask another.
                            if answer.executed >= self.stale_floor {
                                self.stale_floor = answer.executed;
                                return Ok(answer.output);
                            }
                            target + 1
                        }
                        Response::Invalid { reason } => return Err(ClientError::Invalid(reason)),
                        Response::Redirect { leader: Some(l) } => self
                            .endpoints
                            .iter()
                            .position(|e| e.node() == l)
                            .unwrap_or(target + 1),
                        _ => target + 1,
                    }
                }
                Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
                    debug!(
                        client = self.id,
                        node = endpoint.node(),
                        "stale read attempt failed"
                    );
                    target + 1
                }
            };
            target = next % self.endpoints.len();
            tried += 1;
            if tried.is_multiple_of(self.endpoints.len()) {
                let pause = self.jittered(backoff);
                tokio::time::sleep_until(deadline.min(Instant::now() + pause)).await;
                backoff = (backoff * 2).min(self.options.max_backoff);
            }
        }
    }

    async fn call_until(
        &mut self,
        request: Request,
        deadline: Instant,
    ) -> Result<Bytes, ClientError> {
        if self.endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let mut backoff = self.options.min_backoff;
        let mut redirects = 0;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
            let target = self.pick();
            let attempt = self.options.attempt_timeout.min(deadline - now);
            let outcome =
                tokio::time::timeout(attempt, self.endpoints[target].call(request.clone())).await;
            // Every answer must name the request it answers: one for another request
            // (a confused endpoint, a reused connection) is a failed attempt.
            let outcome = outcome.map(|r| {
                r.and_then(|reply| {
                    if (reply.client, reply.seq) == (request.client, request.seq) {
                        Ok(reply.response)
                    } else {
                        Err(EndpointError::protocol(
                            self.endpoints[target].node(),
                            MismatchedReply {
                                client: request.client,
                                seq: request.seq,
                                got_client: reply.client,
                                got_seq: reply.seq,
                            },
                        ))
                    }
                })
            });
            let retry_now = match outcome {
                Ok(Ok(Response::Ok(bytes))) => {
                    self.leader = Some(target);
                    return Ok(bytes);
                }
                Ok(Ok(Response::Redirect { leader: Some(l) })) => {
                    self.leader = self.endpoints.iter().position(|e| e.node() == l);
                    if self.leader.is_none() {
                        self.rotate();
                    }
                    redirects += 1;
                    // Follow a redirect at once, but back off if nodes keep pointing
                    // at each other (a leader change in progress).
                    redirects < self.endpoints.len()
                }
                Ok(Ok(Response::SessionExpired)) => {
                    self.drop_session();
                    return Err(ClientError::SessionExpired);
                }
                Ok(Ok(Response::Invalid { reason })) => return Err(ClientError::Invalid(reason)),
                Ok(Ok(Response::Stale)) => {
                    return Err(ClientError::Invalid(
                        "request number is stale (client id reused?)".into(),
                    ))
                }
                Ok(Ok(Response::Redirect { leader: None })) => {
                    self.leader = None;
                    self.rotate();
                    false
                }
                Ok(Ok(Response::Busy)) => false,
                Ok(Err(e)) => {
                    debug!(client = self.id, node = self.endpoints[target].node(), error = %e, "attempt failed");
                    self.leader = None;
                    self.rotate();
                    false
                }
                Err(_) => {
                    debug!(
                        client = self.id,
                        node = self.endpoints[target].node(),
                        "attempt timed out"
                    );
                    self.leader = None;
                    self.rotate();
                    false
                }
            };
            if !retry_now {
                redirects = 0;
                let pause = self.jittered(backoff);
                let now = Instant::now();
                if now + pause >= deadline {
                    tokio::time::sleep_until(deadline).await;
                } else {
                    tokio::time::sleep(pause).await;
                }
                backoff = (backoff * 2).min(self.options.max_backoff);
            }
        }
    }

    /// `backoff` plus up to half of it again, at random (so that clients retrying
    /// together spread out).
    fn jittered(&mut self, backoff: Duration) -> Duration {
        let jitter = self.rng.next_u64() % (backoff.as_micros() as u64 / 2 + 1);
        backoff + Duration::from_micros(jitter)
    }

    fn pick(&mut self) -> usize {
        match self.leader {
            Some(i) => i,
            None => self.rotation % self.endpoints.len(),
        }
    }

    fn rotate(&mut self) {
        self.rotation = self.rotation.wrapping_add(1);
    }
}

/// A command as the replicas receive it.
fn encode_command<S: StateMachine>(command: &S::Command) -> Result<Bytes, ClientError> {
    postcard::to_allocvec(command)
        .map(Bytes::from)
        .map_err(|e| ClientError::Codec(e.to_string()))
}

/// An output as the state machine returned it.
fn decode_output<S: StateMachine>(bytes: &[u8]) -> Result<S::Output, ClientError> {
    postcard::from_bytes(bytes).map_err(|e| ClientError::Codec(e.to_string()))
}

/// A fresh odd registration nonce from the operating system's random number generator.
fn os_nonce() -> ClientId {
    getrandom::u64().expect("the operating system's random number generator failed") | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RestoreError;

    struct Echo;

    impl StateMachine for Echo {
        type Command = u64;
        type Output = u64;
        fn apply(&mut self, c: u64) -> u64 {
            c
        }
        fn snapshot(&self) -> Vec<u8> {
            Vec::new()
        }
        fn restore(&mut self, _: &[u8]) -> Result<(), RestoreError> {
            Ok(())
        }
    }

    /// Registers sessions correctly, but answers every command with the reply of the
    /// command after it (as a connection that kept a cancelled call's answer would).
    struct OffByOne;

    #[async_trait]
    impl Endpoint for OffByOne {
        fn node(&self) -> NodeId {
            1
        }

        async fn call(&self, request: Request) -> Result<Reply, EndpointError> {
            let (seq, payload) = if request.is_register() {
                (0, postcard::to_allocvec(&5u64).unwrap())
            } else {
                (request.seq + 1, postcard::to_allocvec(&999u64).unwrap())
            };
            Ok(Reply {
                client: request.client,
                seq,
                response: Response::Ok(payload.into()),
            })
        }
    }

    #[tokio::test]
    async fn a_reply_naming_another_request_is_refused() {
        let options = ClientOptions {
            attempt_timeout: Duration::from_millis(20),
            min_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            default_deadline: Duration::from_millis(200),
            session_idle_limit: None,
        };
        let mut client: Client<Echo> = Client::with_options(vec![Arc::new(OffByOne)], options);
        let got = client.execute(&7).await;
        assert_eq!(client.session(), Some(5), "the registration was answered");
        assert!(
            matches!(got, Err(ClientError::Timeout)),
            "the answer of another request was returned: {got:?}"
        );
    }

    /// A one-node "cluster" that registers sessions (ids 100, 101, ...), echoes
    /// commands, and answers `SessionExpired` for sessions it was told to expire.
    #[derive(Default)]
    struct Expiring {
        state: std::sync::Mutex<ExpiringState>,
    }

    #[derive(Default)]
    struct ExpiringState {
        next_session: u64,
        expired: Vec<ClientId>,
        nonces: Vec<ClientId>,
        executed: Vec<(ClientId, u64)>,
    }

    #[async_trait]
    impl Endpoint for Expiring {
        fn node(&self) -> NodeId {
            1
        }

        async fn call(&self, request: Request) -> Result<Reply, EndpointError> {
            let mut st = self.state.lock().unwrap();
            let response = if request.is_register() {
                st.nonces.push(request.client);
                let id = 100 + st.next_session;
                st.next_session += 1;
                Response::Ok(postcard::to_allocvec(&id).unwrap().into())
            } else if st.expired.contains(&request.client) {
                Response::SessionExpired
            } else {
                st.executed.push((request.client, request.seq));
                Response::Ok(request.payload.clone())
            };
            Ok(Reply {
                client: request.client,
                seq: request.seq,
                response,
            })
        }
    }

    #[tokio::test]
    async fn an_expired_session_fails_one_command_then_the_client_registers_again() {
        let cluster = Arc::new(Expiring::default());
        let options = ClientOptions::default().with_session_idle_limit(None);
        let mut client: Client<Echo> = Client::with_options(vec![cluster.clone()], options);
        assert_eq!(client.execute(&1).await, Ok(1));
        assert_eq!(client.execute(&2).await, Ok(2));
        assert_eq!(client.session(), Some(100));
        let first_nonce = client.id();
        cluster.state.lock().unwrap().expired.push(100);
        // The command is not executed, and the caller is told its outcome is unknown.
        assert_eq!(client.execute(&3).await, Err(ClientError::SessionExpired));
        assert_eq!(client.session(), None);
        assert_ne!(client.id(), first_nonce, "a new session gets a new nonce");
        // The next command runs under a new session, numbered from 1 again.
        assert_eq!(client.execute(&4).await, Ok(4));
        assert_eq!(client.session(), Some(101));
        let st = cluster.state.lock().unwrap();
        assert_eq!(st.executed, [(100, 1), (100, 2), (101, 1)]);
        assert_eq!(st.nonces.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_idle_past_its_limit_registers_before_its_next_command() {
        let cluster = Arc::new(Expiring::default());
        let options =
            ClientOptions::default().with_session_idle_limit(Some(Duration::from_secs(60)));
        let mut client: Client<Echo> = Client::with_options(vec![cluster.clone()], options);
        assert_eq!(client.execute(&1).await, Ok(1));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(client.execute(&2).await, Ok(2));
        assert_eq!(
            client.session(),
            Some(100),
            "idle below the limit: same session"
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        // Meanwhile the cluster expired the session: the client never uses it again.
        cluster.state.lock().unwrap().expired.push(100);
        assert_eq!(client.execute(&3).await, Ok(3));
        assert_eq!(client.session(), Some(101));
        let st = cluster.state.lock().unwrap();
        assert_eq!(st.executed, [(100, 1), (100, 2), (101, 1)]);
    }

    /// Records the order commands are applied in.
    #[derive(Default)]
    struct Applied(Vec<u64>);

    impl StateMachine for Applied {
        type Command = u64;
        type Output = u64;
        fn apply(&mut self, c: u64) -> u64 {
            self.0.push(c);
            c
        }
        fn snapshot(&self) -> Vec<u8> {
            Vec::new()
        }
        fn restore(&mut self, _: &[u8]) -> Result<(), RestoreError> {
            Ok(())
        }
    }

    /// A real one-node cluster behind an endpoint whose network holds back one request
    /// (command `hold`): the call never answers, the request reaches the replica when
    /// the test releases it (a slow TCP connection, a congested link).
    struct SlowLink {
        replica: std::sync::Mutex<crate::Replica<Applied>>,
        hold: u64,
        held: std::sync::Mutex<Vec<Request>>,
    }

    impl SlowLink {
        fn deliver(&self, request: Request) -> Option<Reply> {
            let mut r = self.replica.lock().unwrap();
            r.handle_request(request.clone());
            let ready = r.take_ready();
            ready
                .replies_now
                .into_iter()
                .chain(ready.replies)
                .find(|rep| (rep.client, rep.seq) == (request.client, request.seq))
        }
    }

    #[async_trait]
    impl Endpoint for SlowLink {
        fn node(&self) -> NodeId {
            1
        }

        async fn call(&self, request: Request) -> Result<Reply, EndpointError> {
            if !request.is_register()
                && postcard::from_bytes::<u64>(&request.payload) == Ok(self.hold)
            {
                self.held.lock().unwrap().push(request.clone());
                std::future::pending::<()>().await;
            }
            self.deliver(request).ok_or(EndpointError::timeout(1))
        }
    }

    /// "A command whose deadline passes may still execute later, but never after a later
    /// command of the same client", across idle re-registration: a client idle past
    /// `session_idle_limit` whose last command timed out keeps its session for the next
    /// command, so the next command fences the timed-out one off. (Found by review:
    /// re-registering let a delayed copy of command 2 execute after command 3.)
    #[tokio::test(start_paused = true)]
    async fn a_timed_out_command_never_runs_after_a_later_one_across_idle_reregistration() {
        let mut replica = crate::Replica::new(
            crate::Config::new(1, vec![1]),
            Applied::default(),
            crate::PersistentState::default(),
        )
        .unwrap();
        for _ in 0..1000 {
            if replica.is_leader() {
                break;
            }
            replica.tick();
            replica.take_ready();
        }
        assert!(replica.is_leader());
        let link = Arc::new(SlowLink {
            replica: std::sync::Mutex::new(replica),
            hold: 2,
            held: std::sync::Mutex::new(Vec::new()),
        });
        let options = ClientOptions::default()
            .with_session_idle_limit(Some(Duration::from_secs(60)))
            .with_attempt_timeout(Duration::from_secs(10));
        let mut client: Client<Applied> = Client::with_options(vec![link.clone()], options);
        assert_eq!(client.execute(&1).await, Ok(1));
        tokio::time::advance(Duration::from_secs(59)).await;
        // Command 2 is sent under the first session; the link holds it; deadline passes.
        assert_eq!(
            client.execute_within(&2, Duration::from_secs(2)).await,
            Err(ClientError::Timeout)
        );
        // Command 3: 61 s since the last completed command, but command 2 is unsettled:
        // it goes under the same session, as #3.
        let session = client.session();
        assert_eq!(client.execute(&3).await, Ok(3));
        assert_eq!(
            client.session(),
            session,
            "no new session while #2 is unsettled"
        );
        // The link now delivers the held copy of command 2: too old to execute.
        let held = link.held.lock().unwrap().pop().unwrap();
        let reply = link.deliver(held).unwrap();
        assert_eq!(reply.response, Response::Stale, "{reply:?}");
        let order = link.replica.lock().unwrap().state_machine().0.clone();
        assert_eq!(order, [1, 3], "command 2 must not run after command 3");
        // Settled again: the next idle stretch re-registers as before.
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(client.execute(&4).await, Ok(4));
        assert_ne!(
            client.session(),
            session,
            "idle past the limit: a new session"
        );
    }

    #[test]
    fn an_endpoint_error_hands_out_its_cause_itself() {
        use std::error::Error as _;
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = EndpointError::unreachable(3, io);
        let cause = e.source().expect("a cause");
        let io = cause
            .downcast_ref::<std::io::Error>()
            .expect("the io::Error itself");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
        assert_eq!(e.to_string(), "node 3 unreachable: refused");
        assert_eq!((e.node(), e.kind()), (3, EndpointErrorKind::Unreachable));
    }
}
