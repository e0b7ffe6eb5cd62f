/*
 * pg.c - treaty_pg_participant_new: a participant whose branches are local
 * PostgreSQL transactions ended by PREPARE TRANSACTION; and treaty_pg_on_action
 * / treaty_pg_on_compensation: saga steps run through the barrier.
 *
 * Every branch has a global transaction id (gid) in Postgres:
 *     treaty:<txid as lowercase uuid>:<branch>
 * and a barrier row treaty_barrier(txid, branch, 'prepare') written in the
 * same local transaction as the branch's work.
 *
 * Lifecycle of a branch at this participant
 *   1. PREPARE (a and b are one query string: one round trip)
 *      a. gid already in pg_prepared_xacts: a duplicate of a PREPARE we
 *         already made durable. Vote YES again without running the work.
 *      b. BEGIN; insert the barrier row; read the purge horizon. If the row
 *         already exists the branch was prepared and then committed (the
 *         coordinator has moved on and ignores any answer): ROLLBACK and send
 *         no vote. If the txid is older than the purge horizon (see "purge
 *         horizon" below), the row may have been purged after a commit:
 *         ROLLBACK and vote NO. (A branch that was rolled back has no barrier
 *         row: its row went with the rolled-back transaction, so a late
 *         PREPARE within the horizon runs the work again, votes YES, and the
 *         coordinator, which decided abort long ago, answers ABORT.)
 *      c. work(); YES -> PREPARE TRANSACTION '<gid>', and only after it
 *         returned, vote YES. NO or error -> ROLLBACK, vote NO / no vote.
 *   2. COMMIT  -> COMMIT PREPARED '<gid>'
 *   3. ABORT   -> ROLLBACK PREPARED '<gid>'
 *      Either finding no prepared transaction (42704) asks the barrier row,
 *      which is committed if and only if the branch committed (see
 *      finish_missing): a COMMIT is acknowledged only when the branch did
 *      commit (a duplicate), an ABORT only when it did not (never prepared
 *      here, or rolled back: presumed abort). The other two - a COMMIT for a
 *      branch that was rolled back (e.g. by a twin instance told ABORT), an
 *      ABORT for a committed one - are alerts and get no ACK. A row held
 *      uncommitted by a twin preparing the branch: no ACK yet. A COMMIT
 *      without a row for a txid older than the purge horizon cannot be
 *      judged and is acknowledged with a warning.
 *   4. In doubt: after start-up (first WELCOME) and then periodically, every
 *      treaty:* prepared transaction of this database is INQUIREd; the answer
 *      comes back as COMMIT or ABORT (steps 2/3).
 *
 * Saga steps (branch = step index) go through the same barrier table, rows
 * (txid, step, 'action') and (txid, step, 'compensation'), each written in
 * the one local transaction that also holds the step's business change, on
 * the participant's own connection. The action row's result column says what
 * happened: 'ok', 'failed' (business failure; its change was rolled back to a
 * savepoint but the row stays), or 'blocked' (written by a compensation that
 * came first). See the comment above action_once() for the algorithm and its
 * crash windows. The user's fn never sees BEGIN or COMMIT: it gets the
 * connection inside the transaction, and if it ends that transaction itself
 * the step is answered as transient with a reason that says so.
 *
 * Purge horizon. treaty_pg_barrier_purge deletes old barrier rows and records
 * in treaty_barrier_horizon, in the same transaction, the time before which
 * rows may be gone; it deletes a row only when the row and its txid, a
 * UUIDv7, were both created before that horizon (rows of other txids are
 * never purged: their age is unknown). Where a missing row would decide, a
 * UUIDv7 txid created before the horizon is treated as "the row may have
 * been purged": its PREPARE is voted NO, its action refused (FAILED: it may
 * be a hanging action after a purged compensation), its compensation not run
 * and answered transient (it cannot tell whether the action ran), its COMMIT
 * acknowledged with a warning. Where the row is there, it decides as always.
 * The horizon is read in a statement after the barrier INSERT, which makes it
 * race-free against a concurrent purge (see "purge horizon" below).
 *
 * The PGconn belongs to the participant's thread: handlers and the sweep run
 * there only. When the connection breaks (Postgres restarted), handlers
 * reconnect with capped exponential backoff and return TREATY_EPG meanwhile,
 * so no vote or ACK is sent and the coordinator's re-sends / timeouts carry
 * the protocol forward.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "fault.h"
#include "participant_int.h"
#include "sql_barrier.h"
#include "treaty.h"
#include "wire.h"

#define PG_GID_MAX 64
#define PG_BACKOFF_MIN_MS 100
#define PG_BACKOFF_MAX_MS 5000
#define PG_BARRIER_LOCK_TIMEOUT "5s"             /* waiting on a barrier row another session holds */
#define PG_SCHEMA_LOCK_TIMEOUT "2s"              /* waiting to upgrade the barrier table */
#define PG_SCHEMA_LOCK_KEY "7596536934174785537" /* advisory lock around CREATE TABLE */
#define PG_SCHEMA_V3_MARK "-- Version 3:"        /* sql_barrier from here on: the horizon table alone */
#define SQLSTATE_UNDEFINED_OBJECT "42704"
#define SQLSTATE_UNDEFINED_PSTATEMENT "26000"
#define SQLSTATE_LOCK_NOT_AVAILABLE "55P03"

struct pgp {
    treaty_participant_t *p; /* the participant that owns this */
    PGconn *conn;
    treaty_pg_work_fn work; /* NULL: saga steps only, every PREPARE is voted NO */
    void *arg;
    bool schema_ready;                /* the barrier table and the horizon table exist (2PC can run) */
    bool saga_ready;                  /* ... and the version 2 columns too (saga steps can run) */
    bool check_ready;                 /* PG_PREPARE_CHECK is prepared in this session */
    char last_err[TREATY_REASON_MAX]; /* the last text given to errmsg: a failed step's reason */
    int backoff_ms;
    int64_t next_reset; /* monotonic ms: earliest next reconnect */
};

/* ------------------------------------------------------------- helpers */

static void notice_ignore(void *arg, const char *message)
{
    (void)arg;
    (void)message; /* "relation already exists, skipping" and the like */
}

/* "treaty:<uuid>:<branch>" into gid[PG_GID_MAX]. Only [0-9a-f:-] and the
 * prefix, so the gid may be written as a SQL literal between quotes. */
static void make_gid(const treaty_txid_t *id, unsigned branch, char *gid)
{
    char ids[TREATY_TXID_STRLEN];
    snprintf(gid, PG_GID_MAX, "treaty:%s:%u", treaty_txid_format(id, ids), branch);
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

/* Parses a gid made by make_gid. */
static bool parse_gid(const char *gid, treaty_txid_t *id, unsigned *branch)
{
    static const char prefix[] = "treaty:";
    char uuid[TREATY_TXID_STRLEN];
    size_t pl = sizeof prefix - 1;

    if (strncmp(gid, prefix, pl) != 0 || strlen(gid) < pl + 36 + 2 || gid[pl + 36] != ':')
        return false;
    memcpy(uuid, gid + pl, 36);
    uuid[36] = '\0';
    if (treaty_txid_parse(uuid, id) < 0)
        return false;
    const char *d = gid + pl + 37;
    unsigned long v = 0;
    size_t n = 0;
    for (; d[n] != '\0'; n++) {
        if (d[n] < '0' || d[n] > '9' || n >= 5)
            return false;
        v = v * 10 + (unsigned long)(d[n] - '0');
    }
    if (n == 0 || v > UINT16_MAX)
        return false;
    *branch = (unsigned)v;
    return true;
}

static const char *sqlstate(const PGresult *r)
{
    const char *s = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    return s != NULL ? s : "";
}

/* Writes a text to errmsg and keeps it in g->last_err (for a step's reason). */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
note(struct pgp *g, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->last_err, sizeof g->last_err, fmt, ap);
    va_end(ap);
    for (char *c = g->last_err; *c; c++) /* one line: libpq's messages span several */
        if ((unsigned char)*c < 0x20)
            *c = ' ';
    participant_errorf(g->p, "%s", g->last_err);
}

/* Records a failed statement in errmsg: "<what>: <message> (SQLSTATE x)". */
static void pg_report(struct pgp *g, const char *what, const PGresult *r)
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
static int exec_cmd(struct pgp *g, const char *what, const char *sql)
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
static int multi_exec(struct pgp *g, const char *sql, struct multi *m)
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
static void rollback(struct pgp *g)
{
    PGTransactionStatusType ts = PQtransactionStatus(g->conn);
    if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)
        PQclear(PQexec(g->conn, "ROLLBACK"));
}

/* Runs one DDL script inside the schema transaction; on failure reports it
 * under what and leaves *locked set when it could not get a lock in time. */
static int run_ddl(struct pgp *g, const char *what, const char *sql, bool *locked)
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
static int schema_begin(struct pgp *g)
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
static int create_schema(struct pgp *g)
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
static int pg_ready(struct pgp *g)
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
static bool conn_broke(struct pgp *g)
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

/* True when rows of id may have been purged: a UUIDv7 made before the horizon. */
static bool before_horizon(const treaty_txid_t *id, long long horizon_ms)
{
    long long t = treaty_txid_time_ms(id);
    return horizon_ms >= 0 && t >= 0 && t < horizon_ms;
}

/* ------------------------------------------------------------- prepare */

/*
 * Steps (a) and (b) of a PREPARE in one round trip: a simple query of five
 * statements, the barrier INSERT skipped when the gid is already prepared,
 * the purge horizon read after it.
 * The check itself is a statement prepared once per session (its planning,
 * through the pg_prepared_xacts view and two CTEs, costs more than running
 * it), run with EXECUTE. Literals only (no parameters in a multi-statement
 * query): the gid passed gid_literal_safe(), the txid is make_gid's UUID,
 * the branch a number.
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
static int prepare_check_ready(struct pgp *g)
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

static int prepare_once(struct pgp *g, const treaty_branch_t *b, char *reason)
{
    char gid[PG_GID_MAX], ids[TREATY_TXID_STRLEN], branch[16], sql[PG_GID_MAX + 1024];
    make_gid(&b->txid, b->branch, gid);
    treaty_txid_format(&b->txid, ids);
    snprintf(branch, sizeof branch, "%u", b->branch);
    if (!gid_literal_safe(gid)) /* cannot happen: make_gid's alphabet */
        return TREATY_EINVAL;

    /* (a) Already prepared: a duplicate PREPARE. The branch is durable and
     * undecided, exactly what a YES vote promises.
     * (b) Otherwise the barrier row, in the branch's own transaction.
     * One query string, BEGIN included: its statements run in order and
     * the first error skips the rest (the transaction is then failed). */
    if (prepare_check_ready(g) < 0)
        return TREATY_EPG;
    snprintf(sql, sizeof sql, PG_PREPARE_BEGIN_SQL, gid, ids, b->branch);
    struct multi m;
    long long horizon = -1;
    int rc = multi_exec(g, sql, &m);
    bool shaped =
        rc == 0 && m.n == 5 && PQntuples(m.res[2]) == 1 && PQnfields(m.res[2]) == 2 && horizon_of(m.res[4], &horizon);
    if (!shaped) {
        /* 55P03: another session holds the row (a twin instance preparing
         * the same branch, or its prepared transaction). No vote; the
         * coordinator re-sends or times out. */
        const PGresult *failed = m.failed;
        int nok = m.n; /* statements that succeeded before the failed one */
        if (failed != NULL && strcmp(sqlstate(failed), SQLSTATE_LOCK_NOT_AVAILABLE) == 0)
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
        /* A failed BEGIN, SET or horizon read is a database problem
         * (TREATY_EPG, as a broken connection); a failed barrier INSERT a
         * state one. */
        return nok != 2 || conn_broke(g) ? TREATY_EPG : TREATY_ESTATE;
    }
    bool prepared = strcmp(PQgetvalue(m.res[2], 0, 0), "t") == 0;
    bool inserted = strcmp(PQgetvalue(m.res[2], 0, 1), "1") == 0;
    multi_clear(&m);
    if (prepared) {
        rollback(g);
        return TREATY_VOTE_YES;
    }
    if (!inserted) {
        /* The branch was prepared and committed before: this PREPARE is a
         * stale duplicate, any vote would be ignored. Send none. */
        rollback(g);
        participant_errorf(g->p, "duplicate PREPARE for %s: branch %s already committed; no vote", gid, branch);
        return TREATY_ESTATE;
    }
    if (before_horizon(&b->txid, horizon)) {
        /* No row, but one may have been purged: this could be a late
         * duplicate of a branch that committed here, and running the work
         * again could apply it twice (a YES for a branch the coordinator
         * still remembers as committed would be answered COMMIT). NO is
         * always safe: a decided transaction ignores it, a live one aborts. */
        rollback(g);
        snprintf(reason, TREATY_REASON_MAX,
                 "PREPARE older than the barrier's purge horizon (the branch may have committed here and its "
                 "barrier row been purged)");
        participant_errorf(g->p, "%s: %s; voted NO", gid, reason);
        return TREATY_VOTE_NO;
    }

    /* (c) The business work, in the same transaction. */
    reason[0] = '\0';
    int vote = g->work(g->arg, g->conn, b, reason);
    reason[TREATY_REASON_MAX - 1] = '\0';
    if (vote != TREATY_VOTE_YES) {
        rollback(g);
        if (vote < 0) {
            participant_errorf(g->p, "work for %s failed: %s; rolled back, no vote", gid, treaty_err_name(vote));
            return conn_broke(g) ? TREATY_EPG : vote;
        }
        if (vote != TREATY_VOTE_NO)
            snprintf(reason, TREATY_REASON_MAX, "work returned %d, not a vote", vote);
        return TREATY_VOTE_NO;
    }
    PGTransactionStatusType ts = PQtransactionStatus(g->conn);
    if (ts != PQTRANS_INTRANS) {
        /* work() hit an error and still said YES, or ended the transaction
         * itself. PREPARE TRANSACTION would only roll back. */
        rollback(g);
        if (ts == PQTRANS_UNKNOWN || conn_broke(g)) {
            participant_errorf(g->p, "connection lost during work for %s; no vote", gid);
            return TREATY_EPG;
        }
        snprintf(reason, TREATY_REASON_MAX, "work voted YES but the transaction was %s",
                 ts == PQTRANS_INERROR ? "failed" : "ended by work");
        participant_errorf(g->p, "%s: %s", gid, reason);
        return TREATY_VOTE_NO;
    }

    snprintf(sql, sizeof sql, "PREPARE TRANSACTION '%s'", gid);
    PGresult *r = PQexec(g->conn, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        /* Not prepared (e.g. max_prepared_transactions reached): the server
         * rolled the transaction back. No vote. */
        pg_report(g, "PREPARE TRANSACTION", r);
        PQclear(r);
        rollback(g);
        return TREATY_EPG;
    }
    bool ok = strcmp(PQcmdStatus(r), "PREPARE TRANSACTION") == 0;
    PQclear(r);
    if (!ok) {
        snprintf(reason, TREATY_REASON_MAX, "PREPARE TRANSACTION rolled back");
        return TREATY_VOTE_NO;
    }
    /* Durable point: the branch is prepared. If we crash now, before the
     * vote leaves, the coordinator aborts on its prepare timeout (or re-sends
     * PREPARE, answered by step (a)); after our restart the in-doubt sweep
     * INQUIREs and the ABORT rolls the prepared transaction back. */
    FAULT_POINT("participant.after_prepare");
    return TREATY_VOTE_YES;
}

static int pg_prepare(void *arg, const treaty_branch_t *b, char *reason)
{
    struct pgp *g = arg;
    if (g->work == NULL) {
        snprintf(reason, TREATY_REASON_MAX, "this participant does not take part in 2PC");
        return TREATY_VOTE_NO;
    }
    for (int attempt = 0;; attempt++) {
        int rc = pg_ready(g);
        if (rc < 0)
            return rc;
        rc = prepare_once(g, b, reason);
        /* Every step is idempotent (a lost transaction is rolled back by the
         * server, a completed PREPARE is found by step (a)): retry once
         * when the connection broke under us. */
        if (rc != TREATY_EPG || attempt > 0 || !conn_broke(g))
            return rc;
    }
}

/* ----------------------------------------------------- commit / abort */

/*
 * The barrier row of a branch whose COMMIT / ROLLBACK PREPARED found no
 * prepared transaction (42704). The row (txid, branch, 'prepare') is written
 * in the branch's own transaction, so once that transaction has ended the row
 * is there, committed, if and only if the branch committed.
 *
 * It is probed with an INSERT of that row, rolled back at once, not with a
 * SELECT: a SELECT sees committed rows only, so a row that a twin instance
 * sharing the database holds uncommitted - it is preparing the branch right
 * now, or has just made it a prepared transaction - would look absent. The
 * INSERT's uniqueness check sees that row and waits for its transaction
 * (bounded by PG_PROBE_LOCK_TIMEOUT), which tells the three cases apart:
 * inserted (no row), conflict (committed row), lock timeout (held). The probe
 * writes nothing: its transaction always rolls back; a twin's barrier INSERT
 * that meets it waits the few milliseconds until it has.
 */
enum branch_fate {
    FATE_COMMITTED, /* the row is committed: the branch committed here */
    FATE_ABSENT,    /* no row: the branch was never prepared here, or rolled back */
    FATE_HELD       /* another transaction holds the row: a twin preparing the branch, or its prepared transaction */
};

#define PG_PROBE_LOCK_TIMEOUT "1s"
#define PG_PROBE_SQL                                                                                                   \
    "BEGIN; SET LOCAL lock_timeout = '" PG_PROBE_LOCK_TIMEOUT "'; "                                                    \
    "INSERT INTO treaty_barrier (txid, branch, op) VALUES ('%s', %u, 'prepare') ON CONFLICT DO NOTHING RETURNING "     \
    "1; " PG_HORIZON_SQL "; ROLLBACK"

/* *fate of branch b, and the purge horizon (read after the INSERT, see
 * "purge horizon"; -1 when not read), or TREATY_EPG (reported). */
static int branch_fate(struct pgp *g, const treaty_branch_t *b, enum branch_fate *fate, long long *horizon)
{
    char ids[TREATY_TXID_STRLEN], sql[512];
    *horizon = -1;
    snprintf(sql, sizeof sql, PG_PROBE_SQL, treaty_txid_format(&b->txid, ids), b->branch);
    struct multi m;
    int rc = multi_exec(g, sql, &m);
    if (rc < 0) {
        bool held = m.failed != NULL && m.n == 2 && strcmp(sqlstate(m.failed), SQLSTATE_LOCK_NOT_AVAILABLE) == 0;
        if (held)
            *fate = FATE_HELD;
        else
            pg_report(g, "probe barrier row", m.failed);
        multi_clear(&m);
        rollback(g);
        return held ? 0 : TREATY_EPG;
    }
    bool shaped = m.n == 5 && PQresultStatus(m.res[2]) == PGRES_TUPLES_OK && horizon_of(m.res[3], horizon);
    if (shaped)
        *fate = PQntuples(m.res[2]) == 1 ? FATE_ABSENT : FATE_COMMITTED;
    multi_clear(&m);
    rollback(g); /* already ended by the ROLLBACK; in case it was not */
    if (!shaped) {
        note(g, "probe barrier row: unexpected results");
        return TREATY_EPG;
    }
    return 0;
}

/*
 * COMMIT / ROLLBACK PREPARED '<gid>' found no prepared transaction (42704).
 * Either the decision was applied before (a duplicate), or the branch was
 * never prepared here, or it was rolled back - e.g. by a twin instance of the
 * service, sharing this database, that was told ABORT for it. The barrier
 * row tells which (branch_fate):
 *   COMMIT, committed: committed before; ACK (a duplicate).
 *   COMMIT, absent:    the branch did not commit, and with no prepared
 *                      transaction left it never will. An ACK would report a
 *                      commit that did not happen: alert, no ACK. The
 *                      coordinator keeps re-sending; an operator must look.
 *                      Except for a txid older than the purge horizon: its
 *                      row may have been purged after it committed, and
 *                      nothing can tell. ACK with a warning: refusing would
 *                      have the coordinator re-send forever, and a COMMIT
 *                      that old is a re-send of a decision whose atomicity
 *                      was settled (or lost) when it was first delivered.
 *   ABORT, absent:     never prepared, or rolled back before (or, older than
 *                      the horizon, possibly committed and purged: cannot
 *                      be told, ACK as for any abort); ACK.
 *   ABORT, committed:  the branch committed and the decision says abort: a
 *                      violation of atomicity elsewhere. Alert, no ACK.
 *   either, held:      a twin instance is preparing the branch or has just
 *                      prepared it: nothing to say yet; no ACK. The re-sent
 *                      decision finds the prepared transaction or the outcome.
 * 0 (acknowledge) or a negative TREATY_E* (no ACK).
 */
static int finish_missing(struct pgp *g, const treaty_branch_t *b, const char *gid, bool commit)
{
    enum branch_fate fate;
    long long horizon;
    if (branch_fate(g, b, &fate, &horizon) < 0)
        return TREATY_EPG;
    switch (fate) {
    case FATE_COMMITTED:
        if (commit)
            return 0;
        pcore_log(participant_core(g->p), PCORE_ALERT,
                  "ABORT for %s refused: that branch committed here; not acknowledged (the abort decision "
                  "contradicts a committed branch)",
                  gid);
        return TREATY_ESTATE;
    case FATE_ABSENT:
        if (!commit)
            return 0;
        if (before_horizon(&b->txid, horizon)) {
            participant_errorf(g->p,
                               "COMMIT for %s: neither prepared nor a barrier row, but older than the barrier's purge "
                               "horizon (its row may have been purged after it committed); acknowledged unverified",
                               gid);
            return 0;
        }
        pcore_log(participant_core(g->p), PCORE_ALERT,
                  "COMMIT for %s refused: the branch is neither prepared nor committed here (never prepared, "
                  "or rolled back); not acknowledged",
                  gid);
        return TREATY_ESTATE;
    case FATE_HELD:
        break;
    }
    note(g,
         "%s for %s: no prepared transaction, and its barrier row is held by another transaction (a twin instance "
         "preparing or deciding it); not acknowledged yet",
         commit ? "COMMIT" : "ABORT", gid);
    return TREATY_EPG;
}

static int finish_once(struct pgp *g, const treaty_branch_t *b, bool commit)
{
    char gid[PG_GID_MAX], sql[PG_GID_MAX + 32];
    make_gid(&b->txid, b->branch, gid);
    if (!gid_literal_safe(gid))
        return TREATY_EINVAL;
    snprintf(sql, sizeof sql, "%s PREPARED '%s'", commit ? "COMMIT" : "ROLLBACK", gid);
    PGresult *r = PQexec(g->conn, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        bool missing = strcmp(sqlstate(r), SQLSTATE_UNDEFINED_OBJECT) == 0;
        if (!missing)
            pg_report(g, commit ? "COMMIT PREPARED" : "ROLLBACK PREPARED", r);
        PQclear(r);
        return missing ? finish_missing(g, b, gid, commit) : TREATY_EPG;
    }
    PQclear(r);
    /* Durable point: the decision is applied. If we crash now, before the
     * ACK leaves, the coordinator re-sends the decision and we answer it
     * through finish_missing: the barrier row is there for a commit and
     * gone for an abort. */
    if (commit)
        FAULT_POINT("participant.after_commit");
    return 0;
}

static int pg_finish(struct pgp *g, const treaty_branch_t *b, bool commit)
{
    for (int attempt = 0;; attempt++) {
        int rc = pg_ready(g);
        if (rc < 0)
            return rc;
        rc = finish_once(g, b, commit);
        if (rc != TREATY_EPG || attempt > 0 || !conn_broke(g))
            return rc;
    }
}

static int pg_commit(void *arg, const treaty_branch_t *b)
{
    /* If we crash here the branch stays prepared; the coordinator re-sends
     * COMMIT, and our in-doubt sweep after restart INQUIREs for it. */
    FAULT_POINT("participant.before_commit");
    return pg_finish(arg, b, true);
}

static int pg_abort(void *arg, const treaty_branch_t *b)
{
    return pg_finish(arg, b, false);
}

/* --------------------------------------------------------- in-doubt sweep */

/* Runs on the participant's thread after the first WELCOME (first) and then
 * periodically: INQUIRE for every treaty:* prepared transaction of this
 * database. Periodic sweeps skip transactions younger than one sweep period,
 * which are most likely still being decided normally. */
static void pg_sweep(void *arg, struct pcore *pc, bool first)
{
    struct pgp *g = arg;
    char min_age[16];
    if (pg_ready(g) < 0)
        return;
    snprintf(min_age, sizeof min_age, "%d", first ? 0 : PCORE_SWEEP_MS);
    const char *pv[1] = {min_age};
    PGresult *r = PQexecParams(g->conn,
                               "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() "
                               "AND gid LIKE 'treaty:%' AND now() - prepared >= $1::integer * interval '1 ms' "
                               "ORDER BY prepared",
                               1, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pg_report(g, "list in-doubt prepared transactions", r);
        PQclear(r);
        return;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        const char *gid = PQgetvalue(r, i, 0);
        treaty_txid_t id;
        unsigned branch;
        if (!parse_gid(gid, &id, &branch)) {
            pcore_log(pc, PCORE_NOTE, "prepared transaction %s is not Treaty's; left alone", gid);
            continue;
        }
        (void)pcore_inquire(pc, &id, branch);
    }
    PQclear(r);
}

static void pg_free(void *arg)
{
    struct pgp *g = arg;
    if (g == NULL)
        return;
    PQfinish(g->conn);
    free(g);
}

/* ---------------------------------------------------------------- new */

static int check_server(struct pgp *g)
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
        participant_errorf(g->p, "max_prepared_transactions is 0 on this server: PREPARE TRANSACTION is "
                                 "disabled (set it above 0 and restart PostgreSQL)");
        return TREATY_EPG;
    }
    return 0;
}

int treaty_pg_participant_new(const char *endpoint, const char *service, const char *instance, const char *conninfo,
                              treaty_pg_work_fn work, void *arg, treaty_participant_t **out)
{
    if (out == NULL)
        return TREATY_EINVAL;
    *out = NULL;
    if (conninfo == NULL)
        return TREATY_EINVAL;

    struct pgp *g = calloc(1, sizeof *g);
    if (g == NULL)
        return TREATY_ENOMEM;
    g->work = work;
    g->arg = arg;
    treaty_handlers_t h = {pg_prepare, pg_commit, pg_abort, g};
    treaty_participant_t *p;
    int rc = treaty_participant_new(endpoint, service, instance, &h, &p);
    if (rc < 0)
        goto fail_participant;
    g->p = p;
    struct pcore_ext ext = {pg_sweep, pg_free, g};
    pcore_set_ext(participant_core(p), &ext); /* p owns g from here on */

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
    *out = p;
    return 0;

fail_db:
    /* The handle is returned so that its errmsg can say what went wrong;
     * the caller destroys it (see treaty.h). */
    *out = p;
    return rc;
fail_conn:
    treaty_participant_destroy(&p); /* frees g through on_destroy */
    return rc;
fail_participant:
    free(g);
    return rc;
}

/* ------------------------------------------------------------ saga steps */

/*
 * Action of step k of saga t (one local transaction on g->conn):
 *   BEGIN; INSERT (t, k, 'action', result NULL) ON CONFLICT DO NOTHING
 *     conflict: a duplicate, or a compensation came first. Read the row's
 *       result, ROLLBACK and answer from it: 'ok' -> OK, 'failed' -> FAILED
 *       with the stored reason, 'blocked' -> FAILED (hanging action refused).
 *   SAVEPOINT treaty_step, and read the purge horizon: t older than it ->
 *     ROLLBACK -> FAILED (its compensation may have come first and its rows
 *     been purged: refused as a possible hanging action; nothing written)
 *   fn()
 *     OK     -> result = 'ok'; COMMIT -> OK
 *     FAILED -> ROLLBACK TO SAVEPOINT (the business change goes, the row
 *               stays); result = 'failed', reason; COMMIT -> FAILED
 *     error  -> ROLLBACK (no row: the next try starts afresh) -> transient
 * Crash windows: before COMMIT nothing happened (the server rolls back); after
 * it, before the RESULT left, the coordinator re-sends the STEP and the
 * conflict path answers with the first result.
 *
 * Compensation of step k:
 *   BEGIN; INSERT (t, k, 'compensation') ON CONFLICT DO NOTHING
 *     conflict: already compensated -> ROLLBACK -> OK
 *   INSERT (t, k, 'action', 'blocked') ON CONFLICT DO NOTHING
 *     inserted: the action never ran here; it never will (refused above).
 *       Read the purge horizon: t older than it -> its rows may have been
 *       purged, the action may have run: ROLLBACK -> transient (an alert;
 *       the saga shows stuck). Otherwise COMMIT -> OK (null compensation)
 *   the action row's result: 'failed' or 'blocked' -> nothing to undo ->
 *     COMMIT -> OK; otherwise fn(): OK -> COMMIT -> OK, else ROLLBACK ->
 *     transient (the coordinator retries with backoff).
 * Crash windows as for the action: the compensation row commits with the
 * undo, so a re-sent compensation after a crash is answered OK, undone once.
 *
 * Two instances of the service sharing the database serialize on the barrier
 * row (the second INSERT waits for the first transaction); lock_timeout
 * bounds that wait, and the loser answers transient.
 *
 * fn must not end the transaction. PQtransactionStatus after fn catches a
 * COMMIT or ROLLBACK; the final UPDATE of the barrier row names the
 * transaction id read at the INSERT, which catches "COMMIT; BEGIN". Either
 * way the try is answered transient. (If fn did COMMIT, the barrier row was
 * committed with no result: later duplicates of the action stay transient, and
 * its compensation runs fn, since the business change may be there.)
 */

#define PG_STEP_SAVEPOINT "treaty_step"
#define PG_BARRIER_BEGIN "BEGIN; SET LOCAL lock_timeout = '" PG_BARRIER_LOCK_TIMEOUT "'"

struct pg_step {
    struct pgp *g;
    treaty_pg_step_fn fn;
    void *arg;
};

/* The pgp of a participant made by treaty_pg_participant_new, else NULL. */
static struct pgp *pgp_of(treaty_participant_t *p)
{
    const struct pcore_ext *ext = pcore_get_ext(participant_core(p));
    return ext->on_destroy == pg_free ? ext->arg : NULL;
}

/* Runs a command that returns no rows; on failure the step's reason says why. */
static int step_cmd(struct pgp *g, char *reason, const char *what, const char *sql)
{
    if (exec_cmd(g, what, sql) < 0) {
        snprintf(reason, TREATY_REASON_MAX, "%s", g->last_err);
        return TREATY_EPG;
    }
    return 0;
}

static int step_fail(struct pgp *g, char *reason, const char *what, PGresult *r)
{
    pg_report(g, what, r);
    PQclear(r);
    snprintf(reason, TREATY_REASON_MAX, "%s", g->last_err);
    rollback(g);
    return TREATY_EPG;
}

/* Runs sql, n statements in the step's transaction ending with
 * PG_HORIZON_SQL, and reads *horizon from it. 0, or TREATY_EPG with the
 * reason set (the caller rolls back). */
static int step_horizon(struct pgp *g, char *reason, const char *what, const char *sql, int n, long long *horizon)
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
    if (rc < 0)
        snprintf(reason, TREATY_REASON_MAX, "%s", g->last_err);
    return rc;
}

/* After fn: is the step's transaction still open and usable? 0, or a
 * negative TREATY_E* with the reason set (the transaction rolled back). */
static int check_fn_txn(struct pgp *g, const char *kind, const treaty_step_t *s, bool ok, char *reason)
{
    PGTransactionStatusType ts = PQtransactionStatus(g->conn);
    if (ts == PQTRANS_UNKNOWN || PQstatus(g->conn) != CONNECTION_OK) {
        note(g, "connection lost during %s %s of step %u", kind, s->name, s->step);
        snprintf(reason, TREATY_REASON_MAX, "%s", g->last_err);
        return TREATY_EPG;
    }
    if (ts == PQTRANS_IDLE) {
        note(g,
             "%s handler %s ended the step's transaction itself (it must not COMMIT or ROLLBACK); "
             "barrier bypassed, try counted as transient",
             kind, s->name);
        snprintf(reason, TREATY_REASON_MAX, "%s", g->last_err);
        return TREATY_ESTATE;
    }
    if (ok && ts == PQTRANS_INERROR) {
        rollback(g);
        note(g, "%s handler %s returned OK, but a statement in its transaction failed; rolled back", kind, s->name);
        snprintf(reason, TREATY_REASON_MAX, "%s", g->last_err);
        return TREATY_ESTATE;
    }
    return 0;
}

/* UPDATE of the step's own barrier row, only inside the transaction that
 * inserted it (xid). 0, or a negative TREATY_E* (rolled back, reason set). */
static int update_row(struct pgp *g, const char *kind, const treaty_step_t *s, const char *sql, const char *const *pv,
                      int n, char *reason)
{
    PGresult *r = PQexecParams(g->conn, sql, n, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        return step_fail(g, reason, "update barrier row", r);
    bool same = strcmp(PQcmdTuples(r), "1") == 0;
    PQclear(r);
    if (!same) {
        rollback(g);
        note(g,
             "%s handler %s ended the step's transaction itself and began another (it must not COMMIT or "
             "ROLLBACK); barrier bypassed, try counted as transient",
             kind, s->name);
        snprintf(reason, TREATY_REASON_MAX, "%s", g->last_err);
        return TREATY_ESTATE;
    }
    return 0;
}

static int step_commit(struct pgp *g, char *reason)
{
    PGresult *r = PQexec(g->conn, "COMMIT");
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        return step_fail(g, reason, "COMMIT step", r);
    bool ok = strcmp(PQcmdStatus(r), "COMMIT") == 0;
    PQclear(r);
    if (!ok) { /* the server rolled back instead */
        note(g, "COMMIT of the step rolled back");
        snprintf(reason, TREATY_REASON_MAX, "%s", g->last_err);
        return TREATY_EPG;
    }
    return 0;
}

/* BEGIN, then the step's barrier row for op ("action" or "compensation"),
 * locking it. Returns the INSERT's result (no row: the row was there
 * already), or NULL with *rc set (rolled back, the reason says why). */
static PGresult *barrier_insert(struct pgp *g, const char *op, const char *const pk[2], char *reason, int *rc)
{
    char what[64];
    snprintf(what, sizeof what, "BEGIN (%s)", op);
    if (step_cmd(g, reason, what, PG_BARRIER_BEGIN) < 0) {
        rollback(g);
        *rc = TREATY_EPG;
        return NULL;
    }
    const char *pv[3] = {pk[0], pk[1], op};
    PGresult *r = PQexecParams(g->conn,
                               "INSERT INTO treaty_barrier (txid, branch, op, result) "
                               "VALUES ($1::uuid, $2::integer, $3, NULL) "
                               "ON CONFLICT DO NOTHING RETURNING pg_current_xact_id()::text",
                               3, NULL, pv, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        if (strcmp(sqlstate(r), SQLSTATE_LOCK_NOT_AVAILABLE) == 0)
            snprintf(what, sizeof what, "%s barrier row held by another transaction", op);
        else
            snprintf(what, sizeof what, "insert %s barrier row", op);
        *rc = step_fail(g, reason, what, r);
        return NULL;
    }
    return r;
}

static int action_once(struct pg_step *ps, const treaty_step_t *s, char *reason)
{
    struct pgp *g = ps->g;
    char ids[TREATY_TXID_STRLEN], step[16], xid[32];
    treaty_txid_format(&s->txid, ids);
    snprintf(step, sizeof step, "%u", s->step);
    const char *pk[2] = {ids, step};

    int rc = 0;
    PGresult *r = barrier_insert(g, "action", pk, reason, &rc);
    if (r == NULL)
        return rc;
    if (PQntuples(r) == 0) {
        /* A duplicate, or the compensation came first: answer from the row. */
        PQclear(r);
        r = PQexecParams(g->conn,
                         "SELECT result, reason FROM treaty_barrier "
                         "WHERE txid = $1::uuid AND branch = $2::integer AND op = 'action'",
                         2, NULL, pk, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK)
            return step_fail(g, reason, "read action barrier row", r);
        if (PQntuples(r) == 0) {
            /* Deleted between the two statements: a purge. Retried. */
            PQclear(r);
            rollback(g);
            note(g, "action barrier row of %s step %u was purged while it was read; retried", ids, s->step);
            snprintf(reason, TREATY_REASON_MAX, "%s", g->last_err);
            return TREATY_ESTATE;
        }
        char result[16] = "";
        bool have = !PQgetisnull(r, 0, 0);
        if (have)
            snprintf(result, sizeof result, "%s", PQgetvalue(r, 0, 0));
        if (!PQgetisnull(r, 0, 1))
            snprintf(reason, TREATY_REASON_MAX, "%s", PQgetvalue(r, 0, 1));
        PQclear(r);
        rollback(g);
        if (strcmp(result, "ok") == 0) {
            reason[0] = '\0';
            return TREATY_STEP_OK;
        }
        if (strcmp(result, "failed") == 0) {
            if (reason[0] == '\0')
                snprintf(reason, TREATY_REASON_MAX, "action %s failed", s->name);
            return TREATY_STEP_FAILED;
        }
        if (strcmp(result, "blocked") == 0) {
            snprintf(reason, TREATY_REASON_MAX, "compensated before the action arrived (hanging action refused)");
            return TREATY_STEP_FAILED;
        }
        /* No result: only an earlier handler that committed by itself leaves
         * that. Unknown: transient. */
        note(g,
             "action %s of %s step %u: barrier row without a result (an earlier handler ended its transaction "
             "itself); outcome unknown",
             s->name, ids, s->step);
        snprintf(reason, TREATY_REASON_MAX, "%s", g->last_err);
        return TREATY_ESTATE;
    }
    snprintf(xid, sizeof xid, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    /* The savepoint, and the purge horizon, read after the INSERT. */
    long long horizon;
    if (step_horizon(g, reason, "savepoint (action)",
                     "SET LOCAL lock_timeout TO DEFAULT; SAVEPOINT " PG_STEP_SAVEPOINT "; " PG_HORIZON_SQL, 3,
                     &horizon) < 0)
        goto fail_rollback;
    if (before_horizon(&s->txid, horizon)) {
        /* No row, but rows of this step may have been purged: its
         * compensation may have come first and blocked it, and running it
         * now would be a hanging action. Refused, and nothing written: a
         * re-send is refused the same way. */
        rollback(g);
        snprintf(reason, TREATY_REASON_MAX,
                 "step older than the barrier's purge horizon: refused (it may have been compensated already, its "
                 "barrier rows purged since)");
        participant_errorf(g->p, "action %s of %s step %u: %s", s->name, ids, s->step, reason);
        return TREATY_STEP_FAILED;
    }

    /* The business change, in the same transaction as the barrier row. */
    reason[0] = '\0';
    rc = ps->fn(ps->arg, g->conn, s, reason);
    reason[TREATY_REASON_MAX - 1] = '\0';
    int bad = check_fn_txn(g, "action", s, rc == TREATY_STEP_OK, reason);
    if (bad < 0) {
        rollback(g);
        return bad;
    }
    if (rc == TREATY_STEP_OK) {
        const char *pv[3] = {ids, step, xid};
        rc = update_row(g, "action", s,
                        "UPDATE treaty_barrier SET result = 'ok' WHERE txid = $1::uuid AND branch = $2::integer "
                        "AND op = 'action' AND pg_current_xact_id() = $3::xid8",
                        pv, 3, reason);
        if (rc < 0)
            return rc;
        if (step_commit(g, reason) < 0)
            return TREATY_EPG;
        /* Durable: the change and its barrier row. If we crash now the
         * coordinator re-sends the STEP and the duplicate answers OK. */
        reason[0] = '\0';
        return TREATY_STEP_OK;
    }
    if (rc == TREATY_STEP_FAILED) {
        /* Keep the barrier row, drop the business change: the failure is
         * recorded, so the compensation is a proper no-op. */
        if (reason[0] == '\0')
            snprintf(reason, TREATY_REASON_MAX, "action %s failed", s->name);
        char why[TREATY_REASON_MAX];
        snprintf(why, sizeof why, "%s", reason);
        PGresult *rr = PQexec(g->conn, "ROLLBACK TO SAVEPOINT " PG_STEP_SAVEPOINT);
        if (PQresultStatus(rr) != PGRES_COMMAND_OK)
            return step_fail(g, reason, "the action handler's savepoint is gone (did it end the transaction?)", rr);
        PQclear(rr);
        const char *pv[4] = {ids, step, why, xid};
        rc = update_row(g, "action", s,
                        "UPDATE treaty_barrier SET result = 'failed', reason = $3 WHERE txid = $1::uuid "
                        "AND branch = $2::integer AND op = 'action' AND pg_current_xact_id() = $4::xid8",
                        pv, 4, reason);
        if (rc < 0)
            return rc;
        if (step_commit(g, reason) < 0)
            return TREATY_EPG;
        snprintf(reason, TREATY_REASON_MAX, "%s", why);
        return TREATY_STEP_FAILED;
    }
    /* Transient (or not a step result): nothing stays, the next try starts afresh. */
    rollback(g);
    return rc;

fail_rollback:
    rollback(g);
    return TREATY_EPG;
}

static int compensation_once(struct pg_step *ps, const treaty_step_t *s, char *reason)
{
    struct pgp *g = ps->g;
    char ids[TREATY_TXID_STRLEN], step[16], xid[32];
    treaty_txid_format(&s->txid, ids);
    snprintf(step, sizeof step, "%u", s->step);
    const char *pk[2] = {ids, step};

    int rc = 0;
    PGresult *r = barrier_insert(g, "compensation", pk, reason, &rc);
    if (r == NULL)
        return rc;
    if (PQntuples(r) == 0) {
        PQclear(r); /* compensated before: a duplicate */
        rollback(g);
        return TREATY_STEP_OK;
    }
    snprintf(xid, sizeof xid, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);

    /* Block the action: if it never ran here, it never will. */
    r = PQexecParams(g->conn,
                     "INSERT INTO treaty_barrier (txid, branch, op, result) "
                     "VALUES ($1::uuid, $2::integer, 'action', 'blocked') ON CONFLICT DO NOTHING",
                     2, NULL, pk, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        return step_fail(g, reason,
                         strcmp(sqlstate(r), SQLSTATE_LOCK_NOT_AVAILABLE) == 0
                             ? "action barrier row held by another transaction"
                             : "insert blocking action barrier row",
                         r);
    bool blocked = strcmp(PQcmdTuples(r), "1") == 0;
    PQclear(r);
    if (blocked) {
        /* No action row - unless the rows of this step were purged: then the
         * action may have run (its undo is due) or this compensation may
         * have run already. Neither a null compensation nor fn is safe; the
         * compensation stays transient (stuck, for an operator). */
        long long horizon;
        if (step_horizon(g, reason, "read the purge horizon (compensation)", PG_HORIZON_SQL, 1, &horizon) < 0)
            goto fail_rollback;
        if (before_horizon(&s->txid, horizon)) {
            rollback(g);
            snprintf(reason, TREATY_REASON_MAX,
                     "compensation older than the barrier's purge horizon, with its barrier rows gone: whether the "
                     "action ran cannot be told; not run (needs an operator)");
            pcore_log(participant_core(g->p), PCORE_ALERT, "compensation %s of %s step %u: %s", s->name, ids, s->step,
                      reason);
            return TREATY_ESTATE;
        }
        /* Null compensation: nothing to undo. Durable with the COMMIT; a
         * re-sent compensation then takes the duplicate path. */
        if (step_commit(g, reason) < 0)
            return TREATY_EPG;
        return TREATY_STEP_OK;
    }
    r = PQexecParams(
        g->conn, "SELECT result FROM treaty_barrier WHERE txid = $1::uuid AND branch = $2::integer AND op = 'action'",
        2, NULL, pk, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        if (PQresultStatus(r) == PGRES_TUPLES_OK) {
            PQclear(r);
            rollback(g);
            note(g, "action barrier row of %s step %u vanished during its compensation", ids, s->step);
            snprintf(reason, TREATY_REASON_MAX, "%s", g->last_err);
            return TREATY_ESTATE;
        }
        return step_fail(g, reason, "read action barrier row", r);
    }
    bool undo = PQgetisnull(r, 0, 0) || strcmp(PQgetvalue(r, 0, 0), "ok") == 0;
    PQclear(r);
    if (!undo) {
        /* 'failed' (its change rolled back) or 'blocked': nothing to undo. */
        if (step_commit(g, reason) < 0)
            return TREATY_EPG;
        return TREATY_STEP_OK;
    }
    if (step_cmd(g, reason, "reset lock_timeout (compensation)", "SET LOCAL lock_timeout TO DEFAULT") < 0)
        goto fail_rollback;

    reason[0] = '\0';
    rc = ps->fn(ps->arg, g->conn, s, reason);
    reason[TREATY_REASON_MAX - 1] = '\0';
    int bad = check_fn_txn(g, "compensation", s, rc == TREATY_STEP_OK, reason);
    if (bad < 0) {
        rollback(g);
        return bad;
    }
    if (rc != TREATY_STEP_OK) {
        rollback(g); /* retried by the coordinator */
        return rc;
    }
    const char *pv[3] = {ids, step, xid};
    rc = update_row(g, "compensation", s,
                    "UPDATE treaty_barrier SET result = 'ok' WHERE txid = $1::uuid AND branch = $2::integer "
                    "AND op = 'compensation' AND pg_current_xact_id() = $3::xid8",
                    pv, 3, reason);
    if (rc < 0)
        return rc;
    if (step_commit(g, reason) < 0)
        return TREATY_EPG;
    /* Durable: the undo and the compensation row. A re-sent compensation
     * after a crash here takes the duplicate path. */
    reason[0] = '\0';
    return TREATY_STEP_OK;

fail_rollback:
    rollback(g);
    return TREATY_EPG;
}

static int pg_step(struct pg_step *ps, const treaty_step_t *s, char *reason, bool action)
{
    struct pgp *g = ps->g;
    for (int attempt = 0;; attempt++) {
        reason[0] = '\0';
        int rc = pg_ready(g);
        if (rc == 0 && !g->saga_ready && create_schema(g) == 0 && !g->saga_ready)
            rc = TREATY_EPG; /* the upgrade is still blocked; create_schema said why */
        if (rc < 0) {
            snprintf(reason, TREATY_REASON_MAX, "%s", g->last_err);
            return rc;
        }
        rc = action ? action_once(ps, s, reason) : compensation_once(ps, s, reason);
        /* A broken connection rolled back whatever was open, or committed it
         * (then the retry takes the duplicate path): retry once at once. */
        if (rc != TREATY_EPG || attempt > 0 || !conn_broke(g))
            return rc;
    }
}

static int pg_action(void *arg, const treaty_step_t *s, char *reason)
{
    return pg_step(arg, s, reason, true);
}

static int pg_compensation(void *arg, const treaty_step_t *s, char *reason)
{
    return pg_step(arg, s, reason, false);
}

static int pg_register(treaty_participant_t *p, enum pcore_step_kind kind, const char *name, treaty_pg_step_fn fn,
                       void *arg)
{
    if (p == NULL || fn == NULL)
        return TREATY_EINVAL;
    struct pgp *g = pgp_of(p);
    if (g == NULL) {
        participant_errorf(p, "treaty_pg_on_%s: not a participant made by treaty_pg_participant_new",
                           kind == PCORE_ACTION ? "action" : "compensation");
        return TREATY_EINVAL;
    }
    if (name == NULL || !wire_name_ok((const uint8_t *)name, strnlen(name, WIRE_NAME_MAX + 1)))
        return TREATY_EINVAL;
    if (participant_started(p))
        return TREATY_ESTATE; /* the SDK thread reads the table without a lock */
    struct pg_step *ps = calloc(1, sizeof *ps);
    if (ps == NULL)
        return TREATY_ENOMEM;
    ps->g = g;
    ps->fn = fn;
    ps->arg = arg;
    return pcore_add_step(participant_core(p), kind, name, kind == PCORE_ACTION ? pg_action : pg_compensation, ps,
                          free);
}

int treaty_pg_on_action(treaty_participant_t *p, const char *name, treaty_pg_step_fn fn, void *arg)
{
    return pg_register(p, PCORE_ACTION, name, fn, arg);
}

int treaty_pg_on_compensation(treaty_participant_t *p, const char *name, treaty_pg_step_fn fn, void *arg)
{
    return pg_register(p, PCORE_COMPENSATION, name, fn, arg);
}

/*
 * The purge, one statement (so one transaction): the horizon moves to
 * now() - older_than_s (never back), and the rows go whose txid is a UUIDv7
 * created before that cut and that were themselves written before it. The
 * txid's creation time is its first 48 bits (treaty_txid_time_ms); the
 * version nibble is the 13th hex digit and the variant the 17th. Rows of
 * other txids stay (their age is unknown, so nothing arriving for them is
 * judged by the horizon). Rows of prepared, undecided branches are not
 * visible to the DELETE, so they stay too.
 * If we crash before its commit nothing changed; after it, both changed.
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

long treaty_pg_barrier_purge(treaty_participant_t *p, unsigned older_than_s)
{
    if (p == NULL)
        return TREATY_EINVAL;
    struct pgp *g = pgp_of(p);
    if (g == NULL)
        return TREATY_EINVAL;
    if (!participant_on_owner_thread(p))
        return TREATY_ESTATE; /* the connection belongs to the participant's thread */
    if (PQstatus(g->conn) == CONNECTION_OK && PQtransactionStatus(g->conn) != PQTRANS_IDLE)
        return TREATY_ESTATE; /* inside a handler's transaction: not ours to end */
    if (pg_ready(g) < 0)
        return TREATY_EPG;
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
