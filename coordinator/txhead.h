/*
 * txhead.h - the head every value of the core's transaction map starts with.
 *
 * The core keeps one map from txid to what it holds of that txid: a 2PC
 * transaction (struct txn), a saga (struct saga), or a journal lookup in
 * flight (struct lookup, with the requests parked on it). Each begins with a
 * struct tx_head, so one lookup by txid tells the dispatcher what the txid
 * is, and the timer heap's entries find their owner's due time there. A txid
 * is at most one of these at a time.
 */
#ifndef TREATY_TXHEAD_H
#define TREATY_TXHEAD_H

#include <stdint.h>

enum tx_kind {
    TX_2PC = 1,    /* struct txn (txn.h) */
    TX_SAGA = 2,   /* struct saga (saga.c) */
    TX_LOOKUP = 3, /* struct lookup (core_int.h): a journal lookup in flight, requests parked */
};

struct client_load;

struct tx_head {
    uint8_t txid[16];
    uint8_t kind;               /* enum tx_kind */
    int64_t timer_due_ms;       /* the one timer the owner expects (monotonic ms), -1 none; the heap
                                   may hold older entries of it, which no longer match and are skipped */
    struct client_load *client; /* the client whose share of limits.max_inflight_per_client this
                                   holds until it is answered (core.c), or NULL */
};

#endif
