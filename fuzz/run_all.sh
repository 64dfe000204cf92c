#!/usr/bin/env bash
# Runs the fuzz targets (all, or those named) one after the other, each for
# SECONDS (default 600) or a million executions, whichever comes first, with
# 2 GiB of memory, no single allocation over 512 MiB and 10 s per input.
# New inputs that add coverage are merged into fuzz/corpus/TARGET (pruned,
# smallest first); an input
# that crashes, hangs or runs out of memory is saved in fuzz/artifacts/TARGET
# (commit it: tests/fuzz_corpus.rs replays both folders on stable). Each
# run's libFuzzer output stays in fuzz/target/logs/TARGET.log.
#
#     fuzz/run_all.sh [SECONDS] [TARGET...]      # needs: cargo install cargo-fuzz
set -uo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
targets=${*:-$(cargo +nightly fuzz list)}
cargo +nightly fuzz build -a || exit 1
bin=target/x86_64-unknown-linux-gnu/release
# Keeps the committed corpus small: the seeds and hand-made regression inputs
# (seed-*, regression-*), then about 100 inputs spread
# over the merged set's sizes (libFuzzer's merge keeps one input per
# feature; small ones reach shallow code, large ones deep), at most 512 KiB.
prune() {
    local files step i total=0
    files=($(ls -Sr "$1" | grep -v -E '^(seed|regression)-'))
    step=$(( (${#files[@]} + 99) / 100 ))
    for i in "${!files[@]}"; do
        (( i % step == 0 )) || rm "$1/${files[$i]}"
    done
    for f in $(ls -Sr "$1" | grep -v -E '^(seed|regression)-'); do
        total=$((total + $(stat -c %s "$1/$f")))
        if [ "$total" -gt 524288 ]; then rm "$1/$f"; fi
    done
}
scratch=$(mktemp -d)
logs=target/logs
mkdir -p "$logs"
for t in $targets; do
    mkdir -p "artifacts/$t" "$scratch/$t"
    "$bin/$t" "$scratch/$t" "corpus/$t" -max_total_time="$secs" -runs=1000000 \
        -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 > "$logs/$t.log" 2>&1
    status=$?
    "$bin/$t" -merge=1 "corpus/$t" "$scratch/$t" > /dev/null 2>&1
    prune "corpus/$t"
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$t.log" | grep -o '[0-9]*$')
    took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$logs/$t.log" | grep -o 'in [0-9]*' | grep -o '[0-9]*')
    found=$(grep -m1 -E '^==[0-9]+==|panicked at|ERROR: libFuzzer' "$logs/$t.log")
    echo "$t: exit $status, ${runs:-?} executions in ${took:-?} s, corpus $(ls "corpus/$t" | wc -l) files${found:+, found: $found}"
done
rm -rf "$scratch"
