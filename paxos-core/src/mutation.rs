//! Deliberately broken protocol variants, compiled only for tests, that show the
//! simulation's checkers can fail.

/// Which rule of the protocol to break.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Mutation {
    /// The correct protocol.
    #[default]
    None,
    /// A new leader ignores the values reported in promises and fills every slot it
    /// did not accept itself with a no-op.
    IgnorePromisedValues,
    /// An acceptor accepts proposals below its promised ballot.
    AcceptBelowPromise,
    /// Duplicates are filtered only by the leader at proposal time, not by the
    /// replicated session table at execution.
    LeaderLocalSessions,
    /// Execution skips a slot that is not yet known instead of waiting for it.
    SkipGaps,
    /// The new leader takes the value with the *lowest* ballot from promises.
    LowestBallotWins,
    /// Checkpoints leave the session table out, so state transfer and recovery forget
    /// which requests were executed.
    CheckpointWithoutSessions,
    /// A leader keeps leading after it learns (by fetch or snapshot) that a higher
    /// ballot decided one of its slots, and a learned value keeps the ballot of the
    /// entry it replaces: its commit points then vouch for values it never proposed.
    SupersededLeaderAnnounces,
    /// An acceptor acknowledges a proposal for a slot it already knows decided without
    /// checking that the decided value is the proposed one.
    AckChosenBlindly,
    /// A replica that starts without state votes at once, as if it had never
    /// promised or accepted anything (no recovery).
    AmnesiaVotesAtOnce,
    /// Recovery without incarnations: voters do not record a recovering replica's new
    /// incarnation, and candidates count promises from every incarnation.
    RecoveryWithoutIncarnations,
    /// Sessions are keyed by the id the client chose rather than by the slot of their
    /// registration: a late duplicate registration revives an evicted session.
    ClientChosenSessionIds,
    /// A duplicate request is answered with a garbled copy of the cached reply.
    GarbledCachedReply,
    /// A request whose session is unknown (evicted or expired) is executed anyway.
    ExpiredSessionExecutes,
    /// A request that is not the first of its batch ([`Value::Batch`](crate::Value::Batch))
    /// executes without the session check: a duplicate proposed in a batch runs twice.
    BatchedDuplicatesExecute,
    /// Acceptors bound what they hold above their commit point in slots only, not in
    /// bytes: with batches in the slots, a PROMISE can outgrow any message.
    AcceptIgnoresBytes,
    /// Executing a clock entry expires sessions by the executing replica's own clock
    /// (its tick count) instead of the time the entry carries: replicas whose clocks
    /// differ (restarts, skew, pauses) drop different sessions.
    ExpiryOnLocalClock,
    /// Executing a clock entry adds its time to the log time instead of taking the
    /// later of the two (a time read as an increment): log time runs ahead of every
    /// leader's clock and sessions expire before their time-to-live.
    ClockTimeAdded,
    /// Clock steps execute wherever they land, whatever log time they started from:
    /// a deposed leader's steps, re-proposed behind newer requests, count ticks that
    /// passed before those requests were sent, and their sessions expire early.
    ClockStepsUnchained,
    /// An acceptor learns the commit point an ACCEPT carries only after its byte
    /// window: a large request proposed right after a full batch committed is
    /// refused for the batch's bytes, and waits a retransmission.
    CommitPointLearnedLast,
    /// A leader proposes a request whatever its size while its in-flight bytes are
    /// under the budget: a large request right behind a full batch lands on
    /// acceptors that still hold the batch, is refused for its bytes, and waits a
    /// retransmission.
    LargeValueJoinsFullWindow,
    /// A new leader starts its clock steps from the log time it executed, not from
    /// the log time after the entries it re-proposes: where those hold clock steps,
    /// its steps never chain onto the log, and idle sessions never expire.
    LeaderClockFromExecuted,
    /// A new leader proposes requests before any clock step of its own: a deposed
    /// leader's steps, re-proposed behind them, still chain onto the log time and
    /// count ticks that passed before those requests were sent.
    ReignOpensWithoutStep,
    /// Clock entries are proposed however far above the leader's commit point: its
    /// own vote there counts towards a quorum, but a later candidate drops PROMISE
    /// entries beyond the promiser's acceptance window, so it proposes another value
    /// in a slot already decided.
    ClockBeyondWindow,
    /// Quorums of two, whatever the cluster size: right with three replicas only.
    QuorumOfTwo,
    /// A pre-vote needs every member, not a majority: no election while one is down.
    PreVoteNeedsEveryone,
    /// The leader answers a read from its own state at once, without confirming with a
    /// majority that it still leads and without waiting for its read point.
    ReadWithoutConfirmation,
    /// The leader answers a confirmed read without waiting until it has executed up to
    /// the read point.
    ReadBeforeReadPoint,
    /// A read joins the round already in flight (sent before it arrived) instead of the
    /// next one: acknowledgements older than the read confirm it.
    ReadJoinsSentRound,
    /// A replica answers a stale read at once, below the floor the client asked for:
    /// a client's reads go back in time when they move to a replica that lags.
    StaleReadIgnoresFloor,
    /// A stale read's answer leaves before the round's writes: in a single-member
    /// cluster it can show a slot chosen only by the replica's own unwritten vote.
    StaleReadRepliesEarly,
    /// A stale read's answer names one slot more than the replica executed: a client
    /// that passes it as its next floor is promised a state it was not shown.
    StaleReadMisreportsSlot,
    /// A checkpoint finished off the replica's thread is stored under the slot the
    /// replica had executed when it came back, not the slot it was taken at: the slots
    /// in between are in neither the state nor, after a restart, the replay.
    CheckpointAtCompletion,
    /// Storage writes every checkpoint after `persist` returns, an installed one too
    /// (which the log does not cover): a crash in between leaves a commit point above
    /// slots that are neither in a checkpoint nor in the log.
    LateInstalledCheckpoint,
    /// Acceptors ignore the handover flag of a PREPARE: while they hear the old leader
    /// they refuse the successor it named, and a leader transfer waits for timeouts.
    HandoverIgnored,
    /// When the peer it pulls a snapshot from moves on to a newer checkpoint in the
    /// middle of a transfer, the receiver starts over on the new data but keeps the
    /// slot of the checkpoint it started with: the state is installed under a slot it
    /// does not belong to (a transfer's pieces and the identity they install under are
    /// not kept together).
    SnapshotRestartKeepsOldSlot,
    /// A receiver resuming a snapshot transfer asks for the piece one byte past where
    /// its received bytes end: no transfer of more than one piece completes, and the
    /// replica never catches up by state transfer.
    SnapshotResumeSkipsAByte,
    /// A follower told a commit point (by ACCEPT, HEARTBEAT or COMMIT) marks chosen
    /// every entry below it, whatever ballot it was accepted at, instead of only the
    /// entries accepted at the announcing leader's ballot: a value a deposed leader
    /// proposed is taken for the chosen one.
    CommitPointAnyBallot,
    /// PROMISEs and ACCEPTEDs may leave before the writes they vouch for are durable
    /// (as if they vouched for nothing): a crash in the middle of the round loses a
    /// promise or an accept that a candidate or leader already counted.
    VotesLeaveEarly,
    /// Batches (ACCEPT, FETCH-REPLY, a PROMISE's chosen entries) are cut by count only,
    /// not by `max_message_bytes`, and a leader's in-flight table by count only: a batch
    /// of large commands exceeds the transport's frame, is dropped, and is sent again
    /// the same size for ever; a full window makes its successor's PROMISEs too large.
    /// Acceptors then ignore their byte window as well.
    BatchesIgnoreBytes,
    /// An acceptor asked to accept a slot it knows decided with another value, or
    /// compacted, stays silent instead of telling the leader its commit point: a leader
    /// behind followers that compacted those slots never completes them.
    SilentAboutDecided,
    /// A FETCH is answered with every entry held in the range, chosen or merely
    /// accepted: whoever fetches (a learner polling above its commit point, a member
    /// catching up) may learn a value that is never chosen.
    FetchServesUnchosen,
    /// A learner polls the same member for ever, whether it answers or not: with that
    /// member gone, the learner never catches up again.
    LearnerNeverRotates,
    /// A member answers a learner's held FETCH only once it expires, not when its
    /// commit point moves: a caught-up learner hears of a commit up to a heartbeat
    /// period late.
    ParkedFetchForgotten,
    /// A PROMISE reports every entry above the promiser's commit point in one message,
    /// as before pages: a deposed leader's merged batches can exceed the frame.
    PromisesUnpaged,
    /// A candidate takes the first page of a paged PROMISE as the whole of it: values
    /// the promiser accepted above the page are left out of the merge.
    PromisePageTakenWhole,
    /// A new leader sends its whole merged log in one NEW-VIEW (and accepts it all at
    /// once), however large: its NEW-VIEW, and its own PROMISE later, can exceed the
    /// frame.
    NewViewUnpaged,
    /// A new leader drops the part of its merged log that NEW-VIEW left out, instead of
    /// proposing it: the log stops at the first slot left out.
    MergeBeyondViewDropped,
    /// A candidate takes any reply of a promiser as the page it asked for (or, between
    /// pages, as a whole PROMISE), whatever slot it reports from: a duplicated or late
    /// page then stands for the promise, and the entries below it are left out of
    /// the merge.
    PageRepliesUnchecked,
    /// A new leader starts its session clock from the log time of its own log alone,
    /// not of the merged values it still has to re-propose beyond its NEW-VIEW: where
    /// those hold a deposed leader's clock steps, its own steps never count and idle
    /// sessions never expire.
    ClockIgnoresReadopt,
    /// R2 left out: a new leader re-proposes a stop-sign and whatever lies above it,
    /// as any merged value (the trap of `docs/design-membership.md`).
    StopSignMergedNaively,
    /// R2 without its "flagged chosen" clause: an entry learned above a stop-sign
    /// (kept with [`Ballot::ZERO`](crate::Ballot::ZERO)) does not count as evidence
    /// that the stop-sign was not chosen.
    StopSignIgnoresFlags,
    /// R1 broken: a leader keeps proposing requests above its own stop-sign.
    ProposesAboveStopSign,
    /// R3 half done: a replica moves to the next epoch without promising its base
    /// ballot, so an old-epoch leader can still get its votes.
    EpochKeepsOldPromise,
    /// R4 broken: a FETCH is answered with values marked chosen above the commit point
    /// even after a membership change.
    FetchAboveCommitAfterChange,
    /// A candidate of a new epoch counts entries accepted under an older epoch's
    /// ballots above the stop-sign.
    OldEpochEntriesMerged,
    /// Every write of a round that writes a commit point is left for a later round,
    /// not only when commit points are all it writes and nothing waits for them (see
    /// `Replica::write_commit_point`): an ACCEPT that carries a commit point is
    /// acknowledged before it is stored, and a crash in between loses the vote.
    DeferRoundsWithCommits,
    /// An acceptor votes for ballots of an epoch whose stop-sign it has not executed.
    VotesInUnknownEpoch,
    /// A recovery completes with a stop-sign of a later epoch still undecided in its
    /// log (a later epoch the lost life voted in may have begun).
    RecoveryIgnoresStopSigns,
    /// A candidate refused with a promise of a later epoch adopts that promise, and can
    /// then vote in neither epoch.
    NackAdoptsLaterEpoch,
    /// `Config::hold_partial_slots` broken: a slot that would not be full waits even
    /// when nothing is in flight, so the last few requests of a burst are never
    /// proposed.
    HoldsPartialSlotsWhenIdle,
    /// `Config::hold_partial_slots` without `held_until`: a slot that would not be full
    /// waits until nothing at all is in flight, so a clock entry proposed every period
    /// and acknowledged more slowly than that holds a lone request for ever.
    HoldsBehindAllInFlight,
    /// PROMISEs leave before the promise they vouch for is durable (ACCEPTEDs still
    /// wait): a crash in the middle of the round takes back a promise a candidate
    /// counted.
    PromisesLeaveEarly,
}
