/*
 * metrics_hist.h - a fixed-bucket histogram for Prometheus metrics, with no
 * I/O: the one histogram type of treatyd, used by the core (transaction
 * durations) and by the journal's writer thread (group sizes, commit times).
 *
 * Values are unsigned integers in the owner's unit (milliseconds,
 * microseconds, records); the exposition divides by a scale it is given
 * (metrics.c). Buckets are the finite upper bounds the owner gives at
 * init (ascending, at most METRICS_HIST_MAX), plus +Inf. An observation is
 * counted in the first bucket whose bound is >= the value: a bounded linear
 * scan, no allocation, no lock.
 *
 * Threads: ONE writer thread per histogram (metrics_hist_observe), any
 * number of reader threads (metrics_hist_read). The counters are atomics
 * updated with a relaxed load and store - not a read-modify-write, which
 * only one writer makes correct - so an observation costs what plain
 * increments cost (on x86-64, plain moves). A reader on another thread sees
 * every counter whole but may see an observation in its bucket before its
 * value is in the sum, or the reverse: the exposition's count is the sum of
 * the buckets it read, so count and buckets always agree.
 */
#ifndef TREATY_METRICS_HIST_H
#define TREATY_METRICS_HIST_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define METRICS_HIST_MAX 24 /* finite buckets at most */

struct metrics_hist {
    unsigned n;                                    /* finite buckets */
    uint64_t bound[METRICS_HIST_MAX];              /* their upper bounds, ascending */
    _Atomic uint64_t bucket[METRICS_HIST_MAX + 1]; /* observations per bucket (not cumulative); [n]: +Inf */
    _Atomic uint64_t sum;                          /* of the values observed */
};

/* A copy for rendering: cumulative counts, as the exposition wants them. */
struct metrics_hist_snap {
    unsigned n;
    uint64_t bound[METRICS_HIST_MAX];
    uint64_t cumulative[METRICS_HIST_MAX + 1]; /* [i]: observations <= bound[i]; [n]: all of them */
    uint64_t sum;
};

/* Sets h's buckets to the n (<= METRICS_HIST_MAX; more are ignored)
 * ascending bounds and zeroes it. Before any other thread sees h. */
static inline void metrics_hist_init(struct metrics_hist *h, const uint64_t *bounds, unsigned n)
{
    if (n > METRICS_HIST_MAX)
        n = METRICS_HIST_MAX;
    h->n = n;
    for (unsigned i = 0; i < METRICS_HIST_MAX; i++)
        h->bound[i] = i < n ? bounds[i] : UINT64_MAX;
    for (unsigned i = 0; i <= METRICS_HIST_MAX; i++)
        atomic_init(&h->bucket[i], 0);
    atomic_init(&h->sum, 0);
}

/* Counts one observation of v. Only h's one writer thread calls this. */
static inline void metrics_hist_observe(struct metrics_hist *h, uint64_t v)
{
    unsigned i = 0;
    while (i < h->n && v > h->bound[i])
        i++;
    atomic_store_explicit(&h->bucket[i], atomic_load_explicit(&h->bucket[i], memory_order_relaxed) + 1,
                          memory_order_relaxed);
    atomic_store_explicit(&h->sum, atomic_load_explicit(&h->sum, memory_order_relaxed) + v, memory_order_relaxed);
}

/* Copies h into *out with cumulative counts. Any thread. */
static inline void metrics_hist_read(const struct metrics_hist *h, struct metrics_hist_snap *out)
{
    uint64_t run = 0;
    out->n = h->n;
    for (unsigned i = 0; i <= h->n; i++) {
        if (i < h->n)
            out->bound[i] = h->bound[i];
        run += atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
        out->cumulative[i] = run;
    }
    out->sum = atomic_load_explicit(&h->sum, memory_order_relaxed);
}

#endif
