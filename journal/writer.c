/*
 * writer.c - the journal's writer thread: group commit, the idempotent
 * rewrite of a group, reconnects (journal.h; the threads and their messages:
 * journal_priv.h).
 *
 * journal_writer_main() owns a blocking libpq connection (the one
 * journal_connect opened). Lifecycle of one group:
 *   1. wait for a batch (or for the next collection);
 *   2. take every batch that is waiting (group commit);
 *   3. only lazy records: wait up to lazy_delay_ms for more, cut short by a
 *      forced batch or by STOP;
 *   4. one round trip in libpq pipeline mode: SET synchronous_commit = on
 *      (once per connection, whatever the server's default); the prepared
 *      INSERT ... SELECT FROM unnest(<one text[] a column>) (prepared in the
 *      first group's pipeline of each connection), one row per record except
 *      2PC END records, which go in one 'ends' row per distinct detail at the
 *      end (group_to_arrays); the group's id (grp) on its first row; Sync
 *      (the implicit transaction commits at the Sync);
 *   5. on any failure: healthy = false, drop the connection, reconnect with
 *      backoff, go to 4 with the same group and the same grp;
 *   6. after the commit returned: publish the group's last sequence number
 *      as the durable watermark, healthy = true, free the group.
 * Between groups it deletes finished transactions older than retention_s,
 * every gc_interval_ms (journal_collect, collect.c).
 *
 * Writing a group again is idempotent. A connection lost after the Sync went
 * out leaves the commit's fate unknown: the server may have committed and
 * died (or lost us) before its answer arrived. Each group carries an id, a
 * UUIDv7 drawn when the group is formed, stored in the grp column of its first
 * row under a partial unique index (sql/004_runs_and_lookups.sql). The
 * rewrite is the same INSERT with the same grp; if the first attempt landed,
 * the index refuses it (23505 on treaty_journal_grp, the rewrite rolls back)
 * and the writer knows the group is stored. Chosen over the alternatives:
 *   - remembering max(seq) before the group and, after reconnecting, looking
 *     for the group's first record above it: a round trip only on the
 *     failure path too, but it answers "not there" while the first attempt
 *     is still committing on a backend that has not yet noticed the lost
 *     connection (a network failure rather than a server crash), and the
 *     rewrite then duplicates it. The unique index waits for that
 *     transaction and decides by its outcome;
 *   - a unique key on what a record decides (txid, kind): a txid can run
 *     again after an END, and STEP records legitimately repeat.
 * Cost on the normal path: no extra round trip or statement, one 16-byte
 * parameter and one btree entry per group (not per record).
 *
 * Ordering: batches are sent, received and written in append order, and a
 * group is one Postgres transaction, so "every record up to the watermark is
 * committed" holds. Every group commits with synchronous_commit = on, lazy
 * or forced: "lazy" only means the group may wait up to lazy_delay_ms for
 * company. (Lazy groups once committed with synchronous_commit = off, whose
 * COMMIT returns before the WAL is flushed: a crash of PostgreSQL then lost
 * 2PC END records already reported durable, and their transactions stayed
 * unfinished in the journal - never collected - until the coordinator
 * restarted. Found by the simulator; test_journal's
 * lazy_records_reported_durable_survive_a_crash_of_postgres.) Under load a
 * group holds forced records anyway; an idle coordinator pays one WAL flush
 * per group of ENDs.
 */
#include "journal_priv.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <zmq.h>

#include "log.h"
#include "treaty.h"

/* A group stops taking batches beyond this many bytes of COPY data. It always
 * takes one: a batch bigger than this (a saga definition is up to a few MB of
 * hex) is written alone. */
#define GROUP_MAX_BYTES ((size_t)4 << 20)
/* The INSERT's parameters: INSERT_NCOLS arrays, then the group's id, stored
 * on its first row (grp). */
#define INSERT_NPARAMS (INSERT_NCOLS + 1)

/*
 * The group goes to Postgres as one INSERT of eight text[] parameters (one a
 * column, ended included), one element per row, built here from the COPY
 * text lines the batches hold (journal_int.h), and the group's id. COPY needs a round trip before its data can be sent;
 * a parameterised INSERT ... unnest() goes in one message with everything else.
 */
#define INSERT_NAME "treaty_journal_insert"
#define INSERT_SQL                                                                                                     \
    "INSERT INTO treaty_journal (txid, kind, services, failed_branch, detail, step, data, ended, grp) "                \
    "SELECT t::uuid, k, s::text[], f::integer, d, st::integer, x::bytea, e::uuid[], "                                  \
    "       CASE WHEN n = 1 THEN $9::uuid END "                                                                        \
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], "                 \
    "$8::text[]) WITH ORDINALITY AS u(t, k, s, f, d, st, x, e, n) ORDER BY n"
/* The unique index on grp (sql/004_runs_and_lookups.sql). */
#define GRP_INDEX "treaty_journal_grp"

/* Appends one COPY text field (s, n bytes, still escaped) to the array
 * literal a as an element: NULL for \N, else double-quoted with '"' and '\'
 * escaped. COPY's escapes are undone on the way: \t \n \r and \<c> -> c. */
static void put_array_elem(struct journal_buf *a, const char *s, size_t n)
{
    buf_putc(a, a->len == 0 ? '{' : ',');
    if (n == 2 && s[0] == '\\' && s[1] == 'N') {
        buf_puts(a, "NULL");
        return;
    }
    buf_reserve(a, 2 * n + 2);
    char *w = a->data + a->len;
    *w++ = '"';
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\\' && i + 1 < n) {
            c = s[++i];
            c = c == 't' ? '\t' : c == 'n' ? '\n' : c == 'r' ? '\r' : c;
        }
        if (c == '"' || c == '\\')
            *w++ = '\\';
        *w++ = c;
    }
    *w++ = '"';
    a->len = (size_t)(w - a->data);
}

/* True for the COPY field of a saga END's detail. */
static bool saga_end_detail(const char *f, size_t n)
{
    return (n == 9 && memcmp(f, "completed", 9) == 0) || (n == 11 && memcmp(f, "compensated", 11) == 0);
}

/* Splits the COPY lines of every batch from head on into the INSERT's array
 * literals (NUL-terminated), one element per row. Every record is a row of
 * its own (ended NULL), in append order, except the END records of 2PC
 * transactions (any END but a saga's "completed" or "compensated"): those
 * sharing a detail become one row of kind 'ends' (txid NULL, ended = their
 * txids), after the group's other rows, so that a transaction's END has a
 * higher seq than its other records even when they are in the same group.
 * A saga's END stays a row of its own (kind 'end') so that an outcome lookup
 * finds it through the txid index (see lookup.c). Returns the
 * number of rows, or -1 when a line does not have JOURNAL_NCOLS fields (a bug
 * of the encoder). */
static long group_to_arrays(const struct batch *head, struct journal_buf cols[INSERT_NCOLS],
                            struct ends_row ends[ENDS_MAX_DETAILS])
{
    static const char null_field[] = "\\N";
    long rows = 0;
    unsigned nends = 0;
    for (int k = 0; k < INSERT_NCOLS; k++)
        cols[k].len = 0;
    for (const struct batch *b = head; b; b = b->next) {
        const char *p = b->rows.data, *end = b->rows.data + b->rows.len;
        while (p < end) {
            const char *eol = memchr(p, '\n', (size_t)(end - p));
            if (!eol)
                return -1;
            const char *f[JOURNAL_NCOLS];
            size_t n[JOURNAL_NCOLS];
            for (int k = 0; k < JOURNAL_NCOLS; k++) {
                f[k] = p;
                while (p < eol && *p != '\t')
                    p++;
                if ((k < JOURNAL_NCOLS - 1) != (p < eol))
                    return -1;
                n[k] = (size_t)(p - f[k]);
                p++; /* the TAB, or the LF after the last field */
            }
            if (n[1] == 3 && memcmp(f[1], "end", 3) == 0 && n[0] == 36 && !saga_end_detail(f[4], n[4])) {
                unsigned i = 0;
                while (i < nends && (ends[i].detail_len != n[4] || memcmp(ends[i].detail, f[4], n[4]) != 0))
                    i++;
                if (i == nends && nends < ENDS_MAX_DETAILS) {
                    ends[i].detail = f[4];
                    ends[i].detail_len = n[4];
                    ends[i].txids.len = 0;
                    nends++;
                }
                if (i < nends) {
                    buf_putc(&ends[i].txids, ends[i].txids.len == 0 ? '{' : ',');
                    buf_put(&ends[i].txids, f[0], 36);
                    continue;
                }
            }
            for (int k = 0; k < JOURNAL_NCOLS; k++)
                put_array_elem(&cols[k], f[k], n[k]);
            put_array_elem(&cols[JOURNAL_NCOLS], null_field, 2);
            rows++;
        }
    }
    for (unsigned i = 0; i < nends; i++) {
        buf_putc(&ends[i].txids, '}');
        put_array_elem(&cols[0], null_field, 2);
        put_array_elem(&cols[1], "ends", 4);
        put_array_elem(&cols[2], null_field, 2);
        put_array_elem(&cols[3], null_field, 2);
        put_array_elem(&cols[4], ends[i].detail, ends[i].detail_len);
        put_array_elem(&cols[5], null_field, 2);
        put_array_elem(&cols[6], null_field, 2);
        put_array_elem(&cols[7], ends[i].txids.data, ends[i].txids.len);
        rows++;
    }
    for (int k = 0; k < INSERT_NCOLS; k++) {
        if (cols[k].len == 0)
            buf_putc(&cols[k], '{');
        buf_putc(&cols[k], '}');
        buf_putc(&cols[k], '\0');
    }
    return rows;
}

/* Reads one result of the pipeline; true when its status is want (and, for
 * a statement, the NULL that ends its results followed). */
static bool pipeline_result(PGconn *c, ExecStatusType want, char *err, size_t errlen)
{
    PGresult *res = PQgetResult(c);
    bool ok = res && PQresultStatus(res) == want;
    if (!ok)
        journal_pg_error(c, res, err, errlen);
    PQclear(res);
    if (ok && want != PGRES_PIPELINE_SYNC && (res = PQgetResult(c)) != NULL) {
        PQclear(res);
        journal_set_err(err, errlen, "unexpected second result in the journal pipeline");
        ok = false;
    }
    return ok;
}

/* ------------------------------------------------------------ fault point */

#ifdef TREATY_FAULTS
int journal_fault_lose_acks(struct journal *j, unsigned n)
{
    if (!j)
        return TREATY_EINVAL;
    atomic_store(&j->fault_lose_acks, n);
    return 0;
}

/* True (once per armed fault) when this group is to lose its acknowledgement. */
static bool fault_take(struct journal *j)
{
    unsigned n = atomic_load(&j->fault_lose_acks);
    while (n > 0 && !atomic_compare_exchange_weak(&j->fault_lose_acks, &n, n - 1)) {
    }
    return n > 0;
}

/* True when buf (n bytes of the server's messages, from a message's start)
 * holds a whole ReadyForQuery ('Z', length 5). */
static bool holds_ready_for_query(const unsigned char *buf, size_t n)
{
    size_t at = 0;
    while (n - at >= 5) {
        uint32_t len = (uint32_t)buf[at + 1] << 24 | (uint32_t)buf[at + 2] << 16 | (uint32_t)buf[at + 3] << 8 |
                       (uint32_t)buf[at + 4];
        if (buf[at] == 'Z' && len == 5)
            return n - at >= 6;
        if (len < 4 || len > n - at - 1)
            return false;
        at += 1 + len;
    }
    return false;
}

/* journal_int.h: waits (peeking, libpq reads nothing) until the answer to the
 * pipeline's Sync has arrived, i.e. the group committed, then replaces the
 * socket with one whose peer is closed. */
static void fault_lose_ack(PGconn *c)
{
    enum { PEEK = 1 << 16 };
    /* Static, too big for the stack: used by whichever thread writes a group
     * of a journal with the fault armed (its writer, or journal_close before
     * a start), so at most one journal of a process may have it armed. */
    static unsigned char buf[PEEK];
    int fd = PQsocket(c);
    int64_t until = util_mono_ms() + 10000;
    bool seen = false;
    while (fd >= 0 && util_mono_ms() < until) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, SLICE_MS) <= 0)
            continue;
        ssize_t n = recv(fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            break; /* closed or broken anyway */
        if (n > 0 && (seen = holds_ready_for_query(buf, (size_t)n)))
            break;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 1000000L}; /* more is on its way */
        nanosleep(&ts, NULL);
    }
    if (!seen)
        log_warn("journal: fault point: the answer to the Sync was not seen; breaking the connection anyway");
    int sv[2];
    if (fd >= 0 && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0) {
        close(sv[1]);
        dup2(sv[0], fd); /* closes our end of the server's socket */
        close(sv[0]);
    }
    log_warn("journal: fault point: the group's acknowledgement is lost");
}
#else
int journal_fault_lose_acks(struct journal *j, unsigned n)
{
    (void)j;
    (void)n;
    return TREATY_ESTATE;
}

static bool fault_take(struct journal *j)
{
    (void)j;
    return false;
}

static void fault_lose_ack(PGconn *c)
{
    (void)c;
}
#endif

/* write_group: the group is stored (committed now, or by an earlier attempt). */
#define GROUP_WRITTEN 0
#define GROUP_WRITTEN_BEFORE 1

/*
 * Reads the INSERT's result in the pipeline. GROUP_WRITTEN when it stored
 * want_rows rows; GROUP_WRITTEN_BEFORE when the unique index on grp refused
 * the group's first row: an earlier attempt to write this very group
 * committed (this statement, and with it this transaction, rolled back);
 * TREATY_EPG otherwise, with err filled.
 */
static int insert_result(PGconn *c, const char *want_rows, char *err, size_t errlen)
{
    int rc = TREATY_EPG;
    PGresult *res = PQgetResult(c);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *cons = res ? PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME) : NULL;
    if (st == PGRES_COMMAND_OK && strcmp(PQcmdTuples(res), want_rows) == 0)
        rc = GROUP_WRITTEN;
    else if (st == PGRES_FATAL_ERROR && state && strcmp(state, "23505") == 0 && cons && strcmp(cons, GRP_INDEX) == 0)
        rc = GROUP_WRITTEN_BEFORE;
    else if (st == PGRES_COMMAND_OK)
        journal_set_err(err, errlen, "INSERT stored %s rows, not %s", PQcmdTuples(res), want_rows);
    else
        journal_pg_error(c, res, err, errlen);
    PQclear(res);
    if (rc != TREATY_EPG && (res = PQgetResult(c)) != NULL) {
        PQclear(res);
        journal_set_err(err, errlen, "unexpected second result in the journal pipeline");
        rc = TREATY_EPG;
    }
    return rc;
}

/*
 * Writes the batches from head on in one Postgres transaction, in one round
 * trip: in pipeline mode, the INSERT's Parse (a connection's first group),
 * SET synchronous_commit = on (a connection's first group), the INSERT (the group's id
 * grp on its first row), and a Sync that commits the implicit transaction
 * holding them. Returns GROUP_WRITTEN after the Sync's answer came back,
 * i.e. after the commit returned; GROUP_WRITTEN_BEFORE when an earlier
 * attempt to write the group (same grp) had committed; or TREATY_EPG with
 * err filled: the caller then drops the connection (it may be mid-pipeline
 * or anywhere in it) and writes the group again with the same grp.
 */
static int write_group(PGconn *c, struct pgsess *sess, const struct batch *head, const uint8_t grp[16],
                       struct journal_buf cols[INSERT_NCOLS], struct ends_row ends[ENDS_MAX_DETAILS], bool lose_ack,
                       char *err, size_t errlen)
{
    char nrows[24], grp_text[37];
    long rows = group_to_arrays(head, cols, ends);
    if (rows < 0) {
        journal_set_err(err, errlen, "malformed journal row in the group (encoder bug)");
        return TREATY_EPG;
    }
    snprintf(nrows, sizeof nrows, "%ld", rows);
    journal_txid_format(grp, grp_text);
    const char *values[INSERT_NPARAMS];
    for (int k = 0; k < INSERT_NCOLS; k++)
        values[k] = cols[k].data;
    values[INSERT_NCOLS] = grp_text;

    if (PQenterPipelineMode(c) != 1) {
        journal_pg_error(c, NULL, err, errlen);
        return TREATY_EPG;
    }
    /* The INSERT is prepared once per connection, in the first group's
     * pipeline: later groups skip its parsing and planning. */
    bool prepare = !sess->prepared;
    /* Every group's commit waits for the WAL flush, whatever the server's
     * default (see the header: lazy groups too). A session SET, not SET
     * LOCAL (which an implicit transaction refuses with a warning), sent in
     * a connection's first group. (A failed group rolls its SET back: then
     * either the connection is dropped and the next one starts with sess
     * reset, or, for a group written before, sess->sync is left as it was,
     * below.) */
    bool set = sess->sync != 1;
    if ((prepare && PQsendPrepare(c, INSERT_NAME, INSERT_SQL, INSERT_NPARAMS, NULL) != 1) ||
        (set && PQsendQueryParams(c, "SET synchronous_commit = on", 0, NULL, NULL, NULL, NULL, 0) != 1) ||
        PQsendQueryPrepared(c, INSERT_NAME, INSERT_NPARAMS, values, NULL, NULL, 0) != 1 || PQpipelineSync(c) != 1) {
        journal_pg_error(c, NULL, err, errlen);
        return TREATY_EPG;
    }
    if (lose_ack)
        fault_lose_ack(c);
    if ((prepare && !pipeline_result(c, PGRES_COMMAND_OK, err, errlen)) ||
        (set && !pipeline_result(c, PGRES_COMMAND_OK, err, errlen)))
        return TREATY_EPG;
    int rc = insert_result(c, nrows, err, errlen);
    if (rc < 0)
        return rc;
    /*
     * The commit point of every record in the group: the Sync's answer
     * (ReadyForQuery) leaves the server after the implicit transaction
     * committed, and with synchronous_commit = on after its WAL was flushed.
     * Nothing is reported durable before this.
     *
     * If the connection drops after the server committed but before its
     * answer reached us, the rows are stored but we cannot know it: the
     * caller writes the group again, with the same grp, on a new connection.
     * That INSERT finds the first attempt's row in the unique index on grp:
     * committed, it fails with 23505 (GROUP_WRITTEN_BEFORE: nothing is stored
     * twice); still in progress on a backend that has not noticed the lost
     * connection yet, it waits for that transaction's end and then fails, or
     * goes ahead if it rolled back. A forced group's first attempt became
     * visible only after its WAL flush, so GROUP_WRITTEN_BEFORE is as durable
     * as GROUP_WRITTEN. If treatyd crashes instead, nothing was reported
     * durable, and recovery reads whatever landed.
     */
    if (!pipeline_result(c, PGRES_PIPELINE_SYNC, err, errlen))
        return TREATY_EPG;
    if (PQtransactionStatus(c) != PQTRANS_IDLE) {
        journal_set_err(err, errlen, "the journal transaction did not end with the pipeline's Sync");
        return TREATY_EPG;
    }
    if (PQexitPipelineMode(c) != 1) {
        journal_pg_error(c, NULL, err, errlen);
        return TREATY_EPG;
    }
    sess->prepared = true;
    /* A refused INSERT rolled this pipeline's SET back with it: the session
     * keeps the mode it had. */
    if (rc == GROUP_WRITTEN)
        sess->sync = 1;
    return rc;
}

/* A fresh id for the group being started: a UUIDv7 (time-ordered, 74 random
 * bits), or from the writer's own generator if the system's fails. */
static void group_new_id(struct util_rng *rng, uint8_t grp[16])
{
    if (treaty_txid_generate((treaty_txid_t *)grp) == 0)
        return;
    for (int i = 0; i < 16; i += 8) {
        uint64_t x = util_rng_next(rng);
        memcpy(grp + i, &x, 8);
    }
}

static void group_add(struct writer *w, struct batch *b)
{
    b->next = NULL;
    if (w->tail)
        w->tail->next = b;
    else {
        w->head = b;
        w->first_at = util_mono_ms();
        group_new_id(&w->rng, w->grp);
    }
    w->tail = b;
    w->bytes += b->rows.len;
    w->nrecs += b->nrecs;
    w->forced = w->forced || b->forced;
}

/* Frees write_group's reusable buffers. */
static void writer_bufs_free(struct writer *w)
{
    for (int k = 0; k < INSERT_NCOLS; k++)
        journal_buf_free(&w->cols[k]);
    for (int i = 0; i < ENDS_MAX_DETAILS; i++)
        journal_buf_free(&w->ends[i].txids);
}

static void group_free(struct writer *w)
{
    while (w->head) {
        struct batch *b = w->head;
        w->head = b->next;
        batch_free(b);
    }
    w->tail = NULL;
    w->bytes = 0;
    w->nrecs = 0;
    w->forced = false;
}

/* Waits up to timeout_ms for a message, then takes every waiting one until
 * the group is full or STOP arrives. */
static void writer_take(struct journal *j, int timeout_ms)
{
    struct writer *w = &j->w;
    zmq_pollitem_t it = {.socket = j->writer_in, .events = ZMQ_POLLIN};
    int r = zmq_poll(&it, 1, timeout_ms);
    if (r <= 0) {
        if (r < 0 && errno == ETERM) {
            log_error("journal: ZeroMQ context terminated under the running journal (journal_close comes first)");
            atomic_store(&j->abandon, true);
        }
        return;
    }
    while (!w->stopping && w->bytes < GROUP_MAX_BYTES) {
        struct msg m;
        int n = zmq_recv(j->writer_in, &m, sizeof m, ZMQ_DONTWAIT);
        if (n < 0) {
            if (errno == ETERM)
                atomic_store(&j->abandon, true);
            return;
        }
        assert(n == (int)sizeof m);
        if (m.type == JMSG_BATCH)
            group_add(w, m.b);
        else if (m.type == JMSG_STOP)
            w->stopping = true;
    }
}

/* journal_priv.h */
PGconn *journal_writer_connect(struct journal *j, char *why, size_t whylen)
{
    PGconn *c = journal_pg_connect(j, writer_abandoned, APP_WRITER, why, whylen);
    if (!c)
        return NULL;
    int rc = journal_pg_take_owner(c, why, whylen);
    if (rc == 0)
        return c;
    PQfinish(c);
    if (rc == TREATY_EBUSY && !atomic_exchange(&j->deposed, true)) {
        atomic_store(&j->healthy, false);
        log_error("journal: another coordinator took the journal while this one was disconnected from "
                  "PostgreSQL (%s): this one writes nothing more and must stop",
                  why);
    }
    return NULL;
}

/* Connects until it works. Returns false only when abandoned or deposed. */
static bool writer_reconnect(struct journal *j)
{
    struct writer *w = &j->w;
    for (;;) {
        char why[ERRLEN];
        if (writer_abandoned(j) || atomic_load(&j->deposed))
            return false;
        PGconn *c = journal_writer_connect(j, why, sizeof why);
        if (c) {
            writer_set_conn(w, c);
            atomic_fetch_add(&j->n_reconnects, 1);
            log_info("journal: reconnected to PostgreSQL");
            return true;
        }
        if (writer_abandoned(j) || atomic_load(&j->deposed))
            return false;
        atomic_store(&j->healthy, false);
        int delay = journal_backoff_delay(&w->backoff_ms, j->connect_initial_ms, j->connect_max_ms, false, &w->rng);
        log_warn("journal: cannot connect to PostgreSQL, retrying in %d ms: %s", delay, why);
        if (journal_sleep_unless(j, writer_abandoned, delay))
            return false;
    }
}

/* Writes the group until it commits, then publishes the watermark. Returns
 * false only when abandoned or deposed (the group is then left unwritten). */
static bool writer_commit_group(struct journal *j)
{
    struct writer *w = &j->w;
    int64_t t0 = util_mono_us();
    for (;;) {
        char why[ERRLEN];
        if (writer_abandoned(j))
            return false;
        if (!w->conn && !writer_reconnect(j))
            return false;
        int rc = write_group(w->conn, &w->sess, w->head, w->grp, w->cols, w->ends, fault_take(j), why, sizeof why);
        if (rc == GROUP_WRITTEN)
            break;
        if (rc == GROUP_WRITTEN_BEFORE) {
            log_warn("journal: %u records (seq %" PRIu64 "..%" PRIu64 ") had been stored by the attempt whose "
                     "acknowledgement was lost; not stored again",
                     w->nrecs, w->head->first_seq, w->tail->last_seq);
            break;
        }
        /* Not committed (or we cannot know): the same group goes again. */
        atomic_store(&j->healthy, false);
        log_error("journal: cannot write %u records (seq %" PRIu64 "..%" PRIu64 "), will reconnect and write "
                  "them again: %s",
                  w->nrecs, w->head->first_seq, w->tail->last_seq, why);
        PQfinish(w->conn);
        writer_set_conn(w, NULL);
        int delay = journal_backoff_delay(&w->backoff_ms, j->connect_initial_ms, j->connect_max_ms, true, &w->rng);
        if (delay > 0 && journal_sleep_unless(j, writer_abandoned, delay))
            return false;
    }

    /*
     * Durable: COMMIT returned. Only now does the watermark move; the loop
     * sends the replies that waited for these records. If we crash before
     * the loop reads it, the records are in the journal and recovery
     * resumes their transactions.
     */
    uint64_t seq = w->tail->last_seq;
    uint64_t took_us = (uint64_t)(util_mono_us() - t0);
    atomic_fetch_add(&j->n_write_us, took_us);
    metrics_hist_observe(&j->h_group_records, w->nrecs);
    metrics_hist_observe(&j->h_group_us, took_us);
    atomic_fetch_add(&j->n_batches, 1);
    atomic_fetch_add(&j->n_records, w->nrecs);
    if (w->forced)
        atomic_fetch_add(&j->n_forced, 1);
    atomic_store(&j->durable, seq);
    if (!atomic_exchange(&j->healthy, true))
        log_info("journal: writing to PostgreSQL again (durable up to seq %" PRIu64 ")", seq);
    w->backoff_ms = 0;
    group_free(w);
    struct note n = {.type = NOTE_DURABLE, .durable = seq, .a = NULL};
    if (zmq_send(j->writer_out, &n, sizeof n, ZMQ_DONTWAIT) < 0 && errno != EAGAIN)
        log_warn("journal: cannot notify the loop: %s", zmq_strerror(errno));
    return true;
}

void *journal_writer_main(void *arg)
{
    struct journal *j = arg;
    struct writer *w = &j->w;
    w->next_gc = util_mono_ms() + j->gc_interval_ms;

    while (!writer_abandoned(j) && !atomic_load(&j->deposed)) {
        if (!w->head) {
            if (w->stopping)
                break;
            int64_t until_gc = w->next_gc - util_mono_ms();
            if (until_gc <= 0) {
                journal_collect(j);
                continue;
            }
            writer_take(j, journal_clamp_ms(until_gc));
            continue;
        }
        /* Lazy only: gather more for a while, unless the group is full. */
        if (!w->forced && !w->stopping && w->bytes < GROUP_MAX_BYTES) {
            int64_t left = w->first_at + j->lazy_delay_ms - util_mono_ms();
            if (left > 0) {
                writer_take(j, journal_clamp_ms(left));
                continue;
            }
        }
        /* Take whatever else is waiting, then write. */
        writer_take(j, 0);
        if (!writer_commit_group(j))
            break;
    }
    if (w->head)
        log_error("journal: writer stopped with %u records not written (seq %" PRIu64 "..%" PRIu64 ")", w->nrecs,
                  w->head->first_seq, w->tail->last_seq);
    group_free(w);
    writer_bufs_free(w);
    return NULL;
}

/* journal_priv.h */
void journal_write_unstarted(struct journal *j)
{
    char why[ERRLEN];
    struct pgsess fresh = {.prepared = false, .sync = -1};
    uint8_t grp[16];
    group_new_id(&j->rng, grp);
    if (write_group(j->conn, &fresh, j->pending, grp, j->w.cols, j->w.ends, fault_take(j), why, sizeof why) >= 0)
        atomic_store(&j->durable, j->pending->last_seq);
    else
        log_error("journal: cannot write %u records at close: %s", j->pending->nrecs, why);
    writer_bufs_free(&j->w);
}
