/*
 * lookup.c - outcome lookups (journal_lookup, journal.h) on the reader
 * thread: journal_reader_main() takes the lookup batches journal_flush()
 * sends, asks Postgres, decides each txid's outcome and sends the answers
 * back to the loop thread (journal_priv.h).
 */
#include "journal_priv.h"

#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <zmq.h>

#include "log.h"
#include "treaty.h"

/*
 * Outcome lookups. The reader thread owns a libpq connection of its own,
 * opened at its first lookup or records request and kept by
 * journal_reader_ask(), so that a lookup never waits behind a group
 * and a group never waits behind a lookup. It answers every batch it finds
 * waiting with queries of up to LOOKUP_CHUNK txids each (one round trip).
 *
 * What the query reads: every row of the asked txids (the txid index), and
 * the saga ENDs a version-3 writer batched in 'ends' rows (the partial GIN
 * index of sql/004_runs_and_lookups.sql; the query says "ended IS NOT NULL"
 * for "an 'ends' row", as the index's predicate does, so that the planner
 * cannot walk every 'ends' row through treaty_journal_ends instead). It does
 * not read the 2PC ENDs in 'ends' rows, which no index covers by txid: no
 * outcome needs them.
 *
 * How rows become an outcome (lookup_decide), in seq order per txid. A
 * transaction is a run of records ended by an END; a txid's latest run
 * decides. The latest run holds L, the txid's last record other than an END
 * or an AUDIT (an operator's audit record decides nothing; it always comes
 * right before the record that carries it out, so it is never a run's last
 * word):
 *   - L is a COMMIT or an ABORT: that decision is the outcome. A 2PC run
 *     writes nothing before its decision (but an AUDIT) and nothing but its
 *     END after it, so whatever ended before L was an earlier run;
 *   - L is a saga's (SAGA, STEP, TURN): the first END after L says
 *     "completed" or "compensated"; no END after L: UNFINISHED. The run
 *     began at the last SAGA record up to L (a saga's definition is forced
 *     before anything else of it): its last TURN, if any, gives
 *     failed_branch and detail;
 *   - no record but ENDs (the run was collected, an END left behind by an
 *     older writer): a saga END still says how the saga ended; otherwise
 *     NONE;
 *   - no row: NONE.
 * Records stored twice by writers before version 4 change nothing: a second
 * COMMIT is still the last decision, a second END follows the first, a
 * STEP or TURN written again after its END still runs from the same SAGA.
 */
#define LOOKUP_SQL                                                                                                     \
    "SELECT txid, seq, kind, failed_branch, detail FROM treaty_journal "                                               \
    " WHERE txid = ANY($1::uuid[]) "                                                                                   \
    "UNION ALL "                                                                                                       \
    "SELECT e.txid, b.seq, 'end', NULL, b.detail "                                                                     \
    "  FROM treaty_journal b CROSS JOIN LATERAL unnest(b.ended) AS e(txid) "                                           \
    " WHERE b.ended IS NOT NULL AND b.detail IN ('completed', 'compensated') AND b.ended && $1::uuid[] "               \
    "   AND e.txid = ANY($1::uuid[]) "                                                                                 \
    "ORDER BY 1, 2"
const char journal_lookup_sql[] = LOOKUP_SQL;

/* Txids a query asks about at most. */
#define LOOKUP_CHUNK 1000
/* A lookup's connection attempt or query gives up after this (the attempt
 * sooner if connect_timeout says so); a query's connection is then dropped. */
#define LOOKUP_TIMEOUT_MS READER_TIMEOUT_MS

static bool reader_stopped(struct journal *j)
{
    return atomic_load(&j->reader_stop);
}

/* One row of the lookup query, pointing into its PGresult. */
struct lrow {
    uint8_t txid[16];
    long long seq;
    enum journal_kind kind;
    int failed_branch;
    const char *detail; /* NULL when NULL */
};

static void set_detail(struct journal_lookup_result *out, const char *d)
{
    snprintf(out->detail, sizeof out->detail, "%s", d ? d : "");
}

static bool detail_is(const char *d, const char *want)
{
    return d && strcmp(d, want) == 0;
}

/* The outcome of one txid from its rows v[0..n) in seq order (see above). */
static void lookup_decide(const struct lrow *v, size_t n, struct journal_lookup_result *out)
{
    out->outcome = JOURNAL_OUTCOME_NONE;
    out->failed_branch = -1;
    out->detail[0] = '\0';
    size_t L = n;
    for (size_t i = n; i-- > 0;) {
        if (v[i].kind != JOURNAL_END && v[i].kind != JOURNAL_AUDIT) {
            L = i;
            break;
        }
    }
    if (L == n) {
        for (size_t i = n; i-- > 0;) {
            if (detail_is(v[i].detail, "completed") || detail_is(v[i].detail, "compensated")) {
                out->outcome =
                    detail_is(v[i].detail, "completed") ? JOURNAL_OUTCOME_COMPLETED : JOURNAL_OUTCOME_COMPENSATED;
                break;
            }
        }
        return;
    }
    if (v[L].kind == JOURNAL_COMMIT) {
        out->outcome = JOURNAL_OUTCOME_COMMITTED;
        return;
    }
    if (v[L].kind == JOURNAL_ABORT) {
        out->outcome = JOURNAL_OUTCOME_ABORTED;
        out->failed_branch = v[L].failed_branch;
        set_detail(out, v[L].detail);
        return;
    }
    /* A saga's run: from its last SAGA record up to L (or, without one, from
     * the END before L), then the first END after L. */
    size_t start = 0, saga = L + 1;
    for (size_t i = L + 1; i-- > 0 && saga > L;) {
        if (v[i].kind == JOURNAL_SAGA)
            saga = start = i;
    }
    for (size_t i = L + 1; saga > L && i-- > 0;) {
        if (v[i].kind == JOURNAL_END) {
            start = i + 1;
            break;
        }
    }
    for (size_t i = L + 1; i-- > start;) {
        if (v[i].kind == JOURNAL_TURN) {
            out->failed_branch = v[i].failed_branch;
            set_detail(out, v[i].detail);
            break;
        }
    }
    out->outcome = JOURNAL_OUTCOME_UNFINISHED;
    size_t e = L + 1;
    while (e < n && v[e].kind != JOURNAL_END)
        e++;
    if (e < n) {
        const char *d = v[e].detail;
        if (detail_is(d, "completed"))
            out->outcome = JOURNAL_OUTCOME_COMPLETED;
        else if (detail_is(d, "compensated"))
            out->outcome = JOURNAL_OUTCOME_COMPENSATED;
        else {
            log_txn(LOG_LEVEL_WARN, v[0].txid,
                    "journal: lookup: a saga's records end with an END of detail \"%s\"; answered unfinished",
                    d ? d : "(null)");
        }
    }
}

/* journal_priv.h */
int journal_reader_wait(struct journal *j, PGconn *c, int64_t deadline, char *err, size_t errlen)
{
    for (;;) {
        int f = PQflush(c);
        if (f < 0) {
            journal_pg_error(c, NULL, err, errlen);
            return TREATY_EPG;
        }
        if (f == 0) {
            if (!PQconsumeInput(c)) {
                journal_pg_error(c, NULL, err, errlen);
                return TREATY_EPG;
            }
            if (!PQisBusy(c))
                return 0;
        }
        if (reader_stopped(j)) {
            journal_set_err(err, errlen, "journal closing");
            return TREATY_EPG;
        }
        int64_t left = deadline - util_mono_ms();
        if (left <= 0) {
            journal_set_err(err, errlen, "no answer within %d ms", READER_TIMEOUT_MS); /* both callers wait that long */
            return TREATY_EPG;
        }
        struct pollfd p = {.fd = PQsocket(c), .events = (short)(POLLIN | (f == 1 ? POLLOUT : 0))};
        if (p.fd < 0) {
            journal_set_err(err, errlen, "no connection");
            return TREATY_EPG;
        }
        if (poll(&p, 1, left < SLICE_MS ? (int)left : SLICE_MS) < 0 && errno != EINTR) {
            journal_set_err(err, errlen, "poll: %s", strerror(errno));
            return TREATY_EPG;
        }
    }
}

/* Runs the lookup query for the uuid[] literal param, on a non-blocking
 * connection, within LOOKUP_TIMEOUT_MS. *out owns the result on success. */
static int lookup_query(struct journal *j, PGconn *c, const char *param, PGresult **out, char *err, size_t errlen)
{
    const char *values[1] = {param};
    int64_t deadline = util_mono_ms() + LOOKUP_TIMEOUT_MS;
    if (PQsendQueryParams(c, LOOKUP_SQL, 1, NULL, values, NULL, NULL, 0) != 1) {
        journal_pg_error(c, NULL, err, errlen);
        return TREATY_EPG;
    }
    if (journal_reader_wait(j, c, deadline, err, errlen) != 0)
        return TREATY_EPG;
    PGresult *res = PQgetResult(c);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQnfields(res) != 5) {
        journal_pg_error(c, res, err, errlen);
        PQclear(res);
        return TREATY_EPG;
    }
    /* The NULL that ends the query's results. */
    if (journal_reader_wait(j, c, deadline, err, errlen) != 0) {
        PQclear(res);
        return TREATY_EPG;
    }
    PGresult *more = PQgetResult(c);
    if (more) {
        PQclear(more);
        PQclear(res);
        journal_set_err(err, errlen, "unexpected second result of a lookup");
        return TREATY_EPG;
    }
    *out = res;
    return 0;
}

static int cmp_result(const void *a, const void *b)
{
    return memcmp(((const struct journal_lookup_result *)a)->txid, ((const struct journal_lookup_result *)b)->txid, 16);
}

/*
 * Fills out[i] for txid[i], i < n, from the query's result: the outcome of
 * each txid it has rows of, NONE for the others. Returns 0, or TREATY_EPROTO
 * for a row the journal's format does not allow.
 */
static int lookup_answer(PGresult *res, const uint8_t (*txid)[16], unsigned n, struct journal_lookup_result *out)
{
    int nrows = PQntuples(res);
    struct lrow *rows = util_xcalloc((size_t)nrows, sizeof *rows);
    struct journal_lookup_result *found = util_xcalloc((size_t)nrows, sizeof *found);
    size_t nfound = 0;
    int rc = 0;
    for (int i = 0; i < nrows; i++) {
        struct lrow *r = &rows[i];
        const char *kind = PQgetvalue(res, i, 2);
        if (journal_txid_parse(PQgetvalue(res, i, 0), r->txid) != 0 || journal_kind_parse(kind, &r->kind) != 0) {
            log_error("journal: lookup: malformed row (txid %s, kind %s)", PQgetvalue(res, i, 0), kind);
            rc = TREATY_EPROTO;
            goto out;
        }
        r->seq = strtoll(PQgetvalue(res, i, 1), NULL, 10);
        r->failed_branch = PQgetisnull(res, i, 3) ? -1 : atoi(PQgetvalue(res, i, 3));
        r->detail = PQgetisnull(res, i, 4) ? NULL : PQgetvalue(res, i, 4);
    }
    /* Rows come ordered by txid, then seq: decide each txid's run. */
    for (int i = 0; i < nrows;) {
        int k = i + 1;
        while (k < nrows && memcmp(rows[k].txid, rows[i].txid, 16) == 0)
            k++;
        memcpy(found[nfound].txid, rows[i].txid, 16);
        lookup_decide(&rows[i], (size_t)(k - i), &found[nfound]);
        nfound++;
        i = k;
    }
    qsort(found, nfound, sizeof *found, cmp_result);
    for (unsigned i = 0; i < n; i++) {
        struct journal_lookup_result key;
        memcpy(key.txid, txid[i], 16);
        const struct journal_lookup_result *f = bsearch(&key, found, nfound, sizeof *found, cmp_result);
        if (f) {
            out[i] = *f;
        } else {
            memset(&out[i], 0, sizeof out[i]);
            memcpy(out[i].txid, txid[i], 16);
            out[i].outcome = JOURNAL_OUTCOME_NONE;
            out[i].failed_branch = -1;
        }
        out[i].error = 0;
    }
out:
    free(rows);
    free(found);
    return rc;
}

/* journal_priv.h */
int journal_reader_ask(struct journal *j, journal_reader_fn ask, void *arg, const char *what, char *why, size_t whylen)
{
    struct reader *r = &j->r;
    for (int attempt = 0;; attempt++) {
        if (!r->conn) {
            if (util_mono_ms() < r->next_ms)
                return TREATY_EBUSY; /* backing off after a failure */
            int limit = j->attempt_timeout_ms < READER_TIMEOUT_MS ? j->attempt_timeout_ms : READER_TIMEOUT_MS;
            r->conn = journal_pg_connect_within(j, reader_stopped, APP_READER, limit, why, whylen);
            if (r->conn && PQsetnonblocking(r->conn, 1) != 0) {
                journal_pg_error(r->conn, NULL, why, whylen);
                PQfinish(r->conn);
                r->conn = NULL;
            }
            if (!r->conn)
                goto fail;
        }
        int rc = ask(j, r->conn, arg, why, whylen);
        if (rc == 0) {
            r->backoff_ms = 0;
            return 0;
        }
        if (rc != TREATY_EPG)
            return rc; /* e.g. a malformed row (logged): asking again would not help */
        PQfinish(r->conn);
        r->conn = NULL;
        /* A connection that served before may simply have been closed while
         * idle (a Postgres restart): one more try at once. */
        if (attempt > 0 || r->backoff_ms != 0 || reader_stopped(j))
            goto fail;
        if (what)
            log_info("journal: %s connection lost, reconnecting: %s", what, why);
    }

fail:
    r->next_ms = util_mono_ms() +
                 journal_backoff_delay(&r->backoff_ms, j->connect_initial_ms, j->connect_max_ms, false, &r->rng);
    return TREATY_EPG;
}

/* A lookup query: its txids, and where their answers go. */
struct lookup_req {
    const uint8_t (*txid)[16];
    unsigned n;
    struct journal_lookup_result *out;
};

/* A journal_reader_fn: asks for the txids of the lookup_req arg (its uuid[]
 * literal in j->r.param) and fills its answers. */
static int lookup_ask(struct journal *j, PGconn *c, void *arg, char *why, size_t whylen)
{
    const struct lookup_req *q = arg;
    PGresult *res = NULL;
    if (lookup_query(j, c, j->r.param.data, &res, why, whylen) != 0)
        return TREATY_EPG;
    int rc = lookup_answer(res, q->txid, q->n, q->out);
    PQclear(res);
    return rc;
}

/* Answers txid[0..n) into a->r: from Postgres, or with TREATY_EPG. */
static void reader_answer(struct journal *j, const uint8_t (*txid)[16], unsigned n, struct answers *a)
{
    struct reader *r = &j->r;
    char why[ERRLEN] = "";
    a->n = n;
    r->param.len = 0;
    for (unsigned i = 0; i < n; i++) {
        char id[37];
        journal_txid_format(txid[i], id);
        buf_putc(&r->param, i == 0 ? '{' : ',');
        buf_put(&r->param, id, 36);
    }
    buf_put(&r->param, n ? "}" : "{}", n ? 2 : 3);

    struct lookup_req q = {.txid = txid, .n = n, .out = a->r};
    int rc = journal_reader_ask(j, lookup_ask, &q, "lookup", why, sizeof why);
    if (rc == 0)
        return;
    if (rc == TREATY_EBUSY) {
        log_debug("journal: %u lookups answered TREATY_EPG (PostgreSQL unreachable, next attempt in %lld ms)", n,
                  (long long)(r->next_ms - util_mono_ms()));
    } else if (rc == TREATY_EPG && !reader_stopped(j)) {
        log_warn("journal: cannot look up %u transactions (answered TREATY_EPG): %s", n, why);
    }
    for (unsigned i = 0; i < n; i++) {
        memset(&a->r[i], 0, sizeof a->r[i]);
        memcpy(a->r[i].txid, txid[i], 16);
        a->r[i].error = TREATY_EPG;
        a->r[i].outcome = JOURNAL_OUTCOME_NONE;
        a->r[i].failed_branch = -1;
    }
}

/* Answers every lookup of the batches from head on, LOOKUP_CHUNK at a time,
 * each chunk's answers in one message to the loop. */
static void reader_work(struct journal *j, struct lookup_batch *head)
{
    for (struct lookup_batch *l = head; l && !reader_stopped(j); l = l->next) {
        for (unsigned at = 0; at < l->n && !reader_stopped(j); at += LOOKUP_CHUNK) {
            unsigned n = l->n - at < LOOKUP_CHUNK ? l->n - at : LOOKUP_CHUNK;
            struct answers *a = util_xcalloc(1, sizeof *a + (size_t)n * sizeof a->r[0]);
            reader_answer(j, (const uint8_t(*)[16])l->txid + at, n, a);
            struct note m = {.type = NOTE_ANSWERS, .durable = 0, .a = a};
            if (zmq_send(j->reader_out, &m, sizeof m, ZMQ_DONTWAIT) != (int)sizeof m) {
                log_error("journal: cannot hand %u lookup answers to the loop: %s", n, zmq_strerror(errno));
                free(a);
            }
        }
    }
}

void *journal_reader_main(void *arg)
{
    struct journal *j = arg;
    while (!reader_stopped(j)) {
        zmq_pollitem_t it = {.socket = j->reader_in, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, -1) < 0) {
            if (errno == ETERM)
                break;
            continue;
        }
        /* Every batch waiting, in order; records requests after them. */
        struct lookup_batch *head = NULL, **tail = &head;
        struct records_req *rq = NULL, **rq_tail = &rq;
        bool stop = false;
        struct msg m;
        while (zmq_recv(j->reader_in, &m, sizeof m, ZMQ_DONTWAIT) == (int)sizeof m) {
            if (m.type == JMSG_LOOKUP) {
                m.lkp->next = NULL;
                *tail = m.lkp;
                tail = &m.lkp->next;
            } else if (m.type == JMSG_RECORDS) {
                *rq_tail = m.rq;
                while (*rq_tail)
                    rq_tail = &(*rq_tail)->next;
            } else if (m.type == JMSG_STOP) {
                stop = true;
            }
        }
        if (!stop)
            reader_work(j, head);
        lookup_batch_free(head);
        if (!stop)
            journal_records_work(j, rq); /* takes rq */
        else
            records_req_free(rq);
        if (stop)
            break;
    }
    PQfinish(j->r.conn);
    j->r.conn = NULL;
    journal_buf_free(&j->r.param);
    return NULL;
}
