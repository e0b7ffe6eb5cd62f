/*
 * pg_ops.h - the operations on a participant's own PostgreSQL database that
 * the Postgres participant's decision core (pg_core.h) needs, and exactly
 * what each must do. Two implementations: pg_libpq.c over libpq (the SQL in
 * that file), and the simulator's in-memory one (tests/sim). The fake in
 * tests/test_sdk_core.c is a third, small one, and a worked example.
 *
 * The model
 *   A database holds:
 *   - business data, changed only by user code (work and step functions)
 *     inside a transaction the core opened;
 *   - barrier rows, keyed by (txid, branch, op), op one of
 *       'prepare'       a 2PC branch: inserted in the branch's own local
 *                       transaction, so once that transaction ended the row
 *                       exists (committed) iff the branch committed;
 *       'action'        a saga step's action, with result NULL (the action
 *                       runs now), 'ok', 'failed' (+ reason: its business
 *                       change was rolled back, the row stays), or 'blocked'
 *                       (its compensation came first);
 *       'compensation'  a saga step's compensation, result NULL or 'ok';
 *   - prepared transactions, named by a gid treaty:<txid>:<branch> (unique
 *     in the whole cluster), each holding its barrier row and its business
 *     changes, uncommitted, until COMMIT PREPARED or ROLLBACK PREPARED
 *     from any session. They survive crashes of every process, Postgres'
 *     included;
 *   - the purge horizon (Unix ms, or none): barrier rows of a UUIDv7 txid
 *     created before it may have been deleted by a purge. It never moves
 *     back.
 *
 *   An ops context is one session (one connection) on that database, used
 *   by one thread. At most one local transaction is open in it at a time:
 *   the ops say which open and which end it. Several sessions - other
 *   instances of the same service, sharing the database, each with its own
 *   participant - work on the same rows concurrently, with PostgreSQL's
 *   READ COMMITTED semantics:
 *   - a row inserted by a transaction that has not ended (open, or
 *     prepared) is invisible to other sessions' reads, but an insert of the
 *     same key by another session waits for that transaction: when it
 *     commits, the insert finds the row (exists); when it rolls back, the
 *     insert goes in. The wait is bounded by a lock timeout (libpq: 5 s for
 *     the barrier inserts of branch_begin, step_begin and step_block_action,
 *     1 s for branch_witness); past it the result is HELD and the op's
 *     transaction is rolled back. A simulator may answer HELD at once
 *     whenever another transaction holds the key.
 *   - a statement sees what was committed when it began; a later statement
 *     of the same transaction sees more. The horizon is always read in a
 *     statement after the barrier insert, so it includes every purge that
 *     committed before that insert stopped waiting (a purge deleting the
 *     row the insert collides with makes the insert wait for it).
 *   - user code may take row locks of its own (lock timeouts there are the
 *     user's errors).
 *
 * Results and errors
 *   Every int-returning op returns a value >= 0 from its own enum below, or
 *   TREATY_EPG: the database failed the op (a statement error, the
 *   connection). Then errtext() says what failed (one line, "<what>:
 *   <message> (SQLSTATE x)"), and - unless said otherwise - the op has
 *   ended the transaction it was in, with a rollback. lost() then tells
 *   whether the session itself was lost (the core retries the whole
 *   request once at once when it was, every request being idempotent).
 *   The ops log nothing: the core reports errtext() where it matters.
 *
 * Durability: nothing an op does is durable until the op that commits it
 * returned success: branch_prepare (the branch, prepared), branch_finish
 * (the decision), step_commit (the step's barrier row(s) with the business
 * change), purge (the deletion with the new horizon). A crash before then
 * (of the participant, or of Postgres) rolls the open transaction back. A
 * crash after success, before the caller learned it, leaves the change in
 * place: that is what the barrier rows and gids are for, and every crash
 * window is named in pg_core.h.
 *
 * Ownership: pointers passed in are borrowed for the call; texts returned
 * are borrowed until the next op on the same context.
 */
#ifndef TREATY_PG_OPS_H
#define TREATY_PG_OPS_H

#include <stdbool.h>

#include "treaty.h"

/* How the session's transaction stands (txn_state). */
enum pg_txn {
    PG_TXN_IDLE = 0,   /* no transaction open */
    PG_TXN_OPEN = 1,   /* a transaction is open and usable */
    PG_TXN_FAILED = 2, /* a transaction is open, but a statement in it failed: it can only roll back */
    PG_TXN_LOST = 3    /* the connection is gone (whatever was open is rolled back by the server) */
};

/* branch_begin */
enum pg_begin {
    PG_BEGIN_OPEN = 0,      /* no such prepared transaction; the 'prepare' row inserted; the transaction stays open */
    PG_BEGIN_PREPARED = 1,  /* the gid is prepared already: nothing written, nothing open */
    PG_BEGIN_COMMITTED = 2, /* not prepared, but the 'prepare' row exists (committed): nothing open */
    PG_BEGIN_HELD = 3       /* another transaction holds the row past the lock timeout: nothing open */
};

/* branch_finish */
enum pg_finish {
    PG_FINISH_DONE = 0,  /* COMMIT / ROLLBACK PREPARED done: durable */
    PG_FINISH_NO_GID = 1 /* no prepared transaction of that gid (SQLSTATE 42704); nothing changed */
};

/* branch_witness: what the 'prepare' barrier row of a branch says */
enum pg_witness {
    PG_WITNESS_COMMITTED = 0, /* the row is committed: the branch committed here */
    PG_WITNESS_ABSENT = 1,    /* no row: never prepared here, rolled back, or (before the horizon) purged */
    PG_WITNESS_HELD = 2       /* another transaction (open or prepared) holds it past the lock timeout */
};

/* branch_prepare and step_commit */
enum pg_end {
    PG_END_DONE = 0,       /* the transaction is prepared / committed: durable */
    PG_END_ROLLED_BACK = 1 /* the server ended it with a rollback instead (it was in a failed state) */
};

/* step_begin and step_block_action: the insert of a barrier row */
enum pg_row {
    PG_ROW_INSERTED = 0, /* inserted (result NULL, or 'blocked' for step_block_action); transaction open */
    PG_ROW_EXISTS = 1,   /* the row is there (committed); nothing inserted; transaction open */
    PG_ROW_HELD = 2      /* another transaction holds it past the lock timeout: rolled back, errtext says so */
};

/* step_read_action: the result column of the 'action' row */
enum pg_action {
    PG_ACTION_NONE = 0,    /* the row, result NULL (an earlier handler ended its transaction itself) */
    PG_ACTION_OK = 1,      /* 'ok' */
    PG_ACTION_FAILED = 2,  /* 'failed' (its reason given back) */
    PG_ACTION_BLOCKED = 3, /* 'blocked' */
    PG_ACTION_GONE = 4     /* no row at all (deleted since: a purge); transaction still open */
};

/* step_record */
enum pg_record {
    PG_RECORD_DONE = 0, /* the row's result set, in this transaction */
    PG_RECORD_OTHER = 1 /* the row was not updated: this is not the transaction that inserted it (user code
                           ended that one and began another); transaction still open */
};

/* Barrier row kinds of saga steps. */
enum pg_step_op { PG_STEP_ACTION = 0, PG_STEP_COMPENSATION = 1 };

struct pg_ops {
    /* ---------------------------------------------------------- session */

    /* Makes the session usable before each request: reconnects when the
     * connection is gone (no more often than a backoff allows: TREATY_EPG
     * meanwhile), rolls back any transaction left open, makes sure the
     * barrier schema exists. saga: also the part saga steps need (it may
     * lag while an upgrade waits for a lock held by prepared transactions:
     * TREATY_EPG, errtext says so). 0 or TREATY_EPG. Leaves no transaction
     * open. */
    int (*ready)(void *ctx, bool saga);
    /* After an op failed: true when the session itself was lost (the next
     * ready() then reconnects at once). No side effect otherwise. */
    bool (*lost)(void *ctx);
    /* The text of the last failure (never NULL). */
    const char *(*errtext)(void *ctx);
    /* How the session's transaction stands now. No statement is run. */
    enum pg_txn (*txn_state)(void *ctx);
    /* Ends any open transaction with a rollback; best effort, never fails
     * (a lost session is dealt with by the next ready()). */
    void (*rollback)(void *ctx);
    /* What user code receives as its conn (libpq: the PGconn), valid while
     * the session is: a simulator returns its own session object converted
     * to struct pg_conn * (an incomplete type the SDK never dereferences)
     * and converts it back in its work and step functions. */
    struct pg_conn *(*session)(void *ctx);
    /* A named crash window (fault.h: participant.after_prepare,
     * participant.before_commit, participant.after_commit). The real build
     * may SIGKILL itself here (TREATY_CRASH_AT); a simulator may crash the
     * participant here: then it must make every later op fail and every
     * send be lost until the core returns, and discard the participant's
     * cores. May be NULL. */
    void (*crash_point)(void *ctx, const char *name);
    /* Releases ctx when the core is destroyed. May be NULL. */
    void (*destroy)(void *ctx);

    /* -------------------------------------------------------- 2PC branch */

    /* Begins a branch's local transaction in one step: is gid (treaty:
     * <txid>:<branch>) a prepared transaction of this database? If not,
     * insert the 'prepare' row (txid, branch) (waiting for a holder, see
     * above) and read the purge horizon after it. *horizon_ms: the horizon
     * (Unix ms, -1: none), set with PG_BEGIN_OPEN only. See enum pg_begin;
     * on TREATY_EPG nothing is open. */
    int (*branch_begin)(void *ctx, const treaty_txid_t *txid, unsigned branch, const char *gid, long long *horizon_ms);
    /* PREPARE TRANSACTION gid for the open transaction: on PG_END_DONE the
     * branch (its 'prepare' row and the work) is durable, undecided, holds
     * its locks and no longer belongs to this session. PG_END_ROLLED_BACK or
     * TREATY_EPG (e.g. too many prepared transactions): not prepared, rolled
     * back. Either way nothing is open afterwards. */
    int (*branch_prepare)(void *ctx, const char *gid);
    /* COMMIT PREPARED gid (commit) or ROLLBACK PREPARED gid, outside any
     * transaction; works on a transaction another session prepared.
     * PG_FINISH_DONE: durable. PG_FINISH_NO_GID: no such prepared
     * transaction (decided before, never prepared, or prepared by another
     * session that has not finished preparing it: its row is held). */
    int (*branch_finish)(void *ctx, const char *gid, bool commit);
    /* Judges the 'prepare' row of (txid, branch) without changing anything:
     * committed, absent, or held by another transaction (a twin instance
     * preparing the branch, or its prepared transaction) - a committed-only
     * read cannot tell absent from held, so libpq probes with an insert it
     * rolls back. *horizon_ms: the purge horizon read after the probe
     * (-1: none), set unless TREATY_EPG. Nothing open afterwards. */
    int (*branch_witness)(void *ctx, const treaty_txid_t *txid, unsigned branch, long long *horizon_ms);
    /* Lists the gids of this database's prepared transactions whose name
     * starts with "treaty:" and that were prepared at least min_age_ms ago
     * (by the database's clock), oldest first: each(arg, gid) once per gid
     * (gid borrowed for the call), after the list was read in full - so each
     * may send messages, but must not call ops. 0 or TREATY_EPG (then each
     * was not called). Outside any transaction. */
    int (*list_prepared)(void *ctx, int min_age_ms, void (*each)(void *arg, const char *gid), void *arg);

    /* --------------------------------------------------------- saga steps */

    /* Begins a step's local transaction and inserts its op row (txid, step,
     * op, result NULL), waiting for a holder: see enum pg_row. On
     * PG_ROW_HELD and TREATY_EPG nothing is open. */
    int (*step_begin)(void *ctx, const treaty_txid_t *txid, unsigned step, enum pg_step_op op);
    /* In the open transaction, reads the 'action' row of (txid, step): its
     * result (enum pg_action) and, when reason is not NULL, its stored
     * reason into reason[TREATY_REASON_MAX] ("" when none; untouched
     * unless a row was found). On PG_ACTION_GONE and on success the
     * transaction stays open; on TREATY_EPG it was rolled back. */
    int (*step_read_action)(void *ctx, const treaty_txid_t *txid, unsigned step, char *reason);
    /* In the open transaction, inserts the 'action' row of (txid, step) with
     * result 'blocked' unless it exists: PG_ROW_INSERTED (blocked now: the
     * action never ran here and never will), PG_ROW_EXISTS (the action's
     * row was there), PG_ROW_HELD / TREATY_EPG (rolled back). */
    int (*step_block_action)(void *ctx, const treaty_txid_t *txid, unsigned step);
    /* In the open transaction, readies it for the user's step function: the
     * waits of user code are no longer bounded by the barrier's lock
     * timeout; with savepoint, a savepoint that step_undo_work rolls back to
     * (the business change goes, the barrier row stays); with horizon_ms
     * not NULL, the purge horizon read now (-1: none). 0 or TREATY_EPG
     * (rolled back). */
    int (*step_work_begin)(void *ctx, bool savepoint, long long *horizon_ms);
    /* In the open transaction, reads the purge horizon (-1: none). 0 or
     * TREATY_EPG (rolled back). */
    int (*step_horizon)(void *ctx, long long *horizon_ms);
    /* Rolls the open transaction back to step_work_begin's savepoint. 0 or
     * TREATY_EPG (the savepoint is gone: user code ended the transaction;
     * rolled back). */
    int (*step_undo_work)(void *ctx);
    /* Sets the result of the op row (txid, step, op) that step_begin
     * inserted in this same transaction: ok ('ok') or not ('failed', with
     * reason). See enum pg_record; TREATY_EPG: rolled back. */
    int (*step_record)(void *ctx, const treaty_txid_t *txid, unsigned step, enum pg_step_op op, bool ok,
                       const char *reason);
    /* Commits the open transaction: PG_END_DONE (durable),
     * PG_END_ROLLED_BACK (it had failed), TREATY_EPG (fate unknown if the
     * connection broke during the commit: the barrier makes a retry safe).
     * Nothing open afterwards. */
    int (*step_commit)(void *ctx);

    /* ------------------------------------------------------------- purge */

    /* In one transaction of its own: moves the purge horizon to now -
     * older_than_s (the database's clock; never back) and deletes the
     * barrier rows written before that cut whose txid is a UUIDv7 created
     * before it (rows held by unfinished transactions stay). Returns the
     * number deleted (>= 0) or TREATY_EPG. Nothing open afterwards. */
    long (*purge)(void *ctx, unsigned older_than_s);
};

#endif /* TREATY_PG_OPS_H */
