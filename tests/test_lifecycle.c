/*
 * test_lifecycle.c - treatyd's life as an operator sees it, against the real
 * binary and a real journal (issue 13):
 *
 *   --version and --check-config FILE (exit 0 valid, 2 with the problem);
 *   SIGHUP: a new log level, log format and limit take effect in the running
 *     process; a bad file changes nothing and says why; a key that needs a
 *     restart is reported and keeps its value;
 *   systemd: with NOTIFY_SOCKET pointing at a unix datagram socket this test
 *     owns, READY=1 comes only after recovery, after STATUS= lines about it,
 *     and STOPPING=1 when SIGTERM starts the drain;
 *   recovery logs its progress while it runs (the scan slowed down per record
 *     by TREATY_TEST_SCAN_DELAY_US, a test-build-only knob);
 *   contrib/systemd/treatyd.service passes `systemd-analyze verify` without a
 *     warning.
 *
 * Timing never decides: every wait is for a condition, with
 * SUPPORT_DEADLINE_MS.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support.h"
#include "treaty.h"

static void setup(void)
{
    support_pg_base(); /* fail loudly when run outside tests/run.sh */
    support_lock_shared();
}

static void teardown(void)
{
    support_cleanup();
    support_unlock();
}

TestSuite(lifecycle, .init = setup, .fini = teardown, .timeout = 150);

/* ------------------------------------------------------------ helpers */

static void journal_db(char *conninfo, size_t len)
{
    char db[64];
    support_db_create("life", db, sizeof db);
    support_db_conninfo(db, conninfo, len);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    cr_assert(f != NULL, "%s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            buf = realloc(buf, cap);
            cr_assert_not_null(buf);
        }
        size_t got = fread(buf + n, 1, 4096, f);
        n += got;
        if (got == 0)
            break;
    }
    fclose(f);
    buf[n] = '\0';
    return buf;
}

/* Rewrites the file at path with old replaced by new (once; old must be
 * there), written aside and renamed so that a reload never reads half a
 * file. */
static void file_replace(const char *path, const char *old, const char *new)
{
    char *text = slurp(path);
    char *at = strstr(text, old);
    cr_assert(at != NULL, "%s does not contain %s", path, old);
    char tmp[800];
    snprintf(tmp, sizeof tmp, "%s.new", path);
    FILE *f = fopen(tmp, "w");
    cr_assert(f != NULL);
    fwrite(text, 1, (size_t)(at - text), f);
    fputs(new, f);
    fputs(at + strlen(old), f);
    cr_assert_eq(fclose(f), 0);
    cr_assert_eq(rename(tmp, path), 0);
    free(text);
}

struct log_wait {
    const char *path, *needle;
};

static bool log_has_cond(void *arg)
{
    struct log_wait *w = arg;
    return support_file_contains(w->path, w->needle);
}

static void wait_log(struct support_proc *p, const char *needle)
{
    struct log_wait w = {p->log, needle};
    if (!support_wait_until(log_has_cond, &w, SUPPORT_DEADLINE_MS)) {
        support_proc_dump_log(p, 40);
        cr_assert_fail("treatyd's log never says \"%s\" (log %s)", needle, p->log);
    }
}

static void sighup(struct support_treatyd *d)
{
    cr_assert_eq(kill(d->proc->pid, SIGHUP), 0);
}

/* How many lines of the log contain needle. */
static int log_count(const struct support_proc *p, const char *needle)
{
    char *text = slurp(p->log);
    int n = 0;
    for (const char *at = text; (at = strstr(at, needle)) != NULL; at += strlen(needle))
        n++;
    free(text);
    return n;
}

/* A 2PC of nbranches branches on services nobody serves; returns the
 * submit's rc, the txid in *id, the outcome's reason in reason. */
static int submit(const char *endpoint, unsigned nbranches, treaty_txid_t *id, char *reason, size_t rlen)
{
    treaty_client_t *c = NULL;
    cr_assert_eq(treaty_client_new(endpoint, &c), 0);
    treaty_txn_t *t = NULL;
    cr_assert_eq(treaty_txn_new(&t), 0);
    for (unsigned i = 0; i < nbranches; i++) {
        char svc[32];
        snprintf(svc, sizeof svc, "nobody-%u", i);
        cr_assert_eq(treaty_txn_add_branch(t, svc, "x", 1), 0);
    }
    *id = *treaty_txn_id(t);
    treaty_outcome_t out;
    memset(&out, 0, sizeof out);
    int rc = treaty_client_submit(c, t, 20000, &out);
    if (reason != NULL)
        snprintf(reason, rlen, "%s", out.reason);
    treaty_txn_destroy(&t);
    treaty_client_destroy(&c);
    return rc;
}

/* True when a 2PC of nbranches is refused for its number of branches. */
static bool refused_for_branches(const char *endpoint, unsigned nbranches, treaty_txid_t *id, char *reason, size_t rlen)
{
    submit(endpoint, nbranches, id, reason, rlen);
    return strstr(reason, "branches exceed the limit of") != NULL;
}

static int run_treatyd_once(char *const argv[], const char *name, struct support_proc **out)
{
    struct support_proc *p = support_spawn(name, argv, NULL);
    cr_assert(support_proc_wait(p, SUPPORT_DEADLINE_MS), "%s did not exit", name);
    *out = p;
    cr_assert(WIFEXITED(p->status), "%s ended by a signal", name);
    return WEXITSTATUS(p->status);
}

/* ------------------------------------------------------------ one-shot flags */

Test(lifecycle, version_prints_the_version_and_exits_0)
{
    char bin[600], want[64];
    snprintf(bin, sizeof bin, "%s/treatyd", support_bin_dir());
    char *argv[] = {bin, (char *)"--version", NULL};
    struct support_proc *p;
    cr_assert_eq(run_treatyd_once(argv, "version", &p), 0);
    snprintf(want, sizeof want, "treatyd %d.%d.%d", TREATY_VERSION_MAJOR, TREATY_VERSION_MINOR, TREATY_VERSION_PATCH);
    cr_assert(support_file_contains(p->log, want), "want \"%s\" in %s", want, p->log);
}

Test(lifecycle, check_config_says_ok_for_a_valid_file_and_exits_0)
{
    char bin[600], path[700];
    snprintf(bin, sizeof bin, "%s/treatyd", support_bin_dir());
    support_write_file("check-ok.conf",
                       "listen = \"tcp://127.0.0.1:7600\";\nlog_format = \"json\";\nlimits = { max_branches = 8; };\n",
                       path, sizeof path);
    char *argv[] = {bin, (char *)"--check-config", path, NULL};
    struct support_proc *p;
    cr_assert_eq(run_treatyd_once(argv, "check-ok", &p), 0);
    cr_assert(support_file_contains(p->log, "ok"));
}

Test(lifecycle, check_config_names_the_problem_and_exits_2)
{
    char bin[600], path[700];
    snprintf(bin, sizeof bin, "%s/treatyd", support_bin_dir());
    /* Each key valid alone; together they fail config_validate. */
    support_write_file("check-bad.conf", "twopc = { resend_initial_ms = 5000; resend_max_ms = 100; };\n", path,
                       sizeof path);
    char *argv[] = {bin, (char *)"--check-config", path, NULL};
    struct support_proc *p;
    cr_assert_eq(run_treatyd_once(argv, "check-bad", &p), 2);
    cr_assert(support_file_contains(p->log, "resend_initial_ms"), "the problem is named (log %s)", p->log);
    cr_assert(!support_file_contains(p->log, "starting"), "a check does not start treatyd");

    support_write_file("check-bad2.conf", "log_format = \"xml\";\n", path, sizeof path);
    cr_assert_eq(run_treatyd_once(argv, "check-bad2", &p), 2);
    cr_assert(support_file_contains(p->log, "log_format: must be text or json"), "log %s", p->log);
}

/* ------------------------------------------------------------ SIGHUP */

Test(lifecycle, sighup_applies_a_new_log_level_and_limit_to_the_running_process)
{
    char journal[600];
    journal_db(journal, sizeof journal);
    struct support_treatyd d;
    struct support_treatyd_opts o = {.default_timeout_ms = 1000, .dead_after_ms = 200};
    support_treatyd_start_with(&d, journal, &o, "limits = { max_branches = 4; };", NULL);

    /* At info, a transaction's debug line is not written; 3 branches pass. */
    treaty_txid_t t1, t2, t3;
    char id[40], reason[256];
    cr_assert(!refused_for_branches(d.endpoint, 3, &t1, reason, sizeof reason), "3 branches within 4: %s", reason);
    treaty_txid_format(&t1, id);
    char want[120];
    snprintf(want, sizeof want, "txn: finished aborted txid=%s", id);
    cr_assert(!support_file_contains(d.proc->log, want), "no debug line at info");

    file_replace(d.config, "log_level = \"info\"", "log_level = \"debug\"");
    file_replace(d.config, "max_branches = 4", "max_branches = 2");
    sighup(&d);
    wait_log(d.proc, "reload: configuration read again: 2 keys changed, 0 keys need a restart");
    cr_assert(support_file_contains(d.proc->log, "reload: log_level: info -> debug"));
    cr_assert(support_file_contains(d.proc->log, "reload: limits.max_branches: 4 -> 2"));

    /* The same 3 branches are now over the limit... */
    cr_assert(refused_for_branches(d.endpoint, 3, &t2, reason, sizeof reason), "3 branches over 2: %s", reason);
    cr_assert(strstr(reason, "limit of 2") != NULL, "reason: %s", reason);
    /* ...and a transaction's debug lines are written, with its txid. */
    cr_assert(!refused_for_branches(d.endpoint, 2, &t3, reason, sizeof reason), "%s", reason);
    treaty_txid_format(&t3, id);
    snprintf(want, sizeof want, "txn: finished aborted txid=%s", id);
    wait_log(d.proc, want);
    cr_assert(support_proc_running(d.proc), "SIGHUP does not stop treatyd");
}

Test(lifecycle, sighup_switches_the_log_format_to_json)
{
    char journal[600];
    journal_db(journal, sizeof journal);
    struct support_treatyd d;
    struct support_treatyd_opts o = {.default_timeout_ms = 1000, .dead_after_ms = 200};
    support_treatyd_start_with(&d, journal, &o, "log_format = \"text\";", NULL);
    file_replace(d.config, "log_format = \"text\"", "log_format = \"json\"");
    sighup(&d);
    /* The summary line is written after the switch: in JSON. */
    wait_log(d.proc, "\"level\":\"info\",\"msg\":\"reload: configuration read again: 1 keys changed");
    cr_assert(support_file_contains(d.proc->log, "reload: log_format: text -> json"));
}

Test(lifecycle, a_bad_file_on_sighup_changes_nothing_and_says_why)
{
    char journal[600];
    journal_db(journal, sizeof journal);
    struct support_treatyd d;
    struct support_treatyd_opts o = {.default_timeout_ms = 1000, .dead_after_ms = 200};
    support_treatyd_start_with(&d, journal, &o, "limits = { max_branches = 4; };", NULL);

    char reason[256];
    /* A good new limit next to a bad value: neither is applied. */
    file_replace(d.config, "max_branches = 4", "max_branches = 1");
    file_replace(d.config, "log_level = \"info\"", "log_level = \"chatty\"");
    sighup(&d);
    wait_log(d.proc, "SIGHUP: the configuration was not reloaded, the previous one stays");
    cr_assert(support_file_contains(d.proc->log, "log_level: must be error, warn, info or debug, got \"chatty\""));
    treaty_txid_t t;
    cr_assert(!refused_for_branches(d.endpoint, 3, &t, reason, sizeof reason), "max_branches is still 4: %s", reason);

    /* A combination that does not validate is refused as a whole too. */
    file_replace(d.config, "log_level = \"chatty\"", "log_level = \"info\"");
    file_replace(d.config, "resend_max_ms = 1000", "resend_max_ms = 10");
    sighup(&d);
    cr_assert(support_wait_until(log_has_cond, &(struct log_wait){d.proc->log, "twopc.resend_initial_ms"},
                                 SUPPORT_DEADLINE_MS),
              "the cross-key problem is named");
    cr_assert_eq(log_count(d.proc, "SIGHUP: the configuration was not reloaded"), 2);
    cr_assert_eq(log_count(d.proc, "reload: limits.max_branches"), 0, "nothing was applied");
    cr_assert(!refused_for_branches(d.endpoint, 3, &t, reason, sizeof reason), "max_branches is still 4: %s", reason);

    /* Fixed: the reload goes through. */
    file_replace(d.config, "resend_max_ms = 10", "resend_max_ms = 1000");
    sighup(&d);
    wait_log(d.proc, "reload: limits.max_branches: 4 -> 1");
    cr_assert(refused_for_branches(d.endpoint, 3, &t, reason, sizeof reason), "%s", reason);
}

Test(lifecycle, a_key_that_needs_a_restart_is_reported_and_keeps_its_value)
{
    char journal[600];
    journal_db(journal, sizeof journal);
    struct support_treatyd d;
    struct support_treatyd_opts o = {.default_timeout_ms = 1000, .dead_after_ms = 200};
    support_treatyd_start_with(&d, journal, &o, "limits = { outcome_cache = 5000; };", NULL);
    char other[64], line[300];
    snprintf(other, sizeof other, "tcp://127.0.0.1:%d", support_free_port());
    file_replace(d.config, d.endpoint, other);
    file_replace(d.config, "outcome_cache = 5000", "outcome_cache = 6000");
    sighup(&d);
    wait_log(d.proc, "reload: configuration read again: 0 keys changed, 2 keys need a restart");
    snprintf(line, sizeof line, "reload: listen: \"%s\" -> \"%s\" in the file needs a restart; keeps \"%s\" until then",
             d.endpoint, other, d.endpoint);
    cr_assert(support_file_contains(d.proc->log, line), "want: %s", line);
    cr_assert(
        support_file_contains(d.proc->log, "reload: limits.outcome_cache: 5000 -> 6000 in the file needs a restart"));
    /* Still serving where it was. */
    support_treatyd_wait_serving(&d);
}

/* ------------------------------------------------------------ systemd, recovery */

/* Leaves n sagas unfinished in the journal: each has a step on a service
 * nobody serves, and treatyd (registry.dead_after_ms = 60 s) waits for
 * participants to say HELLO before it counts a try. */
static void leave_unfinished_sagas(struct support_treatyd *d, int n)
{
    treaty_client_t *c = NULL;
    cr_assert_eq(treaty_client_new(d->endpoint, &c), 0);
    for (int i = 0; i < n; i++) {
        treaty_saga_t *s = NULL;
        cr_assert_eq(treaty_saga_new(&s), 0);
        cr_assert(treaty_saga_add_step(s, "absent", "act", "p", 1, "undo", "q", 1) >= 0);
        treaty_outcome_t out;
        int rc = treaty_client_run_saga(c, s, 200, &out);
        cr_assert(rc == TREATY_ETIMEDOUT, "the saga waits for a service nobody serves: %s", treaty_strerror(rc));
        treaty_saga_destroy(&s);
    }
    treaty_client_destroy(&c);
    /* Their definitions are durable (kind 'saga' is forced). */
    long long deadline = support_now_ms() + SUPPORT_DEADLINE_MS;
    while (support_scalar(d->journal, "SELECT count(*) FROM treaty_journal WHERE kind = 'saga'") < n) {
        cr_assert(support_now_ms() < deadline, "the sagas never reached the journal");
        support_sleep_ms(50);
    }
}

Test(lifecycle, recovery_logs_its_progress_while_it_runs)
{
    char journal[600];
    journal_db(journal, sizeof journal);
    struct support_treatyd d;
    struct support_treatyd_opts o = {.default_timeout_ms = 1000, .dead_after_ms = 60000};
    support_treatyd_start_with(&d, journal, &o, NULL, NULL);
    leave_unfinished_sagas(&d, 6);
    support_proc_kill(d.proc);

    /* 300 ms per record: at least 1.8 s of scan, so at least one line
     * while it runs, then the final one. */
    static const char *const slow[] = {"TREATY_TEST_SCAN_DELAY_US=300000", NULL};
    support_treatyd_restart(&d, slow, true);
    wait_log(d.proc, "recovery: done: ");
    cr_assert(log_count(d.proc, "transactions resumed (") >= 2, "a progress line before the final one (log %s)",
              d.proc->log);
    /* The counts: the records the journal says it read, and at least the six
     * sagas resumed (an abort recorded for a query may be resumed too). */
    char *text = slurp(d.proc->log);
    const char *j = strstr(text, "journal: recovery scan read ");
    const char *r = strstr(text, "recovery: done: ");
    cr_assert(j != NULL && r != NULL);
    long long jrec = -1, jtx = -1, rrec = -1, rtx = -1;
    cr_assert_eq(sscanf(j, "journal: recovery scan read %lld records of %lld unfinished", &jrec, &jtx), 2);
    cr_assert_eq(sscanf(r, "recovery: done: %lld records read, %lld transactions resumed", &rrec, &rtx), 2);
    cr_assert_eq(rrec, jrec, "records read: %lld, the journal says %lld", rrec, jrec);
    cr_assert(rtx >= 6 && rtx <= jtx, "%lld transactions resumed of %lld unfinished", rtx, jtx);
    free(text);
}

struct notify {
    int fd;
    char path[108];
    char msgs[64][512];
    int n;
};

static void notify_open(struct notify *nt)
{
    memset(nt, 0, sizeof *nt);
    snprintf(nt->path, sizeof nt->path, "/tmp/treaty-notify-%d-%d.sock", (int)getpid(), support_free_port());
    nt->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    cr_assert(nt->fd >= 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", nt->path);
    unlink(nt->path);
    cr_assert_eq(bind(nt->fd, (struct sockaddr *)&a, sizeof a), 0, "bind %s: %s", nt->path, strerror(errno));
}

static void notify_close(struct notify *nt)
{
    close(nt->fd);
    unlink(nt->path);
}

/* Receives what has arrived. */
static void notify_drain(struct notify *nt)
{
    for (;;) {
        char buf[512];
        ssize_t got = recv(nt->fd, buf, sizeof buf - 1, 0);
        if (got < 0)
            return;
        buf[got] = '\0';
        if (nt->n < 64)
            snprintf(nt->msgs[nt->n++], sizeof nt->msgs[0], "%s", buf);
    }
}

/* Index of the first message containing needle, waiting for it. */
static int notify_wait(struct notify *nt, const char *needle)
{
    long long deadline = support_now_ms() + SUPPORT_DEADLINE_MS;
    for (;;) {
        notify_drain(nt);
        for (int i = 0; i < nt->n; i++)
            if (strstr(nt->msgs[i], needle) != NULL)
                return i;
        cr_assert(support_now_ms() < deadline, "no notification with %s", needle);
        support_sleep_ms(20);
    }
}

Test(lifecycle, systemd_hears_ready_only_after_recovery_with_status_lines)
{
    char journal[600];
    journal_db(journal, sizeof journal);
    struct support_treatyd d;
    struct support_treatyd_opts o = {.default_timeout_ms = 1000, .dead_after_ms = 60000};
    support_treatyd_start_with(&d, journal, &o, NULL, NULL);
    leave_unfinished_sagas(&d, 5);
    support_proc_kill(d.proc);

    struct notify nt;
    notify_open(&nt);
    char env_sock[200];
    snprintf(env_sock, sizeof env_sock, "NOTIFY_SOCKET=%s", nt.path);
    const char *const env[] = {env_sock, "TREATY_TEST_SCAN_DELAY_US=300000", NULL};
    support_treatyd_restart(&d, env, false);

    int ready = notify_wait(&nt, "READY=1");
    /* When READY=1 was sent, recovery had finished and said so. */
    cr_assert(support_file_contains(d.proc->log, "recovery: done: "), "READY=1 before the end of recovery");
    cr_assert(support_file_contains(d.proc->log, "treatyd serving on"));
    int progress = -1, done = -1;
    for (int i = 0; i < ready; i++) {
        if (strstr(nt.msgs[i], "STATUS=recovery: ") != NULL && strstr(nt.msgs[i], "records read") != NULL)
            progress = i;
        if (strstr(nt.msgs[i], "STATUS=recovery done: ") != NULL)
            done = i;
    }
    cr_assert(progress >= 0, "a STATUS= line with the recovery's progress before READY=1");
    cr_assert(done > progress, "STATUS= recovery done after the progress and before READY=1");
    long long rec = -1, tx = -1;
    cr_assert_eq(sscanf(strstr(nt.msgs[done], "STATUS=recovery done: "),
                        "STATUS=recovery done: %lld records read, %lld", &rec, &tx),
                 2, "%s", nt.msgs[done]);
    cr_assert(rec >= 5 && tx >= 5, "%s", nt.msgs[done]);
    cr_assert(strstr(nt.msgs[ready], "STATUS=serving on") != NULL, "%s", nt.msgs[ready]);
    support_treatyd_wait_serving(&d);

    /* SIGTERM: systemd hears STOPPING=1 with the drain's status. */
    cr_assert_eq(kill(d.proc->pid, SIGTERM), 0);
    int stopping = notify_wait(&nt, "STOPPING=1");
    cr_assert(stopping > ready);
    cr_assert(strstr(nt.msgs[stopping], "STATUS=stopping: ") != NULL, "%s", nt.msgs[stopping]);
    cr_assert(support_proc_wait(d.proc, SUPPORT_DEADLINE_MS));
    notify_close(&nt);
}

/* ------------------------------------------------------------ the unit file */

Test(lifecycle, the_systemd_unit_passes_systemd_analyze_verify)
{
    if (access("/usr/bin/systemd-analyze", X_OK) != 0 && access("/bin/systemd-analyze", X_OK) != 0) {
        cr_skip_test("systemd-analyze is not installed (Debian package systemd): the unit file is not verified");
    }
    char unit[700], text_path[700];
    snprintf(unit, sizeof unit, "%s/contrib/systemd/treatyd.service", support_top_dir());
    char *text = slurp(unit);
    cr_assert(strstr(text, "\nType=notify\n") != NULL);
    cr_assert(strstr(text, "\nExecReload=/bin/kill -HUP $MAINPID\n") != NULL);
    cr_assert(strstr(text, "\nNoNewPrivileges=yes\n") != NULL && strstr(text, "\nProtectSystem=strict\n") != NULL);

    /* verify wants the binaries to exist: point them at this build. */
    char bin[600];
    snprintf(bin, sizeof bin, "%s/treatyd", support_bin_dir());
    size_t cap = strlen(text) * 2 + 4096, n = 0;
    char *out = malloc(cap);
    cr_assert_not_null(out);
    const char *from = "/usr/local/bin/treatyd";
    for (const char *at = text;;) {
        const char *hit = strstr(at, from);
        size_t len = hit != NULL ? (size_t)(hit - at) : strlen(at);
        memcpy(out + n, at, len);
        n += len;
        if (hit == NULL)
            break;
        n += (size_t)snprintf(out + n, cap - n, "%s", bin);
        at = hit + strlen(from);
    }
    out[n] = '\0';
    support_write_file("treatyd.service", out, text_path, sizeof text_path);
    free(out);
    free(text);

    char *argv[] = {(char *)"/usr/bin/systemd-analyze", (char *)"verify", (char *)"--man=no", text_path, NULL};
    if (access(argv[0], X_OK) != 0)
        argv[0] = (char *)"/bin/systemd-analyze";
    struct support_proc *p = support_spawn("systemd-analyze", argv, NULL);
    cr_assert(support_proc_wait(p, SUPPORT_DEADLINE_MS));
    char *log = slurp(p->log);
    cr_assert(WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0, "systemd-analyze verify failed:\n%s", log);
    /* verify exits 0 on unknown keys and bad values: it only warns. The
     * log's first line is support_spawn's. */
    const char *after = strchr(log, '\n');
    cr_assert(after != NULL && strstr(after, "treatyd.service") == NULL, "systemd-analyze verify warns:\n%s", log);
    free(log);
}
