/*
 * saga_demo.c - the Treaty saga demo client: orders in an online shop made of
 * three services, each a shop_service with its own PostgreSQL database.
 *
 *   saga_demo --endpoint EP --db-orders CONNINFO --db-inventory CONNINFO --db-payment CONNINFO
 *             [--server-key FILE --key BASE] (CURVE: see example_keys.h; a client key)
 *
 * An order is a saga of three steps, each with its compensation:
 *   0  orders.create_order  (ORDER)           undone by cancel_order
 *   1  inventory.reserve    (ITEM:QTY)        undone by release
 *   2  payment.charge       (CUSTOMER:AMOUNT) undone by refund
 *
 * Expected set-up (examples/demo.sh): stock widget=10; wallets alice=100,
 * bob=20; inventory started with --transient-failures 1, so the first try of
 * every reserve fails with a transient error and the coordinator retries it
 * (retry policy max_attempts 3 on that step).
 *
 * The demo runs three sagas:
 *   order-1  alice buys 2 widgets for 30: completes.
 *   order-2  bob buys 1 widget for 50, but has 20: charge fails ("insufficient
 *            funds"), the saga turns around, release gives the widget back
 *            and cancel_order cancels the order: compensated, failed step 2.
 *   order-3  alice buys 3 widgets for 25; reserve fails transiently first and
 *            the retry succeeds: completes.
 * It prints each saga's path (outcome, failed step, reason), then the rows of
 * orders, stock and wallet read straight from the three databases, and the
 * applied rows (one per action or compensation that took effect).
 *
 * Exit 0 only if every outcome was as expected and the databases hold exactly
 * orders order-1 created, order-2 cancelled, order-3 created; widget 5;
 * alice 45, bob 20; and every action and compensation was applied once.
 */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "example_keys.h"
#include "treaty.h"

#define SAGA_TIMEOUT_MS 30000
#define UP_WAIT_MS 30000

struct service {
    const char *name; /* "orders" */
    const char *table_sql;
    const char *conninfo;
};

struct order {
    const char *id;
    const char *item;
    int qty;
    const char *customer;
    long long amount;
    const char *story;
    enum treaty_status want;
    unsigned want_failed_step; /* TREATY_NO_BRANCH when none */
    const char *want_reason;   /* part of the reason, or NULL */
    treaty_txid_t txid;
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The one text value of a query on a fresh connection ("" for NULL); false
 * when it cannot be read. */
static bool query_text(const char *conninfo, const char *sql, const char *param, char *buf, size_t len)
{
    PGconn *c = PQconnectdb(conninfo);
    bool ok = false;
    if (PQstatus(c) == CONNECTION_OK) {
        const char *params[1] = {param};
        PGresult *r = PQexecParams(c, sql, param != NULL ? 1 : 0, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
            snprintf(buf, len, "%s", PQgetisnull(r, 0, 0) ? "" : PQgetvalue(r, 0, 0));
            ok = true;
        } else {
            fprintf(stderr, "saga_demo: query failed: %s", PQresultErrorMessage(r));
        }
        PQclear(r);
    } else {
        fprintf(stderr, "saga_demo: cannot connect: %s", PQerrorMessage(c));
    }
    PQfinish(c);
    return ok;
}

/* Sends a 2PC "ping" branch until the service's instance answers "pong"
 * (shop_service votes NO with that reason): the coordinator routes to it. */
static bool wait_up(treaty_client_t *c, const char *service)
{
    long long deadline = now_ms() + UP_WAIT_MS;
    for (;;) {
        treaty_txn_t *t = NULL;
        treaty_outcome_t out;
        memset(&out, 0, sizeof out);
        if (treaty_txn_new(&t) != 0 || treaty_txn_add_branch(t, service, "ping", 4) != 0) {
            treaty_txn_destroy(&t);
            return false;
        }
        int rc = treaty_client_submit(c, t, 2000, &out);
        treaty_txn_destroy(&t);
        if (rc == 0 && strstr(out.reason, "pong") != NULL) {
            printf("  %s is up (%s)\n", service, out.reason);
            return true;
        }
        if (now_ms() >= deadline) {
            printf("  %s is not up after %d s: %s%s%s\n", service, UP_WAIT_MS / 1000,
                   rc != 0 ? treaty_strerror(rc) : treaty_status_name(out.status), out.reason[0] ? ": " : "",
                   out.reason);
            return false;
        }
        sleep_ms(200);
    }
}

/* Builds and runs the order's saga. Fills out; returns the run's rc. */
static int run_order(treaty_client_t *c, struct order *o, treaty_outcome_t *out)
{
    treaty_saga_t *s = NULL;
    char reserve[96], charge[96];
    snprintf(reserve, sizeof reserve, "%s:%d", o->item, o->qty);
    snprintf(charge, sizeof charge, "%s:%lld", o->customer, o->amount);
    /* The first try of reserve fails transiently in this demo: allow three. */
    treaty_retry_t retry = {.max_attempts = 3, .first_backoff_ms = 100};
    memset(out, 0, sizeof *out);
    int rc = treaty_saga_new(&s);
    if (rc == 0)
        rc = treaty_saga_add_step(s, "orders", "create_order", o->id, strlen(o->id), "cancel_order", o->id,
                                  strlen(o->id));
    if (rc >= 0)
        rc = treaty_saga_add_step(s, "inventory", "reserve", reserve, strlen(reserve), "release", reserve,
                                  strlen(reserve));
    if (rc >= 0)
        rc = treaty_saga_set_retry(s, (unsigned)rc, &retry);
    if (rc >= 0)
        rc = treaty_saga_add_step(s, "payment", "charge", charge, strlen(charge), "refund", charge, strlen(charge));
    if (rc >= 0) {
        o->txid = *treaty_saga_id(s);
        out->txid = o->txid;
        rc = treaty_client_run_saga(c, s, SAGA_TIMEOUT_MS, out);
    }
    treaty_saga_destroy(&s);
    return rc;
}

static const char *const step_names[] = {"orders.create_order", "inventory.reserve", "payment.charge"};

/* Prints the saga's path; true when it is the expected one. */
static bool report(const struct order *o, int rc, const treaty_outcome_t *out)
{
    char id[TREATY_TXID_STRLEN];
    treaty_txid_format(&o->txid, id);
    printf("\n  %s: %s\n    saga %s\n", o->id, o->story, id);
    if (rc != 0) {
        printf("    no outcome: %s\n    UNEXPECTED: want %s\n", treaty_strerror(rc), treaty_status_name(o->want));
        return false;
    }
    if (out->error != 0) {
        printf("    refused by the coordinator: %s (%s)\n    UNEXPECTED\n", treaty_strerror(out->error), out->reason);
        return false;
    }
    if (out->status == TREATY_STATUS_COMPLETED)
        printf("    path: create_order -> reserve -> charge: %s\n", treaty_status_name(out->status));
    else if (out->status == TREATY_STATUS_COMPENSATED && out->failed_branch < 3) {
        printf("    path: ");
        for (unsigned i = 0; i <= out->failed_branch; i++)
            printf("%s%s", i ? " -> " : "", step_names[i] + strcspn(step_names[i], ".") + 1);
        printf(" FAILED; compensate");
        for (unsigned i = out->failed_branch + 1; i-- > 0;)
            printf(" %s", i == 2 ? "refund(no-op)" : i == 1 ? "release" : "cancel_order");
        printf(": %s\n", treaty_status_name(out->status));
    } else
        printf("    outcome: %s\n", treaty_status_name(out->status));
    if (out->failed_branch != TREATY_NO_BRANCH)
        printf("    failed step: %u (%s)\n", out->failed_branch,
               out->failed_branch < 3 ? step_names[out->failed_branch] : "?");
    if (out->reason[0] != '\0')
        printf("    reason: %s\n", out->reason);
    bool ok = out->status == o->want && out->failed_branch == o->want_failed_step &&
              (o->want_reason == NULL || strstr(out->reason, o->want_reason) != NULL);
    if (!ok)
        printf("    UNEXPECTED: want %s, failed step %d%s%s\n", treaty_status_name(o->want),
               o->want_failed_step == TREATY_NO_BRANCH ? -1 : (int)o->want_failed_step,
               o->want_reason ? ", reason mentioning " : "", o->want_reason ? o->want_reason : "");
    return ok;
}

/* Prints a table's rows and compares them with want; true when equal. */
static bool check_rows(const struct service *sv, const char *label, const char *want)
{
    char got[1024];
    if (!query_text(sv->conninfo, sv->table_sql, NULL, got, sizeof got)) {
        printf("  %-28s cannot be read\n", label);
        return false;
    }
    bool ok = strcmp(got, want) == 0;
    printf("  %-28s %s%s%s\n", label, got, ok ? "" : "   UNEXPECTED, want ", ok ? "" : want);
    return ok;
}

/* Prints the applied rows of one saga at one service; true when equal to want. */
static bool check_applied(const struct service *sv, const struct order *o, const char *want)
{
    char id[TREATY_TXID_STRLEN], got[512], label[64];
    treaty_txid_format(&o->txid, id);
    if (!query_text(sv->conninfo,
                    "SELECT string_agg(step || ':' || op || ' x' || n, ', ' ORDER BY step, op COLLATE \"C\") FROM"
                    " (SELECT step, op, count(*) AS n FROM applied WHERE txid = $1 GROUP BY step, op) g",
                    id, got, sizeof got)) {
        printf("    %-10s cannot be read\n", sv->name);
        return false;
    }
    bool ok = strcmp(got, want) == 0;
    snprintf(label, sizeof label, "%s:", sv->name);
    printf("    %-11s %s%s%s\n", label, got[0] ? got : "-", ok ? "" : "   UNEXPECTED, want ", ok ? "" : want);
    return ok;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: saga_demo --endpoint EP --db-orders CONNINFO --db-inventory CONNINFO --db-payment CONNINFO\n"
               "                 " EXAMPLE_KEYS_USAGE "\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"endpoint", required_argument, NULL, 'e'},
        {"db-orders", required_argument, NULL, 'o'},
        {"db-inventory", required_argument, NULL, 'i'},
        {"db-payment", required_argument, NULL, 'p'},
        {"server-key", required_argument, NULL, 'K'},
        {"key", required_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct service orders = {
        "orders", "SELECT string_agg(id || '=' || status, ', ' ORDER BY id COLLATE \"C\") FROM orders", NULL};
    struct service inventory = {
        "inventory", "SELECT string_agg(item || '=' || qty, ', ' ORDER BY item COLLATE \"C\") FROM stock", NULL};
    struct service payment = {
        "payment", "SELECT string_agg(customer || '=' || balance, ', ' ORDER BY customer COLLATE \"C\") FROM wallet",
        NULL};
    const char *endpoint = NULL;
    struct example_keys keys = {0};
    int ch;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'e':
            endpoint = optarg;
            break;
        case 'o':
            orders.conninfo = optarg;
            break;
        case 'i':
            inventory.conninfo = optarg;
            break;
        case 'p':
            payment.conninfo = optarg;
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
    if (endpoint == NULL || orders.conninfo == NULL || inventory.conninfo == NULL || payment.conninfo == NULL ||
        optind != argc) {
        usage(stderr);
        return 2;
    }
    int keys_failed;
    const treaty_security_t *security = example_keys_load(&keys, "saga_demo", &keys_failed);
    if (keys_failed)
        return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);

    treaty_client_t *c = NULL;
    int rc = treaty_client_new_secure(endpoint, security, &c);
    if (rc != 0) {
        fprintf(stderr, "saga_demo: cannot create a client for %s: %s\n", endpoint, treaty_strerror(rc));
        return 1;
    }
    printf("waiting until the coordinator routes to the three services\n");
    if (!wait_up(c, "orders") || !wait_up(c, "inventory") || !wait_up(c, "payment")) {
        treaty_client_destroy(&c);
        return 1;
    }

    struct order ords[] = {
        {"order-1",
         "widget",
         2,
         "alice",
         30,
         "alice buys 2 widgets for 30",
         TREATY_STATUS_COMPLETED,
         TREATY_NO_BRANCH,
         NULL,
         {{0}}},
        {"order-2",
         "widget",
         1,
         "bob",
         50,
         "bob buys 1 widget for 50 but has only 20",
         TREATY_STATUS_COMPENSATED,
         2,
         "insufficient funds",
         {{0}}},
        {"order-3",
         "widget",
         3,
         "alice",
         25,
         "alice buys 3 widgets for 25; inventory fails the first try of reserve (transient), the retry succeeds",
         TREATY_STATUS_COMPLETED,
         TREATY_NO_BRANCH,
         NULL,
         {{0}}},
    };
    bool ok = true;
    printf("\nrunning three order sagas (create_order -> reserve -> charge)\n");
    for (size_t i = 0; i < sizeof ords / sizeof ords[0]; i++) {
        treaty_outcome_t out;
        rc = run_order(c, &ords[i], &out);
        ok = report(&ords[i], rc, &out) && ok;
    }
    treaty_client_destroy(&c);

    /* Every step's local transaction committed before its result reached the
     * coordinator, so the rows are final once the saga's outcome is known. */
    printf("\nthe databases now (read directly with libpq)\n");
    ok = check_rows(&orders, "orders (shop_orders):", "order-1=created, order-2=cancelled, order-3=created") && ok;
    ok = check_rows(&inventory, "stock (shop_inventory):", "widget=5") && ok;
    ok = check_rows(&payment, "wallet (shop_payment):", "alice=45, bob=20") && ok;

    printf("\nwhat took effect, per saga (table applied: step:operation x times)\n");
    for (size_t i = 0; i < sizeof ords / sizeof ords[0]; i++) {
        bool failed = ords[i].want == TREATY_STATUS_COMPENSATED;
        printf("  %s\n", ords[i].id);
        ok = check_applied(&orders, &ords[i], failed ? "0:cancel_order x1, 0:create_order x1" : "0:create_order x1") &&
             ok;
        ok = check_applied(&inventory, &ords[i], failed ? "1:release x1, 1:reserve x1" : "1:reserve x1") && ok;
        ok = check_applied(&payment, &ords[i], failed ? "" : "2:charge x1") && ok;
    }
    printf("\n%s\n", ok ? "saga demo: every saga took the expected path; the databases agree"
                        : "saga demo: UNEXPECTED results (see above)");
    return ok ? 0 : 1;
}
