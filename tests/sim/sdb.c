/*
 * sdb.c - the simulated PostgreSQL database (see sdb.h).
 *
 * Storage: committed business rows, barrier rows and applied effects in
 * arrays (a world holds a few thousand at most); a transaction is a list of
 * changes applied at commit. Locks are derived: a key is locked when an open
 * or prepared transaction of another session has a change on it.
 */
#include <stdlib.h>
#include <string.h>

#include "sdb.h"
#include "treaty.h"

enum change_kind { CH_ROW, CH_BARRIER_INSERT, CH_BARRIER_RESULT, CH_APPLIED };

struct change {
    enum change_kind kind;
    char key[80];         /* CH_ROW: the row; barrier changes: the barrier key */
    int64_t value;        /* CH_ROW */
    struct sdb_barrier b; /* barrier changes (result/reason for CH_BARRIER_RESULT) */
    uint8_t txid[16];     /* CH_APPLIED */
    int step;
    char op[16];
};

struct txn {
    bool open;
    struct change *ch;
    size_t n, cap;
    size_t savepoint; /* changes before it survive ROLLBACK TO SAVEPOINT */
    bool has_savepoint;
};

struct prepared {
    char gid[80];
    struct txn t;
    int64_t prepared_ms;
};

struct row {
    char key[80];
    int64_t value;
};

struct applied {
    uint8_t txid[16];
    int step;
    char op[16];
    int count;
    uint64_t order; /* when it was first committed: the world's commit clock */
};

struct sdb {
    struct world *w;
    char name[32];
    bool up;
    unsigned epoch; /* bumped at every restart: sessions opened before are broken */
    struct row *rows;
    size_t nrows, caprows;
    struct sdb_barrier *bar;
    size_t nbar, capbar;
    struct applied *app;
    size_t napp, capapp;
    struct prepared *prep;
    size_t nprep, capprep;
    struct txn *sess; /* open transaction per session */
    unsigned *sess_epoch;
    size_t nsess;
    int64_t horizon_ms;
};

static void *grow(void *p, size_t *cap, size_t n, size_t size)
{
    if (n < *cap)
        return p;
    *cap = *cap ? 2 * *cap : 16;
    return sim_xrealloc(p, *cap * size);
}

static void barrier_key(char *key, const uint8_t txid[16], int branch, const char *op)
{
    static const char hex[] = "0123456789abcdef";
    char *k = key;
    for (int i = 0; i < 16; i++) {
        *k++ = hex[txid[i] >> 4];
        *k++ = hex[txid[i] & 15];
    }
    snprintf(k, 80 - 32, ":%d:%s", branch, op);
}

/* ------------------------------------------------------------ lifecycle */

struct sdb *sdb_new(struct world *w, const char *service)
{
    (void)w;
    struct sdb *d = sim_xcalloc(1, sizeof *d);
    d->w = w;
    snprintf(d->name, sizeof d->name, "%s", service);
    d->up = true;
    return d;
}

static void txn_clear(struct txn *t)
{
    free(t->ch);
    memset(t, 0, sizeof *t);
}

void sdb_free(struct sdb *d)
{
    if (d == NULL)
        return;
    for (size_t i = 0; i < d->nprep; i++)
        txn_clear(&d->prep[i].t);
    for (size_t i = 0; i < d->nsess; i++)
        txn_clear(&d->sess[i]);
    free(d->rows);
    free(d->bar);
    free(d->app);
    free(d->prep);
    free(d->sess);
    free(d->sess_epoch);
    free(d);
}

const char *sdb_name(const struct sdb *d)
{
    return d->name;
}

bool sdb_up_now(const struct sdb *d)
{
    return d->up;
}

int sdb_session(struct sdb *d)
{
    d->sess = sim_xrealloc(d->sess, (d->nsess + 1) * sizeof *d->sess);
    d->sess_epoch = sim_xrealloc(d->sess_epoch, (d->nsess + 1) * sizeof *d->sess_epoch);
    memset(&d->sess[d->nsess], 0, sizeof d->sess[d->nsess]);
    d->sess_epoch[d->nsess] = d->epoch;
    return (int)d->nsess++;
}

void sdb_reconnect(struct sdb *d, int s)
{
    d->sess_epoch[s] = d->epoch;
    txn_clear(&d->sess[s]);
}

void sdb_down(struct world *w, struct sdb *d)
{
    sim_trace(w, "db %s: restart (down); %zu prepared transactions survive", d->name, d->nprep);
    d->up = false;
    d->epoch++;
    for (size_t i = 0; i < d->nsess; i++)
        txn_clear(&d->sess[i]);
}

void sdb_up(struct world *w, struct sdb *d)
{
    if (!d->up)
        sim_trace(w, "db %s: up", d->name);
    d->up = true;
}

size_t sdb_prepared(const struct sdb *d)
{
    return d->nprep;
}

/* A session may run statements: the database is up and the session's
 * connection was made after its last restart (else it must reconnect). */
static enum sdb_rc usable(struct sdb *d, int s)
{
    if (!d->up)
        return SDB_DOWN;
    if (d->sess_epoch[s] != d->epoch) {
        d->sess_epoch[s] = d->epoch; /* reconnected: this call fails, the next works */
        txn_clear(&d->sess[s]);
        return SDB_DOWN;
    }
    return SDB_OK;
}

/* ---------------------------------------------------------------- locks */

static bool txn_touches(const struct txn *t, enum change_kind kind, const char *key)
{
    for (size_t i = 0; i < t->n; i++) {
        bool barrier = t->ch[i].kind == CH_BARRIER_INSERT || t->ch[i].kind == CH_BARRIER_RESULT;
        bool want_barrier = kind == CH_BARRIER_INSERT || kind == CH_BARRIER_RESULT;
        if (barrier == want_barrier && t->ch[i].kind != CH_APPLIED && strcmp(t->ch[i].key, key) == 0)
            return true;
    }
    return false;
}

static bool locked_by_other(const struct sdb *d, int s, enum change_kind kind, const char *key)
{
    for (size_t i = 0; i < d->nsess; i++)
        if ((int)i != s && d->sess[i].open && txn_touches(&d->sess[i], kind, key))
            return true;
    for (size_t i = 0; i < d->nprep; i++)
        if (txn_touches(&d->prep[i].t, kind, key))
            return true;
    return false;
}

static struct change *add_change(struct txn *t)
{
    t->ch = grow(t->ch, &t->cap, t->n, sizeof *t->ch);
    struct change *c = &t->ch[t->n++];
    memset(c, 0, sizeof *c);
    return c;
}

/* --------------------------------------------------------- transactions */

bool sdb_in_txn(const struct sdb *d, int session)
{
    return d->sess[session].open;
}

enum sdb_rc sdb_begin(struct sdb *d, int s)
{
    enum sdb_rc rc = usable(d, s);
    if (rc != SDB_OK)
        return rc;
    txn_clear(&d->sess[s]);
    d->sess[s].open = true;
    return SDB_OK;
}

enum sdb_rc sdb_rollback(struct sdb *d, int s)
{
    txn_clear(&d->sess[s]);
    return d->up ? SDB_OK : SDB_DOWN;
}

enum sdb_rc sdb_savepoint(struct sdb *d, int s)
{
    enum sdb_rc rc = usable(d, s);
    if (rc != SDB_OK)
        return rc;
    if (!d->sess[s].open)
        return SDB_NO_TXN;
    d->sess[s].savepoint = d->sess[s].n;
    d->sess[s].has_savepoint = true;
    return SDB_OK;
}

enum sdb_rc sdb_rollback_to_savepoint(struct sdb *d, int s)
{
    enum sdb_rc rc = usable(d, s);
    if (rc != SDB_OK)
        return rc;
    if (!d->sess[s].open || !d->sess[s].has_savepoint)
        return SDB_NO_TXN;
    d->sess[s].n = d->sess[s].savepoint;
    return SDB_OK;
}

static struct row *row_find(struct sdb *d, const char *key)
{
    for (size_t i = 0; i < d->nrows; i++)
        if (strcmp(d->rows[i].key, key) == 0)
            return &d->rows[i];
    return NULL;
}

static struct sdb_barrier *bar_find(struct sdb *d, const char *key)
{
    char k[80];
    for (size_t i = 0; i < d->nbar; i++) {
        barrier_key(k, d->bar[i].txid, d->bar[i].branch, d->bar[i].op);
        if (strcmp(k, key) == 0)
            return &d->bar[i];
    }
    return NULL;
}

static void apply(struct sdb *d, const struct txn *t)
{
    for (size_t i = 0; i < t->n; i++) {
        const struct change *c = &t->ch[i];
        switch (c->kind) {
        case CH_ROW: {
            struct row *r = row_find(d, c->key);
            if (r == NULL) {
                d->rows = grow(d->rows, &d->caprows, d->nrows, sizeof *d->rows);
                r = &d->rows[d->nrows++];
                snprintf(r->key, sizeof r->key, "%s", c->key);
            }
            r->value = c->value;
            break;
        }
        case CH_BARRIER_INSERT:
            d->bar = grow(d->bar, &d->capbar, d->nbar, sizeof *d->bar);
            d->bar[d->nbar++] = c->b;
            break;
        case CH_BARRIER_RESULT: {
            struct sdb_barrier *b = bar_find(d, c->key);
            if (b != NULL) {
                snprintf(b->result, sizeof b->result, "%s", c->b.result);
                snprintf(b->reason, sizeof b->reason, "%s", c->b.reason);
            }
            break;
        }
        case CH_APPLIED: {
            struct applied *a = NULL;
            for (size_t k = 0; k < d->napp && a == NULL; k++)
                if (memcmp(d->app[k].txid, c->txid, 16) == 0 && d->app[k].step == c->step &&
                    strcmp(d->app[k].op, c->op) == 0)
                    a = &d->app[k];
            if (a == NULL) {
                d->app = grow(d->app, &d->capapp, d->napp, sizeof *d->app);
                a = &d->app[d->napp++];
                memset(a, 0, sizeof *a);
                memcpy(a->txid, c->txid, 16);
                a->step = c->step;
                snprintf(a->op, sizeof a->op, "%s", c->op);
                a->order = ++d->w->commit_clock;
            }
            a->count++;
            break;
        }
        }
    }
}

enum sdb_rc sdb_commit(struct world *w, struct sdb *d, int s)
{
    (void)w;
    enum sdb_rc rc = usable(d, s);
    if (rc != SDB_OK)
        return rc;
    if (!d->sess[s].open)
        return SDB_NO_TXN;
    apply(d, &d->sess[s]);
    txn_clear(&d->sess[s]);
    return SDB_OK;
}

enum sdb_rc sdb_prepare(struct world *w, struct sdb *d, int s, const char *gid)
{
    enum sdb_rc rc = usable(d, s);
    if (rc != SDB_OK)
        return rc;
    if (!d->sess[s].open)
        return SDB_NO_TXN;
    if (sdb_is_prepared(d, gid)) {
        txn_clear(&d->sess[s]); /* PostgreSQL rolls the transaction back */
        return SDB_DUP_GID;
    }
    d->prep = grow(d->prep, &d->capprep, d->nprep, sizeof *d->prep);
    struct prepared *p = &d->prep[d->nprep++];
    memset(p, 0, sizeof *p);
    snprintf(p->gid, sizeof p->gid, "%s", gid);
    p->t = d->sess[s];
    p->t.open = false;
    p->prepared_ms = w->now;
    memset(&d->sess[s], 0, sizeof d->sess[s]);
    sim_trace(w, "db %s: PREPARE TRANSACTION %s", d->name, gid);
    return SDB_OK;
}

bool sdb_is_prepared(const struct sdb *d, const char *gid)
{
    for (size_t i = 0; i < d->nprep; i++)
        if (strcmp(d->prep[i].gid, gid) == 0)
            return true;
    return false;
}

enum sdb_rc sdb_finish_prepared(struct world *w, struct sdb *d, const char *gid, bool commit)
{
    if (!d->up)
        return SDB_DOWN;
    for (size_t i = 0; i < d->nprep; i++) {
        if (strcmp(d->prep[i].gid, gid) != 0)
            continue;
        if (commit)
            apply(d, &d->prep[i].t);
        txn_clear(&d->prep[i].t);
        d->prep[i] = d->prep[--d->nprep];
        sim_trace(w, "db %s: %s PREPARED %s", d->name, commit ? "COMMIT" : "ROLLBACK", gid);
        return SDB_OK;
    }
    return SDB_NOT_FOUND;
}

size_t sdb_list_prepared(const struct sdb *d, const char *prefix, int64_t max_prepared_ms, char (*out)[80], size_t cap)
{
    size_t n = 0;
    if (!d->up)
        return 0;
    for (size_t i = 0; i < d->nprep && n < cap; i++)
        if (strncmp(d->prep[i].gid, prefix, strlen(prefix)) == 0 && d->prep[i].prepared_ms <= max_prepared_ms)
            snprintf(out[n++], 80, "%s", d->prep[i].gid);
    return n;
}

/* --------------------------------------------------------- business rows */

enum sdb_rc sdb_get(struct sdb *d, int s, const char *key, int64_t *value, bool *found)
{
    enum sdb_rc rc = usable(d, s);
    if (rc != SDB_OK)
        return rc;
    *found = false;
    const struct txn *t = &d->sess[s];
    for (size_t i = t->n; i-- > 0;)
        if (t->ch[i].kind == CH_ROW && strcmp(t->ch[i].key, key) == 0) {
            *value = t->ch[i].value;
            *found = true;
            return SDB_OK;
        }
    struct row *r = row_find(d, key);
    if (r != NULL) {
        *value = r->value;
        *found = true;
    }
    return SDB_OK;
}

enum sdb_rc sdb_set(struct sdb *d, int s, const char *key, int64_t value)
{
    enum sdb_rc rc = usable(d, s);
    if (rc != SDB_OK)
        return rc;
    if (!d->sess[s].open)
        return SDB_NO_TXN;
    if (locked_by_other(d, s, CH_ROW, key))
        return SDB_HELD;
    struct change *c = add_change(&d->sess[s]);
    c->kind = CH_ROW;
    snprintf(c->key, sizeof c->key, "%s", key);
    c->value = value;
    return SDB_OK;
}

enum sdb_rc sdb_applied(struct sdb *d, int s, const uint8_t txid[16], int step, const char *op)
{
    enum sdb_rc rc = usable(d, s);
    if (rc != SDB_OK)
        return rc;
    if (!d->sess[s].open)
        return SDB_NO_TXN;
    struct change *c = add_change(&d->sess[s]);
    c->kind = CH_APPLIED;
    memcpy(c->txid, txid, 16);
    c->step = step;
    snprintf(c->op, sizeof c->op, "%s", op);
    return SDB_OK;
}

/* --------------------------------------------------------------- barrier */

enum sdb_rc sdb_barrier_get(struct sdb *d, int s, const uint8_t txid[16], int branch, const char *op,
                            struct sdb_barrier *out)
{
    enum sdb_rc rc = usable(d, s);
    if (rc != SDB_OK)
        return rc;
    char key[80];
    barrier_key(key, txid, branch, op);
    const struct txn *t = &d->sess[s];
    bool have = false;
    for (size_t i = 0; i < t->n; i++) {
        if (t->ch[i].kind == CH_BARRIER_INSERT && strcmp(t->ch[i].key, key) == 0) {
            *out = t->ch[i].b;
            have = true;
        } else if (have && t->ch[i].kind == CH_BARRIER_RESULT && strcmp(t->ch[i].key, key) == 0) {
            snprintf(out->result, sizeof out->result, "%s", t->ch[i].b.result);
            snprintf(out->reason, sizeof out->reason, "%s", t->ch[i].b.reason);
        }
    }
    if (have)
        return SDB_OK;
    struct sdb_barrier *b = bar_find(d, key);
    if (b == NULL)
        return SDB_NOT_FOUND;
    *out = *b;
    for (size_t i = 0; i < t->n; i++)
        if (t->ch[i].kind == CH_BARRIER_RESULT && strcmp(t->ch[i].key, key) == 0) {
            snprintf(out->result, sizeof out->result, "%s", t->ch[i].b.result);
            snprintf(out->reason, sizeof out->reason, "%s", t->ch[i].b.reason);
        }
    return SDB_OK;
}

bool sdb_barrier_held(const struct sdb *d, int s, const uint8_t txid[16], int branch, const char *op)
{
    char key[80];
    barrier_key(key, txid, branch, op);
    return locked_by_other(d, s, CH_BARRIER_INSERT, key);
}

enum sdb_rc sdb_barrier_insert(struct world *w, struct sdb *d, int s, const struct sdb_barrier *b)
{
    enum sdb_rc rc = usable(d, s);
    if (rc != SDB_OK)
        return rc;
    if (!d->sess[s].open)
        return SDB_NO_TXN;
    char key[80];
    barrier_key(key, b->txid, b->branch, b->op);
    if (locked_by_other(d, s, CH_BARRIER_INSERT, key))
        return SDB_HELD;
    struct sdb_barrier cur;
    if (sdb_barrier_get(d, s, b->txid, b->branch, b->op, &cur) == SDB_OK)
        return SDB_EXISTS;
    struct change *c = add_change(&d->sess[s]);
    c->kind = CH_BARRIER_INSERT;
    snprintf(c->key, sizeof c->key, "%s", key);
    c->b = *b;
    c->b.created_ms = world_wall_ms(w, NULL);
    return SDB_OK;
}

enum sdb_rc sdb_barrier_set_result(struct sdb *d, int s, const uint8_t txid[16], int branch, const char *op,
                                   const char *result, const char *reason)
{
    enum sdb_rc rc = usable(d, s);
    if (rc != SDB_OK)
        return rc;
    if (!d->sess[s].open)
        return SDB_NO_TXN;
    char key[80];
    barrier_key(key, txid, branch, op);
    if (locked_by_other(d, s, CH_BARRIER_RESULT, key))
        return SDB_HELD;
    struct change *c = add_change(&d->sess[s]);
    c->kind = CH_BARRIER_RESULT;
    snprintf(c->key, sizeof c->key, "%s", key);
    snprintf(c->b.result, sizeof c->b.result, "%s", result ? result : "");
    snprintf(c->b.reason, sizeof c->b.reason, "%s", reason ? reason : "");
    return SDB_OK;
}

enum sdb_rc sdb_purge(struct world *w, struct sdb *d, int64_t horizon_ms)
{
    if (!d->up)
        return SDB_DOWN;
    if (horizon_ms > d->horizon_ms)
        d->horizon_ms = horizon_ms;
    size_t k = 0;
    for (size_t i = 0; i < d->nbar; i++)
        if (d->bar[i].created_ms >= d->horizon_ms ||
            treaty_txid_time_ms((const treaty_txid_t *)d->bar[i].txid) < 0 || /* age unknown: kept */
            treaty_txid_time_ms((const treaty_txid_t *)d->bar[i].txid) >= d->horizon_ms)
            d->bar[k++] = d->bar[i];
    sim_trace(w, "db %s: purge below %lld: %zu barrier rows deleted", d->name, (long long)d->horizon_ms, d->nbar - k);
    d->nbar = k;
    return SDB_OK;
}

int64_t sdb_horizon(const struct sdb *d)
{
    return d->horizon_ms;
}

/* ---------------------------------------------------------------- checks */

void sdb_seed(struct sdb *d, const char *key, int64_t value)
{
    struct row *r = row_find(d, key);
    if (r == NULL) {
        d->rows = grow(d->rows, &d->caprows, d->nrows, sizeof *d->rows);
        r = &d->rows[d->nrows++];
        snprintf(r->key, sizeof r->key, "%s", key);
    }
    r->value = value;
}

int64_t sdb_value(const struct sdb *d, const char *key)
{
    for (size_t i = 0; i < d->nrows; i++)
        if (strcmp(d->rows[i].key, key) == 0)
            return d->rows[i].value;
    return 0;
}

uint64_t sdb_applied_order(const struct sdb *d, const uint8_t txid[16], int step, const char *op)
{
    for (size_t i = 0; i < d->napp; i++)
        if (memcmp(d->app[i].txid, txid, 16) == 0 && d->app[i].step == step && strcmp(d->app[i].op, op) == 0)
            return d->app[i].order;
    return 0;
}

int sdb_applied_count(const struct sdb *d, const uint8_t txid[16], int step, const char *op)
{
    for (size_t i = 0; i < d->napp; i++)
        if (memcmp(d->app[i].txid, txid, 16) == 0 && d->app[i].step == step && strcmp(d->app[i].op, op) == 0)
            return d->app[i].count;
    return 0;
}
