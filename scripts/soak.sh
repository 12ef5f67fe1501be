#!/usr/bin/env bash
# tandem's soak test (not run in CI): mixed load against a release build for a
# long time, then a check that the server is back where it started.
#
#   scripts/soak.sh                          # 30 minutes of load, SQLite
#   scripts/soak.sh --minutes 5              # a short smoke run
#   scripts/soak.sh --database-url postgres://postgres@127.0.0.1:5432/tandem_soak
#
# It builds `tandem` and `tandem-loadtest` in release mode, starts the server on
# free loopback ports with its own temporary data directory, and runs three lanes
# of load side by side, each a loop of bounded `tandem-loadtest` runs:
#   whep   a publisher and 8-32 WHEP viewers joining, watching, leaving;
#   sync   Watch Together rooms whose members connect, send commands, reactions
#          and chat, and leave;
#   enroll instructors' paid streams, credited users enrolling, balance reads.
# Every third whep and sync run is killed mid-window (SIGKILL): its clients vanish
# without a DELETE or a close frame, as crashed browsers do, and the server must
# reap them on its own (media idle timeout, room grace period).
#
# Every --interval seconds (10) it samples the server's /metrics into soak.csv:
# resident memory, open descriptors, tokio tasks, media sessions, WebSocket
# connections and rooms. Phases: warmup (one short round of every lane, so that
# the database pool, the allocator's arenas and the SQLite caches exist before
# the baseline), quiet (--settle seconds), baseline (3 samples), load, settle
# (--settle seconds), end (3 samples). It prints each series' start / peak / end
# and its least-squares slope over the load phase (per hour, all of it and its
# second half), then a verdict line, and exits 1 when:
#   - tasks, sessions, WebSocket connections or rooms at the end differ from the
#     baseline at all (every one of them belongs to a client, and every client
#     has gone);
#   - open descriptors differ by more than SOAK_FD_TOL (4: the database pool may
#     replace a connection it aged out, and the scrape's own socket comes and goes);
#   - resident memory ends more than max(SOAK_RSS_TOL_PCT % (20), SOAK_RSS_TOL_MIB
#     (32)) above the baseline: freed memory stays in the allocator's per-thread
#     arenas, and SQLite's page caches (2 MiB × 8 connections) fill as the
#     database grows; both are bounded, a leak is not;
#   - resident memory grows linearly: its least-squares slope over the second
#     half of the load phase (the allocator long warm by then), carried over the
#     whole load phase, exceeds the same tolerance. Only memory needs this test:
#     its end-vs-start tolerance could hide a slow leak, whereas a leak of tasks,
#     sessions, connections, rooms or descriptors cannot come back to the
#     baseline (their slopes during the load follow the load, and are printed).
# Exit 2: the run itself failed (build, server start, a lane with no good run).
#
# Everything runs on 127.0.0.0/8; every run is bounded in clients and time; the
# server and the generators are stopped on exit (Ctrl-C included).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MINUTES=30
SETTLE=90
INTERVAL=10
DATABASE_URL=""
OUT=""
BUILD=1
SERVER_ENV=()
FD_TOL="${SOAK_FD_TOL:-4}"
RSS_TOL_PCT="${SOAK_RSS_TOL_PCT:-20}"
RSS_TOL_MIB="${SOAK_RSS_TOL_MIB:-32}"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    cat <<'EOF'
Options:
  --minutes N          load phase length (default 30)
  --settle S           seconds of quiet before the baseline and after the load (default 90;
                       must exceed media.idle_timeout_seconds and rooms.grace_period_ms)
  --interval S         sampling period in seconds (default 10)
  --database-url URL   postgres://…@127.0.0.1/… (an empty database of its own); SQLite when absent
  --out DIR            where soak.csv, runs.csv and the logs go (default target/soak/<time>)
  --no-build           use the release binaries already built
  --server-env K=V     extra server environment, e.g. TANDEM_MEDIA__WORKERS=1 (repeatable)
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) MINUTES="$2"; shift 2 ;;
        --settle) SETTLE="$2"; shift 2 ;;
        --interval) INTERVAL="$2"; shift 2 ;;
        --database-url) DATABASE_URL="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --server-env) [[ "$2" == TANDEM_*=* ]] || { echo "soak.sh: --server-env wants TANDEM_KEY=VALUE" >&2; exit 2; }
            SERVER_ENV+=("$2"); shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "soak.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for n in "$MINUTES" "$SETTLE" "$INTERVAL"; do
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -gt 0 ] || { echo "soak.sh: want positive whole numbers, got $n" >&2; exit 2; }
done
if [ -n "$DATABASE_URL" ]; then
    # postgres://[user[:pass]@]host[:port]/db: the host must be loopback.
    host="${DATABASE_URL#*://}"; host="${host##*@}"; host="${host%%/*}"; host="${host%%:*}"
    if ! [[ "$DATABASE_URL" =~ ^postgres(ql)?:// ]] || ! [[ "$host" =~ ^(127\.[0-9]+\.[0-9]+\.[0-9]+|localhost)$ ]]; then
        echo "soak.sh: --database-url must be postgres://… on 127.0.0.0/8 (got host '$host')" >&2
        exit 2
    fi
fi

log() { printf '[soak %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- build --------------------------------------------------------------------
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ "$BUILD" = 1 ]; then
    log "cargo build --release -p tandem -p tandem-loadtest"
    cargo build --release -p tandem -p tandem-loadtest || exit 2
fi
TANDEM="$TARGET_DIR/release/tandem"
LOADTEST="$TARGET_DIR/release/tandem-loadtest"
for b in "$TANDEM" "$LOADTEST"; do
    [ -x "$b" ] || { echo "soak.sh: $b missing (build without --no-build)" >&2; exit 2; }
done

OUT="${OUT:-$TARGET_DIR/soak/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT/runs"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/tandem-soak.XXXXXX")"
DATA="$WORK/data"
CSV="$OUT/soak.csv"
RUNS="$OUT/runs.csv"
PHASE_FILE="$WORK/phase"

SERVER_PID=""
SAMPLER_PID=""
LANE_PIDS=()

# Stops what this script started, by pid: the lanes' current generator runs
# (`timeout` hands its TERM to the generator), the lanes, the sampler, the server.
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for f in "$WORK"/lane-*.pid; do
        [ -f "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null || true
    done
    for p in "${LANE_PIDS[@]}" $SAMPLER_PID; do
        kill -TERM "$p" 2>/dev/null || true
    done
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rand_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
JWT_SECRET="$(rand_hex 32)"
SERVICE_KEY="$(rand_hex 24)"

# --- server -------------------------------------------------------------------
log "starting $TANDEM (data dir $DATA${DATABASE_URL:+, $DATABASE_URL})"
mkdir -p "$DATA"
(
    export TANDEM_HTTP_ADDR=127.0.0.1:0 TANDEM_MEDIA_PORT=0 TANDEM_MEDIA_BIND=127.0.0.1 \
        TANDEM_PUBLIC_IP=127.0.0.1 TANDEM_DATA_DIR="$DATA" TANDEM_DEMO=false \
        TANDEM_JWT_SECRET="$JWT_SECRET" TANDEM_SERVICE_KEY="$SERVICE_KEY" NO_COLOR=1
    [ -n "$DATABASE_URL" ] && export TANDEM_DATABASE_URL="$DATABASE_URL"
    # Every client of the soak is one loopback address, and every whep run's
    # viewers share one subscribe token and one user: limits per address, token
    # or user would refuse the load itself, which is not what this run measures.
    # (Unknown keys are ignored, so these are harmless on a server without them;
    # the issue-11 fixes add them, names to be checked against config/default.toml.)
    export TANDEM_HTTP__MAX_CONNECTIONS_PER_IP=100000 \
        TANDEM_MEDIA__MAX_SESSIONS_PER_TOKEN=100000 TANDEM_MEDIA__MAX_SESSIONS_PER_USER=100000
    for kv in "${SERVER_ENV[@]}"; do export "${kv?}"; done
    [ -n "${TANDEM_SOAK_LOG:-}" ] && export RUST_LOG="$TANDEM_SOAK_LOG"
    exec "$TANDEM" </dev/null >"$OUT/server.log" 2>&1
) &
SERVER_PID=$!
BASE=""
for _ in $(seq 1 300); do
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "soak.sh: the server exited; see $OUT/server.log" >&2; tail -5 "$OUT/server.log" >&2; exit 2; }
    addr="$(sed -n 's/.*tandem listening.*http=\([0-9.]*:[0-9]*\).*/\1/p' "$OUT/server.log" | head -1)"
    if [ -n "$addr" ] && curl -fsS --max-time 2 "http://$addr/readyz" >/dev/null 2>&1; then
        BASE="http://$addr"
        break
    fi
    sleep 0.1
done
[ -n "$BASE" ] || { echo "soak.sh: the server was not ready within 30 s; see $OUT/server.log" >&2; exit 2; }
log "server pid $SERVER_PID at $BASE"

# --- sampler ------------------------------------------------------------------
# One row per --interval: seconds since start, phase, then the gauges. RSS and
# descriptors fall back to /proc/PID when the server lacks the gauges.
echo warmup >"$PHASE_FILE"
T0=$(date +%s)
sample_once() {
    local m now phase
    now=$(($(date +%s) - T0))
    phase="$(cat "$PHASE_FILE")"
    m="$(curl -fsS --max-time 5 "$BASE/metrics" 2>/dev/null || true)"
    printf '%s\n' "$m" | awk -v t="$now" -v phase="$phase" -v pid="$SERVER_PID" '
        /^#/ { next }
        { name = $1; sub(/\{.*/, "", name); v[name] += $NF; seen[name] = 1 }
        END {
            rss = v["tandem_process_resident_memory_bytes"]; fds = v["tandem_process_open_fds"]
            if (!seen["tandem_process_resident_memory_bytes"]) {
                while ((getline l < ("/proc/" pid "/status")) > 0) if (l ~ /^VmRSS:/) { split(l, a); rss = a[2] * 1024 }
            }
            if (!seen["tandem_process_open_fds"]) {
                cmd = "ls /proc/" pid "/fd 2>/dev/null | wc -l"; cmd | getline fds; close(cmd)
            }
            tasks = seen["tandem_runtime_alive_tasks"] ? v["tandem_runtime_alive_tasks"] : ""
            printf "%d,%s,%d,%d,%s,%d,%d,%d\n", t, phase, rss, fds, tasks, v["tandem_sessions"], v["tandem_room_connections"], v["tandem_rooms"]
        }'
}
echo "t_s,phase,rss_bytes,open_fds,tasks,sessions,ws_connections,rooms" >"$CSV"
(
    next=$(date +%s)
    while :; do
        sample_once >>"$CSV"
        next=$((next + INTERVAL))
        delay=$((next - $(date +%s)))
        [ "$delay" -gt 0 ] && sleep "$delay"
    done
) &
SAMPLER_PID=$!

# --- load lanes -----------------------------------------------------------------
echo "lane,run,start_s,planned_s,killed,rc" >"$RUNS"
COMMON=(--server "$BASE" --pid "$SERVER_PID" --quiet)

# run LANE N KILL_AFTER_S HARD_LIMIT_S CMD...: one bounded generator run, logged.
run() {
    local lane="$1" n="$2" kill_after="$3" limit="$4" rc=0 start killed=0
    shift 4
    start=$(($(date +%s) - T0))
    if [ "$kill_after" -gt 0 ]; then
        # --foreground: timeout kills only the generator (not its own group too), so
        # the shell does not report the planned kill as "Killed".
        timeout --foreground -s KILL "$kill_after" "$@" >>"$OUT/runs/$lane.log" 2>&1 &
        killed=1
    else
        timeout -k 10 "$limit" "$@" >>"$OUT/runs/$lane.log" 2>&1 &
    fi
    echo $! >"$WORK/lane-$lane.pid"
    wait $! || rc=$?
    rm -f "$WORK/lane-$lane.pid"
    echo "$lane,$n,$start,$limit,$killed,$rc" >>"$RUNS"
}

# Each lane loops until END (epoch seconds), cycling sizes and window lengths so
# that clients keep joining and leaving; the run in progress at END finishes.
whep_lane() {
    local end="$1" n=0 sizes=(8 16 32) windows=(10 20 30) v d k
    while [ "$(date +%s)" -lt "$end" ]; do
        v=${sizes[n % 3]}; d=${windows[(n / 3) % 3]}; k=0
        [ $((n % 3)) = 2 ] && k=$((d / 2 + 8))
        echo "--- whep run $n: $v viewers, ${d} s window, killed after ${k} s (0: not)" >>"$OUT/runs/whep.log"
        run whep "$n" "$k" $((d + 120)) "$LOADTEST" whep "${COMMON[@]}" \
            --tandem-bin "$TANDEM" --data-dir "$DATA" --stream "soak-$n" \
            --viewers "$v" --ramp 16 --duration "$d" --bitrate 800 --bare-seconds 0
        n=$((n + 1))
    done
}

sync_lane() {
    local end="$1" n=0 members=(4 8 16) windows=(15 30 10) m d k
    while [ "$(date +%s)" -lt "$end" ]; do
        m=${members[n % 3]}; d=${windows[(n / 3) % 3]}; k=0
        [ $((n % 3)) = 2 ] && k=$((d / 2 + 5))
        echo "--- sync run $n: 4 rooms × $m, ${d} s window, killed after ${k} s (0: not)" >>"$OUT/runs/sync.log"
        run sync "$n" "$k" $((d + 120)) "$LOADTEST" sync "${COMMON[@]}" \
            --jwt-secret "$JWT_SECRET" --rooms 4 --members "$m" --duration "$d" \
            --ramp 50 --command-rate 0.5 --reaction-rate 2 --chat-rate 1 --bare-seconds 0
        n=$((n + 1))
    done
}

enroll_lane() {
    local end="$1" n=0 users=(50 100 200) u
    while [ "$(date +%s)" -lt "$end" ]; do
        u=${users[n % 3]}
        echo "--- enroll run $n: $u users × 5 streams" >>"$OUT/runs/enroll.log"
        run enroll "$n" 0 90 "$LOADTEST" enroll "${COMMON[@]}" \
            --jwt-secret "$JWT_SECRET" --service-key "$SERVICE_KEY" \
            ${DATABASE_URL:+--database-url "$DATABASE_URL"} \
            --users "$u" --streams 5 --affordable 3 --concurrency 16 --max-seconds 20
        n=$((n + 1))
        # A pause: enrollment comes in bursts, and the database gets quiet spells.
        [ "$(date +%s)" -lt "$end" ] && sleep $((5 + n % 3 * 5))
    done
}

lanes() {
    local end="$1"
    LANE_PIDS=()
    whep_lane "$end" & LANE_PIDS+=($!)
    sync_lane "$end" & LANE_PIDS+=($!)
    enroll_lane "$end" & LANE_PIDS+=($!)
    wait "${LANE_PIDS[@]}" || true
    LANE_PIDS=()
}

phase() { echo "$1" >"$PHASE_FILE"; log "phase $1${2:+ ($2)}"; }

phase warmup "one round of every lane"
lanes "$(($(date +%s) + 1))"
phase quiet "${SETTLE} s"
sleep "$SETTLE"
phase baseline "$((3 * INTERVAL)) s"
sleep $((3 * INTERVAL))
phase load "$MINUTES min"
lanes "$(($(date +%s) + MINUTES * 60))"
phase settle "${SETTLE} s"
sleep "$SETTLE"
phase end "$((3 * INTERVAL)) s"
sleep $((3 * INTERVAL + 1))
kill -TERM "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""

# --- summary ----------------------------------------------------------------------
runs_summary="$(awk -F, 'NR > 1 && $2 != "" {
        total[$1]++
        # A planned kill ends in 137 (SIGKILL); one that finished before it is fine.
        if ($5 == 1 && $6 == 137) killed[$1]++; else if ($6 == 0) ok[$1]++; else bad[$1]++ }
    END { for (l in total) printf "%s %d %d %d %d\n", l, total[l], ok[l] + 0, killed[l] + 0, bad[l] + 0 }' "$RUNS" | sort)"
echo
echo "tandem soak: $MINUTES min of load, ${DATABASE_URL:+PostgreSQL}${DATABASE_URL:-SQLite}, samples every ${INTERVAL} s -> $CSV"
echo "generator runs (lane: total / ok / killed on purpose / failed):"
lane_fail=0
while read -r lane total ok killed bad; do
    [ -n "$lane" ] || continue
    printf '  %-7s %4d / %4d / %4d / %4d\n' "$lane" "$total" "$ok" "$killed" "$bad"
    [ "$ok" -gt 0 ] || lane_fail=1
done <<<"$runs_summary"

awk -F, -v fd_tol="$FD_TOL" -v rss_pct="$RSS_TOL_PCT" -v rss_mib="$RSS_TOL_MIB" '
    function median(a, n,   i, j, t) {
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    # Least-squares slope (per second) of column c over load rows lo..hi.
    function slope(c, lo, hi,   i, n, sx, sy, sxx, sxy, d) {
        n = 0; sx = sy = sxx = sxy = 0
        for (i = lo; i <= hi; i++) { n++; sx += lt[i]; sy += lv[c, i]; sxx += lt[i] * lt[i]; sxy += lt[i] * lv[c, i] }
        d = n * sxx - sx * sx
        return (n < 3 || d == 0) ? "" : (n * sxy - sx * sy) / d
    }
    function fmt(c, x) { return c == 3 ? sprintf("%.1f MiB", x / 1048576) : sprintf("%.0f", x) }
    function fmt_rate(c, x) { return x == "" ? "n/a" : (c == 3 ? sprintf("%+.1f MiB/h", x * 3600 / 1048576) : sprintf("%+.1f/h", x * 3600)) }
    NR == 1 { for (c = 3; c <= NF; c++) name[c] = $c; ncol = NF; next }
    {
        for (c = 3; c <= ncol; c++) {
            if ($c == "") continue
            if (!(c in peak) || $c + 0 > peak[c]) peak[c] = $c + 0
            if ($2 == "baseline") base[c, ++nb[c]] = $c + 0
            if ($2 == "end") fin[c, ++ne[c]] = $c + 0
        }
        if ($2 == "load") { nl++; lt[nl] = $1; for (c = 3; c <= ncol; c++) lv[c, nl] = $c + 0 }
    }
    END {
        load_s = nl > 1 ? lt[nl] - lt[1] : 0
        half = int(nl / 2) + 1
        printf "%-15s %12s %12s %12s %14s %16s  %s\n", "series", "start", "peak", "end", "slope (load)", "slope (2nd half)", "check"
        fail = ""
        for (c = 3; c <= ncol; c++) {
            if (!nb[c] || !ne[c]) { printf "%-15s %12s\n", name[c], "no data"; fail = fail " " name[c] "(no data)"; continue }
            for (i = 1; i <= nb[c]; i++) b[i] = base[c, i]; s = median(b, nb[c])
            for (i = 1; i <= ne[c]; i++) e[i] = fin[c, i]; f = median(e, ne[c])
            all = slope(c, 1, nl); late = (nl - half + 1 >= 6) ? slope(c, half, nl) : ""
            if (c == 3) { tol = s * rss_pct / 100; if (tol < rss_mib * 1048576) tol = rss_mib * 1048576 }
            else if (c == 4) tol = fd_tol
            else tol = 0
            check = "ok"
            if (c <= 4) {
                # Only growth fails: fewer descriptors at the end (a pool connection
                # aged out) or less memory is no leak.
                if (f - s > tol) { check = sprintf("end - start > %s", fmt(c, tol)); fail = fail " " name[c] }
                else if (c == 3 && late != "" && late * load_s > tol) { check = sprintf("grows: %s over the load phase > %s", fmt(c, late * load_s), fmt(c, tol)); fail = fail " " name[c] "(slope)" }
                else check = sprintf("ok (tolerance %s)", fmt(c, tol))
            } else if (f != s) { check = "not back to baseline"; fail = fail " " name[c] }
            else check = "ok (exact)"
            printf "%-15s %12s %12s %12s %14s %16s  %s\n", name[c], fmt(c, s), fmt(c, peak[c]), fmt(c, f), fmt_rate(c, all), fmt_rate(c, late), check
        }
        if (nl < 12) print "note: fewer than 12 load samples; the second-half slope needs 6 and means little below ~10 minutes"
        if (fail == "") { print "VERDICT: PASS - every series back to its baseline, no linear growth"; exit 0 }
        print "VERDICT: FAIL -" fail; exit 1
    }' "$CSV" && verdict=0 || verdict=$?

if [ "$lane_fail" = 1 ]; then
    echo "VERDICT: INVALID - a lane had no successful run (see $OUT/runs/*.log)"
    exit 2
fi
exit "$verdict"
