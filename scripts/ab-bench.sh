#!/usr/bin/env bash
# A/B of two `bank` binaries in one run: five durable `bank node` processes each, loaded
# by `bank bench --workload transfers`, rounds interleaved (A, B, A, B, ...), so that a
# change to the node is measured against the build before it on the same machine and
# load.
#
#   scripts/ab-bench.sh OLD_BANK NEW_BANK [TRANSFERS] [CLIENTS] [ROUNDS]
#   # e.g. build the old commit in a worktree, then:
#   scripts/ab-bench.sh ../old/target/release/bank target/release/bank 20000 64 2
#
# OLD_ARGS and NEW_ARGS, if set, are added to each side's `bank node` command line
# (e.g. NEW_ARGS="--requests-per-slot 64" against an OLD build without the flag).
# FSYNC_DELAY_US, if set, adds that many microseconds to each fdatasync and fsync of
# every node, in the thread that syncs: a slower disk than the machine's (needs a C
# compiler for scripts/slow-sync.c, loaded with LD_PRELOAD).
# Ports 17201-17205; every process it starts is killed on exit, its temp dir removed.
set -euo pipefail
old=${1:?usage: ab-bench.sh OLD_BANK NEW_BANK [TRANSFERS] [CLIENTS] [ROUNDS]}
new=${2:?usage: ab-bench.sh OLD_BANK NEW_BANK [TRANSFERS] [CLIENTS] [ROUNDS]}
ops=${3:-20000}
clients=${4:-64}
rounds=${5:-2}
work=$(mktemp -d)
pids=()
stop_nodes() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    pkill -9 -f -- "--config $work/" 2>/dev/null || true
    wait 2>/dev/null || true
    pids=()
}
cleanup() {
    stop_nodes
    rm -rf "$work"
}
trap cleanup EXIT
preload=
if [ -n "${FSYNC_DELAY_US:-}" ]; then
    cc -shared -fPIC -O2 -o "$work/slow-sync.so" "$(dirname "$0")/slow-sync.c" -ldl
    preload="$work/slow-sync.so"
fi
for r in $(seq "$rounds"); do
    for side in A B; do
        if [ "$side" = A ]; then bank=$old; args=${OLD_ARGS:-}; else bank=$new; args=${NEW_ARGS:-}; fi
        dir="$work/$side-$r"
        mkdir -p "$dir"
        {
            echo "cluster_id = 7"
            for i in 1 2 3 4 5; do
                printf '[[nodes]]\nid = %d\naddr = "127.0.0.1:1720%d"\n' "$i" "$i"
            done
        } > "$dir/cluster.toml"
        for i in 1 2 3 4 5; do
            LD_PRELOAD=$preload SLOW_SYNC_US=${FSYNC_DELAY_US:-0} RUST_LOG=warn \
                "$bank" node --id "$i" --config "$dir/cluster.toml" \
                --data-dir "$dir/n$i" $args 2> "$dir/n$i.log" &
            pids+=($!)
        done
        for _ in $(seq 100); do
            [ "$("$bank" db --config "$dir/cluster.toml" --json 2>/dev/null | grep -c balances)" = 5 ] && break
            sleep 0.1
        done
        printf 'round %s %s ' "$r" "$side"
        "$bank" bench --config "$dir/cluster.toml" --quiet --workload transfers \
            --transfers "$ops" --clients "$clients"
        stop_nodes
    done
done
