/*
 * runner.c - treaty-scenario: runs failure-injection scenarios (scenarios/NAME.conf)
 * and checks Treaty's invariants against the real databases.
 *
 *   treaty-scenario [--seed N] [--repeat K] [--bin DIR] [--pg CONNINFO --pgdir DIR]
 *                   [--keep] [--verbose] FILE...
 *
 * Lifecycle of one run of one scenario (numbered as in the output):
 *   1. fresh databases (journal, one per bank, one per shop role) in the
 *      throwaway cluster; accounts, stock and wallets seeded by the runner so
 *      the initial state is known exactly;
 *   2. treatyd and the participants (examples/bank_service, shop_service)
 *      started, each with its fault environment (TREATY_CRASH_AT,
 *      TREATY_NET_FAULTS); the runner waits until the coordinator routes to
 *      every service (a "ping" branch answered "pong");
 *   3. the workload: worker threads, each with its own client, run 2PC
 *      transfers and order sagas with txids derived from the seed; an answer
 *      that is not final (UNKNOWN, PENDING, STUCK, a refusal) is resubmitted
 *      with the same txid; every reported answer goes to the client log;
 *   4. meanwhile the fault schedule, computed from the seed before the run
 *      (same seed, same schedule): SIGKILL / SIGSTOP+SIGCONT of processes,
 *      Postgres restarts; processes that die (crash points, kills) are
 *      restarted; all of it within faults.duration_ms;
 *   5. heal: SIGCONT to every stopped process, dead ones restarted without
 *      their crash point; the transport filter of each process ends by itself
 *      (for_ms);
 *   6. quiescence: the workload finished, no treaty:* prepared transaction in
 *      the cluster, no unfinished transaction in the journal; bounded by
 *      quiesce_ms;
 *   7. checks (see check_*): final outcome of every txid asked of the
 *      coordinator; balances, stock and the saga applied tables read back;
 *   8. table printed; everything stopped (SIGTERM, then SIGKILL).
 *
 * With security.curve (issue 12) every process talks CURVE: the runner makes
 * key pairs with treatyd --keygen (the coordinator's, one for its clients,
 * one per service) and an allow-list naming them, and treatyd runs with
 * security.curve on. With security.rogue_rate > 0 a hostile peer (the
 * rogue_* functions) runs during the fault window: a fake bank-a/a1 (or
 * orders/o1 without 2PC) under three keys - one not on the allow-list, one
 * listed as a client, one listed as a participant of another service - that
 * says HELLO as that instance and floods the coordinator with forged VOTE,
 * ACK, INQUIRE and RESULT messages for the workload's real txids. Checked
 * (row "hostile peer"): each key sent its messages, none was ever sent
 * WELCOME, PREPARE or STEP (it was never registered or chosen), and
 * treatyd's log shows each kind of refusal; the other invariants must hold
 * as in any scenario (the forgeries have no effect on balances or outcomes).
 *
 * Exit status: 0 when every run of every scenario passed, 1 when one failed
 * (an invariant violated or the run could not be carried out), 2 on usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libconfig.h>
#include <libpq-fe.h>

#include "treaty.h"
#include "wire.h"

#define MAXPROCS 64
#define MAXEVENTS 256
#define MAXBANKS 8
#define MAXFAULTRULES 16
#define INITIAL_BALANCE 1000000000000LL
#define INITIAL_STOCK 100000000
#define SAGA_AMOUNT_BASE 10

/* ------------------------------------------------------------------ utils */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long long wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

struct rng {
    uint64_t s;
};

static uint64_t rng_next(struct rng *r)
{
    r->s += 0x9e3779b97f4a7c15ULL;
    return mix64(r->s);
}

/* Uniform in [lo, hi]. */
static long long rng_range(struct rng *r, long long lo, long long hi)
{
    if (hi <= lo)
        return lo;
    return lo + (long long)(rng_next(r) % (uint64_t)(hi - lo + 1));
}

static bool verbose;

static void vlog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void vlog(const char *fmt, ...)
{
    if (!verbose)
        return;
    va_list ap;
    va_start(ap, fmt);
    fputs("   | ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    fflush(stdout);
    va_end(ap);
}

/* ------------------------------------------------------------- violations */

struct report {
    char *text;
    size_t len, cap;
    unsigned count;
};

static void violation(struct report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void violation(struct report *r, const char *fmt, ...)
{
    r->count++;
    if (r->count > 40)
        return; /* the first 40 tell the story */
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    size_t need = r->len + (size_t)n + 8;
    if (need > r->cap) {
        size_t cap = need * 2;
        char *t = realloc(r->text, cap);
        if (t == NULL)
            return;
        r->text = t;
        r->cap = cap;
    }
    r->len += (size_t)sprintf(r->text + r->len, "    - %s\n", line);
}

/* --------------------------------------------------------------- scenario */

enum target_kind { T_COORD, T_PARTICIPANT, T_ANY, T_SERVICE, T_INSTANCE };

struct crash_rule {
    char target[80];
    char point[64];
    int every; /* crash on the every-th hit */
    int times; /* crashes (restarts with the point set) within the fault window */
};

struct kill_rule {
    char target[80];
    int count;
    int down_ms; /* kill: restarted after; stop: SIGCONT after */
    bool stop;
};

struct net_rule {
    char target[80];
    char spec[256];
};

struct scenario {
    char name[80];
    char description[256];
    /* topology */
    int banks, bank_instances, shop_instances, accounts;
    /* workload */
    int twopc, sagas, concurrency, timeout_ms, saga_fail_pct, resubmit_pct;
    int bank_prepare_delay_ms;
    /* security */
    bool curve;
    int rogue_rate; /* forged messages a second of the hostile peer; 0: none */
    /* faults */
    int duration_ms, quiesce_ms, pg_restarts;
    struct crash_rule crashes[MAXFAULTRULES];
    int ncrashes;
    struct kill_rule kills[MAXFAULTRULES];
    int nkills;
    struct net_rule nets[MAXFAULTRULES];
    int nnets;
};

static int cfg_int(const config_t *c, const char *path, int dflt)
{
    int v;
    return config_lookup_int(c, path, &v) == CONFIG_TRUE ? v : dflt;
}

static void cfg_str(const config_setting_t *s, const char *key, char *buf, size_t cap, const char *dflt)
{
    const char *v = NULL;
    if (s == NULL || config_setting_lookup_string(s, key, &v) != CONFIG_TRUE)
        v = dflt;
    snprintf(buf, cap, "%s", v ? v : "");
}

static int scenario_load(const char *path, struct scenario *sc, char *err, size_t errcap)
{
    config_t c;
    config_init(&c);
    memset(sc, 0, sizeof *sc);
    if (config_read_file(&c, path) != CONFIG_TRUE) {
        snprintf(err, errcap, "%s:%d: %s", path, config_error_line(&c), config_error_text(&c));
        config_destroy(&c);
        return -1;
    }
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    char dname[80];
    snprintf(dname, sizeof dname, "%s", base);
    char *dot = strrchr(dname, '.');
    if (dot)
        *dot = '\0';
    cfg_str(config_root_setting(&c), "name", sc->name, sizeof sc->name, dname);
    cfg_str(config_root_setting(&c), "description", sc->description, sizeof sc->description, "");
    sc->banks = cfg_int(&c, "topology.banks", 2);
    sc->bank_instances = cfg_int(&c, "topology.bank_instances", 1);
    sc->shop_instances = cfg_int(&c, "topology.shop_instances", 1);
    sc->accounts = cfg_int(&c, "topology.accounts", 16);
    sc->twopc = cfg_int(&c, "workload.twopc", 100);
    sc->sagas = cfg_int(&c, "workload.sagas", 0);
    sc->concurrency = cfg_int(&c, "workload.concurrency", 4);
    sc->timeout_ms = cfg_int(&c, "workload.timeout_ms", 3000);
    sc->saga_fail_pct = cfg_int(&c, "workload.saga_fail_pct", 20);
    sc->resubmit_pct = cfg_int(&c, "workload.resubmit_pct", 0);
    sc->bank_prepare_delay_ms = cfg_int(&c, "topology.bank_prepare_delay_ms", 0);
    sc->duration_ms = cfg_int(&c, "faults.duration_ms", 5000);
    sc->pg_restarts = cfg_int(&c, "faults.pg_restarts", 0);
    sc->quiesce_ms = cfg_int(&c, "quiesce_ms", 60000);
    int curve = 0;
    sc->curve = config_lookup_bool(&c, "security.curve", &curve) == CONFIG_TRUE && curve;
    sc->rogue_rate = cfg_int(&c, "security.rogue_rate", 0);

    int rc = 0;
    if (sc->banks < 0 || sc->banks > MAXBANKS || (sc->twopc > 0 && sc->banks < 2)) {
        snprintf(err, errcap, "%s: topology.banks: want 2..%d when workload.twopc > 0", path, MAXBANKS);
        rc = -1;
    } else if (sc->bank_instances < 1 || sc->shop_instances < 0 || sc->accounts < 1 ||
               (sc->sagas > 0 && sc->shop_instances < 1)) {
        snprintf(err, errcap, "%s: topology: instances and accounts must be >= 1 (shop_instances when sagas > 0)",
                 path);
        rc = -1;
    } else if (sc->concurrency < 1 || sc->concurrency > 64 || sc->twopc < 0 || sc->sagas < 0 ||
               sc->twopc + sc->sagas == 0) {
        snprintf(err, errcap, "%s: workload: want concurrency 1..64 and at least one transaction", path);
        rc = -1;
    } else if (sc->rogue_rate < 0 || sc->rogue_rate > 100000 || (sc->rogue_rate > 0 && !sc->curve)) {
        snprintf(err, errcap, "%s: security.rogue_rate: want 0..100000, and security.curve = true with it", path);
        rc = -1;
    }

    config_setting_t *list = config_lookup(&c, "faults.crash_points");
    for (int i = 0; rc == 0 && list && i < config_setting_length(list) && i < MAXFAULTRULES; i++) {
        config_setting_t *e = config_setting_get_elem(list, (unsigned)i);
        struct crash_rule *r = &sc->crashes[sc->ncrashes++];
        cfg_str(e, "target", r->target, sizeof r->target, "coordinator");
        cfg_str(e, "point", r->point, sizeof r->point, "");
        int v;
        r->every = config_setting_lookup_int(e, "every", &v) == CONFIG_TRUE ? v : 1;
        r->times = config_setting_lookup_int(e, "times", &v) == CONFIG_TRUE ? v : 1;
        if (r->point[0] == '\0' || r->every < 1 || r->times < 1) {
            snprintf(err, errcap, "%s: faults.crash_points[%d]: want point, every >= 1, times >= 1", path, i);
            rc = -1;
        }
    }
    const char *kinds[2] = {"faults.kills", "faults.stops"};
    for (int k = 0; k < 2; k++) {
        list = config_lookup(&c, kinds[k]);
        for (int i = 0; rc == 0 && list && i < config_setting_length(list) && sc->nkills < MAXFAULTRULES; i++) {
            config_setting_t *e = config_setting_get_elem(list, (unsigned)i);
            struct kill_rule *r = &sc->kills[sc->nkills++];
            cfg_str(e, "target", r->target, sizeof r->target, "participant");
            int v;
            r->count = config_setting_lookup_int(e, "count", &v) == CONFIG_TRUE ? v : 1;
            r->down_ms = config_setting_lookup_int(e, k ? "hang_ms" : "down_ms", &v) == CONFIG_TRUE ? v : 500;
            r->stop = k == 1;
        }
    }
    list = config_lookup(&c, "faults.net");
    for (int i = 0; rc == 0 && list && i < config_setting_length(list) && i < MAXFAULTRULES; i++) {
        config_setting_t *e = config_setting_get_elem(list, (unsigned)i);
        struct net_rule *r = &sc->nets[sc->nnets++];
        cfg_str(e, "target", r->target, sizeof r->target, "any");
        cfg_str(e, "spec", r->spec, sizeof r->spec, "");
    }
    config_destroy(&c);
    return rc;
}

/* -------------------------------------------------------------- processes */

enum proc_kind { P_COORD, P_BANK, P_SHOP };

struct proc {
    enum proc_kind kind;
    char service[32];
    char instance[32];
    char label[80]; /* "treatyd", "bank-a/a1" */
    char log[700];
    pid_t pid;    /* 0 when not running */
    bool stopped; /* SIGSTOPped by us */
    bool killed_by_us;
    long long restart_at; /* when dead: restart due (ms, monotonic), -1 none */
    long long cont_at;    /* when stopped: SIGCONT due */
    int crash_rule;       /* index into crashes, -1 */
    int crashes_left;     /* restarts that still carry the crash point */
    int net_rule;         /* index into nets, -1 */
    int starts;
};

struct event {
    long long at_ms; /* from workload start */
    int kind;        /* 0 kill, 1 stop, 2 pg restart */
    int proc;
    int dur_ms;
};

/* ------------------------------------------------------------- transactions */

enum tx_kind { TX_2PC, TX_SAGA };

struct tx {
    enum tx_kind kind;
    treaty_txid_t id;
    char idtxt[TREATY_TXID_STRLEN];
    int from_bank, to_bank, from_acct, to_acct;
    long long amount;
    bool saga_fail;              /* charge the poor customer: a business failure */
    bool resubmit;               /* resubmit once more after the final answer */
    enum treaty_status reported; /* last answer the client got (NONE: never) */
    enum treaty_status resubmit_answer;
    enum treaty_status final_status;
    unsigned tries;
    bool unknown_seen;
    /* what the hostile peer may know of it: 0 nothing yet, 1 being
     * submitted, 2 the client had a first answer (the coordinator knows it) */
    atomic_int phase;
};

/* One run. */
struct run {
    const struct scenario *sc;
    uint64_t seed;
    const char *bindir;
    const char *pgbase, *pgdir, *top;
    char dir[512];
    char dbpfx[32];
    char endpoint[64];
    char coord_conf[600];
    struct proc procs[MAXPROCS];
    int nprocs;
    struct event events[MAXEVENTS];
    int nevents;
    struct tx *txs;
    int ntx;
    atomic_int next_tx;
    atomic_int workers_done;
    /* security.curve: key files in keydir, the clients' keys */
    char keydir[600];
    char coord_pub[640];
    char client_pub[TREATY_KEY_LEN + 1], client_sec[TREATY_KEY_LEN + 1], coord_key[TREATY_KEY_LEN + 1];
    treaty_security_t client_security;
    /* the hostile peer (rogue_*): per key, forged messages sent, messages
     * got back, and those it must never get (WELCOME, PREPARE, STEP) */
    atomic_long rogue_sent[3], rogue_got[3], rogue_bad[3];
    char rogue_bad_what[3][64];
    atomic_long client_retries;
    long long t0, heal_at, deadline;
    atomic_bool healed;
    /* counts */
    int n_crash_deaths, n_kills, n_stops, n_pg_restarts, n_restarts;
    unsigned long net_matched, net_dropped, net_dup, net_delayed;
    pid_t pg_helper;
};

static void db_conninfo(const struct run *r, const char *db, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s dbname=%s_%s connect_timeout=5", r->pgbase, r->dbpfx, db);
}

static const char *bank_name(int i, char *buf, size_t cap)
{
    snprintf(buf, cap, "bank-%c", 'a' + i);
    return buf;
}

/* ----------------------------------------------------------- SQL helpers */

static PGconn *pg_connect(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        PQfinish(c);
        return NULL;
    }
    PGresult *r = PQexec(c, "SET client_min_messages = warning");
    PQclear(r);
    return c;
}

static int pg_exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
    if (!ok)
        fprintf(stderr, "treaty-scenario: SQL failed: %s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    return ok ? 0 : -1;
}

/* One integer from a one-shot connection; -1 on any failure. */
static long long pg_scalar(const char *conninfo, const char *sql)
{
    PGconn *c = pg_connect(conninfo);
    if (c == NULL)
        return -1;
    PGresult *r = PQexec(c, sql);
    long long v = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0))
        v = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(c);
    return v;
}

/* -------------------------------------------------------- process control */

static bool target_matches(const char *target, const struct proc *p)
{
    if (strcmp(target, "any") == 0)
        return true;
    if (strcmp(target, "coordinator") == 0)
        return p->kind == P_COORD;
    if (strcmp(target, "participant") == 0)
        return p->kind != P_COORD;
    if (strcmp(target, "bank") == 0)
        return p->kind == P_BANK;
    if (strcmp(target, "shop") == 0)
        return p->kind == P_SHOP;
    if (strcmp(target, p->service) == 0)
        return true;
    return strcmp(target, p->label) == 0;
}

static int proc_spawn(struct run *r, struct proc *p)
{
    char arg[8][640];
    char *argv[24];
    int n = 0;
    char conn[512];
    char path[600];
    if (p->kind == P_COORD) {
        snprintf(path, sizeof path, "%s/treatyd", r->bindir);
        argv[n++] = path;
        argv[n++] = (char *)"-c";
        argv[n++] = r->coord_conf;
    } else if (p->kind == P_BANK) {
        snprintf(path, sizeof path, "%s/bank_service", r->bindir);
        char db[32];
        snprintf(db, sizeof db, "%s", p->service);
        for (char *q = db; *q; q++)
            if (*q == '-')
                *q = '_'; /* bank-a -> database <prefix>_bank_a */
        db_conninfo(r, db, conn, sizeof conn);
        argv[n++] = path;
        argv[n++] = (char *)"--endpoint";
        argv[n++] = r->endpoint;
        argv[n++] = (char *)"--service";
        argv[n++] = p->service;
        argv[n++] = (char *)"--instance";
        argv[n++] = p->instance;
        argv[n++] = (char *)"--db";
        snprintf(arg[0], sizeof arg[0], "%s", conn);
        argv[n++] = arg[0];
        if (r->sc->bank_prepare_delay_ms > 0) {
            argv[n++] = (char *)"--prepare-delay-ms";
            snprintf(arg[1], sizeof arg[1], "%d", r->sc->bank_prepare_delay_ms);
            argv[n++] = arg[1];
        }
    } else {
        snprintf(path, sizeof path, "%s/shop_service", r->bindir);
        db_conninfo(r, p->service, conn, sizeof conn);
        argv[n++] = path;
        argv[n++] = (char *)"--endpoint";
        argv[n++] = r->endpoint;
        argv[n++] = (char *)"--role";
        argv[n++] = p->service;
        argv[n++] = (char *)"--instance";
        argv[n++] = p->instance;
        argv[n++] = (char *)"--db";
        snprintf(arg[0], sizeof arg[0], "%s", conn);
        argv[n++] = arg[0];
    }
    if (p->kind != P_COORD && r->sc->curve) {
        /* CURVE: the coordinator's public key, the service's key pair */
        argv[n++] = (char *)"--server-key";
        argv[n++] = r->coord_pub;
        argv[n++] = (char *)"--key";
        snprintf(arg[2], sizeof arg[2], "%s/%s", r->keydir, p->service);
        argv[n++] = arg[2];
    }
    argv[n] = NULL;

    char crash[128] = "", net[1200] = "";
    long long now = now_ms();
    bool in_window = !atomic_load(&r->healed) && (r->t0 == 0 || now < r->t0 + r->sc->duration_ms);
    if (p->crash_rule >= 0 && p->crashes_left > 0 && in_window) {
        const struct crash_rule *cr = &r->sc->crashes[p->crash_rule];
        snprintf(crash, sizeof crash, "TREATY_CRASH_AT=%s:%d", cr->point, cr->every);
    }
    if (p->net_rule >= 0 && in_window) {
        /* the filter ends when the runner creates the heal file */
        snprintf(net, sizeof net, "TREATY_NET_FAULTS=seed=%" PRIu64 ",tag=%s#%d,stop_file=%s/healed,%s", r->seed,
                 p->label, p->starts, r->dir, r->sc->nets[p->net_rule].spec);
    }
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        setpgid(0, 0);
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        FILE *f = freopen(p->log, "a", stdout);
        if (f == NULL)
            _exit(126);
        dup2(1, 2);
        int fd0 = open("/dev/null", 0);
        if (fd0 >= 0)
            dup2(fd0, 0);
        unsetenv("TREATY_CRASH_AT");
        unsetenv("TREATY_NET_FAULTS");
        if (crash[0])
            putenv(crash);
        if (net[0])
            putenv(net);
        fprintf(stderr, "---- treaty-scenario: start #%d %s%s%s\n", p->starts, crash, net[0] ? " " : "", net);
        fflush(stderr);
        execv(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    p->pid = pid;
    p->starts++;
    p->stopped = false;
    p->killed_by_us = false;
    p->restart_at = -1;
    p->cont_at = -1;
    if (crash[0])
        p->crashes_left--;
    vlog("+%lldms start %s pid %d %s", r->t0 ? now - r->t0 : 0, p->label, (int)pid, crash);
    return 0;
}

static void proc_signal(struct proc *p, int sig)
{
    if (p->pid > 0)
        kill(p->pid, sig);
}

/* Reaps dead children; schedules restarts. */
static void reap(struct run *r)
{
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        if (pid == r->pg_helper) {
            r->pg_helper = 0;
            vlog("+%lldms postgres restart done (%d)", now_ms() - r->t0, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
            continue;
        }
        for (int i = 0; i < r->nprocs; i++) {
            struct proc *p = &r->procs[i];
            if (p->pid != pid)
                continue;
            p->pid = 0;
            p->stopped = false;
            if (!p->killed_by_us && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)
                r->n_crash_deaths++;
            vlog("+%lldms %s pid %d ended (%s %d)%s", now_ms() - r->t0, p->label, (int)pid,
                 WIFSIGNALED(st) ? "signal" : "exit", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st),
                 p->killed_by_us ? " [killed by the runner]" : "");
            if (p->restart_at < 0)
                p->restart_at = now_ms() + 150;
        }
    }
}

static void stop_all(struct run *r)
{
    for (int i = 0; i < r->nprocs; i++) {
        struct proc *p = &r->procs[i];
        p->restart_at = -1;
        if (p->pid > 0) {
            kill(p->pid, SIGCONT);
            kill(p->pid, SIGTERM);
        }
    }
    long long until = now_ms() + 5000;
    for (;;) {
        reap(r);
        bool any = false;
        for (int i = 0; i < r->nprocs; i++)
            if (r->procs[i].pid > 0)
                any = true;
        if (!any || now_ms() > until)
            break;
        sleep_ms(20);
    }
    for (int i = 0; i < r->nprocs; i++) {
        struct proc *p = &r->procs[i];
        if (p->pid > 0) {
            kill(p->pid, SIGKILL);
            waitpid(p->pid, NULL, 0);
            p->pid = 0;
        }
        p->restart_at = -1;
    }
    if (r->pg_helper > 0) {
        waitpid(r->pg_helper, NULL, 0);
        r->pg_helper = 0;
    }
}

/* Sums the transport filter's exit lines ("treaty netfault: ...") of every log. */
static void count_net_faults(struct run *r)
{
    for (int i = 0; i < r->nprocs; i++) {
        FILE *f = fopen(r->procs[i].log, "r");
        if (f == NULL)
            continue;
        char line[1024];
        while (fgets(line, sizeof line, f)) {
            const char *s = strstr(line, "treaty netfault: tag=");
            unsigned long m, d, u, l;
            if (s == NULL)
                continue;
            s = strstr(s, "matched=");
            if (s && sscanf(s, "matched=%lu dropped=%lu duplicated=%lu delayed=%lu", &m, &d, &u, &l) == 4) {
                r->net_matched += m;
                r->net_dropped += d;
                r->net_dup += u;
                r->net_delayed += l;
            }
        }
        fclose(f);
    }
}

/* ------------------------------------------------------------- workload */

/* A client of the run: with security.curve, under the clients' key. */
static int client_new(const struct run *r, treaty_client_t **c)
{
    return treaty_client_new_secure(r->endpoint, r->sc->curve ? &r->client_security : NULL, c);
}

static bool final_2pc(enum treaty_status s)
{
    return s == TREATY_STATUS_COMMITTED || s == TREATY_STATUS_ABORTED;
}

static bool final_saga(enum treaty_status s)
{
    return s == TREATY_STATUS_COMPLETED || s == TREATY_STATUS_COMPENSATED;
}

static bool is_final(const struct tx *t, enum treaty_status s)
{
    return t->kind == TX_2PC ? final_2pc(s) : final_saga(s);
}

static int build_and_submit(struct run *r, treaty_client_t *c, struct tx *t, treaty_outcome_t *out)
{
    int rc;
    if (t->kind == TX_2PC) {
        treaty_txn_t *txn = NULL;
        rc = treaty_txn_new_with_id(&t->id, &txn);
        if (rc != 0)
            return rc;
        char svc[16], pay[64];
        snprintf(pay, sizeof pay, "acc%d:-%lld", t->from_acct, t->amount);
        treaty_txn_add_branch(txn, bank_name(t->from_bank, svc, sizeof svc), pay, strlen(pay));
        snprintf(pay, sizeof pay, "acc%d:%lld", t->to_acct, t->amount);
        treaty_txn_add_branch(txn, bank_name(t->to_bank, svc, sizeof svc), pay, strlen(pay));
        rc = treaty_client_submit(c, txn, r->sc->timeout_ms, out);
        treaty_txn_destroy(&txn);
        return rc;
    }
    treaty_saga_t *s = NULL;
    rc = treaty_saga_new_with_id(&t->id, &s);
    if (rc != 0)
        return rc;
    char order[64], item[64], pay[64];
    snprintf(order, sizeof order, "o-%s", t->idtxt);
    snprintf(item, sizeof item, "widget:1");
    snprintf(pay, sizeof pay, "%s:%lld", t->saga_fail ? "poor" : "rich", t->amount);
    treaty_saga_add_step(s, "orders", "create_order", order, strlen(order), "cancel_order", order, strlen(order));
    treaty_saga_add_step(s, "inventory", "reserve", item, strlen(item), "release", item, strlen(item));
    treaty_saga_add_step(s, "payment", "charge", pay, strlen(pay), "refund", pay, strlen(pay));
    treaty_retry_t pol = {.max_attempts = 6, .first_backoff_ms = 100, .max_backoff_ms = 1000, .try_timeout_ms = 1000};
    for (unsigned i = 0; i < 3; i++)
        treaty_saga_set_retry(s, i, &pol);
    rc = treaty_client_run_saga(c, s, r->sc->timeout_ms + 2000, out);
    treaty_saga_destroy(&s);
    return rc;
}

/* Runs t until a final answer or the run's deadline. */
static void run_tx(struct run *r, treaty_client_t *c, struct tx *t)
{
    atomic_store(&t->phase, 1);
    for (;;) {
        treaty_outcome_t out;
        memset(&out, 0, sizeof out);
        int rc = build_and_submit(r, c, t, &out);
        atomic_store(&t->phase, 2);
        t->tries++;
        enum treaty_status s = TREATY_STATUS_UNKNOWN;
        if (rc == 0 && out.error == 0)
            s = out.status;
        if (t->reported == TREATY_STATUS_NONE || is_final(t, s) || !is_final(t, t->reported))
            t->reported = s;
        if (s == TREATY_STATUS_UNKNOWN)
            t->unknown_seen = true;
        if (is_final(t, s))
            break;
        if (now_ms() > r->deadline)
            break;
        atomic_fetch_add(&r->client_retries, 1);
        sleep_ms(100 + (int)(mix64(r->seed ^ t->tries ^ (uint64_t)t->amount) % 200));
    }
    if (t->resubmit && is_final(t, t->reported)) {
        /* a client that retries although it had the answer: same txid */
        for (int k = 0; k < 20 && !is_final(t, t->resubmit_answer) && now_ms() < r->deadline; k++) {
            treaty_outcome_t out;
            memset(&out, 0, sizeof out);
            int rc = build_and_submit(r, c, t, &out);
            t->resubmit_answer = rc == 0 && out.error == 0 ? out.status : TREATY_STATUS_UNKNOWN;
        }
    }
}

static void *worker(void *arg)
{
    struct run *r = arg;
    treaty_client_t *c = NULL;
    if (client_new(r, &c) == 0) {
        for (;;) {
            int i = atomic_fetch_add(&r->next_tx, 1);
            if (i >= r->ntx)
                break;
            /* paced so that the workload spans most of the fault window */
            long long due = r->t0 + (long long)i * r->sc->duration_ms * 9 / 10 / r->ntx;
            long long now = now_ms();
            if (now < due)
                sleep_ms((int)(due - now));
            run_tx(r, c, &r->txs[i]);
        }
        treaty_client_destroy(&c);
    }
    atomic_fetch_add(&r->workers_done, 1);
    return NULL;
}

/* The transactions of the run, all derived from the seed. */
static int plan_txs(struct run *r)
{
    const struct scenario *sc = r->sc;
    r->ntx = sc->twopc + sc->sagas;
    r->txs = calloc((size_t)r->ntx, sizeof *r->txs);
    if (r->txs == NULL)
        return -1;
    struct rng g = {mix64(r->seed * 7919 + 17)};
    int n2 = sc->twopc, ns = sc->sagas;
    for (int i = 0; i < r->ntx; i++) {
        struct tx *t = &r->txs[i];
        bool saga = n2 == 0 || (ns > 0 && (long long)rng_range(&g, 0, n2 + ns - 1) >= n2);
        if (saga)
            ns--;
        else
            n2--;
        t->kind = saga ? TX_SAGA : TX_2PC;
        /* A UUIDv7 as treaty_txid_generate makes it (the coordinator refuses
         * others): the time of the run, then bits from the seed. */
        uint64_t a = rng_next(&g), b = rng_next(&g), made = (uint64_t)wall_ms();
        for (int k = 0; k < 8; k++) {
            t->id.b[k] = (uint8_t)(a >> (8 * k));
            t->id.b[8 + k] = (uint8_t)(b >> (8 * k));
        }
        for (int k = 0; k < 6; k++)
            t->id.b[k] = (uint8_t)(made >> (40 - 8 * k));
        t->id.b[6] = (uint8_t)((t->id.b[6] & 0x0f) | 0x70);
        t->id.b[8] = (uint8_t)((t->id.b[8] & 0x3f) | 0x80);
        treaty_txid_format(&t->id, t->idtxt);
        t->amount = i + 1; /* unique: a half-applied transfer names itself */
        if (!saga) {
            t->from_bank = (int)rng_range(&g, 0, sc->banks - 1);
            t->to_bank = (t->from_bank + (int)rng_range(&g, 1, sc->banks - 1)) % sc->banks;
            t->from_acct = (int)rng_range(&g, 0, sc->accounts - 1);
            t->to_acct = (int)rng_range(&g, 0, sc->accounts - 1);
        } else {
            t->saga_fail = rng_range(&g, 0, 99) < sc->saga_fail_pct;
            t->amount = SAGA_AMOUNT_BASE + i;
        }
        t->resubmit = rng_range(&g, 0, 99) < sc->resubmit_pct;
    }
    return 0;
}

/* ------------------------------------------------------------- set-up */

static int setup_databases(struct run *r)
{
    const struct scenario *sc = r->sc;
    char admin[600];
    snprintf(admin, sizeof admin, "%s dbname=postgres", r->pgbase);
    PGconn *c = pg_connect(admin);
    if (c == NULL) {
        fprintf(stderr, "treaty-scenario: cannot connect to %s\n", admin);
        return -1;
    }
    char sql[256];
    const char *dbs[MAXBANKS + 4];
    char bankdb[MAXBANKS][16];
    int n = 0;
    dbs[n++] = "journal";
    for (int i = 0; i < sc->banks; i++) {
        snprintf(bankdb[i], sizeof bankdb[i], "bank_%c", 'a' + i);
        dbs[n++] = bankdb[i];
    }
    if (sc->shop_instances > 0 && sc->sagas > 0) {
        dbs[n++] = "orders";
        dbs[n++] = "inventory";
        dbs[n++] = "payment";
    }
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s_%s WITH (FORCE)", r->dbpfx, dbs[i]);
        rc = pg_exec(c, sql);
        snprintf(sql, sizeof sql, "CREATE DATABASE %s_%s", r->dbpfx, dbs[i]);
        if (rc == 0)
            rc = pg_exec(c, sql);
    }
    PQfinish(c);
    if (rc != 0)
        return rc;
    /* the runner seeds the business tables: the initial state is known */
    for (int i = 0; i < sc->banks && rc == 0; i++) {
        char ci[600];
        db_conninfo(r, bankdb[i], ci, sizeof ci);
        PGconn *b = pg_connect(ci);
        if (b == NULL)
            return -1;
        rc = pg_exec(b, "CREATE TABLE accounts (id text PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0))");
        snprintf(sql, sizeof sql, "INSERT INTO accounts SELECT 'acc' || g, %lld FROM generate_series(0, %d) g",
                 INITIAL_BALANCE, sc->accounts - 1);
        if (rc == 0)
            rc = pg_exec(b, sql);
        PQfinish(b);
    }
    if (rc == 0 && sc->shop_instances > 0 && sc->sagas > 0) {
        static const char *const setup[3][3] = {
            {"orders", "CREATE TABLE orders (id text PRIMARY KEY, status text NOT NULL)", NULL},
            {"inventory", "CREATE TABLE stock (item text PRIMARY KEY, qty int NOT NULL CHECK (qty >= 0))",
             "INSERT INTO stock VALUES ('widget', 100000000)"},
            {"payment", "CREATE TABLE wallet (customer text PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0))",
             "INSERT INTO wallet VALUES ('rich', 1000000000000), ('poor', 0)"},
        };
        for (int i = 0; i < 3 && rc == 0; i++) {
            char ci[600];
            db_conninfo(r, setup[i][0], ci, sizeof ci);
            PGconn *b = pg_connect(ci);
            if (b == NULL)
                return -1;
            rc = pg_exec(b, setup[i][1]);
            if (rc == 0 && setup[i][2])
                rc = pg_exec(b, setup[i][2]);
            if (rc == 0)
                rc = pg_exec(b, "CREATE TABLE applied (txid text NOT NULL, step int NOT NULL,"
                                " op text NOT NULL, at timestamptz NOT NULL DEFAULT now())");
            PQfinish(b);
        }
    }
    return rc;
}

static int free_port(uint64_t salt)
{
    for (int k = 0; k < 500; k++) {
        int p = 21000 + (int)((mix64(salt + (uint64_t)k + (uint64_t)getpid()) % 8000));
        char cmd[128];
        snprintf(cmd, sizeof cmd, "ss -Hltn 'sport = :%d' 2>/dev/null | grep -q .", p);
        if (system(cmd) != 0)
            return p;
    }
    return 24999;
}

static int add_proc(struct run *r, enum proc_kind kind, const char *service, const char *instance)
{
    if (r->nprocs >= MAXPROCS)
        return -1;
    struct proc *p = &r->procs[r->nprocs++];
    memset(p, 0, sizeof *p);
    p->kind = kind;
    snprintf(p->service, sizeof p->service, "%s", service);
    snprintf(p->instance, sizeof p->instance, "%s", instance);
    if (kind == P_COORD)
        snprintf(p->label, sizeof p->label, "treatyd");
    else
        snprintf(p->label, sizeof p->label, "%s/%s", service, instance);
    char fname[96];
    snprintf(fname, sizeof fname, "%s", p->label);
    for (char *q = fname; *q; q++)
        if (*q == '/')
            *q = '_';
    snprintf(p->log, sizeof p->log, "%s/%s.log", r->dir, fname);
    p->restart_at = -1;
    p->cont_at = -1;
    p->crash_rule = -1;
    p->net_rule = -1;
    for (int i = 0; i < r->sc->ncrashes; i++)
        if (target_matches(r->sc->crashes[i].target, p)) {
            p->crash_rule = i;
            p->crashes_left = r->sc->crashes[i].times;
        }
    for (int i = 0; i < r->sc->nnets; i++)
        if (target_matches(r->sc->nets[i].target, p))
            p->net_rule = i;
    return 0;
}

/* The fault schedule: every time and target from the seed, before the run. */
static void plan_events(struct run *r)
{
    const struct scenario *sc = r->sc;
    struct rng g = {mix64(r->seed * 104729 + 3)};
    long long lo = sc->duration_ms / 10, hi = sc->duration_ms * 8 / 10;
    for (int k = 0; k < sc->nkills; k++) {
        const struct kill_rule *kr = &sc->kills[k];
        int cand[MAXPROCS], nc = 0;
        for (int i = 0; i < r->nprocs; i++)
            if (target_matches(kr->target, &r->procs[i]))
                cand[nc++] = i;
        for (int j = 0; j < kr->count && nc > 0 && r->nevents < MAXEVENTS; j++) {
            struct event *e = &r->events[r->nevents++];
            e->at_ms = rng_range(&g, lo, hi);
            e->kind = kr->stop ? 1 : 0;
            e->proc = cand[rng_range(&g, 0, nc - 1)];
            e->dur_ms = kr->down_ms;
        }
    }
    for (int j = 0; j < sc->pg_restarts && r->nevents < MAXEVENTS; j++) {
        struct event *e = &r->events[r->nevents++];
        e->at_ms = rng_range(&g, lo, hi);
        e->kind = 2;
        e->proc = -1;
    }
    /* in time order (insertion sort: a handful of events) */
    for (int i = 1; i < r->nevents; i++)
        for (int j = i; j > 0 && r->events[j].at_ms < r->events[j - 1].at_ms; j--) {
            struct event t = r->events[j];
            r->events[j] = r->events[j - 1];
            r->events[j - 1] = t;
        }
}

/* Waits until the coordinator answers and routes to every service: a "ping"
 * branch is answered NO with "pong from ...". */
static int wait_ready(struct run *r, int timeout_ms)
{
    long long until = now_ms() + timeout_ms;
    treaty_client_t *c = NULL;
    if (client_new(r, &c) != 0)
        return -1;
    char services[MAXBANKS + 3][16];
    int ns = 0;
    if (r->sc->twopc > 0)
        for (int i = 0; i < r->sc->banks; i++)
            bank_name(i, services[ns++], sizeof services[0]);
    if (r->sc->sagas > 0) {
        strcpy(services[ns++], "orders");
        strcpy(services[ns++], "inventory");
        strcpy(services[ns++], "payment");
    }
    int rc = 0;
    for (int i = 0; i < ns && rc == 0; i++) {
        for (;;) {
            treaty_txn_t *t = NULL;
            treaty_outcome_t out;
            treaty_txn_new(&t);
            treaty_txn_add_branch(t, services[i], "ping", 4);
            int s = treaty_client_submit(c, t, 1000, &out);
            treaty_txn_destroy(&t);
            if (s == 0 && strstr(out.reason, "pong") != NULL)
                break;
            reap(r);
            for (int k = 0; k < r->nprocs; k++)
                if (r->procs[k].pid == 0) {
                    fprintf(stderr, "treaty-scenario: %s ended during start-up (see %s)\n", r->procs[k].label,
                            r->procs[k].log);
                    rc = -1;
                }
            if (rc != 0)
                break;
            if (now_ms() > until) {
                fprintf(stderr, "treaty-scenario: service %s not routed within %d ms\n", services[i], timeout_ms);
                rc = -1;
                break;
            }
            sleep_ms(100);
        }
    }
    treaty_client_destroy(&c);
    return rc;
}

/* ------------------------------------------------------------- checks */

struct inv {
    const char *name;
    unsigned before; /* violations before this check */
    unsigned after;
    bool skipped;
};

/* Final outcome of every txid from the coordinator (fresh client). */
static void query_finals(struct run *r, struct report *rep)
{
    treaty_client_t *c = NULL;
    if (client_new(r, &c) != 0) {
        violation(rep, "cannot create a client to query outcomes");
        return;
    }
    for (int i = 0; i < r->ntx; i++) {
        struct tx *t = &r->txs[i];
        t->final_status = TREATY_STATUS_UNKNOWN;
        for (int k = 0; k < 20; k++) {
            treaty_outcome_t out;
            if (treaty_client_query(c, &t->id, 2000, &out) == 0 && out.error == 0) {
                t->final_status = out.status;
                if (is_final(t, out.status))
                    break;
            }
            sleep_ms(250);
        }
    }
    treaty_client_destroy(&c);
}

static void check_outcomes(struct run *r, struct report *rep)
{
    for (int i = 0; i < r->ntx; i++) {
        struct tx *t = &r->txs[i];
        const char *k = t->kind == TX_2PC ? "2PC" : "saga";
        if (!is_final(t, t->final_status))
            violation(rep, "%s %s (#%d): no final outcome after quiescence (coordinator says %s; client was told %s)",
                      k, t->idtxt, i, treaty_status_name(t->final_status), treaty_status_name(t->reported));
        else if (is_final(t, t->reported) && t->reported != t->final_status)
            violation(rep, "%s %s (#%d): the client was told %s but the outcome is %s", k, t->idtxt, i,
                      treaty_status_name(t->reported), treaty_status_name(t->final_status));
        if (t->resubmit && is_final(t, t->reported) && is_final(t, t->resubmit_answer) &&
            t->resubmit_answer != t->reported)
            violation(rep, "%s %s (#%d): resubmitting the same txid answered %s, the first answer was %s", k, t->idtxt,
                      i, treaty_status_name(t->resubmit_answer), treaty_status_name(t->reported));
    }
}

/* 2PC: balances = initial + committed transfers, per account. */
static void check_balances(struct run *r, struct report *atom, struct report *money)
{
    const struct scenario *sc = r->sc;
    long long total = 0;
    for (int b = 0; b < sc->banks; b++) {
        long long *expect = calloc((size_t)sc->accounts, sizeof *expect);
        if (expect == NULL)
            return;
        for (int a = 0; a < sc->accounts; a++)
            expect[a] = INITIAL_BALANCE;
        for (int i = 0; i < r->ntx; i++) {
            const struct tx *t = &r->txs[i];
            if (t->kind != TX_2PC || t->final_status != TREATY_STATUS_COMMITTED)
                continue;
            if (t->from_bank == b)
                expect[t->from_acct] -= t->amount;
            if (t->to_bank == b)
                expect[t->to_acct] += t->amount;
        }
        char db[16], ci[600];
        snprintf(db, sizeof db, "bank_%c", 'a' + b);
        db_conninfo(r, db, ci, sizeof ci);
        PGconn *c = pg_connect(ci);
        PGresult *res = c ? PQexec(c, "SELECT substr(id, 4)::int, balance FROM accounts ORDER BY 1") : NULL;
        if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
            violation(atom, "cannot read accounts of bank-%c", 'a' + b);
        } else {
            for (int k = 0; k < PQntuples(res); k++) {
                int a = atoi(PQgetvalue(res, k, 0));
                long long bal = atoll(PQgetvalue(res, k, 1));
                total += bal;
                if (a < 0 || a >= sc->accounts || bal == expect[a])
                    continue;
                long long diff = bal - expect[a];
                /* amounts are unique: name the transfer that explains it */
                char who[256] = "no single transfer explains it";
                for (int i = 0; i < r->ntx; i++) {
                    const struct tx *t = &r->txs[i];
                    bool touches = (t->from_bank == b && t->from_acct == a) || (t->to_bank == b && t->to_acct == a);
                    if (t->kind == TX_2PC && touches && (t->amount == diff || t->amount == -diff)) {
                        snprintf(who, sizeof who, "transfer %s (#%d, amount %lld, outcome %s, client told %s)",
                                 t->idtxt, i, t->amount, treaty_status_name(t->final_status),
                                 treaty_status_name(t->reported));
                        break;
                    }
                }
                violation(atom, "bank-%c acc%d: balance %lld, expected %lld (off by %+lld): %s", 'a' + b, a, bal,
                          expect[a], diff, who);
            }
        }
        PQclear(res);
        PQfinish(c);
        free(expect);
    }
    long long initial = INITIAL_BALANCE * sc->accounts * sc->banks;
    if (total != initial)
        violation(money, "money not conserved: the banks hold %lld, started with %lld (%+lld)", total, initial,
                  total - initial);
}

/* Sagas: applied rows per txid across the three shop databases. */
static void check_sagas(struct run *r, struct report *complete, struct report *once)
{
    static const char *const dbs[3] = {"orders", "inventory", "payment"};
    static const char *const act[3] = {"create_order", "reserve", "charge"};
    static const char *const comp[3] = {"cancel_order", "release", "refund"};
    /* counts[tx][step][0 action / 1 compensation] */
    int(*counts)[3][2] = calloc((size_t)r->ntx, sizeof *counts);
    if (counts == NULL)
        return;
    for (int d = 0; d < 3; d++) {
        char ci[600];
        db_conninfo(r, dbs[d], ci, sizeof ci);
        PGconn *c = pg_connect(ci);
        PGresult *res = c ? PQexec(c, "SELECT txid, step, op, count(*) FROM applied GROUP BY 1, 2, 3") : NULL;
        if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
            violation(complete, "cannot read the applied table of %s", dbs[d]);
        } else {
            for (int k = 0; k < PQntuples(res); k++) {
                const char *txid = PQgetvalue(res, k, 0);
                int step = atoi(PQgetvalue(res, k, 1));
                const char *op = PQgetvalue(res, k, 2);
                int n = atoi(PQgetvalue(res, k, 3));
                int i;
                for (i = 0; i < r->ntx; i++)
                    if (strcmp(r->txs[i].idtxt, txid) == 0)
                        break;
                if (i == r->ntx || step < 0 || step > 2) {
                    violation(complete, "%s: applied row of an unknown saga step %s:%d %s", dbs[d], txid, step, op);
                    continue;
                }
                int kind = strcmp(op, act[step]) == 0 ? 0 : strcmp(op, comp[step]) == 0 ? 1 : -1;
                if (kind < 0) {
                    violation(complete, "saga %s step %d: unexpected op %s in %s", txid, step, op, dbs[d]);
                    continue;
                }
                counts[i][step][kind] += n;
                if (n > 1)
                    violation(once, "saga %s (#%d) step %d: %s applied %d times", txid, i, step, op, n);
            }
        }
        PQclear(res);
        PQfinish(c);
    }
    long long stock_used = 0, money_used = 0;
    for (int i = 0; i < r->ntx; i++) {
        const struct tx *t = &r->txs[i];
        if (t->kind != TX_SAGA)
            continue;
        for (int s = 0; s < 3; s++) {
            int a = counts[i][s][0], cp = counts[i][s][1];
            if (t->final_status == TREATY_STATUS_COMPLETED && (a != 1 || cp != 0))
                violation(complete, "saga %s (#%d) completed but step %d (%s) has %d action(s), %d compensation(s)",
                          t->idtxt, i, s, act[s], a, cp);
            if (t->final_status == TREATY_STATUS_COMPENSATED && a != cp)
                violation(complete,
                          "saga %s (#%d) compensated but step %d (%s) has %d action(s) and %d compensation(s)",
                          t->idtxt, i, s, act[s], a, cp);
        }
        if (t->final_status == TREATY_STATUS_COMPLETED) {
            stock_used += 1;
            money_used += t->amount;
        }
    }
    char ci[600];
    db_conninfo(r, "inventory", ci, sizeof ci);
    long long qty = pg_scalar(ci, "SELECT qty FROM stock WHERE item = 'widget'");
    if (qty != INITIAL_STOCK - stock_used)
        violation(complete, "inventory: widget stock %lld, expected %lld (initial minus completed sagas)", qty,
                  INITIAL_STOCK - stock_used);
    db_conninfo(r, "payment", ci, sizeof ci);
    long long bal = pg_scalar(ci, "SELECT balance FROM wallet WHERE customer = 'rich'");
    if (bal != INITIAL_BALANCE - money_used)
        violation(complete, "payment: wallet 'rich' holds %lld, expected %lld (initial minus completed sagas)", bal,
                  INITIAL_BALANCE - money_used);
    free(counts);
}

/* ------------------------------------------------------------- security */

/* The hostile peer's keys: not on the allow-list, a client, a participant of
 * another service than the one it impersonates. */
#define ROGUE_KEYS 3
static const char *const rogue_key_names[ROGUE_KEYS] = {"rogue-unknown", "rogue-client", "rogue-other"};
static const char *const rogue_key_what[ROGUE_KEYS] = {"key not on the allow-list", "key listed as a client",
                                                       "key listed as a participant of another service"};

/* Whom the hostile peer impersonates, and the other service its third key
 * may register (a real one: a stolen key of one bank must not make it another). */
static void rogue_names(const struct run *r, const char **svc, const char **inst, const char **other)
{
    bool banks = r->sc->twopc > 0;
    *svc = banks ? "bank-a" : "orders";
    *inst = banks ? "a1" : "o1";
    *other = banks ? "bank-b" : "payment";
}

/* treatyd --keygen keydir/name (the tool an operator uses). */
static int keygen(const struct run *r, const char *name)
{
    char cmd[2200];
    snprintf(cmd, sizeof cmd, "'%s/treatyd' --keygen '%s/%s' >/dev/null 2>>'%s/keygen.log'", r->bindir, r->keydir, name,
             r->dir);
    int st = system(cmd);
    return st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

static int key_pub(const struct run *r, const char *name, char z85[TREATY_KEY_LEN + 1])
{
    char path[700], err[256];
    snprintf(path, sizeof path, "%s/%s.pub", r->keydir, name);
    if (treaty_key_load(path, TREATY_KEY_PUBLIC, z85, err, sizeof err) != 0) {
        fprintf(stderr, "treaty-scenario: %s\n", err);
        return -1;
    }
    return 0;
}

/* security.curve: keys for the coordinator, the clients, every service and
 * the hostile peer; the allow-list; the security group of treatyd.conf (f). */
static int setup_security(struct run *r, FILE *f)
{
    const struct scenario *sc = r->sc;
    snprintf(r->keydir, sizeof r->keydir, "%s/keys", r->dir);
    if (mkdir(r->keydir, 0700) != 0 && errno != EEXIST)
        return -1;
    char services[MAXBANKS + 3][16];
    int ns = 0;
    if (sc->twopc > 0)
        for (int i = 0; i < sc->banks; i++)
            bank_name(i, services[ns++], sizeof services[0]);
    if (sc->sagas > 0) {
        strcpy(services[ns++], "orders");
        strcpy(services[ns++], "inventory");
        strcpy(services[ns++], "payment");
    }
    if (keygen(r, "coordinator") != 0 || keygen(r, "clients") != 0)
        return -1;
    for (int i = 0; i < ns; i++)
        if (keygen(r, services[i]) != 0)
            return -1;
    for (int k = 0; k < ROGUE_KEYS; k++)
        if (keygen(r, rogue_key_names[k]) != 0)
            return -1;
    char path[700], err[256], z[TREATY_KEY_LEN + 1];
    snprintf(r->coord_pub, sizeof r->coord_pub, "%s/coordinator.pub", r->keydir);
    snprintf(path, sizeof path, "%s/clients.key", r->keydir);
    if (key_pub(r, "coordinator", r->coord_key) != 0 || key_pub(r, "clients", r->client_pub) != 0 ||
        treaty_key_load(path, TREATY_KEY_SECRET, r->client_sec, err, sizeof err) != 0)
        return -1;
    r->client_security.server_public_key = r->coord_key;
    r->client_security.public_key = r->client_pub;
    r->client_security.secret_key = r->client_sec;

    snprintf(path, sizeof path, "%s/allow.list", r->keydir);
    FILE *a = fopen(path, "w");
    if (a == NULL)
        return -1;
    fprintf(a, "# written by treaty-scenario\n%s client\n", r->client_pub);
    int rc = 0;
    for (int i = 0; i < ns && rc == 0; i++) {
        rc = key_pub(r, services[i], z);
        fprintf(a, "%s participant %s\n", z, services[i]);
    }
    const char *svc, *inst, *other;
    rogue_names(r, &svc, &inst, &other);
    /* the hostile peer: rogue-unknown is not listed */
    if (rc == 0 && (rc = key_pub(r, "rogue-client", z)) == 0)
        fprintf(a, "%s client\n", z);
    if (rc == 0 && (rc = key_pub(r, "rogue-other", z)) == 0)
        fprintf(a, "%s participant %s\n", z, other);
    if (fclose(a) != 0 || rc != 0)
        return -1;
    fprintf(f,
            "security = { curve = true; secret_key_file = \"%s/coordinator.key\"; public_key_file = \"%s\";"
            " allow_list = \"%s\"; };\n",
            r->keydir, r->coord_pub, path);
    return 0;
}

/* Sends one forged message from key k. */
static void rogue_send(struct run *r, void *sock, int k, uint8_t type, const uint8_t *txid, unsigned branch,
                       unsigned attempt, unsigned code, const struct wire_frame *f, size_t nf)
{
    struct wire_hdr h;
    memset(&h, 0, sizeof h);
    h.type = type;
    if (txid != NULL)
        memcpy(h.txid, txid, 16);
    h.branch = (uint16_t)branch;
    h.attempt = (uint16_t)attempt;
    h.code = (uint16_t)code;
    (void)wire_send(sock, NULL, 0, &h, f, nf); /* dropped when the queue is full: counted anyway */
    atomic_fetch_add(&r->rogue_sent[k], 1);
}

/* Takes whatever the coordinator sent key k. */
static void rogue_drain(struct run *r, void *sock, int k)
{
    struct wire_in in = {0}; /* read to the end: a bundle's rest too */
    for (;;) {
        int rc = wire_recv(sock, false, 1u << 20, &in);
        if (rc == TREATY_ETIMEDOUT || rc == TREATY_ETRANSPORT) {
            wire_in_discard(&in);
            return;
        }
        atomic_fetch_add(&r->rogue_got[k], 1);
        if (rc != 0)
            continue;
        uint8_t t = in.msg.hdr.type;
        if (t == WIRE_WELCOME || t == WIRE_PREPARE || t == WIRE_STEP) {
            if (atomic_fetch_add(&r->rogue_bad[k], 1) == 0) {
                char id[TREATY_TXID_STRLEN];
                treaty_txid_t x;
                memcpy(x.b, in.msg.hdr.txid, 16);
                treaty_txid_format(&x, id);
                snprintf(r->rogue_bad_what[k], sizeof r->rogue_bad_what[k], "%s %s", wire_type_name(t), id);
            }
        }
        wire_in_close(&in);
    }
}

/* The hostile peer, from the workload's start to the heal: security.rogue_rate
 * forged messages a second, spread over its three keys. */
static void *rogue(void *arg)
{
    struct run *r = arg;
    const char *svc, *inst, *other;
    rogue_names(r, &svc, &inst, &other);
    void *ctx = zmq_ctx_new();
    void *socks[ROGUE_KEYS] = {NULL};
    for (int k = 0; ctx != NULL && k < ROGUE_KEYS; k++) {
        char path[700], err[256], pub[TREATY_KEY_LEN + 1], sec[TREATY_KEY_LEN + 1];
        snprintf(path, sizeof path, "%s/%s.key", r->keydir, rogue_key_names[k]);
        if (key_pub(r, rogue_key_names[k], pub) != 0 ||
            treaty_key_load(path, TREATY_KEY_SECRET, sec, err, sizeof err) != 0)
            continue;
        void *s = zmq_socket(ctx, ZMQ_DEALER);
        int zero = 0;
        if (s == NULL || zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
            zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, r->coord_key, TREATY_KEY_LEN + 1) != 0 ||
            zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, pub, TREATY_KEY_LEN + 1) != 0 ||
            zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, sec, TREATY_KEY_LEN + 1) != 0 || zmq_connect(s, r->endpoint) != 0) {
            if (s != NULL)
                zmq_close(s);
            continue;
        }
        socks[k] = s;
    }
    struct rng g = {mix64(r->seed * 31337 + 5)};
    struct wire_frame hello[2] = {wire_str(svc), wire_str(inst)};
    struct wire_frame reason = wire_str("forged");
    for (int k = 0; k < ROGUE_KEYS; k++)
        if (socks[k] != NULL)
            rogue_send(r, socks[k], k, WIRE_HELLO, NULL, 0, 0, 0, hello, 2);
    int batch = r->sc->rogue_rate / 100 > 0 ? r->sc->rogue_rate / 100 : 1;
    long long every = r->sc->rogue_rate >= 100 ? 10 : 1000 / r->sc->rogue_rate;
    unsigned long n = 0;
    while (now_ms() < r->heal_at && !atomic_load(&r->healed)) {
        for (int j = 0; j < batch; j++, n++) {
            int k = (int)(n % ROGUE_KEYS);
            void *s = socks[k];
            if (s == NULL)
                continue;
            int started = atomic_load(&r->next_tx);
            if (started > r->ntx)
                started = r->ntx;
            if (rng_range(&g, 0, 99) < 5 || started == 0) {
                rogue_send(r, s, k, WIRE_HELLO, NULL, 0, 0, 0, hello, 2);
                continue;
            }
            const struct tx *t = &r->txs[rng_range(&g, 0, started - 1)];
            int phase = atomic_load(&t->phase);
            if (phase == 0) {
                rogue_send(r, s, k, WIRE_HELLO, NULL, 0, 0, 0, hello, 2);
                continue;
            }
            /* An INQUIRE or VOTE YES about a txid the coordinator does not
             * know yet is presumed aborted, from any participant key
             * (docs/security.md): the listed key keeps to txids answered
             * once, as one that overheard them would. */
            bool may_presume = k != 2 || phase == 2;
            int pick = (int)rng_range(&g, 0, 4);
            if (t->kind == TX_2PC) {
                unsigned branch = (unsigned)rng_range(&g, 0, 1);
                char svc0[16];
                /* the third key speaks for another service than its own:
                 * what it may say for its own is its service's to say */
                if (k == 2 && strcmp(bank_name(branch ? t->to_bank : t->from_bank, svc0, sizeof svc0), other) == 0)
                    branch = !branch;
                if (!may_presume && (pick == 0 || pick == 4))
                    pick = 1;
                switch (pick) {
                case 0:
                case 1:
                    rogue_send(r, s, k, WIRE_VOTE, t->id.b, branch, 0, pick ? TREATY_VOTE_NO : TREATY_VOTE_YES, &reason,
                               1);
                    break;
                case 2:
                case 3:
                    rogue_send(r, s, k, WIRE_ACK, t->id.b, branch, 0,
                               pick == 2 ? TREATY_STATUS_COMMITTED : TREATY_STATUS_ABORTED, NULL, 0);
                    break;
                default:
                    rogue_send(r, s, k, WIRE_INQUIRE, t->id.b, branch, 0, 0, NULL, 0);
                    break;
                }
            } else {
                static const unsigned results[] = {WIRE_RESULT_OK, WIRE_RESULT_FAILED, WIRE_RESULT_TRANSIENT};
                static const char *const step_svc[3] = {"orders", "inventory", "payment"};
                unsigned step = (unsigned)rng_range(&g, 0, 2), attempt = (unsigned)rng_range(&g, 0, 2);
                if (k == 2 && strcmp(step_svc[step], other) == 0)
                    step = (step + 1) % 3;
                unsigned kind = pick == 4 ? WIRE_STEP_COMPENSATION : WIRE_STEP_ACTION;
                rogue_send(r, s, k, WIRE_RESULT, t->id.b, step, attempt, WIRE_RESULT(kind, results[pick % 3]), &reason,
                           1);
            }
        }
        for (int k = 0; k < ROGUE_KEYS; k++)
            if (socks[k] != NULL)
                rogue_drain(r, socks[k], k);
        sleep_ms((int)every);
    }
    for (int k = 0; k < ROGUE_KEYS; k++)
        if (socks[k] != NULL) {
            rogue_drain(r, socks[k], k);
            zmq_close(socks[k]);
        }
    if (ctx != NULL)
        zmq_ctx_term(ctx);
    return NULL;
}

/* Lines of path containing both a and b (b may be NULL). */
static int log_count(const char *path, const char *a, const char *b)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    char line[2048];
    int n = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, a) != NULL && (b == NULL || strstr(line, b) != NULL))
            n++;
    fclose(f);
    return n;
}

/* The hostile peer had no way in, and treatyd said so. */
static void check_rogue(struct run *r, struct report *rep)
{
    const char *svc, *inst, *other;
    rogue_names(r, &svc, &inst, &other);
    const char *log = r->procs[0].log; /* treatyd */
    char z[ROGUE_KEYS][TREATY_KEY_LEN + 1];
    for (int k = 0; k < ROGUE_KEYS; k++) {
        if (key_pub(r, rogue_key_names[k], z[k]) != 0)
            violation(rep, "cannot read the hostile peer's key %s", rogue_key_names[k]);
        if (atomic_load(&r->rogue_sent[k]) == 0)
            violation(rep, "the hostile peer (%s) forged nothing: nothing was tested", rogue_key_what[k]);
        if (atomic_load(&r->rogue_bad[k]) > 0)
            violation(rep,
                      "the hostile peer (%s) was sent %ld WELCOME/PREPARE/STEP, first %s: it was registered "
                      "or chosen for a request",
                      rogue_key_what[k], (long)atomic_load(&r->rogue_bad[k]), r->rogue_bad_what[k]);
    }
    if (rep->count > 0)
        return;
    char hello[160];
    snprintf(hello, sizeof hello, "refused (service) HELLO as %s/%s", svc, inst);
    const struct {
        const char *a, *b, *what;
    } want[] = {
        {"security: refused a connection", z[0], "the handshake of the key not on the allow-list refused"},
        {"refused (role) ", z[1], "a message of the client key refused for its role"},
        {hello, z[2], "the HELLO of the other service's participant key refused"},
        {"refused (sender) ", z[2],
         "forged answers of the other service's participant key refused as not from the "
         "instance asked"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (log_count(log, want[i].a, want[i].b) <= 0)
            violation(rep, "treatyd's log (%s) has no line with \"%s\" and the key %s: %s", log, want[i].a, want[i].b,
                      want[i].what);
    /* The real participants acknowledge what they were told: a contradicting
     * ACK is forged, and a forgery must be refused as such (one log line a
     * second at most), not logged line by line. */
    int acks = log_count(log, "acknowledged", "but the decision is");
    if (acks > 0)
        violation(rep,
                  "treatyd logged %d forged ACKs one line each (\"acknowledged ... but the decision is\") "
                  "instead of refusing them by their sender",
                  acks);
}

/* -------------------------------------------------------------- one run */

struct result {
    bool passed;
    double quiesce_s;
};

static const char *pass_fail(const struct report *rp, bool skipped)
{
    if (skipped)
        return "n/a";
    return rp->count == 0 ? "pass" : "FAIL";
}

static int quiet_counts(struct run *r, long long *prepared, long long *unfinished)
{
    char ci[600];
    snprintf(ci, sizeof ci, "%s dbname=postgres connect_timeout=3", r->pgbase);
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'treaty:%%' AND database LIKE '%s\\_%%'", r->dbpfx);
    *prepared = pg_scalar(ci, sql);
    db_conninfo(r, "journal", ci, sizeof ci);
    *unfinished = pg_scalar(ci, "SELECT count(DISTINCT txid) FROM treaty_records j WHERE NOT EXISTS"
                                " (SELECT 1 FROM treaty_records e WHERE e.txid = j.txid AND e.kind = 'end')");
    return *prepared == 0 && *unfinished == 0 ? 0 : -1;
}

static int run_once(const struct scenario *sc, uint64_t seed, int runno, const char *bindir, const char *pgbase,
                    const char *pgdir, const char *top, const char *workroot, bool keep, struct result *res)
{
    struct run *r = calloc(1, sizeof *r);
    if (r == NULL)
        return -1;
    r->sc = sc;
    r->seed = seed;
    r->bindir = bindir;
    r->pgbase = pgbase;
    r->pgdir = pgdir;
    r->top = top;
    snprintf(r->dir, sizeof r->dir, "%s/%02d-%s-seed%" PRIu64, workroot, runno, sc->name, seed);
    mkdir(r->dir, 0755);
    snprintf(r->dbpfx, sizeof r->dbpfx, "sc%d_%02d", (int)getpid(), runno);
    int port = free_port(seed * 31 + (uint64_t)runno);
    snprintf(r->endpoint, sizeof r->endpoint, "tcp://127.0.0.1:%d", port);
    snprintf(r->coord_conf, sizeof r->coord_conf, "%s/treatyd.conf", r->dir);
    struct report rep_setup = {0}, rep_atom = {0}, rep_money = {0}, rep_complete = {0}, rep_once = {0},
                  rep_outcome = {0}, rep_live = {0}, rep_rogue = {0};
    pthread_t rogue_th;
    bool rogue_started = false;
    long long quiesce_ms_taken = -1;
    long long prepared = -1, unfinished = -1;
    printf("\n== %s (seed %" PRIu64 ")%s%s\n", sc->name, seed, sc->description[0] ? ": " : "", sc->description);
    fflush(stdout);

    char jci[600];
    db_conninfo(r, "journal", jci, sizeof jci);
    FILE *f = fopen(r->coord_conf, "w");
    if (f == NULL || setup_databases(r) != 0 || plan_txs(r) != 0) {
        if (f)
            fclose(f);
        violation(&rep_setup, "set-up failed (databases or config in %s)", r->dir);
        goto report;
    }
    fprintf(f,
            "listen = \"%s\";\nlog_level = \"info\";\njournal = { conninfo = \"%s\"; connect_initial_ms = 50;"
            " connect_max_ms = 1000; };\ntwopc = { default_timeout_ms = 3000; resend_initial_ms = 100;"
            " resend_max_ms = 1000; };\nsaga = { stuck_after_attempts = 50; stuck_retry_ms = 1000; };\n"
            "registry = { heartbeat_ms = 200; dead_after_ms = 1500; };\n",
            r->endpoint, jci);
    if (sc->curve && setup_security(r, f) != 0) {
        fclose(f);
        violation(&rep_setup, "security set-up failed (keys, allow-list in %s/keys; see keygen.log)", r->dir);
        goto report;
    }
    fclose(f);

    add_proc(r, P_COORD, "coordinator", "c1");
    if (sc->twopc > 0)
        for (int b = 0; b < sc->banks; b++)
            for (int k = 0; k < sc->bank_instances; k++) {
                char svc[16], inst[16];
                snprintf(inst, sizeof inst, "%c%d", 'a' + b, k + 1);
                add_proc(r, P_BANK, bank_name(b, svc, sizeof svc), inst);
            }
    if (sc->sagas > 0) {
        static const char *const roles[3] = {"orders", "inventory", "payment"};
        for (int k = 0; k < sc->shop_instances; k++)
            for (int i = 0; i < 3; i++) {
                char inst[16];
                snprintf(inst, sizeof inst, "%c%d", roles[i][0], k + 1);
                add_proc(r, P_SHOP, roles[i], inst);
            }
    }
    plan_events(r);
    for (int i = 0; i < r->nevents; i++) {
        const struct event *e = &r->events[i];
        vlog("schedule +%lldms %s %s%s", e->at_ms,
             e->kind == 0   ? "SIGKILL"
             : e->kind == 1 ? "SIGSTOP"
                            : "restart",
             e->kind == 2 ? "postgres" : r->procs[e->proc].label, "");
    }

    for (int i = 0; i < r->nprocs; i++)
        if (proc_spawn(r, &r->procs[i]) != 0) {
            violation(&rep_setup, "cannot start %s", r->procs[i].label);
            goto stop;
        }
    if (wait_ready(r, 30000) != 0) {
        violation(&rep_setup, "the system did not come up (logs in %s)", r->dir);
        goto stop;
    }

    /* 3 + 4: workload and faults */
    r->t0 = now_ms();
    r->heal_at = r->t0 + sc->duration_ms;
    r->deadline = r->heal_at + sc->quiesce_ms / 2;
    pthread_t th[64];
    int nth = sc->concurrency;
    for (int i = 0; i < nth; i++)
        pthread_create(&th[i], NULL, worker, r);
    if (sc->rogue_rate > 0)
        rogue_started = pthread_create(&rogue_th, NULL, rogue, r) == 0;
    int next_event = 0;
    bool healed = false;
    long long quiet_at = -1;
    for (;;) {
        long long now = now_ms();
        reap(r);
        while (!healed && next_event < r->nevents && r->t0 + r->events[next_event].at_ms <= now) {
            struct event *e = &r->events[next_event++];
            if (e->kind == 2) {
                if (r->pg_helper == 0) {
                    pid_t pid = fork();
                    if (pid == 0) {
                        prctl(PR_SET_PDEATHSIG, SIGKILL);
                        int fd = open("/dev/null", 1);
                        if (fd >= 0) {
                            dup2(fd, 1);
                            dup2(fd, 2);
                        }
                        char script[600];
                        snprintf(script, sizeof script, "%s/scripts/pgtmp.sh", r->top);
                        execl("/bin/sh", "sh", script, "restart", r->pgdir, (char *)NULL);
                        _exit(127);
                    }
                    r->pg_helper = pid;
                    r->n_pg_restarts++;
                    vlog("+%lldms postgres restart", now - r->t0);
                }
                continue;
            }
            struct proc *p = &r->procs[e->proc];
            if (p->pid <= 0 || p->stopped)
                continue;
            if (e->kind == 0) {
                p->killed_by_us = true;
                proc_signal(p, SIGKILL);
                p->restart_at = now + e->dur_ms;
                r->n_kills++;
                vlog("+%lldms SIGKILL %s (down %d ms)", now - r->t0, p->label, e->dur_ms);
            } else {
                proc_signal(p, SIGSTOP);
                p->stopped = true;
                p->cont_at = now + e->dur_ms;
                r->n_stops++;
                vlog("+%lldms SIGSTOP %s (for %d ms)", now - r->t0, p->label, e->dur_ms);
            }
        }
        if (!healed && now >= r->heal_at) {
            healed = true;
            atomic_store(&r->healed, true);
            vlog("+%lldms heal", now - r->t0);
            char hf[600];
            snprintf(hf, sizeof hf, "%s/healed", r->dir);
            FILE *h = fopen(hf, "w");
            if (h)
                fclose(h);
            for (int i = 0; i < r->nprocs; i++) {
                struct proc *p = &r->procs[i];
                if (p->stopped) {
                    proc_signal(p, SIGCONT);
                    p->stopped = false;
                }
                if (p->pid == 0)
                    p->restart_at = now;
            }
        }
        for (int i = 0; i < r->nprocs; i++) {
            struct proc *p = &r->procs[i];
            if (p->stopped && p->cont_at >= 0 && now >= p->cont_at) {
                proc_signal(p, SIGCONT);
                p->stopped = false;
                vlog("+%lldms SIGCONT %s", now - r->t0, p->label);
            }
            if (p->pid == 0 && p->restart_at >= 0 && now >= p->restart_at) {
                r->n_restarts++;
                if (proc_spawn(r, p) != 0)
                    p->restart_at = now + 500;
            }
        }
        if (healed && atomic_load(&r->workers_done) == nth) {
            long long pc, uc;
            if (quiet_counts(r, &pc, &uc) == 0) {
                quiet_at = now_ms();
                break;
            }
            prepared = pc;
            unfinished = uc;
        }
        if (now > r->heal_at + sc->quiesce_ms)
            break;
        sleep_ms(healed ? 100 : 10);
    }
    if (quiet_at >= 0) {
        quiesce_ms_taken = quiet_at - r->heal_at;
        prepared = unfinished = 0;
    } else {
        int done = atomic_load(&r->workers_done);
        violation(&rep_live,
                  "not quiescent %d ms after the faults stopped: workers done %d/%d, treaty:* prepared "
                  "transactions %lld, unfinished journal transactions %lld",
                  sc->quiesce_ms, done, nth, prepared, unfinished);
    }
    for (int i = 0; i < nth; i++)
        pthread_join(th[i], NULL); /* workers stop at r->deadline at the latest */
    if (rogue_started)
        pthread_join(rogue_th, NULL); /* it stops at the heal */

    /* 7: checks */
    query_finals(r, &rep_outcome);
    check_outcomes(r, &rep_outcome);
    if (sc->twopc > 0)
        check_balances(r, &rep_atom, &rep_money);
    if (sc->sagas > 0)
        check_sagas(r, &rep_complete, &rep_once);
    if (quiet_at >= 0) {
        /* the checks above must not have left anything behind either */
        long long pc, uc;
        if (quiet_counts(r, &pc, &uc) != 0)
            violation(&rep_live, "after the checks: %lld prepared, %lld unfinished", pc, uc);
    }

stop:
    stop_all(r);
    count_net_faults(r);
    if (rogue_started)
        check_rogue(r, &rep_rogue); /* treatyd's log is complete now */
    else if (sc->rogue_rate > 0)
        violation(&rep_rogue, "the hostile peer did not run");

report:;
    int n[8] = {0};
    unsigned unknown = 0;
    for (int i = 0; i < r->ntx; i++) {
        const struct tx *t = &r->txs[i];
        switch (t->final_status) {
        case TREATY_STATUS_COMMITTED:
            n[0]++;
            break;
        case TREATY_STATUS_ABORTED:
            n[1]++;
            break;
        case TREATY_STATUS_COMPLETED:
            n[2]++;
            break;
        case TREATY_STATUS_COMPENSATED:
            n[3]++;
            break;
        default:
            n[4]++;
            break;
        }
        if (t->unknown_seen)
            unknown++;
    }
    struct {
        const char *name;
        struct report *rp;
        bool skipped;
    } rows[] = {
        {"set-up", &rep_setup, false},
        {"atomicity (2PC: all or none, per account)", &rep_atom, sc->twopc == 0},
        {"money conserved (2PC)", &rep_money, sc->twopc == 0},
        {"saga completed or fully compensated", &rep_complete, sc->sagas == 0},
        {"saga step applied at most once", &rep_once, sc->sagas == 0},
        {"reported outcome = final outcome", &rep_outcome, false},
        {"liveness (quiescent, no prepared, journal empty)", &rep_live, false},
        {"hostile peer: never registered, refusals logged", &rep_rogue, sc->rogue_rate == 0},
    };
    bool ok = true;
    printf("   transactions     2PC committed %d, aborted %d | sagas completed %d, compensated %d | not final %d\n",
           n[0], n[1], n[2], n[3], n[4]);
    printf("   client           %u saw UNKNOWN at least once, %ld resubmissions with the same txid\n", unknown,
           (long)atomic_load(&r->client_retries));
    printf("   faults injected  crash-point deaths %d, SIGKILL %d, SIGSTOP %d, postgres restarts %d, restarts %d\n",
           r->n_crash_deaths, r->n_kills, r->n_stops, r->n_pg_restarts, r->n_restarts);
    if (sc->nnets > 0)
        printf("   messages         %lu matched the filter: dropped %lu, duplicated %lu, delayed %lu"
               " (from processes that exited cleanly)\n",
               r->net_matched, r->net_dropped, r->net_dup, r->net_delayed);
    if (sc->rogue_rate > 0)
        printf("   hostile peer     forged %ld (%s), %ld (%s), %ld (%s); got back %ld, %ld, %ld messages\n",
               (long)atomic_load(&r->rogue_sent[0]), rogue_key_what[0], (long)atomic_load(&r->rogue_sent[1]),
               rogue_key_what[1], (long)atomic_load(&r->rogue_sent[2]), rogue_key_what[2],
               (long)atomic_load(&r->rogue_got[0]), (long)atomic_load(&r->rogue_got[1]),
               (long)atomic_load(&r->rogue_got[2]));
    printf("   %-50s %s\n", "invariant", "result");
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        if (i == 0 && rows[i].rp->count == 0)
            continue;
        printf("   %-50s %s\n", rows[i].name, pass_fail(rows[i].rp, rows[i].skipped));
        if (rows[i].rp->count > 0) {
            ok = false;
            fputs(rows[i].rp->text ? rows[i].rp->text : "", stdout);
            if (rows[i].rp->count > 40)
                printf("    ... and %u more\n", rows[i].rp->count - 40);
        }
    }
    if (quiesce_ms_taken >= 0)
        printf("   time to quiesce  %.2f s after the faults stopped (bound %.0f s)\n", quiesce_ms_taken / 1000.0,
               sc->quiesce_ms / 1000.0);
    else
        printf("   time to quiesce  not reached within %.0f s\n", sc->quiesce_ms / 1000.0);
    printf("   result           %s%s%s\n", ok ? "PASS" : "FAIL", ok && !keep ? "" : "; logs in ",
           ok && !keep ? "" : r->dir);
    fflush(stdout);
    if (ok && !keep) {
        char cmd[700];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", r->dir);
        if (system(cmd) != 0) {
        }
    }
    res->passed = ok;
    res->quiesce_s = quiesce_ms_taken / 1000.0;
    free(rep_setup.text);
    free(rep_atom.text);
    free(rep_money.text);
    free(rep_complete.text);
    free(rep_once.text);
    free(rep_outcome.text);
    free(rep_live.text);
    free(rep_rogue.text);
    free(r->txs);
    free(r);
    return ok ? 0 : 1;
}

/* ------------------------------------------------------------------- main */

static void usage(FILE *f)
{
    fprintf(f, "usage: treaty-scenario [--seed N] [--repeat K] [--bin DIR] [--pg CONNINFO --pgdir DIR]\n"
               "                       [--top DIR] [--keep] [--verbose] SCENARIO.conf...\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"seed", required_argument, NULL, 's'},  {"repeat", required_argument, NULL, 'r'},
        {"bin", required_argument, NULL, 'b'},   {"pg", required_argument, NULL, 'p'},
        {"pgdir", required_argument, NULL, 'd'}, {"top", required_argument, NULL, 't'},
        {"keep", no_argument, NULL, 'k'},        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0},
    };
    uint64_t seed = 1;
    int repeat = 1;
    const char *bindir = "build/bin", *pg = NULL, *pgdir = NULL, *top = ".";
    bool keep = false;
    int ch;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 's':
            seed = strtoull(optarg, NULL, 10);
            break;
        case 'r':
            repeat = atoi(optarg);
            break;
        case 'b':
            bindir = optarg;
            break;
        case 'p':
            pg = optarg;
            break;
        case 'd':
            pgdir = optarg;
            break;
        case 't':
            top = optarg;
            break;
        case 'k':
            keep = true;
            break;
        case 'v':
            verbose = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind >= argc || repeat < 1 || pg == NULL || pgdir == NULL) {
        usage(stderr);
        fprintf(stderr, "(--pg and --pgdir name the throwaway cluster; scenarios/run starts one)\n");
        return 2;
    }
    /* the runner's own client must not inherit fault settings */
    unsetenv("TREATY_CRASH_AT");
    unsetenv("TREATY_NET_FAULTS");
    signal(SIGPIPE, SIG_IGN);

    int nsc = argc - optind;
    struct scenario *scs = calloc((size_t)nsc, sizeof *scs);
    if (scs == NULL)
        return 1;
    for (int i = 0; i < nsc; i++) {
        char err[512];
        if (scenario_load(argv[optind + i], &scs[i], err, sizeof err) != 0) {
            fprintf(stderr, "treaty-scenario: %s\n", err);
            return 2;
        }
    }
    char workroot[] = "/tmp/treaty-scenarios.XXXXXX";
    if (mkdtemp(workroot) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    long long start = now_ms();
    int failed = 0, runs = 0, runno = 0;
    char summary[8192] = "";
    size_t sl = 0;
    for (int i = 0; i < nsc; i++) {
        for (int k = 0; k < repeat; k++) {
            struct result res = {0};
            long long t = now_ms();
            int rc = run_once(&scs[i], seed + (uint64_t)k, ++runno, bindir, pg, pgdir, top, workroot, keep, &res);
            runs++;
            if (rc != 0)
                failed++;
            if (sl < sizeof summary - 200)
                sl += (size_t)snprintf(summary + sl, sizeof summary - sl, "   %-36s seed %-6" PRIu64 " %s %6.1f s\n",
                                       scs[i].name, seed + (uint64_t)k, rc == 0 ? "PASS" : "FAIL",
                                       (now_ms() - t) / 1000.0);
        }
    }
    printf("\n== summary\n%s   %d run(s), %d passed, %d failed, %.1f s\n", summary, runs, runs - failed, failed,
           (now_ms() - start) / 1000.0);
    if (!keep) {
        if (rmdir(workroot) != 0 && failed == 0) {
        }
    }
    free(scs);
    return failed ? 1 : 0;
}
