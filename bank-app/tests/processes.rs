//! Five real `bank node` processes on 127.0.0.1: scripts played through `bank client`,
//! the leader killed with SIGKILL in the middle of a run, and a retried request that
//! must not move money twice.
//!
//! Every process a test starts is killed and reaped when the test ends, pass or fail
//! (the `Processes` guard of `common`), and every wait is bounded.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bank_app::{Account, BankCommand, BankOutput, RemoteCluster};
use bytes::Bytes;
use common::{apply_moved, assert_balances, runtime, sample_script, Processes, NODES};
use paxos_core::{NodeId, Reply, Request, Response};
use paxos_transport_tcp::{ClientConfig, NodeResponse, ServerError, TcpClient};

/// Three sets, all replicas live, many one-unit transfers per client.
fn busy_script() -> String {
    let mut s = String::from("Set Number,Transactions,Live Nodes\n");
    let letters: Vec<char> = ('A'..='J').collect();
    for set in 1..=3 {
        let rounds = if set == 2 { 10 } else { 4 };
        for r in 0..rounds {
            for (i, from) in letters.iter().enumerate() {
                let to = letters[(i + 1 + r) % letters.len()];
                let to = if to == *from {
                    letters[(i + 2) % 10]
                } else {
                    to
                };
                if r == 0 && i == 0 {
                    s.push_str(&format!(
                        "{set},\"({from}, {to}, 1)\",\"[n1, n2, n3, n4, n5]\"\n"
                    ));
                } else {
                    s.push_str(&format!(",\"({from}, {to}, 1)\",\n"));
                }
            }
        }
    }
    s
}

#[test]
fn scripts_run_across_five_processes_and_survive_a_killed_leader() {
    let started = Instant::now();
    let rt = runtime();
    let mut procs = Processes::start(&rt);
    let first_leader = procs.leader(&rt, Duration::from_secs(10));
    eprintln!(
        "cluster up in {:?}, leader n{first_leader}",
        started.elapsed()
    );

    // 1. The sample script, to the end.
    let mut expected: BTreeMap<Account, i64> = Account::default_set().map(|a| (a, 10)).collect();
    let sample = sample_script();
    let sample = sample.to_str().expect("utf-8 path");
    let run = procs
        .bank(&["client", "--yes", "--json", "--set-timeout", "2", sample])
        .finish(Duration::from_secs(30));
    let moved = apply_moved(&mut expected, &run);
    assert!(moved >= 10, "the sample moves money: {}", run.stdout);
    assert_balances(&procs, &[1, 2, 3, 4, 5], &expected, Duration::from_secs(5));
    eprintln!("sample script done at {:?}", started.elapsed());

    // 2. A busy script; the leader is killed with SIGKILL as its second set starts.
    let script = procs.dir.path().join("busy.csv");
    std::fs::write(&script, busy_script()).expect("write script");
    let running = procs.bank(&[
        "client",
        "--yes",
        "--json",
        script.to_str().expect("utf-8 path"),
    ]);
    assert!(
        running.wait_for_stderr("== Set 2", Duration::from_secs(20)),
        "the run did not reach set 2"
    );
    let victim = procs.leader(&rt, Duration::from_secs(5));
    procs.kill(victim);
    eprintln!("killed leader n{victim} at {:?}", started.elapsed());
    let run = running.finish(Duration::from_secs(30));
    assert!(
        run.stderr.contains(&format!("n{victim} unreachable")),
        "the run should report the killed node as down:\n{}",
        run.stderr
    );
    for line in run.stderr.lines().filter(|l| l.contains("  set ")) {
        eprintln!("{line}");
    }
    apply_moved(&mut expected, &run);
    let alive: Vec<NodeId> = (1..=NODES).filter(|&n| n != victim).collect();
    assert_balances(&procs, &alive, &expected, Duration::from_secs(5));
    let leader = procs.leader(&rt, Duration::from_secs(5));
    assert_ne!(leader, victim);
    eprintln!("done in {:?}", started.elapsed());
}

fn transfer_request(client: u64, seq: u64, from: char, to: char, amount: i64) -> Request {
    let command = BankCommand::Transfer {
        from: Account::new(from).expect("letter"),
        to: Account::new(to).expect("letter"),
        amount,
    };
    Request {
        client,
        seq,
        payload: postcard::to_allocvec(&command).expect("encode").into(),
    }
}

/// Submits `request` until a replica executes it, following redirects; returns the
/// reply's bytes and the node that answered.
async fn submit_to_leader(
    cluster: &RemoteCluster,
    first: NodeId,
    request: &Request,
    skip: Option<NodeId>,
) -> (Bytes, NodeId) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut target = first;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{request:?} not executed in time"
        );
        // The node's reply is checked to name this request before it is returned.
        let answer = cluster
            .node(target)
            .expect("a member")
            .submit(request.clone())
            .await
            .map(|reply: Reply| reply.response);
        match answer {
            Ok(Response::Ok(bytes)) => return (bytes, target),
            Ok(Response::Redirect { leader: Some(l) }) if Some(l) != skip => {
                target = l;
                continue;
            }
            Ok(r @ (Response::Stale | Response::SessionExpired | Response::Invalid { .. })) => {
                panic!("{request:?} answered {r:?}")
            }
            _ => {}
        }
        // An election is under way, or the target is the dead node: try the next one.
        tokio::time::sleep(Duration::from_millis(50)).await;
        target = target % NODES + 1;
        if Some(target) == skip {
            target = target % NODES + 1;
        }
    }
}

#[test]
fn a_retried_transfer_moves_money_once_across_a_leader_change() {
    let rt = runtime();
    let mut procs = Processes::start(&rt);
    let leader = procs.leader(&rt, Duration::from_secs(10));
    let cluster = procs.remote();
    let addr = procs.config.addr(leader).expect("leader address");

    // Bad input on the node's port: raw HTTP is refused by the handshake, and garbage
    // after a proper client handshake is answered with an error. The node keeps serving.
    if let Ok(mut s) = TcpStream::connect(addr) {
        use std::io::Write;
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }
    let garbage = rt.block_on(async {
        let mut raw = TcpClient::connect(addr, ClientConfig::new(procs.config.cluster_id))
            .await
            .expect("client handshake");
        let bytes = raw
            .call(Bytes::from_static(b"\xff\xfe garbage \x00"))
            .await
            .expect("an answer");
        NodeResponse::decode(&bytes).expect("a response")
    });
    assert_eq!(garbage, NodeResponse::Error(ServerError::Malformed));

    // Register a session (the cluster assigns its id: the reply carries it) and
    // transfer A->B 3 as request 1 of that session.
    let nonce = 0x0E1C_E000_0000_0001;
    let (registered, _) = rt.block_on(submit_to_leader(
        &cluster,
        leader,
        &Request::register(nonce),
        None,
    ));
    let client: u64 = postcard::from_bytes(&registered).expect("a session id");
    let transfer = transfer_request(client, 1, 'A', 'B', 3);
    let (first, answered_by) = rt.block_on(submit_to_leader(&cluster, leader, &transfer, None));
    let output: BankOutput = postcard::from_bytes(&first).expect("a bank output");
    assert!(
        matches!(
            output,
            BankOutput::Transferred {
                from_balance: 7,
                to_balance: 13,
                ..
            }
        ),
        "{output:?}"
    );

    // The leader dies before the client hears back (as far as the client knows); the
    // client retries the identical request with the new leader.
    procs.kill(answered_by);
    let new_leader = procs.leader(&rt, Duration::from_secs(10));
    assert_ne!(new_leader, answered_by);
    let (again, _) = rt.block_on(submit_to_leader(
        &cluster,
        new_leader,
        &transfer,
        Some(answered_by),
    ));
    assert_eq!(again, first, "the retry gets the cached reply");

    // A later request of the same session still executes normally.
    let next = transfer_request(client, 2, 'A', 'C', 1);
    let (third, _) = rt.block_on(submit_to_leader(
        &cluster,
        new_leader,
        &next,
        Some(answered_by),
    ));
    let output: BankOutput = postcard::from_bytes(&third).expect("a bank output");
    assert!(
        matches!(
            output,
            BankOutput::Transferred {
                from_balance: 6,
                ..
            }
        ),
        "{output:?}"
    );

    let mut expected: BTreeMap<Account, i64> = Account::default_set().map(|a| (a, 10)).collect();
    expected.insert(Account::A, 6);
    expected.insert(Account::new('B').expect("letter"), 13);
    expected.insert(Account::new('C').expect("letter"), 11);
    let alive: Vec<NodeId> = (1..=NODES).filter(|&n| n != answered_by).collect();
    assert_balances(&procs, &alive, &expected, Duration::from_secs(5));
}

/// Nodes started with `--requests-per-slot 64`: the busy script's concurrent transfers
/// and a `bank bench` load are packed several to a slot, every transfer moves money
/// once, and every replica ends with the same balances after executing the same log.
#[test]
fn transfers_packed_several_to_a_slot_move_money_once() {
    let rt = runtime();
    let procs = Processes::start_with_node_args(&rt, NODES, &["--requests-per-slot", "64"]);
    let leader = procs.leader(&rt, Duration::from_secs(10));
    let mut expected: BTreeMap<Account, i64> = Account::default_set().map(|a| (a, 10)).collect();
    let script = procs.dir.path().join("busy.csv");
    std::fs::write(&script, busy_script()).expect("write script");
    let run = procs
        .bank(&[
            "client",
            "--yes",
            "--json",
            script.to_str().expect("utf-8 path"),
        ])
        .finish(Duration::from_secs(60));
    let moved = apply_moved(&mut expected, &run);
    assert!(moved >= 100, "the script moves money: {}", run.stdout);
    assert_balances(&procs, &[1, 2, 3, 4, 5], &expected, Duration::from_secs(5));

    let run = procs
        .bank(&["bench", "--quiet", "--transfers", "3000", "--clients", "32"])
        .finish(Duration::from_secs(60));
    assert!(
        run.stdout.starts_with("3000 transfers") && run.stdout.contains(" 0 failed"),
        "{}",
        run.stdout
    );
    // Every replica executed the same slots to the same balances.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = procs.bank_db();
        let rows: Vec<_> = seen.values().collect();
        let agree = seen.len() == NODES as usize && rows.windows(2).all(|w| w[0] == w[1]);
        if agree {
            assert_eq!(rows[0].1.values().sum::<i64>(), 100, "{seen:?}");
            break;
        }
        assert!(Instant::now() < deadline, "replicas disagree: {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The leader's log shows slots holding several transfers.
    let run = procs
        .bank(&["log", "--json", "--node", &leader.to_string()])
        .finish(Duration::from_secs(15));
    let batches: Vec<usize> = common::json_lines(&run.stdout)
        .iter()
        .filter_map(|e| e["entry"].get("Batch")?.as_array().map(Vec::len))
        .collect();
    assert!(
        batches.iter().any(|n| *n >= 2),
        "no slot holds several transfers: {}",
        run.stdout
    );
    eprintln!(
        "{} slots hold {} transfers",
        batches.len(),
        batches.iter().sum::<usize>()
    );
    let text = procs
        .bank(&["log", "--node", &leader.to_string()])
        .finish(Duration::from_secs(15));
    assert!(text.stdout.contains("->"), "{}", text.stdout);
}
