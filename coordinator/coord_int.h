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
#include "registry.h"
#include "timers.h"
#include "treaty.h"
#include "txmap.h"
#include "wire.h"

#define MAX_MSGS_PER_TURN 4096

/* The outcome of a finished transaction or saga, kept for retention_s so that
 * a resubmitted or queried txid gets the same answer. */
struct done {
    uint8_t txid[16];
    uint8_t status; /* TREATY_STATUS_COMMITTED / ABORTED / COMPLETED / COMPENSATED */
    int16_t failed_branch;
    long long finished_at; /* wall clock, seconds */
    char *reason;          /* owned, or NULL */
    struct done *next;     /* FIFO by finishing time */
};

struct durable_wait {
    uint64_t seq;
    uint8_t txid[16];
};

struct stats {
    uint64_t submitted, committed, aborted, malformed, refused, late_votes, inquiries, recovered;
    uint64_t sagas, sagas_completed, sagas_compensated, sagas_stuck, step_retries;
};

struct coord {
    const struct config *cfg;
    void *zctx;
    void *router;
    struct journal *journal;
    struct registry *reg;
    struct txmap inflight; /* txid -> struct txn (2PC) */
    struct txmap sagas;    /* txid -> struct saga */
    struct txmap finished; /* txid -> struct done */
    struct done *done_head, *done_tail;
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
char *coord_strdup(const char *s); /* aborts on OOM; NULL stays NULL */
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
void coord_remember_done(struct coord *c, const uint8_t *txid, enum treaty_status st, int failed_branch,
                         const char *reason, long long finished_at);
/* Common admission checks for a new transaction or saga: 0, or an ERROR was sent. */
int coord_admit(struct coord *c, const struct wire_in *in);
long long coord_wall_seconds(void);

#endif
