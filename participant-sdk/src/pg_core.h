/*
 * pg_core.h - the Postgres participant's decisions: what a branch votes, when
 * a decision is acknowledged, what a saga step answers - over the database
 * operations of pg_ops.h, with no SQL, no I/O, no clock of its own.
 *
 * It serves a participant core (participant_core.h) as its 2PC handlers,
 * its saga step handlers (registered by name) and its extension (the
 * in-doubt sweep). treaty_pg_participant_new (pg_libpq.c) builds one over
 * libpq inside a real participant; pg_core_participant_new builds one over
 * any ops inside a bare participant core: the simulator's way in.
 *
 * Names: a branch's prepared transaction is named (gid)
 *     treaty:<txid as lowercase uuid>:<branch>
 * and the sweep INQUIREs every prepared transaction of that shape.
 *
 * 2PC branch (pg_branch.c)
 *   PREPARE
 *     a. branch_begin: the gid is prepared already -> YES again, work not
 *        run (a duplicate PREPARE; the branch is durable and undecided,
 *        exactly what YES promises).
 *     b. the 'prepare' row was there (committed) -> no vote: the branch
 *        committed before, the coordinator has moved on. Held by another
 *        transaction -> no vote (TREATY_ESTATE).
 *     c. row inserted, txid a UUIDv7 created before the purge horizon ->
 *        rollback, NO without running work: this may be a late duplicate of
 *        a branch that committed here and whose row was purged; running the
 *        work again could apply it twice.
 *     d. work(arg, conn, branch, reason) in the open transaction: NO ->
 *        rollback, NO; negative -> rollback, no vote; YES but the
 *        transaction failed or was ended by work -> rollback, NO; YES ->
 *        branch_prepare, and only after it returned, YES.
 *        (A branch rolled back before has no row, so a late PREPARE within
 *        the horizon runs the work again and votes YES; the coordinator,
 *        which decided abort long ago, answers ABORT.)
 *   COMMIT / ABORT -> branch_finish (COMMIT / ROLLBACK PREPARED gid):
 *     done -> ACK. No such gid -> branch_witness decides:
 *       COMMIT, committed:  a duplicate -> ACK.
 *       COMMIT, absent:     the branch did not commit and, with nothing
 *                           prepared, never will (e.g. a twin instance
 *                           sharing the database was told ABORT and rolled
 *                           it back) -> ALERT, no ACK: the coordinator keeps
 *                           re-sending, an operator must look. Except for a
 *                           txid created before the purge horizon: its row
 *                           may have been purged after it committed; nothing
 *                           can tell -> ACK with a warning.
 *       ABORT, absent:      never prepared here, or rolled back -> ACK.
 *       ABORT, committed:   the branch committed and the decision says
 *                           abort: atomicity broken elsewhere -> ALERT, no
 *                           ACK.
 *       either, held:       a twin is preparing the branch or has just
 *                           prepared it -> no ACK yet; the re-sent decision
 *                           finds the prepared transaction.
 *   In doubt: at the first WELCOME (and one after a silence) and then every
 *   sweep period, list_prepared (the periodic sweeps skip transactions
 *   younger than PCORE_SWEEP_MS, most likely still being decided) and
 *   INQUIRE each; the answer comes back as COMMIT or ABORT.
 *
 * Saga step (pg_saga.c), through the barrier: the step's row(s) and its
 * business change commit in one local transaction.
 *   Action of step k of saga t:
 *     step_begin('action'): the row exists -> answer from it, run nothing:
 *       'ok' -> OK; 'failed' -> FAILED with the stored reason; 'blocked' ->
 *       FAILED "compensated before the action arrived (hanging action
 *       refused)"; NULL -> TRANSIENT (an earlier handler ended its
 *       transaction itself: outcome unknown); gone meanwhile (a purge) ->
 *       TRANSIENT.
 *     inserted: step_work_begin(savepoint, horizon). t created before the
 *       horizon -> rollback, FAILED ("step older than the barrier's purge
 *       horizon"): its compensation may have come first and its rows been
 *       purged; nothing written, so a re-send is refused alike.
 *     fn(): OK -> step_record ok, step_commit -> OK. FAILED ->
 *       step_undo_work (the change goes, the row stays), step_record
 *       failed + reason, step_commit -> FAILED (so its compensation is a
 *       proper no-op). Negative or not a step result -> rollback (no row:
 *       the next try starts afresh) -> its value (TRANSIENT).
 *   Compensation of step k:
 *     step_begin('compensation'): exists -> OK (a duplicate, run nothing).
 *     step_block_action: inserted (the action never ran here, and now never
 *       will) -> t before the horizon: rollback, TRANSIENT with an ALERT
 *       (its rows may have been purged: whether the action ran cannot be
 *       told; the saga shows stuck for an operator); else step_commit -> OK
 *       (null compensation).
 *     the action row is there: 'failed' or 'blocked' -> step_commit -> OK
 *       (nothing to undo). NULL or 'ok' -> step_work_begin, fn(): OK ->
 *       step_record ok, step_commit -> OK; else rollback -> TRANSIENT.
 *   A step function must not end its transaction: txn_state after it
 *   catches a COMMIT or ROLLBACK, step_record (PG_RECORD_OTHER) catches
 *   "COMMIT; BEGIN"; either way the try is TRANSIENT.
 *
 * Every request first runs ops->ready() and, when an op fails because the
 * session was lost (ops->lost()), is retried once at once: every step above
 * is idempotent (a lost transaction is rolled back by the server, a
 * completed PREPARE or COMMIT is found again by its gid or its row).
 *
 * Crash windows (the participant, or its Postgres, killed)
 *   - before branch_prepare / step_commit / branch_finish returned: the
 *     local transaction rolls back; the coordinator re-sends or times out.
 *   - after branch_prepare, before the vote left (crash point
 *     participant.after_prepare): prepared but unvoted; the coordinator
 *     aborts on its prepare timeout (or re-sends PREPARE: answered YES by
 *     PREPARE a); after the restart the sweep INQUIREs, the ABORT rolls it
 *     back.
 *   - COMMIT received, before branch_finish (participant.before_commit):
 *     still prepared; the coordinator re-sends COMMIT, the sweep INQUIREs.
 *   - after branch_finish, before the ACK left (participant.after_commit):
 *     the re-sent decision finds no gid and the witness answers it (the row
 *     is committed for a commit, gone for an abort).
 *   - after step_commit, before the RESULT left: the re-sent STEP finds its
 *     row and answers as the first time (the compensation's row commits
 *     with the undo: undone once).
 *   - purge: before its commit nothing changed; after it, rows and horizon
 *     both changed.
 *
 * Ownership and threads: a pg core belongs to the participant core it
 * serves and runs on that core's thread; it keeps no global state.
 */
#ifndef TREATY_PG_CORE_H
#define TREATY_PG_CORE_H

#include <stdbool.h>
#include <stdint.h>

#include "participant_core.h"
#include "pg_ops.h"
#include "treaty.h"

#define PG_GID_MAX 64 /* "treaty:" + uuid + ":" + up to 5 digits, NUL included */

struct pg_core;

/*
 * The simulator's constructor: a participant core for service and instance
 * (as pcore_new) whose 2PC branches, saga steps (pg_core_on_step) and
 * in-doubt sweep are decided here over ops (copied) on the session ops_ctx,
 * with work(work_arg, conn, branch, reason) as the branch's work (NULL: a
 * saga-only participant, every PREPARE voted NO). From the call on the core
 * owns ops_ctx (ops->destroy releases it when the core is destroyed, or when
 * this call fails). Caller owns *out: pcore_destroy frees everything. The
 * barrier schema is the ops' business (ops->ready). 0, TREATY_EINVAL,
 * TREATY_ENOMEM.
 */
int pg_core_participant_new(const char *service, const char *instance, const struct pcore_io *io,
                            const struct pg_ops *ops, void *ops_ctx, treaty_pg_work_fn work, void *work_arg,
                            int64_t now, struct pcore **out);

/* Registers fn as the saga action (kind PCORE_ACTION) or compensation named
 * name of c, run through the barrier (above). 0, TREATY_EINVAL (c has no pg
 * core, bad name, fn NULL), TREATY_ENOMEM. Before the first event. */
int pg_core_on_step(struct pcore *c, enum pcore_step_kind kind, const char *name, treaty_pg_step_fn fn, void *arg);

/* treaty_pg_barrier_purge on c's pg core: ops->purge after ops->ready.
 * Returns the number deleted (>= 0), TREATY_EINVAL (c has no pg core),
 * TREATY_ESTATE (a transaction is open on the session: inside a handler),
 * TREATY_EPG (reported through c's log). */
long pg_core_purge(struct pcore *c, unsigned older_than_s);

/* ------------------------------------ pieces for pg_libpq.c's constructor */

/* A pg core over ops (copied) and ops_ctx (owned from the call on), not yet
 * serving a participant core. NULL on out-of-memory (ops_ctx released). */
struct pg_core *pg_core_new(const struct pg_ops *ops, void *ops_ctx, treaty_pg_work_fn work, void *work_arg);
/* The 2PC handlers to give pcore_new (or treaty_participant_new). */
void pg_core_handlers(struct pg_core *g, treaty_handlers_t *h);
/* Makes g c's extension (its sweep and its destruction): from then on c
 * owns g. c must have been made with g's handlers. */
void pg_core_install(struct pg_core *g, struct pcore *c);
/* Frees g and its ops_ctx; only before pg_core_install. Accepts NULL. */
void pg_core_free(struct pg_core *g);
/* c's pg core, or NULL when c is not a Postgres participant. */
struct pg_core *pg_core_of(const struct pcore *c);
/* The ops context g works on (borrowed). */
void *pg_core_ops_ctx(const struct pg_core *g);

/* gid of (id, branch) into gid[PG_GID_MAX]: only [0-9a-z:-], so it may be
 * written as a SQL literal between quotes. */
void pg_gid_make(const treaty_txid_t *id, unsigned branch, char *gid);
/* Parses a gid made by pg_gid_make. false for anything else. */
bool pg_gid_parse(const char *gid, treaty_txid_t *id, unsigned *branch);

#endif /* TREATY_PG_CORE_H */
