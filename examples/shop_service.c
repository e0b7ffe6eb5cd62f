/*
 * shop_service.c - an example Treaty saga participant: one service of an
 * online shop (orders, inventory or payment), each with its own PostgreSQL
 * database, whose steps run through the SDK's barrier.
 *
 *   shop_service --endpoint EP --role orders|inventory|payment --instance ID --db CONNINFO
 *                [--server-key FILE --key BASE] (CURVE: see example_keys.h)
 *                [--setup "widget=10,gadget=1"] [--transient-failures N]
 *                [--compensation-failures N] [--step-delay-ms N]
 *
 * The service name is the role. Tables (created if missing):
 *   orders:    orders(id text primary key, status text)
 *   inventory: stock(item text primary key, qty int check (qty >= 0))
 *   payment:   wallet(customer text primary key, balance bigint check (balance >= 0))
 *   every role: applied(txid text, step int, op text, at timestamptz default now())
 *
 * Actions and compensations (payload text in parentheses):
 *   orders     create_order (ORDER)        INSERT status 'created'; an existing
 *                                          ORDER is a business failure
 *              cancel_order (ORDER)        UPDATE status 'cancelled'
 *   inventory  reserve (ITEM:QTY)          qty -= QTY where qty >= QTY; no row:
 *                                          business failure "out of stock"
 *              release (ITEM:QTY)          qty += QTY
 *   payment    charge (CUSTOMER:AMOUNT)    balance -= AMOUNT where balance >= AMOUNT;
 *                                          no row: business failure "insufficient funds"
 *              refund (CUSTOMER:AMOUNT)    balance += AMOUNT
 *
 * Every handler is registered with treaty_pg_on_action / treaty_pg_on_compensation,
 * so the SDK runs it inside a local transaction that also writes the barrier
 * row: a duplicate is applied once, a compensation that arrives before its
 * action does nothing, and an action after its compensation is refused. Each
 * handler that changes something also inserts one row (txid, step, op = the
 * handler's name) into applied, in that same transaction: tests count those
 * rows to see that every action and compensation took effect exactly once.
 *
 * Fault injection, counted in this process per (txid, step):
 *   --transient-failures N     the first N tries of each action return a
 *                              transient error (TREATY_EIO) before touching
 *                              anything; the coordinator retries per the
 *                              step's policy
 *   --compensation-failures N  the same for compensations (N huge: a
 *                              compensation that never succeeds: stuck)
 *   --step-delay-ms N          sleep N ms at the start of every handler
 * Crash points come from the SDK (env TREATY_CRASH_AT, see participant-sdk/src/fault.h).
 *
 * The service takes no 2PC branches; a PREPARE with the payload "ping" is
 * answered with a NO vote whose reason is "pong from ROLE/INSTANCE" (a health
 * probe, as bank_service has), any other PREPARE with a NO vote.
 *
 * SIGTERM or SIGINT stops the participant cleanly; exit status 0.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "example_keys.h"
#include "treaty.h"

#define NAME_MAX_LEN 64

enum role { ROLE_ORDERS, ROLE_INVENTORY, ROLE_PAYMENT };

/* Tries seen so far of one step's action or compensation. */
struct tries {
    treaty_txid_t txid;
    unsigned step;
    bool compensation;
    unsigned long n;
};

struct shop {
    enum role role;
    const char *service; /* "orders", "inventory", "payment" */
    const char *instance;
    unsigned long transient_failures;
    unsigned long compensation_failures;
    int step_delay_ms;
    struct tries *tries; /* touched only on the participant's thread */
    size_t ntries, cap;
    unsigned long applied, failed, injected;
};

static atomic_bool stopping;

static void say(const struct shop *sh, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void say(const struct shop *sh, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    fprintf(stderr, "%02d:%02d:%02d.%03ld shop_service %s/%s: %s\n", tm.tm_hour, tm.tm_min, tm.tm_sec,
            ts.tv_nsec / 1000000, sh->service, sh->instance, msg);
}

/* Sleeps ms, waking early when the process is asked to stop. */
static void delay_ms(int ms)
{
    while (ms > 0 && !atomic_load(&stopping)) {
        int step = ms < 50 ? ms : 50;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)step * 1000000L};
        nanosleep(&ts, NULL);
        ms -= step;
    }
}

/* Counts one more try of (txid, step, kind); returns the count before it, or
 * ULONG_MAX when out of memory (treated as "inject no failure"). */
static unsigned long count_try(struct shop *sh, const treaty_step_t *s, bool compensation)
{
    for (size_t i = 0; i < sh->ntries; i++) {
        struct tries *t = &sh->tries[i];
        if (t->step == s->step && t->compensation == compensation && memcmp(&t->txid, &s->txid, sizeof t->txid) == 0)
            return t->n++;
    }
    if (sh->ntries == sh->cap) {
        size_t cap = sh->cap ? sh->cap * 2 : 64;
        struct tries *n = realloc(sh->tries, cap * sizeof *n);
        if (n == NULL)
            return ULONG_MAX;
        sh->tries = n;
        sh->cap = cap;
    }
    sh->tries[sh->ntries++] = (struct tries){.txid = s->txid, .step = s->step, .compensation = compensation, .n = 1};
    return 0;
}

/* The payload as a NUL-terminated string (at most NAME_MAX_LEN + 24 bytes). 0 or -1. */
static int payload_text(const treaty_step_t *s, char *buf, size_t len)
{
    if (s->payload == NULL || s->len == 0 || s->len >= len)
        return -1;
    memcpy(buf, s->payload, s->len);
    buf[s->len] = '\0';
    if (strlen(buf) != s->len)
        return -1; /* an embedded NUL */
    return 0;
}

/* Parses "NAME:N" with N > 0. 0 or -1. */
static int parse_name_qty(const treaty_step_t *s, char *name, long long *qty)
{
    char buf[NAME_MAX_LEN + 24];
    if (payload_text(s, buf, sizeof buf) != 0)
        return -1;
    char *colon = strrchr(buf, ':');
    if (colon == NULL || colon == buf || (size_t)(colon - buf) >= NAME_MAX_LEN)
        return -1;
    *colon = '\0';
    char *end = NULL;
    errno = 0;
    long long v = strtoll(colon + 1, &end, 10);
    if (errno != 0 || end == colon + 1 || *end != '\0' || v <= 0 || v > INT_MAX)
        return -1;
    memcpy(name, buf, (size_t)(colon - buf) + 1);
    *qty = v;
    return 0;
}

/* Runs a parameterized command; returns the number of rows it touched, or
 * TREATY_EPG (the reason says why; the SDK rolls the transaction back). */
static long run(PGconn *conn, const char *sql, int nparams, const char *const *params, char *reason)
{
    PGresult *r = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        snprintf(reason, TREATY_REASON_MAX, "database error %s: %s", state != NULL ? state : "?",
                 PQresultErrorMessage(r));
        reason[strcspn(reason, "\n")] = '\0';
        PQclear(r);
        return TREATY_EPG;
    }
    long n = strtol(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return n;
}

/* Records that (txid, step, op) took effect, in the handler's transaction. */
static int record_applied(PGconn *conn, const treaty_step_t *s, char *reason)
{
    char txid[TREATY_TXID_STRLEN], step[16];
    treaty_txid_format(&s->txid, txid);
    snprintf(step, sizeof step, "%u", s->step);
    const char *params[3] = {txid, step, s->name};
    long n = run(conn, "INSERT INTO applied (txid, step, op) VALUES ($1, $2::int, $3)", 3, params, reason);
    return n < 0 ? (int)n : 0;
}

/* What every handler does first: the injected delay and transient failures.
 * Returns 0 to go on, or a negative TREATY_E* to return at once. */
static int before_step(struct shop *sh, const treaty_step_t *s, bool compensation, char *reason)
{
    char txid[TREATY_TXID_STRLEN];
    treaty_txid_format(&s->txid, txid);
    if (sh->step_delay_ms > 0)
        delay_ms(sh->step_delay_ms);
    unsigned long limit = compensation ? sh->compensation_failures : sh->transient_failures;
    if (limit == 0)
        return 0;
    unsigned long n = count_try(sh, s, compensation);
    if (n == ULONG_MAX || n >= limit)
        return 0;
    sh->injected++;
    snprintf(reason, TREATY_REASON_MAX, "injected transient failure %lu of %lu", n + 1, limit);
    say(sh, "%s %s %s:%u (attempt %u) -> transient: %s", compensation ? "compensation" : "action", s->name, txid,
        s->step, s->attempt, reason);
    return TREATY_EIO;
}

/* Logs a handler's result and passes it on. */
static int done(struct shop *sh, const treaty_step_t *s, bool compensation, const char *what, int rc,
                const char *reason)
{
    char txid[TREATY_TXID_STRLEN];
    treaty_txid_format(&s->txid, txid);
    if (rc == TREATY_STEP_OK) {
        sh->applied++;
        say(sh, "%s %s %s:%u (attempt %u) %s -> ok", compensation ? "compensation" : "action", s->name, txid, s->step,
            s->attempt, what);
    } else if (rc == TREATY_STEP_FAILED) {
        sh->failed++;
        say(sh, "%s %s %s:%u (attempt %u) %s -> FAILED: %s", compensation ? "compensation" : "action", s->name, txid,
            s->step, s->attempt, what, reason);
    } else {
        say(sh, "%s %s %s:%u (attempt %u) %s -> %s: %s", compensation ? "compensation" : "action", s->name, txid,
            s->step, s->attempt, what, treaty_err_name(rc), reason);
    }
    return rc;
}

/* ------------------------------------------------------------------ orders */

static int order_step(struct shop *sh, PGconn *conn, const treaty_step_t *s, char *reason, bool compensation)
{
    int rc = before_step(sh, s, compensation, reason);
    if (rc < 0)
        return rc;
    char order[NAME_MAX_LEN + 24];
    if (payload_text(s, order, sizeof order) != 0 || strlen(order) >= NAME_MAX_LEN) {
        snprintf(reason, TREATY_REASON_MAX, "malformed payload (want ORDER)");
        /* A compensation must not fail for good; its payload is the client's
         * mistake, retried until an operator looks (the saga shows stuck). */
        return done(sh, s, compensation, "?", compensation ? TREATY_EINVAL : TREATY_STEP_FAILED, reason);
    }
    const char *params[1] = {order};
    long n;
    if (!compensation) {
        n = run(conn, "INSERT INTO orders (id, status) VALUES ($1, 'created') ON CONFLICT (id) DO NOTHING", 1, params,
                reason);
        if (n == 0) {
            snprintf(reason, TREATY_REASON_MAX, "order %s already exists", order);
            return done(sh, s, compensation, order, TREATY_STEP_FAILED, reason);
        }
    } else {
        n = run(conn, "UPDATE orders SET status = 'cancelled' WHERE id = $1", 1, params, reason);
    }
    if (n < 0)
        return done(sh, s, compensation, order, (int)n, reason);
    rc = record_applied(conn, s, reason);
    return done(sh, s, compensation, order, rc < 0 ? rc : TREATY_STEP_OK, reason);
}

static int create_order(void *arg, struct pg_conn *conn, const treaty_step_t *s, char *reason)
{
    return order_step(arg, conn, s, reason, false);
}

static int cancel_order(void *arg, struct pg_conn *conn, const treaty_step_t *s, char *reason)
{
    return order_step(arg, conn, s, reason, true);
}

/* ------------------------------------------------------ inventory, payment */

/* A change of "NAME:QTY" in table: negative (action: refused when it would go
 * below zero) or positive (compensation: always applies). */
static int quantity_step(struct shop *sh, PGconn *conn, const treaty_step_t *s, char *reason, bool compensation)
{
    int rc = before_step(sh, s, compensation, reason);
    if (rc < 0)
        return rc;
    bool inventory = sh->role == ROLE_INVENTORY;
    char name[NAME_MAX_LEN], qtytxt[32], what[NAME_MAX_LEN + 40];
    long long qty = 0;
    if (parse_name_qty(s, name, &qty) != 0) {
        snprintf(reason, TREATY_REASON_MAX, "malformed payload (want %s)", inventory ? "ITEM:QTY" : "CUSTOMER:AMOUNT");
        return done(sh, s, compensation, "?", compensation ? TREATY_EINVAL : TREATY_STEP_FAILED, reason);
    }
    snprintf(qtytxt, sizeof qtytxt, "%lld", qty);
    snprintf(what, sizeof what, "%s %c%lld", name, compensation ? '+' : '-', qty);
    const char *params[2] = {name, qtytxt};
    const char *sql;
    if (inventory)
        sql = compensation ? "UPDATE stock SET qty = qty + $2::int WHERE item = $1"
                           : "UPDATE stock SET qty = qty - $2::int WHERE item = $1 AND qty >= $2::int";
    else
        sql = compensation
                  ? "UPDATE wallet SET balance = balance + $2::bigint WHERE customer = $1"
                  : "UPDATE wallet SET balance = balance - $2::bigint WHERE customer = $1 AND balance >= $2::bigint";
    long n = run(conn, sql, 2, params, reason);
    if (n < 0)
        return done(sh, s, compensation, what, (int)n, reason);
    if (n == 0 && !compensation) {
        if (inventory)
            snprintf(reason, TREATY_REASON_MAX, "out of stock: %s (wanted %lld)", name, qty);
        else
            snprintf(reason, TREATY_REASON_MAX, "insufficient funds: %s (wanted %lld)", name, qty);
        return done(sh, s, compensation, what, TREATY_STEP_FAILED, reason);
    }
    if (n == 0)
        say(sh, "compensation %s: no row %s (nothing to give back to)", s->name, name);
    rc = record_applied(conn, s, reason);
    return done(sh, s, compensation, what, rc < 0 ? rc : TREATY_STEP_OK, reason);
}

static int take(void *arg, struct pg_conn *conn, const treaty_step_t *s, char *reason)
{
    return quantity_step(arg, conn, s, reason, false);
}

static int give_back(void *arg, struct pg_conn *conn, const treaty_step_t *s, char *reason)
{
    return quantity_step(arg, conn, s, reason, true);
}

/* --------------------------------------------------------------- 2PC probe */

static int work(void *arg, struct pg_conn *conn, const treaty_branch_t *b, char *reason)
{
    struct shop *sh = arg;
    (void)conn;
    if (b->len == 4 && memcmp(b->payload, "ping", 4) == 0) {
        snprintf(reason, TREATY_REASON_MAX, "pong from %s/%s", sh->service, sh->instance);
        return TREATY_VOTE_NO;
    }
    snprintf(reason, TREATY_REASON_MAX, "%s serves saga steps only, no 2PC branches", sh->service);
    return TREATY_VOTE_NO;
}

/* ------------------------------------------------------------------- setup */

static int exec_ok(const struct shop *sh, PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    int rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : -1;
    if (rc != 0)
        say(sh, "setup: %s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    return rc;
}

/* Creates the role's tables and seeds "key=value,..." rows (existing rows are kept). */
static int setup_db(const struct shop *sh, const char *conninfo, const char *setup)
{
    static const char *const create[] = {
        [ROLE_ORDERS] = "CREATE TABLE IF NOT EXISTS orders (id text PRIMARY KEY, status text NOT NULL)",
        [ROLE_INVENTORY] =
            "CREATE TABLE IF NOT EXISTS stock (item text PRIMARY KEY, qty int NOT NULL CHECK (qty >= 0))",
        [ROLE_PAYMENT] = "CREATE TABLE IF NOT EXISTS wallet (customer text PRIMARY KEY,"
                         " balance bigint NOT NULL CHECK (balance >= 0))",
    };
    static const char *const seed[] = {
        [ROLE_ORDERS] = "INSERT INTO orders (id, status) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        [ROLE_INVENTORY] = "INSERT INTO stock (item, qty) VALUES ($1, $2::int) ON CONFLICT (item) DO NOTHING",
        [ROLE_PAYMENT] =
            "INSERT INTO wallet (customer, balance) VALUES ($1, $2::bigint) ON CONFLICT (customer) DO NOTHING",
    };
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        say(sh, "cannot connect to the database: %s", PQerrorMessage(c));
        PQfinish(c);
        return -1;
    }
    /* Instances of one service may start together: CREATE TABLE IF NOT EXISTS
     * races on the catalog, so the creates run under a transaction-level lock. */
    int rc = exec_ok(sh, c, "SET client_min_messages = warning");
    if (rc == 0)
        rc = exec_ok(sh, c, "BEGIN");
    if (rc == 0)
        rc = exec_ok(sh, c, "DO $$ BEGIN PERFORM pg_advisory_xact_lock(7600002); END $$");
    if (rc == 0)
        rc = exec_ok(sh, c, create[sh->role]);
    if (rc == 0)
        rc = exec_ok(sh, c,
                     "CREATE TABLE IF NOT EXISTS applied (txid text NOT NULL, step int NOT NULL,"
                     " op text NOT NULL, at timestamptz NOT NULL DEFAULT now())");
    if (rc == 0)
        rc = exec_ok(sh, c, "COMMIT");
    char *list = strdup(setup != NULL ? setup : "");
    if (list == NULL)
        rc = -1;
    char *save = NULL;
    for (char *item = rc == 0 ? strtok_r(list, ",", &save) : NULL; item != NULL && rc == 0;
         item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (eq == NULL || eq == item) {
            say(sh, "--setup: \"%s\" is not KEY=VALUE", item);
            rc = -1;
            break;
        }
        *eq = '\0';
        const char *params[2] = {item, eq + 1};
        PGresult *r = PQexecParams(c, seed[sh->role], 2, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            say(sh, "--setup %s=%s: %s", item, eq + 1, PQresultErrorMessage(r));
            rc = -1;
        }
        PQclear(r);
    }
    free(list);
    PQfinish(c);
    return rc;
}

/* Registers the role's action and compensation through the barrier. */
static int register_steps(struct shop *sh, treaty_participant_t *p)
{
    static const struct {
        const char *action, *compensation;
        treaty_pg_step_fn act, comp;
    } steps[] = {
        [ROLE_ORDERS] = {"create_order", "cancel_order", create_order, cancel_order},
        [ROLE_INVENTORY] = {"reserve", "release", take, give_back},
        [ROLE_PAYMENT] = {"charge", "refund", take, give_back},
    };
    int rc = treaty_pg_on_action(p, steps[sh->role].action, steps[sh->role].act, sh);
    if (rc == 0)
        rc = treaty_pg_on_compensation(p, steps[sh->role].compensation, steps[sh->role].comp, sh);
    if (rc != 0)
        say(sh, "cannot register %s/%s: %s (%s)", steps[sh->role].action, steps[sh->role].compensation,
            treaty_strerror(rc), treaty_participant_errmsg(p));
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: shop_service --endpoint EP --role orders|inventory|payment --instance ID --db CONNINFO\n"
               "                    [--setup \"KEY=VALUE,...\"] [--transient-failures N]\n"
               "                    [--compensation-failures N] [--step-delay-ms N]\n"
               "                    " EXAMPLE_KEYS_USAGE "\n");
}

static bool parse_count(const char *s, unsigned long *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v >= ULONG_MAX)
        return false;
    *out = (unsigned long)v;
    return true;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"endpoint", required_argument, NULL, 'e'},
        {"role", required_argument, NULL, 'r'},
        {"instance", required_argument, NULL, 'i'},
        {"db", required_argument, NULL, 'd'},
        {"setup", required_argument, NULL, 's'},
        {"transient-failures", required_argument, NULL, 't'},
        {"compensation-failures", required_argument, NULL, 'c'},
        {"step-delay-ms", required_argument, NULL, 'w'},
        {"server-key", required_argument, NULL, 'K'},
        {"key", required_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *endpoint = NULL, *db = NULL, *setup = NULL, *role = NULL;
    struct shop sh = {.service = "shop", .instance = "?"};
    unsigned long delay = 0;
    bool ok = true;
    struct example_keys keys = {0};
    int ch;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'e':
            endpoint = optarg;
            break;
        case 'r':
            role = optarg;
            break;
        case 'i':
            sh.instance = optarg;
            break;
        case 'd':
            db = optarg;
            break;
        case 's':
            setup = optarg;
            break;
        case 't':
            ok = ok && parse_count(optarg, &sh.transient_failures);
            break;
        case 'c':
            ok = ok && parse_count(optarg, &sh.compensation_failures);
            break;
        case 'w':
            ok = ok && parse_count(optarg, &delay) && delay <= 600000;
            break;
        case 'K':
            keys.server_key_file = optarg;
            break;
        case 'k':
            keys.key_base = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (role != NULL && strcmp(role, "orders") == 0)
        sh.role = ROLE_ORDERS;
    else if (role != NULL && strcmp(role, "inventory") == 0)
        sh.role = ROLE_INVENTORY;
    else if (role != NULL && strcmp(role, "payment") == 0)
        sh.role = ROLE_PAYMENT;
    else
        ok = false;
    if (!ok || endpoint == NULL || db == NULL || strcmp(sh.instance, "?") == 0 || optind != argc) {
        usage(stderr);
        return 2;
    }
    int keys_failed;
    const treaty_security_t *security = example_keys_load(&keys, "shop_service", &keys_failed);
    if (keys_failed)
        return 2;
    sh.service = role;
    sh.step_delay_ms = (int)delay;

    /* Signals are taken by sigwait() below; block them before any thread
     * (the SDK's) exists so that every thread inherits the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    if (setup_db(&sh, db, setup) != 0)
        return 1;

    treaty_participant_t *p = NULL;
    int rc = treaty_pg_participant_new_secure(endpoint, sh.service, sh.instance, db, work, &sh, security, &p);
    if (rc != 0) {
        say(&sh, "cannot create the participant: %s (%s)", treaty_strerror(rc),
            p != NULL ? treaty_participant_errmsg(p) : "no detail");
        treaty_participant_destroy(&p);
        return 1;
    }
    if (register_steps(&sh, p) != 0) {
        treaty_participant_destroy(&p);
        return 1;
    }
    rc = treaty_participant_start(p);
    if (rc != 0) {
        say(&sh, "cannot start the participant: %s (%s)", treaty_strerror(rc), treaty_participant_errmsg(p));
        treaty_participant_destroy(&p);
        return 1;
    }
    say(&sh, "ready: serving %s at %s (transient failures %lu, compensation failures %lu, step delay %d ms)",
        sh.service, endpoint, sh.transient_failures, sh.compensation_failures, sh.step_delay_ms);

    int sig = 0;
    while (sigwait(&sigs, &sig) != 0) {
    }
    say(&sh, "%s: stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
    atomic_store(&stopping, true);
    rc = treaty_participant_stop(p);
    if (rc != 0)
        say(&sh, "stop: %s (%s)", treaty_strerror(rc), treaty_participant_errmsg(p));
    treaty_participant_destroy(&p);
    say(&sh, "stopped: %lu steps applied, %lu failed, %lu transient failures injected", sh.applied, sh.failed,
        sh.injected);
    free(sh.tries);
    return 0;
}
