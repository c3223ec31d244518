//! Simulated clients: registration, requests with retries, redirects, and what they saw.

use super::*;

impl<W: Workload> Sim<W> {
    pub(super) fn drive_clients(&mut self) {
        let timeout = 30;
        for c in 0..self.clients.len() {
            let client = &self.clients[c];
            if client.remaining == 0 {
                continue;
            }
            let resend = match client.outstanding {
                None => true,
                Some((_, sent)) => self.now - sent >= timeout,
            };
            if !resend {
                continue;
            }
            let timed_out = client.outstanding.is_some() && !client.redirected;
            let seq = if !client.registered {
                0
            } else if client.read.is_some() || (client.outstanding.is_none() && self.start_read(c))
            {
                READ_SEQ
            } else {
                self.clients[c].next_seq
            };
            self.clients[c].redirected = false;
            if timed_out {
                // Retry elsewhere, with the same request number.
                let t = self.members[(self.rng.next_u64() % self.members.len() as u64) as usize];
                self.clients[c].target = t;
            }
            self.send_request(c, seq);
        }
    }

    /// Whether client `c`'s next operation is a read (the workload decides); if so, it
    /// is recorded and becomes the client's outstanding read.
    fn start_read(&mut self, c: usize) -> bool {
        let Some(command) = self.workload.read(&mut self.gen, c) else {
            return false;
        };
        self.next_read += 1;
        let nonce = self.next_read;
        // Half the reads go to any replica, as from a client that does not know (or
        // wrongly believes it knows) who leads: a deposed leader may still answer.
        // With stale reads on, half of them are, to any replica, each with the executed
        // slot of the client's previous stale answer as its floor.
        let stale = (self.faults.stale_reads && self.gen.chance(0.5))
            .then_some((self.clients[c].stale_floor, c));
        if stale.is_some() || self.gen.chance(0.5) {
            // Learners (when the profile has some) serve stale reads too.
            let k = if stale.is_some() {
                self.learners.len()
            } else {
                0
            };
            let n = (self.members.len() + k) as u64;
            let i = self.gen.below(n) as usize;
            self.clients[c].target = match self.members.get(i) {
                Some(m) => *m,
                None => self.learners[i - self.members.len()],
            };
        }
        self.clients[c].read = Some((nonce, self.reads.len()));
        self.reads.push(ReadOp {
            nonce,
            call: self.now,
            ret: None,
            command,
            seen: None,
            stale,
        });
        true
    }

    pub(super) fn send_request(&mut self, c: usize, seq: u64) {
        let client = &mut self.clients[c];
        if seq == 0 && !matches!(client.outstanding, Some((0, _))) {
            client.registered_at = self.now;
        }
        client.outstanding = Some((seq, self.now));
        if seq == READ_SEQ {
            let Some((nonce, i)) = client.read else {
                return;
            };
            let command = self.reads[i].command.clone();
            let payload = postcard::to_allocvec(&(nonce, READ_SEQ, command)).unwrap_or_default();
            let to = client.target;
            let request = match self.reads[i].stale {
                Some((floor, _)) => Request::stale_read(nonce, Bytes::from(payload), floor),
                None => Request::read(nonce, Bytes::from(payload)),
            };
            self.send(Envelope::Request { to, request });
            return;
        }
        if seq > 0 {
            let now = self.now;
            self.ops.entry((client.id, seq)).or_insert(ClientOp {
                call: now,
                ret: None,
                pos: None,
            });
        }
        let request = if seq == 0 {
            Request::register(client.nonce)
        } else {
            let key = (client.id, seq);
            let command = match &client.command {
                Some((k, command)) if *k == key => command.clone(),
                _ => {
                    let command = self.workload.command(&mut self.gen, c);
                    client.command = Some((key, command.clone()));
                    self.commands.insert((client.id, seq), command.clone());
                    command
                }
            };
            Request {
                client: client.id,
                seq,
                payload: Bytes::from(
                    postcard::to_allocvec(&(client.id, seq, command)).unwrap_or_default(),
                ),
            }
        };
        let to = client.target;
        self.send(Envelope::Request { to, request });
    }

    pub(super) fn client_reply(&mut self, from: NodeId, reply: Reply) -> Result<(), Violation> {
        if reply.seq >= STALE_READ_BASE {
            return self.read_reply(from, reply);
        }
        let Some(c) = self.clients.iter().position(|c| {
            if reply.seq == 0 {
                !c.registered && c.nonce == reply.client
            } else {
                c.registered && c.id == reply.client
            }
        }) else {
            return Ok(());
        };
        let Some((seq, _)) = self.clients[c].outstanding else {
            return Ok(());
        };
        if reply.seq != seq {
            return Ok(()); // a late reply to an earlier request
        }
        match reply.response {
            Response::Ok(bytes) => {
                if seq > 0 {
                    self.check_reply(reply.client, seq, &bytes)?;
                }
                let client = &mut self.clients[c];
                if seq == 0 {
                    let Ok(id) = postcard::from_bytes::<ClientId>(&bytes) else {
                        return Err(self.violation(format!(
                            "registration {} answered without a session id",
                            reply.client
                        )));
                    };
                    client.id = id;
                    client.registered = true;
                } else {
                    if let Some(prev) = client.results.get(&seq) {
                        if *prev != bytes {
                            return Err(self.violation(format!(
                                "client {} got two different replies for #{seq}",
                                reply.client
                            )));
                        }
                    }
                    client.results.insert(seq, bytes);
                    client.next_seq += 1;
                    client.remaining -= 1;
                    self.stats.completed += 1;
                    self.last_completion = self.now;
                }
                let client = &mut self.clients[c];
                client.outstanding = None;
                client.target = from;
            }
            Response::Redirect { leader } => self.redirect(c, seq, leader),
            Response::Busy => {
                self.clients[c].outstanding = Some((seq, self.now.saturating_sub(20)));
            }
            Response::Stale => {}
            Response::SessionExpired => {
                if self.faults.max_sessions >= self.clients.len() {
                    // No eviction: only expiry may have dropped the session.
                    self.check_expiry(c, reply.client)?;
                }
                // Evicted or expired: the request's outcome is unknown (it stays
                // pending in the real-time check). Carry on under a new session.
                self.stats.expired += 1;
                self.next_client += 1;
                let nonce = self.next_client;
                let client = &mut self.clients[c];
                client.nonce = nonce;
                client.registered = false;
                client.next_seq = 1;
                client.remaining -= 1;
                client.outstanding = None;
                client.results.clear();
            }
            Response::Invalid { reason } => {
                return Err(self.violation(format!("valid command rejected: {reason}")));
            }
        }
        Ok(())
    }

    /// Client `c` was told its session expired while the table had room for every
    /// session: expiry must be on, and the session idle for its time-to-live first.
    ///
    /// Idle since the leader received the session's last request that executed (or
    /// its registration), at the latest; that is no earlier than the request's first
    /// send. Replicas tick at most once per simulated tick, so however fast or slow
    /// the leaders' clocks ran, at least `session_ttl` simulated ticks must separate
    /// that first send from the answer.
    fn check_expiry(&self, c: usize, session: ClientId) -> Result<(), Violation> {
        let ttl = self.faults.session_ttl;
        if ttl == 0 {
            return Err(self.violation(format!("client {session} lost its session")));
        }
        let client = &self.clients[c];
        let last_use = (1..=client.next_seq)
            .filter(|seq| self.history_pos.contains_key(&(session, *seq)))
            .filter_map(|seq| self.ops.get(&(session, seq)).map(|o| o.call))
            .fold(client.registered_at, u64::max);
        if self.now - last_use <= ttl {
            return Err(self.violation(format!(
                "session {session} expired {} ticks after its last use at tick {last_use}, \
                 within its time-to-live of {ttl} ticks",
                self.now - last_use
            )));
        }
        Ok(())
    }

    /// The answer to a read: recorded with the position it reports (checked at the end
    /// against the history, see `check_reads`).
    fn read_reply(&mut self, from: NodeId, reply: Reply) -> Result<(), Violation> {
        let Some(c) = self
            .clients
            .iter()
            .position(|c| c.read.is_some_and(|(nonce, _)| nonce == reply.client))
        else {
            return Ok(()); // a late answer to a read already answered
        };
        let Some((_, i)) = self.clients[c].read else {
            return Ok(());
        };
        let expected = match self.reads[i].stale {
            Some((floor, _)) => Request::stale_read(reply.client, Bytes::new(), floor).seq,
            None => READ_SEQ,
        };
        if reply.seq != expected {
            return Err(self.violation(format!(
                "read {} answered under request number {}, not {expected}",
                reply.client, reply.seq
            )));
        }
        match reply.response {
            Response::Ok(bytes) => {
                let stale = self.reads[i].stale.is_some();
                let decoded = if stale {
                    postcard::from_bytes::<StaleAnswer<(u64, Out<W>)>>(&bytes)
                        .ok()
                        .filter(|a| postcard::to_allocvec(a).is_ok_and(|e| e[..] == bytes[..]))
                        .map(|a| (Some(a.executed), a.output))
                } else {
                    postcard::from_bytes::<(u64, Out<W>)>(&bytes)
                        .ok()
                        .filter(|a| postcard::to_allocvec(a).is_ok_and(|e| e[..] == bytes[..]))
                        .map(|a| (None, a))
                };
                let Some((executed, seen)) = decoded else {
                    return Err(self.violation(format!(
                        "read {} answered with undecodable {bytes:?}",
                        reply.client
                    )));
                };
                if let Some(executed) = executed {
                    // The slot the answer names is the state it reports.
                    if let Some(count) = self.applied_at.get(&executed) {
                        if *count != seen.0 {
                            return Err(self.violation(format!(
                                "stale read {} said it read the state after the slots below \
                                 {executed} ({count} commands) but saw {} commands",
                                reply.client, seen.0
                            )));
                        }
                    }
                    let floor = &mut self.clients[c].stale_floor;
                    *floor = (*floor).max(executed);
                }
                self.reads[i].ret = Some(self.now);
                self.reads[i].seen = Some(seen);
                self.stats.reads += 1;
                self.stats.stale_reads += u64::from(stale);
                self.stats.learner_reads += u64::from(self.learners.contains(&from));
                self.last_completion = self.now;
                let client = &mut self.clients[c];
                client.read = None;
                client.outstanding = None;
                client.remaining -= 1;
                client.target = from;
            }
            Response::Redirect { leader } => self.redirect(c, READ_SEQ, leader),
            Response::Busy => {
                self.clients[c].outstanding = Some((READ_SEQ, self.now.saturating_sub(20)));
            }
            other => {
                return Err(
                    self.violation(format!("read {} answered with {other:?}", reply.client))
                );
            }
        }
        Ok(())
    }

    /// A redirect: retry request `seq` of client `c` a little later (same number), at
    /// the leader named or, without one, at a random member.
    fn redirect(&mut self, c: usize, seq: u64, leader: Option<NodeId>) {
        let t = match leader {
            Some(l) => l,
            None => self.members[(self.rng.next_u64() % self.members.len() as u64) as usize],
        };
        let client = &mut self.clients[c];
        client.target = t;
        client.redirected = true;
        client.outstanding = Some((seq, self.now.saturating_sub(25)));
    }
}
