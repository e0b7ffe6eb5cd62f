/*
 * records.c - one transaction's records for an operator
 * (journal_read_records, journal.h), read on the reader thread
 * (journal_priv.h) after the lookups handed over with them, on the lookups'
 * connection and with their rules: a request that cannot reach Postgres is
 * answered TREATY_EPG, at once while the reader backs off after a failure.
 */
#include "journal_priv.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <zmq.h>

#include "log.h"
#include "treaty.h"

/*
 * The txid's own rows through the txid index, and the 2PC ENDs that name it
 * in 'ends' rows: those come after the txid's first row, so they are read
 * along the primary key from there (an 'ends' row has no txid; no index
 * finds it by the txids it lists). For a transaction that ended, the walk
 * stops at its END soon after its decision; for one still running, it reads
 * the rows written since its first one. LIMIT one more than the answer
 * holds, to tell a cut list.
 */
#define RECORDS_SQL                                                                                                    \
    "SELECT seq, kind, array_to_string(services, ','), failed_branch, detail, step, "                                  \
    "       (extract(epoch FROM written_at) * 1000)::bigint "                                                          \
    "  FROM treaty_journal WHERE txid = $1::uuid "                                                                     \
    "UNION ALL "                                                                                                       \
    "SELECT seq, 'end', NULL, NULL, detail, NULL, (extract(epoch FROM written_at) * 1000)::bigint "                    \
    "  FROM treaty_journal "                                                                                           \
    " WHERE ended IS NOT NULL AND ended @> ARRAY[$1::uuid] "                                                           \
    "   AND seq > (SELECT min(seq) FROM treaty_journal WHERE txid = $1::uuid) "                                        \
    "ORDER BY 1 LIMIT $2"
#define RECORDS_NFIELDS 7

static bool stopped(struct journal *j)
{
    return atomic_load(&j->reader_stop);
}

/* Copies src into dst (len bytes), cut with "..." when it does not fit. */
static void copy_cut(char *dst, size_t len, const char *src)
{
    size_t n = strlen(src);
    if (n < len) {
        memcpy(dst, src, n + 1);
        return;
    }
    memcpy(dst, src, len - 4);
    memcpy(dst + len - 4, "...", 4);
}

/* Fills a from the query's result. 0, or TREATY_EPROTO for a row the
 * journal's format does not allow (logged). */
static int fill(PGresult *res, struct journal_records *a)
{
    int nrows = PQntuples(res);
    for (int i = 0; i < nrows; i++) {
        if (i == JOURNAL_RECORDS_MAX) {
            a->truncated = true;
            break;
        }
        struct journal_record_row *w = &a->rows[a->n];
        if (journal_kind_parse(PQgetvalue(res, i, 1), &w->kind) != 0) {
            log_error("journal: records: a row of unknown kind %s", PQgetvalue(res, i, 1));
            return TREATY_EPROTO;
        }
        w->seq = strtoull(PQgetvalue(res, i, 0), NULL, 10);
        copy_cut(w->services, sizeof w->services, PQgetvalue(res, i, 2));
        w->failed_branch = PQgetisnull(res, i, 3) ? -1 : atoi(PQgetvalue(res, i, 3));
        copy_cut(w->detail, sizeof w->detail, PQgetvalue(res, i, 4));
        w->step = PQgetisnull(res, i, 5) ? -1 : atoi(PQgetvalue(res, i, 5));
        w->written_ms = strtoll(PQgetvalue(res, i, 6), NULL, 10);
        a->n++;
    }
    return 0;
}

/* One query on the reader's connection c within READER_TIMEOUT_MS; *out owns
 * the result on success. */
static int query(struct journal *j, PGconn *c, const char *txid, PGresult **out, char *err, size_t errlen)
{
    char limit[16];
    snprintf(limit, sizeof limit, "%d", JOURNAL_RECORDS_MAX + 1);
    const char *values[2] = {txid, limit};
    int64_t deadline = util_mono_ms() + READER_TIMEOUT_MS;
    if (PQsendQueryParams(c, RECORDS_SQL, 2, NULL, values, NULL, NULL, 0) != 1) {
        journal_pg_error(c, NULL, err, errlen);
        return TREATY_EPG;
    }
    if (journal_reader_wait(j, c, deadline, err, errlen) != 0)
        return TREATY_EPG;
    PGresult *res = PQgetResult(c);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQnfields(res) != RECORDS_NFIELDS) {
        journal_pg_error(c, res, err, errlen);
        PQclear(res);
        return TREATY_EPG;
    }
    PGresult *more = NULL;
    if (journal_reader_wait(j, c, deadline, err, errlen) != 0 || (more = PQgetResult(c)) != NULL) {
        if (more)
            journal_set_err(err, errlen, "unexpected second result of a records query");
        PQclear(more);
        PQclear(res);
        return TREATY_EPG;
    }
    *out = res;
    return 0;
}

/* A journal_reader_fn: reads the records of the journal_records arg's txid
 * into it. */
static int records_ask(struct journal *j, PGconn *c, void *arg, char *why, size_t whylen)
{
    struct journal_records *a = arg;
    char id[37];
    journal_txid_format(a->txid, id);
    PGresult *res = NULL;
    if (query(j, c, id, &res, why, whylen) != 0)
        return TREATY_EPG;
    int rc = fill(res, a);
    PQclear(res);
    return rc;
}

/* Answers one request into a: from Postgres, or with TREATY_EPG, on the
 * reader's connection with its rules (journal_reader_ask). */
static void answer(struct journal *j, struct journal_records *a)
{
    char why[ERRLEN] = "";
    int rc = journal_reader_ask(j, records_ask, a, "records", why, sizeof why);
    if (rc == 0)
        return;
    if (rc == TREATY_EPG && !stopped(j)) {
        char id[37];
        journal_txid_format(a->txid, id);
        log_warn("journal: cannot read the records of %s (answered TREATY_EPG): %s", id, why);
    }
    a->n = 0;
    a->truncated = false;
    a->error = TREATY_EPG;
}

void journal_records_work(struct journal *j, struct records_req *head)
{
    for (struct records_req *q = head; q; q = q->next) {
        struct records_answer *a = util_xcalloc(1, sizeof *a);
        memcpy(a->r.txid, q->txid, 16);
        a->r.token = q->token;
        if (stopped(j))
            a->r.error = TREATY_EPG;
        else
            answer(j, &a->r);
        struct note m = {.type = NOTE_RECORDS, .rec = a};
        if (zmq_send(j->reader_out, &m, sizeof m, ZMQ_DONTWAIT) != (int)sizeof m) {
            log_error("journal: cannot hand the records of a transaction to the loop: %s", zmq_strerror(errno));
            free(a);
        }
    }
    records_req_free(head);
}
