//! Cancelled client calls never hand their late answers to later calls: a server that
//! answers slowly, calls cut short by a timeout or dropped after their request went
//! out, and many clients doing so at random at once. Servers on 127.0.0.1, port 0.
//!
//! The scenarios that the library's unit tests also run against deliberately broken
//! clients are in `cancellation/checks.rs`.

#[path = "cancellation/checks.rs"]
mod checks;

use std::time::Duration;

use paxos_transport_tcp::{ClientConfig, ClientRequests, TcpClient, TcpConfig, TcpTransport};
use tokio::time::{sleep, timeout};

use checks::{call_ok, client, request, slow_server, within, CLUSTER, LIMIT};

#[tokio::test]
async fn a_call_cancelled_by_a_timeout_does_not_answer_the_next_call() {
    checks::a_call_cancelled_by_a_timeout_does_not_answer_the_next_call(ClientConfig::new(CLUSTER))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_cancelled_call_does_not_delay_the_next_call() {
    checks::a_cancelled_call_does_not_delay_the_next_call(ClientConfig::new(CLUSTER))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_call_dropped_after_its_request_was_written_does_not_answer_the_next_call() {
    let (mut node, mut seen) = slow_server().await;
    let mut client = client(&node).await;
    for (round, wait_for_late_answer) in [false, true, false, true].into_iter().enumerate() {
        let slow = request(200, &format!("slow {round}"));
        {
            let call = client.call(slow.clone());
            tokio::pin!(call);
            // Poll the call until the server has the request, then drop it.
            tokio::select! {
                answer = &mut call => panic!("answered before the server saw it: {answer:?}"),
                got = within(LIMIT, seen.recv()) => assert_eq!(got, Some(slow)),
            }
        }
        if wait_for_late_answer {
            sleep(Duration::from_millis(350)).await;
        }
        let fast = request(0, &format!("fast {round}"));
        call_ok(&mut client, fast.clone()).await;
        assert_eq!(within(LIMIT, seen.recv()).await, Some(fast));
    }
    assert_eq!(client.discarded_responses(), 2);
    node.shutdown().await;
}

/// A small deterministic generator (xorshift), so failures replay.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_cancelling_at_random_each_get_their_own_answers() {
    const CLIENTS: u64 = 24;
    const CALLS: u64 = 40;
    let (mut node, mut seen) = slow_server().await;
    tokio::spawn(async move { while seen.recv().await.is_some() {} });
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut client = client(&node).await;
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (c + 1).wrapping_mul(0xA24B_AED4_963E_E407));
            let (mut answered, mut cancelled) = (0u64, 0u64);
            for i in 0..CALLS {
                let delay = rng.below(8) as u16;
                let request = request(delay, &format!("client {c} call {i}"));
                if rng.below(2) == 0 {
                    // Cancelled anywhere from before the request is written to after
                    // the answer is on its way.
                    let deadline = Duration::from_millis(rng.below(10));
                    match timeout(deadline, client.call(request.clone())).await {
                        Ok(answer) => {
                            assert_eq!(answer.ok(), Some(request));
                            answered += 1;
                        }
                        Err(_) => {
                            cancelled += 1;
                            // Sometimes the late answer arrives before the next call
                            // (it is read and discarded), sometimes not (the connection
                            // is replaced).
                            sleep(Duration::from_millis(rng.below(12))).await;
                        }
                    }
                } else {
                    call_ok(&mut client, request).await;
                    answered += 1;
                }
            }
            (answered, cancelled, client.discarded_responses())
        }));
    }
    let results = within(Duration::from_secs(60), futures::future::join_all(tasks)).await;
    let (mut answered, mut cancelled, mut discarded) = (0, 0, 0);
    for r in results {
        let (a, c, d) = r.expect("a client task failed");
        answered += a;
        cancelled += c;
        discarded += d;
    }
    eprintln!("{answered} answered, {cancelled} cancelled, {discarded} late answers discarded");
    assert_eq!(answered + cancelled, CLIENTS * CALLS);
    assert!(answered >= CLIENTS * CALLS / 2);
    node.shutdown().await;
}
