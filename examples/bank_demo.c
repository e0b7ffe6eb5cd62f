/*
 * bank_demo.c - the Treaty demo client: moves money between two banks, each a
 * bank_service with its own PostgreSQL database, in two-phase-commit
 * transfers.
 *
 *   bank_demo --endpoint EP --db-a CONNINFO --db-b CONNINFO [--server-key FILE --key BASE]
 *
 * --server-key / --key: CURVE (example_keys.h); the allow-list names BASE.pub
 * as a client.
 *
 * Service "bank-a" holds account alice, "bank-b" account bob. A transfer is
 * one global transaction of two branches: branch 0 debits the payer's bank
 * ("alice:-30"), branch 1 credits the payee's ("bob:+30"). Both commit or
 * neither does.
 *
 * The demo runs five transfers that must commit (both directions), then one
 * that must be refused (more than the payer has: bank-b votes NO, the whole
 * transaction aborts with that reason and failed branch 0). It prints each
 * outcome, then the balances read straight from both databases.
 *
 * Exit 0 only if every outcome was as expected, the balances are what the
 * committed transfers say, the total is conserved, and no prepared
 * transaction named treaty:* is left in either database. Participants apply
 * COMMIT after the client has been told, so those checks wait up to 10 s.
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

#define SUBMIT_TIMEOUT_MS 10000
#define APPLY_WAIT_MS 10000
#define UP_WAIT_MS 30000

struct bank {
    const char *service; /* "bank-a" */
    const char *account; /* "alice" */
    const char *conninfo;
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

/* Runs a one-value query on a fresh connection; false when it cannot. */
static bool query_ll(const char *conninfo, const char *sql, const char *param, long long *out)
{
    PGconn *c = PQconnectdb(conninfo);
    bool ok = false;
    if (PQstatus(c) == CONNECTION_OK) {
        const char *params[1] = {param};
        PGresult *r = PQexecParams(c, sql, param != NULL ? 1 : 0, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0)) {
            *out = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
            ok = true;
        } else if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            fprintf(stderr, "bank_demo: query failed: %s", PQresultErrorMessage(r));
        }
        PQclear(r);
    } else {
        fprintf(stderr, "bank_demo: cannot connect: %s", PQerrorMessage(c));
    }
    PQfinish(c);
    return ok;
}

static bool balance(const struct bank *b, long long *out)
{
    return query_ll(b->conninfo, "SELECT balance FROM accounts WHERE id = $1", b->account, out);
}

static long long prepared(const struct bank *b)
{
    long long n = -1;
    if (!query_ll(b->conninfo,
                  "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'treaty:%' AND database = current_database()",
                  NULL, &n))
        return -1;
    return n;
}

/* Waits until both databases have no treaty:* prepared transaction. */
static bool wait_applied(const struct bank *a, const struct bank *b, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    for (;;) {
        if (prepared(a) == 0 && prepared(b) == 0)
            return true;
        if (now_ms() >= deadline)
            return false;
        sleep_ms(50);
    }
}

/* Sends "ping" to a service until its own instance answers (see bank_service.c). */
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

/* One transfer from payer to payee. Fills out; returns the submit's rc. */
static int transfer(treaty_client_t *c, const struct bank *payer, const struct bank *payee, long long amount,
                    treaty_outcome_t *out)
{
    char debit[96], credit[96];
    snprintf(debit, sizeof debit, "%s:-%lld", payer->account, amount);
    snprintf(credit, sizeof credit, "%s:+%lld", payee->account, amount);
    treaty_txn_t *t = NULL;
    memset(out, 0, sizeof *out);
    int rc = treaty_txn_new(&t);
    if (rc == 0)
        rc = treaty_txn_add_branch(t, payer->service, debit, strlen(debit));
    if (rc == 0)
        rc = treaty_txn_add_branch(t, payee->service, credit, strlen(credit));
    if (rc == 0) {
        out->txid = *treaty_txn_id(t);
        rc = treaty_client_submit(c, t, SUBMIT_TIMEOUT_MS, out);
    }
    treaty_txn_destroy(&t);
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: bank_demo --endpoint EP --db-a CONNINFO --db-b CONNINFO " EXAMPLE_KEYS_USAGE "\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"endpoint", required_argument, NULL, 'e'},
        {"db-a", required_argument, NULL, 'a'},
        {"db-b", required_argument, NULL, 'b'},
        {"server-key", required_argument, NULL, 'K'},
        {"key", required_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *endpoint = NULL;
    struct bank a = {"bank-a", "alice", NULL}, b = {"bank-b", "bob", NULL};
    struct example_keys keys = {0};
    int ch;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'e':
            endpoint = optarg;
            break;
        case 'a':
            a.conninfo = optarg;
            break;
        case 'b':
            b.conninfo = optarg;
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
    if (endpoint == NULL || a.conninfo == NULL || b.conninfo == NULL || optind != argc) {
        usage(stderr);
        return 2;
    }
    int keys_failed;
    const treaty_security_t *security = example_keys_load(&keys, "bank_demo", &keys_failed);
    if (keys_failed)
        return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);

    treaty_client_t *c = NULL;
    int rc = treaty_client_new_secure(endpoint, security, &c);
    if (rc != 0) {
        fprintf(stderr, "bank_demo: cannot create a client for %s: %s\n", endpoint, treaty_strerror(rc));
        return 1;
    }
    bool ok = true;

    printf("waiting for both banks to register with the coordinator at %s\n", endpoint);
    if (!wait_up(c, a.service) || !wait_up(c, b.service)) {
        treaty_client_destroy(&c);
        return 1;
    }

    long long bal_a = 0, bal_b = 0;
    if (!balance(&a, &bal_a) || !balance(&b, &bal_b)) {
        fprintf(stderr, "bank_demo: cannot read the opening balances\n");
        treaty_client_destroy(&c);
        return 1;
    }
    const long long total = bal_a + bal_b;
    printf("\nopening balances: alice (bank-a) %lld, bob (bank-b) %lld, total %lld\n\n", bal_a, bal_b, total);

    /* What we expect, worked out from the opening balances. */
    static const struct {
        bool a_pays;
        long long amount;
    } plan[] = {{true, 30}, {false, 10}, {true, 20}, {false, 50}, {true, 5}};
    const size_t nplan = sizeof plan / sizeof plan[0];
    long long exp_a = bal_a, exp_b = bal_b;

    for (size_t i = 0; i <= nplan; i++) {
        const struct bank *payer, *payee;
        long long amount;
        bool want_commit;
        if (i < nplan) {
            payer = plan[i].a_pays ? &a : &b;
            payee = plan[i].a_pays ? &b : &a;
            amount = plan[i].amount;
            want_commit = (plan[i].a_pays ? exp_a : exp_b) >= amount;
        } else {
            /* The refused one: more than bob has. */
            payer = &b;
            payee = &a;
            amount = exp_b + 1000;
            want_commit = false;
            printf("\nand now one that must be refused: bob has %lld\n", exp_b);
        }
        treaty_outcome_t out;
        rc = transfer(c, payer, payee, amount, &out);
        char id[TREATY_TXID_STRLEN];
        treaty_txid_format(&out.txid, id);
        const char *status = rc == 0 ? treaty_status_name(out.status) : treaty_err_name(rc);
        printf("transfer %zu: %-5s -> %-5s %5lld   txid %s   %s", i + 1, payer->account, payee->account, amount, id,
               status);
        if (rc == 0 && out.status == TREATY_STATUS_ABORTED)
            printf("   reason: %s (failed branch %u: %s)", out.reason[0] ? out.reason : "-", out.failed_branch,
                   out.failed_branch == 0   ? payer->service
                   : out.failed_branch == 1 ? payee->service
                                            : "?");
        if (rc == 0 && out.error != 0)
            printf("   refused by the coordinator: %s", treaty_err_name(out.error));
        printf("\n");

        bool committed = rc == 0 && out.error == 0 && out.status == TREATY_STATUS_COMMITTED;
        bool aborted = rc == 0 && out.error == 0 && out.status == TREATY_STATUS_ABORTED;
        if (want_commit && !committed) {
            printf("  UNEXPECTED: this transfer should have committed\n");
            ok = false;
        } else if (!want_commit && !aborted) {
            printf("  UNEXPECTED: this transfer should have been aborted\n");
            ok = false;
        } else if (!want_commit && i == nplan) {
            char want[96];
            snprintf(want, sizeof want, "insufficient funds in %s", payer->account);
            if (out.failed_branch != 0 || strstr(out.reason, want) == NULL) {
                printf("  UNEXPECTED: want failed branch 0 with reason \"%s\"\n", want);
                ok = false;
            }
        }
        if (committed) {
            if (payer == &a) {
                exp_a -= amount;
                exp_b += amount;
            } else {
                exp_b -= amount;
                exp_a += amount;
            }
            /* The participants apply COMMIT after we were told; let them
             * finish before the next transfer touches the same rows. */
            if (!wait_applied(&a, &b, APPLY_WAIT_MS))
                printf("  (commit not applied everywhere after %d s)\n", APPLY_WAIT_MS / 1000);
        }
    }
    treaty_client_destroy(&c);

    /* Final state, straight from both databases. */
    bool applied = wait_applied(&a, &b, APPLY_WAIT_MS);
    long long fa = -1, fb = -1;
    long long deadline = now_ms() + APPLY_WAIT_MS;
    for (;;) {
        bool read = balance(&a, &fa) && balance(&b, &fb);
        if ((read && fa == exp_a && fb == exp_b) || now_ms() >= deadline)
            break;
        sleep_ms(100);
    }
    long long pa = prepared(&a), pb = prepared(&b);
    printf("\nfinal balances: alice (bank-a) %lld, bob (bank-b) %lld, total %lld\n", fa, fb, fa + fb);
    printf("expected:       alice %lld, bob %lld\n", exp_a, exp_b);
    printf("prepared transactions left: bank-a %lld, bank-b %lld\n", pa, pb);
    bool conserved = fa >= 0 && fb >= 0 && fa + fb == total;
    printf("total conserved: %s\n", conserved ? "yes" : "no");
    if (!applied || pa != 0 || pb != 0 || fa != exp_a || fb != exp_b || !conserved)
        ok = false;
    printf("%s\n", ok ? "demo: all outcomes as expected" : "demo: FAILED");
    return ok ? 0 : 1;
}
