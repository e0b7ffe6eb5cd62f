/*
 * outcomes.h - the coordinator's bounded memory of finished transactions.
 *
 * A finished transaction's outcome (2PC committed/aborted, saga
 * completed/compensated) is kept here so that a resubmitted or queried txid
 * gets the same answer without a journal round trip. The cache holds at most
 * `capacity` outcomes; the oldest is evicted first (FIFO by insertion). An
 * outcome is put here only once the record that decides it is durable, so an
 * evicted outcome can always be read back from the journal (journal_lookup).
 *
 * Whether a txid the coordinator holds nowhere in memory needs a journal
 * lookup before it may be treated as new: outcomes_may_be_in_journal(). A
 * txid carries its creation time (UUIDv7). The previous incarnations of the
 * coordinator accepted no txid made later than their own clock plus
 * max_future_ms, so a txid made after start_ms + max_future_ms was never
 * seen before this process started - and, sharper, one made after the newest
 * txid the journal holds records of has none (outcomes_start's newest_ms,
 * from journal_newest_txid); and of the txids this process finished,
 * only the evicted ones are not in the cache: if the txid is younger than
 * every evicted one, the cache is complete for it. Txids without a time
 * (not UUIDv7) always need the lookup.
 *
 * Memory: about 100 bytes per outcome plus its reason text. Not thread-safe
 * (the coordinator's loop thread).
 */
#ifndef TREATY_OUTCOMES_H
#define TREATY_OUTCOMES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "txmap.h"

struct outcome {
    uint8_t txid[16];
    uint8_t status; /* TREATY_STATUS_COMMITTED / ABORTED / COMPLETED / COMPENSATED */
    int16_t failed_branch;
    char *reason;         /* owned, or NULL */
    struct outcome *next; /* FIFO by insertion */
};

struct outcomes {
    struct txmap map; /* txid -> struct outcome */
    struct outcome *head, *tail;
    size_t capacity;
    int64_t horizon_ms; /* txids made at or before this may be in the journal only */
    uint64_t evicted;
};

/* An empty cache of at most capacity (>= 1) outcomes, whose map hashes with
 * key (copied; see txmap.h). Until outcomes_start(), every txid may be in
 * the journal. */
void outcomes_init(struct outcomes *o, size_t capacity, const uint8_t key[TXMAP_KEY_BYTES]);
/* The process serves from start_ms on (wall clock, Unix ms): the horizon
 * becomes start_ms + max_future_ms, or newest_ms when that is known (>= -2
 * means known; -1: the journal holds no txid at all). Once, before the first
 * put. */
void outcomes_start(struct outcomes *o, int64_t start_ms, int64_t max_future_ms, int64_t newest_ms);
/* Frees every outcome. */
void outcomes_free(struct outcomes *o);

/* Remembers an outcome (the reason is copied; NULL for none). A txid already
 * held keeps its first outcome (outcomes are final). Evicts the oldest when
 * full. Aborts on out-of-memory (daemon). */
void outcomes_put(struct outcomes *o, const uint8_t txid[16], int status, int failed_branch, const char *reason);
/* The outcome of txid, borrowed until the next put, or NULL. */
const struct outcome *outcomes_get(const struct outcomes *o, const uint8_t txid[16]);
/* True when txid (not in the cache) may have an outcome in the journal. */
bool outcomes_may_be_in_journal(const struct outcomes *o, const uint8_t txid[16]);

#endif
