/*
 * scan.c - the recovery scan, journal_scan() (journal.h, step 2): every
 * record of the unfinished transactions, read on the loop thread through the
 * connection journal_connect opened, before journal_start hands it to the
 * writer.
 */
#include "journal_priv.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "log.h"
#include "treaty.h"

/* The scan fetches at most this many rows at a time, starting with
 * SCAN_FETCH_FIRST and adapting to the average row size so that one fetch
 * holds about SCAN_FETCH_BYTES: saga definitions can be megabytes each, and
 * 10000 of them in one result would not fit in memory. */
#define SCAN_FETCH_ROWS 10000
#define SCAN_FETCH_FIRST 256
#define SCAN_FETCH_BYTES ((size_t)64 << 20)

static void scan_fail(PGconn *c, PGresult *res, const char *what)
{
    char why[ERRLEN];
    journal_pg_error(c, res, why, sizeof why);
    log_error("journal: recovery scan failed (%s): %s", what, why);
}

static int hex_digit(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * Decodes a bytea in text output form ("\x0a1b...", the scan sets
 * bytea_output = hex) into out, reused from row to row. Returns 0 or
 * TREATY_EPROTO.
 */
static int bytea_decode(const char *s, size_t len, struct journal_buf *out)
{
    out->len = 0;
    if (len < 2 || s[0] != '\\' || s[1] != 'x' || len % 2 != 0)
        return TREATY_EPROTO;
    size_t n = (len - 2) / 2;
    buf_reserve(out, n + 1);
    const unsigned char *p = (const unsigned char *)s + 2;
    for (size_t i = 0; i < n; i++) {
        int hi = hex_digit(p[2 * i]), lo = hex_digit(p[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return TREATY_EPROTO;
        out->data[i] = (char)(hi << 4 | lo);
    }
    out->len = n;
    return 0;
}

/*
 * The records of unfinished runs: every record (END rows aside) that no END
 * of its txid follows by seq, grouped by txid in append order. A txid's
 * records after its last END are all such records, so each txid delivered
 * is exactly one run. ENDs are the 'end' rows (versions 1 and 2, saga ENDs,
 * a group's 2PC ENDs beyond ENDS_MAX_DETAILS details) and every element of
 * the 'ends' rows.
 *
 * The plan, for a journal of millions of finished rows and few unfinished
 * ones: one hash anti join. The hash is built from every END (txid, seq)
 * (the 'ends' rows through their partial index, each unnested), then one
 * sequential pass over the table probes it; only the few survivors are
 * sorted and their large columns (data) read. Every row is read once and
 * nothing is sorted but the result. The planner left alone misjudges the
 * unnested ENDs (ten a row, while a group's row names hundreds) and picks a
 * merge anti join that walks the whole txid index in random heap order
 * (measured 3.4 s against 1.4 s for the hash join on 1M finished 2PC
 * transactions), or could pick a nested loop; JOURNAL_SCAN_SETTINGS rules
 * both out for the scan's transaction. The hash grows past its estimate as
 * needed (about 64 bytes an END; it spills to disk in batches beyond
 * work_mem * hash_mem_multiplier).
 */
const char journal_scan_sql[] =
    "SELECT r.txid, r.kind, r.services, r.failed_branch, r.detail, r.step, r.data "
    "  FROM treaty_journal r "
    " WHERE r.kind NOT IN ('end', 'ends') "
    "   AND NOT EXISTS (SELECT 1 "
    "                     FROM (SELECT txid, seq FROM treaty_journal WHERE kind = 'end' "
    "                           UNION ALL "
    "                           SELECT unnest(ended), seq FROM treaty_journal WHERE kind = 'ends') e "
    "                    WHERE e.txid = r.txid AND e.seq > r.seq) "
    " ORDER BY r.txid, r.seq";

int journal_scan(struct journal *j, journal_scan_fn cb, void *arg)
{
    if (!j || !cb)
        return TREATY_EINVAL;
    if (j->started || !j->conn)
        return TREATY_ESTATE;
    PGconn *c = j->conn;
    if (PQstatus(c) != CONNECTION_OK) {
        PQreset(c);
        if (PQstatus(c) != CONNECTION_OK) {
            scan_fail(c, NULL, "reconnect");
            return TREATY_EPG;
        }
    }

    int64_t t0 = util_mono_ms();
    int rc = 0;
    uint64_t nrows = 0, ntx = 0;
    uint8_t last_txid[16] = {0};
    struct journal_buf scratch = {0}, bytes = {0};
    struct journal_strv sv = {0};
    PGresult *res = NULL;

    /* A read-only transaction: the cursor and the planner settings. */
    res = PQexec(c, "BEGIN READ ONLY; " JOURNAL_SCAN_SETTINGS);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        goto fail_sql;
    PQclear(res);
    char sql[sizeof journal_scan_sql + 64];
    snprintf(sql, sizeof sql, "DECLARE treaty_scan NO SCROLL CURSOR FOR %s", journal_scan_sql);
    res = PQexec(c, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        goto fail_sql;
    PQclear(res);
    res = NULL;

    long fetch = SCAN_FETCH_FIRST;
    for (;;) {
        char fetch_sql[64];
        snprintf(fetch_sql, sizeof fetch_sql, "FETCH FORWARD %ld FROM treaty_scan", fetch);
        res = PQexec(c, fetch_sql);
        if (PQresultStatus(res) != PGRES_TUPLES_OK)
            goto fail_sql;
        int n = PQntuples(res);
        if (n == 0)
            break;
        /* Next fetch: about SCAN_FETCH_BYTES at this fetch's average row
         * size, growing at most fourfold at a time. */
        size_t got = 0;
        for (int i = 0; i < n; i++)
            got +=
                64 + (size_t)PQgetlength(res, i, 2) + (size_t)PQgetlength(res, i, 4) + (size_t)PQgetlength(res, i, 6);
        size_t want = SCAN_FETCH_BYTES / (got / (size_t)n + 1);
        fetch = want < 1 ? 1 : want > (size_t)fetch * 4 ? fetch * 4 : (long)want;
        if (fetch > SCAN_FETCH_ROWS)
            fetch = SCAN_FETCH_ROWS;
        for (int i = 0; i < n && rc == 0; i++) {
            struct journal_rec r = {.failed_branch = -1, .step = -1};
            if (journal_txid_parse(PQgetvalue(res, i, 0), r.txid) != 0 ||
                journal_kind_parse(PQgetvalue(res, i, 1), &r.kind) != 0) {
                log_error("journal: recovery scan: malformed row (txid %s, kind %s)", PQgetvalue(res, i, 0),
                          PQgetvalue(res, i, 1));
                goto fail_row;
            }
            if (!PQgetisnull(res, i, 2)) {
                int len = PQgetlength(res, i, 2);
                scratch.len = 0;
                buf_put(&scratch, PQgetvalue(res, i, 2), (size_t)len + 1);
                if (journal_parse_text_array(scratch.data, &sv) != 0) {
                    log_error("journal: recovery scan: malformed services %s", PQgetvalue(res, i, 2));
                    goto fail_row;
                }
                r.nservices = sv.n;
                r.services = sv.n ? sv.v : NULL;
            }
            if (!PQgetisnull(res, i, 3))
                r.failed_branch = atoi(PQgetvalue(res, i, 3));
            if (!PQgetisnull(res, i, 4))
                r.detail = PQgetvalue(res, i, 4);
            if ((r.kind == JOURNAL_STEP || r.kind == JOURNAL_AUDIT) && !PQgetisnull(res, i, 5))
                r.step = atoi(PQgetvalue(res, i, 5));
            if (!PQgetisnull(res, i, 6)) {
                if (bytea_decode(PQgetvalue(res, i, 6), (size_t)PQgetlength(res, i, 6), &bytes) != 0) {
                    char id[37];
                    journal_txid_format(r.txid, id);
                    log_error("journal: recovery scan: malformed data of a %s record (txid %s)",
                              journal_kind_name(r.kind), id);
                    goto fail_row;
                }
                r.data = bytes.data;
                r.data_len = bytes.len;
            }
            if (nrows == 0 || memcmp(last_txid, r.txid, 16) != 0) {
                memcpy(last_txid, r.txid, 16);
                ntx++;
            }
            nrows++;
            rc = cb(arg, &r, 0);
        }
        PQclear(res);
        res = NULL;
        if (rc != 0)
            break;
    }
    PQclear(res);
    res = NULL;
    if (rc != 0) {
        /* Stopped by the callback: closes the cursor too. */
        PQclear(PQexec(c, "ROLLBACK"));
    } else {
        res = PQexec(c, "COMMIT");
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            goto fail_sql;
        PQclear(res);
        log_info("journal: recovery scan read %" PRIu64 " records of %" PRIu64 " unfinished transactions in %lld ms",
                 nrows, ntx, (long long)(util_mono_ms() - t0));
    }
    journal_buf_free(&scratch);
    journal_buf_free(&bytes);
    journal_strv_free(&sv);
    return rc;

fail_sql:
    scan_fail(c, res, "query");
fail_row:
    PQclear(res);
    if (PQstatus(c) == CONNECTION_OK)
        PQclear(PQexec(c, "ROLLBACK"));
    journal_buf_free(&scratch);
    journal_buf_free(&bytes);
    journal_strv_free(&sv);
    return TREATY_EPG;
}

int journal_newest_txid(struct journal *j, int64_t below_ms, int64_t *out_ms)
{
    if (!j || !out_ms || below_ms < 0)
        return TREATY_EINVAL;
    if (j->started || !j->conn)
        return TREATY_ESTATE;
    /* The smallest UUID made after below_ms: every txid made up to below_ms
     * sorts before it (a UUIDv7's bytes begin with its time, big-endian). */
    uint8_t bound[16] = {0};
    uint64_t t = (uint64_t)below_ms + 1;
    for (int i = 0; i < 6; i++)
        bound[i] = (uint8_t)(t >> (40 - 8 * i));
    char bound_text[37];
    journal_txid_format(bound, bound_text);
    const char *params[1] = {bound_text};
    PGresult *res = PQexecParams(j->conn,
                                 "SELECT txid::text FROM treaty_journal WHERE txid < $1::uuid "
                                 "ORDER BY txid DESC LIMIT 1",
                                 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        scan_fail(j->conn, res, "newest txid");
        PQclear(res);
        return TREATY_EPG;
    }
    *out_ms = -1;
    uint8_t id[16];
    if (PQntuples(res) == 1 && journal_txid_parse(PQgetvalue(res, 0, 0), id) == 0) {
        uint64_t ms = 0;
        for (int i = 0; i < 6; i++)
            ms = ms << 8 | id[i];
        *out_ms = (int64_t)ms;
    }
    PQclear(res);
    return 0;
}
