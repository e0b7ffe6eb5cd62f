/*
 * txn.h - a 2PC transaction in the coordinator: its branches, its state and
 * the one table of legal state transitions.
 *
 * Lifecycle (presumed abort):
 *
 *   (new) --SUBMIT--> PREPARING --all YES--> LOGGING_COMMIT --record durable--> COMMITTING --all ACK--> DONE
 *                         |                                                                       ^
 *                         +--NO / timeout / no instance--> ABORTING --all ACK------------------------+
 *   (recovery) ----------------------------------------------> COMMITTING (COMMIT record, no END)
 *   (recovery) --------------------> ABORTING (ABORT record, no END)
 *   (presumed) --INQUIRE/QUERY/late YES of an unknown txid--> ABORTING (no branches; ABORT record)
 *
 * A decision is sent to participants, and told to anyone, only once its
 * record is durable (decision_durable): an ABORT sent earlier could be lost
 * with the record in a crash, the txid then run again and commit, and a late
 * ABORT roll back a branch another instance of the service had just voted
 * YES for.
 */
#ifndef TREATY_TXN_H
#define TREATY_TXN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "txhead.h"
#include "wire.h"

enum txn_state {
    TXN_NEW = 0,        /* allocated, nothing sent yet */
    TXN_PREPARING,      /* PREPARE sent to every branch; collecting votes until the deadline */
    TXN_LOGGING_COMMIT, /* every branch voted YES; COMMIT record appended, not yet durable */
    TXN_COMMITTING,     /* COMMIT record durable: client told; COMMIT sent, awaiting ACKs */
    TXN_ABORTING,       /* decided abort: ABORT record appended; ABORT sent, awaiting ACKs */
    TXN_DONE,           /* every branch acknowledged; END appended; about to be freed */
    TXN_STATE_COUNT_
};

const char *txn_state_name(enum txn_state s);
/* True when from -> to is in the transition table. */
bool txn_transition_ok(enum txn_state from, enum txn_state to);

#define BRANCH_RID_MAX 32 /* a participant's routing id is at most this long (core.c refuses longer ones) */
#define SENT_TO_KEY_LEN 32

/* The instance a request of a branch or saga step went to last: where its
 * decision goes, and the one peer whose answer (VOTE, ACK, RESULT) counts
 * (core_from in core_int.h). */
struct sent_to {
    uint8_t rid[BRANCH_RID_MAX]; /* its routing id (rid_len 0: none yet, or not one we can send to) */
    uint8_t rid_len;
    bool keyed;                   /* authenticated: answers count from key, whatever the connection */
    uint8_t key[SENT_TO_KEY_LEN]; /* its CURVE public key when keyed; else answers count from rid */
};

enum branch_vote { VOTE_NONE = 0, VOTE_YES = 1, VOTE_NO = 2 };

struct branch {
    char service[WIRE_NAME_MAX + 1];
    struct sent_to to; /* the instance PREPARE, then the decision, went to */
    uint8_t vote;      /* enum branch_vote */
    bool acked;        /* decision applied at the participant */
    bool prepared;     /* PREPARE was sent (so a decision must reach it) */
    uint16_t attempt;
};

struct waiter {
    uint8_t rid[WIRE_ROUTING_ID_MAX];
    uint8_t rid_len;
    uint16_t branch; /* inquirers: the branch they asked about */
    struct waiter *next;
};

struct txn {
    struct tx_head h; /* txid, kind TX_2PC, the one timer this txn expects (deadline or re-send) */
    enum txn_state state;
    bool decision_durable; /* COMMIT/ABORT record durable: the client may be told */
    bool presumed;         /* an abort recorded for a txid nobody submitted (no branches) */
    uint16_t nbranches;
    uint16_t nacked;
    uint16_t nvotes;
    int failed_branch;        /* -1 when none */
    uint64_t record_seq;      /* journal seq of the decision record */
    int resend_ms;            /* current decision re-send backoff */
    int64_t submitted_ms;     /* when the SUBMIT that started it came (monotonic), for the duration histogram;
                                 -1: not submitted to this process (recovered, presumed), or counted already */
    char *reason;             /* abort reason (owned) or NULL */
    struct waiter *waiters;   /* clients to tell the outcome */
    struct waiter *inquirers; /* participants to tell the decision (INQUIRE or late YES before it was durable) */
    struct branch branches[]; /* nbranches */
};

/* Allocates a txn in TXN_NEW with nbranches zeroed branches and no timer.
 * Aborts on OOM. */
struct txn *txn_new(const uint8_t txid[16], unsigned nbranches);
void txn_free(struct txn *t);

/* Moves t to state `to`; an illegal transition is a programmer error: logged
 * loudly with the txid and aborts the daemon (recovery restores a sane state). */
void txn_set_state(struct txn *t, enum txn_state to);

/* Adds a client to tell the outcome (deduplicated by routing id). */
void txn_add_waiter(struct txn *t, const uint8_t *rid, size_t rid_len);
/* Adds a participant to tell the decision on branch (deduplicated). */
void txn_add_inquirer(struct txn *t, const uint8_t *rid, size_t rid_len, unsigned branch);

/* The same for any list of waiting clients (sagas use it too). */
void waiter_add(struct waiter **list, const uint8_t *rid, size_t rid_len);
void waiter_free_all(struct waiter **list);

#endif
