#!/usr/bin/env bash
# Five `bank node` processes on 127.0.0.1 with durable data dirs, loaded by `bank bench`,
# sampling every node's resident memory (RSS) and data-dir size while it runs.
#
#   scripts/cluster-bench.sh [TRANSFERS] [CLIENTS] [CHECKPOINT_INTERVAL]
#   scripts/cluster-bench.sh 1000000 64 1000      # the README's figures
#
# Ports 17001-17005; everything it starts is killed on exit, and its temp dir removed.
# NODE_ARGS, if set, is added to every `bank node` command line (e.g.
# NODE_ARGS="--requests-per-slot 64").
set -euo pipefail
transfers=${1:-100000}
clients=${2:-64}
interval=${3:-1000}
cd "$(dirname "$0")/.."
cargo build --release -q -p bank-app
bank=target/release/bank
work=$(mktemp -d)
pids=()
sampler=
cleanup() {
    [ -n "$sampler" ] && kill "$sampler" 2>/dev/null || true
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
{
    echo "cluster_id = 7"
    echo "checkpoint_interval = $interval"
    for i in 1 2 3 4 5; do
        printf '[[nodes]]\nid = %d\naddr = "127.0.0.1:1700%d"\n' "$i" "$i"
    done
} > "$work/cluster.toml"
for i in 1 2 3 4 5; do
    RUST_LOG=warn "$bank" node --id "$i" --config "$work/cluster.toml" --data-dir "$work/n$i" \
        ${NODE_ARGS:-} 2> "$work/n$i.log" &
    pids+=($!)
done
# Wait until every node answers.
for _ in $(seq 100); do
    if "$bank" db --config "$work/cluster.toml" --json 2>/dev/null | grep -vq error; then
        [ "$("$bank" db --config "$work/cluster.toml" --json 2>/dev/null | grep -c balances)" = 5 ] && break
    fi
    sleep 0.1
done
# Sample RSS (KiB) and data-dir size (KiB) of every node every 2 s.
(
    set +e
    while true; do
        line=$(date +%s)
        for i in 0 1 2 3 4; do
            rss=$(awk '/VmRSS/ {print $2}' "/proc/${pids[$i]}/status" 2>/dev/null || echo 0)
            # Compaction deletes segments under du's feet: never let that end the sampler.
            disk=$( (du -sk "$work/n$((i + 1))" 2>/dev/null || true) | cut -f1)
            line="$line $rss $disk"
        done
        echo "$line"
        sleep 2
    done
) > "$work/samples" &
sampler=$!
"$bank" bench --config "$work/cluster.toml" --transfers "$transfers" --clients "$clients"
kill "$sampler" 2>/dev/null || true
sampler=
awk '
    { for (i = 0; i < 5; i++) { r = $(2 + 2 * i); d = $(3 + 2 * i); at[n, i] = r;
        if (r > rss[i]) rss[i] = r; if (d > disk[i]) disk[i] = d; last_rss[i] = r; last_disk[i] = d } n++ }
    END {
        printf "%d samples, every 2 s\n", n
        printf "node  max RSS MiB  last RSS MiB  max data-dir MiB  last data-dir MiB\n"
        for (i = 0; i < 5; i++)
            printf "n%d    %11.1f  %12.1f  %16.1f  %17.1f\n", i + 1, rss[i] / 1024, last_rss[i] / 1024, disk[i] / 1024, last_disk[i] / 1024
        # Flat or growing: each node'"'"'s RSS at every tenth of the run.
        printf "RSS MiB at each tenth of the run (10%%, 20%%, ..., 100%%):\n"
        for (i = 0; i < 5; i++) {
            printf "n%d  ", i + 1
            for (t = 1; t <= 10; t++) { k = int(n * t / 10) - 1; if (k < 0) k = 0; printf " %5.1f", at[k, i] / 1024 }
            printf "\n"
        }
    }' "$work/samples"
"$bank" db --config "$work/cluster.toml"
