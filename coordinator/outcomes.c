/*
 * outcomes.c - see outcomes.h.
 */
#include "outcomes.h"

#include <stdlib.h>
#include <string.h>

#include "treaty.h"
#include "util.h"

void outcomes_init(struct outcomes *o, size_t capacity, const uint8_t key[TXMAP_KEY_BYTES])
{
    memset(o, 0, sizeof *o);
    txmap_init(&o->map, key);
    o->capacity = capacity > 0 ? capacity : 1;
    o->horizon_ms = INT64_MAX;
}

void outcomes_start(struct outcomes *o, int64_t start_ms, int64_t max_future_ms, int64_t newest_ms)
{
    o->horizon_ms = start_ms + max_future_ms;
    if (newest_ms >= -1 && newest_ms < o->horizon_ms)
        o->horizon_ms = newest_ms;
}

static void outcome_free(struct outcome *x)
{
    free(x->reason);
    free(x);
}

void outcomes_free(struct outcomes *o)
{
    while (o->head) {
        struct outcome *x = o->head;
        o->head = x->next;
        outcome_free(x);
    }
    o->tail = NULL;
    txmap_free(&o->map);
}

static void evict_oldest(struct outcomes *o)
{
    struct outcome *x = o->head;
    o->head = x->next;
    if (o->head == NULL)
        o->tail = NULL;
    txmap_del(&o->map, x->txid);
    /* From now on a txid made up to this one's time may be in the journal only. */
    long long t = treaty_txid_time_ms((const treaty_txid_t *)x->txid);
    if (t > o->horizon_ms)
        o->horizon_ms = t;
    o->evicted++;
    outcome_free(x);
}

void outcomes_put(struct outcomes *o, const uint8_t txid[16], int status, int failed_branch, const char *reason)
{
    if (txmap_get(&o->map, txid) != NULL)
        return;
    while (o->map.len >= o->capacity)
        evict_oldest(o);
    struct outcome *x = util_xcalloc(1, sizeof *x);
    memcpy(x->txid, txid, 16);
    x->status = (uint8_t)status;
    x->failed_branch = (int16_t)failed_branch;
    x->reason = util_xstrdup(reason);
    txmap_put(&o->map, txid, x);
    if (o->tail)
        o->tail->next = x;
    else
        o->head = x;
    o->tail = x;
}

const struct outcome *outcomes_get(const struct outcomes *o, const uint8_t txid[16])
{
    return txmap_get(&o->map, txid);
}

bool outcomes_may_be_in_journal(const struct outcomes *o, const uint8_t txid[16])
{
    long long t = treaty_txid_time_ms((const treaty_txid_t *)txid);
    return t < 0 || t <= o->horizon_ms;
}
