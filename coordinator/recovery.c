/*
 * recovery.c - rebuilding unfinished transactions and sagas from the
 * journal's records at start-up (core_recover_record, core_recover_done in
 * core.h).
 *
 * journal_scan delivers the records of every unfinished run (a txid's
 * records after its last END, or all of them when it has none), grouped by
 * txid and in append order. A run is rebuilt when its txid changes, and the
 * last one by core_recover_done:
 *
 *   COMMIT, no END        -> 2PC committing: COMMIT re-sent until every
 *                            branch ACKs (twopc_resume)
 *   ABORT, no END         -> 2PC aborting: ABORT re-sent likewise; an abort
 *                            with no services (decided before any PREPARE,
 *                            or presumed) finishes at its first timer
 *   SAGA (+ STEPs), no TURN, no END
 *                         -> forward from the first group not recorded done;
 *                            every step counted as started (saga_resume)
 *   SAGA + TURN, no END   -> compensating every step not recorded compensated
 *                            (a STEP "compensation" record also stands for a
 *                            compensation an operator gave up as done by hand)
 *   AUDIT                 -> nothing: an operator's resolve is carried out by
 *                            the record that follows it
 *   anything else         -> nothing to resume (a run with neither decision
 *                            nor definition cannot exist; an END means the
 *                            run finished: journal_scan delivers none, kept
 *                            as a guard)
 *
 * The resumed ones get their first timer at core_recover_done, now +
 * twopc.resend_initial_ms, when participants have had a moment to say HELLO
 * again: a 2PC transaction then re-sends its decision, a saga (re)starts its
 * current group.
 */
#include "core.h"
#include "core_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "journal.h"
#include "outcomes.h"
#include "saga.h"
#include "treaty.h"
#include "twopc.h"
#include "txhead.h"
#include "util.h"
#include "wire.h"

struct recovery {
    bool have; /* a run is being gathered */
    uint8_t txid[16];
    bool is_saga;
    bool ended; /* an END record (journal_scan delivers only unfinished runs; a guard) */
    /* 2PC: the decision record */
    bool commit, abort;
    unsigned nservices;
    char services[WIRE_MAX_BRANCHES][WIRE_NAME_MAX + 1];
    char detail[TREATY_REASON_MAX];
    int failed_branch;
    /* saga */
    uint8_t *def; /* the definition (owned until saga_resume takes it) */
    size_t def_len;
    bool turned;
    int failed_step;
    char reason[TREATY_REASON_MAX];
    uint8_t action_done[WIRE_MAX_STEPS];
    uint8_t comp_done[WIRE_MAX_STEPS];
    /* what was resumed, in journal order: timers are armed at core_recover_done */
    struct tx_head **resumed;
    size_t nresumed, cap;
};

void recovery_free(struct recovery *r)
{
    if (r == NULL)
        return;
    free(r->def);
    free(r->resumed);
    free(r);
}

static void run_reset(struct recovery *r)
{
    free(r->def);
    r->def = NULL;
    r->def_len = 0;
    r->have = r->is_saga = r->ended = false;
    r->commit = r->abort = false;
    r->nservices = 0;
    r->detail[0] = '\0';
    r->failed_branch = -1;
    r->turned = false;
    r->failed_step = -1;
    r->reason[0] = '\0';
    memset(r->action_done, 0, sizeof r->action_done);
    memset(r->comp_done, 0, sizeof r->comp_done);
}

/* Rebuilds the run gathered in r (if it needs resuming) and resets r. */
static void run_finish(struct core *c, struct recovery *r)
{
    struct tx_head *h = NULL;
    if (!r->have)
        return;
    if (r->ended || core_get(c, r->txid) != NULL) {
        /* finished: its outcome is read back by journal_lookup when asked */
    } else if (r->is_saga) {
        if (r->def != NULL) {
            struct saga *s = saga_resume(c, r->txid, &r->def, r->def_len, r->action_done, r->comp_done, r->turned,
                                         r->failed_step, r->reason);
            h = (struct tx_head *)s;
        }
    } else if (r->commit || r->abort) {
        const char(*services)[WIRE_NAME_MAX + 1] = (const char(*)[WIRE_NAME_MAX + 1]) r->services;
        struct txn *t = twopc_resume(c, r->txid, r->commit, r->nservices, services, r->detail, r->failed_branch);
        h = (struct tx_head *)t;
    }
    if (h != NULL) {
        if (r->nresumed == r->cap) {
            r->cap = r->cap ? r->cap * 2 : 64;
            r->resumed = util_xrealloc(r->resumed, r->cap * sizeof *r->resumed);
        }
        r->resumed[r->nresumed++] = h;
    }
    run_reset(r);
}

int core_recover_record(void *arg, const struct journal_rec *rec, long long finished_at_unix)
{
    struct core *c = arg;
    (void)finished_at_unix;
    if (c->rec == NULL) {
        c->rec = util_xcalloc(1, sizeof *c->rec);
        run_reset(c->rec);
    }
    struct recovery *r = c->rec;
    if (r->have && memcmp(r->txid, rec->txid, 16) != 0)
        run_finish(c, r);
    if (!r->have) {
        r->have = true;
        memcpy(r->txid, rec->txid, 16);
    }
    switch (rec->kind) {
    case JOURNAL_SAGA:
        r->is_saga = true;
        if (r->def == NULL && rec->data != NULL) {
            r->def = util_xmalloc(rec->data_len);
            memcpy(r->def, rec->data, rec->data_len);
            r->def_len = rec->data_len;
        }
        break;
    case JOURNAL_STEP:
        r->is_saga = true;
        if (rec->step >= 0 && rec->step < WIRE_MAX_STEPS) {
            if (rec->detail && strcmp(rec->detail, "compensation") == 0)
                r->comp_done[rec->step] = 1;
            else
                r->action_done[rec->step] = 1;
        }
        break;
    case JOURNAL_TURN:
        r->is_saga = true;
        r->turned = true;
        r->failed_step = rec->failed_branch;
        snprintf(r->reason, sizeof r->reason, "%s", rec->detail ? rec->detail : "");
        break;
    case JOURNAL_COMMIT:
    case JOURNAL_ABORT:
        if (rec->kind == JOURNAL_COMMIT)
            r->commit = true;
        else
            r->abort = true;
        if (rec->nservices <= WIRE_MAX_BRANCHES) {
            r->nservices = rec->nservices;
            for (unsigned i = 0; i < rec->nservices; i++)
                snprintf(r->services[i], sizeof r->services[i], "%s", rec->services[i]);
        }
        if (rec->detail)
            snprintf(r->detail, sizeof r->detail, "%s", rec->detail);
        r->failed_branch = rec->failed_branch;
        break;
    case JOURNAL_END:
        r->ended = true;
        break;
    case JOURNAL_AUDIT:
        /* An operator's resolve: what carries it out is the record after it
         * (ABORT, TURN, STEP), which recovery reads like any other. */
        break;
    }
    return 0;
}

void core_recover_newest(struct core *c, int64_t newest_ms)
{
    c->newest_ms = newest_ms < -1 ? -1 : newest_ms;
}

size_t core_recover_progress(const struct core *c)
{
    return c->rec != NULL ? c->rec->nresumed : 0;
}

size_t core_recover_done(struct core *c, struct core_time now)
{
    c->now = now;
    size_t resumed = 0;
    struct recovery *r = c->rec;
    if (r != NULL) {
        run_finish(c, r);
        /* First re-send, or the saga's (re)start, soon: participants are
         * reconnecting right now. */
        for (size_t i = 0; i < r->nresumed; i++)
            core_arm_timer(c, r->resumed[i], now.mono_ms + c->cfg->resend_initial_ms);
        resumed = r->nresumed;
        recovery_free(r);
        c->rec = NULL;
    }
    /* Serving starts now: sagas wait dead_after_ms for instances to say
     * HELLO before "no live instance" costs a try; the registry sweeps
     * every heartbeat; and a txid made after now + txid.max_future_s was
     * never seen by an earlier run (outcomes.h). */
    c->started_ms = now.mono_ms;
    c->next_sweep_ms = now.mono_ms + c->cfg->heartbeat_ms;
    outcomes_start(&c->done, now.wall_ms, (int64_t)c->cfg->txid_max_future_s * 1000, c->newest_ms);
    return resumed;
}
