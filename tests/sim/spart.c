/*
 * spart.c - a simulated participant process: the SDK's real participant
 * core (participant-sdk/src/participant_core.h) and the real Postgres
 * participant's decisions (pg_core.h), over the simulated network and clock
 * and a simulated database (sdb.c) through pg_ops.h, with the example
 * services' business logic:
 *   bank-a, bank-b  2PC branches "account:delta" (a debit the account cannot
 *                   cover votes NO "insufficient funds");
 *   orders          create_order / cancel_order;
 *   inventory       reserve / release ("qty"; FAILED "out of stock");
 *   payment         charge / refund ("customer:price"; FAILED "insufficient
 *                   funds").
 * Every business effect also writes an applied row (txid, step, op) in the
 * same local transaction: the checks count them.
 *
 * Several instances of a service share its database (bank-a: a1, a2;
 * inventory: i1, i2), each with its own session. A participant may be
 * killed at the pg core's named crash points (participant.after_prepare,
 * before_commit, after_commit) as well as at any event; housekeeping purges
 * the barrier now and then.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "participant_core.h"
#include "pg_core.h"
#include "pg_ops.h"
#include "sdb.h"
#include "sim.h"
#include "treaty.h"

struct spart;

/* One database session (pg_ops' ctx). */
struct psess {
    struct world *w;
    struct spart *owner;
    struct sdb *db;
    int session;
    bool lost;
    char err[256];
};

struct spart {
    struct world *w;
    struct node *n;
    struct pcore *core;
    struct psess *sess; /* owned by the core (ops->destroy) */
};

/* ----------------------------------------------------------------- ops */

static int fail(struct psess *s, enum sdb_rc rc, const char *what)
{
    s->lost = rc == SDB_DOWN;
    snprintf(s->err, sizeof s->err, "%s: %s", what,
             rc == SDB_DOWN   ? "the database is down (SQLSTATE 57P01)"
             : rc == SDB_HELD ? "lock timeout (SQLSTATE 55P03)"
                              : "failed");
    sdb_rollback(s->db, s->session);
    return TREATY_EPG;
}

static bool dead(struct psess *s)
{
    if (s->owner->n->dying) {
        snprintf(s->err, sizeof s->err, "the process is being killed");
        s->lost = true;
        return true;
    }
    return false;
}

static long long horizon(struct psess *s)
{
    int64_t h = sdb_horizon(s->db);
    return h > 0 ? h : -1;
}

static int op_ready(void *ctx, bool saga)
{
    (void)saga;
    struct psess *s = ctx;
    if (dead(s))
        return TREATY_EPG;
    if (!sdb_up_now(s->db))
        return fail(s, SDB_DOWN, "reconnect to the database failed");
    /* reconnects when the database restarted since; no transaction open */
    sdb_reconnect(s->db, s->session);
    s->lost = false;
    return 0;
}

static bool op_lost(void *ctx)
{
    return ((struct psess *)ctx)->lost;
}

static const char *op_errtext(void *ctx)
{
    return ((struct psess *)ctx)->err;
}

static enum pg_txn op_txn_state(void *ctx)
{
    struct psess *s = ctx;
    if (!sdb_up_now(s->db))
        return PG_TXN_LOST;
    return sdb_in_txn(s->db, s->session) ? PG_TXN_OPEN : PG_TXN_IDLE;
}

static void op_rollback(void *ctx)
{
    struct psess *s = ctx;
    sdb_rollback(s->db, s->session);
}

static struct pg_conn *op_session(void *ctx)
{
    return (struct pg_conn *)ctx;
}

static void op_crash_point(void *ctx, const char *name)
{
    struct psess *s = ctx;
    struct world *w = s->w;
    if (!w->healed && !s->owner->n->dying && sim_rng_chance(&w->rng, w->p.crash_rate > 0 ? 0.05 : 0)) {
        sim_trace(w, "%s: killed at %s", s->owner->n->name, name);
        s->owner->n->dying = true;
    }
}

static void op_destroy(void *ctx)
{
    struct psess *s = ctx;
    sdb_rollback(s->db, s->session); /* the connection closes: what was open rolls back */
    free(s);
}

static int op_branch_begin(void *ctx, const treaty_txid_t *txid, unsigned branch, const char *gid, long long *hz)
{
    struct psess *s = ctx;
    if (dead(s))
        return TREATY_EPG;
    if (!sdb_up_now(s->db))
        return fail(s, SDB_DOWN, "BEGIN and insert barrier row");
    if (sdb_is_prepared(s->db, gid))
        return PG_BEGIN_PREPARED;
    enum sdb_rc rc = sdb_begin(s->db, s->session);
    if (rc != SDB_OK)
        return fail(s, rc, "BEGIN");
    struct sdb_barrier b = {.branch = (int)branch};
    memcpy(b.txid, txid->b, 16);
    snprintf(b.op, sizeof b.op, "prepare");
    rc = sdb_barrier_insert(s->w, s->db, s->session, &b);
    if (rc == SDB_EXISTS) {
        sdb_rollback(s->db, s->session);
        return PG_BEGIN_COMMITTED;
    }
    if (rc == SDB_HELD) {
        sdb_rollback(s->db, s->session);
        snprintf(s->err, sizeof s->err, "barrier row held by another transaction (SQLSTATE 55P03)");
        return PG_BEGIN_HELD;
    }
    if (rc != SDB_OK)
        return fail(s, rc, "insert barrier row");
    *hz = horizon(s);
    return PG_BEGIN_OPEN;
}

static int op_branch_prepare(void *ctx, const char *gid)
{
    struct psess *s = ctx;
    if (dead(s))
        return fail(s, SDB_DOWN, "PREPARE TRANSACTION");
    enum sdb_rc rc = sdb_prepare(s->w, s->db, s->session, gid);
    if (rc != SDB_OK)
        return fail(s, rc, "PREPARE TRANSACTION");
    return PG_END_DONE;
}

static int op_branch_finish(void *ctx, const char *gid, bool commit)
{
    struct psess *s = ctx;
    if (dead(s))
        return TREATY_EPG;
    enum sdb_rc rc = sdb_finish_prepared(s->w, s->db, gid, commit);
    if (rc == SDB_NOT_FOUND)
        return PG_FINISH_NO_GID;
    if (rc != SDB_OK)
        return fail(s, rc, commit ? "COMMIT PREPARED" : "ROLLBACK PREPARED");
    return PG_FINISH_DONE;
}

static int op_branch_witness(void *ctx, const treaty_txid_t *txid, unsigned branch, long long *hz)
{
    struct psess *s = ctx;
    if (dead(s))
        return TREATY_EPG;
    if (!sdb_up_now(s->db))
        return fail(s, SDB_DOWN, "barrier witness");
    *hz = horizon(s);
    if (sdb_barrier_held(s->db, s->session, txid->b, (int)branch, "prepare"))
        return PG_WITNESS_HELD;
    struct sdb_barrier b;
    enum sdb_rc rc = sdb_barrier_get(s->db, s->session, txid->b, (int)branch, "prepare", &b);
    if (rc == SDB_OK)
        return PG_WITNESS_COMMITTED;
    if (rc == SDB_NOT_FOUND)
        return PG_WITNESS_ABSENT;
    return fail(s, rc, "barrier witness");
}

static int op_list_prepared(void *ctx, int min_age_ms, void (*each)(void *arg, const char *gid), void *arg)
{
    struct psess *s = ctx;
    if (dead(s))
        return TREATY_EPG;
    if (!sdb_up_now(s->db))
        return fail(s, SDB_DOWN, "list in-doubt prepared transactions");
    static char gids[256][80];
    size_t n = sdb_list_prepared(s->db, "treaty:", s->w->now - min_age_ms, gids, 256);
    for (size_t i = 0; i < n; i++)
        each(arg, gids[i]);
    return 0;
}

static const char *op_name(enum pg_step_op op)
{
    return op == PG_STEP_ACTION ? "action" : "compensation";
}

static int op_step_begin(void *ctx, const treaty_txid_t *txid, unsigned step, enum pg_step_op op)
{
    struct psess *s = ctx;
    if (dead(s))
        return TREATY_EPG;
    enum sdb_rc rc = sdb_begin(s->db, s->session);
    if (rc != SDB_OK)
        return fail(s, rc, "BEGIN (step)");
    struct sdb_barrier b = {.branch = (int)step};
    memcpy(b.txid, txid->b, 16);
    snprintf(b.op, sizeof b.op, "%s", op_name(op));
    rc = sdb_barrier_insert(s->w, s->db, s->session, &b);
    if (rc == SDB_EXISTS)
        return PG_ROW_EXISTS;
    if (rc == SDB_HELD) {
        sdb_rollback(s->db, s->session);
        snprintf(s->err, sizeof s->err, "%s barrier row held by another transaction", op_name(op));
        return PG_ROW_HELD;
    }
    if (rc != SDB_OK)
        return fail(s, rc, "insert barrier row");
    return PG_ROW_INSERTED;
}

static int op_step_read_action(void *ctx, const treaty_txid_t *txid, unsigned step, char *reason)
{
    struct psess *s = ctx;
    if (dead(s))
        return fail(s, SDB_DOWN, "read action barrier row");
    struct sdb_barrier b;
    enum sdb_rc rc = sdb_barrier_get(s->db, s->session, txid->b, (int)step, "action", &b);
    if (rc == SDB_NOT_FOUND)
        return PG_ACTION_GONE;
    if (rc != SDB_OK)
        return fail(s, rc, "read action barrier row");
    if (reason != NULL)
        snprintf(reason, TREATY_REASON_MAX, "%s", b.reason);
    if (strcmp(b.result, "ok") == 0)
        return PG_ACTION_OK;
    if (strcmp(b.result, "failed") == 0)
        return PG_ACTION_FAILED;
    if (strcmp(b.result, "blocked") == 0)
        return PG_ACTION_BLOCKED;
    return PG_ACTION_NONE;
}

static int op_step_block_action(void *ctx, const treaty_txid_t *txid, unsigned step)
{
    struct psess *s = ctx;
    if (dead(s))
        return fail(s, SDB_DOWN, "insert blocking action barrier row");
    struct sdb_barrier b = {.branch = (int)step};
    memcpy(b.txid, txid->b, 16);
    snprintf(b.op, sizeof b.op, "action");
    snprintf(b.result, sizeof b.result, "blocked");
    enum sdb_rc rc = sdb_barrier_insert(s->w, s->db, s->session, &b);
    if (rc == SDB_EXISTS)
        return PG_ROW_EXISTS;
    if (rc == SDB_HELD) {
        sdb_rollback(s->db, s->session);
        snprintf(s->err, sizeof s->err, "action barrier row held by another transaction");
        return PG_ROW_HELD;
    }
    if (rc != SDB_OK)
        return fail(s, rc, "insert blocking action barrier row");
    return PG_ROW_INSERTED;
}

static int op_step_work_begin(void *ctx, bool savepoint, long long *hz)
{
    struct psess *s = ctx;
    if (dead(s))
        return fail(s, SDB_DOWN, "savepoint");
    if (savepoint) {
        enum sdb_rc rc = sdb_savepoint(s->db, s->session);
        if (rc != SDB_OK)
            return fail(s, rc, "savepoint");
    }
    if (hz != NULL)
        *hz = horizon(s);
    return 0;
}

static int op_step_horizon(void *ctx, long long *hz)
{
    struct psess *s = ctx;
    if (dead(s))
        return fail(s, SDB_DOWN, "read the purge horizon");
    *hz = horizon(s);
    return 0;
}

static int op_step_undo_work(void *ctx)
{
    struct psess *s = ctx;
    enum sdb_rc rc = sdb_rollback_to_savepoint(s->db, s->session);
    return rc == SDB_OK ? 0 : fail(s, rc, "rollback to savepoint");
}

static int op_step_record(void *ctx, const treaty_txid_t *txid, unsigned step, enum pg_step_op op, bool ok,
                          const char *reason)
{
    struct psess *s = ctx;
    if (dead(s))
        return fail(s, SDB_DOWN, "update barrier row");
    enum sdb_rc rc =
        sdb_barrier_set_result(s->db, s->session, txid->b, (int)step, op_name(op), ok ? "ok" : "failed", reason);
    return rc == SDB_OK ? PG_RECORD_DONE : fail(s, rc, "update barrier row");
}

static int op_step_commit(void *ctx)
{
    struct psess *s = ctx;
    if (dead(s))
        return fail(s, SDB_DOWN, "COMMIT step");
    enum sdb_rc rc = sdb_commit(s->w, s->db, s->session);
    return rc == SDB_OK ? PG_END_DONE : fail(s, rc, "COMMIT step");
}

static long op_purge(void *ctx, unsigned older_than_s)
{
    struct psess *s = ctx;
    if (dead(s))
        return TREATY_EPG;
    enum sdb_rc rc = sdb_purge(s->w, s->db, world_wall_ms(s->w, NULL) - (int64_t)older_than_s * 1000);
    return rc == SDB_OK ? 0 : fail(s, rc, "purge barrier rows");
}

static const struct pg_ops sim_ops = {
    .ready = op_ready,
    .lost = op_lost,
    .errtext = op_errtext,
    .txn_state = op_txn_state,
    .rollback = op_rollback,
    .session = op_session,
    .crash_point = op_crash_point,
    .destroy = op_destroy,
    .branch_begin = op_branch_begin,
    .branch_prepare = op_branch_prepare,
    .branch_finish = op_branch_finish,
    .branch_witness = op_branch_witness,
    .list_prepared = op_list_prepared,
    .step_begin = op_step_begin,
    .step_read_action = op_step_read_action,
    .step_block_action = op_step_block_action,
    .step_work_begin = op_step_work_begin,
    .step_horizon = op_step_horizon,
    .step_undo_work = op_step_undo_work,
    .step_record = op_step_record,
    .step_commit = op_step_commit,
    .purge = op_purge,
};

/* ------------------------------------------------------- business logic */

/* A business statement failed: SDB_HELD is a lock timeout, anything else a
 * lost connection; either way transient for the core. */
static int biz_error(struct psess *s, enum sdb_rc rc, char *reason)
{
    snprintf(reason, TREATY_REASON_MAX, "%s", rc == SDB_HELD ? "lock timeout" : "database unavailable");
    s->lost = rc == SDB_DOWN;
    return rc == SDB_HELD ? TREATY_EBUSY : TREATY_EPG;
}

/* Adds delta to key in the open transaction; false (with *rc) on a
 * database error, and *enough = false when the result would be negative. */
static bool adjust(struct psess *s, const char *key, int64_t delta, bool *enough, enum sdb_rc *rc)
{
    int64_t v = 0;
    bool found = false;
    *rc = sdb_get(s->db, s->session, key, &v, &found);
    if (*rc != SDB_OK)
        return false;
    *enough = v + delta >= 0;
    if (!*enough)
        return true;
    *rc = sdb_set(s->db, s->session, key, v + delta);
    return *rc == SDB_OK;
}

static int bank_work(void *arg, struct pg_conn *conn, const treaty_branch_t *b, char *reason)
{
    (void)arg;
    struct psess *s = (struct psess *)conn;
    char pay[64];
    snprintf(pay, sizeof pay, "%.*s", (int)b->len, (const char *)b->payload);
    int acct = 0;
    long long delta = 0;
    if (sscanf(pay, "%d:%lld", &acct, &delta) != 2) {
        snprintf(reason, TREATY_REASON_MAX, "bad payload");
        return TREATY_VOTE_NO;
    }
    char key[32];
    snprintf(key, sizeof key, "acct:%d", acct);
    bool enough;
    enum sdb_rc rc;
    if (!adjust(s, key, delta, &enough, &rc))
        return biz_error(s, rc, reason);
    if (!enough) {
        snprintf(reason, TREATY_REASON_MAX, "insufficient funds in %s", key);
        return TREATY_VOTE_NO;
    }
    rc = sdb_applied(s->db, s->session, b->txid.b, (int)b->branch, "2pc");
    if (rc != SDB_OK)
        return biz_error(s, rc, reason);
    return TREATY_VOTE_YES;
}

/* The saga steps: op names equal the applied log's. */
static int step_fn(void *arg, struct pg_conn *conn, const treaty_step_t *st, char *reason)
{
    const char *op = arg;
    struct psess *s = (struct psess *)conn;
    char pay[64];
    snprintf(pay, sizeof pay, "%.*s", (int)st->len, (const char *)st->payload);
    enum sdb_rc rc = SDB_OK;
    bool enough = true;
    char key[96];
    if (strcmp(op, "create_order") == 0 || strcmp(op, "cancel_order") == 0) {
        snprintf(key, sizeof key, "order:%s", pay);
        rc = sdb_set(s->db, s->session, key, op[0] == 'c' && op[1] == 'r' ? 1 : 2);
    } else if (strcmp(op, "reserve") == 0 || strcmp(op, "release") == 0) {
        int qty = atoi(pay);
        if (!adjust(s, "stock", op[1] == 'e' && op[2] == 's' ? -qty : qty, &enough, &rc))
            return biz_error(s, rc, reason);
        if (!enough) {
            snprintf(reason, TREATY_REASON_MAX, "out of stock");
            return TREATY_STEP_FAILED;
        }
    } else {
        int cust = 0;
        long long price = 0;
        sscanf(pay, "%d:%lld", &cust, &price);
        snprintf(key, sizeof key, "wallet:%d", cust);
        if (!adjust(s, key, strcmp(op, "charge") == 0 ? -price : price, &enough, &rc))
            return biz_error(s, rc, reason);
        if (!enough) {
            snprintf(reason, TREATY_REASON_MAX, "insufficient funds");
            return TREATY_STEP_FAILED;
        }
    }
    if (rc == SDB_OK)
        rc = sdb_applied(s->db, s->session, st->txid.b, (int)st->step, op);
    if (rc != SDB_OK)
        return biz_error(s, rc, reason);
    return TREATY_STEP_OK;
}

/* ------------------------------------------------------------- process */

static int io_send(void *ctx, const struct wire_hdr *h, const struct wire_frame *frames, size_t nframes,
                   const char **why)
{
    struct spart *p = ctx;
    (void)why;
    if (world_dies_here(p->w, p->n))
        return TREATY_ETRANSPORT; /* killed mid-handler: nothing leaves any more */
    sim_trace(p->w, "%s -> treatyd: %s branch %u code %u", p->n->name, wire_type_name(h->type), h->branch, h->code);
    world_send(p->w, p->n->id, NULL, 0, h, frames, nframes);
    return 0;
}

static void io_log(void *ctx, enum pcore_level level, const char *text)
{
    struct spart *p = ctx;
    sim_trace(p->w, "%s: %s%s", p->n->name, level == PCORE_ALERT ? "ALERT: " : "", text);
}

static void after(struct spart *p)
{
    if (p->n->dying)
        return; /* the world crashes it once the event ends */
    world_tick_at(p->w, p->n->id, pcore_next_tick(p->core));
}

void spart_start(struct world *w, struct node *n)
{
    struct spart *p = n->impl;
    if (p == NULL) {
        p = n->impl = sim_xcalloc(1, sizeof *p);
        p->w = w;
        p->n = n;
    }
    struct psess *s = sim_xcalloc(1, sizeof *s);
    s->w = w;
    s->owner = p;
    s->db = w->dbs[n->db];
    s->session = sdb_session(s->db);
    struct pcore_io io = {.ctx = p, .send = io_send, .log = io_log};
    bool bank = strncmp(n->service, "bank-", 5) == 0;
    int rc = pg_core_participant_new(n->service, n->instance, &io, &sim_ops, s, bank ? bank_work : NULL, NULL, w->now,
                                     &p->core);
    if (rc != 0) {
        world_violation(w, "%s: pg_core_participant_new: %s", n->name, treaty_strerror(rc));
        return;
    }
    pcore_set_sweep_ms(p->core, 500);
    static const struct {
        const char *service, *action, *comp;
    } steps[] = {{"orders", "create_order", "cancel_order"},
                 {"inventory", "reserve", "release"},
                 {"payment", "charge", "refund"}};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        if (strcmp(steps[i].service, n->service) != 0)
            continue;
        pg_core_on_step(p->core, PCORE_ACTION, steps[i].action, step_fn, (void *)steps[i].action);
        pg_core_on_step(p->core, PCORE_COMPENSATION, steps[i].comp, step_fn, (void *)steps[i].comp);
    }
    after(p);
}

void spart_crash(struct world *w, struct node *n)
{
    (void)w;
    struct spart *p = n->impl;
    pcore_destroy(&p->core);
}

void spart_msg(struct world *w, struct node *n, const struct wire_msg *m)
{
    struct spart *p = n->impl;
    sim_trace(w, "treatyd -> %s: %s branch %u code %u", n->name, wire_type_name(m->hdr.type), m->hdr.branch,
              m->hdr.code);
    pcore_on_message(p->core, m, w->now);
    after(p);
}

void spart_tick(struct world *w, struct node *n)
{
    struct spart *p = n->impl;
    pcore_on_tick(p->core, w->now);
    /* Housekeeping: now and then purge barrier rows older than 60-120 s.
     * The horizon must exceed the longest a step can still be re-sent (the
     * SDK's rule): a shorter one makes a compensation whose rows it purged
     * stuck for an operator, by design - and a world lasts a minute or
     * two. */
    if (!w->healed && sim_rng_chance(&w->rng, 0.002)) {
        long k = pg_core_purge(p->core, (unsigned)sim_rng_range(&w->rng, 60, 120));
        sim_trace(w, "%s: barrier purge: %ld", n->name, k);
    }
    after(p);
}

void spart_free(struct node *n)
{
    struct spart *p = n->impl;
    if (p == NULL)
        return;
    pcore_destroy(&p->core);
    free(p);
    n->impl = NULL;
}
