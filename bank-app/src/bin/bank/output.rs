//! Output helpers: JSON lines (with ids as strings), text on stdout.

use std::io::Write;

use anyhow::bail;
use bank_app::NodeResult;
use paxos_core::NodeId;
use serde_json::Value;

/// The keys whose integer values are session ids, client ids or registration nonces:
/// random or large 64-bit numbers, which JSON readers that hold numbers as doubles
/// (JavaScript, jq) would round above 2^53.
const ID_KEYS: [&str; 4] = ["client", "session", "nonce", "sessions"];

/// Turns every integer under an [`ID_KEYS`] key (or in an object or array under one)
/// into a string of its decimal digits.
pub(crate) fn ids_as_strings(value: &mut Value) {
    fn all_to_strings(value: &mut Value) {
        match value {
            Value::Number(n) if n.is_u64() || n.is_i64() => *value = Value::String(n.to_string()),
            Value::Array(items) => items.iter_mut().for_each(all_to_strings),
            Value::Object(map) => map.values_mut().for_each(all_to_strings),
            _ => {}
        }
    }
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                if ID_KEYS.contains(&key.as_str()) {
                    all_to_strings(item);
                } else {
                    ids_as_strings(item);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(ids_as_strings),
        _ => {}
    }
}

/// One JSON line on stdout, with ids as strings ([`ids_as_strings`]).
pub(crate) fn stdout_line(value: &Value) -> anyhow::Result<()> {
    let mut value = value.clone();
    ids_as_strings(&mut value);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}")?;
    Ok(())
}

pub(crate) fn stdout_text(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// The error for an inspection every replica failed to answer.
pub(crate) fn none_answered<T>(rows: &[NodeResult<T>]) -> anyhow::Result<()> {
    if rows.iter().any(|r| r.result.is_ok()) {
        return Ok(());
    }
    let first = rows
        .iter()
        .find_map(|r| r.result.as_ref().err())
        .map(|e| e.to_string())
        .unwrap_or_else(|| "no replicas configured".into());
    bail!("no replica of the cluster can be reached (is it running?): {first}")
}

pub(crate) fn node_list(nodes: &[NodeId]) -> String {
    let names: Vec<String> = nodes.iter().map(|n| format!("n{n}")).collect();
    names.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_become_strings_and_nothing_else_does() {
        let big = u64::MAX - 1;
        let mut value = json!({
            "node": 3,
            "slot": 9,
            "session": 12,
            "client": "A",
            "sessions": {"A": big, "B": 2},
            "entry": {"Command": {"client": big, "seq": 4, "command": {"Transfer": {"amount": 5}}}},
            "views": [{"entry": {"Register": {"nonce": big}}, "tick": 7}],
            "missing": {"session": null},
        });
        ids_as_strings(&mut value);
        assert_eq!(
            value,
            json!({
                "node": 3,
                "slot": 9,
                "session": "12",
                "client": "A",
                "sessions": {"A": big.to_string(), "B": "2"},
                "entry": {"Command": {"client": big.to_string(), "seq": 4, "command": {"Transfer": {"amount": 5}}}},
                "views": [{"entry": {"Register": {"nonce": big.to_string()}}, "tick": 7}],
                "missing": {"session": null},
            })
        );
    }
}
