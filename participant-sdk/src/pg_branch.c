/*
 * pg_branch.c - the decisions of a Postgres 2PC branch: PREPARE -> vote,
 * COMMIT / ABORT -> acknowledge or not, and the in-doubt sweep
 * (pg_core.h, "2PC branch"), over pg_ops.h. The crash window of every
 * durable step is named where it happens.
 */
#include <stdio.h>
#include <string.h>

#include "participant_core.h"
#include "pg_core.h"
#include "pg_core_int.h"
#include "pg_ops.h"
#include "treaty.h"

/* ---------------------------------------------------------------- prepare */

static int prepare_once(struct pg_core *g, const treaty_branch_t *b, char *reason)
{
    char gid[PG_GID_MAX];
    pg_gid_make(&b->txid, b->branch, gid);

    /* (a) Already prepared: a duplicate PREPARE. (b) Otherwise the barrier
     * row, in the branch's own transaction, and the horizon after it. */
    long long horizon = -1;
    int rc = g->ops.branch_begin(g->ctx, &b->txid, b->branch, gid, &horizon);
    if (rc < 0) {
        pg_core_report(g, NULL);
        return TREATY_EPG;
    }
    switch ((enum pg_begin)rc) {
    case PG_BEGIN_PREPARED:
        /* The branch is durable and undecided, exactly what a YES vote
         * promises. */
        return TREATY_VOTE_YES;
    case PG_BEGIN_COMMITTED:
        /* The branch was prepared and committed before: this PREPARE is a
         * stale duplicate, any vote would be ignored. Send none. */
        pg_core_log(g, PCORE_NOTE, "duplicate PREPARE for %s: branch %u already committed; no vote", gid, b->branch);
        return TREATY_ESTATE;
    case PG_BEGIN_HELD:
        /* Another session holds the row: a twin instance preparing the same
         * branch, or its prepared transaction. No vote; the coordinator
         * re-sends or times out. */
        pg_core_report(g, NULL);
        return TREATY_ESTATE;
    case PG_BEGIN_OPEN:
        break;
    }
    if (pg_core_before_horizon(&b->txid, horizon)) {
        /* No row, but one may have been purged: this could be a late
         * duplicate of a branch that committed here, and running the work
         * again could apply it twice (a YES for a branch the coordinator
         * still remembers as committed would be answered COMMIT). NO is
         * always safe: a decided transaction ignores it, a live one aborts. */
        g->ops.rollback(g->ctx);
        snprintf(reason, TREATY_REASON_MAX,
                 "PREPARE older than the barrier's purge horizon (the branch may have committed here and its "
                 "barrier row been purged)");
        pg_core_log(g, PCORE_NOTE, "%s: %s; voted NO", gid, reason);
        return TREATY_VOTE_NO;
    }

    /* (c) The business work, in the same transaction. */
    reason[0] = '\0';
    int vote = g->work(g->arg, g->ops.session(g->ctx), b, reason);
    reason[TREATY_REASON_MAX - 1] = '\0';
    if (vote != TREATY_VOTE_YES) {
        g->ops.rollback(g->ctx);
        if (vote < 0) {
            pg_core_log(g, PCORE_NOTE, "work for %s failed: %s; rolled back, no vote", gid, treaty_err_name(vote));
            return g->ops.lost(g->ctx) ? TREATY_EPG : vote;
        }
        if (vote != TREATY_VOTE_NO)
            snprintf(reason, TREATY_REASON_MAX, "work returned %d, not a vote", vote);
        return TREATY_VOTE_NO;
    }
    enum pg_txn st = g->ops.txn_state(g->ctx);
    if (st != PG_TXN_OPEN) {
        /* work() hit an error and still said YES, or ended the transaction
         * itself. PREPARE TRANSACTION would only roll back. */
        g->ops.rollback(g->ctx);
        if (st == PG_TXN_LOST || g->ops.lost(g->ctx)) {
            pg_core_log(g, PCORE_NOTE, "connection lost during work for %s; no vote", gid);
            return TREATY_EPG;
        }
        snprintf(reason, TREATY_REASON_MAX, "work voted YES but the transaction was %s",
                 st == PG_TXN_FAILED ? "failed" : "ended by work");
        pg_core_log(g, PCORE_NOTE, "%s: %s", gid, reason);
        return TREATY_VOTE_NO;
    }

    rc = g->ops.branch_prepare(g->ctx, gid);
    if (rc < 0) {
        /* Not prepared (e.g. max_prepared_transactions reached): rolled
         * back. No vote. */
        pg_core_report(g, NULL);
        return TREATY_EPG;
    }
    if (rc == PG_END_ROLLED_BACK) {
        snprintf(reason, TREATY_REASON_MAX, "PREPARE TRANSACTION rolled back");
        return TREATY_VOTE_NO;
    }
    /* Durable point: the branch is prepared. If we crash now, before the
     * vote leaves, the coordinator aborts on its prepare timeout (or re-sends
     * PREPARE, answered by step (a)); after our restart the in-doubt sweep
     * INQUIREs and the ABORT rolls the prepared transaction back. */
    if (g->ops.crash_point != NULL)
        g->ops.crash_point(g->ctx, "participant.after_prepare");
    return TREATY_VOTE_YES;
}

int pg_core_prepare(void *arg, const treaty_branch_t *b, char *reason)
{
    struct pg_core *g = arg;
    if (g->work == NULL) {
        snprintf(reason, TREATY_REASON_MAX, "this participant does not take part in 2PC");
        return TREATY_VOTE_NO;
    }
    for (int attempt = 0;; attempt++) {
        if (g->ops.ready(g->ctx, false) < 0) {
            pg_core_report(g, NULL);
            return TREATY_EPG;
        }
        int rc = prepare_once(g, b, reason);
        /* Every step is idempotent (a lost transaction is rolled back by the
         * server, a completed PREPARE is found by step (a)): retry once
         * when the connection broke under us. */
        if (rc != TREATY_EPG || attempt > 0 || !g->ops.lost(g->ctx))
            return rc;
    }
}

/* --------------------------------------------------------- commit / abort */

/*
 * COMMIT / ROLLBACK PREPARED found no prepared transaction: the decision was
 * applied before (a duplicate), or the branch was never prepared here, or it
 * was rolled back - e.g. by a twin instance of the service, sharing this
 * database, that was told ABORT for it. The barrier row tells which; the
 * table is in pg_core.h. 0 (acknowledge) or a negative TREATY_E* (no ACK).
 */
static int finish_missing(struct pg_core *g, const treaty_branch_t *b, const char *gid, bool commit)
{
    long long horizon = -1;
    int rc = g->ops.branch_witness(g->ctx, &b->txid, b->branch, &horizon);
    if (rc < 0) {
        pg_core_report(g, NULL);
        return TREATY_EPG;
    }
    switch ((enum pg_witness)rc) {
    case PG_WITNESS_COMMITTED:
        if (commit)
            return 0;
        pg_core_log(g, PCORE_ALERT,
                    "ABORT for %s refused: that branch committed here; not acknowledged (the abort decision "
                    "contradicts a committed branch)",
                    gid);
        return TREATY_ESTATE;
    case PG_WITNESS_ABSENT:
        if (!commit)
            return 0;
        if (pg_core_before_horizon(&b->txid, horizon)) {
            /* Its row may have been purged after it committed: refusing
             * would have the coordinator re-send forever, and a COMMIT that
             * old re-sends a decision whose atomicity was settled (or lost)
             * when it was first delivered. */
            pg_core_log(g, PCORE_NOTE,
                        "COMMIT for %s: neither prepared nor a barrier row, but older than the barrier's purge "
                        "horizon (its row may have been purged after it committed); acknowledged unverified",
                        gid);
            return 0;
        }
        pg_core_log(g, PCORE_ALERT,
                    "COMMIT for %s refused: the branch is neither prepared nor committed here (never prepared, "
                    "or rolled back); not acknowledged",
                    gid);
        return TREATY_ESTATE;
    case PG_WITNESS_HELD:
        break;
    }
    pg_core_log(g, PCORE_NOTE,
                "%s for %s: no prepared transaction, and its barrier row is held by another transaction (a twin "
                "instance preparing or deciding it); not acknowledged yet",
                commit ? "COMMIT" : "ABORT", gid);
    return TREATY_EPG;
}

static int finish_once(struct pg_core *g, const treaty_branch_t *b, bool commit)
{
    char gid[PG_GID_MAX];
    pg_gid_make(&b->txid, b->branch, gid);
    int rc = g->ops.branch_finish(g->ctx, gid, commit);
    if (rc < 0) {
        pg_core_report(g, NULL);
        return TREATY_EPG;
    }
    if (rc == PG_FINISH_NO_GID)
        return finish_missing(g, b, gid, commit);
    /* Durable point: the decision is applied. If we crash now, before the
     * ACK leaves, the coordinator re-sends the decision and we answer it
     * through finish_missing: the barrier row is there for a commit and
     * gone for an abort. */
    if (commit && g->ops.crash_point != NULL)
        g->ops.crash_point(g->ctx, "participant.after_commit");
    return 0;
}

static int finish(struct pg_core *g, const treaty_branch_t *b, bool commit)
{
    for (int attempt = 0;; attempt++) {
        if (g->ops.ready(g->ctx, false) < 0) {
            pg_core_report(g, NULL);
            return TREATY_EPG;
        }
        int rc = finish_once(g, b, commit);
        if (rc != TREATY_EPG || attempt > 0 || !g->ops.lost(g->ctx))
            return rc;
    }
}

int pg_core_commit(void *arg, const treaty_branch_t *b)
{
    struct pg_core *g = arg;
    /* If we crash here the branch stays prepared; the coordinator re-sends
     * COMMIT, and our in-doubt sweep after restart INQUIREs for it. */
    if (g->ops.crash_point != NULL)
        g->ops.crash_point(g->ctx, "participant.before_commit");
    return finish(g, b, true);
}

int pg_core_abort(void *arg, const treaty_branch_t *b)
{
    return finish(arg, b, false);
}

/* --------------------------------------------------------- in-doubt sweep */

struct sweep {
    struct pg_core *g;
    struct pcore *c;
};

static void sweep_one(void *arg, const char *gid)
{
    struct sweep *sw = arg;
    treaty_txid_t id;
    unsigned branch;
    if (!pg_gid_parse(gid, &id, &branch)) {
        pcore_log(sw->c, PCORE_NOTE, "prepared transaction %s is not Treaty's; left alone", gid);
        return;
    }
    (void)pcore_inquire(sw->c, &id, branch); /* a lost INQUIRE is asked again next sweep */
}

/* After the first WELCOME (first) and then periodically: INQUIRE for every
 * treaty:* prepared transaction of this database. Periodic sweeps skip
 * transactions younger than one sweep period, which are most likely still
 * being decided normally. */
void pg_core_sweep(void *arg, struct pcore *c, bool first)
{
    struct pg_core *g = arg;
    if (g->ops.ready(g->ctx, false) < 0) {
        pg_core_report(g, NULL);
        return;
    }
    struct sweep sw = {g, c};
    if (g->ops.list_prepared(g->ctx, first ? 0 : PCORE_SWEEP_MS, sweep_one, &sw) < 0)
        pg_core_report(g, NULL);
}
