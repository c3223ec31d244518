//! The checkers: safety after every step, linearizability and the model at the end, liveness.

use super::*;

impl<W: Workload> Sim<W> {
    pub(super) fn observe_persist(
        &mut self,
        node: NodeId,
        op: &PersistOp,
    ) -> Result<(), Violation> {
        match op {
            PersistOp::Accept {
                slot,
                ballot,
                value,
            } => {
                let entry = self
                    .accepts
                    .entry((*slot, *ballot))
                    .or_insert_with(|| (value.clone(), HashSet::new()));
                if entry.0 != *value {
                    return Err(self.violation(format!(
                        "two values proposed in slot {slot} at ballot {ballot}"
                    )));
                }
                // The proposer vouches for its own proposal by storing it; acceptors
                // by sending ACCEPTED (a recovering replica stores entries it heard
                // of without vouching for them).
                if ballot.node == node {
                    self.vote(node, *slot, *ballot)?;
                }
            }
            PersistOp::Learn { slot, value } => {
                if let Some(c) = self.chosen.get(slot) {
                    if c != value {
                        return Err(self.violation(format!(
                            "node {node} learned {} in slot {slot} but {} was chosen",
                            value.summary(),
                            c.summary()
                        )));
                    }
                }
            }
            PersistOp::Promise(_)
            | PersistOp::CommitPoint(_)
            | PersistOp::Checkpoint(_)
            | PersistOp::Compact(_)
            | PersistOp::Status { .. }
            | PersistOp::PeerIncarnation { .. } => {}
        }
        Ok(())
    }

    /// `node` vouched for the proposal in `slot` at `ballot`: a majority of vouchers
    /// chooses it.
    pub(super) fn vote(
        &mut self,
        node: NodeId,
        slot: Slot,
        ballot: Ballot,
    ) -> Result<(), Violation> {
        let epoch = ballot.epoch();
        let Some(members) = self.epochs.get(epoch as usize).cloned() else {
            return Err(self.violation(format!(
                "node {node} vouched for slot {slot} at {ballot}, of epoch {epoch}, which \
                 no chosen stop-sign started"
            )));
        };
        let quorum = members.len() / 2 + 1;
        let Some(entry) = self.accepts.get_mut(&(slot, ballot)) else {
            return Ok(());
        };
        entry.1.insert(node);
        // Only the epoch's members count (an acceptor votes on ballots, whoever it is).
        if entry.1.iter().filter(|n| members.contains(n)).count() >= quorum {
            let v = entry.0.clone();
            if self.chosen_epoch.insert(slot, epoch).is_none() {
                self.check_epoch_of(slot, epoch)?;
            }
            self.chose(slot, v, "an accept quorum")?;
        }
        Ok(())
    }

    /// Each slot is decided in one epoch: nothing chosen in epoch `k` above the
    /// stop-sign that ended it, nor in a later epoch at or below it.
    fn check_epoch_of(&self, slot: Slot, epoch: u64) -> Result<(), Violation> {
        if let Some(&s) = self.stop_signs.get(epoch as usize) {
            if slot > s {
                return Err(self.violation(format!(
                    "slot {slot} chosen in epoch {epoch}, above the stop-sign in slot {s} \
                     that ended it"
                )));
            }
        }
        if let Some(&s) = epoch
            .checked_sub(1)
            .and_then(|e| self.stop_signs.get(e as usize))
        {
            if slot <= s {
                return Err(self.violation(format!(
                    "slot {slot} chosen in epoch {epoch}, at or below the stop-sign in slot \
                     {s} that started it"
                )));
            }
        }
        Ok(())
    }

    /// Follows the chosen log in slot order (as far as it is chosen without a gap) and
    /// records each configuration a stop-sign starts, as every replica executes them.
    fn scan_epochs(&mut self) -> Result<(), Violation> {
        while let Some(v) = self.chosen.get(&self.epochs_scanned) {
            let slot = self.epochs_scanned;
            self.epochs_scanned += 1;
            let Value::Reconfigure(m) = v else {
                continue;
            };
            if m.epoch as usize != self.epochs.len() || m.validate().is_err() {
                continue; // executes as a no-op
            }
            let ids = m.ids();
            self.epochs.push(ids.clone());
            self.stop_signs.push(slot);
            self.stats.epochs = m.epoch;
            let ended = m.epoch - 1;
            if let Some((t, _)) = self
                .chosen_epoch
                .iter()
                .find(|(t, e)| (**e == ended && **t > slot) || (**e > ended && **t <= slot))
            {
                return Err(self.violation(format!(
                    "the stop-sign of epoch {ended} is chosen in slot {slot}, but slot {t} \
                     was chosen in epoch {}",
                    self.chosen_epoch[t]
                )));
            }
            self.quorum = ids.len() / 2 + 1;
            self.learners = self
                .members
                .iter()
                .chain(&self.learners)
                .copied()
                .filter(|id| !ids.contains(id))
                .collect();
            self.learners.sort_unstable();
            self.members = ids;
            self.asked_members = None;
        }
        Ok(())
    }

    /// A reply must be what the cluster executed for that request: the recording
    /// machine answers with the position at which it applied the command.
    pub(super) fn check_reply(
        &mut self,
        client: ClientId,
        seq: u64,
        bytes: &Bytes,
    ) -> Result<(), Violation> {
        let Some(&pos) = self.history_pos.get(&(client, seq)) else {
            return Err(self.violation(format!(
                "client {client} got a reply for #{seq}, which no replica executed"
            )));
        };
        let reported = postcard::from_bytes::<(u64, Out<W>)>(bytes);
        // Exactly the bytes of that answer: postcard ignores trailing bytes.
        let output = match reported {
            Ok((p, output))
                if p == pos as u64
                    && postcard::to_allocvec(&(p, &output)).is_ok_and(|e| e[..] == bytes[..]) =>
            {
                output
            }
            _ => {
                return Err(self.violation(format!(
                    "client {client} got {bytes:?} for #{seq}, executed at position {pos}"
                )))
            }
        };
        self.outputs.entry((client, seq)).or_insert(output);
        let now = self.now;
        if let Some(op) = self.ops.get_mut(&(client, seq)) {
            if op.ret.is_none() {
                op.ret = Some(now);
                op.pos = Some(pos as u64);
            }
        }
        Ok(())
    }

    /// Linearizability of what clients saw, against the sequential Recorder (an
    /// append-only log whose output is the position): every executed request comes
    /// after every request that had completed before it was first sent.
    pub(super) fn check_real_time_order(&self) -> Result<(), Violation> {
        // What the clients saw alone, checked by the reusable checker: completed
        // requests with the positions their replies reported, the rest pending.
        let mut keys: Vec<&(ClientId, u64)> = self.ops.keys().collect();
        keys.sort_unstable();
        let seen: Vec<Operation<(ClientId, u64), u64>> = keys
            .iter()
            .map(|k| {
                let o = self.ops[*k];
                match (o.ret, o.pos) {
                    (Some(ret), Some(pos)) => Operation::completed(o.call, ret, **k, pos),
                    _ => Operation::pending(o.call, **k),
                }
            })
            .collect();
        if let Err(e) = AppendLog::check_fast(&seen) {
            return Err(self.violation(format!("the clients' history is not linearizable: {e}")));
        }
        // And with the cluster's knowledge: requests whose outcome the client never
        // learned still come after everything that completed before they were sent.
        let mut done: Vec<(u64, u64)> = self
            .ops
            .values()
            .filter_map(|o| Some((o.ret?, o.pos?)))
            .collect();
        done.sort_unstable();
        let mut calls: Vec<(u64, usize, ClientId, u64)> = self
            .ops
            .iter()
            .filter_map(|(k, o)| Some((o.call, *self.history_pos.get(k)?, k.0, k.1)))
            .collect();
        calls.sort_unstable();
        let mut j = 0;
        let mut latest: Option<u64> = None;
        for (call, pos, client, seq) in calls {
            while j < done.len() && done[j].0 < call {
                latest = latest.max(Some(done[j].1));
                j += 1;
            }
            if let Some(l) = latest {
                if l >= pos as u64 {
                    return Err(self.violation(format!(
                        "not linearizable: c{client}#{seq}, sent at tick {call}, executed at \
                         position {pos}, before a request that had completed at position {l}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The workload's sequential model, replayed in the order the cluster executed the
    /// commands, must give every completed request the output its client saw; and the
    /// clients' history alone (commands, outputs, call and return ticks) must be
    /// linearizable against the model (the WGL search, within a budget: an
    /// inconclusive search is not a failure, the replay above has decided already).
    pub(super) fn check_model(&self) -> Result<(), Violation> {
        let model = self.workload.model();
        let mut state = model.init();
        for (pos, key) in self.history.iter().enumerate() {
            let Some(command) = self.commands.get(key) else {
                return Err(self.violation(format!(
                    "c{}#{} was executed at position {pos} but no client sent it",
                    key.0, key.1
                )));
            };
            let (next, expected) = model.step(&state, command);
            state = next;
            if let Some(got) = self.outputs.get(key) {
                if *got != expected {
                    return Err(self.violation(format!(
                        "c{}#{} ({command:?}) executed at position {pos} returned {got:?}; \
                         the model, replaying the executed order, says {expected:?}",
                        key.0, key.1
                    )));
                }
            }
        }
        let mut keys: Vec<&(ClientId, u64)> = self.ops.keys().collect();
        keys.sort_unstable();
        let mut seen = Vec::with_capacity(keys.len());
        for k in keys {
            let Some(command) = self.commands.get(k) else {
                continue;
            };
            let o = self.ops[k];
            seen.push(match (o.ret, self.outputs.get(k)) {
                (Some(ret), Some(out)) => {
                    Operation::completed(o.call, ret, command.clone(), out.clone())
                }
                _ => Operation::pending(o.call, command.clone()),
            });
        }
        match check_with_budget(&model, &seen, MODEL_CHECK_BUDGET) {
            Ok(()) | Err(CheckError::Inconclusive { .. }) => Ok(()),
            Err(CheckError::NotLinearizable(c)) => Err(self.violation(format!(
                "the clients' history is not linearizable against the model: {}",
                c.describe(&seen)
            ))),
            Err(e) => Err(self.violation(format!("the clients' history is malformed: {e}"))),
        }
    }

    /// Reads: each answered read saw the state after the first `p` executed commands
    /// (`p` is what it reports). Linearizable when `p` covers every write completed
    /// before the read was sent, holds nothing sent after it returned, is no less than
    /// what any read that returned before it was sent saw, and the output is the
    /// model's for that state. Stale reads need only the last: the output is the
    /// model's after `p` commands, `p` holds nothing sent after the read returned, and
    /// a client's stale reads never see fewer commands than its previous ones.
    pub(super) fn check_reads(&self) -> Result<(), Violation> {
        let all: Vec<(usize, u64, u64, u64)> = self
            .reads
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((i, r.call, r.ret?, r.seen.as_ref()?.0)))
            .collect();
        if all.is_empty() {
            return Ok(());
        }
        // A client's stale reads, in the order it made them (one at a time).
        let mut last_stale: HashMap<usize, (u64, usize)> = HashMap::new();
        for &(i, _, _, p) in &all {
            let Some((_, c)) = self.reads[i].stale else {
                continue;
            };
            if let Some((before, earlier)) = last_stale.insert(c, (p, i)) {
                if p < before {
                    return Err(self.violation(format!(
                        "stale read {} saw {p} commands after the same client's stale read \
                         {} had seen {before}: its reads went back in time",
                        self.reads[i].nonce, self.reads[earlier].nonce
                    )));
                }
            }
        }
        let done: Vec<(usize, u64, u64, u64)> = all
            .iter()
            .copied()
            .filter(|&(i, ..)| self.reads[i].stale.is_none())
            .collect();
        let executed = self.history.len() as u64;
        // Completed writes by return time, with their positions.
        let mut writes: Vec<(u64, u64)> = self
            .ops
            .values()
            .filter_map(|o| Some((o.ret?, o.pos?)))
            .collect();
        writes.sort_unstable();
        // The latest first-send time among the commands at positions below each prefix.
        let mut latest_call = Vec::with_capacity(self.history.len() + 1);
        latest_call.push(0u64);
        for key in &self.history {
            let call = self.ops.get(key).map_or(0, |o| o.call);
            let prev = *latest_call.last().unwrap_or(&0);
            latest_call.push(prev.max(call));
        }
        for &(i, call, ret, p) in &all {
            let r = &self.reads[i];
            if p > executed {
                return Err(self.violation(format!(
                    "read {} saw {p} commands executed; only {executed} ever were",
                    r.nonce
                )));
            }
            if r.stale.is_none() {
                // Writes completed before the read was sent.
                let before = writes.partition_point(|(wret, _)| *wret < call);
                if let Some((_, pos)) = writes[..before].iter().max_by_key(|(_, pos)| *pos) {
                    if *pos >= p {
                        return Err(self.violation(format!(
                            "stale read: read {} (sent at tick {call}) saw {p} commands, but the \
                         write at position {pos} had completed before it was sent",
                            r.nonce
                        )));
                    }
                }
            }
            if latest_call[p as usize] > ret {
                return Err(self.violation(format!(
                    "read {} returned at tick {ret} yet saw a command sent at tick {}",
                    r.nonce, latest_call[p as usize]
                )));
            }
        }
        // Reads in real-time order see no less than earlier reads.
        let mut by_ret: Vec<(u64, u64, usize)> = done.iter().map(|d| (d.2, d.3, d.0)).collect();
        by_ret.sort_unstable();
        let mut by_call: Vec<(u64, u64, usize)> = done.iter().map(|d| (d.1, d.3, d.0)).collect();
        by_call.sort_unstable();
        let mut j = 0;
        let mut max_seen: Option<(u64, usize)> = None;
        for (call, p, i) in by_call {
            while j < by_ret.len() && by_ret[j].0 < call {
                if max_seen.is_none_or(|(m, _)| by_ret[j].1 > m) {
                    max_seen = Some((by_ret[j].1, by_ret[j].2));
                }
                j += 1;
            }
            if let Some((m, earlier)) = max_seen {
                if p < m {
                    return Err(self.violation(format!(
                        "read {} saw {p} commands after read {} had returned having seen {m}",
                        self.reads[i].nonce, self.reads[earlier].nonce
                    )));
                }
            }
        }
        // The model, replayed along the executed order, gives each read its output.
        let model = self.workload.model();
        let mut order: Vec<(u64, usize)> = all.iter().map(|d| (d.3, d.0)).collect();
        order.sort_unstable();
        let mut state = model.init();
        let mut applied = 0u64;
        for (p, i) in order {
            while applied < p {
                let key = &self.history[applied as usize];
                let Some(command) = self.commands.get(key) else {
                    return Ok(()); // reported by check_model
                };
                state = model.step(&state, command).0;
                applied += 1;
            }
            let r = &self.reads[i];
            let expected = model.step(&state, &r.command).1;
            let Some((_, got)) = &r.seen else { continue };
            if *got != expected {
                return Err(self.violation(format!(
                    "read {} ({:?}) after {p} commands returned {got:?}; the model says \
                     {expected:?}",
                    r.nonce, r.command
                )));
            }
        }
        Ok(())
    }

    /// Each replica's state in one line, for liveness reports.
    pub(super) fn describe_nodes(&self) -> String {
        let mut out = Vec::new();
        for n in &self.nodes {
            match &n.replica {
                None => out.push(format!("n{} down", n.id)),
                Some(r) => {
                    let st = r.status();
                    out.push(format!(
                        "n{} {:?}/{:?} promised {} leader {:?} commit {} known {} paused {}",
                        n.id,
                        st.acceptor,
                        st.role,
                        st.promised,
                        st.leader,
                        st.commit_point,
                        st.log_end,
                        n.paused_until > self.now
                    ))
                }
            }
        }
        for c in &self.clients {
            if c.remaining > 0 {
                out.push(format!(
                    "client nonce {} session {} registered {} #{} outstanding {:?} target n{}",
                    c.nonce, c.id, c.registered, c.next_seq, c.outstanding, c.target
                ));
            }
        }
        out.join("; ")
    }

    /// Liveness during faults: a majority up, unpaused, voting and connected for
    /// [`LIVENESS_WINDOW`] ticks completes requests, whatever the others do.
    pub(super) fn check_progress(&mut self) -> Result<(), Violation> {
        let up: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| {
                n.paused_until <= self.now
                    && self.members.contains(&n.id)
                    && n.replica
                        .as_ref()
                        .is_some_and(|r| r.acceptor_status() == AcceptorStatus::Voter)
            })
            .map(|n| n.id)
            .collect();
        let lossy = !self.lossy.is_empty();
        let connected = |a: NodeId, b: NodeId| {
            !lossy && !self.blocked.contains(&(a, b)) && !self.blocked.contains(&(b, a))
        };
        let mut group: Option<Vec<NodeId>> = None;
        for &a in &up {
            let g: Vec<NodeId> = up.iter().copied().filter(|&b| connected(a, b)).collect();
            let clique = g.iter().all(|&x| g.iter().all(|&y| connected(x, y)));
            if clique && g.len() >= self.quorum {
                group = Some(g);
                break;
            }
        }
        match (group, &self.good_since) {
            (None, _) => self.good_since = None,
            (Some(g), Some((_, prev))) if *prev == g => {}
            (Some(g), _) => self.good_since = Some((self.now, g)),
        }
        let Some((since, g)) = &self.good_since else {
            return Ok(());
        };
        let waiting = self.clients.iter().any(|c| c.remaining > 0);
        let quiet_since = (*since).max(self.last_completion);
        if waiting && self.now - quiet_since > LIVENESS_WINDOW {
            return Err(self.violation(format!(
                "liveness: {g:?} up and connected since tick {since}, yet no request \
                 completed for {LIVENESS_WINDOW} ticks; {}",
                self.describe_nodes()
            )));
        }
        Ok(())
    }

    pub(super) fn chose(&mut self, slot: Slot, value: Value, how: &str) -> Result<(), Violation> {
        match self.chosen.get(&slot) {
            Some(prev) if *prev != value => Err(self.violation(format!(
                "two values chosen in slot {slot}: {} and then {} by {how}",
                prev.summary(),
                value.summary()
            ))),
            Some(_) => Ok(()),
            None => {
                self.chosen.insert(slot, value);
                if slot == self.epochs_scanned {
                    self.scan_epochs()?;
                }
                Ok(())
            }
        }
    }

    pub(super) fn check_node(&mut self, i: usize) -> Result<(), Violation> {
        let now = self.now;
        let node = &mut self.nodes[i];
        let Some(r) = node.replica.as_ref() else {
            return Ok(());
        };
        let id = node.id;
        // Promised ballot and commit point never go back below what was made durable
        // (and so may have been vouched for), across restarts too.
        if r.promised() < node.durable_promised {
            return Err(Violation {
                tick: now,
                what: format!(
                    "node {id} promised went back from {} to {}",
                    node.durable_promised,
                    r.promised()
                ),
            });
        }
        if r.commit_point() < node.durable_commit {
            return Err(Violation {
                tick: now,
                what: format!(
                    "node {id} commit point went back from {} to {}",
                    node.durable_commit,
                    r.commit_point()
                ),
            });
        }
        // Replicas that executed the same slots applied the same number of commands.
        let count = r.state_machine().applied.len() as u64;
        match self.applied_at.entry(r.executed()) {
            std::collections::hash_map::Entry::Occupied(e) if *e.get() != count => {
                return Err(Violation {
                    tick: now,
                    what: format!(
                        "node {id} applied {count} commands executing the slots below {}, another replica {}",
                        r.executed(),
                        e.get()
                    ),
                });
            }
            std::collections::hash_map::Entry::Occupied(_) => {}
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(count);
            }
        }
        // Executed histories are prefixes of one another, with no request twice.
        let applied = &r.state_machine().applied;
        let from = node.checked;
        for (k, item) in applied.iter().enumerate().skip(from) {
            if k < self.history.len() {
                if self.history[k] != *item {
                    return Err(Violation {
                        tick: now,
                        what: format!("node {id} executed c{}#{} at position {k} where others executed c{}#{}", item.0, item.1, self.history[k].0, self.history[k].1),
                    });
                }
            } else {
                if self.history_pos.insert(*item, k).is_some() {
                    return Err(Violation {
                        tick: now,
                        what: format!("request c{}#{} executed twice", item.0, item.1),
                    });
                }
                self.history.push(*item);
            }
        }
        node.checked = applied.len();
        // Every replica computes the same output at each position.
        let recording = r.state_machine();
        if let Some(why) = &recording.restore_failed {
            return Err(Violation {
                tick: now,
                what: format!("node {id} could not restore a snapshot: {why}"),
            });
        }
        for (pos, bytes) in recording.outputs.iter().skip(node.checked_outputs) {
            match self.outputs_at.get(pos) {
                Some((first, out)) if out != bytes => {
                    return Err(Violation {
                        tick: now,
                        what: format!(
                            "node {id} computed another output than node {first} for the \
                             command at position {pos}: the replicas' states diverged"
                        ),
                    });
                }
                Some(_) => {}
                None => {
                    self.outputs_at.insert(*pos, (id, bytes.clone()));
                }
            }
        }
        node.checked_outputs = recording.outputs.len();
        // Executed slots hold chosen values.
        let executed = r.executed();
        let info: Vec<_> = r.log(executed.saturating_sub(4)..executed);
        for s in info {
            if let (Some(v), Some(c)) = (s.value.as_ref(), self.chosen.get(&s.slot)) {
                if v != c {
                    return Err(Violation {
                        tick: now,
                        what: format!(
                            "node {id} executed {} in slot {} but {} was chosen",
                            v.summary(),
                            s.slot,
                            c.summary()
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}
