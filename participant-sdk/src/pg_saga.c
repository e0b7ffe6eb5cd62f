/*
 * pg_saga.c - the decisions of a saga step on Postgres through the barrier
 * (pg_core.h, "Saga step"), over pg_ops.h: a duplicate action or
 * compensation is applied once, a compensation that comes first is a null
 * compensation and blocks its action (no hanging), a failed action keeps its
 * row, and what the purge horizon hides is never guessed.
 *
 * Two instances of the service sharing the database serialize on the
 * barrier row (the second insert waits for the first transaction; the
 * ops' lock timeout bounds that wait, and the loser answers transient).
 */
#include <stdio.h>
#include <string.h>

#include "participant_core.h"
#include "pg_core.h"
#include "pg_core_int.h"
#include "pg_ops.h"
#include "treaty.h"

/* After fn: is the step's transaction still open and usable? 0, or a
 * negative TREATY_E* with the reason set (the caller rolls back). */
static int check_fn_txn(struct pg_core *g, const char *kind, const treaty_step_t *s, bool ok, char *reason)
{
    enum pg_txn st = g->ops.txn_state(g->ctx);
    if (st == PG_TXN_LOST) {
        pg_core_note(g, reason, "connection lost during %s %s of step %u", kind, s->name, s->step);
        return TREATY_EPG;
    }
    if (st == PG_TXN_IDLE) {
        pg_core_note(g, reason,
                     "%s handler %s ended the step's transaction itself (it must not COMMIT or ROLLBACK); "
                     "barrier bypassed, try counted as transient",
                     kind, s->name);
        return TREATY_ESTATE;
    }
    if (ok && st == PG_TXN_FAILED) {
        g->ops.rollback(g->ctx);
        pg_core_note(g, reason, "%s handler %s returned OK, but a statement in its transaction failed; rolled back",
                     kind, s->name);
        return TREATY_ESTATE;
    }
    return 0;
}

/* step_record of the row this transaction inserted. 0, or a negative
 * TREATY_E* with the reason set (rolled back). */
static int record_result(struct pg_core *g, const char *kind, const treaty_step_t *s, enum pg_step_op op, bool ok,
                         const char *why, char *reason)
{
    int rc = g->ops.step_record(g->ctx, &s->txid, s->step, op, ok, why);
    if (rc < 0) {
        pg_core_report(g, reason);
        return TREATY_EPG;
    }
    if (rc == PG_RECORD_OTHER) {
        g->ops.rollback(g->ctx);
        pg_core_note(g, reason,
                     "%s handler %s ended the step's transaction itself and began another (it must not COMMIT or "
                     "ROLLBACK); barrier bypassed, try counted as transient",
                     kind, s->name);
        return TREATY_ESTATE;
    }
    return 0;
}

/* step_commit. 0, or TREATY_EPG with the reason set. */
static int commit_step(struct pg_core *g, char *reason)
{
    int rc = g->ops.step_commit(g->ctx);
    if (rc < 0) {
        pg_core_report(g, reason);
        return TREATY_EPG;
    }
    if (rc == PG_END_ROLLED_BACK) {
        pg_core_note(g, reason, "COMMIT of the step rolled back");
        return TREATY_EPG;
    }
    return 0;
}

/* The action's row was there: a duplicate, or the compensation came first.
 * Answers from the row; runs nothing. */
static int action_answer(struct pg_core *g, const treaty_step_t *s, const char *ids, char *reason)
{
    int rc = g->ops.step_read_action(g->ctx, &s->txid, s->step, reason);
    if (rc < 0) {
        pg_core_report(g, reason);
        return TREATY_EPG;
    }
    g->ops.rollback(g->ctx);
    switch ((enum pg_action)rc) {
    case PG_ACTION_OK:
        reason[0] = '\0';
        return TREATY_STEP_OK;
    case PG_ACTION_FAILED:
        if (reason[0] == '\0')
            snprintf(reason, TREATY_REASON_MAX, "action %s failed", s->name);
        return TREATY_STEP_FAILED;
    case PG_ACTION_BLOCKED:
        snprintf(reason, TREATY_REASON_MAX, "compensated before the action arrived (hanging action refused)");
        return TREATY_STEP_FAILED;
    case PG_ACTION_GONE:
        /* Deleted between the insert and the read: a purge. Retried. */
        pg_core_note(g, reason, "action barrier row of %s step %u was purged while it was read; retried", ids, s->step);
        return TREATY_ESTATE;
    case PG_ACTION_NONE:
        break;
    }
    /* No result: only an earlier handler that committed by itself leaves
     * that. Unknown: transient. */
    pg_core_note(g, reason,
                 "action %s of %s step %u: barrier row without a result (an earlier handler ended its transaction "
                 "itself); outcome unknown",
                 s->name, ids, s->step);
    return TREATY_ESTATE;
}

static int action_once(struct pg_core_step *ps, const treaty_step_t *s, char *reason)
{
    struct pg_core *g = ps->g;
    char ids[TREATY_TXID_STRLEN];
    treaty_txid_format(&s->txid, ids);

    int rc = g->ops.step_begin(g->ctx, &s->txid, s->step, PG_STEP_ACTION);
    if (rc < 0 || rc == PG_ROW_HELD) {
        pg_core_report(g, reason);
        return TREATY_EPG;
    }
    if (rc == PG_ROW_EXISTS)
        return action_answer(g, s, ids, reason);

    /* The savepoint, and the purge horizon, read after the insert. */
    long long horizon = -1;
    if (g->ops.step_work_begin(g->ctx, true, &horizon) < 0) {
        pg_core_report(g, reason);
        return TREATY_EPG;
    }
    if (pg_core_before_horizon(&s->txid, horizon)) {
        /* No row, but rows of this step may have been purged: its
         * compensation may have come first and blocked it, and running it
         * now would be a hanging action. Refused, and nothing written: a
         * re-send is refused the same way. */
        g->ops.rollback(g->ctx);
        snprintf(reason, TREATY_REASON_MAX,
                 "step older than the barrier's purge horizon: refused (it may have been compensated already, its "
                 "barrier rows purged since)");
        pg_core_log(g, PCORE_NOTE, "action %s of %s step %u: %s", s->name, ids, s->step, reason);
        return TREATY_STEP_FAILED;
    }

    /* The business change, in the same transaction as the barrier row. */
    reason[0] = '\0';
    rc = ps->fn(ps->arg, g->ops.session(g->ctx), s, reason);
    reason[TREATY_REASON_MAX - 1] = '\0';
    int bad = check_fn_txn(g, "action", s, rc == TREATY_STEP_OK, reason);
    if (bad < 0) {
        g->ops.rollback(g->ctx);
        return bad;
    }
    if (rc == TREATY_STEP_OK) {
        rc = record_result(g, "action", s, PG_STEP_ACTION, true, NULL, reason);
        if (rc < 0)
            return rc;
        if (commit_step(g, reason) < 0)
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
        if (g->ops.step_undo_work(g->ctx) < 0) {
            pg_core_report(g, reason);
            return TREATY_EPG;
        }
        rc = record_result(g, "action", s, PG_STEP_ACTION, false, why, reason);
        if (rc < 0)
            return rc;
        if (commit_step(g, reason) < 0)
            return TREATY_EPG;
        /* Durable: the failure, its reason, and no business change. */
        snprintf(reason, TREATY_REASON_MAX, "%s", why);
        return TREATY_STEP_FAILED;
    }
    /* Transient (or not a step result): nothing stays, the next try starts afresh. */
    g->ops.rollback(g->ctx);
    return rc;
}

static int compensation_once(struct pg_core_step *ps, const treaty_step_t *s, char *reason)
{
    struct pg_core *g = ps->g;
    char ids[TREATY_TXID_STRLEN];
    treaty_txid_format(&s->txid, ids);

    int rc = g->ops.step_begin(g->ctx, &s->txid, s->step, PG_STEP_COMPENSATION);
    if (rc < 0 || rc == PG_ROW_HELD) {
        pg_core_report(g, reason);
        return TREATY_EPG;
    }
    if (rc == PG_ROW_EXISTS) {
        g->ops.rollback(g->ctx); /* compensated before: a duplicate */
        return TREATY_STEP_OK;
    }

    /* Block the action: if it never ran here, it never will. */
    rc = g->ops.step_block_action(g->ctx, &s->txid, s->step);
    if (rc < 0 || rc == PG_ROW_HELD) {
        pg_core_report(g, reason);
        return TREATY_EPG;
    }
    if (rc == PG_ROW_INSERTED) {
        /* No action row - unless the rows of this step were purged: then the
         * action may have run (its undo is due) or this compensation may
         * have run already. Neither a null compensation nor fn is safe; the
         * compensation stays transient (stuck, for an operator). */
        long long horizon = -1;
        if (g->ops.step_horizon(g->ctx, &horizon) < 0) {
            pg_core_report(g, reason);
            return TREATY_EPG;
        }
        if (pg_core_before_horizon(&s->txid, horizon)) {
            g->ops.rollback(g->ctx);
            snprintf(reason, TREATY_REASON_MAX,
                     "compensation older than the barrier's purge horizon, with its barrier rows gone: whether the "
                     "action ran cannot be told; not run (needs an operator)");
            pg_core_log(g, PCORE_ALERT, "compensation %s of %s step %u: %s", s->name, ids, s->step, reason);
            return TREATY_ESTATE;
        }
        /* Null compensation: nothing to undo. Durable with the commit; a
         * re-sent compensation then takes the duplicate path, and the late
         * action finds its row 'blocked'. */
        if (commit_step(g, reason) < 0)
            return TREATY_EPG;
        return TREATY_STEP_OK;
    }
    rc = g->ops.step_read_action(g->ctx, &s->txid, s->step, NULL);
    if (rc < 0) {
        pg_core_report(g, reason);
        return TREATY_EPG;
    }
    if (rc == PG_ACTION_GONE) {
        g->ops.rollback(g->ctx);
        pg_core_note(g, reason, "action barrier row of %s step %u vanished during its compensation", ids, s->step);
        return TREATY_ESTATE;
    }
    if (rc == PG_ACTION_FAILED || rc == PG_ACTION_BLOCKED) {
        /* Its change rolled back, or it never ran: nothing to undo. */
        if (commit_step(g, reason) < 0)
            return TREATY_EPG;
        return TREATY_STEP_OK;
    }
    /* 'ok', or no result (an earlier handler committed by itself: the
     * change may be there): undo it. */
    if (g->ops.step_work_begin(g->ctx, false, NULL) < 0) {
        pg_core_report(g, reason);
        return TREATY_EPG;
    }

    reason[0] = '\0';
    rc = ps->fn(ps->arg, g->ops.session(g->ctx), s, reason);
    reason[TREATY_REASON_MAX - 1] = '\0';
    int bad = check_fn_txn(g, "compensation", s, rc == TREATY_STEP_OK, reason);
    if (bad < 0) {
        g->ops.rollback(g->ctx);
        return bad;
    }
    if (rc != TREATY_STEP_OK) {
        g->ops.rollback(g->ctx); /* retried by the coordinator */
        return rc;
    }
    rc = record_result(g, "compensation", s, PG_STEP_COMPENSATION, true, NULL, reason);
    if (rc < 0)
        return rc;
    if (commit_step(g, reason) < 0)
        return TREATY_EPG;
    /* Durable: the undo and the compensation row. A re-sent compensation
     * after a crash here takes the duplicate path. */
    reason[0] = '\0';
    return TREATY_STEP_OK;
}

static int step(struct pg_core_step *ps, const treaty_step_t *s, char *reason, bool action)
{
    struct pg_core *g = ps->g;
    for (int attempt = 0;; attempt++) {
        reason[0] = '\0';
        if (g->ops.ready(g->ctx, true) < 0) {
            pg_core_report(g, reason);
            return TREATY_EPG;
        }
        int rc = action ? action_once(ps, s, reason) : compensation_once(ps, s, reason);
        /* A broken connection rolled back whatever was open, or committed it
         * (then the retry takes the duplicate path): retry once at once. */
        if (rc != TREATY_EPG || attempt > 0 || !g->ops.lost(g->ctx))
            return rc;
    }
}

int pg_core_action(void *arg, const treaty_step_t *s, char *reason)
{
    return step(arg, s, reason, true);
}

int pg_core_compensation(void *arg, const treaty_step_t *s, char *reason)
{
    return step(arg, s, reason, false);
}
