//! Linearizability checking of client-visible histories against a sequential model.
//!
//! A concurrent system is *linearizable* when every operation appears to take effect
//! atomically at some instant between its call and its return, in an order that a
//! sequential specification (a [`Model`]) accepts with the outputs the clients saw.
//!
//! # Using it
//! 1. Describe the sequential behaviour as a [`Model`]: an initial state and a pure
//!    `step` function.
//! 2. Record a [`History`] while the system runs: [`History::invoke`] when a client
//!    issues an operation, [`History::complete`] when it sees the answer. Operations whose
//!    outcome is unknown (the client gave up, the node crashed, the test ended) are left
//!    pending: they may have taken effect at any instant after their call, or never.
//!    Operations known to have failed without effect are best left out of the history.
//! 3. Call [`check`] (or [`check_with_budget`]).
//!
//! Times are any `u64` clock shared by all clients (ticks, nanoseconds, a global event
//! counter). Operation `a` precedes operation `b` in real time only when `a` returned
//! strictly before `b` was called (`a.return < b.call`); equal times count as concurrent,
//! which can only make the check more lenient.
//!
//! ```
//! use paxos_core::testing::{check, AppendLog, History};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut history = History::new();
//! let a = history.invoke(0, (1, 1)); // client 1 sends its command 1 at t = 0
//! let b = history.invoke(2, (2, 1)); // client 2 sends its command 1 at t = 2
//! history.complete(b, 4, 0)?; // client 2's command landed at position 0
//! history.complete(a, 5, 1)?; // client 1's at position 1
//! check(&AppendLog, history.operations())?;
//! AppendLog::check_fast(history.operations())?;
//! # Ok(()) }
//! ```
//!
//! # Algorithm
//! [`check`] is the Wing & Gong search as refined by Lowe ("WGL"): walk the call and
//! return events in time order, tentatively linearize a called operation whose output the
//! model reproduces, backtrack when an operation's return is reached before it could be
//! linearized, and memoize every (set of linearized operations, model state) pair already
//! explored so that no configuration is searched twice. The search is exponential in the
//! worst case, so it stops after a budget of model steps and reports
//! [`CheckError::Inconclusive`] instead of running forever.
//!
//! For the simulation's append-only state machine, [`AppendLog::check_fast`] decides the
//! same question in `O(n log n)`: each completed operation's output (its position) fixes
//! its place in the linearization.

use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;

use thiserror::Error;

use crate::types::ClientId;

/// The sequential specification a history is checked against.
///
/// `step` must be a pure function of the state and the input: the checker calls it many
/// times on the same state while it searches.
pub trait Model {
    /// The model's state. Hashed and compared to memoize the search, so keep it small.
    type State: Clone + Eq + Hash;
    /// An operation as a client issues it.
    type Input;
    /// What a client sees when the operation returns.
    type Output: PartialEq;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state`: the next state and the output a client would see.
    fn step(&self, state: &Self::State, input: &Self::Input) -> (Self::State, Self::Output);
}

/// How and when an operation returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Return<O> {
    /// When the client saw the result.
    pub time: u64,
    /// The result the client saw.
    pub output: O,
}

/// One client operation in a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// When the client issued the operation.
    pub call: u64,
    /// The operation.
    pub input: I,
    /// When it returned and what it returned; `None` when the outcome is unknown (the
    /// operation may have taken effect at any time after `call`, or never).
    pub ret: Option<Return<O>>,
}

impl<I, O> Operation<I, O> {
    /// An operation called at `call` that returned `output` at `ret`.
    pub fn completed(call: u64, ret: u64, input: I, output: O) -> Self {
        Operation {
            call,
            input,
            ret: Some(Return { time: ret, output }),
        }
    }

    /// An operation called at `call` whose outcome is unknown.
    pub fn pending(call: u64, input: I) -> Self {
        Operation {
            call,
            input,
            ret: None,
        }
    }

    /// True when the outcome is unknown.
    pub fn is_pending(&self) -> bool {
        self.ret.is_none()
    }
}

/// Identifies an operation of a [`History`]: its index in [`History::operations`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(usize);

impl OpId {
    /// The operation's index in [`History::operations`].
    pub fn index(self) -> usize {
        self.0
    }
}

/// [`History::complete`] was given an operation it cannot complete.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HistoryError {
    /// No operation has this id.
    #[error("unknown operation {0}")]
    UnknownOperation(usize),
    /// The operation already returned.
    #[error("operation {0} already returned")]
    AlreadyReturned(usize),
    /// The return time is earlier than the call time.
    #[error("operation {0} cannot return before it was called")]
    ReturnBeforeCall(usize),
}

/// A history under construction: operations in the order they were invoked.
#[derive(Clone, Debug)]
pub struct History<I, O> {
    ops: Vec<Operation<I, O>>,
}

impl<I, O> Default for History<I, O> {
    fn default() -> Self {
        History { ops: Vec::new() }
    }
}

impl<I, O> History<I, O> {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that a client issued `input` at `time`; the operation stays pending until
    /// [`complete`](History::complete)d.
    pub fn invoke(&mut self, time: u64, input: I) -> OpId {
        self.ops.push(Operation::pending(time, input));
        OpId(self.ops.len() - 1)
    }

    /// Records that operation `id` returned `output` at `time`.
    pub fn complete(&mut self, id: OpId, time: u64, output: O) -> Result<(), HistoryError> {
        let op = self
            .ops
            .get_mut(id.0)
            .ok_or(HistoryError::UnknownOperation(id.0))?;
        if op.ret.is_some() {
            return Err(HistoryError::AlreadyReturned(id.0));
        }
        if time < op.call {
            return Err(HistoryError::ReturnBeforeCall(id.0));
        }
        op.ret = Some(Return { time, output });
        Ok(())
    }

    /// Adds an already-built operation.
    pub fn push(&mut self, op: Operation<I, O>) -> OpId {
        self.ops.push(op);
        OpId(self.ops.len() - 1)
    }

    /// The operations, in invocation order.
    pub fn operations(&self) -> &[Operation<I, O>] {
        &self.ops
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when no operation was recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Evidence that a history is not linearizable.
///
/// Operations are named by their index in the checked slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counterexample {
    /// The longest sequence of operations the search managed to linearize, in
    /// linearization order (one of possibly several such sequences).
    pub linearized: Vec<usize>,
    /// A completed operation that could not take effect after `linearized` before it
    /// returned: no order of the remaining operations explains its output.
    pub blocked: usize,
}

impl Counterexample {
    /// A readable account of the counterexample, quoting the operations of `history`
    /// (the slice that was checked).
    pub fn describe<I: fmt::Debug, O: fmt::Debug>(&self, history: &[Operation<I, O>]) -> String {
        let show = |i: usize| match history.get(i) {
            Some(op) => match &op.ret {
                Some(r) => format!(
                    "#{i} {:?} -> {:?} [{}, {}]",
                    op.input, r.output, op.call, r.time
                ),
                None => format!("#{i} {:?} -> ? [{}, ...]", op.input, op.call),
            },
            None => format!("#{i} (not in history)"),
        };
        let prefix: Vec<String> = self.linearized.iter().map(|&i| show(i)).collect();
        format!(
            "after linearizing [{}], {} cannot take effect",
            prefix.join(", "),
            show(self.blocked)
        )
    }
}

impl fmt::Display for Counterexample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "after linearizing {:?}, operation {} cannot take effect",
            self.linearized, self.blocked
        )
    }
}

/// Why [`check`] did not accept a history.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CheckError {
    /// No linearization exists.
    #[error("history is not linearizable: {0}")]
    NotLinearizable(Counterexample),
    /// The search used up its budget before deciding.
    #[error("inconclusive: gave up after {steps} model steps")]
    Inconclusive {
        /// Model steps taken.
        steps: u64,
    },
    /// An operation returns before it is called.
    #[error("operation {op} returns before it is called")]
    Malformed {
        /// The operation's index.
        op: usize,
    },
}

/// The budget [`check`] uses: model steps before the search gives up.
///
/// The memo holds at most one entry per step, each `n / 8` bytes for `n` operations plus
/// one model state.
pub const DEFAULT_MAX_STEPS: u64 = 1_000_000;

/// Checks that `history` is linearizable with respect to `model`, with the
/// [`DEFAULT_MAX_STEPS`] budget.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
) -> Result<(), CheckError> {
    check_with_budget(model, history, DEFAULT_MAX_STEPS)
}

/// Checks that `history` is linearizable with respect to `model`, giving up with
/// [`CheckError::Inconclusive`] after `max_steps` model steps.
///
/// Completed operations must all be linearized; pending ones may be linearized anywhere
/// after their call or left out, and any output is accepted from them.
pub fn check_with_budget<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    max_steps: u64,
) -> Result<(), CheckError> {
    for (i, op) in history.iter().enumerate() {
        if op.ret.as_ref().is_some_and(|r| r.time < op.call) {
            return Err(CheckError::Malformed { op: i });
        }
    }
    Search::new(model, history, max_steps).run()
}

/// A set of operation indices.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Bitset(Box<[u64]>);

impl Bitset {
    fn new(n: usize) -> Self {
        Bitset(vec![0; n.div_ceil(64)].into_boxed_slice())
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// The WGL search state. Events live in a doubly linked list so that linearizing an
/// operation ("lifting" its call and return) and undoing it are O(1): node `2i` is the
/// call of operation `i`, node `2i + 1` its return (absent for a pending operation), and
/// two sentinels close the list.
struct Search<'h, M: Model> {
    model: &'h M,
    ops: &'h [Operation<M::Input, M::Output>],
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
    tail: usize,
    max_steps: u64,
}

impl<'h, M: Model> Search<'h, M> {
    fn new(model: &'h M, ops: &'h [Operation<M::Input, M::Output>], max_steps: u64) -> Self {
        let n = ops.len();
        let (head, tail) = (2 * n, 2 * n + 1);
        // (time, calls before returns at equal times, node)
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
        for (i, op) in ops.iter().enumerate() {
            events.push((op.call, 0, 2 * i));
            if let Some(r) = &op.ret {
                events.push((r.time, 1, 2 * i + 1));
            }
        }
        events.sort_unstable();
        let mut next = vec![tail; 2 * n + 2];
        let mut prev = vec![head; 2 * n + 2];
        let mut last = head;
        for &(_, _, node) in &events {
            next[last] = node;
            prev[node] = last;
            last = node;
        }
        next[last] = tail;
        prev[tail] = last;
        Search {
            model,
            ops,
            next,
            prev,
            head,
            tail,
            max_steps,
        }
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        self.prev[n] = node;
    }

    fn lift(&mut self, op: usize) {
        self.unlink(2 * op);
        if self.ops[op].ret.is_some() {
            self.unlink(2 * op + 1);
        }
    }

    fn unlift(&mut self, op: usize) {
        if self.ops[op].ret.is_some() {
            self.relink(2 * op + 1);
        }
        self.relink(2 * op);
    }

    fn run(mut self) -> Result<(), CheckError> {
        let mut remaining = self.ops.iter().filter(|op| op.ret.is_some()).count();
        let mut state = self.model.init();
        let mut linearized = Bitset::new(self.ops.len());
        let mut memo: HashSet<(Bitset, M::State)> = HashSet::new();
        // (operation, state before it)
        let mut stack: Vec<(usize, M::State)> = Vec::new();
        let mut best: Option<Counterexample> = None;
        let mut steps: u64 = 0;
        let mut entry = self.next[self.head];
        loop {
            if remaining == 0 {
                return Ok(());
            }
            if entry != self.tail && entry.is_multiple_of(2) {
                // A call: try to let the operation take effect now.
                let op = entry / 2;
                steps += 1;
                if steps > self.max_steps {
                    return Err(CheckError::Inconclusive { steps: steps - 1 });
                }
                let (after, output) = self.model.step(&state, &self.ops[op].input);
                let fits = self.ops[op].ret.as_ref().is_none_or(|r| r.output == output);
                if fits {
                    linearized.set(op);
                    if memo.insert((linearized.clone(), after.clone())) {
                        stack.push((op, std::mem::replace(&mut state, after)));
                        self.lift(op);
                        if self.ops[op].ret.is_some() {
                            remaining -= 1;
                        }
                        entry = self.next[self.head];
                        continue;
                    }
                    linearized.clear(op);
                }
                entry = self.next[entry];
                continue;
            }
            // A return reached before its operation could take effect (the tail cannot
            // be reached while a completed operation remains): undo the last choice.
            if entry != self.tail
                && best
                    .as_ref()
                    .is_none_or(|b| stack.len() > b.linearized.len())
            {
                best = Some(Counterexample {
                    linearized: stack.iter().map(|(op, _)| *op).collect(),
                    blocked: entry / 2,
                });
            }
            let Some((op, before)) = stack.pop() else {
                let fallback = || Counterexample {
                    linearized: Vec::new(),
                    blocked: self.ops.iter().position(|o| o.ret.is_some()).unwrap_or(0),
                };
                return Err(CheckError::NotLinearizable(best.unwrap_or_else(fallback)));
            };
            linearized.clear(op);
            self.unlift(op);
            if self.ops[op].ret.is_some() {
                remaining += 1;
            }
            state = before;
            entry = self.next[2 * op];
        }
    }
}

/// The model of the simulation's recording state machine: every command is appended to a
/// log and answered with its position in it (0, 1, 2, ...).
///
/// Input: the command, `(client, request number)`; output: the position. The state is the
/// log's length, since the positions alone are what clients observe. A command executed
/// twice, lost, or executed out of real-time order leaves a position no linearization can
/// explain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppendLog;

impl Model for AppendLog {
    type State = u64;
    type Input = (ClientId, u64);
    type Output = u64;

    fn init(&self) -> u64 {
        0
    }

    fn step(&self, len: &u64, _command: &(ClientId, u64)) -> (u64, u64) {
        (len.saturating_add(1), *len)
    }
}

/// Why [`AppendLog::check_fast`] rejected a history. Operations are named by their
/// index in the checked slice.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AppendLogViolation {
    /// Two completed operations report the same position.
    #[error("operations {first} and {second} both report position {position}")]
    DuplicatePosition {
        /// The position.
        position: u64,
        /// One operation.
        first: usize,
        /// The other.
        second: usize,
    },
    /// `later` reports a higher position than `earlier` but returned before `earlier`
    /// was called.
    #[error("operation {later} returned before operation {earlier} was called, yet took a later position")]
    RealTimeOrder {
        /// The operation at the lower position.
        earlier: usize,
        /// The operation at the higher position.
        later: usize,
    },
    /// A position below a reported one was taken by no completed operation, and no
    /// pending operation can have taken it (a lost or duplicated execution).
    #[error("nothing can have taken position {position}")]
    Gap {
        /// The unexplained position.
        position: u64,
    },
    /// An operation returns before it is called.
    #[error("operation {op} returns before it is called")]
    Malformed {
        /// The operation's index.
        op: usize,
    },
}

impl AppendLog {
    /// Decides linearizability of an [`AppendLog`] history in `O(n log n)`; agrees with
    /// [`check`] on every history.
    ///
    /// Completed operations are ordered by their positions, which must be distinct and
    /// consistent with real time; every position below the highest reported one that no
    /// completed operation took must be taken by a distinct pending operation that was
    /// called before every operation at a higher position returned.
    pub fn check_fast(
        history: &[Operation<(ClientId, u64), u64>],
    ) -> Result<(), AppendLogViolation> {
        let mut done: Vec<(u64, u64, u64, usize)> = Vec::new(); // (position, call, ret, op)
        let mut pending_calls: Vec<u64> = Vec::new();
        for (i, op) in history.iter().enumerate() {
            match &op.ret {
                Some(r) if r.time < op.call => return Err(AppendLogViolation::Malformed { op: i }),
                Some(r) => done.push((r.output, op.call, r.time, i)),
                None => pending_calls.push(op.call),
            }
        }
        done.sort_unstable();
        pending_calls.sort_unstable();
        // Distinct positions, and real-time order among completed operations.
        let mut latest_call: Option<(u64, usize)> = None; // max call at lower positions
        for (k, &(position, call, ret, op)) in done.iter().enumerate() {
            if k > 0 && done[k - 1].0 == position {
                return Err(AppendLogViolation::DuplicatePosition {
                    position,
                    first: done[k - 1].3,
                    second: op,
                });
            }
            if let Some((c, earlier)) = latest_call {
                if ret < c {
                    return Err(AppendLogViolation::RealTimeOrder { earlier, later: op });
                }
            }
            if latest_call.is_none_or(|(c, _)| call > c) {
                latest_call = Some((call, op));
            }
        }
        // Gaps, with the earliest return at any higher position: a pending operation
        // filling the gap must have been called by then.
        let mut suffix_min_ret = vec![u64::MAX; done.len() + 1];
        for k in (0..done.len()).rev() {
            suffix_min_ret[k] = suffix_min_ret[k + 1].min(done[k].2);
        }
        let mut gaps_filled = 0usize;
        let mut expected = 0u64;
        for (k, &(position, ..)) in done.iter().enumerate() {
            // Positions expected..position are gaps, each followed by done[k..].
            let deadline = suffix_min_ret[k];
            let mut gap = expected;
            while gap < position {
                // Gaps are visited in increasing order with nondecreasing deadlines: the
                // next-earliest pending call must meet this one (Hall's condition on
                // nested candidate sets).
                match pending_calls.get(gaps_filled) {
                    Some(&call) if call <= deadline => gaps_filled += 1,
                    _ => return Err(AppendLogViolation::Gap { position: gap }),
                }
                gap += 1;
            }
            expected = position.saturating_add(1);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "linearizability_tests.rs"]
mod tests;
