#!/bin/sh
# bench/run.sh - Treaty's benchmark, everything in one invocation
# (`make bench` runs `BUILD=build sh bench/run.sh` after building).
#
#   1. a throwaway PostgreSQL 15 (scripts/pgtmp.sh: fsync = on,
#      synchronous_commit = on) with the databases treaty_journal, bank_a,
#      bank_b and bench (pgbench's table bench_insert);
#   2. treatyd (log_level warn, journal retention 1 day so nothing measured is
#      collected), K noop participants (services noop-1..noop-K) and
#      BANK_INSTANCES bank_service processes for each of bank-a and bank-b;
#   3. BENCH_REPS repetitions of six runs, each workload right next to its
#      baseline at the same client count, the order flipped every other
#      repetition so that drift on a noisy machine hits both alike:
#        pgbench single-row INSERT @ NOOP_CLIENTS   vs  2pc-noop @ NOOP_CLIENTS
#        pgbench single-row INSERT @ 1              vs  2pc-noop @ 1 (latency)
#        direct-bank @ BANK_CLIENTS                 vs  2pc-bank @ BANK_CLIENTS
#      and saga-noop (3 steps over the noop services) @ NOOP_CLIENTS right
#      after 2pc-noop, compared with that repetition's pgbench;
#   3b. unless BENCH_MEMREC=0, the memory and recovery measurements, each on a
#      treatyd of its own (so the closed-loop runs' state does not count):
#        memory: 2pc-hold holds BENCH_HOLD (100000) transactions in flight
#          against K noop_participant --hold (they never vote); treatyd's
#          VmRSS growth / BENCH_HOLD;
#        recovery: BENCH_HOLD COMMIT records without END inserted with SQL
#          into a fresh journal; time from starting treatyd to its first
#          answer to a client query (query-probe);
#   3c. unless BENCH_SOAK=0, the soak: 2pc-noop at NOOP_CLIENTS for
#      BENCH_SOAK seconds (300) on a treatyd with the default configuration
#      (only listen and the journal set), treatyd's VmRSS printed every 30 s;
#      the target is a flat line: RSS at the end <= 1.2 x RSS after 1 minute;
#   4. the comparison table with ratios, medians and the issue's targets on
#      stdout; every run's figures in $BUILD/bench/results.json.
# Everything started here is stopped, and the cluster removed, on exit (also
# on failure or ^C). Exit status: 0 when every run completed (targets missed
# are reported, not failed), 1 otherwise.
#
# Knobs (environment): BENCH_SECONDS (10), BENCH_WARMUP (2), BENCH_REPS (3),
# BENCH_NOOP_CLIENTS (64), BENCH_BANK_CLIENTS (16), BENCH_PARTICIPANTS (2),
# BENCH_BANK_INSTANCES (= BENCH_BANK_CLIENTS), BENCH_SAGA_STEPS (3),
# BENCH_MEMREC (1), BENCH_HOLD (100000), BENCH_SOAK (300; 0 skips it),
# BENCH_KEEP=1 keeps the logs.
set -u
BUILD=${BUILD:-build}
TOP=$(cd "$(dirname "$0")/.." && pwd)
cd "$TOP" || exit 1
BIN="$TOP/$BUILD/bin"
OUT="$TOP/$BUILD/bench"
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PSQL="$PGBIN/psql"
[ -x "$PSQL" ] || PSQL=psql
PGBENCH="$PGBIN/pgbench"
[ -x "$PGBENCH" ] || PGBENCH=pgbench

T=${BENCH_SECONDS:-10}
W=${BENCH_WARMUP:-2}
REPS=${BENCH_REPS:-3}
NOOP_CLIENTS=${BENCH_NOOP_CLIENTS:-64}
BANK_CLIENTS=${BENCH_BANK_CLIENTS:-16}
K=${BENCH_PARTICIPANTS:-2}
BANK_INSTANCES=${BENCH_BANK_INSTANCES:-$BANK_CLIENTS}
SAGA_STEPS=${BENCH_SAGA_STEPS:-3}
MEMREC=${BENCH_MEMREC:-1}
HOLD=${BENCH_HOLD:-100000}
SOAK=${BENCH_SOAK:-300}

WORK=$(mktemp -d /tmp/treaty-bench.XXXXXX)
PGDIR=""
PIDS=""
mkdir -p "$OUT"

say() { printf '\n== %s\n' "$*" >&2; }
fail() { printf 'bench: %s\n' "$*" >&2; exit 1; }

cleanup() {
    rc=$?
    trap - EXIT INT TERM
    for p in $PIDS; do kill -TERM "$p" 2>/dev/null; done
    for p in $PIDS; do
        n=0
        while kill -0 "$p" 2>/dev/null && [ "$n" -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    [ -n "$PGDIR" ] && sh "$TOP/scripts/pgtmp.sh" stop "$PGDIR"
    if [ "$rc" -ne 0 ] || [ "${BENCH_KEEP:-0}" = 1 ]; then
        if [ "$rc" -ne 0 ]; then
            for f in "$WORK"/*.log; do
                [ -f "$f" ] || continue
                printf '\n---- last lines of %s\n' "$f" >&2
                tail -n 15 "$f" >&2
            done
        fi
        printf 'bench: logs kept in %s\n' "$WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for b in treatyd bank_service treaty-bench noop_participant; do
    [ -x "$BIN/$b" ] || fail "$BIN/$b is missing: run make bench (or make all bench-bin)"
done
command -v "$PGBENCH" >/dev/null 2>&1 || fail "pgbench not found"

# --------------------------------------------------------- the machine
NPROC=$(nproc)
CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
MEM_TOTAL=$(free -h | awk '/^Mem:/ {print $2}')
KERNEL=$(uname -r)
STARTED=$(date -u '+%Y-%m-%dT%H:%M:%SZ')
# What was measured: the commit (with "+dirty" for local changes) and the binary.
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git status --porcelain 2>/dev/null | head -n 1)" ] && REV="$REV+dirty"
TREATYD_SUM=$(sha256sum "$BIN/treatyd" | cut -c 1-12)

# --------------------------------------------------------- PostgreSQL
PGDIR=$(mktemp -d /tmp/treaty-bench-pg.XXXXXX)
say "throwaway PostgreSQL in $PGDIR (fsync = on, synchronous_commit = on)"
BASE=$(sh scripts/pgtmp.sh start "$PGDIR") || fail "could not start PostgreSQL"
PGVERSION=$("$PSQL" "$BASE dbname=postgres" -Atqc "SHOW server_version")
for db in treaty_journal bank_a bank_b bench treaty_hold treaty_recover treaty_soak; do
    "$PSQL" "$BASE dbname=postgres" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE $db" >/dev/null ||
        fail "cannot create database $db"
done
"$PSQL" "$BASE dbname=bench" -q -v ON_ERROR_STOP=1 \
    -c "CREATE TABLE bench_insert (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v integer NOT NULL)" ||
    fail "cannot create bench_insert"
printf 'INSERT INTO bench_insert (v) VALUES (1);\n' >"$WORK/insert.sql"
for s in fsync synchronous_commit wal_sync_method; do
    printf '   %s = %s\n' "$s" "$("$PSQL" "$BASE dbname=postgres" -Atqc "SHOW $s")" >&2
done

# --------------------------------------------- treatyd and participants
p=$((18600 + $$ % 1000))
while ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; do p=$((p + 1)); done
EP="tcp://127.0.0.1:$p"
cat >"$WORK/treatyd.conf" <<EOF
# written by bench/run.sh
listen = "$EP";
log_level = "warn";
journal = { conninfo = "$BASE dbname=treaty_journal"; retention_s = 86400; gc_interval_ms = 600000; };
EOF
say "treatyd at $EP, $K noop participants, $BANK_INSTANCES bank_service instances per bank"
"$BIN/treatyd" -c "$WORK/treatyd.conf" >"$WORK/treatyd.log" 2>&1 &
TREATYD=$!
PIDS="$PIDS $TREATYD"
i=1
while [ $i -le "$K" ]; do
    "$BIN/noop_participant" --endpoint "$EP" --service "noop-$i" --instance n1 >"$WORK/noop-$i.log" 2>&1 &
    PIDS="$PIDS $!"
    i=$((i + 1))
done
# The accounts table first: bank_service's CREATE TABLE IF NOT EXISTS is not
# safe when many instances start at once against a database without it.
for bank in a b; do
    "$PSQL" "$BASE dbname=bank_$bank" -q -v ON_ERROR_STOP=1 -c "CREATE TABLE accounts (id text PRIMARY KEY,
        balance bigint NOT NULL CHECK (balance >= 0))" || fail "cannot create bank_$bank.accounts"
done
for bank in a b; do
    i=1
    while [ $i -le "$BANK_INSTANCES" ]; do
        "$BIN/bank_service" --endpoint "$EP" --service "bank-$bank" --instance "$bank$i" \
            --db "$BASE dbname=bank_$bank" >"$WORK/bank-$bank$i.log" 2>&1 &
        PIDS="$PIDS $!"
        i=$((i + 1))
    done
done
n=0
while :; do
    for pid in $PIDS; do kill -0 "$pid" 2>/dev/null || fail "a process ended during start-up (see the logs)"; done
    ready=$(cat "$WORK"/noop-*.log "$WORK"/bank-*.log 2>/dev/null | grep -c 'ready')
    [ "$ready" -ge $((K + 2 * BANK_INSTANCES)) ] && break
    [ $n -lt 300 ] || fail "the participants did not start within 30 s"
    sleep 0.1
    n=$((n + 1))
done
sleep 1 # a heartbeat, so that every bank instance is registered

# ------------------------------------------------------------ the runs
RUNS="$WORK/runs"
mkdir -p "$RUNS"
FAILED=0

# busy and total jiffies of the machine (first line of /proc/stat)
jiffies() { awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat; }

# jget FILE KEY: a value of the flat JSON objects written below and by treaty-bench
jget() { sed -n "s/^  \"$2\": \\(.*\\)\$/\\1/p" "$1" | sed 's/,$//; s/^"//; s/"$//' | head -n 1; }

# pgbench_run CLIENTS NAME: pgbench's single-row INSERT for W + T seconds; the
# per-transaction log (-l) gives the same window as treaty-bench's (the first
# W seconds are warm-up) and exact latency percentiles. Writes $RUNS/NAME.json.
pgbench_run() {
    c=$1
    name=$2
    d="$WORK/$name"
    mkdir -p "$d"
    j=2
    [ "$c" -lt 2 ] && j=1
    x0=$("$PSQL" "$BASE dbname=bench" -Atqc "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
    c0=$("$PSQL" "$BASE dbname=bench" -Atqc "SELECT xact_commit FROM pg_stat_database WHERE datname = 'bench'")
    printf '  pgbench     %d clients, %d s (first %d s excluded) ...\n' "$c" $((W + T)) "$W" >&2
    j0=$(jiffies)
    (cd "$d" && "$PGBENCH" -n -c "$c" -j "$j" -T $((W + T)) -f "$WORK/insert.sql" -l --log-prefix="$d/tx" \
        "$BASE dbname=bench" >"$d/pgbench.out" 2>&1) || {
        cat "$d/pgbench.out" >&2
        FAILED=1
        return
    }
    j1=$(jiffies)
    busy=$(echo "$j0 $j1" | awk '{ printf "%.1f", ($4 > $2) ? 100 * ($3 - $1) / ($4 - $2) : 0 }')
    sleep 0.5 # pgbench's backends report their statistics when they exit
    x1=$("$PSQL" "$BASE dbname=bench" -Atqc "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
    c1=$("$PSQL" "$BASE dbname=bench" -Atqc "SELECT xact_commit FROM pg_stat_database WHERE datname = 'bench'")
    reported=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$d/pgbench.out" | tail -n 1)
    # columns: client tx latency_us script epoch_s epoch_us
    cat "$d"/tx.* | awk '{ e = $5 + $6 / 1e6; printf "%.6f %.6f %d\n", e, e - $3 / 1e6, $3 }' >"$d/all"
    t0=$(awk 'NR == 1 || $2 < m { m = $2 } END { printf "%.6f", m }' "$d/all")
    total=$(wc -l <"$d/all")
    awk -v a="$t0" -v w="$W" -v t="$T" '$1 >= a + w && $1 < a + w + t { print $3 }' "$d/all" | sort -n >"$d/lat"
    awk -v t="$T" -v total="$total" -v c="$c" -v x="$((x1 - x0))" -v pc="$((c1 - c0))" -v rep="${reported:-0}" -v busy="$busy" '
        { v[NR] = $1; s += $1 }
        function pct(p,   r) { r = int(p * NR + 0.999999); if (r < 1) r = 1; if (r > NR) r = NR; return v[r] }
        END {
            printf "{\n  \"tool\": \"pgbench\",\n  \"workload\": \"pgbench-insert\",\n  \"clients\": %d,\n", c
            printf "  \"seconds\": %d,\n  \"committed\": %d,\n  \"tps\": %.6g,\n", t, NR, NR / t
            if (NR > 0) printf "  \"lat_p50_us\": %d,\n  \"lat_p95_us\": %d,\n  \"lat_p99_us\": %d,\n  \"lat_max_us\": %d,\n  \"lat_mean_us\": %.6g,\n", pct(0.5), pct(0.95), pct(0.99), v[NR], s / NR
            printf "  \"pg_commits_per_txn\": %.6g,\n", (total > 0) ? pc / total : 0
            printf "  \"pg_write_xacts_per_txn\": %.6g,\n", (total > 0) ? x / total : 0
            printf "  \"machine_busy_pct\": %s,\n", busy
            printf "  \"pgbench_reported_tps\": %s\n}\n", rep
        }' "$d/lat" >"$RUNS/$name.json"
    printf '  pgbench     %d clients: %s tx/s in the window, p50 %s us\n' "$c" \
        "$(jget "$RUNS/$name.json" tps)" "$(jget "$RUNS/$name.json" lat_p50_us)" >&2
}

# bench_run WORKLOAD CLIENTS NAME [extra treaty-bench flags]
bench_run() {
    wl=$1
    c=$2
    name=$3
    shift 3
    "$BIN/treaty-bench" --endpoint "$EP" --workload "$wl" --clients "$c" --seconds "$T" --warmup "$W" \
        --journal "$BASE dbname=treaty_journal" --coord-pid "$TREATYD" "$@" --json \
        >"$RUNS/$name.json" 2>"$WORK/$name.log"
    rc=$?
    grep -v NOTICE "$WORK/$name.log" | tail -n 9 >&2
    if [ $rc -ne 0 ]; then
        printf 'bench: treaty-bench %s failed (status %d)\n' "$wl" "$rc" >&2
        FAILED=1
    fi
    kill -0 "$TREATYD" 2>/dev/null || fail "treatyd died during $name"
}

rep=1
while [ $rep -le "$REPS" ]; do
    say "repetition $rep of $REPS ($T s measured after $W s warm-up per run)"
    first=base
    [ $((rep % 2)) -eq 0 ] && first=treaty
    for pair in noop lat bank; do
        for who in $first $( [ $first = base ] && echo treaty || echo base); do
            case "$pair.$who" in
            noop.base) pgbench_run "$NOOP_CLIENTS" "pgbench-c$NOOP_CLIENTS-r$rep" ;;
            noop.treaty)
                bench_run 2pc-noop "$NOOP_CLIENTS" "2pc-noop-c$NOOP_CLIENTS-r$rep" --participants "$K"
                bench_run saga-noop "$NOOP_CLIENTS" "saga-noop-c$NOOP_CLIENTS-r$rep" --participants "$K" \
                    --steps "$SAGA_STEPS" ;;
            lat.base) pgbench_run 1 "pgbench-c1-r$rep" ;;
            lat.treaty) bench_run 2pc-noop 1 "2pc-noop-c1-r$rep" --participants "$K" ;;
            bank.base)
                bench_run direct-bank "$BANK_CLIENTS" "direct-bank-c$BANK_CLIENTS-r$rep" \
                    --db-a "$BASE dbname=bank_a" --db-b "$BASE dbname=bank_b" ;;
            bank.treaty)
                bench_run 2pc-bank "$BANK_CLIENTS" "2pc-bank-c$BANK_CLIENTS-r$rep" \
                    --db-a "$BASE dbname=bank_a" --db-b "$BASE dbname=bank_b" ;;
            esac
        done
    done
    rep=$((rep + 1))
done

# ------------------------------------------- memory and recovery (3b)
# start_treatyd NAME DB: a treatyd of its own on a free port; sets EP2, T2, START_NS
start_treatyd() {
    q=$((p + 1 + $$ % 97))
    while ss -Hltn "sport = :$q" 2>/dev/null | grep -q .; do q=$((q + 1)); done
    EP2="tcp://127.0.0.1:$q"
    {
        echo "# written by bench/run.sh"
        echo "listen = \"$EP2\";"
        echo "log_level = \"info\";"
        echo "journal = { conninfo = \"$BASE dbname=$2\"; retention_s = 86400; gc_interval_ms = 600000; };"
        echo "limits = { max_inflight = $((2 * HOLD + 1000)); };"
    } >"$WORK/$1.conf"
    START_NS=$(date +%s%N)
    "$BIN/treatyd" -c "$WORK/$1.conf" >"$WORK/$1.log" 2>&1 &
    T2=$!
    PIDS="$PIDS $T2"
}
stop_pid() { kill -KILL "$1" 2>/dev/null; wait "$1" 2>/dev/null; }

if [ "$MEMREC" = 1 ]; then
    say "memory: $HOLD transactions held in flight (participants that never vote)"
    start_treatyd hold treaty_hold
    HOLD_PIDS=""
    i=1
    while [ $i -le "$K" ]; do
        "$BIN/noop_participant" --endpoint "$EP2" --service "hold-$i" --instance h1 --hold >"$WORK/hold-$i.log" 2>&1 &
        HOLD_PIDS="$HOLD_PIDS $!"
        PIDS="$PIDS $!"
        i=$((i + 1))
    done
    n=0
    while [ "$(cat "$WORK"/hold-*.log 2>/dev/null | grep -c ready)" -lt "$K" ] && [ $n -lt 100 ]; do
        sleep 0.1
        n=$((n + 1))
    done
    sleep 1.5 # registered by a heartbeat
    "$BIN/treaty-bench" --endpoint "$EP2" --workload 2pc-hold --hold "$HOLD" --participants "$K" \
        --timeout-ms 600000 --coord-pid "$T2" --json >"$RUNS/memory.json" 2>"$WORK/memory.log" || FAILED=1
    cat "$WORK/memory.log" >&2
    stop_pid "$T2"
    for h in $HOLD_PIDS; do kill -TERM "$h" 2>/dev/null; wait "$h" 2>/dev/null; done
    grep -h stopped "$WORK"/hold-*.log >&2

    say "recovery: $HOLD COMMIT records without END in the journal"
    for f in sql/0*.sql; do
        "$PSQL" "$BASE dbname=treaty_recover" -q -v ON_ERROR_STOP=1 -f "$f" >/dev/null || fail "cannot apply $f"
    done
    "$PSQL" "$BASE dbname=treaty_recover" -q -v ON_ERROR_STOP=1 -c "INSERT INTO treaty_journal (txid, kind, services)
        SELECT gen_random_uuid(), 'commit', ARRAY['noop-1', 'noop-2'] FROM generate_series(1, $HOLD)" ||
        fail "cannot fill treaty_recover"
    "$PSQL" "$BASE dbname=treaty_recover" -q -c "VACUUM ANALYZE treaty_journal"
    unfinished=$("$PSQL" "$BASE dbname=treaty_recover" -Atqc "SELECT count(DISTINCT txid) FROM treaty_records j
        WHERE NOT EXISTS (SELECT 1 FROM treaty_records e WHERE e.txid = j.txid AND e.kind = 'end')")
    start_treatyd recover treaty_recover
    "$BIN/treaty-bench" --endpoint "$EP2" --workload query-probe --seconds 120 --json >"$WORK/probe.json" \
        2>"$WORK/probe.log" || { cat "$WORK/probe.log" >&2; FAILED=1; }
    ans=$(jget "$WORK/probe.json" answered_realtime_ns)
    rss=$(sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$T2/status" 2>/dev/null)
    stop_pid "$T2"
    recovered_line=$(grep -i -m 1 'recover' "$WORK/recover.log" | cut -c 1-200 | tr -d '"\\')
    awk -v s="$START_NS" -v a="${ans:-0}" -v u="$unfinished" -v rss="${rss:-0}" -v line="$recovered_line" 'BEGIN {
        printf "{\n  \"tool\": \"run.sh\",\n  \"workload\": \"recovery\",\n  \"unfinished_txns\": %d,\n", u
        if (a > 0) printf "  \"serving_after_s\": %.3f,\n", (a - s) / 1e9; else printf "  \"serving_after_s\": null,\n"
        printf "  \"coord_rss_kb\": %d,\n  \"log\": \"%s\"\n}\n", rss, line
    }' >"$RUNS/recovery.json"
    printf '  recovery: %s unfinished transactions, serving after %s s (%s)\n' "$unfinished" \
        "$(jget "$RUNS/recovery.json" serving_after_s)" "$recovered_line" >&2
fi

# ------------------------------------------------------------ soak (3c)
if [ "$SOAK" -gt 0 ]; then
    say "soak: 2pc-noop at $NOOP_CLIENTS clients for $SOAK s, default configuration, treatyd's RSS every 30 s"
    q=$((p + 200 + $$ % 97))
    while ss -Hltn "sport = :$q" 2>/dev/null | grep -q .; do q=$((q + 1)); done
    EP3="tcp://127.0.0.1:$q"
    {
        echo "# written by bench/run.sh: defaults but for these"
        echo "listen = \"$EP3\";"
        echo "log_level = \"warn\";"
        echo "journal = { conninfo = \"$BASE dbname=treaty_soak\"; };"
    } >"$WORK/soak.conf"
    "$BIN/treatyd" -c "$WORK/soak.conf" >"$WORK/soak.log" 2>&1 &
    T3=$!
    PIDS="$PIDS $T3"
    i=1
    while [ $i -le "$K" ]; do
        "$BIN/noop_participant" --endpoint "$EP3" --service "noop-$i" --instance s1 >"$WORK/soak-noop-$i.log" 2>&1 &
        PIDS="$PIDS $!"
        i=$((i + 1))
    done
    n=0
    while [ "$(cat "$WORK"/soak-noop-*.log 2>/dev/null | grep -c ready)" -lt "$K" ] && [ $n -lt 100 ]; do
        sleep 0.1
        n=$((n + 1))
    done
    sleep 1.5 # registered by a heartbeat
    : >"$WORK/soak-rss"
    (
        s=0
        while kill -0 "$T3" 2>/dev/null && [ $s -le "$SOAK" ]; do
            sleep 30
            s=$((s + 30))
            r=$(sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$T3/status" 2>/dev/null)
            printf '%d %s\n' "$s" "${r:-0}" >>"$WORK/soak-rss"
            printf '  soak %4d s: treatyd VmRSS %s kB\n' "$s" "${r:-?}" >&2
        done
    ) &
    SAMPLER=$!
    "$BIN/treaty-bench" --endpoint "$EP3" --workload 2pc-noop --clients "$NOOP_CLIENTS" --seconds "$SOAK" \
        --warmup 0 --participants "$K" --coord-pid "$T3" --json >"$RUNS/soak-run.json" 2>"$WORK/soak-run.log" ||
        FAILED=1
    grep -v NOTICE "$WORK/soak-run.log" | tail -n 9 >&2
    kill "$SAMPLER" 2>/dev/null
    wait "$SAMPLER" 2>/dev/null
    # the last sample: the end of the run, however the sampler's sleeps fell
    r=$(sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$T3/status" 2>/dev/null)
    printf '%d %s\n' "$SOAK" "${r:-0}" >>"$WORK/soak-rss"
    printf '  soak %4d s (end): treatyd VmRSS %s kB\n' "$SOAK" "${r:-?}" >&2
    stop_pid "$T3"
    awk -v secs="$SOAK" -v tps="$(jget "$RUNS/soak-run.json" tps)" '
        { t[NR] = $1; r[NR] = $2 }
        END {
            a = 0; z = 0
            for (i = 1; i <= NR; i++) { if (t[i] == 60) a = r[i]; z = r[i] }
            printf "{\n  \"tool\": \"run.sh\",\n  \"workload\": \"soak\",\n  \"seconds\": %d,\n  \"tps\": %s,\n", secs, tps == "" ? "null" : tps
            printf "  \"rss_kb_1min\": %d,\n  \"rss_kb_end\": %d,\n  \"rss_end_over_1min\": %s,\n", a, z, (a > 0 ? sprintf("%.3f", z / a) : "null")
            printf "  \"rss_kb_every_30s\": \"%s\"\n}\n", ""
        }' "$WORK/soak-rss" >"$RUNS/soak.json"
    every=$(awk '{ printf "%s%s", (NR > 1 ? " " : ""), $2 }' "$WORK/soak-rss")
    sed -i "s/\"rss_kb_every_30s\": \"\"/\"rss_kb_every_30s\": \"$every\"/" "$RUNS/soak.json"
fi

# ------------------------------------------------------- the comparison
# median of the numbers on stdin ("null" when none)
median() {
    grep -E '^-?[0-9.eE+-]+$' | sort -g | awk '{ v[NR] = $1 }
        END { if (NR == 0) print "null"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# vals NAME KEY: the KEY of every repetition of run NAME (without -rN), one a line
vals() { r=1; while [ $r -le "$REPS" ]; do [ -f "$RUNS/$1-r$r.json" ] && jget "$RUNS/$1-r$r.json" "$2"; r=$((r + 1)); done; }
# ratios A KEYA B KEYB [scale]: per repetition A/B
ratios() {
    r=1
    while [ $r -le "$REPS" ]; do
        a=$( [ -f "$RUNS/$1-r$r.json" ] && jget "$RUNS/$1-r$r.json" "$2")
        b=$( [ -f "$RUNS/$3-r$r.json" ] && jget "$RUNS/$3-r$r.json" "$4")
        awk -v a="${a:-null}" -v b="${b:-null}" 'BEGIN { if (a != "null" && b != "null" && b + 0 != 0) printf "%.4g\n", a / b }'
        r=$((r + 1))
    done
}
fmt() { awk -v v="$1" -v d="${2:-1}" 'BEGIN { if (v == "null" || v == "") printf "%10s", "-"; else printf "%10.*f", d, v }'; }
row() { # LABEL DECIMALS VALUES...
    label=$1
    dec=$2
    shift 2
    printf '  %-44s' "$label"
    for v in "$@"; do fmt "$v" "$dec"; done
    printf '\n'
}
line_of() { # NAME KEY DEC LABEL: a row with each repetition and the median
    v=$(vals "$1" "$2" | tr '\n' ' ')
    m=$(vals "$1" "$2" | median)
    # shellcheck disable=SC2086,SC2046
    row "$4" "$3" $v $(pad "$(vals "$1" "$2" | wc -l)") "$m"
}
pad() { n=$1; while [ "$n" -lt "$REPS" ]; do printf 'null '; n=$((n + 1)); done; }
ratio_line() { # LABEL A KEYA B KEYB
    v=$(ratios "$2" "$3" "$4" "$5" | tr '\n' ' ')
    m=$(ratios "$2" "$3" "$4" "$5" | median)
    # shellcheck disable=SC2086,SC2046
    row "$1" 2 $v $(pad "$(ratios "$2" "$3" "$4" "$5" | wc -l)") "$m"
    RATIO_MEDIAN=$m
}
verdict() { # LABEL VALUE OP LIMIT
    awk -v l="$1" -v v="$2" -v op="$3" -v lim="$4" 'BEGIN {
        if (v == "null" || v == "") { printf "  %-60s %s\n", l, "not measured"; exit }
        ok = (op == "<=") ? (v + 0 <= lim + 0) : (v + 0 >= lim + 0)
        printf "  %-60s %10.3f %s %-6s %s\n", l, v, op, lim, ok ? "MET" : "NOT MET" }'
}

NC=$NOOP_CLIENTS
BC=$BANK_CLIENTS
hdr=$(r=1; while [ $r -le "$REPS" ]; do printf '%10s' "run $r"; r=$((r + 1)); done; printf '%10s' median)
{
    printf '\nTreaty benchmark, %s\n' "$STARTED"
    printf 'machine: %s x %s, %s RAM, Linux %s; PostgreSQL %s (fsync on, synchronous_commit on)\n' \
        "$NPROC" "$CPU_MODEL" "$MEM_TOTAL" "$KERNEL" "$PGVERSION"
    printf 'source %s, treatyd sha256 %s\n' "$REV" "$TREATYD_SUM"
    printf 'each run: %s s measured after %s s warm-up; %s repetitions; %s noop participants; %s bank instances per bank\n\n' \
        "$T" "$W" "$REPS" "$K" "$BANK_INSTANCES"
    printf '  %-44s%s\n' "throughput (committed tx/s)" "$hdr"
    line_of "2pc-noop-c$NC" tps 1 "2pc-noop, $K participants, $NC clients"
    line_of "pgbench-c$NC" tps 1 "pgbench single-row INSERT, $NC clients"
    ratio_line "  ratio 2pc-noop / pgbench" "2pc-noop-c$NC" tps "pgbench-c$NC" tps
    R_NOOP=$RATIO_MEDIAN
    line_of "saga-noop-c$NC" tps 1 "saga-noop, $SAGA_STEPS steps, $NC clients"
    ratio_line "  ratio saga-noop / pgbench" "saga-noop-c$NC" tps "pgbench-c$NC" tps
    R_SAGA=$RATIO_MEDIAN
    line_of "2pc-bank-c$BC" tps 1 "2pc-bank, $BC clients"
    line_of "direct-bank-c$BC" tps 1 "direct-bank, $BC clients"
    ratio_line "  ratio 2pc-bank / direct-bank" "2pc-bank-c$BC" tps "direct-bank-c$BC" tps
    R_BANK=$RATIO_MEDIAN
    line_of "2pc-noop-c1" tps 1 "2pc-noop, 1 client"
    line_of "pgbench-c1" tps 1 "pgbench single-row INSERT, 1 client"
    printf '\n  %-44s%s\n' "latency p50 / p99 (ms)" "$hdr"
    for n in "2pc-noop-c1" "pgbench-c1" "2pc-noop-c$NC" "pgbench-c$NC" "saga-noop-c$NC" "2pc-bank-c$BC" "direct-bank-c$BC"; do
        v=$(vals "$n" lat_p50_us | awk '{ printf "%s ", $1 / 1000 }')
        m=$(vals "$n" lat_p50_us | median | awk '{ print ($1 == "null") ? "null" : $1 / 1000 }')
        # shellcheck disable=SC2086,SC2046
        row "$n p50" 3 $v $(pad "$(vals "$n" lat_p50_us | wc -l)") "$m"
        v=$(vals "$n" lat_p99_us | awk '{ printf "%s ", $1 / 1000 }')
        m=$(vals "$n" lat_p99_us | median | awk '{ print ($1 == "null") ? "null" : $1 / 1000 }')
        # shellcheck disable=SC2086,SC2046
        row "$n p99" 3 $v $(pad "$(vals "$n" lat_p99_us | wc -l)") "$m"
    done
    ratio_line "  ratio p50 2pc-noop@1 / pgbench@1" "2pc-noop-c1" lat_p50_us "pgbench-c1" lat_p50_us
    R_LAT=$RATIO_MEDIAN
    printf '\n  %-44s%s\n' "per committed transaction" "$hdr"
    for n in "2pc-noop-c$NC" "2pc-noop-c1" "saga-noop-c$NC" "2pc-bank-c$BC" "direct-bank-c$BC" "pgbench-c$NC"; do
        line_of "$n" pg_commits_per_txn 3 "$n: Postgres commits"
        line_of "$n" pg_write_xacts_per_txn 3 "$n: writing Postgres xacts"
        case $n in
        2pc-* | saga-*)
            line_of "$n" journal_rows_per_txn 3 "$n: journal rows"
            line_of "$n" journal_forced_per_txn 3 "$n: forced journal commits"
            line_of "$n" coord_cpu_us_per_txn 1 "$n: coordinator CPU us"
            line_of "$n" coord_cpu_s_per_1000_txn 4 "$n: coordinator CPU s / 1000 tx"
            line_of "$n" coord_rss_kb 0 "$n: coordinator RSS kB (end)"
            line_of "$n" journal_backend_cpu_us_per_txn 1 "$n: journal PG backend CPU us"
            line_of "$n" journal_backend_busy_pct 0 "$n: journal PG backend busy %"
            ;;
        esac
    done
    printf '\n  %-44s%s\n' "outcomes (aborted + unknown + refused + failed)" "$hdr"
    for n in "2pc-noop-c$NC" "2pc-noop-c1" "saga-noop-c$NC" "2pc-bank-c$BC" "direct-bank-c$BC"; do
        v=$(r=1; while [ $r -le "$REPS" ]; do f="$RUNS/$n-r$r.json"; [ -f "$f" ] &&
            awk -v a="$(jget "$f" aborted)" -v u="$(jget "$f" unknown)" -v x="$(jget "$f" refused)" \
                -v y="$(jget "$f" failed)" 'BEGIN { print a + u + x + y }'; r=$((r + 1)); done | tr '\n' ' ')
        # shellcheck disable=SC2086,SC2046
        row "$n not committed" 0 $v
    done
    line_of "2pc-noop-c$NC" machine_busy_pct 0 "machine busy % during 2pc-noop@$NC"
    line_of "pgbench-c$NC" machine_busy_pct 0 "machine busy % during pgbench@$NC"
    MEM_B="null"
    REC_S="null"
    if [ -f "$RUNS/memory.json" ]; then
        MEM_B=$(jget "$RUNS/memory.json" coord_bytes_per_inflight_txn)
        printf '\n  memory: %s transactions in flight, treatyd VmRSS %s -> %s kB: %s bytes per transaction\n' \
            "$(jget "$RUNS/memory.json" held)" "$(jget "$RUNS/memory.json" coord_rss_before_kb)" \
            "$(jget "$RUNS/memory.json" coord_rss_after_kb)" "$MEM_B"
    fi
    if [ -f "$RUNS/recovery.json" ]; then
        REC_S=$(jget "$RUNS/recovery.json" serving_after_s)
        printf '  recovery: %s unfinished transactions in the journal, first client answer %s s after start (RSS %s kB)\n' \
            "$(jget "$RUNS/recovery.json" unfinished_txns)" "$REC_S" "$(jget "$RUNS/recovery.json" coord_rss_kb)"
    fi

    SOAK_R="null"
    if [ -f "$RUNS/soak.json" ]; then
        SOAK_R=$(jget "$RUNS/soak.json" rss_end_over_1min)
        printf '  soak: 2pc-noop@%s for %s s at %s tx/s, default configuration; treatyd VmRSS every 30 s (kB): %s\n' \
            "$NC" "$(jget "$RUNS/soak.json" seconds)" "$(jget "$RUNS/soak.json" tps)" \
            "$(jget "$RUNS/soak.json" rss_kb_every_30s)"
    fi

    printf '\ntargets (medians over the repetitions)\n'
    verdict "2pc-noop@$NC ($K participants) / pgbench INSERT@$NC throughput" "$R_NOOP" ">=" 2.0
    verdict "saga-noop@$NC ($SAGA_STEPS steps) / pgbench INSERT@$NC throughput" "$R_SAGA" ">=" 1.0
    verdict "2pc-bank@$BC / direct-bank@$BC throughput" "$R_BANK" ">=" 0.8
    verdict "p50 latency 2pc-noop@1 / pgbench INSERT@1" "$R_LAT" "<=" 2.0
    verdict "coordinator CPU us per 2pc-noop txn (@$NC)" "$(vals "2pc-noop-c$NC" coord_cpu_us_per_txn | median)" "<=" 50
    verdict "forced Postgres commits per 2pc-noop txn (@$NC, journal)" \
        "$(vals "2pc-noop-c$NC" journal_forced_per_txn | median)" "<=" 0.2
    verdict "coordinator bytes of RSS per in-flight txn ($HOLD held)" "$MEM_B" "<=" 2048
    verdict "seconds to serve after start, $HOLD unfinished in journal" "$REC_S" "<=" 3
    verdict "soak: treatyd RSS at the end / RSS after 1 minute" "$SOAK_R" "<=" 1.2
} >"$WORK/summary.txt"
cat "$WORK/summary.txt"

# --------------------------------------------------------- results.json
{
    printf '{\n  "started": "%s",\n  "source": "%s",\n  "treatyd_sha256": "%s",\n' "$STARTED" "$REV" "$TREATYD_SUM"
    printf '  "machine": {"nproc": %s, "cpu": "%s", "mem": "%s", "kernel": "%s", "postgres": "%s"},\n' \
        "$NPROC" "$CPU_MODEL" "$MEM_TOTAL" "$KERNEL" "$PGVERSION"
    printf '  "config": {"seconds": %s, "warmup": %s, "reps": %s, "noop_clients": %s, "bank_clients": %s, "participants": %s, "bank_instances": %s},\n' \
        "$T" "$W" "$REPS" "$NOOP_CLIENTS" "$BANK_CLIENTS" "$K" "$BANK_INSTANCES"
    printf '  "medians": {"ratio_2pc_noop_vs_pgbench_tps": %s, "ratio_saga_noop_vs_pgbench_tps": %s, "ratio_2pc_bank_vs_direct_tps": %s, "ratio_p50_2pc_noop_vs_pgbench_1client": %s, "coord_cpu_us_per_noop_txn": %s, "forced_commits_per_noop_txn": %s, "coord_bytes_per_inflight_txn": %s, "recovery_serving_after_s": %s},\n' \
        "$R_NOOP" "$R_SAGA" "$R_BANK" "$R_LAT" "$(vals "2pc-noop-c$NC" coord_cpu_us_per_txn | median)" \
        "$(vals "2pc-noop-c$NC" journal_forced_per_txn | median)" "$MEM_B" "$REC_S"
    printf '  "runs": {'
    sep=""
    for f in "$RUNS"/*.json; do
        printf '%s\n    "%s": ' "$sep" "$(basename "$f" .json)"
        sed 's/^/    /' "$f" | sed '1s/^    //'
        sep=","
    done
    printf '\n  }\n}\n'
} >"$OUT/results.json"
cp "$WORK/summary.txt" "$OUT/summary.txt"
printf '\nresults: %s/results.json (summary: %s/summary.txt)\n' "$OUT" "$OUT" >&2
[ "$FAILED" -eq 0 ] || fail "some runs failed (see above)"
exit 0
