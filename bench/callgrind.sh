#!/bin/sh
# bench/callgrind.sh - treatyd's instructions per transaction, a figure the
# machine's load does not move (docs/performance.md, Round 4).
#
#   sh bench/callgrind.sh BIN [WORKLOAD]
#
# BIN: a bin directory with treatyd, noop_participant and treaty-bench (a
# tree's build/bin); WORKLOAD: 2pc-noop (default) or saga-noop (3 steps).
# A throwaway PostgreSQL (scripts/pgtmp.sh), treatyd under valgrind
# --tool=callgrind, two noop participants, treaty-bench at 16 clients for
# 8 s; then callgrind_annotate's per-function totals divided by the
# transactions treatyd finished, with the dynamic linker's start-up left out
# (a fixed cost a shorter run would spread over fewer transactions). Prints
# the total and the 15 most expensive functions per transaction. Compare two
# trees by running it on each (the figures are exact counts, not timings).
set -u
BIN=$(cd "${1:?usage: callgrind.sh BIN [WORKLOAD]}" && pwd)
WL=${2:-2pc-noop}
TOP=$(cd "$(dirname "$0")/.." && pwd)
command -v valgrind >/dev/null && command -v callgrind_annotate >/dev/null ||
    { echo "callgrind.sh: needs valgrind (apt-get install valgrind)" >&2; exit 2; }
PSQL=/usr/lib/postgresql/15/bin/psql
[ -x "$PSQL" ] || PSQL=psql
WORK=$(mktemp -d /tmp/treaty-cg.XXXXXX)
PGDIR=$(mktemp -d /tmp/treaty-cg-pg.XXXXXX)
PIDS=""
cleanup() {
    for p in $PIDS; do kill -KILL "$p" 2>/dev/null; done
    sh "$TOP/scripts/pgtmp.sh" stop "$PGDIR"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
BASE=$(sh "$TOP/scripts/pgtmp.sh" start "$PGDIR") || exit 1
"$PSQL" "$BASE dbname=postgres" -q -c "CREATE DATABASE cg" || exit 1
port=$((19400 + $$ % 300))
while ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; do port=$((port + 1)); done
ep="tcp://127.0.0.1:$port"
printf 'listen = "%s";\nlog_level = "info";\njournal = { conninfo = "%s dbname=cg"; retention_s = 86400; gc_interval_ms = 600000; };\nadmin = { listen = ""; };\n' \
    "$ep" "$BASE" >"$WORK/t.conf"
"$BIN/treatyd" --check-config "$WORK/t.conf" >/dev/null 2>&1 ||
    sed -i '/^admin/d' "$WORK/t.conf" # a tree from before treatyctl
valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$BIN/treatyd" -c "$WORK/t.conf" >"$WORK/t.log" 2>&1 &
td=$!
PIDS=$td
k=0
until grep -q "serving on" "$WORK/t.log" 2>/dev/null || [ $k -ge 300 ]; do sleep 0.1; k=$((k + 1)); done
for i in 1 2; do
    "$BIN/noop_participant" --endpoint "$ep" --service "noop-$i" --instance n1 >"$WORK/n$i.log" 2>&1 &
    PIDS="$PIDS $!"
done
sleep 3 # registered by a heartbeat, under valgrind's pace
extra=""
[ "$WL" = saga-noop ] && extra="--steps 3"
# shellcheck disable=SC2086
"$BIN/treaty-bench" --endpoint "$ep" --workload "$WL" --clients 16 --seconds 8 --warmup 1 --participants 2 $extra \
    >"$WORK/bench.log" 2>&1 || { echo "callgrind.sh: treaty-bench failed" >&2; tail "$WORK/bench.log" >&2; exit 1; }
kill -TERM "$td"
wait "$td"
PIDS=$(echo "$PIDS" | cut -d' ' -f2-)
if [ "$WL" = saga-noop ]; then
    n=$(grep "stats:" "$WORK/t.log" | tail -n 1 | tr ' ' '\n' | sed -n 's/^sagas_completed=//p')
else
    n=$(grep "stats:" "$WORK/t.log" | tail -n 1 | tr ' ' '\n' | sed -n 's/^committed=//p')
fi
[ "${n:-0}" -gt 0 ] || { echo "callgrind.sh: no transaction finished" >&2; exit 1; }
callgrind_annotate --threshold=100 "$WORK/cg.out" 2>/dev/null | awk -v n="$n" -v wl="$WL" -v bin="$BIN" '
    /file:function/ { on = 1; next }
    on && /^-/ { next }
    on && NF == 0 { if (k) exit; next }
    on {
        v = $1; gsub(",", "", v)
        name = $0; sub(/^ *[0-9,]+ \([^)]*\) +/, "", name); sub(/ \[.*$/, "", name); sub(/ \([0-9,]+x\)$/, "", name)
        if (name ~ /dl-|_dl_|do_lookup|check_match/) next
        tot += v; k++; nm[k] = name; iv[k] = v
    }
    END {
        printf "callgrind: %s, %s at 16 clients, %d transactions: %.0f instructions per transaction (dynamic linker left out)\n", bin, wl, n, tot / n
        for (i = 1; i <= 15 && i <= k; i++) printf "  %8.0f  %s\n", iv[i] / n, substr(nm[i], 1, 100)
    }'
