#!/usr/bin/env bash
# Read latency side by side: five durable `bank node` processes on 127.0.0.1, then
# `bank bench` rounds interleaved: balance reads without a log round (read index),
# the same reads through the log, and transfers, each ROUNDS times.
#
#   scripts/read-bench.sh [OPS] [CLIENTS] [ROUNDS]
#   scripts/read-bench.sh 20000 1 3      # one client: latency of a lone operation
#   scripts/read-bench.sh 50000 64 3     # 64 clients: throughput and tail latency
#
# Ports 17101-17105; everything it starts is killed on exit, and its temp dir removed.
# NODE_ARGS, if set, is added to every `bank node` command line (e.g.
# NODE_ARGS="--requests-per-slot 64").
set -euo pipefail
ops=${1:-20000}
clients=${2:-1}
rounds=${3:-3}
cd "$(dirname "$0")/.."
cargo build --release -q -p bank-app
bank=target/release/bank
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
{
    echo "cluster_id = 7"
    for i in 1 2 3 4 5; do
        printf '[[nodes]]\nid = %d\naddr = "127.0.0.1:1710%d"\n' "$i" "$i"
    done
} > "$work/cluster.toml"
for i in 1 2 3 4 5; do
    RUST_LOG=warn "$bank" node --id "$i" --config "$work/cluster.toml" --data-dir "$work/n$i" \
        ${NODE_ARGS:-} 2> "$work/n$i.log" &
    pids+=($!)
done
for _ in $(seq 100); do
    [ "$("$bank" db --config "$work/cluster.toml" --json 2>/dev/null | grep -c balances)" = 5 ] && break
    sleep 0.1
done
for r in $(seq "$rounds"); do
    for w in reads logged-reads transfers; do
        printf 'round %s %-13s ' "$r" "$w"
        "$bank" bench --config "$work/cluster.toml" --quiet --workload "$w" \
            --transfers "$ops" --clients "$clients"
    done
done
