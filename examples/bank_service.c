/*
 * bank_service.c - an example Treaty participant: one bank's accounts in its
 * own PostgreSQL database, changed by two-phase-commit branches.
 *
 *   bank_service --endpoint EP --service NAME --instance ID --db CONNINFO
 *                [--create-accounts "alice=100,bob=50"] [--prepare-delay-ms N]
 *                [--server-key FILE --key BASE]
 *
 * --server-key / --key: CURVE with the coordinator (example_keys.h): its
 * public key file, and this service's key pair BASE.pub / BASE.key, whose
 * public key the coordinator's allow-list names as a participant of NAME.
 *
 * Table (created if missing):
 *   accounts(id text primary key, balance bigint not null check (balance >= 0))
 *
 * Branch payload: text "ACCOUNT:DELTA", e.g. "alice:-30". The work runs in the
 * local transaction the SDK opened; the SDK ends it with PREPARE TRANSACTION
 * when we vote YES, and later COMMIT PREPARED / ROLLBACK PREPARED.
 *
 *   1. lock the row without waiting (FOR UPDATE NOWAIT): the participant
 *      handles one message at a time, so waiting for a lock held by one of its
 *      own prepared branches would wait for a COMMIT it can never read;
 *      a busy account is a NO vote;
 *   2. UPDATE ... WHERE balance + delta >= 0; no row -> NO "insufficient funds";
 *   3. --prepare-delay-ms: sleep before voting YES (a hung participant, for
 *      tests of the prepare timeout).
 *
 * The payload "ping" is a health probe: it is answered at once with a NO vote
 * whose reason is "pong from SERVICE/INSTANCE", touching nothing. A client that
 * gets that reason back knows the coordinator routes to this service.
 *
 * Crash points come from the SDK (env TREATY_CRASH_AT, see participant-sdk/src/fault.h).
 * SIGTERM or SIGINT stops the participant cleanly; exit status 0.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
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

#define ACCOUNT_MAX 64

struct bank {
    const char *service;
    const char *instance;
    int prepare_delay_ms;
    unsigned long handled;
};

static atomic_bool stopping;

static void say(const struct bank *bk, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void say(const struct bank *bk, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    fprintf(stderr, "%02d:%02d:%02d.%03ld bank_service %s/%s: %s\n", tm.tm_hour, tm.tm_min, tm.tm_sec,
            ts.tv_nsec / 1000000, bk->service, bk->instance, msg);
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

/* Parses "ACCOUNT:DELTA". 0 or -1. */
static int parse_payload(const void *payload, size_t len, char *account, long long *delta)
{
    char buf[128];
    if (payload == NULL || len == 0 || len >= sizeof buf)
        return -1;
    memcpy(buf, payload, len);
    buf[len] = '\0';
    char *colon = strrchr(buf, ':');
    if (colon == NULL || colon == buf || (size_t)(colon - buf) >= ACCOUNT_MAX)
        return -1;
    *colon = '\0';
    char *end = NULL;
    errno = 0;
    long long d = strtoll(colon + 1, &end, 10);
    if (errno != 0 || end == colon + 1 || *end != '\0')
        return -1;
    memcpy(account, buf, (size_t)(colon - buf) + 1);
    *delta = d;
    return 0;
}

static int work(void *arg, struct pg_conn *conn, const treaty_branch_t *b, char *reason)
{
    struct bank *bk = arg;
    char txid[TREATY_TXID_STRLEN];
    treaty_txid_format(&b->txid, txid);
    bk->handled++;

    if (b->len == 4 && memcmp(b->payload, "ping", 4) == 0) {
        snprintf(reason, TREATY_REASON_MAX, "pong from %s/%s", bk->service, bk->instance);
        say(bk, "prepare %s:%u ping -> NO (health probe)", txid, b->branch);
        return TREATY_VOTE_NO;
    }

    char account[ACCOUNT_MAX];
    long long delta = 0;
    if (parse_payload(b->payload, b->len, account, &delta) != 0) {
        snprintf(reason, TREATY_REASON_MAX, "malformed payload (want ACCOUNT:DELTA)");
        say(bk, "prepare %s:%u -> NO: %s", txid, b->branch, reason);
        return TREATY_VOTE_NO;
    }

    char deltatxt[32];
    snprintf(deltatxt, sizeof deltatxt, "%lld", delta);
    const char *params[2] = {account, deltatxt};

    /* 1. The row, locked without waiting (see the file header). */
    PGresult *r = PQexecParams(conn, "SELECT balance FROM accounts WHERE id = $1 FOR UPDATE NOWAIT", 1, NULL, params,
                               NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        if (state != NULL && strcmp(state, "55P03") == 0)
            snprintf(reason, TREATY_REASON_MAX, "account %s busy", account);
        else
            snprintf(reason, TREATY_REASON_MAX, "database error: %s", PQresultErrorMessage(r));
        reason[strcspn(reason, "\n")] = '\0';
        PQclear(r);
        say(bk, "prepare %s:%u %s%+lld -> NO: %s", txid, b->branch, account, delta, reason);
        return TREATY_VOTE_NO;
    }
    int rows = PQntuples(r);
    PQclear(r);
    if (rows == 0) {
        snprintf(reason, TREATY_REASON_MAX, "no account %s", account);
        say(bk, "prepare %s:%u %s%+lld -> NO: %s", txid, b->branch, account, delta, reason);
        return TREATY_VOTE_NO;
    }

    /* 2. The change, refused when it would overdraw. */
    r = PQexecParams(conn,
                     "UPDATE accounts SET balance = balance + $2::bigint WHERE id = $1 AND balance + $2::bigint >= 0",
                     2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        snprintf(reason, TREATY_REASON_MAX, "database error: %s", PQresultErrorMessage(r));
        reason[strcspn(reason, "\n")] = '\0';
        PQclear(r);
        say(bk, "prepare %s:%u %s%+lld -> NO: %s", txid, b->branch, account, delta, reason);
        return TREATY_VOTE_NO;
    }
    bool changed = strcmp(PQcmdTuples(r), "1") == 0;
    PQclear(r);
    if (!changed) {
        snprintf(reason, TREATY_REASON_MAX, "insufficient funds in %s", account);
        say(bk, "prepare %s:%u %s%+lld -> NO: %s", txid, b->branch, account, delta, reason);
        return TREATY_VOTE_NO;
    }

    /* 3. A hung participant, on request. */
    if (bk->prepare_delay_ms > 0) {
        say(bk, "prepare %s:%u %s%+lld: sleeping %d ms before voting", txid, b->branch, account, delta,
            bk->prepare_delay_ms);
        delay_ms(bk->prepare_delay_ms);
    }
    say(bk, "prepare %s:%u %s%+lld (attempt %u) -> YES", txid, b->branch, account, delta, b->attempt);
    return TREATY_VOTE_YES;
}

/* Creates the table and the requested accounts ("alice=100,bob=50"). */
static int setup_db(const struct bank *bk, const char *conninfo, const char *accounts)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        say(bk, "cannot connect to the database: %s", PQerrorMessage(c));
        PQfinish(c);
        return -1;
    }
    /* Quiet NOTICEs; never wait long for a lock here (see below). */
    PGresult *r = PQexec(c, "SET client_min_messages = warning; SET lock_timeout = '10s'");
    PQclear(r);
    /* Instances of one bank may start together: CREATE TABLE IF NOT EXISTS
     * races on the catalog, so serialise it with a transaction-level lock. */
    r = PQexec(c, "BEGIN; SELECT pg_advisory_xact_lock(7600001);"
                  " CREATE TABLE IF NOT EXISTS accounts ("
                  " id text PRIMARY KEY,"
                  " balance bigint NOT NULL CHECK (balance >= 0)); COMMIT");
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        say(bk, "create table accounts: %s", PQresultErrorMessage(r));
        PQclear(r);
        PQfinish(c);
        return -1;
    }
    PQclear(r);

    char *list = strdup(accounts != NULL ? accounts : "");
    if (list == NULL) {
        PQfinish(c);
        return -1;
    }
    int rc = 0;
    char *save = NULL;
    for (char *item = strtok_r(list, ",", &save); item != NULL && rc == 0; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (eq == NULL || eq == item) {
            say(bk, "--create-accounts: \"%s\" is not NAME=BALANCE", item);
            rc = -1;
            break;
        }
        *eq = '\0';
        const char *params[2] = {item, eq + 1};
        /* The NOT EXISTS test first: a plain read never waits, while ON
         * CONFLICT alone would wait for an in-doubt prepared branch that
         * updated the row - and only this process, once started, can
         * resolve it. */
        r = PQexecParams(c,
                         "INSERT INTO accounts (id, balance) SELECT $1, $2::bigint"
                         " WHERE NOT EXISTS (SELECT 1 FROM accounts WHERE id = $1)"
                         " ON CONFLICT (id) DO NOTHING",
                         2, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            say(bk, "create account %s: %s", item, PQresultErrorMessage(r));
            rc = -1;
        }
        PQclear(r);
    }
    free(list);
    PQfinish(c);
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: bank_service --endpoint EP --service NAME --instance ID --db CONNINFO\n"
               "                    [--create-accounts \"alice=100,bob=50\"] [--prepare-delay-ms N]\n"
               "                    " EXAMPLE_KEYS_USAGE "\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"endpoint", required_argument, NULL, 'e'},
        {"service", required_argument, NULL, 's'},
        {"instance", required_argument, NULL, 'i'},
        {"db", required_argument, NULL, 'd'},
        {"create-accounts", required_argument, NULL, 'a'},
        {"prepare-delay-ms", required_argument, NULL, 'p'},
        {"server-key", required_argument, NULL, 'K'},
        {"key", required_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *endpoint = NULL, *db = NULL, *accounts = NULL;
    struct bank bk = {0};
    struct example_keys keys = {0};
    int ch;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'e':
            endpoint = optarg;
            break;
        case 's':
            bk.service = optarg;
            break;
        case 'i':
            bk.instance = optarg;
            break;
        case 'd':
            db = optarg;
            break;
        case 'a':
            accounts = optarg;
            break;
        case 'p':
            bk.prepare_delay_ms = atoi(optarg);
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
    if (endpoint == NULL || bk.service == NULL || bk.instance == NULL || db == NULL || optind != argc ||
        bk.prepare_delay_ms < 0) {
        usage(stderr);
        return 2;
    }
    int keys_failed;
    const treaty_security_t *security = example_keys_load(&keys, "bank_service", &keys_failed);
    if (keys_failed)
        return 2;

    /* Signals are taken by sigwait() below; block them before any thread
     * (the SDK's) exists so that every thread inherits the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    if (setup_db(&bk, db, accounts) != 0)
        return 1;

    treaty_participant_t *p = NULL;
    int rc = treaty_pg_participant_new_secure(endpoint, bk.service, bk.instance, db, work, &bk, security, &p);
    if (rc != 0) {
        say(&bk, "cannot create the participant: %s (%s)", treaty_strerror(rc),
            p != NULL ? treaty_participant_errmsg(p) : "no detail");
        treaty_participant_destroy(&p);
        return 1;
    }
    rc = treaty_participant_start(p);
    if (rc != 0) {
        say(&bk, "cannot start the participant: %s (%s)", treaty_strerror(rc), treaty_participant_errmsg(p));
        treaty_participant_destroy(&p);
        return 1;
    }
    say(&bk, "ready: serving %s at %s (prepare delay %d ms)", bk.service, endpoint, bk.prepare_delay_ms);

    int sig = 0;
    while (sigwait(&sigs, &sig) != 0) {
    }
    say(&bk, "%s: stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
    atomic_store(&stopping, true);
    rc = treaty_participant_stop(p);
    if (rc != 0)
        say(&bk, "stop: %s (%s)", treaty_strerror(rc), treaty_participant_errmsg(p));
    treaty_participant_destroy(&p);
    say(&bk, "stopped after %lu prepares", bk.handled);
    return 0;
}
