#!/bin/sh
# bench/ab.sh - the same workload against two trees in one invocation, to
# compare a change with the tree before it (`make bench-ab BASE=<rev>`).
#
#   BENCH_AB_BASE  bin directory of the base tree (treatyd, noop_participant,
#                  treaty-bench), e.g. /tmp/treaty-ab-base/build/bin
#   BENCH_AB_NEW   bin directory of the new tree (default: build/bin)
#   BENCH_AB_ROUNDS (5), BENCH_SECONDS (10), BENCH_WARMUP (2),
#   BENCH_NOOP_CLIENTS (64), BENCH_AB_WORKLOADS ("2pc-noop saga-noop")
#   BENCH_AB_NEW_METRICS=1  the new tree's treatyd serves /metrics
#                  (metrics.listen on a free port) and curl scrapes it
#                  every second while it runs, as Prometheus would
#                  (faster than the usual 15 s); the base tree's config
#                  stays as it was
#
# One throwaway PostgreSQL (scripts/pgtmp.sh: fsync on, synchronous_commit
# on). Every run gets a fresh journal database, its tree's treatyd, two of
# its tree's noop participants and its tree's treaty-bench. The runs of a
# round alternate the order (base new, new base, ...) so that drift on a
# noisy machine hits both alike. Printed: every run's throughput, p50
# latency and treatyd CPU per transaction, then per workload the medians and
# the median of the per-round ratios new/base. Not part of make test.
set -u
TOP=$(cd "$(dirname "$0")/.." && pwd)
BASE_BIN=${BENCH_AB_BASE:?set BENCH_AB_BASE to the bin directory of the base tree}
NEW_BIN=${BENCH_AB_NEW:-$TOP/build/bin}
ROUNDS=${BENCH_AB_ROUNDS:-5}
T=${BENCH_SECONDS:-10}
W=${BENCH_WARMUP:-2}
C=${BENCH_NOOP_CLIENTS:-64}
WORKLOADS=${BENCH_AB_WORKLOADS:-2pc-noop saga-noop}
PSQL=/usr/lib/postgresql/15/bin/psql
[ -x "$PSQL" ] || PSQL=psql
for d in "$BASE_BIN" "$NEW_BIN"; do
    for b in treatyd noop_participant treaty-bench; do
        [ -x "$d/$b" ] || { echo "ab: $d/$b is missing" >&2; exit 2; }
    done
done
WORK=$(mktemp -d /tmp/treaty-ab.XXXXXX)
PGDIR=$(mktemp -d /tmp/treaty-ab-pg.XXXXXX)
PIDS=""
cleanup() {
    for p in $PIDS; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    sh "$TOP/scripts/pgtmp.sh" stop "$PGDIR"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
BASE=$(sh "$TOP/scripts/pgtmp.sh" start "$PGDIR") || { echo "ab: no PostgreSQL" >&2; exit 1; }
port=$((19700 + $$ % 500))
n=0
: >"$WORK/results"

# run WHO BIN WORKLOAD: one run; appends "WHO WORKLOAD ROUND tps p50_us cpu_us" to results
run() {
    who=$1 bin=$2 wl=$3
    n=$((n + 1))
    db=ab_$n
    "$PSQL" "$BASE dbname=postgres" -q -c "CREATE DATABASE $db" >/dev/null || exit 1
    port=$((port + 1))
    while ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; do port=$((port + 1)); done
    ep="tcp://127.0.0.1:$port"
    d="$WORK/$n"
    mkdir -p "$d"
    printf 'listen = "%s";\nlog_level = "warn";\njournal = { conninfo = "%s dbname=%s"; retention_s = 86400; gc_interval_ms = 600000; };\n' \
        "$ep" "$BASE" "$db" >"$d/treatyd.conf"
    murl=""
    if [ "$who" = new ] && [ "${BENCH_AB_NEW_METRICS:-0}" = 1 ]; then
        port=$((port + 1))
        while ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; do port=$((port + 1)); done
        printf 'metrics = { listen = "127.0.0.1:%s"; };\n' "$port" >>"$d/treatyd.conf"
        murl="http://127.0.0.1:$port/metrics"
    fi
    "$bin/treatyd" -c "$d/treatyd.conf" >"$d/treatyd.log" 2>&1 &
    td=$!
    PIDS="$td"
    if [ -n "$murl" ]; then
        (while sleep 1; do curl -s -o "$d/metrics.txt" "$murl"; done) &
        PIDS="$PIDS $!"
    fi
    for i in 1 2; do
        "$bin/noop_participant" --endpoint "$ep" --service "noop-$i" --instance n1 >"$d/noop-$i.log" 2>&1 &
        PIDS="$PIDS $!"
    done
    k=0
    while [ "$(cat "$d"/noop-*.log 2>/dev/null | grep -c ready)" -lt 2 ] && [ $k -lt 100 ]; do
        sleep 0.1
        k=$((k + 1))
    done
    sleep 1.2 # registered by a heartbeat
    extra=""
    [ "$wl" = saga-noop ] && extra="--steps 3"
    # shellcheck disable=SC2086
    "$bin/treaty-bench" --endpoint "$ep" --workload "$wl" --clients "$C" --seconds "$T" --warmup "$W" \
        --participants 2 $extra --journal "$BASE dbname=$db" --coord-pid "$td" --json >"$d/r.json" 2>"$d/bench.log"
    tps=$(sed -n 's/^  "tps": \([0-9.e+]*\),*$/\1/p' "$d/r.json")
    p50=$(sed -n 's/^  "lat_p50_us": \([0-9.e+]*\),*$/\1/p' "$d/r.json")
    cpu=$(sed -n 's/^  "coord_cpu_us_per_txn": \([0-9.e+]*\),*$/\1/p' "$d/r.json")
    printf '%s %s %s %s %s %s\n' "$who" "$wl" "$round" "${tps:-0}" "${p50:-0}" "${cpu:-0}" | tee -a "$WORK/results"
    if [ -n "$murl" ]; then
        scraped=$(sed -n 's/^treaty_transactions_total{kind="2pc",outcome="committed"} //p' "$d/metrics.txt" 2>/dev/null)
        echo "ab: new treatyd's last scrape: ${scraped:-nothing} 2pc committed" >&2
    fi
    for p in $PIDS; do kill -TERM "$p" 2>/dev/null; done
    for p in $PIDS; do wait "$p" 2>/dev/null; done
    PIDS=""
}

echo "ab: base $BASE_BIN, new $NEW_BIN; $ROUNDS rounds of $T s (+$W s warm-up) at $C clients; who workload round tps p50_us cpu_us_per_txn"
round=1
while [ $round -le "$ROUNDS" ]; do
    for wl in $WORKLOADS; do
        if [ $((round % 2)) -eq 1 ]; then
            run base "$BASE_BIN" "$wl"
            run new "$NEW_BIN" "$wl"
        else
            run new "$NEW_BIN" "$wl"
            run base "$BASE_BIN" "$wl"
        fi
    done
    round=$((round + 1))
done

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo
printf '%-10s %10s %10s %8s   %10s %10s   %10s %10s\n' workload "base tx/s" "new tx/s" "ratio" "base p50" "new p50" "base cpu" "new cpu"
for wl in $WORKLOADS; do
    bt=$(awk -v w="$wl" '$1 == "base" && $2 == w { print $4 }' "$WORK/results" | median)
    nt=$(awk -v w="$wl" '$1 == "new" && $2 == w { print $4 }' "$WORK/results" | median)
    ratio=$(awk -v w="$wl" '$2 == w { v[$1 "," $3] = $4 } END { for (k in v) { split(k, a, ","); if (a[1] == "new" && v["base," a[2]] > 0) print v[k] / v["base," a[2]] } }' "$WORK/results" | median)
    bp=$(awk -v w="$wl" '$1 == "base" && $2 == w { print $5 }' "$WORK/results" | median)
    np=$(awk -v w="$wl" '$1 == "new" && $2 == w { print $5 }' "$WORK/results" | median)
    bc=$(awk -v w="$wl" '$1 == "base" && $2 == w { print $6 }' "$WORK/results" | median)
    nc=$(awk -v w="$wl" '$1 == "new" && $2 == w { print $6 }' "$WORK/results" | median)
    printf '%-10s %10.0f %10.0f %8.3f   %10.0f %10.0f   %10.1f %10.1f\n' "$wl" "$bt" "$nt" "$ratio" "$bp" "$np" "$bc" "$nc"
done
echo "(medians over $ROUNDS rounds; ratio: the median of the per-round ratios new/base; p50 in us; cpu: treatyd us per transaction)"
