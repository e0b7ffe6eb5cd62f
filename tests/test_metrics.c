/*
 * test_metrics.c - treatyd's Prometheus metrics (coordinator/metrics*.c) and
 * the shipped alert rules (contrib/prometheus/), against the real tools:
 * curl fetches /metrics from the real treatyd, promtool lints it and checks
 * and unit-tests the rules, and the real Prometheus scrapes treatyd and is
 * asked what it stored through its HTTP API (/api/v1/query).
 *
 * The world of the end-to-end tests: a fresh journal database, treatyd on a
 * free port with metrics.listen on another, and one bank_service participant
 * (service "bank-a", instance a1, account alice=100) in its own database.
 * Transactions are single-branch transfers through the public client API, so
 * the counts the metrics must show are known exactly.
 *
 * Timing never decides pass/fail: every wait polls with a generous deadline.
 * The tools' output goes to files in the test's log directory, printed by the
 * assertion that fails.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "metrics.h"
#include "support.h"
#include "treaty.h"

static void metrics_teardown(void)
{
    support_cleanup();
    support_unlock();
}

TestSuite(metrics, .fini = metrics_teardown, .timeout = 240);

/* ------------------------------------------------------------ helpers */

/* Runs cmd with /bin/sh -c, its output in the log file of the process;
 * returns its exit status (-1 when it did not exit by itself in time). */
static int run_sh(const char *name, const char *cmd, struct support_proc **out)
{
    char *argv[] = {(char *)"/bin/sh", (char *)"-c", (char *)cmd, NULL};
    struct support_proc *p = support_spawn(name, argv, NULL);
    if (out != NULL)
        *out = p;
    if (!support_proc_wait(p, SUPPORT_DEADLINE_MS)) {
        support_proc_kill(p);
        return -1;
    }
    return WIFEXITED(p->status) ? WEXITSTATUS(p->status) : -1;
}

/* The contents of the file at path (malloc'd, NUL-terminated), or NULL. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    cr_assert(buf != NULL);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 4096) {
            cap *= 2;
            buf = realloc(buf, cap);
            cr_assert(buf != NULL);
        }
    }
    buf[len] = '\0';
    fclose(f);
    return buf;
}

/* Asserts that the command run as name exited 0, printing its output if not. */
static void assert_sh_ok(const char *name, const char *cmd)
{
    struct support_proc *p = NULL;
    int rc = run_sh(name, cmd, &p);
    if (rc != 0) {
        char *log = slurp(p->log);
        cr_assert_fail("`%s` exited %d:\n%s", cmd, rc, log != NULL ? log : "(no output)");
    }
}

/* GETs url into the file path with curl; returns the HTTP status (0: no answer). */
static int http_get(const char *url, const char *path)
{
    char cmd[1536], codefile[1024];
    snprintf(codefile, sizeof codefile, "%s.code", path);
    snprintf(cmd, sizeof cmd, "curl -sS --max-time 10 -o '%s' -w '%%{http_code}' '%s' > '%s'", path, url, codefile);
    run_sh("curl", cmd, NULL);
    char *code = slurp(codefile);
    int status = code != NULL ? atoi(code) : 0;
    free(code);
    return status;
}

/* ------------------------------------------------------------ the world */

struct world {
    char journal_db[64], journal[600];
    char bank_db[64], bank[600];
    int metrics_port;
    char metrics_url[128];
    struct support_treatyd d;
    struct support_proc *bank_proc;
    treaty_client_t *client;
};

/* One transfer on bank-a ("alice:DELTA" or "ping"); returns its outcome. */
static enum treaty_status transfer(struct world *w, const char *payload, treaty_outcome_t *out)
{
    treaty_txn_t *t = NULL;
    int rc = treaty_txn_new(&t);
    cr_assert(rc == 0, "treaty_txn_new: %s", treaty_strerror(rc));
    rc = treaty_txn_add_branch(t, "bank-a", payload, strlen(payload));
    cr_assert(rc == 0, "treaty_txn_add_branch: %s", treaty_strerror(rc));
    memset(out, 0, sizeof *out);
    rc = treaty_client_submit(w->client, t, 5000, out);
    treaty_txn_destroy(&t);
    cr_assert(rc == 0, "submit %s: %s", payload, treaty_strerror(rc));
    return out->status;
}

static void world_start(struct world *w)
{
    memset(w, 0, sizeof *w);
    support_pg_base(); /* fail loudly when run outside tests/run.sh */
    support_lock_shared();
    support_db_create("journal", w->journal_db, sizeof w->journal_db);
    support_db_conninfo(w->journal_db, w->journal, sizeof w->journal);
    support_db_create("bank_a", w->bank_db, sizeof w->bank_db);
    support_db_conninfo(w->bank_db, w->bank, sizeof w->bank);

    w->metrics_port = support_free_port();
    snprintf(w->metrics_url, sizeof w->metrics_url, "http://127.0.0.1:%d/metrics", w->metrics_port);
    char extra[128];
    snprintf(extra, sizeof extra, "metrics = { listen = \"127.0.0.1:%d\"; };", w->metrics_port);
    support_treatyd_start_with(&w->d, w->journal, NULL, extra, NULL);
    cr_assert(support_file_contains(w->d.proc->log, "metrics: serving"), "treatyd does not say it serves metrics (%s)",
              w->d.proc->log);

    char bin[600];
    snprintf(bin, sizeof bin, "%s/bank_service", support_bin_dir());
    char *argv[] = {bin,
                    (char *)"--endpoint",
                    w->d.endpoint,
                    (char *)"--service",
                    (char *)"bank-a",
                    (char *)"--instance",
                    (char *)"a1",
                    (char *)"--db",
                    w->bank,
                    (char *)"--create-accounts",
                    (char *)"alice=100",
                    NULL};
    w->bank_proc = support_spawn("bank-a", argv, NULL);

    int rc = treaty_client_new(w->d.endpoint, &w->client);
    cr_assert(rc == 0, "treaty_client_new: %s", treaty_strerror(rc));
    /* bank_service answers "ping" with a NO vote "pong" once it serves. */
    long long deadline = support_now_ms() + SUPPORT_DEADLINE_MS;
    for (;;) {
        treaty_outcome_t out;
        transfer(w, "ping", &out);
        if (strstr(out.reason, "pong") != NULL)
            break;
        cr_assert(support_proc_running(w->bank_proc), "bank-a ended (log %s)", w->bank_proc->log);
        cr_assert(support_now_ms() < deadline, "bank-a does not answer a ping (logs %s)", support_log_dir());
        support_sleep_ms(100);
    }
}

static void world_stop(struct world *w)
{
    treaty_client_destroy(&w->client);
}

/* Runs `commits` transfers that commit and `aborts` that abort (an
 * overdraft: bank-a votes NO). world_start's pings abort too, and how many
 * it needed is not known: only committed counts are exact. */
static void run_transactions(struct world *w, int commits, int aborts)
{
    treaty_outcome_t out;
    for (int i = 0; i < commits; i++)
        cr_assert_eq(transfer(w, "alice:-1", &out), TREATY_STATUS_COMMITTED, "transfer %d: %s %s", i,
                     treaty_status_name(out.status), out.reason);
    for (int i = 0; i < aborts; i++)
        cr_assert_eq(transfer(w, "alice:-100000", &out), TREATY_STATUS_ABORTED, "overdraft %d: %s", i,
                     treaty_status_name(out.status));
}

/* Asserts the exposition holds the exact line `sample` (name, labels, value). */
static void assert_sample(const char *text, const char *sample)
{
    size_t n = strlen(sample);
    for (const char *p = text; (p = strstr(p, sample)) != NULL; p += n)
        if ((p == text || p[-1] == '\n') && (p[n] == '\n' || p[n] == '\0'))
            return;
    cr_assert_fail("no line \"%s\" in the exposition:\n%s", sample, text);
}

/* ------------------------------------------------------------ unit */

Test(metrics, listen_address_accepts_ipv4_and_bracketed_ipv6_and_rejects_the_rest)
{
    struct metrics_addr a;
    char err[160];
    cr_assert_eq(metrics_parse_listen("127.0.0.1:9464", &a, err, sizeof err), 0, "%s", err);
    cr_assert(!a.ipv6);
    cr_assert_eq(metrics_parse_listen("[::1]:9464", &a, err, sizeof err), 0, "%s", err);
    cr_assert(a.ipv6);
    const char *bad[] = {"localhost:9464", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:94x4",
                         "::1:9464",       "[::1]9464", "[]:9464",     ":9464",           "300.0.0.1:9464"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        cr_assert_eq(metrics_parse_listen(bad[i], NULL, err, sizeof err), TREATY_ECONFIG, "\"%s\" was accepted",
                     bad[i]);
        cr_assert(err[0] != '\0', "no error message for \"%s\"", bad[i]);
    }
}

Test(metrics, label_values_escape_backslash_quote_and_newline_and_stop_short_at_the_buffer)
{
    char out[64];
    cr_assert_eq(metrics_escape_label("a\\b\"c\nd", out, sizeof out), 10);
    cr_assert_str_eq(out, "a\\\\b\\\"c\\nd");
    /* 4 bytes of room: "ab" then an escape that does not fit whole. */
    cr_assert_eq(metrics_escape_label("ab\"c", out, 4), 2);
    cr_assert_str_eq(out, "ab");
}

/* ------------------------------------------------------------ promtool */

Test(metrics, alert_rules_pass_promtool_check_rules_and_their_unit_tests)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cd '%s/contrib/prometheus' && promtool check rules treaty-rules.yml", support_top_dir());
    assert_sh_ok("promtool-check-rules", cmd);
    snprintf(cmd, sizeof cmd, "cd '%s/contrib/prometheus' && promtool test rules treaty-rules.test.yml",
             support_top_dir());
    assert_sh_ok("promtool-test-rules", cmd);
}

Test(metrics, endpoint_after_transactions_passes_promtool_check_metrics_and_counts_them)
{
    struct world w;
    world_start(&w);
    run_transactions(&w, 5, 2);

    char path[1024];
    snprintf(path, sizeof path, "%s/metrics.txt", support_log_dir());
    cr_assert_eq(http_get(w.metrics_url, path), 200, "GET %s", w.metrics_url);
    char *text = slurp(path);
    cr_assert(text != NULL);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "promtool check metrics < '%s'", path);
    assert_sh_ok("promtool-check-metrics", cmd);

    assert_sample(text, "treaty_transactions_total{kind=\"2pc\",outcome=\"committed\"} 5");
    assert_sample(text, "treaty_transactions_started_total{kind=\"saga\"} 0");
    assert_sample(text, "treaty_service_instances{service=\"bank-a\"} 1");
    assert_sample(text, "treaty_journal_healthy 1");
    assert_sample(text, "treaty_in_doubt_transactions 0");
    assert_sample(text, "treaty_transaction_duration_seconds_count{kind=\"saga\"} 0");
    /* every 2PC transaction decided was timed: pings and overdrafts abort */
    const char *agg = strstr(text, "\ntreaty_transactions_total{kind=\"2pc\",outcome=\"aborted\"} ");
    cr_assert(agg != NULL);
    long aborted = strtol(agg + strlen("\ntreaty_transactions_total{kind=\"2pc\",outcome=\"aborted\"} "), NULL, 10);
    cr_assert_geq(aborted, 3, "1 ping at least and 2 overdrafts abort; %ld counted", aborted);
    char want[160];
    snprintf(want, sizeof want, "treaty_transaction_duration_seconds_count{kind=\"2pc\"} %ld", 5 + aborted);
    assert_sample(text, want);
    free(text);

    /* other paths and methods are refused */
    snprintf(path, sizeof path, "%s/other.txt", support_log_dir());
    char url[160];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", w.metrics_port);
    cr_assert_eq(http_get(url, path), 404);
    world_stop(&w);
}

/* ------------------------------------------------------------ Prometheus */

/* Asks Prometheus (at base) for the value of the instant query q; false when
 * it has no sample (yet). */
static bool prom_query(const char *base, const char *q, double *value)
{
    char path[1024], cmd[2600];
    snprintf(path, sizeof path, "%s/prom-query.json", support_log_dir());
    snprintf(cmd, sizeof cmd, "curl -sS --max-time 10 -G -o '%s' '%s/api/v1/query' --data-urlencode 'query=%s'", path,
             base, q);
    if (run_sh("curl-prom", cmd, NULL) != 0)
        return false;
    char *json = slurp(path);
    if (json == NULL)
        return false;
    /* {"status":"success","data":{"resultType":"vector","result":[{"metric":{...},"value":[T,"V"]}]}} */
    bool ok = false;
    const char *v = strstr(json, "\"value\":[");
    if (strstr(json, "\"status\":\"success\"") != NULL && v != NULL) {
        const char *s = strstr(v, ",\"");
        if (s != NULL) {
            *value = strtod(s + 2, NULL);
            ok = true;
        }
    }
    free(json);
    return ok;
}

Test(metrics, real_prometheus_scrapes_treatyd_and_returns_the_committed_count)
{
    struct world w;
    world_start(&w);

    /* Prometheus in its own directory, on a free port, scraping every second,
     * with the shipped rules loaded (it refuses to start on a bad rule file). */
    char dir[700], cfgpath[800], data[800], text[2048];
    snprintf(dir, sizeof dir, "%s/prometheus", support_log_dir());
    cr_assert(mkdir(dir, 0700) == 0 || access(dir, W_OK) == 0, "mkdir %s", dir);
    snprintf(data, sizeof data, "%s/data", dir);
    int prom_port;
    do
        prom_port = support_free_port();
    while (prom_port == w.metrics_port);
    snprintf(text, sizeof text,
             "global:\n"
             "  scrape_interval: 1s\n"
             "  evaluation_interval: 1s\n"
             "rule_files:\n"
             "  - '%s/contrib/prometheus/treaty-rules.yml'\n"
             "scrape_configs:\n"
             "  - job_name: treaty\n"
             "    static_configs:\n"
             "      - targets: ['127.0.0.1:%d']\n",
             support_top_dir(), w.metrics_port);
    support_write_file("prometheus/prometheus.yml", text, cfgpath, sizeof cfgpath);
    char a_cfg[900], a_data[900], a_listen[64];
    snprintf(a_cfg, sizeof a_cfg, "--config.file=%s", cfgpath);
    snprintf(a_data, sizeof a_data, "--storage.tsdb.path=%s", data);
    snprintf(a_listen, sizeof a_listen, "--web.listen-address=127.0.0.1:%d", prom_port);
    char *argv[] = {(char *)"/usr/bin/prometheus", a_cfg, a_data, a_listen, NULL};
    struct support_proc *prom = support_spawn("prometheus", argv, NULL);
    char base[64];
    snprintf(base, sizeof base, "http://127.0.0.1:%d", prom_port);

    /* Prometheus has scraped treatyd once it knows the target is up. */
    long long deadline = support_now_ms() + 2 * SUPPORT_DEADLINE_MS;
    double v = 0;
    while (!prom_query(base, "up{job=\"treaty\"}", &v) || v != 1) {
        cr_assert(support_proc_running(prom), "prometheus ended (log %s)", prom->log);
        cr_assert(support_now_ms() < deadline, "Prometheus never scraped treatyd (log %s)", prom->log);
        support_sleep_ms(200);
    }

    run_transactions(&w, 7, 1);
    const char *q = "treaty_transactions_total{kind=\"2pc\",outcome=\"committed\"}";
    deadline = support_now_ms() + 2 * SUPPORT_DEADLINE_MS;
    v = -1;
    while (!prom_query(base, q, &v) || v != 7) {
        cr_assert(support_proc_running(prom), "prometheus ended (log %s)", prom->log);
        cr_assert(support_now_ms() < deadline, "Prometheus says %s = %g, want 7 (log %s)", q, v, prom->log);
        support_sleep_ms(200);
    }
    cr_assert(prom_query(base, "treaty_service_instances{service=\"bank-a\"}", &v));
    cr_assert_eq(v, 1.0);
    support_proc_stop(prom, 10000);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", data); /* Prometheus's TSDB; its config and log stay */
    run_sh("rm", cmd, NULL);
    world_stop(&w);
}
