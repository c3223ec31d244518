//! The cancellation scenarios, shared by two test targets: `tests/cancellation.rs` runs
//! them through the public API as users see it, and the library's unit tests
//! (`src/tests.rs`, module `broken_variants`) run the same checks against deliberately
//! broken clients and assert that they fail. The library's types come from the including
//! module (`super`), so the same text compiles in both.
//!
//! A check returns `Err` describing what went wrong instead of panicking, so a test can
//! assert that it fails.

use std::future::Future;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout};

use super::{ClientConfig, ClientRequests, TcpClient, TcpConfig, TcpTransport};

pub(super) const CLUSTER: u64 = 77;
pub(super) const LIMIT: Duration = Duration::from_secs(10);

pub(super) async fn within<F: Future>(limit: Duration, f: F) -> F::Output {
    timeout(limit, f).await.expect("test step timed out")
}

/// A request the slow server answers after `delay_ms`, echoing it whole (so the answer
/// names its request).
pub(super) fn request(delay_ms: u16, name: &str) -> Bytes {
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
pub(super) async fn slow_server() -> (TcpTransport, mpsc::UnboundedReceiver<Bytes>) {
    let config = TcpConfig::new(1, CLUSTER, "127.0.0.1:0".parse().expect("addr"));
    let (node, calls) = TcpTransport::bind(config).await.expect("bind");
    let (seen_tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(slow_echo(calls, seen_tx));
    (node, seen)
}

/// A client of `node` with `config` (cluster [`CLUSTER`]).
pub(super) async fn client_with(node: &TcpTransport, config: ClientConfig) -> TcpClient {
    within(LIMIT, TcpClient::connect(node.local_addr(), config))
        .await
        .expect("connect")
}

pub(super) async fn client(node: &TcpTransport) -> TcpClient {
    client_with(node, ClientConfig::new(CLUSTER)).await
}

/// Calls; `Err` unless the answer is the request's own.
pub(super) async fn answer_is_own(client: &mut TcpClient, request: Bytes) -> Result<(), String> {
    let answer = within(LIMIT, client.call(request.clone())).await;
    match answer {
        Ok(answer) if answer == request => Ok(()),
        other => Err(format!("call {request:?} was answered {other:?}")),
    }
}

/// Calls and checks the answer is the request's own.
pub(super) async fn call_ok(client: &mut TcpClient, request: Bytes) {
    answer_is_own(client, request).await.unwrap();
}

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

/// A call cut short by a timeout, its answer still outstanding or already arrived,
/// never hands that answer to the next call (client built with `config`).
pub(super) async fn a_call_cancelled_by_a_timeout_does_not_answer_the_next_call(
    config: ClientConfig,
) -> Result<(), String> {
    let (mut node, _seen) = slow_server().await;
    let mut client = client_with(&node, config).await;

    // The answer is still outstanding when the next call starts.
    let cut = timeout(
        Duration::from_millis(50),
        client.call(request(300, "first")),
    )
    .await;
    ensure(cut.is_err(), || format!("not cut: {cut:?}"))?;
    answer_is_own(&mut client, request(0, "second")).await?;

    // The answer has arrived by the time the next call starts: it is read and dropped.
    let cut = timeout(
        Duration::from_millis(50),
        client.call(request(150, "third")),
    )
    .await;
    ensure(cut.is_err(), || format!("not cut: {cut:?}"))?;
    sleep(Duration::from_millis(400)).await;
    answer_is_own(&mut client, request(0, "fourth")).await?;
    let discarded = client.discarded_responses();
    ensure(discarded == 1, || {
        format!("{discarded} responses discarded, expected 1")
    })?;
    answer_is_own(&mut client, request(20, "fifth")).await?;
    node.shutdown().await;
    Ok(())
}

/// A call cancelled while its (slow) answer is outstanding does not make the next call
/// wait for that answer: the next call gets its own answer in much less time than the
/// cancelled one takes (client built with `config`).
pub(super) async fn a_cancelled_call_does_not_delay_the_next_call(
    config: ClientConfig,
) -> Result<(), String> {
    const SLOW_MS: u16 = 10_000;
    const BOUND: Duration = Duration::from_secs(3);
    let (mut node, _seen) = slow_server().await;
    let mut client = client_with(&node, config).await;
    let cut = timeout(
        Duration::from_millis(50),
        client.call(request(SLOW_MS, "slow")),
    )
    .await;
    ensure(cut.is_err(), || format!("not cut: {cut:?}"))?;
    let fast = request(0, "fast");
    match timeout(BOUND, client.call(fast.clone())).await {
        Ok(Ok(answer)) if answer == fast => {}
        Ok(other) => return Err(format!("the next call was answered {other:?}")),
        Err(_) => {
            return Err(format!(
                "the next call took longer than {BOUND:?}: it waited behind the cancelled one"
            ))
        }
    }
    node.shutdown().await;
    Ok(())
}
