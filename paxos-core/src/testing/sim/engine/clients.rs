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
            let seq = if client.registered {
                client.next_seq
            } else {
                0
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

    pub(super) fn send_request(&mut self, c: usize, seq: u64) {
        let client = &mut self.clients[c];
        client.outstanding = Some((seq, self.now));
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
            Response::Redirect { leader } => {
                let t = match leader {
                    Some(l) => l,
                    None => {
                        self.members[(self.rng.next_u64() % self.members.len() as u64) as usize]
                    }
                };
                let client = &mut self.clients[c];
                client.target = t;
                client.redirected = true;
                // Retry a little later, same request number.
                client.outstanding = Some((seq, self.now.saturating_sub(25)));
            }
            Response::Busy => {
                self.clients[c].outstanding = Some((seq, self.now.saturating_sub(20)));
            }
            Response::Stale => {}
            Response::SessionExpired => {
                if self.faults.max_sessions >= self.clients.len() {
                    return Err(self.violation(format!("client {} lost its session", reply.client)));
                }
                // Evicted: the request's outcome is unknown (it stays pending in the
                // real-time check). Carry on under a new session.
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
}
