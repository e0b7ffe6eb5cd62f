/*
 * timers.c - see timers.h.
 */
#include "timers.h"

#include <stdlib.h>

#include "util.h"

void timers_init(struct timers *t)
{
    t->heap = NULL;
    t->len = t->cap = 0;
}

void timers_free(struct timers *t)
{
    free(t->heap);
    timers_init(t);
}

void timers_add(struct timers *t, int64_t due_ms, const uint8_t txid[16])
{
    if (t->len == t->cap) {
        size_t ncap = t->cap ? t->cap * 2 : 256;
        t->heap = util_xrealloc(t->heap, ncap * sizeof *t->heap);
        t->cap = ncap;
    }
    size_t i = t->len++;
    struct timer_entry e;
    e.due_ms = due_ms;
    for (int k = 0; k < 16; k++)
        e.txid[k] = txid[k];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (t->heap[p].due_ms <= due_ms)
            break;
        t->heap[i] = t->heap[p];
        i = p;
    }
    t->heap[i] = e;
}

int64_t timers_next(const struct timers *t)
{
    return t->len ? t->heap[0].due_ms : -1;
}

bool timers_pop_due(struct timers *t, int64_t now_ms, struct timer_entry *out)
{
    if (t->len == 0 || t->heap[0].due_ms > now_ms)
        return false;
    *out = t->heap[0];
    struct timer_entry last = t->heap[--t->len];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= t->len)
            break;
        if (c + 1 < t->len && t->heap[c + 1].due_ms < t->heap[c].due_ms)
            c++;
        if (last.due_ms <= t->heap[c].due_ms)
            break;
        t->heap[i] = t->heap[c];
        i = c;
    }
    if (t->len > 0)
        t->heap[i] = last;
    return true;
}
