#!/usr/bin/env bash
# Instructions per command of our core and of OmniPaxos in `benchmarks core`'s lockstep
# shape, counted by valgrind's callgrind. Unlike ops/s, instruction counts do not move
# with the load of a shared machine, so two builds compare to within a fraction of a
# percent in one run each: what `docs/benchmarks.md` uses to A/B a change to the core.
# (Instructions are not time: cache misses and branch mispredictions do not count, so
# confirm a change's gain in ops/s with `benchmarks core` before claiming it.)
#
#   scripts/instr-ratio.sh [BATCH...]        # default: 1 10 100 1000
#   BIN=/path/to/benchmarks scripts/instr-ratio.sh 1 10   # a binary built elsewhere
#
# Needs valgrind (Debian: apt-get install -y valgrind). About a minute per batch size.
set -euo pipefail
command -v valgrind >/dev/null || {
    echo "instr-ratio.sh needs valgrind (Debian: apt-get install -y valgrind)" >&2
    exit 1
}
[ $# -eq 0 ] && set -- 1 10 100 1000
cd "$(dirname "$0")/.."
if [ -z "${BIN:-}" ]; then
    cargo build --release -q -p benchmarks
    BIN=target/release/benchmarks
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# The inclusive count of `main`'s call to a function (its one call, "(1x)"): the
# callee lines of the call tree, which callgrind_annotate does not split by source file
# as it does a function's own lines.
inclusive() {
    callgrind_annotate --tree=calling --inclusive=yes "$1" 2>/dev/null |
        awk -v f="$2" '!done && index($0, ">") && index($0, f " (1x)") { gsub(",", "", $1); print $1; done = 1 }'
}
echo "| batch | commands | ours (instructions/command) | OmniPaxos (instructions/command) | ours / OmniPaxos (by instructions) |"
echo "|---:|---:|---:|---:|---:|"
for batch in "$@"; do
    case $batch in '' | *[!0-9]*) echo "not a batch size: $batch" >&2; exit 2 ;; esac
    # Enough commands that registration and elections (counted too) are noise.
    commands=$((batch == 1 ? 50000 : batch < 100 ? 100000 : 200000))
    valgrind --tool=callgrind --callgrind-out-file="$out/cg.$batch" \
        "$BIN" core --batches "$batch" --commands "$commands" --rounds 1 >/dev/null 2>&1
    ours=$(inclusive "$out/cg.$batch" "benchmarks::ours::run")
    omni=$(inclusive "$out/cg.$batch" "benchmarks::omni::run")
    awk -v b="$batch" -v n="$commands" -v o="$ours" -v p="$omni" \
        'BEGIN { printf "| %d | %d | %.0f | %.0f | %.3f |\n", b, n, o / n, p / n, p / o }'
done
