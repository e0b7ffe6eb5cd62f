/*
 * pg_libpq.c - the Postgres participant over libpq: the operations of
 * pg_ops.h as SQL on one connection (the barrier table treaty_barrier and
 * the horizon table treaty_barrier_horizon, sql/participant_barrier.sql),
 * the barrier schema, and the public treaty_pg_* API that puts a pg core
 * (pg_core.h: every decision) inside a real participant (participant.c).
 *
 * Each op's contract is in pg_ops.h; here is how it is met:
 *   branch_begin     one round trip: BEGIN; lock_timeout; the prepared
 *                    check + barrier INSERT (a statement prepared once per
 *                    session, PG_PREPARE_CHECK); lock_timeout back; the
 *                    horizon
 *   branch_prepare   PREPARE TRANSACTION '<gid>'
 *   branch_finish    COMMIT PREPARED / ROLLBACK PREPARED '<gid>'; SQLSTATE
 *                    42704 is "no gid"
 *   branch_witness   an INSERT of the 'prepare' row under a 1 s lock
 *                    timeout, rolled back at once, and the horizon: inserted
 *                    = absent, conflict = committed, 55P03 = held (a SELECT
 *                    would see committed rows only and take a row a twin
 *                    holds uncommitted for absent)
 *   list_prepared    pg_prepared_xacts of this database
 *   step_*           BEGIN + lock_timeout, INSERT ... ON CONFLICT DO NOTHING
 *                    RETURNING pg_current_xact_id() (kept: step_record
 *                    updates only in that transaction, which catches user
 *                    code that ran "COMMIT; BEGIN"), SAVEPOINT treaty_step,
 *                    UPDATE ... SET result, COMMIT
 *   purge            one statement: horizon upsert (greatest) + DELETE
 *   lock timeouts    5 s for the barrier inserts (PG_BARRIER_LOCK_TIMEOUT),
 *                    then SQLSTATE 55P03 = held; reset to the default before
 *                    user code runs
 *
 * The connection belongs to the participant's thread: handlers, the sweep
 * and the purge run there only. When it breaks (Postgres restarted), ready()
 * reconnects with capped exponential backoff and fails meanwhile, so no vote
 * or ACK is sent and the coordinator's re-sends / timeouts carry the
 * protocol forward. Fault points (fault.h) are the pg core's crash points.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "fault.h"
#include "participant_core.h"
#include "participant_int.h"
#include "pg_core.h"
#include "pg_ops.h"
#include "sql_barrier.h"
#include "treaty.h"
#include "wire.h"

#define PG_BACKOFF_MIN_MS 100
#define PG_BACKOFF_MAX_MS 5000
#define PG_BARRIER_LOCK_TIMEOUT "5s"             /* waiting on a barrier row another session holds */
#define PG_SCHEMA_LOCK_TIMEOUT "2s"              /* waiting to upgrade the barrier table */
#define PG_SCHEMA_LOCK_KEY "7596536934174785537" /* advisory lock around CREATE TABLE */
#define PG_SCHEMA_V3_MARK "-- Version 3:"        /* sql_barrier from here on: the horizon table alone */
#define SQLSTATE_UNDEFINED_OBJECT "42704"
#define SQLSTATE_UNDEFINED_PSTATEMENT "26000"
#define SQLSTATE_LOCK_NOT_AVAILABLE "55P03"

/* The ops context: one session. */
struct lp {
    PGconn *conn;
    bool schema_ready;                /* the barrier table and the horizon table exist (2PC can run) */
    bool saga_ready;                  /* ... and the version 2 columns too (saga steps can run) */
    bool check_ready;                 /* PG_PREPARE_CHECK is prepared in this session */
    char xid[32];                     /* the transaction id step_begin's INSERT returned */
    char last_err[TREATY_REASON_MAX]; /* errtext() */
    int backoff_ms;
    int64_t next_reset; /* monotonic ms: earliest next reconnect */
};

/* ------------------------------------------------------------- helpers */

static void notice_ignore(void *arg, const char *message)
{
    (void)arg;
    (void)message; /* "relation already exists, skipping" and the like */
}

static bool gid_literal_safe(const char *gid)
{
    for (const char *s = gid; *s; s++) {
        bool ok = (*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'z') || *s == ':' || *s == '-';
        if (!ok)
            return false;
    }
    return true;
}

static const char *sqlstate(const PGresult *r)
{
    const char *s = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    return s != NULL ? s : "";
}

/* Keeps a text as errtext() (one line). */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
note(struct lp *g, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->last_err, sizeof g->last_err, fmt, ap);
    va_end(ap);
    for (char *c = g->last_err; *c; c++) /* one line: libpq's messages span several */
        if ((unsigned char)*c < 0x20)
            *c = ' ';
}

/* A failed statement as errtext(): "<what>: <message> (SQLSTATE x)". */
static void pg_report(struct lp *g, const char *what, const PGresult *r)
{
    const char *msg = r != NULL ? PQresultErrorMessage(r) : "";
    if (msg == NULL || *msg == '\0')
        msg = PQerrorMessage(g->conn);
    size_t len = strlen(msg);
    while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
        len--;
    note(g, "%s: %.*s (SQLSTATE %s)", what, (int)len, msg, *sqlstate(r) ? sqlstate(r) : "none");
}
/* Runs a command that returns no rows. 0, or TREATY_EPG (reported). */
static int exec_cmd(struct lp *g, const char *what, const char *sql)
{
    PGresult *r = PQexec(g->conn, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        pg_report(g, what, r);
        PQclear(r);
        return TREATY_EPG;
    }
    PQclear(r);
    return 0;
}

/* The results of one query string of several statements (PQsendQuery). */
#define PG_MULTI_MAX 8
struct multi {
    PGresult *res[PG_MULTI_MAX]; /* the successful results, in order */
    int n;
    PGresult *failed; /* the first failed one (later statements did not run), or NULL */
};

/* Sends sql (several statements, literals only) and collects its results into
 * *m. 0 when every statement succeeded; otherwise TREATY_EPG, with m->failed
 * set unless the query could not be sent at all (the connection). The caller
 * reports and clears with multi_clear. */
static int multi_exec(struct lp *g, const char *sql, struct multi *m)
{
    memset(m, 0, sizeof *m);
    if (PQsendQuery(g->conn, sql) != 1)
        return TREATY_EPG;
    PGresult *r;
    bool extra = false;
    while ((r = PQgetResult(g->conn)) != NULL) {
        ExecStatusType st = PQresultStatus(r);
        bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
        if (m->failed == NULL && ok && m->n < PG_MULTI_MAX) {
            m->res[m->n++] = r;
            continue;
        }
        if (m->failed == NULL && !ok)
            m->failed = r;
        else
            PQclear(r);
        extra = extra || ok;
    }
    return m->failed == NULL && !extra ? 0 : TREATY_EPG;
}

static void multi_clear(struct multi *m)
{
    for (int i = 0; i < m->n; i++)
        PQclear(m->res[i]);
    PQclear(m->failed);
    memset(m, 0, sizeof *m);
}

/* Ends whatever transaction is open on the connection. Best effort: a
 * broken connection is dealt with by the next pg_ready(). */
static void rollback(struct lp *g)
{
    PGTransactionStatusType ts = PQtransactionStatus(g->conn);
    if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)
        PQclear(PQexec(g->conn, "ROLLBACK"));
}

/* Runs one DDL script inside the schema transaction; on failure reports it
 * under what and leaves *locked set when it could not get a lock in time. */
static int run_ddl(struct lp *g, const char *what, const char *sql, bool *locked)
{
    PGresult *r = PQexec(g->conn, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        *locked = strcmp(sqlstate(r), SQLSTATE_LOCK_NOT_AVAILABLE) == 0;
        pg_report(g, what, r);
        PQclear(r);
        return TREATY_EPG;
    }
    PQclear(r);
    return 0;
}

/* BEGIN, and the advisory lock that serializes instances changing the schema. */
static int schema_begin(struct lp *g)
{
    if (exec_cmd(g, "BEGIN (barrier schema)", "BEGIN") < 0)
        return TREATY_EPG;
    PGresult *r = PQexec(g->conn, "SELECT pg_advisory_xact_lock(" PG_SCHEMA_LOCK_KEY ")");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pg_report(g, "advisory lock (barrier schema)", r);
        PQclear(r);
        rollback(g);
        return TREATY_EPG;
    }
    PQclear(r);
    return 0;
}

/* Creates the barrier table if missing, or upgrades it. Concurrent instances
 * sharing a database serialize on an advisory lock (CREATE TABLE IF NOT
 * EXISTS alone races on the catalog).
 *
 * The DDL runs only when something is missing: ALTER TABLE and CREATE INDEX
 * wait for every lock on the table, and the prepared transactions of in-doubt
 * branches hold one until they are decided - which needs this participant
 * running. So the DDL runs under a lock_timeout. Version 3 (the horizon
 * table) locks nothing that exists, so it runs by itself on a version 2
 * table, and also when the upgrade of an older table cannot get its lock:
 * then 2PC goes on (it needs no version 2 column) and saga steps answer
 * transient until a later try succeeds. */
static int create_schema(struct lp *g)
{
    const char *v3 = strstr(sql_barrier, PG_SCHEMA_V3_MARK);
    if (v3 == NULL) { /* cannot happen: sql/participant_barrier.sql has it */
        note(g, "barrier schema: no \"%s\" part", PG_SCHEMA_V3_MARK);
        return TREATY_EPG;
    }
    if (schema_begin(g) < 0)
        return TREATY_EPG;
    PGresult *r = PQexec(g->conn, "SELECT to_regclass('treaty_barrier') IS NOT NULL, "
                                  "to_regclass('treaty_barrier_created') IS NOT NULL AND "
                                  "(SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass('treaty_barrier') "
                                  "AND attname IN ('result', 'reason') AND NOT attisdropped) = 2, "
                                  "to_regclass('treaty_barrier_horizon') IS NOT NULL");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pg_report(g, "inspect treaty_barrier", r);
        PQclear(r);
        goto fail;
    }
    bool exists = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    bool v2 = strcmp(PQgetvalue(r, 0, 1), "t") == 0;
    bool horizon = strcmp(PQgetvalue(r, 0, 2), "t") == 0;
    PQclear(r);
    bool locked = false;
    if (!v2) {
        if (exec_cmd(g, "set lock_timeout (barrier schema)", "SET LOCAL lock_timeout = '" PG_SCHEMA_LOCK_TIMEOUT "'") <
            0)
            goto fail;
        if (run_ddl(g,
                    exists ? "upgrade treaty_barrier (its lock is held, e.g. by prepared transactions; saga "
                             "steps wait for the upgrade)"
                           : "create treaty_barrier",
                    sql_barrier, &locked) < 0) {
            if (!locked || !exists)
                goto fail;
            /* The old table stays as it is for now: 2PC works on it once the
             * horizon table is there. */
            rollback(g);
            if (schema_begin(g) < 0)
                return TREATY_EPG;
            if (run_ddl(g, "create treaty_barrier_horizon", v3, &locked) < 0 ||
                exec_cmd(g, "COMMIT (barrier schema)", "COMMIT") < 0)
                goto fail;
            g->schema_ready = true;
            return 0;
        }
    } else if (!horizon) {
        if (run_ddl(g, "create treaty_barrier_horizon", v3, &locked) < 0)
            goto fail;
    }
    if (exec_cmd(g, "COMMIT (barrier schema)", "COMMIT") < 0)
        goto fail;
    g->schema_ready = true;
    g->saga_ready = true;
    return 0;
fail:
    rollback(g);
    return TREATY_EPG;
}

/* Makes the connection usable: reconnects (no more often than the backoff
 * allows), ends any transaction left open, creates the barrier table.
 * 0 or TREATY_EPG. */
static int pg_ready(struct lp *g)
{
    if (PQstatus(g->conn) != CONNECTION_OK) {
        int64_t now = participant_now_ms();
        if (now < g->next_reset) {
            note(g, "database unavailable; reconnecting in %lld ms", (long long)(g->next_reset - now));
            return TREATY_EPG;
        }
        PQreset(g->conn);
        g->check_ready = false; /* a new session */
        if (PQstatus(g->conn) != CONNECTION_OK) {
            g->backoff_ms = g->backoff_ms == 0 ? PG_BACKOFF_MIN_MS : g->backoff_ms * 2;
            if (g->backoff_ms > PG_BACKOFF_MAX_MS)
                g->backoff_ms = PG_BACKOFF_MAX_MS;
            g->next_reset = participant_now_ms() + g->backoff_ms;
            pg_report(g, "reconnect to the database failed", NULL);
            return TREATY_EPG;
        }
        g->backoff_ms = 0;
        g->next_reset = 0;
    }
    rollback(g);
    if (!g->schema_ready && create_schema(g) < 0)
        return TREATY_EPG;
    return 0;
}

/* After a failed statement: true when the failure was the connection
 * itself, so one retry after an immediate reconnect is worth it. */
static bool conn_broke(struct lp *g)
{
    if (PQstatus(g->conn) != CONNECTION_BAD)
        return false;
    g->next_reset = 0;
    return true;
}

/* ------------------------------------------------------- purge horizon */

/*
 * treaty_pg_barrier_purge records its horizon in treaty_barrier_horizon in
 * the transaction of its DELETE, and deletes a row only when both the row and
 * its txid, a UUIDv7, were created before the horizon. So for a UUIDv7 txid
 * created at or after the horizon, and for any txid that is not a UUIDv7 (its
 * rows are never purged), the rows are all there and decide as always. For a
 * UUIDv7 txid created before the horizon, a missing row proves nothing.
 *
 * Against a purge running concurrently (another instance on the database),
 * the horizon is read in a statement of its own after the barrier INSERT,
 * never in the INSERT itself: when the purge is deleting the row the INSERT
 * conflicts with, the INSERT waits for the purge's transaction and, once it
 * committed, inserts - but a statement sees what was committed when it began,
 * so only a later statement sees the horizon the purge committed with its
 * DELETE. (In READ COMMITTED every statement takes a new snapshot.) No lock
 * is shared between steps and the purge; the read rides in a round trip the
 * step makes anyway.
 */
#define PG_HORIZON_SQL "SELECT (SELECT floor(extract(epoch FROM horizon) * 1000)::bigint FROM treaty_barrier_horizon)"

/* The horizon in a PG_HORIZON_SQL result (Unix ms; -1: nothing was ever
 * purged). False when r is not such a result. */
static bool horizon_of(const PGresult *r, long long *ms)
{
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 || PQnfields(r) != 1)
        return false;
    *ms = PQgetisnull(r, 0, 0) ? -1 : atoll(PQgetvalue(r, 0, 0));
    return true;
}

/* Runs sql, n statements ending with PG_HORIZON_SQL, and reads *horizon
 * from it. 0, or TREATY_EPG (errtext set; the caller rolls back). */
static int exec_horizon(struct lp *g, const char *what, const char *sql, int n, long long *horizon)
{
    struct multi m;
    int rc = multi_exec(g, sql, &m);
    if (rc < 0) {
        pg_report(g, what, m.failed);
    } else if (m.n != n || !horizon_of(m.res[n - 1], horizon)) {
        note(g, "%s: unexpected results", what);
        rc = TREATY_EPG;
    }
    multi_clear(&m);
    return rc;
}

/* ---------------------------------------------------------- session ops */

static int lp_ready(void *ctx, bool saga)
{
    struct lp *g = ctx;
    if (pg_ready(g) < 0)
        return TREATY_EPG;
    /* The upgrade for saga steps may still wait for its lock (held by
     * prepared transactions): try again; errtext then says why. */
    if (saga && !g->saga_ready && (create_schema(g) < 0 || !g->saga_ready))
        return TREATY_EPG;
    return 0;
}

static bool lp_lost(void *ctx)
{
    return conn_broke(ctx);
}

static const char *lp_errtext(void *ctx)
{
    struct lp *g = ctx;
    return g->last_err;
}

static enum pg_txn lp_txn_state(void *ctx)
{
    struct lp *g = ctx;
    if (PQstatus(g->conn) != CONNECTION_OK)
        return PG_TXN_LOST;
    switch (PQtransactionStatus(g->conn)) {
    case PQTRANS_IDLE:
        return PG_TXN_IDLE;
    case PQTRANS_INERROR:
        return PG_TXN_FAILED;
    case PQTRANS_UNKNOWN:
        return PG_TXN_LOST;
    case PQTRANS_ACTIVE:
    case PQTRANS_INTRANS:
        break;
    }
    return PG_TXN_OPEN;
}

static void lp_rollback(void *ctx)
{
    rollback(ctx);
}

static struct pg_conn *lp_session(void *ctx)
{
    struct lp *g = ctx;
    return g->conn; /* PGconn is struct pg_conn */
}

static void lp_crash_point(void *ctx, const char *name)
{
    (void)ctx;
    (void)name;
    FAULT_POINT(name);
}

static void lp_destroy(void *ctx)
{
    struct lp *g = ctx;
    if (g == NULL)
        return;
    PQfinish(g->conn);
    free(g);
}

/* -------------------------------------------------------------- branches */

/*
 * branch_begin in one round trip: a simple query of five statements, the
 * barrier INSERT skipped when the gid is already prepared, the purge horizon
 * read after it. The check itself is a statement prepared once per session
 * (its planning, through the pg_prepared_xacts view and two CTEs, costs more
 * than running it), run with EXECUTE. Literals only (no parameters in a
 * multi-statement query): the gid passed gid_literal_safe(), the txid is
 * its UUID, the branch a number.
 */
#define PG_PREPARE_CHECK "treaty_prepare_check"
#define PG_PREPARE_CHECK_SQL                                                                                           \
    "WITH p AS (SELECT EXISTS (SELECT 1 FROM pg_prepared_xacts "                                                       \
    "                          WHERE gid = $1 AND database = current_database()) AS prepared), "                       \
    "     ins AS (INSERT INTO treaty_barrier (txid, branch, op) "                                                      \
    "             SELECT $2::uuid, $3::integer, 'prepare' WHERE NOT (SELECT prepared FROM p) "                         \
    "             ON CONFLICT DO NOTHING RETURNING 1) "                                                                \
    "SELECT (SELECT prepared FROM p), (SELECT count(*) FROM ins)"
#define PG_PREPARE_BEGIN_SQL                                                                                           \
    "BEGIN; SET LOCAL lock_timeout = '" PG_BARRIER_LOCK_TIMEOUT "'; "                                                  \
    "EXECUTE " PG_PREPARE_CHECK "('%s', '%s', %u); "                                                                   \
    "SET LOCAL lock_timeout TO DEFAULT; " PG_HORIZON_SQL

/* Prepares PG_PREPARE_CHECK once per session. 0 or TREATY_EPG. */
static int prepare_check_ready(struct lp *g)
{
    if (g->check_ready)
        return 0;
    PGresult *r = PQprepare(g->conn, PG_PREPARE_CHECK, PG_PREPARE_CHECK_SQL, 0, NULL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        pg_report(g, "prepare the barrier check", r);
        PQclear(r);
        return TREATY_EPG;
    }
    PQclear(r);
    g->check_ready = true;
    return 0;
}

static int lp_branch_begin(void *ctx, const treaty_txid_t *txid, unsigned branch, const char *gid,
                           long long *horizon_ms)
{
    struct lp *g = ctx;
    char ids[TREATY_TXID_STRLEN], sql[PG_GID_MAX + 1024];
    if (!gid_literal_safe(gid)) { /* cannot happen: pg_gid_make's alphabet */
        note(g, "gid %s is not safe as a literal", gid);
        return TREATY_EPG;
    }
    if (prepare_check_ready(g) < 0)
        return TREATY_EPG;
    snprintf(sql, sizeof sql, PG_PREPARE_BEGIN_SQL, gid, treaty_txid_format(txid, ids), branch);
    struct multi m;
    long long horizon = -1;
    int rc = multi_exec(g, sql, &m);
    bool shaped =
        rc == 0 && m.n == 5 && PQntuples(m.res[2]) == 1 && PQnfields(m.res[2]) == 2 && horizon_of(m.res[4], &horizon);
    if (!shaped) {
        /* 55P03 in the EXECUTE: another session holds the row (a twin
         * instance preparing the same branch, or its prepared transaction). */
        const PGresult *failed = m.failed;
        bool held = failed != NULL && m.n == 2 && strcmp(sqlstate(failed), SQLSTATE_LOCK_NOT_AVAILABLE) == 0;
        if (held)
            pg_report(g, "barrier row held by another transaction", failed);
        else if (rc == 0)
            note(g, "BEGIN and insert barrier row: unexpected results");
        else
            pg_report(g, "BEGIN and insert barrier row", failed);
        /* The session lost the prepared check (DISCARD ALL, a pooler that
         * hands out another session): prepare it again next time. */
        if (failed != NULL && strcmp(sqlstate(failed), SQLSTATE_UNDEFINED_PSTATEMENT) == 0)
            g->check_ready = false;
        multi_clear(&m);
        rollback(g);
        return held ? PG_BEGIN_HELD : TREATY_EPG;
    }
    bool prepared = strcmp(PQgetvalue(m.res[2], 0, 0), "t") == 0;
    bool inserted = strcmp(PQgetvalue(m.res[2], 0, 1), "1") == 0;
    multi_clear(&m);
    if (prepared) {
        rollback(g);
        return PG_BEGIN_PREPARED;
    }
    if (!inserted) {
        rollback(g);
        return PG_BEGIN_COMMITTED;
    }
    *horizon_ms = horizon;
    return PG_BEGIN_OPEN;
}

static int lp_branch_prepare(void *ctx, const char *gid)
{
    struct lp *g = ctx;
    char sql[PG_GID_MAX + 32];
    if (!gid_literal_safe(gid)) {
        rollback(g);
        note(g, "gid %s is not safe as a literal", gid);
        return TREATY_EPG;
    }
    snprintf(sql, sizeof sql, "PREPARE TRANSACTION '%s'", gid);
    PGresult *r = PQexec(g->conn, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        /* Not prepared (e.g. max_prepared_transactions reached): the server
         * rolled the transaction back. */
        pg_report(g, "PREPARE TRANSACTION", r);
        PQclear(r);
        rollback(g);
        return TREATY_EPG;
    }
    bool ok = strcmp(PQcmdStatus(r), "PREPARE TRANSACTION") == 0;
    PQclear(r);
    return ok ? PG_END_DONE : PG_END_ROLLED_BACK;
}

static int lp_branch_finish(void *ctx, const char *gid, bool commit)
{
    struct lp *g = ctx;
    char sql[PG_GID_MAX + 32];
    if (!gid_literal_safe(gid)) {
        note(g, "gid %s is not safe as a literal", gid);
        return TREATY_EPG;
    }
    snprintf(sql, sizeof sql, "%s PREPARED '%s'", commit ? "COMMIT" : "ROLLBACK", gid);
    PGresult *r = PQexec(g->conn, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        bool missing = strcmp(sqlstate(r), SQLSTATE_UNDEFINED_OBJECT) == 0;
        if (!missing)
            pg_report(g, commit ? "COMMIT PREPARED" : "ROLLBACK PREPARED", r);
        PQclear(r);
        return missing ? PG_FINISH_NO_GID : TREATY_EPG;
    }
    PQclear(r);
    return PG_FINISH_DONE;
}

/* The probe (see the file's header): the INSERT's uniqueness check sees a
 * row a twin holds uncommitted and waits for its transaction (bounded by
 * PG_PROBE_LOCK_TIMEOUT). The probe writes nothing: its transaction always
 * rolls back; a twin's barrier INSERT that meets it waits the few
 * milliseconds until it has. */
#define PG_PROBE_LOCK_TIMEOUT "1s"
#define PG_PROBE_SQL                                                                                                   \
    "BEGIN; SET LOCAL lock_timeout = '" PG_PROBE_LOCK_TIMEOUT "'; "                                                    \
    "INSERT INTO treaty_barrier (txid, branch, op) VALUES ('%s', %u, 'prepare') ON CONFLICT DO NOTHING RETURNING "     \
    "1; " PG_HORIZON_SQL "; ROLLBACK"

static int lp_branch_witness(void *ctx, const treaty_txid_t *txid, unsigned branch, long long *horizon_ms)
{
    struct lp *g = ctx;
    char ids[TREATY_TXID_STRLEN], sql[512];
    *horizon_ms = -1;
    snprintf(sql, sizeof sql, PG_PROBE_SQL, treaty_txid_format(txid, ids), branch);
    struct multi m;
    int rc = multi_exec(g, sql, &m);
    if (rc < 0) {
        bool held = m.failed != NULL && m.n == 2 && strcmp(sqlstate(m.failed), SQLSTATE_LOCK_NOT_AVAILABLE) == 0;
        if (!held)
            pg_report(g, "probe barrier row", m.failed);
        multi_clear(&m);
        rollback(g);
        return held ? PG_WITNESS_HELD : TREATY_EPG;
    }
    int fate = TREATY_EPG;
    if (m.n == 5 && PQresultStatus(m.res[2]) == PGRES_TUPLES_OK && horizon_of(m.res[3], horizon_ms))
        fate = PQntuples(m.res[2]) == 1 ? PG_WITNESS_ABSENT : PG_WITNESS_COMMITTED;
    multi_clear(&m);
    rollback(g); /* already ended by the ROLLBACK; in case it was not */
    if (fate < 0)
        note(g, "probe barrier row: unexpected results");
    return fate;
}

static int lp_list_prepared(void *ctx, int min_age_ms, void (*each)(void *arg, const char *gid), void *arg)
{
    struct lp *g = ctx;
    char min_age[16];
    snprintf(min_age, sizeof min_age, "%d", min_age_ms);
    const char *pv[1] = {min_age};
    PGresult *r = PQexecParams(g->conn,
                               "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() "
                               "AND gid LIKE 'treaty:%' AND now() - prepared >= $1::integer * interval '1 ms' "
                               "ORDER BY prepared",
                               1, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pg_report(g, "list in-doubt prepared transactions", r);
        PQclear(r);
        return TREATY_EPG;
    }
    for (int i = 0; i < PQntuples(r); i++)
        each(arg, PQgetvalue(r, i, 0));
    PQclear(r);
    return 0;
}

/* ------------------------------------------------------------ saga steps */

#define PG_STEP_SAVEPOINT "treaty_step"
#define PG_BARRIER_BEGIN "BEGIN; SET LOCAL lock_timeout = '" PG_BARRIER_LOCK_TIMEOUT "'"

static const char *op_name(enum pg_step_op op)
{
    return op == PG_STEP_ACTION ? "action" : "compensation";
}

/* The key of a step's rows as parameters: txid text and step number. */
struct step_key {
    char ids[TREATY_TXID_STRLEN];
    char step[16];
    const char *pk[2];
};

static void step_key(struct step_key *k, const treaty_txid_t *txid, unsigned step)
{
    treaty_txid_format(txid, k->ids);
    snprintf(k->step, sizeof k->step, "%u", step);
    k->pk[0] = k->ids;
    k->pk[1] = k->step;
}

/* A failed statement of a step: reported, rolled back. */
static int step_fail(struct lp *g, const char *what, PGresult *r)
{
    pg_report(g, what, r);
    PQclear(r);
    rollback(g);
    return TREATY_EPG;
}

static int lp_step_begin(void *ctx, const treaty_txid_t *txid, unsigned step, enum pg_step_op op)
{
    struct lp *g = ctx;
    struct step_key k;
    char what[64];
    step_key(&k, txid, step);
    snprintf(what, sizeof what, "BEGIN (%s)", op_name(op));
    if (exec_cmd(g, what, PG_BARRIER_BEGIN) < 0) {
        rollback(g);
        return TREATY_EPG;
    }
    const char *pv[3] = {k.ids, k.step, op_name(op)};
    PGresult *r = PQexecParams(g->conn,
                               "INSERT INTO treaty_barrier (txid, branch, op, result) "
                               "VALUES ($1::uuid, $2::integer, $3, NULL) "
                               "ON CONFLICT DO NOTHING RETURNING pg_current_xact_id()::text",
                               3, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        bool held = strcmp(sqlstate(r), SQLSTATE_LOCK_NOT_AVAILABLE) == 0;
        if (held)
            snprintf(what, sizeof what, "%s barrier row held by another transaction", op_name(op));
        else
            snprintf(what, sizeof what, "insert %s barrier row", op_name(op));
        step_fail(g, what, r);
        return held ? PG_ROW_HELD : TREATY_EPG;
    }
    bool inserted = PQntuples(r) == 1;
    if (inserted)
        snprintf(g->xid, sizeof g->xid, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    return inserted ? PG_ROW_INSERTED : PG_ROW_EXISTS;
}

static int lp_step_read_action(void *ctx, const treaty_txid_t *txid, unsigned step, char *reason)
{
    struct lp *g = ctx;
    struct step_key k;
    step_key(&k, txid, step);
    PGresult *r = PQexecParams(g->conn,
                               reason != NULL ? "SELECT result, reason FROM treaty_barrier "
                                                "WHERE txid = $1::uuid AND branch = $2::integer AND op = 'action'"
                                              : "SELECT result FROM treaty_barrier "
                                                "WHERE txid = $1::uuid AND branch = $2::integer AND op = 'action'",
                               2, NULL, k.pk, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        return step_fail(g, "read action barrier row", r);
    if (PQntuples(r) == 0) {
        PQclear(r);
        return PG_ACTION_GONE;
    }
    int result = PG_ACTION_NONE; /* NULL, or a value this version does not know */
    if (!PQgetisnull(r, 0, 0)) {
        const char *v = PQgetvalue(r, 0, 0);
        if (strcmp(v, "ok") == 0)
            result = PG_ACTION_OK;
        else if (strcmp(v, "failed") == 0)
            result = PG_ACTION_FAILED;
        else if (strcmp(v, "blocked") == 0)
            result = PG_ACTION_BLOCKED;
    }
    if (reason != NULL)
        snprintf(reason, TREATY_REASON_MAX, "%s", PQgetisnull(r, 0, 1) ? "" : PQgetvalue(r, 0, 1));
    PQclear(r);
    return result;
}

static int lp_step_block_action(void *ctx, const treaty_txid_t *txid, unsigned step)
{
    struct lp *g = ctx;
    struct step_key k;
    step_key(&k, txid, step);
    PGresult *r = PQexecParams(g->conn,
                               "INSERT INTO treaty_barrier (txid, branch, op, result) "
                               "VALUES ($1::uuid, $2::integer, 'action', 'blocked') ON CONFLICT DO NOTHING",
                               2, NULL, k.pk, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        bool held = strcmp(sqlstate(r), SQLSTATE_LOCK_NOT_AVAILABLE) == 0;
        step_fail(g, held ? "action barrier row held by another transaction" : "insert blocking action barrier row", r);
        return held ? PG_ROW_HELD : TREATY_EPG;
    }
    bool blocked = strcmp(PQcmdTuples(r), "1") == 0;
    PQclear(r);
    return blocked ? PG_ROW_INSERTED : PG_ROW_EXISTS;
}

static int lp_step_work_begin(void *ctx, bool savepoint, long long *horizon_ms)
{
    struct lp *g = ctx;
    int rc;
    if (savepoint && horizon_ms != NULL) /* the action: one round trip */
        rc = exec_horizon(g, "savepoint (action)",
                          "SET LOCAL lock_timeout TO DEFAULT; SAVEPOINT " PG_STEP_SAVEPOINT "; " PG_HORIZON_SQL, 3,
                          horizon_ms);
    else if (savepoint)
        rc = exec_cmd(g, "savepoint", "SET LOCAL lock_timeout TO DEFAULT; SAVEPOINT " PG_STEP_SAVEPOINT);
    else if (horizon_ms != NULL)
        rc = exec_horizon(g, "reset lock_timeout", "SET LOCAL lock_timeout TO DEFAULT; " PG_HORIZON_SQL, 2, horizon_ms);
    else /* the compensation */
        rc = exec_cmd(g, "reset lock_timeout (compensation)", "SET LOCAL lock_timeout TO DEFAULT");
    if (rc < 0)
        rollback(g);
    return rc;
}

static int lp_step_horizon(void *ctx, long long *horizon_ms)
{
    struct lp *g = ctx;
    int rc = exec_horizon(g, "read the purge horizon (compensation)", PG_HORIZON_SQL, 1, horizon_ms);
    if (rc < 0)
        rollback(g);
    return rc;
}

static int lp_step_undo_work(void *ctx)
{
    struct lp *g = ctx;
    PGresult *r = PQexec(g->conn, "ROLLBACK TO SAVEPOINT " PG_STEP_SAVEPOINT);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        return step_fail(g, "the action handler's savepoint is gone (did it end the transaction?)", r);
    PQclear(r);
    return 0;
}

/* The UPDATEs of step_record: only inside the transaction that inserted
 * the row (its xid), so user code that ran "COMMIT; BEGIN" is caught. */
static int lp_step_record(void *ctx, const treaty_txid_t *txid, unsigned step, enum pg_step_op op, bool ok,
                          const char *reason)
{
    struct lp *g = ctx;
    struct step_key k;
    step_key(&k, txid, step);
    PGresult *r;
    if (ok) {
        const char *pv[3] = {k.ids, k.step, g->xid};
        r = PQexecParams(g->conn,
                         op == PG_STEP_ACTION
                             ? "UPDATE treaty_barrier SET result = 'ok' WHERE txid = $1::uuid AND branch = $2::integer "
                               "AND op = 'action' AND pg_current_xact_id() = $3::xid8"
                             : "UPDATE treaty_barrier SET result = 'ok' WHERE txid = $1::uuid AND branch = $2::integer "
                               "AND op = 'compensation' AND pg_current_xact_id() = $3::xid8",
                         3, NULL, pv, NULL, NULL, 0);
    } else {
        const char *pv[4] = {k.ids, k.step, reason != NULL ? reason : "", g->xid};
        r = PQexecParams(g->conn,
                         op == PG_STEP_ACTION
                             ? "UPDATE treaty_barrier SET result = 'failed', reason = $3 WHERE txid = $1::uuid "
                               "AND branch = $2::integer AND op = 'action' AND pg_current_xact_id() = $4::xid8"
                             : "UPDATE treaty_barrier SET result = 'failed', reason = $3 WHERE txid = $1::uuid "
                               "AND branch = $2::integer AND op = 'compensation' AND pg_current_xact_id() = $4::xid8",
                         4, NULL, pv, NULL, NULL, 0);
    }
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        return step_fail(g, "update barrier row", r);
    bool same = strcmp(PQcmdTuples(r), "1") == 0;
    PQclear(r);
    return same ? PG_RECORD_DONE : PG_RECORD_OTHER;
}

static int lp_step_commit(void *ctx)
{
    struct lp *g = ctx;
    PGresult *r = PQexec(g->conn, "COMMIT");
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        return step_fail(g, "COMMIT step", r);
    bool ok = strcmp(PQcmdStatus(r), "COMMIT") == 0;
    PQclear(r);
    return ok ? PG_END_DONE : PG_END_ROLLED_BACK; /* ROLLBACK: the server rolled back instead */
}

/* ----------------------------------------------------------------- purge */

/*
 * The purge, one statement (so one transaction): the horizon moves to
 * now() - older_than_s (never back), and the rows go whose txid is a UUIDv7
 * created before that cut and that were themselves written before it. The
 * txid's creation time is its first 48 bits (treaty_txid_time_ms); the
 * version nibble is the 13th hex digit and the variant the 17th. Rows of
 * other txids stay (their age is unknown, so nothing arriving for them is
 * judged by the horizon). Rows of prepared, undecided branches are not
 * visible to the DELETE, so they stay too.
 */
#define PG_PURGE_SQL                                                                                                   \
    "WITH cut AS (SELECT now() - $1::bigint * interval '1 second' AS t), "                                             \
    "h AS (INSERT INTO treaty_barrier_horizon AS h (id, horizon) SELECT true, t FROM cut "                             \
    "      ON CONFLICT (id) DO UPDATE SET horizon = greatest(h.horizon, EXCLUDED.horizon), purged_at = now() "         \
    "      RETURNING 1), "                                                                                             \
    "d AS (DELETE FROM treaty_barrier WHERE created_at < (SELECT t FROM cut) "                                         \
    "      AND substr(txid::text, 15, 1) = '7' AND substr(txid::text, 20, 1) IN ('8', '9', 'a', 'b') "                 \
    "      AND ('x' || substr(txid::text, 1, 8) || substr(txid::text, 10, 4))::bit(48)::bigint "                       \
    "          < (SELECT floor(extract(epoch FROM t) * 1000)::bigint FROM cut) "                                       \
    "      RETURNING 1) "                                                                                              \
    "SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM h)"

static long lp_purge(void *ctx, unsigned older_than_s)
{
    struct lp *g = ctx;
    char secs[16];
    snprintf(secs, sizeof secs, "%u", older_than_s);
    const char *pv[1] = {secs};
    PGresult *r = PQexecParams(g->conn, PG_PURGE_SQL, 1, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pg_report(g, "purge barrier rows", r);
        PQclear(r);
        return TREATY_EPG;
    }
    long n = atol(PQgetvalue(r, 0, 0));
    PQclear(r);
    return n;
}

static const struct pg_ops lp_ops = {
    .ready = lp_ready,
    .lost = lp_lost,
    .errtext = lp_errtext,
    .txn_state = lp_txn_state,
    .rollback = lp_rollback,
    .session = lp_session,
    .crash_point = lp_crash_point,
    .destroy = lp_destroy,
    .branch_begin = lp_branch_begin,
    .branch_prepare = lp_branch_prepare,
    .branch_finish = lp_branch_finish,
    .branch_witness = lp_branch_witness,
    .list_prepared = lp_list_prepared,
    .step_begin = lp_step_begin,
    .step_read_action = lp_step_read_action,
    .step_block_action = lp_step_block_action,
    .step_work_begin = lp_step_work_begin,
    .step_horizon = lp_step_horizon,
    .step_undo_work = lp_step_undo_work,
    .step_record = lp_step_record,
    .step_commit = lp_step_commit,
    .purge = lp_purge,
};

/* ------------------------------------------------------------ public API */

static int check_server(struct lp *g)
{
    PGresult *r = PQexec(g->conn, "SELECT current_setting('max_prepared_transactions')::integer");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        pg_report(g, "read max_prepared_transactions", r);
        PQclear(r);
        return TREATY_EPG;
    }
    int max = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    if (max <= 0) {
        note(g, "max_prepared_transactions is 0 on this server: PREPARE TRANSACTION is "
                "disabled (set it above 0 and restart PostgreSQL)");
        return TREATY_EPG;
    }
    return 0;
}

int treaty_pg_participant_new(const char *endpoint, const char *service, const char *instance, const char *conninfo,
                              treaty_pg_work_fn work, void *arg, treaty_participant_t **out)
{
    return treaty_pg_participant_new_secure(endpoint, service, instance, conninfo, work, arg, NULL, out);
}

int treaty_pg_participant_new_secure(const char *endpoint, const char *service, const char *instance,
                                     const char *conninfo, treaty_pg_work_fn work, void *arg,
                                     const treaty_security_t *sec, treaty_participant_t **out)
{
    if (out == NULL)
        return TREATY_EINVAL;
    *out = NULL;
    if (conninfo == NULL)
        return TREATY_EINVAL;

    struct lp *g = calloc(1, sizeof *g);
    if (g == NULL)
        return TREATY_ENOMEM;
    struct pg_core *core = pg_core_new(&lp_ops, g, work, arg); /* owns g from here on */
    if (core == NULL)
        return TREATY_ENOMEM;
    treaty_handlers_t h;
    pg_core_handlers(core, &h);
    treaty_participant_t *p;
    int rc = treaty_participant_new_secure(endpoint, service, instance, &h, sec, &p);
    if (rc < 0)
        goto fail_participant;
    pg_core_install(core, participant_core(p)); /* p owns core (and g) from here on */

    const char *const keys[] = {"dbname", "fallback_application_name", NULL};
    const char *const vals[] = {conninfo, "treaty-participant", NULL};
    g->conn = PQconnectdbParams(keys, vals, 1);
    if (g->conn == NULL) {
        rc = TREATY_ENOMEM;
        goto fail_conn;
    }
    PQsetNoticeProcessor(g->conn, notice_ignore, NULL);
    if (PQstatus(g->conn) != CONNECTION_OK) {
        pg_report(g, "connect to the database failed", NULL);
        rc = TREATY_EPG;
        goto fail_db;
    }
    rc = work != NULL ? check_server(g) : 0; /* saga only: no PREPARE TRANSACTION */
    if (rc < 0)
        goto fail_db;
    rc = create_schema(g);
    if (rc < 0)
        goto fail_db;
    if (!g->saga_ready) /* the upgrade waits for a lock: say why saga steps will wait */
        participant_errorf(p, "%s", g->last_err);
    *out = p;
    return 0;

fail_db:
    /* The handle is returned so that its errmsg can say what went wrong;
     * the caller destroys it (see treaty.h). */
    participant_errorf(p, "%s", g->last_err);
    *out = p;
    return rc;
fail_conn:
    treaty_participant_destroy(&p); /* frees core and g */
    return rc;
fail_participant:
    pg_core_free(core);
    return rc;
}

/* The pg core of a participant made by treaty_pg_participant_new, else NULL. */
static struct pg_core *pg_of(treaty_participant_t *p)
{
    return pg_core_of(participant_core(p));
}

static int pg_register(treaty_participant_t *p, enum pcore_step_kind kind, const char *name, treaty_pg_step_fn fn,
                       void *arg)
{
    if (p == NULL || fn == NULL)
        return TREATY_EINVAL;
    if (pg_of(p) == NULL) {
        participant_errorf(p, "treaty_pg_on_%s: not a participant made by treaty_pg_participant_new",
                           kind == PCORE_ACTION ? "action" : "compensation");
        return TREATY_EINVAL;
    }
    if (name == NULL || !wire_name_ok((const uint8_t *)name, strnlen(name, WIRE_NAME_MAX + 1)))
        return TREATY_EINVAL;
    if (participant_started(p))
        return TREATY_ESTATE; /* the SDK thread reads the table without a lock */
    return pg_core_on_step(participant_core(p), kind, name, fn, arg);
}

int treaty_pg_on_action(treaty_participant_t *p, const char *name, treaty_pg_step_fn fn, void *arg)
{
    return pg_register(p, PCORE_ACTION, name, fn, arg);
}

int treaty_pg_on_compensation(treaty_participant_t *p, const char *name, treaty_pg_step_fn fn, void *arg)
{
    return pg_register(p, PCORE_COMPENSATION, name, fn, arg);
}

long treaty_pg_barrier_purge(treaty_participant_t *p, unsigned older_than_s)
{
    if (p == NULL || pg_of(p) == NULL)
        return TREATY_EINVAL;
    if (!participant_on_owner_thread(p))
        return TREATY_ESTATE; /* the connection belongs to the participant's thread */
    return pg_core_purge(participant_core(p), older_than_s);
}
