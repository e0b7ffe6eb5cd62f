/*
 * support.h - helpers for Treaty's integration tests (Criterion).
 *
 * What the helpers give a test:
 *   - the environment tests/run.sh exports (TREATY_TEST_PG, TREATY_TEST_PGDIR,
 *     TREATY_BIN, TREATY_TOP); a missing variable fails the test loudly, it is
 *     never a reason to skip;
 *   - fresh databases with unique names in the shared throwaway cluster, and
 *     one-shot libpq helpers (connect, run, close: they survive a Postgres
 *     restart between calls);
 *   - child processes (fork/execve) with extra environment variables, their
 *     stdout/stderr in a log file; SIGKILL, SIGTERM-and-wait, exit status;
 *   - a free TCP port, a treatyd config file, treatyd started and waited for;
 *   - polling with a generous deadline: timing never decides pass/fail, a
 *     deadline only bounds how long a broken build makes us wait;
 *   - the restart lock: Criterion runs tests in parallel forked processes that
 *     share one cluster, so a test that restarts Postgres holds
 *     $TREATY_TEST_PGDIR/restart.lock exclusively and every other test holds it
 *     shared.
 *
 * Failure handling: every helper that cannot do its job fails the current test
 * with cr_assert (naming the log file of the process involved, if any). All
 * processes spawned here get SIGKILL when the test process dies
 * (PR_SET_PDEATHSIG) and support_cleanup() stops the ones still running;
 * call it from the suite's .fini.
 *
 * Logs go to $TREATY_E2E_LOGDIR/<test name>/ when that variable is set (the
 * e2e suite sets it in a PRE_ALL hook and prints / removes the directory
 * after each test), else to /tmp/treaty-test-logs.<pid>/.
 *
 * Thread safety: call everything from the test's main thread, except the pure
 * functions marked "any thread".
 */
#ifndef TREATY_TEST_SUPPORT_H
#define TREATY_TEST_SUPPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <libpq-fe.h>

#include "treaty.h"

/* Polling deadline for every wait-until in the tests (ms). */
#define SUPPORT_DEADLINE_MS 30000

#if defined(__GNUC__)
#define SUPPORT_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define SUPPORT_PRINTF(a, b)
#endif

/* ------------------------------------------------------------ environment */

/* Base conninfo "host=DIR port=N user=U" (no dbname). Fails the test if unset. */
const char *support_pg_base(void);
/* The cluster's directory (for pgtmp.sh restart). Fails the test if unset. */
const char *support_pg_dir(void);
/* Directory holding treatyd and the example binaries. Fails the test if unset. */
const char *support_bin_dir(void);
/* The source tree. Fails the test if unset. */
const char *support_top_dir(void);
/* The directory this test's logs go to (created on first use). */
const char *support_log_dir(void);

/* Milliseconds on the monotonic clock. Any thread. */
long long support_now_ms(void);
/* Sleeps ms milliseconds (restarting after signals). Any thread. */
void support_sleep_ms(int ms);

/* ----------------------------------------------------------- restart lock */

/* Takes $TREATY_TEST_PGDIR/restart.lock shared (normal tests) or exclusive
 * (tests that restart Postgres), blocking until granted. Held until
 * support_unlock() or process exit. */
void support_lock_shared(void);
void support_lock_exclusive(void);
void support_unlock(void);

/* --------------------------------------------------------------- Postgres */

/* Creates a database named "t_<tag>_<pid>_<counter>" and writes its name to
 * name (at least 64 bytes). */
void support_db_create(const char *tag, char *name, size_t namelen);
/* Writes "<base> dbname=<db>" into buf. */
void support_db_conninfo(const char *db, char *buf, size_t len);

/* Connects or fails the test. Caller owns the connection (PQfinish). */
PGconn *support_pg_connect(const char *conninfo);
/* Runs a command on conn; fails the test unless it succeeds. */
void support_pg_exec(PGconn *conn, const char *fmt, ...) SUPPORT_PRINTF(2, 3);
/* Runs a query returning one row, one integer column; fails the test otherwise. */
long long support_pg_scalar(PGconn *conn, const char *fmt, ...) SUPPORT_PRINTF(2, 3);

/* One-shot variants on a conninfo: connect, run, close. The try_ forms return
 * false (never fail the test) when Postgres is unreachable or the statement
 * fails, so they can be polled across a Postgres restart. Any thread. */
bool support_try_exec(const char *conninfo, const char *fmt, ...) SUPPORT_PRINTF(2, 3);
bool support_try_scalar(const char *conninfo, long long *out, const char *fmt, ...) SUPPORT_PRINTF(3, 4);
void support_exec(const char *conninfo, const char *fmt, ...) SUPPORT_PRINTF(2, 3);
long long support_scalar(const char *conninfo, const char *fmt, ...) SUPPORT_PRINTF(2, 3);

/* Prepared transactions named treaty:* in the database of conninfo (only
 * that database: the cluster is shared), or -1 when it cannot be read. */
long long support_prepared_count(const char *conninfo);
/* Waits (SUPPORT_DEADLINE_MS) until the database has no treaty:* prepared
 * transaction; fails the test, listing them, if some remain. */
void support_wait_no_prepared(const char *conninfo);

/* Restarts the cluster (pgtmp.sh restart). The caller must hold the restart
 * lock exclusively. */
void support_pg_restart(void);

/* -------------------------------------------------------------- processes */

struct support_proc {
    pid_t pid;
    char name[64];
    char log[700];
    bool reaped;
    int status; /* waitpid status once reaped */
};

/*
 * Starts argv[0] (a path) with argv, the test's environment plus env (a NULL
 * terminated list of "NAME=VALUE" that override; TREATY_CRASH_AT is never
 * inherited, only given), stdin from /dev/null, stdout and stderr appended to
 * <log dir>/<name>-<n>.log. The returned handle is owned by the support module
 * (valid until the process ends; support_cleanup() stops leftovers).
 */
struct support_proc *support_spawn(const char *name, char *const argv[], const char *const env[]);
/* True while the process has not been reaped (it may be a zombie-to-be). */
bool support_proc_running(struct support_proc *p);
/* Waits up to timeout_ms for the process to end; true when it did (p->status). */
bool support_proc_wait(struct support_proc *p, int timeout_ms);
/* SIGKILL and reap. No-op when already reaped. */
void support_proc_kill(struct support_proc *p);
/* SIGTERM, then waits up to timeout_ms; SIGKILL after that. Returns true when the
 * process exited by itself with status 0 after the SIGTERM. */
bool support_proc_stop(struct support_proc *p, int timeout_ms);
/* Human-readable description of p->status ("exit 0", "signal 9"). */
const char *support_proc_status_str(const struct support_proc *p, char *buf, size_t len);
/* Prints the last lines of p's log to stderr (for diagnosis). */
void support_proc_dump_log(const struct support_proc *p, int lines);
/* True when a line of the file at path contains needle. */
bool support_file_contains(const char *path, const char *needle);
/* Stops (SIGTERM, then SIGKILL) every process still running. For .fini. */
void support_cleanup(void);

/* --------------------------------------------------------------- treatyd */

/* A free TCP port on 127.0.0.1 (bind test, outside the ephemeral range). */
int support_free_port(void);
/* Writes text to a new file <log dir>/<name> and its path into path. */
void support_write_file(const char *name, const char *text, char *path, size_t pathlen);

struct support_treatyd_opts {
    int default_timeout_ms; /* twopc.default_timeout_ms; 0 = 10000 */
    int resend_max_ms;      /* twopc.resend_max_ms; 0 = 1000 */
    int heartbeat_ms;       /* registry.heartbeat_ms; 0 = 100 */
    int dead_after_ms;      /* registry.dead_after_ms; 0 = 1000 */
    const char *log_level;  /* NULL = "info" */
    bool lazy_immediately;  /* journal.lazy_delay_ms = 0 (else the default) */
    int lazy_delay_ms;      /* > 0: journal.lazy_delay_ms (lazy records wait this long) */
    int max_timeout_ms;     /* > 0: twopc.max_timeout_ms (default_timeout_ms <= it is the caller's business) */
};

struct support_treatyd {
    char endpoint[64]; /* tcp://127.0.0.1:PORT */
    char admin[128];   /* admin.listen: ipc:///tmp/treaty-test-admin-PID-PORT.sock (treatyctl --admin) */
    char config[700];  /* path of the config file */
    char journal[768]; /* journal conninfo */
    struct support_proc *proc;
};

/* Writes a config (listen on a free port, the journal conninfo, opts; NULL for
 * defaults), starts $TREATY_BIN/treatyd -c FILE with extra env (may be NULL)
 * and waits until it serves. */
void support_treatyd_start(struct support_treatyd *d, const char *journal_conninfo,
                           const struct support_treatyd_opts *opts, const char *const env[]);
/* The same, with extra_config (libconfig text such as
 * "saga = { stuck_after_attempts = 3; };"; NULL for none) appended to the
 * config file. */
void support_treatyd_start_with(struct support_treatyd *d, const char *journal_conninfo,
                                const struct support_treatyd_opts *opts, const char *extra_config,
                                const char *const env[]);
/* The same, but waits until treatyd's log says it serves instead of asking
 * it a question (a plaintext client cannot reach a treatyd with
 * security.curve). */
void support_treatyd_start_logged(struct support_treatyd *d, const char *journal_conninfo,
                                  const struct support_treatyd_opts *opts, const char *extra_config,
                                  const char *const env[]);
/* Starts treatyd again with the same config (same endpoint) after it died or
 * was stopped; waits until it serves unless env makes it crash (pass
 * wait = false then). */
void support_treatyd_restart(struct support_treatyd *d, const char *const env[], bool wait);
/* Polls treaty_client_query on a random txid until it returns 0. */
void support_treatyd_wait_serving(struct support_treatyd *d);

/* ------------------------------------------------------------ treatyctl */

/* Runs $TREATY_BIN/treatyctl --admin <d's admin endpoint> ARGS (args: the
 * rest of a shell command line, e.g. "--json show <txid>"; no quoting is
 * done), waits for it, and returns its exit status (-1 when it did not exit
 * normally). Its stdout goes to out (NUL-terminated, cut to outlen - 1), its
 * stderr is appended to <log dir>/treatyctl.stderr and its last line to err
 * (may be NULL). */
int support_ctl(const struct support_treatyd *d, const char *args, char *out, size_t outlen, char *err, size_t errlen);

/* ------------------------------------------------------------ outcomes */

/* Queries txid (fresh client each call) until the answer is committed or
 * aborted; returns it. Fails the test after SUPPORT_DEADLINE_MS. */
enum treaty_status support_query_final(const char *endpoint, const treaty_txid_t *txid, treaty_outcome_t *out);

/* The same for a saga: queries until it is completed or compensated (or
 * stuck, when accept_stuck); returns that. Fails the test after
 * SUPPORT_DEADLINE_MS. */
enum treaty_status support_query_saga_final(const char *endpoint, const treaty_txid_t *txid, bool accept_stuck,
                                            treaty_outcome_t *out);

/* ------------------------------------------------------------ wait-until */

typedef bool (*support_cond_fn)(void *arg);
/* Polls cond every 50..200 ms until it returns true (true) or timeout_ms pass
 * (false). */
bool support_wait_until(support_cond_fn cond, void *arg, int timeout_ms);

#endif /* TREATY_TEST_SUPPORT_H */
