/*
 * pg_core_int.h - what pg_core.c, pg_branch.c and pg_saga.c share: the pg
 * core's struct and its reporting helpers. Not part of any API.
 */
#ifndef TREATY_PG_CORE_INT_H
#define TREATY_PG_CORE_INT_H

#include <stdbool.h>

#include "participant_core.h"
#include "pg_core.h"
#include "pg_ops.h"
#include "treaty.h"

struct pg_core {
    struct pcore *pc; /* the participant core served (NULL until pg_core_install) */
    struct pg_ops ops;
    void *ctx;              /* the session, owned (ops.destroy) */
    treaty_pg_work_fn work; /* NULL: saga steps only, every PREPARE is voted NO */
    void *arg;
};

/* Logs text through the participant core (nothing before install). */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
void pg_core_log(struct pg_core *g, enum pcore_level level, const char *fmt, ...);

/* Logs a text and, when reason is not NULL, copies it there
 * (reason[TREATY_REASON_MAX]: a step's reason). */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
void pg_core_note(struct pg_core *g, char *reason, const char *fmt, ...);

/* After an op failed: logs ops.errtext() and copies it to reason (when not
 * NULL). */
void pg_core_report(struct pg_core *g, char *reason);

/* True when rows of id may have been purged: a UUIDv7 made before the
 * horizon (Unix ms; -1: nothing was ever purged). */
bool pg_core_before_horizon(const treaty_txid_t *id, long long horizon_ms);

/* The 2PC handlers and the sweep (pg_branch.c). */
int pg_core_prepare(void *arg, const treaty_branch_t *b, char *reason);
int pg_core_commit(void *arg, const treaty_branch_t *b);
int pg_core_abort(void *arg, const treaty_branch_t *b);
void pg_core_sweep(void *arg, struct pcore *c, bool first);

/* A saga step handler's arg (pg_saga.c): the user's fn through the barrier. */
struct pg_core_step {
    struct pg_core *g;
    treaty_pg_step_fn fn;
    void *arg;
};
int pg_core_action(void *arg, const treaty_step_t *s, char *reason);
int pg_core_compensation(void *arg, const treaty_step_t *s, char *reason);

#endif /* TREATY_PG_CORE_INT_H */
