//! The crate's own simulation profiles and the broken variants they catch.
//!
//! The engine is the test kit's (`crate::testing::sim`), run here with commands that are
//! only their identity (`Recorder`), weighted towards one class of faults per profile.
//! `PAXOS_SIM_SEEDS=N cargo test --release -p paxos-core sim` runs N seeds of each;
//! `PAXOS_SIM_SEED=S` replays one seed exactly.

pub(crate) use crate::testing::sim::engine::Recorder;

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use crate::mutation::Mutation;
    use crate::testing::sim::engine::{seeds, Faults, Sim, Stats, Violation};

    #[test]
    fn simulation_holds_invariants_under_faults() {
        run_seeds("simulation", seeds(1000), |_| {});
    }

    #[test]
    fn simulation_holds_invariants_under_stale_traffic() {
        run_seeds("simulation (stale traffic)", seeds(500), stale_traffic);
    }

    #[test]
    fn simulation_holds_invariants_with_dueling_leaders() {
        run_seeds("simulation (dueling leaders)", seeds(500), dueling_leaders);
    }

    #[test]
    fn simulation_holds_invariants_with_five_dueling_leaders() {
        run_seeds(
            "simulation (five dueling leaders)",
            seeds(300),
            five_dueling_leaders,
        );
    }

    #[test]
    fn simulation_holds_invariants_with_stale_leaders() {
        run_seeds("simulation (stale leaders)", seeds(300), stale_leaders);
    }

    #[test]
    fn simulation_holds_invariants_under_amnesia() {
        run_seeds("simulation (amnesia)", seeds(300), amnesia);
    }

    #[test]
    fn simulation_holds_invariants_with_long_outages() {
        run_seeds("simulation (long outages)", seeds(200), crashes_only);
    }

    #[test]
    fn simulation_holds_invariants_with_torn_rounds() {
        run_seeds("simulation (torn rounds)", seeds(200), torn_rounds);
    }

    #[test]
    fn simulation_holds_invariants_with_session_eviction() {
        run_seeds("simulation (session eviction)", seeds(300), eviction);
    }

    #[test]
    fn simulation_holds_invariants_with_session_expiry() {
        run_seeds("simulation (session expiry)", seeds(300), expiry);
    }

    #[test]
    fn simulation_holds_invariants_with_learners() {
        let seeds = seeds(300);
        let n = seeds.len();
        let (mut executed, mut snapshots, mut reads, mut lost) = (0, 0, 0, 0);
        for seed in seeds {
            let s = Sim::protocol(seed, Mutation::None, with_learners)
                .run()
                .unwrap_or_else(|v| {
                    panic!("learners: seed {seed} failed: {v}\nreplay: PAXOS_SIM_SEED={seed} cargo test -p paxos-core sim::tests::simulation_holds_invariants_with_learners -- --nocapture")
                });
            executed += s.learner_executed;
            snapshots += s.learner_snapshots;
            reads += s.learner_reads;
            lost += s.lost_for_good;
        }
        let _ = writeln!(
            std::io::stderr().lock(),
            "simulation (learners): {n} seeds, learners executed {executed} slots, installed {snapshots} snapshots, answered {reads} stale reads; {lost} leaders lost for good"
        );
        // The profile exercises what it is for: learners that copy the log, catch up
        // by state transfer and serve reads.
        if n >= 50 {
            assert!(executed > 0 && snapshots > 0 && reads > 0 && lost > 0);
        }
    }

    /// One or two learners beside three or five members, with crashes (learners
    /// crash and lose their storage too), partitions and lossy links that reach
    /// learners, stale reads to any member or learner, and in a third of the runs a
    /// leader lost for good when the faults end.
    fn with_learners(f: &mut Faults) {
        f.learners = 1 + (f.fault_ticks % 2) as usize;
        f.crashes = true;
        f.amnesia = f.amnesia || f.fault_ticks.is_multiple_of(3);
        f.stale_reads = true;
        f.requests_per_client = f.requests_per_client.max(10);
        // In a third of the runs the leader is lost for good when the faults end: the
        // learners' polls and transfers must turn to the other members.
        f.lose_leader_at_heal = f.fault_ticks % 3 == 1;
    }

    #[test]
    fn mutant_learner_polling_one_member_for_ever_is_caught() {
        assert_caught_by(
            Mutation::LearnerNeverRotates,
            with_learners,
            500,
            "behind at commit point",
            "catch-up check",
        );
    }

    #[test]
    fn mutant_serving_unchosen_values_to_fetches_is_caught_with_learners() {
        assert_caught(Mutation::FetchServesUnchosen, with_learners, 500);
    }

    #[test]
    fn simulation_holds_invariants_with_membership_changes() {
        let seeds = seeds(300);
        let n = seeds.len();
        let (mut asked, mut epochs, mut completed) = (0, 0, 0);
        for seed in seeds {
            let s = Sim::protocol(seed, Mutation::None, membership_changes)
                .run()
                .unwrap_or_else(|v| {
                    panic!("membership changes: seed {seed} failed: {v}\nreplay: PAXOS_SIM_SEED={seed} cargo test -p paxos-core sim::tests::simulation_holds_invariants_with_membership_changes -- --nocapture")
                });
            asked += s.reconfigurations;
            epochs += s.epochs;
            completed += s.completed;
        }
        let _ = writeln!(
            std::io::stderr().lock(),
            "simulation (membership changes): {n} seeds, {completed} requests completed, {asked} changes asked, {epochs} epochs reached"
        );
        if n >= 50 {
            assert!(
                epochs > n as u64,
                "the profile changes the membership: {epochs}"
            );
        }
    }

    /// Two spare replicas beside three or five members, and the leader asked now and
    /// then to move to a new membership of the same size drawn from all of them
    /// (members leave, learners join, removed replicas come back), with crashes,
    /// partitions, loss and the other faults the seed draws.
    fn membership_changes(f: &mut Faults) {
        f.learners = 2;
        f.reconfigure = true;
        f.crashes = true;
        f.requests_per_client = f.requests_per_client.max(10);
    }

    #[test]
    fn mutant_merging_stop_signs_naively_is_caught() {
        assert_caught(Mutation::StopSignMergedNaively, membership_changes, 500);
    }

    #[test]
    fn mutant_proposing_above_a_stop_sign_is_caught() {
        assert_caught(Mutation::ProposesAboveStopSign, membership_changes, 500);
    }

    #[test]
    fn mutant_voting_in_an_unknown_epoch_is_caught() {
        // An acceptor that promises the next epoch's leader before holding the
        // stop-sign: a later leader of the old epoch can then turn a chosen stop-sign
        // into a no-op (found at seed 199).
        assert_caught_by(
            Mutation::VotesInUnknownEpoch,
            membership_changes,
            500,
            "two values chosen",
            "agreement check",
        );
    }

    /// A search for seeds that catch a broken variant, for pinning (ignored: run it by
    /// name with `PAXOS_SIM_SEEDS`).
    #[test]
    #[ignore]
    fn search_membership_mutants() {
        for m in [
            Mutation::VotesInUnknownEpoch,
            Mutation::NackAdoptsLaterEpoch,
            Mutation::StopSignIgnoresFlags,
            Mutation::FetchAboveCommitAfterChange,
            Mutation::EpochKeepsOldPromise,
            Mutation::OldEpochEntriesMerged,
        ] {
            let n = seeds(500).len() as u64;
            println!("{m:?}: {:?}", caught_in(m, membership_changes, n));
        }
    }

    #[test]
    fn simulation_holds_invariants_with_heavy_batching() {
        run_seeds("simulation (heavy batching)", seeds(300), heavy_batching);
    }

    #[test]
    fn simulation_holds_invariants_with_heavy_batching_and_expiry() {
        run_seeds("simulation (heavy batching, expiry)", seeds(150), |f| {
            expiry(f);
            heavy_batching(f);
        });
    }

    #[test]
    fn simulation_holds_invariants_with_heavy_batching_and_eviction() {
        run_seeds("simulation (heavy batching, eviction)", seeds(150), |f| {
            heavy_batching(f);
            eviction(f);
        });
    }

    #[test]
    fn simulation_holds_invariants_with_held_partial_slots() {
        run_seeds(
            "simulation (heavy batching, held slots)",
            seeds(300),
            held_slots,
        );
    }

    /// Heavy batching with [`Config::hold_partial_slots`](crate::Config) on (off in
    /// every other profile): a leader proposes a slot that is not full only once what
    /// was in flight when its requests began to wait is committed. Half the seeds have
    /// session expiry on, so that clock entries are proposed every period whatever is
    /// in flight (what held requests must not wait for).
    fn held_slots(f: &mut Faults) {
        if f.fault_ticks.is_multiple_of(2) {
            expiry(f);
        }
        heavy_batching(f);
        f.hold_partial_slots = true;
    }

    #[test]
    fn mutant_holding_partial_slots_when_idle_is_caught() {
        // The rule's condition left out: requests that do not fill a slot wait even
        // when nothing is in flight, and the last of a burst are never proposed.
        assert_caught_by(
            Mutation::HoldsPartialSlotsWhenIdle,
            held_slots,
            50,
            "liveness",
            "liveness check",
        );
    }

    #[test]
    fn mutant_holding_behind_everything_in_flight_is_caught() {
        // `held_until` left out: requests that do not fill a slot wait until nothing
        // at all is in flight, and clock entries proposed every period keep something
        // in flight (the scripted replay is in `held_slot_review_tests.rs`).
        assert_caught_by(
            Mutation::HoldsBehindAllInFlight,
            held_slots,
            3000,
            "liveness",
            "liveness check",
        );
    }

    #[test]
    fn simulation_holds_invariants_with_pages() {
        run_seeds("simulation (pages)", seeds(300), pages);
    }

    /// Heavy batching with messages of about one batch, a lossy network and crashes:
    /// followers hold several messages' worth above a gap, so PROMISEs come in pages
    /// and new leaders re-propose much of their merge beyond NEW-VIEW.
    fn pages(f: &mut Faults) {
        heavy_batching(f);
        f.max_message_bytes = 384;
        f.crashes = true;
        f.loss = f.loss.max(0.05);
    }

    #[test]
    fn mutant_taking_a_promise_page_as_whole_is_caught() {
        assert_caught(Mutation::PromisePageTakenWhole, pages, 500);
    }

    #[test]
    fn mutant_taking_any_reply_as_the_page_asked_for_is_caught() {
        // A late or duplicated page taken for a whole PROMISE hides the entries below
        // it: found at seed 3168 of the `pages` profile (two values chosen), pinned
        // here since a search from 0 takes minutes; the review's scripted sequences in
        // `batch_tests.rs` catch it too. If a change moves this seed, find the new
        // one with `caught_in`.
        let run = |m| Sim::protocol(3168, m, pages).run();
        if let Err(v) = run(Mutation::None) {
            panic!("seed 3168: {v}");
        }
        let v = run(Mutation::PageRepliesUnchecked).expect_err("PageRepliesUnchecked not caught");
        assert!(v.what.contains("two values chosen"), "{v}");
    }

    #[test]
    fn mutant_starting_the_clock_without_the_merge_beyond_new_view_is_caught() {
        // Found at seed 2202 of `PAXOS_SIM_SEEDS=20000` of heavy batching with expiry
        // (before the fix, by the correct protocol), pinned.
        let profile = |f: &mut Faults| {
            expiry(f);
            heavy_batching(f);
        };
        let run = |m| Sim::protocol(2202, m, profile).run();
        if let Err(v) = run(Mutation::None) {
            panic!("seed 2202: {v}");
        }
        let v = run(Mutation::ClockIgnoresReadopt).expect_err("ClockIgnoresReadopt not caught");
        assert!(v.what.contains("idle sessions not expired"), "{v}");
    }

    #[test]
    fn mutant_dropping_the_merge_beyond_new_view_is_caught() {
        assert_caught(Mutation::MergeBeyondViewDropped, pages, 500);
    }

    /// Every seed batches (8 requests per slot) among many clients, and messages are
    /// small (`max_message_bytes` of a few batches): most slots carry batches, and the
    /// byte bounds (ACCEPT and FETCH-REPLY cuts, the leader's in-flight budget, the
    /// acceptor's byte window) bind all the time.
    pub(crate) fn heavy_batching(f: &mut Faults) {
        f.requests_per_slot = 8;
        f.clients = f.clients.max(6) + 2;
        f.requests_per_client = f.requests_per_client.max(15);
        f.max_message_bytes = 1024;
    }

    fn run_seeds(name: &str, seeds: Vec<u64>, tweak: fn(&mut Faults)) {
        let mut total = Stats::default();
        for &seed in &seeds {
            match Sim::protocol(seed, Mutation::None, tweak).run() {
                Ok(s) => {
                    total.steps += s.steps;
                    total.ticks += s.ticks;
                    total.delivered += s.delivered;
                    total.crashes += s.crashes;
                    total.elections += s.elections;
                    total.completed += s.completed;
                    total.reads += s.reads;
                    total.stale_reads += s.stale_reads;
                    total.learner_reads += s.learner_reads;
                    total.learner_executed += s.learner_executed;
                    total.learner_snapshots += s.learner_snapshots;
                    total.checkpoint_jobs += s.checkpoint_jobs;
                    total.transfers += s.transfers;
                    total.snapshots += s.snapshots;
                    total.snapshot_chunks += s.snapshot_chunks;
                    total.torn_crashes += s.torn_crashes;
                    total.amnesia += s.amnesia;
                    total.recoveries += s.recoveries;
                    total.pauses += s.pauses;
                    total.expired += s.expired;
                    total.clocks += s.clocks;
                    total.batches += s.batches;
                }
                Err(v) => panic!(
                    "{name}: seed {seed} failed: {v}\nreplay: PAXOS_SIM_SEED={seed} cargo test -p paxos-core sim::tests -- --nocapture"
                ),
            }
        }
        // Written to stderr directly so the counts show without `--nocapture`.
        let line = format!(
            "{name}: {} seeds, {} steps, {} ticks, {} messages, {} crashes ({} mid-round), {} new views, {} snapshots sent ({} pieces), {} checkpoint jobs, {} requests completed, {} reads ({} stale, {} by learners), {} leader transfers, {} wiped and {} recovered, {} pauses, {} expired sessions, {} clock entries, {} batches",
            seeds.len(),
            total.steps,
            total.ticks,
            total.delivered,
            total.crashes,
            total.torn_crashes,
            total.elections,
            total.snapshots,
            total.snapshot_chunks,
            total.checkpoint_jobs,
            total.completed,
            total.reads,
            total.stale_reads,
            total.learner_reads,
            total.transfers,
            total.amnesia,
            total.recoveries,
            total.pauses,
            total.expired,
            total.clocks,
            total.batches
        );
        let _ = writeln!(std::io::stderr().lock(), "{line}");
        if total.learner_executed > 0 {
            let _ = writeln!(
                std::io::stderr().lock(),
                "{name}: learners executed {} slots in all and installed {} snapshots",
                total.learner_executed,
                total.learner_snapshots
            );
        }
        assert!(
            seeds.len() < 20 || total.reads > 0,
            "{name}: no read was answered"
        );
    }

    #[test]
    fn a_seed_replays_identically() {
        let a = Sim::protocol_default(7, Mutation::None)
            .run()
            .expect("seed 7 passes");
        let b = Sim::protocol_default(7, Mutation::None)
            .run()
            .expect("seed 7 passes");
        assert_eq!((a.steps, a.ticks, a.trace), (b.steps, b.ticks, b.trace));
        let c = Sim::protocol_default(8, Mutation::None)
            .run()
            .expect("seed 8 passes");
        assert_ne!(
            a.trace, c.trace,
            "different seeds should give different runs"
        );
    }

    fn caught(m: Mutation, max_seeds: u64) -> Option<(u64, Violation)> {
        (0..max_seeds).find_map(|seed| {
            Sim::protocol_default(seed, m)
                .run()
                .err()
                .map(|v| (seed, v))
        })
    }

    /// Old leaders whose proposals arrive long after a new leader took over: three
    /// nodes, much stale traffic, crashes and partitions.
    fn dueling_leaders(f: &mut Faults) {
        f.nodes = 3;
        f.crashes = true;
        f.partitions = true;
        f.loss = f.loss.min(0.1);
        f.long_delay = 0.3;
    }

    /// Stale traffic from crashed leaders: messages held back past an election.
    fn stale_traffic(f: &mut Faults) {
        f.crashes = true;
        f.long_delay = f.long_delay.max(0.2);
    }

    /// Competing leaders among five replicas, where a quorum is three.
    fn five_dueling_leaders(f: &mut Faults) {
        dueling_leaders(f);
        f.nodes = 5;
    }

    /// Leaders paused for long stretches that resume believing they still lead, with
    /// skewed clocks and long one-way delays, among five replicas.
    fn stale_leaders(f: &mut Faults) {
        f.nodes = 5;
        f.selective = true;
        f.pauses = true;
        f.skew = true;
        f.partitions = true;
        f.one_way = true;
        f.long_delay = f.long_delay.max(0.1);
        f.loss = f.loss.min(0.15);
    }

    /// Restarts that lose the replica's storage, within the fault bound.
    fn amnesia(f: &mut Faults) {
        f.crashes = true;
        f.amnesia = true;
    }

    /// More clients than sessions: every run evicts.
    fn eviction(f: &mut Faults) {
        f.clients = f.clients.max(4);
        f.max_sessions = f.clients - 1;
        f.requests_per_client = f.requests_per_client.max(10);
        // Late duplicates of registrations and retries.
        f.duplicate = f.duplicate.max(0.2);
        f.long_delay = f.long_delay.max(0.1);
    }

    /// Session expiry on, with time-to-lives of 30 to 150 ticks and a clock entry every
    /// 5 to 20 ticks (varied with the drawn fault span), among three or five replicas
    /// with the drawn faults plus crashes: sessions expire while their clients wait out
    /// lost requests, stale leaders, crashes and pauses, and after they finish.
    pub(crate) fn expiry(f: &mut Faults) {
        f.session_ttl = 30 + f.fault_ticks % 121;
        f.session_clock = 5 + f.fault_ticks % 16;
        f.crashes = true;
        f.requests_per_client = f.requests_per_client.max(10);
        // The TTL check holds where only expiry drops sessions.
        f.max_sessions = 1024;
    }

    fn caught_in(
        m: Mutation,
        profile: fn(&mut Faults),
        max_seeds: u64,
    ) -> Option<(u64, Violation)> {
        (0..max_seeds).find_map(|seed| {
            Sim::protocol(seed, m, profile)
                .run()
                .err()
                .map(|v| (seed, v))
        })
    }

    fn assert_caught(m: Mutation, profile: fn(&mut Faults), max_seeds: u64) {
        let found = caught_in(m, profile, max_seeds);
        assert!(found.is_some(), "the simulation did not catch {m:?}");
        println!("{m:?} caught at seed {found:?}");
    }

    /// Like [`assert_caught`], and the violation found must be the one `check` (its
    /// name) reports: its text contains `what`.
    fn assert_caught_by(
        m: Mutation,
        profile: fn(&mut Faults),
        max_seeds: u64,
        what: &str,
        check: &str,
    ) {
        let found = caught_in(m, profile, max_seeds);
        let (seed, v) = found.unwrap_or_else(|| panic!("the simulation did not catch {m:?}"));
        assert!(
            v.what.contains(what),
            "seed {seed}: caught, but not by the {check}: {v}"
        );
        println!("{m:?} caught at seed {seed}: {v}");
    }

    /// Replicas that batch their inputs and often crash in the middle of a round, after
    /// what waits for nothing has left and before all the writes are durable.
    fn torn_rounds(f: &mut Faults) {
        f.crashes = true;
        f.batch_inputs = true;
        f.torn_crash = 0.03;
    }

    /// Crashes only, no partitions: a replica is often down while the rest could serve.
    pub(crate) fn crashes_only(f: &mut Faults) {
        f.crashes = true;
        f.partitions = false;
        f.selective = false;
        f.pauses = false;
        f.amnesia = false;
        // Down for longer than the liveness window: the others must carry on.
        f.downtime = 2_000;
        f.fault_ticks = f.fault_ticks.max(3_000);
    }

    #[test]
    fn mutant_needing_every_prevote_is_caught_by_the_liveness_check() {
        let found = caught_in(Mutation::PreVoteNeedsEveryone, crashes_only, 300);
        let (seed, v) = found.expect("the simulation did not catch pre-votes needing everyone");
        assert!(
            v.what.contains("up and connected"),
            "seed {seed}: caught, but not by the liveness check during faults: {v}"
        );
    }

    #[test]
    fn mutant_voting_after_amnesia_is_caught() {
        assert_caught(Mutation::AmnesiaVotesAtOnce, amnesia, 500);
    }

    #[test]
    fn mutant_with_client_chosen_session_ids_is_caught() {
        assert_caught(Mutation::ClientChosenSessionIds, eviction, 1000);
    }

    #[test]
    fn mutant_garbling_cached_replies_is_caught() {
        assert_caught(Mutation::GarbledCachedReply, stale_traffic, 300);
    }

    #[test]
    fn mutant_executing_expired_sessions_is_caught() {
        assert_caught(Mutation::ExpiredSessionExecutes, eviction, 500);
    }

    #[test]
    fn mutant_taking_any_ballot_below_a_commit_point_is_caught() {
        // Seeds 18 and 2 when this was written: the rule is exercised all the time.
        assert_caught(Mutation::CommitPointAnyBallot, dueling_leaders, 500);
        assert_caught(Mutation::CommitPointAnyBallot, five_dueling_leaders, 500);
    }

    #[test]
    fn mutant_sending_votes_before_their_writes_is_caught() {
        // Seed 851 when this was written (two values chosen in one slot: a counted
        // ACCEPTED whose accept was lost in the crash); seed 1 since the PROMISE is
        // checked as it leaves.
        assert_caught(Mutation::VotesLeaveEarly, torn_rounds, 1500);
    }

    #[test]
    fn mutant_sending_promises_before_their_writes_is_caught() {
        // Caught when the PROMISE leaves, by the check that the sender durably holds
        // the promise, with three replicas and with five. (Only a round cut short by a
        // crash shows it: otherwise the simulation puts a round's messages on the
        // network once all its writes are made.)
        let what = "while its storage holds a promise of";
        let check = "vouched-promise check";
        assert_caught_by(Mutation::PromisesLeaveEarly, torn_rounds, 100, what, check);
        assert_caught_by(
            Mutation::PromisesLeaveEarly,
            |f| {
                torn_rounds(f);
                f.nodes = 5;
            },
            100,
            what,
            check,
        );
    }

    #[test]
    fn mutant_executing_batched_duplicates_is_caught() {
        assert_caught(Mutation::BatchedDuplicatesExecute, stale_traffic, 1000);
        assert_caught(Mutation::BatchedDuplicatesExecute, heavy_batching, 300);
    }

    #[test]
    fn mutant_executing_requests_of_expired_sessions_is_caught() {
        // The same broken rule as above, reached through expiry instead of eviction.
        assert_caught(Mutation::ExpiredSessionExecutes, expiry, 500);
    }

    #[test]
    fn mutant_expiring_sessions_by_the_replicas_own_clock_is_caught() {
        // Replicas whose clocks differ drop different sessions, then execute different
        // requests: caught as diverging executed histories or outputs.
        assert_caught(Mutation::ExpiryOnLocalClock, expiry, 500);
    }

    #[test]
    fn mutant_running_log_time_ahead_is_caught_by_the_time_to_live_check() {
        // Every replica agrees, so only the check that sessions live their
        // time-to-live sees that they were dropped too soon.
        assert_caught_by(
            Mutation::ClockTimeAdded,
            expiry,
            500,
            "within its time-to-live",
            "time-to-live check",
        );
    }

    #[test]
    fn mutant_proposing_clock_steps_beyond_the_window_is_caught() {
        // A leader's own vote beyond its acceptance window counts towards a quorum
        // that a later candidate cannot see (it drops PROMISE entries past the
        // promiser's window): found at seed 5523 of `PAXOS_SIM_SEEDS=20000` of heavy
        // batching with expiry, where a new leader's opening clock step went beyond
        // its window and a later leader chose another step in the same slot; since
        // PROMISE and NEW-VIEW pages moved that profile's runs, seed 15732 (two clock
        // steps chosen in one slot). Replayed here, pinned (a search takes minutes):
        // if a change to the simulation moves this seed, find the new one with
        // `caught_in` over 20,000 seeds.
        let profile = |f: &mut Faults| {
            expiry(f);
            heavy_batching(f);
        };
        let run = |m| Sim::protocol(15732, m, profile).run();
        if let Err(v) = run(Mutation::None) {
            panic!("seed 15732: {v}");
        }
        let v = run(Mutation::ClockBeyondWindow).expect_err("ClockBeyondWindow not caught");
        assert!(v.what.contains("two values chosen"), "{v}");
    }

    #[test]
    fn mutant_starting_a_leaders_clock_off_the_chain_is_caught() {
        assert_caught_by(
            Mutation::LeaderClockFromExecuted,
            expiry,
            500,
            "not expired",
            "expiry liveness check",
        );
    }

    #[test]
    fn mutant_deferring_every_write_of_a_round_with_a_commit_point_is_caught() {
        // The guard of `Replica::write_commit_point` left out: an ACCEPT that carries a
        // commit point is acknowledged before its accept is stored. Caught by the check
        // that every ACCEPTED is backed by its sender's durable state when it leaves
        // (before that check, random search found it only by its effects on liveness,
        // or not at all; the scripted replay in `torn_round_tests.rs` shows the
        // acknowledged write it loses). With three replicas and with five.
        let what = "without holding it durably";
        let check = "vouched-accept check";
        assert_caught_by(
            Mutation::DeferRoundsWithCommits,
            torn_rounds,
            100,
            what,
            check,
        );
        assert_caught_by(
            Mutation::DeferRoundsWithCommits,
            five_dueling_leaders,
            100,
            what,
            check,
        );
    }

    #[test]
    fn mutant_with_quorums_of_two_is_caught_with_five_replicas() {
        assert_caught(Mutation::QuorumOfTwo, five_dueling_leaders, 500);
    }

    // `SupersededLeaderAnnounces` and `AckChosenBlindly` are caught by the scripted
    // replays in `scenarios.rs`; random search has not reached them yet (more than
    // 10,000 seeds of targeted profiles).

    #[test]
    fn mutant_ignoring_promised_values_is_caught() {
        let found = caught(Mutation::IgnorePromisedValues, 300);
        assert!(
            found.is_some(),
            "simulation did not catch a leader that ignores promises"
        );
        println!("caught at seed {:?}", found);
    }

    #[test]
    fn mutant_accepting_below_promise_is_caught() {
        let found = (0..1000).find_map(|seed| {
            Sim::protocol(seed, Mutation::AcceptBelowPromise, dueling_leaders)
                .run()
                .err()
                .map(|v| (seed, v))
        });
        assert!(
            found.is_some(),
            "simulation did not catch an acceptor accepting below its promise"
        );
        println!("caught at seed {:?}", found);
    }

    #[test]
    fn mutant_with_leader_local_sessions_is_caught() {
        let found = caught(Mutation::LeaderLocalSessions, 300);
        assert!(
            found.is_some(),
            "simulation did not catch leader-local sessions"
        );
        println!("caught at seed {:?}", found);
    }

    #[test]
    fn mutant_skipping_gaps_is_caught() {
        let found = caught(Mutation::SkipGaps, 300);
        assert!(
            found.is_some(),
            "simulation did not catch execution skipping a gap"
        );
        println!("caught at seed {:?}", found);
    }

    #[test]
    fn mutant_preferring_lowest_ballot_is_caught() {
        // Rare: seed 1311 (and 1891 among the seeds that batch requests) when batches
        // came in; the seed below 1000 that caught it before batches changed its run.
        let found = (0..3000).find_map(|seed| {
            Sim::protocol(seed, Mutation::LowestBallotWins, dueling_leaders)
                .run()
                .err()
                .map(|v| (seed, v))
        });
        assert!(
            found.is_some(),
            "simulation did not catch a merge that prefers the lowest ballot"
        );
        println!("caught at seed {:?}", found);
    }

    #[test]
    fn mutant_checkpointing_without_sessions_is_caught() {
        let found = (0..300).find_map(|seed| {
            Sim::protocol(seed, Mutation::CheckpointWithoutSessions, stale_traffic)
                .run()
                .err()
                .map(|v| (seed, v))
        });
        assert!(
            found.is_some(),
            "simulation did not catch checkpoints that drop the session table"
        );
        println!("caught at seed {:?}", found);
    }

    #[test]
    fn mutant_installing_a_restarted_snapshot_under_its_old_slot_is_caught() {
        // Senders move to newer checkpoints while pieces of the older one are still in
        // flight; a receiver that installs the new state under the old slot executes
        // the slots in between a second time.
        // Found by random search (seed 209 of this profile when written, about one seed
        // in 500 of most profiles): a divergence of executed histories.
        assert_caught(Mutation::SnapshotRestartKeepsOldSlot, eviction, 1500);
    }

    #[test]
    fn mutant_resuming_snapshots_at_the_wrong_offset_is_caught_by_the_catch_up_check() {
        // No transfer of more than one piece completes: the replica behind stays
        // behind while the others serve, which only the check that every replica
        // catches up after healing sees.
        let found = caught_in(Mutation::SnapshotResumeSkipsAByte, crashes_only, 300);
        let (seed, v) = found.expect("the simulation did not catch a resume at the wrong offset");
        assert!(
            v.what.contains("behind at commit point"),
            "seed {seed}: caught, but not by the catch-up check: {v}"
        );
    }

    #[test]
    fn mutant_reading_without_confirmation_is_caught() {
        // A leader cut off with a follower keeps answering reads from its own state
        // while a new majority commits writes: stale reads.
        assert_caught(Mutation::ReadWithoutConfirmation, stale_leaders, 2000);
    }

    #[test]
    fn mutant_reading_before_the_read_point_is_caught() {
        // A new leader that answers before executing what its predecessor had chosen.
        // Found by random search at seed 812 of this profile when written; the scripted
        // replay in `read_tests.rs` reaches it on every run.
        assert_caught(Mutation::ReadBeforeReadPoint, stale_leaders, 3000);
    }

    #[test]
    fn mutant_storing_a_deferred_checkpoint_at_the_wrong_slot_is_caught() {
        // A checkpoint finished off the replica's thread, stored under the slot the
        // replica had reached when it came back: the slots in between are lost to
        // whoever restarts or catches up from it.
        assert_caught(Mutation::CheckpointAtCompletion, crashes_only, 500);
    }

    #[test]
    fn mutant_storage_writing_installed_checkpoints_late_is_caught() {
        // The relaxation `FileStorage` takes (a checkpoint the log covers is written
        // after `persist` returns) taken for every checkpoint: a replica that installed
        // one from a peer and crashes before it is written restarts with a commit point
        // above slots it has nowhere.
        assert_caught(Mutation::LateInstalledCheckpoint, eviction, 2000);
    }

    #[test]
    fn mutant_stale_reads_naming_the_wrong_slot_are_caught() {
        assert_caught_by(
            Mutation::StaleReadMisreportsSlot,
            stale_leaders,
            2000,
            "said it read the state after",
            "check of a stale answer's slot against the replicas' executions",
        );
    }

    #[test]
    fn mutant_stale_reads_ignoring_their_floor_are_caught() {
        // A client's stale read lands on a replica that lags (cut off, or restarted
        // behind) after another answered it from further ahead: without the floor its
        // reads go back in time.
        assert_caught_by(
            Mutation::StaleReadIgnoresFloor,
            stale_leaders,
            2000,
            "went back in time",
            "per-client monotonic stale-read check",
        );
    }
}
