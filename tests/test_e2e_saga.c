/*
 * test_e2e_saga.c - end-to-end sagas: the real treatyd binary, real
 * shop_service participants (examples/shop_service.c) and real databases in
 * the throwaway cluster of tests/run.sh.
 *
 * Every test builds its own world: a fresh journal database, treatyd on a
 * free port, and three shop services, each with its own fresh database:
 *   orders    (instance o1)  table orders(id, status)
 *   inventory (instance i1)  table stock(item, qty)
 *   payment   (instance p1)  table wallet(customer, balance)
 * The order saga is create_order -> reserve -> charge (steps 0, 1, 2), with
 * compensations cancel_order, release, refund. Every step goes through the
 * SDK's barrier (treaty_pg_on_action / treaty_pg_on_compensation), and every
 * action or compensation that took effect wrote one row (txid, step, op) into
 * its service's applied table in the same local transaction.
 *
 * The checks read the databases, not only the client's reply: the business
 * rows, and the applied rows of each saga grouped by (step, op) with their
 * counts, which shows that every action and compensation took effect exactly
 * once - also when the coordinator died and its recovery delivered steps
 * again, and when a saga was resubmitted.
 *
 * Timing never decides pass/fail: every wait polls with a generous deadline
 * (SUPPORT_DEADLINE_MS). Coordinator crash tests use the fault points of
 * participant-sdk/src/fault.h (TREATY_CRASH_AT in treatyd's environment).
 *
 * The processes' logs go to $TREATY_E2E_LOGDIR/e2e_saga-<test>/; the report
 * hooks below print their tails for a failed test and remove them for a
 * passed one (unless TREATY_E2E_KEEP_LOGS=1).
 */
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <jansson.h>

#include "support.h"

#define SUITE "e2e_saga"

/* ------------------------------------------------------------ log reports */

#define E2E_SUITE SUITE
#include "e2e_report.h"

/* ------------------------------------------------------------------ world */

struct shop {
    const char *role; /* also the service name */
    const char *instance;
    char db[64];
    char conninfo[600];
    char setup[256];
    unsigned long transient;    /* --transient-failures */
    unsigned long compensation; /* --compensation-failures */
    unsigned long delay_ms;     /* --step-delay-ms */
    struct support_proc *proc;
};

struct world {
    char journal_db[64];
    char journal[600];
    struct support_treatyd d;
    struct shop orders, inventory, payment;
};

struct faults {
    unsigned long transient, compensation, delay_ms;
};

struct world_opts {
    const char *stock;        /* inventory --setup; default "widget=10" */
    const char *wallet;       /* payment --setup; default "alice=100,bob=20" */
    const char *coord_config; /* extra treatyd config (saga section) */
    const char *const *coord_env;
    bool lazy_immediately; /* journal.lazy_delay_ms = 0 */
    int lazy_delay_ms;     /* > 0: journal.lazy_delay_ms */
    struct faults orders, inventory, payment;
};

static void setup_shared(void)
{
    support_pg_base(); /* fail loudly when run outside tests/run.sh */
    support_lock_shared();
}

static void teardown(void)
{
    support_cleanup();
    support_unlock();
}

TestSuite(e2e_saga, .fini = teardown, .timeout = 180);

static const char *txid_str(const treaty_txid_t *id)
{
    static char buf[4][TREATY_TXID_STRLEN];
    static int next;
    char *s = buf[next++ % 4];
    return treaty_txid_format(id, s);
}

static treaty_client_t *client(struct world *w)
{
    treaty_client_t *c = NULL;
    int rc = treaty_client_new(w->d.endpoint, &c);
    cr_assert(rc == 0, "treaty_client_new(%s): %s", w->d.endpoint, treaty_strerror(rc));
    return c;
}

static void shop_spawn(struct world *w, struct shop *s)
{
    char bin[600], transient[24], compensation[24];
    snprintf(bin, sizeof bin, "%s/shop_service", support_bin_dir());
    cr_assert(access(bin, X_OK) == 0, "%s is missing or not executable", bin);
    snprintf(transient, sizeof transient, "%lu", s->transient);
    snprintf(compensation, sizeof compensation, "%lu", s->compensation);
    char delay[32];
    snprintf(delay, sizeof delay, "%lu", s->delay_ms);
    char *argv[] = {bin,
                    (char *)"--endpoint",
                    w->d.endpoint,
                    (char *)"--role",
                    (char *)s->role,
                    (char *)"--instance",
                    (char *)s->instance,
                    (char *)"--db",
                    s->conninfo,
                    (char *)"--setup",
                    s->setup,
                    (char *)"--transient-failures",
                    transient,
                    (char *)"--compensation-failures",
                    compensation,
                    (char *)"--step-delay-ms",
                    delay,
                    NULL};
    s->proc = support_spawn(s->role, argv, NULL);
}

/* Pings the service through treatyd (a 2PC branch "ping": shop_service votes
 * NO "pong from ROLE/INSTANCE") until this instance answers. */
static void shop_wait_up(struct world *w, struct shop *s)
{
    treaty_client_t *c = client(w);
    char want[128];
    snprintf(want, sizeof want, "pong from %s/%s", s->role, s->instance);
    long long deadline = support_now_ms() + SUPPORT_DEADLINE_MS;
    for (;;) {
        treaty_txn_t *t = NULL;
        treaty_outcome_t out;
        memset(&out, 0, sizeof out);
        int rc = treaty_txn_new(&t);
        cr_assert(rc == 0, "treaty_txn_new: %s", treaty_strerror(rc));
        rc = treaty_txn_add_branch(t, s->role, "ping", 4);
        cr_assert(rc == 0, "treaty_txn_add_branch: %s", treaty_strerror(rc));
        rc = treaty_client_submit(c, t, 1000, &out);
        treaty_txn_destroy(&t);
        if (rc == 0 && strstr(out.reason, want) != NULL)
            break;
        char st[64];
        if (!support_proc_running(s->proc)) {
            support_proc_dump_log(s->proc, 30);
            cr_assert_fail("%s ended before it served: %s (log %s)", s->role,
                           support_proc_status_str(s->proc, st, sizeof st), s->proc->log);
        }
        if (!support_proc_running(w->d.proc))
            cr_assert_fail("treatyd ended: %s (log %s)", support_proc_status_str(w->d.proc, st, sizeof st),
                           w->d.proc->log);
        cr_assert(support_now_ms() < deadline,
                  "%s does not answer a ping through treatyd after %d ms: last %s %s \"%s\" (logs %s)", s->role,
                  SUPPORT_DEADLINE_MS, treaty_err_name(rc), treaty_status_name(out.status), out.reason,
                  support_log_dir());
        support_sleep_ms(100);
    }
    treaty_client_destroy(&c);
}

static void shop_init(struct shop *s, const char *role, const char *instance, const char *setup, const struct faults *f)
{
    s->role = role;
    s->instance = instance;
    support_db_create(role, s->db, sizeof s->db);
    support_db_conninfo(s->db, s->conninfo, sizeof s->conninfo);
    snprintf(s->setup, sizeof s->setup, "%s", setup);
    s->transient = f->transient;
    s->compensation = f->compensation;
    s->delay_ms = f->delay_ms;
}

static void world_start(struct world *w, const struct world_opts *o)
{
    memset(w, 0, sizeof *w);
    support_db_create("journal", w->journal_db, sizeof w->journal_db);
    support_db_conninfo(w->journal_db, w->journal, sizeof w->journal);
    shop_init(&w->orders, "orders", "o1", "", &o->orders);
    shop_init(&w->inventory, "inventory", "i1", o->stock != NULL ? o->stock : "widget=10", &o->inventory);
    shop_init(&w->payment, "payment", "p1", o->wallet != NULL ? o->wallet : "alice=100,bob=20", &o->payment);

    struct support_treatyd_opts coord = {.heartbeat_ms = 100,
                                         .dead_after_ms = 1000,
                                         .lazy_immediately = o->lazy_immediately,
                                         .lazy_delay_ms = o->lazy_delay_ms};
    support_treatyd_start_with(&w->d, w->journal, &coord, o->coord_config, o->coord_env);
    struct shop *all[] = {&w->orders, &w->inventory, &w->payment};
    for (int i = 0; i < 3; i++)
        shop_spawn(w, all[i]);
    for (int i = 0; i < 3; i++)
        shop_wait_up(w, all[i]);
}

/* ------------------------------------------------------------------ sagas */

/* One order: create_order(order) -> reserve(item:qty) -> charge(customer:amount). */
struct order {
    const char *id;
    const char *item;
    int qty;
    const char *customer;
    long long amount;
    treaty_retry_t retry; /* of every step; zeros: the defaults */
};

static void add_step(treaty_saga_t *s, bool parallel, const char *service, const char *action, const char *compensation,
                     const char *payload, const treaty_retry_t *retry)
{
    int rc = parallel ? treaty_saga_add_parallel_step(s, service, action, payload, strlen(payload), compensation,
                                                      payload, strlen(payload))
                      : treaty_saga_add_step(s, service, action, payload, strlen(payload), compensation, payload,
                                             strlen(payload));
    cr_assert(rc >= 0, "treaty_saga_add_%sstep(%s.%s): %s", parallel ? "parallel_" : "", service, action,
              treaty_strerror(rc));
    if (retry != NULL) {
        rc = treaty_saga_set_retry(s, (unsigned)rc, retry);
        cr_assert(rc == 0, "treaty_saga_set_retry: %s", treaty_strerror(rc));
    }
}

/* The order saga; id NULL = a fresh txid. Caller owns the result. */
static treaty_saga_t *order_saga(const treaty_txid_t *id, const struct order *o)
{
    treaty_saga_t *s = NULL;
    int rc = id != NULL ? treaty_saga_new_with_id(id, &s) : treaty_saga_new(&s);
    cr_assert(rc == 0, "treaty_saga_new: %s", treaty_strerror(rc));
    char pay[128];
    add_step(s, false, "orders", "create_order", "cancel_order", o->id, &o->retry);
    snprintf(pay, sizeof pay, "%s:%d", o->item, o->qty);
    add_step(s, false, "inventory", "reserve", "release", pay, &o->retry);
    snprintf(pay, sizeof pay, "%s:%lld", o->customer, o->amount);
    add_step(s, false, "payment", "charge", "refund", pay, &o->retry);
    return s;
}

/* Runs s and waits up to timeout_ms. out->txid is set whatever happens.
 * Returns the rc of treaty_client_run_saga. */
static int run(treaty_client_t *c, treaty_saga_t *s, int timeout_ms, treaty_outcome_t *out)
{
    memset(out, 0, sizeof *out);
    int rc = treaty_client_run_saga(c, s, timeout_ms, out);
    out->txid = *treaty_saga_id(s);
    return rc;
}

static int run_order(treaty_client_t *c, const treaty_txid_t *id, const struct order *o, int timeout_ms,
                     treaty_outcome_t *out)
{
    treaty_saga_t *s = order_saga(id, o);
    int rc = run(c, s, timeout_ms, out);
    treaty_saga_destroy(&s);
    return rc;
}

static void expect_outcome(int rc, const treaty_outcome_t *out, enum treaty_status want, int failed_step,
                           const char *reason_part)
{
    cr_assert(rc == 0, "saga %s: %s (logs %s)", txid_str(&out->txid), treaty_err_name(rc), support_log_dir());
    cr_assert(out->error == 0 && out->status == want,
              "saga %s: want %s, got %s (error %s, reason \"%s\", failed step %u; logs %s)", txid_str(&out->txid),
              treaty_status_name(want), treaty_status_name(out->status), treaty_err_name(out->error), out->reason,
              out->failed_branch, support_log_dir());
    if (failed_step >= 0)
        cr_assert(out->failed_branch == (unsigned)failed_step, "saga %s: want failed step %d, got %u (reason \"%s\")",
                  txid_str(&out->txid), failed_step, out->failed_branch, out->reason);
    if (reason_part != NULL)
        cr_assert(strstr(out->reason, reason_part) != NULL, "saga %s: reason \"%s\" does not mention \"%s\"",
                  txid_str(&out->txid), out->reason, reason_part);
}

/* ------------------------------------------------------------- databases */

/* The first column of the first row of a query as text ("" for NULL), or
 * false when Postgres cannot answer. */
static bool try_text(const char *conninfo, char *buf, size_t len, const char *sql)
{
    char ci[700];
    snprintf(ci, sizeof ci, "%s connect_timeout=10", conninfo);
    PGconn *c = PQconnectdb(ci);
    bool ok = false;
    if (PQstatus(c) == CONNECTION_OK) {
        PGresult *r = PQexec(c, sql);
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
            snprintf(buf, len, "%s", PQgetisnull(r, 0, 0) ? "" : PQgetvalue(r, 0, 0));
            ok = true;
        } else {
            snprintf(buf, len, "<query failed: %s>", PQresultErrorMessage(r));
        }
        PQclear(r);
    } else {
        snprintf(buf, len, "<cannot connect: %s>", PQerrorMessage(c));
    }
    PQfinish(c);
    return ok;
}

/* The whole business table of a shop as "key=value,..." ordered by key. */
static void table_rows(const struct shop *s, char *buf, size_t len)
{
    const char *sql = strcmp(s->role, "orders") == 0
                          ? "SELECT string_agg(id || '=' || status, ',' ORDER BY id COLLATE \"C\") FROM orders"
                      : strcmp(s->role, "inventory") == 0
                          ? "SELECT string_agg(item || '=' || qty, ',' ORDER BY item COLLATE \"C\") FROM stock"
                          : "SELECT string_agg(customer || '=' || balance, ',' ORDER BY customer COLLATE \"C\") "
                            "FROM wallet";
    try_text(s->conninfo, buf, len, sql);
}

/* The applied rows of one saga at a shop, grouped: "STEP:OP=COUNT,..." ordered
 * by step and op. Every count must be 1: applied exactly once. */
static void applied_rows(const struct shop *s, const treaty_txid_t *id, char *buf, size_t len)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT string_agg(step || ':' || op || '=' || n, ',' ORDER BY step, op COLLATE \"C\") FROM "
             "(SELECT step, op, count(*) AS n FROM applied WHERE txid = '%s' GROUP BY step, op) g",
             txid_str(id));
    try_text(s->conninfo, buf, len, sql);
}

struct state_want {
    struct world *w;
    const treaty_txid_t *id;                        /* NULL: check the tables only */
    const char *orders, *stock, *wallet;            /* table rows */
    const char *a_orders, *a_inventory, *a_payment; /* applied rows of id */
    char got[6][512];
};

static bool state_matches(void *arg)
{
    struct state_want *q = arg;
    struct shop *shops[3] = {&q->w->orders, &q->w->inventory, &q->w->payment};
    const char *rows[3] = {q->orders, q->stock, q->wallet};
    const char *applied[3] = {q->a_orders, q->a_inventory, q->a_payment};
    bool ok = true;
    for (int i = 0; i < 3; i++) {
        snprintf(q->got[i], sizeof q->got[i], "-");
        snprintf(q->got[3 + i], sizeof q->got[3 + i], "-");
        if (rows[i] != NULL) {
            table_rows(shops[i], q->got[i], sizeof q->got[i]);
            ok = ok && strcmp(q->got[i], rows[i]) == 0;
        }
        if (q->id != NULL && applied[i] != NULL) {
            applied_rows(shops[i], q->id, q->got[3 + i], sizeof q->got[3 + i]);
            ok = ok && strcmp(q->got[3 + i], applied[i]) == 0;
        }
    }
    return ok;
}

#define WANT(s) ((s) != NULL ? (s) : "(any)")

/* Waits until the three databases hold exactly these rows and (when q->id)
 * these applied rows of saga q->id; a NULL want is not checked. Fails the
 * test naming the differences. */
static void expect_state(struct state_want *q)
{
    if (support_wait_until(state_matches, q, SUPPORT_DEADLINE_MS))
        return;
    cr_assert_fail("databases after %d ms (want | got):\n"
                   "  orders    [%s] | [%s]\n  stock     [%s] | [%s]\n  wallet    [%s] | [%s]\n"
                   "  applied of saga %s:\n  orders    [%s] | [%s]\n  inventory [%s] | [%s]\n  payment   [%s] | [%s]\n"
                   "(logs %s)",
                   SUPPORT_DEADLINE_MS, WANT(q->orders), q->got[0], WANT(q->stock), q->got[1], WANT(q->wallet),
                   q->got[2], q->id != NULL ? txid_str(q->id) : "-", WANT(q->a_orders), q->got[3], WANT(q->a_inventory),
                   q->got[4], WANT(q->a_payment), q->got[5], support_log_dir());
}

/* Microseconds since the epoch of the applied row (id, step, op) at s. */
static long long applied_at(const struct shop *s, const treaty_txid_t *id, unsigned step, const char *op)
{
    return support_scalar(s->conninfo,
                          "SELECT (extract(epoch FROM at) * 1000000)::bigint FROM applied"
                          " WHERE txid = '%s' AND step = %u AND op = '%s'",
                          txid_str(id), step, op);
}

static long long journal_count(struct world *w, const treaty_txid_t *id, const char *kind)
{
    return support_scalar(w->journal, "SELECT count(*) FROM treaty_records WHERE txid = '%s' AND kind = '%s'",
                          txid_str(id), kind);
}

struct journal_probe {
    const char *journal;
    const char *txid;
};

static bool end_written(void *arg)
{
    const struct journal_probe *q = arg;
    long long n = 0;
    return support_try_scalar(q->journal, &n, "SELECT count(*) FROM treaty_records WHERE txid = '%s' AND kind = 'end'",
                              q->txid) &&
           n > 0;
}

static void expect_end_record(struct world *w, const treaty_txid_t *id)
{
    struct journal_probe q = {w->journal, txid_str(id)};
    cr_assert(support_wait_until(end_written, &q, SUPPORT_DEADLINE_MS),
              "no END record for saga %s in the journal after %d ms (logs %s)", q.txid, SUPPORT_DEADLINE_MS,
              support_log_dir());
}

static void expect_proc_killed(struct support_proc *p, const char *why)
{
    cr_assert(support_proc_wait(p, SUPPORT_DEADLINE_MS), "%s did not die at fault point %s (log %s)", p->name, why,
              p->log);
    char st[64];
    cr_assert(p->status != -1 && WIFSIGNALED(p->status) && WTERMSIG(p->status) == SIGKILL,
              "%s should have been SIGKILLed by fault point %s, but ended with %s (log %s)", p->name, why,
              support_proc_status_str(p, st, sizeof st), p->log);
}

/* Queries id once and expects status. */
static void expect_query(struct world *w, const treaty_txid_t *id, enum treaty_status want)
{
    treaty_client_t *c = client(w);
    treaty_outcome_t q;
    memset(&q, 0, sizeof q);
    int rc = treaty_client_query(c, id, 5000, &q);
    treaty_client_destroy(&c);
    cr_assert(rc == 0 && q.error == 0 && q.status == want, "query %s: want %s, got %s %s (error %s, reason \"%s\")",
              txid_str(id), treaty_status_name(want), treaty_err_name(rc), treaty_status_name(q.status),
              treaty_err_name(q.error), q.reason);
}

/* A policy that outlasts a coordinator restart: "no live instance" while the
 * services reconnect counts as a failed try, so allow many, spaced out. */
static const treaty_retry_t patient = {.max_attempts = 30, .first_backoff_ms = 100, .max_backoff_ms = 1000};

/* ------------------------------------------------------------------ tests */

Test(e2e_saga, order_completes_and_applies_each_action_once, .init = setup_shared)
{
    struct world w;
    struct world_opts o = {0};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    struct order ord = {"o-1", "widget", 3, "alice", 30, {0}};
    treaty_outcome_t out;
    expect_outcome(run_order(c, NULL, &ord, 30000, &out), &out, TREATY_STATUS_COMPLETED, -1, NULL);
    cr_assert(out.failed_branch == TREATY_NO_BRANCH, "completed saga names failed step %u", out.failed_branch);
    struct state_want q = {.w = &w,
                           .id = &out.txid,
                           .orders = "o-1=created",
                           .stock = "widget=7",
                           .wallet = "alice=70,bob=20",
                           .a_orders = "0:create_order=1",
                           .a_inventory = "1:reserve=1",
                           .a_payment = "2:charge=1"};
    expect_state(&q);
    expect_query(&w, &out.txid, TREATY_STATUS_COMPLETED);
    expect_end_record(&w, &out.txid);
    cr_assert(journal_count(&w, &out.txid, "saga") == 1 && journal_count(&w, &out.txid, "turn") == 0,
              "journal of %s: %lld saga and %lld turn records, want 1 and 0", txid_str(&out.txid),
              journal_count(&w, &out.txid, "saga"), journal_count(&w, &out.txid, "turn"));
    /* The step that completed the saga has no record of its own: END, in the
     * same batch, says more. */
    cr_assert(journal_count(&w, &out.txid, "step") == 2, "journal of %s: %lld step records, want 2 of 3 steps",
              txid_str(&out.txid), journal_count(&w, &out.txid, "step"));

    /* A second order changes only its own rows. */
    struct order ord2 = {"o-2", "widget", 7, "bob", 20, {0}};
    treaty_outcome_t out2;
    expect_outcome(run_order(c, NULL, &ord2, 30000, &out2), &out2, TREATY_STATUS_COMPLETED, -1, NULL);
    struct state_want q2 = {.w = &w,
                            .id = &out2.txid,
                            .orders = "o-1=created,o-2=created",
                            .stock = "widget=0",
                            .wallet = "alice=70,bob=0",
                            .a_orders = "0:create_order=1",
                            .a_inventory = "1:reserve=1",
                            .a_payment = "2:charge=1"};
    expect_state(&q2);
    treaty_client_destroy(&c);

    /* Clean shutdown of everything. */
    struct shop *all[] = {&w.orders, &w.inventory, &w.payment};
    for (int i = 0; i < 3; i++)
        cr_assert(support_proc_stop(all[i]->proc, 10000), "%s did not exit 0 on SIGTERM (log %s)", all[i]->role,
                  all[i]->proc->log);
    cr_assert(support_proc_stop(w.d.proc, 10000), "treatyd did not exit 0 on SIGTERM (log %s)", w.d.proc->log);
}

Test(e2e_saga, payment_failure_compensates_in_reverse_order, .init = setup_shared)
{
    struct world w;
    struct world_opts o = {0};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    /* bob has 20: charge (step 2) fails; release (1) then cancel_order (0). */
    struct order ord = {"o-1", "widget", 4, "bob", 50, {0}};
    treaty_outcome_t out;
    expect_outcome(run_order(c, NULL, &ord, 30000, &out), &out, TREATY_STATUS_COMPENSATED, 2, "insufficient funds");
    struct state_want q = {.w = &w,
                           .id = &out.txid,
                           .orders = "o-1=cancelled",
                           .stock = "widget=10",
                           .wallet = "alice=100,bob=20",
                           .a_orders = "0:cancel_order=1,0:create_order=1",
                           .a_inventory = "1:release=1,1:reserve=1",
                           .a_payment = ""}; /* the failed charge rolled back; its compensation is a no-op */
    expect_state(&q);

    /* Forward in order, compensations in reverse: every compensation's local
     * transaction started after the previous one had finished. */
    long long t_create = applied_at(&w.orders, &out.txid, 0, "create_order");
    long long t_reserve = applied_at(&w.inventory, &out.txid, 1, "reserve");
    long long t_release = applied_at(&w.inventory, &out.txid, 1, "release");
    long long t_cancel = applied_at(&w.orders, &out.txid, 0, "cancel_order");
    cr_assert(t_create < t_reserve && t_reserve < t_release && t_release < t_cancel,
              "order of applied rows: create_order %lld, reserve %lld, release %lld, cancel_order %lld (us)", t_create,
              t_reserve, t_release, t_cancel);
    /* The failing step's own compensation (step 2) came first of all. Whether
     * the barrier keeps a row for a no-op compensation is the SDK's business;
     * when it does, it must predate release. */
    long long n = support_scalar(w.payment.conninfo,
                                 "SELECT count(*) FROM treaty_barrier WHERE txid = '%s' AND branch = 2"
                                 " AND op = 'compensation'",
                                 txid_str(&out.txid));
    if (n > 0) {
        long long t_refund = support_scalar(w.payment.conninfo,
                                            "SELECT (extract(epoch FROM created_at) * 1000000)::bigint FROM"
                                            " treaty_barrier WHERE txid = '%s' AND branch = 2 AND op = 'compensation'",
                                            txid_str(&out.txid));
        cr_assert(t_refund < t_release, "compensation of step 2 at %lld us, after release at %lld us", t_refund,
                  t_release);
    }
    expect_query(&w, &out.txid, TREATY_STATUS_COMPENSATED);
    expect_end_record(&w, &out.txid);
    cr_assert(journal_count(&w, &out.txid, "turn") == 1, "want one turn record for %s, have %lld", txid_str(&out.txid),
              journal_count(&w, &out.txid, "turn"));
    treaty_client_destroy(&c);
}

Test(e2e_saga, transient_action_failures_are_retried_until_success, .init = setup_shared)
{
    struct world w;
    struct world_opts o = {.inventory = {.transient = 2}};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    struct order ord = {"o-1", "widget", 2, "alice", 10, {.max_attempts = 3, .first_backoff_ms = 50}};
    treaty_outcome_t out;
    expect_outcome(run_order(c, NULL, &ord, 30000, &out), &out, TREATY_STATUS_COMPLETED, -1, NULL);
    struct state_want q = {.w = &w,
                           .id = &out.txid,
                           .orders = "o-1=created",
                           .stock = "widget=8",
                           .wallet = "alice=90,bob=20",
                           .a_orders = "0:create_order=1",
                           .a_inventory = "1:reserve=1",
                           .a_payment = "2:charge=1"};
    expect_state(&q);
    cr_assert(support_file_contains(w.inventory.proc->log, "injected transient failure 2 of 2"),
              "inventory never failed the second try (log %s)", w.inventory.proc->log);
    treaty_client_destroy(&c);
}

Test(e2e_saga, exhausted_retries_turn_the_saga_around, .init = setup_shared)
{
    struct world w;
    struct world_opts o = {.inventory = {.transient = 5}};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    struct order ord = {"o-1", "widget", 2, "alice", 10, {.max_attempts = 2, .first_backoff_ms = 50}};
    treaty_outcome_t out;
    expect_outcome(run_order(c, NULL, &ord, 30000, &out), &out, TREATY_STATUS_COMPENSATED, 1, "2 attempts");
    /* reserve never took effect (its compensation is a null compensation);
     * charge never started. */
    struct state_want q = {.w = &w,
                           .id = &out.txid,
                           .orders = "o-1=cancelled",
                           .stock = "widget=10",
                           .wallet = "alice=100,bob=20",
                           .a_orders = "0:cancel_order=1,0:create_order=1",
                           .a_inventory = "",
                           .a_payment = ""};
    expect_state(&q);
    cr_assert(!support_file_contains(w.inventory.proc->log, "injected transient failure 3 of 5"),
              "reserve was tried more than max_attempts = 2 times (log %s)", w.inventory.proc->log);
    expect_query(&w, &out.txid, TREATY_STATUS_COMPENSATED);
    treaty_client_destroy(&c);
}

Test(e2e_saga, transient_compensation_failures_are_retried_until_success, .init = setup_shared)
{
    struct world w;
    struct world_opts o = {.inventory = {.compensation = 2}};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    struct order ord = {"o-1", "widget", 4, "bob", 50, {.first_backoff_ms = 50}};
    treaty_outcome_t out;
    expect_outcome(run_order(c, NULL, &ord, 30000, &out), &out, TREATY_STATUS_COMPENSATED, 2, "insufficient funds");
    struct state_want q = {.w = &w,
                           .id = &out.txid,
                           .orders = "o-1=cancelled",
                           .stock = "widget=10",
                           .wallet = "alice=100,bob=20",
                           .a_orders = "0:cancel_order=1,0:create_order=1",
                           .a_inventory = "1:release=1,1:reserve=1",
                           .a_payment = ""};
    expect_state(&q);
    cr_assert(support_file_contains(w.inventory.proc->log, "injected transient failure 2 of 2"),
              "release never failed its second try (log %s)", w.inventory.proc->log);
    /* cancel_order ran only after release finally succeeded. */
    cr_assert(applied_at(&w.inventory, &out.txid, 1, "release") < applied_at(&w.orders, &out.txid, 0, "cancel_order"),
              "cancel_order applied before release succeeded");
    treaty_client_destroy(&c);
}

struct log_probe {
    const char *path;
    const char *needle;
};

static bool log_has(void *arg)
{
    const struct log_probe *p = arg;
    return support_file_contains(p->path, p->needle);
}

Test(e2e_saga, stuck_compensation_is_reported_and_still_retried, .init = setup_shared)
{
    struct world w;
    struct world_opts o = {.orders = {.compensation = 1000000},
                           .coord_config = "saga = { stuck_after_attempts = 3; stuck_retry_ms = 200; };"};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    /* charge fails; release works; cancel_order keeps failing: stuck. */
    struct order ord = {"o-1", "widget", 4, "bob", 50, {.first_backoff_ms = 50, .max_backoff_ms = 200}};
    treaty_outcome_t out;
    expect_outcome(run_order(c, NULL, &ord, 30000, &out), &out, TREATY_STATUS_STUCK, 2, "insufficient funds");
    expect_query(&w, &out.txid, TREATY_STATUS_STUCK);
    struct state_want q = {.w = &w,
                           .id = &out.txid,
                           .orders = "o-1=created",
                           .stock = "widget=10",
                           .wallet = "alice=100,bob=20",
                           .a_orders = "0:create_order=1",
                           .a_inventory = "1:release=1,1:reserve=1",
                           .a_payment = ""};
    expect_state(&q);
    cr_assert(support_file_contains(w.d.proc->log, "stuck"), "treatyd did not log the stuck compensation (log %s)",
              w.d.proc->log);

    /* Never dropped: still retried after it was reported stuck... */
    struct log_probe lp = {w.orders.proc->log, "injected transient failure 6 of 1000000"};
    cr_assert(support_wait_until(log_has, &lp, SUPPORT_DEADLINE_MS),
              "cancel_order was not retried after being reported stuck (log %s)", w.orders.proc->log);
    expect_query(&w, &out.txid, TREATY_STATUS_STUCK);

    /* ...so once orders is fixed (restarted without the fault) it completes. */
    cr_assert(support_proc_stop(w.orders.proc, 10000), "orders did not exit 0 on SIGTERM (log %s)", w.orders.proc->log);
    w.orders.compensation = 0;
    shop_spawn(&w, &w.orders);
    treaty_outcome_t fin;
    cr_assert(support_query_saga_final(w.d.endpoint, &out.txid, false, &fin) == TREATY_STATUS_COMPENSATED,
              "after the fix %s is %s, want compensated", txid_str(&out.txid), treaty_status_name(fin.status));
    cr_assert(fin.failed_branch == 2, "failed step %u, want 2", fin.failed_branch);
    struct state_want q2 = {.w = &w,
                            .id = &out.txid,
                            .orders = "o-1=cancelled",
                            .stock = "widget=10",
                            .wallet = "alice=100,bob=20",
                            .a_orders = "0:cancel_order=1,0:create_order=1",
                            .a_inventory = "1:release=1,1:reserve=1",
                            .a_payment = ""};
    expect_state(&q2);
    treaty_client_destroy(&c);
}

/* The client waits a short while and must hear nothing: the coordinator dies
 * first. The client is destroyed before treatyd restarts so that no re-sent
 * SAGA reaches the new incarnation (recovery alone must finish the saga). */
static void run_into_crash(struct world *w, const struct order *o, const char *point, treaty_txid_t *id)
{
    treaty_client_t *c = client(w);
    treaty_outcome_t out;
    int rc = run_order(c, NULL, o, 5000, &out);
    *id = out.txid;
    treaty_client_destroy(&c);
    cr_assert(rc == TREATY_ETIMEDOUT && out.status == TREATY_STATUS_UNKNOWN,
              "saga into fault point %s: want TREATY_ETIMEDOUT/unknown, got %s/%s (reason \"%s\") - the coordinator "
              "did not crash there (log %s)",
              point, treaty_err_name(rc), treaty_status_name(out.status), out.reason, w->d.proc->log);
    expect_proc_killed(w->d.proc, point);
}

Test(e2e_saga, coordinator_killed_between_groups_completes_after_restart, .init = setup_shared)
{
    static const char *const crash[] = {"TREATY_CRASH_AT=coord.saga_between_groups", NULL};
    struct world w;
    struct world_opts o = {.coord_env = crash};
    world_start(&w, &o);

    struct order ord = {"o-1", "widget", 3, "alice", 30, patient};
    treaty_txid_t id;
    run_into_crash(&w, &ord, "coord.saga_between_groups", &id);
    /* The definition was durable before any step ran; the first group is done. */
    cr_assert(journal_count(&w, &id, "saga") == 1 && journal_count(&w, &id, "end") == 0,
              "journal of %s before restart: %lld saga, %lld end records; want 1 and 0", txid_str(&id),
              journal_count(&w, &id, "saga"), journal_count(&w, &id, "end"));
    struct state_want before = {.w = &w,
                                .id = &id,
                                .orders = "o-1=created",
                                .stock = "widget=10",
                                .wallet = "alice=100,bob=20",
                                .a_orders = "0:create_order=1",
                                .a_inventory = "",
                                .a_payment = ""};
    expect_state(&before);

    /* Recovery resumes forward; step 0 may run again (its completion was
     * lazy): the barrier answers that duplicate without applying it. */
    support_treatyd_restart(&w.d, NULL, true);
    treaty_outcome_t fin;
    cr_assert(support_query_saga_final(w.d.endpoint, &id, false, &fin) == TREATY_STATUS_COMPLETED,
              "after recovery %s is %s (reason \"%s\"), want completed", txid_str(&id), treaty_status_name(fin.status),
              fin.reason);
    struct state_want after = {.w = &w,
                               .id = &id,
                               .orders = "o-1=created",
                               .stock = "widget=7",
                               .wallet = "alice=70,bob=20",
                               .a_orders = "0:create_order=1",
                               .a_inventory = "1:reserve=1",
                               .a_payment = "2:charge=1"};
    expect_state(&after);
    expect_end_record(&w, &id);

    /* The client's late resubmission gets the same outcome, applies nothing. */
    treaty_client_t *c = client(&w);
    treaty_outcome_t again;
    expect_outcome(run_order(c, &id, &ord, 30000, &again), &again, TREATY_STATUS_COMPLETED, -1, NULL);
    treaty_client_destroy(&c);
    expect_state(&after);
}

Test(e2e_saga, coordinator_killed_between_groups_then_failure_compensates_recorded_steps, .init = setup_shared)
{
    /* Crash after group 1 (reserve) is done. Step 0's completion record was
     * written lazily while reserve took its 500 ms (lazy_delay_ms = 0), so
     * recovery finds step 0 done and resumes at a later group.
     * When charge then fails, the step recovery found done must still be
     * compensated. */
    static const char *const crash[] = {"TREATY_CRASH_AT=coord.saga_between_groups:2", NULL};
    struct world w;
    struct world_opts o = {.coord_env = crash, .lazy_immediately = true, .inventory = {.delay_ms = 500}};
    world_start(&w, &o);

    struct order ord = {"o-1", "widget", 4, "bob", 50, patient}; /* bob has 20: charge fails */
    treaty_txid_t id;
    run_into_crash(&w, &ord, "coord.saga_between_groups", &id);
    struct state_want before = {.w = &w,
                                .id = &id,
                                .orders = "o-1=created",
                                .stock = "widget=6",
                                .wallet = "alice=100,bob=20",
                                .a_orders = "0:create_order=1",
                                .a_inventory = "1:reserve=1",
                                .a_payment = ""};
    expect_state(&before);

    support_treatyd_restart(&w.d, NULL, true);
    treaty_outcome_t fin;
    cr_assert(support_query_saga_final(w.d.endpoint, &id, false, &fin) == TREATY_STATUS_COMPENSATED,
              "after recovery %s is %s (reason \"%s\"), want compensated", txid_str(&id),
              treaty_status_name(fin.status), fin.reason);
    struct state_want after = {.w = &w,
                               .id = &id,
                               .orders = "o-1=cancelled",
                               .stock = "widget=10",
                               .wallet = "alice=100,bob=20",
                               .a_orders = "0:cancel_order=1,0:create_order=1",
                               .a_inventory = "1:release=1,1:reserve=1",
                               .a_payment = ""};
    expect_state(&after);
    expect_end_record(&w, &id);
}

static void ignore_outcome(void *arg, const treaty_outcome_t *outcome)
{
    (void)arg;
    (void)outcome;
}

struct applied_probe {
    const struct shop *shop;
    const treaty_txid_t *id;
    const char *want;
    char got[512];
};

static bool applied_is(void *arg)
{
    struct applied_probe *p = arg;
    applied_rows(p->shop, p->id, p->got, sizeof p->got);
    return strcmp(p->got, p->want) == 0;
}

Test(e2e_saga, coordinator_sigkilled_while_a_step_runs_completes_after_restart, .init = setup_shared)
{
    /* No fault point: treatyd is SIGKILLed from outside once step 0 is
     * applied, while inventory takes its time over reserve (step 1). Whatever
     * the exact moment, after the restart recovery must finish the saga, and
     * the steps it delivers again (step 0 if its lazy completion record was
     * lost; reserve, whose RESULT went to the dead coordinator) must be
     * answered by the barrier without applying them twice. */
    struct world w;
    struct world_opts o = {0};
    world_start(&w, &o);
    cr_assert(support_proc_stop(w.inventory.proc, 10000), "inventory did not exit 0 on SIGTERM");
    char bin[600];
    snprintf(bin, sizeof bin, "%s/shop_service", support_bin_dir());
    char *argv[] = {bin,
                    (char *)"--endpoint",
                    w.d.endpoint,
                    (char *)"--role",
                    (char *)"inventory",
                    (char *)"--instance",
                    (char *)"i1",
                    (char *)"--db",
                    w.inventory.conninfo,
                    (char *)"--step-delay-ms",
                    (char *)"1500",
                    NULL};
    w.inventory.proc = support_spawn("inventory-slow", argv, NULL);
    shop_wait_up(&w, &w.inventory);

    struct order ord = {"o-1", "widget", 3, "alice", 30, patient};
    treaty_saga_t *s = order_saga(NULL, &ord);
    treaty_txid_t id = *treaty_saga_id(s);
    treaty_client_t *c = client(&w);
    int rc = treaty_client_run_saga_async(c, s, 60000, ignore_outcome, NULL);
    treaty_saga_destroy(&s);
    cr_assert(rc == 0, "treaty_client_run_saga_async: %s (%s)", treaty_err_name(rc), treaty_client_errmsg(c));
    struct applied_probe p = {&w.orders, &id, "0:create_order=1", ""};
    cr_assert(support_wait_until(applied_is, &p, SUPPORT_DEADLINE_MS), "step 0 not applied: applied [%s]", p.got);
    support_proc_kill(w.d.proc);
    treaty_client_destroy(&c);

    support_treatyd_restart(&w.d, NULL, true);
    treaty_outcome_t fin;
    cr_assert(support_query_saga_final(w.d.endpoint, &id, false, &fin) == TREATY_STATUS_COMPLETED,
              "after recovery %s is %s (reason \"%s\"), want completed", txid_str(&id), treaty_status_name(fin.status),
              fin.reason);
    struct state_want after = {.w = &w,
                               .id = &id,
                               .orders = "o-1=created",
                               .stock = "widget=7",
                               .wallet = "alice=70,bob=20",
                               .a_orders = "0:create_order=1",
                               .a_inventory = "1:reserve=1",
                               .a_payment = "2:charge=1"};
    expect_state(&after);
    expect_end_record(&w, &id);
}

Test(e2e_saga, coordinator_killed_during_compensation_compensates_after_restart, .init = setup_shared)
{
    /* Compensations are sent in reverse: step 2's (charge failed: a no-op),
     * release, then cancel_order - right after which treatyd dies. release's
     * RESULT had come back (it is applied), but its completion record is lazy,
     * so recovery most likely sends release again: a duplicate at the barrier.
     * (A crash right after sending release, :2, may lose the message itself
     * inside the dying process; recovery sends it then for the first time.) */
    static const char *const crash[] = {"TREATY_CRASH_AT=coord.saga_during_compensation:3", NULL};
    struct world w;
    struct world_opts o = {.coord_env = crash};
    world_start(&w, &o);

    struct order ord = {"o-1", "widget", 4, "bob", 50, patient};
    treaty_txid_t id;
    run_into_crash(&w, &ord, "coord.saga_during_compensation:3", &id);
    /* The turn-around was durable before any compensation was sent. */
    cr_assert(journal_count(&w, &id, "turn") == 1 && journal_count(&w, &id, "end") == 0,
              "journal of %s before restart: %lld turn, %lld end records; want 1 and 0", txid_str(&id),
              journal_count(&w, &id, "turn"), journal_count(&w, &id, "end"));
    /* release is done; cancel_order may or may not have reached orders. */
    struct state_want before = {.w = &w,
                                .id = &id,
                                .orders = NULL,
                                .stock = "widget=10",
                                .wallet = "alice=100,bob=20",
                                .a_orders = NULL,
                                .a_inventory = "1:release=1,1:reserve=1",
                                .a_payment = ""};
    expect_state(&before);

    support_treatyd_restart(&w.d, NULL, true);
    treaty_outcome_t fin;
    cr_assert(support_query_saga_final(w.d.endpoint, &id, false, &fin) == TREATY_STATUS_COMPENSATED,
              "after recovery %s is %s (reason \"%s\"), want compensated", txid_str(&id),
              treaty_status_name(fin.status), fin.reason);
    cr_assert(fin.failed_branch == 2 && strstr(fin.reason, "insufficient funds") != NULL,
              "after recovery: failed step %u, reason \"%s\"; want 2, insufficient funds", fin.failed_branch,
              fin.reason);
    struct state_want after = {.w = &w,
                               .id = &id,
                               .orders = "o-1=cancelled",
                               .stock = "widget=10",
                               .wallet = "alice=100,bob=20",
                               .a_orders = "0:cancel_order=1,0:create_order=1",
                               .a_inventory = "1:release=1,1:reserve=1",
                               .a_payment = ""};
    expect_state(&after);
    expect_end_record(&w, &id);
}

Test(e2e_saga, resubmitted_saga_returns_same_outcome_and_applies_once, .init = setup_shared)
{
    struct world w;
    struct world_opts o = {0};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    /* A completed saga, resubmitted while the coordinator may still hold it
     * and again after its END record... */
    struct order ok = {"o-1", "widget", 3, "alice", 30, {0}};
    treaty_outcome_t first, again;
    expect_outcome(run_order(c, NULL, &ok, 30000, &first), &first, TREATY_STATUS_COMPLETED, -1, NULL);
    expect_outcome(run_order(c, &first.txid, &ok, 30000, &again), &again, TREATY_STATUS_COMPLETED, -1, NULL);
    cr_assert(memcmp(&again.txid, &first.txid, sizeof first.txid) == 0, "txid changed");
    expect_end_record(&w, &first.txid);
    expect_outcome(run_order(c, &first.txid, &ok, 30000, &again), &again, TREATY_STATUS_COMPLETED, -1, NULL);
    struct state_want q = {.w = &w,
                           .id = &first.txid,
                           .orders = "o-1=created",
                           .stock = "widget=7",
                           .wallet = "alice=70,bob=20",
                           .a_orders = "0:create_order=1",
                           .a_inventory = "1:reserve=1",
                           .a_payment = "2:charge=1"};
    expect_state(&q);

    /* ...and a compensated one: still compensated, although bob could pay
     * by now, and nothing runs again. */
    struct order bad = {"o-2", "widget", 1, "bob", 50, {0}};
    treaty_outcome_t refused;
    expect_outcome(run_order(c, NULL, &bad, 30000, &refused), &refused, TREATY_STATUS_COMPENSATED, 2,
                   "insufficient funds");
    expect_end_record(&w, &refused.txid);
    support_exec(w.payment.conninfo, "UPDATE wallet SET balance = 500 WHERE customer = 'bob'");
    expect_outcome(run_order(c, &refused.txid, &bad, 30000, &again), &again, TREATY_STATUS_COMPENSATED, 2,
                   "insufficient funds");
    struct state_want q2 = {.w = &w,
                            .id = &refused.txid,
                            .orders = "o-1=created,o-2=cancelled",
                            .stock = "widget=7",
                            .wallet = "alice=70,bob=500",
                            .a_orders = "0:cancel_order=1,0:create_order=1",
                            .a_inventory = "1:release=1,1:reserve=1",
                            .a_payment = ""};
    expect_state(&q2);
    /* The first saga's rows are untouched too. */
    struct state_want q3 = {.w = &w,
                            .id = &first.txid,
                            .a_orders = "0:create_order=1",
                            .a_inventory = "1:reserve=1",
                            .a_payment = "2:charge=1"};
    expect_state(&q3);
    treaty_client_destroy(&c);
}

Test(e2e_saga, parallel_group_member_failure_compensates_both_members, .init = setup_shared)
{
    struct world w;
    struct world_opts o = {.stock = "gadget=1,widget=10"};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    /* create_order; then reserve widget:2 and reserve gadget:5 in parallel
     * (one group, steps 1 and 2); then charge. gadget is out of stock. */
    treaty_saga_t *s = NULL;
    int rc = treaty_saga_new(&s);
    cr_assert(rc == 0, "treaty_saga_new: %s", treaty_strerror(rc));
    add_step(s, false, "orders", "create_order", "cancel_order", "o-1", NULL);
    add_step(s, false, "inventory", "reserve", "release", "widget:2", NULL);
    add_step(s, true, "inventory", "reserve", "release", "gadget:5", NULL);
    add_step(s, false, "payment", "charge", "refund", "alice:30", NULL);
    treaty_outcome_t out;
    rc = run(c, s, 30000, &out);
    treaty_saga_destroy(&s);
    expect_outcome(rc, &out, TREATY_STATUS_COMPENSATED, 2, "out of stock");

    /* Both members started; the successful one's release really gave the
     * widgets back, the failed one's was a no-op; charge never started. */
    struct state_want q = {.w = &w,
                           .id = &out.txid,
                           .orders = "o-1=cancelled",
                           .stock = "gadget=1,widget=10",
                           .wallet = "alice=100,bob=20",
                           .a_orders = "0:cancel_order=1,0:create_order=1",
                           .a_inventory = "1:release=1,1:reserve=1",
                           .a_payment = ""};
    expect_state(&q);
    cr_assert(applied_at(&w.inventory, &out.txid, 1, "release") < applied_at(&w.orders, &out.txid, 0, "cancel_order"),
              "cancel_order (group 0) applied before the group of steps 1-2 was compensated");
    expect_query(&w, &out.txid, TREATY_STATUS_COMPENSATED);
    treaty_client_destroy(&c);
}

/* ------------------------------------------- answers that must hold (issue 10) */

/* Seen: the client heard "completed" at once while the END record followed
 * lazily; the coordinator died before it was durable; recovery ran the saga
 * again, the last step's service was gone past its retry budget, and the
 * saga turned around: a later query said "compensated", the order cancelled
 * and the stock released, the wallet still charged. Here lazy records wait
 * 10 s, so nothing but a forced END can be durable when the client hears
 * the outcome and treatyd is killed. */
Test(e2e_saga, saga_told_completed_is_never_compensated_after_a_coordinator_crash, .init = setup_shared)
{
    struct world w;
    struct world_opts o = {.lazy_delay_ms = 10000};
    world_start(&w, &o);

    struct order ord = {"o-1", "widget", 3, "alice", 30, {.max_attempts = 2, .first_backoff_ms = 50}};
    treaty_client_t *c = client(&w);
    treaty_outcome_t out;
    expect_outcome(run_order(c, NULL, &ord, 30000, &out), &out, TREATY_STATUS_COMPLETED, -1, NULL);
    treaty_client_destroy(&c);
    support_proc_kill(w.d.proc);
    support_proc_kill(w.payment.proc); /* the last step's service is gone for good */

    support_treatyd_restart(&w.d, NULL, true);
    treaty_outcome_t fin;
    enum treaty_status st = support_query_saga_final(w.d.endpoint, &out.txid, true, &fin);
    cr_assert(st == TREATY_STATUS_COMPLETED, "saga %s told completed, then %s after a restart (reason \"%s\")",
              txid_str(&out.txid), treaty_status_name(st), fin.reason);
    struct state_want q = {.w = &w,
                           .id = &out.txid,
                           .orders = "o-1=created",
                           .stock = "widget=7",
                           .wallet = "alice=70,bob=20",
                           .a_orders = "0:create_order=1",
                           .a_inventory = "1:reserve=1",
                           .a_payment = "2:charge=1"};
    expect_state(&q);
}

struct turn_probe {
    struct world *w;
    const treaty_txid_t *id;
};

static bool turned(void *arg)
{
    struct turn_probe *p = arg;
    long long n = 0;
    return support_try_scalar(p->w->journal, &n,
                              "SELECT count(*) FROM treaty_records WHERE txid = '%s' AND kind = 'turn'",
                              txid_str(p->id)) &&
           n > 0;
}

/* Seen under repeated coordinator kills: a saga with a parallel group
 * (reserve and charge together); the coordinator died after reserve had
 * applied; after recovery charge failed on funds and the saga was
 * compensated - but reserve was never released: recovery resent the group,
 * inventory had not said HELLO yet, so reserve counted as "not started".
 * Every step that may have run must be compensated. */
Test(e2e_saga, recovered_parallel_group_compensates_a_member_that_ran_before_the_crash, .init = setup_shared)
{
    struct world w;
    /* lazy records wait 10 s: reserve's completion is not durable when treatyd dies */
    struct world_opts o = {.payment = {.delay_ms = 3000}, .lazy_delay_ms = 10000};
    world_start(&w, &o);

    /* create_order; then reserve and charge in parallel; bob has 20 of 50. */
    treaty_saga_t *s = NULL;
    cr_assert_eq(treaty_saga_new(&s), 0);
    add_step(s, false, "orders", "create_order", "cancel_order", "o-1", &patient);
    add_step(s, false, "inventory", "reserve", "release", "widget:2", &patient);
    add_step(s, true, "payment", "charge", "refund", "bob:50", &patient);
    treaty_txid_t id = *treaty_saga_id(s);
    treaty_client_t *c = client(&w);
    int rc = treaty_client_run_saga_async(c, s, 60000, ignore_outcome, NULL);
    treaty_saga_destroy(&s);
    cr_assert(rc == 0, "treaty_client_run_saga_async: %s (%s)", treaty_err_name(rc), treaty_client_errmsg(c));

    /* reserve applied; charge still takes its 3 s: the coordinator dies. */
    struct applied_probe p = {&w.inventory, &id, "1:reserve=1", ""};
    cr_assert(support_wait_until(applied_is, &p, SUPPORT_DEADLINE_MS), "reserve not applied: applied [%s]", p.got);
    support_proc_kill(w.d.proc);
    treaty_client_destroy(&c);
    /* inventory is slow to come back: not registered when recovery resends the group */
    cr_assert(kill(w.inventory.proc->pid, SIGSTOP) == 0, "SIGSTOP inventory");
    support_treatyd_restart(&w.d, NULL, true);
    struct turn_probe tp = {&w, &id};
    bool t = support_wait_until(turned, &tp, SUPPORT_DEADLINE_MS);
    cr_assert(kill(w.inventory.proc->pid, SIGCONT) == 0, "SIGCONT inventory");
    cr_assert(t, "saga %s did not turn around after charge failed (logs %s)", txid_str(&id), support_log_dir());

    treaty_outcome_t fin;
    enum treaty_status st = support_query_saga_final(w.d.endpoint, &id, false, &fin);
    cr_assert(st == TREATY_STATUS_COMPENSATED, "saga %s: %s (reason \"%s\"), want compensated", txid_str(&id),
              treaty_status_name(st), fin.reason);
    struct state_want q = {.w = &w,
                           .id = &id,
                           .orders = "o-1=cancelled",
                           .stock = "widget=10",
                           .wallet = "alice=100,bob=20",
                           .a_orders = "0:cancel_order=1,0:create_order=1",
                           .a_inventory = "1:release=1,1:reserve=1",
                           .a_payment = ""};
    expect_state(&q);
}

/* The same rule as for 2PC: a QUERY of a saga txid nobody submitted is
 * answered "aborted" only once that is recorded, and it holds - the saga
 * submitted afterwards with that txid never runs. */
Test(e2e_saga, aborted_answer_to_a_query_of_an_unknown_saga_txid_is_final, .init = setup_shared)
{
    struct world w;
    struct world_opts o = {0};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);
    treaty_txid_t id;
    cr_assert_eq(treaty_txid_generate(&id), 0);
    treaty_outcome_t q, out;
    int rc = treaty_client_query(c, &id, 5000, &q);
    cr_assert(rc == 0 && q.error == 0 && q.status == TREATY_STATUS_ABORTED, "query of unknown %s: %s %s (error %s)",
              txid_str(&id), treaty_err_name(rc), treaty_status_name(q.status), treaty_err_name(q.error));
    struct order ord = {"o-1", "widget", 3, "alice", 30, {0}};
    rc = run_order(c, &id, &ord, 30000, &out);
    cr_assert(rc == 0 && out.error == 0 && out.status == TREATY_STATUS_ABORTED,
              "saga submitted with a txid already answered aborted: %s %s (error %s, \"%s\")", treaty_err_name(rc),
              treaty_status_name(out.status), treaty_err_name(out.error), out.reason);
    struct state_want st = {.w = &w,
                            .id = &id,
                            .orders = "",
                            .stock = "widget=10",
                            .wallet = "alice=100,bob=20",
                            .a_orders = "",
                            .a_inventory = "",
                            .a_payment = ""};
    expect_state(&st);
    treaty_client_destroy(&c);
}

/* Seen: retry counts, backoffs and deadlines came from the client uncapped
 * (500 sagas with a 23-day backoff filled max_inflight, and the block
 * survived a restart). With the default caps such sagas are refused, naming
 * the cap, and nothing runs. */
Test(e2e_saga, sagas_beyond_the_retry_and_deadline_caps_are_refused, .init = setup_shared)
{
    struct world w;
    struct world_opts o = {0};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);
    struct {
        treaty_retry_t retry;
        unsigned deadline_ms;
        const char *cap;
    } bad[] = {
        {{.max_backoff_ms = 23u * 24 * 3600 * 1000}, 0, "max_backoff_ms"},
        {{.first_backoff_ms = 600000}, 0, "max_backoff_ms"},
        {{.max_attempts = 60000}, 0, "max_attempts"},
        {{.try_timeout_ms = 3600000}, 0, "max_try_timeout_ms"},
        {{0}, 30u * 24 * 3600 * 1000, "max_deadline_ms"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct order ord = {"o-1", "widget", 3, "alice", 30, bad[i].retry};
        treaty_saga_t *s = order_saga(NULL, &ord);
        if (bad[i].deadline_ms)
            cr_assert_eq(treaty_saga_set_deadline(s, bad[i].deadline_ms), 0);
        treaty_outcome_t out;
        int rc = run(c, s, 30000, &out);
        treaty_saga_destroy(&s);
        cr_assert(rc == 0 && out.error == TREATY_ETOOBIG && strstr(out.reason, bad[i].cap) != NULL,
                  "saga %zu over the cap %s: want TREATY_ETOOBIG naming it, got %s %s / %s (\"%s\")", i, bad[i].cap,
                  treaty_err_name(rc), treaty_status_name(out.status), treaty_err_name(out.error), out.reason);
    }
    struct state_want st = {.w = &w, .orders = "", .stock = "widget=10", .wallet = "alice=100,bob=20"};
    expect_state(&st);
    treaty_client_destroy(&c);
}

/* ------------------------------------------------------------ treatyctl (issue 13) */

/* treatyctl --json ARGS against w's treatyd: asserts the exit status, returns
 * the answer parsed (caller: json_decref). */
static json_t *ctl_json(struct world *w, int want_rc, const char *args)
{
    static char out[1 << 18];
    char full[1024], err[512];
    snprintf(full, sizeof full, "--json %s", args);
    int rc = support_ctl(&w->d, full, out, sizeof out, err, sizeof err);
    cr_assert(rc == want_rc, "treatyctl %s: exit %d, want %d (stderr: %s; stdout: %.300s)", full, rc, want_rc, err,
              out);
    json_error_t e;
    json_t *a = json_loads(out, 0, &e);
    cr_assert(json_is_object(a), "treatyctl %s: stdout is not a JSON object (%s): %.300s", full, e.text, out);
    return a;
}

Test(e2e_saga, treatyctl_gives_up_a_stuck_compensation_and_the_saga_finishes_compensated, .init = setup_shared)
{
    struct world w;
    struct world_opts o = {.orders = {.compensation = 1000000},
                           .coord_config = "saga = { stuck_after_attempts = 3; stuck_retry_ms = 200; };"};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    /* charge fails; release works; cancel_order keeps failing: stuck. */
    struct order ord = {"o-1", "widget", 4, "bob", 50, {.first_backoff_ms = 50, .max_backoff_ms = 200}};
    treaty_outcome_t out;
    expect_outcome(run_order(c, NULL, &ord, 30000, &out), &out, TREATY_STATUS_STUCK, 2, "insufficient funds");
    const char *id = txid_str(&out.txid);

    json_t *a = ctl_json(&w, 0, "list --state stuck");
    json_t *t = json_array_get(json_object_get(a, "transactions"), 0);
    cr_assert(t != NULL && strcmp(json_string_value(json_object_get(t, "txid")), id) == 0, "stuck saga not listed");
    cr_assert_str_eq(json_string_value(json_object_get(t, "state")), "compensating");
    json_decref(a);
    a = ctl_json(&w, 0, "status");
    cr_assert(json_integer_value(json_object_get(json_object_get(a, "counts"), "stuck")) == 1, "status: stuck != 1");
    json_decref(a);

    /* show: step 0's compensation stuck at o1, step 1 compensated. */
    char args[256];
    snprintf(args, sizeof args, "show %s", id);
    a = ctl_json(&w, 0, args);
    json_t *steps = json_object_get(a, "steps");
    json_t *s0 = json_array_get(steps, 0), *s1 = json_array_get(steps, 1);
    cr_assert(json_is_true(json_object_get(s0, "stuck")), "step 0 not shown stuck");
    cr_assert_str_eq(json_string_value(json_object_get(s0, "state")), "compensating");
    cr_assert_str_eq(json_string_value(json_object_get(s0, "instance")), "o1");
    cr_assert_str_eq(json_string_value(json_object_get(s1, "state")), "compensated");
    json_decref(a);

    /* Only a stuck compensation may be given up: step 1 is done, exit 1. */
    static char buf[1 << 16];
    char err[512];
    snprintf(args, sizeof args, "resolve %s give-up 1 --reason no", id);
    cr_assert(support_ctl(&w.d, args, buf, sizeof buf, err, sizeof err) == 1, "give-up of step 1 not refused: %s", err);

    /* The operator cancelled order o-1 by hand. */
    snprintf(args, sizeof args, "resolve %s give-up 0 --reason cancelled-o-1-by-hand", id);
    a = ctl_json(&w, 0, args);
    cr_assert_str_eq(json_string_value(json_object_get(a, "resolved")), "give-up");
    json_decref(a);
    treaty_outcome_t fin;
    cr_assert(support_query_saga_final(w.d.endpoint, &out.txid, false, &fin) == TREATY_STATUS_COMPENSATED,
              "after give-up %s is %s, want compensated", id, treaty_status_name(fin.status));

    /* show: the audit record names step 0, who and why, and comes right
     * before the STEP record that counts the compensation done. */
    snprintf(args, sizeof args, "show %s", id);
    a = ctl_json(&w, 0, args);
    size_t i;
    json_t *r;
    int audit_at = -1, step_at = -1;
    json_array_foreach(json_object_get(a, "records"), i, r)
    {
        const char *kind = json_string_value(json_object_get(r, "kind"));
        if (strcmp(kind, "audit") == 0) {
            audit_at = (int)i;
            cr_assert(json_integer_value(json_object_get(r, "step")) == 0, "audit record not for step 0");
            cr_assert(strstr(json_string_value(json_object_get(r, "detail")), "give-up by uid ") != NULL &&
                          strstr(json_string_value(json_object_get(r, "detail")), "cancelled-o-1-by-hand") != NULL,
                      "audit detail: %s", json_string_value(json_object_get(r, "detail")));
        } else if (audit_at >= 0 && step_at < 0 && strcmp(kind, "step") == 0) {
            step_at = (int)i;
            cr_assert(json_integer_value(json_object_get(r, "step")) == 0 &&
                          strcmp(json_string_value(json_object_get(r, "detail")), "compensation") == 0,
                      "the record after the audit is not step 0's compensation");
        }
    }
    cr_assert(audit_at >= 0 && step_at == audit_at + 1, "audit at %d, step record at %d", audit_at, step_at);
    json_decref(a);

    /* The order row was not touched by treaty (the operator's own business). */
    struct state_want q = {.w = &w,
                           .id = &out.txid,
                           .orders = "o-1=created",
                           .stock = "widget=10",
                           .wallet = "alice=100,bob=20",
                           .a_orders = "0:create_order=1",
                           .a_inventory = "1:release=1,1:reserve=1",
                           .a_payment = ""};
    expect_state(&q);
    treaty_client_destroy(&c);
}
