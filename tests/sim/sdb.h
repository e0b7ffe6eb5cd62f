/*
 * sdb.h - a simulated PostgreSQL database, as much of it as Treaty's
 * participants use: business rows (a key and a number), the barrier table
 * treaty_barrier (txid, branch, op, result, reason, created), the purge
 * horizon, an applied log the checks read (which effect of which txid was
 * committed, how often), sessions with one open transaction each, savepoints,
 * PREPARE TRANSACTION / COMMIT PREPARED / ROLLBACK PREPARED, and
 * pg_prepared_xacts.
 *
 * Semantics kept from PostgreSQL (READ COMMITTED, one statement at a time):
 *   - a session sees committed data and its own transaction's changes;
 *   - a row or barrier key written by another open or prepared transaction
 *     is locked: writing it fails with SDB_HELD (PostgreSQL would wait, and
 *     Treaty's participants set a lock_timeout: 55P03);
 *   - commit applies every change at once; a prepared transaction survives
 *     a restart of the database and keeps its locks until COMMIT / ROLLBACK
 *     PREPARED; an open transaction is lost in a restart;
 *   - while the database is down every call fails with SDB_DOWN, and a
 *     session's transaction open before the restart is gone.
 */
#ifndef TREATY_SIM_SDB_H
#define TREATY_SIM_SDB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sim.h"

enum sdb_rc {
    SDB_OK = 0,
    SDB_DOWN = -1,      /* the database is down or restarted under the session */
    SDB_HELD = -2,      /* locked by another transaction (lock_timeout) */
    SDB_NOT_FOUND = -3, /* no such prepared transaction (42704) */
    SDB_EXISTS = -4,    /* the key exists already (ON CONFLICT DO NOTHING did nothing) */
    SDB_NO_TXN = -5,    /* no open transaction in this session */
    SDB_DUP_GID = -6    /* PREPARE TRANSACTION with a gid in use */
};

struct sdb_barrier {
    uint8_t txid[16];
    int branch;
    char op[16];     /* "prepare", "action", "compensation" */
    char result[16]; /* "" (NULL), "ok", "failed", "blocked" */
    char reason[128];
    int64_t created_ms;
};

/* A session: one per participant instance (its connection). */
int sdb_session(struct sdb *d);
/* The session reconnects (after a restart of the database): usable again,
 * nothing open. */
void sdb_reconnect(struct sdb *d, int session);

enum sdb_rc sdb_begin(struct sdb *d, int session);
enum sdb_rc sdb_commit(struct world *w, struct sdb *d, int session);
enum sdb_rc sdb_rollback(struct sdb *d, int session);
bool sdb_in_txn(const struct sdb *d, int session);
enum sdb_rc sdb_savepoint(struct sdb *d, int session);
enum sdb_rc sdb_rollback_to_savepoint(struct sdb *d, int session);
/* PREPARE TRANSACTION gid: the open transaction becomes durable and undecided. */
enum sdb_rc sdb_prepare(struct world *w, struct sdb *d, int session, const char *gid);
enum sdb_rc sdb_finish_prepared(struct world *w, struct sdb *d, const char *gid, bool commit);
bool sdb_is_prepared(const struct sdb *d, const char *gid);
/* gids of prepared transactions starting with prefix, prepared at or before
 * max_prepared_ms; returns how many were written to out (up to cap). */
size_t sdb_list_prepared(const struct sdb *d, const char *prefix, int64_t max_prepared_ms, char (*out)[80], size_t cap);

/* Business rows. */
enum sdb_rc sdb_get(struct sdb *d, int session, const char *key, int64_t *value, bool *found);
enum sdb_rc sdb_set(struct sdb *d, int session, const char *key, int64_t value);
/* The applied log: effect (txid, step, op) in the session's transaction. */
enum sdb_rc sdb_applied(struct sdb *d, int session, const uint8_t txid[16], int step, const char *op);

/* The barrier table. insert: SDB_OK (inserted in the open transaction),
 * SDB_EXISTS (a committed row, or one of this transaction), SDB_HELD. */
enum sdb_rc sdb_barrier_insert(struct world *w, struct sdb *d, int session, const struct sdb_barrier *b);
/* The row visible to the session (committed, or its own), or SDB_NOT_FOUND. */
enum sdb_rc sdb_barrier_get(struct sdb *d, int session, const uint8_t txid[16], int branch, const char *op,
                            struct sdb_barrier *out);
/* Whether another transaction (open or prepared) holds the key. */
bool sdb_barrier_held(const struct sdb *d, int session, const uint8_t txid[16], int branch, const char *op);
enum sdb_rc sdb_barrier_set_result(struct sdb *d, int session, const uint8_t txid[16], int branch, const char *op,
                                   const char *result, const char *reason);
/* Purge: rows older than horizon_ms go (committed), the horizon moves up. */
enum sdb_rc sdb_purge(struct world *w, struct sdb *d, int64_t horizon_ms);
int64_t sdb_horizon(const struct sdb *d);

/* Sets a committed row directly (the world's starting data). */
void sdb_seed(struct sdb *d, const char *key, int64_t value);
/* For the checks: committed value of a row (0 when absent), and how often the
 * effect (txid, step, op) was committed. */
int64_t sdb_value(const struct sdb *d, const char *key);
int sdb_applied_count(const struct sdb *d, const uint8_t txid[16], int step, const char *op);
/* When (txid, step, op) was first committed, on the world's commit clock
 * shared by every database (0: never). */
uint64_t sdb_applied_order(const struct sdb *d, const uint8_t txid[16], int step, const char *op);
const char *sdb_name(const struct sdb *d);
bool sdb_up_now(const struct sdb *d);

#endif
