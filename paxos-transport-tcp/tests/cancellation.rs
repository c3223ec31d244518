//! Cancelled client calls never hand their late answers to later calls: a server that
//! answers slowly, calls cut short by a timeout or dropped after their request went
//! out, and many clients doing so at random at once. Servers on 127.0.0.1, port 0.

use std::future::Future;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use paxos_transport_tcp::{ClientConfig, ClientRequests, TcpClient, TcpConfig, TcpTransport};
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout};

const CLUSTER: u64 = 77;
const LIMIT: Duration = Duration::from_secs(10);

async fn within<F: Future>(limit: Duration, f: F) -> F::Output {
    timeout(limit, f).await.expect("test step timed out")
}

/// A request the slow server answers after `delay_ms`, echoing it whole (so the answer
/// names its request).
fn request(delay_ms: u16, name: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(2 + name.len());
    out.put_u16(delay_ms);
    out.put_slice(name.as_bytes());
    out.freeze()
}

/// Answers every call after the delay its request names, each in its own task, and
/// reports every request it receives on `seen`.
async fn slow_echo(mut calls: ClientRequests, seen: mpsc::UnboundedSender<Bytes>) {
    while let Some(call) = calls.recv().await {
        let (request, responder) = call.into_parts();
        let _ = seen.send(request.clone());
        let delay = request
            .first_chunk::<2>()
            .map_or(0, |d| u16::from_be_bytes(*d));
        tokio::spawn(async move {
            sleep(Duration::from_millis(u64::from(delay))).await;
            responder.respond(request);
        });
    }
}

/// A node whose application is [`slow_echo`]; returns it and the requests it sees.
async fn slow_server() -> (TcpTransport, mpsc::UnboundedReceiver<Bytes>) {
    let config = TcpConfig::new(1, CLUSTER, "127.0.0.1:0".parse().expect("addr"));
    let (node, calls) = TcpTransport::bind(config).await.expect("bind");
    let (seen_tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(slow_echo(calls, seen_tx));
    (node, seen)
}

async fn client(node: &TcpTransport) -> TcpClient {
    within(
        LIMIT,
        TcpClient::connect(node.local_addr(), ClientConfig::new(CLUSTER)),
    )
    .await
    .expect("connect")
}

/// Calls and checks the answer is the request's own.
async fn call_ok(client: &mut TcpClient, request: Bytes) {
    let answer = within(LIMIT, client.call(request.clone())).await;
    assert_eq!(answer.ok(), Some(request));
}

#[tokio::test]
async fn a_call_cancelled_by_a_timeout_does_not_answer_the_next_call() {
    let (mut node, _seen) = slow_server().await;
    let mut client = client(&node).await;

    // The answer is still outstanding when the next call starts.
    let cut = timeout(
        Duration::from_millis(50),
        client.call(request(300, "first")),
    )
    .await;
    assert!(cut.is_err(), "{cut:?}");
    call_ok(&mut client, request(0, "second")).await;

    // The answer has arrived by the time the next call starts: it is read and dropped.
    let cut = timeout(
        Duration::from_millis(50),
        client.call(request(150, "third")),
    )
    .await;
    assert!(cut.is_err(), "{cut:?}");
    sleep(Duration::from_millis(400)).await;
    call_ok(&mut client, request(0, "fourth")).await;
    assert_eq!(client.discarded_responses(), 1);
    call_ok(&mut client, request(20, "fifth")).await;
    node.shutdown().await;
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
