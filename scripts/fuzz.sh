#!/usr/bin/env bash
# Runs tandem's fuzz targets (fuzz/, cargo-fuzz on nightly; CI does not run them):
# builds them, then runs each for SECONDS_EACH seconds (default 600), JOBS at a
# time (default 2), and prints libFuzzer's last lines for each.
#
#   scripts/fuzz.sh             # every target, 10 minutes each
#   scripts/fuzz.sh 60          # every target, one minute each
#   scripts/fuzz.sh 600 room_core media_core   # only these
#   JOBS=1 scripts/fuzz.sh      # one at a time
#
# Needs the nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
# `cargo install cargo-fuzz`). Each target starts from its committed seeds in
# fuzz/corpus/<target>/ and grows that corpus (the grown files are not committed);
# a crash is written to fuzz/artifacts/<target>/ and its log kept in
# fuzz/logs/<target>.log. docs/TESTING.md ("Fuzzing") records what each feeds and
# what the runs found. Exits non-zero when any target crashed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SECONDS_EACH="${1:-600}"
shift || true
TARGETS=("$@")
if [ "${#TARGETS[@]}" -eq 0 ]; then
    TARGETS=(media_core sdp_offer ice_fragment room_core)
fi
JOBS="${JOBS:-2}"

log() { printf '==> %s\n' "$*" >&2; }

log "building ${TARGETS[*]}"
for t in "${TARGETS[@]}"; do
    cargo +nightly fuzz build "$t"
done

mkdir -p fuzz/logs
run() {
    local t="$1" extra=()
    if [ -f "fuzz/$t.dict" ]; then
        extra+=("-dict=$ROOT/fuzz/$t.dict")
    fi
    # -timeout: an input taking over 10 s counts as a hang (a finding).
    cargo +nightly fuzz run "$t" -- -max_total_time="$SECONDS_EACH" -timeout=10 \
        -print_final_stats=1 "${extra[@]}" >"fuzz/logs/$t.log" 2>&1
}

failed=()
pids=()
names=()
wait_one() {
    local i="$1"
    if wait "${pids[$i]}"; then
        log "${names[$i]}: no crash"
    else
        log "${names[$i]}: FAILED (see fuzz/logs/${names[$i]}.log, fuzz/artifacts/${names[$i]}/)"
        failed+=("${names[$i]}")
    fi
    grep -E '^#[0-9]+.*(DONE|cov:)' "fuzz/logs/${names[$i]}.log" | tail -n 1 >&2 || true
    grep -E '^Done [0-9]+ runs' "fuzz/logs/${names[$i]}.log" >&2 || true
}

for t in "${TARGETS[@]}"; do
    log "running $t for ${SECONDS_EACH}s"
    run "$t" &
    pids+=("$!")
    names+=("$t")
    if [ "${#pids[@]}" -ge "$JOBS" ]; then
        wait_one 0
        pids=("${pids[@]:1}")
        names=("${names[@]:1}")
    fi
done
while [ "${#pids[@]}" -gt 0 ]; do
    wait_one 0
    pids=("${pids[@]:1}")
    names=("${names[@]:1}")
done

if [ "${#failed[@]}" -gt 0 ]; then
    log "crashed: ${failed[*]}"
    exit 1
fi
log "every target ran ${SECONDS_EACH}s without a crash"
