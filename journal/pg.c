/*
 * pg.c - the libpq helpers every thread of the journal uses (contracts in
 * journal_priv.h): a connection attempt that can be given up, reconnect
 * backoff, and libpq's errors as one line of text.
 */
#include "journal_priv.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "log.h"

void journal_set_err(char *buf, size_t len, const char *fmt, ...)
{
    if (!buf || len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

void journal_one_line(char *dst, size_t len, const char *src)
{
    size_t n = 0;
    if (len == 0)
        return;
    for (; *src && n + 1 < len; src++)
        dst[n++] = (*src == '\n' || *src == '\r' || *src == '\t') ? ' ' : *src;
    while (n > 0 && dst[n - 1] == ' ')
        n--;
    dst[n] = '\0';
}

void journal_pg_error(PGconn *c, const PGresult *res, char *buf, size_t len)
{
    char msg[ERRLEN];
    const char *m = res ? PQresultErrorMessage(res) : NULL;
    if (!m || !*m)
        m = PQerrorMessage(c);
    journal_one_line(msg, sizeof msg, m && *m ? m : "unknown error");
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (state)
        journal_set_err(buf, len, "%s (SQLSTATE %s)", msg, state);
    else
        journal_set_err(buf, len, "%s", msg);
}

bool journal_pg_exec(PGconn *c, const char *sql, ExecStatusType want, char *err, size_t errlen)
{
    PGresult *res = PQexec(c, sql);
    bool ok = res && PQresultStatus(res) == want;
    if (!ok)
        journal_pg_error(c, res, err, errlen);
    PQclear(res);
    return ok;
}

bool journal_pg_commit(PGconn *c, char *err, size_t errlen)
{
    PGresult *res = PQexec(c, "COMMIT");
    bool ok = res && PQresultStatus(res) == PGRES_COMMAND_OK && strcmp(PQcmdStatus(res), "COMMIT") == 0;
    if (!ok) {
        if (res && PQresultStatus(res) == PGRES_COMMAND_OK)
            journal_set_err(err, errlen, "COMMIT rolled back the transaction");
        else
            journal_pg_error(c, res, err, errlen);
    }
    PQclear(res);
    return ok;
}

int journal_backoff_delay(int *b, int initial_ms, int max_ms, bool immediate, struct util_rng *rng)
{
    int base = *b;
    if (base == 0 && !immediate)
        base = initial_ms;
    if (base == 0) {
        *b = initial_ms;
        return 0;
    }
    *b = base > max_ms / 2 ? max_ms : base * 2;
    if (base > max_ms)
        base = max_ms;
    int half = base / 2;
    return half + (int)(util_rng_range(rng, (uint64_t)(base - half + 1)));
}

bool journal_sleep_unless(struct journal *j, journal_stop_fn stopped, int ms)
{
    int64_t until = util_mono_ms() + ms;
    for (;;) {
        if (stopped(j))
            return true;
        int64_t left = until - util_mono_ms();
        if (left <= 0)
            return false;
        int slice = left < SLICE_MS ? (int)left : SLICE_MS;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)slice * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* Server notices and warnings go to our log, not to libpq's stderr printer. */
static void notice_receiver(void *arg, const PGresult *res)
{
    char msg[ERRLEN];
    (void)arg;
    journal_one_line(msg, sizeof msg, PQresultErrorMessage(res));
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    if (sev && strcmp(sev, "WARNING") == 0)
        log_warn("journal: PostgreSQL: %s", msg);
    else
        log_debug("journal: PostgreSQL: %s", msg);
}

PGconn *journal_pg_connect_within(struct journal *j, journal_stop_fn stopped, const char *app, int timeout_ms,
                                  char *err, size_t errlen)
{
    /* Later parameters override what the expanded conninfo says. */
    const char *const kw[] = {"dbname", "fallback_application_name", "client_encoding", NULL};
    const char *const val[] = {j->conninfo, app, "UTF8", NULL};
    PGconn *c = PQconnectStartParams(kw, val, 1);
    if (!c)
        util_out_of_memory();
    PQsetNoticeReceiver(c, notice_receiver, NULL);
    if (PQstatus(c) == CONNECTION_BAD)
        goto fail_libpq;

    int64_t deadline = util_mono_ms() + timeout_ms;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    for (;;) {
        if (st == PGRES_POLLING_OK)
            return c;
        if (st == PGRES_POLLING_FAILED)
            goto fail_libpq;
        if (stopped(j)) {
            journal_set_err(err, errlen, "stopped while connecting");
            goto fail_conn;
        }
        int64_t left = deadline - util_mono_ms();
        if (left <= 0) {
            journal_set_err(err, errlen, "no answer within %d ms", timeout_ms);
            goto fail_conn;
        }
        struct pollfd p = {.fd = PQsocket(c), .events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT};
        if (p.fd < 0) {
            st = PQconnectPoll(c);
            continue;
        }
        int r = poll(&p, 1, left < SLICE_MS ? (int)left : SLICE_MS);
        if (r < 0 && errno != EINTR) {
            journal_set_err(err, errlen, "poll: %s", strerror(errno));
            goto fail_conn;
        }
        if (r > 0)
            st = PQconnectPoll(c);
    }

fail_libpq:
    journal_one_line(err, errlen, PQerrorMessage(c));
fail_conn:
    PQfinish(c);
    return NULL;
}

PGconn *journal_pg_connect(struct journal *j, journal_stop_fn stopped, const char *app, char *err, size_t errlen)
{
    return journal_pg_connect_within(j, stopped, app, j->attempt_timeout_ms, err, errlen);
}

/* The owner lock's key pair: "TREA", 2 (the schema's is "TREA", 1). */
#define OWNER_LOCK_CLASS 1414677825
#define OWNER_LOCK_OBJ 2

int journal_pg_take_owner(PGconn *c, char *err, size_t errlen)
{
    char sql[512];
    snprintf(sql, sizeof sql, "SELECT pg_try_advisory_lock(%d, %d)", OWNER_LOCK_CLASS, OWNER_LOCK_OBJ);
    PGresult *res = PQexec(c, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        journal_pg_error(c, res, err, errlen);
        PQclear(res);
        return TREATY_EPG;
    }
    bool taken = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (taken)
        return 0;
    /* Who holds it, for the operator (pg_stat_activity shows the address
     * and application only to a role allowed to see them). */
    snprintf(sql, sizeof sql,
             "SELECT l.pid, coalesce(host(a.client_addr), 'local'), coalesce(a.application_name, ''), "
             "       coalesce(to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS'), '') "
             "  FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
             " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %d AND l.objid = %d "
             "   AND l.objsubid = 2 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
             OWNER_LOCK_CLASS, OWNER_LOCK_OBJ);
    res = PQexec(c, sql);
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
        journal_set_err(err, errlen,
                        "the journal is held by another coordinator's connection (PostgreSQL backend pid %s, "
                        "from %s, application '%s', since %s)",
                        PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2), PQgetvalue(res, 0, 3));
    else
        journal_set_err(err, errlen, "the journal is held by another coordinator's connection");
    PQclear(res);
    return PQstatus(c) == CONNECTION_OK ? TREATY_EBUSY : TREATY_EPG;
}
