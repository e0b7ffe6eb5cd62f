/*
 * test_config.c - coordinator/config.c: defaults, the example file, every kind
 * of bad file (unknown key, wrong type, out of range, syntax), flags over the
 * file, --help, bad flags, and the cross-key checks.
 */
#include <criterion/criterion.h>
#include <criterion/redirect.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "treaty.h"

/* a writable string, as argv holds */
#define S(lit) ((char[]){lit})
#define ARGC(a) ((int)(sizeof(a) / sizeof((a)[0])))

#define assert_contains(hay, needle)                                                                                   \
    cr_assert(strstr((hay), (needle)) != NULL, "expected \"%s\" in \"%s\"", (needle), (hay))

/* Writes text to a fresh /tmp file; its name goes to path[64]. */
static void write_tmp(char *path, const char *text)
{
    snprintf(path, 64, "/tmp/treaty-cfg-XXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0, "mkstemp failed");
    size_t n = strlen(text);
    cr_assert_eq(write(fd, text, n), (ssize_t)n);
    close(fd);
}

/* Loads text as a config file over the defaults; returns rc, error in err. */
static int load_text(const char *text, struct config *c, char *path, char *err, size_t errlen)
{
    write_tmp(path, text);
    config_defaults(c);
    err[0] = '\0';
    int rc = config_load_file(c, path, err, errlen);
    unlink(path);
    return rc;
}

/* Expects text to fail with "<tmpfile>:<line>: <what>" somewhere in the error. */
static void expect_file_error(const char *text, int line, const char *what)
{
    struct config c;
    char path[64], err[512], want[640];
    int rc = load_text(text, &c, path, err, sizeof err);
    cr_assert_eq(rc, TREATY_ECONFIG, "rc %d for %s", rc, text);
    snprintf(want, sizeof want, "%s:%d: %s", path, line, what);
    assert_contains(err, want);
}

static bool config_equal(const struct config *a, const struct config *b)
{
    return strcmp(a->listen, b->listen) == 0 && a->log_level == b->log_level &&
           a->shutdown_deadline_ms == b->shutdown_deadline_ms &&
           strcmp(a->journal_conninfo, b->journal_conninfo) == 0 &&
           a->journal_connect_initial_ms == b->journal_connect_initial_ms &&
           a->journal_connect_max_ms == b->journal_connect_max_ms &&
           a->journal_lazy_delay_ms == b->journal_lazy_delay_ms && a->journal_retention_s == b->journal_retention_s &&
           a->journal_gc_interval_ms == b->journal_gc_interval_ms && a->default_timeout_ms == b->default_timeout_ms &&
           a->max_timeout_ms == b->max_timeout_ms && a->resend_initial_ms == b->resend_initial_ms &&
           a->resend_max_ms == b->resend_max_ms && a->heartbeat_ms == b->heartbeat_ms &&
           a->dead_after_ms == b->dead_after_ms && a->max_payload_bytes == b->max_payload_bytes &&
           a->max_branches == b->max_branches && a->max_inflight == b->max_inflight && a->max_steps == b->max_steps &&
           a->stuck_after_attempts == b->stuck_after_attempts && a->stuck_retry_ms == b->stuck_retry_ms &&
           a->txid_max_age_s == b->txid_max_age_s && a->txid_max_future_s == b->txid_max_future_s &&
           a->saga_max_attempts == b->saga_max_attempts && a->saga_max_backoff_ms == b->saga_max_backoff_ms &&
           a->saga_max_try_timeout_ms == b->saga_max_try_timeout_ms &&
           a->saga_max_deadline_ms == b->saga_max_deadline_ms && a->outcome_cache == b->outcome_cache &&
           a->max_inflight_per_client == b->max_inflight_per_client && a->curve == b->curve &&
           strcmp(a->secret_key_file, b->secret_key_file) == 0 && strcmp(a->public_key_file, b->public_key_file) == 0 &&
           strcmp(a->allow_list, b->allow_list) == 0 && a->allow_insecure == b->allow_insecure &&
           strcmp(a->admin_listen, b->admin_listen) == 0 && a->admin_max_list == b->admin_max_list &&
           a->admin_max_pending == b->admin_max_pending && strcmp(a->metrics_listen, b->metrics_listen) == 0 &&
           a->metrics_max_services == b->metrics_max_services &&
           a->metrics_max_connections == b->metrics_max_connections &&
           a->metrics_connection_timeout_s == b->metrics_connection_timeout_s;
}

/* ------------------------------------------------------------ defaults */

Test(config, defaults)
{
    struct config c;
    memset(&c, 0x5a, sizeof c);
    config_defaults(&c);
    cr_assert_str_eq(c.listen, "tcp://127.0.0.1:7600");
    cr_assert_eq(c.log_level, LOG_LEVEL_INFO);
    cr_assert_eq(c.shutdown_deadline_ms, 5000);
    cr_assert_str_eq(c.journal_conninfo, "");
    cr_assert_eq(c.journal_connect_initial_ms, 100);
    cr_assert_eq(c.journal_connect_max_ms, 5000);
    cr_assert_eq(c.journal_lazy_delay_ms, 20);
    cr_assert_eq(c.journal_retention_s, 3600);
    cr_assert_eq(c.journal_gc_interval_ms, 5000);
    cr_assert_eq(c.default_timeout_ms, 10000);
    cr_assert_eq(c.max_timeout_ms, 600000);
    cr_assert_eq(c.resend_initial_ms, 200);
    cr_assert_eq(c.resend_max_ms, 5000);
    cr_assert_eq(c.heartbeat_ms, 1000);
    cr_assert_eq(c.dead_after_ms, 5000);
    cr_assert_eq(c.max_payload_bytes, 65536);
    cr_assert_eq(c.max_branches, 16);
    cr_assert_eq(c.max_inflight, 100000);
    cr_assert_eq(c.txid_max_age_s, 1800);
    cr_assert_eq(c.txid_max_future_s, 10);
    cr_assert_eq(c.saga_max_attempts, 100);
    cr_assert_eq(c.saga_max_backoff_ms, 60000);
    cr_assert_eq(c.saga_max_try_timeout_ms, 300000);
    cr_assert_eq(c.saga_max_deadline_ms, 86400000);
    cr_assert_eq(c.outcome_cache, 100000);
    cr_assert_eq(c.max_inflight_per_client, 10000);
    cr_assert_eq(c.curve, false);
    cr_assert_str_eq(c.secret_key_file, "");
    cr_assert_str_eq(c.public_key_file, "");
    cr_assert_str_eq(c.allow_list, "");
    cr_assert_eq(c.allow_insecure, false);

    char err[256] = "";
    cr_assert_eq(config_validate(&c, err, sizeof err), 0, "%s", err);
}

Test(config, empty_file_keeps_defaults)
{
    struct config c, d;
    char path[64], err[256];
    cr_assert_eq(load_text("# nothing here\n", &c, path, err, sizeof err), 0, "%s", err);
    config_defaults(&d);
    cr_assert(config_equal(&c, &d));
}

/* Every key of the example is set to its default: loading it over a struct
 * holding other values everywhere must yield exactly the defaults. */
Test(config, example_file_equals_defaults)
{
    char path[4096];
    const char *top = getenv("TREATY_TOP");
    if (top != NULL && *top != '\0')
        snprintf(path, sizeof path, "%s/coordinator/treatyd.conf.example", top);
    else
        snprintf(path, sizeof path, "coordinator/treatyd.conf.example");

    struct config c, d;
    memset(&c, 0x11, sizeof c);
    c.listen[sizeof c.listen - 1] = '\0';
    c.journal_conninfo[sizeof c.journal_conninfo - 1] = '\0';
    c.secret_key_file[sizeof c.secret_key_file - 1] = '\0';
    c.public_key_file[sizeof c.public_key_file - 1] = '\0';
    c.allow_list[sizeof c.allow_list - 1] = '\0';
    c.curve = true;
    c.allow_insecure = true;
    c.log_level = LOG_LEVEL_DEBUG;

    char err[512] = "";
    int rc = config_load_file(&c, path, err, sizeof err);
    cr_assert_eq(rc, 0, "loading %s: %s", path, err);
    config_defaults(&d);
    cr_assert(config_equal(&c, &d), "the example's values differ from the defaults (or it misses a key)");
    cr_assert_eq(config_validate(&c, err, sizeof err), 0, "%s", err);
}

Test(config, every_key_is_read)
{
    const char *text = "listen = \"tcp://10.0.0.1:9000\";\n"
                       "log_level = \"debug\";\n"
                       "shutdown_deadline_ms = 1;\n"
                       "journal: { conninfo = \"dbname=j\"; connect_initial_ms = 2; connect_max_ms = 3;\n"
                       "  lazy_delay_ms = 4; retention_s = 65; gc_interval_ms = 600; };\n"
                       "txid = { max_age_s = 23; max_future_s = 24; };\n"
                       "twopc = { default_timeout_ms = 7; max_timeout_ms = 8; resend_initial_ms = 9;\n"
                       "  resend_max_ms = 0xA; };\n"
                       "registry: { heartbeat_ms = 11; dead_after_ms = 22; };\n"
                       "limits: { max_payload_bytes = 13L; max_branches = 14; max_inflight = 15; outcome_cache = 25;\n"
                       "  max_inflight_per_client = 26; };\n"
                       "saga: { max_steps = 16; stuck_after_attempts = 17; stuck_retry_ms = 18; max_attempts = 19;\n"
                       "  max_backoff_ms = 20; max_try_timeout_ms = 21; max_deadline_ms = 22; };\n"
                       "security: { curve = true; secret_key_file = \"/k/s.key\"; public_key_file = \"/k/s.pub\";\n"
                       "  allow_list = \"/k/allow\"; allow_insecure = true; };\n"
                       "admin: { listen = \"ipc:///run/t/admin.sock\"; max_list = 27; max_pending = 28; };\n";
    struct config c;
    char path[64], err[256];
    cr_assert_eq(load_text(text, &c, path, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(c.listen, "tcp://10.0.0.1:9000");
    cr_assert_eq(c.log_level, LOG_LEVEL_DEBUG);
    cr_assert_eq(c.shutdown_deadline_ms, 1);
    cr_assert_str_eq(c.journal_conninfo, "dbname=j");
    cr_assert_eq(c.journal_connect_initial_ms, 2);
    cr_assert_eq(c.journal_connect_max_ms, 3);
    cr_assert_eq(c.journal_lazy_delay_ms, 4);
    cr_assert_eq(c.journal_retention_s, 65);
    cr_assert_eq(c.txid_max_age_s, 23);
    cr_assert_eq(c.txid_max_future_s, 24);
    cr_assert_eq(c.saga_max_attempts, 19);
    cr_assert_eq(c.saga_max_backoff_ms, 20);
    cr_assert_eq(c.saga_max_try_timeout_ms, 21);
    cr_assert_eq(c.saga_max_deadline_ms, 22);
    cr_assert_eq(c.outcome_cache, 25);
    cr_assert_eq(c.journal_gc_interval_ms, 600);
    cr_assert_eq(c.default_timeout_ms, 7);
    cr_assert_eq(c.max_timeout_ms, 8);
    cr_assert_eq(c.resend_initial_ms, 9);
    cr_assert_eq(c.resend_max_ms, 10);
    cr_assert_eq(c.heartbeat_ms, 11);
    cr_assert_eq(c.dead_after_ms, 22);
    cr_assert_eq(c.max_payload_bytes, 13);
    cr_assert_eq(c.max_branches, 14);
    cr_assert_eq(c.max_steps, 16);
    cr_assert_eq(c.stuck_after_attempts, 17);
    cr_assert_eq(c.stuck_retry_ms, 18);
    cr_assert_eq(c.max_inflight, 15);
    cr_assert_eq(c.max_inflight_per_client, 26);
    cr_assert_eq(c.curve, true);
    cr_assert_str_eq(c.secret_key_file, "/k/s.key");
    cr_assert_str_eq(c.public_key_file, "/k/s.pub");
    cr_assert_str_eq(c.allow_list, "/k/allow");
    cr_assert_eq(c.allow_insecure, true);
    cr_assert_str_eq(c.admin_listen, "ipc:///run/t/admin.sock");
    cr_assert_eq(c.admin_max_list, 27);
    cr_assert_eq(c.admin_max_pending, 28);
    cr_assert_eq(config_validate(&c, err, sizeof err), 0, "%s", err);
}

/* The admin endpoint is protected by its socket file's permissions only:
 * nothing but ipc:// may serve it. */
Test(config, admin_listen_must_be_an_ipc_path_or_empty)
{
    struct config c;
    char err[512];
    config_defaults(&c);
    cr_assert_str_eq(c.admin_listen, "ipc:///tmp/treatyd-admin.sock");
    snprintf(c.admin_listen, sizeof c.admin_listen, "tcp://127.0.0.1:7601");
    cr_assert_eq(config_validate(&c, err, sizeof err), TREATY_ECONFIG);
    assert_contains(err, "admin.listen");
    c.admin_listen[0] = '\0';
    cr_assert_eq(config_validate(&c, err, sizeof err), 0, "%s", err);
}

Test(config, missing_file)
{
    struct config c;
    char err[256] = "";
    config_defaults(&c);
    cr_assert_eq(config_load_file(&c, "/nonexistent/treatyd.conf", err, sizeof err), TREATY_ECONFIG);
    assert_contains(err, "/nonexistent/treatyd.conf");
    assert_contains(err, "No such file");
}

/* ------------------------------------------------------------ unknown keys */

Test(config, unknown_top_level_key)
{
    expect_file_error("listen = \"tcp://127.0.0.1:1\";\n\nbogus = 1;\n", 3, "bogus: unknown key");
}

Test(config, unknown_nested_key)
{
    expect_file_error("# comment\n"
                      "listen = \"tcp://127.0.0.1:1\";\n"
                      "twopc:\n"
                      "{\n"
                      "  resend_initial_ms = 100;\n"
                      "\n"
                      "  resend_max = 5000;\n"
                      "};\n",
                      7, "twopc.resend_max: unknown key");
}

Test(config, unknown_group_and_misplaced_keys)
{
    expect_file_error("telemetry: { port = 9100; };\n", 1, "telemetry: unknown key");
    expect_file_error("metrics: { port = 9100; };\n", 1, "metrics.port: unknown key");
    /* a top-level key inside a group, and a group key at the top */
    expect_file_error("journal: {\n  listen = \"x\";\n};\n", 2, "journal.listen: unknown key");
    expect_file_error("\nconninfo = \"\";\n", 2, "conninfo: unknown key");
    /* groups nest only one level */
    expect_file_error("twopc: {\n  inner: { resend_max_ms = 1; };\n};\n", 2, "twopc.inner: unknown key");
}

/* ------------------------------------------------------------ wrong types */

Test(config, wrong_type)
{
    expect_file_error("shutdown_deadline_ms = \"5000\";\n", 1,
                      "shutdown_deadline_ms: expected an integer, got a string");
    expect_file_error("\ntwopc: { resend_max_ms = 5.0; };\n", 2,
                      "twopc.resend_max_ms: expected an integer, got a float");
    expect_file_error("limits: { max_branches = true; };\n", 1,
                      "limits.max_branches: expected an integer, got a boolean");
    expect_file_error("limits: { max_branches = [1, 2]; };\n", 1,
                      "limits.max_branches: expected an integer, got an array");
    expect_file_error("listen = 7600;\n", 1, "listen: expected a string, got an integer");
    expect_file_error("listen = { port = 1; };\n", 1, "listen: expected a string, got a group");
    expect_file_error("journal: { conninfo = (\"a\", \"b\"); };\n", 1,
                      "journal.conninfo: expected a string, got a list");
    expect_file_error("log_level = 3;\n", 1, "log_level: expected a string, got an integer");
    expect_file_error("journal = \"dbname=x\";\n", 1, "journal: expected a group, got a string");
    expect_file_error("\n\nregistry = 5;\n", 3, "registry: expected a group, got an integer");
    expect_file_error("security: { curve = 1; };\n", 1, "security.curve: expected true or false, got an integer");
    expect_file_error("security: {\n allow_insecure = \"yes\"; };\n", 2,
                      "security.allow_insecure: expected true or false, got a string");
    expect_file_error("security: { allow_list = true; };\n", 1,
                      "security.allow_list: expected a string, got a boolean");
    expect_file_error("security = \"on\";\n", 1, "security: expected a group, got a string");
    expect_file_error("security: { curv = true; };\n", 1, "security.curv: unknown key");
}

Test(config, bad_log_level)
{
    expect_file_error("log_level = \"verbose\";\n", 1,
                      "log_level: must be error, warn, info or debug, got \"verbose\"");
}

Test(config, string_too_long)
{
    char text[600];
    char longv[301];
    memset(longv, 'a', 300);
    longv[300] = '\0';
    snprintf(text, sizeof text, "listen = \"%s\";\n", longv);
    expect_file_error(text, 1, "listen: too long (300 bytes, at most 255)");
}

/* ------------------------------------------------------------ ranges */

Test(config, out_of_range)
{
    expect_file_error("twopc: {\n  resend_max_ms = 0;\n};\n", 2,
                      "twopc.resend_max_ms: must be between 1 and 3600000, got 0");
    expect_file_error("limits: { max_branches = 129; };\n", 1,
                      "limits.max_branches: must be between 1 and 128, got 129");
    expect_file_error("shutdown_deadline_ms = -1;\n", 1, "shutdown_deadline_ms: must be between 0 and 600000, got -1");
    expect_file_error("journal: { gc_interval_ms = 99; };\n", 1,
                      "journal.gc_interval_ms: must be between 100 and 3600000, got 99");
    expect_file_error("registry: { heartbeat_ms = 60001; };\n", 1,
                      "registry.heartbeat_ms: must be between 10 and 60000, got 60001");
    expect_file_error("limits: { max_payload_bytes = 16777217L; };\n", 1,
                      "limits.max_payload_bytes: must be between 0 and 16777216, got 16777217");
    expect_file_error("limits: { max_inflight_per_client = 0; };\n", 1,
                      "limits.max_inflight_per_client: must be between 1 and 10000000, got 0");
}

/* libconfig 1.5 reads 4294967297 (no L) as 1: the value must still be refused. */
Test(config, out_of_range_beyond_32_bits)
{
    expect_file_error("limits: { max_branches = 4294967297; };\n", 1,
                      "limits.max_branches: must be between 1 and 128, got 4294967297");
    expect_file_error("# 99999999999 in a comment is fine\n/* so is\n 99999999999 */\nlisten = \"99999999999\";\n"
                      "shutdown_deadline_ms = 0x100000001;\n",
                      5, "shutdown_deadline_ms: must be between 0 and 600000, got 0x100000001");
    expect_file_error("twopc: { max_timeout_ms = -4294967295; };\n", 1,
                      "twopc.max_timeout_ms: must be between 1 and 86400000, got -4294967295");
    expect_file_error("twopc: { max_timeout_ms = 99999999999999999999L; };\n", 1,
                      "twopc.max_timeout_ms: must be between 1 and 86400000, got 99999999999999999999L");
}

Test(config, range_bounds_are_inclusive)
{
    const char *text = "shutdown_deadline_ms = 0;\n"
                       "journal: { connect_initial_ms = 60000; connect_max_ms = 600000; lazy_delay_ms = 0;\n"
                       "  retention_s = 31536000; gc_interval_ms = 100; };\n"
                       "twopc: { default_timeout_ms = 1; max_timeout_ms = 86400000; resend_initial_ms = 1;\n"
                       "  resend_max_ms = 3600000; };\n"
                       "registry: { heartbeat_ms = 10; dead_after_ms = 600000; };\n"
                       "limits: { max_payload_bytes = 16777216; max_branches = 128; max_inflight = 10000000; };\n";
    struct config c;
    char path[64], err[256];
    cr_assert_eq(load_text(text, &c, path, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.max_branches, 128);
    cr_assert_eq(c.max_inflight, 10000000);
    cr_assert_eq(c.journal_retention_s, 31536000);
    cr_assert_eq(c.max_timeout_ms, 86400000);
}

/* ------------------------------------------------------------ syntax */

Test(config, syntax_error_names_line)
{
    expect_file_error("listen = \"tcp://127.0.0.1:1\";\n\n\ntwopc: {\n  resend_max_ms = ;\n};\n", 5, "syntax error");
    /* libconfig notices an unterminated string where the file ends */
    expect_file_error("listen = \"unterminated;\n", 2, "syntax error");
    expect_file_error("twopc: { resend_max_ms = 1; \n", 2, "syntax error");
}

Test(config, duplicate_key)
{
    expect_file_error("shutdown_deadline_ms = 1;\nshutdown_deadline_ms = 2;\n", 2, "duplicate setting name");
}

Test(config, failed_load_leaves_config_untouched)
{
    struct config c, d;
    char path[64], err[256];
    write_tmp(path, "listen = \"tcp://10.1.1.1:1\";\nlimits: { max_branches = 0; };\n");
    config_defaults(&c);
    cr_assert_eq(config_load_file(&c, path, err, sizeof err), TREATY_ECONFIG);
    unlink(path);
    config_defaults(&d);
    cr_assert(config_equal(&c, &d));
}

Test(config, error_buffer_may_be_small_or_null)
{
    struct config c;
    char path[64], err[8];
    write_tmp(path, "bogus = 1;\n");
    config_defaults(&c);
    memset(err, 'x', sizeof err);
    cr_assert_eq(config_load_file(&c, path, err, sizeof err), TREATY_ECONFIG);
    cr_assert_eq(strlen(err), sizeof err - 1);
    cr_assert_eq(config_load_file(&c, path, NULL, 0), TREATY_ECONFIG);
    unlink(path);
}

/* ------------------------------------------------------------ flags */

Test(config, no_flags_gives_defaults)
{
    char *argv[] = {S("treatyd")};
    struct config c, d;
    char err[256] = "";
    memset(&c, 0x33, sizeof c);
    cr_assert_eq(config_from_args(&c, ARGC(argv), argv, err, sizeof err), 0, "%s", err);
    config_defaults(&d);
    cr_assert(config_equal(&c, &d));
}

Test(config, flags_override_the_file)
{
    char path[64], err[512] = "";
    write_tmp(path, "listen = \"tcp://127.0.0.1:1111\";\n"
                    "log_level = \"debug\";\n"
                    "journal: { conninfo = \"dbname=fromfile\"; };\n"
                    "twopc: { resend_max_ms = 7000; };\n");
    struct config c;

    /* flags before -c */
    char *a1[] = {S("treatyd"),
                  S("--listen"),
                  S("tcp://127.0.0.1:2222"),
                  S("--journal=dbname=fromflag"),
                  S("--log-level"),
                  S("warn"),
                  S("-c"),
                  path};
    cr_assert_eq(config_from_args(&c, ARGC(a1), a1, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(c.listen, "tcp://127.0.0.1:2222");
    cr_assert_str_eq(c.journal_conninfo, "dbname=fromflag");
    cr_assert_eq(c.log_level, LOG_LEVEL_WARN);
    cr_assert_eq(c.resend_max_ms, 7000); /* from the file */

    /* flags after --config */
    char *a2[] = {S("treatyd"), S("--config"), path, S("--log-level=error"), S("--listen=ipc:///tmp/t.sock")};
    cr_assert_eq(config_from_args(&c, ARGC(a2), a2, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(c.listen, "ipc:///tmp/t.sock");
    cr_assert_str_eq(c.journal_conninfo, "dbname=fromfile");
    cr_assert_eq(c.log_level, LOG_LEVEL_ERROR);
    cr_assert_eq(c.resend_max_ms, 7000);

    /* the file alone, "-cFILE" form */
    char cpath[80];
    snprintf(cpath, sizeof cpath, "-c%s", path);
    char *a3[] = {S("treatyd"), cpath};
    cr_assert_eq(config_from_args(&c, ARGC(a3), a3, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(c.listen, "tcp://127.0.0.1:1111");
    cr_assert_eq(c.log_level, LOG_LEVEL_DEBUG);
    unlink(path);
}

Test(config, flag_errors_in_the_file_are_reported)
{
    char path[64], err[512] = "", want[128];
    write_tmp(path, "\nbogus = 1;\n");
    char *argv[] = {S("treatyd"), S("--listen"), S("tcp://127.0.0.1:1"), S("-c"), path};
    struct config c;
    cr_assert_eq(config_from_args(&c, ARGC(argv), argv, err, sizeof err), TREATY_ECONFIG);
    snprintf(want, sizeof want, "%s:2: bogus: unknown key", path);
    assert_contains(err, want);
    unlink(path);
}

Test(config, help_returns_1, .init = cr_redirect_stdout)
{
    char *argv[] = {S("treatyd"), S("--listen"), S("tcp://127.0.0.1:1"), S("--help")};
    struct config c;
    char err[256] = "";
    cr_assert_eq(config_from_args(&c, ARGC(argv), argv, err, sizeof err), 1);
    fflush(stdout);

    char out[4096];
    FILE *f = cr_get_redirected_stdout();
    size_t n = fread(out, 1, sizeof out - 1, f);
    out[n] = '\0';
    assert_contains(out, "usage:");
    assert_contains(out, "--config");
    assert_contains(out, "-c");
    assert_contains(out, "--listen");
    assert_contains(out, "--journal");
    assert_contains(out, "--log-level");
    assert_contains(out, "--help");
}

static void expect_flag_error(int argc, char **argv, const char *what)
{
    struct config c;
    char err[256] = "";
    config_defaults(&c);
    cr_assert_eq(config_from_args(&c, argc, argv, err, sizeof err), TREATY_ECONFIG, "for %s", what);
    assert_contains(err, what);
}

Test(config, unknown_flag)
{
    char *a1[] = {S("treatyd"), S("--bogus")};
    expect_flag_error(ARGC(a1), a1, "--bogus: unknown option");
    char *a2[] = {S("treatyd"), S("--listen"), S("tcp://127.0.0.1:1"), S("-x")};
    expect_flag_error(ARGC(a2), a2, "-x: unknown option");
    char *a3[] = {S("treatyd"), S("--bogus=1")};
    expect_flag_error(ARGC(a3), a3, "--bogus=1");
    char *a4[] = {S("treatyd"), S("stray")};
    expect_flag_error(ARGC(a4), a4, "stray: unexpected argument");
    char *a5[] = {S("treatyd"), S("--help=yes")};
    expect_flag_error(ARGC(a5), a5, "--help: takes no argument");
}

Test(config, missing_flag_argument)
{
    char *a1[] = {S("treatyd"), S("--listen")};
    expect_flag_error(ARGC(a1), a1, "--listen: missing argument");
    char *a2[] = {S("treatyd"), S("-c")};
    expect_flag_error(ARGC(a2), a2, "-c/--config: missing argument");
    char *a3[] = {S("treatyd"), S("--config")};
    expect_flag_error(ARGC(a3), a3, "-c/--config: missing argument");
    char *a4[] = {S("treatyd"), S("--log-level")};
    expect_flag_error(ARGC(a4), a4, "--log-level: missing argument");
    char *a5[] = {S("treatyd"), S("--journal")};
    expect_flag_error(ARGC(a5), a5, "--journal: missing argument");
}

Test(config, bad_flag_values)
{
    char *a1[] = {S("treatyd"), S("--log-level"), S("loud")};
    expect_flag_error(ARGC(a1), a1, "--log-level: must be error, warn, info or debug, got \"loud\"");
    char longv[300];
    memset(longv, 'e', sizeof longv - 1);
    longv[sizeof longv - 1] = '\0';
    char *a2[] = {S("treatyd"), S("--listen"), longv};
    expect_flag_error(ARGC(a2), a2, "--listen: too long");
    char *a3[] = {S("treatyd"), S("-c"), S("/nonexistent/x.conf")};
    expect_flag_error(ARGC(a3), a3, "/nonexistent/x.conf: cannot open");
}

/* getopt keeps global state: each call must start afresh, even after an
 * error left it in the middle of argv. */
Test(config, repeated_calls)
{
    struct config c;
    char err[256];
    for (int i = 0; i < 3; i++) {
        char *bad[] = {S("treatyd"), S("-xc"), S("/nonexistent")};
        cr_assert_eq(config_from_args(&c, ARGC(bad), bad, err, sizeof err), TREATY_ECONFIG);
        assert_contains(err, "-x: unknown option");
        char *good[] = {S("treatyd"), S("--log-level"), S("debug"), S("--listen"), S("inproc://t")};
        cr_assert_eq(config_from_args(&c, ARGC(good), good, err, sizeof err), 0, "%s", err);
        cr_assert_eq(c.log_level, LOG_LEVEL_DEBUG);
        cr_assert_str_eq(c.listen, "inproc://t");
    }
}

Test(config, failed_flags_leave_config_untouched)
{
    struct config c, d;
    char err[256];
    config_defaults(&c);
    char *argv[] = {S("treatyd"), S("--listen"), S("tcp://127.0.0.1:9"), S("--log-level"), S("nope")};
    cr_assert_eq(config_from_args(&c, ARGC(argv), argv, err, sizeof err), TREATY_ECONFIG);
    config_defaults(&d);
    cr_assert(config_equal(&c, &d));
}

/* ------------------------------------------------------------ cross-key */

static void expect_invalid(const struct config *c, const char *what)
{
    char err[256] = "";
    cr_assert_eq(config_validate(c, err, sizeof err), TREATY_ECONFIG, "for %s", what);
    assert_contains(err, what);
}

Test(config, cross_key_validation)
{
    struct config c;
    char err[256];

    config_defaults(&c);
    c.resend_initial_ms = 6000;
    c.resend_max_ms = 5000;
    expect_invalid(&c, "twopc.resend_initial_ms");
    c.resend_initial_ms = 5000; /* equal is fine */
    cr_assert_eq(config_validate(&c, err, sizeof err), 0, "%s", err);

    config_defaults(&c);
    c.journal_connect_initial_ms = 5001;
    expect_invalid(&c, "journal.connect_initial_ms");
    c.journal_connect_initial_ms = 5000;
    cr_assert_eq(config_validate(&c, err, sizeof err), 0, "%s", err);

    config_defaults(&c);
    c.default_timeout_ms = 600001;
    expect_invalid(&c, "twopc.default_timeout_ms");
    c.default_timeout_ms = 600000;
    cr_assert_eq(config_validate(&c, err, sizeof err), 0, "%s", err);

    config_defaults(&c);
    c.heartbeat_ms = 5000; /* equal is not fine: strictly less */
    expect_invalid(&c, "registry.heartbeat_ms");
    c.heartbeat_ms = 4999;
    cr_assert_eq(config_validate(&c, err, sizeof err), 0, "%s", err);

    config_defaults(&c);
    c.listen[0] = '\0';
    expect_invalid(&c, "listen: must not be empty");

    config_defaults(&c);
    c.curve = true;
    expect_invalid(&c, "security.secret_key_file: required when security.curve = true");
    snprintf(c.secret_key_file, sizeof c.secret_key_file, "s.key");
    expect_invalid(&c, "security.public_key_file: required when security.curve = true");
    snprintf(c.public_key_file, sizeof c.public_key_file, "s.pub");
    expect_invalid(&c, "security.allow_list: required when security.curve = true");
    snprintf(c.allow_list, sizeof c.allow_list, "allow");
    cr_assert_eq(config_validate(&c, err, sizeof err), 0, "%s", err);
}

/* Without CURVE anyone who reaches the port is trusted with everything:
 * such a coordinator listens where only this host reaches it, unless the
 * operator says in so many words that the risk is accepted. */
Test(config, a_reachable_listen_address_without_curve_is_refused)
{
    const char *refused[] = {
        "tcp://*:7600",       "tcp://0.0.0.0:7600", "tcp://10.1.2.3:7600",    "tcp://eth0:7600",    "tcp://[::]:7600",
        "tcp://db.example:1", "tcp://128.0.0.1:1",  "pgm://eth0;239.1.1.1:5", "ws://127.0.0.1:1/x", "tcp://127.0.0.1",
        "tcp://:7600",        "tcp://[::1]7600",    "tcp://[::2]:1",          "tcp://localhost.x:1"};
    const char *local[] = {"tcp://127.0.0.1:7600", "tcp://127.9.8.7:1", "tcp://localhost:7600",
                           "tcp://[::1]:7600",     "ipc:///tmp/t.sock", "inproc://treaty-test"};
    struct config c;
    char err[1024];
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        config_defaults(&c);
        snprintf(c.listen, sizeof c.listen, "%s", refused[i]);
        cr_assert_not(config_endpoint_is_local(refused[i]), "%s", refused[i]);
        cr_assert_eq(config_validate(&c, err, sizeof err), TREATY_ECONFIG, "%s accepted", refused[i]);
        assert_contains(err, refused[i]);
        assert_contains(err, "security.curve is off: anyone who can connect could register as any participant");
        assert_contains(err, "security.allow_insecure = true");
        c.allow_insecure = true;
        cr_assert_eq(config_validate(&c, err, sizeof err), 0, "%s", err);
        c.allow_insecure = false;
        c.curve = true;
        snprintf(c.secret_key_file, sizeof c.secret_key_file, "s.key");
        snprintf(c.public_key_file, sizeof c.public_key_file, "s.pub");
        snprintf(c.allow_list, sizeof c.allow_list, "allow");
        cr_assert_eq(config_validate(&c, err, sizeof err), 0, "%s", err);
    }
    for (size_t i = 0; i < sizeof local / sizeof local[0]; i++) {
        config_defaults(&c);
        snprintf(c.listen, sizeof c.listen, "%s", local[i]);
        cr_assert(config_endpoint_is_local(local[i]), "%s", local[i]);
        cr_assert_eq(config_validate(&c, err, sizeof err), 0, "%s: %s", local[i], err);
    }
    /* from the file and the flag alike */
    char path[64];
    cr_assert_eq(load_text("listen = \"tcp://*:7600\";\n", &c, path, err, sizeof err), 0, "%s", err);
    expect_invalid(&c, "listen = \"tcp://*:7600\" can be reached from other hosts");
    char *argv[] = {S("treatyd"), S("--listen"), S("tcp://0.0.0.0:7600")};
    cr_assert_eq(config_from_args(&c, ARGC(argv), argv, err, sizeof err), 0, "%s", err);
    expect_invalid(&c, "listen = \"tcp://0.0.0.0:7600\" can be reached");
}

/* Seen: journal.retention_s = 0 was accepted; the journal read it as "the
 * default" and the coordinator's memory as "forget at once" (committed, then
 * "aborted" 2.5 s later). One meaning everywhere: values that cannot hold a
 * resubmission's answer are refused at start-up. */
Test(config, retention_too_short_for_resubmissions_is_refused)
{
    expect_file_error("journal = { retention_s = 0; };\n", 1, "journal.retention_s: must be between 60 and");
    expect_file_error("journal = { retention_s = 59; };\n", 1, "journal.retention_s: must be between 60 and");
    struct config c;
    config_defaults(&c);
    c.journal_retention_s = 600;
    expect_invalid(&c, "txid.max_age_s (1800) plus txid.max_future_s (10) must not exceed journal.retention_s (600)");
    c.txid_max_age_s = 590;
    char err[256] = "";
    cr_assert_eq(config_validate(&c, err, sizeof err), 0, "%s", err);
}

Test(config, cross_key_from_file)
{
    struct config c;
    char path[64], err[256] = "";
    cr_assert_eq(load_text("registry: { heartbeat_ms = 2000; dead_after_ms = 1000; };\n", &c, path, err, sizeof err), 0,
                 "%s", err);
    expect_invalid(&c, "registry.heartbeat_ms (2000) must be less than registry.dead_after_ms (1000)");
}

/* metrics.listen: off when empty; a numeric IP:PORT or [IPv6]:PORT, anything
 * else refused at start with the key named. */
Test(config, metrics_listen_must_be_a_numeric_address_and_port)
{
    struct config c;
    char err[256];
    config_defaults(&c);
    cr_assert_str_eq(c.metrics_listen, "");
    cr_assert_eq(config_validate(&c, err, sizeof err), 0, "%s", err);
    const char *ok[] = {"127.0.0.1:9464", "[::1]:9464", "0.0.0.0:1"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        snprintf(c.metrics_listen, sizeof c.metrics_listen, "%s", ok[i]);
        cr_assert_eq(config_validate(&c, err, sizeof err), 0, "%s: %s", ok[i], err);
    }
    const char *bad[] = {"localhost:9464", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", "::1:9464"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(c.metrics_listen, sizeof c.metrics_listen, "%s", bad[i]);
        expect_invalid(&c, "metrics.listen");
    }
}
