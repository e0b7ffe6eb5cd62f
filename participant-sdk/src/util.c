/*
 * util.c - see util.h.
 */
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

int64_t util_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t util_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

uint64_t util_fresh_seed(void)
{
    uint64_t seed;
    if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed)
        seed = (uint64_t)util_wall_ms() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)util_mono_us();
    return seed;
}

int64_t util_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------ PRNG */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

void util_rng_seed(struct util_rng *r, uint64_t seed)
{
    /* splitmix64 never yields four zero words, the one state xoshiro must avoid */
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

uint64_t util_rng_next(struct util_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t util_rng_range(struct util_rng *r, uint64_t n)
{
    if (n == 0)
        return 0;
    /* Rejection of the top partial interval keeps it uniform. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do
        x = util_rng_next(r);
    while (x >= limit);
    return x % n;
}

int util_rng_jitter(struct util_rng *r, int ms)
{
    int span = ms / 4;
    if (span <= 0)
        return ms;
    return ms - span + (int)util_rng_range(r, (uint64_t)(2 * span + 1));
}

void util_rng_bytes(struct util_rng *r, uint8_t *buf, size_t len)
{
    while (len > 0) {
        uint64_t x = util_rng_next(r);
        size_t n = len < sizeof x ? len : sizeof x;
        for (size_t i = 0; i < n; i++)
            buf[i] = (uint8_t)(x >> (8 * i));
        buf += n;
        len -= n;
    }
}

/* ------------------------------------------------------------ memory */

static _Noreturn void out_of_memory(size_t size)
{
    fprintf(stderr, "treatyd: out of memory (allocating %zu bytes)\n", size);
    abort();
}

_Noreturn void util_out_of_memory(void)
{
    fprintf(stderr, "treatyd: out of memory\n");
    abort();
}

void *util_xmalloc(size_t size)
{
    void *p = malloc(size ? size : 1);
    if (p == NULL)
        out_of_memory(size);
    return p;
}

void *util_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL)
        out_of_memory(n * size);
    return p;
}

void *util_xrealloc(void *p, size_t size)
{
    void *q = realloc(p, size ? size : 1);
    if (q == NULL)
        out_of_memory(size);
    return q;
}

char *util_xstrdup(const char *s)
{
    if (s == NULL)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = util_xmalloc(n);
    memcpy(d, s, n);
    return d;
}

int util_errf(int rc, char *err, size_t errlen, const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}
