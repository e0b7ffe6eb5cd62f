#!/bin/sh
# demo.sh - the Treaty bank demo (`make demo` runs `BUILD=build sh examples/demo.sh`).
#
# Two banks, each a bank_service with its own PostgreSQL database, and the
# coordinator treatyd with its journal in a third database. bank_demo moves
# money between alice (bank-a) and bob (bank-b) in two-phase-commit transfers
# and checks that every transfer happened at both banks or at neither.
#
# PostgreSQL: $TREATY_PG (a base conninfo "host=... port=... user=...") when
# set, else a throwaway cluster (scripts/pgtmp.sh) removed on exit. The
# databases treaty_journal, bank_a and bank_b are dropped and created afresh.
# Everything started here is stopped on exit, also on failure or ^C.
# Part two, sagas: three shop_service participants (orders, inventory,
# payment) with databases shop_orders, shop_inventory and shop_payment, against
# the same treatyd; saga_demo runs order sagas through them (see saga_demo.c).
# Exit status: 0 only when both bank_demo and saga_demo exit 0.
set -u
BUILD=${BUILD:-build}
TOP=$(cd "$(dirname "$0")/.." && pwd)
cd "$TOP"
BIN="$TOP/$BUILD/bin"
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PSQL="$PGBIN/psql"
[ -x "$PSQL" ] || PSQL=psql
WORK=$(mktemp -d /tmp/treaty-demo.XXXXXX)
PGDIR=""
PIDS=""

say() { printf '\n== %s\n' "$*"; }
note() { printf '   %s\n' "$*"; }

cleanup() {
    rc=$?
    trap - EXIT INT TERM
    if [ -n "$PIDS" ]; then
        say "stopping treatyd and the participants (SIGTERM)"
        for p in $PIDS; do kill -TERM "$p" 2>/dev/null; done
        for p in $PIDS; do
            n=0
            while kill -0 "$p" 2>/dev/null && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
            kill -KILL "$p" 2>/dev/null
            wait "$p" 2>/dev/null
        done
    fi
    if [ "$rc" -ne 0 ] && ls "$WORK"/*.log >/dev/null 2>&1; then
        for f in "$WORK"/*.log; do
            [ -f "$f" ] || continue
            printf '\n---- last lines of %s\n' "$f"
            tail -n 25 "$f"
        done
        printf '\ndemo FAILED (status %s); logs kept in %s\n' "$rc" "$WORK"
    else
        [ "$rc" -eq 0 ] || printf '\ndemo FAILED (status %s)\n' "$rc"
        rm -rf "$WORK"
    fi
    if [ -n "$PGDIR" ]; then
        sh "$TOP/scripts/pgtmp.sh" stop "$PGDIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { printf 'demo: %s\n' "$*" >&2; exit 1; }

for b in treatyd bank_service bank_demo shop_service saga_demo; do
    [ -x "$BIN/$b" ] || fail "$BIN/$b is missing: run make first"
done

# ---------------------------------------------------------------- PostgreSQL
if [ -n "${TREATY_PG:-}" ]; then
    BASE=$TREATY_PG
    say "using PostgreSQL at $BASE (TREATY_PG)"
else
    PGDIR=$(mktemp -d /tmp/treaty-demo-pg.XXXXXX)
    say "starting a throwaway PostgreSQL in $PGDIR"
    BASE=$(sh scripts/pgtmp.sh start "$PGDIR") || fail "could not start PostgreSQL"
    note "$BASE"
fi

say "creating databases treaty_journal (the coordinator's journal), bank_a and bank_b"
for db in treaty_journal bank_a bank_b; do
    exists=$("$PSQL" "$BASE dbname=postgres" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$db'") ||
        fail "cannot reach PostgreSQL at $BASE"
    if [ "$exists" = 1 ]; then
        # Prepared transactions of an earlier run would keep DROP DATABASE from working.
        for gid in $("$PSQL" "$BASE dbname=$db" -Atqc \
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"); do
            "$PSQL" "$BASE dbname=$db" -qc "ROLLBACK PREPARED '$gid'" >/dev/null
        done
    fi
    "$PSQL" "$BASE dbname=postgres" -q -v ON_ERROR_STOP=1 \
        -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" \
        -c "CREATE DATABASE $db" >/dev/null ||
        fail "cannot create database $db"
done

# ------------------------------------------------------------------ treatyd
free_port() {
    p=$((17600 + $$ % 2000))
    while ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; do p=$((p + 1)); done
    echo "$p"
}
PORT=$(free_port)
EP="tcp://127.0.0.1:$PORT"
cat >"$WORK/treatyd.conf" <<EOF
# written by examples/demo.sh
listen = "$EP";
log_level = "info";
journal = { conninfo = "$BASE dbname=treaty_journal"; };
twopc = { default_timeout_ms = 10000; };
registry = { heartbeat_ms = 200; dead_after_ms = 2000; };
admin = { listen = "ipc://$WORK/admin.sock"; };
EOF

say "starting the coordinator: treatyd -c $WORK/treatyd.conf (listening on $EP)"
"$BIN/treatyd" -c "$WORK/treatyd.conf" >"$WORK/treatyd.log" 2>&1 &
TREATYD=$!
PIDS="$PIDS $TREATYD"

say "starting two banks, each a participant with its own database"
"$BIN/bank_service" --endpoint "$EP" --service bank-a --instance a1 --db "$BASE dbname=bank_a" \
    --create-accounts alice=100 >"$WORK/bank-a.log" 2>&1 &
PIDS="$PIDS $!"
note "bank-a: account alice = 100, database bank_a"
"$BIN/bank_service" --endpoint "$EP" --service bank-b --instance b1 --db "$BASE dbname=bank_b" \
    --create-accounts bob=100 >"$WORK/bank-b.log" 2>&1 &
PIDS="$PIDS $!"
note "bank-b: account bob = 100, database bank_b"

# Each bank logs "ready" once its participant runs; bank_demo then checks
# that the coordinator routes to both before the first transfer.
n=0
while :; do
    for p in $PIDS; do kill -0 "$p" 2>/dev/null || fail "a process ended during start-up (see the logs below)"; done
    if grep -q ready "$WORK/bank-a.log" && grep -q ready "$WORK/bank-b.log"; then break; fi
    [ $n -lt 300 ] || fail "the banks did not start within 30 s"
    sleep 0.1
    n=$((n + 1))
done

say "running bank_demo: 2PC transfers between alice and bob"
"$BIN/bank_demo" --endpoint "$EP" --db-a "$BASE dbname=bank_a" --db-b "$BASE dbname=bank_b"
status=$?

if [ "$status" -eq 0 ]; then
    say "bank part passed: every transfer happened at both banks or at neither"
else
    say "bank part failed: bank_demo exited with status $status"
fi

# ------------------------------------------------------------ part two: sagas
say "part two: sagas. Creating databases shop_orders, shop_inventory and shop_payment"
for db in shop_orders shop_inventory shop_payment; do
    "$PSQL" "$BASE dbname=postgres" -q -v ON_ERROR_STOP=1 \
        -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" \
        -c "CREATE DATABASE $db" >/dev/null ||
        fail "cannot create database $db"
done

say "starting three shop services (saga participants, every step through the SDK's barrier)"
"$BIN/shop_service" --endpoint "$EP" --role orders --instance o1 --db "$BASE dbname=shop_orders" \
    >"$WORK/shop-orders.log" 2>&1 &
PIDS="$PIDS $!"
note "orders:    table orders, database shop_orders"
"$BIN/shop_service" --endpoint "$EP" --role inventory --instance i1 --db "$BASE dbname=shop_inventory" \
    --setup widget=10 --transient-failures 1 >"$WORK/shop-inventory.log" 2>&1 &
PIDS="$PIDS $!"
note "inventory: stock widget = 10, database shop_inventory;"
note "           --transient-failures 1: the first try of every reserve fails (the coordinator retries)"
"$BIN/shop_service" --endpoint "$EP" --role payment --instance p1 --db "$BASE dbname=shop_payment" \
    --setup alice=100,bob=20 >"$WORK/shop-payment.log" 2>&1 &
PIDS="$PIDS $!"
note "payment:   wallets alice = 100, bob = 20, database shop_payment"

n=0
while :; do
    for p in $PIDS; do kill -0 "$p" 2>/dev/null || fail "a process ended during start-up (see the logs below)"; done
    if grep -q ready "$WORK/shop-orders.log" && grep -q ready "$WORK/shop-inventory.log" &&
        grep -q ready "$WORK/shop-payment.log"; then break; fi
    [ $n -lt 300 ] || fail "the shop services did not start within 30 s"
    sleep 0.1
    n=$((n + 1))
done

say "running saga_demo: order sagas create_order -> reserve -> charge"
"$BIN/saga_demo" --endpoint "$EP" --db-orders "$BASE dbname=shop_orders" \
    --db-inventory "$BASE dbname=shop_inventory" --db-payment "$BASE dbname=shop_payment"
saga_status=$?

say "what the coordinator's journal recorded (plain SQL: SELECT kind, count(*) FROM treaty_records GROUP BY kind)"
"$PSQL" "$BASE dbname=treaty_journal" -Atq -F ' ' \
    -c "SELECT kind, count(*) FROM treaty_records GROUP BY kind ORDER BY kind" 2>/dev/null |
    while read -r kind count; do note "$kind: $count"; done

# ------------------------------------------------------------------ treatyctl
say "the operator's view: treatyctl status (docs/treatyctl.md)"
"$BIN/treatyctl" --admin "ipc://$WORK/admin.sock" status || note "treatyctl status failed (exit $?)"
LAST=$("$PSQL" "$BASE dbname=treaty_journal" -Atq \
    -c "SELECT txid FROM treaty_journal WHERE kind = 'saga' ORDER BY seq DESC LIMIT 1" 2>/dev/null)
if [ -n "$LAST" ]; then
    say "treatyctl show $LAST (the last saga)"
    "$BIN/treatyctl" --admin "ipc://$WORK/admin.sock" show "$LAST" || note "treatyctl show failed (exit $?)"
fi

if [ "$saga_status" -eq 0 ]; then
    say "saga part passed: every saga completed or was fully compensated, as expected"
else
    say "saga part failed: saga_demo exited with status $saga_status"
fi
if [ "$status" -eq 0 ] && [ "$saga_status" -eq 0 ]; then
    say "demo passed"
    exit 0
fi
[ "$status" -ne 0 ] || status=$saga_status
exit "$status"
