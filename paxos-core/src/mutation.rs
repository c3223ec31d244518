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
}
