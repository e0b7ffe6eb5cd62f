/*
 * treaty_bench.c - closed-loop load generator and meter for Treaty.
 *
 *   treaty-bench --workload 2pc-noop|2pc-bank|direct-bank|saga-noop
 *                [--endpoint EP] [--clients N] [--seconds T] [--warmup W]
 *                [--participants K] [--db-a CONNINFO --db-b CONNINFO]
 *                [--journal CONNINFO] [--coord-pid PID] [--threads M]
 *                [--accounts-per-client A] [--bank-services A,B]
 *                [--timeout-ms MS] [--json] [--quiet]
 *                [--server-key FILE --key BASE]
 *
 * Workloads
 *   2pc-noop     2PC transactions with one branch for each of the services
 *                noop-1 .. noop-K (bench/noop_participant: no database work),
 *                so what is measured is Treaty itself: client, coordinator,
 *                journal, participant SDK.
 *   2pc-bank     a transfer of 1 between two banks (examples/bank_service):
 *                branch 0 to service bank-a "ACCOUNT:-1", branch 1 to bank-b
 *                "ACCOUNT:1". Needs --db-a/--db-b to create the accounts.
 *   direct-bank  the baseline of 2pc-bank: the same database work with no
 *                coordinator. Per transfer, on a connection to each bank in
 *                turn: BEGIN; SELECT ... FOR UPDATE NOWAIT; UPDATE ...;
 *                PREPARE TRANSACTION 'direct:<uuid>:<n>'; then COMMIT PREPARED
 *                on bank A and on bank B.
 *   saga-noop    sagas of S steps (--steps, default 3), step i on service
 *                noop-(i % K + 1), action "noop", compensation "undo"
 *                (noop_participant); an outcome COMPLETED counts as committed.
 *   2pc-hold     not closed-loop: holds --hold N 2PC transactions in flight
 *                (services hold-1 .. hold-K, noop_participant --hold, which
 *                never votes) and reports treatyd's VmRSS growth per
 *                transaction (run_hold).
 *   query-probe  asks an unknown txid's outcome until treatyd answers, prints
 *                when (run_probe): time to serve after a start.
 *
 * Closed loop: N logical clients each keep exactly one transaction
 * outstanding and start the next one as soon as the previous one is answered.
 * For the 2PC workloads M threads (default min(N, 2)) each own one
 * treaty_client_t and drive their share of the N clients with
 * treaty_client_submit_async and poll(). direct-bank runs one thread per
 * client with two blocking libpq connections. Every logical client uses its
 * own accounts ("b<client>_<j>", j cycling through A accounts) so that
 * clients never contend for a row: what is measured is the protocol, not lock
 * waits.
 *
 * Measurement (the "window"): everything that completes during the first W
 * seconds is warm-up and not counted. At the start and at the end of the
 * next T seconds, while the load is running, the meter reads:
 *   - pg_stat_database.xact_commit of each database given (--journal, --db-a,
 *     --db-b): Postgres commits per committed transaction. These counters are
 *     flushed by busy backends about once a second, so the delta is accurate
 *     to about a second of work at each end; both ends lag alike.
 *   - the cluster's next transaction id (pg_snapshot_xmax): transactions that
 *     wrote anything, cluster-wide, exactly.
 *   - max(seq) of treaty_journal: rows appended in the window; afterwards the
 *     rows in that seq range give journal rows, journal batches (a batch is
 *     one Postgres transaction; its rows share now(), so count(DISTINCT
 *     written_at)) and forced batches (those holding a commit or abort
 *     decision, which the writer commits with synchronous_commit = on).
 *   - utime + stime of --coord-pid (/proc/PID/stat, all threads) and its
 *     VmRSS / VmHWM (/proc/PID/status).
 *   - utime + stime of the journal's Postgres backends (pg_stat_activity
 *     rows of application 'treatyd-journal' in the journal database, read
 *     from /proc/PID/stat: same host only): how busy the one connection that
 *     writes the journal keeps its server process, the usual limit.
 *   - busy time of the whole machine (/proc/stat), to show how loaded it was.
 * Latency is from just before a transaction is built to its outcome callback,
 * on CLOCK_MONOTONIC, for committed transactions completing in the window;
 * percentiles are nearest-rank over the sorted samples.
 *
 * Output: a table on stdout, or with --json one flat JSON object (one key per
 * line; absent figures are null) on stdout and the table on stderr. A live
 * progress line goes to stderr unless --quiet.
 * Exit status: 0 when the run completed (whatever the outcomes), 1 when it
 * could not run (setup failed, the services never answered, a transport
 * error), 2 on bad arguments.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "../examples/example_keys.h"
#include "treaty.h"

#define MAX_CLIENTS 4096
#define MAX_THREADS 64
#define MAX_PARTICIPANTS 16
#define MAX_DBS 3
#define NAME_MAX_LEN 64
#define PAYLOAD_MAX 96
#define READY_TIMEOUT_MS 30000
#define DRAIN_GRACE_MS 2000
#define POLL_CAP_MS 100
#define REASON_BUF 640

enum workload { W_2PC_NOOP, W_2PC_BANK, W_DIRECT_BANK, W_SAGA_NOOP, W_2PC_HOLD, W_QUERY_PROBE };

static const char *const workload_names[] = {"2pc-noop",  "2pc-bank", "direct-bank",
                                             "saga-noop", "2pc-hold", "query-probe"};

/* Phases of a run; the main thread moves them forward, workers read them. */
enum phase {
    PHASE_WARMUP = 0,  /* completions are not counted */
    PHASE_MEASURE = 1, /* completions are counted */
    PHASE_STOP = 2     /* start nothing new; drain what is outstanding */
};

struct options {
    enum workload workload;
    const char *endpoint;
    int clients;
    int seconds;
    int warmup;
    int participants;
    int threads;
    int accounts_per_client;
    int timeout_ms;
    int steps; /* saga-noop: steps per saga */
    int hold;  /* 2pc-hold: transactions to hold in flight */
    const char *db_a;
    const char *db_b;
    const char *journal;
    pid_t coord_pid;
    char bank_service[2][NAME_MAX_LEN + 1];
    bool json;
    bool quiet;
    struct example_keys keys;          /* --server-key, --key */
    const treaty_security_t *security; /* the keys loaded, or NULL: plaintext */
};

/* Samples of one worker: latencies in microseconds of committed transactions. */
struct samples {
    uint32_t *v;
    size_t n;
    size_t cap;
};

struct worker;

/* One logical client: at most one transaction outstanding. */
struct lclient {
    struct worker *w;
    int index;    /* global client number, 0 .. clients-1 */
    unsigned seq; /* transactions started, for cycling accounts */
    bool busy;
    int64_t start_ns;
};

struct worker {
    int id;
    pthread_t thread;
    struct lclient *lc; /* this worker's logical clients */
    int nlc;
    int idle; /* logical clients with nothing outstanding */
    /* Counted in the window only; written by the worker, read by main for
     * the progress line (relaxed atomics). */
    atomic_ulong committed;
    atomic_ulong aborted;
    atomic_ulong unknown;
    atomic_ulong refused;
    atomic_ulong failed;
    atomic_ulong completions; /* every phase, for the progress line */
    struct samples lat;
    int fatal;               /* a TREATY_E* that ended the worker early, or 0 */
    char reason[REASON_BUF]; /* first non-commit reason seen in the window */
    char fatal_msg[256];
};

/* Meter readings at one instant. */
struct snapshot {
    int64_t t_ns;
    bool have_cpu;
    unsigned long long coord_ticks;
    long coord_rss_kb;
    long coord_hwm_kb;
    bool have_xact;
    long long xact_commit;
    long long xact_rollback;
    bool have_xid;
    long long next_xid;
    bool have_journal;
    long long journal_seq;
    bool have_jbackend;
    unsigned long long jbackend_ticks; /* journal backends: utime + stime */
    unsigned long long machine_busy;   /* /proc/stat ticks */
    unsigned long long machine_total;
    double self_cpu_s;
};

static struct options opt;
static atomic_int phase = PHASE_WARMUP;

/* ------------------------------------------------------------- helpers */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_until_ns(int64_t when)
{
    struct timespec ts = {.tv_sec = (time_t)(when / 1000000000LL), .tv_nsec = (long)(when % 1000000000LL)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("treaty-bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (p == NULL)
        die("out of memory");
    return p;
}

static void samples_add(struct samples *s, uint32_t us)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4096;
        uint32_t *v = realloc(s->v, cap * sizeof *v);
        if (v == NULL)
            die("out of memory");
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = us;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted v (n > 0). */
static uint32_t percentile(const uint32_t *v, size_t n, double p)
{
    size_t rank = (size_t)(p * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return v[rank - 1];
}

/* Parses a whole decimal int in [lo, hi] or exits with status 2. */
static int parse_int(const char *flag, const char *s, int lo, int hi)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "treaty-bench: %s: must be an integer between %d and %d, got \"%s\"\n", flag, lo, hi, s);
        exit(2);
    }
    return (int)v;
}

/* The account a logical client uses for its seq-th transaction. */
static void account_name(char *buf, size_t len, int client, unsigned seq)
{
    snprintf(buf, len, "b%d_%u", client, seq % (unsigned)opt.accounts_per_client);
}

/* -------------------------------------------------------------- meters */

/* utime + stime (clock ticks) of pid from /proc/PID/stat. */
static bool read_proc_cpu(pid_t pid, unsigned long long *ticks)
{
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name (field 2) may hold spaces and parentheses: start
     * after the last ')'. Then field 3 (state) is token 0; utime (field 14)
     * is token 11 and stime (field 15) token 12. */
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return false;
    p++;
    unsigned long long ut = 0, st = 0;
    char *save = NULL;
    int i = 0;
    for (char *tok = strtok_r(p, " ", &save); tok != NULL; tok = strtok_r(NULL, " ", &save), i++) {
        if (i == 11)
            ut = strtoull(tok, NULL, 10);
        else if (i == 12) {
            st = strtoull(tok, NULL, 10);
            *ticks = ut + st;
            return true;
        }
    }
    return false;
}

/* Clock ticks of /proc/PID/stat as seconds. */
static double ticks_to_s(unsigned long long ticks)
{
    long hz = sysconf(_SC_CLK_TCK);
    return (double)ticks / (double)(hz > 0 ? hz : 100);
}

/* VmRSS and VmHWM (kB) of pid from /proc/PID/status. */
static bool read_proc_rss(pid_t pid, long *rss_kb, long *hwm_kb)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return false;
    *rss_kb = *hwm_kb = -1;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "VmRSS:", 6) == 0)
            *rss_kb = strtol(line + 6, NULL, 10);
        else if (strncmp(line, "VmHWM:", 6) == 0)
            *hwm_kb = strtol(line + 6, NULL, 10);
    }
    fclose(f);
    return *rss_kb >= 0;
}

/* Busy and total jiffies of the whole machine from the first line of /proc/stat. */
static void read_machine(unsigned long long *busy, unsigned long long *total)
{
    *busy = *total = 0;
    FILE *f = fopen("/proc/stat", "r");
    if (f == NULL)
        return;
    unsigned long long v[10] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                   &v[6], &v[7], &v[8], &v[9]);
    fclose(f);
    if (n < 5)
        return;
    /* user nice system idle iowait irq softirq steal (guest time is already in user) */
    for (int i = 0; i < 8 && i < n; i++)
        *total += v[i];
    *busy = *total - v[3] - v[4];
}

static double self_cpu_seconds(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           (double)ru.ru_stime.tv_usec / 1e6;
}

/* Monitoring connections, one per distinct conninfo. */
struct monitor {
    PGconn *db[MAX_DBS];
    const char *dbname[MAX_DBS];
    int ndb;
    PGconn *journal; /* borrowed from db[], or NULL */
    pid_t jpids[8];  /* the journal's backends when the window opened */
    int njpids;
};

static struct monitor mon;

static PGconn *monitor_connect(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK)
        die("cannot connect to \"%s\": %s", conninfo, PQerrorMessage(c));
    return c;
}

/* Adds conninfo to the monitor (once) and returns its connection. */
static PGconn *monitor_add(const char *conninfo)
{
    static const char *seen[MAX_DBS];
    for (int i = 0; i < mon.ndb; i++)
        if (strcmp(seen[i], conninfo) == 0)
            return mon.db[i];
    PGconn *c = monitor_connect(conninfo);
    seen[mon.ndb] = conninfo;
    mon.dbname[mon.ndb] = PQdb(c);
    mon.db[mon.ndb++] = c;
    return c;
}

/* One value of a one-row query, or false. */
static bool query_ll(PGconn *c, const char *sql, long long *out)
{
    PGresult *r = PQexec(c, sql);
    bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0);
    if (ok)
        *out = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    else if (PQresultStatus(r) != PGRES_TUPLES_OK)
        fprintf(stderr, "treaty-bench: query failed: %s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    return ok;
}

static void take_snapshot(struct snapshot *s)
{
    memset(s, 0, sizeof *s);
    /* Postgres first (it takes a few ms), then the process figures, so that
     * start and end snapshots are taken in the same order. */
    if (mon.ndb > 0) {
        s->have_xact = true;
        for (int i = 0; i < mon.ndb; i++) {
            long long c = 0, r = 0;
            if (!query_ll(mon.db[i], "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
                          &c) ||
                !query_ll(mon.db[i], "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()",
                          &r))
                s->have_xact = false;
            s->xact_commit += c;
            s->xact_rollback += r;
        }
        s->have_xid = query_ll(mon.db[0], "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint", &s->next_xid);
    }
    if (mon.journal != NULL)
        s->have_journal = query_ll(mon.journal, "SELECT coalesce(max(seq), 0) FROM treaty_journal", &s->journal_seq);
    if (mon.journal != NULL && mon.njpids == 0) {
        /* The first snapshot picks the backends; the second reads the
         * same ones (a reconnect in between makes the figure unavailable). */
        PGresult *r = PQexec(mon.journal, "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                          "AND application_name = 'treatyd-journal' ORDER BY pid LIMIT 8");
        for (int i = 0; PQresultStatus(r) == PGRES_TUPLES_OK && i < PQntuples(r); i++)
            mon.jpids[mon.njpids++] = (pid_t)strtol(PQgetvalue(r, i, 0), NULL, 10);
        PQclear(r);
    }
    s->have_jbackend = mon.njpids > 0;
    for (int i = 0; i < mon.njpids; i++) {
        unsigned long long t = 0;
        s->have_jbackend = s->have_jbackend && read_proc_cpu(mon.jpids[i], &t);
        s->jbackend_ticks += t;
    }
    if (opt.coord_pid > 0) {
        s->have_cpu = read_proc_cpu(opt.coord_pid, &s->coord_ticks) &&
                      read_proc_rss(opt.coord_pid, &s->coord_rss_kb, &s->coord_hwm_kb);
    }
    read_machine(&s->machine_busy, &s->machine_total);
    s->self_cpu_s = self_cpu_seconds();
    s->t_ns = now_ns();
}

/* Journal figures for the rows appended between two snapshots. */
struct journal_window {
    bool ok;
    long long rows, batches, forced_batches, commits;
};

static struct journal_window journal_window(long long from_seq, long long to_seq)
{
    struct journal_window jw = {false, 0, 0, 0, 0};
    if (mon.journal == NULL)
        return jw;
    char a[32], b[32];
    snprintf(a, sizeof a, "%lld", from_seq);
    snprintf(b, sizeof b, "%lld", to_seq);
    const char *params[2] = {a, b};
    PGresult *r = PQexecParams(mon.journal,
                               "SELECT count(*), count(DISTINCT written_at),"
                               " count(DISTINCT written_at) FILTER (WHERE kind NOT IN ('end', 'ends')),"
                               " count(*) FILTER (WHERE kind = 'commit')"
                               " FROM treaty_journal WHERE seq > $1::bigint AND seq <= $2::bigint",
                               2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
        jw.ok = true;
        jw.rows = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        jw.batches = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
        jw.forced_batches = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
        jw.commits = strtoll(PQgetvalue(r, 0, 3), NULL, 10);
    } else {
        fprintf(stderr, "treaty-bench: journal query failed: %s", PQresultErrorMessage(r));
    }
    PQclear(r);
    return jw;
}

/* ------------------------------------------------------ 2PC workloads */

/* Builds the transaction of logical client lc. 0 or a TREATY_E*. */
static int build_txn(struct lclient *lc, treaty_txn_t **out)
{
    treaty_txn_t *t = NULL;
    int rc = treaty_txn_new(&t);
    if (rc != 0)
        return rc;
    if (opt.workload == W_2PC_NOOP || opt.workload == W_2PC_HOLD) {
        for (int k = 1; k <= opt.participants && rc == 0; k++) {
            char svc[NAME_MAX_LEN + 1];
            snprintf(svc, sizeof svc, "%s-%d", opt.workload == W_2PC_HOLD ? "hold" : "noop", k);
            rc = treaty_txn_add_branch(t, svc, "noop", 4);
        }
    } else {
        char acct[32], pay[PAYLOAD_MAX];
        account_name(acct, sizeof acct, lc->index, lc->seq);
        int n = snprintf(pay, sizeof pay, "%s:-1", acct);
        rc = treaty_txn_add_branch(t, opt.bank_service[0], pay, (size_t)n);
        if (rc == 0) {
            n = snprintf(pay, sizeof pay, "%s:1", acct);
            rc = treaty_txn_add_branch(t, opt.bank_service[1], pay, (size_t)n);
        }
    }
    if (rc != 0) {
        treaty_txn_destroy(&t);
        return rc;
    }
    *out = t;
    return 0;
}

/* The saga of saga-noop: opt.steps steps, step i on service noop-(i % K + 1),
 * action "noop", compensation "undo" (bench/noop_participant). */
static int build_saga(treaty_saga_t **out)
{
    treaty_saga_t *s = NULL;
    int rc = treaty_saga_new(&s);
    if (rc != 0)
        return rc;
    for (int i = 0; i < opt.steps; i++) {
        char svc[NAME_MAX_LEN + 1];
        snprintf(svc, sizeof svc, "noop-%d", i % opt.participants + 1);
        rc = treaty_saga_add_step(s, svc, "noop", "noop", 4, "undo", "noop", 4);
        if (rc < 0) {
            treaty_saga_destroy(&s);
            return rc;
        }
    }
    *out = s;
    return 0;
}

static void on_outcome(void *arg, const treaty_outcome_t *o)
{
    struct lclient *lc = arg;
    struct worker *w = lc->w;
    int64_t lat_ns = now_ns() - lc->start_ns;
    lc->busy = false;
    w->idle++;
    atomic_fetch_add_explicit(&w->completions, 1, memory_order_relaxed);
    if (atomic_load_explicit(&phase, memory_order_relaxed) != PHASE_MEASURE)
        return;
    if (o->error != 0) {
        atomic_fetch_add_explicit(&w->refused, 1, memory_order_relaxed);
    } else if (o->status == TREATY_STATUS_COMMITTED || o->status == TREATY_STATUS_COMPLETED) {
        atomic_fetch_add_explicit(&w->committed, 1, memory_order_relaxed);
        int64_t us = lat_ns / 1000;
        samples_add(&w->lat, us > UINT32_MAX ? UINT32_MAX : (uint32_t)us);
        return;
    } else if (o->status == TREATY_STATUS_ABORTED) {
        atomic_fetch_add_explicit(&w->aborted, 1, memory_order_relaxed);
    } else {
        atomic_fetch_add_explicit(&w->unknown, 1, memory_order_relaxed);
    }
    if (w->reason[0] == '\0')
        snprintf(w->reason, sizeof w->reason, "%s%s%s (%s)", treaty_status_name(o->status), o->reason[0] ? ": " : "",
                 o->reason, o->error ? treaty_err_name(o->error) : "no error");
}

static int submit_one(treaty_client_t *c, struct lclient *lc)
{
    treaty_txn_t *t = NULL;
    lc->start_ns = now_ns();
    int rc;
    if (opt.workload == W_SAGA_NOOP) {
        treaty_saga_t *sg = NULL;
        rc = build_saga(&sg);
        if (rc != 0)
            return rc;
        rc = treaty_client_run_saga_async(c, sg, opt.timeout_ms, on_outcome, lc);
        treaty_saga_destroy(&sg); /* the client keeps its own encoded copy */
        if (rc != 0)
            return rc;
    } else {
        rc = build_txn(lc, &t);
        if (rc != 0)
            return rc;
        rc = treaty_client_submit_async(c, t, opt.timeout_ms, on_outcome, lc);
        treaty_txn_destroy(&t); /* the client keeps its own encoded copy */
        if (rc != 0)
            return rc;
    }
    lc->seq++;
    lc->busy = true;
    lc->w->idle--;
    return 0;
}

static void *twopc_worker(void *arg)
{
    struct worker *w = arg;
    treaty_client_t *c = NULL;
    int rc = treaty_client_new_secure(opt.endpoint, opt.security, &c);
    if (rc != 0) {
        w->fatal = rc;
        snprintf(w->fatal_msg, sizeof w->fatal_msg, "treaty_client_new: %s", treaty_strerror(rc));
        return NULL;
    }
    int fd = treaty_client_fd(c);
    int64_t drain_deadline = -1;
    w->idle = w->nlc;
    for (;;) {
        int ph = atomic_load(&phase);
        if (ph != PHASE_STOP) {
            for (int i = 0; i < w->nlc && w->idle > 0; i++) {
                if (w->lc[i].busy)
                    continue;
                rc = submit_one(c, &w->lc[i]);
                if (rc != 0) {
                    w->fatal = rc;
                    snprintf(w->fatal_msg, sizeof w->fatal_msg, "submit: %s (%s)", treaty_strerror(rc),
                             treaty_client_errmsg(c));
                    goto out;
                }
            }
        } else {
            if (drain_deadline < 0)
                drain_deadline = now_ns() + ((int64_t)opt.timeout_ms + DRAIN_GRACE_MS) * 1000000LL;
            if (w->idle == w->nlc || now_ns() > drain_deadline)
                break;
        }
        int n;
        while ((n = treaty_client_process(c)) > 0) {
        }
        if (n < 0) {
            w->fatal = n;
            snprintf(w->fatal_msg, sizeof w->fatal_msg, "process: %s (%s)", treaty_strerror(n),
                     treaty_client_errmsg(c));
            goto out;
        }
        if (w->idle > 0 && atomic_load(&phase) != PHASE_STOP)
            continue; /* callbacks freed clients: start their next transactions */
        int to = treaty_client_next_timeout(c);
        if (to < 0 || to > POLL_CAP_MS)
            to = POLL_CAP_MS;
        if (to > 0) {
            struct pollfd pfd = {.fd = fd, .events = POLLIN, .revents = 0};
            if (poll(&pfd, 1, to) < 0 && errno != EINTR) {
                w->fatal = TREATY_EIO;
                snprintf(w->fatal_msg, sizeof w->fatal_msg, "poll: %s", strerror(errno));
                goto out;
            }
        }
    }
out:
    treaty_client_destroy(&c);
    return NULL;
}

/* Blocks until one transaction of the workload commits, retrying for up to
 * READY_TIMEOUT_MS (participants register with the coordinator by their
 * heartbeats). Exits when it never does. */
static void wait_ready(void)
{
    treaty_client_t *c = NULL;
    int rc = treaty_client_new_secure(opt.endpoint, opt.security, &c);
    if (rc != 0)
        die("cannot create a client for %s: %s", opt.endpoint, treaty_strerror(rc));
    struct worker w;
    memset(&w, 0, sizeof w);
    struct lclient lc = {.w = &w, .index = 0, .seq = 0, .busy = false, .start_ns = 0};
    int64_t give_up = now_ns() + (int64_t)READY_TIMEOUT_MS * 1000000LL;
    char last[TREATY_REASON_MAX + 64] = "no answer";
    for (;;) {
        treaty_txn_t *t = NULL;
        treaty_outcome_t o;
        if (opt.workload == W_SAGA_NOOP) {
            treaty_saga_t *sg = NULL;
            rc = build_saga(&sg);
            if (rc != 0)
                die("cannot build a probe saga: %s", treaty_strerror(rc));
            rc = treaty_client_run_saga(c, sg, 2000, &o);
            treaty_saga_destroy(&sg);
            if (rc == 0 && o.error == 0 && o.status == TREATY_STATUS_COMPLETED)
                break;
            snprintf(last, sizeof last, "%s%s%s", rc != 0 ? treaty_strerror(rc) : treaty_status_name(o.status),
                     o.reason[0] ? ": " : "", o.reason);
            if (now_ns() > give_up)
                die("saga-noop: no saga completed within %d s: %s", READY_TIMEOUT_MS / 1000, last);
            struct timespec ts = {0, 100 * 1000000L};
            nanosleep(&ts, NULL);
            continue;
        }
        if (opt.workload == W_2PC_BANK) {
            /* A transfer of 0: touches the accounts, changes nothing. */
            char acct[32], pay[PAYLOAD_MAX];
            account_name(acct, sizeof acct, 0, 0);
            int n = snprintf(pay, sizeof pay, "%s:0", acct);
            rc = treaty_txn_new(&t);
            if (rc == 0)
                rc = treaty_txn_add_branch(t, opt.bank_service[0], pay, (size_t)n);
            if (rc == 0)
                rc = treaty_txn_add_branch(t, opt.bank_service[1], pay, (size_t)n);
        } else {
            rc = build_txn(&lc, &t);
        }
        if (rc != 0)
            die("cannot build a probe transaction: %s", treaty_strerror(rc));
        rc = treaty_client_submit(c, t, 2000, &o);
        treaty_txn_destroy(&t);
        if (rc == 0 && o.error == 0 && o.status == TREATY_STATUS_COMMITTED)
            break;
        snprintf(last, sizeof last, "%s%s%s%s%s", rc != 0 ? treaty_strerror(rc) : treaty_status_name(o.status),
                 o.reason[0] ? ": " : "", o.reason, o.error ? " " : "", o.error ? treaty_err_name(o.error) : "");
        if (now_ns() > give_up)
            die("the services did not commit a probe transaction within %d s at %s; last answer: %s",
                READY_TIMEOUT_MS / 1000, opt.endpoint, last);
        struct timespec ts = {0, 200 * 1000000L};
        nanosleep(&ts, NULL);
    }
    treaty_client_destroy(&c);
}

/* --------------------------------------------------------- bank setup */

static bool exec_ok(PGconn *c, const char *sql, ExecStatusType want, char *err, size_t errlen)
{
    PGresult *r = PQexec(c, sql);
    bool ok = PQresultStatus(r) == want;
    if (!ok && err != NULL)
        snprintf(err, errlen, "%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    return ok;
}

/* Creates the accounts table (as examples/bank_service does) and every
 * account the clients use, with a balance no run can exhaust. */
static void create_accounts(const char *conninfo)
{
    PGconn *c = monitor_connect(conninfo);
    char err[1024];
    (void)exec_ok(c, "SET client_min_messages = warning", PGRES_COMMAND_OK, NULL, 0);
    if (!exec_ok(c,
                 "CREATE TABLE IF NOT EXISTS accounts (id text PRIMARY KEY,"
                 " balance bigint NOT NULL CHECK (balance >= 0))",
                 PGRES_COMMAND_OK, err, sizeof err))
        die("%s", err);
    char sql[512];
    snprintf(sql, sizeof sql,
             "INSERT INTO accounts (id, balance)"
             " SELECT 'b' || c || '_' || a, 1000000000000 FROM generate_series(0, %d) c, generate_series(0, %d) a"
             " ON CONFLICT (id) DO NOTHING",
             opt.clients - 1, opt.accounts_per_client - 1);
    if (!exec_ok(c, sql, PGRES_COMMAND_OK, err, sizeof err))
        die("%s", err);
    PQfinish(c);
}

/* ----------------------------------------------------- direct-bank */

struct direct_conn {
    PGconn *c;
    char err[512];
};

/* The work of one bank's branch: lock the row, change it, prepare. Returns
 * true when prepared; otherwise the transaction is rolled back and err says why. */
static bool direct_prepare(struct direct_conn *d, const char *account, const char *delta, const char *gid)
{
    const char *params[2] = {account, delta};
    char sql[128];
    if (!exec_ok(d->c, "BEGIN", PGRES_COMMAND_OK, d->err, sizeof d->err))
        return false;
    PGresult *r = PQexecParams(d->c, "SELECT balance FROM accounts WHERE id = $1 FOR UPDATE NOWAIT", 1, NULL, params,
                               NULL, NULL, 0);
    bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
    if (!ok)
        snprintf(d->err, sizeof d->err, "select: %s", PQntuples(r) == 0 ? "no account" : PQresultErrorMessage(r));
    PQclear(r);
    if (ok) {
        r = PQexecParams(d->c,
                         "UPDATE accounts SET balance = balance + $2::bigint"
                         " WHERE id = $1 AND balance + $2::bigint >= 0",
                         2, NULL, params, NULL, NULL, 0);
        ok = PQresultStatus(r) == PGRES_COMMAND_OK && strcmp(PQcmdTuples(r), "1") == 0;
        if (!ok)
            snprintf(d->err, sizeof d->err, "update: %s",
                     PQresultStatus(r) == PGRES_COMMAND_OK ? "insufficient funds" : PQresultErrorMessage(r));
        PQclear(r);
    }
    if (ok) {
        snprintf(sql, sizeof sql, "PREPARE TRANSACTION '%s'", gid);
        ok = exec_ok(d->c, sql, PGRES_COMMAND_OK, d->err, sizeof d->err);
        if (ok)
            return true;
    }
    (void)exec_ok(d->c, "ROLLBACK", PGRES_COMMAND_OK, NULL, 0);
    return false;
}

/* COMMIT PREPARED / ROLLBACK PREPARED gid, retried once. */
static bool direct_finish(struct direct_conn *d, const char *verb, const char *gid)
{
    char sql[128];
    snprintf(sql, sizeof sql, "%s '%s'", verb, gid);
    for (int attempt = 0; attempt < 2; attempt++)
        if (exec_ok(d->c, sql, PGRES_COMMAND_OK, d->err, sizeof d->err))
            return true;
    return false;
}

static void *direct_worker(void *arg)
{
    struct worker *w = arg;
    struct lclient *lc = &w->lc[0];
    struct direct_conn a = {NULL, ""}, b = {NULL, ""};
    a.c = PQconnectdb(opt.db_a);
    b.c = PQconnectdb(opt.db_b);
    if (PQstatus(a.c) != CONNECTION_OK || PQstatus(b.c) != CONNECTION_OK) {
        w->fatal = TREATY_EPG;
        snprintf(w->fatal_msg, sizeof w->fatal_msg, "connect: %s",
                 PQerrorMessage(PQstatus(a.c) != CONNECTION_OK ? a.c : b.c));
        goto out;
    }
    while (atomic_load(&phase) != PHASE_STOP) {
        char acct[32], txid[TREATY_TXID_STRLEN], gid_a[64], gid_b[64];
        treaty_txid_t id;
        lc->start_ns = now_ns();
        account_name(acct, sizeof acct, lc->index, lc->seq++);
        if (treaty_txid_generate(&id) != 0) {
            w->fatal = TREATY_EIO;
            snprintf(w->fatal_msg, sizeof w->fatal_msg, "cannot generate a uuid");
            goto out;
        }
        treaty_txid_format(&id, txid);
        snprintf(gid_a, sizeof gid_a, "direct:%s:0", txid);
        snprintf(gid_b, sizeof gid_b, "direct:%s:1", txid);
        bool committed = false, failed = false;
        const char *why = NULL;
        if (!direct_prepare(&a, acct, "-1", gid_a)) {
            why = a.err;
        } else if (!direct_prepare(&b, acct, "1", gid_b)) {
            why = b.err;
            if (!direct_finish(&a, "ROLLBACK PREPARED", gid_a))
                failed = true;
        } else {
            bool ca = direct_finish(&a, "COMMIT PREPARED", gid_a);
            bool cb = direct_finish(&b, "COMMIT PREPARED", gid_b);
            committed = ca && cb;
            failed = !committed;
            if (failed)
                why = !ca ? a.err : b.err;
        }
        int64_t lat_ns = now_ns() - lc->start_ns;
        atomic_fetch_add_explicit(&w->completions, 1, memory_order_relaxed);
        if (atomic_load_explicit(&phase, memory_order_relaxed) == PHASE_MEASURE) {
            if (committed) {
                atomic_fetch_add_explicit(&w->committed, 1, memory_order_relaxed);
                int64_t us = lat_ns / 1000;
                samples_add(&w->lat, us > UINT32_MAX ? UINT32_MAX : (uint32_t)us);
            } else {
                atomic_fetch_add_explicit(failed ? &w->failed : &w->aborted, 1, memory_order_relaxed);
                if (w->reason[0] == '\0' && why != NULL)
                    snprintf(w->reason, sizeof w->reason, "%s", why);
            }
        }
        if (failed && PQstatus(a.c) != CONNECTION_OK) {
            w->fatal = TREATY_EPG;
            snprintf(w->fatal_msg, sizeof w->fatal_msg, "lost the connection to bank A");
            goto out;
        }
        if (failed && PQstatus(b.c) != CONNECTION_OK) {
            w->fatal = TREATY_EPG;
            snprintf(w->fatal_msg, sizeof w->fatal_msg, "lost the connection to bank B");
            goto out;
        }
    }
out:
    PQfinish(a.c);
    PQfinish(b.c);
    return NULL;
}

/* ----------------------------------------------------------- results */

struct result {
    double window_s;
    unsigned long long committed, aborted, unknown, refused, failed;
    size_t nlat;
    uint32_t p50, p95, p99, max;
    double mean_us;
    bool have_xact, have_xid, have_cpu;
    long long xact_commit, xact_rollback, write_xacts;
    struct journal_window jw;
    double cpu_s;
    long rss_kb, hwm_kb;
    bool have_jbackend;
    double jbackend_cpu_s;
    double machine_busy_pct;
    double self_cpu_s;
    char reason[REASON_BUF];
};

static double per_txn(double v, unsigned long long txns)
{
    return txns > 0 ? v / (double)txns : 0;
}

/* JSON helpers: one "key": value per line. */
static bool json_first = true;

static void jkey(const char *key)
{
    printf("%s\n  \"%s\": ", json_first ? "{" : ",", key);
    json_first = false;
}

static void jstr(const char *key, const char *v)
{
    jkey(key);
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

static void jint(const char *key, long long v)
{
    jkey(key);
    printf("%lld", v);
}

static void jnum(const char *key, bool have, double v)
{
    jkey(key);
    if (have)
        printf("%.6g", v);
    else
        fputs("null", stdout);
}

static void jend(void)
{
    fputs(json_first ? "{}\n" : "\n}\n", stdout);
}

static void print_json(const struct result *r)
{
    unsigned long long c = r->committed;
    jstr("tool", "treaty-bench");
    jstr("workload", workload_names[opt.workload]);
    jkey("curve");
    fputs(opt.security != NULL ? "true" : "false", stdout);
    jkey("available");
    fputs("true", stdout);
    jint("clients", opt.clients);
    jint("threads", opt.workload == W_DIRECT_BANK ? opt.clients : opt.threads);
    jnum("participants", opt.workload == W_2PC_NOOP || opt.workload == W_SAGA_NOOP, opt.participants);
    jnum("steps", opt.workload == W_SAGA_NOOP, opt.steps);
    jint("seconds", opt.seconds);
    jint("warmup", opt.warmup);
    jnum("window_s", true, r->window_s);
    jint("committed", (long long)r->committed);
    jint("aborted", (long long)r->aborted);
    jint("unknown", (long long)r->unknown);
    jint("refused", (long long)r->refused);
    jint("failed", (long long)r->failed);
    jnum("tps", true, r->window_s > 0 ? (double)c / r->window_s : 0);
    jnum("lat_p50_us", r->nlat > 0, r->p50);
    jnum("lat_p95_us", r->nlat > 0, r->p95);
    jnum("lat_p99_us", r->nlat > 0, r->p99);
    jnum("lat_max_us", r->nlat > 0, r->max);
    jnum("lat_mean_us", r->nlat > 0, r->mean_us);
    jint("pg_databases", mon.ndb);
    jnum("pg_xact_commit", r->have_xact, (double)r->xact_commit);
    jnum("pg_commits_per_txn", r->have_xact && c > 0, per_txn((double)r->xact_commit, c));
    jnum("pg_xact_rollback", r->have_xact, (double)r->xact_rollback);
    jnum("pg_write_xacts", r->have_xid, (double)r->write_xacts);
    jnum("pg_write_xacts_per_txn", r->have_xid && c > 0, per_txn((double)r->write_xacts, c));
    jnum("journal_rows", r->jw.ok, (double)r->jw.rows);
    jnum("journal_rows_per_txn", r->jw.ok && c > 0, per_txn((double)r->jw.rows, c));
    jnum("journal_batches", r->jw.ok, (double)r->jw.batches);
    jnum("journal_batches_per_txn", r->jw.ok && c > 0, per_txn((double)r->jw.batches, c));
    jnum("journal_forced_batches", r->jw.ok, (double)r->jw.forced_batches);
    jnum("journal_forced_per_txn", r->jw.ok && c > 0, per_txn((double)r->jw.forced_batches, c));
    jnum("journal_commit_records", r->jw.ok, (double)r->jw.commits);
    jnum("coord_pid", opt.coord_pid > 0, opt.coord_pid);
    jnum("coord_cpu_s", r->have_cpu, r->cpu_s);
    jnum("coord_cpu_s_per_1000_txn", r->have_cpu && c > 0, per_txn(r->cpu_s * 1000, c));
    jnum("coord_cpu_us_per_txn", r->have_cpu && c > 0, per_txn(r->cpu_s * 1e6, c));
    jnum("coord_rss_kb", r->have_cpu, (double)r->rss_kb);
    jnum("coord_hwm_kb", r->have_cpu, (double)r->hwm_kb);
    jnum("machine_busy_pct", true, r->machine_busy_pct);
    jnum("journal_backend_cpu_s", r->have_jbackend, r->jbackend_cpu_s);
    jnum("journal_backend_cpu_us_per_txn", r->have_jbackend && c > 0, per_txn(r->jbackend_cpu_s * 1e6, c));
    jnum("journal_backend_busy_pct", r->have_jbackend && r->window_s > 0, 100.0 * r->jbackend_cpu_s / r->window_s);
    jnum("bench_cpu_s", true, r->self_cpu_s);
    jstr("first_failure", r->reason);
    jend();
}

static void print_table(FILE *f, const struct result *r)
{
    unsigned long long c = r->committed;
    fprintf(f, "treaty-bench %s: %d clients", workload_names[opt.workload], opt.clients);
    if (opt.workload != W_DIRECT_BANK)
        fprintf(f, " on %d threads", opt.threads);
    if (opt.workload == W_2PC_NOOP)
        fprintf(f, ", %d participants", opt.participants);
    if (opt.workload == W_SAGA_NOOP)
        fprintf(f, ", %d steps over %d services", opt.steps, opt.participants);
    fprintf(f, "; window %.2f s after %d s warm-up\n", r->window_s, opt.warmup);
    fprintf(f, "  %-13s %.1f committed transactions/s\n", "throughput", r->window_s > 0 ? (double)c / r->window_s : 0);
    fprintf(f, "  %-13s committed %llu  aborted %llu  unknown %llu  refused %llu  failed %llu\n", "outcomes", c,
            r->aborted, r->unknown, r->refused, r->failed);
    if (r->reason[0])
        fprintf(f, "  %-13s %s\n", "first failure", r->reason);
    if (r->nlat > 0)
        fprintf(f, "  %-13s p50 %.3f ms  p95 %.3f ms  p99 %.3f ms  max %.3f ms  (mean %.3f ms, committed only)\n",
                "latency", r->p50 / 1000.0, r->p95 / 1000.0, r->p99 / 1000.0, r->max / 1000.0, r->mean_us / 1000.0);
    else
        fprintf(f, "  %-13s no committed transaction in the window\n", "latency");
    if (r->have_xact)
        fprintf(f,
                "  %-13s %.3f commits/txn (xact_commit +%lld over %d database%s), %.3f writing xacts/txn (cluster)\n",
                "postgres", per_txn((double)r->xact_commit, c), r->xact_commit, mon.ndb, mon.ndb == 1 ? "" : "s",
                per_txn((double)r->write_xacts, c));
    if (r->jw.ok)
        fprintf(f, "  %-13s %.3f rows/txn, %.3f batches/txn, %.3f forced batches/txn (%lld rows, %lld batches)\n",
                "journal", per_txn((double)r->jw.rows, c), per_txn((double)r->jw.batches, c),
                per_txn((double)r->jw.forced_batches, c), r->jw.rows, r->jw.batches);
    if (r->have_cpu)
        fprintf(f, "  %-13s cpu %.2f s = %.1f us/txn (%.4f s per 1000 txn), RSS %.1f MiB (peak %.1f MiB)\n",
                "coordinator", r->cpu_s, per_txn(r->cpu_s * 1e6, c), per_txn(r->cpu_s * 1000, c), r->rss_kb / 1024.0,
                r->hwm_kb / 1024.0);
    if (r->have_jbackend)
        fprintf(f, "  %-13s cpu %.2f s = %.1f us/txn, %.0f %% of one core (the journal's Postgres backend)\n",
                "journal pg", r->jbackend_cpu_s, per_txn(r->jbackend_cpu_s * 1e6, c),
                r->window_s > 0 ? 100.0 * r->jbackend_cpu_s / r->window_s : 0);
    fprintf(f, "  %-13s %.0f %% busy (all cores); treaty-bench itself used %.2f s CPU\n", "machine",
            r->machine_busy_pct, r->self_cpu_s);
}

/* ------------------------------------------------ memory and recovery */

/* Transactions submitted on one client handle by 2pc-hold: below the DEALER
 * socket's send high-water mark (1000), so no submission is dropped. */
#define HOLD_PER_CLIENT 500
#define HOLD_SETTLE_MS 3000
#define HOLD_MAX_WAIT_MS 120000

static long rss_now(void)
{
    long rss = -1, hwm = -1;
    if (!read_proc_rss(opt.coord_pid, &rss, &hwm))
        die("--coord-pid %ld: cannot read /proc/%ld/status", (long)opt.coord_pid, (long)opt.coord_pid);
    return rss;
}

/*
 * 2pc-hold: the coordinator's memory per transaction in flight. Submits
 * opt.hold transactions to services hold-1..hold-K, whose participants
 * (noop_participant --hold) never vote, so every one stays in PREPARING
 * until its timeout (--timeout-ms). The client handles are never processed
 * after submitting, so they send no re-submissions while we measure. The
 * figure is the growth of treatyd's VmRSS from before the first submission
 * to when it stops growing (no growth for HOLD_SETTLE_MS), over opt.hold.
 */
static int run_hold(void)
{
    if (opt.coord_pid <= 0)
        die("2pc-hold needs --coord-pid");
    int nc = (opt.hold + HOLD_PER_CLIENT - 1) / HOLD_PER_CLIENT;
    treaty_client_t **cs = xcalloc((size_t)nc, sizeof *cs);
    struct worker w;
    memset(&w, 0, sizeof w);
    struct lclient lc = {.w = &w, .index = 0, .seq = 0, .busy = false, .start_ns = 0};
    long rss0 = rss_now();
    int64_t t0 = now_ns();
    int submitted = 0;
    for (int i = 0; i < nc; i++) {
        int rc = treaty_client_new_secure(opt.endpoint, opt.security, &cs[i]);
        if (rc != 0)
            die("treaty_client_new: %s", treaty_strerror(rc));
        for (int k = 0; k < HOLD_PER_CLIENT && submitted < opt.hold; k++, submitted++) {
            treaty_txn_t *t = NULL;
            rc = build_txn(&lc, &t);
            if (rc == 0)
                rc = treaty_client_submit_async(cs[i], t, opt.timeout_ms, on_outcome, &lc);
            treaty_txn_destroy(&t);
            if (rc != 0)
                die("submit: %s (%s)", treaty_strerror(rc), treaty_client_errmsg(cs[i]));
        }
        /* Let the handle's I/O thread drain before the next one starts. */
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL);
    }
    int64_t t_submitted = now_ns();
    long rss = rss_now(), peak = rss;
    int64_t stable_since = now_ns();
    while (now_ns() - stable_since < (int64_t)HOLD_SETTLE_MS * 1000000LL &&
           now_ns() - t0 < (int64_t)HOLD_MAX_WAIT_MS * 1000000LL) {
        struct timespec ts = {0, 250 * 1000000L};
        nanosleep(&ts, NULL);
        rss = rss_now();
        if (rss > peak) {
            peak = rss;
            stable_since = now_ns();
        }
    }
    double per_txn = (double)(peak - rss0) * 1024.0 / (double)opt.hold;
    if (opt.json) {
        jstr("tool", "treaty-bench");
        jstr("workload", "2pc-hold");
        jint("held", opt.hold);
        jint("participants", opt.participants);
        jint("client_handles", nc);
        jnum("submit_s", true, (double)(t_submitted - t0) / 1e9);
        jint("coord_rss_before_kb", rss0);
        jint("coord_rss_after_kb", peak);
        jnum("coord_bytes_per_inflight_txn", true, per_txn);
        jend();
    }
    fprintf(opt.json ? stderr : stdout,
            "treaty-bench 2pc-hold: %d transactions held in flight (%d participants, %d client handles, submitted "
            "in %.2f s)\n  coordinator VmRSS %ld -> %ld kB: %.0f bytes per transaction in flight\n",
            opt.hold, opt.participants, nc, (double)(t_submitted - t0) / 1e9, rss0, peak, per_txn);
    /* Dropping the handles drops their requests; the coordinator aborts the
     * held transactions at their deadline. */
    for (int i = 0; i < nc; i++)
        treaty_client_destroy(&cs[i]);
    free(cs);
    return 0;
}

/*
 * query-probe: how soon a (re)starting coordinator serves clients. Asks for
 * the outcome of an unknown txid every 100 ms (each query waiting up to
 * 200 ms) until one is answered, for up to --seconds. Prints the
 * CLOCK_REALTIME of the answer in ns, so that a script can subtract the time
 * it started treatyd.
 */
static int run_probe(void)
{
    treaty_client_t *c = NULL;
    int rc = treaty_client_new_secure(opt.endpoint, opt.security, &c);
    if (rc != 0)
        die("treaty_client_new: %s", treaty_strerror(rc));
    int64_t give_up = now_ns() + (int64_t)opt.seconds * 1000000000LL;
    unsigned tries = 0;
    treaty_outcome_t o;
    for (;;) {
        treaty_txid_t id;
        treaty_txid_generate(&id);
        tries++;
        rc = treaty_client_query(c, &id, 200, &o);
        if (rc == 0)
            break;
        if (now_ns() > give_up) {
            treaty_client_destroy(&c);
            fprintf(stderr, "treaty-bench query-probe: no answer within %d s: %s\n", opt.seconds, treaty_strerror(rc));
            return 1;
        }
    }
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    long long ns = (long long)rt.tv_sec * 1000000000LL + rt.tv_nsec;
    if (opt.json) {
        jstr("tool", "treaty-bench");
        jstr("workload", "query-probe");
        jint("answered_realtime_ns", ns);
        jint("queries", tries);
        jstr("status", treaty_status_name(o.status));
        jend();
    } else {
        printf("answered at %lld (realtime ns) after %u queries: %s\n", ns, tries, treaty_status_name(o.status));
    }
    treaty_client_destroy(&c);
    return 0;
}

/* ---------------------------------------------------------------- main */

static void usage(FILE *f)
{
    fprintf(f, "usage: treaty-bench --workload 2pc-noop|2pc-bank|direct-bank|saga-noop|2pc-hold|query-probe [options]\n"
               "  --endpoint EP            coordinator (default tcp://127.0.0.1:7600)\n"
               "  --clients N              concurrent closed-loop clients (default 1)\n"
               "  --seconds T              measured window (default 10)\n"
               "  --warmup W               seconds excluded before the window (default 2)\n"
               "  --participants K         2pc-noop: services noop-1..noop-K (default 2)\n"
               "  --threads M              2PC client threads (default min(N, 2))\n"
               "  --db-a/--db-b CONNINFO   bank databases (2pc-bank, direct-bank)\n"
               "  --bank-services A,B      bank service names (default bank-a,bank-b)\n"
               "  --accounts-per-client A  accounts each client cycles through (default 8)\n"
               "  --journal CONNINFO       coordinator's journal database (2PC workloads)\n"
               "  --coord-pid PID          coordinator process, for CPU and RSS\n"
               "  --timeout-ms MS          per-transaction timeout (default 30000)\n"
               "  --steps S                saga-noop: steps per saga over noop-1..noop-K (default 3)\n"
               "  --hold N                 2pc-hold: transactions to hold in flight (default 100000)\n"
               "  --server-key FILE        CURVE: the coordinator's public key file (treatyd --keygen's .pub)\n"
               "  --key BASE               CURVE: this client's key pair BASE.pub / BASE.key (with --server-key)\n"
               "  --json                   JSON on stdout (the table goes to stderr)\n"
               "  --quiet                  no progress line\n");
}

static void parse_args(int argc, char **argv)
{
    static const struct option opts[] = {
        {"endpoint", required_argument, NULL, 'e'},
        {"workload", required_argument, NULL, 'w'},
        {"clients", required_argument, NULL, 'c'},
        {"seconds", required_argument, NULL, 'T'},
        {"warmup", required_argument, NULL, 'W'},
        {"participants", required_argument, NULL, 'k'},
        {"threads", required_argument, NULL, 't'},
        {"db-a", required_argument, NULL, 'a'},
        {"db-b", required_argument, NULL, 'b'},
        {"bank-services", required_argument, NULL, 'B'},
        {"accounts-per-client", required_argument, NULL, 'A'},
        {"journal", required_argument, NULL, 'j'},
        {"coord-pid", required_argument, NULL, 'p'},
        {"timeout-ms", required_argument, NULL, 'o'},
        {"steps", required_argument, NULL, 'S'},
        {"hold", required_argument, NULL, 'H'},
        {"json", no_argument, NULL, 'J'},
        {"quiet", no_argument, NULL, 'q'},
        {"server-key", required_argument, NULL, 'K'},
        {"key", required_argument, NULL, 'Y'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *workload = NULL;
    opt.endpoint = "tcp://127.0.0.1:7600";
    opt.clients = 1;
    opt.seconds = 10;
    opt.warmup = 2;
    opt.participants = 2;
    opt.threads = 0;
    opt.accounts_per_client = 8;
    opt.timeout_ms = 30000;
    opt.steps = 3;
    opt.hold = 100000;
    snprintf(opt.bank_service[0], sizeof opt.bank_service[0], "bank-a");
    snprintf(opt.bank_service[1], sizeof opt.bank_service[1], "bank-b");
    int ch;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'e':
            opt.endpoint = optarg;
            break;
        case 'w':
            workload = optarg;
            break;
        case 'c':
            opt.clients = parse_int("--clients", optarg, 1, MAX_CLIENTS);
            break;
        case 'T':
            opt.seconds = parse_int("--seconds", optarg, 1, 86400);
            break;
        case 'W':
            opt.warmup = parse_int("--warmup", optarg, 0, 3600);
            break;
        case 'k':
            opt.participants = parse_int("--participants", optarg, 1, MAX_PARTICIPANTS);
            break;
        case 't':
            opt.threads = parse_int("--threads", optarg, 1, MAX_THREADS);
            break;
        case 'a':
            opt.db_a = optarg;
            break;
        case 'b':
            opt.db_b = optarg;
            break;
        case 'B': {
            const char *comma = strchr(optarg, ',');
            size_t l0 = comma != NULL ? (size_t)(comma - optarg) : 0;
            if (comma == NULL || l0 == 0 || l0 > NAME_MAX_LEN || strlen(comma + 1) == 0 ||
                strlen(comma + 1) > NAME_MAX_LEN || strchr(comma + 1, ',') != NULL) {
                fprintf(stderr, "treaty-bench: --bank-services: want two names \"A,B\", got \"%s\"\n", optarg);
                exit(2);
            }
            snprintf(opt.bank_service[0], sizeof opt.bank_service[0], "%.*s", (int)l0, optarg);
            snprintf(opt.bank_service[1], sizeof opt.bank_service[1], "%s", comma + 1);
            break;
        }
        case 'A':
            opt.accounts_per_client = parse_int("--accounts-per-client", optarg, 1, 100000);
            break;
        case 'j':
            opt.journal = optarg;
            break;
        case 'p':
            opt.coord_pid = (pid_t)parse_int("--coord-pid", optarg, 1, INT_MAX);
            break;
        case 'o':
            opt.timeout_ms = parse_int("--timeout-ms", optarg, 1, 3600000);
            break;
        case 'S':
            opt.steps = parse_int("--steps", optarg, 1, 64);
            break;
        case 'H':
            opt.hold = parse_int("--hold", optarg, 1, 10000000);
            break;
        case 'J':
            opt.json = true;
            break;
        case 'q':
            opt.quiet = true;
            break;
        case 'K':
            opt.keys.server_key_file = optarg;
            break;
        case 'Y':
            opt.keys.key_base = optarg;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            exit(2);
        }
    }
    if (optind != argc || workload == NULL) {
        usage(stderr);
        exit(2);
    }
    bool known = false;
    for (size_t i = 0; i < sizeof workload_names / sizeof workload_names[0]; i++) {
        if (strcmp(workload, workload_names[i]) == 0) {
            opt.workload = (enum workload)i;
            known = true;
        }
    }
    if (!known) {
        fprintf(stderr,
                "treaty-bench: --workload: unknown workload \"%s\" (2pc-noop, 2pc-bank, direct-bank, saga-noop, "
                "2pc-hold, query-probe)\n",
                workload);
        exit(2);
    }
    if ((opt.workload == W_2PC_BANK || opt.workload == W_DIRECT_BANK) && (opt.db_a == NULL || opt.db_b == NULL)) {
        fprintf(stderr, "treaty-bench: --workload %s needs --db-a and --db-b\n", workload);
        exit(2);
    }
    int keys_failed;
    opt.security = example_keys_load(&opt.keys, "treaty-bench", &keys_failed);
    if (keys_failed)
        exit(2);
    if (opt.threads == 0)
        opt.threads = opt.clients < 2 ? opt.clients : 2;
    if (opt.threads > opt.clients)
        opt.threads = opt.clients;
}

/* Sleeps from `from` until `until`, printing the progress line to stderr on
 * the way (every 0.5 s on a terminal, else every 2 s) unless --quiet. */
static void progress(struct worker *ws, int nw, const char *label, int64_t from, int64_t until, bool tty)
{
    static unsigned long long last_total;
    static int64_t last_t;
    if (opt.quiet) {
        sleep_until_ns(until);
        return;
    }
    int64_t step = (tty ? 500 : 2000) * 1000000LL;
    if (last_t == 0)
        last_t = from;
    for (int64_t t = from + step;; t += step) {
        bool last = t >= until;
        sleep_until_ns(last ? until : t);
        unsigned long long total = 0, ok = 0, ab = 0, other = 0;
        for (int i = 0; i < nw; i++) {
            total += atomic_load_explicit(&ws[i].completions, memory_order_relaxed);
            ok += atomic_load_explicit(&ws[i].committed, memory_order_relaxed);
            ab += atomic_load_explicit(&ws[i].aborted, memory_order_relaxed);
            other += atomic_load_explicit(&ws[i].unknown, memory_order_relaxed) +
                     atomic_load_explicit(&ws[i].refused, memory_order_relaxed) +
                     atomic_load_explicit(&ws[i].failed, memory_order_relaxed);
        }
        int64_t now = now_ns();
        double rate = last_t > 0 && now > last_t ? (double)(total - last_total) * 1e9 / (double)(now - last_t) : 0;
        last_total = total;
        last_t = now;
        fprintf(stderr, "%s  %-11s %-7s %5.1f/%.0f s %9.1f tx/s   committed %llu  aborted %llu  other %llu   %s",
                tty ? "\r" : "", workload_names[opt.workload], label, (double)(now - from) / 1e9,
                (double)(until - from) / 1e9, rate, ok, ab, other, tty ? "" : "\n");
        fflush(stderr);
        if (last)
            return;
    }
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);

    if (opt.workload == W_QUERY_PROBE)
        return run_probe();
    if (opt.workload == W_2PC_HOLD)
        return run_hold();

    /* Meters. */
    if (opt.workload != W_DIRECT_BANK && opt.journal != NULL)
        mon.journal = monitor_add(opt.journal);
    if (opt.workload == W_2PC_BANK || opt.workload == W_DIRECT_BANK) {
        monitor_add(opt.db_a);
        monitor_add(opt.db_b);
        create_accounts(opt.db_a);
        create_accounts(opt.db_b);
    }
    if (opt.coord_pid > 0 && opt.workload != W_DIRECT_BANK) {
        unsigned long long t;
        if (!read_proc_cpu(opt.coord_pid, &t))
            die("--coord-pid %ld: cannot read /proc/%ld/stat", (long)opt.coord_pid, (long)opt.coord_pid);
    } else {
        opt.coord_pid = 0;
    }
    if (opt.workload != W_DIRECT_BANK)
        wait_ready();

    /* Workers and their logical clients. */
    int nw = opt.workload == W_DIRECT_BANK ? opt.clients : opt.threads;
    struct worker *ws = xcalloc((size_t)nw, sizeof *ws);
    struct lclient *lcs = xcalloc((size_t)opt.clients, sizeof *lcs);
    for (int i = 0, next = 0; i < nw; i++) {
        int share = opt.clients / nw + (i < opt.clients % nw ? 1 : 0);
        ws[i].id = i;
        ws[i].lc = &lcs[next];
        ws[i].nlc = share;
        for (int k = 0; k < share; k++) {
            lcs[next + k].w = &ws[i];
            lcs[next + k].index = next + k;
        }
        next += share;
    }
    bool tty = isatty(STDERR_FILENO);
    atomic_store(&phase, PHASE_WARMUP);
    int64_t t0 = now_ns();
    for (int i = 0; i < nw; i++) {
        int rc =
            pthread_create(&ws[i].thread, NULL, opt.workload == W_DIRECT_BANK ? direct_worker : twopc_worker, &ws[i]);
        if (rc != 0)
            die("pthread_create: %s", strerror(rc));
    }

    /* Warm-up, then the window between two snapshots. */
    int64_t t_measure = t0 + (int64_t)opt.warmup * 1000000000LL;
    if (opt.warmup > 0)
        progress(ws, nw, "warm-up", t0, t_measure, tty);
    struct snapshot s0, s1;
    take_snapshot(&s0);
    atomic_store(&phase, PHASE_MEASURE);
    int64_t w0 = now_ns();
    progress(ws, nw, "measure", w0, w0 + (int64_t)opt.seconds * 1000000000LL, tty);
    take_snapshot(&s1);
    atomic_store(&phase, PHASE_STOP);
    int64_t w1 = now_ns();
    if (!opt.quiet && tty)
        fputc('\n', stderr);
    for (int i = 0; i < nw; i++)
        pthread_join(ws[i].thread, NULL);

    /* Results. */
    struct result r;
    memset(&r, 0, sizeof r);
    r.window_s = (double)(w1 - w0) / 1e9;
    int fatal = 0;
    size_t nlat = 0;
    for (int i = 0; i < nw; i++) {
        r.committed += atomic_load(&ws[i].committed);
        r.aborted += atomic_load(&ws[i].aborted);
        r.unknown += atomic_load(&ws[i].unknown);
        r.refused += atomic_load(&ws[i].refused);
        r.failed += atomic_load(&ws[i].failed);
        nlat += ws[i].lat.n;
        if (r.reason[0] == '\0' && ws[i].reason[0] != '\0')
            snprintf(r.reason, sizeof r.reason, "%s", ws[i].reason);
        if (ws[i].fatal != 0) {
            fprintf(stderr, "treaty-bench: worker %d stopped: %s\n", i, ws[i].fatal_msg);
            fatal = ws[i].fatal;
        }
    }
    uint32_t *all = xcalloc(nlat > 0 ? nlat : 1, sizeof *all);
    size_t off = 0;
    double sum = 0;
    for (int i = 0; i < nw; i++) {
        memcpy(all + off, ws[i].lat.v, ws[i].lat.n * sizeof *all);
        off += ws[i].lat.n;
        free(ws[i].lat.v);
    }
    qsort(all, nlat, sizeof *all, cmp_u32);
    for (size_t i = 0; i < nlat; i++)
        sum += all[i];
    r.nlat = nlat;
    if (nlat > 0) {
        r.p50 = percentile(all, nlat, 0.50);
        r.p95 = percentile(all, nlat, 0.95);
        r.p99 = percentile(all, nlat, 0.99);
        r.max = all[nlat - 1];
        r.mean_us = sum / (double)nlat;
    }
    r.have_xact = s0.have_xact && s1.have_xact;
    r.xact_commit = s1.xact_commit - s0.xact_commit;
    r.xact_rollback = s1.xact_rollback - s0.xact_rollback;
    r.have_xid = s0.have_xid && s1.have_xid;
    r.write_xacts = s1.next_xid - s0.next_xid;
    if (s0.have_journal && s1.have_journal)
        r.jw = journal_window(s0.journal_seq, s1.journal_seq);
    r.have_cpu = s0.have_cpu && s1.have_cpu;
    if (r.have_cpu) {
        r.cpu_s = ticks_to_s(s1.coord_ticks - s0.coord_ticks);
        r.rss_kb = s1.coord_rss_kb;
        r.hwm_kb = s1.coord_hwm_kb;
    }
    r.have_jbackend = s0.have_jbackend && s1.have_jbackend;
    if (r.have_jbackend)
        r.jbackend_cpu_s = ticks_to_s(s1.jbackend_ticks - s0.jbackend_ticks);
    unsigned long long dt = s1.machine_total - s0.machine_total;
    r.machine_busy_pct = dt > 0 ? 100.0 * (double)(s1.machine_busy - s0.machine_busy) / (double)dt : 0;
    r.self_cpu_s = s1.self_cpu_s - s0.self_cpu_s;

    if (opt.json) {
        print_json(&r);
        print_table(stderr, &r);
    } else {
        print_table(stdout, &r);
    }
    free(all);
    free(ws);
    free(lcs);
    for (int i = 0; i < mon.ndb; i++)
        PQfinish(mon.db[i]);
    return fatal != 0 ? 1 : 0;
}
