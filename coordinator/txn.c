/*
 * txn.c - see txn.h.
 */
#include "txn.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "treaty.h"
#include "util.h"

static const char *const state_names[TXN_STATE_COUNT_] = {
    "new", "preparing", "logging-commit", "committing", "aborting", "done",
};

/* legal[from][to] */
static const bool legal[TXN_STATE_COUNT_][TXN_STATE_COUNT_] = {
    [TXN_NEW] = {[TXN_PREPARING] = true, [TXN_ABORTING] = true, [TXN_COMMITTING] = true},
    [TXN_PREPARING] = {[TXN_LOGGING_COMMIT] = true, [TXN_ABORTING] = true},
    [TXN_LOGGING_COMMIT] = {[TXN_COMMITTING] = true},
    [TXN_COMMITTING] = {[TXN_DONE] = true},
    [TXN_ABORTING] = {[TXN_DONE] = true},
    [TXN_DONE] = {0},
};

const char *txn_state_name(enum txn_state s)
{
    if ((unsigned)s >= TXN_STATE_COUNT_)
        return "?";
    return state_names[s];
}

bool txn_transition_ok(enum txn_state from, enum txn_state to)
{
    if ((unsigned)from >= TXN_STATE_COUNT_ || (unsigned)to >= TXN_STATE_COUNT_)
        return false;
    return legal[from][to];
}

struct txn *txn_new(const uint8_t txid[16], unsigned nbranches)
{
    struct txn *t = util_xcalloc(1, sizeof *t + nbranches * sizeof t->branches[0]);
    memcpy(t->h.txid, txid, 16);
    t->h.kind = TX_2PC;
    t->h.timer_due_ms = -1;
    t->nbranches = (uint16_t)nbranches;
    t->failed_branch = -1;
    t->submitted_ms = -1;
    return t;
}

void txn_free(struct txn *t)
{
    if (t == NULL)
        return;
    waiter_free_all(&t->waiters);
    waiter_free_all(&t->inquirers);
    free(t->reason);
    free(t);
}

void txn_set_state(struct txn *t, enum txn_state to)
{
    if (!txn_transition_ok(t->state, to)) {
        log_txn(LOG_LEVEL_ERROR, t->h.txid, "txn: illegal state transition %s -> %s", txn_state_name(t->state),
                txn_state_name(to));
        abort();
    }
    t->state = to;
}

void waiter_add(struct waiter **list, const uint8_t *rid, size_t rid_len)
{
    for (struct waiter *w = *list; w; w = w->next)
        if (w->rid_len == rid_len && memcmp(w->rid, rid, rid_len) == 0)
            return;
    struct waiter *w = util_xcalloc(1, sizeof *w);
    memcpy(w->rid, rid, rid_len);
    w->rid_len = (uint8_t)rid_len;
    w->next = *list;
    *list = w;
}

void waiter_free_all(struct waiter **list)
{
    struct waiter *w = *list;
    while (w) {
        struct waiter *n = w->next;
        free(w);
        w = n;
    }
    *list = NULL;
}

void txn_add_waiter(struct txn *t, const uint8_t *rid, size_t rid_len)
{
    waiter_add(&t->waiters, rid, rid_len);
}

void txn_add_inquirer(struct txn *t, const uint8_t *rid, size_t rid_len, unsigned branch)
{
    for (struct waiter *w = t->inquirers; w; w = w->next)
        if (w->branch == branch && w->rid_len == rid_len && memcmp(w->rid, rid, rid_len) == 0)
            return;
    struct waiter *w = util_xcalloc(1, sizeof *w);
    memcpy(w->rid, rid, rid_len);
    w->rid_len = (uint8_t)rid_len;
    w->branch = (uint16_t)branch;
    w->next = t->inquirers;
    t->inquirers = w;
}
