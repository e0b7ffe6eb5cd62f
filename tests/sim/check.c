/*
 * check.c - the invariants (see check.h), checked against the simulated
 * databases' committed state and the journal after every run, and the
 * consistency of answers as they reach the clients.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "sdb.h"
#include "sjournal.h"
#include "treaty.h"

struct check *check_new(void)
{
    return sim_xcalloc(1, sizeof(struct check));
}

void check_free(struct check *c)
{
    if (c == NULL)
        return;
    free(c->tx);
    free(c);
}

struct wtx *check_add(struct check *c, enum wtx_kind kind)
{
    if (c->ntx == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 64;
        c->tx = sim_xrealloc(c->tx, c->cap * sizeof *c->tx);
    }
    struct wtx *t = &c->tx[c->ntx++];
    memset(t, 0, sizeof *t);
    t->kind = kind;
    return t;
}

struct wtx *check_find(struct check *c, const uint8_t txid[16])
{
    for (size_t i = 0; i < c->ntx; i++)
        if (memcmp(c->tx[i].txid, txid, 16) == 0)
            return &c->tx[i];
    return NULL;
}

static const char *id_str(const uint8_t txid[16])
{
    static char buf[4][TREATY_TXID_STRLEN];
    static int k;
    return treaty_txid_format((const treaty_txid_t *)txid, buf[k++ % 4]);
}

static bool final_status(int st)
{
    return st == TREATY_STATUS_COMMITTED || st == TREATY_STATUS_ABORTED || st == TREATY_STATUS_COMPLETED ||
           st == TREATY_STATUS_COMPENSATED;
}

void check_told(struct world *w, struct wtx *t, int status, const char *reason)
{
    if (!final_status(status))
        return;
    t->answers++;
    if (t->told == 0) {
        t->told = status;
        t->told_at = w->now;
        sim_trace(w, "check: %s told %s (%s)", id_str(t->txid), treaty_status_name(status), reason ? reason : "");
        return;
    }
    if (t->told != status)
        world_violation(w, "txid %s was told %s, then %s (\"%s\")", id_str(t->txid), treaty_status_name(t->told),
                        treaty_status_name(status), reason ? reason : "");
}

static struct sdb *db_named(struct world *w, const char *name)
{
    for (size_t i = 0; i < w->ndbs; i++)
        if (strcmp(sdb_name(w->dbs[i]), name) == 0)
            return w->dbs[i];
    return NULL;
}

static void check_2pc(struct world *w, const struct wtx *t)
{
    struct sdb *a = db_named(w, "bank-a"), *b = db_named(w, "bank-b");
    int c0 = sdb_applied_count(a, t->txid, 0, "2pc"), c1 = sdb_applied_count(b, t->txid, 1, "2pc");
    if (c0 > 1 || c1 > 1) {
        world_violation(w, "2PC %s applied more than once: bank-a %d times, bank-b %d times", id_str(t->txid), c0, c1);
        return;
    }
    if (c0 != c1) {
        world_violation(w, "atomicity: 2PC %s committed at %s only (told %s)", id_str(t->txid),
                        c0 ? "bank-a" : "bank-b", t->told ? treaty_status_name(t->told) : "nothing");
        return;
    }
    bool committed = c0 == 1;
    bool jc, ja;
    sjournal_decision(w->journal, t->txid, &jc, &ja);
    if (committed && !jc)
        world_violation(w, "2PC %s committed at the banks without a COMMIT record", id_str(t->txid));
    else if (jc && ja)
        world_violation(w, "2PC %s has both a COMMIT and an ABORT record", id_str(t->txid));
    else if (t->told == TREATY_STATUS_COMMITTED && !committed)
        world_violation(w, "2PC %s: the client was told committed, but it is applied nowhere", id_str(t->txid));
    else if (t->told == TREATY_STATUS_ABORTED && committed)
        world_violation(w, "2PC %s: the client was told aborted, but it committed", id_str(t->txid));
    else if (t->told != 0 && t->told != TREATY_STATUS_COMMITTED && t->told != TREATY_STATUS_ABORTED)
        world_violation(w, "2PC %s: told %s", id_str(t->txid), treaty_status_name(t->told));
}

static const char *const saga_action[3] = {"create_order", "reserve", "charge"};
static const char *const saga_comp[3] = {"cancel_order", "release", "refund"};
static const char *const saga_db[3] = {"orders", "inventory", "payment"};

static void check_saga(struct world *w, const struct wtx *t)
{
    int act[3], comp[3];
    bool all_done = true, nothing_left = true;
    for (int s = 0; s < 3; s++) {
        struct sdb *d = db_named(w, saga_db[s]);
        act[s] = sdb_applied_count(d, t->txid, s, saga_action[s]);
        comp[s] = sdb_applied_count(d, t->txid, s, saga_comp[s]);
        if (act[s] > 1 || comp[s] > 1) {
            world_violation(w, "saga %s step %d: %s applied %d times, %s %d times", id_str(t->txid), s, saga_action[s],
                            act[s], saga_comp[s], comp[s]);
            return;
        }
        if (comp[s] > act[s]) {
            world_violation(w, "saga %s step %d: compensated without its action", id_str(t->txid), s);
            return;
        }
        all_done &= act[s] == 1 && comp[s] == 0;
        nothing_left &= act[s] == comp[s];
    }
    /* Order: an action after the actions of every earlier group, a
     * compensation after its action and after the compensations of every
     * later group (a group's members in parallel: any order among them). */
    uint64_t ao[3], co[3];
    int group[3] = {0, 1, t->parallel ? 1 : 2};
    for (int s = 0; s < 3; s++) {
        struct sdb *d = db_named(w, saga_db[s]);
        ao[s] = sdb_applied_order(d, t->txid, s, saga_action[s]);
        co[s] = sdb_applied_order(d, t->txid, s, saga_comp[s]);
    }
    for (int a = 0; a < 3; a++) {
        if (co[a] && co[a] < ao[a]) {
            world_violation(w, "saga %s step %d: compensated before its action took effect", id_str(t->txid), a);
            return;
        }
        for (int b = 0; b < 3; b++) {
            if (group[a] >= group[b])
                continue;
            if (ao[a] && ao[b] && ao[b] < ao[a]) {
                world_violation(w, "saga %s: step %d's action took effect before step %d's (an earlier group)",
                                id_str(t->txid), b, a);
                return;
            }
            if (co[a] && co[b] && co[a] < co[b]) {
                world_violation(w,
                                "saga %s: step %d was compensated before step %d (a later group): compensations "
                                "out of reverse order",
                                id_str(t->txid), a, b);
                return;
            }
        }
    }
    bool any_comp = comp[0] + comp[1] + comp[2] > 0;
    bool completed = all_done, compensated = nothing_left && !all_done;
    if (all_done && any_comp)
        completed = false;
    if (!completed && !compensated) {
        world_violation(w,
                        "saga %s incomplete: actions %d%d%d, compensations %d%d%d (told %s): neither completed nor "
                        "fully compensated",
                        id_str(t->txid), act[0], act[1], act[2], comp[0], comp[1], comp[2],
                        t->told ? treaty_status_name(t->told) : "nothing");
        return;
    }
    if (t->told == TREATY_STATUS_COMPLETED && !completed)
        world_violation(w, "saga %s: told completed, but it was compensated (actions %d%d%d, compensations %d%d%d)",
                        id_str(t->txid), act[0], act[1], act[2], comp[0], comp[1], comp[2]);
    else if (t->told == TREATY_STATUS_COMPENSATED && !compensated)
        world_violation(w, "saga %s: told compensated, but every step is applied", id_str(t->txid));
    else if (t->told == TREATY_STATUS_ABORTED && (act[0] || act[1] || act[2]))
        world_violation(w, "saga %s: told aborted (never ran), but a step ran", id_str(t->txid));
}

static void check_phantom(struct world *w, const struct wtx *t)
{
    struct sdb *a = db_named(w, "bank-a"), *b = db_named(w, "bank-b");
    if (t->told == TREATY_STATUS_ABORTED &&
        (sdb_applied_count(a, t->txid, 0, "2pc") || sdb_applied_count(b, t->txid, 1, "2pc")))
        world_violation(w, "txid %s was told aborted (nobody had submitted it), then ran", id_str(t->txid));
}

static void check_money(struct world *w)
{
    struct sdb *a = db_named(w, "bank-a"), *b = db_named(w, "bank-b");
    int64_t total = 0;
    char key[32];
    for (int i = 0; i < SIM_ACCOUNTS; i++) {
        snprintf(key, sizeof key, "acct:%d", i);
        total += sdb_value(a, key) + sdb_value(b, key);
    }
    if (total != 2LL * SIM_ACCOUNTS * SIM_ACCOUNT_START)
        world_violation(w, "money: the banks hold %lld, they started with %lld", (long long)total,
                        2LL * SIM_ACCOUNTS * SIM_ACCOUNT_START);
    /* stock and wallets: what the sagas' committed effects say */
    int64_t stock = SIM_STOCK_START, wallet = 0;
    struct sdb *inv = db_named(w, "inventory"), *pay = db_named(w, "payment");
    for (size_t i = 0; i < w->check->ntx; i++) {
        const struct wtx *t = &w->check->tx[i];
        if (t->kind != WTX_SAGA)
            continue;
        stock -= (int64_t)t->qty *
                 (sdb_applied_count(inv, t->txid, 1, "reserve") - sdb_applied_count(inv, t->txid, 1, "release"));
        wallet -=
            t->price * (sdb_applied_count(pay, t->txid, 2, "charge") - sdb_applied_count(pay, t->txid, 2, "refund"));
    }
    if (sdb_value(inv, "stock") != stock)
        world_violation(w, "stock is %lld, the sagas' effects say %lld", (long long)sdb_value(inv, "stock"),
                        (long long)stock);
    int64_t wallets = 0;
    for (int i = 0; i < SIM_ACCOUNTS; i++) {
        snprintf(key, sizeof key, "wallet:%d", i);
        wallets += sdb_value(pay, key) - SIM_WALLET_START;
    }
    if (wallets != wallet)
        world_violation(w, "wallets changed by %lld, the sagas' effects say %lld", (long long)wallets,
                        (long long)wallet);
}

void check_world(struct world *w)
{
    for (size_t i = 0; i < w->check->ntx && !w->violated; i++) {
        const struct wtx *t = &w->check->tx[i];
        if (!t->started)
            continue;
        switch (t->kind) {
        case WTX_2PC:
            check_2pc(w, t);
            break;
        case WTX_SAGA:
            check_saga(w, t);
            break;
        case WTX_PHANTOM:
            check_phantom(w, t);
            break;
        }
    }
    if (!w->violated)
        check_money(w);
    for (size_t d = 0; d < w->ndbs && !w->violated; d++)
        if (sdb_prepared(w->dbs[d]) > 0)
            world_violation(w, "db %s holds %zu prepared transactions after heal", sdb_name(w->dbs[d]),
                            sdb_prepared(w->dbs[d]));
}
