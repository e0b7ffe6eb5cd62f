/*
 * check.h - what the world's workload did and what each client was told,
 * and the invariants checked after every run (check.c).
 *
 * Invariants (docs/testing.md):
 *   - atomicity: a 2PC transfer's debit and credit were each committed
 *     exactly as often as the other, and at most once;
 *   - told = happened: a client told committed sees both effects, told
 *     aborted neither; two answers about one txid never differ; a txid told
 *     aborted by presumption (a query of a txid nobody submitted) never
 *     commits or runs;
 *   - sagas: completed means every action applied exactly once and nothing
 *     compensated; compensated means every applied action compensated
 *     exactly once and no compensation without its action; a saga left in
 *     any other state is incomplete;
 *   - money: the banks hold what they started with; stock and wallets match
 *     the sagas' effects;
 *   - liveness: after the faults stop, the world becomes quiescent (every
 *     client has its answers, no prepared transaction, no unfinished journal
 *     transaction) within the bound.
 */
#ifndef TREATY_SIM_CHECK_H
#define TREATY_SIM_CHECK_H

#include <stdbool.h>
#include <stdint.h>

#include "sim.h"

enum wtx_kind { WTX_2PC, WTX_SAGA, WTX_PHANTOM };

#define SIM_ACCOUNTS 8
#define SIM_ACCOUNT_START 1000
#define SIM_STOCK_START 1000
#define SIM_WALLET_START 1000

struct wtx {
    uint8_t txid[16];
    enum wtx_kind kind;
    int client; /* node id */
    /* 2PC: amount from account from_acct at bank-a to to_acct at bank-b
     * (negative: the other way) */
    int from_acct, to_acct;
    int64_t amount;
    /* saga: create_order(order), reserve(qty of item), charge(customer:price);
     * parallel: reserve and charge in one group; fail: charge exceeds the wallet */
    int order, customer, qty;
    int64_t price;
    bool parallel;
    /* what happened at the client */
    int told;        /* the final status it was told (treaty_status), 0 none */
    bool gave_up;    /* refused for good (TREATY_EEXPIRED): the client cannot learn it */
    bool started;    /* sent at least once */
    bool late;       /* resubmitted again past the journal's retention once answered */
    bool late_done;  /* ... and that resubmission was answered */
    int64_t told_at; /* simulated ms of the first final answer */
    int submits, queries, answers;
};

struct check {
    struct wtx *tx;
    size_t ntx, cap;
};

struct check *check_new(void);
void check_free(struct check *c);
struct wtx *check_add(struct check *c, enum wtx_kind kind);
struct wtx *check_find(struct check *c, const uint8_t txid[16]);
/* A final answer reached a client: records it, a violation if it differs
 * from an earlier one. */
void check_told(struct world *w, struct wtx *t, int status, const char *reason);
/* Every invariant, against the databases and the journal (after quiescence). */
void check_world(struct world *w);

#endif
