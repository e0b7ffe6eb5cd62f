/*
 * journal_util.h - the journal's own small helpers: out-of-memory, the
 * monotonic clock, a PRNG. Not journal logic.
 *
 * TO BE REPLACED by participant-sdk/src/util.h (clock, out-of-memory, PRNG),
 * which is being written: when it lands, the files of journal/ include that
 * instead and this header goes. Until then these are the only copies inside
 * journal/; do not add journal logic here, and do not grow them elsewhere.
 *
 * Static inline (out_of_memory static): each was a static function of the
 * one journal.c, and every file of journal/ compiles them as it did.
 * Any thread: none keeps state but rng_next's, which is the caller's *s.
 */
#ifndef TREATY_JOURNAL_UTIL_H
#define TREATY_JOURNAL_UTIL_H

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

/* The daemon's answer to out-of-memory: log and abort (journal.h). Static,
 * not inline: the compiler keeps it out of line, as it did in journal.c. */
static _Noreturn void out_of_memory(void)
{
    log_error("journal: out of memory");
    abort();
}

/* calloc that aborts on failure; never returns NULL, not even for 0 bytes. */
static inline void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        out_of_memory();
    return p;
}

/* realloc that aborts on failure. */
static inline void *xrealloc(void *p, size_t size)
{
    p = realloc(p, size ? size : 1);
    if (!p)
        out_of_memory();
    return p;
}

/* strdup that aborts on failure. */
static inline char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = xcalloc(1, n);
    memcpy(p, s, n);
    return p;
}

/* The monotonic clock in microseconds. */
static inline int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* The monotonic clock in milliseconds. */
static inline int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ms as a poll timeout: 0 .. INT_MAX. */
static inline int clamp_ms(int64_t ms)
{
    return ms < 0 ? 0 : ms > INT_MAX ? INT_MAX : (int)ms;
}

/* xorshift64*: the next number of the generator whose state is *s (0 is
 * taken as a fixed non-zero seed). For jitter and fallback ids, not crypto. */
static inline uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s ? *s : 0x9E3779B97F4A7C15u;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Du;
}

/* A seed from an address (distinct per generator) and the wall clock. */
static inline uint64_t rng_seed(const void *p)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)(uintptr_t)p ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec;
}

#endif /* TREATY_JOURNAL_UTIL_H */
