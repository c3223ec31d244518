//! The running totals a replica keeps about itself, for metrics.

use serde::{Deserialize, Serialize};

/// Running totals a replica keeps about itself since it started, for metrics.
///
/// They live in memory only (a restart starts them at zero) and only ever grow. Keeping
/// them draws no randomness and changes no output: a driver reads them with
/// [`Replica::counters`](crate::Replica::counters) and publishes them as it likes (the tokio driver does, through
/// the `metrics` facade, when the `runtime` feature is on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Counters {
    /// Client requests (registrations included) this replica proposed as leader.
    pub proposals: u64,
    /// ACCEPT batches this replica sent as leader (one per batch, however many peers
    /// it went to).
    pub accept_batches: u64,
    /// Entries in those batches (`accept_entries / accept_batches` is the mean batch).
    pub accept_entries: u64,
    /// Pre-votes this replica started (an election timeout expired).
    pub prevotes_started: u64,
    /// Elections (phase 1 at a new ballot) this replica started.
    pub elections_started: u64,
    /// Elections this replica won (it became leader and sent NEW-VIEW).
    pub elections_won: u64,
    /// Times this replica came to believe in a new leader (itself included); losing a
    /// leader without knowing the next one does not count.
    pub leader_changes: u64,
    /// Snapshots this replica sent to peers too far behind for the log (state transfer).
    pub snapshots_sent: u64,
    /// Snapshots received from peers that this replica installed.
    pub snapshots_installed: u64,
    /// Checkpoints this replica took of its own state.
    pub checkpoints_taken: u64,
    /// Client sessions this replica dropped for being idle past their time-to-live
    /// (executing clock entries; see [`Sessions`](crate::Sessions)). Every replica
    /// drops the same ones; a replica that installed a snapshot did not count those
    /// the snapshot covers.
    pub sessions_expired: u64,
    /// Clock entries ([`Value::ClockStep`](crate::Value::ClockStep)) this replica
    /// proposed as leader (not counted in `proposals`).
    pub clocks_proposed: u64,
    /// Clock steps this replica executed without effect because they did not start
    /// at the log time (a deposed leader's steps, placed behind entries it never
    /// saw): see [`Value::ClockStep`](crate::Value::ClockStep).
    pub clock_steps_ignored: u64,
    /// Slots this replica proposed as leader that carry a batch of several requests
    /// ([`Value::Batch`](crate::Value::Batch)); their requests count in `proposals`.
    pub batched_slots: u64,
    /// Membership changes this replica went through: stop-signs it executed, and
    /// checkpoints of a later configuration it installed (see
    /// [`Replica::reconfigure`](crate::Replica::reconfigure)).
    pub membership_changes: u64,
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use crate::scripted::{all, Scripted};
    use crate::NodeId;

    /// Lets every replica stop believing in its leader (leader stickiness would refuse
    /// a new candidate), with every message lost meanwhile.
    fn silence(h: &mut Scripted) {
        h.tick_if(&[1, 2, 3], 45, &|_, _, _| false);
    }

    /// A three-replica cluster where n1 won an election and every replica follows it.
    fn n1_leads() -> Scripted {
        let mut h = Scripted::new(3, true, |_| {});
        h.r(1).start_election_now();
        h.run(&all);
        assert!(h.r(1).is_leader());
        h
    }

    #[test]
    fn counters_follow_elections_proposals_and_leader_changes() {
        let mut h = n1_leads();
        let c1 = h.r(1).counters();
        assert_eq!(c1.elections_started, 1);
        assert_eq!(c1.elections_won, 1);
        assert_eq!(c1.leader_changes, 1, "n1 came to believe in itself");
        for id in [2, 3] {
            let c = h.r(id).counters();
            assert_eq!(c.elections_started, 0);
            assert_eq!(c.leader_changes, 1, "n{id} adopted n1");
        }

        for client in 1..=5 {
            h.register(1, client);
        }
        h.run(&all);
        let c1 = h.r(1).counters();
        assert_eq!(c1.proposals, 5);
        assert_eq!(
            c1.accept_batches, 1,
            "five requests fed together: one batch"
        );
        assert_eq!(c1.accept_entries, 5);
        assert_eq!(h.r(2).counters().proposals, 0, "followers propose nothing");
        assert_eq!(h.r(1).awaiting_replies(), 0);
        assert_eq!(h.r(1).queued_requests(), 0);

        // n2 takes over: everyone sees a second leader change.
        silence(&mut h);
        assert!(h.r(2).counters().prevotes_started > 0);
        h.r(2).start_election_now();
        h.run(&all);
        assert!(h.r(2).is_leader());
        let c2 = h.r(2).counters();
        assert_eq!((c2.elections_started, c2.elections_won), (1, 1));
        for id in [1, 2, 3] {
            assert_eq!(h.r(id).counters().leader_changes, 2, "n{id}");
        }
        assert_eq!(h.r(1).counters().elections_won, 1, "totals never go back");
    }

    /// The counters are statistics only: the replica's outputs do not depend on them,
    /// and counting never goes through the seeded generator.
    #[test]
    fn counting_leaves_status_unchanged() {
        let mut h = n1_leads();
        let status = h.r(1).status();
        let _ = h.r(1).counters();
        assert_eq!(h.r(1).status(), status);
        assert!(h.drain().is_empty());
    }

    /// A `tracing` writer that keeps what it is given.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines().map(str::to_owned).collect()
        }
    }

    fn capture_info(f: impl FnOnce()) -> Vec<String> {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        out.lines()
    }

    fn find<'a>(lines: &'a [String], node: NodeId, words: &[&str]) -> Option<&'a String> {
        let node = format!("node={node}");
        lines.iter().find(|l| {
            l.contains(" INFO ") && l.contains(&node) && words.iter().all(|w| l.contains(w))
        })
    }

    #[test]
    fn elections_and_leader_changes_log_an_info_line_with_old_and_new_leader() {
        let mut h = n1_leads();
        let lines = capture_info(|| {
            silence(&mut h);
            h.r(2).start_election_now();
            h.run(&all);
        });
        assert!(h.r(2).is_leader());
        let shown = lines.join("\n");
        let start = find(
            &lines,
            2,
            &["starting an election", "old_leader=1", "ballot=(2, n2)"],
        );
        assert!(start.is_some(), "no election line in:\n{shown}");
        assert!(
            find(
                &lines,
                2,
                &["leader changed", "old_leader=1", "new_leader=none"]
            )
            .is_some(),
            "n2 forgetting n1 not logged in:\n{shown}"
        );
        assert!(
            find(&lines, 2, &["elected leader", "ballot=(2, n2)"]).is_some(),
            "no elected line in:\n{shown}"
        );
        assert!(
            find(
                &lines,
                2,
                &["leader changed", "old_leader=none", "new_leader=2"]
            )
            .is_some(),
            "n2 becoming leader not logged in:\n{shown}"
        );
        // n1 stepped down during the silence (no majority heard) and n3 forgot n1 when
        // n2's PREPARE came: both lines name the old leader, then the new one.
        for id in [1, 3] {
            assert!(
                find(
                    &lines,
                    id,
                    &["leader changed", "old_leader=1", "new_leader=none"]
                )
                .is_some(),
                "n{id} losing n1 not logged in:\n{shown}"
            );
            assert!(
                find(
                    &lines,
                    id,
                    &["leader changed", "old_leader=none", "new_leader=2"]
                )
                .is_some(),
                "n{id} adopting n2 not logged in:\n{shown}"
            );
        }

        // A steady leader logs nothing at info.
        let quiet = capture_info(|| {
            h.tick(&[1, 2, 3], 30, &all);
            h.register(2, 9);
            h.run(&all);
        });
        assert!(
            !quiet
                .iter()
                .any(|l| l.contains("leader changed") || l.contains("election")),
            "unexpected lines: {quiet:?}"
        );
    }
}
