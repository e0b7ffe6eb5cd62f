/*
 * test_sdk.c - libtreaty's client and participant SDK against a fake
 * coordinator (a ROUTER socket in the test, speaking the wire format by hand)
 * and a real PostgreSQL (TREATY_TEST_PG; the PostgreSQL tests fail, never
 * skip, when it is missing).
 *
 * The SDK is used only through treaty.h; wire.h is used to play the
 * coordinator's side. Every wait is a poll for a condition with a generous
 * deadline: timing never decides a verdict.
 */
#include <criterion/criterion.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <zmq.h>

#include "treaty.h"
#include "participant_core.h"
#include "wire.h"

#define WAIT_MS 20000          /* generous: only a broken SDK waits this long */
#define GOT_FRAMES (1 + 6 * 3) /* a SAGA of three steps */
#define GOT_FRAME_MAX 512

/* ------------------------------------------------------------ utilities */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static treaty_txid_t new_txid(void)
{
    treaty_txid_t id;
    cr_assert_eq(treaty_txid_generate(&id), 0);
    return id;
}

/* ------------------------------------------------------ fake coordinator */

struct fake {
    void *ctx;
    void *sock;
    char endpoint[128];
};

/* One received message, copied out of the socket's buffers. */
struct got {
    uint8_t rid[WIRE_ROUTING_ID_MAX];
    size_t rid_len;
    struct wire_hdr hdr;
    size_t nframes;
    size_t len[GOT_FRAMES];
    char frame[GOT_FRAMES][GOT_FRAME_MAX]; /* NUL-terminated copies (truncated) */
};

/* A fake on an ipc endpoint chosen before it is bound: a forked child can
 * connect to it first (ZeroMQ retries until the bind). */
static void ipc_endpoint(char *buf, size_t cap)
{
    static int n;
    snprintf(buf, cap, "ipc:///tmp/treaty-sdk-test-%ld-%d.sock", (long)getpid(), n++);
}

static void fake_open_at(struct fake *f, const char *endpoint)
{
    int zero = 0, one = 1;
    memset(f, 0, sizeof *f);
    f->ctx = zmq_ctx_new();
    cr_assert_not_null(f->ctx);
    f->sock = zmq_socket(f->ctx, ZMQ_ROUTER);
    cr_assert_not_null(f->sock);
    zmq_setsockopt(f->sock, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(f->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    /* Unbounded queues to the peers (set before bind: accepted connections
     * take the listener's options). With the default 1000, a test that sends
     * hundreds of messages at once can find a queue still full of earlier
     * ones the I/O thread has not yet reported drained, and ROUTER_MANDATORY
     * then refuses with EAGAIN. */
    cr_assert_eq(zmq_setsockopt(f->sock, ZMQ_SNDHWM, &zero, sizeof zero), 0);
    cr_assert_eq(zmq_bind(f->sock, endpoint), 0, "bind %s: %s", endpoint, zmq_strerror(zmq_errno()));
    snprintf(f->endpoint, sizeof f->endpoint, "%s", endpoint);
}

/* A fake on a free TCP port of the loopback interface. */
static void fake_open(struct fake *f)
{
    fake_open_at(f, "tcp://127.0.0.1:*");
    size_t len = sizeof f->endpoint;
    cr_assert_eq(zmq_getsockopt(f->sock, ZMQ_LAST_ENDPOINT, f->endpoint, &len), 0);
}

static void fake_close(struct fake *f)
{
    if (f->sock != NULL)
        zmq_close(f->sock);
    if (f->ctx != NULL)
        zmq_ctx_term(f->ctx);
    f->sock = f->ctx = NULL;
    if (strncmp(f->endpoint, "ipc://", 6) == 0)
        unlink(f->endpoint + 6);
}

/* Receives the next well-formed message within timeout_ms. */
static bool fake_recv(struct fake *f, struct got *g, int timeout_ms)
{
    static struct wire_in in; /* large; one per process is enough */
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        int rc = wire_recv(f->sock, true, 1u << 20, &in);
        if (rc == 0) {
            memset(g, 0, sizeof *g);
            memcpy(g->rid, in.rid, in.rid_len);
            g->rid_len = in.rid_len;
            g->hdr = in.msg.hdr;
            g->nframes = in.msg.nframes;
            for (size_t i = 0; i < in.msg.nframes && i < GOT_FRAMES; i++) {
                size_t n = in.msg.frames[i].len;
                g->len[i] = n;
                if (n >= GOT_FRAME_MAX)
                    n = GOT_FRAME_MAX - 1;
                if (n > 0)
                    memcpy(g->frame[i], in.msg.frames[i].data, n);
                g->frame[i][n] = '\0';
            }
            wire_in_close(&in);
            return true;
        }
        if (rc != TREATY_ETIMEDOUT)
            continue; /* malformed: the SDK should never send such, skip */
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return false;
        zmq_pollitem_t item = {f->sock, 0, ZMQ_POLLIN, 0};
        zmq_poll(&item, 1, left > 100 ? 100 : (long)left);
    }
}

/* Receives until a message of type (and txid, when given) arrives. */
static bool fake_expect(struct fake *f, uint8_t type, const treaty_txid_t *id, struct got *g, int timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0 || !fake_recv(f, g, (int)left))
            return false;
        if (g->hdr.type == type && (id == NULL || memcmp(g->hdr.txid, id->b, 16) == 0))
            return true;
    }
}

static void fake_send(struct fake *f, const struct got *to, uint8_t type, const treaty_txid_t *id, unsigned branch,
                      unsigned attempt, unsigned code, const struct wire_frame *frames, size_t n)
{
    struct wire_hdr h;
    memset(&h, 0, sizeof h);
    h.type = type;
    if (id != NULL)
        memcpy(h.txid, id->b, 16);
    h.branch = (uint16_t)branch;
    h.attempt = (uint16_t)attempt;
    h.code = (uint16_t)code;
    int rc = wire_send(f->sock, to->rid, to->rid_len, &h, frames, n);
    cr_assert_eq(rc, 0, "fake coordinator could not send %s: %s", wire_type_name(type), zmq_strerror(zmq_errno()));
}

/* Sends raw parts (routing id first) to a peer: for malformed messages. */
static void fake_send_raw(struct fake *f, const struct got *to, const struct wire_frame *parts, size_t n)
{
    cr_assert_geq(zmq_send(f->sock, to->rid, to->rid_len, n ? ZMQ_SNDMORE : 0), 0);
    for (size_t i = 0; i < n; i++)
        cr_assert_geq(zmq_send(f->sock, parts[i].data, parts[i].len, i + 1 < n ? ZMQ_SNDMORE : 0), 0);
}

static void send_prepare(struct fake *f, const struct got *to, const treaty_txid_t *id, unsigned branch,
                         unsigned attempt, const char *payload)
{
    struct wire_frame fr = wire_str(payload);
    fake_send(f, to, WIRE_PREPARE, id, branch, attempt, 0, &fr, 1);
}

static void send_welcome(struct fake *f, const struct got *to, uint32_t heartbeat_ms)
{
    uint8_t hb[4];
    wire_put_u32(hb, heartbeat_ms);
    struct wire_frame fr = {hb, 4};
    fake_send(f, to, WIRE_WELCOME, NULL, 0, 0, 0, &fr, 1);
}

static void expect_vote(struct fake *f, const treaty_txid_t *id, unsigned branch, unsigned vote, struct got *g)
{
    cr_assert(fake_expect(f, WIRE_VOTE, NULL, g, WAIT_MS), "no VOTE arrived");
    cr_assert_eq(memcmp(g->hdr.txid, id->b, 16), 0, "VOTE for another txid");
    cr_assert_eq(g->hdr.branch, branch);
    cr_assert_eq(g->hdr.code, vote, "vote %u, expected %u (reason '%s')", g->hdr.code, vote, g->frame[0]);
}

static void expect_ack(struct fake *f, const treaty_txid_t *id, unsigned branch, unsigned status)
{
    struct got g;
    cr_assert(fake_expect(f, WIRE_ACK, NULL, &g, WAIT_MS), "no ACK arrived");
    cr_assert_eq(memcmp(g.hdr.txid, id->b, 16), 0, "ACK for another txid");
    cr_assert_eq(g.hdr.branch, branch);
    cr_assert_eq(g.hdr.code, status);
}

/* ---------------------------------------------------- plain participant */

struct th {
    atomic_int prepares, commits, aborts;
};

/* payload "yes" -> YES, "no" -> NO ("nope"), "err" -> no vote, else 42 */
static int th_prepare(void *arg, const treaty_branch_t *b, char *reason)
{
    struct th *t = arg;
    atomic_fetch_add(&t->prepares, 1);
    if (b->len == 3 && memcmp(b->payload, "yes", 3) == 0)
        return TREATY_VOTE_YES;
    if (b->len == 2 && memcmp(b->payload, "no", 2) == 0) {
        snprintf(reason, TREATY_REASON_MAX, "nope");
        return TREATY_VOTE_NO;
    }
    if (b->len == 3 && memcmp(b->payload, "err", 3) == 0)
        return TREATY_EBUSY;
    return 42;
}

/* branch 99 fails (no ACK), others succeed */
static int th_commit(void *arg, const treaty_branch_t *b)
{
    struct th *t = arg;
    atomic_fetch_add(&t->commits, 1);
    return b->branch == 99 ? TREATY_EBUSY : 0;
}

static int th_abort(void *arg, const treaty_branch_t *b)
{
    struct th *t = arg;
    atomic_fetch_add(&t->aborts, 1);
    return b->branch == 99 ? TREATY_EBUSY : 0;
}

static treaty_participant_t *plain_participant(struct fake *f, struct th *t, const char *instance)
{
    treaty_handlers_t h = {th_prepare, th_commit, th_abort, t};
    treaty_participant_t *p = NULL;
    cr_assert_eq(treaty_participant_new(f->endpoint, "inventory", instance, &h, &p), 0);
    cr_assert_not_null(p);
    return p;
}

/* Waits for the participant's HELLO: the routing id to talk to it. */
static void expect_hello(struct fake *f, const char *instance, struct got *hello)
{
    for (;;) {
        cr_assert(fake_expect(f, WIRE_HELLO, NULL, hello, WAIT_MS), "no HELLO arrived");
        if (instance == NULL || strcmp(hello->frame[1], instance) == 0)
            return;
    }
}

Test(participant, says_hello_with_names_and_repeats_it, .timeout = 120)
{
    struct fake f;
    struct th t = {0};
    struct got g;
    fake_open(&f);
    treaty_participant_t *p = plain_participant(&f, &t, "inv-1");
    cr_assert_eq(treaty_participant_start(p), 0);
    cr_assert_eq(treaty_participant_start(p), TREATY_ESTATE);

    expect_hello(&f, NULL, &g);
    cr_assert_eq(g.nframes, 2);
    cr_assert_str_eq(g.frame[0], "inventory");
    cr_assert_str_eq(g.frame[1], "inv-1");
    static const uint8_t zero[16];
    cr_assert_eq(memcmp(g.hdr.txid, zero, 16), 0);
    /* adopt a short heartbeat; HELLO keeps coming */
    send_welcome(&f, &g, 50);
    for (int i = 0; i < 3; i++)
        expect_hello(&f, "inv-1", &g);

    cr_assert_eq(treaty_participant_stop(p), 0);
    cr_assert_eq(treaty_participant_stop(p), TREATY_ESTATE);
    treaty_participant_destroy(&p);
    cr_assert_null(p);
    treaty_participant_destroy(&p); /* NULL is fine */
    treaty_participant_destroy(NULL);
    fake_close(&f);
}

Test(participant, prepare_votes_yes_and_no_with_reason, .timeout = 120)
{
    struct fake f;
    struct th t = {0};
    struct got hello, g;
    fake_open(&f);
    treaty_participant_t *p = plain_participant(&f, &t, "inv-1");
    cr_assert_eq(treaty_participant_start(p), 0);
    expect_hello(&f, NULL, &hello);

    treaty_txid_t a = new_txid(), b = new_txid(), c = new_txid(), d = new_txid();
    send_prepare(&f, &hello, &a, 3, 0, "yes");
    expect_vote(&f, &a, 3, TREATY_VOTE_YES, &g);
    cr_assert_eq(g.nframes, 1);
    cr_assert_str_eq(g.frame[0], "");

    send_prepare(&f, &hello, &b, 0, 2, "no");
    expect_vote(&f, &b, 0, TREATY_VOTE_NO, &g);
    cr_assert_str_eq(g.frame[0], "nope");
    cr_assert_eq(g.hdr.attempt, 2, "attempt is echoed");

    /* A handler error sends no vote: the next VOTE is for the next PREPARE
     * (messages are handled in order). */
    send_prepare(&f, &hello, &c, 1, 0, "err");
    send_prepare(&f, &hello, &d, 1, 0, "something else");
    expect_vote(&f, &d, 1, TREATY_VOTE_NO, &g); /* a non-vote return value votes NO */
    cr_assert_eq(atomic_load(&t.prepares), 4);

    treaty_participant_destroy(&p); /* stops the thread */
    fake_close(&f);
}

Test(participant, commit_and_abort_ack_and_errors_do_not, .timeout = 120)
{
    struct fake f;
    struct th t = {0};
    struct got hello;
    fake_open(&f);
    treaty_participant_t *p = plain_participant(&f, &t, "inv-1");
    cr_assert_eq(treaty_participant_start(p), 0);
    expect_hello(&f, NULL, &hello);

    treaty_txid_t a = new_txid(), b = new_txid();
    fake_send(&f, &hello, WIRE_COMMIT, &a, 5, 0, 0, NULL, 0);
    expect_ack(&f, &a, 5, TREATY_STATUS_COMMITTED);
    fake_send(&f, &hello, WIRE_COMMIT, &b, 99, 0, 0, NULL, 0); /* handler fails: no ACK */
    fake_send(&f, &hello, WIRE_ABORT, &b, 7, 1, 0, NULL, 0);
    expect_ack(&f, &b, 7, TREATY_STATUS_ABORTED);
    cr_assert_eq(atomic_load(&t.commits), 2);
    cr_assert_eq(atomic_load(&t.aborts), 1);

    treaty_participant_destroy(&p);
    fake_close(&f);
}

/* A HELLO that cannot leave (no coordinator yet: ZMQ_IMMEDIATE) is tried
 * again after PCORE_HELLO_RETRY_MS, not a heartbeat later: the shell sends
 * HELLO at once so the core learns that it failed. Seen when the shell
 * bundled every message: the failure showed only at the flush, and the
 * next HELLO was due after PCORE_HELLO_RETRY_MS no longer but after
 * PCORE_HEARTBEAT_MS. What is checked is the time the participant asks to
 * be called again, not how long anything took. */
Test(participant, unsent_hello_is_retried_soon)
{
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", 1); /* nothing listens on port 1 */
    treaty_handlers_t h = {th_prepare, th_commit, th_abort, NULL};
    treaty_participant_t *p = NULL;
    cr_assert_eq(treaty_participant_new(endpoint, "inventory", "i1", &h, &p), 0);
    cr_assert_geq(treaty_participant_process(p), 0); /* the first HELLO is due now: it cannot go */
    int next = treaty_participant_next_timeout(p);
    cr_assert(next >= 0 && next <= PCORE_HELLO_RETRY_MS,
              "next turn in %d ms: want at most PCORE_HELLO_RETRY_MS (%d), the heartbeat is %d", next,
              PCORE_HELLO_RETRY_MS, PCORE_HEARTBEAT_MS);
    treaty_participant_destroy(&p);
}

Test(participant, malformed_messages_are_dropped, .timeout = 120)
{
    struct fake f;
    struct th t = {0};
    struct got hello, g;
    fake_open(&f);
    treaty_participant_t *p = plain_participant(&f, &t, "inv-1");
    cr_assert_eq(treaty_participant_start(p), 0);
    expect_hello(&f, NULL, &hello);

    treaty_txid_t a = new_txid();
    uint8_t hdr[WIRE_HDR_LEN];
    struct wire_hdr h = {.type = WIRE_PREPARE};
    memcpy(h.txid, a.b, 16);
    wire_encode_hdr(&h, hdr);

    struct wire_frame junk = {(const uint8_t *)"garbage", 7};
    fake_send_raw(&f, &hello, &junk, 1); /* not a header */
    struct wire_frame none[1] = {{(const uint8_t *)"", 0}};
    fake_send_raw(&f, &hello, none, 1); /* empty */
    struct wire_frame noframes[1] = {{hdr, sizeof hdr}};
    fake_send_raw(&f, &hello, noframes, 1); /* PREPARE without its payload frame */
    uint8_t bad[WIRE_HDR_LEN];
    memcpy(bad, hdr, sizeof bad);
    bad[2] = 9; /* other version */
    struct wire_frame badver[2] = {{bad, sizeof bad}, {(const uint8_t *)"yes", 3}};
    fake_send_raw(&f, &hello, badver, 2);
    memcpy(bad, hdr, sizeof bad);
    bad[3] = 200; /* unknown type */
    struct wire_frame badtype[2] = {{bad, sizeof bad}, {(const uint8_t *)"yes", 3}};
    fake_send_raw(&f, &hello, badtype, 2);
    memcpy(bad, hdr, sizeof bad);
    bad[27] = 1; /* reserved bits */
    struct wire_frame badres[2] = {{bad, sizeof bad}, {(const uint8_t *)"yes", 3}};
    fake_send_raw(&f, &hello, badres, 2);
    memcpy(bad, hdr, sizeof bad);
    bad[2] = 1; /* a version-1 PREPARE: its payload in a ZeroMQ frame of its own */
    struct wire_frame v1[2] = {{bad, sizeof bad}, {(const uint8_t *)"yes", 3}};
    fake_send_raw(&f, &hello, v1, 2);
    uint8_t packed[WIRE_HDR_LEN + 4 + 3];
    struct wire_frame yes = wire_str("yes");
    wire_pack(&h, &yes, 1, packed);
    struct wire_frame cut[1] = {{packed, sizeof packed - 1}}; /* its frame length runs past the end */
    fake_send_raw(&f, &hello, cut, 1);
    struct wire_frame trailing[2] = {{packed, sizeof packed}, {(const uint8_t *)"", 0}}; /* then one more frame */
    fake_send_raw(&f, &hello, trailing, 2);
    fake_send(&f, &hello, WIRE_VOTE, &a, 0, 0, TREATY_VOTE_YES, &junk, 1); /* well-formed, wrong direction */
    uint8_t hb3[3] = {0, 0, 1};
    struct wire_frame welcome_bad = {hb3, 3};
    fake_send(&f, &hello, WIRE_WELCOME, NULL, 0, 0, 0, &welcome_bad, 1); /* u32 of 3 bytes */

    /* still alive and answering */
    send_prepare(&f, &hello, &a, 0, 0, "yes");
    expect_vote(&f, &a, 0, TREATY_VOTE_YES, &g);
    cr_assert_eq(atomic_load(&t.prepares), 1, "no malformed PREPARE reached the handler");

    cr_assert_eq(treaty_participant_stop(p), 0);
    cr_assert(strstr(treaty_participant_errmsg(p), "dropped") != NULL, "errmsg: %s", treaty_participant_errmsg(p));
    treaty_participant_destroy(&p);
    fake_close(&f);
}

/* Caller-loop mode: process the participant and play the coordinator on
 * the same thread. */
static bool pump_until(struct fake *f, treaty_participant_t *p, uint8_t type, struct got *g)
{
    int64_t deadline = now_ms() + WAIT_MS;
    while (now_ms() < deadline) {
        int n;
        while ((n = treaty_participant_process(p)) > 0)
            ;
        cr_assert_geq(n, 0, "process: %s", treaty_err_name(n));
        int wait = treaty_participant_next_timeout(p);
        cr_assert_geq(wait, 0);
        zmq_pollitem_t items[2] = {{NULL, treaty_participant_fd(p), ZMQ_POLLIN, 0}, {f->sock, 0, ZMQ_POLLIN, 0}};
        zmq_poll(items, 2, wait > 50 ? 50 : wait);
        if (items[1].revents & ZMQ_POLLIN) {
            if (fake_recv(f, g, 0) && g->hdr.type == type)
                return true;
        }
    }
    return false;
}

Test(participant, caller_loop_mode, .timeout = 120)
{
    struct fake f;
    struct th t = {0};
    struct got hello, g;
    fake_open(&f);
    treaty_participant_t *p = plain_participant(&f, &t, "inv-loop");
    cr_assert_geq(treaty_participant_fd(p), 0);
    cr_assert_eq(treaty_participant_next_timeout(p), 0, "the first HELLO is due at once");

    cr_assert(pump_until(&f, p, WIRE_HELLO, &hello));
    cr_assert_str_eq(hello.frame[1], "inv-loop");
    treaty_txid_t a = new_txid();
    send_prepare(&f, &hello, &a, 2, 0, "no");
    cr_assert(pump_until(&f, p, WIRE_VOTE, &g));
    cr_assert_eq(memcmp(g.hdr.txid, a.b, 16), 0);
    cr_assert_eq(g.hdr.code, TREATY_VOTE_NO);
    cr_assert_str_eq(g.frame[0], "nope");

    /* inquire before start, from the owning thread */
    treaty_txid_t q = new_txid();
    cr_assert_eq(treaty_participant_inquire(p, &q, 4), 0);
    cr_assert(pump_until(&f, p, WIRE_INQUIRE, &g));
    cr_assert_eq(memcmp(g.hdr.txid, q.b, 16), 0);
    cr_assert_eq(g.hdr.branch, 4);

    /* mixing modes is refused */
    cr_assert_eq(treaty_participant_start(p), 0);
    cr_assert_eq(treaty_participant_process(p), TREATY_ESTATE);
    cr_assert_eq(treaty_participant_inquire(p, &q, 4), TREATY_ESTATE);
    cr_assert_eq(treaty_participant_stop(p), 0);
    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(participant, arguments_are_checked)
{
    struct th t = {0};
    treaty_handlers_t h = {th_prepare, th_commit, th_abort, &t};
    treaty_handlers_t partial = {th_prepare, NULL, th_abort, &t};
    treaty_participant_t *p = (treaty_participant_t *)&t; /* must be reset to NULL */
    cr_assert_eq(treaty_participant_new("tcp://127.0.0.1:1", "bad name", "i", &h, &p), TREATY_EINVAL);
    cr_assert_null(p);
    cr_assert_eq(treaty_participant_new("tcp://127.0.0.1:1", "svc", "", &h, &p), TREATY_EINVAL);
    cr_assert_eq(treaty_participant_new("tcp://127.0.0.1:1", "svc", "i", &partial, &p), TREATY_EINVAL);
    cr_assert_eq(treaty_participant_new("nonsense://x", "svc", "i", &h, &p), TREATY_EINVAL);
    cr_assert_null(p);
    cr_assert_not_null(treaty_participant_errmsg(NULL));
}

/* ------------------------------------------------- PostgreSQL participant */

struct testdb {
    char name[64];
    char conninfo[1024];
    PGconn *conn; /* the test's own view of the database */
};

static struct testdb db;
static atomic_int work_calls;

static const char *base_conninfo(void)
{
    const char *base = getenv("TREATY_TEST_PG");
    if (base == NULL || *base == '\0')
        cr_assert_fail("TREATY_TEST_PG is not set: these tests need a PostgreSQL "
                       "(run them through `make test` or tests/run.sh, or set it to \"host=... port=... user=...\")");
    return base;
}

static PGconn *connect_to(const char *dbname)
{
    char ci[1024];
    snprintf(ci, sizeof ci, "%s dbname=%s", base_conninfo(), dbname);
    PGconn *c = PQconnectdb(ci);
    cr_assert_eq(PQstatus(c), CONNECTION_OK, "connect %s: %s", ci, PQerrorMessage(c));
    return c;
}

static void sql_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    cr_assert(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql,
              PQerrorMessage(c));
    PQclear(r);
}

static long sql_long(const char *sql)
{
    PGresult *r = PQexec(db.conn, sql);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(db.conn));
    cr_assert_eq(PQntuples(r), 1);
    long v = atol(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

static void db_setup(void)
{
    static int n;
    snprintf(db.name, sizeof db.name, "sdk_test_%ld_%d", (long)getpid(), n++);
    PGconn *c = connect_to("postgres");
    char sql[256];
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", db.name);
    sql_ok(c, sql);
    PQfinish(c);
    snprintf(db.conninfo, sizeof db.conninfo, "%s dbname=%s", base_conninfo(), db.name);
    db.conn = connect_to(db.name);
    sql_ok(db.conn, "CREATE TABLE items (txid uuid NOT NULL, branch integer NOT NULL, payload text NOT NULL)");
    atomic_store(&work_calls, 0);
}

static void db_teardown(void)
{
    if (db.conn == NULL)
        return;
    /* leave nothing prepared behind, then drop the database */
    PGresult *r = PQexec(db.conn, "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()");
    if (PQresultStatus(r) == PGRES_TUPLES_OK) {
        for (int i = 0; i < PQntuples(r); i++) {
            char sql[256];
            snprintf(sql, sizeof sql, "ROLLBACK PREPARED '%s'", PQgetvalue(r, i, 0));
            PQclear(PQexec(db.conn, sql));
        }
    }
    PQclear(r);
    PQfinish(db.conn);
    db.conn = NULL;
    PGconn *c = connect_to("postgres");
    char sql[256];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", db.name);
    PQclear(PQexec(c, sql));
    PQfinish(c);
}

/* Inserts (txid, branch, payload) into items. payload "no" votes NO,
 * "fail" returns an error, "deallocate" also drops the SDK's prepared
 * statements from the session (as DISCARD ALL or a pooler would). */
static int work(void *arg, struct pg_conn *conn, const treaty_branch_t *b, char *reason)
{
    (void)arg;
    atomic_fetch_add(&work_calls, 1);
    char payload[128], ids[TREATY_TXID_STRLEN], branch[16];
    size_t n = b->len < sizeof payload - 1 ? b->len : sizeof payload - 1;
    memcpy(payload, b->payload, n);
    payload[n] = '\0';
    if (strcmp(payload, "no") == 0) {
        snprintf(reason, TREATY_REASON_MAX, "refused: %s", payload);
        return TREATY_VOTE_NO;
    }
    if (strcmp(payload, "deallocate") == 0)
        PQclear(PQexec(conn, "DEALLOCATE ALL"));
    treaty_txid_format(&b->txid, ids);
    snprintf(branch, sizeof branch, "%u", b->branch);
    const char *v[3] = {ids, branch, payload};
    PGresult *r = PQexecParams(conn, "INSERT INTO items (txid, branch, payload) VALUES ($1::uuid, $2::integer, $3)", 3,
                               NULL, v, NULL, NULL, 0);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok)
        return TREATY_EPG;
    if (strcmp(payload, "fail") == 0)
        return TREATY_EBUSY;
    return TREATY_VOTE_YES;
}

static treaty_participant_t *pg_participant(struct fake *f, const char *instance)
{
    treaty_participant_t *p = NULL;
    int rc = treaty_pg_participant_new(f->endpoint, "bank", instance, db.conninfo, work, NULL, &p);
    cr_assert_eq(rc, 0, "treaty_pg_participant_new: %s: %s", treaty_err_name(rc), treaty_participant_errmsg(p));
    cr_assert_eq(treaty_participant_start(p), 0);
    return p;
}

static void gid_of(const treaty_txid_t *id, unsigned branch, char *gid)
{
    char ids[TREATY_TXID_STRLEN];
    snprintf(gid, 64, "treaty:%s:%u", treaty_txid_format(id, ids), branch);
}

static long prepared_count(const treaty_txid_t *id, unsigned branch)
{
    char gid[64], sql[256];
    gid_of(id, branch, gid);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_prepared_xacts WHERE gid = '%s'", gid);
    return sql_long(sql);
}

static long items_count(const treaty_txid_t *id)
{
    char ids[TREATY_TXID_STRLEN], sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM items WHERE txid = '%s'", treaty_txid_format(id, ids));
    return sql_long(sql);
}

Test(pg, creates_the_barrier_table, .init = db_setup, .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    fake_open(&f);
    treaty_participant_t *p = pg_participant(&f, "bank-1");
    cr_assert_eq(sql_long("SELECT count(*) FROM information_schema.tables WHERE table_name = 'treaty_barrier'"), 1);
    treaty_participant_destroy(&p);
    /* a second participant on the same database finds the table there */
    p = pg_participant(&f, "bank-2");
    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(pg, prepare_then_commit_applies_and_acks, .init = db_setup, .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    fake_open(&f);
    treaty_participant_t *p = pg_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);

    treaty_txid_t a = new_txid();
    send_prepare(&f, &hello, &a, 1, 0, "debit 10");
    expect_vote(&f, &a, 1, TREATY_VOTE_YES, &g);
    /* durable but undecided: prepared, not visible */
    cr_assert_eq(prepared_count(&a, 1), 1);
    cr_assert_eq(items_count(&a), 0);

    fake_send(&f, &hello, WIRE_COMMIT, &a, 1, 0, 0, NULL, 0);
    expect_ack(&f, &a, 1, TREATY_STATUS_COMMITTED);
    cr_assert_eq(prepared_count(&a, 1), 0);
    cr_assert_eq(items_count(&a), 1);
    cr_assert_eq(sql_long("SELECT count(*) FROM treaty_barrier"), 1);

    /* a duplicate COMMIT is acknowledged again */
    fake_send(&f, &hello, WIRE_COMMIT, &a, 1, 1, 0, NULL, 0);
    expect_ack(&f, &a, 1, TREATY_STATUS_COMMITTED);
    cr_assert_eq(items_count(&a), 1);

    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(pg, duplicate_prepare_does_not_apply_work_twice, .init = db_setup, .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    fake_open(&f);
    treaty_participant_t *p = pg_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);

    treaty_txid_t a = new_txid(), b = new_txid();
    send_prepare(&f, &hello, &a, 0, 0, "credit 5");
    expect_vote(&f, &a, 0, TREATY_VOTE_YES, &g);
    send_prepare(&f, &hello, &a, 0, 1, "credit 5"); /* re-sent PREPARE */
    expect_vote(&f, &a, 0, TREATY_VOTE_YES, &g);
    cr_assert_eq(g.hdr.attempt, 1);
    cr_assert_eq(atomic_load(&work_calls), 1, "work ran again for a duplicate PREPARE");
    cr_assert_eq(prepared_count(&a, 0), 1);

    fake_send(&f, &hello, WIRE_COMMIT, &a, 0, 0, 0, NULL, 0);
    expect_ack(&f, &a, 0, TREATY_STATUS_COMMITTED);

    /* a stale PREPARE after the commit: no work, no vote (the next VOTE is b's) */
    send_prepare(&f, &hello, &a, 0, 2, "credit 5");
    send_prepare(&f, &hello, &b, 0, 0, "other");
    expect_vote(&f, &b, 0, TREATY_VOTE_YES, &g);
    cr_assert_eq(atomic_load(&work_calls), 2);
    cr_assert_eq(items_count(&a), 1);
    cr_assert_eq(prepared_count(&a, 0), 0);

    fake_send(&f, &hello, WIRE_ABORT, &b, 0, 0, 0, NULL, 0);
    expect_ack(&f, &b, 0, TREATY_STATUS_ABORTED);
    cr_assert_eq(items_count(&b), 0);
    cr_assert_eq(prepared_count(&b, 0), 0);

    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(pg, no_vote_and_errors_roll_back, .init = db_setup, .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    fake_open(&f);
    treaty_participant_t *p = pg_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);

    treaty_txid_t a = new_txid(), b = new_txid(), c = new_txid();
    send_prepare(&f, &hello, &a, 2, 0, "no");
    expect_vote(&f, &a, 2, TREATY_VOTE_NO, &g);
    cr_assert_str_eq(g.frame[0], "refused: no");
    send_prepare(&f, &hello, &b, 0, 0, "fail"); /* error: rolled back, no vote */
    send_prepare(&f, &hello, &c, 0, 0, "fine");
    expect_vote(&f, &c, 0, TREATY_VOTE_YES, &g);
    cr_assert_eq(items_count(&a), 0);
    cr_assert_eq(items_count(&b), 0);
    cr_assert_eq(prepared_count(&a, 2), 0);
    cr_assert_eq(prepared_count(&b, 0), 0);
    cr_assert_eq(sql_long("SELECT count(*) FROM treaty_barrier"), 0, "barrier rows of rolled-back branches");

    /* the NO-voted branch is aborted: nothing to roll back, still ACKed */
    fake_send(&f, &hello, WIRE_ABORT, &a, 2, 0, 0, NULL, 0);
    expect_ack(&f, &a, 2, TREATY_STATUS_ABORTED);
    fake_send(&f, &hello, WIRE_ABORT, &c, 0, 0, 0, NULL, 0);
    expect_ack(&f, &c, 0, TREATY_STATUS_ABORTED);
    cr_assert_eq(prepared_count(&c, 0), 0);
    cr_assert_eq(items_count(&c), 0);

    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(pg, abort_of_unknown_gid_acks, .init = db_setup, .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    struct got hello;
    fake_open(&f);
    treaty_participant_t *p = pg_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);
    treaty_txid_t a = new_txid();
    fake_send(&f, &hello, WIRE_ABORT, &a, 9, 0, 0, NULL, 0);
    expect_ack(&f, &a, 9, TREATY_STATUS_ABORTED);
    treaty_participant_destroy(&p);
    fake_close(&f);
}

/* The first ACK that arrives must be for id/branch: the decisions sent before
 * the one for id were handled first (one message at a time, in order), so
 * none of them was acknowledged. */
static void expect_first_ack(struct fake *f, const treaty_txid_t *id, unsigned branch, unsigned status,
                             const char *unacked)
{
    struct got g;
    char want[TREATY_TXID_STRLEN], got[TREATY_TXID_STRLEN];
    treaty_txid_t gid;
    cr_assert(fake_expect(f, WIRE_ACK, NULL, &g, WAIT_MS), "no ACK arrived");
    memcpy(gid.b, g.hdr.txid, 16);
    cr_assert_eq(memcmp(g.hdr.txid, id->b, 16), 0, "%s was acknowledged (ACK %s:%u code %u came before the one for %s)",
                 unacked, treaty_txid_format(&gid, got), g.hdr.branch, g.hdr.code, treaty_txid_format(id, want));
    cr_assert_eq(g.hdr.branch, branch);
    cr_assert_eq(g.hdr.code, status);
}

/* What a twin instance sharing the database does behind the participant's
 * back, over its own connection c: end a prepared branch ... */
static void twin_finish(PGconn *c, const char *verb, const treaty_txid_t *id, unsigned branch)
{
    char gid[64], sql[256];
    gid_of(id, branch, gid);
    snprintf(sql, sizeof sql, "%s '%s'", verb, gid); /* ROLLBACK PREPARED, COMMIT PREPARED, PREPARE TRANSACTION */
    sql_ok(c, sql);
}

/* ... or begin preparing one: BEGIN, its barrier row and its work, left open. */
static void twin_begin(PGconn *c, const treaty_txid_t *id, unsigned branch)
{
    char ids[TREATY_TXID_STRLEN], sql[512];
    treaty_txid_format(id, ids);
    snprintf(sql, sizeof sql,
             "BEGIN; INSERT INTO treaty_barrier (txid, branch, op) VALUES ('%s', %u, 'prepare'); "
             "INSERT INTO items VALUES ('%s', %u, 'twin')",
             ids, branch, ids, branch);
    sql_ok(c, sql);
}

static bool errmsg_has(treaty_participant_t *p, const char *text)
{
    return strstr(treaty_participant_errmsg(p), text) != NULL;
}

/* Two instances of a service share one database; one was told ABORT and
 * rolled the branch back while the other had voted YES for it. A COMMIT that
 * then finds no prepared transaction must not be acknowledged: the branch
 * never committed. */
Test(pg, commit_of_a_branch_rolled_back_behind_its_back_is_not_acked, .init = db_setup, .fini = db_teardown,
     .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    fake_open(&f);
    treaty_participant_t *p = pg_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);

    treaty_txid_t a = new_txid(), b = new_txid();
    send_prepare(&f, &hello, &a, 0, 0, "debit 10");
    expect_vote(&f, &a, 0, TREATY_VOTE_YES, &g);
    send_prepare(&f, &hello, &b, 0, 0, "credit 10");
    expect_vote(&f, &b, 0, TREATY_VOTE_YES, &g);
    /* the twin instance, told ABORT for a, rolls it back */
    twin_finish(db.conn, "ROLLBACK PREPARED", &a, 0);

    fake_send(&f, &hello, WIRE_COMMIT, &a, 0, 0, 0, NULL, 0);
    fake_send(&f, &hello, WIRE_COMMIT, &b, 0, 0, 0, NULL, 0);
    expect_first_ack(&f, &b, 0, TREATY_STATUS_COMMITTED, "the COMMIT of the rolled-back branch");
    cr_assert_eq(items_count(&a), 0);
    cr_assert_eq(items_count(&b), 1);
    cr_assert(errmsg_has(p, "neither prepared nor committed"), "errmsg: %s", treaty_participant_errmsg(p));

    /* re-sent: still not acknowledged; a duplicate COMMIT of the branch
     * that did commit still is */
    fake_send(&f, &hello, WIRE_COMMIT, &a, 0, 1, 0, NULL, 0);
    fake_send(&f, &hello, WIRE_COMMIT, &b, 0, 1, 0, NULL, 0);
    expect_first_ack(&f, &b, 0, TREATY_STATUS_COMMITTED, "the re-sent COMMIT of the rolled-back branch");
    cr_assert_eq(items_count(&b), 1);

    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(pg, abort_of_a_committed_branch_is_not_acked, .init = db_setup, .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    fake_open(&f);
    treaty_participant_t *p = pg_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);

    treaty_txid_t a = new_txid(), c = new_txid();
    send_prepare(&f, &hello, &a, 2, 0, "debit 10");
    expect_vote(&f, &a, 2, TREATY_VOTE_YES, &g);
    fake_send(&f, &hello, WIRE_COMMIT, &a, 2, 0, 0, NULL, 0);
    expect_ack(&f, &a, 2, TREATY_STATUS_COMMITTED);
    /* COMMIT twice: the branch did commit, so the duplicate is acknowledged */
    fake_send(&f, &hello, WIRE_COMMIT, &a, 2, 1, 0, NULL, 0);
    expect_ack(&f, &a, 2, TREATY_STATUS_COMMITTED);

    /* an abort decision for a committed branch: a violation, never ACKed */
    fake_send(&f, &hello, WIRE_ABORT, &a, 2, 0, 0, NULL, 0);
    fake_send(&f, &hello, WIRE_ABORT, &c, 0, 0, 0, NULL, 0); /* never prepared: ACKed */
    expect_first_ack(&f, &c, 0, TREATY_STATUS_ABORTED, "the ABORT of the committed branch");
    cr_assert(errmsg_has(p, "committed"), "errmsg: %s", treaty_participant_errmsg(p));
    cr_assert_eq(items_count(&a), 1);

    treaty_participant_destroy(&p);
    fake_close(&f);
}

/* A twin instance is preparing the branch (its transaction holds the barrier
 * row, uncommitted) when a COMMIT finds no prepared transaction: nothing can
 * be said yet, so no ACK; once the twin's PREPARE TRANSACTION is done, the
 * re-sent COMMIT commits it. */
Test(pg, commit_while_a_twin_holds_the_branch_is_not_acked_until_decided, .init = db_setup, .fini = db_teardown,
     .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    fake_open(&f);
    treaty_participant_t *p = pg_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);
    PGconn *twin = connect_to(db.name);

    treaty_txid_t a = new_txid(), b = new_txid();
    send_prepare(&f, &hello, &b, 0, 0, "other");
    expect_vote(&f, &b, 0, TREATY_VOTE_YES, &g);
    twin_begin(twin, &a, 0);

    fake_send(&f, &hello, WIRE_COMMIT, &a, 0, 0, 0, NULL, 0);
    fake_send(&f, &hello, WIRE_COMMIT, &b, 0, 0, 0, NULL, 0);
    expect_first_ack(&f, &b, 0, TREATY_STATUS_COMMITTED, "the COMMIT of the branch the twin was preparing");
    cr_assert(errmsg_has(p, "held by another transaction"), "errmsg: %s", treaty_participant_errmsg(p));

    twin_finish(twin, "PREPARE TRANSACTION", &a, 0);
    fake_send(&f, &hello, WIRE_COMMIT, &a, 0, 1, 0, NULL, 0);
    expect_ack(&f, &a, 0, TREATY_STATUS_COMMITTED);
    cr_assert_eq(items_count(&a), 1);
    cr_assert_eq(prepared_count(&a, 0), 0);

    PQfinish(twin);
    treaty_participant_destroy(&p);
    fake_close(&f);
}

/* treaty_pg_barrier_purge(0) from another instance of the service on the
 * same database (a handle that is not started), as a janitor would: every
 * barrier row of a UUIDv7 txid created before now goes, and the purge
 * horizon moves to now. Txids made before the call are older than that. */
static long purge_from_janitor(struct fake *f)
{
    treaty_participant_t *j = NULL;
    int rc = treaty_pg_participant_new(f->endpoint, "bank", "bank-janitor", db.conninfo, work, NULL, &j);
    cr_assert_eq(rc, 0, "janitor: %s: %s", treaty_err_name(rc), treaty_participant_errmsg(j));
    sleep_ms(5); /* the horizon (ms) comes after every txid made so far */
    long n = treaty_pg_barrier_purge(j, 0);
    cr_assert_geq(n, 0, "purge: %s: %s", treaty_err_name((int)n), treaty_participant_errmsg(j));
    treaty_participant_destroy(&j);
    return n;
}

/* A PREPARE for a txid older than the purge horizon could be a late
 * duplicate of a branch that committed here and whose barrier row is gone:
 * running its work again could apply it twice. It is voted NO. */
Test(pg, late_prepare_older_than_the_purge_horizon_votes_no, .init = db_setup, .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    fake_open(&f);
    treaty_participant_t *p = pg_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);

    treaty_txid_t a = new_txid();
    purge_from_janitor(&f);
    send_prepare(&f, &hello, &a, 0, 0, "debit 10");
    expect_vote(&f, &a, 0, TREATY_VOTE_NO, &g);
    cr_assert(strstr(g.frame[0], "older than the barrier's purge horizon") != NULL, "reason: %s", g.frame[0]);
    cr_assert_eq(atomic_load(&work_calls), 0);
    cr_assert_eq(prepared_count(&a, 0), 0);
    cr_assert_eq(sql_long("SELECT count(*) FROM treaty_barrier"), 0);

    /* a txid made after the purge prepares as usual */
    treaty_txid_t b = new_txid();
    send_prepare(&f, &hello, &b, 0, 0, "debit 10");
    expect_vote(&f, &b, 0, TREATY_VOTE_YES, &g);

    treaty_participant_destroy(&p);
    fake_close(&f);
}

/* A COMMIT finding neither the prepared transaction nor the barrier row of
 * a txid older than the purge horizon cannot be judged: the row may have been
 * purged after the branch committed. It is acknowledged (with a warning):
 * atomicity was settled long before, and the coordinator would re-send
 * forever. */
Test(pg, commit_without_row_older_than_the_purge_horizon_acks, .init = db_setup, .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    fake_open(&f);
    treaty_participant_t *p = pg_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);

    treaty_txid_t a = new_txid();
    send_prepare(&f, &hello, &a, 0, 0, "debit 10");
    expect_vote(&f, &a, 0, TREATY_VOTE_YES, &g);
    fake_send(&f, &hello, WIRE_COMMIT, &a, 0, 0, 0, NULL, 0);
    expect_ack(&f, &a, 0, TREATY_STATUS_COMMITTED);
    cr_assert_eq(purge_from_janitor(&f), 1, "the committed branch's barrier row");

    fake_send(&f, &hello, WIRE_COMMIT, &a, 0, 1, 0, NULL, 0); /* re-sent after the purge */
    expect_ack(&f, &a, 0, TREATY_STATUS_COMMITTED);
    cr_assert(errmsg_has(p, "purge horizon"), "errmsg: %s", treaty_participant_errmsg(p));
    cr_assert_eq(items_count(&a), 1);

    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(pg, in_doubt_branch_is_inquired_after_restart, .init = db_setup, .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    fake_open(&f);
    treaty_participant_t *p = pg_participant(&f, "bank-1");
    expect_hello(&f, "bank-1", &hello);
    treaty_txid_t a = new_txid();
    send_prepare(&f, &hello, &a, 4, 0, "in doubt");
    expect_vote(&f, &a, 4, TREATY_VOTE_YES, &g);
    treaty_participant_destroy(&p); /* "crash" after voting YES */
    cr_assert_eq(prepared_count(&a, 4), 1);

    p = pg_participant(&f, "bank-2");
    expect_hello(&f, "bank-2", &hello);
    send_welcome(&f, &hello, 1000);
    cr_assert(fake_expect(&f, WIRE_INQUIRE, &a, &g, WAIT_MS), "no INQUIRE for the prepared branch");
    cr_assert_eq(g.hdr.branch, 4);
    fake_send(&f, &g, WIRE_COMMIT, &a, 4, 0, 0, NULL, 0);
    expect_ack(&f, &a, 4, TREATY_STATUS_COMMITTED);
    cr_assert_eq(items_count(&a), 1);
    cr_assert_eq(sql_long("SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"), 0);

    treaty_participant_destroy(&p);
    fake_close(&f);
}

/* Runs a PostgreSQL participant in a forked child that SIGKILLs itself at
 * the fault point (TREATY_CRASH_AT). The child never returns. */
static pid_t crash_child(const char *endpoint, const char *point)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid > 0)
        return pid;
    /* child: no Criterion, no inherited sockets or connections */
    setenv("TREATY_CRASH_AT", point, 1);
    treaty_participant_t *p = NULL;
    if (treaty_pg_participant_new(endpoint, "bank", "bank-crash", db.conninfo, work, NULL, &p) < 0 ||
        treaty_participant_start(p) < 0)
        _exit(2);
    sleep_ms(WAIT_MS);
    _exit(3); /* the fault point was never reached */
}

static void expect_killed(pid_t pid)
{
    int status = 0;
    int64_t deadline = now_ms() + WAIT_MS;
    pid_t r;
    while ((r = waitpid(pid, &status, WNOHANG)) == 0 && now_ms() < deadline)
        sleep_ms(20);
    if (r == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        cr_assert_fail("the participant did not reach its fault point");
    }
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child ended with status %d", status);
}

Test(pg, crash_after_prepare_is_recovered_by_inquiry, .init = db_setup, .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    char endpoint[128];
    ipc_endpoint(endpoint, sizeof endpoint);
    pid_t pid = crash_child(endpoint, "participant.after_prepare");
    fake_open_at(&f, endpoint);
    expect_hello(&f, "bank-crash", &hello);
    treaty_txid_t a = new_txid();
    send_prepare(&f, &hello, &a, 0, 0, "crash me");
    expect_killed(pid);
    /* killed after PREPARE TRANSACTION, before its vote */
    cr_assert_eq(prepared_count(&a, 0), 1);

    treaty_participant_t *p = pg_participant(&f, "bank-1");
    expect_hello(&f, "bank-1", &hello);
    send_welcome(&f, &hello, 1000);
    cr_assert(fake_expect(&f, WIRE_INQUIRE, &a, &g, WAIT_MS), "no INQUIRE for the prepared branch");
    fake_send(&f, &g, WIRE_ABORT, &a, 0, 0, 0, NULL, 0); /* presumed abort: no vote was counted */
    expect_ack(&f, &a, 0, TREATY_STATUS_ABORTED);
    cr_assert_eq(prepared_count(&a, 0), 0);
    cr_assert_eq(items_count(&a), 0);

    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(pg, crash_after_commit_then_resent_commit_acks, .init = db_setup, .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    char endpoint[128];
    ipc_endpoint(endpoint, sizeof endpoint);
    fake_open_at(&f, endpoint);
    treaty_participant_t *p = pg_participant(&f, "bank-1");
    expect_hello(&f, "bank-1", &hello);
    treaty_txid_t a = new_txid();
    send_prepare(&f, &hello, &a, 1, 0, "to commit");
    expect_vote(&f, &a, 1, TREATY_VOTE_YES, &g);
    treaty_participant_destroy(&p);
    fake_close(&f); /* fork with no ZeroMQ context alive in this process */

    pid_t pid = crash_child(endpoint, "participant.after_commit");
    fake_open_at(&f, endpoint);
    expect_hello(&f, "bank-crash", &hello);
    fake_send(&f, &hello, WIRE_COMMIT, &a, 1, 0, 0, NULL, 0);
    expect_killed(pid);
    /* killed after COMMIT PREPARED, before its ACK */
    cr_assert_eq(prepared_count(&a, 1), 0);
    cr_assert_eq(items_count(&a), 1);

    p = pg_participant(&f, "bank-2");
    expect_hello(&f, "bank-2", &hello);
    fake_send(&f, &hello, WIRE_COMMIT, &a, 1, 1, 0, NULL, 0); /* the coordinator re-sends */
    expect_ack(&f, &a, 1, TREATY_STATUS_COMMITTED);
    cr_assert_eq(items_count(&a), 1);

    treaty_participant_destroy(&p);
    fake_close(&f);
}

/* Sends PREPARE (branch 0) until a vote comes, as the coordinator re-sends,
 * for up to WAIT_MS. */
static bool prepare_until_voted(struct fake *f, const struct got *hello, const treaty_txid_t *id, const char *payload,
                                struct got *g)
{
    int64_t deadline = now_ms() + WAIT_MS;
    for (unsigned attempt = 0; now_ms() < deadline; attempt++) {
        send_prepare(f, hello, id, 0, attempt, payload);
        if (fake_expect(f, WIRE_VOTE, id, g, 1000))
            return true;
    }
    return false;
}

/* One branch through PREPARE (re-sent until voted when retry), YES, COMMIT
 * and ACK, its work applied once. */
static void commit_branch(struct fake *f, const struct got *hello, const char *payload, bool retry, const char *what)
{
    struct got g;
    treaty_txid_t id = new_txid();
    if (retry) {
        cr_assert(prepare_until_voted(f, hello, &id, payload, &g), "no vote %s", what);
    } else {
        send_prepare(f, hello, &id, 0, 0, payload);
        cr_assert(fake_expect(f, WIRE_VOTE, &id, &g, WAIT_MS), "no vote %s", what);
    }
    cr_assert_eq(g.hdr.code, TREATY_VOTE_YES);
    fake_send(f, hello, WIRE_COMMIT, &id, 0, 0, 0, NULL, 0);
    expect_ack(f, &id, 0, TREATY_STATUS_COMMITTED);
    cr_assert_eq(items_count(&id), 1);
}

Test(pg, prepares_its_check_again_when_the_session_lost_it, .init = db_setup, .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    struct got hello;
    fake_open(&f);
    treaty_participant_t *p = pg_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);

    commit_branch(&f, &hello, "deallocate", false, "before the session lost its prepared statements");
    /* The session no longer holds the barrier check: the first PREPARE may
     * fail (no vote), a re-sent one must be answered. */
    commit_branch(&f, &hello, "after deallocate", true, "once the prepared check was gone");

    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(pg, reconnects_after_its_connection_dies, .init = db_setup, .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    struct got hello;
    fake_open(&f);
    treaty_participant_t *p = pg_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);

    /* One branch first, so that the session holds what the SDK prepares in
     * it (the barrier check), which the new session must prepare again. */
    commit_branch(&f, &hello, "before the restart", false, "before the connection was lost");
    /* what a Postgres restart does to the participant's session */
    cr_assert_eq(sql_long("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND application_name = 'treaty-participant'"),
                 1);
    commit_branch(&f, &hello, "after reconnect", true, "after the connection was lost");

    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(pg, connection_failure_is_reported, .timeout = 120)
{
    char ci[1200];
    snprintf(ci, sizeof ci, "%s dbname=sdk_test_no_such_database", base_conninfo());
    treaty_participant_t *p = NULL;
    int rc = treaty_pg_participant_new("tcp://127.0.0.1:1", "bank", "b1", ci, work, NULL, &p);
    cr_assert_eq(rc, TREATY_EPG);
    cr_assert_not_null(p, "the handle carries the error text");
    cr_assert(strstr(treaty_participant_errmsg(p), "sdk_test_no_such_database") != NULL, "errmsg: %s",
              treaty_participant_errmsg(p));
    treaty_participant_destroy(&p);
    cr_assert_null(p);
}

/* ---------------------------------------------------------------- client */

enum script_kind { SCRIPT_OUTCOME, SCRIPT_RESEND, SCRIPT_ERROR, SCRIPT_QUERY };

/* The fake coordinator on its own thread, for the blocking client calls.
 * It records what it saw; the test thread asserts after joining it. */
struct script {
    struct fake f;
    enum script_kind kind;
    treaty_txid_t txid;
    bool ok;
    char what[128];
    struct got first;
    unsigned attempts[2];
};

static void *script_thread(void *arg)
{
    struct script *s = arg;
    struct got g;
    treaty_txid_t other = s->txid;
    other.b[0] ^= 0xff;

    uint8_t want = s->kind == SCRIPT_QUERY ? WIRE_QUERY : WIRE_SUBMIT;
    if (!fake_expect(&s->f, want, &s->txid, &s->first, WAIT_MS)) {
        snprintf(s->what, sizeof s->what, "no %s arrived", wire_type_name(want));
        return NULL;
    }
    s->attempts[0] = s->first.hdr.attempt;
    struct wire_frame empty = wire_str("");
    switch (s->kind) {
    case SCRIPT_OUTCOME: {
        struct wire_frame r = wire_str("stale");
        fake_send(&s->f, &s->first, WIRE_OUTCOME, &other, 0, 0, TREATY_STATUS_ABORTED, &r, 1);
        fake_send(&s->f, &s->first, WIRE_OUTCOME, &s->txid, TREATY_NO_BRANCH, 0, TREATY_STATUS_PENDING, &empty, 1);
        sleep_ms(50);
        fake_send(&s->f, &s->first, WIRE_OUTCOME, &s->txid, TREATY_NO_BRANCH, 0, TREATY_STATUS_COMMITTED, &empty, 1);
        break;
    }
    case SCRIPT_RESEND: {
        if (!fake_expect(&s->f, WIRE_SUBMIT, &s->txid, &g, WAIT_MS)) {
            snprintf(s->what, sizeof s->what, "the SUBMIT was not re-sent");
            return NULL;
        }
        s->attempts[1] = g.hdr.attempt;
        if (g.nframes != s->first.nframes || strcmp(g.frame[1], s->first.frame[1]) != 0) {
            snprintf(s->what, sizeof s->what, "the re-sent SUBMIT differs");
            return NULL;
        }
        struct wire_frame r = wire_str("branch 1 voted no");
        fake_send(&s->f, &g, WIRE_OUTCOME, &s->txid, 1, 0, TREATY_STATUS_ABORTED, &r, 1);
        break;
    }
    case SCRIPT_ERROR: {
        struct wire_frame r = wire_str("coordinator busy");
        fake_send(&s->f, &s->first, WIRE_ERROR, &s->txid, 0, 0, (unsigned)-TREATY_EBUSY, &r, 1);
        break;
    }
    case SCRIPT_QUERY:
        fake_send(&s->f, &s->first, WIRE_OUTCOME, &s->txid, TREATY_NO_BRANCH, 0, TREATY_STATUS_PENDING, &empty, 1);
        break;
    }
    s->ok = true;
    return NULL;
}

static treaty_txn_t *two_branch_txn(void)
{
    treaty_txn_t *t = NULL;
    cr_assert_eq(treaty_txn_new(&t), 0);
    cr_assert_eq(treaty_txn_add_branch(t, "bank", "debit 10", 8), 0);
    cr_assert_eq(treaty_txn_add_branch(t, "inventory", "", 0), 0);
    return t;
}

static void script_run(struct script *s, pthread_t *th)
{
    cr_assert_eq(pthread_create(th, NULL, script_thread, s), 0);
}

static void script_join(struct script *s, pthread_t th)
{
    pthread_join(th, NULL);
    cr_assert(s->ok, "fake coordinator: %s", s->what);
    fake_close(&s->f);
}

Test(client, submit_receives_outcome, .timeout = 120)
{
    static struct script s;
    pthread_t th;
    treaty_client_t *c = NULL;
    treaty_outcome_t out;
    fake_open(&s.f);
    s.kind = SCRIPT_OUTCOME;
    treaty_txn_t *t = two_branch_txn();
    s.txid = *treaty_txn_id(t);
    cr_assert_eq(treaty_client_new(s.f.endpoint, &c), 0);
    script_run(&s, &th);

    int rc = treaty_client_submit(c, t, WAIT_MS, &out);
    script_join(&s, th);
    cr_assert_eq(rc, 0, "%s: %s", treaty_err_name(rc), treaty_client_errmsg(c));
    cr_assert_eq(out.status, TREATY_STATUS_COMMITTED, "status %s", treaty_status_name(out.status));
    cr_assert_eq(out.error, 0);
    cr_assert_eq(memcmp(&out.txid, &s.txid, sizeof out.txid), 0);
    cr_assert_eq(out.failed_branch, TREATY_NO_BRANCH);
    cr_assert_str_eq(out.reason, "");

    /* what the coordinator saw: timeout, then service/payload per branch */
    cr_assert_eq(s.first.nframes, 5);
    uint32_t timeout;
    struct wire_frame tf = {(const uint8_t *)s.first.frame[0], s.first.len[0]};
    cr_assert(wire_get_u32(&tf, &timeout));
    /* the prepare deadline leaves the client a margin: a quarter, at most 1 s */
    cr_assert_eq(timeout, WAIT_MS - (WAIT_MS / 4 < 1000 ? WAIT_MS / 4 : 1000));
    cr_assert_str_eq(s.first.frame[1], "bank");
    cr_assert_str_eq(s.first.frame[2], "debit 10");
    cr_assert_str_eq(s.first.frame[3], "inventory");
    cr_assert_eq(s.first.len[4], 0);

    treaty_txn_destroy(&t);
    cr_assert_null(t);
    treaty_client_destroy(&c);
    cr_assert_null(c);
    treaty_client_destroy(&c);
}

Test(client, submit_resends_while_waiting, .timeout = 120)
{
    static struct script s;
    pthread_t th;
    treaty_client_t *c = NULL;
    treaty_outcome_t out;
    fake_open(&s.f);
    s.kind = SCRIPT_RESEND;
    treaty_txn_t *t = two_branch_txn();
    s.txid = *treaty_txn_id(t);
    cr_assert_eq(treaty_client_new(s.f.endpoint, &c), 0);
    script_run(&s, &th);

    int rc = treaty_client_submit(c, t, WAIT_MS, &out);
    script_join(&s, th);
    cr_assert_eq(rc, 0, "%s: %s", treaty_err_name(rc), treaty_client_errmsg(c));
    cr_assert_gt(s.attempts[1], s.attempts[0], "attempt counts the re-sends");
    cr_assert_eq(out.status, TREATY_STATUS_ABORTED);
    cr_assert_eq(out.failed_branch, 1);
    cr_assert_str_eq(out.reason, "branch 1 voted no");

    treaty_txn_destroy(&t);
    treaty_client_destroy(&c);
}

Test(client, error_reply_is_an_answer, .timeout = 120)
{
    static struct script s;
    pthread_t th;
    treaty_client_t *c = NULL;
    treaty_outcome_t out;
    fake_open(&s.f);
    s.kind = SCRIPT_ERROR;
    treaty_txn_t *t = two_branch_txn();
    s.txid = *treaty_txn_id(t);
    cr_assert_eq(treaty_client_new(s.f.endpoint, &c), 0);
    script_run(&s, &th);

    int rc = treaty_client_submit(c, t, WAIT_MS, &out);
    script_join(&s, th);
    cr_assert_eq(rc, 0);
    cr_assert_eq(out.error, TREATY_EBUSY);
    cr_assert_eq(out.status, TREATY_STATUS_NONE);
    cr_assert_str_eq(out.reason, "coordinator busy");

    treaty_txn_destroy(&t);
    treaty_client_destroy(&c);
}

Test(client, query_returns_pending, .timeout = 120)
{
    static struct script s;
    pthread_t th;
    treaty_client_t *c = NULL;
    treaty_outcome_t out;
    fake_open(&s.f);
    s.kind = SCRIPT_QUERY;
    s.txid = new_txid();
    cr_assert_eq(treaty_client_new(s.f.endpoint, &c), 0);
    script_run(&s, &th);

    int rc = treaty_client_query(c, &s.txid, WAIT_MS, &out);
    script_join(&s, th);
    cr_assert_eq(rc, 0);
    cr_assert_eq(out.status, TREATY_STATUS_PENDING);
    cr_assert_eq(memcmp(&out.txid, &s.txid, sizeof out.txid), 0);
    treaty_client_destroy(&c);
}

Test(client, no_coordinator_times_out_unknown, .timeout = 120)
{
    /* a port that was just free: nobody answers */
    struct fake f;
    fake_open(&f);
    char endpoint[128];
    snprintf(endpoint, sizeof endpoint, "%s", f.endpoint);
    fake_close(&f);

    treaty_client_t *c = NULL;
    treaty_outcome_t out;
    cr_assert_eq(treaty_client_new(endpoint, &c), 0);
    treaty_txn_t *t = two_branch_txn();
    int rc = treaty_client_submit(c, t, 300, &out);
    cr_assert_eq(rc, TREATY_ETIMEDOUT);
    cr_assert_eq(out.status, TREATY_STATUS_UNKNOWN);
    cr_assert_eq(memcmp(&out.txid, treaty_txn_id(t), sizeof out.txid), 0);

    treaty_txid_t q = new_txid();
    rc = treaty_client_query(c, &q, 200, &out);
    cr_assert_eq(rc, TREATY_ETIMEDOUT);
    cr_assert_eq(out.status, TREATY_STATUS_UNKNOWN);
    cr_assert_eq(memcmp(&out.txid, &q, sizeof q), 0);

    treaty_txn_destroy(&t);
    treaty_client_destroy(&c);
}

struct async_result {
    int calls;
    treaty_outcome_t out;
};

static void on_outcome(void *arg, const treaty_outcome_t *o)
{
    struct async_result *r = arg;
    r->calls++;
    r->out = *o;
}

static void on_outcome_noop(void *arg, const treaty_outcome_t *o)
{
    (void)arg;
    (void)o;
}

/* Drives c's callbacks until *calls reaches want, or WAIT_MS. */
static void process_until(treaty_client_t *c, const int *calls, int want)
{
    int64_t deadline = now_ms() + WAIT_MS;
    while (*calls < want && now_ms() < deadline) {
        int wait = treaty_client_next_timeout(c);
        zmq_pollitem_t item = {NULL, treaty_client_fd(c), ZMQ_POLLIN, 0};
        zmq_poll(&item, 1, wait < 0 || wait > 100 ? 100 : wait);
        cr_assert_geq(treaty_client_process(c), 0);
    }
}

Test(client, async_submit_outcome_and_timeout, .timeout = 120)
{
    struct fake f;
    struct got g;
    struct async_result ra = {0}, rb = {0};
    treaty_client_t *c = NULL;
    fake_open(&f);
    cr_assert_eq(treaty_client_new(f.endpoint, &c), 0);
    cr_assert_eq(treaty_client_next_timeout(c), -1, "nothing pending");
    cr_assert_geq(treaty_client_fd(c), 0);

    treaty_txn_t *a = two_branch_txn(), *b = two_branch_txn();
    treaty_txid_t ida = *treaty_txn_id(a), idb = *treaty_txn_id(b);
    cr_assert_eq(treaty_client_submit_async(c, a, WAIT_MS, on_outcome, &ra), 0);
    cr_assert_eq(treaty_client_submit_async(c, b, 300, on_outcome, &rb), 0);
    treaty_txn_destroy(&a); /* the request keeps its own copy */
    treaty_txn_destroy(&b);
    cr_assert_geq(treaty_client_next_timeout(c), 0);

    cr_assert(fake_expect(&f, WIRE_SUBMIT, &ida, &g, WAIT_MS));
    struct wire_frame r = wire_str("");
    fake_send(&f, &g, WIRE_OUTCOME, &ida, TREATY_NO_BRANCH, 0, TREATY_STATUS_PENDING, &r, 1);
    fake_send(&f, &g, WIRE_OUTCOME, &ida, TREATY_NO_BRANCH, 0, TREATY_STATUS_COMMITTED, &r, 1);

    process_until(c, &ra.calls, 1);
    process_until(c, &rb.calls, 1);
    cr_assert_eq(ra.calls, 1);
    cr_assert_eq(ra.out.status, TREATY_STATUS_COMMITTED);
    cr_assert_eq(memcmp(&ra.out.txid, &ida, sizeof ida), 0);
    cr_assert_eq(rb.calls, 1);
    cr_assert_eq(rb.out.status, TREATY_STATUS_UNKNOWN);
    cr_assert_eq(memcmp(&rb.out.txid, &idb, sizeof idb), 0);
    cr_assert_eq(treaty_client_next_timeout(c), -1);
    cr_assert_eq(treaty_client_process(c), 0);

    treaty_client_destroy(&c);
    fake_close(&f);
}

#define MANY 3000

struct many_result {
    int calls;
    treaty_outcome_t out;
    int *total;
};

static void on_many(void *arg, const treaty_outcome_t *o)
{
    struct many_result *r = arg;
    r->calls++;
    r->out = *o;
    (*r->total)++;
}

/* Thousands of requests in flight on one handle, answered in the reverse of
 * their order: each callback runs once, with its own transaction's outcome. */
Test(client, many_async_requests_complete_once_each, .timeout = 120)
{
    struct fake f;
    treaty_client_t *c = NULL;
    fake_open(&f);
    cr_assert_eq(treaty_client_new(f.endpoint, &c), 0);

    static struct many_result res[MANY];
    static treaty_txid_t ids[MANY];
    static struct got g[MANY];
    int total = 0;
    for (int i = 0; i < MANY; i++) {
        treaty_txn_t *t = two_branch_txn();
        ids[i] = *treaty_txn_id(t);
        res[i] = (struct many_result){.calls = 0, .total = &total};
        cr_assert_eq(treaty_client_submit_async(c, t, WAIT_MS, on_many, &res[i]), 0);
        treaty_txn_destroy(&t);
    }
    /* The fake takes every SUBMIT (a re-sent one is ignored). The client is
     * driven meanwhile: what did not fit its socket's queue is re-sent. */
    static bool seen[MANY];
    int nseen = 0;
    int64_t deadline = now_ms() + WAIT_MS;
    while (nseen < MANY) {
        struct got one;
        cr_assert_lt(now_ms(), deadline, "only %d of %d SUBMITs arrived", nseen, MANY);
        if (!fake_recv(&f, &one, 50)) {
            cr_assert_eq(treaty_client_process(c), 0);
            continue;
        }
        cr_assert_eq(one.hdr.type, WIRE_SUBMIT);
        for (int i = 0; i < MANY; i++) {
            if (!seen[i] && memcmp(one.hdr.txid, ids[i].b, TREATY_TXID_LEN) == 0) {
                seen[i] = true;
                g[i] = one;
                nseen++;
                break;
            }
        }
    }
    /* In slices that fit the sockets' queues (1000 messages by default). */
    struct wire_frame r = wire_str("");
    for (int i = MANY - 1; i >= 0; i--) {
        fake_send(&f, &g[i], WIRE_OUTCOME, &ids[i], TREATY_NO_BRANCH, 0,
                  i % 2 ? TREATY_STATUS_ABORTED : TREATY_STATUS_COMMITTED, &r, 1);
        if ((MANY - i) % 500 == 0 || i == 0)
            process_until(c, &total, MANY - i);
    }
    cr_assert_eq(total, MANY);
    for (int i = 0; i < MANY; i++) {
        cr_assert_eq(res[i].calls, 1, "request %d: %d callbacks", i, res[i].calls);
        cr_assert_eq(memcmp(&res[i].out.txid, &ids[i], sizeof ids[i]), 0, "request %d: another txid", i);
        cr_assert_eq(res[i].out.status, i % 2 ? TREATY_STATUS_ABORTED : TREATY_STATUS_COMMITTED);
    }
    cr_assert_eq(treaty_client_next_timeout(c), -1, "nothing left in flight");
    cr_assert_eq(treaty_client_process(c), 0);
    treaty_client_destroy(&c);
    fake_close(&f);
}

Test(client, arguments_are_checked)
{
    treaty_txn_t *t = NULL;
    treaty_client_t *c = NULL;
    treaty_outcome_t out;
    cr_assert_eq(treaty_txn_new(&t), 0);
    cr_assert_eq(treaty_txn_add_branch(t, "bad service", "x", 1), TREATY_EINVAL);
    cr_assert_eq(treaty_txn_add_branch(t, "", "x", 1), TREATY_EINVAL);
    cr_assert_eq(treaty_txn_add_branch(t, "svc", NULL, 3), TREATY_EINVAL);
    cr_assert_eq(treaty_client_new("tcp://127.0.0.1:1", &c), 0);
    cr_assert_eq(treaty_client_submit(c, t, 1000, &out), TREATY_EINVAL, "no branches");
    for (int i = 0; i < WIRE_MAX_BRANCHES; i++)
        cr_assert_eq(treaty_txn_add_branch(t, "svc", "x", 1), 0);
    cr_assert_eq(treaty_txn_add_branch(t, "svc", "x", 1), TREATY_ETOOBIG);
    cr_assert_eq(treaty_client_submit(c, t, 0, &out), TREATY_EINVAL, "timeout must be positive");
    treaty_client_destroy(&c);
    cr_assert_eq(treaty_client_new("nonsense://", &c), TREATY_EINVAL);
    cr_assert_null(c);
    treaty_txn_destroy(&t);
    treaty_txn_destroy(&t);
}

/* ------------------------------------------------------------ saga client */

Test(saga, builder_checks_arguments)
{
    treaty_saga_t *s = NULL;
    treaty_client_t *c = NULL;
    treaty_outcome_t out;
    treaty_txid_t id = new_txid();

    cr_assert_eq(treaty_saga_new(NULL), TREATY_EINVAL);
    cr_assert_eq(treaty_saga_new_with_id(NULL, &s), TREATY_EINVAL);
    cr_assert_null(s);
    cr_assert_eq(treaty_saga_new_with_id(&id, &s), 0);
    cr_assert_eq(memcmp(treaty_saga_id(s), &id, sizeof id), 0);
    cr_assert_null(treaty_saga_id(NULL));

    cr_assert_eq(treaty_saga_add_parallel_step(s, "bank", "debit", "1", 1, "refund", "1", 1), TREATY_ESTATE,
                 "no previous step to run in parallel with");
    cr_assert_eq(treaty_saga_add_step(s, "bad service", "debit", "1", 1, "refund", "1", 1), TREATY_EINVAL);
    cr_assert_eq(treaty_saga_add_step(s, "bank", "", "1", 1, "refund", "1", 1), TREATY_EINVAL);
    cr_assert_eq(treaty_saga_add_step(s, "bank", "debit", "1", 1, NULL, "1", 1), TREATY_EINVAL);
    cr_assert_eq(treaty_saga_add_step(s, "bank", "debit", "1", 1, "re fund", "1", 1), TREATY_EINVAL);
    cr_assert_eq(treaty_saga_add_step(s, "bank", "debit", NULL, 3, "refund", "1", 1), TREATY_EINVAL);
    cr_assert_eq(treaty_saga_add_step(s, "bank", "debit", "1", 1, "refund", NULL, 2), TREATY_EINVAL);
    cr_assert_eq(treaty_saga_add_step(NULL, "bank", "debit", "1", 1, "refund", "1", 1), TREATY_EINVAL);

    cr_assert_eq(treaty_client_new("tcp://127.0.0.1:1", &c), 0);
    cr_assert_eq(treaty_client_run_saga(c, s, 1000, &out), TREATY_EINVAL, "no steps");
    cr_assert_eq(treaty_client_run_saga_async(c, s, 1000, on_outcome_noop, NULL), TREATY_EINVAL, "no steps");

    /* indices count up; NULL payloads of length 0 are fine */
    cr_assert_eq(treaty_saga_add_step(s, "bank", "debit", NULL, 0, "refund", NULL, 0), 0);
    cr_assert_eq(treaty_saga_add_parallel_step(s, "shop", "reserve", "x", 1, "release", "", 0), 1);
    for (int i = 2; i < WIRE_MAX_STEPS; i++)
        cr_assert_eq(treaty_saga_add_step(s, "svc", "a", "x", 1, "c", "y", 1), i);
    cr_assert_eq(treaty_saga_add_step(s, "svc", "a", "x", 1, "c", "y", 1), TREATY_ETOOBIG);
    cr_assert_eq(treaty_saga_add_parallel_step(s, "svc", "a", "x", 1, "c", "y", 1), TREATY_ETOOBIG);

    treaty_retry_t r = {0};
    cr_assert_eq(treaty_saga_set_retry(s, 0, &r), 0, "all defaults");
    cr_assert_eq(treaty_saga_set_retry(s, WIRE_MAX_STEPS, &r), TREATY_EINVAL, "unknown step");
    cr_assert_eq(treaty_saga_set_retry(s, 0, NULL), TREATY_EINVAL);
    r.max_attempts = 70000; /* does not fit the wire's u16 */
    cr_assert_eq(treaty_saga_set_retry(s, 0, &r), TREATY_EINVAL);
    cr_assert_eq(treaty_saga_set_deadline(s, 0), 0);
    cr_assert_eq(treaty_saga_set_deadline(NULL, 10), TREATY_EINVAL);

    cr_assert_eq(treaty_client_run_saga(c, s, 0, &out), TREATY_EINVAL, "timeout must be positive");
    cr_assert_eq(treaty_client_run_saga(c, NULL, 1000, &out), TREATY_EINVAL);
    cr_assert_eq(treaty_client_run_saga(NULL, s, 1000, &out), TREATY_EINVAL);
    cr_assert_eq(treaty_client_run_saga_async(c, s, 1000, NULL, NULL), TREATY_EINVAL);

    treaty_client_destroy(&c);
    treaty_saga_destroy(&s);
    cr_assert_null(s);
    treaty_saga_destroy(&s);
    treaty_saga_destroy(NULL);
}

static struct wire_policy policy_of(const struct got *g, size_t step)
{
    struct wire_policy pol;
    size_t i = 1 + WIRE_SAGA_FRAMES_PER_STEP * step + 5;
    struct wire_frame f = {(const uint8_t *)g->frame[i], g->len[i]};
    cr_assert(wire_decode_policy(&f, &pol), "step %zu: policy frame of %zu bytes", step, g->len[i]);
    return pol;
}

Test(saga, sends_steps_policies_and_groups, .timeout = 120)
{
    struct fake f;
    struct got g, again;
    struct async_result res = {0};
    treaty_client_t *c = NULL;
    treaty_saga_t *s = NULL;
    fake_open(&f);
    cr_assert_eq(treaty_client_new(f.endpoint, &c), 0);
    cr_assert_eq(treaty_saga_new(&s), 0);
    cr_assert_eq(treaty_saga_add_step(s, "bank", "debit", "10", 2, "refund", "10 back", 7), 0);
    cr_assert_eq(treaty_saga_add_parallel_step(s, "shop", "reserve", "", 0, "release", NULL, 0), 1);
    cr_assert_eq(treaty_saga_add_step(s, "mail", "send", "hi", 2, "unsend", "x", 1), 2);
    treaty_retry_t r = {.max_attempts = 7, .first_backoff_ms = 0, .max_backoff_ms = 900, .try_timeout_ms = 0};
    cr_assert_eq(treaty_saga_set_retry(s, 2, &r), 0);
    cr_assert_eq(treaty_saga_set_deadline(s, 12345), 0);
    treaty_txid_t id = *treaty_saga_id(s);

    cr_assert_eq(treaty_client_run_saga_async(c, s, WAIT_MS, on_outcome, &res), 0);
    treaty_saga_destroy(&s); /* the request keeps its own copy */

    cr_assert(fake_expect(&f, WIRE_SAGA, &id, &g, WAIT_MS), "no SAGA arrived");
    cr_assert_eq(g.hdr.code, 0);
    cr_assert_eq(g.nframes, 1 + 3 * WIRE_SAGA_FRAMES_PER_STEP);
    uint32_t deadline;
    struct wire_frame df = {(const uint8_t *)g.frame[0], g.len[0]};
    cr_assert(wire_get_u32(&df, &deadline));
    cr_assert_eq(deadline, 12345);
    const char *want[3][5] = {{"bank", "debit", "10", "refund", "10 back"},
                              {"shop", "reserve", "", "release", ""},
                              {"mail", "send", "hi", "unsend", "x"}};
    for (size_t st = 0; st < 3; st++)
        for (size_t k = 0; k < 5; k++) {
            size_t i = 1 + WIRE_SAGA_FRAMES_PER_STEP * st + k;
            cr_assert_eq(g.len[i], strlen(want[st][k]), "step %zu frame %zu", st, k);
            cr_assert_str_eq(g.frame[i], want[st][k], "step %zu frame %zu", st, k);
        }
    struct wire_policy p0 = policy_of(&g, 0), p1 = policy_of(&g, 1), p2 = policy_of(&g, 2);
    /* groups: a step opens the next group, a parallel step joins the previous one */
    cr_assert_eq(p0.group, 0);
    cr_assert_eq(p1.group, 0);
    cr_assert_eq(p2.group, 1);
    /* defaults for zeros */
    cr_assert_eq(p0.max_attempts, 3);
    cr_assert_eq(p0.first_backoff_ms, 100);
    cr_assert_eq(p0.max_backoff_ms, 5000);
    cr_assert_eq(p0.try_timeout_ms, 5000);
    cr_assert_eq(p1.max_attempts, 3);
    cr_assert_eq(p1.try_timeout_ms, 5000);
    cr_assert_eq(p2.max_attempts, 7);
    cr_assert_eq(p2.first_backoff_ms, 100);
    cr_assert_eq(p2.max_backoff_ms, 900);
    cr_assert_eq(p2.try_timeout_ms, 5000);

    /* re-sent while waiting (by treaty_client_process, in async use): the
     * same request, a higher attempt */
    bool resent = false;
    for (int64_t end = now_ms() + WAIT_MS; !resent && now_ms() < end;) {
        cr_assert_geq(treaty_client_process(c), 0);
        resent = fake_expect(&f, WIRE_SAGA, &id, &again, 50);
    }
    cr_assert(resent, "the SAGA was not re-sent");
    cr_assert_gt(again.hdr.attempt, g.hdr.attempt);
    cr_assert_eq(again.nframes, g.nframes);
    for (size_t i = 0; i < g.nframes; i++) {
        cr_assert_eq(again.len[i], g.len[i]);
        cr_assert_eq(memcmp(again.frame[i], g.frame[i], g.len[i]), 0);
    }

    /* PENDING keeps the saga waiting; COMPLETED ends it */
    struct wire_frame empty = wire_str("");
    fake_send(&f, &g, WIRE_OUTCOME, &id, TREATY_NO_BRANCH, 0, TREATY_STATUS_PENDING, &empty, 1);
    fake_send(&f, &g, WIRE_OUTCOME, &id, TREATY_NO_BRANCH, 0, TREATY_STATUS_COMPLETED, &empty, 1);
    int64_t end = now_ms() + WAIT_MS;
    while (res.calls == 0 && now_ms() < end) {
        int wait = treaty_client_next_timeout(c);
        zmq_pollitem_t item = {NULL, treaty_client_fd(c), ZMQ_POLLIN, 0};
        zmq_poll(&item, 1, wait < 0 || wait > 100 ? 100 : wait);
        cr_assert_geq(treaty_client_process(c), 0);
    }
    cr_assert_eq(res.calls, 1);
    cr_assert_eq(res.out.status, TREATY_STATUS_COMPLETED, "status %s", treaty_status_name(res.out.status));
    cr_assert_eq(memcmp(&res.out.txid, &id, sizeof id), 0);

    treaty_client_destroy(&c);
    fake_close(&f);
}

/* The fake coordinator for a blocking run_saga: answers the SAGA with
 * PENDING, then with status/step/reason. */
struct saga_script {
    struct fake f;
    treaty_txid_t txid;
    unsigned status, step;
    const char *reason;
    bool ok;
    char what[128];
};

static void *saga_script_thread(void *arg)
{
    struct saga_script *s = arg;
    struct got g;
    if (!fake_expect(&s->f, WIRE_SAGA, &s->txid, &g, WAIT_MS)) {
        snprintf(s->what, sizeof s->what, "no SAGA arrived");
        return NULL;
    }
    struct wire_frame empty = wire_str(""), r = wire_str(s->reason);
    fake_send(&s->f, &g, WIRE_OUTCOME, &s->txid, TREATY_NO_BRANCH, 0, TREATY_STATUS_PENDING, &empty, 1);
    sleep_ms(50);
    fake_send(&s->f, &g, WIRE_OUTCOME, &s->txid, s->step, 0, s->status, &r, 1);
    s->ok = true;
    return NULL;
}

static void run_saga_against(unsigned status, unsigned step, const char *reason, treaty_outcome_t *out)
{
    static struct saga_script s;
    pthread_t th;
    treaty_client_t *c = NULL;
    treaty_saga_t *saga = NULL;
    memset(&s, 0, sizeof s);
    fake_open(&s.f);
    s.status = status;
    s.step = step;
    s.reason = reason;
    cr_assert_eq(treaty_saga_new(&saga), 0);
    cr_assert_eq(treaty_saga_add_step(saga, "bank", "debit", "10", 2, "refund", "10", 2), 0);
    cr_assert_eq(treaty_saga_add_step(saga, "shop", "reserve", "1", 1, "release", "1", 1), 1);
    cr_assert_eq(treaty_saga_add_step(saga, "mail", "send", "", 0, "unsend", "", 0), 2);
    s.txid = *treaty_saga_id(saga);
    cr_assert_eq(treaty_client_new(s.f.endpoint, &c), 0);
    cr_assert_eq(pthread_create(&th, NULL, saga_script_thread, &s), 0);
    int rc = treaty_client_run_saga(c, saga, WAIT_MS, out);
    pthread_join(th, NULL);
    cr_assert(s.ok, "fake coordinator: %s", s.what);
    cr_assert_eq(rc, 0, "%s: %s", treaty_err_name(rc), treaty_client_errmsg(c));
    cr_assert_eq(memcmp(&out->txid, &s.txid, sizeof s.txid), 0);
    cr_assert_eq(out->error, 0);
    treaty_saga_destroy(&saga);
    treaty_client_destroy(&c);
    fake_close(&s.f);
}

Test(saga, run_saga_completed, .timeout = 120)
{
    treaty_outcome_t out;
    run_saga_against(TREATY_STATUS_COMPLETED, TREATY_NO_BRANCH, "", &out);
    cr_assert_eq(out.status, TREATY_STATUS_COMPLETED, "status %s", treaty_status_name(out.status));
    cr_assert_eq(out.failed_branch, TREATY_NO_BRANCH);
    cr_assert_str_eq(out.reason, "");
    cr_assert_str_eq(treaty_status_name(out.status), "completed");
}

Test(saga, run_saga_compensated_names_the_failed_step, .timeout = 120)
{
    treaty_outcome_t out;
    run_saga_against(TREATY_STATUS_COMPENSATED, 1, "step 1 (shop/reserve) failed: out of stock", &out);
    cr_assert_eq(out.status, TREATY_STATUS_COMPENSATED, "status %s", treaty_status_name(out.status));
    cr_assert_eq(out.failed_branch, 1);
    cr_assert_str_eq(out.reason, "step 1 (shop/reserve) failed: out of stock");
}

Test(saga, run_saga_stuck_is_a_final_answer, .timeout = 120)
{
    treaty_outcome_t out;
    run_saga_against(TREATY_STATUS_STUCK, 2, "compensation unsend keeps failing", &out);
    cr_assert_eq(out.status, TREATY_STATUS_STUCK, "status %s", treaty_status_name(out.status));
    cr_assert_eq(out.failed_branch, 2);
    cr_assert_str_eq(out.reason, "compensation unsend keeps failing");
}

/* ------------------------------------------------------ saga participant */

struct steps_seen {
    atomic_int calls;
    treaty_step_t last; /* name and payload pointers are not kept */
    char name[WIRE_NAME_MAX + 1];
    char payload[64];
};

/* payload "ok" -> OK, "fail" -> FAILED, "err" -> transient, "7" -> 7 */
static int record_step(void *arg, const treaty_step_t *s, char *reason)
{
    struct steps_seen *seen = arg;
    seen->last = *s;
    snprintf(seen->name, sizeof seen->name, "%s", s->name);
    size_t n = s->len < sizeof seen->payload - 1 ? s->len : sizeof seen->payload - 1;
    memcpy(seen->payload, s->payload, n);
    seen->payload[n] = '\0';
    atomic_fetch_add(&seen->calls, 1);
    if (strcmp(seen->payload, "fail") == 0) {
        snprintf(reason, TREATY_REASON_MAX, "insufficient funds");
        return TREATY_STEP_FAILED;
    }
    if (strcmp(seen->payload, "err") == 0) {
        snprintf(reason, TREATY_REASON_MAX, "database busy");
        return TREATY_EBUSY;
    }
    if (strcmp(seen->payload, "7") == 0)
        return 7;
    return TREATY_STEP_OK;
}

static void send_step(struct fake *f, const struct got *to, const treaty_txid_t *id, unsigned kind, unsigned step,
                      unsigned attempt, const char *name, const char *payload)
{
    struct wire_frame fr[2] = {wire_str(name), wire_str(payload)};
    fake_send(f, to, WIRE_STEP, id, step, attempt, kind, fr, 2);
}

static void expect_result(struct fake *f, const treaty_txid_t *id, unsigned kind, unsigned step, unsigned attempt,
                          unsigned result, struct got *g)
{
    cr_assert(fake_expect(f, WIRE_RESULT, id, g, WAIT_MS), "no RESULT arrived");
    cr_assert_eq(g->hdr.branch, step, "RESULT for step %u, want %u", g->hdr.branch, step);
    cr_assert_eq(g->hdr.attempt, attempt, "attempt is echoed");
    cr_assert_eq(g->nframes, 1);
    cr_assert_eq(WIRE_RESULT_KIND(g->hdr.code), kind, "kind %u", WIRE_RESULT_KIND(g->hdr.code));
    cr_assert_eq(WIRE_RESULT_VALUE(g->hdr.code), result, "result %u, want %u (reason '%s')",
                 WIRE_RESULT_VALUE(g->hdr.code), result, g->frame[0]);
}

Test(saga_participant, dispatches_steps_by_name_and_replies_result, .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    static struct steps_seen reserve, charge, release;
    treaty_participant_t *p = NULL;
    fake_open(&f);
    cr_assert_eq(treaty_participant_new(f.endpoint, "shop", "shop-1", NULL, &p), 0, "saga-only: no 2PC handlers");
    cr_assert_eq(treaty_participant_on_action(p, "reserve", record_step, &reserve), 0);
    cr_assert_eq(treaty_participant_on_action(p, "charge", record_step, &charge), 0);
    cr_assert_eq(treaty_participant_on_compensation(p, "release", record_step, &release), 0);
    cr_assert_eq(treaty_participant_on_action(p, "bad name", record_step, &reserve), TREATY_EINVAL);
    cr_assert_eq(treaty_participant_on_action(p, "x", NULL, NULL), TREATY_EINVAL);
    cr_assert_eq(treaty_participant_on_action(NULL, "x", record_step, NULL), TREATY_EINVAL);
    cr_assert_eq(treaty_participant_start(p), 0);
    cr_assert_eq(treaty_participant_on_action(p, "late", record_step, &reserve), TREATY_ESTATE, "after start");
    cr_assert_eq(treaty_participant_on_compensation(p, "late", record_step, &reserve), TREATY_ESTATE);
    expect_hello(&f, NULL, &hello);

    treaty_txid_t a = new_txid();
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 2, 4, "reserve", "ok");
    expect_result(&f, &a, WIRE_STEP_ACTION, 2, 4, WIRE_RESULT_OK, &g);
    cr_assert_str_eq(g.frame[0], "");
    cr_assert_eq(atomic_load(&reserve.calls), 1);
    cr_assert_eq(memcmp(&reserve.last.txid, &a, sizeof a), 0);
    cr_assert_eq(reserve.last.step, 2);
    cr_assert_eq(reserve.last.attempt, 4);
    cr_assert_str_eq(reserve.name, "reserve");
    cr_assert_str_eq(reserve.payload, "ok");

    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 3, 0, "charge", "fail");
    expect_result(&f, &a, WIRE_STEP_ACTION, 3, 0, WIRE_RESULT_FAILED, &g);
    cr_assert_str_eq(g.frame[0], "insufficient funds");
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 3, 1, "charge", "err");
    expect_result(&f, &a, WIRE_STEP_ACTION, 3, 1, WIRE_RESULT_TRANSIENT, &g);
    cr_assert_str_eq(g.frame[0], "database busy");
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 3, 2, "charge", "7"); /* not a step result */
    expect_result(&f, &a, WIRE_STEP_ACTION, 3, 2, WIRE_RESULT_TRANSIENT, &g);
    cr_assert(strstr(g.frame[0], "returned 7") != NULL, "reason: %s", g.frame[0]);
    cr_assert_eq(atomic_load(&charge.calls), 3);

    send_step(&f, &hello, &a, WIRE_STEP_COMPENSATION, 2, 0, "release", "ok");
    expect_result(&f, &a, WIRE_STEP_COMPENSATION, 2, 0, WIRE_RESULT_OK, &g);
    /* a compensation cannot fail for a business reason: transient, retried */
    send_step(&f, &hello, &a, WIRE_STEP_COMPENSATION, 2, 1, "release", "fail");
    expect_result(&f, &a, WIRE_STEP_COMPENSATION, 2, 1, WIRE_RESULT_TRANSIENT, &g);
    cr_assert_str_eq(g.frame[0], "insufficient funds");
    cr_assert_eq(atomic_load(&release.calls), 2);
    cr_assert_eq(atomic_load(&reserve.calls), 1);

    /* and no 2PC: PREPARE is voted NO, ABORT acknowledged */
    send_prepare(&f, &hello, &a, 0, 0, "yes");
    expect_vote(&f, &a, 0, TREATY_VOTE_NO, &g);
    cr_assert_str_eq(g.frame[0], "this participant does not take part in 2PC");
    fake_send(&f, &hello, WIRE_ABORT, &a, 0, 0, 0, NULL, 0);
    expect_ack(&f, &a, 0, TREATY_STATUS_ABORTED);

    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(saga_participant, unknown_handler_names, .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    static struct steps_seen reserve;
    treaty_participant_t *p = NULL;
    fake_open(&f);
    cr_assert_eq(treaty_participant_new(f.endpoint, "shop", "shop-1", NULL, &p), 0);
    cr_assert_eq(treaty_participant_on_action(p, "reserve", record_step, &reserve), 0);
    cr_assert_eq(treaty_participant_start(p), 0);
    expect_hello(&f, NULL, &hello);

    treaty_txid_t a = new_txid();
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 0, 0, "nope", "ok");
    expect_result(&f, &a, WIRE_STEP_ACTION, 0, 0, WIRE_RESULT_FAILED, &g);
    cr_assert_str_eq(g.frame[0], "no action handler named nope");
    send_step(&f, &hello, &a, WIRE_STEP_COMPENSATION, 0, 0, "nope", "ok");
    expect_result(&f, &a, WIRE_STEP_COMPENSATION, 0, 0, WIRE_RESULT_TRANSIENT, &g);
    cr_assert_str_eq(g.frame[0], "no compensation handler named nope");
    /* names are per kind: "reserve" is an action, not a compensation */
    send_step(&f, &hello, &a, WIRE_STEP_COMPENSATION, 0, 1, "reserve", "ok");
    expect_result(&f, &a, WIRE_STEP_COMPENSATION, 0, 1, WIRE_RESULT_TRANSIENT, &g);
    cr_assert_str_eq(g.frame[0], "no compensation handler named reserve");
    cr_assert_eq(atomic_load(&reserve.calls), 0);

    treaty_participant_destroy(&p);
    fake_close(&f);
}

/* --------------------------------------------------- Postgres saga barrier */

static atomic_int debit_calls, refund_calls;

static void pg_saga_setup(void)
{
    db_setup();
    sql_ok(db.conn, "CREATE TABLE accounts (id text PRIMARY KEY, balance integer NOT NULL)");
    sql_ok(db.conn, "INSERT INTO accounts VALUES ('acct', 100)");
    atomic_store(&debit_calls, 0);
    atomic_store(&refund_calls, 0);
}

static bool add_balance(struct pg_conn *conn, int delta)
{
    char d[16];
    snprintf(d, sizeof d, "%d", delta);
    const char *v[1] = {d};
    PGresult *r = PQexecParams(conn, "UPDATE accounts SET balance = balance + $1::integer WHERE id = 'acct'", 1, NULL,
                               v, NULL, NULL, 0);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    return ok;
}

/* Debits 10 (a business change that is not idempotent by itself). Payload
 * "fail": debits, then fails for a business reason; "err": debits, then a
 * transient error; "commit" / "commit-begin": debits and ends the
 * transaction itself, which the SDK must catch. */
static int pg_debit(void *arg, struct pg_conn *conn, const treaty_step_t *s, char *reason)
{
    (void)arg;
    atomic_fetch_add(&debit_calls, 1);
    char payload[32];
    size_t n = s->len < sizeof payload - 1 ? s->len : sizeof payload - 1;
    memcpy(payload, s->payload, n);
    payload[n] = '\0';
    if (!add_balance(conn, -10))
        return TREATY_EPG;
    if (strcmp(payload, "fail") == 0) {
        snprintf(reason, TREATY_REASON_MAX, "insufficient funds");
        return TREATY_STEP_FAILED;
    }
    if (strcmp(payload, "err") == 0)
        return TREATY_EBUSY;
    if (strcmp(payload, "commit") == 0)
        PQclear(PQexec(conn, "COMMIT"));
    if (strcmp(payload, "commit-begin") == 0) {
        PQclear(PQexec(conn, "COMMIT"));
        PQclear(PQexec(conn, "BEGIN"));
    }
    return TREATY_STEP_OK;
}

static int pg_refund(void *arg, struct pg_conn *conn, const treaty_step_t *s, char *reason)
{
    (void)arg;
    (void)s;
    (void)reason;
    atomic_fetch_add(&refund_calls, 1);
    return add_balance(conn, 10) ? TREATY_STEP_OK : TREATY_EPG;
}

static treaty_participant_t *pg_saga_participant(struct fake *f, const char *instance)
{
    treaty_participant_t *p = NULL;
    int rc = treaty_pg_participant_new(f->endpoint, "bank", instance, db.conninfo, work, NULL, &p);
    cr_assert_eq(rc, 0, "treaty_pg_participant_new: %s: %s", treaty_err_name(rc), treaty_participant_errmsg(p));
    cr_assert_eq(treaty_pg_on_action(p, "debit", pg_debit, NULL), 0);
    cr_assert_eq(treaty_pg_on_compensation(p, "refund", pg_refund, NULL), 0);
    cr_assert_eq(treaty_participant_start(p), 0);
    return p;
}

static long balance(void)
{
    return sql_long("SELECT balance FROM accounts WHERE id = 'acct'");
}

/* The barrier row's result ("NULL" for SQL NULL, "none" without a row). */
static void barrier_row(const treaty_txid_t *id, unsigned step, const char *op, char *result, char *reason)
{
    char ids[TREATY_TXID_STRLEN], sql[512];
    snprintf(sql, sizeof sql,
             "SELECT result, reason FROM treaty_barrier WHERE txid = '%s' AND branch = %u AND op = '%s'",
             treaty_txid_format(id, ids), step, op);
    PGresult *r = PQexec(db.conn, sql);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(db.conn));
    if (PQntuples(r) == 0) {
        strcpy(result, "none");
        if (reason != NULL)
            strcpy(reason, "none");
    } else {
        snprintf(result, 32, "%s", PQgetisnull(r, 0, 0) ? "NULL" : PQgetvalue(r, 0, 0));
        if (reason != NULL)
            snprintf(reason, TREATY_REASON_MAX, "%s", PQgetisnull(r, 0, 1) ? "NULL" : PQgetvalue(r, 0, 1));
    }
    PQclear(r);
}

Test(pg_saga, duplicate_action_is_applied_once, .init = pg_saga_setup, .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    char result[32];
    fake_open(&f);
    treaty_participant_t *p = pg_saga_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);

    treaty_txid_t a = new_txid();
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 0, 0, "debit", "");
    expect_result(&f, &a, WIRE_STEP_ACTION, 0, 0, WIRE_RESULT_OK, &g);
    cr_assert_eq(balance(), 90);
    barrier_row(&a, 0, "action", result, NULL);
    cr_assert_str_eq(result, "ok");

    /* the coordinator re-sends (its RESULT was lost): answered OK, not re-applied */
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 0, 1, "debit", "");
    expect_result(&f, &a, WIRE_STEP_ACTION, 0, 1, WIRE_RESULT_OK, &g);
    cr_assert_eq(balance(), 90, "the duplicate action was applied again");
    cr_assert_eq(atomic_load(&debit_calls), 1);
    /* another step of the same saga is its own row */
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 1, 0, "debit", "");
    expect_result(&f, &a, WIRE_STEP_ACTION, 1, 0, WIRE_RESULT_OK, &g);
    cr_assert_eq(balance(), 80);
    cr_assert_eq(sql_long("SELECT count(*) FROM treaty_barrier"), 2);

    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(pg_saga, compensation_before_action_is_null_and_refuses_the_action, .init = pg_saga_setup, .fini = db_teardown,
     .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    char result[32];
    fake_open(&f);
    treaty_participant_t *p = pg_saga_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);

    /* the action's STEP was delayed; its compensation arrives first */
    treaty_txid_t a = new_txid();
    send_step(&f, &hello, &a, WIRE_STEP_COMPENSATION, 3, 0, "refund", "");
    expect_result(&f, &a, WIRE_STEP_COMPENSATION, 3, 0, WIRE_RESULT_OK, &g);
    cr_assert_eq(atomic_load(&refund_calls), 0, "a null compensation runs no handler");
    cr_assert_eq(balance(), 100);
    barrier_row(&a, 3, "action", result, NULL);
    cr_assert_str_eq(result, "blocked");
    barrier_row(&a, 3, "compensation", result, NULL);
    cr_assert_str_neq(result, "none");

    /* the late action: refused, nothing applied (no hanging) */
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 3, 0, "debit", "");
    expect_result(&f, &a, WIRE_STEP_ACTION, 3, 0, WIRE_RESULT_FAILED, &g);
    cr_assert_str_eq(g.frame[0], "compensated before the action arrived (hanging action refused)");
    cr_assert_eq(atomic_load(&debit_calls), 0);
    cr_assert_eq(balance(), 100);
    barrier_row(&a, 3, "action", result, NULL);
    cr_assert_str_eq(result, "blocked");

    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(pg_saga, failed_action_keeps_its_row_and_compensation_is_a_noop, .init = pg_saga_setup, .fini = db_teardown,
     .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    char result[32], reason[TREATY_REASON_MAX];
    fake_open(&f);
    treaty_participant_t *p = pg_saga_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);

    treaty_txid_t a = new_txid();
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 1, 0, "debit", "fail");
    expect_result(&f, &a, WIRE_STEP_ACTION, 1, 0, WIRE_RESULT_FAILED, &g);
    cr_assert_str_eq(g.frame[0], "insufficient funds");
    cr_assert_eq(balance(), 100, "the failed action's business change rolled back");
    barrier_row(&a, 1, "action", result, reason);
    cr_assert_str_eq(result, "failed", "the attempted action is recorded");
    cr_assert_str_eq(reason, "insufficient funds");

    /* a duplicate answers the first result, with its reason */
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 1, 1, "debit", "");
    expect_result(&f, &a, WIRE_STEP_ACTION, 1, 1, WIRE_RESULT_FAILED, &g);
    cr_assert_str_eq(g.frame[0], "insufficient funds");
    cr_assert_eq(atomic_load(&debit_calls), 1);

    /* the saga turns around: the compensation is a no-op that completes */
    send_step(&f, &hello, &a, WIRE_STEP_COMPENSATION, 1, 0, "refund", "");
    expect_result(&f, &a, WIRE_STEP_COMPENSATION, 1, 0, WIRE_RESULT_OK, &g);
    cr_assert_eq(atomic_load(&refund_calls), 0);
    cr_assert_eq(balance(), 100);
    barrier_row(&a, 1, "compensation", result, NULL);
    cr_assert_str_neq(result, "none");

    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(pg_saga, duplicate_compensation_is_applied_once, .init = pg_saga_setup, .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    char result[32];
    fake_open(&f);
    treaty_participant_t *p = pg_saga_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);

    treaty_txid_t a = new_txid();
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 0, 0, "debit", "");
    expect_result(&f, &a, WIRE_STEP_ACTION, 0, 0, WIRE_RESULT_OK, &g);
    cr_assert_eq(balance(), 90);
    send_step(&f, &hello, &a, WIRE_STEP_COMPENSATION, 0, 0, "refund", "");
    expect_result(&f, &a, WIRE_STEP_COMPENSATION, 0, 0, WIRE_RESULT_OK, &g);
    cr_assert_eq(balance(), 100);
    barrier_row(&a, 0, "compensation", result, NULL);
    cr_assert_str_eq(result, "ok");

    send_step(&f, &hello, &a, WIRE_STEP_COMPENSATION, 0, 1, "refund", "");
    expect_result(&f, &a, WIRE_STEP_COMPENSATION, 0, 1, WIRE_RESULT_OK, &g);
    cr_assert_eq(balance(), 100, "the duplicate compensation was applied again");
    cr_assert_eq(atomic_load(&refund_calls), 1);
    /* a stray re-send of the action after its compensation is not applied
     * again either: it answers its first result */
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 0, 2, "debit", "");
    expect_result(&f, &a, WIRE_STEP_ACTION, 0, 2, WIRE_RESULT_OK, &g);
    cr_assert_eq(balance(), 100);
    cr_assert_eq(atomic_load(&debit_calls), 1);

    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(pg_saga, transient_action_leaves_nothing, .init = pg_saga_setup, .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    char result[32];
    fake_open(&f);
    treaty_participant_t *p = pg_saga_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);

    treaty_txid_t a = new_txid();
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 0, 0, "debit", "err");
    expect_result(&f, &a, WIRE_STEP_ACTION, 0, 0, WIRE_RESULT_TRANSIENT, &g);
    cr_assert(strstr(g.frame[0], "TREATY_EBUSY") != NULL, "reason: %s", g.frame[0]);
    cr_assert_eq(balance(), 100);
    barrier_row(&a, 0, "action", result, NULL);
    cr_assert_str_eq(result, "none", "a transient try leaves no barrier row");
    /* the retry runs afresh */
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 0, 1, "debit", "");
    expect_result(&f, &a, WIRE_STEP_ACTION, 0, 1, WIRE_RESULT_OK, &g);
    cr_assert_eq(balance(), 90);

    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(pg_saga, handler_that_ends_the_transaction_is_caught, .init = pg_saga_setup, .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    char result[32];
    fake_open(&f);
    treaty_participant_t *p = pg_saga_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);

    treaty_txid_t a = new_txid(), b = new_txid();
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 0, 0, "debit", "commit");
    expect_result(&f, &a, WIRE_STEP_ACTION, 0, 0, WIRE_RESULT_TRANSIENT, &g);
    cr_assert(strstr(g.frame[0], "must not COMMIT or ROLLBACK") != NULL, "reason: %s", g.frame[0]);
    /* what it committed stays, but the barrier never recorded a result */
    barrier_row(&a, 0, "action", result, NULL);
    cr_assert_str_eq(result, "NULL");
    /* ... so a duplicate cannot claim success */
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 0, 1, "debit", "");
    expect_result(&f, &a, WIRE_STEP_ACTION, 0, 1, WIRE_RESULT_TRANSIENT, &g);
    cr_assert_eq(atomic_load(&debit_calls), 1);

    /* COMMIT followed by BEGIN looks like an open transaction: caught too */
    send_step(&f, &hello, &b, WIRE_STEP_ACTION, 0, 0, "debit", "commit-begin");
    expect_result(&f, &b, WIRE_STEP_ACTION, 0, 0, WIRE_RESULT_TRANSIENT, &g);
    cr_assert(strstr(g.frame[0], "must not COMMIT or ROLLBACK") != NULL, "reason: %s", g.frame[0]);
    barrier_row(&b, 0, "action", result, NULL);
    cr_assert_str_eq(result, "NULL");

    /* the participant's connection is still usable */
    treaty_txid_t c = new_txid();
    send_step(&f, &hello, &c, WIRE_STEP_ACTION, 0, 0, "debit", "");
    expect_result(&f, &c, WIRE_STEP_ACTION, 0, 0, WIRE_RESULT_OK, &g);
    barrier_row(&c, 0, "action", result, NULL);
    cr_assert_str_eq(result, "ok");

    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(pg_saga, purge_deletes_old_rows, .init = pg_saga_setup, .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    fake_open(&f);
    treaty_participant_t *p = NULL;
    int rc = treaty_pg_participant_new(f.endpoint, "bank", "bank-1", db.conninfo, work, NULL, &p);
    cr_assert_eq(rc, 0, "%s: %s", treaty_err_name(rc), treaty_participant_errmsg(p));
    /* UUIDv7 txids of Unix time 0 (older than any horizon), and one that is
     * not a UUIDv7 (its age is unknown: its rows are never purged) */
    sql_ok(db.conn, "INSERT INTO treaty_barrier (txid, branch, op, result, created_at) VALUES "
                    "('00000000-0000-7000-8000-000000000001', 0, 'action', 'ok', now() - interval '2 days'), "
                    "('00000000-0000-7000-8000-000000000001', 0, 'compensation', 'ok', now() - interval '2 days'), "
                    "('00000000-0000-7000-8000-000000000002', 0, 'action', 'ok', now() - interval '10 minutes'), "
                    "('00000000-0000-7000-8000-000000000003', 1, 'prepare', NULL, now()), "
                    "('00000000-0000-4000-8000-000000000004', 0, 'action', 'ok', now() - interval '2 days')");
    cr_assert_eq(sql_long("SELECT count(*) FROM treaty_barrier_horizon"), 0, "no purge yet, no horizon");

    cr_assert_eq(treaty_pg_barrier_purge(p, 86400), 2, "rows older than a day");
    cr_assert_eq(sql_long("SELECT count(*) FROM treaty_barrier"), 3);
    cr_assert_eq(sql_long("SELECT count(*) FROM treaty_barrier_horizon WHERE now() - horizon "
                          "BETWEEN interval '1 day' AND interval '1 day 1 minute'"),
                 1, "the horizon is recorded");
    cr_assert_eq(treaty_pg_barrier_purge(p, 86400), 0);
    cr_assert_eq(treaty_pg_barrier_purge(p, 60), 1);
    cr_assert_eq(sql_long("SELECT count(*) FROM treaty_barrier WHERE txid = '00000000-0000-7000-8000-000000000003'"),
                 1);
    cr_assert_eq(sql_long("SELECT count(*) FROM treaty_barrier WHERE txid = '00000000-0000-4000-8000-000000000004'"), 1,
                 "a row of a txid that is not a UUIDv7 is kept");
    /* the horizon never moves back */
    cr_assert_eq(treaty_pg_barrier_purge(p, 86400), 0);
    cr_assert_eq(sql_long("SELECT count(*) FROM treaty_barrier_horizon WHERE now() - horizon "
                          "BETWEEN interval '60 seconds' AND interval '2 minutes'"),
                 1);

    /* the connection belongs to the participant's thread once started */
    cr_assert_eq(treaty_participant_start(p), 0);
    cr_assert_eq(treaty_pg_barrier_purge(p, 0), TREATY_ESTATE);
    cr_assert_eq(treaty_pg_on_action(p, "debit", pg_debit, NULL), TREATY_ESTATE);
    cr_assert_eq(treaty_participant_stop(p), 0);
    cr_assert_eq(treaty_pg_barrier_purge(NULL, 0), TREATY_EINVAL);

    /* only for Postgres participants */
    treaty_participant_t *plain = NULL;
    cr_assert_eq(treaty_participant_new(f.endpoint, "shop", "shop-1", NULL, &plain), 0);
    cr_assert_eq(treaty_pg_barrier_purge(plain, 0), TREATY_EINVAL);
    cr_assert_eq(treaty_pg_on_action(plain, "debit", pg_debit, NULL), TREATY_EINVAL);
    cr_assert_eq(treaty_pg_on_compensation(plain, "refund", pg_refund, NULL), TREATY_EINVAL);
    treaty_participant_destroy(&plain);

    treaty_participant_destroy(&p);
    fake_close(&f);
}

/* A late action whose compensation came first (null compensation, the action
 * row 'blocked'), after a purge removed those rows: without them the action
 * would run, a hanging action. Its txid is older than the purge horizon, so it
 * is refused as a business failure, and nothing is written. */
Test(pg_saga, late_action_after_its_compensation_and_a_purge_is_refused, .init = pg_saga_setup, .fini = db_teardown,
     .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    char result[32];
    fake_open(&f);
    treaty_participant_t *p = pg_saga_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);

    treaty_txid_t a = new_txid();
    send_step(&f, &hello, &a, WIRE_STEP_COMPENSATION, 3, 0, "refund", "");
    expect_result(&f, &a, WIRE_STEP_COMPENSATION, 3, 0, WIRE_RESULT_OK, &g);
    cr_assert_eq(purge_from_janitor(&f), 2, "the blocked action row and the compensation row");

    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 3, 0, "debit", "");
    expect_result(&f, &a, WIRE_STEP_ACTION, 3, 0, WIRE_RESULT_FAILED, &g);
    cr_assert(strstr(g.frame[0], "older than the barrier's purge horizon") != NULL, "reason: %s", g.frame[0]);
    cr_assert_eq(atomic_load(&debit_calls), 0, "the late action ran");
    cr_assert_eq(balance(), 100);
    barrier_row(&a, 3, "action", result, NULL);
    cr_assert_str_eq(result, "none");
    /* re-sent: the same answer */
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 3, 1, "debit", "");
    expect_result(&f, &a, WIRE_STEP_ACTION, 3, 1, WIRE_RESULT_FAILED, &g);
    cr_assert_eq(atomic_load(&debit_calls), 0);

    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(pg_saga, fresh_action_after_a_purge_runs, .init = pg_saga_setup, .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    fake_open(&f);
    treaty_participant_t *p = pg_saga_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);

    purge_from_janitor(&f);
    treaty_txid_t a = new_txid();
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 0, 0, "debit", "");
    expect_result(&f, &a, WIRE_STEP_ACTION, 0, 0, WIRE_RESULT_OK, &g);
    cr_assert_eq(balance(), 90);
    send_step(&f, &hello, &a, WIRE_STEP_COMPENSATION, 0, 0, "refund", "");
    expect_result(&f, &a, WIRE_STEP_COMPENSATION, 0, 0, WIRE_RESULT_OK, &g);
    cr_assert_eq(balance(), 100);

    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(pg_saga, purge_horizon_survives_a_participant_restart, .init = pg_saga_setup, .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    fake_open(&f);
    treaty_participant_t *p = pg_saga_participant(&f, "bank-1");
    expect_hello(&f, "bank-1", &hello);

    treaty_txid_t a = new_txid();
    send_step(&f, &hello, &a, WIRE_STEP_COMPENSATION, 0, 0, "refund", "");
    expect_result(&f, &a, WIRE_STEP_COMPENSATION, 0, 0, WIRE_RESULT_OK, &g);
    cr_assert_eq(purge_from_janitor(&f), 2);
    treaty_participant_destroy(&p);

    p = pg_saga_participant(&f, "bank-2");
    expect_hello(&f, "bank-2", &hello);
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 0, 0, "debit", "");
    expect_result(&f, &a, WIRE_STEP_ACTION, 0, 0, WIRE_RESULT_FAILED, &g);
    cr_assert(strstr(g.frame[0], "older than the barrier's purge horizon") != NULL, "reason: %s", g.frame[0]);
    cr_assert_eq(atomic_load(&debit_calls), 0);
    cr_assert_eq(balance(), 100);

    treaty_participant_destroy(&p);
    fake_close(&f);
}

/* The action ran, its rows were purged, and then its compensation arrives
 * (a saga turning around after a long outage). With no rows it would look
 * like a compensation that came first: a null compensation, the undo
 * silently skipped. Older than the horizon, it is not run and not counted
 * done: transient, so the saga shows as stuck for an operator. */
Test(pg_saga, compensation_past_the_purge_horizon_without_rows_is_not_a_null_compensation, .init = pg_saga_setup,
     .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    char result[32];
    fake_open(&f);
    treaty_participant_t *p = pg_saga_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);

    treaty_txid_t a = new_txid();
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 1, 0, "debit", "");
    expect_result(&f, &a, WIRE_STEP_ACTION, 1, 0, WIRE_RESULT_OK, &g);
    cr_assert_eq(balance(), 90);
    cr_assert_eq(purge_from_janitor(&f), 1, "the action's row");

    send_step(&f, &hello, &a, WIRE_STEP_COMPENSATION, 1, 0, "refund", "");
    expect_result(&f, &a, WIRE_STEP_COMPENSATION, 1, 0, WIRE_RESULT_TRANSIENT, &g);
    cr_assert(strstr(g.frame[0], "purge horizon") != NULL, "reason: %s", g.frame[0]);
    cr_assert_eq(atomic_load(&refund_calls), 0);
    cr_assert_eq(balance(), 90);
    barrier_row(&a, 1, "action", result, NULL);
    cr_assert_str_eq(result, "none", "no blocking row was left");
    barrier_row(&a, 1, "compensation", result, NULL);
    cr_assert_str_eq(result, "none");

    treaty_participant_destroy(&p);
    fake_close(&f);
}

/* Waits until n sessions of the test database wait on a lock of the kind
 * wait_event ('advisory', 'transactionid'). */
static void wait_for_lock_waiters(const char *wait_event, long n)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
             "AND wait_event_type = 'Lock' AND wait_event = '%s'",
             wait_event);
    int64_t deadline = now_ms() + WAIT_MS;
    while (sql_long(sql) != n) {
        cr_assert_lt(now_ms(), deadline, "no session waits on a lock (%s)", wait_event);
        sleep_ms(10);
    }
}

struct purge_thread {
    treaty_participant_t *janitor;
    long n;
};

static void *purge_thread(void *arg)
{
    struct purge_thread *pt = arg;
    pt->n = treaty_pg_barrier_purge(pt->janitor, 0);
    return NULL;
}

/* The purge on another instance deletes the blocked action row while the
 * late action arrives: the action's barrier INSERT waits for the purge's
 * transaction, then finds no row and inserts its own. It must still see the
 * horizon that the purge committed with its DELETE. (The purge is held just
 * before its COMMIT by a deferred trigger that waits for a lock the test
 * holds.) */
Test(pg_saga, purge_racing_a_late_action_still_refuses_it, .init = pg_saga_setup, .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    fake_open(&f);
    treaty_participant_t *p = pg_saga_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);

    treaty_txid_t a = new_txid();
    send_step(&f, &hello, &a, WIRE_STEP_COMPENSATION, 2, 0, "refund", "");
    expect_result(&f, &a, WIRE_STEP_COMPENSATION, 2, 0, WIRE_RESULT_OK, &g);

    sql_ok(db.conn, "CREATE FUNCTION hold_purge() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NULL; END $$");
    sql_ok(db.conn, "CREATE CONSTRAINT TRIGGER hold_purge AFTER INSERT OR UPDATE ON treaty_barrier_horizon "
                    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION hold_purge()");
    sql_ok(db.conn, "SELECT pg_advisory_lock(4242)");

    struct purge_thread pt = {NULL, 0};
    int rc = treaty_pg_participant_new(f.endpoint, "bank", "bank-janitor", db.conninfo, work, NULL, &pt.janitor);
    cr_assert_eq(rc, 0, "janitor: %s", treaty_participant_errmsg(pt.janitor));
    sleep_ms(5);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, purge_thread, &pt), 0);
    wait_for_lock_waiters("advisory", 1); /* the purge, deleted but not committed */

    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 2, 0, "debit", "");
    wait_for_lock_waiters("transactionid", 1); /* the action's INSERT, on the deleted row */
    sql_ok(db.conn, "SELECT pg_advisory_unlock(4242)");
    pthread_join(th, NULL);
    cr_assert_eq(pt.n, 2, "purge: %s", treaty_participant_errmsg(pt.janitor));
    treaty_participant_destroy(&pt.janitor);

    expect_result(&f, &a, WIRE_STEP_ACTION, 2, 0, WIRE_RESULT_FAILED, &g);
    cr_assert(strstr(g.frame[0], "older than the barrier's purge horizon") != NULL, "reason: %s", g.frame[0]);
    cr_assert_eq(atomic_load(&debit_calls), 0, "the late action ran");
    cr_assert_eq(balance(), 100);

    treaty_participant_destroy(&p);
    fake_close(&f);
}

/* A barrier table of an older version, and a prepared transaction (not
 * Treaty's) holding a lock on it, as in-doubt branches do. */
static void old_barrier_held(int version)
{
    sql_ok(db.conn, "CREATE TABLE treaty_barrier (txid uuid NOT NULL, branch integer NOT NULL, op text NOT NULL, "
                    "created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (txid, branch, op))");
    if (version >= 2) {
        sql_ok(db.conn, "ALTER TABLE treaty_barrier ADD COLUMN result text, ADD COLUMN reason text");
        sql_ok(db.conn, "CREATE INDEX treaty_barrier_created ON treaty_barrier (created_at)");
    }
    char sql[256]; /* gids are cluster-wide: one per test database */
    snprintf(sql, sizeof sql,
             "BEGIN; INSERT INTO treaty_barrier (txid, branch, op) "
             "VALUES ('00000000-0000-4000-8000-00000000000a', 0, 'prepare'); PREPARE TRANSACTION 'other:%s'",
             db.name);
    sql_ok(db.conn, sql);
}

/* Version 3 adds a table of its own and locks nothing: it goes in even while
 * prepared transactions hold the barrier table. */
Test(pg_saga, version_2_barrier_is_upgraded_while_prepared_transactions_hold_it, .init = pg_saga_setup,
     .fini = db_teardown, .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    old_barrier_held(2);
    fake_open(&f);
    treaty_participant_t *p = pg_saga_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);
    cr_assert_eq(sql_long("SELECT count(*) FROM pg_class WHERE relname = 'treaty_barrier_horizon'"), 1);

    treaty_txid_t a = new_txid();
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 0, 0, "debit", "");
    expect_result(&f, &a, WIRE_STEP_ACTION, 0, 0, WIRE_RESULT_OK, &g);
    commit_branch(&f, &hello, "2pc on the upgraded table", false, "after the upgrade");

    treaty_participant_destroy(&p);
    fake_close(&f);
}

/* Version 1 held by a prepared transaction: the version 2 columns must wait
 * for the lock, but the horizon table goes in, so 2PC runs; saga steps are
 * transient until the upgrade gets through. */
Test(pg_saga, version_1_barrier_held_gets_its_horizon_and_upgrades_later, .init = pg_saga_setup, .fini = db_teardown,
     .timeout = 120)
{
    struct fake f;
    struct got hello, g;
    old_barrier_held(1);
    fake_open(&f);
    treaty_participant_t *p = pg_saga_participant(&f, "bank-1");
    expect_hello(&f, NULL, &hello);
    cr_assert_eq(sql_long("SELECT count(*) FROM pg_class WHERE relname = 'treaty_barrier_horizon'"), 1);
    commit_branch(&f, &hello, "2pc on the version 1 table", false, "while the upgrade waits");

    treaty_txid_t a = new_txid();
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 0, 0, "debit", "");
    expect_result(&f, &a, WIRE_STEP_ACTION, 0, 0, WIRE_RESULT_TRANSIENT, &g);
    cr_assert(strstr(g.frame[0], "upgrade") != NULL, "reason: %s", g.frame[0]);

    char sql[128];
    snprintf(sql, sizeof sql, "ROLLBACK PREPARED 'other:%s'", db.name);
    sql_ok(db.conn, sql);
    send_step(&f, &hello, &a, WIRE_STEP_ACTION, 0, 1, "debit", "");
    expect_result(&f, &a, WIRE_STEP_ACTION, 0, 1, WIRE_RESULT_OK, &g);
    cr_assert_eq(balance(), 90);

    treaty_participant_destroy(&p);
    fake_close(&f);
}
