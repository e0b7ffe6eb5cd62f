/*
 * pg.c - treaty_pg_participant_new: a participant whose branches are local
 * PostgreSQL transactions ended by PREPARE TRANSACTION.
 *
 * Every branch has a global transaction id (gid) in Postgres:
 *     treaty:<txid as lowercase uuid>:<branch>
 * and a barrier row treaty_barrier(txid, branch, 'prepare') written in the
 * same local transaction as the branch's work.
 *
 * Lifecycle of a branch at this participant
 *   1. PREPARE
 *      a. gid already in pg_prepared_xacts: a duplicate of a PREPARE we
 *         already made durable. Vote YES again without running the work.
 *      b. BEGIN; insert the barrier row. If it already exists the branch was
 *         prepared and then committed (the coordinator has moved on and
 *         ignores any answer): ROLLBACK and send no vote. (A branch that was
 *         rolled back has no barrier row: its row went with the rolled-back
 *         transaction, so a late PREPARE runs the work again, votes YES, and
 *         the coordinator, which decided abort long ago, answers ABORT.)
 *      c. work(); YES -> PREPARE TRANSACTION '<gid>', and only after it
 *         returned, vote YES. NO or error -> ROLLBACK, vote NO / no vote.
 *   2. COMMIT  -> COMMIT PREPARED '<gid>'   (42704 "no such gid": done before)
 *   3. ABORT   -> ROLLBACK PREPARED '<gid>' (42704: done before, or never
 *                 prepared: presumed abort)
 *   4. In doubt: after start-up (first WELCOME) and then periodically, every
 *      treaty:* prepared transaction of this database is INQUIREd; the answer
 *      comes back as COMMIT or ABORT (steps 2/3).
 *
 * The PGconn belongs to the participant's thread: handlers and the sweep run
 * there only. When the connection breaks (Postgres restarted), handlers
 * reconnect with capped exponential backoff and return TREATY_EPG meanwhile,
 * so no vote or ACK is sent and the coordinator's re-sends / timeouts carry
 * the protocol forward.
 */
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

#define PG_GID_MAX 64
#define PG_BACKOFF_MIN_MS 100
#define PG_BACKOFF_MAX_MS 5000
#define PG_BARRIER_LOCK_TIMEOUT "5s"             /* waiting on a barrier row another session holds */
#define PG_SCHEMA_LOCK_KEY "7596536934174785537" /* advisory lock around CREATE TABLE */
#define SQLSTATE_UNDEFINED_OBJECT "42704"
#define SQLSTATE_LOCK_NOT_AVAILABLE "55P03"

struct pgp {
    treaty_participant_t *p; /* the participant that owns this */
    PGconn *conn;
    treaty_pg_work_fn work;
    void *arg;
    bool schema_ready;
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

/* Records a failed statement in errmsg: "<what>: <message> (SQLSTATE x)". */
static void pg_report(struct pgp *g, const char *what, const PGresult *r)
{
    const char *msg = r != NULL ? PQresultErrorMessage(r) : "";
    if (msg == NULL || *msg == '\0')
        msg = PQerrorMessage(g->conn);
    size_t len = strlen(msg);
    while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
        len--;
    participant_errorf(g->p, "%s: %.*s (SQLSTATE %s)", what, (int)len, msg, *sqlstate(r) ? sqlstate(r) : "none");
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

/* Ends whatever transaction is open on the connection. Best effort: a
 * broken connection is dealt with by the next pg_ready(). */
static void rollback(struct pgp *g)
{
    PGTransactionStatusType ts = PQtransactionStatus(g->conn);
    if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)
        PQclear(PQexec(g->conn, "ROLLBACK"));
}

/* Creates the barrier table if missing. Concurrent instances sharing a
 * database serialize on an advisory lock (CREATE TABLE IF NOT EXISTS alone
 * races on the catalog). */
static int create_schema(struct pgp *g)
{
    if (exec_cmd(g, "BEGIN (barrier schema)", "BEGIN") < 0)
        return TREATY_EPG;
    PGresult *r = PQexec(g->conn, "SELECT pg_advisory_xact_lock(" PG_SCHEMA_LOCK_KEY ")");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pg_report(g, "advisory lock (barrier schema)", r);
        PQclear(r);
        goto fail;
    }
    PQclear(r);
    if (exec_cmd(g, "create treaty_barrier", sql_barrier) < 0)
        goto fail;
    if (exec_cmd(g, "COMMIT (barrier schema)", "COMMIT") < 0)
        goto fail;
    g->schema_ready = true;
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
            participant_errorf(g->p, "database unavailable; reconnecting in %lld ms", (long long)(g->next_reset - now));
            return TREATY_EPG;
        }
        PQreset(g->conn);
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

/* ------------------------------------------------------------- prepare */

static int prepare_once(struct pgp *g, const treaty_branch_t *b, char *reason)
{
    char gid[PG_GID_MAX], ids[TREATY_TXID_STRLEN], branch[16], sql[PG_GID_MAX + 32];
    make_gid(&b->txid, b->branch, gid);
    treaty_txid_format(&b->txid, ids);
    snprintf(branch, sizeof branch, "%u", b->branch);

    /* (a) Already prepared: a duplicate PREPARE. The branch is durable and
     * undecided, exactly what a YES vote promises. */
    const char *pa[1] = {gid};
    PGresult *r =
        PQexecParams(g->conn, "SELECT 1 FROM pg_prepared_xacts WHERE gid = $1 AND database = current_database()", 1,
                     NULL, pa, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        pg_report(g, "look up prepared transaction", r);
        PQclear(r);
        return TREATY_EPG;
    }
    bool prepared = PQntuples(r) > 0;
    PQclear(r);
    if (prepared)
        return TREATY_VOTE_YES;

    /* (b) The barrier row, in the branch's own transaction. */
    if (exec_cmd(g, "BEGIN", "BEGIN") < 0)
        return TREATY_EPG;
    if (exec_cmd(g, "set lock_timeout", "SET LOCAL lock_timeout = '" PG_BARRIER_LOCK_TIMEOUT "'") < 0)
        goto fail_rollback;
    const char *pb[2] = {ids, branch};
    r = PQexecParams(g->conn,
                     "INSERT INTO treaty_barrier (txid, branch, op) VALUES ($1::uuid, $2::integer, 'prepare') "
                     "ON CONFLICT DO NOTHING",
                     2, NULL, pb, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        /* 55P03: another session holds the row (a twin instance preparing
         * the same branch, or its prepared transaction). No vote; the
         * coordinator re-sends or times out. */
        pg_report(g,
                  strcmp(sqlstate(r), SQLSTATE_LOCK_NOT_AVAILABLE) == 0 ? "barrier row held by another transaction"
                                                                        : "insert barrier row",
                  r);
        PQclear(r);
        rollback(g);
        return conn_broke(g) ? TREATY_EPG : TREATY_ESTATE;
    }
    bool inserted = strcmp(PQcmdTuples(r), "1") == 0;
    PQclear(r);
    if (!inserted) {
        /* The branch was prepared and committed before: this PREPARE is a
         * stale duplicate, any vote would be ignored. Send none. */
        rollback(g);
        participant_errorf(g->p, "duplicate PREPARE for %s: branch %s already committed; no vote", gid, branch);
        return TREATY_ESTATE;
    }
    if (exec_cmd(g, "reset lock_timeout", "SET LOCAL lock_timeout TO DEFAULT") < 0)
        goto fail_rollback;

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

    if (!gid_literal_safe(gid)) { /* cannot happen: make_gid's alphabet */
        rollback(g);
        return TREATY_EINVAL;
    }
    snprintf(sql, sizeof sql, "PREPARE TRANSACTION '%s'", gid);
    r = PQexec(g->conn, sql);
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

fail_rollback:
    rollback(g);
    return TREATY_EPG;
}

static int pg_prepare(void *arg, const treaty_branch_t *b, char *reason)
{
    struct pgp *g = arg;
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

static int finish_once(struct pgp *g, const treaty_branch_t *b, bool commit)
{
    char gid[PG_GID_MAX], sql[PG_GID_MAX + 32];
    make_gid(&b->txid, b->branch, gid);
    if (!gid_literal_safe(gid))
        return TREATY_EINVAL;
    snprintf(sql, sizeof sql, "%s PREPARED '%s'", commit ? "COMMIT" : "ROLLBACK", gid);
    PGresult *r = PQexec(g->conn, sql);
    int rc = 0;
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        /* 42704: no such prepared transaction. The decision was applied
         * before (a duplicate) or, for ABORT, the branch was never prepared. */
        if (strcmp(sqlstate(r), SQLSTATE_UNDEFINED_OBJECT) != 0) {
            pg_report(g, commit ? "COMMIT PREPARED" : "ROLLBACK PREPARED", r);
            rc = TREATY_EPG;
        }
        PQclear(r);
        return rc;
    }
    PQclear(r);
    /* Durable point: the decision is applied. If we crash now, before the
     * ACK leaves, the coordinator re-sends the decision and we answer it
     * through the 42704 path above. */
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
static void pg_sweep(void *arg, treaty_participant_t *p, bool first)
{
    struct pgp *g = arg;
    char min_age[16];
    if (pg_ready(g) < 0)
        return;
    snprintf(min_age, sizeof min_age, "%d", first ? 0 : PARTICIPANT_SWEEP_MS);
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
            participant_errorf(p, "prepared transaction %s is not Treaty's; left alone", gid);
            continue;
        }
        (void)treaty_participant_inquire(p, &id, branch);
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
    if (conninfo == NULL || work == NULL)
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
    struct participant_ext ext = {pg_sweep, pg_free, g};
    participant_set_ext(p, &ext); /* p owns g from here on */

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
    rc = check_server(g);
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
