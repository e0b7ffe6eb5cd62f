/*
 * client_core.h - the client's protocol core: requests in flight (SUBMIT,
 * SAGA, QUERY) by txid, their re-sends and deadlines, the replies that
 * complete them, and the completion of asynchronous ones by callback - with
 * no I/O, no clock and no randomness of its own.
 *
 * A shell drives it: client.c (a ZeroMQ DEALER socket, the blocking and
 * asynchronous public calls, the monotonic clock) and the deterministic
 * simulator (tests/sim: a simulated network and clock). The shell starts
 * requests, hands the core every reply from the coordinator and tells it
 * when time passes; the core sends through struct ccore_io. Time comes in as
 * now (monotonic milliseconds, any origin, never decreasing); the re-send
 * jitter comes from a PRNG seeded by ccore_new's seed. Given the same seed
 * and the same events, the core makes the same calls.
 *
 * A request's life
 *   1. start (ccore_submit / ccore_run_saga / ccore_query at now): the
 *      request is encoded once, copied into the core, and sent with attempt
 *      0. Its deadline is now + timeout_ms.
 *   2. waiting: at its re-send time (now + CCORE_RESEND_MIN_MS + a jitter
 *      below CCORE_RESEND_JITTER_MS after every send, whether the send
 *      succeeded or not) the same request is sent again with attempt + 1.
 *      The coordinator takes a re-sent SUBMIT or SAGA of a txid it knows as a
 *      duplicate, so re-sending is idempotent; it carries a request across a
 *      coordinator restart or a lost message.
 *   3. answered: OUTCOME or ERROR with the request's txid completes every
 *      request in flight of that txid (rc 0) - except OUTCOME PENDING, which
 *      completes a QUERY only: a SUBMIT or SAGA keeps waiting for the
 *      decision. OUTCOME STUCK completes a SAGA (final for its client; an
 *      operator is needed). ERROR sets outcome.error (-code) and the reason.
 *   4. timed out: at its deadline without an answer the request completes
 *      with TREATY_STATUS_UNKNOWN and rc TREATY_ETIMEDOUT ("no answer from
 *      the coordinator within N ms"). The transaction may still commit: the
 *      caller asks again by txid or resubmits the same txid. Or failed
 *      early, the same way but with the shell's error (ccore_fail_all: the
 *      coordinator refused the security handshake).
 *   5. delivered: an asynchronous request (cb given) waits, completed, in a
 *      FIFO until ccore_run_callbacks() runs its callback and frees it; a
 *      blocking one (cb NULL) until its owner takes it (ccore_take). A
 *      callback never runs inside ccore_on_message / ccore_on_tick / a start.
 *
 * Replies with no request in flight for their txid are counted (stale);
 * other message types and undecodable replies are counted (malformed) and
 * logged. Nothing is durable: a crash of the client loses only the waiting;
 * whatever the coordinator decided stays decided and can be queried.
 *
 * Cost with n requests in flight: a reply finds its requests through a hash
 * table by txid, the request due first is the top of a binary heap, and a
 * request is one allocation: O(1) or O(log n) per event, not O(n).
 *
 * Ownership: pointers passed in are borrowed for the call (a request copies
 * what it sends); the core owns its requests. Thread safety: none, one
 * thread drives a core. No global state: any number of cores live in one
 * process.
 */
#ifndef TREATY_CLIENT_CORE_H
#define TREATY_CLIENT_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "treaty.h"
#include "wire.h"

#define CCORE_RESEND_MIN_MS 500    /* a request is re-sent this long after a send ... */
#define CCORE_RESEND_JITTER_MS 500 /* ... plus [0, this) ms of jitter */
#define CCORE_LOG_MAX 256          /* longest text given to io->log, NUL included */

struct ccore;
struct ccore_req; /* one request in flight */

/* Everything the core does to the world. */
struct ccore_io {
    void *ctx;
    /* Sends one message to the coordinator (frames borrowed for the call).
     * 0 when handed to the transport (it may still be lost); a negative
     * TREATY_E* when it was dropped at once (then *why may point to a static
     * text saying why, else it stays NULL). A failed send is not an error
     * for the core: the request is re-sent at its next re-send time. */
    int (*send)(void *ctx, const struct wire_hdr *h, const struct wire_frame *frames, size_t nframes, const char **why);
    /* One line of text for the handle's errmsg (borrowed for the call). May
     * be NULL. */
    void (*log)(void *ctx, const char *text);
};

/* A core acting through io (copied), its jitter drawn from a PRNG seeded by
 * seed (any value). NULL on out-of-memory. */
struct ccore *ccore_new(const struct ccore_io *io, uint64_t seed);
/* Frees the core and every request in it, done or not, without running a
 * callback (outstanding blocking requests' pointers become invalid). Accepts
 * NULL and *c NULL; sets *c to NULL. */
void ccore_destroy(struct ccore **c);

/*
 * Start a request at now and send it (attempt 0):
 *   ccore_submit:   SUBMIT of t (>= 1 branch). The coordinator's prepare
 *                   deadline is timeout_ms less a margin (a quarter of it, at
 *                   most 1 s, at least 1 ms left) so that an abort caused by
 *                   that deadline still reaches the client within timeout_ms.
 *   ccore_run_saga: SAGA of s (>= 1 step), with s's deadline.
 *   ccore_query:    QUERY of id.
 * t and s are copied: they may be destroyed at once. timeout_ms > 0.
 * With cb: asynchronous; cb(arg, outcome) runs once, from
 * ccore_run_callbacks, and the core frees the request; *out may be NULL.
 * Without cb: blocking; *out (required) is the request, which stays the
 * caller's to ccore_take whether or not it completed.
 * Returns 0, TREATY_EINVAL (bad arguments; "transaction has no branches" /
 * "saga has no steps" are logged), TREATY_ENOMEM.
 */
int ccore_submit(struct ccore *c, const treaty_txn_t *t, int timeout_ms, treaty_outcome_fn cb, void *arg, int64_t now,
                 struct ccore_req **out);
int ccore_run_saga(struct ccore *c, const treaty_saga_t *s, int timeout_ms, treaty_outcome_fn cb, void *arg,
                   int64_t now, struct ccore_req **out);
int ccore_query(struct ccore *c, const treaty_txid_t *id, int timeout_ms, treaty_outcome_fn cb, void *arg, int64_t now,
                struct ccore_req **out);

/* A decoded reply from the coordinator (borrowed for the call). Completes
 * the requests it answers; runs no callback. */
void ccore_on_message(struct ccore *c, const struct wire_msg *m);
/* A reply that did not decode (err: wire_decode's error): counted, logged. */
void ccore_on_malformed(struct ccore *c, int err);
/* Time passed: re-sends what is due, times out what passed its deadline
 * (runs no callback). */
void ccore_on_tick(struct ccore *c, int64_t now);
/* When ccore_on_tick has work next (the same clock as now), or -1 when no
 * request is waiting. */
int64_t ccore_next_tick(const struct ccore *c);

/* The coordinator cannot be reached for a reason that waiting will not
 * mend (the shell saw it refuse the security handshake): completes every
 * request still waiting, with TREATY_STATUS_UNKNOWN, outcome.error = err,
 * reason (borrowed; truncated to TREATY_REASON_MAX) and rc err, as a timeout
 * would (runs no callback). Returns the number completed. */
int ccore_fail_all(struct ccore *c, int err, const char *reason);

/* True when a completed asynchronous request waits for its callback. */
bool ccore_has_callbacks(const struct ccore *c);
/* Runs the callbacks of completed asynchronous requests in completion order
 * (the outcome is borrowed for the callback) and frees them, until none is
 * left - also those that complete while it runs. Each request is out of the
 * core before its callback runs, so a callback may start requests, and even
 * drive the core (a blocking call inside it). Returns the number run. */
int ccore_run_callbacks(struct ccore *c);

/* True once the blocking request r completed (answered or timed out). */
bool ccore_req_done(const struct ccore_req *r);
/*
 * Ends the blocking request *r, done or not: frees it and sets *r to NULL.
 * When it was done, copies its outcome to *out (when out is not NULL) and
 * returns its rc: 0 (answered: see out->status, out->error),
 * TREATY_ETIMEDOUT (out->status UNKNOWN) or ccore_fail_all's err. When it was not done it is
 * abandoned: returns TREATY_ESTATE, *out untouched.
 */
int ccore_take(struct ccore *c, struct ccore_req **r, treaty_outcome_t *out);

/* Replies that answered no request in flight; replies dropped as
 * undecodable or of an unexpected type. */
uint64_t ccore_stale(const struct ccore *c);
uint64_t ccore_malformed(const struct ccore *c);

#endif /* TREATY_CLIENT_CORE_H */
