//! Tests of the script parser, the reference executor and the cluster config.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::*;

fn acc(s: &str) -> Account {
    s.parse().unwrap()
}

fn t(from: &str, to: &str, amount: i64) -> Item {
    Item::Transfer {
        from: acc(from),
        to: acc(to),
        amount,
    }
}

const H: &str = "Set Number,Transactions,Live Nodes\n";

// ---------------------------------------------------------------- scenario: accepted

#[test]
fn sample_parses() {
    let s = Scenario::parse(SAMPLE_SCENARIO).unwrap();
    let numbers: Vec<u32> = s.sets.iter().map(|x| x.number).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5]);
    let live: Vec<&[u64]> = s.sets.iter().map(|x| x.live.as_slice()).collect();
    assert_eq!(
        live,
        [
            &[1, 2, 3, 4, 5][..],
            &[1, 2, 3, 4],
            &[2, 3, 4, 5],
            &[1, 2],
            &[1, 2, 3, 4, 5]
        ]
    );
    use Item::LeaderFail as LF;
    assert_eq!(
        s.sets[0].items,
        [
            t("A", "B", 2),
            t("C", "D", 3),
            t("E", "A", 1),
            t("F", "G", 4),
            t("B", "H", 1)
        ]
    );
    assert_eq!(
        s.sets[1].items,
        [
            t("A", "C", 5),
            t("D", "E", 2),
            LF,
            t("G", "I", 3),
            t("H", "J", 2),
            t("I", "A", 20)
        ]
    );
    assert_eq!(
        s.sets[2].items,
        [t("J", "F", 1), t("C", "B", 2), LF, t("E", "D", 1)]
    );
    assert_eq!(s.sets[3].items, [t("B", "A", 1), t("F", "E", 2)]);
    assert_eq!(
        s.sets[4].items,
        [t("A", "J", 1), t("D", "C", 2), t("J", "I", 3)]
    );
    let majorities: Vec<bool> = s.sets.iter().map(|x| x.has_majority(5)).collect();
    assert_eq!(majorities, [true, true, true, false, true]);
    assert_eq!(s.commands().count(), 18);
    // The shipped copy is the shared one.
    assert!(SAMPLE_SCENARIO.starts_with(SCENARIO_HEADER));
}

#[test]
fn sample_with_crlf_and_trailing_blank_lines() {
    let crlf = SAMPLE_SCENARIO.replace('\n', "\r\n") + "\r\n\r\n  \n";
    assert_eq!(
        Scenario::parse(&crlf).unwrap(),
        Scenario::parse(SAMPLE_SCENARIO).unwrap()
    );
}

#[test]
fn lenient_spacing_quoting_and_case() {
    let text = "\u{feff}\n  set number , TRANSACTIONS,live   nodes \r\n\
                1, \"(a, b, 2)\" , \"[n2,N1 ,  3]\"\n\
                ,(C,D,3),\n\
                ,  lf  \n\
                , \"LF\" , \"\"\n\
                , , \n\
                7,,\"[]\"\n\
                8,\"(J, A, 0)\",[n5]";
    // A zero amount is let through to the bank only when the options say so.
    let options = ScenarioOptions {
        allow_invalid_transfers: true,
        ..ScenarioOptions::default()
    };
    let s = Scenario::parse_with(text, &options).unwrap();
    assert_eq!(
        s,
        Scenario {
            sets: vec![
                TxSet {
                    number: 1,
                    live: vec![1, 2, 3],
                    items: vec![
                        t("A", "B", 2),
                        t("C", "D", 3),
                        Item::LeaderFail,
                        Item::LeaderFail
                    ],
                },
                TxSet {
                    number: 7,
                    live: vec![],
                    items: vec![],
                },
                TxSet {
                    number: 8,
                    live: vec![5],
                    items: vec![t("J", "A", 0)],
                },
            ]
        }
    );
}

#[test]
fn header_only_is_an_empty_scenario() {
    assert_eq!(Scenario::parse(H).unwrap(), Scenario::default());
}

#[test]
fn quotes_can_be_escaped() {
    // `""` inside quotes is a quote; here it makes the transaction malformed.
    let err = Scenario::parse(&format!("{H}1,\"(A, B, \"\"2\"\")\",[n1]\n")).unwrap_err();
    assert_eq!(err.line(), Some(2));
    assert_eq!(err.kind(), Some(&LineError::BadAmount("\"2\"".into())));
}

#[test]
fn custom_options() {
    let options = ScenarioOptions {
        nodes: 7,
        accounts: [acc("X"), acc("Y")].into_iter().collect(),
        ..ScenarioOptions::default()
    };
    let s = Scenario::parse_with(&format!("{H}1,\"(X, Y, 4)\",\"[n7, n6]\"\n"), &options).unwrap();
    assert_eq!(s.sets[0].live, [6, 7]);
    assert_eq!(s.sets[0].items, [t("X", "Y", 4)]);
    let err = Scenario::parse_with(&format!("{H}1,\"(A, Y, 4)\",[n1]\n"), &options).unwrap_err();
    assert_eq!(err.kind(), Some(&LineError::UnknownAccount(acc("A"))));
}

#[test]
fn per_client_order() {
    let s = Scenario::parse(SAMPLE_SCENARIO).unwrap();
    let per = s.per_client();
    let j: Vec<BankCommand> = per[&acc("J")].clone();
    assert_eq!(
        j,
        [
            BankCommand::Transfer {
                from: acc("J"),
                to: acc("F"),
                amount: 1
            },
            BankCommand::Transfer {
                from: acc("J"),
                to: acc("I"),
                amount: 3
            }
        ]
    );
    assert_eq!(per.values().map(Vec::len).sum::<usize>(), 18);
    assert_eq!(per.len(), 10);
}

// ---------------------------------------------------------------- scenario: rejected

/// Parses `text` with `options` and checks it fails at `line` with `kind`.
fn fails_with(text: &str, options: &ScenarioOptions, line: usize, kind: LineError) {
    match Scenario::parse_with(text, options) {
        Ok(s) => panic!("parsed {text:?} into {s:?}"),
        Err(err) => {
            assert_eq!(
                err,
                ScenarioError::Line {
                    line,
                    kind: kind.clone()
                },
                "{text:?}"
            );
            assert!(
                err.to_string().starts_with(&format!("line {line}: ")),
                "{err}"
            );
        }
    }
}

fn fails(text: &str, line: usize, kind: LineError) {
    fails_with(text, &ScenarioOptions::default(), line, kind);
}

const SET1: &str = "1,\"(A, B, 2)\",\"[n1, n2, n3]\"\n";

#[test]
fn rejects_bad_header() {
    fails(
        "Set,Tx,Live\n1,\"(A, B, 2)\",[n1]\n",
        1,
        LineError::BadHeader("Set,Tx,Live".into()),
    );
    fails(
        SET1,
        1,
        LineError::BadHeader("1,\"(A, B, 2)\",\"[n1, n2, n3]\"".into()),
    );
    fails(
        "\n\nSet Number,Transactions\n",
        3,
        LineError::BadHeader("Set Number,Transactions".into()),
    );
    fails("", 1, LineError::MissingHeader);
    fails("\r\n \n\n", 1, LineError::MissingHeader);
}

#[test]
fn rejects_unknown_and_malformed_accounts() {
    fails(
        &format!("{H}{SET1},\"(A, K, 2)\",\n"),
        3,
        LineError::UnknownAccount(acc("K")),
    );
    fails(
        &format!("{H}1,\"(AB, C, 1)\",[n1]\n"),
        2,
        LineError::BadAccount("AB".parse::<Account>().unwrap_err()),
    );
    fails(
        &format!("{H}1,\"(, C, 1)\",[n1]\n"),
        2,
        LineError::BadAccount("".parse::<Account>().unwrap_err()),
    );
}

#[test]
fn rejects_bad_amounts() {
    let row = |amount: &str| format!("{H}{SET1}\n,\"(A, B, {amount})\",\n");
    fails(&row("x"), 4, LineError::BadAmount("x".into()));
    fails(&row("1.5"), 4, LineError::BadAmount("1.5".into()));
    fails(&row("+3"), 4, LineError::BadAmount("+3".into()));
    fails(&row(""), 4, LineError::BadAmount("".into()));
    fails(&row("-3"), 4, LineError::NegativeAmount("-3".into()));
    fails(
        &row("9223372036854775808"),
        4,
        LineError::AmountTooLarge("9223372036854775808".into()),
    );
    // i64::MAX itself is accepted (the bank rejects it at run time if it overflows).
    assert!(Scenario::parse(&row("9223372036854775807")).is_ok());
}

#[test]
fn refuses_transfers_that_cannot_succeed() {
    let row = |tx: &str| format!("{H}{SET1}\n,\"{tx}\",\n");
    let a = acc("A");
    fails(
        &row("(A, B, 0)"),
        4,
        LineError::InvalidTransfer {
            from: a,
            to: acc("B"),
            amount: 0,
            reason: Rejection::NonPositiveAmount(0),
        },
    );
    fails(
        &row("(a, A, 3)"),
        4,
        LineError::InvalidTransfer {
            from: a,
            to: a,
            amount: 3,
            reason: Rejection::SameAccount(a),
        },
    );
    let err = Scenario::parse(&row("(C, C, 1)")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 4: transfer (C, C, 1) cannot succeed: sender and receiver are both C"
    );
    // The same rows pass when the options let them through to the bank.
    let options = ScenarioOptions {
        allow_invalid_transfers: true,
        ..ScenarioOptions::default()
    };
    for tx in ["(A, B, 0)", "(A, A, 3)"] {
        assert!(Scenario::parse_with(&row(tx), &options).is_ok(), "{tx}");
    }
}

#[test]
fn rejects_bad_transactions() {
    for tx in ["(A, B)", "(A, B, 1, 2)", "A B 2", "XYZ", "(A, B, 2", "L F"] {
        fails(
            &format!("{H}1,\"{tx}\",[n1]\n"),
            2,
            LineError::BadTransaction(tx.into()),
        );
    }
}

#[test]
fn rejects_items_before_any_set() {
    fails(
        &format!("{H},\"(A, B, 2)\",\n{SET1}"),
        2,
        LineError::ItemBeforeSet,
    );
    fails(&format!("{H}\n,LF,\n"), 3, LineError::ItemBeforeSet);
}

#[test]
fn rejects_bad_node_lists() {
    let set = |live: &str| format!("{H}{SET1}2,LF,\"{live}\"\n");
    fails(&set("n1, n2"), 3, LineError::BadNodeList("n1, n2".into()));
    fails(&set("[n1, n2"), 3, LineError::BadNodeList("[n1, n2".into()));
    fails(&set("(n1)"), 3, LineError::BadNodeList("(n1)".into()));
    fails(&set("[x1]"), 3, LineError::BadNode("x1".into()));
    fails(&set("[n1,,n2]"), 3, LineError::BadNode("".into()));
    fails(&set("[n-1]"), 3, LineError::BadNode("n-1".into()));
    fails(&set("[n1, n1]"), 3, LineError::DuplicateNode(1));
    fails(&set("[n1, 1]"), 3, LineError::DuplicateNode(1));
}

#[test]
fn rejects_node_ids_out_of_range() {
    let set = |live: &str| format!("{H}{SET1}2,LF,\"{live}\"\n");
    fails(
        &set("[n6]"),
        3,
        LineError::NodeOutOfRange { node: 6, max: 5 },
    );
    fails(
        &set("[n0]"),
        3,
        LineError::NodeOutOfRange { node: 0, max: 5 },
    );
    fails(
        &set("[n99999999999999999999999]"),
        3,
        LineError::NodeOutOfRange {
            node: u64::MAX,
            max: 5,
        },
    );
    let seven = ScenarioOptions {
        nodes: 7,
        ..ScenarioOptions::default()
    };
    assert!(Scenario::parse_with(&set("[n6, n7]"), &seven).is_ok());
    fails_with(
        &set("[n8]"),
        &seven,
        3,
        LineError::NodeOutOfRange { node: 8, max: 7 },
    );
}

#[test]
fn rejects_set_numbers_not_increasing() {
    fails(
        &format!("{H}{SET1}1,LF,[n1]\n"),
        3,
        LineError::SetNotIncreasing {
            number: 1,
            previous: 1,
        },
    );
    fails(
        &format!("{H}5,LF,[n1]\n,LF,\n3,LF,[n1]\n"),
        4,
        LineError::SetNotIncreasing {
            number: 3,
            previous: 5,
        },
    );
    // Gaps are fine.
    assert!(Scenario::parse(&format!("{H}{SET1}10,LF,[n1]\n")).is_ok());
}

#[test]
fn rejects_bad_set_numbers() {
    for n in ["x", "-1", "1.0", "4294967296", "+1"] {
        fails(
            &format!("{H}{n},LF,[n1]\n"),
            2,
            LineError::BadSetNumber(n.into()),
        );
    }
}

#[test]
fn rejects_misplaced_or_missing_live_nodes() {
    fails(&format!("{H}1,LF,\n"), 2, LineError::MissingLiveNodes);
    fails(&format!("{H}1,LF\n"), 2, LineError::MissingLiveNodes);
    fails(
        &format!("{H}{SET1},LF,[n1]\n"),
        3,
        LineError::LiveNodesWithoutSet,
    );
}

#[test]
fn rejects_wrong_column_counts() {
    fails(&format!("{H}{SET1},LF,,\n"), 3, LineError::WrongColumns(4));
    fails(&format!("{H}{SET1}1\n"), 3, LineError::WrongColumns(1));
}

#[test]
fn rejects_bad_quoting() {
    fails(
        &format!("{H}{SET1},\"(A, B, 2),\n"),
        3,
        LineError::UnterminatedQuote,
    );
    fails(
        &format!("{H}{SET1},\"(A, B, 2)\" x,\n"),
        3,
        LineError::TextAfterQuote,
    );
    // A field cannot span lines.
    fails(
        &format!("{H}1,\"(A, B,\n 2)\",[n1]\n"),
        2,
        LineError::UnterminatedQuote,
    );
}

#[test]
fn rejects_oversized_input() {
    let small = ScenarioOptions {
        max_bytes: 64,
        max_lines: 3,
        max_line_bytes: 40,
        ..ScenarioOptions::default()
    };
    let long = format!("{H}1,LF,\"[{}n1]\"\n", " ".repeat(40));
    let err = Scenario::parse_with(&long, &small).unwrap_err();
    assert_eq!(
        err,
        ScenarioError::TooLarge {
            size: long.len(),
            max: 64
        }
    );
    assert_eq!(err.line(), None);
    assert_eq!(
        err.to_string(),
        format!("script is {} bytes, more than the limit of 64", long.len())
    );
    assert_eq!(
        Scenario::parse_bytes(long.as_bytes(), &small),
        Err(err.clone())
    );

    let wide = ScenarioOptions {
        max_bytes: 1000,
        ..small.clone()
    };
    fails_with(
        &format!("{H}1,LF,\"[{}n1]\"\n", " ".repeat(30)),
        &wide,
        2,
        LineError::TooLong { len: 41, max: 40 },
    );
    fails_with(
        &format!("{H}1,LF,[n1]\n,LF,\n,LF,\n"),
        &wide,
        4,
        LineError::TooManyLines { max: 3 },
    );
    // Trailing blank lines past the limit are fine.
    assert!(Scenario::parse_with(&format!("{H}1,LF,[n1]\n,LF,\n\n\n"), &wide).is_ok());

    // The defaults: 1 MiB, 100k lines.
    let huge = format!("{H}1,LF,[n1]\n{}", ",LF,\n".repeat(MAX_SCENARIO_LINES));
    fails(
        &huge,
        MAX_SCENARIO_LINES + 1,
        LineError::TooManyLines {
            max: MAX_SCENARIO_LINES,
        },
    );
    let big = " ".repeat(MAX_SCENARIO_BYTES + 1);
    assert!(matches!(
        Scenario::parse(&big),
        Err(ScenarioError::TooLarge { .. })
    ));
}

#[test]
fn rejects_invalid_utf8_naming_the_line() {
    let mut bytes = format!("{H}{SET1}").into_bytes();
    bytes.extend_from_slice(b",\"(A, \xff, 1)\",\n");
    let err = Scenario::parse_bytes(&bytes, &ScenarioOptions::default()).unwrap_err();
    assert_eq!(
        err,
        ScenarioError::Line {
            line: 3,
            kind: LineError::NotUtf8
        }
    );
    assert_eq!(err.to_string(), "line 3: not valid UTF-8");
}

#[test]
fn error_messages_are_clear() {
    let err = Scenario::parse(&format!("{H}{SET1},\"(A, K, 2)\",\n")).unwrap_err();
    assert_eq!(err.to_string(), "line 3: unknown account K");
    let err = Scenario::parse(&format!("{H}{SET1}2,LF,[n9]\n")).unwrap_err();
    assert_eq!(err.to_string(), "line 3: node 9 is outside 1..=5");
    let err = Scenario::parse(&format!("{H}1,\"(A, B, {})\",[n1]\n", "7".repeat(100))).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("line 2: amount \"7777"), "{msg}");
    assert!(msg.len() < 100, "offending text is not truncated: {msg}");
}

fn arb_item() -> impl Strategy<Value = Item> {
    let account = (b'A'..=b'J').prop_map(|c| Account::new(char::from(c)).unwrap());
    prop_oneof![
        Just(Item::LeaderFail),
        (account.clone(), account, 0i64..=i64::MAX).prop_map(|(from, to, amount)| Item::Transfer {
            from,
            to,
            amount
        }),
    ]
}

fn arb_scenario() -> impl Strategy<Value = Scenario> {
    proptest::collection::vec(
        (
            1u32..20,
            proptest::collection::btree_set(1u64..=5, 0..=5),
            proptest::collection::vec(arb_item(), 0..5),
        ),
        0..6,
    )
    .prop_map(|sets| {
        let mut number = 0;
        Scenario {
            sets: sets
                .into_iter()
                .map(|(gap, live, items)| {
                    number += gap;
                    TxSet {
                        number,
                        live: live.into_iter().collect(),
                        items,
                    }
                })
                .collect(),
        }
    })
}

/// Writes a scenario as a script, quoting fields or not and ending lines with LF or CRLF.
fn render(s: &Scenario, quote: bool, eol: &str) -> String {
    let q = |x: String| if quote { format!("\"{x}\"") } else { x };
    let mut out = format!("{SCENARIO_HEADER}{eol}");
    for set in &s.sets {
        let live: Vec<String> = set.live.iter().map(|n| format!("n{n}")).collect();
        let live = q(format!("[{}]", live.join(", ")));
        let mut items = set.items.iter().map(|i| q(i.to_string()));
        out += &format!(
            "{},{},{live}{eol}",
            set.number,
            items.next().unwrap_or_default()
        );
        for item in items {
            out += &format!(",{item},{eol}");
        }
    }
    out
}

proptest! {
    #[test]
    fn parser_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Scenario::parse_bytes(&bytes, &ScenarioOptions::default());
    }

    #[test]
    fn parser_never_panics_on_strings(text in any::<String>()) {
        let _ = Scenario::parse(&text);
        let _ = Scenario::parse(&format!("{H}{text}"));
    }

    #[test]
    fn parser_never_panics_on_csvish_text(
        body in "([0-9]{0,3},( ?\"?[(\\[]?([A-Lnx0-9-]{0,2}(, ?)?){0,4}[)\\]]?\"? ?| ?LF)?,?[\r\n]{0,2}){0,12}"
    ) {
        let _ = Scenario::parse(&format!("{H}{body}"));
    }

    #[test]
    fn parser_never_panics_on_mutated_sample(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
    ) {
        let mut bytes = SAMPLE_SCENARIO.as_bytes().to_vec();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            match byte % 3 {
                0 => bytes[i] = byte,
                1 => { bytes.remove(i); }
                _ => {
                    let pool = b",\"[]()\r\n n1-L";
                    bytes.insert(i, pool[usize::from(byte) % pool.len()]);
                }
            }
        }
        let _ = Scenario::parse_bytes(&bytes, &ScenarioOptions::default());
    }

    #[test]
    fn rendered_scenarios_parse_back(s in arb_scenario(), quote in any::<bool>(), crlf in any::<bool>()) {
        let text = render(&s, quote, if crlf { "\r\n" } else { "\n" });
        let options = ScenarioOptions {
            allow_invalid_transfers: true,
            ..ScenarioOptions::default()
        };
        prop_assert_eq!(Scenario::parse_with(&text, &options), Ok(s.clone()));
        // By default, a transfer that cannot succeed is refused with its line.
        let doomed = s.sets.iter().flat_map(|set| &set.items).any(|i| matches!(
            i,
            Item::Transfer { from, to, amount } if *amount == 0 || from == to
        ));
        match Scenario::parse(&text) {
            Ok(parsed) => prop_assert!(!doomed && parsed == s),
            Err(e) => prop_assert!(
                doomed && matches!(e.kind(), Some(LineError::InvalidTransfer { .. })),
                "{}", e
            ),
        }
    }
}

// ---------------------------------------------------------------- reference executor

#[test]
fn sample_reference_run() {
    let s = Scenario::parse(SAMPLE_SCENARIO).unwrap();
    let run = expected_balances(&s, &Bank::new());
    let want: BTreeMap<Account, i64> = [
        ("A", 4),
        ("B", 12),
        ("C", 12),
        ("D", 10),
        ("E", 12),
        ("F", 5),
        ("G", 11),
        ("H", 9),
        ("I", 16),
        ("J", 9),
    ]
    .into_iter()
    .map(|(a, b)| (acc(a), b))
    .collect();
    assert_eq!(run.bank.balances(), &want);
    assert_eq!(run.bank.total(), 100);
    assert_eq!(run.outcomes.len(), 18);
    let rejected: Vec<&Outcome> = run.rejected().collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].set, 2);
    assert_eq!(
        rejected[0].output,
        BankOutput::Rejected(Rejection::InsufficientFunds {
            account: acc("I"),
            balance: 13,
            amount: 20
        })
    );
    // Replaying the same order gives the same result.
    let (bank, outputs) = replay(&Bank::new(), s.commands());
    assert_eq!(bank, run.bank);
    assert_eq!(
        outputs,
        run.outcomes.iter().map(|o| o.output).collect::<Vec<_>>()
    );
}

#[test]
fn replay_in_another_order() {
    let s = Scenario::parse(SAMPLE_SCENARIO).unwrap();
    let mut commands: Vec<BankCommand> = s.commands().collect();
    commands.reverse();
    let (bank, outputs) = replay(&Bank::new(), commands);
    assert_eq!(bank.total(), 100);
    assert_eq!(outputs.len(), 18);
    // (I, A, 20) fails whatever the order.
    assert!(outputs.iter().any(|o| matches!(
        o,
        BankOutput::Rejected(Rejection::InsufficientFunds { amount: 20, .. })
    )));
}

// ---------------------------------------------------------------- cluster config

#[test]
fn config_local_default() {
    let c = ClusterConfig::local_default();
    assert_eq!(c, ClusterConfig::default());
    assert_eq!(c.ids(), [1, 2, 3, 4, 5]);
    assert_eq!(c.addr(3), Some("127.0.0.1:7003".parse().unwrap()));
    assert_eq!(c.addr(6), None);
    assert_eq!(c.cluster_id, DEFAULT_CLUSTER_ID);
    assert_eq!(c.checkpoint_interval, 1000);
    c.validate().unwrap();
    assert_eq!(
        ClusterConfig::from_toml_str(&c.to_toml_string()).unwrap(),
        c
    );
}

#[test]
fn config_parses() {
    let c = ClusterConfig::from_toml_str(
        r#"
        cluster_id = 42
        checkpoint_interval = 50

        [[nodes]]
        id = 2
        addr = "127.0.0.1:7002"

        [[nodes]]
        id = 9
        addr = "[::1]:9000"
        "#,
    )
    .unwrap();
    assert_eq!(c.cluster_id, 42);
    assert_eq!(c.checkpoint_interval, 50);
    assert_eq!(c.ids(), [2, 9]);
    assert_eq!(c.node(9).unwrap().addr, "[::1]:9000".parse().unwrap());

    let d = ClusterConfig::from_toml_str("[[nodes]]\nid = 1\naddr = \"10.0.0.1:1\"\n").unwrap();
    assert_eq!(d.cluster_id, DEFAULT_CLUSTER_ID);
    assert_eq!(d.checkpoint_interval, DEFAULT_CHECKPOINT_INTERVAL);
}

fn config_err(text: &str) -> ConfigError {
    ClusterConfig::from_toml_str(text).unwrap_err()
}

#[test]
fn config_validation() {
    let node = |id: u64, port: u16| format!("[[nodes]]\nid = {id}\naddr = \"127.0.0.1:{port}\"\n");

    let e = config_err("nodes = []\n");
    assert!(matches!(e, ConfigError::NoNodes), "{e:?}");
    assert_eq!(e.to_string(), "no nodes configured");

    let e = config_err(&node(0, 7001));
    assert!(matches!(e, ConfigError::ZeroId), "{e:?}");

    let e = config_err(&(node(1, 7001) + &node(1, 7002)));
    assert!(matches!(e, ConfigError::DuplicateId(1)), "{e:?}");
    assert_eq!(e.to_string(), "node id 1 is listed twice");

    let e = config_err(&(node(1, 7001) + &node(2, 7001)));
    assert!(
        matches!(e, ConfigError::DuplicateAddr(a) if a.port() == 7001),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "address 127.0.0.1:7001 is listed twice");

    let e = config_err(&format!("checkpoint_interval = 0\n{}", node(1, 7001)));
    assert!(matches!(e, ConfigError::ZeroCheckpointInterval), "{e:?}");

    let many: String = (1..=65).map(|i| node(i, 7000 + i as u16)).collect();
    let e = config_err(&many);
    assert!(
        matches!(e, ConfigError::TooManyNodes { count: 65, max: 64 }),
        "{e:?}"
    );
}

#[test]
fn config_parse_errors() {
    for text in [
        "",                                                           // no nodes key
        "cluster_id = 1\n",                                           // no nodes key
        "[[nodes]]\nid = 1\naddr = \"localhost:7001\"\n",             // host name
        "[[nodes]]\nid = 1\naddr = \"127.0.0.1\"\n",                  // no port
        "[[nodes]]\nid = -1\naddr = \"127.0.0.1:1\"\n",               // negative id
        "[[nodes]]\nid = 1\naddr = \"127.0.0.1:1\"\nport = 3\n",      // unknown key
        "clusterid = 1\n[[nodes]]\nid = 1\naddr = \"127.0.0.1:1\"\n", // typo
        "[[nodes]\nid = 1\n",                                         // not TOML
    ] {
        let e = config_err(text);
        assert!(matches!(e, ConfigError::Parse { .. }), "{text:?}: {e:?}");
        let text = e.to_string();
        assert!(text.starts_with("invalid cluster config"), "{text}");
        assert!(!text.contains('\n'), "one line: {text:?}");
    }
    let e = config_err("[[nodes]]\nid = 1\naddr = \"127.0.0.1:1\"\nport = 3\n");
    assert!(
        e.to_string()
            .starts_with("invalid cluster config at line 4: unknown field `port`"),
        "{e}"
    );
}

/// A file in the temporary directory, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, contents: &[u8]) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("bank-app-test-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn config_load() {
    let text = ClusterConfig::local_default().to_toml_string();
    let f = TempFile::new("ok.toml", text.as_bytes());
    assert_eq!(
        ClusterConfig::load(&f.0).unwrap(),
        ClusterConfig::local_default()
    );

    let big = TempFile::new("big.toml", &vec![b'#'; MAX_CONFIG_BYTES as usize + 1]);
    let e = ClusterConfig::load(&big.0).unwrap_err();
    assert!(matches!(e, ConfigError::TooLarge { .. }), "{e:?}");
    assert!(
        e.to_string().ends_with("is larger than 1048576 bytes"),
        "{e}"
    );

    let bad = TempFile::new("bad.toml", b"\xff\xfe");
    let e = ClusterConfig::load(&bad.0).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }), "{e:?}");

    let invalid = TempFile::new("invalid.toml", b"nodes = []\n");
    assert!(matches!(
        ClusterConfig::load(&invalid.0),
        Err(ConfigError::NoNodes)
    ));

    let missing = std::env::temp_dir().join("bank-app-test-does-not-exist.toml");
    let e = ClusterConfig::load(&missing).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }), "{e:?}");
    assert!(e.to_string().starts_with("cannot read "), "{e}");
}
