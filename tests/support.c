/*
 * support.c - see support.h.
 */
#include "support.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

extern char **environ;

/* ------------------------------------------------------------ environment */

static const char *need_env(const char *name, const char *what)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0')
        cr_assert_fail("%s is not set: %s. Run the suite through `make test` (tests/run.sh), "
                       "which starts a throwaway PostgreSQL and exports it; integration tests never skip.",
                       name, what);
    return v;
}

const char *support_pg_base(void)
{
    return need_env("TREATY_TEST_PG", "base libpq conninfo of the test cluster");
}

const char *support_pg_dir(void)
{
    return need_env("TREATY_TEST_PGDIR", "directory of the test cluster");
}

const char *support_bin_dir(void)
{
    return need_env("TREATY_BIN", "directory of treatyd and the example binaries");
}

const char *support_top_dir(void)
{
    return need_env("TREATY_TOP", "the source tree");
}

long long support_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void support_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void mkdir_p(const char *path)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(buf, 0755);
            *p = '/';
        }
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        cr_assert_fail("mkdir %s: %s", buf, strerror(errno));
}

/* "suite-test" with anything but [A-Za-z0-9_.-] replaced, as the e2e suite's
 * report hook computes it too. */
static void test_dir_name(char *buf, size_t len)
{
    const struct criterion_test *t = criterion_current_test;
    if (t == NULL) {
        snprintf(buf, len, "no-test");
        return;
    }
    snprintf(buf, len, "%s-%s", t->category, t->name);
    for (char *p = buf; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '.' && *p != '-')
            *p = '_';
}

const char *support_log_dir(void)
{
    static char dir[512];
    if (dir[0] != '\0')
        return dir;
    const char *base = getenv("TREATY_E2E_LOGDIR");
    if (base != NULL && *base != '\0') {
        char name[256];
        test_dir_name(name, sizeof name);
        snprintf(dir, sizeof dir, "%s/%s", base, name);
    } else {
        snprintf(dir, sizeof dir, "/tmp/treaty-test-logs.%ld", (long)getpid());
    }
    mkdir_p(dir);
    return dir;
}

/* ----------------------------------------------------------- restart lock */

static int lock_fd = -1;
static int lock_mode; /* 0 none, LOCK_SH, LOCK_EX */

static void take_lock(int mode)
{
    if (lock_fd < 0) {
        char path[600];
        snprintf(path, sizeof path, "%s/restart.lock", support_pg_dir());
        lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
        cr_assert(lock_fd >= 0, "open %s: %s", path, strerror(errno));
    }
    while (flock(lock_fd, mode) != 0) {
        cr_assert(errno == EINTR, "flock restart.lock: %s", strerror(errno));
    }
    lock_mode = mode;
}

void support_lock_shared(void)
{
    take_lock(LOCK_SH);
}

void support_lock_exclusive(void)
{
    take_lock(LOCK_EX);
}

void support_unlock(void)
{
    if (lock_fd >= 0) {
        flock(lock_fd, LOCK_UN);
        close(lock_fd);
        lock_fd = -1;
    }
    lock_mode = 0;
}

/* --------------------------------------------------------------- Postgres */

static char *vfmt(const char *fmt, va_list ap)
{
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        cr_assert_fail("out of memory");
    return s;
}

static char *conninfo_with_timeout(const char *conninfo)
{
    char *s = NULL;
    if (asprintf(&s, "%s connect_timeout=10", conninfo) < 0)
        cr_assert_fail("out of memory");
    return s;
}

void support_db_conninfo(const char *db, char *buf, size_t len)
{
    int n = snprintf(buf, len, "%s dbname=%s", support_pg_base(), db);
    cr_assert(n > 0 && (size_t)n < len, "conninfo buffer too small");
}

void support_db_create(const char *tag, char *name, size_t namelen)
{
    static unsigned counter;
    char clean[24];
    size_t i = 0;
    for (; tag[i] != '\0' && i < sizeof clean - 1; i++)
        clean[i] = isalnum((unsigned char)tag[i]) ? (char)tolower((unsigned char)tag[i]) : '_';
    clean[i] = '\0';
    int n = snprintf(name, namelen, "t_%s_%ld_%u", clean, (long)getpid(), counter++);
    cr_assert(n > 0 && (size_t)n < namelen && n < 63, "database name too long");

    char admin[600];
    support_db_conninfo("postgres", admin, sizeof admin);
    PGconn *c = support_pg_connect(admin);
    /* CREATE DATABASE fails while another session uses template1; that is
     * brief (another test creating its own database), so retry. */
    long long deadline = support_now_ms() + SUPPORT_DEADLINE_MS;
    for (;;) {
        char sql[128];
        snprintf(sql, sizeof sql, "CREATE DATABASE \"%s\"", name);
        PGresult *r = PQexec(c, sql);
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        char err[512];
        snprintf(err, sizeof err, "%s", PQresultErrorMessage(r));
        PQclear(r);
        if (ok)
            break;
        cr_assert(support_now_ms() < deadline, "CREATE DATABASE %s: %s", name, err);
        support_sleep_ms(100);
    }
    PQfinish(c);
}

PGconn *support_pg_connect(const char *conninfo)
{
    char *ci = conninfo_with_timeout(conninfo);
    PGconn *c = PQconnectdb(ci);
    free(ci);
    if (PQstatus(c) != CONNECTION_OK) {
        char err[512];
        snprintf(err, sizeof err, "%s", PQerrorMessage(c));
        PQfinish(c);
        cr_assert_fail("connect to \"%s\": %s", conninfo, err);
    }
    return c;
}

static void vexec(PGconn *conn, const char *fmt, va_list ap)
{
    char *sql = vfmt(fmt, ap);
    PGresult *r = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        char err[512];
        snprintf(err, sizeof err, "%s", PQresultErrorMessage(r));
        PQclear(r);
        cr_assert_fail("SQL failed: %s\n  statement: %s", err, sql);
    }
    PQclear(r);
    free(sql);
}

/* 0 ok, -1 error (message in err). */
static int vscalar(PGconn *conn, long long *out, char *err, size_t errlen, const char *fmt, va_list ap)
{
    char *sql = vfmt(fmt, ap);
    PGresult *r = PQexec(conn, sql);
    int rc = -1;
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        snprintf(err, errlen, "%s (statement: %s)", PQresultErrorMessage(r), sql);
    else if (PQntuples(r) != 1 || PQnfields(r) < 1)
        snprintf(err, errlen, "expected one row, got %d (statement: %s)", PQntuples(r), sql);
    else if (PQgetisnull(r, 0, 0))
        snprintf(err, errlen, "NULL result (statement: %s)", sql);
    else {
        *out = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        rc = 0;
    }
    PQclear(r);
    free(sql);
    return rc;
}

void support_pg_exec(PGconn *conn, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vexec(conn, fmt, ap);
    va_end(ap);
}

long long support_pg_scalar(PGconn *conn, const char *fmt, ...)
{
    long long v = 0;
    char err[1024];
    va_list ap;
    va_start(ap, fmt);
    int rc = vscalar(conn, &v, err, sizeof err, fmt, ap);
    va_end(ap);
    cr_assert(rc == 0, "SQL failed: %s", err);
    return v;
}

static PGconn *try_connect(const char *conninfo)
{
    char *ci = NULL;
    if (asprintf(&ci, "%s connect_timeout=10", conninfo) < 0)
        return NULL;
    PGconn *c = PQconnectdb(ci);
    free(ci);
    if (PQstatus(c) != CONNECTION_OK) {
        PQfinish(c);
        return NULL;
    }
    return c;
}

bool support_try_exec(const char *conninfo, const char *fmt, ...)
{
    PGconn *c = try_connect(conninfo);
    if (c == NULL)
        return false;
    char *sql = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&sql, fmt, ap);
    va_end(ap);
    bool ok = false;
    if (n >= 0) {
        PGresult *r = PQexec(c, sql);
        ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
        PQclear(r);
        free(sql);
    }
    PQfinish(c);
    return ok;
}

bool support_try_scalar(const char *conninfo, long long *out, const char *fmt, ...)
{
    PGconn *c = try_connect(conninfo);
    if (c == NULL)
        return false;
    char *sql = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&sql, fmt, ap);
    va_end(ap);
    bool ok = false;
    if (n >= 0) {
        PGresult *r = PQexec(c, sql);
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && PQnfields(r) >= 1 && !PQgetisnull(r, 0, 0)) {
            *out = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
            ok = true;
        }
        PQclear(r);
        free(sql);
    }
    PQfinish(c);
    return ok;
}

void support_exec(const char *conninfo, const char *fmt, ...)
{
    PGconn *c = support_pg_connect(conninfo);
    va_list ap;
    va_start(ap, fmt);
    vexec(c, fmt, ap);
    va_end(ap);
    PQfinish(c);
}

long long support_scalar(const char *conninfo, const char *fmt, ...)
{
    PGconn *c = support_pg_connect(conninfo);
    long long v = 0;
    char err[1024];
    va_list ap;
    va_start(ap, fmt);
    int rc = vscalar(c, &v, err, sizeof err, fmt, ap);
    va_end(ap);
    PQfinish(c);
    cr_assert(rc == 0, "SQL failed on \"%s\": %s", conninfo, err);
    return v;
}

#define PREPARED_WHERE "gid LIKE 'treaty:%%' AND database = current_database()"

long long support_prepared_count(const char *conninfo)
{
    long long n = -1;
    if (!support_try_scalar(conninfo, &n, "SELECT count(*) FROM pg_prepared_xacts WHERE " PREPARED_WHERE))
        return -1;
    return n;
}

static bool no_prepared(void *arg)
{
    return support_prepared_count(arg) == 0;
}

void support_wait_no_prepared(const char *conninfo)
{
    if (support_wait_until(no_prepared, (void *)(uintptr_t)conninfo, SUPPORT_DEADLINE_MS))
        return;
    /* List them for the failure message. */
    char list[1024] = "(could not list)";
    PGconn *c = try_connect(conninfo);
    if (c != NULL) {
        PGresult *r = PQexec(c, "SELECT coalesce(string_agg(gid || ' prepared ' || prepared::text, ', '), '')"
                                " FROM pg_prepared_xacts WHERE gid LIKE 'treaty:%' AND database = current_database()");
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
            snprintf(list, sizeof list, "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
        PQfinish(c);
    }
    cr_assert_fail("prepared transactions still in \"%s\" after %d ms: %s (logs: %s)", conninfo, SUPPORT_DEADLINE_MS,
                   list, support_log_dir());
}

void support_pg_restart(void)
{
    cr_assert(lock_mode == LOCK_EX, "support_pg_restart needs the restart lock held exclusively");
    char script[600];
    snprintf(script, sizeof script, "%s/scripts/pgtmp.sh", support_top_dir());
    char *argv[] = {(char *)"/bin/sh", script, (char *)"restart", (char *)support_pg_dir(), NULL};
    struct support_proc *p = support_spawn("pgtmp-restart", argv, NULL);
    bool done = support_proc_wait(p, 120000);
    if (!done)
        support_proc_kill(p);
    char st[64];
    cr_assert(done && WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0, "pgtmp.sh restart failed: %s (log %s)",
              done ? support_proc_status_str(p, st, sizeof st) : "timeout", p->log);
}

/* -------------------------------------------------------------- processes */

#define MAX_PROCS 64
static struct support_proc procs[MAX_PROCS];
static int nprocs;

static bool env_name_eq(const char *a, const char *b)
{
    /* Compares the NAME parts of "NAME=VALUE" strings. */
    size_t la = strcspn(a, "="), lb = strcspn(b, "=");
    return la == lb && strncmp(a, b, la) == 0;
}

struct support_proc *support_spawn(const char *name, char *const argv[], const char *const env[])
{
    cr_assert(nprocs < MAX_PROCS, "too many processes spawned in one test");
    struct support_proc *p = &procs[nprocs++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    snprintf(p->log, sizeof p->log, "%s/%s-%d.log", support_log_dir(), name, nprocs);

    /* Everything the child needs is built before fork: after fork only
     * async-signal-safe calls (the test process may have threads). */
    size_t nenv = 0, nextra = 0;
    while (environ[nenv] != NULL)
        nenv++;
    while (env != NULL && env[nextra] != NULL)
        nextra++;
    char **envp = calloc(nenv + nextra + 1, sizeof *envp);
    cr_assert(envp != NULL, "out of memory");
    size_t k = 0;
    for (size_t i = 0; i < nenv; i++) {
        bool skip = env_name_eq(environ[i], "TREATY_CRASH_AT=");
        for (size_t j = 0; j < nextra && !skip; j++)
            skip = env_name_eq(environ[i], env[j]);
        if (!skip)
            envp[k++] = environ[i];
    }
    for (size_t j = 0; j < nextra; j++)
        envp[k++] = (char *)env[j];
    envp[k] = NULL;

    int logfd = open(p->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    cr_assert(logfd >= 0, "open %s: %s", p->log, strerror(errno));
    int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    cr_assert(nullfd >= 0, "open /dev/null: %s", strerror(errno));
    dprintf(logfd, "== support_spawn:");
    for (size_t j = 0; j < nextra; j++)
        dprintf(logfd, " %s", env[j]);
    for (size_t i = 0; argv[i] != NULL; i++)
        dprintf(logfd, " %s", argv[i]);
    dprintf(logfd, "\n");

    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        /* Die with the test process, whatever kills it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        dup2(nullfd, 0);
        dup2(logfd, 1);
        dup2(logfd, 2);
        close_range(3, ~0U, 0);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_DFL;
        sigaction(SIGPIPE, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGCHLD, &sa, NULL);
        execve(argv[0], argv, envp);
        static const char msg[] = "support_spawn: execve failed\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        _exit(127);
    }
    close(logfd);
    close(nullfd);
    free(envp);
    p->pid = pid;
    return p;
}

static bool reap(struct support_proc *p, int flags)
{
    if (p->reaped)
        return true;
    int st = 0;
    pid_t r;
    do {
        r = waitpid(p->pid, &st, flags);
    } while (r < 0 && errno == EINTR);
    if (r == p->pid) {
        p->reaped = true;
        p->status = st;
        return true;
    }
    if (r < 0 && errno == ECHILD) {
        p->reaped = true;
        p->status = -1;
        return true;
    }
    return false;
}

bool support_proc_running(struct support_proc *p)
{
    return !reap(p, WNOHANG);
}

bool support_proc_wait(struct support_proc *p, int timeout_ms)
{
    long long deadline = support_now_ms() + timeout_ms;
    for (;;) {
        if (reap(p, WNOHANG))
            return true;
        if (support_now_ms() >= deadline)
            return false;
        support_sleep_ms(10);
    }
}

void support_proc_kill(struct support_proc *p)
{
    if (p == NULL || p->reaped)
        return;
    kill(p->pid, SIGKILL);
    reap(p, 0);
}

bool support_proc_stop(struct support_proc *p, int timeout_ms)
{
    if (p == NULL || p->reaped)
        return false;
    kill(p->pid, SIGTERM);
    if (support_proc_wait(p, timeout_ms))
        return p->status != -1 && WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0;
    support_proc_kill(p);
    return false;
}

const char *support_proc_status_str(const struct support_proc *p, char *buf, size_t len)
{
    if (!p->reaped)
        snprintf(buf, len, "running");
    else if (p->status == -1)
        snprintf(buf, len, "unknown (not our child)");
    else if (WIFEXITED(p->status))
        snprintf(buf, len, "exit %d", WEXITSTATUS(p->status));
    else if (WIFSIGNALED(p->status))
        snprintf(buf, len, "signal %d (%s)", WTERMSIG(p->status), strsignal(WTERMSIG(p->status)));
    else
        snprintf(buf, len, "status 0x%x", (unsigned)p->status);
    return buf;
}

void support_proc_dump_log(const struct support_proc *p, int lines)
{
    FILE *f = fopen(p->log, "r");
    if (f == NULL)
        return;
    /* Keep the last `lines` lines in a ring. */
    char **ring = calloc((size_t)lines, sizeof *ring);
    size_t cap = 0;
    char *line = NULL;
    long n = 0;
    while (ring != NULL && getline(&line, &cap, f) >= 0) {
        free(ring[n % lines]);
        ring[n % lines] = strdup(line);
        n++;
    }
    free(line);
    fclose(f);
    fprintf(stderr, "---- last lines of %s (%s)\n", p->log, p->name);
    for (long i = n > lines ? n - lines : 0; ring != NULL && i < n; i++)
        fputs(ring[i % lines] != NULL ? ring[i % lines] : "", stderr);
    fprintf(stderr, "----\n");
    for (int i = 0; ring != NULL && i < lines; i++)
        free(ring[i]);
    free(ring);
}

void support_cleanup(void)
{
    for (int i = 0; i < nprocs; i++)
        if (!procs[i].reaped && !reap(&procs[i], WNOHANG))
            kill(procs[i].pid, SIGTERM);
    long long deadline = support_now_ms() + 5000;
    for (int i = 0; i < nprocs; i++) {
        long long left = deadline - support_now_ms();
        if (!support_proc_wait(&procs[i], left > 0 ? (int)left : 0))
            support_proc_kill(&procs[i]);
    }
    /* The admin sockets of this process's treatyds (support_treatyd_start):
     * one that was SIGKILLed leaves its file behind. */
    char pattern[64];
    snprintf(pattern, sizeof pattern, "/tmp/treaty-test-admin-%d-*.sock", (int)getpid());
    glob_t g;
    if (glob(pattern, 0, NULL, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc; i++)
            unlink(g.gl_pathv[i]);
        globfree(&g);
    }
}

/* --------------------------------------------------------------- treatyd */

int support_free_port(void)
{
    for (int tries = 0; tries < 500; tries++) {
        unsigned r = 0;
        if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
            r = (unsigned)getpid() * 7919u + (unsigned)tries;
        int port = 20000 + (int)(r % 12000); /* below the ephemeral range */
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert(fd >= 0, "socket: %s", strerror(errno));
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a;
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_port = htons((uint16_t)port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
        close(fd);
        if (ok)
            return port;
    }
    cr_assert_fail("no free TCP port found");
    return -1;
}

void support_write_file(const char *name, const char *text, char *path, size_t pathlen)
{
    snprintf(path, pathlen, "%s/%s", support_log_dir(), name);
    FILE *f = fopen(path, "w");
    cr_assert(f != NULL, "create %s: %s", path, strerror(errno));
    fputs(text, f);
    cr_assert(fclose(f) == 0, "write %s: %s", path, strerror(errno));
}

/* Escapes a string for a libconfig "..." literal. */
static void config_quote(const char *s, char *buf, size_t len)
{
    size_t o = 0;
    for (; *s && o + 2 < len; s++) {
        if (*s == '"' || *s == '\\')
            buf[o++] = '\\';
        buf[o++] = *s;
    }
    buf[o] = '\0';
}

static void spawn_treatyd(struct support_treatyd *d, const char *const env[])
{
    char bin[600];
    snprintf(bin, sizeof bin, "%s/treatyd", support_bin_dir());
    cr_assert(access(bin, X_OK) == 0, "%s is missing or not executable", bin);
    char *argv[] = {bin, (char *)"-c", d->config, NULL};
    d->proc = support_spawn("treatyd", argv, env);
}

bool support_file_contains(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return false;
    char *line = NULL;
    size_t cap = 0;
    bool found = false;
    while (!found && getline(&line, &cap, f) >= 0)
        found = strstr(line, needle) != NULL;
    free(line);
    fclose(f);
    return found;
}

static void wait_logged(struct support_treatyd *d)
{
    long long deadline = support_now_ms() + SUPPORT_DEADLINE_MS;
    while (!support_file_contains(d->proc->log, "treatyd serving on")) {
        char st[64];
        if (!support_proc_running(d->proc)) {
            support_proc_dump_log(d->proc, 40);
            cr_assert_fail("treatyd ended before serving: %s (log %s)", support_proc_status_str(d->proc, st, sizeof st),
                           d->proc->log);
        }
        if (support_now_ms() >= deadline) {
            support_proc_dump_log(d->proc, 40);
            cr_assert_fail("treatyd does not say it serves after %d ms (log %s)", SUPPORT_DEADLINE_MS, d->proc->log);
        }
        support_sleep_ms(20);
    }
}

static void treatyd_start(struct support_treatyd *d, const char *journal_conninfo,
                          const struct support_treatyd_opts *opts, const char *extra_config, const char *const env[],
                          bool query)
{
    struct support_treatyd_opts o = {0};
    if (opts != NULL)
        o = *opts;
    memset(d, 0, sizeof *d);
    snprintf(d->journal, sizeof d->journal, "%s", journal_conninfo);
    char quoted[1024];
    config_quote(journal_conninfo, quoted, sizeof quoted);

    for (int attempt = 0;; attempt++) {
        int port = support_free_port();
        snprintf(d->endpoint, sizeof d->endpoint, "tcp://127.0.0.1:%d", port);
        snprintf(d->admin, sizeof d->admin, "ipc:///tmp/treaty-test-admin-%d-%d.sock", (int)getpid(), port);
        char text[2048];
        int resend_max = o.resend_max_ms > 0 ? o.resend_max_ms : 1000;
        snprintf(text, sizeof text,
                 "# written by tests/support.c\n"
                 "listen = \"%s\";\n"
                 "log_level = \"%s\";\n"
                 "shutdown_deadline_ms = 2000;\n"
                 "journal = { conninfo = \"%s\"; retention_s = 3600; connect_initial_ms = 50; connect_max_ms = 1000;"
                 " lazy_delay_ms = %d; };\n"
                 "twopc = { default_timeout_ms = %d; max_timeout_ms = %d; resend_initial_ms = %d; resend_max_ms = %d; "
                 "};\n"
                 "registry = { heartbeat_ms = %d; dead_after_ms = %d; };\n"
                 "admin = { listen = \"%s\"; };\n",
                 d->endpoint, o.log_level != NULL ? o.log_level : "info", quoted,
                 o.lazy_immediately    ? 0
                 : o.lazy_delay_ms > 0 ? o.lazy_delay_ms
                                       : 20,
                 o.default_timeout_ms > 0 ? o.default_timeout_ms : 10000,
                 o.max_timeout_ms > 0 ? o.max_timeout_ms : 600000, resend_max < 100 ? resend_max : 100, resend_max,
                 o.heartbeat_ms > 0 ? o.heartbeat_ms : 100, o.dead_after_ms > 0 ? o.dead_after_ms : 1000, d->admin);
        if (extra_config != NULL) {
            size_t used = strlen(text);
            int n = snprintf(text + used, sizeof text - used, "%s\n", extra_config);
            cr_assert(n > 0 && (size_t)n < sizeof text - used, "extra treatyd config too long");
        }
        char name[64];
        snprintf(name, sizeof name, "treatyd-%d.conf", attempt);
        support_write_file(name, text, d->config, sizeof d->config);
        spawn_treatyd(d, env);
        /* A port taken between our bind test and treatyd's bind: try another. */
        if (attempt < 3 && support_proc_wait(d->proc, 300) && support_file_contains(d->proc->log, "in use"))
            continue;
        break;
    }
    if (query)
        support_treatyd_wait_serving(d);
    else
        wait_logged(d);
}

void support_treatyd_start(struct support_treatyd *d, const char *journal_conninfo,
                           const struct support_treatyd_opts *opts, const char *const env[])
{
    treatyd_start(d, journal_conninfo, opts, NULL, env, true);
}

void support_treatyd_start_with(struct support_treatyd *d, const char *journal_conninfo,
                                const struct support_treatyd_opts *opts, const char *extra_config,
                                const char *const env[])
{
    treatyd_start(d, journal_conninfo, opts, extra_config, env, true);
}

void support_treatyd_start_logged(struct support_treatyd *d, const char *journal_conninfo,
                                  const struct support_treatyd_opts *opts, const char *extra_config,
                                  const char *const env[])
{
    treatyd_start(d, journal_conninfo, opts, extra_config, env, false);
}

void support_treatyd_restart(struct support_treatyd *d, const char *const env[], bool wait)
{
    cr_assert(d->proc == NULL || !support_proc_running(d->proc), "treatyd restarted while still running");
    spawn_treatyd(d, env);
    if (wait)
        support_treatyd_wait_serving(d);
}

void support_treatyd_wait_serving(struct support_treatyd *d)
{
    treaty_client_t *c = NULL;
    int rc = treaty_client_new(d->endpoint, &c);
    cr_assert(rc == 0, "treaty_client_new(%s): %s", d->endpoint, treaty_strerror(rc));
    long long deadline = support_now_ms() + SUPPORT_DEADLINE_MS;
    for (;;) {
        treaty_txid_t id;
        treaty_outcome_t out;
        treaty_txid_generate(&id);
        rc = treaty_client_query(c, &id, 500, &out);
        if (rc == 0)
            break;
        if (!support_proc_running(d->proc)) {
            char st[64];
            support_proc_dump_log(d->proc, 40);
            treaty_client_destroy(&c);
            cr_assert_fail("treatyd ended before serving: %s (log %s)", support_proc_status_str(d->proc, st, sizeof st),
                           d->proc->log);
        }
        if (support_now_ms() >= deadline) {
            support_proc_dump_log(d->proc, 40);
            treaty_client_destroy(&c);
            cr_assert_fail("treatyd at %s does not answer a query after %d ms: last %s (log %s)", d->endpoint,
                           SUPPORT_DEADLINE_MS, treaty_err_name(rc), d->proc->log);
        }
    }
    treaty_client_destroy(&c);
}

/* ------------------------------------------------------------ outcomes */

enum treaty_status support_query_final(const char *endpoint, const treaty_txid_t *txid, treaty_outcome_t *out)
{
    treaty_client_t *c = NULL;
    int rc = treaty_client_new(endpoint, &c);
    cr_assert(rc == 0, "treaty_client_new(%s): %s", endpoint, treaty_strerror(rc));
    long long deadline = support_now_ms() + SUPPORT_DEADLINE_MS;
    char idbuf[TREATY_TXID_STRLEN];
    for (;;) {
        rc = treaty_client_query(c, txid, 2000, out);
        if (rc == 0 && out->error == 0 &&
            (out->status == TREATY_STATUS_COMMITTED || out->status == TREATY_STATUS_ABORTED))
            break;
        if (support_now_ms() >= deadline) {
            treaty_client_destroy(&c);
            cr_assert_fail("no final outcome for %s after %d ms: rc %s, status %s, error %s (logs: %s)",
                           treaty_txid_format(txid, idbuf), SUPPORT_DEADLINE_MS, treaty_err_name(rc),
                           treaty_status_name(out->status), treaty_err_name(out->error), support_log_dir());
        }
        support_sleep_ms(100);
    }
    treaty_client_destroy(&c);
    return out->status;
}

enum treaty_status support_query_saga_final(const char *endpoint, const treaty_txid_t *txid, bool accept_stuck,
                                            treaty_outcome_t *out)
{
    treaty_client_t *c = NULL;
    int rc = treaty_client_new(endpoint, &c);
    cr_assert(rc == 0, "treaty_client_new(%s): %s", endpoint, treaty_strerror(rc));
    long long deadline = support_now_ms() + SUPPORT_DEADLINE_MS;
    char idbuf[TREATY_TXID_STRLEN];
    for (;;) {
        memset(out, 0, sizeof *out);
        rc = treaty_client_query(c, txid, 2000, out);
        if (rc == 0 && out->error == 0 &&
            (out->status == TREATY_STATUS_COMPLETED || out->status == TREATY_STATUS_COMPENSATED ||
             (accept_stuck && out->status == TREATY_STATUS_STUCK)))
            break;
        if (support_now_ms() >= deadline) {
            treaty_client_destroy(&c);
            cr_assert_fail("no final saga outcome for %s after %d ms: rc %s, status %s, error %s, reason \"%s\" "
                           "(logs: %s)",
                           treaty_txid_format(txid, idbuf), SUPPORT_DEADLINE_MS, treaty_err_name(rc),
                           treaty_status_name(out->status), treaty_err_name(out->error), out->reason,
                           support_log_dir());
        }
        support_sleep_ms(100);
    }
    treaty_client_destroy(&c);
    return out->status;
}

/* ------------------------------------------------------------ wait-until */

bool support_wait_until(support_cond_fn cond, void *arg, int timeout_ms)
{
    long long deadline = support_now_ms() + timeout_ms;
    int pause = 50;
    for (;;) {
        if (cond(arg))
            return true;
        if (support_now_ms() >= deadline)
            return false;
        support_sleep_ms(pause);
        if (pause < 200)
            pause += 25;
    }
}

/* ------------------------------------------------------------ treatyctl */

int support_ctl(const struct support_treatyd *d, const char *args, char *out, size_t outlen, char *err, size_t errlen)
{
    char errfile[700], cmd[4096];
    snprintf(errfile, sizeof errfile, "%s/treatyctl.stderr", support_log_dir());
    int n = snprintf(cmd, sizeof cmd, "%s/treatyctl --admin %s %s 2>%s.last; st=$?; cat %s.last >>%s; exit $st",
                     support_bin_dir(), d->admin, args, errfile, errfile, errfile);
    cr_assert(n > 0 && (size_t)n < sizeof cmd, "treatyctl command line too long");
    FILE *f = popen(cmd, "r");
    cr_assert(f != NULL, "popen(%s): %s", cmd, strerror(errno));
    size_t used = 0;
    for (;;) {
        size_t room = outlen - 1 - used;
        size_t got = fread(out + used, 1, room, f);
        used += got;
        if (got == 0 || used == outlen - 1)
            break;
    }
    out[used] = '\0';
    char sink[256];
    while (fread(sink, 1, sizeof sink, f) > 0) /* the rest, cut */
        ;
    int st = pclose(f);
    if (err != NULL && errlen > 0) {
        char last[800];
        snprintf(last, sizeof last, "%s.last", errfile);
        err[0] = '\0';
        FILE *e = fopen(last, "r");
        if (e != NULL) {
            char line[1024];
            while (fgets(line, sizeof line, e) != NULL)
                snprintf(err, errlen, "%s", line);
            fclose(e);
        }
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}
