/*
 * util.h - small helpers shared by the daemon and the SDK: the clocks, a
 * seeded pseudo-random generator, and allocation that aborts on
 * out-of-memory.
 *
 *   clocks   util_mono_ms(): CLOCK_MONOTONIC, for deadlines, backoffs and
 *            heartbeats; util_wall_ms(): CLOCK_REALTIME in Unix milliseconds,
 *            for txid ages (txids carry wall time). A shell reads them; a
 *            core without I/O takes time as an argument and never calls them.
 *   PRNG     xoshiro256** (Blackman and Vigna), its state expanded from one
 *            64-bit seed by splitmix64: the same seed gives the same sequence
 *            on every platform. Not for secrets. A core owns one, seeded by
 *            its shell (from getrandom in treatyd, from the run's seed in the
 *            simulator), and draws backoff jitter and hash keys from it.
 *   memory   util_xmalloc() and friends abort the process with a message on
 *            out-of-memory: the daemon's rule (a restart and journal recovery
 *            are the designed way back). Never for the SDK, which must not
 *            abort its host process: it returns TREATY_ENOMEM instead.
 *
 * Thread safety: the clocks and allocators may be called from any thread; a
 * struct util_rng belongs to one thread at a time.
 */
#ifndef TREATY_UTIL_H
#define TREATY_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Milliseconds on CLOCK_MONOTONIC. */
int64_t util_mono_ms(void);
/* Milliseconds since the Unix epoch on CLOCK_REALTIME. */
int64_t util_wall_ms(void);
/* Microseconds on CLOCK_MONOTONIC (for measuring, not for deciding). */
int64_t util_mono_us(void);

struct util_rng {
    uint64_t s[4];
};

/* Seeds r from seed (any value, 0 included). */
void util_rng_seed(struct util_rng *r, uint64_t seed);
/* The next 64 random bits. */
uint64_t util_rng_next(struct util_rng *r);
/* A uniform integer in [0, n); 0 when n is 0. */
uint64_t util_rng_range(struct util_rng *r, uint64_t n);
/* ms with +-25% jitter: uniform in [ms - ms/4, ms + ms/4]; ms itself when
 * ms / 4 is 0. */
int util_rng_jitter(struct util_rng *r, int ms);
/* Fills buf with len random bytes. */
void util_rng_bytes(struct util_rng *r, uint8_t *buf, size_t len);
/* A fresh seed from the kernel (getrandom), or from the clocks and the pid
 * when that fails. For shells; a core takes its seed as an argument. */
uint64_t util_fresh_seed(void);

/* Daemon only (see above): never return NULL; abort with a message on
 * out-of-memory. A zero size allocates one byte. util_xstrdup(NULL) is NULL. */
void *util_xmalloc(size_t size);
/* Writes "treatyd: out of memory" and aborts. */
_Noreturn void util_out_of_memory(void);
void *util_xcalloc(size_t n, size_t size);
void *util_xrealloc(void *p, size_t size);
char *util_xstrdup(const char *s);

/* For functions that report a problem as a code and a text: formats the text
 * into err (when err is not NULL and errlen > 0, cut to fit) and returns rc. */
__attribute__((format(printf, 4, 5))) int util_errf(int rc, char *err, size_t errlen, const char *fmt, ...);

#endif
