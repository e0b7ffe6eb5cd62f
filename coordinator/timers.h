/*
 * timers.h - a binary min-heap of (due time, txid) for the coordinator loop.
 * Entries are never removed early: the owner stores the due time it expects
 * and ignores a popped entry that no longer matches (lazy cancellation).
 * Times are milliseconds (the owner's clock: monotonic). Not thread-safe.
 */
#ifndef TREATY_TIMERS_H
#define TREATY_TIMERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct timer_entry {
    int64_t due_ms;
    uint8_t txid[16];
};

struct timers {
    struct timer_entry *heap;
    size_t len, cap;
};

void timers_init(struct timers *t);
void timers_free(struct timers *t);
void timers_add(struct timers *t, int64_t due_ms, const uint8_t txid[16]);
/* Earliest due time, or -1 when empty. */
int64_t timers_next(const struct timers *t);
/* Pops the earliest entry due at or before now_ms into *out. */
bool timers_pop_due(struct timers *t, int64_t now_ms, struct timer_entry *out);

#endif
