#!/bin/sh
# pgtmp.sh - a throwaway PostgreSQL 15 cluster for tests, the demo and scenarios.
#
#   pgtmp.sh start DIR    initdb into DIR/data, start on a free port with a unix
#                         socket in DIR; prints the base conninfo
#                         ("host=DIR port=N user=U") and writes it to DIR/conninfo
#   pgtmp.sh restart DIR  fast restart (tests of Postgres restarts)
#   pgtmp.sh crash DIR    immediate stop (as if the server crashed: what was
#                         not flushed to the WAL is lost), then start again
#   pgtmp.sh stop DIR     immediate stop, then removes DIR
#
# Postgres refuses to run as root: as root the cluster belongs to the dedicated
# system user "treaty" (created if missing); otherwise to the calling user.
set -eu
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: pgtmp.sh start|restart|crash|stop DIR" >&2; exit 2; }

if [ "$(id -u)" = 0 ]; then
    PGOSUSER=treaty
    if ! id "$PGOSUSER" >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin "$PGOSUSER"
    fi
    as_pg() { runuser -u "$PGOSUSER" -- "$@"; }
else
    PGOSUSER=$(id -un)
    as_pg() { "$@"; }
fi

free_port() {
    # first port from 15432 up that no socket listens on
    p=15432
    while [ $p -lt 16432 ]; do
        if ! ss -Hltn "sport = :$p" 2>/dev/null | grep -q . && [ ! -e "/tmp/.s.PGSQL.$p.lock" ]; then
            if ! ls "$dir"/.s.PGSQL.$p >/dev/null 2>&1; then echo $p; return; fi
        fi
        p=$((p + 1 + $$ % 7))
    done
    echo "pgtmp: no free port" >&2; exit 1
}

case "$cmd" in
start)
    mkdir -p "$dir"
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown "$PGOSUSER" "$dir"
    as_pg "$PGBIN/initdb" -D "$dir/data" -U "$PGOSUSER" --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2; exit 1; }
    port=$(free_port)
    cat >>"$dir/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_prepared_transactions = 200
max_connections = 200
shared_buffers = 128MB
fsync = on
synchronous_commit = on
log_min_messages = warning
# Asynchronous commits reach the disk only every 10 s: a test that crashes the
# server shows at once what such a commit would lose.
wal_writer_delay = 10s
logging_collector = off
CONF
    as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 300 start >/dev/null || {
        cat "$dir/postgres.log" >&2; exit 1; }
    echo "host=$dir port=$port user=$PGOSUSER" >"$dir/conninfo"
    cat "$dir/conninfo"
    ;;
restart)
    as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 300 -m fast restart >/dev/null
    ;;
crash)
    as_pg "$PGBIN/pg_ctl" -D "$dir/data" -w -t 60 -m immediate stop >/dev/null
    as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 300 start >/dev/null
    ;;
stop)
    if [ -d "$dir/data" ]; then
        as_pg "$PGBIN/pg_ctl" -D "$dir/data" -w -t 30 -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: pgtmp.sh start|restart|crash|stop DIR" >&2; exit 2 ;;
esac
