/*
 * twopc.h - two-phase commit in the core (presumed abort): the entry points
 * the dispatcher (core.c) and recovery (recovery.c) call. The states and
 * their table are in txn.h; the rules and crash windows in twopc.c.
 *
 * t is what the core holds of the message's txid as a 2PC transaction, or
 * NULL when it holds none (the dispatcher looked it up once). in is borrowed
 * for the call.
 */
#ifndef TREATY_TWOPC_H
#define TREATY_TWOPC_H

#include <stdbool.h>
#include <stdint.h>

#include "wire.h"

struct core;
struct core_in;
struct txn;

/* SUBMIT of a txid that is not a saga here. */
void twopc_submit(struct core *c, const struct core_in *in, struct txn *t);
/* QUERY of a txid that is not a saga here. */
void twopc_query(struct core *c, const struct core_in *in, struct txn *t);
/* SAGA of a txid that is a 2PC transaction here. */
void twopc_saga_submitted(struct core *c, const struct core_in *in, struct txn *t);
/* VOTE, ACK, INQUIRE about a txid that is not a saga here. */
void twopc_vote(struct core *c, const struct core_in *in, struct txn *t);
void twopc_ack(struct core *c, const struct core_in *in, struct txn *t);
void twopc_inquire(struct core *c, const struct core_in *in, struct txn *t);
/* t's timer fired (the dispatcher checked it is t's current one). */
void twopc_on_timer(struct core *c, struct txn *t);
/* Journal seq, which t awaited, is durable. */
void twopc_on_durable(struct core *c, struct txn *t, uint64_t seq);

/* Recovery: a decision record (COMMIT when commit, else ABORT) without END.
 * Rebuilds the transaction, decided and durable, in the core's map, with no
 * timer yet (recovery arms it). services: the record's nservices names. */
struct txn *twopc_resume(struct core *c, const uint8_t txid[16], bool commit, unsigned nservices,
                         const char (*services)[WIRE_NAME_MAX + 1], const char *detail, int failed_branch);

/* An operator aborts t, which has no decision yet (TXN_PREPARING), exactly
 * as its prepare deadline would: the ABORT record (failed branch -1, reason)
 * is appended, forced, and nothing is sent or told before it is durable.
 * Returns its seq, or 0 when t is not preparing (nothing done). */
uint64_t twopc_admin_abort(struct core *c, struct txn *t, const char *reason);

#endif
