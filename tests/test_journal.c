/*
 * test_journal.c - the journal (journal/journal.h) against a real PostgreSQL.
 *
 * Environment (tests/run.sh sets both):
 *   TREATY_TEST_PG     base libpq conninfo, no dbname. Unset: the tests that
 *                      need Postgres fail, they never skip.
 *   TREATY_TEST_PGDIR  the cluster's directory, for scripts/pgtmp.sh restart.
 *
 * Every test gets its own database (journal_test_<pid>_<n>), so the tests run
 * in parallel. The restart test takes an exclusive flock on
 * $TREATY_TEST_PGDIR/restart.lock and every other database test a shared one,
 * so no test sees the cluster go away under it.
 *
 * Timing never decides a verdict: waits poll their condition with generous
 * deadlines.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <zmq.h>

#include "journal.h"
#include "journal_int.h"
#include "log.h"
#include "sql_batched_end.h"
#include "sql_journal.h"
#include "sql_runs_and_lookups.h"
#include "sql_saga.h"
#include "treaty.h"

#define WAIT_MS 30000

/* ------------------------------------------------------------- fixture */

static char db_name[64];
static char db_conninfo[1024];
static int lock_fd = -1;
static void *zctx;
static struct journal *J, *J2; /* closed by the fixture if a test fails */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static const char *base_conninfo(void)
{
    const char *b = getenv("TREATY_TEST_PG");
    if (!b || !*b)
        cr_assert_fail("TREATY_TEST_PG is not set: run the journal tests through `make test` (tests/run.sh "
                       "starts a throwaway PostgreSQL), or set it to a base conninfo such as "
                       "\"host=/tmp/x port=5432 user=treaty\"");
    return b;
}

static void cluster_lock(int how)
{
    const char *dir = getenv("TREATY_TEST_PGDIR");
    if (!dir || !*dir) {
        if (how == LOCK_EX)
            cr_assert_fail("TREATY_TEST_PGDIR is not set: the restart test needs the cluster's directory");
        return;
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/restart.lock", dir);
    lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    cr_assert(lock_fd >= 0, "open %s: %s", path, strerror(errno));
    while (flock(lock_fd, how) != 0)
        cr_assert(errno == EINTR, "flock %s: %s", path, strerror(errno));
}

static void quiet(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

/* Connects, retrying for up to 30 s (the cluster may be restarting). */
static PGconn *pg_open(const char *conninfo)
{
    int64_t until = mono_ms() + WAIT_MS;
    for (;;) {
        PGconn *c = PQconnectdb(conninfo);
        if (PQstatus(c) == CONNECTION_OK) {
            PQsetNoticeProcessor(c, quiet, NULL);
            return c;
        }
        if (mono_ms() > until) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", PQerrorMessage(c));
            PQfinish(c);
            cr_assert_fail("cannot connect to %s: %s", conninfo, msg);
        }
        PQfinish(c);
        sleep_ms(100);
    }
}

static PGresult *pg_must(PGconn *c, const char *sql)
{
    PGresult *res = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(res);
    cr_assert(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "%s: %s", sql, PQresultErrorMessage(res));
    return res;
}

static void pg_run(const char *conninfo, const char *sql)
{
    PGconn *c = pg_open(conninfo);
    PQclear(pg_must(c, sql));
    PQfinish(c);
}

static long long pg_count(const char *sql)
{
    PGconn *c = pg_open(db_conninfo);
    PGresult *res = pg_must(c, sql);
    cr_assert_eq(PQntuples(res), 1, "%s", sql);
    long long v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    PQfinish(c);
    return v;
}

/* Runs "<verb> <this test's database><suffix>" in the postgres database. */
static void admin_db(const char *verb, const char *suffix)
{
    char ci[1200], sql[512];
    snprintf(ci, sizeof ci, "%s dbname=postgres", base_conninfo());
    snprintf(sql, sizeof sql, "%s %s%s", verb, db_name, suffix);
    pg_run(ci, sql);
}

static void db_create(void)
{
    static unsigned n;
    const char *base = base_conninfo();
    snprintf(db_name, sizeof db_name, "journal_test_%d_%u", (int)getpid(), n++);
    admin_db("CREATE DATABASE", "");
    snprintf(db_conninfo, sizeof db_conninfo, "%s dbname=%s", base, db_name);
    zctx = zmq_ctx_new();
    cr_assert_not_null(zctx);
}

static void db_setup(void)
{
    log_set_level(LOG_LEVEL_WARN);
    base_conninfo();
    cluster_lock(LOCK_SH);
    db_create();
}

static void db_setup_exclusive(void)
{
    log_set_level(LOG_LEVEL_WARN);
    base_conninfo();
    cluster_lock(LOCK_EX);
    db_create();
}

static void db_teardown(void)
{
    journal_close(&J, 0);
    journal_close(&J2, 0);
    if (zctx)
        zmq_ctx_term(zctx);
    zctx = NULL;
    if (db_name[0])
        admin_db("DROP DATABASE IF EXISTS", " WITH (FORCE)");
    if (lock_fd >= 0)
        close(lock_fd);
    lock_fd = -1;
}

/* ------------------------------------------------------------- helpers */

static struct journal_config test_cfg(void)
{
    struct journal_config cfg = {0};
    cfg.conninfo = db_conninfo;
    cfg.connect_initial_ms = 20;
    cfg.connect_max_ms = 500;
    cfg.retention_s = 3600;
    return cfg;
}

static struct journal *open_journal(const struct journal_config *cfg, bool start)
{
    struct journal *j = NULL;
    char err[256];
    int rc = journal_connect(cfg, &j, err, sizeof err);
    cr_assert_eq(rc, 0, "journal_connect: %s (%s)", treaty_err_name(rc), err);
    cr_assert_not_null(j);
    if (start)
        cr_assert_eq(journal_start(j, zctx), 0);
    return j;
}

static void new_txid(uint8_t id[16])
{
    treaty_txid_t t;
    cr_assert_eq(treaty_txid_generate(&t), 0);
    memcpy(id, t.b, 16);
}

static void txid_sql(const uint8_t id[16], char out[37])
{
    journal_txid_format(id, out);
}

/* sql with each "TXID" replaced by the txid's UUID. */
static void with_txid(const char *sql, const uint8_t id[16], char *out, size_t len)
{
    char s[37];
    txid_sql(id, s);
    size_t n = 0;
    while (*sql) {
        if (strncmp(sql, "TXID", 4) == 0) {
            cr_assert_lt(n + 36, len);
            memcpy(out + n, s, 36);
            n += 36;
            sql += 4;
        } else {
            cr_assert_lt(n + 1, len);
            out[n++] = *sql++;
        }
    }
    out[n] = '\0';
}

static void pg_run_txid(const char *sql, const uint8_t id[16])
{
    char q[2048];
    with_txid(sql, id, q, sizeof q);
    pg_run(db_conninfo, q);
}

static long long pg_count_txid(const char *sql, const uint8_t id[16])
{
    char q[2048];
    with_txid(sql, id, q, sizeof q);
    return pg_count(q);
}

static const char *const svc_ab[] = {"svc-a", "svc-b"};

static struct journal_rec rec(const uint8_t id[16], enum journal_kind kind, const char *detail)
{
    struct journal_rec r = {.kind = kind, .failed_branch = -1, .detail = detail};
    memcpy(r.txid, id, 16);
    if (kind != JOURNAL_END) {
        r.nservices = 2;
        r.services = svc_ab;
    }
    return r;
}

/* Polls journal_durable (as the loop would) until it reaches seq. */
static bool wait_durable(struct journal *j, uint64_t seq, int timeout_ms)
{
    int64_t until = mono_ms() + timeout_ms;
    while (journal_durable(j) < seq) {
        if (mono_ms() > until)
            return false;
        zmq_pollitem_t it = {.socket = journal_socket(j), .events = ZMQ_POLLIN};
        zmq_poll(&it, 1, 100);
    }
    return true;
}

struct seen {
    uint8_t txid[16];
    enum journal_kind kind;
    char services[256]; /* joined with '|' */
    unsigned nservices;
    char detail[256];
    bool has_detail;
    int failed_branch;
    int step;
    bool has_data;
    unsigned char *data; /* a copy: the scan's buffer is borrowed for the call */
    size_t data_len;
    long long fin;
};

struct seen_list {
    struct seen *v;
    size_t n, cap;
    size_t stop_after; /* 0: never */
};

static int collect(void *arg, const struct journal_rec *r, long long fin)
{
    struct seen_list *l = arg;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        cr_assert_not_null(l->v);
    }
    struct seen *s = &l->v[l->n++];
    memset(s, 0, sizeof *s);
    memcpy(s->txid, r->txid, 16);
    s->kind = r->kind;
    s->nservices = r->nservices;
    /* Joined with '|', cut at the buffer's size (a saga has up to 64). */
    size_t used = 0;
    for (unsigned i = 0; i < r->nservices && used + 1 < sizeof s->services; i++) {
        int n = snprintf(s->services + used, sizeof s->services - used, "%s%s", i ? "|" : "", r->services[i]);
        cr_assert(n >= 0);
        used += (size_t)n;
    }
    if (r->detail) {
        s->has_detail = true;
        snprintf(s->detail, sizeof s->detail, "%s", r->detail);
    }
    s->failed_branch = r->failed_branch;
    s->step = r->step;
    if (r->data) {
        s->has_data = true;
        s->data_len = r->data_len;
        s->data = malloc(r->data_len ? r->data_len : 1);
        cr_assert_not_null(s->data);
        memcpy(s->data, r->data, r->data_len);
    } else {
        cr_assert_eq(r->data_len, 0);
    }
    s->fin = fin;
    if (l->stop_after && l->n >= l->stop_after)
        return 42;
    return 0;
}

static void seen_list_free(struct seen_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].data);
    free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

/* Records of txid in scan order; *first gets the index of the first one. */
static size_t seen_count(const struct seen_list *l, const uint8_t id[16], size_t *first)
{
    size_t n = 0;
    for (size_t i = 0; i < l->n; i++) {
        if (memcmp(l->v[i].txid, id, 16) == 0) {
            if (n == 0 && first)
                *first = i;
            n++;
        }
    }
    return n;
}

/* --------------------------------------------------- codec (no database) */

Test(journal_codec, kind_names)
{
    cr_assert_str_eq(journal_kind_name(JOURNAL_COMMIT), "commit");
    cr_assert_str_eq(journal_kind_name(JOURNAL_ABORT), "abort");
    cr_assert_str_eq(journal_kind_name(JOURNAL_END), "end");
    cr_assert_str_eq(journal_kind_name(JOURNAL_SAGA), "saga");
    cr_assert_str_eq(journal_kind_name(JOURNAL_STEP), "step");
    cr_assert_str_eq(journal_kind_name(JOURNAL_TURN), "turn");
    cr_assert_str_eq(journal_kind_name(JOURNAL_AUDIT), "audit");
    cr_assert_null(journal_kind_name((enum journal_kind)0));
    cr_assert_null(journal_kind_name((enum journal_kind)8));
    enum journal_kind k;
    cr_assert_eq(journal_kind_parse("audit", &k), 0);
    cr_assert_eq(k, JOURNAL_AUDIT);
    cr_assert_eq(journal_kind_parse("ends", &k), TREATY_EPROTO, "'ends' rows are the writer's, not a record kind");
}

Test(journal_codec, copy_line_of_saga_records)
{
    static const char *const svcs[] = {"pay", "ship"};
    static const unsigned char def[] = {0x00, 0x5c, 0x0a, 0x09, 0xff, 0x5c, 0x00};
    struct journal_rec r = {.kind = JOURNAL_SAGA,
                            .nservices = 2,
                            .services = svcs,
                            .failed_branch = -1,
                            .step = -1,
                            .data = def,
                            .data_len = sizeof def};
    memset(r.txid, 0xab, 16);
    struct journal_buf b = {0};
    journal_encode_row(&b, &r, false);
    /* bytea hex form, its backslash escaped for COPY. */
    const char *want = "abababab-abab-abab-abab-abababababab\tsaga\t{\"pay\",\"ship\"}\t\\N\t\\N\t\\N\t"
                       "\\\\x005c0a09ff5c00\n";
    cr_assert(b.len == strlen(want) && memcmp(b.data, want, b.len) == 0, "got: %.*s", (int)b.len, b.data);

    /* STEP: the step index; failed_branch is not a STEP's. */
    struct journal_rec st = {.kind = JOURNAL_STEP, .failed_branch = 4, .step = 7, .detail = "action"};
    memset(st.txid, 0x01, 16);
    b.len = 0;
    journal_encode_row(&b, &st, false);
    want = "01010101-0101-0101-0101-010101010101\tstep\t\\N\t\\N\taction\t7\t\\N\n";
    cr_assert(b.len == strlen(want) && memcmp(b.data, want, b.len) == 0, "got: %.*s", (int)b.len, b.data);

    /* TURN: the failing step goes in failed_branch; step is a STEP's only. */
    struct journal_rec t = {.kind = JOURNAL_TURN, .failed_branch = 3, .step = 3, .detail = "no stock"};
    memset(t.txid, 0x01, 16);
    b.len = 0;
    journal_encode_row(&b, &t, false);
    want = "01010101-0101-0101-0101-010101010101\tturn\t\\N\t3\tno stock\t\\N\t\\N\n";
    cr_assert(b.len == strlen(want) && memcmp(b.data, want, b.len) == 0, "got: %.*s", (int)b.len, b.data);

    /* A zero-initialised 2PC record: step 0 is not stored; empty data is. */
    struct journal_rec c;
    memset(&c, 0, sizeof c);
    c.kind = JOURNAL_COMMIT;
    b.len = 0;
    journal_encode_row(&b, &c, false);
    want = "00000000-0000-0000-0000-000000000000\tcommit\t\\N\t\\N\t\\N\t\\N\t\\N\n";
    cr_assert(b.len == strlen(want) && memcmp(b.data, want, b.len) == 0, "got: %.*s", (int)b.len, b.data);
    c.kind = JOURNAL_SAGA;
    c.data = "";
    b.len = 0;
    journal_encode_row(&b, &c, false);
    want = "00000000-0000-0000-0000-000000000000\tsaga\t\\N\t\\N\t\\N\t\\N\t\\\\x\n";
    cr_assert(b.len == strlen(want) && memcmp(b.data, want, b.len) == 0, "got: %.*s", (int)b.len, b.data);
    journal_buf_free(&b);
}

Test(journal_codec, txid_format_and_parse_round_trip)
{
    uint8_t id[16], back[16];
    for (int i = 0; i < 16; i++)
        id[i] = (uint8_t)(i * 17 + 3);
    char s[37];
    journal_txid_format(id, s);
    cr_assert_str_eq(s, "03142536-4758-697a-8b9c-adbecfe0f102");
    cr_assert_eq(journal_txid_parse(s, back), 0);
    cr_assert_arr_eq(id, back, 16);
    cr_assert_eq(journal_txid_parse("03142536-4758-697A-8B9C-ADBECFE0F102", back), 0);
    cr_assert_arr_eq(id, back, 16);
    cr_assert_eq(journal_txid_parse("03142536-4758-697a-8b9c-adbecfe0f10", back), TREATY_EINVAL);
    cr_assert_eq(journal_txid_parse("03142536x4758-697a-8b9c-adbecfe0f102", back), TREATY_EINVAL);
    cr_assert_eq(journal_txid_parse("03142536-4758-697a-8b9c-adbecfe0f102x", back), TREATY_EINVAL);
    cr_assert_eq(journal_txid_parse("0314253g-4758-697a-8b9c-adbecfe0f102", back), TREATY_EINVAL);
}

Test(journal_codec, copy_line_escapes_text_and_quotes_array_elements)
{
    static const char *const svcs[] = {"NULL", "a\"b\\c"};
    struct journal_rec r = {.kind = JOURNAL_ABORT,
                            .nservices = 2,
                            .services = svcs,
                            .detail = "tab\there\nnl\rcr \\ back \\.",
                            .failed_branch = 1};
    memset(r.txid, 0xab, 16);
    struct journal_buf b = {0};
    journal_encode_row(&b, &r, false);
    const char *want = "abababab-abab-abab-abab-abababababab\tabort\t{\"NULL\",\"a\\\\\"b\\\\\\\\c\"}\t1\t"
                       "tab\\there\\nnl\\rcr \\\\ back \\\\.\t\\N\t\\N\n";
    cr_assert_eq(b.len, strlen(want));
    cr_assert(memcmp(b.data, want, b.len) == 0, "got: %.*s", (int)b.len, b.data);

    /* END: no services, no detail, failed_branch only for ABORT. */
    struct journal_rec e = {.kind = JOURNAL_END, .failed_branch = 3};
    memset(e.txid, 0x01, 16);
    b.len = 0;
    journal_encode_row(&b, &e, false);
    want = "01010101-0101-0101-0101-010101010101\tend\t\\N\t\\N\t\\N\t\\N\t\\N\n";
    cr_assert(b.len == strlen(want) && memcmp(b.data, want, b.len) == 0, "got: %.*s", (int)b.len, b.data);
    journal_buf_free(&b);
}

Test(journal_codec, copy_line_replaces_unstorable_bytes)
{
    struct journal_rec r = {
        .kind = JOURNAL_ABORT, .failed_branch = -1, .detail = "ok \xff \xc3\xa9 \xed\xa0\x80 \xe2\x82"};
    struct journal_buf b = {0};
    journal_encode_row(&b, &r, false);
    const char *tail = "\t\\N\t\\N\tok ? \xc3\xa9 ??? ??\t\\N\t\\N\n";
    cr_assert(b.len > strlen(tail) && memcmp(b.data + b.len - strlen(tail), tail, strlen(tail)) == 0, "got: %.*s",
              (int)b.len, b.data);
    b.len = 0;
    journal_encode_row(&b, &r, true); /* a LATIN1 database: ASCII only */
    tail = "\t\\N\t\\N\tok ? ?? ??? ??\t\\N\t\\N\n";
    cr_assert(b.len > strlen(tail) && memcmp(b.data + b.len - strlen(tail), tail, strlen(tail)) == 0, "got: %.*s",
              (int)b.len, b.data);
    journal_buf_free(&b);
}

Test(journal_codec, text_array_parses_postgres_output)
{
    struct journal_strv sv = {0};
    char s1[] = "{}";
    cr_assert_eq(journal_parse_text_array(s1, &sv), 0);
    cr_assert_eq(sv.n, 0);
    char s2[] = "{svc-a,svc.b_9}";
    cr_assert_eq(journal_parse_text_array(s2, &sv), 0);
    cr_assert_eq(sv.n, 2);
    cr_assert_str_eq(sv.v[0], "svc-a");
    cr_assert_str_eq(sv.v[1], "svc.b_9");
    char s3[] = "{\"NULL\",\"a b\",\"c\\\"d\\\\e\",NULL,x}";
    cr_assert_eq(journal_parse_text_array(s3, &sv), 0);
    cr_assert_eq(sv.n, 5);
    cr_assert_str_eq(sv.v[0], "NULL");
    cr_assert_str_eq(sv.v[1], "a b");
    cr_assert_str_eq(sv.v[2], "c\"d\\e");
    cr_assert_str_eq(sv.v[3], "");
    cr_assert_str_eq(sv.v[4], "x");
    static const char *const bad[] = {"", "{", "{a", "{a,}", "a}", "{a}x", "{\"a}", "{,a}", "{{a}}", "[1:1]={a}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char buf[32];
        snprintf(buf, sizeof buf, "%s", bad[i]);
        cr_assert_eq(journal_parse_text_array(buf, &sv), TREATY_EPROTO, "accepted %s", bad[i]);
    }
    journal_strv_free(&sv);
}

/* ------------------------------------------------------ against Postgres */

TestSuite(journal, .init = db_setup, .fini = db_teardown, .timeout = 180);

Test(journal, append_flush_makes_records_durable_and_visible)
{
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    cr_assert(journal_healthy(J));
    cr_assert_not_null(journal_socket(J));

    uint8_t t1[16], t2[16];
    new_txid(t1);
    new_txid(t2);
    struct journal_rec c1 = rec(t1, JOURNAL_COMMIT, NULL);
    struct journal_rec a2 = rec(t2, JOURNAL_ABORT, "participant svc-b voted no");
    a2.failed_branch = 1;
    struct journal_rec e1 = rec(t1, JOURNAL_END, NULL);
    uint64_t s1 = journal_append(J, &c1, true);
    uint64_t s2 = journal_append(J, &a2, false);
    uint64_t s3 = journal_append(J, &e1, false);
    cr_assert_eq(s1, 1);
    cr_assert_eq(s2, 2);
    cr_assert_eq(s3, 3);
    cr_assert_eq(journal_backlog(J), 3);
    journal_flush(J);
    cr_assert(wait_durable(J, s3, WAIT_MS), "durable stayed at %" PRIu64, journal_durable(J));
    cr_assert_eq(journal_durable(J), 3);
    cr_assert_eq(journal_backlog(J), 0);

    struct journal_stats st;
    journal_get_stats(J, &st);
    cr_assert_eq(st.records, 3);
    cr_assert_eq(st.batches, 1);
    cr_assert_eq(st.forced_batches, 1);

    /* Visible to anyone, as plain SQL. */
    PGconn *c = pg_open(db_conninfo);
    PGresult *res = pg_must(c, "SELECT txid::text, kind, services::text, failed_branch, detail, ended::text "
                               "FROM treaty_journal ORDER BY seq");
    cr_assert_eq(PQntuples(res), 3);
    char id1[37], id2[37];
    txid_sql(t1, id1);
    txid_sql(t2, id2);
    cr_assert_str_eq(PQgetvalue(res, 0, 0), id1);
    cr_assert_str_eq(PQgetvalue(res, 0, 1), "commit");
    cr_assert_str_eq(PQgetvalue(res, 0, 2), "{svc-a,svc-b}");
    cr_assert(PQgetisnull(res, 0, 3));
    cr_assert(PQgetisnull(res, 0, 4));
    cr_assert_str_eq(PQgetvalue(res, 1, 0), id2);
    cr_assert_str_eq(PQgetvalue(res, 1, 1), "abort");
    cr_assert_str_eq(PQgetvalue(res, 1, 3), "1");
    cr_assert_str_eq(PQgetvalue(res, 1, 4), "participant svc-b voted no");
    /* The END, in the group's row of ENDs. */
    char ended[40];
    snprintf(ended, sizeof ended, "{%s}", id1);
    cr_assert(PQgetisnull(res, 2, 0));
    cr_assert_str_eq(PQgetvalue(res, 2, 1), "ends");
    cr_assert(PQgetisnull(res, 2, 2));
    cr_assert(PQgetisnull(res, 2, 4));
    cr_assert_str_eq(PQgetvalue(res, 2, 5), ended);
    cr_assert(PQgetisnull(res, 0, 5));
    PQclear(res);
    PQfinish(c);

    journal_close(&J, WAIT_MS);
    cr_assert_null(J);
}

Test(journal, appends_across_turns_are_grouped)
{
    /* Lazy turns wait up to 10 s for company; the forced turn at the end
     * ends the wait. So the writer sees many turns per transaction however
     * slow the machine is. */
    struct journal_config cfg = test_cfg();
    cfg.lazy_delay_ms = 10000;
    J = open_journal(&cfg, true);
    enum { TURNS = 200, PER_TURN = 5 };
    uint64_t last = 0;
    for (int t = 0; t < TURNS; t++) {
        for (int k = 0; k < PER_TURN; k++) {
            uint8_t id[16];
            new_txid(id);
            struct journal_rec r = rec(id, JOURNAL_END, NULL);
            last = journal_append(J, &r, t == TURNS - 1 && k == PER_TURN - 1);
        }
        journal_flush(J);
        journal_durable(J);
    }
    cr_assert_eq(last, TURNS * PER_TURN);
    cr_assert(wait_durable(J, last, WAIT_MS));
    struct journal_stats st;
    journal_get_stats(J, &st);
    cr_log_info("%d turns of %d records: %" PRIu64 " Postgres transactions", TURNS, PER_TURN, st.batches);
    cr_assert_eq(st.records, TURNS * PER_TURN);
    cr_assert_lt(st.batches, TURNS, "no grouping: %" PRIu64 " transactions for %d turns", st.batches, TURNS);
    cr_assert_geq(st.forced_batches, 1);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_records"), TURNS * PER_TURN);
    /* ENDs only: one row a group. */
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal"), (long long)st.batches);
    journal_close(&J, WAIT_MS);
}

Test(journal, large_backlog_is_written_in_bounded_transactions)
{
    /* ~17 MB of lazy records gathered in one lazy window, closed by a forced
     * record: the writer splits them over several transactions (4 MB each),
     * and the first turn alone (~3 MB) goes to libpq in pieces. */
    struct journal_config cfg = test_cfg();
    cfg.lazy_delay_ms = 10000;
    J = open_journal(&cfg, true);
    char detail[201];
    memset(detail, 'x', 200);
    detail[200] = '\0';
    uint64_t last = 0;
    for (int t = 0; t < 6; t++) {
        for (int k = 0; k < 12000; k++) {
            uint8_t id[16];
            new_txid(id);
            struct journal_rec r = rec(id, JOURNAL_ABORT, detail);
            last = journal_append(J, &r, t == 5 && k == 11999);
        }
        journal_flush(J);
    }
    cr_assert(wait_durable(J, last, 60000), "durable %" PRIu64 " of %" PRIu64, journal_durable(J), last);
    struct journal_stats st;
    journal_get_stats(J, &st);
    cr_log_info("%" PRIu64 " records in %" PRIu64 " transactions", st.records, st.batches);
    cr_assert_eq(st.records, last);
    cr_assert_geq(st.batches, 2);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal"), (long long)last);
    journal_close(&J, WAIT_MS);
}

Test(journal, lazy_only_batch_becomes_durable)
{
    struct journal_config cfg = test_cfg();
    cfg.lazy_delay_ms = 50;
    J = open_journal(&cfg, true);
    uint8_t id[16];
    new_txid(id);
    struct journal_rec a = rec(id, JOURNAL_ABORT, "timeout");
    struct journal_rec e = rec(id, JOURNAL_END, NULL);
    journal_append(J, &a, false);
    uint64_t s = journal_append(J, &e, false);
    journal_flush(J);
    cr_assert(wait_durable(J, s, WAIT_MS));
    struct journal_stats st;
    journal_get_stats(J, &st);
    cr_assert_eq(st.forced_batches, 0);
    cr_assert_eq(st.records, 2);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_records WHERE kind IN ('abort', 'end')"), 2);
    journal_close(&J, WAIT_MS);
}

Test(journal, text_round_trips_through_postgres)
{
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    static const char *const svcs[] = {"NULL", "a.b-c_9", "null"};
    const char *detail = "tab\there\nnl\rcr \\ back \\. \"q\" 'a' caf\xc3\xa9 bad\xff end";
    uint8_t id[16];
    new_txid(id);
    struct journal_rec r = {
        .kind = JOURNAL_ABORT, .nservices = 3, .services = svcs, .detail = detail, .failed_branch = 2};
    memcpy(r.txid, id, 16);
    uint64_t s = journal_append(J, &r, true);
    journal_flush(J);
    cr_assert(wait_durable(J, s, WAIT_MS));
    journal_close(&J, WAIT_MS);

    const char *stored = "tab\there\nnl\rcr \\ back \\. \"q\" 'a' caf\xc3\xa9 bad? end";
    PGconn *c = pg_open(db_conninfo);
    PGresult *res = pg_must(c, "SELECT detail, services[1] IS NULL, services[1], services[3], "
                               "array_length(services, 1) FROM treaty_journal");
    cr_assert_eq(PQntuples(res), 1);
    cr_assert_str_eq(PQgetvalue(res, 0, 0), stored);
    cr_assert_str_eq(PQgetvalue(res, 0, 1), "f");
    cr_assert_str_eq(PQgetvalue(res, 0, 2), "NULL");
    cr_assert_str_eq(PQgetvalue(res, 0, 3), "null");
    cr_assert_str_eq(PQgetvalue(res, 0, 4), "3");
    PQclear(res);
    PQfinish(c);

    J = open_journal(&cfg, false);
    struct seen_list l = {0};
    cr_assert_eq(journal_scan(J, collect, &l), 0);
    cr_assert_eq(l.n, 1);
    cr_assert_str_eq(l.v[0].services, "NULL|a.b-c_9|null");
    cr_assert_str_eq(l.v[0].detail, stored);
    cr_assert_eq(l.v[0].failed_branch, 2);
    free(l.v);
    journal_close(&J, 0);
}

Test(journal, scan_returns_unfinished_transactions_only)
{
    struct journal_config cfg = test_cfg();
    cfg.retention_s = 60;
    J = open_journal(&cfg, true);
    uint8_t t1[16], t2[16], t3[16], t4[16];
    new_txid(t1);
    new_txid(t2);
    new_txid(t3);
    new_txid(t4);
    struct journal_rec r;
    r = rec(t1, JOURNAL_COMMIT, NULL); /* committed, not finished */
    journal_append(J, &r, true);
    r = rec(t2, JOURNAL_COMMIT, NULL); /* committed and finished */
    journal_append(J, &r, true);
    r = rec(t3, JOURNAL_ABORT, "svc-b voted no"); /* aborted and finished */
    r.failed_branch = 1;
    journal_append(J, &r, false);
    r = rec(t4, JOURNAL_COMMIT, NULL); /* finished long ago */
    journal_append(J, &r, true);
    journal_flush(J);
    r = rec(t2, JOURNAL_END, NULL);
    journal_append(J, &r, false);
    r = rec(t3, JOURNAL_END, NULL);
    uint64_t last = journal_append(J, &r, false);
    journal_flush(J);
    cr_assert(wait_durable(J, last, WAIT_MS));
    r = rec(t4, JOURNAL_END, NULL); /* in a group (and an 'ends' row) of its own */
    last = journal_append(J, &r, false);
    journal_flush(J);
    cr_assert(wait_durable(J, last, WAIT_MS));
    journal_close(&J, WAIT_MS);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal WHERE kind = 'ends'"), 2);

    /* t4 ended two hours ago: past retention. t1's COMMIT is stored twice, as
     * a version-3 writer left a rewritten group. */
    char id1[37], id4[37], sql[512];
    txid_sql(t1, id1);
    txid_sql(t4, id4);
    snprintf(sql, sizeof sql,
             "UPDATE treaty_journal SET written_at = now() - interval '2 hours' "
             " WHERE txid = '%s' OR '%s' = ANY(ended); "
             "INSERT INTO treaty_journal (txid, kind, services) "
             "SELECT txid, kind, services FROM treaty_journal WHERE txid = '%s'",
             id4, id4, id1);
    pg_run(db_conninfo, sql);

    J = open_journal(&cfg, false);
    struct seen_list l = {0};
    cr_assert_eq(journal_scan(J, collect, &l), 0);
    /* Finished transactions, within retention or not, are not delivered
     * (journal_lookup answers for them). The duplicate comes back as stored. */
    cr_assert_eq(l.n, 2, "scan returned %zu records", l.n);
    size_t i1 = 0;
    cr_assert_eq(seen_count(&l, t1, &i1), 2);
    cr_assert_eq(seen_count(&l, t2, NULL), 0, "a finished transaction within retention came back");
    cr_assert_eq(seen_count(&l, t3, NULL), 0, "a finished transaction within retention came back");
    cr_assert_eq(seen_count(&l, t4, NULL), 0, "a transaction finished past retention came back");
    for (size_t k = i1; k < i1 + 2; k++) {
        cr_assert_eq(l.v[k].kind, JOURNAL_COMMIT);
        cr_assert_eq(l.v[k].fin, 0);
        cr_assert_str_eq(l.v[k].services, "svc-a|svc-b");
        cr_assert(!l.v[k].has_detail);
    }
    free(l.v);
    journal_close(&J, 0);
}

Test(journal, scan_stops_when_the_callback_says_so)
{
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    uint64_t last = 0;
    for (int i = 0; i < 5; i++) {
        uint8_t id[16];
        new_txid(id);
        struct journal_rec r = rec(id, JOURNAL_COMMIT, NULL);
        last = journal_append(J, &r, true);
    }
    journal_flush(J);
    cr_assert(wait_durable(J, last, WAIT_MS));
    journal_close(&J, WAIT_MS);

    J = open_journal(&cfg, false);
    struct seen_list l = {.stop_after = 2};
    cr_assert_eq(journal_scan(J, collect, &l), 42);
    cr_assert_eq(l.n, 2);
    /* The connection is still usable: a second scan reads everything. */
    l.n = 0;
    l.stop_after = 0;
    cr_assert_eq(journal_scan(J, collect, &l), 0);
    cr_assert_eq(l.n, 5);
    free(l.v);
    /* Scanning belongs before journal_start. */
    cr_assert_eq(journal_start(J, zctx), 0);
    cr_assert_eq(journal_scan(J, collect, &l), TREATY_ESTATE);
    journal_close(&J, 0);
}

static int count_rows(void *arg, const struct journal_rec *r, long long fin)
{
    size_t *n = arg;
    if (r->nservices != 2 || strcmp(r->services[1], "svc-b") != 0 || fin != 0)
        return -1;
    (*n)++;
    return 0;
}

Test(journal, scan_of_100k_unfinished_transactions)
{
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, false);
    /* 100,000 unfinished transactions, and as many finished past retention. */
    pg_run(db_conninfo, "INSERT INTO treaty_journal (txid, kind, services) "
                        "SELECT gen_random_uuid(), 'commit', ARRAY['svc-a', 'svc-b'] "
                        "  FROM generate_series(1, 100000); "
                        "WITH t AS (SELECT gen_random_uuid() AS txid FROM generate_series(1, 100000)) "
                        "INSERT INTO treaty_journal (txid, kind, services, written_at) "
                        "SELECT txid, k, CASE WHEN k = 'commit' THEN ARRAY['svc-a'] END, "
                        "       now() - interval '2 days' "
                        "  FROM t, unnest(ARRAY['commit', 'end']) AS k; "
                        "ANALYZE treaty_journal");
    size_t n = 0;
    int64_t t0 = mono_ms();
    cr_assert_eq(journal_scan(J, count_rows, &n), 0);
    int64_t ms = mono_ms() - t0;
    cr_assert_eq(n, 100000);
    cr_log_info("scan of 100,000 unfinished transactions: %lld ms", (long long)ms);
    fprintf(stderr, "test_journal: scan of 100,000 unfinished transactions took %lld ms\n", (long long)ms);
    journal_close(&J, 0);
}

Test(journal, newer_schema_is_refused)
{
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, false);
    journal_close(&J, 0);
    /* Applying the schema again is harmless. */
    J = open_journal(&cfg, false);
    journal_close(&J, 0);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_schema"), 5);
    cr_assert_eq(pg_count("SELECT max(version) FROM treaty_schema"), JOURNAL_SCHEMA_VERSION);

    pg_run(db_conninfo, "INSERT INTO treaty_schema (version) VALUES (999)");
    char err[256] = "";
    struct journal *j = (struct journal *)&err; /* must be reset to NULL */
    int rc = journal_connect(&cfg, &j, err, sizeof err);
    cr_assert_eq(rc, TREATY_EVERSION, "got %s", treaty_err_name(rc));
    cr_assert_null(j);
    cr_assert(strstr(err, "999") != NULL, "message does not name the version: %s", err);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_schema"), 6);

    /* Version 6 is newer too: refused, nothing applied. */
    pg_run(db_conninfo, "DELETE FROM treaty_schema WHERE version = 999; "
                        "INSERT INTO treaty_schema (version) VALUES (6)");
    rc = journal_connect(&cfg, &j, err, sizeof err);
    cr_assert_eq(rc, TREATY_EVERSION, "got %s", treaty_err_name(rc));
    cr_assert_null(j);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_schema"), 6);
}

struct connect_arg {
    struct journal_config cfg;
    struct journal *j;
    int rc;
};

static void *connect_thread(void *p)
{
    struct connect_arg *a = p;
    char err[256];
    a->rc = journal_connect(&a->cfg, &a->j, err, sizeof err);
    /* Each holds the owner lock until it closes: the others wait for it. */
    journal_close(&a->j, 0);
    return NULL;
}

Test(journal, concurrent_connects_apply_the_schema_once)
{
    enum { N = 4 };
    struct connect_arg a[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        a[i] = (struct connect_arg){.cfg = test_cfg()};
        cr_assert_eq(pthread_create(&th[i], NULL, connect_thread, &a[i]), 0);
    }
    for (int i = 0; i < N; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < N; i++) {
        cr_expect_eq(a[i].rc, 0, "connect %d: %s", i, treaty_err_name(a[i].rc));
    }
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_schema WHERE version = 1"), 1);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_schema WHERE version = 2"), 1);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_schema WHERE version = 3"), 1);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_schema WHERE version = 4"), 1);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_schema WHERE version = 5"), 1);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_schema"), 5);
}

struct stopper {
    volatile int *flag;
    int after_ms;
};

static void *stop_later(void *p)
{
    struct stopper *s = p;
    sleep_ms(s->after_ms);
    *s->flag = 1;
    return NULL;
}

/* Connects with *stop set from another thread after 300 ms. */
static int connect_until_stopped(const char *conninfo, int64_t *took_ms)
{
    volatile int stop = 0;
    struct journal_config cfg = {
        .conninfo = conninfo, .connect_initial_ms = 20, .connect_max_ms = 100, .retention_s = 3600, .stop = &stop};
    struct stopper s = {.flag = &stop, .after_ms = 300};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, stop_later, &s), 0);
    struct journal *j = NULL;
    char err[256];
    int64_t t0 = mono_ms();
    int rc = journal_connect(&cfg, &j, err, sizeof err);
    *took_ms = mono_ms() - t0;
    pthread_join(th, NULL);
    cr_assert_null(j);
    if (rc == TREATY_EBUSY)
        cr_assert(strstr(err, "stopped") != NULL, "message: %s", err);
    return rc;
}

static int tcp_listener(int *port, bool listening)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t len = sizeof sa;
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    *port = ntohs(sa.sin_port);
    if (listening)
        cr_assert_eq(listen(fd, 16), 0);
    return fd;
}

Test(journal_connect, unreachable_port_with_stop_returns_ebusy, .timeout = 120)
{
    log_set_level(LOG_LEVEL_ERROR);
    int port;
    int fd = tcp_listener(&port, false); /* bound, not listening: refused */
    char ci[256];
    snprintf(ci, sizeof ci, "host=127.0.0.1 port=%d user=nobody dbname=nothing sslmode=disable", port);
    int64_t took;
    int rc = connect_until_stopped(ci, &took);
    cr_assert_eq(rc, TREATY_EBUSY, "got %s", treaty_err_name(rc));
    cr_log_info("refused port: stopped after %lld ms", (long long)took);
    close(fd);
}

Test(journal_connect, silent_server_with_stop_returns_ebusy, .timeout = 120)
{
    log_set_level(LOG_LEVEL_ERROR);
    int port;
    int fd = tcp_listener(&port, true); /* accepts the TCP handshake, never answers */
    char ci[256];
    snprintf(ci, sizeof ci, "host=127.0.0.1 port=%d user=nobody dbname=nothing sslmode=disable", port);
    int64_t took;
    int rc = connect_until_stopped(ci, &took);
    cr_assert_eq(rc, TREATY_EBUSY, "got %s", treaty_err_name(rc));
    cr_log_info("silent server: stopped after %lld ms", (long long)took);
    close(fd);
}

Test(journal_connect, invalid_arguments)
{
    struct journal *j = NULL;
    char err[128];
    struct journal_config cfg = {0};
    cr_assert_eq(journal_connect(&cfg, &j, err, sizeof err), TREATY_EINVAL);
    cr_assert_eq(journal_connect(NULL, &j, err, sizeof err), TREATY_EINVAL);
    cfg.conninfo = "host=";
    cr_assert_eq(journal_connect(&cfg, NULL, err, sizeof err), TREATY_EINVAL);
    cfg.conninfo = "this is = not = a conninfo";
    cfg.retention_s = 3600;
    cr_assert_eq(journal_connect(&cfg, &j, err, sizeof err), TREATY_EINVAL);
    cr_assert(strstr(err, "conninfo") != NULL, "%s", err);
    cr_assert_null(j);
    /* Retention has no default: 0 (and below) is refused, never read as 3600.
     * (*stop is set: a journal_connect that took the value returns EBUSY at
     * once instead of retrying the missing server.) */
    volatile int stop = 1;
    cfg.conninfo = "host=/nonexistent";
    cfg.stop = &stop;
    for (int r = 0; r >= -1; r--) {
        cfg.retention_s = r;
        err[0] = '\0';
        cr_assert_eq(journal_connect(&cfg, &j, err, sizeof err), TREATY_EINVAL, "retention_s = %d accepted", r);
        cr_assert(strstr(err, "retention_s") != NULL, "%s", err);
        cr_assert_null(j);
    }
    journal_close(NULL, 0);
    journal_close(&j, 0);
}

Test(journal, close_writes_what_is_pending)
{
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    uint8_t id[16];
    new_txid(id);
    struct journal_rec r = rec(id, JOURNAL_COMMIT, NULL);
    journal_append(J, &r, true);
    r = rec(id, JOURNAL_END, NULL);
    journal_append(J, &r, false); /* no flush: close hands it over */
    journal_close(&J, WAIT_MS);
    cr_assert_null(J);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal"), 2);

    /* Appended before journal_start and never started: written at close. */
    J = open_journal(&cfg, false);
    r = rec(id, JOURNAL_END, "again");
    journal_append(J, &r, false);
    journal_close(&J, WAIT_MS);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal WHERE detail = 'again'"), 1);

    /* Appended before journal_start: written once started. */
    J = open_journal(&cfg, false);
    r = rec(id, JOURNAL_END, "early");
    uint64_t s = journal_append(J, &r, true);
    cr_assert_eq(journal_start(J, zctx), 0);
    cr_assert(wait_durable(J, s, WAIT_MS));
    journal_close(&J, 0);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal WHERE detail = 'early'"), 1);
}

Test(journal, close_gives_up_when_postgres_is_gone)
{
    log_set_level(LOG_LEVEL_ERROR);
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    uint8_t id[16];
    new_txid(id);
    struct journal_rec r = rec(id, JOURNAL_COMMIT, NULL);
    uint64_t s = journal_append(J, &r, true);
    journal_flush(J);
    cr_assert(wait_durable(J, s, WAIT_MS));

    /* The database disappears for good: the writer can never write again. */
    admin_db("DROP DATABASE", " WITH (FORCE)");
    r = rec(id, JOURNAL_END, NULL);
    s = journal_append(J, &r, true);
    journal_flush(J);
    int64_t until = mono_ms() + WAIT_MS;
    while (journal_healthy(J) && mono_ms() < until) {
        journal_durable(J);
        sleep_ms(20);
    }
    cr_assert(!journal_healthy(J), "still healthy without a database");
    cr_assert_lt(journal_durable(J), s);
    cr_assert_eq(journal_backlog(J), 1);
    journal_close(&J, 200); /* must return although nothing can be written */
    cr_assert_null(J);
}

Test(journal, gc_deletes_ended_transactions_past_retention)
{
    struct journal_config cfg = test_cfg();
    cfg.retention_s = 1;
    cfg.gc_interval_ms = 100;
    J = open_journal(&cfg, true);
    uint8_t t1[16], t2[16], t3[16];
    new_txid(t1);
    new_txid(t2);
    new_txid(t3);
    struct journal_rec r;
    r = rec(t1, JOURNAL_COMMIT, NULL);
    journal_append(J, &r, true);
    r = rec(t1, JOURNAL_END, NULL);
    journal_append(J, &r, false);
    r = rec(t2, JOURNAL_COMMIT, NULL); /* never ends */
    journal_append(J, &r, true);
    r = rec(t3, JOURNAL_ABORT, "no");
    journal_append(J, &r, false);
    r = rec(t3, JOURNAL_END, NULL);
    uint64_t s = journal_append(J, &r, false);
    journal_flush(J);
    cr_assert(wait_durable(J, s, WAIT_MS));
    /* Everything is old now, the unfinished t2 too. */
    pg_run(db_conninfo, "UPDATE treaty_journal SET written_at = now() - interval '1 hour'");

    char id1[37], id2[37], id3[37], q_done[256], q_open[256];
    txid_sql(t1, id1);
    txid_sql(t2, id2);
    txid_sql(t3, id3);
    snprintf(q_done, sizeof q_done, "SELECT count(*) FROM treaty_journal WHERE txid IN ('%s', '%s')", id1, id3);
    snprintf(q_open, sizeof q_open, "SELECT count(*) FROM treaty_journal WHERE txid = '%s'", id2);
    struct journal_stats st;
    int64_t until = mono_ms() + WAIT_MS;
    for (;;) {
        journal_get_stats(J, &st);
        long long left = pg_count(q_done);
        if ((left == 0 && st.gc_deleted >= 3) || mono_ms() > until)
            break;
        journal_durable(J);
        sleep_ms(100);
    }
    cr_assert_eq(pg_count(q_done), 0, "finished transactions were not collected");
    /* t1's COMMIT, t3's ABORT, and the 'ends' row naming both. */
    cr_assert_eq(st.gc_deleted, 3);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal WHERE kind = 'ends'"), 0);
    cr_assert_eq(pg_count(q_open), 1, "an unfinished transaction was collected");
    journal_close(&J, WAIT_MS);
}

/* Appends r (forced or not) in a turn of its own and waits until durable. */
static void append_durable(struct journal *j, const struct journal_rec *r, bool force)
{
    uint64_t s = journal_append(j, r, force);
    journal_flush(j);
    cr_assert(wait_durable(j, s, WAIT_MS));
}

/* Records of kind (treaty_records' name) stored for txid. */
static long long count_records(const uint8_t id[16], const char *kind)
{
    char q[256], s[37];
    txid_sql(id, s);
    snprintf(q, sizeof q, "SELECT count(*) FROM treaty_records WHERE txid = '%s' AND kind = '%s'", s, kind);
    return pg_count(q);
}

static uint64_t reconnects(struct journal *j)
{
    struct journal_stats st;
    journal_get_stats(j, &st);
    return st.reconnects;
}

/* ------------------------------------------------------ the owner lock */

#define OWNER_LOCK "pg_advisory_lock(1414677825, 2)"

struct connect_scan {
    struct journal_config cfg;
    struct journal *j;
    struct seen_list seen;
    int rc;
    atomic_bool done;
};

static void *connect_and_scan(void *p)
{
    struct connect_scan *a = p;
    char err[256];
    a->rc = journal_connect(&a->cfg, &a->j, err, sizeof err);
    if (a->rc == 0)
        a->rc = journal_scan(a->j, collect, &a->seen);
    atomic_store(&a->done, true);
    return NULL;
}

/* A coordinator killed while its COMMIT is on the way: its PostgreSQL
 * backend finishes that commit after the process is gone. The next
 * incarnation's scan must see the record, or it would abort the transaction
 * while the journal says committed. The test plays the dead coordinator's
 * backend with a session holding the owner lock and an open transaction. */
Test(journal, scan_waits_for_a_dead_coordinators_commit_still_in_flight)
{
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, false); /* the schema */
    journal_close(&J, WAIT_MS);

    uint8_t tx[16];
    new_txid(tx);
    char uuid[37], sql[512];
    txid_sql(tx, uuid);
    PGconn *dead = pg_open(db_conninfo);
    PQclear(pg_must(dead, "SELECT " OWNER_LOCK));
    PQclear(pg_must(dead, "BEGIN"));
    snprintf(sql, sizeof sql,
             "INSERT INTO treaty_journal (txid, kind, services) VALUES ('%s', 'commit', ARRAY['svc-a','svc-b'])", uuid);
    PQclear(pg_must(dead, sql));

    struct connect_scan a = {.cfg = test_cfg()};
    atomic_init(&a.done, false);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, connect_and_scan, &a), 0);
    sleep_ms(500);
    cr_expect(!atomic_load(&a.done), "the scan ran while the previous owner's session was still there");
    PQclear(pg_must(dead, "COMMIT"));
    PQfinish(dead);
    pthread_join(th, NULL);
    cr_assert_eq(a.rc, 0, "%s", treaty_err_name(a.rc));
    J = a.j;
    size_t found = 0;
    for (size_t i = 0; i < a.seen.n; i++)
        if (memcmp(a.seen.v[i].txid, tx, 16) == 0 && a.seen.v[i].kind == JOURNAL_COMMIT)
            found++;
    cr_assert_eq(found, 1, "the scan missed the COMMIT the dead coordinator's backend committed late (%zu records)",
                 a.seen.n);
    seen_list_free(&a.seen);
    journal_close(&J, WAIT_MS);
}

Test(journal, second_coordinator_waits_while_the_first_holds_the_journal)
{
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    volatile int stop = 0;
    struct journal_config cfg2 = test_cfg();
    cfg2.stop = &stop;
    struct stopper s = {.flag = &stop, .after_ms = 500};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, stop_later, &s), 0);
    char err[256];
    int rc = journal_connect(&cfg2, &J2, err, sizeof err);
    pthread_join(th, NULL);
    cr_assert_eq(rc, TREATY_EBUSY, "a second coordinator got the journal: %s", treaty_err_name(rc));
    cr_assert_null(J2);

    /* Once the first is gone, the next one gets it. */
    journal_close(&J, WAIT_MS);
    J2 = open_journal(&cfg, true);
    journal_close(&J2, WAIT_MS);
}

/* PostgreSQL drops the writer's connection; before it reconnects another
 * coordinator takes the journal. The first must write nothing more. */
Test(journal, writer_that_finds_the_journal_taken_is_deposed_and_writes_nothing)
{
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    uint8_t a[16], b[16];
    new_txid(a);
    new_txid(b);
    struct journal_rec r = rec(a, JOURNAL_COMMIT, NULL);
    append_durable(J, &r, true);
    cr_assert(!journal_deposed(J));

    PGconn *other = pg_open(db_conninfo);
    PQclear(pg_must(other, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND application_name = 'treatyd-journal'"));
    PQclear(pg_must(other, "SELECT " OWNER_LOCK)); /* waits until the terminated backend has gone */

    r = rec(b, JOURNAL_COMMIT, NULL);
    uint64_t seq = journal_append(J, &r, true);
    journal_flush(J);
    int64_t until = mono_ms() + WAIT_MS;
    while (!journal_deposed(J) && mono_ms() < until) {
        zmq_pollitem_t it = {.socket = journal_socket(J), .events = ZMQ_POLLIN};
        zmq_poll(&it, 1, 100);
        journal_durable(J);
    }
    cr_assert(journal_deposed(J), "the writer did not notice the journal was taken");
    cr_assert(!journal_healthy(J));
    cr_assert_lt(journal_durable(J), seq, "a record was reported durable after the journal was taken");
    cr_assert_eq(pg_count_txid("SELECT count(*) FROM treaty_records WHERE txid = 'TXID'", b), 0);
    journal_close(&J, 0);
    PQfinish(other);
}

Test(journal, group_whose_acknowledgement_is_lost_is_stored_once)
{
    /* The connection breaks after Postgres committed the group and before the
     * writer read the answer (journal_fault_lose_acks): the writer cannot
     * know the group landed and writes it again. One record per decision. */
    log_set_level(LOG_LEVEL_ERROR);
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    uint8_t x[16], y[16], z[16];
    new_txid(x);
    new_txid(y);
    new_txid(z);
    struct journal_rec r = rec(y, JOURNAL_COMMIT, NULL);
    journal_append(J, &r, true);
    r = rec(z, JOURNAL_COMMIT, NULL);
    append_durable(J, &r, true);
    cr_assert_eq(reconnects(J), 0);

    /* As seen in production: a forced group of one COMMIT and two ENDs. */
    cr_assert_eq(journal_fault_lose_acks(J, 1), 0, "this build has no fault points (make RELEASE=1?)");
    r = rec(x, JOURNAL_COMMIT, NULL);
    journal_append(J, &r, true);
    r = rec(y, JOURNAL_END, NULL);
    journal_append(J, &r, false);
    r = rec(z, JOURNAL_END, NULL);
    append_durable(J, &r, false);
    cr_assert_eq(reconnects(J), 1, "the fault point did not break the connection");

    /* A lazy group of ENDs only: its first row is an 'ends' row. */
    cr_assert_eq(journal_fault_lose_acks(J, 1), 0);
    r = rec(x, JOURNAL_END, NULL);
    append_durable(J, &r, false);
    cr_assert_eq(reconnects(J), 2, "the fault point did not break the connection");
    journal_close(&J, WAIT_MS);

    const uint8_t *ids[] = {x, y, z};
    for (int i = 0; i < 3; i++) {
        cr_expect_eq(count_records(ids[i], "commit"), 1, "txid %d: %lld COMMIT records", i,
                     count_records(ids[i], "commit"));
        cr_expect_eq(count_records(ids[i], "end"), 1, "txid %d: %lld END records", i, count_records(ids[i], "end"));
    }
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_records"), 6);
}

Test(journal, ends_of_a_group_are_one_row_per_detail_and_scan_back_one_by_one)
{
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    enum { N = 4, X = 10 };
    uint8_t t[N][16], x[X][16];
    struct journal_rec r;
    uint64_t last = 0;
    for (int i = 0; i < N; i++) {
        new_txid(t[i]);
        r = rec(t[i], JOURNAL_COMMIT, NULL);
        journal_append(J, &r, true);
    }
    /* In the same group as their decisions: the END rows still come after.
     * The last is a saga's END: a row of its own. */
    for (int i = 0; i < N; i++) {
        r = rec(t[i], JOURNAL_END, i == N - 1 ? "completed" : NULL);
        last = journal_append(J, &r, false);
    }
    /* More details than one group gives rows to: the rest are rows of their
     * own, kind 'end'. */
    char details[X][8];
    for (int i = 0; i < X; i++) {
        new_txid(x[i]);
        snprintf(details[i], sizeof details[i], "d%d", i);
        r = rec(x[i], JOURNAL_ABORT, NULL);
        journal_append(J, &r, false);
        r = rec(x[i], JOURNAL_END, details[i]);
        last = journal_append(J, &r, false);
    }
    journal_flush(J);
    cr_assert(wait_durable(J, last, WAIT_MS));
    journal_close(&J, WAIT_MS);

    /* 4 COMMITs, 10 ABORTs; 'ends' rows for NULL (3 txids), d0..d6; the
     * saga's "completed" END, d7, d8 and d9 as 'end' rows. */
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal"), N + X + 8 + 4);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal WHERE kind = 'ends' AND detail IS NULL "
                          "AND cardinality(ended) = 3"),
                 1);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal WHERE kind = 'ends' AND detail = 'completed'"), 0);
    cr_assert_eq(pg_count_txid("SELECT count(*) FROM treaty_journal WHERE kind = 'end' AND detail = 'completed' "
                               "AND txid = 'TXID' AND ended IS NULL",
                               t[N - 1]),
                 1);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal WHERE kind = 'end'"), 4);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal WHERE kind = 'ends' AND seq < "
                          "(SELECT max(seq) FROM treaty_journal WHERE kind IN ('commit', 'abort'))"),
                 0);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_records WHERE kind = 'end'"), N + X);

    /* One by one in treaty_records, each END after its decision. */
    for (int i = 0; i < N + X; i++) {
        const uint8_t *id = i < N ? t[i] : x[i - N];
        char q[512], want[64];
        snprintf(want, sizeof want, "%s", i < N - 1 ? "" : i == N - 1 ? "completed" : details[i - N]);
        with_txid("SELECT count(*) FROM treaty_records d, treaty_records e "
                  " WHERE d.txid = 'TXID' AND e.txid = d.txid AND d.kind IN ('commit', 'abort') "
                  "   AND e.kind = 'end' AND e.seq > d.seq AND coalesce(e.detail, '') = '",
                  id, q, sizeof q);
        strncat(q, want, sizeof q - strlen(q) - 2);
        strcat(q, "'");
        cr_assert_eq(pg_count(q), 1, "transaction %d", i);
    }

    /* All finished: the scan has nothing to deliver. */
    J = open_journal(&cfg, false);
    struct seen_list l = {0};
    cr_assert_eq(journal_scan(J, collect, &l), 0);
    cr_assert_eq(l.n, 0, "scan returned %zu records", l.n);
    seen_list_free(&l);
    journal_close(&J, 0);
}

Test(journal, scan_and_collector_handle_batched_and_single_end_rows_alike)
{
    struct journal_config cfg = test_cfg();
    cfg.retention_s = 60;
    cfg.gc_interval_ms = 100;
    J = open_journal(&cfg, true);
    uint8_t a[16], b[16], c[16];
    new_txid(a);
    new_txid(b);
    new_txid(c);
    char ida[37], idb[37], idc[37], sql[1024];
    txid_sql(a, ida);
    txid_sql(b, idb);
    txid_sql(c, idc);

    /* a: COMMIT and END; later its END again (as after a recovery that
     * re-drove it), with b's COMMIT and END. c: a version-2 'end' row. */
    struct journal_rec r = rec(a, JOURNAL_COMMIT, NULL);
    journal_append(J, &r, true);
    r = rec(a, JOURNAL_END, NULL);
    append_durable(J, &r, false);
    r = rec(b, JOURNAL_COMMIT, NULL);
    journal_append(J, &r, true);
    r = rec(a, JOURNAL_END, NULL);
    journal_append(J, &r, false);
    r = rec(b, JOURNAL_END, NULL);
    append_durable(J, &r, false);
    r = rec(c, JOURNAL_COMMIT, NULL);
    append_durable(J, &r, true);
    snprintf(sql, sizeof sql, "INSERT INTO treaty_journal (txid, kind) VALUES ('%s', 'end')", idc);
    pg_run(db_conninfo, sql);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal WHERE kind = 'ends'"), 2);

    /* a's first END and c's finished two hours ago; b's and a's second are
     * recent. */
    snprintf(sql, sizeof sql,
             "UPDATE treaty_journal SET written_at = now() - interval '2 hours' "
             " WHERE txid IN ('%s', '%s') OR (kind = 'ends' AND NOT '%s' = ANY(ended))",
             ida, idc, idb);
    pg_run(db_conninfo, sql);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM treaty_journal WHERE txid IN ('%s', '%s')", ida, idc);
    int64_t until = mono_ms() + WAIT_MS;
    while (pg_count(sql) > 0 && mono_ms() < until) {
        journal_durable(J);
        sleep_ms(100);
    }
    cr_assert_eq(pg_count(sql), 0, "a and c were not collected");
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal WHERE kind = 'ends'"), 1, "the old 'ends' row stayed");
    journal_close(&J, WAIT_MS);

    /* The recent 'ends' row still names a: its END alone is not a
     * transaction. b is finished. Nothing to scan. */
    J = open_journal(&cfg, false);
    struct seen_list l = {0};
    cr_assert_eq(journal_scan(J, collect, &l), 0);
    cr_assert_eq(l.n, 0, "scan returned %zu records", l.n);
    seen_list_free(&l);
    journal_close(&J, 0);
}

/* A saga record of txid id (SAGA with a one-byte definition, or STEP). */
static struct journal_rec saga_rec(const uint8_t id[16], enum journal_kind kind, int step)
{
    static const unsigned char def[1] = {7};
    struct journal_rec r = {.kind = kind, .failed_branch = -1, .step = -1};
    memcpy(r.txid, id, 16);
    if (kind == JOURNAL_SAGA) {
        r.nservices = 2;
        r.services = svc_ab;
        r.data = def;
        r.data_len = sizeof def;
    } else if (kind == JOURNAL_STEP) {
        r.step = step;
        r.detail = "action";
    }
    return r;
}

/*
 * Three txids, each with a first run that finished two hours ago and a
 * second run, started after it, that has not finished:
 *   a: COMMIT + END (in an 'ends' row), then SAGA + STEP
 *   b: SAGA + STEP + END "completed", then SAGA
 *   c: COMMIT + a version-2 'end' row, then COMMIT
 * and d, finished two hours ago with nothing after. Returns the highest seq
 * of the first runs (every row up to it is aged).
 */
static long long write_old_and_new_runs(struct journal *j, uint8_t a[16], uint8_t b[16], uint8_t c[16], uint8_t d[16])
{
    new_txid(a);
    new_txid(b);
    new_txid(c);
    new_txid(d);
    struct journal_rec r = rec(a, JOURNAL_COMMIT, NULL);
    journal_append(j, &r, true);
    r = rec(c, JOURNAL_COMMIT, NULL);
    journal_append(j, &r, true);
    r = rec(d, JOURNAL_COMMIT, NULL);
    journal_append(j, &r, true);
    r = saga_rec(b, JOURNAL_SAGA, -1);
    append_durable(j, &r, true);
    r = saga_rec(b, JOURNAL_STEP, 0);
    journal_append(j, &r, false);
    r = rec(b, JOURNAL_END, "completed");
    journal_append(j, &r, false);
    r = rec(a, JOURNAL_END, NULL);
    journal_append(j, &r, false);
    r = rec(d, JOURNAL_END, NULL);
    append_durable(j, &r, false);
    pg_run_txid("INSERT INTO treaty_journal (txid, kind) VALUES ('TXID', 'end')", c);
    long long old = pg_count("SELECT max(seq) FROM treaty_journal");
    char sql[256];
    snprintf(sql, sizeof sql, "UPDATE treaty_journal SET written_at = now() - interval '2 hours' WHERE seq <= %lld",
             old);
    pg_run(db_conninfo, sql);

    r = saga_rec(a, JOURNAL_SAGA, -1);
    journal_append(j, &r, true);
    r = saga_rec(b, JOURNAL_SAGA, -1);
    journal_append(j, &r, true);
    r = rec(c, JOURNAL_COMMIT, NULL);
    append_durable(j, &r, true);
    r = saga_rec(a, JOURNAL_STEP, 0);
    append_durable(j, &r, false);
    return old;
}

Test(journal, collector_leaves_the_newer_run_of_a_txid_whose_older_run_ended_long_ago)
{
    struct journal_config cfg = test_cfg();
    cfg.retention_s = 60;
    cfg.gc_interval_ms = 100;
    J = open_journal(&cfg, true);
    uint8_t a[16], b[16], c[16], d[16];
    long long old = write_old_and_new_runs(J, a, b, c, d);

    /* Every END older than retention is collected in the round that deletes
     * its records: wait for that. */
    int64_t until = mono_ms() + WAIT_MS;
    while (pg_count("SELECT count(*) FROM treaty_journal WHERE kind IN ('end', 'ends') "
                    "AND written_at < now() - interval '1 hour'") > 0 &&
           mono_ms() < until) {
        journal_durable(J);
        sleep_ms(50);
    }
    journal_close(&J, WAIT_MS);
    char q[128];
    snprintf(q, sizeof q, "SELECT count(*) FROM treaty_journal WHERE seq <= %lld", old);
    cr_assert_eq(pg_count(q), 0, "the finished first runs were not collected");
    /* The second runs are whole. */
    cr_expect_eq(pg_count_txid("SELECT count(*) FROM treaty_journal WHERE txid = 'TXID'", a), 2,
                 "a's second run (SAGA, STEP) was collected");
    cr_expect_eq(pg_count_txid("SELECT count(*) FROM treaty_journal WHERE txid = 'TXID' AND kind = 'saga'", b), 1,
                 "b's second run (SAGA) was collected");
    cr_expect_eq(pg_count_txid("SELECT count(*) FROM treaty_journal WHERE txid = 'TXID' AND kind = 'commit'", c), 1,
                 "c's second run (COMMIT) was collected");
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal"), 4);
}

Test(journal, scan_delivers_only_the_unfinished_newer_run_of_a_txid)
{
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    uint8_t a[16], b[16], c[16], d[16], e[16];
    write_old_and_new_runs(J, a, b, c, d);
    /* e: a first run finished two hours ago, a second finished just now. */
    new_txid(e);
    struct journal_rec r = rec(e, JOURNAL_ABORT, "first");
    append_durable(J, &r, true);
    r = rec(e, JOURNAL_END, NULL);
    append_durable(J, &r, false);
    pg_run_txid("UPDATE treaty_journal SET written_at = now() - interval '2 hours' "
                " WHERE txid = 'TXID' OR ended @> ARRAY['TXID'::uuid]",
                e);
    r = rec(e, JOURNAL_COMMIT, "second");
    append_durable(J, &r, true);
    r = rec(e, JOURNAL_END, NULL);
    append_durable(J, &r, false);
    journal_close(&J, WAIT_MS);

    J = open_journal(&cfg, false);
    struct seen_list l = {0};
    cr_assert_eq(journal_scan(J, collect, &l), 0);
    size_t ia = 0, ib = 0, ic = 0;
    /* a: the SAGA and STEP of the second run, not the first run's COMMIT. */
    cr_assert_eq(seen_count(&l, a, &ia), 2);
    cr_assert_eq(l.v[ia].kind, JOURNAL_SAGA);
    cr_assert_eq(l.v[ia + 1].kind, JOURNAL_STEP);
    /* b: the second SAGA alone. */
    cr_assert_eq(seen_count(&l, b, &ib), 1);
    cr_assert_eq(l.v[ib].kind, JOURNAL_SAGA);
    /* c: the second COMMIT alone. */
    cr_assert_eq(seen_count(&l, c, &ic), 1);
    cr_assert_eq(l.v[ic].kind, JOURNAL_COMMIT);
    cr_assert_eq(seen_count(&l, d, NULL), 0);
    cr_assert_eq(seen_count(&l, e, NULL), 0, "a txid whose every run finished came back");
    cr_assert_eq(l.n, 4);
    for (size_t k = 0; k < l.n; k++)
        cr_assert_eq(l.v[k].fin, 0);
    seen_list_free(&l);
    journal_close(&J, 0);
}

Test(journal, scan_tolerates_records_stored_twice_by_older_versions)
{
    /* What a version-3 writer left after rewriting groups whose
     * acknowledgement was lost. */
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, false);
    journal_close(&J, 0);
    uint8_t x[16], y[16], z[16];
    new_txid(x);
    new_txid(y);
    new_txid(z);
    /* x: its COMMIT twice, unfinished. */
    pg_run_txid("INSERT INTO treaty_journal (txid, kind, services) VALUES "
                "('TXID', 'commit', ARRAY['svc-a']), ('TXID', 'commit', ARRAY['svc-a'])",
                x);
    /* y: COMMIT, its END named twice (two 'ends' rows). */
    pg_run_txid("INSERT INTO treaty_journal (txid, kind, services) VALUES ('TXID', 'commit', ARRAY['svc-a']); "
                "INSERT INTO treaty_journal (kind, ended) VALUES ('ends', ARRAY['TXID'::uuid]); "
                "INSERT INTO treaty_journal (kind, ended) VALUES ('ends', ARRAY['TXID'::uuid])",
                y);
    /* z: a group of its last STEP and END written twice. */
    pg_run_txid("INSERT INTO treaty_journal (txid, kind, services, data) VALUES ('TXID', 'saga', ARRAY['a'], '\\x00'); "
                "INSERT INTO treaty_journal (txid, kind, step, detail) VALUES ('TXID', 'step', 0, 'action'); "
                "INSERT INTO treaty_journal (txid, kind, detail) VALUES ('TXID', 'end', 'completed'); "
                "INSERT INTO treaty_journal (txid, kind, step, detail) VALUES ('TXID', 'step', 0, 'action'); "
                "INSERT INTO treaty_journal (txid, kind, detail) VALUES ('TXID', 'end', 'completed')",
                z);
    J = open_journal(&cfg, false);
    struct seen_list l = {0};
    cr_assert_eq(journal_scan(J, collect, &l), 0);
    size_t ix = 0;
    cr_assert_eq(seen_count(&l, x, &ix), 2, "x's two COMMIT rows");
    cr_assert_eq(l.v[ix].kind, JOURNAL_COMMIT);
    cr_assert_eq(l.v[ix + 1].kind, JOURNAL_COMMIT);
    cr_assert_eq(seen_count(&l, y, NULL), 0);
    cr_assert_eq(seen_count(&l, z, NULL), 0);
    cr_assert_eq(l.n, 2);
    seen_list_free(&l);
    journal_close(&J, 0);
}

/* EXPLAIN's lines as one string (caller frees). */
static char *plan_text(const PGresult *res)
{
    size_t len = 1;
    for (int i = 0; i < PQntuples(res); i++)
        len += strlen(PQgetvalue(res, i, 0)) + 1;
    char *t = malloc(len);
    cr_assert_not_null(t);
    t[0] = '\0';
    for (int i = 0; i < PQntuples(res); i++) {
        strcat(t, PQgetvalue(res, i, 0));
        strcat(t, "\n");
    }
    return t;
}

static int count_unfinished(void *arg, const struct journal_rec *r, long long fin)
{
    size_t *n = arg;
    if (r->kind != JOURNAL_COMMIT || r->nservices != 1 || strcmp(r->services[0], "open") != 0 || fin != 0)
        return -1;
    (*n)++;
    return 0;
}

Test(journal, scan_of_a_large_finished_journal_is_one_hash_anti_join)
{
    /* 500,000 finished 2PC transactions (a COMMIT row each, their ENDs in
     * 'ends' rows of 500, as groups write them) and 10 unfinished ones. */
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, false);
    pg_run(db_conninfo, "CREATE TEMP TABLE t AS SELECT gen_random_uuid() AS txid, g FROM generate_series(1, 500000) g; "
                        "INSERT INTO treaty_journal (txid, kind, services) "
                        "SELECT txid, 'commit', ARRAY['svc-a', 'svc-b'] FROM t ORDER BY g; "
                        "INSERT INTO treaty_journal (kind, ended) "
                        "SELECT 'ends', array_agg(txid ORDER BY g) FROM t GROUP BY g / 500 ORDER BY g / 500; "
                        "INSERT INTO treaty_journal (txid, kind, services) "
                        "SELECT gen_random_uuid(), 'commit', ARRAY['open'] FROM generate_series(1, 10); "
                        "ANALYZE treaty_journal");

    /* The plan journal.c describes: every row read once, into or against
     * one hash of the ENDs; no merge join over the txid index, no nested
     * loop. */
    PGconn *c = pg_open(db_conninfo);
    /* As the scan's cursor runs it: a cursor never uses a parallel plan. */
    PQclear(pg_must(c, "BEGIN READ ONLY; " JOURNAL_SCAN_SETTINGS "; SET LOCAL max_parallel_workers_per_gather = 0"));
    char sql[4096];
    snprintf(sql, sizeof sql, "EXPLAIN %s", journal_scan_sql);
    PGresult *res = pg_must(c, sql);
    char *plan = plan_text(res);
    PQclear(res);
    PQclear(pg_must(c, "ROLLBACK"));
    PQfinish(c);
    cr_assert(strstr(plan, "Hash Anti Join") != NULL, "plan:\n%s", plan);
    cr_assert(strstr(plan, "Nested Loop") == NULL, "plan:\n%s", plan);
    cr_assert(strstr(plan, "Merge") == NULL, "plan:\n%s", plan);
    free(plan);

    size_t n = 0;
    int64_t t0 = mono_ms();
    cr_assert_eq(journal_scan(J, count_unfinished, &n), 0);
    int64_t ms = mono_ms() - t0;
    cr_assert_eq(n, 10);
    fprintf(stderr, "test_journal: scan of 500,000 finished and 10 unfinished transactions took %lld ms\n",
            (long long)ms);
    journal_close(&J, 0);
}

/* ------------------------------------------------------- outcome lookups */

struct answer_list {
    struct journal_lookup_result *v;
    size_t n, cap;
};

static void collect_answer(void *arg, const struct journal_lookup_result *r)
{
    struct answer_list *l = arg;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        cr_assert_not_null(l->v);
    }
    l->v[l->n++] = *r;
}

/* Looks up ids[0..n) in one loop turn and collects n answers, polling
 * journal_socket() as the loop does (journal_durable() on it as well). */
static void lookup_all(struct journal *j, const uint8_t (*ids)[16], size_t n, struct answer_list *out)
{
    size_t before = out->n;
    for (size_t i = 0; i < n; i++)
        journal_lookup(j, ids[i]);
    journal_flush(j);
    int64_t until = mono_ms() + WAIT_MS;
    while (out->n - before < n && mono_ms() < until) {
        zmq_pollitem_t it = {.socket = journal_socket(j), .events = ZMQ_POLLIN};
        zmq_poll(&it, 1, 100);
        journal_durable(j);
        journal_lookup_results(j, collect_answer, out);
    }
    cr_assert_eq(out->n - before, n, "%zu answers of %zu", out->n - before, n);
}

static struct journal_lookup_result lookup_one(struct journal *j, const uint8_t id[16])
{
    struct answer_list l = {0};
    lookup_all(j, (const uint8_t(*)[16])id, 1, &l);
    struct journal_lookup_result r = l.v[0];
    free(l.v);
    cr_assert_arr_eq(r.txid, id, 16);
    return r;
}

static const char *outcome_name(enum journal_outcome o)
{
    static const char *const names[] = {"NONE", "COMMITTED", "ABORTED", "COMPLETED", "COMPENSATED", "UNFINISHED"};
    return (unsigned)o < sizeof names / sizeof names[0] ? names[o] : "?";
}

/* Asserts id's outcome, failed_branch and detail. */
#define expect_outcome(j, id, want, fb, det)                                                                           \
    do {                                                                                                               \
        struct journal_lookup_result r_ = lookup_one(j, id);                                                           \
        cr_assert_eq(r_.error, 0, "lookup failed: %s", treaty_err_name(r_.error));                                     \
        cr_assert_eq(r_.outcome, want, "%s: outcome %s, want %s", #id, outcome_name(r_.outcome), outcome_name(want));  \
        cr_assert_eq(r_.failed_branch, fb, "%s: failed_branch %d, want %d", #id, r_.failed_branch, fb);                \
        cr_assert_str_eq(r_.detail, det, "%s: detail", #id);                                                           \
    } while (0)

/* A txid whose UUIDv7 time is ms (the rest of it from a fresh txid). */
static void txid_made_at(uint8_t id[16], int64_t ms)
{
    new_txid(id);
    for (int i = 0; i < 6; i++)
        id[i] = (uint8_t)((uint64_t)ms >> (40 - 8 * i));
}

Test(journal, newest_txid_is_the_latest_made_up_to_the_bound)
{
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, false);
    int64_t newest = 0;
    cr_assert_eq(journal_newest_txid(J, 2000000000000LL, &newest), 0);
    cr_assert_eq(newest, -1, "an empty journal has no newest txid, got %lld", (long long)newest);
    journal_close(&J, WAIT_MS);

    /* Three runs made at t, t + 5 s and t + 60 s; the bound is t + 10 s. */
    const int64_t t = 1900000000000LL;
    uint8_t a[16], b[16], later[16];
    txid_made_at(a, t);
    txid_made_at(b, t + 5000);
    txid_made_at(later, t + 60000);
    J = open_journal(&cfg, true);
    struct journal_rec r = rec(a, JOURNAL_COMMIT, NULL);
    journal_append(J, &r, true);
    r = rec(later, JOURNAL_ABORT, NULL);
    journal_append(J, &r, true);
    r = rec(b, JOURNAL_COMMIT, NULL);
    append_durable(J, &r, true);
    r = rec(b, JOURNAL_END, NULL);
    append_durable(J, &r, false);
    journal_close(&J, WAIT_MS);

    J = open_journal(&cfg, false);
    cr_assert_eq(journal_newest_txid(J, t + 10000, &newest), 0);
    cr_assert_eq(newest, t + 5000, "newest below t + 10 s: %lld, want %lld (ended runs count too)", (long long)newest,
                 (long long)(t + 5000));
    cr_assert_eq(journal_newest_txid(J, t + 5000, &newest), 0);
    cr_assert_eq(newest, t + 5000, "the bound is inclusive");
    cr_assert_eq(journal_newest_txid(J, t + 4999, &newest), 0);
    cr_assert_eq(newest, t);
    cr_assert_eq(journal_newest_txid(J, t - 1, &newest), 0);
    cr_assert_eq(newest, -1);
    cr_assert_eq(journal_newest_txid(J, t + 3600000, &newest), 0);
    cr_assert_eq(newest, t + 60000);
    cr_assert_eq(journal_newest_txid(J, -1, &newest), TREATY_EINVAL);
    cr_assert_eq(journal_start(J, zctx), 0);
    cr_assert_eq(journal_newest_txid(J, t, &newest), TREATY_ESTATE, "after journal_start");
    journal_close(&J, WAIT_MS);
}

Test(journal, lookup_outcomes_of_2pc_transactions)
{
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    uint8_t committed[16], committed_open[16], aborted[16], unknown[16];
    new_txid(committed);
    new_txid(committed_open);
    new_txid(aborted);
    new_txid(unknown);
    struct journal_rec r = rec(committed, JOURNAL_COMMIT, "a reason a COMMIT does not show");
    journal_append(J, &r, true);
    r = rec(committed_open, JOURNAL_COMMIT, NULL);
    journal_append(J, &r, true);
    r = rec(aborted, JOURNAL_ABORT, "svc-b voted no: out of stock");
    r.failed_branch = 1;
    append_durable(J, &r, true);
    r = rec(committed, JOURNAL_END, NULL);
    journal_append(J, &r, false);
    r = rec(aborted, JOURNAL_END, NULL);
    append_durable(J, &r, false);

    expect_outcome(J, committed, JOURNAL_OUTCOME_COMMITTED, -1, "");
    expect_outcome(J, committed_open, JOURNAL_OUTCOME_COMMITTED, -1, "");
    expect_outcome(J, aborted, JOURNAL_OUTCOME_ABORTED, 1, "svc-b voted no: out of stock");
    expect_outcome(J, unknown, JOURNAL_OUTCOME_NONE, -1, "");
    journal_close(&J, WAIT_MS);
}

Test(journal, lookup_outcomes_of_sagas)
{
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    uint8_t completed[16], compensated[16], running[16], turning[16], old_format[16];
    new_txid(completed);
    new_txid(compensated);
    new_txid(running);
    new_txid(turning);
    new_txid(old_format);
    const uint8_t *all[] = {completed, compensated, running, turning, old_format};
    for (int i = 0; i < 5; i++) {
        struct journal_rec r = saga_rec(all[i], JOURNAL_SAGA, -1);
        journal_append(J, &r, true);
        r = saga_rec(all[i], JOURNAL_STEP, 0);
        journal_append(J, &r, false);
    }
    journal_flush(J);
    struct journal_rec r = {.kind = JOURNAL_TURN, .failed_branch = 1, .step = -1, .detail = "svc-b: no stock"};
    memcpy(r.txid, compensated, 16);
    journal_append(J, &r, true);
    r.detail = "svc-b: still no stock";
    memcpy(r.txid, turning, 16);
    append_durable(J, &r, true);
    r = rec(completed, JOURNAL_END, "completed");
    journal_append(J, &r, true);
    r = rec(compensated, JOURNAL_END, "compensated");
    append_durable(J, &r, true);
    /* A saga a version-3 writer ended: its END in an 'ends' row. */
    pg_run_txid("INSERT INTO treaty_journal (kind, detail, ended) VALUES ('ends', 'completed', ARRAY['TXID'::uuid])",
                old_format);

    expect_outcome(J, completed, JOURNAL_OUTCOME_COMPLETED, -1, "");
    expect_outcome(J, compensated, JOURNAL_OUTCOME_COMPENSATED, 1, "svc-b: no stock");
    expect_outcome(J, running, JOURNAL_OUTCOME_UNFINISHED, -1, "");
    expect_outcome(J, turning, JOURNAL_OUTCOME_UNFINISHED, 1, "svc-b: still no stock");
    expect_outcome(J, old_format, JOURNAL_OUTCOME_COMPLETED, -1, "");
    journal_close(&J, WAIT_MS);
}

/* An operator's audit record of txid id (kind AUDIT). */
static struct journal_rec audit_rec(const uint8_t id[16], int step, const char *detail)
{
    struct journal_rec r = {.kind = JOURNAL_AUDIT, .failed_branch = -1, .step = step, .detail = detail};
    memcpy(r.txid, id, 16);
    return r;
}

/*
 * Audit records as a resolve writes them - right before the ABORT, TURN or
 * STEP that carries it out - never change what the journal says: the
 * lookups pass over them (an aborted 2PC is aborted, a saga turned around by
 * an operator is unfinished, then compensated), the scan delivers an
 * unfinished run's audit with its step, and no finished run's.
 */
Test(journal, audit_records_decide_nothing_for_lookups_and_scan)
{
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    uint8_t aborted[16], turned[16], given_up[16], only_audit[16];
    new_txid(aborted);
    new_txid(turned);
    new_txid(given_up);
    new_txid(only_audit);

    /* A 2PC aborted by an operator, then finished. */
    struct journal_rec r = audit_rec(aborted, -1, "abort by uid 0 (root): customer called");
    journal_append(J, &r, true);
    r = rec(aborted, JOURNAL_ABORT, "aborted by an operator: customer called");
    r.failed_branch = -1;
    journal_append(J, &r, true);
    /* A saga an operator turned around, still compensating. */
    r = saga_rec(turned, JOURNAL_SAGA, -1);
    journal_append(J, &r, true);
    r = audit_rec(turned, -1, "abort by uid 0 (root): stop it");
    journal_append(J, &r, true);
    r = (struct journal_rec){.kind = JOURNAL_TURN, .failed_branch = -1, .step = -1, .detail = "turned by an operator"};
    memcpy(r.txid, turned, 16);
    journal_append(J, &r, true);
    /* A saga whose stuck compensation of step 1 was given up, then ended. */
    r = saga_rec(given_up, JOURNAL_SAGA, -1);
    journal_append(J, &r, true);
    r = (struct journal_rec){.kind = JOURNAL_TURN, .failed_branch = 1, .step = -1, .detail = "no stock"};
    memcpy(r.txid, given_up, 16);
    journal_append(J, &r, true);
    r = audit_rec(given_up, 1, "compensated by uid 0 (root): fixed by hand");
    journal_append(J, &r, true);
    r = (struct journal_rec){.kind = JOURNAL_STEP, .failed_branch = -1, .step = 1, .detail = "compensation"};
    memcpy(r.txid, given_up, 16);
    append_durable(J, &r, true);
    r = rec(given_up, JOURNAL_END, "compensated");
    journal_append(J, &r, true);
    r = rec(aborted, JOURNAL_END, NULL);
    journal_append(J, &r, false);
    /* An audit record alone (never written so by treatyd; a guard). */
    r = audit_rec(only_audit, -1, "abort by uid 0 (root): x");
    append_durable(J, &r, true);

    expect_outcome(J, aborted, JOURNAL_OUTCOME_ABORTED, -1, "aborted by an operator: customer called");
    expect_outcome(J, turned, JOURNAL_OUTCOME_UNFINISHED, -1, "turned by an operator");
    expect_outcome(J, given_up, JOURNAL_OUTCOME_COMPENSATED, 1, "no stock");
    expect_outcome(J, only_audit, JOURNAL_OUTCOME_NONE, -1, "");
    cr_assert_eq(count_records(aborted, "audit"), 1);
    cr_assert_eq(pg_count_txid("SELECT count(*) FROM treaty_journal WHERE txid = 'TXID' AND kind = 'audit' AND "
                               "step = 1 AND detail = 'compensated by uid 0 (root): fixed by hand'",
                               given_up),
                 1);
    journal_close(&J, WAIT_MS);

    /* Recovery reads the unfinished runs: the turned saga, audit included
     * (recovery passes over it); nothing of the two that ended. */
    J = open_journal(&cfg, false);
    struct seen_list l = {0};
    cr_assert_eq(journal_scan(J, collect, &l), 0);
    size_t first = 0;
    cr_assert_eq(seen_count(&l, aborted, NULL), 0);
    cr_assert_eq(seen_count(&l, given_up, NULL), 0);
    cr_assert_eq(seen_count(&l, turned, &first), 3);
    cr_assert_eq(l.v[first].kind, JOURNAL_SAGA);
    cr_assert_eq(l.v[first + 1].kind, JOURNAL_AUDIT);
    cr_assert_str_eq(l.v[first + 1].detail, "abort by uid 0 (root): stop it");
    cr_assert_eq(l.v[first + 1].step, -1);
    cr_assert_eq(l.v[first + 2].kind, JOURNAL_TURN);
    seen_list_free(&l);
    journal_close(&J, 0);
}

Test(journal, collector_deletes_audit_records_with_their_run)
{
    struct journal_config cfg = test_cfg();
    cfg.retention_s = 1;
    cfg.gc_interval_ms = 100;
    J = open_journal(&cfg, true);
    uint8_t done[16], open_[16];
    new_txid(done);
    new_txid(open_);
    struct journal_rec r = audit_rec(done, -1, "abort by uid 0 (root): old");
    journal_append(J, &r, true);
    r = rec(done, JOURNAL_ABORT, "aborted by an operator: old");
    journal_append(J, &r, true);
    r = rec(done, JOURNAL_END, NULL);
    journal_append(J, &r, false);
    r = saga_rec(open_, JOURNAL_SAGA, -1);
    journal_append(J, &r, true);
    r = audit_rec(open_, -1, "abort by uid 0 (root): running");
    journal_append(J, &r, true);
    r = (struct journal_rec){.kind = JOURNAL_TURN, .failed_branch = -1, .step = -1, .detail = "turned"};
    memcpy(r.txid, open_, 16);
    append_durable(J, &r, true);
    pg_run(db_conninfo, "UPDATE treaty_journal SET written_at = now() - interval '1 hour'");

    int64_t until = mono_ms() + WAIT_MS;
    while (pg_count_txid("SELECT count(*) FROM treaty_journal WHERE txid = 'TXID'", done) > 0 && mono_ms() < until) {
        journal_durable(J);
        sleep_ms(100);
    }
    cr_assert_eq(pg_count_txid("SELECT count(*) FROM treaty_journal WHERE txid = 'TXID'", done), 0,
                 "the finished run, its audit record included, was not collected");
    cr_assert_eq(count_records(open_, "audit"), 1, "an unfinished run's audit record was collected");
    cr_assert_eq(pg_count_txid("SELECT count(*) FROM treaty_journal WHERE txid = 'TXID'", open_), 3);
    journal_close(&J, WAIT_MS);
}

struct records_got {
    struct journal_records *r;
    int n;
};

static void records_cb(void *arg, const struct journal_records *r)
{
    struct records_got *g = arg;
    g->n++;
    if (g->r == NULL) {
        g->r = malloc(sizeof *g->r);
        cr_assert_not_null(g->r);
        *g->r = *r;
    }
}

/* Reads txid's records through journal_read_records, polling
 * journal_socket() as the loop does. Caller frees the answer. */
static struct journal_records *read_records(struct journal *j, const uint8_t id[16], uint64_t token)
{
    struct records_got g = {0};
    journal_read_records(j, id, token);
    journal_flush(j);
    int64_t until = mono_ms() + WAIT_MS;
    while (g.n == 0 && mono_ms() < until) {
        zmq_pollitem_t it = {.socket = journal_socket(j), .events = ZMQ_POLLIN};
        zmq_poll(&it, 1, 100);
        journal_durable(j);
        journal_records_results(j, records_cb, &g);
    }
    cr_assert_eq(g.n, 1, "records of one request: %d answers", g.n);
    cr_assert_arr_eq(g.r->txid, id, 16);
    cr_assert_eq(g.r->token, token);
    return g.r;
}

/*
 * An operator's view of one transaction: every record in seq order with its
 * time, the 2PC END from its group's 'ends' row, audit records with their
 * step; an unknown txid has none; more than JOURNAL_RECORDS_MAX are cut and
 * said to be.
 */
Test(journal, records_of_a_transaction_are_read_in_order_with_their_batched_end)
{
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    uint8_t tx[16], other[16], unknown[16], big[16];
    new_txid(tx);
    new_txid(other);
    new_txid(unknown);
    new_txid(big);
    struct journal_rec r = audit_rec(tx, -1, "abort by uid 1000 (alice): customer called");
    journal_append(J, &r, true);
    r = rec(tx, JOURNAL_ABORT, "aborted by an operator");
    r.failed_branch = 1;
    journal_append(J, &r, true);
    r = rec(other, JOURNAL_COMMIT, NULL);
    append_durable(J, &r, true);
    r = rec(other, JOURNAL_END, NULL);
    journal_append(J, &r, false);
    r = rec(tx, JOURNAL_END, NULL); /* one 'ends' row naming both */
    append_durable(J, &r, false);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal WHERE kind = 'ends'"), 1);
    r = saga_rec(big, JOURNAL_SAGA, -1);
    journal_append(J, &r, true);
    for (int i = 0; i < JOURNAL_RECORDS_MAX + 5; i++) {
        r = saga_rec(big, JOURNAL_STEP, i % 64);
        journal_append(J, &r, false);
    }
    journal_flush(J);

    struct journal_records *a = read_records(J, tx, 7);
    cr_assert_eq(a->error, 0, "%s", treaty_err_name(a->error));
    cr_assert_eq(a->n, 3);
    cr_assert(!a->truncated);
    cr_assert_eq(a->rows[0].kind, JOURNAL_AUDIT);
    cr_assert_str_eq(a->rows[0].detail, "abort by uid 1000 (alice): customer called");
    cr_assert_eq(a->rows[0].step, -1);
    cr_assert_eq(a->rows[1].kind, JOURNAL_ABORT);
    cr_assert_str_eq(a->rows[1].services, "svc-a,svc-b");
    cr_assert_eq(a->rows[1].failed_branch, 1);
    cr_assert_eq(a->rows[2].kind, JOURNAL_END, "the END from the group's 'ends' row");
    cr_assert_str_eq(a->rows[2].services, "");
    cr_assert(a->rows[0].seq < a->rows[1].seq && a->rows[1].seq < a->rows[2].seq);
    long long now_ms = (long long)time(NULL) * 1000;
    for (unsigned i = 0; i < a->n; i++)
        cr_assert(a->rows[i].written_ms > now_ms - 600000 && a->rows[i].written_ms < now_ms + 600000,
                  "row %u written at %lld, now %lld", i, (long long)a->rows[i].written_ms, now_ms);
    free(a);

    a = read_records(J, unknown, 8);
    cr_assert_eq(a->error, 0);
    cr_assert_eq(a->n, 0);
    cr_assert(!a->truncated);
    free(a);

    int64_t until = mono_ms() + WAIT_MS;
    while (pg_count_txid("SELECT count(*) FROM treaty_journal WHERE txid = 'TXID'", big) < JOURNAL_RECORDS_MAX + 6 &&
           mono_ms() < until)
        sleep_ms(50);
    a = read_records(J, big, 9);
    cr_assert_eq(a->error, 0);
    cr_assert_eq(a->n, JOURNAL_RECORDS_MAX);
    cr_assert(a->truncated);
    cr_assert_eq(a->rows[0].kind, JOURNAL_SAGA, "the first records are kept");
    cr_assert_eq(a->rows[1].kind, JOURNAL_STEP);
    cr_assert_eq(a->rows[1].step, 0);
    cr_assert_str_eq(a->rows[1].detail, "action");
    free(a);
    journal_close(&J, WAIT_MS);
}

Test(journal, records_request_answers_epg_when_postgres_is_unreachable)
{
    log_set_level(LOG_LEVEL_ERROR);
    struct journal_config cfg = test_cfg();
    cfg.connect_initial_ms = 60000;
    cfg.connect_max_ms = 60000;
    J = open_journal(&cfg, true);
    uint8_t id[16];
    new_txid(id);
    admin_db("DROP DATABASE", " WITH (FORCE)");
    for (int k = 0; k < 2; k++) {
        struct journal_records *a = read_records(J, id, (uint64_t)k);
        cr_assert_eq(a->error, TREATY_EPG, "request %d: %s", k, treaty_err_name(a->error));
        cr_assert_eq(a->n, 0);
        free(a);
    }
    journal_close(&J, 200);
}

Test(journal, lookup_tolerates_records_stored_twice_by_older_versions)
{
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    uint8_t x[16], y[16], z[16], w[16], v[16];
    new_txid(x);
    new_txid(y);
    new_txid(z);
    new_txid(w);
    new_txid(v);
    /* x: COMMIT twice, its END named twice. */
    pg_run_txid("INSERT INTO treaty_journal (txid, kind, services) VALUES "
                "('TXID', 'commit', ARRAY['a']), ('TXID', 'commit', ARRAY['a']); "
                "INSERT INTO treaty_journal (kind, ended) VALUES ('ends', ARRAY['TXID'::uuid]), "
                "('ends', ARRAY['TXID'::uuid])",
                x);
    /* y: ABORT twice. */
    pg_run_txid("INSERT INTO treaty_journal (txid, kind, failed_branch, detail) VALUES "
                "('TXID', 'abort', 0, 'timeout'), ('TXID', 'abort', 0, 'timeout')",
                y);
    /* z: a turned saga whose last group (STEP, END) was written twice. */
    pg_run_txid("INSERT INTO treaty_journal (txid, kind, services, data) VALUES ('TXID', 'saga', ARRAY['a'], '\\x00'); "
                "INSERT INTO treaty_journal (txid, kind, failed_branch, detail) VALUES ('TXID', 'turn', 2, 'no'); "
                "INSERT INTO treaty_journal (txid, kind, step, detail) VALUES ('TXID', 'step', 0, 'compensation'); "
                "INSERT INTO treaty_journal (txid, kind, detail) VALUES ('TXID', 'end', 'compensated'); "
                "INSERT INTO treaty_journal (txid, kind, step, detail) VALUES ('TXID', 'step', 0, 'compensation'); "
                "INSERT INTO treaty_journal (txid, kind, detail) VALUES ('TXID', 'end', 'compensated')",
                z);
    /* w: a saga END left alone (its records collected); v: a 2PC END alone. */
    pg_run_txid("INSERT INTO treaty_journal (txid, kind, detail) VALUES ('TXID', 'end', 'completed')", w);
    pg_run_txid("INSERT INTO treaty_journal (kind, ended) VALUES ('ends', ARRAY['TXID'::uuid])", v);

    expect_outcome(J, x, JOURNAL_OUTCOME_COMMITTED, -1, "");
    expect_outcome(J, y, JOURNAL_OUTCOME_ABORTED, 0, "timeout");
    expect_outcome(J, z, JOURNAL_OUTCOME_COMPENSATED, 2, "no");
    expect_outcome(J, w, JOURNAL_OUTCOME_COMPLETED, -1, "");
    expect_outcome(J, v, JOURNAL_OUTCOME_NONE, -1, "");
    journal_close(&J, WAIT_MS);
}

Test(journal, lookup_answers_from_the_latest_run_of_a_txid)
{
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    uint8_t a[16], b[16], c[16], d[16];
    new_txid(a);
    new_txid(b);
    new_txid(c);
    new_txid(d);
    /* a: aborted and ended, then committed. */
    struct journal_rec r = rec(a, JOURNAL_ABORT, "first run");
    r.failed_branch = 0;
    append_durable(J, &r, true);
    r = rec(a, JOURNAL_END, NULL);
    append_durable(J, &r, false);
    r = rec(a, JOURNAL_COMMIT, NULL);
    append_durable(J, &r, true);
    /* b: a saga that completed, then runs again. */
    r = saga_rec(b, JOURNAL_SAGA, -1);
    append_durable(J, &r, true);
    r = rec(b, JOURNAL_END, "completed");
    append_durable(J, &r, true);
    r = saga_rec(b, JOURNAL_SAGA, -1);
    append_durable(J, &r, true);
    /* c: committed and ended, then a saga compensated after a turn. */
    r = rec(c, JOURNAL_COMMIT, NULL);
    append_durable(J, &r, true);
    r = rec(c, JOURNAL_END, NULL);
    append_durable(J, &r, false);
    r = saga_rec(c, JOURNAL_SAGA, -1);
    append_durable(J, &r, true);
    r = (struct journal_rec){.kind = JOURNAL_TURN, .failed_branch = 0, .step = -1, .detail = "second run"};
    memcpy(r.txid, c, 16);
    append_durable(J, &r, true);
    r = rec(c, JOURNAL_END, "compensated");
    append_durable(J, &r, true);
    /* d: a saga compensated after a turn, then one that completed: the old
     * turn is not the new run's. */
    r = saga_rec(d, JOURNAL_SAGA, -1);
    append_durable(J, &r, true);
    r = (struct journal_rec){.kind = JOURNAL_TURN, .failed_branch = 1, .step = -1, .detail = "first run"};
    memcpy(r.txid, d, 16);
    append_durable(J, &r, true);
    r = rec(d, JOURNAL_END, "compensated");
    append_durable(J, &r, true);
    r = saga_rec(d, JOURNAL_SAGA, -1);
    append_durable(J, &r, true);
    r = saga_rec(d, JOURNAL_STEP, 0);
    journal_append(J, &r, false);
    r = rec(d, JOURNAL_END, "completed");
    append_durable(J, &r, true);

    expect_outcome(J, a, JOURNAL_OUTCOME_COMMITTED, -1, "");
    expect_outcome(J, b, JOURNAL_OUTCOME_UNFINISHED, -1, "");
    expect_outcome(J, c, JOURNAL_OUTCOME_COMPENSATED, 0, "second run");
    expect_outcome(J, d, JOURNAL_OUTCOME_COMPLETED, -1, "");
    journal_close(&J, WAIT_MS);
}

Test(journal, many_lookups_in_one_turn)
{
    /* More than one query's worth (1000), some asked twice, among appends. */
    enum { N = 2500 };
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    static uint8_t ids[N + 100][16];
    for (int i = 0; i < N; i++) {
        new_txid(ids[i]);
        if (i % 3 == 0) {
            struct journal_rec r = rec(ids[i], JOURNAL_COMMIT, NULL);
            journal_append(J, &r, true);
        } else if (i % 3 == 1) {
            struct journal_rec r = rec(ids[i], JOURNAL_ABORT, "no");
            r.failed_branch = i % 7;
            journal_append(J, &r, true);
        }
    }
    uint64_t last = journal_append(J, &(struct journal_rec){.kind = JOURNAL_STEP, .failed_branch = -1}, false);
    journal_flush(J);
    cr_assert(wait_durable(J, last, WAIT_MS));
    for (int i = 0; i < 100; i++)
        memcpy(ids[N + i], ids[i * 7], 16);

    struct answer_list l = {0};
    lookup_all(J, (const uint8_t(*)[16])ids, N + 100, &l);
    for (size_t k = 0; k < l.n; k++) {
        const struct journal_lookup_result *a = &l.v[k];
        cr_assert_eq(a->error, 0);
        int i = -1;
        for (int m = 0; m < N && i < 0; m++)
            if (memcmp(ids[m], a->txid, 16) == 0)
                i = m;
        cr_assert_geq(i, 0, "an answer for a txid never asked");
        enum journal_outcome want = i % 3 == 0   ? JOURNAL_OUTCOME_COMMITTED
                                    : i % 3 == 1 ? JOURNAL_OUTCOME_ABORTED
                                                 : JOURNAL_OUTCOME_NONE;
        cr_assert_eq(a->outcome, want, "txid %d: %s", i, outcome_name(a->outcome));
        cr_assert_eq(a->failed_branch, i % 3 == 1 ? i % 7 : -1);
    }
    /* Each asked txid is answered as many times as asked. */
    size_t twice = 0;
    for (size_t k = 0; k < l.n; k++)
        for (int i = 0; i < 100; i++)
            twice += memcmp(l.v[k].txid, ids[i * 7], 16) == 0;
    cr_assert_eq(twice, 200);
    free(l.v);
    journal_close(&J, WAIT_MS);
}

Test(journal, lookups_before_start_are_answered_after_it)
{
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    uint8_t id[16];
    new_txid(id);
    struct journal_rec r = rec(id, JOURNAL_COMMIT, NULL);
    append_durable(J, &r, true);
    journal_close(&J, WAIT_MS);

    J = open_journal(&cfg, false);
    journal_lookup(J, id);
    journal_flush(J); /* not started: kept */
    cr_assert_eq(journal_start(J, zctx), 0);
    struct answer_list l = {0};
    int64_t until = mono_ms() + WAIT_MS;
    while (l.n == 0 && mono_ms() < until) {
        zmq_pollitem_t it = {.socket = journal_socket(J), .events = ZMQ_POLLIN};
        zmq_poll(&it, 1, 100);
        journal_lookup_results(J, collect_answer, &l);
    }
    cr_assert_eq(l.n, 1);
    cr_assert_eq(l.v[0].outcome, JOURNAL_OUTCOME_COMMITTED);
    free(l.v);
    /* Closing with lookups unanswered drops them (make asan checks the
     * memory). */
    for (int i = 0; i < 50; i++)
        journal_lookup(J, id);
    journal_flush(J);
    for (int i = 0; i < 50; i++)
        journal_lookup(J, id);
    journal_close(&J, WAIT_MS);
}

Test(journal, lookup_reconnects_after_its_connection_is_lost)
{
    log_set_level(LOG_LEVEL_ERROR);
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    uint8_t id[16];
    new_txid(id);
    struct journal_rec r = rec(id, JOURNAL_COMMIT, NULL);
    append_durable(J, &r, true);
    expect_outcome(J, id, JOURNAL_OUTCOME_COMMITTED, -1, "");
    /* The server ends the lookup connection: the next lookup reconnects at
     * once and is answered. */
    char q[512];
    snprintf(q, sizeof q,
             "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
             " WHERE datname = '%s' AND application_name = 'treatyd-journal-lookup'",
             db_name);
    cr_assert_eq(pg_count(q), 1, "no lookup connection");
    expect_outcome(J, id, JOURNAL_OUTCOME_COMMITTED, -1, "");
    journal_close(&J, WAIT_MS);
}

Test(journal, lookup_answers_epg_when_postgres_is_unreachable)
{
    log_set_level(LOG_LEVEL_ERROR);
    struct journal_config cfg = test_cfg();
    cfg.connect_initial_ms = 60000; /* the second lookup falls in the backoff */
    cfg.connect_max_ms = 60000;
    J = open_journal(&cfg, true);
    uint8_t id[16];
    new_txid(id);
    struct journal_rec r = rec(id, JOURNAL_COMMIT, NULL);
    append_durable(J, &r, true);
    expect_outcome(J, id, JOURNAL_OUTCOME_COMMITTED, -1, "");

    /* The database disappears: its connections are ended, and no new one
     * can be made. */
    admin_db("DROP DATABASE", " WITH (FORCE)");
    for (int k = 0; k < 2; k++) {
        int64_t t0 = mono_ms();
        struct journal_lookup_result a = lookup_one(J, id);
        cr_assert_eq(a.error, TREATY_EPG, "lookup %d: error %s, outcome %s", k, treaty_err_name(a.error),
                     outcome_name(a.outcome));
        cr_log_info("lookup %d without a database: answered in %lld ms", k, (long long)(mono_ms() - t0));
    }
    journal_close(&J, 200);
}

Test(journal, lookup_answers_epg_when_postgres_does_not_answer, .timeout = 240)
{
    /* The lookup's query waits for a lock another session holds and never
     * lets go of: the reader gives up (10 s a try, two tries) and answers
     * TREATY_EPG instead of hanging. */
    log_set_level(LOG_LEVEL_ERROR);
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    uint8_t id[16];
    new_txid(id);
    struct journal_rec r = rec(id, JOURNAL_COMMIT, NULL);
    append_durable(J, &r, true);
    PGconn *c = pg_open(db_conninfo);
    PQclear(pg_must(c, "BEGIN; LOCK TABLE treaty_journal IN ACCESS EXCLUSIVE MODE"));
    int64_t t0 = mono_ms();
    journal_lookup(J, id);
    journal_flush(J);
    struct answer_list l = {0};
    int64_t until = mono_ms() + 120000;
    while (l.n == 0 && mono_ms() < until) {
        zmq_pollitem_t it = {.socket = journal_socket(J), .events = ZMQ_POLLIN};
        zmq_poll(&it, 1, 100);
        journal_lookup_results(J, collect_answer, &l);
    }
    int64_t took = mono_ms() - t0;
    PQclear(pg_must(c, "ROLLBACK"));
    PQfinish(c);
    cr_assert_eq(l.n, 1, "no answer");
    cr_assert_eq(l.v[0].error, TREATY_EPG, "error %s", treaty_err_name(l.v[0].error));
    cr_log_info("lookup against a lock nobody releases: TREATY_EPG after %lld ms", (long long)took);
    free(l.v);
    journal_close(&J, WAIT_MS);
}

Test(journal, lookup_query_uses_the_indexes)
{
    /* 200,000 finished 2PC transactions, their ENDs in 'ends' rows, and a
     * few version-3 saga 'ends' rows: the lookup reads the txid index and
     * the saga ENDs' GIN index, never the whole table. */
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, false);
    pg_run(db_conninfo, "CREATE TEMP TABLE t AS SELECT gen_random_uuid() AS txid, g FROM generate_series(1, 200000) g; "
                        "INSERT INTO treaty_journal (txid, kind, services) "
                        "SELECT txid, 'commit', ARRAY['svc-a', 'svc-b'] FROM t ORDER BY g; "
                        "INSERT INTO treaty_journal (kind, ended) "
                        "SELECT 'ends', array_agg(txid ORDER BY g) FROM t GROUP BY g / 500 ORDER BY g / 500; "
                        "INSERT INTO treaty_journal (kind, detail, ended) "
                        "SELECT 'ends', 'completed', ARRAY[gen_random_uuid()] FROM generate_series(1, 100); "
                        "ANALYZE treaty_journal");
    journal_close(&J, 0);
    PGconn *c = pg_open(db_conninfo);
    PGresult *res = pg_must(c, "SELECT '{' || string_agg(txid::text, ',') || '}' FROM "
                               "(SELECT txid FROM treaty_journal WHERE kind = 'commit' LIMIT 1000) x");
    const char *param = PQgetvalue(res, 0, 0);
    char sql[2048];
    snprintf(sql, sizeof sql, "EXPLAIN %s", journal_lookup_sql);
    PGresult *plan = PQexecParams(c, sql, 1, NULL, &param, NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(plan), PGRES_TUPLES_OK, "%s", PQresultErrorMessage(plan));
    char *text = plan_text(plan);
    PQclear(plan);
    PQclear(res);
    PQfinish(c);
    cr_assert(strstr(text, "Seq Scan") == NULL, "plan:\n%s", text);
    cr_assert(strstr(text, "treaty_journal_txid") != NULL, "plan:\n%s", text);
    cr_assert(strstr(text, "treaty_journal_saga_ends") != NULL, "plan:\n%s", text);
    free(text);
}

/* ----------------------------------------------------------------- sagas */

/* len bytes: every byte value, zero and 0x5c (backslash) many times over. */
static unsigned char *pattern(size_t len, unsigned seed)
{
    unsigned char *p = malloc(len ? len : 1);
    cr_assert_not_null(p);
    for (size_t i = 0; i < len; i++)
        p[i] = (unsigned char)(i % 3 == 0 ? 0x00 : i % 3 == 1 ? 0x5c : (i * 7 + seed) & 0xff);
    return p;
}

static void expect_data(const struct seen *s, const unsigned char *want, size_t len)
{
    cr_assert(s->has_data, "no data");
    cr_assert_eq(s->data_len, len, "data_len %zu, want %zu", s->data_len, len);
    cr_assert(memcmp(s->data, want, len) == 0, "data differs");
}

Test(journal, saga_records_round_trip)
{
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);

    /* A small definition with every byte value, and a ~1 MB one of 64 steps. */
    unsigned char small[256 + 4];
    for (int i = 0; i < 256; i++)
        small[i] = (unsigned char)i;
    memcpy(small + 256, "\x00\x5c\x5c\x00", 4);
    enum { STEPS = 64 };
    const size_t big_len = (size_t)1 << 20;
    unsigned char *big = pattern(big_len, 1);
    char names[STEPS][16];
    const char *steps[STEPS];
    for (int i = 0; i < STEPS; i++) {
        snprintf(names[i], sizeof names[i], "svc-%02d", i);
        steps[i] = names[i];
    }

    uint8_t s1[16], s2[16], s3[16], s4[16], c1[16];
    new_txid(s1); /* running: definition and two steps done */
    new_txid(s2); /* turned around at step 1, compensating */
    new_txid(s3); /* completed and ended: not scanned */
    new_txid(s4); /* running, an empty (not NULL) definition */
    new_txid(c1); /* a 2PC record zero-initialised with memset */
    struct journal_rec r = {.kind = JOURNAL_SAGA,
                            .nservices = STEPS,
                            .services = steps,
                            .failed_branch = -1,
                            .step = -1,
                            .data = big,
                            .data_len = big_len};
    memcpy(r.txid, s1, 16);
    journal_append(J, &r, true);
    r = (struct journal_rec){.kind = JOURNAL_SAGA,
                             .nservices = 2,
                             .services = svc_ab,
                             .failed_branch = -1,
                             .step = -1,
                             .data = small,
                             .data_len = sizeof small};
    memcpy(r.txid, s2, 16);
    journal_append(J, &r, true);
    r = (struct journal_rec){.kind = JOURNAL_SAGA,
                             .nservices = 1,
                             .services = svc_ab,
                             .failed_branch = -1,
                             .step = -1,
                             .data = "",
                             .data_len = 0};
    memcpy(r.txid, s3, 16);
    journal_append(J, &r, true);
    memcpy(r.txid, s4, 16);
    journal_append(J, &r, true);
    struct journal_rec z;
    memset(&z, 0, sizeof z);
    memcpy(z.txid, c1, 16);
    z.kind = JOURNAL_COMMIT;
    z.nservices = 2;
    z.services = svc_ab;
    journal_append(J, &z, true);
    journal_flush(J);

    r = (struct journal_rec){.kind = JOURNAL_STEP, .failed_branch = -1, .step = 0, .detail = "action"};
    memcpy(r.txid, s1, 16);
    journal_append(J, &r, false);
    r.step = 1;
    journal_append(J, &r, false);
    r = (struct journal_rec){.kind = JOURNAL_STEP, .failed_branch = -1, .step = 0, .detail = "action"};
    memcpy(r.txid, s2, 16);
    journal_append(J, &r, false);
    r = (struct journal_rec){
        .kind = JOURNAL_TURN, .failed_branch = 1, .step = -1, .detail = "svc-b: out of stock\t\\ \xc3\xa9"};
    memcpy(r.txid, s2, 16);
    journal_append(J, &r, true);
    r = (struct journal_rec){.kind = JOURNAL_STEP, .failed_branch = -1, .step = 1, .detail = "compensation"};
    memcpy(r.txid, s2, 16);
    journal_append(J, &r, false);
    r = (struct journal_rec){.kind = JOURNAL_STEP, .failed_branch = -1, .step = 0, .detail = "action"};
    memcpy(r.txid, s3, 16);
    journal_append(J, &r, false);
    r = (struct journal_rec){.kind = JOURNAL_END, .failed_branch = -1, .step = -1, .detail = "completed"};
    memcpy(r.txid, s3, 16);
    uint64_t last = journal_append(J, &r, false);
    journal_flush(J);
    cr_assert(wait_durable(J, last, WAIT_MS));
    journal_close(&J, WAIT_MS);

    /* Plain SQL a person can query. */
    char id1[37], id2[37], q[512];
    txid_sql(s1, id1);
    txid_sql(s2, id2);
    snprintf(q, sizeof q,
             "SELECT count(*) FROM treaty_journal WHERE txid = '%s' AND kind = 'saga' AND length(data) = %zu "
             "AND array_length(services, 1) = %d AND step IS NULL AND failed_branch IS NULL",
             id1, big_len, STEPS);
    cr_assert_eq(pg_count(q), 1);
    snprintf(q, sizeof q,
             "SELECT count(*) FROM treaty_journal WHERE txid = '%s' AND kind = 'saga' "
             "AND substr(data, 1, 4) = '\\x00010203'::bytea AND substr(data, 93, 1) = '\\x5c'::bytea",
             id2);
    cr_assert_eq(pg_count(q), 1);
    snprintf(q, sizeof q,
             "SELECT count(*) FROM treaty_journal WHERE txid = '%s' AND kind = 'turn' AND failed_branch = 1 "
             "AND step IS NULL AND data IS NULL",
             id2);
    cr_assert_eq(pg_count(q), 1);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal WHERE kind = 'step' AND step IS NOT NULL"), 5);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal WHERE kind = 'commit' AND step IS NULL "
                          "AND data IS NULL AND failed_branch IS NULL"),
                 1);

    J = open_journal(&cfg, false);
    struct seen_list l = {0};
    cr_assert_eq(journal_scan(J, collect, &l), 0);
    cr_assert_eq(l.n, 3 + 4 + 1 + 1, "scan returned %zu records", l.n);
    size_t i1 = 0, i2 = 0, i4 = 0, ic = 0;
    cr_assert_eq(seen_count(&l, s4, &i4), 1);
    cr_assert_eq(seen_count(&l, s1, &i1), 3);
    cr_assert_eq(seen_count(&l, s2, &i2), 4);
    cr_assert_eq(seen_count(&l, s3, NULL), 0, "the finished saga came back");
    cr_assert_eq(seen_count(&l, c1, &ic), 1);

    /* s1: the big definition with its 64 services, then its steps. */
    const struct seen *v = &l.v[i1];
    cr_assert_eq(v[0].kind, JOURNAL_SAGA);
    cr_assert_eq(v[0].nservices, STEPS);
    cr_assert(strncmp(v[0].services, "svc-00|svc-01|", 14) == 0, "%s", v[0].services);
    cr_assert_eq(v[0].step, -1);
    cr_assert_eq(v[0].failed_branch, -1);
    cr_assert_eq(v[0].fin, 0);
    expect_data(&v[0], big, big_len);
    for (int k = 0; k < 2; k++) {
        cr_assert_eq(v[1 + k].kind, JOURNAL_STEP);
        cr_assert_eq(v[1 + k].step, k);
        cr_assert_str_eq(v[1 + k].detail, "action");
        cr_assert(!v[1 + k].has_data);
        cr_assert_eq(v[1 + k].failed_branch, -1);
        cr_assert_eq(v[1 + k].fin, 0);
    }
    /* s2: definition, step 0, the turn, step 1 compensated. */
    v = &l.v[i2];
    cr_assert_eq(v[0].kind, JOURNAL_SAGA);
    expect_data(&v[0], small, sizeof small);
    cr_assert_str_eq(v[0].services, "svc-a|svc-b");
    cr_assert_eq(v[1].kind, JOURNAL_STEP);
    cr_assert_eq(v[1].step, 0);
    cr_assert_eq(v[2].kind, JOURNAL_TURN);
    cr_assert_eq(v[2].failed_branch, 1);
    cr_assert_eq(v[2].step, -1);
    cr_assert_str_eq(v[2].detail, "svc-b: out of stock\t\\ \xc3\xa9");
    cr_assert(!v[2].has_data);
    cr_assert_eq(v[3].kind, JOURNAL_STEP);
    cr_assert_eq(v[3].step, 1);
    cr_assert_str_eq(v[3].detail, "compensation");
    /* s4: an empty definition is not a missing one. */
    cr_assert_eq(l.v[i4].kind, JOURNAL_SAGA);
    expect_data(&l.v[i4], small, 0);
    /* The memset record: no step, no data, no failed branch. */
    v = &l.v[ic];
    cr_assert_eq(v->kind, JOURNAL_COMMIT);
    cr_assert_eq(v->step, -1);
    cr_assert_eq(v->failed_branch, -1);
    cr_assert(!v->has_data);
    seen_list_free(&l);
    free(big);
    journal_close(&J, 0);
}

Test(journal, saga_record_larger_than_a_group_is_written)
{
    /* 3 MB of definition is a 6 MB COPY line, over the writer's 4 MB group
     * cap; it comes in the same turn as other records and after a lazy one. */
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    const size_t len = (size_t)3 << 20;
    unsigned char *def = pattern(len, 5);
    uint8_t a[16], b[16];
    new_txid(a);
    new_txid(b);
    struct journal_rec r = {.kind = JOURNAL_STEP, .failed_branch = -1, .step = 0, .detail = "action"};
    memcpy(r.txid, b, 16);
    journal_append(J, &r, false);
    journal_flush(J);
    r = (struct journal_rec){.kind = JOURNAL_SAGA,
                             .nservices = 2,
                             .services = svc_ab,
                             .failed_branch = -1,
                             .step = -1,
                             .data = def,
                             .data_len = len};
    memcpy(r.txid, a, 16);
    journal_append(J, &r, true);
    r = (struct journal_rec){.kind = JOURNAL_SAGA,
                             .nservices = 2,
                             .services = svc_ab,
                             .failed_branch = -1,
                             .step = -1,
                             .data = def + 1,
                             .data_len = len - 1};
    memcpy(r.txid, b, 16);
    journal_append(J, &r, true);
    r = rec(b, JOURNAL_END, "compensated");
    uint64_t last = journal_append(J, &r, false);
    journal_flush(J);
    cr_assert(wait_durable(J, last, 60000), "durable %" PRIu64 " of %" PRIu64, journal_durable(J), last);
    journal_close(&J, WAIT_MS);
    cr_assert_eq(pg_count("SELECT sum(length(data)) FROM treaty_journal"), (long long)(2 * len - 1));

    J = open_journal(&cfg, false);
    struct seen_list l = {0};
    cr_assert_eq(journal_scan(J, collect, &l), 0);
    size_t ia = 0;
    cr_assert_eq(seen_count(&l, a, &ia), 1);
    cr_assert_eq(seen_count(&l, b, NULL), 0, "the finished saga came back");
    cr_assert_eq(l.n, 1);
    expect_data(&l.v[ia], def, len);
    seen_list_free(&l);
    /* b's records, in append order, its definition whole. */
    char idb[37], q[512];
    txid_sql(b, idb);
    snprintf(q, sizeof q,
             "SELECT count(*) FROM (SELECT kind, lead(kind) OVER w AS k2, lead(kind, 2) OVER w AS k3, "
             "                             length(data) AS len FROM treaty_records WHERE txid = '%s' "
             "                      WINDOW w AS (ORDER BY seq)) x "
             " WHERE kind = 'step' AND k2 = 'saga' AND k3 = 'end'",
             idb);
    cr_assert_eq(pg_count(q), 1);
    snprintf(q, sizeof q, "SELECT length(data) FROM treaty_journal WHERE txid = '%s' AND kind = 'saga'", idb);
    cr_assert_eq(pg_count(q), (long long)(len - 1));
    free(def);
    journal_close(&J, 0);
}

Test(journal, scan_of_many_sagas_across_fetches)
{
    /* More rows than one fetch holds: every definition comes back whole,
     * with its own bytes, in append order per saga. */
    enum { N = 1500 };
    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    uint64_t last = 0;
    for (int i = 0; i < N; i++) {
        uint8_t id[16];
        new_txid(id);
        unsigned char def[6] = {0x5c, 0x00, (unsigned char)(i >> 8), (unsigned char)i, 0x5c, 0x00};
        struct journal_rec r = {.kind = JOURNAL_SAGA,
                                .nservices = 2,
                                .services = svc_ab,
                                .failed_branch = -1,
                                .step = -1,
                                .data = def,
                                .data_len = (size_t)(i % 7)};
        memcpy(r.txid, id, 16);
        journal_append(J, &r, true);
        r = (struct journal_rec){.kind = JOURNAL_STEP, .failed_branch = -1, .step = i, .detail = "action"};
        memcpy(r.txid, id, 16);
        last = journal_append(J, &r, false);
    }
    journal_flush(J);
    cr_assert(wait_durable(J, last, WAIT_MS));
    journal_close(&J, WAIT_MS);

    J = open_journal(&cfg, false);
    struct seen_list l = {0};
    cr_assert_eq(journal_scan(J, collect, &l), 0);
    cr_assert_eq(l.n, 2 * N);
    bool seen_step[N] = {false};
    for (size_t k = 0; k < l.n; k += 2) {
        cr_assert_eq(l.v[k].kind, JOURNAL_SAGA);
        cr_assert_arr_eq(l.v[k].txid, l.v[k + 1].txid, 16);
        cr_assert_eq(l.v[k + 1].kind, JOURNAL_STEP);
        int i = l.v[k + 1].step;
        cr_assert(i >= 0 && i < N && !seen_step[i], "step %d", i);
        seen_step[i] = true;
        unsigned char def[6] = {0x5c, 0x00, (unsigned char)(i >> 8), (unsigned char)i, 0x5c, 0x00};
        expect_data(&l.v[k], def, (size_t)(i % 7));
    }
    seen_list_free(&l);
    journal_close(&J, 0);
}

Test(journal, version_1_database_is_upgraded_and_keeps_its_rows)
{
    /* A database as a version-1 treatyd left it. */
    uint8_t t1[16], t2[16];
    new_txid(t1);
    new_txid(t2);
    char id1[37], id2[37], sql[1024];
    txid_sql(t1, id1);
    txid_sql(t2, id2);
    pg_run(db_conninfo, sql_journal);
    snprintf(sql, sizeof sql,
             "INSERT INTO treaty_journal (txid, kind, services) VALUES ('%s', 'commit', ARRAY['svc-a','svc-b']); "
             "INSERT INTO treaty_journal (txid, kind, services, failed_branch, detail) "
             "  VALUES ('%s', 'abort', ARRAY['svc-a','svc-b'], 1, 'svc-b voted no'); "
             "INSERT INTO treaty_journal (txid, kind) VALUES ('%s', 'end')",
             id1, id2, id2);
    pg_run(db_conninfo, sql);
    cr_assert_eq(pg_count("SELECT max(version) FROM treaty_schema"), 1);
    cr_assert_eq(pg_count("SELECT count(*) FROM information_schema.columns "
                          "WHERE table_name = 'treaty_journal' AND column_name IN ('step', 'data')"),
                 0);

    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, false);
    cr_assert_eq(pg_count("SELECT max(version) FROM treaty_schema"), 5);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_schema"), 5);
    cr_assert_eq(pg_count("SELECT count(*) FROM information_schema.columns "
                          "WHERE table_name = 'treaty_journal' AND column_name IN ('step', 'data')"),
                 2);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal"), 3);

    /* The old rows scan back as before, without step or data; t2 ended (a
     * version-1 'end' row), so it is not scanned. */
    struct seen_list l = {0};
    cr_assert_eq(journal_scan(J, collect, &l), 0);
    cr_assert_eq(l.n, 1);
    size_t i1 = 0;
    cr_assert_eq(seen_count(&l, t1, &i1), 1);
    cr_assert_eq(seen_count(&l, t2, NULL), 0);
    cr_assert_eq(l.v[i1].kind, JOURNAL_COMMIT);
    cr_assert_str_eq(l.v[i1].services, "svc-a|svc-b");
    cr_assert_eq(l.v[i1].step, -1);
    cr_assert(!l.v[i1].has_data);
    seen_list_free(&l);

    /* And saga records can be written to it now. */
    cr_assert_eq(journal_start(J, zctx), 0);
    struct journal_rec r = {.kind = JOURNAL_STEP, .failed_branch = -1, .step = 2, .detail = "action"};
    memcpy(r.txid, t1, 16);
    uint64_t s = journal_append(J, &r, true);
    journal_flush(J);
    cr_assert(wait_durable(J, s, WAIT_MS));
    journal_close(&J, WAIT_MS);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal WHERE kind = 'step' AND step = 2"), 1);

    /* Connecting again leaves version 5 as it is. */
    J = open_journal(&cfg, false);
    journal_close(&J, 0);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_schema"), 5);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal"), 4);
}

Test(journal, version_3_database_is_upgraded_and_keeps_its_rows)
{
    /* A database as a version-3 treatyd left it: a COMMIT, its END in an
     * 'ends' row, and a saga's records with its END in another. */
    uint8_t t1[16], s1[16];
    new_txid(t1);
    new_txid(s1);
    char id1[37], ids[37], sql[1536];
    txid_sql(t1, id1);
    txid_sql(s1, ids);
    pg_run(db_conninfo, sql_journal);
    pg_run(db_conninfo, sql_saga);
    pg_run(db_conninfo, sql_batched_end);
    snprintf(sql, sizeof sql,
             "INSERT INTO treaty_journal (txid, kind, services) VALUES ('%s', 'commit', ARRAY['svc-a','svc-b']); "
             "INSERT INTO treaty_journal (txid, kind, services, data) VALUES ('%s', 'saga', ARRAY['svc-a'], '\\x01'); "
             "INSERT INTO treaty_journal (txid, kind, failed_branch, detail) VALUES ('%s', 'turn', 0, 'no'); "
             "INSERT INTO treaty_journal (kind, ended) VALUES ('ends', ARRAY['%s'::uuid]); "
             "INSERT INTO treaty_journal (kind, detail, ended) VALUES ('ends', 'compensated', ARRAY['%s'::uuid])",
             id1, ids, ids, id1, ids);
    pg_run(db_conninfo, sql);
    cr_assert_eq(pg_count("SELECT max(version) FROM treaty_schema"), 3);
    cr_assert_eq(pg_count("SELECT count(*) FROM information_schema.columns "
                          "WHERE table_name = 'treaty_journal' AND column_name = 'grp'"),
                 0);

    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    cr_assert_eq(pg_count("SELECT max(version) FROM treaty_schema"), 5);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_schema"), 5);
    cr_assert_eq(pg_count("SELECT count(*) FROM pg_indexes WHERE indexname = 'treaty_journal_grp' "
                          "AND indexdef LIKE 'CREATE UNIQUE INDEX%'"),
                 1);
    cr_assert_eq(pg_count("SELECT count(*) FROM pg_indexes WHERE indexname = 'treaty_journal_saga_ends' "
                          "AND indexdef LIKE '%USING gin (ended)%'"),
                 1);
    /* The old rows are kept as they were, without a group id. */
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal WHERE grp IS NULL"), 5);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_records"), 5);

    /* New groups carry their id on their first row only. */
    uint8_t t2[16];
    new_txid(t2);
    struct journal_rec r = rec(t2, JOURNAL_COMMIT, NULL);
    journal_append(J, &r, true);
    r = rec(t2, JOURNAL_ABORT, "x");
    append_durable(J, &r, true);
    journal_close(&J, WAIT_MS);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal"), 7);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal WHERE grp IS NOT NULL"), 1);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal WHERE grp IS NOT NULL AND kind = 'commit'"), 1);

    /* Connecting again leaves version 5 as it is. */
    J = open_journal(&cfg, false);
    journal_close(&J, 0);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_schema"), 5);
}

Test(journal, version_4_database_is_upgraded_to_hold_audit_records)
{
    /* A database as a version-4 treatyd left it: its kind check refuses an
     * 'audit' row. */
    uint8_t t1[16];
    new_txid(t1);
    char id1[37], sql[512];
    txid_sql(t1, id1);
    pg_run(db_conninfo, sql_journal);
    pg_run(db_conninfo, sql_saga);
    pg_run(db_conninfo, sql_batched_end);
    pg_run(db_conninfo, sql_runs_and_lookups);
    snprintf(sql, sizeof sql, "INSERT INTO treaty_journal (txid, kind, detail) VALUES ('%s', 'audit', 'x')", id1);
    PGconn *c = pg_open(db_conninfo);
    PGresult *res = PQexec(c, sql);
    cr_assert_eq(PQresultStatus(res), PGRES_FATAL_ERROR, "version 4 stored an audit row");
    cr_assert_str_eq(PQresultErrorField(res, PG_DIAG_SQLSTATE), "23514", "check_violation");
    PQclear(res);
    PQfinish(c);
    pg_run_txid("INSERT INTO treaty_journal (txid, kind, services) VALUES ('TXID', 'commit', ARRAY['svc-a'])", t1);
    cr_assert_eq(pg_count("SELECT max(version) FROM treaty_schema"), 4);

    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    cr_assert_eq(pg_count("SELECT max(version) FROM treaty_schema"), 5);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_schema"), 5);
    struct journal_rec r = {.kind = JOURNAL_AUDIT, .failed_branch = -1, .step = 3, .detail = "compensated by uid 0"};
    memcpy(r.txid, t1, 16);
    append_durable(J, &r, true);
    journal_close(&J, WAIT_MS);
    cr_assert_eq(pg_count_txid("SELECT count(*) FROM treaty_journal WHERE txid = 'TXID' AND kind = 'audit' AND "
                               "step = 3 AND detail = 'compensated by uid 0'",
                               t1),
                 1);
    cr_assert_eq(pg_count_txid("SELECT count(*) FROM treaty_records WHERE txid = 'TXID'", t1), 2,
                 "the old row is kept and the view shows the audit row");
}

/* ------------------------------------------- Postgres restarts underneath */

TestSuite(journal_restart, .init = db_setup_exclusive, .fini = db_teardown, .timeout = 240);

/* One loop turn of n forced records, each naming its sequence number. */
static uint64_t append_turn(struct journal *j, int n, uint64_t *count)
{
    uint64_t s = 0;
    for (int i = 0; i < n; i++) {
        uint8_t id[16];
        char detail[32];
        new_txid(id);
        snprintf(detail, sizeof detail, "r%" PRIu64, ++*count);
        struct journal_rec r = rec(id, JOURNAL_COMMIT, detail);
        s = journal_append(j, &r, true);
        cr_assert_eq(s, *count);
    }
    journal_flush(j);
    journal_durable(j);
    return s;
}

Test(journal_restart, postgres_restart_while_appending)
{
    log_set_level(LOG_LEVEL_ERROR);
    const char *dir = getenv("TREATY_TEST_PGDIR");
    const char *top = getenv("TREATY_TOP");
    char script[1024];
    snprintf(script, sizeof script, "%s/scripts/pgtmp.sh", top && *top ? top : ".");
    cr_assert(access(script, R_OK) == 0, "%s: %s", script, strerror(errno));

    struct journal_config cfg = test_cfg();
    J = open_journal(&cfg, true);
    uint64_t last = 0, count = 0;
    for (int t = 0; t < 20; t++)
        last = append_turn(J, 10, &count);
    cr_assert(wait_durable(J, last, WAIT_MS));

    /* Restart Postgres while the loop keeps appending. */
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        execl("/bin/sh", "sh", script, "restart", dir, (char *)NULL);
        _exit(127);
    }
    bool saw_unhealthy = false;
    int status = 0, turns = 0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        cr_assert(r >= 0);
        if (r == pid)
            break;
        last = append_turn(J, 10, &count);
        turns++;
        saw_unhealthy = saw_unhealthy || !journal_healthy(J);
        sleep_ms(5);
    }
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "pgtmp.sh restart failed");
    for (int t = 0; t < 20; t++) {
        last = append_turn(J, 10, &count);
        saw_unhealthy = saw_unhealthy || !journal_healthy(J);
        sleep_ms(5);
    }

    cr_assert(wait_durable(J, last, 60000), "durable %" PRIu64 " of %" PRIu64, journal_durable(J), last);
    int64_t until = mono_ms() + WAIT_MS;
    while (!journal_healthy(J) && mono_ms() < until)
        sleep_ms(20);
    cr_assert(journal_healthy(J));
    struct journal_stats st;
    journal_get_stats(J, &st);
    cr_log_info("restart: %d turns during it, unhealthy seen: %d, reconnects %" PRIu64 ", %" PRIu64
                " records written for %" PRIu64 " appended",
                turns, saw_unhealthy, st.reconnects, st.records, last);
    cr_assert_geq(st.reconnects, 1, "the writer never reconnected");
    cr_assert_geq(st.records, last);
    journal_close(&J, WAIT_MS);

    /* Every record is there, once (a group whose acknowledgement the restart
     * swallowed is not written twice). */
    char q[128];
    snprintf(q, sizeof q, "SELECT count(DISTINCT detail) FROM treaty_journal");
    cr_assert_eq(pg_count(q), (long long)last);
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_journal"), (long long)last);
    snprintf(q, sizeof q, "SELECT max(substr(detail, 2)::bigint) FROM treaty_journal");
    cr_assert_eq(pg_count(q), (long long)last);
}

/* Found by the simulator (tests/sim, seed 2): a group of only lazy records
 * (2PC ENDs) was committed with synchronous_commit = off and reported
 * durable; PostgreSQL then crashed before its WAL writer flushed the commit,
 * and the END records were gone - their transactions looked unfinished in
 * the journal, never collected, until the coordinator restarted. Every group
 * commits with synchronous_commit = on: a record reported durable stays. */
Test(journal_restart, lazy_records_reported_durable_survive_a_crash_of_postgres)
{
    log_set_level(LOG_LEVEL_ERROR);
    const char *dir = getenv("TREATY_TEST_PGDIR");
    const char *top = getenv("TREATY_TOP");
    char script[1024];
    snprintf(script, sizeof script, "%s/scripts/pgtmp.sh", top && *top ? top : ".");
    cr_assert(access(script, R_OK) == 0, "%s: %s", script, strerror(errno));

    struct journal_config cfg = test_cfg();
    cfg.lazy_delay_ms = 1;
    J = open_journal(&cfg, true);
    enum { N = 100 };
    uint64_t last = 0;
    for (int i = 0; i < N; i++) {
        uint8_t id[16];
        new_txid(id);
        struct journal_rec r = rec(id, JOURNAL_END, NULL);
        last = journal_append(J, &r, false);
    }
    journal_flush(J);
    cr_assert(wait_durable(J, last, WAIT_MS), "the lazy records never became durable");
    journal_close(&J, WAIT_MS);

    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        execl("/bin/sh", "sh", script, "crash", dir, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "pgtmp.sh crash failed");
    cr_assert_eq(pg_count("SELECT count(*) FROM treaty_records WHERE kind = 'end'"), N,
                 "END records reported durable were lost in a crash of PostgreSQL");
}
