/*
 * coord_int.h - the coordinator's shared internals, for coord.c (event loop,
 * 2PC) and saga.c (sagas). Not a public contract: loop thread only.
 */
#ifndef TREATY_COORD_INT_H
#define TREATY_COORD_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "journal.h"
#include "outcomes.h"
#include "registry.h"
#include "timers.h"
#include "treaty.h"
#include "txmap.h"
#include "wire.h"

#define MAX_MSGS_PER_TURN 4096

/* A request held until the journal says what it knows of its txid
 * (outcomes_may_be_in_journal): a copy of the message, replayed through the
 * dispatcher when the lookup answers. */
struct parked {
    struct parked *next;
    uint8_t rid[WIRE_ROUTING_ID_MAX];
    size_t rid_len;
    struct wire_hdr hdr;
    size_t nframes;
    size_t *lens; /* nframes lengths, then the bytes in data */
    uint8_t *data;
};

/* One journal lookup in flight and the requests waiting for it. */
struct lookup {
    uint8_t txid[16];
    struct parked *head, *tail;
};

struct durable_wait {
    uint64_t seq;
    uint8_t txid[16];
};

struct stats {
    uint64_t submitted, committed, aborted, malformed, refused, late_votes, inquiries, recovered;
    uint64_t presumed_aborts, lookups, lookup_errors;
    uint64_t sagas, sagas_completed, sagas_compensated, sagas_stuck, step_retries;
};

struct coord {
    const struct config *cfg;
    void *zctx;
    void *router;
    struct journal *journal;
    struct registry *reg;
    struct txmap inflight;  /* txid -> struct txn (2PC) */
    struct txmap sagas;     /* txid -> struct saga */
    struct txmap lookups;   /* txid -> struct lookup (a journal lookup in flight) */
    struct outcomes done;   /* finished outcomes, bounded */
    struct wire_in *replay; /* a parked request being handled again */
    struct timers timers;
    struct durable_wait *waits; /* ring of txids awaiting a forced record */
    size_t wait_head, wait_len, wait_cap;
    uint64_t durable_seq;
    struct wire_in *in;
    bool stopping;
    int64_t started_ms;      /* monotonic time the loop started serving */
    int64_t stats_at_ms;     /* when log_stats last ran (0: never) */
    uint64_t stats_write_us; /* journal write time it saw then */
    struct stats st;
};

const char *coord_fmt_txid(const uint8_t *txid, char *buf);
void coord_send(struct coord *c, const uint8_t *rid, size_t rid_len, uint8_t type, const uint8_t *txid, unsigned branch,
                unsigned attempt, unsigned code, const struct wire_frame *frames, size_t n);
void coord_reply_error(struct coord *c, const uint8_t *rid, size_t rid_len, const uint8_t *txid, int err,
                       const char *fmt, ...) __attribute__((format(printf, 6, 7)));
void coord_reply_outcome(struct coord *c, const uint8_t *rid, size_t rid_len, const uint8_t *txid,
                         enum treaty_status st, int failed_branch, const char *reason);
/* Backoff with +-25% jitter. */
int coord_jitter(int ms);
/* Schedules a timer for txid at due_ms (the owner keeps due_ms to recognise it). */
void coord_add_timer(struct coord *c, const uint8_t txid[16], int64_t due_ms);
/* Calls saga_on_durable / the 2PC handler once journal seq is durable. */
void coord_expect_durable(struct coord *c, const uint8_t txid[16], uint64_t seq);
/* Remembers the outcome of a finished transaction (its deciding record is durable). */
void coord_remember_done(struct coord *c, const uint8_t *txid, enum treaty_status st, int failed_branch,
                         const char *reason);
/* Refuses (ERROR reply) a txid that may not start a new transaction or be
 * presumed aborted now: not time-ordered (TREATY_EINVAL), made more than
 * txid.max_future_s ahead of our clock (TREATY_EINVAL) or more than
 * txid.max_age_s ago (TREATY_EEXPIRED). 0 when it may. */
int coord_check_new_txid(struct coord *c, const struct wire_in *in);
/* Common admission checks for a new transaction or saga: 0, or an ERROR was sent. */
int coord_admit(struct coord *c, const struct wire_in *in);

#endif
