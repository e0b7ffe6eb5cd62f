/*
 * collect.c - the collector: deletes finished transactions older than
 * retention_s from the journal. journal_collect() runs on the writer thread,
 * between groups, every gc_interval_ms, on the writer's connection
 * (journal_priv.h).
 */
#include "journal_priv.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include <libpq-fe.h>

#include "log.h"

/* A collection round takes at most this many old 'end' rows (one txid each)
 * and this many old 'ends' rows (each naming a group's finished txids). */
#define GC_MAX_TXIDS 10000
#define GC_MAX_ENDS 256

/*
 * Collects finished transactions: for up to GC_MAX_ENDS 'ends' rows and
 * GC_MAX_TXIDS 'end' rows (written by versions 1 and 2, for saga ENDs, and
 * for a group's 2PC ENDs beyond ENDS_MAX_DETAILS details)
 * older than retention_s, deletes each END row and, for every txid it names,
 * that txid's records with a lower seq than the END row: the run the END
 * finished, and any older run. Records of the txid after that END (a newer
 * run, finished or not) stay: an END says nothing about what followed it.
 * When a txid is named by several old END rows of this round, the highest
 * bounds it.
 *
 * One transaction, lazily committed. If we crash before COMMIT, nothing is
 * deleted. If Postgres crashes and forgets the committed delete, the END rows
 * and their runs are back, still finished, and go in a later round. Either
 * way a run and the END that finished it disappear together, so no END ever
 * outlives its run to be mistaken for another's.
 */
void journal_collect(struct journal *j)
{
    struct writer *w = &j->w;
    char why[ERRLEN], sql[1536];
    PGresult *res = NULL;

    w->next_gc = util_mono_ms() + j->gc_interval_ms;
    if (!w->conn) {
        /* One attempt: the write path does the persistent retrying. */
        writer_set_conn(w, journal_writer_connect(j, why, sizeof why));
        if (!w->conn) {
            log_warn("journal: collector cannot connect to PostgreSQL: %s", why);
            return;
        }
        atomic_fetch_add(&j->n_reconnects, 1);
    }
    PGconn *c = w->conn;
    /* b: old 'ends' rows; s: old 'end' rows; done: each txid they name with
     * the highest seq naming it. Both are found through their partial
     * indexes on written_at; del reaches each txid's records through the
     * txid index. An 'ends' row has a NULL txid: del never reaches it, dele
     * deletes the END rows themselves. */
    snprintf(sql, sizeof sql,
             "WITH b AS (SELECT seq, ended FROM treaty_journal "
             "            WHERE kind = 'ends' AND written_at < now() - make_interval(secs => %d) "
             "            LIMIT %d), "
             "     s AS (SELECT seq, txid FROM treaty_journal "
             "            WHERE kind = 'end' AND written_at < now() - make_interval(secs => %d) "
             "            LIMIT %d), "
             "     done AS (SELECT txid, max(seq) AS upto "
             "                FROM (SELECT unnest(ended) AS txid, seq FROM b UNION ALL SELECT txid, seq FROM s) e "
             "               GROUP BY txid), "
             "     del AS (DELETE FROM treaty_journal j USING done "
             "              WHERE j.txid = done.txid AND j.seq < done.upto RETURNING 1), "
             "     dele AS (DELETE FROM treaty_journal j "
             "               WHERE j.seq IN (SELECT seq FROM b UNION ALL SELECT seq FROM s) RETURNING 1) "
             "SELECT (SELECT count(*) FROM done), (SELECT count(*) FROM del) + (SELECT count(*) FROM dele), "
             "       (SELECT count(*) FROM b), (SELECT count(*) FROM s)",
             j->retention_s, GC_MAX_ENDS, j->retention_s, GC_MAX_TXIDS);
    if (!journal_pg_exec(c, "BEGIN; SET LOCAL synchronous_commit = off", PGRES_COMMAND_OK, why, sizeof why))
        goto fail;
    res = PQexec(c, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        journal_pg_error(c, res, why, sizeof why);
        goto fail;
    }
    long long ntx = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    long long nrows = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    long long nends = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
    long long nend = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
    PQclear(res);
    res = NULL;
    if (!journal_pg_commit(c, why, sizeof why))
        goto fail;
    if (nrows > 0) {
        atomic_fetch_add(&j->n_gc_deleted, (uint64_t)nrows);
        log_debug("journal: collected %lld finished transactions (%lld records)", ntx, nrows);
    }
    if (nend >= GC_MAX_TXIDS || nends >= GC_MAX_ENDS)
        w->next_gc = util_mono_ms(); /* more to collect, after whatever batches wait */
    return;

fail:
    PQclear(res);
    log_warn("journal: collecting finished transactions failed: %s", why);
    if (PQstatus(c) == CONNECTION_OK) {
        PQclear(PQexec(c, "ROLLBACK"));
    } else {
        PQfinish(c);
        writer_set_conn(w, NULL);
    }
}
